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
