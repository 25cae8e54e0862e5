//! Pure types shared by the planner, the executor and the state store: flags,
//! remote listings, records of what was synced, and the actions a plan is made of.

use crate::flags::Flags;

/// What identifies a message across folders and UIDVALIDITY changes, when its UID
/// cannot: the Message-ID, the size, and the INTERNALDATE (seconds since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub message_id: Option<String>,
    pub size: u64,
    pub internaldate: i64,
}

impl Fingerprint {
    /// The key two fingerprints must share to be taken for the same message. With a
    /// Message-ID, the ID and the size (servers may re-stamp INTERNALDATE on a copy);
    /// without one, the size and the INTERNALDATE.
    pub fn pairing_key(&self) -> (Option<&str>, u64, Option<i64>) {
        match &self.message_id {
            Some(id) => (Some(id.as_str()), self.size, None),
            None => (None, self.size, Some(self.internaldate)),
        }
    }
}

/// A new message on the server, with what is needed to recognise it as one already
/// held locally (a move, or a UIDVALIDITY change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNew {
    pub folder: FolderId,
    pub uidvalidity: u32,
    pub uid: u32,
    pub flags: Flags,
    pub fingerprint: Fingerprint,
}

/// The local identity of a mapped folder (its row id in the state database).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FolderId(pub i64);

/// One synced message: where it came from and where its file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub folder: FolderId,
    pub uidvalidity: u32,
    pub uid: u32,
    /// The file's unique name in the folder's Maildir, without the `:2,` info part.
    pub base: String,
    pub flags: Flags,
    pub fingerprint: Fingerprint,
}

/// The part of a record the listing diff needs; kept small because a folder's worth of
/// them is held in memory at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub uidvalidity: u32,
    pub uid: u32,
    pub flags: Flags,
}

/// What the planner decides for one folder after comparing the server's listing with
/// the records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FolderDiff {
    /// UIDs on the server with no record (need their fingerprint fetched next).
    pub new_uids: Vec<u32>,
    /// Records whose flags changed on the server: (uid, new flags).
    pub flag_updates: Vec<(u32, Flags)>,
    /// Records (uidvalidity, uid) whose message is no longer on the server under that
    /// UID: removed, unless the pairing step finds the message elsewhere.
    pub vanished: Vec<(u32, u32)>,
}

/// A step of a sync plan. Every action is idempotent once journalled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Download the message and deliver it to the folder's Maildir.
    Fetch { folder: FolderId, uid: u32 },
    /// Rename the local file so its Maildir flags match the server.
    SetFlags {
        folder: FolderId,
        uid: u32,
        flags: Flags,
    },
    /// The message already held as `record` now lives at (`folder`, `uidvalidity`,
    /// `uid`): rebind the record, and move the file if the folder changed. No download.
    Relocate {
        record: Record,
        folder: FolderId,
        uidvalidity: u32,
        uid: u32,
        flags: Flags,
    },
    /// The message left the server: delete the local file and the record.
    Remove { record: Record },
}
