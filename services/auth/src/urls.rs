//! Shiro's `[urls]` filter chains: Ant-style path patterns mapped to filter chains, evaluated
//! first match wins, on a **normalised** path.
//!
//! Shiro's path-bypass CVEs (CVE-2020-1957, -11989, -13933, -17523) all came from the filter
//! matching one path while the application routed another. So the path is normalised once,
//! here, into the form both sides must use, and anything whose meaning depends on who decodes it
//! is refused instead of guessed:
//!
//! 1. percent-decoding happens exactly once; an encoded delimiter (`%2F`, `%5C`, `%3B`, `%25`,
//!    `%3F`, `%23`), an encoded control character, a malformed escape or invalid UTF-8 is
//!    rejected, since a second decoder could read it as structure;
//! 2. a backslash or a control character is rejected;
//! 3. `;` path parameters are removed from every segment (`/a/..;/b` → `/a/../b`);
//! 4. empty and `.` segments are dropped, `..` removes the previous segment, and a `..` above the
//!    root is rejected;
//! 5. the trailing slash goes (`/admin/` → `/admin`); whitespace is kept (`/admin/%20` keeps
//!    its `" "` segment, so it still matches `/admin/*`).
//!
//! The gateways forward the normalised path, so the backend routes what was authorised.

use std::fmt;

use crate::permission::{Permission, PermissionError};

/// Why a request path cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path {0:?} must start with '/'")]
    NotAbsolute(String),
    /// A `%` not followed by two hex digits.
    #[error("path {0:?} has a malformed percent-escape")]
    BadEscape(String),
    /// An escape whose decoded character is a delimiter or a control character.
    #[error("path {path:?} encodes {what} ({escape}), which servers decode differently")]
    AmbiguousEscape {
        /// The path as given.
        path: String,
        /// The escape, e.g. `%2F`.
        escape: String,
        /// What it decodes to, in words.
        what: &'static str,
    },
    /// A raw backslash or control character.
    #[error("path {0:?} contains a backslash or a control character")]
    ForbiddenCharacter(String),
    /// Decoded bytes that are not UTF-8.
    #[error("path {0:?} does not decode to UTF-8")]
    NotUtf8(String),
    /// `..` would leave the root.
    #[error("path {0:?} climbs above the root with '..'")]
    AboveRoot(String),
}

/// Normalises a request path (without query string) as described in the module docs.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute(raw.to_owned()));
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
            let Some(hex) = hex else {
                return Err(PathError::BadEscape(raw.to_owned()));
            };
            let value =
                u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEscape(raw.to_owned()))?;
            let what = match value {
                b'/' => Some("a slash"),
                b'\\' => Some("a backslash"),
                b';' => Some("a semicolon"),
                b'%' => Some("a percent sign"),
                b'?' => Some("a question mark"),
                b'#' => Some("a hash"),
                v if v < 0x20 || v == 0x7f => Some("a control character"),
                _ => None,
            };
            if let Some(what) = what {
                return Err(PathError::AmbiguousEscape {
                    path: raw.to_owned(),
                    escape: format!("%{hex}"),
                    what,
                });
            }
            decoded.push(value);
            i += 3;
        } else {
            if b == b'\\' || b < 0x20 || b == 0x7f {
                return Err(PathError::ForbiddenCharacter(raw.to_owned()));
            }
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8(raw.to_owned()))?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        let segment = segment.split(';').next().unwrap_or_default();
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot(raw.to_owned()));
                }
            }
            s => segments.push(s),
        }
    }
    Ok(format!("/{}", segments.join("/")))
}

/// Ant-style matching as Shiro's `AntPathMatcher` does it: `?` one character, `*` any run of
/// characters within a segment, `**` any number of whole segments (including none).
pub fn ant_match(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match_segments(&pattern, &path)
}

fn match_segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| match_segments(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => {
                match_segment(first.as_bytes(), segment.as_bytes())
                    && match_segments(rest, path_rest)
            }
            None => false,
        },
    }
}

