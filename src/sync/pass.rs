//! One sync pass of an account: observe, plan, apply.
//!
//! 0. recover: finish or undo what a killed run journalled, so every record agrees
//!    with its file; clean our `tmp/` files;
//! 1. observe, per folder on one connection: SELECT and list (only the changes with
//!    CONDSTORE/QRESYNC, nothing when the folder provably did not change);
//! 2. plan ([`plan::plan`], pure): answer what it asks (vanished records, sizes,
//!    fingerprints of possible moves) and plan again until it decides;
//! 3. apply: relocations, flags and removals on a blocking thread while the new
//!    messages download (`download.rs`), each journalled before its effect; then each
//!    folder whose actions all landed commits its watermark.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::auth::TokenSource;
use crate::config::roles::{self, RemoteFolder, RemoteSpec, Role};
use crate::config::{Account, Config, Delete, Direction, Mapping};
use crate::imap::{self, ImapError};
use crate::maildir::Maildir;
use crate::retry::Retry;
use crate::state::{AccountLock, FolderRow, State, unix_now};

use super::apply::{LocalFolder, always, apply_local};
use super::download;
use super::error::{Failed, SyncError, folder_failure};
use super::local;
use super::login::login;
use super::model::{Action, FolderId, Policy, Trash};
use super::observe;
use super::options::{SyncOptions, check_stop, pause};
use super::plan::{self, Snapshot};
use super::push;
use super::recover::recover;
use super::report::{FolderReport, SyncReport};

/// One mapped folder during a pass.
struct Target {
    mapping: Mapping,
    remote: RemoteFolder,
    row: FolderRow,
    maildir: Maildir,
    report: FolderReport,
    selected: Option<imap::Selected>,
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
    let (mut targets, failed_reports) = resolve(config, account, options, &listed, &mut state)?;

    // A dry run changes nothing, not even to finish what a killed run left: it plans
    // from the state as it is.
    if !options.dry_run {
        recover(&mut state, &account.name, &account.maildir)?;
        for t in &targets {
            t.maildir.clean_tmp().map_err(|source| SyncError::Maildir {
                path: t.maildir.tmp(),
                source,
            })?;
        }
    }

    let two_way = account.direction == Direction::Both;
    if two_way && !options.dry_run {
        let folders: HashMap<FolderId, push::Folder> = targets
            .iter()
            .filter(|t| !t.failed)
            .map(|t| (t.row.id, push_folder(t, 0, 0)))
            .collect();
        let failed = push::recover(&mut session, &mut state, &account.name, &folders).await?;
        for (id, e) in failed {
            if e.is_fatal_to_session() {
                return Err(imap_err(e));
            }
            // The folder sits this pass out: planned, it could send again what the
            // journal says may already be there.
            if let Some(t) = targets.iter_mut().find(|t| t.row.id == id) {
                fail_folder(&mut state, t, &e)?;
            }
        }
    }

    // 1. Observe what changed on the server.
    let mut snapshot = Snapshot::default();
    for t in targets.iter_mut() {
        if t.failed {
            continue;
        }
        let mut paused = false;
        loop {
            check_stop(options)?;
            let span = tracing::info_span!("folder", name = %t.mapping.local);
            let observed = observe::folder(
                &mut session,
                &mut state,
                &t.row,
                &t.remote.name,
                &t.mapping.local,
            )
            .instrument(span)
            .await;
            match observed {
                Ok((observed, sel)) => {
                    state.set_remote_exists(t.row.id, sel.exists)?;
                    t.selected = Some(sel);
                    snapshot.folders.push(observed);
                }
                // A throttling server named its wait (Exchange answers SELECT with `NO
                // Request is throttled. Suggested Backoff Time: N milliseconds`): nothing
                // goes out before it ends, then the folder is tried once more.
                Err(Failed::Folder(e)) if !paused && let Some(wait) = throttle_pause(&e) => {
                    tracing::warn!(folder = %t.mapping.local, "{e}; trying again in {} ms", wait.as_millis());
                    pause(options, wait).await?;
                    paused = true;
                    continue;
                }
                Err(Failed::Folder(e)) => fail_folder(&mut state, t, &e)?,
                Err(Failed::Pass(e)) => return Err(e),
            }
            break;
        }
    }

