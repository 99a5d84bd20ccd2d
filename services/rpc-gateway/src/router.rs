//! The gateway's router: services by name, each a set of zerorpc backends.
//!
//! - A service's backends come from its configured endpoints; a `tcp://name:port` endpoint is
//!   resolved in DNS and becomes one backend per address (a Kubernetes headless Service gives
//!   one per ready pod), re-resolved every `rpc.resolve_seconds`. A backend that leaves the
//!   answer gets no new calls and is closed when its last call ends.
//! - Health comes from heartbeats: every backend is pinged (`_zerorpc_ping`) each heartbeat
//!   period, and a backend lost on a ping or a call (silent for two periods) is `Down`: its
//!   circuit is open and no call goes to it until a ping is answered again. When every backend
//!   of a service is down a call fails at once rather than waiting on a dead peer.
//! - A call goes to the healthy backend with the fewest calls outstanding, under a deadline,
//!   and is retried on another backend only when the method is declared idempotent and the
//!   failure says the backend is gone rather than that the method failed.
//! - Draining refuses new calls and waits for those in flight.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quartet_kit::error::{ErrorKind, Problem};
use rmpv::Value;
use tokio_util::sync::CancellationToken;

use crate::limit::Limiter;
use crate::zerorpc::client::{CallError, Client, Reply};
use crate::zerorpc::event::Event;
use crate::zerorpc::socket::SocketError;

/// What the router knows of a backend's health (ordered: preferred first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Answered its last ping or call.
    Up,
    /// Not heard from yet: just added. Chosen only when no backend is up.
    Unknown,
    /// Lost on its last ping or call: the circuit is open, no call goes to it until it
    /// answers a ping.
    Down,
}

/// One backend: a zerorpc server, its health and the calls it has in flight.
#[derive(Debug)]
pub struct Backend {
    /// Its endpoint, e.g. `tcp://10.0.0.7:4242`.
    pub endpoint: String,
    /// The configured endpoint it came from (a DNS name resolves to several backends).
    origin: String,
    client: Client,
    outstanding: AtomicUsize,
    health: Mutex<Health>,
    probing: AtomicBool,
    /// Gone from its name's DNS answer: its last calls finish, its metrics are not renewed.
    removed: AtomicBool,
}

impl Backend {
    fn connect(endpoint: &str, origin: &str, heartbeat: Duration) -> Result<Self, SocketError> {
        Ok(Self {
            endpoint: endpoint.to_owned(),
            origin: origin.to_owned(),
            client: Client::connect(endpoint, None)?.heartbeat(heartbeat),
            outstanding: AtomicUsize::new(0),
            health: Mutex::new(Health::Unknown),
            probing: AtomicBool::new(false),
            removed: AtomicBool::new(false),
        })
    }

    /// Its health now.
    pub fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `health`; the previous value.
    fn set(&self, health: Health) -> Health {
        std::mem::replace(
            &mut *self.health.lock().unwrap_or_else(|p| p.into_inner()),
            health,
        )
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.client.close();
    }
}

/// A service: its configured endpoints, its backends now, and the methods safe to retry.
#[derive(Debug)]
pub struct Service {
    declared: Vec<String>,
    backends: RwLock<Vec<Arc<Backend>>>,
    idempotent: Vec<String>,
    /// Methods seen to exist, for metric labels (others are counted as `_other`).
    known: RwLock<std::collections::HashSet<String>>,
}

impl Service {
    /// The metric label for `method`: itself once it is known to exist.
    fn label<'a>(&self, method: &'a str) -> &'a str {
        if self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(method)
        {
            method
        } else {
            OTHER
        }
    }

    fn learn(&self, method: &str) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.len() < KNOWN_METHODS && !known.contains(method) {
            known.insert(method.to_owned());
        }
    }

    fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Services by name.