fn match_segment(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative glob with backtracking to the last `*`: linear in practice, no recursion.
    let (mut p, mut t) = (0, 0);
    let (mut star, mut star_t) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            star_t = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            star_t += 1;
            t = star_t;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One filter of a chain, with its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `anon`: no authentication needed.
    Anon,
    /// `authc`: an authenticated subject (form login in Shiro; any credential here).
    Authc,
    /// `authcBasic`: authenticated, challenging with HTTP Basic.
    AuthcBasic,
    /// `authcBearer`: authenticated, challenging with a bearer token.
    AuthcBearer,
    /// `user`: authenticated or remembered.
    User,
    /// `roles[a,b]`: every listed role.
    Roles(Vec<String>),
    /// `perms[p,q]`: every listed permission.
    Perms(Vec<Permission>),
    /// `rest[res]`: each listed permission with the HTTP method's action appended.
    Rest(Vec<String>),
    /// `port[8443]`: the request must arrive on this port.
    Port(u16),
    /// `ssl` / `ssl[8443]`: the request must use TLS (on this port, 443 by default).
    Ssl(u16),
    /// `logout`: the request logs the subject out.
    Logout,
    /// `noSessionCreation`: the request must not create a session.
    NoSessionCreation,
}

/// Why a `[urls]` line is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// No `=` between pattern and chain.
    #[error("line {line}: expected `pattern = filter, filter[config], ...`")]
    Syntax {
        /// 1-based line in the rule text.
        line: usize,
    },
    /// The pattern is not absolute.
    #[error("line {line}: pattern {pattern:?} must start with '/'")]
    Pattern {
        /// 1-based line.
        line: usize,
        /// The pattern.
        pattern: String,
    },
    /// A filter name that does not exist.
    #[error(
        "line {line}: unknown filter {name:?} (known: anon, authc, authcBasic, authcBearer, user, roles, perms, rest, port, ssl, logout, noSessionCreation)"
    )]
    UnknownFilter {
        /// 1-based line.
        line: usize,
        /// The name.
        name: String,
    },
    /// A filter given a configuration it cannot use, or missing one it needs.
    #[error("line {line}: filter {name}: {message}")]
    BadConfig {
        /// 1-based line.
        line: usize,
        /// The filter.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A permission inside `perms[...]` is invalid.
    #[error("line {line}: {source}")]
    Permission {
        /// 1-based line.
        line: usize,
        /// The permission error.
        source: PermissionError,
    },
}

/// A pattern and its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The Ant pattern.
    pub pattern: String,
    /// The filters, applied in order.
    pub filters: Vec<Filter>,
}

/// An ordered rule set: the first rule whose pattern matches decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlRules {
    rules: Vec<Rule>,
}

