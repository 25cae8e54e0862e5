//! JWT-shaped tokens (`header.payload.signature`, unsigned): access tokens and the
//! `id_token` whose payload carries `preferred_username`, `email`, `oid` and `tid`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::random;

/// Encodes `payload` as an unsigned JWT-shaped string with a random signature part.
pub fn encode(payload: &Value) -> String {
    let header = json!({"typ": "JWT", "alg": "none", "kid": "mailsync-testenv"});
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        random::token(32)
    )
}

/// A deterministic GUID derived from `s` (object IDs for users, tenant IDs).
pub fn stable_guid(s: &str) -> String {
    random::guid_from(&openssl::sha::sha256(s.to_lowercase().as_bytes()))
}

/// The tenant ID for a tenant path segment: itself if it is a GUID, else derived.
pub fn tenant_id(tenant: &str) -> String {
    let is_guid = tenant.len() == 36 && tenant.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if is_guid {
        tenant.to_lowercase()
    } else {
        stable_guid(&format!("tenant:{tenant}"))
    }
}

/// An `id_token` for `email`, issued to `client_id` in `tenant`, with the claims the
/// granted `scopes` allow, as Microsoft v2.0 does: `name` and `preferred_username` for
/// `profile`, `email` for `email`.
pub fn id_token(
    base_url: &str,
    tenant: &str,
    client_id: &str,
    email: &str,
    scopes: &[&str],
) -> String {
    let now = chrono::Utc::now().timestamp();
    let tid = tenant_id(tenant);
    let name = email.split('@').next().unwrap_or(email);
    let mut claims = json!({
        "aud": client_id,
        "iss": format!("{base_url}/{tid}/v2.0"),
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "oid": stable_guid(&format!("user:{email}")),
        "sub": random::token(32),
        "tid": tid,
        "ver": "2.0",
    });
    if scopes.contains(&"profile") {
        claims["name"] = json!(name);
        claims["preferred_username"] = json!(email);
    }
    if scopes.contains(&"email") {
        claims["email"] = json!(email);
    }
    encode(&claims)
}

/// An access token for `email` (or an app-only token when `email` is `None`).
pub fn access_token(client_id: &str, email: Option<&str>, scope: &str, lifetime: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    encode(&json!({
        "aud": "https://outlook.office365.com",
        "appid": client_id,
        "upn": email,
        "scp": scope,
        "iat": now,
        "exp": now + lifetime,
        "uti": random::token(16),
    }))
}
