//! Maildir flags ↔ file names (pure): the `:2,` info part and the unique base before it.

use crate::flags::Flags;

/// The Maildir letters mailsync manages, in the ASCII order the spec requires.
const LETTERS: [(char, Flags); 5] = [
    ('D', Flags::DRAFT),
    ('F', Flags::FLAGGED),
    ('R', Flags::ANSWERED),
    ('S', Flags::SEEN),
    ('T', Flags::DELETED),
];

/// The info part for `flags`: `:2,` followed by the flag letters in ASCII order.
pub fn info_suffix(flags: Flags) -> String {
    let mut s = String::from(":2,");
    for (letter, flag) in LETTERS {
        if flags.contains(flag) {
            s.push(letter);
        }
    }
    s
}

/// Splits a Maildir file name into its unique base and its flags. Names without an
/// info part (files in `new/`) give `None`; letters mailsync does not manage (`P`,
/// Dovecot's keyword letters `a`–`z`) are ignored.
pub fn parse_file_name(name: &str) -> (&str, Option<Flags>) {
    let (base, letters) = split_info(name);
    (base, letters.map(letters_to_flags))
}

/// Base and the raw letters after `:2,`. The info part starts at the first colon: the
/// spec keeps colons out of the base (hostnames encode theirs as `\072`). An info part
/// other than `2,` (the experimental `1,`) carries no flags.
pub(crate) fn split_info(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((base, info)) => (base, info.strip_prefix("2,")),
        None => (name, None),
    }
}

fn letters_to_flags(letters: &str) -> Flags {
    let mut flags = Flags::empty();
    for c in letters.chars() {
        if let Some((_, flag)) = LETTERS.iter().find(|(l, _)| *l == c) {
            flags.insert(*flag);
        }
    }
    flags
}

/// The file name for `base` with `flags`, keeping the letters of `foreign` that
/// mailsync does not manage, so a MUA's own marks (`P` passed, keywords) survive our
/// renames.
pub(crate) fn file_name(base: &str, flags: Flags, foreign: Option<&str>) -> String {
    let mut letters: Vec<char> = info_suffix(flags)[3..].chars().collect();
    if let Some(foreign) = foreign {
        letters.extend(
            foreign
                .chars()
                .filter(|c| c.is_ascii_alphabetic() && !LETTERS.iter().any(|(l, _)| l == c)),
        );
    }
    letters.sort_unstable();
    letters.dedup();
    let mut name = String::with_capacity(base.len() + 3 + letters.len());
    name.push_str(base);
    name.push_str(":2,");
    name.extend(letters);
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(list: &[Flags]) -> Flags {
        list.iter().fold(Flags::empty(), |a, f| a.union(*f))
    }

    #[test]
    fn suffix_letters_are_in_ascii_order() {
        assert_eq!(info_suffix(Flags::empty()), ":2,");
        assert_eq!(info_suffix(Flags::SEEN), ":2,S");
        assert_eq!(info_suffix(all(&[Flags::SEEN, Flags::ANSWERED])), ":2,RS");
        assert_eq!(info_suffix(Flags::from_bits(31)), ":2,DFRST");
    }

    #[test]
    fn parses_names_as_mutt_dovecot_and_others_write_them() {
        let cases: &[(&str, &str, Option<Flags>)] = &[
            ("1700000000.M1P2Q3_4.host", "1700000000.M1P2Q3_4.host", None),
            ("123.abc:2,", "123.abc", Some(Flags::empty())),
            ("123.abc:2,S", "123.abc", Some(Flags::SEEN)),
            (
                "123.abc:2,PRS",
                "123.abc",
                Some(all(&[Flags::ANSWERED, Flags::SEEN])),
            ),
            (
                "123.abc:2,FSab",
                "123.abc",
                Some(all(&[Flags::FLAGGED, Flags::SEEN])),
            ),
            ("123.abc:2,T", "123.abc", Some(Flags::DELETED)),
            ("123.abc:1,xyz", "123.abc", None),
            ("123.a\\072b:2,D", "123.a\\072b", Some(Flags::DRAFT)),
            ("", "", None),
        ];
        for (name, base, flags) in cases {
            assert_eq!(parse_file_name(name), (*base, *flags), "{name}");
        }
    }

    #[test]
    fn renames_keep_letters_of_other_programs() {
        assert_eq!(file_name("b", Flags::SEEN, Some("PTa")), "b:2,PSa");
        assert_eq!(file_name("b", Flags::empty(), None), "b:2,");
        assert_eq!(file_name("b", Flags::FLAGGED, Some("F,:")), "b:2,F");
    }

    proptest! {
        #[test]
        fn file_names_round_trip(base in "[^:/\u{0}]{1,40}", bits in 0u8..32) {
            let flags = Flags::from_bits(bits);
            let name = format!("{base}{}", info_suffix(flags));
            prop_assert_eq!(parse_file_name(&name), (base.as_str(), Some(flags)));
            prop_assert_eq!(file_name(&base, flags, None), name);
        }

        #[test]
        fn parsing_never_panics(name in any::<String>()) {
            let _ = parse_file_name(&name);
        }
    }
}
