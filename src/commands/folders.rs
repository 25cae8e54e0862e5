//! `mailsync folders`: the remote folders of each account, decoded, with their
//! special-use role, message count, and the local folder mapped to each.

use std::io::Write;

use serde::Serialize;

use super::{CommandError, Exit, select_accounts};
use crate::auth::TokenSource;
use crate::cli::FoldersArgs;
use crate::config::roles::{self, Role};
use crate::config::{Account, Config};
use crate::sync::SyncError;
use crate::sync::login::login;

#[derive(Debug, Serialize)]
struct FolderLine {
    account: String,
    name: String,
    wire_name: String,
    role: Option<&'static str>,
    messages: Option<u32>,
    mapped_to: Option<String>,
    selectable: bool,
}

pub async fn run(config: &Config, args: &FoldersArgs) -> Result<Exit, CommandError> {
    let accounts = select_accounts(config, args.account.as_deref())?;
    let mut lines = Vec::new();
    let mut failures = 0;
    let mut unresolved = Vec::new();
    for account in &accounts {
        match list_account(config, account).await {
            Ok((mut l, u)) => {
                lines.append(&mut l);
                unresolved.extend(u);
            }
            Err(e) => {
                eprintln!("mailsync: {}: {e}", account.name);
                failures += 1;
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &lines).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else {
        let width = lines
            .iter()
            .map(|l| l.name.chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        writeln!(
            out,
            "{:<10} {:<width$} {:<9} {:>8}  MAPPED TO",
            "ACCOUNT", "FOLDER", "ROLE", "MESSAGES"
        )?;
        for l in &lines {
            writeln!(
                out,
                "{:<10} {:<width$} {:<9} {:>8}  {}",
                l.account,
                l.name,
                l.role.unwrap_or("-"),
                l.messages
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                l.mapped_to.as_deref().unwrap_or("")
            )?;
        }
    }
    for u in &unresolved {
        eprintln!("mailsync: {u}");
    }
    Ok(if failures == accounts.len() {
        Exit::Fatal
    } else if failures > 0 || !unresolved.is_empty() {
        Exit::Partial
    } else {
        Exit::Ok
    })
}

async fn list_account(
    config: &Config,
    account: &Account,
) -> Result<(Vec<FolderLine>, Vec<String>), SyncError> {
    let imap_err = |source| SyncError::Imap {
        account: account.name.clone(),
        source,
    };
    let mut tokens = TokenSource::new(account, &config.daemon.state_dir)?;
    let mut session = login(
        account,
        config.daemon.command_timeout,
        &mut tokens,
        crate::sync::login::TRANSIENT_ATTEMPTS,
    )
    .await?;
    let folders = session.list().await.map_err(imap_err)?;

    // Which folder each mapping resolves to.
    let mut mapped: Vec<(String, String)> = Vec::new();
    let mut unresolved = Vec::new();
    for m in &account.folders {
        match roles::resolve(&m.remote, &folders) {
            Ok(f) => mapped.push((f.name.clone(), m.local.clone())),
            Err(e) => unresolved.push(format!(
                "{}:{}: accounts.{}.folders.{}: {e}",
                config.path.display(),
                m.line,
                account.name,
                m.local
            )),
        }
    }
    let mut lines = Vec::new();
    for f in &folders {
        let selectable = f.is_selectable();
        let messages = if selectable {
            session.status(&f.name).await.ok().map(|(n, _, _)| n)
        } else {
            None
        };
        lines.push(FolderLine {
            account: account.name.clone(),
            name: f.display.clone(),
            wire_name: f.name.clone(),
            role: role_of(f),
            messages,
            mapped_to: mapped
                .iter()
                .find(|(n, _)| *n == f.name)
                .map(|(_, l)| l.clone()),
            selectable,
        });
    }
    session.logout().await;
    Ok((lines, unresolved))
}

fn role_of(f: &roles::RemoteFolder) -> Option<&'static str> {
    if f.is_inbox() {
        return Some(Role::Inbox.as_str());
    }
    f.special_use().map(Role::as_str)
}
