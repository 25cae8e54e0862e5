//! What a UIDPLUS server says a command made (RFC 4315): APPENDUID and COPYUID, read
//! from a response's code. Pure; below the session, which keeps the last one seen, and
//! the verbs that ask for it (imap/write.rs).

use imap_proto::Outcome;
use imap_proto::ResponseCode;
use imap_proto::rfc4315::UidSetMember;

/// What a UIDPLUS server said a command made (RFC 4315).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UidCode {
    /// APPENDUID: the UIDVALIDITY of the folder appended to, and the new UIDs.
    Append { uidvalidity: u32, uids: Vec<u32> },
    /// COPYUID: the target's UIDVALIDITY, and the source UIDs with their new ones, in
    /// the same order.
    Copy {
        uidvalidity: u32,
        from: Vec<u32>,
        to: Vec<u32>,
    },
}

/// UIDs a code is expanded to at most: more than any command of ours names (500).
const MAX_CODE_UIDS: usize = 1000;

impl UidCode {
    pub(super) fn from_outcome(outcome: &Outcome<'_>) -> Option<UidCode> {
        match &outcome.code {
            Some(ResponseCode::AppendUid(v, set)) => Some(UidCode::Append {
                uidvalidity: *v,
                uids: expand(set)?,
            }),
            Some(ResponseCode::CopyUid(v, from, to)) => Some(UidCode::Copy {
                uidvalidity: *v,
                from: expand(from)?,
                to: expand(to)?,
            }),
            _ => None,
        }
    }
}

/// A UID set as a list; `None` when it names more UIDs than any command of ours made
/// (a server's range is never expanded beyond that) or holds UID 0.
fn expand(set: &[UidSetMember]) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for member in set {
        let range = match member {
            UidSetMember::Uid(u) => *u..=*u,
            UidSetMember::UidRange(r) => (*r.start().min(r.end()))..=(*r.start().max(r.end())),
        };
        let len = u64::from(*range.end() - *range.start()) + 1;
        if *range.start() == 0 || out.len() as u64 + len > MAX_CODE_UIDS as u64 {
            return None;
        }
        out.extend(range);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_set_is_expanded_only_as_far_as_a_command_of_ours_reaches() {
        assert_eq!(
            expand(&[UidSetMember::Uid(4), UidSetMember::UidRange(7..=9)]),
            Some(vec![4, 7, 8, 9])
        );
        assert_eq!(
            expand(&[UidSetMember::UidRange(std::ops::RangeInclusive::new(9, 7))]),
            Some(vec![7, 8, 9])
        );
        assert_eq!(expand(&[UidSetMember::UidRange(1..=u32::MAX)]), None);
        assert_eq!(expand(&[UidSetMember::Uid(0)]), None);
    }
}
