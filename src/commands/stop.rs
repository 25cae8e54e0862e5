//! `mailsync stop`: disconnects an account in one step. For Google it revokes the
//! grant at Google; then it deletes the tokens (leaving no copy in the database files),
//! the account's sync state (folder mappings, message records, the daemon's status
//! row), and its tables in the config file (every other byte kept). With `--purge` it
//! deletes the mail too: each mapped folder's Maildir, and the account's Maildir root
//! if that leaves it empty; nothing else.
//!
//! It does not take the account lock (the daemon holds it while it runs) and does not
//! signal the daemon: the daemon sees the config change and drops the account. Running
//! it again, or for an account nobody knows, says "nothing to do" and exits 0.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use super::{CommandError, Exit};
use crate::auth::crypto::{KEY_FILE, TokenKey};
use crate::auth::flows;
use crate::config::edit::{self, EditError};
use crate::config::{self, Config, ConfigError, Flow};
use crate::secret::Secret;
use crate::state::{ForgetReport, State, StateError};

/// Google's token revocation endpoint (RFC 7009 style; Microsoft has none).
const GOOGLE_REVOKE_URL: &str = "https://oauth2.googleapis.com/revoke";

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The account (required when the config has more than one)
    pub account: Option<String>,
    /// Also delete the account's mail: each mapped folder's Maildir, and the account's
    /// Maildir root if that leaves it empty
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, thiserror::Error)]
enum StopError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(
        "cannot save the messages of the outbox, so they and the sync state were kept: {0}; fix that and run `mailsync stop` again"
    )]
    Outbox(String),
}

/// What is known of the account being removed, from the config (or, when the config
/// does not load, from its raw TOML).
#[derive(Debug, Default)]
struct Target {
    name: String,
    in_config: bool,
    provider: Option<String>,
    email: Option<String>,
    client_id: Option<String>,
    delegated: Option<bool>,
    maildir: Option<PathBuf>,
    /// Local folder names mapped in the config.
    mapped: Vec<String>,
}

impl Target {
    fn from_config(config: &Config, name: &str) -> Target {
        match config.accounts.get(name) {
            Some(a) => Target {
                name: name.to_owned(),
                in_config: true,
                provider: Some(a.provider.as_str().to_owned()),
                email: Some(a.email.clone()),
                client_id: a.client_id.clone(),
                delegated: Some(a.flow.is_delegated()),
                maildir: Some(a.maildir.clone()),
                mapped: a.folders.iter().map(|m| m.local.clone()).collect(),
            },
            None => Target {
                name: name.to_owned(),
                ..Target::default()
            },
        }
    }

