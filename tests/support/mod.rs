//! What the integration tests share: a test environment (a real Dovecot on loopback
//! with TLS, the in-process identity provider, a mailsync config in a temp dir), a way
//! to run the real `mailsync` binary, and the check every sync test ends with: the
//! Maildir holds exactly what the server holds (bytes and flags), nothing more.

#![allow(dead_code)]

pub mod daemon;
pub mod hostile_env;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use mailsync_testenv::Idp;
use mailsync_testenv::dovecot::{Dovecot, DovecotOptions, Profile, maildir_letters};

pub const USER: &str = "jane@example.com";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "test-secret-Q7fZ~k2pX9";
pub const PROFILES: [Profile; 2] = [Profile::Full, Profile::Exchange];

/// The default mappings: local name → remote (a name or a role).
pub const MAPPINGS: &[(&str, &str)] = &[
    ("Inbox", "INBOX"),
    ("Archive", "@archive"),
    ("Deleted Items", "@trash"),
];

pub struct Env {
    pub idp: std::sync::Arc<Idp>,
    pub dovecot: Dovecot,
    /// The relay Dovecot's SMTP submission hands messages to, when it has one
    /// ([`Env::start_sending`]): it stores them back into this Dovecot.
    pub sink: Option<mailsync_testenv::SmtpSink>,
    pub dir: tempfile::TempDir,
    pub profile: Profile,
    pub mappings: Vec<(String, String)>,
}

impl Env {
    pub async fn start(profile: Profile) -> Env {
        Env::start_with(profile, |o| o).await
    }

    /// Starts with SMTP submission on, relaying to a sink that stores each message
    /// back into this Dovecot (see `tests/send.rs`).
    pub async fn start_sending(
        profile: Profile,
        tune: impl FnOnce(DovecotOptions) -> DovecotOptions,
    ) -> Env {
        let sink = mailsync_testenv::SmtpSink::start().expect("start the SMTP sink");
        let relay = sink.port();
        let mut env = Env::start_with(profile, |o| tune(o.submission(relay))).await;
        sink.deliver_to(&env.dovecot);
        env.sink = Some(sink);
        env
    }

