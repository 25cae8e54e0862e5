//! The report: the results table (scenario × profile × tool, medians), the physical
//! limit, the new-mail latency, scenario e's verdicts, the flag-push latency, the
//! machine, the versions, the date and the exact command, as Markdown.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::latency::{Latency, quantile};
use super::limit::Limit;
use super::measure::Run;
use super::push_latency::PushLatency;
use super::tools::Tool;

/// One table row.
pub struct Row {
    pub scenario: &'static str,
    pub profile: &'static str,
    pub tool: &'static str,
    pub median: Run,
    /// Wall-time ratio to mbsync's row of the same scenario and profile.
    pub ratio: Option<f64>,
    /// Whether the Maildir matched mbsync's after the scenario.
    pub same: String,
}

/// The table in Markdown.
pub fn table(rows: &[Row], runs: usize) -> String {
    let mut t = String::from(
        "| scenario | profile | tool | wall s | CPU s | server CPU s | peak RSS MB | server MB | sessions | wall ÷ mbsync | same as mbsync |\n\
         |---|---|---|--:|--:|--:|--:|--:|--:|--:|:-:|\n",
    );
    for r in rows {
        let m = &r.median;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {} | {} | {} |",
            r.scenario,
            r.profile,
            r.tool,
            m.wall,
            m.cpu,
            m.others_cpu,
            m.rss_mb,
            m.server_mb,
            m.sessions,
            r.ratio.map_or("–".into(), |x| format!("{x:.2}")),
            r.same,
        );
    }
    let _ = writeln!(
        t,
        "\nMedians of {runs} run(s) per row. CPU s: the tool's user + system time. Server CPU s: \
         the rest of the machine's busy time during the run (Dovecot, its TLS proxy, the kernel's \
         loopback work on their behalf), which shares the same cores."
    );
    t
}

/// The physical limit in Markdown.
pub fn limit(l: &Limit) -> String {
    format!(
        "| step | wall s | MB | MB/s |\n|---|--:|--:|--:|\n\
         | one connection, `UID FETCH 1:* BODY.PEEK[]` per folder, bodies discarded ({n} messages) | {fw:.2} | {fm:.1} | {fr:.0} |\n\
         | the same bytes written as Maildir files (tmp → fsync → rename) | {ww:.2} | {wm:.1} | {wr:.0} |\n",
        n = l.messages,
        fw = l.fetch_wall,
        fm = l.fetch_mb,
        fr = l.fetch_mb / l.fetch_wall,
        ww = l.write_wall,
        wm = l.write_mb,
        wr = l.write_mb / l.write_wall,
    )
}

/// One tool's latency figures on one line, for the console.
pub fn latency_line(l: &Latency) -> String {
    let ms = |v: &[f64], p: f64| quantile(v, p) * 1e3;
    let mut line = format!(
        "{:<11} new mail, APPEND OK → file in the Inbox over {} messages: median {:.1} ms, p95 {:.1} ms, max {:.1} ms; Dovecot's IDLE notice after {:.1} ms (median)",
        l.tool.name(),
        l.landed.len(),
        ms(&l.landed, 0.5),
        ms(&l.landed, 0.95),
        ms(&l.landed, 1.0),
        ms(&l.notice, 0.5),
    );
    if !l.exited.is_empty() {
        line.push_str(&format!(
            "; mbsync exited after {:.1} ms (median)",
            ms(&l.exited, 0.5)
        ));
    }
    line
}

/// Per message, `a[i] + sign × b[i]`.
fn combine(a: &[f64], b: &[f64], sign: f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + sign * y).collect()
}

/// "median / p95" in ms.
fn median_p95(v: &[f64]) -> String {
    format!(
        "{:.0} / {:.0}",
        quantile(v, 0.5) * 1e3,
        quantile(v, 0.95) * 1e3
    )
}

