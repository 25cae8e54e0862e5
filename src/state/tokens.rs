//! The token store: one row per account with its grant (flow, scopes, the identity that
//! signed in) and its refresh token sealed with the [`TokenKey`]. Access tokens are never
//! stored: they live in memory only.
//!
//! A deleted grant leaves no bytes behind: `secure_delete` (set in `State::init`) zeroes
//! freed cells and pages, and the WAL is checkpointed and truncated after the delete so
//! it holds no older copy of the page.

use rusqlite::{OptionalExtension, params};

use super::{State, StateError};
use crate::auth::crypto::{CryptoError, TokenKey};
use crate::secret::Secret;

/// What `connect` obtained for an account. `Debug` is safe: the token is a [`Secret`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredGrant {
    pub account: String,
    /// The flow that made the grant (`device`, `browser`, `client_credentials`, ...).
    pub flow: String,
    pub refresh_token: Option<Secret>,
    pub scopes: Vec<String>,
    /// The identity that signed in, as the token response named it.
    pub granted_to: Option<String>,
    /// When the current access token expires (unix seconds), for `status`.
    pub access_expires: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantStatus {
    Ok,
    /// The identity provider refused the grant (`invalid_grant`): only `connect` helps.
    NeedsConnect {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedGrant {
    pub grant: StoredGrant,
    pub status: GrantStatus,
    /// When the row last changed (unix seconds).
    pub updated: i64,
}

/// Binds a sealed refresh token to its account and field, so a row copied to another
/// account does not open.
fn refresh_token_aad(account: &str) -> Vec<u8> {
    format!("mailsync token store v1\0refresh_token\0{account}").into_bytes()
}

impl State {
    /// Stores the grant of `g.account`, replacing any earlier one; its status is back
    /// to ok.
    pub fn save_grant(&mut self, key: &TokenKey, g: &StoredGrant) -> Result<(), StateError> {
        let sealed = g
            .refresh_token
            .as_ref()
            .map(|t| key.seal(t.expose().as_bytes(), &refresh_token_aad(&g.account)));
        self.conn
            .execute(
                "INSERT INTO tokens (account, flow, refresh_token, scopes, granted_to,
                 access_expires, status, reason, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'ok', NULL, ?7)
                 ON CONFLICT (account) DO UPDATE SET flow = excluded.flow,
                 refresh_token = excluded.refresh_token, scopes = excluded.scopes,
                 granted_to = excluded.granted_to, access_expires = excluded.access_expires,
                 status = 'ok', reason = NULL, updated = excluded.updated",
                params![
                    g.account,
                    g.flow,
                    sealed,
                    g.scopes.join(" "),
                    g.granted_to,
                    g.access_expires,
                    super::runtime::unix_now()
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The stored grant of `account`, its refresh token decrypted.
    pub fn load_grant(
        &self,
        key: &TokenKey,
        account: &str,
    ) -> Result<Option<LoadedGrant>, StateError> {
        let row = self
            .conn
            .query_row(
                "SELECT flow, refresh_token, scopes, granted_to, access_expires, status,
                 reason, updated FROM tokens WHERE account = ?1",
                params![account],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<Vec<u8>>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, i64>(7)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((flow, sealed, scopes, granted_to, access_expires, status, reason, updated)) = row
        else {
            return Ok(None);
        };
        let refresh_token = match sealed {
            Some(sealed) => Some(self.open_token(key, account, &sealed)?),
            None => None,
        };
        let status = match status.as_str() {
            "ok" => GrantStatus::Ok,
            _ => GrantStatus::NeedsConnect {
                reason: reason.unwrap_or_default(),
            },
        };
        Ok(Some(LoadedGrant {
            grant: StoredGrant {
                account: account.to_owned(),
                flow,
                refresh_token,
                scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                granted_to,
                access_expires,
            },
            status,
            updated,
        }))
    }

    fn open_token(
        &self,
        key: &TokenKey,
        account: &str,
        sealed: &[u8],
    ) -> Result<Secret, StateError> {
        let unreadable = |reason| StateError::TokenUnreadable {
            account: account.to_owned(),
            path: self.path.clone(),
            reason,
        };
        let plain = key
            .open(sealed, &refresh_token_aad(account))
            .map_err(unreadable)?;
        match String::from_utf8(plain) {
            Ok(text) => Ok(Secret::new(text)),
            Err(e) => {
                e.into_bytes().fill(0);
                Err(unreadable(CryptoError::NotText))
            }
        }
    }

    /// Replaces the refresh token after a refresh, before the new one is used: the
    /// identity provider may already have revoked the old one. Durable when it returns
    /// (`synchronous = FULL`). The grant's status is back to ok.
    pub fn rotate_refresh_token(
        &mut self,
        key: &TokenKey,
        account: &str,
        new: &Secret,
        access_expires: Option<i64>,
    ) -> Result<(), StateError> {
        let sealed = key.seal(new.expose().as_bytes(), &refresh_token_aad(account));
        let changed = self
            .conn
            .execute(
                "UPDATE tokens SET refresh_token = ?2, access_expires = ?3, status = 'ok',
                 reason = NULL, updated = ?4 WHERE account = ?1",
                params![account, sealed, access_expires, super::runtime::unix_now()],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(StateError::NoGrant {
                account: account.to_owned(),
            });
        }
        Ok(())
    }

    /// Marks the grant dead (`invalid_grant`), with the reason `status` shows; the
    /// sealed token is kept for `connect` to replace. False if there is no grant.
    pub fn mark_needs_connect(&mut self, account: &str, reason: &str) -> Result<bool, StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE tokens SET status = 'needs_connect', reason = ?2, updated = ?3
                 WHERE account = ?1",
                params![account, reason, super::runtime::unix_now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed > 0)
    }

    /// Records when the current access token expires, for `status`. False if there is
    /// no grant.
    pub fn set_access_expiry(
        &mut self,
        account: &str,
        access_expires: Option<i64>,
    ) -> Result<bool, StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE tokens SET access_expires = ?2 WHERE account = ?1",
                params![account, access_expires],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed > 0)
    }

    /// Deletes the grant of `account` (false if there was none), leaving no copy of its
    /// sealed token in the database file or the WAL.
    ///
    /// If another connection is reading at that moment, the WAL cannot be truncated:
    /// the grant is gone but [`StateError::TokenCopyRemains`] says an encrypted copy may
    /// remain until the next checkpoint.
    pub fn delete_grant(&mut self, account: &str) -> Result<bool, StateError> {
        let deleted = self
            .conn
            .execute("DELETE FROM tokens WHERE account = ?1", params![account])
            .map_err(|e| self.err(e))?;
        // Always checkpoint, even when nothing was deleted now: a delete whose
        // checkpoint was blocked earlier is completed by the next call.
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if busy != 0 {
            return Err(StateError::TokenCopyRemains {
                account: account.to_owned(),
                path: self.path.clone(),
            });
        }
        Ok(deleted > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use base64::Engine;

    use super::*;

    const TOKEN: &str = "0.AXoAk3Hn-refresh-token-Zq9sWc1mTtL7yB0vK2xR4pN8dF6hJ3gE5aU";

    fn grant(account: &str, token: &str) -> StoredGrant {
        StoredGrant {
            account: account.to_owned(),
            flow: "device".to_owned(),
            refresh_token: Some(Secret::new(token)),
            scopes: vec![
                "https://outlook.office365.com/IMAP.AccessAsUser.All".to_owned(),
                "offline_access".to_owned(),
            ],
            granted_to: Some("alice@example.com".to_owned()),
            access_expires: Some(1_700_003_600),
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// The bytes of the database file and its WAL (empty if absent).
    fn files(dir: &Path) -> [(String, Vec<u8>); 2] {
        ["state.sqlite", "state.sqlite-wal"].map(|name| {
            let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
            (name.to_owned(), bytes)
        })
    }

    fn assert_absent(dir: &Path, needle: &[u8], what: &str) {
        for (name, bytes) in files(dir) {
            assert!(!contains(&bytes, needle), "{what} found in {name}");
        }
    }

    /// Every 16-byte window of `sealed` is absent: not even part of it remains.
    fn assert_no_trace(dir: &Path, sealed: &[u8], what: &str) {
        for (name, bytes) in files(dir) {
            for w in sealed.windows(16) {
                assert!(!contains(&bytes, w), "part of {what} found in {name}");
            }
        }
    }

    fn assert_no_plaintext(dir: &Path, token: &str) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(token);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        assert_absent(dir, token.as_bytes(), "the plaintext token");
        // The middle, so padding does not matter.
        assert_absent(dir, &b64.as_bytes()[4..40], "the base64 token");
        assert_absent(dir, &b64url.as_bytes()[4..40], "the base64url token");
    }

    fn sealed(state: &State, account: &str) -> Vec<u8> {
        state
            .conn
            .query_row(
                "SELECT refresh_token FROM tokens WHERE account = ?1",
                params![account],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn a_grant_round_trips_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([3; 32]);
        let mut state = State::open(dir.path()).unwrap();
        assert_eq!(state.load_grant(&key, "alice").unwrap(), None);
        state.save_grant(&key, &grant("alice", TOKEN)).unwrap();
        drop(state);

        let mut state = State::open(dir.path()).unwrap();
        let loaded = state.load_grant(&key, "alice").unwrap().unwrap();
        assert_eq!(loaded.grant, grant("alice", TOKEN));
        assert_eq!(loaded.status, GrantStatus::Ok);
        assert!(loaded.updated > 1_700_000_000);

        state
            .mark_needs_connect("alice", "AADSTS70043: The refresh token has expired")
            .unwrap();
        let loaded = state.load_grant(&key, "alice").unwrap().unwrap();
        assert_eq!(
            loaded.status,
            GrantStatus::NeedsConnect {
                reason: "AADSTS70043: The refresh token has expired".to_owned()
            }
        );

        // A refresh that works again clears the mark.
        state
            .rotate_refresh_token(&key, "alice", &Secret::new("rotated"), Some(42))
            .unwrap();
        assert!(state.set_access_expiry("alice", Some(43)).unwrap());
        drop(state);
        let state = State::open(dir.path()).unwrap();
        let loaded = state.load_grant(&key, "alice").unwrap().unwrap();
        assert_eq!(loaded.status, GrantStatus::Ok);
        assert_eq!(loaded.grant.refresh_token, Some(Secret::new("rotated")));
        assert_eq!(loaded.grant.access_expires, Some(43));
        assert_eq!(
            loaded.grant.granted_to.as_deref(),
            Some("alice@example.com")
        );
    }

    #[test]
    fn a_grant_without_refresh_token_and_missing_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([3; 32]);
        let mut state = State::open(dir.path()).unwrap();
        let mut app = grant("app", "");
        app.flow = "client_credentials".to_owned();
        app.refresh_token = None;
        app.granted_to = None;
        app.scopes = vec!["https://outlook.office365.com/.default".to_owned()];
        state.save_grant(&key, &app).unwrap();
        assert_eq!(state.load_grant(&key, "app").unwrap().unwrap().grant, app);

        let err = state
            .rotate_refresh_token(&key, "nobody", &Secret::new("x"), None)
            .unwrap_err();
        assert!(matches!(err, StateError::NoGrant { .. }), "{err:?}");
        assert!(err.to_string().contains("mailsync connect nobody"), "{err}");
        assert!(!state.mark_needs_connect("nobody", "x").unwrap());
        assert!(!state.set_access_expiry("nobody", None).unwrap());
        assert!(!state.delete_grant("nobody").unwrap());
    }

    #[test]
    fn tokens_never_reach_the_files_in_clear_and_delete_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([5; 32]);
        let mut state = State::open(dir.path()).unwrap();
        state.save_grant(&key, &grant("alice", TOKEN)).unwrap();
        state.save_grant(&key, &grant("bob", "bob-token")).unwrap();
        assert_no_plaintext(dir.path(), TOKEN);
        let first = sealed(&state, "alice");
        assert!(
            contains(&files(dir.path())[1].1, &first),
            "the WAL holds the row"
        );

        // Rotations and a checkpoint that moves pages into the database file.
        let rotated = format!("{TOKEN}-rotated");
        state
            .rotate_refresh_token(&key, "alice", &Secret::new(rotated.clone()), None)
            .unwrap();
        state
            .conn
            .execute_batch("PRAGMA wal_checkpoint(FULL)")
            .unwrap();
        let second = sealed(&state, "alice");
        state
            .rotate_refresh_token(&key, "alice", &Secret::new(TOKEN), None)
            .unwrap();
        let third = sealed(&state, "alice");
        assert_no_plaintext(dir.path(), TOKEN);
        assert_no_plaintext(dir.path(), &rotated);
        let loaded = state.load_grant(&key, "alice").unwrap().unwrap();
        assert_eq!(loaded.grant.refresh_token, Some(Secret::new(TOKEN)));
        assert!(contains(
            &std::fs::read(dir.path().join("state.sqlite")).unwrap(),
            &second
        ));

        assert!(state.delete_grant("alice").unwrap());
        for (i, s) in [first, second, third].iter().enumerate() {
            assert_no_trace(dir.path(), s, &format!("sealed token {i}"));
        }
        assert_no_plaintext(dir.path(), TOKEN);
        assert_eq!(state.load_grant(&key, "alice").unwrap(), None);
        // The other account is untouched.
        let bob = state.load_grant(&key, "bob").unwrap().unwrap();
        assert_eq!(bob.grant.refresh_token, Some(Secret::new("bob-token")));
        drop(state);
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.load_grant(&key, "alice").unwrap(), None);
    }

    #[test]
    fn another_key_gives_an_error_that_says_to_connect() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        state
            .save_grant(&TokenKey::from_bytes([1; 32]), &grant("alice", TOKEN))
            .unwrap();
        let err = state
            .load_grant(&TokenKey::from_bytes([2; 32]), "alice")
            .unwrap_err();
        assert!(
            matches!(
                err,
                StateError::TokenUnreadable {
                    reason: CryptoError::KeyChanged,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("mailsync.key") && msg.contains("mailsync connect alice"),
            "{msg}"
        );
        assert!(!msg.contains(TOKEN));
    }

    #[test]
    fn a_row_copied_to_another_account_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([1; 32]);
        let mut state = State::open(dir.path()).unwrap();
        state.save_grant(&key, &grant("alice", TOKEN)).unwrap();
        state.save_grant(&key, &grant("mallory", "m")).unwrap();
        state
            .conn
            .execute(
                "UPDATE tokens SET refresh_token =
                 (SELECT refresh_token FROM tokens WHERE account = 'alice')
                 WHERE account = 'mallory'",
                [],
            )
            .unwrap();
        let err = state.load_grant(&key, "mallory").unwrap_err();
        assert!(matches!(err, StateError::TokenUnreadable { .. }), "{err:?}");
    }

    #[test]
    fn debug_prints_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([9; 32]);
        let mut state = State::open(dir.path()).unwrap();
        state.save_grant(&key, &grant("alice", TOKEN)).unwrap();
        let loaded = state.load_grant(&key, "alice").unwrap().unwrap();
        for printed in [
            format!("{:?}", grant("alice", TOKEN)),
            format!("{loaded:?}"),
            format!("{loaded:#?}"),
            format!("{key:?}"),
        ] {
            assert!(!printed.contains(TOKEN), "{printed}");
            assert!(!printed.contains("refresh-token"), "{printed}");
            assert!(!printed.contains("9, 9"), "{printed}");
        }
        assert!(format!("{loaded:?}").contains("REDACTED"));
    }
}
