//! The IMAP system flags, as IMAP names them and as a Maildir file name carries them:
//! a leaf type every layer (IMAP, Maildir, state, sync) uses.

use std::fmt;

/// The IMAP system flags a Maildir can carry. Keywords are not mirrored.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    pub const SEEN: Flags = Flags(1);
    pub const ANSWERED: Flags = Flags(2);
    pub const FLAGGED: Flags = Flags(4);
    pub const DELETED: Flags = Flags(8);
    pub const DRAFT: Flags = Flags(16);
    const ALL: u8 = 31;

    pub const fn empty() -> Flags {
        Flags(0)
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Unknown bits are dropped, so a corrupt database value cannot create flags.
    pub const fn from_bits(bits: u8) -> Flags {
        Flags(bits & Self::ALL)
    }
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Parses one IMAP flag atom (`\Seen`, case-insensitive); keywords give `None`.
    pub fn from_imap(flag: &str) -> Option<Flags> {
        let f = flag.strip_prefix('\\')?;
        [
            ("seen", Self::SEEN),
            ("answered", Self::ANSWERED),
            ("flagged", Self::FLAGGED),
            ("deleted", Self::DELETED),
            ("draft", Self::DRAFT),
        ]
        .into_iter()
        .find(|(n, _)| f.eq_ignore_ascii_case(n))
        .map(|(_, v)| v)
    }

    /// IMAP names of the flags set, for STORE commands.
    pub fn imap_names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (flag, name) in [
            (Self::SEEN, "\\Seen"),
            (Self::ANSWERED, "\\Answered"),
            (Self::FLAGGED, "\\Flagged"),
            (Self::DELETED, "\\Deleted"),
            (Self::DRAFT, "\\Draft"),
        ] {
            if self.contains(flag) {
                v.push(name);
            }
        }
        v
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({})", self.imap_names().join(" "))
    }
}
