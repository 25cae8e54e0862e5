//! No import cycles between the files of `src/`: if two files use each other, one of
//! them holds something that belongs lower (STYLE.md). Reads the source, no server.
//!
//! Each file is a module (`src/imap/session.rs` is `crate::imap::session`, a `mod.rs`
//! is its directory, lib.rs the crate). A file uses another when it names it in a path
//! (`crate::…`, `super::…`, `self::…`, a child module, or a module brought in by
//! `use`), in a `use` item or inline, resolved to the longest path that is a module
//! file the file may name (a private module only from below its parent): naming an
//! item of `imap/mod.rs` is a use of that file. Declaring a child (`mod x;`) and
//! re-exporting from one's own children (`pub use x::…`) are not uses, unless the file's
//! own code uses the name it re-exports. Code under `#[cfg(test)]`, including `#[path]`
//! test files, is not read.
//!
//! main.rs is another crate (it names `mailsync::…`), so nothing in src/ can use it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[test]
fn src_has_no_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = Graph::read(&|file| std::fs::read_to_string(root.join(file)).ok());
    let cycles = graph.cycles();
    assert!(
        cycles.is_empty(),
        "import cycles between files of src/ (move what both need into a file below both):\n  {}",
        lines(&cycles.iter().collect::<Vec<_>>()),
    );
}

/// The checker itself: a cycle it cannot see would pass the test above.
#[test]
fn the_cycle_check_sees_uses_in_every_form() {
    let files: BTreeMap<&str, &str> = BTreeMap::from([
        ("lib.rs", "pub mod a;\npub mod b;\nmod c;\n"),
        // A parent declaring and re-exporting its children does not use them; a real
        // use does, as does using in its own code what it re-exports.
        (
            "a/mod.rs",
            "mod x;\nmod y;\npub mod z;\npub use x::Thing;\npub(crate) use self::y::{Other};\n\
             fn f() { z::go(); }\npub use w::W;\nfn g() -> W { W }\nmod w;\n",
        ),
        ("a/x.rs", "use super::y;\npub struct Thing;\n"),
        (
            "a/y.rs",
            "pub fn g() { crate::a::x::Thing; }\npub struct Other;\n",
        ),
        ("a/w.rs", "pub struct W;\n"),
        (
            "a/z.rs",
            "pub fn go() { let _ = r#\"a \"quoted\" crate::a::x\"#; super::super::b::f(); }\n",
        ),
        // Through a module brought in by `use`; not from strings, comments or tests.
        (
            "b.rs",
            "use crate::{a as alpha, c};\nfn f() { alpha::z::go(); c::inner(); }\n\
             const S: &str = \"crate::a::x\"; // crate::a::x\n\
             #[cfg(test)]\nmod tests { use crate::a::x; }\n",
        ),
        (
            "c.rs",
            "pub fn inner() { let _ = '\"'; crate::b::nothing(); }\n",
        ),
    ]);
    let graph = Graph::read(&|file| files.get(file).map(|t| t.to_string()));
    assert_eq!(
        graph.cycles(),
        [
            "a/mod.rs → a/z.rs → b.rs → a/mod.rs",
            "a/x.rs → a/y.rs → a/x.rs",
            "a/z.rs → b.rs → a/z.rs",
            "b.rs → c.rs → b.rs",
        ]
    );
    let to = |file: &str| graph.edges[file].iter().cloned().collect::<Vec<_>>();
    assert_eq!(to("a/mod.rs"), ["a/w.rs", "a/z.rs"], "only real uses");
    assert_eq!(to("b.rs"), ["a/mod.rs", "a/z.rs", "c.rs"]);
}

fn lines<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "(none)".to_owned();
    }
    let items: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    items.join("\n  ")
}

/// The files of the library reached from lib.rs, and which files each uses.
struct Graph {
    /// File ("imap/session.rs", relative to src/) → files it uses.
    edges: BTreeMap<String, BTreeSet<String>>,
}

