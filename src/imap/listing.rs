//! Listings: what a folder holds (UIDs and flags), all of it or only what changed
//! since a mod-sequence, asked in as few round trips as the server allows. The sync
//! decides *what* to list ([`Session::open_listing`]'s `since`, then the mode); this
//! module decides *how*: QRESYNC, CONDSTORE `CHANGEDSINCE` or a full FETCH, what rides
//! along with the SELECT, and when the UIDs present must be asked as well.

use std::collections::HashSet;

use super::error::ImapError;
use super::session::{FollowUp, RemoteEntry, SelectChanges, Selected, Session};

/// What the server said about a folder's messages.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// UID and flags of messages: every message when `complete`, else only those
    /// changed since the last sync (CONDSTORE `CHANGEDSINCE`, new ones included).
    pub entries: Vec<RemoteEntry>,
    pub complete: bool,
    /// When `complete` is false: every UID present on the server, if it was asked
    /// for (`UID SEARCH ALL`); `None` means no message was expunged, except those in
    /// `vanished`.
    pub present: Option<Vec<u32>>,
    /// UIDs the server reported expunged (QRESYNC `VANISHED (EARLIER)`); may name UIDs
    /// never seen here, which are ignored.
    pub vanished: Vec<u32>,
}

/// A folder selected for listing: what SELECT reported, and what came along with it.
#[derive(Debug)]
pub struct Opened {
    changes: SelectChanges,
    /// The sizes of the messages from UID `.0` on (asked with the SELECT when
    /// `sizes_from` was given and the server answered).
    pub sizes: Option<(u32, Vec<(u32, u64)>)>,
}

impl Opened {
    /// What SELECT reported of the folder.
    pub fn selected(&self) -> &Selected {
        &self.changes.selected
    }
}

impl Session {
    /// Selects `folder` to list it. `since` is the (UIDVALIDITY, HIGHESTMODSEQ) of the
    /// last complete pass; `sizes_from` asks the sizes of messages from that UID on.
    /// What the listing will ask next anyway goes out with the SELECT, in the same
    /// round trip: without QRESYNC the flags (all, or what changed since `since`).
    pub async fn open_listing(
        &mut self,
        folder: &str,
        since: Option<(u32, u64)>,
        sizes_from: Option<u32>,
    ) -> Result<Opened, ImapError> {
        let mut follow = Vec::new();
        if !(self.qresync_enabled() && since.is_some()) {
            let changed_since = since
                .filter(|_| self.has_condstore())
                .map(|(_, modseq)| modseq);
            follow.push(FollowUp::Flags(changed_since));
        }
        if let Some(from) = sizes_from {
            follow.push(FollowUp::SizesFrom(from.max(1)));
        }
        let mut changes = self.select_with(folder, since, &follow).await?;
        let sizes = changes.sizes.take();
        Ok(Opened { changes, sizes })
    }

    /// Lists the folder `opened` selected: only what changed since `changed_since`,
    /// or (`None`) every message. A changes-only listing is completed with every UID
    /// present (`UID SEARCH ALL`) when the server's count is not what `held` (the UIDs
    /// the caller holds under this UIDVALIDITY), the new messages and the reported
    /// expunges add up to: CONDSTORE cannot report expunges, and a server may drop
    /// VANISHED.
    pub async fn listing(
        &mut self,
        opened: Opened,
        changed_since: Option<u64>,
        held: &HashSet<u32>,
    ) -> Result<Listing, ImapError> {
        let changes = opened.changes;
        let Some(since) = changed_since else {
            let entries = match changes.flags {
                Some((None, entries)) => entries,
                _ => self.fetch_flags(None).await?,
            };
            return Ok(Listing {
                entries,
                complete: true,
                ..Listing::default()
            });
        };
        let exists = changes.selected.exists;
        // QRESYNC told us in the SELECT itself; CONDSTORE needs a FETCH (sent with it).
        let (entries, vanished) = if self.qresync_enabled() {
            (changes.changed, changes.vanished)
        } else if let Some((Some(m), entries)) = changes.flags
            && m == since
        {
            (entries, Vec::new())
        } else {
            (self.fetch_flags(Some(since)).await?, Vec::new())
        };
        // The server's ranges are met with the UIDs held, never expanded:
        // `1:4294967295` names four billion UIDs and costs nothing here.
        let vanished = known_within(&vanished, held.iter().copied());
        let added = entries
            .iter()
            .filter(|e| !held.contains(&e.uid))
            .map(|e| e.uid)
            .collect::<HashSet<u32>>()
            .len() as u64;
        let present = if needs_present(exists, held.len() as u64, added, vanished.len() as u64) {
            Some(self.search_all_uids().await?)
        } else {
            None
        };
        Ok(Listing {
            entries,
            complete: false,
            present,
            vanished,
        })
    }
}

