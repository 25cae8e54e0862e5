//! Applies a two-way plan's effects on the server, before the local ones: flags, then
//! moves, deletions and uploads. What a kill could lose or repeat is journalled first.
//!
//! - Flags and deletions are not journalled: the Maildir holds the intent (the file's
//!   name, its absence) and the record the last synced state until the server took
//!   the change, so a killed run's next pass finds the same difference and sends it
//!   again, which changes nothing the second time (a STORE of flags already set; a
//!   deletion of a UID already gone, whose record then simply goes).
//! - Moves, deletions to the trash and uploads make a new message whose UID exists
//!   nowhere else until recorded: each is journalled as an upload entry with the
//!   target's UIDNEXT before it is sent. It is bound from APPENDUID/COPYUID where the
//!   server has UIDPLUS; otherwise, and after a kill, by finding the message again
//!   among the target's UIDs from there by Message-ID and size ([`find_again`]), so
//!   nothing is uploaded or copied twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::flags::Flags;
use crate::imap::{ImapError, Session};
use crate::maildir::Maildir;
use crate::state::{Effect, State};

use super::error::{Failed, SyncError, maildir_err};
use super::local;
use super::model::{Action, Fingerprint, FolderId, LocalNew, Record};

/// A planned folder, as the server-side effects need it.
pub(super) struct Folder {
    pub remote: String,
    pub maildir: Maildir,
    /// Its UIDVALIDITY and UIDNEXT when listed this pass.
    pub uidvalidity: u32,
    pub uidnext: u32,
}

/// What [`push`] did in a folder.
#[derive(Clone, Debug, Default)]
pub(super) struct Counts {
    pub pushed_flags: u64,
    pub deleted: u64,
    pub moved_out: u64,
    pub uploaded: u64,
    /// Uploads the server refused, with why.
    pub refused: Vec<String>,
}

/// What [`push`] did, and which folders failed (their local actions are skipped).
#[derive(Debug, Default)]
pub(super) struct Pushed {
    pub counts: HashMap<FolderId, Counts>,
    pub failed: HashMap<FolderId, ImapError>,
}

impl Pushed {
    fn ok(&self, folder: FolderId) -> bool {
        !self.failed.contains_key(&folder)
    }

    /// Takes a folder's failure; an error that leaves the session unusable fails the
    /// pass instead.
    fn fail(&mut self, folder: FolderId, e: ImapError, account: &str) -> Result<(), SyncError> {
        if e.is_fatal_to_session() {
            return Err(SyncError::Imap {
                account: account.to_owned(),
                source: e,
            });
        }
        self.failed.entry(folder).or_insert(e);
        Ok(())
    }

    fn count(&mut self, folder: FolderId) -> &mut Counts {
        self.counts.entry(folder).or_default()
    }
}

/// A message moving: its record, its file's base and its flags.
type Moving<'a> = (&'a Record, &'a str, Flags);

/// An upload journalled and sent whose UID the server did not say.
struct Unbound {
    id: i64,
    folder: FolderId,
    /// The local file's base; empty for a deletion moved to the trash (nothing is
    /// recorded for it: the trash's copy is downloaded as new).
    base: String,
    flags: Flags,
    uidnext: u32,
    origin: Option<(FolderId, u32, u32)>,
    fingerprint: Fingerprint,
}

