//! The SMTP parts of the test environment, driven by a minimal hand-written client:
//! Dovecot's submission service relaying to the sink and on into a mailbox, what a
//! client sees when the relay refuses or is down, and the scripted Microsoft server.

use std::time::Duration;

use base64::Engine as _;
use mailsync_testenv::smtp_script::microsoft;
use mailsync_testenv::{
    Dovecot, DovecotOptions, Idp, Profile, Received, ScriptedSmtp, SmtpSink, SmtpTls, XOAuth2,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const JANE: &str = "jane@example.com";
const BOB: &str = "bob@example.com";
const WAIT: Duration = Duration::from_secs(5);

/// A message with a line starting with a dot, which the client doubles and the
/// server must undouble.
const MESSAGE: &[u8] =
    b"From: jane@example.com\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\n.hidden dot\r\nbye\r\n";

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn tls(stream: Box<dyn Io>, ca: &[u8]) -> Box<dyn Io> {
    let tls = async_native_tls::TlsConnector::new()
        .add_root_certificate(async_native_tls::Certificate::from_pem(ca).unwrap())
        .connect("localhost", stream)
        .await
        .expect("TLS handshake, verifying localhost against the test CA");
    Box::new(tls)
}

/// Just enough SMTP client to drive the servers by hand.
struct Client {
    io: BufReader<Box<dyn Io>>,
    ca: Vec<u8>,
}

impl Client {
    /// Connects (with TLS at once if `implicit_tls`) and returns the greeting too.
    async fn connect(port: u16, ca: &[u8], implicit_tls: bool) -> (Client, String) {
        let tcp: Box<dyn Io> = Box::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        let io = if implicit_tls {
            tls(tcp, ca).await
        } else {
            tcp
        };
        let mut client = Client {
            io: BufReader::new(io),
            ca: ca.to_vec(),
        };
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// One reply, its lines joined with `\n`; `<closed>` where the server hung up.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.io.read_line(&mut line))
                .await
                .expect("a reply within 5 s")
                .unwrap_or(0);
            if n == 0 {
                lines.push("<closed>".to_string());
                break;
            }
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        lines.join("\n")
    }

    async fn send_line(&mut self, line: &str) {
        // A server that hung up shows in the reply read next.
        let w = self.io.get_mut();
        let _ = w.write_all(format!("{line}\r\n").as_bytes()).await;
        let _ = w.flush().await;
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send_line(line).await;
        self.reply().await
    }

    async fn starttls(&mut self) {
        assert!(self.cmd("STARTTLS").await.starts_with("220 "));
        let placeholder: Box<dyn Io> = Box::new(tokio::io::duplex(1).0);
        let plain = std::mem::replace(&mut self.io, BufReader::new(placeholder));
        self.io = BufReader::new(tls(plain.into_inner(), &self.ca).await);
    }

    /// Jane's [`MESSAGE`] to Bob: the last reply (the end of DATA's, unless refused
    /// before).
    async fn send_to_bob(&mut self) -> String {
        let mut replies = self.transaction(JANE, &[BOB], MESSAGE).await;
        replies.pop().unwrap_or_default()
    }

    /// MAIL, RCPT for each of `to`, DATA and the dot-stuffed `message`: every reply, in
    /// order (the end of DATA last), stopping at DATA's refusal.
    async fn transaction(&mut self, from: &str, to: &[&str], message: &[u8]) -> Vec<String> {
        let mut replies = vec![self.cmd(&format!("MAIL FROM:<{from}>")).await];
        for rcpt in to {
            replies.push(self.cmd(&format!("RCPT TO:<{rcpt}>")).await);
        }
        replies.push(self.cmd("DATA").await);
        if !replies.last().unwrap().starts_with("354") {
            return replies;
        }
        let mut data = Vec::new();
        for line in message.split_inclusive(|b| *b == b'\n') {
            if line.starts_with(b".") {
                data.push(b'.');
            }
            data.extend_from_slice(line);
        }
        data.extend_from_slice(b".\r\n");
        let w = self.io.get_mut();
        w.write_all(&data).await.unwrap();
        w.flush().await.unwrap();
        replies.push(self.reply().await);
        replies
    }
}

fn xoauth2(user: &str, token: &str) -> String {
    let payload = XOAuth2::new(user, token).initial_response();
    base64::engine::general_purpose::STANDARD.encode(payload)
}

fn oauthbearer(user: &str, token: &str, port: u16) -> String {
    let payload =
        format!("n,a={user},\x01host=localhost\x01port={port}\x01auth=Bearer {token}\x01\x01");
    base64::engine::general_purpose::STANDARD.encode(payload)
}

/// The IdP, a sink delivering into the Dovecot, and the Dovecot with submission on.
async fn setup(profile: Profile) -> (Idp, SmtpSink, Dovecot) {
    let idp = Idp::start().await;
    idp.add_user(JANE);
    let sink = SmtpSink::start().unwrap();
    let dovecot = Dovecot::start(
        DovecotOptions::new(&idp)
            .profile(profile)
            .submission(sink.port()),
    )
    .await
    .unwrap();
    sink.deliver_to(&dovecot);
    (idp, sink, dovecot)
}

/// Logs in as Jane with XOAUTH2 on the implicit-TLS port.
async fn login(idp: &Idp, dovecot: &Dovecot) -> Client {
    let token = idp.issue_access_token("app", JANE);
    let port = dovecot.submissions_port().unwrap();
    let (mut client, greeting) = Client::connect(port, &dovecot.ca_pem(), true).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    client.cmd("EHLO client.example").await;
    let auth = client
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(JANE, &token)))
        .await;
    assert_eq!(auth, "235 2.7.0 Logged in.");
    client
}

