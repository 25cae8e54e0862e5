//! `mailsync connect` with each flow, end to end: the test identity provider issues the
//! tokens, Dovecot validates them by introspection, and the account then syncs. Also
//! the token life cycle (refresh, rotation, revocation, crash after a refresh), the
//! diagnosis of every AADSTS code, and secrets kept out of logs and the database.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use mailsync_testenv::TokenFailure;
use mailsync_testenv::dovecot::{Profile, SeedMessage};
use mailsync_testenv::idp::{Rotation, SecretKind};

use crate::on_both_profiles;
use crate::support::{CLIENT_ID, CLIENT_SECRET, Env, USER, toml_string};

/// A config a person wrote: comments, odd spacing, another account — all of which
/// `connect` must leave byte-for-byte as they are.
pub(crate) fn hand_written(env: &Env) -> String {
    let d = env.dir.path();
    format!(
        r#"# My mailsync config.
#   Comments here must survive `mailsync connect`.

[daemon]
state_dir = {state}   # next to the mail
command_timeout   =   "20s"

# The shared mailbox, app-only.
[accounts.shared]
provider = "custom"
email = "{USER}"
client_id = "{CLIENT_ID}"
flow = "client-credentials"
client_secret_file = {secret}
maildir = {other}
imap_host = "localhost"
imap_port = {port}
tls = "implicit"
ca_file = {ca}
token_url = "{token_url}"
scopes = ["https://outlook.office365.com/.default"]

[accounts.shared.folders]
Inbox = "INBOX"   # only the inbox
"#,
        state = toml_string(&d.join("state").display().to_string()),
        secret = toml_string(&d.join("work.secret").display().to_string()),
        other = toml_string(&d.join("OtherMail").display().to_string()),
        port = env.dovecot.imaps_port(),
        ca = toml_string(&d.join("ca.pem").display().to_string()),
        token_url = env.idp.token_url("contoso"),
    )
}

/// `connect work` arguments for this environment and `flow`.
fn connect_args(env: &Env, flow: &str) -> Vec<String> {
    connect_args_for(env, flow, "custom")
}

/// `connect work` arguments for `provider`: a Microsoft account (its endpoints pointed
/// at the test environment) gets the provider's default scopes.
pub(crate) fn connect_args_for(env: &Env, flow: &str, provider: &str) -> Vec<String> {
    let d = env.dir.path();
    let mut args: Vec<String> = [
        "connect",
        "work",
        "--email",
        USER,
        "--provider",
        provider,
        "--client-id",
        CLIENT_ID,
        "--flow",
        flow,
        "--imap-host",
        "localhost",
        "--tls",
        "implicit",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let more = [
        ("--imap-port", env.dovecot.imaps_port().to_string()),
        ("--ca-file", d.join("ca.pem").display().to_string()),
        ("--maildir", env.mail_root().display().to_string()),
        ("--token-url", env.idp.token_url("contoso")),
        ("--device-url", env.idp.device_url("contoso")),
        ("--authorize-url", env.idp.authorize_url("contoso")),
    ];
    for (k, v) in more {
        args.push(k.into());
        args.push(v);
    }
    if let Some(port) = env.dovecot.submissions_port() {
        for (k, v) in [
            ("--smtp-host", "localhost".to_owned()),
            ("--smtp-port", port.to_string()),
            ("--smtp-tls", "implicit".to_owned()),
        ] {
            args.push(k.into());
            args.push(v);
        }
    }
    if flow == "client-credentials" {
        args.push("--client-secret-file".into());
        args.push(d.join("work.secret").display().to_string());
        args.push("--scope".into());
        args.push("https://outlook.office365.com/.default".into());
    } else if provider == "custom" {
        args.push("--scope".into());
        args.push("https://outlook.office.com/IMAP.AccessAsUser.All".into());
        args.push("--scope".into());
        args.push("offline_access".into());
    }
    if flow == "browser" {
        args.push("--no-browser".into());
    }
    args
}

/// Starts an environment whose config has no `work` account yet, and seeds mail.
pub(crate) async fn fresh(profile: Profile) -> (Env, String) {
    let env = Env::start_sending(profile, |o| o).await;
    env.idp.set_device_code_interval(Duration::from_secs(1));
    let text = hand_written(&env);
    std::fs::write(env.config_path(), &text).unwrap();
    let batch: Vec<SeedMessage> = (0..5)
        .map(|i| {
            SeedMessage::new(
                format!("Subject: m{i}\r\nMessage-ID: <c{i}@x>\r\n\r\nhi {i}\r\n").into_bytes(),
                &[],
            )
        })
        .collect();
    env.dovecot.append_many(USER, "INBOX", batch).await.unwrap();
    env.dovecot
        .append(
            USER,
            "Archive",
            b"Subject: old\r\n\r\nold\r\n",
            &["\\Seen"],
            None,
        )
        .await
        .unwrap();
    (env, text)
}

/// Runs `connect` as a child; `drive` gets each stdout line and may act on it (enter a
/// device code, follow a URL). Returns (exit code, stdout, stderr).
async fn run_connect<F>(env: &Env, flow: &str, drive: F) -> (i32, String, String)
where
    F: FnMut(&str) + Send + 'static,
{
    run_connect_with(env, connect_args(env, flow), drive).await
}

/// [`run_connect`] with these arguments.
pub(crate) async fn run_connect_with<F>(
    env: &Env,
    args: Vec<String>,
    drive: F,
) -> (i32, String, String)
where
    F: FnMut(&str) + Send + 'static,
{
    run_connect_logged(env, args, None, drive).await
}

/// [`run_connect_with`], with `RUST_LOG` set to `rust_log` if given.
pub(crate) async fn run_connect_logged<F>(
    env: &Env,
    args: Vec<String>,
    rust_log: Option<&str>,
    mut drive: F,
) -> (i32, String, String)
where
    F: FnMut(&str) + Send + 'static,
{
    let mut cmd = env.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    cmd.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
            s
        });
        let mut out = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            drive(&line);
            out.push_str(&line);
            out.push('\n');
        }
        let status = child.wait().unwrap();
        (status.code().unwrap_or(-1), out, err.join().unwrap())
    })
    .await
    .unwrap()
}

