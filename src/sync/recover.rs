//! Recovery: what a killed run journalled is finished or undone before anything is
//! planned, so every record agrees with its file.

use std::collections::HashMap;

use crate::maildir::Maildir;
use crate::state::{FolderRow, State};

use super::error::{SyncError, maildir_err};
use super::model::FolderId;
use crate::flags::Flags;

/// Finishes what a killed run journalled: deliveries whose rows were never committed
/// are undone (the file, if it got into place, is removed and the message will be
/// fetched again), and moves and flag changes whose file had not been renamed yet are
/// completed (a flag change is journalled as a move within its folder).
pub(super) fn recover(
    state: &mut State,
    account: &str,
    root: &std::path::Path,
) -> Result<(), SyncError> {
    let folders: HashMap<FolderId, FolderRow> = state
        .folders(account)?
        .into_iter()
        .map(|f| (f.id, f))
        .collect();
    let maildir_of = |id: FolderId| -> Option<Maildir> {
        folders
            .get(&id)
            .and_then(|f| Maildir::open(&root.join(&f.local)).ok())
    };
    for p in state.pending_deliveries()? {
        if !folders.contains_key(&p.folder) {
            continue;
        }
        if let Some(m) = maildir_of(p.folder) {
            let found = m
                .locate(&p.base, Flags::empty())
                .map_err(maildir_err(m.root()))?;
            if let Some(path) = found {
                tracing::info!(file = %path.display(), "removing a delivery a previous run did not commit");
                m.remove(&path).map_err(maildir_err(path.clone()))?;
                m.sync_dirs().map_err(maildir_err(m.root()))?;
            }
            let tmp = m.tmp().join(&p.base);
            let _ = std::fs::remove_file(tmp);
        }
        state.drop_pending(&p)?;
    }
    let mut finished = Vec::new();
    for pm in state.pending_moves()? {
        let r = &pm.record;
        if !folders.contains_key(&r.folder) {
            continue;
        }
        let (Some(to), Some(from)) = (maildir_of(r.folder), maildir_of(pm.from)) else {
            continue;
        };
        let in_place = to
            .locate(&r.base, r.flags)
            .map_err(maildir_err(to.root()))?;
        // The file may be in its folder under the flags it had before the record was
        // rebound (a re-pair in place killed before its rename): give it the record's.
        if let Some(path) = &in_place {
            to.set_flags(path, &r.base, r.flags)
                .map_err(maildir_err(path.clone()))?;
            to.sync_dirs().map_err(maildir_err(to.root()))?;
        }
        if in_place.is_none()
            && let Some(path) = from
                .locate(&r.base, r.flags)
                .map_err(maildir_err(from.root()))?
        {
            from.move_to(&path, &to, &r.base, r.flags)
                .map_err(maildir_err(path))?;
            to.sync_dirs().map_err(maildir_err(to.root()))?;
            from.sync_dirs().map_err(maildir_err(from.root()))?;
        }
        finished.push((r.folder, r.uidvalidity, r.uid));
    }
    state.finish_moves(&finished)?;
    Ok(())
}

#[cfg(test)]
#[path = "recover_tests.rs"]
mod tests;
