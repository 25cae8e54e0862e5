//! The seeding and inspection API over IMAP (master-user login, byte-exact): append,
//! folders, flags, expunge, moves, listing messages and UIDVALIDITY, and recreating a
//! folder so its UIDVALIDITY changes while its messages stay the same.

use anyhow::{Context, Result, anyhow, bail};
use async_imap::types::Flag;
use chrono::{DateTime, FixedOffset};
use futures::TryStreamExt;

use super::Dovecot;
use super::admin::{Admin, Code, quote_mailbox};
use super::messages::{MoveMode, SeedMessage, ServerMessage, flag_list, imap_date};

/// Messages per MULTIAPPEND command.
const APPEND_BATCH: usize = 200;

fn flag_name(f: &Flag<'_>) -> Option<String> {
    Some(match f {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent => return None,
        Flag::MayCreate => return None,
        Flag::Custom(s) => s.to_string(),
    })
}

fn uid_set(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn append_batch(admin: &mut Admin, folder: &str, batch: &[SeedMessage]) -> Result<Vec<u32>> {
    let mut head = format!("APPEND {}", quote_mailbox(folder)).into_bytes();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for m in batch {
        head.extend_from_slice(format!(" {}", flag_list(&m.flags)).as_bytes());
        if let Some(d) = &m.internaldate {
            head.extend_from_slice(format!(" {}", imap_date(d)).as_bytes());
        }
        head.extend_from_slice(format!(" {{{}+}}\r\n", m.bytes.len()).as_bytes());
        parts.push(std::mem::take(&mut head));
        parts.push(m.bytes.clone());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let codes = admin.raw(&refs).await?;
    for c in codes {
        if let Code::AppendUid(_, uids) = c
            && uids.len() == batch.len()
        {
            return Ok(uids);
        }
    }
    bail!("APPEND to {folder}: no APPENDUID in the answer")
}

impl Dovecot {
    /// Appends one message as `user`; returns its UID (from APPENDUID).
    pub async fn append(
        &self,
        user: &str,
        folder: &str,
        bytes: &[u8],
        flags: &[&str],
        internaldate: Option<DateTime<FixedOffset>>,
    ) -> Result<u32> {
        let m = SeedMessage {
            bytes: bytes.to_vec(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internaldate,
        };
        let uids = self.append_many(user, folder, vec![m]).await?;
        Ok(uids[0])
    }

    /// Appends many messages with MULTIAPPEND (batches of 200); returns their UIDs in
    /// order. Note Dovecot refuses 0-byte messages over IMAP; use `seed_fast` for those.
    pub async fn append_many<M: Into<SeedMessage>>(
        &self,
        user: &str,
        folder: &str,
        messages: impl IntoIterator<Item = M>,
    ) -> Result<Vec<u32>> {
        let messages: Vec<SeedMessage> = messages.into_iter().map(Into::into).collect();
        let mut admin = self.admin(user).await?;
        let mut uids = Vec::with_capacity(messages.len());
        for batch in messages.chunks(APPEND_BATCH) {
            uids.extend(append_batch(&mut admin, folder, batch).await?);
        }
        admin.logout().await?;
        Ok(uids)
    }

    async fn simple(&self, user: &str, command: &str) -> Result<()> {
        let mut admin = self.admin(user).await?;
        admin.cmd(command).await?;
        admin.logout().await
    }

    /// Creates a folder (UTF-8 name) and subscribes to it.
    pub async fn create_folder(&self, user: &str, folder: &str) -> Result<()> {
        let mut admin = self.admin(user).await?;
        admin
            .cmd(&format!("CREATE {}", quote_mailbox(folder)))
            .await?;
        admin
            .cmd(&format!("SUBSCRIBE {}", quote_mailbox(folder)))
            .await?;
        admin.logout().await
    }

    /// Deletes a folder.
    pub async fn delete_folder(&self, user: &str, folder: &str) -> Result<()> {
        self.simple(user, &format!("DELETE {}", quote_mailbox(folder)))
            .await
    }

    /// Renames a folder.
    pub async fn rename_folder(&self, user: &str, from: &str, to: &str) -> Result<()> {
        self.simple(
            user,
            &format!("RENAME {} {}", quote_mailbox(from), quote_mailbox(to)),
        )
        .await
    }

    /// The folders of `user` as (decoded name, attributes).
    pub async fn folders(&self, user: &str) -> Result<Vec<(String, Vec<String>)>> {
        let mut admin = self.admin(user).await?;
        let names: Vec<_> = admin
            .session
            .list(Some(""), Some("*"))
            .await?
            .try_collect()
            .await?;
        let out = names
            .iter()
            .map(|n| {
                let name = crate::utf7::decode(n.name()).unwrap_or_else(|| n.name().to_string());
                let attrs = n.attributes().iter().map(|a| format!("{a:?}")).collect();
                (name, attrs)
            })
            .collect();
        admin.logout().await?;
        Ok(out)
    }

    /// Adds and removes flags on one message.
    pub async fn set_flags(
        &self,
        user: &str,
        folder: &str,
        uid: u32,
        add: &[&str],
        remove: &[&str],
    ) -> Result<()> {
        let mut admin = self.admin(user).await?;
        admin
            .cmd(&format!("SELECT {}", quote_mailbox(folder)))
            .await?;
        if !add.is_empty() {
            admin
                .cmd(&format!(
                    "UID STORE {uid} +FLAGS.SILENT ({})",
                    add.join(" ")
                ))
                .await?;
        }
        if !remove.is_empty() {
            admin
                .cmd(&format!(
                    "UID STORE {uid} -FLAGS.SILENT ({})",
                    remove.join(" ")
                ))
                .await?;
        }
        admin.logout().await
    }

    /// Expunges the given UIDs (`\Deleted` + `UID EXPUNGE`).
    pub async fn expunge(&self, user: &str, folder: &str, uids: &[u32]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut admin = self.admin(user).await?;
        admin
            .cmd(&format!("SELECT {}", quote_mailbox(folder)))
            .await?;
        let set = uid_set(uids);
        admin
            .cmd(&format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"))
            .await?;
        admin.cmd(&format!("UID EXPUNGE {set}")).await?;
        admin.logout().await
    }

    /// Moves messages; returns (old UID, new UID) pairs from COPYUID.
    pub async fn move_messages(
        &self,
        user: &str,
        from: &str,
        to: &str,
        uids: &[u32],
        mode: MoveMode,
    ) -> Result<Vec<(u32, u32)>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let mut admin = self.admin(user).await?;
        admin
            .cmd(&format!("SELECT {}", quote_mailbox(from)))
            .await?;
        let set = uid_set(uids);
        let codes = match mode {
            MoveMode::Move => {
                admin
                    .cmd(&format!("UID MOVE {set} {}", quote_mailbox(to)))
                    .await?
            }
            MoveMode::CopyExpunge => {
                let codes = admin
                    .cmd(&format!("UID COPY {set} {}", quote_mailbox(to)))
                    .await?;
                admin
                    .cmd(&format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"))
                    .await?;
                admin.cmd(&format!("UID EXPUNGE {set}")).await?;
                codes
            }
        };
        admin.logout().await?;
        let pairs = codes
            .into_iter()
            .find_map(|c| match c {
                Code::CopyUid(_, src, dst) => Some(src.into_iter().zip(dst).collect()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(pairs)
    }

    /// All messages of a folder, byte-exact, sorted by UID.
    pub async fn messages(&self, user: &str, folder: &str) -> Result<Vec<ServerMessage>> {
        let mut admin = self.admin(user).await?;
        let mailbox = admin
            .session
            .examine(crate::utf7::encode(folder))
            .await
            .with_context(|| format!("EXAMINE {folder}"))?;
        let mut out = Vec::new();
        if mailbox.exists > 0 {
            let fetches: Vec<_> = admin
                .session
                .uid_fetch("1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
                .await?
                .try_collect()
                .await?;
            for f in &fetches {
                let Some(uid) = f.uid else { continue };
                out.push(ServerMessage {
                    uid,
                    flags: f.flags().filter_map(|fl| flag_name(&fl)).collect(),
                    body: f.body().unwrap_or_default().to_vec(),
                    internaldate: f
                        .internal_date()
                        .ok_or_else(|| anyhow!("no INTERNALDATE for UID {uid}"))?,
                });
            }
        }
        admin.logout().await?;
        out.sort_by_key(|m| m.uid);
        Ok(out)
    }

    /// The folder's UIDVALIDITY.
    pub async fn uidvalidity(&self, user: &str, folder: &str) -> Result<u32> {
        let mut admin = self.admin(user).await?;
        let mb = admin
            .session
            .status(crate::utf7::encode(folder), "(UIDVALIDITY)")
            .await?;
        admin.logout().await?;
        mb.uid_validity
            .ok_or_else(|| anyhow!("no UIDVALIDITY for {folder}"))
    }

    /// The folder's UIDNEXT.
    pub async fn uidnext(&self, user: &str, folder: &str) -> Result<u32> {
        let mut admin = self.admin(user).await?;
        let mb = admin
            .session
            .status(crate::utf7::encode(folder), "(UIDNEXT)")
            .await?;
        admin.logout().await?;
        mb.uid_next
            .ok_or_else(|| anyhow!("no UIDNEXT for {folder}"))
    }

    /// Gives `folder` the UIDVALIDITY `validity` (`doveadm mailbox update`).
    pub fn set_uidvalidity(&self, user: &str, folder: &str, validity: u32) -> Result<()> {
        self.doveadm(&[
            "mailbox",
            "update",
            "-u",
            user,
            "--uid-validity",
            &validity.to_string(),
            folder,
        ])?;
        Ok(())
    }

    /// Fetches every message, deletes the folder, creates it again and appends the
    /// messages back with their flags and INTERNALDATE: same messages, new UIDVALIDITY.
    /// INBOX cannot be deleted, so it is emptied and given a new UIDVALIDITY instead.
    /// Returns the new UIDVALIDITY.
    pub async fn recreate_folder(&self, user: &str, folder: &str) -> Result<u32> {
        let old_validity = self.uidvalidity(user, folder).await?;
        let messages = self.messages(user, folder).await?;
        if folder.eq_ignore_ascii_case("INBOX") {
            let uids: Vec<u32> = messages.iter().map(|m| m.uid).collect();
            self.expunge(user, folder, &uids).await?;
        } else {
            self.delete_folder(user, folder).await?;
            // An auto-created folder may already be back; that is fine.
            if let Err(e) = self.create_folder(user, folder).await
                && !e.to_string().contains("exists")
            {
                return Err(e);
            }
        }
        let mut validity = self.uidvalidity(user, folder).await?;
        if validity == old_validity {
            validity = old_validity.wrapping_add(1).max(1);
            self.set_uidvalidity(user, folder, validity)?;
        }
        let seeds: Vec<SeedMessage> = messages.iter().map(SeedMessage::from).collect();
        if !seeds.is_empty() {
            self.append_many(user, folder, seeds).await?;
        }
        Ok(validity)
    }
}
