//! The gateway's router: services by name, each a set of zerorpc backends; a call goes to the
//! backend with the fewest calls outstanding, under a deadline, and is retried on another
//! backend only when the method is declared idempotent and the failure says the backend is
//! gone (lost, unreachable) rather than that the method failed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmpv::Value;

use crate::zerorpc::client::{CallError, Client, Reply};
use crate::zerorpc::event::Event;
use crate::zerorpc::socket::SocketError;

/// One backend: a zerorpc server and the calls it has in flight.
#[derive(Debug)]
pub struct Backend {
    /// Its endpoint, e.g. `tcp://10.0.0.7:4242`.
    pub endpoint: String,
    client: Client,
    outstanding: AtomicUsize,
}

/// A service: its backends and the methods safe to retry.
#[derive(Debug)]
pub struct Service {
    backends: Vec<Arc<Backend>>,
    idempotent: Vec<String>,
}

/// Services by name.
#[derive(Debug, Default)]
pub struct Router {
    services: BTreeMap<String, Service>,
    heartbeat: Option<Duration>,
    metrics: Option<Metrics>,
}

/// Per service and method: calls by outcome, their duration, calls in flight.
#[derive(Debug, Clone)]
struct Metrics {
    calls: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
    in_flight: prometheus::IntGaugeVec,
}

/// Why a call through the router failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// No service of that name is configured.
    #[error("no service named {0:?}")]
    UnknownService(String),
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
        if endpoints.is_empty() {
            return Err(format!("rpc.backends: service {name:?} has no endpoint"));
        }
        services.push((name.trim().to_owned(), endpoints));
    }
    Ok(services)
}

impl Router {
    /// A router whose clients use `heartbeat` (zerorpc's 5 s by default).
    pub fn new(heartbeat: Option<Duration>) -> Self {
        Self {
            services: BTreeMap::new(),
            heartbeat,
            metrics: None,
        }
    }

    /// Records calls in `registry`: `quartet_rpc_calls_total{service,method,outcome}` (ok,
    /// error, lost, timeout, unknown), `quartet_rpc_call_seconds{service,method}`,
    /// `quartet_rpc_in_flight{service,method}`.
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
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        self.metrics = Some(Metrics {
            calls,
            seconds,
            in_flight,
        });
        Ok(self)
    }

    /// Adds service `name` served by `endpoints`; `idempotent` methods may be retried.
    pub fn add(
        &mut self,
        name: &str,
        endpoints: &[String],
        idempotent: &[String],
    ) -> Result<(), SocketError> {
        let mut backends = Vec::new();
        for endpoint in endpoints {
            let mut client = Client::connect(endpoint, None)?;
            if let Some(period) = self.heartbeat {
                client = client.heartbeat(period);
            }
            backends.push(Arc::new(Backend {
                endpoint: endpoint.clone(),
                client,
                outstanding: AtomicUsize::new(0),
            }));
        }
        self.services.insert(
            name.to_owned(),
            Service {
                backends,
                idempotent: idempotent.to_vec(),
            },
        );
        Ok(())
    }

    /// The configured service names.
    pub fn services(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
    }

    /// Calls `service.method(args)` within `deadline`, in a span of its own whose trace
    /// context travels to the backend as `traceparent` in the event header.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        args: Vec<Value>,
        deadline: Duration,
    ) -> Result<Reply, RouteError> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "rpc.call",
            otel.name = %format!("rpc.call {service}.{method}"),
            otel.kind = "client",
            service,
            method
        );
        let labels = [service, method];
        let started = std::time::Instant::now();
        if let Some(m) = &self.metrics {
            m.in_flight.with_label_values(&labels).inc();
        }
        let outcome = self
            .route(service, method, args, deadline)
            .instrument(span)
            .await;
        if let Some(m) = &self.metrics {
            m.in_flight.with_label_values(&labels).dec();
            m.seconds
                .with_label_values(&labels)
                .observe(started.elapsed().as_secs_f64());
            let kind = match &outcome {
                Ok(_) => "ok",
                Err(RouteError::UnknownService(_)) => "unknown",
                Err(RouteError::Call(CallError::Remote(_))) => "error",
                Err(RouteError::Call(CallError::Timeout(_))) => "timeout",
                Err(RouteError::Call(_)) => "lost",
            };
            m.calls.with_label_values(&[service, method, kind]).inc();
        }
        outcome
    }

    async fn route(
        &self,
        service: &str,
        method: &str,
        args: Vec<Value>,
        deadline: Duration,
    ) -> Result<Reply, RouteError> {
        let target = self
            .services
            .get(service)
            .ok_or_else(|| RouteError::UnknownService(service.to_owned()))?;
        let retry = target.idempotent.iter().any(|m| m == method);
        let attempts = if retry { target.backends.len() } else { 1 };
        let started = tokio::time::Instant::now();
        let mut tried: Vec<usize> = Vec::new();
        let mut last = None;
        for _ in 0..attempts {
            // Least outstanding calls among the backends not yet tried.
            let Some((index, backend)) = target
                .backends
                .iter()
                .enumerate()
                .filter(|(i, _)| !tried.contains(i))
                .min_by_key(|(_, b)| b.outstanding.load(Ordering::Relaxed))
            else {
                break;
            };
            tried.push(index);
            let left = deadline.saturating_sub(started.elapsed());
            backend.outstanding.fetch_add(1, Ordering::Relaxed);
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
            let outcome = backend.client.call_with(request, left).await;
            backend.outstanding.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Err(CallError::LostRemote(_) | CallError::Closed) if retry => {
                    tracing::warn!(service, method, backend = %backend.endpoint, "backend lost; retrying an idempotent call elsewhere");
                    last = outcome.err();
                }
                other => return other.map_err(RouteError::from),
            }
        }
        Err(RouteError::Call(last.unwrap_or(CallError::Closed)))
    }
}

/// Whether `caller` may call `service.method`: it holds `rpc:call:<service>.<method>`, or
/// `rpc:call:<service>.*` for the whole service. (In Shiro's permission syntax `.` does not
/// separate parts, so `reports.*` is not a wildcard there; the gateway accepts the service-wide
/// grant explicitly.) The refusal names the method's permission.
pub fn authorize(
    caller: &quartet_kit::token::Claims,
    service: &str,
    method: &str,
) -> Result<(), quartet_kit::error::Problem> {
    let exact = format!("rpc:call:{service}.{method}");
    quartet_kit::token::require(caller, &format!("rpc:call:{service}.*"))
        .or_else(|_| quartet_kit::token::require(caller, &exact))
}

/// The time a call may take: what the caller asked for (seconds, above 0), at most `max`.
pub fn timeout(requested: Option<f64>, max: Duration) -> Duration {
    requested
        .filter(|t| *t > 0.0 && t.is_finite())
        .map_or(max, |t| Duration::from_secs_f64(t).min(max))
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
