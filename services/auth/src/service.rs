//! The auth service's operations, apart from any transport: OAuth2 grants (RFC 6749),
//! introspection (RFC 7662), revocation (RFC 7009), the JWKS, subjects for authorization
//! checks, the audit trail and lockout.
//!
//! Rules kept here, whatever the front:
//! - an unknown user, a wrong password, a disabled user and a locked-out user get the same
//!   answer (`invalid_grant`, "invalid username or password"), and an unknown user costs the
//!   same password-hash time as a known one;
//! - after `lockout.threshold` failures for a user name or a source address, further attempts
//!   are refused for a delay that doubles with each failure up to `lockout.max_delay`;
//! - a refresh token is spent on use and replaced by one of the same family; presenting a spent
//!   one revokes the family (reuse detection);
//! - every grant, failure, revocation and reuse is an audit event.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::JwkSet;
use quartet_kit::token::{Claims, TokenError, Verifier};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::ToSchema;

use crate::cipher::{Cipher, CipherError, MasterKey};
use crate::credentials::{CredentialError, PasswordHasher};
use crate::ini::IniRealm;
use crate::keys::{KeyRing, SigningKey};
use crate::sessions::{SessionInfo, SessionStore, id_hash};
use crate::store::{AuditEvent, ClientRecord, RefreshRecord, RefreshUse, Store, StoreError};
use crate::urls::UrlRules;

/// Token lifetimes, identity and key rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenSettings {
    /// The `iss` of every token: this service's public base URL, as other services reach it.
    pub issuer: String,
    /// The `aud` of every access token; verifiers expect the same value.
    pub audience: String,
    /// Lifetime of an access token, e.g. `15m`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub access_ttl: Duration,
    /// Lifetime of a refresh token, e.g. `30d`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub refresh_ttl: Duration,
    /// Age at which the signing key is replaced, e.g. `24h`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub key_rotation: Duration,
    /// How long a replaced key stays published; at least `access_ttl`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub key_overlap: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:7111".into(),
            audience: "quartet".into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            key_rotation: Duration::from_secs(24 * 3600),
            key_overlap: Duration::from_secs(3600),
        }
    }
}

/// Server-side sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionSettings {
    /// Redis URL for sessions shared by every replica, e.g. `redis://redis:6379`; empty keeps them in the SQL store.
    pub redis_url: String,
    /// Disuse after which a session ends, e.g. `30m` (Shiro's default).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Age at which a session ends however much it is used, e.g. `12h`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub absolute_timeout: Duration,
    /// Whether the session cookie is marked `Secure` (sent over HTTPS only); turn off only for local HTTP.
    pub cookie_secure: bool,
    /// Most live sessions one user may have; opening one more ends the oldest.
    pub max_per_user: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
            cookie_secure: true,
            max_per_user: 100,
        }
    }
}

/// Bounds on what one request can make the service spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LimitSettings {
    /// Longest password or client secret accepted, in bytes; a longer one is refused before any hashing.
    pub max_password_bytes: usize,
    /// Password hashes computed at once, each holding `passwords.memory_kib` of memory; further logins wait their turn.
    pub concurrent_hashes: usize,
    /// How long a login waits for its turn before it is answered 503 (retry), e.g. `10s`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub hash_queue_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_password_bytes: 1024,
            concurrent_hashes: 4,
            hash_queue_timeout: Duration::from_secs(10),
        }
    }
}

/// Longest permission string accepted in a grant, a role or a question, in bytes: every one a
/// user holds travels in each of their tokens.
pub const MAX_PERMISSION_BYTES: usize = 512;

/// Largest `[urls]` rules text accepted in one `/v1/authz/urls` question, in bytes: it is
/// parsed and evaluated for that one answer.
pub const MAX_RULES_BYTES: usize = 64 * 1024;

/// Largest INI realm file read, in bytes.
pub const MAX_REALM_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Lockout after repeated login failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockoutSettings {
    /// Failures (per user name, and per source address) before attempts are refused.
    pub threshold: u32,
    /// The first refusal period; each further failure doubles it, e.g. `1s`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub base_delay: Duration,
    /// The longest refusal period, e.g. `15m`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_delay: Duration,
}

impl Default for LockoutSettings {
    fn default() -> Self {
        Self {
            threshold: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
        }
    }
}

/// An OAuth2 error response (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// A parameter is missing, repeated or malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// Client authentication failed. `basic` says whether the client tried HTTP Basic, which
    /// earns a `WWW-Authenticate` challenge.
    #[error("client authentication failed")]
    InvalidClient {
        /// Whether the client used HTTP Basic.
        basic: bool,
    },
    /// The grant (credentials, refresh token) is invalid, expired or revoked.
    #[error("{0}")]
    InvalidGrant(String),
    /// The client may not use this grant type.
    #[error("{0}")]
    UnauthorizedClient(String),
    /// The grant type is not one this server knows.
    #[error(
        "grant type {0:?} is not supported (use password, client_credentials or refresh_token)"
    )]
    UnsupportedGrantType(String),
    /// A requested scope is not allowed for the client.
    #[error("{0}")]
    InvalidScope(String),
    /// The store failed; retry later.
    #[error("{0}")]
    TemporarilyUnavailable(String),
}

