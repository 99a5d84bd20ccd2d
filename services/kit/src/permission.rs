//! Wildcard permissions with Apache Shiro's exact semantics (`WildcardPermission`).
//!
//! A permission string is parts divided by `:`, each part a set of sub-parts divided by `,`:
//! `printer:print,query:lp7`. A held permission *implies* a requested one when, part by part,
//! the held part is `*` or contains every requested sub-part; a held permission with fewer parts
//! implies everything below it (`printer` implies `printer:print:lp7`), and extra held parts must
//! be `*`. `*` is special only as a whole sub-part and only on the held side.
//!
//! Parsing follows Shiro to the letter, including Java's `String.split`, which drops trailing
//! empty strings: `a:b:` equals `a:b`, while `a::b` has an empty middle part. By default the
//! whole string is lower-cased (case-insensitive); [`Permission::parse_case_sensitive`] keeps it.
//! Sub-parts are not trimmed: `file: read` differs from `file:read`, as in Shiro.
//!
//! A service that builds a permission from a name a client chose (a queue in
//! `task:submit:<queue>`) checks the name with [`check_name`] first: a name that carried `:`,
//! `,` or `*`, blank space, or letters that lower-casing changes would become other parts,
//! other sub-parts, or another name, and so widen or cross a grant (`q1:x` is implied by
//! `task:submit:q1`; `Q1` by the grant for `q1`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

const WILDCARD: &str = "*";

/// Why a string is not a permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    /// Nothing but whitespace.
    #[error("a permission must not be empty or blank")]
    Empty,
    /// Only `:` dividers (after Java's trailing-empty rule), e.g. `:` or `::`.
    #[error("permission {0:?} contains only part dividers (':')")]
    OnlyDividers(String),
    /// A part made only of `,`, e.g. the middle of `a:,:b`.
    #[error("part {part} of permission {text:?} contains only sub-part dividers (',')")]
    EmptyPart {
        /// The whole string as given.
        text: String,
        /// The 1-based position of the offending part.
        part: usize,
    },
}

/// The longest name [`check_name`] accepts, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// Why a name cannot go into a permission (see [`check_name`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("the {kind} name is empty")]
    Empty {
        /// What the name names (`queue`, `service`, …).
        kind: String,
    },
    /// Longer than [`MAX_NAME_BYTES`].
    #[error("the {kind} name is {bytes} bytes long; the limit is {MAX_NAME_BYTES}")]
    TooLong {
        /// What the name names.
        kind: String,
        /// Its length in bytes.
        bytes: usize,
    },
    /// A character with a meaning in permissions, or one lower-casing changes.
    #[error("the {kind} name {name:?} contains {character:?}, {why}")]
    Character {
        /// What the name names.
        kind: String,
        /// The name as given (at most the first 64 characters).
        name: String,
        /// The first offending character.
        character: char,
        /// Why it cannot be in a name, and what to use instead.
        why: &'static str,
    },
}

/// Checks that `name` can stand as one part of a permission and mean only itself: 1 to
/// [`MAX_NAME_BYTES`] bytes, none of `:` (divides parts), `,` (divides sub-parts), `*` (the
/// wildcard), no white space or control characters (a permission is trimmed, and such names
/// are hard to see), and no character that lower-casing changes (permissions compare
/// lower-cased, so `Q1` would be granted by `…:q1`). `kind` names what the name is for the
/// error (`queue`, `service`, …). Names such as `celery`, `tasks.email`, `high-priority`,
/// `emails_v2` or `reports/daily` pass.
pub fn check_name(kind: &str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind: kind.into() });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong {
            kind: kind.into(),
            bytes: name.len(),
        });
    }
    let refuse = |character: char, why: &'static str| NameError::Character {
        kind: kind.into(),
        name: name.chars().take(64).collect(),
        character,
        why,
    };
    for c in name.chars() {
        let why = match c {
            ':' => "which divides permission parts",
            ',' => "which divides permission sub-parts",
            '*' => "the permission wildcard",
            c if c.is_whitespace() => "white space, which permissions trim or keep unseen",
            c if c.is_control() => "a control character",
            c if c.to_lowercase().ne(std::iter::once(c)) => {
                "which permissions compare lower-cased: use lower case"
            }
            _ => continue,
        };
        return Err(refuse(c, why));
    }
    Ok(())
}

