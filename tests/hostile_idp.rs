//! A broken or hostile identity provider, played by the test IdP answering raw token
//! replies: what the real binary does with `expires_in` as a string, 2^64-1 and
//! 10^12, with an unreadable reply, with a `*.localhost` token URL resolving off this
//! machine, and with a proxy in the environment. Each ends with exit 0, 1 or 2, one
//! line naming the cause, no panic, and no token or client secret in the output (at
//! trace level too), in `status` or in the state directory.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailsync_testenv::TokenFailure;
use mailsync_testenv::dovecot::Profile;

use crate::support::{CLIENT_ID, CLIENT_SECRET, Env, Run, USER};

/// Shaped like a token; must never be shown or stored in clear.
const HOSTILE_ACCESS: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.HOSTILE-ACCESS-TOKEN.sig";
const HOSTILE_REFRESH: &str = "0.AXEA-HOSTILE-REFRESH-TOKEN";

fn raw(body: String) -> TokenFailure {
    TokenFailure::Raw { status: 200, body }
}

/// A reply like Azure AD v1's: numbers as strings.
fn azure_v1_reply(access_token: &str, expires_in: &str) -> String {
    format!(
        r#"{{"token_type":"Bearer","expires_in":{expires_in},"ext_expires_in":{expires_in},"expires_on":"1700003599","resource":"https://outlook.office365.com","access_token":"{access_token}"}}"#
    )
}

/// Everything a user or a log collector could see after `runs`: their output, and
/// `status` and `status --json` now.
async fn visible(env: &Env, runs: &[&Run]) -> String {
    let mut text = String::new();
    for r in runs {
        text.push_str(&r.to_string());
    }
    for args in [&["status"][..], &["status", "--json"]] {
        let status = env.run(args).await;
        assert_eq!(status.code, 0, "status failed: {status}");
        text.push_str(&status.to_string());
    }
    text
}

/// No secret in `text` or in any file under the state directory.
fn assert_no_secret(env: &Env, text: &str, secrets: &[&str]) {
    assert!(!text.contains("panicked"), "a panic:\n{text}");
    for s in secrets {
        assert!(!text.contains(s), "a secret was shown:\n{text}");
    }
    for entry in std::fs::read_dir(env.state_dir()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "a secret is stored in clear in {}",
                path.display()
            );
        }
    }
}

/// The lines of `stderr` that say something (progress bars aside).
fn said(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| l.starts_with("mailsync"))
        .collect()
}

/// Azure AD v1 sends `expires_in` as a string of digits: taken as the number it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_as_a_string_of_digits_is_read() {
    let env = Env::start(Profile::Full).await;
    let token = env.idp.issue_access_token(CLIENT_ID, USER);
    env.idp
        .fail_next_token_calls(1, raw(azure_v1_reply(&token, "\"3599\"")));
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(env.idp.token_calls(), 1, "the reply was not used: {run}");
    assert_eq!(env.idp.token_failures_served(), 1, "{run}");
    let text = visible(&env, &[&run]).await;
    assert_no_secret(&env, &text, &[&token, CLIENT_SECRET]);
}

