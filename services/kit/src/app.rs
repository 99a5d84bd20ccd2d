//! The life of a server process, the same for every service: load the configuration, start
//! telemetry, bind every listener, serve until a stop signal, drain, exit.
//!
//! A service's `main.rs` is one call to [`main`]; its lib provides `run(config, ctx)`, which
//! builds its APIs and hands them to [`Context::serve`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::config::{Action, ConfigError, Loader};
use crate::health::{Metrics, Readiness};
use crate::http::RestApi;
use crate::settings::{BaseSettings, ServerSettings};
use crate::shutdown::{Shutdown, stop_signal};

/// A service's configuration type: typed, documented, defaulted, and holding the base settings.
pub trait ServiceConfig:
    Serialize + DeserializeOwned + JsonSchema + Default + Send + 'static
{
    /// The logging, admin and shutdown settings.
    fn base(&self) -> &BaseSettings;
}

/// What the kit hands a running service: shutdown, readiness and metrics, shared by all parts.
#[derive(Clone, Debug)]
pub struct Context {
    /// The binary's name, e.g. `quartet-auth`.
    pub service: &'static str,
    /// The stop signal and tracked in-flight work.
    pub shutdown: Shutdown,
    /// Readiness checks behind `/readyz`.
    pub readiness: Readiness,
    /// The Prometheus registry behind `/metrics`.
    pub metrics: Metrics,
    started: Instant,
    grace: Duration,
}

/// The addresses a server actually bound (port 0 resolved), in the order they are logged.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    /// The gRPC listener.
    pub grpc: Option<SocketAddr>,
    /// The REST listener.
    pub http: Option<SocketAddr>,
}

/// The listeners to serve.
pub struct Listeners {
    /// The admin listener's address (always served).
    pub admin: SocketAddr,
    /// The gRPC listener and the service's routes.
    pub grpc: Option<(SocketAddr, Routes)>,
    /// The REST listener and the service's API.
    pub http: Option<(SocketAddr, RestApi)>,
    /// Certificate and key files for the API listeners that speak TLS.
    pub tls: ListenerTls,
}

/// Certificate and key files (PEM) of the API listeners that speak TLS; `None`: plaintext.
#[derive(Debug, Clone, Default)]
pub struct ListenerTls {
    /// The gRPC listener's.
    pub grpc: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The REST listener's.
    pub http: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Listeners {
    /// All three listeners at the addresses in `settings`, with their TLS files.
    pub fn server(
        settings: &ServerSettings,
        grpc: Routes,
        http: RestApi,
    ) -> Result<Self, ServeError> {
        let tls = |listener: &'static str, s: &crate::settings::ListenSettings| {
            s.tls()
                .map_err(|message| ServeError::Tls { listener, message })
        };
        Ok(Self {
            admin: settings.base.admin.listen,
            grpc: Some((settings.grpc.listen, grpc)),
            http: Some((settings.http.listen, http)),
            tls: ListenerTls {
                grpc: tls("grpc", &settings.grpc)?,
                http: tls("http", &settings.http)?,
            },
        })
    }

    /// Only the admin listener, for processes without an API of their own (the operator).
    pub fn admin_only(settings: &BaseSettings) -> Self {
        Self {
            admin: settings.admin.listen,
            grpc: None,
            http: None,
            tls: ListenerTls::default(),
        }
    }
}

/// Why serving stopped other than by a stop signal.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener's address could not be bound.
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A listener's TLS certificate or key is unusable.
    #[error("TLS for the {listener} listener: {message}")]
    Tls {
        /// Which listener.
        listener: &'static str,
        /// What is wrong, naming the file.
        message: String,
    },
    /// A server failed while running.
    #[error("{listener} server failed: {message}")]
    Server {
        /// Which listener.
        listener: &'static str,
        /// What failed.
        message: String,
    },
}

