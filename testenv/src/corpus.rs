//! A deterministic mail corpus: seeded, realistic RFC 5322 messages (multipart/
//! alternative text+HTML, ~10% with a base64 attachment, sizes with a median near
//! 8 KB, 90th percentile near 60 KB and 1% of 1–5 MB), split INBOX/Archive/Deleted
//! Items 30/60/10, plus [`malformed`] messages that must survive byte-exact.
//! All lines end in CRLF, as IMAP servers store them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, FixedOffset, TimeZone, Utc};

use crate::dovecot::SeedMessage;
use crate::random::SplitMix64;

/// Which folder (by role) a corpus message belongs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// INBOX (30%).
    Inbox,
    /// The `\Archive` folder (60%).
    Archive,
    /// The `\Trash` folder (10%).
    Trash,
}

impl Role {
    /// The folder name in the default Dovecot layout.
    pub fn default_folder(self) -> &'static str {
        match self {
            Role::Inbox => "INBOX",
            Role::Archive => "Archive",
            Role::Trash => "Deleted Items",
        }
    }
}

/// Corpus parameters.
#[derive(Clone, Debug)]
pub struct CorpusOptions {
    /// The PRNG seed: same seed, same corpus.
    pub seed: u64,
    /// How many messages.
    pub count: usize,
    /// Caps every message near this size (for fast tests); `None`: the full
    /// distribution including 1–5 MB messages.
    pub max_size: Option<usize>,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        Self {
            seed: 42,
            count: 300,
            max_size: None,
        }
    }
}

/// One generated message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusMessage {
    /// Where it belongs.
    pub role: Role,
    /// The raw message (CRLF).
    pub bytes: Vec<u8>,
    /// `\Seen` (80%), `\Flagged` (~8%), `\Answered` (~15%).
    pub flags: Vec<String>,
    /// Its date (header `Date:` and INTERNALDATE).
    pub date: DateTime<FixedOffset>,
    /// Its Message-ID, with angle brackets.
    pub message_id: String,
    /// Its Subject.
    pub subject: String,
}

impl From<&CorpusMessage> for SeedMessage {
    fn from(m: &CorpusMessage) -> Self {
        SeedMessage {
            bytes: m.bytes.clone(),
            flags: m.flags.clone(),
            internaldate: Some(m.date),
        }
    }
}

impl From<CorpusMessage> for SeedMessage {
    fn from(m: CorpusMessage) -> Self {
        SeedMessage {
            bytes: m.bytes,
            flags: m.flags,
            internaldate: Some(m.date),
        }
    }
}

/// A deliberately broken message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedMessage {
    /// What is wrong with it.
    pub name: &'static str,
    /// The raw bytes.
    pub bytes: Vec<u8>,
}

/// The corpus generator.
#[derive(Clone, Debug)]
pub struct Corpus;

const FIRST: &[&str] = &[
    "Anna", "Ben", "Chloé", "David", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi",
    "Lena", "Marta", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara",
];
const LAST: &[&str] = &[
    "Schmidt", "Müller", "Okafor", "Tanaka", "García", "Novak", "Larsen", "Dubois", "Rossi",
    "Kowalski", "Nguyen", "Smith", "Jensen", "Costa", "Weber",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "contoso.com",
    "fabrikam.org",
    "example.net",
    "tailspin.io",
];
const WORDS: &[&str] = &[
    "quarterly",
    "report",
    "meeting",
    "budget",
    "project",
    "review",
    "deadline",
    "update",
    "invoice",
    "schedule",
    "proposal",
    "contract",
    "team",
    "release",
    "customer",
    "support",
    "server",
    "migration",
    "roadmap",
    "feedback",
    "agenda",
    "minutes",
    "draft",
    "final",
    "approval",
    "request",
    "travel",
    "expenses",
    "training",
    "security",
    "mailbox",
    "archive",
    "the",
    "and",
    "for",
    "with",
    "please",
    "see",
    "attached",
    "thanks",
    "regarding",
    "next",
    "week",
    "today",
    "tomorrow",
    "status",
    "question",
    "answer",
    "plan",
    "results",
];

