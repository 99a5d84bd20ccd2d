//! The SQL store: users, roles, permissions, OAuth clients, refresh tokens, revocations and
//! signing keys, through sqlx's `Any` driver so that one set of queries serves SQLite (the
//! embedded default) and PostgreSQL (production).
//!
//! The schema (`migrations/`) uses only what both databases share; queries use `$1`-style
//! parameters, which both accept. Every multi-statement change runs in one transaction.

use std::borrow::Cow;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};

use quartet_kit::permission::Permission;
use quartet_kit::{ApiError, ErrorKind};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The change would leave no enabled user able to administer the service.
    #[error(
        "refused: {change} would leave no enabled user holding {ADMINISTRATION} (administrators now: {}); give another user that permission first",
        .administrators.join(", ")
    )]
    LastAdministrator {
        /// What was asked, e.g. `deleting user "admin"`.
        change: String,
        /// The enabled users holding the permission before the change.
        administrators: Vec<String>,
    },
    /// The database could not be reached or failed.
    #[error("database error: {0}")]
    Database(String),
}

impl ApiError for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            // 409: a conflict with the current state that the caller can resolve (grant
            // someone else administration) and then retry.
            StoreError::LastAdministrator { .. } => ErrorKind::Aborted,
            StoreError::Database(_) => ErrorKind::Unavailable,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            StoreError::LastAdministrator { .. } => "last-administrator",
            other => other.kind().slug(),
        }
    }
}

/// The permission administration needs: it implies every admin route's
/// `auth:<entity>:<action>`. A change that would leave no enabled user of the store holding it
/// is refused ([`StoreError::LastAdministrator`]).
pub const ADMINISTRATION: &str = "auth:*";

fn db(error: sqlx::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

/// Maps a constraint violation to a named error, anything else to `Database`.
fn constraint(
    error: sqlx::Error,
    exists: impl FnOnce() -> String,
    missing: impl FnOnce() -> String,
) -> StoreError {
    match error.as_database_error() {
        Some(e) if e.is_unique_violation() => StoreError::AlreadyExists(exists()),
        Some(e) if e.is_foreign_key_violation() => StoreError::NotFound(missing()),
        _ => db(error),
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// The password hash (see `credentials`).
    pub password_hash: String,
    /// Disabled users cannot log in.
    pub disabled: bool,
    /// When the user was created, seconds since the epoch: a token issued before then was
    /// issued to an earlier user of the same name.
    pub created_at: i64,
}

/// An OAuth client as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// The client id.
    pub client_id: String,
    /// Hash of the client secret; `None` for a public client.
    pub secret_hash: Option<String>,
    /// Grant types it may use (`password`, `client_credentials`, `refresh_token`).
    pub grant_types: Vec<String>,
    /// Scopes it may ask for.
    pub scopes: Vec<String>,
    /// Permissions its own (client_credentials) tokens carry.
    pub permissions: Vec<String>,
}

/// A refresh token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// The rotation chain it belongs to.
    pub family: String,
    /// Whose it is.
    pub user_name: String,
    /// Which client it was issued to.
    pub client_id: String,
    /// Its granted scope.
    pub scope: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: i64,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// First use of a live token: it is now spent.
    Fresh(RefreshRecord),
    /// The token was used before: its family has now been revoked.
    Reused {
        /// The revoked family.
        family: String,
        /// Whose it was.
        user_name: String,
    },
    /// Unknown, expired or revoked.
    Invalid,
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// The schema migrations, compiled in.
fn migrator() -> Migrator {
    let migration = |version: i64, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            Cow::Borrowed(description),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(1, "init", include_str!("../migrations/0001_init.sql")),
        migration(2, "audit", include_str!("../migrations/0002_audit.sql")),
        migration(3, "cipher", include_str!("../migrations/0003_cipher.sql")),
        migration(
            4,
            "sessions",
            include_str!("../migrations/0004_sessions.sql"),
        ),
        migration(
            5,
            "access grants",
            include_str!("../migrations/0005_access_grants.sql"),
        ),
        migration(
            6,
            "administration guard",
            include_str!("../migrations/0006_administration_guard.sql"),
        ),
    ])
}

