//! `mailsync run` as a child process against the real Dovecot: IDLE latency, polling,
//! hot reload of mappings, `stop` while running, SIGTERM, a server restart, a token
//! expiring while idle, and systemd's notify protocol.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailsync_testenv::dovecot::{Profile, SeedMessage};

use crate::on_both_profiles;
use crate::support::daemon::{Daemon, until};
use crate::support::{Env, USER, local_messages};

fn count(dir: &Path) -> usize {
    local_messages(dir).len()
}

fn message(tag: &str, i: usize) -> Vec<u8> {
    format!("Subject: {tag} {i}\r\nMessage-ID: <{tag}-{i}@example.org>\r\n\r\nbody {i}\r\n")
        .into_bytes()
}

/// Starts the daemon on an Inbox holding one message and waits for its first pass and
/// its IDLE; returns it with the Inbox's Maildir.
async fn start_idling(env: &Env) -> (Daemon, PathBuf) {
    let daemon = Daemon::start(env, &[]);
    let inbox = env.maildir("Inbox");
    until(Duration::from_secs(15), "initial pass", &daemon, || {
        count(&inbox) == 1
    })
    .await;
    until(Duration::from_secs(5), "IDLE", &daemon, || {
        daemon.log().contains("state=idle") || daemon.log().contains("IDLE")
    })
    .await;
    (daemon, inbox)
}

/// Config for the daemon tests: a long poll interval unless a test wants polling.
fn write_config(env: &Env, poll: &str) {
    let text = env.config_text("").replace(
        "command_timeout = \"20s\"",
        &format!("command_timeout = \"20s\"\npoll_interval = \"{poll}\""),
    );
    std::fs::write(env.config_path(), text).unwrap();
}

