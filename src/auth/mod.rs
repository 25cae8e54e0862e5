//! OAuth 2.0 for IMAP: the flows ([`flows`]), the encrypted token store's key
//! ([`crypto`]), what failures mean ([`diagnose`]), and [`TokenSource`], which hands
//! out access tokens: cached in memory, refreshed ahead of expiry, the rotated refresh
//! token stored before the new access token is used.

pub mod crypto;
pub mod diagnose;
pub mod flows;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{Account, Flow};
use crate::secret::Secret;
use crate::state::{GrantStatus, State, StateError, unix_now};

pub use flows::Grant;

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
        "account {account} needs `mailsync connect {account}`: its sign-in is no longer valid ({reason})"
    )]
    NeedsConnect { account: String, reason: String },
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
    #[error("account {account}: the identity provider refused: {}{}", .diagnosis.cause, fix_note(&.diagnosis.fix))]
    Rejected {
        account: String,
        error: String,
        description: String,
        diagnosis: Box<diagnose::Diagnosis>,
    },
    #[error("account {account}: {detail}")]
    Declined { account: String, detail: String },
    #[error(
        "account {account}: signed in as {actual}, but the account is for {expected}; sign in as {expected} (in a private browser window if the browser picks the wrong account), or change email in the config"
    )]
    WrongIdentity {
        account: String,
        expected: String,
        actual: String,
    },
    #[error(
        "account {account}: the identity provider is unreachable or failing ({detail}); will retry"
    )]
    Transient { account: String, detail: String },
    #[error("account {account}: {detail}")]
    Io { account: String, detail: String },
    #[error("account {account}: token store: {source}")]
    Store {
        account: String,
        #[source]
        source: StoreError,
    },
}

/// What can go wrong with the token store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Key(#[from] crypto::KeyError),
}

fn fix_note(fix: &str) -> String {
    if fix.is_empty() {
        String::new()
    } else {
        format!(". Fix: {fix}")
    }
}

impl AuthError {
    /// A refusal, with what it means for this account.
    pub fn rejected(account: &Account, error: &str, description: &str) -> AuthError {
        let first_line = description
            .split(['\r', '\n'])
            .next()
            .unwrap_or("")
            .to_owned();
        let consent = crate::commands::consent_url::admin_consent_url(account);
        let ctx = diagnose::Context {
            account: &account.name,
            provider: &account.provider,
            flow: account.flow,
            email: &account.email,
            client_id: account.client_id.as_deref().unwrap_or(""),
            consent_url: consent,
        };
        let diagnosis = diagnose::oauth_error(error, &first_line, &ctx);
        if diagnosis.transient {
            return AuthError::Transient {
                account: account.name.clone(),
                detail: format!("{error}: {first_line}"),
            };
        }
        AuthError::Rejected {
            account: account.name.clone(),
            error: error.to_owned(),
            description: first_line,
            diagnosis: Box::new(diagnosis),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, AuthError::Transient { .. })
    }

    /// Only `mailsync connect` can fix this: retrying would not.
    pub fn needs_connect(&self) -> bool {
        match self {
            AuthError::NeedsConnect { .. } | AuthError::NotConnected { .. } => true,
            AuthError::Rejected { diagnosis, .. } => diagnosis.needs_connect,
            _ => false,
        }
    }
}

struct Cached {
    token: Secret,
    expires: Instant,
}

/// Hands out access tokens for one account.
pub struct TokenSource {
    account: Account,
    state_dir: PathBuf,
    secret: Option<Secret>,
    http: reqwest::Client,
    cached: Option<Cached>,
    token_requests: u64,
    scopes: Vec<String>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("account", &self.account.name)
            .field("flow", &self.account.flow)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(account: &Account, state_dir: &Path) -> Result<TokenSource, AuthError> {
        let secret = match account.flow {
            Flow::ClientCredentials => Some(read_secret(account)?),
            _ => None,
        };
        Ok(TokenSource {
            account: account.clone(),
            state_dir: state_dir.to_owned(),
            secret,
            http: flows::http_client_for(account)?,
            cached: None,
            token_requests: 0,
            scopes: account.oauth.scopes.clone(),
        })
    }

