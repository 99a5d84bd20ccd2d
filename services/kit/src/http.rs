//! The two actix-web listeners every server runs: the admin listener (health, readiness,
//! metrics) and the REST API listener (the service's `/v1` routes, `/v1/info`, `/openapi.json`).
//!
//! Both wrap every request in a span (a child of the caller's `traceparent`, when sent) and
//! count it in `quartet_http_requests_total`; both answer unknown routes with a 404 problem,
//! and a JSON body, query string or path parameter that does not parse with a 400 problem
//! (`bad-json`, `bad-query`, `bad-path`), as the OpenAPI document says ([`crate::openapi`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};

use crate::app::Context;
use crate::error::{ErrorKind, Problem};
use crate::health::ReadinessReport;
use crate::telemetry::{ActixHeaders, adopt_parent};

/// A service's REST API: its routes and the OpenAPI document describing them.
#[derive(Clone)]
pub struct RestApi {
    configure: Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>,
    openapi: utoipa::openapi::OpenApi,
}

impl RestApi {
    /// Routes added by `configure` (mounted at the root, so use `/v1/...` paths), described by
    /// `openapi` (usually `#[derive(utoipa::OpenApi)]` over the handlers).
    pub fn new(
        configure: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static,
        openapi: utoipa::openapi::OpenApi,
    ) -> Self {
        Self {
            configure: Arc::new(configure),
            openapi,
        }
    }

    /// A REST API with only the kit's own routes (`/v1/info`).
    pub fn empty() -> Self {
        Self::new(|_| {}, utoipa::openapi::OpenApiBuilder::new().build())
    }

    /// Adds bearer-token authentication: `authenticator` backs the [`Bearer`](crate::token::Bearer)
    /// extractor in every handler, and `GET /v1/whoami` shows the caller's verified identity.
    pub fn with_bearer(self, authenticator: Arc<dyn crate::token::Authenticator>) -> Self {
        let data = crate::token::authenticator_data(authenticator);
        let inner = self.configure;
        let mut openapi = self.openapi;
        openapi.merge(WhoamiDoc::openapi());
        Self {
            configure: Arc::new(move |cfg: &mut web::ServiceConfig| {
                cfg.app_data(data.clone())
                    .route("/v1/whoami", web::get().to(whoami));
                inner(cfg);
            }),
            openapi,
        }
    }
}

/// A caller's verified identity, as `/v1/whoami` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WhoamiResponse {
    /// The subject: a user name, or `client:<id>`.
    pub subject: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// The subject's roles.
    pub roles: Vec<String>,
    /// The subject's permissions.
    pub permissions: Vec<String>,
    /// Seconds since the epoch at which the token expires.
    pub expires_at: u64,
}

/// The caller's identity, from its verified bearer token.
#[utoipa::path(get, path = "/v1/whoami", tag = "info", responses(
    (status = 200, description = "The caller", body = WhoamiResponse),
    (status = 401, description = "No valid token", body = Problem),
    (status = 503, description = "Token verification unavailable", body = Problem)))]
async fn whoami(caller: crate::token::Bearer) -> HttpResponse {
    let c = caller.0;
    HttpResponse::Ok().json(WhoamiResponse {
        subject: c.sub,
        client_id: c.client_id,
        roles: c.roles,
        permissions: c.perms,
        expires_at: c.exp,
    })
}

#[derive(OpenApi)]
#[openapi(paths(whoami), components(schemas(WhoamiResponse)))]
struct WhoamiDoc;

/// The identity and readiness of a running server (REST `/v1/info`, gRPC `GetInfo`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InfoResponse {
    /// The service's name, e.g. `quartet-auth`.
    pub service: String,
    /// The version the binary was built from.
    pub version: String,
    /// Seconds since the process started serving.
    pub uptime_seconds: u64,
    /// Whether every readiness check passes.
    pub ready: bool,
    /// `check: reason` for every check that does not pass.
    pub not_ready: Vec<String>,
}

/// Builds the info document from the context.
pub async fn info(ctx: &Context) -> InfoResponse {
    let report = ctx.readiness.report().await;
    InfoResponse {
        service: ctx.service.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: ctx.uptime().as_secs(),
        ready: report.ready,
        not_ready: report.failures(),
    }
}

/// Liveness: the process is up and its event loop answers.
#[utoipa::path(get, path = "/healthz", tag = "admin", responses((status = 200, description = "Alive", body = String)))]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok\n")
}

