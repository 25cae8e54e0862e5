//! The environment of the hostile-server tests: the scripted server
//! (`mailsync_testenv::hostile`), the test identity provider, and a config in a temp
//! dir with a short command timeout. A run is measured (wall time, CPU, peak RSS with
//! GNU time) and killed if it hangs; [`Verdict`] checks what a user would check after
//! a misbehaving server: an exit code of 1 or 2, one error line naming the cause, no
//! panic, no hang, bounded memory, and no secret anywhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use mailsync_testenv::Idp;
use mailsync_testenv::dovecot::maildir_letters;
use mailsync_testenv::hostile::{Body, HostileOptions, HostileServer};

use super::{CLIENT_ID, CLIENT_SECRET, USER, toml_string};

/// The command timeout in the config: short, so a test of a silent server is fast.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Command timeouts one `sync` may spend: a login is tried 3 times, and a download
/// part reconnects up to 3 times (src/sync/login.rs, src/sync/download.rs).
pub const ATTEMPTS: u32 = 12;
/// On top of the timeouts: the backoff between logins (1 s + 2 s, per reconnect),
/// start-up, the token request.
pub const SLACK: Duration = Duration::from_secs(15);
/// A run still going after this long is killed and reported as a hang.
pub const KILL_AFTER: Duration = Duration::from_secs(75);
/// Peak RSS allowed, in MiB.
pub const RSS_LIMIT_MB: u64 = 64;
/// The address space a run may reserve: a memory bomb aborts there instead of taking
/// the machine (a normal run reserves well under 1 GiB).
pub const ADDRESS_SPACE_CAP: u64 = 4 << 30;

pub struct HostileEnv {
    pub idp: Idp,
    pub server: HostileServer,
    pub dir: tempfile::TempDir,
    /// (local folder, remote folder or role).
    pub mappings: Vec<(String, String)>,
    /// The port in the config, if not the scripted server's.
    pub imap_port: Option<u16>,
    /// The config's `command_timeout` ([`COMMAND_TIMEOUT`] unless a test needs more).
    pub command_timeout: Duration,
}