    /// A valid access token: the cached one while it has time left, else a new one.
    pub async fn access_token(&mut self) -> Result<Secret, AuthError> {
        if let Some(c) = &self.cached
            && c.expires > Instant::now() + REFRESH_MARGIN
        {
            return Ok(c.token.clone());
        }
        let grant = self.request().await?;
        let token = grant.access_token.clone();
        if !grant.scopes.is_empty() {
            self.scopes = grant.scopes.clone();
        }
        self.cached = Some(Cached {
            token: grant.access_token,
            expires: Instant::now() + grant.expires_in,
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

    /// The scopes of the last token, as the identity provider granted them.
    pub fn granted_scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Calls made to the token endpoint so far.
    pub fn token_requests(&self) -> u64 {
        self.token_requests
    }

    fn store_err(&self, source: impl Into<StoreError>) -> AuthError {
        AuthError::Store {
            account: self.account.name.clone(),
            source: source.into(),
        }
    }

    async fn request(&mut self) -> Result<Grant, AuthError> {
        let account = self.account.clone();
        if !account.flow.is_delegated() {
            let secret = self.secret.clone().ok_or_else(|| AuthError::NoSecret {
                account: account.name.clone(),
            })?;
            self.token_requests += 1;
            let grant = flows::client_credentials(&account, &secret, &self.http).await?;
            tracing::debug!(account = %account.name, expires_in = grant.expires_in.as_secs(), "access token (client credentials)");
            return Ok(grant);
        }

        let key =
            crypto::TokenKey::load_or_create(&self.state_dir).map_err(|e| self.store_err(e))?;
        let mut state = State::open(&self.state_dir).map_err(|e| self.store_err(e))?;
        let loaded = state
            .load_grant(&key, &account.name)
            .map_err(|e| self.store_err(e))?
            .ok_or_else(|| AuthError::NotConnected {
                account: account.name.clone(),
                flow: account.flow.as_str(),
            })?;
        if let GrantStatus::NeedsConnect { reason } = &loaded.status {
            // Never retried in a loop: the grant is dead until a person reconnects.
            return Err(AuthError::NeedsConnect {
                account: account.name.clone(),
                reason: reason.clone(),
            });
        }
        let refresh_token =
            loaded
                .grant
                .refresh_token
                .clone()
                .ok_or_else(|| AuthError::NotConnected {
                    account: account.name.clone(),
                    flow: account.flow.as_str(),
                })?;
        self.token_requests += 1;
        let grant = match flows::refresh(&account, &refresh_token, &self.http).await {
            Ok(g) => g,
            Err(e) if e.needs_connect() => {
                let reason = match &e {
                    AuthError::Rejected {
                        error, description, ..
                    } => format!("{error}: {description}"),
                    other => other.to_string(),
                };
                state
                    .mark_needs_connect(&account.name, &reason)
                    .map_err(|e| self.store_err(e))?;
                tracing::error!(account = %account.name, "{e}");
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let expires_at = unix_now() + grant.expires_in.as_secs() as i64;
        // The rotated refresh token is durable before the access token is used: a
        // crash now must not leave only the old (already spent) one.
        match &grant.refresh_token {
            Some(rotated) => state
                .rotate_refresh_token(&key, &account.name, rotated, Some(expires_at))
                .map_err(|e| self.store_err(e))?,
            None => {
                state
                    .set_access_expiry(&account.name, Some(expires_at))
                    .map_err(|e| self.store_err(e))?;
            }
        }
        tracing::debug!(account = %account.name, expires_in = grant.expires_in.as_secs(), rotated = grant.refresh_token.is_some(), "access token refreshed");
        Ok(grant)
    }
}

/// The client secret, from `client_secret_file` (a bare name is a systemd credential
/// in `$CREDENTIALS_DIRECTORY`), else `$CREDENTIALS_DIRECTORY/<account>.secret`.
pub fn read_secret(account: &Account) -> Result<Secret, AuthError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{LoadedGrant, StoredGrant};

    /// Every type that holds or is near a secret prints without it.
    #[test]
    fn debug_output_never_shows_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("cs"), "CS-SECRET-VALUE\n").unwrap();
        let text = format!(
            r#"[daemon]
state_dir = "{d}/state"
[accounts.work]
provider = "custom"
email = "jane@example.com"
client_id = "app"
flow = "client-credentials"
client_secret_file = "{d}/cs"
maildir = "{d}/Mail"
imap_host = "localhost"
imap_port = 993
tls = "implicit"
token_url = "http://127.0.0.1:1/token"
[accounts.work.folders]
Inbox = "INBOX"
"#
        );
        let config = crate::config::parse(&text, &dir.path().join("config.toml")).unwrap();
        let account = &config.accounts["work"];
        let source = TokenSource::new(account, &dir.path().join("state")).unwrap();
        let grant = Grant {
            access_token: Secret::new("AT-SECRET-VALUE"),
            expires_in: Duration::from_secs(60),
            refresh_token: Some(Secret::new("RT-SECRET-VALUE")),
            scopes: vec!["x".into()],
            identity: Some("jane@example.com".into()),
        };
        let stored = StoredGrant {
            account: "work".into(),
            flow: "device".into(),
            refresh_token: Some(Secret::new("RT-SECRET-VALUE")),
            scopes: vec![],
            granted_to: None,
            access_expires: None,
        };
        let loaded = LoadedGrant {
            grant: stored.clone(),
            status: GrantStatus::Ok,
            updated: 0,
        };
        let key = crypto::TokenKey::load_or_create_in(None, &dir.path().join("state")).unwrap();
        let errors = [
            AuthError::Transient {
                account: "work".into(),
                detail: "x".into(),
            },
            AuthError::NeedsConnect {
                account: "work".into(),
                reason: "invalid_grant".into(),
            },
        ];
        let printed = [
            format!("{config:?}"),
            format!("{account:?}"),
            format!("{source:?}"),
            format!("{grant:?}"),
            format!("{stored:?}"),
            format!("{loaded:?}"),
            format!("{key:?}"),
            format!("{errors:?}"),
            format!("{}", errors[0]),
        ];
        for p in &printed {
            for secret in ["CS-SECRET-VALUE", "AT-SECRET-VALUE", "RT-SECRET-VALUE"] {
                assert!(!p.contains(secret), "{secret} printed in {p}");
            }
        }
        assert!(printed[3].contains("REDACTED"), "{}", printed[3]);
    }
}