/// Readiness: every registered check passes and the server is not draining.
#[utoipa::path(get, path = "/readyz", tag = "admin", responses(
    (status = 200, description = "Ready for traffic", body = ReadinessReport),
    (status = 503, description = "Not ready; the report says which check fails", body = ReadinessReport)))]
async fn readyz(ctx: web::Data<Context>) -> HttpResponse {
    let report = ctx.readiness.report().await;
    if report.ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    }
    .json(report)
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "admin", responses((status = 200, description = "Metrics", body = String)))]
async fn metrics(ctx: web::Data<Context>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(ctx.metrics.render())
}

/// The server's identity, version, uptime and readiness.
#[utoipa::path(get, path = "/v1/info", tag = "info", responses((status = 200, description = "Server information", body = InfoResponse)))]
async fn info_route(ctx: web::Data<Context>) -> HttpResponse {
    HttpResponse::Ok().json(info(&ctx).await)
}

#[derive(OpenApi)]
#[openapi(
    paths(healthz, readyz, metrics),
    components(schemas(ReadinessReport, Problem))
)]
struct AdminDoc;

#[derive(OpenApi)]
#[openapi(paths(info_route), components(schemas(InfoResponse, Problem)))]
struct KitRestDoc;

/// The admin listener's OpenAPI document.
pub fn admin_openapi(service: &str) -> utoipa::openapi::OpenApi {
    let mut doc = AdminDoc::openapi();
    doc.info.title = format!("{service} admin");
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The REST listener's OpenAPI document: the service's paths plus the kit's, completed with
/// what every operation shares ([`crate::openapi::complete`]).
pub fn rest_openapi(service: &str, api: &RestApi) -> utoipa::openapi::OpenApi {
    let mut doc = KitRestDoc::openapi();
    doc.merge(api.openapi.clone());
    let mut doc = crate::openapi::complete(doc);
    doc.info.title = format!("{service} REST API");
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// Which listener a request arrived on; a label on the HTTP metrics.
#[derive(Clone, Copy)]
struct Listener(&'static str);

async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let listener = req.app_data::<Listener>().map(|l| l.0).unwrap_or("http");
    let ctx = req.app_data::<web::Data<Context>>().cloned();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    adopt_parent(&span, &ActixHeaders(req.headers()));
    let started = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let status = match &result {
        Ok(response) => response.status().as_u16(),
        Err(error) => error.as_response_error().status_code().as_u16(),
    };
    span.record("http.response.status_code", status);
    if let Some(ctx) = ctx {
        ctx.metrics
            .observe_http(listener, &method, &route, status, started.elapsed());
    }
    result
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, Problem> {
    Err(Problem::new(
        ErrorKind::NotFound,
        "no-route",
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// The 400 problem for input that does not parse: `code`, and `what` with the parser's words.
fn unparsable(code: &str, what: &str, err: impl std::fmt::Display) -> actix_web::Error {
    Problem::new(ErrorKind::InvalidArgument, code, format!("{what}: {err}")).into()
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().error_handler(|e, _| unparsable("bad-json", "request body", e))
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|e, _| unparsable("bad-query", "query string", e))
}

fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|e, _| unparsable("bad-path", "path", e))
}

/// Starts an actix server on an already-bound listener, with the kit's middleware; over TLS
/// when `tls` is given.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    name: &'static str,
    workers: usize,
    grace: Duration,
    ctx: Context,
    routes: Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(ctx);
    let server = actix_web::HttpServer::new(move || {
        let routes = routes.clone();
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(Listener(name))
            .app_data(json_config())
            .app_data(query_config())
            .app_data(path_config())
            .wrap(from_fn(observe))
            .configure(move |cfg| routes(cfg))
            .default_service(web::to(not_found))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(grace.as_secs().max(1));
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    }
    .run();
    Ok(server)
}

/// The admin routes.
pub(crate) fn admin_routes(
    service: &'static str,
) -> Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync> {
    let doc = web::Data::new(admin_openapi(service));
    Arc::new(move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(doc.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .route("/openapi.json", web::get().to(openapi_json));
    })
}

/// The REST routes: the service's, the kit's, and the merged OpenAPI document.
pub(crate) fn rest_routes(
    service: &'static str,
    api: RestApi,
) -> Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync> {
    let doc = web::Data::new(rest_openapi(service, &api));
    Arc::new(move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(doc.clone())
            .route("/v1/info", web::get().to(info_route))
            .route("/openapi.json", web::get().to(openapi_json));
        (api.configure)(cfg);
    })
}

async fn openapi_json(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.get_ref())
}
