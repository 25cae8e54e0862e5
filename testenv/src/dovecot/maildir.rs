//! Fast seeding: message files written straight into the user's Maildir (owned by the
//! mail uid, `cur/` names with `:2,FLAGS`), then `doveadm force-resync`; UIDs are read
//! back from `dovecot-uidlist`.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::Dovecot;
use super::messages::{SeedMessage, maildir_letters};

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Dovecot {
    fn chown(&self, path: &Path) -> Result<()> {
        if self.mail_user.root {
            std::os::unix::fs::chown(path, Some(self.mail_ids.0), Some(self.mail_ids.1))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    /// The Maildir directory of `folder`, created (as an IMAP folder) if needed.
    pub fn maildir_path(&self, user: &str, folder: &str) -> Result<PathBuf> {
        if !folder.eq_ignore_ascii_case("INBOX")
            && let Err(e) = self.doveadm(&["mailbox", "create", "-s", "-u", user, folder])
            && !e.to_string().contains("already exists")
        {
            return Err(e);
        }
        // Touch the folder so Dovecot creates its directories.
        self.doveadm(&["mailbox", "status", "-u", user, "messages", folder])?;
        let out = self.doveadm(&["mailbox", "path", "-u", user, folder])?;
        let path = PathBuf::from(out.trim());
        if path.as_os_str().is_empty() {
            bail!("doveadm mailbox path gave nothing for {user} {folder}");
        }
        for sub in ["cur", "new", "tmp"] {
            let p = path.join(sub);
            if !p.exists() {
                fs::create_dir_all(&p)?;
                self.chown(&p)?;
            }
        }
        Ok(path)
    }

    /// Seeds many messages fast by writing Maildir files and running `doveadm
    /// force-resync`; returns their UIDs in order. Keywords are not supported here
    /// (system flags only); 0-byte messages are fine.
    pub async fn seed_fast<M: Into<SeedMessage>>(
        &self,
        user: &str,
        folder: &str,
        messages: impl IntoIterator<Item = M>,
    ) -> Result<Vec<u32>> {
        self.seed_fast_blocking(user, folder, messages)
    }

    /// [`Dovecot::seed_fast`] without async.
    pub fn seed_fast_blocking<M: Into<SeedMessage>>(
        &self,
        user: &str,
        folder: &str,
        messages: impl IntoIterator<Item = M>,
    ) -> Result<Vec<u32>> {
        let dir = self.maildir_path(user, folder)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let pid = std::process::id();
        let mut bases = Vec::new();
        for m in messages.into_iter().map(Into::into) {
            let seq = SEQ.fetch_add(1, Ordering::SeqCst);
            // Dovecot gives new files UIDs in the order of the time in their names, so
            // every file gets its own microsecond: UIDs follow the seeding order.
            let t = now.as_micros() as u64 + seq;
            // S= and W= (the size with CRLF line ends, as IMAP counts it), as Dovecot's
            // own delivery (LDA, LMTP) names files: RFC822.SIZE then costs no read.
            let base = format!(
                "{}.M{:06}P{pid}Q{seq}.mailsync-testenv,S={},W={}",
                t / 1_000_000,
                t % 1_000_000,
                m.bytes.len(),
                virtual_size(&m.bytes)
            );
            let tmp = dir.join("tmp").join(&base);
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&m.bytes)?;
            if let Some(d) = m.internaldate {
                let t = UNIX_EPOCH + std::time::Duration::from_secs(d.timestamp().max(0) as u64);
                f.set_modified(t)?;
            }
            drop(f);
            self.chown(&tmp)?;
            let name = format!("{base}:2,{}", maildir_letters(&m.flags));
            fs::rename(&tmp, dir.join("cur").join(name))?;
            bases.push(base);
        }
        self.doveadm(&["force-resync", "-u", user, folder])?;
        let uidlist = fs::read_to_string(dir.join("dovecot-uidlist"))
            .with_context(|| format!("read {}/dovecot-uidlist", dir.display()))?;
        let mut by_base: HashMap<&str, u32> = HashMap::new();
        for line in uidlist.lines().skip(1) {
            let Some((head, name)) = line.split_once(':') else {
                continue;
            };
            let Some(uid) = head.split_whitespace().next().and_then(|u| u.parse().ok()) else {
                continue;
            };
            let base = name.split(':').next().unwrap_or(name);
            by_base.insert(base, uid);
        }
        bases
            .iter()
            .map(|b| {
                by_base
                    .get(b.as_str())
                    .copied()
                    .with_context(|| format!("no UID for seeded file {b}"))
            })
            .collect()
    }
}

/// The size of a message with every bare LF counted as CRLF (Dovecot's "virtual size",
/// the `W=` of a Maildir file name).
fn virtual_size(bytes: &[u8]) -> usize {
    let bare_lf = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
        .count();
    bytes.len() + bare_lf
}

#[cfg(test)]
mod tests {
    #[test]
    fn virtual_size_counts_bare_line_feeds_twice() {
        assert_eq!(super::virtual_size(b""), 0);
        assert_eq!(super::virtual_size(b"\n"), 2);
        assert_eq!(super::virtual_size(b"a\nb\r\nc\n"), 9);
        assert_eq!(super::virtual_size(b"a\r\n\r\n"), 5);
    }
}
