//! An in-process OAuth 2.0 identity provider shaped like Microsoft identity platform
//! v2.0, for tests: token (client credentials, refresh with rotation, authorization code
//! with PKCE, device code), device code, authorize, and RFC 7662 introspection for
//! Dovecot's `oauth2` passdb; plus a test-only control API on [`Idp`].
//!
//! Like Microsoft's, it issues an `id_token` only when the scope has `openid`, with
//! `name` and `preferred_username` only for `profile` and `email` only for `email`.
//!
//! Unlike Microsoft's by default, a refresh spends the refresh token it was given
//! ([`Rotation::SpendOnUse`]): a client that failed to store the rotated one is caught
//! at its next refresh. [`Rotation::KeepOld`] is what Microsoft does.
//!
//! The server runs on its own thread with its own Tokio runtime, so it keeps answering
//! Dovecot even while a test blocks its own runtime (e.g. waiting on a child process).

mod aadsts;
mod grants;
mod jwt;
mod routes;
mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use aadsts::{ErrorContext, KNOWN_CODES, OAuthError};
pub use grants::{DEFAULT_USER_SCOPE, s256};
use routes::Shared;
use store::{App, DeviceState, RefreshState, Store};

/// What a refresh does to the refresh token it was given (the reply always carries a
/// new one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rotation {
    /// The old token is spent: presenting it again is AADSTS70008. Stricter than
    /// Microsoft, so a client that loses the rotated token is caught.
    #[default]
    SpendOnUse,
    /// The old token stays valid (until revoked or expired), as with Microsoft
    /// identity platform: "The Microsoft identity platform doesn't revoke old refresh
    /// tokens when used to fetch new access tokens"
    /// (<https://learn.microsoft.com/en-us/entra/identity-platform/refresh-tokens>).
    KeepOld,
}

/// What a secret recorded by [`Idp::issued_secret_kinds`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretKind {
    /// An access token (a bearer credential for IMAP).
    Access,
    /// A refresh token.
    Refresh,
    /// An OpenID Connect `id_token`.
    IdToken,
    /// A device code (the client's half; the user code is shown to the person).
    DeviceCode,
    /// An authorization code, as `/authorize` redirects with it.
    AuthCode,
    /// A PKCE code verifier, as a client redeemed a code with it.
    PkceVerifier,
}

/// What [`Idp::fail_next_token_calls`] makes the token endpoint answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenFailure {
    /// HTTP `status` (500 or 503) with `temporarily_unavailable` (AADSTS90033).
    Unavailable(u16),
    /// The AADSTS error `code` from the table (65001, 50011, 700016, 7000215, 7000222,
    /// 7000112, 70008, 700082, 50173, 70043, 50076, 50079, 53003, 50057, …), with its
    /// usual `error` string and HTTP status; see [`OAuthError::aadsts`].
    Aadsts(u32),
    /// This reply as it is, whatever it says: HTTP `status` with `body` as
    /// `application/json` (e.g. `expires_in` as a string, or 2^64-1), for hostile and
    /// broken identity providers.
    Raw {
        /// HTTP status.
        status: u16,
        /// The reply's bytes.
        body: String,
    },
    /// Anything else.
    Custom {
        /// HTTP status.
        status: u16,
        /// OAuth `error`.
        error: String,
        /// AADSTS number.
        code: u32,
        /// Description after `AADSTSnnn: `.
        message: String,
    },
}

/// The running identity provider. Dropping it stops the server.
#[derive(Debug)]
pub struct Idp {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Idp {
    /// Starts the IdP on `127.0.0.1:0`.
    pub async fn start() -> Idp {
        Self::start_blocking()
    }

