//! The daemon (`mailsync run`): a supervisor with one task per account, IDLE and
//! polling, hot reload of the config, systemd integration, backoff.

mod account;
pub mod backoff;
mod control;
pub mod notify;
pub mod supervisor;
mod watch;

pub use control::Control;
pub use supervisor::run;