    /// Starts with the Dovecot options adjusted by `tune` (e.g. a localized trash).
    pub async fn start_with(
        profile: Profile,
        tune: impl FnOnce(DovecotOptions) -> DovecotOptions,
    ) -> Env {
        let idp = Idp::start().await;
        idp.add_user(USER);
        idp.add_app(CLIENT_ID, Some(CLIENT_SECRET), Some(USER));
        let dovecot = Dovecot::start(tune(DovecotOptions::new(&idp).profile(profile)))
            .await
            .expect("start dovecot");
        let dir = tempfile::tempdir().expect("temp dir");
        let env = Env {
            idp: std::sync::Arc::new(idp),
            dovecot,
            sink: None,
            dir,
            profile,
            mappings: MAPPINGS
                .iter()
                .map(|(l, r)| (l.to_string(), r.to_string()))
                .collect(),
        };
        std::fs::write(
            env.dir.path().join("work.secret"),
            format!("{CLIENT_SECRET}\n"),
        )
        .unwrap();
        std::fs::copy(env.dovecot.ca_file(), env.dir.path().join("ca.pem")).unwrap();
        env.write_config();
        env
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn mail_root(&self) -> PathBuf {
        self.dir.path().join("Mail")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn maildir(&self, local: &str) -> PathBuf {
        self.mail_root().join(local)
    }

    /// The config text for the current mappings; `extra` goes into the account table.
    pub fn config_text(&self, extra: &str) -> String {
        let d = self.dir.path();
        let mut folders = String::new();
        for (local, remote) in &self.mappings {
            folders.push_str(&format!(
                "{} = {}\n",
                toml_string(local),
                toml_string(remote)
            ));
        }
        format!(
            r#"# mailsync test config
[daemon]
state_dir = {state}
command_timeout = "20s"

{account}{extra}
[accounts.work.folders]
{folders}"#,
            state = toml_string(&d.join("state").display().to_string()),
            account = self.app_only_account("work", USER, CLIENT_ID, &d.join("Mail")),
        )
    }

    /// The table of an app-only (client credentials) account of this environment's
    /// server and identity provider, without its folders.
    pub fn app_only_account(
        &self,
        name: &str,
        email: &str,
        client_id: &str,
        maildir: &Path,
    ) -> String {
        let d = self.dir.path();
        format!(
            r#"[accounts.{name}]
provider = "custom"
email = "{email}"
client_id = "{client_id}"
flow = "client-credentials"
client_secret_file = {secret}
maildir = {mail}
imap_host = "localhost"
imap_port = {port}
tls = "implicit"
ca_file = {ca}
token_url = "{token_url}"
scopes = ["https://outlook.office365.com/.default"]
"#,
            secret = toml_string(&d.join("work.secret").display().to_string()),
            mail = toml_string(&maildir.display().to_string()),
            port = self.dovecot.imaps_port(),
            ca = toml_string(&d.join("ca.pem").display().to_string()),
            token_url = self.idp.token_url("contoso"),
        )
    }

    pub fn write_config(&self) {
        std::fs::write(self.config_path(), self.config_text("")).unwrap();
    }

    /// A `mailsync` command with this environment's config.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mailsync"));
        c.arg("--config").arg(self.config_path()).args(args);
        c.env_remove("RUST_LOG")
            .env_remove("MAILSYNC_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY");
        c.stdin(Stdio::null());
        c
    }

    /// Runs `mailsync ARGS` to completion (off the async runtime).
    pub async fn run(&self, args: &[&str]) -> Run {
        let mut c = self.command(args);
        let out = tokio::task::spawn_blocking(move || c.output().expect("run mailsync"))
            .await
            .unwrap();
        Run::from(out)
    }

    /// `mailsync sync`, which must succeed.
    pub async fn sync(&self) -> Summary {
        let run = self.run(&["sync"]).await;
        assert_eq!(run.code, 0, "sync failed:\n{run}");
        run.summary()
    }

    /// Asserts that each mapped local folder holds exactly the server folder's
    /// messages: same bytes, same flags, no extra file, no leftover in tmp/.
    pub async fn assert_in_sync(&self) {
        for (local, remote) in self.resolved_mappings().await {
            let server = self
                .dovecot
                .messages(USER, &remote)
                .await
                .expect("server messages");
            let mut expected: Vec<(Vec<u8>, String)> = server
                .iter()
                .map(|m| (m.body.clone(), maildir_letters(&m.flags)))
                .collect();
            let mut actual = local_messages(&self.maildir(&local));
            expected.sort();
            actual.sort();
            assert_eq!(
                actual.len(),
                expected.len(),
                "{}: local folder {local} has {} messages, server folder {remote} has {}",
                self.profile.name(),
                actual.len(),
                expected.len()
            );
            for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
                assert!(
                    a == e,
                    "{}: {local}: message {i} differs: local flags {:?}, server flags {:?}, local {} bytes, server {} bytes",
                    self.profile.name(),
                    a.1,
                    e.1,
                    a.0.len(),
                    e.0.len()
                );
            }
            let tmp: Vec<_> = std::fs::read_dir(self.maildir(&local).join("tmp"))
                .unwrap()
                .collect();
            assert!(tmp.is_empty(), "{local}/tmp is not empty: {tmp:?}");
        }
    }

    /// (local, server folder name in UTF-8) for the mappings, with roles resolved the
    /// way this test server lays folders out.
    pub async fn resolved_mappings(&self) -> Vec<(String, String)> {
        let folders = self.dovecot.folders(USER).await.expect("list folders");
        self.mappings
            .iter()
            .map(|(local, remote)| {
                let name = match remote.strip_prefix('@') {
                    None => remote.clone(),
                    Some("inbox") => "INBOX".to_owned(),
                    Some(role) => {
                        let attr = format!("\\{}", capitalize(role));
                        folders
                            .iter()
                            .find(|(_, attrs)| {
                                attrs.iter().any(|a| {
                                    a.eq_ignore_ascii_case(&attr)
                                        || a.eq_ignore_ascii_case(&format!("Extension(\"{attr}\")"))
                                        || a.to_ascii_lowercase().contains(role)
                                })
                            })
                            .map(|(n, _)| n.clone())
                            .unwrap_or_else(|| panic!("no folder with role {role} in {folders:?}"))
                    }
                };
                (local.clone(), name)
            })
            .collect()
    }

    /// Bytes the server sent to mailsync's IMAP sessions (the OAuth logins, not the
    /// harness's PLAIN ones), from Dovecot's logout lines (`out=N`), over the sessions
    /// that logged in after line `since_line` of its log.
    pub fn server_bytes_out(&self, since_line: usize) -> u64 {
        self.session_counter(since_line, "out=")
    }

    /// Bytes mailsync's IMAP sessions sent the server (`in=N`).
    pub fn server_bytes_in(&self, since_line: usize) -> u64 {
        self.session_counter(since_line, "in=")
    }

    /// Messages whose body the server sent to mailsync's sessions (`body_count=N`).
    pub fn server_bodies_sent(&self, since_line: usize) -> u64 {
        self.session_counter(since_line, "body_count=")
    }

