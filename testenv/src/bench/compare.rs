//! What a tool's Maildir holds, for comparing tools: per folder, the sorted list of
//! (SHA-256 of the message bytes, flag letters after `:2,`) over `cur/` and `new/`.
//! Two stores agree when every folder's list is equal. mbsync and OfflineIMAP store
//! messages with LF line ends while mailsync keeps the server's CRLF, so the hash is of
//! the bytes with every CRLF read as LF; mbsync also adds an `X-TUID:` header to each
//! message, which the hash leaves out.

use std::path::Path;

use anyhow::{Context, Result};

/// Per folder (INBOX, Archive, "Deleted Items"): sorted (hash, flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest(pub Vec<Vec<([u8; 32], String)>>);

/// Reads every message file of `folders`.
pub fn digest(folders: &[std::path::PathBuf]) -> Result<Digest> {
    let mut out = Vec::new();
    for f in folders {
        let mut list = Vec::new();
        for sub in ["cur", "new"] {
            let dir = f.join(sub);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let e = e?;
                list.push(entry(&e.path())?);
            }
        }
        list.sort();
        out.push(list);
    }
    Ok(Digest(out))
}

fn entry(path: &Path) -> Result<([u8; 32], String)> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut flags: Vec<char> = name
        .split_once(":2,")
        .map(|(_, f)| f.chars().filter(char::is_ascii_uppercase).collect())
        .unwrap_or_default();
    flags.sort_unstable();
    flags.dedup();
    Ok((sha256_lf(&bytes), flags.into_iter().collect()))
}

/// SHA-256 of `bytes` normalised: each CRLF read as LF, and mbsync's own `X-TUID:`
/// header line (which it adds to every message it stores) left out.
fn sha256_lf(bytes: &[u8]) -> [u8; 32] {
    let mut v = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            continue;
        }
        v.push(b);
    }
    let header_end = v
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(v.len(), |p| p + 1);
    let mut start = 0;
    while start < header_end {
        let end = v[start..header_end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header_end, |p| start + p + 1);
        if v[start..end].starts_with(b"X-TUID: ") {
            v.drain(start..end);
            break;
        }
        start = end;
    }
    openssl::sha::sha256(&v)
}

impl Digest {
    /// Messages per folder.
    pub fn counts(&self) -> Vec<usize> {
        self.0.iter().map(Vec::len).collect()
    }

    /// "✓" or a short description of the difference from `reference`.
    pub fn verdict(&self, reference: &Digest) -> String {
        if self == reference {
            return "✓".into();
        }
        let mut parts = Vec::new();
        for (i, (a, b)) in self.0.iter().zip(&reference.0).enumerate() {
            if a == b {
                continue;
            }
            let hashes = |l: &Vec<([u8; 32], String)>| {
                let mut h: Vec<[u8; 32]> = l.iter().map(|x| x.0).collect();
                h.sort_unstable();
                h
            };
            let what = if hashes(a) == hashes(b) {
                let differing = a.iter().filter(|x| !b.contains(x)).count();
                format!("{differing} flag diffs")
            } else {
                let hb = hashes(b);
                let differing = hashes(a)
                    .iter()
                    .filter(|h| hb.binary_search(h).is_err())
                    .count();
                format!("{} vs {} msgs, {differing} differ", a.len(), b.len())
            };
            parts.push(format!("{}: {what}", super::server::FOLDERS[i]));
        }
        format!("✗ ({})", parts.join("; "))
    }
}
