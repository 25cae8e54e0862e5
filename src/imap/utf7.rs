//! Modified UTF-7 (RFC 3501 §5.1.3), the encoding of IMAP mailbox names on the wire.
//!
//! Decoding is strict: a name has exactly one wire form, so a wire name that is not the
//! canonical encoding of its text is rejected rather than silently normalised. Two
//! different wire names can then never decode to the same display name.

use std::fmt;

/// Why a wire name is not valid modified UTF-7. `offset` is the byte offset in the wire
/// name where the problem starts (the `&` of the offending encoded run, or the byte).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Utf7Error {
    #[error("byte {offset}: {found:?} must be encoded (only printable ASCII stands for itself)")]
    RawNonPrintable { offset: usize, found: char },
    #[error("byte {offset}: \"&\" starts an encoded run that never ends with \"-\"")]
    Unterminated { offset: usize },
    #[error("byte {offset}: {found:?} is not a modified BASE64 character")]
    InvalidBase64 { offset: usize, found: char },
    #[error("byte {offset}: encoded run does not end on a whole UTF-16 unit")]
    TrailingBits { offset: usize },
    #[error("byte {offset}: encoded run holds an unpaired UTF-16 surrogate")]
    UnpairedSurrogate { offset: usize },
    #[error("byte {offset}: encoded run holds printable ASCII, which must stand for itself")]
    EncodedAscii { offset: usize },
    #[error("byte {offset}: encoded run follows another one directly; they must be merged")]
    AdjacentRuns { offset: usize },
}

