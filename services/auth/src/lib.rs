//! `quartet-auth`: Apache Shiro's security model as a network service, with OAuth2 tokens.
//!
//! | module | what it holds | depends on |
//! |---|---|---|
//! | [`permission`] | Shiro's `WildcardPermission` (lives in `quartet-kit`, shared by every service) | nothing |
//! | [`urls`] | `[urls]` filter chains, Ant matching, path normalisation | `permission` |
//! | [`credentials`] | argon2id hashing; verifying Shiro 1/2 and bcrypt hashes, with rehash | nothing |
//! | [`keys`] | ES256 signing keys that rotate with overlap; the JWKS document | `quartet-kit::token` |
//! | [`service`] | OAuth2 grants, introspection, revocation, lockout, audit: the operations, no transport | all of the above |
//! | [`store`] | users, roles, clients, refresh tokens, keys in SQLite or PostgreSQL (sqlx `Any`) | sqlx |
//! | [`ini`] | the INI realm file (`[users]`, `[roles]`, `[urls]`) | `permission`, `urls` |
//!
//! The domain modules above import no transport and no store; the gRPC and REST fronts and
//! the SQL and Redis stores sit around them.

pub mod credentials;
pub mod ini;
pub mod keys;
pub mod service;
pub mod store;
pub mod urls;

pub use quartet_kit::permission;

use quartet_kit::app::{Context, ServiceConfig};
use quartet_kit::reexport::tonic::service::Routes;
use quartet_kit::{BaseSettings, RestApi, ServerSettings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The binary's name, also its `service.name` in traces and its `QUARTET_*` prefix.
pub const SERVICE: &str = "quartet-auth";

/// One line for `--help`.
pub const ABOUT: &str = "Shiro-style authentication and authorization with OAuth2 tokens.";

/// Every setting of `quartet-auth`; `quartet-auth --config-reference` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Listeners, logging and shutdown, shared with every Quartet server.
    #[serde(flatten)]
    pub server: ServerSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerSettings::with_ports(7110),
        }
    }
}

impl ServiceConfig for Config {
    fn base(&self) -> &BaseSettings {
        &self.server.base
    }
}

/// Serves `quartet-auth` until a stop signal, then drains.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    let grpc = Routes::builder().routes();
    quartet_kit::app::serve_server(ctx, &config.server, grpc, RestApi::empty()).await
}
