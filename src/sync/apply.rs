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
/// folders not in `folders` (failed ones) are skipped.
pub(super) fn apply_local(
    state: &mut State,
    folders: &HashMap<FolderId, LocalFolder>,
    actions: &[Action],
) -> Result<HashMap<FolderId, LocalCounts>, SyncError> {
    let mut counts: HashMap<FolderId, LocalCounts> = HashMap::new();
    // Relocations: journal them all (rebind + moved_from), rename, clear the journal.
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
        state.journal_relocations(&relocations)?;
        let mut done_moves = Vec::with_capacity(relocations.len());
        for m in &relocations {
            let r = m.record;
            let from = &folders[&r.folder].maildir;
            let to = &folders[&m.folder].maildir;
            if let Some(path) = from
                .locate(&r.base, r.flags)
                .map_err(maildir_err(from.root()))?
            {
                from.move_to(&path, to, &r.base, m.flags)
                    .map_err(maildir_err(path.clone()))?;
            }
            done_moves.push((m.folder, m.uidvalidity, m.uid));
            if r.folder != m.folder {
                counts.entry(m.folder).or_default().moved_in += 1;
            }
        }
        for f in folders.values() {
            f.maildir
                .sync_dirs()
                .map_err(maildir_err(f.maildir.root()))?;
        }
        state.finish_moves(&done_moves)?;
    }

    // Flags: journal (the records take the new flags, marked in flight), rename,
    // make the renames durable, clear the marks. `recover` renames what a kill left.
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
        let rows: Vec<(FolderId, u32, u32, Flags)> = retags
            .iter()
            .map(|(r, flags)| (r.folder, r.uidvalidity, r.uid, *flags))
            .collect();
        state.journal_flags(&rows)?;
        for (record, flags) in &retags {
            let maildir = &folders[&record.folder].maildir;
            maildir
                .retag(&record.base, record.flags, *flags)
                .map_err(maildir_err(maildir.root()))?;
            counts.entry(record.folder).or_default().flag_updates += 1;
        }
        for folder in wanted.keys() {
            let maildir = &folders[folder].maildir;
            maildir.sync_dirs().map_err(maildir_err(maildir.root()))?;
        }
        let done: Vec<(FolderId, u32, u32)> = rows.iter().map(|&(f, v, u, _)| (f, v, u)).collect();
        state.finish_moves(&done)?;
    }

    // Removals: delete the file, then the record.
    let mut removed: Vec<Record> = Vec::new();
    for a in actions {
        let Action::Remove { record } = a else {
            continue;
        };
        let Some(f) = folders.get(&record.folder) else {
            continue;
        };
        if let Some(path) = f
            .maildir
            .locate(&record.base, record.flags)
            .map_err(maildir_err(f.maildir.root()))?
        {
            f.maildir.remove(&path).map_err(maildir_err(path.clone()))?;
        }
        counts.entry(record.folder).or_default().removed += 1;
        removed.push(record.clone());
    }
    if !removed.is_empty() {
        for f in folders.values() {
            f.maildir
                .sync_dirs()
                .map_err(maildir_err(f.maildir.root()))?;
        }
        state.remove(&removed)?;
    }
    Ok(counts)
}
