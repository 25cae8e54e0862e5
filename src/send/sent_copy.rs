//! The Sent folder: the copy of a sent message for servers that do not file one
//! themselves (`save_sent = "@sent"`), and the search for a message a crash left in
//! doubt where the server files one (`save_sent = "server"`).
//!
//! A message waits as `copy` in the outbox until its copy is filed; before appending,
//! the folder is searched for its Message-ID, so a copy appended just before a crash
//! is not appended again.

use crate::auth::TokenSource;
use crate::config::{Account, Daemon, RemoteSpec, Role, SentCopy};
use crate::flags::Flags;
use crate::imap::Session;
use crate::state::{OutboxState, State, unix_now};

/// Logs in and selects the Sent folder `spec` names: the session and the folder.
async fn open(
    account: &Account,
    daemon: &Daemon,
    spec: &RemoteSpec,
) -> Result<(Session, String), String> {
    let mut tokens = TokenSource::new(account, &daemon.state_dir).map_err(|e| e.to_string())?;
    let mut session = crate::sync::login::login(account, daemon.command_timeout, &mut tokens, 1)
        .await
        .map_err(|e| e.to_string())?;
    let opened = async {
        let folders = session.list().await.map_err(|e| e.to_string())?;
        let folder = crate::config::resolve(spec, &folders)
            .map_err(|e| format!("the Sent folder: {e}"))?
            .name
            .clone();
        session.select(&folder).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(folder)
    }
    .await;
    match opened {
        Ok(folder) => Ok((session, folder)),
        Err(e) => {
            session.logout().await;
            Err(e)
        }
    }
}

/// Files the copies that wait; how many were filed. An error is kept for `status`
/// and the copies wait for the next flush.
pub(super) async fn file(
    account: &Account,
    daemon: &Daemon,
    state: &mut State,
) -> Result<usize, String> {
    let SentCopy::Append(spec) = &account.save_sent else {
        return Ok(0);
    };
    let rows = state
        .outbox(&account.name, OutboxState::Copy, None)
        .map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (mut session, folder) = open(account, daemon, spec).await?;
    let result = async {
        let mut filed = 0;
        for row in rows {
            let Some(message) = state.outbox_message(row.id).map_err(|e| e.to_string())? else {
                continue;
            };
            let there = session
                .uids_with_message_id(&row.message_id)
                .await
                .map_err(|e| e.to_string())?;
            if there.is_empty() {
                session
                    .append(&folder, Flags::SEEN, unix_now(), &message)
                    .await
                    .map_err(|e| e.to_string())?;
                filed += 1;
            }
            state.outbox_done(row.id).map_err(|e| e.to_string())?;
        }
        Ok(filed)
    }
    .await;
    session.logout().await;
    result
}

/// Whether the server's Sent folder holds each of `message_ids`: for a server that
/// files what it accepted there, whether a message left in doubt was sent.
pub(super) async fn holds(
    account: &Account,
    daemon: &Daemon,
    message_ids: &[String],
) -> Result<Vec<bool>, String> {
    let (mut session, _) = open(account, daemon, &RemoteSpec::Role(Role::Sent)).await?;
    let mut found = Vec::with_capacity(message_ids.len());
    let mut result = Ok(());
    for id in message_ids {
        match session.uids_with_message_id(id).await {
            Ok(uids) => found.push(!uids.is_empty()),
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    session.logout().await;
    result.map(|()| found)
}
