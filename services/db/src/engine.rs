//! One replica's SQLite database, and the deterministic replication of its writes.
//!
//! A write runs on the leader only. The leader executes the SQL inside a transaction with a
//! SQLite *session* attached, and what it replicates is not the SQL but the **changeset** the
//! session recorded: the rows as the leader wrote them, after `RANDOM()`, `CURRENT_TIMESTAMP`,
//! auto-increment and every other non-deterministic choice was made once. Followers apply the
//! changeset; a conflict there means the replicas have diverged, so applying aborts rather
//! than guessing. Sessions do not record schema changes, so DDL travels as SQL text, which is
//! deterministic by itself; an [`Entry`] holds both, in execution order.
//!
//! Sessions ignore tables without a primary key, so every table must have one (the dialect
//! layer refuses others with MySQL's error 3750, as MySQL does under
//! `sql_require_primary_key`). [`Engine::checksum`] hashes every table's rows in primary-key
//! order: replicas at the same applied index must agree on it.

use rusqlite::session::{ConflictAction, ConflictType, Session};
use rusqlite::types::{Value, ValueRef};
use sha2::{Digest, Sha256};

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// SQLite refused the statement (constraint, missing table, ...).
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Another session's transaction held the engine longer than the lock wait.
    #[error("Lock wait timeout exceeded; try restarting transaction")]
    LockWait,
    /// Schema changes are refused inside an interactive transaction.
    #[error("schema changes are not allowed inside a transaction: COMMIT or ROLLBACK first")]
    DdlInTransaction,
    /// A change of leader rolled the session's open transaction back.
    #[error(
        "Deadlock found when trying to get lock; try restarting transaction (the transaction was rolled back: the group's leader changed while it was open)"
    )]
    Aborted,
    /// A read ran past its time limit and was stopped.
    #[error(
        "Query execution was interrupted, maximum statement execution time exceeded ({} ms: max_execution_time)",
        .0.as_millis()
    )]
    TimedOut(std::time::Duration),
    /// `KILL QUERY` stopped the session's read.
    #[error("Query execution was interrupted")]
    Killed,
    /// The session's transaction sat idle while others waited, and was rolled back.
    #[error(
        "Lock wait timeout exceeded; try restarting transaction (this session's transaction was rolled back after {} ms without a statement while other sessions waited: mysql.idle_transaction_timeout_ms)",
        .0.as_millis()
    )]
    IdleTransaction(std::time::Duration),
    /// A write's changes are too large for one replicated entry.
    #[error(
        "entry too large: the statement's changes are {size} bytes, one replicated entry holds at most {limit} (mysql.max_write_bytes); split the write"
    )]
    EntryTooLarge {
        /// The changes' size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The engine thread has stopped.
    #[error("the storage engine has stopped")]
    Stopped,
    /// The engine answered something the caller did not ask for (a bug).
    #[error("unexpected engine answer: {0}")]
    Unexpected(String),
    /// A follower could not apply a changeset cleanly: the replicas differ.
    #[error("changeset conflict ({0}): this replica has diverged from the leader")]
    Diverged(String),
}

