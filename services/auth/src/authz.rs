//! Authorization questions, shared by the REST (`/v1/authz`) and gRPC (`quartet.auth.v1.Authz`)
//! fronts: has-role and is-permitted for a batch, and `[urls]` evaluation, about the caller or,
//! for holders of `auth:subject:read`, a named user.

use std::collections::BTreeMap;

use quartet_kit::token::{Claims, require};
use quartet_kit::{ErrorKind, Problem};

use crate::permission::{Permission, PermissionSet};
use crate::service::{Auth, MAX_PERMISSION_BYTES, MAX_RULES_BYTES};
use crate::urls::{Decision, Request, Subject, UrlRules};

/// The permission that lets a caller ask about someone else.
pub const ASK_ABOUT_OTHERS: &str = "auth:subject:read";

/// Roles and permissions of whoever a question is about.
#[derive(Debug, Clone)]
pub struct Who {
    /// The user name (or `client:<id>`).
    pub name: String,
    /// Whether the subject authenticated (false for an anonymous URL check).
    pub authenticated: bool,
    /// Roles.
    pub roles: Vec<String>,
    /// Permissions.
    pub perms: PermissionSet,
}

impl Subject for Who {
    fn authenticated(&self) -> bool {
        self.authenticated
    }
    fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
    fn is_permitted(&self, permission: &Permission) -> bool {
        self.perms.permits(permission)
    }
}

/// The subject of a question: the caller, or the named user.
pub async fn subject(auth: &Auth, caller: &Claims, named: Option<&str>) -> Result<Who, Problem> {
    match named.filter(|n| !n.is_empty() && *n != caller.sub) {
        None => Ok(Who {
            name: caller.sub.clone(),
            authenticated: true,
            roles: caller.roles.clone(),
            perms: caller.permissions(),
        }),
        Some(name) => {
            require(caller, ASK_ABOUT_OTHERS)?;
            if !auth.active_user(name).await? {
                return Err(Problem::new(
                    ErrorKind::NotFound,
                    "no-such-user",
                    format!("user {name:?} does not exist"),
                ));
            }
            let (roles, perms) = auth.subject(name).await?;
            Ok(Who {
                name: name.to_owned(),
                authenticated: true,
                roles,
                perms: PermissionSet::new(perms.iter().filter_map(|p| Permission::parse(p).ok())),
            })
        }
    }
}

/// Parses a permission string from a client: at most [`MAX_PERMISSION_BYTES`] bytes, in
/// Shiro's syntax; anything else is a 400 naming the problem.
pub fn parse_permission(text: &str) -> Result<Permission, Problem> {
    if text.len() > MAX_PERMISSION_BYTES {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            "invalid-permission",
            format!(
                "a permission of {} bytes is longer than the {MAX_PERMISSION_BYTES} allowed",
                text.len()
            ),
        ));
    }
    Permission::parse(text).map_err(|e| {
        Problem::new(
            ErrorKind::InvalidArgument,
            "invalid-permission",
            e.to_string(),
        )
    })
}

/// The answers to a batch question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    /// Whom they are about.
    pub subject: String,
    /// Role → held.
    pub roles: BTreeMap<String, bool>,
    /// Permission → permitted.
    pub permissions: BTreeMap<String, bool>,
}

/// Has-role and is-permitted for every item; an invalid permission string fails the whole
/// question, naming it.
pub async fn check(
    auth: &Auth,
    caller: &Claims,
    named: Option<&str>,
    roles: &[String],
    permissions: &[String],
) -> Result<Answers, Problem> {
    let mut wanted = Vec::with_capacity(permissions.len());
    for text in permissions {
        wanted.push((text.clone(), parse_permission(text)?));
    }
    let who = subject(auth, caller, named).await?;
    Ok(Answers {
        roles: roles.iter().map(|r| (r.clone(), who.has_role(r))).collect(),
        permissions: wanted
            .into_iter()
            .map(|(text, p)| (text, who.perms.permits(&p)))
            .collect(),
        subject: who.name,
    })
}

/// Whom a URL check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSubject<'a> {
    /// The caller.
    Caller,
    /// A named user (needs `auth:subject:read`).
    Named(&'a str),
    /// An unauthenticated request.
    Anonymous,
}

/// Evaluates `request` against `rules` (or the realm's `[urls]`) for the given subject.
pub async fn check_url(
    auth: &Auth,
    caller: &Claims,
    rules: Option<&str>,
    request: &Request<'_>,
    who: UrlSubject<'_>,
) -> Result<Decision, Problem> {
    let rules = match rules.filter(|r| !r.trim().is_empty()) {
        Some(text) if text.len() > MAX_RULES_BYTES => {
            return Err(Problem::new(
                ErrorKind::InvalidArgument,
                "invalid-rules",
                format!(
                    "rules of {} bytes are longer than the {MAX_RULES_BYTES} allowed in one question",
                    text.len()
                ),
            ));
        }
        Some(text) => UrlRules::parse(text).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            Problem::new(ErrorKind::InvalidArgument, "invalid-rules", list.join("; "))
        })?,
        None => auth.realm_urls(),
    };
    let who = match who {
        UrlSubject::Anonymous => Who {
            name: String::new(),
            authenticated: false,
            roles: vec![],
            perms: PermissionSet::default(),
        },
        UrlSubject::Caller => subject(auth, caller, None).await?,
        UrlSubject::Named(name) => subject(auth, caller, Some(name)).await?,
    };
    rules
        .evaluate(request, &who)
        .map_err(|e| Problem::new(ErrorKind::InvalidArgument, "ambiguous-path", e.to_string()))
}
