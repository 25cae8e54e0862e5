//! `mailsync-testenv bench`: mailsync against mbsync and OfflineIMAP on a real Dovecot.
//!
//! Per server profile (one IdP + one Dovecot each, the seeded corpus written once with
//! `seed_fast`), every tool runs the scenarios a (initial sync into an empty store),
//! b (no-op resync), c (resync after 200 new messages, 2,000 flag changes and 100
//! expunges; on the `exchange` profile this is the issue's scenario d). Each is run
//! `--runs` times and the medians are reported with the wall-time ratio to mbsync;
//! after each scenario the tool's Maildir is compared with mbsync's (bytes and flags).
//! The "physical limit" (one connection fetching everything; the same bytes written as
//! Maildir files) is measured once, on the first profile. With `--latency M`, mailsync
//! and mbsync then also take M new messages one at a time into the Inbox they synced,
//! and the time each takes to land is reported (`latency`); `--latency-only` does just
//! that, after one unmeasured sync.
//!
//! Scenario e (two-way push, `two_way`; mailsync and mbsync, not OfflineIMAP): each
//! sends the same local change set (2,000 flag changes, 100 deletes, 50 moves between
//! folders, 20 new messages) from the store c left, mailsync with `direction = "both"`,
//! mbsync with `Sync All`, the server reset before every run; the servers they leave
//! are compared (Message-IDs and flags per folder), and the two passes after (e1, e2:
//! nothing changed) give the two-way no-op, set against b's pull no-op and against a
//! pull no-op on the same store and server (e3). With
//! `--push-latency N`, after e, N local renames adding `F`, each timed until the server
//! shows `\Flagged` (`push_latency`): `mailsync run` against one `mbsync CHANNEL:INBOX`
//! started at the rename. `--two-way-only` does one unmeasured sync, then b, e and the
//! flag-push latency (N = 20 unless given):
//!
//! ```text
//! bench/run --two-way-only --messages 2000 --runs 1     # quick check, a few minutes
//! bench/run --two-way-only --messages 20000 --runs 3    # the figures
//! bench/run --push-latency 20                           # everything, then the latency
//! ```

mod args;
mod compare;
mod fsutil;
mod latency;
mod limit;
mod measure;
mod push_latency;
mod report;
mod server;
mod tools;
mod two_way;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mailsync_testenv::{Corpus, CorpusOptions};

use compare::Digest;
use fsutil::{copy_tree, remove_tree};
use measure::Run;
use report::Row;
use server::{Server, Snapshot};
use tools::{Setup, Tool};

const SCENARIOS: [&str; 7] = [
    "a. initial sync",
    "b. no-op resync",
    "c. resync after changes",
    "e. two-way push of local changes",
    "e1. two-way, next pass (nothing changed)",
    "e2. two-way no-op",
    "e3. pull no-op after e2",
];
/// Scenario e's four timed passes (indexes into [`SCENARIOS`]).
const E: usize = 3;
const E_NEXT: usize = 4;
const E_NOOP: usize = 5;
const E_PULL: usize = 6;

/// A scenario's short name ("a", "e1"): log file names and `runs.tsv`.
fn key(s: usize) -> &'static str {
    SCENARIOS[s].split('.').next().unwrap_or("?")
}

/// Runs the benchmark with the arguments after `bench`.
pub async fn main(argv: impl Iterator<Item = String>) -> Result<()> {
    let args = args::parse(argv)?;
    check_tools(&args)?;
    let work = work_dir()?;
    let result = run(&args, &work).await;
    if std::env::var_os("MAILSYNC_BENCH_KEEP").is_none() {
        let _ = remove_tree(&work);
    }
    result
}

fn check_tools(args: &args::BenchArgs) -> Result<()> {
    let mut missing = Vec::new();
    let has = |p: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {p}"))
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !Path::new("/usr/bin/time").exists() {
        missing.push("/usr/bin/time (apt-get install time)".to_string());
    }
    for t in &args.tools {
        let ok = match t {
            Tool::Mailsync => args.mailsync.exists() || has(&args.mailsync.display().to_string()),
            Tool::Mbsync => has("mbsync"),
            Tool::Offlineimap => has("offlineimap"),
        };
        if !ok {
            missing.push(t.name().to_string());
        }
    }
    if !missing.is_empty() {
        bail!("missing: {} (bench/run installs them)", missing.join(", "));
    }
    Ok(())
}

