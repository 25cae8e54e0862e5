//! The executor: runs one sync pass of an account. It asks the server, lets the pure
//! planner decide, and applies the plan to the Maildir and the state, journalling
//! before each file operation and committing after it, so that a crash at any instant
//! leaves a state the next pass converges from.
//!
//! A pass, for the mapped folders of one account:
//! 0. recovery: finish or undo what a killed run journalled; clean our `tmp/` files;
//! 1. per folder, on one connection: SELECT, list UIDs and flags (only the changes
//!    with CONDSTORE/QRESYNC, or nothing at all when the folder provably did not
//!    change; the records are read only then), diff with the records;
//! 2. if any record vanished: fetch the sizes of new messages, the fingerprints of
//!    those whose size a vanished record has, and pair them (moves between folders
//!    and UIDVALIDITY changes become local renames);
//! 3. relocate, apply flags and remove on a blocking thread, while the rest downloads
//!    in bounded batches on up to `max_connections` connections (more than one only
//!    for large downloads), which share out parts of folders (`download.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use crate::auth::{AuthError, TokenSource};
use crate::config::roles::{self, RemoteFolder};
use crate::config::{Account, Config, Mapping};
use crate::imap::{self, ImapError, Session};
use crate::maildir::Maildir;
use crate::retry::Retry;
use crate::state::{AccountLock, FolderRow, LockError, Relocation, State, StateError, unix_now};

use super::download;
use super::login::login;
use super::model::{Action, Fingerprint, Flags, FolderDiff, FolderId, Record, RemoteNew};
use super::plan::{self, Listing};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("account {account}: {source}")]
    Imap {
        account: String,
        #[source]
        source: ImapError,
    },
    #[error("{path}: {source}")]
    Maildir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Mapping(String),
    #[error("account {account}: the server refused the login ({}): {}. Fix: {}", .failure.server_text, .diagnosis.cause, .diagnosis.fix)]
    Login {
        account: String,
        failure: Box<imap::AuthFailure>,
        diagnosis: Box<crate::auth::diagnose::Diagnosis>,
    },
    #[error("interrupted")]
    Interrupted,
}

impl SyncError {
    /// How this failure is retried (see [`crate::retry`]).
    pub fn retry(&self) -> Retry {
        match self {
            SyncError::Imap { source, .. } => source.retry(),
            SyncError::Auth(a) => a.retry(),
            SyncError::Login { diagnosis, .. } if diagnosis.transient => Retry::Later(None),
            SyncError::Lock(LockError::Busy { .. }) => Retry::Later(None),
            _ => Retry::Never,
        }
    }

    /// Worth retrying after backoff (the daemon's concern), rather than needing a fix.
    pub fn is_transient(&self) -> bool {
        self.retry().is_transient()
    }
}

/// How a pass reports progress; the `sync` command draws bars, the daemon logs.
pub trait Progress: Send + Sync {
    fn folder_started(&self, _local: &str, _to_fetch: u64) {}
    fn fetched(&self, _local: &str, _messages: u64, _bytes: u64) {}
    fn folder_finished(&self, _report: &FolderReport) {}
}

/// Progress that reports nothing.
pub struct Quiet;
impl Progress for Quiet {}

