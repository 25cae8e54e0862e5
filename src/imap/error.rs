//! IMAP errors, with what a user needs to act on them. Whether an error is retried is
//! decided in one place, [`ImapError::is_transient`].

use std::path::PathBuf;
use std::time::Duration;

/// Why an AUTHENTICATE failed, as far as the server said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFailure {
    pub mechanism: &'static str,
    /// The tagged reply's text, e.g. `[AUTHENTICATIONFAILED] Authentication failed.`
    pub server_text: String,
    /// The decoded JSON challenge some servers send first (`{"status":"401",…}`).
    pub challenge: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {host}:{port} failed: {detail}{hint}")]
    Tls {
        host: String,
        port: u16,
        detail: String,
        hint: String,
    },
    #[error("cannot read ca_file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error(
        "{host} resolved to {addr}, which is not a loopback address: tls = \"plain\" would send the token in clear text; use tls = \"implicit\" or \"starttls\", or a host that is this machine"
    )]
    PlainNotLoopback {
        host: String,
        addr: std::net::IpAddr,
    },
    #[error("{host} does not offer STARTTLS; use tls = \"implicit\" (port 993) or fix the server")]
    NoStartTls { host: String },
    #[error(
        "{host} offers neither AUTH=XOAUTH2 nor AUTH=OAUTHBEARER (it offers: {offered}); OAuth login is impossible on this server"
    )]
    NoOAuthMechanism { host: String, offered: String },
    #[error("authentication failed ({}): {}{}", .0.mechanism, .0.server_text, challenge_note(.0))]
    AuthFailed(AuthFailure),
    #[error("the server is temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("no answer from the server within {}s to {command}", .after.as_secs())]
    Timeout { command: String, after: Duration },
    #[error(
        "the server did not complete {command} in time: it kept sending without finishing (more than {}s beyond what its data justified); the server is overloaded or broken",
        .after.as_secs()
    )]
    Stalled { command: String, after: Duration },
    #[error("the server refused {command}: {text}")]
    No { command: String, text: String },
    #[error("the server rejected {command} as invalid: {text}")]
    Bad { command: String, text: String },
    #[error("the server closed the session: {0}")]
    Bye(String),
    #[error("connection lost during {0}")]
    ConnectionLost(String),
    #[error("unexpected server response to {command}: {detail}")]
    Protocol { command: String, detail: String },
    #[error("mailbox {0} does not exist on the server")]
    NoMailbox(String),
    #[error("I/O error talking to the server: {0}")]
    Io(#[from] std::io::Error),
}

fn challenge_note(f: &AuthFailure) -> String {
    match &f.challenge {
        Some(c) => format!(" (server said: {c})"),
        None => String::new(),
    }
}

impl ImapError {
    /// A folder's UIDVALIDITY is not the one its listing saw.
    pub fn uidvalidity_changed() -> ImapError {
        ImapError::Protocol {
            command: "SELECT".into(),
            detail: "UIDVALIDITY changed during the sync; the next pass will re-pair".into(),
        }
    }

    /// Worth retrying later on a new connection (after backoff), as opposed to an error
    /// a user must fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ImapError::Connect { .. }
            | ImapError::Unavailable(_)
            | ImapError::Timeout { .. }
            | ImapError::Stalled { .. }
            | ImapError::Bye(_)
            | ImapError::ConnectionLost(_)
            | ImapError::Io(_) => true,
            ImapError::No { text, .. } => {
                let t = text.to_ascii_uppercase();
                t.contains("[UNAVAILABLE]")
                    || t.contains("[INUSE]")
                    || t.contains("[LIMIT]")
                    || t.contains("THROTTLED")
                    || t.contains("SERVER UNAVAILABLE")
            }
            _ => false,
        }
    }

    /// The session is unusable after this error: open a new connection.
    pub fn is_fatal_to_session(&self) -> bool {
        !matches!(self, ImapError::No { .. } | ImapError::NoMailbox(_))
    }
}
