//! The REST front: the OAuth2 endpoints (RFC 6749 token, RFC 7662 introspection, RFC 7009
//! revocation, RFC 8414 metadata, the JWKS), the authorization API under `/v1/authz` and the
//! admin API under `/v1/admin`, each admin route guarded by `auth:<entity>:<action>`.
//!
//! OAuth endpoints answer in RFC 6749's error format (`{"error", "error_description"}`), as
//! OAuth client libraries expect; everything under `/v1` answers in problem+json.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use quartet_kit::token::{Authenticator, Bearer, Claims, TokenError, authenticator_data};
use quartet_kit::{ErrorKind, Problem, RestApi};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::authz;
use crate::service::{
    Auth, ClientAuth, GrantKind, Introspection, OAuthError, TokenRequest, TokenResponse,
    random_token,
};
use crate::store::{AuditEvent, ClientRecord};
use crate::urls::{Decision, Outcome, Request as UrlRequest};

/// Shared state of the REST handlers.
pub struct State {
    /// The service.
    pub auth: Arc<Auth>,
}

impl Authenticator for Auth {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Claims, TokenError>> {
        Box::pin(self.verify_access(token))
    }
}

/// An OAuth error (RFC 6749 §5.2), the body of the OAuth endpoints' 400 and 401 answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OAuthErrorBody {
    /// The RFC 6749 code: `invalid_request`, `invalid_client`, `invalid_grant`, `unauthorized_client`, `unsupported_grant_type`, `invalid_scope` or `temporarily_unavailable`.
    pub error: String,
    /// What went wrong, for a person.
    pub error_description: String,
}

/// An OAuth error as an HTTP response.
fn oauth_error(error: &OAuthError) -> HttpResponse {
    let mut response = HttpResponse::build(
        StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST),
    );
    response
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"));
    if let OAuthError::InvalidClient { basic: true } = error {
        response.insert_header(("WWW-Authenticate", "Basic realm=\"quartet\""));
    }
    response.json(OAuthErrorBody {
        error: error.code().to_owned(),
        error_description: error.to_string(),
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The client id and secret of an HTTP Basic credential (what follows `Basic `): base64 of
/// `id:secret`, each form-encoded (RFC 6749 §2.3.1). Anything else is `invalid_client`.
/// Public as the entry point of fuzz targets: it reads untrusted bytes before anything else.
pub fn parse_basic_credentials(encoded: &str) -> Result<(String, String), OAuthError> {
    let invalid = || OAuthError::InvalidClient { basic: true };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(invalid)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(invalid)?;
    Ok((
        percent_decode(id).ok_or_else(invalid)?,
        percent_decode(secret).ok_or_else(invalid)?,
    ))
}

/// Client authentication from HTTP Basic (RFC 6749 §2.3.1: form-encoded id and secret) or
/// from the body; both at once is an error.
fn client_auth(
    req: &HttpRequest,
    body_id: Option<&str>,
    body_secret: Option<&str>,
) -> Result<ClientAuth, OAuthError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match header.and_then(|h| {
        h.strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
    }) {
        Some(encoded) => {
            if body_secret.is_some() {
                return Err(OAuthError::InvalidRequest(
                    "client credentials sent both in the Authorization header and in the body"
                        .into(),
                ));
            }
            let (id, secret) = parse_basic_credentials(encoded)?;
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id in the body differs from the Authorization header".into(),
                ));
            }
            Ok(ClientAuth {
                client_id: id,
                secret: Some(secret),
                basic: true,
            })
        }
        None => {
            let id = body_id
                .filter(|s| !s.is_empty())
                .ok_or(OAuthError::InvalidClient { basic: false })?;
            Ok(ClientAuth {
                client_id: id.to_owned(),
                secret: body_secret.map(str::to_owned),
                basic: false,
            })
        }
    }
}

fn source(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

/// The token endpoint's form (RFC 6749 §4.3.2, §4.4.2, §6).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenForm {
    /// `password`, `client_credentials` or `refresh_token`.
    grant_type: Option<String>,
    /// For `password`.
    username: Option<String>,
    /// For `password`.
    password: Option<String>,
    /// For `refresh_token`.
    refresh_token: Option<String>,
    /// Requested scope, space-separated.
    scope: Option<String>,
    /// Client id, when not in an HTTP Basic header.
    client_id: Option<String>,
    /// Client secret, when not in an HTTP Basic header.
    client_secret: Option<String>,
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, OAuthError> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter {name:?}")))
}

/// Issues tokens (RFC 6749 §3.2).
#[utoipa::path(post, path = "/oauth2/token", tag = "oauth2",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Tokens", body = TokenResponse),
              (status = 400, description = "RFC 6749 error (invalid_request, invalid_grant, unauthorized_client, unsupported_grant_type, invalid_scope)", body = OAuthErrorBody),
              (status = 401, description = "invalid_client", body = OAuthErrorBody),
              (status = 503, description = "temporarily_unavailable: the store is down or password checks are saturated; retry", body = OAuthErrorBody)))]
async fn token(
    req: HttpRequest,
    state: web::Data<State>,
    form: web::Form<TokenForm>,
) -> HttpResponse {
    let result = async {
        let client = client_auth(
            &req,
            form.client_id.as_deref(),
            form.client_secret.as_deref(),
        )?;
        let grant = match required(&form.grant_type, "grant_type")? {
            "password" => GrantKind::Password {
                username: required(&form.username, "username")?.to_owned(),
                password: required(&form.password, "password")?.to_owned(),
            },
            "client_credentials" => GrantKind::ClientCredentials,
            "refresh_token" => GrantKind::RefreshToken {
                token: required(&form.refresh_token, "refresh_token")?.to_owned(),
            },
            other => return Err(OAuthError::UnsupportedGrantType(other.to_owned())),
        };
        state
            .auth
            .token(TokenRequest {
                grant,
                client,
                scope: form.scope.clone(),
                source: source(&req),
            })
            .await
    }
    .await;
    match result {
        Ok(tokens) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("Pragma", "no-cache"))
            .json(tokens),
        Err(e) => oauth_error(&e),
    }
}

