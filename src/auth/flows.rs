//! The OAuth 2.0 flows: device code (RFC 8628), authorization code with PKCE and a
//! loopback redirect (RFC 8252), client credentials, and refresh. Each returns a
//! [`Grant`]; storing it is the caller's business.

use std::fmt;
use std::io::Write;
use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, PkceCodeChallenge,
    RedirectUrl, RefreshToken, RequestTokenError, StandardDeviceAuthorizationResponse,
    StandardRevocableToken, TokenResponse, TokenUrl,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::error::AuthError;
use super::reply::{self, DEFAULT_TOKEN_LIFETIME, TokenReply};
use super::scopes::{scopes, sign_in_scopes};
use crate::config::{Account, Flow};
use crate::secret::Secret;

/// How long a person has to finish signing in (browser flow).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest the device flow waits, whatever the code's announced lifetime
/// (Microsoft's and Google's last 15 and 30 minutes).
const MAX_DEVICE_WAIT: Duration = Duration::from_secs(3600);
/// The longest pause between two polls of the device flow.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

type OAuthTokenResponse = TokenReply;

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    OAuthTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointMaybeSet,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// What a flow obtained.
#[derive(Debug)]
pub struct Grant {
    pub access_token: Secret,
    /// At most [`reply::MAX_TOKEN_LIFETIME`].
    pub expires_in: Duration,
    /// Present for delegated flows; Microsoft rotates it on every refresh.
    pub refresh_token: Option<Secret>,
    pub scopes: Vec<String>,
    /// Who signed in, from the id_token (`preferred_username` / `email`).
    pub identity: Option<String>,
}

impl Grant {
    /// When the access token expires, in unix seconds.
    pub fn expires_at(&self) -> i64 {
        let secs = i64::try_from(self.expires_in.as_secs()).unwrap_or(i64::MAX);
        crate::state::unix_now().saturating_add(secs)
    }

    /// When the access token expires, on this process's clock; `None` if that is
    /// beyond what the clock can hold.
    pub fn expires(&self) -> Option<std::time::Instant> {
        std::time::Instant::now().checked_add(self.expires_in)
    }
}

pub use super::http::{http_client, http_client_for};

