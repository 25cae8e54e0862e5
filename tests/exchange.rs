//! Exchange Online's ways of ending and refusing, played by a proxy in front of the
//! real Dovecot (`mailsync_testenv::exchange_proxy`): `* BYE Session invalidated -
//! AccessTokenExpired` in the middle of a FETCH literal, between two FETCH responses
//! and in the middle of IDLE (the identity provider expires the tokens at that moment,
//! as Exchange's BYE says), and `NO Request is throttled. Suggested Backoff Time: N
//! milliseconds`. mailsync (`sync` and `run`) must get a new token, converge, and
//! never try again before N, measured at the proxy.

use std::path::Path;
use std::time::{Duration, Instant};

use mailsync_testenv::dovecot::{Profile, SeedMessage};
use mailsync_testenv::exchange_proxy::{ExchangeProxy, Fault, What};

use crate::on_both_profiles;
use crate::support::daemon::{Daemon, until};
use crate::support::{Env, USER, local_messages};

/// The wait the throttled answers name: long enough to tell from an immediate retry
/// or the first backoff step (1 s), short enough for a test.
const BACKOFF: Duration = Duration::from_millis(2500);

fn message(tag: &str, i: usize, size: usize) -> Vec<u8> {
    let head = format!("Subject: {tag} {i}\r\nMessage-ID: <{tag}-{i}@example.org>\r\n\r\n");
    let mut body = head.into_bytes();
    while body.len() < size {
        body.extend_from_slice(format!("line {i} of {tag}, padding the body out\r\n").as_bytes());
    }
    body
}

async fn seed(env: &Env, folder: &str, tag: &str, n: usize) {
    let messages: Vec<SeedMessage> = (0..n)
        .map(|i| SeedMessage::new(message(tag, i, 8000 + i * 97), &[]))
        .collect();
    env.dovecot
        .append_many(USER, folder, messages)
        .await
        .expect("append");
}

/// A proxy in front of the environment's Dovecot, the config pointed at it, and the
/// identity provider told to expire every access token when the proxy sends a BYE.
async fn proxied(env: &Env, daemon_settings: &str) -> ExchangeProxy {
    let proxy = ExchangeProxy::start(env.dovecot.dir(), env.dovecot.imap_port())
        .await
        .expect("start the proxy");
    let text = env
        .config_text("")
        .replace(
            &format!("imap_port = {}", env.dovecot.imaps_port()),
            &format!("imap_port = {}", proxy.port()),
        )
        .replace(
            "command_timeout = \"20s\"",
            &format!("command_timeout = \"20s\"\n{daemon_settings}"),
        );
    std::fs::write(env.config_path(), text).unwrap();
    let idp = env.idp.clone();
    proxy.on_bye(move || idp.expire_access_tokens());
    proxy
}

/// The tokens AUTHENTICATE presented before `t`, and those presented after it.
fn tokens_around(proxy: &ExchangeProxy, t: Instant) -> (Vec<u64>, Vec<u64>) {
    let (before, after): (Vec<_>, Vec<_>) = proxy.tokens().into_iter().partition(|(at, _)| *at < t);
    (
        before.into_iter().map(|(_, h)| h).collect(),
        after.into_iter().map(|(_, h)| h).collect(),
    )
}

/// After the BYE that said the token expired, no login presents a token from before
/// it: the client asked for a new one instead of trying the old one first.
fn assert_expired_token_not_presented(proxy: &ExchangeProxy, bye: Instant) {
    let (before, after) = tokens_around(proxy, bye);
    assert!(!after.is_empty(), "no login after the BYE");
    let reused = after.iter().filter(|h| before.contains(h)).count();
    assert_eq!(
        reused,
        0,
        "{reused} of {} logins after the BYE presented the token it expired; logins answered: {:?}",
        after.len(),
        proxy.logins().iter().map(|(_, s)| s).collect::<Vec<_>>()
    );
}

fn one_bye(proxy: &ExchangeProxy) -> Instant {
    let byes = proxy.byes();
    assert_eq!(byes.len(), 1, "the proxy sent {} BYEs", byes.len());
    byes[0]
}

/// `sync` with a BYE fault armed: it must finish, converge, with a new token.
async fn sync_through_bye(profile: Profile, fault: Fault) -> (Env, ExchangeProxy, Instant) {
    let env = Env::start(profile).await;
    seed(&env, "INBOX", "inbox", 60).await;
    seed(&env, "Archive", "archive", 15).await;
    let proxy = proxied(&env, "batch_size = 25").await;
    proxy.arm(fault);
    let calls = env.idp.token_calls();
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "sync failed:\n{run}");
    let bye = one_bye(&proxy);
    assert!(
        env.idp.token_calls() >= calls + 2,
        "no new token after the BYE ({} token calls)",
        env.idp.token_calls() - calls
    );
    env.assert_in_sync().await;
    // Nothing left for a second pass, and nothing was delivered twice.
    let again = env.sync().await;
    assert_eq!(again.total().fetched, 0);
    env.assert_in_sync().await;
    (env, proxy, bye)
}

/// The BYE inside a message's literal: mailsync sees its connection end mid-message
/// (it cannot read the BYE), reconnects, gets a new token when the old one is
/// refused, and resumes without the half message.
async fn bye_mid_literal(profile: Profile) {
    let (_env, proxy, bye) =
        sync_through_bye(profile, Fault::ByeMidLiteral { after_bodies: 20 }).await;
    let (_, after) = tokens_around(&proxy, bye);
    assert!(!after.is_empty(), "no login after the BYE");
}
on_both_profiles!(bye_mid_literal);

