//! `quartet-rpc-gateway`: zerorpc-compatible RPC gateway.
//!
//! Today the crate holds the server's shell, which every Quartet service shares through
//! `quartet-kit` (configuration, listeners, telemetry, graceful shutdown), and the start of
//! the zerorpc library: [`zerorpc::event`], the wire format checked against every event
//! captured from zerorpc-python. The rest of the library and the gateway follow (issue 6).
//!
//! Layout rule for what comes: the domain apart from the transports (gRPC, REST, zerorpc) and
//! the storage, so each can be tested alone.

pub mod zerorpc;

use quartet_kit::app::{Context, ServiceConfig};
use quartet_kit::reexport::tonic::service::Routes;
use quartet_kit::settings::AuthClientSettings;
use quartet_kit::{BaseSettings, RestApi, ServerSettings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The binary's name, also its `service.name` in traces and its `QUARTET_*` prefix.
pub const SERVICE: &str = "quartet-rpc-gateway";

/// One line for `--help`.
pub const ABOUT: &str = "zerorpc-compatible RPC gateway.";

/// Every setting of `quartet-rpc-gateway`; `quartet-rpc-gateway --config-reference` lists them.
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
            server: ServerSettings::with_ports(7130),
            auth: AuthClientSettings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn base(&self) -> &BaseSettings {
        &self.server.base
    }
}

/// Serves `quartet-rpc-gateway` until a stop signal, then drains.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    let grpc = Routes::builder().routes();
    let rest = RestApi::empty().with_bearer(quartet_kit::token::authenticator(&config.auth));
    quartet_kit::app::serve_server(ctx, &config.server, grpc, rest).await
}
