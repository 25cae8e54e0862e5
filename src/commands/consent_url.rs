//! `mailsync consent-url`: what a Microsoft 365 administrator must do once for an
//! account — the tenant admin-consent URL and, for app-only access, the Exchange Online
//! PowerShell that registers the service principal and grants it the mailbox.

use std::fmt::Write as _;
use std::io::Write as _;

use super::{CommandError, Exit, select_accounts};
use crate::config::{Account, Config, Flow, Provider};

/// Where the browser goes after consent. Entra only redirects to a URI registered on
/// the app; `http://localhost` is the one the browser flow registers anyway.
const REDIRECT_URI: &str = "http://localhost";
const AUTHORITY: &str = "https://login.microsoftonline.com";
const APP_ONLY_SCOPE: &str = "https://outlook.office365.com/.default";
const DELEGATED_SCOPES: &str = "https://outlook.office.com/IMAP.AccessAsUser.All offline_access";

/// `mailsync consent-url [ACCOUNT]`; clap-ready, so `cli.rs` can use it as it is.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConsentUrlArgs {
    /// The account (default: every account).
    pub account: Option<String>,
}

pub async fn run(config: &Config, args: &ConsentUrlArgs) -> Result<Exit, CommandError> {
    let accounts = select_accounts(config, args.account.as_deref())?;
    let text = accounts
        .iter()
        .map(|a| instructions(a))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(Exit::Ok)
}

/// The tenant's admin-consent URL for a Microsoft account's app and scopes; `None` for
/// other providers (admin consent is a Microsoft Entra concept).
pub fn admin_consent_url(account: &Account) -> Option<String> {
    let Provider::Microsoft { tenant } = &account.provider else {
        return None;
    };
    let scope = if account.oauth.scopes.is_empty() {
        match account.flow {
            Flow::ClientCredentials => APP_ONLY_SCOPE.to_owned(),
            _ => DELEGATED_SCOPES.to_owned(),
        }
    } else if account.flow.is_delegated() {
        // What a person signs in with is what must be consented to.
        crate::auth::flows::sign_in_scopes(account)
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        account.oauth.scopes.join(" ")
    };
    Some(format!(
        "{}/{}/v2.0/adminconsent?client_id={}&redirect_uri={}&scope={}",
        authority(&account.oauth.token_url),
        encode(tenant),
        encode(account.client_id.as_deref().unwrap_or_default()),
        encode(REDIRECT_URI),
        encode(&scope)
    ))
}

