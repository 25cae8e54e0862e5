//! A TLS-terminating IMAP proxy in front of a test Dovecot that behaves like Exchange
//! Online when a test asks it to: it ends a session with `* BYE Session invalidated -
//! AccessTokenExpired` in the middle of a FETCH literal, between two FETCH responses or
//! in the middle of IDLE, and answers chosen commands with `NO Request is throttled.
//! Suggested Backoff Time: N milliseconds`. Everything else passes through, so the mail
//! and the sync's convergence are Dovecot's, not a script's.
//!
//! The client side is implicit TLS with the Dovecot's own certificate (same test CA);
//! the server side is Dovecot's plain port. The proxy reads both directions response
//! by response (literals included) and records, with the time, every connection,
//! command, tagged answer, throttled answer and BYE it sent, so a test can measure the
//! wait a client kept after a throttled answer. Tokens are recorded only as hashes.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What Exchange says when it ends a session whose access token expired.
pub const TOKEN_EXPIRED_BYE: &str = "* BYE Session invalidated - AccessTokenExpired\r\n";

/// How long a throttled answer is held back (see [`Fault::Throttle`]).
const THROTTLE_HOLD: Duration = Duration::from_millis(250);

/// A literal larger than this is not a test's mail: the proxy gives up on the session.
const MAX_LITERAL: usize = 64 << 20;

/// Something the proxy does once, at the first chance after it is armed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers the next command named `command` (`SELECT`, `EXAMINE`, `AUTHENTICATE`,
    /// `UID FETCH`…) with a throttled NO naming `backoff`. The command reaches Dovecot
    /// as something harmless in its place (a SELECT of a folder that does not exist,
    /// which leaves no folder selected as a failed SELECT must; otherwise NOOP), so the
    /// answers keep their order. The answer is held 250 ms, so that commands the client
    /// pipelined behind this one are seen before it.
    Throttle { command: String, backoff: Duration },
    /// Once `after_bodies` FETCH responses with a literal have passed, cuts the next one
    /// in the middle of its literal with the BYE and closes the connection.
    ByeMidLiteral { after_bodies: usize },
    /// Once `after_bodies` FETCH responses with a literal have passed, sends the BYE
    /// before the next FETCH response and closes the connection.
    ByeBetweenFetches { after_bodies: usize },
    /// Sends the BYE right after the server's continuation to IDLE and closes.
    ByeInIdle,
}

/// What happened on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    Connected,
    /// A command from the client: its tag and name (`UID FETCH`, upper case).
    Command {
        tag: String,
        name: String,
    },
    /// The hash of the access token an AUTHENTICATE presented (never the token).
    Token(u64),
    /// A tagged answer the client received: `OK`, `NO` or `BAD`.
    Answered {
        tag: String,
        command: String,
        status: String,
    },
    /// The proxy answered `command` with a throttled NO.
    Throttled {
        command: String,
        backoff: Duration,
    },
    /// The proxy sent the BYE for this fault and closed.
    Bye(Fault),
}

#[derive(Clone, Debug)]
pub struct Event {
    pub at: Instant,
    /// The connection, numbered from 0 in the order they were accepted.
    pub conn: usize,
    pub what: What,
}

type OnBye = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Shared {
    armed: Vec<Fault>,
    events: Vec<Event>,
    connections: usize,
    on_bye: Option<OnBye>,
    /// FETCH responses with a literal since the last BYE fault was armed.
    bodies: usize,
}

/// A running proxy; dropping it stops accepting and ends its connections.
pub struct ExchangeProxy {
    port: u16,
    shared: Arc<Mutex<Shared>>,
    accept: JoinHandle<()>,
}