/// One tool's measured runs; `record` prints each and writes it to `runs.tsv`.
struct Runs<'a, R> {
    setup: &'a Setup,
    logs: &'a Path,
    record: R,
}

impl<R: FnMut(usize, usize, &Run) -> Result<()>> Runs<'_, R> {
    /// Runs the tool `n` times for scenario `s` (`prepare` before each run) and returns
    /// the medians.
    fn median(
        &mut self,
        s: usize,
        n: usize,
        server: &mut Server,
        mut prepare: impl FnMut(&mut Server) -> Result<()>,
    ) -> Result<Run> {
        let tool = self.setup.tool.name();
        let mut all = Vec::new();
        for i in 0..n {
            prepare(server)?;
            let label = format!("{tool}-{}-{}", key(s), i + 1);
            let r = measure::run(self.setup, server, self.logs, &label)
                .with_context(|| format!("{tool} {}", SCENARIOS[s]))?;
            (self.record)(s, i, &r)?;
            all.push(r);
        }
        Ok(measure::median(&all))
    }
}

/// Scenario e's outcome on one profile, a line each: the change set, whether both tools
/// started from and ended with the same server, whether each ended where the change set
/// leads, and the two-way no-op (e2) against the pull no-op (b).
fn two_way_lines(
    profile: &str,
    set: &two_way::ChangeSet,
    outcomes: &HashMap<Tool, two_way::Outcome>,
    medians: &HashMap<(usize, Tool), Run>,
) -> Vec<String> {
    let mut lines = vec![format!(
        "{profile} profile: scenario e = {}, made in each tool's store",
        set.describe()
    )];
    if let (Some(m), Some(b)) = (outcomes.get(&Tool::Mailsync), outcomes.get(&Tool::Mbsync)) {
        lines.push(format!(
            "{profile}: server before e the same for mailsync and mbsync: {}",
            m.before.verdict(&b.before)
        ));
        lines.push(format!(
            "{profile}: same server state after e (mailsync vs mbsync, Message-IDs and flags per folder): {}",
            m.after.verdict(&b.after)
        ));
    }
    for tool in [Tool::Mailsync, Tool::Mbsync] {
        let Some(o) = outcomes.get(&tool) else {
            continue;
        };
        lines.push(format!(
            "{profile}: {}: server after e as the change set makes it: {}; every run left the same server: {}; messages per folder before {:?}, after {:?}",
            tool.name(),
            o.after.verdict(&set.expected(&o.before)),
            if o.runs_agree { "yes" } else { "no" },
            o.before.counts(),
            o.after.counts(),
        ));
    }
    for tool in [Tool::Mailsync, Tool::Mbsync] {
        let (Some(noop), Some(pull)) = (medians.get(&(E_NOOP, tool)), medians.get(&(1, tool)))
        else {
            continue;
        };
        let ratio = noop.wall / pull.wall;
        let bar = if tool == Tool::Mailsync {
            format!(
                " (bar ≤ 1.2: {})",
                if ratio <= 1.2 { "met" } else { "not met" }
            )
        } else {
            String::new()
        };
        let mut line = format!(
            "{profile}: {}: two-way no-op ÷ pull no-op = e2 {:.3} s ÷ b {:.3} s = {ratio:.2}{bar}",
            tool.name(),
            noop.wall,
            pull.wall
        );
        if let Some(same) = medians.get(&(E_PULL, tool)) {
            line.push_str(&format!(
                "; ÷ the pull no-op on the same store and server after e2 (e3, {:.3} s) = {:.2}",
                same.wall,
                noop.wall / same.wall
            ));
        }
        lines.push(line);
    }
    lines
}

/// `$MAILSYNC_TESTENV_TMPDIR`, else `/dev/shm` when it has room, else the temp dir.
fn work_dir() -> Result<PathBuf> {
    let parent = std::env::var_os("MAILSYNC_TESTENV_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| {
            Path::new("/dev/shm")
                .is_dir()
                .then(|| PathBuf::from("/dev/shm"))
        })
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("mailsync-bench-")
        .tempdir_in(parent)?
        .keep();
    Ok(dir)
}

