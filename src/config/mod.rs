//! The config file: TOML → a validated [`Config`], every default filled in, every
//! error one line naming the file, line and key. Folder mapping rules are in [`roles`].
//!
//! Parsing happens twice over the same text: serde reads the values into the `raw`
//! structs, and [`source`] keeps the document's spans so that checks made after serde
//! (ranges, durations, rules between keys) can still point at a line.

pub mod edit;
mod modes;
mod raw;
pub mod roles;
mod source;

pub use modes::{Delete, Direction, Flow, MassDelete, Tls};
pub use roles::{RemoteFolder, RemoteSpec, ResolveError, Role, resolve};

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::imap::utf7;
use raw::{RawAccount, RawConfig, RawDaemon, RawDuration};
use source::{Source, dotted, explain};

/// The delegated scope Microsoft 365 wants for SMTP AUTH, in the default scopes.
pub const SMTP_SEND: &str = "https://outlook.office.com/SMTP.Send";

/// A loaded and validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from, for messages and for rewriting it.
    pub path: PathBuf,
    pub daemon: Daemon,
    pub accounts: BTreeMap<String, Account>,
}

impl Config {
    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.get(name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    /// SQLite state and the default mail root.
    pub state_dir: PathBuf,
    /// How often folders without IDLE are checked.
    pub poll_interval: Duration,
    /// IDLE on the Inbox mapping.
    pub idle: bool,
    /// IDLE is re-issued after this long (RFC 2177: servers may drop it after 30 min).
    pub idle_timeout: Duration,
    /// Connections per account.
    pub max_connections: u32,
    /// Time allowed for one IMAP command.
    pub command_timeout: Duration,
    /// Messages per FETCH batch.
    pub batch_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The key in `[accounts.NAME]`.
    pub name: String,
    pub provider: Provider,
    pub email: String,
    /// The XOAUTH2 user; the email unless set.
    pub login_user: String,
    /// Always set after validation: every provider needs an app registration.
    pub client_id: Option<String>,
    pub flow: Flow,
    /// An absolute path, or a bare name that is a systemd credential (see
    /// [`Account::client_secret_path`]).
    pub client_secret_file: Option<PathBuf>,
    /// The account's Maildir root; each mapping is a folder below it.
    pub maildir: PathBuf,
    /// Whether local changes reach the server.
    pub direction: Direction,
    /// What a local deletion does on the server (two-way only).
    pub delete: Delete,
    /// How much one pass may delete or move away from a server folder (two-way only).
    pub mass_delete: MassDelete,
    pub imap: ImapEndpoint,
    /// Where `mailsync send` submits mail; `None` for a custom server without
    /// `smtp_host` (it does not send).
    pub smtp: Option<SmtpEndpoint>,
    /// The copy of sent mail in the Sent folder (`save_sent`).
    pub save_sent: SentCopy,
    pub oauth: OAuthEndpoints,
    /// In the order of the file.
    pub folders: Vec<Mapping>,
}

impl Account {
    /// Where to read the client secret now: a bare name is looked up in systemd's
    /// `$CREDENTIALS_DIRECTORY` (LoadCredential=), which exists only in the service.
    pub fn client_secret_path(&self) -> Option<PathBuf> {
        let file = self.client_secret_file.as_ref()?;
        if file.is_absolute() {
            return Some(file.clone());
        }
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_default();
        Some(dir.join(file))
    }