/// A reply that cannot be read is named by its field, never echoed: exit 2, one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_token_reply_is_named_not_echoed() {
    let env = Env::start(Profile::Full).await;
    let body = format!(
        r#"{{"token_type":"Bearer","expires_in":"about an hour","access_token":"{HOSTILE_ACCESS}","refresh_token":"{HOSTILE_REFRESH}"}}"#
    );
    env.idp.fail_next_token_calls(2, raw(body.clone()));
    let run = env.run(&["sync"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        said(&run),
        [
            "mailsync: work: account work: cannot use the identity provider's answer: the token endpoint's reply has `expires_in` as a string, expected a number"
        ],
        "{run}"
    );
    let mut trace = env.command(&["sync"]);
    trace.env("RUST_LOG", "trace");
    let trace = Run::from(
        tokio::task::spawn_blocking(move || trace.output().unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(trace.code, 2, "{trace}");
    assert!(trace.stderr.contains("TRACE"), "no trace output: {trace}");
    assert_eq!(
        env.idp.token_failures_served(),
        2,
        "each run was not given the reply"
    );
    let text = visible(&env, &[&run, &trace]).await;
    assert_no_secret(
        &env,
        &text,
        &[HOSTILE_ACCESS, HOSTILE_REFRESH, CLIENT_SECRET],
    );
}

/// `expires_in` of 2^64-1 and 10^12 from a refresh: the token serves, the lifetime
/// kept is at most a day, `status` shows it, and the next run uses the kept token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_expires_in_is_bounded() {
    let env = crate::connect::connected(Profile::Full).await;
    for expires_in in ["18446744073709551615", "1000000000000", "\"1000000000000\""] {
        // The kept access token goes with a new sign-in... or a refresh: forget it.
        forget_access_token(&env.state_dir());
        let token = env.idp.issue_access_token(CLIENT_ID, USER);
        env.idp
            .fail_next_token_calls(1, raw(azure_v1_reply(&token, expires_in)));
        let (calls, served) = (env.idp.token_calls(), env.idp.token_failures_served());
        let run = env.run(&["sync", "work"]).await;
        assert_eq!(run.code, 0, "expires_in {expires_in}: {run}");
        assert_eq!(env.idp.token_calls() - calls, 1, "{run}");
        assert_eq!(
            env.idp.token_failures_served() - served,
            1,
            "expires_in {expires_in}: the reply was not served: {run}"
        );

        let status = env.run(&["status", "--json", "work"]).await;
        assert_eq!(status.code, 0, "{status}");
        let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        let expires = v[0]["token"]["access_expires"].as_str().unwrap();
        let expires = humantime::parse_rfc3339(expires).unwrap();
        let lifetime = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        assert!(
            lifetime <= Duration::from_secs(24 * 3600),
            "expires_in {expires_in}: status says the token lives {lifetime:?}"
        );
        assert!(lifetime > Duration::from_secs(23 * 3600), "{lifetime:?}");

        let again = env.run(&["sync", "work"]).await;
        assert_eq!(again.code, 0, "{again}");
        assert_eq!(
            env.idp.token_calls() - calls,
            1,
            "the kept token was not used"
        );
        let text = visible(&env, &[&run, &again]).await;
        assert_no_secret(&env, &text, &[&token]);
    }
}

/// A database an older mailsync wrote after such a reply: `status` shows it without
/// a panic, and `sync` does not take the kept token to live for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_an_out_of_range_expiry_already_stored() {
    let env = crate::connect::connected(Profile::Full).await;
    let first = env.run(&["sync", "work"]).await;
    assert_eq!(first.code, 0, "{first}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for stored in [now + 1_000_000_000_000, i64::MAX, now - 1, i64::MIN] {
        {
            let db = rusqlite::Connection::open(env.state_dir().join("state.sqlite")).unwrap();
            db.execute(
                "UPDATE tokens SET access_expires = ?1",
                rusqlite::params![stored],
            )
            .unwrap();
            db.execute(
                "UPDATE access_tokens SET expires = ?1",
                rusqlite::params![stored],
            )
            .unwrap();
        }
        for args in [&["status"][..], &["status", "--json"]] {
            let status = env.run(args).await;
            assert_eq!(status.code, 0, "stored {stored}: {status}");
            assert!(status.stdout.contains("access"), "{status}");
        }
        let run = env.run(&["sync", "work"]).await;
        assert_eq!(run.code, 0, "stored {stored}: {run}");
    }
}

fn forget_access_token(state_dir: &Path) {
    let db = rusqlite::Connection::open(state_dir.join("state.sqlite")).unwrap();
    db.execute("DELETE FROM access_tokens", []).unwrap();
}

/// A TCP listener that keeps what it is sent, standing for a machine that must not
/// receive anything.
struct Sink {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    connections: Arc<Mutex<usize>>,
}

