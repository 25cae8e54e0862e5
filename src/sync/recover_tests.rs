//! `recover` against a real Maildir and a real state database: each test leaves what a
//! run killed at one instant of a relocation or a delivery leaves, recovers, and checks
//! the files and the records a user (and the next pass) would see.

use std::path::Path;

use super::recover;
use crate::flags::Flags;
use crate::headers::Headers;
use crate::maildir::Maildir;
use crate::state::{Effect, Relocation, State};
use crate::sync::model::{Fingerprint, FolderId, Record};

const ACCOUNT: &str = "work";

/// An account with two mapped folders, Inbox and Archive, in a temp dir.
struct Store {
    dir: tempfile::TempDir,
    state: State,
    inbox: (FolderId, Maildir),
    archive: (FolderId, Maildir),
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(&dir.path().join("state")).unwrap();
        let mut folder = |local: &str, remote: &str| {
            let row = state.folder(ACCOUNT, local, remote).unwrap();
            let maildir = Maildir::open(&dir.path().join("Mail").join(local)).unwrap();
            (row.id, maildir)
        };
        let inbox = folder("Inbox", "INBOX");
        let archive = folder("Archive", "Archive");
        Store {
            dir,
            state,
            inbox,
            archive,
        }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("Mail")
    }

    /// Delivers a message to `folder` and commits its record, as a finished pass does.
    fn committed(&mut self, folder: (FolderId, &Maildir), uidvalidity: u32, uid: u32) -> Record {
        let (id, maildir) = folder;
        let base = maildir.new_base(uid);
        let body = format!("Message-ID: <{uid}@example.org>\r\n\r\nbody {uid}\r\n");
        maildir
            .deliver(&base, Flags::SEEN, body.as_bytes())
            .unwrap();
        let record = Record {
            folder: id,
            uidvalidity,
            uid,
            base,
            flags: Flags::SEEN,
            fingerprint: Fingerprint {
                message_id: Some(format!("{uid}@example.org")),
                size: body.len() as u64,
                internaldate: 1_700_000_000,
            },
        };
        self.state
            .commit_deliveries(id, &[(record.clone(), Headers::default())], &[])
            .unwrap();
        record
    }

    fn recover(&mut self) {
        let root = self.root();
        recover(&mut self.state, ACCOUNT, &root).unwrap();
    }

    /// (uidvalidity, uid, flags) of every record of `folder`.
    fn records(&self, folder: FolderId) -> Vec<(u32, u32, Flags)> {
        self.state
            .records(folder)
            .unwrap()
            .into_iter()
            .map(|r| (r.uidvalidity, r.uid, r.flags))
            .collect()
    }
}