fn words(rng: &mut SplitMix64, n: usize) -> String {
    (0..n)
        .map(|_| *rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text wrapped at ~72 columns, CRLF, about `len` bytes.
fn paragraph_text(rng: &mut SplitMix64, len: usize) -> String {
    let mut out = String::with_capacity(len + 80);
    let mut line = String::new();
    while out.len() + line.len() < len {
        let w = *rng.pick(WORDS);
        if line.len() + w.len() + 1 > 72 {
            out.push_str(&line);
            out.push_str("\r\n");
            line.clear();
            if rng.chance(0.15) {
                out.push_str("\r\n");
            }
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    out.push_str(&line);
    out.push_str("\r\n");
    out
}

fn base64_lines(data: &[u8]) -> String {
    let enc = STANDARD.encode(data);
    let mut out = String::with_capacity(enc.len() + enc.len() / 76 * 2 + 2);
    for chunk in enc.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

fn target_size(rng: &mut SplitMix64, max: Option<usize>) -> usize {
    let size = if rng.chance(0.01) {
        1_000_000 + rng.below(4_000_000) as usize
    } else {
        // Log-normal: median 8 KiB, sigma 1.55 puts the 90th percentile near 60 KB.
        (8192.0 * (1.55 * rng.normal()).exp()).clamp(900.0, 900_000.0) as usize
    };
    max.map_or(size, |m| size.min(m))
}

impl Corpus {
    /// Generates `opts.count` messages.
    pub fn generate(opts: &CorpusOptions) -> Vec<CorpusMessage> {
        let mut rng = SplitMix64::new(opts.seed);
        let base = Utc.with_ymd_and_hms(2024, 1, 1, 8, 0, 0).unwrap();
        (0..opts.count)
            .map(|i| Self::message(&mut rng, opts, i, base))
            .collect()
    }

    fn person(rng: &mut SplitMix64) -> (String, String) {
        let (f, l, d) = (*rng.pick(FIRST), *rng.pick(LAST), *rng.pick(DOMAINS));
        let local: String = format!("{f}.{l}")
            .to_lowercase()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        (format!("{f} {l}"), format!("{local}@{d}"))
    }

    fn message(
        rng: &mut SplitMix64,
        opts: &CorpusOptions,
        i: usize,
        base: DateTime<Utc>,
    ) -> CorpusMessage {
        let r = rng.next_f64();
        let role = if r < 0.3 {
            Role::Inbox
        } else if r < 0.9 {
            Role::Archive
        } else {
            Role::Trash
        };
        let mut flags = Vec::new();
        if rng.chance(0.15) {
            flags.push("\\Answered".to_string());
        }
        if rng.chance(0.08) {
            flags.push("\\Flagged".to_string());
        }
        if rng.chance(0.8) {
            flags.push("\\Seen".to_string());
        }
        let offset =
            FixedOffset::east_opt(*rng.pick(&[0, 3600, 7200, -5 * 3600, 9 * 3600])).unwrap();
        let date = (base + Duration::seconds((i as i64) * 1800 + rng.below(1700) as i64))
            .with_timezone(&offset);
        let (from_name, from) = Self::person(rng);
        let subject = {
            let n = 3 + rng.below(6) as usize;
            let s = words(rng, n);
            let mut c = s.chars();
            let first = c
                .next()
                .map(|f| f.to_uppercase().to_string())
                .unwrap_or_default();
            let s = first + c.as_str();
            if rng.chance(0.2) {
                format!("Re: {s}")
            } else {
                s
            }
        };
        let message_id = format!(
            "<{:016x}.{i}@{}>",
            rng.next_u64(),
            from.split('@').nth(1).unwrap_or("example.com")
        );
        let size = target_size(rng, opts.max_size);
        let attachment = rng.chance(0.1) || size > 200_000;
        let text_len = if attachment {
            (size / 10).clamp(200, 20_000)
        } else {
            (size * 2 / 5).max(200)
        };
        let text = paragraph_text(rng, text_len);
        let html = format!(
            "<html><head><meta charset=\"utf-8\"></head><body>\r\n<p>{}</p>\r\n</body></html>\r\n",
            text.replace("\r\n\r\n", "</p>\r\n<p>")
        );
        let mut h = String::new();
        h.push_str(&format!("Return-Path: <{from}>\r\n"));
        h.push_str(&format!(
            "Received: from mail.{} (mail.{} [192.0.2.{}])\r\n\tby mx.example.com with ESMTPS; {}\r\n",
            &from[from.find('@').unwrap_or(0) + 1..],
            &from[from.find('@').unwrap_or(0) + 1..],
            rng.below(250) + 1,
            date.to_rfc2822()
        ));
        h.push_str(&format!("From: \"{from_name}\" <{from}>\r\n"));
        h.push_str("To: Jane Doe <jane@example.com>\r\n");
        if rng.chance(0.3) {
            let (n, a) = Self::person(rng);
            h.push_str(&format!("Cc: {n} <{a}>\r\n"));
        }
        h.push_str(&format!("Subject: {subject}\r\n"));
        h.push_str(&format!("Date: {}\r\n", date.to_rfc2822()));
        h.push_str(&format!("Message-ID: {message_id}\r\n"));
        h.push_str("MIME-Version: 1.0\r\n");
        let b1 = format!("b1_{:012x}", rng.next_u64() & 0xffff_ffff_ffff);
        let alternative = format!(
            "--{b1}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--{b1}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--{b1}--\r\n"
        );
        let body = if attachment {
            let b0 = format!("b0_{:012x}", rng.next_u64() & 0xffff_ffff_ffff);
            let raw_len = size.saturating_sub(alternative.len() + 600) * 3 / 4;
            let data: Vec<u8> = (0..raw_len.max(64).div_ceil(8))
                .flat_map(|_| rng.next_u64().to_le_bytes())
                .collect();
            let name = format!("{}.pdf", words(rng, 2).replace(' ', "-"));
            h.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"{b0}\"\r\n\r\n"
            ));
            format!(
                "This is a multi-part message in MIME format.\r\n\r\n--{b0}\r\nContent-Type: multipart/alternative; boundary=\"{b1}\"\r\n\r\n{alternative}\r\n--{b0}\r\nContent-Type: application/pdf; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--{b0}--\r\n",
                base64_lines(&data)
            )
        } else {
            h.push_str(&format!(
                "Content-Type: multipart/alternative; boundary=\"{b1}\"\r\n\r\n"
            ));
            alternative
        };
        let mut bytes = h.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        CorpusMessage {
            role,
            bytes,
            flags,
            date,
            message_id,
            subject,
        }
    }

    /// Nasty messages: a broken MIME boundary, no Message-ID, 8-bit garbage in headers,
    /// headers only (no body), a header line over 998 octets, and a 0-byte message
    /// (Dovecot refuses to APPEND that one; seed it with `seed_fast`).
    pub fn malformed() -> Vec<MalformedMessage> {
        let mut garbage = b"From: =?utf-8?Q?M=C3=BCller?= <mueller@example.com>\r\nTo: jane@example.com\r\nSubject: Gr\xfc\xdfe aus K\xf6ln \xff\xfe\x80\r\nX-Raw-UTF8: caf\xc3\xa9 \xe2\x82\xac\r\nDate: Mon, 1 Jan 2024 10:00:00 +0100\r\nMessage-ID: <garbage-headers@example.com>\r\n\r\nBody with latin-1 \xe9\xe8\r\n".to_vec();
        garbage.extend_from_slice(b"and a line with 8-bit \x81\x82\x83\r\n");
        vec![
            MalformedMessage {
                name: "broken-mime-boundary",
                bytes: b"From: a@example.com\r\nTo: jane@example.com\r\nSubject: broken boundary\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <broken-boundary@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"declared\"\r\n\r\n--other\r\nContent-Type: text/plain\r\n\r\npart without the declared boundary\r\n--declared\r\nContent-Type: text/html\r\n\r\n<p>never closed\r\n".to_vec(),
            },
            MalformedMessage {
                name: "no-message-id",
                bytes: b"From: b@example.com\r\nTo: jane@example.com\r\nSubject: no message id\r\nDate: Mon, 1 Jan 2024 11:00:00 +0000\r\n\r\nThis message has no Message-ID header.\r\n".to_vec(),
            },
            MalformedMessage {
                name: "8bit-garbage-headers",
                bytes: garbage,
            },
            MalformedMessage {
                name: "headers-only",
                bytes: b"From: c@example.com\r\nTo: jane@example.com\r\nSubject: headers only, no body\r\nMessage-ID: <headers-only@example.com>\r\n".to_vec(),
            },
            MalformedMessage {
                name: "long-header-line",
                bytes: format!(
                    "From: d@example.com\r\nTo: jane@example.com\r\nSubject: long header\r\nX-Long: {}\r\nMessage-ID: <long-header@example.com>\r\n\r\nbody\r\n",
                    "x".repeat(2000)
                )
                .into_bytes(),
            },
            MalformedMessage {
                name: "empty",
                bytes: Vec::new(),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        let opts = CorpusOptions {
            seed: 7,
            count: 1000,
            max_size: None,
        };
        let a = Corpus::generate(&opts);
        assert_eq!(a, Corpus::generate(&opts));
        let mut sizes: Vec<usize> = a.iter().map(|m| m.bytes.len()).collect();
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2];
        let p90 = sizes[sizes.len() * 9 / 10];
        assert!((5_000..14_000).contains(&median), "median {median}");
        assert!((35_000..100_000).contains(&p90), "p90 {p90}");
        let inbox = a.iter().filter(|m| m.role == Role::Inbox).count();
        assert!((240..360).contains(&inbox), "inbox {inbox}");
        let seen = a
            .iter()
            .filter(|m| m.flags.iter().any(|f| f == "\\Seen"))
            .count();
        assert!((740..860).contains(&seen), "seen {seen}");
        for m in &a {
            // Every LF is part of a CRLF.
            let lf = m.bytes.iter().filter(|b| **b == b'\n').count();
            let crlf = m.bytes.windows(2).filter(|w| w == b"\r\n").count();
            assert_eq!(lf, crlf);
        }
        let capped = Corpus::generate(&CorpusOptions {
            max_size: Some(50_000),
            ..opts
        });
        assert!(capped.iter().all(|m| m.bytes.len() < 80_000));
    }
}
