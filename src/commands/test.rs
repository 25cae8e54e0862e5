//! `mailsync test`: checks an account step by step — config, DNS, TCP, TLS, token,
//! capabilities, AUTHENTICATE, LIST, each mapped folder, then sending: the scope, and
//! SMTP's DNS, TCP, TLS, EHLO, AUTH and MAIL FROM (then RSET: nothing is sent) —
//! printing a ✓ or ✗ line per step, and for each ✗ its cause and the fix. Exits 0 only
//! if every step passed.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use super::{CommandError, Exit};
use crate::auth::{AuthError, Sending, TokenSource};
use crate::config::{self, Account, Config, Tls};
use crate::imap::{self, ImapError};
use crate::smtp::SmtpError;
use crate::sync::login::context;
use crate::tls::TlsError;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The account (default: every account)
    pub account: Option<String>,
}

/// One checked step.
struct Step {
    name: String,
    ok: bool,
    detail: String,
    cause: Option<String>,
    fix: Option<String>,
}

impl Step {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Step {
        Step {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            cause: None,
            fix: None,
        }
    }
    fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        cause: impl Into<String>,
        fix: impl Into<String>,
    ) -> Step {
        let (cause, fix) = (cause.into(), fix.into());
        Step {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            cause: (!cause.is_empty()).then_some(cause),
            fix: (!fix.is_empty()).then_some(fix),
        }
    }
}

struct Report<'a> {
    out: &'a mut dyn Write,
    failed: usize,
}

impl Report<'_> {
    fn step(&mut self, s: Step) -> bool {
        let mark = if s.ok { "✓" } else { "✗" };
        let _ = writeln!(self.out, "{mark} {:<13} {}", s.name, s.detail);
        if let Some(c) = &s.cause {
            let _ = writeln!(self.out, "    cause: {c}");
        }
        if let Some(f) = &s.fix {
            let _ = writeln!(self.out, "    fix:   {f}");
        }
        if !s.ok {
            self.failed += 1;
        }
        s.ok
    }
    fn skip(&mut self, name: &str, why: &str) {
        let _ = writeln!(self.out, "– {name:<13} skipped: {why}");
    }
}

