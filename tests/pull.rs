//! Pull sync against the real server: initial sync, new mail, flags both ways,
//! expunge, moves done locally, UIDVALIDITY changes, localized role folders.

use mailsync_testenv::corpus::{Corpus, CorpusOptions};
use mailsync_testenv::dovecot::{MoveMode, Profile, SeedMessage};

use crate::on_both_profiles;
use crate::support::{Env, USER};

fn message(i: usize, size: usize) -> Vec<u8> {
    let body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n".repeat(size / 58 + 1);
    format!(
        "From: Sender {i} <sender{i}@example.org>\r\nTo: {USER}\r\nSubject: Test message {i}\r\nDate: Mon, 2 Nov 2026 10:{:02}:00 +0000\r\nMessage-ID: <msg-{i}@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}",
        i % 60
    )
    .into_bytes()
}

async fn seed(env: &Env, folder: &str, range: std::ops::Range<usize>, flags: &[&str]) -> Vec<u32> {
    let messages: Vec<SeedMessage> = range
        .map(|i| SeedMessage::new(message(i, 2000 + i * 37), flags))
        .collect();
    env.dovecot
        .append_many(USER, folder, messages)
        .await
        .expect("append")
}

async fn initial_sync(profile: Profile) {
    let env = Env::start(profile).await;
    seed(&env, "INBOX", 0..20, &[]).await;
    seed(&env, "Archive", 20..45, &["\\Seen"]).await;
    seed(&env, "Deleted Items", 45..50, &["\\Seen", "\\Deleted"]).await;
    // Mail in a folder that is not mapped must stay on the server only.
    seed(&env, "Sent Items", 50..53, &["\\Seen"]).await;

    let server_before = server_state(&env).await;
    let summary = env.sync().await;
    assert_eq!(summary.folder("Inbox").fetched, 20);
    assert_eq!(summary.folder("Archive").fetched, 25);
    assert_eq!(summary.folder("Deleted Items").fetched, 5);
    env.assert_in_sync().await;
    assert!(
        !env.mail_root().join("Sent Items").exists(),
        "an unmapped folder was synced"
    );
    // A pull leaves the server as it was: no flag set by reading (BODY[] sets
    // \Seen, BODY.PEEK[] does not), no message moved, expunged or added.
    let server_after = server_state(&env).await;
    let changed = server_after
        .iter()
        .zip(&server_before)
        .find(|(a, b)| a != b);
    assert!(
        changed.is_none() && server_after.len() == server_before.len(),
        "the sync changed the server: {changed:?}, {} messages before, {} after",
        server_before.len(),
        server_after.len()
    );

    // A second pass changes nothing and downloads nothing, as the server counts.
    let mark = env.log_lines();
    let again = env.sync().await;
    assert_eq!(again.total(), Default::default(), "{again:?}");
    assert_eq!(
        env.server_bodies_sent(mark),
        0,
        "the second pass downloaded"
    );
    env.assert_in_sync().await;
}

/// Every folder's (UID, flags, size, hash of the bytes), as the server holds them.
async fn server_state(env: &Env) -> Vec<(String, u32, Vec<String>, usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::new();
    for folder in ["INBOX", "Archive", "Deleted Items", "Sent Items"] {
        for m in env.dovecot.messages(USER, folder).await.unwrap() {
            let mut flags = m.flags.clone();
            flags.sort();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            m.body.hash(&mut h);
            out.push((folder.to_owned(), m.uid, flags, m.body.len(), h.finish()));
        }
    }
    out
}
on_both_profiles!(initial_sync);