/// The introspection and revocation form.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenOnlyForm {
    /// The token.
    token: Option<String>,
    /// `access_token` or `refresh_token`; a hint only.
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    /// Client id, when not in an HTTP Basic header.
    client_id: Option<String>,
    /// Client secret, when not in an HTTP Basic header.
    client_secret: Option<String>,
}

/// Token introspection (RFC 7662).
#[utoipa::path(post, path = "/oauth2/introspect", tag = "oauth2",
    request_body(content = TokenOnlyForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Introspection", body = Introspection),
              (status = 400, description = "invalid_request", body = OAuthErrorBody),
              (status = 401, description = "invalid_client", body = OAuthErrorBody),
              (status = 503, description = "temporarily_unavailable: the answer could not be known; retry", body = OAuthErrorBody)))]
async fn introspect(
    req: HttpRequest,
    state: web::Data<State>,
    form: web::Form<TokenOnlyForm>,
) -> HttpResponse {
    let result = async {
        let client = client_auth(
            &req,
            form.client_id.as_deref(),
            form.client_secret.as_deref(),
        )?;
        state
            .auth
            .introspect(&client, required(&form.token, "token")?)
            .await
    }
    .await;
    match result {
        Ok(answer) => HttpResponse::Ok().json(answer),
        Err(e) => oauth_error(&e),
    }
}

/// Token revocation (RFC 7009); unknown tokens are not an error.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "oauth2",
    request_body(content = TokenOnlyForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Revoked (or unknown)"),
              (status = 400, description = "invalid_request, unauthorized_client (the token is another client's)", body = OAuthErrorBody),
              (status = 401, description = "invalid_client", body = OAuthErrorBody),
              (status = 503, description = "temporarily_unavailable", body = OAuthErrorBody)))]
async fn revoke(
    req: HttpRequest,
    state: web::Data<State>,
    form: web::Form<TokenOnlyForm>,
) -> HttpResponse {
    let result = async {
        let client = client_auth(
            &req,
            form.client_id.as_deref(),
            form.client_secret.as_deref(),
        )?;
        state
            .auth
            .revoke(&client, required(&form.token, "token")?, &source(&req))
            .await
    }
    .await;
    match result {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => oauth_error(&e),
    }
}

/// A JWK set (RFC 7517 §5), as published.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JwkSetDoc {
    /// The public keys (EC P-256, `use` sig, `alg` ES256), each with its `kid`.
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<serde_json::Value>,
}

/// Authorization server metadata (RFC 8414 §2), the fields this server sets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    /// The issuer, `tokens.issuer`.
    pub issuer: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The JWKS.
    pub jwks_uri: String,
    /// The introspection endpoint.
    pub introspection_endpoint: String,
    /// The revocation endpoint.
    pub revocation_endpoint: String,
    /// `password`, `client_credentials`, `refresh_token`.
    pub grant_types_supported: Vec<String>,
    /// `client_secret_basic`, `client_secret_post`, `none`.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// Empty: no authorization endpoint.
    pub response_types_supported: Vec<String>,
}

/// The public signing keys (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oauth2", responses((status = 200, description = "JWK set", body = JwkSetDoc)))]
async fn jwks(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "max-age=60"))
        .json(state.auth.jwks())
}

/// Authorization server metadata (RFC 8414).
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "oauth2", responses((status = 200, description = "Metadata", body = ServerMetadata)))]
async fn metadata(state: web::Data<State>) -> HttpResponse {
    let issuer = state
        .auth
        .token_settings()
        .issuer
        .trim_end_matches('/')
        .to_owned();
    let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect();
    HttpResponse::Ok().json(ServerMetadata {
        token_endpoint: format!("{issuer}/oauth2/token"),
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        introspection_endpoint: format!("{issuer}/oauth2/introspect"),
        revocation_endpoint: format!("{issuer}/oauth2/revoke"),
        grant_types_supported: words(&["password", "client_credentials", "refresh_token"]),
        token_endpoint_auth_methods_supported: words(&[
            "client_secret_basic",
            "client_secret_post",
            "none",
        ]),
        response_types_supported: Vec::new(),
        issuer,
    })
}

/// An authorization question.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CheckRequest {
    /// Ask about this user instead of the caller (needs `auth:subject:read`).
    #[serde(default)]
    subject: Option<String>,
    /// Roles to test.
    #[serde(default)]
    roles: Vec<String>,
    /// Permissions to test (Shiro wildcard strings).
    #[serde(default)]
    permissions: Vec<String>,
}

/// The answers, one per role and per permission asked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckResponse {
    /// Whom the answers are about.
    subject: String,
    /// Role → held.
    roles: BTreeMap<String, bool>,
    /// Permission → permitted.
    permissions: BTreeMap<String, bool>,
}

/// Has-role and is-permitted, for one or a batch.
#[utoipa::path(post, path = "/v1/authz/check", tag = "authz", request_body = CheckRequest,
    responses((status = 200, description = "Answers", body = CheckResponse), (status = 400, description = "An invalid permission string", body = Problem),
              (status = 401, description = "No valid token", body = Problem), (status = 403, description = "Asking about another user without auth:subject:read", body = Problem),
              (status = 404, description = "The named subject is no active user", body = Problem)),
    security(("bearer" = [])))]
async fn check(
    state: web::Data<State>,
    caller: Bearer,
    body: web::Json<CheckRequest>,
) -> Result<HttpResponse, Problem> {
    let answers = authz::check(
        &state.auth,
        &caller.0,
        body.subject.as_deref(),
        &body.roles,
        &body.permissions,
    )
    .await?;
    Ok(HttpResponse::Ok().json(CheckResponse {
        subject: answers.subject,
        roles: answers.roles,
        permissions: answers.permissions,
    }))
}

/// A request to evaluate against `[urls]` rules.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UrlCheckRequest {
    /// HTTP method.
    method: String,
    /// The raw request path (no query string).
    path: String,
    /// The port the request arrived on.
    #[serde(default = "default_port")]
    port: u16,
    /// Whether it arrived over TLS.
    #[serde(default)]
    tls: bool,
    /// `[urls]` lines to use instead of the configured realm's.
    #[serde(default)]
    rules: Option<String>,
    /// Evaluate for this user instead of the caller (needs `auth:subject:read`); `""` evaluates
    /// for an anonymous request.
    #[serde(default)]
    subject: Option<String>,
}

fn default_port() -> u16 {
    80
}

