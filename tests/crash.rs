//! Crash safety: `mailsync sync` killed with SIGKILL at many instants of an initial
//! sync, or of the pass that re-pairs a folder whose mapping moved, then run to
//! completion, leaves the Maildir equal to the server: nothing missing, nothing twice,
//! nothing left in tmp/.

use std::time::{Duration, Instant};

use mailsync_testenv::dovecot::{Profile, SeedMessage};

use crate::on_both_profiles;
use crate::support::{Env, USER, local_messages};

const MESSAGES: usize = 2000;
const KILLS: usize = 20;

fn message(i: usize) -> Vec<u8> {
    let body = "The quick brown fox jumps over the lazy dog.\r\n".repeat(20 + i % 90);
    format!(
        "From: s{i}@example.org\r\nTo: {USER}\r\nSubject: crash test {i}\r\nMessage-ID: <crash-{i}@example.org>\r\n\r\n{body}"
    )
    .into_bytes()
}

/// Starts `mailsync sync` and SIGKILLs it after `delay`; false if it ended first.
async fn sync_killed_after(env: &Env, delay: Duration) -> bool {
    let mut cmd = env.command(&["sync"]);
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(_) => false,
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                true
            }
        }
    })
    .await
    .unwrap()
}

async fn killed_initial_sync_converges(profile: Profile) {
    let env = Env::start(profile).await;
    let split = [
        ("INBOX", 0..700),
        ("Archive", 700..1800),
        ("Deleted Items", 1800..MESSAGES),
    ];
    for (folder, range) in split {
        let batch: Vec<SeedMessage> = range
            .map(|i| {
                SeedMessage::new(
                    message(i),
                    if i % 5 == 0 { &[][..] } else { &["\\Seen"][..] },
                )
            })
            .collect();
        env.dovecot.seed_fast(USER, folder, batch).await.unwrap();
    }

    // Delays spread from "before login" to "deep into the downloads", varied so kills
    // land in recovery, listing, journalling, delivery and commit alike.
    let mut kills = 0;
    let mut completed = 0;
    // How many messages were on disk at each kill: proof the kills hit mid-download.
    let mut on_disk_at_kill = Vec::new();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let started = Instant::now();
    while kills < KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(30 + seed % 1200);
        let killed = sync_killed_after(&env, delay).await;
        if killed {
            kills += 1;
            let n: usize = ["Inbox", "Archive", "Deleted Items"]
                .iter()
                .map(|l| local_messages(&env.maildir(l)).len())
                .sum();
            on_disk_at_kill.push(n);
        } else {
            // The sync finished before the kill: check it, then start over from an
            // empty store so the remaining kills hit an initial sync too.
            completed += 1;
            env.assert_in_sync().await;
            std::fs::remove_dir_all(env.mail_root()).unwrap();
            std::fs::remove_dir_all(env.state_dir()).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "crash test ran too long"
        );
    }

    eprintln!(
        "{}: messages on disk at each kill: {on_disk_at_kill:?}; {completed} runs completed",
        profile.name()
    );
    let mid = on_disk_at_kill
        .iter()
        .filter(|&&n| n > 0 && n < MESSAGES)
        .count();
    assert!(
        mid >= KILLS / 2,
        "only {mid} kills landed mid-download: {on_disk_at_kill:?}"
    );

    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    env.assert_in_sync().await;
    let total: usize = ["Inbox", "Archive", "Deleted Items"]
        .iter()
        .map(|l| local_messages(&env.maildir(l)).len())
        .sum();
    assert_eq!(
        total, MESSAGES,
        "after {kills} kills and {completed} completed runs"
    );
}
on_both_profiles!(killed_initial_sync_converges);

/// A mapping moved to another remote folder with the same UIDVALIDITY (issue 11, item
/// 7): the old folder's records are set apart and re-paired, messages both folders
/// hold are moved in place, the rest fetched or removed. Killed with SIGKILL at random
/// instants of that pass, then run to the end, the local folder equals the new remote
/// one: nothing missing, nothing twice.
async fn killed_remap_converges(profile: Profile) {
    let mut env = Env::start(profile).await;
    let old: Vec<SeedMessage> = (0..600)
        .map(|i| SeedMessage::new(message(i), &["\\Seen"]))
        .collect();
    env.dovecot.seed_fast(USER, "Archive", old).await.unwrap();
    env.dovecot.create_folder(USER, "Old").await.unwrap();
    let validity = env.dovecot.uidvalidity(USER, "Archive").await.unwrap();
    env.dovecot.set_uidvalidity(USER, "Old", validity).unwrap();
    // 200 messages the two folders share, 600 only the new one has.
    let new: Vec<SeedMessage> = (400..1200)
        .map(|i| SeedMessage::new(message(i), &[]))
        .collect();
    env.dovecot.seed_fast(USER, "Old", new).await.unwrap();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");

    for (local, remote) in env.mappings.iter_mut() {
        if local == "Archive" {
            *remote = "Old".into();
        }
    }
    env.write_config();
    // Each run is killed a little later than the one before (with some jitter), so
    // the kills walk through the pass until one run gets to its end.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut kills = 0;
    for i in 0..KILLS as u64 * 4 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(20 + 25 * i + seed % 40);
        let killed = sync_killed_after(&env, delay).await;
        if !killed {
            break;
        }
        kills += 1;
    }
    assert!(
        kills >= 3,
        "only {kills} runs were killed: the pass is too quick to test"
    );
    eprintln!(
        "{}: {kills} runs killed before one completed",
        profile.name()
    );
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    env.assert_in_sync().await;
    assert_eq!(local_messages(&env.maildir("Archive")).len(), 800);
    let again = env.sync().await;
    assert_eq!(again.total(), Default::default(), "after {kills} kills");
}
on_both_profiles!(killed_remap_converges);
