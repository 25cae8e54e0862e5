//! OAuth and IMAP login failures turned into a cause and a fix an admin can act on.
//!
//! Pure: the token code and the IMAP session hand over what the identity provider or
//! the server said, and get back a [`Diagnosis`] that `mailsync test`, `sync` and
//! `status` print. Text from outside (error descriptions, server replies) passes through
//! [`scrub`] first, so nothing that looks like a token reaches a message.

use std::fmt;

use crate::config::{Flow, Provider};
use crate::imap::AuthFailure;

/// What went wrong and what to do about it, each one or two lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// The AADSTS code, when the identity provider gave one.
    pub code: Option<u32>,
    pub cause: String,
    pub fix: String,
    /// The stored grant is dead: only `mailsync connect ACCOUNT` helps; stop retrying.
    pub needs_connect: bool,
    /// Nothing to fix: retry later with backoff.
    pub transient: bool,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\nfix: {}", self.cause, self.fix)
    }
}

/// The account a failure belongs to, for naming things in the fix.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub account: &'a str,
    pub provider: &'a Provider,
    pub flow: Flow,
    pub email: &'a str,
    pub client_id: &'a str,
    /// The tenant's admin-consent URL (see [`super::consent::admin_consent_url`]).
    pub consent_url: Option<String>,
}

impl Context<'_> {
    fn delegated(&self) -> bool {
        self.flow != Flow::ClientCredentials
    }

    fn tenant(&self) -> &str {
        match self.provider {
            Provider::Microsoft { tenant } => tenant,
            _ => "(none)",
        }
    }

    fn connect(&self) -> String {
        format!("`mailsync connect {}`", self.account)
    }

    /// Where an admin grants consent: the URL when we have one.
    fn consent(&self) -> String {
        match &self.consent_url {
            Some(url) => format!("open {url} as an administrator"),
            None => format!(
                "Entra admin center → App registrations → {} → API permissions → Grant admin consent (or run `mailsync consent-url {}`)",
                self.client_id, self.account
            ),
        }
    }
}