/// The verdict for a request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UrlCheckResponse {
    /// The normalised path the verdict applies to; route on this one.
    path: String,
    /// Index of the matching rule, if any.
    rule: Option<usize>,
    /// `allow`, `unauthenticated`, `forbidden` or `redirect`.
    outcome: String,
    /// Why, for `forbidden`; the challenge for `unauthenticated`; the target for `redirect`.
    detail: String,
    /// The chain asks not to create a session.
    no_session_creation: bool,
    /// The chain logs the subject out.
    logout: bool,
}

impl From<Decision> for UrlCheckResponse {
    fn from(d: Decision) -> Self {
        let (outcome, detail) = match d.outcome {
            Outcome::Allow => ("allow", String::new()),
            Outcome::Unauthenticated(challenge) => {
                ("unauthenticated", format!("{challenge:?}").to_lowercase())
            }
            Outcome::Forbidden(why) => ("forbidden", why),
            Outcome::Redirect { scheme, port } => ("redirect", format!("{scheme}:{port}")),
        };
        Self {
            path: d.path,
            rule: d.rule,
            outcome: outcome.into(),
            detail,
            no_session_creation: d.no_session_creation,
            logout: d.logout,
        }
    }
}

/// Evaluates a method and path against `[urls]` filter chains, first match wins.
#[utoipa::path(post, path = "/v1/authz/urls", tag = "authz", request_body = UrlCheckRequest,
    responses((status = 200, description = "Verdict", body = UrlCheckResponse), (status = 400, description = "Invalid rules or an ambiguous path", body = Problem),
              (status = 404, description = "The named subject is no active user", body = Problem)),
    security(("bearer" = [])))]
async fn check_url(
    state: web::Data<State>,
    caller: Bearer,
    body: web::Json<UrlCheckRequest>,
) -> Result<HttpResponse, Problem> {
    let who = match body.subject.as_deref() {
        Some("") => authz::UrlSubject::Anonymous,
        Some(name) => authz::UrlSubject::Named(name),
        None => authz::UrlSubject::Caller,
    };
    let request = UrlRequest {
        method: &body.method,
        path: &body.path,
        port: body.port,
        tls: body.tls,
    };
    let decision =
        authz::check_url(&state.auth, &caller.0, body.rules.as_deref(), &request, who).await?;
    Ok(HttpResponse::Ok().json(UrlCheckResponse::from(decision)))
}

fn validate_permissions(perms: &[String]) -> Result<(), Problem> {
    for p in perms {
        crate::authz::parse_permission(p)?;
    }
    Ok(())
}

fn validate_words(kind: &str, words: &[String]) -> Result<(), Problem> {
    for word in words {
        if word.is_empty()
            || word.len() > 128
            || word.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Problem::new(
                ErrorKind::InvalidArgument,
                "invalid-name",
                format!(
                    "{kind} {word:?} must be 1-128 characters without spaces or control characters"
                ),
            ));
        }
    }
    Ok(())
}

fn validate_name(kind: &str, name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            ErrorKind::InvalidArgument,
            "invalid-name",
            format!(
                "{kind} name {name:?} must be 1-128 characters of letters, digits and . _ @ - :"
            ),
        ))
    }
}

/// A user to create.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewUser {
    /// Login name.
    name: String,
    /// Initial password (stored as argon2id).
    password: String,
    /// Roles to assign; each must exist.
    #[serde(default)]
    roles: Vec<String>,
    /// Permissions granted directly.
    #[serde(default)]
    permissions: Vec<String>,
}

/// A user as the admin API shows it (never the hash).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// Login name.
    name: String,
    /// Whether logins are refused.
    disabled: bool,
    /// Assigned roles.
    roles: Vec<String>,
    /// Effective permissions (roles and direct).
    permissions: Vec<String>,
}

async fn user_view(state: &State, name: &str) -> Result<UserView, Problem> {
    let user = state.auth.store().user(name).await?.ok_or_else(|| {
        Problem::new(
            ErrorKind::NotFound,
            "no-such-user",
            format!("user {name:?} does not exist"),
        )
    })?;
    let (roles, permissions) = state.auth.subject(name).await?;
    Ok(UserView {
        name: user.name,
        disabled: user.disabled,
        roles,
        permissions,
    })
}

/// Lists users (`auth:user:read`).
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", responses((status = 200, description = "User names", body = Vec<String>)), security(("bearer" = [])))]
async fn list_users(state: web::Data<State>, caller: Bearer) -> Result<HttpResponse, Problem> {
    caller.require("auth:user:read")?;
    Ok(HttpResponse::Ok().json(state.auth.store().user_names().await?))
}

/// Shows one user (`auth:user:read`).
#[utoipa::path(get, path = "/v1/admin/users/{name}", tag = "admin",
    params(("name" = String, Path, description = "The user's login name")), responses((status = 200, description = "The user", body = UserView), (status = 404, description = "No such user", body = Problem)), security(("bearer" = [])))]
async fn get_user(
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:user:read")?;
    Ok(HttpResponse::Ok().json(user_view(&state, &name).await?))
}

/// Creates a user with roles and permissions, all or nothing (`auth:user:create`).
#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", request_body = NewUser,
    responses((status = 201, description = "Created", body = UserView), (status = 400, description = "Invalid input", body = Problem), (status = 409, description = "Exists", body = Problem)),
    security(("bearer" = [])))]
async fn create_user(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:user:create")?;
    validate_name("user", &body.name)?;
    if body.name.starts_with("client:") {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            "invalid-name",
            format!(
                "user name {:?} must not start with \"client:\": tokens of clients acting as themselves have such subjects",
                body.name
            ),
        ));
    }
    validate_permissions(&body.permissions)?;
    let store = state.auth.store();
    let known_roles = store.role_names().await?;
    if let Some(missing) = body.roles.iter().find(|r| !known_roles.contains(r)) {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            "no-such-role",
            format!("role {missing:?} does not exist"),
        ));
    }
    let hash = state.auth.hash_new_password(&body.password).await?;
    store
        .create_user_with(&body.name, &hash, now(), &body.roles, &body.permissions)
        .await?;
    state
        .auth
        .audit(
            "admin.user.create",
            "success",
            &body.name,
            "",
            &source(&req),
            &format!("by {}", caller.0.sub),
        )
        .await;
    Ok(HttpResponse::Created().json(user_view(&state, &body.name).await?))
}

