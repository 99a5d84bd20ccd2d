//! Server-side sessions, as Shiro keeps them: created at login, touched on use, ended by logout,
//! by an idle timeout or by an absolute timeout, listed and revoked per user by administrators.
//!
//! Two stores behave alike: Redis when `sessions.redis_url` is set (every replica sees the
//! same sessions; Redis expires idle ones by itself), the SQL store otherwise. Neither keeps the
//! session id: only its SHA-256, so a copy of the store cannot be replayed as sessions. A
//! session is named in lists by its *handle*, the first 16 hex digits of that hash.

use redis::AsyncCommands;
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use crate::store::{Store, StoreError};

/// One session as stored and shown (never with its id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SessionInfo {
    /// Names the session in lists and revocations.
    pub handle: String,
    /// Whose it is.
    pub user: String,
    /// Where the login came from.
    pub source: String,
    /// When it was created, seconds since the epoch.
    pub created_at: i64,
    /// When it was last used.
    pub last_access: i64,
    /// When it ends whatever its use (absolute timeout).
    pub expires_at: i64,
    /// Seconds of disuse after which it ends.
    pub idle_seconds: i64,
}

impl SessionInfo {
    /// Whether it has ended at `now`, by idleness or by age.
    pub fn ended(&self, now: i64) -> bool {
        now >= self.expires_at || now - self.last_access >= self.idle_seconds
    }
}

/// The hash under which a session id is stored, and its handle.
pub fn id_hash(id: &str) -> (String, String) {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let handle = hash[..16].to_owned();
    (hash, handle)
}

/// Where sessions live.
#[derive(Clone)]
pub enum SessionStore {
    /// The SQL store.
    Sql(Store),
    /// Redis.
    Redis(redis::aio::ConnectionManager),
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionStore::Sql(_) => "SessionStore::Sql",
            SessionStore::Redis(_) => "SessionStore::Redis",
        })
    }
}

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::Database(format!("redis: {e}"))
}

fn session_key(hash: &str) -> String {
    format!("quartet:auth:session:{hash}")
}

fn user_key(user: &str) -> String {
    format!("quartet:auth:user-sessions:{user}")
}

impl SessionStore {
    /// Connects to Redis at `url`.
    pub async fn redis(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(redis_error)?;
        // Bounded: a session lookup waits at most a few seconds for Redis, then fails visibly.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(2)));
        let manager = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(redis_error)?;
        Ok(SessionStore::Redis(manager))
    }

