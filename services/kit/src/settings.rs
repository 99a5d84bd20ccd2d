//! The configuration sections every Quartet server shares. A service embeds [`ServerSettings`]
//! (or, without gRPC and REST listeners, [`BaseSettings`]) with `#[serde(flatten)]`, so its keys
//! sit at the top level of the service's file: `[admin]`, `[log]`, `[shutdown]`, `[grpc]`, `[http]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event, for terminals.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogSettings {
    /// Line format of the logs written to standard error.
    pub format: LogFormat,
    /// Which events to log, in `tracing` filter syntax, e.g. `info` or `info,quartet_db=debug`.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".into(),
        }
    }
}

/// The admin listener: health, readiness and metrics, for probes and scrapers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AdminSettings {
    /// Address of the listener serving `/healthz`, `/readyz`, `/metrics` and `/openapi.json`. Port 0 picks a free port.
    pub listen: SocketAddr,
}

/// Graceful shutdown on SIGTERM or SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShutdownSettings {
    /// How long in-flight work may take to finish after a stop signal before it is abandoned, e.g. `30s`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub grace: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
        }
    }
}

/// A network listener for one of the service's APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ListenSettings {
    /// Address to bind. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// PEM certificate chain: set (with `tls_key_file`), the listener speaks only TLS; empty, plaintext.
    #[serde(default)]
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key_file: String,
}

impl ListenSettings {
    /// A plaintext listener on `listen`.
    pub fn plain(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }

    /// The certificate and key files, when TLS is on; an error when only one is set.
    pub fn tls(&self) -> Result<Option<(PathBuf, PathBuf)>, String> {
        match (self.tls_cert_file.is_empty(), self.tls_key_file.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Ok(Some((
                PathBuf::from(&self.tls_cert_file),
                PathBuf::from(&self.tls_key_file),
            ))),
            _ => Err("tls_cert_file and tls_key_file go together: set both or neither".into()),
        }
    }
}

/// What every Quartet process has: logs, an admin listener and a shutdown deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BaseSettings {
    /// Admin listener.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
}

/// What every Quartet server has: the base settings plus a gRPC and a REST listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerSettings {
    /// Logs, admin listener, shutdown.
    #[serde(flatten)]
    pub base: BaseSettings,
    /// The gRPC API listener (with health checking and server reflection).
    pub grpc: ListenSettings,
    /// The REST API listener (JSON under `/v1`, its OpenAPI document at `/openapi.json`).
    pub http: ListenSettings,
}

/// Default ports: each service owns a block of ten, `7x10` gRPC, `7x11` REST, `7x19` admin.
impl ServerSettings {
    /// Defaults for a service whose port block starts at `base_port` (e.g. 7110), listening on
    /// every interface, as a server in a container must.
    pub fn with_ports(base_port: u16) -> Self {
        let addr = |port: u16| SocketAddr::from(([0, 0, 0, 0], port));
        Self {
            base: BaseSettings::with_admin_port(base_port + 9),
            grpc: ListenSettings::plain(addr(base_port)),
            http: ListenSettings::plain(addr(base_port + 1)),
        }
    }
}

impl BaseSettings {
    /// Defaults with the admin listener on `port` on every interface.
    pub fn with_admin_port(port: u16) -> Self {
        Self {
            admin: AdminSettings {
                listen: SocketAddr::from(([0, 0, 0, 0], port)),
            },
            log: LogSettings::default(),
            shutdown: ShutdownSettings::default(),
        }
    }
}

/// How a service verifies bearer tokens from `quartet-auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuthClientSettings {
    /// URL of the auth service's JWKS, e.g. `http://quartet-auth:7111/.well-known/jwks.json`; empty refuses every token (fail closed).
    pub jwks_url: String,
    /// The `iss` tokens must carry: the auth service's `tokens.issuer`.
    pub issuer: String,
    /// The `aud` tokens must carry: the auth service's `tokens.audience`.
    pub audience: String,
}

impl Default for AuthClientSettings {
    fn default() -> Self {
        Self {
            jwks_url: String::new(),
            issuer: "http://127.0.0.1:7111".into(),
            audience: "quartet".into(),
        }
    }
}