/// A measured `mailsync` run.
pub struct Measured {
    pub args: Vec<String>,
    /// The exit code (-1 if killed).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
    /// User + system CPU seconds.
    pub cpu: f64,
    /// Peak RSS in kB (None if killed).
    pub rss_kb: Option<u64>,
    pub hung: bool,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            let from = lines.len().saturating_sub(15);
            lines[from..]
                .iter()
                .map(|l| l.chars().take(300).collect::<String>())
                .collect::<Vec<_>>()
                .join("\n")
        };
        write!(
            f,
            "mailsync {}: exit {}{}, {:.1} s, cpu {:.1} s, peak RSS {} MB\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
            self.args.join(" "),
            self.code,
            if self.hung { " (KILLED: hang)" } else { "" },
            self.wall.as_secs_f64(),
            self.cpu,
            self.rss_kb.map_or("?".into(), |k| (k / 1024).to_string()),
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

impl HostileEnv {
    pub fn start(options: HostileOptions) -> HostileEnv {
        let idp = Idp::start_blocking();
        idp.add_user(USER);
        idp.add_app(CLIENT_ID, Some(CLIENT_SECRET), Some(USER));
        let server = HostileServer::start(options).expect("start the hostile server");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("work.secret"), format!("{CLIENT_SECRET}\n")).unwrap();
        std::fs::copy(server.ca_file(), dir.path().join("ca.pem")).unwrap();
        let env = HostileEnv {
            idp,
            server,
            dir,
            mappings: vec![("Inbox".into(), "INBOX".into())],
            imap_port: None,
            command_timeout: COMMAND_TIMEOUT,
        };
        env.write_config();
        env
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn maildir(&self, local: &str) -> PathBuf {
        self.dir.path().join("Mail").join(local)
    }

    pub fn write_config(&self) {
        let d = self.dir.path();
        let path = |p: &str| toml_string(&d.join(p).display().to_string());
        let folders: String = self
            .mappings
            .iter()
            .map(|(l, r)| format!("{} = {}\n", toml_string(l), toml_string(r)))
            .collect();
        let text = format!(
            r#"[daemon]
state_dir = {state}
command_timeout = "{timeout}s"

[accounts.work]
provider = "custom"
email = "{USER}"
client_id = "{CLIENT_ID}"
flow = "client-credentials"
client_secret_file = {secret}
maildir = {mail}
imap_host = "localhost"
imap_port = {port}
tls = "{tls}"
ca_file = {ca}
token_url = "{token_url}"
scopes = ["https://outlook.office365.com/.default"]

[accounts.work.folders]
{folders}"#,
            state = path("state"),
            timeout = self.command_timeout.as_secs(),
            secret = path("work.secret"),
            mail = path("Mail"),
            port = self.imap_port.unwrap_or(self.server.port()),
            tls = if self.server.tls() {
                "implicit"
            } else {
                "plain"
            },
            ca = path("ca.pem"),
            token_url = self.idp.token_url("contoso"),
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Runs `mailsync ARGS` under GNU time, killing it after [`KILL_AFTER`]. With
    /// `trace`, RUST_LOG=trace.
    pub async fn run(&self, args: &[&str], trace: bool) -> Measured {
        let dir = self.dir.path().to_path_buf();
        let config = self.config_path();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || measure(&dir, &config, args, trace))
            .await
            .unwrap()
    }

    /// Back to sane behaviour: the next sync must succeed and leave the Maildir
    /// holding exactly the server's messages.
    pub async fn converges(&self) {
        self.server.clear_hook();
        self.sync_ok().await;
        self.assert_in_sync();
    }

    /// A `sync` against sane behaviour, which must succeed.
    pub async fn sync_ok(&self) -> Measured {
        let run = self.run(&["sync"], false).await;
        assert!(
            run.code == 0 && !run.hung,
            "a sync against a sane server failed:\n{run}"
        );
        run
    }

    /// Each mapped local folder holds exactly the server folder's messages (same bytes,
    /// same flags), nothing in tmp/. Mappings here are folder names, not roles.
    pub fn assert_in_sync(&self) {
        for (local, remote) in &self.mappings {
            let server = self.server.messages(remote);
            let actual = local_files(&self.maildir(local));
            assert_eq!(
                actual.len(),
                server.len(),
                "local {local} has {} messages, server {remote:?} has {}",
                actual.len(),
                server.len()
            );
            let mut unmatched: Vec<(PathBuf, String)> = actual;
            for m in &server {
                let letters = maildir_letters(&m.flag_strings());
                let at = unmatched
                    .iter()
                    .position(|(p, l)| *l == letters && same_bytes(p, &m.body));
                assert!(
                    at.is_some(),
                    "{local}: UID {} (flags {letters:?}, {} bytes) has no identical local copy",
                    m.uid,
                    m.body.len()
                );
                unmatched.remove(at.unwrap());
            }
            let tmp = std::fs::read_dir(self.maildir(local).join("tmp"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(tmp, 0, "{local}/tmp is not empty");
        }
    }

    /// Every secret this test has: the client secret, the access tokens the identity
    /// provider issued and the server received, and the XOAUTH2 payloads in base64.
    pub fn secrets(&self) -> Vec<String> {
        let mut s = vec![CLIENT_SECRET.to_owned()];
        s.extend(self.idp.issued_secrets());
        s.extend(self.server.tokens());
        for p in self.server.auth_payloads() {
            s.push(base64::engine::general_purpose::STANDARD.encode(p.as_bytes()));
        }
        s.sort();
        s.dedup();
        s
    }

    /// Where a secret shows in `text`: the whole of it, or 32 characters of it past the
    /// first 6 (a token cut short still leaks).
    pub fn leaked_in(&self, text: &[u8]) -> Option<String> {
        for secret in self.secrets() {
            let b = secret.as_bytes();
            let mut needles = vec![b];
            if b.len() >= 38 {
                needles.extend(b[6..].chunks_exact(32));
            }
            if needles
                .iter()
                .any(|n| text.windows(n.len()).any(|w| w == *n))
            {
                return Some(format!("{}…", &secret[..secret.len().min(10)]));
            }
        }
        None
    }
}

fn measure(dir: &Path, config: &Path, args: Vec<String>, trace: bool) -> Measured {
    use std::os::unix::process::CommandExt as _;
    let time_file = dir.join("time.out");
    let (out, err) = (dir.join("run.stdout"), dir.join("run.stderr"));
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&time_file)
        .arg("prlimit")
        .arg(format!("--as={ADDRESS_SPACE_CAP}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_mailsync"))
        .arg("--config")
        .arg(config)
        .args(&args)
        .env_remove("RUST_LOG")
        .env_remove("MAILSYNC_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .process_group(0);
    if trace {
        c.env("RUST_LOG", "trace");
    }
    let started = Instant::now();
    let mut child = c
        .spawn()
        .expect("run /usr/bin/time (scripts/deps installs it)");
    let mut hung = false;
    let mut peak_kb = None;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > KILL_AFTER {
            hung = true;
            // The whole process group: GNU time, prlimit's exec and mailsync.
            let group = child.id();
            assert!(group > 1, "no process group to kill");
            peak_kb = peak_rss_in_group(group);
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{group}")])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = started.elapsed();
    let text = std::fs::read_to_string(&time_file).unwrap_or_default();
    let f: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Measured {
        args,
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: read(&out),
        stderr: read(&err),
        wall,
        cpu: if f.len() == 4 { f[1] + f[2] } else { 0.0 },
        rss_kb: if hung {
            peak_kb
        } else {
            (f.len() == 4).then(|| f[3] as u64)
        },
        hung,
    }
}

/// The largest VmHWM (peak RSS, kB) of the processes whose parent is `parent` (GNU
/// time's child: mailsync, exec'd by prlimit), read before a hung run is killed.
fn peak_rss_in_group(parent: u32) -> Option<u64> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .max()
}

/// (path, sorted flag letters) of each message file in a Maildir folder.
fn local_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let mut letters: Vec<char> = name
                .split_once(":2,")
                .map(|(_, f)| f.chars().collect())
                .unwrap_or_default();
            letters.sort_unstable();
            out.push((e.path(), letters.into_iter().collect()));
        }
    }
    out
}

/// Is the file at `path` exactly `body`? Compared chunk by chunk: a generated body
/// may be hundreds of MB.
fn same_bytes(path: &Path, body: &Body) -> bool {
    use std::io::Read as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.len() != body.len() {
        return false;
    }
    let mut f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    for chunk in body.chunks() {
        let mut buf = vec![0; chunk.len()];
        if f.read_exact(&mut buf).is_err() || buf != chunk {
            return false;
        }
    }
    true
}

/// What a user expects of a `sync` against a misbehaving server.
pub struct Expect<'a> {
    pub outcome: Outcome,
    /// The error line names the cause: it contains one of these (case-insensitive).
    pub cause: &'a [&'a str],
    /// Peak RSS allowed, in MiB.
    pub rss_mb: u64,
}

