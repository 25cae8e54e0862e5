//! Sync: the pure model and planner, and the executor that applies a plan.
mod download;
pub mod execute;
pub mod headers;
pub mod login;
pub mod model;
pub mod plan;
mod writer;

pub use execute::{FolderReport, SyncOptions, SyncReport, sync_account, sync_account_with};
