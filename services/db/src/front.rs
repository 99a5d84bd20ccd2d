//! The MySQL front: accepts MySQL clients, authenticates them, and runs their statements
//! through the dialect layer on the engine thread ([`crate::actor`]).
//!
//! Sessions follow MySQL's transaction rules: autocommit by default; `BEGIN` / `START
//! TRANSACTION`, or `SET autocommit = 0` and then any statement, open a transaction that
//! `COMMIT` or `ROLLBACK` ends; a disconnect rolls it back. Statements run on the replica
//! ([`crate::replica`]): writes and linearizable reads on the group's leader, reads with
//! `SET quartet_read_staleness_ms = N` on any replica at most N ms behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::dialect::{self, Context, MysqlError, Plan, Setting, Show, Transaction};
use crate::engine::Rows;
use crate::replica::{Consistency, Replica};
use crate::wire::{self, Conn, Reader, WireError, capability};

/// What a client may make the front spend (docs/SECURITY.md lists them).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time from accepting a connection to the end of its login.
    pub connect_timeout: Duration,
    /// The longest packet accepted after login.
    pub max_allowed_packet: usize,
}

impl Default for Limits {
    fn default() -> Self {
        crate::MysqlSettings::default().limits()
    }
}

/// What the front serves.
pub struct Front {
    engine: Arc<Replica>,
    database: String,
    users: HashMap<String, String>,
    version: String,
    next_connection: std::sync::atomic::AtomicU32,
    limits: Limits,
    /// One permit per connection being served.
    connections: Arc<tokio::sync::Semaphore>,
    /// The sessions logged in, by connection id: cancelling one ends it (`KILL`).
    sessions: std::sync::Mutex<HashMap<u64, tokio_util::sync::CancellationToken>>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// Catalog lookups (does a database exist?) accept a replica's own view: schema changes are
/// rare and a stale answer only delays an error.
const CATALOG: Consistency = Consistency::Stale(Duration::from_secs(3600));

/// The session variable that opts into reads from any replica at most this many ms behind.
pub const STALENESS_VARIABLE: &str = "quartet_read_staleness_ms";

/// One client connection's state.
struct Client {
    /// The engine's name for this session.
    id: u64,
    /// What the dialect layer needs: current database, last insert id, variables.
    context: Context,
    /// `SET autocommit`.
    autocommit: bool,
    /// Whether a transaction is open on the engine.
    in_transaction: bool,
    /// `SET quartet_read_staleness_ms`: zero means linearizable reads.
    staleness: Duration,
    /// Whether a `COM_QUERY` may hold several statements: the client asked for
    /// `CLIENT_MULTI_STATEMENTS` at login or turned it on with `COM_SET_OPTION`. Without it a
    /// second statement is a syntax error, as in MySQL, so that an injected `; DROP TABLE`
    /// never runs.
    multi_statements: bool,
    /// The client asked for OK packets in place of EOF packets.
    deprecate_eof: bool,
    /// Cancelled by `KILL CONNECTION` from another session.
    ended: tokio_util::sync::CancellationToken,
}

impl Client {
    fn status(&self) -> u16 {
        let mut status = 0;
        if self.autocommit {
            status |= wire::STATUS_AUTOCOMMIT;
        }
        if self.in_transaction {
            status |= wire::STATUS_IN_TRANS;
        }
        status
    }

    fn set_variable(&mut self, name: &str, value: &str) {
        for (k, v) in &mut self.context.variables {
            if k == name {
                *v = value.to_owned();
            }
        }
    }

    fn consistency(&self) -> Consistency {
        if self.in_transaction {
            Consistency::Transaction
        } else if self.staleness.is_zero() {
            Consistency::Linearizable
        } else {
            Consistency::Stale(self.staleness)
        }
    }
}

const SERVER_CAPABILITIES: u32 = capability::LONG_PASSWORD
    | capability::FOUND_ROWS
    | capability::LONG_FLAG
    | capability::CONNECT_WITH_DB
    | capability::PROTOCOL_41
    | capability::TRANSACTIONS
    | capability::SECURE_CONNECTION
    | capability::MULTI_STATEMENTS
    | capability::MULTI_RESULTS
    | capability::PLUGIN_AUTH
    | capability::CONNECT_ATTRS
    | capability::PLUGIN_AUTH_LENENC_CLIENT_DATA
    | capability::DEPRECATE_EOF;

impl Front {
    /// A front for `database` on `replica`, accepting `users` (name → password).
    pub fn new(replica: Arc<Replica>, database: &str, users: HashMap<String, String>) -> Self {
        let limits = Limits::default();
        Self {
            engine: replica,
            database: database.to_owned(),
            users,
            version: "8.0.36-quartet".into(),
            next_connection: std::sync::atomic::AtomicU32::new(1),
            connections: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            limits,
            sessions: std::sync::Mutex::default(),
        }
    }

    /// The same front with other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        self.limits = limits;
        self
    }

