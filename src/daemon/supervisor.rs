//! `mailsync run`: the daemon. One supervised task per account; signals and config
//! edits become one control stream (SIGHUP and a saved file take the same path); a
//! config that does not load is rejected with its error and the running one kept;
//! SIGTERM stops every task at a message boundary and exits within 10 s.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::account::{self, Board, Heartbeat, StopHandle};
use super::control::Control;
use super::notify::Notifier;
use crate::commands::{CommandError, Exit};
use crate::config::{self, Account, Config};

/// How long shutdown waits for tasks before exiting anyway (systemd's default stop
/// timeout is 90 s; ours promises 10).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

struct Running {
    account: Account,
    stop: StopHandle,
    task: JoinHandle<()>,
    heartbeat: Heartbeat,
}

/// How often the supervisor looks for accounts that stopped showing signs of life.
const CHECK_EVERY: Duration = Duration::from_secs(30);

pub async fn run(path: &Path) -> Result<Exit, CommandError> {
    let notifier = Notifier::from_env();
    let mut config = Arc::new(config::load(path)?);
    let (tx, mut rx) = mpsc::channel::<Control>(16);
    spawn_signals(tx.clone())?;
    let _watcher = super::watch::watch_config(path, tx.clone());
    if _watcher.is_none() {
        tracing::warn!(
            "cannot watch {} for changes; use SIGHUP (systemctl reload) after editing it",
            path.display()
        );
    }

    let board: Board = Arc::new(Mutex::new(BTreeMap::new()));
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    for account in config.accounts.values() {
        running.insert(account.name.clone(), start(&config, account, &board));
    }
    tracing::info!(config = %path.display(), accounts = running.len(), "mailsync daemon started");
    notifier.ready();
    let _watchdog = notifier.clone().spawn_watchdog();
    let status_task = spawn_status(notifier.clone(), board.clone());

    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let control = tokio::select! {
            control = rx.recv() => control,
            _ = check.tick() => {
                restart_stuck(&mut running, |a| start(&config, a, &board));
                continue;
            }
        };
        let Some(control) = control else { break };
        match control {
            Control::Reload => {
                notifier.reloading();
                match config::load(path) {
                    Ok(new) => {
                        let new = Arc::new(new);
                        apply(&config, &new, &mut running, &board).await;
                        config = new;
                    }
                    Err(e) => {
                        tracing::error!("{e}; keeping the running configuration");
                    }
                }
                notifier.ready();
            }
            Control::Shutdown => break,
        }
    }

    tracing::info!("shutting down");
    notifier.stopping();
    status_task.abort();
    let tasks: Vec<Running> = std::mem::take(&mut running).into_values().collect();
    for r in &tasks {
        r.stop.stop();
    }
    let all = futures::future::join_all(tasks.into_iter().map(|r| r.task));
    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
        tracing::warn!(
            "some accounts did not stop in time; exiting anyway (their state is journalled)"
        );
    }
    Ok(Exit::Ok)
}

fn start(config: &Arc<Config>, account: &Account, board: &Board) -> Running {
    let (stop, signal) = account::stop_pair();
    // Until the task's first step says otherwise: as long as a pass may be quiet.
    let heartbeat = Heartbeat::new((config.daemon.command_timeout * 10).max(STARTUP_QUIET));
    let task = tokio::spawn(account::run(
        config.clone(),
        account.clone(),
        signal,
        board.clone(),
        heartbeat.clone(),
    ));
    Running {
        account: account.clone(),
        stop,
        task,
        heartbeat,
    }
}

/// How long a new task may take to show its first sign of life, at least.
const STARTUP_QUIET: Duration = Duration::from_secs(600);

/// Restarts every account task that is past due with its heartbeat (stuck where
/// nothing has a deadline) or that ended without being asked to (a panic). Aborting
/// it is like a kill -9 of that account alone: its journal makes the next pass
/// finish or undo what it was doing.
fn restart_stuck(running: &mut BTreeMap<String, Running>, start: impl Fn(&Account) -> Running) {
    for r in running.values_mut() {
        let why = match r.heartbeat.overdue() {
            _ if r.task.is_finished() => "its task ended".to_owned(),
            Some(late) => format!(
                "it showed no sign of progress for {}s past its bound",
                late.as_secs()
            ),
            None => continue,
        };
        tracing::error!(account = %r.account.name, "{why}; restarting it");
        r.stop.stop();
        r.task.abort();
        *r = start(&r.account);
    }
}

