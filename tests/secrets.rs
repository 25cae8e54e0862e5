//! No secret ever reaches the output: access, refresh and id tokens, device and
//! authorization codes, PKCE verifiers and the client secret, in clear, base64 (as in an
//! XOAUTH2 or OAUTHBEARER payload) or form-encoded, at `RUST_LOG=trace` and at `-vv`,
//! for every command, the daemon's log, and the output of failures. One table: each row
//! runs a command and names what its output must show (so the scan is of real traffic,
//! never of an empty or early-failing run) and what the identity provider must have
//! issued meanwhile (so the secrets it handled are the ones looked for).

use base64::Engine as _;
use mailsync_testenv::TokenFailure;
use mailsync_testenv::dovecot::Profile;
use mailsync_testenv::idp::SecretKind::{
    self, AuthCode, DeviceCode, IdToken, PkceVerifier, Refresh,
};

use crate::connect::{
    approve_as, connect_args_for, follow_authorize_url, fresh, run_connect_logged,
};
use crate::on_both_profiles;
use crate::support::daemon::{Daemon, until};
use crate::support::{CLIENT_ID, CLIENT_SECRET, Env, Run};

/// How much is logged: each row runs under both.
#[derive(Clone, Copy, Debug)]
enum Level {
    /// `RUST_LOG=trace`: everything, every crate.
    Trace,
    /// `-vv`: debug, as a user asked to send a log would run it.
    Vv,
}

impl Level {
    /// What the output of a run at this level shows: debug lines, and at trace, where
    /// the run talked to the identity provider, the HTTP client's trace lines.
    fn mark(self, row: &Row) -> &'static str {
        match self {
            Level::Trace if !row.issues.is_empty() => "TRACE",
            _ => "DEBUG",
        }
    }
}

/// What a row runs.
enum Step {
    /// `mailsync connect ACCOUNT --flow FLOW` (a Microsoft account for the flows a
    /// person signs in with, so the sign-in brings an id_token).
    Connect {
        account: &'static str,
        flow: &'static str,
    },
    /// `mailsync ARGS`, with `exit` its exit code.
    Command {
        args: &'static [&'static str],
        exit: i32,
    },
    /// `mailsync run` until every account has finished a pass, then SIGTERM.
    Daemon,
    /// `mailsync stop ACCOUNT`: one account at trace, the other at `-vv`.
    Stop {
        trace: &'static str,
        vv: &'static str,
    },
}

/// A change to the world before a row: the failures whose output is scanned.
enum Before {
    Nothing,
    /// The token endpoint answers the next call with this AADSTS error.
    TokenError(u32),
    /// The app's new tokens open another mailbox: the IMAP login is refused.
    AppGrantedElsewhere,
    /// The refresh tokens are revoked and the kept access tokens forgotten, so the next
    /// command refreshes and is refused (AADSTS50173).
    RevokeGrant,
}

struct Row {
    what: &'static str,
    before: Before,
    step: Step,
    /// What the output must contain.
    shows: &'static [&'static str],
    /// Whether it logs at all (at debug and trace): the offline commands may not.
    logs: bool,
    /// What the identity provider must have issued (or received) during the row.
    issues: &'static [SecretKind],
}

