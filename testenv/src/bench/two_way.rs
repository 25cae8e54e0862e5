//! Scenario e, two-way push: the same local change set, made in mailsync's and in
//! mbsync's Maildir as a mail reader would, and one pass of each tool sending it to
//! the server; then the server each tool left, compared.
//!
//! It starts from the tool's store in sync with the server (after scenario c, or with
//! `--two-way-only` after one unmeasured initial sync of the pristine server) and one
//! unmeasured two-way pass on it, so the tool's state is that of a two-way user (it
//! sends nothing: the server is unchanged, which the "same state before" line checks).
//! The server is then snapshotted (`Snapshot::TwoWay`, per tool like `changed`: see
//! `server`) and the store copied aside; every run restores both, applies the change
//! set, and times:
//!
//! - e: the pass that sends it;
//! - e1: the next pass, nothing changed. mailsync reads its local folders again here: it
//!   keeps a folder's directory times only once they are over 2 s older than the
//!   whole second the pass ends in (its `SETTLED`; 2 to 3 s), and e's changes were made
//!   1.1 s before e started. Run once the store has been still for over 3 s, as a next
//!   pass after a pause in reading mail is, so that it keeps them;
//! - e2: the pass after, nothing changed: the two-way no-op, against b's pull no-op;
//! - e3: a pull pass (the tool's pull config) after it: the pull no-op on the same
//!   store and the same server as e2, which b (before the change set, on the server
//!   as the first sync left it) is not.
//!
//! The change set ([`ChangeSet::plan`]), chosen once per profile by Message-ID from the
//! server as the first tool found it, in proportion to the folders' sizes as scenario c
//! is: 2,000 flags added (`S` where unseen, else `F`) by renaming the file's info
//! part; 100 files deleted; 50 files moved into another mapped folder's `cur/` (30
//! from INBOX to Archive, 20 back); 20 new messages written into `new/` (through
//! `tmp/`, CRLF, Message-IDs of their own; seed 4545, the corpus's folder split and
//! sizes up to 200 KB). A small corpus gets fewer: at most half a folder flagged and a
//! twentieth deleted, and as much moved (2,000 messages: 999, 99 and 49).
//! mbsync names its files `…,U=<uid>:2,<flags>` with the UID of its own Maildir
//! folder; a file moved to another folder loses the `,U=` (as a reader that knows
//! mbsync does), so mbsync sees a deletion and a new message, which it sends as an
//! expunge and an upload: its cost, reported as it is.
//!
//! After each run's e2 the server is read (per folder, the Message-ID and system flags
//! of every message) and compared: with the other tool's, and with what the change
//! set should make of the state before ([`ChangeSet::expected`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use async_imap::types::Flag;
use futures::TryStreamExt as _;
use mailsync_testenv::{CorpusMessage, Role};

use super::compare::{self, Digest};
use super::fsutil::{copy_tree, remove_tree};
use super::measure::{self, Run};
use super::server::{FOLDERS, Server, Snapshot};
use super::tools::{Setup, Tool};

/// The change set's size (for a corpus too small for it, capped per folder).
pub const FLAG_CHANGES: usize = 2000;
pub const DELETES: usize = 100;
/// (from, to, how many): folder indexes into [`FOLDERS`].
pub const MOVES: [(usize, usize, usize); 2] = [(0, 1, 30), (1, 0, 20)];
pub const NEW_LOCAL: usize = 20;

/// Whether scenario e applies to `tool` (OfflineIMAP is left out).
pub fn supports(tool: Tool) -> bool {
    matches!(tool, Tool::Mailsync | Tool::Mbsync)
}

/// One message on the server.
#[derive(Clone, Debug)]
pub struct ServerMessage {
    pub uid: u32,
    pub message_id: String,
    /// Maildir letters of its system flags, sorted, then its keywords.
    pub flags: String,
}

/// Per folder ([`FOLDERS`] order), the sorted (Message-ID, flags) of every message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState(pub Vec<Vec<(String, String)>>);

impl ServerState {
    pub fn of(listing: &[Vec<ServerMessage>]) -> ServerState {
        ServerState(
            listing
                .iter()
                .map(|l| {
                    let mut v: Vec<(String, String)> = l
                        .iter()
                        .map(|m| (m.message_id.clone(), m.flags.clone()))
                        .collect();
                    v.sort();
                    v
                })
                .collect(),
        )
    }