/// The account's table must be new, and everything before it unchanged.
fn assert_rest_unchanged(before: &str, after: &str) {
    assert!(
        after.starts_with(before.trim_end()),
        "connect changed the rest of the file:\n--- before\n{before}\n--- after\n{after}"
    );
    assert!(
        after.contains("[accounts.work]") && after.contains("[accounts.work.folders]"),
        "{after}"
    );
}

async fn device_flow(profile: Profile) {
    let (env, before) = fresh(profile).await;
    let idp = env.idp.clone();
    let (code, out, err) = run_connect(&env, "device", move |line| {
        if line.contains("enter the code") {
            let user_code = line.rsplit(' ').next().unwrap().to_owned();
            let idp = idp.clone();
            // Approve once the client has polled (and been told to wait), so it has
            // to poll again.
            std::thread::spawn(move || {
                let polled = || {
                    idp.token_requests().iter().any(|r| {
                        r.iter()
                            .any(|(k, v)| k == "grant_type" && v.ends_with(":device_code"))
                    })
                };
                let started = std::time::Instant::now();
                while !polled() {
                    assert!(
                        started.elapsed() < Duration::from_secs(120),
                        "the client never polled"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert!(idp.approve_device_code(Some(&user_code), USER));
            });
        }
    })
    .await;
    assert_eq!(code, 0, "connect failed:\n{out}\n{err}");
    assert!(out.contains("/devicelogin"), "{out}");
    let after = std::fs::read_to_string(env.config_path()).unwrap();
    assert_rest_unchanged(&before, &after);
    assert!(
        after.contains("Inbox = \"INBOX\"")
            && after.contains("Archive = \"@archive\"")
            && after.contains("\"Deleted Items\" = \"@trash\""),
        "{after}"
    );

    // The stored refresh token is what the sync now runs on.
    let run = env.run(&["sync", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.summary().folder("Inbox").fetched, 5, "{run}");
    env.assert_in_sync().await;
}
on_both_profiles!(device_flow);

async fn browser_flow(profile: Profile) {
    let (env, before) = fresh(profile).await;
    let (code, out, err) = run_connect(&env, "browser", |line| {
        let url = line.trim();
        if url.starts_with("http://127.0.0.1") && url.contains("/authorize?") {
            // Play the browser: the identity provider redirects to the loopback listener.
            let url = url.to_owned();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap();
                let r = http.get(&url).send().unwrap();
                assert_eq!(r.status().as_u16(), 302, "authorize did not redirect");
                let location = r.headers()["location"].to_str().unwrap().to_owned();
                assert!(location.starts_with("http://localhost:"), "{location}");
                let page = http.get(&location).send().unwrap().text().unwrap();
                assert!(page.contains("close this tab"), "{page}");
            });
        }
    })
    .await;
    assert_eq!(code, 0, "connect failed:\n{out}\n{err}");
    assert!(
        out.contains("code_challenge_method=S256") && out.contains("login_hint="),
        "{out}"
    );
    let after = std::fs::read_to_string(env.config_path()).unwrap();
    assert_rest_unchanged(&before, &after);
    let run = env.run(&["sync", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    env.assert_in_sync().await;
}
on_both_profiles!(browser_flow);

async fn client_credentials_flow(profile: Profile) {
    let (env, before) = fresh(profile).await;
    let (code, out, err) = run_connect(&env, "client-credentials", |_| {}).await;
    assert_eq!(code, 0, "connect failed:\n{out}\n{err}");
    let after = std::fs::read_to_string(env.config_path()).unwrap();
    assert_rest_unchanged(&before, &after);
    assert!(
        !after.contains(CLIENT_SECRET),
        "the secret was written into the config"
    );
    let run = env.run(&["sync", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    env.assert_in_sync().await;
}
on_both_profiles!(client_credentials_flow);

/// Plays the browser for the authorization URL in `line`, if it is one: follows the
/// identity provider's redirect to mailsync's loopback listener.
pub(crate) fn follow_authorize_url(line: &str) {
    let url = line.trim().to_owned();
    if url.starts_with("http://127.0.0.1") && url.contains("/authorize?") {
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let r = http.get(&url).send().unwrap();
            let location = r.headers()["location"].to_str().unwrap().to_owned();
            let _ = http.get(&location).send();
        });
    }
}

/// Approves the device code in `line`, if it shows one, as `who`.
pub(crate) fn approve_as(idp: &std::sync::Arc<mailsync_testenv::Idp>, line: &str, who: &str) {
    if line.contains("enter the code") {
        assert!(idp.approve_device_code(Some(line.rsplit(' ').next().unwrap()), who));
    }
}

const MALLORY: &str = "mallory@example.com";

/// Another account signs in, with a Microsoft account's default scopes: refused,
/// naming who signed in (the id_token comes only with `openid`, which mailsync adds
/// to the sign-in), in both flows that have a person sign in; nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_account_is_refused_with_the_default_scopes() {
    let (env, before) = fresh(Profile::Full).await;
    env.idp.set_signed_in_user(Some(MALLORY));
    let browser = connect_args_for(&env, "browser", "microsoft");
    let (code, out, err) = run_connect_with(&env, browser, follow_authorize_url).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "signed in as {MALLORY}, but the account is for {USER}"
        )),
        "{err}"
    );

    let idp = env.idp.clone();
    let device = connect_args_for(&env, "device", "microsoft");
    let (code, out, err) =
        run_connect_with(&env, device, move |line| approve_as(&idp, line, MALLORY)).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "signed in as {MALLORY}, but the account is for {USER}"
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(env.config_path()).unwrap(),
        before,
        "a refused connect wrote the config"
    );
}

