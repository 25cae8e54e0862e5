//! How mailsync meets the server: STARTTLS, OAUTHBEARER where XOAUTH2 is missing, the
//! account lock, and `folders --json`.

use mailsync_testenv::dovecot::Profile;

use crate::on_both_profiles;
use crate::support::{Env, USER};

async fn starttls(profile: Profile) {
    let env = Env::start(profile).await;
    env.dovecot
        .append(
            USER,
            "INBOX",
            b"Subject: over starttls\r\n\r\nx\r\n",
            &["\\Seen"],
            None,
        )
        .await
        .unwrap();
    let text = env
        .config_text("")
        .replace("tls = \"implicit\"", "tls = \"starttls\"")
        .replace(
            &format!("imap_port = {}", env.dovecot.imaps_port()),
            &format!("imap_port = {}", env.dovecot.imap_port()),
        );
    std::fs::write(env.config_path(), text).unwrap();
    let mark = env.log_lines();
    let summary = env.sync().await;
    assert_eq!(summary.folder("Inbox").fetched, 1);
    env.assert_in_sync().await;
    // mailsync's own logins, as the server saw them: on the plain port, and secured
    // by TLS. (Dovecot would accept them in the clear on loopback, as "secured".)
    let log = env.dovecot.log();
    let logins: Vec<&str> = log
        .lines()
        .skip(mark)
        .filter(|l| l.contains("Login: ") && l.contains("method=XOAUTH2"))
        .collect();
    assert!(!logins.is_empty(), "no XOAUTH2 login in the server log");
    let port = format!("lport={},", env.dovecot.imap_port());
    for l in logins {
        assert!(
            l.contains(&port) && l.contains(", TLS,"),
            "a login on the STARTTLS port without TLS: {l}"
        );
    }
}
on_both_profiles!(starttls);

/// A server that offers OAUTHBEARER but not XOAUTH2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_when_xoauth2_is_missing() {
    let env = Env::start_with(Profile::Full, |o| {
        o.extra_config("auth_mechanisms = plain oauthbearer\n")
    })
    .await;
    env.dovecot
        .append(USER, "INBOX", b"Subject: bearer\r\n\r\nx\r\n", &[], None)
        .await
        .unwrap();
    let summary = env.sync().await;
    assert_eq!(summary.folder("Inbox").fetched, 1);
    env.assert_in_sync().await;
    assert!(
        env.dovecot.log().contains("method=OAUTHBEARER"),
        "the login did not use OAUTHBEARER:\n{}",
        env.dovecot.log()
    );
}

/// Two `sync` runs of one account cannot interleave: the second is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sync_per_account_at_a_time() {
    let env = Env::start(Profile::Full).await;
    let lock_path = env.state_dir().join("work.lock");
    std::fs::create_dir_all(env.state_dir()).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    file.try_lock().unwrap();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("another mailsync process"), "{run}");
    assert!(
        !env.maildir("Inbox").exists(),
        "the refused run touched the Maildir"
    );
    drop(file);
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_json_lists_roles_counts_and_mappings() {
    let env = Env::start(Profile::Full).await;
    env.dovecot
        .append(USER, "Archive", b"Subject: a\r\n\r\nx\r\n", &[], None)
        .await
        .unwrap();
    env.dovecot
        .append(USER, "Archive", b"Subject: b\r\n\r\ny\r\n", &[], None)
        .await
        .unwrap();
    let run = env.run(&["folders", "--json"]).await;
    assert_eq!(run.code, 0, "{run}");
    let v: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
    let archive = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Archive")
        .unwrap_or_else(|| panic!("{run}"));
    assert_eq!(archive["role"], "@archive");
    assert_eq!(archive["messages"], 2);
    assert_eq!(archive["mapped_to"], "Archive");
    let sent = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Sent Items")
        .unwrap();
    assert!(sent["mapped_to"].is_null());
}