const ROWS: &[Row] = &[
    Row {
        what: "connect, device flow",
        before: Before::Nothing,
        step: Step::Connect {
            account: "work",
            flow: "device",
        },
        shows: &["enter the code", "authenticating", "imap >"],
        logs: true,
        issues: &[DeviceCode, SecretKind::Access, Refresh, IdToken],
    },
    Row {
        what: "connect, browser flow",
        before: Before::Nothing,
        step: Step::Connect {
            account: "web",
            flow: "browser",
        },
        shows: &["code_challenge=", "authenticating", "imap >"],
        logs: true,
        issues: &[AuthCode, PkceVerifier, SecretKind::Access, Refresh, IdToken],
    },
    Row {
        what: "connect, client credentials",
        before: Before::Nothing,
        step: Step::Connect {
            account: "app",
            flow: "client-credentials",
        },
        shows: &["authenticating", "imap >"],
        logs: true,
        issues: &[SecretKind::Access],
    },
    Row {
        what: "test (refresh)",
        before: Before::Nothing,
        step: Step::Command {
            args: &["test", "work"],
            exit: 0,
        },
        shows: &["✓ token", "✓ AUTHENTICATE", "imap >"],
        logs: true,
        issues: &[SecretKind::Access, Refresh],
    },
    Row {
        what: "test (client secret)",
        before: Before::Nothing,
        step: Step::Command {
            args: &["test", "app"],
            exit: 0,
        },
        shows: &["✓ token", "✓ AUTHENTICATE"],
        logs: true,
        issues: &[SecretKind::Access],
    },
    Row {
        what: "consent-url",
        before: Before::Nothing,
        step: Step::Command {
            args: &["consent-url"],
            exit: 0,
        },
        shows: &["adminconsent?client_id="],
        logs: false,
        issues: &[],
    },
    Row {
        what: "sync",
        before: Before::Nothing,
        step: Step::Command {
            args: &["sync"],
            exit: 0,
        },
        shows: &["authenticating", "imap >", "work/Inbox: fetched"],
        logs: true,
        issues: &[],
    },
    Row {
        what: "status",
        before: Before::Nothing,
        step: Step::Command {
            args: &["status"],
            exit: 0,
        },
        shows: &["granted to jane@example.com, access token expires"],
        logs: false,
        issues: &[],
    },
    Row {
        what: "status --json",
        before: Before::Nothing,
        step: Step::Command {
            args: &["status", "--json"],
            exit: 0,
        },
        shows: &["\"granted_to\"", "\"access_expires\""],
        logs: false,
        issues: &[],
    },
    Row {
        what: "folders",
        before: Before::Nothing,
        step: Step::Command {
            args: &["folders"],
            exit: 0,
        },
        shows: &["authenticating", "imap >", "INBOX"],
        logs: true,
        issues: &[],
    },
    Row {
        what: "run (the daemon's log)",
        before: Before::Nothing,
        step: Step::Daemon,
        shows: &["authenticating", "imap >"],
        logs: true,
        issues: &[],
    },
    Row {
        what: "stop",
        before: Before::Nothing,
        step: Step::Stop {
            trace: "web",
            vv: "shared",
        },
        shows: &["tokens: deleted"],
        logs: false,
        issues: &[],
    },
    Row {
        what: "an identity provider's error (wrong client secret)",
        before: Before::TokenError(7000215),
        step: Step::Command {
            args: &["test", "app"],
            exit: 1,
        },
        shows: &["✗ token", "AADSTS7000215"],
        logs: true,
        issues: &[],
    },
    Row {
        what: "a refused IMAP login",
        before: Before::AppGrantedElsewhere,
        step: Step::Command {
            args: &["sync", "app"],
            exit: 2,
        },
        shows: &["authenticating", "AUTHENTICATE"],
        logs: true,
        issues: &[SecretKind::Access],
    },
    Row {
        what: "a revoked grant",
        before: Before::RevokeGrant,
        step: Step::Command {
            args: &["sync", "work"],
            exit: 2,
        },
        shows: &["AADSTS50173", "mailsync connect work"],
        // Once the grant is found dead, nothing is asked or logged.
        logs: false,
        issues: &[],
    },
    Row {
        what: "a dead grant, again",
        before: Before::Nothing,
        step: Step::Command {
            args: &["test", "work"],
            exit: 1,
        },
        shows: &["mailsync connect work"],
        logs: false,
        issues: &[],
    },
];