    /// The Maildir folder of a mapping: `<maildir>/<local name>`.
    pub fn folder_path(&self, mapping: &Mapping) -> PathBuf {
        self.maildir.join(&mapping.local)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    /// `tenant` is a domain, a GUID, or `organizations`.
    Microsoft {
        tenant: String,
    },
    Google,
    Custom,
}

impl Provider {
    pub fn as_str(&self) -> &'static str {
        match self {
            Provider::Microsoft { .. } => "microsoft",
            Provider::Google => "google",
            Provider::Custom => "custom",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImapEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    /// Extra CA certificate(s) to trust, PEM.
    pub ca_file: Option<PathBuf>,
}

impl ImapEndpoint {
    /// The server runs on this machine (`localhost` or a loopback address).
    pub fn is_local(&self) -> bool {
        is_loopback(&self.host)
    }
}

/// The copy of a sent message in the Sent folder (`save_sent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SentCopy {
    /// None is made, nor looked for (`false`).
    Off,
    /// The server files one itself, as Microsoft 365 and Gmail do (`"server"`): mailsync
    /// makes none, and looks in the `\Sent` folder, by Message-ID, for a message a crash
    /// left in doubt before sending it again.
    ByServer,
    /// mailsync appends one to this folder (`"@sent"`, a folder name, or `true`).
    Append(RemoteSpec),
}

/// The SMTP submission server (`smtp_host`, `smtp_port`, `smtp_tls`; `ca_file` is
/// shared with IMAP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthEndpoints {
    pub token_url: String,
    pub device_url: Option<String>,
    pub authorize_url: Option<String>,
    pub scopes: Vec<String>,
}

/// One line of `[accounts.NAME.folders]`: a local folder and the remote one it mirrors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// A single path component under the account's Maildir.
    pub local: String,
    pub remote: RemoteSpec,
    /// Where the mapping is written, for errors found later (folder not on server).
    pub line: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config: {error}{}", path.display(), read_hint(error))]
    Read { path: PathBuf, error: io::Error },
    #[error("{}:{line}: {}{message}", path.display(), key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: usize,
        /// The dotted key path, e.g. `accounts.work.folders.Archive`.
        key: Option<String>,
        message: String,
    },
}

fn read_hint(error: &io::Error) -> &'static str {
    if error.kind() == io::ErrorKind::NotFound {
        " (`mailsync connect` creates it; or pass --config PATH)"
    } else {
        ""
    }
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, path)
}

/// Validates config text; `path` is used for messages and kept in [`Config::path`].
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_in(text, path, &Env::from_process())
}

/// The config file to use without `--config`: `$MAILSYNC_CONFIG`, then
/// `/etc/mailsync/config.toml` for root, else `$XDG_CONFIG_HOME/mailsync/config.toml`
/// (`~/.config/mailsync/config.toml`).
pub fn default_path() -> PathBuf {
    Env::from_process().default_config_path()
}

/// What the defaults depend on, read once so tests can supply their own.
#[derive(Clone, Debug, Default)]
struct Env {
    root: bool,
    home: Option<PathBuf>,
    xdg_state_home: Option<PathBuf>,
    xdg_config_home: Option<PathBuf>,
    mailsync_config: Option<PathBuf>,
    /// systemd's `StateDirectory=` (the first one, if several).
    state_directory: Option<PathBuf>,
}

impl Env {
    fn from_process() -> Env {
        // The XDG spec says relative values are to be ignored.
        let abs = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        Env {
            root: effective_uid() == Some(0),
            home: abs("HOME"),
            xdg_state_home: abs("XDG_STATE_HOME"),
            xdg_config_home: abs("XDG_CONFIG_HOME"),
            mailsync_config: std::env::var_os("MAILSYNC_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            state_directory: std::env::var("STATE_DIRECTORY")
                .ok()
                .and_then(|v| v.split(':').next().map(PathBuf::from))
                .filter(|p| p.is_absolute()),
        }
    }

    fn default_config_path(&self) -> PathBuf {
        if let Some(p) = &self.mailsync_config {
            return p.clone();
        }
        let user = self
            .xdg_config_home
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".config")));
        match user {
            Some(dir) if !self.root => dir.join("mailsync/config.toml"),
            _ => PathBuf::from("/etc/mailsync/config.toml"),
        }
    }

    fn default_state_dir(&self) -> Option<PathBuf> {
        // Under systemd with StateDirectory=, that is the place, whoever we run as.
        if let Some(d) = &self.state_directory {
            return Some(d.clone());
        }
        if self.root {
            return Some(PathBuf::from("/var/lib/mailsync"));
        }
        let base = self
            .xdg_state_home
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".local/state")))?;
        Some(base.join("mailsync"))
    }
}

/// The effective UID from `/proc/self/status`, without unsafe code or libc.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

const DEFAULT_POLL: Duration = Duration::from_secs(5 * 60);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(25 * 60);
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(29 * 60);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const MICROSOFT_DEFAULT_TENANT: &str = "organizations";