fn bind(listener: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    let socket = std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind {
        listener,
        addr,
        source,
    })?;
    socket
        .set_nonblocking(true)
        .map_err(|source| ServeError::Bind {
            listener,
            addr,
            source,
        })?;
    Ok(socket)
}

/// Loads a listener's TLS `files` (certificate, key) with `load`; `None` for plaintext.
fn tls_files<T>(
    listener: &'static str,
    files: &Option<(std::path::PathBuf, std::path::PathBuf)>,
    load: fn(&std::path::Path, &std::path::Path) -> Result<T, String>,
) -> Result<Option<T>, ServeError> {
    files
        .as_ref()
        .map(|(cert, key)| load(cert, key))
        .transpose()
        .map_err(|message| ServeError::Tls { listener, message })
}

fn local(listener: &std::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

impl Context {
    /// A context for `service` whose drain may last `grace`.
    pub fn new(service: &'static str, grace: Duration) -> Self {
        Self {
            service,
            shutdown: Shutdown::new(),
            readiness: Readiness::default(),
            metrics: Metrics::new(service),
            started: Instant::now(),
            grace,
        }
    }

    /// Time since the context was made.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Serves `listeners` until SIGTERM/SIGINT or [`Shutdown::trigger`], then drains.
    /// `on_bound` is told the bound addresses once every listener is open.
    pub async fn serve(
        self,
        listeners: Listeners,
        on_bound: impl FnOnce(&Bound),
    ) -> Result<(), ServeError> {
        // TLS files first, then every port: a bad file or a taken port fails the start,
        // not the middle of serving.
        let http_tls = tls_files("http", &listeners.tls.http, crate::tls::server_config)?;
        let grpc_tls = tls_files("grpc", &listeners.tls.grpc, crate::tls::grpc_identity)?;
        let admin = bind("admin", listeners.admin)?;
        let grpc = match &listeners.grpc {
            Some((addr, _)) => Some(bind("grpc", *addr)?),
            None => None,
        };
        let http = match &listeners.http {
            Some((addr, _)) => Some(bind("http", *addr)?),
            None => None,
        };
        let bound = Bound {
            admin: local(&admin),
            grpc: grpc.as_ref().and_then(local),
            http: http.as_ref().and_then(local),
        };
        for (name, addr) in [
            ("admin", bound.admin),
            ("grpc", bound.grpc),
            ("http", bound.http),
        ] {
            if let Some(addr) = addr {
                tracing::info!(listener = name, %addr, "listening");
            }
        }

        let server_error = |listener: &'static str| {
            move |e: std::io::Error| ServeError::Server {
                listener,
                message: e.to_string(),
            }
        };
        let admin_server = crate::http::serve(
            admin,
            "admin",
            1,
            self.grace,
            self.clone(),
            crate::http::admin_routes(self.service),
            None,
        )
        .map_err(server_error("admin"))?;
        let admin_handle = admin_server.handle();
        let admin_task = tokio::spawn(admin_server);

        let mut rest = None;
        if let (Some(listener), Some((_, api))) = (http, listeners.http) {
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
            let server = crate::http::serve(
                listener,
                "http",
                workers,
                self.grace,
                self.clone(),
                crate::http::rest_routes(self.service, api),
                http_tls,
            )
            .map_err(server_error("http"))?;
            rest = Some((server.handle(), tokio::spawn(server)));
        }

        let mut grpc_task = None;
        let mut reporter = None;
        if let (Some(listener), Some((_, routes))) = (grpc, listeners.grpc) {
            let (router, health) =
                crate::grpc::server(&self, routes, grpc_tls)
                    .await
                    .map_err(|e| ServeError::Server {
                        listener: "grpc",
                        message: e.to_string(),
                    })?;
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(server_error("grpc"))?;
            // Small RPCs (replica heartbeats, reads) must not wait on Nagle's algorithm.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let stop = self.shutdown.clone();
            grpc_task = Some(tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, async move { stop.triggered().await })
                    .await
            }));
            reporter = Some(health);
        }
        on_bound(&bound);

        // Serve until asked to stop, or until a server dies on its own.
        let failure = {
            let crashed = async {
                match &mut grpc_task {
                    Some(task) => match task.await {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(e.to_string()),
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                signal = stop_signal() => {
                    match signal {
                        Ok(name) => tracing::info!(signal = name, grace = ?self.grace, "stop requested; draining"),
                        Err(e) => tracing::error!(error = %e, "cannot watch stop signals; stopping"),
                    }
                    None
                }
                () = self.shutdown.triggered() => {
                    tracing::info!(grace = ?self.grace, "shutdown triggered; draining");
                    None
                }
                failure = crashed => failure.or_else(|| Some("stopped unexpectedly".into())),
            }
        };

        // Drain: not ready, stop accepting, let in-flight work finish within the deadline.
        self.readiness.set_draining();
        self.shutdown.trigger();
        if let Some(reporter) = &reporter {
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
        }
        let drain = async {
            if let Some((handle, task)) = rest {
                handle.stop(true).await;
                let _ = task.await;
            }
            if let Some(task) = grpc_task.take()
                && failure.is_none()
            {
                let _ = task.await;
            }
            self.shutdown.drain_tracked().await;
        };
        match tokio::time::timeout(self.grace, drain).await {
            Ok(()) => tracing::info!("drained"),
            Err(_) => tracing::warn!(
                grace = ?self.grace,
                tracked_tasks = self.shutdown.in_flight(),
                "drain deadline passed; abandoning the remaining work"
            ),
        }
        admin_handle.stop(false).await;
        let _ = admin_task.await;
        match failure {
            Some(message) => Err(ServeError::Server {
                listener: "grpc",
                message,
            }),
            None => Ok(()),
        }
    }
}

