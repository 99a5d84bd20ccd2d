//! The gRPC listener every server runs: the service's own services plus standard health
//! checking (`grpc.health.v1`), server reflection (v1 and v1alpha, so grpcurl and friends can
//! list and call methods without .proto files) and `quartet.kit.v1.Info`.
//!
//! Every call gets a span that continues the caller's trace when it sends `traceparent`.

use quartet_proto::kit::v1::info_server::{Info, InfoServer};
use quartet_proto::kit::v1::{GetInfoRequest, GetInfoResponse};
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::app::Context;
use crate::telemetry::{HeaderView, adopt_parent};

struct InfoService(Context);

#[tonic::async_trait]
impl Info for InfoService {
    async fn get_info(
        &self,
        _request: tonic::Request<GetInfoRequest>,
    ) -> Result<tonic::Response<GetInfoResponse>, tonic::Status> {
        let info = crate::http::info(&self.0).await;
        Ok(tonic::Response::new(GetInfoResponse {
            service: info.service,
            version: info.version,
            uptime_seconds: info.uptime_seconds,
            ready: info.ready,
            not_ready: info.not_ready,
        }))
    }
}

fn call_span(request: &http::Request<()>) -> tracing::Span {
    let method = request.uri().path().trim_start_matches('/').to_owned();
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %method,
    );
    adopt_parent(&span, &HeaderView(request.headers()));
    span
}

/// Builds the gRPC server around `routes`. Returns the health reporter, through which
/// shutdown flips the overall status to NOT_SERVING.
pub(crate) async fn server(
    ctx: &Context,
    routes: Routes,
    tls: Option<tonic::transport::Identity>,
) -> Result<(tonic::transport::server::Router, HealthReporter), String> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quartet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quartet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| e.to_string())?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = tls {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| format!("TLS: {e}"))?;
    }
    let router = builder
        .trace_fn(call_span)
        .add_routes(routes)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InfoServer::new(InfoService(ctx.clone())));
    Ok((router, reporter))
}
