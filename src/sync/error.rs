//! Why a pass failed, and how each failure is retried.

use std::path::PathBuf;

use crate::auth::AuthError;
use crate::imap::{self, ImapError};
use crate::retry::Retry;
use crate::state::{LockError, StateError};

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

/// Why a step for one folder stopped: the folder failed (the pass goes on without it),
/// or the pass must stop.
pub(super) enum Failed {
    Folder(ImapError),
    Pass(SyncError),
}

impl From<StateError> for Failed {
    fn from(e: StateError) -> Self {
        Failed::Pass(e.into())
    }
}

impl From<ImapError> for Failed {
    fn from(e: ImapError) -> Self {
        Failed::Folder(e)
    }
}

impl From<SyncError> for Failed {
    fn from(e: SyncError) -> Self {
        Failed::Pass(e)
    }
}

/// Logs a folder's failure and returns the text its report and row keep.
pub(super) fn folder_failure(local: &str, display: &str, e: &dyn std::fmt::Display) -> String {
    tracing::warn!(folder = %local, "{e}");
    format!("{local} ({display}): {e}")
}

/// Names `path` in a Maildir error: `.map_err(maildir_err(path))`.
pub(super) fn maildir_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SyncError {
    let path = path.into();
    move |source| SyncError::Maildir { path, source }
}
