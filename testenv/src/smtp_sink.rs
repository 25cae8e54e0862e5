//! `SmtpSink`: the SMTP server a test Dovecot's submission service relays to (see
//! [`crate::DovecotOptions::submission`]). It records every message it accepts and can
//! store it in the recipients' INBOX on the test Dovecot, so that a message sent with
//! `mailsync send` shows up in a mailbox mailsync then syncs.
//!
//! It speaks the ESMTP Dovecot's relay client uses (EHLO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT; PIPELINING, 8BITMIME, SIZE, ENHANCEDSTATUSCODES), plain text on
//! 127.0.0.1, on its own thread and runtime. What Dovecot makes of the sink's answers,
//! as its client sees them (Dovecot 2.3.19, checked by `testenv/tests/smtp.rs`):
//! - Dovecot opens its relay connection when the client logs in, and passes MAIL, RCPT,
//!   DATA and RSET through one by one, so the client gets the sink's replies.
//! - A RCPT refused with `550 5.1.1 User unknown` reaches the client as
//!   `550 5.1.1 <ADDRESS> User unknown`: Dovecot puts the address after the enhanced code.
//! - A reply at the end of DATA ([`SmtpSink::fail_next`]) reaches the client verbatim,
//!   4xx and 5xx alike (`451 4.3.0 …`, `554 5.6.0 …`); the session stays usable.
//! - A RCPT refused with a 4xx likewise (`450 4.2.1 <ADDRESS> Mailbox busy`); with
//!   every recipient refused, DATA gets Dovecot's own `554 5.5.0 No valid recipients`.
//! - The sink stopped ([`SmtpSink::stop`]): AUTH still succeeds (`235 2.7.0 Logged
//!   in.`), then Dovecot sends, unasked, `421 4.4.0 localhost Failed to connect to relay
//!   server (connect)` and closes. A client reads it as the answer to its next command.
//! - The sink stopped after RCPT: DATA still gets Dovecot's `354 OK`, the end of the
//!   data `421 4.4.0 localhost Lost connection to relay server (connection lost)`, and
//!   Dovecot closes.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use mailsync_testenv::{Dovecot, DovecotOptions, Idp, SmtpSink};
//! let idp = Idp::start().await;
//! let sink = SmtpSink::start()?;
//! let dovecot = Dovecot::start(DovecotOptions::new(&idp).submission(sink.port())).await?;
//! sink.deliver_to(&dovecot);
//! // … a client submits on dovecot.submissions_port() …
//! let got = sink.wait_for(1, Duration::from_secs(5)).await?;
//! assert_eq!(got[0].rcpt_to, ["bob@example.com"]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::Dovecot;
use crate::loopback::LoopbackServer;
use crate::smtp_wire::{self, Data, Received};

/// The most recipients one transaction takes (more get `452 4.5.3`).
const MAX_RECIPIENTS: usize = 1000;

/// How long one `doveadm save` may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

const EHLO: &str = "250-localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 33554432\r\n250 ENHANCEDSTATUSCODES";

#[derive(Default)]
struct State {
    messages: Vec<Received>,
    /// Reply lines for RCPT TO, by address in lower case.
    refused: HashMap<String, String>,
    /// How many transactions still fail at the end of DATA, and with what.
    failures: (usize, String),
    /// The `dovecot.conf` of the Dovecot that delivery stores into.
    deliver: Option<PathBuf>,
    /// The sender's folder each accepted message is filed in too, if any.
    file_sent: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    /// The number of messages, for [`SmtpSink::wait_for`].
    count: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running sink; dropping it stops it.
pub struct SmtpSink {
    port: u16,
    shared: Arc<Shared>,
    server: Mutex<Option<LoopbackServer>>,
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("port", &self.port)
            .field("messages", &self.count())
            .finish()
    }
}

