//! `mailsync send` against real parts: Dovecot's SMTP submission service (XOAUTH2
//! validated by the test identity provider, as for IMAP) relaying to a sink on
//! loopback that stores each message back into the test Dovecot, so what was sent is
//! then synced like any mail. The `full` profile is reached with implicit TLS (Gmail's
//! shape, port 465), `exchange` with STARTTLS (Microsoft 365's, port 587).

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use mailsync_testenv::SmtpSink;
use mailsync_testenv::dovecot::{DovecotOptions, Profile};

use crate::on_both_profiles;
use crate::support::{Env, Run, USER};

pub struct SendEnv {
    pub env: Env,
    pub sink: SmtpSink,
}

impl SendEnv {
    pub async fn start(profile: Profile) -> SendEnv {
        SendEnv::start_with(profile, "").await
    }

    /// With `extra` lines in the account table.
    pub async fn start_with(profile: Profile, extra: &str) -> SendEnv {
        SendEnv::start_tuned(profile, extra, |o| o).await
    }

    /// [`SendEnv::start_with`] on a Dovecot with its options adjusted by `tune`.
    pub async fn start_tuned(
        profile: Profile,
        extra: &str,
        tune: impl FnOnce(DovecotOptions) -> DovecotOptions,
    ) -> SendEnv {
        let mut env = Env::start_sending(profile, tune).await;
        let sink = env.sink.take().expect("a relay");
        let e = SendEnv { env, sink };
        e.configure(extra);
        e
    }

    /// The account's SMTP settings: implicit TLS on `full`, STARTTLS on `exchange`.
    pub fn smtp_lines(&self) -> String {
        let d = &self.env.dovecot;
        match self.env.profile {
            Profile::Exchange => format!(
                "smtp_host = \"localhost\"\nsmtp_port = {}\nsmtp_tls = \"starttls\"\n",
                d.submission_port().expect("submission on")
            ),
            _ => format!(
                "smtp_host = \"localhost\"\nsmtp_port = {}\nsmtp_tls = \"implicit\"\n",
                d.submissions_port().expect("submission on")
            ),
        }
    }

    pub fn configure(&self, extra: &str) {
        let text = self
            .env
            .config_text(&format!("{}{extra}", self.smtp_lines()));
        std::fs::write(self.env.config_path(), text).unwrap();
    }

    /// `mailsync ARGS` with `message` on standard input.
    pub async fn send(&self, args: &[&str], message: &[u8]) -> Run {
        let mut c = self.env.command(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let message = message.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut child = c.spawn().expect("run mailsync");
            let mut stdin = child.stdin.take().unwrap();
            // A sender that exits early closes its end: that is its answer.
            let _ = stdin.write_all(&message);
            drop(stdin);
            Run::from(child.wait_with_output().unwrap())
        })
        .await
        .unwrap()
    }

    /// The server's copies in a folder of messages whose bytes hold `needle`.
    pub async fn copies(&self, folder: &str, needle: &str) -> usize {
        self.env
            .dovecot
            .messages(USER, folder)
            .await
            .expect("server messages")
            .iter()
            .filter(|m| String::from_utf8_lossy(&m.body).contains(needle))
            .count()
    }
}

/// A message as neomutt writes it (LF line ends), with a Bcc, an 8-bit body, a line
/// starting with a dot, and a unique `tag` in the subject.
pub fn message(tag: &str) -> Vec<u8> {
    format!(
        "From: Jane <{USER}>\n\
         To: {USER}\n\
         Cc: Carol <carol@example.org>\n\
         Bcc: hidden@example.org\n\
         Subject: {tag}\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n\
         \n\
         Grüße aus Köln.\n\
         .a line that starts with a dot\n\
         .\n\
         The end.\n"
    )
    .into_bytes()
}

/// The Subject line of each message the relay took, in order.
pub fn subjects(got: &[mailsync_testenv::Received]) -> Vec<String> {
    got.iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data);
            text.lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

