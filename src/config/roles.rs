//! Folder mapping rules (pure): which remote folder a mapping such as `"@trash"` or
//! `"Deleted Items"` means, given the server's LIST reply.
//!
//! A role is found first by its RFC 6154 special-use attribute, then by the names
//! servers and clients give such folders in many languages, because Exchange Online
//! and older servers do not always send the attributes.

use std::fmt;
use std::str::FromStr;

/// A folder's purpose, written `@inbox`, `@archive`, ... in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Inbox,
    Archive,
    Trash,
    Sent,
    Drafts,
    Junk,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Inbox,
        Role::Archive,
        Role::Trash,
        Role::Sent,
        Role::Drafts,
        Role::Junk,
    ];

    /// How the role is written in the config: `@archive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Inbox => "@inbox",
            Role::Archive => "@archive",
            Role::Trash => "@trash",
            Role::Sent => "@sent",
            Role::Drafts => "@drafts",
            Role::Junk => "@junk",
        }
    }

    /// The RFC 6154 special-use attribute (`\Archive`); the inbox has none, it is
    /// always named INBOX.
    pub fn attribute(self) -> Option<&'static str> {
        match self {
            Role::Inbox => None,
            Role::Archive => Some("\\Archive"),
            Role::Trash => Some("\\Trash"),
            Role::Sent => Some("\\Sent"),
            Role::Drafts => Some("\\Drafts"),
            Role::Junk => Some("\\Junk"),
        }
    }

    /// The role a special-use attribute announces, for `mailsync folders`.
    pub fn from_attribute(attr: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.attribute().is_some_and(|a| a.eq_ignore_ascii_case(attr)))
    }

    /// Names this role's folder goes by, compared case-insensitively with the last
    /// component of a folder's decoded name, or with the whole name when the entry
    /// holds a `/` (Gmail's `[Gmail]/...`).
    pub fn known_names(self) -> &'static [&'static str] {
        match self {
            Role::Inbox => &["INBOX"],
            Role::Trash => &[
                "Trash",
                "Deleted Items",
                "Deleted Messages",
                "Deleted",
                "Bin",
                "Papierkorb",
                "Gelöschte Elemente",
                "Gelöschte Objekte",
                "Éléments supprimés",
                "Corbeille",
                "Elementos eliminados",
                "Papelera",
                "Posta eliminata",
                "Cestino",
                "Verwijderde items",
                "Prullenbak",
                "Borttaget",
                "Borttagna objekt",
                "Slettede elementer",
                "Usunięte elementy",
                "Kosz",
                "Itens Excluídos",
                "Lixeira",
                "Lixo",
                "[Gmail]/Trash",
                "[Gmail]/Bin",
                "[Google Mail]/Trash",
                "[Google Mail]/Bin",
            ],
            Role::Archive => &[
                "Archive",
                "Archives",
                "Archiv",
                "Archivo",
                "Archivio",
                "Archief",
                "Arkiv",
                "Arquivo",
                "[Gmail]/All Mail",
                "[Google Mail]/All Mail",
            ],
            Role::Sent => &[
                "Sent",
                "Sent Items",
                "Sent Messages",
                "Sent Mail",
                "Gesendet",
                "Gesendete Elemente",
                "Gesendete Objekte",
                "Éléments envoyés",
                "Envoyés",
                "Elementos enviados",
                "Enviados",
                "Posta inviata",
                "Verzonden items",
                "Skickat",
                "Skickade objekt",
                "Sendte elementer",
                "Elementy wysłane",
                "Itens Enviados",
                "[Gmail]/Sent Mail",
                "[Google Mail]/Sent Mail",
            ],
            Role::Drafts => &[
                "Drafts",
                "Entwürfe",
                "Brouillons",
                "Borradores",
                "Bozze",
                "Concepten",
                "Utkast",
                "Kladder",
                "Wersje robocze",
                "Rascunhos",
                "[Gmail]/Drafts",
                "[Google Mail]/Drafts",
            ],
            Role::Junk => &[
                "Junk",
                "Junk Email",
                "Junk E-mail",
                "Junk Mail",
                "Spam",
                "Junk-E-Mail",
                "Courrier indésirable",
                "Correo no deseado",
                "Posta indesiderata",
                "Ongewenste e-mail",
                "Skräppost",
                "Uønsket e-post",
                "Wiadomości-śmieci",
                "Lixo Eletrônico",
                "[Gmail]/Spam",
                "[Google Mail]/Spam",
            ],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role names, for error messages: `@inbox, @archive, ...`.
pub fn role_list() -> String {
    Role::ALL.map(Role::as_str).join(", ")
}

impl FromStr for Role {
    type Err = ();
    /// Accepts `@trash` in any ASCII case.
    fn from_str(s: &str) -> Result<Role, ()> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

/// The remote side of a mapping: a folder name, or a role to look up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RemoteSpec {
    /// A folder name as the user wrote it: decoded (`Gelöschte Elemente`) or in its
    /// wire form (`Gel&APY-schte Elemente`).
    Name(String),
    Role(Role),
}

impl fmt::Display for RemoteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteSpec::Name(n) => write!(f, "{n:?}"),
            RemoteSpec::Role(r) => write!(f, "\"{r}\""),
        }
    }
}

