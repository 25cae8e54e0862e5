//! What a pass reports: progress as it goes, and per folder at the end.

use std::time::Duration;

/// How a pass reports progress; the `sync` command draws bars, the daemon logs.
pub trait Progress: Send + Sync {
    fn folder_started(&self, _local: &str, _to_fetch: u64) {}
    fn fetched(&self, _local: &str, _messages: u64, _bytes: u64) {}
    fn folder_finished(&self, _report: &FolderReport) {}
}

/// Progress that reports nothing.
pub struct Quiet;
impl Progress for Quiet {}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FolderReport {
    pub local: String,
    pub remote: String,
    pub fetched: u64,
    pub flag_updates: u64,
    pub removed: u64,
    pub moved_in: u64,
    pub bytes: u64,
    /// Two-way: messages whose flags were set on the server.
    pub pushed_flags: u64,
    /// Two-way: local deletions sent to the server (to its trash, or expunged).
    pub deleted: u64,
    /// Two-way: local moves made on the server, out of this folder.
    pub moved_out: u64,
    /// Two-way: new local messages uploaded to this folder.
    pub uploaded: u64,
    /// Two-way: uploads the server refused (too large, a line too long, …), with
    /// why; the files stay, and are not offered again until renamed.
    pub refused: Vec<String>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    pub account: String,
    pub folders: Vec<FolderReport>,
    pub elapsed: Duration,
    pub token_requests: u64,
    /// With `--dry-run`: what the pass would have done, one line per folder and side;
    /// nothing was changed.
    pub dry_run: Option<Vec<String>>,
}

impl SyncReport {
    pub fn failed_folders(&self) -> usize {
        self.folders.iter().filter(|f| f.error.is_some()).count()
    }
}
