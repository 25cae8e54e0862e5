//! The planner, the journal and recovery together, against a real Maildir and a real
//! state database, with mbsync's discipline: each scenario is run three ways.
//! 1. Uninterrupted: plan, apply; the store equals the server.
//! 2. Interrupted after each journal step (each journal write, file operation and
//!    resolve) in turn, as a kill would stop it; then recovered, planned and applied
//!    again: the store ends exactly as in 1.
//! 3. Re-run: planning once more plans nothing.
//!
//! The server is a model (UIDs, flags, bodies); scenarios change it as a user on
//! another device would: flags, expunges, moves between folders, a UIDVALIDITY change.
//! New mail is not among them: deliveries need a server to fetch from, and their
//! journal is held to the same bar by the kill tests against Dovecot (tests/crash.rs).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{LocalFolder, apply_local};
use crate::flags::Flags;
use crate::headers::Headers;
use crate::imap::Listing;
use crate::imap::RemoteEntry;
use crate::maildir::Maildir;
use crate::maildir::parse_file_name;
use crate::state::State;
use crate::sync::model::{Fingerprint, FolderId, Known, Record};
use crate::sync::plan::{Need, Observed, Plan, Snapshot, Watermark, plan};
use crate::sync::recover::recover;

const ACCOUNT: &str = "work";
const FOLDERS: [&str; 3] = ["Inbox", "Archive", "Deleted Items"];

/// A message on the model server: its flags and its body (which names it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    flags: Flags,
    body: String,
}

/// The model server: per folder (by index in [`FOLDERS`]), its UIDVALIDITY and
/// messages by UID.
#[derive(Clone, Debug)]
struct Server {
    folders: Vec<(u32, BTreeMap<u32, Message>)>,
    next_uid: u32,
}

impl Server {
    /// `per_folder` messages in each folder, every third unread.
    fn new(per_folder: u32) -> Server {
        let mut next_uid = 1;
        let folders = (0..FOLDERS.len())
            .map(|f| {
                let messages = (0..per_folder)
                    .map(|i| {
                        let uid = next_uid;
                        next_uid += 1;
                        let flags = if i % 3 == 0 {
                            Flags::empty()
                        } else {
                            Flags::SEEN
                        };
                        let body = format!(
                            "Message-ID: <m{uid}@example.org>\r\nSubject: folder {f} message {i}\r\n\r\nbody {uid}\r\n"
                        );
                        (uid, Message { flags, body })
                    })
                    .collect();
                (7, messages)
            })
            .collect();
        Server { folders, next_uid }
    }

    fn fingerprint(m: &Message) -> Fingerprint {
        let id = m
            .body
            .split("Message-ID: <")
            .nth(1)
            .and_then(|s| s.split('>').next())
            .map(str::to_owned);
        Fingerprint {
            message_id: id,
            size: m.body.len() as u64,
            internaldate: 1_700_000_000,
        }
    }

    fn set_flags(&mut self, folder: usize, uid: u32, flags: Flags) {
        self.folders[folder].1.get_mut(&uid).unwrap().flags = flags;
    }

    fn expunge(&mut self, folder: usize, uid: u32) {
        self.folders[folder].1.remove(&uid);
    }

    /// Moves a message to another folder under a new UID, as MOVE or COPY+EXPUNGE do.
    fn move_to(&mut self, from: usize, uid: u32, to: usize) {
        let m = self.folders[from].1.remove(&uid).unwrap();
        let new = self.next_uid;
        self.next_uid += 1;
        self.folders[to].1.insert(new, m);
    }

    /// The folder is recreated: a new UIDVALIDITY, every message renumbered.
    fn renumber(&mut self, folder: usize) {
        let (validity, messages) = &mut self.folders[folder];
        *validity += 1;
        let old = std::mem::take(messages);
        for m in old.into_values() {
            messages.insert(self.next_uid, m);
            self.next_uid += 1;
        }
    }

    fn uids(&self, folder: usize) -> Vec<u32> {
        self.folders[folder].1.keys().copied().collect()
    }
}

/// A record as the tests compare it: folder index, UIDVALIDITY, UID, the record's flag
/// bits and those of the file its base names.
type RecordSeen = (usize, u32, u32, u8, u8);

/// An account's local store: a state database and three Maildirs, in a temp dir.
struct Store {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    state: State,
    folders: Vec<(FolderId, Maildir)>,
}