async fn secrets_never_in_any_output(profile: Profile) {
    let (env, _) = fresh(profile).await;
    let mut checked = 0;
    for row in ROWS {
        for level in [Level::Trace, Level::Vv] {
            let failures = env.idp.token_failures_served();
            let injected = prepare(&env, &row.before);
            let issued_before = env.idp.issued_secret_kinds().len();
            let text = run_step(&env, &row.step, level).await;
            let what = format!("{} at {level:?}", row.what);
            let mark = row.logs.then(|| level.mark(row));
            for want in row.shows.iter().copied().chain(mark) {
                assert!(
                    text.contains(want),
                    "{what}: the output does not show {want:?}, so the scan would prove little:\n{}",
                    redacted(&env, &text)
                );
            }
            let new = env.idp.issued_secret_kinds().split_off(issued_before);
            for kind in row.issues {
                assert!(
                    new.iter().any(|(k, _)| k == kind),
                    "{what}: no {kind:?} was issued: {:?}",
                    new.iter().map(|(k, _)| k).collect::<Vec<_>>()
                );
            }
            assert_eq!(
                env.idp.token_failures_served() - failures,
                injected,
                "{what}: the injected failure was not served"
            );
            assert_no_secret(&env, &what, &text);
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * ROWS.len());
}
on_both_profiles!(secrets_never_in_any_output);

/// Sets up the row's failure; returns how many injected token failures it queued.
fn prepare(env: &Env, before: &Before) -> u64 {
    match before {
        Before::Nothing => 0,
        Before::TokenError(code) => {
            env.idp
                .fail_next_token_calls(1, TokenFailure::Aadsts(*code));
            1
        }
        Before::AppGrantedElsewhere => {
            env.idp.add_app(
                CLIENT_ID,
                Some(CLIENT_SECRET),
                Some("someone-else@example.com"),
            );
            forget_kept_access_tokens(env);
            0
        }
        Before::RevokeGrant => {
            env.idp.revoke_refresh_tokens(crate::support::USER);
            forget_kept_access_tokens(env);
            0
        }
    }
}

/// The next command of every account asks the identity provider for a token.
fn forget_kept_access_tokens(env: &Env) {
    let db = rusqlite::Connection::open(env.state_dir().join("state.sqlite")).unwrap();
    db.execute("DELETE FROM access_tokens", []).unwrap();
}

/// Runs the step at `level`; returns everything it printed (the daemon: its log).
async fn run_step(env: &Env, step: &Step, level: Level) -> String {
    let rust_log = match level {
        Level::Trace => Some("trace"),
        Level::Vv => None,
    };
    match step {
        Step::Connect { account, flow } => {
            let provider = if *flow == "client-credentials" {
                "custom"
            } else {
                "microsoft"
            };
            let mut args = connect_args_for(env, flow, provider);
            args[1] = account.to_string();
            let maildir = args.iter().position(|a| a == "--maildir").unwrap() + 1;
            args[maildir] = env.dir.path().join(account).display().to_string();
            if matches!(level, Level::Vv) {
                args.push("-vv".into());
            }
            let idp = env.idp.clone();
            let (code, out, err) = run_connect_logged(env, args, rust_log, move |line| {
                follow_authorize_url(line);
                approve_as(&idp, line, crate::support::USER);
            })
            .await;
            let text = format!("{out}{err}");
            assert_eq!(
                code,
                0,
                "connect {account} failed:\n{}",
                redacted(env, &text)
            );
            text
        }
        Step::Stop { trace, vv } => {
            let account = match level {
                Level::Trace => trace,
                Level::Vv => vv,
            };
            command(env, &["stop", account], 0, rust_log).await
        }
        Step::Command { args, exit } => command(env, args, *exit, rust_log).await,
        Step::Daemon => {
            let filter = match level {
                Level::Trace => "trace",
                Level::Vv => "debug",
            };
            let daemon = Daemon::start(env, &[("RUST_LOG", filter.to_owned())]);
            until(
                std::time::Duration::from_secs(120),
                "a pass of each of the four accounts",
                &daemon,
                || daemon.log().matches("sync pass done").count() >= 4,
            )
            .await;
            let log = daemon.log();
            let (_, code) = daemon.terminate().await;
            assert_eq!(code, Some(0), "{}", redacted(env, &log));
            log
        }
    }
}

/// `mailsync ARGS` with `RUST_LOG=trace` if `rust_log`, else `-vv`; it must exit with
/// `exit`. Returns its output.
async fn command(env: &Env, args: &[&str], exit: i32, rust_log: Option<&str>) -> String {
    let mut all: Vec<&str> = args.to_vec();
    if rust_log.is_none() {
        all.insert(0, "-vv");
    }
    let mut cmd = env.command(&all);
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let run = Run::from(
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap(),
    );
    let text = run.to_string();
    assert_eq!(
        run.code,
        exit,
        "mailsync {args:?}:\n{}",
        redacted(env, &text)
    );
    text
}

/// Every form a secret could take in the output: as it is, form-encoded, and the part
/// of its base64 that any payload holding it has (at each of the three alignments, in
/// both alphabets), so an XOAUTH2 or OAUTHBEARER string is found whatever wraps it.
pub(crate) fn forms_of(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    let encoded: String = secret
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    if encoded != secret {
        forms.push(encoded);
    }
    for pad in 0..3 {
        let mut bytes = vec![b'\x01'; pad];
        bytes.extend_from_slice(secret.as_bytes());
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE,
        ] {
            let b64 = engine.encode(&bytes);
            // The first four characters mix in what precedes, the last four what
            // follows (or padding).
            if b64.len() > 16 {
                forms.push(b64[4..b64.len() - 4].to_owned());
            }
        }
    }
    forms
}

