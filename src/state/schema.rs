//! Schema migrations: `PRAGMA user_version` is the schema version; each migration runs
//! in its own transaction, so a crash mid-upgrade leaves the previous version intact.

use std::path::Path;

use rusqlite::Connection;

use super::error::StateError;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: folders, messages, the delivery journal.
    "CREATE TABLE folders (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        local TEXT NOT NULL,
        remote TEXT NOT NULL,
        uidvalidity INTEGER,
        uidnext INTEGER,
        highestmodseq INTEGER,
        last_sync INTEGER,
        last_error TEXT,
        UNIQUE (account, local)
    );
    CREATE TABLE messages (
        folder INTEGER NOT NULL REFERENCES folders (id) ON DELETE CASCADE,
        uidvalidity INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        base TEXT NOT NULL,
        flags INTEGER NOT NULL,
        size INTEGER NOT NULL,
        internaldate INTEGER NOT NULL,
        message_id TEXT,
        sender TEXT,
        subject TEXT,
        date INTEGER,
        moved_from INTEGER,
        PRIMARY KEY (folder, uidvalidity, uid)
    ) WITHOUT ROWID;
    CREATE INDEX messages_moved ON messages (moved_from) WHERE moved_from IS NOT NULL;
    CREATE TABLE pending (
        folder INTEGER NOT NULL REFERENCES folders (id) ON DELETE CASCADE,
        base TEXT NOT NULL,
        PRIMARY KEY (folder, base)
    ) WITHOUT ROWID;",
    // 2: the token store (refresh tokens sealed with the token key; see state/tokens.rs).
    "CREATE TABLE tokens (
        account TEXT PRIMARY KEY,
        flow TEXT NOT NULL,
        refresh_token BLOB,
        scopes TEXT NOT NULL DEFAULT '',
        granted_to TEXT,
        access_expires INTEGER,
        status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'needs_connect')),
        reason TEXT,
        updated INTEGER NOT NULL
    );",
    // 3: what the daemon is doing per account, and the server's message count per
    // folder (see state/runtime.rs), for `mailsync status`.
    "CREATE TABLE daemon_status (
        account TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        detail TEXT,
        pid INTEGER,
        since INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    ALTER TABLE folders ADD COLUMN remote_exists INTEGER;",
    // 4: the access token cached between processes, sealed with the token key like the
    // refresh token but under its own associated data (see state/tokens.rs).
    "CREATE TABLE access_tokens (
        account TEXT PRIMARY KEY,
        sealed BLOB NOT NULL,
        expires INTEGER NOT NULL,
        scopes TEXT NOT NULL DEFAULT '',
        updated INTEGER NOT NULL
    );",
    // 5: what a listing reads of every record (State::known, State::count_records),
    // without the rows' names and headers: ~16 bytes a message instead of ~250.
    "CREATE INDEX messages_known ON messages (folder, uidvalidity, uid, flags);",
    // 6: one journal for every effect on the local store (see State::journal): the
    // delivery journal (`pending`) and the move marks (`messages.moved_from`) move in.
    "CREATE TABLE journal (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('deliver', 'rename', 'remove')),
        folder INTEGER NOT NULL REFERENCES folders (id) ON DELETE CASCADE,
        base TEXT NOT NULL,
        source INTEGER REFERENCES folders (id) ON DELETE CASCADE,
        flags INTEGER
    );
    CREATE INDEX journal_file ON journal (folder, base);
    CREATE INDEX journal_source ON journal (source);
    INSERT INTO journal (kind, folder, base) SELECT 'deliver', folder, base FROM pending;
    INSERT INTO journal (kind, folder, base, source, flags)
        SELECT 'rename', folder, base, moved_from, flags FROM messages
        WHERE moved_from IS NOT NULL;
    DROP TABLE pending;
    DROP INDEX messages_moved;
    ALTER TABLE messages DROP COLUMN moved_from;",
    // 7: two-way sync. The journal takes server-side effects whose result exists
    // nowhere else until recorded: an upload (APPEND, or a COPY/MOVE of a recorded
    // message) is journalled with the target's UIDNEXT before it is sent, so a killed
    // run finds the new message again among the UIDs from there (see
    // sync/recover_remote.rs). A folder keeps the modification times of its `cur/` and
    // `new/` at its last two-way pass: while they stand, nothing changed locally. A
    // local file the server refused to take is not offered again (`refused`).
    "CREATE TABLE journal_7 (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('deliver', 'rename', 'remove', 'upload')),
        folder INTEGER NOT NULL REFERENCES folders (id) ON DELETE CASCADE,
        base TEXT NOT NULL,
        source INTEGER REFERENCES folders (id) ON DELETE CASCADE,
        flags INTEGER,
        uidnext INTEGER,
        source_uidvalidity INTEGER,
        source_uid INTEGER
    );
    INSERT INTO journal_7 (id, kind, folder, base, source, flags)
        SELECT id, kind, folder, base, source, flags FROM journal;
    DROP TABLE journal;
    ALTER TABLE journal_7 RENAME TO journal;
    CREATE INDEX journal_file ON journal (folder, base);
    CREATE INDEX journal_source ON journal (source);
    ALTER TABLE folders ADD COLUMN local_cur INTEGER;
    ALTER TABLE folders ADD COLUMN local_new INTEGER;
    CREATE TABLE refused (
        folder INTEGER NOT NULL REFERENCES folders (id) ON DELETE CASCADE,
        base TEXT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (folder, base)
    ) WITHOUT ROWID;",
    // 8: the outbox of `mailsync send` (see state/outbox.rs): a message is a row from
    // the moment `send` took it until the server took it (and, where a Sent copy is
    // made, until the copy is filed), or kept as failed once refused for good.
    // `in_doubt`: when its transaction began, until the server's answer is recorded.
    // `partial`: a row for some of a message's recipients, split off once the others
    // got it (its Message-ID is in Sent already). Ids are never reused (AUTOINCREMENT):
    // they name the files kept of failed and unsent messages.
    "CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        created INTEGER NOT NULL,
        sender TEXT NOT NULL,
        recipients TEXT NOT NULL,
        message_id TEXT NOT NULL,
        message BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'copy', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        in_doubt INTEGER,
        partial INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_due ON outbox (account, state, next_try);",
];

pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let wrap = |source| StateError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(wrap)?;
    if found > known {
        return Err(StateError::TooNew {
            path: path.to_owned(),
            found,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(wrap)?;
        tx.execute_batch(sql).map_err(wrap)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
    }
    Ok(())
}
