//! The "physical limit" on this machine: one IMAPS connection (the master login) doing
//! `UID FETCH 1:* BODY.PEEK[]` on each folder and discarding the bodies; then the same
//! bytes written as Maildir files the way a delivery does (write into `tmp/`, fsync,
//! rename into `cur/`). The fetch speaks IMAP on the raw TLS stream and only finds the
//! literal lengths and the tagged reply, so client-side parsing costs next to nothing.

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mailsync_testenv::CorpusMessage;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::fsutil::remove_tree;
use super::server::{EMAIL, FOLDERS, Server};

/// What the limit measured.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub fetch_wall: f64,
    pub fetch_mb: f64,
    pub messages: usize,
    pub write_wall: f64,
    pub write_mb: f64,
}

/// Fetches every body once over one connection (server must hold the pristine corpus),
/// then writes `corpus` as Maildir files under `scratch`.
pub async fn measure(server: &Server, corpus: &[CorpusMessage], scratch: &Path) -> Result<Limit> {
    server.wait_idle()?;
    let started = Instant::now();
    let (bytes, messages) = fetch_all(server).await?;
    let fetch_wall = started.elapsed().as_secs_f64();

    remove_tree(scratch)?;
    let started = Instant::now();
    let mut written = 0u64;
    for sub in ["tmp", "cur", "new"] {
        std::fs::create_dir_all(scratch.join(sub))?;
    }
    for (i, m) in corpus.iter().enumerate() {
        let tmp = scratch.join("tmp").join(format!("{i}.bench"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&m.bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, scratch.join("cur").join(format!("{i}.bench:2,S")))?;
        written += m.bytes.len() as u64;
    }
    std::fs::File::open(scratch.join("cur"))?.sync_all()?;
    let write_wall = started.elapsed().as_secs_f64();
    remove_tree(scratch)?;
    Ok(Limit {
        fetch_wall,
        fetch_mb: bytes as f64 / 1e6,
        messages,
        write_wall,
        write_mb: written as f64 / 1e6,
    })
}

/// Logs in on one IMAPS connection and fetches every body of every folder, reading the
/// raw stream: returns (literal bytes, literals).
async fn fetch_all(server: &Server) -> Result<(u64, usize)> {
    let d = &server.dovecot;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.imap_port())).await?;
    let mut tls = async_native_tls::TlsConnector::new()
        .add_root_certificate(async_native_tls::Certificate::from_pem(&d.ca_pem())?)
        .connect("localhost", tcp)
        .await?;
    let mut r = Reader {
        buf: Vec::with_capacity(1 << 20),
        pos: 0,
        literal_bytes: 0,
        literals: 0,
    };
    // The greeting(s) carry no tag; the first tagged reply ends the LOGIN.
    let login = format!(
        "a LOGIN \"{}*{}\" \"{}\"\r\n",
        EMAIL,
        mailsync_testenv::dovecot::MASTER_USER,
        d.admin_password()
    );
    tls.write_all(login.as_bytes()).await?;
    r.until_tagged(&mut tls, b"a ").await?;
    for (i, folder) in FOLDERS.iter().enumerate() {
        let cmd = format!("s{i} SELECT \"{folder}\"\r\nf{i} UID FETCH 1:* BODY.PEEK[]\r\n");
        tls.write_all(cmd.as_bytes()).await?;
        r.until_tagged(&mut tls, format!("s{i} ").as_bytes())
            .await?;
        r.until_tagged(&mut tls, format!("f{i} ").as_bytes())
            .await?;
    }
    tls.write_all(b"z LOGOUT\r\n").await?;
    r.until_tagged(&mut tls, b"z ").await?;
    Ok((r.literal_bytes, r.literals))
}

struct Reader {
    buf: Vec<u8>,
    pos: usize,
    literal_bytes: u64,
    literals: usize,
}

impl Reader {
    async fn fill<S: tokio::io::AsyncRead + Unpin>(&mut self, s: &mut S) -> Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + (1 << 18), 0);
        let n = s.read(&mut self.buf[len..]).await?;
        self.buf.truncate(len + n);
        if n == 0 {
            bail!("server closed the connection");
        }
        Ok(())
    }

    /// Reads lines (skipping literals) until one starts with `tag`; fails unless OK.
    async fn until_tagged<S: tokio::io::AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        tag: &[u8],
    ) -> Result<()> {
        let mut line_start = true;
        let mut tagged = false;
        loop {
            let Some(nl) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") else {
                self.fill(s).await?;
                continue;
            };
            let line = &self.buf[self.pos..self.pos + nl];
            if line_start && line.starts_with(tag) {
                tagged = true;
                if !line[tag.len()..].starts_with(b"OK") {
                    bail!("{}", String::from_utf8_lossy(line));
                }
            }
            let literal = (line.last() == Some(&b'}'))
                .then(|| line.iter().rposition(|&b| b == b'{'))
                .flatten()
                .and_then(|open| std::str::from_utf8(&line[open + 1..line.len() - 1]).ok())
                .and_then(|n| n.parse::<usize>().ok());
            self.pos += nl + 2;
            if tagged {
                return Ok(());
            }
            match literal {
                Some(mut n) => {
                    self.literal_bytes += n as u64;
                    self.literals += 1;
                    while n > 0 {
                        if self.pos == self.buf.len() {
                            self.fill(s).await.context("reading a literal")?;
                        }
                        let take = n.min(self.buf.len() - self.pos);
                        self.pos += take;
                        n -= take;
                    }
                    line_start = false;
                }
                None => line_start = true,
            }
        }
    }
}