/// A custom provider is asked for no scope it was not given, and with `openid` among
/// its scopes it gets the same check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_account_is_refused_with_openid_in_custom_scopes() {
    let (env, _) = fresh(Profile::Full).await;
    env.idp.set_signed_in_user(Some(MALLORY));
    let mut args = connect_args(&env, "browser");
    args.extend(["--scope", "openid", "--scope", "email"].map(String::from));
    let (code, out, err) = run_connect_with(&env, args, follow_authorize_url).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains(&format!("signed in as {MALLORY}")), "{err}");
    assert!(
        out.contains("scope=https%3A%2F%2Foutlook.office.com%2FIMAP.AccessAsUser.All+offline_access+openid+email&"),
        "{out}"
    );
}

/// With a Microsoft account's default scopes the grant names who signed in, and the
/// refreshes after it ask for the account's scopes as before (so the access tokens
/// kept under those scopes, and grants made before, go on serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_scopes_name_who_signed_in() {
    let (env, _) = fresh(Profile::Full).await;
    let idp = env.idp.clone();
    let device = connect_args_for(&env, "device", "microsoft");
    let (code, out, err) =
        run_connect_with(&env, device, move |line| approve_as(&idp, line, USER)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let status = env.run(&["status", "--json", "work"]).await;
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v[0]["token"]["granted_to"], USER, "{status}");

    let run = env.run(&["sync", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    let requests = env.idp.token_requests();
    let refresh = requests
        .iter()
        .rev()
        .find(|r| r.contains(&("grant_type".into(), "refresh_token".into())))
        .expect("no refresh");
    let scope = refresh
        .iter()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        scope,
        Some(
            "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send offline_access"
        )
    );
    env.assert_in_sync().await;
}