    // Two-way: what changed locally, over every mapped folder (a file moved into a
    // folder this pass does not sync must not read as deleted).
    let local_list: Vec<local::Folder> = if two_way {
        local_folders_of(account, &mut state)?
    } else {
        Vec::new()
    };
    let mut seen_locally = None;
    if two_way {
        let mut seen = local::observe(&state, &local_list)?;
        snapshot.local = seen.view.take();
        seen_locally = Some(seen);
        snapshot.policy = Policy {
            trash: trash_of(account, &listed, &targets, &local_list),
            mass_delete: (!options.allow_mass_delete).then_some(account.mass_delete),
            mass_upload: (!options.allow_mass_upload).then_some(account.mass_delete),
        };
    }

    // 2. Plan, answering what the planner asks first.
    let mut rounds = 0;
    let plan = loop {
        let plan = plan::plan(&snapshot);
        if plan.needs.is_empty() {
            break plan;
        }
        check_stop(options)?;
        rounds += 1;
        let mut needs = plan.needs;
        // The folder still selected from listing first: one SELECT fewer.
        needs.sort_by_key(|n| {
            let t = targets.iter().find(|t| t.row.id == n.folder());
            session.selected_folder() != t.map(|t| t.remote.name.as_str())
        });
        for need in &needs {
            let Some(t) = targets.iter_mut().find(|t| t.row.id == need.folder()) else {
                continue;
            };
            if t.failed {
                continue;
            }
            let answered = if rounds > MAX_PLAN_ROUNDS {
                // Every question is answered in full, so the planner never asks one
                // twice; if it did, the folder fails rather than the pass looping.
                Err(Failed::Folder(ImapError::Protocol {
                    command: "FETCH".into(),
                    detail: "the server's answers did not let the pass plan this folder".into(),
                }))
            } else {
                let span = tracing::info_span!("folder", name = %t.mapping.local);
                observe::answer(
                    &mut session,
                    &mut state,
                    &mut snapshot,
                    need,
                    &t.remote.name,
                )
                .instrument(span)
                .await
            };
            match answered {
                Ok(()) => {}
                Err(Failed::Folder(e)) => {
                    fail_folder(&mut state, t, &e)?;
                    if let Some(f) = snapshot.folders.iter_mut().find(|f| f.id == t.row.id) {
                        f.failed = true;
                    }
                }
                Err(Failed::Pass(e)) => return Err(e),
            }
        }
    };

    for (id, why) in &plan.refused {
        if let Some(t) = targets.iter_mut().find(|t| t.row.id == *id) {
            fail_folder(&mut state, t, why)?;
        }
        if let Some(f) = snapshot.folders.iter_mut().find(|f| f.id == *id) {
            f.failed = true;
        }
    }

    if options.dry_run {
        let lines = describe(&plan.actions, &targets);
        session.logout().await;
        let mut folders: Vec<FolderReport> = targets.into_iter().map(|t| t.report).collect();
        folders.extend(failed_reports);
        return Ok(SyncReport {
            account: account.name.clone(),
            folders,
            elapsed: started.elapsed(),
            token_requests: tokens.token_requests(),
            dry_run: Some(lines),
        });
    }