pub async fn run(path: &Path, args: &TestArgs) -> Result<Exit, CommandError> {
    let mut stdout = std::io::stdout();
    let mut report = Report {
        out: &mut stdout,
        failed: 0,
    };
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            report.step(Step::fail(
                "config",
                path.display().to_string(),
                e.to_string(),
                "correct the file at the line named",
            ));
            return Ok(Exit::Partial);
        }
    };
    let accounts = super::select_accounts(&config, args.account.as_deref())?;
    for (i, account) in accounts.iter().enumerate() {
        if i > 0 {
            let _ = writeln!(report.out);
        }
        check_account(&config, account, &mut report).await;
        check_smtp(&config, account, &mut report).await;
    }
    Ok(if report.failed == 0 {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

async fn check_account(config: &Config, account: &Account, r: &mut Report<'_>) {
    r.step(Step::pass(
        "config",
        format!(
            "{}: account {} ({}, {} flow, {})",
            config.path.display(),
            account.name,
            account.provider.as_str(),
            account.flow.as_str(),
            account.email
        ),
    ));
    let timeout = config.daemon.command_timeout;
    let host = &account.imap.host;
    let port = account.imap.port;

    let Some(addrs) = dns_step(r, "DNS", host, port, timeout, "imap_host").await else {
        return skip_rest(r, "no address");
    };
    if !tcp_step(
        r,
        "TCP",
        addrs[0],
        timeout,
        "check imap_port (993 for tls = \"implicit\", 143 for \"starttls\") and any firewall or proxy on the way",
    )
    .await
    {
        return skip_rest(r, "no connection");
    }

    // TLS and the greeting
    let client = match imap::connect(&account.imap, timeout).await {
        Ok(c) => c,
        Err(e) => {
            let (cause, fix) = match &e {
                ImapError::Tls(TlsError::Handshake { detail, hint, .. }) => {
                    (detail.clone(), hint.trim_start_matches("; ").to_owned())
                }
                ImapError::Tls(TlsError::CaFile { .. }) => (
                    e.to_string(),
                    "point ca_file at a readable PEM CA certificate".into(),
                ),
                ImapError::NoStartTls { .. } => {
                    (e.to_string(), "use tls = \"implicit\" on port 993".into())
                }
                other => (other.to_string(), String::new()),
            };
            r.step(Step::fail("TLS", format!("{host}:{port}"), cause, fix));
            return skip_rest(r, "no TLS session");
        }
    };
    match (client.tls_info(), account.imap.tls) {
        (Some(info), _) => {
            r.step(Step::pass("TLS", tls_detail(info)));
        }
        (None, Tls::Plain) => {
            r.step(Step::pass(
                "TLS",
                "plain text (allowed towards loopback only)",
            ));
        }
        (None, _) => {
            r.step(Step::pass("TLS", "verified"));
        }
    }

    // Token
    let mut tokens = match TokenSource::new(account, &config.daemon.state_dir) {
        Ok(t) => t,
        Err(e) => {
            token_failure(r, account, &e);
            return skip_rest(r, "no token");
        }
    };
    // Always a new one, never the stored one: this step checks that the identity
    // provider issues a token now (a stored token would hide e.g. an expired secret).
    let token = match tokens.request_access_token().await {
        Ok(t) => t,
        Err(e) => {
            token_failure(r, account, &e);
            return skip_rest(r, "no token");
        }
    };
    let minutes = tokens.expires_in().unwrap_or(Duration::ZERO).as_secs() / 60;
    r.step(Step::pass(
        "token",
        format!(
            "{} flow; access token valid for {minutes} min; scopes: {}",
            account.flow.as_str(),
            tokens.granted_scopes().join(" ")
        ),
    ));

    // Capabilities
    let caps = client.capabilities().clone();
    let mechanism = if caps.has("AUTH=XOAUTH2") {
        Some("XOAUTH2")
    } else if caps.has("AUTH=OAUTHBEARER") {
        Some("OAUTHBEARER")
    } else {
        None
    };
    match mechanism {
        Some(m) => {
            r.step(Step::pass(
                "capabilities",
                format!(
                    "AUTH={m} offered{}",
                    if caps.has("SASL-IR") {
                        " (with SASL-IR)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        None => {
            r.step(Step::fail(
                "capabilities",
                format!("offered: {}", caps.auth_mechanisms().join(" ")),
                "the server offers neither AUTH=XOAUTH2 nor AUTH=OAUTHBEARER",
                "OAuth login is impossible here; for Microsoft 365 check imap_host (outlook.office365.com); plaintext logins (LOGINDISABLED without TLS) need TLS",
            ));
            return skip_rest(r, "no OAuth mechanism");
        }
    }

    // AUTHENTICATE
    let mut session = match client.authenticate(&account.login_user, &token).await {
        Ok(s) => {
            r.step(Step::pass(
                "AUTHENTICATE",
                format!("{} as {}", mechanism.unwrap_or(""), account.login_user),
            ));
            s
        }
        Err(ImapError::AuthFailed(f)) => {
            let d = crate::auth::diagnose::imap_auth_failure(&f, &context(account));
            r.step(Step::fail(
                "AUTHENTICATE",
                f.server_text.clone(),
                d.cause,
                d.fix,
            ));
            return skip_rest(r, "not logged in");
        }
        Err(e) => {
            r.step(Step::fail(
                "AUTHENTICATE",
                "",
                e.to_string(),
                if e.is_transient() {
                    "transient: try again in a minute"
                } else {
                    ""
                },
            ));
            return skip_rest(r, "not logged in");
        }
    };

    // LIST
    let folders = match session.list().await {
        Ok(f) => {
            r.step(Step::pass("LIST", format!("{} folders", f.len())));
            f
        }
        Err(e) => {
            r.step(Step::fail("LIST", "", e.to_string(), ""));
            return;
        }
    };

    // Each mapped folder
    for m in &account.folders {
        let name = format!("folder {}", m.local);
        match config::roles::resolve(&m.remote, &folders) {
            Ok(f) => match session.select(&f.name).await {
                Ok(sel) => {
                    r.step(Step::pass(
                        name,
                        format!("{} → {} ({} messages)", m.remote, f.display, sel.exists),
                    ));
                }
                Err(e) => {
                    r.step(Step::fail(
                        name,
                        format!("{} → {}", m.remote, f.display),
                        format!("cannot select it: {e}"),
                        "check the mailbox permissions of this account",
                    ));
                }
            },
            Err(e) => {
                r.step(Step::fail(
                    name,
                    m.remote.to_string(),
                    e.to_string(),
                    format!(
                        "edit {}:{} (see `mailsync folders {}` for the names)",
                        config.path.display(),
                        m.line,
                        account.name
                    ),
                ));
            }
        }
    }
    session.logout().await;
}

/// Resolves `host`; the addresses, or `None` after a failed step.
async fn dns_step(
    r: &mut Report<'_>,
    name: &str,
    host: &str,
    port: u16,
    timeout: Duration,
    key: &str,
) -> Option<Vec<std::net::SocketAddr>> {
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                r.step(Step::fail(
                    name,
                    host,
                    format!("cannot resolve {host}: {e}"),
                    format!("check {key} for typos, and this machine's DNS and network"),
                ));
                return None;
            }
            Err(_) => {
                r.step(Step::fail(
                    name,
                    host,
                    format!("no DNS answer within {}s", timeout.as_secs()),
                    "check this machine's DNS resolver",
                ));
                return None;
            }
        };
    if addrs.is_empty() {
        r.step(Step::fail(
            name,
            host,
            format!("{host} has no address"),
            format!("check {key}"),
        ));
        return None;
    }
    r.step(Step::pass(
        name,
        format!(
            "{host} → {}",
            addrs
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    Some(addrs)
}

/// Connects to `addr`; whether it worked.
async fn tcp_step(
    r: &mut Report<'_>,
    name: &str,
    addr: std::net::SocketAddr,
    timeout: Duration,
    fix: &str,
) -> bool {
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => r.step(Step::pass(
            name,
            format!(
                "connected to {addr} in {} ms",
                started.elapsed().as_millis()
            ),
        )),
        Ok(Err(e)) => r.step(Step::fail(
            name,
            addr.to_string(),
            format!("cannot connect: {e}"),
            fix,
        )),
        Err(_) => r.step(Step::fail(
            name,
            addr.to_string(),
            format!("no answer within {}s", timeout.as_secs()),
            "a firewall may drop the traffic; check outbound access to the port",
        )),
    }
}

fn tls_detail(info: &crate::tls::TlsInfo) -> String {
    let warn = if info.days_left < 14 {
        " — expires soon"
    } else {
        ""
    };
    format!(
        "certificate {} (issuer {}), valid until {} ({} days){warn}",
        info.subject, info.issuer, info.not_after, info.days_left
    )
}

/// The sending steps: whether the sign-in allows SMTP, then DNS, TCP, TLS (or
/// STARTTLS), EHLO, AUTH and a MAIL FROM the server accepts, then RSET: nothing is sent.
async fn check_smtp(config: &Config, account: &Account, r: &mut Report<'_>) {
    let Some(smtp) = &account.smtp else {
        r.skip(
            "SMTP",
            "no smtp_host: this account does not send (set smtp_host to send with it)",
        );
        return;
    };
    let granted = crate::state::State::open(&config.daemon.state_dir)
        .and_then(|s| s.grant_summary(&account.name))
        .ok()
        .flatten()
        .map(|g| g.scopes)
        .unwrap_or_default();
    match crate::auth::sending(account, &granted) {
        Sending::NotGranted(why) => {
            r.step(Step::fail(
                "SMTP scope",
                "",
                format!("the sign-in does not allow sending: {why}"),
                "",
            ));
        }
        Sending::Allowed => {
            r.step(Step::pass("SMTP scope", "the sign-in allows sending"));
        }
        Sending::AppOnly => {
            r.step(Step::pass(
                "SMTP scope",
                "app-only: needs SMTP.SendAsApp granted to the app (AUTH below tells)",
            ));
        }
        Sending::Unknown => {}
    }
    let timeout = config.daemon.command_timeout;
    let Some(addrs) = dns_step(r, "SMTP DNS", &smtp.host, smtp.port, timeout, "smtp_host").await
    else {
        return skip_rest(r, "no address");
    };
    if !tcp_step(
        r,
        "SMTP TCP",
        addrs[0],
        timeout,
        "check smtp_port (587 for smtp_tls = \"starttls\", 465 for \"implicit\") and any firewall on the way (many networks block outgoing SMTP ports)",
    )
    .await
    {
        return skip_rest(r, "no connection");
    }
    let mut conn = match crate::smtp::connect(smtp, timeout).await {
        Ok(c) => c,
        Err(e) => {
            let (cause, fix) = match &e {
                SmtpError::Tls(TlsError::Handshake { detail, hint, .. }) => {
                    (detail.clone(), hint.trim_start_matches("; ").to_owned())
                }
                SmtpError::NoStartTls { .. } => (
                    e.to_string(),
                    "use smtp_tls = \"implicit\" with smtp_port = 465".into(),
                ),
                other => (other.to_string(), String::new()),
            };
            r.step(Step::fail(
                "SMTP TLS",
                format!("{}:{}", smtp.host, smtp.port),
                cause,
                fix,
            ));
            return skip_rest(r, "no TLS session");
        }
    };
    let how = match smtp.tls {
        Tls::Starttls => "STARTTLS, ",
        _ => "",
    };
    match conn.tls_info() {
        Some(info) => r.step(Step::pass("SMTP TLS", format!("{how}{}", tls_detail(info)))),
        None => r.step(Step::pass(
            "SMTP TLS",
            "plain text (allowed towards loopback only)",
        )),
    };
    let ext = conn.extensions().clone();
    let size = ext
        .size
        .map(|n| format!("; messages up to {}", super::human_bytes(n)))
        .unwrap_or_default();
    r.step(Step::pass(
        "SMTP EHLO",
        format!(
            "AUTH {}{size}{}",
            if ext.auth.is_empty() {
                "(none)".to_owned()
            } else {
                ext.auth.join(" ")
            },
            if ext.pipelining { "; PIPELINING" } else { "" }
        ),
    ));
    let token = match TokenSource::new(account, &config.daemon.state_dir) {
        Ok(mut t) => t.access_token().await,
        Err(e) => Err(e),
    };
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            r.skip("SMTP AUTH", &format!("no token: {e}"));
            conn.quit().await;
            return;
        }
    };
    match conn.authenticate(&account.login_user, &token).await {
        Ok(m) => r.step(Step::pass(
            "SMTP AUTH",
            format!("{m} as {}", account.login_user),
        )),
        Err(e) => {
            r.step(Step::fail("SMTP AUTH", "", e.to_string(), ""));
            conn.quit().await;
            return skip_rest(r, "not signed in");
        }
    };
    match conn.envelope(&account.email, &[], 0, false).await {
        Ok(_) => {
            r.step(Step::pass(
                "SMTP MAIL",
                format!(
                    "MAIL FROM:<{}> accepted; nothing sent (RSET)",
                    account.email
                ),
            ));
        }
        Err(e) => {
            r.step(Step::fail("SMTP MAIL", "", e.to_string(), ""));
        }
    }
    let _ = conn.rset().await;
    conn.quit().await;
}

fn token_failure(r: &mut Report<'_>, account: &Account, e: &AuthError) {
    let (cause, fix) = match e {
        AuthError::Rejected { diagnosis, .. } => (diagnosis.cause.clone(), diagnosis.fix.clone()),
        AuthError::NeedsConnect { reason, .. } => (
            format!("the stored sign-in is no longer valid: {reason}"),
            format!("run `mailsync connect {}`", account.name),
        ),
        AuthError::NotConnected { .. } => (
            "no stored sign-in for this account".into(),
            format!("run `mailsync connect {}`", account.name),
        ),
        AuthError::Transient { detail, .. } => (
            format!("the identity provider is unreachable or failing: {detail}"),
            "transient: try again in a minute".into(),
        ),
        other => (other.to_string(), String::new()),
    };
    r.step(Step::fail(
        "token",
        format!("{} flow", account.flow.as_str()),
        cause,
        fix,
    ));
}

fn skip_rest(r: &mut Report<'_>, why: &str) {
    r.skip("…", &format!("the remaining steps ({why})"));
}