impl EngineError {
    /// The MySQL error a client should see, for a statement run in `database`.
    pub fn to_mysql(&self, database: &str) -> crate::dialect::MysqlError {
        use crate::dialect::MysqlError;
        let error = |code, sqlstate, message: String| MysqlError {
            code,
            sqlstate,
            message,
        };
        let (failure, message) = match self {
            EngineError::Sqlite(rusqlite::Error::SqliteFailure(failure, message)) => {
                (failure, message.clone().unwrap_or_default())
            }
            EngineError::Sqlite(rusqlite::Error::SqlInputError { error, msg, .. }) => {
                (error, msg.clone())
            }
            EngineError::LockWait => return error(1205, "HY000", self.to_string()),
            EngineError::DdlInTransaction => return error(1179, "25000", self.to_string()),
            EngineError::Aborted => return error(1213, "40001", self.to_string()),
            EngineError::TimedOut(_) => return error(3024, "HY000", self.to_string()),
            EngineError::Killed => return error(1317, "70100", self.to_string()),
            // TiDB's number for the same refusal (txn-entry-size-limit).
            EngineError::EntryTooLarge { .. } => return error(8025, "HY000", self.to_string()),
            EngineError::IdleTransaction(_) => return error(1205, "HY000", self.to_string()),
            other => return error(1105, "HY000", other.to_string()),
        };
        // What follows the first ": " in SQLite's message names the table, column or constraint.
        let subject = message
            .split_once(": ")
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default();
        let column = |qualified: &str| {
            qualified
                .split(", ")
                .next()
                .unwrap_or_default()
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        match (failure.extended_code, failure.code) {
            (1555, _) => error(
                1062,
                "23000",
                format!(
                    "Duplicate entry for key '{}.PRIMARY'",
                    unqualified(&subject).split('.').next().unwrap_or_default()
                ),
            ),
            (2067, _) => error(
                1062,
                "23000",
                format!("Duplicate entry for key '{}'", unqualified(&subject)),
            ),
            (1299, _) => error(
                1048,
                "23000",
                format!("Column '{}' cannot be null", column(&subject)),
            ),
            (275, _) => error(
                3819,
                "HY000",
                format!("Check constraint '{}' is violated.", unqualified(&subject)),
            ),
            (787, _) => error(
                1452,
                "23000",
                "Cannot add or update a child row: a foreign key constraint fails".into(),
            ),
            (_, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => error(
                1205,
                "HY000",
                "Lock wait timeout exceeded; try restarting transaction".into(),
            ),
            _ if message.starts_with("no such table: ") => error(
                1146,
                "42S02",
                if subject.contains('.') {
                    format!("Table '{subject}' doesn't exist")
                } else {
                    format!("Table '{database}.{subject}' doesn't exist")
                },
            ),
            _ if message.starts_with("no such column: ") => error(
                1054,
                "42S22",
                format!("Unknown column '{subject}' in 'field list'"),
            ),
            _ if message.contains(" has no column named ") => {
                let name = message
                    .rsplit(" has no column named ")
                    .next()
                    .unwrap_or_default();
                error(
                    1054,
                    "42S22",
                    format!("Unknown column '{name}' in 'field list'"),
                )
            }
            _ if message.starts_with("table ") && message.ends_with(" already exists") => error(
                1050,
                "42S01",
                format!(
                    "Table '{}' already exists",
                    unqualified(
                        message
                            .trim_start_matches("table ")
                            .trim_end_matches(" already exists")
                            .trim_matches('"')
                    )
                ),
            ),
            _ if message.starts_with("index ") && message.ends_with(" already exists") => error(
                1061,
                "42000",
                format!(
                    "Duplicate key name '{}'",
                    // `db.table.index`: MySQL names the index alone.
                    message
                        .trim_start_matches("index ")
                        .trim_end_matches(" already exists")
                        .trim_matches('"')
                        .rsplit('.')
                        .next()
                        .unwrap_or_default()
                ),
            ),
            _ => error(1105, "HY000", message),
        }
    }
}

/// A SQLite object name without its database part: `app.t.id` → `t.id` (see the dialect's
/// notes on databases).
fn unqualified(name: &str) -> &str {
    name.split_once('.').map_or(name, |(_, rest)| rest)
}

/// A session recording the row changes of every table but the replica's own bookkeeping
/// (which the leader may write while a transaction records, and which is never replicated).
pub fn recorder(conn: &rusqlite::Connection) -> Result<Session<'_>, rusqlite::Error> {
    let mut session = Session::new(conn)?;
    session.table_filter(Some(|table: &str| table != META_TABLE));
    session.attach(None::<&str>)?;
    Ok(session)
}

/// One part of a replicated write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// Schema change, replayed as SQL.
    Ddl(String),
    /// Row changes, as a SQLite changeset.
    Changes(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// What the leader replicates for one committed write.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The steps, in execution order.
    pub steps: Vec<Step>,
}

impl Entry {
    /// Bytes the entry carries (its SQL and changesets).
    pub fn size(&self) -> usize {
        self.steps
            .iter()
            .map(|step| match step {
                Step::Ddl(sql) => sql.len(),
                Step::Changes(bytes) => bytes.len(),
            })
            .sum()
    }
}

/// What a write did on the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The entry to replicate.
    pub entry: Entry,
    /// Rows changed by the last data statement.
    pub rows_affected: u64,
    /// The rowid of the last insert (MySQL's `LAST_INSERT_ID()`).
    pub last_insert_id: i64,
}

/// Result columns: name and declared (MySQL) type, when known.
pub type Columns = Vec<(String, Option<String>)>;

