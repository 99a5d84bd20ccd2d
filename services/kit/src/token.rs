//! Bearer tokens from `quartet-auth`, verified locally: no call to the auth service per
//! request, only a fetch of its JWKS document at start and when a token names a key id not
//! seen before (rate-limited, so garbage tokens cannot make a service hammer the auth service).
//!
//! A verified token's claims are kept (bounded, until it expires or the keys change), so a
//! caller making many calls with one token pays for one signature check.
//!
//! Only ES256 is accepted: the algorithm comes from this verifier, never from the token, so
//! `alg: none` and HMAC-with-the-public-key confusions are impossible. Issuer and audience are
//! checked, expiry and not-before with [`LEEWAY_SECONDS`] of clock skew.
//!
//! A service protects a REST handler by taking [`Bearer`] as an argument and calling
//! [`Bearer::require`]; a gRPC handler calls [`authenticate_grpc`] then [`require`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorKind, Problem};
use crate::permission::{Permission, PermissionSet};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
/// Least time between two JWKS fetches triggered by unknown key ids.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// The claims of a Quartet access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the auth service's public URL.
    pub iss: String,
    /// Subject: the user name, or `client:<id>` for a client acting as itself.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not before, seconds since the epoch.
    pub nbf: u64,
    /// Unique token id, for revocation and audit.
    pub jti: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// Granted OAuth scopes, space-separated.
    #[serde(default)]
    pub scope: String,
    /// The subject's roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The subject's permissions, Shiro wildcard strings.
    #[serde(default)]
    pub perms: Vec<String>,
}

impl Claims {
    /// The permissions, parsed; strings that do not parse grant nothing.
    pub fn permissions(&self) -> PermissionSet {
        PermissionSet::new(self.perms.iter().filter_map(|p| Permission::parse(p).ok()))
    }