/// Splits on commas that are outside `[...]` and outside double quotes.
fn split_top_level(text: &str) -> Vec<String> {
    let (mut out, mut current, mut depth, mut quoted) = (Vec::new(), String::new(), 0usize, false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth = depth.saturating_sub(1),
            ',' if !quoted && depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_filter(line: usize, text: &str) -> Result<Filter, RuleError> {
    let (name, config) = match text.find('[') {
        Some(open) if text.ends_with(']') => {
            (text[..open].trim(), Some(&text[open + 1..text.len() - 1]))
        }
        Some(_) => {
            return Err(RuleError::BadConfig {
                line,
                name: text.to_owned(),
                message: "unclosed '['".into(),
            });
        }
        None => (text, None),
    };
    let values: Vec<String> = config
        .map(|c| {
            split_top_level(c)
                .into_iter()
                .map(|v| v.trim_matches('"').to_owned())
                .collect()
        })
        .unwrap_or_default();
    let bad = |message: &str| RuleError::BadConfig {
        line,
        name: name.to_owned(),
        message: message.to_owned(),
    };
    let no_config = |filter: Filter| {
        if config.is_some() {
            Err(bad("takes no configuration"))
        } else {
            Ok(filter)
        }
    };
    let port = |v: &str| {
        v.parse::<u16>()
            .map_err(|_| bad(&format!("{v:?} is not a port number")))
    };
    match name {
        "anon" => no_config(Filter::Anon),
        "authc" => no_config(Filter::Authc),
        "authcBasic" => no_config(Filter::AuthcBasic),
        "authcBearer" => no_config(Filter::AuthcBearer),
        "user" => no_config(Filter::User),
        "logout" => no_config(Filter::Logout),
        "noSessionCreation" => no_config(Filter::NoSessionCreation),
        "roles" if !values.is_empty() => Ok(Filter::Roles(values)),
        "perms" if !values.is_empty() => values
            .iter()
            .map(|v| Permission::parse(v).map_err(|source| RuleError::Permission { line, source }))
            .collect::<Result<_, _>>()
            .map(Filter::Perms),
        "rest" if !values.is_empty() => {
            for v in &values {
                Permission::parse(v).map_err(|source| RuleError::Permission { line, source })?;
            }
            Ok(Filter::Rest(values))
        }
        "roles" | "perms" | "rest" => Err(bad("needs at least one value in [...]")),
        "port" => match values.as_slice() {
            [v] => Ok(Filter::Port(port(v)?)),
            _ => Err(bad("needs exactly one port, e.g. port[8443]")),
        },
        "ssl" => match values.as_slice() {
            [] => Ok(Filter::Ssl(443)),
            [v] => Ok(Filter::Ssl(port(v)?)),
            _ => Err(bad("takes at most one port")),
        },
        other => Err(RuleError::UnknownFilter {
            line,
            name: other.to_owned(),
        }),
    }
}

impl UrlRules {
    /// Parses `[urls]` lines (`pattern = chain`), skipping blank lines and `#`/`;` comments.
    /// Every line's problem is reported, not only the first.
    pub fn parse(text: &str) -> Result<Self, Vec<RuleError>> {
        let lines: Vec<(usize, &str)> = text.lines().enumerate().map(|(i, l)| (i + 1, l)).collect();
        Self::parse_lines(&lines)
    }

    /// Parses lines that carry their own line numbers (from an INI file).
    pub fn parse_lines(lines: &[(usize, &str)]) -> Result<Self, Vec<RuleError>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for &(line, text) in lines {
            let errors_before = errors.len();
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') || text.starts_with(';') {
                continue;
            }
            let Some((pattern, chain)) = text.split_once('=') else {
                errors.push(RuleError::Syntax { line });
                continue;
            };
            let pattern = pattern.trim();
            if !pattern.starts_with('/') {
                errors.push(RuleError::Pattern {
                    line,
                    pattern: pattern.to_owned(),
                });
                continue;
            }
            let mut filters = Vec::new();
            for item in split_top_level(chain) {
                match parse_filter(line, &item) {
                    Ok(f) => filters.push(f),
                    Err(e) => errors.push(e),
                }
            }
            if filters.is_empty() && errors.len() == errors_before {
                errors.push(RuleError::Syntax { line });
                continue;
            }
            rules.push(Rule {
                pattern: pattern.to_owned(),
                filters,
            });
        }
        if errors.is_empty() {
            Ok(Self { rules })
        } else {
            Err(errors)
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Evaluates a request against the rules for `subject`.
    pub fn evaluate(
        &self,
        request: &Request<'_>,
        subject: &dyn Subject,
    ) -> Result<Decision, PathError> {
        let path = normalize(request.path)?;
        let Some((index, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| ant_match(&r.pattern, &path))
        else {
            return Ok(Decision {
                path,
                rule: None,
                outcome: Outcome::Allow,
                no_session_creation: false,
                logout: false,
            });
        };
        let mut decision = Decision {
            path,
            rule: Some(index),
            outcome: Outcome::Allow,
            no_session_creation: false,
            logout: false,
        };
        for filter in &rule.filters {
            let outcome = match filter {
                Filter::Anon => Outcome::Allow,
                Filter::Authc | Filter::AuthcBasic | Filter::AuthcBearer | Filter::User => {
                    if subject.authenticated() {
                        Outcome::Allow
                    } else {
                        Outcome::Unauthenticated(challenge(filter))
                    }
                }
                Filter::Roles(roles) => match roles.iter().find(|r| !subject.has_role(r)) {
                    _ if !subject.authenticated() => Outcome::Unauthenticated(Challenge::Any),
                    Some(missing) => Outcome::Forbidden(format!("role {missing:?} is required")),
                    None => Outcome::Allow,
                },
                Filter::Perms(perms) => match perms.iter().find(|p| !subject.is_permitted(p)) {
                    _ if !subject.authenticated() => Outcome::Unauthenticated(Challenge::Any),
                    Some(missing) => Outcome::Forbidden(format!(
                        "permission {:?} is required",
                        missing.to_string()
                    )),
                    None => Outcome::Allow,
                },
                Filter::Rest(resources) => {
                    let action = rest_action(request.method);
                    let wanted: Vec<Permission> = resources
                        .iter()
                        .filter_map(|r| Permission::parse(&format!("{r}:{action}")).ok())
                        .collect();
                    match wanted.iter().find(|p| !subject.is_permitted(p)) {
                        _ if !subject.authenticated() => Outcome::Unauthenticated(Challenge::Any),
                        Some(missing) => Outcome::Forbidden(format!(
                            "permission {:?} is required",
                            missing.to_string()
                        )),
                        None => Outcome::Allow,
                    }
                }
                Filter::Port(port) => {
                    if request.port == *port {
                        Outcome::Allow
                    } else {
                        Outcome::Redirect {
                            scheme: request.scheme().to_owned(),
                            port: *port,
                        }
                    }
                }
                Filter::Ssl(port) => {
                    if request.tls && request.port == *port {
                        Outcome::Allow
                    } else {
                        Outcome::Redirect {
                            scheme: "https".into(),
                            port: *port,
                        }
                    }
                }
                Filter::Logout => {
                    decision.logout = true;
                    Outcome::Allow
                }
                Filter::NoSessionCreation => {
                    decision.no_session_creation = true;
                    Outcome::Allow
                }
            };
            if outcome != Outcome::Allow {
                decision.outcome = outcome;
                return Ok(decision);
            }
        }
        Ok(decision)
    }
}

fn challenge(filter: &Filter) -> Challenge {
    match filter {
        Filter::AuthcBasic => Challenge::Basic,
        Filter::AuthcBearer => Challenge::Bearer,
        _ => Challenge::Any,
    }
}

/// The action `rest[...]` appends for an HTTP method, as Shiro's `HttpMethodPermissionFilter`.
pub fn rest_action(method: &str) -> String {
    match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" | "OPTIONS" | "TRACE" => "read".into(),
        "POST" | "MKCOL" => "create".into(),
        "PUT" => "update".into(),
        "DELETE" => "delete".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// What a rule evaluation needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The raw path, without the query string.
    pub path: &'a str,
    /// The port the request arrived on.
    pub port: u16,
    /// Whether it arrived over TLS.
    pub tls: bool,
}

impl Request<'_> {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// What a rule evaluation needs to know about the subject.
pub trait Subject {
    /// Whether the subject has authenticated.
    fn authenticated(&self) -> bool;
    /// Whether the subject has the role.
    fn has_role(&self, role: &str) -> bool;
    /// Whether the subject holds a permission implying `permission`.
    fn is_permitted(&self, permission: &Permission) -> bool;
}

/// Which credentials an unauthenticated request should be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// Any accepted credential.
    Any,
    /// HTTP Basic (`WWW-Authenticate: Basic`).
    Basic,
    /// A bearer token (`WWW-Authenticate: Bearer`).
    Bearer,
}

/// The verdict of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Let the request through.
    Allow,
    /// Authenticate first (HTTP 401).
    Unauthenticated(Challenge),
    /// Authenticated, but lacking a role or permission (HTTP 403); says which.
    Forbidden(String),
    /// Repeat the request on another scheme or port.
    Redirect {
        /// `http` or `https`.
        scheme: String,
        /// The port to use.
        port: u16,
    },
}

/// The result of evaluating a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The normalised path the decision applies to; forward this, not the raw path.
    pub path: String,
    /// Index of the matching rule, if any (no match means allow, as in Shiro).
    pub rule: Option<usize>,
    /// The verdict.
    pub outcome: Outcome,
    /// Whether the chain forbids creating a session.
    pub no_session_creation: bool,
    /// Whether the chain logs the subject out.
    pub logout: bool,
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: Vec<String>| items.join(",");
        match self {
            Filter::Anon => f.write_str("anon"),
            Filter::Authc => f.write_str("authc"),
            Filter::AuthcBasic => f.write_str("authcBasic"),
            Filter::AuthcBearer => f.write_str("authcBearer"),
            Filter::User => f.write_str("user"),
            Filter::Roles(r) => write!(f, "roles[{}]", list(r.clone())),
            Filter::Perms(p) => write!(
                f,
                "perms[{}]",
                list(p.iter().map(|p| format!("\"{p}\"")).collect())
            ),
            Filter::Rest(r) => write!(f, "rest[{}]", list(r.clone())),
            Filter::Port(p) => write!(f, "port[{p}]"),
            Filter::Ssl(p) => write!(f, "ssl[{p}]"),
            Filter::Logout => f.write_str("logout"),
            Filter::NoSessionCreation => f.write_str("noSessionCreation"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permission::PermissionSet;
    use proptest::prelude::*;

    struct Who {
        authenticated: bool,
        roles: Vec<&'static str>,
        perms: PermissionSet,
    }

    impl Subject for Who {
        fn authenticated(&self) -> bool {
            self.authenticated
        }
        fn has_role(&self, role: &str) -> bool {
            self.roles.contains(&role)
        }
        fn is_permitted(&self, permission: &Permission) -> bool {
            self.perms.permits(permission)
        }
    }

    fn anonymous() -> Who {
        Who {
            authenticated: false,
            roles: vec![],
            perms: PermissionSet::default(),
        }
    }

    fn user(roles: Vec<&'static str>, perms: &[&str]) -> Who {
        Who {
            authenticated: true,
            roles,
            perms: PermissionSet::new(perms.iter().map(|p| Permission::parse(p).expect("valid"))),
        }
    }

    fn get(path: &str) -> Request<'_> {
        Request {
            method: "GET",
            path,
            port: 80,
            tls: false,
        }
    }

    const RULES: &str = "
        # most specific first
        /login = anon
        /logout = logout
        /admin/** = authc, roles[admin]
        /api/users/** = authcBearer, rest[user]
        /reports/* = authc, perms[\"report:view,export\", doc:read]
        /secure/** = ssl, authc
        /internal/** = port[8081]
        /static/** = anon, noSessionCreation
        /** = authc
    ";

    fn rules() -> UrlRules {
        UrlRules::parse(RULES).expect("valid rules")
    }

    #[test]
    fn normalisation_resolves_what_servers_resolve() {
        let cases = [
            ("/", "/"),
            ("/admin/", "/admin"),
            ("//admin///users//", "/admin/users"),
            ("/a/./b/../c", "/a/c"),
            ("/xxx/..;/admin/", "/admin"),
            ("/;/app/admin", "/app/admin"),
            ("/admin;jsessionid=1/x", "/admin/x"),
            ("/admin/%20", "/admin/ "),
            ("/caf%C3%A9", "/café"),
            ("/a%2Eb/%2e%2e/c", "/c"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused_with_a_reason() {
        assert!(matches!(
            normalize("/admin/a%2Fb"),
            Err(PathError::AmbiguousEscape {
                what: "a slash",
                ..
            })
        ));
        assert!(matches!(
            normalize("/admin/%3bpage"),
            Err(PathError::AmbiguousEscape {
                what: "a semicolon",
                ..
            })
        ));
        assert!(matches!(
            normalize("/admin/a%252fb"),
            Err(PathError::AmbiguousEscape {
                what: "a percent sign",
                ..
            })
        ));
        assert!(matches!(
            normalize("/a%00b"),
            Err(PathError::AmbiguousEscape {
                what: "a control character",
                ..
            })
        ));
        assert_eq!(
            normalize("/a\\b"),
            Err(PathError::ForbiddenCharacter("/a\\b".into()))
        );
        assert_eq!(
            normalize("/a%zz"),
            Err(PathError::BadEscape("/a%zz".into()))
        );
        assert_eq!(normalize("/a%c3"), Err(PathError::NotUtf8("/a%c3".into())));
        assert_eq!(
            normalize("/../etc"),
            Err(PathError::AboveRoot("/../etc".into()))
        );
        assert_eq!(
            normalize("admin"),
            Err(PathError::NotAbsolute("admin".into()))
        );
    }

    #[test]
    fn ant_patterns_match_like_shiro() {
        assert!(ant_match("/admin/**", "/admin"));
        assert!(ant_match("/admin/**", "/admin/a/b"));
        assert!(ant_match("/admin/*", "/admin/x"));
        assert!(!ant_match("/admin/*", "/admin/x/y"));
        assert!(!ant_match("/admin/*", "/admin"));
        assert!(ant_match("/a/**/z", "/a/z"));
        assert!(ant_match("/a/**/z", "/a/b/c/z"));
        assert!(ant_match("/file?.txt", "/file1.txt"));
        assert!(!ant_match("/file?.txt", "/file10.txt"));
        assert!(ant_match("/*.js", "/app.js"));
        assert!(ant_match("/**", "/"));
    }

    #[test]
    fn the_cve_bypass_paths_hit_the_protected_rule() {
        let rules = rules();
        for raw in [
            "/xxx/..;/admin/",
            "/;/admin/users",
            "/admin;x=1/users",
            "/login/../admin",
            "/static/..;/admin",
            "//admin//",
        ] {
            let d = rules
                .evaluate(&get(raw), &anonymous())
                .expect("normalisable");
            assert!(d.path.starts_with("/admin"), "{raw} -> {}", d.path);
            assert_eq!(d.rule, Some(2), "{raw}");
            assert_eq!(d.outcome, Outcome::Unauthenticated(Challenge::Any), "{raw}");
        }
        // CVE-2020-17523: a blank segment must not vanish.
        let d = rules
            .evaluate(&get("/reports/%20"), &anonymous())
            .expect("normalisable");
        assert_eq!(d.rule, Some(4));
        // CVE-2020-13933 / -11989: encoded delimiters are refused, not guessed.
        assert!(
            rules
                .evaluate(&get("/admin/%3bpage"), &anonymous())
                .is_err()
        );
        assert!(
            rules
                .evaluate(&get("/admin/a%25%32%66b"), &anonymous())
                .is_err()
        );
    }

    #[test]
    fn chains_apply_roles_permissions_rest_and_transport_filters() {
        let rules = rules();
        let admin = user(vec!["admin"], &[]);
        let plain = user(vec![], &["user:read", "report:*", "doc:read"]);
        assert_eq!(
            rules
                .evaluate(&get("/admin/x"), &admin)
                .expect("ok")
                .outcome,
            Outcome::Allow
        );
        assert_eq!(
            rules
                .evaluate(&get("/admin/x"), &plain)
                .expect("ok")
                .outcome,
            Outcome::Forbidden("role \"admin\" is required".into())
        );
        assert_eq!(
            rules
                .evaluate(&get("/login"), &anonymous())
                .expect("ok")
                .outcome,
            Outcome::Allow
        );
        assert!(rules.evaluate(&get("/logout"), &plain).expect("ok").logout);

        let read = rules.evaluate(&get("/api/users/7"), &plain).expect("ok");
        assert_eq!(read.outcome, Outcome::Allow);
        let delete = Request {
            method: "DELETE",
            path: "/api/users/7",
            port: 80,
            tls: false,
        };
        assert_eq!(
            rules.evaluate(&delete, &plain).expect("ok").outcome,
            Outcome::Forbidden("permission \"user:delete\" is required".into())
        );
        assert_eq!(
            rules
                .evaluate(&get("/api/users/7"), &anonymous())
                .expect("ok")
                .outcome,
            Outcome::Unauthenticated(Challenge::Bearer)
        );

        assert_eq!(
            rules
                .evaluate(&get("/reports/q3"), &plain)
                .expect("ok")
                .outcome,
            Outcome::Allow
        );
        let limited = user(vec![], &["report:view"]);
        assert_eq!(
            rules
                .evaluate(&get("/reports/q3"), &limited)
                .expect("ok")
                .outcome,
            Outcome::Forbidden("permission \"report:export,view\" is required".into())
        );

        assert_eq!(
            rules
                .evaluate(&get("/secure/a"), &plain)
                .expect("ok")
                .outcome,
            Outcome::Redirect {
                scheme: "https".into(),
                port: 443
            }
        );
        let over_tls = Request {
            method: "GET",
            path: "/secure/a",
            port: 443,
            tls: true,
        };
        assert_eq!(
            rules.evaluate(&over_tls, &plain).expect("ok").outcome,
            Outcome::Allow
        );
        assert_eq!(
            rules
                .evaluate(&get("/internal/x"), &plain)
                .expect("ok")
                .outcome,
            Outcome::Redirect {
                scheme: "http".into(),
                port: 8081
            }
        );
        let static_file = rules
            .evaluate(&get("/static/app.js"), &anonymous())
            .expect("ok");
        assert_eq!(static_file.outcome, Outcome::Allow);
        assert!(static_file.no_session_creation);
        assert_eq!(
            rules
                .evaluate(&get("/anything"), &anonymous())
                .expect("ok")
                .outcome,
            Outcome::Unauthenticated(Challenge::Any)
        );
    }

    #[test]
    fn bad_rules_are_all_reported_with_their_lines() {
        let errors = UrlRules::parse("/a = authc\nnonsense\nb = anon\n/c = rolez[x]\n/d = port[http]\n/e = perms[\"a:,:b\"]\n/f = roles\n/g = anon[x]\n").expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "line 2: expected `pattern = filter, filter[config], ...`",
                "line 3: pattern \"b\" must start with '/'",
                "line 4: unknown filter \"rolez\" (known: anon, authc, authcBasic, authcBearer, user, roles, perms, rest, port, ssl, logout, noSessionCreation)",
                "line 5: filter port: \"http\" is not a port number",
                "line 6: part 2 of permission \"a:,:b\" contains only sub-part dividers (',')",
                "line 7: filter roles: needs at least one value in [...]",
                "line 8: filter anon: takes no configuration",
            ]
        );
    }

    #[test]
    fn rest_actions_follow_shiro() {
        assert_eq!(rest_action("get"), "read");
        assert_eq!(rest_action("HEAD"), "read");
        assert_eq!(rest_action("POST"), "create");
        assert_eq!(rest_action("PUT"), "update");
        assert_eq!(rest_action("DELETE"), "delete");
        assert_eq!(rest_action("PATCH"), "patch");
    }

    proptest! {
        #[test]
        fn normalisation_never_panics_and_is_idempotent(raw in "/[a-z%;./ 0-9A-F]{0,30}") {
            if let Ok(once) = normalize(&raw) {
                prop_assert_eq!(normalize(&once), Ok(once.clone()));
                prop_assert!(!once.contains("//") && !once.contains(';'));
                prop_assert!(once == "/" || !once.ends_with('/'));
            }
        }

        #[test]
        fn rule_parsing_never_panics(text in "\\PC{0,80}") {
            let _ = UrlRules::parse(&text);
        }

        #[test]
        fn a_normalised_path_under_a_protected_prefix_is_never_anonymous(tail in "[a-z.;/]{0,20}") {
            let rules = UrlRules::parse("/admin/** = authc\n/** = anon").expect("valid");
            let raw = format!("/admin/{tail}");
            if let Ok(d) = rules.evaluate(&get(&raw), &anonymous()) {
                let under_admin = d.path == "/admin" || d.path.starts_with("/admin/");
                prop_assert_eq!(under_admin, d.rule == Some(0), "{} -> {}", raw, d.path);
            }
        }
    }
}