/// A fresh session sends Jane's message to Bob.
async fn assert_sends(idp: &Idp, dovecot: &Dovecot) {
    let sent = login(idp, dovecot).await.send_to_bob().await;
    assert!(sent.starts_with("250 "), "{sent}");
}

#[tokio::test]
async fn xoauth2_on_submissions_reaches_the_sink_and_the_inbox() {
    let (idp, sink, dovecot) = setup(Profile::Full).await;
    assert!(dovecot.submission_port().is_some());
    let token = idp.issue_access_token("app", JANE);
    let port = dovecot.submissions_port().unwrap();
    let (mut client, greeting) = Client::connect(port, &dovecot.ca_pem(), true).await;
    assert_eq!(greeting, "220 localhost Dovecot (Debian) ready.");
    let ehlo = client.cmd("EHLO client.example").await;
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER"),
        "{ehlo}"
    );
    let auth = client
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(JANE, &token)))
        .await;
    assert_eq!(auth, "235 2.7.0 Logged in.");
    let sent = client.send_to_bob().await;
    assert!(sent.starts_with("250 "), "{sent}");
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye");

    let got = sink.wait_for(1, WAIT).await.unwrap();
    let Received {
        mail_from,
        rcpt_to,
        data,
    } = &got[0];
    assert_eq!(
        (mail_from.as_str(), rcpt_to.as_slice()),
        (JANE, &[BOB.to_string()][..])
    );
    // Dovecot puts its Received: line first; the rest is the message, undoubled dot
    // and all.
    assert!(
        data.starts_with(b"Received: from client.example"),
        "{}",
        String::from_utf8_lossy(data)
    );
    assert!(data.ends_with(MESSAGE), "{}", String::from_utf8_lossy(data));
    let inbox = dovecot.messages(BOB, "INBOX").await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(&inbox[0].body, data);
}

#[tokio::test]
async fn starttls_before_auth_then_oauthbearer_on_submission() {
    let (idp, sink, dovecot) = setup(Profile::Full).await;
    let port = dovecot.submission_port().unwrap();
    let (mut client, greeting) = Client::connect(port, &dovecot.ca_pem(), false).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    let ehlo = client.cmd("EHLO client.example").await;
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH offered before STARTTLS: {ehlo}"
    );
    let token = idp.issue_access_token("app", JANE);
    let auth = format!("AUTH OAUTHBEARER {}", oauthbearer(JANE, &token, port));
    assert_eq!(client.cmd(&auth).await, "530 5.7.0 TLS required.");
    client.starttls().await;
    let ehlo = client.cmd("EHLO client.example").await;
    assert!(ehlo.contains("OAUTHBEARER"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(client.cmd(&auth).await, "235 2.7.0 Logged in.");
    let sent = client.send_to_bob().await;
    assert!(sent.starts_with("250 "), "{sent}");
    let got = sink.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].data.ends_with(MESSAGE));
}

