//! The mail data the seeding API exchanges: messages as the server has them, messages
//! to seed, how to move, and flag/date conversions (IMAP ↔ Maildir).

use chrono::{DateTime, FixedOffset};

/// A message as the server has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMessage {
    /// Its UID in the folder.
    pub uid: u32,
    /// Its flags and keywords (`\Seen`, `$Forwarded`, …), without `\Recent`.
    pub flags: Vec<String>,
    /// The exact bytes of `BODY[]`.
    pub body: Vec<u8>,
    /// Its INTERNALDATE.
    pub internaldate: DateTime<FixedOffset>,
}

/// A message to put on the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedMessage {
    /// The raw message (CRLF line endings, as IMAP servers store them).
    pub bytes: Vec<u8>,
    /// Flags, e.g. `\Seen`.
    pub flags: Vec<String>,
    /// INTERNALDATE (default: now).
    pub internaldate: Option<DateTime<FixedOffset>>,
}

impl SeedMessage {
    /// A message with flags and no particular INTERNALDATE.
    pub fn new(bytes: impl Into<Vec<u8>>, flags: &[&str]) -> Self {
        Self {
            bytes: bytes.into(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internaldate: None,
        }
    }
}

impl From<(Vec<u8>, Vec<String>)> for SeedMessage {
    fn from((bytes, flags): (Vec<u8>, Vec<String>)) -> Self {
        Self {
            bytes,
            flags,
            internaldate: None,
        }
    }
}

impl From<(Vec<u8>, Vec<&str>)> for SeedMessage {
    fn from((bytes, flags): (Vec<u8>, Vec<&str>)) -> Self {
        Self::new(bytes, &flags)
    }
}

impl From<&ServerMessage> for SeedMessage {
    fn from(m: &ServerMessage) -> Self {
        Self {
            bytes: m.body.clone(),
            flags: m.flags.clone(),
            internaldate: Some(m.internaldate),
        }
    }
}

/// How [`crate::Dovecot::move_messages`] moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MoveMode {
    /// `UID COPY` then `\Deleted` + `UID EXPUNGE`, the way Exchange clients move.
    #[default]
    CopyExpunge,
    /// `UID MOVE` (RFC 6851).
    Move,
}

/// IMAP date-time for APPEND: `"02-Jan-2024 15:04:05 +0100"`.
pub fn imap_date(d: &DateTime<FixedOffset>) -> String {
    d.format("\"%d-%b-%Y %H:%M:%S %z\"").to_string()
}

/// The parenthesized flag list for APPEND/STORE.
pub fn flag_list(flags: &[String]) -> String {
    format!("({})", flags.join(" "))
}

/// Maildir info letters for system flags, sorted (`\Seen` → `S`, …); keywords are
/// not representable without `dovecot-keywords` and are skipped.
pub fn maildir_letters(flags: &[String]) -> String {
    let mut letters: Vec<char> = flags
        .iter()
        .filter_map(|f| match f.to_ascii_lowercase().as_str() {
            "\\seen" => Some('S'),
            "\\answered" => Some('R'),
            "\\flagged" => Some('F'),
            "\\deleted" => Some('T'),
            "\\draft" => Some('D'),
            _ => None,
        })
        .collect();
    letters.sort_unstable();
    letters.dedup();
    letters.into_iter().collect()
}
