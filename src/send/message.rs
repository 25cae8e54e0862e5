//! What `send` makes of the message on its standard input (pure): the recipients
//! (`-t` reads To, Cc and Bcc), the Bcc fields taken out, a Date and a Message-ID
//! added when missing (as Postfix does), CRLF line endings for SMTP.

use mail_parser::MessageParser;

/// What the command line asked for.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// `-t`: the recipients are in To, Cc and Bcc (and those on the command line too).
    pub recipients_from_headers: bool,
    /// The command line's recipients.
    pub recipients: Vec<String>,
}

/// A message ready to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub recipients: Vec<String>,
    /// Without angle brackets.
    pub message_id: String,
    /// CRLF line endings, Bcc removed, Date and Message-ID present.
    pub message: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the message on standard input is empty")]
    Empty,
    #[error(
        "no recipients: give them as arguments (mailsync send ADDRESS…), or use -t to take them from the To, Cc and Bcc fields"
    )]
    NoRecipients,
    #[error("{0:?} is not an email address")]
    BadAddress(String),
}

/// The address in the message's From field, for choosing the account.
pub fn from_address(raw: &[u8]) -> Option<String> {
    let parsed = MessageParser::default().parse_headers(raw)?;
    parsed
        .from()?
        .first()?
        .address()
        .map(|a| a.trim().to_owned())
}

/// Whether `s` can go in `MAIL FROM:<…>` or `RCPT TO:<…>`.
pub fn is_address(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 320
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ','))
}

/// Prepares `raw` for sending. `now` (seconds) dates a message without a Date, and
/// `unique` with `domain` makes a Message-ID for one without.
pub fn prepare(
    raw: &[u8],
    request: &Request,
    domain: &str,
    now: i64,
    unique: &str,
) -> Result<Prepared, MessageError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(MessageError::Empty);
    }
    let crlf = to_crlf(raw);
    let header_end = find(&crlf, b"\r\n\r\n").map_or(crlf.len(), |i| i + 2);
    let (header, body) = crlf.split_at(header_end);

    let mut recipients: Vec<String> = Vec::new();
    let mut add = |address: &str| -> Result<(), MessageError> {
        let address = address.trim();
        if !is_address(address) {
            return Err(MessageError::BadAddress(address.to_owned()));
        }
        if !recipients.iter().any(|r| r.eq_ignore_ascii_case(address)) {
            recipients.push(address.to_owned());
        }
        Ok(())
    };
    let parsed = MessageParser::default().parse_headers(header);
    if request.recipients_from_headers
        && let Some(parsed) = &parsed
    {
        for list in [parsed.to(), parsed.cc(), parsed.bcc()]
            .into_iter()
            .flatten()
        {
            for a in list.iter() {
                if let Some(address) = a.address() {
                    add(address)?;
                }
            }
        }
    }
    for r in &request.recipients {
        // sendmail takes "a@x, b@y" as two recipients.
        for one in r.split(',').filter(|s| !s.trim().is_empty()) {
            add(one)?;
        }
    }
    if recipients.is_empty() {
        return Err(MessageError::NoRecipients);
    }

    let message_id = parsed
        .as_ref()
        .and_then(|p| p.message_id())
        .map(|id| id.trim().trim_matches(['<', '>']).to_owned())
        .filter(|id| !id.is_empty());
    let has_date = fields(header).any(|f| field_is(f, "date"));
    let mut message = Vec::with_capacity(crlf.len() + 128);
    if !has_date {
        message.extend_from_slice(
            format!("Date: {}\r\n", crate::imap::format_message_date(now)).as_bytes(),
        );
    }
    let message_id = match message_id {
        Some(id) => id,
        None => {
            let id = format!("{unique}@{domain}");
            message.extend_from_slice(format!("Message-ID: <{id}>\r\n").as_bytes());
            id
        }
    };
    for field in fields(header) {
        if !field_is(field, "bcc") {
            message.extend_from_slice(field);
        }
    }
    message.extend_from_slice(body);
    Ok(Prepared {
        recipients,
        message_id,
        message,
    })
}

