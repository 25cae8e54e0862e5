//! The access token kept between processes: a second `sync` asks the identity provider
//! for nothing, and a kept token the server refuses is replaced, for this run and the
//! next.

use mailsync_testenv::dovecot::Profile;

use crate::on_both_profiles;
use crate::support::{Env, USER};

async fn new_mail(env: &Env, subject: &str) {
    env.dovecot
        .append(
            USER,
            "INBOX",
            format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes(),
            &[],
            None,
        )
        .await
        .unwrap();
}

/// On both profiles: the runs after the first are incremental passes, each profile's
/// own way.
async fn a_second_sync_asks_for_no_token_and_a_refused_one_is_replaced(profile: Profile) {
    let env = crate::connect::connected(profile).await;
    let calls = env.idp.token_calls();
    let first = env.run(&["sync", "work"]).await;
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(env.idp.token_calls() - calls, 1, "the first run refreshes");

    // The next run signs in with the kept token.
    new_mail(&env, "second").await;
    let calls = env.idp.token_calls();
    let second = env.run(&["sync", "work"]).await;
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(second.summary().folder("Inbox").fetched, 1, "{second}");
    assert_eq!(
        env.idp.token_calls() - calls,
        0,
        "the second run asked for a token"
    );

    // The server stops accepting it (revoked): refused once, a new token, done.
    env.idp.revoke_access_tokens();
    new_mail(&env, "third").await;
    let calls = env.idp.token_calls();
    let third = env.run(&["-v", "sync", "work"]).await;
    assert_eq!(third.code, 0, "{third}");
    assert!(third.stderr.contains("token refused"), "{third}");
    assert_eq!(third.summary().folder("Inbox").fetched, 1, "{third}");
    assert_eq!(env.idp.token_calls() - calls, 1, "one new token");

    // And the new one is what the next run uses.
    let calls = env.idp.token_calls();
    let fourth = env.run(&["-v", "sync", "work"]).await;
    assert_eq!(fourth.code, 0, "{fourth}");
    assert!(!fourth.stderr.contains("token refused"), "{fourth}");
    assert_eq!(
        env.idp.token_calls() - calls,
        0,
        "the new token was not kept"
    );
    env.assert_in_sync().await;
}
on_both_profiles!(a_second_sync_asks_for_no_token_and_a_refused_one_is_replaced);
