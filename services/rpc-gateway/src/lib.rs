//! `quartet-rpc-gateway`: zerorpc-compatible RPC gateway.
//!
//! Today the crate holds the server's shell, which every Quartet service shares through
//! `quartet-kit` (configuration, listeners, telemetry, graceful shutdown), and the start of
//! the zerorpc library: [`zerorpc::event`], the wire format checked against every event
//! captured from zerorpc-python. The rest of the library and the gateway follow (issue 6).
//!
//! Layout rule for what comes: the domain apart from the transports (gRPC, REST, zerorpc) and
//! the storage, so each can be tested alone.

pub mod front;
pub mod grpc;
pub mod input;
pub mod limit;
pub mod openapi;
pub mod rest;
pub mod router;
pub mod zerorpc;

use quartet_kit::app::{Context, ServiceConfig};
use quartet_kit::reexport::tonic::service::Routes;
use quartet_kit::settings::AuthClientSettings;
use quartet_kit::{BaseSettings, ServerSettings};
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
    /// The zerorpc backends and how calls to them behave.
    pub rpc: RpcSettings,
}

/// The zerorpc backends and how calls to them behave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RpcSettings {
    /// Services and their zerorpc servers: `service=tcp://host:port|tcp://host:port`, services comma-separated.
    pub backends: String,
    /// Methods safe to retry on another backend when one is lost, `service.method` comma-separated.
    pub idempotent: String,
    /// The longest a call may take, in seconds (a caller may ask for less).
    pub timeout_seconds: f64,
    /// zerorpc heartbeat period towards the backends, in milliseconds (zerorpc's default is 5000).
    pub heartbeat_ms: u64,
    /// Where the zerorpc front listens (zerorpc clients call `service.method` here); empty turns it off.
    pub zerorpc_listen: String,
    /// How often backend host names are resolved again, in seconds (a headless Service's pods come and go).
    pub resolve_seconds: f64,
    /// Calls per second each caller (token subject) may make across the fronts; 0 turns the limit off.
    pub rate_limit_per_second: f64,
    /// Calls a caller may make at once above its rate (at least 1).
    pub rate_limit_burst: u32,
    /// The largest request accepted, in bytes, on every front: a zerorpc event (larger ones are answered `MessageTooLarge`), a REST body (413), a gRPC message (`OUT_OF_RANGE`).
    pub max_message_bytes: usize,
    /// Calls one zerorpc front connection may have open at once; more are answered `TooManyCalls`.
    pub max_calls_per_connection: usize,
    /// The zerorpc front's CURVE secret key (Z85); set, the front only speaks CURVE (encrypted, clients need the public key).
    pub curve_secret_key: String,
    /// The CURVE public key that goes with `curve_secret_key` (Z85), logged for clients.
    pub curve_public_key: String,
    /// CURVE public keys (Z85, comma-separated) of the clients the zerorpc front admits; empty admits any client that knows the server's key.
    pub curve_clients: String,
}

