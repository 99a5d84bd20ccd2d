//! `quartet-kit`: what every Quartet server does the same way, written once.
//!
//! | module | what it gives a service |
//! |---|---|
//! | [`config`] | flags, `QUARTET_<SERVICE>_*` variables and a TOML file, typed, every problem reported at once |
//! | [`settings`] | the configuration sections all servers share (admin, log, shutdown, gRPC, HTTP) |
//! | [`telemetry`] | `tracing` logs, OTLP trace export, W3C trace context in and out of every carrier |
//! | [`health`] | readiness checks and the Prometheus registry |
//! | [`http`] | the admin listener and the REST listener (actix-web), `/openapi.json` |
//! | [`openapi`] | what every REST API's OpenAPI document shares: problem+json, 400, 401, 403, the bearer scheme |
//! | [`grpc`] | the gRPC listener (tonic) with health checking, reflection and `Info` |
//! | [`permission`] | Shiro's wildcard permissions, the suite's authorization language |
//! | [`token`] | verifying `quartet-auth` bearer tokens locally against its JWKS; REST and gRPC guards |
//! | [`error`] | one mapping from typed errors to problem+json and `tonic::Status` |
//! | [`shutdown`] | the stop signal and tracked in-flight work |
//! | [`app`] | the process life cycle: `main`, `Context::serve`, the drain |
//!
//! Nothing here knows a service's domain: no task, shard or RPC type appears. Permissions are
//! the exception by design: every service authorizes with the same Shiro-style strings.

pub mod app;
pub mod config;
pub mod error;
pub mod grpc;
pub mod health;
pub mod http;
pub mod openapi;
pub mod permission;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod token;

pub use app::{Context, Listeners, ServiceConfig};
pub use error::{ApiError, ErrorKind, Problem};
pub use http::RestApi;
pub use settings::{BaseSettings, ServerSettings};

/// Re-exports services need to declare their APIs without naming the kit's dependency versions.
pub mod reexport {
    pub use actix_web;
    pub use schemars;
    pub use tonic;
    pub use utoipa;
}