/// One security event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Unique id; ids sort in the order events were recorded.
    pub id: String,
    /// When, seconds since the epoch.
    pub at: i64,
    /// What happened: `login`, `token.issue`, `token.refresh`, `token.revoke`, `refresh.reuse`, `admin.<entity>.<action>`.
    pub kind: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// The user or client concerned.
    pub subject: String,
    /// The OAuth client involved, if any.
    pub client_id: String,
    /// The caller's address, if known.
    pub source: String,
    /// Free-form detail (never a secret).
    pub detail: String,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Connects to `url` (`sqlite://path?mode=rwc`, `sqlite::memory:`, `postgres://...`) and
    /// brings the schema up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        install_default_drivers();
        // An in-memory SQLite database exists per connection: keep exactly one.
        let max = if url.contains(":memory:") {
            1
        } else {
            max_connections
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(db)?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrating the schema: {e}")))?;
        Ok(Self { pool })
    }

    /// The connection pool, for modules that keep their own tables (sessions).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether the database answers (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(db)
    }

    /// Runs an UPDATE or DELETE that must touch a row; `NotFound(what())` when it touches none.
    async fn must_touch(
        &self,
        query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
        what: impl FnOnce() -> String,
    ) -> Result<(), StoreError> {
        if query.execute(&self.pool).await.map_err(db)?.rows_affected() == 0 {
            return Err(StoreError::NotFound(what()));
        }
        Ok(())
    }

    /// Creates a user.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.create_user_with(name, password_hash, now, &[], &[])
            .await
    }

    /// Creates a user with roles (each must exist) and direct permissions, all or nothing.
    pub async fn create_user_with(
        &self,
        name: &str,
        password_hash: &str,
        now: i64,
        roles: &[String],
        permissions: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(
            "INSERT INTO users (name, password_hash, disabled, created_at) VALUES ($1, $2, 0, $3)",
        )
        .bind(name)
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| constraint(e, || format!("user {name:?}"), || format!("user {name:?}")))?;
        for role in roles {
            link(&mut tx, Link::UserRole, name, role).await?;
        }
        for permission in permissions {
            link(&mut tx, Link::UserPermission, name, permission).await?;
        }
        tx.commit().await.map_err(db)
    }

    /// A user by name.
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT name, password_hash, disabled, created_at FROM users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.map(|r| UserRecord {
            name: r.get("name"),
            password_hash: r.get("password_hash"),
            disabled: r.get::<i64, _>("disabled") != 0,
            created_at: r.get("created_at"),
        }))
    }

    /// Every user name, sorted.
    pub async fn user_names(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get("name")).collect())
    }

    /// Replaces a user's password hash (after a rehash or a password change).
    pub async fn set_password_hash(
        &self,
        name: &str,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        self.must_touch(
            sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
                .bind(password_hash)
                .bind(name),
            || format!("user {name:?}"),
        )
        .await
    }

    /// Enables or disables a user; disabling the last administrator is refused.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let query = sqlx::query("UPDATE users SET disabled = $1 WHERE name = $2")
            .bind(i64::from(disabled))
            .bind(name);
        if !disabled {
            return self.must_touch(query, || format!("user {name:?}")).await;
        }
        self.keeping_an_administrator(
            vec![query],
            || format!("user {name:?}"),
            || format!("disabling user {name:?}"),
        )
        .await
    }

    /// Deletes a user with their role assignments and direct permissions, and revokes their
    /// refresh tokens (so that a later user of the same name inherits none); deleting the last
    /// administrator is refused.
    pub async fn delete_user(&self, name: &str, now: i64) -> Result<(), StoreError> {
        self.keeping_an_administrator(
            vec![
                sqlx::query("DELETE FROM users WHERE name = $1").bind(name),
                sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(name),
            ],
            || format!("user {name:?}"),
            || format!("deleting user {name:?}"),
        )
        .await
    }

    /// Runs `statements` in one transaction, the first of which must touch a row
    /// (`NotFound(missing())` otherwise), unless they would leave no administrator where there
    /// was one: then nothing is changed and the answer is [`StoreError::LastAdministrator`]
    /// naming `change()`. Such changes run one at a time (`administration_guard`), so two
    /// concurrent ones cannot each remove a different last-but-one administrator.
    async fn keeping_an_administrator(
        &self,
        statements: Vec<sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>>,
        missing: impl FnOnce() -> String,
        change: impl FnOnce() -> String,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // A write first: it takes the lock that orders these transactions before anything
        // is read.
        sqlx::query("UPDATE administration_guard SET changes = changes + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let before = administrators(&mut tx).await?;
        for (i, statement) in statements.into_iter().enumerate() {
            let done = statement.execute(&mut *tx).await.map_err(db)?;
            if i == 0 && done.rows_affected() == 0 {
                return Err(StoreError::NotFound(missing()));
            }
        }
        if !before.is_empty() && administrators(&mut tx).await?.is_empty() {
            return Err(StoreError::LastAdministrator {
                change: change(),
                administrators: before,
            });
        }
        tx.commit().await.map_err(db)
    }

    /// The enabled users of the store who hold [`ADMINISTRATION`], through a role or directly,
    /// sorted. Users of the INI realm are not counted: their file can change under us.
    pub async fn administrators(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        administrators(&mut conn).await
    }

    /// Creates a role with its permissions, all or nothing.
    pub async fn create_role(
        &self,
        name: &str,
        description: &str,
        permissions: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("INSERT INTO roles (name, description) VALUES ($1, $2)")
            .bind(name)
            .bind(description)
            .execute(&mut *tx)
            .await
            .map_err(|e| constraint(e, || format!("role {name:?}"), || format!("role {name:?}")))?;
        for permission in permissions {
            link(&mut tx, Link::RolePermission, name, permission).await?;
        }
        tx.commit().await.map_err(db)
    }

    /// Deletes a role; its assignments go with it. Refused when its holders are the last
    /// administrators.
    pub async fn delete_role(&self, name: &str) -> Result<(), StoreError> {
        self.keeping_an_administrator(
            vec![sqlx::query("DELETE FROM roles WHERE name = $1").bind(name)],
            || format!("role {name:?}"),
            || format!("deleting role {name:?}"),
        )
        .await
    }

    /// Every role name, sorted.
    pub async fn role_names(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM roles ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get("name")).collect())
    }

    /// Takes the role `role` from `user`, unless that leaves no administrator.
    pub async fn unassign_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        self.keeping_an_administrator(
            vec![
                sqlx::query("DELETE FROM user_roles WHERE user_name = $1 AND role = $2")
                    .bind(user)
                    .bind(role),
            ],
            || format!("role {role:?} of user {user:?}"),
            || format!("taking role {role:?} from user {user:?}"),
        )
        .await
    }

    /// Takes a directly granted permission from `user`, unless that leaves no administrator.
    pub async fn revoke_user_permission(
        &self,
        user: &str,
        permission: &str,
    ) -> Result<(), StoreError> {
        self.keeping_an_administrator(
            vec![
                sqlx::query(
                    "DELETE FROM user_permissions WHERE user_name = $1 AND permission = $2",
                )
                .bind(user)
                .bind(permission),
            ],
            || format!("permission {permission:?} of user {user:?}"),
            || format!("taking permission {permission:?} from user {user:?}"),
        )
        .await
    }

    /// Adds a permission to a role.
    pub async fn grant_role_permission(
        &self,
        role: &str,
        permission: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        link(&mut conn, Link::RolePermission, role, permission).await
    }

    /// Takes a permission from a role, unless that leaves no administrator.
    pub async fn revoke_role_permission(
        &self,
        role: &str,
        permission: &str,
    ) -> Result<(), StoreError> {
        self.keeping_an_administrator(
            vec![
                sqlx::query("DELETE FROM role_permissions WHERE role = $1 AND permission = $2")
                    .bind(role)
                    .bind(permission),
            ],
            || format!("permission {permission:?} on role {role:?}"),
            || format!("taking permission {permission:?} from role {role:?}"),
        )
        .await
    }

    /// A role's permissions, sorted; `None` when the role does not exist.
    pub async fn role_permissions(&self, role: &str) -> Result<Option<Vec<String>>, StoreError> {
        if sqlx::query("SELECT 1 FROM roles WHERE name = $1")
            .bind(role)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .is_none()
        {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT permission FROM role_permissions WHERE role = $1 ORDER BY permission",
        )
        .bind(role)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(Some(rows.iter().map(|r| r.get("permission")).collect()))
    }

    /// Gives `user` the role `role`.
    pub async fn assign_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        link(&mut conn, Link::UserRole, user, role).await
    }

    /// Grants `user` a permission directly.
    pub async fn grant_user_permission(
        &self,
        user: &str,
        permission: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        link(&mut conn, Link::UserPermission, user, permission).await
    }

    /// The user's roles, sorted.
    pub async fn roles_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT role FROM user_roles WHERE user_name = $1 ORDER BY role")
            .bind(user)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get("role")).collect())
    }

    /// The user's permissions: through roles and direct, sorted and without repeats.
    pub async fn permissions_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT rp.permission AS permission FROM user_roles ur JOIN role_permissions rp ON rp.role = ur.role WHERE ur.user_name = $1 \
             UNION SELECT permission FROM user_permissions WHERE user_name = $1 ORDER BY 1",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Registers an OAuth client.
    pub async fn create_client(&self, client: &ClientRecord, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_clients (client_id, secret_hash, grant_types, scopes, permissions, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&client.client_id)
        .bind(client.secret_hash.as_deref())
        .bind(client.grant_types.join(" "))
        .bind(client.scopes.join(" "))
        .bind(client.permissions.join(" "))
        .bind(now)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(|e| constraint(e, || format!("client {:?}", client.client_id), || format!("client {:?}", client.client_id)))
    }

    /// A client by id.
    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let row = sqlx::query("SELECT client_id, secret_hash, grant_types, scopes, permissions FROM oauth_clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.map(|r| ClientRecord {
            client_id: r.get("client_id"),
            secret_hash: r.get("secret_hash"),
            grant_types: words(r.get("grant_types")),
            scopes: words(r.get("scopes")),
            permissions: words(r.get("permissions")),
        }))
    }

    /// Stores a new refresh token (by hash) with the id of the access token issued beside it,
    /// which from then on lives and dies with the token's family.
    pub async fn insert_refresh(
        &self,
        token_hash: &str,
        record: &RefreshRecord,
        access_jti: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family, user_name, client_id, scope, expires_at, access_jti) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token_hash)
        .bind(&record.family)
        .bind(&record.user_name)
        .bind(&record.client_id)
        .bind(&record.scope)
        .bind(record.expires_at)
        .bind(access_jti)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(db)
    }

    /// Spends a refresh token: the first use of a live token succeeds exactly once, even under
    /// concurrent attempts; a second use revokes the whole family. A family with any revoked
    /// token is revoked as a whole, also for a token inserted into it after the revocation (a
    /// refresh that raced with it).
    pub async fn use_refresh(&self, token_hash: &str, now: i64) -> Result<RefreshUse, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let spent = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1 \
             AND NOT EXISTS (SELECT 1 FROM refresh_tokens f WHERE f.family = refresh_tokens.family AND f.revoked_at IS NOT NULL)",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let row = sqlx::query("SELECT family, user_name, client_id, scope, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(row) = row else {
            tx.commit().await.map_err(db)?;
            return Ok(RefreshUse::Invalid);
        };
        let record = RefreshRecord {
            family: row.get("family"),
            user_name: row.get("user_name"),
            client_id: row.get("client_id"),
            scope: row.get("scope"),
            expires_at: row.get("expires_at"),
        };
        let outcome = if spent.rows_affected() == 1 {
            RefreshUse::Fresh(record)
        } else if row.get::<Option<i64>, _>("used_at").is_some()
            && row.get::<Option<i64>, _>("revoked_at").is_none()
        {
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(&record.family)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            RefreshUse::Reused {
                family: record.family,
                user_name: record.user_name,
            }
        } else {
            RefreshUse::Invalid
        };
        tx.commit().await.map_err(db)?;
        Ok(outcome)
    }

    /// A refresh token that could be spent now: unused, unexpired, and of a family none of
    /// whose tokens is revoked.
    pub async fn live_refresh(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT family, user_name, client_id, scope, expires_at FROM refresh_tokens t \
             WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
             AND NOT EXISTS (SELECT 1 FROM refresh_tokens f WHERE f.family = t.family AND f.revoked_at IS NOT NULL)",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.map(|r| RefreshRecord {
            family: r.get("family"),
            user_name: r.get("user_name"),
            client_id: r.get("client_id"),
            scope: r.get("scope"),
            expires_at: r.get("expires_at"),
        }))
    }

    /// Revokes a refresh token's whole family. Returns whether the token was known.
    pub async fn revoke_refresh(&self, token_hash: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND family IN (SELECT family FROM refresh_tokens WHERE token_hash = $2)",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    /// Records an access token as revoked until it would have expired.
    pub async fn revoke_access(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE revoked_access_tokens SET expires_at = $1 WHERE jti = $2")
            .bind(expires_at)
            .bind(jti)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            sqlx::query("INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, $2)")
                .bind(jti)
                .bind(expires_at)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    /// Whether an access token was revoked: by its id (RFC 7009), or with the family of the
    /// refresh token issued beside it (reuse, revocation of the refresh token, deletion of the
    /// user).
    pub async fn access_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 FROM revoked_access_tokens WHERE jti = $1 \
             UNION ALL SELECT 1 FROM refresh_tokens t JOIN refresh_tokens f ON f.family = t.family \
             WHERE t.access_jti = $1 AND f.revoked_at IS NOT NULL",
        )
        .bind(jti)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.is_some())
    }

    /// The stored signing keys: (kid, base64 PKCS#8, created), oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT kid, pkcs8, created_at FROM signing_keys ORDER BY created_at")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get("kid"), r.get("pkcs8"), r.get("created_at")))
            .collect())
    }

    /// Replaces the stored signing keys with `keys`, in one transaction.
    pub async fn replace_signing_keys(
        &self,
        keys: &[(String, String, i64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("DELETE FROM signing_keys")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for (kid, pkcs8, created) in keys {
            sqlx::query("INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES ($1, $2, $3)")
                .bind(kid)
                .bind(pkcs8)
                .bind(*created)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// Appends an audit event.
    pub async fn record(&self, event: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (id, at, kind, outcome, subject, client_id, source, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&event.id)
        .bind(event.at)
        .bind(&event.kind)
        .bind(&event.outcome)
        .bind(&event.subject)
        .bind(&event.client_id)
        .bind(&event.source)
        .bind(&event.detail)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(db)
    }

    /// Audit events, newest first, optionally for one subject and/or kind, at most `limit`.
    pub async fn audit(
        &self,
        subject: Option<&str>,
        kind: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, outcome, subject, client_id, source, detail FROM audit_events \
             WHERE ($1 = '' OR subject = $1) AND ($2 = '' OR kind = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(subject.unwrap_or_default())
        .bind(kind.unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| AuditEvent {
                id: r.get("id"),
                at: r.get("at"),
                kind: r.get("kind"),
                outcome: r.get("outcome"),
                subject: r.get("subject"),
                client_id: r.get("client_id"),
                source: r.get("source"),
                detail: r.get("detail"),
            })
            .collect())
    }

    /// The cipher service's wrapped data keys, by version.
    pub async fn cipher_keys(&self) -> Result<Vec<(u32, String)>, StoreError> {
        let rows = sqlx::query("SELECT version, wrapped FROM cipher_keys ORDER BY version")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    u32::try_from(r.get::<i64, _>("version")).unwrap_or_default(),
                    r.get("wrapped"),
                )
            })
            .collect())
    }

    /// Stores a new wrapped data key; fails with `AlreadyExists` when another replica took the version first.
    pub async fn add_cipher_key(
        &self,
        version: u32,
        wrapped: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO cipher_keys (version, wrapped, created_at) VALUES ($1, $2, $3)")
            .bind(i64::from(version))
            .bind(wrapped)
            .bind(now)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| {
                constraint(
                    e,
                    || format!("cipher key version {version}"),
                    || format!("cipher key version {version}"),
                )
            })
    }
}

