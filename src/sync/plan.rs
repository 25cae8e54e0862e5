//! The planner: pure functions from what the server shows and what the state records
//! to the actions that make the local store match. No I/O, no tokio, no SQLite.
//!
//! A folder is planned in two steps, because recognising a moved message needs its
//! fingerprint, which is only fetched for messages that are new to us:
//! 1. [`diff_folder`] compares a folder's listing with its records;
//! 2. [`pair`] takes every folder's new messages and vanished records together and
//!    turns each new message into a relocation (already held) or a fetch, and each
//!    unpaired vanished record into a removal.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::model::{Action, FolderDiff, FolderId, Known, Record, RemoteEntry, RemoteNew};

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

/// The UIDs of `known` that fall in any of `ranges` (what a server reported expunged,
/// in whatever order and overlap), sorted. Costs the size of `ranges` and `known`,
/// whatever the ranges span.
pub fn known_within(
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

/// Compares one folder's listing with its records. Records from another UIDVALIDITY
/// all count as vanished (the pairing step recovers them); their UIDs mean nothing now.
pub fn diff_folder(records: &[Known], uidvalidity: u32, listing: &Listing) -> FolderDiff {
    let mut diff = FolderDiff::default();
    let mut current: HashMap<u32, &Known> = HashMap::with_capacity(records.len());
    for record in records {
        if record.uidvalidity == uidvalidity {
            current.insert(record.uid, record);
        } else {
            diff.vanished.push((record.uidvalidity, record.uid));
        }
    }

    let mut seen: HashSet<u32> = HashSet::with_capacity(listing.entries.len());
    for entry in &listing.entries {
        if !seen.insert(entry.uid) {
            continue; // a server repeating a UID must not make us fetch twice
        }
        match current.get(&entry.uid) {
            Some(record) if record.flags != entry.flags => {
                diff.flag_updates.push((entry.uid, entry.flags))
            }
            Some(_) => {}
            None => diff.new_uids.push(entry.uid),
        }
    }

    let present: Option<HashSet<u32>> = if listing.complete {
        Some(seen.clone())
    } else {
        listing
            .present
            .as_ref()
            .map(|p| p.iter().copied().collect())
    };
    if let Some(present) = &present {
        if !listing.complete {
            for &uid in present {
                if !current.contains_key(&uid) && !seen.contains(&uid) {
                    diff.new_uids.push(uid);
                }
            }
        }
        for record in records {
            if record.uidvalidity == uidvalidity && !present.contains(&record.uid) {
                diff.vanished.push((record.uidvalidity, record.uid));
            }
        }
    }
    if !listing.vanished.is_empty() {
        let gone: HashSet<u32> = listing.vanished.iter().copied().collect();
        // A UID both vanished and listed was expunged after the listing was taken, or
        // the server is inconsistent: trust the listing, the next pass re-checks.
        diff.vanished.extend(
            records
                .iter()
                .filter(|r| {
                    r.uidvalidity == uidvalidity && gone.contains(&r.uid) && !seen.contains(&r.uid)
                })
                .map(|r| (r.uidvalidity, r.uid)),
        );
        diff.new_uids
            .retain(|uid| !gone.contains(uid) || seen.contains(uid));
    }
    diff.new_uids.sort_unstable();
    diff.new_uids.dedup();
    diff.flag_updates.sort_unstable_by_key(|&(uid, _)| uid);
    diff.vanished.sort_unstable();
    diff.vanished.dedup();
    diff
}

/// Pairs new messages with vanished records by fingerprint, across all folders of an
/// account. A pair becomes a [`Action::Relocate`] (a move between folders, or the same
/// message under a new UIDVALIDITY); other new messages are fetched; other vanished
/// records are removed. A vanished record in the same folder is preferred, so a
/// UIDVALIDITY change re-pairs in place. Duplicates pair one to one, in UID order.
pub fn pair(mut new: Vec<RemoteNew>, mut vanished: Vec<Record>) -> Vec<Action> {
    new.sort_by_key(|n| (n.folder, n.uid));
    vanished.sort_by_key(|r| (r.folder, r.uidvalidity, r.uid));

    // Which vanished record (by index) each new message takes. Two passes, so that
    // every same-folder pair is made before any cross-folder one; in a single pass an
    // earlier folder could take a record that a later folder's own new message (after
    // a UIDVALIDITY change) would have re-paired in place, turning one in-place rebind
    // into moves of files between folders (and, for messages without a Message-ID,
    // possibly filing a different message of the same size and date).
    let mut taken: Vec<Option<usize>> = vec![None; new.len()];
    {
        let mut pool: HashMap<_, BTreeMap<FolderId, VecDeque<usize>>> = HashMap::new();
        for (i, record) in vanished.iter().enumerate() {
            pool.entry(record.fingerprint.pairing_key())
                .or_default()
                .entry(record.folder)
                .or_default()
                .push_back(i);
        }
        for (message, slot) in new.iter().zip(taken.iter_mut()) {
            *slot = pool
                .get_mut(&message.fingerprint.pairing_key())
                .and_then(|folders| folders.get_mut(&message.folder))
                .and_then(VecDeque::pop_front);
        }
        for (message, slot) in new.iter().zip(taken.iter_mut()) {
            if slot.is_none() {
                *slot = pool
                    .get_mut(&message.fingerprint.pairing_key())
                    .and_then(|folders| folders.values_mut().find_map(VecDeque::pop_front));
            }
        }
    }

    let mut vanished: Vec<Option<Record>> = vanished.into_iter().map(Some).collect();
    let mut actions = Vec::with_capacity(new.len() + vanished.len());
    for (message, slot) in new.into_iter().zip(taken) {
        match slot.and_then(|i| vanished[i].take()) {
            Some(record) => actions.push(Action::Relocate {
                record,
                folder: message.folder,
                uidvalidity: message.uidvalidity,
                uid: message.uid,
                flags: message.flags,
            }),
            None => actions.push(Action::Fetch {
                folder: message.folder,
                uid: message.uid,
            }),
        }
    }
    actions.extend(
        vanished
            .into_iter()
            .flatten()
            .map(|record| Action::Remove { record }),
    );
    actions
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