    /// Messages per folder.
    pub fn counts(&self) -> Vec<usize> {
        self.0.iter().map(Vec::len).collect()
    }

    /// "yes", or "no" and per folder what differs from `other`.
    pub fn verdict(&self, other: &ServerState) -> String {
        if self == other {
            return "yes".into();
        }
        let mut parts = Vec::new();
        for (i, (a, b)) in self.0.iter().zip(&other.0).enumerate() {
            let ma: BTreeMap<&str, &str> =
                a.iter().map(|(k, f)| (k.as_str(), f.as_str())).collect();
            let mb: BTreeMap<&str, &str> =
                b.iter().map(|(k, f)| (k.as_str(), f.as_str())).collect();
            let only_a = ma.keys().filter(|k| !mb.contains_key(*k)).count();
            let only_b = mb.keys().filter(|k| !ma.contains_key(*k)).count();
            let flags = ma
                .iter()
                .filter(|(k, f)| mb.get(*k).is_some_and(|g| g != *f))
                .count();
            // Duplicate Message-IDs collapse in the maps: count them too.
            let twice = (a.len() - ma.len()) + (b.len() - mb.len());
            if only_a + only_b + flags + twice > 0 {
                parts.push(format!(
                    "{}: {only_a} only here, {only_b} only there, {flags} flag diffs{}",
                    FOLDERS[i],
                    if twice > 0 {
                        format!(", {twice} twice")
                    } else {
                        String::new()
                    }
                ));
            }
        }
        format!("no ({})", parts.join("; "))
    }
}

/// Every message of every folder, by UID (the master login; EXAMINE, so nothing
/// changes, though Dovecot caches the Message-ID field it is asked for: restore a
/// snapshot before timing anything after this).
pub async fn list_server(server: &Server) -> Result<Vec<Vec<ServerMessage>>> {
    let mut session = server.admin_session().await?;
    let mut out = Vec::new();
    for folder in FOLDERS {
        let mailbox = session
            .examine(folder)
            .await
            .with_context(|| format!("EXAMINE {folder}"))?;
        let mut list = Vec::new();
        if mailbox.exists > 0 {
            let fetches: Vec<_> = session
                .uid_fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                .await?
                .try_collect()
                .await
                .with_context(|| format!("FETCH in {folder}"))?;
            for f in &fetches {
                let Some(uid) = f.uid else { continue };
                list.push(ServerMessage {
                    uid,
                    message_id: f.header().and_then(message_id).unwrap_or_default(),
                    flags: flag_letters(f.flags()),
                });
            }
        }
        while session.unsolicited_responses.try_recv().is_ok() {}
        list.sort_by_key(|m| m.uid);
        out.push(list);
    }
    session.logout().await?;
    Ok(out)
}

/// Maildir letters (sorted) of the system flags, then the keywords; `\Recent` left out.
pub fn flag_letters<'a>(flags: impl Iterator<Item = Flag<'a>>) -> String {
    let mut letters = Vec::new();
    let mut keywords = Vec::new();
    for f in flags {
        match f {
            Flag::Seen => letters.push('S'),
            Flag::Answered => letters.push('R'),
            Flag::Flagged => letters.push('F'),
            Flag::Deleted => letters.push('T'),
            Flag::Draft => letters.push('D'),
            Flag::Custom(k) => keywords.push(k.to_string()),
            Flag::Recent | Flag::MayCreate => {}
        }
    }
    letters.sort_unstable();
    keywords.sort();
    let mut s: String = letters.into_iter().collect();
    for k in keywords {
        s.push(' ');
        s.push_str(&k);
    }
    s
}

/// The Message-ID in a header block (LF or CRLF line ends), unfolded and trimmed.
pub fn message_id(header: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    let mut value: Option<String> = None;
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            break;
        }
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((name, rest)) = line.split_once(':')
            && name.eq_ignore_ascii_case("message-id")
        {
            value = Some(rest.trim().to_string());
        }
    }
    value.filter(|v| !v.is_empty())
}

/// A file's header block: read in pieces until its blank line (or the file's end).
fn read_header(path: &Path) -> Result<Vec<u8>> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(2).any(|w| w == b"\n\n") || out.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(out);
        }
    }
}

