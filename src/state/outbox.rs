//! The outbox of `mailsync send`: a message is a row from the moment `send` took it
//! (the commit is the promise that it will be sent) until the server accepted it, and,
//! where a copy goes to the Sent folder, until the copy is filed. A message refused
//! for good stays as a `failed` row. Each change of a row is one transaction, so a
//! killed sender leaves every message either still queued (sent again: at worst one
//! duplicate, if the kill fell between the server's reply and the commit) or done.

use rusqlite::{OptionalExtension, params};

use super::{State, StateError, unix_now};

/// Where a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxState {
    /// Waiting to be sent (at `next_try` at the earliest).
    Queued,
    /// Sent; the copy for the Sent folder is still to be filed.
    Copy,
    /// Refused for good; kept, never sent again by itself.
    Failed,
}

impl OutboxState {
    fn as_str(self) -> &'static str {
        match self {
            OutboxState::Queued => "queued",
            OutboxState::Copy => "copy",
            OutboxState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> OutboxState {
        match s {
            "copy" => OutboxState::Copy,
            "failed" => OutboxState::Failed,
            _ => OutboxState::Queued,
        }
    }
}

/// A message to queue.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    pub sender: &'a str,
    pub recipients: &'a [String],
    pub message_id: &'a str,
    /// The message as it will be sent: CRLF line endings, Bcc removed.
    pub message: &'a [u8],
}

/// A row, without the message's bytes ([`State::outbox_message`] reads them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub account: String,
    pub created: i64,
    pub sender: String,
    pub recipients: Vec<String>,
    pub message_id: String,
    pub state: OutboxState,
    pub attempts: i64,
    pub next_try: i64,
    pub last_error: Option<String>,
    pub size: i64,
    /// When a transaction that may have reached the server began, if its answer was
    /// never recorded (the sender was killed, or the connection lost, after the
    /// message went out).
    pub in_doubt: Option<i64>,
    /// For some of a message's recipients, split off after the others got it.
    pub partial: bool,
}

/// What became of a sent message's recipients.
#[derive(Clone, Debug, Default)]
pub struct Settled {
    /// Refused for now (4xx): a new queued row for them, tried again at `retry_at`.
    pub retry: Vec<String>,
    pub retry_at: i64,
    /// Refused for good (5xx): a new failed row for them, with `reason`.
    pub failed: Vec<String>,
    pub reason: String,
    /// A copy goes to the Sent folder: the row stays as `copy` until it is filed.
    pub copy: bool,
    /// Some recipients got it: the new rows are `partial` (their Message-ID is in Sent
    /// already, so it tells nothing about them).
    pub partial: bool,
}

/// For `mailsync status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxSummary {
    pub queued: u64,
    pub failed: u64,
    /// The earliest `next_try` of a queued message.
    pub next_try: Option<i64>,
    /// The last error of the queued message tried most.
    pub last_error: Option<String>,
    /// The reason of the newest failed message.
    pub last_failure: Option<String>,
}

const COLUMNS: &str = "id, account, created, sender, recipients, message_id, state, attempts, next_try, last_error, length(message), in_doubt, partial";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let recipients: String = r.get(4)?;
    let state: String = r.get(6)?;
    Ok(OutboxEntry {
        id: r.get(0)?,
        account: r.get(1)?,
        created: r.get(2)?,
        sender: r.get(3)?,
        recipients: recipients.lines().map(str::to_owned).collect(),
        message_id: r.get(5)?,
        state: OutboxState::parse(&state),
        attempts: r.get(7)?,
        next_try: r.get(8)?,
        last_error: r.get(9)?,
        size: r.get(10)?,
        in_doubt: r.get(11)?,
        partial: r.get(12)?,
    })
}