/// Whether a changes-only listing must be completed with every UID present: when the
/// server's count is not what the UIDs held, the new messages and the reported
/// expunges add up to.
fn needs_present(exists: u32, held: u64, added: u64, vanished: u64) -> bool {
    u64::from(exists) + vanished != held + added
}

/// The UIDs of `known` that fall in any of `ranges` (what a server reported expunged,
/// in whatever order and overlap), sorted. Costs the size of `ranges` and `known`,
/// whatever the ranges span.
pub(super) fn known_within(
    ranges: &[std::ops::RangeInclusive<u32>],
    known: impl IntoIterator<Item = u32>,
) -> Vec<u32> {
    let mut merged: Vec<(u32, u32)> = ranges
        .iter()
        .map(|r| (*r.start().min(r.end()), *r.start().max(r.end())))
        .collect();
    merged.sort_unstable();
    let mut disjoint: Vec<(u32, u32)> = Vec::with_capacity(merged.len());
    for (start, end) in merged {
        match disjoint.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => disjoint.push((start, end)),
        }
    }
    let mut out: Vec<u32> = known
        .into_iter()
        .filter(|&uid| {
            let i = disjoint.partition_point(|&(start, _)| start <= uid);
            i > 0 && uid <= disjoint[i - 1].1
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::ops::RangeInclusive;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_uid_is_asked_for_when_the_counts_do_not_add_up() {
        // 10 held, 2 new, 1 reported gone: the server must count 11.
        assert!(!needs_present(11, 10, 2, 1));
        // It counts 10: an expunge went unreported (CONDSTORE cannot report them).
        assert!(needs_present(10, 10, 2, 1));
    }

    #[test]
    fn known_within_meets_server_ranges_with_the_uids_held() {
        let held = [1, 2, 3, 5, 8, 9, 10, 12, u32::MAX - 1, u32::MAX];
        let cases: &[(&[RangeInclusive<u32>], &[u32])] = &[
            (&[], &[]),
            (&[4..=4], &[]),
            (&[5..=5], &[5]),
            (&[2..=5], &[2, 3, 5]),
            // Out of order, overlapping, one inside another.
            (&[8..=12, 1..=2, 9..=9, 10..=11], &[1, 2, 8, 9, 10, 12]),
            // Adjacent ranges, and a gap: 4 and 6..=7 name nothing held, 8 is outside.
            (&[1..=1, 2..=3, 5..=7], &[1, 2, 3, 5]),
            (&[3..=3, 11..=12], &[3, 12]),
            // Written high to low, as a sequence set may be (`5:2`).
            (&[RangeInclusive::new(5, 2)], &[2, 3, 5]),
            // The whole UID space, and its top end.
            (&[1..=u32::MAX], &held),
            (&[u32::MAX..=u32::MAX, 0..=1], &[1, u32::MAX]),
            (&[13..=u32::MAX - 2], &[]),
        ];
        for (ranges, want) in cases {
            assert_eq!(known_within(ranges, held), *want, "{ranges:?}");
        }
        // Held UIDs in any order and repeated give each UID once, sorted.
        assert_eq!(known_within(&[1..=9], [9, 3, 3, 1, 20]), vec![1, 3, 9]);
    }

    /// A UID near either end of the UID space, so ranges overlap, touch and reach the top.
    fn uid_strategy() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..24, (u32::MAX - 24)..=u32::MAX]
    }

    proptest! {
        #[test]
        fn known_within_is_the_held_uids_some_range_names(
            ranges in prop::collection::vec((uid_strategy(), uid_strategy()), 0..6),
            held in prop::collection::vec(uid_strategy(), 0..24),
        ) {
            let ranges: Vec<RangeInclusive<u32>> =
                ranges.into_iter().map(|(a, b)| a..=b).collect();
            let want: BTreeSet<u32> = held
                .iter()
                .copied()
                .filter(|uid| {
                    ranges
                        .iter()
                        .any(|r| (*r.start().min(r.end())..=*r.start().max(r.end())).contains(uid))
                })
                .collect();
            let got = known_within(&ranges, held.iter().copied());
            prop_assert_eq!(got, want.into_iter().collect::<Vec<u32>>());
        }
    }
}
