//! What the test SMTP servers ([`crate::SmtpSink`], [`crate::ScriptedSmtp`]) share:
//! bounded line reading, the DATA phase with dot-unstuffing, paths in MAIL/RCPT, and
//! the record of a message.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// The longest line either server reads (command or message line). RFC 5321 allows 512
/// octets for a command and 1,000 for a text line; this is far above both, a bound
/// against a runaway client rather than a check of its manners.
pub(crate) const MAX_LINE: usize = 64 << 10;

/// The largest message either server keeps; a larger one is read to its end, dropped
/// and answered `552`.
pub(crate) const MAX_MESSAGE: usize = 32 << 20;

/// A message a server took in: the envelope and the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The reverse path of MAIL FROM, without the angle brackets (`""` for `<>`).
    pub mail_from: String,
    /// The forward paths of the accepted RCPT TO commands, in order.
    pub rcpt_to: Vec<String>,
    /// The data as received: lines with their endings (CRLF from a conforming client),
    /// dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
}

/// Why a connection ends early.
#[derive(Debug)]
enum Cut {
    /// The client closed (or the socket failed) in the middle of something.
    Closed,
    /// A line longer than [`MAX_LINE`].
    TooLong,
}

/// Reads one line, ending included. A last line without an ending is `Closed`.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, Cut> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await.map_err(|_| Cut::Closed)?;
        if buf.is_empty() {
            return Err(Cut::Closed);
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE {
            return Err(Cut::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(line);
        }
    }
}

/// Reads the next command line; `None` when the connection ends (after telling the
/// client, if the line was too long).
pub(crate) async fn next_line<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
) -> Option<Vec<u8>> {
    let line = read_line(io).await;
    ended(io, line).await
}

/// Sends `go_ahead` (the 354) and reads the message; `None` when the connection ends.
pub(crate) async fn next_data<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    go_ahead: &str,
) -> Option<Data> {
    send(io, go_ahead).await.ok()?;
    let data = read_data(io).await;
    ended(io, data).await
}

async fn ended<S: AsyncRead + AsyncWrite + Unpin, T>(
    io: &mut BufReader<S>,
    read: Result<T, Cut>,
) -> Option<T> {
    match read {
        Ok(value) => Some(value),
        Err(Cut::Closed) => None,
        Err(Cut::TooLong) => {
            let _ = send(io, "500 5.5.2 Line too long").await;
            None
        }
    }
}

/// A command line as text without its ending, and its verb in upper case.
pub(crate) fn command(line: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(line)
        .trim_end_matches(['\r', '\n'])
        .to_string();
    let verb = text
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    (text, verb)
}

/// The path of `MAIL FROM:<path> …` or `RCPT TO:<path> …` (`keyword` is `FROM:` or
/// `TO:`), `None` if the argument is not of that form.
pub(crate) fn path(text: &str, keyword: &str) -> Option<String> {
    let args = text.split_once(' ')?.1.trim_start();
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start().strip_prefix('<')?;
    let (path, _) = rest.split_once('>')?;
    Some(path.to_string())
}

/// The DATA phase's outcome.
pub(crate) enum Data {
    Complete(Vec<u8>),
    /// Over [`MAX_MESSAGE`]: read to the end and dropped.
    TooBig,
}

/// Reads message lines up to the `.` line, removing the dot a client doubled at the
/// start of a line (RFC 5321 4.5.2).
async fn read_data<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Data, Cut> {
    let mut data = Vec::new();
    let mut too_big = false;
    loop {
        let line = read_line(r).await?;
        if line == b".\r\n" || line == b".\n" {
            return Ok(if too_big {
                Data::TooBig
            } else {
                Data::Complete(data)
            });
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + line.len() > MAX_MESSAGE {
            too_big = true;
            data = Vec::new();
        }
        if !too_big {
            data.extend_from_slice(line);
        }
    }
}

/// A reply line a test supplied, made safe to send: line breaks inside it would start
/// lines the client reads as further replies.
pub(crate) fn one_line(reply: &str) -> String {
    reply.replace(['\r', '\n'], " ").trim().to_string()
}

/// Sends a reply (lines joined with CRLF, the last one ended too).
pub(crate) async fn send<W: AsyncWrite + Unpin>(w: &mut W, reply: &str) -> std::io::Result<()> {
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\r\n").await?;
    w.flush().await
}

/// Whether a reply line is a success (2xx).
pub(crate) fn positive(reply: &str) -> bool {
    reply.starts_with('2')
}
