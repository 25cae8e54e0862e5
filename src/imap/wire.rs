//! The IMAP byte stream: commands out, whole responses in, with every bound a hostile
//! server could push against enforced here, before anything is parsed or kept.
//!
//! A response is a line, or a line whose end announces a literal (`{n}` or `{n+}`)
//! followed by `n` bytes and the rest of the line, and so on. [`Wire::read_frame`] cuts
//! the stream into such frames, scanning each byte once (re-parsing a growing buffer
//! on every read costs quadratic time on a long line), and refuses:
//! - a frame whose lines and small literals exceed the line limit (1 MiB unless the
//!   caller expects more, as for a `SEARCH` of a large folder);
//! - a literal larger than [`MAX_LITERAL`], before allocating for it;
//! - a server that sends nothing for the idle timeout, or whose command does not
//!   complete by its deadline (which literal bytes, as they arrive, push back).
//!
//! A literal of [`LARGE_LITERAL`] bytes or more (a message body) is read into a buffer
//! of its own, of exactly its size, and left out of the frame's bytes (its place holds
//! an empty literal): the body is then handed on without a copy, so a message costs
//! about its size in memory once.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::stream::BoxStream;

/// The largest literal accepted: beyond any message a server stores (Exchange Online
/// takes 150 MB, Gmail 50 MB), far below what a 32-bit size field can claim.
pub const MAX_LITERAL: u64 = 1 << 30;

/// How long a response's lines (outside large literals) may be, unless raised.
pub const LINE_LIMIT: usize = 1 << 20;

/// Literals from this size on get a buffer of their own (see the module doc).
pub const LARGE_LITERAL: usize = 64 * 1024;

/// The slowest transfer that still counts as progress: every literal byte received
/// pushes the command's deadline back by 1/`MIN_RATE` seconds.
const MIN_RATE: u64 = 16 * 1024;

/// Read buffer size: what one read from the (TLS) stream returns at most.
const READ_CHUNK: usize = 64 * 1024;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum WireError {
    Io(std::io::Error),
    /// The server closed the connection (`partial`: in the middle of a response).
    Closed {
        partial: bool,
    },
    /// Nothing arrived for the idle timeout.
    Idle(Duration),
    /// The command did not complete by its deadline.
    Deadline(Duration),
    /// A response's lines grew past the limit.
    LineTooLong(usize),
    /// A literal larger than [`MAX_LITERAL`] was announced.
    LiteralTooLarge(u64),
    /// A literal larger than the caller's limit (what the data's listed size allows).
    LiteralBeyond {
        size: u64,
        limit: u64,
    },
}

/// One response, as bytes, with its large literals apart.
#[derive(Debug, Default)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Large literals: where their empty placeholder sits in `bytes`, and their bytes.
    literals: Vec<(usize, Vec<u8>)>,
}

impl Frame {
    /// The bytes to parse, and the large literals, which a parse of those bytes finds
    /// by the address of their placeholder (see [`Literals::take`]).
    pub fn split(self) -> (Vec<u8>, Literals) {
        let base = self.bytes.as_ptr() as usize;
        (
            self.bytes,
            Literals {
                base,
                items: self.literals,
            },
        )
    }
}

/// The large literals of a frame whose bytes are being parsed.
#[derive(Debug, Default)]
pub struct Literals {
    base: usize,
    items: Vec<(usize, Vec<u8>)>,
}

impl Literals {
    /// The large literal whose placeholder `data` (a slice the parse returned) is, or
    /// `None` if `data` is an ordinary string.
    pub fn take(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        if !data.is_empty() {
            return None;
        }
        let at = (data.as_ptr() as usize).checked_sub(self.base)?;
        let i = self.items.iter().position(|(o, _)| *o == at)?;
        Some(self.items.swap_remove(i).1)
    }