/// New mail in the Inbox reaches the Maildir within 2 s through IDLE (the poll
/// interval is an hour, so only IDLE can deliver it).
async fn idle_delivers_within_two_seconds(profile: Profile) {
    let env = Env::start(profile).await;
    env.dovecot
        .append(USER, "INBOX", &message("first", 0), &[], None)
        .await
        .unwrap();
    write_config(&env, "1h");
    let (daemon, inbox) = start_idling(&env).await;

    let mut latencies = Vec::new();
    for i in 1..=20 {
        env.dovecot
            .append(USER, "INBOX", &message("idle", i), &[], None)
            .await
            .unwrap();
        let took = until(
            Duration::from_secs(2),
            &format!("message {i} via IDLE"),
            &daemon,
            || count(&inbox) == i + 1,
        )
        .await;
        latencies.push(took);
    }
    latencies.sort();
    eprintln!(
        "{}: IDLE latency over 20 messages: median {:?}, max {:?}",
        profile.name(),
        latencies[10],
        latencies[19]
    );
    let (took, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    env.assert_in_sync().await;
}
on_both_profiles!(idle_delivers_within_two_seconds);

/// With `max_connections = 1` the passes IDLE triggers run on the IDLE connection
/// itself: new mail arrives with no second login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_syncs_on_its_idle_connection() {
    let env = Env::start(Profile::Full).await;
    env.dovecot
        .append(USER, "INBOX", &message("first", 0), &[], None)
        .await
        .unwrap();
    write_config(&env, "1h");
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replace("poll_interval = ", "max_connections = 1\npoll_interval = ");
    std::fs::write(env.config_path(), text).unwrap();
    let (daemon, inbox) = start_idling(&env).await;
    // mailsync's logins (the test's own appends log in with the master user).
    let logins = || {
        env.dovecot
            .log()
            .lines()
            .filter(|l| l.contains("Login: ") && l.contains("method=XOAUTH2"))
            .count()
    };
    // The initial pass's login and the IDLE connection's (Dovecot's log lags a little).
    until(
        Duration::from_secs(5),
        "two logins in the log",
        &daemon,
        || logins() >= 2,
    )
    .await;
    let before = logins();
    for i in 1..=5 {
        env.dovecot
            .append(USER, "INBOX", &message("one", i), &[], None)
            .await
            .unwrap();
        until(
            Duration::from_secs(3),
            &format!("message {i} on the IDLE connection"),
            &daemon,
            || count(&inbox) == i + 1,
        )
        .await;
    }
    assert_eq!(logins(), before, "a pass logged in again\n{}", daemon.log());
    let (_, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    env.assert_in_sync().await;
}

/// A flag changed in a polled folder (Archive) shows within one poll interval.
async fn polled_folder_flags(profile: Profile) {
    let env = Env::start(profile).await;
    let uid = env
        .dovecot
        .append(USER, "Archive", &message("arch", 0), &[], None)
        .await
        .unwrap();
    write_config(&env, "2s");
    let daemon = Daemon::start(&env, &[]);
    let archive = env.maildir("Archive");
    until(Duration::from_secs(15), "initial pass", &daemon, || {
        count(&archive) == 1
    })
    .await;
    env.dovecot
        .set_flags(USER, "Archive", uid, &["\\Flagged", "\\Seen"], &[])
        .await
        .unwrap();
    // One poll interval, plus the pass itself.
    until(
        Duration::from_secs(4),
        "flags in the polled folder",
        &daemon,
        || local_messages(&archive).first().map(|m| m.1.clone()) == Some("FS".into()),
    )
    .await;
    drop(daemon);
}
on_both_profiles!(polled_folder_flags);

/// Mappings edited in the TOML while the daemon runs: a new one syncs within 5 s, a
/// removed one stops, an invalid edit is logged and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_of_mappings() {
    let mut env = Env::start(Profile::Full).await;
    env.dovecot
        .append(USER, "Sent Items", &message("sent", 0), &["\\Seen"], None)
        .await
        .unwrap();
    write_config(&env, "2s");
    let daemon = Daemon::start(&env, &[]);
    until(Duration::from_secs(15), "initial pass", &daemon, || {
        env.maildir("Inbox").join("cur").exists()
    })
    .await;
    assert!(!env.maildir("Sent").exists());

    // Add a mapping: saved the way editors do, by renaming a new file over the old.
    env.mappings.push(("Sent".into(), "@sent".into()));
    let text = env.config_text("").replace(
        "command_timeout = \"20s\"",
        "command_timeout = \"20s\"\npoll_interval = \"2s\"",
    );
    let tmp = env.dir.path().join(".config.toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, env.config_path()).unwrap();
    let sent = env.maildir("Sent");
    let took = until(Duration::from_secs(5), "the new mapping", &daemon, || {
        count(&sent) == 1
    })
    .await;
    eprintln!("new mapping synced after {took:?}");

    // An invalid edit: logged, and the running config stays.
    let good = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(env.config_path(), good.replace("\"@sent\"", "\"@sentt\"")).unwrap();
    until(
        Duration::from_secs(5),
        "the rejected edit in the log",
        &daemon,
        || daemon.log().contains("keeping the running configuration"),
    )
    .await;
    assert!(
        daemon.log().contains("@sentt"),
        "the error does not name the bad value:\n{}",
        daemon.log()
    );
    env.dovecot
        .append(USER, "Sent Items", &message("sent", 1), &["\\Seen"], None)
        .await
        .unwrap();
    until(
        Duration::from_secs(5),
        "sync under the old config",
        &daemon,
        || count(&sent) == 2,
    )
    .await;

    // Remove the mapping: the folder stops syncing; its mail stays.
    env.mappings.pop();
    let text = env.config_text("").replace(
        "command_timeout = \"20s\"",
        "command_timeout = \"20s\"\npoll_interval = \"2s\"",
    );
    std::fs::write(env.config_path(), text).unwrap();
    until(Duration::from_secs(5), "the reload", &daemon, || {
        daemon.log().matches("restarting it").count() >= 2
    })
    .await;
    env.dovecot
        .append(USER, "Sent Items", &message("sent", 2), &["\\Seen"], None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(count(&sent), 2, "a removed mapping was still synced");
    drop(daemon);
}

/// `mailsync stop` while the daemon runs: within 2 s no IMAP connection for the
/// account, its tokens gone (bytes too), its table gone from the TOML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_running_disconnects() {
    let env = crate::connect::connected(Profile::Full).await;
    // Only this account, so every IMAP connection of the mailbox is its own.
    let full = std::fs::read_to_string(env.config_path()).unwrap();
    let shared = full.find("# The shared mailbox").unwrap();
    let work = full.find("[accounts.work]").unwrap();
    let before = format!("{}{}", &full[..shared], &full[work..]);
    std::fs::write(env.config_path(), &before).unwrap();
    let daemon = Daemon::start(&env, &[]);
    until(Duration::from_secs(15), "initial pass", &daemon, || {
        count(&env.maildir("Inbox")) == 5
    })
    .await;
    until(
        Duration::from_secs(5),
        "an IMAP connection",
        &daemon,
        || !env.dovecot.who().is_empty(),
    )
    .await;
    let status = env.run(&["status", "--json"]).await;
    let v: serde_json::Value =
        serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {status}"));
    let work = v
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == "work")
        .unwrap();
    assert!(
        ["idle", "syncing", "connecting"].contains(&work["state"].as_str().unwrap()),
        "{status}"
    );

    let started = Instant::now();
    let run = env.run(&["stop", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    until(
        Duration::from_secs(2),
        "no IMAP connection",
        &daemon,
        || env.dovecot.who().is_empty(),
    )
    .await;
    eprintln!(
        "daemon dropped the account {:?} after `stop`",
        started.elapsed()
    );

    let after = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(!after.contains("[accounts.work]"), "{after}");
    assert_eq!(
        after.trim_end(),
        before[..shared].trim_end(),
        "stop changed more than the account's tables"
    );
    for entry in std::fs::read_dir(env.state_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("state.sqlite")
        {
            // The WAL or shared-memory file may go away while we look.
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            for s in env.idp.issued_secrets() {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "a token is still in {}",
                    p.display()
                );
            }
        }
    }
    assert_eq!(
        count(&env.maildir("Inbox")),
        5,
        "stop without --purge must keep the mail"
    );
    let (took, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(10));
}

/// SIGTERM during a large initial sync: out within 10 s; the next run resumes with
/// nothing lost and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_initial_sync() {
    let env = Env::start(Profile::Exchange).await;
    let batch: Vec<SeedMessage> = (0..4000)
        .map(|i| SeedMessage::new(message("big", i), &["\\Seen"]))
        .collect();
    env.dovecot.seed_fast(USER, "Archive", batch).await.unwrap();
    write_config(&env, "1h");
    let daemon = Daemon::start(&env, &[]);
    let archive = env.maildir("Archive");
    until(
        Duration::from_secs(20),
        "the download to start",
        &daemon,
        || count(&archive) > 100,
    )
    .await;
    let (took, code) = daemon.terminate().await;
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    assert_eq!(code, Some(0));
    let partial = count(&archive);
    assert!(
        partial < 4000,
        "the sync finished before SIGTERM; the test proves nothing"
    );
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    env.assert_in_sync().await;
}

