//! One table row per rule of two-way sync (README, "Two-way sync"), on the real
//! [`merge`] and through the real [`plan`] where the pull side takes part.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::config::MassDelete;

const INBOX: FolderId = FolderId(1);
const ARCHIVE: FolderId = FolderId(2);
const TRASH: FolderId = FolderId(3);
const V: u32 = 7;

fn fp(i: u32) -> Fingerprint {
    Fingerprint {
        message_id: Some(format!("<m{i}@example.org>")),
        size: 1000 + u64::from(i),
        internaldate: 1_700_000_000,
    }
}

fn record(folder: FolderId, uid: u32, flags: Flags) -> Record {
    Record {
        folder,
        uidvalidity: V,
        uid,
        base: format!("base{uid}"),
        flags,
        fingerprint: fp(uid),
    }
}

/// A local view holding `records`, with the files as `files` says: (folder, base,
/// flags).
fn view(records: &[Record], files: &[(FolderId, &str, Flags)], fresh: Vec<LocalNew>) -> LocalView {
    let mut v = LocalView {
        held: records.to_vec(),
        fresh,
        ..LocalView::default()
    };
    for f in [INBOX, ARCHIVE, TRASH] {
        v.files.insert(f, HashMap::new());
    }
    for (folder, base, flags) in files {
        v.files
            .get_mut(folder)
            .unwrap()
            .insert((*base).to_owned(), *flags);
    }
    v
}

fn live() -> HashMap<FolderId, u32> {
    [(INBOX, V), (ARCHIVE, V), (TRASH, V)].into_iter().collect()
}

fn policy() -> Policy {
    Policy {
        trash: Trash::To(TRASH),
        mass_delete: Some(MassDelete::default()),
        mass_upload: Some(MassDelete::default()),
    }
}

fn run(v: &LocalView, pull: Vec<Action>) -> (Vec<Action>, Vec<(FolderId, String)>) {
    merge(v, &policy(), &live(), &HashMap::new(), pull)
}

const S: Flags = Flags::SEEN;
const F: Flags = Flags::FLAGGED;
const NONE: Flags = Flags::empty();

#[test]
fn a_local_flag_change_is_pushed_and_recorded() {
    let r = record(INBOX, 1, NONE);
    let v = view(&[r], &[(INBOX, "base1", S.union(F))], vec![]);
    let (actions, refused) = run(&v, vec![]);
    assert!(refused.is_empty());
    assert_eq!(
        actions,
        vec![
            Action::PushFlags {
                folder: INBOX,
                uid: 1,
                add: S.union(F),
                remove: NONE
            },
            Action::SetFlags {
                folder: INBOX,
                uid: 1,
                flags: S.union(F)
            },
        ]
    );
}

#[test]
fn flags_changed_on_both_sides_combine() {
    // Read here, flagged there: both end read and flagged.
    let r = record(INBOX, 1, NONE);
    let v = view(&[r], &[(INBOX, "base1", S)], vec![]);
    let (actions, _) = run(
        &v,
        vec![Action::SetFlags {
            folder: INBOX,
            uid: 1,
            flags: F,
        }],
    );
    assert_eq!(
        actions,
        vec![
            Action::SetFlags {
                folder: INBOX,
                uid: 1,
                flags: S.union(F)
            },
            Action::PushFlags {
                folder: INBOX,
                uid: 1,
                add: S,
                remove: NONE
            },
        ]
    );
}

#[test]
fn a_local_deletion_goes_to_the_trash_or_is_expunged_in_it() {
    let a = record(INBOX, 1, NONE);
    let b = record(TRASH, 2, S);
    let v = view(&[a.clone(), b.clone()], &[], vec![]);
    let (actions, _) = run(&v, vec![]);
    assert_eq!(
        actions,
        vec![
            Action::PushDelete {
                record: a,
                trash: Some(TRASH)
            },
            Action::PushDelete {
                record: b,
                trash: None
            },
        ]
    );
}

#[test]
fn a_local_move_is_a_server_move() {
    let r = record(INBOX, 1, NONE);
    let v = view(std::slice::from_ref(&r), &[(ARCHIVE, "base1", S)], vec![]);
    let (actions, _) = run(&v, vec![]);
    assert_eq!(
        actions,
        vec![
            Action::PushFlags {
                folder: INBOX,
                uid: 1,
                add: S,
                remove: NONE
            },
            Action::PushMove {
                record: r,
                to: ARCHIVE,
                base: "base1".into(),
                flags: S
            },
        ]
    );
}