/// What a sent message looks like once it went through: CRLF, no Bcc, the body whole.
fn assert_sent_whole(data: &[u8], tag: &str) {
    let text = String::from_utf8_lossy(data);
    assert!(text.contains(&format!("Subject: {tag}\r\n")), "{text}");
    assert!(
        !text.contains("hidden@example.org"),
        "the Bcc was sent: {text}"
    );
    assert!(
        text.contains(
            "\r\n\r\nGrüße aus Köln.\r\n.a line that starts with a dot\r\n.\r\nThe end.\r\n"
        ),
        "the body changed on the way: {text:?}"
    );
    assert!(
        text.contains("Message-ID: <"),
        "no Message-ID was added: {text}"
    );
}

on_both_profiles!(a_message_goes_out_once_and_comes_back_by_sync);
/// The transport of each provider's shape; `-t` with the Bcc removed; the message
/// arrives whole, is synced back into the Maildir, and its copy is filed in Sent once.
async fn a_message_goes_out_once_and_comes_back_by_sync(profile: Profile) {
    let e = SendEnv::start(profile).await;
    let run = e
        .send(
            &["send", "-oi", "-oem", "-t", "-f", USER],
            &message("hello"),
        )
        .await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        run.stderr, "",
        "a sendmail says nothing when it sent: {run}"
    );
    let got = e.sink.messages();
    assert_eq!(got.len(), 1, "sent once: {got:?}");
    assert_eq!(got[0].mail_from, USER);
    let mut to = got[0].rcpt_to.clone();
    to.sort();
    assert_eq!(to, ["carol@example.org", "hidden@example.org", USER]);
    assert_sent_whole(&got[0].data, "hello");

    // Back by sync: the Inbox holds what was sent.
    e.env.sync().await;
    let inbox = crate::support::local_messages(&e.env.maildir("Inbox"));
    assert_eq!(inbox.len(), 1, "the message did not come back");
    assert_sent_whole(&inbox[0].0, "hello");
    e.env.assert_in_sync().await;

    // A custom server files no copy itself: mailsync filed one in Sent, once.
    assert_eq!(e.copies("Sent Items", "Subject: hello").await, 1);
    let flush = e.env.run(&["send", "--flush"]).await;
    assert_eq!(flush.code, 0, "{flush}");
    assert!(
        flush.stdout.contains("work: sent 0, waiting 0, failed 0"),
        "{flush}"
    );
    assert_eq!(e.copies("Sent Items", "Subject: hello").await, 1);
    assert_eq!(e.sink.count(), 1, "the flush sent it again");

    // Recipients on the command line, without -t; the account named first.
    let run = e
        .send(
            &["send", "work", "--", "dave@example.org"],
            &message("args"),
        )
        .await;
    assert_eq!(run.code, 0, "{run}");
    let got = e.sink.messages();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].rcpt_to, ["dave@example.org"]);
    assert_sent_whole(&got[1].data, "args");
}

