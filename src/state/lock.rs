//! One lock per account, so two runs (a `sync` and the daemon, or two `sync`s) never
//! interleave. The kernel releases it when the process dies, even under SIGKILL.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "account {account} is being synced by another mailsync process (lock {path} is held); wait for it, or stop the daemon"
    )]
    Busy { account: String, path: PathBuf },
    #[error("cannot open lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held while an account is being synced; released on drop.
#[derive(Debug)]
pub struct AccountLock {
    _file: File,
    path: PathBuf,
}

impl AccountLock {
    pub fn acquire(state_dir: &Path, account: &str) -> Result<AccountLock, LockError> {
        let path = state_dir.join(format!("{account}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(AccountLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Busy {
                account: account.to_owned(),
                path,
            }),
            Err(TryLockError::Error(source)) => Err(LockError::Io { path, source }),
        }
    }

    /// Whether another process holds the account's lock (for `status`).
    pub fn is_held(state_dir: &Path, account: &str) -> bool {
        matches!(
            AccountLock::acquire(state_dir, account),
            Err(LockError::Busy { .. })
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
