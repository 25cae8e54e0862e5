//! A logged-in IMAP session and the commands sync needs. Every command goes through
//! [`Session::exec`], which applies the timeout, hands untagged data to the caller,
//! and turns the tagged reply (and any BYE) into a typed result.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use async_imap::imap_proto::{
    self, AttributeValue, MailboxDatum, NameAttribute, RequestId, Response, ResponseCode, Status,
    StatusAttribute,
};
use tokio::time::timeout;

use super::connect::BoxStream;
use super::error::ImapError;
use super::{parse_internaldate, quote, uid_set};
use crate::config::roles::RemoteFolder;
use crate::sync::model::{Flags, RemoteEntry};

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
    /// server answering in order is answering).
    Data(usize, &'a Response<'r>),
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
    pub vanished: Vec<u32>,
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
    inner: async_imap::Session<BoxStream>,
    capabilities: Capabilities,
    host: String,
    timeout: Duration,
    /// The folder selected now, and its UIDVALIDITY.
    selected: Option<(String, u32)>,
    qresync_enabled: bool,
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
    pub(super) fn new(
        inner: async_imap::Session<BoxStream>,
        host: String,
        timeout: Duration,
    ) -> Session {
        Session {
            inner,
            capabilities: Capabilities::default(),
            host,
            timeout,
            selected: None,
            qresync_enabled: false,
        }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn has_condstore(&self) -> bool {
        self.capabilities.has("CONDSTORE") || self.capabilities.has("QRESYNC")
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
                Step::Data(_, r) => on_data(r).map(|()| Next::Go),
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
        let mut in_flight: VecDeque<(usize, RequestId, String, std::time::Instant)> =
            VecDeque::new();
        let mut next = 0;
        let mut sending = true;
        let mut failed: Option<ImapError> = None;
        let mut bye: Option<String> = None;
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
                let tag = timeout(self.timeout, self.inner.run_command(command))
                    .await
                    .map_err(|_| self.timeout_err(&name))?
                    .map_err(|e| map_async_imap(e, &name))?;
                in_flight.push_back((next, tag, name, sent));
                next += 1;
            }
            let Some((oldest, _, name, _)) = in_flight.front() else {
                return failed.map_or(Ok(()), Err);
            };
            let (oldest, name) = (*oldest, name.clone());
            pace().await;
            let response = match timeout(self.timeout, self.inner.read_response()).await {
                Err(_) => return Err(self.timeout_err(&name)),
                Ok(Err(e)) => {
                    return Err(match bye {
                        Some(text) => ImapError::Bye(text),
                        None if e.kind() == std::io::ErrorKind::InvalidData => {
                            ImapError::Protocol {
                                command: name,
                                detail: format!("unparsable response: {e}"),
                            }
                        }
                        None => ImapError::Io(e),
                    });
                }
                Ok(Ok(None)) => {
                    return Err(match bye {
                        Some(text) => ImapError::Bye(text),
                        None => ImapError::ConnectionLost(name),
                    });
                }
                Ok(Ok(Some(r))) => r,
            };
            match response.parsed() {
                Response::Done {
                    tag: t,
                    status,
                    outcome,
                } if in_flight.iter().any(|(_, tag, ..)| tag == t) => {
                    // Servers may complete pipelined commands out of order.
                    let at = in_flight
                        .iter()
                        .position(|(_, tag, ..)| tag == t)
                        .unwrap_or(0);
                    let Some((index, _, name, sent)) = in_flight.remove(at) else {
                        continue;
                    };
                    // The server's text: Dovecot puts its own timing there, which
                    // tells server time from transfer and client time in a slow pass.
                    tracing::debug!(
                        command = %name,
                        elapsed = ?sent.elapsed(),
                        said = outcome.information.as_deref().unwrap_or(""),
                        "imap <"
                    );
                    match tagged(status, &name, outcome) {
                        Ok(()) => {
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
                    bye = Some(bye_text(outcome));
                }
                other => {
                    if on(Step::Data(oldest, other))? == Next::StopSending {
                        sending = false;
                    }
                }
            }
        }
    }

    fn timeout_err(&self, command: &str) -> ImapError {
        ImapError::Timeout {
            command: command.to_owned(),
            after: self.timeout,
        }
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
        let command = format!("STATUS {} (MESSAGES UIDNEXT UIDVALIDITY)", quote(folder));
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
                        Step::Data(_, Response::Capabilities(c))
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
        let mut commands = vec![self.select_command(folder, since)];
        commands.extend(follow.iter().map(|f| match *f {
            FollowUp::Flags(changed_since) => self.flags_command(changed_since),
            FollowUp::SizesFrom(n) => format!("UID FETCH {n}:* (UID RFC822.SIZE)"),
        }));
        self.selected = None;
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
                        Step::Data(i, r) => (i, r),
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
                        if let Some(e) = entry_of(attrs) {
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
                                out.selected.uidvalidity = v;
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
                            for range in uids {
                                // A hostile range must not make us allocate billions of UIDs.
                                if range.end().saturating_sub(*range.start()) > 10_000_000 {
                                    return Err(ImapError::Protocol {
                                        command: "SELECT".into(),
                                        detail: format!(
                                            "implausible VANISHED range {}:{}",
                                            range.start(),
                                            range.end()
                                        ),
                                    });
                                }
                                out.vanished.extend(range.clone());
                            }
                        }
                        _ => {}
                    }
                    Ok(Next::Go)
                },
                || std::future::ready(()),
            )
            .await;
        match result {
            // A follow-up the server refused is only a round trip not saved: the
            // caller asks again on its own.
            Err(ImapError::No { .. } | ImapError::Bad { .. }) if done[0] => {}
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
    fn select_command(&self, folder: &str, since: Option<(u32, u64)>) -> String {
        match since {
            Some((uidvalidity, modseq)) if self.qresync_enabled => {
                format!(
                    "SELECT {} (QRESYNC ({uidvalidity} {modseq}))",
                    quote(folder)
                )
            }
            _ if self.has_condstore() => format!("SELECT {} (CONDSTORE)", quote(folder)),
            _ => format!("SELECT {}", quote(folder)),
        }
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
        self.exec(&command, |r| {
            if let Response::Fetch(_, attrs) = r
                && let Some(e) = entry_of(attrs)
            {
                entries.push(e);
            }
            Ok(())
        })
        .await?;
        Ok(entries)
    }

    /// Every UID in the selected folder.
    pub async fn search_all_uids(&mut self) -> Result<Vec<u32>, ImapError> {
        let mut uids = Vec::new();
        self.exec("UID SEARCH ALL", |r| {
            if let Response::MailboxData(MailboxDatum::Search(found)) = r {
                uids.extend_from_slice(found);
            }
            Ok(())
        })
        .await?;
        uids.sort_unstable();
        Ok(uids)
    }

    /// RFC822.SIZE of the given messages, by UID (what servers keep in their index).
    pub async fn fetch_sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u64)>, ImapError> {
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(5000) {
            let command = format!("UID FETCH {} (UID RFC822.SIZE)", uid_set(chunk));
            self.exec(&command, |r| {
                if let Response::Fetch(_, attrs) = r
                    && let Some(found) = size_of(attrs)
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
            self.exec(&command, |r| {
                if let Response::Fetch(_, attrs) = r {
                    let mut f = Fingerprinted {
                        uid: 0,
                        flags: Flags::empty(),
                        size: 0,
                        internaldate: 0,
                        message_id: None,
                    };
                    let mut have_uid = false;
                    for a in attrs {
                        match a {
                            AttributeValue::Uid(u) => {
                                f.uid = *u;
                                have_uid = true;
                            }
                            AttributeValue::Flags(fl) => f.flags = parse_flags(fl),
                            AttributeValue::Rfc822Size(s) => f.size = u64::from(*s),
                            AttributeValue::InternalDate(d) => {
                                f.internaldate = parse_internaldate(d).unwrap_or(0)
                            }
                            AttributeValue::BodySection { data: Some(d), .. } => {
                                f.message_id = crate::sync::headers::message_id_from_header_block(d)
                            }
                            _ => {}
                        }
                    }
                    if have_uid {
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
                commands.push(self.select_command(folder, None));
                self.selected = None;
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
                        Step::Data(i, r) if i + 1 == first => {
                            if let Response::Data { outcome, .. } = r
                                && let Some(ResponseCode::UidValidity(v)) = outcome.code
                            {
                                seen_uidvalidity = Some(v);
                            }
                            return Ok(Next::Go);
                        }
                        Step::Data(_, r) => r,
                    };
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
                                } => body = Some(data.as_deref().unwrap_or_default().to_vec()),
                                AttributeValue::Rfc822(data) => {
                                    body = Some(data.as_deref().unwrap_or_default().to_vec())
                                }
                                _ => {}
                            }
                        }
                        if let (Some(uid), Some(body)) = (uid, body) {
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
        let tag = tokio::time::timeout(self.timeout, self.inner.run_command("IDLE"))
            .await
            .map_err(|_| self.timeout_err("IDLE"))?
            .map_err(|e| map_async_imap(e, "IDLE"))?;
        // The server acknowledges with a continuation, or refuses with a tagged NO/BAD.
        loop {
            let step = self
                .read_one("IDLE", |r| match r {
                    Response::Continue(_) => Some(Ok(())),
                    Response::Done {
                        tag: t,
                        status,
                        outcome,
                    } if *t == tag => Some(tagged(status, "IDLE", outcome).and(Err(
                        ImapError::Protocol {
                            command: "IDLE".into(),
                            detail: "the server ended IDLE before it began".into(),
                        },
                    ))),
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => Some(Err(ImapError::Bye(bye_text(outcome)))),
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
        let end = loop {
            tokio::select! {
                r = self.inner.read_response() => {
                    let r = match r {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err(ImapError::ConnectionLost("IDLE".into())),
                        Err(e) => return Err(ImapError::Io(e)),
                    };
                    match r.parsed() {
                        Response::Data { status: Status::Bye, outcome } => {
                            return Err(ImapError::Bye(bye_text(outcome)));
                        }
                        Response::MailboxData(MailboxDatum::Exists(_))
                        | Response::Expunge(_)
                        | Response::Vanished { .. }
                        | Response::Fetch(..) => break IdleEnd::Changed,
                        // RECENT, keep-alive OKs ("* OK Still here"): keep waiting.
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break IdleEnd::Timeout,
                _ = &mut cancel => break IdleEnd::Cancelled,
            }
        };
        // End the IDLE: DONE, then the tagged reply (more untagged data may come first).
        tokio::time::timeout(self.timeout, self.inner.run_command_untagged("DONE"))
            .await
            .map_err(|_| self.timeout_err("DONE"))?
            .map_err(|e| map_async_imap(e, "DONE"))?;
        loop {
            let step = self
                .read_one("IDLE", |r| match r {
                    Response::Done {
                        tag: t,
                        status,
                        outcome,
                    } if *t == tag => Some(tagged(status, "IDLE", outcome).map(|()| end)),
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => Some(Err(ImapError::Bye(bye_text(outcome)))),
                    _ => None,
                })
                .await?;
            if let Some(result) = step {
                return result;
            }
        }
    }

    /// One response, within the command timeout, handed to `f` (async-imap does not
    /// export the owning type, so it cannot be returned).
    async fn read_one<T>(
        &mut self,
        command: &str,
        f: impl FnOnce(&Response<'_>) -> T,
    ) -> Result<T, ImapError> {
        match tokio::time::timeout(self.timeout, self.inner.read_response()).await {
            Err(_) => Err(self.timeout_err(command)),
            Ok(Err(e)) => Err(ImapError::Io(e)),
            Ok(Ok(None)) => Err(ImapError::ConnectionLost(command.to_owned())),
            Ok(Ok(Some(r))) => Ok(f(r.parsed())),
        }
    }

    pub async fn noop(&mut self) -> Result<(), ImapError> {
        self.exec("NOOP", |_| Ok(())).await
    }

    /// Logs out politely; errors are irrelevant at that point.
    pub async fn logout(mut self) {
        let _ = self.exec("LOGOUT", |_| Ok(())).await;
    }

    pub fn qresync_enabled(&self) -> bool {
        self.qresync_enabled
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

/// UID and flags from a FETCH response. A FETCH without UID is an unsolicited flag
/// update from another session; the next listing covers it.
fn entry_of(attrs: &[AttributeValue<'_>]) -> Option<RemoteEntry> {
    let mut uid = None;
    let mut flags = None;
    for a in attrs {
        match a {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::Flags(f) => flags = Some(parse_flags(f)),
            _ => {}
        }
    }
    Some(RemoteEntry {
        uid: uid?,
        flags: flags?,
    })
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

/// A tagged reply as a result: OK, or the NO/BAD naming the command.
fn tagged(
    status: &Status,
    command: &str,
    outcome: &imap_proto::Outcome<'_>,
) -> Result<(), ImapError> {
    let text = || outcome_text(outcome.code.as_ref(), outcome.information.as_deref());
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

/// What a server said with its BYE.
fn bye_text(outcome: &imap_proto::Outcome<'_>) -> String {
    outcome.information.as_deref().unwrap_or("").to_owned()
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
    match &error {
        ImapError::No { text, .. } => {
            let t = text.to_ascii_lowercase();
            if t.contains("nonexistent")
                || t.contains("doesn't exist")
                || t.contains("does not exist")
                || t.contains("not found")
                || t.contains("unknown mailbox")
            {
                ImapError::NoMailbox(folder.to_owned())
            } else {
                error
            }
        }
        _ => error,
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

fn map_async_imap(error: async_imap::error::Error, command: &str) -> ImapError {
    use async_imap::error::Error;
    match error {
        Error::Io(e) => ImapError::Io(e),
        Error::ConnectionLost => ImapError::ConnectionLost(command.to_owned()),
        other => ImapError::Protocol {
            command: command.to_owned(),
            detail: other.to_string(),
        },
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
        let boxed: BoxStream = Box::new(stream);
        let mut client = async_imap::Client::new(boxed);
        client.read_response().await.unwrap().unwrap();
        let inner = client.login("u", "p").await.map_err(|(e, _)| e).unwrap();
        Session::new(inner, "fake".into(), Duration::from_secs(5))
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
                    Step::Data(_, Response::Fetch(_, attrs)) => {
                        uids.extend(entry_of(attrs).map(|e| e.uid));
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
}