    /// What the raw TOML of a config that does not load says about the account.
    fn from_raw(text: &str, name: &str) -> Target {
        let table: Option<toml::Table> = text.parse().ok();
        let account = table
            .as_ref()
            .and_then(|t| t.get("accounts"))
            .and_then(|a| a.get(name))
            .and_then(|a| a.as_table());
        let string = |key: &str| {
            account
                .and_then(|a| a.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Target {
            name: name.to_owned(),
            in_config: account.is_some(),
            provider: string("provider"),
            email: string("email"),
            client_id: string("client_id"),
            delegated: string("flow").map(|f| f != Flow::ClientCredentials.as_str()),
            maildir: string("maildir")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            mapped: account
                .and_then(|a| a.get("folders"))
                .and_then(|f| f.as_table())
                .map(|f| f.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

pub async fn run(path: &Path, args: &StopArgs) -> Result<Exit, CommandError> {
    let mut out = io::stdout();
    match stop(path, args, &mut out).await {
        Ok(exit) => Ok(exit),
        Err(e) => {
            let _ = out.flush();
            eprintln!("mailsync: {e}");
            Ok(Exit::Fatal)
        }
    }
}

async fn stop(path: &Path, args: &StopArgs, out: &mut impl Write) -> Result<Exit, StopError> {
    // The config: loaded, absent (defaults: the state may still hold the account), or
    // broken (then only the account's tables can be cut out of it).
    let loaded = match config::load(path) {
        Err(ConfigError::Read { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
            config::parse("", path)
        }
        other => other,
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => return stop_with_broken_config(path, args, &e.to_string(), out).await,
    };
    let in_state = state_accounts(&config)?;
    let name = match &args.account {
        Some(n) => n.clone(),
        None => match choose(&config, &in_state) {
            Ok(Some(n)) => n,
            Ok(None) => {
                writeln_out(
                    out,
                    format_args!(
                        "Nothing to do: {} has no account and the state holds none.",
                        config.path.display()
                    ),
                );
                return Ok(Exit::Ok);
            }
            Err(e) => return Err(e),
        },
    };
    let target = Target::from_config(&config, &name);
    if !target.in_config && !has_state(&config, &name)? {
        tidy_up(&config, &name)?;
        let hint = if args.purge {
            " (its Maildir is not known any more: delete it by hand if you want it gone)"
        } else {
            ""
        };
        writeln_out(
            out,
            format_args!(
                "Nothing to do: no account {name:?} in {} or in the state in {}{hint}.",
                config.path.display(),
                config.daemon.state_dir.display()
            ),
        );
        return Ok(Exit::Ok);
    }
    disconnect(&config, path, args, target, false, out).await
}

/// The config does not load: cut the account's tables out of it as text, then, if it
/// loads now, go on with the state. Otherwise the state directory is unknown.
async fn stop_with_broken_config(
    path: &Path,
    args: &StopArgs,
    error: &str,
    out: &mut impl Write,
) -> Result<Exit, StopError> {
    let Some(name) = args.account.clone() else {
        return Err(StopError::Usage(format!(
            "{error}\nThe config does not load, so name the account to remove: mailsync stop ACCOUNT"
        )));
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut target = Target::from_raw(&text, &name);
    writeln_out(
        out,
        format_args!("Note: the config does not load ({error})."),
    );
    let removed = edit::remove_account(path, &name)?;
    if removed {
        writeln_out(
            out,
            format_args!(
                "  config: removed [accounts.{name}] from {} (cut out as text)",
                path.display()
            ),
        );
    }
    match config::load(path) {
        Ok(config) => {
            if target.maildir.is_none() && target.in_config {
                // The default: `<state_dir>/mail/<name>`.
                target.maildir = Some(config.daemon.state_dir.join("mail").join(&name));
            }
            if !removed && !has_state(&config, &name)? {
                tidy_up(&config, &name)?;
                writeln_out(
                    out,
                    format_args!(
                        "Nothing to do: no account {name:?} in {} or in the state in {}.",
                        path.display(),
                        config.daemon.state_dir.display()
                    ),
                );
                return Ok(Exit::Ok);
            }
            target.in_config = false;
            disconnect(&config, path, args, target, removed, out).await
        }
        Err(e) => {
            writeln_out(
                out,
                format_args!(
                    "The config still does not load ({e}), so the state directory is unknown: the account's tokens and sync state were NOT deleted.\nFix the config and run `mailsync stop {name}` again."
                ),
            );
            Ok(Exit::Partial)
        }
    }
}

/// The account to stop when none is named: the only one in the config, else the only
/// one in the state; `None` when there is none at all.
fn choose(config: &Config, in_state: &[String]) -> Result<Option<String>, StopError> {
    let names: Vec<&String> = if config.accounts.is_empty() {
        in_state.iter().collect()
    } else {
        config.accounts.keys().collect()
    };
    match names.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        many => Err(StopError::Usage(format!(
            "name the account to stop: mailsync stop ACCOUNT (accounts: {})",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The state database, if it exists (stop never creates it).
fn open_state(config: &Config) -> Result<Option<State>, StateError> {
    let dir = &config.daemon.state_dir;
    if dir.join("state.sqlite").exists() {
        State::open(dir).map(Some)
    } else {
        Ok(None)
    }
}

/// Whether the state holds anything of the account worth reporting: folder rows or a
/// grant.
fn has_state(config: &Config, name: &str) -> Result<bool, StateError> {
    match open_state(config)? {
        Some(s) => Ok(!s.folder_status(name)?.is_empty() || s.grant_summary(name)?.is_some()),
        None => Ok(false),
    }
}

/// Removes what is left of an account that is otherwise gone, without a word: a status
/// row a daemon wrote while dropping it, and a token copy whose WAL checkpoint was
/// blocked by a reader during an earlier `stop`.
fn tidy_up(config: &Config, name: &str) -> Result<(), StateError> {
    if let Some(mut state) = open_state(config)? {
        state.forget_account(name)?;
        let _ = state.delete_grant(name);
    }
    Ok(())
}

fn state_accounts(config: &Config) -> Result<Vec<String>, StateError> {
    match open_state(config)? {
        Some(s) => s.accounts_in_state(),
        None => Ok(Vec::new()),
    }
}

async fn disconnect(
    config: &Config,
    path: &Path,
    args: &StopArgs,
    target: Target,
    config_removed: bool,
    out: &mut impl Write,
) -> Result<Exit, StopError> {
    let name = &target.name;
    let mut exit = Exit::Ok;
    let mut state = open_state(config)?;
    let folder_locals: Vec<String> = match &state {
        Some(s) => s
            .folder_status(name)?
            .into_iter()
            .map(|f| f.local)
            .collect(),
        None => Vec::new(),
    };
    let grant = match &state {
        Some(s) => s.grant_summary(name)?,
        None => None,
    };
    if !config_removed {
        writeln_out(
            out,
            format_args!(
                "Disconnecting account {name}{}:",
                target
                    .email
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        );
    }

    // (a) Google: revoke the grant there first, while the token can still be read.
    if target.provider.as_deref() == Some("google")
        && let Some(s) = &state
        && grant.as_ref().is_some_and(|g| g.has_refresh_token)
    {
        let line = match revoke_google(s, &config.daemon.state_dir, name).await {
            Ok(()) => "revoked at Google".to_owned(),
            Err(e) => {
                exit = Exit::Partial;
                format!(
                    "NOT revoked at Google ({e}); remove mailsync's access at https://myaccount.google.com/connections"
                )
            }
        };
        writeln_out(out, format_args!("  grant: {line}"));
    }

    // The config goes first: a running daemon drops the account on this change, and it
    // must have let go of the account before the state is deleted, or a pass in flight
    // could write the folder rows back and fetch the mail again into the kept Maildir.
    if target.in_config {
        let removed = edit::remove_account(path, name)?;
        if removed {
            writeln_out(
                out,
                format_args!(
                    "  config: removed [accounts.{name}] from {}",
                    path.display()
                ),
            );
        }
        wait_for_release(&config.daemon.state_dir, name).await;
    }

    // (b) The tokens.
    if let Some(s) = &mut state {
        let line = match s.delete_grant(name) {
            Ok(true) => tokens_line(grant.as_ref()),
            Ok(false) => "none stored".to_owned(),
            Err(StateError::TokenCopyRemains { .. }) => {
                exit = Exit::Partial;
                format!(
                    "{}; but another process is reading the database, so an encrypted copy may remain in its WAL until that process finishes: run `mailsync stop {name}` again later",
                    tokens_line(grant.as_ref())
                )
            }
            Err(e) => return Err(e.into()),
        };
        writeln_out(out, format_args!("  tokens: {line}"));
    } else {
        writeln_out(out, format_args!("  tokens: none stored"));
    }

    // (c) The outbox: what was never sent is kept as files, not dropped with the rows.
    if let Some(s) = &mut state {
        // No sender may be at work on them meanwhile (a daemon that has not yet let
        // the account go).
        let _outbox = crate::state::OutboxLock::acquire(
            &config.daemon.state_dir,
            name,
            crate::send::LOCK_WAIT,
        )
        .await
        .map_err(|e| StopError::Outbox(e.to_string()))?;
        // `copy` rows were sent: only their Sent copy waited.
        let rows: Vec<_> = s
            .outbox_all(name)?
            .into_iter()
            .filter(|(row, _)| row.state != crate::state::OutboxState::Copy)
            .collect();
        if rows.is_empty() {
            s.outbox_forget(name)?;
        } else {
            let dir = config.daemon.state_dir.join("unsent").join(name);
            for (row, message) in &rows {
                let file = dir.join(format!("{}.eml", row.id));
                crate::send::keep_file(&file, message, &row.sender, &row.recipients)
                    .map_err(|e| StopError::Outbox(e.to_string()))?;
            }
            s.outbox_forget(name)?;
            writeln_out(
                out,
                format_args!(
                    "  outbox: {} message{} never sent, saved in {} (each ID.eml with an ID.envelope: the command that sends it again, once connected)",
                    rows.len(),
                    plural(rows.len()),
                    dir.display()
                ),
            );
        }
    }

    // (d) The sync state.
    let report = match &mut state {
        Some(s) => s.forget_account(name)?,
        None => ForgetReport::default(),
    };
    writeln_out(
        out,
        format_args!(
            "  sync state: {} deleted",
            if report.folders == 0 && report.messages == 0 {
                "nothing".to_owned()
            } else {
                format!(
                    "{} folder mapping{}, {} message record{}",
                    report.folders,
                    plural(report.folders),
                    report.messages,
                    plural(report.messages)
                )
            }
        ),
    );
    drop(state);

    // (e) The config: removed above when the account was in it.
    if !target.in_config && !config_removed {
        writeln_out(
            out,
            format_args!(
                "  config: {} has no [accounts.{name}] (already removed)",
                path.display()
            ),
        );
    }

    // (e) The mail.
    match &target.maildir {
        Some(root) if args.purge => {
            let mut locals: BTreeSet<String> = folder_locals.into_iter().collect();
            locals.extend(target.mapped.iter().cloned());
            let others: Vec<PathBuf> = config
                .accounts
                .values()
                .filter(|a| &a.name != name)
                .map(|a| a.maildir.clone())
                .collect();
            let p = purge(root, &locals, &others);
            if !p.refused.is_empty() {
                exit = Exit::Partial;
            }
            for line in p.lines(root) {
                writeln_out(out, format_args!("  mail: {line}"));
            }
        }
        Some(root) => writeln_out(
            out,
            format_args!(
                "  mail: kept in {} (mailsync no longer touches it)",
                root.display()
            ),
        ),
        None if args.purge => {
            exit = Exit::Partial;
            writeln_out(
                out,
                format_args!(
                    "  mail: NOT purged: the account's Maildir is not known (it is not in the config); delete it by hand"
                ),
            );
        }
        None => {}
    }

    for line in revoke_advice(&target) {
        writeln_out(out, format_args!("{line}"));
    }
    Ok(exit)
}

fn tokens_line(grant: Option<&crate::state::GrantSummary>) -> String {
    match grant {
        Some(g) => format!(
            "deleted ({} grant{})",
            g.flow,
            g.granted_to
                .as_deref()
                .map(|w| format!(" of {w}"))
                .unwrap_or_default()
        ),
        None => "deleted".to_owned(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Output is best effort: a closed stdout must not stop a disconnect half-way.
fn writeln_out(out: &mut impl Write, args: std::fmt::Arguments<'_>) {
    let _ = writeln!(out, "{args}");
}

/// How the grant is ended at the provider, which mailsync cannot do itself.
fn revoke_advice(t: &Target) -> Vec<String> {
    if t.provider.as_deref() != Some("microsoft") {
        return Vec::new();
    }
    let email = t.email.as_deref().unwrap_or("<mailbox address>");
    if t.delegated == Some(false) {
        let client_id = t.client_id.as_deref().unwrap_or("<client id>");
        vec![
            "App-only access has no sign-in to revoke. To end the app's access, an admin removes its client secret".to_owned(),
            format!("(Entra admin center → App registrations → {client_id} → Certificates & secrets) or its access to the mailbox"),
            format!("(Exchange Online PowerShell: Remove-MailboxPermission -Identity {email} -User <Object ID of the Enterprise application> -AccessRights FullAccess)."),
        ]
    } else {
        vec![
            "Microsoft has no endpoint to revoke a refresh token: the deleted one stays valid at Microsoft until it expires.".to_owned(),
            format!("To end it now, an admin revokes the user's sessions: Entra admin center → Users → {email} → Revoke sessions,"),
            format!("or `Revoke-MgUserSignInSession -UserId {email}` (Microsoft Graph PowerShell)."),
        ]
    }
}

/// The token key, only if one exists (stop never creates one).
fn existing_key(state_dir: &Path) -> Option<Result<TokenKey, String>> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let exists = credentials
        .as_ref()
        .is_some_and(|d| d.join(KEY_FILE).exists())
        || state_dir.join(KEY_FILE).exists();
    exists.then(|| TokenKey::load_or_create(state_dir).map_err(|e| e.to_string()))
}

/// Waits (up to 10 s) until no process holds the account's lock: the daemon lets go
/// once it has applied the config change; a `mailsync sync` when its pass ends.
async fn wait_for_release(state_dir: &Path, account: &str) {
    let lock_file = state_dir.join(format!("{account}.lock"));
    if !lock_file.exists() {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while crate::state::AccountLock::is_held(state_dir, account) {
        if std::time::Instant::now() > deadline {
            tracing::warn!(
                account,
                "another mailsync process still holds the account; removing its state anyway"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Revokes the refresh token at Google (it revokes the whole grant).
async fn revoke_google(state: &State, state_dir: &Path, account: &str) -> Result<(), String> {
    let key = existing_key(state_dir).ok_or("no token key to read the token with")??;
    let grant = state
        .load_grant(&key, account)
        .map_err(|e| e.to_string())?
        .ok_or("no grant stored")?;
    let token = grant.grant.refresh_token.ok_or("no refresh token stored")?;
    let http = flows::http_client(account).map_err(|e| e.to_string())?;
    revoke_at(&http, GOOGLE_REVOKE_URL, &token).await
}

/// POSTs `token=<token>` to a revocation endpoint; an already invalid token counts as
/// revoked.
async fn revoke_at(http: &reqwest::Client, url: &str, token: &Secret) -> Result<(), String> {
    let body = Secret::new(
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token.expose())
            .finish(),
    );
    let mut response = http
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body.expose().to_owned())
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = match crate::auth::http::read_bounded(&mut response).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(crate::auth::http::ReadError::TooLarge) => crate::auth::http::too_large(),
        Err(crate::auth::http::ReadError::Http(_)) => String::new(),
    };
    // Already revoked or expired: the goal is reached.
    if status == reqwest::StatusCode::BAD_REQUEST && text.contains("invalid_token") {
        return Ok(());
    }
    // One line of at most 300 characters, without the token just sent.
    let said = crate::auth::reply::server_text(text.trim(), &[token.expose()]);
    Err(format!("HTTP {status}: {said}"))
}

/// What [`purge`] did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Purged {
    /// Folders deleted, with the message files they held.
    removed: Vec<(String, usize)>,
    /// Folders left alone, with why.
    refused: Vec<(String, String)>,
    root_removed: bool,
}

impl Purged {
    fn lines(&self, root: &Path) -> Vec<String> {
        let mut lines = Vec::new();
        if self.removed.is_empty() && self.refused.is_empty() {
            lines.push(format!("nothing to delete under {}", root.display()));
        }
        if !self.removed.is_empty() {
            let files: usize = self.removed.iter().map(|(_, n)| n).sum();
            let names: Vec<&str> = self.removed.iter().map(|(l, _)| l.as_str()).collect();
            lines.push(format!(
                "deleted {} ({files} message file{}) under {}",
                names.join(", "),
                plural(files),
                root.display()
            ));
        }
        for (local, why) in &self.refused {
            lines.push(format!(
                "NOT deleted: {}: {why}",
                root.join(local).display()
            ));
        }
        if self.root_removed {
            lines.push(format!("deleted the now empty {}", root.display()));
        } else if root.exists() {
            lines.push(format!("kept {}: it holds other files", root.display()));
        }
        lines
    }
}

/// Deletes `<root>/<local>` for each local folder name, if it is a Maildir (a real
/// directory with cur/, new/ and tmp/) and no other account's mail is inside it; then
/// `root` if that left it empty. Nothing outside those paths is touched.
fn purge(root: &Path, locals: &BTreeSet<String>, others: &[PathBuf]) -> Purged {
    let mut p = Purged::default();
    if !root.is_absolute() {
        p.refused.push((
            String::new(),
            "the Maildir root is not an absolute path".into(),
        ));
        return p;
    }
    for local in locals {
        let mut parts = Path::new(local).components();
        if !matches!(
            (parts.next(), parts.next()),
            (Some(Component::Normal(_)), None)
        ) {
            p.refused
                .push((local.clone(), "not a single folder name".into()));
            continue;
        }
        let dir = root.join(local);
        let meta = match std::fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                p.refused.push((local.clone(), e.to_string()));
                continue;
            }
        };
        if !meta.is_dir() {
            p.refused.push((
                local.clone(),
                "not a directory (a symbolic link is not followed)".into(),
            ));
            continue;
        }
        if !["cur", "new", "tmp"].iter().all(|s| dir.join(s).is_dir()) {
            p.refused
                .push((local.clone(), "not a Maildir (no cur/, new/, tmp/)".into()));
            continue;
        }
        if let Some(other) = others.iter().find(|o| o.starts_with(&dir)) {
            p.refused.push((
                local.clone(),
                format!("another account's mail is in it ({})", other.display()),
            ));
            continue;
        }
        let files = ["cur", "new"]
            .iter()
            .filter_map(|s| std::fs::read_dir(dir.join(s)).ok())
            .map(|entries| entries.count())
            .sum();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => p.removed.push((local.clone(), files)),
            Err(e) => p.refused.push((local.clone(), e.to_string())),
        }
    }
    // Fails, as it should, unless empty.
    p.root_removed = std::fs::remove_dir(root).is_ok();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maildir(root: &Path, local: &str, files: usize) {
        for s in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join(local).join(s)).unwrap();
        }
        for i in 0..files {
            std::fs::write(root.join(local).join("cur").join(format!("{i}:2,S")), "x").unwrap();
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn purge_deletes_the_mapped_maildirs_and_an_empty_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Mail");
        maildir(&root, "Inbox", 3);
        maildir(&root, "Deleted Items", 1);
        let p = purge(&root, &set(&["Inbox", "Deleted Items", "Archive"]), &[]);
        assert_eq!(
            p.removed,
            [("Deleted Items".to_owned(), 1), ("Inbox".to_owned(), 3)]
        );
        assert!(p.refused.is_empty() && p.root_removed, "{p:?}");
        assert!(!root.exists());
    }

    #[test]
    fn purge_touches_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Mail");
        maildir(&root, "Inbox", 2);
        maildir(&root, "Mine", 1); // not mapped: kept
        std::fs::create_dir_all(root.join("Notes")).unwrap(); // mapped, not a Maildir
        std::fs::write(root.join("Notes/todo.txt"), "keep").unwrap();
        maildir(dir.path(), "outside", 1);
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("Link")).unwrap();
        maildir(&root, "Shared", 1);
        let other = root.join("Shared/other-account");
        std::fs::create_dir_all(&other).unwrap();

        let p = purge(
            &root,
            &set(&["Inbox", "Notes", "Link", "../outside", "a/b", "Shared"]),
            std::slice::from_ref(&other),
        );
        assert_eq!(p.removed, [("Inbox".to_owned(), 2)]);
        let refused: Vec<&str> = p.refused.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(refused, ["../outside", "Link", "Notes", "Shared", "a/b"]);
        assert!(!p.root_removed);
        assert!(root.join("Mine/cur/0:2,S").exists());
        assert!(root.join("Notes/todo.txt").exists());
        assert!(dir.path().join("outside/cur/0:2,S").exists());
        assert!(root.join("Shared/cur/0:2,S").exists());
        let lines = p.lines(&root).join("\n");
        assert!(
            lines.contains("kept") && lines.contains("NOT deleted"),
            "{lines}"
        );

        let relative = purge(Path::new("Mail"), &set(&["Inbox"]), &[]);
        assert!(relative.removed.is_empty() && !relative.refused.is_empty());
    }

    /// Answers one HTTP request with `status` and `body`; returns the request.
    async fn one_response(
        status: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/revoke", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            loop {
                let n = conn.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if rest.len() >= len || n == 0 {
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, task)
    }

    #[tokio::test]
    async fn revocation_posts_the_token_and_reads_the_answer() {
        let http = flows::http_client("work").unwrap();
        let token = Secret::new("1//0g-refresh+token/=");
        let (url, server) = one_response("200 OK", "").await;
        assert_eq!(revoke_at(&http, &url, &token).await, Ok(()));
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /revoke "), "{request}");
        assert!(
            request.ends_with("token=1%2F%2F0g-refresh%2Btoken%2F%3D"),
            "{request}"
        );

        let (url, _server) = one_response("400 Bad Request", r#"{"error": "invalid_token"}"#).await;
        assert_eq!(
            revoke_at(&http, &url, &token).await,
            Ok(()),
            "already revoked"
        );

        let (url, _server) = one_response("503 Service Unavailable", "down\nmore").await;
        let err = revoke_at(&http, &url, &token).await.unwrap_err();
        assert!(err.contains("503") && err.contains("down"), "{err}");
        assert!(!err.contains("refresh"), "{err}");
    }

    #[test]
    fn a_broken_config_still_names_the_account_parts() {
        let text = r#"
[accounts.work]
provider = "microsoft"
email = "jane@contoso.com"
flow = "client-credentials"
maildir = "/srv/mail/work"
bogus = 1
[accounts.work.folders]
Inbox = "INBOX"
Archive = "@archive"
"#;
        let t = Target::from_raw(text, "work");
        assert!(t.in_config);
        assert_eq!(t.provider.as_deref(), Some("microsoft"));
        assert_eq!(t.delegated, Some(false));
        assert_eq!(t.maildir.as_deref(), Some(Path::new("/srv/mail/work")));
        assert_eq!(t.mapped, ["Archive", "Inbox"]);
        assert!(!Target::from_raw("not toml [", "work").in_config);
        let advice = revoke_advice(&t).join("\n");
        assert!(advice.contains("Remove-MailboxPermission -Identity jane@contoso.com"));
        let mut delegated = t;
        delegated.delegated = Some(true);
        let advice = revoke_advice(&delegated).join("\n");
        assert!(advice.contains("Revoke-MgUserSignInSession -UserId jane@contoso.com"));
        assert!(advice.contains("Revoke sessions"));
    }
}