fn client(account: &Account, redirect: Option<RedirectUrl>) -> Result<OAuthClient, AuthError> {
    let endpoint = |url: &str, e: &dyn fmt::Display| AuthError::Endpoint {
        account: account.name.clone(),
        url: url.to_owned(),
        detail: e.to_string(),
    };
    let o = &account.oauth;
    let token_url = TokenUrl::new(o.token_url.clone()).map_err(|e| endpoint(&o.token_url, &e))?;
    let auth_url = match &o.authorize_url {
        Some(u) => Some(AuthUrl::new(u.clone()).map_err(|e| endpoint(u, &e))?),
        None => None,
    };
    let device_url = match &o.device_url {
        Some(u) => Some(DeviceAuthorizationUrl::new(u.clone()).map_err(|e| endpoint(u, &e))?),
        None => None,
    };
    let mut c = oauth2::Client::new(ClientId::new(account.client_id.clone().unwrap_or_default()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(token_url)
        .set_auth_uri_option(auth_url)
        .set_device_authorization_url_option(device_url);
    if let Some(r) = redirect {
        c = c.set_redirect_uri(r);
    }
    Ok(c)
}

fn grant_from(account: &Account, r: &OAuthTokenResponse) -> Grant {
    Grant {
        access_token: Secret::new(r.access_token().secret().clone()),
        expires_in: r.expires_in().unwrap_or(DEFAULT_TOKEN_LIFETIME),
        refresh_token: r.refresh_token().map(|t| Secret::new(t.secret().clone())),
        scopes: r
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect())
            .unwrap_or_else(|| account.oauth.scopes.clone()),
        identity: r.id_token().and_then(identity_of),
    }
}

/// The signed-in identity from an id_token's claims. The signature is not checked:
/// the token came straight from the token endpoint over TLS, and it only serves to
/// catch the wrong account signing in, not to authorize anything.
pub fn identity_of(id_token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    ["preferred_username", "email", "upn", "unique_name"]
        .iter()
        .find_map(|k| claims.get(k).and_then(|v| v.as_str()))
        .map(str::to_owned)
}

/// Refuses a grant for someone other than the configured mailbox: browsers often
/// sign in with the last Microsoft account used.
pub fn check_identity(account: &Account, grant: &Grant) -> Result<(), AuthError> {
    match &grant.identity {
        Some(who) if !who.eq_ignore_ascii_case(&account.email) => Err(AuthError::WrongIdentity {
            account: account.name.clone(),
            expected: account.email.clone(),
            actual: who.clone(),
        }),
        _ => Ok(()),
    }
}

/// Client credentials (app-only): the app's own secret, no person involved.
pub async fn client_credentials(
    account: &Account,
    secret: &Secret,
    http: &reqwest::Client,
) -> Result<Grant, AuthError> {
    let c = client(account, None)?.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
    let r = c
        .exchange_client_credentials()
        .add_scopes(scopes(account))
        .request_async(&super::http::Bounded(http))
        .await
        .map_err(|e| classify(account, TOKEN_ENDPOINT, &[secret.expose()], e))?;
    Ok(grant_from(account, &r))
}

/// Trades a refresh token for a new access token (and, with Microsoft, a new refresh
/// token, which the caller must store before using the access token).
pub async fn refresh(
    account: &Account,
    refresh_token: &Secret,
    http: &reqwest::Client,
) -> Result<Grant, AuthError> {
    let c = client(account, None)?;
    let token = RefreshToken::new(refresh_token.expose().to_owned());
    let r = c
        .exchange_refresh_token(&token)
        .add_scopes(scopes(account))
        .request_async(&super::http::Bounded(http))
        .await
        .map_err(|e| classify(account, TOKEN_ENDPOINT, &[refresh_token.expose()], e))?;
    Ok(grant_from(account, &r))
}

/// The device code flow: prints where to go and the code to enter, then polls at the
/// interval the server asks for (slower on `slow_down`) until the person signs in,
/// declines, or the code expires.
pub async fn device(
    account: &Account,
    http: &reqwest::Client,
    out: &mut (dyn Write + Send),
) -> Result<Grant, AuthError> {
    let c = client(account, None)?;
    let request = c
        .exchange_device_code()
        .map_err(|e| AuthError::Endpoint {
            account: account.name.clone(),
            url: "device_url".into(),
            detail: format!("{e} (set device_url for this provider)"),
        })?
        .add_scopes(sign_in_scopes(account))
        .add_extra_param("login_hint", account.email.clone());
    let details: StandardDeviceAuthorizationResponse = request
        .request_async(&super::http::Bounded(http))
        .await
        .map_err(|e| classify(account, DEVICE_ENDPOINT, &[], e))?;
    let _ = writeln!(
        out,
        "To sign in as {}, open {} and enter the code {}",
        account.email,
        details.verification_uri().as_str(),
        details.user_code().secret()
    );
    let _ = writeln!(
        out,
        "(waiting up to {} minutes; Ctrl-C to give up)",
        details
            .expires_in()
            .min(MAX_DEVICE_WAIT)
            .as_secs()
            .div_ceil(60)
    );
    let _ = out.flush();
    // The endpoint's numbers are bounded: a code valid for ever, or an interval of
    // years, would leave `connect` waiting for ever.
    let waiting = details.expires_in().min(MAX_DEVICE_WAIT);
    let poll = |interval: Duration| tokio::time::sleep(interval.min(MAX_POLL_INTERVAL));
    let r = c
        .exchange_device_access_token(&details)
        .request_async(&super::http::Bounded(http), poll, Some(waiting))
        .await
        .map_err(|e| classify_device(account, e))?;
    Ok(grant_from(account, &r))
}

/// The authorization code flow with PKCE (S256) and a loopback redirect: listens on
/// one port of both loopback addresses, opens the browser when there is one (prints
/// the URL either way), checks `state`, and answers the browser with a page saying it
/// can be closed.
pub async fn browser(
    account: &Account,
    http: &reqwest::Client,
    out: &mut (dyn Write + Send),
    open_browser: bool,
) -> Result<Grant, AuthError> {
    let io = |e: std::io::Error| AuthError::Io {
        account: account.name.clone(),
        detail: format!("loopback listener: {e}"),
    };
    let (listeners, port) = loopback_listeners().await.map_err(io)?;
    // `localhost`, as app registrations say (Microsoft's docs tell people to register
    // `http://localhost`; an IP literal would not match it). The browser may resolve
    // it to either loopback address, and both are ours.
    let redirect = format!("http://localhost:{port}/");
    let redirect_url = RedirectUrl::new(redirect.clone()).map_err(|e| AuthError::Endpoint {
        account: account.name.clone(),
        url: redirect.clone(),
        detail: e.to_string(),
    })?;
    let c = client(account, Some(redirect_url))?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf) = c
        .authorize_url(CsrfToken::new_random)
        .map_err(|e| AuthError::Endpoint {
            account: account.name.clone(),
            url: "authorize_url".into(),
            detail: format!("{e} (set authorize_url for this provider)"),
        })?
        .add_scopes(sign_in_scopes(account))
        .set_pkce_challenge(challenge)
        .add_extra_param("login_hint", account.email.clone())
        .url();
    let _ = writeln!(
        out,
        "To sign in as {}, open this page in a browser:\n\n  {url}\n",
        account.email
    );
    let _ = out.flush();
    if open_browser {
        launch_browser(url.as_str());
    }

    let code = tokio::time::timeout(
        BROWSER_TIMEOUT,
        wait_for_redirect(&listeners, csrf.secret()),
    )
    .await
    .map_err(|_| AuthError::Declined {
        account: account.name.clone(),
        detail: format!(
            "nobody finished signing in within {} minutes",
            BROWSER_TIMEOUT.as_secs() / 60
        ),
    })?
    .map_err(|e| match e {
        Redirect::Io(e) => io(e),
        Redirect::Error { error, description } => AuthError::rejected(
            account,
            error_code(&error),
            &reply::server_text(&description, &[]),
        ),
    })?;
    drop(listeners);
    let r = c
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(verifier)
        .request_async(&super::http::Bounded(http))
        .await
        .map_err(|e| classify(account, TOKEN_ENDPOINT, &[&code], e))?;
    Ok(grant_from(account, &r))
}