/// Decodes a wire mailbox name, rejecting anything that is not canonical modified UTF-7.
pub fn decode(wire: &str) -> Result<String, Utf7Error> {
    let bytes = wire.as_bytes();
    let mut out = String::with_capacity(wire.len());
    let mut i = 0;
    // End offset of the last non-empty encoded run, to catch `&AAA-&BBB-`.
    let mut last_run_end = None;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'&' {
            if !is_printable(b) {
                let found = wire
                    .get(i..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or('\u{FFFD}');
                return Err(Utf7Error::RawNonPrintable { offset: i, found });
            }
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let start = i;
        let run_start = i + 1;
        let Some(len) = bytes[run_start..].iter().position(|&c| c == b'-') else {
            return Err(
                match bytes[run_start..].iter().position(|&c| sextet(c).is_none()) {
                    Some(p) => invalid_base64(wire, run_start + p),
                    None => Utf7Error::Unterminated { offset: start },
                },
            );
        };
        let run = &bytes[run_start..run_start + len];
        i = run_start + len + 1;
        if run.is_empty() {
            out.push('&');
            continue;
        }
        if last_run_end == Some(start) {
            return Err(Utf7Error::AdjacentRuns { offset: start });
        }
        decode_run(wire, run_start, run, &mut out)?;
        last_run_end = Some(i);
    }
    Ok(out)
}

/// Decodes for display: a name that is not valid modified UTF-7 is shown as sent.
pub fn decode_lossy(wire: &str) -> String {
    decode(wire).unwrap_or_else(|_| wire.to_owned())
}

/// Encodes a mailbox name for the wire. Total: every string has exactly one encoding.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    for c in name.chars() {
        if c.is_ascii() && is_printable(c as u8) {
            flush_run(&mut pending, &mut out);
            out.push(c);
            if c == '&' {
                out.push('-');
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush_run(&mut pending, &mut out);
    out
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn is_printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

fn sextet(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b',' => Some(63),
        _ => None,
    }
}

fn invalid_base64(wire: &str, offset: usize) -> Utf7Error {
    let found = wire
        .get(offset..)
        .and_then(|s| s.chars().next())
        .unwrap_or('\u{FFFD}');
    Utf7Error::InvalidBase64 { offset, found }
}

/// Decodes one encoded run (between `&` and `-`, both excluded) into `out`.
fn decode_run(wire: &str, run_start: usize, run: &[u8], out: &mut String) -> Result<(), Utf7Error> {
    let amp = run_start - 1;
    let mut units = Vec::with_capacity(run.len() * 6 / 16);
    let mut acc: u32 = 0;
    let mut nbits = 0u32;
    for (k, &c) in run.iter().enumerate() {
        let v = sextet(c).ok_or_else(|| invalid_base64(wire, run_start + k))?;
        acc = (acc << 6) | v;
        nbits += 6;
        if nbits >= 16 {
            nbits -= 16;
            // Truncation keeps exactly the 16 bits just completed.
            units.push((acc >> nbits) as u16);
            acc &= (1 << nbits) - 1;
        }
    }
    // A canonical encoder pads the last unit with at most 4 zero bits.
    if nbits >= 6 || acc != 0 {
        return Err(Utf7Error::TrailingBits { offset: amp });
    }
    for r in char::decode_utf16(units.iter().copied()) {
        let c = r.map_err(|_| Utf7Error::UnpairedSurrogate { offset: amp })?;
        if c.is_ascii() && is_printable(c as u8) {
            return Err(Utf7Error::EncodedAscii { offset: amp });
        }
        out.push(c);
    }
    Ok(())
}

fn flush_run(units: &mut Vec<u16>, out: &mut String) {
    if units.is_empty() {
        return;
    }
    out.push('&');
    let mut acc: u32 = 0;
    let mut nbits = 0u32;
    for &u in units.iter() {
        acc = (acc << 16) | u32::from(u);
        nbits += 16;
        while nbits >= 6 {
            nbits -= 6;
            out.push(char::from(ALPHABET[((acc >> nbits) & 63) as usize]));
        }
        acc &= (1 << nbits) - 1;
    }
    if nbits > 0 {
        out.push(char::from(ALPHABET[((acc << (6 - nbits)) & 63) as usize]));
    }
    out.push('-');
    units.clear();
}

/// Shows a wire name decoded, or as sent when it is not valid modified UTF-7.
pub struct Decoded<'a>(pub &'a str);

impl fmt::Display for Decoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&decode_lossy(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_3501_examples() {
        let wire = "~peter/mail/&U,BTFw-/&ZeVnLIqe-";
        let name = "~peter/mail/台北/日本語";
        assert_eq!(decode(wire).unwrap(), name);
        assert_eq!(encode(name), wire);
        assert_eq!(decode("&-").unwrap(), "&");
        assert_eq!(encode("&"), "&-");
        assert_eq!(encode("R&D"), "R&-D");
    }

    #[test]
    fn localized_folder_names() {
        for (wire, name) in [
            ("Gel&APY-schte Elemente", "Gelöschte Elemente"),
            ("Entw&APw-rfe", "Entwürfe"),
            ("&AMk-l&AOk-ments supprim&AOk-s", "Éléments supprimés"),
            ("Usuni&ARk-te elementy", "Usunięte elementy"),
            ("INBOX", "INBOX"),
            ("", ""),
        ] {
            assert_eq!(decode(wire).unwrap(), name, "{wire}");
            assert_eq!(encode(name), wire, "{name}");
        }
    }

    #[test]
    fn emoji_uses_a_surrogate_pair() {
        let name = "Mail 📬 box";
        let wire = encode(name);
        assert_eq!(wire, "Mail &2D3c7A- box");
        assert_eq!(decode(&wire).unwrap(), name);
    }

    #[test]
    fn control_characters_are_encoded() {
        assert_eq!(encode("a\tb"), "a&AAk-b");
        assert_eq!(decode("a&AAk-b").unwrap(), "a\tb");
        assert_eq!(encode("\u{7f}"), "&AH8-");
    }

    #[test]
    fn rejects_non_canonical_and_broken_input() {
        use Utf7Error::*;
        let cases: &[(&str, Utf7Error)] = &[
            ("a&AGE-", EncodedAscii { offset: 1 }),
            ("&ACY-", EncodedAscii { offset: 0 }),
            ("&APY", Unterminated { offset: 0 }),
            ("x&", Unterminated { offset: 1 }),
            (
                "&AP*-",
                InvalidBase64 {
                    offset: 3,
                    found: '*',
                },
            ),
            (
                "&AP/-",
                InvalidBase64 {
                    offset: 3,
                    found: '/',
                },
            ),
            // Unterminated, but the bad character is named, where it stands.
            (
                "ab&AP*",
                InvalidBase64 {
                    offset: 5,
                    found: '*',
                },
            ),
            (
                "&AP= -",
                InvalidBase64 {
                    offset: 3,
                    found: '=',
                },
            ),
            ("&APZ-", TrailingBits { offset: 0 }),
            ("&A-", TrailingBits { offset: 0 }),
            ("&AP-", TrailingBits { offset: 0 }),
            ("&2D0-", UnpairedSurrogate { offset: 0 }),
            ("&3Cw-", UnpairedSurrogate { offset: 0 }),
            ("&APY-&APY-", AdjacentRuns { offset: 5 }),
            (
                "Gelöschte",
                RawNonPrintable {
                    offset: 3,
                    found: 'ö',
                },
            ),
            (
                "a\tb",
                RawNonPrintable {
                    offset: 1,
                    found: '\t',
                },
            ),
        ];
        for (wire, want) in cases {
            assert_eq!(decode(wire).as_ref(), Err(want), "{wire:?}");
        }
        // An empty run between two runs is a literal "&", not an adjacency.
        assert_eq!(decode("&APY-&-&APY-").unwrap(), "ö&ö");
    }

    #[test]
    fn lossy_decoding_falls_back_to_the_wire_name() {
        assert_eq!(decode_lossy("Gel&APY-schte"), "Gelöschte");
        assert_eq!(decode_lossy("R&D"), "R&D");
        assert_eq!(Decoded("Entw&APw-rfe").to_string(), "Entwürfe");
    }

    proptest! {
        #[test]
        fn round_trip(s in any::<String>()) {
            let wire = encode(&s);
            prop_assert!(wire.bytes().all(is_printable));
            prop_assert_eq!(decode(&wire), Ok(s));
        }

        #[test]
        fn canonical_wire_names_re_encode_identically(s in "[ -~]{0,40}") {
            if let Ok(name) = decode(&s) {
                prop_assert_eq!(encode(&name), s);
            }
        }

        #[test]
        fn decode_never_panics(s in any::<String>()) {
            let _ = decode(&s);
            let _ = decode_lossy(&s);
        }

        #[test]
        fn decode_never_panics_on_near_valid_input(s in "[&A-Za-z0-9+,/=\\- ]{0,40}") {
            if let Ok(name) = decode(&s) {
                prop_assert_eq!(encode(&name), s);
            }
        }
    }
}
