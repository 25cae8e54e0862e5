//! The only module that speaks IMAP: connecting (implicit TLS or STARTTLS), SASL
//! XOAUTH2/OAUTHBEARER, capability gating, and the commands sync needs, each with a
//! timeout and its tagged reply checked.
//!
//! async-imap provides the stream, the framing and the parser; the commands are sent
//! with `run_command` and their replies read here, because its high-level calls end a
//! FETCH stream on NO as if it had succeeded, hide VANISHED and APPENDUID, and drop
//! unsolicited responses past 100 (see `shared/CRATES.md`).

mod connect;
mod date;
mod error;
mod listing;
mod session;
mod stream;
mod uidplus;
pub mod utf7;
mod wire;
mod write;

pub use crate::tls::TlsInfo;
pub use connect::{Client, connect};
pub use date::{format_internaldate, format_message_date, parse_internaldate};
pub use error::{AuthFailure, ImapError};
pub use listing::{Listing, Opened};
pub use session::{
    BodyStep, Capabilities, FetchedMessage, Fingerprinted, IdleEnd, RemoteEntry, Selected, Session,
};
pub use uidplus::UidCode;
pub use write::Appended;

/// Quotes a mailbox name (already in its wire form) as an IMAP quoted string. A name
/// with a control character cannot be one (a CR or LF would end the command and start
/// another, sent by whoever named the folder): such a name is refused.
pub fn quote(name: &str) -> Result<String, ImapError> {
    if name.chars().any(char::is_control) {
        return Err(ImapError::Protocol {
            command: "SELECT".into(),
            detail: format!(
                "the folder name {:?} holds a line break or another control character, which cannot be sent in a command; rename the folder on the server",
                name
            ),
        });
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// Formats UIDs as a compact IMAP sequence set (`1:5,9,12:14`).
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted: Vec<u32> = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            end = sorted[i + 1];
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[3]), "3");
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 12, 13, 14, 3]), "1:3,5,9,12:14");
    }

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote("INBOX").unwrap(), "\"INBOX\"");
        assert_eq!(quote("a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"");
        assert_eq!(
            quote("Gel&APY-schte Elemente").unwrap(),
            "\"Gel&APY-schte Elemente\""
        );
    }

    #[test]
    fn a_name_that_would_inject_a_command_is_refused() {
        for name in ["Inbox\r\nA1 DELETE INBOX", "a\nb", "a\rb", "nul\0"] {
            let e = quote(name).unwrap_err().to_string();
            assert!(e.contains("control character"), "{e}");
            assert!(!e.contains('\n') && !e.contains('\r'), "one line: {e}");
        }
    }
}
