//! Effects on the server, for two-way sync: flags set and cleared, messages moved,
//! expunged by UID, and uploaded with APPEND. Each verb acts on the selected folder
//! (except APPEND) and gates on what the server advertised, never on what it happens to
//! accept: Dovecot runs unadvertised commands, Exchange does not.

use imap_proto::{Response, Status};

use super::error::ImapError;
use super::session::Session;
use super::uidplus::UidCode;
use super::{format_internaldate, quote, uid_set};
use crate::flags::Flags;

/// UIDs one STORE, MOVE, COPY or EXPUNGE names at most.
const BATCH: usize = 500;

/// Where an uploaded message landed, when the server said (APPENDUID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub uidvalidity: u32,
    pub uid: u32,
}

impl Session {
    /// Whether the server advertised UIDPLUS (APPENDUID, COPYUID, UID EXPUNGE).
    pub fn has_uidplus(&self) -> bool {
        self.capabilities().has("UIDPLUS")
    }

    /// Sets `add` and clears `remove` on messages of the selected folder, leaving
    /// their other flags (and keywords) as they are.
    pub async fn store_flags(
        &mut self,
        uids: &[u32],
        add: Flags,
        remove: Flags,
    ) -> Result<(), ImapError> {
        for chunk in uids.chunks(BATCH) {
            let set = uid_set(chunk);
            let mut commands = Vec::new();
            for (sign, flags) in [('+', add), ('-', remove)] {
                if flags != Flags::empty() {
                    commands.push(format!(
                        "UID STORE {set} {sign}FLAGS.SILENT ({})",
                        flags.imap_names().join(" ")
                    ));
                }
            }
            self.exec_pipelined(
                &commands,
                2,
                |_| Ok(super::session::Next::Go),
                || std::future::ready(()),
            )
            .await?;
        }
        Ok(())
    }

    /// Moves messages of the selected folder to `to` (its wire name): MOVE where
    /// advertised, else COPY then expunging the originals by UID. Returns the new UIDs
    /// where the server said (COPYUID), as (old, new) pairs, with the target's
    /// UIDVALIDITY.
    pub async fn move_messages(
        &mut self,
        uids: &[u32],
        to: &str,
    ) -> Result<Option<(u32, Vec<(u32, u32)>)>, ImapError> {
        let target = quote(to)?;
        let mut pairs = Vec::new();
        let mut uidvalidity = None;
        let moves = self.capabilities().has("MOVE");
        for chunk in uids.chunks(BATCH) {
            self.uid_code = None;
            let verb = if moves { "MOVE" } else { "COPY" };
            self.exec(&format!("UID {verb} {} {target}", uid_set(chunk)), |_| {
                Ok(())
            })
            .await?;
            if let Some(UidCode::Copy {
                uidvalidity: v,
                from,
                to,
            }) = self.uid_code.take()
                && self.has_uidplus()
                && from.len() == to.len()
            {
                uidvalidity = Some(v);
                pairs.extend(from.into_iter().zip(to));
            }
            if !moves {
                self.expunge_messages(chunk).await?;
            }
        }
        Ok(uidvalidity.map(|v| (v, pairs)))
    }

    /// Marks messages of the selected folder `\Deleted` and expunges exactly them:
    /// with UID EXPUNGE (UIDPLUS). Without UIDPLUS a bare EXPUNGE would take every
    /// message marked `\Deleted`, other clients' too: it is sent only when a search
    /// finds no other message marked; otherwise they stay marked, and the error says
    /// so.
    pub async fn expunge_messages(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        for chunk in uids.chunks(BATCH) {
            let set = uid_set(chunk);
            self.exec(
                &format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
                |_| Ok(()),
            )
            .await?;
        }
        if self.has_uidplus() {
            for chunk in uids.chunks(BATCH) {
                self.exec(&format!("UID EXPUNGE {}", uid_set(chunk)), |_| Ok(()))
                    .await?;
            }
            return Ok(());
        }
        let ours: std::collections::HashSet<u32> = uids.iter().copied().collect();
        let marked = self.search_uids("DELETED").await?;
        let others = marked.iter().filter(|u| !ours.contains(u)).count();
        if others > 0 {
            return Err(ImapError::Withheld {
                command: "EXPUNGE".into(),
                detail: format!(
                    "the server has no UIDPLUS and the folder holds {others} other message(s) marked \\Deleted, which a bare EXPUNGE would erase too; mailsync left its own marked \\Deleted and tries again next pass (expunge the folder in a mail client to let it)"
                ),
            });
        }
        self.exec("EXPUNGE", |_| Ok(())).await
    }

