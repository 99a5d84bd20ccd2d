//! Logs, traces and W3C trace-context propagation.
//!
//! [`init`] installs one `tracing` subscriber: a log layer (human or JSON, to standard error)
//! and an OpenTelemetry layer. Spans always carry OpenTelemetry trace and span ids, so a trace
//! context that arrives with a request leaves again with every outgoing call; they are exported
//! over OTLP/gRPC only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) variable is set. `OTEL_SERVICE_NAME` overrides the
//! service name.
//!
//! The carriers at the bottom move a context in and out of the places Quartet carries it:
//! gRPC metadata, HTTP headers (both `http` 1 and actix-web's), and plain string maps (task
//! message headers, zerorpc event headers).

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::{LogFormat, LogSettings};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log.filter` is not a valid `tracing` filter.
    #[error("log.filter {filter:?} is not a valid filter: {source}")]
    Filter {
        /// The rejected filter.
        filter: String,
        /// The parser's complaint.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built from the `OTEL_EXPORTER_OTLP_*` variables.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are being exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports what is buffered and stops the exporter. Call once, at the end of `main`.
    pub fn shutdown(self) {
        if self.exporting
            && let Err(e) = self.provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
    }
}

/// Whether the standard variables ask for OTLP export.
pub fn otlp_requested(env: &HashMap<String, String>) -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| env.get(*k).is_some_and(|v| !v.is_empty()))
}

/// Builds a tracer provider for `service`: exporting over OTLP/gRPC when `export`, else only
/// assigning ids. Must be called inside a Tokio runtime when exporting (tonic needs one).
pub fn tracer_provider(service: &str, export: bool) -> Result<SdkTracerProvider, TelemetryError> {
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if export {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs the global subscriber for `service` (e.g. `quartet-auth`).
pub fn init(
    service: &str,
    log: &LogSettings,
    env: &HashMap<String, String>,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(&log.filter).map_err(|source| TelemetryError::Filter {
        filter: log.filter.clone(),
        source,
    })?;
    let exporting = otlp_requested(env);
    let provider = tracer_provider(service, exporting)?;
    let tracer = provider.tracer(service.to_owned());
    let logs = match log.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    if exporting {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(Telemetry {
        provider,
        exporting,
    })
}

/// Makes `span` a child of the remote context carried by `carrier`, if it carries one.
pub fn adopt_parent(span: &tracing::Span, carrier: &dyn Extractor) {
    let cx = TraceContextPropagator::new().extract(carrier);
    // set_parent fails only when the span is disabled; then there is nothing to link.
    let _ = span.set_parent(cx);
}

/// Writes the context of `span` into `carrier` (as `traceparent` / `tracestate`).
pub fn inject_span(span: &tracing::Span, carrier: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(&span.context(), carrier);
}

/// Writes the current span's context into `carrier`.
pub fn inject_current(carrier: &mut dyn Injector) {
    inject_span(&tracing::Span::current(), carrier);
}

/// The trace id of the current span, as 32 hex digits, if it has a valid one.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// A plain string map as a carrier: task message headers, zerorpc event headers.
pub struct MapCarrier<'a>(pub &'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for MapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// A read-only string map as a carrier.
pub struct MapView<'a>(pub &'a HashMap<String, String>);

impl Extractor for MapView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// `http` 1.x headers (tonic requests, reqwest, hyper) as a carrier.
pub struct HeaderCarrier<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(key),
            http::HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Read-only `http` 1.x headers as a carrier.
pub struct HeaderView<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// gRPC metadata as a carrier, for outgoing calls (`inject`) and incoming ones (`extract`).
pub struct MetadataCarrier<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Incoming actix-web request headers as a carrier.
pub struct ActixHeaders<'a>(pub &'a actix_web::http::header::HeaderMap);

impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A tonic interceptor that sends the current span's context with every outgoing call.
pub fn grpc_client_interceptor(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    inject_current(&mut MetadataCarrier(request.metadata_mut()));
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt, Tracer};

    #[test]
    fn a_context_survives_a_round_trip_through_each_carrier() {
        let provider = tracer_provider("test", false).expect("provider");
        let tracer = provider.tracer("test");
        let span = tracer.start("outgoing");
        let cx = opentelemetry::Context::current_with_span(span);
        let propagator = TraceContextPropagator::new();
        let want = cx.span().span_context().clone();

        let mut map = HashMap::new();
        propagator.inject_context(&cx, &mut MapCarrier(&mut map));
        assert!(map["traceparent"].starts_with("00-"), "{map:?}");
        let back = propagator.extract(&MapView(&map));
        assert_eq!(back.span().span_context().trace_id(), want.trace_id());
        assert_eq!(back.span().span_context().span_id(), want.span_id());

        let mut headers = http::HeaderMap::new();
        propagator.inject_context(&cx, &mut HeaderCarrier(&mut headers));
        let back = propagator.extract(&HeaderView(&headers));
        assert_eq!(back.span().span_context().trace_id(), want.trace_id());

        let mut metadata = tonic::metadata::MetadataMap::new();
        propagator.inject_context(&cx, &mut MetadataCarrier(&mut metadata));
        let headers = metadata.into_headers();
        let back = propagator.extract(&HeaderView(&headers));
        assert_eq!(back.span().span_context().span_id(), want.span_id());
    }

    #[test]
    fn malformed_traceparent_starts_a_fresh_trace() {
        let map = HashMap::from([("traceparent".to_owned(), "00-zz-yy-01".to_owned())]);
        let cx = TraceContextPropagator::new().extract(&MapView(&map));
        assert!(!cx.span().span_context().is_valid());
    }

    #[test]
    fn export_is_requested_only_by_a_non_empty_endpoint() {
        let env = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        assert!(!otlp_requested(&HashMap::new()));
        assert!(!otlp_requested(&env("OTEL_EXPORTER_OTLP_ENDPOINT", "")));
        assert!(otlp_requested(&env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4317"
        )));
        assert!(otlp_requested(&env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://x:4317"
        )));
    }
}