    /// Messages whose body the server sent, per mailsync session (in login order).
    pub fn server_bodies_per_session(&self, since_line: usize) -> Vec<u64> {
        self.session_counts(since_line, "body_count=")
    }

    fn session_counter(&self, since_line: usize, key: &str) -> u64 {
        self.session_counts(since_line, key).iter().sum()
    }

    /// The number after `key` in each session's logout line, per OAuth session since
    /// line `since_line`.
    fn session_counts(&self, since_line: usize, key: &str) -> Vec<u64> {
        // Dovecot writes a session's logout line just after the client has gone: read
        // the log again until every OAuth session since the mark has its line with
        // `key`. A session still without one at the deadline fails the test: a sum
        // over some of the sessions proves nothing.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let (log, sessions) = loop {
            let log = self.dovecot.log();
            let sessions = oauth_sessions(&log, since_line);
            let lines: Vec<&str> = log.lines().skip(since_line).collect();
            let missing: Vec<&String> = sessions
                .iter()
                .filter(|s| {
                    !lines
                        .iter()
                        .any(|l| l.contains(key) && l.contains(s.as_str()))
                })
                .collect();
            if missing.is_empty() {
                break (log, sessions);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sessions {missing:?} have no `{key}` logout line in the Dovecot log"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let lines: Vec<&str> = log.lines().skip(since_line).collect();
        sessions
            .iter()
            .map(|s| {
                let line = lines
                    .iter()
                    .find(|l| l.contains(key) && l.contains(s.as_str()))
                    .expect("checked above");
                line.split(key)
                    .nth(1)
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no number after `{key}` in {line}"))
            })
            .collect()
    }

    pub fn log_lines(&self) -> usize {
        self.dovecot.log().lines().count()
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// (bytes, flag letters) of every message file in a Maildir folder (cur/ and new/).
pub fn local_messages(dir: &Path) -> Vec<(Vec<u8>, String)> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let letters = name
                .split_once(":2,")
                .map(|(_, f)| f.to_owned())
                .unwrap_or_default();
            let mut letters: Vec<char> = letters.chars().collect();
            letters.sort_unstable();
            out.push((
                std::fs::read(e.path()).unwrap(),
                letters.into_iter().collect(),
            ));
        }
    }
    out
}

/// A finished `mailsync` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Per-folder counts from the summary `sync` prints.
#[derive(Debug, Default)]
pub struct Summary {
    pub folders: BTreeMap<String, Counts>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub fetched: u64,
    pub flag_updates: u64,
    pub removed: u64,
    pub moved_in: u64,
}

impl Summary {
    pub fn total(&self) -> Counts {
        self.folders
            .values()
            .fold(Counts::default(), |a, c| Counts {
                fetched: a.fetched + c.fetched,
                flag_updates: a.flag_updates + c.flag_updates,
                removed: a.removed + c.removed,
                moved_in: a.moved_in + c.moved_in,
            })
    }
    pub fn folder(&self, local: &str) -> Counts {
        self.folders.get(local).copied().unwrap_or_default()
    }
}

impl Run {
    /// Parses lines like `work/Inbox: fetched 3, flag updates 1, removed 0, moved in 0, 1.2 kB`.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for line in self.stdout.lines() {
            let Some((head, rest)) = line.split_once(": fetched ") else {
                continue;
            };
            let Some((_, local)) = head.split_once('/') else {
                continue;
            };
            let num = |key: &str| -> u64 {
                rest.split(", ")
                    .find_map(|part| part.strip_prefix(key))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            let fetched = rest
                .split(',')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            s.folders.insert(
                local.to_owned(),
                Counts {
                    fetched,
                    flag_updates: num("flag updates "),
                    removed: num("removed "),
                    moved_in: num("moved in "),
                },
            );
        }
        s
    }
}

/// The login lines of mailsync's sessions (OAuth, not the harness's PLAIN ones) in
/// Dovecot's `log` after line `since_line`.
pub fn oauth_logins(log: &str, since_line: usize) -> impl Iterator<Item = &str> {
    log.lines().skip(since_line).filter(|l| {
        l.contains("Login: ") && (l.contains("method=XOAUTH2") || l.contains("method=OAUTHBEARER"))
    })
}

/// The `<session>` ids of mailsync's logins in `log` after line `since_line`.
fn oauth_sessions(log: &str, since_line: usize) -> Vec<String> {
    oauth_logins(log, since_line)
        .filter_map(|l| l.split("session=<").nth(1))
        .filter_map(|rest| rest.split('>').next())
        .map(|id| format!("<{id}>"))
        .collect()
}
