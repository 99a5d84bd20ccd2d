//! Shiro's INI realm file: `[users]`, `[roles]` and `[urls]`.
//!
//! ```ini
//! [users]
//! # name = password, role, role...   (password in clear or in a supported hash format)
//! ada = $argon2id$v=19$m=19456,t=2,p=1$..., admin
//! [roles]
//! # role = permission, permission...  (quote a permission that holds commas)
//! admin = *
//! reader = "doc:read,list", report:view
//! [urls]
//! /admin/** = authc, roles[admin]
//! ```
//!
//! Shiro's `[main]` section builds a Java object graph; it has no meaning here, so it is
//! rejected with a message rather than silently ignored. Every problem in the file is reported
//! with its line, not only the first.

use std::collections::BTreeMap;

use crate::permission::{Permission, PermissionError};
use crate::urls::{RuleError, UrlRules};

/// A user of the INI realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniUser {
    /// The stored credential: a clear password or a hash string.
    pub credential: String,
    /// Role names, in file order.
    pub roles: Vec<String>,
}

/// A parsed INI realm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IniRealm {
    /// Users by name.
    pub users: BTreeMap<String, IniUser>,
    /// Permissions by role name.
    pub roles: BTreeMap<String, Vec<Permission>>,
    /// The `[urls]` rules, in file order.
    pub urls: UrlRules,
}

/// One problem in an INI file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IniError {
    /// A line outside any section, or an unknown section.
    #[error("line {line}: {message}")]
    Structure {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A `[roles]` permission is invalid.
    #[error("line {line}: role {role:?}: {source}")]
    Permission {
        /// 1-based line.
        line: usize,
        /// The role being defined.
        role: String,
        /// Why the permission is invalid.
        source: PermissionError,
    },
    /// A `[urls]` rule is invalid.
    #[error("{0}")]
    Url(RuleError),
}

/// Splits on commas outside double quotes, trimming each item and dropping the quotes.
fn split_quoted(text: &str) -> Vec<String> {
    let (mut out, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl IniRealm {
    /// Parses an INI realm, reporting every problem with its line number.
    pub fn parse(text: &str) -> Result<Self, Vec<IniError>> {
        let mut realm = IniRealm::default();
        let mut errors = Vec::new();
        let mut section: Option<String> = None;
        let mut url_lines: Vec<(usize, &str)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                let name = name.trim();
                match name {
                    "users" | "roles" | "urls" => section = Some(name.to_owned()),
                    "main" => {
                        errors.push(IniError::Structure {
                            line,
                            message: "[main] configures Shiro's Java objects and has no meaning here; set the auth service's options in its configuration instead".into(),
                        });
                        section = Some("main".into());
                    }
                    other => {
                        errors.push(IniError::Structure {
                            line,
                            message: format!(
                                "unknown section [{other}] (expected [users], [roles] or [urls])"
                            ),
                        });
                        section = Some("ignored".into());
                    }
                }
                continue;
            }
            let Some(current) = section.as_deref() else {
                errors.push(IniError::Structure {
                    line,
                    message: "a setting before any [section]".into(),
                });
                continue;
            };
            if current == "urls" {
                url_lines.push((line, trimmed));
                continue;
            }
            if current != "users" && current != "roles" {
                continue;
            }
            let Some((key, value)) = trimmed.split_once('=') else {
                errors.push(IniError::Structure {
                    line,
                    message: format!("expected `name = value` in [{current}]"),
                });
                continue;
            };
            let key = key.trim().to_owned();
            if key.is_empty() {
                errors.push(IniError::Structure {
                    line,
                    message: format!("empty name in [{current}]"),
                });
                continue;
            }
            let items = split_quoted(value);
            if current == "users" {
                let mut items = items.into_iter();
                let Some(credential) = items.next() else {
                    errors.push(IniError::Structure {
                        line,
                        message: format!("user {key:?} has no password"),
                    });
                    continue;
                };
                if realm
                    .users
                    .insert(
                        key.clone(),
                        IniUser {
                            credential,
                            roles: items.collect(),
                        },
                    )
                    .is_some()
                {
                    errors.push(IniError::Structure {
                        line,
                        message: format!("user {key:?} is defined twice"),
                    });
                }
            } else {
                let mut permissions = Vec::new();
                for item in items {
                    match Permission::parse(&item) {
                        Ok(p) => permissions.push(p),
                        Err(source) => errors.push(IniError::Permission {
                            line,
                            role: key.clone(),
                            source,
                        }),
                    }
                }
                if realm.roles.insert(key.clone(), permissions).is_some() {
                    errors.push(IniError::Structure {
                        line,
                        message: format!("role {key:?} is defined twice"),
                    });
                }
            }
        }
        match UrlRules::parse_lines(&url_lines) {
            Ok(urls) => realm.urls = urls,
            Err(url_errors) => errors.extend(url_errors.into_iter().map(IniError::Url)),
        }
        if errors.is_empty() {
            Ok(realm)
        } else {
            Err(errors)
        }
    }

    /// The permissions a user holds through their roles. Roles the file does not define grant
    /// nothing, as in Shiro.
    pub fn permissions_of(&self, user: &str) -> Vec<Permission> {
        self.users
            .get(user)
            .map(|u| {
                u.roles
                    .iter()
                    .filter_map(|r| self.roles.get(r))
                    .flatten()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permission::PermissionSet;
    use proptest::prelude::*;

    const SAMPLE: &str = r#"
# a small realm
[users]
ada = secret, admin, reader
bob = $shiro1$SHA-256$1$c2FsdA==$aGFzaA==, reader

[roles]
admin = *
reader = "doc:read,list", report:view

[urls]
/admin/** = authc, roles[admin]
/** = anon
"#;

    #[test]
    fn a_realm_file_yields_users_roles_and_rules() {
        let realm = IniRealm::parse(SAMPLE).expect("valid");
        assert_eq!(
            realm.users["ada"],
            IniUser {
                credential: "secret".into(),
                roles: vec!["admin".into(), "reader".into()]
            }
        );
        assert!(realm.users["bob"].credential.starts_with("$shiro1$"));
        let bob = PermissionSet::new(realm.permissions_of("bob"));
        assert_eq!(bob.permits_str("doc:list:42"), Ok(true));
        assert_eq!(bob.permits_str("doc:write"), Ok(false));
        assert_eq!(
            PermissionSet::new(realm.permissions_of("ada")).permits_str("anything"),
            Ok(true)
        );
        assert_eq!(realm.urls.rules().len(), 2);
        assert!(realm.permissions_of("nobody").is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "stray = 1\n[main]\nsecurityManager.realms = $x\n[users]\nada =\nada = pw\nada = pw2\n[roles]\nr = \"a:,:b\", ok\n[nope]\nx = y\n[urls]\n/a = teleport\n";
        let errors: Vec<String> = IniRealm::parse(text)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "line 1: a setting before any [section]",
                "line 2: [main] configures Shiro's Java objects and has no meaning here; set the auth service's options in its configuration instead",
                "line 5: user \"ada\" has no password",
                "line 7: user \"ada\" is defined twice",
                "line 9: role \"r\": part 2 of permission \"a:,:b\" contains only sub-part dividers (',')",
                "line 10: unknown section [nope] (expected [users], [roles] or [urls])",
                "line 13: unknown filter \"teleport\" (known: anon, authc, authcBasic, authcBearer, user, roles, perms, rest, port, ssl, logout, noSessionCreation)",
            ]
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "(\\[?[a-z]{0,6}\\]?[ =,\"a-z:*/\\[\\]]{0,20}\n){0,8}") {
            let _ = IniRealm::parse(&text);
        }
    }
}
