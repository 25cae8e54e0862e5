//! Looking for an account's tokens in the state files after `stop`: the plaintext
//! tokens the identity provider issued, and the sealed blobs as they were stored
//! (tokens are only ever stored sealed, so a search for the plaintext alone could not
//! fail), in 16-byte windows so that a part of a blob counts too.

use std::path::Path;

use super::Env;

/// The sealed refresh and access tokens of `account` as the database holds them now.
pub fn sealed(state_dir: &Path, account: &str) -> Vec<Vec<u8>> {
    let db = rusqlite::Connection::open(state_dir.join("state.sqlite")).unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT refresh_token FROM tokens WHERE account = ?1",
        "SELECT sealed FROM access_tokens WHERE account = ?1",
    ] {
        let mut stmt = db.prepare(sql).unwrap();
        let rows = stmt
            .query_map([account], |r| r.get::<_, Vec<u8>>(0))
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

/// Asserts that no row of `account` is left in the token tables and that no issued
/// token, and no 16-byte window of the `sealed` blobs, is in state.sqlite or its WAL.
pub fn assert_gone(env: &Env, account: &str, sealed: &[Vec<u8>]) {
    let left = self::sealed(&env.state_dir(), account);
    assert!(
        left.is_empty(),
        "{} token rows of {account} are back",
        left.len()
    );
    let secrets = env.idp.issued_secrets();
    assert!(!secrets.is_empty(), "the identity provider issued no token");
    for name in ["state.sqlite", "state.sqlite-wal"] {
        // The WAL may be checkpointed away while we look.
        let Ok(bytes) = std::fs::read(env.state_dir().join(name)) else {
            continue;
        };
        for s in &secrets {
            assert!(!contains(&bytes, s.as_bytes()), "a token is in {name}");
        }
        for blob in sealed {
            for w in blob.windows(16) {
                assert!(!contains(&bytes, w), "part of a sealed token is in {name}");
            }
        }
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
