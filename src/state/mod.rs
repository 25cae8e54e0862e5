//! The sync state in SQLite: folders (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ), one row per
//! synced message, the journal of deliveries and moves in flight, and the account lock.
//!
//! Durability rule: a message row is committed only after its file is durable. The
//! journal (`pending` rows, `moved_from`) is written *before* the file operation, so a
//! crash at any instant leaves enough to finish or undo it ([`State::pending`]).

mod error;
mod lock;
mod runtime;
mod schema;
mod tokens;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::flags::Flags;
use crate::headers::Headers;
use crate::sync::model::{Fingerprint, FolderId, Record};

pub use error::StateError;
pub use lock::{AccountLock, LockError};
pub use runtime::{
    DaemonStatus, FolderStatus, ForgetReport, GrantSummary, HEARTBEAT, RunState, UnknownRunState,
    unix_now,
};
pub use tokens::{GrantStatus, LoadedGrant, StoredAccessToken, StoredGrant};

/// A mapped folder's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderRow {
    pub id: FolderId,
    pub account: String,
    pub local: String,
    pub remote: String,
    pub uidvalidity: Option<u32>,
    pub uidnext: Option<u32>,
    pub highestmodseq: Option<u64>,
    pub last_sync: Option<i64>,
    pub last_error: Option<String>,
}

/// A delivery journalled but not committed: the file may or may not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingDelivery {
    pub folder: FolderId,
    pub base: String,
}

/// A message row being moved between folders: the row already names the new folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMove {
    pub record: Record,
    pub from: FolderId,
}

pub struct State {
    conn: Connection,
    path: PathBuf,
}

/// A record's new place, for [`State::journal_relocations`].
#[derive(Clone, Copy, Debug)]
pub struct Relocation<'a> {
    pub record: &'a Record,
    pub folder: FolderId,
    pub uidvalidity: u32,
    pub uid: u32,
    pub flags: Flags,
}