/// The new-mail latency tables in Markdown: per profile and tool, the median, 95th
/// percentile and maximum; then per profile what they are made of. `sizes` are the new
/// messages' sizes in bytes, `corpus` the number of messages the server held before.
pub fn latency(all: &[Latency], sizes: &[f64], corpus: usize) -> String {
    let mut t = String::from(
        "| profile | tool | how new mail arrives | messages | median ms | p95 ms | max ms | median ÷ mbsync |\n\
         |---|---|---|--:|--:|--:|--:|--:|\n",
    );
    let of =
        |profile: &str, tool: Tool| all.iter().find(|r| r.profile == profile && r.tool == tool);
    for l in all {
        let reference = of(l.profile, Tool::Mbsync).map(|r| quantile(&r.landed, 0.5));
        let median = quantile(&l.landed, 0.5);
        let how = match l.tool {
            Tool::Mailsync => "`mailsync run`, IDLE (poll 1 h)",
            _ => "one `mbsync bench:INBOX` started at the APPEND's OK",
        };
        let _ = writeln!(
            t,
            "| {} | {} | {how} | {} | {:.1} | {:.1} | {:.1} | {} |",
            l.profile,
            l.tool.name(),
            l.landed.len(),
            median * 1e3,
            quantile(&l.landed, 0.95) * 1e3,
            quantile(&l.landed, 1.0) * 1e3,
            reference.map_or("–".into(), |r| format!("{:.2}", median / r)),
        );
    }
    let _ = writeln!(
        t,
        "\nEach figure is the time from the tagged OK of an APPEND to the server's INBOX (the \
         harness's own connection, one message at a time, each ≥ 1.1 s after the previous one \
         was handled) until the message is a file in the tool's local Inbox (`new/` or `cur/`, \
         looked at every millisecond). Percentiles by nearest rank. mailsync: the daemon IDLEs \
         on the Inbox and nothing else can deliver. mbsync has no IDLE: its figure is one run \
         of the Inbox alone started the moment the APPEND is acknowledged, without waiting for \
         any notice: the floor of a notifier such as goimapnotify starting mbsync. The server \
         held the {corpus}-message corpus; the {} new messages are the corpus's size mix \
         (median {:.1} KB, largest {:.1} KB).\n",
        sizes.len(),
        quantile(sizes, 0.5) / 1e3,
        quantile(sizes, 1.0) / 1e3,
    );
    t.push_str(
        "| profile | Dovecot's IDLE notice after the OK | mailsync after the notice | \
         mbsync run to the file | mbsync run to its exit | notice + mbsync run to the file | \
         mailsync ÷ (notice + mbsync), medians |\n|---|--:|--:|--:|--:|--:|--:|\n",
    );
    let mut profiles: Vec<&str> = all.iter().map(|l| l.profile).collect();
    profiles.dedup();
    for p in profiles {
        let (Some(m), Some(b)) = (of(p, Tool::Mailsync), of(p, Tool::Mbsync)) else {
            continue;
        };
        let notifier = combine(&b.notice, &b.landed, 1.0);
        let _ = writeln!(
            t,
            "| {p} | {} | {} | {} | {} | {} | {:.2} |",
            median_p95(&m.notice),
            median_p95(&combine(&m.landed, &m.notice, -1.0)),
            median_p95(&b.landed),
            median_p95(&b.exited),
            median_p95(&notifier),
            quantile(&m.landed, 0.5) / quantile(&notifier, 0.5),
        );
    }
    t.push_str(
        "\nMedian / p95 in ms, per message. The notice is timed on a second harness connection \
         IDLEing on INBOX (during mailsync's run; mbsync's run has its own): Dovecot holds an \
         IDLE notice back 500 ms after it sees a change, so that part is the server's. \
         \"mailsync after the notice\": from that notice to the file. \"notice + mbsync\": \
         per message, the notice during mbsync's run plus its run to the file, what a \
         notifier that starts mbsync on the notice could do at best (its own reaction and \
         mbsync's start-up are not in it).\n",
    );
    t
}

/// Scenario e's lines (see `two_way_lines` in the bench module) as a Markdown list, with
/// what the rows of the table measure.
pub fn two_way(lines: &[String]) -> String {
    let mut t: String = lines.iter().map(|l| format!("- {l}\n")).collect();
    t.push_str(
        "\nRows e to e3 of the table: one local change set made in the tool's Maildir as a \
         mail reader would (flags by renaming the info part, files deleted, files moved into \
         another folder's `cur/`, new files written into `new/` with CRLF line ends), the \
         server restored before each run; e is the pass that sends it; e1 the next pass and \
         e2 the one after, nothing changed, both once the store has been still for 3 s \
         (mailsync reads its local folders again in e1: it keeps a folder's directory times \
         only once they are 2-3 s old, and e's changes were made 1.1 s before e); e3 a pull \
         pass (the pull config) on the same store and server as e2. mailsync: \
         `direction = \"both\"`, `delete = \"expunge\"` (mbsync's semantics; mailsync's \
         default moves a deleted message to the trash); mbsync: `Sync All`, `Create Both`, \
         `Expunge Both`. A file moved between folders loses mbsync's `,U=` in its name, and \
         mbsync sends it as an expunge and an upload. Server state: per folder, the \
         Message-ID and system flags of every message.\n",
    );
    t
}

