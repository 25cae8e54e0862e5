//! Phase 3's downloads: the new messages of every folder, on up to `lanes` connections.
//!
//! The work is handed out in parts, runs of one folder's UIDs. A lane (one IMAP
//! connection, one SQLite connection) takes a part, downloads it, and takes the next,
//! so one large folder (an Archive of 100,000 messages beside a small Inbox) keeps
//! every connection busy, not one of them while the others sit idle. A lane takes a
//! share of what is left (guided self-scheduling: 1/(2 × lanes), never less than a
//! few batches), so parts shrink towards the end and the lanes finish together. A
//! lane keeps to the folder its connection has selected while that folder has work,
//! and otherwise takes the folder with the most left.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::auth::TokenSource;
use crate::config::{Account, Config};
use crate::headers::Headers;
use crate::imap::{self, BodyStep, ImapError, Session};
use crate::maildir::Maildir;
use crate::retry::Retry;
use crate::state::State;

use super::error::{SyncError, folder_failure};
use super::login::{SharedTokens, login_shared};
use super::model::{FolderId, Record};
use super::options::{SyncOptions, check_stop};
use super::report::FolderReport;
use super::writer::{Job, Queued, Writer};

/// One folder of the download phase: what a lane needs to know of it.
pub(super) struct Folder {
    pub id: FolderId,
    pub local: String,
    /// The name on the wire, for SELECT.
    pub remote: String,
    /// The name for people, for errors.
    pub display: String,
    pub maildir: Maildir,
    /// What the listing's SELECT said; `None` when the folder provably did not change
    /// (nothing to download, nothing to mark).
    pub selected: Option<imap::Selected>,
    /// New messages, in UID order.
    pub uids: Vec<u32>,
    /// RFC822.SIZE of new messages, where the listing asked for it: what bounds the
    /// data a server may send for them.
    pub sizes: HashMap<u32, u64>,
}

/// What came of one folder's downloads.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub fetched: u64,
    pub bytes: u64,
    /// The folder failed; the text is also in its row.
    pub error: Option<String>,
}