impl SmtpSink {
    /// Starts on a free port of 127.0.0.1, accepting everything and storing nothing.
    pub fn start() -> Result<SmtpSink> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            count: watch::channel(0).0,
        });
        let server = serve(0, shared.clone())?;
        Ok(SmtpSink {
            port: server.port(),
            shared,
            server: Mutex::new(Some(server)),
        })
    }

    /// The port (the same after [`SmtpSink::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, stores each accepted message in every recipient's INBOX on
    /// `dovecot` (`doveadm save`) before answering 250 to DATA, so "accepted" means "in
    /// the mailbox". If storing fails the client gets `451 4.3.0` and the message is not
    /// recorded (recipients before the failing one have it).
    pub fn deliver_to(&self, dovecot: &Dovecot) {
        self.shared.lock().deliver = Some(dovecot.config_path());
    }

    /// From now on, with delivery on, also files each accepted message in the
    /// sender's `folder` before answering 250, as Microsoft 365 and Gmail file
    /// submitted mail in Sent.
    pub fn file_sent_in(&self, folder: &str) {
        self.shared.lock().file_sent = Some(folder.to_owned());
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.lock().messages.clone()
    }

    /// How many messages were accepted.
    pub fn count(&self) -> usize {
        self.shared.lock().messages.len()
    }

    /// Waits until `n` messages were accepted and returns all of them; fails after
    /// `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let mut count = self.shared.count.subscribe();
        if tokio::time::timeout(timeout, count.wait_for(|c| *c >= n))
            .await
            .is_err()
        {
            bail!(
                "SMTP sink: {} of {n} messages after {timeout:?}",
                self.count()
            );
        }
        Ok(self.messages())
    }

    /// Answers RCPT TO for `address` (any case) with `reply`, a whole reply line such as
    /// `550 5.1.1 User unknown`, from now on.
    pub fn refuse_rcpt(&self, address: &str, reply: &str) {
        self.shared
            .lock()
            .refused
            .insert(address.to_lowercase(), smtp_wire::one_line(reply));
    }

    /// Answers the end of DATA of the next `n` transactions with `reply` (e.g.
    /// `451 4.3.0 Try again later`) instead of accepting them; they are not recorded
    /// nor delivered. The end of DATA, not MAIL FROM, because there a client has sent
    /// the whole message and must still not count it as sent. After a `421` reply the
    /// sink closes the connection, as RFC 5321 has it.
    pub fn fail_next(&self, n: usize, reply: &str) {
        self.shared.lock().failures = (n, smtp_wire::one_line(reply));
    }

    /// Stops: the port refuses connections and open ones close, as a relay that is
    /// down. Recorded messages are kept.
    pub fn stop(&self) {
        // Taken out first: dropping the server waits for its thread.
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(server);
    }

    /// Listens again on the same port after [`SmtpSink::stop`].
    pub fn start_again(&self) -> Result<()> {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if server.is_none() {
            *server = Some(serve(self.port, self.shared.clone())?);
        }
        Ok(())
    }

    /// Whether it is listening.
    pub fn is_running(&self) -> bool {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

fn serve(port: u16, shared: Arc<Shared>) -> Result<LoopbackServer> {
    LoopbackServer::start("mailsync-testenv-smtp-sink", port, move |tcp| {
        converse(tcp, shared.clone())
    })
}

/// The envelope of the transaction in progress.
#[derive(Default)]
struct Envelope {
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

async fn converse(tcp: TcpStream, shared: Arc<Shared>) {
    let mut io = BufReader::new(tcp);
    let mut envelope = Envelope::default();
    let mut reply = "220 localhost ESMTP mailsync-testenv sink ready".to_string();
    loop {
        // 421 means the server is closing the channel (RFC 5321 3.8).
        if smtp_wire::send(&mut io, &reply).await.is_err() || reply.starts_with("421") {
            return;
        }
        let Some(line) = smtp_wire::next_line(&mut io).await else {
            return;
        };
        let (text, verb) = smtp_wire::command(&line);
        reply = match verb.as_str() {
            "EHLO" => {
                envelope = Envelope::default();
                EHLO.to_string()
            }
            "HELO" => {
                envelope = Envelope::default();
                "250 localhost".to_string()
            }
            "MAIL" if envelope.mail_from.is_some() => "503 5.5.1 Nested MAIL command".into(),
            "MAIL" => match smtp_wire::path(&text, "FROM:") {
                Some(from) => {
                    envelope.mail_from = Some(from);
                    "250 2.1.0 Ok".into()
                }
                None => "501 5.5.4 Syntax: MAIL FROM:<address>".into(),
            },
            "RCPT" if envelope.mail_from.is_none() => "503 5.5.1 Need MAIL first".into(),
            "RCPT" => match smtp_wire::path(&text, "TO:") {
                None => "501 5.5.4 Syntax: RCPT TO:<address>".into(),
                Some(_) if envelope.rcpt_to.len() >= MAX_RECIPIENTS => {
                    "452 4.5.3 Too many recipients".into()
                }
                Some(to) => match shared.lock().refused.get(&to.to_lowercase()) {
                    Some(refusal) => refusal.clone(),
                    None => {
                        envelope.rcpt_to.push(to);
                        "250 2.1.5 Ok".into()
                    }
                },
            },
            "DATA" if envelope.rcpt_to.is_empty() => "554 5.5.1 No valid recipients".into(),
            "DATA" => {
                let go_ahead = "354 End data with <CR><LF>.<CR><LF>";
                let Some(data) = smtp_wire::next_data(&mut io, go_ahead).await else {
                    return;
                };
                let envelope = std::mem::take(&mut envelope);
                match data {
                    Data::TooBig => "552 5.3.4 Message too big for this sink".into(),
                    Data::Complete(data) => accept(&shared, envelope, data).await,
                }
            }
            "RSET" => {
                envelope = Envelope::default();
                "250 2.0.0 Ok".into()
            }
            "NOOP" => "250 2.0.0 Ok".into(),
            "QUIT" => {
                let _ = smtp_wire::send(&mut io, "221 2.0.0 Bye").await;
                return;
            }
            _ => "502 5.5.2 Command not implemented".into(),
        };
    }
}

/// The end of DATA: a scripted failure, else delivery (if on), then the record.
async fn accept(shared: &Shared, envelope: Envelope, data: Vec<u8>) -> String {
    let (failure, deliver, file_sent) = {
        let mut state = shared.lock();
        let failure = match &mut state.failures {
            (0, _) => None,
            (n, reply) => {
                *n -= 1;
                Some(reply.clone())
            }
        };
        (failure, state.deliver.clone(), state.file_sent.clone())
    };
    if let Some(reply) = failure {
        return reply;
    }
    if let Some(config) = deliver {
        for rcpt in &envelope.rcpt_to {
            if let Err(e) = save(&config, rcpt, "INBOX", &data).await {
                return smtp_wire::one_line(&format!(
                    "451 4.3.0 Delivery to <{rcpt}> failed: {e:#}"
                ));
            }
        }
        if let (Some(folder), Some(from)) = (file_sent, &envelope.mail_from)
            && let Err(e) = save(&config, from, &folder, &data).await
        {
            return smtp_wire::one_line(&format!("451 4.3.0 Filing in {folder} failed: {e:#}"));
        }
    }
    let received = Received {
        mail_from: envelope.mail_from.unwrap_or_default(),
        rcpt_to: envelope.rcpt_to,
        data,
    };
    let n = {
        let mut state = shared.lock();
        state.messages.push(received);
        state.messages.len()
    };
    shared.count.send_replace(n);
    format!("250 2.0.0 Ok: queued as {n}")
}

/// `doveadm -c CONFIG save -u USER -m FOLDER` with the message on stdin.
async fn save(config: &std::path::Path, user: &str, folder: &str, data: &[u8]) -> Result<()> {
    let mut child = tokio::process::Command::new("doveadm")
        .arg("-c")
        .arg(config)
        .args(["save", "-u", user, "-m", folder])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(data).await?;
    }
    let out = tokio::time::timeout(DELIVERY_TIMEOUT, child.wait_with_output()).await??;
    if !out.status.success() {
        bail!(
            "doveadm save: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