    /// Starts the IdP (usable outside a Tokio runtime too).
    pub fn start_blocking() -> Idp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            store: Mutex::new(Store::default()),
            release: tokio::sync::Notify::new(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = routes::router(shared.clone());
        std::thread::Builder::new()
            .name("mailsync-testenv-idp".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("IdP runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })
            .expect("spawn IdP thread");
        Idp {
            shared,
            addr,
            shutdown: Some(tx),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The socket address the IdP listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `BASE/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.shared.base_url)
    }

    /// `BASE/{tenant}/oauth2/v2.0/devicecode`.
    pub fn device_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/devicecode", self.shared.base_url)
    }

    /// `BASE/{tenant}/oauth2/v2.0/authorize`.
    pub fn authorize_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.shared.base_url)
    }

    /// `BASE/introspect`, for Dovecot.
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.shared.base_url)
    }

    // ---- directory ----

    /// Registers a user (informational: any address can sign in).
    pub fn add_user(&self, email: &str) {
        self.store().users.insert(email.to_string());
    }

    /// The registered users.
    pub fn users(&self) -> Vec<String> {
        self.store().users.iter().cloned().collect()
    }

    /// Registers an app. With a `secret` it is a confidential client (needed for client
    /// credentials); `grant_mailbox` is the mailbox its app-only tokens open.
    pub fn add_app(&self, client_id: &str, secret: Option<&str>, grant_mailbox: Option<&str>) {
        self.store().apps.insert(
            client_id.to_string(),
            App {
                secret: secret.map(str::to_string),
                grant_mailbox: grant_mailbox.map(str::to_string),
            },
        );
    }

    /// Removes an app (its next token request fails with AADSTS700016).
    pub fn remove_app(&self, client_id: &str) {
        self.store().apps.remove(client_id);
    }

    /// Issues an access and a refresh token for `email` as if the user had consented
    /// (registers `client_id` as a public client if unknown). Returns `(access, refresh)`.
    pub fn issue_tokens(&self, client_id: &str, email: &str) -> (String, String) {
        let mut s = self.store();
        s.apps.entry(client_id.to_string()).or_insert(App {
            secret: None,
            grant_mailbox: None,
        });
        s.users.insert(email.to_string());
        let (access, _) = grants::issue_access(&mut s, client_id, Some(email), DEFAULT_USER_SCOPE);
        let refresh = grants::issue_refresh(&mut s, client_id, email, DEFAULT_USER_SCOPE);
        (access, refresh)
    }

    /// Issues just an access token for `email` (for IMAP logins in tests).
    pub fn issue_access_token(&self, client_id: &str, email: &str) -> String {
        let mut s = self.store();
        grants::issue_access(&mut s, client_id, Some(email), DEFAULT_USER_SCOPE).0
    }

    // ---- device code flow ----

    /// The user code of the most recent device code request.
    pub fn latest_user_code(&self) -> Option<String> {
        self.store().devices.last().map(|d| d.user_code.clone())
    }

    fn set_device_state(&self, user_code: Option<&str>, state: DeviceState) -> bool {
        let mut s = self.store();
        let d = match user_code {
            Some(code) => s.devices.iter_mut().rev().find(|d| d.user_code == code),
            None => s.devices.last_mut(),
        };
        match d {
            Some(d) if d.state == DeviceState::Pending => {
                d.state = state;
                true
            }
            _ => false,
        }
    }

    /// Approves a pending device code (by user code, or the latest with `None`) as
    /// `email`. Returns whether a pending code was found.
    pub fn approve_device_code(&self, user_code: Option<&str>, email: &str) -> bool {
        self.store().users.insert(email.to_string());
        self.set_device_state(user_code, DeviceState::Approved(email.to_string()))
    }

    /// Declines a pending device code (`authorization_declined`).
    pub fn decline_device_code(&self, user_code: Option<&str>) -> bool {
        self.set_device_state(user_code, DeviceState::Declined)
    }

    /// Makes every device code issued so far expired (`expired_token`).
    pub fn expire_device_codes(&self) {
        let now = Instant::now();
        for d in &mut self.store().devices {
            d.expires_at = now;
        }
    }

    /// The polling interval announced for new device codes (default 5 s; whole seconds
    /// are announced, `slow_down` is answered when polled faster).
    pub fn set_device_code_interval(&self, interval: Duration) {
        self.store().device_interval = interval;
    }

    /// The lifetime of new device codes (default 900 s).
    pub fn set_device_code_lifetime(&self, lifetime: Duration) {
        self.store().device_lifetime = lifetime;
    }

    // ---- token life cycle ----

    /// The lifetime of access tokens issued from now on (default 3600 s).
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.store().access_lifetime = lifetime;
    }

    /// Makes every access token issued so far expired (introspection: inactive).
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for t in self.store().access.values_mut() {
            t.expires_at = now;
        }
    }

    /// Revokes every access token issued so far.
    pub fn revoke_access_tokens(&self) {
        for t in self.store().access.values_mut() {
            t.revoked = true;
        }
    }

    /// What a refresh does to the refresh token it spends (default
    /// [`Rotation::SpendOnUse`]).
    pub fn set_refresh_rotation(&self, rotation: Rotation) {
        self.store().rotation = rotation;
    }

    /// Revokes the refresh tokens of `email` (next use: AADSTS50173).
    pub fn revoke_refresh_tokens(&self, email: &str) {
        for t in self.store().refresh.values_mut() {
            if t.email.eq_ignore_ascii_case(email) && t.state == RefreshState::Active {
                t.state = RefreshState::Revoked;
            }
        }
    }

    /// Expires the refresh tokens of `email` (next use: AADSTS700082).
    pub fn expire_refresh_tokens(&self, email: &str) {
        for t in self.store().refresh.values_mut() {
            if t.email.eq_ignore_ascii_case(email) && t.state == RefreshState::Active {
                t.state = RefreshState::Expired;
            }
        }
    }

    /// Whether `refresh_token` is still usable.
    pub fn refresh_token_active(&self, refresh_token: &str) -> bool {
        self.store()
            .refresh
            .get(refresh_token)
            .is_some_and(|t| t.state == RefreshState::Active)
    }

    /// Whether `access_token` would introspect as active.
    pub fn access_token_active(&self, access_token: &str) -> bool {
        self.store()
            .access
            .get(access_token)
            .is_some_and(|t| !t.revoked && Instant::now() < t.expires_at)
    }

    // ---- failure injection ----

    /// The next `n` token endpoint calls fail with `kind` (queued after earlier ones).
    pub fn fail_next_token_calls(&self, n: usize, kind: TokenFailure) {
        let mut s = self.store();
        for _ in 0..n {
            s.failures.push_back(kind.clone());
        }
    }

    /// Injected token failures ([`Idp::fail_next_token_calls`]) answered so far.
    pub fn token_failures_served(&self) -> u64 {
        self.store().failures_served
    }

    /// `/introspect` calls failed by [`Idp::fail_introspection`] so far.
    pub fn introspection_failures_served(&self) -> u64 {
        self.store().introspection_failures_served
    }

    /// The next `n` token replies are held after their tokens are issued (a refresh
    /// has then rotated the refresh token): the client waits, as on a connection that
    /// stalls, until [`Idp::release_stalled_token_replies`] (or 300 s, or the IdP is
    /// dropped). [`Idp::stalled_token_replies`] says when one is held.
    pub fn stall_next_token_replies(&self, n: usize) {
        self.store().stall_next += n;
    }

    /// Token replies held so far by [`Idp::stall_next_token_replies`], counted once
    /// their tokens were issued.
    pub fn stalled_token_replies(&self) -> u64 {
        self.store().stalled
    }

    /// Sends the replies held now.
    pub fn release_stalled_token_replies(&self) {
        self.shared.release.notify_waiters();
    }

    /// Clears queued token failures.
    pub fn clear_token_failures(&self) {
        self.store().failures.clear();
    }

    /// Makes `/introspect` answer HTTP 500 (Dovecot: `NO [UNAVAILABLE]`).
    pub fn fail_introspection(&self, fail: bool) {
        self.store().fail_introspection = fail;
    }

    /// Makes `/authorize` redirect with `error=consent_required` (AADSTS65001).
    pub fn set_consent_required(&self, required: bool) {
        self.store().consent_required = required;
    }

    /// The user who "signs in" at `/authorize` regardless of `login_hint` (`None`: the
    /// login hint), to test identity mismatches.
    pub fn set_signed_in_user(&self, email: Option<&str>) {
        self.store().signed_in_user = email.map(str::to_string);
    }

    // ---- observation ----

    /// Calls to the token endpoint so far.
    pub fn token_calls(&self) -> u64 {
        self.store().token_calls
    }

    /// Calls to `/introspect` so far.
    pub fn introspect_calls(&self) -> u64 {
        self.store().introspect_calls
    }

    /// The form parameters of every token request so far (secrets included).
    pub fn token_requests(&self) -> Vec<Vec<(String, String)>> {
        self.store().token_requests.clone()
    }

    /// Every secret issued or received so far (to grep logs for leaks): access,
    /// refresh and id tokens, device and authorization codes, PKCE verifiers.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.store().issued.iter().map(|(_, s)| s.clone()).collect()
    }

    /// [`Idp::issued_secrets`], each with what it is, in the order issued.
    pub fn issued_secret_kinds(&self) -> Vec<(SecretKind, String)> {
        self.store().issued.clone()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.release_stalled_token_replies();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
