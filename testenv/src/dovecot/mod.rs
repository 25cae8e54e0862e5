//! A real Dovecot (Debian's `dovecot-imapd`, 2.3) per test: its own temporary directory,
//! free loopback ports for IMAPS (implicit TLS) and IMAP (STARTTLS), TLS from a CA it
//! generates, XOAUTH2/OAUTHBEARER validated by the test IdP's `/introspect`, and a
//! master user for seeding and inspecting mail. Optionally SMTP submission too
//! (`dovecot-submissiond`), relaying to a test SMTP server.
//!
//! Process control is here; the seeding API is in `mail` and `maildir`, the submission
//! ports in `submission`.

mod admin;
mod config;
mod mail;
mod maildir;
mod messages;
mod options;
mod submission;
pub(crate) mod tls;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use admin::{TlsStream, connect_imaps, quote_mailbox};
pub use config::MASTER_USER;
pub use messages::{MoveMode, SeedMessage, ServerMessage, maildir_letters};
pub use options::{DovecotOptions, EXCHANGE_CAPABILITIES, MailboxSpec, Profile, default_mailboxes};

use config::MailUser;
use submission::Submission;

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// How long to wait for Dovecot to greet after starting.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running test Dovecot. Dropping it stops the server and removes its directory (set
/// `MAILSYNC_TESTENV_KEEP=1` to keep the directory for debugging).
#[derive(Debug)]
pub struct Dovecot {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    options: DovecotOptions,
    instance: String,
    imap_port: u16,
    imaps_port: u16,
    admin_password: String,
    mail_user: MailUser,
    mail_ids: (u32, u32),
    submission: Option<Submission>,
    running: bool,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where instance directories go: `$MAILSYNC_TESTENV_TMPDIR`, else `/dev/shm` when it
/// has at least 2 GiB free (tmpfs makes seeding several times faster), else the system
/// temp dir.
fn parent_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MAILSYNC_TESTENV_TMPDIR") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("df")
        .args(["--output=avail", "-B1", "/dev/shm"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (out.status.success() && avail >= 2 << 30).then(|| PathBuf::from("/dev/shm"))
}

fn id(args: &[&str]) -> Result<String> {
    let out = Command::new("id").args(args).output().context("run id")?;
    if !out.status.success() {
        bail!("id {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Dovecot {
    /// Starts a Dovecot with `options` (blocking work runs off the async runtime).
    pub async fn start(options: DovecotOptions) -> Result<Dovecot> {
        tokio::task::spawn_blocking(move || Self::start_blocking(options)).await?
    }

    /// Starts a Dovecot with `options`, blocking until it greets.
    pub fn start_blocking(options: DovecotOptions) -> Result<Dovecot> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("mailsync-dovecot-");
        let dir = match parent_dir() {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .context("create temp dir")?;
        let path = dir.path().to_path_buf();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        let root = fs::metadata(&path)?.uid() == 0;
        let mail_user = if root {
            MailUser {
                user: "nobody".into(),
                group: id(&["-gn", "nobody"]).unwrap_or_else(|_| "nogroup".into()),
                root,
            }
        } else {
            MailUser {
                user: id(&["-un"])?,
                group: id(&["-gn"])?,
                root,
            }
        };
        let mail_ids = (
            id(&["-u", &mail_user.user])?.parse()?,
            id(&["-g", &mail_user.user])?.parse()?,
        );
        let home = path.join("home");
        fs::create_dir(&home)?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755))?;
        if root {
            std::os::unix::fs::chown(&home, Some(mail_ids.0), Some(mail_ids.1))?;
        }
        tls::write_tls_files(&path)?;
        let admin_password = crate::random::token(18);
        fs::write(
            path.join("oauth2.conf"),
            config::oauth2_args(&options.introspection_url),
        )?;
        fs::write(
            path.join("master-users"),
            config::master_users(&admin_password),
        )?;
        let n = INSTANCES.fetch_add(1, Ordering::SeqCst);
        let mut dovecot = Dovecot {
            dir: Some(dir),
            path,
            options,
            instance: format!("mailsync-test-{}-{n}", std::process::id()),
            imap_port: 0,
            imaps_port: 0,
            admin_password,
            mail_user,
            mail_ids,
            submission: None,
            running: false,
        };
        let mut last_err = None;
        for _ in 0..5 {
            dovecot.imap_port = free_port()?;
            dovecot.imaps_port = free_port()?;
            let mut ports = vec![dovecot.imap_port, dovecot.imaps_port];
            if dovecot.options.submission_relay_port.is_some() {
                let s = Submission {
                    port: free_port()?,
                    dovecot_port: free_port()?,
                    tls_port: free_port()?,
                    forwarder: None,
                };
                ports.extend([s.port, s.dovecot_port, s.tls_port]);
                dovecot.submission = Some(s);
            }
            let chosen = ports.len();
            ports.sort_unstable();
            ports.dedup();
            if ports.len() < chosen {
                continue;
            }
            dovecot.write_config()?;
            match dovecot.launch().and_then(|_| dovecot.wait_ready_blocking()) {
                Ok(()) => return Ok(dovecot),
                Err(e) => {
                    dovecot.stop_blocking();
                    let in_use = dovecot.log().contains("Address already in use")
                        || format!("{e:#}").contains("Address already in use");
                    last_err = Some(e);
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last_err
            .unwrap()
            .context(format!("start Dovecot; log:\n{}", dovecot.log())))
    }

    fn write_config(&self) -> Result<()> {
        let text = config::render(&config::Instance {
            dir: &self.path,
            name: &self.instance,
            imap_port: self.imap_port,
            imaps_port: self.imaps_port,
            mail_user: &self.mail_user,
            options: &self.options,
            submission: self
                .submission
                .as_ref()
                .map(|s| (s.dovecot_port, s.tls_port)),
        });
        fs::write(self.config_path(), text)?;
        Ok(())
    }

    fn launch(&mut self) -> Result<()> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("dovecot.stdout"))?;
        let status = Command::new("dovecot")
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .context("run dovecot (is dovecot-imapd installed?)")?;
        if !status.success() {
            let output = fs::read_to_string(self.path.join("dovecot.stdout")).unwrap_or_default();
            bail!("dovecot -c exited with {status}: {output}");
        }
        self.running = true;
        if let Some(s) = &mut self.submission {
            s.start_forwarder()?;
        }
        Ok(())
    }

    /// Whether the IMAP port answers with Dovecot's real greeting (auth is up), and the
    /// plain submission port with its 220.
    fn probe(&self) -> bool {
        self.probe_imap() && self.submission.as_ref().is_none_or(Submission::probe)
    }

    fn probe_imap(&self) -> bool {
        let Ok(s) = TcpStream::connect(("127.0.0.1", self.imap_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut r = BufReader::new(s);
        let mut line = String::new();
        for _ in 0..3 {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            if line.starts_with("* OK") && line.contains("ready") {
                return true;
            }
        }
        false
    }

    fn wait_ready_blocking(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.probe() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "Dovecot did not greet on port {} within {START_TIMEOUT:?}",
            self.imap_port
        )
    }

    fn master_pid(&self) -> Option<u32> {
        fs::read_to_string(self.path.join("run/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops Dovecot and waits until its master process is gone.
    pub fn stop_blocking(&mut self) {
        if let Some(s) = &mut self.submission {
            s.stop_forwarder();
        }
        if !self.running {
            return;
        }
        let pid = self.master_pid();
        let _ = self.doveadm(&["stop"]);
        if let Some(pid) = pid {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while proc.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if proc.exists() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        self.running = false;
    }

    /// Stops Dovecot (existing connections are dropped).
    pub async fn stop(&mut self) {
        if let Some(s) = &mut self.submission {
            s.stop_forwarder();
        }
        if !self.running {
            return;
        }
        let pid = self.master_pid();
        let _ = self.doveadm(&["stop"]);
        if let Some(pid) = pid {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while proc.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if proc.exists() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        self.running = false;
    }

    /// Starts Dovecot again after [`Dovecot::stop`], same ports and mail.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.running {
            return Ok(());
        }
        self.launch()?;
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.probe() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("Dovecot did not come back on port {}", self.imap_port)
    }

    /// Stops and starts Dovecot (same ports, same mail); all connections drop.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.start_again().await
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Runs `doveadm -c CONF ARGS…`, failing with its stderr unless it succeeds.
    pub fn doveadm(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("doveadm")
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run doveadm")?;
        if !out.status.success() {
            bail!(
                "doveadm {}: {} {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Users with live IMAP connections (`doveadm who`). Fails if doveadm does, so
    /// that "nobody is connected" can never be read from a failed command.
    pub fn who(&self) -> Result<Vec<String>> {
        let out = self.doveadm(&["who"])?;
        let mut users: Vec<String> = out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// What each of this server's IMAP sessions is doing, from the process titles
    /// Dovecot sets (`verbose_proctitle`): `[user ip COMMAND]`, e.g.
    /// `[jane@example.com 127.0.0.1 IDLE]`. Read from /proc, so it is the server's own
    /// view of the session, not the client's.
    pub fn session_titles(&self) -> Vec<String> {
        let Some(master) = self.master_pid() else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut titles = Vec::new();
        for e in entries.flatten() {
            let dir = e.path();
            let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
                continue;
            };
            // pid (comm) state ppid …: comm may hold spaces, so split after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid != Some(master) {
                continue;
            }
            let Ok(cmdline) = fs::read(dir.join("cmdline")) else {
                continue;
            };
            let title = String::from_utf8_lossy(&cmdline)
                .trim_end_matches('\0')
                .replace('\0', " ");
            // `INSTANCE/imap [user ip COMMAND]`; not imap-login's.
            if let Some((_, rest)) = title.split_once("/imap [") {
                titles.push(format!("[{}", rest.trim()));
            }
        }
        titles
    }

    /// Disconnects every IMAP connection of `user` (`doveadm kick`).
    pub fn kick(&self, user: &str) -> Result<()> {
        self.doveadm(&["kick", user]).map(|_| ())
    }

    /// The IMAPS (implicit TLS) port on 127.0.0.1.
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }

    /// The IMAP (STARTTLS) port on 127.0.0.1.
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// The SMTP submission port on 127.0.0.1, like 587: plain, STARTTLS before AUTH
    /// (EHLO offers no AUTH before it; AUTH gets `530 5.7.0 TLS required.`). `None`
    /// unless started with [`DovecotOptions::submission`].
    pub fn submission_port(&self) -> Option<u16> {
        self.submission.as_ref().map(|s| s.port)
    }

    /// The SMTP submission port with implicit TLS on 127.0.0.1, like 465. `None` unless
    /// started with [`DovecotOptions::submission`].
    pub fn submissions_port(&self) -> Option<u16> {
        self.submission.as_ref().map(|s| s.tls_port)
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.path.join("ca.pem")
    }

    /// The CA certificate's PEM bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        fs::read(self.ca_file()).unwrap_or_default()
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// `dovecot.conf`.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("dovecot.conf")
    }

    /// The profile it runs.
    pub fn profile(&self) -> Profile {
        self.options.profile
    }

    /// The options it was started with.
    pub fn options(&self) -> &DovecotOptions {
        &self.options
    }

    /// The Dovecot log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path.join("dovecot.log")).unwrap_or_default()
    }

    /// The master user's password (log in as `USER*admin`).
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// A fresh IMAPS connection, greeting read, not logged in.
    pub async fn connect_imaps(&self) -> Result<async_imap::Client<TlsStream>> {
        connect_imaps(self.imaps_port, &self.ca_pem()).await
    }

    /// Logs in as `user` with XOAUTH2 and `token`.
    pub async fn login_xoauth2(
        &self,
        user: &str,
        token: &str,
    ) -> Result<async_imap::Session<TlsStream>> {
        let client = self.connect_imaps().await?;
        client
            .authenticate("XOAUTH2", crate::XOAuth2::new(user, token))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("XOAUTH2 login as {user}: {e}"))
    }

    /// The capabilities advertised before login: on the IMAPS port (`tls = true`) or on
    /// the plain port before STARTTLS.
    pub async fn capabilities_before_login(&self, tls: bool) -> Result<Vec<String>> {
        if tls {
            admin::capabilities_before_login_tls(self.imaps_port, &self.ca_pem()).await
        } else {
            admin::capabilities_before_login_plain(self.imap_port).await
        }
    }

    /// The capabilities advertised after an XOAUTH2 login as `user` with `token`.
    pub async fn capabilities_after_login(&self, user: &str, token: &str) -> Result<Vec<String>> {
        let mut session = self.login_xoauth2(user, token).await?;
        session.run_command_and_check_ok("NOOP").await?;
        let id = session.run_command("CAPABILITY").await?;
        let mut caps = Vec::new();
        loop {
            let resp = session
                .read_response()
                .await?
                .ok_or_else(|| anyhow::anyhow!("connection closed during CAPABILITY"))?;
            match resp.parsed() {
                async_imap::imap_proto::Response::Capabilities(list) => {
                    caps = list.iter().map(capability_text).collect();
                }
                async_imap::imap_proto::Response::Done { tag, .. } if *tag == id => break,
                _ => {}
            }
        }
        session.logout().await?;
        Ok(caps)
    }

    pub(crate) async fn admin(&self, user: &str) -> Result<admin::Admin> {
        admin::Admin::login(self.imaps_port, &self.ca_pem(), user, &self.admin_password).await
    }
}

fn capability_text(c: &async_imap::imap_proto::Capability<'_>) -> String {
    use async_imap::imap_proto::Capability;
    match c {
        Capability::Imap4rev1 => "IMAP4rev1".to_string(),
        Capability::Auth(m) => format!("AUTH={m}"),
        Capability::Atom(a) => a.to_string(),
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop_blocking();
        if std::env::var_os("MAILSYNC_TESTENV_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "mailsync-testenv: kept Dovecot directory {}",
                kept.display()
            );
        }
    }
}
