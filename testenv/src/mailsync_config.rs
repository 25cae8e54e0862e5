//! Writes the mailsync config (`config.toml`) for an account against the test
//! environment: client-credentials flow, the custom provider pointing at the test
//! Dovecot and IdP, and the default folder mappings. Also writes the secret file and
//! copies the CA next to it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{Dovecot, Idp};

/// What goes into the config.
#[derive(Clone, Debug)]
pub struct MailsyncConfig {
    /// Directory receiving `config.toml`, `<account>.secret`, `ca.pem`, `state/`, `Mail/`.
    pub dir: PathBuf,
    /// The account name (`[accounts.NAME]`).
    pub account: String,
    /// The mailbox address.
    pub email: String,
    /// The app's client ID.
    pub client_id: String,
    /// The client secret (written to `<account>.secret`, mode 0600).
    pub client_secret: String,
    /// The IMAPS port.
    pub imap_port: u16,
    /// The CA file to copy to `DIR/ca.pem`.
    pub ca_source: PathBuf,
    /// The token endpoint.
    pub token_url: String,
    /// `[accounts.NAME.folders]`: local name = remote folder or `@role`.
    pub folders: Vec<(String, String)>,
}

impl MailsyncConfig {
    /// The demo setup: client credentials for `email` against `idp` (tenant
    /// `demo-tenant`) and `dovecot`, folders Inbox/Archive/Deleted Items.
    pub fn client_credentials(
        dir: &Path,
        idp: &Idp,
        dovecot: &Dovecot,
        email: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            account: "demo".into(),
            email: email.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            imap_port: dovecot.imaps_port(),
            ca_source: dovecot.ca_file(),
            token_url: idp.token_url("demo-tenant"),
            folders: vec![
                ("Inbox".into(), "INBOX".into()),
                ("Archive".into(), "@archive".into()),
                ("Deleted Items".into(), "@trash".into()),
            ],
        }
    }

    /// `DIR/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare if possible, else quoted.
fn key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        s.to_string()
    } else {
        q(s)
    }
}

/// The config text.
pub fn render(c: &MailsyncConfig) -> String {
    let d = |p: &str| c.dir.join(p).display().to_string();
    let acct = key(&c.account);
    let mut out = format!(
        "[daemon]\nstate_dir = {state}\n\n[accounts.{acct}]\nprovider = \"custom\"\nemail = {email}\nclient_id = {client}\nflow = \"client-credentials\"\nclient_secret_file = {secret}\nmaildir = {maildir}\nimap_host = \"localhost\"\nimap_port = {port}\ntls = \"implicit\"\nca_file = {ca}\ntoken_url = {token}\nscopes = [\"https://outlook.office365.com/.default\"]\n\n[accounts.{acct}.folders]\n",
        state = q(&d("state")),
        email = q(&c.email),
        client = q(&c.client_id),
        secret = q(&d(&format!("{}.secret", c.account))),
        maildir = q(&d("Mail")),
        port = c.imap_port,
        ca = q(&d("ca.pem")),
        token = q(&c.token_url),
    );
    for (local, remote) in &c.folders {
        out.push_str(&format!("{} = {}\n", key(local), q(remote)));
    }
    out
}

/// Writes `config.toml`, the secret file (0600) and `ca.pem` into `c.dir` (created if
/// needed); returns the config path.
pub fn write_mailsync_config(c: &MailsyncConfig) -> Result<PathBuf> {
    fs::create_dir_all(&c.dir).with_context(|| format!("create {}", c.dir.display()))?;
    let secret = c.dir.join(format!("{}.secret", c.account));
    fs::write(&secret, &c.client_secret)?;
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
    fs::copy(&c.ca_source, c.dir.join("ca.pem"))
        .with_context(|| format!("copy {}", c.ca_source.display()))?;
    let path = c.config_path();
    fs::write(&path, render(c))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_shape() {
        let c = MailsyncConfig {
            dir: PathBuf::from("/d"),
            account: "demo".into(),
            email: "jane@example.com".into(),
            client_id: "app".into(),
            client_secret: "s".into(),
            imap_port: 993,
            ca_source: PathBuf::from("/x"),
            token_url: "http://127.0.0.1:1/demo-tenant/oauth2/v2.0/token".into(),
            folders: vec![
                ("Inbox".into(), "INBOX".into()),
                ("Deleted Items".into(), "@trash".into()),
            ],
        };
        let text = render(&c);
        assert!(text.starts_with("[daemon]\nstate_dir = \"/d/state\"\n\n[accounts.demo]\n"));
        assert!(text.contains("client_secret_file = \"/d/demo.secret\"\n"));
        assert!(text.ends_with(
            "[accounts.demo.folders]\nInbox = \"INBOX\"\n\"Deleted Items\" = \"@trash\"\n"
        ));
    }
}