impl Store {
    /// A store holding exactly what `server` holds, as a finished pass leaves it.
    fn synced_with(server: &Server) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Mail");
        let mut state = State::open(&dir.path().join("state")).unwrap();
        let mut folders = Vec::new();
        for (f, name) in FOLDERS.iter().enumerate() {
            let row = state.folder(ACCOUNT, name, name).unwrap();
            let maildir = Maildir::open(&root.join(name)).unwrap();
            let (validity, messages) = &server.folders[f];
            let mut delivered = Vec::new();
            for (&uid, m) in messages {
                let base = maildir.new_base(uid);
                maildir.deliver(&base, m.flags, m.body.as_bytes()).unwrap();
                let record = Record {
                    folder: row.id,
                    uidvalidity: *validity,
                    uid,
                    base,
                    flags: m.flags,
                    fingerprint: Server::fingerprint(m),
                };
                delivered.push((record, Headers::default()));
            }
            state.commit_deliveries(row.id, &delivered, &[]).unwrap();
            folders.push((row.id, maildir));
        }
        Store {
            _dir: dir,
            root,
            state,
            folders,
        }
    }

    fn index(&self, id: FolderId) -> usize {
        self.folders.iter().position(|(f, _)| *f == id).unwrap()
    }

    /// What the pass observes: every folder listed in full.
    fn observe(&self, server: &Server) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (f, (id, _)) in self.folders.iter().enumerate() {
            let (validity, messages) = &server.folders[f];
            let listing = Listing {
                entries: messages
                    .iter()
                    .map(|(&uid, m)| RemoteEntry {
                        uid,
                        flags: m.flags,
                    })
                    .collect(),
                complete: true,
                ..Listing::default()
            };
            let mark = Watermark {
                uidvalidity: *validity,
                uidnext: Some(server.next_uid),
                highestmodseq: None,
            };
            let known: Vec<Known> = self.state.known(*id).unwrap();
            snapshot
                .folders
                .push(Observed::new(*id, mark, Some(listing), known));
        }
        snapshot
    }

    /// Plans a pass with the real planner, answering what it asks from the records and
    /// the server.
    fn plan(&self, server: &Server) -> Plan {
        let mut snapshot = self.observe(server);
        for _ in 0..=3 {
            let p = plan(&snapshot);
            if p.needs.is_empty() {
                return p;
            }
            for need in &p.needs {
                let f = self.index(need.folder());
                let observed = snapshot
                    .folders
                    .iter_mut()
                    .find(|o| o.id == need.folder())
                    .unwrap();
                let messages = &server.folders[f].1;
                match need {
                    Need::Records { folder, keys } => {
                        for r in self.state.records_for(*folder, keys).unwrap() {
                            snapshot.records.insert((r.folder, r.uidvalidity, r.uid), r);
                        }
                    }
                    Need::Sizes { uids, .. } => {
                        for uid in uids {
                            let size = messages.get(uid).map(|m| m.body.len() as u64);
                            observed.sizes.insert(*uid, size);
                        }
                    }
                    Need::Descriptions { uids, .. } => {
                        for uid in uids {
                            let d = messages.get(uid).map(|m| (m.flags, Server::fingerprint(m)));
                            observed.described.insert(*uid, d);
                        }
                    }
                }
            }
        }
        panic!("the planner kept asking");
    }

    fn local_folders(&self, server: &Server) -> HashMap<FolderId, LocalFolder> {
        self.folders
            .iter()
            .enumerate()
            .map(|(f, (id, maildir))| {
                let folder = LocalFolder {
                    maildir: maildir.clone(),
                    uidvalidity: server.folders[f].0,
                };
                (*id, folder)
            })
            .collect()
    }

    /// Applies `plan`, stopping before step `stop_at` (counted from 0) if given.
    /// Returns whether it ran to the end.
    fn apply(&mut self, server: &Server, plan: &Plan, stop_at: Option<usize>) -> bool {
        let folders = self.local_folders(server);
        let mut taken = 0;
        let mut step = || {
            let go = stop_at.is_none_or(|n| taken < n);
            taken += 1;
            go
        };
        match apply_local(&mut self.state, &folders, &plan.actions, &mut step) {
            Ok(_) => true,
            Err(crate::sync::SyncError::Interrupted) => false,
            Err(e) => panic!("{e}"),
        }
    }

    fn recover(&mut self) {
        recover(&mut self.state, ACCOUNT, &self.root).unwrap();
    }

    /// What a user sees: per folder, each message's body and flags (from its file
    /// name); and what the state says: per folder, each record's UIDVALIDITY, UID and
    /// flags, with the flags of the file its base names.
    fn seen(&self) -> (Vec<BTreeSet<(String, u8)>>, BTreeSet<RecordSeen>) {
        let mut files = Vec::new();
        let mut by_base: HashMap<String, (usize, u8)> = HashMap::new();
        for (f, (_, maildir)) in self.folders.iter().enumerate() {
            let mut set = BTreeSet::new();
            assert!(
                std::fs::read_dir(maildir.tmp()).unwrap().next().is_none(),
                "tmp/ not empty"
            );
            for sub in ["cur", "new"] {
                for e in std::fs::read_dir(maildir.root().join(sub)).unwrap() {
                    let e = e.unwrap();
                    let name = e.file_name().to_string_lossy().into_owned();
                    let (base, flags) = parse_file_name(&name);
                    let flags = flags.unwrap_or_default().bits();
                    let body = std::fs::read_to_string(e.path()).unwrap();
                    assert!(set.insert((body, flags)), "a message twice in {f}");
                    by_base.insert(base.to_owned(), (f, flags));
                }
            }
            files.push(set);
        }
        let mut records = BTreeSet::new();
        for (f, (id, _)) in self.folders.iter().enumerate() {
            for r in self.state.records(*id).unwrap() {
                let Some(&(file_folder, file_flags)) = by_base.get(&r.base) else {
                    panic!("a record without its file: {r:?}");
                };
                assert_eq!(
                    file_folder, f,
                    "a record in one folder, its file in another"
                );
                records.insert((f, r.uidvalidity, r.uid, r.flags.bits(), file_flags));
            }
        }
        assert!(
            self.state.journal(ACCOUNT).unwrap().is_empty(),
            "journal left"
        );
        (files, records)
    }

    /// Asserts the store holds exactly what the server holds, each record agreeing
    /// with its file.
    fn assert_equals(&self, server: &Server) {
        let (files, records) = self.seen();
        for (f, (validity, messages)) in server.folders.iter().enumerate() {
            let want: BTreeSet<(String, u8)> = messages
                .values()
                .map(|m| (m.body.clone(), m.flags.bits()))
                .collect();
            assert_eq!(files[f], want, "{}", FOLDERS[f]);
            let want: BTreeSet<RecordSeen> = messages
                .iter()
                .map(|(&uid, m)| (f, *validity, uid, m.flags.bits(), m.flags.bits()))
                .collect();
            let have: BTreeSet<_> = records.iter().filter(|r| r.0 == f).copied().collect();
            assert_eq!(have, want, "records of {}", FOLDERS[f]);
        }
    }
}