/// Downloads every folder's new messages, on more than one connection for a large
/// download (up to `max_connections`); `session` (the listing's) serves the first
/// lane. The caller marks each folder synced once this and the pass's local changes
/// are all in (a watermark committed earlier would hide from the next pass the changes
/// a kill cut short). At the end one
/// working session is handed back when `give_back` (the daemon's IDLE connection),
/// the others log out as their lanes run dry. Returns each folder's outcome, in the
/// order of `folders`.
pub(super) async fn run(
    config: &Config,
    account: &Account,
    options: &SyncOptions,
    tokens: &mut TokenSource,
    session: Session,
    give_back: bool,
    folders: &[Folder],
) -> Result<Vec<Outcome>, SyncError> {
    let to_fetch: usize = folders.iter().map(|f| f.uids.len()).sum();
    let local_cores = account
        .imap
        .is_local()
        .then(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let lanes = lanes(to_fetch, config.daemon.max_connections, local_cores);
    let mut work = Vec::with_capacity(folders.len());
    for f in folders {
        let left = if f.uids.is_empty() || f.selected.is_none() {
            // Nothing new: done now, no lane will take it.
            options.progress.folder_started(&f.local, 0);
            options
                .progress
                .folder_finished(&report(f, &Outcome::default()));
            VecDeque::new()
        } else {
            f.uids.iter().copied().collect()
        };
        work.push(Work {
            left,
            in_flight: 0,
            started: false,
            outcome: Outcome::default(),
        });
    }
    let ctx = Lanes {
        config,
        account,
        options,
        folders,
        lanes,
        queue: Mutex::new(Queue {
            work,
            running: lanes,
        }),
        tokens: SharedTokens::new(tokens),
        give_back,
        kept: Mutex::new(None),
    };
    let mut first = Some(session);
    let results = futures::future::join_all((0..lanes).map(|_| lane(&ctx, first.take()))).await;
    let Lanes { queue, kept, .. } = ctx;
    if let Some(s) = kept.into_inner().ok().flatten()
        && let Ok(mut slot) = options.connection.lock()
    {
        *slot = Some(s);
    }
    for r in results {
        r?;
    }
    let work = queue.into_inner().unwrap_or_else(|e| e.into_inner()).work;
    Ok(work.into_iter().map(|w| w.outcome).collect())
}

/// Connections for downloading `to_fetch` messages; `local_cores` is the machine's
/// cores when the server runs on it.
fn lanes(to_fetch: usize, max_connections: u32, local_cores: Option<usize>) -> usize {
    // Another connection costs a TLS handshake and a login (tens of milliseconds on
    // loopback, more over the Internet); it pays only for a large download.
    let lanes = (1 + to_fetch / MESSAGES_PER_EXTRA_CONNECTION).min(max_connections as usize);
    // A server on this machine shares its cores with us; past one connection per core
    // (two at least, to overlap one's waits with the other's work) more only add
    // contention. Measured on 2 cores, 20,000 messages from a loopback Dovecot, 5 runs:
    // 2 connections 3.13-3.29 s, 4 connections 3.46-3.64 s with 15 % more CPU.
    match local_cores {
        Some(cores) => lanes.min(cores.max(2)),
        None => lanes,
    }
    .max(1)
}

/// Messages to download per connection beyond the first.
const MESSAGES_PER_EXTRA_CONNECTION: usize = 1000;

/// A share of one folder's work for one lane.
struct Part {
    folder: usize,
    uids: Vec<u32>,
}

/// One folder's work left, shared by the lanes.
struct Work {
    /// UIDs not handed to a lane yet.
    left: VecDeque<u32>,
    /// Parts being downloaded.
    in_flight: usize,
    started: bool,
    outcome: Outcome,
}

impl Work {
    fn done(&self) -> bool {
        self.left.is_empty() && self.in_flight == 0
    }
}

struct Queue {
    work: Vec<Work>,
    /// Lanes that have not ended.
    running: usize,
}

impl Queue {
    /// The next part for a lane whose connection has folder `selected` selected, and
    /// whether it is the folder's first. `None` when nothing is left; the lane then
    /// ends (in the same step, so a part handed back by another lane is never left
    /// behind).
    fn take(
        &mut self,
        selected: Option<usize>,
        lanes: usize,
        batch: usize,
    ) -> Option<(Part, bool)> {
        let left: usize = self.work.iter().map(|w| w.left.len()).sum();
        let same = selected.filter(|&i| !self.work[i].left.is_empty());
        let Some(i) = same.or_else(|| {
            (0..self.work.len())
                .filter(|&i| !self.work[i].left.is_empty())
                .max_by_key(|&i| self.work[i].left.len())
        }) else {
            self.running -= 1;
            return None;
        };
        let w = &mut self.work[i];
        let n = if lanes == 1 {
            w.left.len()
        } else {
            (left / (2 * lanes))
                .max(MIN_PART_BATCHES * batch)
                .min(w.left.len())
        };
        w.in_flight += 1;
        let first = !std::mem::replace(&mut w.started, true);
        let uids = w.left.drain(..n).collect();
        Some((Part { folder: i, uids }, first))
    }

    /// Takes back the part of a lane that cannot go on (its login failed), for the
    /// others; false (nothing taken) when no other lane is running.
    fn hand_back(&mut self, folder: usize, uids: &[u32]) -> bool {
        if self.running <= 1 {
            return false;
        }
        let w = &mut self.work[folder];
        for &uid in uids.iter().rev() {
            w.left.push_front(uid);
        }
        w.in_flight -= 1;
        self.running -= 1;
        true
    }
}

/// A part never has fewer than this many batches, unless its folder has fewer left:
/// each part costs a pipeline start (one round trip), and a SELECT when its lane
/// switches folder.
const MIN_PART_BATCHES: usize = 4;

/// What the lanes share.
struct Lanes<'a> {
    config: &'a Config,
    account: &'a Account,
    options: &'a SyncOptions,
    folders: &'a [Folder],
    lanes: usize,
    queue: Mutex<Queue>,
    tokens: SharedTokens<'a>,
    /// A session goes back to the caller: the first lane to end with a working one
    /// leaves it in `kept`.
    give_back: bool,
    kept: Mutex<Option<Session>>,
}

