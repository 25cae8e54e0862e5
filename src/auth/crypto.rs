//! The key that encrypts refresh tokens at rest, and sealing/opening with it
//! (ChaCha20-Poly1305).
//!
//! The key comes from `$CREDENTIALS_DIRECTORY/mailsync.key` when systemd provides one
//! (`LoadCredential=` / `LoadCredentialEncrypted=`), else from `<state dir>/mailsync.key`,
//! which is created on first use with mode 0600.
//!
//! Key file format: exactly 32 bytes are taken as the raw key (what
//! `head -c 32 /dev/urandom > mailsync.key` makes, and what mailsync writes itself);
//! anything else must be, after trailing whitespace is dropped, 64 hex digits or the
//! standard base64 (padded or not) of 32 bytes, e.g. `openssl rand -hex 32` or
//! `openssl rand -base64 32`.
//!
//! A sealed value is `nonce (12 random bytes) || ciphertext || tag (16 bytes)`. The
//! associated data names the account and the purpose, so a value copied to another
//! account's row, or to another field, fails to open.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

/// The key file's name, in `$CREDENTIALS_DIRECTORY` or the state directory.
pub const KEY_FILE: &str = "mailsync.key";

/// systemd's credential store, which `LoadCredential=mailsync.key` reads from.
const SYSTEM_CREDSTORE: &str = "/etc/credstore";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Longer than any valid key file (64 hex digits, a CRLF and some slack).
const MAX_KEY_FILE: usize = 128;
/// Hint given with every key file error: how to make a valid one.
const MAKE_KEY: &str = "make one with `head -c 32 /dev/urandom > mailsync.key`";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("token key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "token key {path} is not a key: it must hold 32 raw bytes, 64 hex digits or the base64 of 32 bytes ({found}); {MAKE_KEY}"
    )]
    Malformed { path: PathBuf, found: String },
    #[error(
        "token key {path} can be read by other users (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot generate a token key: the system random source failed: {0}")]
    Random(getrandom::Error),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error(
        "the stored token cannot be decrypted: the token key (mailsync.key) changed since it was saved, or the database was altered; run `mailsync connect ACCOUNT` to sign in again"
    )]
    KeyChanged,
    #[error(
        "the stored token is truncated ({len} bytes, a sealed value has at least 28); run `mailsync connect ACCOUNT` to sign in again"
    )]
    Truncated { len: usize },
    /// Authentic, yet not the UTF-8 text that was sealed: written by something else
    /// holding this key.
    #[error(
        "the stored token decrypts to something that is not text; run `mailsync connect ACCOUNT` to sign in again"
    )]
    NotText,
}

impl CryptoError {
    /// The cause alone, for messages that give the fix themselves.
    pub fn cause(&self) -> &'static str {
        match self {
            CryptoError::KeyChanged => {
                "the token key (mailsync.key) changed since it was saved, or the database was altered"
            }
            CryptoError::Truncated { .. } => "the stored value is truncated",
            CryptoError::NotText => "the stored value is not text",
        }
    }
}

/// A 32-byte ChaCha20-Poly1305 key. `Debug` prints no key material; the bytes are zeroed
/// when it is dropped.
pub struct TokenKey([u8; KEY_LEN]);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(/* REDACTED */)")
    }
}

impl Drop for TokenKey {
    fn drop(&mut self) {
        self.0 = [0; KEY_LEN];
        // Keeps the compiler from dropping the store above as dead (best effort without
        // `unsafe` volatile writes).
        std::hint::black_box(&mut self.0);
    }
}

impl TokenKey {
    /// The key from `$CREDENTIALS_DIRECTORY/mailsync.key` if systemd provides it, else
    /// from `<state_dir>/mailsync.key`, created if missing.
    pub fn load_or_create(state_dir: &Path) -> Result<TokenKey, KeyError> {
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(PathBuf::from)
            .or_else(|| {
                // An admin's `connect` or `stop` outside the service must use the key the
                // service gets from systemd's credential store, or the tokens it stores
                // could not be opened by the service.
                let store = PathBuf::from(SYSTEM_CREDSTORE);
                std::fs::File::open(store.join(KEY_FILE))
                    .is_ok()
                    .then_some(store)
            });
        TokenKey::load_or_create_in(credentials.as_deref(), state_dir)
    }

