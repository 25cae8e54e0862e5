//! Tells systemd how the daemon is doing (`Type=notify`): READY=1 once the config is
//! loaded, STATUS= lines, RELOADING=1 and STOPPING=1, and WATCHDOG=1 pings.
//!
//! Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing. A failed send is
//! logged and otherwise ignored: systemd's bookkeeping must never take the sync down.
//!
//! The datagram is sent here rather than with `sd_notify::notify`, which takes the
//! socket only from the environment (so a test would have to set it, `unsafe` since
//! Rust 2024) and cannot reach an abstract socket (`@name`). The `sd-notify` crate
//! still names the messages and reads CLOCK_MONOTONIC for MONOTONIC_USEC=, which `std`
//! offers no safe way to do.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// systemd drops a notification bigger than its receive buffer (4 KiB) whole; a STATUS=
/// line is cut well below that.
const MAX_STATUS: usize = 1024;

/// `tokio::time::interval` refuses a zero period; a watchdog this tight is a typo.
const MIN_PING: Duration = Duration::from_millis(10);

/// Sends notifications to the service manager; cheap to clone, one per task if need be.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    /// `None` outside systemd.
    target: Option<SocketAddr>,
}

impl Notifier {
    /// The socket systemd names in `$NOTIFY_SOCKET`; a no-op notifier without one.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|v| target_from(&v));
        Notifier { target }
    }

    /// Sends to the datagram socket bound at `path` (tests, or a supervisor of your own).
    pub fn to_socket(path: impl AsRef<Path>) -> Notifier {
        let path = path.as_ref();
        let target = SocketAddr::from_pathname(path)
            .map_err(|e| tracing::warn!("notify socket {}: {e}", path.display()))
            .ok();
        Notifier { target }
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up is over (the config is loaded), or a reload is.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// A one-line summary for `systemctl status`. Line breaks become spaces (each line
    /// of a notification is a separate assignment) and long text is cut.
    pub fn status(&self, text: &str) {
        let line = status_line(text);
        self.send(&[NotifyState::Status(&line)]);
    }

    /// A reload has begun; [`Notifier::ready`] ends it. systemd ≥ 253 wants the
    /// CLOCK_MONOTONIC time with it, to tell this reload from an earlier one.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => {
                tracing::debug!("reading CLOCK_MONOTONIC: {e}");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// Still alive: resets systemd's `WatchdogSec=` timer.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Pings the watchdog every [`watchdog_interval`] on the current tokio runtime.
    /// `None` when there is nothing to do (no socket, no `WatchdogSec=`) or no runtime
    /// to do it on. The pings prove the runtime is alive; a stuck account is the
    /// account task's business (its command timeouts), not a reason to restart the rest.
    pub fn spawn_watchdog(self) -> Option<JoinHandle<()>> {
        self.target.as_ref()?;
        let every = watchdog_interval()?;
        self.spawn_watchdog_every(every)
    }

    fn spawn_watchdog_every(self, every: Duration) -> Option<JoinHandle<()>> {
        self.target.as_ref()?;
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::warn!("systemd watchdog not started: {e}");
                return None;
            }
        };
        let every = every.max(MIN_PING);
        tracing::debug!("pinging the systemd watchdog every {every:?}");
        Some(runtime.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            // After a stall, ping once and keep the rhythm; a burst of pings helps nobody.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                self.watchdog();
            }
        }))
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        let Some(target) = &self.target else {
            return;
        };
        let message = states
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        // Non-blocking: a full socket buffer loses one notification rather than stalling
        // a runtime thread.
        let sent = UnixDatagram::unbound().and_then(|socket| {
            socket.set_nonblocking(true)?;
            socket.send_to_addr(message.as_bytes(), target)
        });
        match sent {
            Ok(n) if n == message.len() => {}
            Ok(n) => tracing::warn!(
                "systemd notification cut short ({n} of {} bytes)",
                message.len()
            ),
            Err(e) => tracing::warn!("systemd notification not sent: {e}"),
        }
    }
}

/// Half of `$WATCHDOG_USEC` when systemd's watchdog is on for this process
/// (`$WATCHDOG_PID` unset or ours): pinging at half the timeout leaves room for one
/// late ping. `None` when the watchdog is off.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn interval_from(usec: Option<&str>, pid: Option<&str>, ours: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(ours)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// `$NOTIFY_SOCKET` as an address: an absolute path, or `@name` for an abstract socket
/// (as `sd_notify(3)` reads it). Anything else is logged and ignored.
fn target_from(value: &OsStr) -> Option<SocketAddr> {
    let bytes = value.as_bytes();
    let parsed = match bytes.first() {
        None => return None,
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(value),
        Some(_) => {
            tracing::warn!(
                "NOTIFY_SOCKET={}: not a path or an abstract socket; not notifying systemd",
                value.to_string_lossy()
            );
            return None;
        }
    };
    parsed
        .map_err(|e| {
            tracing::warn!(
                "NOTIFY_SOCKET={}: {e}; not notifying systemd",
                value.to_string_lossy()
            )
        })
        .ok()
}