/// The exit code expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 1 or 2, with one error line.
    Fails,
    /// 0: mailsync copes (falls back, ignores what is irrelevant).
    Succeeds,
    /// Either, as long as every other promise holds.
    Either,
}

impl<'a> Expect<'a> {
    /// Fails with one line naming one of `cause`.
    pub fn fails(cause: &'a [&'a str]) -> Self {
        Expect {
            outcome: Outcome::Fails,
            cause,
            rss_mb: RSS_LIMIT_MB,
        }
    }
    pub fn succeeds() -> Self {
        Expect {
            outcome: Outcome::Succeeds,
            cause: &[],
            rss_mb: RSS_LIMIT_MB,
        }
    }
    /// Succeeds, or fails with one line naming one of `cause`.
    pub fn either(cause: &'a [&'a str]) -> Self {
        Expect {
            outcome: Outcome::Either,
            cause,
            rss_mb: RSS_LIMIT_MB,
        }
    }
    pub fn rss_mb(mut self, mb: u64) -> Self {
        self.rss_mb = mb;
        self
    }
}

impl HostileEnv {
    /// Runs `mailsync -q sync` against the misbehaving server and `mailsync status`
    /// after it, and checks every promise; with `trace`, a second run at
    /// RUST_LOG=trace is checked for secrets too. Panics listing every broken one.
    pub async fn check_sync(&self, expect: Expect<'_>, trace: bool) -> Measured {
        let (run, broken, report) = self.check_sync_collect(expect, trace).await;
        assert!(broken.is_empty(), "BROKEN: {}\n{report}", broken.join("; "));
        run
    }