impl State {
    /// Runs `f` in one write transaction, committed if it returns `Ok`.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let result = (|| {
            // IMMEDIATE: take the write lock at BEGIN, waiting (busy_timeout) for the
            // pass's other connections; a deferred transaction that read first could
            // fail with SQLITE_BUSY_SNAPSHOT when it goes on to write.
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })();
        result.map_err(|source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Opens (creating if needed) the database in `state_dir`, with the directory made
    /// private (0700) and the schema migrated to the current version.
    pub fn open(state_dir: &Path) -> Result<State, StateError> {
        create_private_dir(state_dir)?;
        let path = state_dir.join("state.sqlite");
        let conn = Connection::open(&path).map_err(|source| StateError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let mut state = State { conn, path };
        state.init()?;
        Ok(state)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init(&mut self) -> Result<(), StateError> {
        let path = self.path.clone();
        let wrap = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        // Private before anything is written; SQLite gives the WAL the same mode.
        restrict_file(&self.path);
        // FULL: a commit is on disk when it returns, which the durability rule needs.
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA secure_delete = ON;
                 PRAGMA busy_timeout = 10000;",
            )
            .map_err(wrap)?;
        schema::migrate(&mut self.conn, &self.path)
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The folder row for (`account`, `local`), created if new. When the mapping now
    /// resolves to another remote folder (a role found elsewhere, a mapping edited),
    /// the records are of the old folder: their UIDs mean nothing in the new one, even
    /// where its UIDVALIDITY happens to be the same (servers that use creation times
    /// or constants). They are set apart under UIDVALIDITY 0, which no server may use
    /// (RFC 3501), and the folder's sync position is cleared, so the next listing
    /// re-pairs them by Message-ID, size and date, as after a UIDVALIDITY change.
    pub fn folder(
        &mut self,
        account: &str,
        local: &str,
        remote: &str,
    ) -> Result<FolderRow, StateError> {
        self.write(|tx| {
            let old: Option<String> = tx
                .query_row(
                    "SELECT remote FROM folders WHERE account = ?1 AND local = ?2",
                    params![account, local],
                    |r| r.get(0),
                )
                .optional()?;
            match old {
                None => {
                    tx.execute(
                        "INSERT INTO folders (account, local, remote) VALUES (?1, ?2, ?3)",
                        params![account, local, remote],
                    )?;
                }
                Some(old) if old != remote => {
                    tracing::warn!(
                        folder = %local,
                        was = %old,
                        now = %remote,
                        "the mapping resolves to another remote folder: its messages are re-paired by Message-ID, size and date"
                    );
                    let id: i64 = tx.query_row(
                        "UPDATE folders SET remote = ?3, uidvalidity = NULL, uidnext = NULL,
                         highestmodseq = NULL WHERE account = ?1 AND local = ?2 RETURNING id",
                        params![account, local, remote],
                        |r| r.get(0),
                    )?;
                    // (A record already at 0 under the same UID, left by an earlier
                    // change not yet re-paired, keeps its place: the next pass pairs
                    // or removes it.)
                    tx.execute(
                        "UPDATE OR IGNORE messages SET uidvalidity = 0 WHERE folder = ?1",
                        params![id],
                    )?;
                }
                Some(_) => {}
            }
            Ok(())
        })?;
        let row = self
            .conn
            .query_row(
                &format!("{FOLDER_SELECT} WHERE account = ?1 AND local = ?2"),
                params![account, local],
                folder_from_row,
            )
            .map_err(|e| self.err(e))?;
        Ok(row)
    }

    pub fn folders(&self, account: &str) -> Result<Vec<FolderRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "{FOLDER_SELECT} WHERE account = ?1 ORDER BY local"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![account], folder_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|e| self.err(e))
    }

    pub fn folder_by_id(&self, id: FolderId) -> Result<Option<FolderRow>, StateError> {
        self.conn
            .query_row(
                &format!("{FOLDER_SELECT} WHERE id = ?1"),
                params![id.0],
                folder_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Records the server's folder state after a successful pass.
    pub fn set_folder_synced(
        &mut self,
        id: FolderId,
        uidvalidity: u32,
        uidnext: Option<u32>,
        highestmodseq: Option<u64>,
        now: i64,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE folders SET uidvalidity = ?2, uidnext = ?3, highestmodseq = ?4,
                 last_sync = ?5, last_error = NULL WHERE id = ?1",
                params![
                    id.0,
                    uidvalidity,
                    uidnext,
                    highestmodseq.map(|m| m as i64),
                    now
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn set_folder_error(&mut self, id: FolderId, error: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE folders SET last_error = ?2 WHERE id = ?1",
                params![id.0, error],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every committed record of a folder, any UIDVALIDITY.
    pub fn records(&self, folder: FolderId) -> Result<Vec<Record>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT folder, uidvalidity, uid, base, flags, size, internaldate, message_id
                 FROM messages WHERE folder = ?1 ORDER BY uidvalidity, uid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![folder.0], record_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|e| self.err(e))
    }

    pub fn count(&self, folder: FolderId) -> Result<u64, StateError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM messages WHERE folder = ?1",
                params![folder.0],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Journals deliveries about to be written, in one transaction.
    pub fn journal_deliveries(
        &mut self,
        folder: FolderId,
        bases: &[String],
    ) -> Result<(), StateError> {
        self.write(|tx| {
            let mut stmt =
                tx.prepare_cached("INSERT OR IGNORE INTO pending (folder, base) VALUES (?1, ?2)")?;
            for base in bases {
                stmt.execute(params![folder.0, base])?;
            }
            Ok(())
        })
    }

    /// Commits delivered messages (their files are durable) and drops their journal
    /// entries, in one transaction. Bases journalled but not delivered are dropped too.
    pub fn commit_deliveries(
        &mut self,
        folder: FolderId,
        delivered: &[(Record, Headers)],
        abandoned: &[String],
    ) -> Result<(), StateError> {
        self.write(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO messages (folder, uidvalidity, uid, base, flags, size,
                 internaldate, message_id, sender, subject, date)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let mut unjournal =
                tx.prepare_cached("DELETE FROM pending WHERE folder = ?1 AND base = ?2")?;
            for (r, h) in delivered {
                insert.execute(params![
                    r.folder.0,
                    r.uidvalidity,
                    r.uid,
                    r.base,
                    r.flags.bits(),
                    r.fingerprint.size as i64,
                    r.fingerprint.internaldate,
                    r.fingerprint.message_id,
                    h.from,
                    h.subject,
                    h.date,
                ])?;
                unjournal.execute(params![folder.0, r.base])?;
            }
            for base in abandoned {
                unjournal.execute(params![folder.0, base])?;
            }
            Ok(())
        })
    }

    /// Deliveries journalled by a run that did not commit them.
    pub fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT folder, base FROM pending ORDER BY folder, base")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PendingDelivery {
                    folder: FolderId(r.get(0)?),
                    base: r.get(1)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|e| self.err(e))
    }

    pub fn drop_pending(&mut self, pending: &PendingDelivery) -> Result<(), StateError> {
        self.conn
            .execute(
                "DELETE FROM pending WHERE folder = ?1 AND base = ?2",
                params![pending.folder.0, pending.base],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Journals flag changes about to be applied to files, in one transaction: each
    /// record takes its new flags and is marked in flight (`moved_from` its own folder)
    /// until [`State::finish_moves`]. A run killed among the renames leaves records
    /// that recovery makes their files agree with; without the mark, a file renamed
    /// before its record was would keep flags the server no longer has once the server
    /// changes them back (the listing compares the server with the records only).
    pub fn journal_flags(
        &mut self,
        updates: &[(FolderId, u32, u32, Flags)],
    ) -> Result<(), StateError> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE messages SET flags = ?4, moved_from = COALESCE(moved_from, folder)
                 WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )?;
            for (folder, uidvalidity, uid, flags) in updates {
                stmt.execute(params![folder.0, uidvalidity, uid, flags.bits()])?;
            }
            Ok(())
        })
    }

    /// Deletes the records of messages whose files are gone, in one transaction.
    pub fn remove(&mut self, records: &[Record]) -> Result<(), StateError> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM messages WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )?;
            for r in records {
                stmt.execute(params![r.folder.0, r.uidvalidity, r.uid])?;
            }
            Ok(())
        })
    }

    /// Journals relocations, in one transaction: each record is rebound to its new
    /// place and remembers the folder its file is still in, until
    /// [`State::finish_moves`].
    pub fn journal_relocations(&mut self, moves: &[Relocation<'_>]) -> Result<(), StateError> {
        self.write(|tx| {
            // A stale row at the destination (e.g. from a failed earlier run) must not
            // block the rebinding: the destination UID belongs to this message now.
            let mut clear = tx.prepare_cached(
                "DELETE FROM messages WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )?;
            let mut rebind = tx.prepare_cached(
                "UPDATE messages SET folder = ?4, uidvalidity = ?5, uid = ?6, flags = ?7,
                 moved_from = COALESCE(moved_from, ?8)
                 WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )?;
            for m in moves {
                let r = m.record;
                clear.execute(params![m.folder.0, m.uidvalidity, m.uid])?;
                // In place too (a re-pair after a UIDVALIDITY change): the rebound
                // record may carry new flags its file does not have yet.
                let moved_from = r.folder.0;
                rebind.execute(params![
                    r.folder.0,
                    r.uidvalidity,
                    r.uid,
                    m.folder.0,
                    m.uidvalidity,
                    m.uid,
                    m.flags.bits(),
                    moved_from
                ])?;
            }
            Ok(())
        })
    }

    /// Clears the move journal of records whose files are now in their folder.
    pub fn finish_moves(&mut self, done: &[(FolderId, u32, u32)]) -> Result<(), StateError> {
        self.write(|tx| {
        let mut stmt = tx
            .prepare_cached(
                "UPDATE messages SET moved_from = NULL WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )
            ?;
        for (folder, uidvalidity, uid) in done {
            stmt.execute(params![folder.0, uidvalidity, uid])
                ?;
        }
            Ok(())
        })
    }

    /// Records whose file may still be in another folder (a move not finished).
    pub fn pending_moves(&self) -> Result<Vec<PendingMove>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT folder, uidvalidity, uid, base, flags, size, internaldate, message_id, moved_from
                 FROM messages WHERE moved_from IS NOT NULL",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PendingMove {
                    record: record_from_row(r)?,
                    from: FolderId(r.get(8)?),
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|e| self.err(e))
    }
}

