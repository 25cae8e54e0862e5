//! Writing accounts into the user's config file, keeping every byte of it that the edit
//! is not about: other tables, comments, spacing and key order.
//!
//! The edits are made on the text, not on a re-serialized document: toml_edit parses
//! the file for the spans of table headers and values, and the new text is spliced in.
//! An account is the text of its tables `[accounts.NAME]` and `[accounts.NAME.folders]`
//! (see [`Sections`] for where a table's text starts and ends). Every result is checked
//! by loading it with [`crate::config::parse`] before it replaces the file atomically.

use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use toml_edit::{Item, Table, Value};

use super::ConfigError;

/// What `mailsync connect` knows about an account. `None` leaves a key as it is in an
/// existing account (and out of a new one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountSettings {
    pub name: String,
    pub provider: String,
    pub email: String,
    pub tenant: Option<String>,
    pub client_id: String,
    pub flow: String,
    pub client_secret_file: Option<String>,
    pub maildir: Option<String>,
    pub imap_host: Option<String>,
    pub imap_port: Option<u16>,
    pub tls: Option<String>,
    pub ca_file: Option<String>,
    pub token_url: Option<String>,
    pub device_url: Option<String>,
    pub authorize_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub smtp_tls: Option<String>,
}

/// What [`upsert_account`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// There was no config file; it was created with the account.
    Created,
    /// The account was appended to the file.
    Added,
    /// The account existed. `keys` were set or changed (empty, with no folders added:
    /// nothing changed and the file was not written). `folders_added`: it had no
    /// `[accounts.NAME.folders]`, so the default mappings were added.
    Updated {
        keys: Vec<&'static str>,
        folders_added: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{}: cannot read the config: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot write the config: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}: not valid TOML, so it cannot be edited safely: {message}", path.display())]
    Toml {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("account name {0:?} may use only letters, digits, \"_\" and \"-\"")]
    Name(String),
    #[error(
        "{}: account {name:?} is not written as [accounts.{name}] tables ({detail}); edit it by hand",
        path.display()
    )]
    Layout {
        path: PathBuf,
        name: String,
        detail: String,
    },
    #[error("{error} (in the config as it would be after the edit; nothing was written)")]
    Invalid {
        #[source]
        error: ConfigError,
    },
}

const NEW_FILE_HEADER: &str = "\
# mailsync configuration. `mailsync connect` adds accounts here; edit freely, comments
# and formatting are kept. Every key is described in config.example.toml.
";

