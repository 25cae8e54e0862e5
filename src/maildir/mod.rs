//! One Maildir folder on disk: atomic delivery (tmp/ → fsync → rename into cur/), flag
//! changes as renames, and finding a message again after a MUA renamed or moved it.
//!
//! This module knows nothing of sync: it offers verbs, and the executor decides. The
//! only state it keeps is the process-wide counter that makes new names unique.

mod flags;

pub use flags::{info_suffix, parse_file_name};

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::flags::Flags;
use flags::{file_name, split_info};

/// A Maildir folder: `<root>/{cur,new,tmp}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maildir {
    root: PathBuf,
}

/// A message file found in a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    pub base: String,
    pub flags: Flags,
    pub path: PathBuf,
}

/// The modification times (nanoseconds since the epoch) of a folder's `cur/` and
/// `new/`: while both stay the same, no message was added, renamed or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub cur: i64,
    pub new: i64,
}

impl Stamp {
    /// The later of the two, in nanoseconds since the epoch.
    pub fn latest(self) -> i64 {
        self.cur.max(self.new)
    }
}

/// Makes names unique within this process even when the clock does not move.
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Maildir {
    /// The folder at `path` as it is, creating nothing (it may be missing: see
    /// [`Maildir::stamp`]).
    pub fn at(path: &Path) -> Maildir {
        Maildir {
            root: path.to_path_buf(),
        }
    }

    /// Opens the folder at `path`, creating it and its `cur/`, `new/` and `tmp/` (and
    /// missing parents) with mode 0700: mail is private.
    pub fn open(path: &Path) -> io::Result<Maildir> {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for sub in ["cur", "new", "tmp"] {
            let dir = path.join(sub);
            builder.create(&dir).map_err(|e| with_path(e, &dir))?;
        }
        Ok(Maildir {
            root: path.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cur(&self) -> PathBuf {
        self.root.join("cur")
    }

    pub fn new_dir(&self) -> PathBuf {
        self.root.join("new")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A base name no other delivery will use:
    /// `{secs}.M{micros}P{pid}Q{counter}_{uid}.{hostname}`. The UID is there for people
    /// reading the directory; nothing parses it back.
    pub fn new_base(&self, uid: u32) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{}_{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            uid,
            hostname()
        )
    }

    /// Writes `bytes` to `tmp/<base>`, fsyncs it and renames it to
    /// `cur/<base>:2,<flags>`. The directory is not fsynced: call [`Maildir::sync_dirs`]
    /// once per batch before committing the batch's records. A file already in `cur/`
    /// under the same name is replaced: the same base is the same message.
    pub fn deliver(&self, base: &str, flags: Flags, bytes: &[u8]) -> io::Result<PathBuf> {
        self.deliver_from(base, flags, bytes)
    }

    /// [`Maildir::deliver`] from a reader, so a large message need not sit in memory.
    pub fn deliver_from(
        &self,
        base: &str,
        flags: Flags,
        mut reader: impl Read,
    ) -> io::Result<PathBuf> {
        check_base(base)?;
        let tmp = self.tmp().join(base);
        let dest = self.cur().join(file_name(base, flags, None));
        let result = (|| {
            // A file of that name in tmp/ is a leftover of an interrupted attempt at
            // this same delivery, or was planted there: unlink it (a symlink itself is
            // removed, never followed) and create the file exclusively (O_EXCL, which
            // refuses any name that exists, a symlink included).
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            io::copy(&mut reader, &mut file)?;
            file.flush()?;
            file.sync_all()?;
            fs::rename(&tmp, &dest)
        })();
        match result {
            Ok(()) => Ok(dest),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(with_path(e, &tmp))
            }
        }
    }

    /// Makes the renames into `cur/` and `new/` durable.
    pub fn sync_dirs(&self) -> io::Result<()> {
        for dir in [self.cur(), self.new_dir()] {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| with_path(e, &dir))?;
        }
        Ok(())
    }

    /// Finds the file holding `base`: first where mailsync last put it
    /// (`cur/<base>:2,<flags_hint>`), then anywhere in `cur/` or `new/`, since a MUA may
    /// have changed its flags or not yet moved it out of `new/`. For many look-ups, use
    /// [`Maildir::index`] once instead.
    pub fn locate(&self, base: &str, flags_hint: Flags) -> io::Result<Option<PathBuf>> {
        check_base(base)?;
        let fast = self.cur().join(file_name(base, flags_hint, None));
        if fs::symlink_metadata(&fast).is_ok() {
            return Ok(Some(fast));
        }
        let mut found = None;
        self.scan(|b, path| {
            if b == base {
                found = Some(path);
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    /// Every message file in `cur/` and `new/`, by base. Should a base appear twice,
    /// the copy in `cur/` wins.
    pub fn index(&self) -> io::Result<HashMap<String, PathBuf>> {
        let mut map = HashMap::new();
        self.scan(|base, path| {
            map.entry(base.to_owned()).or_insert(path);
            true
        })?;
        Ok(map)
    }

    /// Every message file in `cur/` and `new/`: its base, its flags (none for a file
    /// in `new/` without an info part) and its path. Should a base appear twice, the
    /// copy in `cur/` wins.
    pub fn list(&self) -> io::Result<Vec<LocalFile>> {
        let mut files: HashMap<String, LocalFile> = HashMap::new();
        self.scan(|base, path| {
            if !files.contains_key(base) {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let flags = parse_file_name(name).1.unwrap_or_default();
                files.insert(
                    base.to_owned(),
                    LocalFile {
                        base: base.to_owned(),
                        flags,
                        path,
                    },
                );
            }
            true
        })?;
        Ok(files.into_values().collect())
    }

    /// When `cur/` and `new/` last changed: any file added, renamed or removed in
    /// either changes it. `None` when the folder's directories are missing.
    pub fn stamp(&self) -> io::Result<Option<Stamp>> {
        let mtime = |dir: PathBuf| -> io::Result<Option<i64>> {
            match fs::metadata(&dir) {
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    Ok(Some(m.mtime() * 1_000_000_000 + m.mtime_nsec()))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(with_path(e, &dir)),
            }
        };
        Ok(match (mtime(self.cur())?, mtime(self.new_dir())?) {
            (Some(cur), Some(new)) => Some(Stamp { cur, new }),
            _ => None,
        })
    }

    /// Gives the message `base`, last known with flags `known`, the flags `flags`:
    /// one rename when the file is where mailsync left it (no stat first), else found
    /// wherever a mail reader moved it. A message that is gone is not an error (the
    /// next listing removes its record). Returns the new path, if the file exists.
    pub fn retag(&self, base: &str, known: Flags, flags: Flags) -> io::Result<Option<PathBuf>> {
        check_base(base)?;
        let expected = self.cur().join(file_name(base, known, None));
        let target = self.cur().join(file_name(base, flags, None));
        if expected == target {
            return Ok(fs::symlink_metadata(&target).is_ok().then_some(target));
        }
        match fs::rename(&expected, &target) {
            Ok(()) => return Ok(Some(target)),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(with_path(e, &expected)),
            Err(_) => {}
        }
        // Already so named: a mail reader made the change this rename would (the
        // usual case in two-way sync, where its flags are what is being recorded).
        if fs::symlink_metadata(&target).is_ok() {
            return Ok(Some(target));
        }
        match self.locate(base, known)? {
            Some(path) => self.set_flags(&path, base, flags).map(Some),
            None => Ok(None),
        }
    }

    /// Renames the file at `current` to `cur/<base>:2,<flags>`, keeping letters that
    /// other programs set and mailsync does not manage. Returns the new path.
    pub fn set_flags(&self, current: &Path, base: &str, flags: Flags) -> io::Result<PathBuf> {
        self.rename_into(current, self, base, flags)
    }

    /// Deletes a message file; one that is already gone is not an error.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(e, path)),
            _ => Ok(()),
        }
    }

    /// Moves a message file into `dest`'s `cur/` with `flags` (a rename: both folders
    /// must be on one filesystem, as folders of one account's Maildir are).
    pub fn move_to(
        &self,
        current: &Path,
        dest: &Maildir,
        base: &str,
        flags: Flags,
    ) -> io::Result<PathBuf> {
        self.rename_into(current, dest, base, flags)
    }

    /// Removes what interrupted deliveries of this host left in `tmp/`, leaving files
    /// of other programs alone. Call it only while no delivery to this folder is under
    /// way (at the start of a sync, under the account lock). Returns how many it removed.
    pub fn clean_tmp(&self) -> io::Result<usize> {
        let tmp = self.tmp();
        let host = hostname();
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(|e| with_path(e, &tmp))? {
            let entry = entry.map_err(|e| with_path(e, &tmp))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_our_base(&name, host) || !entry.file_type()?.is_file() {
                continue;
            }
            self.remove(&entry.path())?;
            removed += 1;
        }
        Ok(removed)
    }

    fn rename_into(
        &self,
        current: &Path,
        dest: &Maildir,
        base: &str,
        flags: Flags,
    ) -> io::Result<PathBuf> {
        check_base(base)?;
        let foreign = current
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| split_info(n).1);
        let target = dest.cur().join(file_name(base, flags, foreign));
        if target == current {
            return Ok(target);
        }
        fs::rename(current, &target).map_err(|e| with_path(e, current))?;
        Ok(target)
    }

    /// Calls `visit(base, path)` for each file in `cur/`, then `new/`, until it returns
    /// false. Names that are not UTF-8 cannot be ours and are skipped.
    fn scan(&self, mut visit: impl FnMut(&str, PathBuf) -> bool) -> io::Result<()> {
        for dir in [self.cur(), self.new_dir()] {
            for entry in fs::read_dir(&dir).map_err(|e| with_path(e, &dir))? {
                let entry = entry.map_err(|e| with_path(e, &dir))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') {
                    continue;
                }
                let (base, _) = split_info(name);
                if !visit(base, entry.path()) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// This host's name as the Maildir spec wants it in file names: `/` and `:` written as
/// `\057` and `\072`, so a name splits unambiguously at its colon.
fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let raw = gethostname::gethostname();
        let raw = raw.to_string_lossy();
        let mut host = String::with_capacity(raw.len());
        for c in raw.chars() {
            match c {
                '/' => host.push_str("\\057"),
                ':' => host.push_str("\\072"),
                c => host.push(c),
            }
        }
        if host.is_empty() {
            host.push_str("localhost");
        }
        host
    })
}

/// Whether `name` has the shape of [`Maildir::new_base`] with this host's name.
fn is_our_base(name: &str, host: &str) -> bool {
    fn digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }
    let Some((secs, rest)) = name.split_once(".M") else {
        return false;
    };
    let Some((micros, rest)) = rest.split_once('P') else {
        return false;
    };
    let Some((pid, rest)) = rest.split_once('Q') else {
        return false;
    };
    let Some((counter, rest)) = rest.split_once('_') else {
        return false;
    };
    let Some((uid, h)) = rest.split_once('.') else {
        return false;
    };
    [secs, micros, pid, counter, uid].into_iter().all(digits) && h == host
}

/// Refuses bases that would escape the folder or confuse the name parser; a base
/// comes from the state database, which must not be able to point outside.
fn check_base(base: &str) -> io::Result<()> {
    if base.is_empty() || base.starts_with('.') || base.contains(['/', ':', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid Maildir base name {base:?}"),
        ));
    }
    Ok(())
}