    /// Whether the subject holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the subject's permissions imply `permission`.
    pub fn is_permitted(&self, permission: &Permission) -> bool {
        self.permissions().permits(permission)
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer` credential.
    #[error("no bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// Not a JWT, or a JWT this verifier does not accept.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed with a key the auth service does not publish.
    #[error("token signed with unknown key id {0:?}")]
    UnknownKey(String),
    /// Expired, not yet valid, wrong issuer or audience, or a bad signature.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The JWKS could not be fetched, so nothing can be verified.
    #[error("cannot fetch signing keys from {url}: {reason}")]
    KeysUnavailable {
        /// The JWKS URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// Authenticated, but lacking a permission.
    #[error("permission {0:?} is required")]
    Forbidden(String),
}

impl ApiError for TokenError {
    fn kind(&self) -> ErrorKind {
        match self {
            TokenError::KeysUnavailable { .. } => ErrorKind::Unavailable,
            TokenError::Forbidden(_) => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unauthenticated,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token-missing",
            TokenError::Forbidden(_) => "permission-denied",
            TokenError::KeysUnavailable { .. } => "keys-unavailable",
            _ => "invalid-token",
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        matches!(self, TokenError::KeysUnavailable { .. }).then_some(Duration::from_secs(5))
    }
}

/// Where the verifier's keys come from.
#[derive(Debug)]
enum KeySource {
    /// Fetched from the auth service's JWKS URL.
    Url {
        url: String,
        client: reqwest::Client,
    },
    /// Given once (the auth service verifying its own tokens; tests).
    Fixed,
}

/// Verifies access tokens against a JWKS.
#[derive(Debug)]
pub struct Verifier {
    issuer: String,
    audience: String,
    source: KeySource,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
    /// Tokens already verified, with their claims: a gateway sees the same token on call
    /// after call, and an ECDSA verification costs more than the call it guards. Bounded;
    /// emptied when the keys change; an entry is used only until its token expires.
    verified: RwLock<HashMap<String, Claims>>,
    /// Bumped whenever the key ids change; a verification that raced with a change is not
    /// kept (it may have used a key that is gone).
    generation: std::sync::atomic::AtomicU64,
}

/// Verified tokens kept before the cache is emptied.
const VERIFIED_CACHE: usize = 4096;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn keys_of(set: &JwkSet) -> HashMap<String, DecodingKey> {
    set.keys
        .iter()
        .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
        .collect()
}

impl Verifier {
    /// A verifier that fetches keys from `jwks_url` (on first use and on unknown key ids).
    pub fn from_url(jwks_url: &str, issuer: &str, audience: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client without TLS always builds");
        Self::new(
            KeySource::Url {
                url: jwks_url.to_owned(),
                client,
            },
            issuer,
            audience,
            HashMap::new(),
        )
    }

    /// A verifier with a fixed key set.
    pub fn from_jwks(set: &JwkSet, issuer: &str, audience: &str) -> Self {
        Self::new(KeySource::Fixed, issuer, audience, keys_of(set))
    }

    fn new(
        source: KeySource,
        issuer: &str,
        audience: &str,
        keys: HashMap<String, DecodingKey>,
    ) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            source,
            keys: RwLock::new(keys),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refresh: MIN_REFRESH_INTERVAL,
            verified: RwLock::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Sets the least time between two JWKS fetches ([`MIN_REFRESH_INTERVAL`] by default).
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh = interval;
        self
    }

    /// Replaces the key set (the auth service does this when it rotates).
    pub fn set_keys(&self, set: &JwkSet) {
        let keys = keys_of(set);
        let mut current = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let same_ids = current.len() == keys.len() && keys.keys().all(|k| current.contains_key(k));
        *current = keys;
        if !same_ids {
            // A key may be gone: what it signed must be checked again.
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.verified
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
            .cloned()
    }

    /// Fetches the JWKS now, unless one was fetched within [`MIN_REFRESH_INTERVAL`].
    /// Returns whether a fetch happened.
    pub async fn refresh(&self) -> Result<bool, TokenError> {
        let KeySource::Url { url, client } = &self.source else {
            return Ok(false);
        };
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        let unavailable = |reason: String| TokenError::KeysUnavailable {
            url: url.clone(),
            reason,
        };
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("HTTP {}", response.status())));
        }
        let set: JwkSet = response
            .json()
            .await
            .map_err(|e| unavailable(format!("not a JWKS document: {e}")))?;
        self.set_keys(&set);
        Ok(true)
    }

    /// Verifies `token` and returns its claims (from the cache of verified tokens while the
    /// token is unexpired and the keys unchanged).
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let cached = self
            .verified
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .filter(|c| c.exp + LEEWAY_SECONDS > unix_now())
            .cloned();
        if let Some(claims) = cached {
            return Ok(claims);
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let claims = self.verify_signature(token).await?;
        let mut verified = self.verified.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(std::sync::atomic::Ordering::Acquire) != generation {
            return Ok(claims); // the keys changed meanwhile: valid now, not kept
        }
        if verified.len() >= VERIFIED_CACHE {
            let now = unix_now();
            verified.retain(|_, c| c.exp + LEEWAY_SECONDS > now);
            if verified.len() >= VERIFIED_CACHE {
                verified.clear();
            }
        }
        verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    async fn verify_signature(&self, token: &str) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::Malformed(format!(
                "algorithm {:?} is not accepted (only ES256)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Malformed("no key id (kid) in the header".into()))?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.refresh().await?;
                self.key(&kid).ok_or(TokenError::UnknownKey(kid))?
            }
        };
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

/// The authenticator `settings` describe: a JWKS-backed [`Verifier`], or one that refuses
/// every token when no JWKS URL is configured.
pub fn authenticator(settings: &crate::settings::AuthClientSettings) -> Arc<dyn Authenticator> {
    if settings.jwks_url.is_empty() {
        Arc::new(Unconfigured)
    } else {
        Arc::new(Verifier::from_url(
            &settings.jwks_url,
            &settings.issuer,
            &settings.audience,
        ))
    }
}

/// Refuses every token: the service was started without `auth.jwks_url`.
struct Unconfigured;

impl Authenticator for Unconfigured {
    fn authenticate<'a>(
        &'a self,
        _token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Claims, TokenError>> {
        Box::pin(async {
            Err(TokenError::KeysUnavailable {
                url: String::new(),
                reason: "token verification is not configured (set auth.jwks_url)".into(),
            })
        })
    }
}

/// Authenticates a gRPC request from its `authorization` metadata (`Bearer <token>`).
pub async fn authenticate_grpc<T>(
    authenticator: &dyn Authenticator,
    request: &tonic::Request<T>,
) -> Result<Claims, tonic::Status> {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or_else(|| tonic::Status::from(Problem::from(TokenError::Missing)))?;
    authenticator
        .authenticate(token)
        .await
        .map_err(|e| tonic::Status::from(Problem::from(e)))
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// Fails with 403 / PERMISSION_DENIED unless `claims` imply `permission`.
pub fn require(claims: &Claims, permission: &str) -> Result<(), Problem> {
    let wanted = Permission::parse(permission).map_err(|e| {
        Problem::new(
            ErrorKind::Internal,
            "bad-permission",
            format!("the service asked for an invalid permission: {e}"),
        )
    })?;
    if claims.is_permitted(&wanted) {
        Ok(())
    } else {
        Err(TokenError::Forbidden(wanted.to_string()).into())
    }
}

/// Whatever turns a bearer token into claims: a [`Verifier`] in every service; the auth
/// service adds its revocation list.
pub trait Authenticator: Send + Sync + 'static {
    /// Verifies `token`.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Claims, TokenError>>;
}

impl Authenticator for Verifier {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Claims, TokenError>> {
        Box::pin(self.verify(token))
    }
}

/// The app data the [`Bearer`] extractor needs: `web::Data::from(Arc::new(verifier) as Arc<dyn Authenticator>)`.
pub fn authenticator_data(authenticator: Arc<dyn Authenticator>) -> web::Data<dyn Authenticator> {
    web::Data::from(authenticator)
}

/// An authenticated REST caller: an extractor that fails with 401 problem+json (and a
/// `WWW-Authenticate: Bearer` challenge) unless the request carries a valid token. Needs
/// [`authenticator_data`] in the app data.
#[derive(Debug, Clone)]
pub struct Bearer(pub Claims);

impl Bearer {
    /// Fails with 403 unless the caller holds `permission`.
    pub fn require(&self, permission: &str) -> Result<(), Problem> {
        require(&self.0, permission)
    }
}

/// The error of the [`Bearer`] extractor: a problem plus the challenge header.
#[derive(Debug)]
pub struct Challenge(Problem);

impl std::fmt::Display for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl actix_web::ResponseError for Challenge {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.0.status_code()
    }
    fn error_response(&self) -> actix_web::HttpResponse {
        let mut response = self.0.error_response();
        if self.0.status == 401
            && let Ok(value) = actix_web::http::header::HeaderValue::from_str(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                self.0.detail.replace('"', "'")
            ))
        {
            response
                .headers_mut()
                .insert(actix_web::http::header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl FromRequest for Bearer {
    type Error = Challenge;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let verifier = req
            .app_data::<web::Data<dyn Authenticator>>()
            .map(|d| d.clone().into_inner());
        let token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(str::to_owned);
        Box::pin(async move {
            let verifier: Arc<dyn Authenticator> = verifier.ok_or_else(|| {
                Challenge(Problem::new(
                    ErrorKind::Internal,
                    "no-verifier",
                    "the service has no token verifier configured",
                ))
            })?;
            let token = token
                .ok_or(TokenError::Missing)
                .map_err(|e| Challenge(e.into()))?;
            verifier
                .authenticate(&token)
                .await
                .map(Bearer)
                .map_err(|e| Challenge(e.into()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[tokio::test]
    async fn tokens_with_other_algorithms_or_no_key_id_are_refused_before_any_key_lookup() {
        let verifier = Verifier::from_jwks(&JwkSet { keys: vec![] }, "https://auth", "quartet");
        // {"alg":"none","typ":"JWT"} . {"sub":"x"} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.";
        assert!(matches!(
            verifier.verify(none).await,
            Err(TokenError::Malformed(_))
        ));
        // {"alg":"HS256","typ":"JWT"}
        let hs = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2ln";
        assert!(
            matches!(verifier.verify(hs).await, Err(TokenError::Malformed(m)) if m.contains("HS256"))
        );
        assert!(matches!(
            verifier.verify("not a token").await,
            Err(TokenError::Malformed(_))
        ));
        // {"alg":"ES256"} without kid
        let no_kid = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        assert_eq!(
            verifier.verify(no_kid).await,
            Err(TokenError::Malformed(
                "no key id (kid) in the header".into()
            ))
        );
    }

    #[test]
    fn permission_checks_use_wildcard_semantics() {
        let claims = Claims {
            iss: "i".into(),
            sub: "ada".into(),
            aud: "quartet".into(),
            exp: 0,
            iat: 0,
            nbf: 0,
            jti: "j".into(),
            client_id: "cli".into(),
            scope: String::new(),
            roles: vec!["ops".into()],
            perms: vec!["task:submit:*".into(), "rpc:call:reports.render".into()],
        };
        assert!(require(&claims, "task:submit:billing").is_ok());
        assert!(require(&claims, "rpc:call:reports.render").is_ok());
        let denied = require(&claims, "task:revoke:billing").expect_err("not held");
        assert_eq!(denied.status, 403);
        assert_eq!(
            denied.detail,
            "permission \"task:revoke:billing\" is required"
        );
        assert!(claims.has_role("ops") && !claims.has_role("admin"));
    }
}