/// One part: a set of sub-parts, or the wildcard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Part {
    subparts: BTreeSet<Box<str>>,
}

impl Part {
    fn is_wildcard(&self) -> bool {
        self.subparts.contains(WILDCARD)
    }

    fn implies(&self, requested: &Part) -> bool {
        self.is_wildcard() || requested.subparts.is_subset(&self.subparts)
    }
}

/// A parsed wildcard permission.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    parts: Vec<Part>,
}

/// Java's `String.split` for a one-character literal: keeps leading and inner empty strings,
/// drops trailing ones, and yields `[""]` for an empty input.
fn java_split(s: &str, divider: char) -> Vec<&str> {
    if s.is_empty() {
        return vec![""];
    }
    let mut pieces: Vec<&str> = s.split(divider).collect();
    while pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    pieces
}

impl Permission {
    /// Parses case-insensitively (Shiro's default): the string is lower-cased first.
    pub fn parse(text: &str) -> Result<Self, PermissionError> {
        Self::parse_with(text, false)
    }

    /// Parses keeping case, like Shiro's `new WildcardPermission(s, true)`.
    pub fn parse_case_sensitive(text: &str) -> Result<Self, PermissionError> {
        Self::parse_with(text, true)
    }

    fn parse_with(text: &str, case_sensitive: bool) -> Result<Self, PermissionError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(PermissionError::Empty);
        }
        let normalized = if case_sensitive {
            trimmed.to_owned()
        } else {
            trimmed.to_lowercase()
        };
        let pieces = java_split(&normalized, ':');
        if pieces.is_empty() {
            return Err(PermissionError::OnlyDividers(text.to_owned()));
        }
        let mut parts = Vec::with_capacity(pieces.len());
        for (i, piece) in pieces.iter().enumerate() {
            let subparts: BTreeSet<Box<str>> =
                java_split(piece, ',').into_iter().map(Box::from).collect();
            if subparts.is_empty() {
                return Err(PermissionError::EmptyPart {
                    text: text.to_owned(),
                    part: i + 1,
                });
            }
            parts.push(Part { subparts });
        }
        Ok(Self { parts })
    }

    /// Whether holding `self` grants `requested`.
    pub fn implies(&self, requested: &Permission) -> bool {
        for (i, wanted) in requested.parts.iter().enumerate() {
            match self.parts.get(i) {
                None => return true,
                Some(held) if !held.implies(wanted) => return false,
                Some(_) => {}
            }
        }
        self.parts
            .iter()
            .skip(requested.parts.len())
            .all(Part::is_wildcard)
    }

    /// How many parts the permission has.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Never true: a parsed permission has at least one part.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

impl FromStr for Permission {
    type Err = PermissionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The canonical form: parts joined by `:`, sub-parts sorted and joined by `,`.
impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            for (j, sub) in part.subparts.iter().enumerate() {
                if j > 0 {
                    f.write_str(",")?;
                }
                f.write_str(sub)?;
            }
        }
        Ok(())
    }
}

/// A set of held permissions, answering "is this permitted?" for a subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSet {
    held: Vec<Permission>,
}

impl PermissionSet {
    /// The permissions held.
    pub fn new(held: impl IntoIterator<Item = Permission>) -> Self {
        let mut held: Vec<Permission> = held.into_iter().collect();
        held.sort();
        held.dedup();
        Self { held }
    }

    /// Whether any held permission implies `requested`.
    pub fn permits(&self, requested: &Permission) -> bool {
        self.held.iter().any(|p| p.implies(requested))
    }