/// The enabled users holding [`ADMINISTRATION`], seen from `conn` (inside a transaction, its
/// uncommitted changes included). The permission strings are few next to the users, so the
/// ones that imply it are picked here and the users holding one of them asked for.
async fn administrators(conn: &mut sqlx::AnyConnection) -> Result<Vec<String>, StoreError> {
    let needed =
        Permission::parse(ADMINISTRATION).map_err(|e| StoreError::Database(e.to_string()))?;
    let held = sqlx::query(
        "SELECT permission FROM role_permissions UNION SELECT permission FROM user_permissions",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let granting: Vec<String> = held
        .iter()
        .map(|r| r.get::<String, _>("permission"))
        .filter(|p| Permission::parse(p).is_ok_and(|p| p.implies(&needed)))
        .collect();
    if granting.is_empty() {
        return Ok(Vec::new());
    }
    let list = (1..=granting.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT name FROM users WHERE disabled = 0 AND (\
         name IN (SELECT user_name FROM user_permissions WHERE permission IN ({list})) \
         OR name IN (SELECT ur.user_name FROM user_roles ur JOIN role_permissions rp ON rp.role = ur.role WHERE rp.permission IN ({list}))) \
         ORDER BY name"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for permission in &granting {
        query = query.bind(permission);
    }
    let rows = query.fetch_all(&mut *conn).await.map_err(db)?;
    Ok(rows.iter().map(|r| r.get("name")).collect())
}

/// The tables that link a user or a role to a role or a permission.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// `user_roles`: a user holds a role.
    UserRole,
    /// `user_permissions`: a user holds a permission directly.
    UserPermission,
    /// `role_permissions`: a role carries a permission.
    RolePermission,
}

