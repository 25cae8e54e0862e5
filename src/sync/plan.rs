//! The planner: pure functions from what the server shows and what the state records
//! to the actions that make the local store match. No I/O, no tokio, no SQLite.
//!
//! A pass observes, plans, then applies. [`plan`] is the one function that decides:
//! given a [`Snapshot`] of every mapped folder (its listing, its records, which folders
//! failed), it returns the [`Plan`]: the actions, and the watermark each folder may
//! commit once they are applied. Recognising a moved message needs its fingerprint,
//! which is only worth asking for when some record vanished and a new message has its
//! size; so `plan` may instead return what it [`Need`]s to know first (the vanished
//! records, sizes, descriptions), and the pass asks, adds the answers to the snapshot
//! and plans again. Inside, a folder is planned in two steps:
//! 1. [`diff_folder`] compares a folder's listing with its records;
//! 2. [`pair`] takes every folder's new messages and vanished records together and
//!    turns each new message into a relocation (already held) or a fetch, and each
//!    unpaired vanished record into a removal.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::imap::Listing;

use super::model::{
    Action, Fingerprint, FolderDiff, FolderId, Known, LocalView, Policy, Record, RemoteNew,
};
use super::two_way::{self, Whereabouts};
use crate::flags::Flags;

/// Where a server folder stood when it was listed: UIDVALIDITY, UIDNEXT and
/// HIGHESTMODSEQ. Committed for a folder only once every action planned from that
/// listing is applied, so a kill in between leaves the next pass asking from the old
/// one (and seeing again what the killed pass did not finish).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    pub uidvalidity: u32,
    pub uidnext: Option<u32>,
    pub highestmodseq: Option<u64>,
}

/// How a folder is listed, decided by [`listing_mode`] from its stored watermark and
/// what SELECT reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListingMode {
    /// Provably unchanged since the stored watermark: nothing is listed, and the
    /// records are not even read.
    Unchanged,
    /// Only what changed since this mod-sequence (CONDSTORE `CHANGEDSINCE`, QRESYNC).
    Changes { since: u64 },
    /// Every UID and its flags.
    Full,
}

/// Chooses how to list a folder. `stored` is the watermark of its last complete pass,
/// `server` what SELECT reports now, `exists` the server's message count and `records`
/// the count of records held for the folder (of every UIDVALIDITY).
pub fn listing_mode(
    stored: Option<Watermark>,
    server: Watermark,
    exists: u32,
    records: u64,
    condstore: bool,
) -> ListingMode {
    let Some(stored) = stored.filter(|s| condstore && s.uidvalidity == server.uidvalidity) else {
        return ListingMode::Full;
    };
    match (stored.highestmodseq, server.highestmodseq) {
        (Some(_), Some(_)) if stored == server && u64::from(exists) == records => {
            ListingMode::Unchanged
        }
        (Some(since), Some(_)) => ListingMode::Changes { since },
        _ => ListingMode::Full,
    }
}

/// What a pass observed of one mapped folder.
#[derive(Clone, Debug)]
pub struct Observed {
    pub id: FolderId,
    /// Where the server's folder stood when listed: what a complete pass commits.
    pub server: Watermark,
    /// What the server listed; `None` when the folder provably did not change.
    pub listing: Option<Listing>,
    /// The folder's records, when it was listed.
    pub known: Vec<Known>,
    /// RFC822.SIZE of messages, where asked: `None` when the server did not say (the
    /// message is gone, or the server is odd; a fetch finds out).
    pub sizes: HashMap<u32, Option<u64>>,
    /// `sizes` holds every message from this UID on that the server had when listed
    /// (they came with the SELECT): a later UID missing from it has no size.
    pub sizes_from: Option<u32>,
    /// Flags and fingerprint of new messages, where asked; `None` as for sizes.
    pub described: HashMap<u32, Option<(Flags, Fingerprint)>>,
    /// The folder failed this pass: it gets no action and no watermark, and none of its
    /// records is removed nor its messages fetched.
    pub failed: bool,
}