/// Runs a scenario the three ways; returns how many crash points it tried.
fn three_ways(change: impl Fn(&mut Server)) -> usize {
    let before = Server::new(6);
    let mut after = before.clone();
    change(&mut after);

    // 1. Uninterrupted.
    let mut straight = Store::synced_with(&before);
    let p = straight.plan(&after);
    assert!(!p.actions.is_empty(), "the scenario changes nothing");
    assert!(straight.apply(&after, &p, None));
    straight.assert_equals(&after);
    // 3. Re-run: nothing left to do.
    assert_eq!(
        straight.plan(&after).actions,
        vec![],
        "a re-run plans again"
    );
    let expected = straight.seen();

    // 2. Interrupted after each step, recovered, run again.
    let mut stop_at = 0;
    loop {
        let mut store = Store::synced_with(&before);
        let p = store.plan(&after);
        let finished = store.apply(&after, &p, Some(stop_at));
        store.recover();
        let again = store.plan(&after);
        assert!(store.apply(&after, &again, None));
        store.assert_equals(&after);
        assert_eq!(
            store.seen().1,
            expected.1,
            "stopped at step {stop_at}: other records than uninterrupted"
        );
        assert_eq!(store.plan(&after).actions, vec![], "stopped at {stop_at}");
        if finished {
            return stop_at;
        }
        stop_at += 1;
    }
}

#[test]
fn flags_set_and_cleared() {
    let steps = three_ways(|s| {
        for f in 0..3 {
            for (i, uid) in s.uids(f).into_iter().enumerate() {
                let flags = match i % 4 {
                    0 => Flags::SEEN.union(Flags::FLAGGED),
                    1 => Flags::empty(),
                    2 => Flags::ANSWERED.union(Flags::DRAFT),
                    _ => continue,
                };
                s.set_flags(f, uid, flags);
            }
        }
    });
    assert!(steps > 10, "only {steps} crash points");
}

#[test]
fn expunges() {
    three_ways(|s| {
        for f in [0, 2] {
            for uid in s.uids(f).into_iter().step_by(2) {
                s.expunge(f, uid);
            }
        }
    });
}

#[test]
fn moves_both_ways_with_flag_changes() {
    three_ways(|s| {
        let inbox = s.uids(0);
        let archive = s.uids(1);
        s.move_to(0, inbox[0], 1);
        s.move_to(0, inbox[1], 2);
        s.move_to(1, archive[0], 0);
        let moved = *s.folders[2].1.keys().last().unwrap();
        s.set_flags(2, moved, Flags::SEEN.union(Flags::FLAGGED));
    });
}

#[test]
fn a_uidvalidity_change_re_pairs_in_place() {
    three_ways(|s| {
        s.renumber(1);
        let first = s.uids(1)[0];
        s.set_flags(1, first, Flags::FLAGGED);
    });
}

#[test]
fn everything_at_once() {
    three_ways(|s| {
        let inbox = s.uids(0);
        s.set_flags(0, inbox[2], Flags::DRAFT);
        s.expunge(0, inbox[3]);
        s.move_to(0, inbox[4], 2);
        let deleted = s.uids(2);
        s.expunge(2, deleted[0]);
        s.move_to(2, deleted[1], 1);
        s.renumber(1);
    });
}
