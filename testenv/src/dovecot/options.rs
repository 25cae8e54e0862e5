//! What a test Dovecot looks like: the capability profile, the special-use folder
//! layout and the identity provider it asks.

use crate::Idp;

/// The capabilities Exchange Online advertises, which the `Exchange` profile advertises
/// before and after login.
pub const EXCHANGE_CAPABILITIES: &[&str] = &[
    "IMAP4",
    "IMAP4rev1",
    "AUTH=PLAIN",
    "AUTH=XOAUTH2",
    "SASL-IR",
    "UIDPLUS",
    "ID",
    "UNSELECT",
    "CHILDREN",
    "IDLE",
    "NAMESPACE",
    "LITERAL+",
];

/// The server's capability profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// Dovecot's own capabilities: CONDSTORE, QRESYNC, MOVE, SPECIAL-USE, ….
    #[default]
    Full,
    /// Exchange Online's list ([`EXCHANGE_CAPABILITIES`]); mechanisms PLAIN and XOAUTH2.
    /// Dovecot still accepts the commands it no longer advertises.
    Exchange,
    /// A plain IMAP4rev1 server: Exchange's list without UIDPLUS and LITERAL+
    /// ([`minimal_capabilities`]), so no APPENDUID, COPYUID or UID EXPUNGE, and every
    /// literal waits for the server's go-ahead.
    NoUidplus,
}

/// The capabilities of [`Profile::NoUidplus`].
pub fn minimal_capabilities() -> Vec<&'static str> {
    EXCHANGE_CAPABILITIES
        .iter()
        .copied()
        .filter(|c| *c != "UIDPLUS" && *c != "LITERAL+")
        .collect()
}

impl Profile {
    /// `"full"` or `"exchange"`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Full => "full",
            Profile::Exchange => "exchange",
            Profile::NoUidplus => "no-uidplus",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Profile::Full),
            "exchange" => Ok(Profile::Exchange),
            "no-uidplus" => Ok(Profile::NoUidplus),
            _ => Err(format!("unknown profile {s:?} (full|exchange|no-uidplus)")),
        }
    }
}

/// A folder in the configured namespace, auto-created and subscribed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxSpec {
    /// The folder name in UTF-8 (Dovecot shows it in modified UTF-7).
    pub name: String,
    /// Its RFC 6154 attribute, e.g. `\Trash`, if any.
    pub special_use: Option<String>,
}

impl MailboxSpec {
    /// A folder with a special-use attribute (`None`: a plain auto-created folder).
    pub fn new(name: &str, special_use: Option<&str>) -> Self {
        Self {
            name: name.to_string(),
            special_use: special_use.map(str::to_string),
        }
    }
}

/// The default layout: Archive `\Archive`, "Deleted Items" `\Trash`, "Sent Items"
/// `\Sent`, Drafts `\Drafts`, "Junk Email" `\Junk`.
pub fn default_mailboxes() -> Vec<MailboxSpec> {
    vec![
        MailboxSpec::new("Archive", Some("\\Archive")),
        MailboxSpec::new("Deleted Items", Some("\\Trash")),
        MailboxSpec::new("Sent Items", Some("\\Sent")),
        MailboxSpec::new("Drafts", Some("\\Drafts")),
        MailboxSpec::new("Junk Email", Some("\\Junk")),
    ]
}

/// How a test Dovecot is set up.
#[derive(Clone, Debug)]
pub struct DovecotOptions {
    /// The capability profile.
    pub profile: Profile,
    /// The IdP's RFC 7662 endpoint (`Idp::introspection_url`).
    pub introspection_url: String,
    /// The auto-created folders besides INBOX.
    pub mailboxes: Vec<MailboxSpec>,
    /// `mail_max_userip_connections` (default 20, like Exchange's per-user limit).
    pub max_user_connections: u32,
    /// SMTP submission on (see [`DovecotOptions::submission`]): the port of the relay
    /// Dovecot forwards every accepted message to, on 127.0.0.1.
    pub submission_relay_port: Option<u16>,
    /// Appended verbatim to the generated config.
    pub extra_config: String,
}

impl DovecotOptions {
    /// Options for a server that validates tokens at `idp`, full profile.
    pub fn new(idp: &Idp) -> Self {
        Self::with_introspection_url(&idp.introspection_url())
    }

    /// Options with an explicit introspection URL.
    pub fn with_introspection_url(url: &str) -> Self {
        Self {
            profile: Profile::Full,
            introspection_url: url.to_string(),
            mailboxes: default_mailboxes(),
            max_user_connections: 20,
            submission_relay_port: None,
            extra_config: String::new(),
        }
    }

    /// Sets the profile.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Replaces the folder layout.
    pub fn mailboxes(mut self, mailboxes: Vec<MailboxSpec>) -> Self {
        self.mailboxes = mailboxes;
        self
    }

    /// Renames the folder with `special_use` (e.g. `\Trash` → `Gelöschte Elemente`).
    pub fn rename_special(mut self, special_use: &str, name: &str) -> Self {
        for m in &mut self.mailboxes {
            if m.special_use.as_deref() == Some(special_use) {
                m.name = name.to_string();
            }
        }
        self
    }

    /// Sets `mail_max_userip_connections`.
    pub fn max_user_connections(mut self, n: u32) -> Self {
        self.max_user_connections = n;
        self
    }

    /// Turns on Dovecot's SMTP submission service, relaying every accepted message to
    /// `127.0.0.1:relay_port` (an [`crate::SmtpSink`], say). Two ports: a plain one where
    /// STARTTLS must come before AUTH, like 587 ([`crate::Dovecot::submission_port`]),
    /// and an implicit-TLS one, like 465 ([`crate::Dovecot::submissions_port`]). AUTH
    /// takes XOAUTH2 and OAUTHBEARER, checked by the same passdb as IMAP (the profile's
    /// `auth_mechanisms`: the Exchange profile offers `PLAIN XOAUTH2`).
    pub fn submission(mut self, relay_port: u16) -> Self {
        self.submission_relay_port = Some(relay_port);
        self
    }

    /// Appends raw Dovecot configuration.
    pub fn extra_config(mut self, text: &str) -> Self {
        self.extra_config.push_str(text);
        self.extra_config.push('\n');
        self
    }
}