/// The browser flow's loopback listener: it holds the port on both loopback
/// addresses (`localhost` may be either, so no other local user can listen on the
/// other one), and a connection that sends nothing, or trickles, does not hold off
/// the real redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_redirect_is_served_beside_a_silent_connection() {
    let (env, _) = fresh(Profile::Full).await;
    let outcome = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = outcome.clone();
    let (code, out, err) = run_connect(&env, "browser", move |line| {
        let url = line.trim().to_owned();
        if !(url.starts_with("http://127.0.0.1") && url.contains("/authorize?")) {
            return;
        }
        let redirect = reqwest::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let port = reqwest::Url::parse(&redirect).unwrap().port().unwrap();
        match std::net::TcpListener::bind(("::1", port)) {
            Ok(_) => seen
                .lock()
                .unwrap()
                .push(format!("another user could listen on [::1]:{port}")),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => eprintln!("SKIPPED the [::1] check: no IPv6 loopback here ({e})"),
        }
        // A client that connects and trickles a byte now and then, never finishing
        // its request, until the redirect has been served. Served one after the other,
        // another request would wait until mailsync gave up on this one and closed
        // it: a favicon request must be answered while it is still open.
        let silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trickling = served.clone();
        let mut writer = silent.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..300 {
                if trickling.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let _ = std::io::Write::write_all(&mut writer, b"G");
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let seen = seen.clone();
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let favicon = format!("{}favicon.ico", redirect);
            let _ = http.get(&favicon).send().and_then(|r| r.text());
            silent.set_nonblocking(true).unwrap();
            let open = matches!(
                silent.peek(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            );
            if !open {
                seen.lock().unwrap().push(
                    "another request was served only after the silent connection was closed".into(),
                );
            }
            let r = http.get(&url).send().unwrap();
            let location = r.headers()["location"].to_str().unwrap().to_owned();
            assert!(location.starts_with(&redirect), "{location}");
            let page = http.get(&location).send().and_then(|r| r.text());
            served.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = page {
                seen.lock()
                    .unwrap()
                    .push(format!("the redirect was not served: {e}"));
            }
        });
    })
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let problems = outcome.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:?}");
}

/// Connects `work` with the device flow (approved at once) for the life-cycle tests,
/// as a Microsoft account with its default scopes (whose sign-in names who signed in).
pub(crate) async fn connected(profile: Profile) -> Env {
    let (env, _) = fresh(profile).await;
    let idp = env.idp.clone();
    let device = connect_args_for(&env, "device", "microsoft");
    let (code, out, err) = run_connect_with(&env, device, move |line| {
        if line.contains("enter the code") {
            let user_code = line.rsplit(' ').next().unwrap().to_owned();
            assert!(idp.approve_device_code(Some(&user_code), USER));
        }
    })
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    env
}

/// Microsoft rotates refresh tokens: ten refreshes in a row (one per process) each
/// spend the previous token, and the store always holds the working one. The access
/// tokens live shorter than the refresh margin, so no run can reuse the previous run's
/// kept token and each one refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_rotation_ten_times() {
    let env = connected(Profile::Full).await;
    env.idp.set_access_token_lifetime(Duration::from_secs(60));
    let first = env.run(&["sync", "work"]).await;
    assert_eq!(first.code, 0, "{first}");
    let before = env.idp.token_calls();
    for i in 0..10 {
        env.dovecot
            .append(
                USER,
                "INBOX",
                format!("Subject: r{i}\r\n\r\nx\r\n").as_bytes(),
                &[],
                None,
            )
            .await
            .unwrap();
        let run = env.run(&["sync", "work"]).await;
        assert_eq!(run.code, 0, "refresh {i}: {run}");
        assert_eq!(run.summary().folder("Inbox").fetched, 1, "{run}");
    }
    assert_eq!(env.idp.token_calls() - before, 10, "one refresh per run");
    env.assert_in_sync().await;
}

