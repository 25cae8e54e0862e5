//! The three clients, each configured for a one-way pull of INBOX, Archive and
//! "Deleted Items" over implicit TLS into its own Maildir: mailsync (its own config
//! writer, client-credentials OAuth), mbsync (an mbsyncrc with the master login, PLAIN)
//! and OfflineIMAP (readonly remote, `maxconnections = 1`, the master login).
//!
//! [`Setup::two_way`] gives mailsync and mbsync a second config on the same store and
//! state for scenario e and the flag-push latency: mailsync with `direction = "both"`
//! and `delete = "expunge"` (a local deletion expunges the message, which is what
//! mbsync's `Expunge Both` does, so the two servers can be compared; mailsync's default
//! moves it to the trash), mbsync with `Sync All`, `Create Both` and `Expunge Both`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use mailsync_testenv::{MailsyncConfig, write_mailsync_config};

use super::fsutil::remove_tree;
use super::server::{EMAIL, Server};

/// A client under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tool {
    Mailsync,
    Mbsync,
    Offlineimap,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Mailsync => "mailsync",
            Tool::Mbsync => "mbsync",
            Tool::Offlineimap => "offlineimap",
        }
    }
}

impl std::str::FromStr for Tool {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mailsync" => Ok(Tool::Mailsync),
            "mbsync" => Ok(Tool::Mbsync),
            "offlineimap" => Ok(Tool::Offlineimap),
            _ => bail!("unknown tool {s:?} (mailsync|mbsync|offlineimap)"),
        }
    }
}

/// One tool set up against one server: everything lives under `dir`.
#[derive(Clone, Debug)]
pub struct Setup {
    pub tool: Tool,
    /// Config, state and Maildir.
    pub dir: PathBuf,
    /// The local Maildir folders for INBOX, Archive, "Deleted Items".
    pub folders: [PathBuf; 3],
    /// The tool's config file.
    pub config: PathBuf,
    /// The command to run (program first).
    pub argv: Vec<String>,
    /// What to delete for an initial sync (state and mail, not the config).
    fresh: Vec<PathBuf>,
}