impl Lanes<'_> {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A lane never panics holding the lock; if one did, its panic is the error.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One lane: takes parts until none is left, then hands its session back or logs out.
async fn lane(ctx: &Lanes<'_>, mut session: Option<Session>) -> Result<(), SyncError> {
    let result = lane_parts(ctx, &mut session).await;
    let Some(s) = session else {
        return result;
    };
    if ctx.give_back
        && result.is_ok()
        && let Ok(mut kept) = ctx.kept.lock()
        && kept.is_none()
    {
        *kept = Some(s);
        return result;
    }
    s.logout().await;
    result
}

async fn lane_parts(ctx: &Lanes<'_>, session: &mut Option<Session>) -> Result<(), SyncError> {
    let options = ctx.options;
    let batch = ctx.config.daemon.batch_size.max(1) as usize;
    let mut state: Option<State> = None;
    loop {
        if let Err(e) = check_stop(options) {
            ctx.queue().running -= 1;
            return Err(e);
        }
        let selected = session
            .as_ref()
            .and_then(|s| s.selected_folder())
            .and_then(|name| ctx.folders.iter().position(|f| f.remote == name));
        let taken = ctx.queue().take(selected, ctx.lanes, batch);
        let Some((part, first)) = taken else {
            return Ok(());
        };
        let f = &ctx.folders[part.folder];
        if first {
            let total = f.uids.len() as u64;
            options.progress.folder_started(&f.local, total);
        }
        let state = match &mut state {
            Some(s) => s,
            None => state.insert(State::open(&ctx.config.daemon.state_dir)?),
        };
        let mut counts = Counts::default();
        let span = tracing::info_span!("folder", name = %f.local);
        let result = download_part(ctx, session, state, f, &part.uids, &mut counts)
            .instrument(span)
            .await;
        {
            let mut q = ctx.queue();
            let outcome = &mut q.work[part.folder].outcome;
            outcome.fetched += counts.fetched;
            outcome.bytes += counts.bytes;
        }
        let error = match result {
            Ok(()) => None,
            Err(PartError::NoLogin(uids, e)) => {
                // Another lane can do it (this one was an extra connection the server
                // may limit); the last lane fails the folder, as one connection would.
                if ctx.queue().hand_back(part.folder, &uids) {
                    tracing::info!(account = %ctx.account.name, "another connection: {e}; going on with fewer");
                    return Ok(());
                }
                Some(e.to_string())
            }
            Err(PartError::Folder(e)) => Some(folder_failure(&f.local, &f.display, &e)),
            Err(PartError::Pass(e)) => {
                let mut q = ctx.queue();
                q.work[part.folder].in_flight -= 1;
                q.running -= 1;
                return Err(e);
            }
        };
        let finished = {
            let mut q = ctx.queue();
            let w = &mut q.work[part.folder];
            w.in_flight -= 1;
            if let Some(text) = &error {
                // The folder's other parts would fail alike: none is handed out.
                w.left.clear();
                w.outcome.error.get_or_insert_with(|| text.clone());
            }
            w.done().then(|| report(f, &w.outcome))
        };
        if let Some(text) = &error {
            state.set_folder_error(f.id, text)?;
        }
        if let Some(report) = finished {
            options.progress.folder_finished(&report);
        }
    }
}

fn report(f: &Folder, outcome: &Outcome) -> FolderReport {
    FolderReport {
        local: f.local.clone(),
        remote: f.display.clone(),
        fetched: outcome.fetched,
        bytes: outcome.bytes,
        error: outcome.error.clone(),
        ..FolderReport::default()
    }
}

/// Messages and bytes one part delivered.
#[derive(Default)]
struct Counts {
    fetched: u64,
    bytes: u64,
}