impl OAuthError {
    /// The RFC 6749 `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient { .. } => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::TemporarilyUnavailable(_) => "temporarily_unavailable",
        }
    }

    /// The HTTP status: 401 for `invalid_client`, 503 for an unavailable store, else 400.
    pub fn status(&self) -> u16 {
        match self {
            OAuthError::InvalidClient { .. } => 401,
            OAuthError::TemporarilyUnavailable(_) => 503,
            _ => 400,
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure during an OAuth request");
        OAuthError::TemporarilyUnavailable(
            "the credential store is unavailable; retry shortly".into(),
        )
    }
}

/// How the client identified itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The client id.
    pub client_id: String,
    /// The secret, for a confidential client.
    pub secret: Option<String>,
    /// Whether it came in an HTTP Basic header.
    pub basic: bool,
}

/// What is being granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantKind {
    /// Resource owner password credentials.
    Password {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// The client acting as itself.
    ClientCredentials,
    /// A refresh token.
    RefreshToken {
        /// The token.
        token: String,
    },
}

/// A token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The grant.
    pub grant: GrantKind,
    /// The client.
    pub client: ClientAuth,
    /// The requested scope, space-separated.
    pub scope: Option<String>,
    /// The caller's address, for lockout and audit.
    pub source: String,
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT access token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// A refresh token, when the client may use the refresh grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The granted scope.
    pub scope: String,
}

/// An introspection response (RFC 7662 §2.2); only `active` when inactive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct Introspection {
    /// Whether the token is currently valid.
    pub active: bool,
    /// Granted scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The client it was issued to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The user it was issued for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `access_token` or `refresh_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Issue time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// Failure counts per user name and per source address: in this process, or in Redis so that
/// every replica counts the same failures.
struct Lockout {
    settings: LockoutSettings,
    entries: Mutex<HashMap<String, (u32, i64)>>,
    redis: Option<redis::aio::ConnectionManager>,
}

