//! Two-way planning (pure): what the mapped local folders changed since the records,
//! merged with what the pull plan decided from the server. Called by [`plan`] when a
//! two-way account's local side changed; without local changes, two-way is pull.
//!
//! The rules (README, "Two-way sync"), each a case below:
//! - flags: a three-way merge per flag against the record's last-synced flags
//!   ([`merge3`]): a flag changed on one side takes that side's value;
//! - deleted locally while its flags changed on the server: kept, downloaded again;
//! - flags changed locally while expunged on the server: the expunge wins;
//! - moved locally while expunged on the server: kept, uploaded to where it was
//!   filed;
//! - moved on both sides to different folders: the server's move wins;
//! - deleted locally while moved on the server: kept, downloaded where it went;
//! - new on both sides, same Message-ID and size, same folder: one message;
//! - a folder emptied (or a pass taking too much of it): refused, nothing sent.
//!
//! [`plan`]: super::plan::plan

use std::collections::{HashMap, HashSet};

use super::model::{Action, EMPTIED, FolderId, LocalNew, LocalView, Policy, Record, Trash};
use crate::flags::Flags;
use crate::sync::model::Fingerprint;

/// The flags both sides agree on after a change on either: a flag changed locally
/// since `base` takes the local value, any other the server's. A flag changed on both
/// sides changed to the same value (flags are on or off), so nothing is lost and the
/// result, written to both sides, is a fixed point: nothing ping-pongs.
pub fn merge3(base: Flags, local: Flags, remote: Flags) -> Flags {
    let changed = base.bits() ^ local.bits();
    Flags::from_bits((remote.bits() & !changed) | (local.bits() & changed))
}

/// Where records' files are now, from a [`LocalView`].
pub(super) struct Whereabouts<'a> {
    view: &'a LocalView,
    by_base: HashMap<&'a str, (FolderId, Flags)>,
}

impl<'a> Whereabouts<'a> {
    pub fn new(view: &'a LocalView) -> Self {
        let mut by_base = HashMap::new();
        for (folder, files) in &view.files {
            for (base, flags) in files {
                by_base.insert(base.as_str(), (*folder, *flags));
            }
        }
        Whereabouts { view, by_base }
    }

    /// Where `r`'s file is: in its folder or another mapped one (`Some(Some)`), gone
    /// from every mapped folder (`Some(None)`), or unknown (its folder was not read).
    pub fn of(&self, r: &Record) -> Option<Option<(FolderId, Flags)>> {
        let files = self.view.files.get(&r.folder)?;
        if let Some(flags) = files.get(&r.base) {
            return Some(Some((r.folder, *flags)));
        }
        Some(self.by_base.get(r.base.as_str()).copied())
    }

    /// Whether `r`'s file is known to be gone from every mapped folder.
    pub fn gone(&self, r: &Record) -> bool {
        self.of(r) == Some(None)
    }
}

fn push(folder: FolderId, uid: u32, from: Flags, to: Flags) -> Option<Action> {
    (from != to).then(|| Action::PushFlags {
        folder,
        uid,
        add: Flags::from_bits(to.bits() & !from.bits()),
        remove: Flags::from_bits(from.bits() & !to.bits()),
    })
}

