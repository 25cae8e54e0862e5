//! OAuth 2.0 for IMAP: the flows ([`flows`]), the encrypted token store's key
//! ([`crypto`]), what failures mean ([`diagnose`]) and the admin-consent URL some of
//! them name ([`consent`]), and [`TokenSource`], which hands
//! out access tokens: cached in memory and, sealed, in the state database for the next
//! process (a one-shot `sync` then asks the identity provider nothing), refreshed ahead
//! of expiry, the rotated refresh token stored before the new access token is used.

pub mod consent;
pub mod crypto;
pub mod diagnose;
mod error;
pub mod flows;
pub mod http;
pub mod reply;
mod scopes;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{Account, Flow};
use crate::secret::Secret;
use crate::state::{GrantStatus, State, StoredAccessToken, unix_now};

pub use error::{AuthError, StoreError};
pub use flows::Grant;
pub use scopes::{SMTP_SEND, Sending, is_smtp_send, sending};

/// Refresh this long before the access token expires, so a command never starts with a
/// token about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(120);

struct Cached {
    token: Secret,
    expires: Instant,
}

/// Hands out access tokens for one account.
pub struct TokenSource {
    account: Account,
    state_dir: PathBuf,
    secret: Option<Secret>,
    /// Built for the first request to the identity provider, not before: building it
    /// loads the system's CA bundle, wasted when a stored token serves.
    http: Option<reqwest::Client>,
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
            http: None,
            cached: None,
            token_requests: 0,
            scopes: account.oauth.scopes.clone(),
        })
    }

    /// A valid access token: the one in memory while it has time left, else the one
    /// an earlier process stored if it has, else a new one.
    pub async fn access_token(&mut self) -> Result<Secret, AuthError> {
        if let Some(c) = &self.cached
            && c.expires > Instant::now() + REFRESH_MARGIN
        {
            return Ok(c.token.clone());
        }
        if let Some(token) = self.stored_token() {
            return Ok(token);
        }
        self.request_access_token().await
    }

    /// A new access token from the identity provider, whatever is cached (for `mailsync
    /// test`, which checks that the provider issues one); kept like any other.
    pub async fn request_access_token(&mut self) -> Result<Secret, AuthError> {
        let grant = self.request().await?;
        if !grant.scopes.is_empty() {
            self.scopes = grant.scopes.clone();
        }
        self.store(&grant);
        let token = grant.access_token.clone();
        // A lifetime beyond the clock's reach is a token not kept: the next call asks
        // again (flows bound it well below that).
        self.cached = grant.expires().map(|expires| Cached {
            token: grant.access_token,
            expires,
        });
        Ok(token)
    }

    /// Forgets the token (the server refused it), here and in the store, so neither the
    /// next call nor the next process uses it again.
    pub fn invalidate(&mut self) {
        self.cached = None;
        let deleted = State::open(&self.state_dir)
            .and_then(|mut state| state.delete_access_token(&self.account.name));
        if let Err(e) = deleted {
            tracing::warn!(account = %self.account.name, "cannot forget the stored access token: {e}");
        }
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

    fn open_store(&self) -> Result<(State, crypto::TokenKey), AuthError> {
        let key =
            crypto::TokenKey::load_or_create(&self.state_dir).map_err(|e| self.store_err(e))?;
        let state = State::open(&self.state_dir).map_err(|e| self.store_err(e))?;
        Ok((state, key))
    }

    /// What a stored access token is bound to: the settings that obtained it. One kept
    /// under other settings (another app, endpoint, user or scopes) does not open.
    fn issued_for(&self) -> String {
        let a = &self.account;
        format!(
            "{}\0{}\0{}\0{}\0{}",
            a.flow.as_str(),
            a.client_id.as_deref().unwrap_or(""),
            a.oauth.token_url,
            a.login_user,
            a.oauth.scopes.join(" ")
        )
    }

    /// The access token an earlier process stored, made the cached one, if it has more
    /// than [`REFRESH_MARGIN`] left. Anything wrong with the store means "none": a
    /// request then gets a token, or reports what is wrong.
    fn stored_token(&mut self) -> Option<Secret> {
        let stored = match self.load_stored() {
            Ok(stored) => stored?,
            Err(e) => {
                tracing::warn!(account = %self.account.name, "cannot read the stored access token: {e}");
                return None;
            }
        };
        // Bounded like a new token's lifetime: the row may come from an older mailsync
        // that stored whatever the identity provider said.
        let left = u64::try_from(stored.expires.saturating_sub(unix_now())).ok()?;
        let left = Duration::from_secs(left).min(reply::MAX_TOKEN_LIFETIME);
        if left <= REFRESH_MARGIN {
            return None;
        }
        tracing::debug!(account = %self.account.name, expires_in = left.as_secs(), "access token (stored)");
        if !stored.scopes.is_empty() {
            self.scopes = stored.scopes;
        }
        self.cached = Some(Cached {
            token: stored.token.clone(),
            expires: Instant::now().checked_add(left)?,
        });
        Some(stored.token)
    }

    fn load_stored(&self) -> Result<Option<StoredAccessToken>, AuthError> {
        let (mut state, key) = self.open_store()?;
        if self.account.flow.is_delegated() {
            // A sign-in found dead (or removed) is reported now, by `request`, not once
            // the token kept from before has lapsed.
            let live = state
                .grant_summary(&self.account.name)
                .map_err(|e| self.store_err(e))?
                .is_some_and(|g| g.status == GrantStatus::Ok);
            if !live {
                return Ok(None);
            }
        }
        state
            .load_access_token(&key, &self.account.name, &self.issued_for())
            .map_err(|e| self.store_err(e))
    }

    /// Keeps a new access token for the next process. Best effort: without it, the
    /// next process asks for a new one.
    fn store(&self, grant: &Grant) {
        // One with no more than the margin left would never be reused.
        if grant.expires_in <= REFRESH_MARGIN {
            return;
        }
        let token = StoredAccessToken {
            token: grant.access_token.clone(),
            expires: grant.expires_at(),
            scopes: self.scopes.clone(),
        };
        let saved = self.open_store().and_then(|(mut state, key)| {
            state
                .save_access_token(&key, &self.account.name, &self.issued_for(), &token)
                .map_err(|e| self.store_err(e))
        });
        if let Err(e) = saved {
            tracing::warn!(account = %self.account.name, "cannot keep the access token for the next run: {e}");
        }
    }

    fn http(&mut self) -> Result<reqwest::Client, AuthError> {
        if let Some(http) = &self.http {
            return Ok(http.clone());
        }
        let http = flows::http_client_for(&self.account)?;
        self.http = Some(http.clone());
        Ok(http)
    }

    async fn request(&mut self) -> Result<Grant, AuthError> {
        let account = self.account.clone();
        if !account.flow.is_delegated() {
            let secret = self.secret.clone().ok_or_else(|| AuthError::NoSecret {
                account: account.name.clone(),
            })?;
            let http = self.http()?;
            self.token_requests += 1;
            let grant = flows::client_credentials(&account, &secret, &http).await?;
            tracing::debug!(account = %account.name, expires_in = grant.expires_in.as_secs(), "access token (client credentials)");
            return Ok(grant);
        }

        let (mut state, key) = self.open_store()?;
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
        let http = self.http()?;
        self.token_requests += 1;
        let mut account = account;
        account.oauth.scopes = scopes::refresh_scopes(&self.account, &loaded.grant.scopes);
        let grant = match flows::refresh(&account, &refresh_token, &http).await {
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
                // Reported once, by whoever asked (the command's last line, the
                // daemon's log): an error line here as well said it twice.
                tracing::debug!(account = %account.name, "the grant is dead: marked needs connect");
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let expires_at = grant.expires_at();
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

    /// Account `work` with `flow` (TOML lines), its identity provider unreachable: any
    /// request fails, so a token obtained is one from the store.
    fn unreachable_account(dir: &Path, flow: &str) -> Account {
        let d = dir.display();
        std::fs::write(dir.join("cs"), "CS-SECRET-VALUE\n").unwrap();
        let text = format!(
            r#"[daemon]
state_dir = "{d}/state"
[accounts.work]
provider = "custom"
email = "jane@example.com"
client_id = "app"
{flow}
maildir = "{d}/Mail"
imap_host = "localhost"
imap_port = 993
tls = "implicit"
token_url = "http://127.0.0.1:1/token"
device_url = "http://127.0.0.1:1/devicecode"
scopes = ["IMAP.AccessAsUser.All", "offline_access"]
[accounts.work.folders]
Inbox = "INBOX"
"#
        );
        crate::config::parse(&text, &dir.join("config.toml"))
            .unwrap()
            .accounts["work"]
            .clone()
    }

    fn connect(state: &mut State, key: &crypto::TokenKey) {
        let grant = StoredGrant {
            account: "work".into(),
            flow: "device".into(),
            refresh_token: Some(Secret::new("RT-SECRET-VALUE")),
            scopes: vec![],
            granted_to: None,
            access_expires: None,
        };
        state.save_grant(key, &grant).unwrap();
    }

    fn keep(
        state: &mut State,
        key: &crypto::TokenKey,
        source: &TokenSource,
        token: &str,
        left: i64,
    ) {
        let t = StoredAccessToken {
            token: Secret::new(token),
            expires: unix_now() + left,
            scopes: vec!["IMAP.AccessAsUser.All".into()],
        };
        state
            .save_access_token(key, "work", &source.issued_for(), &t)
            .unwrap();
    }

    /// What a second `mailsync sync` sees: the first one's token, no request, no HTTP
    /// client built; once the server refuses it, it is gone for every process.
    #[tokio::test]
    async fn a_stored_token_serves_without_a_request_until_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let account = unreachable_account(dir.path(), "flow = \"device\"");
        let key = crypto::TokenKey::load_or_create(&state_dir).unwrap();
        let mut state = State::open(&state_dir).unwrap();
        connect(&mut state, &key);
        let mut source = TokenSource::new(&account, &state_dir).unwrap();
        assert!(source.http.is_none(), "new() built the HTTP client");
        keep(&mut state, &key, &source, "AT-1", 3600);

        assert_eq!(source.access_token().await.unwrap(), Secret::new("AT-1"));
        assert_eq!(source.access_token().await.unwrap(), Secret::new("AT-1"));
        assert_eq!(source.token_requests(), 0);
        assert!(source.http.is_none(), "the HTTP client was built");
        assert_eq!(source.granted_scopes(), ["IMAP.AccessAsUser.All"]);
        let left = source.expires_in().unwrap();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));

        source.invalidate();
        assert_eq!(
            state
                .load_access_token(&key, "work", &source.issued_for())
                .unwrap(),
            None,
            "a refused token stayed in the store"
        );
        let mut next = TokenSource::new(&account, &state_dir).unwrap();
        for s in [&mut source, &mut next] {
            assert!(s.access_token().await.is_err(), "no request was made");
            assert_eq!(s.token_requests(), 1);
        }
    }

    /// The stored token is passed over when it is close to expiry, when it was kept
    /// under other OAuth settings, and when the sign-in is dead or gone; a dead one is
    /// reported at once, without a request.
    #[tokio::test]
    async fn a_stored_token_is_passed_over_when_it_must_not_serve() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let account = unreachable_account(dir.path(), "flow = \"device\"");
        let key = crypto::TokenKey::load_or_create(&state_dir).unwrap();
        let mut state = State::open(&state_dir).unwrap();
        connect(&mut state, &key);
        let source = TokenSource::new(&account, &state_dir).unwrap();

        keep(&mut state, &key, &source, "AT-1", 100);
        let mut s = TokenSource::new(&account, &state_dir).unwrap();
        assert!(s.access_token().await.is_err());
        assert_eq!(s.token_requests(), 1, "a token about to lapse was used");

        keep(&mut state, &key, &source, "AT-2", 3600);
        let mut other = account.clone();
        other.oauth.scopes.push("SMTP.Send".into());
        let mut s = TokenSource::new(&other, &state_dir).unwrap();
        assert!(s.access_token().await.is_err());
        assert_eq!(s.token_requests(), 1, "a token for other scopes was used");
        assert_eq!(
            state
                .load_access_token(&key, "work", &source.issued_for())
                .unwrap(),
            None,
            "a row that did not open was kept"
        );

        keep(&mut state, &key, &source, "AT-3", 3600);
        state.mark_needs_connect("work", "invalid_grant").unwrap();
        let mut s = TokenSource::new(&account, &state_dir).unwrap();
        let err = s.access_token().await.unwrap_err();
        assert!(matches!(err, AuthError::NeedsConnect { .. }), "{err:?}");
        assert_eq!(s.token_requests(), 0);

        assert!(state.delete_grant("work").unwrap());
        keep(&mut state, &key, &source, "AT-4", 3600);
        let mut s = TokenSource::new(&account, &state_dir).unwrap();
        let err = s.access_token().await.unwrap_err();
        assert!(matches!(err, AuthError::NotConnected { .. }), "{err:?}");
        assert_eq!(s.token_requests(), 0);
    }

    /// App-only tokens have no grant row to check: the stored one serves as it is.
    #[tokio::test]
    async fn a_stored_app_only_token_serves() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let d = dir.path().display();
        let account = unreachable_account(
            dir.path(),
            &format!("flow = \"client-credentials\"\nclient_secret_file = \"{d}/cs\""),
        );
        let key = crypto::TokenKey::load_or_create(&state_dir).unwrap();
        let mut state = State::open(&state_dir).unwrap();
        let mut source = TokenSource::new(&account, &state_dir).unwrap();
        keep(&mut state, &key, &source, "AT-1", 3600);
        assert_eq!(source.access_token().await.unwrap(), Secret::new("AT-1"));
        assert_eq!(source.token_requests(), 0);
        // `mailsync test` asks the identity provider regardless.
        assert!(source.request_access_token().await.is_err());
        assert_eq!(source.token_requests(), 1);
    }

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