#[derive(Debug)]
pub struct Router {
    services: BTreeMap<String, Service>,
    heartbeat: Duration,
    metrics: Option<Metrics>,
    limiter: Option<Limiter>,
    draining: AtomicBool,
    in_flight: Arc<AtomicUsize>,
    /// Services' descriptions (from inspect) and when they were asked.
    described: Mutex<BTreeMap<String, (std::time::Instant, serde_json::Value)>>,
}

/// How long a service's description is kept before its backends are asked again.
pub const DESCRIPTION_TTL: Duration = Duration::from_secs(30);

/// Per service and method: calls by outcome, their duration, calls in flight; per backend:
/// whether it is up.
#[derive(Debug, Clone)]
struct Metrics {
    calls: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
    in_flight: prometheus::IntGaugeVec,
    up: prometheus::IntGaugeVec,
}

/// Why a call through the router failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// No service of that name is configured.
    #[error("no service named {0:?}")]
    UnknownService(String),
    /// Every backend of the service is down (or it has none): the call was not sent.
    #[error("no healthy backend for {service}: {down} of {total} down")]
    NoBackend {
        /// The service.
        service: String,
        /// Backends down.
        down: usize,
        /// Backends known.
        total: usize,
    },
    /// The gateway is shutting down and takes no new calls.
    #[error("the gateway is draining: no new calls")]
    Draining,
    /// The backend answered or failed (see [`CallError`]).
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Parses `rpc.backends`: `service=endpoint|endpoint,…` (a service's endpoints separated by
/// `|`, services by `,`).
pub fn parse_backends(spec: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut services = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, endpoints) = item
            .split_once('=')
            .ok_or_else(|| format!("rpc.backends: {item:?} is not service=endpoint|endpoint"))?;
        let endpoints: Vec<String> = endpoints
            .split('|')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad) = endpoints
            .iter()
            .find(|e| !e.starts_with("tcp://") && !e.starts_with("ipc://"))
        {
            return Err(format!(
                "rpc.backends: {bad:?} (for {name}) is not a tcp:// or ipc:// endpoint"
            ));
        }
        if let Some(bad) = endpoints.iter().find(|e| {
            e.strip_prefix("tcp://")
                .and_then(|a| a.rsplit_once(':'))
                .is_some_and(|(_, port)| port.parse::<u16>().is_err())
        }) {
            return Err(format!(
                "rpc.backends: {bad:?} (for {name}) has no port number"
            ));
        }
        if endpoints.is_empty() {
            return Err(format!("rpc.backends: service {name:?} has no endpoint"));
        }
        let name = name.trim();
        crate::input::name("service", name).map_err(|e| format!("rpc.backends: {e}"))?;
        services.push((name.to_owned(), endpoints));
    }
    Ok(services)
}