#[test]
fn a_move_by_copy_is_a_move_not_a_deletion_and_an_upload() {
    // mutt saves to another folder under a new name and deletes the original.
    let r = record(INBOX, 1, NONE);
    let copy = LocalNew {
        folder: ARCHIVE,
        base: "mutt.copy".into(),
        flags: NONE,
        fingerprint: fp(1),
    };
    let v = view(
        std::slice::from_ref(&r),
        &[(ARCHIVE, "mutt.copy", NONE)],
        vec![copy],
    );
    let (actions, _) = run(&v, vec![]);
    assert_eq!(
        actions,
        vec![Action::PushMove {
            record: r,
            to: ARCHIVE,
            base: "mutt.copy".into(),
            flags: NONE
        }]
    );
}

#[test]
fn a_new_local_file_is_uploaded() {
    let n = LocalNew {
        folder: INBOX,
        base: "draft".into(),
        flags: Flags::DRAFT,
        fingerprint: fp(9),
    };
    let v = view(&[], &[(INBOX, "draft", Flags::DRAFT)], vec![n.clone()]);
    assert_eq!(
        run(&v, vec![]).0,
        vec![Action::Upload {
            file: n,
            origin: None
        }]
    );
}

/// Conflict: deleted locally while its flags changed on the server. Kept: downloaded
/// again (the server's change is the later sign that someone acts on it).
#[test]
fn deleted_here_while_changed_there_is_kept() {
    let r = record(INBOX, 1, NONE);
    let v = view(&[r], &[], vec![]);
    let (actions, _) = run(
        &v,
        vec![Action::SetFlags {
            folder: INBOX,
            uid: 1,
            flags: F,
        }],
    );
    assert_eq!(
        actions,
        vec![Action::Fetch {
            folder: INBOX,
            uid: 1
        }]
    );
}

/// Conflict: flags changed locally while the server expunged it. The expunge wins (a
/// message gone from a mapped folder may be in one mailsync does not see; uploading
/// it again would make it twice).
#[test]
fn changed_here_while_expunged_there_goes() {
    let r = record(INBOX, 1, NONE);
    let v = view(std::slice::from_ref(&r), &[(INBOX, "base1", S)], vec![]);
    let (actions, _) = run(&v, vec![Action::Remove { record: r.clone() }]);
    assert_eq!(actions, vec![Action::Remove { record: r }]);
}

/// Conflict: moved locally while the server expunged it. Kept: uploaded where the
/// reader filed it (filing is a deliberate act of keeping).
#[test]
fn moved_here_while_expunged_there_is_uploaded_where_filed() {
    let r = record(INBOX, 1, NONE);
    let v = view(std::slice::from_ref(&r), &[(ARCHIVE, "base1", S)], vec![]);
    let (actions, _) = run(&v, vec![Action::Remove { record: r.clone() }]);
    assert_eq!(
        actions,
        vec![Action::Upload {
            file: LocalNew {
                folder: ARCHIVE,
                base: "base1".into(),
                flags: S,
                fingerprint: r.fingerprint.clone()
            },
            origin: Some(r)
        }]
    );
}

/// Conflict: moved to different folders on each side. The server's move wins (it is
/// where the message is; the file follows, nothing is sent).
#[test]
fn moved_both_ways_follows_the_server() {
    let r = record(INBOX, 1, NONE);
    let v = view(
        std::slice::from_ref(&r),
        &[(ARCHIVE, "base1", NONE)],
        vec![],
    );
    let relocate = Action::Relocate {
        record: r.clone(),
        folder: TRASH,
        uidvalidity: V,
        uid: 40,
        flags: NONE,
    };
    let (actions, _) = run(&v, vec![relocate.clone()]);
    assert_eq!(actions, vec![relocate]);
}

/// Conflict: deleted locally while the server moved it. Kept where it went.
#[test]
fn deleted_here_while_moved_there_is_kept_where_it_went() {
    let r = record(INBOX, 1, NONE);
    let v = view(std::slice::from_ref(&r), &[], vec![]);
    let relocate = Action::Relocate {
        record: r.clone(),
        folder: ARCHIVE,
        uidvalidity: V,
        uid: 40,
        flags: NONE,
    };
    let (actions, _) = run(&v, vec![relocate]);
    assert_eq!(
        actions,
        vec![
            Action::Remove { record: r },
            Action::Fetch {
                folder: ARCHIVE,
                uid: 40
            },
        ]
    );
}