    /// [`TokenKey::load_or_create`] with the credentials directory given rather than
    /// read from the environment.
    pub fn load_or_create_in(
        credentials_dir: Option<&Path>,
        state_dir: &Path,
    ) -> Result<TokenKey, KeyError> {
        if let Some(dir) = credentials_dir {
            let path = dir.join(KEY_FILE);
            // No mode check here: systemd makes the credentials directory readable by the
            // unit's user only, and the file's own bits vary between versions.
            match std::fs::File::open(&path) {
                Ok(file) => return read_key(file, &path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(KeyError::Io { path, source }),
            }
        }
        let path = state_dir.join(KEY_FILE);
        loop {
            match std::fs::File::open(&path) {
                Ok(file) => {
                    check_private(&file, &path)?;
                    return read_key(file, &path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(KeyError::Io { path, source }),
            }
            if let Some(key) = create_key(state_dir, &path)? {
                return Ok(key);
            }
            // Another process linked its key first: read that one.
        }
    }

    /// Encrypts `plaintext`, bound to `aad`; the result is nonce, ciphertext and tag.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // A failing system random source leaves nothing safe to do: reusing a nonce
        // would leak the key stream.
        getrandom::fill(&mut nonce).expect("the system random source failed");
        // One buffer sized up front, encrypted in place: no plaintext copy is left in a
        // reallocated-away block.
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher()
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[NONCE_LEN..])
            .expect("ChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypts a value made by [`TokenKey::seal`] with the same key and `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Truncated { len: sealed.len() });
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut out = ciphertext.to_vec();
        self.cipher()
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                aad,
                &mut out,
                Tag::from_slice(tag),
            )
            .map_err(|_| CryptoError::KeyChanged)?;
        Ok(out)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        // The cipher zeroes its copy of the key when dropped.
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> TokenKey {
        TokenKey(bytes)
    }
}

fn check_private(file: &std::fs::File, path: &Path) -> Result<(), KeyError> {
    let mode = file
        .metadata()
        .map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn read_key(file: std::fs::File, path: &Path) -> Result<TokenKey, KeyError> {
    // Read at most a little more than the longest valid form, so a wrong file (a log, a
    // disk image) is refused without being read whole.
    let mut buf = Vec::with_capacity(MAX_KEY_FILE + 1);
    let read = file
        .take(MAX_KEY_FILE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        });
    let key = read.and_then(|_| parse_key(&buf, path));
    buf.fill(0);
    key
}

fn parse_key(buf: &[u8], path: &Path) -> Result<TokenKey, KeyError> {
    let malformed = |found: String| KeyError::Malformed {
        path: path.to_owned(),
        found,
    };
    if let Ok(raw) = <[u8; KEY_LEN]>::try_from(buf) {
        return Ok(TokenKey(raw));
    }
    let text = buf.trim_ascii_end();
    if text.is_empty() {
        return Err(malformed("the file is empty".into()));
    }
    if text.len() == 2 * KEY_LEN && text.iter().all(u8::is_ascii_hexdigit) {
        let mut key = [0u8; KEY_LEN];
        for (k, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
            *k = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        return Ok(TokenKey(key));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    if let Ok(mut decoded) = engine.decode(text) {
        let key = <[u8; KEY_LEN]>::try_from(decoded.as_slice()).ok();
        let n = decoded.len();
        decoded.fill(0);
        return key
            .map(TokenKey)
            .ok_or_else(|| malformed(format!("base64 of {n} bytes")));
    }
    Err(malformed(if buf.len() > MAX_KEY_FILE {
        format!("more than {MAX_KEY_FILE} bytes")
    } else {
        format!("{} bytes", buf.len())
    }))
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c.to_ascii_lowercase() - b'a' + 10,
    }
}

/// Creates the key file atomically: the key is written and synced under a temporary
/// name, then hard-linked to `path`, which fails if another process got there first
/// (`None`: read theirs). So `path` never exists half-written and two processes never
/// end up with different keys.
fn create_key(state_dir: &Path, path: &Path) -> Result<Option<TokenKey>, KeyError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| KeyError::Io { path: p, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io(state_dir))?;
    let mut key = TokenKey([0; KEY_LEN]);
    getrandom::fill(&mut key.0).map_err(KeyError::Random)?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(KeyError::Random)?;
    let tmp = state_dir.join(format!(
        ".{KEY_FILE}.{}.{:016x}",
        std::process::id(),
        u64::from_ne_bytes(suffix)
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&key.0)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(KeyError::Io { path: tmp, source });
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new name must survive a crash too, or tokens sealed with this key
            // would outlive it.
            std::fs::File::open(state_dir)
                .and_then(|d| d.sync_all())
                .map_err(io(state_dir))?;
            Ok(Some(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(source) => Err(KeyError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const AAD: &[u8] = b"account alice\0refresh_token";

    fn key(byte: u8) -> TokenKey {
        TokenKey::from_bytes([byte; KEY_LEN])
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn seal_then_open_gives_the_plaintext_back() {
        let k = key(7);
        let sealed = k.seal(b"0.AXoA-refresh", AAD);
        assert_eq!(sealed.len(), NONCE_LEN + 14 + TAG_LEN);
        assert!(!sealed.windows(14).any(|w| w == b"0.AXoA-refresh"));
        assert_eq!(k.open(&sealed, AAD).unwrap(), b"0.AXoA-refresh");
        // A fresh nonce each time: the same token never seals to the same bytes.
        assert_ne!(k.seal(b"0.AXoA-refresh", AAD), sealed);
        assert_eq!(k.open(&k.seal(b"", AAD), AAD).unwrap(), b"");
    }

    #[test]
    fn any_altered_byte_is_detected() {
        let k = key(7);
        let sealed = k.seal(b"0.AXoA-refresh", AAD);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(k.open(&bad, AAD), Err(CryptoError::KeyChanged), "byte {i}");
        }
        assert_eq!(
            k.open(&sealed[..20], AAD),
            Err(CryptoError::Truncated { len: 20 })
        );
    }

    #[test]
    fn a_value_sealed_for_another_account_does_not_open() {
        let k = key(7);
        let sealed = k.seal(b"0.AXoA-refresh", AAD);
        assert_eq!(
            k.open(&sealed, b"account bob\0refresh_token"),
            Err(CryptoError::KeyChanged)
        );
    }

    #[test]
    fn another_key_cannot_open_and_says_to_connect_again() {
        let sealed = key(7).seal(b"0.AXoA-refresh", AAD);
        let err = key(8).open(&sealed, AAD).unwrap_err();
        assert_eq!(err, CryptoError::KeyChanged);
        let msg = err.to_string();
        assert!(
            msg.contains("key") && msg.contains("mailsync connect"),
            "{msg}"
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        assert_eq!(format!("{:?}", key(0xab)), "TokenKey(/* REDACTED */)");
    }

    #[test]
    fn a_created_key_file_is_0600_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let k = TokenKey::load_or_create_in(None, &state).unwrap();
        let path = state.join(KEY_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(std::fs::read(&path).unwrap(), k.0);
        let again = TokenKey::load_or_create_in(None, &state).unwrap();
        assert_eq!(again.0, k.0);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [KEY_FILE]);
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        TokenKey::load_or_create_in(None, dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = TokenKey::load_or_create_in(None, dir.path()).unwrap_err();
        assert!(
            matches!(err, KeyError::Exposed { mode: 0o644, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
    }

    #[test]
    fn the_credentials_directory_takes_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        let state = dir.path().join("state");
        std::fs::create_dir(&creds).unwrap();
        let local = TokenKey::load_or_create_in(None, &state).unwrap();

        // Hex with a newline, as `openssl rand -hex 32` writes it.
        let hex: String = (0..32u8).map(|b| format!("{b:02x}")).collect();
        std::fs::write(creds.join(KEY_FILE), format!("{hex}\n")).unwrap();
        // systemd decides who reads credentials; a 0644 mode there is not an error.
        std::fs::set_permissions(creds.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let k = TokenKey::load_or_create_in(Some(&creds), &state).unwrap();
        let expected: Vec<u8> = (0..32u8).collect();
        assert_eq!(k.0.as_slice(), expected);
        assert_ne!(k.0, local.0);

        // An empty credentials directory falls back to the state directory.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let k = TokenKey::load_or_create_in(Some(&empty), &state).unwrap();
        assert_eq!(k.0, local.0);
    }

    #[test]
    fn key_file_forms() {
        let p = Path::new("/run/credentials/mailsync.service/mailsync.key");
        let bytes: Vec<u8> = (100..132u8).collect();
        let raw = parse_key(&bytes, p).unwrap();
        assert_eq!(raw.0.as_slice(), bytes);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        for text in [
            format!("{b64}\n"),
            b64.trim_end_matches('=').to_owned(),
            bytes.iter().map(|b| format!("{b:02X}")).collect::<String>() + "\r\n",
        ] {
            assert_eq!(parse_key(text.as_bytes(), p).unwrap().0.as_slice(), bytes);
        }
        // 32 raw bytes plus a newline is none of the forms: the length is wrong.
        let mut long = bytes.clone();
        long.push(b'\n');
        for bad in [&long[..], &bytes[..31], b"", b"c2hvcnQ=\n"] {
            let err = parse_key(bad, p).unwrap_err().to_string();
            assert!(
                err.contains(&p.display().to_string())
                    && err.contains("head -c 32 /dev/urandom > mailsync.key"),
                "{err}"
            );
        }
    }

    #[test]
    fn concurrent_creation_gives_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            let barrier = std::sync::Barrier::new(4);
            let keys: Vec<[u8; KEY_LEN]> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            TokenKey::load_or_create_in(None, &state).unwrap().0
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(keys.iter().all(|k| *k == keys[0]));
            assert_eq!(std::fs::read(state.join(KEY_FILE)).unwrap(), keys[0]);
        }
    }
}
