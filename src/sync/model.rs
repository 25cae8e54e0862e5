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
    /// Two-way: set `add` and clear `remove` on the server (a `SetFlags` for the
    /// record goes with it, applied only once this landed).
    PushFlags {
        folder: FolderId,
        uid: u32,
        add: Flags,
        remove: Flags,
    },
    /// Two-way: the message was deleted locally. On the server it moves to `trash`, or
    /// with `None` is expunged (by UID); then its record goes.
    PushDelete {
        record: Record,
        trash: Option<FolderId>,
    },
    /// Two-way: the message was moved locally to `to`, where its file is `base` with
    /// `flags`: it moves on the server too (nothing is uploaded), and its record
    /// follows.
    PushMove {
        record: Record,
        to: FolderId,
        base: String,
        flags: Flags,
    },
    /// Two-way: a local file no record names is uploaded (APPEND) and recorded. With
    /// `origin`, the file is that record's message, gone from the server (filed
    /// elsewhere here, expunged there): the record goes when the upload is bound.
    Upload {
        file: LocalNew,
        origin: Option<Record>,
    },
    /// Two-way: a new message on the server is the same as the new local file `base`
    /// (same Message-ID and size): record the one as the other, download nothing,
    /// upload nothing. The record takes `flags`.
    Adopt {
        folder: FolderId,
        uidvalidity: u32,
        uid: u32,
        base: String,
        flags: Flags,
        fingerprint: Fingerprint,
    },
}

impl Action {
    /// Whether the action belongs to the server-side step of a two-way pass
    /// (`push.rs`): it changes the server, or (Adopt) records what both sides have.
    pub fn is_push(&self) -> bool {
        matches!(
            self,
            Action::PushFlags { .. }
                | Action::PushDelete { .. }
                | Action::PushMove { .. }
                | Action::Upload { .. }
                | Action::Adopt { .. }
        )
    }
}

/// A message file in a mapped local folder that no record names: new locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNew {
    pub folder: FolderId,
    pub base: String,
    pub flags: Flags,
    /// Message-ID, size once its line ends are CRLF (as uploaded), and the file's
    /// modification time (its INTERNALDATE once uploaded).
    pub fingerprint: Fingerprint,
}

/// What a two-way pass found in the mapped local folders, when any of them changed
/// since the last pass (see `local.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalView {
    /// Each readable mapped folder's message files: base → flags.
    pub files: std::collections::HashMap<FolderId, std::collections::HashMap<String, Flags>>,
    /// Every record of the mapped folders.
    pub held: Vec<Record>,
    /// Files no record names, except those the server refused before.
    pub fresh: Vec<LocalNew>,
    /// A mail reader kept changing the folders while they were read: an absence may
    /// be a file in flight, so nothing is deleted or uploaded this pass.
    pub unsettled: bool,
}

/// Where a local deletion goes on the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trash {
    /// Expunged: `delete = "expunge"`, or no folder is mapped to `@trash`.
    #[default]
    Expunge,
    /// Moved to this mapped folder (deletions inside it are expunged).
    To(FolderId),
    /// A trash is mapped but cannot be used this pass (not synced in it, failed,
    /// missing locally): deletions wait for a pass that has it.
    Wait,
}

/// How a two-way pass acts on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub trash: Trash,
    /// How much a pass may delete or move away from one server folder; `None` with
    /// `--allow-mass-delete`.
    pub mass_delete: Option<crate::config::MassDelete>,
    /// How much a pass may upload to one server folder (the same limits, against the
    /// folder's size); `None` with `--allow-mass-upload`.
    pub mass_upload: Option<crate::config::MassDelete>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            trash: Trash::Expunge,
            mass_delete: Some(crate::config::MassDelete::default()),
            mass_upload: Some(crate::config::MassDelete::default()),
        }
    }
}

/// A folder that held more than this many messages and now holds none, all deleted
/// (not moved), is taken for a folder emptied by accident, not by its reader.
pub const EMPTIED: usize = 10;
