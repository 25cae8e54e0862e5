//! A scripted IMAP server for hostile-server tests. By default it is a sane, minimal
//! server for one account on 127.0.0.1 (implicit TLS with a certificate from a test CA,
//! or plain text): any XOAUTH2 token logs in, and INBOX plus the folders a test adds
//! hold in-memory messages. A test replaces the answer to any command, or the greeting,
//! with a hook returning arbitrary bytes, possibly endless. Every byte each connection
//! sent, every command and every XOAUTH2 payload is recorded, so a test can check where
//! a token went or whether a command was injected.
//!
//! ```no_run
//! use mailsync_testenv::hostile::{HostileOptions, HostileServer, Reply};
//! let server = HostileServer::start(HostileOptions::default()).unwrap();
//! server.append("INBOX", b"Subject: hi\r\n\r\nhello\r\n".to_vec(), &["\\Seen"]);
//! server.set_hook(|cmd, _conn| {
//!     (cmd.name == "SELECT").then(|| Reply::endless("* OK still here"))
//! });
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use base64::Engine as _;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};

/// What the server offers unless told otherwise: no CONDSTORE, no QRESYNC (Exchange).
pub const BASIC_CAPABILITIES: &[&str] = &[
    "IMAP4rev1",
    "AUTH=XOAUTH2",
    "SASL-IR",
    "ENABLE",
    "IDLE",
    "UIDPLUS",
    "LITERAL+",
];

/// The INTERNALDATE of every message.
pub const INTERNALDATE: &str = "01-Jan-2024 00:00:00 +0000";

/// How the server is reached and what it advertises.
#[derive(Clone, Debug)]
pub struct HostileOptions {
    /// Implicit TLS (the default) or plain text.
    pub tls: bool,
    /// The capability list of the greeting and CAPABILITY.
    pub capabilities: Vec<String>,
}

impl Default for HostileOptions {
    fn default() -> Self {
        Self {
            tls: true,
            capabilities: BASIC_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        }
    }
}

impl HostileOptions {
    pub fn plain(mut self) -> Self {
        self.tls = false;
        self
    }
    /// Adds capabilities, e.g. `["CONDSTORE", "QRESYNC"]`.
    pub fn with(mut self, capabilities: &[&str]) -> Self {
        self.capabilities
            .extend(capabilities.iter().map(|c| c.to_string()));
        self
    }
    fn has(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case(capability))
    }
}

/// A message body: bytes, or `n` bytes generated on the fly (never held in memory).
#[derive(Clone, Debug)]
pub enum Body {
    Bytes(Arc<Vec<u8>>),
    Generated(u64),
}

impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Body {
        Body::Bytes(Arc::new(b))
    }
}

const CHUNK: usize = 64 * 1024;
const PATTERN: &[u8] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n";

