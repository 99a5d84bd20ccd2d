//! `quartet-auth`: Apache Shiro's security model as a network service, with OAuth2 tokens.
//!
//! | module | what it holds | depends on |
//! |---|---|---|
//! | [`permission`] | Shiro's `WildcardPermission` (lives in `quartet-kit`, shared by every service) | nothing |
//! | [`urls`] | `[urls]` filter chains, Ant matching, path normalisation | `permission` |
//! | [`cipher`] | AES-256-GCM under versioned keys, rotation, re-wrap, HMAC-SHA256 | nothing |
//! | [`credentials`] | argon2id hashing; verifying Shiro 1/2 and bcrypt hashes, with rehash | nothing |
//! | [`keys`] | ES256 signing keys that rotate with overlap; the JWKS document | `quartet-kit::token` |
//! | [`service`] | OAuth2 grants, introspection, revocation, lockout, audit: the operations, no transport | all of the above |
//! | [`authz`] | has-role / is-permitted batches and `[urls]` checks, for both fronts | `service`, `urls` |
//! | [`grpc`] | the gRPC front: `quartet.auth.v1.Authz` | `authz` |
//! | [`rest`] | the REST front: OAuth2 endpoints, JWKS, `/v1/authz`, `/v1/admin` | `service` |
//! | [`openapi`] | the REST front's OpenAPI document, completed with the responses every operation shares | utoipa |
//! | [`sessions`] | server-side sessions with idle and absolute timeouts, in Redis or the store | `store`, redis |
//! | [`store`] | users, roles, clients, refresh tokens, keys in SQLite or PostgreSQL (sqlx `Any`) | sqlx |
//! | [`ini`] | the INI realm file (`[users]`, `[roles]`, `[urls]`) | `permission`, `urls` |
//!
//! The domain modules above import no transport and no store; the gRPC and REST fronts and
//! the SQL and Redis stores sit around them.

pub mod authz;
pub mod cipher;
pub mod credentials;
pub mod grpc;
pub mod ini;
pub mod keys;
pub mod openapi;
pub mod rest;
pub mod service;
pub mod sessions;
pub mod store;
pub mod urls;

pub use quartet_kit::permission;

use std::sync::Arc;
use std::time::Duration;

use quartet_kit::app::{Context, ServiceConfig};
use quartet_kit::reexport::tonic::service::Routes;
use quartet_kit::{BaseSettings, ServerSettings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::credentials::{HashSettings, PasswordHasher};
use crate::service::{Auth, LimitSettings, LockoutSettings, SessionSettings, TokenSettings};
use crate::store::Store;

/// The binary's name, also its `service.name` in traces and its `QUARTET_*` prefix.
pub const SERVICE: &str = "quartet-auth";

/// One line for `--help`.
pub const ABOUT: &str = "Shiro-style authentication and authorization with OAuth2 tokens.";

/// Where users, roles, clients and tokens are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreSettings {
    /// Database URL: `sqlite://<file>?mode=rwc` (embedded, the default) or `postgres://user@host/db`.
    pub url: String,
    /// Most connections in the pool.
    pub max_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://quartet-auth.db?mode=rwc".into(),
            max_connections: 8,
        }
    }
}

/// The administrator and client created at first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub struct BootstrapSettings {
    /// Name of the administrator created (role `admin`, permission `*`) if no user of that name exists; empty for none.
    pub admin_user: String,
    /// File holding the administrator's initial password (e.g. a mounted Secret); required with `admin_user`.
    pub admin_password_file: String,
    /// Id of a public OAuth client (password and refresh grants) created if absent; empty for none.
    pub cli_client: String,
}

/// An INI realm file (`[users]`, `[roles]`, `[urls]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RealmSettings {
    /// Path of a Shiro INI file: its `[users]` and `[roles]` log in beside the store's, its `[urls]` back `/v1/authz/urls`; empty for none. Re-read when it changes.
    pub ini_file: String,
    /// How often the file's modification time is checked, e.g. `2s`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_interval: Duration,
}

impl Default for RealmSettings {
    fn default() -> Self {
        Self {
            ini_file: String::new(),
            reload_interval: Duration::from_secs(2),
        }
    }
}

/// Every setting of `quartet-auth`; `quartet-auth --config-reference` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Listeners, logging and shutdown, shared with every Quartet server.
    #[serde(flatten)]
    pub server: ServerSettings,
    /// The credential store.
    pub store: StoreSettings,
    /// Tokens and signing keys.
    pub tokens: TokenSettings,
    /// Cost of new password hashes (argon2id).
    pub passwords: HashSettings,
    /// Lockout after failed logins.
    pub lockout: LockoutSettings,
    /// First-start administrator and CLI client.
    pub bootstrap: BootstrapSettings,
    /// An INI realm file.
    pub realm: RealmSettings,
    /// The cipher service.
    pub cipher: CipherSettings,
    /// Server-side sessions.
    pub sessions: SessionSettings,
    /// Bounds on what one request can make the service spend.
    pub limits: LimitSettings,
}

