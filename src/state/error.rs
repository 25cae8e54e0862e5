//! Why the state store failed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "state database {path} has schema version {found}, newer than this mailsync knows ({known}); upgrade mailsync"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "account {account}: the refresh token stored in {path} cannot be decrypted: {cause}; run `mailsync connect {account}` to sign in again",
        cause = .reason.cause()
    )]
    TokenUnreadable {
        account: String,
        path: PathBuf,
        reason: crate::auth::crypto::CryptoError,
    },
    #[error("account {account} has no stored grant: run `mailsync connect {account}`")]
    NoGrant { account: String },
    #[error(
        "account {account}: the grant is deleted, but another process is reading {path}, so an encrypted copy of the token may remain in its WAL until that process finishes; run the command again to remove it"
    )]
    TokenCopyRemains { account: String, path: PathBuf },
}
