//! One server per profile: the identity provider, a Dovecot, the corpus seeded once with
//! `seed_fast`, and snapshots of the user's Maildir (with Dovecot's index files):
//! `pristine` (as seeded), `changed` (the scenario-c change set applied to the server
//! as one tool's runs of a and b left it; taken again for every tool) and `two-way`
//! (the server as one tool's store is in sync with before scenario e; taken again for
//! every tool). A run restores one of them by copying it back while no session is
//! open, then runs `doveadm force-resync`.
//!
//! Why `changed` is taken per tool: Dovecot remembers in its cache file which fields
//! clients fetch from a folder. The first time a client asks for a field the folder has
//! not cached yet (INTERNALDATE, a header field), Dovecot rewrites the folder's cache
//! file after that command: 35-55 ms for the 12,000-message Archive, measured with
//! Dovecot's own per-command timing. A snapshot taken before any tool ran would make
//! every run of c pay that once-per-mailbox cost again; a tool that has synced the
//! mailbox before, as c assumes, does not.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use mailsync_testenv::dovecot::{MASTER_USER, TlsStream, connect_imaps, quote_mailbox};
use mailsync_testenv::{
    Corpus, CorpusMessage, CorpusOptions, DelayProxy, Dovecot, DovecotOptions, Idp, Profile, Role,
    SeedMessage,
};

use super::fsutil::copy_tree;

/// The mailbox every tool syncs.
pub const EMAIL: &str = "jane@example.com";
/// The three folders, as the server names them.
pub const FOLDERS: [&str; 3] = ["INBOX", "Archive", "Deleted Items"];

/// Scenario c's change set.
pub const NEW_MESSAGES: usize = 200;
pub const FLAG_CHANGES: usize = 2000;
pub const EXPUNGES: usize = 100;

/// The server side of one profile.
pub struct Server {
    pub idp: Idp,
    pub dovecot: Dovecot,
    pub client_id: String,
    pub secret: String,
    snapshots: PathBuf,
    /// How long the last restore took.
    pub last_restore: Duration,
    /// Seeding time and size.
    pub seed_time: Duration,
    pub seed_bytes: u64,
    /// Scenario c as applied: (flag changes, expunges, new messages); capped at half
    /// and a twentieth of a folder for small corpora.
    pub changes: (usize, usize, usize),
    /// (UID, flagged) of every seeded message, per folder: what scenario c changes.
    seeded: Vec<Vec<(u32, bool)>>,
    /// Between the tools and Dovecot when `--rtt` is given.
    proxy: Option<DelayProxy>,
}

/// Which server state to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Snapshot {
    Pristine,
    Changed,
    TwoWay,
}

impl Server {
    /// Starts the IdP and Dovecot for `profile`, seeds `corpus`, takes both snapshots.
    /// With `rtt` non-zero, tools reach it through a [`DelayProxy`] adding that round trip.
    pub async fn start(
        profile: Profile,
        corpus: &[CorpusMessage],
        work: &Path,
        rtt: Duration,
    ) -> Result<Server> {
        let idp = Idp::start().await;
        idp.add_user(EMAIL);
        let client_id = mailsync_testenv::random::guid();
        let secret = format!("bench~{}", mailsync_testenv::random::token(24));
        idp.add_app(&client_id, Some(&secret), Some(EMAIL));
        let dovecot = Dovecot::start(DovecotOptions::new(&idp).profile(profile)).await?;
        let snapshots = work.join(format!("server-{}", profile.name()));
        std::fs::create_dir_all(&snapshots)?;
        let mut server = Server {
            idp,
            dovecot,
            client_id,
            secret,
            snapshots,
            last_restore: Duration::ZERO,
            seed_time: Duration::ZERO,
            seed_bytes: 0,
            changes: (0, 0, 0),
            seeded: Vec::new(),
            proxy: None,
        };
        let started = Instant::now();
        let mut uids = Vec::new();
        for (role, folder) in [Role::Inbox, Role::Archive, Role::Trash]
            .into_iter()
            .zip(FOLDERS)
        {
            let msgs: Vec<&CorpusMessage> = corpus.iter().filter(|m| m.role == role).collect();
            server.seed_bytes += msgs.iter().map(|m| m.bytes.len() as u64).sum::<u64>();
            let got = server
                .dovecot
                .seed_fast(EMAIL, folder, msgs.iter().map(|m| SeedMessage::from(*m)))
                .await?;
            uids.push(
                got.into_iter()
                    .zip(
                        msgs.iter()
                            .map(|m| m.flags.iter().any(|f| f == "\\Flagged")),
                    )
                    .collect::<Vec<_>>(),
            );
        }
        server.seed_time = started.elapsed();
        copy_tree(&server.maildir(), &server.snapshot_path(Snapshot::Pristine))?;
        server.seeded = uids;
        if !rtt.is_zero() {
            let target = ([127, 0, 0, 1], server.dovecot.imaps_port()).into();
            server.proxy = Some(DelayProxy::start(target, rtt / 2).await?);
        }
        Ok(server)
    }