async fn run(args: &args::BenchArgs, work: &Path) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let mut tsv = std::fs::File::create(out.join("runs.tsv"))?;
    writeln!(
        tsv,
        "profile\ttool\tscenario\trun\twall_s\tcpu_s\tpeak_rss_mb\tserver_mb\tsessions\tserver_cpu_s"
    )?;
    let started = Instant::now();
    let corpus = Corpus::generate(&CorpusOptions {
        seed: 42,
        count: args.messages,
        max_size: None,
    });
    let corpus_mb = corpus.iter().map(|m| m.bytes.len()).sum::<usize>() as f64 / 1e6;
    println!(
        "corpus: {} messages, {corpus_mb:.1} MB (generated in {:.1?}); work dir {}",
        corpus.len(),
        started.elapsed(),
        work.display()
    );
    // The new mail of the latency measurement: the corpus's sizes, another seed.
    let new_mail: Vec<Vec<u8>> = Corpus::generate(&CorpusOptions {
        seed: 4343,
        count: args.latency,
        max_size: None,
    })
    .into_iter()
    .map(|m| m.bytes)
    .collect();
    // Scenario e's new local messages: capped at 200 KB (a reader's drafts and filed
    // mail; the corpus's 1-5 MB ones would dominate 20 uploads), another seed.
    let new_local = Corpus::generate(&CorpusOptions {
        seed: 4545,
        count: two_way::NEW_LOCAL,
        max_size: Some(200_000),
    });
    let mut latencies = Vec::new();
    let mut push_latencies = Vec::new();
    let mut two_way_notes: Vec<String> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut limit = None;
    let mut notes = Vec::new();
    for &profile in &args.profiles {
        let rtt = std::time::Duration::from_millis(args.rtt_ms);
        let mut server = Server::start(profile, &corpus, work, rtt).await?;
        server.restore(Snapshot::Pristine)?;
        let mut line = format!(
            "{} profile: seeded {:.1} MB in {:.1?}; a server restore (copy + force-resync) takes {:.2?}",
            profile.name(),
            server.seed_bytes as f64 / 1e6,
            server.seed_time,
            server.last_restore
        );
        if args.rtt_ms > 0 {
            line.push_str(&format!(
                "; the tools reach it through a proxy adding a {} ms round trip",
                args.rtt_ms
            ));
        }
        println!("{line}");
        notes.push(line);
        if limit.is_none() && !args.latency_only && !args.two_way_only {
            let l = limit::measure(&server, &corpus, &work.join("limit")).await?;
            println!(
                "[{}] physical limit: fetch {:.2}s ({:.1} MB), write {:.2}s",
                profile.name(),
                l.fetch_wall,
                l.fetch_mb,
                l.write_wall
            );
            limit = Some(l);
        }
        let mut medians: HashMap<(usize, Tool), Run> = HashMap::new();
        let mut digests: HashMap<(usize, Tool), Digest> = HashMap::new();
        let mut outcomes: HashMap<Tool, two_way::Outcome> = HashMap::new();
        // Scenario e's change set, chosen from the server as the first tool found it.
        let mut change_set = None;
        for &tool in &args.tools {
            let dir = work.join(profile.name()).join(tool.name());
            let logs = work.join(profile.name()).join("logs");
            std::fs::create_dir_all(&logs)?;
            let setup = Setup::new(tool, &server, &dir, &args.mailsync)?;
            let mut record = |scenario: usize, i: usize, r: &Run| -> Result<()> {
                println!(
                    "[{}] {:<11} {:<40} run {}: wall {:>7.2}s cpu {:>7.2}s server cpu {:>7.2}s rss {:>6.0} MB server {:>8.1} MB sessions {}",
                    profile.name(),
                    tool.name(),
                    SCENARIOS[scenario],
                    i + 1,
                    r.wall,
                    r.cpu,
                    r.others_cpu,
                    r.rss_mb,
                    r.server_mb,
                    r.sessions
                );
                writeln!(
                    tsv,
                    "{}\t{}\t{}\t{}\t{:.3}\t{:.3}\t{:.1}\t{:.3}\t{}\t{:.3}",
                    profile.name(),
                    tool.name(),
                    key(scenario),
                    i + 1,
                    r.wall,
                    r.cpu,
                    r.rss_mb,
                    r.server_mb,
                    r.sessions,
                    r.others_cpu
                )?;
                Ok(())
            };
            if args.latency_only || args.two_way_only {
                // The store the latency or scenario e starts from: one sync of the
                // pristine server.
                server.restore(Snapshot::Pristine)?;
                setup.make_fresh()?;
                measure::run(&setup, &server, &logs, &format!("{}-sync", tool.name()))
                    .with_context(|| format!("{} first sync", tool.name()))?;
            }
            if args.two_way_only {
                // b: the pull no-op that e2 is set against, on that store.
                let mut runs = Runs {
                    setup: &setup,
                    logs: &logs,
                    record: &mut record,
                };
                let m = runs.median(1, args.runs, &mut server, |_| Ok(()))?;
                medians.insert((1, tool), m);
                digests.insert((1, tool), compare::digest(&setup.folders)?);
            } else if !args.latency_only {
                let mut runs = Runs {
                    setup: &setup,
                    logs: &logs,
                    record: &mut record,
                };
                // a: initial sync, a fresh store each run; the last run's store stays.
                server.restore(Snapshot::Pristine)?;
                let initial_runs = if tool == Tool::Offlineimap {
                    args.offlineimap_initial_runs.min(args.runs)
                } else {
                    args.runs
                };
                let m = runs.median(0, initial_runs, &mut server, |_| setup.make_fresh())?;
                medians.insert((0, tool), m);
                digests.insert((0, tool), compare::digest(&setup.folders)?);
                // b: no-op resync on that store.
                let m = runs.median(1, args.runs, &mut server, |_| Ok(()))?;
                medians.insert((1, tool), m);
                digests.insert((1, tool), compare::digest(&setup.folders)?);
                // c: from the synced store (copied aside once) and the server as a and b
                // left it plus the change set (see `server`: Dovecot's cache decisions).
                server.wait_idle()?;
                server.snapshot_changed().await?;
                if tool == args.tools[0] {
                    let (flags, expunges, new) = server.changes;
                    let line = format!(
                        "{} profile: scenario c = {new} new, {flags} flag changes, {expunges} expunges, applied after each tool's a and b",
                        profile.name()
                    );
                    println!("{line}");
                    notes.push(line);
                }
                let baseline = work
                    .join(profile.name())
                    .join(format!("{}.baseline", tool.name()));
                copy_tree(&dir, &baseline)?;
                let m = runs.median(2, args.runs, &mut server, |server| {
                    server.restore(Snapshot::Changed)?;
                    remove_tree(&dir)?;
                    copy_tree(&baseline, &dir)
                })?;
                medians.insert((2, tool), m);
                digests.insert((2, tool), compare::digest(&setup.folders)?);
                println!(
                    "[{}] {} messages per folder after a/b/c: {:?} {:?} {:?}",
                    profile.name(),
                    tool.name(),
                    digests[&(0, tool)].counts(),
                    digests[&(1, tool)].counts(),
                    digests[&(2, tool)].counts()
                );
                remove_tree(&baseline)?;
            }
            if args.two_way() && two_way::supports(tool) {
                // e: from the store as c (or the first sync) left it, in sync.
                let baseline = work
                    .join(profile.name())
                    .join(format!("{}.e-baseline", tool.name()));
                let o = two_way::measure(
                    &setup,
                    &mut server,
                    &logs,
                    &baseline,
                    args.runs,
                    &mut change_set,
                    &new_local,
                    &mut record,
                )
                .await
                .with_context(|| format!("{} two-way push", tool.name()))?;
                medians.insert((E, tool), measure::median(&o.push));
                medians.insert((E_NEXT, tool), measure::median(&o.next));
                medians.insert((E_NOOP, tool), measure::median(&o.noop));
                medians.insert((E_PULL, tool), measure::median(&o.pull));
                println!(
                    "[{}] {} messages per folder on the server before and after e: {:?} {:?}",
                    profile.name(),
                    tool.name(),
                    o.before.counts(),
                    o.after.counts()
                );
                outcomes.insert(tool, o);
            }
            if args.latency > 0 && latency::supports(tool) {
                let l = latency::measure(&setup, &server, &logs, profile.name(), &new_mail)
                    .await
                    .with_context(|| format!("{} new-mail latency", tool.name()))?;
                println!("[{}] {}", profile.name(), report::latency_line(&l));
                latencies.push(l);
            }
            if args.push_latency > 0 && two_way::supports(tool) {
                let l = push_latency::measure(
                    &setup.two_way()?,
                    &server,
                    &logs,
                    profile.name(),
                    args.push_latency,
                )
                .await
                .with_context(|| format!("{} flag-push latency", tool.name()))?;
                println!("[{}] {}", profile.name(), report::push_latency_line(&l));
                push_latencies.push(l);
            }
            if std::env::var_os("MAILSYNC_BENCH_KEEP").is_none() {
                remove_tree(&dir)?;
            }
        }
        for (s, scenario) in SCENARIOS.iter().enumerate() {
            let reference = medians.get(&(s, Tool::Mbsync)).copied();
            for &tool in &args.tools {
                let Some(&m) = medians.get(&(s, tool)) else {
                    continue;
                };
                let same = if tool == Tool::Mbsync && reference.is_some() {
                    "(reference)".to_string()
                } else if s == E {
                    match (outcomes.get(&tool), outcomes.get(&Tool::Mbsync)) {
                        (Some(o), Some(r)) => format!(
                            "server: {}; Maildir: {}",
                            o.after.verdict(&r.after),
                            o.digest.verdict(&r.digest)
                        ),
                        _ => "–".to_string(),
                    }
                } else {
                    match (digests.get(&(s, tool)), digests.get(&(s, Tool::Mbsync))) {
                        (Some(d), Some(r)) => d.verdict(r),
                        _ => "–".to_string(),
                    }
                };
                rows.push(Row {
                    scenario,
                    profile: profile.name(),
                    tool: tool.name(),
                    median: m,
                    ratio: reference.map(|r| m.wall / r.wall),
                    same,
                });
            }
        }
        if let Some(set) = &change_set {
            let lines = two_way_lines(profile.name(), set, &outcomes, &medians);
            for l in &lines {
                println!("{l}");
            }
            two_way_notes.extend(lines);
        }
        server.wait_idle()?;
        drop(server);
        remove_tree(&work.join(format!("server-{}", profile.name())))?;
        if std::env::var_os("MAILSYNC_BENCH_KEEP").is_none() {
            remove_tree(&work.join(profile.name()))?;
        }
    }
    let mut sections = Vec::new();
    if !rows.is_empty() {
        let table = report::table(&rows, args.runs);
        println!("\n{table}");
        sections.push(format!(
            "## Results ({} messages, {corpus_mb:.1} MB)\n\n{table}",
            args.messages
        ));
    }
    if let Some(l) = limit {
        let limit_md = report::limit(&l);
        println!("{limit_md}");
        sections.push(format!("### Physical limit\n\n{limit_md}"));
    }
    if !latencies.is_empty() {
        latency::write_tsv(&out.join("latency.tsv"), &latencies)?;
        let sizes: Vec<f64> = new_mail.iter().map(|m| m.len() as f64).collect();
        let latency_md = report::latency(&latencies, &sizes, args.messages);
        println!("\n{latency_md}");
        // Under the results' heading, or the report's first one when it runs alone.
        let heading = if rows.is_empty() {
            format!(
                "## New-mail latency ({} messages on the server)",
                args.messages
            )
        } else {
            "### New-mail latency".to_string()
        };
        sections.push(format!("{heading}\n\n{latency_md}"));
    }
    if !two_way_notes.is_empty() {
        let md = report::two_way(&two_way_notes);
        println!("\n{md}");
        sections.push(format!("### Two-way push (scenario e)\n\n{md}"));
    }
    if !push_latencies.is_empty() {
        let md = report::push_latency(&push_latencies);
        println!("\n{md}");
        sections.push(format!("### Flag-push latency\n\n{md}"));
    }
    let env = report::environment(work, &args.mailsync);
    let md = format!(
        "{}\n### Machine and versions\n\n{env}\n### Setup times\n\n{}\n\nTotal benchmark time: {:.0?}\n\n\
         Command: `{}`\n",
        sections.join("\n"),
        notes
            .iter()
            .map(|n| format!("- {n}"))
            .collect::<Vec<_>>()
            .join("\n"),
        started.elapsed(),
        args.command_line,
    );
    std::fs::write(out.join("report.md"), md)?;
    println!("report: {}", out.join("report.md").display());
    Ok(())
}