/// Deletes a user (`auth:user:delete`).
#[utoipa::path(delete, path = "/v1/admin/users/{name}", tag = "admin",
    params(("name" = String, Path, description = "The user's login name")), responses((status = 204, description = "Deleted"), (status = 404, description = "No such user", body = Problem)), security(("bearer" = [])))]
async fn delete_user(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:user:delete")?;
    state.auth.store().delete_user(&name, now()).await?;
    state.auth.revoke_sessions(&name, None).await?;
    state
        .auth
        .audit(
            "admin.user.delete",
            "success",
            &name,
            "",
            &source(&req),
            &format!("by {}", caller.0.sub),
        )
        .await;
    Ok(HttpResponse::NoContent().finish())
}

/// A role to create.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewRole {
    /// Role name.
    name: String,
    /// What the role is for.
    #[serde(default)]
    description: String,
    /// Its permissions (Shiro wildcard strings).
    #[serde(default)]
    permissions: Vec<String>,
}

/// A role and its permissions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoleView {
    /// Role name.
    name: String,
    /// Its permissions (Shiro wildcard strings), sorted.
    permissions: Vec<String>,
}

/// Lists roles (`auth:role:read`).
#[utoipa::path(get, path = "/v1/admin/roles", tag = "admin", responses((status = 200, description = "Role names", body = Vec<String>)), security(("bearer" = [])))]
async fn list_roles(state: web::Data<State>, caller: Bearer) -> Result<HttpResponse, Problem> {
    caller.require("auth:role:read")?;
    Ok(HttpResponse::Ok().json(state.auth.store().role_names().await?))
}

/// Creates a role with its permissions (`auth:role:create`).
#[utoipa::path(post, path = "/v1/admin/roles", tag = "admin", request_body = NewRole,
    responses((status = 201, description = "Created", body = RoleView), (status = 400, description = "Invalid input", body = Problem), (status = 409, description = "Exists", body = Problem)),
    security(("bearer" = [])))]
async fn create_role(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    body: web::Json<NewRole>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:role:create")?;
    validate_name("role", &body.name)?;
    validate_permissions(&body.permissions)?;
    state
        .auth
        .store()
        .create_role(&body.name, &body.description, &body.permissions)
        .await?;
    state
        .auth
        .audit(
            "admin.role.create",
            "success",
            &body.name,
            "",
            &source(&req),
            &format!("by {}", caller.0.sub),
        )
        .await;
    let mut permissions = body.permissions.clone();
    permissions.sort();
    permissions.dedup();
    Ok(HttpResponse::Created().json(RoleView {
        name: body.name.clone(),
        permissions,
    }))
}

/// Deletes a role (`auth:role:delete`).
#[utoipa::path(delete, path = "/v1/admin/roles/{name}", tag = "admin",
    params(("name" = String, Path, description = "The role's name")), responses((status = 204, description = "Deleted"), (status = 404, description = "No such role", body = Problem)), security(("bearer" = [])))]
async fn delete_role(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:role:delete")?;
    state.auth.store().delete_role(&name).await?;
    state
        .auth
        .audit(
            "admin.role.delete",
            "success",
            &name,
            "",
            &source(&req),
            &format!("by {}", caller.0.sub),
        )
        .await;
    Ok(HttpResponse::NoContent().finish())
}

/// An OAuth client to register.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewClient {
    /// Client id.
    client_id: String,
    /// `true` for a public client (no secret); otherwise a secret is generated and returned once.
    #[serde(default)]
    public: bool,
    /// Grant types: `password`, `client_credentials`, `refresh_token`.
    grant_types: Vec<String>,
    /// Scopes the client may request.
    #[serde(default)]
    scopes: Vec<String>,
    /// Permissions of its client_credentials tokens.
    #[serde(default)]
    permissions: Vec<String>,
}

/// A registered client.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientCreated {
    /// Client id.
    client_id: String,
    /// The secret of a confidential client, shown only in this answer; `null` for a public client.
    client_secret: Option<String>,
}

/// Registers an OAuth client (`auth:client:create`); the response holds the secret, once.
#[utoipa::path(post, path = "/v1/admin/clients", tag = "admin", request_body = NewClient,
    responses((status = 201, description = "Created; `client_secret` is shown only now", body = ClientCreated), (status = 400, description = "Invalid input", body = Problem), (status = 409, description = "Exists", body = Problem)),
    security(("bearer" = [])))]
async fn create_client(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    body: web::Json<NewClient>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:client:create")?;
    validate_name("client", &body.client_id)?;
    validate_permissions(&body.permissions)?;
    validate_words("scope", &body.scopes)?;
    if let Some(bad) = body
        .grant_types
        .iter()
        .find(|g| !["password", "client_credentials", "refresh_token"].contains(&g.as_str()))
    {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            "invalid-grant-type",
            format!("grant type {bad:?} is not supported"),
        ));
    }
    if body.public && body.grant_types.iter().any(|g| g == "client_credentials") {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            "public-client-credentials",
            "a public client cannot use client_credentials",
        ));
    }
    let secret = (!body.public).then(|| random_token(32));
    let secret_hash = match secret.clone() {
        Some(secret) => Some(
            state
                .auth
                .with_hasher(move |h| h.hash(&secret))
                .await
                .map_err(|e| Problem::new(ErrorKind::Unavailable, "saturated", e.to_string()))?,
        ),
        None => None,
    };
    let record = ClientRecord {
        client_id: body.client_id.clone(),
        secret_hash,
        grant_types: body.grant_types.clone(),
        scopes: body.scopes.clone(),
        permissions: body.permissions.clone(),
    };
    state.auth.store().create_client(&record, now()).await?;
    state
        .auth
        .audit(
            "admin.client.create",
            "success",
            &body.client_id,
            &body.client_id,
            &source(&req),
            &format!("by {}", caller.0.sub),
        )
        .await;
    Ok(HttpResponse::Created().json(ClientCreated {
        client_id: body.client_id.clone(),
        client_secret: secret,
    }))
}

/// A role or a permission to grant.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Grant {
    /// The role name (for `/roles`) or the permission string (for `/permissions`).
    name: String,
}