    /// Whether every large literal was taken.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// At most 60 bytes of `bytes`, printable: text as is, other bytes as `\xNN`.
pub fn excerpt(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(60) {
        match b {
            b' '..=b'~' => out.push(b as char),
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > 60 {
        out.push('…');
    }
    out
}

/// The connection: a stream, its read buffer, and the command tags.
pub struct Wire {
    stream: BoxStream,
    buf: Vec<u8>,
    /// Unread bytes are `buf[head..tail]`.
    head: usize,
    tail: usize,
    next_tag: u32,
    /// Longest gap between two reads of a response.
    pub idle: Duration,
    /// When the oldest command in flight must have completed.
    deadline: Option<Instant>,
    /// How long lines may be (see [`LINE_LIMIT`]).
    line_limit: usize,
    /// How large a literal may be, below [`MAX_LITERAL`], if the caller knows.
    literal_limit: Option<u64>,
    /// Whether anything arrived since the deadline was set: a deadline passed in
    /// silence is a silent server, not a stalled command.
    heard: bool,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("buffered", &(self.tail - self.head))
            .finish_non_exhaustive()
    }
}

/// How much of a literal is written under one idle timeout.
const LITERAL_CHUNK: usize = 64 * 1024;

impl Wire {
    pub fn new(stream: BoxStream, idle: Duration) -> Wire {
        Wire {
            stream,
            buf: vec![0; READ_CHUNK],
            head: 0,
            tail: 0,
            next_tag: 1,
            idle,
            deadline: None,
            line_limit: LINE_LIMIT,
            literal_limit: None,
            heard: false,
        }
    }

    /// The stream, for a TLS upgrade; `None` if the server already sent more (after
    /// STARTTLS's OK, such bytes would be injected into the encrypted session).
    pub fn into_stream(self) -> Option<BoxStream> {
        (self.head == self.tail).then_some(self.stream)
    }

    /// Sends `tag command\r\n` with a fresh tag, and returns the tag.
    pub async fn send(&mut self, command: &str) -> Result<String, WireError> {
        let tag = format!("A{}", self.next_tag);
        self.next_tag += 1;
        let mut line = Vec::with_capacity(tag.len() + command.len() + 3);
        line.extend_from_slice(tag.as_bytes());
        line.push(b' ');
        line.extend_from_slice(command.as_bytes());
        line.extend_from_slice(b"\r\n");
        self.write(&line).await?;
        Ok(tag)
    }

    /// Sends a line without a tag (a SASL response, `DONE`).
    pub async fn send_untagged(&mut self, line: &str) -> Result<(), WireError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes).await
    }

    /// Sends a literal's bytes and the CRLF that ends the command line after it. The
    /// idle timeout applies to each chunk, not the whole: a large message on a slow
    /// link takes as long as it takes while it moves.
    pub async fn send_literal(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        for chunk in bytes.chunks(LITERAL_CHUNK) {
            self.write(chunk).await?;
        }
        self.write(b"\r\n").await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let idle = self.idle;
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(idle, write).await {
            Err(_) => Err(WireError::Idle(idle)),
            Ok(r) => r.map_err(WireError::Io),
        }
    }

    /// Sets when the command now oldest in flight must complete: `after` from now.
    pub fn set_deadline(&mut self, after: Duration) {
        self.deadline = Some(Instant::now() + after);
        self.heard = false;
    }

    /// No deadline (IDLE, which waits as long as its caller says).
    pub fn clear_deadline(&mut self) {
        self.deadline = None;
    }

    /// Pushes the deadline back: progress the caller counted.
    pub fn extend_deadline(&mut self, by: Duration) {
        if let Some(d) = &mut self.deadline {
            *d += by;
        }
    }

    /// Lowers (or restores, with `None`) how large a literal may be.
    pub fn set_literal_limit(&mut self, limit: Option<u64>) {
        self.literal_limit = limit;
    }

    /// Raises (or restores, with [`LINE_LIMIT`]) how long a response's lines may be.
    pub fn set_line_limit(&mut self, limit: usize) {
        self.line_limit = limit.max(LINE_LIMIT);
    }

    /// Waits, without a time limit, until the server sends something (or closes). Safe
    /// to cancel: nothing read is lost.
    pub async fn wait_for_data(&mut self) -> Result<(), WireError> {
        if self.head < self.tail {
            return Ok(());
        }
        self.head = 0;
        self.tail = 0;
        let n = self
            .stream
            .read(&mut self.buf)
            .await
            .map_err(WireError::Io)?;
        if n == 0 {
            return Err(WireError::Closed { partial: false });
        }
        self.tail = n;
        Ok(())
    }