/// One port on 127.0.0.1 and, where this machine has it, on [::1]: the redirect URI
/// names `localhost`, which a browser may resolve to either, so both must be ours, or
/// another local user could listen on the other one and take the code. A port whose
/// [::1] side is taken is given up for another.
async fn loopback_listeners() -> std::io::Result<(Vec<TcpListener>, u16)> {
    for _ in 0..16 {
        let v4 = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = v4.local_addr()?.port();
        match TcpListener::bind(("::1", port)).await {
            Ok(v6) => return Ok((vec![v4, v6], port)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            // No IPv6 loopback here: nobody can listen there, and no browser connect.
            Err(e) => {
                tracing::debug!("no listener on [::1]:{port}: {e}");
                return Ok((vec![v4], port));
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no port is free on both 127.0.0.1 and [::1]",
    ))
}

enum Redirect {
    Io(std::io::Error),
    Error { error: String, description: String },
}

/// How long one connection to the loopback listener may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog until one is done.
const MAX_CONNECTIONS: usize = 32;

/// Serves the loopback redirect until one carries our `state` with a code or an error.
/// Connections are served side by side, each within [`REQUEST_DEADLINE`], so one that
/// sends nothing (a browser's speculative connection, another local program) does not
/// hold off the real redirect. Other requests (favicon, a stale tab, a forged state)
/// get a page and are ignored.
async fn wait_for_redirect(listeners: &[TcpListener], state: &str) -> Result<String, Redirect> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let mut serving = tokio::task::JoinSet::new();
    loop {
        while serving.try_join_next().is_some() {}
        let accept = async {
            if serving.len() >= MAX_CONNECTIONS {
                // Wait for one to finish before taking another.
                let _ = serving.join_next().await;
                return None;
            }
            let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
            Some(futures::future::select_all(accepts).await.0)
        };
        tokio::select! {
            result = rx.recv() => {
                if let Some(result) = result {
                    return result;
                }
            }
            accepted = accept => match accepted {
                None => {}
                Some(Ok((stream, _))) => {
                    let (state, tx) = (state.to_owned(), tx.clone());
                    serving.spawn(async move {
                        if let Some(result) = serve_redirect(stream, &state).await {
                            let _ = tx.send(result).await;
                        }
                    });
                }
                Some(Err(e)) => return Err(Redirect::Io(e)),
            },
        }
    }
}

/// Reads one request (within [`REQUEST_DEADLINE`]) and answers it; what it carried, if
/// it is the redirect with our `state`.
async fn serve_redirect(
    mut stream: tokio::net::TcpStream,
    state: &str,
) -> Option<Result<String, Redirect>> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    // The request line and headers fit in 8 KiB; the body is irrelevant.
    let _ = tokio::time::timeout(REQUEST_DEADLINE, async {
        while len < buf.len() {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let request = String::from_utf8_lossy(&buf[..len]);
    let target = request
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/");
    let params = query_params(target);
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (status, page, result) = if get("state").as_deref() != Some(state) {
        (
            "400 Bad Request",
            "This is not the sign-in mailsync is waiting for. Start again from the link mailsync printed.",
            None,
        )
    } else if let Some(code) = get("code") {
        (
            "200 OK",
            "Signed in. mailsync has what it needs: you can close this tab.",
            Some(Ok(code)),
        )
    } else {
        let error = get("error").unwrap_or_else(|| "no_code".into());
        let description = get("error_description").unwrap_or_default();
        (
            "400 Bad Request",
            "Sign-in failed. mailsync shows why in the terminal; you can close this tab.",
            Some(Err(Redirect::Error { error, description })),
        )
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mailsync</title></head><body><p>{page}</p></body></html>"
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REQUEST_DEADLINE, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
    result
}

fn query_params(target: &str) -> Vec<(String, String)> {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Opens the system browser when a graphical session is there; otherwise the printed
/// URL is the way (SSH sessions, servers).
fn launch_browser(url: &str) {
    let graphical =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !graphical {
        return;
    }
    let _ = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Which endpoint answered, for messages.
const TOKEN_ENDPOINT: &str = "the token endpoint";
const DEVICE_ENDPOINT: &str = "the device authorization endpoint";

/// An `error` code from the identity provider as shown: the RFC 6749 form (letters,
/// digits, `_`), else a stand-in, since anything else is no code.
fn error_code(code: &str) -> &str {
    let plain = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain { code } else { "invalid_error_code" }
}

/// `sent`: the credentials the request carried, kept out of the server text shown.
fn classify<RE: std::error::Error + 'static>(
    account: &Account,
    endpoint: &str,
    sent: &[&str],
    error: RequestTokenError<RE, BasicErrorResponse>,
) -> AuthError {
    match error {
        RequestTokenError::ServerResponse(r) => AuthError::rejected(
            account,
            error_code(r.error().as_ref()),
            &reply::server_text(
                r.error_description().map(String::as_str).unwrap_or(""),
                sent,
            ),
        ),
        other => transport(account, endpoint, other),
    }
}

fn classify_device<RE: std::error::Error + 'static>(
    account: &Account,
    error: RequestTokenError<RE, oauth2::DeviceCodeErrorResponse>,
) -> AuthError {
    match error {
        RequestTokenError::ServerResponse(r) => {
            let code = error_code(r.error().as_ref()).to_owned();
            let description =
                reply::server_text(r.error_description().map_or("", String::as_str), &[]);
            match code.as_str() {
                "authorization_declined" | "access_denied" => AuthError::Declined {
                    account: account.name.clone(),
                    detail: "the sign-in was declined".into(),
                },
                "expired_token" | "code_expired" => AuthError::Declined {
                    account: account.name.clone(),
                    detail: "the code expired before anyone signed in; run connect again and enter the code sooner".into(),
                },
                _ => AuthError::rejected(account, &code, &description),
            }
        }
        other => transport(account, TOKEN_ENDPOINT, other),
    }
}

/// A failure other than an OAuth error reply. The reply's text is never quoted: a
/// reply that cannot be read is described by [`reply::unreadable`].
fn transport<RE: std::error::Error + 'static, T: oauth2::ErrorResponse + 'static>(
    account: &Account,
    endpoint: &str,
    error: RequestTokenError<RE, T>,
) -> AuthError {
    let transient = |detail: String| AuthError::Transient {
        account: account.name.clone(),
        detail,
    };
    match error {
        RequestTokenError::Request(e) => match super::http::refused_address(&e) {
            Some(refused) => AuthError::Endpoint {
                account: account.name.clone(),
                url: if endpoint == DEVICE_ENDPOINT {
                    account.oauth.device_url.clone().unwrap_or_default()
                } else {
                    account.oauth.token_url.clone()
                },
                detail: refused.to_string(),
            },
            None => transient(error_chain(&e)),
        },
        RequestTokenError::Parse(e, body) => {
            let why = reply::unreadable(endpoint, &e.path().to_string(), &body);
            if why.json {
                AuthError::BadReply {
                    account: account.name.clone(),
                    detail: why.detail,
                }
            } else {
                // Usually an error page from a proxy or the provider: it may pass.
                transient(why.detail)
            }
        }
        // The oauth2 crate's own words; the one quoting the reply's Content-Type is
        // put in ours.
        RequestTokenError::Other(e) if e.contains("Content-Type") => transient(format!(
            "{endpoint}'s reply is not JSON (its Content-Type is not application/json)"
        )),
        RequestTokenError::Other(e) => transient(format!("{endpoint}: {e}")),
        RequestTokenError::ServerResponse(_) => {
            transient(format!("{endpoint} answered with an error"))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl Flow {
    /// Whether a person signs in (and a refresh token is kept).
    pub fn is_delegated(self) -> bool {
        !matches!(self, Flow::ClientCredentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_comes_from_the_id_token_claims() {
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"preferred_username":"jane@contoso.com","oid":"x"}"#);
        assert_eq!(
            identity_of(&format!("eyJhbGciOiJub25lIn0.{payload}.")).as_deref(),
            Some("jane@contoso.com")
        );
        assert_eq!(identity_of("not a jwt"), None);
        assert_eq!(identity_of("a.!!!.c"), None);
    }

    #[test]
    fn redirect_queries_are_decoded() {
        let p = query_params("/?code=a%2Fb&state=xyz&error_description=AADSTS65001%3A+consent");
        assert!(p.contains(&("code".into(), "a/b".into())));
        assert!(p.contains(&("error_description".into(), "AADSTS65001: consent".into())));
        assert!(query_params("/").is_empty());
    }

    #[test]
    fn id_token_is_never_debug_printed() {
        let r: TokenReply = serde_json::from_str(
            r#"{"access_token":"AT","token_type":"Bearer","id_token":"eyJ.secret.x"}"#,
        )
        .unwrap();
        assert_eq!(r.id_token(), Some("eyJ.secret.x"));
        assert!(!format!("{r:?}").contains("secret"));
    }
}