/// Changes to a user, a role or a grant, all checked and audited in one place.
enum Change<'a> {
    AssignRole { user: &'a str, role: &'a str },
    UnassignRole { user: &'a str, role: &'a str },
    GrantUser { user: &'a str, permission: &'a str },
    RevokeUser { user: &'a str, permission: &'a str },
    GrantRole { role: &'a str, permission: &'a str },
    RevokeRole { role: &'a str, permission: &'a str },
    Disable { user: &'a str, disabled: bool },
}

async fn apply(
    req: &HttpRequest,
    state: &State,
    caller: &Bearer,
    change: Change<'_>,
) -> Result<HttpResponse, Problem> {
    let store = state.auth.store();
    let (permission, subject, kind, detail) = match &change {
        Change::AssignRole { user, role } => (
            "auth:user:update",
            *user,
            "admin.user.role.assign",
            format!("role {role}"),
        ),
        Change::UnassignRole { user, role } => (
            "auth:user:update",
            *user,
            "admin.user.role.unassign",
            format!("role {role}"),
        ),
        Change::GrantUser { user, permission } => (
            "auth:user:update",
            *user,
            "admin.user.permission.grant",
            format!("permission {permission}"),
        ),
        Change::RevokeUser { user, permission } => (
            "auth:user:update",
            *user,
            "admin.user.permission.revoke",
            format!("permission {permission}"),
        ),
        Change::GrantRole { role, permission } => (
            "auth:role:update",
            *role,
            "admin.role.permission.grant",
            format!("permission {permission}"),
        ),
        Change::RevokeRole { role, permission } => (
            "auth:role:update",
            *role,
            "admin.role.permission.revoke",
            format!("permission {permission}"),
        ),
        Change::Disable { user, disabled } => (
            "auth:user:update",
            *user,
            "admin.user.disable",
            format!("disabled={disabled}"),
        ),
    };
    caller.require(permission)?;
    match change {
        Change::AssignRole { user, role } => store.assign_role(user, role).await?,
        Change::UnassignRole { user, role } => store.unassign_role(user, role).await?,
        Change::GrantUser { user, permission } => {
            validate_permissions(&[permission.to_owned()])?;
            store.grant_user_permission(user, permission).await?
        }
        Change::RevokeUser { user, permission } => {
            store.revoke_user_permission(user, permission).await?
        }
        Change::GrantRole { role, permission } => {
            validate_permissions(&[permission.to_owned()])?;
            store.grant_role_permission(role, permission).await?
        }
        Change::RevokeRole { role, permission } => {
            store.revoke_role_permission(role, permission).await?
        }
        Change::Disable { user, disabled } => {
            store.set_disabled(user, disabled).await?;
            if disabled {
                state.auth.revoke_sessions(user, None).await?;
            }
        }
    }
    state
        .auth
        .audit(
            kind,
            "success",
            subject,
            "",
            &source(req),
            &format!("{detail} by {}", caller.0.sub),
        )
        .await;
    Ok(HttpResponse::NoContent().finish())
}

/// Gives a user a role (`auth:user:update`).
#[utoipa::path(post, path = "/v1/admin/users/{name}/roles", tag = "admin",
    params(("name" = String, Path, description = "The user's login name")), request_body = Grant,
    responses((status = 204, description = "Assigned"), (status = 404, description = "No such user or role", body = Problem), (status = 409, description = "Already assigned", body = Problem)), security(("bearer" = [])))]
async fn assign_role(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
    body: web::Json<Grant>,
) -> Result<HttpResponse, Problem> {
    apply(
        &req,
        &state,
        &caller,
        Change::AssignRole {
            user: &name,
            role: &body.name,
        },
    )
    .await
}

/// Takes a role from a user (`auth:user:update`).
#[utoipa::path(delete, path = "/v1/admin/users/{name}/roles/{role}", tag = "admin",
    params(("name" = String, Path, description = "The user's login name"), ("role" = String, Path, description = "The role to take away")),
    responses((status = 204, description = "Unassigned"), (status = 404, description = "Not assigned", body = Problem)), security(("bearer" = [])))]
async fn unassign_role(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (user, role) = path.into_inner();
    apply(
        &req,
        &state,
        &caller,
        Change::UnassignRole {
            user: &user,
            role: &role,
        },
    )
    .await
}

/// Grants a user a permission directly (`auth:user:update`).
#[utoipa::path(post, path = "/v1/admin/users/{name}/permissions", tag = "admin",
    params(("name" = String, Path, description = "The user's login name")), request_body = Grant,
    responses((status = 204, description = "Granted"), (status = 400, description = "Invalid permission", body = Problem), (status = 404, description = "No such user", body = Problem), (status = 409, description = "Already granted", body = Problem)), security(("bearer" = [])))]
async fn grant_user_permission(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
    body: web::Json<Grant>,
) -> Result<HttpResponse, Problem> {
    apply(
        &req,
        &state,
        &caller,
        Change::GrantUser {
            user: &name,
            permission: &body.name,
        },
    )
    .await
}

/// Takes a directly granted permission from a user (`auth:user:update`).
#[utoipa::path(delete, path = "/v1/admin/users/{name}/permissions/{permission}", tag = "admin",
    params(("name" = String, Path, description = "The user's login name"), ("permission" = String, Path, description = "The permission string, exactly as granted")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "Not granted", body = Problem)), security(("bearer" = [])))]
async fn revoke_user_permission(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (user, permission) = path.into_inner();
    apply(
        &req,
        &state,
        &caller,
        Change::RevokeUser {
            user: &user,
            permission: &permission,
        },
    )
    .await
}

/// Adds a permission to a role (`auth:role:update`).
#[utoipa::path(post, path = "/v1/admin/roles/{name}/permissions", tag = "admin",
    params(("name" = String, Path, description = "The role's name")), request_body = Grant,
    responses((status = 204, description = "Granted"), (status = 400, description = "Invalid permission", body = Problem), (status = 404, description = "No such role", body = Problem), (status = 409, description = "Already granted", body = Problem)), security(("bearer" = [])))]
async fn grant_role_permission(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
    body: web::Json<Grant>,
) -> Result<HttpResponse, Problem> {
    apply(
        &req,
        &state,
        &caller,
        Change::GrantRole {
            role: &name,
            permission: &body.name,
        },
    )
    .await
}