/// The commands mailsync sends follow what the server advertises: QRESYNC's SELECT
/// when offered (no UID SEARCH, no full listing), and on the Exchange profile never a
/// CONDSTORE, QRESYNC, ENABLE or SPECIAL-USE command, which Dovecot would still accept.
async fn commands_follow_capabilities(profile: Profile) {
    let env = Env::start(profile).await;
    let mut messages = Vec::new();
    for i in 0..8 {
        messages.push(mailsync_testenv::dovecot::SeedMessage::new(
            format!("Subject: m{i}\r\nMessage-ID: <m{i}@x>\r\n\r\nbody {i}\r\n").into_bytes(),
            &[],
        ));
    }
    let uids = env
        .dovecot
        .append_many(USER, "INBOX", messages)
        .await
        .unwrap();
    let first = env.run(&["-vv", "sync"]).await;
    assert_eq!(first.code, 0, "{first}");

    env.dovecot
        .expunge(USER, "INBOX", &[uids[2]])
        .await
        .unwrap();
    env.dovecot
        .set_flags(USER, "INBOX", uids[4], &["\\Flagged"], &[])
        .await
        .unwrap();
    env.dovecot
        .append(USER, "INBOX", b"Subject: new\r\n\r\nnew\r\n", &[], None)
        .await
        .unwrap();
    let run = env.run(&["-vv", "sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    let c = run.summary().folder("Inbox");
    assert_eq!((c.fetched, c.flag_updates, c.removed), (1, 1, 1), "{run}");
    env.assert_in_sync().await;

    let sent: Vec<&str> = first
        .stderr
        .lines()
        .chain(run.stderr.lines())
        .filter(|l| l.contains("imap >"))
        .collect();
    assert!(!sent.is_empty(), "no command in the debug log:\n{run}");
    let any = |needle: &str| sent.iter().any(|l| l.contains(needle));
    match profile {
        Profile::Full => {
            assert!(any("(QRESYNC ("), "no QRESYNC SELECT:\n{}", sent.join("\n"));
            let second: Vec<&str> = run
                .stderr
                .lines()
                .filter(|l| l.contains("imap >"))
                .collect();
            assert!(
                !second
                    .iter()
                    .any(|l| l.contains("UID SEARCH") || l.contains("UID FETCH 1:*")),
                "QRESYNC should make listing unnecessary:\n{}",
                second.join("\n")
            );
        }
        Profile::Exchange | Profile::NoUidplus => {
            for word in [
                "CONDSTORE",
                "QRESYNC",
                "CHANGEDSINCE",
                "ENABLE",
                "SPECIAL-USE",
            ] {
                assert!(
                    !any(word),
                    "sent {word} to a server that does not offer it:\n{}",
                    sent.join("\n")
                );
            }
            assert!(any("UID FETCH 1:* (UID FLAGS)"), "{}", sent.join("\n"));
        }
    }
}
on_both_profiles!(commands_follow_capabilities);

/// Round trips are not waited for where the protocol allows (RFC 3501 section 5.5):
/// ENABLE goes out with the CAPABILITY after the login, the listing's FETCH with its
/// SELECT, a folder's download SELECT with its first FETCH, and each batch's FETCH
/// while the one before streams. On a server 20-50 ms away each of these is a round
/// trip per login, per folder or per batch.
async fn commands_are_pipelined(profile: Profile) {
    let env = Env::start(profile).await;
    let messages: Vec<_> = (0..50)
        .map(|i| {
            mailsync_testenv::dovecot::SeedMessage::new(
                format!("Subject: p{i}\r\nMessage-ID: <p{i}@x>\r\n\r\nbody {i}\r\n").into_bytes(),
                &["\\Seen"],
            )
        })
        .collect();
    env.dovecot
        .append_many(USER, "INBOX", messages)
        .await
        .unwrap();
    let text = env.config_text("").replace(
        "command_timeout = \"20s\"\n",
        "command_timeout = \"20s\"\nbatch_size = 20\n",
    );
    std::fs::write(env.config_path(), text).unwrap();
    let run = env.run(&["-vv", "sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.summary().folder("Inbox").fetched, 50, "{run}");
    env.assert_in_sync().await;

    // The protocol as sent and answered, in order: `> X` sent, `< X` completed.
    let wire: Vec<String> = run
        .stderr
        .lines()
        .filter_map(|l| {
            let (dir, rest) = if let Some(i) = l.find("imap > command=") {
                (">", &l[i + 15..])
            } else if let Some(i) = l.find("imap < command=") {
                ("<", &l[i + 15..])
            } else {
                return None;
            };
            let rest = rest.split(" elapsed=").next().unwrap_or(rest);
            Some(format!("{dir} {rest}"))
        })
        .collect();
    let pos = |from: usize, pred: &dyn Fn(&str) -> bool| {
        wire.iter()
            .skip(from)
            .position(|l| pred(l))
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("not found after line {from}:\n{}", wire.join("\n")))
    };
    // After the login, where the server lists ENABLE before it (Dovecot; not
    // Exchange), ENABLE QRESYNC goes out with the CAPABILITY.
    if matches!(profile, Profile::Full) {
        let caps = pos(0, &|l| l.starts_with("< CAPABILITY"));
        let enable = pos(0, &|l| l.starts_with("> ENABLE QRESYNC"));
        assert!(
            enable < caps,
            "ENABLE waited for CAPABILITY:\n{}",
            wire.join("\n")
        );
    }
    // The listing of INBOX: its flags are asked for before the SELECT completes.
    let select = pos(0, &|l| l.starts_with("> SELECT \"INBOX\""));
    let selected = pos(select, &|l| l.starts_with("< SELECT"));
    let listing = pos(select, &|l| l.starts_with("> UID FETCH 1:* (UID FLAGS)"));
    assert!(
        listing < selected,
        "listing waited for the SELECT:\n{}",
        wire.join("\n")
    );
    // The download of INBOX (Deleted Items was listed last): SELECT, then the first
    // two batches, all before the first answer.
    let select = pos(selected + 1, &|l| l.starts_with("> SELECT \"INBOX\""));
    let first = pos(select, &|l| l.contains("BODY.PEEK[]"));
    let second = pos(first + 1, &|l| l.contains("BODY.PEEK[]"));
    let answered = pos(select, &|l| l.starts_with('<'));
    assert!(
        second < answered,
        "the download waited for answers:\n{}",
        wire.join("\n")
    );
}
on_both_profiles!(commands_are_pipelined);