enum PartError {
    /// No session could be opened; the UIDs not downloaded.
    NoLogin(Vec<u32>, SyncError),
    /// The folder failed (the server refused, or the connection kept dropping).
    Folder(ImapError),
    /// The whole pass must stop.
    Pass(SyncError),
}

/// Downloads one part on the lane's session, opening one if it has none. A dropped
/// session (Exchange ends it when the token expires; a restart; the network) is
/// reopened, with a fresh token if needed, and the part resumes with what is not
/// committed yet.
async fn download_part(
    ctx: &Lanes<'_>,
    session: &mut Option<Session>,
    state: &mut State,
    f: &Folder,
    uids: &[u32],
    counts: &mut Counts,
) -> Result<(), PartError> {
    let Some(sel) = &f.selected else {
        return Ok(());
    };
    let mut pending = uids.to_vec();
    let mut reconnects = 0;
    loop {
        let s = match session {
            Some(s) => s,
            None => {
                // While other lanes run, a failed login hands the part to them at once
                // rather than after the retries' backoff.
                let alone = ctx.queue().running <= 1;
                let timeout = ctx.config.daemon.command_timeout;
                let attempts = if alone { ctx.options.login_attempts } else { 1 };
                match login_shared(ctx.account, timeout, &ctx.tokens, attempts).await {
                    Ok(s) => session.insert(s),
                    Err(e) => return Err(PartError::NoLogin(pending, e)),
                }
            }
        };
        let batch_size = ctx.config.daemon.batch_size;
        match download(s, state, f, &pending, batch_size, ctx.options, counts).await {
            Ok(()) => return Ok(()),
            Err(DownloadError::Stopped) => return Err(PartError::Pass(SyncError::Interrupted)),
            Err(DownloadError::Local(e)) => return Err(PartError::Pass(e)),
            Err(DownloadError::Imap(e)) => {
                if e.is_fatal_to_session() {
                    *session = None;
                }
                // Only a dropped or stalled connection, or one ended because the
                // token expired, is worth a new one now; a busy or throttling server
                // is the next pass's (or the daemon's).
                let retry = e.retry();
                if !(matches!(retry, Retry::Reconnect | Retry::NewToken)
                    && reconnects < MAX_RECONNECTS)
                {
                    return Err(PartError::Folder(e));
                }
                if retry == Retry::NewToken {
                    ctx.tokens.lock().await.invalidate();
                }
                reconnects += 1;
                tracing::warn!(account = %ctx.account.name, folder = %f.local, "{e}; reconnecting");
                let have: HashSet<u32> = state
                    .known(f.id)
                    .map_err(|e| PartError::Pass(e.into()))?
                    .into_iter()
                    .filter(|k| k.uidvalidity == sel.uidvalidity)
                    .map(|k| k.uid)
                    .collect();
                pending.retain(|uid| !have.contains(uid));
            }
        }
    }
}

/// How often one part may reconnect after a dropped session.
const MAX_RECONNECTS: u32 = 3;

enum DownloadError {
    Imap(ImapError),
    Local(SyncError),
    Stopped,
}