/// Applies the server-side actions of `actions` in the folders of `folders` (the
/// others are skipped).
pub(super) async fn push(
    session: &mut Session,
    state: &mut State,
    account: &str,
    folders: &HashMap<FolderId, Folder>,
    actions: &[Action],
) -> Result<Pushed, SyncError> {
    let mut out = Pushed::default();

    // Flags, per folder and change, before any move (so they travel with it).
    let mut flags: BTreeMap<FolderId, BTreeMap<(u8, u8), Vec<u32>>> = BTreeMap::new();
    for a in actions {
        if let Action::PushFlags {
            folder,
            uid,
            add,
            remove,
        } = a
        {
            flags
                .entry(*folder)
                .or_default()
                .entry((add.bits(), remove.bits()))
                .or_default()
                .push(*uid);
        }
    }
    for (folder, changes) in flags {
        let Some(f) = folders.get(&folder) else {
            continue;
        };
        let result = async {
            session.select_listed(&f.remote, f.uidvalidity).await?;
            let mut n = 0;
            for ((add, remove), uids) in &changes {
                session
                    .store_flags(uids, Flags::from_bits(*add), Flags::from_bits(*remove))
                    .await?;
                n += uids.len() as u64;
            }
            Ok::<u64, ImapError>(n)
        }
        .await;
        match result {
            Ok(n) => out.count(folder).pushed_flags += n,
            Err(e) => out.fail(folder, e, account)?,
        }
    }

    // The same new message on both sides: recorded, nothing sent.
    let adopted: Vec<Record> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Adopt {
                folder,
                uidvalidity,
                uid,
                base,
                flags,
                fingerprint,
            } if folders.contains_key(folder) => Some(Record {
                folder: *folder,
                uidvalidity: *uidvalidity,
                uid: *uid,
                base: base.clone(),
                flags: *flags,
                fingerprint: fingerprint.clone(),
            }),
            _ => None,
        })
        .collect();
    if !adopted.is_empty() {
        state.adopt(&adopted)?;
    }

    let mut unbound: Vec<Unbound> = Vec::new();

    // Moves, per source and target.
    let mut moves: BTreeMap<(FolderId, FolderId), Vec<Moving<'_>>> = BTreeMap::new();
    for a in actions {
        if let Action::PushMove {
            record,
            to,
            base,
            flags,
        } = a
        {
            moves
                .entry((record.folder, *to))
                .or_default()
                .push((record, base, *flags));
        }
    }
    for ((from, to), group) in moves {
        let (Some(source), Some(target)) = (folders.get(&from), folders.get(&to)) else {
            continue;
        };
        if !out.ok(from) || !out.ok(to) {
            continue;
        }
        let mut journalled = Vec::with_capacity(group.len());
        for (r, base, flags) in &group {
            let origin = (r.folder, r.uidvalidity, r.uid);
            let id = state.journal_upload(to, base, target.uidnext, *flags, Some(origin))?;
            journalled.push(Unbound {
                id,
                folder: to,
                base: (*base).to_owned(),
                flags: *flags,
                uidnext: target.uidnext,
                origin: Some(origin),
                fingerprint: r.fingerprint.clone(),
            });
        }
        let uids: Vec<u32> = group.iter().map(|(r, ..)| r.uid).collect();
        let result = async {
            session
                .select_listed(&source.remote, source.uidvalidity)
                .await?;
            session.move_messages(&uids, &target.remote).await
        }
        .await;
        match result {
            Ok(said) => {
                out.count(from).moved_out += uids.len() as u64;
                bind_said(state, &target.maildir, said, journalled, &mut unbound)?;
            }
            Err(e) => out.fail(from, e, account)?,
        }
    }

    // Deletions, per folder and where they go.
    let mut deletions: BTreeMap<(FolderId, Option<FolderId>), Vec<&Record>> = BTreeMap::new();
    for a in actions {
        if let Action::PushDelete { record, trash } = a {
            deletions
                .entry((record.folder, *trash))
                .or_default()
                .push(record);
        }
    }
    for ((from, trash), records) in deletions {
        let Some(source) = folders.get(&from) else {
            continue;
        };
        if !out.ok(from) || trash.is_some_and(|t| !out.ok(t) || !folders.contains_key(&t)) {
            continue;
        }
        let uids: Vec<u32> = records.iter().map(|r| r.uid).collect();
        let owned: Vec<Record> = records.iter().map(|r| (*r).clone()).collect();
        let result = match trash.and_then(|t| Some((t, folders.get(&t)?))) {
            Some((t, target)) => {
                let mut ids = Vec::with_capacity(records.len());
                for r in &records {
                    let origin = (r.folder, r.uidvalidity, r.uid);
                    ids.push(state.journal_upload(t, "", target.uidnext, r.flags, Some(origin))?);
                }
                let moved = async {
                    session
                        .select_listed(&source.remote, source.uidvalidity)
                        .await?;
                    session.move_messages(&uids, &target.remote).await
                }
                .await;
                if moved.is_ok() {
                    state.forget_records(&owned)?;
                    state.resolve(&ids)?;
                }
                moved.map(|_| ())
            }
            None => {
                let expunged = async {
                    session
                        .select_listed(&source.remote, source.uidvalidity)
                        .await?;
                    session.expunge_messages(&uids).await
                }
                .await;
                if expunged.is_ok() {
                    state.forget_records(&owned)?;
                }
                expunged
            }
        };
        match result {
            Ok(()) => out.count(from).deleted += uids.len() as u64,
            Err(e) => out.fail(from, e, account)?,
        }
    }

    // Uploads, one message at a time (each is read whole to be sent).
    for a in actions {
        let Action::Upload { file, origin } = a else {
            continue;
        };
        let Some(f) = folders.get(&file.folder) else {
            continue;
        };
        if !out.ok(file.folder) {
            continue;
        }
        let origin = origin.as_ref().map(|r| (r.folder, r.uidvalidity, r.uid));
        match upload(session, state, f, file, origin).await {
            Ok(Uploaded::Bound) => out.count(file.folder).uploaded += 1,
            Ok(Uploaded::Unbound(u)) => {
                out.count(file.folder).uploaded += 1;
                unbound.push(u);
            }
            Ok(Uploaded::Gone) => {}
            Ok(Uploaded::Refused(why)) => out.count(file.folder).refused.push(why),
            Err(Failed::Folder(e)) => out.fail(file.folder, e, account)?,
            Err(Failed::Pass(e)) => return Err(e),
        }
    }

    if !unbound.is_empty() {
        let failed = find_again(session, state, folders, unbound, false).await;
        for (folder, e) in failed? {
            out.fail(folder, e, account)?;
        }
    }
    Ok(out)
}

