//! Opening an authenticated IMAP session for an account, with the retry policy in one
//! place: a refused token is replaced once; a transient failure (the identity
//! provider or the server briefly unavailable, a dropped connection) is retried with
//! backoff a few times; anything else is reported with its diagnosis.

use std::time::Duration;

use crate::auth::{TokenSource, diagnose};
use crate::config::Account;
use crate::imap::{self, ImapError, Session};

use super::error::SyncError;

/// Attempts for a transient failure where nothing else retries (a `sync` from a
/// terminal or a timer), and the first delay (doubled each time). The daemon retries
/// whole passes with its own backoff, so its logins try once: retries do not nest.
pub const TRANSIENT_ATTEMPTS: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_secs(1);

/// Logs in, trying up to `attempts` times while the failure is transient.
pub async fn login(
    account: &Account,
    command_timeout: Duration,
    tokens: &mut TokenSource,
    attempts: u32,
) -> Result<Session, SyncError> {
    login_shared(
        account,
        command_timeout,
        &SharedTokens::new(tokens),
        attempts,
    )
    .await
}

/// A token source several connections log in with at once: it is locked to get or
/// drop a token, not for a whole login (four round trips: TCP, TLS, AUTHENTICATE,
/// CAPABILITY), so the connections of a pass open side by side.
pub type SharedTokens<'a> = tokio::sync::Mutex<&'a mut TokenSource>;

/// [`login`] with a shared token source. One attempt (a refused token is still
/// replaced once) for an extra connection, which is better done without than waited
/// for.
pub async fn login_shared(
    account: &Account,
    command_timeout: Duration,
    tokens: &SharedTokens<'_>,
    attempts: u32,
) -> Result<Session, SyncError> {
    let mut delay = FIRST_DELAY;
    let mut attempt = 1;
    loop {
        match login_once(account, command_timeout, tokens).await {
            Err(e) if e.retry().is_transient() && attempt < attempts => {
                let wait = e.retry().delay(delay);
                tracing::warn!(account = %account.name, "{e}; retrying in {}s", wait.as_secs());
                tokio::time::sleep(wait).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn login_once(
    account: &Account,
    command_timeout: Duration,
    tokens: &SharedTokens<'_>,
) -> Result<Session, SyncError> {
    let imap_err = |source| SyncError::Imap {
        account: account.name.clone(),
        source,
    };
    let mut retried = false;
    loop {
        let token = tokens.lock().await.access_token().await?;
        let client = imap::connect(&account.imap, command_timeout)
            .await
            .map_err(imap_err)?;
        match client
            .authenticate_for_sync(&account.login_user, &token)
            .await
        {
            Ok(session) => return Ok(session),
            Err(ImapError::AuthFailed(f)) if !retried => {
                // The token may have been revoked or expired early: get a new one once.
                tracing::info!(account = %account.name, "token refused ({}); requesting a new one", f.server_text);
                tokens.lock().await.invalidate();
                retried = true;
            }
            Err(ImapError::AuthFailed(failure)) => return Err(refused(account, failure)),
            Err(e) => return Err(imap_err(e)),
        }
    }
}

/// A login the server refused with a valid-looking token, with what it means.
pub fn refused(account: &Account, failure: crate::imap::AuthFailure) -> SyncError {
    let diagnosis = diagnose::imap_auth_failure(&failure, &context(account));
    SyncError::Login {
        account: account.name.clone(),
        failure: Box::new(failure),
        diagnosis: Box::new(diagnosis),
    }
}

/// What the diagnosis needs to know about the account.
pub fn context(account: &Account) -> diagnose::Context<'_> {
    diagnose::Context {
        account: &account.name,
        provider: &account.provider,
        flow: account.flow,
        email: &account.email,
        client_id: account.client_id.as_deref().unwrap_or(""),
        consent_url: crate::auth::consent::admin_consent_url(account),
    }
}
