//! The identity provider's state: users, apps, issued tokens, pending authorization and
//! device codes, and the test controls (lifetimes, injected failures, counters).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Rotation, SecretKind, TokenFailure};

/// A registered application (client).
#[derive(Clone, Debug)]
pub struct App {
    /// The client secret, if it is a confidential client.
    pub secret: Option<String>,
    /// The mailbox an app-only (client credentials) token is bound to.
    pub grant_mailbox: Option<String>,
}

/// An issued access token.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The mailbox the token opens (`None`: an app token with no mailbox grant).
    pub email: Option<String>,
    /// The scope string it was issued for.
    pub scope: String,
    /// The client it was issued to.
    pub client_id: String,
    /// When it stops being active.
    pub expires_at: Instant,
    /// Revoked by the test.
    pub revoked: bool,
}

/// Why a refresh token no longer works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshState {
    /// Usable.
    Active,
    /// Used once; rotation replaced it (AADSTS70008 under [`Rotation::SpendOnUse`]).
    Rotated,
    /// Revoked (AADSTS50173).
    Revoked,
    /// Expired (AADSTS700082).
    Expired,
}

/// An issued refresh token.
#[derive(Clone, Debug)]
pub struct RefreshToken {
    /// The user it belongs to.
    pub email: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The scope string it was issued for.
    pub scope: String,
    /// Its state.
    pub state: RefreshState,
}

/// An authorization code from `/authorize`.
#[derive(Clone, Debug)]
pub struct AuthCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub email: String,
    pub scope: String,
    pub expires_at: Instant,
    pub redeemed: bool,
}

/// Where a device code stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceState {
    Pending,
    Approved(String),
    Declined,
    Redeemed,
}

/// A device code from `/devicecode`.
#[derive(Clone, Debug)]
pub struct DeviceCode {
    pub device_code: String,
    pub user_code: String,
    pub client_id: String,
    pub scope: String,
    pub expires_at: Instant,
    pub interval: Duration,
    pub last_poll: Option<Instant>,
    pub state: DeviceState,
}

/// Everything the IdP knows; guarded by one mutex.
#[derive(Debug)]
pub struct Store {
    pub users: BTreeSet<String>,
    pub apps: HashMap<String, App>,
    pub access: HashMap<String, AccessToken>,
    pub refresh: HashMap<String, RefreshToken>,
    pub codes: HashMap<String, AuthCode>,
    pub devices: Vec<DeviceCode>,
    pub access_lifetime: Duration,
    pub device_interval: Duration,
    pub device_lifetime: Duration,
    pub failures: VecDeque<TokenFailure>,
    /// Injected token failures answered so far.
    pub failures_served: u64,
    pub fail_introspection: bool,
    /// `/introspect` calls answered with HTTP 500 so far.
    pub introspection_failures_served: u64,
    /// What a refresh does to the refresh token it spends.
    pub rotation: Rotation,
    /// Token replies still to be held after their tokens are issued.
    pub stall_next: usize,
    /// Token replies held so far (issued, then not sent until released).
    pub stalled: u64,
    pub consent_required: bool,
    pub signed_in_user: Option<String>,
    pub token_calls: u64,
    pub introspect_calls: u64,
    /// Every secret issued or received, with what it is.
    pub issued: Vec<(SecretKind, String)>,
    pub token_requests: Vec<Vec<(String, String)>>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            users: BTreeSet::new(),
            apps: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            devices: Vec::new(),
            access_lifetime: Duration::from_secs(3600),
            device_interval: Duration::from_secs(5),
            device_lifetime: Duration::from_secs(900),
            failures: VecDeque::new(),
            failures_served: 0,
            fail_introspection: false,
            introspection_failures_served: 0,
            rotation: Rotation::SpendOnUse,
            stall_next: 0,
            stalled: 0,
            consent_required: false,
            signed_in_user: None,
            token_calls: 0,
            introspect_calls: 0,
            issued: Vec::new(),
            token_requests: Vec::new(),
        }
    }
}
