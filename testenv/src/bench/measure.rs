//! Runs one tool once and measures it: wall time (`Instant`), CPU user+sys and peak RSS
//! of the child (GNU `time -f '%e %U %S %M'`, i.e. its `wait4` rusage), and what the
//! server sent to the sessions that logged in during the run (the `out=` of their
//! disconnect lines in Dovecot's log, picked by `session=<…>` id). The CPU the rest
//! of the machine used meanwhile (busy time in /proc/stat minus the tool's own) is
//! the server's: on this loopback set-up Dovecot and its TLS proxy are all that runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::server::Server;
use super::tools::Setup;

/// One measured run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    pub wall: f64,
    pub cpu: f64,
    pub rss_mb: f64,
    pub server_mb: f64,
    pub sessions: usize,
    /// Busy CPU seconds of the whole machine during the run, minus `cpu`.
    pub others_cpu: f64,
}

/// Runs `setup`'s command once; fails if it exits non-zero.
pub fn run(setup: &Setup, server: &Server, log_dir: &Path, label: &str) -> Result<Run> {
    server.wait_idle()?;
    // Start in a later second than the store's last write: mbsync waits for the clock
    // to tick when a Maildir directory changed within the current second (seen as ~1 s
    // of idle wall time on a no-op run right after another run); real resyncs never
    // follow that closely.
    std::thread::sleep(Duration::from_millis(1100));
    let since = server.dovecot.log().lines().count();
    let time_file = log_dir.join(format!("{label}.time"));
    let out_file = log_dir.join(format!("{label}.log"));
    let out = std::fs::File::create(&out_file)?;
    let busy_before = machine_busy_seconds()?;
    let started = Instant::now();
    let status = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&time_file)
        .args(&setup.argv)
        .current_dir(&setup.dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("run /usr/bin/time (apt-get install time)")?;
    let wall = started.elapsed().as_secs_f64();
    let busy = machine_busy_seconds()? - busy_before;
    if !status.success() {
        let log = std::fs::read_to_string(&out_file).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{} exited with {status}:\n{}",
            setup.tool.name(),
            tail.join("\n")
        );
    }
    let text = std::fs::read_to_string(&time_file)?;
    // GNU time puts "Command exited with non-zero status" first on failure; the numbers
    // are on the last line.
    let f: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() != 4 {
        bail!("cannot parse {}: {text:?}", time_file.display());
    }
    server.wait_idle()?;
    let (sessions, bytes) = server_bytes(server, since)?;
    let cpu = f[1] + f[2];
    Ok(Run {
        wall,
        cpu,
        rss_mb: f[3] / 1024.0,
        server_mb: bytes as f64 / 1e6,
        sessions,
        others_cpu: (busy - cpu).max(0.0),
    })
}

/// CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq and
/// steal of the `cpu` line of /proc/stat, in USER_HZ = 100 ticks a second).
fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Ok(busy as f64 / 100.0)
}

/// Sessions that logged in after log line `since`, and the sum of their `out=` bytes
/// (waits briefly for every disconnect line).
fn server_bytes(server: &Server, since: usize) -> Result<(usize, u64)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.dovecot.log();
        let lines: Vec<&str> = log.lines().skip(since).collect();
        let sessions: Vec<String> = lines
            .iter()
            .filter(|l| l.contains("Login: "))
            .filter_map(|l| l.split("session=<").nth(1))
            .filter_map(|rest| rest.split('>').next())
            .map(|id| format!("<{id}>"))
            .collect();
        let ends: Vec<u64> = sessions
            .iter()
            .filter_map(|s| {
                lines
                    .iter()
                    .find(|l| l.contains(s.as_str()) && l.contains(" out="))
                    .and_then(|l| l.split(" out=").nth(1))
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        if ends.len() == sessions.len() || Instant::now() > deadline {
            if sessions.is_empty() {
                bail!("no login in the Dovecot log during the run");
            }
            return Ok((sessions.len(), ends.iter().sum()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The median of each column (runs measured separately; the median run per column).
pub fn median(runs: &[Run]) -> Run {
    let m = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Run {
        wall: m(|r| r.wall),
        cpu: m(|r| r.cpu),
        rss_mb: m(|r| r.rss_mb),
        server_mb: m(|r| r.server_mb),
        sessions: m(|r| r.sessions as f64) as usize,
        others_cpu: m(|r| r.others_cpu),
    }
}