/// Adds the account, or updates the keys given in `settings` of an existing one (keeping
/// its other keys, its comments and its `[accounts.NAME.folders]`). A new account gets
/// `default_folders` (local name, remote folder or role) as its mappings.
pub fn upsert_account(
    path: &Path,
    settings: &AccountSettings,
    default_folders: &[(String, String)],
) -> Result<UpsertOutcome, EditError> {
    check_name(&settings.name)?;
    let path = &resolve(path);
    let Some((text, meta)) = read(path)? else {
        let text = format!(
            "{NEW_FILE_HEADER}\n{}",
            account_text(settings, default_folders, "\n")
        );
        validate(&text, path)?;
        write_atomically(path, &text, None)?;
        return Ok(UpsertOutcome::Created);
    };
    let doc = parse_toml(&text, path)?;
    let nl = newline(&text);
    let Some(account) = find_account(&doc, &settings.name) else {
        let mut new = text.clone();
        if !new.is_empty() {
            if !new.ends_with('\n') {
                new.push_str(nl);
            }
            if !new.ends_with(&format!("{nl}{nl}")) && new.trim() != "" {
                new.push_str(nl);
            }
        }
        new.push_str(&account_text(settings, default_folders, nl));
        validate(&new, path)?;
        write_atomically(path, &new, Some(&meta))?;
        return Ok(UpsertOutcome::Added);
    };

    let sections = Sections::new(&text, &doc);
    let layout_error = |detail: String| EditError::Layout {
        path: path.to_path_buf(),
        name: settings.name.clone(),
        detail,
    };
    let mine = sections.of_account(&settings.name);
    check_inside(account, &mine, &text).map_err(&layout_error)?;
    let Some(table) = account.as_table() else {
        return Err(layout_error("written as an inline table".into()));
    };
    let Some(main) = mine
        .iter()
        .find(|s| s.path.len() == 2 && !s.array)
        .map(|s| s.header.clone())
    else {
        return Err(layout_error(format!(
            "no [accounts.{}] header",
            settings.name
        )));
    };

    // Where new lines go: after the line of the table's last value, indented like it.
    let (after, indent) = match last_value(table) {
        Some(span) => (line_end(&text, span.end), indent_at(&text, span.start)),
        None => (line_end(&text, main.start), String::new()),
    };
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut keys = Vec::new();
    let mut inserted = String::new();
    for (key, value) in settings_values(settings) {
        match table.get(key) {
            Some(Item::Value(old)) => {
                if !same(old, &value) {
                    let span = old
                        .span()
                        .ok_or_else(|| layout_error(format!("{key} has no position")))?;
                    edits.push((span, value.to_string()));
                    keys.push(key);
                }
            }
            Some(_) => return Err(layout_error(format!("{key} is not a plain value"))),
            None => {
                inserted.push_str(&format!("{indent}{key} = {value}{nl}"));
                keys.push(key);
            }
        }
    }
    let folders_added = !table.contains_key("folders") && !default_folders.is_empty();
    if folders_added {
        inserted.push_str(nl);
        inserted.push_str(&folders_text(&settings.name, default_folders, nl));
    }
    if !inserted.is_empty() {
        if after == text.len() && !text.ends_with('\n') {
            inserted.insert_str(0, nl);
        }
        edits.push((after..after, inserted));
    }
    if edits.is_empty() {
        return Ok(UpsertOutcome::Updated {
            keys,
            folders_added,
        });
    }
    let new = splice(&text, edits);
    validate(&new, path)?;
    write_atomically(path, &new, Some(&meta))?;
    Ok(UpsertOutcome::Updated {
        keys,
        folders_added,
    })
}

/// Removes `[accounts.NAME]` and `[accounts.NAME.folders]` with the comments inside them
/// and nothing else. `false` (and the file untouched) when there is no such account.
pub fn remove_account(path: &Path, name: &str) -> Result<bool, EditError> {
    let path = &resolve(path);
    let Some((text, meta)) = read(path)? else {
        return Ok(false);
    };
    let doc = parse_toml(&text, path)?;
    let Some(account) = find_account(&doc, name) else {
        return Ok(false);
    };
    let sections = Sections::new(&text, &doc);
    let mine = sections.of_account(name);
    check_inside(account, &mine, &text).map_err(|detail| EditError::Layout {
        path: path.to_path_buf(),
        name: name.to_owned(),
        detail,
    })?;
    let edits = sections
        .account_spans(&text, name)
        .into_iter()
        .map(|span| (span, String::new()))
        .collect();
    let new = splice(&text, edits);
    // Removing an account cannot break a config that loaded, and must not be refused
    // because of one that did not (`stop` is how a broken account is got rid of).
    match toml_edit::Document::parse(new.as_str()) {
        Ok(after) if find_account(&after, name).is_none() => {}
        _ => {
            return Err(EditError::Layout {
                path: path.to_path_buf(),
                name: name.to_owned(),
                detail: "its tables could not be cut out cleanly".into(),
            });
        }
    }
    if super::parse(&text, path).is_ok() {
        validate(&new, path)?;
    }
    write_atomically(path, &new, Some(&meta))?;
    Ok(true)
}

fn check_name(name: &str) -> Result<(), EditError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(EditError::Name(name.to_owned()));
    }
    Ok(())
}

/// A symlinked config is edited where it points, not replaced by a file.
fn resolve(path: &Path) -> PathBuf {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

fn read(path: &Path) -> Result<Option<(String, fs::Metadata)>, EditError> {
    let error = |source| EditError::Read {
        path: path.to_path_buf(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some((text, fs::metadata(path).map_err(error)?))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(e)),
    }
}

fn parse_toml<'t>(text: &'t str, path: &Path) -> Result<toml_edit::Document<&'t str>, EditError> {
    toml_edit::Document::parse(text).map_err(|e| EditError::Toml {
        path: path.to_path_buf(),
        line: e.span().map_or(1, |s| {
            text[..s.start.min(text.len())].matches('\n').count() + 1
        }),
        message: e.message().trim().replace('\n', "; "),
    })
}

