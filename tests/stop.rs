//! `mailsync stop` (disconnect) and `mailsync status`, end to end: after a connect and a
//! sync, stop leaves no token in the database files, removes exactly the account's
//! tables from the config, keeps the mail unless `--purge`, and a second run has
//! nothing to do. `status` reads the state without the network or a daemon.

use mailsync_testenv::dovecot::{Profile, SeedMessage};
use serde_json::Value;

use crate::connect::{connected, hand_written};
use crate::support::{Env, USER, local_messages, tokens};

/// `status --json`, parsed.
async fn status_json(env: &Env) -> Vec<Value> {
    let run = env.run(&["status", "--json"]).await;
    assert_eq!(run.code, 0, "{run}");
    serde_json::from_str::<Value>(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{run}"))
        .as_array()
        .expect("an array")
        .clone()
}

fn account<'a>(status: &'a [Value], name: &str) -> Option<&'a Value> {
    status.iter().find(|a| a["account"] == name)
}

fn folder<'a>(account: &'a Value, local: &str) -> &'a Value {
    account["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["local"] == local)
        .unwrap_or_else(|| panic!("no folder {local} in {account:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_disconnects_and_a_second_stop_has_nothing_to_do() {
    let env = connected(Profile::Full).await;
    let before_connect = hand_written(&env);
    let run = env.run(&["sync", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    let inbox_mail = local_messages(&env.maildir("Inbox"));
    assert_eq!(inbox_mail.len(), 5);

    let status = status_json(&env).await;
    let work = account(&status, "work").expect("work in status");
    assert_eq!(work["token"]["status"], "ok", "{work:#}");
    assert_eq!(work["token"]["granted_to"], USER, "{work:#}");

    // The sealed refresh and access tokens as stored, to look for afterwards.
    let sealed = tokens::sealed(&env.state_dir(), "work");
    assert_eq!(
        sealed.len(),
        2,
        "expected the refresh token and the access token the sync kept"
    );

    // Two accounts: the name is required.
    let run = env.run(&["stop"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("name the account"), "{run}");

    let run = env.run(&["stop", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    for said in [
        "tokens: deleted",
        "folder mapping",
        "6 message records",
        "removed [accounts.work]",
        "mail: kept",
    ] {
        assert!(
            run.stdout.contains(said),
            "stop did not say {said:?}:\n{run}"
        );
    }

    // The config is what it was before connect: the account's tables gone, every
    // other byte kept.
    let after = std::fs::read_to_string(env.config_path()).unwrap();
    assert_eq!(after, before_connect, "stop changed more than the account");

    // No token anywhere: not in status, not in the database files, not even sealed.
    let status = status_json(&env).await;
    assert!(
        account(&status, "work").is_none_or(|w| w["token"].is_null()),
        "{status:#?}"
    );
    tokens::assert_gone(&env, "work", &sealed);
    // The mail stays.
    assert_eq!(local_messages(&env.maildir("Inbox")), inbox_mail);

    // A daemon dropping the account may report it stopped after the stop: still
    // nothing to do, and the leftover row goes.
    mailsync::state::State::open(&env.state_dir())
        .unwrap()
        .set_daemon_state("work", mailsync::state::RunState::Stopped, None)
        .unwrap();

    // Again, and for an unknown account: one line, exit 0.
    for args in [["stop", "work"], ["stop", "unknown"]] {
        let run = env.run(&args).await;
        assert_eq!(run.code, 0, "{run}");
        assert_eq!(run.stdout.lines().count(), 1, "{run}");
        assert!(run.stdout.starts_with("Nothing to do"), "{run}");
        assert!(run.stderr.is_empty(), "{run}");
    }
    assert_eq!(
        std::fs::read_to_string(env.config_path()).unwrap(),
        before_connect
    );
    let status = status_json(&env).await;
    assert!(account(&status, "work").is_none(), "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_before_and_after_a_sync_then_stop_purge() {
    let env = Env::start(Profile::Exchange).await;
    let batch: Vec<SeedMessage> = (0..3)
        .map(|i| {
            SeedMessage::new(
                format!("Subject: s{i}\r\n\r\nbody {i}\r\n").into_bytes(),
                &[],
            )
        })
        .collect();
    env.dovecot.append_many(USER, "INBOX", batch).await.unwrap();

    // Before any sync: no state directory at all, and status creates none.
    let status = status_json(&env).await;
    assert!(
        !env.state_dir().exists(),
        "status created the state directory"
    );
    let work = account(&status, "work").expect("work in status");
    assert_eq!(work["state"], "stopped");
    assert_eq!(work["configured"], true);
    assert!(work["token"].is_null() && work["pid"].is_null(), "{work:#}");
    let inbox = folder(work, "Inbox");
    assert_eq!(inbox["local_count"], 0);
    assert_eq!(inbox["remote"], "INBOX");
    assert!(inbox["last_sync"].is_null(), "{inbox:#}");

    env.sync().await;
    let run = env.run(&["status", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.starts_with("work: stopped"), "{run}");
    assert!(
        run.stdout.contains("LAST SYNC")
            && (run.stdout.contains("(just now)") || run.stdout.contains(" s ago)")),
        "{run}"
    );
    let status = status_json(&env).await;
    let work = account(&status, "work").unwrap();
    assert_eq!(work["state"], "stopped", "{work:#}");
    assert!(work["last_error"].is_null(), "{work:#}");
    let inbox = folder(work, "Inbox");
    assert_eq!(inbox["local_count"], 3, "{inbox:#}");
    assert_eq!(inbox["remote_count"], 3, "{inbox:#}");
    let last_sync = inbox["last_sync"].as_str().expect("last_sync set");
    assert!(
        last_sync.ends_with('Z') && last_sync.contains('T'),
        "{last_sync}"
    );
    assert_eq!(folder(work, "Deleted Items")["local_count"], 0);

    // An unknown account: exit 1.
    let run = env.run(&["status", "nobody"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("nobody"), "{run}");

    // The only account: no name needed. A file of the user's in the Maildir root
    // keeps the root; the mapped folders go.
    std::fs::write(env.mail_root().join("notes.txt"), "mine").unwrap();
    let run = env.run(&["stop", "--purge"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("3 message files"), "{run}");
    for (local, _) in &env.mappings {
        assert!(!env.maildir(local).exists(), "{local} was not purged");
    }
    assert_eq!(
        std::fs::read_to_string(env.mail_root().join("notes.txt")).unwrap(),
        "mine"
    );
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(!config.contains("[accounts.work"), "{config}");
    assert!(
        config.starts_with("# mailsync test config\n[daemon]\n"),
        "{config}"
    );
    let run = env.run(&["status", "--json"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.stdout.trim(), "[]", "{run}");
}

/// `stop` is how an account that breaks the config is got rid of: its tables are cut
/// out as text, and once the rest loads, its state goes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_removes_an_account_whose_config_no_longer_loads() {
    let env = Env::start(Profile::Full).await;
    env.dovecot
        .append(USER, "INBOX", b"Subject: x\r\n\r\nx\r\n", &[], None)
        .await
        .unwrap();
    env.sync().await;
    std::fs::write(env.config_path(), env.config_text("bogus = 1\n")).unwrap();
    let run = env.run(&["status"]).await;
    assert_eq!(run.code, 2, "{run}");

    let run = env.run(&["stop"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("name the account"), "{run}");

    let run = env.run(&["stop", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("does not load"), "{run}");
    assert!(run.stdout.contains("1 message record"), "{run}");
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(
        !config.contains("[accounts.work") && !config.contains("bogus"),
        "{config}"
    );
    let run = env.run(&["status", "--json"]).await;
    assert_eq!((run.code, run.stdout.trim()), (0, "[]"), "{run}");
    assert_eq!(
        local_messages(&env.maildir("Inbox")).len(),
        1,
        "the mail stays"
    );
}
