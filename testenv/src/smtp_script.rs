//! `ScriptedSmtp`: an SMTP server that answers like Microsoft 365's
//! `smtp.office365.com`, for the errors no real server produces on purpose (SMTP AUTH
//! disabled for the tenant, SendAs denied, throttling, the daily quota).
//!
//! It listens on 127.0.0.1 with TLS, implicit (like 465) or after STARTTLS (like 587),
//! presenting a certificate from the test CA (as the test Dovecot does). It greets and
//! answers EHLO as Microsoft does: `SIZE 157286400`, `PIPELINING`,
//! `ENHANCEDSTATUSCODES`, `8BITMIME`, and `STARTTLS` before TLS or `AUTH LOGIN XOAUTH2`
//! after it; before TLS, AUTH is refused (`504 5.7.4 Unrecognized authentication
//! type`). Everything is accepted unless a test scripts a reply for the AUTH step, MAIL
//! FROM, RCPT TO (per address) or the end of DATA; a scripted reply stays in force for
//! every later connection. A reply starting with `421` closes the connection after it.
//!
//! It records the commands it received (the AUTH argument and SASL responses as
//! `<auth>`: no token is kept), the user each AUTH named, and every message whose data
//! it read, whatever it answered, so a test can check that RSET was sent and DATA never
//! started. Microsoft's texts are in [`microsoft`].
//!
//! ```no_run
//! use mailsync_testenv::{ScriptedSmtp, SmtpTls, smtp_script::microsoft};
//! let server = ScriptedSmtp::start(SmtpTls::StartTls).unwrap();
//! server.reply_to_auth(microsoft::SMTP_AUTH_DISABLED);
//! // … the client connects to server.port(), trusting server.ca_file() …
//! assert!(!server.commands().iter().any(|c| c.starts_with("MAIL")));
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use base64::Engine as _;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;

use crate::loopback::LoopbackServer;
use crate::smtp_wire::{self, Data, Received};

/// Replies Microsoft 365 sends, verbatim.
pub mod microsoft {
    /// SMTP AUTH is turned off for the tenant (the default for new tenants).
    pub const SMTP_AUTH_DISABLED: &str = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.";
    /// A refused token or password.
    pub const AUTH_UNSUCCESSFUL: &str =
        "535 5.7.3 Authentication unsuccessful [SN4PR0601CA0002.namprd06.prod.outlook.com]";
    /// The XOAUTH2 user is not the token's.
    pub const XOAUTH2_USER_MISMATCH: &str = "501 5.5.124 Authentication failed, XOAUTH2 user is not valid or does not match the auth token";
    /// The signed-in user may not send as the From address (end of DATA).
    pub const SEND_AS_DENIED: &str = "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message.";
    /// No permission to send as the sender (MAIL FROM or end of DATA).
    pub const NO_SEND_AS_PERMISSION: &str =
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender";
    /// Throttling: too many concurrent submissions (end of DATA).
    pub const SENDER_THREAD_LIMIT: &str =
        "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded";
    /// The daily sending limit is reached (end of DATA).
    pub const DAILY_QUOTA_EXCEEDED: &str = "550 5.4.5 Daily user sending quota exceeded.";

    /// SendAs denied, naming the signed-in `user` and the `sender` it tried (end of
    /// DATA). Microsoft appends diagnostic data that varies; this is the stable part.
    pub fn send_as_denied(user: &str, sender: &str) -> String {
        format!(
            "554 5.2.252 SendAsDenied; {user} not allowed to send as {sender}; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message."
        )
    }
}

/// The host name in the greeting and EHLO.
const HOST: &str = "SN4PR0601CA0002.outlook.office365.com";

/// How a client reaches TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// TLS from the first byte, like port 465.
    Implicit,
    /// Plain text until STARTTLS, like port 587.
    StartTls,
}

/// Replies a test scripted; `None` is Microsoft's success.
#[derive(Clone, Debug, Default)]
struct Script {
    auth: Option<String>,
    mail_from: Option<String>,
    /// By address in lower case.
    rcpt: HashMap<String, String>,
    data_end: Option<String>,
}

