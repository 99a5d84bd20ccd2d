//! `quartet-db`: Sharded, Raft-replicated SQL database behind the MySQL wire protocol.
//!
//! Today the crate holds the server's shell, which every Quartet service shares through
//! `quartet-kit`: configuration, listeners (gRPC, REST, admin), telemetry and graceful
//! shutdown. Raft groups, the SQLite state machine and the MySQL front arrive with issue 4.
//!
//! Layout rule for what comes: the domain apart from the transports (gRPC, REST, MySQL wire) and
//! the storage, so each can be tested alone.

pub mod dialect;
pub mod engine;
pub mod front;
pub mod wire;

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

/// Every setting of `quartet-db`; `quartet-db --config-reference` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Listeners, logging and shutdown, shared with every Quartet server.
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Verifying callers' tokens from `quartet-auth`.
    pub auth: AuthClientSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerSettings::with_ports(7140),
            auth: AuthClientSettings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn base(&self) -> &BaseSettings {
        &self.server.base
    }
}

/// Serves `quartet-db` until a stop signal, then drains.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    let grpc = Routes::builder().routes();
    let rest = RestApi::empty().with_bearer(quartet_kit::token::authenticator(&config.auth));
    quartet_kit::app::serve_server(ctx, &config.server, grpc, rest).await
}
