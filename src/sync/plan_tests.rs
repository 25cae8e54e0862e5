//! Tests of the planner: one table test per case, then properties checked against a
//! small simulator of the executor (apply actions to a set of records).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;
use crate::flags::Flags;
use crate::imap::RemoteEntry;
use crate::sync::model::{Fingerprint, FolderId};

// ---------------------------------------------------------------------------------
// Helpers shared by the table tests and the properties.

const INBOX: FolderId = FolderId(1);
const DELETED: FolderId = FolderId(2);

fn seen() -> Flags {
    Flags::SEEN
}

fn none() -> Flags {
    Flags::empty()
}

fn entry(uid: u32, flags: Flags) -> RemoteEntry {
    RemoteEntry { uid, flags }
}

fn known(uidvalidity: u32, uid: u32, flags: Flags) -> Known {
    Known {
        uidvalidity,
        uid,
        flags,
    }
}

fn complete(entries: &[RemoteEntry]) -> Listing {
    Listing {
        entries: entries.to_vec(),
        complete: true,
        present: None,
        vanished: Vec::new(),
    }
}

fn fp(message_id: Option<&str>, size: u64, internaldate: i64) -> Fingerprint {
    Fingerprint {
        message_id: message_id.map(str::to_owned),
        size,
        internaldate,
    }
}

fn record(folder: FolderId, uidvalidity: u32, uid: u32, fingerprint: Fingerprint) -> Record {
    Record {
        folder,
        uidvalidity,
        uid,
        base: format!("{}.{uidvalidity}.{uid}", folder.0),
        flags: Flags::empty(),
        fingerprint,
    }
}

