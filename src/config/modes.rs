//! How an account signs in and how its connection is secured: values serde reads as
//! written, kept as they are in the validated config, below both.

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    /// RFC 8628 device authorization: a code to type on another device.
    Device,
    /// Authorization code with PKCE and a loopback redirect (RFC 8252).
    Browser,
    /// App-only access with the app's own secret; no user signs in.
    ClientCredentials,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Device => "device",
            Flow::Browser => "browser",
            Flow::ClientCredentials => "client-credentials",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    Implicit,
    Starttls,
    /// Only ever towards a loopback address (checked when loading).
    Plain,
}

/// Which way an account syncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The server is the truth: nothing local is sent.
    #[default]
    Pull,
    /// Local flag changes, deletions, moves and new messages reach the server too.
    Both,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Pull => "pull",
            Direction::Both => "both",
        }
    }
}

/// What a local deletion does on the server (two-way accounts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delete {
    /// Move the message to the folder mapped to `@trash` (as Outlook does); where the
    /// account maps none, or inside the trash folder itself, expunge it.
    #[default]
    Trash,
    /// Mark it `\Deleted` and expunge that message by UID.
    Expunge,
}

impl Delete {
    pub fn as_str(self) -> &'static str {
        match self {
            Delete::Trash => "trash",
            Delete::Expunge => "expunge",
        }
    }
}

/// How much a pass may delete or move away from one server folder before it refuses:
/// more than `count` messages and more than `percent` of the folder at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MassDelete {
    pub percent: u32,
    pub count: u32,
}

impl Default for MassDelete {
    fn default() -> Self {
        MassDelete {
            percent: 25,
            count: 50,
        }
    }
}

impl MassDelete {
    /// Whether taking `taken` messages from a folder of `held` is too much at once.
    pub fn exceeded(self, taken: u64, held: u64) -> bool {
        taken > u64::from(self.count) && taken * 100 > held * u64::from(self.percent)
    }
}