    // 3. Apply: first what goes to the server (two-way), so that a folder whose
    // changes the server did not take keeps its records as they were.
    if plan.actions.iter().any(Action::is_push) {
        let folders: HashMap<FolderId, push::Folder> = snapshot
            .folders
            .iter()
            .filter(|f| !f.failed)
            .filter_map(|f| {
                let t = targets.iter().find(|t| t.row.id == f.id)?;
                Some((
                    f.id,
                    push_folder(t, f.server.uidvalidity, f.server.uidnext.unwrap_or(1)),
                ))
            })
            .collect();
        let pushed = push::push(
            &mut session,
            &mut state,
            &account.name,
            &folders,
            &plan.actions,
        )
        .await?;
        for (id, counts) in pushed.counts {
            if let Some(t) = targets.iter_mut().find(|t| t.row.id == id) {
                t.report.pushed_flags += counts.pushed_flags;
                t.report.deleted += counts.deleted;
                t.report.moved_out += counts.moved_out;
                t.report.uploaded += counts.uploaded;
                t.report.refused.extend(counts.refused);
            }
        }
        for (id, e) in pushed.failed {
            if let Some(t) = targets.iter_mut().find(|t| t.row.id == id) {
                fail_folder(&mut state, t, &e)?;
            }
            if let Some(f) = snapshot.folders.iter_mut().find(|f| f.id == id) {
                f.failed = true;
            }
        }
    }

    // Then the local side. Local-only actions (relocations, then flags and removals) run on a
    // blocking thread while the new messages download: the one touches only files that
    // exist, the other only files it creates, and the two overlap disk work with
    // waiting for the server.
    let mut fetches: BTreeMap<FolderId, Vec<u32>> = BTreeMap::new();
    for a in &plan.actions {
        if let Action::Fetch { folder, uid } = a {
            fetches.entry(*folder).or_default().push(*uid);
        }
    }
    for uids in fetches.values_mut() {
        uids.sort_unstable();
    }
    let local_folders: HashMap<FolderId, LocalFolder> = snapshot
        .folders
        .iter()
        .filter(|f| !f.failed)
        .filter_map(|f| {
            let t = targets.iter().find(|t| t.row.id == f.id)?;
            let folder = LocalFolder {
                maildir: t.maildir.clone(),
                uidvalidity: f.server.uidvalidity,
            };
            Some((f.id, folder))
        })
        .collect();
    let actions = plan.actions;
    let local = tokio::task::spawn_blocking(move || {
        let mut state = state;
        let applied = apply_local(&mut state, &local_folders, &actions, &mut always);
        (applied, state)
    });

