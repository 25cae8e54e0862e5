//! The token store: one row per account with its grant (flow, scopes, the identity that
//! signed in) and its refresh token sealed with the [`TokenKey`]; and the account's
//! current access token, sealed too, so the next process reuses it instead of asking
//! the identity provider again.
//!
//! A deleted grant leaves no bytes behind, of the refresh token or the access token:
//! `secure_delete` (set in `State::init`) zeroes freed cells and pages, and the WAL is
//! checkpointed and truncated after the delete so it holds no older copy of the page.

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

/// An access token kept between processes. `Debug` is safe: the token is a [`Secret`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAccessToken {
    pub token: Secret,
    /// When it expires (unix seconds).
    pub expires: i64,
    /// The scopes the identity provider granted with it.
    pub scopes: Vec<String>,
}

/// Binds a sealed refresh token to its account and field, so a row copied to another
/// account does not open.
fn refresh_token_aad(account: &str) -> Vec<u8> {
    format!("mailsync token store v1\0refresh_token\0{account}").into_bytes()
}

/// Binds a sealed access token to its account and to what obtained it (`issued_for`:
/// the account's OAuth settings), so neither a row copied to another account, nor a
/// refresh token swapped in, nor a token from before a config change opens.
fn access_token_aad(account: &str, issued_for: &str) -> Vec<u8> {
    format!("mailsync access token v1\0{account}\0{issued_for}").into_bytes()
}