/// Conflict: new on both sides with the same Message-ID and size, in the same folder:
/// one message, recorded as both; different bytes would be two messages.
#[test]
fn new_on_both_sides_is_one_message() {
    let n = LocalNew {
        folder: INBOX,
        base: "local.new".into(),
        flags: S,
        fingerprint: fp(5),
    };
    let v = view(&[], &[(INBOX, "local.new", S)], vec![n]);
    let described: HashMap<(FolderId, u32), (Flags, Fingerprint)> =
        [((INBOX, 50), (F, fp(5))), ((INBOX, 51), (NONE, fp(6)))]
            .into_iter()
            .collect();
    let (actions, _) = merge(
        &v,
        &policy(),
        &live(),
        &described,
        vec![
            Action::Fetch {
                folder: INBOX,
                uid: 50,
            },
            Action::Fetch {
                folder: INBOX,
                uid: 51,
            },
        ],
    );
    assert_eq!(
        actions,
        vec![
            Action::Adopt {
                folder: INBOX,
                uidvalidity: V,
                uid: 50,
                base: "local.new".into(),
                flags: S,
                fingerprint: fp(5)
            },
            Action::PushFlags {
                folder: INBOX,
                uid: 50,
                add: S,
                remove: NONE
            },
            Action::SetFlags {
                folder: INBOX,
                uid: 50,
                flags: S.union(F)
            },
            Action::Fetch {
                folder: INBOX,
                uid: 51
            },
        ]
    );
}

#[test]
fn an_emptied_folder_is_refused_not_deleted() {
    let records: Vec<Record> = (1..=11).map(|u| record(INBOX, u, NONE)).collect();
    let v = view(&records, &[], vec![]);
    let (actions, refused) = run(&v, vec![]);
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, INBOX);
    assert!(
        refused[0].1.contains("--allow-mass-delete"),
        "{}",
        refused[0].1
    );
    // Confirmed: the deletions go.
    let (actions, refused) = merge(
        &v,
        &Policy {
            trash: Trash::To(TRASH),
            mass_delete: None,
            mass_upload: None,
        },
        &live(),
        &HashMap::new(),
        vec![],
    );
    assert!(refused.is_empty());
    assert_eq!(actions.len(), 11);
}

#[test]
fn a_pass_taking_too_much_of_a_folder_is_refused() {
    // 60 of 100 deleted (more than 50 and 25%), the other 40 still here.
    let records: Vec<Record> = (1..=100).map(|u| record(INBOX, u, NONE)).collect();
    let bases: Vec<String> = (61..=100).map(|u| format!("base{u}")).collect();
    let files: Vec<(FolderId, &str, Flags)> =
        bases.iter().map(|b| (INBOX, b.as_str(), NONE)).collect();
    let v = view(&records, &files, vec![]);
    let (actions, refused) = run(&v, vec![]);
    assert!(actions.is_empty(), "{actions:?}");
    assert!(
        refused[0].1.contains("60 of the folder's 100"),
        "{}",
        refused[0].1
    );
    // 40 of 100 is within the count: allowed.
    let bases: Vec<String> = (41..=100).map(|u| format!("base{u}")).collect();
    let files: Vec<(FolderId, &str, Flags)> =
        bases.iter().map(|b| (INBOX, b.as_str(), NONE)).collect();
    let (actions, refused) = run(&view(&records, &files, vec![]), vec![]);
    assert!(refused.is_empty());
    assert_eq!(actions.len(), 40);
}

proptest! {
    /// The merge keeps each side's change, and applied to both sides is a fixed point:
    /// merging again with nothing changed since gives the same flags (no ping-pong).
    #[test]
    fn the_flag_merge_keeps_changes_and_settles(b in 0u8..32, l in 0u8..32, r in 0u8..32) {
        let (b, l, r) = (Flags::from_bits(b), Flags::from_bits(l), Flags::from_bits(r));
        let m = merge3(b, l, r);
        prop_assert_eq!(merge3(b, l, b), l, "only local changed");
        prop_assert_eq!(merge3(b, b, r), r, "only the server changed");
        prop_assert_eq!(merge3(m, m, m), m);
        for bit in [Flags::SEEN, Flags::ANSWERED, Flags::FLAGGED, Flags::DELETED, Flags::DRAFT] {
            let changed_here = b.contains(bit) != l.contains(bit);
            let changed_there = b.contains(bit) != r.contains(bit);
            if changed_here {
                prop_assert_eq!(m.contains(bit), l.contains(bit));
            } else if changed_there {
                prop_assert_eq!(m.contains(bit), r.contains(bit));
            } else {
                prop_assert_eq!(m.contains(bit), b.contains(bit));
            }
        }
    }
}