impl Observed {
    /// What is known of a message's size: `None` if it was never asked.
    fn size(&self, uid: u32) -> Option<Option<u64>> {
        match self.sizes.get(&uid) {
            Some(size) => Some(*size),
            None if self.sizes_from.is_some_and(|from| uid >= from) => Some(None),
            None => None,
        }
    }

    /// A folder as listed, with nothing asked about its new messages yet.
    pub fn new(
        id: FolderId,
        server: Watermark,
        listing: Option<Listing>,
        known: Vec<Known>,
    ) -> Self {
        Observed {
            id,
            server,
            listing,
            known,
            sizes: HashMap::new(),
            sizes_from: None,
            described: HashMap::new(),
            failed: false,
        }
    }
}

/// Everything [`plan`] decides from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub folders: Vec<Observed>,
    /// Full records of vanished messages, as asked for by [`Need::Records`].
    pub records: HashMap<(FolderId, u32, u32), Record>,
    /// Two-way accounts whose local side changed: what it holds now. `None` for pull
    /// accounts, and when no mapped folder changed locally.
    pub local: Option<LocalView>,
    pub policy: Policy,
}

/// What [`plan`] must know before it can decide. Each is asked of one folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// The full records of these vanished (UIDVALIDITY, UID) keys.
    Records {
        folder: FolderId,
        keys: Vec<(u32, u32)>,
    },
    /// The sizes of these new messages.
    Sizes { folder: FolderId, uids: Vec<u32> },
    /// Flags, size, INTERNALDATE and Message-ID of these new messages.
    Descriptions { folder: FolderId, uids: Vec<u32> },
}

impl Need {
    pub fn folder(&self) -> FolderId {
        match self {
            Need::Records { folder, .. }
            | Need::Sizes { folder, .. }
            | Need::Descriptions { folder, .. } => *folder,
        }
    }
}

/// The outcome of [`plan`]: what to ask first, or what to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Questions to answer (into the snapshot) and plan again; when not empty, there
    /// are no actions or watermarks.
    pub needs: Vec<Need>,
    pub actions: Vec<Action>,
    /// Per folder, the watermark to commit once all its actions are applied.
    pub watermarks: Vec<(FolderId, Watermark)>,
    /// Folders whose local changes the pass refuses to send (emptied, or too much
    /// deleted at once), with why: they fail this pass, with no action.
    pub refused: Vec<(FolderId, String)>,
}