pub struct SyncOptions {
    /// Only this local folder (`sync --folder`).
    pub only_folder: Option<String>,
    pub progress: Arc<dyn Progress>,
    /// Set to stop at the next message boundary (SIGTERM, account removed).
    pub stop: Arc<AtomicBool>,
    /// Take the account lock for the pass; false when the caller (the daemon) holds it.
    pub lock: bool,
    /// A logged-in session the pass uses instead of logging in, and gets back at the
    /// end if it still works (the daemon's IDLE connection, with `max_connections = 1`).
    pub connection: std::sync::Mutex<Option<Session>>,
    /// Logins try this often while the failure is transient: 1 in the daemon, whose
    /// backoff retries the pass (see [`crate::retry`]).
    pub login_attempts: u32,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            only_folder: None,
            progress: Arc::new(Quiet),
            stop: Arc::new(AtomicBool::new(false)),
            lock: true,
            connection: std::sync::Mutex::new(None),
            login_attempts: super::login::TRANSIENT_ATTEMPTS,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FolderReport {
    pub local: String,
    pub remote: String,
    pub fetched: u64,
    pub flag_updates: u64,
    pub removed: u64,
    pub moved_in: u64,
    pub bytes: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    pub account: String,
    pub folders: Vec<FolderReport>,
    pub elapsed: Duration,
    pub token_requests: u64,
}

impl SyncReport {
    pub fn failed_folders(&self) -> usize {
        self.folders.iter().filter(|f| f.error.is_some()).count()
    }
}

/// One mapped folder during a pass.
struct Target {
    mapping: Mapping,
    remote: RemoteFolder,
    row: FolderRow,
    maildir: Maildir,
    report: FolderReport,
    selected: Option<imap::Selected>,
    diff: FolderDiff,
    /// Sizes of the messages from UID `.0` on, asked for with the listing's SELECT:
    /// pairing then needs no round trip of its own for them.
    new_sizes: Option<(u32, HashMap<u32, u64>)>,
    /// Set when the folder failed; later phases skip it.
    failed: bool,
}

/// Runs one pass over the mapped folders of `account`.
pub async fn sync_account(
    config: &Config,
    account: &Account,
    options: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let mut tokens = TokenSource::new(account, &config.daemon.state_dir)?;
    sync_account_with(config, account, options, &mut tokens).await
}

/// [`sync_account`] with the caller's token source, so a daemon keeps its access token
/// (and its cache) from one pass to the next instead of asking for a new one each time.
pub async fn sync_account_with(
    config: &Config,
    account: &Account,
    options: &SyncOptions,
    tokens: &mut TokenSource,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let state_dir = &config.daemon.state_dir;
    let mut state = State::open(state_dir)?;
    let _lock = if options.lock {
        Some(AccountLock::acquire(state_dir, &account.name)?)
    } else {
        None
    };
    let timeout = config.daemon.command_timeout;
    let lent = options.connection.lock().ok().and_then(|mut c| c.take());
    let give_back = lent.is_some();
    let mut session = match lent {
        Some(s) => s,
        None => login(account, timeout, tokens, options.login_attempts).await?,
    };

    let imap_err = |source| SyncError::Imap {
        account: account.name.clone(),
        source,
    };
    let listed = session.list().await.map_err(imap_err)?;

    // Resolve mappings; one that resolves nowhere fails alone, with the config line.
    let mut targets: Vec<Target> = Vec::new();
    let mut failed_reports = Vec::new();
    for mapping in &account.folders {
        if let Some(only) = &options.only_folder
            && &mapping.local != only
        {
            continue;
        }
        match roles::resolve(&mapping.remote, &listed) {
            Ok(remote) => {
                let row = state.folder(&account.name, &mapping.local, &remote.name)?;
                let path = account.maildir.join(&mapping.local);
                let maildir = Maildir::open(&path).map_err(|source| SyncError::Maildir {
                    path: path.clone(),
                    source,
                })?;
                targets.push(Target {
                    report: FolderReport {
                        local: mapping.local.clone(),
                        remote: remote.display.clone(),
                        ..FolderReport::default()
                    },
                    mapping: mapping.clone(),
                    remote: remote.clone(),
                    row,
                    maildir,
                    selected: None,
                    diff: FolderDiff::default(),
                    new_sizes: None,
                    failed: false,
                });
            }
            Err(e) => {
                let message = format!(
                    "{}:{}: accounts.{}.folders.{}: {e}",
                    config.path.display(),
                    mapping.line,
                    account.name,
                    toml_key(&mapping.local)
                );
                failed_reports.push(FolderReport {
                    local: mapping.local.clone(),
                    remote: mapping.remote.to_string(),
                    error: Some(message),
                    ..FolderReport::default()
                });
            }
        }
    }
    if let Some(only) = &options.only_folder
        && targets.is_empty()
        && failed_reports.is_empty()
    {
        return Err(SyncError::Mapping(format!(
            "account {} has no mapped folder named {only:?} (mapped: {})",
            account.name,
            account
                .folders
                .iter()
                .map(|m| m.local.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    recover(&mut state, &account.name, &account.maildir)?;
    for t in &targets {
        t.maildir.clean_tmp().map_err(|source| SyncError::Maildir {
            path: t.maildir.tmp(),
            source,
        })?;
    }

    // Phase 1: what changed on the server.
    for t in targets.iter_mut() {
        let mut paused = false;
        loop {
            check_stop(options)?;
            let span = tracing::info_span!("folder", name = %t.mapping.local);
            // The records are read only when the folder changed: a no-op pass over a
            // large folder then reads none (one indexed count instead).
            let records = state.count_records(t.row.id)?;
            let listed = match select_for_listing(&mut session, records, t)
                .instrument(span.clone())
                .await
            {
                Ok(Some(changes)) => {
                    let known = state.known(t.row.id)?;
                    list_folder(&mut session, known, t, changes)
                        .instrument(span)
                        .await
                }
                other => other.map(|_| ()),
            };
            match listed {
                Ok(()) => {
                    if let Some(sel) = &t.selected {
                        state.set_remote_exists(t.row.id, sel.exists)?;
                    }
                }
                // A throttling server named its wait (Exchange answers SELECT with `NO
                // Request is throttled. Suggested Backoff Time: N milliseconds`): nothing
                // goes out before it ends, then the folder is tried once more.
                Err(e) if !paused && let Some(wait) = throttle_pause(&e) => {
                    tracing::warn!(folder = %t.mapping.local, "{e}; trying again in {} ms", wait.as_millis());
                    pause(options, wait).await?;
                    paused = true;
                    continue;
                }
                Err(e) => fail_folder(&mut state, t, &e)?,
            }
            break;
        }
    }

    // Phase 2: pair new messages with vanished records, if any vanished.
    let any_vanished = targets
        .iter()
        .any(|t| !t.failed && !t.diff.vanished.is_empty());
    let mut actions: Vec<Action> = Vec::new();
    if any_vanished {
        let mut new = Vec::new();
        let mut vanished = Vec::new();
        for t in targets.iter().filter(|t| !t.failed) {
            vanished.extend(state.records_for(t.row.id, &t.diff.vanished)?);
        }
        // Every pairing key holds the size: a new message whose size no vanished
        // record has is no move and needs no fingerprint. Sizes come from the index
        // on every server; Message-IDs may mean reading each new message's header.
        let sizes: HashSet<u64> = vanished.iter().map(|r| r.fingerprint.size).collect();
        let mut unpaired: Vec<Action> = Vec::new();
        // The folder still selected from phase 1 first: one SELECT fewer.
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by_key(|&i| session.selected_folder() != Some(targets[i].remote.name.as_str()));
        for i in order {
            let t = &mut targets[i];
            if t.failed || t.diff.new_uids.is_empty() {
                continue;
            }
            let uidvalidity = t.selected.as_ref().map(|s| s.uidvalidity).unwrap_or(0);
            // The sizes came with the listing if every new message is past the UID
            // they were asked from (a message left behind by an earlier pass is not).
            let known_sizes = t
                .new_sizes
                .as_ref()
                .filter(|(from, _)| t.diff.new_uids.iter().all(|uid| uid >= from));
            let result = async {
                let listed: Vec<(u32, u64)> = match known_sizes {
                    Some((_, by_uid)) => t
                        .diff
                        .new_uids
                        .iter()
                        .filter_map(|uid| by_uid.get(uid).map(|&size| (*uid, size)))
                        .collect(),
                    None => {
                        session.select_listed(&t.remote.name, uidvalidity).await?;
                        session.fetch_sizes(&t.diff.new_uids).await?
                    }
                };
                let mut wanted: Vec<u32> = listed
                    .into_iter()
                    .filter(|(_, size)| sizes.contains(size))
                    .map(|(uid, _)| uid)
                    .collect();
                wanted.sort_unstable();
                wanted.dedup();
                let prints = if wanted.is_empty() {
                    Vec::new()
                } else {
                    session.select_listed(&t.remote.name, uidvalidity).await?;
                    session.fetch_fingerprints(&wanted).await?
                };
                // Whatever is not a fingerprinted candidate is fetched (a message the
                // server did not describe included: if it is gone, the fetch says so).
                let printed: HashSet<u32> = prints.iter().map(|p| p.uid).collect();
                let others: Vec<u32> = t
                    .diff
                    .new_uids
                    .iter()
                    .copied()
                    .filter(|uid| !printed.contains(uid))
                    .collect();
                Ok((prints, others))
            }
            .await;
            match result {
                Ok((prints, others)) => {
                    new.extend(prints.into_iter().map(|p| RemoteNew {
                        folder: t.row.id,
                        uidvalidity,
                        uid: p.uid,
                        flags: p.flags,
                        fingerprint: Fingerprint {
                            message_id: p.message_id,
                            size: p.size,
                            internaldate: p.internaldate,
                        },
                    }));
                    unpaired.extend(others.into_iter().map(|uid| Action::Fetch {
                        folder: t.row.id,
                        uid,
                    }));
                }
                Err(e) => fail_folder(&mut state, t, &e)?,
            }
        }
        // A failed folder's records must not be removed, nor its messages re-fetched.
        let failed: Vec<FolderId> = targets
            .iter()
            .filter(|t| t.failed)
            .map(|t| t.row.id)
            .collect();
        vanished.retain(|r| !failed.contains(&r.folder));
        new.retain(|n| !failed.contains(&n.folder));
        actions = plan::pair(new, vanished);
        actions.extend(unpaired);
    } else {
        for t in targets.iter().filter(|t| !t.failed) {
            actions.extend(t.diff.new_uids.iter().map(|&uid| Action::Fetch {
                folder: t.row.id,
                uid,
            }));
        }
    }
    for t in targets.iter().filter(|t| !t.failed) {
        let folder = t.row.id;
        actions.extend(
            t.diff
                .flag_updates
                .iter()
                .map(|&(uid, flags)| Action::SetFlags { folder, uid, flags }),
        );
    }

    // Phase 3: apply. Local-only actions (relocations, then flags and removals) run
    // on a blocking thread while the new messages download: the one touches only
    // files that exist, the other only files it creates, and the two overlap disk
    // work with waiting for the server.
    let mut fetches: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    let index: HashMap<FolderId, usize> = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.failed)
        .map(|(i, t)| (t.row.id, i))
        .collect();
    for a in &actions {
        if let Action::Fetch { folder, uid } = a
            && let Some(&i) = index.get(folder)
        {
            fetches.entry(i).or_default().push(*uid);
        }
    }
    for uids in fetches.values_mut() {
        uids.sort_unstable();
    }
    let local_folders: HashMap<FolderId, LocalFolder> = targets
        .iter()
        .filter(|t| !t.failed)
        .map(|t| {
            let folder = LocalFolder {
                maildir: t.maildir.clone(),
                uidvalidity: t.selected.as_ref().map(|s| s.uidvalidity).unwrap_or(0),
            };
            (t.row.id, folder)
        })
        .collect();
    let local = tokio::task::spawn_blocking(move || {
        let mut state = state;
        let applied = apply_local(&mut state, &local_folders, &actions);
        (applied, state)
    });

    // The new messages download meanwhile, on more than one connection for a large
    // download; the listing session serves the first.
    let folders: Vec<download::Folder> = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.failed)
        .map(|(i, t)| download::Folder {
            id: t.row.id,
            local: t.mapping.local.clone(),
            remote: t.remote.name.clone(),
            display: t.remote.display.clone(),
            maildir: t.maildir.clone(),
            selected: t.selected.clone(),
            uids: fetches.remove(&i).unwrap_or_default(),
            sizes: t
                .new_sizes
                .as_ref()
                .map(|(_, sizes)| sizes.clone())
                .unwrap_or_default(),
        })
        .collect();
    let downloaded = download::run(
        config, account, options, tokens, session, give_back, &folders,
    )
    .await;
    let (local, mut state) = local.await.map_err(|e| SyncError::Maildir {
        path: account.maildir.clone(),
        source: std::io::Error::other(format!("local changes stopped: {e}")),
    })?;
    let local = local?;
    for (f, outcome) in folders.iter().zip(downloaded?) {
        if let Some(t) = targets.iter_mut().find(|t| t.row.id == f.id) {
            t.report.fetched += outcome.fetched;
            t.report.bytes += outcome.bytes;
            if let Some(e) = outcome.error {
                t.failed = true;
                t.report.error = Some(e);
            }
        }
    }
    for (id, counts) in local {
        if let Some(t) = targets.iter_mut().find(|t| t.row.id == id) {
            t.report.moved_in += counts.moved_in;
            t.report.flag_updates += counts.flag_updates;
            t.report.removed += counts.removed;
        }
    }
    // The watermark last: only now are the pass's downloads, renames and removals
    // all committed. Written earlier, a kill in between would leave the next pass
    // asking for changes since a point the records never reached (CHANGEDSINCE,
    // VANISHED), and those changes would never be seen again.
    for t in targets.iter().filter(|t| !t.failed) {
        if let Some(sel) = &t.selected {
            state.set_folder_synced(
                t.row.id,
                sel.uidvalidity,
                sel.uidnext,
                sel.highestmodseq,
                unix_now(),
            )?;
        }
    }
    let token_requests = tokens.token_requests();

    let mut folders: Vec<FolderReport> = targets.into_iter().map(|t| t.report).collect();
    folders.extend(failed_reports);
    Ok(SyncReport {
        account: account.name.clone(),
        folders,
        elapsed: started.elapsed(),
        token_requests,
    })
}

/// The longest wait a server names that a pass sits out: past it the folder fails for
/// this pass, as a pass quiet for longer would look hung to the daemon.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The wait a throttling server named in `e`, if a pass should sit it out.
fn throttle_pause(e: &ImapError) -> Option<Duration> {
    match e.retry() {
        Retry::Later(Some(hint)) if hint <= MAX_PAUSE => Some(hint),
        _ => None,
    }
}

/// Sleeps `wait`, ending early (as interrupted) if the pass is asked to stop.
async fn pause(options: &SyncOptions, wait: Duration) -> Result<(), SyncError> {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        check_stop(options)?;
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
    }
    check_stop(options)
}

pub(super) fn check_stop(options: &SyncOptions) -> Result<(), SyncError> {
    if options.stop.load(Ordering::Relaxed) {
        Err(SyncError::Interrupted)
    } else {
        Ok(())
    }
}

fn fail_folder(state: &mut State, t: &mut Target, e: &ImapError) -> Result<(), SyncError> {
    let text = folder_failure(&t.mapping.local, &t.remote.display, e);
    t.failed = true;
    t.report.error = Some(text.clone());
    state.set_folder_error(t.row.id, &text)?;
    Ok(())
}

/// Logs a folder's failure and returns the text its report and row keep.
pub(super) fn folder_failure(local: &str, display: &str, e: &ImapError) -> String {
    tracing::warn!(folder = %local, "{e}");
    format!("{local} ({display}): {e}")
}

/// Selects the folder for listing. `None` when it provably did not change since the
/// last pass (same UIDVALIDITY, HIGHESTMODSEQ and UIDNEXT, and as many messages as
/// `records`, the folder's records of every UIDVALIDITY): then nothing is to be done
/// and `t` says so; otherwise what the SELECT reported, for [`list_folder`].
async fn select_for_listing(
    session: &mut Session,
    records: u64,
    t: &mut Target,
) -> Result<Option<imap::SelectChanges>, ImapError> {
    let since = t.row.uidvalidity.zip(t.row.highestmodseq);
    // What the listing asks next anyway goes out with the SELECT: without QRESYNC the
    // flags (all, or what changed since the last mod-sequence); in a folder already
    // synced, the sizes of messages new since, which pairing needs if anything
    // vanished (a few bytes a message; none at all in an initial sync).
    let mut follow = Vec::new();
    if !(session.qresync_enabled() && since.is_some()) {
        let changed_since = match since {
            Some((_, modseq)) if session.has_condstore() => Some(modseq),
            _ => None,
        };
        follow.push(imap::FollowUp::Flags(changed_since));
    }
    if records > 0
        && let Some(uidnext) = t.row.uidnext
    {
        follow.push(imap::FollowUp::SizesFrom(uidnext.max(1)));
    }
    let mut changes = session.select_with(&t.remote.name, since, &follow).await?;
    t.new_sizes = changes
        .sizes
        .take()
        .filter(|_| t.row.uidvalidity == Some(changes.selected.uidvalidity))
        .map(|(from, sizes)| (from, sizes.into_iter().collect()));
    let sel = &changes.selected;
    let unchanged = session.has_condstore()
        && t.row.uidvalidity == Some(sel.uidvalidity)
        && t.row.highestmodseq.is_some()
        && t.row.highestmodseq == sel.highestmodseq
        && t.row.uidnext == sel.uidnext
        && u64::from(sel.exists) == records;
    if !unchanged {
        return Ok(Some(changes));
    }
    t.diff = FolderDiff::default();
    tracing::debug!(folder = %t.mapping.local, "unchanged");
    t.selected = Some(changes.selected);
    Ok(None)
}

/// Lists the folder [`select_for_listing`] selected and found changed, and diffs the
/// listing with its records.
async fn list_folder(
    session: &mut Session,
    known: Vec<crate::sync::model::Known>,
    t: &mut Target,
    changes: imap::SelectChanges,
) -> Result<(), ImapError> {
    let sel = changes.selected.clone();
    let same_validity = t.row.uidvalidity == Some(sel.uidvalidity);
    let known_uids: HashSet<u32> = known
        .iter()
        .filter(|k| k.uidvalidity == sel.uidvalidity)
        .map(|k| k.uid)
        .collect();
    let count = known_uids.len() as u64;
    let listing = match (same_validity, t.row.highestmodseq, sel.highestmodseq) {
        (true, Some(old), Some(now)) if session.has_condstore() => {
            if old == now && t.row.uidnext == sel.uidnext && u64::from(sel.exists) == count {
                // Nothing changed: not a single message needs to be listed.
                Listing::default()
            } else {
                // QRESYNC told us in the SELECT itself; CONDSTORE needs a FETCH.
                let (entries, vanished) = if session.qresync_enabled() {
                    (changes.changed, changes.vanished)
                } else if let Some((Some(m), entries)) = changes.flags
                    && m == old
                {
                    (entries, Vec::new())
                } else {
                    (session.fetch_flags(Some(old)).await?, Vec::new())
                };
                // The server's ranges are met with the records held, never expanded:
                // `1:4294967295` names four billion UIDs and costs nothing here.
                let vanished = plan::known_within(&vanished, known_uids.iter().copied());
                let gone: HashSet<u32> = vanished.iter().copied().collect();
                let added = entries
                    .iter()
                    .filter(|e| !known_uids.contains(&e.uid))
                    .map(|e| e.uid)
                    .collect::<HashSet<u32>>()
                    .len() as u64;
                // The server's count must match what the changes imply; if not (an
                // expunge CONDSTORE cannot report), ask for every UID.
                let present = if u64::from(sel.exists) + gone.len() as u64 == count + added {
                    None
                } else {
                    Some(session.search_all_uids().await?)
                };
                Listing {
                    entries,
                    complete: false,
                    present,
                    vanished,
                }
            }
        }
        _ => Listing {
            entries: match changes.flags {
                Some((None, entries)) => entries,
                _ => session.fetch_flags(None).await?,
            },
            complete: true,
            ..Listing::default()
        },
    };
    t.diff = plan::diff_folder(&known, sel.uidvalidity, &listing);
    if !same_validity && t.row.uidvalidity.is_some() {
        tracing::warn!(
            folder = %t.mapping.local,
            old = t.row.uidvalidity,
            new = sel.uidvalidity,
            "UIDVALIDITY changed: re-pairing messages by Message-ID, size and date"
        );
    }
    tracing::debug!(
        folder = %t.mapping.local,
        new = t.diff.new_uids.len(),
        flags = t.diff.flag_updates.len(),
        vanished = t.diff.vanished.len(),
        "listed"
    );
    t.selected = Some(sel);
    Ok(())
}

/// What [`apply_local`] needs of a folder.
struct LocalFolder {
    maildir: Maildir,
    /// The UIDVALIDITY listed in this pass.
    uidvalidity: u32,
}

/// What [`apply_local`] did in a folder, for its report.
#[derive(Clone, Copy, Debug, Default)]
struct LocalCounts {
    moved_in: u64,
    flag_updates: u64,
    removed: u64,
}

/// Names `path` in a Maildir error: `.map_err(maildir_err(path))`.
fn maildir_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SyncError {
    let path = path.into();
    move |source| SyncError::Maildir { path, source }
}

/// Applies relocations, flag changes and removals: no network needed. Actions for
/// folders not in `folders` (failed ones) are skipped.
fn apply_local(
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

/// Finishes what a killed run journalled: deliveries whose rows were never committed
/// are undone (the file, if it got into place, is removed and the message will be
/// fetched again), and moves and flag changes whose file had not been renamed yet are
/// completed (a flag change is journalled as a move within its folder).
fn recover(state: &mut State, account: &str, root: &std::path::Path) -> Result<(), SyncError> {
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

/// A local folder name as it appears as a TOML key.
fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

#[cfg(test)]
#[path = "recover_tests.rs"]
mod recover_tests;