/// Collects semantic errors with their lines; the first in the file is reported.
struct Checker<'a> {
    path: &'a Path,
    source: &'a Source<'a>,
    env: &'a Env,
    errors: Vec<(usize, String, String)>,
}

impl Checker<'_> {
    fn error(&mut self, key: &[&str], message: impl Into<String>) {
        let line = self.source.line_of(key);
        self.errors.push((line, dotted(key), message.into()));
    }

    fn into_result<T>(self, value: T) -> Result<T, ConfigError> {
        match self.errors.into_iter().min_by_key(|(line, _, _)| *line) {
            None => Ok(value),
            Some((line, key, message)) => Err(ConfigError::Invalid {
                path: self.path.to_path_buf(),
                line,
                key: Some(key),
                message,
            }),
        }
    }

    /// `~/` expanded; anything else must be absolute, as the daemon's working
    /// directory is no place to resolve paths against.
    fn path(&mut self, key: &[&str], value: &str) -> Option<PathBuf> {
        let expanded = match value.strip_prefix("~/") {
            Some(rest) => match &self.env.home {
                Some(home) => home.join(rest),
                None => {
                    self.error(
                        key,
                        "cannot expand \"~\": $HOME is not set; write the full path",
                    );
                    return None;
                }
            },
            None => PathBuf::from(value),
        };
        if !expanded.is_absolute() {
            self.error(
                key,
                format!("{value:?} is not an absolute path (write it from /, or start it with ~/)"),
            );
            return None;
        }
        Some(expanded)
    }

    fn duration(
        &mut self,
        key: &[&str],
        value: Option<&RawDuration>,
        default: Duration,
    ) -> Duration {
        let Some(RawDuration(text)) = value else {
            return default;
        };
        match humantime::parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) => d,
            Ok(_) => {
                self.error(key, format!("{text:?} is too short (use at least 1s)"));
                default
            }
            Err(e) => {
                self.error(
                    key,
                    format!(
                        "invalid duration {text:?}: {e} (write e.g. \"90s\", \"5m\" or \"1h 30m\")"
                    ),
                );
                default
            }
        }
    }

    fn int_in(&mut self, key: &[&str], value: Option<i64>, default: u32, lo: u32, hi: u32) -> u32 {
        match value {
            None => default,
            Some(v) => match u32::try_from(v) {
                Ok(v) if (lo..=hi).contains(&v) => v,
                _ => {
                    self.error(key, format!("{v} is out of range (use {lo} to {hi})"));
                    default
                }
            },
        }
    }
}

fn parse_in(text: &str, path: &Path, env: &Env) -> Result<Config, ConfigError> {
    let invalid = |line: usize, key: Option<String>, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key,
        message,
    };
    let source = match Source::parse(text) {
        Ok(s) => s,
        Err(e) => {
            let line = e.span().map_or(1, |s| line_at(text, s.start));
            let message = e.message().trim().replace('\n', "; ");
            return Err(invalid(line, None, format!("invalid TOML: {message}")));
        }
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let explained = explain(e.message());
            let (line, mut key) = match e.span() {
                Some(span) => (source.line(span.start), source.path_at(&span)),
                None => (1, Vec::new()),
            };
            if explained.unknown_key.is_some() && key.last() == explained.unknown_key.as_ref() {
                key.pop();
            }
            let key = (!key.is_empty()).then(|| dotted(&key));
            return Err(invalid(line, key, explained.message));
        }
    };
    let mut check = Checker {
        path,
        source: &source,
        env,
        errors: Vec::new(),
    };
    let daemon = daemon(&mut check, &raw.daemon);
    let mut accounts = BTreeMap::new();
    for (name, raw) in &raw.accounts {
        if let Some(account) = account(&mut check, &daemon, name, raw) {
            accounts.insert(name.clone(), account);
        }
    }
    let mut seen: BTreeMap<&Path, &str> = BTreeMap::new();
    let mut clashes = Vec::new();
    for a in accounts.values() {
        if let Some(other) = seen.insert(&a.maildir, &a.name) {
            clashes.push((a.name.clone(), other.to_owned(), a.maildir.clone()));
        }
    }
    for (name, other, dir) in clashes {
        check.error(
            &["accounts", &name, "maildir"],
            format!(
                "{} is also account {other:?}'s maildir; give each account its own",
                dir.display()
            ),
        );
    }
    check.into_result(Config {
        path: path.to_path_buf(),
        daemon,
        accounts,
    })
}

fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn daemon(check: &mut Checker<'_>, raw: &RawDaemon) -> Daemon {
    let key = |k: &'static str| ["daemon", k];
    let state_dir = match &raw.state_dir {
        Some(dir) => check.path(&key("state_dir"), dir),
        None => {
            let dir = check.env.default_state_dir();
            if dir.is_none() {
                check.error(
                    &key("state_dir"),
                    "no default without $HOME or $XDG_STATE_HOME; set state_dir",
                );
            }
            dir
        }
    }
    .unwrap_or_default();
    let idle_timeout = check.duration(
        &key("idle_timeout"),
        raw.idle_timeout.as_ref(),
        DEFAULT_IDLE_TIMEOUT,
    );
    if idle_timeout > MAX_IDLE_TIMEOUT {
        check.error(
            &key("idle_timeout"),
            "longer than 29m: servers may end an IDLE after 30 minutes (RFC 2177)",
        );
    }
    Daemon {
        state_dir,
        poll_interval: check.duration(
            &key("poll_interval"),
            raw.poll_interval.as_ref(),
            DEFAULT_POLL,
        ),
        idle: raw.idle.unwrap_or(true),
        idle_timeout,
        max_connections: check.int_in(&key("max_connections"), raw.max_connections, 4, 1, 32),
        command_timeout: check.duration(
            &key("command_timeout"),
            raw.command_timeout.as_ref(),
            DEFAULT_COMMAND_TIMEOUT,
        ),
        batch_size: check.int_in(&key("batch_size"), raw.batch_size, 200, 1, 10_000),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Microsoft,
    Google,
    Custom,
}

fn account(
    check: &mut Checker<'_>,
    daemon: &Daemon,
    name: &str,
    raw: &RawAccount,
) -> Option<Account> {
    let errors_before = check.errors.len();
    let key = |k: &'static str| -> [&str; 3] { ["accounts", name, k] };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        check.error(
            &["accounts", name],
            format!("account name {name:?} may use only letters, digits, \"_\" and \"-\""),
        );
    }
    let kind = match raw.provider {
        raw::ProviderKind::Microsoft => Kind::Microsoft,
        raw::ProviderKind::Google => Kind::Google,
        raw::ProviderKind::Custom => Kind::Custom,
    };
    let flow = raw.flow.unwrap_or(Flow::Device);

    let email = raw.email.trim().to_owned();
    if !is_email(&email) {
        check.error(
            &key("email"),
            format!("{:?} is not an email address", raw.email),
        );
    }
    let login_user = match &raw.login_user {
        Some(u) if u.trim().is_empty() => {
            check.error(
                &key("login_user"),
                "is empty (remove it to log in as the email address)",
            );
            email.clone()
        }
        Some(u) => u.trim().to_owned(),
        None => email.clone(),
    };

    let client_id = raw.client_id.as_deref().map(str::trim);
    match client_id {
        None => check.error(
            &["accounts", name],
            "missing key \"client_id\" (the application (client) ID of your app registration)",
        ),
        Some("") => check.error(&key("client_id"), "is empty"),
        Some(_) => {}
    }

    let tenant = match (kind, raw.tenant.as_deref().map(str::trim)) {
        (Kind::Microsoft, Some(t)) => {
            if t.is_empty()
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                check.error(&key("tenant"), format!("{t:?} is not a tenant (use your domain, e.g. contoso.onmicrosoft.com, or the tenant ID)"));
            } else if flow == Flow::ClientCredentials
                && ["common", "organizations", "consumers"].contains(&t)
            {
                check.error(&key("tenant"), format!("client-credentials needs your own tenant, not {t:?} (use your domain or the tenant ID)"));
            }
            t.to_owned()
        }
        (Kind::Microsoft, None) => {
            if flow == Flow::ClientCredentials {
                check.error(
                    &["accounts", name],
                    "missing key \"tenant\": client-credentials needs your tenant (domain or tenant ID)",
                );
            }
            MICROSOFT_DEFAULT_TENANT.to_owned()
        }
        (_, Some(_)) => {
            check.error(
                &key("tenant"),
                "applies only to provider = \"microsoft\" (remove it)",
            );
            String::new()
        }
        (_, None) => String::new(),
    };
    let provider = match kind {
        Kind::Microsoft => Provider::Microsoft {
            tenant: tenant.clone(),
        },
        Kind::Google => Provider::Google,
        Kind::Custom => Provider::Custom,
    };

    let client_secret_file = raw.client_secret_file.as_deref().and_then(|f| {
        // A bare name is a systemd credential; anything with a slash is a path.
        if !f.is_empty() && !f.contains('/') && f != "." && f != ".." && !f.starts_with('~') {
            Some(PathBuf::from(f))
        } else {
            check.path(&key("client_secret_file"), f)
        }
    });
    if raw.client_secret_file.is_none() {
        if flow == Flow::ClientCredentials {
            check.error(
                &["accounts", name],
                "missing key \"client_secret_file\": client-credentials signs in with the app's secret (a file only mailsync can read, or a systemd credential name)",
            );
        } else if kind == Kind::Google {
            check.error(
                &["accounts", name],
                "missing key \"client_secret_file\": Google's token endpoint wants the OAuth client's secret even for desktop apps (put it in a file)",
            );
        }
    }
    if kind == Kind::Google && flow == Flow::ClientCredentials {
        check.error(
            &key("flow"),
            "Google offers no client-credentials access to IMAP (use \"device\" or \"browser\")",
        );
    }

    let maildir = match &raw.maildir {
        Some(m) => check.path(&key("maildir"), m).unwrap_or_default(),
        None => daemon.state_dir.join("mail").join(name),
    };

    let direction = match raw.direction.as_deref() {
        None | Some("pull") => Direction::Pull,
        Some("both") => Direction::Both,
        Some(other) => {
            check.error(
                &key("direction"),
                format!("unknown value {other:?} (use pull or both)"),
            );
            Direction::Pull
        }
    };
    let delete = match raw.delete.as_deref() {
        None | Some("trash") => Delete::Trash,
        Some("expunge") => Delete::Expunge,
        Some(other) => {
            check.error(
                &key("delete"),
                format!("unknown value {other:?} (use trash or expunge)"),
            );
            Delete::Trash
        }
    };
    let defaults = MassDelete::default();
    let mass_delete = MassDelete {
        percent: check.int_in(
            &key("max_delete_percent"),
            raw.max_delete_percent,
            defaults.percent,
            0,
            100,
        ),
        count: check.int_in(
            &key("max_delete_count"),
            raw.max_delete_count,
            defaults.count,
            0,
            1_000_000,
        ),
    };

    let imap = imap_endpoint(check, name, kind, raw);
    let smtp = smtp_endpoint(check, name, kind, raw, &imap);
    let save_sent = save_sent(check, name, kind, raw);
    let oauth = oauth_endpoints(check, name, kind, flow, &tenant, raw);
    let folders = mappings(check, name, &raw.folders);

    (check.errors.len() == errors_before).then(|| Account {
        name: name.to_owned(),
        provider,
        email,
        login_user,
        client_id: client_id.map(str::to_owned),
        flow,
        client_secret_file,
        maildir,
        direction,
        delete,
        mass_delete,
        imap,
        smtp,
        save_sent,
        oauth,
        folders,
    })
}