impl State {
    /// Stores the grant of `g.account`, replacing any earlier one; its status is back
    /// to ok.
    ///
    /// The access token kept for the previous grant goes: it may be for another identity
    /// or other scopes than the new sign-in.
    pub fn save_grant(&mut self, key: &TokenKey, g: &StoredGrant) -> Result<(), StateError> {
        let sealed = g
            .refresh_token
            .as_ref()
            .map(|t| key.seal(t.expose().as_bytes(), &refresh_token_aad(&g.account)));
        self.write(|tx| {
            tx.execute(
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
            )?;
            tx.execute(
                "DELETE FROM access_tokens WHERE account = ?1",
                params![g.account],
            )?;
            Ok(())
        })
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

    /// Keeps `t` as the access token of `account` until it expires, replacing any
    /// earlier one. `issued_for` names what obtained it (see [`access_token_aad`]);
    /// [`State::load_access_token`] must be given the same.
    pub fn save_access_token(
        &mut self,
        key: &TokenKey,
        account: &str,
        issued_for: &str,
        t: &StoredAccessToken,
    ) -> Result<(), StateError> {
        let sealed = key.seal(
            t.token.expose().as_bytes(),
            &access_token_aad(account, issued_for),
        );
        self.conn
            .execute(
                "INSERT INTO access_tokens (account, sealed, expires, scopes, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (account) DO UPDATE SET sealed = excluded.sealed,
                 expires = excluded.expires, scopes = excluded.scopes,
                 updated = excluded.updated",
                params![
                    account,
                    sealed,
                    t.expires,
                    t.scopes.join(" "),
                    super::runtime::unix_now()
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The access token kept for `account`, expired or not (the caller decides whether
    /// it has enough time left). A row that does not open (another key, other OAuth
    /// settings, altered) is deleted and reads as none: a new token is only a request
    /// away, so it is never an error.
    pub fn load_access_token(
        &mut self,
        key: &TokenKey,
        account: &str,
        issued_for: &str,
    ) -> Result<Option<StoredAccessToken>, StateError> {
        let row = self
            .conn
            .query_row(
                "SELECT sealed, expires, scopes FROM access_tokens WHERE account = ?1",
                params![account],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((sealed, expires, scopes)) = row else {
            return Ok(None);
        };
        let opened = key
            .open(&sealed, &access_token_aad(account, issued_for))
            .and_then(|plain| {
                String::from_utf8(plain).map_err(|e| {
                    e.into_bytes().fill(0);
                    CryptoError::NotText
                })
            });
        match opened {
            Ok(token) => Ok(Some(StoredAccessToken {
                token: Secret::new(token),
                expires,
                scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            })),
            Err(reason) => {
                tracing::debug!(account = %account, "stored access token ignored: {}", reason.cause());
                self.delete_access_token(account)?;
                Ok(None)
            }
        }
    }

    /// Forgets the access token kept for `account` (false if there was none).
    pub fn delete_access_token(&mut self, account: &str) -> Result<bool, StateError> {
        let deleted = self
            .conn
            .execute(
                "DELETE FROM access_tokens WHERE account = ?1",
                params![account],
            )
            .map_err(|e| self.err(e))?;
        Ok(deleted > 0)
    }

    /// Deletes the grant of `account` and its access token (false if there was
    /// neither), leaving no copy of either sealed token in the database file or the WAL.
    ///
    /// If another connection is reading at that moment, the WAL cannot be truncated:
    /// the grant is gone but [`StateError::TokenCopyRemains`] says an encrypted copy may
    /// remain until the next checkpoint.
    pub fn delete_grant(&mut self, account: &str) -> Result<bool, StateError> {
        let deleted = self.write(|tx| {
            let grants = tx.execute("DELETE FROM tokens WHERE account = ?1", params![account])?;
            let access = tx.execute(
                "DELETE FROM access_tokens WHERE account = ?1",
                params![account],
            )?;
            Ok(grants + access)
        })?;
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

    fn sealed_access(state: &State, account: &str) -> Vec<u8> {
        state
            .conn
            .query_row(
                "SELECT sealed FROM access_tokens WHERE account = ?1",
                params![account],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// A JWT-like access token of `len` bytes, different for each `n`.
    fn access_token(n: u32, len: usize) -> String {
        let mut t = format!("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-{n}.");
        let mut i = 0u32;
        while t.len() < len {
            t.push_str(&format!("{:08x}", (n + 1).wrapping_mul(2_654_435_761) ^ i));
            i += 1;
        }
        t.truncate(len);
        t
    }

    fn stored_access(token: &str, expires: i64) -> StoredAccessToken {
        StoredAccessToken {
            token: Secret::new(token),
            expires,
            scopes: vec!["https://outlook.office365.com/IMAP.AccessAsUser.All".to_owned()],
        }
    }

    const ISSUED_FOR: &str = "device\0app\0https://login.example/token\0alice@example.com\0";

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

        // Access tokens, replaced across a checkpoint too; one longer than a page
        // (Microsoft's can be), so it spills into overflow pages.
        let access: Vec<String> = [(1, 1500), (2, 6000), (3, 1600)]
            .iter()
            .map(|&(n, len)| access_token(n, len))
            .collect();
        let mut sealed_access_tokens = Vec::new();
        for (i, t) in access.iter().enumerate() {
            state
                .save_access_token(&key, "alice", ISSUED_FOR, &stored_access(t, 1_900_000_000))
                .unwrap();
            sealed_access_tokens.push(sealed_access(&state, "alice"));
            if i == 1 {
                state
                    .conn
                    .execute_batch("PRAGMA wal_checkpoint(FULL)")
                    .unwrap();
            }
        }
        let bob_access = access_token(9, 1500);
        state
            .save_access_token(
                &key,
                "bob",
                ISSUED_FOR,
                &stored_access(&bob_access, 1_900_000_000),
            )
            .unwrap();
        for t in &access {
            assert_no_plaintext(dir.path(), t);
        }

        assert!(state.delete_grant("alice").unwrap());
        for (i, s) in [first, second, third].iter().enumerate() {
            assert_no_trace(dir.path(), s, &format!("sealed token {i}"));
        }
        for (i, s) in sealed_access_tokens.iter().enumerate() {
            assert_no_trace(dir.path(), s, &format!("sealed access token {i}"));
        }
        assert_no_plaintext(dir.path(), TOKEN);
        for t in &access {
            assert_no_plaintext(dir.path(), t);
        }
        assert_eq!(state.load_grant(&key, "alice").unwrap(), None);
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            None
        );
        // The other account is untouched.
        let bob = state.load_grant(&key, "bob").unwrap().unwrap();
        assert_eq!(bob.grant.refresh_token, Some(Secret::new("bob-token")));
        let bob = state.load_access_token(&key, "bob", ISSUED_FOR).unwrap();
        assert_eq!(bob.unwrap().token, Secret::new(bob_access));
        drop(state);
        let mut state = State::open(dir.path()).unwrap();
        assert_eq!(state.load_grant(&key, "alice").unwrap(), None);
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            None
        );
    }

    /// `stop` of an account that never had a grant (client credentials set up by
    /// hand) still removes its access token, and says there was something.
    #[test]
    fn delete_grant_removes_an_access_token_without_a_grant() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([5; 32]);
        let mut state = State::open(dir.path()).unwrap();
        let token = access_token(1, 1500);
        state
            .save_access_token(
                &key,
                "app",
                ISSUED_FOR,
                &stored_access(&token, 1_900_000_000),
            )
            .unwrap();
        let sealed = sealed_access(&state, "app");
        assert_eq!(state.accounts_in_state().unwrap(), ["app"]);
        assert!(state.delete_grant("app").unwrap());
        assert_no_trace(dir.path(), &sealed, "the sealed access token");
        assert_no_plaintext(dir.path(), &token);
        assert!(!state.delete_grant("app").unwrap());
        assert!(state.accounts_in_state().unwrap().is_empty());
    }

    #[test]
    fn an_access_token_round_trips_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([3; 32]);
        let mut state = State::open(dir.path()).unwrap();
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            None
        );
        let first = stored_access(&access_token(1, 1500), 1_900_000_000);
        state
            .save_access_token(&key, "alice", ISSUED_FOR, &first)
            .unwrap();
        drop(state);

        let mut state = State::open(dir.path()).unwrap();
        let loaded = state.load_access_token(&key, "alice", ISSUED_FOR).unwrap();
        assert_eq!(loaded.as_ref(), Some(&first));
        // Loading does not consume it; a new one replaces it; an expired one is still
        // returned (the caller decides what is too close to expiry).
        let second = stored_access(&access_token(2, 1500), 5);
        state
            .save_access_token(&key, "alice", ISSUED_FOR, &second)
            .unwrap();
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            Some(second)
        );
        assert!(state.delete_access_token("alice").unwrap());
        assert!(!state.delete_access_token("alice").unwrap());
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            None
        );
    }

    /// A row that does not open is no error: it reads as none and is deleted, so the
    /// caller asks for a new token. Another key, other OAuth settings, another
    /// account's row, the refresh token swapped in, or a truncated value.
    #[test]
    fn an_access_token_that_does_not_open_is_ignored_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([1; 32]);
        let mut state = State::open(dir.path()).unwrap();
        let token = stored_access(&access_token(1, 1500), 1_900_000_000);
        let save = |state: &mut State| {
            state
                .save_access_token(&key, "alice", ISSUED_FOR, &token)
                .unwrap()
        };
        let present = |state: &State| sealed_access_count(state, "alice") == 1;

        save(&mut state);
        let other_key = TokenKey::from_bytes([2; 32]);
        assert_eq!(
            state
                .load_access_token(&other_key, "alice", ISSUED_FOR)
                .unwrap(),
            None
        );
        assert!(!present(&state), "a row that did not open was kept");

        save(&mut state);
        let other_settings = ISSUED_FOR.replace("app", "other-app");
        assert_eq!(
            state
                .load_access_token(&key, "alice", &other_settings)
                .unwrap(),
            None
        );
        assert!(!present(&state));

        // Copied to another account.
        save(&mut state);
        let copied = sealed_access(&state, "alice");
        state
            .save_access_token(
                &key,
                "mallory",
                ISSUED_FOR,
                &stored_access("m", 1_900_000_000),
            )
            .unwrap();
        state
            .conn
            .execute(
                "UPDATE access_tokens SET sealed = ?1 WHERE account = 'mallory'",
                params![copied],
            )
            .unwrap();
        assert_eq!(
            state
                .load_access_token(&key, "mallory", ISSUED_FOR)
                .unwrap(),
            None
        );
        assert_eq!(sealed_access_count(&state, "mallory"), 0);
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            Some(token.clone()),
            "alice's own row still opens"
        );