/// Binds what COPYUID said to the journalled moves; what it did not say is left to
/// [`find_again`].
fn bind_said(
    state: &mut State,
    maildir: &Maildir,
    said: Option<(u32, Vec<(u32, u32)>)>,
    journalled: Vec<Unbound>,
    unbound: &mut Vec<Unbound>,
) -> Result<(), SyncError> {
    let (uidvalidity, pairs) = said.unwrap_or_default();
    let new: HashMap<u32, u32> = pairs.into_iter().collect();
    for u in journalled {
        let found = u.origin.and_then(|(_, _, uid)| new.get(&uid).copied());
        match found {
            Some(uid) => {
                let record = Record {
                    folder: u.folder,
                    uidvalidity,
                    uid,
                    base: u.base.clone(),
                    flags: u.flags,
                    fingerprint: u.fingerprint.clone(),
                };
                state.bind_upload(u.id, &record, u.origin)?;
                // The file takes the flags the record now says (a change the server
                // made meanwhile, merged): else the next local read would take the
                // file's old flags for a change and undo it.
                if let Some(path) = maildir
                    .locate(&u.base, u.flags)
                    .map_err(maildir_err(maildir.root()))?
                {
                    maildir
                        .set_flags(&path, &u.base, u.flags)
                        .map_err(maildir_err(path))?;
                }
            }
            None => unbound.push(u),
        }
    }
    Ok(())
}

enum Uploaded {
    Bound,
    Unbound(Unbound),
    /// The file went meanwhile: nothing to upload.
    Gone,
    Refused(String),
}

/// Uploads one local file: journalled, then APPENDed; bound to its UID if the server
/// said it. A message the server refuses (too large, a line too long) is noted and
/// left local; the pass goes on.
async fn upload(
    session: &mut Session,
    state: &mut State,
    f: &Folder,
    file: &LocalNew,
    origin: Option<(FolderId, u32, u32)>,
) -> Result<Uploaded, Failed> {
    let Some(path) = f
        .maildir
        .locate(&file.base, file.flags)
        .map_err(maildir_err(f.maildir.root()))?
    else {
        return Ok(Uploaded::Gone);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Uploaded::Gone),
        Err(e) => return Err(maildir_err(path)(e).into()),
    };
    let bytes = local::to_crlf(&bytes);
    let id = state.journal_upload(file.folder, &file.base, f.uidnext, file.flags, origin)?;
    match session
        .append(&f.remote, file.flags, file.fingerprint.internaldate, &bytes)
        .await
    {
        Ok(Some(at)) => {
            let record = Record {
                folder: file.folder,
                uidvalidity: at.uidvalidity,
                uid: at.uid,
                base: file.base.clone(),
                flags: file.flags,
                fingerprint: Fingerprint {
                    size: bytes.len() as u64,
                    ..file.fingerprint.clone()
                },
            };
            state.bind_upload(id, &record, origin)?;
            // Exchange is reported to drop \Flagged given with APPEND.
            if file.flags.contains(Flags::FLAGGED) && at.uidvalidity == f.uidvalidity {
                session
                    .select_listed(&f.remote, f.uidvalidity)
                    .await
                    .map_err(Failed::Folder)?;
                session
                    .store_flags(&[at.uid], Flags::FLAGGED, Flags::empty())
                    .await
                    .map_err(Failed::Folder)?;
            }
            Ok(Uploaded::Bound)
        }
        Ok(None) => Ok(Uploaded::Unbound(Unbound {
            id,
            folder: file.folder,
            base: file.base.clone(),
            flags: file.flags,
            uidnext: f.uidnext,
            origin,
            fingerprint: Fingerprint {
                size: bytes.len() as u64,
                ..file.fingerprint.clone()
            },
        })),
        Err(e @ (ImapError::No { .. } | ImapError::Bad { .. })) if refuses_for_good(&e) => {
            state.resolve(&[id])?;
            let why = format!(
                "{}: the server refused to take it ({e}); it stays here and is not offered again under this name",
                path.display()
            );
            tracing::warn!("{why}");
            state.refuse_upload(file.folder, &file.base, &e.to_string())?;
            Ok(Uploaded::Refused(why))
        }
        Err(e) => {
            // Refused for now (throttled, busy): not there, offered again next pass. Any
            // other failure (the connection lost) may have come after the server took
            // it: the entry stays for recovery to find it again.
            if matches!(e, ImapError::No { .. } | ImapError::Bad { .. }) {
                state.resolve(&[id])?;
            }
            Err(Failed::Folder(e))
        }
    }
}