/// The file names in `sub` (`cur`, `new` or `tmp`) of a Maildir, sorted.
fn files(maildir: &Maildir, sub: &str) -> Vec<String> {
    let dir: &Path = &maildir.root().join(sub);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn flags(list: &[Flags]) -> Flags {
    list.iter().fold(Flags::empty(), |a, f| a.union(*f))
}

/// Journals moving `record` to (`to`, 9, `uid`) with `new_flags`.
fn journal_move(state: &mut State, record: &Record, to: FolderId, uid: u32, new_flags: Flags) {
    state
        .journal_relocations(&[Relocation {
            record,
            folder: to,
            uidvalidity: 9,
            uid,
            flags: new_flags,
        }])
        .unwrap();
    let journal = state.journal(ACCOUNT).unwrap();
    assert_eq!(journal.len(), 1, "the move is journalled");
    assert_eq!(
        journal[0].effect,
        Effect::Rename {
            source: record.folder,
            flags: new_flags
        }
    );
}

/// The state and files a journalled move must end in, wherever the kill left its file.
fn assert_moved(s: &Store, record: &Record, new_flags: Flags) {
    let (inbox, archive) = (&s.inbox.1, &s.archive.1);
    assert_eq!(files(inbox, "cur"), Vec::<String>::new(), "left behind");
    assert_eq!(
        files(archive, "cur"),
        vec![format!("{}:2,FS", record.base)],
        "the file is in Archive with the record's flags"
    );
    assert!(files(archive, "new").is_empty() && files(archive, "tmp").is_empty());
    assert_eq!(s.records(s.inbox.0), vec![]);
    assert_rebound(s, new_flags);
}

/// The record is Archive's UID 42 of UIDVALIDITY 9, and nothing is journalled.
fn assert_rebound(s: &Store, new_flags: Flags) {
    assert_eq!(s.records(s.archive.0), vec![(9, 42, new_flags)]);
    assert_eq!(s.state.journal(ACCOUNT).unwrap(), vec![], "journal cleared");
}

/// A store whose Inbox message (UID 5, seen) is journalled to move to Archive's UID 42
/// as seen and flagged, with the file still in the Inbox.
fn inbox_message_journalled_to_archive() -> (Store, Record, Flags) {
    let mut s = Store::new();
    let inbox = s.inbox.1.clone();
    let record = s.committed((s.inbox.0, &inbox), 7, 5);
    let new_flags = flags(&[Flags::SEEN, Flags::FLAGGED]);
    journal_move(&mut s.state, &record, s.archive.0, 42, new_flags);
    (s, record, new_flags)
}

#[test]
fn a_journalled_move_whose_rename_happened_is_cleared() {
    let (mut s, record, new_flags) = inbox_message_journalled_to_archive();
    let inbox = s.inbox.1.clone();
    // Killed after the rename, before the journal was cleared.
    let path = inbox.locate(&record.base, Flags::SEEN).unwrap().unwrap();
    inbox
        .move_to(&path, &s.archive.1, &record.base, new_flags)
        .unwrap();

    s.recover();
    assert_moved(&s, &record, new_flags);
}

#[test]
fn a_journalled_move_whose_rename_did_not_happen_is_completed() {
    // Killed right after the journal's commit: the file is still in the Inbox, under
    // the flags of the record before it was rebound.
    let (mut s, record, new_flags) = inbox_message_journalled_to_archive();
    let inbox = &s.inbox.1;
    assert_eq!(files(inbox, "cur"), vec![format!("{}:2,S", record.base)]);

    s.recover();
    assert_moved(&s, &record, new_flags);
}

#[test]
fn a_journalled_re_pair_in_place_gets_the_records_flags() {
    let mut s = Store::new();
    let archive = s.archive.1.clone();
    // A record set apart under UIDVALIDITY 0 (the mapping moved), re-paired in place
    // with new flags; a mail reader had marked the file passed (P), which is kept.
    let record = s.committed((s.archive.0, &archive), 0, 3);
    let path = archive.locate(&record.base, Flags::SEEN).unwrap().unwrap();
    std::fs::rename(&path, archive.cur().join(format!("{}:2,PS", record.base))).unwrap();
    let new_flags = flags(&[Flags::SEEN, Flags::ANSWERED]);
    journal_move(&mut s.state, &record, s.archive.0, 42, new_flags);

    s.recover();
    assert_eq!(
        files(&archive, "cur"),
        vec![format!("{}:2,PRS", record.base)]
    );
    assert_rebound(&s, new_flags);
}

#[test]
fn a_journalled_delivery_without_its_record_is_undone() {
    let mut s = Store::new();
    let inbox = s.inbox.1.clone();
    let kept = s.committed((s.inbox.0, &inbox), 7, 1);
    // Two deliveries journalled, never committed: one got into cur/, one was still
    // being written in tmp/.
    let in_cur = inbox.new_base(2);
    let in_tmp = inbox.new_base(3);
    s.state
        .journal_deliveries(s.inbox.0, &[in_cur.clone(), in_tmp.clone()])
        .unwrap();
    inbox
        .deliver(&in_cur, Flags::empty(), b"body 2\r\n")
        .unwrap();
    std::fs::write(inbox.tmp().join(&in_tmp), b"body 3, half wr").unwrap();

    s.recover();
    assert_eq!(
        files(&inbox, "cur"),
        vec![format!("{}:2,S", kept.base)],
        "only the committed message is left"
    );
    assert_eq!(files(&inbox, "tmp"), Vec::<String>::new());
    assert_eq!(s.records(s.inbox.0), vec![(7, 1, Flags::SEEN)]);
    assert_eq!(s.state.journal(ACCOUNT).unwrap(), vec![]);
}

#[test]
fn a_journalled_flag_change_whose_rename_did_not_happen_is_applied() {
    let mut s = Store::new();
    let inbox = s.inbox.1.clone();
    let record = s.committed((s.inbox.0, &inbox), 7, 5);
    let new_flags = flags(&[Flags::SEEN, Flags::FLAGGED]);
    // Killed after the journal's commit, before the rename.
    s.state
        .journal_flags(&[(record.clone(), new_flags)])
        .unwrap();
    assert_eq!(s.state.journal(ACCOUNT).unwrap().len(), 1);

    s.recover();
    assert_eq!(files(&inbox, "cur"), vec![format!("{}:2,FS", record.base)]);
    assert_eq!(s.records(s.inbox.0), vec![(7, 5, new_flags)]);
    assert_eq!(s.state.journal(ACCOUNT).unwrap(), vec![], "journal cleared");
}

#[test]
fn a_journalled_removal_whose_file_remains_is_finished() {
    let mut s = Store::new();
    let inbox = s.inbox.1.clone();
    let kept = s.committed((s.inbox.0, &inbox), 7, 1);
    let gone = s.committed((s.inbox.0, &inbox), 7, 2);
    // Killed after the records' deletion was journalled, before the file went: the
    // file would otherwise stay with no record, unseen by every later pass.
    s.state
        .journal_removals(std::slice::from_ref(&gone))
        .unwrap();
    assert_eq!(files(&inbox, "cur").len(), 2);

    s.recover();
    assert_eq!(files(&inbox, "cur"), vec![format!("{}:2,S", kept.base)]);
    assert_eq!(s.records(s.inbox.0), vec![(7, 1, Flags::SEEN)]);
    assert_eq!(s.state.journal(ACCOUNT).unwrap(), vec![], "journal cleared");
}