/// Inserts the row linking `owner` to `item`; a repeat is `AlreadyExists` and a missing owner
/// (or role) `NotFound`, each naming what.
async fn link(
    conn: &mut sqlx::AnyConnection,
    kind: Link,
    owner: &str,
    item: &str,
) -> Result<(), StoreError> {
    let sql = match kind {
        Link::UserRole => "INSERT INTO user_roles (user_name, role) VALUES ($1, $2)",
        Link::UserPermission => {
            "INSERT INTO user_permissions (user_name, permission) VALUES ($1, $2)"
        }
        Link::RolePermission => "INSERT INTO role_permissions (role, permission) VALUES ($1, $2)",
    };
    sqlx::query(sql)
        .bind(owner)
        .bind(item)
        .execute(&mut *conn)
        .await
        .map(drop)
        .map_err(|e| {
            constraint(
                e,
                || match kind {
                    Link::UserRole => format!("role {item:?} of user {owner:?}"),
                    Link::UserPermission => format!("permission {item:?} of user {owner:?}"),
                    Link::RolePermission => format!("permission {item:?} on role {owner:?}"),
                },
                || match kind {
                    Link::UserRole => format!("user {owner:?} or role {item:?}"),
                    Link::UserPermission => format!("user {owner:?}"),
                    Link::RolePermission => format!("role {owner:?}"),
                },
            )
        })
}