async fn new_mail_and_flag_changes(profile: Profile) {
    let env = Env::start(profile).await;
    let uids = seed(&env, "INBOX", 0..10, &[]).await;
    let archived = seed(&env, "Archive", 10..15, &["\\Seen", "\\Flagged"]).await;
    env.sync().await;

    seed(&env, "INBOX", 100..103, &[]).await;
    // Set flags on some, clear flags on others.
    env.dovecot
        .set_flags(USER, "INBOX", uids[0], &["\\Seen"], &[])
        .await
        .unwrap();
    env.dovecot
        .set_flags(USER, "INBOX", uids[1], &["\\Flagged", "\\Answered"], &[])
        .await
        .unwrap();
    env.dovecot
        .set_flags(USER, "Archive", archived[0], &[], &["\\Seen"])
        .await
        .unwrap();
    env.dovecot
        .set_flags(USER, "Archive", archived[1], &[], &["\\Flagged", "\\Seen"])
        .await
        .unwrap();

    let summary = env.sync().await;
    assert_eq!(summary.folder("Inbox").fetched, 3);
    assert_eq!(summary.folder("Inbox").flag_updates, 2);
    assert_eq!(summary.folder("Archive").flag_updates, 2);
    assert_eq!(summary.folder("Archive").fetched, 0);
    env.assert_in_sync().await;
}
on_both_profiles!(new_mail_and_flag_changes);

async fn expunge(profile: Profile) {
    let env = Env::start(profile).await;
    let uids = seed(&env, "INBOX", 0..12, &["\\Seen"]).await;
    env.sync().await;
    env.dovecot
        .expunge(USER, "INBOX", &[uids[2], uids[5], uids[11]])
        .await
        .unwrap();
    let summary = env.sync().await;
    assert_eq!(summary.folder("Inbox").removed, 3);
    assert_eq!(summary.folder("Inbox").fetched, 0);
    env.assert_in_sync().await;
}
on_both_profiles!(expunge);

