//! The report: the results table (scenario × profile × tool, medians), the physical
//! limit, the machine, the versions, the date and the exact command, as Markdown.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::limit::Limit;
use super::measure::Run;

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
