//! A logged-in IMAP session and the commands sync needs. Every command goes through
//! [`Session::exec`], which applies the timeout, hands untagged data to the caller,
//! and turns the tagged reply (and any BYE) into a typed result.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use imap_proto::{
    self, AttributeValue, MailboxDatum, NameAttribute, Response, ResponseCode, Status,
    StatusAttribute,
};

use super::error::ImapError;
use super::wire::{self, Literals, Wire, WireError};
use super::{parse_internaldate, quote, uid_set};
use crate::config::roles::RemoteFolder;
use crate::flags::Flags;
use crate::secret::Secret;
use crate::server_text::Scrubber;

/// Capabilities the server advertised, upper-cased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities(BTreeSet<String>);

impl Capabilities {
    pub fn from_proto(caps: &[imap_proto::Capability<'_>]) -> Capabilities {
        Capabilities(
            caps.iter()
                .map(|c| match c {
                    imap_proto::Capability::Imap4rev1 => "IMAP4REV1".to_owned(),
                    imap_proto::Capability::Auth(m) => format!("AUTH={}", m.to_ascii_uppercase()),
                    imap_proto::Capability::Atom(a) => a.to_ascii_uppercase(),
                })
                .collect(),
        )
    }
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Capabilities {
        Capabilities(names.into_iter().map(|n| n.to_ascii_uppercase()).collect())
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.contains(&name.to_ascii_uppercase())
    }
    pub fn auth_mechanisms(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|c| c.strip_prefix("AUTH="))
            .collect()
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<&str> = self.iter().collect();
        f.write_str(&v.join(" "))
    }
}

/// A selected folder's state, from SELECT's untagged data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selected {
    pub uidvalidity: u32,
    pub uidnext: Option<u32>,
    pub exists: u32,
    /// Present when CONDSTORE is in use and the folder supports mod-sequences.
    pub highestmodseq: Option<u64>,
}

/// A message's metadata for pairing (no body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprinted {
    pub uid: u32,
    pub flags: Flags,
    pub size: u64,
    pub internaldate: i64,
    pub message_id: Option<String>,
}

/// FETCH commands in flight at once during a download (besides a SELECT riding along):
/// one streaming, the next queued at the server behind it. More would only hold more
/// batches journaled at a time.
pub const FETCH_PIPELINE: usize = 2;

/// Hosts that offer CONDSTORE/QRESYNC and refused a command using them.
static MODSEQ_REFUSED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

fn modseq_refused(host: &str) -> bool {
    MODSEQ_REFUSED
        .lock()
        .is_ok_and(|hosts| hosts.contains(host))
}

/// Folders one LIST may return at most.
const MAX_FOLDERS: usize = 100_000;

/// FETCH responses a command may bring beyond one per message (flag updates from
/// other sessions while it runs).
const FETCH_SLACK: u64 = 1000;

/// How much longer a command may take for each FETCH response it brings.
const FETCH_CREDIT: Duration = Duration::from_millis(2);

/// VANISHED ranges kept from one SELECT at most (a server lists each expunged stretch
/// once; more than this is no longer a list of expunges).
const MAX_VANISHED_RANGES: usize = 500_000;

/// What [`Session::fetch_bodies`] shows its caller.
pub enum BodyStep {
    /// The FETCH of batch `i` is about to be sent.
    Sending(usize),
    /// A downloaded message.
    Message(FetchedMessage),
}

/// What [`Session::exec_pipelined`] shows its caller.
pub enum Step<'a, 'r> {
    /// Command `i` of the list is about to be sent.
    Sending(usize),
    /// An untagged response, while command `i` is the oldest in flight (the one a
    /// server answering in order is answering), with the response's large literals,
    /// which its parse finds with [`Literals::take`].
    Data(usize, &'a Response<'r>, &'a mut Literals),
    /// Command `i` completed with OK.
    Done(usize),
}

/// What [`Session::exec_pipelined`] does after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Go on (for `Sending`: send that command).
    Go,
    /// Send no more commands (for `Sending`: not that one either); the ones in flight
    /// are read to their end, so the session stays usable.
    StopSending,
}

/// A message on the server as seen by a UID/FLAGS listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    pub uid: u32,
    pub flags: Flags,
}

/// A downloaded message.
#[derive(Debug)]
pub struct FetchedMessage {
    pub uid: u32,
    pub flags: Flags,
    pub internaldate: i64,
    pub body: Vec<u8>,
}

/// What a SELECT reported: the folder's state and, with QRESYNC, what changed since
/// the given mod-sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectChanges {
    pub selected: Selected,
    pub changed: Vec<RemoteEntry>,
    /// What `VANISHED (EARLIER)` reported, as the server's ranges (which may name any
    /// UID up to 2^32-1: intersect them with the records, never expand them).
    pub vanished: Vec<std::ops::RangeInclusive<u32>>,
    /// What a [`FollowUp::Flags`] sent with the SELECT returned, with its argument.
    pub flags: Option<(Option<u64>, Vec<RemoteEntry>)>,
    /// What a [`FollowUp::SizesFrom`] sent with the SELECT returned, with its argument.
    pub sizes: Option<(u32, Vec<(u32, u64)>)>,
}

/// A command sent right behind a SELECT, in the same round trip (RFC 3501 section
/// 5.5 lets a client send it before the SELECT completes; if the SELECT fails, the
/// server refuses it, as no folder is selected then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowUp {
    /// `UID FETCH 1:* (UID FLAGS)`, with `CHANGEDSINCE` the given mod-sequence.
    Flags(Option<u64>),
    /// `UID FETCH n:* (UID RFC822.SIZE)`: the sizes of the messages from UID `n` on.
    SizesFrom(u32),
}

/// How an AUTHENTICATE ended, short of a broken connection.
#[derive(Debug)]
pub(super) enum SaslEnd {
    Ok,
    /// NO or BAD, with the server's text (made safe) and its decoded challenge.
    Refused {
        text: String,
        challenge: Option<String>,
    },
}

/// Why an IDLE ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleEnd {
    /// The server reported new, changed or expunged messages.
    Changed,
    /// The timeout passed with nothing to report.
    Timeout,
    /// The caller cancelled (shutdown, reload).
    Cancelled,
}

pub struct Session {
    wire: Wire,
    capabilities: Capabilities,
    host: String,
    timeout: Duration,
    /// The folder selected now, and its UIDVALIDITY.
    selected: Option<(String, u32)>,
    qresync_enabled: bool,
    /// Takes the credential this connection sent out of anything the server says.
    scrub: Scrubber,
    /// The selected folder's message count, as the server last announced it: what
    /// bounds how many FETCH responses a command may bring.
    exists: u32,
    /// The last APPENDUID or COPYUID the server sent (UIDPLUS), tagged or not; taken
    /// by the command that asked for it (see imap/write.rs).
    pub(super) uid_code: Option<super::uidplus::UidCode>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("host", &self.host)
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session on a connection whose greeting was read; `timeout` is the longest
    /// wait for any response, and the base of every command's deadline.
    pub(super) fn new(wire: Wire, host: String, timeout: Duration) -> Session {
        Session {
            wire,
            capabilities: Capabilities::default(),
            host,
            timeout,
            selected: None,
            qresync_enabled: false,
            scrub: Scrubber::default(),
            exists: 0,
            uid_code: None,
        }
    }

    /// Server text from now on has `scrub`'s credentials taken out.
    pub(super) fn set_scrubber(&mut self, scrub: Scrubber) {
        self.scrub = scrub;
    }

    pub(super) fn set_capabilities_from(&mut self, caps: Capabilities) {
        self.capabilities = caps;
    }

