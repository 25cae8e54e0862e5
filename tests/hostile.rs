//! Hostile and broken servers (issue 11): the real `mailsync sync` against a scripted
//! server that misbehaves in one way per test, each named after what breaks. Every test
//! checks what a user would: exit code, one error line naming the cause, no panic, no
//! hang, bounded memory, no token or client secret in the output, `status` or the
//! database, and (where it applies) that a sync against the server gone sane again
//! converges with nothing lost. See `support/hostile_env.rs`.

use mailsync_testenv::hostile::{Body, Command, HostileOptions, Reply};

use crate::support::hostile_env::{Expect, HostileEnv, small_message};

fn server_with(caps: &[&str], messages: u32) -> HostileEnv {
    let env = HostileEnv::start(HostileOptions::default().with(caps));
    for n in 1..=messages {
        env.server.append("INBOX", small_message(n), &["\\Seen"]);
    }
    env
}

/// The listing of every UID and its flags (`UID FETCH 1:* (UID FLAGS)`).
fn is_flags_listing(c: &Command) -> bool {
    c.name == "UID FETCH" && c.args.contains("(UID FLAGS)")
}

fn is_body_fetch(c: &Command) -> bool {
    c.name == "UID FETCH" && c.args.contains("BODY.PEEK[]")
}

/// The harness itself: a sane scripted server syncs on each listing path (full,
/// CHANGEDSINCE, QRESYNC), and the checks see a change made on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sane_scripted_server_syncs() {
    for caps in [&[][..], &["CONDSTORE"], &["CONDSTORE", "QRESYNC"]] {
        let env = server_with(caps, 3);
        env.check_sync(Expect::succeeds(), false).await;
        env.assert_in_sync();
        env.server.append("INBOX", small_message(4), &[]);
        env.server.set_flags("INBOX", 1, &[b"\\Flagged"]);
        env.server.expunge("INBOX", 2);
        env.check_sync(Expect::succeeds(), false).await;
        env.assert_in_sync();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_greeting() {
    let env = server_with(&[], 2);
    env.server.set_hook(|c, _| {
        (c.name == "GREETING")
            .then(|| Reply::Send(b"\x00\xff\xfe\x80\x01garbage\xc3\x28\r\n".to_vec()))
    });
    env.check_sync(Expect::fails(&["greeting"]), false).await;
    env.converges().await;
}

/// Accepts the TCP connection, then nothing: no TLS handshake, no greeting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_never_greets() {
    let mut env = server_with(&[], 2);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    env.imap_port = Some(listener.local_addr().unwrap().port());
    env.write_config();
    // Holds every connection open, answering nothing (the thread ends with the test
    // binary).
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    env.check_sync(
        Expect::fails(&["timeout", "timed out", "no answer", "greeting", "TLS"]),
        false,
    )
    .await;
    env.imap_port = None;
    env.write_config();
    env.converges().await;
}

/// Answers SELECT, then nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_after_select() {
    let env = server_with(&[], 2);
    env.server.set_hook(|c, _| {
        c.name
            .starts_with("UID ")
            .then(|| Reply::Silence(Vec::new()))
    });
    env.check_sync(Expect::fails(&["timeout", "timed out", "no answer"]), false)
        .await;
    env.converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_untagged_ok_in_answer_to_select() {
    let env = server_with(&[], 2);
    env.server
        .set_hook(|c, _| (c.name == "SELECT").then(|| Reply::endless("* OK still here")));
    env.check_sync(Expect::fails(&["SELECT"]), false).await;
    env.converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_untagged_fetch_in_answer_to_select() {
    let env = server_with(&[], 2);
    env.server
        .set_hook(|c, _| (c.name == "SELECT").then(|| Reply::endless("* 1 FETCH (FLAGS ())")));
    env.check_sync(Expect::fails(&["SELECT"]), false).await;
    env.converges().await;
}

/// SELECT says 2 messages (UIDNEXT 3); the listing goes on forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_listing_beyond_exists() {
    let env = server_with(&[], 2);
    env.server.set_hook(|c, _| {
        is_flags_listing(c)
            .then(|| Reply::lines((1u64..).map(|i| format!("* {i} FETCH (UID {i} FLAGS ())"))))
    });
    env.check_sync(
        Expect::fails(&["FETCH", "listing", "EXISTS", "UIDNEXT"]),
        false,
    )
    .await;
    env.converges().await;
}