    /// Applies scenario c's change set to the server as it is now (as the last tool's
    /// runs left it, starting from `pristine`) and snapshots the result as `changed`.
    /// The change set is the same every time: the same UIDs, the same new messages.
    pub async fn snapshot_changed(&mut self) -> Result<()> {
        self.changes = self.apply_changes(&self.seeded).await?;
        self.take(Snapshot::Changed)
    }

    /// Snapshots the server as it is now as `s` (no session may be open), replacing
    /// what `s` held.
    pub fn take(&mut self, s: Snapshot) -> Result<()> {
        self.wait_idle()?;
        let path = self.snapshot_path(s);
        super::fsutil::remove_tree(&path)?;
        copy_tree(&self.maildir(), &path)
    }

    /// The IMAPS port the tools use: the delay proxy's, or Dovecot's own.
    pub fn imap_port(&self) -> u16 {
        match &self.proxy {
            Some(p) => p.port(),
            None => self.dovecot.imaps_port(),
        }
    }

    /// The user's Maildir root (folders and Dovecot's index files).
    fn maildir(&self) -> PathBuf {
        self.dovecot.dir().join("home").join(EMAIL).join("Maildir")
    }

    fn snapshot_path(&self, s: Snapshot) -> PathBuf {
        self.snapshots.join(match s {
            Snapshot::Pristine => "pristine",
            Snapshot::Changed => "changed",
            Snapshot::TwoWay => "two-way",
        })
    }

    /// Puts the server's mail back to `s` (no session may be open).
    pub fn restore(&mut self, s: Snapshot) -> Result<()> {
        let started = Instant::now();
        self.wait_idle()?;
        let live = self.maildir();
        std::fs::remove_dir_all(&live).with_context(|| format!("remove {}", live.display()))?;
        copy_tree(&self.snapshot_path(s), &live)?;
        self.dovecot
            .doveadm(&["force-resync", "-u", EMAIL, "*"])
            .context("force-resync after restore")?;
        self.last_restore = started.elapsed();
        Ok(())
    }