    /// Accepts clients until the token is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Answers are flushed whole; waiting for more (Nagle) only adds latency.
                    let _ = stream.set_nodelay(true);
                    let front = self.clone();
                    let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                        tokio::spawn(async move { front.refuse(stream).await });
                        continue;
                    };
                    tokio::spawn(async move {
                        if let Err(e) = front.session(stream).await {
                            tracing::debug!(%peer, error = %e, "MySQL connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting a MySQL connection failed"),
            }
        }
    }

    /// The variables a session starts with; `connection` is its id (`@@pseudo_thread_id`,
    /// `CONNECTION_ID()`).
    fn variables(&self, connection: u64) -> Vec<(String, String)> {
        let max_execution_time = self.engine.limits().max_statement.as_millis().to_string();
        let connection = connection.to_string();
        let max_allowed_packet = self.limits.max_allowed_packet.to_string();
        [
            ("version", self.version.as_str()),
            ("version_comment", "Quartet"),
            ("auto_increment_increment", "1"),
            ("autocommit", "1"),
            ("max_allowed_packet", &max_allowed_packet),
            ("sql_mode", "STRICT_TRANS_TABLES"),
            ("transaction_isolation", "SERIALIZABLE"),
            ("character_set_client", "utf8mb4"),
            ("character_set_connection", "utf8mb4"),
            ("character_set_results", "utf8mb4"),
            ("collation_connection", "utf8mb4_0900_ai_ci"),
            ("time_zone", "+00:00"),
            ("system_time_zone", "UTC"),
            ("lower_case_table_names", "0"),
            ("wait_timeout", "28800"),
            ("max_execution_time", &max_execution_time),
            ("pseudo_thread_id", &connection),
            ("interactive_timeout", "28800"),
            ("net_write_timeout", "60"),
            ("license", "Apache-2.0"),
            (STALENESS_VARIABLE, "0"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// Answers a connection past `max_connections` with MySQL's error 1040 in place of the
    /// greeting, as MySQL does, and closes it.
    async fn refuse(&self, stream: tokio::net::TcpStream) {
        let mut conn = Conn::new(stream);
        let message = format!(
            "Too many connections: this replica serves at most {} (mysql.max_connections)",
            self.limits.max_connections
        );
        let answered = async {
            conn.write(&wire::err(1040, "08004", &message)).await?;
            conn.flush().await
        };
        let _ = tokio::time::timeout(self.limits.connect_timeout, answered).await;
    }

    async fn session<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Result<(), WireError> {
        let mut conn = Conn::new(stream);
        let login = tokio::time::timeout(self.limits.connect_timeout, self.login(&mut conn));
        let Ok(logged_in) = login.await else {
            tracing::debug!("a MySQL client did not log in within mysql.connect_timeout_ms");
            return Ok(());
        };
        let Some(mut client) = logged_in? else {
            return Ok(());
        };
        conn.set_packet_limit(self.limits.max_allowed_packet);
        let deprecate_eof = client.deprecate_eof;
        self.sessions_lock().insert(client.id, client.ended.clone());
        let served = self.commands(&mut conn, &mut client, deprecate_eof).await;
        self.sessions_lock().remove(&client.id);
        // Whatever the client left open is rolled back.
        self.engine.close(client.id);
        match served {
            Err(WireError::TooLarge { limit }) => {
                let message =
                    format!("Got a packet bigger than 'max_allowed_packet' bytes ({limit})");
                conn.write(&wire::err(1153, "08S01", &message)).await?;
                conn.flush().await
            }
            other => other,
        }
    }

    fn sessions_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, tokio_util::sync::CancellationToken>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `KILL [QUERY | CONNECTION] id`: stops the session's running read; unless `query_only`,
    /// also ends the session (its transaction is rolled back).
    fn kill(&self, id: u64, query_only: bool) -> Result<(), MysqlError> {
        let sessions = self.sessions_lock();
        let Some(ended) = sessions.get(&id) else {
            return Err(MysqlError {
                code: 1094,
                sqlstate: "HY000",
                message: format!("Unknown thread id: {id}"),
            });
        };
        self.engine.kill_query(id);
        if !query_only {
            ended.cancel();
        }
        Ok(())
    }

    /// The greeting and the login; `None` when the client was refused (and told so).
    async fn login<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<S>,
    ) -> Result<Option<Client>, WireError> {
        let mut scramble = [0u8; 20];
        getrandom::fill(&mut scramble).expect("the OS random source is available");
        // The scramble must not contain NUL (it is sent NUL-terminated).
        for b in &mut scramble {
            *b = (*b % 94) + 33;
        }
        let id = self
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        conn.write(&wire::handshake(
            id,
            &self.version,
            &scramble,
            SERVER_CAPABILITIES,
        ))
        .await?;
        conn.flush().await?;
        let response = wire::parse_handshake_response(&conn.read().await?)?;
        let mut auth_response = response.auth_response.clone();
        let password = self.users.get(&response.user);
        let switch_to = |plugin: &str| {
            let mut switch = vec![0xFE];
            switch.extend_from_slice(plugin.as_bytes());
            switch.push(0);
            switch.extend_from_slice(&scramble);
            switch.push(0);
            switch
        };
        let accepted = if response.plugin == "caching_sha2_password" {
            // MySQL 8's default plugin, answered on its fast path: the password is known here.
            // A client that chose it itself sends nothing yet and waits for its scramble.
            if auth_response.is_empty() && password.is_some_and(|p| !p.is_empty()) {
                conn.write(&switch_to("caching_sha2_password")).await?;
                conn.flush().await?;
                auth_response = conn.read().await?;
            }
            let accepted = password.is_some_and(|p| {
                wire::check_caching_sha2_password(p.as_bytes(), &scramble, &auth_response)
            });
            if accepted {
                conn.write(&wire::FAST_AUTH_SUCCESS).await?;
            }
            accepted
        } else {
            if response.plugin != "mysql_native_password" {
                // Ask the client to answer with mysql_native_password over the same scramble.
                conn.write(&switch_to("mysql_native_password")).await?;
                conn.flush().await?;
                auth_response = conn.read().await?;
            }
            password.is_some_and(|p| {
                wire::check_native_password(p.as_bytes(), &scramble, &auth_response)
            })
        };
        let deprecate_eof = response.capabilities & capability::DEPRECATE_EOF != 0;
        if !accepted {
            let message = format!(
                "Access denied for user '{}'@'%' (using password: {})",
                response.user,
                if auth_response.is_empty() {
                    "NO"
                } else {
                    "YES"
                }
            );
            conn.write(&wire::err(1045, "28000", &message)).await?;
            conn.flush().await?;
            return Ok(None);
        }
        if let Some(db) = &response.database
            && let Err(e) = self.known_database(u64::from(id), db).await
        {
            conn.write(&mysql_err(&e)).await?;
            conn.flush().await?;
            return Ok(None);
        }
        let variables = self.variables(u64::from(id));
        Ok(Some(Client {
            id: u64::from(id),
            context: Context {
                database: response.database.clone(),
                last_insert_id: 0,
                variables,
            },
            autocommit: true,
            in_transaction: false,
            staleness: Duration::ZERO,
            multi_statements: response.capabilities & capability::MULTI_STATEMENTS != 0,
            deprecate_eof,
            ended: tokio_util::sync::CancellationToken::new(),
        }))
    }

    async fn commands<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<S>,
        client: &mut Client,
        deprecate_eof: bool,
    ) -> Result<(), WireError> {
        let mut prepared: HashMap<u32, Prepared> = HashMap::new();
        let mut next_statement: u32 = 1;
        conn.write(&wire::ok(0, 0, wire::STATUS_AUTOCOMMIT, ""))
            .await?;
        conn.flush().await?;

        loop {
            conn.reset_sequence();
            let read = tokio::select! {
                read = conn.read() => read,
                // KILL CONNECTION from another session (or this one).
                () = client.ended.cancelled() => return Ok(()),
            };
            let packet = match read {
                Ok(p) => p,
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let mut r = Reader::new(&packet);
            let command = r.u8()?;
            match command {
                0x01 => return Ok(()),
                0x0E => conn.write(&wire::ok(0, 0, client.status(), "")).await?,
                0x02 => {
                    let db = String::from_utf8_lossy(r.rest()).into_owned();
                    match self.known_database(client.id, &db).await {
                        Ok(()) => {
                            client.context.database = Some(db);
                            conn.write(&wire::ok(0, 0, client.status(), "")).await?;
                        }
                        Err(e) => conn.write(&mysql_err(&e)).await?,
                    }
                }
                0x03 => {
                    let sql = String::from_utf8_lossy(r.rest()).into_owned();
                    match translate_off_runtime(sql, &client.context).await {
                        Err(e) => conn.write(&mysql_err(&e)).await?,
                        Ok(plans) if plans.len() > 1 && !client.multi_statements => {
                            conn.write(&mysql_err(&MysqlError::syntax(format!(
                                "{} statements in one query, but this connection did not enable multi-statements (CLIENT_MULTI_STATEMENTS at connect, or COM_SET_OPTION): send one statement at a time",
                                plans.len()
                            ))))
                            .await?
                        }
                        Ok(plans) => {
                            let count = plans.len();
                            for (i, plan) in plans.into_iter().enumerate() {
                                let more = if i + 1 < count { 0x0008 } else { 0 };
                                if !self
                                    .run(conn, client, plan, &[], false, deprecate_eof, more)
                                    .await?
                                {
                                    break;
                                }
                            }
                        }
                    }
                }
                0x16 => {
                    let sql = String::from_utf8_lossy(r.rest()).into_owned();
                    match self.prepare(&sql, client).await {
                        Err(e) => conn.write(&mysql_err(&e)).await?,
                        Ok((statement, columns)) => {
                            let id = next_statement;
                            next_statement = next_statement.wrapping_add(1).max(1);
                            conn.write(&wire::prepare_ok(id, columns.len(), statement.params))
                                .await?;
                            for _ in 0..statement.params {
                                conn.write(&wire::column_definition(
                                    "",
                                    "",
                                    "?",
                                    wire::ColumnType::VarString,
                                    false,
                                ))
                                .await?;
                            }
                            if statement.params > 0 && !deprecate_eof {
                                conn.write(&wire::end_of_rows(false, wire::STATUS_AUTOCOMMIT))
                                    .await?;
                            }
                            for (name, declared) in &columns {
                                let kind = wire::column_type(declared.as_deref(), None);
                                conn.write(&wire::column_definition(
                                    &self.database,
                                    "",
                                    name,
                                    kind,
                                    false,
                                ))
                                .await?;
                            }
                            if !columns.is_empty() && !deprecate_eof {
                                conn.write(&wire::end_of_rows(false, wire::STATUS_AUTOCOMMIT))
                                    .await?;
                            }
                            prepared.insert(id, statement);
                        }
                    }
                }
                0x17 => {
                    let id = r.u32()?;
                    r.skip(1 + 4)?;
                    match prepared.get_mut(&id) {
                        None => conn.write(&wire::err(1243, "HY000", &format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_execute"))).await?,
                        Some(statement) => {
                            let params = wire::decode_params(&mut r, statement.params, &mut statement.types)?;
                            let plan = statement.plan.clone();
                            self.run(conn, client, plan, &params, true, deprecate_eof, 0).await?;
                        }
                    }
                }
                0x19 => {
                    prepared.remove(&r.u32()?);
                    continue;
                }
                0x1A => conn.write(&wire::ok(0, 0, client.status(), "")).await?,
                // COM_SET_OPTION: 0 turns multi-statements on, 1 off; answered with EOF.
                0x1B => match r.u16()? {
                    option @ (0 | 1) => {
                        client.multi_statements = option == 0;
                        conn.write(&wire::end_of_rows(deprecate_eof, client.status()))
                            .await?
                    }
                    other => {
                        conn.write(&wire::err(
                            1047,
                            "08S01",
                            &format!("Unknown COM_SET_OPTION option {other}"),
                        ))
                        .await?
                    }
                },
                other => {
                    conn.write(&wire::err(
                        1047,
                        "08S01",
                        &format!("Unknown command {other:#04x}"),
                    ))
                    .await?
                }
            }
            conn.flush().await?;
        }
    }

    /// Runs one plan and writes its answer; returns false after an error (stop the batch).
    /// Opens a transaction when `autocommit` is off and none is open (MySQL starts one
    /// implicitly with the first statement).
    async fn implicit_begin(&self, client: &mut Client) -> Result<(), MysqlError> {
        if !client.autocommit && !client.in_transaction {
            self.engine
                .begin(client.id)
                .await
                .map_err(|e| e.to_mysql(&self.database))?;
            client.in_transaction = true;
        }
        Ok(())
    }

    async fn end_transaction(&self, client: &mut Client, commit: bool) -> Result<(), MysqlError> {
        let ended = if commit {
            self.engine.commit(client.id).await.map(drop)
        } else {
            self.engine.rollback(client.id).await
        };
        client.in_transaction = false;
        ended.map_err(|e| e.to_mysql(&self.database))
    }

    /// Runs one plan and writes its answer; returns false after an error (stop the batch).
    #[allow(clippy::too_many_arguments)]
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<S>,
        client: &mut Client,
        plan: Plan,
        params: &[rusqlite::types::Value],
        binary: bool,
        deprecate_eof: bool,
        more: u16,
    ) -> Result<bool, WireError> {
        let database = client
            .context
            .database
            .clone()
            .unwrap_or_else(|| self.database.clone());
        let outcome: Result<Option<Rows>, MysqlError> = match plan {
            Plan::Sqlite {
                statements,
                read_only: true,
            } => match self.implicit_begin(client).await {
                Err(e) => Err(e),
                Ok(()) => {
                    let mut last = None;
                    let mut failed = None;
                    for sql in &statements {
                        match self
                            .engine
                            .query(client.id, sql, params, client.consistency())
                            .await
                        {
                            Ok(rows) => last = Some(rows),
                            Err(e) => {
                                failed = Some(e.to_mysql(&database));
                                break;
                            }
                        }
                    }
                    failed.map_or(Ok(last), Err)
                }
            },
            Plan::Sqlite {
                statements,
                read_only: false,
            } => {
                let ddl = statements.iter().any(|s| crate::engine::is_ddl(s));
                let begun = if ddl {
                    Ok(())
                } else {
                    self.implicit_begin(client).await
                };
                match begun {
                    Err(e) => Err(e),
                    Ok(()) => match self
                        .engine
                        .write(client.id, statements.clone(), params)
                        .await
                    {
                        Ok(outcome) => {
                            let inserted = statements
                                .iter()
                                .any(|s| s.to_ascii_uppercase().starts_with("INSERT"));
                            let insert_id = if inserted {
                                outcome.last_insert_id.max(0) as u64
                            } else {
                                0
                            };
                            if insert_id > 0 {
                                client.context.last_insert_id = insert_id;
                            }
                            conn.write(&wire::ok(
                                outcome.rows_affected,
                                insert_id,
                                client.status() | more,
                                "",
                            ))
                            .await?;
                            return Ok(true);
                        }
                        Err(e) => Err(e.to_mysql(&database)),
                    },
                }
            }
            Plan::Use(db) => match self.known_database(client.id, &db).await {
                Ok(()) => {
                    client.context.database = Some(db);
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            Plan::CreateDatabase {
                name,
                if_not_exists,
            } => match self.known_database(client.id, &name).await {
                Ok(()) if if_not_exists => Ok(None),
                Ok(()) => Err(MysqlError {
                    code: 1007,
                    sqlstate: "HY000",
                    message: format!("Can't create database '{name}'; database exists"),
                }),
                Err(_) if name.contains('.') || name.is_empty() || name.len() > 64 => {
                    Err(MysqlError {
                        code: 1102,
                        sqlstate: "42000",
                        message: format!("Incorrect database name '{name}'"),
                    })
                }
                Err(_) => {
                    let insert =
                        format!("INSERT INTO {} (name) VALUES (?)", dialect::SCHEMATA_TABLE);
                    self.engine
                        .write(
                            client.id,
                            vec![insert],
                            &[rusqlite::types::Value::Text(name)],
                        )
                        .await
                        .map(|_| None)
                        .map_err(|e| e.to_mysql(&database))
                }
            },
            Plan::DropDatabase { name, if_exists } => {
                match self.drop_database(client, &name).await {
                    Err(e) if e.code == 1008 && if_exists => Ok(None),
                    other => other.map(|()| None),
                }
            }
            Plan::Set(settings) => {
                let mut result = Ok(None);
                for setting in settings {
                    if let Setting::Variable { name, value } = &setting
                        && name == "autocommit"
                    {
                        let on = matches!(value.to_ascii_lowercase().as_str(), "1" | "on" | "true");
                        // Turning autocommit on commits an open transaction, as in MySQL.
                        if on
                            && client.in_transaction
                            && let Err(e) = self.end_transaction(client, true).await
                        {
                            result = Err(e);
                        }
                        client.autocommit = on;
                        client.set_variable("autocommit", if on { "1" } else { "0" });
                    } else if let Setting::Variable { name, value } = &setting
                        && name == "max_execution_time"
                    {
                        match value.trim_matches(['\'', '"']).parse::<u64>() {
                            Ok(ms) => {
                                let most = self.engine.limits().max_statement;
                                let limit = if ms == 0 {
                                    most
                                } else {
                                    Duration::from_millis(ms).min(most)
                                };
                                self.engine.set_read_limit(client.id, limit);
                                client.set_variable(
                                    "max_execution_time",
                                    &limit.as_millis().to_string(),
                                );
                            }
                            Err(_) => {
                                result = Err(MysqlError {
                                    code: 1232,
                                    sqlstate: "42000",
                                    message: format!(
                                        "Incorrect argument type to variable 'max_execution_time': {value} is not a whole number of milliseconds"
                                    ),
                                });
                            }
                        }
                    } else if let Setting::Variable { name, value } = &setting
                        && name == STALENESS_VARIABLE
                    {
                        match value.trim_matches(['\'', '"']).parse::<u64>() {
                            Ok(ms) => {
                                client.staleness = Duration::from_millis(ms);
                                client.set_variable(STALENESS_VARIABLE, &ms.to_string());
                            }
                            Err(_) => {
                                result = Err(MysqlError {
                                    code: 1232,
                                    sqlstate: "42000",
                                    message: format!(
                                        "Incorrect argument type to variable '{STALENESS_VARIABLE}': {value} is not a whole number of milliseconds"
                                    ),
                                });
                            }
                        }
                    }
                }
                result
            }
            Plan::Transaction(Transaction::Begin) => match async {
                // BEGIN commits a transaction already open, as in MySQL.
                if client.in_transaction {
                    self.end_transaction(client, true).await?;
                }
                self.engine
                    .begin(client.id)
                    .await
                    .map_err(|e| e.to_mysql(&database))
            }
            .await
            {
                Ok(()) => {
                    client.in_transaction = true;
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            Plan::Transaction(Transaction::Commit) => {
                self.end_transaction(client, true).await.map(|()| None)
            }
            Plan::Transaction(Transaction::Rollback) => {
                self.end_transaction(client, false).await.map(|()| None)
            }
            Plan::Kill { id, query_only } => self.kill(id, query_only).map(|()| None),
            Plan::Show(show) => {
                let consistency = client.consistency();
                self.show(client.id, consistency, &show, &database)
                    .await
                    .map(Some)
            }
        };
        if let Err(e) = &outcome
            && matches!(e.code, 1213 | 1205)
            && client.in_transaction
        {
            // The engine rolled the session's transaction back (a change of leader, or
            // idle while others waited): the session is outside one now.
            client.in_transaction = false;
        }
        let status = client.status() | more;
        match outcome {
            Ok(None) => conn.write(&wire::ok(0, 0, status, "")).await?,
            Ok(Some(rows)) => {
                write_rows(conn, &database, &rows, binary, deprecate_eof, status).await?
            }
            Err(e) => {
                conn.write(&mysql_err(&e)).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Ok if `name` is a database here: the configured one, `information_schema`, or one
    /// created with `CREATE DATABASE`; else MySQL's 1049.
    async fn known_database(&self, session: u64, name: &str) -> Result<(), MysqlError> {
        if name == self.database || name.eq_ignore_ascii_case(dialect::INFORMATION_SCHEMA) {
            return Ok(());
        }
        let found = self
            .engine
            .query(
                session,
                &format!("SELECT 1 FROM {} WHERE name = ?", dialect::SCHEMATA_TABLE),
                &[rusqlite::types::Value::Text(name.to_owned())],
                CATALOG,
            )
            .await
            .map_err(|e| e.to_mysql(name))?;
        if found.rows.is_empty() {
            Err(MysqlError {
                code: 1049,
                sqlstate: "42000",
                message: format!("Unknown database '{name}'"),
            })
        } else {
            Ok(())
        }
    }

    /// The tables of database `db`, by their MySQL names.
    async fn tables_of(
        &self,
        session: u64,
        db: &str,
        consistency: Consistency,
    ) -> Result<Vec<String>, MysqlError> {
        let prefix = dialect::sqlite_table(db, "");
        let rows = self
            .engine
            .query(
                session,
                "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, length(?1)) = ?1 ORDER BY name",
                &[rusqlite::types::Value::Text(prefix.clone())],
                consistency,
            )
            .await
            .map_err(|e| e.to_mysql(db))?;
        Ok(rows
            .rows
            .into_iter()
            .filter_map(|r| match r.into_iter().next() {
                Some(rusqlite::types::Value::Text(t)) => t.strip_prefix(&prefix).map(str::to_owned),
                _ => None,
            })
            .collect())
    }

    /// `DROP DATABASE`: its tables and its entry, as one write.
    async fn drop_database(&self, client: &mut Client, name: &str) -> Result<(), MysqlError> {
        if name.eq_ignore_ascii_case(dialect::INFORMATION_SCHEMA) {
            return Err(MysqlError {
                code: 1044,
                sqlstate: "42000",
                message: format!("Access denied for user to database '{name}'"),
            });
        }
        self.known_database(client.id, name)
            .await
            .map_err(|_| MysqlError {
                code: 1008,
                sqlstate: "HY000",
                message: format!("Can't drop database '{name}'; database doesn't exist"),
            })?;
        if client.in_transaction {
            return Err(crate::engine::EngineError::DdlInTransaction.to_mysql(name));
        }
        let mut statements: Vec<String> = self
            .tables_of(client.id, name, Consistency::Linearizable)
            .await?
            .iter()
            .map(|t| {
                format!(
                    "DROP TABLE \"{}\"",
                    dialect::sqlite_table(name, t).replace('"', "\"\"")
                )
            })
            .collect();
        statements.push(format!(
            "DELETE FROM {} WHERE name = ?",
            dialect::SCHEMATA_TABLE
        ));
        self.engine
            .write(
                client.id,
                statements,
                &[rusqlite::types::Value::Text(name.to_owned())],
            )
            .await
            .map_err(|e| e.to_mysql(name))?;
        if client.context.database.as_deref() == Some(name) {
            client.context.database = None;
        }
        Ok(())
    }

    async fn show(
        &self,
        session: u64,
        consistency: Consistency,
        show: &Show,
        database: &str,
    ) -> Result<Rows, MysqlError> {
        use rusqlite::types::Value;
        let query = |sql: String| async move {
            self.engine
                .query(session, &sql, &[], consistency)
                .await
                .map_err(|e| e.to_mysql(database))
        };
        let text = |s: &str| Value::Text(s.to_owned());
        let listing = |columns: &[&str], rows: Vec<Vec<Value>>| Rows {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            declared: vec![None; columns.len()],
            rows,
        };
        match show {
            Show::Databases => {
                let created = query(format!(
                    "SELECT name FROM {} ORDER BY name",
                    dialect::SCHEMATA_TABLE
                ))
                .await?;
                let mut names = vec![
                    dialect::INFORMATION_SCHEMA.to_owned(),
                    self.database.clone(),
                ];
                names.extend(
                    created
                        .rows
                        .into_iter()
                        .filter_map(|r| match r.into_iter().next() {
                            Some(Value::Text(t)) => Some(t),
                            _ => None,
                        }),
                );
                names.sort();
                names.dedup();
                Ok(listing(
                    &["Database"],
                    names.iter().map(|n| vec![text(n)]).collect(),
                ))
            }
            Show::Tables {
                database: named,
                full,
            } => {
                let db = named.as_deref().unwrap_or(database);
                self.known_database(session, db).await?;
                let header = format!("Tables_in_{db}");
                let names: Vec<String> = self.tables_of(session, db, consistency).await?;
                if *full {
                    Ok(listing(
                        &[&header, "Table_type"],
                        names
                            .iter()
                            .map(|n| vec![text(n), text("BASE TABLE")])
                            .collect(),
                    ))
                } else {
                    Ok(listing(
                        &[&header],
                        names.iter().map(|n| vec![text(n)]).collect(),
                    ))
                }
            }
            Show::Columns {
                database: named,
                table,
            } => {
                let db = named.as_deref().unwrap_or(database);
                let sql = format!(
                    "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{}')",
                    dialect::sqlite_table(db, table).replace('\'', "''")
                );
                let info = query(sql).await?;
                if info.rows.is_empty() {
                    return Err(MysqlError {
                        code: 1146,
                        sqlstate: "42S02",
                        message: format!("Table '{db}.{table}' doesn't exist"),
                    });
                }
                let rows = info
                    .rows
                    .into_iter()
                    .map(|r| {
                        let not_null = matches!(r[2], Value::Integer(1));
                        let key = if matches!(r[4], Value::Integer(n) if n > 0) {
                            "PRI"
                        } else {
                            ""
                        };
                        vec![
                            r[0].clone(),
                            r[1].clone(),
                            text(if not_null { "NO" } else { "YES" }),
                            text(key),
                            r[3].clone(),
                            text(""),
                        ]
                    })
                    .collect();
                Ok(listing(
                    &["Field", "Type", "Null", "Key", "Default", "Extra"],
                    rows,
                ))
            }
            Show::CreateTable {
                database: named,
                table,
            } => {
                let db = named.as_deref().unwrap_or(database);
                let sqlite = dialect::sqlite_table(db, table);
                let sql = format!(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '{}'",
                    sqlite.replace('\'', "''")
                );
                let found = query(sql).await?;
                match found.rows.into_iter().next() {
                    Some(row) => {
                        // Stored under its SQLite name; shown under its MySQL one.
                        let definition = match row.into_iter().next() {
                            Some(Value::Text(sql)) => sql.replacen(
                                &format!("\"{}\"", sqlite.replace('"', "\"\"")),
                                &format!("`{table}`"),
                                1,
                            ),
                            _ => String::new(),
                        };
                        Ok(listing(
                            &["Table", "Create Table"],
                            vec![vec![text(table), text(&definition)]],
                        ))
                    }
                    None => Err(MysqlError {
                        code: 1146,
                        sqlstate: "42S02",
                        message: format!("Table '{db}.{table}' doesn't exist"),
                    }),
                }
            }
            Show::Variables { like } => {
                let pattern = like.as_deref().map(|p| p.to_lowercase());
                let matches = |name: &str| match &pattern {
                    None => true,
                    Some(p) => like_match(p.as_bytes(), name.as_bytes()),
                };
                let mut vars = self.variables(session);
                vars.sort();
                Ok(listing(
                    &["Variable_name", "Value"],
                    vars.into_iter()
                        .filter(|(k, _)| matches(k))
                        .map(|(k, v)| vec![text(&k), text(&v)])
                        .collect(),
                ))
            }
        }
    }
}

/// A prepared statement: its plan and what its executions need.
struct Prepared {
    plan: Plan,
    params: usize,
    types: Vec<(u8, bool)>,
}

impl Front {
    /// Plans a statement for COM_STMT_PREPARE; returns it and its result columns.
    async fn prepare(
        &self,
        sql: &str,
        client: &Client,
    ) -> Result<(Prepared, crate::engine::Columns), MysqlError> {
        let mut plans = dialect::translate(sql, &client.context)?;
        if plans.len() != 1 {
            return Err(MysqlError::unsupported(
                "several statements in one prepared statement",
            ));
        }
        let plan = plans.remove(0);
        let (params, columns) = match &plan {
            Plan::Sqlite { statements, .. } if statements.len() == 1 => {
                let database = client
                    .context
                    .database
                    .clone()
                    .unwrap_or_else(|| self.database.clone());
                self.engine
                    .describe(client.id, &statements[0])
                    .await
                    .map_err(|e| e.to_mysql(&database))?
            }
            _ => (0, Vec::new()),
        };
        Ok((
            Prepared {
                plan,
                params,
                types: Vec::new(),
            },
            columns,
        ))
    }
}

/// SQL `LIKE` with `%` and `_`, without recursion and in at most pattern × text steps: on a
/// mismatch only the last `%` takes one more byte (an earlier one taking more could only
/// leave the later one less to do), so a pattern of many `%` costs no more than one.
fn like_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // After the last `%` seen: where the pattern goes on, and where in the text it was tried.
    let mut retry: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'%') => {
                p += 1;
                retry = Some((p, t));
            }
            Some(&c) if c == b'_' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match retry {
                Some((after, from)) => {
                    retry = Some((after, from + 1));
                    (p, t) = (after, from + 1);
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'%')
}

fn mysql_err(e: &MysqlError) -> Vec<u8> {
    wire::err(e.code, e.sqlstate, &e.message)
}

async fn write_rows<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    database: &str,
    rows: &Rows,
    binary_protocol: bool,
    deprecate_eof: bool,
    status: u16,
) -> Result<(), WireError> {
    let binary_kinds =
        binary_protocol.then(|| wire::binary_kinds(rows.columns.len(), &rows.declared, &rows.rows));
    let mut count = Vec::new();
    wire::put_lenenc_int(&mut count, rows.columns.len() as u64);
    conn.write(&count).await?;
    for (i, name) in rows.columns.iter().enumerate() {
        let declared = rows.declared.get(i).and_then(|d| d.as_deref());
        let sample = rows
            .rows
            .iter()
            .map(|r| &r[i])
            .find(|v| !matches!(v, rusqlite::types::Value::Null));
        let kind = match &binary_kinds {
            Some(kinds) => kinds[i],
            None => wire::column_type(declared, sample),
        };
        let binary = matches!(sample, Some(rusqlite::types::Value::Blob(_)));
        conn.write(&wire::column_definition(database, "", name, kind, binary))
            .await?;
    }
    if !deprecate_eof {
        conn.write(&wire::end_of_rows(false, status)).await?;
    }
    for row in &rows.rows {
        match &binary_kinds {
            Some(kinds) => conn.write(&wire::binary_row(row, kinds)).await?,
            None => conn.write(&wire::text_row(row)).await?,
        }
    }
    conn.write(&wire::end_of_rows(deprecate_eof, status)).await
}

/// Statements longer than this are parsed on a blocking thread: parsing megabytes takes long
/// enough to hold up the runtime thread that also carries Raft's heartbeats.
const PARSE_OFF_RUNTIME: usize = 256 * 1024;

async fn translate_off_runtime(
    sql: String,
    context: &dialect::Context,
) -> Result<Vec<Plan>, MysqlError> {
    if sql.len() < PARSE_OFF_RUNTIME {
        return dialect::translate(&sql, context);
    }
    let context = context.clone();
    tokio::task::spawn_blocking(move || dialect::translate(&sql, &context))
        .await
        .unwrap_or_else(|e| {
            Err(MysqlError::syntax(format!(
                "the statement could not be parsed: {e}"
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::like_match;

    #[test]
    fn like_patterns() {
        assert!(like_match(b"version%", b"version_comment"));
        assert!(like_match(b"%comment", b"version_comment"));
        assert!(like_match(b"a_c", b"abc"));
        assert!(!like_match(b"a_c", b"abbc"));
        assert!(like_match(b"%", b""));
    }

    /// `SHOW VARIABLES LIKE '%%…%x'` tried every way to share the text among the `%`s, one
    /// recursion per pattern byte: 40 of them against a 40-byte name would take longer than
    /// the universe has existed, and a million `%` (a 1 MB statement) overflowed the stack.
    #[test]
    fn like_patterns_of_many_wildcards_take_linear_time_and_no_stack() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let many = [b"%".repeat(40), b"x".to_vec()].concat();
            let text = b"a".repeat(40);
            let _ = done.send((
                like_match(&many, &text),
                like_match(&many, b"aaaax"),
                like_match(&b"%".repeat(1_000_000), b""),
                like_match(&b"_%".repeat(500_000), &b"a".repeat(500_000)),
                like_match(b"a%b%c_", b"aXbYbcZ"),
                like_match(b"a%b%c_", b"aXbYbc"),
            ));
        });
        let answers = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("matching answers within 20 s, without overflowing the stack");
        assert_eq!(answers, (false, true, true, true, true, false));
    }

    /// Every pattern of up to 5 bytes of `a`, `b`, `%`, `_` against every text of up to 5
    /// bytes of `a`, `b`, matched as by the table of which pattern prefix matches which text
    /// prefix.
    #[test]
    fn like_matches_as_the_table_of_prefixes_says() {
        fn by_table(pattern: &[u8], text: &[u8]) -> bool {
            let mut row = vec![false; text.len() + 1];
            row[0] = true;
            for &c in pattern {
                let mut next = vec![false; text.len() + 1];
                for j in 0..=text.len() {
                    next[j] = match c {
                        b'%' => row[j] || (j > 0 && next[j - 1]),
                        b'_' => j > 0 && row[j - 1],
                        c => j > 0 && row[j - 1] && text[j - 1] == c,
                    };
                }
                row = next;
            }
            row[text.len()]
        }
        fn all(alphabet: &[u8], longest: u32) -> Vec<Vec<u8>> {
            let mut words = vec![Vec::new()];
            for len in 1..=longest {
                for mut n in 0..alphabet.len().pow(len) {
                    let mut word = Vec::new();
                    for _ in 0..len {
                        word.push(alphabet[n % alphabet.len()]);
                        n /= alphabet.len();
                    }
                    words.push(word);
                }
            }
            words
        }
        for pattern in all(b"ab%_", 5) {
            for text in all(b"ab", 5) {
                assert_eq!(
                    like_match(&pattern, &text),
                    by_table(&pattern, &text),
                    "{} LIKE {}",
                    String::from_utf8_lossy(&text),
                    String::from_utf8_lossy(&pattern)
                );
            }
        }
    }
}
