//! An IMAP session over implicit TLS (trusting the test CA) and the master-user login
//! the seeding API uses, with a raw command path that reads APPENDUID/COPYUID codes.

use anyhow::{Context, Result, anyhow, bail};
use async_imap::imap_proto::rfc4315::UidSetMember;
use async_imap::imap_proto::{Response, ResponseCode, Status};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::utf7;

/// The TLS stream the helpers hand out.
pub type TlsStream = async_native_tls::TlsStream<TcpStream>;

/// Connects to `127.0.0.1:port` with implicit TLS, verifying `localhost` against the CA
/// in `ca_pem`, and reads the greeting.
pub async fn connect_imaps(port: u16, ca_pem: &[u8]) -> Result<async_imap::Client<TlsStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
    let tls = async_native_tls::TlsConnector::new()
        .add_root_certificate(async_native_tls::Certificate::from_pem(ca_pem)?)
        .connect("localhost", tcp)
        .await
        .context("TLS handshake with the test Dovecot")?;
    let mut client = async_imap::Client::new(tls);
    loop {
        let greeting = client
            .read_response()
            .await?
            .ok_or_else(|| anyhow!("connection closed before the greeting"))?;
        // On a fresh instance the first line can be "* OK Waiting for authentication
        // process to respond.."; the real greeting follows.
        if let Response::Data { outcome, .. } = greeting.parsed()
            && outcome
                .information
                .as_deref()
                .is_some_and(|i| i.starts_with("Waiting for"))
        {
            continue;
        }
        break;
    }
    Ok(client)
}

/// A mailbox name (UTF-8) as an IMAP quoted string in modified UTF-7.
pub fn quote_mailbox(name: &str) -> String {
    let enc = utf7::encode(name);
    format!("\"{}\"", enc.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The response codes the seeding API cares about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Code {
    /// `APPENDUID uidvalidity uids`.
    AppendUid(u32, Vec<u32>),
    /// `COPYUID uidvalidity source-uids dest-uids`.
    CopyUid(u32, Vec<u32>, Vec<u32>),
}

fn expand(set: &[UidSetMember]) -> Vec<u32> {
    let mut out = Vec::new();
    for m in set {
        match m {
            UidSetMember::Uid(u) => out.push(*u),
            UidSetMember::UidRange(r) => out.extend(r.clone()),
        }
    }
    out
}

fn convert(code: &ResponseCode<'_>) -> Option<Code> {
    match code {
        ResponseCode::AppendUid(v, set) => Some(Code::AppendUid(*v, expand(set))),
        ResponseCode::CopyUid(v, a, b) => Some(Code::CopyUid(*v, expand(a), expand(b))),
        _ => None,
    }
}

/// A logged-in admin session (master user) for one mailbox owner.
pub struct Admin {
    /// The async-imap session, for the commands it handles well.
    pub session: async_imap::Session<TlsStream>,
    next_tag: u32,
}

impl Admin {
    /// Logs in as `user` through the master user (`user*admin`, PLAIN).
    pub async fn login(port: u16, ca_pem: &[u8], user: &str, password: &str) -> Result<Admin> {
        let client = connect_imaps(port, ca_pem).await?;
        let login = format!("{user}*{}", super::config::MASTER_USER);
        let session = client
            .login(&login, password)
            .await
            .map_err(|(e, _)| anyhow!("admin login as {user}: {e}"))?;
        Ok(Admin {
            session,
            next_tag: 0,
        })
    }

    /// Sends a command made of `parts` (literals must use `{N+}`), then reads until its
    /// tagged reply; fails unless OK. Returns APPENDUID/COPYUID codes seen on the way.
    pub async fn raw(&mut self, parts: &[&[u8]]) -> Result<Vec<Code>> {
        self.next_tag += 1;
        let tag = format!("T{}", self.next_tag);
        {
            let stream = self.session.get_mut();
            stream.write_all(tag.as_bytes()).await?;
            stream.write_all(b" ").await?;
            for p in parts {
                stream.write_all(p).await?;
            }
            stream.write_all(b"\r\n").await?;
            stream.flush().await?;
        }
        let mut codes = Vec::new();
        loop {
            let resp = self
                .session
                .read_response()
                .await?
                .ok_or_else(|| anyhow!("connection closed during {tag}"))?;
            match resp.parsed() {
                Response::Done {
                    tag: t,
                    status,
                    outcome,
                } if t.0 == tag => {
                    if *status != Status::Ok {
                        let first = String::from_utf8_lossy(parts.first().copied().unwrap_or(b""))
                            .chars()
                            .take_while(|c| *c != '\r')
                            .take(80)
                            .collect::<String>();
                        bail!(
                            "{first}: {status:?} {}",
                            outcome.information.as_deref().unwrap_or("")
                        );
                    }
                    codes.extend(outcome.code.as_ref().and_then(convert));
                    return Ok(codes);
                }
                Response::Data {
                    status: Status::Ok,
                    outcome,
                } => codes.extend(outcome.code.as_ref().and_then(convert)),
                _ => {}
            }
        }
    }

    /// `raw` with a single text command.
    pub async fn cmd(&mut self, command: &str) -> Result<Vec<Code>> {
        self.raw(&[command.as_bytes()]).await
    }

    /// Logs out (so the session no longer shows in `doveadm who`).
    pub async fn logout(mut self) -> Result<()> {
        self.session.logout().await?;
        Ok(())
    }
}

/// Sends `CAPABILITY` on a fresh, unauthenticated stream and returns the atoms.
async fn capability_atoms<S>(stream: S) -> Result<Vec<String>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed before the greeting");
        }
        if !line.starts_with("* OK Waiting") {
            break;
        }
    }
    r.get_mut().write_all(b"c1 CAPABILITY\r\n").await?;
    r.get_mut().flush().await?;
    let mut caps = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed during CAPABILITY");
        }
        if let Some(rest) = line.strip_prefix("* CAPABILITY ") {
            caps = rest.split_whitespace().map(str::to_string).collect();
        } else if line.starts_with("c1 ") {
            return Ok(caps);
        }
    }
}

/// The pre-login capabilities on the implicit-TLS port.
pub async fn capabilities_before_login_tls(port: u16, ca_pem: &[u8]) -> Result<Vec<String>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = async_native_tls::TlsConnector::new()
        .add_root_certificate(async_native_tls::Certificate::from_pem(ca_pem)?)
        .connect("localhost", tcp)
        .await?;
    capability_atoms(tls).await
}

/// The pre-login, pre-STARTTLS capabilities on the plain port.
pub async fn capabilities_before_login_plain(port: u16) -> Result<Vec<String>> {
    capability_atoms(TcpStream::connect(("127.0.0.1", port)).await?).await
}