/// Per folder, Message-ID → the file's path (`cur/` and `new/`).
pub fn index_store(folders: &[PathBuf]) -> Result<Vec<HashMap<String, PathBuf>>> {
    let mut out = Vec::new();
    for f in folders {
        let mut map = HashMap::new();
        for sub in ["cur", "new"] {
            let dir = f.join(sub);
            for e in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
                let path = e?.path();
                let Some(id) = message_id(&read_header(&path)?) else {
                    continue;
                };
                if let Some(other) = map.insert(id.clone(), path.clone()) {
                    bail!(
                        "{id} twice in {}: {} and {}",
                        f.display(),
                        path.display(),
                        other.display()
                    );
                }
            }
        }
        out.push(map);
    }
    Ok(out)
}

/// A file name with `letter` added to its info part (`new/` names have none yet).
pub(super) fn with_flag(name: &str, letter: char) -> String {
    let (base, flags) = name.split_once(":2,").unwrap_or((name, ""));
    let mut letters: Vec<char> = flags.chars().collect();
    letters.push(letter);
    letters.sort_unstable();
    letters.dedup();
    format!("{base}:2,{}", letters.into_iter().collect::<String>())
}

/// The name a file moved into another folder's `cur/` gets: its info part kept (an
/// empty one added if it had none); for mbsync, without the `,U=<uid>` of the folder
/// it left.
fn moved_name(name: &str, strip_uid: bool) -> String {
    let (base, flags) = name.split_once(":2,").unwrap_or((name, ""));
    let base = match (strip_uid, base.find(",U=")) {
        (true, Some(at)) => {
            let rest = &base[at + 3..];
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            format!("{}{}", &base[..at], &rest[digits..])
        }
        _ => base.to_string(),
    };
    format!("{base}:2,{flags}")
}

/// The local changes of scenario e, by Message-ID; folder indexes into [`FOLDERS`].
#[derive(Clone, Debug)]
pub struct ChangeSet {
    /// (folder, Message-ID, the flag letter added).
    pub flags: Vec<(usize, String, char)>,
    pub deletes: Vec<(usize, String)>,
    /// (from, to, Message-ID).
    pub moves: Vec<(usize, usize, String)>,
    /// (folder, Message-ID, the file's bytes).
    pub new: Vec<(usize, String, Vec<u8>)>,
}

impl ChangeSet {
    /// Chooses the change set from the server's state `before` (seeded, so the same
    /// state gives the same set), and the new local messages from `new_mail`.
    pub fn plan(before: &ServerState, new_mail: &[CorpusMessage]) -> Result<ChangeSet> {
        let mut rng = mailsync_testenv::random::SplitMix64::new(4711);
        let total = before.counts().iter().sum::<usize>().max(1);
        let mut set = ChangeSet {
            flags: Vec::new(),
            deletes: Vec::new(),
            moves: Vec::new(),
            new: Vec::new(),
        };
        let (mut flags_left, mut deletes_left) = (FLAG_CHANGES, DELETES);
        for (i, list) in before.0.iter().enumerate() {
            // In proportion to the folder's size, as scenario c; the last folder takes
            // the remainder; at most half (flags) and a twentieth (deletes, moves) of it.
            let last = i + 1 == before.0.len();
            let share = |n: usize, left: usize| if last { left } else { n * list.len() / total };
            let flags = share(FLAG_CHANGES, flags_left).min(list.len() / 2);
            let deletes = share(DELETES, deletes_left).min(list.len() / 20);
            flags_left = flags_left.saturating_sub(flags);
            deletes_left = deletes_left.saturating_sub(deletes);
            let moves: Vec<(usize, usize)> = MOVES
                .iter()
                .filter(|m| m.0 == i)
                .map(|m| (m.1, m.2.min(list.len() / 20)))
                .collect();
            let mut order: Vec<usize> = (0..list.len()).collect();
            for j in (1..order.len()).rev() {
                order.swap(j, rng.below(j as u64 + 1) as usize);
            }
            let mut picks = order
                .into_iter()
                .map(|j| &list[j])
                .filter(|(id, _)| !id.is_empty());
            let mut taken = 0;
            while taken < flags {
                let Some((id, f)) = picks.next() else { break };
                // What a reader does most: read it; else flag it. Neither: next one.
                let letter = match (f.contains('S'), f.contains('F')) {
                    (false, _) => 'S',
                    (true, false) => 'F',
                    (true, true) => continue,
                };
                set.flags.push((i, id.clone(), letter));
                taken += 1;
            }
            for (id, _) in picks.by_ref().take(deletes) {
                set.deletes.push((i, id.clone()));
            }
            for (to, n) in moves {
                for (id, _) in picks.by_ref().take(n) {
                    set.moves.push((i, to, id.clone()));
                }
            }
        }
        let known: std::collections::HashSet<&str> = before
            .0
            .iter()
            .flatten()
            .map(|(id, _)| id.as_str())
            .collect();
        for m in new_mail {
            if known.contains(m.message_id.as_str()) {
                bail!(
                    "new local message {} is on the server already",
                    m.message_id
                );
            }
            let folder = match m.role {
                Role::Inbox => 0,
                Role::Archive => 1,
                Role::Trash => 2,
            };
            set.new
                .push((folder, m.message_id.clone(), m.bytes.clone()));
        }
        Ok(set)
    }

