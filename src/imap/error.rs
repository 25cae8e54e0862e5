//! IMAP errors, with what a user needs to act on them. How an error is retried is
//! decided in one place, [`ImapError::retry`].

use std::time::Duration;

use crate::retry::{Retry, throttle_hint};

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
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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
    /// A command mailsync chose not to send, as it would have done more than asked;
    /// the session is fine.
    #[error("mailsync did not send {command}: {detail}")]
    Withheld { command: String, detail: String },
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

    /// How this failure is retried (see [`crate::retry`]). A throttling server's
    /// hint is read from its own text (NO, BYE or the login's refusal).
    pub fn retry(&self) -> Retry {
        match self {
            ImapError::Timeout { .. }
            | ImapError::Stalled { .. }
            | ImapError::ConnectionLost(_)
            | ImapError::Io(_) => Retry::Reconnect,
            ImapError::Bye(text) => match throttle_hint(text) {
                Some(hint) => Retry::Later(Some(hint)),
                // Exchange ends a session whose token expired with
                // `* BYE Session invalidated - AccessTokenExpired`: the same token
                // would be refused.
                None if text.to_ascii_lowercase().contains("accesstokenexpired") => Retry::NewToken,
                None => Retry::Reconnect,
            },
            ImapError::Connect { .. } | ImapError::Protocol { .. } | ImapError::Withheld { .. } => {
                Retry::Later(None)
            }
            ImapError::Unavailable(text) => Retry::Later(throttle_hint(text)),
            ImapError::No { text, .. } => {
                let t = text.to_ascii_uppercase();
                let busy = t.contains("[UNAVAILABLE]")
                    || t.contains("[INUSE]")
                    || t.contains("[LIMIT]")
                    || t.contains("THROTTLED")
                    || t.contains("SERVER UNAVAILABLE");
                match throttle_hint(text) {
                    Some(hint) => Retry::Later(Some(hint)),
                    None if busy => Retry::Later(None),
                    None => Retry::Never,
                }
            }
            ImapError::Bad { text, .. } => match throttle_hint(text) {
                Some(hint) => Retry::Later(Some(hint)),
                None => Retry::Never,
            },
            ImapError::AuthFailed(_) => Retry::NewToken,
            ImapError::Tls(_)
            | ImapError::NoStartTls { .. }
            | ImapError::NoOAuthMechanism { .. }
            | ImapError::PlainNotLoopback { .. }
            | ImapError::NoMailbox(_) => Retry::Never,
        }
    }

    /// Worth retrying later, as opposed to an error a user must fix.
    pub fn is_transient(&self) -> bool {
        self.retry().is_transient()
    }

    /// The session is unusable after this error: open a new connection.
    pub fn is_fatal_to_session(&self) -> bool {
        !matches!(
            self,
            ImapError::No { .. } | ImapError::NoMailbox(_) | ImapError::Withheld { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_says_how_it_is_retried() {
        let no = |text: &str| ImapError::No {
            command: "SELECT".into(),
            text: text.into(),
        };
        let throttled = no("Request is throttled. Suggested Backoff Time: 299910 milliseconds");
        assert_eq!(
            throttled.retry(),
            Retry::Later(Some(Duration::from_millis(299_910)))
        );
        assert_eq!(
            ImapError::Bye("Connection closed. Suggested Backoff Time: 1500".into()).retry(),
            Retry::Later(Some(Duration::from_millis(1500)))
        );
        assert_eq!(no("[UNAVAILABLE] try later").retry(), Retry::Later(None));
        assert_eq!(no("[NONEXISTENT] no such folder").retry(), Retry::Never);
        assert_eq!(
            ImapError::Bye("shutting down".into()).retry(),
            Retry::Reconnect
        );
        assert_eq!(
            ImapError::Bye("Session invalidated - AccessTokenExpired".into()).retry(),
            Retry::NewToken
        );
        assert_eq!(
            ImapError::ConnectionLost("UID FETCH".into()).retry(),
            Retry::Reconnect
        );
        assert_eq!(
            ImapError::Stalled {
                command: "NOOP".into(),
                after: Duration::from_secs(1)
            }
            .retry(),
            Retry::Reconnect
        );
        assert_eq!(
            ImapError::Protocol {
                command: "greeting".into(),
                detail: "not IMAP".into()
            }
            .retry(),
            Retry::Later(None)
        );
        assert_eq!(
            ImapError::AuthFailed(AuthFailure {
                mechanism: "XOAUTH2",
                server_text: "[AUTHENTICATIONFAILED]".into(),
                challenge: None
            })
            .retry(),
            Retry::NewToken
        );
        assert_eq!(
            ImapError::PlainNotLoopback {
                host: "mail.localhost".into(),
                addr: "10.0.0.1".parse().unwrap()
            }
            .retry(),
            Retry::Never
        );
        // The delay: at least the server's hint, at least the backoff.
        assert_eq!(
            throttled.retry().delay(Duration::from_secs(2)),
            Duration::from_millis(299_910)
        );
        assert_eq!(
            Retry::Later(Some(Duration::from_secs(1))).delay(Duration::from_secs(8)),
            Duration::from_secs(8)
        );
    }
}
