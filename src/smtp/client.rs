//! One SMTP submission connection: TCP, TLS (implicit, or STARTTLS before anything
//! else), EHLO, AUTH XOAUTH2 / OAUTHBEARER, and the transaction (MAIL, RCPT, DATA),
//! each read with a bound and a deadline.

use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::{Instant, timeout, timeout_at};

use super::error::{SmtpError, Step};
use super::reply::{Extensions, MAX_LINE, Reply, ReplyReader};
use crate::config::{SmtpEndpoint, Tls};
use crate::secret::Secret;
use crate::server_text::Scrubber;
use crate::tls::{OpenError, Peer, TlsInfo, Trust};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Bytes written to the socket at a time while sending a message.
const WRITE_CHUNK: usize = 64 * 1024;

/// An open connection, greeted and EHLO'd (after TLS).
pub struct Connection {
    io: BufReader<Box<dyn Stream>>,
    host: String,
    port: u16,
    timeout: Duration,
    extensions: Extensions,
    tls: Option<TlsInfo>,
    scrubber: Scrubber,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// What the server said to the recipients of one transaction.
#[derive(Debug, Default)]
pub struct Envelope {
    pub accepted: Vec<String>,
    /// Refused recipients, with the refusal.
    pub refused: Vec<(String, SmtpError)>,
}

/// The name given in EHLO: this machine's name when it is a plain host name.
fn ehlo_name() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    let plain = !name.is_empty()
        && name.len() < 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if plain { name } else { "localhost".into() }
}

/// Connects, secures the connection, and reads what the server offers.
pub async fn connect(endpoint: &SmtpEndpoint, within: Duration) -> Result<Connection, SmtpError> {
    let host = endpoint.host.clone();
    let port = endpoint.port;
    let tcp = crate::tls::open(&host, port, endpoint.tls == Tls::Plain, within)
        .await
        .map_err(|e| match e {
            OpenError::Timeout => SmtpError::Timeout {
                host: host.clone(),
                step: Step::Greeting,
                after: within,
            },
            OpenError::Connect(source) => SmtpError::Connect {
                host: host.clone(),
                port,
                source,
            },
            OpenError::PlainNotLoopback(addr) => SmtpError::PlainNotLoopback {
                host: host.clone(),
                addr,
            },
        })?;
    let tcp: Box<dyn Stream> = Box::new(tcp);
    let peer = Peer {
        host: &endpoint.host,
        port,
        ca_file: endpoint.ca_file.as_deref(),
        plain_port_hint: "smtp_tls = \"starttls\" (port 587)",
    };
    let secure = |tcp| async move {
        let stream = crate::tls::handshake(peer, tcp, within, Trust::System)
            .await
            .map_err(|e| SmtpError::Tls(e.into_error()))?;
        let info = crate::tls::certificate_info(stream.ssl());
        Ok::<_, SmtpError>((stream, info))
    };
    let mut conn = match endpoint.tls {
        Tls::Implicit => {
            let (stream, info) = secure(tcp).await?;
            let mut c = Connection::new(Box::new(stream), endpoint, within);
            c.tls = info;
            c.expect(Step::Greeting, 220).await?;
            c
        }
        Tls::Plain => {
            let mut c = Connection::new(tcp, endpoint, within);
            c.expect(Step::Greeting, 220).await?;
            c
        }
        Tls::Starttls => {
            let mut plain = Connection::new(tcp, endpoint, within);
            plain.expect(Step::Greeting, 220).await?;
            plain.ehlo().await?;
            if !plain.extensions.starttls {
                return Err(SmtpError::NoStartTls { host });
            }
            plain.command(Step::StartTls, "STARTTLS", 220).await?;
            // Bytes sent after the 220, before TLS, would be read as if they came over
            // TLS (CVE-2011-0411 and kin): refuse them.
            if !plain.io.buffer().is_empty() {
                return Err(SmtpError::Protocol {
                    host,
                    step: Step::StartTls,
                    detail: "the server sent data after STARTTLS's 220, before TLS; refusing it"
                        .into(),
                });
            }
            let (stream, info) = secure(plain.io.into_inner()).await?;
            let mut c = Connection::new(Box::new(stream), endpoint, within);
            c.tls = info;
            c
        }
    };
    conn.ehlo().await?;
    tracing::debug!(host = %conn.host, port, extensions = ?conn.extensions, "SMTP connected");
    Ok(conn)
}

