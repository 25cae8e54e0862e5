//! One account's life in the daemon: a full sync pass at start and every
//! `poll_interval`, IDLE on the folder mapped to the Inbox in between (a change there
//! syncs that folder at once), reconnects with jittered backoff, and a clean stop. A
//! two-way account's mapped local folders are watched too (their directories' times,
//! a few times a second): a change made in a mail reader starts a pass at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::Backoff;
use crate::auth::TokenSource;
use crate::config::roles::{self, RemoteSpec, Role};
use crate::config::{Account, Config, Direction, Mapping};
use crate::imap::{IdleEnd, Session};
use crate::maildir::Maildir;
use crate::retry::Retry;
use crate::state::{AccountLock, RunState, State};
use crate::sync::login::login;
use crate::sync::{FolderReport, Progress, SyncError, SyncOptions, sync_account_with};

/// What each account is doing, for systemd's STATUS= line.
pub type Board = Arc<Mutex<std::collections::BTreeMap<String, String>>>;

/// When an account task must next show a sign of life. Every step it takes says how
/// long it may be quiet after (a pass: until its next message or folder; IDLE: its
/// timeout; a backoff: its delay), and the supervisor restarts a task still quiet
/// past that. Everything on the network has a deadline of its own; this is the net
/// under them, for what has none (a hung file system, a bug).
#[derive(Clone, Debug)]
pub struct Heartbeat(Arc<Mutex<Instant>>);

impl Heartbeat {
    /// A heartbeat due `within` from now.
    pub fn new(within: Duration) -> Heartbeat {
        Heartbeat(Arc::new(Mutex::new(Instant::now() + within)))
    }

    /// Alive now; the next sign is due `within` from now.
    pub fn beat(&self, within: Duration) {
        if let Ok(mut due) = self.0.lock() {
            *due = Instant::now() + within;
        }
    }

    /// How long past due the task is, if it is.
    pub fn overdue(&self) -> Option<Duration> {
        let due = *self.0.lock().ok()?;
        let now = Instant::now();
        (now > due).then(|| now - due)
    }
}

/// How long a task doing `state` may be quiet before it counts as stuck.
fn quiet_for(state: RunState, config: &Config) -> Duration {
    let d = &config.daemon;
    // Work: a command may take its timeout, and more while data arrives; one large
    // message on a slow link takes minutes without a message delivered.
    let work = (d.command_timeout * 10).max(Duration::from_secs(600));
    match state {
        RunState::Idle => d.idle_timeout + d.command_timeout * 2 + MARGIN,
        RunState::Polling => d.poll_interval + MARGIN,
        // The longest backoff: a server's throttling hint, at most an hour.
        RunState::Backoff | RunState::NeedsConnect => Duration::from_secs(3600) + MARGIN,
        _ => work,
    }
}

/// Slack on every heartbeat bound.
const MARGIN: Duration = Duration::from_secs(60);

/// Tells an account task to stop; `stopped()` completes when it is asked to.
#[derive(Clone)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    rx: watch::Receiver<bool>,
}

pub struct StopHandle {
    flag: Arc<AtomicBool>,
    tx: watch::Sender<bool>,
}

pub fn stop_pair() -> (StopHandle, Stop) {
    let flag = Arc::new(AtomicBool::new(false));
    let (tx, rx) = watch::channel(false);
    (
        StopHandle {
            flag: flag.clone(),
            tx,
        },
        Stop { flag, rx },
    )
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.tx.send(true);
    }
}

impl Stop {
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    pub async fn stopped(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
    /// Sleeps for `d`, or less if asked to stop; true if it slept the whole time.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stopped() => false,
        }
    }
}

/// How often a two-way account's mapped local folders are looked at for changes.
const LOCAL_POLL: Duration = Duration::from_millis(250);