/// Merges the local changes in `local` into the pull plan `pull`. `live` holds the
/// folders planned this pass with their listed UIDVALIDITY; `described`, what the
/// server said of new messages (flags, fingerprint) where asked. Returns the actions
/// and the folders refused, with why.
pub(super) fn merge(
    local: &LocalView,
    policy: &Policy,
    live: &HashMap<FolderId, u32>,
    described: &HashMap<(FolderId, u32), (Flags, Fingerprint)>,
    pull: Vec<Action>,
) -> (Vec<Action>, Vec<(FolderId, String)>) {
    let at = Whereabouts::new(local);
    let held: HashMap<(FolderId, u32, u32), &Record> = local
        .held
        .iter()
        .map(|r| ((r.folder, r.uidvalidity, r.uid), r))
        .collect();
    let mut fresh: Vec<Option<LocalNew>> = local
        .fresh
        .iter()
        .filter(|n| live.contains_key(&n.folder))
        .cloned()
        .map(Some)
        .collect();
    let mut take_fresh = |pred: &dyn Fn(&LocalNew) -> bool| -> Option<LocalNew> {
        fresh
            .iter_mut()
            .find(|n| n.as_ref().is_some_and(pred))
            .and_then(Option::take)
    };
    let mut touched: HashSet<(FolderId, u32, u32)> = HashSet::new();
    let mut out: Vec<Action> = Vec::with_capacity(pull.len());
    let mut deleted: Vec<&Record> = Vec::new();

    for action in pull {
        match action {
            Action::Fetch { folder, uid } => {
                // New on both sides: the same message if the same folder got a file
                // with its Message-ID and size (or, without an ID, size and date).
                let same = described.get(&(folder, uid)).and_then(|(rflags, fp)| {
                    let n = take_fresh(&|n: &LocalNew| {
                        n.folder == folder && n.fingerprint.pairing_key() == fp.pairing_key()
                    })?;
                    Some((n, *rflags, fp.clone()))
                });
                match same {
                    Some((n, rflags, fingerprint)) => {
                        let flags = n.flags.union(rflags);
                        out.push(Action::Adopt {
                            folder,
                            uidvalidity: live[&folder],
                            uid,
                            base: n.base.clone(),
                            flags: n.flags,
                            fingerprint,
                        });
                        out.extend(push(folder, uid, rflags, flags));
                        if flags != n.flags {
                            out.push(Action::SetFlags { folder, uid, flags });
                        }
                    }
                    None => out.push(Action::Fetch { folder, uid }),
                }
            }
            Action::SetFlags { folder, uid, flags } => {
                let key = (folder, live.get(&folder).copied().unwrap_or(0), uid);
                touched.insert(key);
                let Some(r) = held.get(&key) else {
                    out.push(Action::SetFlags { folder, uid, flags });
                    continue;
                };
                match at.of(r) {
                    None => out.push(Action::SetFlags { folder, uid, flags }),
                    Some(Some((f, lf))) if f == folder => {
                        let merged = merge3(r.flags, lf, flags);
                        out.push(Action::SetFlags {
                            folder,
                            uid,
                            flags: merged,
                        });
                        out.extend(push(folder, uid, flags, merged));
                    }
                    Some(Some((f, lf))) if live.contains_key(&f) => {
                        let merged = merge3(r.flags, lf, flags);
                        out.extend(push(folder, uid, flags, merged));
                        out.push(Action::PushMove {
                            record: (*r).clone(),
                            to: f,
                            base: r.base.clone(),
                            flags: merged,
                        });
                    }
                    Some(Some(_)) => {}
                    // Deleted here, and there only marked \Deleted: this pass's own
                    // mark from a killed deletion (no one else's change); deleted.
                    Some(None) if flags == r.flags.union(Flags::DELETED) => deleted.push(r),
                    Some(None) => {
                        // Moved by copying (mutt: a new name elsewhere, the original
                        // deleted) while the server changed its flags: a move, with
                        // the flags merged.
                        let copy = take_fresh(&|n: &LocalNew| {
                            n.folder != folder
                                && n.fingerprint.pairing_key() == r.fingerprint.pairing_key()
                        });
                        match copy {
                            Some(n) => {
                                let merged = merge3(r.flags, n.flags, flags);
                                out.extend(push(folder, uid, flags, merged));
                                out.push(Action::PushMove {
                                    record: (*r).clone(),
                                    to: n.folder,
                                    base: n.base,
                                    flags: merged,
                                });
                            }
                            // Deleted here, changed there: kept, downloaded again (the
                            // new file's record replaces this one).
                            None => out.push(Action::Fetch { folder, uid }),
                        }
                    }
                }
            }
            Action::Relocate {
                record,
                folder,
                uidvalidity,
                uid,
                flags,
            } => {
                touched.insert((record.folder, record.uidvalidity, record.uid));
                match at.of(&record) {
                    // Moved on the server (to where the server put it, even if the
                    // reader filed it elsewhere: the server's move wins).
                    Some(Some((_, lf))) => {
                        let merged = merge3(record.flags, lf, flags);
                        out.extend(push(folder, uid, flags, merged));
                        out.push(Action::Relocate {
                            record,
                            folder,
                            uidvalidity,
                            uid,
                            flags: merged,
                        });
                    }
                    // Deleted here, moved there: kept where it went.
                    Some(None) => {
                        out.push(Action::Remove { record });
                        out.push(Action::Fetch { folder, uid });
                    }
                    None => out.push(Action::Relocate {
                        record,
                        folder,
                        uidvalidity,
                        uid,
                        flags,
                    }),
                }
            }
            Action::Remove { record } => {
                touched.insert((record.folder, record.uidvalidity, record.uid));
                match at.of(&record) {
                    // Filed elsewhere here, expunged there: kept, uploaded where the
                    // reader filed it.
                    Some(Some((f, lf))) if f != record.folder && live.contains_key(&f) => {
                        let file = LocalNew {
                            folder: f,
                            base: record.base.clone(),
                            flags: lf,
                            fingerprint: record.fingerprint.clone(),
                        };
                        out.push(Action::Upload {
                            file,
                            origin: Some(record),
                        });
                    }
                    _ => out.push(Action::Remove { record }),
                }
            }
            other => out.push(other),
        }
    }

    // What changed only locally.
    for r in &local.held {
        let key = (r.folder, r.uidvalidity, r.uid);
        if live.get(&r.folder) != Some(&r.uidvalidity) || touched.contains(&key) {
            continue;
        }
        match at.of(r) {
            None => {}
            Some(Some((f, lf))) if f == r.folder && lf != r.flags => {
                out.extend(push(f, r.uid, r.flags, lf));
                out.push(Action::SetFlags {
                    folder: f,
                    uid: r.uid,
                    flags: lf,
                });
            }
            Some(Some((f, _))) if f == r.folder => {}
            Some(Some((f, lf))) if live.contains_key(&f) => {
                out.extend(push(r.folder, r.uid, r.flags, lf));
                out.push(Action::PushMove {
                    record: r.clone(),
                    to: f,
                    base: r.base.clone(),
                    flags: lf,
                });
            }
            Some(Some(_)) => {}
            Some(None) => {
                // A reader that moves by copying (mutt) leaves a new file elsewhere
                // with the same Message-ID and size: a move, not a deletion.
                let copy = take_fresh(&|n: &LocalNew| {
                    n.folder != r.folder
                        && n.fingerprint.pairing_key() == r.fingerprint.pairing_key()
                });
                match copy {
                    Some(n) => {
                        out.extend(push(r.folder, r.uid, r.flags, n.flags));
                        out.push(Action::PushMove {
                            record: r.clone(),
                            to: n.folder,
                            base: n.base,
                            flags: n.flags,
                        });
                    }
                    None => deleted.push(r),
                }
            }
        }
    }
    if local.unsettled {
        deleted.clear();
        fresh.clear();
    }
    for r in deleted {
        let trash = match policy.trash {
            Trash::Expunge => None,
            Trash::To(t) if t == r.folder => None,
            Trash::To(t) if live.contains_key(&t) => Some(t),
            // The trash is mapped but not planned this pass: the deletion waits for
            // it rather than become an expunge.
            Trash::To(_) | Trash::Wait => continue,
        };
        out.push(Action::PushDelete {
            record: r.clone(),
            trash,
        });
    }
    out.extend(
        fresh
            .into_iter()
            .flatten()
            .map(|file| Action::Upload { file, origin: None }),
    );

    let refused = refusals(local, policy, live, &at, &out);
    if !refused.is_empty() {
        let no: HashSet<FolderId> = refused.iter().map(|(f, _)| *f).collect();
        out.retain(|a| !touches(a, &no));
    }
    (out, refused)
}