fn validate(text: &str, path: &Path) -> Result<(), EditError> {
    super::parse(text, path)
        .map(|_| ())
        .map_err(|error| EditError::Invalid { error })
}

fn newline(text: &str) -> &'static str {
    if text.contains("\r\n") { "\r\n" } else { "\n" }
}

fn find_account<'d>(doc: &'d toml_edit::Document<&str>, name: &str) -> Option<&'d Item> {
    doc.as_table()
        .get("accounts")?
        .as_table_like()?
        .get(name)
        .filter(|item| !item.is_none())
}

/// Every value of the account must lie in its own tables' text, or cutting those out
/// would leave parts behind (dotted keys or inline tables elsewhere).
fn check_inside(account: &Item, mine: &[Header], text: &str) -> Result<(), String> {
    if !matches!(account, Item::Table(_)) {
        return Err("written as an inline table or a value".into());
    }
    let mut spans = Vec::new();
    value_spans(account, &mut spans);
    let inside = |s: &Range<usize>| {
        mine.iter()
            .any(|h| h.span.start <= s.start && s.end <= h.span.end)
    };
    match spans.iter().find(|s| !inside(s)) {
        Some(s) => Err(format!(
            "part of it is written elsewhere, at line {}",
            text[..s.start].matches('\n').count() + 1
        )),
        None => Ok(()),
    }
}

fn value_spans(item: &Item, out: &mut Vec<Range<usize>>) {
    match item {
        Item::Value(v) => out.extend(v.span()),
        Item::Table(t) => t.iter().for_each(|(_, i)| value_spans(i, out)),
        Item::ArrayOfTables(a) => a
            .iter()
            .for_each(|t| t.iter().for_each(|(_, i)| value_spans(i, out))),
        Item::None => {}
    }
}

/// The span of the last value written under the table's own header (its dotted keys
/// included, its sub-tables with their own headers not).
fn last_value(table: &Table) -> Option<Range<usize>> {
    fn walk(table: &Table, best: &mut Option<Range<usize>>) {
        for (_, item) in table.iter() {
            match item {
                Item::Value(v) => {
                    if let Some(s) = v.span()
                        && best.as_ref().is_none_or(|b| s.end > b.end)
                    {
                        *best = Some(s);
                    }
                }
                Item::Table(t) if t.is_dotted() => walk(t, best),
                _ => {}
            }
        }
    }
    let mut best = None;
    walk(table, &mut best);
    best
}

/// The new value of each key given, in the order a new account is written.
fn settings_values(s: &AccountSettings) -> Vec<(&'static str, Value)> {
    let text = |key, v: &str| Some((key, Value::from(v)));
    let opt = |key, v: &Option<String>| v.as_deref().and_then(|v| text(key, v));
    [
        text("provider", &s.provider),
        text("email", &s.email),
        opt("tenant", &s.tenant),
        text("client_id", &s.client_id),
        text("flow", &s.flow),
        opt("client_secret_file", &s.client_secret_file),
        opt("maildir", &s.maildir),
        opt("imap_host", &s.imap_host),
        s.imap_port
            .map(|p| ("imap_port", Value::from(i64::from(p)))),
        opt("tls", &s.tls),
        opt("ca_file", &s.ca_file),
        opt("token_url", &s.token_url),
        opt("device_url", &s.device_url),
        opt("authorize_url", &s.authorize_url),
        s.scopes.as_ref().map(|scopes| {
            let array: toml_edit::Array = scopes.iter().map(String::as_str).collect();
            ("scopes", Value::Array(array))
        }),
        opt("smtp_host", &s.smtp_host),
        s.smtp_port
            .map(|p| ("smtp_port", Value::from(i64::from(p)))),
        opt("smtp_tls", &s.smtp_tls),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Equal as TOML values, whatever their quoting: an unchanged value is not rewritten.
fn same(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Integer(a), Value::Integer(b)) => a.value() == b.value(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| same(x, y))
        }
        _ => false,
    }
}

