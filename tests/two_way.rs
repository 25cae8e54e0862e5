//! Two-way sync against the real server: what a mail reader does in the mapped
//! Maildir reaches the server, on three server profiles (Dovecot's own, Exchange's
//! capabilities, and a plain IMAP4rev1 server without UIDPLUS, MOVE or LITERAL+).
//! One test per rule of the README's "Two-way sync" section.

use std::path::{Path, PathBuf};

use mailsync_testenv::dovecot::{DovecotOptions, Profile, SeedMessage};

use crate::on_three_profiles;
use crate::support::{Env, USER};

fn message(i: usize) -> Vec<u8> {
    let body = "Two-way test body line, long enough to count.\r\n".repeat(40 + i % 7);
    format!(
        "From: Sender {i} <sender{i}@example.org>\r\nTo: {USER}\r\nSubject: Two-way {i}\r\nDate: Mon, 2 Nov 2026 10:{:02}:00 +0000\r\nMessage-ID: <two-way-{i}@example.org>\r\n\r\n{body}",
        i % 60
    )
    .into_bytes()
}

async fn seed(env: &Env, folder: &str, range: std::ops::Range<usize>, flags: &[&str]) {
    let messages: Vec<SeedMessage> = range.map(|i| SeedMessage::new(message(i), flags)).collect();
    env.dovecot
        .append_many(USER, folder, messages)
        .await
        .expect("append");
}

/// An environment whose account syncs both ways, seeded and synced once.
async fn two_way_env(profile: Profile, extra: &str) -> Env {
    two_way_env_with(profile, extra, |o| o).await
}

/// [`two_way_env`] on a Dovecot with its options adjusted by `tune`.
async fn two_way_env_with(
    profile: Profile,
    extra: &str,
    tune: impl FnOnce(DovecotOptions) -> DovecotOptions,
) -> Env {
    let env = Env::start_with(profile, tune).await;
    std::fs::write(
        env.config_path(),
        env.config_text(&format!("direction = \"both\"\n{extra}")),
    )
    .unwrap();
    seed(&env, "INBOX", 0..10, &[]).await;
    seed(&env, "Archive", 10..15, &["\\Seen"]).await;
    env.sync().await;
    env.assert_in_sync().await;
    env
}

/// The file in `dir` (cur/ or new/) whose bytes hold `needle`.
fn file_with(dir: &Path, needle: &str) -> PathBuf {
    for sub in ["cur", "new"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            if String::from_utf8_lossy(&bytes).contains(needle) {
                return path;
            }
        }
    }
    panic!("no file with {needle:?} in {}", dir.display());
}

/// Renames a message file to carry `letters` as its flags, as a mail reader does.
fn set_letters(path: &Path, letters: &str) -> PathBuf {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let base = name.split_once(':').map_or(name.as_str(), |(b, _)| b);
    let to = path
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("cur")
        .join(format!("{base}:2,{letters}"));
    std::fs::rename(path, &to).unwrap();
    to
}

/// The server's flags of the message holding `needle` in `folder`, if it is there;
/// and how many messages of the folder hold it.
async fn server_flags(env: &Env, folder: &str, needle: &str) -> (Option<Vec<String>>, usize) {
    let messages = env.dovecot.messages(USER, folder).await.unwrap();
    let hits: Vec<_> = messages
        .iter()
        .filter(|m| String::from_utf8_lossy(&m.body).contains(needle))
        .collect();
    let mut flags = hits.first().map(|m| m.flags.clone());
    if let Some(f) = &mut flags {
        f.sort();
    }
    (flags, hits.len())
}