    /// Parses `requested` (case-insensitively) and checks it.
    pub fn permits_str(&self, requested: &str) -> Result<bool, PermissionError> {
        Ok(self.permits(&Permission::parse(requested)?))
    }

    /// The held permissions, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Permission> {
        self.held.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Permission {
        Permission::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn shiro_reference_vectors() {
        let cases = [
            ("newsletter", "newsletter:edit:12", true),
            ("newsletter:*", "newsletter:edit:12", true),
            ("newsletter:edit:*", "newsletter:edit", true),
            ("newsletter:edit:12", "newsletter:edit", false),
            ("newsletter:edit", "newsletter:*", false),
            ("newsletter:view,edit", "newsletter:edit", true),
            ("newsletter:view,edit", "newsletter:edit,delete", false),
            ("*", "anything:at:all", true),
            ("*:view", "printer:view:lp7", true),
            ("*:view", "printer:print:lp7", false),
            ("NewsLetter:Edit", "newsletter:edit", true),
            ("printer:print,query", "printer:query,print", true),
            ("printer:*:lp7", "printer:print:lp7", true),
            ("printer:*:lp7", "printer:print:lp8", false),
            ("printer:print", "printer:print:lp7:tray2", true),
            ("printer:print:*:*", "printer:print", true),
            ("printer:print:*:x", "printer:print", false),
            ("abc*", "abcdef", false),
            ("a", "*", false),
        ];
        for (held, requested, expected) in cases {
            assert_eq!(
                p(held).implies(&p(requested)),
                expected,
                "{held} implies {requested}"
            );
        }
    }

    #[test]
    fn parsing_follows_java_split() {
        assert_eq!(p("a:b:"), p("a:b"));
        assert_eq!(p("a:b,"), p("a:b"));
        assert_eq!(p("a::b").to_string(), "a::b");
        assert!(p("a::b").implies(&p("a::b")));
        assert!(!p("a::b").implies(&p("a:x:b")));
        assert_eq!(p("  Printer:Print  ").to_string(), "printer:print");
        assert_ne!(p("file: read"), p("file:read"), "sub-parts are not trimmed");
        assert_eq!(p("b,a:x").to_string(), "a,b:x");
    }

    #[test]
    fn invalid_strings_are_named() {
        assert_eq!(Permission::parse(""), Err(PermissionError::Empty));
        assert_eq!(Permission::parse("   "), Err(PermissionError::Empty));
        assert_eq!(
            Permission::parse(":"),
            Err(PermissionError::OnlyDividers(":".into()))
        );
        assert_eq!(
            Permission::parse(":::"),
            Err(PermissionError::OnlyDividers(":::".into()))
        );
        assert_eq!(
            Permission::parse("a:,:b"),
            Err(PermissionError::EmptyPart {
                text: "a:,:b".into(),
                part: 2
            })
        );
        assert_eq!(
            Permission::parse(",").map_err(|e| e.to_string()),
            Err("part 1 of permission \",\" contains only sub-part dividers (',')".into())
        );
    }

    #[test]
    fn case_sensitivity_is_optional() {
        let strict = Permission::parse_case_sensitive("Printer:Print").expect("valid");
        assert!(
            !strict.implies(&Permission::parse_case_sensitive("printer:print").expect("valid"))
        );
        assert!(
            strict.implies(&Permission::parse_case_sensitive("Printer:Print:lp7").expect("valid"))
        );
        assert_eq!(strict.to_string(), "Printer:Print");
    }

    #[test]
    fn a_set_permits_if_any_member_implies() {
        let set = PermissionSet::new([p("printer:query"), p("doc:*:own"), p("printer:query")]);
        assert_eq!(set.iter().count(), 2);
        assert_eq!(set.permits_str("printer:query:lp7"), Ok(true));
        assert_eq!(set.permits_str("doc:edit:own"), Ok(true));
        assert_eq!(set.permits_str("doc:edit:other"), Ok(false));
        assert!(set.permits_str("::").is_err());
    }

    #[test]
    fn names_that_would_change_a_permission_are_refused_by_character() {
        for name in [
            "celery",
            "tasks.email",
            "high-priority",
            "emails_v2",
            "reports/daily",
            "q1",
            "é",
        ] {
            assert_eq!(check_name("queue", name), Ok(()), "{name}");
        }
        let refused = |name: &str| match check_name("queue", name) {
            Err(NameError::Character { character, .. }) => character,
            other => panic!("{name:?}: {other:?}"),
        };
        for (name, character) in [
            ("q1:anything", ':'),
            ("q1:*", ':'),
            ("q1:", ':'),
            ("Q1", 'Q'),
            (",", ','),
            ("*", '*'),
            ("q1 ", ' '),
            ("q1\t", '\t'),
            ("q\x06\x163", '\x06'),
            ("\u{212A}1", '\u{212A}'),
            ("\u{01C5}", '\u{01C5}'),
        ] {
            assert_eq!(refused(name), character, "{name:?}");
        }
        assert_eq!(
            check_name("queue", ""),
            Err(NameError::Empty {
                kind: "queue".into()
            })
        );
        assert!(matches!(
            check_name("queue", &"q".repeat(MAX_NAME_BYTES + 1)),
            Err(NameError::TooLong { bytes: 201, .. })
        ));
        assert_eq!(
            check_name("queue", "q1:*").map_err(|e| e.to_string()),
            Err("the queue name \"q1:*\" contains ':', which divides permission parts".into())
        );
    }

    fn permission_text() -> impl Strategy<Value = String> {
        // Small alphabets so that overlaps (and therefore implications) are common.
        let sub = prop_oneof![Just("*".to_owned()), "[ab]{1,2}"];
        let part = prop::collection::vec(sub, 1..3).prop_map(|s| s.join(","));
        prop::collection::vec(part, 1..4).prop_map(|p| p.join(":"))
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = Permission::parse(&s);
            let _ = Permission::parse_case_sensitive(&s);
        }

        #[test]
        fn a_checked_name_is_one_part_that_only_its_own_grant_implies(
            name in "[ab.-]{0,3}[aQ:,* é\\PC]?[ab_]{0,3}",
            other in "[ab.-]{0,3}[aQ:,* é]?[ab_]{0,3}",
        ) {
            prop_assume!(check_name("queue", &name).is_ok() && check_name("queue", &other).is_ok());
            let wanted = p(&format!("task:submit:{name}"));
            prop_assert_eq!(wanted.len(), 3);
            prop_assert_eq!(wanted.to_string(), format!("task:submit:{name}"));
            prop_assert_eq!(p(&format!("task:submit:{other}")).implies(&wanted), name == other);
        }

        #[test]
        fn display_round_trips(s in permission_text()) {
            let parsed = p(&s);
            prop_assert_eq!(p(&parsed.to_string()), parsed);
        }

        #[test]
        fn implication_is_reflexive(s in permission_text()) {
            let parsed = p(&s);
            prop_assert!(parsed.implies(&parsed));
        }

        #[test]
        fn implication_is_transitive(a in permission_text(), b in permission_text(), c in permission_text()) {
            let (a, b, c) = (p(&a), p(&b), p(&c));
            if a.implies(&b) && b.implies(&c) {
                prop_assert!(a.implies(&c), "{} => {} => {}", a, b, c);
            }
        }

        #[test]
        fn the_lone_wildcard_implies_everything(s in permission_text()) {
            prop_assert!(p("*").implies(&p(&s)));
        }

        #[test]
        fn a_prefix_implies_its_extensions(s in permission_text(), extra in permission_text()) {
            let longer = p(&format!("{s}:{extra}"));
            prop_assert!(p(&s).implies(&longer));
        }
    }
}
