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
