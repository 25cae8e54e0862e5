//! Observing the local side of a two-way account: which message files the mapped
//! folders hold, for the planner's [`LocalView`].
//!
//! A pass must not read 100,000 file names when nothing changed: a folder whose
//! `cur/` and `new/` modification times are those its last two-way pass kept (see
//! [`keep_stamps`]) changed nothing, since every file added, renamed or removed there
//! changes them. Only when some folder changed is every mapped folder read (a move
//! changes two), with the records; otherwise the view is `None` and two-way plans as
//! pull does.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::maildir::{Maildir, Stamp};
use crate::state::State;

use super::error::{SyncError, maildir_err};
use super::model::{Fingerprint, FolderId, LocalNew, LocalView};

/// A mapped folder as the local observer needs it.
pub(super) struct Folder {
    pub id: FolderId,
    /// Not created if missing: a missing folder must stay missing.
    pub maildir: Maildir,
    /// The stamp its last two-way pass kept.
    pub kept: Option<Stamp>,
}

/// What [`observe`] found.
pub(super) struct Observed {
    /// `None` when no folder changed.
    pub view: Option<LocalView>,
    /// Each folder's stamp, read before its files were: what the pass keeps at its end
    /// if the folder did not change meanwhile (see [`keep_stamps`]).
    pub stamps: HashMap<FolderId, Stamp>,
    /// When the stamps were read (ns since the epoch).
    pub read_at: i128,
}

/// Reads the local side of `folders`.
pub(super) fn observe(state: &State, folders: &[Folder]) -> Result<Observed, SyncError> {
    let read_at = now_nanos();
    let stamps = stamps_of(folders)?;
    let changed = folders
        .iter()
        .any(|f| stamps.get(&f.id).is_none_or(|s| f.kept != Some(*s)));
    if !changed {
        tracing::debug!("local folders unchanged since the last pass: not read");
        return Ok(Observed {
            view: None,
            stamps,
            read_at,
        });
    }
    let mut view = LocalView::default();
    for f in folders {
        view.held.extend(state.records(f.id)?);
    }
    // The folders are read one after the other: a mail reader renaming or moving a
    // file meanwhile could leave it in no listing, which would read as a deletion.
    // The listings count only if no folder's stamp moved while they were taken; after
    // a few tries, the pass goes on without deleting or uploading anything.
    let mut stamps = stamps;
    let mut read_at = read_at;
    let mut files_of: Vec<(FolderId, Vec<crate::maildir::LocalFile>)> = Vec::new();
    for attempt in 1..=READ_ATTEMPTS {
        files_of.clear();
        for f in folders {
            // A missing folder (failed by the pass) is not read: its records' files
            // are unknown, not gone.
            if stamps.contains_key(&f.id) {
                let files = f.maildir.list().map_err(maildir_err(f.maildir.root()))?;
                files_of.push((f.id, files));
            }
        }
        let after = stamps_of(folders)?;
        if after == stamps {
            break;
        }
        tracing::debug!(
            attempt,
            "a local folder changed while it was read: reading again"
        );
        if attempt == READ_ATTEMPTS {
            view.unsettled = true;
        }
        stamps = after;
        read_at = now_nanos();
    }
    for (folder, files) in &files_of {
        view.files.insert(
            *folder,
            files.iter().map(|l| (l.base.clone(), l.flags)).collect(),
        );
    }
    let named: HashSet<&str> = view.held.iter().map(|r| r.base.as_str()).collect();
    let mut fresh = Vec::new();
    for (folder, files) in &files_of {
        let refused = state.refused_uploads(*folder)?;
        for file in files {
            if named.contains(file.base.as_str()) || refused.contains(&file.base) {
                continue;
            }
            // A file that vanished since the listing was taken is simply not new.
            let Ok(fingerprint) = fingerprint(&file.path) else {
                continue;
            };
            fresh.push(LocalNew {
                folder: *folder,
                base: file.base.clone(),
                flags: file.flags,
                fingerprint,
            });
        }
    }
    view.fresh = fresh;
    tracing::debug!(
        files = view.files.values().map(HashMap::len).sum::<usize>(),
        new = view.fresh.len(),
        "local folders read"
    );
    Ok(Observed {
        view: Some(view),
        stamps,
        read_at,
    })
}