    // The new messages download meanwhile, on more than one connection for a large
    // download; the listing session serves the first.
    let folders: Vec<download::Folder> = snapshot
        .folders
        .iter()
        .filter(|f| !f.failed)
        .filter_map(|f| {
            let t = targets.iter().find(|t| t.row.id == f.id)?;
            Some(download::Folder {
                id: t.row.id,
                local: t.mapping.local.clone(),
                remote: t.remote.name.clone(),
                display: t.remote.display.clone(),
                maildir: t.maildir.clone(),
                selected: t.selected.clone(),
                uids: fetches.remove(&t.row.id).unwrap_or_default(),
                sizes: f
                    .sizes
                    .iter()
                    .filter_map(|(&uid, size)| Some((uid, (*size)?)))
                    .collect(),
            })
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
    // The watermarks last: only now are the pass's downloads, renames and removals
    // all committed. Written earlier, a kill in between would leave the next pass
    // asking for changes since a point the records never reached (CHANGEDSINCE,
    // VANISHED), and those changes would never be seen again.
    for (id, mark) in plan.watermarks {
        if targets.iter().any(|t| t.row.id == id && !t.failed) {
            state.set_folder_synced(
                id,
                mark.uidvalidity,
                mark.uidnext,
                mark.highestmodseq,
                unix_now(),
            )?;
        }
    }
    // What a pass saw of the local folders is kept only when it acted on all of them:
    // a change it read but left (a folder not synced this pass, or failed) must be
    // read again by the next.
    let whole = options.only_folder.is_none()
        && failed_reports.is_empty()
        && targets.iter().all(|t| !t.failed)
        && targets.len() == local_list.len();
    if let Some(seen) = &seen_locally
        && whole
    {
        local::keep_stamps(&mut state, &local_list, seen)?;
    }
    let token_requests = tokens.token_requests();

    let mut folders: Vec<FolderReport> = targets.into_iter().map(|t| t.report).collect();
    folders.extend(failed_reports);
    Ok(SyncReport {
        account: account.name.clone(),
        folders,
        elapsed: started.elapsed(),
        token_requests,
        dry_run: None,
    })
}

/// How many times a pass answers the planner's questions before giving up on a
/// folder: records, then sizes, then fingerprints.
const MAX_PLAN_ROUNDS: usize = 3;

/// Resolves the account's mappings against the server's folders. A mapping that
/// resolves nowhere fails alone, with its config line, in the second list.
fn resolve(
    config: &Config,
    account: &Account,
    options: &SyncOptions,
    listed: &[RemoteFolder],
    state: &mut State,
) -> Result<(Vec<Target>, Vec<FolderReport>), SyncError> {
    let mut targets: Vec<Target> = Vec::new();
    let mut failed_reports = Vec::new();
    for mapping in &account.folders {
        if let Some(only) = &options.only_folder
            && &mapping.local != only
        {
            continue;
        }
        match roles::resolve(&mapping.remote, listed) {
            Ok(remote) => {
                let row = state.folder(&account.name, &mapping.local, &remote.name)?;
                let path = account.maildir.join(&mapping.local);
                // Two-way: a folder that held synced messages and is gone (a disk not
                // mounted, a wrong path) is not an empty one to mirror as deletions.
                if account.direction == Direction::Both
                    && Maildir::at(&path)
                        .stamp()
                        .map_err(|source| SyncError::Maildir {
                            path: path.clone(),
                            source,
                        })?
                        .is_none()
                    && state.count(row.id)? > 0
                {
                    let message = format!(
                        "{} ({}): the local folder {} is missing but {} messages were synced to it; nothing was deleted on the server. Mount the disk or fix `maildir` in the config; to start the folder afresh, remove it with `mailsync folders` and map it again",
                        mapping.local,
                        remote.display,
                        path.display(),
                        state.count(row.id)?
                    );
                    tracing::warn!(folder = %mapping.local, "{message}");
                    state.set_folder_error(row.id, &message)?;
                    failed_reports.push(FolderReport {
                        local: mapping.local.clone(),
                        remote: remote.display.clone(),
                        error: Some(message),
                        ..FolderReport::default()
                    });
                    continue;
                }
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
    Ok((targets, failed_reports))
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

/// Marks a target failed for this pass, with why, in its report and its row.
fn fail_folder(
    state: &mut State,
    t: &mut Target,
    e: &dyn std::fmt::Display,
) -> Result<(), SyncError> {
    let text = folder_failure(&t.mapping.local, &t.remote.display, e);
    t.failed = true;
    t.report.error = Some(text.clone());
    state.set_folder_error(t.row.id, &text)?;
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

/// Where a two-way pass sends local deletions: the folder mapped to the server's trash
/// (`@trash`, or a name that resolves to the same folder) if it is synced in this pass
/// and present locally; [`Trash::Wait`] if one is mapped but cannot be used now;
/// expunged only with `delete = "expunge"` or no trash mapped at all.
fn trash_of(
    account: &Account,
    listed: &[RemoteFolder],
    targets: &[Target],
    local: &[local::Folder],
) -> Trash {
    if account.delete == Delete::Expunge {
        return Trash::Expunge;
    }
    let Ok(trash) = roles::resolve(&RemoteSpec::Role(Role::Trash), listed) else {
        return Trash::Expunge;
    };
    let mapped = account
        .folders
        .iter()
        .any(|m| roles::resolve(&m.remote, listed).is_ok_and(|r| r.name == trash.name));
    if !mapped {
        return Trash::Expunge;
    }
    match targets.iter().find(|t| t.remote.name == trash.name) {
        Some(t) if !t.failed && local.iter().any(|f| f.id == t.row.id) => Trash::To(t.row.id),
        _ => Trash::Wait,
    }
}

/// A target as the server-side effects need it.
fn push_folder(t: &Target, uidvalidity: u32, uidnext: u32) -> push::Folder {
    push::Folder {
        remote: t.remote.name.clone(),
        maildir: t.maildir.clone(),
        uidvalidity,
        uidnext,
    }
}

/// Every mapped folder of a two-way account that has a row, with its Maildir (not
/// created: a missing one must stay missing) and the stamp its last pass kept.
fn local_folders_of(account: &Account, state: &mut State) -> Result<Vec<local::Folder>, SyncError> {
    let rows = state.folders(&account.name)?;
    Ok(account
        .folders
        .iter()
        .filter_map(|m| {
            let row = rows.iter().find(|r| r.local == m.local)?;
            Some(local::Folder {
                id: row.id,
                maildir: Maildir::at(&account.maildir.join(&m.local)),
                kept: row.local_stamp,
            })
        })
        .collect())
}

/// What a plan would do, one line per folder and side, for `sync --dry-run`.
fn describe(actions: &[Action], targets: &[Target]) -> Vec<String> {
    #[derive(Default)]
    struct Sides {
        fetch: u64,
        flags: u64,
        moved_in: u64,
        remove: u64,
        push_flags: u64,
        delete: u64,
        moves: BTreeMap<String, u64>,
        upload: u64,
        adopt: u64,
    }
    let name = |id: &FolderId| {
        targets
            .iter()
            .find(|t| t.row.id == *id)
            .map_or_else(|| format!("folder {}", id.0), |t| t.mapping.local.clone())
    };
    let mut by: BTreeMap<String, Sides> = BTreeMap::new();
    for a in actions {
        match a {
            Action::Fetch { folder, .. } => by.entry(name(folder)).or_default().fetch += 1,
            Action::SetFlags { folder, .. } => by.entry(name(folder)).or_default().flags += 1,
            Action::Relocate { folder, .. } => by.entry(name(folder)).or_default().moved_in += 1,
            Action::Remove { record } => by.entry(name(&record.folder)).or_default().remove += 1,
            Action::PushFlags { folder, .. } => by.entry(name(folder)).or_default().push_flags += 1,
            Action::PushDelete { record, .. } => {
                by.entry(name(&record.folder)).or_default().delete += 1
            }
            Action::PushMove { record, to, .. } => {
                *by.entry(name(&record.folder))
                    .or_default()
                    .moves
                    .entry(name(to))
                    .or_default() += 1
            }
            Action::Upload { file, .. } => by.entry(name(&file.folder)).or_default().upload += 1,
            Action::Adopt { folder, .. } => by.entry(name(folder)).or_default().adopt += 1,
        }
    }
    let mut lines = Vec::new();
    for (folder, s) in by {
        let local = [
            (s.fetch, "download"),
            (s.flags, "set flags on"),
            (s.moved_in, "move in"),
            (s.remove, "remove"),
            (s.adopt, "pair with the server's copy"),
        ];
        let parts: Vec<String> = local
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{what} {n}"))
            .collect();
        if !parts.is_empty() {
            lines.push(format!("{folder}: local: would {}", parts.join(", ")));
        }
        let mut remote: Vec<String> = [
            (s.push_flags, "set flags on".to_owned()),
            (s.delete, "delete".to_owned()),
            (s.upload, "upload".to_owned()),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{what} {n}"))
        .collect();
        remote.extend(s.moves.iter().map(|(to, n)| format!("move {n} to {to}")));
        if !remote.is_empty() {
            lines.push(format!("{folder}: server: would {}", remote.join(", ")));
        }
    }
    if lines.is_empty() {
        lines.push("nothing to do".to_owned());
    }
    lines
}