    /// Whether the backing store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            SessionStore::Sql(store) => store.ping().await,
            SessionStore::Redis(conn) => {
                let mut conn = conn.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(drop)
                    .map_err(redis_error)
            }
        }
    }

    /// Stores a new session under the hash of its id.
    pub async fn create(&self, hash: &str, info: &SessionInfo) -> Result<(), StoreError> {
        match self {
            SessionStore::Sql(store) => {
                sqlx::query(
                    "INSERT INTO sessions (id_hash, handle, user_name, source, created_at, last_access, expires_at, idle_secs) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(hash)
                .bind(&info.handle)
                .bind(&info.user)
                .bind(&info.source)
                .bind(info.created_at)
                .bind(info.last_access)
                .bind(info.expires_at)
                .bind(info.idle_seconds)
                .execute(store.pool())
                .await
                .map(drop)
                .map_err(|e| StoreError::Database(e.to_string()))
            }
            SessionStore::Redis(conn) => {
                let mut conn = conn.clone();
                let ttl = ttl(info, info.created_at);
                redis::pipe()
                    .atomic()
                    .hset_multiple(
                        session_key(hash),
                        &[
                            ("handle", info.handle.clone()),
                            ("user", info.user.clone()),
                            ("source", info.source.clone()),
                            ("created_at", info.created_at.to_string()),
                            ("last_access", info.last_access.to_string()),
                            ("expires_at", info.expires_at.to_string()),
                            ("idle_secs", info.idle_seconds.to_string()),
                        ],
                    )
                    .expire(session_key(hash), ttl)
                    .sadd(user_key(&info.user), hash)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_error)
            }
        }
    }

    async fn read(&self, hash: &str) -> Result<Option<SessionInfo>, StoreError> {
        match self {
            SessionStore::Sql(store) => {
                let row = sqlx::query("SELECT handle, user_name, source, created_at, last_access, expires_at, idle_secs FROM sessions WHERE id_hash = $1")
                    .bind(hash)
                    .fetch_optional(store.pool())
                    .await
                    .map_err(|e| StoreError::Database(e.to_string()))?;
                Ok(row.map(|r| SessionInfo {
                    handle: r.get("handle"),
                    user: r.get("user_name"),
                    source: r.get("source"),
                    created_at: r.get("created_at"),
                    last_access: r.get("last_access"),
                    expires_at: r.get("expires_at"),
                    idle_seconds: r.get("idle_secs"),
                }))
            }
            SessionStore::Redis(conn) => {
                let mut conn = conn.clone();
                let fields: std::collections::HashMap<String, String> =
                    conn.hgetall(session_key(hash)).await.map_err(redis_error)?;
                if fields.is_empty() {
                    return Ok(None);
                }
                let num = |k: &str| {
                    fields
                        .get(k)
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or_default()
                };
                Ok(Some(SessionInfo {
                    handle: fields.get("handle").cloned().unwrap_or_default(),
                    user: fields.get("user").cloned().unwrap_or_default(),
                    source: fields.get("source").cloned().unwrap_or_default(),
                    created_at: num("created_at"),
                    last_access: num("last_access"),
                    expires_at: num("expires_at"),
                    idle_seconds: num("idle_secs"),
                }))
            }
        }
    }

    /// The live session with this id hash, touched (its idle clock restarts); an ended one is
    /// removed and reported as absent.
    pub async fn touch(&self, hash: &str, now: i64) -> Result<Option<SessionInfo>, StoreError> {
        let Some(mut info) = self.read(hash).await? else {
            return Ok(None);
        };
        if info.ended(now) {
            self.delete(hash, &info.user).await?;
            return Ok(None);
        }
        info.last_access = now;
        match self {
            SessionStore::Sql(store) => {
                sqlx::query("UPDATE sessions SET last_access = $1 WHERE id_hash = $2")
                    .bind(now)
                    .bind(hash)
                    .execute(store.pool())
                    .await
                    .map_err(|e| StoreError::Database(e.to_string()))?;
            }
            SessionStore::Redis(conn) => {
                let mut conn = conn.clone();
                redis::pipe()
                    .atomic()
                    .hset(session_key(hash), "last_access", now.to_string())
                    .expire(session_key(hash), ttl(&info, now))
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_error)?;
            }
        }
        Ok(Some(info))
    }

    /// Ends one session.
    pub async fn delete(&self, hash: &str, user: &str) -> Result<(), StoreError> {
        match self {
            SessionStore::Sql(store) => sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(hash)
                .execute(store.pool())
                .await
                .map(drop)
                .map_err(|e| StoreError::Database(e.to_string())),
            SessionStore::Redis(conn) => {
                let mut conn = conn.clone();
                redis::pipe()
                    .atomic()
                    .del(session_key(hash))
                    .srem(user_key(user), hash)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_error)
            }
        }
    }

    /// A user's live sessions, oldest first; ended ones are cleaned up on the way.
    pub async fn list(
        &self,
        user: &str,
        now: i64,
    ) -> Result<Vec<(String, SessionInfo)>, StoreError> {
        let hashes: Vec<String> = match self {
            SessionStore::Sql(store) => {
                sqlx::query("SELECT id_hash FROM sessions WHERE user_name = $1")
                    .bind(user)
                    .fetch_all(store.pool())
                    .await
                    .map_err(|e| StoreError::Database(e.to_string()))?
                    .iter()
                    .map(|r| r.get("id_hash"))
                    .collect()
            }
            SessionStore::Redis(conn) => {
                let mut conn = conn.clone();
                conn.smembers(user_key(user)).await.map_err(redis_error)?
            }
        };
        let mut live = Vec::new();
        for hash in hashes {
            match self.read(&hash).await? {
                Some(info) if !info.ended(now) => live.push((hash, info)),
                _ => self.delete(&hash, user).await?,
            }
        }
        live.sort_by_key(|(_, info)| (info.created_at, info.handle.clone()));
        Ok(live)
    }

    /// Ends a user's sessions: all of them, or the one with `handle`. Returns how many ended.
    pub async fn revoke(
        &self,
        user: &str,
        handle: Option<&str>,
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut ended = 0;
        for (hash, info) in self.list(user, now).await? {
            if handle.is_none_or(|h| h == info.handle) {
                self.delete(&hash, user).await?;
                ended += 1;
            }
        }
        Ok(ended)
    }
}

/// Seconds until the session ends if left alone: the idle timeout, capped by its absolute end.
fn ttl(info: &SessionInfo, now: i64) -> i64 {
    info.idle_seconds.min(info.expires_at - now).max(1)
}