#[derive(Default)]
struct Shared {
    script: Script,
    commands: Vec<String>,
    auth_users: Vec<String>,
    messages: Vec<Received>,
}

/// A running server; dropping it stops it.
pub struct ScriptedSmtp {
    server: LoopbackServer,
    shared: Arc<Mutex<Shared>>,
    tls_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for ScriptedSmtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedSmtp")
            .field("port", &self.port())
            .finish()
    }
}

impl ScriptedSmtp {
    /// Starts on a free port of 127.0.0.1 with a certificate from a CA of its own
    /// ([`ScriptedSmtp::ca_file`]).
    pub fn start(tls: SmtpTls) -> Result<ScriptedSmtp> {
        let dir = tempfile::Builder::new()
            .prefix("mailsync-smtp-script-")
            .tempdir()?;
        crate::dovecot::tls::write_tls_files(dir.path())?;
        let path = dir.path().to_path_buf();
        Self::launch(tls, path, Some(dir))
    }

    /// Starts presenting the certificate in `tls_dir` (`cert.pem`, `key.pem`; a test
    /// Dovecot's [`crate::Dovecot::dir`]), so that one CA file serves IMAP and SMTP.
    pub fn start_with_certificate(tls: SmtpTls, tls_dir: &Path) -> Result<ScriptedSmtp> {
        Self::launch(tls, tls_dir.to_path_buf(), None)
    }

    fn launch(tls: SmtpTls, tls_dir: PathBuf, dir: Option<tempfile::TempDir>) -> Result<Self> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        b.set_certificate_chain_file(tls_dir.join("cert.pem"))
            .context("SMTP server certificate")?;
        b.set_private_key_file(tls_dir.join("key.pem"), SslFiletype::PEM)
            .context("SMTP server key")?;
        let acceptor = Arc::new(b.build());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        let server = LoopbackServer::start("mailsync-testenv-smtp-script", 0, move |tcp| {
            serve(tcp, tls, acceptor.clone(), s.clone())
        })?;
        Ok(ScriptedSmtp {
            server,
            shared,
            tls_dir,
            _dir: dir,
        })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The CA certificate (PEM) a client must trust (`localhost` or `127.0.0.1`).
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir.join("ca.pem")
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// Answers AUTH, once the client sent its credentials, with `reply` (a whole line,
    /// e.g. [`microsoft::SMTP_AUTH_DISABLED`]); a 2xx reply logs the client in.
    pub fn reply_to_auth(&self, reply: &str) {
        self.lock().script.auth = Some(smtp_wire::one_line(reply));
    }

    /// Answers MAIL FROM with `reply`; unless it is 2xx no transaction starts.
    pub fn reply_to_mail_from(&self, reply: &str) {
        self.lock().script.mail_from = Some(smtp_wire::one_line(reply));
    }

    /// Answers RCPT TO for `address` (any case) with `reply`; unless it is 2xx the
    /// recipient is not taken.
    pub fn reply_to_rcpt(&self, address: &str, reply: &str) {
        self.lock()
            .script
            .rcpt
            .insert(address.to_lowercase(), smtp_wire::one_line(reply));
    }

    /// Answers the end of DATA with `reply` (the message is recorded all the same).
    pub fn reply_to_data_end(&self, reply: &str) {
        self.lock().script.data_end = Some(smtp_wire::one_line(reply));
    }

    /// Forgets every scripted reply: everything is accepted again.
    pub fn clear_script(&self) {
        self.lock().script = Script::default();
    }

    /// The command lines received, all connections in order, without line endings;
    /// AUTH as `AUTH XOAUTH2 <auth>` and each SASL response as `<auth>`.
    pub fn commands(&self) -> Vec<String> {
        self.lock().commands.clone()
    }

    /// The user each AUTH named (XOAUTH2 `user=`, LOGIN's user name), in order.
    pub fn auth_users(&self) -> Vec<String> {
        self.lock().auth_users.clone()
    }