/// Microsoft: smtp.office365.com:587 with STARTTLS; Google: smtp.gmail.com:465; a
/// custom server: none unless `smtp_host` is set, then port 587 with STARTTLS unless
/// set otherwise.
fn smtp_endpoint(
    check: &mut Checker<'_>,
    name: &str,
    kind: Kind,
    raw: &RawAccount,
    imap: &ImapEndpoint,
) -> Option<SmtpEndpoint> {
    let key = |k: &'static str| -> [&str; 3] { ["accounts", name, k] };
    let (default_host, default_tls) = match kind {
        Kind::Microsoft => ("smtp.office365.com", Tls::Starttls),
        Kind::Google => ("smtp.gmail.com", Tls::Implicit),
        Kind::Custom if raw.smtp_host.is_none() => {
            for (k, set) in [
                ("smtp_port", raw.smtp_port.is_some()),
                ("smtp_tls", raw.smtp_tls.is_some()),
                (
                    "save_sent",
                    matches!(
                        raw.save_sent,
                        Some(raw::RawSaveSent::Folder(_)) | Some(raw::RawSaveSent::Flag(true))
                    ),
                ),
            ] {
                if set {
                    check.error(
                        &key(k),
                        "needs smtp_host (the server to send through) for provider = \"custom\"",
                    );
                }
            }
            return None;
        }
        Kind::Custom => ("", Tls::Starttls),
    };
    let host = match raw.smtp_host.as_deref().map(str::trim) {
        Some(h) => {
            if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
                check.error(
                    &key("smtp_host"),
                    format!("{h:?} is not a host name or address"),
                );
            }
            h.to_owned()
        }
        None => default_host.to_owned(),
    };
    let tls = raw.smtp_tls.unwrap_or(default_tls);
    if tls == Tls::Plain && !is_loopback(&host) {
        check.error(
            &key("smtp_tls"),
            format!("\"plain\" would send the token in clear text to {host:?}; it is allowed only towards localhost or a loopback address (use \"starttls\" or \"implicit\")"),
        );
    }
    let port = match raw.smtp_port {
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => p,
            _ => {
                check.error(
                    &key("smtp_port"),
                    format!(
                        "{p} is not a port (use 1 to 65535; 587 for starttls, 465 for implicit)"
                    ),
                );
                587
            }
        },
        None if tls == Tls::Implicit => 465,
        None => 587,
    };
    Some(SmtpEndpoint {
        host,
        port,
        tls,
        ca_file: imap.ca_file.clone(),
    })
}