fn remote_new(folder: FolderId, uidvalidity: u32, uid: u32, fingerprint: Fingerprint) -> RemoteNew {
    RemoteNew {
        folder,
        uidvalidity,
        uid,
        flags: Flags::empty(),
        fingerprint,
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    fetch: usize,
    set_flags: usize,
    relocate: usize,
    remove: usize,
}

fn counts(actions: &[Action]) -> Counts {
    let mut c = Counts::default();
    for a in actions {
        match a {
            Action::Fetch { .. } => c.fetch += 1,
            Action::SetFlags { .. } => c.set_flags += 1,
            Action::Relocate { .. } => c.relocate += 1,
            Action::Remove { .. } => c.remove += 1,
            other => panic!("a pull plan pushed: {other:?}"),
        }
    }
    c
}

// ---------------------------------------------------------------------------------
// Table tests: diff_folder.

#[test]
fn initial_sync_fetches_every_message() {
    let listing = complete(&[entry(1, none()), entry(2, seen()), entry(7, none())]);
    let diff = diff_folder(&[], 10, &listing);
    assert_eq!(
        diff,
        FolderDiff {
            new_uids: vec![1, 2, 7],
            flag_updates: vec![],
            vanished: vec![],
        }
    );
}

#[test]
fn unchanged_folder_gives_an_empty_diff() {
    let records = [known(10, 1, none()), known(10, 2, seen())];
    let listing = complete(&[entry(1, none()), entry(2, seen())]);
    assert_eq!(diff_folder(&records, 10, &listing), FolderDiff::default());
}

#[test]
fn unchanged_folder_with_empty_condstore_listing_gives_an_empty_diff() {
    let records = [known(10, 1, none()), known(10, 2, seen())];
    let listing = Listing::default(); // CONDSTORE: nothing changed, nothing expunged
    assert_eq!(diff_folder(&records, 10, &listing), FolderDiff::default());
}

#[test]
fn flags_set_and_cleared_on_server_become_flag_updates() {
    let records = [
        known(10, 1, none()),
        known(10, 2, seen()),
        known(10, 3, seen()),
    ];
    let flagged_seen = Flags::SEEN.union(Flags::FLAGGED);
    let listing = complete(&[entry(1, seen()), entry(2, none()), entry(3, flagged_seen)]);
    let diff = diff_folder(&records, 10, &listing);
    assert_eq!(
        diff.flag_updates,
        vec![(1, seen()), (2, none()), (3, flagged_seen)]
    );
    assert!(diff.new_uids.is_empty());
    assert!(diff.vanished.is_empty());
}

#[test]
fn expunged_message_is_vanished() {
    let records = [
        known(10, 1, none()),
        known(10, 2, none()),
        known(10, 3, none()),
    ];
    let listing = complete(&[entry(1, none()), entry(3, none())]);
    let diff = diff_folder(&records, 10, &listing);
    assert_eq!(diff.vanished, vec![(10, 2)]);
    assert!(diff.new_uids.is_empty());
    assert!(diff.flag_updates.is_empty());
}

#[test]
fn emptied_folder_vanishes_every_record() {
    let records = [known(10, 1, none()), known(10, 2, none())];
    let diff = diff_folder(&records, 10, &complete(&[]));
    assert_eq!(diff.vanished, vec![(10, 1), (10, 2)]);
}

#[test]
fn new_and_expunged_at_once_with_condstore_listing_and_present() {
    let records = [
        known(10, 1, none()),
        known(10, 2, none()),
        known(10, 3, none()),
    ];
    // Changed since: uid 3 got \Seen, uid 4 is new; uid 2 was expunged.
    let listing = Listing {
        entries: vec![entry(3, seen()), entry(4, none())],
        complete: false,
        present: Some(vec![1, 3, 4]),
        vanished: Vec::new(),
    };
    let diff = diff_folder(&records, 10, &listing);
    assert_eq!(
        diff,
        FolderDiff {
            new_uids: vec![4],
            flag_updates: vec![(3, seen())],
            vanished: vec![(10, 2)],
        }
    );
}

#[test]
fn condstore_listing_without_present_never_vanishes() {
    let records = [known(10, 1, none()), known(10, 2, none())];
    let listing = Listing {
        entries: vec![entry(2, seen()), entry(5, none())],
        complete: false,
        present: None,
        vanished: Vec::new(),
    };
    let diff = diff_folder(&records, 10, &listing);
    assert!(diff.vanished.is_empty());
    assert_eq!(diff.new_uids, vec![5]);
    assert_eq!(diff.flag_updates, vec![(2, seen())]);
}

#[test]
fn uid_only_in_present_is_new() {
    // A CONDSTORE answer that missed a message (it names new ones, but a server may
    // not): the present set still shows it, so it is fetched rather than ignored.
    let records = [known(10, 1, none())];
    let listing = Listing {
        entries: vec![],
        complete: false,
        present: Some(vec![1, 3]),
        vanished: Vec::new(),
    };
    let diff = diff_folder(&records, 10, &listing);
    assert_eq!(diff.new_uids, vec![3]);
    assert!(diff.vanished.is_empty());
}

#[test]
fn duplicate_uids_in_listing_do_not_fetch_twice() {
    let records = [known(10, 1, none())];
    let listing = complete(&[
        entry(1, seen()),
        entry(1, seen()),
        entry(2, none()),
        entry(2, none()),
    ]);
    let diff = diff_folder(&records, 10, &listing);
    assert_eq!(diff.new_uids, vec![2]);
    assert_eq!(diff.flag_updates, vec![(1, seen())]);

    // Also when the CONDSTORE entries and `present` both name the new UID.
    let listing = Listing {
        entries: vec![entry(2, none()), entry(2, none())],
        complete: false,
        present: Some(vec![1, 2, 2]),
        vanished: Vec::new(),
    };
    let diff = diff_folder(&records, 10, &listing);
    assert_eq!(diff.new_uids, vec![2]);
}

#[test]
fn uidvalidity_change_vanishes_every_old_record_and_makes_every_message_new() {
    let records = [known(10, 1, none()), known(10, 2, seen())];
    // Same UIDs as before: they mean nothing under the new UIDVALIDITY.
    let listing = complete(&[entry(1, none()), entry(2, seen())]);
    let diff = diff_folder(&records, 11, &listing);
    assert_eq!(
        diff,
        FolderDiff {
            new_uids: vec![1, 2],
            flag_updates: vec![],
            vanished: vec![(10, 1), (10, 2)],
        }
    );
}

#[test]
fn qresync_vanished_with_present_still_fetches_what_only_present_shows() {
    // QRESYNC reported uid 2 expunged, but the counts did not add up, so every UID was
    // asked for too: uid 5 arrived unannounced and must be fetched in this pass.
    let records = [known(10, 1, none()), known(10, 2, none())];
    let listing = Listing {
        entries: vec![],
        complete: false,
        present: Some(vec![1, 5, 7]),
        vanished: vec![2, 7],
    };
    let diff = diff_folder(&records, 10, &listing);
    assert_eq!(
        diff,
        FolderDiff {
            // uid 7 is both present and expunged without ever being listed: the
            // expunge is the later news, so nothing is fetched for it.
            new_uids: vec![5],
            flag_updates: vec![],
            vanished: vec![(10, 2)],
        }
    );
}

// ---------------------------------------------------------------------------------
// Table tests: pair.

#[test]
fn uidvalidity_change_repairs_in_place_without_fetch_or_remove() {
    let a = fp(Some("<a@x>"), 100, 1);
    let b = fp(Some("<b@x>"), 200, 2);
    let c = fp(None, 300, 3);
    let vanished = vec![
        record(INBOX, 10, 1, a.clone()),
        record(INBOX, 10, 2, b.clone()),
        record(INBOX, 10, 3, c.clone()),
    ];
    let new = vec![
        remote_new(INBOX, 11, 5, c),
        remote_new(INBOX, 11, 6, a),
        remote_new(INBOX, 11, 7, b),
    ];
    let actions = pair(new, vanished);
    assert_eq!(
        counts(&actions),
        Counts {
            relocate: 3,
            ..Counts::default()
        }
    );
    let mut rebinds: Vec<(u32, u32, u32)> = actions
        .iter()
        .map(|a| match a {
            Action::Relocate {
                record,
                folder,
                uidvalidity,
                uid,
                ..
            } => {
                assert_eq!(*folder, INBOX);
                assert_eq!(*uidvalidity, 11);
                (record.uid, *uidvalidity, *uid)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    rebinds.sort();
    assert_eq!(rebinds, vec![(1, 11, 6), (2, 11, 7), (3, 11, 5)]);
}

#[test]
fn move_inbox_to_deleted_items_relocates_without_download() {
    let gone = record(INBOX, 10, 4, fp(Some("<m@x>"), 1234, 1_700_000_000));
    // Exchange re-stamps INTERNALDATE on the copy; Message-ID and size still pair.
    let mut arrived = remote_new(DELETED, 20, 9, fp(Some("<m@x>"), 1234, 1_700_000_555));
    arrived.flags = seen();
    let actions = pair(vec![arrived], vec![gone.clone()]);
    assert_eq!(
        actions,
        vec![Action::Relocate {
            record: gone,
            folder: DELETED,
            uidvalidity: 20,
            uid: 9,
            flags: seen(),
        }]
    );
}

#[test]
fn same_message_id_and_size_pair_one_to_one() {
    let dup = fp(Some("<dup@x>"), 500, 1);
    let vanished = vec![
        record(INBOX, 10, 1, dup.clone()),
        record(INBOX, 10, 2, dup.clone()),
    ];
    let new = vec![
        remote_new(DELETED, 20, 8, dup.clone()),
        remote_new(DELETED, 20, 9, dup.clone()),
        remote_new(DELETED, 20, 10, dup),
    ];
    let actions = pair(new, vanished);
    assert_eq!(
        counts(&actions),
        Counts {
            relocate: 2,
            fetch: 1,
            ..Counts::default()
        }
    );
    let sources: BTreeSet<u32> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Relocate { record, .. } => Some(record.uid),
            _ => None,
        })
        .collect();
    assert_eq!(sources, BTreeSet::from([1, 2]), "each record used once");
    // In UID order: the lowest new UIDs take the records, the last one is fetched.
    assert!(actions.contains(&Action::Fetch {
        folder: DELETED,
        uid: 10
    }));
}

#[test]
fn without_message_id_pairing_needs_size_and_internaldate() {
    let vanished = vec![record(INBOX, 10, 1, fp(None, 700, 1000))];
    // Same size, other date: a different message.
    let actions = pair(
        vec![remote_new(DELETED, 20, 1, fp(None, 700, 1001))],
        vanished.clone(),
    );
    assert_eq!(
        counts(&actions),
        Counts {
            fetch: 1,
            remove: 1,
            ..Counts::default()
        }
    );
    // Same size and date: the same message.
    let actions = pair(
        vec![remote_new(DELETED, 20, 1, fp(None, 700, 1000))],
        vanished.clone(),
    );
    assert_eq!(
        counts(&actions),
        Counts {
            relocate: 1,
            ..Counts::default()
        }
    );
    // A Message-ID on one side only never pairs with its absence.
    let actions = pair(
        vec![remote_new(DELETED, 20, 1, fp(Some("<z@x>"), 700, 1000))],
        vanished,
    );
    assert_eq!(
        counts(&actions),
        Counts {
            fetch: 1,
            remove: 1,
            ..Counts::default()
        }
    );
}

#[test]
fn vanished_record_matching_nothing_is_removed() {
    let gone = record(INBOX, 10, 3, fp(Some("<gone@x>"), 42, 1));
    let actions = pair(
        vec![remote_new(INBOX, 10, 9, fp(Some("<other@x>"), 42, 1))],
        vec![gone.clone()],
    );
    assert_eq!(
        actions,
        vec![
            Action::Fetch {
                folder: INBOX,
                uid: 9
            },
            Action::Remove { record: gone },
        ]
    );
}

#[test]
fn same_folder_is_preferred_even_when_an_earlier_folder_wants_the_record() {
    // Regression: pairing was greedy in folder order, so a message that arrived in
    // Inbox (folder 1) took the Deleted Items record (folder 2) whose folder had a
    // UIDVALIDITY change, and Deleted Items then took the record that really moved
    // (from folder 3): two cross-folder moves instead of one move and one in-place.
    let m = fp(None, 900, 5); // no Message-ID: size + date, collisions are plausible
    let archive = FolderId(3);
    let vanished = vec![
        record(DELETED, 20, 1, m.clone()),
        record(archive, 30, 1, m.clone()),
    ];
    let new = vec![
        remote_new(INBOX, 10, 5, m.clone()),
        remote_new(DELETED, 21, 1, m),
    ];
    let actions = pair(new, vanished);
    let mut moves: Vec<(i64, i64)> = actions
        .iter()
        .map(|a| match a {
            Action::Relocate { record, folder, .. } => (record.folder.0, folder.0),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    moves.sort();
    assert_eq!(moves, vec![(2, 2), (3, 1)]);
}

// ---------------------------------------------------------------------------------
// Properties, against a simulated server and a simulated executor.

/// Fingerprints drawn from a small pool so collisions happen: 0 and 1 share a
/// Message-ID and size (a re-stamped copy), 3 and 5 share size but not date.
fn pool(i: usize) -> Fingerprint {
    match i {
        0 => fp(Some("<a@x>"), 100, 1000),
        1 => fp(Some("<a@x>"), 100, 2000),
        2 => fp(Some("<b@x>"), 100, 1000),
        3 => fp(None, 100, 1000),
        4 => fp(None, 200, 1000),
        _ => fp(None, 100, 3000),
    }
}
const POOL: usize = 6;

#[derive(Clone, Debug)]
struct ServerFolder {
    uidvalidity: u32,
    /// uid → (flags, fingerprint)
    messages: BTreeMap<u32, (Flags, Fingerprint)>,
}

/// How a folder is listed: a full UID/FLAGS listing, or CONDSTORE changed-since.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Complete,
    /// `always_present`: ask for the present UIDs even when nothing was expunged;
    /// `noise`: the changed-since answer also names unchanged messages.
    Condstore {
        always_present: bool,
        noise: bool,
    },
    /// QRESYNC: the changed messages plus `VANISHED (EARLIER)`; `noise` adds UIDs
    /// to the vanished set that were never here, as servers may.
    Qresync {
        noise: bool,
    },
}

#[derive(Clone, Debug)]
struct Scenario {
    server: BTreeMap<FolderId, ServerFolder>,
    records: Vec<Record>,
    modes: Vec<Mode>,
}

type Key = (FolderId, u32, u32);

fn key_of(r: &Record) -> Key {
    (r.folder, r.uidvalidity, r.uid)
}

/// A listing of `folder` that a correct server could have given for these records.
fn listing(folder: &ServerFolder, known: &[Known], mode: Mode) -> Listing {
    let entries: Vec<RemoteEntry> = folder
        .messages
        .iter()
        .map(|(&uid, &(flags, _))| entry(uid, flags))
        .collect();
    match mode {
        Mode::Complete => complete(&entries),
        Mode::Condstore {
            always_present,
            noise,
        } => {
            let current: HashMap<u32, Flags> = known
                .iter()
                .filter(|k| k.uidvalidity == folder.uidvalidity)
                .map(|k| (k.uid, k.flags))
                .collect();
            let changed: Vec<RemoteEntry> = entries
                .iter()
                .copied()
                .filter(|e| noise || current.get(&e.uid) != Some(&e.flags))
                .collect();
            let expunged = current.keys().any(|uid| !folder.messages.contains_key(uid));
            let present =
                (expunged || always_present).then(|| folder.messages.keys().copied().collect());
            Listing {
                entries: changed,
                complete: false,
                present,
                vanished: Vec::new(),
            }
        }
        Mode::Qresync { noise } => {
            let current: HashMap<u32, Flags> = known
                .iter()
                .filter(|k| k.uidvalidity == folder.uidvalidity)
                .map(|k| (k.uid, k.flags))
                .collect();
            let changed: Vec<RemoteEntry> = entries
                .iter()
                .copied()
                .filter(|e| current.get(&e.uid) != Some(&e.flags))
                .collect();
            let mut vanished: Vec<u32> = current
                .keys()
                .copied()
                .filter(|uid| !folder.messages.contains_key(uid))
                .collect();
            if noise {
                // UIDs above anything ever assigned here: never seen, never present.
                vanished.extend([1000, 1001, 1002]);
            }
            Listing {
                entries: changed,
                complete: false,
                present: None,
                vanished,
            }
        }
    }
}

/// What the pass observes of the scenario: each folder's listing (by its mode) and
/// its records; none failed.
fn observe(s: &Scenario, records: &[Record]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (i, (&id, folder)) in s.server.iter().enumerate() {
        let known: Vec<Known> = records
            .iter()
            .filter(|r| r.folder == id)
            .map(|r| known(r.uidvalidity, r.uid, r.flags))
            .collect();
        let l = listing(folder, &known, s.modes[i % s.modes.len()]);
        let server = Watermark {
            uidvalidity: folder.uidvalidity,
            uidnext: None,
            highestmodseq: None,
        };
        snapshot
            .folders
            .push(Observed::new(id, server, Some(l), known));
    }
    snapshot
}

/// Answers the planner's questions as the pass does, from the records and the server.
fn answer(s: &Scenario, records: &[Record], snapshot: &mut Snapshot, need: &Need) {
    let folder = &s.server[&need.folder()];
    let observed = snapshot
        .folders
        .iter_mut()
        .find(|f| f.id == need.folder())
        .expect("a need names an observed folder");
    match need {
        Need::Records { folder: id, keys } => {
            for &(uidvalidity, uid) in keys {
                let r = records
                    .iter()
                    .find(|r| key_of(r) == (*id, uidvalidity, uid))
                    .expect("a vanished key names a record");
                snapshot.records.insert(key_of(r), r.clone());
            }
        }
        Need::Sizes { uids, .. } => {
            for uid in uids {
                let size = folder.messages.get(uid).map(|(_, f)| f.size);
                observed.sizes.insert(*uid, size);
            }
        }
        Need::Descriptions { uids, .. } => {
            for uid in uids {
                let described = folder.messages.get(uid).cloned();
                observed.described.insert(*uid, described);
            }
        }
    }
}

/// Plans a pass with the real planner, answering its questions until it decides.
fn run_plan(s: &Scenario, snapshot: &mut Snapshot, records: &[Record]) -> Plan {
    for _ in 0..=3 {
        let p = super::plan(snapshot);
        if p.needs.is_empty() {
            return p;
        }
        assert!(p.actions.is_empty() && p.watermarks.is_empty(), "{p:?}");
        for need in &p.needs {
            answer(s, records, snapshot, need);
        }
    }
    panic!("the planner asked more than three times");
}

/// The actions of a pass over the scenario.
fn plan(s: &Scenario, records: &[Record]) -> Vec<Action> {
    run_plan(s, &mut observe(s, records), records).actions
}

/// The order the executor applies a plan in: relocations, flags, removals, downloads.
fn execution_order(mut actions: Vec<Action>) -> Vec<Action> {
    actions.sort_by_key(|a| match a {
        Action::Relocate { .. } => 0,
        Action::SetFlags { .. } => 1,
        Action::Remove { .. } => 2,
        Action::Fetch { .. } => 3,
        other => panic!("a pull plan pushed: {other:?}"),
    });
    actions
}

/// Applies one action to the records as the executor would, checking that it makes
/// sense (no duplicate key, no action on a record that does not exist).
fn apply(s: &Scenario, records: &mut Vec<Record>, action: &Action) {
    let find = |records: &Vec<Record>, k: Key| records.iter().position(|r| key_of(r) == k);
    match action {
        Action::Fetch { folder, uid } => {
            let f = &s.server[folder];
            let (flags, fingerprint) = f
                .messages
                .get(uid)
                .expect("fetch of a message on the server")
                .clone();
            let k = (*folder, f.uidvalidity, *uid);
            assert!(find(records, k).is_none(), "fetch would duplicate {k:?}");
            records.push(Record {
                folder: *folder,
                uidvalidity: f.uidvalidity,
                uid: *uid,
                base: format!("fetched.{}.{}.{uid}", folder.0, f.uidvalidity),
                flags,
                fingerprint,
            });
        }
        Action::SetFlags { folder, uid, flags } => {
            let k = (*folder, s.server[folder].uidvalidity, *uid);
            let i = find(records, k).expect("flags for a record that exists");
            records[i].flags = *flags;
        }
        Action::Relocate {
            record,
            folder,
            uidvalidity,
            uid,
            flags,
        } => {
            let to = (*folder, *uidvalidity, *uid);
            assert!(
                find(records, to).is_none(),
                "relocation onto a held key {to:?}"
            );
            let i = find(records, key_of(record)).expect("relocation of a record that exists");
            let r = &mut records[i];
            r.folder = *folder;
            r.uidvalidity = *uidvalidity;
            r.uid = *uid;
            r.flags = *flags;
        }
        Action::Remove { record } => {
            let i = find(records, key_of(record)).expect("removal of a record that exists");
            records.remove(i);
        }
        other => panic!("a pull plan pushed: {other:?}"),
    }
}

fn apply_all(s: &Scenario, records: &mut Vec<Record>, actions: &[Action]) {
    for a in actions {
        apply(s, records, a);
    }
}

/// Everything a user would compare: where each message is, its flags, and which
/// message it is (by the key pairing uses).
type Visible = (FolderId, u32, u32, u8, Option<String>, u64, Option<i64>);

fn visible(records: &[Record]) -> BTreeSet<Visible> {
    let set: BTreeSet<Visible> = records
        .iter()
        .map(|r| {
            let (id, size, date) = r.fingerprint.pairing_key();
            (
                r.folder,
                r.uidvalidity,
                r.uid,
                r.flags.bits(),
                id.map(str::to_owned),
                size,
                date,
            )
        })
        .collect();
    assert_eq!(set.len(), records.len(), "two records for one message");
    set
}

fn server_visible(s: &Scenario) -> BTreeSet<Visible> {
    let mut set = BTreeSet::new();
    for (&id, f) in &s.server {
        for (&uid, (flags, fingerprint)) in &f.messages {
            let (mid, size, date) = fingerprint.pairing_key();
            set.insert((
                id,
                f.uidvalidity,
                uid,
                flags.bits(),
                mid.map(str::to_owned),
                size,
                date,
            ));
        }
    }
    set
}

fn on_server(s: &Scenario, k: Key) -> bool {
    s.server
        .get(&k.0)
        .is_some_and(|f| f.uidvalidity == k.1 && f.messages.contains_key(&k.2))
}

type PairingKey = (Option<String>, u64, Option<i64>);

fn owned_pairing_key(f: &Fingerprint) -> PairingKey {
    let (id, size, date) = f.pairing_key();
    (id.map(str::to_owned), size, date)
}

fn flags_strategy() -> impl Strategy<Value = Flags> {
    (0u8..32).prop_map(Flags::from_bits)
}

fn modes_strategy() -> impl Strategy<Value = Vec<Mode>> {
    prop::collection::vec(
        prop_oneof![
            Just(Mode::Complete),
            (any::<bool>(), any::<bool>()).prop_map(|(always_present, noise)| Mode::Condstore {
                always_present,
                noise
            }),
            any::<bool>().prop_map(|noise| Mode::Qresync { noise }),
        ],
        3,
    )
}

/// Any server state and any records consistent with it: a record under the folder's
/// current UIDVALIDITY whose UID is on the server holds that message (UIDs are not
/// reused); others hold anything. Records may be under the old UIDVALIDITY, all or
/// some of them (a UIDVALIDITY change, possibly half re-paired).
fn scenario() -> impl Strategy<Value = Scenario> {
    let folder = (
        any::<bool>(),
        prop::collection::btree_map(1u32..=12, (flags_strategy(), 0..POOL), 0..8),
        prop::collection::vec(
            (
                1u32..=12,
                prop::bool::weighted(0.7),
                flags_strategy(),
                0..POOL,
            ),
            0..8,
        ),
    );
    (prop::collection::vec(folder, 1..=3), modes_strategy()).prop_map(|(folders, modes)| {
        let mut server = BTreeMap::new();
        let mut records: Vec<Record> = Vec::new();
        for (i, (changed, messages, recs)) in folders.into_iter().enumerate() {
            let id = FolderId(i as i64 + 1);
            let old_validity = 7;
            let uidvalidity = if changed { 8 } else { old_validity };
            let messages: BTreeMap<u32, (Flags, Fingerprint)> = messages
                .into_iter()
                .map(|(uid, (flags, p))| (uid, (flags, pool(p))))
                .collect();
            for (uid, old, flags, p) in recs {
                let rv = if old { old_validity } else { uidvalidity };
                let fingerprint = match messages.get(&uid) {
                    Some((_, f)) if rv == uidvalidity => f.clone(),
                    _ => pool(p),
                };
                if records.iter().any(|r| key_of(r) == (id, rv, uid)) {
                    continue;
                }
                records.push(Record {
                    folder: id,
                    uidvalidity: rv,
                    uid,
                    base: format!("old.{i}.{rv}.{uid}"),
                    flags,
                    fingerprint,
                });
            }
            server.insert(
                id,
                ServerFolder {
                    uidvalidity,
                    messages,
                },
            );
        }
        Scenario {
            server,
            records,
            modes,
        }
    })
}

/// A server whose folders (some of them) changed UIDVALIDITY but hold the same
/// messages as before: records are the old UIDs, renumbered on the server.
fn same_messages_new_uidvalidity() -> impl Strategy<Value = (Scenario, bool)> {
    let folder = (
        any::<bool>(),
        prop::collection::vec((flags_strategy(), flags_strategy(), 0..POOL), 0..8),
        0u32..5,
    );
    (prop::collection::vec(folder, 1..=3), modes_strategy()).prop_map(|(folders, modes)| {
        let mut server = BTreeMap::new();
        let mut records = Vec::new();
        let mut any_change = false;
        for (i, (changed, messages, shift)) in folders.into_iter().enumerate() {
            let id = FolderId(i as i64 + 1);
            any_change |= changed && !messages.is_empty();
            let uidvalidity = if changed { 8 } else { 7 };
            let mut listing = BTreeMap::new();
            for (n, (old_flags, new_flags, p)) in messages.into_iter().enumerate() {
                let old_uid = n as u32 + 1;
                let new_uid = if changed { old_uid + shift } else { old_uid };
                listing.insert(new_uid, (new_flags, pool(p)));
                records.push(Record {
                    folder: id,
                    uidvalidity: 7,
                    uid: old_uid,
                    base: format!("old.{i}.{old_uid}"),
                    flags: old_flags,
                    fingerprint: pool(p),
                });
            }
            server.insert(
                id,
                ServerFolder {
                    uidvalidity,
                    messages: listing,
                },
            );
        }
        (
            Scenario {
                server,
                records,
                modes,
            },
            any_change,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) and (d): after applying a plan, the records are exactly the server's
    /// messages, and planning again changes nothing.
    #[test]
    fn applying_a_plan_converges_and_replanning_is_empty(s in scenario()) {
        let mut records = s.records.clone();
        let actions = plan(&s, &records);
        apply_all(&s, &mut records, &execution_order(actions));
        prop_assert_eq!(visible(&records), server_visible(&s));
        let again = plan(&s, &records);
        prop_assert!(again.is_empty(), "second plan: {:?}", again);
    }

    /// (b): a record is removed only if its (folder, UIDVALIDITY, UID) is not on the
    /// server; and a message is fetched only if it has no record.
    #[test]
    fn only_messages_gone_from_the_server_are_removed(s in scenario()) {
        let held: BTreeSet<Key> = s.records.iter().map(key_of).collect();
        for a in plan(&s, &s.records) {
            match &a {
                Action::Remove { record } => {
                    prop_assert!(!on_server(&s, key_of(record)), "removed a present message: {:?}", a);
                    prop_assert!(held.contains(&key_of(record)));
                }
                Action::Relocate { record, .. } => {
                    prop_assert!(!on_server(&s, key_of(record)), "relocated a present message: {:?}", a);
                }
                Action::Fetch { folder, uid } => {
                    let v = s.server[folder].uidvalidity;
                    prop_assert!(!held.contains(&(*folder, v, *uid)), "fetched a held message: {:?}", a);
                }
                Action::SetFlags { .. } => {}
                a => prop_assert!(false, "a pull plan pushed: {:?}", a),
            }
        }
    }

    /// (c), in general: a message is downloaded only when no vanished record with its
    /// fingerprint is left to pair with it, and a record removed only when no new
    /// message is left to take it: per pairing key, fetches = max(0, new - vanished)
    /// and removals = max(0, vanished - new).
    #[test]
    fn downloads_and_removals_are_minimal(s in scenario()) {
        let mut balance: HashMap<PairingKey, (usize, usize)> = HashMap::new();
        let held: BTreeSet<Key> = s.records.iter().map(key_of).collect();
        for (&id, f) in &s.server {
            for (&uid, (_, fingerprint)) in &f.messages {
                if !held.contains(&(id, f.uidvalidity, uid)) {
                    balance.entry(owned_pairing_key(fingerprint)).or_default().0 += 1;
                }
            }
        }
        for r in &s.records {
            if !on_server(&s, key_of(r)) {
                balance.entry(owned_pairing_key(&r.fingerprint)).or_default().1 += 1;
            }
        }
        let fetch: usize = balance.values().map(|&(n, v)| n.saturating_sub(v)).sum();
        let remove: usize = balance.values().map(|&(n, v)| v.saturating_sub(n)).sum();
        let c = counts(&plan(&s, &s.records));
        prop_assert_eq!((c.fetch, c.remove), (fetch, remove));
    }

    /// A move between folders is planned only when neither folder can pair the message
    /// in place: the source folder has no new message with that fingerprint left over
    /// (fetched, or taken from elsewhere), and the destination folder no vanished
    /// record with it left over (removed, or moved elsewhere).
    #[test]
    fn moves_between_folders_only_when_no_in_place_pair_exists(s in scenario()) {
        let actions = plan(&s, &s.records);
        // Per (pairing key, folder): a new message not paired in place, a vanished
        // record not paired in place.
        let mut loose_new: BTreeSet<(PairingKey, FolderId)> = BTreeSet::new();
        let mut loose_vanished: BTreeSet<(PairingKey, FolderId)> = BTreeSet::new();
        for a in &actions {
            match a {
                Action::Fetch { folder, uid } => {
                    let fingerprint = &s.server[folder].messages[uid].1;
                    loose_new.insert((owned_pairing_key(fingerprint), *folder));
                }
                Action::Remove { record } => {
                    loose_vanished.insert((owned_pairing_key(&record.fingerprint), record.folder));
                }
                Action::Relocate { record, folder, .. } if record.folder != *folder => {
                    let k = owned_pairing_key(&record.fingerprint);
                    loose_new.insert((k.clone(), *folder));
                    loose_vanished.insert((k, record.folder));
                }
                _ => {}
            }
        }
        let both: Vec<_> = loose_new.intersection(&loose_vanished).collect();
        prop_assert!(both.is_empty(), "not paired in place: {:?}\n{:?}", both, actions);
    }

    /// (c): a UIDVALIDITY change over the same messages downloads nothing, removes
    /// nothing, and re-pairs each folder in place.
    #[test]
    fn uidvalidity_change_neither_downloads_nor_deletes((s, any_change) in same_messages_new_uidvalidity()) {
        let actions = plan(&s, &s.records);
        let c = counts(&actions);
        prop_assert_eq!(c.fetch, 0);
        prop_assert_eq!(c.remove, 0);
        if any_change {
            prop_assert!(c.relocate > 0);
        }
        for a in &actions {
            if let Action::Relocate { record, folder, .. } = a {
                prop_assert_eq!(record.folder, *folder, "moved between folders: {:?}", a);
            }
        }
        let mut records = s.records.clone();
        apply_all(&s, &mut records, &execution_order(actions));
        prop_assert_eq!(visible(&records), server_visible(&s));
    }

    /// (e): a pass killed after any number of actions, followed by a full pass, ends
    /// where an uninterrupted pass ends, and downloads no more.
    #[test]
    fn interrupted_pass_then_rerun_ends_like_an_uninterrupted_one(
        s in scenario(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut straight = s.records.clone();
        let actions = execution_order(plan(&s, &straight));
        let fetches = counts(&actions).fetch;
        apply_all(&s, &mut straight, &actions);

        let mut crashed = s.records.clone();
        let prefix = cut.index(actions.len() + 1);
        apply_all(&s, &mut crashed, &actions[..prefix]);
        let fetched_before = counts(&actions[..prefix]).fetch;
        let rerun = execution_order(plan(&s, &crashed));
        apply_all(&s, &mut crashed, &rerun);

        prop_assert_eq!(visible(&crashed), visible(&straight));
        prop_assert_eq!(fetched_before + counts(&rerun).fetch, fetches);
        prop_assert!(plan(&s, &crashed).is_empty());
    }
}

// ---------------------------------------------------------------------------------
// What the planner decides besides the actions: asking, failed folders, watermarks,
// how to list.

/// Every Remove names a record that the folder's own listing says is gone: under
/// another UIDVALIDITY, missing from a complete listing or from the UIDs present, or
/// reported VANISHED.
fn listing_says_gone(snapshot: &Snapshot, record: &Record) -> bool {
    let Some(f) = snapshot.folders.iter().find(|f| f.id == record.folder) else {
        return false;
    };
    let Some(l) = &f.listing else {
        return false;
    };
    record.uidvalidity != f.server.uidvalidity
        || (l.complete && !l.entries.iter().any(|e| e.uid == record.uid))
        || l.present.as_ref().is_some_and(|p| !p.contains(&record.uid))
        || l.vanished.contains(&record.uid)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A record is removed only when a complete listing, VANISHED or SEARCH says its
    /// message is gone; a UID the server lists is never removed.
    #[test]
    fn removals_only_on_the_listings_word(s in scenario()) {
        let mut snapshot = observe(&s, &s.records);
        let p = run_plan(&s, &mut snapshot, &s.records);
        for a in &p.actions {
            if let Action::Remove { record } = a {
                prop_assert!(listing_says_gone(&snapshot, record), "{:?}", a);
                let listed = snapshot.folders.iter().any(|f| {
                    f.id == record.folder
                        && f.server.uidvalidity == record.uidvalidity
                        && f.listing.as_ref().is_some_and(|l| l.entries.iter().any(|e| e.uid == record.uid))
                });
                prop_assert!(!listed, "removed a listed UID: {:?}", a);
            }
        }
    }

    /// A folder that failed this pass gets no action and no watermark: none of its
    /// records is removed or moved away, none of its messages fetched or moved in;
    /// every other folder gets its watermark.
    #[test]
    fn a_failed_folder_is_left_alone(s in scenario(), failed in any::<prop::sample::Index>()) {
        let mut snapshot = observe(&s, &s.records);
        let failed = snapshot.folders[failed.index(snapshot.folders.len())].id;
        for f in snapshot.folders.iter_mut() {
            f.failed = f.id == failed;
        }
        let p = run_plan(&s, &mut snapshot, &s.records);
        for a in &p.actions {
            let touches = match a {
                Action::Fetch { folder, .. } | Action::SetFlags { folder, .. } => *folder == failed,
                Action::Relocate { record, folder, .. } => record.folder == failed || *folder == failed,
                Action::Remove { record } => record.folder == failed,
                other => panic!("a pull plan pushed: {other:?}"),
            };
            prop_assert!(!touches, "{:?}", a);
        }
        let marked: Vec<FolderId> = p.watermarks.iter().map(|(id, _)| *id).collect();
        let others: Vec<FolderId> = s.server.keys().copied().filter(|id| *id != failed).collect();
        prop_assert_eq!(marked, others);
    }

    /// A folder is left unlisted only when its stored watermark is the server's, with
    /// CONDSTORE, and the server's count is the records'; changes are asked only since
    /// a mod-sequence of the same UIDVALIDITY.
    #[test]
    fn unchanged_only_when_nothing_can_have_changed(
        stored in proptest::option::of((1u32..3, proptest::option::of(1u32..3), proptest::option::of(1u64..3))),
        server in (1u32..3, proptest::option::of(1u32..3), proptest::option::of(1u64..3)),
        exists in 0u32..3,
        records in 0u64..3,
        condstore in any::<bool>(),
    ) {
        let mark = |(uidvalidity, uidnext, highestmodseq)| Watermark { uidvalidity, uidnext, highestmodseq };
        let stored = stored.map(mark);
        let server = mark(server);
        match listing_mode(stored, server, exists, records, condstore) {
            ListingMode::Unchanged => {
                prop_assert!(condstore);
                prop_assert_eq!(stored, Some(server));
                prop_assert!(server.highestmodseq.is_some());
                prop_assert_eq!(u64::from(exists), records);
            }
            ListingMode::Changes { since } => {
                let stored = stored.unwrap();
                prop_assert!(condstore);
                prop_assert_eq!(stored.uidvalidity, server.uidvalidity);
                prop_assert_eq!(stored.highestmodseq, Some(since));
                prop_assert!(server.highestmodseq.is_some());
            }
            ListingMode::Full => {}
        }
    }
}

#[test]
fn a_first_pass_and_a_uidvalidity_change_list_everything() {
    let at = |uidvalidity| Watermark {
        uidvalidity,
        uidnext: Some(10),
        highestmodseq: Some(5),
    };
    assert_eq!(listing_mode(None, at(7), 9, 0, true), ListingMode::Full);
    assert_eq!(
        listing_mode(Some(at(7)), at(8), 9, 9, true),
        ListingMode::Full
    );
    assert_eq!(
        listing_mode(Some(at(7)), at(7), 9, 9, false),
        ListingMode::Full
    );
    assert_eq!(
        listing_mode(Some(at(7)), at(7), 9, 9, true),
        ListingMode::Unchanged
    );
    // A record more than the server counts: something went, though no mod-sequence moved.
    assert_eq!(
        listing_mode(Some(at(7)), at(7), 8, 9, true),
        ListingMode::Changes { since: 5 }
    );
}

#[test]
fn pairing_asks_for_records_then_sizes_then_descriptions_and_no_more() {
    // Inbox lost a message; Deleted Items has a new one of the same size.
    let gone = record(INBOX, 7, 1, fp(Some("<m@x>"), 100, 1000));
    let s = Scenario {
        server: BTreeMap::from([
            (
                INBOX,
                ServerFolder {
                    uidvalidity: 7,
                    messages: BTreeMap::new(),
                },
            ),
            (
                DELETED,
                ServerFolder {
                    uidvalidity: 7,
                    messages: BTreeMap::from([(4, (seen(), fp(Some("<m@x>"), 100, 1000)))]),
                },
            ),
        ]),
        records: vec![gone.clone()],
        modes: vec![Mode::Complete],
    };
    let mut snapshot = observe(&s, &s.records);
    let mut asked = Vec::new();
    let p = loop {
        let p = super::plan(&snapshot);
        if p.needs.is_empty() {
            break p;
        }
        for need in &p.needs {
            asked.push(need.clone());
            answer(&s, &s.records, &mut snapshot, need);
        }
    };
    assert_eq!(
        asked,
        vec![
            Need::Records {
                folder: INBOX,
                keys: vec![(7, 1)]
            },
            Need::Sizes {
                folder: DELETED,
                uids: vec![4]
            },
            Need::Descriptions {
                folder: DELETED,
                uids: vec![4]
            },
        ]
    );
    assert_eq!(p.actions.len(), 1);
    assert!(matches!(
        &p.actions[0],
        Action::Relocate {
            folder: DELETED,
            uid: 4,
            ..
        }
    ));
    assert_eq!(p.watermarks.len(), 2);
}