impl Connection {
    fn new(stream: Box<dyn Stream>, endpoint: &SmtpEndpoint, within: Duration) -> Connection {
        Connection {
            io: BufReader::new(stream),
            host: endpoint.host.clone(),
            port: endpoint.port,
            timeout: within,
            extensions: Extensions::default(),
            tls: None,
            scrubber: Scrubber::default(),
        }
    }

    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The server certificate's details (none over plain text).
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    async fn ehlo(&mut self) -> Result<(), SmtpError> {
        let reply = self
            .command(Step::Ehlo, &format!("EHLO {}", ehlo_name()), 250)
            .await?;
        self.extensions = Extensions::from_ehlo(&reply);
        Ok(())
    }

    /// AUTH with the token: XOAUTH2 where offered, else OAUTHBEARER; the mechanism used.
    pub async fn authenticate(
        &mut self,
        user: &str,
        token: &Secret,
    ) -> Result<&'static str, SmtpError> {
        let (mechanism, payload) = if self.extensions.offers("XOAUTH2") {
            ("XOAUTH2", crate::sasl::xoauth2(user, token))
        } else if self.extensions.offers("OAUTHBEARER") {
            (
                "OAUTHBEARER",
                crate::sasl::oauthbearer(user, &self.host, self.port, token),
            )
        } else {
            return Err(SmtpError::NoOAuthMechanism {
                host: self.host.clone(),
                offered: if self.extensions.auth.is_empty() {
                    "no AUTH at all".into()
                } else {
                    self.extensions.auth.join(" ")
                },
            });
        };
        let encoded = Secret::new(base64::engine::general_purpose::STANDARD.encode(&payload));
        drop(payload);
        self.scrubber = Scrubber::new(vec![token.clone(), encoded.clone()]);
        tracing::debug!(host = %self.host, mechanism, "SMTP AUTH");
        self.write(
            format!("AUTH {mechanism} {}\r\n", encoded.expose()).as_bytes(),
            &Step::Auth,
        )
        .await?;
        let mut reply = self.read_reply(&Step::Auth).await?;
        if reply.code == 334 {
            // A challenge carries the error (JSON, base64); the client answers it with
            // an empty response (XOAUTH2) or %x01 (OAUTHBEARER, RFC 7628) and gets the
            // final refusal.
            let answer: &[u8] = if mechanism == "XOAUTH2" {
                b"\r\n"
            } else {
                b"AQ==\r\n"
            };
            self.write(answer, &Step::Auth).await?;
            reply = self.read_reply(&Step::Auth).await?;
        }
        if reply.code == 235 {
            Ok(mechanism)
        } else {
            Err(self.refused(Step::Auth, reply))
        }
    }

    /// MAIL FROM and RCPT TO for each recipient, pipelined where the server allows.
    /// Fails if MAIL FROM is refused; refused recipients are returned, not failed.
    pub async fn envelope(
        &mut self,
        from: &str,
        recipients: &[String],
        size: u64,
        eight_bit: bool,
    ) -> Result<Envelope, SmtpError> {
        if let Some(limit) = self.extensions.size
            && size > limit
        {
            return Err(SmtpError::TooBig {
                host: self.host.clone(),
                size,
                limit,
            });
        }
        let mut mail = format!("MAIL FROM:<{from}>");
        if self.extensions.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit && self.extensions.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if !from.is_ascii() && self.extensions.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        let rcpts: Vec<String> = recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>"))
            .collect();
        let mut out = Envelope::default();
        if self.extensions.pipelining {
            let mut batch = format!("{mail}\r\n");
            for r in &rcpts {
                batch.push_str(r);
                batch.push_str("\r\n");
            }
            self.write(batch.as_bytes(), &Step::MailFrom).await?;
            let reply = self.read_reply(&Step::MailFrom).await?;
            if reply.code == 421 {
                // The server is closing (Dovecot does so when its relay is down): the
                // recipients' replies will not come.
                return Err(self.refused(Step::MailFrom, reply));
            }
            let mail_ok = reply.code == 250;
            let mail_err = (!mail_ok).then(|| self.refused(Step::MailFrom, reply));
            // Every reply is read, so the connection stays in step for RSET.
            for to in recipients {
                let step = Step::RcptTo(to.clone());
                let reply = self.read_reply(&step).await?;
                if reply.is_positive() {
                    out.accepted.push(to.clone());
                } else {
                    out.refused.push((to.clone(), self.refused(step, reply)));
                }
            }
            if let Some(e) = mail_err {
                return Err(e);
            }
        } else {
            self.command(Step::MailFrom, &mail, 250).await?;
            for (to, line) in recipients.iter().zip(&rcpts) {
                let step = Step::RcptTo(to.clone());
                self.write(format!("{line}\r\n").as_bytes(), &step).await?;
                let reply = self.read_reply(&step).await?;
                if reply.is_positive() {
                    out.accepted.push(to.clone());
                } else {
                    out.refused.push((to.clone(), self.refused(step, reply)));
                }
            }
        }
        Ok(out)
    }

    /// DATA and the message (CRLF line endings), dot-stuffed; the server's final reply
    /// once it took it.
    pub async fn data(&mut self, message: &[u8]) -> Result<Reply, SmtpError> {
        self.command(Step::Data, "DATA", 354).await?;
        let step = Step::EndOfData;
        let mut chunk = Vec::with_capacity(WRITE_CHUNK + 1024);
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                chunk.push(b'.');
            }
            chunk.extend_from_slice(line);
            if chunk.len() >= WRITE_CHUNK {
                self.write(&chunk, &step).await?;
                chunk.clear();
            }
        }
        if !message.is_empty() && !message.ends_with(b"\n") {
            chunk.extend_from_slice(b"\r\n");
        }
        chunk.extend_from_slice(b".\r\n");
        self.write(&chunk, &step).await?;
        // The server may check the whole message before it answers (RFC 5321 §4.5.3.2
        // suggests 10 minutes); three command timeouts are allowed.
        let reply = self.read_reply_within(&step, self.timeout * 3).await?;
        if reply.code == 250 {
            Ok(reply)
        } else {
            Err(self.refused(step, reply))
        }
    }

    /// RSET: ends a transaction that will not be completed, so nothing is sent.
    pub async fn rset(&mut self) -> Result<(), SmtpError> {
        self.command(Step::MailFrom, "RSET", 250).await.map(|_| ())
    }

    /// QUIT, not waiting long for the answer: the message is already taken.
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n", &Step::Greeting).await.is_ok() {
            let _ = timeout(Duration::from_secs(2), self.read_reply(&Step::Greeting)).await;
        }
    }

    async fn command(&mut self, step: Step, line: &str, want: u16) -> Result<Reply, SmtpError> {
        self.write(format!("{line}\r\n").as_bytes(), &step).await?;
        self.expect(step, want).await
    }

    async fn expect(&mut self, step: Step, want: u16) -> Result<Reply, SmtpError> {
        let reply = self.read_reply(&step).await?;
        if reply.code == want {
            Ok(reply)
        } else {
            Err(self.refused(step, reply))
        }
    }

    fn refused(&self, step: Step, reply: Reply) -> SmtpError {
        SmtpError::Refused {
            host: self.host.clone(),
            step,
            reply: Reply {
                code: reply.code,
                lines: vec![self.scrubber.clean(&reply.text())],
            },
        }
    }

    async fn write(&mut self, bytes: &[u8], step: &Step) -> Result<(), SmtpError> {
        let io = self.io.get_mut();
        let sent = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        match timeout(self.timeout, sent).await {
            Err(_) => Err(SmtpError::Timeout {
                host: self.host.clone(),
                step: step.clone(),
                after: self.timeout,
            }),
            Ok(Err(_)) => Err(SmtpError::ConnectionLost {
                host: self.host.clone(),
                step: step.clone(),
            }),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn read_reply(&mut self, step: &Step) -> Result<Reply, SmtpError> {
        self.read_reply_within(step, self.timeout).await
    }

    /// One reply, all its lines within `within`: a server that trickles lines cannot
    /// hold the connection beyond it.
    async fn read_reply_within(
        &mut self,
        step: &Step,
        within: Duration,
    ) -> Result<Reply, SmtpError> {
        let deadline = Instant::now() + within;
        let mut reader = ReplyReader::default();
        loop {
            let line = match timeout_at(deadline, self.read_line()).await {
                Err(_) => {
                    return Err(SmtpError::Timeout {
                        host: self.host.clone(),
                        step: step.clone(),
                        after: within,
                    });
                }
                Ok(Err(LineError::Closed)) => {
                    return Err(SmtpError::ConnectionLost {
                        host: self.host.clone(),
                        step: step.clone(),
                    });
                }
                Ok(Err(LineError::TooLong)) => {
                    return Err(SmtpError::Protocol {
                        host: self.host.clone(),
                        step: step.clone(),
                        detail: format!("a reply line longer than {MAX_LINE} bytes"),
                    });
                }
                Ok(Ok(line)) => line,
            };
            match reader.push(&line) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(e) => {
                    return Err(SmtpError::Protocol {
                        host: self.host.clone(),
                        step: step.clone(),
                        detail: self.scrubber.clean(&e.0),
                    });
                }
            }
        }
    }

    async fn read_line(&mut self) -> Result<String, LineError> {
        let mut line = Vec::new();
        loop {
            let buf = self.io.fill_buf().await.map_err(|_| LineError::Closed)?;
            if buf.is_empty() {
                return Err(LineError::Closed);
            }
            let (taken, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..taken]);
            self.io.consume(taken);
            if line.len() > MAX_LINE {
                return Err(LineError::TooLong);
            }
            if done {
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
        }
    }
}