/// `"server"` for Microsoft 365 and Gmail, which file submitted mail in Sent
/// themselves; `"@sent"` for other servers that send.
fn save_sent(check: &mut Checker<'_>, name: &str, kind: Kind, raw: &RawAccount) -> SentCopy {
    let key = ["accounts", name, "save_sent"];
    let values = "use \"server\", \"@sent\", a folder name, or false";
    match &raw.save_sent {
        None if kind == Kind::Custom && raw.smtp_host.is_some() => {
            SentCopy::Append(RemoteSpec::Role(Role::Sent))
        }
        None if kind == Kind::Custom => SentCopy::Off,
        None => SentCopy::ByServer,
        Some(raw::RawSaveSent::Flag(false)) => SentCopy::Off,
        Some(raw::RawSaveSent::Flag(true)) => SentCopy::Append(RemoteSpec::Role(Role::Sent)),
        Some(raw::RawSaveSent::Folder(f)) => {
            let f = f.trim();
            if f == "server" {
                SentCopy::ByServer
            } else if f.starts_with('@') {
                match f.parse::<Role>() {
                    Ok(role) => SentCopy::Append(RemoteSpec::Role(role)),
                    Err(()) => {
                        check.error(&key, format!("unknown role {f:?} ({values})"));
                        SentCopy::Off
                    }
                }
            } else if f.is_empty() || f.contains(['\r', '\n', '\0']) {
                check.error(
                    &key,
                    format!("{f:?} is not a remote folder name ({values})"),
                );
                SentCopy::Off
            } else {
                SentCopy::Append(RemoteSpec::Name(f.to_owned()))
            }
        }
    }
}