/// Adds the path to an I/O error's message, keeping its kind for callers that match it.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::os::unix::fs::PermissionsExt;

    fn folder() -> (tempfile::TempDir, Maildir) {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(&dir.path().join("mail/work/Inbox")).unwrap();
        (dir, md)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_symlink_planted_in_tmp_is_not_followed() {
        let (dir, md) = folder();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let base = "1700000000.M1P1Q1.host,U=7";
        std::os::unix::fs::symlink(&victim, md.tmp().join(base)).unwrap();
        let delivered = md.deliver(base, Flags::empty(), b"message").unwrap();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"precious",
            "the link was followed"
        );
        assert_eq!(fs::read(&delivered).unwrap(), b"message");
        assert!(!fs::symlink_metadata(&delivered).unwrap().is_symlink());
    }

    #[test]
    fn open_creates_private_subdirectories_and_is_idempotent() {
        let (dir, md) = folder();
        for sub in ["cur", "new", "tmp"] {
            let mode = fs::metadata(md.root().join(sub))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{sub} is private");
        }
        assert_eq!(Maildir::open(md.root()).unwrap(), md);
        drop(dir);
    }

    #[test]
    fn delivery_is_byte_exact() {
        let (_dir, md) = folder();
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let crlf = b"Subject: x\r\n\r\nbody\r\n.\r\n".to_vec();
        for (uid, bytes) in [(1, Vec::new()), (2, all_bytes), (3, crlf)] {
            let base = md.new_base(uid);
            let path = md.deliver(&base, Flags::SEEN, &bytes).unwrap();
            assert_eq!(path, md.cur().join(format!("{base}:2,S")));
            assert_eq!(fs::read(&path).unwrap(), bytes);
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
        md.sync_dirs().unwrap();
        assert!(names(&md.tmp()).is_empty(), "tmp/ is left empty");
        assert!(names(&md.new_dir()).is_empty());
    }

    #[test]
    fn streaming_delivery_matches() {
        let (_dir, md) = folder();
        let base = md.new_base(7);
        let data = b"From: a\r\n\r\n\xff\xfe 8-bit".to_vec();
        let path = md.deliver_from(&base, Flags::empty(), &data[..]).unwrap();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("{base}:2,")
        );
        assert_eq!(fs::read(path).unwrap(), data);
    }

    #[test]
    fn flag_changes_are_renames() {
        let (_dir, md) = folder();
        let base = md.new_base(1);
        let p = md.deliver(&base, Flags::empty(), b"x").unwrap();
        let flagged = Flags::SEEN.union(Flags::FLAGGED);
        let q = md.set_flags(&p, &base, flagged).unwrap();
        assert_eq!(q, md.cur().join(format!("{base}:2,FS")));
        assert!(!p.exists());
        assert_eq!(
            md.set_flags(&q, &base, flagged).unwrap(),
            q,
            "same flags: no-op"
        );
        assert_eq!(fs::read(&q).unwrap(), b"x");
    }

    #[test]
    fn flag_changes_keep_letters_of_other_programs() {
        let (_dir, md) = folder();
        let base = md.new_base(1);
        let p = md.deliver(&base, Flags::SEEN, b"x").unwrap();
        let mua = md.cur().join(format!("{base}:2,PSa"));
        fs::rename(&p, &mua).unwrap();
        let q = md.set_flags(&mua, &base, Flags::empty()).unwrap();
        assert_eq!(q, md.cur().join(format!("{base}:2,Pa")));
    }

    #[test]
    fn locate_finds_a_message_a_mua_renamed_or_moved() {
        let (_dir, md) = folder();
        let a = md.new_base(1);
        let pa = md.deliver(&a, Flags::empty(), b"a").unwrap();
        assert_eq!(md.locate(&a, Flags::empty()).unwrap(), Some(pa.clone()));
        // The MUA read and flagged it.
        let renamed = md.cur().join(format!("{a}:2,FS"));
        fs::rename(&pa, &renamed).unwrap();
        assert_eq!(
            md.locate(&a, Flags::empty()).unwrap(),
            Some(renamed.clone())
        );

        // A message still in new/, then moved to cur/ with flags as MUAs do.
        let b = md.new_base(2);
        let in_new = md.new_dir().join(&b);
        fs::write(&in_new, b"b").unwrap();
        assert_eq!(md.locate(&b, Flags::empty()).unwrap(), Some(in_new.clone()));
        let in_cur = md.cur().join(format!("{b}:2,S"));
        fs::rename(&in_new, &in_cur).unwrap();
        assert_eq!(md.locate(&b, Flags::empty()).unwrap(), Some(in_cur.clone()));

        assert_eq!(md.locate(&md.new_base(3), Flags::empty()).unwrap(), None);
        assert!(md.locate("../escape", Flags::empty()).is_err());

        let index = md.index().unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index[&a], renamed);
        assert_eq!(index[&b], in_cur);
    }

    #[test]
    fn remove_tolerates_a_file_already_gone() {
        let (_dir, md) = folder();
        let base = md.new_base(1);
        let p = md.deliver(&base, Flags::empty(), b"x").unwrap();
        md.remove(&p).unwrap();
        assert!(!p.exists());
        md.remove(&p).unwrap();
    }

    #[test]
    fn move_to_renames_into_the_other_folder() {
        let (dir, inbox) = folder();
        let archive = Maildir::open(&dir.path().join("mail/work/Archive")).unwrap();
        let base = inbox.new_base(1);
        let p = inbox.deliver(&base, Flags::empty(), b"m").unwrap();
        let q = inbox.move_to(&p, &archive, &base, Flags::SEEN).unwrap();
        assert_eq!(q, archive.cur().join(format!("{base}:2,S")));
        assert!(!p.exists());
        assert_eq!(fs::read(q).unwrap(), b"m");
    }

    #[test]
    fn clean_tmp_removes_only_our_leftovers() {
        let (_dir, md) = folder();
        let ours = [md.new_base(1), md.new_base(2)];
        let others = [
            "1700000000.M1P2Q3.otherhost".to_string(),
            format!("1700000000.M1P2Q3_4.not-{}", hostname()),
            "1700000000.12345_6.host,S=100".to_string(),
            "courier.tmp".to_string(),
        ];
        for name in ours.iter().chain(&others) {
            fs::write(md.tmp().join(name), b"partial").unwrap();
        }
        fs::create_dir(md.tmp().join(md.new_base(3))).unwrap();
        assert_eq!(md.clean_tmp().unwrap(), 2);
        let left = names(&md.tmp());
        assert_eq!(left.len(), others.len() + 1);
        for o in &others {
            assert!(left.contains(o), "{o} kept");
        }
    }

    #[test]
    fn names_are_unique() {
        let (_dir, md) = folder();
        let names: HashSet<String> = (0..10_000).map(|_| md.new_base(42)).collect();
        assert_eq!(names.len(), 10_000);
        assert!(names.iter().all(|n| is_our_base(n, hostname())));
        assert!(names.iter().all(|n| check_base(n).is_ok()));
    }

    #[test]
    fn hostile_bases_are_refused() {
        let (_dir, md) = folder();
        for base in ["", ".", "..", "../x", "a/b", "a:2,S", ".hidden"] {
            assert!(md.deliver(base, Flags::empty(), b"").is_err(), "{base:?}");
        }
    }
}