    /// What the server should hold once the set is sent, from `before`: new messages
    /// without flags (they are written into `new/`), moved ones with their flags.
    pub fn expected(&self, before: &ServerState) -> ServerState {
        let mut folders: Vec<BTreeMap<String, String>> = before
            .0
            .iter()
            .map(|l| l.iter().cloned().collect())
            .collect();
        for (i, id, letter) in &self.flags {
            if let Some(f) = folders[*i].get_mut(id) {
                let mut letters: Vec<char> = f.chars().collect();
                letters.push(*letter);
                letters.sort_unstable();
                letters.dedup();
                *f = letters.into_iter().collect();
            }
        }
        for (i, id) in &self.deletes {
            folders[*i].remove(id);
        }
        for (from, to, id) in &self.moves {
            if let Some(f) = folders[*from].remove(id) {
                folders[*to].insert(id.clone(), f);
            }
        }
        for (i, id, _) in &self.new {
            folders[*i].insert(id.clone(), String::new());
        }
        ServerState(
            folders
                .into_iter()
                .map(|m| m.into_iter().collect())
                .collect(),
        )
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "{} flag changes, {} deletes, {} moves, {} new local messages",
            self.flags.len(),
            self.deletes.len(),
            self.moves.len(),
            self.new.len()
        )
    }

    /// Makes the changes in `setup`'s Maildir, as a mail reader would.
    pub fn apply(&self, setup: &Setup) -> Result<()> {
        let index = index_store(&setup.folders)?;
        let path_of = |i: usize, id: &str| -> Result<&PathBuf> {
            index[i]
                .get(id)
                .with_context(|| format!("{id} not in {}", setup.folders[i].display()))
        };
        let name = |p: &Path| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        };
        for (i, id, letter) in &self.flags {
            let from = path_of(*i, id)?;
            let to = setup.folders[*i]
                .join("cur")
                .join(with_flag(&name(from), *letter));
            std::fs::rename(from, &to).with_context(|| format!("rename {}", from.display()))?;
        }
        for (i, id) in &self.deletes {
            let path = path_of(*i, id)?;
            std::fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
        }
        for (from, to, id) in &self.moves {
            let path = path_of(*from, id)?;
            let strip = setup.tool == Tool::Mbsync;
            let dest = setup.folders[*to]
                .join("cur")
                .join(moved_name(&name(path), strip));
            std::fs::rename(path, &dest).with_context(|| format!("rename {}", path.display()))?;
        }
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        for (n, (i, _, bytes)) in self.new.iter().enumerate() {
            let file = format!("{secs}.B{n}P{}.bench-reader", std::process::id());
            let tmp = setup.folders[*i].join("tmp").join(&file);
            std::fs::create_dir_all(setup.folders[*i].join("tmp"))?;
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, setup.folders[*i].join("new").join(&file))?;
        }
        Ok(())
    }
}

/// Sleeps until every folder's `cur/` and `new/` last changed over 2 s ago: with
/// `measure::run`'s own 1.1 s wait, the next run starts once they are over 3 s old, so
/// a mailsync pass keeps their times whatever the fraction of the second it ends in.
fn wait_settled(folders: &[PathBuf]) -> Result<()> {
    let mut latest = SystemTime::UNIX_EPOCH;
    for f in folders {
        for sub in ["cur", "new"] {
            let dir = f.join(sub);
            let m = std::fs::metadata(&dir).with_context(|| format!("stat {}", dir.display()))?;
            latest = latest.max(m.modified()?);
        }
    }
    let ready = latest + Duration::from_secs(2);
    if let Ok(left) = ready.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
    Ok(())
}

