//! Recovery: what a killed run journalled is finished or undone before anything is
//! planned, so every record agrees with its file.

use std::collections::HashMap;

use crate::maildir::Maildir;
use crate::state::{Effect, Entry, FolderRow, State};

use super::error::{SyncError, maildir_err};
use super::model::FolderId;

/// Finishes or undoes what a killed run journalled, so every record agrees with its
/// file before anything is planned: a delivery whose record was never committed is
/// undone (the file, if it got into place, is removed and the message will be fetched
/// again); a rename (a move, a flag change) is finished, the file taking the place and
/// flags its record already has; a removal is finished, the file going as its record
/// did. A folder's files are listed once, however many entries name it.
pub(super) fn recover(
    state: &mut State,
    account: &str,
    root: &std::path::Path,
) -> Result<(), SyncError> {
    let entries = state.journal(account)?;
    if entries.is_empty() {
        return Ok(());
    }
    let rows: HashMap<FolderId, FolderRow> = state
        .folders(account)?
        .into_iter()
        .map(|f| (f.id, f))
        .collect();
    let mut folders: HashMap<FolderId, Option<Folder>> = HashMap::new();
    let mut done = Vec::with_capacity(entries.len());
    for e in entries {
        let source = match e.effect {
            Effect::Rename { source, .. } => source,
            Effect::Deliver | Effect::Remove => e.folder,
            // Finished against the server (sync/recover_remote.rs).
            Effect::Upload { .. } => continue,
        };
        for id in [e.folder, source] {
            if let std::collections::hash_map::Entry::Vacant(v) = folders.entry(id) {
                v.insert(Folder::open(rows.get(&id), root)?);
            }
        }
        if source == e.folder {
            let Some(Some(f)) = folders.get_mut(&e.folder) else {
                continue; // a folder that cannot be opened keeps its entries
            };
            f.finish(&e)?;
            done.push(e.id);
            continue;
        }
        let [Some(Some(to)), Some(Some(from))] = folders.get_disjoint_mut([&e.folder, &source])
        else {
            continue;
        };
        if let Effect::Rename { flags, .. } = e.effect
            && !to.files.contains_key(&e.base)
            && let Some(path) = from.files.remove(&e.base)
        {
            let moved = from
                .maildir
                .move_to(&path, &to.maildir, &e.base, flags)
                .map_err(maildir_err(path))?;
            to.files.insert(e.base.clone(), moved);
            from.touched = true;
            to.touched = true;
        } else {
            to.finish(&e)?;
        }
        done.push(e.id);
    }
    for f in folders.values().flatten() {
        if f.touched {
            f.maildir
                .sync_dirs()
                .map_err(maildir_err(f.maildir.root()))?;
        }
    }
    state.resolve(&done)?;
    Ok(())
}

/// A folder during recovery: its Maildir and its files by base.
struct Folder {
    maildir: Maildir,
    files: HashMap<String, std::path::PathBuf>,
    touched: bool,
}

impl Folder {
    /// `None` when the folder is not this account's or its Maildir cannot be read.
    fn open(row: Option<&FolderRow>, root: &std::path::Path) -> Result<Option<Folder>, SyncError> {
        let Some(row) = row else {
            return Ok(None);
        };
        let Ok(maildir) = Maildir::open(&root.join(&row.local)) else {
            return Ok(None);
        };
        let files = maildir.index().map_err(maildir_err(maildir.root()))?;
        Ok(Some(Folder {
            maildir,
            files,
            touched: false,
        }))
    }

    /// Finishes an entry whose effect stays in this folder.
    fn finish(&mut self, e: &Entry) -> Result<(), SyncError> {
        match e.effect {
            Effect::Deliver | Effect::Remove => {
                if let Some(path) = self.files.remove(&e.base) {
                    if e.effect == Effect::Deliver {
                        tracing::info!(file = %path.display(), "removing a delivery a previous run did not commit");
                    }
                    self.maildir
                        .remove(&path)
                        .map_err(maildir_err(path.clone()))?;
                    self.touched = true;
                }
                if e.effect == Effect::Deliver {
                    let _ = std::fs::remove_file(self.maildir.tmp().join(&e.base));
                }
            }
            Effect::Upload { .. } => {}
            Effect::Rename { flags, .. } => {
                if let Some(path) = self.files.get(&e.base).cloned() {
                    let renamed = self
                        .maildir
                        .set_flags(&path, &e.base, flags)
                        .map_err(maildir_err(path))?;
                    self.files.insert(e.base.clone(), renamed);
                    self.touched = true;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "recover_tests.rs"]
mod tests;