impl State {
    /// Queues a message; once this returns, it will be sent.
    pub fn enqueue(&mut self, account: &str, m: &NewMessage<'_>) -> Result<i64, StateError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO outbox (account, created, sender, recipients, message_id, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    account,
                    unix_now(),
                    m.sender,
                    m.recipients.join("\n"),
                    m.message_id,
                    m.message
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// The account's messages in `state`, oldest first; queued ones only when due at
    /// `due` (all of them with `None`).
    pub fn outbox(
        &self,
        account: &str,
        state: OutboxState,
        due: Option<i64>,
    ) -> Result<Vec<OutboxEntry>, StateError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM outbox WHERE account = ?1 AND state = ?2 AND next_try <= ?3 ORDER BY id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![account, state.as_str(), due.unwrap_or(i64::MAX)],
                entry,
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// One row, if it is still there.
    pub fn outbox_entry(&self, id: i64) -> Result<Option<OutboxEntry>, StateError> {
        let sql = format!("SELECT {COLUMNS} FROM outbox WHERE id = ?1");
        self.conn
            .query_row(&sql, params![id], entry)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The bytes of a queued message.
    pub fn outbox_message(&self, id: i64) -> Result<Option<Vec<u8>>, StateError> {
        self.conn
            .query_row(
                "SELECT message FROM outbox WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The server took the message for some recipients: the others get rows of their
    /// own, and this one is done (or waits for its Sent copy).
    pub fn outbox_sent(&mut self, id: i64, s: &Settled) -> Result<(), StateError> {
        self.write(|tx| {
            let split = |recipients: &[String], state: &str, next_try: i64, error: &str| {
                tx.execute(
                    "INSERT INTO outbox (account, created, sender, recipients, message_id, message, state, attempts, next_try, last_error, partial)
                     SELECT account, created, sender, ?2, message_id, message, ?3, attempts + 1, ?4, ?5, ?6 OR partial
                     FROM outbox WHERE id = ?1",
                    params![id, recipients.join("\n"), state, next_try, error, s.partial],
                )
            };
            if !s.retry.is_empty() {
                split(&s.retry, "queued", s.retry_at, &s.reason)?;
            }
            if !s.failed.is_empty() {
                split(&s.failed, "failed", 0, &s.reason)?;
            }
            if s.copy {
                tx.execute(
                    "UPDATE outbox SET state = 'copy', attempts = attempts + 1, in_doubt = NULL WHERE id = ?1",
                    params![id],
                )?;
            } else {
                tx.execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
            }
            Ok(())
        })
    }

    /// A transaction for the message begins: until its answer is recorded, the
    /// message may or may not have reached the server.
    pub fn outbox_in_doubt(&mut self, id: i64, since: i64) -> Result<(), StateError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE outbox SET in_doubt = ?2 WHERE id = ?1",
                params![id, since],
            )
            .map(|_| ())
        })
    }