/// A query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// Declared column types, as written in `CREATE TABLE` (MySQL type names), when known.
    pub declared: Vec<Option<String>>,
    /// The rows.
    pub rows: Vec<Vec<rusqlite::types::Value>>,
}

/// Whether a SQLite statement changes the schema (sessions do not record those).
pub fn is_ddl(sql: &str) -> bool {
    let first = sql
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    matches!(first.as_str(), "CREATE" | "DROP" | "ALTER")
}

/// The table where a replica keeps its own bookkeeping (the Raft log position it has applied
/// and the membership it knows), written in the same SQLite transaction as the data, so a
/// restart resumes exactly where the data is. Not user-visible, not in checksums.
pub const META_TABLE: &str = "_quartet_meta";

/// The databases created with `CREATE DATABASE` (replicated like user data, so it is part of
/// the checksum).
pub const SCHEMATA_TABLE: &str = crate::dialect::SCHEMATA_TABLE;

/// Whether `name` is one of the replica's own tables, left out of checksums: its bookkeeping
/// and SQLite's.
pub fn is_internal_table(name: &str) -> bool {
    name == META_TABLE || name.starts_with("sqlite_")
}

/// One replica's database.
pub struct Engine {
    conn: rusqlite::Connection,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// A database in memory (tests, throwaway replicas).
    pub fn in_memory() -> Result<Self, EngineError> {
        Self::prepared(rusqlite::Connection::open_in_memory()?)
    }