fn imap_endpoint(
    check: &mut Checker<'_>,
    name: &str,
    kind: Kind,
    raw: &RawAccount,
) -> ImapEndpoint {
    let key = |k: &'static str| -> [&str; 3] { ["accounts", name, k] };
    let default_host = match kind {
        Kind::Microsoft => Some("outlook.office365.com"),
        Kind::Google => Some("imap.gmail.com"),
        Kind::Custom => None,
    };
    let host = match (raw.imap_host.as_deref().map(str::trim), default_host) {
        (Some(h), _) => {
            if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
                check.error(
                    &key("imap_host"),
                    format!("{h:?} is not a host name or address"),
                );
            }
            h.to_owned()
        }
        (None, Some(d)) => d.to_owned(),
        (None, None) => {
            check.error(
                &["accounts", name],
                "missing key \"imap_host\" (required for provider = \"custom\")",
            );
            String::new()
        }
    };
    let tls = match (raw.tls, kind) {
        (Some(t), _) => t,
        (None, Kind::Custom) => {
            check.error(
                &["accounts", name],
                "missing key \"tls\" (required for provider = \"custom\": \"implicit\" or \"starttls\")",
            );
            Tls::Implicit
        }
        (None, _) => Tls::Implicit,
    };
    if tls == Tls::Plain && !is_loopback(&host) {
        check.error(
            &key("tls"),
            format!("\"plain\" would send the token in clear text to {host:?}; it is allowed only towards localhost or a loopback address (use \"implicit\" or \"starttls\")"),
        );
    }
    let port = match (raw.imap_port, kind) {
        (Some(p), _) => match u16::try_from(p) {
            Ok(p) if p > 0 => p,
            _ => {
                check.error(
                    &key("imap_port"),
                    format!("{p} is not a port (use 1 to 65535)"),
                );
                993
            }
        },
        (None, Kind::Custom) => {
            check.error(
                &["accounts", name],
                "missing key \"imap_port\" (required for provider = \"custom\"; 993 for implicit TLS, 143 for starttls)",
            );
            993
        }
        (None, _) => 993,
    };
    let ca_file = raw
        .ca_file
        .as_deref()
        .and_then(|f| check.path(&key("ca_file"), f));
    ImapEndpoint {
        host,
        port,
        tls,
        ca_file,
    }
}

fn oauth_endpoints(
    check: &mut Checker<'_>,
    name: &str,
    kind: Kind,
    flow: Flow,
    tenant: &str,
    raw: &RawAccount,
) -> OAuthEndpoints {
    let key = |k: &'static str| -> [&str; 3] { ["accounts", name, k] };
    let ms = |path: &str| format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/{path}");
    let (token, device, authorize, scopes): (
        Option<String>,
        Option<String>,
        Option<String>,
        Vec<String>,
    ) = match kind {
        Kind::Microsoft => (
            Some(ms("token")),
            Some(ms("devicecode")),
            Some(ms("authorize")),
            if flow == Flow::ClientCredentials {
                vec!["https://outlook.office365.com/.default".into()]
            } else {
                // One token serves IMAP and SMTP: both scopes are of the same
                // resource (outlook.office.com).
                vec![
                    "https://outlook.office.com/IMAP.AccessAsUser.All".into(),
                    SMTP_SEND.into(),
                    "offline_access".into(),
                ]
            },
        ),
        Kind::Google => (
            Some("https://oauth2.googleapis.com/token".into()),
            Some("https://oauth2.googleapis.com/device/code".into()),
            Some("https://accounts.google.com/o/oauth2/v2/auth".into()),
            vec!["https://mail.google.com/".into()],
        ),
        Kind::Custom => (None, None, None, Vec::new()),
    };
    let mut url = |k: &'static str, given: &Option<String>, default: Option<String>| match given {
        Some(u) => {
            let u = u.trim();
            if let Err(why) = check_url(u) {
                check.error(&key(k), why);
            }
            Some(u.to_owned())
        }
        None => default,
    };
    let token_url = url("token_url", &raw.token_url, token);
    let device_url = url("device_url", &raw.device_url, device);
    let authorize_url = url("authorize_url", &raw.authorize_url, authorize);
    if token_url.is_none() {
        check.error(
            &["accounts", name],
            "missing key \"token_url\" (required for provider = \"custom\")",
        );
    }
    if flow == Flow::Device && device_url.is_none() {
        check.error(&["accounts", name], "missing key \"device_url\" (flow = \"device\" needs the device authorization endpoint)");
    }
    if flow == Flow::Browser && authorize_url.is_none() {
        check.error(
            &["accounts", name],
            "missing key \"authorize_url\" (flow = \"browser\" needs the authorization endpoint)",
        );
    }
    let scopes = match &raw.scopes {
        Some(s) if s.is_empty() && kind != Kind::Custom => {
            check.error(
                &key("scopes"),
                "is empty (remove it to use the provider's scopes)",
            );
            scopes
        }
        Some(s) => {
            if let Some(bad) = s
                .iter()
                .find(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                check.error(
                    &key("scopes"),
                    format!("{bad:?} is not a scope (one scope per string, no spaces)"),
                );
            }
            s.clone()
        }
        None => scopes,
    };
    OAuthEndpoints {
        token_url: token_url.unwrap_or_default(),
        device_url,
        authorize_url,
        scopes,
    }
}