#[tokio::test]
async fn relay_refusals_reach_the_client() {
    let (idp, sink, dovecot) = setup(Profile::Exchange).await;
    sink.refuse_rcpt("Nobody@example.com", "550 5.1.1 User unknown");
    let port = dovecot.submissions_port().unwrap();
    let (mut client, greeting) = Client::connect(port, &dovecot.ca_pem(), true).await;
    assert_eq!(greeting, "220 localhost Microsoft ESMTP MAIL Service ready");
    let ehlo = client.cmd("EHLO client.example").await;
    assert!(ehlo.contains("250-AUTH PLAIN XOAUTH2\n"), "{ehlo}");
    drop(client);
    let mut client = login(&idp, &dovecot).await;

    // A refused recipient: Dovecot names it in the reply; the others get the message.
    let replies = client
        .transaction(JANE, &["nobody@example.com", BOB], MESSAGE)
        .await;
    assert_eq!(replies[1], "550 5.1.1 <nobody@example.com> User unknown");
    assert!(replies.last().unwrap().starts_with("250 "), "{replies:?}");
    assert_eq!(sink.wait_for(1, WAIT).await.unwrap()[0].rcpt_to, [BOB]);

    // Failures at the end of DATA come back verbatim, and the session goes on.
    sink.fail_next(1, "451 4.3.0 Try again later");
    assert_eq!(client.send_to_bob().await, "451 4.3.0 Try again later");
    sink.fail_next(1, "554 5.6.0 Message refused");
    assert_eq!(client.send_to_bob().await, "554 5.6.0 Message refused");
    let sent = client.send_to_bob().await;
    assert!(sent.starts_with("250 "), "{sent}");
    assert_eq!(sink.count(), 2);
    assert_eq!(dovecot.messages(BOB, "INBOX").await.unwrap().len(), 2);
}

#[tokio::test]
async fn relay_down_ends_the_session_with_421() {
    let (idp, sink, dovecot) = setup(Profile::Full).await;
    // Down in the middle of a transaction: Dovecot takes the data, then gives up.
    let mut client = login(&idp, &dovecot).await;
    assert_eq!(
        client.cmd("MAIL FROM:<jane@example.com>").await,
        "250 2.1.0 Ok"
    );
    assert_eq!(
        client.cmd("RCPT TO:<bob@example.com>").await,
        "250 2.1.5 Ok"
    );
    sink.stop();
    assert_eq!(client.cmd("DATA").await, "354 OK");
    assert_eq!(
        client.cmd("Subject: lost\r\n\r\nhi\r\n.").await,
        "421 4.4.0 localhost Lost connection to relay server (connection lost)"
    );
    assert_eq!(client.reply().await, "<closed>");

    // Down at login: unasked, right after it, which a client reads as the answer to its
    // next command.
    let mut client = login(&idp, &dovecot).await;
    assert_eq!(
        client.cmd("MAIL FROM:<jane@example.com>").await,
        "421 4.4.0 localhost Failed to connect to relay server (connect)"
    );
    assert_eq!(client.reply().await, "<closed>");

    sink.start_again().unwrap();
    assert_sends(&idp, &dovecot).await;
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn submission_ports_survive_stop_and_start_again() {
    let (idp, sink, mut dovecot) = setup(Profile::Full).await;
    let ports = (dovecot.submission_port(), dovecot.submissions_port());
    dovecot.stop().await;
    for port in [ports.0.unwrap(), ports.1.unwrap()] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).await.is_err(),
            "port {port} open while stopped"
        );
    }
    // restart() is stop() and start_again(): one round shows both.
    dovecot.start_again().await.unwrap();
    assert_eq!(
        (dovecot.submission_port(), dovecot.submissions_port()),
        ports
    );
    let (mut plain, _) = Client::connect(ports.0.unwrap(), &dovecot.ca_pem(), false).await;
    assert!(!plain.cmd("EHLO client.example").await.contains("AUTH"));
    assert_sends(&idp, &dovecot).await;
    assert_eq!(sink.count(), 1);
}