fn account_text(s: &AccountSettings, folders: &[(String, String)], nl: &str) -> String {
    let mut out = format!("[accounts.{}]{nl}", s.name);
    for (key, value) in settings_values(s) {
        out.push_str(&format!("{key} = {value}{nl}"));
    }
    out.push_str(nl);
    out.push_str(&folders_text(&s.name, folders, nl));
    out
}

fn folders_text(name: &str, folders: &[(String, String)], nl: &str) -> String {
    let mut out = format!("[accounts.{name}.folders]{nl}");
    for (local, remote) in folders {
        let key = toml_edit::Key::new(local.as_str());
        out.push_str(&format!(
            "{} = {}{nl}",
            key.display_repr(),
            Value::from(remote.as_str())
        ));
    }
    out
}

/// Applies non-overlapping edits (byte range → replacement), back to front.
fn splice(text: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| std::cmp::Reverse((r.start, r.end)));
    let mut out = text.to_owned();
    for (range, with) in edits {
        out.replace_range(range, &with);
    }
    out
}

/// A table header in the text: `[a.b]` or `[[a.b]]`, and the text that is its table's.
#[derive(Clone, Debug)]
struct Header {
    path: Vec<String>,
    array: bool,
    /// The header itself, `[` to `]`.
    header: Range<usize>,
    /// Its table's text; see [`Sections`].
    span: Range<usize>,
}

/// Where each table's text starts and ends. A table's text runs from its header line to
/// its last key line, plus the comment lines right after that and the blank lines after
/// those. A block of comment lines directly above a header, with a blank line above the
/// block, is that header's table's too (`# Work mailbox` above `[accounts.work]`).
/// What is left between tables — a detached comment such as `# ---- accounts ----` —
/// belongs to no table and is never removed.
struct Sections {
    headers: Vec<Header>,
    len: usize,
}

impl Sections {
    fn new(text: &str, doc: &toml_edit::Document<&str>) -> Sections {
        let mut headers = Vec::new();
        collect_headers(doc.as_table(), &mut Vec::new(), &mut headers);
        headers.sort_by_key(|h| h.header.start);
        let starts: Vec<usize> = headers
            .iter()
            .map(|h| attached_start(text, line_start(text, h.header.start)))
            .collect();
        for i in 0..headers.len() {
            let line = line_start(text, headers[i].header.start);
            let boundary = headers
                .get(i + 1)
                .map_or(text.len(), |next| line_start(text, next.header.start));
            let end = body_end(text, line, boundary)
                .min(starts.get(i + 1).copied().unwrap_or(text.len()));
            headers[i].span = starts[i]..end;
        }
        Sections {
            headers,
            len: text.len(),
        }
    }

    fn of_account(&self, name: &str) -> Vec<Header> {
        self.headers
            .iter()
            .filter(|h| is_account(&h.path, name))
            .cloned()
            .collect()
    }

    /// The text to cut to remove the account: runs of its tables that follow each other
    /// become one span, with what lies between them. At the end of the file the blank
    /// lines before it go too, so adding an account and removing it again gives back
    /// the file as it was.
    fn account_spans(&self, text: &str, name: &str) -> Vec<Range<usize>> {
        let mut spans: Vec<Range<usize>> = Vec::new();
        let mut previous_mine = false;
        for h in &self.headers {
            let mine = is_account(&h.path, name);
            if mine {
                match spans.last_mut() {
                    Some(last) if previous_mine => last.end = h.span.end,
                    _ => spans.push(h.span.clone()),
                }
            }
            previous_mine = mine;
        }
        if let Some(last) = spans.last_mut()
            && last.end == self.len
        {
            while last.start > 0 {
                let above = line_start(text, last.start - 1);
                if !is_blank(&text[above..last.start]) {
                    break;
                }
                last.start = above;
            }
        }
        spans
    }
}

fn is_account(path: &[String], name: &str) -> bool {
    path.len() >= 2 && path[0] == "accounts" && path[1] == name
}

