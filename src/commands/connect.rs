//! `mailsync connect`: runs the OAuth flow, proves the token by logging in to IMAP and
//! listing folders, stores the tokens (encrypted), and writes the account's settings
//! and default mappings into the config file, keeping everything else in it as it
//! was. Re-running it refreshes the tokens and keeps the user's mappings.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::{CommandError, Exit};
use crate::auth::crypto::TokenKey;
use crate::auth::{AuthError, Grant, flows, read_secret};
use crate::config::edit::{self, AccountSettings};
use crate::config::roles::{self, RemoteSpec, Role};
use crate::config::{self, Account, Config, Flow};
use crate::imap::{self, ImapError};
use crate::state::{State, StoredGrant};
use crate::sync::SyncError;
use crate::sync::login::refused;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The account's name in the config (default: the part of --email before the @)
    pub account: Option<String>,
    /// The mailbox address (required for a new account)
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long, value_enum)]
    pub provider: Option<ProviderArg>,
    /// Microsoft tenant: domain or ID
    #[arg(long)]
    pub tenant: Option<String>,
    /// The app registration's Application (client) ID
    #[arg(long)]
    pub client_id: Option<String>,
    #[arg(long, value_enum)]
    pub flow: Option<FlowArg>,
    /// Client credentials: file holding the client secret (never the secret itself)
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,
    /// The account's Maildir root
    #[arg(long, value_name = "PATH")]
    pub maildir: Option<PathBuf>,
    /// Custom provider: IMAP host
    #[arg(long)]
    pub imap_host: Option<String>,
    #[arg(long)]
    pub imap_port: Option<u16>,
    #[arg(long, value_enum)]
    pub tls: Option<TlsArg>,
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    #[arg(long)]
    pub token_url: Option<String>,
    #[arg(long)]
    pub device_url: Option<String>,
    #[arg(long)]
    pub authorize_url: Option<String>,
    /// OAuth scope (repeat for several)
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// The SMTP server `mailsync send` submits to (a custom provider sends only once
    /// it is set)
    #[arg(long)]
    pub smtp_host: Option<String>,
    #[arg(long)]
    pub smtp_port: Option<u16>,
    #[arg(long, value_enum)]
    pub smtp_tls: Option<TlsArg>,
    /// Browser flow: print the URL only, do not launch a browser
    #[arg(long)]
    pub no_browser: bool,
}