/// Stack of each runtime thread. Every decoder of client input bounds its nesting (SQL
/// expressions, MessagePack, JSON); this is the margin behind those limits, generous so that a
/// debug build holds them too. Only the pages a thread touches are ever committed.
const RUNTIME_THREAD_STACK: usize = 16 * 1024 * 1024;

/// The whole `main` of a service binary: configuration, telemetry, runtime, `run`, exit code.
///
/// Exit codes: 0 after a clean stop (including a drain cut short by its deadline), 1 when the
/// service failed, 2 when the configuration is invalid.
pub fn main<C, F, Fut>(service: &'static str, about: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, Context) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let loader = Loader::new(service, about);
    let loaded = match loader.load::<C, _, _, _>(std::env::args_os(), env.clone()) {
        Ok(loaded) => loaded,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match loaded.action {
        Action::Run => {}
        Action::PrintConfig => {
            return print(
                &toml::to_string_pretty(&loaded.config).unwrap_or_else(|e| e.to_string()),
            );
        }
        Action::PrintReference => return print(&loader.reference::<C>()),
    }
    let config = loaded.config;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(RUNTIME_THREAD_STACK)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let base = config.base().clone();
        let telemetry = match crate::telemetry::init(service, &base.log, &env) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("{service}: {e}");
                return ExitCode::from(2);
            }
        };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting {service}");
        let ctx = Context::new(service, base.shutdown.grace);
        let result = run(config, ctx).await;
        let code = match &result {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "failed");
                ExitCode::FAILURE
            }
        };
        // Flushing blocks on the exporter; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        code
    })
}

#[allow(clippy::print_stdout)]
fn print(text: &str) -> ExitCode {
    println!("{}", text.trim_end());
    ExitCode::SUCCESS
}

/// Serves the standard three listeners of a service with no domain routes beyond `grpc` and
/// `http`: a convenience for `run` functions.
pub async fn serve_server(
    ctx: Context,
    settings: &ServerSettings,
    grpc: Routes,
    http: RestApi,
) -> anyhow::Result<()> {
    ctx.serve(Listeners::server(settings, grpc, http)?, |_| {})
        .await?;
    Ok(())
}