/// Whether the server's refusal of an upload is about the message itself (too large,
/// a line too long, malformed: Exchange's `NO Maximum size of appendable message has
/// been exceeded`, `BAD Command Argument Error. 11`, Dovecot's `NO [LIMIT] Mail size
/// is larger than …`), rather than the moment (throttled, busy, over quota).
fn refuses_for_good(e: &ImapError) -> bool {
    let text = match e {
        ImapError::No { text, .. } | ImapError::Bad { text, .. } => text.to_ascii_lowercase(),
        _ => return false,
    };
    let about_the_message = text.contains("toobig")
        || text.contains("size")
        || text.contains("too long")
        || text.contains("argument error");
    about_the_message || (e.retry() == crate::retry::Retry::Never && !text.contains("quota"))
}

/// Finds uploads whose UID the server did not say among the target's UIDs from the
/// UIDNEXT journalled before each was sent, by Message-ID and size (or size and date),
/// and binds them; an entry whose message is not there is dropped, and the next plan
/// sends it again. With `recovering`, a moved message found in its target is first
/// expunged from its source if a killed COPY + EXPUNGE left it there. Returns the
/// folders that failed.
async fn find_again(
    session: &mut Session,
    state: &mut State,
    folders: &HashMap<FolderId, Folder>,
    unbound: Vec<Unbound>,
    recovering: bool,
) -> Result<Vec<(FolderId, ImapError)>, SyncError> {
    let mut by_target: BTreeMap<FolderId, Vec<Unbound>> = BTreeMap::new();
    for u in unbound {
        by_target.entry(u.folder).or_default().push(u);
    }
    let mut failed = Vec::new();
    // Entries found again: (entry, target, its UIDVALIDITY, the new UID, what the
    // server says of it).
    let mut matched: Vec<(Unbound, FolderId, u32, u32, Fingerprint)> = Vec::new();
    for (folder, entries) in by_target {
        let Some(f) = folders.get(&folder) else {
            continue;
        };
        let from = entries.iter().map(|u| u.uidnext).min().unwrap_or(1);
        let found = async {
            let uidvalidity = session.ensure_selected(&f.remote).await?;
            let uids = session.uids_from(from).await?;
            Ok::<_, ImapError>((uidvalidity, uids))
        }
        .await;
        let (uidvalidity, uids) = match found {
            Ok(v) => v,
            Err(e) => {
                failed.push((folder, e));
                continue;
            }
        };
        let recorded: HashSet<u32> = state
            .known(folder)?
            .into_iter()
            .filter(|k| k.uidvalidity == uidvalidity)
            .map(|k| k.uid)
            .collect();
        let candidates: Vec<u32> = uids.into_iter().filter(|u| !recorded.contains(u)).collect();
        let prints = if candidates.is_empty() {
            Vec::new()
        } else {
            match session.fetch_fingerprints(&candidates).await {
                Ok(p) => p,
                Err(e) => {
                    failed.push((folder, e));
                    continue;
                }
            }
        };
        let mut taken: HashSet<u32> = HashSet::new();
        for u in entries {
            let hit = prints.iter().find(|p| {
                !taken.contains(&p.uid)
                    && (
                        p.message_id.as_deref(),
                        p.size,
                        p.message_id.is_none().then_some(p.internaldate),
                    ) == u.fingerprint.pairing_key()
            });
            let Some(p) = hit else {
                state.resolve(&[u.id])?;
                continue;
            };
            taken.insert(p.uid);
            let fingerprint = Fingerprint {
                message_id: p.message_id.clone(),
                size: p.size,
                internaldate: p.internaldate,
            };
            matched.push((u, folder, uidvalidity, p.uid, fingerprint));
        }
    }
    // A COPY that landed before its EXPUNGE did: the originals go first, each folder's
    // in one go (without UIDPLUS an EXPUNGE is sent only when no other message is
    // marked, and a killed batch left all of them marked). An entry whose original
    // could not go stays journalled: binding it now would leave the original without a
    // record, to be downloaded again as new.
    let mut stuck: HashSet<FolderId> = HashSet::new();
    if recovering {
        let mut by_source: BTreeMap<(FolderId, u32), Vec<u32>> = BTreeMap::new();
        for (u, ..) in &matched {
            if let Some((folder, uidvalidity, uid)) = u.origin {
                by_source
                    .entry((folder, uidvalidity))
                    .or_default()
                    .push(uid);
            }
        }
        for ((folder, uidvalidity), uids) in by_source {
            let Some(f) = folders.get(&folder) else {
                stuck.insert(folder);
                continue;
            };
            let result = async {
                session.select_listed(&f.remote, uidvalidity).await?;
                let from = uids.iter().copied().min().unwrap_or(1);
                let there: HashSet<u32> = session.uids_from(from).await?.into_iter().collect();
                let left: Vec<u32> = uids.into_iter().filter(|u| there.contains(u)).collect();
                if !left.is_empty() {
                    session.expunge_messages(&left).await?;
                }
                Ok::<(), ImapError>(())
            }
            .await;
            if let Err(e) = result {
                stuck.insert(folder);
                failed.push((folder, e));
            }
        }
    }
    let mut flagged: BTreeMap<(FolderId, u32), Vec<u32>> = BTreeMap::new();
    for (u, folder, uidvalidity, uid, fingerprint) in matched {
        if u.origin.is_some_and(|(source, ..)| stuck.contains(&source)) {
            continue;
        }
        if u.base.is_empty() {
            // A deletion moved to the trash: the trash's copy is downloaded as new.
            if let Some((f, v, uid)) = u.origin
                && let Some(r) = state.record(f, v, uid)?
            {
                state.forget_records(&[r])?;
            }
            state.resolve(&[u.id])?;
            continue;
        }
        let record = Record {
            folder,
            uidvalidity,
            uid,
            base: u.base.clone(),
            flags: u.flags,
            fingerprint,
        };
        state.bind_upload(u.id, &record, u.origin)?;
        if u.origin.is_none() && u.flags.contains(Flags::FLAGGED) {
            flagged.entry((folder, uidvalidity)).or_default().push(uid);
        }
    }
    // Exchange is reported to drop \Flagged given with APPEND.
    for ((folder, uidvalidity), uids) in flagged {
        let Some(f) = folders.get(&folder) else {
            continue;
        };
        let result = async {
            session.select_listed(&f.remote, uidvalidity).await?;
            session
                .store_flags(&uids, Flags::FLAGGED, Flags::empty())
                .await
        }
        .await;
        if let Err(e) = result {
            failed.push((folder, e));
        }
    }
    Ok(failed)
}