enum LineError {
    Closed,
    TooLong,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Retry;
    use tokio::io::AsyncReadExt;

    fn endpoint() -> SmtpEndpoint {
        SmtpEndpoint {
            host: "smtp.example.com".into(),
            port: 587,
            tls: Tls::Starttls,
            ca_file: None,
        }
    }

    /// A connection whose server side is `script`: the replies it sends, in order,
    /// whatever it is sent; what it was sent comes back when the client is dropped.
    async fn scripted(
        extensions: &str,
        script: &'static str,
    ) -> (Connection, tokio::task::JoinHandle<String>) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut c = Connection::new(Box::new(client), &endpoint(), Duration::from_secs(5));
        c.extensions = Extensions::from_ehlo(&Reply {
            code: 250,
            lines: std::iter::once("hi")
                .chain(extensions.split(',').filter(|e| !e.is_empty()))
                .map(str::to_owned)
                .collect(),
        });
        let seen = tokio::spawn(async move {
            server.write_all(script.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let _ = server.read_to_end(&mut got).await;
            String::from_utf8_lossy(&got).into_owned()
        });
        (c, seen)
    }

    #[tokio::test]
    async fn a_message_over_the_announced_size_is_refused_before_mail_from() {
        let (mut c, seen) = scripted("SIZE 1000", "").await;
        let e = c
            .envelope("a@b.c", &["d@e.f".into()], 1001, false)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                SmtpError::TooBig {
                    size: 1001,
                    limit: 1000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.is_about_message());
        drop(c);
        assert_eq!(seen.await.unwrap(), "", "something was sent");
    }

