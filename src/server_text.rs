//! Server text made safe to show: what an IMAP or SMTP server says (NO, BAD, BYE,
//! `[ALERT]`, a 5xx reply, a SASL challenge) reaches logs, `status` and the database,
//! so it is cut to one short line and stripped of the credential just sent (a server
//! may echo it back).

use crate::secret::Secret;

/// Longest server text kept, in characters.
pub const MAX_TEXT: usize = 300;

/// Shortest run of a credential's characters that counts as the credential.
const MIN_MATCH: usize = 12;

/// The credentials a connection sent, to take out of anything the server says.
#[derive(Clone, Debug, Default)]
pub struct Scrubber {
    secrets: Vec<Secret>,
}

impl Scrubber {
    pub fn new(secrets: Vec<Secret>) -> Scrubber {
        Scrubber {
            secrets: secrets
                .into_iter()
                .filter(|s| s.expose().len() >= MIN_MATCH)
                .collect(),
        }
    }

    /// `text` as one line of at most [`MAX_TEXT`] characters, with control characters
    /// shown as spaces and every run of [`MIN_MATCH`] or more characters found in a
    /// credential replaced by `[REDACTED]`.
    pub fn clean(&self, text: &str) -> String {
        // Scrubbing costs (text × secret) comparisons: look at a bounded prefix only.
        let bounded: String = text
            .chars()
            .take(MAX_TEXT * 4)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let chars: Vec<char> = bounded.chars().collect();
        let mut redact = vec![false; chars.len()];
        for secret in &self.secrets {
            let s = secret.expose();
            let mut i = 0;
            while i + MIN_MATCH <= chars.len() {
                let window: String = chars[i..i + MIN_MATCH].iter().collect();
                if s.contains(&window) {
                    // Extend the match as far as it stays inside the credential.
                    let mut end = i + MIN_MATCH;
                    while end < chars.len() {
                        let longer: String = chars[i..=end].iter().collect();
                        if !s.contains(&longer) {
                            break;
                        }
                        end += 1;
                    }
                    redact[i..end].iter_mut().for_each(|r| *r = true);
                    i = end;
                } else {
                    i += 1;
                }
            }
        }
        let mut out = String::new();
        let mut in_redaction = false;
        for (c, r) in chars.iter().zip(&redact) {
            if *r {
                if !in_redaction {
                    out.push_str("[REDACTED]");
                }
                in_redaction = true;
            } else {
                in_redaction = false;
                out.push(*c);
            }
        }
        shorten(out.trim())
    }
}

/// At most [`MAX_TEXT`] characters of `text`, marked `…` where cut.
pub fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(MAX_TEXT).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echoed_credential_is_redacted_whole_or_in_part() {
        let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload.signature";
        let b64 = "dXNlcj1qYW5lQGV4YW1wbGUuY29tAWF1dGg9QmVhcmVyIGV5SjB";
        let s = Scrubber::new(vec![Secret::new(token), Secret::new(b64)]);
        let said = format!("Invalid token {token} in {b64}, and part {}", &token[5..30]);
        let clean = s.clean(&said);
        assert!(!clean.contains(&token[5..30]), "{clean}");
        assert!(!clean.contains(&b64[..20]), "{clean}");
        assert_eq!(
            clean,
            "Invalid token [REDACTED] in [REDACTED], and part [REDACTED]"
        );
    }

    #[test]
    fn server_text_becomes_one_short_line() {
        let s = Scrubber::default();
        assert_eq!(s.clean("a\r\nb\x1b[31m"), "a  b [31m");
        let long = "x".repeat(70_000);
        let clean = s.clean(&long);
        assert_eq!(clean.chars().count(), MAX_TEXT + 1);
        assert!(clean.ends_with('…'));
    }
}