    /// Uploads a message to `folder` (its wire name) with `flags` and INTERNALDATE
    /// `internaldate`. `bytes` must have CRLF line ends. Returns where it landed when
    /// the server said (APPENDUID, only trusted where UIDPLUS is advertised).
    pub async fn append(
        &mut self,
        folder: &str,
        flags: Flags,
        internaldate: i64,
        bytes: &[u8],
    ) -> Result<Option<Appended>, ImapError> {
        let name = "APPEND";
        let plus = self.capabilities().has("LITERAL+");
        let command = format!(
            "APPEND {} ({}) \"{}\" {{{}{}}}",
            quote(folder)?,
            flags.imap_names().join(" "),
            format_internaldate(internaldate),
            bytes.len(),
            if plus { "+" } else { "" }
        );
        tracing::debug!(command = %command, "imap >");
        self.uid_code = None;
        let wire_err = |e| super::session::wire_error(e, name);
        let timeout = self.timeout();
        self.wire_mut().set_deadline(timeout);
        let tag = self.wire_mut().send(&command).await.map_err(wire_err)?;
        enum Got {
            Go,
            Done(Result<Option<UidCode>, ImapError>),
            Other,
        }
        // With LITERAL+ the message goes at once; otherwise after the server's `+`.
        let mut go = plus;
        let mut sent = false;
        loop {
            if go && !sent {
                self.wire_mut()
                    .send_literal(bytes)
                    .await
                    .map_err(wire_err)?;
                // The wait for the reply starts once the message is out.
                self.wire_mut().set_deadline(timeout);
                sent = true;
            }
            let got = self
                .read_one(name, |s, r| match r {
                    Response::Continue { .. } => Got::Go,
                    Response::Done {
                        tag: t,
                        status,
                        outcome,
                    } if t.0 == tag => Got::Done(
                        s.tagged_result(status, name, outcome)
                            .map(|()| UidCode::from_outcome(outcome)),
                    ),
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => Got::Done(Err(ImapError::Bye(s.bye_text_of(outcome)))),
                    _ => Got::Other,
                })
                .await?;
            match got {
                Got::Go => go = true,
                Got::Other => {}
                Got::Done(result) => {
                    return Ok(match result? {
                        Some(UidCode::Append { uidvalidity, uids })
                            if self.has_uidplus() && uids.len() == 1 =>
                        {
                            Some(Appended {
                                uidvalidity,
                                uid: uids[0],
                            })
                        }
                        _ => None,
                    });
                }
            }
        }
    }

    /// The UIDs of the selected folder from `from` on (a search for `from:*` also
    /// returns the highest UID below it when there is none above: filtered out).
    pub async fn uids_from(&mut self, from: u32) -> Result<Vec<u32>, ImapError> {
        let from = from.max(1);
        let mut uids = self.search_uids(&format!("UID {from}:*")).await?;
        uids.retain(|&u| u >= from);
        Ok(uids)
    }

    /// The UIDs in the selected folder of messages whose Message-ID is `id` (without
    /// angle brackets). An ID a search cannot carry (not ASCII, a control character)
    /// finds nothing.
    pub async fn uids_with_message_id(&mut self, id: &str) -> Result<Vec<u32>, ImapError> {
        if !id.is_ascii() || id.chars().any(|c| c.is_ascii_control()) {
            return Ok(Vec::new());
        }
        let criteria = format!("HEADER Message-ID {}", quote(&format!("<{id}>"))?);
        self.search_uids(&criteria).await
    }
}
