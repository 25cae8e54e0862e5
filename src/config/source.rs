//! Where things are in the config text: byte spans → line numbers and dotted key
//! paths, and serde's messages rewritten in the words of a TOML file.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The parsed document, kept for its spans.
pub(super) struct Source<'i> {
    text: &'i str,
    root: DeTable<'i>,
}

impl<'i> Source<'i> {
    pub(super) fn parse(text: &'i str) -> Result<Source<'i>, toml::de::Error> {
        let root = DeTable::parse(text)?.into_inner();
        Ok(Source { text, root })
    }

    /// The 1-based line of a byte offset.
    pub(super) fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line where the key at `path` is written; for a key that is absent, the line
    /// of its deepest present ancestor (a missing key is reported at its table).
    pub(super) fn line_of(&self, path: &[&str]) -> usize {
        let mut table = &self.root;
        let mut line = 1;
        for key in path {
            let Some((k, v)) = table.get_key_value(*key) else {
                break;
            };
            line = self.line(k.span().start);
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => break,
            }
        }
        line
    }

    /// The key path of the deepest key whose name or value covers `span`.
    pub(super) fn path_at(&self, span: &Range<usize>) -> Vec<String> {
        let mut path = Vec::new();
        find_in_table(&self.root, span, &mut path);
        path
    }
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

fn find_in_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    for (k, v) in table.iter() {
        path.push(k.get_ref().to_string());
        // The key itself first: a header's span covers the keys written in it.
        if covers(&k.span(), span) || find_in_value(v, span, path) || covers(&v.span(), span) {
            return true;
        }
        path.pop();
    }
    false
}

/// Tables may be split over several headers, so a value's span need not cover its
/// children: descend everywhere rather than only into covering spans.
fn find_in_value(v: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    match v.get_ref() {
        DeValue::Table(t) => find_in_table(t, span, path),
        DeValue::Array(items) => items.iter().any(|item| find_in_value(item, span, path)),
        _ => false,
    }
}

/// Writes a key path as TOML would: `accounts.work.folders."Deleted Items"`.
pub(super) fn dotted<S: AsRef<str>>(path: &[S]) -> String {
    let mut out = String::new();
    for (i, key) in path.iter().enumerate() {
        let key = key.as_ref();
        if i > 0 {
            out.push('.');
        }
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare {
            out.push_str(key);
        } else {
            out.push_str(&format!("{key:?}"));
        }
    }
    out
}

/// A serde/toml message rewritten for people editing the file, and whether it names
/// a key that does not exist (its path then ends at the table that holds it).
pub(super) struct Explained {
    pub message: String,
    pub unknown_key: Option<String>,
}

pub(super) const SECRET_INLINE: &str = "secrets are never written in the config: put the \
    client secret in a file only mailsync can read and name it with client_secret_file, \
    or give it to the service with systemd's LoadCredential= (see $CREDENTIALS_DIRECTORY)";

pub(super) fn explain(message: &str) -> Explained {
    let one_line = message.trim().replace('\n', "; ");
    let mut unknown_key = None;
    let message = if let Some(rest) = one_line.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        unknown_key = Some(name.to_owned());
        let names = backticked(expected);
        match name {
            "client_secret" | "secret" => SECRET_INLINE.to_owned(),
            "password" => "mailsync never uses a password: it signs in with OAuth 2.0 \
                (choose how with flow = \"device\", \"browser\" or \"client-credentials\")"
                .to_owned(),
            _ => {
                let hint = match closest(name, &names) {
                    Some(near) => format!("; did you mean \"{near}\"?"),
                    None => String::new(),
                };
                if names.is_empty() {
                    format!("unknown key \"{name}\"{hint} (this table takes no keys)")
                } else {
                    format!(
                        "unknown key \"{name}\"{hint} (expected one of {})",
                        names.join(", ")
                    )
                }
            }
        }
    } else if let Some(rest) = one_line.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        format!("missing key \"{name}\"")
    } else if let Some(rest) = one_line.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let names = backticked(expected);
        format!("unknown value \"{value}\" (use {})", or_list(&names))
    } else if let Some(rest) = one_line
        .strip_prefix("invalid type: ")
        .or_else(|| one_line.strip_prefix("invalid value: "))
    {
        match rest.rsplit_once(", expected ") {
            Some((found, expected)) => {
                format!(
                    "expected {}, found {}",
                    plain_type(expected),
                    found.replace('`', "")
                )
            }
            None => rest.to_owned(),
        }
    } else {
        one_line
    };
    Explained {
        message,
        unknown_key,
    }
}

/// The names inside backticks: "expected one of `a`, `b`" → [a, b].
fn backticked(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

fn or_list(names: &[String]) -> String {
    match names {
        [] => "another value".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn plain_type(expected: &str) -> &str {
    match expected {
        "i64" | "i32" | "u64" | "u32" | "u16" | "u8" => "a whole number",
        "a map" => "a table",
        "a sequence" => "an array",
        other => other,
    }
}

/// The known name within two edits of a misspelt one, if exactly one is that close.
fn closest<'a>(name: &str, names: &'a [String]) -> Option<&'a str> {
    let mut near = names
        .iter()
        .filter(|n| edit_distance(name, n) <= 2.min(n.len() / 2));
    let first = near.next()?;
    near.next().is_none().then_some(first.as_str())
}

/// Optimal string alignment distance: insertions, deletions, substitutions and
/// adjacent transpositions ("emial") each count one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_the_file() {
        for (raw, want) in [
            (
                "unknown field `emial`, expected one of `provider`, `email`, `tenant`",
                "unknown key \"emial\"; did you mean \"email\"? (expected one of provider, email, tenant)",
            ),
            (
                "unknown field `zzz`, expected `a` or `b`",
                "unknown key \"zzz\" (expected one of a, b)",
            ),
            ("missing field `email`", "missing key \"email\""),
            (
                "unknown variant `microsof`, expected one of `microsoft`, `google`, `custom`",
                "unknown value \"microsof\" (use microsoft, google or custom)",
            ),
            (
                "invalid type: string \"x\", expected i64",
                "expected a whole number, found string \"x\"",
            ),
            (
                "invalid type: integer `3`, expected a map",
                "expected a table, found integer 3",
            ),
        ] {
            assert_eq!(explain(raw).message, want);
        }
        assert_eq!(
            explain("unknown field `x`, there are no fields")
                .unknown_key
                .as_deref(),
            Some("x")
        );
        assert!(
            explain("unknown field `client_secret`, expected `a`")
                .message
                .contains("client_secret_file")
        );
    }

    #[test]
    fn key_paths_quote_what_needs_quoting() {
        assert_eq!(
            dotted(&["accounts", "work", "folders", "Deleted Items"]),
            "accounts.work.folders.\"Deleted Items\""
        );
        assert_eq!(dotted(&["a-b_c9"]), "a-b_c9");
    }

    #[test]
    fn edit_distance_counts_transpositions_once() {
        assert_eq!(edit_distance("emial", "email"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("tennant", "tenant"), 1);
        assert_eq!(
            closest("idle_timout", &["idle".into(), "idle_timeout".into()]),
            Some("idle_timeout")
        );
        assert_eq!(closest("xyz", &["idle".into()]), None);
    }
}