/// Takes a permission from a role (`auth:role:update`).
#[utoipa::path(delete, path = "/v1/admin/roles/{name}/permissions/{permission}", tag = "admin",
    params(("name" = String, Path, description = "The role's name"), ("permission" = String, Path, description = "The permission string, exactly as granted")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "Not granted", body = Problem)), security(("bearer" = [])))]
async fn revoke_role_permission(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (role, permission) = path.into_inner();
    apply(
        &req,
        &state,
        &caller,
        Change::RevokeRole {
            role: &role,
            permission: &permission,
        },
    )
    .await
}

/// Shows a role's permissions (`auth:role:read`).
#[utoipa::path(get, path = "/v1/admin/roles/{name}", tag = "admin",
    params(("name" = String, Path, description = "The role's name")),
    responses((status = 200, description = "The role and its permissions", body = RoleView), (status = 404, description = "No such role", body = Problem)), security(("bearer" = [])))]
async fn get_role(
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:role:read")?;
    let permissions = state
        .auth
        .store()
        .role_permissions(&name)
        .await?
        .ok_or_else(|| {
            Problem::new(
                ErrorKind::NotFound,
                "no-such-role",
                format!("role {:?} does not exist", name.as_str()),
            )
        })?;
    Ok(HttpResponse::Ok().json(RoleView {
        name: name.into_inner(),
        permissions,
    }))
}

/// Whether a user may log in.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Disabled {
    /// `true` refuses the user's logins and ends their sessions.
    disabled: bool,
}

/// Disables or enables a user (`auth:user:update`); disabling ends their sessions.
#[utoipa::path(put, path = "/v1/admin/users/{name}/disabled", tag = "admin",
    params(("name" = String, Path, description = "The user's login name")), request_body = Disabled,
    responses((status = 204, description = "Changed"), (status = 404, description = "No such user", body = Problem)), security(("bearer" = [])))]
async fn set_disabled(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
    body: web::Json<Disabled>,
) -> Result<HttpResponse, Problem> {
    apply(
        &req,
        &state,
        &caller,
        Change::Disable {
            user: &name,
            disabled: body.disabled,
        },
    )
    .await
}

/// The cookie that carries a session id.
pub const SESSION_COOKIE: &str = "quartet_session";
/// The header that carries a session id, for clients without cookies.
pub const SESSION_HEADER: &str = "x-quartet-session";

/// A login that opens a session.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SessionLogin {
    /// User name.
    username: String,
    /// Password.
    password: String,
}

/// A new session; `session` is its id, shown only here.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenedSession {
    /// The session id: send it back as the `quartet_session` cookie or the `X-Quartet-Session` header.
    session: String,
    /// Names the session in lists and revocations.
    handle: String,
    /// When it ends however much it is used.
    expires_at: i64,
    /// Seconds of disuse after which it ends.
    idle_seconds: i64,
}

/// The current session and its subject.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CurrentSession {
    /// Whose it is.
    user: String,
    /// Its handle.
    handle: String,
    /// When it was created.
    created_at: i64,
    /// When it ends however much it is used.
    expires_at: i64,
    /// The user's roles now.
    roles: Vec<String>,
    /// The user's permissions now.
    permissions: Vec<String>,
}

fn session_id(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()))
        .filter(|id| !id.is_empty())
}

fn no_session() -> Problem {
    Problem::new(
        ErrorKind::Unauthenticated,
        "no-session",
        "no live session: log in with POST /v1/sessions",
    )
}

fn session_cookie(value: &str, secure: bool, max_age: i64) -> actix_web::cookie::Cookie<'static> {
    actix_web::cookie::Cookie::build(SESSION_COOKIE, value.to_owned())
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(actix_web::cookie::SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age))
        .finish()
}

/// Logs in and opens a server-side session (idle and absolute timeouts apply).
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = SessionLogin,
    responses((status = 201, description = "Opened; also set as the quartet_session cookie", body = OpenedSession),
              (status = 401, description = "Invalid username or password", body = Problem)))]
async fn open_session(
    req: HttpRequest,
    state: web::Data<State>,
    body: web::Json<SessionLogin>,
) -> Result<HttpResponse, Problem> {
    let (id, info) = state
        .auth
        .open_session(&body.username, &body.password, &source(&req))
        .await
        .map_err(|e| match e {
            OAuthError::InvalidGrant(why) => {
                Problem::new(ErrorKind::Unauthenticated, "invalid-login", why)
            }
            other => Problem::new(ErrorKind::Unavailable, other.code(), other.to_string()),
        })?;
    let settings = state.auth.session_settings();
    let cookie = session_cookie(
        &id,
        settings.cookie_secure,
        info.expires_at - info.created_at,
    );
    Ok(HttpResponse::Created().cookie(cookie).json(OpenedSession {
        session: id,
        handle: info.handle,
        expires_at: info.expires_at,
        idle_seconds: info.idle_seconds,
    }))
}

/// The caller's session (touching it) with the user's current roles and permissions.
#[utoipa::path(get, path = "/v1/sessions/current", tag = "sessions",
    responses((status = 200, description = "The session", body = CurrentSession), (status = 401, description = "No live session", body = Problem)))]
async fn current_session(
    req: HttpRequest,
    state: web::Data<State>,
) -> Result<HttpResponse, Problem> {
    let id = session_id(&req).ok_or_else(no_session)?;
    let info = state.auth.session(&id).await?.ok_or_else(no_session)?;
    let (roles, permissions) = state.auth.subject(&info.user).await?;
    Ok(HttpResponse::Ok().json(CurrentSession {
        user: info.user,
        handle: info.handle,
        created_at: info.created_at,
        expires_at: info.expires_at,
        roles,
        permissions,
    }))
}

/// Logs out: ends the caller's session and clears its cookie.
#[utoipa::path(delete, path = "/v1/sessions/current", tag = "sessions",
    responses((status = 204, description = "Ended"), (status = 401, description = "No live session", body = Problem)))]
