//! Applies a plan's local actions (relocations, flag changes, removals) to the
//! Maildir and the records, journalling each before its file operation.

use std::collections::{BTreeMap, HashMap};

use crate::maildir::Maildir;
use crate::state::{Relocation, State};

use super::error::{SyncError, maildir_err};
use super::model::{Action, FolderId, Record};
use crate::flags::Flags;

/// What [`apply_local`] needs of a folder.
pub(super) struct LocalFolder {
    pub maildir: Maildir,
    /// The UIDVALIDITY listed in this pass.
    pub uidvalidity: u32,
}

/// What [`apply_local`] did in a folder, for its report.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct LocalCounts {
    pub moved_in: u64,
    pub flag_updates: u64,
    pub removed: u64,
}

/// Applies relocations, flag changes and removals: no network needed. Actions for
/// folders not in `folders` (failed ones) are skipped. Each kind is journalled in one
/// transaction with its records' change, then the files are renamed or deleted, made
/// durable, and the entries resolved; a kill anywhere leaves entries [`recover`]
/// finishes. `step` is asked before each journal write and each file operation: false
/// stops there as a kill would (the tests' crash points; a pass passes [`always`]).
///
/// [`recover`]: super::recover::recover
pub(super) fn apply_local(
    state: &mut State,
    folders: &HashMap<FolderId, LocalFolder>,
    actions: &[Action],
    step: &mut dyn FnMut() -> bool,
) -> Result<HashMap<FolderId, LocalCounts>, SyncError> {
    let mut step = || {
        if step() {
            Ok(())
        } else {
            Err(SyncError::Interrupted)
        }
    };
    let mut counts: HashMap<FolderId, LocalCounts> = HashMap::new();
    let sync_all = |folders: &HashMap<FolderId, LocalFolder>| -> Result<(), SyncError> {
        for f in folders.values() {
            f.maildir
                .sync_dirs()
                .map_err(maildir_err(f.maildir.root()))?;
        }
        Ok(())
    };

    // Relocations: the records rebound, then the files follow.
    let relocations: Vec<Relocation<'_>> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Relocate {
                record,
                folder,
                uidvalidity,
                uid,
                flags,
            } if folders.contains_key(&record.folder) && folders.contains_key(folder) => {
                Some(Relocation {
                    record,
                    folder: *folder,
                    uidvalidity: *uidvalidity,
                    uid: *uid,
                    flags: *flags,
                })
            }
            _ => None,
        })
        .collect();
    if !relocations.is_empty() {
        step()?;
        let ids = state.journal_relocations(&relocations)?;
        for m in &relocations {
            let r = m.record;
            let from = &folders[&r.folder].maildir;
            let to = &folders[&m.folder].maildir;
            step()?;
            // The file is where the record says, or (two-way) wherever the reader
            // filed it: the server's move wins.
            let mut found = from
                .locate(&r.base, r.flags)
                .map_err(maildir_err(from.root()))?;
            for other in folders.values().filter(|o| o.maildir != *from) {
                if found.is_some() {
                    break;
                }
                found = other
                    .maildir
                    .locate(&r.base, r.flags)
                    .map_err(maildir_err(other.maildir.root()))?;
            }
            if let Some(path) = found {
                from.move_to(&path, to, &r.base, m.flags)
                    .map_err(maildir_err(path.clone()))?;
            }
            if r.folder != m.folder {
                counts.entry(m.folder).or_default().moved_in += 1;
            }
        }
        sync_all(folders)?;
        step()?;
        state.resolve(&ids)?;
    }

    // Flags: the records take the new flags, then the files are renamed.
    let mut wanted: BTreeMap<FolderId, Vec<(u32, u32)>> = BTreeMap::new();
    let mut new_flags: HashMap<(FolderId, u32), Flags> = HashMap::new();
    for a in actions {
        if let Action::SetFlags { folder, uid, flags } = a
            && let Some(f) = folders.get(folder)
        {
            wanted
                .entry(*folder)
                .or_default()
                .push((f.uidvalidity, *uid));
            new_flags.insert((*folder, *uid), *flags);
        }
    }
    let mut retags = Vec::new();
    for (folder, keys) in &wanted {
        for record in state.records_for(*folder, keys)? {
            let flags = new_flags[&(*folder, record.uid)];
            retags.push((record, flags));
        }
    }
    if !retags.is_empty() {
        step()?;
        let ids = state.journal_flags(&retags)?;
        for (record, flags) in &retags {
            let maildir = &folders[&record.folder].maildir;
            step()?;
            maildir
                .retag(&record.base, record.flags, *flags)
                .map_err(maildir_err(maildir.root()))?;
            counts.entry(record.folder).or_default().flag_updates += 1;
        }
        for folder in wanted.keys() {
            let maildir = &folders[folder].maildir;
            maildir.sync_dirs().map_err(maildir_err(maildir.root()))?;
        }
        step()?;
        state.resolve(&ids)?;
    }

    // Removals: the records deleted, then the files.
    let removed: Vec<Record> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove { record } if folders.contains_key(&record.folder) => {
                Some(record.clone())
            }
            _ => None,
        })
        .collect();
    if !removed.is_empty() {
        step()?;
        let ids = state.journal_removals(&removed)?;
        // Finding a file that is not where its record says scans its folder: with many
        // removals (two-way: files a reader deleted), each folder is listed once.
        let mut per_folder: HashMap<FolderId, usize> = HashMap::new();
        for r in &removed {
            *per_folder.entry(r.folder).or_default() += 1;
        }
        let mut indexes: HashMap<FolderId, HashMap<String, std::path::PathBuf>> = HashMap::new();
        for (folder, n) in per_folder {
            if n > INDEX_FROM {
                let maildir = &folders[&folder].maildir;
                indexes.insert(
                    folder,
                    maildir.index().map_err(maildir_err(maildir.root()))?,
                );
            }
        }
        for record in &removed {
            let f = &folders[&record.folder];
            step()?;
            let path = match indexes.get(&record.folder) {
                Some(index) => index.get(&record.base).cloned(),
                None => f
                    .maildir
                    .locate(&record.base, record.flags)
                    .map_err(maildir_err(f.maildir.root()))?,
            };
            if let Some(path) = path {
                f.maildir.remove(&path).map_err(maildir_err(path.clone()))?;
            }
            counts.entry(record.folder).or_default().removed += 1;
        }
        sync_all(folders)?;
        step()?;
        state.resolve(&ids)?;
    }
    Ok(counts)
}

/// Removals in one folder from which its files are listed once rather than each
/// looked for.
const INDEX_FROM: usize = 8;

/// A [`apply_local`] step that always goes on.
pub(super) fn always() -> bool {
    true
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
