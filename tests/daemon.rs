//! `mailsync run` as a child process against the real Dovecot: IDLE, polling, hot
//! reload (file edits and SIGHUP; mappings, accounts and `[daemon]`), `stop` while
//! running, the account lock between `sync` and `run`, SIGTERM, a server restart, a
//! token expiring while idle, and systemd's notify protocol.
//!
//! The tests wait for events (a file, a log line, the server's own state) with
//! generous deadlines; the only time bounds asserted are the README's (`stop` drops
//! the connections within 2 s, SIGTERM exits within 10 s). Latencies are printed, and
//! measured in the benchmark.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailsync_testenv::dovecot::{Profile, SeedMessage};

use crate::on_both_profiles;
use crate::support::daemon::{Daemon, until};
use crate::support::{Env, USER, local_messages};

/// Generous: a deadline for an event, not a measure of speed.
const EVENT: Duration = Duration::from_secs(60);

/// A second mailbox, of its own user, reached by its own app-only registration: its
/// activity shows the daemon alive while a test watches the first account do nothing.
const BOB: &str = "bob@example.com";
const BOB_APP: &str = "66666666-7777-8888-9999-000000000000";

/// Registers Bob with the identity provider and returns his account's tables (local
/// `Inbox` only, in `BobMail`), to append to a config.
fn bob_account(env: &Env) -> String {
    env.idp.add_user(BOB);
    env.idp
        .add_app(BOB_APP, Some(crate::support::CLIENT_SECRET), Some(BOB));
    format!(
        "\n{}\n[accounts.bob.folders]\nInbox = \"INBOX\"\n",
        env.app_only_account("bob", BOB, BOB_APP, &bob_mail(env))
    )
}

fn bob_mail(env: &Env) -> PathBuf {
    env.dir.path().join("BobMail")
}

/// Appends a message to Bob's INBOX and waits until his Maildir holds `total`: the
/// daemon is alive and has done a pass since.
async fn bob_receives(env: &Env, daemon: &Daemon, tag: &str, total: usize) {
    env.dovecot
        .append(BOB, "INBOX", &message(tag, total), &[], None)
        .await
        .unwrap();
    let inbox = bob_mail(env).join("Inbox");
    until(EVENT, &format!("Bob's message {tag}"), daemon, || {
        count(&inbox) == total
    })
    .await;
}

/// Mailsync's logins as `user` in the Dovecot log after line `since`.
fn logins_of(env: &Env, user: &str, since: usize) -> usize {
    let user = format!("user=<{user}>");
    crate::support::oauth_logins(&env.dovecot.log(), since)
        .filter(|l| l.contains(&user))
        .count()
}

/// Whether the server has an IMAP session of `user` (`doveadm who`, which must work).
fn connected(env: &Env, user: &str) -> bool {
    env.dovecot
        .who()
        .expect("doveadm who")
        .iter()
        .any(|u| u == user)
}

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
    server_idling(env, &daemon).await;
    (daemon, inbox)
}

/// Waits until the server reports one of its sessions in IDLE: Dovecot's own view of
/// the connection (its process title), not the client's log.
async fn server_idling(env: &Env, daemon: &Daemon) {
    until(Duration::from_secs(30), "a session in IDLE", daemon, || {
        env.dovecot
            .session_titles()
            .iter()
            .any(|t| t.ends_with(" IDLE]"))
    })
    .await;
}

/// Config for the daemon tests: a long poll interval unless a test wants polling.
fn write_config(env: &Env, poll: &str) {
    std::fs::write(env.config_path(), config_with(env, poll, "")).unwrap();
}

/// The test config with `poll_interval = poll` and `more` appended (more accounts).
fn config_with(env: &Env, poll: &str, more: &str) -> String {
    let text = env.config_text("").replace(
        "command_timeout = \"20s\"",
        &format!("command_timeout = \"20s\"\npoll_interval = \"{poll}\""),
    );
    format!("{text}{more}")
}