    /// [`HostileEnv::check_sync`], returning what broke (and the report) instead of
    /// panicking, for a test with checks of its own to make first.
    pub async fn check_sync_collect(
        &self,
        expect: Expect<'_>,
        trace: bool,
    ) -> (Measured, Vec<String>, String) {
        let run = self.run(&["-q", "sync"], false).await;
        let mut broken = self.judge(&run, &expect);
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        if run.code == 0 || run.hung {
            // Judged by `judge`.
        } else if lines.len() != 1 {
            broken.push(format!(
                "stderr has {} lines, not one error line",
                lines.len()
            ));
        } else if !expect.cause.is_empty()
            && !expect
                .cause
                .iter()
                .any(|c| lines[0].to_lowercase().contains(&c.to_lowercase()))
        {
            broken.push(format!(
                "the error line names none of {:?}: {:?}",
                expect.cause,
                lines[0].chars().take(300).collect::<String>()
            ));
        }
        let mut report = run.to_string();
        if trace {
            let t = self.run(&["sync"], true).await;
            for b in self.judge(&t, &expect) {
                broken.push(format!("at RUST_LOG=trace: {b}"));
            }
            report.push_str(&format!("\n=== trace run\n{t}"));
        }
        let status = self.run(&["status"], false).await;
        if let Some(s) = self.leaked_in(format!("{}{}", status.stdout, status.stderr).as_bytes()) {
            broken.push(format!("`mailsync status` shows secret {s}"));
        }
        if status.stderr.contains("panicked") {
            broken.push("`mailsync status` panicked".into());
        }
        for f in files_under(&self.state_dir()) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            if let Some(s) = self.leaked_in(&bytes) {
                broken.push(format!("{} holds secret {s}", f.display()));
            }
        }
        eprintln!(
            "hostile sync: exit {}{}, {:.1} s, cpu {:.1} s, peak RSS {} MB",
            run.code,
            if run.hung { " (hung, killed)" } else { "" },
            run.wall.as_secs_f64(),
            run.cpu,
            run.rss_kb.map_or("?".into(), |k| (k / 1024).to_string())
        );
        (run, broken, report)
    }

    /// The promises one run must keep, as a list of what broke.
    fn judge(&self, run: &Measured, expect: &Expect<'_>) -> Vec<String> {
        let mut broken = Vec::new();
        let bound = self.command_timeout * ATTEMPTS + SLACK;
        if run.hung {
            broken.push(format!("hang: killed after {} s", KILL_AFTER.as_secs()));
        } else if run.wall > bound {
            broken.push(format!(
                "took {:.0} s, more than {} s (command timeout x {ATTEMPTS} + {} s)",
                run.wall.as_secs_f64(),
                bound.as_secs(),
                SLACK.as_secs()
            ));
        }
        let failed = run.code == 1 || run.code == 2;
        match expect.outcome {
            _ if run.hung => {}
            _ if run.code == -1 => broken.push(format!(
                "killed by a signal (an abort at the {} GiB address-space cap is a memory bomb)",
                ADDRESS_SPACE_CAP >> 30
            )),
            Outcome::Fails if !failed => broken.push(format!("exit code {}, not 1 or 2", run.code)),
            Outcome::Succeeds if run.code != 0 => {
                broken.push(format!("exit code {}, not 0", run.code))
            }
            Outcome::Either if !(failed || run.code == 0) => {
                broken.push(format!("exit code {}, not 0, 1 or 2", run.code))
            }
            _ => {}
        }
        if run.code == 101 || run.stderr.contains("panicked") {
            broken.push("panic".into());
        }
        if let Some(kb) = run.rss_kb
            && kb / 1024 > expect.rss_mb
        {
            broken.push(format!("peak RSS {} MB > {} MB", kb / 1024, expect.rss_mb));
        }
        if let Some(s) = self.leaked_in(run.stdout.as_bytes()) {
            broken.push(format!("stdout shows secret {s}"));
        }
        if let Some(s) = self.leaked_in(run.stderr.as_bytes()) {
            broken.push(format!("stderr shows secret {s}"));
        }
        broken
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A small message with a Message-ID.
pub fn small_message(n: u32) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nSubject: message {n}\r\nMessage-ID: <m{n}@hostile.test>\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}
