//! `quartet-db`: a MySQL-speaking database whose shard groups are replicated by consensus,
//! with SQLite as each replica's state machine.
//!
//! | module | what it holds |
//! |---|---|
//! | [`dialect`] | MySQL statements → SQLite SQL or session instructions; MySQL errors |
//! | [`engine`] | one replica's SQLite; writes as changesets for deterministic replication; checksums |
//! | [`wire`] | the MySQL client/server protocol: packets, handshake, native password, text rows |
//! | [`front`] | the MySQL front: sessions running statements on an engine |
//!
//! Today one engine serves one database; the Raft group, sharding and the admin API arrive
//! with the rest of issue 4 (docs/db.md). The domain (dialect, engine) imports no transport.

pub mod actor;
pub mod dialect;
pub mod engine;
pub mod front;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use quartet_kit::app::{Context, ServiceConfig};
use quartet_kit::reexport::tonic::service::Routes;
use quartet_kit::settings::AuthClientSettings;
use quartet_kit::{BaseSettings, RestApi, ServerSettings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The binary's name, also its `service.name` in traces and its `QUARTET_*` prefix.
pub const SERVICE: &str = "quartet-db";

/// One line for `--help`.
pub const ABOUT: &str = "Sharded, Raft-replicated SQL database behind the MySQL wire protocol.";

/// The MySQL protocol listener and who may log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MysqlSettings {
    /// Address of the MySQL protocol listener. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The database (schema) clients use.
    pub database: String,
    /// The user name clients log in as.
    pub user: String,
    /// File holding that user's password (e.g. a mounted Secret); empty allows an empty password, for local use only.
    pub password_file: String,
}

impl Default for MysqlSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3306)),
            database: "quartet".into(),
            user: "root".into(),
            password_file: String::new(),
        }
    }
}

/// Where this replica keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StorageSettings {
    /// Path of this replica's SQLite database file.
    pub path: String,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            path: "quartet-db.sqlite".into(),
        }
    }
}

/// Every setting of `quartet-db`; `quartet-db --config-reference` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Listeners, logging and shutdown, shared with every Quartet server.
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Verifying callers' tokens from `quartet-auth`.
    pub auth: AuthClientSettings,
    /// The MySQL protocol front.
    pub mysql: MysqlSettings,
    /// Data on disk.
    pub storage: StorageSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerSettings::with_ports(7140),
            auth: AuthClientSettings::default(),
            mysql: MysqlSettings::default(),
            storage: StorageSettings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn base(&self) -> &BaseSettings {
        &self.server.base
    }
}

/// Opens the data, serves MySQL clients and the standard listeners until a stop signal.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    let password = if config.mysql.password_file.is_empty() {
        String::new()
    } else {
        let file = &config.mysql.password_file;
        std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("mysql.password_file {file:?}: {e}"))?
            .trim_end_matches(['\n', '\r'])
            .to_owned()
    };
    let engine = engine::Engine::open(std::path::Path::new(&config.storage.path))
        .map_err(|e| anyhow::anyhow!("storage.path {:?}: {e}", config.storage.path))?;
    let users = HashMap::from([(config.mysql.user.clone(), password)]);
    let front = Arc::new(front::Front::new(engine, &config.mysql.database, users));
    let listener = tokio::net::TcpListener::bind(config.mysql.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (mysql): {e}", config.mysql.listen))?;
    tracing::info!(listener = "mysql", addr = %listener.local_addr()?, "listening");
    ctx.shutdown
        .spawn(front.serve(listener, ctx.shutdown.token()));

    let grpc = Routes::builder().routes();
    let rest = RestApi::empty().with_bearer(quartet_kit::token::authenticator(&config.auth));
    quartet_kit::app::serve_server(ctx, &config.server, grpc, rest).await
}
