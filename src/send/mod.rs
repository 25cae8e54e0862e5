//! Sending mail as the account: a message is queued in the outbox (the state
//! database) before anything is sent, then [`flush`] submits queued messages over
//! SMTP with the account's OAuth token, settles each by what the server answered, and
//! files the Sent copy where the server does not file one itself.
//!
//! - [`message`] (pure): recipients, Bcc, Date, Message-ID, line endings.
//! - [`sent_copy`]: the copy appended to the Sent folder, found again before it is
//!   appended a second time.
//!
//! What goes wrong is sorted once, by [`SmtpError::retry`] and
//! [`SmtpError::is_about_message`]: a refusal of the message keeps it as failed (a file
//! to look at, `status` says why); anything else leaves it queued for later.

pub mod message;
mod sent_copy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::{AuthError, TokenSource};
use crate::config::{Account, Daemon, SentCopy};
use crate::retry::Retry;
use crate::secret::Secret;
use crate::smtp::{self, Connection, SmtpError, Step};
use crate::state::{
    LockError, OutboxEntry, OutboxLock, OutboxState, Settled, State, StateError, unix_now,
};

/// How long a sender waits for another one (the daemon, a `send --flush`) to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Which queued messages a flush sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Those whose next try is due.
    Due,
    /// All of them, now (`send --flush`).
    All,
    /// One message (the one `send` just queued), if it is still queued.
    One(i64),
}

/// What a failure of the account or the server (not of one message) does to the
/// messages it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnAccountError {
    /// Kept as failed, and reported now: `send` with a person waiting, who will send
    /// again once it is fixed (so it must not go later by itself as well).
    Fail,
    /// Left queued, tried again after a delay (the daemon; `--flush`).
    Defer,
}