/// Plans a pass: the one place a pass decides what to change.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let live: Vec<(&Observed, FolderDiff)> = snapshot
        .folders
        .iter()
        .filter(|f| !f.failed)
        .map(|f| {
            let diff = match &f.listing {
                Some(listing) => diff_folder(&f.known, f.server.uidvalidity, listing),
                None => FolderDiff::default(),
            };
            (f, diff)
        })
        .collect();
    let at = snapshot.local.as_ref().map(Whereabouts::new);
    // New local files (two-way) may be the same as new server messages: their sizes
    // make those candidates for a description, as vanished records' sizes do.
    let fresh_sizes: HashSet<u64> = snapshot
        .local
        .iter()
        .flat_map(|l| l.fresh.iter().map(|n| n.fingerprint.size))
        .collect();
    let mut actions = Vec::new();
    if live.iter().any(|(_, d)| !d.vanished.is_empty()) || !fresh_sizes.is_empty() {
        // Which messages moved (or were renumbered): the vanished records, then the
        // sizes of new messages, then the full description of those whose size a
        // vanished record has (sizes come from the index on every server; a
        // Message-ID may mean reading the header).
        let records = ask(&live, |f, d| {
            let keys: Vec<(u32, u32)> = d
                .vanished
                .iter()
                .filter(|&&(v, u)| !snapshot.records.contains_key(&(f.id, v, u)))
                .copied()
                .collect();
            (!keys.is_empty()).then_some(Need::Records { folder: f.id, keys })
        });
        if let Some(plan) = records {
            return plan;
        }
        let (gone, vanished): (Vec<Record>, Vec<Record>) = live
            .iter()
            .flat_map(|(f, d)| d.vanished.iter().map(move |&(v, u)| (f.id, v, u)))
            .filter_map(|key| snapshot.records.get(&key).cloned())
            // Gone on both sides: nothing to pair (a record paired without its file
            // would read as a local deletion of wherever the message went).
            .partition(|r| at.as_ref().is_some_and(|at| at.gone(r)));
        actions.extend(gone.into_iter().map(|record| Action::Remove { record }));
        let sizeless = ask(&live, |f, d| {
            let uids: Vec<u32> = d
                .new_uids
                .iter()
                .copied()
                .filter(|&u| f.size(u).is_none())
                .collect();
            (!uids.is_empty()).then_some(Need::Sizes { folder: f.id, uids })
        });
        if let Some(plan) = sizeless {
            return plan;
        }
        let mut sizes: HashSet<u64> = vanished.iter().map(|r| r.fingerprint.size).collect();
        sizes.extend(&fresh_sizes);
        let candidate =
            |f: &Observed, uid: &u32| f.size(*uid).flatten().is_some_and(|s| sizes.contains(&s));
        let undescribed = ask(&live, |f, d| {
            let uids: Vec<u32> = d
                .new_uids
                .iter()
                .filter(|u| candidate(f, u) && !f.described.contains_key(u))
                .copied()
                .collect();
            (!uids.is_empty()).then_some(Need::Descriptions { folder: f.id, uids })
        });
        if let Some(plan) = undescribed {
            return plan;
        }
        let mut new = Vec::new();
        let mut others = Vec::new();
        // New messages whose size only a new local file has are not moves: they are
        // fetched (or adopted by the two-way step), with their description kept.
        let moved_sizes: HashSet<u64> = vanished.iter().map(|r| r.fingerprint.size).collect();
        for (f, d) in &live {
            for &uid in &d.new_uids {
                match f.described.get(&uid) {
                    Some(Some((flags, fingerprint)))
                        if candidate(f, &uid) && moved_sizes.contains(&fingerprint.size) =>
                    {
                        new.push(RemoteNew {
                            folder: f.id,
                            uidvalidity: f.server.uidvalidity,
                            uid,
                            flags: *flags,
                            fingerprint: fingerprint.clone(),
                        })
                    }
                    // Not a candidate, or not described (if it is gone, the fetch
                    // says so).
                    _ => others.push(Action::Fetch { folder: f.id, uid }),
                }
            }
        }
        actions.extend(pair(new, vanished));
        actions.extend(others);
    } else {
        for (f, d) in &live {
            actions.extend(
                d.new_uids
                    .iter()
                    .map(|&uid| Action::Fetch { folder: f.id, uid }),
            );
        }
    }
    for (f, d) in &live {
        let folder = f.id;
        actions.extend(d.flag_updates.iter().map(|&(uid, flags)| Action::SetFlags {
            folder,
            uid,
            flags,
        }));
    }
    let mut refused = Vec::new();
    if let Some(local) = &snapshot.local {
        let ids: HashMap<FolderId, u32> = live
            .iter()
            .map(|(f, _)| (f.id, f.server.uidvalidity))
            .collect();
        let described: HashMap<(FolderId, u32), (Flags, Fingerprint)> = live
            .iter()
            .flat_map(|(f, _)| {
                f.described
                    .iter()
                    .filter_map(move |(&uid, d)| Some(((f.id, uid), d.clone()?)))
            })
            .collect();
        (actions, refused) = two_way::merge(local, &snapshot.policy, &ids, &described, actions);
    }
    let no: HashSet<FolderId> = refused.iter().map(|(f, _)| *f).collect();
    Plan {
        needs: Vec::new(),
        actions,
        watermarks: live
            .iter()
            .filter(|(f, _)| !no.contains(&f.id))
            .map(|(f, _)| (f.id, f.server))
            .collect(),
        refused,
    }
}

/// A plan that only asks: what `need` asks of each folder, if it asks anything.
fn ask(
    live: &[(&Observed, FolderDiff)],
    need: impl Fn(&Observed, &FolderDiff) -> Option<Need>,
) -> Option<Plan> {
    let needs: Vec<Need> = live.iter().filter_map(|(f, d)| need(f, d)).collect();
    (!needs.is_empty()).then(|| Plan {
        needs,
        ..Plan::default()
    })
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
