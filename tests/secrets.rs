//! Tokens and the client secret never appear in the output, even at trace level
//! (where async-imap would print AUTHENTICATE's payload).

use mailsync_testenv::dovecot::Profile;

use crate::support::{CLIENT_SECRET, Env, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_trace_output() {
    let env = Env::start(Profile::Full).await;
    env.dovecot
        .append(USER, "INBOX", b"Subject: a\r\n\r\nx\r\n", &[], None)
        .await
        .unwrap();
    let mut cmd = env.command(&["sync"]);
    cmd.env("RUST_LOG", "trace");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("authenticating") && text.contains("imap >") && text.contains("TRACE"),
        "trace output does not show the login and the IMAP traffic; the check would prove nothing"
    );
    let secrets = env.idp.issued_secrets();
    assert!(!secrets.is_empty(), "the identity provider issued no token");
    for s in secrets.iter().map(String::as_str).chain([CLIENT_SECRET]) {
        assert!(!text.contains(s), "a secret appeared in the trace output");
        // The XOAUTH2 payload is base64: look for the token in that form too.
        let b64 = base64_of(&format!("user={USER}\x01auth=Bearer {s}\x01\x01"));
        assert!(
            !text.contains(&b64),
            "the XOAUTH2 payload appeared in the trace output"
        );
    }
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