impl std::fmt::Debug for Lockout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lockout")
            .field("shared", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

/// Entries kept before the oldest are forgotten, so a flood of names cannot exhaust memory.
const LOCKOUT_CAPACITY: usize = 100_000;

fn lockout_key(key: &str) -> String {
    format!("quartet:auth:lockout:{key}")
}

impl Lockout {
    /// The refusal period after `failures` failures, if any.
    fn delay(&self, failures: u32) -> Option<Duration> {
        (failures >= self.settings.threshold).then(|| {
            let doublings = (failures - self.settings.threshold).min(30);
            self.settings
                .base_delay
                .saturating_mul(1u32 << doublings)
                .min(self.settings.max_delay)
        })
    }

    async fn locked(&self, keys: &[String], now_ms: i64) -> Result<bool, StoreError> {
        let Some(conn) = &self.redis else {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            return Ok(keys
                .iter()
                .any(|k| entries.get(k).is_some_and(|(_, until)| *until > now_ms)));
        };
        let mut conn = conn.clone();
        for key in keys {
            let until: Option<i64> = redis::cmd("HGET")
                .arg(lockout_key(key))
                .arg("until")
                .query_async(&mut conn)
                .await
                .map_err(lockout_error)?;
            if until.is_some_and(|u| u > now_ms) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn failed(&self, keys: &[String], now_ms: i64) -> Result<(), StoreError> {
        let Some(conn) = &self.redis else {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if entries.len() >= LOCKOUT_CAPACITY {
                entries.retain(|_, (_, until)| *until > now_ms);
            }
            for key in keys {
                let entry = entries.entry(key.clone()).or_insert((0, 0));
                entry.0 += 1;
                if let Some(delay) = self.delay(entry.0) {
                    entry.1 = now_ms + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                }
            }
            return Ok(());
        };
        let mut conn = conn.clone();
        // Counts live twice the longest delay past the last failure, then Redis forgets them.
        let keep = i64::try_from(self.settings.max_delay.as_secs())
            .unwrap_or(i64::MAX / 4)
            .saturating_mul(2)
            .max(60);
        for key in keys {
            let (failures,): (u32,) = redis::pipe()
                .atomic()
                .hincr(lockout_key(key), "failures", 1)
                .expire(lockout_key(key), keep)
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(lockout_error)?;
            if let Some(delay) = self.delay(failures) {
                let until = now_ms + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                redis::cmd("HSET")
                    .arg(lockout_key(key))
                    .arg("until")
                    .arg(until)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(lockout_error)?;
            }
        }
        Ok(())
    }

    async fn succeeded(&self, user_key: &str) -> Result<(), StoreError> {
        match &self.redis {
            None => {
                self.entries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(user_key);
                Ok(())
            }
            Some(conn) => {
                let mut conn = conn.clone();
                redis::cmd("DEL")
                    .arg(lockout_key(user_key))
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(lockout_error)
            }
        }
    }
}

fn lockout_error(e: redis::RedisError) -> StoreError {
    StoreError::Database(format!("redis (lockout): {e}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn now_s() -> i64 {
    now_ms() / 1000
}

/// `n` random bytes, base64url without padding.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const BAD_LOGIN: &str = "invalid username or password";

/// The auth service's state.
pub struct Auth {
    store: Store,
    hasher: PasswordHasher,
    keys: RwLock<KeyRing>,
    verifier: Verifier,
    tokens: TokenSettings,
    lockout: Lockout,
    dummy_hash: String,
    realm: RwLock<IniRealm>,
    master: std::sync::OnceLock<MasterKey>,
    cipher: RwLock<Cipher>,
    sessions: SessionStore,
    session_settings: SessionSettings,
    limits: LimitSettings,
    /// Turns to compute a password hash: at most `limits.concurrent_hashes` at once.
    hashing: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("issuer", &self.tokens.issuer)
            .finish_non_exhaustive()
    }
}

/// Every turn to compute a password hash was taken for `limits.hash_queue_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password checks are saturated; retry shortly")]
pub struct Saturated;

impl From<Saturated> for OAuthError {
    fn from(e: Saturated) -> Self {
        OAuthError::TemporarilyUnavailable(e.to_string())
    }
}

/// Why a new password was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRefused {
    /// Fewer than 8 characters.
    #[error("password must have at least 8 characters")]
    TooShort,
    /// Longer than `limits.max_password_bytes`.
    #[error("password must have at most {0} bytes (limits.max_password_bytes)")]
    TooLong(usize),
    /// No turn to hash it.
    #[error("password checks are saturated; retry shortly")]
    Saturated,
}

impl quartet_kit::ApiError for PasswordRefused {
    fn kind(&self) -> quartet_kit::ErrorKind {
        match self {
            PasswordRefused::Saturated => quartet_kit::ErrorKind::Unavailable,
            _ => quartet_kit::ErrorKind::InvalidArgument,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            PasswordRefused::TooShort => "weak-password",
            PasswordRefused::TooLong(_) => "password-too-long",
            PasswordRefused::Saturated => "saturated",
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        matches!(self, PasswordRefused::Saturated).then_some(Duration::from_secs(1))
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored signing key is unusable.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// Settings that contradict each other.
    #[error("{0}")]
    Settings(String),
}

impl Auth {
    /// Opens the service on `store`: loads (or creates and stores) the signing keys.
    pub async fn open(
        store: Store,
        hasher: PasswordHasher,
        tokens: TokenSettings,
        lockout: LockoutSettings,
    ) -> Result<Self, OpenError> {
        if tokens.key_overlap < tokens.access_ttl {
            return Err(OpenError::Settings(format!(
                "tokens.key_overlap ({:?}) must be at least tokens.access_ttl ({:?}), or tokens outlive their key",
                tokens.key_overlap, tokens.access_ttl
            )));
        }
        if lockout.threshold == 0 {
            return Err(OpenError::Settings(
                "lockout.threshold must be at least 1".into(),
            ));
        }
        let mut stored = Vec::new();
        for (kid, pkcs8, created) in store.signing_keys().await? {
            let der = STANDARD
                .decode(&pkcs8)
                .map_err(|e| crate::keys::KeyError::BadKey {
                    kid: kid.clone(),
                    reason: e.to_string(),
                })?;
            stored.push(SigningKey::from_pkcs8(
                &der,
                u64::try_from(created).unwrap_or_default(),
            )?);
        }
        let had_keys = !stored.is_empty();
        let ring = KeyRing::new(
            stored,
            tokens.key_rotation.as_secs(),
            tokens.key_overlap.as_secs(),
            u64::try_from(now_s()).unwrap_or_default(),
        );
        let verifier = Verifier::from_jwks(&ring.jwks(), &tokens.issuer, &tokens.audience);
        let dummy_hash = hasher.hash(&random_token(16));
        let store_for_sessions = store.clone();
        let auth = Self {
            store,
            hasher,
            keys: RwLock::new(ring),
            verifier,
            tokens,
            lockout: Lockout {
                settings: lockout,
                entries: Mutex::new(HashMap::new()),
                redis: None,
            },
            dummy_hash,
            realm: RwLock::new(IniRealm::default()),
            master: std::sync::OnceLock::new(),
            cipher: RwLock::new(Cipher::default()),
            sessions: SessionStore::Sql(store_for_sessions),
            session_settings: SessionSettings::default(),
            limits: LimitSettings::default(),
            hashing: std::sync::Arc::new(tokio::sync::Semaphore::new(
                LimitSettings::default().concurrent_hashes,
            )),
        };
        if !had_keys {
            auth.persist_keys().await?;
        }
        auth.maintain_keys().await?;
        Ok(auth)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The password hasher.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// The token settings.
    pub fn token_settings(&self) -> &TokenSettings {
        &self.tokens
    }

    /// Turns the cipher service on with `master`: loads the stored data keys, creating the
    /// first one if there is none.
    pub async fn enable_cipher(&self, master: MasterKey) -> Result<(), OpenError> {
        if self.master.set(master).is_err() {
            return Err(OpenError::Settings(
                "the cipher service is already enabled".into(),
            ));
        }
        self.reload_cipher().await?;
        if self
            .cipher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current_version()
            .is_none()
        {
            self.rotate_cipher().await?;
        }
        Ok(())
    }

    /// Re-reads the data keys (another replica may have rotated).
    pub async fn reload_cipher(&self) -> Result<(), OpenError> {
        let Some(master) = self.master.get() else {
            return Ok(());
        };
        let stored = self.store.cipher_keys().await?;
        let loaded =
            Cipher::load(master, &stored).map_err(|e| OpenError::Settings(e.to_string()))?;
        *self.cipher.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    /// Adds a data key version that becomes current; returns it.
    pub async fn rotate_cipher(&self) -> Result<u32, OpenError> {
        let master = self
            .master
            .get()
            .ok_or_else(|| OpenError::Settings(CipherError::NotConfigured.to_string()))?;
        let mut next = self
            .cipher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (version, wrapped) = next.rotate(master);
        self.store
            .add_cipher_key(version, &wrapped, now_s())
            .await?;
        *self.cipher.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(version)
    }

    /// Runs `op` on the data keys; a ciphertext naming a version not held triggers one reload,
    /// for keys another replica added.
    pub async fn with_cipher<T>(
        &self,
        op: impl Fn(&Cipher) -> Result<T, CipherError>,
    ) -> Result<T, CipherError> {
        if self.master.get().is_none() {
            return Err(CipherError::NotConfigured);
        }
        let first = op(&self.cipher.read().unwrap_or_else(|p| p.into_inner()));
        if let Err(CipherError::UnknownVersion(_)) = first
            && self.reload_cipher().await.is_ok()
        {
            return op(&self.cipher.read().unwrap_or_else(|p| p.into_inner()));
        }
        first
    }

    /// Keeps sessions in `sessions` with `settings` instead of the SQL store's defaults. With
    /// Redis, lockout counts move there too, so every replica sees every failure.
    pub fn with_sessions(mut self, sessions: SessionStore, settings: SessionSettings) -> Self {
        if let SessionStore::Redis(conn) = &sessions {
            self.lockout.redis = Some(conn.clone());
        }
        self.sessions = sessions;
        self.session_settings = settings;
        self
    }

    /// Applies `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: LimitSettings) -> Result<Self, OpenError> {
        if limits.concurrent_hashes == 0 {
            return Err(OpenError::Settings(
                "limits.concurrent_hashes must be at least 1".into(),
            ));
        }
        self.hashing = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.concurrent_hashes));
        self.limits = limits;
        Ok(self)
    }

    /// The limits in force.
    pub fn limits(&self) -> &LimitSettings {
        &self.limits
    }

    /// Runs `work` on the password hasher in its turn (at most `limits.concurrent_hashes` at
    /// once, each on a blocking thread so that no request worker stalls); a turn not had within
    /// `limits.hash_queue_timeout` is [`Saturated`].
    pub async fn with_hasher<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PasswordHasher) -> T + Send + 'static,
    ) -> Result<T, Saturated> {
        let turn = tokio::time::timeout(
            self.limits.hash_queue_timeout,
            self.hashing.clone().acquire_owned(),
        )
        .await
        .map_err(|_| Saturated)?
        .map_err(|_| Saturated)?;
        let hasher = self.hasher.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            work(&hasher)
        })
        .await
        .map_err(|_| Saturated)
    }

    /// Checks `password` against `stored` in its turn; a password longer than
    /// `limits.max_password_bytes` is refused unchecked.
    async fn check_password(
        &self,
        stored: &str,
        password: &str,
    ) -> Result<Result<Option<crate::credentials::Verified>, CredentialError>, Saturated> {
        if password.len() > self.limits.max_password_bytes {
            return Ok(Ok(None));
        }
        let (stored, password) = (stored.to_owned(), password.to_owned());
        self.with_hasher(move |h| h.verify(&stored, &password))
            .await
    }

    /// Hashes a new password in its turn, after checking its length (at least 8 characters,
    /// at most `limits.max_password_bytes` bytes).
    pub async fn hash_new_password(&self, password: &str) -> Result<String, PasswordRefused> {
        if password.chars().count() < 8 {
            return Err(PasswordRefused::TooShort);
        }
        if password.len() > self.limits.max_password_bytes {
            return Err(PasswordRefused::TooLong(self.limits.max_password_bytes));
        }
        let password = password.to_owned();
        self.with_hasher(move |h| h.hash(&password))
            .await
            .map_err(|_| PasswordRefused::Saturated)
    }

    /// The session settings.
    pub fn session_settings(&self) -> &SessionSettings {
        &self.session_settings
    }

    /// The session store.
    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }

    /// Logs in (with lockout and audit) and opens a session; returns its id, shown only now.
    pub async fn open_session(
        &self,
        username: &str,
        password: &str,
        source: &str,
    ) -> Result<(String, SessionInfo), OAuthError> {
        self.login(username, password, "session", source).await?;
        // Oldest first: make room for the new one.
        let live = self.sessions.list(username, now_s()).await?;
        let surplus = (live.len() + 1).saturating_sub(self.session_settings.max_per_user.max(1));
        for (hash, old) in live.iter().take(surplus) {
            self.sessions.delete(hash, username).await?;
            self.audit(
                "session.close",
                "success",
                username,
                "",
                source,
                &format!(
                    "handle {}: sessions.max_per_user ({}) reached",
                    old.handle, self.session_settings.max_per_user
                ),
            )
            .await;
        }
        let id = random_token(32);
        let (hash, handle) = id_hash(&id);
        let now = now_s();
        let info = SessionInfo {
            handle,
            user: username.to_owned(),
            source: source.to_owned(),
            created_at: now,
            last_access: now,
            expires_at: now
                + i64::try_from(self.session_settings.absolute_timeout.as_secs())
                    .unwrap_or(i64::MAX / 4),
            idle_seconds: i64::try_from(self.session_settings.idle_timeout.as_secs())
                .unwrap_or(i64::MAX / 4),
        };
        self.sessions.create(&hash, &info).await?;
        self.audit(
            "session.open",
            "success",
            username,
            "",
            source,
            &format!("handle {}", info.handle),
        )
        .await;
        Ok((id, info))
    }

    /// The live session with this id, touched; `None` when unknown or ended.
    pub async fn session(&self, id: &str) -> Result<Option<SessionInfo>, StoreError> {
        self.sessions.touch(&id_hash(id).0, now_s()).await
    }

    /// Ends the session with this id (logout). Returns whether it was live.
    pub async fn close_session(&self, id: &str, source: &str) -> Result<bool, StoreError> {
        let (hash, _) = id_hash(id);
        let Some(info) = self.sessions.touch(&hash, now_s()).await? else {
            return Ok(false);
        };
        self.sessions.delete(&hash, &info.user).await?;
        self.audit(
            "session.close",
            "success",
            &info.user,
            "",
            source,
            &format!("handle {}", info.handle),
        )
        .await;
        Ok(true)
    }

    /// A user's live sessions.
    pub async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>, StoreError> {
        Ok(self
            .sessions
            .list(user, now_s())
            .await?
            .into_iter()
            .map(|(_, info)| info)
            .collect())
    }

    /// Ends a user's sessions (all, or the one with `handle`).
    pub async fn revoke_sessions(
        &self,
        user: &str,
        handle: Option<&str>,
    ) -> Result<usize, StoreError> {
        self.sessions.revoke(user, handle, now_s()).await
    }

    /// Replaces the INI realm (at start and when its file changes). Its users log in when
    /// the store has no user of that name; its `[urls]` back `/v1/authz/urls`.
    pub fn set_realm(&self, realm: IniRealm) {
        *self.realm.write().unwrap_or_else(|p| p.into_inner()) = realm;
    }

    /// The INI realm's `[urls]` rules.
    pub fn realm_urls(&self) -> UrlRules {
        self.realm
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .urls
            .clone()
    }

    /// A user's stored credential and whether it may log in: from the store, else the INI realm.
    async fn credential(&self, username: &str) -> Result<Option<(String, bool)>, StoreError> {
        if let Some(user) = self.store.user(username).await? {
            return Ok(Some((user.password_hash, !user.disabled)));
        }
        let realm = self.realm.read().unwrap_or_else(|p| p.into_inner());
        Ok(realm
            .users
            .get(username)
            .map(|u| (u.credential.clone(), true)))
    }

    async fn persist_keys(&self) -> Result<(), StoreError> {
        let rows: Vec<(String, String, i64)> = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .iter()
            .map(|k| {
                (
                    k.kid.clone(),
                    STANDARD.encode(k.pkcs8()),
                    i64::try_from(k.created).unwrap_or_default(),
                )
            })
            .collect();
        self.store.replace_signing_keys(&rows).await
    }

    /// Rotates the signing key when due and stores the result. Call periodically.
    pub async fn maintain_keys(&self) -> Result<(), StoreError> {
        let changed = {
            let mut ring = self.keys.write().unwrap_or_else(|p| p.into_inner());
            let changed = ring.maintain(u64::try_from(now_s()).unwrap_or_default());
            if changed {
                self.verifier.set_keys(&ring.jwks());
            }
            changed
        };
        if changed {
            tracing::info!("signing keys rotated");
            self.persist_keys().await?;
        }
        Ok(())
    }

    /// The published keys.
    pub fn jwks(&self) -> JwkSet {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).jwks()
    }

    /// Appends an audit event; a failure to write it is logged, never hidden.
    pub async fn audit(
        &self,
        kind: &str,
        outcome: &str,
        subject: &str,
        client_id: &str,
        source: &str,
        detail: &str,
    ) {
        // Ids sort by time, then by order within this process: the audit trail's order.
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let event = AuditEvent {
            id: format!(
                "{:015}-{:09}-{}",
                now_ms(),
                sequence % 1_000_000_000,
                random_token(6)
            ),
            at: now_s(),
            kind: kind.into(),
            outcome: outcome.into(),
            subject: subject.into(),
            client_id: client_id.into(),
            source: source.into(),
            detail: detail.into(),
        };
        tracing::info!(kind, outcome, subject, client_id, source, detail, "audit");
        if let Err(e) = self.store.record(&event).await {
            tracing::error!(error = %e, kind, subject, "audit event could not be stored");
        }
    }

    async fn authenticate_client(&self, client: &ClientAuth) -> Result<ClientRecord, OAuthError> {
        let invalid = OAuthError::InvalidClient {
            basic: client.basic,
        };
        let Some(record) = self.store.client(&client.client_id).await? else {
            // Spend the same time as a real check so that client ids cannot be probed.
            let _ = self
                .check_password(
                    &self.dummy_hash,
                    client.secret.as_deref().unwrap_or_default(),
                )
                .await?;
            return Err(invalid);
        };
        match (&record.secret_hash, &client.secret) {
            (None, None) => Ok(record),
            (Some(hash), Some(secret)) => match self.check_password(hash, secret).await? {
                Ok(Some(_)) => Ok(record),
                _ => Err(invalid),
            },
            _ => Err(invalid),
        }
    }

    fn granted_scope(client: &ClientRecord, requested: Option<&str>) -> Result<String, OAuthError> {
        let Some(requested) = requested.filter(|s| !s.trim().is_empty()) else {
            return Ok(client.scopes.join(" "));
        };
        let mut granted = Vec::new();
        for scope in requested.split_whitespace() {
            if !client.scopes.iter().any(|s| s == scope) {
                return Err(OAuthError::InvalidScope(format!(
                    "scope {scope:?} is not allowed for client {:?}",
                    client.client_id
                )));
            }
            if !granted.contains(&scope) {
                granted.push(scope);
            }
        }
        Ok(granted.join(" "))
    }

    /// Handles a token request.
    pub async fn token(&self, request: TokenRequest) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate_client(&request.client).await;
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                self.audit(
                    "client.authenticate",
                    "failure",
                    &request.client.client_id,
                    &request.client.client_id,
                    &request.source,
                    "",
                )
                .await;
                return Err(e);
            }
        };
        let grant_name = match &request.grant {
            GrantKind::Password { .. } => "password",
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::RefreshToken { .. } => "refresh_token",
        };
        if !client.grant_types.iter().any(|g| g == grant_name) {
            return Err(OAuthError::UnauthorizedClient(format!(
                "client {:?} may not use the {grant_name} grant",
                client.client_id
            )));
        }
        match request.grant {
            GrantKind::Password { username, password } => {
                let scope = Self::granted_scope(&client, request.scope.as_deref())?;
                self.login(&username, &password, &client.client_id, &request.source)
                    .await?;
                let response = self
                    .issue_for_user(&username, &client, &scope, None)
                    .await?;
                self.audit(
                    "token.issue",
                    "success",
                    &username,
                    &client.client_id,
                    &request.source,
                    "grant=password",
                )
                .await;
                Ok(response)
            }
            GrantKind::ClientCredentials => {
                if client.secret_hash.is_none() {
                    return Err(OAuthError::UnauthorizedClient(
                        "a public client cannot use the client_credentials grant".into(),
                    ));
                }
                let scope = Self::granted_scope(&client, request.scope.as_deref())?;
                let subject = format!("client:{}", client.client_id);
                let (response, _) = self.sign(
                    &subject,
                    &client.client_id,
                    &scope,
                    Vec::new(),
                    client.permissions.clone(),
                )?;
                self.audit(
                    "token.issue",
                    "success",
                    &subject,
                    &client.client_id,
                    &request.source,
                    "grant=client_credentials",
                )
                .await;
                Ok(response)
            }
            GrantKind::RefreshToken { token } => {
                self.refresh(&token, &client, request.scope.as_deref(), &request.source)
                    .await
            }
        }
    }

    /// Checks a user's password with lockout and timing equalisation; rehashes outdated hashes.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client_id: &str,
        source: &str,
    ) -> Result<(), OAuthError> {
        let user_key = format!("user:{username}");
        let keys = [user_key.clone(), format!("source:{source}")];
        let now = now_ms();
        let user = self.credential(username).await?;
        let from_store = self.store.user(username).await?.is_some();
        if self.lockout.locked(&keys, now).await? {
            // Same answer as a wrong password; the hash still runs so timing says nothing.
            let _ = self.check_password(&self.dummy_hash, password).await?;
            self.audit(
                "login",
                "failure",
                username,
                client_id,
                source,
                "locked out",
            )
            .await;
            return Err(OAuthError::InvalidGrant(BAD_LOGIN.into()));
        }
        let verified = match &user {
            Some((hash, _)) => self.check_password(hash, password).await?.unwrap_or_else(|e| {
                tracing::error!(user = username, error = %e, "stored password hash cannot be checked");
                None
            }),
            None => {
                let _ = self.check_password(&self.dummy_hash, password).await?;
                None
            }
        };
        match (user, verified) {
            (Some((_, true)), Some(v)) => {
                self.lockout.succeeded(&user_key).await?;
                // Only the store can be rewritten; an INI realm keeps what its file says.
                if let (Some(rehash), true) = (v.rehash, from_store) {
                    self.store.set_password_hash(username, &rehash).await?;
                    self.audit(
                        "password.rehash",
                        "success",
                        username,
                        client_id,
                        source,
                        "migrated to argon2id",
                    )
                    .await;
                }
                self.audit("login", "success", username, client_id, source, "")
                    .await;
                Ok(())
            }
            (user, _) => {
                self.lockout.failed(&keys, now).await?;
                let detail = match user {
                    None => "unknown user",
                    Some((_, false)) => "user disabled",
                    Some(_) => "wrong password",
                };
                self.audit("login", "failure", username, client_id, source, detail)
                    .await;
                Err(OAuthError::InvalidGrant(BAD_LOGIN.into()))
            }
        }
    }

    /// A user's roles and permissions: from the store, or from the INI realm for its users.
    pub async fn subject(&self, username: &str) -> Result<(Vec<String>, Vec<String>), StoreError> {
        if self.store.user(username).await?.is_none() {
            let realm = self.realm.read().unwrap_or_else(|p| p.into_inner());
            if let Some(user) = realm.users.get(username) {
                let perms = realm
                    .permissions_of(username)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                return Ok((user.roles.clone(), perms));
            }
        }
        Ok((
            self.store.roles_of(username).await?,
            self.store.permissions_of(username).await?,
        ))
    }

    /// Whether `username` exists (in the store or the INI realm) and may log in.
    pub async fn active_user(&self, username: &str) -> Result<bool, StoreError> {
        Ok(self
            .credential(username)
            .await?
            .is_some_and(|(_, enabled)| enabled))
    }

    async fn issue_for_user(
        &self,
        username: &str,
        client: &ClientRecord,
        scope: &str,
        family: Option<String>,
    ) -> Result<TokenResponse, OAuthError> {
        let (roles, perms) = self.subject(username).await?;
        let (mut response, jti) = self.sign(username, &client.client_id, scope, roles, perms)?;
        if client.grant_types.iter().any(|g| g == "refresh_token") {
            let token = random_token(32);
            let record = RefreshRecord {
                family: family.unwrap_or_else(|| random_token(12)),
                user_name: username.into(),
                client_id: client.client_id.clone(),
                scope: scope.into(),
                expires_at: now_s()
                    + i64::try_from(self.tokens.refresh_ttl.as_secs()).unwrap_or(i64::MAX / 4),
            };
            self.store
                .insert_refresh(&sha256_hex(&token), &record, &jti)
                .await?;
            response.refresh_token = Some(token);
        }
        Ok(response)
    }

    /// Signs an access token; returns the response and the token's id.
    fn sign(
        &self,
        subject: &str,
        client_id: &str,
        scope: &str,
        roles: Vec<String>,
        perms: Vec<String>,
    ) -> Result<(TokenResponse, String), OAuthError> {
        let now = u64::try_from(now_s()).unwrap_or_default();
        let ttl = self.tokens.access_ttl.as_secs();
        let jti = random_token(16);
        let claims = Claims {
            iss: self.tokens.issuer.clone(),
            sub: subject.into(),
            aud: self.tokens.audience.clone(),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: jti.clone(),
            client_id: client_id.into(),
            scope: scope.into(),
            roles,
            perms,
        };
        let access_token = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current()
            .sign(&claims)
            .map_err(|e| OAuthError::TemporarilyUnavailable(e.to_string()))?;
        let response = TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: ttl,
            refresh_token: None,
            scope: scope.into(),
        };
        Ok((response, jti))
    }

    async fn refresh(
        &self,
        token: &str,
        client: &ClientRecord,
        scope: Option<&str>,
        source: &str,
    ) -> Result<TokenResponse, OAuthError> {
        match self.store.use_refresh(&sha256_hex(token), now_s()).await? {
            RefreshUse::Fresh(record) => {
                if record.client_id != client.client_id {
                    return Err(OAuthError::InvalidGrant(
                        "the refresh token was issued to another client".into(),
                    ));
                }
                let scope = match scope.filter(|s| !s.trim().is_empty()) {
                    None => record.scope.clone(),
                    Some(asked) => {
                        let held: Vec<&str> = record.scope.split_whitespace().collect();
                        if let Some(extra) = asked.split_whitespace().find(|s| !held.contains(s)) {
                            return Err(OAuthError::InvalidScope(format!(
                                "scope {extra:?} was not granted originally"
                            )));
                        }
                        asked.split_whitespace().collect::<Vec<_>>().join(" ")
                    }
                };
                if !self.active_user(&record.user_name).await? {
                    return Err(OAuthError::InvalidGrant(
                        "the user no longer exists or is disabled".into(),
                    ));
                }
                let response = self
                    .issue_for_user(&record.user_name, client, &scope, Some(record.family))
                    .await?;
                self.audit(
                    "token.refresh",
                    "success",
                    &record.user_name,
                    &client.client_id,
                    source,
                    "",
                )
                .await;
                Ok(response)
            }
            RefreshUse::Reused { family, user_name } => {
                self.audit(
                    "refresh.reuse",
                    "failure",
                    &user_name,
                    &client.client_id,
                    source,
                    &format!("family {family} revoked"),
                )
                .await;
                Err(OAuthError::InvalidGrant(
                    "refresh token already used; its whole family has been revoked".into(),
                ))
            }
            RefreshUse::Invalid => Err(OAuthError::InvalidGrant(
                "refresh token is unknown, expired or revoked".into(),
            )),
        }
    }

    /// Verifies one of this service's access tokens exactly: signature, expiry, issuer and
    /// audience, then what only the store knows — the token revoked by its id, its refresh
    /// family revoked, its user disabled, deleted or replaced by a later user of the same
    /// name, its client gone.
    pub async fn verify_access(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = self.verifier.verify(token).await?;
        let unavailable = |e: StoreError| TokenError::KeysUnavailable {
            url: "store".into(),
            reason: e.to_string(),
        };
        if self
            .store
            .access_revoked(&claims.jti)
            .await
            .map_err(unavailable)?
        {
            return Err(TokenError::Invalid("token has been revoked".into()));
        }
        if let Some(why) = self.holder_gone(&claims).await.map_err(unavailable)? {
            return Err(TokenError::Invalid(why));
        }
        Ok(claims)
    }

    /// Why the token's holder may no longer use it, if so.
    async fn holder_gone(&self, claims: &Claims) -> Result<Option<String>, StoreError> {
        if claims.sub == format!("client:{}", claims.client_id) {
            let gone = self.store.client(&claims.client_id).await?.is_none();
            return Ok(gone.then(|| format!("client {:?} no longer exists", claims.client_id)));
        }
        let issued = i64::try_from(claims.iat).unwrap_or(i64::MAX);
        Ok(match self.store.user(&claims.sub).await? {
            Some(user) if user.disabled => Some(format!("user {:?} is disabled", user.name)),
            Some(user) if issued < user.created_at => Some(format!(
                "the token was issued to an earlier user named {:?}",
                user.name
            )),
            Some(_) => None,
            None if self.active_user(&claims.sub).await? => None,
            None => Some(format!("user {:?} no longer exists", claims.sub)),
        })
    }

    /// RFC 7662 introspection of an access or refresh token, for an authenticated client.
    pub async fn introspect(
        &self,
        client: &ClientAuth,
        token: &str,
    ) -> Result<Introspection, OAuthError> {
        self.authenticate_client(client).await?;
        let access = match self.verify_access(token).await {
            Err(TokenError::KeysUnavailable { reason, .. }) => {
                // Not knowing is not "inactive": the caller must retry, not act on a guess.
                tracing::error!(error = %reason, "introspection could not consult the store");
                return Err(OAuthError::TemporarilyUnavailable(
                    "the credential store is unavailable; retry shortly".into(),
                ));
            }
            other => other,
        };
        if let Ok(c) = access {
            return Ok(Introspection {
                active: true,
                scope: Some(c.scope),
                client_id: Some(c.client_id),
                username: (!c.sub.starts_with("client:")).then(|| c.sub.clone()),
                token_type: Some("access_token".into()),
                exp: Some(c.exp),
                iat: Some(c.iat),
                sub: Some(c.sub),
                aud: Some(c.aud),
                iss: Some(c.iss),
                jti: Some(c.jti),
            });
        }
        if let Some(record) = self.store.live_refresh(&sha256_hex(token), now_s()).await?
            && self.active_user(&record.user_name).await?
        {
            return Ok(Introspection {
                active: true,
                scope: Some(record.scope),
                client_id: Some(record.client_id),
                username: Some(record.user_name.clone()),
                token_type: Some("refresh_token".into()),
                exp: u64::try_from(record.expires_at).ok(),
                sub: Some(record.user_name),
                iss: Some(self.tokens.issuer.clone()),
                ..Introspection::default()
            });
        }
        Ok(Introspection::default())
    }

    /// RFC 7009 revocation of an access token (by its id, until it expires) or a refresh token
    /// (with its family). Unknown tokens are not an error.
    pub async fn revoke(
        &self,
        client: &ClientAuth,
        token: &str,
        source: &str,
    ) -> Result<(), OAuthError> {
        let record = self.authenticate_client(client).await?;
        if let Ok(claims) = self.verifier.verify(token).await {
            if claims.client_id != record.client_id {
                return Err(OAuthError::UnauthorizedClient(
                    "the token was issued to another client".into(),
                ));
            }
            self.store
                .revoke_access(&claims.jti, i64::try_from(claims.exp).unwrap_or(i64::MAX))
                .await?;
            self.audit(
                "token.revoke",
                "success",
                &claims.sub,
                &record.client_id,
                source,
                "access token",
            )
            .await;
            return Ok(());
        }
        if self
            .store
            .revoke_refresh(&sha256_hex(token), now_s())
            .await?
        {
            self.audit(
                "token.revoke",
                "success",
                "",
                &record.client_id,
                source,
                "refresh token family",
            )
            .await;
        }
        Ok(())
    }

    /// Creates the bootstrap administrator (role `admin` with permission `*`) if absent; and
    /// when the store has no administrator at all (a store damaged before the last one was
    /// protected, or edited by hand), makes that user one again (see [`Self::repair_administration`]).
    /// Returns whether the user was created.
    pub async fn bootstrap_admin(
        &self,
        username: &str,
        password: &str,
    ) -> Result<bool, StoreError> {
        let created = self.create_bootstrap_admin(username, password).await?;
        if self.store.administrators().await?.is_empty() {
            self.repair_administration(username).await?;
        }
        Ok(created)
    }

    /// Gives `username` administration back when nobody holds it: the permission `*`
    /// directly (not through the role `admin`, whose other holders it would also reach), and
    /// enabled.
    pub async fn repair_administration(&self, username: &str) -> Result<(), StoreError> {
        match self.store.grant_user_permission(username, "*").await {
            Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        self.store.set_disabled(username, false).await?;
        tracing::warn!(
            user = username,
            "no enabled user held {}: the bootstrap administrator was given `*` and enabled",
            crate::store::ADMINISTRATION
        );
        self.audit(
            "admin.repair",
            "success",
            username,
            "",
            "bootstrap",
            "no administrator was left: granted * and enabled",
        )
        .await;
        Ok(())
    }

    async fn create_bootstrap_admin(
        &self,
        username: &str,
        password: &str,
    ) -> Result<bool, StoreError> {
        if self.store.user(username).await?.is_some() {
            return Ok(false);
        }
        if !self.store.role_names().await?.iter().any(|r| r == "admin") {
            self.store
                .create_role(
                    "admin",
                    "full access to every Quartet service",
                    &["*".into()],
                )
                .await?;
        }
        let password = password.to_owned();
        let hash = self
            .with_hasher(move |h| h.hash(&password))
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        self.store.create_user(username, &hash, now_s()).await?;
        self.store.assign_role(username, "admin").await?;
        self.audit(
            "admin.user.create",
            "success",
            username,
            "",
            "bootstrap",
            "bootstrap administrator",
        )
        .await;
        Ok(true)
    }
}