impl Body {
    fn generated_header(len: u64) -> Vec<u8> {
        format!("Message-ID: <generated-{len}@hostile.test>\r\nSubject: {len} bytes\r\n\r\n")
            .into_bytes()
    }
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Generated(n) => *n,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The body in chunks of at most 64 KiB.
    pub fn chunks(&self) -> Box<dyn Iterator<Item = Vec<u8>> + Send> {
        match self {
            Body::Bytes(b) => {
                let b = b.clone();
                let n = b.len().div_ceil(CHUNK);
                Box::new((0..n).map(move |i| b[i * CHUNK..((i + 1) * CHUNK).min(b.len())].to_vec()))
            }
            Body::Generated(len) => {
                let (len, header) = (*len, Body::generated_header(*len));
                let h = header.len() as u64;
                // The pattern repeated, long enough to slice any chunk from.
                let block = PATTERN.repeat(CHUNK / PATTERN.len() + 2);
                let chunks = len.div_ceil(CHUNK as u64);
                Box::new((0..chunks).map(move |i| {
                    let (start, end) = (i * CHUNK as u64, ((i + 1) * CHUNK as u64).min(len));
                    let mut out = Vec::with_capacity((end - start) as usize);
                    let mut p = start;
                    while p < end.min(h) {
                        out.push(header[p as usize]);
                        p += 1;
                    }
                    if p < end {
                        let at = ((p - h) % PATTERN.len() as u64) as usize;
                        out.extend_from_slice(&block[at..at + (end - p) as usize]);
                    }
                    out
                }))
            }
        }
    }
    /// What `BODY[HEADER.FIELDS (MESSAGE-ID)]` returns: the field(s) and a blank line.
    pub fn message_id_fields(&self) -> Vec<u8> {
        let head = match self {
            Body::Bytes(b) => b.to_vec(),
            Body::Generated(n) => Body::generated_header(*n),
        };
        let mut out = Vec::new();
        let mut in_field = false;
        for line in head.split_inclusive(|b| *b == b'\n') {
            if line == b"\r\n" || line == b"\n" {
                break;
            }
            if line.starts_with(b" ") || line.starts_with(b"\t") {
                if in_field {
                    out.extend_from_slice(line);
                }
                continue;
            }
            in_field = line.len() >= 11 && line[..11].eq_ignore_ascii_case(b"message-id:");
            if in_field {
                out.extend_from_slice(line);
            }
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A message on the server. Flags are raw wire bytes (a test may make them invalid).
#[derive(Clone, Debug)]
pub struct Message {
    pub uid: u32,
    pub flags: Vec<Vec<u8>>,
    pub body: Body,
    pub modseq: u64,
}

impl Message {
    /// The flags as text (lossy), e.g. for `maildir_letters`.
    pub fn flag_strings(&self) -> Vec<String> {
        self.flags
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Mailbox {
    name: String,
    attributes: Vec<String>,
    uidvalidity: u32,
    uidnext: u32,
    highestmodseq: u64,
    messages: Vec<Message>,
    /// (uid, modseq of the expunge), for QRESYNC's VANISHED (EARLIER).
    expunged: Vec<(u32, u64)>,
}

/// A command as the server read it. `name` is upper-case, `UID FETCH` for UID
/// commands; the greeting is asked for as `GREETING` with tag `*`. For AUTHENTICATE,
/// `args` always ends with the initial response (read after a continuation without
/// SASL-IR).
#[derive(Clone, Debug)]
pub struct Command {
    pub tag: String,
    pub name: String,
    pub args: String,
    /// The command's bytes, literals included, without the final CRLF.
    pub raw: Vec<u8>,
}

impl Command {
    /// The decoded SASL initial response of an AUTHENTICATE (`user=…\x01auth=Bearer …`).
    pub fn sasl_payload(&self) -> Option<String> {
        let b64 = self.args.split_whitespace().nth(1)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// A connection's state, as a hook sees it.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    /// 0 for the first connection the server accepted, and so on.
    pub id: usize,
    pub authenticated: bool,
    pub selected: Option<String>,
    /// Names of the commands this connection sent before this one.
    pub history: Vec<String>,
}

/// What the server sends instead of (or into) its default answer.
pub enum Reply {
    /// These bytes instead of the default answer; then the next command is read.
    Send(Vec<u8>),
    /// Every chunk the iterator yields (it may never end), then the next command.
    Stream(Box<dyn Iterator<Item = Vec<u8>> + Send>),
    /// The default answer with these bytes just before its tagged completion.
    Inject(Vec<u8>),
    /// These bytes, then nothing ever again (the connection stays open).
    Silence(Vec<u8>),
    /// These bytes, then the connection is closed.
    Close(Vec<u8>),
}

impl Reply {
    /// `line` (CRLF added) repeated forever, sent in 64 KiB writes.
    pub fn endless(line: &str) -> Reply {
        let one = format!("{line}\r\n");
        let chunk = one.repeat((CHUNK / one.len()).max(1)).into_bytes();
        Reply::Stream(Box::new(std::iter::repeat(chunk)))
    }
    /// The lines (CRLF added) of an iterator, which may be endless, batched into 64 KiB
    /// writes.
    pub fn lines(lines: impl Iterator<Item = String> + Send + 'static) -> Reply {
        let mut lines = lines.peekable();
        Reply::Stream(Box::new(std::iter::from_fn(move || {
            let mut chunk = Vec::with_capacity(CHUNK);
            while chunk.len() < CHUNK
                && let Some(l) = lines.next()
            {
                chunk.extend_from_slice(l.as_bytes());
                chunk.extend_from_slice(b"\r\n");
            }
            (!chunk.is_empty()).then_some(chunk)
        })))
    }
}

/// A hook: `Some(reply)` to misbehave on this command, `None` for the default answer.
pub type Hook = Arc<dyn Fn(&Command, &Conn) -> Option<Reply> + Send + Sync>;

struct Shared {
    options: HostileOptions,
    hook: Option<Hook>,
    mailboxes: Vec<Mailbox>,
    received: Vec<Vec<u8>>,
    commands: Vec<(usize, Command)>,
    payloads: Vec<String>,
}

/// The running server; stops when dropped.
pub struct HostileServer {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    options: HostileOptions,
    shared: Arc<Mutex<Shared>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl HostileServer {
    /// Starts on 127.0.0.1 (any free port), on its own thread and runtime, so it answers
    /// while a test blocks on a child process.
    pub fn start(options: HostileOptions) -> Result<HostileServer> {
        let dir = tempfile::tempdir()?;
        crate::dovecot::tls::write_tls_files(dir.path())?;
        let acceptor = if options.tls {
            let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
            b.set_certificate_chain_file(dir.path().join("cert.pem"))?;
            b.set_private_key_file(dir.path().join("key.pem"), SslFiletype::PEM)?;
            Some(b.build())
        } else {
            None
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let inbox = Mailbox {
            name: "INBOX".into(),
            attributes: Vec::new(),
            uidvalidity: 1_700_000_000,
            uidnext: 1,
            highestmodseq: 1,
            messages: Vec::new(),
            expunged: Vec::new(),
        };
        let shared = Arc::new(Mutex::new(Shared {
            options: options.clone(),
            hook: None,
            mailboxes: vec![inbox],
            received: Vec::new(),
            commands: Vec::new(),
            payloads: Vec::new(),
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("mailsync-testenv-hostile".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("hostile server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    tokio::select! {
                        _ = accept_loop(listener, acceptor, s) => {}
                        _ = stopped => {}
                    }
                });
                rt.shutdown_background();
            })
            .context("spawn hostile server thread")?;
        Ok(HostileServer {
            addr,
            dir,
            options,
            shared,
            _stop: stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn tls(&self) -> bool {
        self.options.tls
    }
    /// The CA that signed the server's certificate (`CN=localhost`, IP 127.0.0.1).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the hook; it sees every command of every connection from now on.
    pub fn set_hook(
        &self,
        hook: impl Fn(&Command, &Conn) -> Option<Reply> + Send + Sync + 'static,
    ) {
        self.lock().hook = Some(Arc::new(hook));
    }
    /// Back to sane behaviour.
    pub fn clear_hook(&self) {
        self.lock().hook = None;
    }

    /// Adds a folder (a name as LIST shows it, e.g. with `\Archive`).
    pub fn add_folder(&self, name: &str, attributes: &[&str]) {
        let mut s = self.lock();
        let uidvalidity = 1_700_000_001 + s.mailboxes.len() as u32;
        s.mailboxes.push(Mailbox {
            name: name.into(),
            attributes: attributes.iter().map(|a| a.to_string()).collect(),
            uidvalidity,
            uidnext: 1,
            highestmodseq: 1,
            messages: Vec::new(),
            expunged: Vec::new(),
        });
    }
    fn with_folder<T>(&self, folder: &str, f: impl FnOnce(&mut Mailbox) -> T) -> T {
        let mut s = self.lock();
        let m = s.mailboxes.iter_mut().find(|m| m.name == folder);
        f(m.unwrap_or_else(|| panic!("no folder {folder:?} on the hostile server")))
    }
    /// Appends a message with the next UID; returns the UID.
    pub fn append(&self, folder: &str, body: impl Into<Body>, flags: &[&str]) -> u32 {
        let uid = self.with_folder(folder, |m| m.uidnext);
        self.append_uid(folder, uid, body, flags);
        uid
    }
    /// Appends a message with the given UID (even an invalid one, such as 0).
    pub fn append_uid(&self, folder: &str, uid: u32, body: impl Into<Body>, flags: &[&str]) {
        let body = body.into();
        self.with_folder(folder, |m| {
            m.highestmodseq += 1;
            m.messages.push(Message {
                uid,
                flags: flags.iter().map(|f| f.as_bytes().to_vec()).collect(),
                body,
                modseq: m.highestmodseq,
            });
            m.uidnext = m.uidnext.max(uid.saturating_add(1));
        })
    }
    /// Sets a message's flags (raw bytes, may be invalid) and bumps its mod-sequence.
    pub fn set_flags(&self, folder: &str, uid: u32, flags: &[&[u8]]) {
        self.with_folder(folder, |m| {
            m.highestmodseq += 1;
            let modseq = m.highestmodseq;
            let msg = m
                .messages
                .iter_mut()
                .find(|x| x.uid == uid)
                .expect("no such uid");
            msg.flags = flags.iter().map(|f| f.to_vec()).collect();
            msg.modseq = modseq;
        })
    }
    pub fn expunge(&self, folder: &str, uid: u32) {
        self.with_folder(folder, |m| {
            m.highestmodseq += 1;
            m.messages.retain(|x| x.uid != uid);
            m.expunged.push((uid, m.highestmodseq));
        })
    }
    pub fn set_uidvalidity(&self, folder: &str, uidvalidity: u32) {
        self.with_folder(folder, |m| m.uidvalidity = uidvalidity)
    }
    pub fn messages(&self, folder: &str) -> Vec<Message> {
        self.with_folder(folder, |m| m.messages.clone())
    }

    /// Every byte each connection sent, in order of connection.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.lock().received.clone()
    }
    /// Every command read, with its connection's id.
    pub fn commands(&self) -> Vec<(usize, Command)> {
        self.lock().commands.clone()
    }
    /// Decoded XOAUTH2 payloads of every AUTHENTICATE, e.g. `user=…\x01auth=Bearer …`.
    pub fn auth_payloads(&self) -> Vec<String> {
        self.lock().payloads.clone()
    }
    /// The bearer tokens the client presented.
    pub fn tokens(&self) -> Vec<String> {
        self.auth_payloads()
            .iter()
            .filter_map(|p| p.split("auth=Bearer ").nth(1))
            .map(|t| t.trim_end_matches('\x01').to_owned())
            .collect()
    }
    pub fn connections(&self) -> usize {
        self.lock().received.len()
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: Option<SslAcceptor>,
    shared: Arc<Mutex<Shared>>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let id = {
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            s.received.push(Vec::new());
            s.received.len() - 1
        };
        let shared = shared.clone();
        let ssl = acceptor.as_ref().map(|a| Ssl::new(a.context()));
        tokio::spawn(async move {
            match ssl {
                None => serve(tcp, id, shared).await,
                Some(ssl) => {
                    let Ok(mut tls) = ssl.and_then(|ssl| tokio_openssl::SslStream::new(ssl, tcp))
                    else {
                        return;
                    };
                    if Pin::new(&mut tls).accept().await.is_ok() {
                        serve(tls, id, shared).await;
                    }
                }
            }
        });
    }
}

/// What to do after an answer.
enum After {
    Next,
    Silence,
    Close,
}

type Chunks = Box<dyn Iterator<Item = Vec<u8>> + Send>;

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    id: usize,
    shared: Arc<Mutex<Shared>>,
) {
    let (r, w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut w = BufWriter::with_capacity(CHUNK, w);
    let mut conn = Conn {
        id,
        ..Conn::default()
    };
    let lock = || shared.lock().unwrap_or_else(|e| e.into_inner());
    let mut command = Command {
        tag: "*".into(),
        name: "GREETING".into(),
        args: String::new(),
        raw: Vec::new(),
    };
    loop {
        if command.name == "AUTHENTICATE" && command.args.split_whitespace().nth(1).is_none() {
            // No SASL-IR: the payload comes after a continuation.
            if w.write_all(b"+ \r\n").await.is_err() || w.flush().await.is_err() {
                return;
            }
            let Some(line) = read_command(&mut r, &mut w, id, &shared).await else {
                return;
            };
            command.args = format!(
                "{} {}",
                command.args.trim(),
                String::from_utf8_lossy(&line).trim()
            );
        }
        if command.name == "AUTHENTICATE"
            && let Some(p) = command.sasl_payload()
        {
            lock().payloads.push(p);
        }
        let hook = lock().hook.clone();
        let reply = hook.and_then(|h| h(&command, &conn));
        let (chunks, after): (Chunks, After) = match reply {
            Some(Reply::Send(b)) => (Box::new(std::iter::once(b)), After::Next),
            Some(Reply::Stream(s)) => (s, After::Next),
            Some(Reply::Silence(b)) => (Box::new(std::iter::once(b)), After::Silence),
            Some(Reply::Close(b)) => (Box::new(std::iter::once(b)), After::Close),
            Some(Reply::Inject(b)) => {
                let (untagged, tagged, after) = answer(&command, &mut conn, &lock());
                (Box::new(untagged.chain([b, tagged])), after)
            }
            None => {
                let (untagged, tagged, after) = answer(&command, &mut conn, &lock());
                (Box::new(untagged.chain([tagged])), after)
            }
        };
        for chunk in chunks {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
        if command.name == "IDLE" && matches!(after, After::Next) {
            // The default IDLE waits for DONE, then completes.
            if read_command(&mut r, &mut w, id, &shared).await.is_none() {
                return;
            }
            let done = format!("{} OK IDLE terminated\r\n", command.tag);
            if w.write_all(done.as_bytes()).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
        match after {
            After::Next => {}
            After::Close => return,
            After::Silence => {
                // Read (and record) whatever comes, answer nothing, until the client leaves.
                while read_command(&mut r, &mut w, id, &shared).await.is_some() {}
                return;
            }
        }
        conn.history.push(command.name.clone());
        let Some(raw) = read_command(&mut r, &mut w, id, &shared).await else {
            return;
        };
        command = parse_command(raw);
        lock().commands.push((id, command.clone()));
    }
}

/// Reads one command line (with any literals in it), recording the bytes; `None` at
/// the end of the connection. A synchronizing literal gets its continuation.
async fn read_command<R, W>(
    r: &mut BufReader<R>,
    w: &mut W,
    id: usize,
    shared: &Mutex<Shared>,
) -> Option<Vec<u8>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        shared.lock().unwrap_or_else(|e| e.into_inner()).received[id].extend_from_slice(&line);
        out.extend_from_slice(&line);
        let Some((n, sync)) = literal_at_end(&line) else {
            while out.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                out.pop();
            }
            return Some(out);
        };
        if sync {
            w.write_all(b"+ go ahead\r\n").await.ok()?;
            w.flush().await.ok()?;
        }
        let mut data = vec![0; n];
        r.read_exact(&mut data).await.ok()?;
        shared.lock().unwrap_or_else(|e| e.into_inner()).received[id].extend_from_slice(&data);
        out.extend_from_slice(&data);
    }
}

/// `{n}` or `{n+}` ending a line: (n, synchronizing).
fn literal_at_end(line: &[u8]) -> Option<(usize, bool)> {
    let line = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n"))?;
    let line = line.strip_suffix(b"}")?;
    let open = line.iter().rposition(|b| *b == b'{')?;
    let inner = std::str::from_utf8(&line[open + 1..]).ok()?;
    let (digits, sync) = match inner.strip_suffix('+') {
        Some(d) => (d, false),
        None => (inner, true),
    };
    Some((digits.parse().ok().filter(|n| *n <= 1 << 20)?, sync))
}

fn parse_command(raw: Vec<u8>) -> Command {
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut words = text.splitn(3, ' ');
    let tag = words.next().unwrap_or("").to_owned();
    let mut name = words.next().unwrap_or("").to_ascii_uppercase();
    let mut args = words.next().unwrap_or("").to_owned();
    if name == "UID" {
        let (second, rest) = args.split_once(' ').unwrap_or((&args, ""));
        name = format!("UID {}", second.to_ascii_uppercase());
        args = rest.to_owned();
    }
    Command {
        tag,
        name,
        args,
        raw,
    }
}

/// A mailbox name at the start of `s` (quoted, literal or atom) and the rest.
fn mailbox_arg(s: &[u8]) -> (Vec<u8>, &[u8]) {
    if let Some(rest) = s.strip_prefix(b"\"") {
        let mut name = Vec::new();
        let mut i = 0;
        while i < rest.len() && rest[i] != b'"' {
            if rest[i] == b'\\' {
                i += 1;
            }
            name.extend(rest.get(i));
            i += 1;
        }
        return (name, rest.get(i + 1..).unwrap_or_default());
    }
    if s.starts_with(b"{")
        && let Some(close) = s.iter().position(|b| *b == b'}')
        && let Some(n) = std::str::from_utf8(&s[1..close])
            .ok()
            .and_then(|d| d.trim_end_matches('+').parse::<usize>().ok())
    {
        let start = (close + 3).min(s.len());
        let end = (start + n).min(s.len());
        return (s[start..end].to_vec(), &s[end..]);
    }
    let end = s.iter().position(|b| *b == b' ').unwrap_or(s.len());
    (s[..end].to_vec(), &s[end..])
}

/// A name as LIST sends it: quoted when it can be, a literal otherwise.
fn wire_name(name: &str) -> String {
    if name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        format!("\"{name}\"")
    } else {
        format!("{{{}}}\r\n{name}", name.len())
    }
}

/// Is `uid` in the set (`1:*`, `3,5:9`)? `*` is the highest UID, `max`.
fn in_set(set: &str, uid: u32, max: u32) -> bool {
    let num = |s: &str| {
        if s == "*" {
            Some(max)
        } else {
            s.parse::<u32>().ok()
        }
    };
    set.split(',').any(|part| {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        match (num(a), num(b)) {
            (Some(a), Some(b)) => (a.min(b)..=a.max(b)).contains(&uid),
            _ => false,
        }
    })
}

/// The default answer: untagged data (streamed), the tagged line, and what next.
fn answer(cmd: &Command, conn: &mut Conn, shared: &Shared) -> (Chunks, Vec<u8>, After) {
    let caps = shared.options.capabilities.join(" ");
    let tag = &cmd.tag;
    let ok = |text: &str| format!("{tag} OK {text}\r\n").into_bytes();
    let none = || -> Chunks { Box::new(std::iter::empty()) };
    let lines = |l: Vec<String>| -> Chunks { Box::new(std::iter::once(l.concat().into_bytes())) };
    let args = cmd.args.as_bytes();
    match cmd.name.as_str() {
        "GREETING" => (
            none(),
            format!("* OK [CAPABILITY {caps}] hostile ready\r\n").into_bytes(),
            After::Next,
        ),
        "CAPABILITY" => (
            lines(vec![format!("* CAPABILITY {caps}\r\n")]),
            ok("CAPABILITY completed"),
            After::Next,
        ),
        "NOOP" | "CHECK" | "STORE" | "UID STORE" | "EXPUNGE" | "UID EXPUNGE" => {
            (none(), ok("completed"), After::Next)
        }
        "CLOSE" | "UNSELECT" => {
            conn.selected = None;
            (none(), ok("completed"), After::Next)
        }
        "LOGOUT" => (
            lines(vec!["* BYE logging out\r\n".into()]),
            ok("LOGOUT completed"),
            After::Close,
        ),
        "AUTHENTICATE" if cmd.args.to_ascii_uppercase().starts_with("XOAUTH2 ") => {
            conn.authenticated = true;
            (none(), ok("AUTHENTICATE completed"), After::Next)
        }
        "AUTHENTICATE" => (
            none(),
            format!("{tag} NO unsupported mechanism\r\n").into_bytes(),
            After::Next,
        ),
        "ENABLE" => {
            let enabled: Vec<&str> = cmd
                .args
                .split_whitespace()
                .filter(|e| shared.options.has(e))
                .collect();
            (
                lines(vec![format!("* ENABLED {}\r\n", enabled.join(" "))]),
                ok("ENABLE completed"),
                After::Next,
            )
        }
        "IDLE" => (none(), b"+ idling\r\n".to_vec(), After::Next),
        "LIST" => {
            let l = shared
                .mailboxes
                .iter()
                .map(|m| {
                    format!(
                        "* LIST ({}) \"/\" {}\r\n",
                        m.attributes.join(" "),
                        wire_name(&m.name)
                    )
                })
                .collect();
            (lines(l), ok("LIST completed"), After::Next)
        }
        "STATUS" | "SELECT" | "EXAMINE" => {
            let (name, rest) = mailbox_arg(args);
            let Some(m) = shared.mailboxes.iter().find(|m| m.name.as_bytes() == name) else {
                return (
                    none(),
                    format!("{tag} NO [NONEXISTENT] Mailbox doesn't exist\r\n").into_bytes(),
                    After::Next,
                );
            };
            let modseqs = shared.options.has("CONDSTORE") || shared.options.has("QRESYNC");
            if cmd.name == "STATUS" {
                let ms = if modseqs {
                    format!(" HIGHESTMODSEQ {}", m.highestmodseq)
                } else {
                    String::new()
                };
                let l = format!(
                    "* STATUS {} (MESSAGES {} UIDNEXT {} UIDVALIDITY {}{ms})\r\n",
                    wire_name(&m.name),
                    m.messages.len(),
                    m.uidnext,
                    m.uidvalidity
                );
                return (lines(vec![l]), ok("STATUS completed"), After::Next);
            }
            conn.selected = Some(m.name.clone());
            let mut l = vec![
                "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n".to_owned(),
                "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] ok\r\n"
                    .to_owned(),
                format!("* {} EXISTS\r\n* 0 RECENT\r\n", m.messages.len()),
                format!("* OK [UIDVALIDITY {}] ok\r\n", m.uidvalidity),
                format!("* OK [UIDNEXT {}] ok\r\n", m.uidnext),
            ];
            if modseqs {
                l.push(format!("* OK [HIGHESTMODSEQ {}] ok\r\n", m.highestmodseq));
            }
            // SELECT "x" (QRESYNC (uidvalidity modseq ...))
            let rest = String::from_utf8_lossy(rest).to_ascii_uppercase();
            if let Some(q) = rest.split("(QRESYNC (").nth(1)
                && shared.options.has("QRESYNC")
            {
                let mut nums = q.split([' ', ')']).filter_map(|n| n.parse::<u64>().ok());
                if let (Some(v), Some(since)) = (nums.next(), nums.next())
                    && v == u64::from(m.uidvalidity)
                {
                    let gone: Vec<String> = m
                        .expunged
                        .iter()
                        .filter(|(_, ms)| *ms > since)
                        .map(|(u, _)| u.to_string())
                        .collect();
                    if !gone.is_empty() {
                        l.push(format!("* VANISHED (EARLIER) {}\r\n", gone.join(",")));
                    }
                    for (i, msg) in m
                        .messages
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| x.modseq > since)
                    {
                        l.push(format!(
                            "* {} FETCH (UID {} FLAGS ({}) MODSEQ ({}))\r\n",
                            i + 1,
                            msg.uid,
                            String::from_utf8_lossy(&msg.flags.join(&b' ')),
                            msg.modseq
                        ));
                    }
                }
            }
            let mode = if cmd.name == "EXAMINE" {
                "READ-ONLY"
            } else {
                "READ-WRITE"
            };
            (
                lines(l),
                ok(&format!("[{mode}] {} completed", cmd.name)),
                After::Next,
            )
        }
        "UID SEARCH" | "SEARCH" | "UID FETCH" | "FETCH" => {
            let Some(m) = conn
                .selected
                .as_ref()
                .and_then(|s| shared.mailboxes.iter().find(|m| &m.name == s))
            else {
                return (
                    none(),
                    format!("{tag} BAD no folder selected\r\n").into_bytes(),
                    After::Next,
                );
            };
            if cmd.name.ends_with("SEARCH") {
                let uids: Vec<String> = m.messages.iter().map(|x| x.uid.to_string()).collect();
                let l = format!("* SEARCH {}\r\n", uids.join(" "));
                return (
                    lines(vec![l.replace("SEARCH \r", "SEARCH\r")]),
                    ok("SEARCH completed"),
                    After::Next,
                );
            }
            (fetch(cmd, m), ok("FETCH completed"), After::Next)
        }
        _ => (
            none(),
            format!("{tag} BAD unknown command\r\n").into_bytes(),
            After::Next,
        ),
    }
}

/// The FETCH responses for a (UID) FETCH, bodies streamed.
fn fetch(cmd: &Command, m: &Mailbox) -> Chunks {
    let (set, items) = cmd.args.split_once(' ').unwrap_or((&cmd.args, ""));
    let items = items.to_ascii_uppercase();
    let by_uid = cmd.name == "UID FETCH";
    let changed_since: Option<u64> = items
        .split("CHANGEDSINCE ")
        .nth(1)
        .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    let max = if by_uid {
        m.messages.iter().map(|x| x.uid).max().unwrap_or(0)
    } else {
        m.messages.len() as u32
    };
    let selected: Vec<(usize, Message)> = m
        .messages
        .iter()
        .enumerate()
        .filter(|(i, x)| in_set(set, if by_uid { x.uid } else { *i as u32 + 1 }, max))
        .filter(|(_, x)| changed_since.is_none_or(|c| x.modseq > c))
        .map(|(i, x)| (i, x.clone()))
        .collect();
    let want = |s: &str| items.contains(s);
    let modseq = want("MODSEQ") || changed_since.is_some();
    let (flags, size, date) = (want("FLAGS"), want("RFC822.SIZE"), want("INTERNALDATE"));
    let header = want("HEADER.FIELDS");
    let body = want("BODY.PEEK[]") || want("BODY[]");
    Box::new(selected.into_iter().flat_map(move |(i, x)| {
        let mut head = format!("* {} FETCH (UID {}", i + 1, x.uid).into_bytes();
        if flags {
            head.extend_from_slice(b" FLAGS (");
            head.extend_from_slice(&x.flags.join(&b' '));
            head.extend_from_slice(b")");
        }
        if modseq {
            head.extend_from_slice(format!(" MODSEQ ({})", x.modseq).as_bytes());
        }
        if size {
            head.extend_from_slice(format!(" RFC822.SIZE {}", x.body.len()).as_bytes());
        }
        if date {
            head.extend_from_slice(format!(" INTERNALDATE \"{INTERNALDATE}\"").as_bytes());
        }
        if header {
            let h = x.body.message_id_fields();
            head.extend_from_slice(
                format!(" BODY[HEADER.FIELDS (MESSAGE-ID)] {{{}}}\r\n", h.len()).as_bytes(),
            );
            head.extend_from_slice(&h);
        }
        let body_chunks: Chunks = if body {
            head.extend_from_slice(format!(" BODY[] {{{}}}\r\n", x.body.len()).as_bytes());
            x.body.chunks()
        } else {
            Box::new(std::iter::empty())
        };
        std::iter::once(head)
            .chain(body_chunks)
            .chain(std::iter::once(b")\r\n".to_vec()))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_not_expanded() {
        assert!(in_set("1:*", 7, 9));
        assert!(in_set("4294967295:1", 3, 9));
        assert!(in_set("3,5:6", 6, 9));
        assert!(!in_set("3,5:6", 4, 9));
        assert!(in_set("10:*", 9, 9), "n:* names the last message");
    }

    #[test]
    fn generated_bodies_have_their_length_and_a_message_id() {
        let b = Body::Generated(200_000);
        let all: Vec<u8> = b.chunks().flatten().collect();
        assert_eq!(all.len(), 200_000);
        let h = Body::generated_header(200_000).len();
        let expected: Vec<u8> = (h..200_000)
            .map(|p| PATTERN[(p - h) % PATTERN.len()])
            .collect();
        assert_eq!(&all[h..], &expected[..]);
        assert!(all.starts_with(b"Message-ID: <generated-200000@hostile.test>\r\n"));
        assert_eq!(
            b.message_id_fields(),
            b"Message-ID: <generated-200000@hostile.test>\r\n\r\n"
        );
    }

    #[test]
    fn mailbox_names_quoted_literal_or_atom() {
        assert_eq!(
            mailbox_arg(b"\"a\\\"b\" (X)"),
            (b"a\"b".to_vec(), &b" (X)"[..])
        );
        assert_eq!(
            mailbox_arg(b"{3}\r\nabc (X)"),
            (b"abc".to_vec(), &b" (X)"[..])
        );
        assert_eq!(mailbox_arg(b"INBOX"), (b"INBOX".to_vec(), &b""[..]));
    }
}
