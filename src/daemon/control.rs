//! What the supervisor reacts to, below both the supervisor and the sources that send
//! it (signals, the config watcher).

/// What the supervisor reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP, or the config file changed.
    Reload,
    /// SIGTERM or SIGINT.
    Shutdown,
}