on_both_profiles!(what_cannot_go_now_waits_and_goes_once);
/// The relay down, the SMTP server down, the token endpoint down: each time `send`
/// says it queued the message and exits 0; once the part is back, a flush sends each
/// message exactly once.
async fn what_cannot_go_now_waits_and_goes_once(profile: Profile) {
    let mut e = SendEnv::start(profile).await;

    e.sink.stop();
    let run = e.send(&["send", "-t"], &message("relay-down")).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("not sent yet"), "{run}");
    assert!(run.stderr.contains("--flush"), "{run}");
    let status = e.env.run(&["status"]).await;
    assert!(
        status.stdout.contains("1 waiting in the outbox"),
        "{status}"
    );
    e.sink.start_again().unwrap();

    e.env.dovecot.stop().await;
    let run = e.send(&["send", "-t"], &message("server-down")).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("cannot connect"), "{run}");
    e.env.dovecot.start_again().await.unwrap();

    // The kept token refused (a new one must be asked for), and the identity
    // provider down.
    e.env.idp.revoke_access_tokens();
    e.env
        .idp
        .fail_next_token_calls(50, mailsync_testenv::TokenFailure::Unavailable(503));
    let run = e.send(&["send", "-t"], &message("idp-down")).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("not sent yet"), "{run}");
    e.env.idp.clear_token_failures();
    assert_eq!(e.sink.count(), 0);

    let flush = e.env.run(&["send", "--flush"]).await;
    assert_eq!(flush.code, 0, "{flush}");
    assert!(
        flush.stdout.contains("sent 3, waiting 0, failed 0"),
        "{flush}"
    );
    let got = e.sink.messages();
    let subjects = subjects(&got);
    assert_eq!(
        subjects,
        [
            "Subject: relay-down",
            "Subject: server-down",
            "Subject: idp-down"
        ],
        "each exactly once, in order"
    );
    let again = e.env.run(&["send", "--flush"]).await;
    assert!(again.stdout.contains("sent 0, waiting 0"), "{again}");
    assert_eq!(e.sink.count(), 3);
}

on_both_profiles!(a_refusal_is_reported_and_the_message_kept);
/// A recipient refused for good: reported with the server's reason, the message kept
/// as a file; the others still get it.
async fn a_refusal_is_reported_and_the_message_kept(profile: Profile) {
    let e = SendEnv::start(profile).await;
    e.sink.refuse_rcpt(
        "nobody@example.org",
        "550 5.1.1 <nobody@example.org> User unknown",
    );
    let run = e
        .send(&["send", "nobody@example.org"], &message("refused"))
        .await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("5.1.1"), "{run}");
    assert!(
        run.stderr.contains("does not exist"),
        "the cause is named: {run}"
    );
    let kept = run
        .stderr
        .split("kept in ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .expect("the file is named");
    let bytes = std::fs::read(&kept).expect("the message is kept");
    assert_sent_whole(&bytes, "refused");
    assert_eq!(e.sink.count(), 0);

    let run = e
        .send(&["send", "nobody@example.org", USER], &message("partly"))
        .await;
    assert_eq!(run.code, 1, "sent to one, refused for the other: {run}");
    assert_eq!(e.sink.messages()[0].rcpt_to, [USER]);
    let status = e.env.run(&["status"]).await;
    assert!(status.stdout.contains("2 failed"), "{status}");
    assert!(status.stdout.contains("User unknown"), "{status}");

    // A transient refusal at the end of DATA: queued, not failed.
    e.sink.fail_next(1, "451 4.3.0 Try again later");
    let run = e.send(&["send", USER], &message("later")).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("451 4.3.0"), "{run}");
    let flush = e.env.run(&["send", "--flush"]).await;
    assert!(
        flush.stdout.contains("sent 1, waiting 0, failed 0"),
        "{flush}"
    );

    // `stop` keeps what was never sent as files, and the outbox goes with the account.
    let stop = e.env.run(&["stop", "work"]).await;
    assert_eq!(stop.code, 0, "{stop}");
    let unsent = e.env.state_dir().join("unsent/work");
    assert!(
        stop.stdout.contains(&format!(
            "outbox: 2 messages never sent, saved in {}",
            unsent.display()
        )),
        "{stop}"
    );
    let mut kept: Vec<String> = std::fs::read_dir(&unsent)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| String::from_utf8(std::fs::read(p).unwrap()).unwrap())
        .collect();
    kept.sort();
    assert!(
        kept.len() == 2
            && kept.iter().any(|k| k.contains("Subject: partly"))
            && kept.iter().any(|k| k.contains("Subject: refused")),
        "{kept:?}"
    );
    let envelopes: Vec<String> = std::fs::read_dir(&unsent)
        .unwrap()
        .filter_map(|f| {
            let p = f.unwrap().path();
            (p.extension()? == "envelope").then(|| std::fs::read_to_string(p).unwrap())
        })
        .collect();
    assert!(
        envelopes
            .iter()
            .any(|e| e.starts_with(&format!("mailsync send -f {USER} -- nobody@example.org < "))),
        "the envelope is kept beside the message: {envelopes:?}"
    );
    let db = std::fs::read(e.env.state_dir().join("state.sqlite")).unwrap();
    assert!(
        !crate::support::tokens::contains(&db, b"Subject: refused"),
        "the outbox stayed in the database"
    );
}

