//! A `mailsync run` child process for the tests: its log in a file, signals, and a
//! wait for a condition with a deadline that names what it waited for.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use super::Env;

/// A running `mailsync run`; killed on drop if the test did not stop it.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn start(env: &Env, extra_env: &[(&str, String)]) -> Daemon {
        let log = env
            .dir
            .path()
            .join(format!("daemon-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = env.command(&["-v", "run"]);
        cmd.env("RUST_LOG", "mailsync=debug");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        Daemon {
            child: Some(cmd.spawn().unwrap()),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM, then how long it took to exit, and its exit code.
    pub async fn terminate(mut self) -> (Duration, Option<i32>) {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return (started.elapsed(), status.code());
                }
                if started.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    return (started.elapsed(), None);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `cond` holds, polling every 20 ms; returns how long it took.
pub async fn until(
    limit: Duration,
    what: &str,
    daemon: &Daemon,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if cond() {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            panic!(
                "{what}: not within {limit:?}\n--- daemon log\n{}",
                daemon.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