    /// Every message whose data was read, whatever the answer.
    pub fn messages(&self) -> Vec<Received> {
        self.lock().messages.clone()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(
    tcp: TcpStream,
    tls: SmtpTls,
    acceptor: Arc<SslAcceptor>,
    shared: Arc<Mutex<Shared>>,
) {
    let greeting = format!(
        "220 {HOST} Microsoft ESMTP MAIL Service ready at {}",
        chrono::Utc::now().format("%a, %-d %b %Y %H:%M:%S %z")
    );
    match tls {
        SmtpTls::Implicit => {
            if let Some(tls) = accept_tls(&acceptor, tcp).await {
                converse(BufReader::new(tls), true, Some(greeting), &shared).await;
            }
        }
        SmtpTls::StartTls => {
            let Some(plain) = converse(BufReader::new(tcp), false, Some(greeting), &shared).await
            else {
                return;
            };
            if let Some(tls) = accept_tls(&acceptor, plain).await {
                converse(BufReader::new(tls), true, None, &shared).await;
            }
        }
    }
}

async fn accept_tls(
    acceptor: &SslAcceptor,
    tcp: TcpStream,
) -> Option<tokio_openssl::SslStream<TcpStream>> {
    let ssl = Ssl::new(acceptor.context()).ok()?;
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).ok()?;
    Pin::new(&mut tls).accept().await.ok()?;
    Some(tls)
}

/// Where a connection is.
#[derive(Default)]
struct Session {
    hello: bool,
    authenticated: bool,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

/// One stretch of a connection: before STARTTLS (`tls` false) or under TLS. Returns
/// the stream when the client asked for STARTTLS and was told to go ahead (what it
/// pipelined after STARTTLS is dropped, as a careful server does); `None` when the
/// connection ended.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: BufReader<S>,
    tls: bool,
    greeting: Option<String>,
    shared: &Mutex<Shared>,
) -> Option<S> {
    let mut session = Session::default();
    let mut reply = greeting;
    loop {
        if let Some(r) = &reply {
            smtp_wire::send(&mut io, r).await.ok()?;
            if r.starts_with("421") {
                return None;
            }
        }
        let line = smtp_wire::next_line(&mut io).await?;
        let (text, verb) = smtp_wire::command(&line);
        let recorded = if verb == "AUTH" {
            let mut parts = text.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(mech), Some(_)) => format!("{a} {mech} <auth>"),
                _ => text.clone(),
            }
        } else {
            text.clone()
        };
        lock(shared).commands.push(recorded);
        let script = lock(shared).script.clone();
        reply = Some(match verb.as_str() {
            "EHLO" => {
                session = Session {
                    hello: true,
                    ..Session::default()
                };
                let step = if tls {
                    "AUTH LOGIN XOAUTH2"
                } else {
                    "STARTTLS"
                };
                format!(
                    "250-{HOST} Hello [127.0.0.1]\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n\
                     250-ENHANCEDSTATUSCODES\r\n250-{step}\r\n250 8BITMIME"
                )
            }
            "HELO" => {
                session = Session {
                    hello: true,
                    ..Session::default()
                };
                format!("250 {HOST} Hello [127.0.0.1]")
            }
            "STARTTLS" if tls => "503 5.5.1 Bad sequence of commands".into(),
            "STARTTLS" => {
                smtp_wire::send(&mut io, "220 2.0.0 SMTP server ready")
                    .await
                    .ok()?;
                return Some(io.into_inner());
            }
            _ if !session.hello && matches!(verb.as_str(), "AUTH" | "MAIL" | "RCPT" | "DATA") => {
                "503 5.5.2 Send hello first".into()
            }
            "AUTH" if !tls => "504 5.7.4 Unrecognized authentication type".into(),
            "AUTH" if session.authenticated => "503 5.5.2 Already authenticated".into(),
            "AUTH" => match authenticate(&mut io, &text, shared).await? {
                Some(user) => {
                    lock(shared).auth_users.push(user);
                    let reply = or_success(script.auth, "235 2.7.0 Authentication successful");
                    session.authenticated = smtp_wire::positive(&reply);
                    reply
                }
                None => "504 5.7.4 Unrecognized authentication type".into(),
            },
            "MAIL" if !session.authenticated => {
                "530 5.7.57 Client not authenticated to send mail.".into()
            }
            "MAIL" if session.mail_from.is_some() => "503 5.5.2 Sender already specified".into(),
            "MAIL" => match smtp_wire::path(&text, "FROM:") {
                None => "501 5.5.4 Invalid arguments".into(),
                Some(from) => {
                    let reply = or_success(script.mail_from, "250 2.1.0 Sender OK");
                    session.mail_from = smtp_wire::positive(&reply).then_some(from);
                    reply
                }
            },
            "RCPT" if session.mail_from.is_none() => "503 5.5.2 Need mail command".into(),
            "RCPT" => match smtp_wire::path(&text, "TO:") {
                None => "501 5.5.4 Invalid arguments".into(),
                Some(to) => {
                    let scripted = script.rcpt.get(&to.to_lowercase()).cloned();
                    let reply = or_success(scripted, "250 2.1.5 Recipient OK");
                    session
                        .rcpt_to
                        .extend(smtp_wire::positive(&reply).then_some(to));
                    reply
                }
            },
            "DATA" if session.rcpt_to.is_empty() => "503 5.5.2 Need rcpt command".into(),
            "DATA" => {
                let go_ahead = "354 Start mail input; end with <CRLF>.<CRLF>";
                let data = smtp_wire::next_data(&mut io, go_ahead).await?;
                let mail_from = session.mail_from.take().unwrap_or_default();
                let rcpt_to = std::mem::take(&mut session.rcpt_to);
                match data {
                    Data::TooBig => {
                        "552 5.3.4 Message size exceeds fixed maximum message size".into()
                    }
                    Data::Complete(data) => {
                        let n = {
                            let mut s = lock(shared);
                            s.messages.push(Received {
                                mail_from,
                                rcpt_to,
                                data,
                            });
                            s.messages.len()
                        };
                        script.data_end.unwrap_or_else(|| {
                            format!(
                                "250 2.0.0 OK <{n}@scripted.example> [Hostname=SN4PR0601MB3701.namprd06.prod.outlook.com]"
                            )
                        })
                    }
                }
            }
            "RSET" => {
                session.mail_from = None;
                session.rcpt_to.clear();
                "250 2.0.0 Resetting".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "QUIT" => {
                let _ = smtp_wire::send(&mut io, "221 2.0.0 Service closing transmission channel")
                    .await;
                return None;
            }
            _ => format!("500 5.3.3 Unrecognized command '{verb}'"),
        });
    }
}