impl Setup {
    /// Writes the tool's config under `dir` (created).
    pub fn new(tool: Tool, server: &Server, dir: &Path, mailsync: &Path) -> Result<Setup> {
        std::fs::create_dir_all(dir)?;
        let mail = dir.join("Mail");
        let d = &server.dovecot;
        let s = |p: &Path| p.display().to_string();
        let setup = match tool {
            Tool::Mailsync => {
                let mut config = MailsyncConfig::client_credentials(
                    dir,
                    &server.idp,
                    d,
                    EMAIL,
                    &server.client_id,
                    &server.secret,
                );
                config.imap_port = server.imap_port();
                let path = write_mailsync_config(&config)?;
                Setup {
                    tool,
                    dir: dir.to_path_buf(),
                    folders: ["Inbox", "Archive", "Deleted Items"].map(|f| mail.join(f)),
                    argv: vec![s(mailsync), "--config".into(), s(&path), "sync".into()],
                    config: path,
                    fresh: vec![mail.clone(), dir.join("state")],
                }
            }
            Tool::Mbsync => {
                let rc = dir.join("mbsyncrc");
                let mut t = String::new();
                let _ = write!(
                    t,
                    "IMAPAccount bench\nHost localhost\nPort {port}\nUser {user}\nPass {pass}\n\
                     AuthMechs PLAIN\nSSLType IMAPS\nCertificateFile {ca}\n\n\
                     IMAPStore bench-remote\nAccount bench\n\n\
                     MaildirStore bench-local\nPath {mail}/\nInbox {mail}/INBOX\nSubFolders Verbatim\n\n\
                     Channel bench\nFar :bench-remote:\nNear :bench-local:\n\
                     Patterns INBOX Archive \"Deleted Items\"\nSync Pull\nCreate Near\n\
                     Expunge Near\nSyncState *\n",
                    port = server.imap_port(),
                    user = server.master_login(),
                    pass = d.admin_password(),
                    ca = s(&d.ca_file()),
                    mail = s(&mail),
                );
                std::fs::write(&rc, t)?;
                Setup {
                    tool,
                    dir: dir.to_path_buf(),
                    folders: ["INBOX", "Archive", "Deleted Items"].map(|f| mail.join(f)),
                    argv: vec![
                        "mbsync".into(),
                        "-q".into(),
                        "-c".into(),
                        s(&rc),
                        "-a".into(),
                    ],
                    fresh: vec![mail.clone()],
                    config: rc,
                }
            }
            Tool::Offlineimap => {
                let rc = dir.join("offlineimaprc");
                let meta = dir.join("meta");
                let t = format!(
                    "[general]\naccounts = bench\nmetadata = {meta}\nmaxsyncaccounts = 1\n\n\
                     [Account bench]\nlocalrepository = local\nremoterepository = remote\n\n\
                     [Repository local]\ntype = Maildir\nlocalfolders = {mail}\n\n\
                     [Repository remote]\ntype = IMAP\nremotehost = localhost\nremoteport = {port}\n\
                     ssl = yes\nsslcacertfile = {ca}\nremoteuser = {user}\nremotepass = {pass}\n\
                     auth_mechanisms = PLAIN\nreadonly = True\ncreatefolders = False\n\
                     maxconnections = 1\n\
                     folderfilter = lambda f: f in ['INBOX', 'Archive', 'Deleted Items']\n",
                    meta = s(&meta),
                    mail = s(&mail),
                    port = server.imap_port(),
                    ca = s(&d.ca_file()),
                    user = server.master_login(),
                    pass = d.admin_password(),
                );
                std::fs::write(&rc, t)?;
                Setup {
                    tool,
                    dir: dir.to_path_buf(),
                    folders: ["INBOX", "Archive", "Deleted Items"].map(|f| mail.join(f)),
                    argv: vec![
                        "offlineimap".into(),
                        "-c".into(),
                        s(&rc),
                        "-o".into(),
                        "-u".into(),
                        "quiet".into(),
                    ],
                    fresh: vec![mail.clone(), meta],
                    config: rc,
                }
            }
        };
        Ok(setup)
    }

    /// The same tool, store and state configured for two-way sync (see the module
    /// header): the config is written next to the pull one. OfflineIMAP has none here.
    pub fn two_way(&self) -> Result<Setup> {
        let text = std::fs::read_to_string(&self.config)?;
        // The pull config's own lines are replaced, so a change to its writer fails
        // here rather than measuring a pull as two-way.
        let (from, to, name) = match self.tool {
            Tool::Mailsync => (
                "\n\n[accounts.demo.folders]\n",
                "\ndirection = \"both\"\ndelete = \"expunge\"\n\n[accounts.demo.folders]\n",
                "config-both.toml",
            ),
            Tool::Mbsync => (
                "Sync Pull\nCreate Near\nExpunge Near\n",
                "Sync All\nCreate Both\nExpunge Both\n",
                "mbsyncrc-both",
            ),
            Tool::Offlineimap => bail!("no two-way set-up for OfflineIMAP"),
        };
        if text.matches(from).count() != 1 {
            bail!("{}: cannot make it two-way", self.config.display());
        }
        let path = self.dir.join(name);
        std::fs::write(&path, text.replacen(from, to, 1))?;
        let old = self.config.display().to_string();
        let mut setup = self.clone();
        for a in &mut setup.argv {
            if *a == old {
                *a = path.display().to_string();
            }
        }
        setup.config = path;
        Ok(setup)
    }

    /// Deletes the tool's state and mail: the next run is an initial sync.
    pub fn make_fresh(&self) -> Result<()> {
        for p in &self.fresh {
            remove_tree(p)?;
        }
        if self.tool == Tool::Mbsync {
            // mbsync creates the folders under Path itself, not Path.
            std::fs::create_dir_all(self.dir.join("Mail"))?;
        }
        Ok(())
    }
}