/// `https://host` of the configured token endpoint (another national cloud, or a test
/// identity provider), else the public cloud's.
fn authority(token_url: &str) -> String {
    token_url
        .split_once("://")
        .and_then(|(scheme, rest)| {
            let host = rest.split(['/', '?', '#']).next()?;
            (!host.is_empty() && (scheme == "https" || scheme == "http"))
                .then(|| format!("{scheme}://{host}"))
        })
        .unwrap_or_else(|| AUTHORITY.to_owned())
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What an administrator does for one account, as printed.
fn instructions(account: &Account) -> String {
    let mut s = String::new();
    let client_id = account.client_id.as_deref().unwrap_or_default();
    let _ = writeln!(
        s,
        "Account {} ({}, provider {}, flow {})",
        account.name,
        account.email,
        account.provider.as_str(),
        account.flow.as_str()
    );
    let Provider::Microsoft { tenant } = &account.provider else {
        let _ = match account.provider {
            Provider::Google => writeln!(
                s,
                "  Admin consent is a Microsoft Entra concept; Google has none. Instead:\n  \
                 - Google Cloud console → APIs & Services → OAuth consent screen of the project that owns\n    \
                 client {client_id}: add the scope https://mail.google.com/ (an \"Internal\" app needs no review).\n  \
                 - Workspace: Admin console → Security → Access and data control → API controls →\n    \
                 Manage third-party app access → {client_id} → Trusted (domain-wide delegation is for service accounts only).\n  \
                 Then run `mailsync connect {}`.",
                account.name
            ),
            _ => writeln!(
                s,
                "  Admin consent is a Microsoft Entra concept; a custom identity provider has its own way to approve client {client_id}\n  \
                 for the scopes {}: ask its administrator, then run `mailsync connect {}`.",
                scopes_or_none(account),
                account.name
            ),
        };
        return s;
    };
    let url = admin_consent_url(account).unwrap_or_default();
    let which = if ["common", "organizations"].contains(&tenant.as_str()) {
        "your tenant".to_owned()
    } else {
        format!("tenant {tenant}")
    };
    let _ = writeln!(
        s,
        "\nAdmin consent for {which}: open this as an administrator who may grant tenant-wide consent\n\
         (e.g. a Global Administrator):\n  {url}"
    );
    let _ = writeln!(
        s,
        "  Afterwards the browser is sent to {REDIRECT_URI}, which may show an error page: the consent is recorded all the same.\n  \
         (If Entra answers AADSTS50011, add {REDIRECT_URI} as a \"Mobile and desktop applications\" redirect URI of the app,\n  \
         or grant it in the Entra admin center: App registrations → {client_id} → API permissions → Grant admin consent.)"
    );
    if account.flow == Flow::ClientCredentials {
        let sp = "<Object ID of the Enterprise application>";
        let _ = writeln!(
            s,
            "\nApp-only access also needs the app registered in Exchange Online and given the mailbox\n\
             (Exchange Online PowerShell, as an Exchange administrator):\n  \
             Connect-ExchangeOnline -Organization {tenant}\n  \
             New-ServicePrincipal -AppId {client_id} -ObjectId <Object ID of the Enterprise application \"{client_id}\">\n  \
             Add-MailboxPermission -Identity {} -User {sp} -AccessRights FullAccess\n\
             The Object ID: Entra admin center → Enterprise applications → search for {client_id} → Object ID\n\
             (NOT the Object ID on the App registrations page: that is the application object, not its service principal).\n\
             Changes can take up to 1 hour to reach IMAP; then run `mailsync test {}`.",
            account.email, account.name
        );
    } else {
        let _ = writeln!(
            s,
            "\nThen {} signs in with `mailsync connect {}`.",
            account.email, account.name
        );
    }
    s
}

fn scopes_or_none(account: &Account) -> String {
    if account.oauth.scopes.is_empty() {
        "(none configured)".to_owned()
    } else {
        account.oauth.scopes.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[daemon]
state_dir = "/var/lib/mailsync"

[accounts.work]
provider = "microsoft"
email = "jane@contoso.com"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
flow = "device"

[accounts.robot]
provider = "microsoft"
email = "robot@contoso.com"
tenant = "0b3b1a9e-1f7e-4b8e-9f38-6a4c43d5b100"
client_id = "66666666-7777-8888-9999-000000000000"
flow = "client-credentials"
client_secret_file = "/etc/mailsync/robot.secret"

[accounts.anyone]
provider = "microsoft"
email = "joe@fabrikam.com"
client_id = "11111111-2222-3333-4444-555555555555"
flow = "browser"

[accounts.gmail]
provider = "google"
email = "joe@gmail.com"
client_id = "123-abc.apps.googleusercontent.com"
client_secret_file = "/etc/mailsync/gmail.secret"

[accounts.local]
provider = "custom"
email = "joe@example.org"
client_id = "mailsync"
imap_host = "127.0.0.1"
imap_port = 1993
tls = "implicit"
token_url = "http://127.0.0.1:8080/contoso/oauth2/v2.0/token"
device_url = "http://127.0.0.1:8080/contoso/oauth2/v2.0/devicecode"
scopes = ["imap"]
"#;

    fn config() -> Config {
        crate::config::parse(CONFIG, Path::new("config.toml")).unwrap()
    }

    #[test]
    fn delegated_url() {
        let c = config();
        assert_eq!(
            admin_consent_url(c.account("work").unwrap()).unwrap(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/adminconsent\
             ?client_id=11111111-2222-3333-4444-555555555555\
             &redirect_uri=http%3A%2F%2Flocalhost\
             &scope=https%3A%2F%2Foutlook.office.com%2FIMAP.AccessAsUser.All%20offline_access%20openid%20profile"
        );
    }

    #[test]
    fn app_only_url() {
        let c = config();
        assert_eq!(
            admin_consent_url(c.account("robot").unwrap()).unwrap(),
            "https://login.microsoftonline.com/0b3b1a9e-1f7e-4b8e-9f38-6a4c43d5b100/v2.0/adminconsent\
             ?client_id=66666666-7777-8888-9999-000000000000\
             &redirect_uri=http%3A%2F%2Flocalhost\
             &scope=https%3A%2F%2Foutlook.office365.com%2F.default"
        );
    }

    #[test]
    fn without_a_tenant_any_organization_can_consent() {
        let c = config();
        let url = admin_consent_url(c.account("anyone").unwrap()).unwrap();
        assert!(
            url.starts_with("https://login.microsoftonline.com/organizations/v2.0/adminconsent?"),
            "{url}"
        );
    }

    #[test]
    fn empty_scopes_fall_back_to_the_flow_defaults() {
        let c = config();
        let mut a = c.account("robot").unwrap().clone();
        a.oauth.scopes.clear();
        let url = admin_consent_url(&a).unwrap();
        assert!(
            url.ends_with("&scope=https%3A%2F%2Foutlook.office365.com%2F.default"),
            "{url}"
        );
    }

    #[test]
    fn the_authority_follows_the_token_endpoint() {
        let c = config();
        let mut a = c.account("work").unwrap().clone();
        a.oauth.token_url =
            "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token".into();
        let url = admin_consent_url(&a).unwrap();
        assert!(
            url.starts_with("https://login.microsoftonline.us/contoso.onmicrosoft.com/v2.0/"),
            "{url}"
        );
        assert_eq!(authority("not a url"), AUTHORITY);
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("a b/c:d&e=f?"), "a%20b%2Fc%3Ad%26e%3Df%3F");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn no_consent_url_outside_microsoft() {
        let c = config();
        assert_eq!(admin_consent_url(c.account("gmail").unwrap()), None);
        assert_eq!(admin_consent_url(c.account("local").unwrap()), None);
    }

    #[test]
    fn app_only_instructions_name_the_powershell() {
        let c = config();
        let text = instructions(c.account("robot").unwrap());
        for line in [
            "Connect-ExchangeOnline -Organization 0b3b1a9e-1f7e-4b8e-9f38-6a4c43d5b100",
            "New-ServicePrincipal -AppId 66666666-7777-8888-9999-000000000000 -ObjectId <Object ID of the Enterprise application \"66666666-7777-8888-9999-000000000000\">",
            "Add-MailboxPermission -Identity robot@contoso.com -User <Object ID of the Enterprise application> -AccessRights FullAccess",
            "Enterprise applications → search for 66666666-7777-8888-9999-000000000000 → Object ID",
            "NOT the Object ID on the App registrations page",
            "up to 1 hour",
        ] {
            assert!(text.contains(line), "{line:?} missing in:\n{text}");
        }
        assert!(text.contains(&admin_consent_url(c.account("robot").unwrap()).unwrap()));
    }

    #[test]
    fn delegated_instructions_have_no_powershell() {
        let c = config();
        let text = instructions(c.account("work").unwrap());
        assert!(text.contains("adminconsent?client_id="), "{text}");
        assert!(!text.contains("New-ServicePrincipal"), "{text}");
        assert!(text.contains("`mailsync connect work`"), "{text}");
    }

    #[test]
    fn other_providers_are_told_what_to_do_instead() {
        let c = config();
        let google = instructions(c.account("gmail").unwrap());
        assert!(google.contains("Microsoft Entra concept"), "{google}");
        assert!(google.contains("OAuth consent screen"), "{google}");
        assert!(google.contains("Admin console"), "{google}");
        assert!(!google.contains("adminconsent"), "{google}");
        let custom = instructions(c.account("local").unwrap());
        assert!(custom.contains("Microsoft Entra concept"), "{custom}");
        assert!(custom.contains("imap"), "{custom}");
    }
}
