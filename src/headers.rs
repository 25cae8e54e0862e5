//! The few header fields kept in the state (Message-ID, From, Subject, Date), read with
//! mail-parser's header-only parse, which is cheap on any message size and tolerates
//! any bytes.

use mail_parser::MessageParser;

/// What is stored about a message besides its record: a few parsed headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub from: Option<String>,
    pub subject: Option<String>,
    pub date: Option<i64>,
}

/// Message-ID and the stored headers of a raw message.
pub fn parse(raw: &[u8]) -> (Option<String>, Headers) {
    let Some(message) = MessageParser::default().parse_headers(raw) else {
        return (None, Headers::default());
    };
    let message_id = message
        .message_id()
        .map(normalize_id)
        .filter(|s| !s.is_empty());
    let from = message
        .from()
        .and_then(|a| a.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(n), Some(addr)) => format!("{n} <{addr}>"),
            (None, Some(addr)) => addr.to_owned(),
            (Some(n), None) => n.to_owned(),
            (None, None) => String::new(),
        });
    let headers = Headers {
        from: from.filter(|s| !s.is_empty()).map(|s| truncate(&s, 512)),
        subject: message.subject().map(|s| truncate(s, 1024)),
        date: message.date().map(|d| d.to_timestamp()),
    };
    (message_id, headers)
}

/// The Message-ID from a `BODY[HEADER.FIELDS (MESSAGE-ID)]` block.
pub fn message_id_from_header_block(block: &[u8]) -> Option<String> {
    MessageParser::default()
        .parse_headers(block)
        .and_then(|m| m.message_id().map(normalize_id))
        .filter(|s| !s.is_empty())
}

fn normalize_id(id: &str) -> String {
    truncate(id.trim().trim_start_matches('<').trim_end_matches('>'), 998)
}

fn truncate(s: &str, max: usize) -> String {
    s[..s.floor_char_boundary(max)].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stored_headers() {
        let raw = b"From: Jane Doe <jane@example.com>\r\nSubject: Hello\r\nDate: Thu, 1 Jan 2026 10:00:00 +0000\r\nMessage-ID: <abc@example.com>\r\n\r\nbody\r\n";
        let (id, h) = parse(raw);
        assert_eq!(id.as_deref(), Some("abc@example.com"));
        assert_eq!(h.from.as_deref(), Some("Jane Doe <jane@example.com>"));
        assert_eq!(h.subject.as_deref(), Some("Hello"));
        assert_eq!(h.date, Some(1_767_261_600));
    }

    #[test]
    fn tolerates_garbage() {
        for raw in [
            &b""[..],
            b"\xff\xfe\x00garbage",
            b"Subject: \xff\xff\r\n\r\n",
            b"\r\n\r\n",
            b"Message-ID:\r\n\r\n",
        ] {
            let (id, _) = parse(raw);
            assert!(id.is_none() || id.as_deref() != Some(""));
        }
        assert_eq!(
            message_id_from_header_block(b"Message-ID: <x@y>\r\n\r\n").as_deref(),
            Some("x@y")
        );
        assert_eq!(message_id_from_header_block(b"\r\n"), None);
    }
}
