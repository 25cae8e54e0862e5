//! Hostile and broken servers (issue 11): the real `mailsync sync` against a scripted
//! server that misbehaves in one way per test. Each test is named after what breaks.

use mailsync_testenv::hostile::{HostileOptions, Reply};

use crate::support::hostile_env::{HostileEnv, small_message};

/// The harness itself: a sane scripted server syncs, and a second sync changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sane_scripted_server_syncs() {
    let env = HostileEnv::start(HostileOptions::default());
    for n in 1..=3 {
        env.server.append("INBOX", small_message(n), &["\\Seen"]);
    }
    let run = env.sync_ok().await;
    eprintln!("{run}");
    env.assert_in_sync();
    let _ = Reply::Send(Vec::new());
}