/// A 4 GiB literal announced, 1 MB of it sent, then silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_literal_announced() {
    let env = server_with(&[], 2);
    env.server.set_hook(|c, _| {
        is_body_fetch(c).then(|| {
            let mut b = b"* 1 FETCH (UID 1 BODY[] {4294967295}\r\n".to_vec();
            b.resize(b.len() + (1 << 20), b'x');
            Reply::Silence(b)
        })
    });
    env.check_sync(Expect::fails(&["literal", "FETCH", "too large"]), false)
        .await;
    env.converges().await;
}

/// RFC822.SIZE says 100 bytes; the body sent is a 100 MB literal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_larger_than_announced_size() {
    let env = server_with(&[], 2);
    env.check_sync(Expect::succeeds(), false).await;
    let uid = env.server.append("INBOX", vec![b'a'; 100], &[]);
    env.server.set_hook(move |c, _| {
        is_body_fetch(c).then(|| {
            let head = format!("* 3 FETCH (UID {uid} FLAGS () BODY[] {{104857600}}\r\n");
            let tail = format!(")\r\n{} OK done\r\n", c.tag);
            let chunks = std::iter::repeat_n(vec![b'x'; 1 << 16], 1600);
            Reply::Stream(Box::new(
                std::iter::once(head.into_bytes())
                    .chain(chunks)
                    .chain(std::iter::once(tail.into_bytes())),
            ))
        })
    });
    env.check_sync(Expect::fails(&["size", "literal", "FETCH"]), false)
        .await;
    env.converges().await;
}

/// The ranges exclude the UIDs mailsync holds, so nothing it has is gone: failing the
/// folder is acceptable, expanding the ranges into memory is not.
async fn vanished_earlier(line: String) {
    let env = server_with(&["CONDSTORE", "QRESYNC"], 3);
    env.check_sync(Expect::succeeds(), false).await;
    env.server.set_hook(move |c, _| {
        (c.name == "SELECT" && c.args.contains("QRESYNC"))
            .then(|| Reply::Inject(line.clone().into_bytes()))
    });
    env.check_sync(Expect::either(&["VANISHED"]), false).await;
    env.assert_in_sync();
    env.converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_earlier_up_to_2_pow_32() {
    vanished_earlier("* VANISHED (EARLIER) 10:4294967295\r\n".into()).await;
}

/// Each range under any per-range cap, 2^32 UIDs in all, in one 8 KB line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_earlier_many_ranges_in_one_line() {
    let max = u64::from(u32::MAX);
    let ranges: Vec<String> = (0u64..)
        .map(|i| 10 + i * 9_999_999)
        .take_while(|start| *start <= max)
        .map(|start| format!("{start}:{}", (start + 9_999_998).min(max)))
        .collect();
    vanished_earlier(format!("* VANISHED (EARLIER) {}\r\n", ranges.join(","))).await;
}

/// A server without CONDSTORE (Exchange): every sync lists all UIDs and flags. A flag
/// list imap-proto cannot parse must not make a listed message count as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_flags_in_full_listing_keep_the_local_copy() {
    let env = server_with(&[], 3);
    env.check_sync(Expect::succeeds(), false).await;
    env.server.set_flags("INBOX", 2, &[b"\\Seen", b"$Label%1"]);
    // A new message whose flags cannot be parsed either: it must come, now or later.
    let new = env.server.append("INBOX", small_message(4), &[]);
    env.server.set_flags("INBOX", new, &[b"Junk*"]);
    env.check_sync(Expect::either(&["FLAGS", "FETCH", "parse"]), false)
        .await;
    let local = crate::support::local_messages(&env.maildir("Inbox"));
    assert!(
        local.iter().any(|(b, _)| *b == small_message(2)),
        "the message whose flags could not be parsed was deleted locally"
    );
    env.server.set_flags("INBOX", 2, &[b"\\Seen"]);
    env.server.set_flags("INBOX", new, &[]);
    env.converges().await;
}