/// The endpoints a configured endpoint stands for: itself when it names an address (or is
/// `ipc://`), else one per address its host name resolves to.
pub async fn expand(declared: &str) -> Result<Vec<String>, String> {
    let Some(address) = declared.strip_prefix("tcp://") else {
        return Ok(vec![declared.to_owned()]);
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{declared:?} has no port"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(vec![declared.to_owned()]);
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{declared:?}: {port:?} is not a port"))?;
    let addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?;
    Ok(endpoints(port, addresses.map(|a| a.ip())))
}

/// `tcp://` endpoints for `addresses` at `port`, sorted, each once.
fn endpoints(port: u16, addresses: impl Iterator<Item = IpAddr>) -> Vec<String> {
    let mut out: Vec<String> = addresses
        .map(|ip| match ip {
            IpAddr::V4(v4) => format!("tcp://{v4}:{port}"),
            IpAddr::V6(v6) => format!("tcp://[{v6}]:{port}"),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Router {
    /// A router whose clients beat every `heartbeat` (zerorpc's default is 5 s); backends
    /// are pinged as often.
    pub fn new(heartbeat: Duration) -> Self {
        Self {
            services: BTreeMap::new(),
            heartbeat,
            metrics: None,
            limiter: None,
            draining: AtomicBool::new(false),
            in_flight: Arc::default(),
            described: Mutex::default(),
        }
    }

    /// Limits each caller (token subject) to what `limiter` admits.
    pub fn limit(mut self, limiter: Limiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Records calls in `registry`: `quartet_rpc_calls_total{service,method,outcome}` (ok,
    /// error, lost, timeout, unavailable, unknown), `quartet_rpc_call_seconds{service,method}`,
    /// `quartet_rpc_in_flight{service,method}`, and `quartet_rpc_backend_up{service,endpoint}`.
    pub fn metrics(mut self, registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
        let calls = IntCounterVec::new(
            Opts::new(
                "quartet_rpc_calls_total",
                "Calls through the gateway, by service, method and outcome",
            ),
            &["service", "method", "outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "quartet_rpc_call_seconds",
                "Time to a call's answer (for a stream, its first item)",
            ),
            &["service", "method"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("quartet_rpc_in_flight", "Calls waiting for their answer"),
            &["service", "method"],
        )?;
        let up = IntGaugeVec::new(
            Opts::new(
                "quartet_rpc_backend_up",
                "1 when the backend answered its last ping or call, 0 when it is down or not heard from yet",
            ),
            &["service", "endpoint"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(up.clone()))?;
        self.metrics = Some(Metrics {
            calls,
            seconds,
            in_flight,
            up,
        });
        Ok(self)
    }

    /// Adds service `name` served by `endpoints` (DNS names resolved now, and again by
    /// [`Router::watch`]; one that does not resolve yet leaves the service without its
    /// backends until it does); `idempotent` methods may be retried. Fails when an endpoint
    /// cannot be connected.
    pub async fn add(
        &mut self,
        name: &str,
        endpoints: &[String],
        idempotent: &[String],
    ) -> Result<(), String> {
        let mut backends = Vec::new();
        for declared in endpoints {
            // A name that does not resolve yet (a headless Service with no ready pod) is
            // looked up again by `watch`; the gateway starts without it.
            let resolved = expand(declared).await.unwrap_or_else(|e| {
                tracing::warn!(service = name, error = %e, "a backend name does not resolve yet");
                Vec::new()
            });
            for endpoint in resolved {
                let backend = Backend::connect(&endpoint, declared, self.heartbeat)
                    .map_err(|e| e.to_string())?;
                backends.push(Arc::new(backend));
            }
        }
        self.services.insert(
            name.to_owned(),
            Service {
                declared: endpoints.to_vec(),
                backends: RwLock::new(backends),
                idempotent: idempotent.to_vec(),
                known: RwLock::default(),
            },
        );
        Ok(())
    }

    /// The configured service names.
    pub fn services(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
    }

    /// A service's backends now: endpoint and health.
    pub fn backends(&self, service: &str) -> Vec<(String, Health)> {
        self.services.get(service).map_or_else(Vec::new, |s| {
            s.backends()
                .iter()
                .map(|b| (b.endpoint.clone(), b.health()))
                .collect()
        })
    }

    /// Whether `caller` may call `service.method` now: it holds the permission (see
    /// [`authorize`]) and is within its rate limit.
    pub fn admit(
        &self,
        caller: &quartet_kit::token::Claims,
        service: &str,
        method: &str,
    ) -> Result<(), Problem> {
        authorize(caller, service, method)?;
        self.charge(caller)
    }

    /// Whether `caller` may see what `service` offers (`GET /v1/services/{service}`):
    /// `rpc:describe:<service>`, or the service-wide `rpc:call:<service>.*`. Not charged to
    /// the rate limit (see [`Router::charge`]).
    pub fn may_describe(
        &self,
        caller: &quartet_kit::token::Claims,
        service: &str,
    ) -> Result<(), Problem> {
        crate::input::name("service", service).map_err(|e| e.problem())?;
        quartet_kit::token::require(caller, &format!("rpc:call:{service}.*"))
            .or_else(|_| quartet_kit::token::require(caller, &format!("rpc:describe:{service}")))
    }

    /// Takes one request from `caller`'s rate limit; refused, a problem saying when to retry.
    pub fn charge(&self, caller: &quartet_kit::token::Claims) -> Result<(), Problem> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.admit(&caller.sub).map_err(|wait| {
            let mut problem = Problem::new(
                ErrorKind::ResourceExhausted,
                "rate-limited",
                format!(
                    "{} is over the gateway's rate limit ({}); retry in {:.2} s",
                    caller.sub,
                    limiter.describe(),
                    wait.as_secs_f64()
                ),
            );
            problem.retry_after_seconds = Some(wait.as_secs_f64().ceil() as u64);
            problem
        })
    }

    /// Pings every backend each heartbeat period and re-resolves DNS names every `resolve`,
    /// until `stop`.
    pub async fn watch(self: Arc<Self>, resolve: Duration, stop: CancellationToken) {
        let mut next_resolve = tokio::time::Instant::now() + resolve;
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if tokio::time::Instant::now() >= next_resolve {
                self.resolve().await;
                next_resolve = tokio::time::Instant::now() + resolve;
            }
            for (name, service) in &self.services {
                for backend in service.backends() {
                    if backend.probing.swap(true, Ordering::AcqRel) {
                        continue; // the last ping is still waiting
                    }
                    let (router, name) = (self.clone(), name.clone());
                    tokio::spawn(async move {
                        let ping = backend
                            .client
                            .call("_zerorpc_ping", Vec::new(), router.heartbeat * 3)
                            .await;
                        backend.probing.store(false, Ordering::Release);
                        router.observe(&name, &backend, &ping.map(|_| ()));
                    });
                }
            }
        }
    }

    /// Resolves every service's endpoints again: new addresses become backends, vanished
    /// ones stop getting calls. A name that fails to resolve keeps the backends it had.
    pub async fn resolve(&self) {
        for (name, service) in &self.services {
            let current = service.backends();
            let mut wanted: Vec<(String, String)> = Vec::new();
            for declared in &service.declared {
                match expand(declared).await {
                    Ok(list) => wanted.extend(list.into_iter().map(|e| (e, declared.clone()))),
                    Err(e) => {
                        tracing::warn!(service = %name, error = %e, "could not resolve a backend name; keeping its backends");
                        wanted.extend(
                            current
                                .iter()
                                .filter(|b| &b.origin == declared)
                                .map(|b| (b.endpoint.clone(), declared.clone())),
                        );
                    }
                }
            }
            let mut next = Vec::new();
            for (endpoint, origin) in wanted {
                if let Some(kept) = current.iter().find(|b| b.endpoint == endpoint) {
                    next.push(kept.clone());
                    continue;
                }
                match Backend::connect(&endpoint, &origin, self.heartbeat) {
                    Ok(backend) => {
                        tracing::info!(service = %name, %endpoint, "backend added");
                        next.push(Arc::new(backend));
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, %endpoint, error = %e, "could not connect a backend")
                    }
                }
            }
            for gone in current
                .iter()
                .filter(|b| !next.iter().any(|n| n.endpoint == b.endpoint))
            {
                tracing::info!(service = %name, endpoint = %gone.endpoint, "backend removed; its calls in flight finish");
                gone.removed.store(true, Ordering::Release);
                if let Some(m) = &self.metrics {
                    let _ = m.up.remove_label_values(&[name, &gone.endpoint]);
                }
            }
            *service.backends.write().unwrap_or_else(|p| p.into_inner()) = next;
        }
    }

    /// Records what a call or ping to `backend` says of its health.
    fn observe(&self, service: &str, backend: &Backend, outcome: &Result<(), CallError>) {
        observe(self.metrics.as_ref(), service, backend, outcome);
    }

    /// What `service` offers, from a backend's `_zerorpc_inspect`: `{service, name, methods:
    /// [{name, args, doc}]}` with `args` the positional argument names (`self` left out).
    /// Servers that cannot answer inspect (zerorpc-python on Python 3.11, where
    /// `inspect.getargspec` is gone) are asked `_zerorpc_list` and `_zerorpc_help` instead,
    /// and their `args` are `null`.
    ///
    /// The whole description takes at most `deadline`; a description is kept for
    /// [`DESCRIPTION_TTL`], so describing services does not load their backends.
    pub async fn inspect(
        &self,
        service: &str,
        deadline: Duration,
    ) -> Result<serde_json::Value, RouteError> {
        let cached = self
            .described
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .filter(|(at, _)| at.elapsed() < DESCRIPTION_TTL)
            .map(|(_, d)| d.clone());
        if let Some(described) = cached {
            return Ok(described);
        }
        let described = tokio::time::timeout(deadline, self.ask_description(service, deadline))
            .await
            .map_err(|_| RouteError::Call(CallError::Timeout(deadline)))??;
        self.described
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                service.to_owned(),
                (std::time::Instant::now(), described.clone()),
            );
        Ok(described)
    }

    async fn ask_description(
        &self,
        service: &str,
        deadline: Duration,
    ) -> Result<serde_json::Value, RouteError> {
        let value = |reply: Reply| match reply {
            Reply::Value(v) => Ok(v),
            Reply::Stream(_) => Err(RouteError::Call(CallError::Protocol(
                "a stream where a value was expected".into(),
            ))),
        };
        let inspected = self
            .call(service, "_zerorpc_inspect", Vec::new(), deadline)
            .await;
        let mut methods = Vec::new();
        let name;
        match inspected {
            Ok(reply) => {
                let described = to_json(&value(reply)?);
                name = described["name"].clone();
                if let Some(listed) = described["methods"].as_object() {
                    for (method, about) in listed {
                        let args = about["args"].as_array().map(|args| {
                            args.iter()
                                .filter_map(|a| a["name"].as_str().or_else(|| a.as_str()))
                                .filter(|a| *a != "self")
                                .map(serde_json::Value::from)
                                .collect::<Vec<_>>()
                        });
                        methods.push(serde_json::json!({
                            "name": method, "args": args, "doc": about["doc"],
                        }));
                    }
                }
            }
            Err(RouteError::Call(CallError::Remote(_))) => {
                name = to_json(&value(
                    self.call(service, "_zerorpc_name", Vec::new(), deadline)
                        .await?,
                )?);
                let listed = to_json(&value(
                    self.call(service, "_zerorpc_list", Vec::new(), deadline)
                        .await?,
                )?);
                for method in listed.as_array().into_iter().flatten() {
                    let Some(method) = method.as_str() else {
                        continue;
                    };
                    let doc = self
                        .call(service, "_zerorpc_help", vec![method.into()], deadline)
                        .await
                        .ok()
                        .and_then(|r| value(r).ok())
                        .map_or(serde_json::Value::Null, |d| to_json(&d));
                    methods.push(serde_json::json!({"name": method, "args": null, "doc": doc}));
                }
            }
            Err(e) => return Err(e),
        }
        methods.retain(|m| !m["name"].as_str().unwrap_or_default().starts_with('_'));
        methods.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Ok(serde_json::json!({"service": service, "name": name, "methods": methods}))
    }

    /// Refuses new calls and waits up to `within` for those in flight; how many are left.
    pub async fn drain(&self, within: Duration) -> usize {
        self.draining.store(true, Ordering::Release);
        let until = tokio::time::Instant::now() + within;
        while self.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.in_flight.load(Ordering::Acquire)
    }

    /// Calls `service.method(args)` within `deadline`, in a span of its own whose trace
    /// context travels to the backend as `traceparent` in the event header. The call counts
    /// as in flight until its answer — for a stream, until its last item — or until it is
    /// dropped.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        args: Vec<Value>,
        deadline: Duration,
    ) -> Result<Reply, RouteError> {
        use tracing::Instrument as _;
        let Some(target) = self.services.get(service) else {
            if let Some(m) = &self.metrics {
                m.calls.with_label_values(&[OTHER, OTHER, "unknown"]).inc();
            }
            return Err(RouteError::UnknownService(service.to_owned()));
        };
        // Counted before the draining check, so a drain that saw none in flight sees no more.
        let label = target.label(method);
        let guard = InFlight::start(
            self.in_flight.clone(),
            self.metrics
                .as_ref()
                .map(|m| m.in_flight.with_label_values(&[service, label])),
        );
        if self.draining.load(Ordering::Acquire) {
            return Err(RouteError::Draining);
        }
        let span = tracing::info_span!(
            "rpc.call",
            otel.name = %format!("rpc.call {service}.{method}"),
            otel.kind = "client",
            service,
            method
        );
        let started = std::time::Instant::now();
        let outcome = self
            .route(target, service, method, args, deadline)
            .instrument(span)
            .await;
        // A method exists once a backend answered it with anything but NameError.
        let answered = match &outcome {
            Ok(_) => true,
            Err(RouteError::Call(CallError::Remote(e))) => e.name != "NameError",
            Err(_) => false,
        };
        if answered {
            target.learn(method);
        }
        if let Some(m) = &self.metrics {
            let labels = [service, target.label(method)];
            m.seconds
                .with_label_values(&labels)
                .observe(started.elapsed().as_secs_f64());
            let kind = match &outcome {
                Ok(_) => "ok",
                Err(RouteError::UnknownService(_)) => "unknown",
                Err(RouteError::NoBackend { .. } | RouteError::Draining) => "unavailable",
                Err(RouteError::Call(CallError::Remote(_))) => "error",
                Err(RouteError::Call(CallError::Timeout(_))) => "timeout",
                Err(RouteError::Call(_)) => "lost",
            };
            m.calls
                .with_label_values(&[labels[0], labels[1], kind])
                .inc();
        }
        match outcome? {
            (Reply::Stream(items), backend) => Ok(Reply::Stream(
                self.watch_stream(service, backend, items, guard),
            )),
            (reply, _) => Ok(reply),
        }
    }

    /// Relays a stream's items, marking `backend` down when it is lost mid-stream (so the
    /// next calls avoid it without waiting for a ping); the call stays in flight (`guard`)
    /// until the stream ends or its reader goes.
    fn watch_stream(
        &self,
        service: &str,
        backend: Arc<Backend>,
        mut items: crate::zerorpc::client::Items,
        guard: InFlight,
    ) -> crate::zerorpc::client::Items {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (metrics, service) = (self.metrics.clone(), service.to_owned());
        tokio::spawn(async move {
            let _guard = guard;
            while let Some(item) = items.next().await {
                if let Err(e) = &item {
                    observe(metrics.as_ref(), &service, &backend, &Err(e.clone()));
                }
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        crate::zerorpc::client::Items::from_channel(rx)
    }

    /// The call on the chosen backend (and, for idempotent methods, on others when it is
    /// lost); the reply and the backend that gave it.
    async fn route(
        &self,
        target: &Service,
        service: &str,
        method: &str,
        args: Vec<Value>,
        deadline: Duration,
    ) -> Result<(Reply, Arc<Backend>), RouteError> {
        let retry = target.idempotent.iter().any(|m| m == method);
        let started = tokio::time::Instant::now();
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        loop {
            let backends = target.backends();
            // The healthiest backend not yet tried, then the one with fewest calls outstanding.
            let Some(backend) = backends
                .iter()
                .filter(|b| !tried.contains(&b.endpoint) && b.health() != Health::Down)
                .min_by_key(|b| (b.health(), b.outstanding.load(Ordering::Relaxed)))
                .cloned()
            else {
                return Err(match last {
                    Some(e) => RouteError::Call(e),
                    None => RouteError::NoBackend {
                        service: service.to_owned(),
                        down: backends
                            .iter()
                            .filter(|b| b.health() == Health::Down)
                            .count(),
                        total: backends.len(),
                    },
                });
            };
            tried.push(backend.endpoint.clone());
            let left = deadline.saturating_sub(started.elapsed());
            let mut request = Event::request(method, Value::Array(args.clone()));
            let mut trace = std::collections::HashMap::new();
            quartet_kit::telemetry::inject_current(&mut quartet_kit::telemetry::MapCarrier(
                &mut trace,
            ));
            for (key, value) in trace {
                request
                    .header
                    .extra
                    .push((Value::from(key), Value::from(value)));
            }
            let outcome = {
                let _outstanding = Outstanding::start(&backend);
                backend.client.call_with(request, left).await
            };
            self.observe(
                service,
                &backend,
                &outcome.as_ref().map(|_| ()).map_err(Clone::clone),
            );
            match outcome {
                Ok(reply) => return Ok((reply, backend)),
                Err(CallError::LostRemote(_) | CallError::Disconnected | CallError::Closed)
                    if retry =>
                {
                    tracing::warn!(service, method, backend = %backend.endpoint, "backend lost; retrying an idempotent call elsewhere");
                    last = outcome.err();
                }
                Err(e) => return Err(RouteError::Call(e)),
            }
        }
    }
}

/// The label of calls to services or methods not known to exist: a caller cannot grow the
/// metrics without bound by calling made-up names.
const OTHER: &str = "_other";

/// Methods learned per service (answered other than `NameError`), at most.
const KNOWN_METHODS: usize = 256;

/// A call in flight, counted in the router's total and its gauge until dropped — also when
/// the caller goes away mid-call, so a drain never waits on a call that is gone.
struct InFlight {
    total: Arc<AtomicUsize>,
    gauge: Option<prometheus::IntGauge>,
}

impl InFlight {
    fn start(total: Arc<AtomicUsize>, gauge: Option<prometheus::IntGauge>) -> Self {
        total.fetch_add(1, Ordering::AcqRel);
        if let Some(g) = &gauge {
            g.inc();
        }
        Self { total, gauge }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// A call outstanding on a backend (for least-outstanding balancing) until dropped.
struct Outstanding<'a>(&'a Backend);

impl<'a> Outstanding<'a> {
    fn start(backend: &'a Backend) -> Self {
        backend.outstanding.fetch_add(1, Ordering::Relaxed);
        Self(backend)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records what a call or ping to `backend` says of its health.
fn observe(
    metrics: Option<&Metrics>,
    service: &str,
    backend: &Backend,
    outcome: &Result<(), CallError>,
) {
    let health = match outcome {
        // An answer, even an error or a malformed one, says the backend is there: what a
        // caller sends can fail its own call, never close the circuit for everyone.
        Ok(()) | Err(CallError::Remote(_) | CallError::Protocol(_)) => Health::Up,
        // One call went silent while the backend answers on others (pings, other calls'
        // heartbeats): that call's channel is lost, not the backend.
        Err(CallError::LostRemote(_)) if backend.client.is_heard() => return,
        Err(CallError::LostRemote(_) | CallError::Disconnected | CallError::Closed) => Health::Down,
        // Slow, not gone: it kept beating (a silent one is lost before its deadline).
        Err(CallError::Timeout(_)) => return,
    };
    let before = backend.set(health);
    if before != health {
        match health {
            Health::Down => {
                tracing::warn!(service, endpoint = %backend.endpoint, "backend down: no calls until it answers a ping")
            }
            _ => tracing::info!(service, endpoint = %backend.endpoint, "backend up"),
        }
    }
    if let Some(m) = metrics.filter(|_| !backend.removed.load(Ordering::Acquire)) {
        m.up.with_label_values(&[service, &backend.endpoint])
            .set(i64::from(health == Health::Up));
    }
}

/// Whether `caller` may call `service.method`: it holds `rpc:call:<service>.<method>`, or
/// `rpc:call:<service>.*` for the whole service. (In Shiro's permission syntax `.` does not
/// separate parts, so `reports.*` is not a wildcard there; the gateway accepts the service-wide
/// grant explicitly.) The refusal names the method's permission.
///
/// The names are checked first ([`crate::input::callable`]), so no name can widen or cross a
/// grant: a refusal there is `InvalidArgument` (or `NotFound` for a zerorpc protocol event's
/// name), never a permission looked up.
pub fn authorize(
    caller: &quartet_kit::token::Claims,
    service: &str,
    method: &str,
) -> Result<(), quartet_kit::error::Problem> {
    crate::input::callable(service, method).map_err(|e| e.problem())?;
    let exact = format!("rpc:call:{service}.{method}");
    quartet_kit::token::require(caller, &format!("rpc:call:{service}.*"))
        .or_else(|_| quartet_kit::token::require(caller, &exact))
}

/// A MessagePack value as JSON: binary as base64 text, map keys as text.
pub fn to_json(value: &Value) -> serde_json::Value {
    use base64::Engine as _;
    match value {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::Integer(i) => i
            .as_i64()
            .map(serde_json::Value::from)
            .or_else(|| i.as_u64().map(serde_json::Value::from))
            .unwrap_or(serde_json::Value::Null),
        Value::F32(f) => serde_json::Value::from(f64::from(*f)),
        Value::F64(f) => serde_json::Value::from(*f),
        Value::String(s) => s
            .as_str()
            .map_or(serde_json::Value::Null, serde_json::Value::from),
        Value::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b).into(),
        Value::Array(items) => items.iter().map(to_json).collect(),
        Value::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.as_str().unwrap_or_default().to_owned(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(_, bytes) => base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into(),
    }
}

/// A JSON value as MessagePack, as Python's msgpack would write it (integers as integers,
/// other numbers as float64).
pub fn from_json(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_u64().map(Value::from))
            .unwrap_or_else(|| Value::F64(n.as_f64().unwrap_or_default())),
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        serde_json::Value::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (Value::from(k.as_str()), from_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_bad_ones_are_named() {
        let parsed =
            parse_backends("reports=tcp://a:1|tcp://b:2, mail=ipc:///tmp/mail").expect("valid");
        assert_eq!(
            parsed[0],
            (
                "reports".into(),
                vec!["tcp://a:1".into(), "tcp://b:2".into()]
            )
        );
        assert_eq!(parsed[1].1, vec!["ipc:///tmp/mail".to_owned()]);
        assert!(
            parse_backends("reports")
                .expect_err("bad")
                .contains("not service=endpoint")
        );
        assert!(
            parse_backends("reports=http://x")
                .expect_err("bad")
                .contains("not a tcp://")
        );
    }

    #[tokio::test]
    async fn host_names_resolve_to_one_backend_per_address() {
        for literal in ["tcp://127.0.0.1:4242", "tcp://[::1]:4242", "ipc:///tmp/x"] {
            assert_eq!(expand(literal).await.expect("literal"), vec![literal]);
        }
        let resolved = expand("tcp://localhost:4242")
            .await
            .expect("localhost resolves");
        assert!(
            resolved.contains(&"tcp://127.0.0.1:4242".to_owned()),
            "{resolved:?}"
        );
        let addresses = ["10.0.0.8", "10.0.0.7", "fd00::1", "10.0.0.7"]
            .iter()
            .map(|a| a.parse().expect("address"));
        assert_eq!(
            endpoints(4242, addresses),
            [
                "tcp://10.0.0.7:4242",
                "tcp://10.0.0.8:4242",
                "tcp://[fd00::1]:4242"
            ]
        );
        assert!(
            parse_backends("reports=tcp://reports:http")
                .expect_err("no port")
                .contains("no port number")
        );
    }

    #[test]
    fn json_and_msgpack_convert_both_ways() {
        let json =
            serde_json::json!({"a": [1, -2, 2.5, "x", null, true, {"b": 18446744073709551615u64}]});
        assert_eq!(to_json(&from_json(&json)), json);
        assert_eq!(
            to_json(&Value::Binary(b"hi".to_vec())),
            serde_json::json!("aGk=")
        );
    }
}