/// One tool's flag-push latencies on one line, for the console.
pub fn push_latency_line(l: &PushLatency) -> String {
    let ms = |v: &[f64], p: f64| quantile(v, p) * 1e3;
    let mut line = format!(
        "{:<11} flag push, rename → \\Flagged on the server over {} renames: median {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        l.tool.name(),
        l.flagged.len(),
        ms(&l.flagged, 0.5),
        ms(&l.flagged, 0.95),
        ms(&l.flagged, 1.0),
    );
    if !l.exited.is_empty() {
        line.push_str(&format!(
            "; mbsync exited after {:.0} ms (median)",
            ms(&l.exited, 0.5)
        ));
    }
    line
}

/// The flag-push latency table in Markdown, then every latency.
pub fn push_latency(all: &[PushLatency]) -> String {
    let mut t = String::from(
        "| profile | tool | how the flag is sent | renames | median ms | p95 ms | max ms | median ÷ mbsync | median ≤ 2 s |\n\
         |---|---|---|--:|--:|--:|--:|--:|:-:|\n",
    );
    for l in all {
        let reference = all
            .iter()
            .find(|r| r.profile == l.profile && r.tool == Tool::Mbsync)
            .map(|r| quantile(&r.flagged, 0.5));
        let median = quantile(&l.flagged, 0.5);
        let how = match l.tool {
            Tool::Mailsync => "`mailsync run`, two-way (it looks every 250 ms)",
            _ => "one `mbsync bench:INBOX` (two-way) started at the rename",
        };
        let _ = writeln!(
            t,
            "| {} | {} | {how} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
            l.profile,
            l.tool.name(),
            l.flagged.len(),
            median * 1e3,
            quantile(&l.flagged, 0.95) * 1e3,
            quantile(&l.flagged, 1.0) * 1e3,
            reference.map_or("–".into(), |r| format!("{:.2}", median / r)),
            if median <= 2.0 { "yes" } else { "no" },
        );
    }
    t.push_str(
        "\nEach figure: from the rename of a local Inbox file adding `F` (one message at a \
         time, each ≥ 1.1 s after the previous was handled; mailsync back in IDLE) until the \
         harness's own connection sees `\\Flagged` on that UID (NOOP + UID FETCH FLAGS every \
         20 ms, so up to ~20 ms late). mbsync sleeps a second when a Maildir folder changed \
         within the current second (\"sleeping due to recent directory modification\"): \
         part of its figure, as for any watcher that starts it on the change. Every latency, \
         in order (ms):\n\n",
    );
    for l in all {
        let v: Vec<String> = l
            .flagged
            .iter()
            .map(|x| format!("{:.0}", x * 1e3))
            .collect();
        let _ = writeln!(t, "- {} {}: {}", l.profile, l.tool.name(), v.join(", "));
    }
    t
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if s.is_empty() {
                s = String::from_utf8_lossy(&o.stderr).trim().to_string();
            }
            s
        })
        .unwrap_or_else(|e| format!("({e})"))
}

/// Machine and versions, as a Markdown list; `work` is where the stores live.
pub fn environment(work: &Path, mailsync: &Path) -> String {
    let w = work.display();
    let lines = [
        ("date", sh("date -u '+%Y-%m-%d %H:%M UTC'")),
        (
            "CPU",
            sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        ),
        ("cores (nproc)", sh("nproc")),
        ("memory", sh("free -h | awk '/Mem:/ {print $2}'")),
        ("kernel", sh("uname -sr")),
        (
            "work dir (server Maildir, tool stores)",
            sh(&format!(
                "df -hT {w} | awk 'NR==2 {{print $1\" \"$2\", \"$3\" total\"}}'"
            )),
        ),
        ("work dir path", w.to_string()),
        (
            "mailsync",
            format!(
                "{} (git {})",
                sh(&format!("{} --version", mailsync.display())),
                sh(
                    "git describe --always --dirty --tags 2>/dev/null || git rev-parse --short HEAD"
                )
            ),
        ),
        ("mbsync", sh("mbsync -v 2>&1 | head -1")),
        ("offlineimap", sh("offlineimap --version 2>&1 | head -1")),
        ("dovecot", sh("dovecot --version")),
    ];
    let mut s = String::new();
    for (k, v) in lines {
        let _ = writeln!(s, "- {k}: {}", v.replace('\n', " "));
    }
    s
}