/// Finishes the uploads a killed run left journalled (see the module's header): each
/// is found again and bound, or dropped to be sent again. Returns the folders that
/// failed.
pub(super) async fn recover(
    session: &mut Session,
    state: &mut State,
    account: &str,
    folders: &HashMap<FolderId, Folder>,
) -> Result<Vec<(FolderId, ImapError)>, SyncError> {
    let mut unbound = Vec::new();
    for e in state.journal(account)? {
        let Effect::Upload {
            uidnext,
            flags,
            origin,
        } = e.effect
        else {
            continue;
        };
        let Some(f) = folders.get(&e.folder) else {
            continue; // not mapped this pass: kept for a pass that maps it
        };
        let fingerprint = match origin {
            Some((folder, v, uid)) => state.record(folder, v, uid)?.map(|r| r.fingerprint),
            None => f
                .maildir
                .locate(&e.base, flags)
                .ok()
                .flatten()
                .and_then(|p| local::fingerprint(&p).ok()),
        };
        let Some(fingerprint) = fingerprint else {
            // Nothing left to look for: the plan decides afresh.
            state.resolve(&[e.id])?;
            continue;
        };
        unbound.push(Unbound {
            id: e.id,
            folder: e.folder,
            base: e.base,
            flags,
            uidnext,
            origin,
            fingerprint,
        });
    }
    if unbound.is_empty() {
        return Ok(Vec::new());
    }
    tracing::info!(
        uploads = unbound.len(),
        "finishing uploads a previous run left journalled"
    );
    find_again(session, state, folders, unbound, true).await
}
