//! SMTP replies (RFC 5321 §4.2) and EHLO extensions (pure): what a server said, read
//! line by line by the caller, with its code, its enhanced status code (RFC 3463) when
//! it gave one, and its text.

use std::fmt;

/// Longest reply line taken (RFC 5321 allows 512 octets; servers send longer).
pub const MAX_LINE: usize = 8 * 1024;
/// Most lines taken in one reply (an EHLO answer has a dozen).
pub const MAX_LINES: usize = 100;

/// One complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The lines' text after the code and separator, in order.
    pub lines: Vec<String>,
}

/// An enhanced status code, `class.subject.detail` (`5.7.139`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// A 4xx reply: the same command may succeed later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The enhanced status code at the start of the first line, if any.
    pub fn enhanced(&self) -> Option<Enhanced> {
        let first = self.lines.first()?;
        let word = first.split_whitespace().next()?;
        let mut parts = word.split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(Enhanced {
            class,
            subject,
            detail,
        })
    }

    /// The whole text on one line, lines joined by a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

/// Builds a reply from lines as they arrive.
#[derive(Debug, Default)]
pub struct ReplyReader {
    code: Option<u16>,
    lines: Vec<String>,
}

/// A line that is not part of a well-formed reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl ReplyReader {
    /// Takes one line (without its CRLF); the finished reply once the last line came.
    pub fn push(&mut self, line: &str) -> Result<Option<Reply>, Malformed> {
        let bytes = line.as_bytes();
        let code = bytes
            .get(..3)
            .filter(|c| c.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&c[0]))
            .map(|c| {
                u16::from(c[0] - b'0') * 100 + u16::from(c[1] - b'0') * 10 + u16::from(c[2] - b'0')
            })
            .ok_or_else(|| Malformed(format!("not an SMTP reply: {:?}", short(line))))?;
        if self.code.is_some_and(|c| c != code) {
            return Err(Malformed(format!(
                "a reply changed its code midway ({} then {code})",
                self.code.unwrap_or_default()
            )));
        }
        self.code = Some(code);
        let (last, text) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => {
                return Err(Malformed(format!("not an SMTP reply: {:?}", short(line))));
            }
        };
        if self.lines.len() >= MAX_LINES {
            return Err(Malformed(format!("a reply of more than {MAX_LINES} lines")));
        }
        self.lines.push(text.to_owned());
        if !last {
            return Ok(None);
        }
        self.code = None;
        Ok(Some(Reply {
            code,
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

fn short(line: &str) -> String {
    line.chars().take(80).collect()
}

/// What an EHLO reply says the server offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub starttls: bool,
    /// AUTH mechanisms, upper case.
    pub auth: Vec<String>,
    /// The size limit in bytes; `None` when not announced or announced as 0 (no limit).
    pub size: Option<u64>,
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
}

impl Extensions {
    /// From an EHLO reply: the first line is the greeting, each further one a keyword
    /// and its parameters.
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            // Old servers write `AUTH=LOGIN PLAIN`.
            let line = line.replacen("AUTH=", "AUTH ", 1);
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => e.starttls = true,
                "AUTH" => {
                    for m in words {
                        let m = m.to_ascii_uppercase();
                        if !e.auth.contains(&m) {
                            e.auth.push(m);
                        }
                    }
                }
                "SIZE" => e.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0),
                "PIPELINING" => e.pipelining = true,
                "8BITMIME" => e.eight_bit_mime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                _ => {}
            }
        }
        e
    }

    pub fn offers(&self, mechanism: &str) -> bool {
        self.auth.iter().any(|m| m == mechanism)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&str]) -> Result<Vec<Reply>, Malformed> {
        let mut r = ReplyReader::default();
        let mut out = Vec::new();
        for l in lines {
            if let Some(reply) = r.push(l)? {
                out.push(reply);
            }
        }
        Ok(out)
    }

    #[test]
    fn multiline_replies_end_at_the_space() {
        let replies = read(&[
            "250-smtp.office365.com Hello [10.0.0.1]",
            "250-SIZE 157286400",
            "250-PIPELINING",
            "250-AUTH=LOGIN XOAUTH2",
            "250-8BITMIME",
            "250 SMTPUTF8",
            "235 2.7.0 Authentication successful",
        ])
        .unwrap();
        assert_eq!(replies.len(), 2);
        let ext = Extensions::from_ehlo(&replies[0]);
        assert_eq!(ext.size, Some(157_286_400));
        assert_eq!(ext.auth, ["LOGIN", "XOAUTH2"]);
        assert!(ext.pipelining && ext.eight_bit_mime && ext.smtputf8 && !ext.starttls);
        assert_eq!(replies[1].code, 235);
        assert_eq!(replies[1].enhanced().unwrap().to_string(), "2.7.0");
        assert_eq!(replies[1].text(), "2.7.0 Authentication successful");
    }

    #[test]
    fn enhanced_codes_are_read_only_where_they_are() {
        let r = read(&["535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."]).unwrap();
        let e = r[0].enhanced().unwrap();
        assert_eq!((e.class, e.subject, e.detail), (5, 7, 139));
        let r = read(&["554 Transaction failed", "220"]).unwrap();
        assert_eq!(r[0].enhanced(), None);
        assert_eq!(r[1].code, 220);
        assert_eq!(r[1].lines, [""]);
    }

    #[test]
    fn garbage_is_an_error_never_a_reply() {
        for bad in ["hello", "99 x", "600 x", "25", "250x", "\u{1F600}00 x"] {
            assert!(read(&[bad]).is_err(), "{bad:?} was taken");
        }
        assert!(
            read(&["250-a", "251 b"]).is_err(),
            "a changed code was taken"
        );
        let endless: Vec<&str> = std::iter::repeat_n("250-x", MAX_LINES + 1).collect();
        assert!(read(&endless).is_err(), "an endless reply was taken");
    }
}
