//! The `bench` subcommand's command line.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mailsync_testenv::Profile;

use super::tools::Tool;

pub const USAGE: &str = "usage: mailsync-testenv bench [--messages N] [--runs R] \
[--profiles full,exchange] [--tools mailsync,mbsync,offlineimap] [--offlineimap-initial-runs K] \
[--mailsync PATH] [--rtt MS] [--out DIR] [--latency M] [--latency-only] [--push-latency N] \
[--two-way-only]

  --latency M      also measure new-mail latency with M messages per profile (default 0:
                   off): `mailsync run` (IDLE) against one `mbsync CHANNEL:INBOX` run
                   started at each APPEND's OK; ~1.2 s per message and tool
  --latency-only   skip scenarios a, b, c and the physical limit: sync once, then only
                   the latency (M = 50 unless --latency says otherwise); OfflineIMAP is
                   left out
  --push-latency N also measure flag-push latency with N local renames per profile
                   (default 0: off), after scenario e: `mailsync run` (two-way) against
                   one `mbsync CHANNEL:INBOX` (two-way) started at each rename; ~1.5 s
                   per rename and tool
  --two-way-only   skip scenarios a, c and the physical limit: sync once, then b (the
                   pull no-op the two-way no-op is set against), e and the flag-push
                   latency (N = 20 unless --push-latency says otherwise); OfflineIMAP
                   is left out

Scenario e (two-way push) runs in every mode but --latency-only.";

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// Corpus size (default 20,000).
    pub messages: usize,
    /// Runs per scenario; the median is reported (default 3).
    pub runs: usize,
    /// Server profiles, in order.
    pub profiles: Vec<Profile>,
    /// Tools, in order (mbsync is the reference for the ratio and the comparison).
    pub tools: Vec<Tool>,
    /// Runs of OfflineIMAP's initial sync (default 1: it is ~20× slower than the others).
    pub offlineimap_initial_runs: usize,
    /// The mailsync binary.
    pub mailsync: PathBuf,
    /// Where the report (`report.md`) and the raw runs (`runs.tsv`) go.
    pub out: PathBuf,
    /// Round trip added between the tools and the server, in milliseconds (default 0:
    /// straight to Dovecot on loopback). Half of it each way, by a delay proxy.
    pub rtt_ms: u64,
    /// New-mail latency: messages appended one at a time per profile and tool (0: off).
    pub latency: usize,
    /// Only the latency: no scenarios a, b, c, e, no physical limit.
    pub latency_only: bool,
    /// Flag-push latency: local renames per profile and tool (0: off).
    pub push_latency: usize,
    /// Only what two-way needs: one unmeasured sync, b, e and the flag-push latency.
    pub two_way_only: bool,
    /// The command line as given, for the report.
    pub command_line: String,
}

fn list<T>(s: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| parse(p.trim()))
        .collect()
}

/// Parses the arguments after `bench`.
pub fn parse(argv: impl Iterator<Item = String>) -> Result<BenchArgs> {
    let argv: Vec<String> = argv.collect();
    let mut args = BenchArgs {
        messages: 20_000,
        runs: 3,
        profiles: vec![Profile::Full, Profile::Exchange],
        tools: vec![Tool::Mailsync, Tool::Mbsync, Tool::Offlineimap],
        offlineimap_initial_runs: 1,
        mailsync: default_mailsync(),
        out: PathBuf::from("target/bench"),
        rtt_ms: 0,
        latency: 0,
        latency_only: false,
        push_latency: 0,
        two_way_only: false,
        command_line: format!("mailsync-testenv bench {}", argv.join(" ")),
    };
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--messages" => args.messages = value("--messages")?.parse()?,
            "--runs" => args.runs = value("--runs")?.parse()?,
            "--profiles" => {
                args.profiles = list(&value("--profiles")?, |p| {
                    p.parse().map_err(anyhow::Error::msg)
                })?
            }
            "--tools" => args.tools = list(&value("--tools")?, |t| t.parse())?,
            "--offlineimap-initial-runs" => {
                args.offlineimap_initial_runs = value("--offlineimap-initial-runs")?.parse()?
            }
            "--mailsync" => args.mailsync = PathBuf::from(value("--mailsync")?),
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--rtt" => args.rtt_ms = value("--rtt")?.parse()?,
            "--latency" => args.latency = value("--latency")?.parse()?,
            "--latency-only" => args.latency_only = true,
            "--push-latency" => args.push_latency = value("--push-latency")?.parse()?,
            "--two-way-only" => args.two_way_only = true,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if args.runs == 0 || args.messages == 0 || args.offlineimap_initial_runs == 0 {
        bail!("--runs, --messages and --offlineimap-initial-runs must be at least 1");
    }
    if args.latency_only && args.two_way_only {
        bail!("--latency-only and --two-way-only: choose one");
    }
    if args.latency_only && args.push_latency > 0 {
        bail!("--push-latency runs after scenario e, which --latency-only skips");
    }
    if args.two_way_only {
        if args.push_latency == 0 {
            args.push_latency = 20;
        }
        args.tools.retain(|&t| super::two_way::supports(t));
    }
    if args.latency_only {
        if args.latency == 0 {
            args.latency = 50;
        }
        args.tools.retain(|&t| super::latency::supports(t));
    }
    if args.profiles.is_empty() || args.tools.is_empty() {
        bail!("--profiles and --tools must name at least one");
    }
    Ok(args)
}

impl BenchArgs {
    /// Whether scenario e runs: in every mode but `--latency-only`.
    pub fn two_way(&self) -> bool {
        !self.latency_only
    }
}

/// `mailsync` next to this binary (`target/release/`), else on `$PATH`.
fn default_mailsync() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mailsync")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mailsync"))
}