/// What scenario e measured for one tool.
pub struct Outcome {
    pub push: Vec<Run>,
    pub next: Vec<Run>,
    pub noop: Vec<Run>,
    pub pull: Vec<Run>,
    /// The server before the change set (the two-way snapshot).
    pub before: ServerState,
    /// The server after the last run's e2.
    pub after: ServerState,
    /// Whether every run left the same server.
    pub runs_agree: bool,
    /// The tool's Maildir after the last run.
    pub digest: Digest,
}

/// Runs scenario e for `pull`'s tool `runs` times (see the module header). `plan` is
/// the profile's change set, chosen here by the first tool; `baseline` is where the
/// store is kept aside; `record(scenario, run, r)` is called for every timed pass, with
/// scenario [`super::E`], [`super::E_NEXT`], [`super::E_NOOP`] or [`super::E_PULL`].
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    pull: &Setup,
    server: &mut Server,
    logs: &Path,
    baseline: &Path,
    runs: usize,
    plan: &mut Option<ChangeSet>,
    new_mail: &[CorpusMessage],
    record: &mut dyn FnMut(usize, usize, &Run) -> Result<()>,
) -> Result<Outcome> {
    let tool = pull.tool.name();
    let two = pull.two_way()?;
    // One two-way pass with nothing to send, on a store that has been still long
    // enough for mailsync to keep its folders' times: the state of a two-way user.
    wait_settled(&two.folders)?;
    measure::run(&two, server, logs, &format!("{tool}-e-settle"))
        .with_context(|| format!("{tool}: first two-way pass"))?;
    server.take(Snapshot::TwoWay)?;
    let before = ServerState::of(&list_server(server).await?);
    if plan.is_none() {
        *plan = Some(ChangeSet::plan(&before, new_mail)?);
    }
    let Some(set) = plan.as_ref() else {
        bail!("no change set");
    };
    remove_tree(baseline)?;
    copy_tree(&two.dir, baseline)?;
    let mut out = Outcome {
        push: Vec::new(),
        next: Vec::new(),
        noop: Vec::new(),
        pull: Vec::new(),
        before,
        after: ServerState(Vec::new()),
        runs_agree: true,
        digest: Digest(Vec::new()),
    };
    for i in 0..runs {
        server.restore(Snapshot::TwoWay)?;
        remove_tree(&two.dir)?;
        copy_tree(baseline, &two.dir)?;
        set.apply(&two)?;
        for (s, setup, passes) in [
            (super::E, &two, &mut out.push),
            (super::E_NEXT, &two, &mut out.next),
            (super::E_NOOP, &two, &mut out.noop),
            (super::E_PULL, pull, &mut out.pull),
        ] {
            if s == super::E_NEXT {
                wait_settled(&two.folders)?;
            }
            let label = format!("{tool}-{}-{}", super::key(s), i + 1);
            let r = measure::run(setup, server, logs, &label)
                .with_context(|| format!("{tool} {}", super::SCENARIOS[s]))?;
            record(s, i, &r)?;
            passes.push(r);
        }
        let after = ServerState::of(&list_server(server).await?);
        if i > 0 && after != out.after {
            out.runs_agree = false;
        }
        out.after = after;
    }
    out.digest = compare::digest(&two.folders)?;
    remove_tree(baseline)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_change_as_a_reader_changes_them() {
        assert_eq!(with_flag("1.M2.host:2,S", 'F'), "1.M2.host:2,FS");
        assert_eq!(with_flag("1.M2.host", 'S'), "1.M2.host:2,S");
        assert_eq!(moved_name("1.M2.host,U=17:2,RS", true), "1.M2.host:2,RS");
        assert_eq!(moved_name("1.M2.host,U=17", true), "1.M2.host:2,");
        assert_eq!(moved_name("1.M2.host_17:2,S", false), "1.M2.host_17:2,S");
    }

    #[test]
    fn message_ids_are_read_from_either_line_end() {
        assert_eq!(
            message_id(b"From: a\r\nMessage-Id:\r\n <x@y>\r\n\r\nMessage-ID: <no>"),
            Some("<x@y>".into())
        );
        assert_eq!(
            message_id(b"message-id: <a@b>\nTo: c\n\n"),
            Some("<a@b>".into())
        );
        assert_eq!(message_id(b"To: c\n\nMessage-ID: <body@x>\n"), None);
    }
}