/// How many times the folders are read while a mail reader keeps changing them.
const READ_ATTEMPTS: usize = 3;

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The stamps of the folders that exist.
fn stamps_of(folders: &[Folder]) -> Result<HashMap<FolderId, Stamp>, SyncError> {
    let mut stamps = HashMap::new();
    for f in folders {
        if let Some(s) = f.maildir.stamp().map_err(maildir_err(f.maildir.root()))? {
            stamps.insert(f.id, s);
        }
    }
    Ok(stamps)
}

/// What identifies a local file once uploaded: its Message-ID, its size with CRLF line
/// ends (as sent, and as the server counts it), and its modification time (sent as its
/// INTERNALDATE).
pub(super) fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let mut file = std::fs::File::open(path)?;
    let modified = file.metadata()?.modified()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Fingerprint {
        // Read as a downloaded message's is (writer.rs), so the two compare.
        message_id: crate::headers::parse(&bytes).0,
        size: crlf_len(&bytes),
        internaldate: seconds(modified),
    })
}

/// Seconds since the epoch (0 for a time before it).
fn seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The length of `bytes` with every bare LF written as CRLF.
pub(super) fn crlf_len(bytes: &[u8]) -> u64 {
    let bare = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
        .count();
    (bytes.len() + bare) as u64
}

/// `bytes` with every bare LF written as CRLF, as IMAP wants a message.
pub(super) fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(crlf_len(bytes) as usize);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// How old a stamp must be to be kept: a change within the same tick of the
/// filesystem's clock as the stamp would not change it. Times with sub-second digits
/// come from a clock that ticks every few milliseconds (ext4, XFS, btrfs, tmpfs);
/// whole seconds may mean a clock of a second or two (FAT, some network file systems).
const SETTLED_FINE: Duration = Duration::from_millis(100);
const SETTLED_COARSE: Duration = Duration::from_secs(2);

fn settled_after(stamp: Stamp) -> Duration {
    if stamp.cur % 1_000_000_000 == 0 || stamp.new % 1_000_000_000 == 0 {
        SETTLED_COARSE
    } else {
        SETTLED_FINE
    }
}

/// At the end of a pass, keeps for each folder the stamp read before its files were,
/// if the folder still has it (nothing changed it during the pass, the pass's own
/// renames and deliveries included) and it is old enough ([`settled_after`]); otherwise the
/// stamp is cleared, and the next pass reads the folder again.
///
/// The stamp was read before the files: a change after that moves it, so what the pass
/// saw is kept only while the folder is still exactly as it was then.
pub(super) fn keep_stamps(
    state: &mut State,
    folders: &[Folder],
    seen: &Observed,
) -> Result<(), SyncError> {
    for f in folders {
        let Some(before) = seen.stamps.get(&f.id) else {
            continue;
        };
        let after = f.maildir.stamp().map_err(maildir_err(f.maildir.root()))?;
        // Settled when the stamp was read, not now: a change in the same tick as the
        // stamp, after it was read, would not have moved it.
        let settled =
            (before.latest() as i128) < seen.read_at - settled_after(*before).as_nanos() as i128;
        let keep = (after == Some(*before) && settled).then_some(*before);
        if keep != f.kept {
            state.set_local_stamp(f.id, keep)?;
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_are_counted_and_written_as_crlf() {
        assert_eq!(crlf_len(b"a\nb\r\nc\n"), 9);
        assert_eq!(to_crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(to_crlf(b"\n"), b"\r\n");
        assert_eq!(crlf_len(b""), 0);
    }
}
