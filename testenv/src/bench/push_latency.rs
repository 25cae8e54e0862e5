//! Flag-push latency: how long after a mail reader flags a message in the local Inbox
//! (renames its file to add `F`) the server shows `\Flagged` on it. The store must be
//! in sync with the server, on the two-way config ([`Setup::two_way`]).
//!
//! - mailsync: `mailsync run` (`poll_interval = "1h"`, IDLE on), which looks at the
//!   mapped folders' directory times every 250 ms and runs a pass when one moved. Each
//!   rename comes once the daemon is back in IDLE and at least 1.1 s after the last
//!   message was handled.
//! - mbsync has no daemon: one `mbsync CHANNEL:INBOX` run on the two-way config,
//!   started right after the rename, is the floor of a watcher (inotify, a reader's
//!   hook) starting it. mbsync sleeps a second when a Maildir folder changed within the
//!   current second (see `measure::run`): that wait is part of its figure, as it is for
//!   such a watcher. Renames come 1.1 s after its exit.
//!
//! The clock runs from the rename's return until the harness's own connection (master
//! login, EXAMINE INBOX, straight to Dovecot) sees `\Flagged` on the message's UID: a
//! NOOP and a UID FETCH FLAGS every [`POLL`]. The messages: the first N, in a seeded
//! order, of the INBOX messages flagged neither locally nor on the server.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_imap::types::Flag;
use futures::TryStreamExt as _;
use mailsync_testenv::dovecot::TlsStream;

use super::latency::{Daemon, mbsync_inbox, wait_for_idle};
use super::server::{FOLDERS, Server};
use super::tools::{Setup, Tool};
use super::two_way::{index_store, list_server, with_flag};

/// How often the server is asked.
const POLL: Duration = Duration::from_millis(20);
/// The gap between handling one rename and making the next.
const GAP: Duration = Duration::from_millis(1100);
/// The longest a flag may take to reach the server before the run fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// One tool's flag-push latencies on one profile, in seconds, in order.
#[derive(Clone, Debug)]
pub struct PushLatency {
    pub profile: &'static str,
    pub tool: Tool,
    /// From the rename to `\Flagged` seen on the server.
    pub flagged: Vec<f64>,
    /// mbsync: from the rename to the process's exit. Empty for mailsync.
    pub exited: Vec<f64>,
}

/// Flags `n` Inbox messages one at a time in `two`'s store and times each until the
/// server shows it.
pub async fn measure(
    two: &Setup,
    server: &Server,
    logs: &Path,
    profile: &'static str,
    n: usize,
) -> Result<PushLatency> {
    server.wait_idle()?;
    let inbox = &two.folders[0];
    let picks = pick(two, server, n).await?;
    let log = logs.join(format!("{}-push-latency.log", two.tool.name()));
    let mut daemon = match two.tool {
        Tool::Mailsync => Some(Daemon::start(two, &log)?),
        _ => None,
    };
    if let Some(d) = daemon.as_mut() {
        // The first pass (over every folder), then IDLE.
        wait_for_idle(server, d, Duration::from_secs(120), 1)?;
    }
    let mut session = server.admin_session().await?;
    session.examine(FOLDERS[0]).await?;
    let mut out = PushLatency {
        profile,
        tool: two.tool,
        flagged: Vec::new(),
        exited: Vec::new(),
    };
    for (uid, base) in &picks {
        tokio::time::sleep(GAP).await;
        if let Some(d) = daemon.as_mut() {
            wait_for_idle(server, d, DEADLINE, 1)?;
        }
        let from = find(inbox, base)?;
        let name = from.file_name().unwrap_or_default().to_string_lossy();
        let to = inbox.join("cur").join(with_flag(&name, 'F'));
        std::fs::rename(&from, &to).with_context(|| format!("rename {}", from.display()))?;
        let renamed = Instant::now();
        let mut child = match two.tool {
            Tool::Mbsync => Some(mbsync_inbox(two, &log)?),
            _ => None,
        };
        let seen = loop {
            let asked = Instant::now();
            if flagged(&mut session, *uid).await? {
                break asked - renamed;
            }
            if let Some(d) = daemon.as_mut() {
                d.alive()?;
            }
            if let Some(c) = child.as_mut()
                && let Some(s) = c.try_wait()?
            {
                let asked = Instant::now();
                if flagged(&mut session, *uid).await? {
                    break asked - renamed;
                }
                bail!(
                    "mbsync exited ({s}) without sending the flag (log {})",
                    log.display()
                );
            }
            if renamed.elapsed() > DEADLINE {
                bail!("UID {uid} not \\Flagged on the server {DEADLINE:?} after the rename");
            }
            tokio::time::sleep(POLL).await;
        };
        out.flagged.push(seen.as_secs_f64());
        if let Some(mut c) = child {
            let status = tokio::task::block_in_place(|| c.wait())?;
            out.exited.push(renamed.elapsed().as_secs_f64());
            if !status.success() {
                bail!("mbsync exited with {status} (log: {})", log.display());
            }
        }
    }
    session.logout().await?;
    if let Some(d) = daemon.take() {
        d.stop()?;
    }
    Ok(out)
}

/// The UID and local base name of `n` Inbox messages flagged on neither side.
async fn pick(two: &Setup, server: &Server, n: usize) -> Result<Vec<(u32, String)>> {
    let listing = list_server(server).await?;
    let local = index_store(&two.folders[..1])?;
    let mut candidates: Vec<(u32, String)> = Vec::new();
    for m in &listing[0] {
        let Some(path) = local[0].get(&m.message_id) else {
            continue;
        };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let (base, info) = name.split_once(":2,").unwrap_or((&name, ""));
        if m.message_id.is_empty() || m.flags.contains('F') || info.contains('F') {
            continue;
        }
        candidates.push((m.uid, base.to_string()));
    }
    let mut rng = mailsync_testenv::random::SplitMix64::new(99);
    for j in (1..candidates.len()).rev() {
        candidates.swap(j, rng.below(j as u64 + 1) as usize);
    }
    if candidates.len() < n {
        bail!(
            "only {} unflagged Inbox messages for {n} flag pushes",
            candidates.len()
        );
    }
    candidates.truncate(n);
    Ok(candidates)
}

/// The file in `folder` (`cur/` or `new/`) whose base name is `base`.
fn find(folder: &Path, base: &str) -> Result<std::path::PathBuf> {
    for sub in ["cur", "new"] {
        for e in std::fs::read_dir(folder.join(sub))? {
            let path = e?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.split_once(":2,").map_or(&*name, |(b, _)| b) == base {
                return Ok(path);
            }
        }
    }
    bail!("no file {base} in {}", folder.display())
}

/// Whether the server shows `\Flagged` on `uid` (NOOP first, so the session sees
/// what other sessions did).
async fn flagged(session: &mut async_imap::Session<TlsStream>, uid: u32) -> Result<bool> {
    session.noop().await?;
    let fetches: Vec<_> = session
        .uid_fetch(uid.to_string(), "FLAGS")
        .await?
        .try_collect()
        .await?;
    while session.unsolicited_responses.try_recv().is_ok() {}
    Ok(fetches
        .iter()
        .any(|f| f.uid == Some(uid) && f.flags().any(|fl| fl == Flag::Flagged)))
}