    /// Not sent now; tried again at `next_try`. `settled`: the server answered (so
    /// the message is no longer in doubt); else the doubt stays.
    pub fn outbox_defer(
        &mut self,
        id: i64,
        next_try: i64,
        error: &str,
        settled: bool,
    ) -> Result<(), StateError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_try = ?2, last_error = ?3,
                 in_doubt = CASE WHEN ?4 THEN NULL ELSE in_doubt END WHERE id = ?1",
                params![id, next_try, error, settled],
            )
            .map(|_| ())
        })
    }

    /// Refused for good: kept, never sent again by itself.
    pub fn outbox_fail(&mut self, id: i64, reason: &str) -> Result<(), StateError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?2, in_doubt = NULL WHERE id = ?1",
                params![id, reason],
            )
            .map(|_| ())
        })
    }

    /// The Sent copy is filed (or needs no filing): the message is done.
    pub fn outbox_done(&mut self, id: i64) -> Result<(), StateError> {
        self.write(|tx| {
            tx.execute("DELETE FROM outbox WHERE id = ?1", params![id])
                .map(|_| ())
        })
    }

    /// Counts and the latest errors, for `mailsync status`.
    pub fn outbox_summary(&self, account: &str) -> Result<OutboxSummary, StateError> {
        let q = || -> rusqlite::Result<OutboxSummary> {
            let (queued, next_try): (i64, Option<i64>) = self.conn.query_row(
                "SELECT COUNT(*), MIN(next_try) FROM outbox WHERE account = ?1 AND state IN ('queued', 'copy')",
                params![account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let failed: i64 = self.conn.query_row(
                "SELECT COUNT(*) FROM outbox WHERE account = ?1 AND state = 'failed'",
                params![account],
                |r| r.get(0),
            )?;
            let last_error = self
                .conn
                .query_row(
                    "SELECT last_error FROM outbox WHERE account = ?1 AND state IN ('queued', 'copy') AND last_error IS NOT NULL
                     ORDER BY attempts DESC, id LIMIT 1",
                    params![account],
                    |r| r.get(0),
                )
                .optional()?;
            let last_failure = self
                .conn
                .query_row(
                    "SELECT last_error FROM outbox WHERE account = ?1 AND state = 'failed' ORDER BY id DESC LIMIT 1",
                    params![account],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            Ok(OutboxSummary {
                queued: queued as u64,
                failed: failed as u64,
                next_try: next_try.filter(|_| queued > 0),
                last_error: last_error.flatten(),
                last_failure,
            })
        };
        q().map_err(|e| self.err(e))
    }

    /// Every row of the account, with the bytes (for `stop`, which saves them as files
    /// before [`State::outbox_forget`]).
    pub fn outbox_all(&self, account: &str) -> Result<Vec<(OutboxEntry, Vec<u8>)>, StateError> {
        let sql = format!("SELECT {COLUMNS}, message FROM outbox WHERE account = ?1 ORDER BY id");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        stmt.query_map(params![account], |r| Ok((entry(r)?, r.get(13)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))
    }

    /// Deletes the account's outbox.
    pub fn outbox_forget(&mut self, account: &str) -> Result<usize, StateError> {
        self.write(|tx| tx.execute("DELETE FROM outbox WHERE account = ?1", params![account]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(state: &mut State, to: &[&str]) -> i64 {
        let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
        state
            .enqueue(
                "work",
                &NewMessage {
                    sender: "jane@example.com",
                    recipients: &to,
                    message_id: "m1@example.com",
                    message: b"Subject: x\r\n\r\nbody\r\n",
                },
            )
            .unwrap()
    }

    /// A message lives as a row until done; a split sends each recipient's share to
    /// its own row, and the counts `status` shows follow.
    #[test]
    fn a_message_stays_until_done_and_splits_by_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        let id = queue(&mut state, &["a@x", "b@x", "c@x"]);
        let due = state
            .outbox("work", OutboxState::Queued, Some(unix_now()))
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].recipients, ["a@x", "b@x", "c@x"]);
        assert_eq!(due[0].size, 20);

        state.outbox_in_doubt(id, 5).unwrap();
        assert_eq!(state.outbox_entry(id).unwrap().unwrap().in_doubt, Some(5));
        state
            .outbox_defer(id, unix_now() + 60, "lost", false)
            .unwrap();
        assert_eq!(
            state.outbox_entry(id).unwrap().unwrap().in_doubt,
            Some(5),
            "no answer: still in doubt"
        );
        state
            .outbox_defer(id, unix_now() + 60, "451 later", true)
            .unwrap();
        assert_eq!(state.outbox_entry(id).unwrap().unwrap().in_doubt, None);
        assert!(
            state
                .outbox("work", OutboxState::Queued, Some(unix_now()))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            state
                .outbox("work", OutboxState::Queued, None)
                .unwrap()
                .len(),
            1
        );
        let s = state.outbox_summary("work").unwrap();
        assert_eq!((s.queued, s.failed), (1, 0));
        assert_eq!(s.last_error.as_deref(), Some("451 later"));

        state
            .outbox_sent(
                id,
                &Settled {
                    retry: vec!["b@x".into()],
                    retry_at: 0,
                    failed: vec!["c@x".into()],
                    reason: "550 5.1.1 unknown".into(),
                    copy: true,
                    partial: true,
                },
            )
            .unwrap();
        let copy = state.outbox("work", OutboxState::Copy, None).unwrap();
        assert_eq!(copy.len(), 1);
        let retry = state.outbox("work", OutboxState::Queued, None).unwrap();
        assert_eq!(retry[0].recipients, ["b@x"]);
        assert_eq!(retry[0].attempts, 3);
        assert!(retry[0].partial && !copy[0].partial);
        let failed = state.outbox("work", OutboxState::Failed, None).unwrap();
        assert_eq!(failed[0].recipients, ["c@x"]);
        assert_eq!(
            state.outbox_message(failed[0].id).unwrap().unwrap(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
        state.outbox_done(copy[0].id).unwrap();
        let s = state.outbox_summary("work").unwrap();
        assert_eq!((s.queued, s.failed), (1, 1));
        assert_eq!(s.last_failure.as_deref(), Some("550 5.1.1 unknown"));
        assert_eq!(
            state.outbox_summary("other").unwrap(),
            OutboxSummary::default()
        );
        assert_eq!(state.outbox_all("work").unwrap().len(), 2);
        assert_eq!(state.outbox_forget("work").unwrap(), 2);
    }
}
