//! Sync: observe the server, plan with a pure planner, apply the plan.
mod apply;
mod download;
mod error;
mod local;
pub mod login;
pub mod model;
mod observe;
mod options;
mod pass;
pub mod plan;
mod push;
mod recover;
mod report;
mod two_way;
mod writer;

pub use error::SyncError;
pub use options::SyncOptions;
pub use pass::{sync_account, sync_account_with};
pub use report::{FolderReport, Progress, Quiet, SyncReport};