impl ExchangeProxy {
    /// Listens on a free loopback port with implicit TLS, presenting the certificate
    /// in `tls_dir` (`cert.pem`, `key.pem`: a Dovecot's [`crate::Dovecot::dir`]), and
    /// forwards to `127.0.0.1:upstream_port`, a plain IMAP port.
    pub async fn start(tls_dir: &Path, upstream_port: u16) -> Result<ExchangeProxy> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        b.set_certificate_chain_file(tls_dir.join("cert.pem"))
            .context("proxy certificate")?;
        b.set_private_key_file(tls_dir.join("key.pem"), SslFiletype::PEM)
            .context("proxy key")?;
        let acceptor = b.build();
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let accept = tokio::spawn(accept_loop(
            listener,
            acceptor,
            upstream_port,
            shared.clone(),
        ));
        Ok(ExchangeProxy {
            port,
            shared,
            accept,
        })
    }

    /// The port clients connect to (implicit TLS).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Arms `fault`: it fires once, at its first chance.
    pub fn arm(&self, fault: Fault) {
        let mut s = self.lock();
        if !matches!(fault, Fault::Throttle { .. }) {
            s.bodies = 0;
        }
        s.armed.push(fault);
    }

    /// Faults armed and not fired yet.
    pub fn armed(&self) -> Vec<Fault> {
        self.lock().armed.clone()
    }

    /// Called at the moment a BYE is sent (before the connection closes): the test's
    /// identity provider expires the tokens there, as Exchange's BYE says they did.
    pub fn on_bye(&self, f: impl Fn() + Send + Sync + 'static) {
        self.lock().on_bye = Some(Arc::new(f));
    }

    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// When the proxy sent each throttled answer, and the wait it named.
    pub fn throttled(&self) -> Vec<(Instant, Duration)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.what {
                What::Throttled { backoff, .. } => Some((e.at, backoff)),
                _ => None,
            })
            .collect()
    }

    /// When each BYE went out.
    pub fn byes(&self) -> Vec<Instant> {
        self.events()
            .into_iter()
            .filter_map(|e| matches!(e.what, What::Bye(_)).then_some(e.at))
            .collect()
    }

    /// The client's first attempt after `since`: a new connection, or a command on any
    /// connection other than LOGOUT (leaving is not trying again).
    pub fn next_attempt_after(&self, since: Instant) -> Option<Event> {
        self.events().into_iter().find(|e| {
            e.at > since
                && match &e.what {
                    What::Connected => true,
                    What::Command { name, .. } => name != "LOGOUT",
                    _ => false,
                }
        })
    }

    /// The token hashes AUTHENTICATE presented, with when.
    pub fn tokens(&self) -> Vec<(Instant, u64)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.what {
                What::Token(h) => Some((e.at, h)),
                _ => None,
            })
            .collect()
    }

    /// Tagged answers to AUTHENTICATE: (when, status).
    pub fn logins(&self) -> Vec<(Instant, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.what {
                What::Answered {
                    command, status, ..
                } if command == "AUTHENTICATE" => Some((e.at, status)),
                _ => None,
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ExchangeProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn record(shared: &Mutex<Shared>, conn: usize, what: What) {
    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
    s.events.push(Event {
        at: Instant::now(),
        conn,
        what,
    });
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: SslAcceptor,
    upstream_port: u16,
    shared: Arc<Mutex<Shared>>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        let conn = {
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            s.connections += 1;
            s.connections - 1
        };
        record(&shared, conn, What::Connected);
        let shared = shared.clone();
        let ssl = Ssl::new(acceptor.context());
        // Held in the set: aborting the accept loop (the proxy dropped) ends them too.
        tasks.spawn(async move {
            let Ok(mut tls) = ssl.and_then(|ssl| tokio_openssl::SslStream::new(ssl, tcp)) else {
                return;
            };
            if Pin::new(&mut tls).accept().await.is_err() {
                return;
            }
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                return;
            };
            serve(tls, upstream, conn, shared).await;
        });
        while tasks.try_join_next().is_some() {}
    }
}

/// What the client side has said that the server side's answers depend on.
#[derive(Default)]
struct Conn {
    /// Command names by tag, until answered.
    commands: HashMap<String, String>,
    /// Tags whose answer becomes a throttled NO naming this wait.
    throttled: HashMap<String, Duration>,
    /// An IDLE is in progress (its continuation may carry a fault).
    idling: bool,
    /// The client side is closed: what the client sends goes nowhere.
    closed: bool,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    client: S,
    upstream: TcpStream,
    id: usize,
    shared: Arc<Mutex<Shared>>,
) {
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = upstream.into_split();
    let conn = Mutex::new(Conn::default());
    let commands = commands(
        BufReader::new(client_read),
        server_write,
        id,
        &shared,
        &conn,
    );
    tokio::pin!(commands);
    tokio::select! {
        _ = &mut commands => {}
        _ = answers(BufReader::new(server_read), client_write, id, &shared, &conn) => {
            // The server side ended (or a BYE did): what the client still sends is
            // read and dropped until it closes, so that closing is no reset, which
            // would discard the BYE in the client's receive buffer.
            if let Ok(mut c) = conn.lock() {
                c.closed = true;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut commands).await;
        }
    }
}