    #[tokio::test]
    async fn lines_starting_with_a_dot_are_doubled_and_the_end_marked() {
        let (mut c, seen) = scripted(
            "PIPELINING,8BITMIME,SIZE 5000",
            "250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n",
        )
        .await;
        let env = c
            .envelope("a@b.c", &["d@e.f".into()], 20, true)
            .await
            .unwrap();
        assert_eq!(env.accepted, ["d@e.f"]);
        c.data(b"Subject: x\r\n\r\n.hidden\r\n.\r\nend")
            .await
            .unwrap();
        drop(c);
        assert_eq!(
            seen.await.unwrap(),
            "MAIL FROM:<a@b.c> SIZE=20 BODY=8BITMIME\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: x\r\n\r\n..hidden\r\n..\r\nend\r\n.\r\n"
        );
    }

    /// XOAUTH2's error challenge is answered with an empty line; the refusal keeps the
    /// server's words and never the token, even when the server echoes it.
    #[tokio::test]
    async fn a_refused_token_is_answered_and_never_shown() {
        let token = Secret::new("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secret-part");
        let (mut c, seen) = scripted(
            "AUTH XOAUTH2",
            "334 eyJzdGF0dXMiOiI0MDEifQ==\r\n535 5.7.3 Authentication unsuccessful eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secret-part\r\n",
        )
        .await;
        let e = c
            .authenticate("jane@contoso.com", &token)
            .await
            .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("535 5.7.3 Authentication unsuccessful [REDACTED]"),
            "{shown}"
        );
        assert!(!shown.contains("secret-part"), "{shown}");
        assert_eq!(e.retry(), Retry::NewToken);
        drop(c);
        let sent = seen.await.unwrap();
        assert!(sent.starts_with("AUTH XOAUTH2 dXNlcj1qYW5l"), "{sent}");
        assert!(
            sent.ends_with("\r\n\r\n"),
            "the challenge was not answered: {sent:?}"
        );
    }
}