/// LF line ends become CRLF; CRLF stays.
pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut previous = 0u8;
    for &b in raw {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The header's fields, each with its continuation lines and line ends.
fn fields(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = header;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        loop {
            match rest[end..].iter().position(|&b| b == b'\n') {
                Some(i) => end += i + 1,
                None => end = rest.len(),
            }
            if end >= rest.len() || !matches!(rest[end], b' ' | b'\t') {
                break;
            }
        }
        let (field, after) = rest.split_at(end);
        rest = after;
        Some(field)
    })
}

fn field_is(field: &[u8], name: &str) -> bool {
    field.len() > name.len()
        && field[..name.len()].eq_ignore_ascii_case(name.as_bytes())
        && field[name.len()..]
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t'))
            == Some(&b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(t: bool, to: &[&str]) -> Request {
        Request {
            recipients_from_headers: t,
            recipients: to.iter().map(|s| s.to_string()).collect(),
        }
    }

    const MUTT: &[u8] = b"Date: Mon, 07 Dec 2026 10:00:00 +0100\n\
From: Jane <jane@contoso.com>\n\
To: Bob <bob@example.com>, carol@example.com\n\
Cc: \"Dan, D.\" <dan@example.com>\n\
Bcc: eve@example.com,\n\x20frank@example.com\n\
Subject: Hello\n\
Message-ID: <abc@contoso.com>\n\
\n\
Body line\n\
.leading dot\n\
Bcc: not a header\n";

    #[test]
    fn t_takes_to_cc_and_bcc_and_removes_bcc() {
        let p = prepare(
            MUTT,
            &req(true, &["bob@example.com", "zed@example.com"]),
            "contoso.com",
            0,
            "u",
        )
        .unwrap();
        assert_eq!(
            p.recipients,
            [
                "bob@example.com",
                "carol@example.com",
                "dan@example.com",
                "eve@example.com",
                "frank@example.com",
                "zed@example.com"
            ]
        );
        let text = String::from_utf8(p.message.clone()).unwrap();
        assert!(!text.contains("eve@example.com"), "{text}");
        assert!(!text.contains("frank"), "the continuation went too: {text}");
        assert!(
            text.contains("\r\n\r\nBody line\r\n.leading dot\r\nBcc: not a header\r\n"),
            "the body is untouched: {text}"
        );
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "LF only: {text:?}"
        );
        assert_eq!(p.message_id, "abc@contoso.com");
        assert!(
            text.starts_with("Date: Mon, 07 Dec 2026"),
            "nothing added: {text}"
        );
    }

    #[test]
    fn recipients_from_arguments_only_without_t() {
        let p = prepare(
            MUTT,
            &req(false, &["x@y.z", "a@b.c, d@e.f"]),
            "contoso.com",
            0,
            "u",
        )
        .unwrap();
        assert_eq!(p.recipients, ["x@y.z", "a@b.c", "d@e.f"]);
        let text = String::from_utf8_lossy(&p.message);
        let header = text.split("\r\n\r\n").next().unwrap();
        assert!(!header.contains("Bcc:"), "Bcc is removed always: {header}");
        assert_eq!(
            prepare(MUTT, &req(false, &[]), "c", 0, "u"),
            Err(MessageError::NoRecipients)
        );
        assert_eq!(
            prepare(MUTT, &req(false, &["a b@c"]), "c", 0, "u"),
            Err(MessageError::BadAddress("a b@c".into()))
        );
        assert_eq!(
            prepare(b"\n\n", &req(false, &["a@b"]), "c", 0, "u"),
            Err(MessageError::Empty)
        );
    }

    #[test]
    fn date_and_message_id_are_added_when_missing() {
        let p = prepare(
            b"Subject: x\n\nhi\n",
            &req(false, &["a@b"]),
            "contoso.com",
            0,
            "123.abc",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(p.message).unwrap(),
            "Date: Thu, 01 Jan 1970 00:00:00 +0000\r\nMessage-ID: <123.abc@contoso.com>\r\nSubject: x\r\n\r\nhi\r\n"
        );
        assert_eq!(p.message_id, "123.abc@contoso.com");
    }

    #[test]
    fn the_from_address_is_read_for_choosing_the_account() {
        assert_eq!(from_address(MUTT).as_deref(), Some("jane@contoso.com"));
        assert_eq!(from_address(b"Subject: x\n\nhi\n"), None);
    }
}