/// Downloads `uids` into the folder in batches: journal the batch's file names, fetch
/// and deliver each message as it streams in, fsync the directory, commit the rows.
async fn download(
    session: &mut Session,
    state: &mut State,
    f: &Folder,
    uids: &[u32],
    batch_size: u32,
    options: &SyncOptions,
    counts: &mut Counts,
) -> Result<(), DownloadError> {
    if uids.is_empty() {
        return Ok(());
    }
    let Some(uidvalidity) = f.selected.as_ref().map(|s| s.uidvalidity) else {
        return Ok(());
    };
    let local = f.local.clone();
    // One UID FETCH per batch, the next sent while the current one streams. A batch's
    // names are journaled just before its FETCH goes out, so every file the writer
    // creates has its journal entry first (recovery relies on that).
    let batches: Vec<&[u32]> = uids.chunks(batch_size.max(1) as usize).collect();
    // Journaled, not yet handed to the writer; handed to the writer, not yet written.
    // Whatever is left in either when the download ends is dropped from the journal.
    let mut pending: HashMap<u32, String> = HashMap::new();
    let mut queued: HashMap<u32, String> = HashMap::new();
    let mut delivered: Vec<(Record, Headers)> = Vec::with_capacity(COMMIT_EVERY);
    let mut last_commit = Instant::now();
    let mut local_error: Option<SyncError> = None;
    let mut stopped = false;
    let maildir = &f.maildir;
    let folder = f.id;
    let stop = &options.stop;
    let progress = &options.progress;
    let state_ref = &mut *state;
    let writer = Writer::start(
        maildir.clone(),
        folder,
        uidvalidity,
        WRITE_QUEUE,
        WRITE_QUEUE_BYTES,
    );
    // Takes what the writer finished into `delivered`; false on a write error.
    let mut collect = |results: Vec<std::io::Result<(Record, Headers)>>,
                       delivered: &mut Vec<(Record, Headers)>,
                       queued: &mut HashMap<u32, String>,
                       local_error: &mut Option<SyncError>| {
        for r in results {
            match r {
                Ok(d) => {
                    counts.fetched += 1;
                    counts.bytes += d.0.fingerprint.size;
                    queued.remove(&d.0.uid);
                    delivered.push(d);
                }
                Err(source) => {
                    *local_error = Some(SyncError::Maildir {
                        path: maildir.root().to_owned(),
                        source,
                    });
                }
            }
        }
        local_error.is_none()
    };
    // A message the writer had no room for waits here, and the next read waits for
    // the writer (asynchronously: other lanes go on meanwhile).
    let parked: Mutex<Option<Job>> = Mutex::new(None);
    let writer_stopped = AtomicBool::new(false);
    let take_parked = || parked.lock().ok().and_then(|mut p| p.take());
    let pace = || async {
        if let Some(job) = take_parked()
            && !writer.send(job).await
        {
            writer_stopped.store(true, Ordering::Relaxed);
        }
    };
    // Selecting the folder rides along with the first FETCH; if its UIDVALIDITY is
    // not the listed one (changed since), nothing is filed under it: the next pass
    // re-pairs.
    // A message may come larger than its listed size (Exchange's sizes are not exact),
    // but not without bound: a server that listed 100 bytes does not send 100 MB.
    let max_body = uids
        .iter()
        .map(|uid| f.sizes.get(uid).copied())
        .try_fold(0u64, |max, size| size.map(|s| max.max(s)))
        .map(|largest| largest.saturating_mul(2).saturating_add(1 << 20));
    let result = session
        .fetch_bodies(
            &f.remote,
            uidvalidity,
            &batches,
            max_body,
            |step| {
                let m = match step {
                    BodyStep::Sending(i) => {
                        if stop.load(Ordering::Relaxed) {
                            stopped = true;
                            return Err(local_failure());
                        }
                        let mut names = Vec::with_capacity(batches[i].len());
                        for &uid in batches[i] {
                            let base = maildir.new_base(uid);
                            names.push(base.clone());
                            pending.insert(uid, base);
                        }
                        names.sort_unstable();
                        if let Err(e) = state_ref.journal_deliveries(folder, &names) {
                            local_error = Some(e.into());
                            return Err(local_failure());
                        }
                        return Ok(());
                    }
                    BodyStep::Message(m) => m,
                };
                // Only what was asked for, once: a server repeating a message must not
                // make a duplicate.
                let Some(base) = pending.remove(&m.uid) else {
                    return Ok(());
                };
                queued.insert(m.uid, base.clone());
                let size = m.body.len() as u64;
                progress.fetched(&local, 1, size);
                let job = Job {
                    uid: m.uid,
                    base,
                    flags: m.flags,
                    internaldate: m.internaldate,
                    body: m.body,
                };
                let accepted = match writer.try_send(job) {
                    Queued::Yes => true,
                    Queued::Full(job) => {
                        if let Ok(mut p) = parked.lock() {
                            *p = Some(job);
                        }
                        true
                    }
                    Queued::Stopped => false,
                };
                if !collect(
                    writer.ready(),
                    &mut delivered,
                    &mut queued,
                    &mut local_error,
                ) || !accepted
                    || writer_stopped.load(Ordering::Relaxed)
                {
                    return Err(local_failure());
                }
                // Group commit: a crash costs at most this much re-downloading, and one
                // directory fsync and one transaction cover many messages.
                if delivered.len() >= COMMIT_EVERY || last_commit.elapsed() >= COMMIT_INTERVAL {
                    if let Err(e) = commit(state_ref, maildir, folder, &mut delivered, &[]) {
                        local_error = Some(e);
                        return Err(local_failure());
                    }
                    last_commit = Instant::now();
                }
                if stop.load(Ordering::Relaxed) {
                    stopped = true;
                    return Err(local_failure());
                }
                Ok(())
            },
            pace,
        )
        .await;
    // The last message may still be parked (or the fetch stopped right after it).
    if let Some(job) = take_parked() {
        writer.send(job).await;
    }
    // Let the writer finish what it has (the message in flight included).
    collect(
        writer.finish(),
        &mut delivered,
        &mut queued,
        &mut local_error,
    );

    // Whatever happened, commit what is on disk, and drop the journal entries of
    // messages not written (expunged meanwhile, the fetch broke, a write failed).
    let abandoned: Vec<String> = pending.into_values().chain(queued.into_values()).collect();
    commit(state, &f.maildir, folder, &mut delivered, &abandoned).map_err(DownloadError::Local)?;

    if let Some(e) = local_error {
        return Err(DownloadError::Local(e));
    }
    if stopped {
        return Err(DownloadError::Stopped);
    }
    result.map_err(DownloadError::Imap)
}