/// The stamps of `dirs` now (`None` for a folder that is missing).
fn stamps(dirs: &[Maildir]) -> Vec<Option<crate::maildir::Stamp>> {
    dirs.iter().map(|d| d.stamp().ok().flatten()).collect()
}

/// Resolves once the mapped local folders `dirs` differ from `baseline` (their stamps
/// when the last full pass began: a change made during it counts, since the pass may
/// have read the folder before it); never, with no folder to watch. A pass that changed
/// the folders itself (a download) is thus followed by one more, which finds nothing
/// to do unless the reader changed something meanwhile.
async fn local_change(dirs: Vec<Maildir>, baseline: Vec<Option<crate::maildir::Stamp>>) {
    if dirs.is_empty() {
        return std::future::pending().await;
    }
    loop {
        if stamps(&dirs) != baseline {
            return;
        }
        tokio::time::sleep(LOCAL_POLL).await;
    }
}

struct Task {
    heartbeat: Heartbeat,
    config: Arc<Config>,
    account: Account,
    stop: Stop,
    board: Board,
    state: Option<State>,
    backoff: Backoff,
    /// Kept across passes: the access token is reused until it nears expiry.
    tokens: Option<TokenSource>,
    /// Two-way: the mapped local folders' stamps when the last full pass began.
    local_baseline: Vec<Option<crate::maildir::Stamp>>,
}

/// Runs until stopped. Never returns an error: every failure is logged, recorded for
/// `status`, and retried after backoff — or, when only `mailsync connect` can fix it,
/// waited out until the token store changes.
pub async fn run(
    config: Arc<Config>,
    account: Account,
    stop: Stop,
    board: Board,
    heartbeat: Heartbeat,
) {
    let span = tracing::info_span!("account", name = %account.name);
    let outbox = send_outbox(config.clone(), account.clone(), stop.clone());
    let mut task = Task {
        heartbeat,
        state: State::open(&config.daemon.state_dir).ok(),
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
        config,
        account,
        stop,
        board,
        tokens: None,
        local_baseline: Vec::new(),
    };
    let both = async { tokio::join!(task.main(), outbox) };
    tracing::Instrument::instrument(both, span).await;
}

/// How often the outbox is looked at for what `mailsync send` queued while the
/// daemon runs (it sends at once itself; this is for what it could not send).
const OUTBOX_POLL: Duration = Duration::from_secs(30);

/// Sends the account's queued messages as they come due, until stopped. A sync in
/// progress does not hold it up: sending has its own lock.
async fn send_outbox(config: Arc<Config>, account: Account, stop: Stop) {
    let mut state = None;
    // A daemon that starts (the machine or the network came back) tries what waits
    // at once, whatever its backoff said.
    let mut which = crate::send::Which::All;
    loop {
        if state.is_none() {
            state = State::open(&config.daemon.state_dir).ok();
        }
        let next_try = |state: &Option<State>| {
            state
                .as_ref()
                .and_then(|s| s.outbox_summary(&account.name).ok())
                .and_then(|o| o.next_try)
        };
        let mut next = next_try(&state);
        let now = crate::state::unix_now();
        let due = next.is_some_and(|t| t <= now || which == crate::send::Which::All);
        let this = std::mem::replace(&mut which, crate::send::Which::Due);
        let mut wait = OUTBOX_POLL;
        // A Sent copy that could not be filed is due at once again: not every second.
        let mut floor = Duration::from_secs(1);
        if due {
            let flushed = crate::send::flush(
                &account,
                &config.daemon,
                this,
                crate::send::OnAccountError::Defer,
            )
            .await;
            match flushed {
                Ok(r) => {
                    if !r.sent.is_empty() || !r.failed.is_empty() || !r.deferred.is_empty() {
                        tracing::info!(
                            sent = r.sent.len(),
                            waiting = r.deferred.len(),
                            failed = r.failed.len(),
                            "outbox"
                        );
                    }
                    for (id, why, path) in &r.failed {
                        tracing::warn!(id, "not sent: {why}; kept in {}", path.display());
                    }
                    if let Some(why) = &r.stopped {
                        tracing::warn!("sending waits: {why}");
                    }
                    if let Some(e) = &r.copy_error {
                        tracing::warn!("the Sent copies wait: {e}");
                        floor = OUTBOX_POLL;
                    }
                }
                Err(e) => {
                    tracing::warn!("outbox: {e}");
                    floor = OUTBOX_POLL;
                }
            }
            next = next_try(&state);
        }
        // Woken early for a retry that comes due sooner.
        if let Some(next) = next {
            let until =
                Duration::from_secs(next.saturating_sub(crate::state::unix_now()).max(1) as u64);
            wait = wait.min(until).max(floor);
        }
        if !stop.sleep(wait).await {
            return;
        }
    }
}

