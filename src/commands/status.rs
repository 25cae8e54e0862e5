//! `mailsync status`: per account, what the daemon (or a `sync`) is doing, the grant
//! (status, expiry of the access token, who signed in; never a token), and per folder
//! the counts, the last successful sync and the last error.
//!
//! It reads only the state directory (SQLite and the account locks), never the
//! network, and works whether or not the daemon runs. It creates nothing: no state
//! database, no token key, no lock file.
//!
//! An account's state: if another process holds its lock, the daemon's last report
//! (`syncing` when there is none, or it is stale: a `mailsync sync` holds the lock);
//! otherwise `needs_connect` if the identity provider refused the grant,
//! `not_connected` if a delegated flow has no grant, else `stopped`.
//!
//! `--json` prints an array, one object per account, in this shape (times are RFC 3339
//! UTC strings, e.g. `"2025-03-01T09:30:00Z"`; absent values are `null`):
//!
//! ```text
//! [{
//!   "account": string,
//!   "configured": bool,          // false: only the state knows it (no [accounts.NAME])
//!   "state": "starting" | "connecting" | "syncing" | "idle" | "polling" | "backoff"
//!          | "needs_connect" | "stopped" | "not_connected",
//!   "detail": string | null,     // the daemon's detail (e.g. the error behind a backoff)
//!   "pid": number | null,        // the process syncing the account
//!   "since": time | null,        // when the state began; for stopped, the daemon's last report
//!   "token": null | {            // null: no grant stored
//!     "status": "ok" | "needs_connect",
//!     "reason": string | null,   // why it needs connect
//!     "flow": string,
//!     "access_expires": time | null,
//!     "granted_to": string | null,
//!     "scopes": [string]
//!   },
//!   "sending": null | {          // null: the account is not in the config
//!     "allowed": "yes" | "no" | "app-only" | "unknown",  // whether the sign-in allows SMTP
//!     "detail": string | null,   // why not, and what to do
//!     "queued": number,          // messages waiting in the outbox (or their Sent copy)
//!     "failed": number,          // messages refused for good, kept in <state_dir>/failed/<account>/
//!     "next_try": time | null,   // the earliest retry of a waiting message
//!     "last_error": string | null,   // why the waiting message tried most is waiting
//!     "last_failure": string | null  // why the newest failed message failed
//!   },
//!   "folders": [{
//!     "local": string,
//!     "remote": string,          // decoded server name, or the mapping ("@archive") before the first sync
//!     "mapped": bool,            // false: in the state, no longer in the config
//!     "local_count": number,     // messages mailsync delivered and tracks
//!     "remote_count": number | null,  // messages on the server at the last SELECT
//!     "last_sync": time | null,  // last successful sync of the folder
//!     "last_error": string | null
//!   }],
//!   "last_error": string | null  // the daemon's error (backoff, needs connect), else the first folder's
//! }]
//! ```

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::{CommandError, Exit};
use crate::auth::Sending;
use crate::config::Config;
use crate::imap::utf7;
use crate::state::{
    AccountLock, DaemonStatus, FolderStatus, GrantStatus, GrantSummary, OutboxSummary, RunState,
    State,
};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The account (default: every account in the config or the state)
    pub account: Option<String>,
    /// Print JSON (the shape is documented in `src/commands/status.rs`)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct AccountLine {
    account: String,
    configured: bool,
    state: &'static str,
    detail: Option<String>,
    pid: Option<u32>,
    since: Option<String>,
    token: Option<TokenLine>,
    sending: Option<SendingLine>,
    folders: Vec<FolderLine>,
    last_error: Option<String>,
    /// For the table: when the state began, unix seconds.
    #[serde(skip)]
    since_unix: Option<i64>,
    /// For the table: whether a person signs in (unknown for an unconfigured account
    /// without a grant).
    #[serde(skip)]
    delegated: Option<bool>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct TokenLine {
    status: &'static str,
    reason: Option<String>,
    flow: String,
    access_expires: Option<String>,
    granted_to: Option<String>,
    scopes: Vec<String>,
    #[serde(skip)]
    access_expires_unix: Option<i64>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct SendingLine {
    allowed: &'static str,
    detail: Option<String>,
    queued: u64,
    failed: u64,
    next_try: Option<String>,
    last_error: Option<String>,
    last_failure: Option<String>,
    #[serde(skip)]
    next_try_unix: Option<i64>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct FolderLine {
    local: String,
    remote: String,
    mapped: bool,
    local_count: u64,
    remote_count: Option<u32>,
    last_sync: Option<String>,
    last_error: Option<String>,
    #[serde(skip)]
    last_sync_unix: Option<i64>,
}

pub async fn run(config: &Config, args: &StatusArgs) -> Result<Exit, CommandError> {
    let state_dir = &config.daemon.state_dir;
    // Opened only if it exists: status must not create the state directory.
    let state = if state_dir.join("state.sqlite").exists() {
        match State::open(state_dir) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("mailsync: {e}");
                return Ok(Exit::Fatal);
            }
        }
    } else {
        None
    };
    let in_state = match &state {
        Some(s) => match s.accounts_in_state() {
            Ok(names) => names,
            Err(e) => {
                eprintln!("mailsync: {e}");
                return Ok(Exit::Fatal);
            }
        },
        None => Vec::new(),
    };
    let names: Vec<String> = match &args.account {
        Some(n) if config.accounts.contains_key(n) || in_state.contains(n) => vec![n.clone()],
        Some(n) => {
            eprintln!(
                "mailsync: no account named {n:?} in {} or in the state in {}",
                config.path.display(),
                state_dir.display()
            );
            return Ok(Exit::Partial);
        }
        None => {
            let configured: BTreeSet<&String> = config.accounts.keys().collect();
            config
                .accounts
                .keys()
                .chain(in_state.iter().filter(|n| !configured.contains(n)))
                .cloned()
                .collect()
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut lines = Vec::new();
    for name in &names {
        match account_line(config, state.as_ref(), name) {
            Ok(l) => lines.push(l),
            Err(e) => {
                eprintln!("mailsync: {name}: {e}");
                return Ok(Exit::Fatal);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &lines).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else if lines.is_empty() {
        writeln!(
            out,
            "No accounts: {} has none and the state is empty; add one with `mailsync connect`.",
            config.path.display()
        )?;
    } else {
        write_table(&mut out, &lines, now)?;
    }
    Ok(Exit::Ok)
}

fn account_line(
    config: &Config,
    state: Option<&State>,
    name: &str,
) -> Result<AccountLine, crate::state::StateError> {
    let state_dir = &config.daemon.state_dir;
    let account = config.accounts.get(name);
    let (row, grant, folders, outbox) = match state {
        Some(s) => (
            s.daemon_state(name)?,
            s.grant_summary(name)?,
            s.folder_status(name)?,
            s.outbox_summary(name)?,
        ),
        None => (None, None, Vec::new(), Default::default()),
    };
    let sending = account.map(|a| {
        let granted = grant.as_ref().map(|g| g.scopes.clone()).unwrap_or_default();
        let (allowed, detail) = match crate::auth::sending(a, &granted) {
            _ if a.smtp.is_none() => (
                "no",
                Some("no smtp_host: this account does not send".to_owned()),
            ),
            Sending::Allowed => ("yes", None),
            Sending::AppOnly => (
                "app-only",
                Some(
                    "needs SMTP.SendAsApp granted to the app (see `mailsync consent-url`)"
                        .to_owned(),
                ),
            ),
            Sending::Unknown => ("unknown", None),
            Sending::NotGranted(why) => ("no", Some(why)),
        };
        sending_line(allowed, detail, outbox)
    });
    let delegated = match (account, &grant) {
        (Some(a), _) => Some(a.flow.is_delegated()),
        (None, Some(g)) => Some(!g.flow.starts_with("client")),
        (None, None) => None,
    };
    let held = lock_held(state_dir, name);
    let decided = decide(held, row.as_ref(), grant.as_ref(), delegated, pid_alive);

    let mut lines = Vec::new();
    let mut seen = BTreeSet::new();
    if let Some(a) = account {
        for m in &a.folders {
            seen.insert(m.local.clone());
            let row = folders.iter().find(|f| f.local == m.local);
            lines.push(folder_line(
                &m.local,
                row,
                Some(&m.remote.to_string()),
                true,
            ));
        }
    }
    for f in folders.iter().filter(|f| !seen.contains(&f.local)) {
        lines.push(folder_line(&f.local, Some(f), None, false));
    }
    let last_error = match decided.state {
        "backoff" | "needs_connect" => decided.detail.clone(),
        _ => None,
    }
    .or_else(|| lines.iter().find_map(|f| f.last_error.clone()));
    Ok(AccountLine {
        account: name.to_owned(),
        configured: account.is_some(),
        state: decided.state,
        detail: decided.detail,
        pid: decided.pid,
        since: decided.since.map(rfc3339),
        since_unix: decided.since,
        delegated,
        token: grant.map(token_line),
        sending,
        folders: lines,
        last_error,
    })
}

/// The account's lock is held by another process. Looked at only if its file exists,
/// so status creates no lock file.
fn lock_held(state_dir: &Path, account: &str) -> bool {
    state_dir.join(format!("{account}.lock")).exists() && AccountLock::is_held(state_dir, account)
}

/// Whether a process is alive; true when that cannot be told (no /proc).
fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

#[derive(Debug, PartialEq, Eq)]
struct Decided {
    state: &'static str,
    detail: Option<String>,
    pid: Option<u32>,
    since: Option<i64>,
}

/// What `status` says the account is doing (see the module docs).
fn decide(
    held: bool,
    row: Option<&DaemonStatus>,
    grant: Option<&GrantSummary>,
    delegated: Option<bool>,
    alive: impl Fn(u32) -> bool,
) -> Decided {
    if held {
        return match row {
            Some(r) if r.state != RunState::Stopped && r.pid.is_none_or(&alive) => Decided {
                state: r.state.as_str(),
                detail: r.detail.clone(),
                pid: r.pid,
                since: Some(r.since),
            },
            // No report from a live daemon: a `mailsync sync` holds the lock.
            _ => Decided {
                state: RunState::Syncing.as_str(),
                detail: None,
                pid: None,
                since: None,
            },
        };
    }
    // The last report: when a stopped account stopped, or when a dead daemon last spoke.
    let last_seen = row.map(|r| {
        if r.state == RunState::Stopped {
            r.since
        } else {
            r.updated
        }
    });
    match grant.map(|g| (&g.status, g.updated)) {
        Some((GrantStatus::NeedsConnect { reason }, updated)) => Decided {
            state: RunState::NeedsConnect.as_str(),
            detail: Some(reason.clone()),
            pid: None,
            since: Some(updated),
        },
        None if delegated == Some(true) => Decided {
            state: "not_connected",
            detail: None,
            pid: None,
            since: None,
        },
        _ => Decided {
            state: RunState::Stopped.as_str(),
            detail: None,
            pid: None,
            since: last_seen,
        },
    }
}

fn folder_line(
    local: &str,
    row: Option<&FolderStatus>,
    mapping: Option<&str>,
    mapped: bool,
) -> FolderLine {
    let remote = match (row, mapping) {
        (Some(r), _) => utf7::decode_lossy(&r.remote),
        // The mapping as written ("INBOX", "@archive"), quotes dropped.
        (None, Some(m)) => m.trim_matches('"').to_owned(),
        (None, None) => String::new(),
    };
    FolderLine {
        local: local.to_owned(),
        remote,
        mapped,
        local_count: row.map_or(0, |r| r.local_count),
        remote_count: row.and_then(|r| r.remote_count),
        last_sync: row.and_then(|r| r.last_sync).map(rfc3339),
        last_sync_unix: row.and_then(|r| r.last_sync),
        last_error: row.and_then(|r| r.last_error.clone()),
    }
}

fn sending_line(allowed: &'static str, detail: Option<String>, o: OutboxSummary) -> SendingLine {
    SendingLine {
        allowed,
        detail,
        queued: o.queued,
        failed: o.failed,
        next_try: o.next_try.map(rfc3339),
        next_try_unix: o.next_try,
        last_error: o.last_error,
        last_failure: o.last_failure,
    }
}

fn token_line(g: GrantSummary) -> TokenLine {
    let (status, reason) = match g.status {
        GrantStatus::Ok => ("ok", None),
        GrantStatus::NeedsConnect { reason } => ("needs_connect", Some(reason)),
    };
    TokenLine {
        status,
        reason,
        flow: g.flow,
        access_expires: g.access_expires.map(rfc3339),
        access_expires_unix: g.access_expires,
        granted_to: g.granted_to,
        scopes: g.scopes,
    }
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_RFC3339_SECOND: i64 = 253_402_300_799;

/// Unix seconds as RFC 3339 UTC, e.g. `2025-03-01T09:30:00Z`. A time outside what
/// RFC 3339 can write (a row from a broken identity provider, a skewed clock) is shown
/// as the nearest it can: 1970 or the end of 9999.
pub(super) fn rfc3339(t: i64) -> String {
    let secs = t.clamp(0, LAST_RFC3339_SECOND) as u64;
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// "3 min ago", "in 52 min".
fn relative(now: i64, t: i64) -> String {
    let d = now.abs_diff(t);
    let amount = match d {
        0..5 => return "just now".to_owned(),
        5..60 => format!("{d} s"),
        60..3600 => format!("{} min", d / 60),
        3600..86400 => format!("{} h", d / 3600),
        _ => format!("{} d", d / 86400),
    };
    if t > now {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn when(now: i64, t: Option<i64>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| format!("{} ({})", rfc3339(t), relative(now, t)),
    )
}

fn write_table(out: &mut impl Write, lines: &[AccountLine], now: i64) -> std::io::Result<()> {
    for (i, a) in lines.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        let mut head = format!("{}: {}", a.account, a.state.replace('_', " "));
        if !a.configured {
            head.push_str(" (not configured)");
        }
        let mut facts = Vec::new();
        if let Some(pid) = a.pid {
            facts.push(format!("pid {pid}"));
        }
        if let Some(t) = a.since_unix {
            facts.push(format!("since {}", when(now, Some(t))));
        }
        if !facts.is_empty() {
            head.push_str(&format!(", {}", facts.join(", ")));
        }
        writeln!(out, "{head}")?;
        match &a.token {
            Some(t) => {
                let mut s = match &t.reason {
                    Some(r) => format!(
                        "needs `mailsync connect {}` ({})",
                        a.account,
                        if r.is_empty() { "refused" } else { r }
                    ),
                    None => "ok".to_owned(),
                };
                s.push_str(&format!(", flow {}", t.flow));
                if let Some(g) = &t.granted_to {
                    s.push_str(&format!(", granted to {g}"));
                }
                if t.access_expires_unix.is_some() {
                    s.push_str(&format!(
                        ", access token expires {}",
                        when(now, t.access_expires_unix)
                    ));
                }
                writeln!(out, "  token: {s}")?;
                if !t.scopes.is_empty() {
                    writeln!(out, "  scopes: {}", t.scopes.join(" "))?;
                }
            }
            None if a.state == "not_connected" => writeln!(
                out,
                "  token: none stored; run `mailsync connect {}`",
                a.account
            )?,
            None if a.delegated == Some(false) => writeln!(
                out,
                "  token: app-only (client credentials): access tokens are kept in memory only"
            )?,
            None => writeln!(out, "  token: none stored")?,
        }
        if let Some(e) = &a.last_error {
            writeln!(out, "  last error: {e}")?;
        }
        if let Some(s) = &a.sending {
            let mut line = match (s.allowed, &s.detail) {
                ("yes", _) => "allowed".to_owned(),
                ("unknown", _) => "allowed if the server takes the token".to_owned(),
                (_, Some(d)) => format!("{}: {d}", s.allowed.replace('-', " ")),
                (other, None) => other.to_owned(),
            };
            if s.queued > 0 {
                line.push_str(&format!(
                    "; {} waiting in the outbox (next try {}{})",
                    s.queued,
                    when(now, s.next_try_unix),
                    s.last_error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
            if s.failed > 0 {
                line.push_str(&format!(
                    "; {} failed, kept in failed/{}/ under the state directory{}",
                    s.failed,
                    a.account,
                    s.last_failure
                        .as_ref()
                        .map(|e| format!(" (last: {e})"))
                        .unwrap_or_default()
                ));
            }
            writeln!(out, "  sending: {line}")?;
        }
        if a.folders.is_empty() {
            writeln!(
                out,
                "  no folders mapped: `mailsync folders {0}` lists the server's; map them under [accounts.{0}.folders]",
                a.account
            )?;
            continue;
        }
        let header = [
            "LOCAL",
            "REMOTE",
            "LOCAL#",
            "REMOTE#",
            "LAST SYNC",
            "LAST ERROR",
        ];
        let rows: Vec<[String; 6]> = a
            .folders
            .iter()
            .map(|f| {
                [
                    if f.mapped {
                        f.local.clone()
                    } else {
                        format!("{} (unmapped)", f.local)
                    },
                    f.remote.clone(),
                    f.local_count.to_string(),
                    f.remote_count
                        .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    when(now, f.last_sync_unix),
                    f.last_error.clone().unwrap_or_else(|| "-".to_owned()),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let fmt_row = |cells: [&str; 6]| {
            format!(
                "  {:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:<w4$}  {}",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                cells[4],
                cells[5],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4],
            )
        };
        writeln!(out, "{}", fmt_row(header).trim_end())?;
        for r in &rows {
            let cells = [&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]].map(String::as_str);
            writeln!(out, "{}", fmt_row(cells).trim_end())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: RunState, pid: Option<u32>) -> DaemonStatus {
        DaemonStatus {
            account: "work".into(),
            state,
            detail: Some("d".into()),
            pid,
            since: 100,
            updated: 200,
        }
    }

    fn grant(status: GrantStatus) -> GrantSummary {
        GrantSummary {
            flow: "device".into(),
            status,
            has_refresh_token: true,
            scopes: vec![],
            granted_to: None,
            access_expires: None,
            updated: 300,
        }
    }

    #[test]
    fn the_state_shown_follows_the_lock() {
        let alive = |_| true;
        let dead = |_| false;
        let idle = row(RunState::Idle, Some(42));
        // The daemon holds the lock: its report.
        let d = decide(true, Some(&idle), None, Some(true), alive);
        assert_eq!(
            (d.state, d.pid, d.since, d.detail.as_deref()),
            ("idle", Some(42), Some(100), Some("d"))
        );
        // The lock is held, but not by the process that reported: a `sync` run.
        assert_eq!(decide(true, Some(&idle), None, None, dead).state, "syncing");
        assert_eq!(decide(true, None, None, None, alive).state, "syncing");
        let stopped = row(RunState::Stopped, Some(42));
        assert_eq!(
            decide(true, Some(&stopped), None, None, alive).state,
            "syncing"
        );
        // Nobody holds it: stopped, since the daemon's last word.
        let d = decide(false, Some(&idle), None, Some(false), alive);
        assert_eq!((d.state, d.pid, d.since), ("stopped", None, Some(200)));
        let d = decide(false, Some(&stopped), None, Some(false), alive);
        assert_eq!((d.state, d.since), ("stopped", Some(100)));
        assert_eq!(decide(false, None, None, None, alive).since, None);
        // The grant decides between stopped, needs connect and not connected.
        let ok = grant(GrantStatus::Ok);
        let refused = grant(GrantStatus::NeedsConnect {
            reason: "AADSTS70043".into(),
        });
        assert_eq!(
            decide(false, None, Some(&ok), Some(true), alive).state,
            "stopped"
        );
        let d = decide(false, None, Some(&refused), Some(true), alive);
        assert_eq!(
            (d.state, d.detail.as_deref(), d.since),
            ("needs_connect", Some("AADSTS70043"), Some(300))
        );
        assert_eq!(
            decide(false, None, None, Some(true), alive).state,
            "not_connected"
        );
        assert_eq!(
            decide(false, None, None, Some(false), alive).state,
            "stopped"
        );
    }

    #[test]
    fn times_for_people() {
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(relative(1000, 1000), "just now");
        assert_eq!(relative(1000, 990), "10 s ago");
        assert_eq!(relative(1000, 1000 - 180), "3 min ago");
        assert_eq!(relative(1000, 1000 + 3120), "in 52 min");
        assert_eq!(relative(100_000, 100_000 - 7200), "2 h ago");
        assert_eq!(relative(1_000_000, 1_000_000 - 3 * 86400), "3 d ago");
        assert_eq!(when(0, None), "-");
        // What a broken identity provider got stored (10^12 s from now, 2^64-1 s read
        // as -1) shows, rather than panics.
        assert_eq!(
            rfc3339(1_700_000_000 + 1_000_000_000_000),
            "9999-12-31T23:59:59Z"
        );
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MIN), "1970-01-01T00:00:00Z");
        assert_eq!(
            relative(0, i64::MAX),
            format!("in {} d", i64::MAX as u64 / 86400)
        );
        assert_eq!(
            relative(i64::MAX, i64::MIN),
            format!("{} d ago", u64::MAX / 86400)
        );
    }
}