    pub(super) fn wire_mut(&mut self) -> &mut Wire {
        &mut self.wire
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(super) fn tagged_result(
        &self,
        status: &Status,
        command: &str,
        outcome: &imap_proto::Outcome<'_>,
    ) -> Result<(), ImapError> {
        self.tagged(status, command, outcome)
    }

    pub(super) fn bye_text_of(&self, outcome: &imap_proto::Outcome<'_>) -> String {
        self.bye_text(outcome)
    }

    pub(super) fn into_wire(self) -> Wire {
        self.wire
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether CONDSTORE is to be used: offered, and not found broken on this host.
    pub fn has_condstore(&self) -> bool {
        (self.capabilities.has("CONDSTORE") || self.capabilities.has("QRESYNC"))
            && !modseq_refused(&self.host)
    }

    /// This host offers CONDSTORE/QRESYNC but refused a command using them: from now
    /// on (for this process) its folders are listed whole, as on a server without.
    fn give_up_modseq(&mut self, error: &ImapError) {
        tracing::warn!(
            host = %self.host,
            "the server offers CONDSTORE/QRESYNC but refused to use them ({error}); listing every message's flags instead"
        );
        if let Ok(mut hosts) = MODSEQ_REFUSED.lock() {
            hosts.insert(self.host.clone());
        }
    }

    /// Reads the server's greeting: its capabilities, if it lists them.
    pub(super) async fn read_greeting(&mut self) -> Result<Option<Capabilities>, ImapError> {
        self.wire.set_deadline(self.timeout);
        let frame = self
            .wire
            .read_frame()
            .await
            .map_err(|e| wire_error(e, "greeting"))?;
        let (mut bytes, _) = frame.split();
        let not_imap = |excerpt: String| ImapError::Protocol {
            command: "greeting".into(),
            detail: format!(
                "the server's greeting is not IMAP ({excerpt}); check imap_host, imap_port and tls"
            ),
        };
        let response = match repair_then_parse(&mut bytes) {
            Ok(r) => r,
            Err(_) => return Err(not_imap(wire::excerpt(&bytes))),
        };
        match response {
            Response::Data {
                status: Status::Ok,
                outcome,
            } => Ok(match &outcome.code {
                Some(ResponseCode::Capabilities(c)) => Some(Capabilities::from_proto(c)),
                _ => None,
            }),
            Response::Data {
                status: Status::Bye,
                outcome,
            } => Err(ImapError::Bye(format!(
                "{} refused the connection: {}",
                self.host,
                self.bye_text(&outcome)
            ))),
            _ => Err(not_imap(wire::excerpt(&bytes))),
        }
    }

    /// The SASL exchange of AUTHENTICATE: `initial` (base64) on the command line with
    /// SASL-IR, else after the server's first continuation. A later continuation is
    /// the server's error challenge (RFC 7628), kept for the message and answered
    /// empty. The credential is never logged.
    pub(super) async fn authenticate(
        &mut self,
        mechanism: &str,
        initial: &Secret,
        sasl_ir: bool,
    ) -> Result<SaslEnd, ImapError> {
        enum Got {
            Continue(Option<String>),
            Done(Option<String>),
            Bye(String),
        }
        let name = format!("AUTHENTICATE {mechanism}");
        self.wire.set_deadline(self.timeout);
        tracing::debug!(command = %name, "imap > (credential not shown)");
        let tag = {
            let command = Secret::new(if sasl_ir {
                format!("{name} {}", initial.expose())
            } else {
                name.clone()
            });
            self.wire
                .send(command.expose())
                .await
                .map_err(|e| wire_error(e, &name))?
        };
        let mut initial_sent = sasl_ir;
        let mut challenge = None;
        loop {
            let got = self
                .read_one(&name, |s, r| match r {
                    Response::Continue(o) => {
                        Some(Got::Continue(o.information.as_deref().map(str::to_owned)))
                    }
                    Response::Done {
                        tag: t,
                        status,
                        outcome,
                    } if t.0 == tag => Some(Got::Done(match status {
                        Status::Ok => None,
                        _ => Some(s.scrub.clean(&outcome_text(
                            outcome.code.as_ref(),
                            outcome.information.as_deref(),
                        ))),
                    })),
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => Some(Got::Bye(s.bye_text(outcome))),
                    _ => None,
                })
                .await?;
            match got {
                None => {}
                Some(Got::Continue(_)) if !initial_sent => {
                    initial_sent = true;
                    self.wire
                        .send_untagged(initial.expose())
                        .await
                        .map_err(|e| wire_error(e, &name))?;
                }
                Some(Got::Continue(text)) => {
                    use base64::Engine as _;
                    let decoded = text.as_deref().and_then(|t| {
                        base64::engine::general_purpose::STANDARD
                            .decode(t.trim())
                            .ok()
                    });
                    challenge = decoded.map(|d| self.scrub.clean(&String::from_utf8_lossy(&d)));
                    self.wire
                        .send_untagged("")
                        .await
                        .map_err(|e| wire_error(e, &name))?;
                }
                Some(Got::Done(None)) => return Ok(SaslEnd::Ok),
                Some(Got::Done(Some(text))) => return Ok(SaslEnd::Refused { text, challenge }),
                Some(Got::Bye(text)) => return Err(ImapError::Bye(text)),
            }
        }
    }

    pub(super) async fn refresh_capabilities(&mut self) -> Result<(), ImapError> {
        let mut caps = None;
        self.exec("CAPABILITY", |r| {
            if let Response::Capabilities(c) = r {
                caps = Some(Capabilities::from_proto(c));
            }
            Ok(())
        })
        .await?;
        self.set_capabilities(caps)
    }

    /// Takes the capabilities a CAPABILITY command returned; none is a protocol error.
    fn set_capabilities(&mut self, caps: Option<Capabilities>) -> Result<(), ImapError> {
        self.capabilities = caps.ok_or_else(|| ImapError::Protocol {
            command: "CAPABILITY".into(),
            detail: "no CAPABILITY data in the reply".into(),
        })?;
        tracing::debug!(capabilities = %self.capabilities, "logged in");
        Ok(())
    }

    /// Sends `command`, passes every untagged response to `on_data`, and returns when
    /// the tagged reply arrives: `Ok` for OK, an error naming the command otherwise.
    /// The timeout applies to each wait for data, so a long FETCH that keeps
    /// streaming is not cut off, while a silent server is.
    pub async fn exec<F>(&mut self, command: &str, on_data: F) -> Result<(), ImapError>
    where
        F: FnMut(&Response<'_>) -> Result<(), ImapError>,
    {
        self.exec_paced(command, on_data, || std::future::ready(()))
            .await
    }

    /// [`Session::exec`], awaiting `pace()` before each read: how a caller that hands
    /// responses to slower work (the Maildir writer) holds the server back without
    /// blocking the thread, which other connections of the pass share.
    pub async fn exec_paced<F, P, Fut>(
        &mut self,
        command: &str,
        mut on_data: F,
        pace: P,
    ) -> Result<(), ImapError>
    where
        F: FnMut(&Response<'_>) -> Result<(), ImapError>,
        P: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let commands = [command.to_owned()];
        self.exec_pipelined(
            &commands,
            1,
            |step| match step {
                Step::Sending(_) | Step::Done(_) => Ok(Next::Go),
                Step::Data(_, r, _) => on_data(r).map(|()| Next::Go),
            },
            pace,
        )
        .await
    }

    /// Sends `commands` in order with up to `depth` of them in flight at once (RFC 3501
    /// section 5.5: a client may send the next command before the previous completes),
    /// so the server never waits a round trip for the next one. `on` sees
    /// `Step::Sending(i)` just before command `i` goes out, every untagged response,
    /// and `Step::Done(i)` when command `i` succeeds; it may answer
    /// [`Next::StopSending`]. If a command fails, no further command is sent, the ones
    /// in flight are read to their end (the session stays usable), and the first
    /// failure is returned. An error from `on` returns at once, mid-response: the
    /// session is then not to be reused. `pace` is awaited before each read, as in
    /// [`Session::exec_paced`].
    pub async fn exec_pipelined<F, P, Fut>(
        &mut self,
        commands: &[String],
        depth: usize,
        mut on: F,
        mut pace: P,
    ) -> Result<(), ImapError>
    where
        F: FnMut(Step<'_, '_>) -> Result<Next, ImapError>,
        P: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        // (index, tag, name, when sent) of the commands in flight, oldest first.
        let mut in_flight: VecDeque<(usize, String, String, std::time::Instant)> = VecDeque::new();
        let mut next = 0;
        let mut sending = true;
        let mut failed: Option<ImapError> = None;
        let mut bye: Option<String> = None;
        let mut fetches: u64 = 0;
        loop {
            while sending
                && failed.is_none()
                && next < commands.len()
                && in_flight.len() < depth.max(1)
            {
                let command = &commands[next];
                if on(Step::Sending(next))? == Next::StopSending {
                    sending = false;
                    break;
                }
                let name = command_name(command);
                tracing::debug!(command = %loggable(command), "imap >");
                let sent = std::time::Instant::now();
                if in_flight.is_empty() {
                    self.wire.set_deadline(self.timeout);
                }
                let tag = match self.wire.send(command).await {
                    Ok(tag) => tag,
                    Err(e) => return Err(self.wire_error(e, &name, None)),
                };
                in_flight.push_back((next, tag, name, sent));
                next += 1;
            }
            let Some((oldest, _, name, _)) = in_flight.front() else {
                return failed.map_or(Ok(()), Err);
            };
            let (oldest, name) = (*oldest, name.clone());
            pace().await;
            let frame = match self.wire.read_frame().await {
                Ok(frame) => frame,
                Err(e) => return Err(self.wire_error(e, &name, bye)),
            };
            let (mut bytes, mut literals) = frame.split();
            let response = match repair_then_parse(&mut bytes) {
                Ok(response) => response,
                Err(detail) => {
                    // The frame's end is known, so the session stays in step: the
                    // command fails, and what is in flight is read to its end. A
                    // completion that cannot be read still completes its command.
                    let at = in_flight.iter().position(|(_, tag, ..)| {
                        bytes.starts_with(tag.as_bytes()) && bytes.get(tag.len()) == Some(&b' ')
                    });
                    let command = match at.and_then(|at| in_flight.remove(at)) {
                        Some((_, _, name, _)) => {
                            self.wire.set_deadline(self.timeout);
                            name
                        }
                        None => name,
                    };
                    failed.get_or_insert(ImapError::Protocol {
                        command,
                        detail: self.scrub.clean(&detail),
                    });
                    continue;
                }
            };
            match &response {
                Response::Done {
                    tag: t,
                    status,
                    outcome,
                } if in_flight.iter().any(|(_, tag, ..)| *tag == t.0) => {
                    // Servers may complete pipelined commands out of order.
                    let at = in_flight
                        .iter()
                        .position(|(_, tag, ..)| *tag == t.0)
                        .unwrap_or(0);
                    let Some((index, _, name, sent)) = in_flight.remove(at) else {
                        continue;
                    };
                    // The next oldest command gets a deadline of its own.
                    self.wire.set_deadline(self.timeout);
                    // The server's text: Dovecot puts its own timing there, which
                    // tells server time from transfer and client time in a slow pass.
                    tracing::debug!(
                        command = %name,
                        elapsed = ?sent.elapsed(),
                        said = %self.scrub.clean(outcome.information.as_deref().unwrap_or("")),
                        "imap <"
                    );
                    match self.tagged(status, &name, outcome) {
                        Ok(()) => {
                            if let Some(code) = super::uidplus::UidCode::from_outcome(outcome) {
                                self.uid_code = Some(code);
                            }
                            if on(Step::Done(index))? == Next::StopSending {
                                sending = false;
                            }
                        }
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => {
                    bye = Some(self.bye_text(outcome));
                }
                other => {
                    match other {
                        Response::MailboxData(MailboxDatum::Exists(n)) => self.exists = *n,
                        // MOVE reports its COPYUID untagged (RFC 6851).
                        Response::Data {
                            status: Status::Ok,
                            outcome,
                        } if super::uidplus::UidCode::from_outcome(outcome).is_some() => {
                            self.uid_code = super::uidplus::UidCode::from_outcome(outcome);
                        }
                        // RFC 3501 7.1: an alert is for the user to see.
                        Response::Data {
                            outcome:
                                imap_proto::Outcome {
                                    code: Some(ResponseCode::Alert),
                                    information,
                                    ..
                                },
                            ..
                        } => tracing::warn!(
                            host = %self.host,
                            "the server says: {}",
                            self.scrub.clean(information.as_deref().unwrap_or(""))
                        ),
                        Response::Fetch(..) => {
                            // Each message of the folder justifies a response or so per
                            // command (and some time): an endless listing does not.
                            fetches += 1;
                            let limit = commands.len() as u64
                                * (u64::from(self.exists) * 5 / 4 + FETCH_SLACK);
                            if fetches > limit {
                                return Err(ImapError::Protocol {
                                    command: name,
                                    detail: format!(
                                        "the server sent more than {limit} FETCH responses for a folder of {} messages; it is broken or hostile",
                                        self.exists
                                    ),
                                });
                            }
                            self.wire.extend_deadline(FETCH_CREDIT);
                        }
                        _ => {}
                    }
                    if on(Step::Data(oldest, other, &mut literals))? == Next::StopSending {
                        sending = false;
                    }
                }
            }
        }
    }

    /// A failure to read or write, as an error naming `command`; after a BYE, the
    /// BYE's text says more than the closed connection.
    fn wire_error(&self, error: WireError, command: &str, bye: Option<String>) -> ImapError {
        if let Some(text) = bye {
            return ImapError::Bye(text);
        }
        wire_error(error, command)
    }

    /// A tagged reply as a result: OK, or the NO/BAD naming the command, with the
    /// server's text made safe to show.
    fn tagged(
        &self,
        status: &Status,
        command: &str,
        outcome: &imap_proto::Outcome<'_>,
    ) -> Result<(), ImapError> {
        let text = || {
            self.scrub.clean(&outcome_text(
                outcome.code.as_ref(),
                outcome.information.as_deref(),
            ))
        };
        match status {
            Status::Ok => Ok(()),
            Status::No => Err(ImapError::No {
                command: command.to_owned(),
                text: text(),
            }),
            _ => Err(ImapError::Bad {
                command: command.to_owned(),
                text: text(),
            }),
        }
    }

    /// What a server said with its BYE, made safe to show.
    fn bye_text(&self, outcome: &imap_proto::Outcome<'_>) -> String {
        self.scrub
            .clean(outcome.information.as_deref().unwrap_or(""))
    }

    /// Every folder on the server (LIST "" "*"), with special-use attributes.
    pub async fn list(&mut self) -> Result<Vec<RemoteFolder>, ImapError> {
        let command = if self.capabilities.has("SPECIAL-USE") {
            "LIST \"\" \"*\" RETURN (SPECIAL-USE)"
        } else {
            "LIST \"\" \"*\""
        };
        let mut folders = Vec::new();
        self.exec(command, |r| {
            if let Response::MailboxData(MailboxDatum::List(list)) = r {
                let attributes = list
                    .name_attributes
                    .iter()
                    .map(|a| match a {
                        NameAttribute::NoInferiors => "\\Noinferiors".to_owned(),
                        NameAttribute::NoSelect => "\\Noselect".to_owned(),
                        NameAttribute::Marked => "\\Marked".to_owned(),
                        NameAttribute::Unmarked => "\\Unmarked".to_owned(),
                        NameAttribute::All => "\\All".to_owned(),
                        NameAttribute::Archive => "\\Archive".to_owned(),
                        NameAttribute::Drafts => "\\Drafts".to_owned(),
                        NameAttribute::Flagged => "\\Flagged".to_owned(),
                        NameAttribute::Junk => "\\Junk".to_owned(),
                        NameAttribute::Sent => "\\Sent".to_owned(),
                        NameAttribute::Trash => "\\Trash".to_owned(),
                        NameAttribute::Extension(e) => e.to_string(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                let name = list.name.to_string();
                if name.chars().any(char::is_control) {
                    // It could not be named in a command without injecting another.
                    tracing::warn!(
                        "the server listed a folder whose name holds a line break or another control character ({:?}); it is left out",
                        crate::server_text::shorten(&name)
                    );
                    return Ok(());
                }
                if folders.len() >= MAX_FOLDERS {
                    return Err(ImapError::Protocol {
                        command: "LIST".into(),
                        detail: format!("the server listed more than {MAX_FOLDERS} folders; it is broken or hostile"),
                    });
                }
                folders.push(RemoteFolder {
                    display: super::utf7::decode_lossy(&name),
                    name,
                    attributes,
                    delimiter: list.delimiter.as_deref().and_then(|d| d.chars().next()),
                });
            }
            Ok(())
        })
        .await?;
        Ok(folders)
    }

    /// STATUS of a folder: (messages, uidnext, uidvalidity).
    pub async fn status(
        &mut self,
        folder: &str,
    ) -> Result<(u32, Option<u32>, Option<u32>), ImapError> {
        let (mut messages, mut uidnext, mut uidvalidity) = (0, None, None);
        let command = format!("STATUS {} (MESSAGES UIDNEXT UIDVALIDITY)", quote(folder)?);
        self.exec(&command, |r| {
            if let Response::MailboxData(MailboxDatum::Status { status, .. }) = r {
                for s in status {
                    match s {
                        StatusAttribute::Messages(n) => messages = *n,
                        StatusAttribute::UidNext(n) => uidnext = Some(*n),
                        StatusAttribute::UidValidity(n) => uidvalidity = Some(*n),
                        _ => {}
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| no_mailbox(e, folder))?;
        Ok((messages, uidnext, uidvalidity))
    }

    /// Selects a folder read-write (EXAMINE would not let flags be pushed later), with
    /// CONDSTORE when the server offers it.
    pub async fn select(&mut self, folder: &str) -> Result<Selected, ImapError> {
        Ok(self.select_since(folder, None).await?.selected)
    }

    /// CAPABILITY and `ENABLE QRESYNC` in one round trip (see
    /// [`crate::imap::Client::authenticate_for_sync`]); QRESYNC counts as on only if
    /// the capabilities offer it and the ENABLE succeeded.
    pub(super) async fn capabilities_and_qresync(&mut self) -> Result<(), ImapError> {
        let commands = ["CAPABILITY".to_owned(), "ENABLE QRESYNC".to_owned()];
        let mut caps = None;
        let mut enabled = false;
        let result = self
            .exec_pipelined(
                &commands,
                2,
                |step| {
                    match step {
                        // A real CAPABILITY reply lists IMAP4rev1 (RFC 3501), which
                        // tells it from `* ENABLED QRESYNC` if a parser takes that for
                        // capabilities.
                        Step::Data(_, Response::Capabilities(c), _)
                            if c.iter()
                                .any(|c| matches!(c, imap_proto::Capability::Imap4rev1)) =>
                        {
                            caps = Some(Capabilities::from_proto(c));
                        }
                        Step::Done(1) => enabled = true,
                        _ => {}
                    }
                    Ok(Next::Go)
                },
                || std::future::ready(()),
            )
            .await;
        match result {
            // A server that lists ENABLE but refuses it: no QRESYNC, nothing worse.
            Err(ImapError::No { .. } | ImapError::Bad { .. }) if caps.is_some() => {}
            other => other?,
        }
        self.set_capabilities(caps)?;
        self.qresync_enabled = enabled && self.capabilities.has("QRESYNC");
        Ok(())
    }

    /// Turns QRESYNC on for this session if the server offers it (RFC 7162 requires
    /// ENABLE before the first SELECT that uses it).
    pub async fn enable_qresync(&mut self) -> Result<bool, ImapError> {
        if self.qresync_enabled {
            return Ok(true);
        }
        if !self.capabilities.has("QRESYNC") || !self.capabilities.has("ENABLE") {
            return Ok(false);
        }
        let mut enabled = false;
        self.exec("ENABLE QRESYNC", |r| {
            if let Response::Capabilities(c) = r {
                enabled = c.iter().any(|c| matches!(c, imap_proto::Capability::Atom(a) if a.eq_ignore_ascii_case("QRESYNC")));
            }
            Ok(())
        })
        .await?;
        // Servers answer `* ENABLED QRESYNC`, which imap-proto may not parse as
        // capabilities; the tagged OK is enough.
        let _ = enabled;
        self.qresync_enabled = true;
        Ok(true)
    }

    /// Selects a folder; with QRESYNC enabled and `since` = (UIDVALIDITY, MODSEQ) of
    /// the last sync, the server also reports what changed (FETCH) and what was
    /// expunged (VANISHED) since then, in the same round trip.
    pub async fn select_since(
        &mut self,
        folder: &str,
        since: Option<(u32, u64)>,
    ) -> Result<SelectChanges, ImapError> {
        self.select_with(folder, since, &[]).await
    }

    /// [`Session::select_since`], with `follow` sent right behind the SELECT: what a
    /// listing asks next anyway costs no round trip of its own. Their results are in
    /// [`SelectChanges::flags`] and [`SelectChanges::sizes`].
    pub async fn select_with(
        &mut self,
        folder: &str,
        since: Option<(u32, u64)>,
        follow: &[FollowUp],
    ) -> Result<SelectChanges, ImapError> {
        let mut commands = vec![self.select_command(folder, since)?];
        commands.extend(follow.iter().map(|f| match *f {
            FollowUp::Flags(changed_since) => self.flags_command(changed_since),
            FollowUp::SizesFrom(n) => format!("UID FETCH {n}:* (UID RFC822.SIZE)"),
        }));
        self.selected = None;
        self.exists = 0;
        let mut out = SelectChanges::default();
        let mut have_uidvalidity = false;
        let mut flags: Vec<RemoteEntry> = Vec::new();
        let mut sizes: Vec<(u32, u64)> = Vec::new();
        let mut done = vec![false; commands.len()];
        let flags_wanted = follow.iter().any(|f| matches!(f, FollowUp::Flags(_)));
        let sizes_from = follow.iter().find_map(|f| match f {
            FollowUp::SizesFrom(n) => Some(*n),
            FollowUp::Flags(_) => None,
        });
        let result = self
            .exec_pipelined(
                &commands,
                commands.len(),
                |step| {
                    let (i, r) = match step {
                        Step::Data(i, r, _) => (i, r),
                        Step::Done(i) => {
                            done[i] = true;
                            return Ok(Next::Go);
                        }
                        Step::Sending(_) => return Ok(Next::Go),
                    };
                    // FETCH responses are told apart by what they carry, not by which
                    // command is oldest in flight: a server may run pipelined FETCHes
                    // side by side (Dovecot does), so their responses come in any order.
                    if let Response::Fetch(_, attrs) = r {
                        if let Some(n) = sizes_from
                            && let Some((uid, size)) = size_of(attrs)
                            && uid >= n
                        {
                            // (`n:*` names the last message even when it is below `n`.)
                            sizes.push((uid, size));
                        }
                        if let Some(e) = listed(attrs)? {
                            if flags_wanted {
                                flags.push(e);
                            } else {
                                out.changed.push(e);
                            }
                        }
                        return Ok(Next::Go);
                    }
                    if i > 0 {
                        return Ok(Next::Go); // a follow-up's other data
                    }
                    match r {
                        Response::MailboxData(MailboxDatum::Exists(n)) => out.selected.exists = *n,
                        Response::Data { outcome, .. } => match outcome.code {
                            Some(ResponseCode::UidValidity(v)) => {
                                out.selected.uidvalidity = valid_uidvalidity(v)?;
                                have_uidvalidity = true;
                            }
                            Some(ResponseCode::UidNext(n)) => out.selected.uidnext = Some(n),
                            Some(ResponseCode::HighestModSeq(m)) => {
                                out.selected.highestmodseq = Some(m)
                            }
                            _ => {
                                // NOMODSEQ: the folder has no mod-sequences; stay without.
                            }
                        },
                        Response::Vanished {
                            earlier: true,
                            uids,
                        } => {
                            // Kept as ranges, never expanded: `1:4294967295` is 8 bytes
                            // here; what it means is decided against the records held.
                            if out.vanished.len() + uids.len() > MAX_VANISHED_RANGES {
                                return Err(ImapError::Protocol {
                                    command: "SELECT".into(),
                                    detail: format!(
                                        "the server reported more than {MAX_VANISHED_RANGES} ranges of expunged messages; it is broken or hostile"
                                    ),
                                });
                            }
                            out.vanished.extend(uids.iter().cloned());
                        }
                        _ => {}
                    }
                    Ok(Next::Go)
                },
                || std::future::ready(()),
            )
            .await;
        let with_modseq = (since.is_some() && self.qresync_enabled()) || self.has_condstore();
        match result {
            // A follow-up the server refused is only a round trip not saved: the
            // caller asks again on its own.
            Err(ImapError::No { .. } | ImapError::Bad { .. }) if done[0] => {}
            // A SELECT with CONDSTORE or QRESYNC refused by a server that offers them
            // (the folder exists, or the refusal would say so): select as a server
            // without them, and list every message's flags.
            // A busy or throttling server's refusal says nothing about CONDSTORE.
            Err(e @ (ImapError::No { .. } | ImapError::Bad { .. }))
                if with_modseq
                    && !says_no_mailbox(&e)
                    && !matches!(e.retry(), crate::retry::Retry::Later(_)) =>
            {
                self.give_up_modseq(&e);
                let mut follow: Vec<FollowUp> = follow
                    .iter()
                    .filter(|f| !matches!(f, FollowUp::Flags(_)))
                    .copied()
                    .collect();
                follow.insert(0, FollowUp::Flags(None));
                return Box::pin(self.select_with(folder, None, &follow)).await;
            }
            other => other.map_err(|e| no_mailbox(e, folder))?,
        }
        if !have_uidvalidity {
            return Err(ImapError::Protocol {
                command: "SELECT".into(),
                detail: format!("no UIDVALIDITY for {folder}; cannot sync it safely"),
            });
        }
        for (f, _) in follow.iter().zip(&done[1..]).filter(|(_, ok)| **ok) {
            match *f {
                FollowUp::Flags(changed_since) => {
                    out.flags = Some((changed_since, std::mem::take(&mut flags)))
                }
                FollowUp::SizesFrom(n) => out.sizes = Some((n, std::mem::take(&mut sizes))),
            }
        }
        self.selected = Some((folder.to_owned(), out.selected.uidvalidity));
        Ok(out)
    }

    /// The SELECT for `folder`: QRESYNC with `since` when enabled, else CONDSTORE when
    /// offered (read-write: EXAMINE would not let flags be pushed later).
    fn select_command(&self, folder: &str, since: Option<(u32, u64)>) -> Result<String, ImapError> {
        let name = quote(folder)?;
        Ok(match since {
            Some((uidvalidity, modseq)) if self.qresync_enabled() => {
                format!("SELECT {name} (QRESYNC ({uidvalidity} {modseq}))")
            }
            _ if self.has_condstore() => format!("SELECT {name} (CONDSTORE)"),
            _ => format!("SELECT {name}"),
        })
    }

    /// Makes `folder` the selected one, without a round trip if it already is; returns
    /// its UIDVALIDITY (which cannot change while it stays selected).
    pub async fn ensure_selected(&mut self, folder: &str) -> Result<u32, ImapError> {
        match &self.selected {
            Some((name, uidvalidity)) if name == folder => Ok(*uidvalidity),
            _ => Ok(self.select(folder).await?.uidvalidity),
        }
    }

    /// Makes `folder` the selected one, as [`Session::ensure_selected`], and checks
    /// that its UIDVALIDITY is still `uidvalidity`, the one its listing saw.
    pub async fn select_listed(&mut self, folder: &str, uidvalidity: u32) -> Result<(), ImapError> {
        if self.ensure_selected(folder).await? == uidvalidity {
            Ok(())
        } else {
            Err(ImapError::uidvalidity_changed())
        }
    }

    /// The folder selected now, if any.
    pub fn selected_folder(&self) -> Option<&str> {
        self.selected.as_ref().map(|(name, _)| name.as_str())
    }

    fn flags_command(&self, changed_since: Option<u64>) -> String {
        match changed_since {
            Some(m) if self.has_condstore() => {
                format!("UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE {m})")
            }
            _ => "UID FETCH 1:* (UID FLAGS)".to_owned(),
        }
    }

    /// UID and flags of messages: all of them, or those changed since `modseq`.
    pub async fn fetch_flags(
        &mut self,
        changed_since: Option<u64>,
    ) -> Result<Vec<RemoteEntry>, ImapError> {
        let command = self.flags_command(changed_since);
        let mut entries = Vec::new();
        let result = self
            .exec(&command, |r| {
                if let Response::Fetch(_, attrs) = r
                    && let Some(e) = listed(attrs)?
                {
                    entries.push(e);
                }
                Ok(())
            })
            .await;
        match result {
            // CHANGEDSINCE refused by a server that offers it: every message's flags
            // are a superset of what changed, so the listing stays complete.
            Err(e @ (ImapError::No { .. } | ImapError::Bad { .. }))
                if changed_since.is_some() && self.has_condstore() =>
            {
                self.give_up_modseq(&e);
                Box::pin(self.fetch_flags(None)).await
            }
            other => other.map(|()| entries),
        }
    }

    /// Every UID in the selected folder.
    pub async fn search_all_uids(&mut self) -> Result<Vec<u32>, ImapError> {
        self.search_uids("ALL").await
    }

    /// The UIDs of the selected folder's messages matching `criteria` (`UID SEARCH`),
    /// sorted.
    pub(super) async fn search_uids(&mut self, criteria: &str) -> Result<Vec<u32>, ImapError> {
        let mut uids = Vec::new();
        // One line holds every UID: up to 11 bytes each, for as many as were announced.
        self.wire
            .set_line_limit(self.exists as usize * 11 + wire::LINE_LIMIT);
        let result = self
            .exec(&format!("UID SEARCH {criteria}"), |r| {
                if let Response::MailboxData(MailboxDatum::Search(found)) = r {
                    uids.extend_from_slice(found);
                }
                Ok(())
            })
            .await;
        self.wire.set_line_limit(wire::LINE_LIMIT);
        result?;
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// RFC822.SIZE of the given messages, by UID (what servers keep in their index).
    pub async fn fetch_sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u64)>, ImapError> {
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(5000) {
            let command = format!("UID FETCH {} (UID RFC822.SIZE)", uid_set(chunk));
            // Only the answers asked for, once each: see `fetch_fingerprints`.
            let mut asked: HashSet<u32> = chunk.iter().copied().collect();
            self.exec(&command, |r| {
                if let Response::Fetch(_, attrs) = r
                    && let Some(found) = size_of(attrs)
                    && asked.remove(&found.0)
                {
                    out.push(found);
                }
                Ok(())
            })
            .await?;
        }
        Ok(out)
    }

    /// Size, INTERNALDATE, flags and Message-ID of the given messages (no bodies).
    pub async fn fetch_fingerprints(
        &mut self,
        uids: &[u32],
    ) -> Result<Vec<Fingerprinted>, ImapError> {
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(500) {
            let command = format!(
                "UID FETCH {} (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
                uid_set(chunk)
            );
            // A server reports other sessions' flag changes to the selected folder as
            // unsolicited FETCH responses, with the UID once QRESYNC is enabled: taken
            // for a fingerprint, a message already held would be fetched again and its
            // record replaced, leaving its first file without one. Only the UIDs asked
            // for count, each once, and only with the size asked for.
            let mut asked: HashSet<u32> = chunk.iter().copied().collect();
            self.exec(&command, |r| {
                if let Response::Fetch(_, attrs) = r {
                    let mut f = Fingerprinted {
                        uid: 0,
                        flags: Flags::empty(),
                        size: 0,
                        internaldate: 0,
                        message_id: None,
                    };
                    let (mut have_uid, mut have_size) = (false, false);
                    for a in attrs {
                        match a {
                            AttributeValue::Uid(u) => {
                                f.uid = valid_uid(*u)?;
                                have_uid = true;
                            }
                            AttributeValue::Flags(fl) => f.flags = parse_flags(fl),
                            AttributeValue::Rfc822Size(s) => {
                                f.size = u64::from(*s);
                                have_size = true;
                            }
                            AttributeValue::InternalDate(d) => {
                                f.internaldate = parse_internaldate(d).unwrap_or(0)
                            }
                            AttributeValue::BodySection { data: Some(d), .. } => {
                                f.message_id = crate::headers::message_id_from_header_block(d)
                            }
                            _ => {}
                        }
                    }
                    if have_uid && have_size && asked.remove(&f.uid) {
                        out.push(f);
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(out)
    }

    /// Downloads the given messages of `folder` whole, one UID FETCH per batch, handing
    /// each message to `on` as it arrives, so at most one message is held in memory at
    /// a time. The FETCH of the next batch is sent while the current one streams
    /// ([`FETCH_PIPELINE`]): at 20 ms from the server, waiting for each batch's end
    /// before asking for the next cost a round trip per batch. If `folder` is not
    /// selected, its SELECT goes out with the first FETCH; if the SELECT reports
    /// another UIDVALIDITY than `uidvalidity`, no message is handed over and the
    /// error says so. `on` sees `BodyStep::Sending(i)` before batch `i` is asked for,
    /// and may stop the download by returning an error; `pace` is awaited before each
    /// read (see [`Session::exec_paced`]).
    pub async fn fetch_bodies<F, P, Fut>(
        &mut self,
        folder: &str,
        uidvalidity: u32,
        batches: &[&[u32]],
        max_body: Option<u64>,
        mut on: F,
        pace: P,
    ) -> Result<(), ImapError>
    where
        F: FnMut(BodyStep) -> Result<(), ImapError>,
        P: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut commands = Vec::with_capacity(batches.len() + 1);
        let select = match &self.selected {
            Some((name, v)) if name == folder => {
                if *v != uidvalidity {
                    return Err(ImapError::uidvalidity_changed());
                }
                false
            }
            _ => {
                commands.push(self.select_command(folder, None)?);
                self.selected = None;
                self.exists = 0;
                true
            }
        };
        let first = usize::from(select);
        commands.extend(batches.iter().map(|uids| {
            format!(
                "UID FETCH {} (UID FLAGS INTERNALDATE BODY.PEEK[])",
                uid_set(uids)
            )
        }));
        // What the SELECT said: its UIDVALIDITY, and whether it completed.
        let mut seen_uidvalidity: Option<u32> = None;
        let mut selected = !select;
        let mismatch = |seen: Option<u32>| seen.is_some_and(|v| v != uidvalidity);
        self.wire.set_literal_limit(max_body);
        let result = self
            .exec_pipelined(
                &commands,
                FETCH_PIPELINE + first,
                |step| {
                    let r = match step {
                        Step::Sending(i) if i >= first => {
                            if mismatch(seen_uidvalidity) {
                                return Ok(Next::StopSending);
                            }
                            on(BodyStep::Sending(i - first))?;
                            return Ok(Next::Go);
                        }
                        Step::Sending(_) => return Ok(Next::Go),
                        Step::Done(i) => {
                            if i + 1 == first {
                                selected = true;
                            }
                            return Ok(Next::Go);
                        }
                        Step::Data(i, r, _) if i + 1 == first => {
                            if let Response::Data { outcome, .. } = r
                                && let Some(ResponseCode::UidValidity(v)) = outcome.code
                            {
                                seen_uidvalidity = Some(valid_uidvalidity(v)?);
                            }
                            return Ok(Next::Go);
                        }
                        Step::Data(_, r, literals) => (r, literals),
                    };
                    let (r, literals) = r;
                    // A FETCH only counts from a folder known to be the listed one (the
                    // SELECT's UIDVALIDITY comes before any FETCH it lets run).
                    if select && seen_uidvalidity != Some(uidvalidity) {
                        return Ok(Next::StopSending);
                    }
                    if let Response::Fetch(_, attrs) = r {
                        let mut uid = None;
                        let mut flags = Flags::empty();
                        let mut internaldate = 0;
                        let mut body = None;
                        for a in attrs {
                            match a {
                                AttributeValue::Uid(u) => uid = Some(*u),
                                AttributeValue::Flags(f) => flags = parse_flags(f),
                                AttributeValue::InternalDate(d) => {
                                    internaldate = parse_internaldate(d).unwrap_or(0)
                                }
                                AttributeValue::BodySection {
                                    section: None,
                                    data,
                                    ..
                                }
                                | AttributeValue::Rfc822(data) => {
                                    body = Some(match data.as_deref() {
                                        // A large body was read into a buffer of its
                                        // own: it is handed on as it is, not copied.
                                        Some(d) => literals.take(d).unwrap_or_else(|| d.to_vec()),
                                        None => Vec::new(),
                                    })
                                }
                                _ => {}
                            }
                        }
                        if !literals.is_empty() {
                            return Err(ImapError::Protocol {
                                command: "UID FETCH".into(),
                                detail: "a FETCH response carried data where no message body was asked for".into(),
                            });
                        }
                        if let (Some(uid), Some(body)) = (uid, body) {
                            let uid = valid_uid(uid)?;
                            on(BodyStep::Message(FetchedMessage {
                                uid,
                                flags,
                                internaldate,
                                body,
                            }))?;
                        }
                    }
                    Ok(Next::Go)
                },
                pace,
            )
            .await;
        self.wire.set_literal_limit(None);
        if select
            && selected
            && let Some(v) = seen_uidvalidity
        {
            self.selected = Some((folder.to_owned(), v));
        }
        result?;
        match seen_uidvalidity {
            Some(v) if v != uidvalidity => Err(ImapError::uidvalidity_changed()),
            None if select => Err(ImapError::Protocol {
                command: "SELECT".into(),
                detail: format!("no UIDVALIDITY for {folder}; cannot sync it safely"),
            }),
            _ => Ok(()),
        }
    }

    /// Waits in IDLE (RFC 2177) on the selected folder until the server reports a
    /// change, `timeout` passes (re-issue IDLE before the server's own limit), or
    /// `cancel` completes; then ends the IDLE with DONE. The caller checks the IDLE
    /// capability first.
    pub async fn idle<C>(&mut self, timeout: Duration, cancel: C) -> Result<IdleEnd, ImapError>
    where
        C: std::future::Future<Output = ()>,
    {
        tracing::debug!(command = "IDLE", "imap >");
        self.wire.set_deadline(self.timeout);
        let tag = self
            .wire
            .send("IDLE")
            .await
            .map_err(|e| wire_error(e, "IDLE"))?;
        // The server acknowledges with a continuation, or refuses with a tagged NO/BAD.
        loop {
            let step = self
                .read_one("IDLE", |s, r| match r {
                    Response::Continue(_) => Some(Ok(())),
                    Response::Done {
                        tag: t,
                        status,
                        outcome,
                    } if t.0 == tag => Some(s.tagged(status, "IDLE", outcome).and(Err(
                        ImapError::Protocol {
                            command: "IDLE".into(),
                            detail: "the server ended IDLE before it began".into(),
                        },
                    ))),
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => Some(Err(ImapError::Bye(s.bye_text(outcome)))),
                    _ => None,
                })
                .await?;
            match step {
                Some(Ok(())) => break,
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::pin!(cancel);
        // No deadline while idling: the wait is the point. A response that begins is
        // read whole, within the usual limits.
        self.wire.clear_deadline();
        let end = loop {
            enum Woke {
                Data(Result<(), WireError>),
                Timeout,
                Cancelled,
            }
            let woke = tokio::select! {
                r = self.wire.wait_for_data() => Woke::Data(r),
                _ = tokio::time::sleep_until(deadline) => Woke::Timeout,
                _ = &mut cancel => Woke::Cancelled,
            };
            match woke {
                Woke::Timeout => break IdleEnd::Timeout,
                Woke::Cancelled => break IdleEnd::Cancelled,
                Woke::Data(r) => r.map_err(|e| wire_error(e, "IDLE"))?,
            }
            let step = self
                .read_one("IDLE", |s, r| match r {
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => Some(Err(ImapError::Bye(s.bye_text(outcome)))),
                    Response::MailboxData(MailboxDatum::Exists(_))
                    | Response::Expunge(_)
                    | Response::Vanished { .. }
                    | Response::Fetch(..) => Some(Ok(())),
                    // RECENT, keep-alive OKs ("* OK Still here"): keep waiting.
                    _ => None,
                })
                .await?;
            match step {
                Some(Ok(())) => break IdleEnd::Changed,
                Some(Err(e)) => return Err(e),
                None => {}
            }
        };
        // End the IDLE: DONE, then the tagged reply (more untagged data may come first).
        self.wire.set_deadline(self.timeout);
        self.wire
            .send_untagged("DONE")
            .await
            .map_err(|e| wire_error(e, "DONE"))?;
        loop {
            let step = self
                .read_one("IDLE", |s, r| match r {
                    Response::Done {
                        tag: t,
                        status,
                        outcome,
                    } if t.0 == tag => Some(s.tagged(status, "IDLE", outcome).map(|()| end)),
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => Some(Err(ImapError::Bye(s.bye_text(outcome)))),
                    _ => None,
                })
                .await?;
            if let Some(result) = step {
                return result;
            }
        }
    }

    /// One whole response, handed to `f` with the session (for its scrubber).
    pub(super) async fn read_one<T>(
        &mut self,
        command: &str,
        f: impl FnOnce(&Session, &Response<'_>) -> T,
    ) -> Result<T, ImapError> {
        let frame = self
            .wire
            .read_frame()
            .await
            .map_err(|e| wire_error(e, command))?;
        let (mut bytes, _) = frame.split();
        let response = repair_then_parse(&mut bytes).map_err(|detail| ImapError::Protocol {
            command: command.to_owned(),
            detail: self.scrub.clean(&detail),
        })?;
        Ok(f(self, &response))
    }

    pub async fn noop(&mut self) -> Result<(), ImapError> {
        self.exec("NOOP", |_| Ok(())).await
    }

    /// Logs out politely; errors are irrelevant at that point.
    pub async fn logout(mut self) {
        let _ = self.exec("LOGOUT", |_| Ok(())).await;
    }

    pub fn qresync_enabled(&self) -> bool {
        self.qresync_enabled && !modseq_refused(&self.host)
    }
}

/// UID and RFC822.SIZE from a FETCH response.
fn size_of(attrs: &[AttributeValue<'_>]) -> Option<(u32, u64)> {
    let mut uid = None;
    let mut size = None;
    for a in attrs {
        match a {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::Rfc822Size(s) => size = Some(u64::from(*s)),
            _ => {}
        }
    }
    Some((uid?, size?))
}

/// UID and flags from a FETCH response of a flags listing. A FETCH without UID is
/// an unsolicited flag update from another session (the next listing covers it), and
/// one with a size but no flags answers the sizes asked for beside the listing. A
/// message listed without its flags is an error: taken as absent, it would be removed.
fn listed(attrs: &[AttributeValue<'_>]) -> Result<Option<RemoteEntry>, ImapError> {
    let mut uid = None;
    let mut flags = None;
    let mut sized = false;
    for a in attrs {
        match a {
            AttributeValue::Uid(u) => uid = Some(valid_uid(*u)?),
            AttributeValue::Flags(f) => flags = Some(parse_flags(f)),
            AttributeValue::Rfc822Size(_) => sized = true,
            _ => {}
        }
    }
    match (uid, flags) {
        (Some(uid), Some(flags)) => Ok(Some(RemoteEntry { uid, flags })),
        (Some(uid), None) if !sized => Err(ImapError::Protocol {
            command: "UID FETCH".into(),
            detail: format!("the server listed UID {uid} without its flags"),
        }),
        _ => Ok(None),
    }
}

/// A UID as the server sent it; 0 is not one (RFC 3501 2.3.1.1).
fn valid_uid(uid: u32) -> Result<u32, ImapError> {
    if uid == 0 {
        return Err(ImapError::Protocol {
            command: "UID FETCH".into(),
            detail: "the server sent UID 0, which RFC 3501 forbids".into(),
        });
    }
    Ok(uid)
}

/// A UIDVALIDITY as the server sent it; 0 is not one (RFC 3501 2.3.1.1).
fn valid_uidvalidity(v: u32) -> Result<u32, ImapError> {
    if v == 0 {
        return Err(ImapError::Protocol {
            command: "SELECT".into(),
            detail: "the server sent UIDVALIDITY 0, which RFC 3501 forbids; the folder cannot be synced safely".into(),
        });
    }
    Ok(v)
}

fn parse_flags(flags: &[std::borrow::Cow<'_, str>]) -> Flags {
    let mut out = Flags::empty();
    for f in flags {
        if let Some(flag) = Flags::from_imap(f) {
            out.insert(flag);
        }
    }
    out
}

fn outcome_text(code: Option<&ResponseCode<'_>>, information: Option<&str>) -> String {
    let info = information.unwrap_or("").to_owned();
    match code {
        Some(ResponseCode::TryCreate) => format!("[TRYCREATE] {info}"),
        Some(ResponseCode::Alert) => format!("[ALERT] {info}"),
        Some(ResponseCode::Parse) => format!("[PARSE] {info}"),
        _ => info,
    }
}

fn no_mailbox(error: ImapError, folder: &str) -> ImapError {
    if says_no_mailbox(&error) {
        ImapError::NoMailbox(folder.to_owned())
    } else {
        error
    }
}

/// Whether a NO says the folder does not exist.
fn says_no_mailbox(error: &ImapError) -> bool {
    match error {
        ImapError::No { text, .. } => {
            let t = text.to_ascii_lowercase();
            t.contains("nonexistent")
                || t.contains("doesn't exist")
                || t.contains("does not exist")
                || t.contains("not found")
                || t.contains("unknown mailbox")
        }
        _ => false,
    }
}

fn command_name(command: &str) -> String {
    let mut words = command.split_whitespace();
    match (words.next(), words.next()) {
        (Some(w), Some(second)) if w.eq_ignore_ascii_case("UID") => format!("UID {second}"),
        (Some(w), _) => w.to_owned(),
        _ => String::new(),
    }
}

/// A command as it may appear in logs: AUTHENTICATE lines carry credentials.
fn loggable(command: &str) -> String {
    if command
        .get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("AUTHENTICATE"))
    {
        "AUTHENTICATE /* REDACTED */".to_owned()
    } else if command.len() > 200 {
        format!("{}…", &command[..command.floor_char_boundary(200)])
    } else {
        command.to_owned()
    }
}

/// A read or write failure as the error a caller sees.
pub(super) fn wire_error(error: WireError, command: &str) -> ImapError {
    let command = command.to_owned();
    match error {
        WireError::Io(e) => ImapError::Io(e),
        WireError::Closed { partial: false } => ImapError::ConnectionLost(command),
        WireError::Closed { partial: true } => {
            ImapError::ConnectionLost(format!("{command}, in the middle of a response"))
        }
        WireError::Idle(after) => ImapError::Timeout { command, after },
        WireError::Deadline(after) => ImapError::Stalled { command, after },
        WireError::LineTooLong(limit) => ImapError::Protocol {
            command,
            detail: format!(
                "a response line longer than {} KiB; the server is broken or hostile",
                limit / 1024
            ),
        },
        WireError::LiteralBeyond { size, limit } => ImapError::Protocol {
            command,
            detail: format!(
                "the server sent {size} bytes for messages whose listed sizes allow at most {limit}; it is broken or hostile"
            ),
        },
        WireError::LiteralTooLarge(size) => ImapError::Protocol {
            command,
            detail: format!(
                "the server announced {size} bytes of data, more than the {} MiB accepted",
                wire::MAX_LITERAL >> 20
            ),
        },
    }
}

/// A whole response, with its flag lists repaired ([`repair_flags`]) and parsed
/// once; anything unreadable is an error with a short excerpt, never an absence.
pub(super) fn repair_then_parse(bytes: &mut [u8]) -> Result<Response<'_>, String> {
    repair_flags(bytes);
    let bytes = &*bytes;
    match Response::parse(bytes) {
        Ok(([], response)) => Ok(response),
        _ => Err(format!("unreadable response: {}", wire::excerpt(bytes))),
    }
}

/// In every `FLAGS (…)` list outside literals, replaces the bytes a flag may not hold
/// by `_`, in place (same length, so large literals' places stay where they were).
/// Some servers let users create keywords with `%`, `*`, `"` or non-UTF-8 bytes, which
/// imap-proto refuses, or reads as a FETCH without FLAGS (the message would count as
/// gone); keywords are not synced, and the UID and system flags are what matters.
fn repair_flags(bytes: &mut [u8]) {
    let mut i = 0;
    while i < bytes.len() {
        // Skip a literal's bytes: `{n}\r\n` then n bytes.
        if bytes[i] == b'\n'
            && let Some(Ok(n)) = wire::literal_at_end(&bytes[..=i])
        {
            i = i.saturating_add(1).saturating_add(n as usize);
            continue;
        }
        if !bytes[i..]
            .get(..7)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"FLAGS ("))
        {
            i += 1;
            continue;
        }
        let start = i + 7;
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b')' || b == b'\r' || b == b'\n')
            .map_or(bytes.len(), |p| start + p);
        let mut token_start = start;
        for j in start..=end {
            if j < end && bytes[j] != b' ' {
                continue;
            }
            let token = &mut bytes[token_start..j];
            if token != b"\\*" {
                for (k, b) in token.iter_mut().enumerate() {
                    let allowed = (k == 0 && *b == b'\\')
                        || (b.is_ascii_graphic() && !b"(){%*\"\\".contains(b));
                    if !allowed {
                        *b = b'_';
                    }
                }
            }
            token_start = j + 1;
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    //! The pipelining machinery against a scripted server on an in-memory stream: what
    //! a real Dovecot cannot be made to do on demand (answer out of order, refuse one
    //! command of several in flight).
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A server that greets, accepts any LOGIN, and answers each command line with
    /// `answer(command)` (the tag is prepended). With `hold`, it reads that many
    /// commands before answering them, in reverse order.
    fn server(
        stream: tokio::io::DuplexStream,
        hold: usize,
        answer: fn(&str) -> Vec<String>,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(stream);
            let mut lines = BufReader::new(r).lines();
            let mut seen = Vec::new();
            w.write_all(b"* OK ready\r\n").await.unwrap();
            let mut held: Vec<(String, String)> = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let (tag, command) = line.split_once(' ').unwrap_or((&line, ""));
                seen.push(command.to_owned());
                if command.starts_with("LOGIN") {
                    w.write_all(format!("{tag} OK logged in\r\n").as_bytes())
                        .await
                        .unwrap();
                    continue;
                }
                held.push((tag.to_owned(), command.to_owned()));
                if held.len() < hold.max(1) {
                    continue;
                }
                for (tag, command) in held.drain(..).rev() {
                    for l in answer(&command) {
                        let l = l.replace("{tag}", &tag);
                        w.write_all(format!("{l}\r\n").as_bytes()).await.unwrap();
                    }
                }
                if command.starts_with("LOGOUT") {
                    break;
                }
            }
            seen
        })
    }

    async fn session(stream: tokio::io::DuplexStream) -> Session {
        let mut wire = Wire::new(Box::new(stream), Duration::from_secs(5));
        wire.read_frame().await.unwrap(); // the greeting
        let mut s = Session::new(wire, "fake".into(), Duration::from_secs(5));
        s.exec("LOGIN \"u\" \"p\"", |_| Ok(())).await.unwrap();
        s
    }

    fn answer(command: &str) -> Vec<String> {
        if command.starts_with("BOGUS") {
            vec!["{tag} BAD no such command".into()]
        } else if let Some(uid) = command.strip_prefix("UID FETCH ") {
            let uid = uid.split(' ').next().unwrap_or("0");
            vec![
                format!("* {uid} FETCH (UID {uid} FLAGS (\\Seen))"),
                "{tag} OK done".into(),
            ]
        } else {
            vec!["{tag} OK done".into()]
        }
    }

    #[tokio::test]
    async fn a_refused_command_is_reported_and_the_rest_is_read() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let seen = server(theirs, 1, answer);
        let mut s = session(ours).await;
        let commands = ["NOOP", "BOGUS", "NOOP", "NOOP", "NOOP"].map(String::from);
        let mut sent = Vec::new();
        let mut done = Vec::new();
        let result = s
            .exec_pipelined(
                &commands,
                3,
                |step| {
                    match step {
                        Step::Sending(i) => sent.push(i),
                        Step::Done(i) => done.push(i),
                        Step::Data(..) => {}
                    }
                    Ok(Next::Go)
                },
                || std::future::ready(()),
            )
            .await;
        assert!(
            matches!(&result, Err(ImapError::Bad { command, .. }) if command == "BOGUS"),
            "{result:?}"
        );
        // 0-2 went out at once, 3 when 0 completed; after BOGUS failed, nothing more.
        assert_eq!(sent, vec![0, 1, 2, 3]);
        // The ones in flight behind it were read to their end before it returned.
        assert_eq!(done, vec![0, 2, 3]);
        // Every answer was read: the session goes on in step.
        s.exec("NOOP", |_| Ok(())).await.unwrap();
        s.logout().await;
        let seen = seen.await.unwrap();
        assert_eq!(
            seen,
            [
                "LOGIN \"u\" \"p\"",
                "NOOP",
                "BOGUS",
                "NOOP",
                "NOOP",
                "NOOP",
                "LOGOUT"
            ]
        );
    }

    #[tokio::test]
    async fn answers_out_of_order_complete_their_own_commands() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        // The server takes both FETCHes, then answers the second first.
        let seen = server(theirs, 2, answer);
        let mut s = session(ours).await;
        let commands = ["UID FETCH 7 (UID FLAGS)", "UID FETCH 9 (UID FLAGS)"].map(String::from);
        let mut uids = Vec::new();
        let mut done = Vec::new();
        s.exec_pipelined(
            &commands,
            2,
            |step| {
                match step {
                    Step::Data(_, Response::Fetch(_, attrs), _) => {
                        uids.extend(listed(attrs).unwrap().map(|e| e.uid));
                    }
                    Step::Done(i) => done.push(i),
                    _ => {}
                }
                Ok(Next::Go)
            },
            || std::future::ready(()),
        )
        .await
        .unwrap();
        assert_eq!(uids, vec![9, 7]);
        assert_eq!(done, vec![1, 0]);
        drop(s);
        let seen = seen.await.unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    /// A server that greets and answers each command with what `script` returns for
    /// it (raw bytes, `{tag}` replaced), then keeps the connection open.
    fn scripted(
        host: &str,
        caps: &[&str],
        script: impl Fn(&str) -> Vec<u8> + Send + 'static,
    ) -> impl std::future::Future<Output = Session> {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(theirs);
            let mut lines = BufReader::new(r).lines();
            if w.write_all(b"* OK ready\r\n").await.is_err() {
                return;
            }
            while let Ok(Some(line)) = lines.next_line().await {
                let (tag, command) = line.split_once(' ').unwrap_or((&line, ""));
                let answer = script(command);
                let mut out = Vec::with_capacity(answer.len());
                let mut rest = &answer[..];
                while let Some(at) = rest.windows(5).position(|w| w == b"{tag}") {
                    out.extend_from_slice(&rest[..at]);
                    out.extend_from_slice(tag.as_bytes());
                    rest = &rest[at + 5..];
                }
                out.extend_from_slice(rest);
                if w.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        let host = host.to_owned();
        let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        async move {
            let mut wire = Wire::new(Box::new(ours), Duration::from_secs(5));
            wire.read_frame().await.unwrap();
            let mut s = Session::new(wire, host, Duration::from_secs(5));
            s.capabilities = Capabilities::from_names(caps.iter().map(String::as_str));
            s
        }
    }

    /// SELECT's answer for a folder of `exists` messages at UIDVALIDITY `uidvalidity`.
    fn selected(exists: u32, uidvalidity: u32) -> Vec<u8> {
        format!(
            "* {exists} EXISTS\r\n* OK [UIDVALIDITY {uidvalidity}] ok\r\n* OK [UIDNEXT 100] ok\r\n{{tag}} OK [READ-WRITE] done\r\n"
        )
        .into_bytes()
    }

    /// Dovecot with QRESYNC enabled tells a session of another session's flag change
    /// with an unsolicited `FETCH (UID n FLAGS ...)`: arriving during the fingerprint
    /// fetch, it made a message already held look new, which was downloaded again and
    /// took over its record, leaving the first file without one (the kill test's
    /// extra copies).
    #[tokio::test]
    async fn unsolicited_flag_changes_are_not_fingerprints_or_sizes() {
        let mut s = scripted("qresync.test", &["IMAP4rev1"], |c| {
            if c.starts_with("SELECT") {
                selected(3, 5)
            } else if c.starts_with("UID FETCH 40 (UID FLAGS INTERNALDATE") {
                let mut a = b"* 1 FETCH (UID 35 FLAGS (\\Seen) MODSEQ (9))\r\n".to_vec();
                a.extend_from_slice(b"* 3 FETCH (UID 40 FLAGS () INTERNALDATE \"01-Jan-2024 00:00:00 +0000\" RFC822.SIZE 12 BODY[HEADER.FIELDS (MESSAGE-ID)] {19}\r\nMessage-ID: <a@b>\r\n)\r\n");
                a.extend_from_slice(b"* 3 FETCH (UID 40 FLAGS (\\Flagged) MODSEQ (10))\r\n");
                a.extend_from_slice(b"{tag} OK done\r\n");
                a
            } else if c.starts_with("UID FETCH 40 (UID RFC822.SIZE)") {
                let mut a = b"* 3 FETCH (UID 40 RFC822.SIZE 12)\r\n".to_vec();
                a.extend_from_slice(b"* 2 FETCH (UID 38 RFC822.SIZE 7)\r\n");
                a.extend_from_slice(b"* 3 FETCH (UID 40 RFC822.SIZE 12)\r\n");
                a.extend_from_slice(b"{tag} OK done\r\n");
                a
            } else {
                b"{tag} OK done\r\n".to_vec()
            }
        })
        .await;
        s.select("INBOX").await.unwrap();
        let prints = s.fetch_fingerprints(&[40]).await.unwrap();
        let uids: Vec<(u32, u64)> = prints.iter().map(|p| (p.uid, p.size)).collect();
        assert_eq!(uids, vec![(40, 12)]);
        assert_eq!(prints[0].message_id.as_deref(), Some("a@b"));
        assert_eq!(s.fetch_sizes(&[40]).await.unwrap(), vec![(40, 12)]);
    }

    #[tokio::test]
    async fn a_keyword_the_parser_refuses_does_not_hide_the_message() {
        let mut s = scripted("odd-keywords.test", &["IMAP4rev1"], |c| {
            if c.starts_with("SELECT") {
                selected(3, 5)
            } else if c.starts_with("UID FETCH 1:* (UID FLAGS)") {
                let mut a = b"* 1 FETCH (UID 1 FLAGS (\\Seen foo%bar*))\r\n".to_vec();
                a.extend_from_slice(b"* 2 FETCH (UID 2 FLAGS ($La\"bel \\Flagged))\r\n");
                a.extend_from_slice(b"* 3 FETCH (UID 3 FLAGS (caf\xff\xfe \\Answered))\r\n");
                a.extend_from_slice(b"{tag} OK done\r\n");
                a
            } else {
                b"{tag} OK done\r\n".to_vec()
            }
        })
        .await;
        s.select("INBOX").await.unwrap();
        let entries = s.fetch_flags(None).await.unwrap();
        let got: Vec<(u32, Flags)> = entries.iter().map(|e| (e.uid, e.flags)).collect();
        assert_eq!(
            got,
            vec![
                (1, Flags::from_imap("\\Seen").unwrap()),
                (2, Flags::from_imap("\\Flagged").unwrap()),
                (3, Flags::from_imap("\\Answered").unwrap()),
            ]
        );
    }

    #[tokio::test]
    async fn a_listing_that_cannot_be_read_fails_and_never_drops_a_message() {
        for broken in [
            &b"* 1 FETCH (UID 1 FLAGS (\\Seen a)b))\r\n"[..], // unrepairable
            b"* 1 FETCH (UID 1)\r\n",                         // no flags
            b"* 1 FETCH (UID 0 FLAGS (\\Seen))\r\n",          // UID 0
        ] {
            let broken = broken.to_vec();
            let mut s = scripted("broken-listing.test", &["IMAP4rev1"], move |c| {
                if c.starts_with("SELECT") {
                    selected(2, 5)
                } else if c.starts_with("UID FETCH") {
                    let mut a = b"* 2 FETCH (UID 2 FLAGS ())\r\n".to_vec();
                    a.extend_from_slice(&broken);
                    a.extend_from_slice(b"{tag} OK done\r\n");
                    a
                } else {
                    b"{tag} OK done\r\n".to_vec()
                }
            })
            .await;
            s.select("INBOX").await.unwrap();
            let result = s.fetch_flags(None).await;
            assert!(
                matches!(&result, Err(ImapError::Protocol { .. })),
                "{result:?}"
            );
        }
    }

    #[tokio::test]
    async fn uidvalidity_zero_is_a_protocol_error() {
        let mut s = scripted("zero.test", &["IMAP4rev1"], |c| {
            if c.starts_with("SELECT") {
                selected(2, 0)
            } else {
                b"{tag} OK done\r\n".to_vec()
            }
        })
        .await;
        let e = s.select("INBOX").await.unwrap_err();
        assert!(e.to_string().contains("UIDVALIDITY 0"), "{e}");
    }

    #[tokio::test]
    async fn vanished_ranges_are_kept_as_ranges() {
        let mut s = scripted(
            "vanished.test",
            &["IMAP4rev1", "CONDSTORE", "QRESYNC", "ENABLE"],
            |c| {
                if c.starts_with("SELECT") {
                    // One 4.6 KB line naming nearly every UID there is, many times over.
                    let mut a = b"* VANISHED (EARLIER) 1:4294967295".to_vec();
                    for i in 0..400u32 {
                        a.extend_from_slice(format!(",{}:4294967295", i * 7 + 2).as_bytes());
                    }
                    a.extend_from_slice(b"\r\n");
                    a.extend_from_slice(&selected(2, 5));
                    a
                } else {
                    b"{tag} OK done\r\n".to_vec()
                }
            },
        )
        .await;
        s.qresync_enabled = true;
        let changes = s.select_since("INBOX", Some((5, 10))).await.unwrap();
        assert_eq!(changes.vanished.len(), 401);
        let gone = super::super::listing::known_within(&changes.vanished, [3, 9, 4_000_000_000]);
        assert_eq!(gone, vec![3, 9, 4_000_000_000]);
    }

    #[tokio::test]
    async fn an_endless_listing_is_cut_at_what_select_announced() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(theirs);
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"* OK ready\r\n").await.unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                let tag = line.split(' ').next().unwrap_or("").to_owned();
                if line.contains("SELECT") {
                    let a = String::from_utf8(selected(2, 5))
                        .unwrap()
                        .replace("{tag}", &tag);
                    w.write_all(a.as_bytes()).await.unwrap();
                } else {
                    let mut uid = 1u64;
                    loop {
                        let l = format!("* 1 FETCH (UID {uid} FLAGS ())\r\n");
                        if w.write_all(l.as_bytes()).await.is_err() {
                            return;
                        }
                        uid += 1;
                    }
                }
            }
        });
        let mut wire = Wire::new(Box::new(ours), Duration::from_secs(5));
        wire.read_frame().await.unwrap();
        let mut s = Session::new(wire, "endless.test".into(), Duration::from_secs(5));
        s.select("INBOX").await.unwrap();
        let e = s.fetch_flags(None).await.unwrap_err();
        assert!(
            e.to_string().contains("more than 1002 FETCH responses"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn endless_untagged_data_ends_at_the_deadline() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let (_r, mut w) = tokio::io::split(theirs);
            w.write_all(b"* OK ready\r\n").await.unwrap();
            while w.write_all(b"* OK still here\r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let mut wire = Wire::new(Box::new(ours), Duration::from_millis(300));
        wire.read_frame().await.unwrap();
        let mut s = Session::new(wire, "chatty.test".into(), Duration::from_millis(300));
        let e = s.noop().await.unwrap_err();
        assert!(matches!(e, ImapError::Stalled { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn refused_changedsince_falls_back_to_every_message() {
        let mut s = scripted("refuses-changedsince.test", &["IMAP4rev1", "CONDSTORE"], |c| {
            if c.starts_with("SELECT") {
                selected(2, 5)
            } else if c.contains("CHANGEDSINCE") {
                b"{tag} BAD CHANGEDSINCE not supported\r\n".to_vec()
            } else if c.starts_with("UID FETCH 1:* (UID FLAGS)") {
                b"* 1 FETCH (UID 1 FLAGS ())\r\n* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n{tag} OK done\r\n"
                    .to_vec()
            } else {
                b"{tag} OK done\r\n".to_vec()
            }
        })
        .await;
        s.select("INBOX").await.unwrap();
        let entries = s.fetch_flags(Some(12)).await.unwrap();
        assert_eq!(entries.len(), 2);
        assert!(!s.has_condstore(), "remembered for this host");
    }

    #[tokio::test]
    async fn refused_qresync_select_selects_without() {
        let mut s = scripted(
            "refuses-qresync.test",
            &["IMAP4rev1", "CONDSTORE", "QRESYNC"],
            |c| {
                if c.starts_with("SELECT") && c.contains("QRESYNC") {
                    b"{tag} BAD unknown parameter\r\n".to_vec()
                } else if c.starts_with("SELECT") {
                    selected(1, 5)
                } else if c.starts_with("UID FETCH 1:* (UID FLAGS)") {
                    b"* 1 FETCH (UID 1 FLAGS ())\r\n{tag} OK done\r\n".to_vec()
                } else {
                    b"{tag} BAD no\r\n".to_vec()
                }
            },
        )
        .await;
        s.qresync_enabled = true;
        let changes = s.select_since("INBOX", Some((5, 10))).await.unwrap();
        assert_eq!(changes.selected.uidvalidity, 5);
        assert!(!s.qresync_enabled() && !s.has_condstore());
        let (since, entries) = changes.flags.expect("a full listing came with it");
        assert_eq!((since, entries.len()), (None, 1));
    }

    #[tokio::test]
    async fn a_credential_echoed_by_the_server_is_not_repeated() {
        let token = "ya29.a0AfH6SMBx-very-secret-access-token";
        let echoed = format!("{{tag}} BAD invalid token {token}\r\n").into_bytes();
        let alert = format!("* OK [ALERT] your token {token} expired\r\n");
        let mut s = scripted("echo.test", &["IMAP4rev1"], move |c| {
            if c.starts_with("NOOP") {
                let mut a = alert.clone().into_bytes();
                a.extend_from_slice(&echoed);
                a
            } else {
                b"{tag} OK done\r\n".to_vec()
            }
        })
        .await;
        s.set_scrubber(Scrubber::new(vec![Secret::new(token)]));
        let e = s.noop().await.unwrap_err().to_string();
        assert!(!e.contains("very-secret"), "{e}");
        assert!(e.contains("[REDACTED]"), "{e}");
    }

    #[tokio::test]
    async fn a_ten_megabyte_line_fails_the_command() {
        let mut s = scripted("long-line.test", &["IMAP4rev1"], |c| {
            if c.starts_with("NOOP") {
                vec![b'x'; 10 << 20]
            } else {
                b"{tag} OK done\r\n".to_vec()
            }
        })
        .await;
        let e = s.noop().await.unwrap_err().to_string();
        assert!(e.contains("longer than 1024 KiB"), "{e}");
    }
}