/// Saves `text` as the config the way editors do: a new file renamed over the old.
fn save_config(env: &Env, text: &str) {
    let tmp = env.dir.path().join(".config.toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, env.config_path()).unwrap();
}

/// New mail in the Inbox reaches the Maildir through IDLE: the poll interval is an
/// hour, so nothing else can deliver it. The latency is printed, not asserted (the
/// benchmark measures it).
async fn idle_delivers_new_mail(profile: Profile) {
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
        let took = until(EVENT, &format!("message {i} via IDLE"), &daemon, || {
            count(&inbox) == i + 1
        })
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
on_both_profiles!(idle_delivers_new_mail);

/// With `max_connections = 1` the passes IDLE triggers run on the IDLE connection
/// itself: new mail arrives with no second login.
async fn one_connection_syncs_on_its_idle_connection(profile: Profile) {
    let env = Env::start(profile).await;
    env.dovecot
        .append(USER, "INBOX", &message("first", 0), &[], None)
        .await
        .unwrap();
    let text = config_with(&env, "1h", "")
        .replace("poll_interval = ", "max_connections = 1\npoll_interval = ");
    std::fs::write(env.config_path(), text).unwrap();
    let (daemon, inbox) = start_idling(&env).await;
    // The initial pass's login and the IDLE connection's (Dovecot's log lags a little).
    until(EVENT, "two logins in the log", &daemon, || {
        logins_of(&env, USER, 0) >= 2
    })
    .await;
    let before = logins_of(&env, USER, 0);
    for i in 1..=5 {
        env.dovecot
            .append(USER, "INBOX", &message("one", i), &[], None)
            .await
            .unwrap();
        until(
            EVENT,
            &format!("message {i} on the IDLE connection"),
            &daemon,
            || count(&inbox) == i + 1,
        )
        .await;
    }
    assert_eq!(
        logins_of(&env, USER, 0),
        before,
        "a pass logged in again\n{}",
        daemon.log()
    );
    let (_, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    env.assert_in_sync().await;
}
on_both_profiles!(one_connection_syncs_on_its_idle_connection);

/// A flag changed in a polled folder (Archive) shows at a later poll.
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
    until(EVENT, "initial pass", &daemon, || count(&archive) == 1).await;
    env.dovecot
        .set_flags(USER, "Archive", uid, &["\\Flagged", "\\Seen"], &[])
        .await
        .unwrap();
    until(EVENT, "flags in the polled folder", &daemon, || {
        local_messages(&archive).first().map(|m| m.1.clone()) == Some("FS".into())
    })
    .await;
    drop(daemon);
}
on_both_profiles!(polled_folder_flags);

/// Mappings edited in the TOML while the daemon runs: a new one syncs, an invalid
/// edit is logged and changes nothing, a removed one stops (its mail stays).
async fn hot_reload_of_mappings(profile: Profile) {
    let mut env = Env::start(profile).await;
    env.dovecot
        .append(USER, "Sent Items", &message("sent", 0), &["\\Seen"], None)
        .await
        .unwrap();
    write_config(&env, "1s");
    let daemon = Daemon::start(&env, &[]);
    until(EVENT, "initial pass", &daemon, || {
        env.maildir("Inbox").join("cur").exists()
    })
    .await;
    assert!(!env.maildir("Sent").exists());

    // Add a mapping, saved the way editors do.
    env.mappings.push(("Sent".into(), "@sent".into()));
    save_config(&env, &config_with(&env, "1s", ""));
    let sent = env.maildir("Sent");
    let took = until(EVENT, "the new mapping", &daemon, || count(&sent) == 1).await;
    eprintln!("new mapping synced after {took:?}");

    // An invalid edit: logged, and the running config stays.
    let good = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(env.config_path(), good.replace("\"@sent\"", "\"@sentt\"")).unwrap();
    until(EVENT, "the rejected edit in the log", &daemon, || {
        daemon.log().contains("keeping the running configuration")
    })
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
    until(EVENT, "sync under the old config", &daemon, || {
        count(&sent) == 2
    })
    .await;

    // Remove the mapping: the folder stops syncing; its mail stays. Mail goes to the
    // removed folder and then to a folder still mapped and polled (Archive): once
    // Archive has its message, a pass ran after both appends, and it left Sent alone.
    env.mappings.pop();
    save_config(&env, &config_with(&env, "1s", ""));
    until(EVENT, "the reload", &daemon, || {
        daemon
            .log()
            .matches("account changed: restarting it")
            .count()
            >= 2
    })
    .await;
    env.dovecot
        .append(USER, "Sent Items", &message("sent", 2), &["\\Seen"], None)
        .await
        .unwrap();
    for i in 0..2 {
        env.dovecot
            .append(USER, "Archive", &message("after-removal", i), &[], None)
            .await
            .unwrap();
        until(EVENT, "a pass after the removal", &daemon, || {
            count(&env.maildir("Archive")) == i + 1
        })
        .await;
    }
    assert_eq!(count(&sent), 2, "a removed mapping was still synced");
    drop(daemon);
}
on_both_profiles!(hot_reload_of_mappings);

/// SIGHUP (`systemctl reload`) applies an edit the file watch cannot see: the config
/// is a symlink into another directory (a dotfiles repository, GNU stow), and the
/// file edited is its target, so nothing changes in the watched directory. A new
/// account and a changed `[daemon]` setting take effect only through the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_accounts_and_daemon_settings() {
    let env = Env::start(Profile::Full).await;
    let uid = env
        .dovecot
        .append(USER, "Archive", &message("arch", 0), &[], None)
        .await
        .unwrap();
    let dotfiles = env.dir.path().join("dotfiles");
    std::fs::create_dir(&dotfiles).unwrap();
    let target = dotfiles.join("mailsync.toml");
    std::fs::write(&target, config_with(&env, "1h", "")).unwrap();
    std::fs::remove_file(env.config_path()).unwrap();
    std::os::unix::fs::symlink(&target, env.config_path()).unwrap();
    let daemon = Daemon::start(&env, &[]);
    until(EVENT, "initial pass", &daemon, || {
        count(&env.maildir("Archive")) == 1
    })
    .await;

    // The edit: a second account, and polling every second instead of every hour.
    env.dovecot
        .append(BOB, "INBOX", &message("bob", 1), &[], None)
        .await
        .unwrap();
    env.dovecot
        .set_flags(USER, "Archive", uid, &["\\Flagged"], &[])
        .await
        .unwrap();
    std::fs::write(&target, config_with(&env, "1s", &bob_account(&env))).unwrap();
    daemon.signal("HUP");
    until(EVENT, "the new account's mail", &daemon, || {
        count(&bob_mail(&env).join("Inbox")) == 1
    })
    .await;
    // Archive is polled, and only the new poll interval reaches it in time.
    until(EVENT, "the flag, by the new poll interval", &daemon, || {
        local_messages(&env.maildir("Archive"))
            .first()
            .map(|m| m.1.clone())
            == Some("F".into())
    })
    .await;
    let (_, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    env.assert_in_sync().await;
}

/// An account removed from the config while the daemon runs: its sessions end, it
/// does not sign in again, its mail stays; the other account goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_account_stops() {
    let env = Env::start(Profile::Exchange).await;
    env.dovecot
        .append(USER, "INBOX", &message("work", 0), &[], None)
        .await
        .unwrap();
    let bob = bob_account(&env);
    std::fs::write(env.config_path(), config_with(&env, "1s", &bob)).unwrap();
    let daemon = Daemon::start(&env, &[]);
    until(EVENT, "work's initial pass", &daemon, || {
        count(&env.maildir("Inbox")) == 1
    })
    .await;
    bob_receives(&env, &daemon, "bob", 1).await;

    // Remove `work`: Bob's account is all that is left.
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let start = text.find("[accounts.work]").unwrap();
    let end = text.find("\n[accounts.bob]").unwrap();
    save_config(&env, &format!("{}{}", &text[..start], &text[end..]));
    until(EVENT, "the removal", &daemon, || {
        daemon.log().contains("account removed from the config")
    })
    .await;
    until(EVENT, "work's sessions to end", &daemon, || {
        !connected(&env, USER)
    })
    .await;
    let mark = env.log_lines();
    env.dovecot
        .append(USER, "INBOX", &message("work", 1), &[], None)
        .await
        .unwrap();
    // Two of Bob's passes after the removal: the daemon is alive and polling.
    bob_receives(&env, &daemon, "bob", 2).await;
    bob_receives(&env, &daemon, "bob", 3).await;
    assert_eq!(
        logins_of(&env, USER, mark),
        0,
        "the removed account signed in"
    );
    assert!(!connected(&env, USER), "the removed account is connected");
    assert_eq!(
        count(&env.maildir("Inbox")),
        1,
        "its mail must stay, untouched"
    );
    // `status` still shows its sync state (the mail and records stay until `stop`),
    // as not configured and not running.
    let s = status_of(&env, "work").await;
    assert_eq!(s["configured"], false, "{s}");
    assert!(s["pid"].is_null() && s["state"] == "stopped", "{s}");
    drop(daemon);
}

/// `mailsync stop` while the daemon runs: within 2 s no IMAP connection for the
/// account, and it never signs in again; its tokens gone (plain and sealed, also from
/// the WAL, also after the daemon has exited); its table gone from the TOML. Another
/// account in the same daemon goes on.
async fn stop_while_running_disconnects(profile: Profile) {
    let env = crate::connect::connected(profile).await;
    // `work` and Bob's account: every session of the user is `work`'s.
    let full = std::fs::read_to_string(env.config_path()).unwrap();
    let shared = full.find("# The shared mailbox").unwrap();
    let work = full.find("[accounts.work]").unwrap();
    let kept = format!(
        "{}{}\n",
        full[..shared].replace(
            "command_timeout   =   \"20s\"",
            "command_timeout = \"20s\"\npoll_interval = \"1s\""
        ),
        bob_account(&env).trim()
    );
    let before = format!("{kept}\n{}", &full[work..]);
    std::fs::write(env.config_path(), &before).unwrap();
    let daemon = Daemon::start(&env, &[]);
    until(EVENT, "initial pass", &daemon, || {
        count(&env.maildir("Inbox")) == 5
    })
    .await;
    until(EVENT, "an IMAP connection", &daemon, || {
        connected(&env, USER)
    })
    .await;
    let s = status_of(&env, "work").await;
    assert!(
        ["idle", "syncing", "connecting"].contains(&s["state"].as_str().unwrap()),
        "{s}"
    );
    let sealed = crate::support::tokens::sealed(&env.state_dir(), "work");
    assert!(!sealed.is_empty(), "no sealed token to look for");

    let started = Instant::now();
    let run = env.run(&["stop", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    until(
        Duration::from_secs(2),
        "no IMAP connection",
        &daemon,
        || !connected(&env, USER),
    )
    .await;
    eprintln!(
        "daemon dropped the account {:?} after `stop`",
        started.elapsed()
    );
    let mark = env.log_lines();

    // New mail for both: Bob's arrives twice over, `work`'s never does.
    env.dovecot
        .append(USER, "INBOX", &message("after-stop", 0), &[], None)
        .await
        .unwrap();
    bob_receives(&env, &daemon, "bob", 1).await;
    bob_receives(&env, &daemon, "bob", 2).await;
    assert_eq!(
        logins_of(&env, USER, mark),
        0,
        "the stopped account signed in again"
    );
    assert!(
        !connected(&env, USER),
        "the stopped account is connected again"
    );

    let after = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(!after.contains("[accounts.work]"), "{after}");
    assert_eq!(
        after.trim_end(),
        kept.trim_end(),
        "stop changed more than the account's tables"
    );
    crate::support::tokens::assert_gone(&env, "work", &sealed);
    assert_eq!(
        count(&env.maildir("Inbox")),
        5,
        "stop without --purge must keep the mail"
    );
    let (took, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(10));
    // Nothing written back on the way out.
    crate::support::tokens::assert_gone(&env, "work", &sealed);
}
on_both_profiles!(stop_while_running_disconnects);

/// One account, two processes: a `sync` while the daemon holds the account is
/// refused and touches nothing; a daemon started during a `sync` waits for it, then
/// takes over; nothing is downloaded twice.
async fn sync_and_run_contend(profile: Profile) {
    let env = Env::start(profile).await;
    let batch: Vec<SeedMessage> = (0..3000)
        .map(|i| SeedMessage::new(message("lock", i), &["\\Seen"]))
        .collect();
    env.dovecot.seed_fast(USER, "Archive", batch).await.unwrap();
    write_config(&env, "1s");

    // A `sync` first, paused (SIGSTOP) mid-download so that it holds the account
    // for as long as the test needs; then the daemon.
    let mark = env.log_lines();
    let sync = env
        .command(&["sync"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let archive = env.maildir("Archive");
    let waiting = Instant::now();
    while count(&archive) == 0 {
        assert!(
            waiting.elapsed() < EVENT,
            "the sync never started downloading"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = sync.id().to_string();
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    kill("-STOP");
    let daemon = Daemon::start(&env, &[]);
    until(EVENT, "the daemon to wait for the lock", &daemon, || {
        daemon.log().contains("waiting for it")
    })
    .await;
    assert!(
        count(&archive) < 3000,
        "the daemon downloaded while the sync held the account"
    );
    kill("-CONT");
    let sync = tokio::task::spawn_blocking(move || sync.wait_with_output().unwrap());
    let sync = crate::support::Run::from(sync.await.unwrap());
    assert_eq!(sync.code, 0, "{sync}");
    // The daemon takes the account over once the sync let go.
    env.dovecot
        .append(USER, "INBOX", &message("daemon", 0), &[], None)
        .await
        .unwrap();
    until(EVENT, "the daemon's pass", &daemon, || {
        count(&env.maildir("Inbox")) == 1
    })
    .await;

    // Now a `sync` while the daemon holds the account: refused, nothing touched.
    let inbox_before = local_messages(&env.maildir("Inbox"));
    env.dovecot
        .append(USER, "INBOX", &message("refused", 0), &[], None)
        .await
        .unwrap();
    let logins = logins_of(&env, USER, 0);
    let refused = env.run(&["sync"]).await;
    assert_eq!(refused.code, 2, "{refused}");
    assert!(
        refused.stderr.contains("another mailsync process"),
        "{refused}"
    );
    assert_eq!(
        logins_of(&env, USER, 0),
        logins,
        "the refused sync signed in"
    );
    let (_, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    assert!(
        local_messages(&env.maildir("Inbox")).len() >= inbox_before.len(),
        "the refused sync removed mail"
    );
    env.run(&["sync"]).await;
    env.assert_in_sync().await;
    // Every message's body crossed the wire once.
    assert_eq!(env.server_bodies_sent(mark), 3002);
}
on_both_profiles!(sync_and_run_contend);

/// SIGTERM during a large initial sync: out within 10 s; the next run resumes with
/// nothing lost and nothing twice.
async fn sigterm_during_initial_sync(profile: Profile) {
    let env = Env::start(profile).await;
    let batch: Vec<SeedMessage> = (0..4000)
        .map(|i| SeedMessage::new(message("big", i), &["\\Seen"]))
        .collect();
    env.dovecot.seed_fast(USER, "Archive", batch).await.unwrap();
    write_config(&env, "1h");
    let daemon = Daemon::start(&env, &[]);
    let archive = env.maildir("Archive");
    until(EVENT, "the download to start", &daemon, || {
        count(&archive) > 100
    })
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
on_both_profiles!(sigterm_during_initial_sync);

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

/// Polls `status --json` until `cond` holds for the account's entry.
async fn status_until(
    env: &Env,
    daemon: &Daemon,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let s = status_of(env, "work").await;
        if cond(&s) {
            return s;
        }
        assert!(
            started.elapsed() < EVENT,
            "status never said {what}: {s}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Dovecot stopped under the daemon: `status` says it backs off; started again: it
/// reconnects and catches up.
async fn server_restart_reconnects(profile: Profile) {
    let mut env = Env::start(profile).await;
    write_config(&env, "1h");
    let daemon = Daemon::start(&env, &[]);
    let inbox = env.maildir("Inbox");
    until(EVENT, "initial pass", &daemon, || {
        inbox.join("cur").exists()
    })
    .await;
    status_until(&env, &daemon, "idle", |s| s["state"] == "idle").await;
    env.dovecot.stop().await;
    let s = status_until(&env, &daemon, "backoff", |s| s["state"] == "backoff").await;
    assert!(!s["last_error"].is_null(), "{s}");
    env.dovecot.start_again().await.unwrap();
    env.dovecot
        .append(USER, "INBOX", &message("after-restart", 0), &[], None)
        .await
        .unwrap();
    until(EVENT, "mail after the restart", &daemon, || {
        count(&inbox) == 1
    })
    .await;
    drop(daemon);
    env.assert_in_sync().await;
}
on_both_profiles!(server_restart_reconnects);

/// A revoked sign-in while the daemon runs: `status` says "needs connect" with the
/// reason, and the daemon does not hammer the identity provider: while another
/// account in the same daemon goes through passes, the dead grant is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_connect_in_status() {
    let env = crate::connect::connected(Profile::Full).await;
    let text = std::fs::read_to_string(env.config_path()).unwrap().replace(
        "command_timeout   =   \"20s\"",
        "command_timeout = \"20s\"\npoll_interval = \"1s\"",
    );
    std::fs::write(env.config_path(), format!("{text}{}", bob_account(&env))).unwrap();
    env.idp.revoke_refresh_tokens(USER);
    // Refresh-token requests only: the config's other accounts (app-only) ask too.
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
    let s = status_until(&env, &daemon, "needs_connect", |s| {
        s["state"] == "needs_connect"
    })
    .await;
    let text = s.to_string();
    assert!(
        text.contains("AADSTS50173") || text.contains("invalid_grant"),
        "{s}"
    );
    // Three of Bob's passes later, still the one call.
    for i in 1..=3 {
        bob_receives(&env, &daemon, "bob", i).await;
    }
    assert_eq!(
        refreshes(&env.idp) - calls,
        1,
        "the dead grant was retried:\n{}",
        daemon.log()
    );
    drop(daemon);
}

/// The access token expires while the daemon idles, and the server drops the session
/// (Exchange ends it with `BYE … AccessTokenExpired`; here `doveadm kick`): it signs
/// in again with a new token and keeps receiving.
async fn token_expiring_while_idle(profile: Profile) {
    let env = crate::connect::connected(profile).await;
    // Only `work`: every session of the user, IDLE included, is its own.
    let full = std::fs::read_to_string(env.config_path()).unwrap();
    let shared = full.find("# The shared mailbox").unwrap();
    let work = full.find("[accounts.work]").unwrap();
    let text = format!("{}{}", &full[..shared], &full[work..]).replace(
        "command_timeout   =   \"20s\"",
        "command_timeout = \"20s\"\npoll_interval = \"1h\"",
    );
    std::fs::write(env.config_path(), text).unwrap();
    let daemon = Daemon::start(&env, &[]);
    let inbox = env.maildir("Inbox");
    until(EVENT, "initial pass", &daemon, || count(&inbox) == 5).await;
    server_idling(&env, &daemon).await;
    let calls = env.idp.token_calls();
    env.idp.expire_access_tokens();
    env.dovecot.kick(USER).unwrap();
    env.dovecot
        .append(USER, "INBOX", &message("after-expiry", 0), &[], None)
        .await
        .unwrap();
    until(EVENT, "mail after the token expired", &daemon, || {
        count(&inbox) == 6
    })
    .await;
    assert!(env.idp.token_calls() > calls, "no new token was requested");
    server_idling(&env, &daemon).await;
    env.dovecot
        .append(USER, "INBOX", &message("after-expiry", 1), &[], None)
        .await
        .unwrap();
    until(EVENT, "mail through IDLE again", &daemon, || {
        count(&inbox) == 7
    })
    .await;
    drop(daemon);
}
on_both_profiles!(token_expiring_while_idle);

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
    while started.elapsed() < EVENT {
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