/// Reads one line and the literals it announces (`{n}` or `{n+}` at a line's end).
/// `None` at the end of input or on something that is not IMAP.
async fn read_unit<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Option<(Vec<u8>, Vec<Literal>)> {
    let mut unit = Vec::new();
    let mut literals = Vec::new();
    loop {
        let start = unit.len();
        match r.read_until(b'\n', &mut unit).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let Some(n) = literal_len(&unit[start..]) else {
            return Some((unit, literals));
        };
        if n > MAX_LITERAL {
            return None;
        }
        let at = unit.len();
        unit.resize(at + n, 0);
        tokio::io::AsyncReadExt::read_exact(r, &mut unit[at..])
            .await
            .ok()?;
        literals.push(Literal { at, len: n });
    }
}

/// Where a literal's bytes are in a unit.
#[derive(Clone, Copy)]
struct Literal {
    at: usize,
    len: usize,
}

/// The `n` of a line ending in `{n}\r\n` or `{n+}\r\n`.
fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n"))?;
    let line = line.strip_suffix(b"}")?;
    let line = line.strip_suffix(b"+").unwrap_or(line);
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

/// Client to server: records commands, swaps a throttled one for a harmless one.
async fn commands<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: BufReader<R>,
    mut to: W,
    id: usize,
    shared: &Mutex<Shared>,
    conn: &Mutex<Conn>,
) {
    let mut authenticating = false;
    while let Some((unit, _)) = read_unit(&mut from).await {
        if conn.lock().map(|c| c.closed).unwrap_or(true) {
            continue;
        }
        let line = String::from_utf8_lossy(&unit).into_owned();
        let words: Vec<&str> = line.split_whitespace().collect();
        let idling = conn.lock().map(|c| c.idling).unwrap_or(false);
        if idling && line.trim().eq_ignore_ascii_case("DONE") {
            if let Ok(mut c) = conn.lock() {
                c.idling = false;
            }
        } else if authenticating && words.len() <= 1 {
            // The SASL payload after a continuation, or the empty answer to an error
            // challenge.
            if let Some(token) = words.first().and_then(|p| token_hash(p)) {
                record(shared, id, What::Token(token));
            }
        } else if let [tag, name, rest @ ..] = words.as_slice() {
            let mut name = name.to_ascii_uppercase();
            if name == "UID"
                && let Some(sub) = rest.first()
            {
                name = format!("UID {}", sub.to_ascii_uppercase());
            }
            record(
                shared,
                id,
                What::Command {
                    tag: tag.to_string(),
                    name: name.clone(),
                },
            );
            authenticating = name == "AUTHENTICATE";
            if authenticating && let Some(token) = rest.get(1).and_then(|p| token_hash(p)) {
                record(shared, id, What::Token(token));
            }
            let throttle = {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                let found = s.armed.iter().position(|f| {
                    matches!(f, Fault::Throttle { command, .. } if command.eq_ignore_ascii_case(&name))
                });
                found.map(|i| s.armed.remove(i))
            };
            if let Ok(mut c) = conn.lock() {
                c.commands.insert(tag.to_string(), name.clone());
                c.idling = name == "IDLE";
                if let Some(Fault::Throttle { backoff, .. }) = &throttle {
                    c.throttled.insert(tag.to_string(), *backoff);
                }
            }
            if throttle.is_some() {
                authenticating = false;
                let stand_in = if name == "SELECT" || name == "EXAMINE" {
                    format!("{tag} EXAMINE \"exchange-proxy throttled\"\r\n")
                } else {
                    format!("{tag} NOOP\r\n")
                };
                if to.write_all(stand_in.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
        }
        if to.write_all(&unit).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// The hash of the token in an XOAUTH2 or OAUTHBEARER payload (base64).
fn token_hash(payload: &str) -> Option<u64> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .ok()?;
    let text = String::from_utf8_lossy(&decoded);
    let token = text
        .split('\x01')
        .find_map(|f| f.strip_prefix("auth=Bearer "))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    Some(h.finish())
}

/// Server to client: records tagged answers, rewrites throttled ones, fires the BYEs.
async fn answers<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: BufReader<R>,
    mut to: W,
    id: usize,
    shared: &Mutex<Shared>,
    conn: &Mutex<Conn>,
) {
    while let Some((unit, literals)) = read_unit(&mut from).await {
        let line = String::from_utf8_lossy(&unit[..unit.len().min(200)]).into_owned();
        let words: Vec<&str> = line.split_whitespace().collect();
        let is_body = words.first() == Some(&"*")
            && words
                .get(2)
                .is_some_and(|w| w.eq_ignore_ascii_case("FETCH"))
            && !literals.is_empty();
        let is_continuation = words.first() == Some(&"+");
        let idling = conn.lock().map(|c| c.idling).unwrap_or(false);
        // A BYE fault due here, and how much of this unit goes out before it.
        let fault = {
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            let bodies = s.bodies;
            let found = s.armed.iter().position(|f| match f {
                Fault::ByeMidLiteral { after_bodies } => is_body && bodies >= *after_bodies,
                Fault::ByeBetweenFetches { after_bodies } => is_body && bodies >= *after_bodies,
                Fault::ByeInIdle => is_continuation && idling,
                Fault::Throttle { .. } => false,
            });
            if is_body {
                s.bodies += 1;
            }
            found.map(|i| (s.armed.remove(i), s.on_bye.clone()))
        };
        if let Some((fault, on_bye)) = fault {
            let before = match fault {
                Fault::ByeMidLiteral { .. } => {
                    let l = literals[0];
                    &unit[..l.at + l.len / 2]
                }
                Fault::ByeBetweenFetches { .. } => &unit[..0],
                _ => &unit[..],
            };
            if let Some(f) = on_bye {
                f();
            }
            record(shared, id, What::Bye(fault));
            let _ = to.write_all(before).await;
            let _ = to.write_all(TOKEN_EXPIRED_BYE.as_bytes()).await;
            let _ = to.flush().await;
            let _ = to.shutdown().await;
            return;
        }
        let tagged = match words.as_slice() {
            [tag, status, ..] if *tag != "*" && *tag != "+" => Some((tag.to_string(), *status)),
            _ => None,
        };
        let mut out = unit.clone();
        if let Some((tag, status)) = tagged {
            let (command, throttled) = match conn.lock() {
                Ok(mut c) => (
                    c.commands.remove(&tag).unwrap_or_default(),
                    c.throttled.remove(&tag),
                ),
                Err(_) => (String::new(), None),
            };
            let status = match throttled {
                Some(backoff) => {
                    // Held a moment, like a busy server's answer: what the client
                    // pipelined behind the command arrives (and is recorded) before
                    // the answer, and is not taken for a retry.
                    tokio::time::sleep(THROTTLE_HOLD).await;
                    out = format!(
                        "{tag} NO Request is throttled. Suggested Backoff Time: {} milliseconds\r\n",
                        backoff.as_millis()
                    )
                    .into_bytes();
                    "NO".to_owned()
                }
                None => status.to_ascii_uppercase(),
            };
            if to.write_all(&out).await.is_err() || to.flush().await.is_err() {
                return;
            }
            if let Some(backoff) = throttled {
                record(
                    shared,
                    id,
                    What::Throttled {
                        command: command.clone(),
                        backoff,
                    },
                );
            }
            record(
                shared,
                id,
                What::Answered {
                    tag,
                    command,
                    status,
                },
            );
            continue;
        }
        if to.write_all(&out).await.is_err() || to.flush().await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_lengths_at_a_line_end() {
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {12}\r\n"), Some(12));
        assert_eq!(literal_len(b"a LOGIN {3+}\r\n"), Some(3));
        assert_eq!(literal_len(b"* 1 FETCH (FLAGS ())\r\n"), None);
        assert_eq!(literal_len(b"* OK {x}\r\n"), None);
    }

    #[test]
    fn tokens_are_found_in_xoauth2_payloads() {
        let p =
            base64::engine::general_purpose::STANDARD.encode("user=a@b\x01auth=Bearer tok\x01\x01");
        let q = base64::engine::general_purpose::STANDARD
            .encode("user=a@b\x01auth=Bearer other\x01\x01");
        assert!(token_hash(&p).is_some());
        assert_ne!(token_hash(&p), token_hash(&q));
        assert_eq!(token_hash("not base64!"), None);
    }
}