impl Sink {
    fn start(ip: IpAddr) -> Sink {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (r, c) = (received.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                *c.lock().unwrap() += 1;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    r.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        });
        Sink {
            addr,
            received,
            connections,
        }
    }

    fn assert_untouched(&self) {
        let received = String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned();
        assert!(
            !received.contains(CLIENT_SECRET),
            "the client secret went to {} in clear",
            self.addr
        );
        assert_eq!(
            *self.connections.lock().unwrap(),
            0,
            "a connection was made to {}",
            self.addr
        );
    }
}

/// An address of this machine that is not a loopback address, if it has one.
fn non_loopback_address() -> Option<IpAddr> {
    ["203.0.113.1:9", "198.51.100.1:9", "10.255.255.1:9"]
        .iter()
        .find_map(|target| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            s.connect(target).ok()?;
            let ip = s.local_addr().ok()?.ip();
            (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
        })
}

/// `mailsync ARGS` with `env`'s config in a private mount namespace whose /etc/hosts
/// is the system's plus `extra`; `None` if namespaces are unavailable and we are not
/// root (in CI, as root, they must work).
fn run_with_hosts(env: &Env, extra: &str, args: &[&str]) -> Option<Run> {
    let hosts = env.dir.path().join("hosts");
    let system = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    std::fs::write(&hosts, format!("{system}\n{extra}\n")).unwrap();
    let inner = env.command(args);
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "--",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/hosts && exec "$@""#,
    ])
    .arg(&hosts)
    .arg(inner.get_program())
    .args(inner.get_args())
    .env_remove("RUST_LOG")
    .env_remove("MAILSYNC_CONFIG")
    .env_remove("CREDENTIALS_DIRECTORY")
    .stdin(std::process::Stdio::null());
    let probe = Command::new("unshare")
        .args(["-m", "--", "true"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !probe {
        let root = std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        assert!(!root, "running as root, but `unshare -m` fails");
        eprintln!("SKIPPED: no private mount namespace (`unshare -m`) without root");
        return None;
    }
    Some(Run::from(c.output().unwrap()))
}

/// `http://idp.localhost` is allowed because the name says "this machine"; when it
/// resolves elsewhere, nothing is sent there, and the error says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_localhost_name_resolving_elsewhere_gets_nothing() {
    let Some(elsewhere) = non_loopback_address() else {
        eprintln!("SKIPPED: this machine has no non-loopback address to resolve to");
        return;
    };
    let env = Env::start(Profile::Full).await;
    let sink = Sink::start(elsewhere);
    let idp_port = env.idp.addr().port();
    let hosts = format!("{elsewhere} idp.localhost\n127.0.0.1 good.localhost");
    let with_token_url = |url: String| {
        let text = env
            .config_text("")
            .replace(&env.idp.token_url("contoso"), &url);
        std::fs::write(env.config_path(), text).unwrap();
    };

    // The control: a `localhost` name pointing at this machine works in the namespace.
    with_token_url(format!(
        "http://good.localhost:{idp_port}/contoso/oauth2/v2.0/token"
    ));
    let Some(good) = run_with_hosts(&env, &hosts, &["sync"]) else {
        return;
    };
    assert_eq!(good.code, 0, "{good}");

    with_token_url(format!(
        "http://idp.localhost:{}/contoso/oauth2/v2.0/token",
        sink.addr.port()
    ));
    let bad = run_with_hosts(&env, &hosts, &["sync"]).unwrap();
    assert_eq!(bad.code, 2, "{bad}");
    let lines = said(&bad);
    assert_eq!(lines.len(), 1, "{bad}");
    assert!(
        lines[0].contains(&format!("idp.localhost resolves to {elsewhere}")),
        "{bad}"
    );
    sink.assert_untouched();
    assert_no_secret(&env, &bad.to_string(), &[CLIENT_SECRET]);
}