on_both_profiles!(an_expired_token_is_replaced_and_the_message_sent);
/// The token kept from the last run was revoked: the server refuses it, a new one is
/// asked for once, and the message goes.
async fn an_expired_token_is_replaced_and_the_message_sent(profile: Profile) {
    let e = SendEnv::start(profile).await;
    let run = e.send(&["send", USER], &message("first")).await;
    assert_eq!(run.code, 0, "{run}");
    let calls = e.env.idp.token_calls();
    e.env.idp.revoke_access_tokens();
    let run = e.send(&["send", USER], &message("second")).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(e.sink.count(), 2);
    assert_eq!(
        e.env.idp.token_calls(),
        calls + 1,
        "the refused token was replaced once"
    );
}

/// One of Microsoft 365's refusals, from a scripted server (no real server refuses so
/// on purpose): what `send` exits with, and the words its error must hold.
struct Case {
    at: &'static str,
    reply: String,
    exit: i32,
    says: &'static str,
}

/// Each refusal of README's "Sending" table gets its cause and fix; a refusal of the
/// account stops before MAIL, one of the message before (or after) DATA, throttling
/// queues. A refused sign-in is tried once more with a new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsoft_refusals_name_the_cause_and_the_fix() {
    use mailsync_testenv::smtp_script::microsoft;
    use mailsync_testenv::{ScriptedSmtp, SmtpTls};
    let env = Env::start(Profile::Exchange).await;
    let server =
        ScriptedSmtp::start_with_certificate(SmtpTls::StartTls, env.dovecot.dir()).unwrap();
    let text = env.config_text(&format!(
        "smtp_host = \"localhost\"\nsmtp_port = {}\nsmtp_tls = \"starttls\"\nsave_sent = false\n",
        server.port()
    ));
    std::fs::write(env.config_path(), text).unwrap();
    let e = SendEnv {
        env,
        sink: SmtpSink::start().unwrap(),
    };
    let cases = [
        Case {
            at: "auth",
            reply: microsoft::SMTP_AUTH_DISABLED.into(),
            exit: 2,
            says: "Set-TransportConfig -SmtpClientAuthenticationDisabled $false",
        },
        Case {
            at: "auth",
            reply: microsoft::AUTH_UNSUCCESSFUL.into(),
            exit: 2,
            says: "Set-CASMailbox -Identity <address> -SmtpClientAuthenticationDisabled $false",
        },
        Case {
            at: "auth",
            reply: microsoft::XOAUTH2_USER_MISMATCH.into(),
            exit: 2,
            says: "set login_user",
        },
        Case {
            at: "mail",
            reply: microsoft::NO_SEND_AS_PERMISSION.into(),
            exit: 2,
            says: "Add-RecipientPermission",
        },
        Case {
            at: "data",
            reply: microsoft::SEND_AS_DENIED.into(),
            exit: 2,
            says: "grant Send As",
        },
        Case {
            at: "data",
            reply: microsoft::send_as_denied(USER, "boss@example.org"),
            exit: 2,
            says: "grant Send As",
        },
        Case {
            at: "data",
            reply: microsoft::SENDER_THREAD_LIMIT.into(),
            exit: 0,
            says: "30 messages a minute",
        },
        Case {
            at: "data",
            reply: microsoft::DAILY_QUOTA_EXCEEDED.into(),
            exit: 0,
            says: "10,000 recipients a day",
        },
    ];
    for case in &cases {
        server.clear_script();
        match case.at {
            "auth" => server.reply_to_auth(&case.reply),
            "mail" => server.reply_to_mail_from(&case.reply),
            _ => server.reply_to_data_end(&case.reply),
        }
        let before = server.commands().len();
        let run = e.send(&["send", USER], &message("scripted")).await;
        let said = &case.reply[..9];
        assert_eq!(run.code, case.exit, "{said}: {run}");
        assert!(
            run.stderr.contains(said),
            "{said}: the server's words: {run}"
        );
        assert!(run.stderr.contains(case.says), "{said}: {run}");
        assert_eq!(run.stderr.lines().count(), 1, "{said}: one line: {run}");
        let commands = server.commands()[before..].to_vec();
        assert!(commands.iter().any(|c| c == "STARTTLS"), "{commands:?}");
        let auths = commands.iter().filter(|c| c.starts_with("AUTH")).count();
        let mails = commands.iter().filter(|c| c.starts_with("MAIL")).count();
        let datas = commands.iter().filter(|c| *c == "DATA").count();
        match case.at {
            "auth" => {
                assert_eq!(auths, 2, "{said}: a new token is tried once: {commands:?}");
                assert_eq!(mails, 0, "{said}: {commands:?}");
            }
            "mail" => {
                assert_eq!(datas, 0, "{said}: DATA after a refused MAIL: {commands:?}");
                assert!(commands.iter().any(|c| c == "RSET"), "{said}: {commands:?}");
            }
            _ => assert_eq!(datas, 1, "{said}: {commands:?}"),
        }
        assert!(
            !commands
                .iter()
                .any(|c| c.contains("eyJ") || c.contains("Bearer")),
            "a token was recorded: {commands:?}"
        );
    }
    let status = e.env.run(&["status"]).await;
    assert!(
        status.stdout.contains("2 waiting in the outbox"),
        "{status}"
    );
    assert!(status.stdout.contains("6 failed"), "{status}");

    // `mailsync test` reports the same refusal as a step, and sends nothing.
    server.clear_script();
    server.reply_to_auth(microsoft::SMTP_AUTH_DISABLED);
    let before = server.commands().len();
    let run = e.env.run(&["test", "work"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout
            .contains("✓ SMTP EHLO     AUTH LOGIN XOAUTH2; messages up to 157.3 MB; PIPELINING"),
        "{run}"
    );
    assert!(run.stdout.contains("✗ SMTP AUTH"), "{run}");
    assert!(run.stdout.contains("Set-TransportConfig"), "{run}");
    let commands = server.commands()[before..].to_vec();
    assert!(
        !commands
            .iter()
            .any(|c| c.starts_with("MAIL") || c == "DATA"),
        "{commands:?}"
    );
}

