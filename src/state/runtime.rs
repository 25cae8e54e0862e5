//! What `mailsync status` reads: the daemon's state per account (`daemon_status`), the
//! server's message count per folder, a grant's status without its key, and
//! `mailsync stop`'s removal of an account's sync state.
//!
//! The daemon reports its state often (every IDLE round, every poll), and each commit
//! is fsynced (`synchronous = FULL`), so [`State::set_daemon_state`] writes only when
//! something a reader sees changed (state, detail, pid), or when the row's `updated`
//! is older than [`HEARTBEAT`]: a repeated report costs one indexed read.

use std::fmt;
use std::str::FromStr;

use rusqlite::{OptionalExtension, params};

use super::{GrantStatus, State, StateError};
use crate::sync::model::FolderId;

/// How stale `daemon_status.updated` may get while the daemon keeps reporting the same
/// state: a repeated report within this many seconds writes nothing.
pub const HEARTBEAT: i64 = 60;

/// What the daemon is doing for an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// The account's task exists; nothing tried yet.
    Starting,
    /// Signing in, opening the IMAP connection(s).
    Connecting,
    /// A sync pass is running.
    Syncing,
    /// Waiting in IMAP IDLE for the server to report a change.
    Idle,
    /// Waiting for the next poll (no IDLE).
    Polling,
    /// Waiting before retrying after a failure (the detail says which).
    Backoff,
    /// The grant was refused (`invalid_grant`); only `mailsync connect` helps.
    NeedsConnect,
    /// The account's task ended (shutdown, or the account left the config).
    Stopped,
}

impl RunState {
    pub const ALL: [RunState; 8] = [
        RunState::Starting,
        RunState::Connecting,
        RunState::Syncing,
        RunState::Idle,
        RunState::Polling,
        RunState::Backoff,
        RunState::NeedsConnect,
        RunState::Stopped,
    ];

    /// The name stored in `daemon_status.state` and printed by `status --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Connecting => "connecting",
            RunState::Syncing => "syncing",
            RunState::Idle => "idle",
            RunState::Polling => "polling",
            RunState::Backoff => "backoff",
            RunState::NeedsConnect => "needs_connect",
            RunState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown daemon state {0:?}")]
pub struct UnknownRunState(pub String);

impl FromStr for RunState {
    type Err = UnknownRunState;
    fn from_str(s: &str) -> Result<RunState, UnknownRunState> {
        RunState::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRunState(s.to_owned()))
    }
}

/// An account's `daemon_status` row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonStatus {
    pub account: String,
    pub state: RunState,
    /// Why (the error behind a backoff, the reason behind needs_connect), or what (the
    /// folder being synced).
    pub detail: Option<String>,
    /// The process that reported it.
    pub pid: Option<u32>,
    /// When this state began (unix seconds): set when the state or the process changes.
    pub since: i64,
    /// When the daemon last reported (unix seconds; at most [`HEARTBEAT`] stale while
    /// it keeps reporting).
    pub updated: i64,
}

/// What [`State::forget_account`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForgetReport {
    /// Folder mappings (rows of `folders`).
    pub folders: usize,
    /// Message records in those folders.
    pub messages: usize,
    /// Whether there was a `daemon_status` row.
    pub daemon_status: bool,
}

impl ForgetReport {
    pub fn is_empty(&self) -> bool {
        self.folders == 0 && self.messages == 0 && !self.daemon_status
    }
}

/// A grant as `status` shows it, read without the token key (nothing is decrypted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantSummary {
    pub flow: String,
    pub status: GrantStatus,
    pub has_refresh_token: bool,
    pub scopes: Vec<String>,
    pub granted_to: Option<String>,
    /// When the last access token expires (unix seconds).
    pub access_expires: Option<i64>,
    /// When the row last changed (unix seconds).
    pub updated: i64,
}

/// A mapped folder's row as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderStatus {
    pub id: FolderId,
    pub local: String,
    /// The server's name, on the wire (modified UTF-7).
    pub remote: String,
    /// Message records (files mailsync delivered and tracks).
    pub local_count: u64,
    /// Messages on the server at the last SELECT.
    pub remote_count: Option<u32>,
    pub last_sync: Option<i64>,
    pub last_error: Option<String>,
}

