//! What can go wrong signing in or with the token store, and how each is retried;
//! below the flows that make these errors and the token source that returns them.

use std::path::PathBuf;

use super::{consent, crypto, diagnose};
use crate::config::Account;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "account {account} is not connected (flow {flow}): run `mailsync connect {account}` first"
    )]
    NotConnected { account: String, flow: &'static str },
    #[error(
        "account {account} needs `mailsync connect {account}`: its sign-in is no longer valid ({reason})"
    )]
    NeedsConnect { account: String, reason: String },
    #[error(
        "account {account}: no client secret: set client_secret_file, or provide {account}.secret in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)"
    )]
    NoSecret { account: String },
    #[error("account {account}: cannot read client secret file {path}: {source}")]
    SecretFile {
        account: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("account {account}: invalid OAuth endpoint {url}: {detail}")]
    Endpoint {
        account: String,
        url: String,
        detail: String,
    },
    #[error("account {account}: the identity provider refused: {}{}", .diagnosis.cause, fix_note(&.diagnosis.fix))]
    Rejected {
        account: String,
        error: String,
        description: String,
        diagnosis: Box<diagnose::Diagnosis>,
    },
    #[error("account {account}: {detail}")]
    Declined { account: String, detail: String },
    #[error(
        "account {account}: signed in as {actual}, but the account is for {expected}; sign in as {expected} (in a private browser window if the browser picks the wrong account), or change email in the config"
    )]
    WrongIdentity {
        account: String,
        expected: String,
        actual: String,
    },
    /// The identity provider answered something mailsync cannot read (the wrong JSON
    /// shape): asking again at once will not help.
    #[error("account {account}: cannot use the identity provider's answer: {detail}")]
    BadReply { account: String, detail: String },
    #[error(
        "account {account}: the identity provider is unreachable or failing ({detail}); will retry"
    )]
    Transient { account: String, detail: String },
    #[error("account {account}: {detail}")]
    Io { account: String, detail: String },
    #[error("account {account}: token store: {source}")]
    Store {
        account: String,
        #[source]
        source: StoreError,
    },
}

/// What can go wrong with the token store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Key(#[from] crypto::KeyError),
}

fn fix_note(fix: &str) -> String {
    if fix.is_empty() {
        String::new()
    } else {
        format!(". Fix: {fix}")
    }
}

impl AuthError {
    /// A refusal, with what it means for this account.
    pub fn rejected(account: &Account, error: &str, description: &str) -> AuthError {
        let first_line = description
            .split(['\r', '\n'])
            .next()
            .unwrap_or("")
            .to_owned();
        let consent = consent::admin_consent_url(account);
        let ctx = diagnose::Context {
            account: &account.name,
            provider: &account.provider,
            flow: account.flow,
            email: &account.email,
            client_id: account.client_id.as_deref().unwrap_or(""),
            consent_url: consent,
        };
        let diagnosis = diagnose::oauth_error(error, &first_line, &ctx);
        if diagnosis.transient {
            return AuthError::Transient {
                account: account.name.clone(),
                detail: format!("{error}: {first_line}"),
            };
        }
        AuthError::Rejected {
            account: account.name.clone(),
            error: error.to_owned(),
            description: first_line,
            diagnosis: Box::new(diagnosis),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, AuthError::Transient { .. })
    }

    /// How this failure is retried (see [`crate::retry`]).
    pub fn retry(&self) -> crate::retry::Retry {
        use crate::retry::Retry;
        if self.needs_connect() {
            Retry::SignIn
        } else if self.is_transient() {
            Retry::Later(None)
        } else {
            Retry::Never
        }
    }

    /// Only `mailsync connect` can fix this: retrying would not.
    pub fn needs_connect(&self) -> bool {
        match self {
            AuthError::NeedsConnect { .. } | AuthError::NotConnected { .. } => true,
            AuthError::Rejected { diagnosis, .. } => diagnosis.needs_connect,
            _ => false,
        }
    }
}
