//! Readiness checks and Prometheus metrics, the state behind the admin listener.
//!
//! Liveness (`/healthz`) only says the process answers. Readiness (`/readyz`) runs every
//! check a service registered (a store reachable, a leader known, ...) with a time limit each,
//! and turns false for good once shutdown starts, so load balancers stop sending work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use utoipa::ToSchema;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The registered readiness checks and the draining flag. Cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<(String, Check)>>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("checks", &self.names())
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish()
    }
}

/// The outcome of one readiness check.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The check's name, as registered.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why it failed; empty when it passed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReadinessReport {
    /// True when every check passes and the server is not shutting down.
    pub ready: bool,
    /// Every check's outcome, including the built-in `shutdown` check.
    pub checks: Vec<CheckOutcome>,
}

impl ReadinessReport {
    /// `name: detail` for each failing check.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }
}

impl Readiness {
    /// Registers a named check; `/readyz` passes only while every check returns `Ok`.
    pub fn register<F, Fut>(&self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        self.checks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((name.to_owned(), check));
    }

    fn names(&self) -> Vec<String> {
        self.checks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Marks the server as shutting down: not ready from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Runs every check concurrently, each bounded by [`CHECK_TIMEOUT`].
    pub async fn report(&self) -> ReadinessReport {
        let checks: Vec<(String, Check)> = self
            .checks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let runs = checks.into_iter().map(|(name, check)| async move {
            let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            CheckOutcome {
                name,
                ok: result.is_ok(),
                detail: result.err().unwrap_or_default(),
            }
        });
        let mut outcomes = vec![CheckOutcome {
            name: "shutdown".into(),
            ok: !self.draining.load(Ordering::SeqCst),
            detail: if self.draining.load(Ordering::SeqCst) {
                "draining before exit".into()
            } else {
                String::new()
            },
        }];
        outcomes.extend(futures::future::join_all(runs).await);
        ReadinessReport {
            ready: outcomes.iter().all(|c| c.ok),
            checks: outcomes,
        }
    }
}

/// The process's Prometheus registry with the metrics the kit itself records.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
}

impl Metrics {
    /// A registry for `service` with build info, process metrics and HTTP request metrics.
    pub fn new(service: &str) -> Self {
        let registry = Registry::new();
        let build = IntGauge::with_opts(
            Opts::new(
                "quartet_build_info",
                "Always 1; labels say which service and version run here",
            )
            .const_label("service", service)
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("static metric definition is valid");
        build.set(1);
        let http_requests = IntCounterVec::new(
            Opts::new(
                "quartet_http_requests_total",
                "HTTP requests served, by listener, route and status",
            ),
            &["listener", "method", "route", "status"],
        )
        .expect("static metric definition is valid");
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(
                "quartet_http_request_duration_seconds",
                "HTTP request latency, by listener and route",
            ),
            &["listener", "method", "route"],
        )
        .expect("static metric definition is valid");
        for collector in [
            Box::new(build) as Box<dyn prometheus::core::Collector>,
            Box::new(http_requests.clone()),
            Box::new(http_seconds.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry
                .register(collector)
                .expect("kit metrics are registered once per registry");
        }
        Self {
            registry,
            http_requests,
            http_seconds,
        }
    }

    /// The registry, for a service to register its own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one finished HTTP request. `route` is the matched pattern, never the raw path,
    /// so label cardinality stays bounded.
    pub fn observe_http(
        &self,
        listener: &str,
        method: &str,
        route: &str,
        status: u16,
        elapsed: Duration,
    ) {
        self.http_requests
            .with_label_values(&[listener, method, route, &status.to_string()])
            .inc();
        self.http_seconds
            .with_label_values(&[listener, method, route])
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readiness_fails_on_a_failing_or_slow_check_and_when_draining() {
        let readiness = Readiness::default();
        assert!(readiness.report().await.ready);
        readiness.register("store", || async { Ok(()) });
        assert!(readiness.report().await.ready);

        readiness.register("broker", || async { Err("connection refused".to_owned()) });
        readiness.register("slow", || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        });
        let report = readiness.report().await;
        assert!(!report.ready);
        assert_eq!(
            report.failures(),
            ["broker: connection refused", "slow: no answer within 2s"]
        );

        let fresh = Readiness::default();
        fresh.set_draining();
        assert_eq!(
            fresh.report().await.failures(),
            ["shutdown: draining before exit"]
        );
    }

    #[test]
    fn metrics_render_build_info_and_http_counts() {
        let metrics = Metrics::new("quartet-test");
        metrics.observe_http("rest", "GET", "/v1/info", 200, Duration::from_millis(3));
        let text = metrics.render();
        assert!(
            text.contains("quartet_build_info{service=\"quartet-test\""),
            "{text}"
        );
        assert!(
            text.contains("quartet_http_requests_total{listener=\"rest\",method=\"GET\",route=\"/v1/info\",status=\"200\"} 1"),
            "{text}"
        );
    }
}