impl TlsArg {
    fn as_str(self) -> &'static str {
        match self {
            TlsArg::Implicit => "implicit",
            TlsArg::Starttls => "starttls",
            TlsArg::Plain => "plain",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProviderArg {
    Microsoft,
    Google,
    Custom,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FlowArg {
    Device,
    Browser,
    ClientCredentials,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TlsArg {
    Implicit,
    Starttls,
    Plain,
}

/// The mappings a new account gets, kept only where they resolve on the server.
const DEFAULT_MAPPINGS: &[(&str, &str)] = &[
    ("Inbox", "INBOX"),
    ("Archive", "@archive"),
    ("Deleted Items", "@trash"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Edit(#[from] edit::EditError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("token store: {0}")]
    Store(String),
}

pub async fn run(path: &Path, args: &ConnectArgs) -> Result<Exit, CommandError> {
    let mut out = std::io::stdout();
    match connect(path, args, &mut out).await {
        Ok(()) => Ok(Exit::Ok),
        Err(e) => {
            eprintln!("mailsync: {e}");
            Ok(Exit::Fatal)
        }
    }
}

async fn connect(
    path: &Path,
    args: &ConnectArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), ConnectError> {
    let existing_text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(ConnectError::Usage(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let existing = if existing_text.trim().is_empty() {
        None
    } else {
        Some(config::parse(&existing_text, path)?)
    };
    let name = account_name(args, existing.as_ref())?;
    let known = existing.as_ref().and_then(|c| c.accounts.get(&name));
    if known.is_none() && args.email.is_none() {
        return Err(ConnectError::Usage(format!(
            "account {name} is new: give its mailbox with --email ADDRESS"
        )));
    }
    let settings = settings(&name, args, known);

    // Validate the would-be config before any sign-in: write it to a scratch copy,
    // parse that text as if it were the real file (so errors name the real path).
    let scratch = tempfile::tempdir().map_err(|e| ConnectError::Usage(format!("temp dir: {e}")))?;
    let scratch_path = scratch.path().join("config.toml");
    std::fs::write(&scratch_path, &existing_text)
        .map_err(|e| ConnectError::Usage(format!("temp file: {e}")))?;
    let probe_folders: Vec<(String, String)> = if known.is_some() {
        Vec::new()
    } else {
        vec![("Inbox".to_owned(), "INBOX".to_owned())]
    };
    edit::upsert_account(&scratch_path, &settings, &probe_folders)?;
    let text = std::fs::read_to_string(&scratch_path)
        .map_err(|e| ConnectError::Usage(format!("temp file: {e}")))?;
    let config = config::parse(&text, path)?;
    let account = config
        .accounts
        .get(&name)
        .ok_or_else(|| ConnectError::Usage(format!("account {name} vanished from the config")))?
        .clone();

    // Sign in.
    let http = flows::http_client_for(&account)?;
    let grant = match account.flow {
        Flow::Device => flows::device(&account, &http, out).await?,
        Flow::Browser => flows::browser(&account, &http, out, !args.no_browser).await?,
        Flow::ClientCredentials => {
            let secret = read_secret(&account)?;
            flows::client_credentials(&account, &secret, &http).await?
        }
    };
    flows::check_identity(&account, &grant)?;

    // Prove it: log in to IMAP and list the folders.
    let folders = prove(&config, &account, &grant).await?;

    // Store the grant, then write the config.
    store(&config, &account, &grant)?;
    // A new account, or one written by hand without mappings, gets the defaults.
    let defaults: Vec<(String, String)> = if known.is_some_and(|k| !k.folders.is_empty()) {
        Vec::new()
    } else {
        DEFAULT_MAPPINGS
            .iter()
            .filter(|(_, remote)| resolves(remote, &folders))
            .map(|(l, r)| ((*l).to_owned(), (*r).to_owned()))
            .collect()
    };
    let outcome = edit::upsert_account(path, &settings, &defaults)?;
    let mappings_written = match outcome {
        edit::UpsertOutcome::Updated { folders_added, .. } => folders_added,
        _ => true,
    };

    let _ = writeln!(
        out,
        "Connected account {} ({}) with the {} flow{}.",
        account.name,
        grant.identity.as_deref().unwrap_or(&account.email),
        account.flow.as_str(),
        if account.flow.is_delegated() {
            "; the refresh token is stored encrypted"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "The server lists {} folders.", folders.len());
    if !mappings_written && known.is_some_and(|k| k.folders.is_empty()) {
        let _ = writeln!(
            out,
            "[accounts.{0}] in {1} maps no folders, and the server has none of the default ones (Inbox, Archive, Deleted Items): `mailsync folders {0}` lists the server's folders; map them under [accounts.{0}.folders].",
            account.name,
            path.display()
        );
    } else if !mappings_written {
        let _ = writeln!(
            out,
            "Kept the folder mappings of [accounts.{}] in {}.",
            account.name,
            path.display()
        );
    } else {
        let _ = writeln!(
            out,
            "Wrote [accounts.{}] to {} with the mappings:",
            account.name,
            path.display()
        );
        for (local, remote) in &defaults {
            let found = resolve(remote, &folders)
                .map(|f| f.display.clone())
                .unwrap_or_default();
            let _ = writeln!(out, "  {local} = {remote}  ({found})");
        }
        let missing: Vec<&str> = DEFAULT_MAPPINGS
            .iter()
            .filter(|(_, r)| !resolves(r, &folders))
            .map(|(l, _)| *l)
            .collect();
        if !missing.is_empty() {
            let _ = writeln!(
                out,
                "Not mapped (no such folder on the server): {}; see `mailsync folders {}`.",
                missing.join(", "),
                account.name
            );
        }
    }
    let _ = writeln!(out, "Next: mailsync sync {}", account.name);
    Ok(())
}

fn account_name(args: &ConnectArgs, existing: Option<&Config>) -> Result<String, ConnectError> {
    if let Some(n) = &args.account {
        return Ok(n.clone());
    }
    if let Some(email) = &args.email {
        let local: String = email
            .split('@')
            .next()
            .unwrap_or("")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if !local.is_empty() {
            return Ok(local);
        }
    }
    match existing.map(|c| c.accounts.keys().collect::<Vec<_>>()) {
        Some(names) if names.len() == 1 => Ok(names[0].clone()),
        _ => Err(ConnectError::Usage(
            "name the account: mailsync connect ACCOUNT --email ADDRESS …".into(),
        )),
    }
}

/// The settings to write: what the flags say, over what the account already has (the
/// edit keeps every key not given).
fn settings(name: &str, a: &ConnectArgs, known: Option<&Account>) -> AccountSettings {
    let flow = a.flow.map(|f| match f {
        FlowArg::Device => "device",
        FlowArg::Browser => "browser",
        FlowArg::ClientCredentials => "client-credentials",
    });
    let provider = a.provider.map(|p| match p {
        ProviderArg::Microsoft => "microsoft",
        ProviderArg::Google => "google",
        ProviderArg::Custom => "custom",
    });
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| absolute(p).display().to_string());
    AccountSettings {
        name: name.to_owned(),
        provider: provider
            .map(str::to_owned)
            .or_else(|| known.map(|k| k.provider.as_str().to_owned()))
            .unwrap_or_else(|| "microsoft".to_owned()),
        email: a
            .email
            .clone()
            .or_else(|| known.map(|k| k.email.clone()))
            .unwrap_or_default(),
        tenant: a.tenant.clone(),
        client_id: a
            .client_id
            .clone()
            .or_else(|| known.and_then(|k| k.client_id.clone()))
            .unwrap_or_default(),
        flow: flow
            .map(str::to_owned)
            .or_else(|| known.map(|k| k.flow.as_str().to_owned()))
            .unwrap_or_else(|| "device".to_owned()),
        client_secret_file: path(&a.client_secret_file),
        maildir: path(&a.maildir),
        imap_host: a.imap_host.clone(),
        imap_port: a.imap_port,
        tls: a.tls.map(|t| t.as_str().to_owned()),
        ca_file: path(&a.ca_file),
        token_url: a.token_url.clone(),
        device_url: a.device_url.clone(),
        authorize_url: a.authorize_url.clone(),
        scopes: (!a.scopes.is_empty()).then(|| a.scopes.clone()),
        smtp_host: a.smtp_host.clone(),
        smtp_port: a.smtp_port,
        smtp_tls: a.smtp_tls.map(|t| t.as_str().to_owned()),
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

/// Logs in with the new token and lists the folders; a refusal is diagnosed.
async fn prove(
    config: &Config,
    account: &Account,
    grant: &Grant,
) -> Result<Vec<roles::RemoteFolder>, ConnectError> {
    let imap_err = |source| {
        ConnectError::Sync(SyncError::Imap {
            account: account.name.clone(),
            source,
        })
    };
    let client = imap::connect(&account.imap, config.daemon.command_timeout)
        .await
        .map_err(imap_err)?;
    let mut session = match client
        .authenticate(&account.login_user, &grant.access_token)
        .await
    {
        Ok(s) => s,
        Err(ImapError::AuthFailed(failure)) => {
            return Err(ConnectError::Sync(refused(account, failure)));
        }
        Err(e) => return Err(imap_err(e)),
    };
    let folders = session.list().await.map_err(imap_err)?;
    session.logout().await;
    Ok(folders)
}

fn store(config: &Config, account: &Account, grant: &Grant) -> Result<(), ConnectError> {
    let err = |e: &dyn std::fmt::Display| ConnectError::Store(e.to_string());
    let state_dir = &config.daemon.state_dir;
    let mut state = State::open(state_dir).map_err(|e| err(&e))?;
    let key = TokenKey::load_or_create(state_dir).map_err(|e| err(&e))?;
    let expires = grant.expires_at();
    state
        .save_grant(
            &key,
            &StoredGrant {
                account: account.name.clone(),
                flow: account.flow.as_str().to_owned(),
                refresh_token: grant.refresh_token.clone(),
                scopes: grant.scopes.clone(),
                granted_to: grant.identity.clone(),
                access_expires: Some(expires),
            },
        )
        .map_err(|e| err(&e))
}

fn resolve<'a>(
    remote: &str,
    folders: &'a [roles::RemoteFolder],
) -> Option<&'a roles::RemoteFolder> {
    let spec = if remote.starts_with('@') {
        RemoteSpec::Role(remote.parse::<Role>().ok()?)
    } else {
        RemoteSpec::Name(remote.to_owned())
    };
    roles::resolve(&spec, folders).ok()
}

fn resolves(remote: &str, folders: &[roles::RemoteFolder]) -> bool {
    resolve(remote, folders).is_some()
}