async fn close_session(req: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, Problem> {
    let id = session_id(&req).ok_or_else(no_session)?;
    if !state.auth.close_session(&id, &source(&req)).await? {
        return Err(no_session());
    }
    let mut gone = session_cookie("", state.auth.session_settings().cookie_secure, 0);
    gone.make_removal();
    Ok(HttpResponse::NoContent().cookie(gone).finish())
}

/// A user's live sessions (`auth:session:read`).
#[utoipa::path(get, path = "/v1/admin/users/{name}/sessions", tag = "admin",
    params(("name" = String, Path, description = "The user's login name")),
    responses((status = 200, description = "Sessions, oldest first", body = Vec<crate::sessions::SessionInfo>)), security(("bearer" = [])))]
async fn list_sessions(
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:session:read")?;
    Ok(HttpResponse::Ok().json(state.auth.user_sessions(&name).await?))
}

/// How many sessions were ended.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ended {
    /// The count.
    ended: usize,
}

/// Ends all of a user's sessions (`auth:session:delete`).
#[utoipa::path(delete, path = "/v1/admin/users/{name}/sessions", tag = "admin",
    params(("name" = String, Path, description = "The user's login name")),
    responses((status = 200, description = "How many ended", body = Ended)), security(("bearer" = [])))]
async fn revoke_sessions(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:session:delete")?;
    let ended = state.auth.revoke_sessions(&name, None).await?;
    state
        .auth
        .audit(
            "admin.session.delete",
            "success",
            &name,
            "",
            &source(&req),
            &format!("{ended} ended by {}", caller.0.sub),
        )
        .await;
    Ok(HttpResponse::Ok().json(Ended { ended }))
}

/// Ends one of a user's sessions by handle (`auth:session:delete`).
#[utoipa::path(delete, path = "/v1/admin/users/{name}/sessions/{handle}", tag = "admin",
    params(("name" = String, Path, description = "The user's login name"), ("handle" = String, Path, description = "The session's handle, from the list of its sessions")),
    responses((status = 200, description = "Ended", body = Ended), (status = 404, description = "No such live session", body = Problem)), security(("bearer" = [])))]
async fn revoke_session(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:session:delete")?;
    let (name, handle) = path.into_inner();
    if state.auth.revoke_sessions(&name, Some(&handle)).await? == 0 {
        return Err(Problem::new(
            ErrorKind::NotFound,
            "no-such-session",
            format!("user {name:?} has no live session {handle:?}"),
        ));
    }
    state
        .auth
        .audit(
            "admin.session.delete",
            "success",
            &name,
            "",
            &source(&req),
            &format!("handle {handle} by {}", caller.0.sub),
        )
        .await;
    Ok(HttpResponse::Ok().json(Ended { ended: 1 }))
}

/// Bytes for the cipher service, base64 (standard alphabet).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CipherInput {
    /// The plaintext (encrypt), ciphertext (decrypt, rewrap) or data (sign, verify); plaintext and data in base64.
    input: String,
    /// Associated data bound to the ciphertext, base64; decrypt and rewrap need the same bytes.
    #[serde(default)]
    aad: String,
    /// For verify: the signature.
    #[serde(default)]
    signature: String,
}

/// The cipher service's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CipherOutput {
    /// The ciphertext (encrypt, rewrap), plaintext in base64 (decrypt) or signature (sign); empty for verify.
    output: String,
    /// For verify: whether the signature is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    valid: Option<bool>,
}

fn base64_field(name: &str, text: &str) -> Result<Vec<u8>, Problem> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| {
            Problem::new(
                ErrorKind::InvalidArgument,
                "bad-base64",
                format!("{name} is not base64: {e}"),
            )
        })
}

/// Encrypts, decrypts, re-wraps, signs or verifies (`auth:cipher:<operation>`).
#[utoipa::path(post, path = "/v1/cipher/{operation}", tag = "cipher", request_body = CipherInput,
    params(("operation" = String, Path, description = "encrypt, decrypt, rewrap, sign or verify")),
    responses((status = 200, description = "Result", body = CipherOutput), (status = 400, description = "Malformed or tampered input", body = Problem),
              (status = 404, description = "Unknown operation", body = Problem), (status = 503, description = "Cipher service not configured", body = Problem)),
    security(("bearer" = [])))]
async fn cipher(
    state: web::Data<State>,
    caller: Bearer,
    operation: web::Path<String>,
    body: web::Json<CipherInput>,
) -> Result<HttpResponse, Problem> {
    let op = operation.as_str();
    if !["encrypt", "decrypt", "rewrap", "sign", "verify"].contains(&op) {
        return Err(Problem::new(
            ErrorKind::NotFound,
            "no-such-operation",
            format!("cipher operation {op:?} does not exist"),
        ));
    }
    caller.require(&format!("auth:cipher:{op}"))?;
    let aad = base64_field("aad", &body.aad)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (output, valid) = match op {
        "encrypt" => {
            let plain = base64_field("input", &body.input)?;
            (
                state.auth.with_cipher(|c| c.encrypt(&plain, &aad)).await?,
                None,
            )
        }
        "decrypt" => (
            b64.encode(
                state
                    .auth
                    .with_cipher(|c| c.decrypt(&body.input, &aad))
                    .await?,
            ),
            None,
        ),
        "rewrap" => (
            state
                .auth
                .with_cipher(|c| c.rewrap(&body.input, &aad))
                .await?,
            None,
        ),
        "sign" => {
            let data = base64_field("input", &body.input)?;
            (state.auth.with_cipher(|c| c.sign(&data)).await?, None)
        }
        _ => {
            let data = base64_field("input", &body.input)?;
            (
                String::new(),
                Some(
                    state
                        .auth
                        .with_cipher(|c| c.verify(&data, &body.signature))
                        .await?,
                ),
            )
        }
    };
    Ok(HttpResponse::Ok().json(CipherOutput { output, valid }))
}

/// The data key version now current.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Rotated {
    /// The version.
    version: u32,
}