/// One entry of the server's LIST reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFolder {
    /// The name on the wire (modified UTF-7), as SELECT needs it.
    pub name: String,
    /// The name decoded for people.
    pub display: String,
    /// Attributes as sent, e.g. `\Trash`, `\HasNoChildren`.
    pub attributes: Vec<String>,
    pub delimiter: Option<char>,
}

impl RemoteFolder {
    pub fn has_attribute(&self, attr: &str) -> bool {
        self.attributes.iter().any(|a| a.eq_ignore_ascii_case(attr))
    }

    /// Whether the folder can hold messages (`\Noselect` and `\NonExistent` cannot).
    pub fn is_selectable(&self) -> bool {
        !self.has_attribute("\\Noselect") && !self.has_attribute("\\NonExistent")
    }

    pub fn is_inbox(&self) -> bool {
        self.name.eq_ignore_ascii_case("INBOX")
    }

    /// The role the folder's attributes announce, if any.
    pub fn special_use(&self) -> Option<Role> {
        if self.is_inbox() {
            return Some(Role::Inbox);
        }
        self.attributes.iter().find_map(|a| Role::from_attribute(a))
    }

    fn last_component(&self) -> &str {
        match self.delimiter {
            Some(d) => self.display.rsplit(d).next().unwrap_or(&self.display),
            None => &self.display,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no remote folder matches {spec} (the server has: {}); run `mailsync folders` to see them with their roles",
        .available.join(", ")
    )]
    NotFound {
        spec: RemoteSpec,
        /// Decoded names of the selectable folders on the server.
        available: Vec<String>,
    },
    #[error(
        "{spec} matches several remote folders ({}); map the one you mean by name, e.g. {:?}",
        .candidates.join(", "),
        .candidates.first().map(String::as_str).unwrap_or("")
    )]
    Ambiguous {
        spec: RemoteSpec,
        candidates: Vec<String>,
    },
    #[error("remote folder {name:?} cannot hold messages (\\Noselect); map one of its subfolders")]
    NotSelectable { name: String },
}

/// Finds the remote folder a mapping means.
///
/// A name matches a folder's decoded name exactly, else its wire name (INBOX in any
/// case). A role matches, in order and stopping at the first step that finds
/// anything: the special-use attribute; a known name as the whole folder name; a known
/// name as the last component of a nested folder; for `@archive` only, Gmail's `\All`.
/// Two matches within one step are ambiguous rather than guessed.
pub fn resolve<'a>(
    spec: &RemoteSpec,
    folders: &'a [RemoteFolder],
) -> Result<&'a RemoteFolder, ResolveError> {
    let found = match spec {
        RemoteSpec::Name(name) => resolve_name(name, folders)?,
        RemoteSpec::Role(role) => resolve_role(*role, folders),
    };
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(ResolveError::NotFound {
            spec: spec.clone(),
            available: folders
                .iter()
                .filter(|f| f.is_selectable())
                .map(|f| f.display.clone())
                .collect(),
        }),
        many => Err(ResolveError::Ambiguous {
            spec: spec.clone(),
            candidates: many.iter().map(|f| f.display.clone()).collect(),
        }),
    }
}

fn resolve_name<'a>(
    name: &str,
    folders: &'a [RemoteFolder],
) -> Result<Vec<&'a RemoteFolder>, ResolveError> {
    let is_inbox = name.eq_ignore_ascii_case("INBOX");
    let steps: [&dyn Fn(&RemoteFolder) -> bool; 2] =
        [&|f| f.display == name || (is_inbox && f.is_inbox()), &|f| {
            f.name == name
        }];
    for matches in steps {
        let found: Vec<&RemoteFolder> = folders.iter().filter(|f| matches(f)).collect();
        if let [one] = found.as_slice()
            && !one.is_selectable()
        {
            return Err(ResolveError::NotSelectable {
                name: one.display.clone(),
            });
        }
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Ok(Vec::new())
}