/// The cipher service (encrypt, decrypt, re-wrap, sign, verify).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub struct CipherSettings {
    /// File holding the base64 master key (32 bytes) that wraps the data keys, e.g. a mounted Secret; empty turns the cipher service off.
    pub master_key_file: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerSettings::with_ports(7110),
            store: StoreSettings::default(),
            tokens: TokenSettings::default(),
            passwords: HashSettings::default(),
            lockout: LockoutSettings::default(),
            bootstrap: BootstrapSettings::default(),
            realm: RealmSettings::default(),
            cipher: CipherSettings::default(),
            sessions: SessionSettings::default(),
            limits: LimitSettings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn base(&self) -> &BaseSettings {
        &self.server.base
    }
}

/// Reads an INI realm file (at most [`service::MAX_REALM_FILE_BYTES`]).
fn load_realm(path: &str) -> anyhow::Result<crate::ini::IniRealm> {
    let size = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("realm.ini_file {path}: {e}"))?
        .len();
    if size > service::MAX_REALM_FILE_BYTES {
        anyhow::bail!(
            "realm.ini_file {path}: {size} bytes is more than the {} a realm file may have",
            service::MAX_REALM_FILE_BYTES
        );
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("realm.ini_file {path}: {e}"))?;
    crate::ini::IniRealm::parse(&text).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("realm.ini_file {path}: {}", list.join("; "))
    })
}

/// Re-reads the INI realm whenever its modification time changes; a file that does not parse
/// is reported and the previous realm stays in force.
async fn watch_realm(
    auth: Arc<Auth>,
    file: String,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let stamp = |f: &str| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let mut seen = stamp(&file);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = stamp(&file);
        if now == seen {
            continue;
        }
        seen = now;
        match load_realm(&file) {
            Ok(realm) => {
                auth.set_realm(realm);
                tracing::info!(%file, "realm reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "realm reload failed; keeping the previous realm")
            }
        }
    }
}

/// Opens the store, bootstraps, and serves until a stop signal.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    let store = Store::connect(&config.store.url, config.store.max_connections).await?;
    let hasher = PasswordHasher::new(config.passwords)?;
    let auth = Auth::open(store, hasher, config.tokens.clone(), config.lockout.clone())
        .await?
        .with_limits(config.limits.clone())?;
    if !config.cipher.master_key_file.is_empty() {
        let file = &config.cipher.master_key_file;
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cipher.master_key_file {file:?}: {e}"))?;
        let master = crate::cipher::MasterKey::from_base64(&text)
            .map_err(|e| anyhow::anyhow!("cipher.master_key_file {file:?}: {e}"))?;
        auth.enable_cipher(master).await?;
    }
    let auth = if config.sessions.redis_url.is_empty() {
        let store = auth.store().clone();
        auth.with_sessions(
            crate::sessions::SessionStore::Sql(store),
            config.sessions.clone(),
        )
    } else {
        let redis = crate::sessions::SessionStore::redis(&config.sessions.redis_url)
            .await
            .map_err(|e| anyhow::anyhow!("sessions.redis_url: {e}"))?;
        auth.with_sessions(redis, config.sessions.clone())
    };
    let auth = Arc::new(auth);

    let boot = &config.bootstrap;
    if !boot.admin_user.is_empty() {
        let password = std::fs::read_to_string(&boot.admin_password_file).map_err(|e| {
            anyhow::anyhow!(
                "bootstrap.admin_password_file {:?}: {e}",
                boot.admin_password_file
            )
        })?;
        if auth
            .bootstrap_admin(&boot.admin_user, password.trim_end_matches(['\n', '\r']))
            .await?
        {
            tracing::info!(user = %boot.admin_user, "bootstrap administrator created");
        }
    }
    if !boot.cli_client.is_empty() && auth.store().client(&boot.cli_client).await?.is_none() {
        let client = crate::store::ClientRecord {
            client_id: boot.cli_client.clone(),
            secret_hash: None,
            grant_types: vec!["password".into(), "refresh_token".into()],
            scopes: vec!["openid".into()],
            permissions: vec![],
        };
        auth.store().create_client(&client, 0).await?;
        tracing::info!(client = %boot.cli_client, "bootstrap CLI client created");
    }

    if !config.realm.ini_file.is_empty() {
        auth.set_realm(load_realm(&config.realm.ini_file)?);
    }
    if !config.sessions.redis_url.is_empty() {
        let sessions = auth.sessions().clone();
        ctx.readiness.register("sessions", move || {
            let sessions = sessions.clone();
            async move { sessions.ping().await.map_err(|e| e.to_string()) }
        });
    }
    let store = auth.store().clone();
    ctx.readiness.register("store", move || {
        let store = store.clone();
        async move { store.ping().await.map_err(|e| e.to_string()) }
    });

    let (maintained, stop) = (auth.clone(), ctx.shutdown.token());
    ctx.shutdown.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = maintained.maintain_keys().await {
                tracing::warn!(error = %e, "signing key maintenance failed; will retry");
            }
            if let Err(e) = maintained.reload_cipher().await {
                tracing::warn!(error = %e, "reloading cipher keys failed; will retry");
            }
        }
    });
    if !config.realm.ini_file.is_empty() {
        let (watched, stop, file, every) = (
            auth.clone(),
            ctx.shutdown.token(),
            config.realm.ini_file.clone(),
            config.realm.reload_interval,
        );
        ctx.shutdown.spawn(watch_realm(watched, file, every, stop));
    }

    let grpc = Routes::new(grpc::AuthzService::server(auth.clone()));
    let rest = rest::api(rest::State { auth });
    quartet_kit::app::serve_server(ctx, &config.server, grpc, rest).await
}