/// Applies a new config: new accounts start, removed ones stop (their mail stays),
/// changed ones restart with the new settings and mappings.
async fn apply(
    old: &Arc<Config>,
    new: &Arc<Config>,
    running: &mut BTreeMap<String, Running>,
    board: &Board,
) {
    let daemon_changed = old.daemon != new.daemon;
    let names: Vec<String> = running.keys().cloned().collect();
    let mut stopping = Vec::new();
    for name in names {
        let keep = match new.accounts.get(&name) {
            Some(a) => !daemon_changed && same(a, &running[&name].account),
            None => false,
        };
        if !keep && let Some(r) = running.remove(&name) {
            if new.accounts.contains_key(&name) {
                tracing::info!(account = %name, "account changed: restarting it");
            } else {
                tracing::info!(account = %name, "account removed from the config: stopping it (its mail stays)");
                if let Ok(mut b) = board.lock() {
                    b.remove(&name);
                }
            }
            r.stop.stop();
            stopping.push(r.task);
        }
    }
    // The old tasks must let go of their account lock before the new ones start.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, futures::future::join_all(stopping)).await;
    // A removed account leaves no "stopped" row behind for `status` to list.
    if let Ok(mut state) = crate::state::State::open(&new.daemon.state_dir) {
        for name in old
            .accounts
            .keys()
            .filter(|n| !new.accounts.contains_key(*n))
        {
            if let Err(e) = state.clear_daemon_state(name) {
                tracing::warn!(account = %name, "cannot clear its status: {e}");
            }
        }
    }
    for account in new.accounts.values() {
        if !running.contains_key(&account.name) {
            tracing::info!(account = %account.name, "starting account");
            running.insert(account.name.clone(), start(new, account, board));
        }
    }
}

/// Two accounts are the same if only the config lines of their mappings moved.
fn same(a: &Account, b: &Account) -> bool {
    let strip = |x: &Account| {
        let mut x = x.clone();
        for m in &mut x.folders {
            m.line = 0;
        }
        x
    };
    strip(a) == strip(b)
}

fn spawn_signals(tx: mpsc::Sender<Control>) -> Result<(), CommandError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(CommandError::Output)?;
    let mut term = signal(SignalKind::terminate()).map_err(CommandError::Output)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CommandError::Output)?;
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                _ = hup.recv() => Control::Reload,
                _ = term.recv() => Control::Shutdown,
                _ = int.recv() => Control::Shutdown,
            };
            if tx.send(control).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Sends the accounts' activity to systemd as STATUS= when it changes.
fn spawn_status(notifier: Notifier, board: Board) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            let line = match board.lock() {
                Ok(b) => b.values().cloned().collect::<Vec<_>>().join("; "),
                Err(_) => String::new(),
            };
            if line != last {
                notifier.status(&line);
                last = line;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        let text = r#"
[daemon]
state_dir = "/nonexistent/mailsync-test"
[accounts.work]
provider = "custom"
email = "jane@example.com"
client_id = "11111111-2222-3333-4444-555555555555"
flow = "client-credentials"
client_secret_file = "/nonexistent/secret"
maildir = "/nonexistent/Mail"
imap_host = "localhost"
imap_port = 993
tls = "implicit"
token_url = "https://login.example.com/token"
[accounts.work.folders]
Inbox = "INBOX"
"#;
        let config = config::parse(text, Path::new("config.toml")).unwrap();
        config.accounts["work"].clone()
    }

    /// A task stuck where nothing has a deadline of its own (the test's: a future
    /// that never completes), due `within`.
    fn stuck(account: &Account, within: Duration) -> Running {
        let (stop, _signal) = account::stop_pair();
        Running {
            account: account.clone(),
            stop,
            task: tokio::spawn(std::future::pending()),
            heartbeat: Heartbeat::new(within),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_past_its_heartbeat_is_restarted_and_only_then() {
        let work = account();
        let mut running =
            BTreeMap::from([("work".to_owned(), stuck(&work, Duration::from_secs(60)))]);
        let first = running["work"].task.id();
        let restarts = std::sync::atomic::AtomicUsize::new(0);
        let start = |a: &Account| {
            restarts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            stuck(a, Duration::from_secs(600))
        };

        tokio::time::advance(Duration::from_secs(59)).await;
        restart_stuck(&mut running, start);
        assert_eq!(
            running["work"].task.id(),
            first,
            "restarted within its bound"
        );

        // A beat pushes the bound back.
        running["work"].heartbeat.beat(Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(59)).await;
        restart_stuck(&mut running, start);
        assert_eq!(running["work"].task.id(), first, "restarted though it beat");

        tokio::time::advance(Duration::from_secs(2)).await;
        restart_stuck(&mut running, start);
        assert_ne!(
            running["work"].task.id(),
            first,
            "not restarted past its bound"
        );
        assert_eq!(restarts.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(running["work"].heartbeat.overdue().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_task_is_aborted_before_its_successor_starts() {
        let work = account();
        let mut running = BTreeMap::from([("work".to_owned(), stuck(&work, Duration::ZERO))]);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The old task holds `tx` until it is dropped: aborting drops it.
        running.get_mut("work").unwrap().task = tokio::spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await
        });
        restart_stuck(&mut running, |a| stuck(a, Duration::from_secs(600)));
        let ended = tokio::time::timeout(Duration::from_secs(1), rx).await;
        assert!(matches!(ended, Ok(Err(_))), "the old task still runs");
    }
}