impl Default for RpcSettings {
    fn default() -> Self {
        Self {
            backends: String::new(),
            idempotent: String::new(),
            timeout_seconds: 30.0,
            heartbeat_ms: 5000,
            zerorpc_listen: "tcp://127.0.0.1:7134".into(),
            resolve_seconds: 5.0,
            rate_limit_per_second: 0.0,
            rate_limit_burst: 20,
            max_message_bytes: 1 << 20,
            max_calls_per_connection: 1000,
            curve_secret_key: String::new(),
            curve_public_key: String::new(),
            curve_clients: String::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerSettings::with_ports(7130),
            auth: AuthClientSettings::default(),
            rpc: RpcSettings::default(),
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
    let rpc = &config.rpc;
    let seconds = |key: &str, value: f64| {
        std::time::Duration::try_from_secs_f64(value)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                anyhow::anyhow!("{key} must be a number of seconds above 0, not {value}")
            })
    };
    let max_timeout = seconds("rpc.timeout_seconds", rpc.timeout_seconds)?;
    let resolve = seconds("rpc.resolve_seconds", rpc.resolve_seconds)?;
    if rpc.heartbeat_ms == 0 {
        anyhow::bail!("rpc.heartbeat_ms must be above 0");
    }
    if rpc.max_message_bytes == 0 || rpc.max_calls_per_connection == 0 {
        anyhow::bail!("rpc.max_message_bytes and rpc.max_calls_per_connection must be above 0");
    }
    let heartbeat = std::time::Duration::from_millis(rpc.heartbeat_ms);
    let mut router = router::Router::new(heartbeat);
    if rpc.rate_limit_per_second != 0.0 {
        let limiter = limit::Limiter::new(rpc.rate_limit_per_second, rpc.rate_limit_burst)
            .map_err(|e| anyhow::anyhow!("rpc.rate_limit_per_second: {e}"))?;
        router = router.limit(limiter);
    }
    let idempotent: Vec<&str> = rpc
        .idempotent
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    for (service, endpoints) in
        router::parse_backends(&rpc.backends).map_err(|e| anyhow::anyhow!(e))?
    {
        let methods: Vec<String> = idempotent
            .iter()
            .filter_map(|m| m.strip_prefix(&format!("{service}.")).map(str::to_owned))
            .collect();
        router
            .add(&service, &endpoints, &methods)
            .await
            .map_err(|e| anyhow::anyhow!("rpc.backends ({service}): {e}"))?;
        tracing::info!(service = %service, backends = ?endpoints, "zerorpc service routed");
    }
    let router = std::sync::Arc::new(
        router
            .metrics(ctx.metrics.registry())
            .map_err(|e| anyhow::anyhow!("rpc metrics: {e}"))?,
    );
    tokio::spawn(router.clone().watch(resolve, ctx.shutdown.token()));
    // On a stop: no new calls, and those in flight get the shutdown's grace to finish.
    {
        let (router, stop) = (router.clone(), ctx.shutdown.token());
        let grace = config.server.base.shutdown.grace;
        ctx.shutdown.spawn(async move {
            stop.cancelled().await;
            let left = router.drain(grace).await;
            tracing::info!(left, "router drained");
        });
    }
    let authenticator = quartet_kit::token::authenticator(&config.auth);
    if !config.rpc.zerorpc_listen.is_empty() {
        let curve = front_curve(&config.rpc, &ctx).await?;
        // Requests above rpc.max_message_bytes are answered MessageTooLarge; far above it
        // (twice, plus room for the envelope) libzmq drops the peer before reading it all.
        let hard_limit = i64::try_from(config.rpc.max_message_bytes)
            .unwrap_or(i64::MAX / 4)
            .saturating_mul(2)
            .saturating_add(64 * 1024);
        let socket = zerorpc::socket::Socket::bind_with_limit(
            zmq::ROUTER,
            &config.rpc.zerorpc_listen,
            curve.clone(),
            hard_limit,
        )
        .map_err(|e| anyhow::anyhow!("rpc.zerorpc_listen: {e}"))?;
        tracing::info!(
            endpoint = %socket.endpoint(),
            curve_public_key = %config.rpc.curve_public_key,
            curve = curve.is_some(),
            "zerorpc front listening"
        );
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "quartet_rpc_front_refused_total",
                "zerorpc front messages refused or dropped, by reason",
            ),
            &["reason"],
        )?;
        ctx.metrics.registry().register(Box::new(refused.clone()))?;
        let service = front::service(router.clone(), authenticator.clone(), max_timeout)
            .heartbeat(heartbeat)
            .max_message_bytes(config.rpc.max_message_bytes)
            .max_calls_per_peer(config.rpc.max_calls_per_connection)
            .count_refusals(refused);
        let stop = ctx.shutdown.token();
        ctx.shutdown.spawn(async move {
            zerorpc::server::serve(
                std::sync::Arc::new(service),
                std::sync::Arc::new(socket),
                stop,
            )
            .await;
        });
    }
    let mut grpc = Routes::builder();
    grpc.add_service(grpc::RpcService::server(
        router.clone(),
        authenticator.clone(),
        max_timeout,
        config.rpc.max_message_bytes,
    ));
    let grpc = grpc.routes();
    let front = std::sync::Arc::new(rest::Front {
        router,
        max_timeout,
        max_body_bytes: config.rpc.max_message_bytes,
    });
    let rest = rest::rest(front).with_bearer(authenticator);
    quartet_kit::app::serve_server(ctx, &config.server, grpc, rest).await
}

/// The zerorpc front's CURVE settings, checked: none without a secret key; with one, its
/// public key too (it must belong to the secret key), and the client allow-list installed (refusals counted in
/// `quartet_rpc_curve_refused_total`).
async fn front_curve(
    rpc: &RpcSettings,
    ctx: &Context,
) -> anyhow::Result<Option<zerorpc::socket::Curve>> {
    use zerorpc::socket::curve_key;
    if rpc.curve_secret_key.is_empty() {
        if !rpc.curve_clients.is_empty() {
            anyhow::bail!(
                "rpc.curve_clients needs rpc.curve_secret_key: without CURVE there are no client keys"
            );
        }
        return Ok(None);
    }
    curve_key("rpc.curve_secret_key", &rpc.curve_secret_key).map_err(anyhow::Error::msg)?;
    curve_key("rpc.curve_public_key", &rpc.curve_public_key).map_err(anyhow::Error::msg)?;
    // Clients are given the public key: it must be the secret key's, or none gets in.
    if !zerorpc::socket::curve_pair_matches(&rpc.curve_public_key, &rpc.curve_secret_key).await? {
        anyhow::bail!("rpc.curve_public_key is not the public key of rpc.curve_secret_key");
    }
    let clients: Vec<String> = rpc
        .curve_clients
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if !clients.is_empty() {
        let refused = prometheus::IntCounter::new(
            "quartet_rpc_curve_refused_total",
            "CURVE handshakes refused on the zerorpc front: client key not allowed",
        )?;
        ctx.metrics.registry().register(Box::new(refused.clone()))?;
        zerorpc::socket::allow_curve_clients(&clients, move |key| {
            refused.inc();
            tracing::warn!(client_key = %key, "CURVE client refused: key not in rpc.curve_clients");
        })
        .map_err(|e| anyhow::anyhow!("rpc.curve_clients: {e}"))?;
    }
    Ok(Some(zerorpc::socket::Curve::Server {
        secret: rpc.curve_secret_key.clone(),
    }))
}
