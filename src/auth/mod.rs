//! OAuth 2.0 tokens for IMAP: acquiring them (client credentials now; device code,
//! browser and refresh-token flows arrive with `connect`), caching the access token
//! in memory and refreshing it ahead of expiry.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};

use crate::config::{Account, Flow};
use crate::secret::Secret;

/// Refresh this long before the access token expires, so a command never starts with a
/// token about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "account {account} is not connected (flow {flow}): run `mailsync connect {account}` first"
    )]
    NotConnected { account: String, flow: &'static str },
    #[error(
        "account {account}: no client secret: set client_secret_file, or provide {account}.secret in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)"
    )]
    NoSecret { account: String },
    #[error("account {account}: cannot read client secret file {path}: {source}")]
    SecretFile {
        account: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("account {account}: invalid OAuth endpoint {url}: {detail}")]
    Endpoint {
        account: String,
        url: String,
        detail: String,
    },
    #[error(
        "account {account}: the identity provider refused the token request: {error}: {description}"
    )]
    Rejected {
        account: String,
        error: String,
        description: String,
        /// `invalid_grant`: the stored grant is dead and only `connect` can fix it.
        needs_connect: bool,
    },
    #[error(
        "account {account}: the identity provider is unreachable or failing ({detail}); will retry"
    )]
    Transient { account: String, detail: String },
}

impl AuthError {
    pub fn is_transient(&self) -> bool {
        matches!(self, AuthError::Transient { .. })
    }
}

struct Cached {
    token: Secret,
    expires: Instant,
}

/// Hands out access tokens for one account.
pub struct TokenSource {
    account: String,
    flow: Flow,
    client_id: String,
    secret: Option<Secret>,
    token_url: String,
    scopes: Vec<String>,
    http: reqwest::Client,
    cached: Option<Cached>,
    token_requests: u64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("account", &self.account)
            .field("flow", &self.flow)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(account: &Account) -> Result<TokenSource, AuthError> {
        let secret = match account.flow {
            Flow::ClientCredentials => Some(read_secret(account)?),
            _ => None,
        };
        // Redirects are never followed: a token endpoint that redirects is misconfigured,
        // and following could send the secret elsewhere (oauth2's advice).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AuthError::Transient {
                account: account.name.clone(),
                detail: e.to_string(),
            })?;
        Ok(TokenSource {
            account: account.name.clone(),
            flow: account.flow,
            client_id: account.client_id.clone().unwrap_or_default(),
            secret,
            token_url: account.oauth.token_url.clone(),
            scopes: account.oauth.scopes.clone(),
            http,
            cached: None,
            token_requests: 0,
        })
    }

    /// A valid access token: the cached one while it has time left, else a new one.
    pub async fn access_token(&mut self) -> Result<Secret, AuthError> {
        if let Some(c) = &self.cached
            && c.expires > Instant::now() + REFRESH_MARGIN
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.request().await?;
        self.cached = Some(Cached {
            token: token.clone(),
            expires: Instant::now() + lifetime,
        });
        Ok(token)
    }

    /// Forgets the cached token (the server refused it); the next call fetches anew.
    pub fn invalidate(&mut self) {
        self.cached = None;
    }

    /// When the cached access token expires, if there is one.
    pub fn expires_in(&self) -> Option<Duration> {
        self.cached
            .as_ref()
            .map(|c| c.expires.saturating_duration_since(Instant::now()))
    }

    pub fn token_requests(&self) -> u64 {
        self.token_requests
    }

    async fn request(&mut self) -> Result<(Secret, Duration), AuthError> {
        self.token_requests += 1;
        let account = self.account.clone();
        let token_url = TokenUrl::new(self.token_url.clone()).map_err(|e| AuthError::Endpoint {
            account: account.clone(),
            url: self.token_url.clone(),
            detail: e.to_string(),
        })?;
        let client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(token_url);
        let response = match self.flow {
            Flow::ClientCredentials => {
                let secret = self.secret.as_ref().ok_or_else(|| AuthError::NoSecret {
                    account: account.clone(),
                })?;
                let client =
                    client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
                let mut request = client.exchange_client_credentials();
                for s in &self.scopes {
                    request = request.add_scope(Scope::new(s.clone()));
                }
                request.request_async(&self.http).await
            }
            flow => {
                return Err(AuthError::NotConnected {
                    account,
                    flow: flow.as_str(),
                });
            }
        };
        match response {
            Ok(r) => {
                let lifetime = r.expires_in().unwrap_or(Duration::from_secs(3600));
                tracing::debug!(account = %self.account, expires_in = lifetime.as_secs(), "got an access token");
                Ok((Secret::new(r.access_token().secret().clone()), lifetime))
            }
            Err(e) => Err(classify(&account, e)),
        }
    }
}

fn classify<RE: std::error::Error + 'static>(
    account: &str,
    error: RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> AuthError {
    match error {
        RequestTokenError::ServerResponse(r) => {
            let code = r.error().as_ref().to_owned();
            let description = r
                .error_description()
                .map(|d| first_line(d).to_owned())
                .unwrap_or_default();
            if code == "temporarily_unavailable" || code == "server_error" {
                return AuthError::Transient {
                    account: account.to_owned(),
                    detail: format!("{code}: {description}"),
                };
            }
            AuthError::Rejected {
                account: account.to_owned(),
                needs_connect: code == "invalid_grant",
                error: code,
                description,
            }
        }
        RequestTokenError::Request(e) => AuthError::Transient {
            account: account.to_owned(),
            detail: error_chain(&e),
        },
        RequestTokenError::Parse(e, body) => AuthError::Transient {
            account: account.to_owned(),
            detail: format!(
                "unreadable answer ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
        RequestTokenError::Other(e) => AuthError::Transient {
            account: account.to_owned(),
            detail: e,
        },
    }
}

fn first_line(s: &str) -> &str {
    s.split(['\r', '\n']).next().unwrap_or(s)
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

/// The client secret, from `client_secret_file` (a bare name is a systemd credential
/// in `$CREDENTIALS_DIRECTORY`), else `$CREDENTIALS_DIRECTORY/<account>.secret`.
fn read_secret(account: &Account) -> Result<Secret, AuthError> {
    let path: PathBuf = match account.client_secret_path() {
        Some(p) => p,
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Path::new(&dir).join(format!("{}.secret", account.name)),
            None => {
                return Err(AuthError::NoSecret {
                    account: account.name.clone(),
                });
            }
        },
    };
    let text =
        Secret::new(
            std::fs::read_to_string(&path).map_err(|source| AuthError::SecretFile {
                account: account.name.clone(),
                path: path.clone(),
                source,
            })?,
        );
    let secret = text.expose().trim();
    if secret.is_empty() {
        return Err(AuthError::SecretFile {
            account: account.name.clone(),
            path,
            source: std::io::Error::other("the file is empty"),
        });
    }
    Ok(Secret::new(secret))
}