/// The BYE between two FETCH responses of one FETCH: mailsync reads it, so it asks
/// for a new token before it logs in again (the expired one is never presented).
async fn bye_between_fetch_responses(profile: Profile) {
    let (_env, proxy, bye) =
        sync_through_bye(profile, Fault::ByeBetweenFetches { after_bodies: 20 }).await;
    assert_expired_token_not_presented(&proxy, bye);
}
on_both_profiles!(bye_between_fetch_responses);

fn count(dir: &Path) -> usize {
    local_messages(dir).len()
}

/// The daemon's IDLE ended by the BYE: it logs in again with a new token, IDLEs again,
/// and new mail still arrives.
async fn bye_in_idle(profile: Profile) {
    let env = Env::start(profile).await;
    seed(&env, "INBOX", "inbox", 3).await;
    let proxy = proxied(&env, "poll_interval = \"1h\"").await;
    proxy.arm(Fault::ByeInIdle);
    let calls = env.idp.token_calls();
    let daemon = Daemon::start(&env, &[]);
    until(Duration::from_secs(60), "the BYE in IDLE", &daemon, || {
        !proxy.byes().is_empty()
    })
    .await;
    let bye = one_bye(&proxy);
    until(
        Duration::from_secs(60),
        "IDLE again after the BYE",
        &daemon,
        || {
            proxy.events().iter().any(|e| {
                e.at > bye && matches!(&e.what, What::Command { name, .. } if name == "IDLE")
            })
        },
    )
    .await;
    assert!(
        env.idp.token_calls() > calls + 1,
        "no new token after the BYE"
    );
    assert_expired_token_not_presented(&proxy, bye);
    env.dovecot
        .append(USER, "INBOX", &message("late", 0, 500), &[], None)
        .await
        .unwrap();
    let inbox = env.maildir("Inbox");
    until(
        Duration::from_secs(60),
        "new mail after the BYE",
        &daemon,
        || count(&inbox) == 4,
    )
    .await;
    let (_, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    env.assert_in_sync().await;
}
on_both_profiles!(bye_in_idle);

/// The time from the throttled answer to mailsync's next attempt (a connection, or a
/// command other than LOGOUT), which must be at least the wait the answer named.
fn assert_waited(proxy: &ExchangeProxy) -> Duration {
    let throttled = proxy.throttled();
    assert_eq!(throttled.len(), 1, "throttled answers: {}", throttled.len());
    let (at, backoff) = throttled[0];
    let next = proxy
        .next_attempt_after(at)
        .expect("no attempt after the throttled answer");
    let waited = next.at - at;
    eprintln!("waited {waited:?} after a throttled answer naming {backoff:?} (next: {next:?})");
    assert!(
        waited >= backoff,
        "tried again {waited:?} after a throttled answer naming {backoff:?}: {:?}",
        next.what
    );
    waited
}

/// Fifteen messages in two folders behind a proxy that throttles the next `command`.
/// One connection, so that every command after the throttled answer is a try again.
async fn throttled_env(profile: Profile, command: &str, settings: &str) -> (Env, ExchangeProxy) {
    let env = Env::start(profile).await;
    seed(&env, "INBOX", "inbox", 10).await;
    seed(&env, "Archive", "archive", 5).await;
    let proxy = proxied(&env, &format!("max_connections = 1\n{settings}")).await;
    proxy.arm(Fault::Throttle {
        command: command.into(),
        backoff: BACKOFF,
    });
    (env, proxy)
}

/// `sync` throttled on `command`: it waits at least the hint, then converges.
async fn sync_throttled(profile: Profile, command: &str) {
    let (env, proxy) = throttled_env(profile, command, "").await;
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "sync failed:\n{run}");
    assert_waited(&proxy);
    env.assert_in_sync().await;
}

async fn sync_throttled_at_login(profile: Profile) {
    sync_throttled(profile, "AUTHENTICATE").await;
}
on_both_profiles!(sync_throttled_at_login);

async fn sync_throttled_at_select(profile: Profile) {
    sync_throttled(profile, "SELECT").await;
}
on_both_profiles!(sync_throttled_at_select);

/// `mailsync run` throttled on `command`: its next attempt comes no earlier than the
/// hint, and it converges and IDLEs.
async fn daemon_throttled(profile: Profile, command: &str) {
    let (env, proxy) = throttled_env(profile, command, "poll_interval = \"1h\"").await;
    let daemon = Daemon::start(&env, &[]);
    let (inbox, archive) = (env.maildir("Inbox"), env.maildir("Archive"));
    until(Duration::from_secs(60), "the first pass", &daemon, || {
        count(&inbox) == 10 && count(&archive) == 5
    })
    .await;
    until(Duration::from_secs(60), "IDLE", &daemon, || {
        proxy
            .events()
            .iter()
            .any(|e| matches!(&e.what, What::Command { name, .. } if name == "IDLE"))
    })
    .await;
    assert_waited(&proxy);
    let (_, code) = daemon.terminate().await;
    assert_eq!(code, Some(0));
    env.assert_in_sync().await;
}

async fn daemon_throttled_at_login(profile: Profile) {
    daemon_throttled(profile, "AUTHENTICATE").await;
}
on_both_profiles!(daemon_throttled_at_login);

async fn daemon_throttled_at_select(profile: Profile) {
    daemon_throttled(profile, "SELECT").await;
}
on_both_profiles!(daemon_throttled_at_select);