/// What a flush did.
#[derive(Debug, Default)]
pub struct Report {
    /// Messages the server took: (id, recipients it took).
    pub sent: Vec<(i64, Vec<String>)>,
    /// Messages left queued, with why.
    pub deferred: Vec<(i64, String)>,
    /// Messages kept as failed: (id, why, the file holding it).
    pub failed: Vec<(i64, String, PathBuf)>,
    /// Why the flush stopped early, when the account or the server failed.
    pub stopped: Option<String>,
    /// Why the Sent copies wait, if they do.
    pub copy_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot keep the failed message in {path}: {source}")]
    Keep {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an account without `smtp_host` cannot send.
pub fn no_smtp(account: &Account) -> String {
    format!(
        "account {} has no smtp_host: a custom server sends only through the SMTP server set in its table (smtp_host, smtp_port, smtp_tls)",
        account.name
    )
}

/// Where a failed message is kept as a file: `<state_dir>/failed/<account>/<id>.eml`.
pub fn failed_path(state_dir: &Path, account: &str, id: i64) -> PathBuf {
    state_dir
        .join("failed")
        .join(account)
        .join(format!("{id}.eml"))
}

/// The delay after the `attempts`-th failed try (0 for the first): 30 seconds,
/// doubling, at most an hour; at least what the server asked for.
pub fn backoff(attempts: i64, retry: Retry) -> Duration {
    let exp = attempts.clamp(0, 7) as u32;
    retry.delay(Duration::from_secs(30 * 2u64.pow(exp)).min(Duration::from_secs(3600)))
}

/// Sends the account's queued messages (see [`Which`]), then files the Sent copies.
pub async fn flush(
    account: &Account,
    daemon: &Daemon,
    which: Which,
    on_account_error: OnAccountError,
) -> Result<Report, SendError> {
    let state_dir = &daemon.state_dir;
    let _lock = OutboxLock::acquire(state_dir, &account.name, LOCK_WAIT).await?;
    let mut state = State::open(state_dir)?;
    let rows: Vec<OutboxEntry> = match which {
        Which::Due => state.outbox(&account.name, OutboxState::Queued, Some(unix_now()))?,
        Which::All => state.outbox(&account.name, OutboxState::Queued, None)?,
        Which::One(id) => state
            .outbox_entry(id)?
            .filter(|e| e.state == OutboxState::Queued)
            .into_iter()
            .collect(),
    };
    let mut report = Report::default();
    let rows = settle_doubts(account, daemon, &mut state, rows, &mut report).await?;
    if !rows.is_empty() {
        let mut sender = Sender::new(account, daemon);
        let mut rows = rows.into_iter();
        while let Some(row) = rows.next() {
            let Some(message) = state.outbox_message(row.id)? else {
                continue;
            };
            // From here until its answer is recorded, the message may reach the
            // server without this process knowing.
            state.outbox_in_doubt(row.id, unix_now())?;
            match sender.send(&row, &message).await {
                Ok(Taken { accepted, refused }) => {
                    let copy =
                        matches!(account.save_sent, SentCopy::Append(_)) && !accepted.is_empty();
                    let settled = settle(&row, refused, copy, !accepted.is_empty());
                    state.outbox_sent(row.id, &settled)?;
                    if !accepted.is_empty() {
                        tracing::info!(account = %account.name, id = row.id, message_id = %row.message_id, recipients = accepted.len(), "sent");
                        report.sent.push((row.id, accepted));
                    }
                    for to in &settled.retry {
                        report
                            .deferred
                            .push((row.id, format!("{to}: {}", settled.reason)));
                    }
                    keep_failed_split(
                        &state,
                        state_dir,
                        &account.name,
                        row.id,
                        &settled,
                        &mut report,
                    )?;
                }
                Err(Failure::Message(e)) => {
                    let why = e.to_string();
                    tracing::debug!(account = %account.name, id = row.id, "not sent, kept as failed: {why}");
                    fail(
                        &mut state,
                        state_dir,
                        &account.name,
                        &row,
                        &message,
                        &why,
                        &mut report,
                    )?;
                }
                Err(Failure::Account { why, retry, doubt }) => {
                    // Reported by the caller (the command's last line, the daemon's log).
                    tracing::debug!(account = %account.name, "sending stopped: {why}");
                    let permanent = !retry.is_transient() && retry != Retry::NewToken;
                    let first = row.id;
                    for row in std::iter::once(row).chain(rows.by_ref()) {
                        // The row tried is settled unless the server's answer never
                        // came; the rows not tried keep whatever doubt they had.
                        let answered = row.id == first && !doubt;
                        let expired = unix_now() - row.created > MAX_AGE.as_secs() as i64;
                        if expired || (permanent && on_account_error == OnAccountError::Fail) {
                            let why = if expired {
                                format!(
                                    "not sent within {} days: {why}",
                                    MAX_AGE.as_secs() / 86_400
                                )
                            } else {
                                why.clone()
                            };
                            let message = state.outbox_message(row.id)?.unwrap_or_default();
                            fail(
                                &mut state,
                                state_dir,
                                &account.name,
                                &row,
                                &message,
                                &why,
                                &mut report,
                            )?;
                        } else {
                            // A problem someone must fix is not retried every minute.
                            let wait = if permanent {
                                Duration::from_secs(30 * 60)
                            } else {
                                backoff(row.attempts, retry)
                            };
                            state.outbox_defer(
                                row.id,
                                unix_now() + wait.as_secs() as i64,
                                &why,
                                answered,
                            )?;
                            report.deferred.push((row.id, why.clone()));
                        }
                    }
                    report.stopped = Some(why);
                    break;
                }
            }
        }
        sender.quit().await;
    }
    if !matches!(account.save_sent, SentCopy::Append(_)) {
        // Sent, and waiting for a copy no longer wanted (save_sent changed).
        for row in state.outbox(&account.name, OutboxState::Copy, None)? {
            state.outbox_done(row.id)?;
        }
    } else {
        match sent_copy::file(account, daemon, &mut state).await {
            Ok(n) => tracing::debug!(account = %account.name, filed = n, "Sent copies"),
            Err(e) => {
                tracing::debug!(account = %account.name, "the Sent copy waits: {e}");
                report.copy_error = Some(e);
            }
        }
    }
    Ok(report)
}

/// A message not sent within this long fails (as a file), like an MTA's bounce after
/// its queue lifetime: a queue must not hold mail nobody hears about for ever.
pub const MAX_AGE: Duration = Duration::from_secs(5 * 24 * 60 * 60);

/// How long after a message was left in doubt its Sent folder is looked at: the
/// server may still be filing it when the sender comes back at once.
pub const DOUBT_GRACE: Duration = Duration::from_secs(15);

/// Takes the messages a killed or cut-off sender left in doubt out of `rows`: where
/// the server files what it accepted in Sent (`save_sent = "server"`), one found
/// there was sent and is done, one not found goes again, and one left in doubt less
/// than [`DOUBT_GRACE`] ago waits until then. Elsewhere nothing can tell: it goes
/// again, and may reach its recipients twice (said in the log). The rows to send.
async fn settle_doubts(
    account: &Account,
    daemon: &Daemon,
    state: &mut State,
    rows: Vec<OutboxEntry>,
    report: &mut Report,
) -> Result<Vec<OutboxEntry>, SendError> {
    let (doubtful, mut rows): (Vec<OutboxEntry>, Vec<OutboxEntry>) =
        rows.into_iter().partition(|r| r.in_doubt.is_some());
    if doubtful.is_empty() {
        return Ok(rows);
    }
    // A partial row's Message-ID is in Sent from the first recipients' send: finding it
    // there tells nothing about this row's recipients.
    let (unknowable, doubtful): (Vec<OutboxEntry>, Vec<OutboxEntry>) = doubtful
        .into_iter()
        .partition(|r| r.partial || account.save_sent != SentCopy::ByServer);
    for row in &unknowable {
        tracing::warn!(account = %account.name, id = row.id, message_id = %row.message_id, "sending again a message whose sending was cut off: if the server had taken it, its recipients get it twice (save_sent = \"server\" looks in Sent first, for servers that file sent mail there)");
    }
    rows.extend(unknowable);
    rows.sort_by_key(|r| r.id);
    if doubtful.is_empty() {
        return Ok(rows);
    }
    let now = unix_now();
    let grace = DOUBT_GRACE.as_secs() as i64;
    let (ripe, young): (Vec<OutboxEntry>, Vec<OutboxEntry>) = doubtful
        .into_iter()
        .partition(|r| r.in_doubt.is_some_and(|t| now - t >= grace));
    for row in young {
        let at = row.in_doubt.unwrap_or(now) + grace;
        let why = "its sending was cut off; the Sent folder is looked at before it goes again";
        state.outbox_defer(row.id, at, why, false)?;
        report.deferred.push((row.id, why.to_owned()));
    }
    if !ripe.is_empty() {
        let ids: Vec<String> = ripe.iter().map(|r| r.message_id.clone()).collect();
        match sent_copy::holds(account, daemon, &ids).await {
            Ok(found) => {
                for (row, there) in ripe.into_iter().zip(found) {
                    if there {
                        tracing::info!(account = %account.name, id = row.id, message_id = %row.message_id, "found in Sent: it was sent before the sender stopped");
                        state.outbox_done(row.id)?;
                        report.sent.push((row.id, row.recipients.clone()));
                    } else {
                        rows.push(row);
                    }
                }
            }
            Err(e) => {
                let why =
                    format!("cannot look in Sent for a message whose sending was cut off: {e}");
                for row in ripe {
                    let at =
                        unix_now() + backoff(row.attempts, Retry::Later(None)).as_secs() as i64;
                    state.outbox_defer(row.id, at, &why, false)?;
                    report.deferred.push((row.id, why.clone()));
                }
            }
        }
        rows.sort_by_key(|r| r.id);
    }
    Ok(rows)
}

/// Sorts a sent message's refused recipients: for now (a new queued row), for good (a
/// failed row).
fn settle(
    row: &OutboxEntry,
    refused: Vec<(String, SmtpError)>,
    copy: bool,
    partial: bool,
) -> Settled {
    let mut s = Settled {
        copy,
        partial,
        ..Settled::default()
    };
    let mut reasons = Vec::new();
    let mut retry = Retry::Later(None);
    for (to, e) in refused {
        if e.retry().is_transient() {
            retry = e.retry();
            s.retry.push(to);
        } else {
            s.failed.push(to);
        }
        reasons.push(e.to_string());
    }
    s.retry_at = unix_now() + backoff(row.attempts, retry).as_secs() as i64;
    s.reason = reasons.join("; ");
    s
}

/// Writes the failed part of a split message to its file.
fn keep_failed_split(
    state: &State,
    state_dir: &Path,
    account: &str,
    id: i64,
    settled: &Settled,
    report: &mut Report,
) -> Result<(), SendError> {
    if settled.failed.is_empty() {
        return Ok(());
    }
    for row in state.outbox(account, OutboxState::Failed, None)? {
        let path = failed_path(state_dir, account, row.id);
        if row.id > id && !path.exists() {
            let message = state.outbox_message(row.id)?.unwrap_or_default();
            keep_file(&path, &message, &row.sender, &row.recipients)?;
            report
                .failed
                .push((row.id, row.last_error.clone().unwrap_or_default(), path));
        }
    }
    Ok(())
}

fn fail(
    state: &mut State,
    state_dir: &Path,
    account: &str,
    row: &OutboxEntry,
    message: &[u8],
    why: &str,
    report: &mut Report,
) -> Result<(), SendError> {
    let path = failed_path(state_dir, account, row.id);
    // Recorded even if the file cannot be written: the bytes stay in the row, and a
    // row still queued would be sent, and refused, again and again.
    let kept = keep_file(&path, message, &row.sender, &row.recipients);
    state.outbox_fail(row.id, why)?;
    kept?;
    report.failed.push((row.id, why.to_owned(), path));
    Ok(())
}

/// The message as a file a person can open or send again, and beside it
/// (`ID.envelope`) its envelope: the sender and the recipients this row was for (the
/// Bcc ones are in no header), as the command that sends it again:
/// `mailsync send -f SENDER -- RECIPIENT… < ID.eml`.
pub fn keep_file(
    path: &Path,
    message: &[u8],
    sender: &str,
    recipients: &[String],
) -> Result<(), SendError> {
    let envelope = format!(
        "mailsync send -f {sender} -- {} < {}\n",
        recipients.join(" "),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("")
    );
    write_atomically(&path.with_extension("envelope"), envelope.as_bytes())?;
    write_atomically(path, message)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SendError> {
    let err = |source| SendError::Keep {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// What the server said to one message's recipients: it took it for `accepted`
/// (perhaps none), and refused it for the others.
struct Taken {
    accepted: Vec<String>,
    refused: Vec<(String, SmtpError)>,
}

enum Failure {
    /// This message was refused for good; others may go.
    Message(SmtpError),
    /// The account, the token or the server failed: no message goes now. `doubt`:
    /// the message had gone out when the connection failed, without an answer.
    Account {
        why: String,
        retry: Retry,
        doubt: bool,
    },
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Failure {
        Failure::Account {
            retry: e.retry(),
            why: e.to_string(),
            doubt: false,
        }
    }
}

/// One connection, opened for the first message and reused for the rest.
struct Sender<'a> {
    account: &'a Account,
    daemon: &'a Daemon,
    tokens: Option<TokenSource>,
    connection: Option<Connection>,
}

impl<'a> Sender<'a> {
    fn new(account: &'a Account, daemon: &'a Daemon) -> Sender<'a> {
        Sender {
            account,
            daemon,
            tokens: None,
            connection: None,
        }
    }

    async fn token(&mut self, fresh: bool) -> Result<Secret, Failure> {
        if self.tokens.is_none() {
            self.tokens = Some(TokenSource::new(self.account, &self.daemon.state_dir)?);
        }
        let tokens = self.tokens.as_mut().expect("just set");
        if fresh {
            tokens.invalidate();
            Ok(tokens.request_access_token().await?)
        } else {
            Ok(tokens.access_token().await?)
        }
    }

    /// A connection signed in: a refused token is replaced once.
    async fn connection(&mut self) -> Result<&mut Connection, Failure> {
        if self.connection.is_none() {
            let account = Failure::account;
            let mut fresh = false;
            let connection = loop {
                let token = self.token(fresh).await?;
                let Some(endpoint) = &self.account.smtp else {
                    return Err(Failure::Account {
                        why: no_smtp(self.account),
                        retry: Retry::Never,
                        doubt: false,
                    });
                };
                let mut c = smtp::connect(endpoint, self.daemon.command_timeout)
                    .await
                    .map_err(account)?;
                match c.authenticate(&self.account.login_user, &token).await {
                    Ok(_) => break c,
                    Err(e) if e.retry() == Retry::NewToken && !fresh => {
                        tracing::debug!(account = %self.account.name, "SMTP refused the token ({e}); trying a new one");
                        c.quit().await;
                        fresh = true;
                    }
                    Err(e) => {
                        c.quit().await;
                        return Err(Failure::Account {
                            why: e.to_string(),
                            // Refused twice: not for a retry every minute.
                            retry: match e.retry() {
                                Retry::NewToken => Retry::Never,
                                r => r,
                            },
                            doubt: false,
                        });
                    }
                }
            };
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("just set"))
    }

    async fn send(&mut self, row: &OutboxEntry, message: &[u8]) -> Result<Taken, Failure> {
        let result = self.try_send(row, message).await;
        if let Err(Failure::Account { .. }) = &result {
            // The connection may be out of step: a new one for the next message.
            if let Some(c) = self.connection.take() {
                c.quit().await;
            }
        }
        result
    }

    async fn try_send(&mut self, row: &OutboxEntry, message: &[u8]) -> Result<Taken, Failure> {
        let eight_bit = message.iter().any(|&b| b >= 0x80);
        let c = self.connection().await?;
        let envelope = match c
            .envelope(
                &row.sender,
                &row.recipients,
                message.len() as u64,
                eight_bit,
            )
            .await
        {
            Ok(e) => e,
            Err(e) => {
                if e.is_about_message() {
                    let _ = c.rset().await;
                }
                return Err(Failure::of(e));
            }
        };
        if envelope.accepted.is_empty() {
            let _ = c.rset().await;
            return Ok(Taken {
                accepted: Vec::new(),
                refused: envelope.refused,
            });
        }
        match c.data(message).await {
            Ok(_) => Ok(Taken {
                accepted: envelope.accepted,
                refused: envelope.refused,
            }),
            Err(e) => {
                // A refused DATA leaves the transaction open (a refused message ends
                // it; RSET then does no harm): the next message starts clean.
                if e.is_about_message() {
                    let _ = c.rset().await;
                }
                Err(Failure::of(e))
            }
        }
    }

    async fn quit(self) {
        if let Some(c) = self.connection {
            c.quit().await;
        }
    }
}

impl Failure {
    fn account(e: SmtpError) -> Failure {
        let doubt = matches!(
            &e,
            SmtpError::Timeout {
                step: Step::EndOfData,
                ..
            } | SmtpError::ConnectionLost {
                step: Step::EndOfData,
                ..
            }
        );
        Failure::Account {
            retry: e.retry(),
            why: e.to_string(),
            doubt,
        }
    }

    fn of(e: SmtpError) -> Failure {
        if e.is_about_message() {
            Failure::Message(e)
        } else {
            Failure::account(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_an_hour_and_heed_the_server() {
        let secs = |n| backoff(n, Retry::Later(None)).as_secs();
        assert_eq!(
            [secs(0), secs(1), secs(2), secs(6), secs(7), secs(50)],
            [30, 60, 120, 1920, 3600, 3600]
        );
        assert_eq!(
            backoff(0, Retry::Later(Some(Duration::from_secs(300)))).as_secs(),
            300
        );
        assert_eq!(backoff(-1, Retry::Later(None)).as_secs(), 30);
    }
}