/// IMAP with `tls = "plain"` is allowed towards loopback only, and that is checked on
/// the address connected to: a `*.localhost` name resolving elsewhere gets no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imap_localhost_name_resolving_elsewhere_gets_no_token() {
    let Some(elsewhere) = non_loopback_address() else {
        eprintln!("SKIPPED: this machine has no non-loopback address to resolve to");
        return;
    };
    let env = Env::start(Profile::Full).await;
    // What a server there would get: it greets like Dovecot and records every byte.
    let listener = TcpListener::bind((elsewhere, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.write_all(
                b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=PLAIN] ready\r\n",
            );
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                r.lock().unwrap().extend_from_slice(&buf[..n]);
                let _ = stream.write_all(b"* BYE no\r\n");
            }
        }
    });
    let with_imap = |host: &str, port: u16| {
        let text = env
            .config_text("")
            .replace(
                "imap_host = \"localhost\"",
                &format!("imap_host = \"{host}\""),
            )
            .replace(
                &format!("imap_port = {}", env.dovecot.imaps_port()),
                &format!("imap_port = {port}"),
            )
            .replace("tls = \"implicit\"", "tls = \"plain\"");
        std::fs::write(env.config_path(), text).unwrap();
    };
    let hosts = format!("{elsewhere} mail.localhost\n127.0.0.1 good.localhost");

    // The control: a `localhost` name for this machine works in plain text.
    with_imap("good.localhost", env.dovecot.imap_port());
    let Some(good) = run_with_hosts(&env, &hosts, &["sync"]) else {
        return;
    };
    assert_eq!(good.code, 0, "{good}");

    with_imap("mail.localhost", port);
    let bad = run_with_hosts(&env, &hosts, &["sync"]).unwrap();
    let got = received.lock().unwrap().clone();
    assert!(
        !String::from_utf8_lossy(&got).contains("AUTHENTICATE"),
        "the server elsewhere was sent a token: {:?}",
        String::from_utf8_lossy(&got)
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
    );
    assert_eq!(bad.code, 2, "{bad}");
    let lines = said(&bad);
    assert_eq!(lines.len(), 1, "{bad}");
    assert!(
        lines[0].contains(&format!("mail.localhost resolved to {elsewhere}"))
            && lines[0].contains("not a loopback address"),
        "{bad}"
    );
    assert_no_secret(&env, &bad.to_string(), &[CLIENT_SECRET]);
}

/// A token endpoint that answers with a reply far larger than any token reply is read
/// no further than 1 MiB: the run fails in one line naming it, in bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_token_reply_is_not_read_whole() {
    let env = Env::start(Profile::Full).await;
    let token = env.idp.issue_access_token(CLIENT_ID, USER);
    // 200 MB of JSON that would parse, if it were read: a long padding field.
    let body = format!(
        r#"{{"token_type":"Bearer","expires_in":3599,"padding":"{}","access_token":"{token}"}}"#,
        "x".repeat(200 << 20)
    );
    env.idp.fail_next_token_calls(10, raw(body));
    let mut cmd = Command::new("/usr/bin/time");
    let inner = env.command(&["sync"]);
    cmd.args(["-f", "peak-rss-kb %M"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_remove("RUST_LOG")
        .env_remove("MAILSYNC_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(std::process::Stdio::null());
    let run = Run::from(
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(run.code, 2, "{run}");
    assert!(
        env.idp.token_failures_served() >= 1,
        "the huge reply was never served"
    );
    let lines = said(&run);
    assert_eq!(lines.len(), 1, "{run}");
    assert!(lines[0].contains("larger than 1024 KiB"), "{run}");
    let rss_kb: u64 = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kb "))
        .and_then(|n| n.trim().parse().ok())
        .expect("GNU time's peak RSS");
    assert!(rss_kb < 64 * 1024, "peak RSS {rss_kb} KiB: {run}");
    assert_no_secret(&env, &run.to_string(), &[&token, CLIENT_SECRET]);
}

/// Plain http to the identity provider on this machine never goes through a proxy
/// from the environment: the proxy would get the client secret in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_never_goes_through_a_proxy() {
    let env = Env::start(Profile::Full).await;
    let proxy = Sink::start(IpAddr::from([127, 0, 0, 1]));
    let mut cmd = env.command(&["sync"]);
    let url = format!("http://{}", proxy.addr);
    cmd.env("HTTP_PROXY", &url)
        .env("http_proxy", &url)
        .env("ALL_PROXY", &url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let run = Run::from(
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{run}");
    proxy.assert_untouched();
}