    /// The database at `path`, created if absent.
    ///
    /// Durability comes from the Raft log (fsynced before an entry counts towards a
    /// majority), so the state machine itself syncs only at WAL checkpoints
    /// (`synchronous = NORMAL`): after a crash it may be behind its log, never ahead of it,
    /// and the log replays the rest.
    pub fn open(path: &std::path::Path) -> Result<Self, EngineError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::prepared(conn)
    }

    /// A read-only connection to the database at `path` (which [`Engine::open`] made), for
    /// reads served beside the engine's own connection.
    pub fn open_reader(path: &std::path::Path) -> Result<Self, EngineError> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Ok(Self { conn })
    }

    fn prepared(conn: rusqlite::Connection) -> Result<Self, EngineError> {
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS {SCHEMATA_TABLE} (name TEXT PRIMARY KEY);"
        ))?;
        Ok(Self { conn })
    }

    /// Adds MySQL's `information_schema.schemata`, `.tables` and `.columns` as views over
    /// SQLite's catalog, `default_database` always listed. They are TEMP views: this
    /// connection's own, never in the data file, a snapshot or a checksum.
    pub fn with_catalog(self, default_database: &str) -> Result<Self, EngineError> {
        let db = |expr: &str| format!("substr({expr}, 1, instr({expr}, '.') - 1)");
        let table = |expr: &str| format!("substr({expr}, instr({expr}, '.') + 1)");
        let default = default_database.replace('\'', "''");
        self.conn.execute_batch(&format!(
            r#"
            CREATE TEMP VIEW IF NOT EXISTS "information_schema.schemata" AS
              SELECT 'def' AS CATALOG_NAME, name AS SCHEMA_NAME,
                     'utf8mb4' AS DEFAULT_CHARACTER_SET_NAME,
                     'utf8mb4_0900_ai_ci' AS DEFAULT_COLLATION_NAME, NULL AS SQL_PATH
              FROM (SELECT name FROM main.{SCHEMATA_TABLE}
                    UNION SELECT '{default}' UNION SELECT 'information_schema');
            CREATE TEMP VIEW IF NOT EXISTS "information_schema.tables" AS
              SELECT 'def' AS TABLE_CATALOG, {schema} AS TABLE_SCHEMA, {name} AS TABLE_NAME,
                     'BASE TABLE' AS TABLE_TYPE, 'InnoDB' AS ENGINE, 10 AS VERSION,
                     'Dynamic' AS ROW_FORMAT, 'utf8mb4_0900_ai_ci' AS TABLE_COLLATION,
                     '' AS TABLE_COMMENT
              FROM main.sqlite_master WHERE type = 'table' AND instr(name, '.') > 0;
            CREATE TEMP VIEW IF NOT EXISTS "information_schema.columns" AS
              SELECT 'def' AS TABLE_CATALOG, {m_schema} AS TABLE_SCHEMA, {m_name} AS TABLE_NAME,
                     p.name AS COLUMN_NAME, p.cid + 1 AS ORDINAL_POSITION,
                     p.dflt_value AS COLUMN_DEFAULT,
                     CASE WHEN p."notnull" THEN 'NO' ELSE 'YES' END AS IS_NULLABLE,
                     lower(CASE WHEN instr(p.type, '(') > 0
                           THEN substr(p.type, 1, instr(p.type, '(') - 1) ELSE p.type END)
                       AS DATA_TYPE,
                     lower(p.type) AS COLUMN_TYPE,
                     CASE WHEN p.pk > 0 THEN 'PRI' ELSE '' END AS COLUMN_KEY, '' AS EXTRA
              FROM main.sqlite_master AS m JOIN pragma_table_info(m.name) AS p
              WHERE m.type = 'table' AND instr(m.name, '.') > 0;
            "#,
            schema = db("name"),
            name = table("name"),
            m_schema = db("m.name"),
            m_name = table("m.name"),
        ))?;
        Ok(self)
    }

    /// One bookkeeping value (see [`META_TABLE`]).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        Self::meta_on(&self.conn, key)
    }

    /// [`Engine::meta`] on `conn`.
    pub fn meta_on(conn: &rusqlite::Connection, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let mut statement =
            conn.prepare_cached(&format!("SELECT value FROM {META_TABLE} WHERE key = ?1"))?;
        let mut rows = statement.query([key])?;
        Ok(match rows.next()? {
            Some(row) => Some(row.get(0)?),
            None => None,
        })
    }

    /// Runs `statements` as one transaction and keeps it: a single replica's write, for tests
    /// and tools. A replicated write uses [`Engine::execute_bound`] and then [`Engine::apply`].
    pub fn write(&mut self, statements: &[String]) -> Result<Outcome, EngineError> {
        let bound: Vec<(&str, &[Value])> =
            statements.iter().map(|s| (s.as_str(), &[][..])).collect();
        self.run_bound(&bound, true)
    }

    /// Runs `statements` (each with its `?` parameters) as one transaction, records what
    /// they changed, and rolls back: the returned entry, once committed by the group, is
    /// applied on every replica, this one included. On error nothing is recorded.
    pub fn execute_bound(
        &mut self,
        statements: &[(&str, &[Value])],
    ) -> Result<Outcome, EngineError> {
        self.run_bound(statements, false)
    }

    /// Like [`Engine::execute_bound`], but keeps the changes: inside an open transaction
    /// (the leader's speculative one, see `actor.rs`) they become part of it.
    pub fn execute_kept(&self, statements: &[(&str, &[Value])]) -> Result<Outcome, EngineError> {
        self.run_bound(statements, true)
    }

    /// Runs SQL that returns nothing (transaction control, bookkeeping).
    pub fn exec(&self, sql: &str) -> Result<(), EngineError> {
        self.conn.execute_batch(sql)?;
        Ok(())
    }

    /// Records bookkeeping values in whatever transaction is open.
    pub fn put_meta(&self, meta: &[(&str, &[u8])]) -> Result<(), EngineError> {
        Self::put_meta_on(&self.conn, meta)
    }

    fn put_meta_on(conn: &rusqlite::Connection, meta: &[(&str, &[u8])]) -> Result<(), EngineError> {
        for (key, value) in meta {
            conn.prepare_cached(&format!(
                "INSERT INTO {META_TABLE} (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ))?
            .execute(rusqlite::params![key, value])?;
        }
        Ok(())
    }

    /// Runs `statements` under a savepoint (a transaction of its own when none is open) and
    /// records their changes; keeps them or rolls them back. On error nothing stays.
    fn run_bound(
        &self,
        statements: &[(&str, &[Value])],
        keep: bool,
    ) -> Result<Outcome, EngineError> {
        self.conn.execute_batch("SAVEPOINT quartet_write")?;
        let recorded = Self::record(&self.conn, statements);
        if recorded.is_ok() && keep {
            self.conn.execute_batch("RELEASE quartet_write")?;
        } else if !self.conn.is_autocommit() {
            self.conn
                .execute_batch("ROLLBACK TO quartet_write; RELEASE quartet_write")?;
        }
        // Otherwise SQLite rolled the whole transaction back itself (it does when a write is
        // interrupted): nothing of it stays, the savepoint with it.
        recorded
    }

    fn record(
        conn: &rusqlite::Connection,
        statements: &[(&str, &[Value])],
    ) -> Result<Outcome, EngineError> {
        let mut entry = Entry::default();
        let (mut rows_affected, mut last_insert_id) = (0, 0);
        let mut pending: Vec<(&str, &[Value])> = Vec::new();
        // Consecutive data statements share one session; DDL closes it (sessions do not
        // record schema changes and must not span them).
        let flush = |pending: &mut Vec<(&str, &[Value])>,
                     entry: &mut Entry,
                     rows: &mut u64,
                     last: &mut i64|
         -> Result<(), EngineError> {
            if pending.is_empty() {
                return Ok(());
            }
            let mut session = recorder(conn)?;
            for (sql, params) in pending.drain(..) {
                *rows = conn.execute(sql, rusqlite::params_from_iter(params.iter()))? as u64;
                *last = conn.last_insert_rowid();
            }
            let mut bytes = Vec::new();
            session.changeset_strm(&mut bytes)?;
            if !bytes.is_empty() {
                entry.steps.push(Step::Changes(bytes));
            }
            Ok(())
        };
        for &(sql, params) in statements {
            if is_ddl(sql) {
                flush(
                    &mut pending,
                    &mut entry,
                    &mut rows_affected,
                    &mut last_insert_id,
                )?;
                conn.execute_batch(sql)?;
                entry.steps.push(Step::Ddl(sql.to_owned()));
            } else {
                pending.push((sql, params));
            }
        }
        flush(
            &mut pending,
            &mut entry,
            &mut rows_affected,
            &mut last_insert_id,
        )?;
        Ok(Outcome {
            entry,
            rows_affected,
            last_insert_id,
        })
    }

    /// The number of `?` parameters of `sql` and the names and declared types of its result
    /// columns, without running it.
    pub fn describe(&self, sql: &str) -> Result<(usize, Columns), EngineError> {
        Self::describe_on(&self.conn, sql)
    }

    /// [`Engine::describe`] on `conn`.
    pub fn describe_on(
        conn: &rusqlite::Connection,
        sql: &str,
    ) -> Result<(usize, Columns), EngineError> {
        let statement = conn.prepare(sql)?;
        let columns = statement
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.decl_type().map(str::to_owned)))
            .collect();
        Ok((statement.parameter_count(), columns))
    }

    /// Applies a leader's entry on a follower, as one transaction.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), EngineError> {
        self.apply_with_meta(Some(entry), &[])
    }

    /// Applies `entry` (if any) and records `meta` in one transaction. If the entry does not
    /// apply, nothing of it stays, the bookkeeping is still recorded (every replica makes the
    /// same decision about the same entry), and the entry's error is returned.
    pub fn apply_with_meta(
        &self,
        entry: Option<&Entry>,
        meta: &[(&str, &[u8])],
    ) -> Result<(), EngineError> {
        let tx = self.conn.unchecked_transaction()?;
        let applied = match entry {
            Some(entry) => {
                tx.execute_batch("SAVEPOINT entry")?;
                let applied = Self::apply_steps(&tx, entry);
                match &applied {
                    Ok(()) => tx.execute_batch("RELEASE entry")?,
                    Err(_) => tx.execute_batch("ROLLBACK TO entry; RELEASE entry")?,
                }
                applied
            }
            None => Ok(()),
        };
        Self::put_meta_on(&tx, meta)?;
        tx.commit()?;
        applied
    }

    fn apply_steps(tx: &rusqlite::Transaction<'_>, entry: &Entry) -> Result<(), EngineError> {
        for step in &entry.steps {
            match step {
                Step::Ddl(sql) => tx.execute_batch(sql)?,
                Step::Changes(bytes) => {
                    let conflict = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
                    let seen = conflict.clone();
                    let result = tx.apply_strm(
                        &mut bytes.as_slice(),
                        None::<fn(&str) -> bool>,
                        move |kind: ConflictType, _item| {
                            *seen.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(format!("{kind:?}"));
                            ConflictAction::SQLITE_CHANGESET_ABORT
                        },
                    );
                    if let Some(kind) = conflict.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        return Err(EngineError::Diverged(kind));
                    }
                    result?;
                }
            }
        }
        Ok(())
    }

    /// Writes a consistent copy of the whole database to `path` (which must not exist).
    pub fn snapshot_to(&self, path: &std::path::Path) -> Result<(), EngineError> {
        self.conn
            .execute("VACUUM INTO ?1", [path.to_string_lossy().as_ref()])?;
        Ok(())
    }

    /// Replaces the whole database with the copy at `path` (made by [`Engine::snapshot_to`]).
    pub fn restore_from(&mut self, path: &std::path::Path) -> Result<(), EngineError> {
        self.conn.restore(
            rusqlite::MAIN_DB,
            path,
            None::<fn(rusqlite::backup::Progress)>,
        )?;
        Ok(())
    }

    /// Runs a read-only query.
    pub fn query(&self, sql: &str) -> Result<Rows, EngineError> {
        self.query_bound(sql, &[])
    }

    /// Runs a read-only query with its `?` parameters.
    pub fn query_bound(&self, sql: &str, params: &[Value]) -> Result<Rows, EngineError> {
        Self::query_on(&self.conn, sql, params)
    }

    /// Runs a read-only query in a read transaction of its own, the schema read inside it
    /// first: on a connection other than the one that changes the schema, a statement
    /// prepared on a stale schema would report the old columns (`SELECT *` after `ALTER`).
    pub fn query_snapshot(&self, sql: &str, params: &[Value]) -> Result<Rows, EngineError> {
        self.conn.execute_batch("BEGIN")?;
        let rows = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(EngineError::from)
            .and_then(|()| Self::query_on(&self.conn, sql, params));
        // Nothing was written: ending the read transaction cannot lose anything.
        let _ = self.conn.execute_batch("ROLLBACK");
        rows
    }

    /// The connection, for the engine thread's interactive transactions.
    pub fn connection(&self) -> &rusqlite::Connection {
        &self.conn
    }

    /// Runs a query on `conn` (the engine's connection, or a transaction on it).
    pub fn query_on(
        conn: &rusqlite::Connection,
        sql: &str,
        params: &[Value],
    ) -> Result<Rows, EngineError> {
        let mut statement = conn.prepare(sql)?;
        let columns: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let declared = statement
            .columns()
            .iter()
            .map(|c| c.decl_type().map(str::to_owned))
            .collect();
        let width = columns.len();
        let mut rows = Vec::new();
        let mut cursor = statement.query(rusqlite::params_from_iter(params.iter()))?;
        while let Some(row) = cursor.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(row.get::<_, rusqlite::types::Value>(i)?);
            }
            rows.push(values);
        }
        Ok(Rows {
            columns,
            declared,
            rows,
        })
    }

    /// SHA-256 over the schema and every table's rows in primary-key order. Replicas that
    /// applied the same entries have the same checksum.
    pub fn checksum(&self) -> Result<[u8; 32], EngineError> {
        let mut hash = Sha256::new();
        let mut tables = self.conn.prepare("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') AND sql IS NOT NULL ORDER BY type, name")?;
        let schema: Vec<(String, String)> = tables
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (name, sql) in schema.iter().filter(|(name, _)| !is_internal_table(name)) {
            hash.update(name.as_bytes());
            hash.update([0]);
            hash.update(sql.as_bytes());
            hash.update([0]);
        }
        let names: Vec<String> = self
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?
            .into_iter()
            .filter(|name| !is_internal_table(name))
            .collect();
        for table in names {
            let quoted = format!("\"{}\"", table.replace('"', "\"\""));
            // Primary-key columns, in key order, give a stable row order even WITHOUT ROWID.
            let mut pk: Vec<(i64, String)> = self
                .conn
                .prepare(&format!(
                    "SELECT pk, name FROM pragma_table_info('{}') WHERE pk > 0",
                    table.replace('\'', "''")
                ))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            pk.sort();
            let order = pk
                .iter()
                .map(|(_, c)| format!("\"{}\"", c.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = if order.is_empty() {
                format!("SELECT * FROM {quoted}")
            } else {
                format!("SELECT * FROM {quoted} ORDER BY {order}")
            };
            let mut statement = self.conn.prepare(&sql)?;
            let width = statement.column_count();
            let mut cursor = statement.query([])?;
            while let Some(row) = cursor.next()? {
                for i in 0..width {
                    match row.get_ref(i)? {
                        ValueRef::Null => hash.update([0]),
                        ValueRef::Integer(n) => {
                            hash.update([1]);
                            hash.update(n.to_le_bytes());
                        }
                        ValueRef::Real(f) => {
                            hash.update([2]);
                            hash.update(f.to_le_bytes());
                        }
                        ValueRef::Text(t) => {
                            hash.update([3]);
                            hash.update((t.len() as u64).to_le_bytes());
                            hash.update(t);
                        }
                        ValueRef::Blob(b) => {
                            hash.update([4]);
                            hash.update((b.len() as u64).to_le_bytes());
                            hash.update(b);
                        }
                    }
                }
            }
        }
        Ok(hash.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::{Context, Plan, translate};

    /// A MySQL query as the engine runs it.
    fn q(mysql: &str) -> String {
        sql(mysql).remove(0)
    }

    fn sql(mysql: &str) -> Vec<String> {
        let context = Context {
            database: Some("app".into()),
            ..Context::default()
        };
        match translate(mysql, &context).expect("translates").remove(0) {
            Plan::Sqlite { statements, .. } => statements,
            other => panic!("{other:?}"),
        }
    }

    fn write(engine: &mut Engine, mysql: &[&str]) -> Outcome {
        let statements: Vec<String> = mysql.iter().flat_map(|m| sql(m)).collect();
        engine.write(&statements).expect("write")
    }

    #[test]
    fn followers_applying_changesets_match_the_leader_byte_for_byte() {
        let mut leader = Engine::in_memory().expect("leader");
        let mut follower = Engine::in_memory().expect("follower");
        let mut entries = vec![write(
            &mut leader,
            &[
                "CREATE TABLE events (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, token DOUBLE, at VARCHAR(32) DEFAULT CURRENT_TIMESTAMP, note TEXT)",
                "CREATE TABLE counters (name VARCHAR(16) PRIMARY KEY, n INT NOT NULL)",
            ],
        )
        .entry];
        // Non-deterministic values: a follower re-running this SQL would get other numbers.
        let outcome = write(
            &mut leader,
            &[
                "INSERT INTO events (token, note) VALUES (RANDOM(), 'a'), (RANDOM(), 'b'), (RANDOM(), NULL)",
            ],
        );
        assert_eq!((outcome.rows_affected, outcome.last_insert_id), (3, 3));
        let tokens_at_insert = leader
            .query(&q("SELECT token FROM events ORDER BY id"))
            .expect("q");
        entries.push(outcome.entry);
        entries.push(
            write(
                &mut leader,
                &[
                    "INSERT INTO counters VALUES ('x', 1) ON DUPLICATE KEY UPDATE n = n + 1",
                    "UPDATE events SET note = 'z' WHERE id = 2",
                    "DELETE FROM events WHERE id = 1",
                ],
            )
            .entry,
        );
        entries.push(
            write(
                &mut leader,
                &["INSERT INTO counters VALUES ('x', 1) ON DUPLICATE KEY UPDATE n = n + 1"],
            )
            .entry,
        );

        for entry in &entries {
            follower.apply(entry).expect("applies");
        }
        assert_eq!(
            leader.checksum().expect("sum"),
            follower.checksum().expect("sum")
        );
        assert_eq!(
            follower
                .query(&q("SELECT n FROM counters"))
                .expect("query")
                .rows,
            [[rusqlite::types::Value::Integer(2)]]
        );
        assert_eq!(
            leader
                .query(&q("SELECT token FROM events ORDER BY id"))
                .expect("q"),
            follower
                .query(&q("SELECT token FROM events ORDER BY id"))
                .expect("q")
        );

        // What replicating SQL instead would do: the same statements, other random numbers.
        let mut replayed = Engine::in_memory().expect("replayed");
        write(
            &mut replayed,
            &[
                "CREATE TABLE events (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, token DOUBLE, at VARCHAR(32) DEFAULT CURRENT_TIMESTAMP, note TEXT)",
                "CREATE TABLE counters (name VARCHAR(16) PRIMARY KEY, n INT NOT NULL)",
            ],
        );
        write(
            &mut replayed,
            &[
                "INSERT INTO events (token, note) VALUES (RANDOM(), 'a'), (RANDOM(), 'b'), (RANDOM(), NULL)",
            ],
        );
        assert_ne!(
            replayed
                .query(&q("SELECT token FROM events ORDER BY id"))
                .expect("q"),
            tokens_at_insert
        );
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind_and_a_diverged_follower_refuses() {
        let mut leader = Engine::in_memory().expect("leader");
        write(
            &mut leader,
            &["CREATE TABLE t (id INT PRIMARY KEY, v TEXT)"],
        );
        let before = leader.checksum().expect("sum");
        let failing: Vec<String> = [
            sql("INSERT INTO t VALUES (1, 'a')"),
            sql("INSERT INTO t VALUES (1, 'duplicate')"),
        ]
        .concat();
        assert!(leader.write(&failing).is_err());
        assert_eq!(
            leader.checksum().expect("sum"),
            before,
            "the first insert was rolled back with the second"
        );

        let mut follower = Engine::in_memory().expect("follower");
        follower
            .apply(
                &write(
                    &mut Engine::in_memory().expect("scratch"),
                    &["CREATE TABLE t (id INT PRIMARY KEY, v TEXT)"],
                )
                .entry,
            )
            .expect("schema");
        let insert = write(&mut leader, &["INSERT INTO t VALUES (7, 'leader')"]).entry;
        follower
            .write(&sql("INSERT INTO t VALUES (7, 'stray')"))
            .expect("local write");
        assert!(matches!(
            follower.apply(&insert),
            Err(EngineError::Diverged(_))
        ));
        assert_eq!(
            follower.query(&q("SELECT v FROM t")).expect("q").rows,
            [[rusqlite::types::Value::Text("stray".into())]],
            "nothing half-applied"
        );
    }

    #[test]
    fn sqlite_failures_become_the_mysql_errors_clients_expect() {
        let mut engine = Engine::in_memory().expect("engine");
        write(
            &mut engine,
            &[
                "CREATE TABLE t (id INT PRIMARY KEY, u VARCHAR(8) UNIQUE, n TEXT NOT NULL, k INT CHECK (k > 0))",
                "CREATE INDEX i ON t (u)",
            ],
        );
        write(&mut engine, &["INSERT INTO t VALUES (1, 'a', 'x', 1)"]);
        let fail = |engine: &mut Engine, mysql: &str| {
            let statements = sql(mysql);
            let e = match engine.write(&statements) {
                Err(e) => e,
                Ok(_) => match engine.query(&statements[0]) {
                    Err(e) => e,
                    Ok(rows) => panic!("{mysql} should fail, got {rows:?}"),
                },
            };
            let m = e.to_mysql("app");
            (m.code, m.sqlstate, m.message)
        };
        assert_eq!(
            fail(&mut engine, "INSERT INTO t VALUES (1, 'b', 'x', 1)"),
            (1062, "23000", "Duplicate entry for key 't.PRIMARY'".into())
        );
        assert_eq!(
            fail(&mut engine, "INSERT INTO t VALUES (2, 'a', 'x', 1)"),
            (1062, "23000", "Duplicate entry for key 't.u'".into())
        );
        assert_eq!(
            fail(&mut engine, "INSERT INTO t VALUES (3, 'c', NULL, 1)"),
            (1048, "23000", "Column 'n' cannot be null".into())
        );
        assert_eq!(
            fail(&mut engine, "INSERT INTO t VALUES (4, 'd', 'x', 0)"),
            (
                3819,
                "HY000",
                "Check constraint 'k > 0' is violated.".into()
            )
        );
        assert_eq!(
            fail(&mut engine, "SELECT * FROM nope"),
            (1146, "42S02", "Table 'app.nope' doesn't exist".into())
        );
        assert_eq!(
            fail(&mut engine, "SELECT nope FROM t"),
            (
                1054,
                "42S22",
                "Unknown column 'nope' in 'field list'".into()
            )
        );
        assert_eq!(
            fail(&mut engine, "INSERT INTO t (id, missing) VALUES (5, 1)"),
            (
                1054,
                "42S22",
                "Unknown column 'missing' in 'field list'".into()
            )
        );
        assert_eq!(
            fail(&mut engine, "CREATE TABLE t (id INT PRIMARY KEY)"),
            (1050, "42S01", "Table 't' already exists".into())
        );
        assert_eq!(
            fail(&mut engine, "CREATE INDEX i ON t (u)"),
            (1061, "42000", "Duplicate key name 'i'".into())
        );
    }

    #[test]
    fn query_reports_mysql_declared_types() {
        let mut engine = Engine::in_memory().expect("engine");
        write(
            &mut engine,
            &["CREATE TABLE p (id BIGINT PRIMARY KEY, name VARCHAR(40), price DECIMAL(10,2))"],
        );
        let rows = engine
            .query(&q("SELECT id, name, price FROM p"))
            .expect("query");
        assert_eq!(
            rows.declared,
            [
                Some("BIGINT".into()),
                Some("VARCHAR(40)".into()),
                Some("DECIMAL(10,2)".into())
            ]
        );
    }
}
