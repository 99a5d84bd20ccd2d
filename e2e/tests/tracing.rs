//! A trace crosses a hop: a client span's context travels in gRPC metadata and in HTTP headers
//! to a real `quartet-auth` process, whose server spans are exported over OTLP as children of
//! the client's span, to the same receiver as the client's own span.

use std::time::Duration;

use opentelemetry::trace::{Span as _, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use quartet_e2e::eventually;
use quartet_e2e::otlp::Receiver;
use quartet_e2e::process::Server;
use quartet_kit::telemetry::{HeaderCarrier, MetadataCarrier};
use quartet_proto::kit::v1::GetInfoRequest;
use quartet_proto::kit::v1::info_client::InfoClient;

#[tokio::test]
async fn server_spans_reach_the_collector_as_children_of_the_callers_span() {
    let receiver = Receiver::start().await.expect("receiver");
    let endpoint = format!("http://{}", receiver.addr);
    let mut server = Server::start(
        "quartet-auth",
        true,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await
    .expect("server starts");

    // The first hop: this test, tracing under its own service name into the same receiver.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .expect("exporter");
    let provider = SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("e2e-client")
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("e2e");
    let mut client_span = tracer.start("e2e.call");
    let client_context = client_span.span_context().clone();
    let cx = opentelemetry::Context::current().with_remote_span_context(client_context.clone());
    let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    use opentelemetry::propagation::TextMapPropagator;

    let mut request = tonic::Request::new(GetInfoRequest {});
    propagator.inject_context(&cx, &mut MetadataCarrier(request.metadata_mut()));
    let channel = tonic::transport::Endpoint::from_shared(server.url("grpc"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    InfoClient::new(channel)
        .get_info(request)
        .await
        .expect("GetInfo");

    let mut headers = http::HeaderMap::new();
    propagator.inject_context(&cx, &mut HeaderCarrier(&mut headers));
    let response = quartet_e2e::http_client(Duration::from_secs(5))
        .get(format!("{}/v1/info", server.url("http")))
        .headers(headers)
        .send()
        .await
        .expect("REST call");
    assert_eq!(response.status(), 200);
    client_span.end();
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("join")
        .expect("client spans flushed");
    // The server flushes what it still buffers when it stops.
    assert!(
        server
            .terminate(Duration::from_secs(20))
            .await
            .expect("exits")
            .success()
    );

    let trace_id = client_context.trace_id().to_string();
    let client_span_id = client_context.span_id().to_string();
    let spans = eventually(
        "the server's spans at the receiver",
        Duration::from_secs(20),
        || async {
            let spans = receiver.spans();
            let children = spans
                .iter()
                .filter(|s| {
                    s.service == "quartet-auth"
                        && s.trace_id == trace_id
                        && s.parent_span_id == client_span_id
                })
                .count();
            (children >= 2).then_some(spans)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; received: {:#?}\nserver output:\n{}",
            receiver.spans(),
            server.output()
        )
    });

    let names: Vec<&str> = spans
        .iter()
        .filter(|s| s.service == "quartet-auth" && s.trace_id == trace_id)
        .map(|s| s.name.as_str())
        .collect();
    assert!(names.contains(&"quartet.kit.v1.Info/GetInfo"), "{names:?}");
    assert!(names.contains(&"GET /v1/info"), "{names:?}");
    assert!(
        spans.iter().any(|s| s.service == "e2e-client"
            && s.span_id == client_span_id
            && s.trace_id == trace_id),
        "the client's own span reached the receiver too: {spans:#?}"
    );
}