/// Messages, and bytes, waiting for the writer thread at most. Enough that the
/// download rarely waits for the writer and the writer drains several messages per
/// wake-up; the byte bound keeps a run of large messages to 1 MiB (a larger one waits
/// alone). 20,000 messages from a loopback Dovecot into tmpfs, 4 runs each (wall, CPU,
/// context switches): 2 messages 3.25-3.63 s, 2.4-2.8 s, 46,000-60,000; 64 and 4 MiB
/// 2.79-3.18 s, 1.9-2.3 s, 12,000-19,000; 64 and 1 MiB 2.87-3.07 s, 2.1-2.2 s,
/// 14,000-23,000. Peak RSS on disk, 100,000 messages: 2 messages 39-40 MB, 64 and
/// 4 MiB 48-53 MB, 64 and 1 MiB 42-43 MB.
const WRITE_QUEUE: usize = 64;
const WRITE_QUEUE_BYTES: usize = 1 << 20;

/// Messages delivered per commit at most, and the longest a delivered message waits
/// for its commit.
const COMMIT_EVERY: usize = 64;
const COMMIT_INTERVAL: Duration = Duration::from_millis(250);

/// Makes delivered files durable (directory fsync), then commits their rows.
fn commit(
    state: &mut State,
    maildir: &Maildir,
    folder: FolderId,
    delivered: &mut Vec<(Record, Headers)>,
    abandoned: &[String],
) -> Result<(), SyncError> {
    if delivered.is_empty() && abandoned.is_empty() {
        return Ok(());
    }
    if !delivered.is_empty() {
        maildir.sync_dirs().map_err(|source| SyncError::Maildir {
            path: maildir.root().to_owned(),
            source,
        })?;
    }
    state.commit_deliveries(folder, delivered, abandoned)?;
    delivered.clear();
    Ok(())
}

