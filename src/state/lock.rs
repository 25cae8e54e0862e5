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
    #[error(
        "account {account}'s outbox is being sent by another mailsync process (lock {path} is held); try again in a minute"
    )]
    OutboxBusy { account: String, path: PathBuf },
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
        let file = open_lock_file(&path)?;
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

/// Held while an account's outbox is being sent, apart from [`AccountLock`]: a `send`
/// must not wait for a sync, but two senders (a `send` and the daemon) must never take
/// the same message. Released on drop, and by the kernel when the process dies.
#[derive(Debug)]
pub struct OutboxLock {
    _file: File,
}

impl OutboxLock {
    /// Waits up to `within` for the lock (another sender is at work); `Busy` after that.
    pub async fn acquire(
        state_dir: &Path,
        account: &str,
        within: std::time::Duration,
    ) -> Result<OutboxLock, LockError> {
        let path = state_dir.join(format!("{account}.outbox.lock"));
        let file = open_lock_file(&path)?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(OutboxLock { _file: file }),
                Err(TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::OutboxBusy {
                        account: account.to_owned(),
                        path,
                    });
                }
                Err(TryLockError::Error(source)) => return Err(LockError::Io { path, source }),
            }
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_owned(),
            source,
        })
}