/// Connects to `server`, trusting its CA, and returns the greeting too.
async fn connect_scripted(server: &ScriptedSmtp, implicit_tls: bool) -> (Client, String) {
    let ca = std::fs::read(server.ca_file()).unwrap();
    Client::connect(server.port(), &ca, implicit_tls).await
}

#[tokio::test]
async fn scripted_auth_failure_with_implicit_tls() {
    let server = ScriptedSmtp::start(SmtpTls::Implicit).unwrap();
    server.reply_to_auth(microsoft::SMTP_AUTH_DISABLED);
    let (mut client, greeting) = connect_scripted(&server, true).await;
    assert!(
        greeting.contains(" Microsoft ESMTP MAIL Service ready at "),
        "{greeting}"
    );
    let ehlo = client.cmd("EHLO client.example").await;
    assert!(ehlo.contains("250-SIZE 157286400\n"), "{ehlo}");
    assert!(ehlo.contains("250-AUTH LOGIN XOAUTH2\n"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let auth = client
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(JANE, "secret-token")))
        .await;
    assert_eq!(auth, microsoft::SMTP_AUTH_DISABLED);
    assert_eq!(
        client.cmd("MAIL FROM:<jane@example.com>").await,
        "530 5.7.57 Client not authenticated to send mail."
    );
    assert_eq!(
        server.commands(),
        [
            "EHLO client.example",
            "AUTH XOAUTH2 <auth>",
            "MAIL FROM:<jane@example.com>"
        ]
    );
    assert_eq!(server.auth_users(), [JANE]);
    assert!(!format!("{:?}", server.commands()).contains("secret-token"));
}

#[tokio::test]
async fn scripted_auth_failure_after_starttls_then_a_refused_message() {
    let server = ScriptedSmtp::start(SmtpTls::StartTls).unwrap();
    server.reply_to_auth(microsoft::XOAUTH2_USER_MISMATCH);
    let (mut client, _) = connect_scripted(&server, false).await;
    let ehlo = client.cmd("EHLO client.example").await;
    assert!(
        ehlo.contains("250-STARTTLS\n") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(
        client.cmd("AUTH XOAUTH2").await,
        "504 5.7.4 Unrecognized authentication type"
    );
    client.starttls().await;
    let ehlo = client.cmd("EHLO client.example").await;
    assert!(ehlo.contains("250-AUTH LOGIN XOAUTH2\n"), "{ehlo}");
    // Without an initial response: the payload follows the empty challenge (`334 `,
    // which the client's reply reader trims).
    assert_eq!(client.cmd("AUTH XOAUTH2").await, "334");
    assert_eq!(
        client.cmd(&xoauth2(JANE, "secret-token")).await,
        microsoft::XOAUTH2_USER_MISMATCH
    );

    // Logged in, the message is refused at its end; the client resets.
    server.clear_script();
    server.reply_to_data_end(microsoft::SEND_AS_DENIED);
    assert_eq!(client.cmd("AUTH XOAUTH2").await, "334");
    assert!(client.cmd(&xoauth2(JANE, "t")).await.starts_with("235 "));
    assert_eq!(client.send_to_bob().await, microsoft::SEND_AS_DENIED);
    assert_eq!(client.cmd("RSET").await, "250 2.0.0 Resetting");
    let commands = server.commands();
    assert_eq!(
        commands,
        [
            "EHLO client.example",
            "AUTH XOAUTH2",
            "STARTTLS",
            "EHLO client.example",
            "AUTH XOAUTH2",
            "<auth>",
            "AUTH XOAUTH2",
            "<auth>",
            "MAIL FROM:<jane@example.com>",
            "RCPT TO:<bob@example.com>",
            "DATA",
            "RSET"
        ]
    );
    assert_eq!(server.messages()[0].data, MESSAGE);

    // Nothing scripted: Microsoft's happy path.
    server.clear_script();
    let sent = client.send_to_bob().await;
    assert!(sent.starts_with("250 2.0.0 OK <2@"), "{sent}");
    assert_eq!(
        client.cmd("QUIT").await,
        "221 2.0.0 Service closing transmission channel"
    );
    let messages = server.messages();
    assert_eq!(
        (messages.len(), messages[1].rcpt_to.as_slice()),
        (2, &[BOB.to_string()][..])
    );
}