    /// The next whole response; `Err(Closed { partial: false })` at a clean end.
    pub async fn read_frame(&mut self) -> Result<Frame, WireError> {
        let mut frame = Frame::default();
        // Where the search for the end of the current line resumes.
        let mut scan = self.head;
        loop {
            let newline = self.buf[scan..self.tail]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| scan + i);
            let Some(end) = newline else {
                scan = self.tail;
                if frame.bytes.len() + (self.tail - self.head) > self.line_limit {
                    return Err(WireError::LineTooLong(self.line_limit));
                }
                let before = self.head;
                self.fill(frame.bytes.is_empty() && self.tail == self.head)
                    .await?;
                // `fill` may move the unread bytes to the front.
                scan = scan - before + self.head;
                continue;
            };
            let line = &self.buf[self.head..=end];
            if frame.bytes.len() + line.len() > self.line_limit {
                return Err(WireError::LineTooLong(self.line_limit));
            }
            let literal = literal_at_end(line);
            frame.bytes.extend_from_slice(line);
            self.head = end + 1;
            let Some(literal) = literal else {
                return Ok(frame);
            };
            let size = literal?;
            if size > MAX_LITERAL {
                return Err(WireError::LiteralTooLarge(size));
            }
            if let Some(limit) = self.literal_limit
                && size > limit
            {
                return Err(WireError::LiteralBeyond { size, limit });
            }
            let size = size as usize;
            if size >= LARGE_LITERAL {
                // Replace `{n}\r\n` by `{0}\r\n` and keep the bytes apart.
                let open = frame.bytes.iter().rposition(|&b| b == b'{').unwrap_or(0);
                frame.bytes.truncate(open);
                frame.bytes.extend_from_slice(b"{0}\r\n");
                let at = frame.bytes.len();
                let data = self.read_literal(size).await?;
                frame.literals.push((at, data));
            } else {
                if frame.bytes.len() + size > self.line_limit {
                    return Err(WireError::LineTooLong(self.line_limit));
                }
                while self.tail - self.head < size {
                    self.fill(false).await?;
                }
                frame
                    .bytes
                    .extend_from_slice(&self.buf[self.head..self.head + size]);
                self.head += size;
                self.credit(size);
            }
            scan = self.head;
        }
    }

    /// Reads a large literal of `size` bytes into a buffer of exactly that size.
    async fn read_literal(&mut self, size: usize) -> Result<Vec<u8>, WireError> {
        let mut data = Vec::with_capacity(size);
        let buffered = (self.tail - self.head).min(size);
        data.extend_from_slice(&self.buf[self.head..self.head + buffered]);
        self.head += buffered;
        self.credit(buffered);
        data.resize(size, 0);
        let mut filled = buffered;
        while filled < size {
            let n = self.timed(ReadInto::Literal(&mut data[filled..])).await?;
            if n == 0 {
                return Err(WireError::Closed { partial: true });
            }
            filled += n;
            self.credit(n);
        }
        Ok(data)
    }

    /// Reads more into the buffer, making room first. `clean` when no response has
    /// begun: a close then is a clean end.
    async fn fill(&mut self, clean: bool) -> Result<(), WireError> {
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        } else if self.tail == self.buf.len() {
            if self.head > 0 {
                self.buf.copy_within(self.head..self.tail, 0);
                self.tail -= self.head;
                self.head = 0;
            } else {
                // A line longer than the buffer (within the line limit): grow.
                let grown = (self.buf.len() * 2).min(self.line_limit + READ_CHUNK);
                self.buf.resize(grown.max(self.buf.len() + READ_CHUNK), 0);
            }
        }
        let n = self.timed(ReadInto::Buffer).await?;
        if n == 0 {
            return Err(WireError::Closed { partial: !clean });
        }
        self.tail += n;
        Ok(())
    }

    /// One read, within the idle timeout and the deadline.
    async fn timed(&mut self, into: ReadInto<'_>) -> Result<usize, WireError> {
        let now = Instant::now();
        // Checked before reading too: a server that always has more to send would
        // never let a read time out.
        if self.deadline.is_some_and(|d| d <= now) {
            return Err(if self.heard {
                WireError::Deadline(self.idle)
            } else {
                WireError::Idle(self.idle)
            });
        }
        let idle_end = now + self.idle;
        let (until, by_deadline) = match self.deadline {
            Some(d) if d < idle_end => (d, true),
            _ => (idle_end, false),
        };
        let read = async {
            match into {
                ReadInto::Buffer => self.stream.read(&mut self.buf[self.tail..]).await,
                ReadInto::Literal(dst) => self.stream.read(dst).await,
            }
        };
        match tokio::time::timeout_at(until, read).await {
            Ok(r) => {
                let n = r.map_err(WireError::Io)?;
                self.heard |= n > 0;
                Ok(n)
            }
            Err(_) if by_deadline && self.heard => Err(WireError::Deadline(self.idle)),
            Err(_) => Err(WireError::Idle(self.idle)),
        }
    }

    /// Literal bytes received: progress that pushes the deadline back.
    fn credit(&mut self, bytes: usize) {
        let micros = bytes as u64 * 1_000_000 / MIN_RATE;
        self.extend_deadline(Duration::from_micros(micros));
    }
}

enum ReadInto<'a> {
    Buffer,
    Literal(&'a mut [u8]),
}

