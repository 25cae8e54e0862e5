//! Watching the config file for edits. The watch is on its *directory*, filtered by
//! name: editors save by writing a temporary file and renaming it over the original,
//! which a watch on the file itself would miss. Bursts of events are coalesced into
//! one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::control::Control;

/// Events within this window after the first make one reload.
const SETTLE: Duration = Duration::from_millis(200);

/// Starts watching; the returned watcher must be kept alive. `None` if the directory
/// cannot be watched (the daemon then relies on SIGHUP).
pub fn watch_config(path: &Path, tx: mpsc::Sender<Control>) -> Option<RecommendedWatcher> {
    let path = absolute(path);
    let dir = path.parent()?.to_owned();
    let name = path.file_name()?.to_owned();
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()))
        {
            let _ = raw_tx.send(());
        }
    })
    .ok()?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).ok()?;
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while raw_rx.try_recv().is_ok() {}
            if tx.send(Control::Reload).await.is_err() {
                return;
            }
        }
    });
    Some(watcher)
}

/// The config path the daemon was started with, made absolute so a watcher on its
/// directory keeps working whatever the working directory.
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_owned())
    }
}
