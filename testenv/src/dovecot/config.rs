//! Renders a self-contained `dovecot.conf` (plus the oauth2 passdb args file and the
//! master-user file) for one test instance.

use std::fmt::Write as _;
use std::path::Path;

use super::options::{DovecotOptions, EXCHANGE_CAPABILITIES, Profile};

/// The master user that seeds and inspects mail (`USER*admin` with PLAIN).
pub const MASTER_USER: &str = "admin";

/// Who the mail processes run as.
#[derive(Clone, Debug)]
pub struct MailUser {
    /// User name for `uid=` (e.g. `nobody`).
    pub user: String,
    /// Group name for `gid=` (e.g. `nogroup`).
    pub group: String,
    /// Whether Dovecot runs as root (else everything runs as this user).
    pub root: bool,
}

/// Everything that varies between instances.
#[derive(Clone, Debug)]
pub struct Instance<'a> {
    pub dir: &'a Path,
    pub name: &'a str,
    pub imap_port: u16,
    pub imaps_port: u16,
    pub mail_user: &'a MailUser,
    pub options: &'a DovecotOptions,
    /// Dovecot's own plain and implicit-TLS submission ports, when submission is on.
    pub submission: Option<(u16, u16)>,
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The oauth2 passdb args file.
pub fn oauth2_args(introspection_url: &str) -> String {
    format!(
        "introspection_mode = post\n\
         introspection_url = {introspection_url}\n\
         force_introspection = yes\n\
         username_attribute = email\n\
         active_attribute = active\n\
         active_value = true\n\
         timeout_msecs = 5000\n"
    )
}

/// The master-user passwd file.
pub fn master_users(password: &str) -> String {
    format!("{MASTER_USER}:{{PLAIN}}{password}\n")
}

/// `dovecot.conf`.
pub fn render(i: &Instance<'_>) -> String {
    let d = i.dir.display();
    let o = i.options;
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# mailsync-testenv instance {name}
instance_name = {name}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = {protocols}
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
ssl_dh = </usr/share/dovecot/dh.pem
auth_cache_size = 0
auth_failure_delay = 0
auth_verbose = yes
verbose_proctitle = yes
login_log_format_elements = user=<%u> method=%m rip=%r lip=%l lport=%{{local_port}} mpid=%e %c session=<%{{session}}>
auth_master_user_separator = *
mail_location = maildir:~/Maildir
mail_fsync = never
mail_max_userip_connections = {maxconn}
first_valid_uid = 1
",
        name = i.name,
        maxconn = o.max_user_connections,
        protocols = if i.submission.is_some() {
            "imap submission"
        } else {
            "imap"
        },
    );
    match o.profile {
        Profile::Full => {
            c.push_str("auth_mechanisms = plain login xoauth2 oauthbearer\n");
        }
        Profile::Exchange => {
            c.push_str("auth_mechanisms = plain xoauth2\n");
            let _ = writeln!(c, "imap_capability = {}", EXCHANGE_CAPABILITIES.join(" "));
            c.push_str("login_greeting = Microsoft Exchange Server IMAP4 service is ready.\n");
        }
        Profile::NoUidplus => {
            c.push_str("auth_mechanisms = plain xoauth2\n");
            let _ = writeln!(
                c,
                "imap_capability = {}",
                super::options::minimal_capabilities().join(" ")
            );
        }
    }
    let chroot = if i.mail_user.root {
        String::new()
    } else {
        let _ = writeln!(
            c,
            "default_internal_user = {u}\ndefault_internal_group = {g}\ndefault_login_user = {u}",
            u = i.mail_user.user,
            g = i.mail_user.group
        );
        "  chroot =\n".to_string()
    };
    let _ = writeln!(
        c,
        "service anvil {{
{chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}"
    );
    login_service(
        &mut c,
        "imap-login",
        ("imap", i.imap_port),
        ("imaps", i.imaps_port),
        &chroot,
    );
    let _ = writeln!(
        c,
        "passdb {{
  driver = passwd-file
  master = yes
  args = {d}/master-users
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/oauth2.conf
}}
userdb {{
  driver = static
  args = uid={u} gid={g} home={d}/home/%Lu allow_all_users=yes
}}
namespace inbox {{
  inbox = yes
  separator = /",
        u = i.mail_user.user,
        g = i.mail_user.group,
    );
    for m in &o.mailboxes {
        let _ = writeln!(c, "  mailbox {} {{", quote(&m.name));
        if let Some(su) = &m.special_use {
            let _ = writeln!(c, "    special_use = {su}");
        }
        c.push_str("    auto = subscribe\n  }\n");
    }
    c.push_str("}\n");
    if let (Some((plain, tls)), Some(relay)) = (i.submission, o.submission_relay_port) {
        submission(&mut c, plain, tls, relay, &chroot, o.profile);
    }
    c.push_str(&o.extra_config);
    c
}

/// A login service with a plain listener and an implicit-TLS one: `(name, port)` each.
fn login_service(
    c: &mut String,
    service: &str,
    plain: (&str, u16),
    tls: (&str, u16),
    chroot: &str,
) {
    let _ = writeln!(
        c,
        "service {service} {{
{chroot}  inet_listener {} {{
    port = {}
  }}
  inet_listener {} {{
    port = {}
    ssl = yes
  }}
}}",
        plain.0, plain.1, tls.0, tls.1
    );
}

/// The submission service. `ssl = required` hides AUTH until STARTTLS on connections
/// Dovecot does not count as local (see `submission.rs` for why that matters here).
fn submission(c: &mut String, plain: u16, tls: u16, relay: u16, chroot: &str, profile: Profile) {
    // login_greeting is shared by all login services: the Exchange profile's IMAP
    // greeting must not reach SMTP clients.
    let greeting = match profile {
        Profile::Exchange => "  login_greeting = Microsoft ESMTP MAIL Service ready\n",
        Profile::Full | Profile::NoUidplus => "",
    };
    let _ = writeln!(
        c,
        "hostname = localhost
submission_relay_host = 127.0.0.1
submission_relay_port = {relay}
submission_relay_trusted = yes"
    );
    login_service(
        c,
        "submission-login",
        ("submission", plain),
        ("submissions", tls),
        chroot,
    );
    let _ = writeln!(
        c,
        "protocol submission {{
  ssl = required
{greeting}}}"
    );
}