/// `UIDNEXT` and `HIGHESTMODSEQ` of each mapped server folder, as Dovecot counts them.
fn server_marks(env: &Env) -> String {
    ["INBOX", "Archive", "Deleted Items"]
        .iter()
        .map(|f| {
            env.dovecot
                .doveadm(&[
                    "mailbox",
                    "status",
                    "-u",
                    USER,
                    "uidnext highestmodseq messages",
                    f,
                ])
                .expect("doveadm mailbox status")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Everything a reader does, in one pass: flags, a read of a new message, a
/// deletion, a move, a new message; then a second pass changes nothing on the server.
async fn local_changes_reach_the_server(profile: Profile) {
    let env = two_way_env(profile, "").await;
    let inbox = env.maildir("Inbox");
    let archive = env.maildir("Archive");

    // Read and flagged, as mutt renames it.
    set_letters(&file_with(&inbox, "Two-way 0\r"), "FS");
    // Deleted.
    std::fs::remove_file(file_with(&inbox, "Two-way 1\r")).unwrap();
    // Moved to Archive (a rename, as aerc and mv do), and marked read there.
    let moved = file_with(&inbox, "Two-way 2\r");
    let name = moved.file_name().unwrap().to_string_lossy().into_owned();
    let base = name.split_once(':').unwrap().0.to_owned();
    std::fs::rename(&moved, archive.join("cur").join(format!("{base}:2,S"))).unwrap();
    // A new message delivered locally, as a reader saves a draft (in new/, no flags).
    let draft = "From: me <me@example.org>\r\nSubject: Local draft\r\nMessage-ID: <draft-1@example.org>\r\n\r\nWritten here.\r\n";
    std::fs::write(inbox.join("new").join("1796000000.local1.host"), draft).unwrap();

    let mark = env.log_lines();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");

    let (flags, n) = server_flags(&env, "INBOX", "Two-way 0\r").await;
    assert_eq!(
        (flags, n),
        (Some(vec!["\\Flagged".into(), "\\Seen".into()]), 1),
        "{}: a flag change did not reach the server:\n{run}",
        profile.name()
    );
    assert_eq!(
        server_flags(&env, "INBOX", "Two-way 1\r").await.1,
        0,
        "deleted locally, still in INBOX"
    );
    assert_eq!(
        server_flags(&env, "Deleted Items", "Two-way 1\r").await.1,
        1,
        "a local deletion did not land in the server's trash"
    );
    assert_eq!(server_flags(&env, "INBOX", "Two-way 2\r").await.1, 0);
    assert_eq!(
        server_flags(&env, "Archive", "Two-way 2\r").await,
        (Some(vec!["\\Seen".into()]), 1),
        "a local move did not reach the server"
    );
    assert_eq!(
        server_flags(&env, "INBOX", "Local draft").await.1,
        1,
        "a new local message was not uploaded exactly once"
    );
    // The move sent no body: the bytes the server received stay far below a message.
    let received = env.server_bytes_in(mark);
    let body = message(2).len() as u64;
    let draft_len = draft.len() as u64;
    assert!(
        received < draft_len + body / 2 + 4000,
        "{}: the server received {received} bytes; a move re-uploaded? (message {body} bytes)",
        profile.name()
    );

    // The next pass brings the trash's copy down and then everything agrees.
    env.sync().await;
    env.assert_in_sync().await;

    // A mutt-style read of the uploaded message: new/ → cur/ with S.
    let uploaded = file_with(&inbox, "Local draft");
    assert!(
        uploaded.parent().unwrap().ends_with("new") || uploaded.to_string_lossy().contains(":2,"),
        "{uploaded:?}"
    );
    set_letters(&uploaded, "S");
    env.sync().await;
    assert_eq!(
        server_flags(&env, "INBOX", "Local draft").await.0,
        Some(vec!["\\Seen".into()]),
        "a new/ -> cur/ read did not reach the server"
    );
    env.assert_in_sync().await;

    // Nothing changed: a pass sends nothing (UIDNEXT and HIGHESTMODSEQ stay put).
    let before = server_marks(&env);
    let again = env.run(&["sync"]).await;
    assert_eq!(again.code, 0, "{again}");
    assert!(!again.stdout.contains("sent:"), "{again}");
    assert_eq!(
        server_marks(&env),
        before,
        "a pass with nothing to do changed the server"
    );
    env.assert_in_sync().await;
    // And once the folders have settled, it does not even read their file names.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    env.run(&["sync"]).await;
    let quiet = env.run(&["-vv", "sync"]).await;
    assert!(
        quiet
            .stderr
            .contains("local folders unchanged since the last pass"),
        "{}: a pass with nothing changed read the local folders:\n{quiet}",
        profile.name()
    );
}
on_three_profiles!(local_changes_reach_the_server);

/// notmuch (Debian's), with `maildir.synchronize_flags`, tags a message read and
/// flagged: it renames the file, and the next pass sets `\Seen` and `\Flagged` on
/// the server.
async fn notmuch_tags_reach_the_server(profile: Profile) {
    let env = two_way_env(profile, "").await;
    let config = env.state_dir().with_file_name("notmuch-config");
    std::fs::write(
        &config,
        format!(
            "[database]\npath={}\n[new]\ntags=unread;inbox;\n[maildir]\nsynchronize_flags=true\n",
            env.mail_root().display()
        ),
    )
    .unwrap();
    let notmuch = |args: &[&str]| {
        let out = std::process::Command::new("notmuch")
            .args(args)
            .env("NOTMUCH_CONFIG", &config)
            .output()
            .expect("run notmuch (Debian package notmuch)");
        assert!(
            out.status.success(),
            "notmuch {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    notmuch(&["new", "--quiet"]);
    let unread = notmuch(&["count", "tag:unread"]);
    assert_eq!(
        unread.trim(),
        "10",
        "the Inbox's 10 unread messages, indexed"
    );
    notmuch(&[
        "tag",
        "-unread",
        "+flagged",
        "--",
        "id:two-way-3@example.org",
    ]);
    let file = file_with(&env.maildir("Inbox"), "Two-way 3\r");
    assert!(
        file.to_string_lossy().ends_with(":2,FS"),
        "notmuch did not rename the file: {file:?}"
    );

    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        server_flags(&env, "INBOX", "Two-way 3\r").await,
        (Some(vec!["\\Flagged".into(), "\\Seen".into()]), 1),
        "{}: notmuch's tags did not reach the server:\n{run}",
        profile.name()
    );
    env.assert_in_sync().await;
    // And back: a flag cleared on the server reaches notmuch's view of the file.
    notmuch(&["new", "--quiet"]);
    assert_eq!(notmuch(&["count", "tag:flagged"]).trim(), "1");
}
on_three_profiles!(notmuch_tags_reach_the_server);

/// The UID of the message holding `needle` in a server folder.
async fn server_uid(env: &Env, folder: &str, needle: &str) -> u32 {
    env.dovecot
        .messages(USER, folder)
        .await
        .unwrap()
        .iter()
        .find(|m| String::from_utf8_lossy(&m.body).contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {folder}"))
        .uid
}

/// How many copies of the message holding `needle` each side has, over the mapped
/// folders: (local per folder, server per folder).
async fn copies(env: &Env, needle: &str) -> (Vec<(String, usize)>, Vec<(String, usize)>) {
    let mut local = Vec::new();
    let mut server = Vec::new();
    for (l, remote) in env.resolved_mappings().await {
        let n = crate::support::local_messages(&env.maildir(&l))
            .iter()
            .filter(|(b, _)| String::from_utf8_lossy(b).contains(needle))
            .count();
        if n > 0 {
            local.push((l.clone(), n));
        }
        let (_, n) = server_flags(env, &remote, needle).await;
        if n > 0 {
            server.push((l, n));
        }
    }
    (local, server)
}

fn one_in(folder: &str) -> Vec<(String, usize)> {
    vec![(folder.to_owned(), 1)]
}

/// One row each of the README's conflict table, all in one pass: when in doubt a
/// message is kept, never lost, never twice.
async fn conflicts_follow_the_rules(profile: Profile) {
    let env = two_way_env(profile, "").await;
    let inbox = env.maildir("Inbox");
    let archive = env.maildir("Archive");
    let uid = |n: usize| {
        let env = &env;
        async move { server_uid(env, "INBOX", &format!("Two-way {n}\r")).await }
    };
    let local = |n: usize| file_with(&inbox, &format!("Two-way {n}\r"));

    // Flags on both sides: read here, flagged there.
    set_letters(&local(0), "S");
    env.dovecot
        .set_flags(USER, "INBOX", uid(0).await, &["\\Flagged"], &[])
        .await
        .unwrap();
    // Deleted here, flagged there: kept.
    std::fs::remove_file(local(1)).unwrap();
    env.dovecot
        .set_flags(USER, "INBOX", uid(1).await, &["\\Flagged"], &[])
        .await
        .unwrap();
    // Read here, expunged there: goes.
    set_letters(&local(2), "S");
    env.dovecot
        .expunge(USER, "INBOX", &[uid(2).await])
        .await
        .unwrap();
    // Filed in Archive here, expunged there: kept, uploaded to Archive.
    let f = local(3);
    std::fs::rename(&f, archive.join("cur").join(f.file_name().unwrap())).unwrap();
    env.dovecot
        .expunge(USER, "INBOX", &[uid(3).await])
        .await
        .unwrap();
    // Filed in Archive here, moved to Deleted Items there: the server's move wins.
    let f = local(4);
    std::fs::rename(&f, archive.join("cur").join(f.file_name().unwrap())).unwrap();
    env.dovecot
        .move_messages(
            USER,
            "INBOX",
            "Deleted Items",
            &[uid(4).await],
            mailsync_testenv::dovecot::MoveMode::Move,
        )
        .await
        .unwrap();
    // Deleted here, moved to Archive there: kept where it went.
    std::fs::remove_file(local(5)).unwrap();
    env.dovecot
        .move_messages(
            USER,
            "INBOX",
            "Archive",
            &[uid(5).await],
            mailsync_testenv::dovecot::MoveMode::Move,
        )
        .await
        .unwrap();
    // New on both sides, the same message: one.
    let same = "From: a@example.org\r\nSubject: Both sides\r\nMessage-ID: <both@example.org>\r\n\r\nSame bytes.\r\n";
    std::fs::write(inbox.join("new").join("1796000001.both.host"), same).unwrap();
    env.dovecot
        .append(USER, "INBOX", same.as_bytes(), &[], None)
        .await
        .unwrap();

    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    env.sync().await;
    env.assert_in_sync().await;
    let name = profile.name();

    assert_eq!(
        server_flags(&env, "INBOX", "Two-way 0\r").await.0,
        Some(vec!["\\Flagged".into(), "\\Seen".into()]),
        "{name}: flags changed on both sides did not combine"
    );
    let kept = copies(&env, "Two-way 1\r").await;
    assert_eq!(
        kept,
        (one_in("Inbox"), one_in("Inbox")),
        "{name}: deleted here, flagged there"
    );
    assert_eq!(
        server_flags(&env, "INBOX", "Two-way 1\r").await.0,
        Some(vec!["\\Flagged".into()])
    );
    assert_eq!(
        copies(&env, "Two-way 2\r").await,
        (vec![], vec![]),
        "{name}: read here, expunged there"
    );
    assert_eq!(
        copies(&env, "Two-way 3\r").await,
        (one_in("Archive"), one_in("Archive")),
        "{name}: filed here, expunged there"
    );
    assert_eq!(
        copies(&env, "Two-way 4\r").await,
        (one_in("Deleted Items"), one_in("Deleted Items")),
        "{name}: moved both ways"
    );
    assert_eq!(
        copies(&env, "Two-way 5\r").await,
        (one_in("Archive"), one_in("Archive")),
        "{name}: deleted here, moved there"
    );
    assert_eq!(
        copies(&env, "Subject: Both sides").await,
        (one_in("Inbox"), one_in("Inbox")),
        "{name}: new on both sides"
    );
    // Nothing left to do.
    let again = env.run(&["sync"]).await;
    assert!(!again.stdout.contains("sent:"), "{again}");
    assert_eq!(again.summary().total(), Default::default(), "{again}");
}
on_three_profiles!(conflicts_follow_the_rules);

/// A folder gone or emptied locally, or a pass deleting too much, sends nothing: the
/// folder fails with the reason, and `--allow-mass-delete` confirms. `--dry-run`
/// changes nothing.
async fn local_accidents_delete_nothing_on_the_server(profile: Profile) {
    let env = two_way_env(profile, "").await;
    seed(&env, "INBOX", 100..160, &[]).await;
    env.sync().await;
    let inbox = env.maildir("Inbox");
    let before = server_marks(&env);
    let name = profile.name();

    // The folder is gone (a disk not mounted, a wrong path).
    let aside = env.mail_root().join("Inbox.aside");
    std::fs::rename(&inbox, &aside).unwrap();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 1, "{name}: {run}");
    assert!(
        run.stdout
            .contains("is missing but 70 messages were synced"),
        "{run}"
    );
    assert!(!inbox.exists(), "the missing folder was created again");
    assert_eq!(
        server_marks(&env),
        before,
        "{name}: a missing folder changed the server"
    );
    std::fs::rename(&aside, &inbox).unwrap();

    // Emptied.
    let all: Vec<PathBuf> = std::fs::read_dir(inbox.join("cur"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let keep = std::env::temp_dir().join(format!("mailsync-keep-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&keep).unwrap();
    for f in &all {
        std::fs::rename(f, keep.join(f.file_name().unwrap())).unwrap();
    }
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 1, "{name}: {run}");
    assert!(
        run.stdout
            .contains("the local folder is empty but 70 messages"),
        "{run}"
    );
    assert_eq!(
        server_marks(&env),
        before,
        "{name}: an emptied folder changed the server"
    );

    // 55 of 70 back: 15 deletions is within the limit... put back all but 60 instead:
    // 60 of 70 deleted is more than 50 and 25%.
    for f in all.iter().take(10) {
        std::fs::rename(keep.join(f.file_name().unwrap()), f).unwrap();
    }
    let dry = env.run(&["sync", "--dry-run"]).await;
    assert!(
        dry.stdout
            .contains("would delete or move away 60 of the folder's 70"),
        "{dry}"
    );
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 1, "{name}: {run}");
    assert!(run.stdout.contains("--allow-mass-delete"), "{run}");
    assert_eq!(
        server_marks(&env),
        before,
        "{name}: a mass deletion was sent unconfirmed"
    );

    // A dry run of a confirmed pass says what it would do, and does nothing.
    let dry = env.run(&["sync", "--dry-run", "--allow-mass-delete"]).await;
    assert_eq!(dry.code, 0, "{dry}");
    assert!(
        dry.stdout.contains("work/Inbox: server: would delete 60"),
        "{dry}"
    );
    assert!(dry.stdout.contains("nothing was changed"), "{dry}");
    assert_eq!(
        server_marks(&env),
        before,
        "{name}: a dry run changed the server"
    );

    // Confirmed: the 60 go to the trash.
    let run = env.run(&["sync", "--allow-mass-delete"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(env.dovecot.messages(USER, "INBOX").await.unwrap().len(), 10);
    assert_eq!(
        env.dovecot
            .messages(USER, "Deleted Items")
            .await
            .unwrap()
            .len(),
        60
    );
    env.sync().await;
    env.assert_in_sync().await;
    std::fs::remove_dir_all(&keep).unwrap();
}
on_three_profiles!(local_accidents_delete_nothing_on_the_server);

/// A pass over one folder (`sync --folder`, or the daemon's pass when IDLE reports new
/// mail in the Inbox) sees a local change in another folder but does not act on it:
/// the next full pass must still send it, although nothing changed locally since.
async fn a_change_seen_by_a_partial_pass_is_sent_later(profile: Profile) {
    let env = two_way_env(profile, "").await;
    // Settle the stamps: a full pass with nothing to do keeps them.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    env.sync().await;
    set_letters(&file_with(&env.maildir("Archive"), "Two-way 12\r"), "FS");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let run = env.run(&["sync", "--folder", "Inbox"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        server_flags(&env, "Archive", "Two-way 12\r").await.0,
        Some(vec!["\\Seen".into()]),
        "a pass over the Inbox acted on the Archive"
    );
    env.sync().await;
    assert_eq!(
        server_flags(&env, "Archive", "Two-way 12\r").await.0,
        Some(vec!["\\Flagged".into(), "\\Seen".into()]),
        "{}: the change a partial pass saw was never sent",
        profile.name()
    );

    // A deletion seen by a pass that does not sync the trash waits for one that does:
    // it never becomes an expunge.
    std::fs::remove_file(file_with(&env.maildir("Inbox"), "Two-way 9\r")).unwrap();
    let run = env.run(&["sync", "--folder", "Inbox"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        server_flags(&env, "INBOX", "Two-way 9\r").await.1,
        1,
        "{}: a pass without the trash expunged a deletion:\n{run}",
        profile.name()
    );
    env.sync().await;
    assert_eq!(server_flags(&env, "INBOX", "Two-way 9\r").await.1, 0);
    assert_eq!(
        server_flags(&env, "Deleted Items", "Two-way 9\r").await.1,
        1
    );
}
on_three_profiles!(a_change_seen_by_a_partial_pass_is_sent_later);

/// A message the server refuses to take (here Dovecot's `quota_max_mail_size`; at
/// Exchange, "NO Maximum size of appendable message has been exceeded") is reported
/// for that file only: it stays local, is not offered again, and the rest of the pass
/// goes on.
async fn a_refused_upload_stays_local_and_the_pass_goes_on(profile: Profile) {
    let env = two_way_env_with(profile, "", |o| {
        o.extra_config(
            "mail_plugins = $mail_plugins quota\nplugin {\n  quota = maildir:User quota\n  quota_max_mail_size = 20k\n}\n",
        )
    })
    .await;
    let inbox = env.maildir("Inbox");
    let big = format!(
        "From: me@example.org\r\nSubject: Too big\r\nMessage-ID: <big@example.org>\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(70)).repeat(600)
    );
    std::fs::write(inbox.join("new").join("1796000002.big.host"), &big).unwrap();
    let small = "From: me@example.org\r\nSubject: Small one\r\nMessage-ID: <small@example.org>\r\n\r\nFits.\r\n";
    std::fs::write(inbox.join("new").join("1796000003.small.host"), small).unwrap();
    set_letters(&file_with(&inbox, "Two-way 6\r"), "S");

    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stderr.contains("1796000002.big.host") && run.stderr.contains("not uploaded"),
        "{}: the refusal was not reported for the file:\n{run}",
        profile.name()
    );
    assert_eq!(
        server_flags(&env, "INBOX", "Small one").await.1,
        1,
        "the pass stopped at the refusal"
    );
    assert_eq!(
        server_flags(&env, "INBOX", "Two-way 6\r").await.0,
        Some(vec!["\\Seen".into()])
    );
    assert_eq!(server_flags(&env, "INBOX", "Too big").await.1, 0);
    assert!(
        file_with(&inbox, "Too big").exists(),
        "the refused file is gone"
    );

    // Not offered again: the next pass sends nothing.
    let before = server_marks(&env);
    let again = env.run(&["sync"]).await;
    assert_eq!(again.code, 0, "{again}");
    assert!(
        !again.stderr.contains("not uploaded"),
        "offered again:\n{again}"
    );
    assert_eq!(server_marks(&env), before);
}
on_three_profiles!(a_refused_upload_stays_local_and_the_pass_goes_on);

/// Under `mailsync run`, a change made in a mail reader reaches the server without
/// waiting for the next poll (here ten minutes away): the daemon watches the mapped
/// folders. (How fast is a benchmark's business: `bench/run --push-latency`.)
async fn the_daemon_sends_a_local_change_without_waiting_for_a_poll(profile: Profile) {
    let env = two_way_env(profile, "").await;
    let text = std::fs::read_to_string(env.config_path()).unwrap().replace(
        "command_timeout = \"20s\"",
        "command_timeout = \"20s\"\npoll_interval = \"10m\"",
    );
    std::fs::write(env.config_path(), text).unwrap();
    let daemon = crate::support::daemon::Daemon::start(&env, &[]);
    let limit = std::time::Duration::from_secs(30);
    let inbox = env.maildir("Inbox");
    // The first pass is done once the daemon idles.
    crate::support::daemon::until(limit, "first pass", &daemon, || {
        daemon.log().contains("sync pass done")
    })
    .await;
    set_letters(&file_with(&inbox, "Two-way 7\r"), "F");
    // Polled here (the daemon's `until` takes a plain closure; this asks over IMAP).
    let started = std::time::Instant::now();
    while server_flags(&env, "INBOX", "Two-way 7\r").await.0 != Some(vec!["\\Flagged".into()]) {
        assert!(
            started.elapsed() < limit,
            "{}: the flag did not reach the server:\n{}",
            profile.name(),
            daemon.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    std::fs::remove_file(file_with(&inbox, "Two-way 8\r")).unwrap();
    let started = std::time::Instant::now();
    while server_flags(&env, "Deleted Items", "Two-way 8\r").await.1 != 1 {
        assert!(
            started.elapsed() < limit,
            "{}: the deletion did not reach the server:\n{}",
            profile.name(),
            daemon.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(daemon);
}
on_three_profiles!(the_daemon_sends_a_local_change_without_waiting_for_a_poll);
