//! Observing: what the server and the records say of each folder, for the planner's
//! snapshot, and the answers to what the planner asks next ([`Need`]). How each is
//! asked on the wire is the IMAP module's business (`Session::open_listing`,
//! `Session::listing`): nothing here assembles a command.

use std::collections::HashSet;

use crate::imap::{self, Session};
use crate::state::{FolderRow, State};

use super::error::Failed;
use super::plan::{self, ListingMode, Need, Observed, Snapshot, Watermark};

/// The watermark a folder row holds, if it was ever synced.
pub(super) fn stored(row: &FolderRow) -> Option<Watermark> {
    row.uidvalidity.map(|uidvalidity| Watermark {
        uidvalidity,
        uidnext: row.uidnext,
        highestmodseq: row.highestmodseq,
    })
}

/// Selects and lists one folder. The records are read only when it changed: a no-op
/// pass over a large folder reads none (one indexed count instead). Returns what was
/// observed and what the SELECT reported.
pub(super) async fn folder(
    session: &mut Session,
    state: &mut State,
    row: &FolderRow,
    remote: &str,
    local: &str,
) -> Result<(Observed, imap::Selected), Failed> {
    let records = state.count_records(row.id)?;
    let stored = stored(row);
    let since = stored.and_then(|s| Some((s.uidvalidity, s.highestmodseq?)));
    // In a folder already synced, the sizes of messages new since come with the
    // SELECT: pairing needs them if anything vanished (a few bytes a message; none at
    // all in an initial sync).
    let sizes_from = row.uidnext.filter(|_| records > 0);
    let mut opened = session.open_listing(remote, since, sizes_from).await?;
    let sel = opened.selected().clone();
    let server = Watermark {
        uidvalidity: sel.uidvalidity,
        uidnext: sel.uidnext,
        highestmodseq: sel.highestmodseq,
    };
    let mode = plan::listing_mode(stored, server, sel.exists, records, session.has_condstore());
    let sizes = opened
        .sizes
        .take()
        .filter(|_| row.uidvalidity == Some(sel.uidvalidity));
    let changed_since = match mode {
        ListingMode::Unchanged => {
            tracing::debug!(folder = %local, "unchanged");
            return Ok((Observed::new(row.id, server, None, Vec::new()), sel));
        }
        ListingMode::Changes { since } => Some(since),
        ListingMode::Full => None,
    };
    let known = state.known(row.id)?;
    let held: HashSet<u32> = known
        .iter()
        .filter(|k| k.uidvalidity == sel.uidvalidity)
        .map(|k| k.uid)
        .collect();
    let listing = session.listing(opened, changed_since, &held).await?;
    if row.uidvalidity.is_some_and(|v| v != sel.uidvalidity) {
        tracing::warn!(
            folder = %local,
            old = row.uidvalidity,
            new = sel.uidvalidity,
            "UIDVALIDITY changed: re-pairing messages by Message-ID, size and date"
        );
    }
    tracing::debug!(
        folder = %local,
        listed = listing.entries.len(),
        complete = listing.complete,
        vanished = listing.vanished.len(),
        "listed"
    );
    let mut observed = Observed::new(row.id, server, Some(listing), known);
    if let Some((from, sizes)) = sizes {
        observed.sizes_from = Some(from);
        observed
            .sizes
            .extend(sizes.into_iter().map(|(uid, size)| (uid, Some(size))));
    }
    Ok((observed, sel))
}

/// Answers one of the planner's questions into `snapshot`: from the records, or from
/// the server (`remote` is the folder's name on the wire).
pub(super) async fn answer(
    session: &mut Session,
    state: &mut State,
    snapshot: &mut Snapshot,
    need: &Need,
    remote: &str,
) -> Result<(), Failed> {
    let folder = need.folder();
    let Some(observed) = snapshot.folders.iter_mut().find(|f| f.id == folder) else {
        return Ok(());
    };
    let uidvalidity = observed.server.uidvalidity;
    match need {
        Need::Records { keys, .. } => {
            for record in state.records_for(folder, keys)? {
                snapshot
                    .records
                    .insert((record.folder, record.uidvalidity, record.uid), record);
            }
        }
        Need::Sizes { uids, .. } => {
            session.select_listed(remote, uidvalidity).await?;
            let sizes = session.fetch_sizes(uids).await?;
            // What the server did not describe is gone, or odd: a fetch finds out.
            observed.sizes.extend(uids.iter().map(|&uid| (uid, None)));
            observed
                .sizes
                .extend(sizes.into_iter().map(|(uid, size)| (uid, Some(size))));
        }
        Need::Descriptions { uids, .. } => {
            session.select_listed(remote, uidvalidity).await?;
            let prints = session.fetch_fingerprints(uids).await?;
            observed
                .described
                .extend(uids.iter().map(|&uid| (uid, None)));
            observed.described.extend(prints.into_iter().map(|p| {
                let fingerprint = super::model::Fingerprint {
                    message_id: p.message_id,
                    size: p.size,
                    internaldate: p.internaldate,
                };
                (p.uid, Some((p.flags, fingerprint)))
            }));
        }
    }
    Ok(())
}