/// One file as read: its module, its children and what it names.
struct Parsed {
    module: Vec<String>,
    /// `mod name;` with its `#[path]` if any.
    children: Vec<Child>,
    uses: Vec<UsePath>,
    inline: Vec<Vec<String>>,
    /// The names its code (outside `use` items) starts a path or an expression with.
    names: BTreeSet<String>,
}

struct Child {
    name: String,
    path: Option<String>,
    /// `pub` in any form, taken as nameable from anywhere.
    public: bool,
}

/// One path of a `use` tree, expanded (`use a::{b, c as d}` gives two).
struct UsePath {
    segments: Vec<String>,
    /// The name it brings into scope.
    name: Option<String>,
    public: bool,
}

impl Graph {
    fn read(read: &dyn Fn(&str) -> Option<String>) -> Graph {
        // Module path ("imap::session") → its file, and whether it is `pub` in its
        // parent (else only the parent and what is below it can name it).
        let mut modules = BTreeMap::new();
        let mut parsed = Vec::new();
        let mut todo = vec![(Vec::<String>::new(), "lib.rs".to_owned(), true)];
        while let Some((module, file, public)) = todo.pop() {
            let text = read(&file).unwrap_or_else(|| panic!("cannot read src/{file}"));
            let p = parse(&file, &text, module.clone());
            // Where children live: beside lib.rs and mod.rs, else in a directory
            // named after the file; `#[path]` is relative to the file's directory.
            let dir = if file == "lib.rs" {
                String::new()
            } else if let Some(dir) = file.strip_suffix("mod.rs") {
                dir.to_owned()
            } else {
                format!("{}/", file.trim_end_matches(".rs"))
            };
            for child in &p.children {
                let child_file = match &child.path {
                    Some(path) => match file.rsplit_once('/') {
                        Some((here, _)) => format!("{here}/{path}"),
                        None => path.clone(),
                    },
                    None => {
                        let flat = format!("{dir}{}.rs", child.name);
                        if read(&flat).is_some() {
                            flat
                        } else {
                            format!("{dir}{}/mod.rs", child.name)
                        }
                    }
                };
                let mut m = module.clone();
                m.push(child.name.clone());
                todo.push((m, child_file, child.public));
            }
            modules.insert(module.join("::"), (file.clone(), public));
            parsed.push((file, p));
        }

        let mut edges = BTreeMap::new();
        for (file, p) in &parsed {
            let resolver = Resolver::new(&modules, p);
            let mut to = BTreeSet::new();
            for u in &p.uses {
                let Some(target) = resolver.resolve(&u.segments) else {
                    continue;
                };
                // Re-exporting a child is how a parent shows its API, not a use,
                // unless the parent's own code uses what it re-exports.
                let used_here = u.name.as_ref().is_some_and(|n| p.names.contains(n));
                if u.public
                    && target.len() > p.module.len()
                    && target.starts_with(&p.module)
                    && !used_here
                {
                    continue;
                }
                to.insert(target);
            }
            // In code the last segment is an item, never a module: `imap::connect(…)`
            // calls the function `imap` re-exports, not its private module `connect`.
            for path in &p.inline {
                to.extend(resolver.resolve(&path[..path.len() - 1]));
            }
            to.remove(&p.module);
            let to = to
                .iter()
                .map(|m| modules[&m.join("::")].0.clone())
                .collect();
            edges.insert(file.clone(), to);
        }
        Graph { edges }
    }

    /// Every elementary cycle, as "a.rs → b.rs → a.rs" starting at its least file.
    fn cycles(&self) -> Vec<String> {
        let mut found = Vec::new();
        for start in self.edges.keys() {
            let mut path = vec![start.clone()];
            self.walk(start, &mut path, &mut found);
        }
        found.sort();
        found
    }

    fn walk(&self, start: &str, path: &mut Vec<String>, found: &mut Vec<String>) {
        let last = path.last().unwrap().clone();
        for next in &self.edges[&last] {
            if next == start {
                found.push(format!("{} → {start}", path.join(" → ")));
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                self.walk(start, path, found);
                path.pop();
            }
        }
    }
}