/// Stops a FETCH from inside its callback; the real cause is kept beside it.
fn local_failure() -> ImapError {
    ImapError::Protocol {
        command: "FETCH".into(),
        detail: "stopped by a local failure".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(sizes: &[u32], lanes: usize) -> Queue {
        let mut next = 0;
        let work = sizes
            .iter()
            .map(|&n| {
                let left = (next..next + n).collect();
                next += n;
                Work {
                    left,
                    in_flight: 0,
                    started: false,
                    outcome: Outcome::default(),
                }
            })
            .collect();
        Queue {
            work,
            running: lanes,
        }
    }

    #[test]
    fn parts_shrink_with_what_is_left_and_cover_every_uid_once() {
        let mut q = queue(&[1000], 2);
        let mut sizes = Vec::new();
        let mut seen = Vec::new();
        while let Some((part, first)) = q.take(Some(0), 2, 10) {
            assert_eq!(first, sizes.is_empty());
            sizes.push(part.uids.len());
            seen.extend(part.uids);
        }
        // A quarter (1 / (2 × lanes)) of what is left, never under 4 batches of 10.
        assert_eq!(&sizes[..4], &[250, 187, 140, 105]);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert_eq!(
            *sizes.last().unwrap(),
            1000 - sizes[..sizes.len() - 1].iter().sum::<usize>()
        );
        assert!(
            sizes[..sizes.len() - 1].iter().all(|&n| n >= 40),
            "{sizes:?}"
        );
        assert_eq!(seen, (0..1000).collect::<Vec<u32>>());
        assert_eq!(q.running, 1, "the lane that found nothing left ended");
    }

    #[test]
    fn connections_grow_with_the_download_within_the_limit_and_local_cores() {
        assert_eq!(lanes(0, 4, None), 1);
        assert_eq!(lanes(999, 4, None), 1);
        assert_eq!(lanes(2000, 4, None), 3);
        assert_eq!(lanes(20_000, 4, None), 4);
        assert_eq!(lanes(20_000, 1, None), 1);
        // A server on this machine: no more than its cores, two at least.
        assert_eq!(lanes(20_000, 4, Some(2)), 2);
        assert_eq!(lanes(20_000, 4, Some(1)), 2);
        assert_eq!(lanes(20_000, 8, Some(6)), 6);
        assert_eq!(lanes(20_000, 1, Some(8)), 1);
        assert_eq!(lanes(500, 4, Some(8)), 1);
    }

    #[test]
    fn one_lane_takes_whole_folders() {
        let mut q = queue(&[700, 300], 1);
        let (part, _) = q.take(None, 1, 10).unwrap();
        assert_eq!((part.folder, part.uids.len()), (0, 700));
        let (part, _) = q.take(None, 1, 10).unwrap();
        assert_eq!((part.folder, part.uids.len()), (1, 300));
        assert!(q.take(None, 1, 10).is_none());
    }

    #[test]
    fn a_lane_keeps_to_its_folder_while_it_has_work_then_takes_the_largest() {
        let mut q = queue(&[100, 500, 300], 4);
        let (part, _) = q.take(Some(0), 4, 10).unwrap();
        assert_eq!(
            part.folder, 0,
            "its selected folder, though not the largest"
        );
        assert_eq!(
            part.uids.len(),
            100,
            "the 40-message minimum, capped by what is left"
        );
        let (part, _) = q.take(Some(0), 4, 10).unwrap();
        assert_eq!(part.folder, 1, "its folder is done: the one with most left");
        let (part, _) = q.take(None, 4, 10).unwrap();
        assert_eq!(part.folder, 1);
    }

    #[test]
    fn a_part_handed_back_goes_to_another_lane_unless_none_is_left() {
        let mut q = queue(&[100], 2);
        let (part, _) = q.take(None, 2, 10).unwrap();
        assert_eq!(part.uids, (0..40).collect::<Vec<u32>>());
        assert!(q.hand_back(part.folder, &part.uids[10..]));
        assert_eq!(q.running, 1);
        assert_eq!(q.work[0].in_flight, 0);
        let (part, first) = q.take(None, 2, 10).unwrap();
        assert!(!first);
        assert_eq!(
            part.uids,
            (10..50).collect::<Vec<u32>>(),
            "back in UID order, at the front"
        );
        assert!(
            !q.hand_back(part.folder, &part.uids),
            "the last lane keeps its part"
        );
        assert_eq!(q.work[0].in_flight, 1);
    }
}