/// One line, without NUL (systemd drops a message containing one), at most
/// [`MAX_STATUS`] bytes, cut at a character boundary.
fn status_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\0') {
                ' '
            } else {
                c
            }
        })
        .collect();
    if line.len() > MAX_STATUS {
        let mut end = MAX_STATUS - '…'.len_utf8();
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for systemd's end of the socket.
    struct Manager {
        socket: UnixDatagram,
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    impl Manager {
        fn bind() -> Manager {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            Manager {
                socket,
                _dir: dir,
                path,
            }
        }

        fn receive(&self) -> String {
            let mut buf = [0u8; 8192];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    #[test]
    fn systemd_receives_ready_status_watchdog_and_stopping() {
        let manager = Manager::bind();
        let notifier = Notifier::to_socket(&manager.path);
        assert!(notifier.is_enabled());

        notifier.ready();
        assert_eq!(manager.receive(), "READY=1");
        notifier.status("work: Inbox 120/500");
        assert_eq!(manager.receive(), "STATUS=work: Inbox 120/500");
        notifier.watchdog();
        assert_eq!(manager.receive(), "WATCHDOG=1");
        notifier.clone().stopping();
        assert_eq!(manager.receive(), "STOPPING=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let manager = Manager::bind();
        Notifier::to_socket(&manager.path).reloading();
        let message = manager.receive();
        let mut lines = message.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {message:?}"));
        assert!(usec > 0);
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn a_status_stays_one_short_line() {
        let manager = Manager::bind();
        let notifier = Notifier::to_socket(&manager.path);
        // Server text can end up in a status: it must not smuggle in READY=1.
        notifier.status("work: NO oops\nREADY=1\r\0");
        assert_eq!(manager.receive(), "STATUS=work: NO oops READY=1  ");

        notifier.status(&"é".repeat(5000));
        let message = manager.receive();
        assert!(
            message.len() <= "STATUS=".len() + MAX_STATUS,
            "{}",
            message.len()
        );
        assert!(message.ends_with('…'));
    }

    #[test]
    fn an_abstract_socket_is_reached() {
        let name = format!(
            "mailsync-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let notifier = Notifier {
            target: target_from(OsStr::new(&format!("@{name}"))),
        };
        notifier.ready();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn without_a_socket_nothing_happens() {
        for value in ["", "relative/notify", "vsock:2:1234"] {
            assert!(target_from(OsStr::new(value)).is_none(), "{value:?}");
        }
        let notifier = Notifier::default();
        assert!(!notifier.is_enabled());
        notifier.ready();
        notifier.status("x");
        notifier.reloading();
        notifier.watchdog();
        notifier.stopping();
        assert!(
            notifier
                .spawn_watchdog_every(Duration::from_millis(1))
                .is_none()
        );
    }

    #[test]
    fn a_vanished_manager_is_not_an_error() {
        let manager = Manager::bind();
        let notifier = Notifier::to_socket(&manager.path);
        drop(manager);
        notifier.ready();
        notifier.watchdog();
    }

    #[test]
    fn the_watchdog_interval_is_half_of_watchdog_usec_for_this_process() {
        let ours = 4242;
        let half_minute = Some(Duration::from_secs(30));
        assert_eq!(interval_from(Some("60000000"), None, ours), half_minute);
        assert_eq!(
            interval_from(Some("60000000"), Some("4242"), ours),
            half_minute
        );
        assert_eq!(
            interval_from(Some(" 60000000\n"), Some("4242"), ours),
            half_minute
        );
        // Meant for another process (a parent that exec'd us), off, or garbled.
        assert_eq!(interval_from(Some("60000000"), Some("1"), ours), None);
        assert_eq!(interval_from(Some("60000000"), Some("x"), ours), None);
        assert_eq!(interval_from(None, None, ours), None);
        assert_eq!(interval_from(Some("0"), None, ours), None);
        assert_eq!(interval_from(Some("soon"), None, ours), None);
        assert_eq!(interval_from(Some("-5"), None, ours), None);
    }

    #[test]
    fn no_watchdog_without_a_runtime() {
        let manager = Manager::bind();
        let notifier = Notifier::to_socket(&manager.path);
        assert!(
            notifier
                .spawn_watchdog_every(Duration::from_secs(1))
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_watchdog_task_keeps_pinging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = tokio::net::UnixDatagram::bind(&path).unwrap();
        let task = Notifier::to_socket(&path)
            .spawn_watchdog_every(Duration::from_millis(20))
            .expect("a watchdog task");
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            let n = tokio::time::timeout(Duration::from_secs(10), manager.recv(&mut buf))
                .await
                .expect("a ping within 10 s")
                .unwrap();
            assert_eq!(&buf[..n], b"WATCHDOG=1");
        }
        task.abort();
    }
}