/// The account's state as `status --json` reports it.
async fn status_of(env: &Env, account: &str) -> serde_json::Value {
    let run = env.run(&["status", "--json"]).await;
    assert_eq!(run.code, 0, "{run}");
    let v: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
    v.as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == account)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Dovecot stopped under the daemon: `status` says it backs off; started again: it
/// reconnects and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_reconnects() {
    let mut env = Env::start(Profile::Full).await;
    write_config(&env, "1h");
    let daemon = Daemon::start(&env, &[]);
    let inbox = env.maildir("Inbox");
    until(Duration::from_secs(15), "initial pass", &daemon, || {
        inbox.join("cur").exists()
    })
    .await;
    let started = Instant::now();
    loop {
        if status_of(&env, "work").await["state"] == "idle" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "status never said idle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.dovecot.stop().await;
    let started = Instant::now();
    loop {
        let s = status_of(&env, "work").await;
        if s["state"] == "backoff" {
            assert!(!s["last_error"].is_null(), "{s}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "status never said backoff: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.dovecot.start_again().await.unwrap();
    env.dovecot
        .append(USER, "INBOX", &message("after-restart", 0), &[], None)
        .await
        .unwrap();
    until(
        Duration::from_secs(30),
        "mail after the restart",
        &daemon,
        || count(&inbox) == 1,
    )
    .await;
    drop(daemon);
}

/// A revoked sign-in while the daemon runs: `status` says "needs connect" with the
/// reason, and the daemon does not hammer the identity provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_connect_in_status() {
    let env = crate::connect::connected(Profile::Full).await;
    env.idp.revoke_refresh_tokens(USER);
    // Refresh-token requests only: the config's other account (app-only) asks too.
    let refreshes = |idp: &mailsync_testenv::Idp| {
        idp.token_requests()
            .iter()
            .filter(|r| {
                r.iter()
                    .any(|(k, v)| k == "grant_type" && v == "refresh_token")
            })
            .count()
    };
    let calls = refreshes(&env.idp);
    let daemon = Daemon::start(&env, &[]);
    let started = Instant::now();
    loop {
        let s = status_of(&env, "work").await;
        if s["state"] == "needs_connect" {
            let text = s.to_string();
            assert!(
                text.contains("AADSTS50173") || text.contains("invalid_grant"),
                "{s}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "status never said needs_connect: {s}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        refreshes(&env.idp) - calls,
        1,
        "the dead grant was retried:\n{}",
        daemon.log()
    );
    drop(daemon);
}

/// The access token expires while the daemon idles, and the server drops the session
/// (Exchange ends it with `BYE … AccessTokenExpired`): it signs in again and keeps
/// receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiring_while_idle() {
    let env = crate::connect::connected(Profile::Exchange).await;
    let text = std::fs::read_to_string(env.config_path()).unwrap().replace(
        "command_timeout   =   \"20s\"",
        "command_timeout = \"20s\"\npoll_interval = \"1h\"",
    );
    std::fs::write(env.config_path(), text).unwrap();
    let daemon = Daemon::start(&env, &[]);
    let inbox = env.maildir("Inbox");
    until(Duration::from_secs(15), "initial pass", &daemon, || {
        count(&inbox) == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = env.idp.token_calls();
    env.idp.expire_access_tokens();
    env.dovecot.kick(USER).unwrap();
    env.dovecot
        .append(USER, "INBOX", &message("after-expiry", 0), &[], None)
        .await
        .unwrap();
    until(
        Duration::from_secs(10),
        "mail after the token expired",
        &daemon,
        || count(&inbox) == 6,
    )
    .await;
    assert!(env.idp.token_calls() > calls, "no new token was requested");
    env.dovecot
        .append(USER, "INBOX", &message("after-expiry", 1), &[], None)
        .await
        .unwrap();
    until(Duration::from_secs(3), "IDLE again", &daemon, || {
        count(&inbox) == 7
    })
    .await;
    drop(daemon);
}

/// systemd's notify protocol: READY=1 once started, STATUS= lines, WATCHDOG=1 pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_status_watchdog() {
    let env = Env::start(Profile::Full).await;
    env.dovecot
        .append(USER, "INBOX", &message("n", 0), &[], None)
        .await
        .unwrap();
    write_config(&env, "1h");
    let socket_path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let daemon = Daemon::start(
        &env,
        &[
            ("NOTIFY_SOCKET", socket_path.display().to_string()),
            ("WATCHDOG_USEC", "400000".into()),
        ],
    );
    let mut seen = String::new();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(15) {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
        if seen.contains("READY=1")
            && seen.contains("STATUS=work: ")
            && seen.matches("WATCHDOG=1").count() >= 2
        {
            break;
        }
    }
    assert!(seen.contains("READY=1"), "{seen}\n{}", daemon.log());
    assert!(seen.contains("STATUS=work: "), "{seen}");
    assert!(seen.matches("WATCHDOG=1").count() >= 2, "{seen}");
    let (_, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
}