/// With CONDSTORE, a changed message whose FLAGS cannot be parsed: the change must not
/// be lost behind a watermark committed past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_flags_on_changedsince_path_lose_no_change() {
    let env = server_with(&["CONDSTORE"], 3);
    env.check_sync(Expect::succeeds(), false).await;
    env.server.set_flags("INBOX", 2, &[b"\\Seen", b"\\Flagged"]);
    let modseq = env.server.messages("INBOX")[1].modseq;
    env.server.set_hook(move |c, _| {
        (c.name == "UID FETCH" && c.args.contains("CHANGEDSINCE")).then(|| {
            Reply::Send(
                format!(
                    "* 2 FETCH (UID 2 FLAGS (\\Seen \\Flagged \"odd\" %x) MODSEQ ({modseq}))\r\n{} OK done\r\n",
                    c.tag
                )
                .into_bytes(),
            )
        })
    });
    env.check_sync(Expect::either(&["FLAGS", "FETCH", "parse"]), false)
        .await;
    let local = crate::support::local_messages(&env.maildir("Inbox"));
    assert_eq!(local.len(), 3, "a local copy was deleted");
    // Sane again, with no further change on the server: the flag change must arrive.
    env.converges().await;
}

/// A folder (found by role) whose name holds CR LF and a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_in_folder_name_injects_no_command() {
    let mut env = server_with(&["SPECIAL-USE"], 2);
    env.server
        .add_folder("Archive\r\nX1 DELETE INBOX", &["\\Archive"]);
    env.server
        .append("Archive\r\nX1 DELETE INBOX", small_message(9), &[]);
    env.mappings.push(("Archive".into(), "@archive".into()));
    env.write_config();
    let (_, broken, report) = env
        .check_sync_collect(Expect::either(&["Archive", "folder", "name"]), false)
        .await;
    let injected: Vec<String> = env
        .server
        .commands()
        .iter()
        .filter(|(_, c)| c.tag == "X1" || c.name == "DELETE")
        .map(|(_, c)| String::from_utf8_lossy(&c.raw).into_owned())
        .collect();
    assert!(
        injected.is_empty(),
        "the server received injected commands: {injected:?}\n{report}"
    );
    assert!(broken.is_empty(), "BROKEN: {}\n{report}", broken.join("; "));
    let inbox = crate::support::local_messages(&env.maildir("Inbox"));
    assert_eq!(
        inbox.len(),
        2,
        "Inbox did not sync beside the hostile folder"
    );
}