/// A crash right after a refresh loses nothing: the rotated token was stored before
/// the access token was used. (Short-lived access tokens: every run refreshes rather
/// than reuse the kept one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_right_after_a_refresh() {
    let env = connected(Profile::Full).await;
    env.idp.set_access_token_lifetime(Duration::from_secs(60));
    for _ in 0..3 {
        let mut cmd = env.command(&["-vv", "sync", "work"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let killed = tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().unwrap();
            let stderr = child.stderr.take().unwrap();
            for line in BufReader::new(stderr).lines() {
                if line.unwrap().contains("access token refreshed") {
                    child.kill().unwrap(); // SIGKILL, before the token is used
                    child.wait().unwrap();
                    return true;
                }
            }
            child.wait().unwrap();
            false
        })
        .await
        .unwrap();
        assert!(killed, "the refresh was never logged");
    }
    let run = env.run(&["sync", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    env.assert_in_sync().await;
}

/// The unsafe window of a refresh: the identity provider has issued the new refresh
/// token, but mailsync has not stored it — SIGKILLed while the reply is on its way.
/// Microsoft keeps the old token valid, so the next run simply works. Where the old
/// one is spent (the test IdP's strict mode), the grant is gone: the next run says in
/// one line that `mailsync connect work` is needed, exits 2, asks nothing again, and
/// keeps every message; `connect` brings the account back. Nothing leaks either way.
/// (The server profile plays no part before the login: one profile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_provider_rotated_before_mailsync_stored() {
    for rotation in [Rotation::KeepOld, Rotation::SpendOnUse] {
        let env = connected(Profile::Full).await;
        env.idp.set_refresh_rotation(rotation);
        // Shorter than the refresh margin: every run refreshes.
        env.idp.set_access_token_lifetime(Duration::from_secs(60));
        let first = env.run(&["sync", "work"]).await;
        assert_eq!(first.code, 0, "{first}");
        env.dovecot
            .append(USER, "INBOX", b"Subject: later\r\n\r\nx\r\n", &[], None)
            .await
            .unwrap();
        let local_before = all_local(&env).await;

        env.idp.stall_next_token_replies(1);
        let (stalled, issued) = (
            env.idp.stalled_token_replies(),
            env.idp.issued_secrets().len(),
        );
        let mut cmd = env.command(&["-vv", "sync", "work"]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let started = std::time::Instant::now();
        while env.idp.stalled_token_replies() == stalled {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{rotation:?}: mailsync ended before the refresh was issued"
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{rotation:?}: no refresh reached the identity provider"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL: the new refresh token is issued, not stored
        let killed = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        env.idp.release_stalled_token_replies();
        let rotated = env.idp.issued_secret_kinds()[issued..]
            .iter()
            .filter(|(k, _)| *k == SecretKind::Refresh)
            .count();
        assert_eq!(rotated, 1, "{rotation:?}: the provider did not rotate");

        let calls = env.idp.token_calls();
        let next = env.run(&["sync", "work"]).await;
        let mut outputs = vec![
            crate::support::Run::from(killed).to_string(),
            next.to_string(),
        ];
        match rotation {
            Rotation::KeepOld => {
                assert_eq!(next.code, 0, "{rotation:?}: {next}");
                assert_eq!(next.summary().folder("Inbox").fetched, 1, "{next}");
                env.assert_in_sync().await;
            }
            Rotation::SpendOnUse => {
                assert_eq!(next.code, 2, "{rotation:?}: {next}");
                let said: Vec<&str> = next
                    .stderr
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .collect();
                assert_eq!(said.len(), 1, "not one line: {next}");
                assert!(said[0].contains("mailsync connect work"), "{next}");
                assert_eq!(all_local(&env).await, local_before, "mail was lost: {next}");
                assert_eq!(env.idp.token_calls() - calls, 1, "{next}");
                let again = env.run(&["sync", "work"]).await;
                assert_eq!(again.code, 2, "{again}");
                assert!(again.stderr.contains("mailsync connect work"), "{again}");
                assert_eq!(
                    env.idp.token_calls() - calls,
                    1,
                    "a dead grant was asked again"
                );
                assert_eq!(
                    all_local(&env).await,
                    local_before,
                    "mail was lost: {again}"
                );
                outputs.push(again.to_string());

                let idp = env.idp.clone();
                let device = connect_args_for(&env, "device", "microsoft");
                let (code, out, err) =
                    run_connect_with(&env, device, move |line| approve_as(&idp, line, USER)).await;
                assert_eq!(code, 0, "{out}\n{err}");
                outputs.push(format!("{out}{err}"));
                let run = env.run(&["sync", "work"]).await;
                assert_eq!(run.code, 0, "{run}");
                outputs.push(run.to_string());
                env.assert_in_sync().await;
            }
        }
        let mut secrets = env.idp.issued_secrets();
        secrets.push(CLIENT_SECRET.to_owned());
        for text in &outputs {
            crate::secrets::assert_no_secret_in(&secrets, &format!("{rotation:?}"), text);
        }
    }
}

/// Every message file in the mapped local folders, as (folder, bytes, flags), sorted.
async fn all_local(env: &Env) -> Vec<(String, Vec<u8>, String)> {
    let mut all = Vec::new();
    for (local, _) in env.resolved_mappings().await {
        for (bytes, flags) in crate::support::local_messages(&env.maildir(&local)) {
            all.push((local.clone(), bytes, flags));
        }
    }
    all.sort();
    all
}

/// A revoked refresh token: "needs connect" with the reason, and no retry loop — the
/// token endpoint is asked once, and not again by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_refresh_token_needs_connect() {
    let env = connected(Profile::Exchange).await;
    env.idp.revoke_refresh_tokens(USER);
    let before = env.idp.token_calls();
    let run = env.run(&["sync", "work"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("AADSTS50173") && run.stderr.contains("mailsync connect work"),
        "{run}"
    );
    assert_eq!(
        run.stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "said more than once: {run}"
    );
    assert_eq!(
        env.idp.token_calls() - before,
        1,
        "the revoked token was retried"
    );
    let again = env.run(&["sync", "work"]).await;
    assert_eq!(again.code, 2, "{again}");
    assert!(again.stderr.contains("mailsync connect work"), "{again}");
    assert_eq!(
        env.idp.token_calls() - before,
        1,
        "a dead grant must not be retried"
    );
    // `connect` again brings it back, and keeps the account's table as it is (the
    // user's mappings included).
    let mut config = std::fs::read_to_string(env.config_path()).unwrap();
    config = config.replace(
        "\"Deleted Items\" = \"@trash\"",
        "\"Deleted Items\" = \"@trash\"\nJunk = \"@junk\"  # mine",
    );
    std::fs::write(env.config_path(), &config).unwrap();
    let idp = env.idp.clone();
    // As `connected` did.
    let device = connect_args_for(&env, "device", "microsoft");
    let (code, out, err) = run_connect_with(&env, device, move |line| {
        if line.contains("enter the code") {
            assert!(idp.approve_device_code(Some(line.rsplit(' ').next().unwrap()), USER));
        }
    })
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        std::fs::read_to_string(env.config_path()).unwrap(),
        config,
        "reconnecting changed the config"
    );
    let run = env.run(&["sync", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
}

/// The server briefly unable to check tokens (`NO [UNAVAILABLE]`) is retried with
/// backoff, not reported as a bad token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_unavailable_is_retried() {
    let env = connected(Profile::Exchange).await;
    env.idp.fail_introspection(true);
    let mut cmd = env.command(&["sync", "work"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // The server could not check the token at least once: now it can again.
    let started = std::time::Instant::now();
    while env.idp.introspection_failures_served() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the server never asked the identity provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.idp.fail_introspection(false);
    let run = crate::support::Run::from(
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stderr.contains("UNAVAILABLE") || run.stderr.contains("temporarily"),
        "no retry was logged:\n{run}"
    );
    env.assert_in_sync().await;
}

/// The identity provider briefly failing is retried, not reported as a dead grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_token_failures_are_retried() {
    let env = connected(Profile::Full).await;
    env.idp
        .fail_next_token_calls(2, TokenFailure::Unavailable(503));
    let run = env.run(&["sync", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        env.idp.token_failures_served(),
        2,
        "the failures were not served: {run}"
    );
    env.assert_in_sync().await;
}

/// The access token expires during a long sync and the server drops the session (as
/// Exchange does): mailsync reconnects with a fresh token and completes. On both
/// profiles: the download resumes by each one's own means (with and without QRESYNC).
async fn token_expiring_during_a_long_sync(profile: Profile) {
    let env = connected(profile).await;
    let batch: Vec<SeedMessage> = (0..8000)
        .map(|i| {
            SeedMessage::new(
                format!(
                    "Subject: long {i}\r\nMessage-ID: <long{i}@x>\r\n\r\n{}\r\n",
                    "x".repeat(2000)
                )
                .into_bytes(),
                &[],
            )
        })
        .collect();
    env.dovecot.seed_fast(USER, "Archive", batch).await.unwrap();
    let calls = env.idp.token_calls();
    let mut cmd = env.command(&["sync", "work"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = tokio::task::spawn_blocking(move || cmd.spawn().unwrap())
        .await
        .unwrap();
    // Once the download is under way (not before, not after): the token expires and
    // the server drops the sessions.
    let archive = env.maildir("Archive");
    let started = std::time::Instant::now();
    while crate::support::local_messages(&archive).len() < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the download never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.idp.expire_access_tokens();
    env.dovecot.kick(USER).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let run = crate::support::Run::from(out);
    assert_eq!(run.code, 0, "{run}");
    env.assert_in_sync().await;
    assert!(
        env.idp.token_calls() - calls >= 2,
        "no second token was requested"
    );
}
on_both_profiles!(token_expiring_during_a_long_sync);

/// Every AADSTS code of the diagnosis table produces its cause and fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aadsts_code_is_diagnosed() {
    let env = Env::start(Profile::Full).await;
    let table: &[(u32, &[&str])] = &[
        (65001, &["consent"]),
        (50011, &["redirect URI", "http://localhost"]),
        (700016, &["no application", "client_id"]),
        (7000215, &["secret is wrong", "Value"]),
        (7000222, &["expired", "New client secret"]),
        (7000112, &["disabled"]),
        (70008, &["expired or was revoked", "mailsync connect work"]),
        (700082, &["expired or was revoked", "mailsync connect work"]),
        (50173, &["expired or was revoked", "mailsync connect work"]),
        (70043, &["sign-in frequency", "mailsync connect work"]),
        (50076, &["multi-factor"]),
        (50079, &["multi-factor"]),
        (53003, &["conditional-access"]),
        (50057, &["disabled"]),
    ];
    for (code, words) in table {
        env.idp.clear_token_failures();
        env.idp
            .fail_next_token_calls(5, TokenFailure::Aadsts(*code));
        let served = env.idp.token_failures_served();
        let run = env.run(&["test", "work"]).await;
        assert!(
            env.idp.token_failures_served() > served,
            "AADSTS{code} was never served: {run}"
        );
        assert_ne!(run.code, 0, "AADSTS{code}: {run}");
        let text = format!("{}{}", run.stdout, run.stderr);
        assert!(
            text.contains(&format!("AADSTS{code}")),
            "AADSTS{code} not named:\n{text}"
        );
        for w in *words {
            assert!(text.contains(w), "AADSTS{code}: {w:?} missing:\n{text}");
        }
        assert!(text.contains("✗ token"), "{text}");
    }
    env.idp.clear_token_failures();
    let run = env.run(&["test", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    for step in [
        "config",
        "DNS",
        "TCP",
        "TLS",
        "token",
        "capabilities",
        "AUTHENTICATE",
        "LIST",
        "folder Inbox",
        "folder Archive",
        "folder Deleted Items",
    ] {
        assert!(
            run.stdout.contains(&format!("✓ {step}")),
            "no ✓ {step}:\n{run}"
        );
    }
    assert!(run.stdout.contains("CN=localhost"), "{run}");
}

/// An IMAP login refused although the token is valid (app-only: the service principal
/// has no mailbox permission) is explained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_authenticate_failed_is_diagnosed() {
    let env = Env::start(Profile::Exchange).await;
    // A Microsoft account (endpoints pointed at the test environment), so the
    // diagnosis speaks of Exchange's service principals.
    // Sending goes nowhere: a closed port on this machine, not smtp.office365.com.
    let text = env
        .config_text("smtp_host = \"localhost\"\nsmtp_port = 9\n")
        .replace(
            "provider = \"custom\"",
            "provider = \"microsoft\"\ntenant = \"contoso.onmicrosoft.com\"",
        );
    std::fs::write(env.config_path(), text).unwrap();
    // The app is granted another mailbox: its token is refused for this one.
    env.idp.add_app(
        CLIENT_ID,
        Some(CLIENT_SECRET),
        Some("someone-else@example.com"),
    );
    let run = env.run(&["test", "work"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("✓ token") && run.stdout.contains("✗ AUTHENTICATE"),
        "{run}"
    );
    assert!(
        run.stdout.contains("New-ServicePrincipal") || run.stdout.contains("Add-MailboxPermission"),
        "{run}"
    );
    let sync = env.run(&["sync"]).await;
    assert_eq!(sync.code, 2, "{sync}");
    assert!(
        sync.stderr.contains("Add-MailboxPermission") || sync.stderr.contains("service principal"),
        "{sync}"
    );
}

/// Tokens and the client secret appear nowhere: not in trace logs, not in the SQLite
/// file or its WAL (only the sealed refresh and access tokens are there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_and_database() {
    let env = connected(Profile::Full).await;
    let mut cmd = env.command(&["sync", "work"]);
    cmd.env("RUST_LOG", "trace");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success());
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains("access token refreshed"),
        "the trace output does not show the refresh"
    );
    let secrets = env.idp.issued_secrets();
    assert!(secrets.len() >= 4, "{} secrets issued", secrets.len());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(env.state_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("state.sqlite")
        {
            files.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    assert!(!files.is_empty());
    for s in secrets.iter().map(String::as_str).chain([CLIENT_SECRET]) {
        assert!(!logs.contains(s), "a secret is in the trace output");
        for (name, bytes) in &files {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "a secret is in {name}"
            );
        }
    }
}

/// The device flow gives up cleanly when the person declines, or lets the code
/// expire: one line saying so, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_declined_or_expired() {
    let (env, before) = fresh(Profile::Full).await;
    let idp = env.idp.clone();
    let (code, out, err) = run_connect(&env, "device", move |line| {
        if line.contains("enter the code") {
            assert!(idp.decline_device_code(Some(line.rsplit(' ').next().unwrap())));
        }
    })
    .await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("declined"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_to_string(env.config_path()).unwrap(), before);

    let idp = env.idp.clone();
    let (code, out, err) = run_connect(&env, "device", move |line| {
        if line.contains("enter the code") {
            idp.expire_device_codes();
        }
    })
    .await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("expired"), "{err}");
    assert_eq!(std::fs::read_to_string(env.config_path()).unwrap(), before);
}

/// An account written by hand with no `[accounts.NAME.folders]` (a custom provider's
/// endpoints can only be set in the file): `sync` and `status` say that nothing is
/// mapped and how to map; `connect` adds the default mappings, as for a new account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_maps_the_defaults_for_an_account_written_without_mappings() {
    let env = Env::start(Profile::Exchange).await;
    let d = env.dir.path();
    let text = format!(
        "[daemon]\nstate_dir = {}\ncommand_timeout = \"20s\"\n\n{}",
        crate::support::toml_string(&d.join("state").display().to_string()),
        env.app_only_account("work", USER, CLIENT_ID, &env.mail_root())
    );
    std::fs::write(env.config_path(), &text).unwrap();
    let sync = env.run(&["sync"]).await;
    assert_eq!(
        sync.code, 1,
        "exit 0 with nothing synced looks like success: {sync}"
    );
    assert!(
        sync.stderr.contains("account work maps no folders")
            && sync.stderr.contains("mailsync folders work"),
        "{sync}"
    );
    let status = env.run(&["status", "work"]).await;
    assert!(
        status
            .stdout
            .contains("no folders mapped: `mailsync folders work`"),
        "{status}"
    );

    let run = env.run(&["connect", "work"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("with the mappings:"), "{run}");
    assert!(!run.stdout.contains("Kept the folder mappings"), "{run}");
    let after = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(
        after.starts_with(&text),
        "the rest of the file changed:\n{after}"
    );
    assert!(
        after.contains("[accounts.work.folders]\nInbox = \"INBOX\""),
        "{after}"
    );
    let sync = env.run(&["sync"]).await;
    assert_eq!(sync.code, 0, "{sync}");
    env.assert_in_sync().await;
}