const FOLDER_SELECT: &str =
    "SELECT id, account, local, remote, uidvalidity, uidnext, highestmodseq,
    last_sync, last_error FROM folders";

fn folder_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FolderRow> {
    Ok(FolderRow {
        id: FolderId(r.get(0)?),
        account: r.get(1)?,
        local: r.get(2)?,
        remote: r.get(3)?,
        uidvalidity: r.get(4)?,
        uidnext: r.get(5)?,
        highestmodseq: r.get::<_, Option<i64>>(6)?.map(|m| m as u64),
        last_sync: r.get(7)?,
        last_error: r.get(8)?,
    })
}

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        folder: FolderId(r.get(0)?),
        uidvalidity: r.get(1)?,
        uid: r.get(2)?,
        base: r.get(3)?,
        flags: Flags::from_bits(r.get::<_, i64>(4)? as u8),
        fingerprint: Fingerprint {
            size: r.get::<_, i64>(5)? as u64,
            internaldate: r.get(6)?,
            message_id: r.get(7)?,
        },
    })
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let wrap = |source| StateError::Dir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(wrap)?;
    // An existing directory keeps its mode unless tightened: tokens live here.
    let meta = std::fs::metadata(dir).map_err(wrap)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(wrap)?;
    }
    Ok(())
}