fn echo_token(c: &Command, text: impl Fn(&str, &str) -> String) -> Option<Reply> {
    if c.name != "AUTHENTICATE" {
        return None;
    }
    let payload = c.sasl_payload().unwrap_or_default();
    let token = payload
        .split("auth=Bearer ")
        .nth(1)
        .unwrap_or("")
        .trim_end_matches('\x01')
        .to_owned();
    let b64 = c.args.split_whitespace().nth(1).unwrap_or("").to_owned();
    Some(Reply::Send(
        format!("{} {}\r\n", c.tag, text(&token, &b64)).into_bytes(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_echoed_in_tagged_bad() {
    echoed_credential_is_not_repeated(|token, b64| {
        format!("BAD Invalid SASL response {b64} (token {token})")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_echoed_in_alert() {
    echoed_credential_is_not_repeated(|token, _| {
        format!("NO [ALERT] Bearer {token} is not valid for this mailbox")
    })
    .await;
}

/// The server answers AUTHENTICATE with `text(token, base64 payload)`: the run fails
/// on the login (checked at trace level too) and repeats neither.
async fn echoed_credential_is_not_repeated(text: fn(&str, &str) -> String) {
    let env = server_with(&[], 2);
    env.server.set_hook(move |c, _| echo_token(c, text));
    env.check_sync(
        Expect::fails(&["authenticat", "login", "AUTHENTICATE"]),
        true,
    )
    .await;
    assert!(
        !env.server.tokens().is_empty(),
        "no token reached the server"
    );
    env.converges().await;
}

/// 10 MB of one line with no CRLF in answer to SELECT, then silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mb_line_without_crlf() {
    let env = server_with(&[], 2);
    env.server.set_hook(|c, _| {
        (c.name == "SELECT").then(|| {
            let mut b = b"* OK ".to_vec();
            b.resize(10 << 20, b'x');
            Reply::Silence(b)
        })
    });
    env.check_sync(Expect::fails(&["line", "SELECT", "long"]), false)
        .await;
    env.converges().await;
}

/// CONDSTORE advertised, CHANGEDSINCE refused: a full listing instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_changedsince_falls_back_to_full_listing() {
    let env = server_with(&["CONDSTORE"], 3);
    env.check_sync(Expect::succeeds(), false).await;
    env.server.append("INBOX", small_message(4), &[]);
    env.server.set_flags("INBOX", 1, &[b"\\Flagged"]);
    env.server.set_hook(|c, _| {
        (c.name == "UID FETCH" && c.args.contains("CHANGEDSINCE")).then(|| {
            Reply::Send(format!("{} BAD CHANGEDSINCE not supported\r\n", c.tag).into_bytes())
        })
    });
    env.check_sync(Expect::succeeds(), false).await;
    env.assert_in_sync();
}

/// QRESYNC advertised and enabled, `SELECT … (QRESYNC …)` refused: a plain SELECT and
/// a full listing instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_select_qresync_falls_back_to_full_listing() {
    let env = server_with(&["CONDSTORE", "QRESYNC"], 3);
    env.check_sync(Expect::succeeds(), false).await;
    env.server.append("INBOX", small_message(4), &[]);
    env.server.set_flags("INBOX", 1, &[b"\\Flagged"]);
    env.server.set_hook(|c, _| {
        (c.name == "SELECT" && c.args.contains("QRESYNC")).then(|| {
            Reply::Send(format!("{} BAD QRESYNC parameter refused\r\n", c.tag).into_bytes())
        })
    });
    env.check_sync(Expect::succeeds(), false).await;
    env.assert_in_sync();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_zero_is_a_protocol_error() {
    let env = server_with(&[], 0);
    env.server.append_uid("INBOX", 0, small_message(1), &[]);
    env.server.append_uid("INBOX", 5, small_message(5), &[]);
    // A server that stored a message under UID 0 lists it with the others.
    env.server.set_hook(|c, _| {
        is_flags_listing(c).then(|| {
            Reply::Send(
                format!(
                    "* 1 FETCH (UID 0 FLAGS ())\r\n* 2 FETCH (UID 5 FLAGS ())\r\n{} OK done\r\n",
                    c.tag
                )
                .into_bytes(),
            )
        })
    });
    env.check_sync(Expect::fails(&["UID 0", "UID"]), false)
        .await;
    env.server.expunge("INBOX", 0);
    env.converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uidvalidity_zero_is_a_protocol_error() {
    let env = server_with(&[], 2);
    env.server.set_uidvalidity("INBOX", 0);
    env.check_sync(Expect::fails(&["UIDVALIDITY"]), false).await;
    env.server.set_uidvalidity("INBOX", 7);
    env.converges().await;
}

/// A 200 MB message, generated as it is sent: peak RSS at most 1.1 x its size + 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_of_200_mb_needs_one_copy_in_memory() {
    let mut env = server_with(&[], 1);
    // Time to move 200 MB through TLS in a debug build: this test is about memory.
    env.command_timeout = std::time::Duration::from_secs(60);
    env.write_config();
    let size: u64 = 200_000_000;
    env.server
        .append("INBOX", Body::Generated(size), &["\\Seen"]);
    let limit_mib = (size as f64 * 1.1 / f64::from(1 << 20)) as u64 + 64;
    env.check_sync(Expect::succeeds().rss_mb(limit_mib), false)
        .await;
    env.assert_in_sync();
}