fn resolve_role(role: Role, folders: &[RemoteFolder]) -> Vec<&RemoteFolder> {
    let selectable: Vec<&RemoteFolder> = folders.iter().filter(|f| f.is_selectable()).collect();
    if role == Role::Inbox {
        return selectable.into_iter().filter(|f| f.is_inbox()).collect();
    }
    let known: Vec<String> = role
        .known_names()
        .iter()
        .map(|n| n.to_lowercase())
        .collect();
    let whole = |f: &RemoteFolder| known.contains(&f.display.to_lowercase());
    let last = |f: &RemoteFolder| {
        let last = f.last_component().to_lowercase();
        role.known_names()
            .iter()
            .filter(|n| !n.contains('/'))
            .any(|n| n.to_lowercase() == last)
    };
    let steps: [&dyn Fn(&RemoteFolder) -> bool; 4] = [
        &|f| role.attribute().is_some_and(|a| f.has_attribute(a)),
        &|f| !f.is_inbox() && whole(f),
        &|f| !f.is_inbox() && last(f),
        &|f| role == Role::Archive && f.has_attribute("\\All"),
    ];
    for matches in steps {
        let found: Vec<&RemoteFolder> = selectable.iter().copied().filter(|f| matches(f)).collect();
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::utf7;

    /// A LIST entry from its wire name and attributes, delimiter `/`.
    fn folder(wire: &str, attrs: &[&str]) -> RemoteFolder {
        folder_with(wire, attrs, Some('/'))
    }

    fn folder_with(wire: &str, attrs: &[&str], delimiter: Option<char>) -> RemoteFolder {
        RemoteFolder {
            name: wire.to_owned(),
            display: utf7::decode_lossy(wire),
            attributes: attrs.iter().map(|a| a.to_string()).collect(),
            delimiter,
        }
    }

    fn role(s: &str) -> RemoteSpec {
        RemoteSpec::Role(s.parse().unwrap())
    }

    fn name(s: &str) -> RemoteSpec {
        RemoteSpec::Name(s.to_owned())
    }

    /// Exchange Online in German, as it lists itself without SPECIAL-USE.
    fn exchange_de() -> Vec<RemoteFolder> {
        [
            "Archiv",
            "Aufgaben",
            "Entw&APw-rfe",
            "Gel&APY-schte Elemente",
            "Gesendete Elemente",
            "INBOX",
            "Junk-E-Mail",
            "Kalender",
            "Postausgang",
        ]
        .iter()
        .map(|w| folder(w, &["\\HasNoChildren"]))
        .collect()
    }

    fn gmail() -> Vec<RemoteFolder> {
        vec![
            folder("INBOX", &["\\HasNoChildren"]),
            folder("[Gmail]", &["\\HasChildren", "\\Noselect"]),
            folder("[Gmail]/All Mail", &["\\All", "\\HasNoChildren"]),
            folder("[Gmail]/Drafts", &["\\Drafts", "\\HasNoChildren"]),
            folder("[Gmail]/Sent Mail", &["\\HasNoChildren", "\\Sent"]),
            folder("[Gmail]/Spam", &["\\HasNoChildren", "\\Junk"]),
            folder("[Gmail]/Trash", &["\\HasNoChildren", "\\Trash"]),
        ]
    }

    fn resolved(spec: &RemoteSpec, folders: &[RemoteFolder]) -> String {
        match resolve(spec, folders) {
            Ok(f) => f.name.clone(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn roles_by_localized_names_on_exchange() {
        let folders = exchange_de();
        for (spec, want) in [
            ("@inbox", "INBOX"),
            ("@archive", "Archiv"),
            ("@trash", "Gel&APY-schte Elemente"),
            ("@sent", "Gesendete Elemente"),
            ("@drafts", "Entw&APw-rfe"),
            ("@junk", "Junk-E-Mail"),
        ] {
            assert_eq!(resolved(&role(spec), &folders), want, "{spec}");
        }
    }

    #[test]
    fn roles_by_attribute_first() {
        let folders = vec![
            folder("INBOX", &[]),
            folder("Trash", &[]),
            folder("Papierkorb", &["\\Trash"]),
            folder("Old", &["\\Archive"]),
            folder("Archive", &[]),
        ];
        assert_eq!(resolved(&role("@trash"), &folders), "Papierkorb");
        assert_eq!(resolved(&role("@archive"), &folders), "Old");
    }

    #[test]
    fn roles_on_gmail() {
        let folders = gmail();
        for (spec, want) in [
            ("@inbox", "INBOX"),
            ("@archive", "[Gmail]/All Mail"),
            ("@trash", "[Gmail]/Trash"),
            ("@sent", "[Gmail]/Sent Mail"),
            ("@drafts", "[Gmail]/Drafts"),
            ("@junk", "[Gmail]/Spam"),
        ] {
            assert_eq!(resolved(&role(spec), &folders), want, "{spec}");
        }
        // German Gmail: no \Archive, no known name, but \All.
        let de = vec![
            folder("INBOX", &[]),
            folder("[Google Mail]/Alle Nachrichten", &["\\All"]),
        ];
        assert_eq!(
            resolved(&role("@archive"), &de),
            "[Google Mail]/Alle Nachrichten"
        );
    }

    #[test]
    fn role_names_match_case_insensitively_and_in_subfolders() {
        let folders = vec![
            folder("INBOX", &[]),
            folder("GEL&ANY-SCHTE ELEMENTE", &[]),
            folder_with("INBOX.Sent", &[], Some('.')),
        ];
        assert_eq!(
            resolved(&role("@trash"), &folders),
            "GEL&ANY-SCHTE ELEMENTE"
        );
        assert_eq!(resolved(&role("@sent"), &folders), "INBOX.Sent");
    }

    #[test]
    fn top_level_names_beat_nested_ones() {
        let folders = vec![folder("Trash", &[]), folder("Projects/Trash", &[])];
        assert_eq!(resolved(&role("@trash"), &folders), "Trash");
    }

    #[test]
    fn two_candidates_are_ambiguous_not_guessed() {
        // Thunderbird creates "Trash" on Exchange next to "Deleted Items".
        let folders = vec![
            folder("INBOX", &[]),
            folder("Deleted Items", &[]),
            folder("Trash", &[]),
        ];
        let err = resolve(&role("@trash"), &folders).unwrap_err();
        assert_eq!(
            err,
            ResolveError::Ambiguous {
                spec: role("@trash"),
                candidates: vec!["Deleted Items".into(), "Trash".into()],
            }
        );
        assert_eq!(
            err.to_string(),
            "\"@trash\" matches several remote folders (Deleted Items, Trash); map the one \
             you mean by name, e.g. \"Deleted Items\""
        );
    }

    #[test]
    fn names_match_decoded_or_wire_form_and_inbox_in_any_case() {
        let folders = exchange_de();
        for (spec, want) in [
            ("Gelöschte Elemente", "Gel&APY-schte Elemente"),
            ("Gel&APY-schte Elemente", "Gel&APY-schte Elemente"),
            ("inbox", "INBOX"),
            ("Inbox", "INBOX"),
            ("Archiv", "Archiv"),
        ] {
            assert_eq!(resolved(&name(spec), &folders), want, "{spec}");
        }
        // Names are exact: no case folding outside INBOX, no role lookup.
        assert!(resolve(&name("archiv"), &folders).is_err());
        assert!(resolve(&name("Trash"), &folders).is_err());
    }

    #[test]
    fn not_found_lists_what_exists() {
        let folders = gmail();
        let err = resolve(&role("@archive"), &folders[..2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no remote folder matches \"@archive\" (the server has: INBOX); run `mailsync \
             folders` to see them with their roles"
        );
        let err = resolve(&name("Deleted Items"), &exchange_de()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("Gelöschte Elemente"), "{msg}");
        assert!(!msg.contains("&APY-"), "{msg}");
    }

    #[test]
    fn noselect_folders_are_never_targets() {
        let folders = gmail();
        assert_eq!(
            resolve(&name("[Gmail]"), &folders).unwrap_err(),
            ResolveError::NotSelectable {
                name: "[Gmail]".into()
            }
        );
        let folders = vec![folder("Trash", &["\\Noselect", "\\HasChildren"])];
        assert!(matches!(
            resolve(&role("@trash"), &folders),
            Err(ResolveError::NotFound { .. })
        ));
    }

    #[test]
    fn every_role_round_trips_through_its_name() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(r.as_str().to_uppercase().parse::<Role>(), Ok(r));
            if let Some(a) = r.attribute() {
                assert_eq!(Role::from_attribute(a), Some(r));
            }
        }
        assert_eq!("@archiv".parse::<Role>(), Err(()));
        assert_eq!(folder("inbox", &[]).special_use(), Some(Role::Inbox));
        assert_eq!(folder("x", &["\\Junk"]).special_use(), Some(Role::Junk));
    }
}