/// Adds a cipher data key that becomes current (`auth:cipher:rotate`); older keys keep decrypting.
#[utoipa::path(post, path = "/v1/admin/cipher/rotate", tag = "admin", responses((status = 200, description = "The new current version", body = Rotated), (status = 503, description = "Cipher service not configured", body = Problem)), security(("bearer" = [])))]
async fn rotate_cipher(
    req: HttpRequest,
    state: web::Data<State>,
    caller: Bearer,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:cipher:rotate")?;
    let version = state.auth.rotate_cipher().await.map_err(|e| match e {
        crate::service::OpenError::Store(e) => Problem::from(e),
        other => Problem::new(
            ErrorKind::Unavailable,
            "cipher-not-configured",
            other.to_string(),
        ),
    })?;
    state
        .auth
        .audit(
            "admin.cipher.rotate",
            "success",
            "",
            "",
            &source(&req),
            &format!("version {version} by {}", caller.0.sub),
        )
        .await;
    Ok(HttpResponse::Ok().json(Rotated { version }))
}

/// Audit query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only events about this user or client.
    subject: Option<String>,
    /// Only events of this kind, e.g. `login`.
    kind: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<i64>,
}

/// Security events, newest first (`auth:audit:read`).
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", params(AuditQuery), responses((status = 200, description = "Events", body = Vec<AuditEvent>)), security(("bearer" = [])))]
async fn audit(
    state: web::Data<State>,
    caller: Bearer,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, Problem> {
    caller.require("auth:audit:read")?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(HttpResponse::Ok().json(
        state
            .auth
            .store()
            .audit(query.subject.as_deref(), query.kind.as_deref(), limit)
            .await?,
    ))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[derive(OpenApi)]
#[openapi(
    paths(token, introspect, revoke, jwks, metadata, check, check_url, list_users, get_user, create_user, delete_user, list_roles, create_role, delete_role, create_client, audit, cipher, rotate_cipher, open_session, current_session, close_session, list_sessions, revoke_sessions, revoke_session, assign_role, unassign_role, grant_user_permission, revoke_user_permission, set_disabled, get_role, grant_role_permission, revoke_role_permission),
    components(schemas(TokenResponse, Introspection, OAuthErrorBody, JwkSetDoc, ServerMetadata, CheckRequest, CheckResponse, UrlCheckRequest, UrlCheckResponse, NewUser, UserView, NewRole, RoleView, NewClient, ClientCreated, Ended, Rotated, AuditEvent, CipherInput, CipherOutput, SessionLogin, OpenedSession, CurrentSession, crate::sessions::SessionInfo, Grant, Disabled)),
    tags((name = "oauth2", description = "OAuth 2.0 token, introspection and revocation endpoints"),
         (name = "authz", description = "Authorization questions"),
         (name = "admin", description = "Users, roles and clients; guarded by auth:<entity>:<action>"),
         (name = "cipher", description = "Encryption and signatures under versioned keys"),
         (name = "sessions", description = "Server-side sessions with idle and absolute timeouts")))]
struct AuthDoc;

/// The REST API's OpenAPI document, as `/openapi.json` serves it (with the kit's routes).
pub fn api_doc() -> utoipa::openapi::OpenApi {
    crate::openapi::complete(AuthDoc::openapi())
}

/// The REST API of the auth service.
pub fn api(state: State) -> RestApi {
    let authenticator = authenticator_data(state.auth.clone() as Arc<dyn Authenticator>);
    let state = web::Data::new(state);
    RestApi::new(
        move |cfg| {
            cfg.app_data(state.clone())
                .app_data(authenticator.clone())
                .app_data(web::QueryConfig::default().error_handler(|err, _req| {
                    Problem::new(
                        ErrorKind::InvalidArgument,
                        "bad-query",
                        format!("query string: {err}"),
                    )
                    .into()
                }))
                .app_data(web::FormConfig::default().error_handler(|err, _req| {
                    let response = oauth_error(&OAuthError::InvalidRequest(format!(
                        "malformed form: {err}"
                    )));
                    actix_web::error::InternalError::from_response(err.to_string(), response).into()
                }))
                .route("/oauth2/token", web::post().to(token))
                .route("/oauth2/introspect", web::post().to(introspect))
                .route("/oauth2/revoke", web::post().to(revoke))
                .route("/.well-known/jwks.json", web::get().to(jwks))
                .route(
                    "/.well-known/oauth-authorization-server",
                    web::get().to(metadata),
                )
                .route("/v1/authz/check", web::post().to(check))
                .route("/v1/authz/urls", web::post().to(check_url))
                .route("/v1/admin/users", web::get().to(list_users))
                .route("/v1/admin/users", web::post().to(create_user))
                .route("/v1/admin/users/{name}", web::get().to(get_user))
                .route("/v1/admin/users/{name}", web::delete().to(delete_user))
                .route("/v1/admin/roles", web::get().to(list_roles))
                .route("/v1/admin/roles", web::post().to(create_role))
                .route("/v1/admin/roles/{name}", web::delete().to(delete_role))
                .route("/v1/admin/clients", web::post().to(create_client))
                .route("/v1/admin/audit", web::get().to(audit))
                .route("/v1/admin/cipher/rotate", web::post().to(rotate_cipher))
                .route("/v1/cipher/{operation}", web::post().to(cipher))
                .route("/v1/admin/users/{name}/roles", web::post().to(assign_role))
                .route(
                    "/v1/admin/users/{name}/roles/{role}",
                    web::delete().to(unassign_role),
                )
                .route(
                    "/v1/admin/users/{name}/permissions",
                    web::post().to(grant_user_permission),
                )
                .route(
                    "/v1/admin/users/{name}/permissions/{permission}",
                    web::delete().to(revoke_user_permission),
                )
                .route(
                    "/v1/admin/users/{name}/disabled",
                    web::put().to(set_disabled),
                )
                .route("/v1/admin/roles/{name}", web::get().to(get_role))
                .route(
                    "/v1/admin/roles/{name}/permissions",
                    web::post().to(grant_role_permission),
                )
                .route(
                    "/v1/admin/roles/{name}/permissions/{permission}",
                    web::delete().to(revoke_role_permission),
                )
                .route("/v1/sessions", web::post().to(open_session))
                .route("/v1/sessions/current", web::get().to(current_session))
                .route("/v1/sessions/current", web::delete().to(close_session))
                .route(
                    "/v1/admin/users/{name}/sessions",
                    web::get().to(list_sessions),
                )
                .route(
                    "/v1/admin/users/{name}/sessions",
                    web::delete().to(revoke_sessions),
                )
                .route(
                    "/v1/admin/users/{name}/sessions/{handle}",
                    web::delete().to(revoke_session),
                );
        },
        api_doc(),
    )
}
