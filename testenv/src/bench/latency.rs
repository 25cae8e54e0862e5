//! New-mail latency: how long after a message reaches the server it is a file in the
//! tool's local Inbox (`new/` or `cur/`). Messages are appended to the server's INBOX
//! one at a time over the harness's own connection (master login, straight to Dovecot);
//! the clock runs from the APPEND's tagged OK until the file is there.
//!
//! - mailsync: `mailsync run` with `poll_interval = "1h"`, so only IDLE on the Inbox can
//!   deliver; each APPEND is made while the server shows that session in IDLE.
//! - mbsync has no IDLE. What its users run is a notifier (goimapnotify) or a timer
//!   that starts mbsync; the floor of that set-up is one `mbsync` run of the Inbox alone
//!   (`mbsync CHANNEL:INBOX`) started the moment the message is on the server, which is
//!   what is timed here. A notifier adds its own IDLE notice and process start on top.
//!
//! Each APPEND comes at least 1.1 s after the previous message was handled (mailsync:
//! its file landed; mbsync: the process exited), for both tools alike: mbsync waits for
//! the clock to tick when a Maildir folder changed within the current second (see
//! `measure::run`), and real mail does not arrive that close together.
//!
//! The Maildir is watched by `stat`ing `new/` and `cur/` every millisecond (mtime and
//! size: cheap with 6,000 files in `cur/`) and counting their entries when either moves.
//!
//! A second harness connection IDLEs on INBOX too and notes when Dovecot announces each
//! message: Dovecot holds an IDLE notice back for 500 ms after it sees a change
//! (`NOTIFY_DELAY_MSECS` in its mailbox-watch.c), so that part of mailsync's figure is
//! the server's, and a notifier starting mbsync would wait for the same notice.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use super::server::{FOLDERS, Server};
use super::tools::{Setup, Tool};

/// The longest a message may take to land before the run fails (an event deadline).
const LAND_DEADLINE: Duration = Duration::from_secs(30);
/// The gap between handling one message and appending the next.
const GAP: Duration = Duration::from_millis(1100);
/// How often the Maildir is looked at.
const POLL: Duration = Duration::from_millis(1);

/// Whether the scenario applies to `tool` (OfflineIMAP is left out).
pub fn supports(tool: Tool) -> bool {
    matches!(tool, Tool::Mailsync | Tool::Mbsync)
}

/// One tool's latencies on one profile, in seconds, in the order the messages came.
#[derive(Clone, Debug)]
pub struct Latency {
    pub profile: &'static str,
    pub tool: Tool,
    /// From the APPEND's OK to the file in `new/` or `cur/`.
    pub landed: Vec<f64>,
    /// From the APPEND's OK to Dovecot's notice on the harness's own IDLE connection.
    pub notice: Vec<f64>,
    /// mbsync: from the APPEND's OK to the process's exit (it writes its state after
    /// the message). Empty for mailsync, whose daemon keeps running.
    pub exited: Vec<f64>,
}

/// The `p` quantile (0 < p ≤ 1) of `v` by nearest rank; `v` must not be empty.
pub fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Appends each of `messages` to INBOX and times its arrival in `setup`'s Inbox. The
/// store must be in sync with the server already (the daemon's first pass and mbsync's
/// first run then have nothing to fetch).
pub async fn measure(
    setup: &Setup,
    server: &Server,
    logs: &Path,
    profile: &'static str,
    messages: &[Vec<u8>],
) -> Result<Latency> {
    server.wait_idle()?;
    let inbox = Inbox::new(&setup.folders[0]);
    let mut out = Latency {
        profile,
        tool: setup.tool,
        landed: Vec::new(),
        notice: Vec::new(),
        exited: Vec::new(),
    };
    let log = logs.join(format!("{}-latency.log", setup.tool.name()));
    let mut daemon = match setup.tool {
        Tool::Mailsync => Some(Daemon::start(setup, &log)?),
        _ => None,
    };
    let mut notices = Notices::start(server).await?;
    if let Some(d) = daemon.as_mut() {
        // The first pass (over every folder) and then IDLE.
        wait_for_idle(server, d, Duration::from_secs(120), 2)?;
    }
    let mut session = server.admin_session().await?;
    for (i, bytes) in messages.iter().enumerate() {
        tokio::task::block_in_place(|| std::thread::sleep(GAP));
        if let Some(d) = daemon.as_mut() {
            wait_for_idle(server, d, LAND_DEADLINE, 2)?;
        }
        notices.forget();
        let before = inbox.look()?;
        session
            .append(FOLDERS[0], None, None, bytes)
            .await
            .with_context(|| format!("APPEND of new message {}", i + 1))?;
        let ok = Instant::now();
        let landed = match daemon.as_mut() {
            Some(d) => tokio::task::block_in_place(|| inbox.wait(&before, ok, || d.alive()))?,
            None => {
                let mut child = mbsync_inbox(setup, &log)?;
                let landed = tokio::task::block_in_place(|| {
                    inbox.wait(&before, ok, || match child.try_wait()? {
                        Some(s) => bail!("mbsync exited ({s}) without the message"),
                        None => Ok(()),
                    })
                });
                // Reap it whatever happened: nothing of ours outlives the bench.
                let status = tokio::task::block_in_place(|| child.wait())?;
                out.exited.push(ok.elapsed().as_secs_f64());
                let landed = landed?;
                if !status.success() {
                    bail!("mbsync exited with {status} (log: {})", log.display());
                }
                landed
            }
        };
        out.landed.push(landed.as_secs_f64());
        out.notice.push(notices.next(ok).await?);
    }
    session.logout().await?;
    if let Some(d) = daemon.take() {
        d.stop()?;
    }
    Ok(out)
}

