//! `quartet-task-gateway`: Celery-compatible task broker-gateway.
//!
//! Built so far: the server's shell every Quartet service shares through `quartet-kit`, and
//! [`celery`], Celery's message protocol v2 and result records as the real Celery writes
//! them. The gateway API, the Redis broker and the worker library arrive with issue 5.
//!
//! Layout rule: the domain apart from the transports (gRPC, REST, Celery over Redis) and the
//! storage, so each can be tested alone.

pub mod broker;
pub mod celery;

use quartet_kit::app::{Context, ServiceConfig};
use quartet_kit::reexport::tonic::service::Routes;
use quartet_kit::settings::AuthClientSettings;
use quartet_kit::{BaseSettings, RestApi, ServerSettings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The binary's name, also its `service.name` in traces and its `QUARTET_*` prefix.
pub const SERVICE: &str = "quartet-task-gateway";

/// One line for `--help`.
pub const ABOUT: &str = "Celery-compatible task broker-gateway.";

/// Every setting of `quartet-task-gateway`; `quartet-task-gateway --config-reference` lists them.
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
            server: ServerSettings::with_ports(7120),
            auth: AuthClientSettings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn base(&self) -> &BaseSettings {
        &self.server.base
    }
}

/// Serves `quartet-task-gateway` until a stop signal, then drains.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    let grpc = Routes::builder().routes();
    let rest = RestApi::empty().with_bearer(quartet_kit::token::authenticator(&config.auth));
    quartet_kit::app::serve_server(ctx, &config.server, grpc, rest).await
}
