//! The sync state in SQLite: folders (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ), one row per
//! synced message, the one journal of effects in flight, and the account lock.
//!
//! Durability rule: a message row is committed only after its file is durable. Every
//! effect on a file (deliver, rename, remove) is journalled *before* it is made, in the
//! same transaction as its record's change, and resolved once durable, so a crash at
//! any instant leaves enough to finish or undo it ([`State::journal`]).

mod error;
mod lock;
mod outbox;
mod runtime;
mod schema;
mod tokens;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::flags::Flags;
use crate::headers::Headers;
use crate::sync::model::{Fingerprint, FolderId, Record};

pub use error::StateError;

pub use lock::{AccountLock, LockError, OutboxLock};
pub use outbox::{NewMessage, OutboxEntry, OutboxState, OutboxSummary, Settled};
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
    /// The modification times (ns) of the local `cur/` and `new/` when a two-way pass
    /// last found the folder as its records say: while they stand, nothing changed.
    pub local_stamp: Option<crate::maildir::Stamp>,
}

/// An effect on the local store, journalled (in the same transaction as its record's
/// change) before it is made, and resolved once it is durable. Whatever a killed run
/// left journalled, recovery finishes or undoes before anything is planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    /// The folder the effect lands in.
    pub folder: FolderId,
    /// The message file's unique name (without the `:2,` info part).
    pub base: String,
    pub effect: Effect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A new file is being written; its record is not committed. Undone: the file goes.
    Deliver,
    /// The file, in `source` (or already in its folder), gets these flags and goes to
    /// the entry's folder: a move between folders, or a flag change in place. Its record
    /// already says so. Finished: the file is renamed.
    Rename { source: FolderId, flags: Flags },
    /// The message left the server; its record is deleted. Finished: the file goes.
    Remove,
    /// The local file `base` is being uploaded to the entry's folder, whose UIDNEXT was
    /// `uidnext` before: by APPEND, or, when `origin` names the recorded message, by
    /// MOVE or COPY from there. Finished by binding the new UID (found again among the
    /// UIDs from `uidnext` after a kill); local recovery leaves it alone.
    Upload {
        uidnext: u32,
        flags: Flags,
        origin: Option<(FolderId, u32, u32)>,
    },
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
            let mut stmt = tx.prepare_cached(
                "INSERT INTO journal (kind, folder, base) VALUES ('deliver', ?1, ?2)",
            )?;
            for base in bases {
                stmt.execute(params![folder.0, base])?;
            }
            Ok(())
        })
    }

    /// Commits delivered messages (their files are durable) and resolves their journal
    /// entries, in one transaction. Bases journalled but not delivered are resolved too.
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
            let mut resolve = tx.prepare_cached(
                "DELETE FROM journal WHERE kind = 'deliver' AND folder = ?1 AND base = ?2",
            )?;
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
                resolve.execute(params![folder.0, r.base])?;
            }
            for base in abandoned {
                resolve.execute(params![folder.0, base])?;
            }
            Ok(())
        })
    }

    /// What a killed run left journalled in `account`'s folders, in the order it was
    /// journalled.
    pub fn journal(&self, account: &str) -> Result<Vec<Entry>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT j.id, j.kind, j.folder, j.base, j.source, j.flags, j.uidnext,
                 j.source_uidvalidity, j.source_uid FROM journal j
                 JOIN folders f ON f.id = j.folder WHERE f.account = ?1 ORDER BY j.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![account], |r| {
                let kind: String = r.get(1)?;
                let folder = FolderId(r.get(2)?);
                let effect = match kind.as_str() {
                    "deliver" => Effect::Deliver,
                    "rename" => Effect::Rename {
                        source: r.get::<_, Option<i64>>(4)?.map_or(folder, FolderId),
                        flags: Flags::from_bits(r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u8),
                    },
                    "upload" => Effect::Upload {
                        uidnext: r.get::<_, Option<u32>>(6)?.unwrap_or(1),
                        flags: Flags::from_bits(r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u8),
                        origin: match (r.get::<_, Option<i64>>(4)?, r.get(7)?, r.get(8)?) {
                            (Some(f), Some(v), Some(u)) => Some((FolderId(f), v, u)),
                            _ => None,
                        },
                    },
                    _ => Effect::Remove,
                };
                Ok(Entry {
                    id: r.get(0)?,
                    folder,
                    base: r.get(3)?,
                    effect,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|e| self.err(e))
    }

    /// Journals an upload about to be sent (see [`Effect::Upload`]); returns its id.
    pub fn journal_upload(
        &mut self,
        folder: FolderId,
        base: &str,
        uidnext: u32,
        flags: Flags,
        origin: Option<(FolderId, u32, u32)>,
    ) -> Result<i64, StateError> {
        self.write(|tx| {
            tx.query_row(
                "INSERT INTO journal (kind, folder, base, source, flags, uidnext,
                 source_uidvalidity, source_uid) VALUES ('upload', ?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 RETURNING id",
                params![
                    folder.0,
                    base,
                    origin.map(|o| o.0.0),
                    flags.bits(),
                    uidnext,
                    origin.map(|o| o.1),
                    origin.map(|o| o.2)
                ],
                |r| r.get(0),
            )
        })
    }

    /// Binds an upload to the message it made on the server, in one transaction: the
    /// record of its origin (a moved message) goes, `record` is written, and the entry
    /// `id` is resolved.
    pub fn bind_upload(
        &mut self,
        id: i64,
        record: &Record,
        origin: Option<(FolderId, u32, u32)>,
    ) -> Result<(), StateError> {
        self.write(|tx| {
            if let Some((folder, uidvalidity, uid)) = origin {
                tx.execute(
                    "DELETE FROM messages WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
                    params![folder.0, uidvalidity, uid],
                )?;
            }
            insert_record(tx, record)?;
            tx.execute("DELETE FROM journal WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    /// Deletes the records of messages gone on both sides (deleted locally, then on
    /// the server): there is no file left to journal.
    pub fn forget_records(&mut self, records: &[Record]) -> Result<(), StateError> {
        self.write(|tx| {
            let mut delete = tx.prepare_cached(
                "DELETE FROM messages WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )?;
            for r in records {
                delete.execute(params![r.folder.0, r.uidvalidity, r.uid])?;
            }
            Ok(())
        })
    }

    /// Notes that the server refused to take the local file `base` of `folder`: it is
    /// not offered again under that name.
    pub fn refuse_upload(
        &mut self,
        folder: FolderId,
        base: &str,
        reason: &str,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO refused (folder, base, reason) VALUES (?1, ?2, ?3)",
                params![folder.0, base, reason],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The bases of `folder`'s local files the server refused to take.
    pub fn refused_uploads(
        &self,
        folder: FolderId,
    ) -> Result<std::collections::HashSet<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT base FROM refused WHERE folder = ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![folder.0], |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<_, _>>());
        rows.map_err(|e| self.err(e))
    }

    /// Records the messages found the same on both sides (new on both), without
    /// headers: nothing was downloaded.
    pub fn adopt(&mut self, records: &[Record]) -> Result<(), StateError> {
        self.write(|tx| {
            for r in records {
                insert_record(tx, r)?;
            }
            Ok(())
        })
    }

    /// Keeps (or clears) the local modification times a two-way pass found a folder at.
    pub fn set_local_stamp(
        &mut self,
        folder: FolderId,
        stamp: Option<crate::maildir::Stamp>,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE folders SET local_cur = ?2, local_new = ?3 WHERE id = ?1",
                params![folder.0, stamp.map(|s| s.cur), stamp.map(|s| s.new)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Resolves journal entries whose effects are durable, in one transaction.
    pub fn resolve(&mut self, ids: &[i64]) -> Result<(), StateError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut stmt = tx.prepare_cached("DELETE FROM journal WHERE id = ?1")?;
            for id in ids {
                stmt.execute(params![id])?;
            }
            Ok(())
        })
    }

    /// Journals flag changes about to be applied to files, in one transaction: each
    /// record takes its new flags and a rename entry says its file must follow. A run
    /// killed among the renames leaves entries that recovery finishes; without them, a
    /// file renamed before its record was would keep flags the server no longer has once
    /// the server changes them back (the listing compares the server with the records).
    /// Returns the entries' ids, to [`State::resolve`] once the renames are durable.
    pub fn journal_flags(&mut self, updates: &[(Record, Flags)]) -> Result<Vec<i64>, StateError> {
        self.write(|tx| {
            let mut update = tx.prepare_cached(
                "UPDATE messages SET flags = ?4 WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )?;
            let mut journal = tx.prepare_cached(
                "INSERT INTO journal (kind, folder, base, source, flags)
                 VALUES ('rename', ?1, ?2, ?1, ?3) RETURNING id",
            )?;
            let mut ids = Vec::with_capacity(updates.len());
            for (r, flags) in updates {
                update.execute(params![r.folder.0, r.uidvalidity, r.uid, flags.bits()])?;
                ids.push(journal.query_row(params![r.folder.0, r.base, flags.bits()], |row| {
                    row.get(0)
                })?);
            }
            Ok(ids)
        })
    }

    /// Journals removals, in one transaction: the records of messages gone from the
    /// server are deleted and a remove entry says their files must go. Returns the
    /// entries' ids, to [`State::resolve`] once the files are gone.
    pub fn journal_removals(&mut self, records: &[Record]) -> Result<Vec<i64>, StateError> {
        self.write(|tx| {
            let mut delete = tx.prepare_cached(
                "DELETE FROM messages WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )?;
            let mut journal = tx.prepare_cached(
                "INSERT INTO journal (kind, folder, base) VALUES ('remove', ?1, ?2) RETURNING id",
            )?;
            let mut ids = Vec::with_capacity(records.len());
            for r in records {
                delete.execute(params![r.folder.0, r.uidvalidity, r.uid])?;
                ids.push(journal.query_row(params![r.folder.0, r.base], |row| row.get(0))?);
            }
            Ok(ids)
        })
    }

    /// Journals relocations, in one transaction: each record is rebound to its new
    /// place and flags, and a rename entry says its file must follow from the folder it
    /// is still in. Returns the entries' ids, to [`State::resolve`] once the renames are
    /// durable.
    pub fn journal_relocations(
        &mut self,
        moves: &[Relocation<'_>],
    ) -> Result<Vec<i64>, StateError> {
        self.write(|tx| {
            // A stale row at the destination (e.g. from a failed earlier run) must not
            // block the rebinding: the destination UID belongs to this message now.
            let mut clear = tx.prepare_cached(
                "DELETE FROM messages WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )?;
            let mut rebind = tx.prepare_cached(
                "UPDATE messages SET folder = ?4, uidvalidity = ?5, uid = ?6, flags = ?7
                 WHERE folder = ?1 AND uidvalidity = ?2 AND uid = ?3",
            )?;
            let mut journal = tx.prepare_cached(
                "INSERT INTO journal (kind, folder, base, source, flags)
                 VALUES ('rename', ?1, ?2, ?3, ?4) RETURNING id",
            )?;
            let mut ids = Vec::with_capacity(moves.len());
            for m in moves {
                let r = m.record;
                clear.execute(params![m.folder.0, m.uidvalidity, m.uid])?;
                // In place too (a re-pair after a UIDVALIDITY change): the rebound
                // record may carry new flags its file does not have yet.
                rebind.execute(params![
                    r.folder.0,
                    r.uidvalidity,
                    r.uid,
                    m.folder.0,
                    m.uidvalidity,
                    m.uid,
                    m.flags.bits(),
                ])?;
                ids.push(journal.query_row(
                    params![m.folder.0, r.base, r.folder.0, m.flags.bits()],
                    |row| row.get(0),
                )?);
            }
            Ok(ids)
        })
    }
}

const FOLDER_SELECT: &str =
    "SELECT id, account, local, remote, uidvalidity, uidnext, highestmodseq,
    last_sync, last_error, local_cur, local_new FROM folders";

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
        local_stamp: match (r.get(9)?, r.get(10)?) {
            (Some(cur), Some(new)) => Some(crate::maildir::Stamp { cur, new }),
            _ => None,
        },
    })
}

/// Writes `r` (replacing a row under the same key), without headers.
fn insert_record(tx: &rusqlite::Transaction<'_>, r: &Record) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO messages (folder, uidvalidity, uid, base, flags, size,
         internaldate, message_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        r.folder.0,
        r.uidvalidity,
        r.uid,
        r.base,
        r.flags.bits(),
        r.fingerprint.size as i64,
        r.fingerprint.internaldate,
        r.fingerprint.message_id,
    ])?;
    Ok(())
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

#[cfg(test)]
mod journal_tests {
    use super::*;

    /// A database of schema 5 (deliveries journalled in `pending`, moves and flag
    /// changes marked by `messages.moved_from`) opened by this version: what a killed
    /// run left is in the one journal, for recovery to finish.
    #[test]
    fn the_old_journals_move_into_the_one_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &schema::MIGRATIONS[..5] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            conn.execute_batch(
                "INSERT INTO folders (id, account, local, remote) VALUES (1, 'work', 'Inbox', 'INBOX');
                 INSERT INTO folders (id, account, local, remote) VALUES (2, 'work', 'Archive', 'Archive');
                 INSERT INTO pending (folder, base) VALUES (1, 'new.base');
                 INSERT INTO messages (folder, uidvalidity, uid, base, flags, size, internaldate, moved_from)
                     VALUES (2, 7, 4, 'moved.base', 5, 10, 0, 1);
                 INSERT INTO messages (folder, uidvalidity, uid, base, flags, size, internaldate, moved_from)
                     VALUES (1, 7, 5, 'flagged.base', 4, 10, 0, 1);
                 INSERT INTO messages (folder, uidvalidity, uid, base, flags, size, internaldate)
                     VALUES (1, 7, 6, 'quiet.base', 1, 10, 0);",
            )
            .unwrap();
        }
        let state = State::open(dir.path()).unwrap();
        let journal: Vec<(FolderId, String, Effect)> = state
            .journal("work")
            .unwrap()
            .into_iter()
            .map(|e| (e.folder, e.base, e.effect))
            .collect();
        let (inbox, archive) = (FolderId(1), FolderId(2));
        let mut expected = vec![
            (inbox, "new.base".to_owned(), Effect::Deliver),
            (
                archive,
                "moved.base".to_owned(),
                Effect::Rename {
                    source: inbox,
                    flags: Flags::from_bits(5),
                },
            ),
            (
                inbox,
                "flagged.base".to_owned(),
                Effect::Rename {
                    source: inbox,
                    flags: Flags::FLAGGED,
                },
            ),
        ];
        let mut journal_sorted = journal.clone();
        journal_sorted.sort_by(|a, b| a.1.cmp(&b.1));
        expected.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(journal_sorted, expected);
        assert_eq!(state.records(inbox).unwrap().len(), 2, "records kept");
        assert_eq!(state.records(archive).unwrap().len(), 1);
    }

    /// Schema 7's upload entries: journalled with the target's UIDNEXT and the origin,
    /// read back as such (local recovery must not take them for removals), and bound
    /// in one transaction that moves the record and resolves the entry.
    #[test]
    fn an_upload_is_journalled_then_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        let inbox = state.folder("work", "Inbox", "INBOX").unwrap().id;
        let archive = state.folder("work", "Archive", "Archive").unwrap().id;
        let record = Record {
            folder: inbox,
            uidvalidity: 7,
            uid: 3,
            base: "moved.base".into(),
            flags: Flags::SEEN,
            fingerprint: Fingerprint {
                message_id: Some("m@x".into()),
                size: 10,
                internaldate: 5,
            },
        };
        state.adopt(std::slice::from_ref(&record)).unwrap();
        let origin = Some((inbox, 7, 3));
        let id = state
            .journal_upload(archive, "moved.base", 40, Flags::SEEN, origin)
            .unwrap();
        let entries = state.journal("work").unwrap();
        assert_eq!(
            entries.iter().map(|e| e.effect).collect::<Vec<_>>(),
            vec![Effect::Upload {
                uidnext: 40,
                flags: Flags::SEEN,
                origin
            }]
        );
        let bound = Record {
            folder: archive,
            uidvalidity: 9,
            uid: 41,
            ..record
        };
        state.bind_upload(id, &bound, origin).unwrap();
        assert!(state.journal("work").unwrap().is_empty());
        assert!(state.records(inbox).unwrap().is_empty());
        assert_eq!(state.records(archive).unwrap(), vec![bound]);
    }
}