    /// Waits until `doveadm who` shows no session (tools may still be logging out).
    pub fn wait_idle(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.dovecot.who()?.is_empty() {
            if Instant::now() > deadline {
                bail!("sessions still open: {:?}", self.dovecot.who()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The master login (`USER*admin`).
    pub fn master_login(&self) -> String {
        format!("{EMAIL}*{MASTER_USER}")
    }

    /// A logged-in master session.
    pub async fn admin_session(&self) -> Result<async_imap::Session<TlsStream>> {
        let client = connect_imaps(self.dovecot.imaps_port(), &self.dovecot.ca_pem()).await?;
        client
            .login(self.master_login(), self.dovecot.admin_password())
            .await
            .map_err(|(e, _)| anyhow!("master login: {e}"))
    }

    /// Scenario c's change set, deterministic: in every folder in proportion to its
    /// size, `FLAG_CHANGES` messages get `\Flagged` toggled and `EXPUNGES` others are
    /// expunged; then `NEW_MESSAGES` new corpus messages (seed 4242) are delivered with
    /// MULTIAPPEND: Dovecot's own save path, as LMTP delivery takes, which caches at
    /// delivery the fields clients have been fetching (files written behind Dovecot's
    /// back would be cached by the first client that fetches them, inside its sync).
    /// `uids[i]` lists (UID, flagged) of folder i as seeded.
    async fn apply_changes(&self, uids: &[Vec<(u32, bool)>]) -> Result<(usize, usize, usize)> {
        let total: usize = uids.iter().map(Vec::len).sum::<usize>().max(1);
        let mut session = self.admin_session().await?;
        let mut rng = mailsync_testenv::random::SplitMix64::new(7);
        let (mut flags_left, mut expunges_left) = (FLAG_CHANGES, EXPUNGES);
        let mut applied = (0, 0, 0);
        for (i, (folder, list)) in FOLDERS.iter().zip(uids).enumerate() {
            // In proportion to the folder's size; the last folder takes the remainder.
            let last = i + 1 == uids.len();
            let share = |n: usize, left: usize| if last { left } else { n * list.len() / total };
            let flags = share(FLAG_CHANGES, flags_left).min(list.len() / 2);
            let expunges = share(EXPUNGES, expunges_left).min(list.len() / 20);
            flags_left -= flags;
            expunges_left -= expunges;
            applied.0 += flags;
            applied.1 += expunges;
            if list.is_empty() {
                continue;
            }
            // A seeded shuffle: distinct messages for flag changes and expunges.
            let mut order: Vec<usize> = (0..list.len()).collect();
            for j in (1..order.len()).rev() {
                order.swap(j, rng.below(j as u64 + 1) as usize);
            }
            let flag_set: Vec<(u32, bool)> = order[..flags].iter().map(|&j| list[j]).collect();
            let expunge_set: Vec<(u32, bool)> = order[flags..flags + expunges]
                .iter()
                .map(|&j| list[j])
                .collect();
            session
                .run_command_and_check_ok(&format!("SELECT {}", quote_mailbox(folder)))
                .await?;
            let on: Vec<u32> = flag_set.iter().filter(|f| !f.1).map(|f| f.0).collect();
            let off: Vec<u32> = flag_set.iter().filter(|f| f.1).map(|f| f.0).collect();
            let exp: Vec<u32> = expunge_set.iter().map(|f| f.0).collect();
            for (set, cmd) in [
                (&on, "+FLAGS.SILENT (\\Flagged)"),
                (&off, "-FLAGS.SILENT (\\Flagged)"),
                (&exp, "+FLAGS.SILENT (\\Deleted)"),
            ] {
                if !set.is_empty() {
                    session
                        .run_command_and_check_ok(&format!("UID STORE {} {cmd}", uid_set(set)))
                        .await?;
                }
            }
            if !exp.is_empty() {
                session
                    .run_command_and_check_ok(&format!("UID EXPUNGE {}", uid_set(&exp)))
                    .await?;
            }
        }
        session.logout().await?;
        let new = Corpus::generate(&CorpusOptions {
            seed: 4242,
            count: NEW_MESSAGES,
            max_size: None,
        });
        for (role, folder) in [Role::Inbox, Role::Archive, Role::Trash]
            .into_iter()
            .zip(FOLDERS)
        {
            let msgs: Vec<SeedMessage> = new
                .iter()
                .filter(|m| m.role == role)
                .map(SeedMessage::from)
                .collect();
            applied.2 += msgs.len();
            if !msgs.is_empty() {
                self.dovecot.append_many(EMAIL, folder, msgs).await?;
            }
        }
        self.wait_idle()?;
        Ok(applied)
    }
}

/// `1,3,5` as an IMAP sequence set.
fn uid_set(uids: &[u32]) -> String {
    let mut uids = uids.to_vec();
    uids.sort_unstable();
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