/// Seconds since the epoch: the clock every stored time uses.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl State {
    /// Records what the daemon is doing for `account`, as this process. Writes nothing
    /// when the row already says so and was updated less than [`HEARTBEAT`] ago.
    pub fn set_daemon_state(
        &mut self,
        account: &str,
        state: RunState,
        detail: Option<&str>,
    ) -> Result<(), StateError> {
        self.set_daemon_state_at(account, state, detail, std::process::id(), unix_now())
    }

    fn set_daemon_state_at(
        &mut self,
        account: &str,
        state: RunState,
        detail: Option<&str>,
        pid: u32,
        now: i64,
    ) -> Result<(), StateError> {
        let current = self.daemon_state(account)?;
        let same_run = current
            .as_ref()
            .is_some_and(|c| c.state == state && c.pid == Some(pid));
        if let Some(c) = &current
            && same_run
            && c.detail.as_deref() == detail
            && (c.updated..c.updated + HEARTBEAT).contains(&now)
        {
            return Ok(());
        }
        let since = match &current {
            Some(c) if same_run => c.since,
            _ => now,
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO daemon_status (account, state, detail, pid, since, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (account) DO UPDATE SET state = excluded.state,
                 detail = excluded.detail, pid = excluded.pid, since = excluded.since,
                 updated = excluded.updated",
            )
            .map_err(|e| self.err(e))?;
        stmt.execute(params![account, state.as_str(), detail, pid, since, now])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The daemon's last report for `account`, if it ever made one.
    pub fn daemon_state(&self, account: &str) -> Result<Option<DaemonStatus>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT state, detail, pid, since, updated FROM daemon_status
                 WHERE account = ?1",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_row(params![account], |r| {
            let state: String = r.get(0)?;
            let state = state.parse::<RunState>().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            })?;
            Ok(DaemonStatus {
                account: account.to_owned(),
                state,
                detail: r.get(1)?,
                pid: r.get(2)?,
                since: r.get(3)?,
                updated: r.get(4)?,
            })
        })
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Deletes the daemon's row for `account` (the daemon dropped an account that left
    /// the config: `status` should not list it). False if there was none.
    pub fn clear_daemon_state(&mut self, account: &str) -> Result<bool, StateError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM daemon_status WHERE account = ?1",
                params![account],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Records how many messages the server reported at SELECT (`EXISTS`). Writes only
    /// when the count changed.
    pub fn set_remote_exists(&mut self, folder: FolderId, exists: u32) -> Result<(), StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE folders SET remote_exists = ?2
                 WHERE id = ?1 AND remote_exists IS NOT ?2",
            )
            .map_err(|e| self.err(e))?;
        stmt.execute(params![folder.0, exists])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every folder row of `account` with its counts, by local name.
    pub fn folder_status(&self, account: &str) -> Result<Vec<FolderStatus>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT f.id, f.local, f.remote, f.remote_exists, f.last_sync, f.last_error,
                 (SELECT COUNT(*) FROM messages m WHERE m.folder = f.id)
                 FROM folders f WHERE f.account = ?1 ORDER BY f.local",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![account], |r| {
                Ok(FolderStatus {
                    id: FolderId(r.get(0)?),
                    local: r.get(1)?,
                    remote: r.get(2)?,
                    remote_count: r.get(3)?,
                    last_sync: r.get(4)?,
                    last_error: r.get(5)?,
                    local_count: r.get::<_, i64>(6)? as u64,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|e| self.err(e))
    }

    /// Deletes the sync state of `account` in one transaction: its folder rows (their
    /// message records and journal entries go with them) and its `daemon_status` row.
    /// The grant is [`State::delete_grant`]'s business. With `secure_delete` the freed
    /// rows are zeroed; the WAL is then checkpointed (best effort) so it keeps no older
    /// copy of the subjects and senders either.
    pub fn forget_account(&mut self, account: &str) -> Result<ForgetReport, StateError> {
        let report = self.write(|tx| {
            let messages: i64 = tx.query_row(
                "SELECT COUNT(*) FROM messages
                 WHERE folder IN (SELECT id FROM folders WHERE account = ?1)",
                params![account],
                |r| r.get(0),
            )?;
            let folders = tx.execute("DELETE FROM folders WHERE account = ?1", params![account])?;
            let status = tx.execute(
                "DELETE FROM daemon_status WHERE account = ?1",
                params![account],
            )?;
            Ok(ForgetReport {
                folders,
                messages: messages as usize,
                daemon_status: status > 0,
            })
        })?;
        if !report.is_empty() {
            // Busy (another process is reading) only delays it to a later checkpoint.
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                });
        }
        Ok(report)
    }

    /// Every account the state knows of: with folder rows, a grant, an access token or
    /// a daemon status.
    pub fn accounts_in_state(&self) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT account FROM folders UNION SELECT account FROM tokens
                 UNION SELECT account FROM access_tokens
                 UNION SELECT account FROM daemon_status ORDER BY 1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|e| self.err(e))
    }

    /// The grant of `account` as `status` shows it, read without the token key.
    pub fn grant_summary(&self, account: &str) -> Result<Option<GrantSummary>, StateError> {
        self.conn
            .query_row(
                "SELECT flow, refresh_token IS NOT NULL, scopes, granted_to, access_expires,
                 status, reason, updated FROM tokens WHERE account = ?1",
                params![account],
                |r| {
                    let status = match r.get::<_, String>(5)?.as_str() {
                        "ok" => GrantStatus::Ok,
                        _ => GrantStatus::NeedsConnect {
                            reason: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                        },
                    };
                    Ok(GrantSummary {
                        flow: r.get(0)?,
                        has_refresh_token: r.get(1)?,
                        scopes: r
                            .get::<_, String>(2)?
                            .split_whitespace()
                            .map(str::to_owned)
                            .collect(),
                        granted_to: r.get(3)?,
                        access_expires: r.get(4)?,
                        status,
                        updated: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto::TokenKey;
    use crate::flags::Flags;
    use crate::headers::Headers;
    use crate::secret::Secret;
    use crate::state::StoredGrant;
    use crate::sync::model::{Fingerprint, Record};

    fn status(state: &State, account: &str) -> DaemonStatus {
        state.daemon_state(account).unwrap().unwrap()
    }

    /// Rows changed on this connection so far.
    fn total_changes(state: &State) -> u64 {
        state.conn.total_changes()
    }

    #[test]
    fn run_state_names_round_trip() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert!("asleep".parse::<RunState>().is_err());
        assert_eq!(RunState::NeedsConnect.as_str(), "needs_connect");
    }

    #[test]
    fn since_moves_only_when_the_state_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        assert_eq!(state.daemon_state("work").unwrap(), None);

        state
            .set_daemon_state_at("work", RunState::Starting, None, 7, 1000)
            .unwrap();
        state
            .set_daemon_state_at("work", RunState::Connecting, None, 7, 1001)
            .unwrap();
        let s = status(&state, "work");
        assert_eq!(
            (s.state, s.pid, s.since, s.updated),
            (RunState::Connecting, Some(7), 1001, 1001)
        );

        // The same state with a new detail: written, since kept.
        state
            .set_daemon_state_at("work", RunState::Connecting, Some("retry 2"), 7, 1005)
            .unwrap();
        let s = status(&state, "work");
        assert_eq!(s.detail.as_deref(), Some("retry 2"));
        assert_eq!((s.since, s.updated), (1001, 1005));

        // A new state: since moves.
        state
            .set_daemon_state_at("work", RunState::Idle, None, 7, 1010)
            .unwrap();
        let s = status(&state, "work");
        assert_eq!((s.state, s.detail, s.since), (RunState::Idle, None, 1010));

        // Another process in the same state starts a new period.
        state
            .set_daemon_state_at("work", RunState::Idle, None, 8, 1020)
            .unwrap();
        let s = status(&state, "work");
        assert_eq!((s.pid, s.since), (Some(8), 1020));

        assert!(state.clear_daemon_state("work").unwrap());
        assert!(!state.clear_daemon_state("work").unwrap());
        assert_eq!(state.daemon_state("work").unwrap(), None);
        state
            .set_daemon_state_at("work", RunState::Idle, None, 8, 1020)
            .unwrap();

        // Accounts are separate.
        state
            .set_daemon_state_at("home", RunState::Backoff, Some("timeout"), 8, 1021)
            .unwrap();
        assert_eq!(status(&state, "work").state, RunState::Idle);
        assert_eq!(status(&state, "home").state, RunState::Backoff);
    }

    #[test]
    fn a_repeated_report_writes_only_as_a_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        state
            .set_daemon_state_at("work", RunState::Idle, None, 7, 1000)
            .unwrap();
        let before = total_changes(&state);
        for t in 1001..1000 + HEARTBEAT {
            state
                .set_daemon_state_at("work", RunState::Idle, None, 7, t)
                .unwrap();
        }
        assert_eq!(total_changes(&state), before, "a repeated report wrote");
        assert_eq!(status(&state, "work").updated, 1000);

        state
            .set_daemon_state_at("work", RunState::Idle, None, 7, 1000 + HEARTBEAT)
            .unwrap();
        let s = status(&state, "work");
        assert_eq!((s.since, s.updated), (1000, 1000 + HEARTBEAT));
        assert_eq!(total_changes(&state), before + 1);

        // A clock that went back writes too, rather than staying silent for long.
        state
            .set_daemon_state_at("work", RunState::Idle, None, 7, 500)
            .unwrap();
        assert_eq!(status(&state, "work").updated, 500);

        // The public entry point records this process.
        state
            .set_daemon_state("work", RunState::Polling, None)
            .unwrap();
        assert_eq!(status(&state, "work").pid, Some(std::process::id()));
    }

    fn record(folder: FolderId, uid: u32) -> (Record, Headers) {
        (
            Record {
                folder,
                uidvalidity: 1,
                uid,
                base: format!("{}.{uid}.host", folder.0),
                flags: Flags::default(),
                fingerprint: Fingerprint {
                    size: 10,
                    internaldate: 0,
                    message_id: Some(format!("<{uid}@x>")),
                },
            },
            Headers {
                subject: Some(format!("Quarterly figures {}-{uid}", folder.0)),
                ..Headers::default()
            },
        )
    }

    #[test]
    fn forget_account_cascades_and_leaves_other_accounts_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([4; 32]);
        let mut state = State::open(dir.path()).unwrap();
        let inbox = state.folder("work", "Inbox", "INBOX").unwrap().id;
        let archive = state.folder("work", "Archive", "Archive").unwrap().id;
        let other = state.folder("home", "Inbox", "INBOX").unwrap().id;
        for (folder, n) in [(inbox, 3), (archive, 2), (other, 4)] {
            let delivered: Vec<_> = (1..=n).map(|uid| record(folder, uid)).collect();
            state.commit_deliveries(folder, &delivered, &[]).unwrap();
        }
        state
            .journal_deliveries(inbox, &["pending.base".to_owned()])
            .unwrap();
        state.set_remote_exists(inbox, 3).unwrap();
        state
            .set_daemon_state("work", RunState::Idle, None)
            .unwrap();
        state
            .set_daemon_state("home", RunState::Idle, None)
            .unwrap();
        state
            .save_grant(
                &key,
                &StoredGrant {
                    account: "work".into(),
                    flow: "device".into(),
                    refresh_token: Some(Secret::new("rt")),
                    scopes: vec!["offline_access".into()],
                    granted_to: Some("jane@example.com".into()),
                    access_expires: Some(5),
                },
            )
            .unwrap();
        assert_eq!(state.accounts_in_state().unwrap(), ["home", "work"]);
        let subject = format!("Quarterly figures {}-1", inbox.0).into_bytes();
        let in_files = |subject: &[u8]| {
            ["state.sqlite", "state.sqlite-wal"].iter().any(|name| {
                let bytes = std::fs::read(dir.path().join(name)).unwrap_or_default();
                bytes.windows(subject.len()).any(|w| w == subject)
            })
        };
        assert!(in_files(&subject), "the check would prove nothing");

        let report = state.forget_account("work").unwrap();
        assert_eq!(
            report,
            ForgetReport {
                folders: 2,
                messages: 5,
                daemon_status: true
            }
        );
        assert!(state.folders("work").unwrap().is_empty());
        assert_eq!(state.records(inbox).unwrap(), []);
        assert_eq!(state.records(archive).unwrap(), []);
        assert!(state.journal("work").unwrap().is_empty());
        assert_eq!(state.daemon_state("work").unwrap(), None);
        // The grant is delete_grant's business.
        assert!(state.grant_summary("work").unwrap().is_some());
        assert_eq!(state.accounts_in_state().unwrap(), ["home", "work"]);
        // The other account is untouched.
        assert_eq!(state.records(other).unwrap().len(), 4);
        assert!(state.daemon_state("home").unwrap().is_some());

        // The headers are gone from the files too (secure_delete, then a checkpoint).
        assert!(!in_files(&subject), "work's subjects remain in the files");
        assert!(in_files(
            format!("Quarterly figures {}-1", other.0).as_bytes()
        ));

        // Twice: nothing to do.
        assert!(state.forget_account("work").unwrap().is_empty());
        assert!(state.delete_grant("work").unwrap());
        assert_eq!(state.accounts_in_state().unwrap(), ["home"]);

        // A mapping made again starts from nothing.
        let again = state.folder("work", "Inbox", "INBOX").unwrap();
        assert_eq!((again.uidvalidity, again.last_sync), (None, None));
        assert_eq!(state.count(again.id).unwrap(), 0);
    }

    #[test]
    fn folder_status_counts_and_remote_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        let inbox = state.folder("work", "Inbox", "INBOX").unwrap().id;
        let trash = state
            .folder("work", "Deleted Items", "Gel&APY-schte Elemente")
            .unwrap()
            .id;
        let delivered: Vec<_> = (1..=3).map(|uid| record(inbox, uid)).collect();
        state.commit_deliveries(inbox, &delivered, &[]).unwrap();
        state
            .set_folder_synced(inbox, 1, Some(4), None, 1234)
            .unwrap();
        state.set_folder_error(trash, "NO [TRYCREATE]").unwrap();
        state.set_remote_exists(inbox, 5).unwrap();
        let before = total_changes(&state);
        state.set_remote_exists(inbox, 5).unwrap();
        assert_eq!(total_changes(&state), before, "an unchanged count wrote");
        state.set_remote_exists(inbox, 3).unwrap();

        let rows = state.folder_status("work").unwrap();
        assert_eq!(
            rows,
            [
                FolderStatus {
                    id: trash,
                    local: "Deleted Items".into(),
                    remote: "Gel&APY-schte Elemente".into(),
                    local_count: 0,
                    remote_count: None,
                    last_sync: None,
                    last_error: Some("NO [TRYCREATE]".into()),
                },
                FolderStatus {
                    id: inbox,
                    local: "Inbox".into(),
                    remote: "INBOX".into(),
                    local_count: 3,
                    remote_count: Some(3),
                    last_sync: Some(1234),
                    last_error: None,
                },
            ]
        );
        assert!(state.folder_status("nobody").unwrap().is_empty());
    }

    #[test]
    fn grant_summary_reads_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([4; 32]);
        let mut state = State::open(dir.path()).unwrap();
        assert_eq!(state.grant_summary("work").unwrap(), None);
        state
            .save_grant(
                &key,
                &StoredGrant {
                    account: "work".into(),
                    flow: "device".into(),
                    refresh_token: Some(Secret::new("rt")),
                    scopes: vec!["a".into(), "offline_access".into()],
                    granted_to: Some("jane@example.com".into()),
                    access_expires: Some(1_700_000_000),
                },
            )
            .unwrap();
        let g = state.grant_summary("work").unwrap().unwrap();
        assert_eq!(g.status, GrantStatus::Ok);
        assert!(g.has_refresh_token);
        assert_eq!(g.scopes, ["a", "offline_access"]);
        assert_eq!(g.granted_to.as_deref(), Some("jane@example.com"));
        assert_eq!(g.access_expires, Some(1_700_000_000));
        assert_eq!(g.flow, "device");
        state.mark_needs_connect("work", "AADSTS70043").unwrap();
        assert_eq!(
            state.grant_summary("work").unwrap().unwrap().status,
            GrantStatus::NeedsConnect {
                reason: "AADSTS70043".into()
            }
        );
    }

    #[test]
    fn migration_3_applies_to_a_version_2_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &super::super::schema::MIGRATIONS[..2] {
                tx.execute_batch(sql).unwrap();
            }
            tx.execute(
                "INSERT INTO folders (account, local, remote, last_sync) VALUES ('w', 'Inbox', 'INBOX', 9)",
                [],
            )
            .unwrap();
            tx.pragma_update(None, "user_version", 2).unwrap();
            tx.commit().unwrap();
        }
        let mut state = State::open(dir.path()).unwrap();
        let row = &state.folder_status("w").unwrap()[0];
        assert_eq!((row.last_sync, row.remote_count), (Some(9), None));
        state.set_remote_exists(row.id, 1).unwrap();
        state.set_daemon_state("w", RunState::Idle, None).unwrap();
        assert_eq!(status(&state, "w").state, RunState::Idle);
    }
}