        // The refresh token swapped in, and the access token into the refresh token's
        // place: neither opens.
        state.save_grant(&key, &grant("alice", TOKEN)).unwrap();
        save(&mut state);
        let refresh = sealed(&state, "alice");
        let access = sealed_access(&state, "alice");
        state
            .conn
            .execute(
                "UPDATE access_tokens SET sealed = ?1 WHERE account = 'alice'",
                params![refresh],
            )
            .unwrap();
        state
            .conn
            .execute(
                "UPDATE tokens SET refresh_token = ?1 WHERE account = 'alice'",
                params![access],
            )
            .unwrap();
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            None
        );
        assert!(!present(&state));
        let err = state.load_grant(&key, "alice").unwrap_err();
        assert!(matches!(err, StateError::TokenUnreadable { .. }), "{err:?}");

        // Truncated.
        save(&mut state);
        state
            .conn
            .execute(
                "UPDATE access_tokens SET sealed = x'0102' WHERE account = 'alice'",
                [],
            )
            .unwrap();
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            None
        );
        assert!(!present(&state));
    }

    fn sealed_access_count(state: &State, account: &str) -> i64 {
        state
            .conn
            .query_row(
                "SELECT COUNT(*) FROM access_tokens WHERE account = ?1",
                params![account],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// A new sign-in replaces the access token of the previous one (it may be for
    /// another identity or other scopes).
    #[test]
    fn a_new_grant_drops_the_old_access_token() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([1; 32]);
        let mut state = State::open(dir.path()).unwrap();
        state.save_grant(&key, &grant("alice", TOKEN)).unwrap();
        state
            .save_access_token(
                &key,
                "alice",
                ISSUED_FOR,
                &stored_access(&access_token(1, 1500), 1_900_000_000),
            )
            .unwrap();
        state
            .rotate_refresh_token(&key, "alice", &Secret::new("rotated"), Some(7))
            .unwrap();
        assert!(
            state
                .load_access_token(&key, "alice", ISSUED_FOR)
                .unwrap()
                .is_some(),
            "a rotation keeps it"
        );
        state.save_grant(&key, &grant("alice", TOKEN)).unwrap();
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            None
        );
    }

    #[test]
    fn migration_4_applies_to_a_version_3_database() {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::from_bytes([1; 32]);
        {
            let mut conn = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &super::super::schema::MIGRATIONS[..3] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 3).unwrap();
            tx.commit().unwrap();
        }
        let mut state = State::open(dir.path()).unwrap();
        state.save_grant(&key, &grant("alice", TOKEN)).unwrap();
        let token = stored_access("at", 1_900_000_000);
        state
            .save_access_token(&key, "alice", ISSUED_FOR, &token)
            .unwrap();
        assert_eq!(
            state.load_access_token(&key, "alice", ISSUED_FOR).unwrap(),
            Some(token)
        );
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
            format!("{:?}", stored_access(TOKEN, 1)),
        ] {
            assert!(!printed.contains(TOKEN), "{printed}");
            assert!(!printed.contains("refresh-token"), "{printed}");
            assert!(!printed.contains("9, 9"), "{printed}");
        }
        assert!(format!("{loaded:?}").contains("REDACTED"));
    }
}
