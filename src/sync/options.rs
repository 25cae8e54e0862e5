//! How a pass is run: what to sync, how to report, when to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::imap::Session;

use super::error::SyncError;
use super::report::{Progress, Quiet};

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
    /// Plan and report, change nothing (`sync --dry-run`).
    pub dry_run: bool,
    /// Lift the mass-deletion limit for this pass (`sync --allow-mass-delete`).
    pub allow_mass_delete: bool,
    /// Lift the mass-upload limit for this pass (`sync --allow-mass-upload`).
    pub allow_mass_upload: bool,
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
            dry_run: false,
            allow_mass_delete: false,
            allow_mass_upload: false,
        }
    }
}

/// Sleeps `wait`, ending early (as interrupted) if the pass is asked to stop.
pub(super) async fn pause(options: &SyncOptions, wait: Duration) -> Result<(), SyncError> {
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