on_both_profiles!(test_checks_sending_and_sends_nothing);
/// `mailsync test` goes through SMTP up to an accepted MAIL FROM, then RSET.
async fn test_checks_sending_and_sends_nothing(profile: Profile) {
    let e = SendEnv::start(profile).await;
    let run = e.env.run(&["test", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    for step in [
        "✓ SMTP DNS",
        "✓ SMTP TCP",
        "✓ SMTP TLS",
        "✓ SMTP EHLO",
        "✓ SMTP AUTH",
        "✓ SMTP MAIL",
    ] {
        assert!(run.stdout.contains(step), "{step}: {run}");
    }
    assert!(
        run.stdout.contains("CN=localhost"),
        "the certificate is shown: {run}"
    );
    if profile == Profile::Exchange {
        assert!(run.stdout.contains("STARTTLS, certificate"), "{run}");
    }
    assert!(run.stdout.contains("nothing sent (RSET)"), "{run}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(e.sink.count(), 0, "test sent a message");
}

/// A Microsoft 365 account signed in before mailsync could send: its grant has no
/// SMTP.Send. It goes on syncing (its refreshes ask for what it was granted: asking
/// more is AADSTS65001, which would stop syncing too), `send` and `status` say to
/// connect again, and after that it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_connected_before_sending_is_told_to_connect_again() {
    use crate::connect::{approve_as, connect_args_for, run_connect_with};
    let e = SendEnv::start(Profile::Full).await;
    let env = &e.env;
    env.idp.set_device_code_interval(Duration::from_millis(200));
    // A config with no account yet, its state kept in the test's directory.
    std::fs::write(
        env.config_path(),
        format!(
            "[daemon]\nstate_dir = {}\ncommand_timeout = \"20s\"\n",
            crate::support::toml_string(&env.state_dir().display().to_string())
        ),
    )
    .unwrap();
    let mut args = connect_args_for(env, "device", "microsoft");
    for s in [
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "offline_access",
    ] {
        args.push("--scope".into());
        args.push(s.into());
    }
    let idp = env.idp.clone();
    let (code, out, err) =
        run_connect_with(env, args, move |line| approve_as(&idp, line, USER)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    // The upgrade: the account's scopes are the defaults again, which now hold
    // SMTP.Send; the submission server is this test's.
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let scopes = text
        .lines()
        .find(|l| l.starts_with("scopes = "))
        .expect("connect wrote the scopes")
        .to_owned();
    let text = text.replace(&format!("{scopes}\n"), "");
    std::fs::write(env.config_path(), text).unwrap();
    env.idp.expire_access_tokens();

    let sync = env.run(&["sync"]).await;
    assert_eq!(sync.code, 0, "the old grant stopped syncing: {sync}");
    let run = e.send(&["send", USER], &message("old grant")).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("connected before mailsync could send")
            && run.stderr.contains("run `mailsync connect work` again"),
        "{run}"
    );
    assert_eq!(e.sink.count(), 0);
    let status = env.run(&["status"]).await;
    assert!(
        status
            .stdout
            .contains("sending: no: it was connected before"),
        "{status}"
    );

    let idp = env.idp.clone();
    let (code, out, err) =
        run_connect_with(env, vec!["connect".into(), "work".into()], move |line| {
            approve_as(&idp, line, USER)
        })
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let run = e.send(&["send", USER], &message("new grant")).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(e.sink.count(), 1);
    let status = env.run(&["status"]).await;
    assert!(status.stdout.contains("sending: allowed"), "{status}");
}

/// A real mail program: neomutt (Debian's) with `set sendmail="mailsync send"` sends
/// a message in a non-interactive run, with the flags it passes (-f, -B8BITMIME, -N,
/// -R, --); it arrives with its body intact and the Bcc hidden, and is synced back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neomutt_sends_through_mailsync() {
    let e = SendEnv::start(Profile::Exchange).await;
    let d = e.env.dir.path();
    let log = d.join("sendmail-args");
    // A wrapper that records the arguments neomutt passes, then is mailsync.
    let wrapper = d.join("sendmail");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\nexec {bin} --config {config} send \"$@\"\n",
            log = log.display(),
            bin = env!("CARGO_BIN_EXE_mailsync"),
            config = e.env.config_path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let muttrc = d.join("muttrc");
    std::fs::write(
        &muttrc,
        format!(
            "set sendmail=\"{}\"\nset from=\"Jane <{USER}>\"\nset use_envelope_from=yes\nset use_8bit_mime=yes\nset dsn_notify=\"failure,delay\"\nset dsn_return=hdrs\nset record=\"\"\nset copy=no\nset send_charset=\"utf-8\"\nset charset=\"utf-8\"\n",
            wrapper.display()
        ),
    )
    .unwrap();
    let body = "Grüße aus Köln, sent by neomutt.\n.a line that starts with a dot\nThe end.\n";
    let mut c = std::process::Command::new("neomutt");
    c.args(["-n", "-F"])
        .arg(&muttrc)
        .args([
            "-s",
            "From neomutt",
            "-c",
            "carol@example.org",
            "-b",
            "hidden@example.org",
            "--",
            USER,
        ])
        .env("HOME", d)
        .env("LANG", "C.UTF-8")
        .env("TERM", "dumb")
        .env_remove("MAILSYNC_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = tokio::task::spawn_blocking(move || {
        let mut child = c
            .spawn()
            .expect("run neomutt (is it installed? scripts/deps)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        Run::from(child.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "neomutt: {run}");
    let args = std::fs::read_to_string(&log).expect("neomutt ran mailsync");
    let got = e.sink.messages();
    assert_eq!(got.len(), 1, "args {args:?}: {run}");
    let mut to = got[0].rcpt_to.clone();
    to.sort();
    assert_eq!(
        to,
        ["carol@example.org", "hidden@example.org", USER],
        "args {args:?}"
    );
    assert_eq!(got[0].mail_from, USER);
    let text = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        !text.contains("hidden@example.org"),
        "the Bcc was sent: {text}"
    );
    assert!(text.contains("Subject: From neomutt"), "{text}");
    for line in body.lines() {
        assert!(
            text.contains(&format!("{line}\r\n")),
            "{line:?} missing: {text:?}"
        );
    }
    e.env.sync().await;
    let inbox = crate::support::local_messages(&e.env.maildir("Inbox"));
    assert_eq!(inbox.len(), 1);
    assert!(String::from_utf8_lossy(&inbox[0].0).contains("Grüße aus Köln, sent by neomutt."));
    eprintln!("neomutt ran: sendmail {}", args.replace('\n', " "));
}

/// The daemon sends what waits in the outbox: at once when it starts, and after the
/// backoff when a message could not go while it runs; each message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sends_what_waits() {
    use crate::support::daemon::{Daemon, until};
    let e = SendEnv::start(Profile::Exchange).await;
    e.sink.stop();
    let run = e.send(&["send", USER], &message("before the daemon")).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("not sent yet"), "{run}");
    e.sink.start_again().unwrap();

    let daemon = Daemon::start(&e.env, &[]);
    until(
        Duration::from_secs(20),
        "the daemon sends the waiting message",
        &daemon,
        || e.sink.count() == 1,
    )
    .await;

    // While it runs: the relay down for `send`'s own try, back before the retry.
    e.sink.stop();
    let run = e.send(&["send", USER], &message("while it runs")).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("not sent yet"), "{run}");
    e.sink.start_again().unwrap();
    let waited = until(
        Duration::from_secs(60),
        "the daemon retries after its backoff",
        &daemon,
        || e.sink.count() == 2,
    )
    .await;
    assert!(
        waited >= Duration::from_secs(20),
        "retried after {waited:?}, before the 30 s backoff"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    let subjects = subjects(&e.sink.messages());
    assert_eq!(
        subjects,
        ["Subject: before the daemon", "Subject: while it runs"]
    );
    let status = e.env.run(&["status"]).await;
    assert!(!status.stdout.contains("waiting in the outbox"), "{status}");
}

/// A server that offers OAUTHBEARER and not XOAUTH2 (RFC 7628) is signed in to with
/// it, on both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_where_xoauth2_is_not_offered() {
    for profile in [Profile::Full, Profile::Exchange] {
        let e = SendEnv::start_tuned(profile, "", |mut o| {
            o.extra_config
                .push_str("auth_mechanisms = plain oauthbearer\n");
            o
        })
        .await;
        let mark = e.env.log_lines();
        let run = e.send(&["send", USER], &message("bearer")).await;
        assert_eq!(run.code, 0, "{}: {run}", profile.name());
        assert_eq!(e.sink.count(), 1);
        let log = e.env.dovecot.log();
        let logins: Vec<&str> = log
            .lines()
            .skip(mark)
            .filter(|l| l.contains("submission-login") && l.contains("Login:"))
            .collect();
        assert!(
            !logins.is_empty() && logins.iter().all(|l| l.contains("method=OAUTHBEARER")),
            "{}: {logins:?} in\n{}",
            profile.name(),
            log.lines()
                .skip(mark)
                .filter(|l| l.contains("submission"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