/// A deletion a kill cut short between `\Deleted` and EXPUNGE (no UIDPLUS, or the
/// trash itself) shows on the server as only that mark added: not someone's change,
/// so the deletion goes on instead of the message coming back.
#[test]
fn deleted_here_and_only_marked_deleted_there_goes() {
    let r = record(TRASH, 1, S);
    let v = view(std::slice::from_ref(&r), &[], vec![]);
    let (actions, _) = run(
        &v,
        vec![Action::SetFlags {
            folder: TRASH,
            uid: 1,
            flags: S.union(Flags::DELETED),
        }],
    );
    assert_eq!(
        actions,
        vec![Action::PushDelete {
            record: r,
            trash: None
        }]
    );
}

/// With a trash mapped but not synced in this pass (`sync --folder`, the daemon's
/// Inbox pass, a trash folder missing locally), a deletion waits: it never becomes an
/// expunge.
#[test]
fn a_deletion_waits_for_a_trash_it_cannot_use() {
    let r = record(INBOX, 1, NONE);
    let v = view(std::slice::from_ref(&r), &[], vec![]);
    let inbox_only: HashMap<FolderId, u32> = [(INBOX, V)].into_iter().collect();
    for trash in [Trash::To(TRASH), Trash::Wait] {
        let p = Policy { trash, ..policy() };
        let (actions, _) = merge(&v, &p, &inbox_only, &HashMap::new(), vec![]);
        assert_eq!(actions, vec![], "{trash:?}");
    }
    let p = Policy {
        trash: Trash::Expunge,
        ..policy()
    };
    let (actions, _) = merge(&v, &p, &inbox_only, &HashMap::new(), vec![]);
    assert_eq!(
        actions,
        vec![Action::PushDelete {
            record: r,
            trash: None
        }]
    );
}

/// Folders a mail reader kept changing while they were read: an absence may be a file
/// in flight between two folders, so nothing is deleted or uploaded; flags still go.
#[test]
fn an_unsettled_read_deletes_and_uploads_nothing() {
    let gone = record(INBOX, 1, NONE);
    let flagged = record(INBOX, 2, NONE);
    let n = LocalNew {
        folder: ARCHIVE,
        base: "in.flight".into(),
        flags: NONE,
        fingerprint: fp(9),
    };
    let mut v = view(
        &[gone, flagged],
        &[(INBOX, "base2", F), (ARCHIVE, "in.flight", NONE)],
        vec![n],
    );
    v.unsettled = true;
    let (actions, _) = run(&v, vec![]);
    assert_eq!(
        actions,
        vec![
            Action::PushFlags {
                folder: INBOX,
                uid: 2,
                add: F,
                remove: NONE
            },
            Action::SetFlags {
                folder: INBOX,
                uid: 2,
                flags: F
            },
        ]
    );
}

/// Many local files the server does not have (a Maildir another program wrote, whose
/// mail the server may have deleted since) are not uploaded unconfirmed.
#[test]
fn a_mass_upload_is_refused_until_confirmed() {
    let fresh: Vec<LocalNew> = (1..=60)
        .map(|i| LocalNew {
            folder: ARCHIVE,
            base: format!("foreign{i}"),
            flags: S,
            fingerprint: fp(100 + i),
        })
        .collect();
    let v = view(&[], &[], fresh);
    let (actions, refused) = run(&v, vec![]);
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].1.contains("--allow-mass-upload"),
        "{}",
        refused[0].1
    );
    let p = Policy {
        mass_upload: None,
        ..policy()
    };
    let (actions, refused) = merge(&v, &p, &live(), &HashMap::new(), vec![]);
    assert!(refused.is_empty());
    assert_eq!(actions.len(), 60);
}

/// Moved by copying (mutt) while the server changed the flags: a move with the flags
/// merged, not a download here and an upload there.
#[test]
fn a_move_by_copy_while_flagged_there_is_a_move() {
    let r = record(INBOX, 1, NONE);
    let copy = LocalNew {
        folder: ARCHIVE,
        base: "mutt.copy".into(),
        flags: S,
        fingerprint: fp(1),
    };
    let v = view(
        std::slice::from_ref(&r),
        &[(ARCHIVE, "mutt.copy", S)],
        vec![copy],
    );
    let (actions, _) = run(
        &v,
        vec![Action::SetFlags {
            folder: INBOX,
            uid: 1,
            flags: F,
        }],
    );
    assert_eq!(
        actions,
        vec![
            Action::PushFlags {
                folder: INBOX,
                uid: 1,
                add: S,
                remove: NONE
            },
            Action::PushMove {
                record: r,
                to: ARCHIVE,
                base: "mutt.copy".into(),
                flags: S.union(F)
            },
        ]
    );
}