impl Task {
    fn set(&mut self, state: RunState, detail: Option<&str>) {
        self.heartbeat.beat(quiet_for(state, &self.config));
        let line = match detail {
            Some(d) => format!("{}: {} {d}", self.account.name, state.as_str()),
            None => format!("{}: {}", self.account.name, state.as_str()),
        };
        if let Ok(mut b) = self.board.lock() {
            b.insert(self.account.name.clone(), line);
        }
        if let Some(s) = self.state.as_mut()
            && let Err(e) = s.set_daemon_state(&self.account.name, state, detail)
        {
            tracing::warn!("cannot record the account's state: {e}");
        }
    }

    async fn main(&mut self) {
        self.set(RunState::Starting, None);
        let state_dir = self.config.daemon.state_dir.clone();
        // The lock says "a daemon has this account" to `sync` and `status`.
        let _lock = loop {
            match AccountLock::acquire(&state_dir, &self.account.name) {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!("{e}; waiting for it");
                    self.set(RunState::Backoff, Some("waiting for the account lock"));
                    if !self.stop.sleep(Duration::from_secs(5)).await {
                        self.set(RunState::Stopped, None);
                        return;
                    }
                }
            }
        };
        let poll = self.config.daemon.poll_interval;
        let mut next_full = Instant::now();
        while !self.stop.is_set() {
            if Instant::now() >= next_full {
                match self.pass(None).await {
                    Ok(()) => next_full = Instant::now() + poll,
                    Err(delay) => {
                        if !self.stop.sleep(delay).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            match self.watch_inbox(next_full).await {
                Ok(true) => {
                    tracing::debug!("a mapped local folder changed");
                    next_full = Instant::now();
                }
                Ok(false) => {}
                Err(delay) => {
                    if !self.stop.sleep(delay).await {
                        break;
                    }
                }
            }
        }
        self.set(RunState::Stopped, None);
        tracing::info!("stopped");
    }

    /// One sync pass (all folders, or one); on failure, how long to wait.
    async fn pass(&mut self, only: Option<&str>) -> Result<(), Duration> {
        if only.is_none() {
            self.local_baseline = stamps(&self.watched());
        }
        self.pass_on(only, None).await.map(|_| ())
    }

    /// [`Task::pass`] on `lent`, a logged-in session, if given; returns it if it
    /// still works afterwards.
    async fn pass_on(
        &mut self,
        only: Option<&str>,
        lent: Option<Session>,
    ) -> Result<Option<Session>, Duration> {
        self.set(RunState::Syncing, only);
        let progress: Arc<dyn Progress> = Arc::new(BoardProgress {
            account: self.account.name.clone(),
            board: self.board.clone(),
            heartbeat: self.heartbeat.clone(),
            quiet: quiet_for(RunState::Syncing, &self.config),
            folders: Mutex::new(std::collections::HashMap::new()),
        });
        let options = SyncOptions {
            only_folder: only.map(str::to_owned),
            progress,
            stop: self.stop.flag.clone(),
            lock: false,
            connection: Mutex::new(lent),
            // The backoff below retries the pass: a login inside it tries once.
            login_attempts: 1,
            dry_run: false,
            allow_mass_delete: false,
            allow_mass_upload: false,
        };
        if self.tokens.is_none() {
            match TokenSource::new(&self.account, &self.config.daemon.state_dir) {
                Ok(t) => self.tokens = Some(t),
                Err(e) => return Err(self.failed(&SyncError::Auth(e))),
            }
        }
        let Some(tokens) = self.tokens.as_mut() else {
            return Err(Duration::from_secs(1));
        };
        let result = sync_account_with(&self.config, &self.account, &options, tokens).await;
        let back = options.connection.lock().ok().and_then(|mut c| c.take());
        match result {
            Ok(report) => {
                self.backoff.reset();
                let fetched: u64 = report.folders.iter().map(|f| f.fetched).sum();
                let failed: Vec<&str> = report
                    .folders
                    .iter()
                    .filter_map(|f| f.error.as_deref())
                    .collect();
                for e in &failed {
                    tracing::warn!("{e}");
                }
                if fetched > 0 || only.is_none() {
                    tracing::info!(
                        fetched,
                        seconds = report.elapsed.as_secs_f64(),
                        folders = report.folders.len(),
                        "sync pass done"
                    );
                }
                Ok(back)
            }
            Err(SyncError::Interrupted) => Err(Duration::ZERO),
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// Records a failure and decides the wait before the next attempt.
    fn failed(&mut self, e: &SyncError) -> Duration {
        let text = e.to_string();
        let retry = e.retry();
        if retry == Retry::SignIn {
            tracing::error!("{text}");
            self.set(RunState::NeedsConnect, Some(&text));
            // Nothing but `mailsync connect` helps: look again now and then, without
            // calling the identity provider (the token store says "needs connect").
            return Duration::from_secs(30);
        }
        if retry == Retry::NewToken
            && let Some(tokens) = self.tokens.as_mut()
        {
            // The server ended the session because the token expired (Exchange's
            // AccessTokenExpired): the next login asks for a new one.
            tokens.invalidate();
        }
        // Exchange's "Suggested Backoff Time" is a floor; the backoff still advances.
        let next = self.backoff.next().unwrap_or(Duration::from_secs(300));
        let delay = retry.delay(next);
        if retry.is_transient() || retry == Retry::NewToken {
            tracing::warn!("{text}; retrying in {}s", delay.as_secs());
        } else {
            tracing::error!("{text}; retrying in {}s", delay.as_secs());
        }
        self.set(RunState::Backoff, Some(&text));
        delay
    }

    /// IDLE on the Inbox mapping until `until` (then a full pass is due). Without an
    /// Inbox mapping, IDLE disabled or not offered, just waits.
    async fn watch_inbox(&mut self, until: Instant) -> Result<bool, Duration> {
        let Some(mapping) = self.inbox_mapping() else {
            self.set(RunState::Polling, None);
            return Ok(self.wait(until).await);
        };
        if !self.config.daemon.idle {
            self.set(RunState::Polling, None);
            return Ok(self.wait(until).await);
        }
        let timeout = self.config.daemon.command_timeout;
        if self.tokens.is_none() {
            match TokenSource::new(&self.account, &self.config.daemon.state_dir) {
                Ok(t) => self.tokens = Some(t),
                Err(e) => return Err(self.failed(&SyncError::Auth(e))),
            }
        }
        self.set(RunState::Connecting, None);
        let Some(tokens) = self.tokens.as_mut() else {
            return Err(Duration::from_secs(1));
        };
        let mut session = match login(&self.account, timeout, tokens, 1).await {
            Ok(s) => s,
            Err(e) => return Err(self.failed(&e)),
        };
        if !session.capabilities().has("IDLE") {
            session.logout().await;
            self.set(RunState::Polling, Some("the server does not offer IDLE"));
            return Ok(self.wait(until).await);
        }
        let remote = match session.list().await {
            Ok(folders) => match roles::resolve(&mapping.remote, &folders) {
                Ok(f) => f.name.clone(),
                Err(e) => {
                    session.logout().await;
                    tracing::warn!(folder = %mapping.local, "{e}");
                    self.set(RunState::Polling, Some(&e.to_string()));
                    return Ok(self.wait(until).await);
                }
            },
            Err(e) => return Err(self.failed(&imap_error(&self.account, e))),
        };
        let selected = match session.select(&remote).await {
            Ok(s) => s,
            Err(e) => return Err(self.failed(&imap_error(&self.account, e))),
        };
        // Mail that arrived between the last pass and this SELECT is not announced by
        // IDLE: compare with what the state knows.
        if self.changed_since_last_pass(&mapping.local, &selected) {
            session = match self.idle_pass(&mapping.local, &remote, session).await? {
                Some(s) => s,
                None => return Ok(false), // log in again from the top
            };
        }
        let idle_timeout = self.config.daemon.idle_timeout;
        loop {
            let now = Instant::now();
            if now >= until || self.stop.is_set() {
                session.logout().await;
                return Ok(false);
            }
            self.set(RunState::Idle, None);
            let wait = idle_timeout.min(until - now);
            let stop = self.stop.clone();
            let dirs = self.watched();
            let baseline = self.local_baseline.clone();
            let changed = Arc::new(AtomicBool::new(false));
            let mark = changed.clone();
            let cancel = async move {
                tokio::select! {
                    _ = stop.stopped() => {}
                    _ = local_change(dirs, baseline) => mark.store(true, Ordering::SeqCst),
                }
            };
            match session.idle(wait, cancel).await {
                Ok(IdleEnd::Changed) => {
                    tracing::debug!(folder = %mapping.local, "IDLE reported a change");
                    session = match self.idle_pass(&mapping.local, &remote, session).await? {
                        Some(s) => s,
                        None => return Ok(false), // log in again from the top
                    };
                }
                Ok(IdleEnd::Timeout) => {}
                Ok(IdleEnd::Cancelled) => {
                    session.logout().await;
                    return Ok(changed.load(Ordering::SeqCst));
                }
                Err(e) => return Err(self.failed(&imap_error(&self.account, e))),
            }
        }
    }

    /// Sleeps until `until`, a stop, or (two-way) a change in a mapped local folder;
    /// true for the last.
    async fn wait(&mut self, until: Instant) -> bool {
        let dirs = self.watched();
        let baseline = self.local_baseline.clone();
        tokio::select! {
            _ = self.stop.sleep(until.saturating_duration_since(Instant::now())) => false,
            _ = local_change(dirs, baseline) => true,
        }
    }

    /// The mapped local folders whose changes start a pass: a two-way account's.
    fn watched(&self) -> Vec<Maildir> {
        if self.account.direction != Direction::Both {
            return Vec::new();
        }
        self.account
            .folders
            .iter()
            .map(|m| Maildir::at(&self.account.folder_path(m)))
            .collect()
    }

    /// A pass over the IDLE folder; returns the IDLE session with `remote` selected
    /// again, or `None` if it must be opened anew. With `max_connections = 1` the pass
    /// runs on that session itself; otherwise on one of its own.
    async fn idle_pass(
        &mut self,
        local: &str,
        remote: &str,
        mut session: Session,
    ) -> Result<Option<Session>, Duration> {
        if self.config.daemon.max_connections > 1 {
            self.pass(Some(local)).await?;
            return Ok(Some(session));
        }
        session = match self.pass_on(Some(local), Some(session)).await? {
            Some(s) => s,
            None => return Ok(None),
        };
        match session.ensure_selected(remote).await {
            Ok(_) => Ok(Some(session)),
            Err(e) => Err(self.failed(&imap_error(&self.account, e))),
        }
    }

    fn changed_since_last_pass(&mut self, local: &str, selected: &crate::imap::Selected) -> bool {
        let Some(state) = self.state.as_ref() else {
            return true;
        };
        let Ok(folders) = state.folders(&self.account.name) else {
            return true;
        };
        match folders.iter().find(|f| f.local == local) {
            Some(f) => {
                f.uidvalidity != Some(selected.uidvalidity)
                    || f.uidnext != selected.uidnext
                    || state.count(f.id).ok() != Some(u64::from(selected.exists))
            }
            None => true,
        }
    }

    /// The mapping of the Inbox: `INBOX` by name or `@inbox`.
    fn inbox_mapping(&self) -> Option<Mapping> {
        self.account
            .folders
            .iter()
            .find(|m| match &m.remote {
                RemoteSpec::Role(Role::Inbox) => true,
                RemoteSpec::Name(n) => n.eq_ignore_ascii_case("INBOX"),
                _ => false,
            })
            .cloned()
    }
}

fn imap_error(account: &Account, source: crate::imap::ImapError) -> SyncError {
    SyncError::Imap {
        account: account.name.clone(),
        source,
    }
}

/// Progress for systemd's STATUS= line: "work: syncing Archive 1200/5000", for the
/// folder of the latest message (a pass downloads several folders at once).
struct BoardProgress {
    account: String,
    board: Board,
    /// Beaten on every message and folder.
    heartbeat: Heartbeat,
    quiet: Duration,
    /// Messages fetched and to fetch, per folder being downloaded.
    folders: Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

impl BoardProgress {
    fn show(&self, local: &str, (done, total): (u64, u64)) {
        self.heartbeat.beat(self.quiet);
        if let Ok(mut b) = self.board.lock() {
            b.insert(
                self.account.clone(),
                format!("{}: syncing {local} {done}/{total}", self.account),
            );
        }
    }
}

impl Progress for BoardProgress {
    fn folder_started(&self, local: &str, to_fetch: u64) {
        if to_fetch == 0 {
            return;
        }
        if let Ok(mut f) = self.folders.lock() {
            f.insert(local.to_owned(), (0, to_fetch));
        }
        self.show(local, (0, to_fetch));
    }
    fn fetched(&self, local: &str, messages: u64, _bytes: u64) {
        let counts = match self.folders.lock() {
            Ok(mut f) => match f.get_mut(local) {
                Some(c) => {
                    c.0 += messages;
                    *c
                }
                None => return,
            },
            Err(_) => return,
        };
        self.show(local, counts);
    }
    fn folder_finished(&self, report: &FolderReport) {
        if let Ok(mut f) = self.folders.lock() {
            f.remove(&report.local);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(board: &Board) -> String {
        board
            .lock()
            .unwrap()
            .get("work")
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn status_counts_each_folder_apart_while_several_download() {
        let board: Board = Arc::default();
        let p = BoardProgress {
            account: "work".into(),
            board: board.clone(),
            heartbeat: Heartbeat::new(Duration::from_secs(60)),
            quiet: Duration::from_secs(60),
            folders: Mutex::new(std::collections::HashMap::new()),
        };
        p.folder_started("Deleted Items", 0);
        assert_eq!(status(&board), "", "nothing to fetch is not shown");
        p.folder_started("Archive", 100);
        p.folder_started("Inbox", 10);
        assert_eq!(status(&board), "work: syncing Inbox 0/10");
        p.fetched("Archive", 1, 500);
        p.fetched("Archive", 1, 500);
        assert_eq!(status(&board), "work: syncing Archive 2/100");
        p.fetched("Inbox", 1, 500);
        assert_eq!(status(&board), "work: syncing Inbox 1/10");
        p.folder_finished(&FolderReport {
            local: "Inbox".into(),
            ..FolderReport::default()
        });
        p.fetched("Archive", 1, 500);
        assert_eq!(status(&board), "work: syncing Archive 3/100");
    }
}