/// If `line` (ending in `\n`) ends with a literal announcement `{n}` or `{n+}`: its
/// size, or an error for a size that does not fit in 64 bits.
pub(super) fn literal_at_end(line: &[u8]) -> Option<Result<u64, WireError>> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(b"}")?;
    let line = line.strip_suffix(b"+").unwrap_or(line);
    let open = line.iter().rposition(|&b| b == b'{')?;
    let digits = &line[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        n = match n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
        {
            Some(n) => n,
            None => return Some(Err(WireError::LiteralTooLarge(u64::MAX))),
        };
    }
    Some(Ok(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn wire(server: &[u8]) -> Wire {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let bytes = server.to_vec();
        tokio::spawn(async move {
            // In small pieces, so frames span reads.
            for chunk in bytes.chunks(7) {
                theirs.write_all(chunk).await.unwrap();
            }
            // Keep the stream open until the test is done reading.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        Wire::new(Box::new(ours), Duration::from_millis(300))
    }

    #[tokio::test]
    async fn frames_span_reads_and_literals() {
        let mut w = wire(b"* OK hi\r\n* 1 FETCH (UID 5 BODY[] {5}\r\nab\r\nc)\r\nA1 OK done\r\n");
        assert_eq!(w.read_frame().await.unwrap().bytes, b"* OK hi\r\n");
        assert_eq!(
            w.read_frame().await.unwrap().bytes,
            b"* 1 FETCH (UID 5 BODY[] {5}\r\nab\r\nc)\r\n"
        );
        assert_eq!(w.read_frame().await.unwrap().bytes, b"A1 OK done\r\n");
        assert!(matches!(
            w.read_frame().await,
            Err(WireError::Idle(_)) | Err(WireError::Closed { partial: false })
        ));
    }

    #[tokio::test]
    async fn large_literals_are_kept_apart_and_found_by_the_parse() {
        let body = vec![b'x'; LARGE_LITERAL + 10];
        let mut server = format!("* 1 FETCH (UID 7 BODY[] {{{}}}\r\n", body.len()).into_bytes();
        server.extend_from_slice(&body);
        server.extend_from_slice(b")\r\n");
        let mut w = wire(&server);
        let frame = w.read_frame().await.unwrap();
        assert_eq!(frame.bytes, b"* 1 FETCH (UID 7 BODY[] {0}\r\n)\r\n");
        let (bytes, mut literals) = frame.split();
        let (_, parsed) = imap_proto::Response::parse(&bytes).unwrap();
        let imap_proto::Response::Fetch(_, attrs) = parsed else {
            panic!("not a FETCH");
        };
        let data = attrs
            .iter()
            .find_map(|a| match a {
                imap_proto::AttributeValue::BodySection { data, .. } => data.clone(),
                _ => None,
            })
            .unwrap();
        assert!(
            literals.take(b"").is_none(),
            "another empty string is not it"
        );
        let taken = literals.take(&data).unwrap();
        assert_eq!(taken.len(), body.len());
        assert_eq!(
            taken.capacity(),
            body.len(),
            "one buffer of exactly its size"
        );
    }

    #[tokio::test]
    async fn a_huge_literal_is_refused_before_allocating() {
        let mut w = wire(b"* 1 FETCH (BODY[] {4294967295}\r\n");
        assert!(matches!(
            w.read_frame().await,
            Err(WireError::LiteralTooLarge(4294967295))
        ));
        let mut w = wire(b"* 1 FETCH (BODY[] {99999999999999999999999}\r\n");
        assert!(matches!(
            w.read_frame().await,
            Err(WireError::LiteralTooLarge(_))
        ));
    }

    #[tokio::test]
    async fn a_line_past_the_limit_fails_in_linear_time() {
        let mut long = vec![b'a'; 3 * LINE_LIMIT];
        long.extend_from_slice(b"\r\n");
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let _ = theirs.write_all(&long).await;
        });
        let mut w = Wire::new(Box::new(ours), Duration::from_secs(2));
        assert!(matches!(
            w.read_frame().await,
            Err(WireError::LineTooLong(LINE_LIMIT))
        ));
        assert!(
            w.buf.len() <= LINE_LIMIT + 2 * READ_CHUNK,
            "{}",
            w.buf.len()
        );
    }

    #[tokio::test]
    async fn a_deadline_ends_an_endless_stream_of_data() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            while theirs.write_all(b"* OK still here\r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut w = Wire::new(Box::new(ours), Duration::from_secs(2));
        w.set_deadline(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let error = loop {
            match w.read_frame().await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(matches!(error, WireError::Deadline(_)), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_at_end(b"a {12}\r\n").unwrap().unwrap(), 12);
        assert_eq!(literal_at_end(b"a {12+}\r\n").unwrap().unwrap(), 12);
        assert!(literal_at_end(b"a {}\r\n").is_none());
        assert!(literal_at_end(b"a {x}\r\n").is_none());
        assert!(literal_at_end(b"a 12}\r\n").is_none());
    }
}
