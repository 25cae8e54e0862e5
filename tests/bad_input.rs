//! Bad input: malformed messages are stored byte-exact and do not stop the sync; bad
//! configs and a wrong CA fail with one line that names the cause.

use mailsync_testenv::Corpus;
use mailsync_testenv::dovecot::{Profile, SeedMessage};

use crate::on_both_profiles;
use crate::support::{Env, USER};

fn malformed() -> Vec<SeedMessage> {
    vec![
        // A multipart message whose boundary never closes.
        SeedMessage::new(
            &b"From: a@example.org\r\nSubject: broken MIME\r\nMessage-ID: <broken@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n--XYZ\r\nContent-Type: text/plain\r\n\r\nno end boundary\r\n--XY\r\n"[..],
            &[],
        ),
        // No Message-ID at all.
        SeedMessage::new(&b"From: b@example.org\r\nSubject: no id\r\n\r\nhello\r\n"[..], &["\\Seen"]),
        // 8-bit garbage in the headers.
        SeedMessage::new(
            &b"From: \xff\xfe\x80 <c@example.org>\r\nSubject: \xc3\x28\xa0\xa1 garbage\r\nMessage-ID: <\xfe\xff@x>\r\nX-Junk: \x01\x02\x7f\r\n\r\nbody \xff\r\n"[..],
            &[],
        ),
        // Headers and nothing else.
        SeedMessage::new(&b"Subject: empty body\r\n\r\n"[..], &[]),
        // Not a mail message at all.
        SeedMessage::new(&b"\r\n\r\n\r\n"[..], &["\\Flagged"]),
    ]
}

async fn malformed_messages_are_stored_byte_exact(profile: Profile) {
    let env = Env::start(profile).await;
    env.dovecot
        .append_many(USER, "INBOX", malformed())
        .await
        .unwrap();
    // The test corpus's own nasty set, 0-byte message included (which cannot be
    // APPENDed, so it goes straight into the server's Maildir).
    let nasty: Vec<SeedMessage> = Corpus::malformed()
        .into_iter()
        .map(|m| SeedMessage::new(m.bytes, &[]))
        .collect();
    assert!(nasty.iter().any(|m| m.bytes.is_empty()));
    env.dovecot.seed_fast(USER, "INBOX", nasty).await.unwrap();
    env.dovecot
        .append(
            USER,
            "INBOX",
            b"Subject: fine\r\nMessage-ID: <ok@x>\r\n\r\nok\r\n",
            &[],
            None,
        )
        .await
        .unwrap();
    let summary = env.sync().await;
    let server = env.dovecot.messages(USER, "INBOX").await.unwrap();
    assert_eq!(summary.folder("Inbox").fetched as usize, server.len());
    env.assert_in_sync().await;
}
on_both_profiles!(malformed_messages_are_stored_byte_exact);

async fn config_error(env: &Env, text: &str) -> String {
    std::fs::write(env.config_path(), text).unwrap();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 2, "a broken config must be fatal:\n{run}");
    assert!(!run.stderr.contains("panicked"), "{run}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{run}");
    lines[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_file_line_and_key() {
    let env = Env::start(Profile::Full).await;
    let path = env.config_path().display().to_string();

    let text = env.config_text("").replace(
        "provider = \"custom\"",
        "provider = \"custom\"\nemial = \"x@y\"",
    );
    let line = config_error(&env, &text).await;
    assert!(
        line.contains(&path) && line.contains("emial") && line.contains("accounts.work"),
        "{line}"
    );
    let n = text.lines().position(|l| l.starts_with("emial")).unwrap() + 1;
    assert!(
        line.contains(&format!(":{n}:")),
        "line {n} not named: {line}"
    );

    let text = env.config_text("").replace("\"@archive\"", "\"@archiv\"");
    let line = config_error(&env, &text).await;
    assert!(
        line.contains("@archiv") && line.contains("Archive") && line.contains("@archive"),
        "{line}"
    );
    let n = text.lines().position(|l| l.contains("@archiv")).unwrap() + 1;
    assert!(
        line.contains(&format!(":{n}:")),
        "line {n} not named: {line}"
    );

    let text = env
        .config_text("")
        .replace("poll_interval", "x")
        .replace("command_timeout = \"20s\"", "command_timeout = \"twenty\"");
    let line = config_error(&env, &text).await;
    assert!(line.contains("command_timeout"), "{line}");

    let text = env
        .config_text("")
        .replace("tls = \"implicit\"", "tls = \"plain\"")
        .replace(
            "imap_host = \"localhost\"",
            "imap_host = \"imap.example.com\"",
        );
    let line = config_error(&env, &text).await;
    assert!(
        line.contains("plain") && line.contains("imap.example.com"),
        "{line}"
    );

    std::fs::write(env.config_path(), "[accounts.work\nprovider = ").unwrap();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains(&path) && !run.stderr.contains("panicked"),
        "{run}"
    );
}

/// A mapping to a folder the server does not have fails that folder, with its config
/// line, and the others still sync (exit 1: partial).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_to_missing_folder_names_it() {
    let mut env = Env::start(Profile::Exchange).await;
    env.mappings
        .push(("Projects".into(), "Projects/2026".into()));
    env.write_config();
    env.dovecot
        .append(USER, "INBOX", b"Subject: a\r\n\r\nx\r\n", &[], None)
        .await
        .unwrap();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 1, "{run}");
    let text = format!("{}{}", run.stdout, run.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Projects/2026"))
        .unwrap_or_else(|| panic!("{run}"));
    let n = env
        .config_text("")
        .lines()
        .position(|l| l.starts_with("\"Projects\""))
        .unwrap()
        + 1;
    assert!(
        line.contains(&format!(":{n}:")) && line.contains("accounts.work.folders.Projects"),
        "{line}"
    );
    assert_eq!(run.summary().folder("Inbox").fetched, 1, "{run}");

    // -q (for cron): nothing but the failure, on stderr.
    env.dovecot
        .append(USER, "INBOX", b"Subject: b\r\n\r\ny\r\n", &[], None)
        .await
        .unwrap();
    let quiet = env.run(&["-q", "sync"]).await;
    assert_eq!(quiet.code, 1, "{quiet}");
    assert_eq!(quiet.stdout, "", "{quiet}");
    let lines: Vec<&str> = quiet.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{quiet}");
    assert!(lines[0].contains("Projects/2026"), "{quiet}");
    assert_eq!(
        crate::support::local_messages(&env.maildir("Inbox")).len(),
        2,
        "{quiet}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_file_is_a_tls_error() {
    let env = Env::start(Profile::Full).await;
    env.dovecot
        .append(USER, "INBOX", b"Subject: a\r\n\r\nx\r\n", &[], None)
        .await
        .unwrap();
    // A CA that did not sign the server's certificate.
    let other = Env::start(Profile::Full).await;
    std::fs::copy(other.dovecot.ca_file(), env.dir.path().join("ca.pem")).unwrap();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("TLS") && run.stderr.contains("ca_file"),
        "{run}"
    );
    assert!(!run.stderr.contains("panicked"), "{run}");
    assert!(
        crate::support::local_messages(&env.maildir("Inbox")).is_empty(),
        "mail was downloaded over a connection whose certificate was not trusted"
    );

    // Not a certificate at all: the config's fault, said once, not retried.
    std::fs::write(env.dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("ca_file") && run.stderr.contains("not a PEM certificate"),
        "{run}"
    );
    assert!(!run.stderr.contains("retry"), "{run}");
}
