//! The copy of a sent message in the Sent folder, for servers that do not file one
//! themselves (`save_sent`). A message waits as `copy` in the outbox until its copy is
//! filed; before appending, the folder is searched for its Message-ID, so a copy
//! appended just before a crash is not appended again.

use crate::auth::TokenSource;
use crate::config::{Account, Daemon};
use crate::flags::Flags;
use crate::state::{OutboxState, State, unix_now};

/// Files the copies that wait; how many were filed. An error is kept for `status`
/// and the copies wait for the next flush.
pub(super) async fn file(
    account: &Account,
    daemon: &Daemon,
    state: &mut State,
) -> Result<usize, String> {
    let Some(spec) = &account.save_sent else {
        return Ok(0);
    };
    let rows = state
        .outbox(&account.name, OutboxState::Copy, None)
        .map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tokens = TokenSource::new(account, &daemon.state_dir).map_err(|e| e.to_string())?;
    let mut session = crate::sync::login::login(account, daemon.command_timeout, &mut tokens, 1)
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        let folders = session.list().await.map_err(|e| e.to_string())?;
        let folder = crate::config::resolve(spec, &folders)
            .map_err(|e| format!("save_sent: {e}"))?
            .name
            .clone();
        session.select(&folder).await.map_err(|e| e.to_string())?;
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