/// New mail beside expunges is no move: only a new message of the same size as an
/// expunged one is looked at closer (its Message-ID), and none is taken for a move.
async fn new_mail_beside_expunges_is_fetched(profile: Profile) {
    let env = Env::start(profile).await;
    let uids = seed(&env, "INBOX", 0..12, &["\\Seen"]).await;
    env.sync().await;
    env.dovecot
        .expunge(USER, "INBOX", &[uids[2], uids[5], uids[11]])
        .await
        .unwrap();
    // Same size as message 2, another Message-ID; and one of a size nobody has.
    let twin = String::from_utf8(message(2, 2000 + 2 * 37))
        .unwrap()
        .replace("<msg-2@", "<msg-Z@");
    let new = [twin.into_bytes(), message(50, 9000)];
    let mut new_uids = Vec::new();
    for m in &new {
        new_uids.push(
            env.dovecot
                .append(USER, "INBOX", m, &[], None)
                .await
                .unwrap(),
        );
    }
    let run = env.run(&["-vv", "sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    let inbox = run.summary().folder("Inbox");
    assert_eq!(
        (inbox.fetched, inbox.removed, inbox.moved_in),
        (2, 3, 0),
        "{run}"
    );
    let commands: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("imap >"))
        .collect();
    assert!(
        commands.iter().any(|l| l.contains("(UID RFC822.SIZE)")),
        "{commands:#?}"
    );
    let headers: Vec<&&str> = commands
        .iter()
        .filter(|l| l.contains("HEADER.FIELDS"))
        .collect();
    assert_eq!(headers.len(), 1, "{commands:#?}");
    assert!(
        headers[0].contains(&format!("UID FETCH {} (", new_uids[0])),
        "{headers:?}"
    );
    env.assert_in_sync().await;
}
on_both_profiles!(new_mail_beside_expunges_is_fetched);

/// Exchange moves are COPY + EXPUNGE: the message must be moved locally, not fetched.
async fn move_to_trash_is_local(profile: Profile) {
    let env = Env::start(profile).await;
    // Large messages, so a download would dwarf everything else the server sends.
    let big: Vec<SeedMessage> = (0..6)
        .map(|i| SeedMessage::new(message(i, 300_000), &["\\Seen"]))
        .collect();
    let uids = env.dovecot.append_many(USER, "INBOX", big).await.unwrap();
    env.sync().await;

    let moved = [uids[1], uids[3], uids[4]];
    env.dovecot
        .move_messages(
            USER,
            "INBOX",
            "Deleted Items",
            &moved,
            MoveMode::CopyExpunge,
        )
        .await
        .unwrap();
    let log_mark = env.log_lines();
    let summary = env.sync().await;
    // What the server sent in that pass, by its own count: no body, and far fewer
    // bytes than one message.
    let sent = env.server_bytes_out(log_mark);
    assert!(sent > 0, "no logout line in the Dovecot log");
    assert_eq!(
        env.server_bodies_sent(log_mark),
        0,
        "a moved message was downloaded"
    );
    assert!(
        sent < 100_000,
        "the server sent {sent} bytes: the moved messages were downloaded"
    );
    assert_eq!(summary.folder("Deleted Items").moved_in, 3, "{summary:?}");
    assert_eq!(summary.total().fetched, 0, "{summary:?}");
    assert_eq!(summary.total().removed, 0, "{summary:?}");
    env.assert_in_sync().await;
}
on_both_profiles!(move_to_trash_is_local);

/// The folder is deleted and created again with the same messages: a new UIDVALIDITY.
async fn uidvalidity_change(profile: Profile) {
    let env = Env::start(profile).await;
    let big: Vec<SeedMessage> = (0..5)
        .map(|i| SeedMessage::new(message(i, 200_000), &["\\Seen"]))
        .collect();
    env.dovecot.append_many(USER, "INBOX", big).await.unwrap();
    seed(&env, "INBOX", 10..14, &[]).await;
    env.sync().await;

    let before = env.dovecot.uidvalidity(USER, "INBOX").await.unwrap();
    env.dovecot.recreate_folder(USER, "INBOX").await.unwrap();
    let after = env.dovecot.uidvalidity(USER, "INBOX").await.unwrap();
    assert_ne!(before, after, "the test server kept its UIDVALIDITY");
    // One genuinely new message arrives with it.
    seed(&env, "INBOX", 20..21, &[]).await;

    let log_mark = env.log_lines();
    let summary = env.sync().await;
    let sent = env.server_bytes_out(log_mark);
    assert_eq!(
        env.server_bodies_sent(log_mark),
        1,
        "unchanged messages were downloaded again"
    );
    assert!(
        sent < 150_000,
        "the server sent {sent} bytes: unchanged messages were downloaded again"
    );
    assert_eq!(summary.folder("Inbox").fetched, 1, "{summary:?}");
    assert_eq!(summary.folder("Inbox").removed, 0, "{summary:?}");
    env.assert_in_sync().await;

    let again = env.sync().await;
    assert_eq!(again.total(), Default::default());
}
on_both_profiles!(uidvalidity_change);

/// A German mailbox: the trash is "Gelöschte Elemente" (modified UTF-7 on the wire),
/// found by role.
async fn localized_trash_by_role(profile: Profile) {
    let env = Env::start_with(profile, |o| {
        o.rename_special("\\Trash", "Gelöschte Elemente")
    })
    .await;
    seed(&env, "Gelöschte Elemente", 0..4, &["\\Seen"]).await;
    seed(&env, "INBOX", 4..6, &[]).await;
    let summary = env.sync().await;
    assert_eq!(summary.folder("Deleted Items").fetched, 4, "{summary:?}");
    env.assert_in_sync().await;

    let run = env.run(&["folders"]).await;
    assert_eq!(run.code, 0, "{run}");
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("Gelöschte Elemente"))
        .unwrap_or_else(|| panic!("folders does not show the decoded name:\n{run}"));
    assert!(
        line.contains("Deleted Items"),
        "not shown as mapped: {line}"
    );
    if profile == Profile::Full {
        assert!(line.contains("@trash"), "role not shown: {line}");
    }
}
on_both_profiles!(localized_trash_by_role);

/// A realistic corpus (multipart, attachments, sizes up to 1.5 MB) arrives intact.
async fn corpus_sync(profile: Profile) {
    let env = Env::start(profile).await;
    let corpus = Corpus::generate(&CorpusOptions {
        seed: 7,
        count: 150,
        max_size: Some(1_500_000),
    });
    for folder in ["INBOX", "Archive", "Deleted Items"] {
        let batch: Vec<SeedMessage> = corpus
            .iter()
            .filter(|m| m.role.default_folder() == folder)
            .map(SeedMessage::from)
            .collect();
        env.dovecot.seed_fast(USER, folder, batch).await.unwrap();
    }
    let summary = env.sync().await;
    assert_eq!(summary.total().fetched, 150);
    env.assert_in_sync().await;
}
on_both_profiles!(corpus_sync);