/// Every secret of this test: what the identity provider issued or received, and the
/// client secret.
fn all_secrets(env: &Env) -> Vec<String> {
    let mut all = env.idp.issued_secrets();
    all.push(CLIENT_SECRET.to_owned());
    all
}

/// Fails if any secret, in any form, is in `text` (naming where, never the secret).
pub(crate) fn assert_no_secret_in(secrets: &[String], what: &str, text: &str) {
    for s in secrets {
        for form in forms_of(s) {
            assert!(
                !text.contains(&form),
                "{what}: a secret is in the output ({} characters from offset {})",
                form.len(),
                text.find(&form).unwrap()
            );
        }
    }
}

fn assert_no_secret(env: &Env, what: &str, text: &str) {
    assert_no_secret_in(&all_secrets(env), what, text);
}

/// `text` with every secret replaced, for failure messages.
fn redacted(env: &Env, text: &str) -> String {
    let mut text = text.to_owned();
    for s in all_secrets(env) {
        for form in forms_of(&s) {
            text = text.replace(&form, "<SECRET>");
        }
    }
    text
}

/// The scan finds a token however it is wrapped, and not where it is absent.
#[test]
fn the_scan_finds_every_form() {
    let token = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJqYW5lIn0.c2lnbmF0dXJl-_x";
    let secrets = vec![token.to_owned(), CLIENT_SECRET.to_owned()];
    let std = base64::engine::general_purpose::STANDARD;
    for wrapped in [
        format!("user=jane@example.com\x01auth=Bearer {token}\x01\x01"),
        format!(
            "n,a=jane@example.com,\x01host=localhost\x01port=993\x01auth=Bearer {token}\x01\x01"
        ),
        format!("n,,\x01auth=Bearer {token}\x01\x01"),
    ] {
        let text = format!("DEBUG imap > AUTHENTICATE XOAUTH2 {}", std.encode(&wrapped));
        let caught = std::panic::catch_unwind(|| assert_no_secret_in(&secrets, "t", &text));
        assert!(caught.is_err(), "missed the base64 of {wrapped:?}");
    }
    let form = "client_secret=test-secret-Q7fZ%7Ek2pX9&grant_type=client_credentials";
    assert!(std::panic::catch_unwind(|| assert_no_secret_in(&secrets, "t", form)).is_err());
    assert_no_secret_in(&secrets, "t", "TRACE nothing secret here, eyJ0eXAi and all");
}