/// The first `AADSTSnnnn` code anywhere in `description`.
pub fn aadsts_code(description: &str) -> Option<u32> {
    let mut rest = description;
    while let Some(at) = rest.find("AADSTS") {
        let after = &rest[at + "AADSTS".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0
            && let Ok(code) = after[..digits].parse()
        {
            return Some(code);
        }
        rest = after;
    }
    None
}

const NOTHING_TO_FIX: &str = "nothing to fix: mailsync retries with backoff";

/// A failed token request: `error` is the OAuth error (`invalid_grant`, …), or for an
/// answer without one the HTTP status (`503`, `HTTP 503`); `description` is the
/// provider's `error_description` (Microsoft's starts `AADSTS70008: …`).
pub fn oauth_error(error: &str, description: &str, ctx: &Context) -> Diagnosis {
    let code = aadsts_code(description);
    let first = scrub(first_line(description));
    let error = scrub(error.trim());
    let error = error.as_str();
    let said = if first.is_empty() {
        error.to_owned()
    } else {
        format!("{error}: {first}")
    };
    let d = |cause: String, fix: String| Diagnosis {
        code,
        cause,
        fix,
        needs_connect: false,
        transient: false,
    };
    let tag = code.map(|c| format!(" (AADSTS{c})")).unwrap_or_default();
    let tenant = ctx.tenant();
    let connect = ctx.connect();
    let known = code.and_then(|c| {
        Some(match c {
            65001 => d(
                format!("the app {} has no consent for the permissions it asks for in tenant {tenant}{tag}", ctx.client_id),
                format!("an administrator must grant consent: {}", ctx.consent()),
            )
            .with_connect(ctx.delegated()),
            65004 => declined(code, &tag, ctx),
            50011 => d(
                format!("the redirect URI is not registered for the app {}{tag}", ctx.client_id),
                format!(
                    "register `http://localhost` as a redirect URI of the platform \"Mobile and desktop applications\" (Entra admin center → App registrations → {} → Authentication)",
                    ctx.client_id
                ),
            ),
            700016 => d(
                format!("no application {} in tenant {tenant}{tag}", ctx.client_id),
                "wrong client_id or tenant: copy the Application (client) ID and the Directory (tenant) ID from the app registration's Overview page".to_owned(),
            ),
            7000215 => d(
                format!("the client secret is wrong{tag}"),
                "put the secret's Value (shown once, when it is created) in the client_secret_file, not its Secret ID".to_owned(),
            ),
            7000222 => d(
                format!("the client secret has expired{tag}"),
                format!(
                    "create a new one (App registrations → {} → Certificates & secrets → New client secret) and put its Value in the client_secret_file",
                    ctx.client_id
                ),
            ),
            7000218 => d(
                format!("the app {} is not allowed to sign in without a secret{tag}", ctx.client_id),
                format!(
                    "allow public client flows (App registrations → {} → Authentication → Allow public client flows → Yes)",
                    ctx.client_id
                ),
            ),
            7000112 => d(
                format!("the application {} is disabled in tenant {tenant}{tag}", ctx.client_id),
                format!(
                    "an administrator must enable it (Entra admin center → Enterprise applications → {} → Properties → Enabled for users to sign in → Yes)",
                    ctx.client_id
                ),
            ),
            70008 | 700082 | 50173 => d(
                format!("the sign-in of {} has expired or was revoked (inactivity, a password change, or an administrator){tag}", ctx.email),
                format!("sign in again: {connect}"),
            )
            .with_connect(true),
            70043 => d(
                format!("the tenant's conditional-access sign-in frequency ended the sign-in of {}{tag}", ctx.email),
                format!("sign in again: {connect} (the policy decides how often)"),
            )
            .with_connect(true),
            50076 | 50079 => d(
                format!("{} must complete multi-factor authentication{tag}", ctx.email),
                format!("run {connect} interactively with flow device or browser, and complete the MFA prompt"),
            )
            .with_connect(ctx.delegated()),
            53003 => d(
                format!("a conditional-access policy of tenant {tenant} blocked the sign-in{tag}"),
                "an administrator must allow this device, location or app in the policy (Entra admin center → Sign-in logs show which policy)".to_owned(),
            ),
            50057 => d(
                format!("the user account {} is disabled{tag}", ctx.email),
                "an administrator must enable it (Entra admin center → Users → the user → Account status)".to_owned(),
            ),
            50126 => d(
                format!("wrong user name or password while signing in as {}{tag}", ctx.email),
                format!("sign in again with {connect}, with the right password"),
            ),
            90002 => d(
                format!("tenant {tenant} does not exist{tag}"),
                "set tenant to your domain (e.g. contoso.onmicrosoft.com) or the Directory (tenant) ID".to_owned(),
            ),
            90072 | 50020 => d(
                format!("{} is not a user of tenant {tenant}{tag}", ctx.email),
                format!("sign in as a user of that tenant ({connect}), or set tenant to the user's own tenant"),
            ),
            9002313 => d(
                format!("the identity provider found the request invalid{tag}: {first}"),
                "check tenant, client_id, flow and any custom endpoints or scopes in the account's settings".to_owned(),
            ),
            70011 => d(
                format!("the requested scope is invalid{tag}"),
                if ctx.delegated() {
                    "remove scopes from the account's settings to use the defaults (IMAP.AccessAsUser.All and offline_access)".to_owned()
                } else {
                    "client-credentials needs the scope https://outlook.office365.com/.default: remove scopes from the account's settings".to_owned()
                },
            ),
            _ => return None,
        })
    });
    if let Some(diagnosis) = known {
        return diagnosis;
    }
    if is_transient(error) {
        return Diagnosis {
            transient: true,
            ..d(
                format!("the identity provider is failing for now ({said})"),
                NOTHING_TO_FIX.to_owned(),
            )
        };
    }
    if let Some(c) = code {
        let grant_dead = error == "invalid_grant";
        let then = if grant_dead {
            format!("; then {connect}")
        } else {
            String::new()
        };
        return d(
            if first.is_empty() { said } else { first },
            format!(
                "search the AADSTS code at https://login.microsoftonline.com/error?code={c}{then}"
            ),
        )
        .with_connect(grant_dead);
    }
    match error {
        "invalid_grant" => d(
            format!(
                "the stored sign-in of {} has expired or was revoked ({said})",
                ctx.email
            ),
            format!("sign in again: {connect}"),
        )
        .with_connect(true),
        "invalid_client" => d(
            format!("the identity provider refused the app's credentials ({said})"),
            invalid_client_fix(ctx),
        ),
        "authorization_declined" | "access_denied" => declined(code, &said_tag(&said), ctx),
        "expired_token" => d(
            "the device code expired before the sign-in was completed".to_owned(),
            format!("run {connect} again and enter the code sooner"),
        ),
        "unauthorized_client" => d(
            format!(
                "the app {} may not use the {} flow ({said})",
                ctx.client_id,
                ctx.flow.as_str()
            ),
            invalid_client_fix(ctx),
        ),
        _ => d(
            format!("the identity provider refused the token request ({said})"),
            format!("check client_id, tenant and flow in the account's settings, then {connect}"),
        ),
    }
}

fn said_tag(said: &str) -> String {
    format!(" ({said})")
}

fn declined(code: Option<u32>, tag: &str, ctx: &Context) -> Diagnosis {
    Diagnosis {
        code,
        cause: format!("the sign-in was declined{tag}"),
        fix: format!(
            "run {} again and accept; if the organization requires an administrator to approve the app: {}",
            ctx.connect(),
            ctx.consent()
        ),
        needs_connect: false,
        transient: false,
    }
}

fn invalid_client_fix(ctx: &Context) -> String {
    match (ctx.provider, ctx.flow) {
        (Provider::Microsoft { .. }, Flow::ClientCredentials) => {
            "check client_id and that the client_secret_file holds the secret's Value (not its Secret ID)".to_owned()
        }
        (Provider::Microsoft { .. }, _) => format!(
            "check client_id; for device and browser sign-in allow public client flows (App registrations → {} → Authentication → Allow public client flows → Yes)",
            ctx.client_id
        ),
        (Provider::Google, _) => {
            "check client_id and that the client_secret_file holds that OAuth client's secret (Google Cloud console → APIs & Services → Credentials)".to_owned()
        }
        (Provider::Custom, _) => {
            "check client_id and client_secret_file against the identity provider's client registration".to_owned()
        }
    }
}

/// `temporarily_unavailable`, `server_error`, or an HTTP 5xx status (`503`, `HTTP 503`).
fn is_transient(error: &str) -> bool {
    if error == "temporarily_unavailable" || error == "server_error" {
        return true;
    }
    let e = error.trim();
    let e = e
        .strip_prefix("HTTP")
        .or_else(|| e.strip_prefix("http"))
        .unwrap_or(e)
        .trim_start_matches([' ', '_', '/']);
    let digits: String = e.chars().take_while(char::is_ascii_digit).collect();
    digits.len() == 3 && digits.starts_with('5')
}

trait WithConnect {
    fn with_connect(self, needs: bool) -> Self;
}

impl WithConnect for Diagnosis {
    fn with_connect(mut self, needs: bool) -> Diagnosis {
        self.needs_connect = needs;
        self
    }
}

/// A refused AUTHENTICATE (or a session the server would not open after it).
pub fn imap_auth_failure(failure: &AuthFailure, ctx: &Context) -> Diagnosis {
    let text = scrub(first_line(&failure.server_text));
    let upper = text.to_ascii_uppercase();
    let challenge = failure
        .challenge
        .as_deref()
        .map(|c| format!(", challenge {}", scrub(first_line(c))))
        .unwrap_or_default();
    let said = format!("server said \"{text}\"{challenge}");
    let d = |cause: String, fix: String| Diagnosis {
        code: None,
        cause,
        fix,
        needs_connect: false,
        transient: false,
    };
    if upper.contains("[UNAVAILABLE]") {
        return Diagnosis {
            transient: true,
            ..d(
                format!("the server is temporarily unavailable ({said})"),
                NOTHING_TO_FIX.to_owned(),
            )
        };
    }
    if upper.contains("[PRIVACYREQUIRED]") || upper.contains("LOGINDISABLED") {
        return d(
            format!("the server refuses to log in over an unencrypted connection ({said})"),
            "use TLS: tls = \"implicit\" (port 993) or tls = \"starttls\" (port 143)".to_owned(),
        );
    }
    let not_connected = upper.contains("USER IS AUTHENTICATED BUT NOT CONNECTED");
    match (ctx.provider, ctx.flow) {
        (Provider::Microsoft { .. }, Flow::ClientCredentials) => d(
            if not_connected {
                format!(
                    "Exchange accepted the app's token but would not open the mailbox {} for it ({said})",
                    ctx.email
                )
            } else {
                format!(
                    "Exchange refused the app's token for {}: the Exchange service principal is not registered or has no permission on the mailbox ({said})",
                    ctx.email
                )
            },
            format!(
                "register the app's service principal in Exchange Online and grant it the mailbox (New-ServicePrincipal, Add-MailboxPermission -Identity {} -AccessRights FullAccess; `mailsync consent-url {}` prints both); changes can take up to 1 hour to apply",
                ctx.email, ctx.account
            ),
        ),
        (Provider::Microsoft { .. }, _) if not_connected => d(
            format!(
                "Exchange accepted the token but the signed-in user cannot open the mailbox {} ({said})",
                ctx.email
            ),
            format!(
                "sign in as {} ({}), or give the signed-in user FullAccess to the mailbox and set login_user",
                ctx.email,
                ctx.connect()
            ),
        ),
        (Provider::Microsoft { .. }, _) => d(
            format!(
                "Exchange refused the token for {}: IMAP may be disabled for the mailbox, the token may lack IMAP.AccessAsUser.All, or the signed-in user is not the mailbox ({said})",
                ctx.email
            ),
            format!(
                "enable IMAP (Microsoft 365 admin center → Users → the user → Mail → Manage email apps → IMAP, or `Set-CASMailbox -Identity {} -ImapEnabled $true`), add the delegated permission IMAP.AccessAsUser.All, then {}",
                ctx.email,
                ctx.connect()
            ),
        ),
        (Provider::Google, _) => d(
            format!("Gmail refused the token for {} ({said})", ctx.email),
            format!(
                "check that IMAP is on (Gmail settings; for Workspace also the Admin console) and that you signed in as {} with the scope https://mail.google.com/, then {}",
                ctx.email,
                ctx.connect()
            ),
        ),
        (Provider::Custom, _) => d(
            format!("the server refused the token for {} ({said})", ctx.email),
            format!(
                "check that the scopes and login_user are what the server expects, then {}",
                ctx.connect()
            ),
        ),
    }
}

fn first_line(s: &str) -> &str {
    s.trim_start()
        .split(['\r', '\n'])
        .next()
        .unwrap_or("")
        .trim_end()
}

/// Outside text made safe to print: anything shaped like a token (a JWT, or a long run
/// of base64 characters) is replaced, and the whole is kept short.
fn scrub(text: &str) -> String {
    const LIMIT: usize = 300;
    let token_char = |c: char| c.is_ascii_alphanumeric() || "-_.+/=~".contains(c);
    let mut out = String::with_capacity(text.len().min(LIMIT));
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest.find(token_char).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(|c| !token_char(c)).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.starts_with("eyJ") && word.len() > 20 || word.len() >= 40 && !looks_like_url(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
        rest = &rest[end..];
    }
    if out.chars().count() > LIMIT {
        out = out.chars().take(LIMIT).collect::<String>() + "…";
    }
    out
}

/// URLs in messages (scopes, documentation) are long but harmless; a token has no dots
/// between words and no slashes after a host.
fn looks_like_url(word: &str) -> bool {
    // The scheme's "://" splits a URL at the ':', so the word starts with "//".
    word.starts_with("//") && !word.contains("eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms() -> Provider {
        Provider::Microsoft {
            tenant: "contoso.onmicrosoft.com".into(),
        }
    }

    fn ctx<'a>(provider: &'a Provider, flow: Flow) -> Context<'a> {
        Context {
            account: "work",
            provider,
            flow,
            email: "jane@contoso.com",
            client_id: "11111111-2222-3333-4444-555555555555",
            consent_url: Some(
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/adminconsent?client_id=x"
                    .into(),
            ),
        }
    }

    fn describe(code: u32, text: &str) -> String {
        format!(
            "AADSTS{code}: {text}\r\nTrace ID: 0b3b1a9e-1f7e-4b8e-9f38-6a4c43d5b100\r\nCorrelation ID: 5c1b7f5e-3a5e-4e8f-8c3f-1a2b3c4d5e6f\r\nTimestamp: 2025-01-01 10:00:00Z"
        )
    }

    /// Every message stays within two lines: it is printed in a status table.
    fn assert_short(d: &Diagnosis) {
        assert!(d.cause.lines().count() <= 2, "{d:?}");
        assert!(d.fix.lines().count() <= 2, "{d:?}");
        assert!(!d.cause.is_empty() && !d.fix.is_empty(), "{d:?}");
    }

    #[test]
    fn aadsts_codes_are_found_anywhere() {
        assert_eq!(
            aadsts_code("AADSTS50173: The provided grant has expired"),
            Some(50173)
        );
        assert_eq!(aadsts_code("error: AADSTS7000222: expired"), Some(7000222));
        assert_eq!(aadsts_code("see AADSTS and AADSTS65001"), Some(65001));
        assert_eq!(aadsts_code("Token has been expired or revoked."), None);
        assert_eq!(aadsts_code("AADSTS"), None);
        assert_eq!(aadsts_code("AADSTS99999999999999: overflow"), None);
    }

    /// (error, code, text, flow, words the cause or fix must contain, needs_connect, transient)
    type Row = (
        &'static str,
        u32,
        &'static str,
        Flow,
        &'static [&'static str],
        bool,
        bool,
    );

    const ROWS: &[Row] = &[
        (
            "invalid_client",
            65001,
            "The user or administrator has not consented",
            Flow::ClientCredentials,
            &[
                "consent",
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/adminconsent",
            ],
            false,
            false,
        ),
        (
            "invalid_grant",
            65001,
            "The user or administrator has not consented",
            Flow::Device,
            &["consent", "adminconsent"],
            true,
            false,
        ),
        (
            "invalid_request",
            50011,
            "The redirect URI 'http://localhost:4711' does not match",
            Flow::Browser,
            &["`http://localhost`", "Mobile and desktop applications"],
            false,
            false,
        ),
        (
            "unauthorized_client",
            700016,
            "Application with identifier 'x' was not found",
            Flow::Device,
            &["client_id", "tenant", "contoso.onmicrosoft.com"],
            false,
            false,
        ),
        (
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
            Flow::ClientCredentials,
            &["Value", "not its Secret ID"],
            false,
            false,
        ),
        (
            "invalid_client",
            7000222,
            "The provided client secret keys are expired.",
            Flow::ClientCredentials,
            &["expired", "New client secret", "client_secret_file"],
            false,
            false,
        ),
        (
            "invalid_client",
            7000218,
            "The request body must contain client_assertion or client_secret",
            Flow::Device,
            &["Allow public client flows"],
            false,
            false,
        ),
        (
            "unauthorized_client",
            7000112,
            "Application is disabled.",
            Flow::Device,
            &["disabled", "Enabled for users to sign in"],
            false,
            false,
        ),
        (
            "invalid_grant",
            70008,
            "The refresh token has expired due to inactivity.",
            Flow::Device,
            &["expired", "`mailsync connect work`"],
            true,
            false,
        ),
        (
            "invalid_grant",
            700082,
            "The refresh token has expired due to inactivity.",
            Flow::Browser,
            &["`mailsync connect work`"],
            true,
            false,
        ),
        (
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked",
            Flow::Device,
            &["revoked", "`mailsync connect work`"],
            true,
            false,
        ),
        (
            "invalid_grant",
            70043,
            "The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.",
            Flow::Device,
            &[
                "conditional-access sign-in frequency",
                "`mailsync connect work`",
            ],
            true,
            false,
        ),
        (
            "invalid_grant",
            50076,
            "you must use multi-factor authentication",
            Flow::Device,
            &["multi-factor", "device or browser"],
            true,
            false,
        ),
        (
            "interaction_required",
            50079,
            "The user is required to use multi-factor authentication.",
            Flow::Browser,
            &["multi-factor", "`mailsync connect work`"],
            true,
            false,
        ),
        (
            "invalid_grant",
            53003,
            "Access has been blocked by Conditional Access policies.",
            Flow::Device,
            &["conditional-access", "administrator must allow"],
            false,
            false,
        ),
        (
            "invalid_grant",
            50057,
            "The user account is disabled.",
            Flow::Device,
            &["jane@contoso.com", "disabled", "enable"],
            false,
            false,
        ),
        (
            "invalid_grant",
            50126,
            "Error validating credentials due to invalid username or password.",
            Flow::Device,
            &["password"],
            false,
            false,
        ),
        (
            "invalid_request",
            90002,
            "Tenant 'contoso.onmicrosoft.com' not found.",
            Flow::Device,
            &["does not exist", "Directory (tenant) ID"],
            false,
            false,
        ),
        (
            "invalid_grant",
            90072,
            "User account from identity provider does not exist in tenant",
            Flow::Device,
            &["not a user of tenant contoso.onmicrosoft.com"],
            false,
            false,
        ),
        (
            "invalid_request",
            9002313,
            "Invalid request. Request is malformed or invalid.",
            Flow::Device,
            &["invalid", "client_id"],
            false,
            false,
        ),
        (
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
            Flow::ClientCredentials,
            &["https://outlook.office365.com/.default"],
            false,
            false,
        ),
        (
            "access_denied",
            65004,
            "User declined to consent to access the app.",
            Flow::Browser,
            &["declined", "`mailsync connect work` again"],
            false,
            false,
        ),
        (
            "temporarily_unavailable",
            50196,
            "The server is busy",
            Flow::Device,
            &["nothing to fix"],
            false,
            true,
        ),
        (
            "invalid_grant",
            12345678,
            "Something new went wrong.",
            Flow::Device,
            &[
                "Something new went wrong.",
                "https://login.microsoftonline.com/error?code=12345678",
                "`mailsync connect work`",
            ],
            true,
            false,
        ),
        (
            "invalid_request",
            4242,
            "Another new thing.",
            Flow::Device,
            &[
                "AADSTS4242: Another new thing.",
                "https://login.microsoftonline.com/error?code=4242",
            ],
            false,
            false,
        ),
    ];

    #[test]
    fn aadsts_rows() {
        let provider = ms();
        for &(error, code, text, flow, words, needs_connect, transient) in ROWS {
            let d = oauth_error(error, &describe(code, text), &ctx(&provider, flow));
            let both = format!("{}\n{}", d.cause, d.fix);
            for w in words {
                assert!(both.contains(w), "AADSTS{code}: {w:?} missing in {both}");
            }
            assert_eq!(d.code, Some(code), "{code}");
            assert_eq!(d.needs_connect, needs_connect, "AADSTS{code}: {d:?}");
            assert_eq!(d.transient, transient, "AADSTS{code}: {d:?}");
            assert!(!both.contains("Trace ID"), "only the first line: {both}");
            assert_short(&d);
        }
    }

    #[test]
    fn unknown_codes_point_at_the_error_lookup() {
        let provider = ms();
        let d = oauth_error(
            "invalid_request",
            &describe(4242, "Another new thing."),
            &ctx(&provider, Flow::Device),
        );
        assert_eq!(d.cause, "AADSTS4242: Another new thing.");
        assert_eq!(
            d.fix,
            "search the AADSTS code at https://login.microsoftonline.com/error?code=4242"
        );
    }

    /// (error, description, provider is google, words, needs_connect, transient)
    type Plain = (
        &'static str,
        &'static str,
        bool,
        &'static [&'static str],
        bool,
        bool,
    );

    const PLAIN: &[Plain] = &[
        (
            "temporarily_unavailable",
            "",
            false,
            &["nothing to fix", "retries with backoff"],
            false,
            true,
        ),
        (
            "server_error",
            "An internal error occurred",
            false,
            &["nothing to fix"],
            false,
            true,
        ),
        (
            "503",
            "Service Unavailable",
            false,
            &["nothing to fix"],
            false,
            true,
        ),
        ("HTTP 502", "", false, &["nothing to fix"], false, true),
        (
            "invalid_client",
            "Client authentication failed",
            false,
            &["client_id", "Allow public client flows"],
            false,
            false,
        ),
        (
            "invalid_client",
            "The OAuth client was not found.",
            true,
            &["client_secret_file", "Google Cloud console"],
            false,
            false,
        ),
        (
            "authorization_declined",
            "",
            false,
            &["declined", "`mailsync connect work` again", "adminconsent"],
            false,
            false,
        ),
        (
            "access_denied",
            "The user denied access",
            true,
            &["declined"],
            false,
            false,
        ),
        (
            "expired_token",
            "The device code has expired",
            false,
            &["device code expired", "enter the code sooner"],
            false,
            false,
        ),
        (
            "invalid_grant",
            "Token has been expired or revoked.",
            true,
            &["expired or was revoked", "`mailsync connect work`"],
            true,
            false,
        ),
        (
            "unsupported_grant_type",
            "",
            false,
            &["unsupported_grant_type", "client_id"],
            false,
            false,
        ),
        (
            "400",
            "Bad Request",
            false,
            &["400: Bad Request"],
            false,
            false,
        ),
    ];

    #[test]
    fn errors_without_a_code() {
        let microsoft = ms();
        for &(error, description, google, words, needs_connect, transient) in PLAIN {
            let provider = if google {
                &Provider::Google
            } else {
                &microsoft
            };
            let d = oauth_error(error, description, &ctx(provider, Flow::Device));
            let both = format!("{}\n{}", d.cause, d.fix);
            for w in words {
                assert!(both.contains(w), "{error}: {w:?} missing in {both}");
            }
            assert_eq!(d.code, None);
            assert_eq!(d.needs_connect, needs_connect, "{error}: {d:?}");
            assert_eq!(d.transient, transient, "{error}: {d:?}");
            assert_short(&d);
        }
    }

    #[test]
    fn consent_without_a_url_names_the_portal() {
        let provider = ms();
        let mut c = ctx(&provider, Flow::ClientCredentials);
        c.consent_url = None;
        let d = oauth_error("invalid_client", &describe(65001, "not consented"), &c);
        assert!(d.fix.contains("Grant admin consent"), "{}", d.fix);
        assert!(d.fix.contains("mailsync consent-url work"), "{}", d.fix);
    }

    fn failure(text: &str, challenge: Option<&str>) -> AuthFailure {
        AuthFailure {
            mechanism: "XOAUTH2",
            server_text: text.into(),
            challenge: challenge.map(str::to_owned),
        }
    }

    /// (server text, challenge, flow, provider is google, words, transient)
    type Imap = (
        &'static str,
        Option<&'static str>,
        Flow,
        bool,
        &'static [&'static str],
        bool,
    );

    const IMAP: &[Imap] = &[
        (
            "AUTHENTICATE failed.",
            None,
            Flow::Device,
            false,
            &[
                "IMAP may be disabled",
                "Manage email apps",
                "Set-CASMailbox -Identity jane@contoso.com -ImapEnabled $true",
                "IMAP.AccessAsUser.All",
                "signed-in user is not the mailbox",
                "`mailsync connect work`",
            ],
            false,
        ),
        (
            "[AUTHENTICATIONFAILED] Authentication failed.",
            Some(r#"{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/"}"#),
            Flow::Browser,
            false,
            &[
                "[AUTHENTICATIONFAILED]",
                r#"{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/"}"#,
            ],
            false,
        ),
        (
            "AUTHENTICATE failed.",
            None,
            Flow::ClientCredentials,
            false,
            &[
                "service principal",
                "New-ServicePrincipal",
                "Add-MailboxPermission -Identity jane@contoso.com",
                "up to 1 hour",
            ],
            false,
        ),
        (
            "User is authenticated but not connected.",
            None,
            Flow::ClientCredentials,
            false,
            &[
                "would not open the mailbox jane@contoso.com",
                "New-ServicePrincipal",
                "Add-MailboxPermission",
            ],
            false,
        ),
        (
            "User is authenticated but not connected.",
            None,
            Flow::Device,
            false,
            &[
                "signed-in user cannot open the mailbox",
                "sign in as jane@contoso.com",
                "FullAccess",
            ],
            false,
        ),
        (
            "[UNAVAILABLE] Server Unavailable. 15",
            None,
            Flow::Device,
            false,
            &["temporarily unavailable", "nothing to fix"],
            true,
        ),
        (
            "[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.",
            None,
            Flow::Device,
            false,
            &["unencrypted", "tls = \"implicit\""],
            false,
        ),
        (
            "LOGINDISABLED",
            None,
            Flow::Device,
            false,
            &["use TLS"],
            false,
        ),
        (
            "[AUTHENTICATIONFAILED] Invalid credentials (Failure)",
            Some(r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#),
            Flow::Device,
            true,
            &["Gmail refused", "https://mail.google.com/", "IMAP is on"],
            false,
        ),
    ];

    #[test]
    fn imap_rows() {
        let microsoft = ms();
        for &(text, challenge, flow, google, words, transient) in IMAP {
            let provider = if google {
                &Provider::Google
            } else {
                &microsoft
            };
            let d = imap_auth_failure(&failure(text, challenge), &ctx(provider, flow));
            let both = format!("{}\n{}", d.cause, d.fix);
            for w in words {
                assert!(both.contains(w), "{text}: {w:?} missing in {both}");
            }
            assert_eq!(d.transient, transient, "{text}: {d:?}");
            assert!(!d.needs_connect);
            assert_short(&d);
        }
    }

    #[test]
    fn tokens_never_reach_a_message() {
        let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL291dGxvb2sub2ZmaWNlMzY1LmNvbSJ9.c2lnbmF0dXJlc2lnbmF0dXJl";
        let opaque = "ya29.a0AfB_byC9xQ1234567890abcdefghijklmnopqrstuvwxyzABCDEF";
        let provider = ms();
        let c = ctx(&provider, Flow::Device);
        let d = imap_auth_failure(
            &failure(
                &format!("AUTHENTICATE failed for user=jane token={jwt}"),
                Some(&format!("{{\"status\":\"401\",\"token\":\"{opaque}\"}}")),
            ),
            &c,
        );
        let d2 = oauth_error(
            "invalid_grant",
            &format!("AADSTS9999999: bad refresh token {opaque} and {jwt}"),
            &c,
        );
        for d in [d, d2] {
            let all = d.to_string();
            assert!(!all.contains("eyJ0eXAi"), "{all}");
            assert!(!all.contains("a0AfB_byC9"), "{all}");
            assert!(all.contains("[redacted]"), "{all}");
        }
    }

    #[test]
    fn urls_and_ids_survive_scrubbing() {
        let s = "see https://login.microsoftonline.com/error?code=50011 id 0b3b1a9e-1f7e-4b8e-9f38-6a4c43d5b100";
        assert_eq!(scrub(s), s);
    }
}