/// The scripted reply, else Microsoft's `success`.
fn or_success(scripted: Option<String>, success: &str) -> String {
    scripted.unwrap_or_else(|| success.to_string())
}

/// Reads the credentials of `AUTH MECH [initial-response]` (XOAUTH2 or LOGIN) and
/// returns the user they name, `Some(None)` for another mechanism, `None` when the
/// connection ended.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    text: &str,
    shared: &Mutex<Shared>,
) -> Option<Option<String>> {
    let mut parts = text.split(' ').skip(1);
    let mech = parts.next().unwrap_or_default().to_ascii_uppercase();
    let initial = parts.next().map(str::to_string);
    let decode = |b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    match mech.as_str() {
        "XOAUTH2" => {
            let payload = match initial {
                Some(ir) => ir,
                None => respond(io, "334 ", shared).await?,
            };
            let payload = decode(&payload);
            let user = payload
                .split('\x01')
                .find_map(|f| f.strip_prefix("user="))
                .unwrap_or_default();
            Some(Some(user.to_string()))
        }
        "LOGIN" => {
            let user = match initial {
                Some(ir) => ir,
                None => respond(io, "334 VXNlcm5hbWU6", shared).await?,
            };
            respond(io, "334 UGFzc3dvcmQ6", shared).await?;
            Some(Some(decode(&user)))
        }
        _ => Some(None),
    }
}

/// Sends a SASL challenge and reads the response, recorded as `<auth>`.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    challenge: &str,
    shared: &Mutex<Shared>,
) -> Option<String> {
    smtp_wire::send(io, challenge).await.ok()?;
    let line = smtp_wire::next_line(io).await?;
    lock(shared).commands.push("<auth>".into());
    Some(smtp_wire::command(&line).0)
}
