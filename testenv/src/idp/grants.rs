//! The OAuth protocol logic of the token, device code, authorize and introspection
//! endpoints, as plain functions over the [`Store`] (the HTTP layer is in `routes`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::aadsts::{ErrorContext, OAuthError};
use super::store::{
    AccessToken, AuthCode, DeviceCode, DeviceState, RefreshState, RefreshToken, Store,
};
use super::{Rotation, SecretKind, TokenFailure, jwt};
use crate::random;

/// A decoded form body or query string.
pub type Params = HashMap<String, String>;

/// The scope user tokens get when the request names none.
pub const DEFAULT_USER_SCOPE: &str =
    "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access openid profile email";

/// How long an authorization code stays redeemable.
const CODE_LIFETIME: Duration = Duration::from_secs(600);

fn param<'a>(p: &'a Params, name: &str) -> Result<&'a str, OAuthError> {
    p.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| OAuthError::missing(name))
}

fn ctx(p: &Params, tenant: &str) -> ErrorContext {
    ErrorContext {
        client_id: p.get("client_id").cloned().unwrap_or_default(),
        tenant: tenant.to_string(),
        redirect_uri: p.get("redirect_uri").cloned().unwrap_or_default(),
    }
}

/// Checks that the client exists and, when a secret is sent (or `secret_required`),
/// that it is right.
fn check_client(
    store: &Store,
    p: &Params,
    tenant: &str,
    secret_required: bool,
) -> Result<(), OAuthError> {
    let client_id = param(p, "client_id")?;
    let Some(app) = store.apps.get(client_id) else {
        return Err(OAuthError::aadsts(700016, &ctx(p, tenant)));
    };
    match (p.get("client_secret"), &app.secret) {
        (Some(sent), Some(real)) if sent != real => {
            Err(OAuthError::aadsts(7000215, &ctx(p, tenant)))
        }
        (Some(_), None) => Err(OAuthError::aadsts(7000215, &ctx(p, tenant))),
        (None, _) if secret_required => Err(OAuthError::aadsts(7000218, &ctx(p, tenant))),
        _ => Ok(()),
    }
}

/// Issues an access token and records it; returns it with its `expires_in`.
pub fn issue_access(
    store: &mut Store,
    client_id: &str,
    email: Option<&str>,
    scope: &str,
) -> (String, u64) {
    let lifetime = store.access_lifetime;
    let secs = lifetime
        .as_secs()
        .max(u64::from(lifetime.subsec_nanos() > 0));
    let token = jwt::access_token(client_id, email, scope, secs as i64);
    store.access.insert(
        token.clone(),
        AccessToken {
            email: email.map(str::to_string),
            scope: scope.to_string(),
            client_id: client_id.to_string(),
            expires_at: Instant::now() + lifetime,
            revoked: false,
        },
    );
    store.issued.push((SecretKind::Access, token.clone()));
    (token, secs)
}

/// Issues a refresh token and records it.
pub fn issue_refresh(store: &mut Store, client_id: &str, email: &str, scope: &str) -> String {
    let token = format!("0.AXEA{}", random::token(96));
    store.refresh.insert(
        token.clone(),
        RefreshToken {
            email: email.to_string(),
            client_id: client_id.to_string(),
            scope: scope.to_string(),
            state: RefreshState::Active,
        },
    );
    store.issued.push((SecretKind::Refresh, token.clone()));
    token
}

/// The full user-token response (access, refresh and id token).
fn user_tokens(
    store: &mut Store,
    base_url: &str,
    tenant: &str,
    client_id: &str,
    email: &str,
    scope: &str,
) -> Value {
    let (access, expires_in) = issue_access(store, client_id, Some(email), scope);
    let refresh = issue_refresh(store, client_id, email, scope);
    let mut reply = json!({
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access,
        "refresh_token": refresh,
    });
    // Like Microsoft: an id_token only for OpenID Connect.
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.contains(&"openid") {
        let id_token = jwt::id_token(base_url, tenant, client_id, email, &scopes);
        store.issued.push((SecretKind::IdToken, id_token.clone()));
        reply["id_token"] = json!(id_token);
    }
    reply
}

/// What the token endpoint answers instead of tokens.
#[derive(Debug)]
pub enum TokenError {
    /// An OAuth error reply.
    OAuth(OAuthError),
    /// A reply as the test wrote it ([`TokenFailure::Raw`]).
    Raw {
        /// HTTP status.
        status: u16,
        /// The reply's bytes.
        body: String,
    },
}