fn restrict_file(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

impl State {
    /// The small per-record view the listing diff needs, for every record of a folder.
    /// How many records the folder has, of every UIDVALIDITY.
    pub fn count_records(&self, folder: FolderId) -> Result<u64, StateError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM messages WHERE folder = ?1")
            .and_then(|mut stmt| stmt.query_row(params![folder.0], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    pub fn known(&self, folder: FolderId) -> Result<Vec<crate::sync::model::Known>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT uidvalidity, uid, flags FROM messages WHERE folder = ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![folder.0], |r| {
                Ok(crate::sync::model::Known {
                    uidvalidity: r.get(0)?,
                    uid: r.get(1)?,
                    flags: Flags::from_bits(r.get::<_, i64>(2)? as u8),
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|e| self.err(e))
    }

    /// The full records for the given (uidvalidity, uid) keys of a folder.
    pub fn records_for(
        &self,
        folder: FolderId,
        keys: &[(u32, u32)],
    ) -> Result<Vec<Record>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT folder, uidvalidity, uid, base, flags, size, internaldate, message_id
                 FROM messages WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(keys.len());
        for (uidvalidity, uid) in keys {
            if let Some(r) = stmt
                .query_row(params![folder.0, uidvalidity, uid], record_from_row)
                .optional()
                .map_err(|e| self.err(e))?
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// One record by key.
    pub fn record(
        &self,
        folder: FolderId,
        uidvalidity: u32,
        uid: u32,
    ) -> Result<Option<Record>, StateError> {
        Ok(self.records_for(folder, &[(uidvalidity, uid)])?.pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(folder: FolderId, uidvalidity: u32, uid: u32) -> (Record, Headers) {
        let record = Record {
            folder,
            uidvalidity,
            uid,
            base: format!("1700000000.M{uid}P1Q1.host,U={uid}"),
            flags: Flags::empty(),
            fingerprint: Fingerprint {
                message_id: Some(format!("m{uid}@example.com")),
                size: 100 + u64::from(uid),
                internaldate: 1_700_000_000,
            },
        };
        (record, Headers::default())
    }

    #[test]
    fn a_mapping_that_resolves_elsewhere_sets_its_records_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        let row = state.folder("work", "Archive", "Archive").unwrap();
        state
            .commit_deliveries(row.id, &[record(row.id, 7, 1), record(row.id, 7, 2)], &[])
            .unwrap();
        state
            .set_folder_synced(row.id, 7, Some(3), Some(40), 1)
            .unwrap();

        // The same mapping again: nothing changes.
        let same = state.folder("work", "Archive", "Archive").unwrap();
        assert_eq!(same.uidvalidity, Some(7));
        assert!(
            state
                .known(row.id)
                .unwrap()
                .iter()
                .all(|k| k.uidvalidity == 7)
        );

        // Another remote folder, which happens to have UIDVALIDITY 7 too: none of the
        // records may stand for its UIDs 1 and 2.
        let moved = state.folder("work", "Archive", "Old/Archive").unwrap();
        assert_eq!(moved.id, row.id);
        assert_eq!(moved.remote, "Old/Archive");
        assert_eq!(
            (moved.uidvalidity, moved.uidnext, moved.highestmodseq),
            (None, None, None)
        );
        let known = state.known(row.id).unwrap();
        assert_eq!(known.len(), 2, "the records stay, to be re-paired");
        assert!(known.iter().all(|k| k.uidvalidity == 0), "{known:?}");
    }
}