fn mappings(check: &mut Checker<'_>, name: &str, raw: &BTreeMap<String, String>) -> Vec<Mapping> {
    let mut out = Vec::new();
    // The remote side normalised, so "INBOX" and "@inbox", or a name in its decoded
    // and wire forms, count as the same folder.
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    for (local, remote) in raw {
        let key = ["accounts", name, "folders", local.as_str()];
        let line = check.source.line_of(&key);
        if let Err(why) = check_local_name(local) {
            check.error(&key, why);
            continue;
        }
        let remote = remote.trim();
        let spec = if remote.starts_with('@') {
            match remote.parse::<Role>() {
                Ok(role) => RemoteSpec::Role(role),
                Err(()) => {
                    check.error(
                        &key,
                        format!(
                            "unknown role {remote:?} (use one of {})",
                            roles::role_list()
                        ),
                    );
                    continue;
                }
            }
        } else if remote.is_empty() || remote.contains(['\r', '\n', '\0']) {
            check.error(&key, format!("{remote:?} is not a remote folder name (use a name such as \"INBOX\" or a role such as \"@archive\")"));
            continue;
        } else {
            RemoteSpec::Name(remote.to_owned())
        };
        let target = match &spec {
            RemoteSpec::Role(Role::Inbox) => "INBOX".to_owned(),
            RemoteSpec::Role(r) => r.as_str().to_owned(),
            RemoteSpec::Name(n) if n.eq_ignore_ascii_case("INBOX") => "INBOX".to_owned(),
            RemoteSpec::Name(n) => utf7::decode(n).unwrap_or_else(|_| n.clone()),
        };
        out.push(Mapping {
            local: local.clone(),
            remote: spec,
            line,
        });
        if let Some(first) = targets.insert(target, local.clone()) {
            // Report the later line, pointing back at the earlier mapping.
            let (earlier, later) =
                if check.source.line_of(&["accounts", name, "folders", &first]) <= line {
                    (first, local.clone())
                } else {
                    (local.clone(), first)
                };
            check.error(
                &["accounts", name, "folders", &later],
                format!(
                    "maps to the same remote folder as {:?}; map each remote folder once",
                    earlier
                ),
            );
        }
    }
    out.sort_by(|a, b| (a.line, &a.local).cmp(&(b.line, &b.local)));
    out
}

/// A local folder becomes one directory under the account's Maildir.
fn check_local_name(local: &str) -> Result<(), String> {
    let why = if local.is_empty() {
        "a local folder name cannot be empty"
    } else if local == "." || local == ".." {
        "\".\" and \"..\" are not folder names"
    } else if local.starts_with('.') {
        "a local folder name cannot start with \".\" (hidden, and Maildir++ uses it for subfolders)"
    } else if local.contains('/') {
        "a local folder name cannot contain \"/\" (one folder level: e.g. \"Archive 2024\")"
    } else if local.chars().any(char::is_control) {
        "a local folder name cannot contain control characters"
    } else if local.len() > 255 {
        "a local folder name is limited to 255 bytes"
    } else {
        return Ok(());
    };
    Err(why.to_owned())
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((user, domain)) => {
            !user.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// `localhost` or a loopback IP, the only places plain text may go.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An https URL, or http towards loopback (a local identity provider in tests).
fn check_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL (write https://...)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.is_empty() || authority.contains('@') || url.contains(char::is_whitespace) {
        return Err(format!("{url:?} is not a URL (write https://host/path)"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(format!(
            "{url:?} must use https (http is allowed only towards localhost)"
        )),
        _ => Err(format!("{url:?} is not an https URL")),
    }
}

#[cfg(test)]
mod tests;