/// `mbsync -q -c RC CHANNEL:INBOX`: the same channel as the sync scenarios, the Inbox
/// only; output appended to `log`.
pub(super) fn mbsync_inbox(setup: &Setup, log: &Path) -> Result<Child> {
    let mut argv = setup.argv.clone();
    if argv.pop().as_deref() != Some("-a") {
        bail!("mbsync's command does not end with -a: {:?}", setup.argv);
    }
    argv.push(format!("bench:{}", FOLDERS[0]));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&setup.dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("start mbsync")
}

/// Waits until the server shows `sessions` sessions in IDLE (Dovecot's process titles):
/// here two, the harness's notice watcher and mailsync, back to idling.
pub(super) fn wait_for_idle(
    server: &Server,
    daemon: &mut Daemon,
    within: Duration,
    sessions: usize,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let idling = server
            .dovecot
            .session_titles()
            .iter()
            .filter(|t| t.ends_with(" IDLE]"))
            .count();
        if idling >= sessions {
            return Ok(());
        }
        daemon.alive()?;
        if Instant::now() > deadline {
            bail!(
                "mailsync run: no session in IDLE after {within:?} (log: {})",
                daemon.log.display()
            );
        }
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(10)));
    }
}

/// The harness's own IDLE on INBOX, in a task of its own: the time of each notice
/// Dovecot sends. The task (and its connection) ends when this is dropped.
struct Notices {
    rx: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Notices {
    async fn start(server: &Server) -> Result<Notices> {
        let mut session = server.admin_session().await?;
        session.select(FOLDERS[0]).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let mut idle = session.idle();
                idle.init().await?;
                let (wait, _interrupt) = idle.wait_with_timeout(Duration::from_secs(600));
                let response = wait.await?;
                if let async_imap::extensions::idle::IdleResponse::NewData(_) = response
                    && tx.send(Instant::now()).is_err()
                {
                    return Ok(());
                }
                session = idle.done().await?;
                while session.unsolicited_responses.try_recv().is_ok() {}
            }
        });
        Ok(Notices { rx, task })
    }

    /// Drops notices already received (of earlier messages).
    fn forget(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Seconds from `ok` to the next notice (negative if it came first).
    async fn next(&mut self, ok: Instant) -> Result<f64> {
        let at = match tokio::time::timeout(LAND_DEADLINE, self.rx.recv()).await {
            Ok(Some(at)) => at,
            Ok(None) => {
                let why = match (&mut self.task).await {
                    Ok(Err(e)) => format!("{e:#}"),
                    Ok(Ok(())) => "it stopped".to_string(),
                    Err(e) => e.to_string(),
                };
                bail!("the harness's IDLE connection ended: {why}")
            }
            Err(_) => bail!("no IDLE notice from the server after {LAND_DEADLINE:?}"),
        };
        Ok(match at.checked_duration_since(ok) {
            Some(d) => d.as_secs_f64(),
            None => -(ok - at).as_secs_f64(),
        })
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A local Inbox's `new/` and `cur/`.
struct Inbox {
    dirs: [PathBuf; 2],
}

/// What the Inbox looked like: each directory's (mtime, size), and the files in both.
#[derive(Clone, Debug, PartialEq)]
struct Look {
    stamps: [(SystemTime, u64); 2],
    files: usize,
}

impl Inbox {
    fn new(folder: &Path) -> Inbox {
        Inbox {
            dirs: [folder.join("new"), folder.join("cur")],
        }
    }

    fn stamps(&self) -> Result<[(SystemTime, u64); 2]> {
        let stamp = |d: &Path| -> Result<(SystemTime, u64)> {
            let m = std::fs::metadata(d).with_context(|| format!("stat {}", d.display()))?;
            Ok((m.modified()?, m.len()))
        };
        Ok([stamp(&self.dirs[0])?, stamp(&self.dirs[1])?])
    }

    fn look(&self) -> Result<Look> {
        let stamps = self.stamps()?;
        let mut files = 0;
        for d in &self.dirs {
            files += std::fs::read_dir(d)
                .with_context(|| format!("read {}", d.display()))?
                .count();
        }
        Ok(Look { stamps, files })
    }

    /// Polls until the Inbox holds more files than `before`; returns the time from
    /// `from` to the poll that saw it. `alive` is asked every 100 polls whether the
    /// tool can still deliver.
    fn wait(
        &self,
        before: &Look,
        from: Instant,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<Duration> {
        let mut stamps = before.stamps;
        let mut poll = 0u64;
        loop {
            // Asked before looking, answered after: a tool that delivers and exits
            // between the two is not taken for one that died.
            let alive_then = if poll % 100 == 99 { alive() } else { Ok(()) };
            poll += 1;
            let now = Instant::now();
            let seen = self.stamps()?;
            if seen != stamps {
                // A directory changed: count (a rename within the Inbox changes a stamp
                // but not the count).
                let look = self.look()?;
                if look.files > before.files {
                    return Ok(now - from);
                }
                stamps = look.stamps;
            }
            alive_then?;
            if now - from > LAND_DEADLINE {
                bail!(
                    "no new file in {} after {LAND_DEADLINE:?}",
                    self.dirs[0].display()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// `mailsync run` as a child, stopped (SIGTERM, then SIGKILL after 10 s) when dropped,
/// so an error anywhere in the bench does not leave it running.
pub(super) struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Writes `run.toml` next to the sync config (the same account and state, the poll
    /// interval an hour, IDLE on) and starts `mailsync --config run.toml run`.
    pub(super) fn start(setup: &Setup, log: &Path) -> Result<Daemon> {
        let text = std::fs::read_to_string(&setup.config)
            .with_context(|| format!("read {}", setup.config.display()))?;
        if !text.starts_with("[daemon]\n") {
            bail!("{}: no [daemon] table first", setup.config.display());
        }
        let text = text.replacen(
            "[daemon]\n",
            "[daemon]\npoll_interval = \"1h\"\nidle = true\n",
            1,
        );
        let config = setup.dir.join("run.toml");
        std::fs::write(&config, text)?;
        let out = std::fs::File::create(log)?;
        let child = Command::new(&setup.argv[0])
            .arg("--config")
            .arg(&config)
            .arg("run")
            .current_dir(&setup.dir)
            .env_remove("RUST_LOG")
            .env_remove("MAILSYNC_CONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start mailsync run")?;
        Ok(Daemon {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Fails if the daemon has exited.
    pub(super) fn alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            self.child = None;
            bail!(
                "mailsync run exited ({status}); log {}:\n{}",
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGTERM and wait; fails if it does not exit cleanly within 10 s.
    pub(super) fn stop(mut self) -> Result<()> {
        match self.terminate() {
            Some(s) if s.success() => Ok(()),
            other => bail!(
                "mailsync run did not stop cleanly ({other:?}); log {}:\n{}",
                self.log.display(),
                tail(&self.log)
            ),
        }
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL; the exit status if it exited itself.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The last 20 lines of a log.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Writes every latency as a row of `latency.tsv` (profile, tool, message, ms).
pub fn write_tsv(path: &Path, all: &[Latency]) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(f, "profile\ttool\tmessage\tlanded_ms\texited_ms")?;
    for l in all {
        for (i, s) in l.landed.iter().enumerate() {
            let exited = l
                .exited
                .get(i)
                .map_or(String::new(), |e| format!("{:.2}", e * 1e3));
            writeln!(
                f,
                "{}\t{}\t{}\t{:.2}\t{exited}",
                l.profile,
                l.tool.name(),
                i + 1,
                s * 1e3
            )?;
        }
    }
    Ok(())
}