fn collect_headers(table: &Table, path: &mut Vec<String>, out: &mut Vec<Header>) {
    for (key, item) in table.iter() {
        path.push(key.to_owned());
        match item {
            Item::Table(t) => {
                if !t.is_implicit()
                    && !t.is_dotted()
                    && let Some(span) = t.span()
                {
                    out.push(Header {
                        path: path.clone(),
                        array: false,
                        header: span,
                        span: 0..0,
                    });
                }
                collect_headers(t, path, out);
            }
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    if let Some(span) = t.span() {
                        out.push(Header {
                            path: path.clone(),
                            array: true,
                            header: span,
                            span: 0..0,
                        });
                    }
                    collect_headers(t, path, out);
                }
            }
            _ => {}
        }
        path.pop();
    }
}

fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind('\n').map_or(0, |i| i + 1)
}

/// Just past the newline ending the line that contains `pos` (the text's end on the
/// last line).
fn line_end(text: &str, pos: usize) -> usize {
    text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1)
}

fn indent_at(text: &str, pos: usize) -> String {
    let start = line_start(text, pos);
    text[start..]
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect()
}

/// The lines of `text[range]`, each with its range (newline included).
fn lines(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let end = line_end(text, at).min(range.end);
        out.push(at..end);
        at = end;
    }
    out
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// The start of the comment block directly above a header line, if a blank line is
/// above the block; else the header line itself.
fn attached_start(text: &str, header_line: usize) -> usize {
    let above = lines(text, 0..header_line);
    let mut start = header_line;
    for line in above.iter().rev() {
        let l = &text[line.clone()];
        if is_comment(l) {
            start = line.start;
        } else if is_blank(l) {
            return start;
        } else {
            return header_line;
        }
    }
    // The top of the file: a comment there is the file's, not the table's.
    header_line
}

/// The end of a table's text that starts at `header_line` and must end by `boundary`
/// (the next header's line): after its last line that is neither blank nor a comment,
/// the comment lines right after it, and the blank lines after those.
fn body_end(text: &str, header_line: usize, boundary: usize) -> usize {
    let body = lines(text, header_line..boundary);
    let last_content = body
        .iter()
        .rposition(|l| {
            let s = &text[l.clone()];
            !is_blank(s) && !is_comment(s)
        })
        .unwrap_or(0);
    let mut end = body.get(last_content).map_or(boundary, |l| l.end);
    let mut rest = body[(last_content + 1).min(body.len())..].iter().peekable();
    while let Some(l) = rest.next_if(|l| is_comment(&text[(*l).clone()])) {
        end = l.end;
    }
    while let Some(l) = rest.next_if(|l| is_blank(&text[(*l).clone()])) {
        end = l.end;
    }
    end
}