/// Folders whose local side the pass must not act on: emptied, or losing too much of
/// the server folder at once.
fn refusals(
    local: &LocalView,
    policy: &Policy,
    live: &HashMap<FolderId, u32>,
    at: &Whereabouts<'_>,
    actions: &[Action],
) -> Vec<(FolderId, String)> {
    let mut held: HashMap<FolderId, u64> = HashMap::new();
    let mut gone: HashMap<FolderId, u64> = HashMap::new();
    for r in &local.held {
        if live.get(&r.folder) == Some(&r.uidvalidity) {
            *held.entry(r.folder).or_default() += 1;
            if at.gone(r) {
                *gone.entry(r.folder).or_default() += 1;
            }
        }
    }
    let mut taken: HashMap<FolderId, u64> = HashMap::new();
    let mut uploads: HashMap<FolderId, u64> = HashMap::new();
    for a in actions {
        match a {
            Action::PushDelete { record, .. } | Action::PushMove { record, .. } => {
                *taken.entry(record.folder).or_default() += 1;
            }
            Action::Upload { file, .. } => *uploads.entry(file.folder).or_default() += 1,
            _ => {}
        }
    }
    let mut refused = Vec::new();
    let mut folders: Vec<FolderId> = held.keys().chain(uploads.keys()).copied().collect();
    folders.sort();
    folders.dedup();
    for folder in folders {
        let n = held.get(&folder).copied().unwrap_or(0);
        let files = local.files.get(&folder).map_or(0, HashMap::len);
        let deleted = gone.get(&folder).copied().unwrap_or(0);
        let out = taken.get(&folder).copied().unwrap_or(0);
        let up = uploads.get(&folder).copied().unwrap_or(0);
        if let Some(limit) = policy.mass_upload
            && limit.exceeded(up, n)
        {
            refused.push((
                folder,
                format!(
                    "this pass would upload {up} local messages the server does not have to a folder of {n}, more than max_delete_count = {} and max_delete_percent = {}%; nothing was sent. If they are new messages (not a Maildir another program wrote, whose mail the server may have deleted since), run `mailsync sync --allow-mass-upload` once",
                    limit.count, limit.percent
                ),
            ));
            continue;
        }
        let Some(limit) = policy.mass_delete else {
            continue;
        };
        if files == 0 && n as usize > EMPTIED && deleted == n {
            refused.push((
                folder,
                format!(
                    "the local folder is empty but {n} messages were synced to it; nothing was deleted on the server. If the disk or path is wrong, fix it; if you emptied it on purpose, run `mailsync sync --allow-mass-delete` once"
                ),
            ));
        } else if limit.exceeded(out, n) {
            refused.push((
                folder,
                format!(
                    "this pass would delete or move away {out} of the folder's {n} messages on the server, more than max_delete_count = {} and max_delete_percent = {}%; nothing was sent. If that is what you want, run `mailsync sync --allow-mass-delete` once",
                    limit.count, limit.percent
                ),
            ));
        }
    }
    refused
}

/// Whether `a` acts on any of `folders`.
fn touches(a: &Action, folders: &HashSet<FolderId>) -> bool {
    match a {
        Action::Fetch { folder, .. }
        | Action::SetFlags { folder, .. }
        | Action::PushFlags { folder, .. }
        | Action::Adopt { folder, .. } => folders.contains(folder),
        Action::Relocate { record, folder, .. } => {
            folders.contains(folder) || folders.contains(&record.folder)
        }
        Action::Remove { record } => folders.contains(&record.folder),
        Action::PushDelete { record, trash } => {
            folders.contains(&record.folder) || trash.is_some_and(|t| folders.contains(&t))
        }
        Action::PushMove { record, to, .. } => {
            folders.contains(&record.folder) || folders.contains(to)
        }
        Action::Upload { file, origin } => {
            folders.contains(&file.folder)
                || origin.as_ref().is_some_and(|r| folders.contains(&r.folder))
        }
    }
}

#[cfg(test)]
#[path = "two_way_tests.rs"]
mod tests;
