//! The config file as serde reads it: every key optional where a default exists,
//! unknown keys refused. Checks between keys are made on these in `config`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::modes::{Flow, Tls};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub accounts: BTreeMap<String, RawAccount>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawDaemon {
    pub state_dir: Option<String>,
    pub poll_interval: Option<RawDuration>,
    pub idle: Option<bool>,
    pub idle_timeout: Option<RawDuration>,
    pub max_connections: Option<i64>,
    pub command_timeout: Option<RawDuration>,
    pub batch_size: Option<i64>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ProviderKind {
    Microsoft,
    Google,
    Custom,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawAccount {
    pub provider: ProviderKind,
    pub email: String,
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    pub flow: Option<Flow>,
    pub client_secret_file: Option<String>,
    pub maildir: Option<String>,
    /// "pull" or "both" (checked in `config`, as is `delete`, so the error names the
    /// values).
    pub direction: Option<String>,
    pub delete: Option<String>,
    pub max_delete_percent: Option<i64>,
    pub max_delete_count: Option<i64>,
    pub login_user: Option<String>,
    pub imap_host: Option<String>,
    pub imap_port: Option<i64>,
    pub tls: Option<Tls>,
    pub ca_file: Option<String>,
    pub token_url: Option<String>,
    pub device_url: Option<String>,
    pub authorize_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<i64>,
    pub smtp_tls: Option<Tls>,
    /// `false`, or the remote folder (a name or a role such as "@sent").
    pub save_sent: Option<RawSaveSent>,
    #[serde(default)]
    pub folders: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "false, or a remote folder such as \"@sent\"")]
pub(super) enum RawSaveSent {
    Flag(bool),
    Folder(String),
}

/// A duration as written (`"5m"`); parsed later so the error can name the key.
pub(super) struct RawDuration(pub String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration in quotes such as \"5m\" or \"90s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}
