//! The HTTP client for identity providers. Plain `http://` endpoints are allowed only
//! towards this machine (the config checks the name: `localhost`, `*.localhost` or a
//! loopback IP); this client checks the address: a `localhost` name that resolves
//! anywhere but a loopback address is refused before a connection is made, and plain
//! http never goes through a proxy. Either would put the client secret, a refresh
//! token or an authorization code on the network in clear.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::error::AuthError;
use crate::config::Account;

/// The HTTP client for an account's identity provider, one per CA set and process:
/// it shares the IMAP side's TLS configuration (system CAs plus the account's
/// `ca_file`), whose construction is the expensive part. Redirects are never followed:
/// a token endpoint that redirects is misconfigured, and following could send a
/// secret elsewhere (the oauth2 crate's advice).
pub fn http_client_for(account: &Account) -> Result<reqwest::Client, AuthError> {
    http_client_with(&account.name, account.imap.ca_file.as_deref())
}

/// The HTTP client trusting the system's CAs only (e.g. for Google's revocation).
pub fn http_client(account: &str) -> Result<reqwest::Client, AuthError> {
    http_client_with(account, None)
}

fn http_client_with(account: &str, ca_file: Option<&Path>) -> Result<reqwest::Client, AuthError> {
    static CLIENTS: OnceLock<Mutex<HashMap<Option<PathBuf>, reqwest::Client>>> = OnceLock::new();
    let key = ca_file.map(Path::to_path_buf);
    let clients = CLIENTS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Ok(c) = clients.lock()
        && let Some(client) = c.get(&key)
    {
        return Ok(client.clone());
    }
    let transient = |detail: String| AuthError::Transient {
        account: account.to_owned(),
        detail,
    };
    // A ca_file that cannot be read or parsed is the config's fault: retrying will
    // not help, so it is no transient failure.
    let tls = crate::tls::tls_connector(key.as_deref()).map_err(|e| match e {
        crate::tls::TlsError::CaFile { .. } => AuthError::Io {
            account: account.to_owned(),
            detail: e.to_string(),
        },
        e => transient(e.to_string()),
    })?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .dns_resolver(Arc::new(LoopbackNames))
        // No proxy from the environment for plain http (HTTP_PROXY, ALL_PROXY)...
        .no_proxy();
    // ... but https goes through the one the environment names, as before.
    if let Some(proxy) = https_proxy() {
        builder = builder.proxy(proxy);
    }
    let client = builder.build().map_err(|e| transient(e.to_string()))?;
    if let Ok(mut c) = clients.lock() {
        c.insert(key, client.clone());
    }
    Ok(client)
}

/// The proxy for https from `HTTPS_PROXY` or `ALL_PROXY` (lower case too), minus the
/// hosts in `NO_PROXY`, as reqwest would take it from the environment.
fn https_proxy() -> Option<reqwest::Proxy> {
    let url = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))?;
    match reqwest::Proxy::https(url.trim()) {
        Ok(p) => Some(p.no_proxy(reqwest::NoProxy::from_env())),
        Err(e) => {
            tracing::warn!("ignoring the https proxy from the environment: {e}");
            None
        }
    }
}

/// `localhost` or a name under `.localhost` (RFC 6761): names that stand for this
/// machine, and the only names the config lets plain http go to.
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Resolves names with the system's resolver, and refuses a `localhost` name (see
/// [`is_loopback_name`]) any of whose addresses is not a loopback address.
struct LoopbackNames;

impl reqwest::dns::Resolve for LoopbackNames {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if is_loopback_name(&host)
                && let Some(elsewhere) = addrs.iter().find(|a| !a.ip().is_loopback())
            {
                return Err(Box::new(NotLoopback {
                    host,
                    address: elsewhere.ip(),
                }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A `localhost` name resolved to an address off this machine.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves to {address}, which is not this machine; plain http goes only to a loopback address (fix the name's entry in /etc/hosts or DNS, or use https)"
)]
pub struct NotLoopback {
    pub host: String,
    pub address: IpAddr,
}

/// The refusal behind a failed request, if that is why it failed.
pub fn refused_address<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotLoopback> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<NotLoopback>() {
            return Some(refused);
        }
        next = e.source();
    }
    None
}

/// The most an identity provider's reply may hold: a token reply is a few KiB, and
/// a reply read whole into memory must not be able to take all of it.
pub const MAX_REPLY: usize = 1 << 20;

/// The HTTP client as the oauth2 crate calls it, reading at most [`MAX_REPLY`] bytes
/// of a reply (its own reqwest integration reads any body whole, however large).
pub struct Bounded<'a>(pub &'a reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for Bounded<'_> {
    type Error = oauth2::HttpClientError<reqwest::Error>;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<oauth2::HttpResponse, Self::Error>>
                + Send
                + Sync
                + 'c,
        >,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = request.try_into().map_err(Box::new)?;
            let mut response = self.0.execute(request).await.map_err(Box::new)?;
            let mut reply = oauth2::http::Response::builder()
                .status(response.status())
                .version(response.version());
            for (name, value) in response.headers() {
                reply = reply.header(name, value);
            }
            let body = match read_bounded(&mut response).await {
                Ok(body) => body,
                Err(ReadError::Http(e)) => return Err(Box::new(e).into()),
                Err(ReadError::TooLarge) => {
                    return Err(oauth2::HttpClientError::Other(too_large()));
                }
            };
            reply.body(body).map_err(oauth2::HttpClientError::Http)
        })
    }
}

/// Why [`read_bounded`] failed.
pub enum ReadError {
    Http(reqwest::Error),
    TooLarge,
}

/// What a reply larger than [`MAX_REPLY`] is called.
pub fn too_large() -> String {
    format!(
        "its reply is larger than {} KiB, far more than a token reply",
        MAX_REPLY / 1024
    )
}

/// A reply's body, at most [`MAX_REPLY`] bytes of it.
pub async fn read_bounded(response: &mut reqwest::Response) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > MAX_REPLY {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_names() {
        for h in ["localhost", "LOCALHOST.", "idp.localhost", "a.b.Localhost"] {
            assert!(is_loopback_name(h), "{h}");
        }
        for h in [
            "localhost.example.com",
            "notlocalhost",
            "127.0.0.1",
            "example.com",
        ] {
            assert!(!is_loopback_name(h), "{h}");
        }
    }

    /// `localhost` itself resolves to loopback addresses only (from /etc/hosts or the
    /// resolver's built-in answer), so the check passes it.
    #[tokio::test]
    async fn localhost_resolves() {
        use reqwest::dns::Resolve as _;
        let addrs: Vec<SocketAddr> = LoopbackNames
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