impl From<OAuthError> for TokenError {
    fn from(e: OAuthError) -> TokenError {
        TokenError::OAuth(e)
    }
}

/// Builds the answer of an injected failure.
pub fn injected(failure: &TokenFailure, p: &Params, tenant: &str) -> TokenError {
    match failure {
        TokenFailure::Unavailable(status) => {
            let mut e = OAuthError::aadsts(90033, &ctx(p, tenant));
            e.status = *status;
            e.into()
        }
        TokenFailure::Aadsts(code) => OAuthError::aadsts(*code, &ctx(p, tenant)).into(),
        TokenFailure::Raw { status, body } => TokenError::Raw {
            status: *status,
            body: body.clone(),
        },
        TokenFailure::Custom {
            status,
            error,
            code,
            message,
        } => OAuthError::new(*status, error, *code, message.clone()).into(),
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub fn token(
    store: &mut Store,
    base_url: &str,
    tenant: &str,
    p: &Params,
) -> Result<Value, TokenError> {
    store.token_calls += 1;
    store
        .token_requests
        .push(p.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    if let Some(failure) = store.failures.pop_front() {
        store.failures_served += 1;
        return Err(injected(&failure, p, tenant));
    }
    let reply = match param(p, "grant_type")? {
        "client_credentials" => client_credentials(store, tenant, p),
        "refresh_token" => refresh_token(store, base_url, tenant, p),
        "authorization_code" => authorization_code(store, base_url, tenant, p),
        "urn:ietf:params:oauth:grant-type:device_code" => device_code(store, base_url, tenant, p),
        other => Err(OAuthError::new(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
    };
    Ok(reply?)
}

fn client_credentials(store: &mut Store, tenant: &str, p: &Params) -> Result<Value, OAuthError> {
    check_client(store, p, tenant, true)?;
    let scope = param(p, "scope")?;
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.len() != 1 || !scopes[0].ends_with("/.default") {
        return Err(OAuthError::aadsts(1002012, &ctx(p, tenant)));
    }
    let client_id = param(p, "client_id")?.to_string();
    let mailbox = store.apps[&client_id].grant_mailbox.clone();
    let (access, expires_in) = issue_access(store, &client_id, mailbox.as_deref(), scope);
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access,
    }))
}

fn refresh_token(
    store: &mut Store,
    base_url: &str,
    tenant: &str,
    p: &Params,
) -> Result<Value, OAuthError> {
    check_client(store, p, tenant, false)?;
    let client_id = param(p, "client_id")?.to_string();
    let presented = param(p, "refresh_token")?;
    let Some(rt) = store.refresh.get_mut(presented) else {
        return Err(OAuthError::aadsts(9002313, &ctx(p, tenant)));
    };
    if rt.client_id != client_id {
        return Err(OAuthError::aadsts(70000, &ctx(p, tenant)));
    }
    match rt.state {
        RefreshState::Active => {}
        RefreshState::Rotated => return Err(OAuthError::aadsts(70008, &ctx(p, tenant))),
        RefreshState::Revoked => return Err(OAuthError::aadsts(50173, &ctx(p, tenant))),
        RefreshState::Expired => return Err(OAuthError::aadsts(700082, &ctx(p, tenant))),
    }
    // Like Microsoft: a refresh token may be redeemed for any scope the user
    // consented to, never one more (AADSTS65001: the sign-in must ask for it).
    let requested = p.get("scope").filter(|s| !s.is_empty()).cloned();
    if let Some(requested) = &requested {
        const ALWAYS: [&str; 4] = ["openid", "profile", "email", "offline_access"];
        let granted: Vec<&str> = rt.scope.split_whitespace().collect();
        if requested
            .split_whitespace()
            .any(|s| !ALWAYS.contains(&s) && !granted.contains(&s))
        {
            return Err(OAuthError::aadsts(65001, &ctx(p, tenant)));
        }
    }
    if store.rotation == Rotation::SpendOnUse {
        rt.state = RefreshState::Rotated;
    }
    let email = rt.email.clone();
    let consented = rt.scope.clone();
    let scope = requested.unwrap_or_else(|| consented.clone());
    let reply = user_tokens(store, base_url, tenant, &client_id, &email, &scope);
    // The consent stays with the new refresh token, whatever this refresh asked for.
    if let Some(rt) = reply["refresh_token"]
        .as_str()
        .and_then(|new| store.refresh.get_mut(new))
    {
        rt.scope = consented;
    }
    Ok(reply)
}

/// The PKCE S256 challenge of a verifier.
pub fn s256(verifier: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(openssl::sha::sha256(verifier.as_bytes()))
}

fn authorization_code(
    store: &mut Store,
    base_url: &str,
    tenant: &str,
    p: &Params,
) -> Result<Value, OAuthError> {
    check_client(store, p, tenant, false)?;
    let client_id = param(p, "client_id")?.to_string();
    let code = param(p, "code")?;
    let redirect_uri = param(p, "redirect_uri")?;
    let verifier = param(p, "code_verifier")?;
    store
        .issued
        .push((SecretKind::PkceVerifier, verifier.to_string()));
    let Some(c) = store.codes.get_mut(code) else {
        return Err(OAuthError::aadsts(70000, &ctx(p, tenant)));
    };
    if c.redeemed {
        return Err(OAuthError::aadsts(54005, &ctx(p, tenant)));
    }
    if c.client_id != client_id {
        return Err(OAuthError::aadsts(70000, &ctx(p, tenant)));
    }
    if Instant::now() > c.expires_at {
        return Err(OAuthError::aadsts(70008, &ctx(p, tenant)));
    }
    if c.redirect_uri != redirect_uri {
        return Err(OAuthError::aadsts(50011, &ctx(p, tenant)));
    }
    if c.code_challenge != s256(verifier) {
        return Err(OAuthError::aadsts(50148, &ctx(p, tenant)));
    }
    c.redeemed = true;
    let (email, scope) = (c.email.clone(), c.scope.clone());
    Ok(user_tokens(
        store, base_url, tenant, &client_id, &email, &scope,
    ))
}

fn device_code(
    store: &mut Store,
    base_url: &str,
    tenant: &str,
    p: &Params,
) -> Result<Value, OAuthError> {
    check_client(store, p, tenant, false)?;
    let client_id = param(p, "client_id")?.to_string();
    let code = param(p, "device_code")?;
    let now = Instant::now();
    let Some(d) = store.devices.iter_mut().find(|d| d.device_code == code) else {
        return Err(OAuthError::new(
            400,
            "bad_verification_code",
            70000,
            "The device code is not valid.",
        ));
    };
    if d.client_id != client_id {
        return Err(OAuthError::aadsts(70000, &ctx(p, tenant)));
    }
    if now > d.expires_at {
        return Err(OAuthError::aadsts(70019, &ctx(p, tenant)));
    }
    let too_fast = d
        .last_poll
        .is_some_and(|last| now + Duration::from_millis(200) < last + d.interval);
    d.last_poll = Some(now);
    if too_fast && d.state == DeviceState::Pending {
        return Err(OAuthError::new(
            400,
            "slow_down",
            70000,
            "OAuth 2.0 device flow error. The client is polling too fast; wait the interval between requests.",
        ));
    }
    match d.state.clone() {
        DeviceState::Pending => Err(OAuthError::aadsts(70016, &ctx(p, tenant))),
        DeviceState::Declined => Err(OAuthError::new(
            400,
            "authorization_declined",
            70000,
            "The user denied the authorization request.",
        )),
        DeviceState::Redeemed => Err(OAuthError::aadsts(54005, &ctx(p, tenant))),
        DeviceState::Approved(email) => {
            d.state = DeviceState::Redeemed;
            let scope = d.scope.clone();
            Ok(user_tokens(
                store, base_url, tenant, &client_id, &email, &scope,
            ))
        }
    }
}

fn user_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random::bytes(9)
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`.
pub fn devicecode(
    store: &mut Store,
    base_url: &str,
    tenant: &str,
    p: &Params,
) -> Result<Value, OAuthError> {
    check_client(store, p, tenant, false)?;
    let scope = p
        .get("scope")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| DEFAULT_USER_SCOPE.to_string());
    let user_code = user_code();
    let device_code = format!("DAQABAAEAAAD{}", random::token(64));
    store
        .issued
        .push((SecretKind::DeviceCode, device_code.clone()));
    let verification_uri = format!("{base_url}/devicelogin");
    let d = DeviceCode {
        device_code: device_code.clone(),
        user_code: user_code.clone(),
        client_id: param(p, "client_id")?.to_string(),
        scope,
        expires_at: Instant::now() + store.device_lifetime,
        interval: store.device_interval,
        last_poll: None,
        state: DeviceState::Pending,
    };
    let (expires_in, interval) = (store.device_lifetime.as_secs(), d.interval.as_secs());
    store.devices.push(d);
    Ok(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "expires_in": expires_in,
        "interval": interval,
        "message": format!("To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."),
    }))
}

/// What `/authorize` answers.
pub enum AuthorizeOutcome {
    /// 302 to this location.
    Redirect(String),
    /// An error page (no usable redirect URI or unknown app).
    Page(u16, String),
}

fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let q = serde_urlencoded::to_string(pairs).unwrap_or_default();
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{q}")
}

/// `GET /{tenant}/oauth2/v2.0/authorize`.
pub fn authorize(store: &mut Store, tenant: &str, p: &Params) -> AuthorizeOutcome {
    let Some(client_id) = p.get("client_id").filter(|c| !c.is_empty()) else {
        return AuthorizeOutcome::Page(
            400,
            "AADSTS900144: The request body must contain the following parameter: 'client_id'."
                .into(),
        );
    };
    if !store.apps.contains_key(client_id) {
        let e = OAuthError::aadsts(700016, &ctx(p, tenant));
        return AuthorizeOutcome::Page(400, format!("AADSTS{}: {}", e.code, e.message));
    }
    let Some(redirect_uri) = p.get("redirect_uri").filter(|r| !r.is_empty()) else {
        return AuthorizeOutcome::Page(
            400,
            "AADSTS900144: The request body must contain the following parameter: 'redirect_uri'."
                .into(),
        );
    };
    let state = p.get("state").cloned().unwrap_or_default();
    let fail = |e: OAuthError| {
        let (error, desc) = (e.error.clone(), format!("AADSTS{}: {}", e.code, e.message));
        let mut pairs = vec![
            ("error", error.as_str()),
            ("error_description", desc.as_str()),
        ];
        if !state.is_empty() {
            pairs.push(("state", state.as_str()));
        }
        AuthorizeOutcome::Redirect(with_query(redirect_uri, &pairs))
    };
    if p.get("response_type").map(String::as_str) != Some("code") {
        return fail(OAuthError::new(
            400,
            "unsupported_response_type",
            70005,
            "The app requested an unsupported response type.",
        ));
    }
    let challenge = p.get("code_challenge").filter(|c| !c.is_empty());
    let method = p.get("code_challenge_method").map(String::as_str);
    let Some(challenge) = challenge.filter(|_| method == Some("S256")) else {
        return fail(OAuthError::new(
            400,
            "invalid_request",
            9002325,
            "Proof Key for Code Exchange is required for cross-origin authorization code redemption (code_challenge with code_challenge_method=S256).",
        ));
    };
    if store.consent_required {
        let mut e = OAuthError::aadsts(65001, &ctx(p, tenant));
        e.error = "consent_required".into();
        return fail(e);
    }
    let email = store
        .signed_in_user
        .clone()
        .or_else(|| p.get("login_hint").filter(|h| !h.is_empty()).cloned());
    let Some(email) = email else {
        return fail(OAuthError::new(
            400,
            "login_required",
            50058,
            "A silent sign-in request was sent but no user is signed in.",
        ));
    };
    let scope = p
        .get("scope")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| DEFAULT_USER_SCOPE.to_string());
    let code = format!("0.AXEA{}", random::token(64));
    store.issued.push((SecretKind::AuthCode, code.clone()));
    store.codes.insert(
        code.clone(),
        AuthCode {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            code_challenge: challenge.clone(),
            email,
            scope,
            expires_at: Instant::now() + CODE_LIFETIME,
            redeemed: false,
        },
    );
    let session_state = random::guid();
    let mut pairs = vec![("code", code.as_str())];
    if !state.is_empty() {
        pairs.push(("state", state.as_str()));
    }
    pairs.push(("session_state", session_state.as_str()));
    AuthorizeOutcome::Redirect(with_query(redirect_uri, &pairs))
}

/// `POST /introspect` (RFC 7662); `None` means answer HTTP 500.
pub fn introspect(store: &mut Store, p: &Params) -> Option<Value> {
    store.introspect_calls += 1;
    if store.fail_introspection {
        store.introspection_failures_served += 1;
        return None;
    }
    let token = p.get("token").map(String::as_str).unwrap_or_default();
    let active = store
        .access
        .get(token)
        .filter(|t| !t.revoked && Instant::now() < t.expires_at);
    Some(match active {
        Some(t) => {
            let mut v = json!({
                "active": true,
                "scope": t.scope,
                "client_id": t.client_id,
                "token_type": "Bearer",
            });
            if let Some(email) = &t.email {
                v["email"] = json!(email);
                v["username"] = json!(email);
            }
            v
        }
        None => json!({"active": false}),
    })
}