/// Replaces `path` with `text` so that a reader sees the old file or the new one, never
/// a mix: a temporary file in the same directory, fsynced, renamed over it, the
/// directory fsynced. The old file's mode (and owner, where allowed) is kept; a new file
/// is 0600 and a new directory 0700.
fn write_atomically(path: &Path, text: &str, old: Option<&fs::Metadata>) -> Result<(), EditError> {
    let error = |source| EditError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if old.is_none() && !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(error)?;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".to_owned());
    let mode = old.map_or(0o600, |m| m.permissions().mode() & 0o7777);
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(".{file_name}.{}.{attempt}.tmp", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(e) => return Err(error(e)),
        }
    };
    let result = (|| {
        if let Some(m) = old {
            // Only root may give a file away; anyone else keeps it as theirs.
            let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = r#"# mailsync config — hand-edited
   # indented comment

[daemon]   # daemon settings
state_dir   =   "/var/lib/mailsync"  # state
poll_interval="5m"

# ---- accounts ----

# Work mailbox (Jane)
[accounts.work]
provider = "microsoft"      # M365
email    = "jane@contoso.com"
tenant = 'contoso.onmicrosoft.com'
client_id = "11111111-2222-3333-4444-555555555555"
# flow = "browser"
flow = "device"
maildir = "/var/lib/mailsync/mail/work"   # where mail goes
# end of work

  [accounts.work.folders]   # my mappings
  Inbox = "INBOX"
  # Archive comes from the role
  Archive = "@archive"
  "Deleted Items" = "@trash"

# ---- the home account ----

[accounts.home]
provider = "google"
email = "joe@gmail.com"
client_id = "123-abc.apps.googleusercontent.com"
client_secret_file = "/etc/mailsync/home.secret"
maildir = "/var/lib/mailsync/mail/home"
scopes = [
  "https://mail.google.com/",  # all of Gmail
]
[accounts.home.folders]
Inbox = "INBOX"
# trailing comment of home.folders

# trailing file comment
"#;

    /// The work account's text, as `remove_account` must cut it.
    const WORK: &str = r#"# Work mailbox (Jane)
[accounts.work]
provider = "microsoft"      # M365
email    = "jane@contoso.com"
tenant = 'contoso.onmicrosoft.com'
client_id = "11111111-2222-3333-4444-555555555555"
# flow = "browser"
flow = "device"
maildir = "/var/lib/mailsync/mail/work"   # where mail goes
# end of work

  [accounts.work.folders]   # my mappings
  Inbox = "INBOX"
  # Archive comes from the role
  Archive = "@archive"
  "Deleted Items" = "@trash"

"#;

    const HOME: &str = r#"[accounts.home]
provider = "google"
email = "joe@gmail.com"
client_id = "123-abc.apps.googleusercontent.com"
client_secret_file = "/etc/mailsync/home.secret"
maildir = "/var/lib/mailsync/mail/home"
scopes = [
  "https://mail.google.com/",  # all of Gmail
]
[accounts.home.folders]
Inbox = "INBOX"
# trailing comment of home.folders

"#;

    fn defaults() -> Vec<(String, String)> {
        [
            ("Inbox", "INBOX"),
            ("Archive", "@archive"),
            ("Deleted Items", "@trash"),
        ]
        .map(|(l, r)| (l.to_owned(), r.to_owned()))
        .to_vec()
    }

    fn robot() -> AccountSettings {
        AccountSettings {
            name: "robot".into(),
            provider: "microsoft".into(),
            email: "robot@contoso.com".into(),
            tenant: Some("contoso.onmicrosoft.com".into()),
            client_id: "66666666-7777-8888-9999-000000000000".into(),
            flow: "client-credentials".into(),
            client_secret_file: Some("/etc/mailsync/robot.secret".into()),
            maildir: Some("/var/lib/mailsync/mail/robot".into()),
            ..AccountSettings::default()
        }
    }

    fn work() -> AccountSettings {
        AccountSettings {
            name: "work".into(),
            provider: "microsoft".into(),
            email: "jane@contoso.com".into(),
            tenant: Some("contoso.onmicrosoft.com".into()),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            flow: "device".into(),
            ..AccountSettings::default()
        }
    }

    fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn loads(path: &Path) -> super::super::Config {
        match super::super::load(path) {
            Ok(c) => c,
            Err(e) => panic!("{e}\n{}", fs::read_to_string(path).unwrap()),
        }
    }

    #[test]
    fn the_test_config_is_valid_and_its_spans_are_as_written() {
        assert!(ORIGINAL.contains(WORK) && ORIGINAL.contains(HOME));
        let (_dir, path) = file_with(ORIGINAL);
        let config = loads(&path);
        assert_eq!(config.accounts.len(), 2);
    }

    #[test]
    fn a_new_account_is_appended_and_nothing_else_changes() {
        let (_dir, path) = file_with(ORIGINAL);
        let outcome = upsert_account(&path, &robot(), &defaults()).unwrap();
        assert_eq!(outcome, UpsertOutcome::Added);
        let after = fs::read_to_string(&path).unwrap();
        let added = after
            .strip_prefix(ORIGINAL)
            .expect("the original is kept byte for byte");
        assert_eq!(
            added,
            r#"
[accounts.robot]
provider = "microsoft"
email = "robot@contoso.com"
tenant = "contoso.onmicrosoft.com"
client_id = "66666666-7777-8888-9999-000000000000"
flow = "client-credentials"
client_secret_file = "/etc/mailsync/robot.secret"
maildir = "/var/lib/mailsync/mail/robot"

[accounts.robot.folders]
Inbox = "INBOX"
Archive = "@archive"
"Deleted Items" = "@trash"
"#
        );
        let config = loads(&path);
        let robot = config.account("robot").unwrap();
        let locals: Vec<&str> = robot.folders.iter().map(|m| m.local.as_str()).collect();
        assert_eq!(locals, ["Inbox", "Archive", "Deleted Items"]);

        // And `stop` gives the file back as it was.
        assert!(remove_account(&path, "robot").unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), ORIGINAL);
    }

    #[test]
    fn an_existing_account_changes_only_the_keys_given() {
        let (_dir, path) = file_with(ORIGINAL);
        let settings = AccountSettings {
            email: "jane.doe@contoso.com".into(),
            flow: "browser".into(),
            imap_host: Some("outlook.office365.com".into()),
            imap_port: Some(993),
            ..work()
        };
        let outcome = upsert_account(&path, &settings, &defaults()).unwrap();
        assert_eq!(
            outcome,
            UpsertOutcome::Updated {
                keys: vec!["email", "flow", "imap_host", "imap_port"],
                folders_added: false
            }
        );
        let after = fs::read_to_string(&path).unwrap();
        let expected = ORIGINAL
            .replace(
                "email    = \"jane@contoso.com\"",
                "email    = \"jane.doe@contoso.com\"",
            )
            .replace("flow = \"device\"", "flow = \"browser\"")
            .replace(
                "maildir = \"/var/lib/mailsync/mail/work\"   # where mail goes\n",
                "maildir = \"/var/lib/mailsync/mail/work\"   # where mail goes\n\
                 imap_host = \"outlook.office365.com\"\nimap_port = 993\n",
            );
        assert_eq!(after, expected);
        // Outside the work table, byte for byte.
        let (before_work, _) = ORIGINAL.split_once("# Work mailbox").unwrap();
        assert!(after.starts_with(before_work));
        assert!(after.ends_with(&ORIGINAL[ORIGINAL.find("  [accounts.work.folders]").unwrap()..]));
        let config = loads(&path);
        let work = config.account("work").unwrap();
        assert_eq!(work.email, "jane.doe@contoso.com");
        assert_eq!(work.folders.len(), 3, "the user's mappings stay");
    }

    #[test]
    fn an_unchanged_account_is_not_rewritten() {
        let (_dir, path) = file_with(ORIGINAL);
        let inode = fs::metadata(&path).unwrap().ino();
        // The tenant is written in single quotes: the same value all the same.
        let outcome = upsert_account(&path, &work(), &defaults()).unwrap();
        assert_eq!(
            outcome,
            UpsertOutcome::Updated {
                keys: vec![],
                folders_added: false
            }
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), ORIGINAL);
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
    }

    #[test]
    fn removing_an_account_cuts_its_tables_and_their_comments_only() {
        let (_dir, path) = file_with(ORIGINAL);
        assert!(remove_account(&path, "work").unwrap());
        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(after, ORIGINAL.replace(WORK, ""));
        assert!(after.contains("# ---- accounts ----\n\n# ---- the home account ----\n"));
        let config = loads(&path);
        assert!(config.account("work").is_none() && config.account("home").is_some());

        assert!(remove_account(&path, "home").unwrap());
        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(after, ORIGINAL.replace(WORK, "").replace(HOME, ""));
        assert!(after.ends_with("# ---- the home account ----\n\n# trailing file comment\n"));
        assert!(loads(&path).accounts.is_empty());
    }

    #[test]
    fn removing_an_unknown_account_changes_nothing() {
        let (dir, path) = file_with(ORIGINAL);
        let inode = fs::metadata(&path).unwrap().ino();
        assert!(!remove_account(&path, "nobody").unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), ORIGINAL);
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
        assert!(!remove_account(&dir.path().join("missing.toml"), "work").unwrap());
    }

    #[test]
    fn folders_are_added_to_an_account_that_has_none() {
        let text = "[daemon]\nstate_dir = \"/srv/ms\"\n\n[accounts.work]\nprovider = \"microsoft\"\nemail = \"jane@contoso.com\"\nclient_id = \"x\"\n\n# after\n";
        let (_dir, path) = file_with(text);
        let outcome = upsert_account(&path, &work(), &defaults()).unwrap();
        assert_eq!(
            outcome,
            UpsertOutcome::Updated {
                keys: vec!["tenant", "client_id", "flow"],
                folders_added: true
            }
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "[daemon]\nstate_dir = \"/srv/ms\"\n\n[accounts.work]\nprovider = \"microsoft\"\nemail = \"jane@contoso.com\"\n\
             client_id = \"11111111-2222-3333-4444-555555555555\"\ntenant = \"contoso.onmicrosoft.com\"\nflow = \"device\"\n\n\
             [accounts.work.folders]\nInbox = \"INBOX\"\nArchive = \"@archive\"\n\"Deleted Items\" = \"@trash\"\n\n# after\n"
        );
        assert_eq!(loads(&path).account("work").unwrap().folders.len(), 3);
    }

    #[test]
    fn new_keys_follow_the_tables_indentation_and_line_endings() {
        let text = "[daemon]\r\nstate_dir = \"/srv/ms\"\r\n\r\n  [accounts.work]\r\n  provider = \"microsoft\"\r\n  email = \"jane@contoso.com\"\r\n  client_id = \"11111111-2222-3333-4444-555555555555\"\r\n  [accounts.work.folders]\r\n  Inbox = \"INBOX\"";
        let (_dir, path) = file_with(text);
        upsert_account(&path, &work(), &defaults()).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            text.replace(
                "5555\"\r\n",
                "5555\"\r\n  tenant = \"contoso.onmicrosoft.com\"\r\n  flow = \"device\"\r\n"
            )
        );
    }

    #[test]
    fn a_missing_file_is_created_private_with_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/mailsync/config.toml");
        let outcome = upsert_account(&path, &robot(), &defaults()).unwrap();
        assert_eq!(outcome, UpsertOutcome::Created);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mailsync configuration."), "{text}");
        assert!(!text.contains("[daemon]"), "{text}");
        assert!(text.contains("\n[accounts.robot]\n"), "{text}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir.path().join("etc")), 0o700);
        loads(&path);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["config.toml"], "no temporary file left behind");
    }

    #[test]
    fn the_files_mode_is_kept_and_a_symlink_stays_a_symlink() {
        let (dir, target) = file_with(ORIGINAL);
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        upsert_account(&link, &robot(), &defaults()).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(
            fs::read_to_string(&target)
                .unwrap()
                .contains("[accounts.robot]")
        );
    }

    #[test]
    fn a_result_that_would_not_load_is_not_written() {
        let (_dir, path) = file_with(ORIGINAL);
        let settings = AccountSettings {
            client_secret_file: None,
            ..robot()
        };
        let err = upsert_account(&path, &settings, &defaults()).unwrap_err();
        assert!(matches!(err, EditError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("client_secret_file"), "{err}");
        assert!(err.to_string().contains("nothing was written"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), ORIGINAL);
    }

    #[test]
    fn accounts_written_in_other_shapes_are_left_to_the_user() {
        let text = "[daemon]\nstate_dir = \"/srv/ms\"\n[accounts]\nwork = { provider = \"microsoft\", email = \"jane@contoso.com\", client_id = \"x\" }\n";
        let (_dir, path) = file_with(text);
        let err = upsert_account(&path, &work(), &defaults()).unwrap_err();
        assert!(matches!(err, EditError::Layout { .. }), "{err}");
        let err = remove_account(&path, "work").unwrap_err();
        assert!(err.to_string().contains("edit it by hand"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), text);

        let dotted =
            "[accounts]\nwork.provider = \"microsoft\"\nwork.email = \"jane@contoso.com\"\n";
        let (_dir, path) = file_with(dotted);
        let err = remove_account(&path, "work").unwrap_err();
        assert!(matches!(err, EditError::Layout { .. }), "{err}");
    }

    #[test]
    fn broken_toml_and_bad_names_are_refused() {
        let (_dir, path) = file_with("[daemon]\nstate_dir = \n");
        let err = upsert_account(&path, &work(), &defaults()).unwrap_err();
        assert!(matches!(err, EditError::Toml { line: 2, .. }), "{err}");
        let err = upsert_account(
            &path,
            &AccountSettings {
                name: "a b".into(),
                ..work()
            },
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, EditError::Name(_)), "{err}");
    }

    #[test]
    fn a_broken_account_can_still_be_removed() {
        let text = format!("{ORIGINAL}\n[accounts.bad]\nprovider = \"nonsense\"\n");
        let (_dir, path) = file_with(&text);
        assert!(remove_account(&path, "bad").unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), ORIGINAL);
    }
}