/// 2,100 small messages in INBOX: a download large enough for three connections.
async fn seed_large_inbox(env: &Env) {
    let messages: Vec<SeedMessage> = (0..2100)
        .map(|i| SeedMessage::new(message(i, 300), if i % 5 == 0 { &[] } else { &["\\Seen"] }))
        .collect();
    env.dovecot
        .append_many(USER, "INBOX", messages)
        .await
        .expect("append");
}

/// One large folder downloads on more than one connection, and every message once:
/// the connections share the folder's UIDs, not only whole folders.
async fn large_folder_downloads_on_several_connections(profile: Profile) {
    let env = Env::start(profile).await;
    seed_large_inbox(&env).await;

    let log_mark = env.log_lines();
    let summary = env.sync().await;
    assert_eq!(summary.folder("Inbox").fetched, 2100, "{summary:?}");
    let bodies = env.server_bodies_per_session(log_mark);
    assert_eq!(
        bodies.iter().sum::<u64>(),
        2100,
        "messages were downloaded twice (bodies per session: {bodies:?})"
    );
    let downloading = bodies.iter().filter(|&&n| n > 0).count();
    assert!(
        (2..=4).contains(&downloading),
        "INBOX downloaded on {downloading} connections (bodies per session: {bodies:?}); expected 2 to max_connections (4)"
    );
    env.assert_in_sync().await;
}
on_both_profiles!(large_folder_downloads_on_several_connections);

/// A server that allows one connection per user refuses the extra ones: the pass
/// goes on without them and the one it has downloads everything.
async fn refused_extra_connections_are_done_without(profile: Profile) {
    let env = Env::start_with(profile, |o| o.max_user_connections(1)).await;
    seed_large_inbox(&env).await;

    let log_mark = env.log_lines();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "sync failed:\n{run}");
    assert_eq!(run.summary().folder("Inbox").fetched, 2100, "{run}");
    let log = env.dovecot.log();
    let refused = log
        .lines()
        .skip(log_mark)
        .filter(|l| l.contains("Maximum number of connections"))
        .count();
    assert!(
        refused > 0,
        "the server refused no connection; the test proves nothing:\n{log}"
    );
    let bodies = env.server_bodies_per_session(log_mark);
    assert_eq!(
        bodies.iter().filter(|&&n| n > 0).collect::<Vec<_>>(),
        vec![&2100],
        "bodies per session: {bodies:?}"
    );
    env.assert_in_sync().await;
}
on_both_profiles!(refused_extra_connections_are_done_without);

/// A mapping edited to point at another remote folder, whose UIDVALIDITY happens to be
/// the old one's (servers that use creation times or constants give such pairs): the
/// records of the old folder must not stand for the new one's UIDs. The new folder's
/// messages arrive, the old folder's files leave the local folder, nothing twice.
async fn mapping_moved_to_a_folder_with_the_same_uidvalidity(profile: Profile) {
    let mut env = Env::start(profile).await;
    seed(&env, "Archive", 0..3, &["\\Seen"]).await;
    env.dovecot.create_folder(USER, "Old").await.unwrap();
    let validity = env.dovecot.uidvalidity(USER, "Archive").await.unwrap();
    env.dovecot.set_uidvalidity(USER, "Old", validity).unwrap();
    seed(&env, "Old", 10..13, &[]).await;
    assert_eq!(
        env.dovecot.uidvalidity(USER, "Old").await.unwrap(),
        validity
    );
    env.sync().await;
    env.assert_in_sync().await;

    for (local, remote) in env.mappings.iter_mut() {
        if local == "Archive" {
            *remote = "Old".into();
        }
    }
    env.write_config();
    let summary = env.sync().await;
    assert_eq!(summary.folder("Archive").fetched, 3, "{summary:?}");
    env.assert_in_sync().await;
    let again = env.sync().await;
    assert_eq!(again.total(), Default::default());
}
on_both_profiles!(mapping_moved_to_a_folder_with_the_same_uidvalidity);