/// Turns the paths written in one file into the modules they name.
struct Resolver<'a> {
    modules: &'a BTreeMap<String, (String, bool)>,
    here: &'a [String],
    /// Names in scope that are modules of this crate (children, `use`d modules), or
    /// `None` where a `use` brought in something else under that name.
    scope: BTreeMap<String, Option<Vec<String>>>,
}

impl<'a> Resolver<'a> {
    fn new(modules: &'a BTreeMap<String, (String, bool)>, p: &'a Parsed) -> Resolver<'a> {
        let mut r = Resolver {
            modules,
            here: &p.module,
            scope: BTreeMap::new(),
        };
        for child in &p.children {
            let mut m = p.module.clone();
            m.push(child.name.clone());
            r.scope.insert(child.name.clone(), Some(m));
        }
        // A `use` of a module may be written after a `use` that goes through it.
        for _ in 0..2 {
            for u in &p.uses {
                let Some(name) = &u.name else { continue };
                let module = r
                    .resolve(&u.segments)
                    .filter(|m| r.resolve_exactly(&u.segments).as_ref() == Some(m));
                r.scope.insert(name.clone(), module);
            }
        }
        r
    }

    /// Where the path starts, as a module path, and the segments after that start.
    fn start<'p>(&self, path: &'p [String]) -> Option<(Vec<String>, &'p [String])> {
        let first = path.first()?;
        match first.as_str() {
            "crate" | "$crate" => Some((Vec::new(), &path[1..])),
            "self" => Some((self.here.to_vec(), &path[1..])),
            "super" => {
                let mut m = self.here.to_vec();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    m.pop()?;
                    rest = &rest[1..];
                }
                Some((m, rest))
            }
            name => Some((self.scope.get(name)?.clone()?, &path[1..])),
        }
    }

    /// The longest module the path goes through.
    fn resolve(&self, path: &[String]) -> Option<Vec<String>> {
        let (mut m, rest) = self.start(path)?;
        for segment in rest {
            m.push(segment.clone());
            if !self.visible(&m) {
                m.pop();
                break;
            }
        }
        Some(m)
    }

    /// The module the whole path names, if it names one.
    fn resolve_exactly(&self, path: &[String]) -> Option<Vec<String>> {
        let (m, rest) = self.start(path)?;
        let full = self.resolve(path)?;
        (full.len() == m.len() + rest.len()).then_some(full)
    }

    /// `m` is a module this file can name: public, or private below an ancestor.
    fn visible(&self, m: &[String]) -> bool {
        match self.modules.get(&m.join("::")) {
            Some((_, true)) => true,
            Some((_, false)) => self.here.starts_with(&m[..m.len() - 1]),
            None => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    /// `::` is one token; every other punctuation character is its own.
    Punct(String),
    /// Numbers, characters and lifetimes: nothing a path is made of.
    Other,
}

fn is_punct(t: Option<&Tok>, p: &str) -> bool {
    matches!(t, Some(Tok::Punct(q)) if q == p)
}

fn is_ident(t: Option<&Tok>, i: &str) -> bool {
    matches!(t, Some(Tok::Ident(j)) if j == i)
}

/// Rust source → tokens, without comments; string contents kept apart from code.
fn tokenize(text: &str) -> Vec<Tok> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_char = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            let (s, end) = string(&c, i + 1);
            out.push(Tok::Str(s));
            i = end;
        } else if ch == '\'' {
            // A character literal ('a', '\n', '"') or a lifetime ('a).
            if next == Some('\\') {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
            }
            out.push(Tok::Other);
        } else if ch.is_ascii_digit() {
            while i < c.len()
                && (ident_char(c[i])
                    || (c[i] == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())))
            {
                i += 1;
            }
            out.push(Tok::Other);
        } else if ident_char(ch) || (ch == '$' && next.is_some_and(ident_char)) {
            let start = i;
            i += 1;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let here = c.get(i).copied();
            let after = c.get(i + 1).copied();
            match word.as_str() {
                "r" if here == Some('#') && after.is_some_and(ident_char) => {
                    // A raw identifier: r#type.
                    let s = i + 1;
                    i = s;
                    while i < c.len() && ident_char(c[i]) {
                        i += 1;
                    }
                    out.push(Tok::Ident(c[s..i].iter().collect()));
                }
                "r" | "br" | "cr" if matches!(here, Some('"' | '#')) => {
                    let mut hashes = 0;
                    while c.get(i) == Some(&'#') {
                        hashes += 1;
                        i += 1;
                    }
                    i += 1; // the opening quote
                    let s = i;
                    while i < c.len()
                        && !(c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')))
                    {
                        i += 1;
                    }
                    out.push(Tok::Str(c[s..i.min(c.len())].iter().collect()));
                    i += 1 + hashes;
                }
                "b" | "c" if here == Some('"') => {
                    let (s, end) = string(&c, i + 1);
                    out.push(Tok::Str(s));
                    i = end;
                }
                "b" if here == Some('\'') => {
                    i += 1;
                    while i < c.len() && c[i] != '\'' {
                        i += if c[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                    out.push(Tok::Other);
                }
                _ => out.push(Tok::Ident(word)),
            }
        } else if ch == ':' && next == Some(':') {
            out.push(Tok::Punct("::".to_owned()));
            i += 2;
        } else {
            out.push(Tok::Punct(ch.to_string()));
            i += 1;
        }
    }
    out
}

/// A string's contents from just after its opening quote; returns the index after
/// the closing one.
fn string(c: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < c.len() && c[i] != '"' {
        i += if c[i] == '\\' { 2 } else { 1 };
    }
    let end = i.min(c.len());
    (c[start..end].iter().collect(), end + 1)
}

/// The index of the bracket closing the one at `open`.
fn closing(t: &[Tok], open: usize) -> usize {
    let mut depth = 0;
    for (i, tok) in t.iter().enumerate().skip(open) {
        match tok {
            Tok::Punct(p) if matches!(p.as_str(), "(" | "[" | "{") => depth += 1,
            Tok::Punct(p) if matches!(p.as_str(), ")" | "]" | "}") => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    t.len()
}

/// The index just after the item starting at `i`: its `;` or its closing brace.
fn item_end(t: &[Tok], mut i: usize) -> usize {
    let is_use = is_ident(t.get(i), "use");
    while i < t.len() {
        match &t[i] {
            Tok::Punct(p) if p == ";" => return i + 1,
            Tok::Punct(p) if p == "{" && !is_use => return closing(t, i) + 1,
            Tok::Punct(p) if matches!(p.as_str(), "(" | "[" | "{") => i = closing(t, i) + 1,
            _ => i += 1,
        }
    }
    i
}

fn parse(file: &str, text: &str, module: Vec<String>) -> Parsed {
    let t = tokenize(text);
    let mut p = Parsed {
        module,
        children: Vec::new(),
        uses: Vec::new(),
        inline: Vec::new(),
        names: BTreeSet::new(),
    };
    let mut test_only = false;
    let mut path_attr = None;
    let mut i = 0;
    while i < t.len() {
        // Attributes: remember #[cfg(test)] and #[path = "…"] for the next item.
        if is_punct(t.get(i), "#") {
            let open = if is_punct(t.get(i + 1), "!") {
                i + 2
            } else {
                i + 1
            };
            if is_punct(t.get(open), "[") {
                let close = closing(&t, open);
                let body = &t[open + 1..close];
                if is_ident(body.first(), "cfg")
                    && body.iter().any(|b| is_ident(Some(b), "test"))
                    && !body.iter().any(|b| is_ident(Some(b), "not"))
                    && open == i + 1
                {
                    test_only = true;
                }
                if is_ident(body.first(), "path")
                    && let Some(Tok::Str(s)) = body.get(2)
                {
                    path_attr = Some(s.clone());
                }
                i = close + 1;
                continue;
            }
        }
        if test_only {
            i = item_end(&t, i);
            test_only = false;
            path_attr = None;
            continue;
        }
        // Visibility, then `use` or `mod`.
        let mut j = i;
        let public = is_ident(t.get(j), "pub");
        if public {
            j += 1;
            if is_punct(t.get(j), "(") {
                j = closing(&t, j) + 1;
            }
        }
        if is_ident(t.get(j), "use") {
            let end = item_end(&t, j);
            let mut prefix = Vec::new();
            use_tree(&t[j + 1..end - 1], &mut prefix, public, &mut p.uses);
            i = end;
            continue;
        }
        if is_ident(t.get(j), "mod")
            && let Some(Tok::Ident(name)) = t.get(j + 1)
        {
            assert!(
                is_punct(t.get(j + 2), ";"),
                "src/{file}: inline `mod {name} {{…}}` outside #[cfg(test)]: teach \
                 tests/layout.rs where its `super` points"
            );
            p.children.push(Child {
                name: name.clone(),
                path: path_attr.take(),
                public,
            });
            i = j + 3;
            continue;
        }
        path_attr = None;
        // A path in code: it starts where no `::` or `.` comes before.
        if let Some(Tok::Ident(first)) = t.get(i) {
            let after_path = i > 0 && (is_punct(t.get(i - 1), "::") || is_punct(t.get(i - 1), "."));
            if !after_path {
                p.names.insert(first.clone());
            }
            if !after_path && is_punct(t.get(i + 1), "::") {
                let mut path = vec![first.clone()];
                let mut k = i + 1;
                while is_punct(t.get(k), "::") {
                    match t.get(k + 1) {
                        Some(Tok::Ident(s)) => path.push(s.clone()),
                        _ => break,
                    }
                    k += 2;
                }
                p.inline.push(path);
                i = k;
                continue;
            }
        }
        i += 1;
    }
    p
}

/// Expands a `use` tree (without `use` and `;`) into its paths.
fn use_tree(t: &[Tok], prefix: &mut Vec<String>, public: bool, out: &mut Vec<UsePath>) {
    // Split at top-level commas; each part is `a::b::c`, `a::{…}`, `a as b` or `*`.
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < t.len() {
        if is_punct(t.get(i), "{") {
            i = closing(t, i) + 1;
            continue;
        }
        if is_punct(t.get(i), ",") {
            parts.push(&t[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(&t[start..]);
    for part in parts {
        let depth = prefix.len();
        let mut k = 0;
        if is_punct(part.first(), "::") {
            k = 1;
        }
        let mut name = None;
        let mut itself = false;
        while k < part.len() {
            match &part[k] {
                Tok::Ident(s) if s == "as" => {
                    if let Some(Tok::Ident(alias)) = part.get(k + 1) {
                        name = Some(alias.clone());
                    }
                    break;
                }
                // `a::{self, …}`: the module `a` itself.
                Tok::Ident(s) if s == "self" && depth > 0 && k == 0 => {
                    name = prefix.last().cloned();
                    itself = true;
                }
                Tok::Ident(s) => {
                    prefix.push(s.clone());
                    name = Some(s.clone());
                }
                Tok::Punct(p) if p == "{" => {
                    use_tree(&part[k + 1..closing(part, k)], prefix, public, out);
                    name = None;
                    break;
                }
                Tok::Punct(p) if p == "*" => {
                    name = None;
                }
                _ => {}
            }
            k += 1;
        }
        let brace = part.iter().any(|p| is_punct(Some(p), "{"));
        if !brace && (prefix.len() > depth || itself) {
            out.push(UsePath {
                segments: prefix.clone(),
                name: name.filter(|n| n != "_"),
                public,
            });
        }
        prefix.truncate(depth);
    }
}
