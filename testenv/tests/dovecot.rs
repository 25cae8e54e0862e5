//! The test Dovecot with the test IdP: XOAUTH2 logins, refusals, the Exchange profile,
//! and the seeding API.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mailsync_testenv::{Dovecot, DovecotOptions, EXCHANGE_CAPABILITIES, Idp, MoveMode, Profile};

const JANE: &str = "jane@example.com";

async fn client_credentials_token(idp: &Idp) -> String {
    let resp: serde_json::Value = reqwest::Client::new()
        .post(idp.token_url("contoso"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app-1"),
            ("client_secret", "s3cret"),
            ("scope", "https://outlook.office365.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["access_token"].as_str().unwrap().to_string()
}

async fn setup(profile: Profile) -> (Idp, Dovecot) {
    let idp = Idp::start().await;
    idp.add_user(JANE);
    idp.add_app("app-1", Some("s3cret"), Some(JANE));
    let dovecot = Dovecot::start(DovecotOptions::new(&idp).profile(profile))
        .await
        .unwrap();
    (idp, dovecot)
}

#[tokio::test]
async fn xoauth2_login_with_client_credentials_token() {
    let (idp, dovecot) = setup(Profile::Full).await;
    let token = client_credentials_token(&idp).await;
    let mut session = dovecot.login_xoauth2(JANE, &token).await.unwrap();
    let names: Vec<_> = session
        .list(Some(""), Some("*"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let names: BTreeSet<String> = names.iter().map(|n| n.name().to_string()).collect();
    assert!(names.contains("Deleted Items"), "{names:?}");
    assert!(dovecot.who().unwrap().contains(&JANE.to_string()));
    session.logout().await.unwrap();
    assert!(idp.introspect_calls() >= 1);

    // Wrong user for the token, then a revoked token: refused.
    let err = dovecot
        .login_xoauth2("bob@example.com", &token)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("XOAUTH2"), "{err:#}");
    idp.revoke_access_tokens();
    let started = Instant::now();
    let err = dovecot.login_xoauth2(JANE, &token).await.unwrap_err();
    eprintln!("revoked: {err:#} after {:?}", started.elapsed());
    assert!(
        format!("{err:#}").contains("AUTHENTICATIONFAILED"),
        "{err:#}"
    );
    // The IdP down: a temporary failure.
    idp.fail_introspection(true);
    let token2 = client_credentials_token(&idp).await;
    let err = dovecot.login_xoauth2(JANE, &token2).await.unwrap_err();
    assert!(format!("{err:#}").contains("UNAVAILABLE"), "{err:#}");
}

#[tokio::test]
async fn exchange_profile_advertises_exchange_capabilities() {
    let (idp, dovecot) = setup(Profile::Exchange).await;
    let expected: BTreeSet<String> = EXCHANGE_CAPABILITIES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let pre = dovecot.capabilities_before_login(true).await.unwrap();
    eprintln!("pre-login TLS: {pre:?}");
    let plain = dovecot.capabilities_before_login(false).await.unwrap();
    eprintln!("pre-login plain: {plain:?}");
    let token = client_credentials_token(&idp).await;
    let post = dovecot
        .capabilities_after_login(JANE, &token)
        .await
        .unwrap();
    eprintln!("post-login: {post:?}");
    assert_eq!(pre.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(post.iter().cloned().collect::<BTreeSet<_>>(), expected);
}

#[tokio::test]
async fn seeding_api_round_trips() {
    let (_idp, dovecot) = setup(Profile::Full).await;
    let msg = b"From: a@example.com\r\nSubject: one\r\n\r\nbody\r\n";
    let date = mailsync_testenv::chrono::DateTime::parse_from_rfc3339("2023-05-06T07:08:09+02:00")
        .unwrap();
    let uid = dovecot
        .append(JANE, "INBOX", msg, &["\\Seen"], Some(date))
        .await
        .unwrap();
    let msgs = dovecot.messages(JANE, "INBOX").await.unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].uid, uid);
    assert_eq!(msgs[0].body, msg);
    assert_eq!(msgs[0].internaldate, date);
    assert_eq!(msgs[0].flags, vec!["\\Seen".to_string()]);
    dovecot
        .set_flags(JANE, "INBOX", uid, &["\\Flagged"], &["\\Seen"])
        .await
        .unwrap();
    let msgs = dovecot.messages(JANE, "INBOX").await.unwrap();
    assert_eq!(msgs[0].flags, vec!["\\Flagged".to_string()]);
    let moved = dovecot
        .move_messages(JANE, "INBOX", "Archive", &[uid], MoveMode::CopyExpunge)
        .await
        .unwrap();
    assert_eq!(moved.len(), 1);
    assert!(dovecot.messages(JANE, "INBOX").await.unwrap().is_empty());
    let v1 = dovecot.uidvalidity(JANE, "Archive").await.unwrap();
    let v2 = dovecot.recreate_folder(JANE, "Archive").await.unwrap();
    assert_ne!(v1, v2);
    let after = dovecot.messages(JANE, "Archive").await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].body, msg);
    assert_eq!(after[0].internaldate, date);

    dovecot
        .create_folder(JANE, "Gelöschte Elemente")
        .await
        .unwrap();
    let t = Instant::now();
    let uids = dovecot
        .seed_fast(
            JANE,
            "Gelöschte Elemente",
            (0..1000).map(|i| {
                (
                    format!("Subject: {i}\r\n\r\nx\r\n").into_bytes(),
                    vec!["\\Seen"],
                )
            }),
        )
        .await
        .unwrap();
    eprintln!("seed_fast 1000: {:?}", t.elapsed());
    assert_eq!(uids.len(), 1000);
    let msgs = dovecot.messages(JANE, "Gelöschte Elemente").await.unwrap();
    assert_eq!(msgs.len(), 1000);
    assert_eq!(msgs[5].uid, uids[5]);
    assert_eq!(msgs[5].body, b"Subject: 5\r\n\r\nx\r\n");
    assert!(uids.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn malformed_mail_survives_byte_exact() {
    let (_idp, dovecot) = setup(Profile::Exchange).await;
    let malformed = mailsync_testenv::Corpus::malformed();
    let (empty, rest): (Vec<_>, Vec<_>) = malformed.into_iter().partition(|m| m.bytes.is_empty());
    let zero = dovecot.append(JANE, "INBOX", b"", &[], None).await;
    eprintln!("APPEND of 0 bytes: {:#}", zero.unwrap_err());
    let uids = dovecot
        .append_many(
            JANE,
            "INBOX",
            rest.iter().map(|m| (m.bytes.clone(), vec!["\\Seen"])),
        )
        .await
        .unwrap();
    let seeded = dovecot
        .seed_fast(
            JANE,
            "INBOX",
            empty
                .iter()
                .map(|m| (m.bytes.clone(), Vec::<String>::new())),
        )
        .await
        .unwrap();
    let msgs = dovecot.messages(JANE, "INBOX").await.unwrap();
    for (m, uid) in rest.iter().zip(&uids) {
        let got = msgs.iter().find(|s| s.uid == *uid).unwrap();
        assert_eq!(got.body, m.bytes, "{}", m.name);
    }
    let got = msgs.iter().find(|s| s.uid == seeded[0]).unwrap();
    assert!(got.body.is_empty());
}

/// Measures `seed_fast` with 10,000 corpus messages (run with `--ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn seed_fast_10k_timing() {
    let (_idp, dovecot) = setup(Profile::Full).await;
    for max_size in [None, Some(100_000)] {
        let t = Instant::now();
        let corpus = mailsync_testenv::Corpus::generate(&mailsync_testenv::CorpusOptions {
            seed: 1,
            count: 10_000,
            max_size,
        });
        let bytes: usize = corpus.iter().map(|m| m.bytes.len()).sum();
        eprintln!(
            "generate 10k (max {max_size:?}, {:.0} MB): {:?}",
            bytes as f64 / 1e6,
            t.elapsed()
        );
        let folder = if max_size.is_some() {
            "Archive"
        } else {
            "Drafts"
        };
        let t = Instant::now();
        let uids = dovecot.seed_fast(JANE, folder, &corpus).await.unwrap();
        eprintln!("seed_fast 10k into {folder}: {:?}", t.elapsed());
        assert_eq!(uids.len(), 10_000);
        assert!(uids.windows(2).all(|w| w[0] < w[1]));
    }
    let t = Instant::now();
    let msgs = dovecot.messages(JANE, "Archive").await.unwrap();
    eprintln!("messages() of 10k: {:?}", t.elapsed());
    assert_eq!(msgs.len(), 10_000);
}

#[tokio::test]
async fn localized_trash_kick_and_restart() {
    let idp = Idp::start().await;
    let opts = DovecotOptions::new(&idp).rename_special("\\Trash", "Gelöschte Elemente");
    let mut dovecot = Dovecot::start(opts).await.unwrap();
    let token = idp.issue_access_token("app", JANE);
    let mut session = dovecot.login_xoauth2(JANE, &token).await.unwrap();
    let names: Vec<_> = session
        .list(Some(""), Some("*"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let trash = names
        .iter()
        .find(|n| n.name() == "Gel&APY-schte Elemente")
        .expect("mUTF-7 name");
    assert!(format!("{:?}", trash.attributes()).contains("Trash"));
    drop(names);
    assert_eq!(dovecot.who().unwrap(), vec![JANE.to_string()]);
    dovecot.kick(JANE).unwrap();
    // The kick is a signal to the imap process: give it a moment to land.
    let kicked_at = Instant::now();
    while session.noop().await.is_ok() {
        assert!(
            kicked_at.elapsed() < Duration::from_secs(5),
            "kicked session still alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let port = dovecot.imaps_port();
    dovecot.restart().await.unwrap();
    assert_eq!(port, dovecot.imaps_port());
    let uid = dovecot
        .append(
            JANE,
            "Gelöschte Elemente",
            b"Subject: x\r\n\r\ny\r\n",
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        dovecot.messages(JANE, "Gelöschte Elemente").await.unwrap()[0].uid,
        uid
    );
    let v1 = dovecot.uidvalidity(JANE, "INBOX").await.unwrap();
    dovecot
        .append(
            JANE,
            "INBOX",
            b"Subject: inbox\r\n\r\nz\r\n",
            &["\\Seen"],
            None,
        )
        .await
        .unwrap();
    let v2 = dovecot.recreate_folder(JANE, "INBOX").await.unwrap();
    assert_ne!(v1, v2);
    assert_eq!(dovecot.uidvalidity(JANE, "INBOX").await.unwrap(), v2);
    assert_eq!(dovecot.messages(JANE, "INBOX").await.unwrap().len(), 1);
}
