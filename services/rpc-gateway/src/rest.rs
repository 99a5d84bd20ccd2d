//! The REST front: `POST /v1/services/{service}/{method}` with the arguments as a JSON array,
//! `GET /v1/services`, `GET /v1/services/{service}` (its methods, from the backends'
//! `_zerorpc_inspect`, and its backends' health; `methods` is null with an `inspect_error`
//! when no backend could answer; needs `rpc:describe:<service>` or `rpc:call:<service>.*`)
//! and `GET /v1/openapi.json` (an OpenAPI document of the methods of every service the caller
//! may describe, generated the same way). Bearer tokens from quartet-auth; a call needs
//! `rpc:call:<service>.<method>` (Shiro wildcards, so `rpc:call:reports.*` grants a service).
//!
//! Answers: 200 `{"result": …}`, or `{"items": […]}` for a streamed reply; 422 with the remote
//! `{name, message, traceback}` when the method raised; 400 for a name, `timeout` or arguments
//! that [`crate::input`] refuses; 404 for an unknown service or a zerorpc protocol event's
//! name; 413 for a body above `rpc.max_message_bytes`; 412 for a stream longer than
//! [`MAX_STREAM_ITEMS`] (collected in memory: longer ones are for gRPC or zerorpc); 503 when
//! the backend is lost or unreachable, every backend is down, or the gateway is draining; 429
//! over the caller's rate limit; 504 past the deadline, which covers a whole stream.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, ResponseError as _, web};
use quartet_kit::error::{ErrorKind, Problem};
use quartet_kit::token::Bearer;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::router::{RouteError, Router, to_json};
use crate::zerorpc::client::{CallError, Reply};

/// What the REST front needs.
#[derive(Debug)]
pub struct Front {
    /// The router.
    pub router: Arc<Router>,
    /// The longest a call may take.
    pub max_timeout: Duration,
    /// The largest request body accepted, in bytes (`rpc.max_message_bytes`).
    pub max_body_bytes: usize,
}

/// Query of a call.
#[derive(Debug, Deserialize)]
struct CallQuery {
    /// Seconds the call may take (at most the gateway's maximum); checked by
    /// [`crate::input::timeout`], so taken as text.
    timeout: Option<String>,
}

/// `GET /v1/services`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceList {
    /// The services the gateway routes to (`rpc.backends`), whether or not the caller may call
    /// them.
    pub services: Vec<String>,
}

/// The 422 answer: a problem (`urn:quartet:problem:remote-error`) that also carries what the
/// backend's exception said.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemoteFailure {
    /// `urn:quartet:problem:remote-error`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// `the method raised`.
    pub title: String,
    /// 422.
    pub status: u16,
    /// `service.method raised Name: message`.
    pub detail: String,
    /// The backend's exception.
    pub error: RemoteException,
}

/// An exception a backend's method raised, as zerorpc carries it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemoteException {
    /// Its type name, e.g. `ValueError`.
    pub name: String,
    /// Its message.
    pub message: String,
    /// The backend's traceback, or an empty string.
    pub traceback: String,
}

fn problem(kind: ErrorKind, code: &str, detail: impl Into<String>) -> Problem {
    Problem::new(kind, code, detail)
}

/// The body, refused with 413 past `max` bytes (announced or sent) without reading the rest.
async fn read_body(
    mut payload: web::Payload,
    announced: Option<u64>,
    max: usize,
) -> Result<Vec<u8>, HttpResponse> {
    use futures::StreamExt as _;
    let too_large = |size: String| {
        let mut problem = problem(
            ErrorKind::InvalidArgument,
            "request-too-large",
            format!(
                "the request body is {size} bytes; at most {max} are accepted (rpc.max_message_bytes)"
            ),
        );
        problem.status = 413;
        HttpResponse::PayloadTooLarge()
            .content_type(quartet_kit::error::PROBLEM_JSON)
            .json(problem)
    };
    if let Some(length) = announced.filter(|n| *n > max as u64) {
        return Err(too_large(length.to_string()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            problem(
                ErrorKind::InvalidArgument,
                "invalid-body",
                format!("reading the request body: {e}"),
            )
            .error_response()
        })?;
        if body.len() + chunk.len() > max {
            return Err(too_large(format!("more than {max}")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Calls a method of a service.
///
/// The positional arguments are the body's JSON array. The generated document
/// (`GET /v1/openapi.json`) has one operation per method instead of this one.
#[utoipa::path(post, path = "/v1/services/{service}/{method}", tag = "rpc", operation_id = "call",
    params(("service" = String, Path, description = "The service, as named in rpc.backends"),
           ("method" = String, Path, description = "The method"),
           ("timeout" = Option<f64>, Query, description = "Seconds the call may take: at least 1 ns, at most the gateway's rpc.timeout_seconds (more gets that)")),
    request_body(content = Option<Vec<serde_json::Value>>, content_type = "application/json", description = "The positional arguments as a JSON array; an empty body is none"),
    responses(
        (status = 200, description = "The method's result, or a stream's items", body = crate::openapi::Reply),
        (status = 400, description = "The arguments are not one JSON array or nest deeper than 100 levels, timeout is not seconds of at least 1 ns, a name breaks the naming rule, or the query string does not parse", body = Problem),
        (status = 403, description = "The token lacks rpc:call:<service>.<method>", body = Problem),
        (status = 404, description = "No such service, or a zerorpc protocol event's name (_zpc_…) as the method", body = Problem),
        (status = 412, description = "The method streamed more items than a REST answer holds (10 000): read it over gRPC or zerorpc", body = Problem),
        (status = 413, description = "The body is larger than rpc.max_message_bytes", body = Problem),
        (status = 422, description = "The method raised: its name, message and traceback", body = RemoteFailure, content_type = "application/problem+json"),
        (status = 429, description = "Over the caller's rate limit", body = Problem),
        (status = 503, description = "The backend was lost or answered garbage, none is healthy, the gateway is draining, or tokens cannot be verified now", body = Problem),
        (status = 504, description = "No answer (a stream: not all of it) within the deadline", body = Problem)),
    security(("bearer" = [])))]
async fn call(
    front: web::Data<Arc<Front>>,
    caller: Bearer,
    path: web::Path<(String, String)>,
    query: web::Query<CallQuery>,
    request: actix_web::HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let started = tokio::time::Instant::now();
    let (service, method) = path.into_inner();
    let timeout = crate::input::timeout(query.timeout.as_deref(), front.max_timeout)
        .map_err(|e| e.problem())?;
    front.router.admit(&caller.0, &service, &method)?;
    let announced = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let body = match read_body(payload, announced, front.max_body_bytes).await {
        Ok(body) => body,
        Err(refusal) => return Ok(refusal),
    };
    let args = crate::input::json_arguments(&body).map_err(|e| e.problem())?;
    let reply = front.router.call(&service, &method, args, timeout).await;
    match reply {
        Ok(Reply::Value(value)) => {
            Ok(HttpResponse::Ok().json(serde_json::json!({"result": to_json(&value)})))
        }
        Ok(Reply::Stream(items)) => {
            let items = collect(items, started, timeout)
                .await
                .map_err(|e| match e {
                    Collected::Call(e) => failure(&service, &method, e),
                    Collected::TooMany => problem(
                        ErrorKind::FailedPrecondition,
                        "stream-too-long",
                        format!(
                            "{service}.{method} streamed more than {MAX_STREAM_ITEMS} items, all a REST answer holds: read it with gRPC InvokeStream or zerorpc"
                        ),
                    ),
                })?;
            Ok(HttpResponse::Ok()
                .json(serde_json::json!({"items": items.iter().map(to_json).collect::<Vec<_>>()})))
        }
        Err(RouteError::UnknownService(name)) => Err(problem(
            ErrorKind::NotFound,
            "unknown-service",
            format!("no service named {name:?}"),
        )),
        Err(e @ (RouteError::NoBackend { .. } | RouteError::Draining)) => Err(problem(
            ErrorKind::Unavailable,
            "no-backend",
            format!("{service}.{method}: {e}"),
        )),
        Err(RouteError::Call(CallError::Remote(e))) => Ok(HttpResponse::UnprocessableEntity()
            .content_type(quartet_kit::error::PROBLEM_JSON)
            .json(RemoteFailure {
                problem_type: "urn:quartet:problem:remote-error".into(),
                title: "the method raised".into(),
                status: 422,
                detail: format!("{service}.{method} raised {}: {}", e.name, e.message),
                error: RemoteException {
                    name: e.name,
                    message: e.message,
                    traceback: e.traceback,
                },
            })),
        Err(RouteError::Call(e)) => Err(failure(&service, &method, e)),
    }
}

/// The most items of a streamed reply one REST answer holds (it is collected in memory).
pub const MAX_STREAM_ITEMS: usize = 10_000;

/// Why a stream could not be collected.
enum Collected {
    /// The stream failed, or did not end by the call's deadline.
    Call(CallError),
    /// It had more than [`MAX_STREAM_ITEMS`] items.
    TooMany,
}

/// A stream's items, all of them within `timeout` of `started` (the call's deadline covers
/// the whole stream here) and at most [`MAX_STREAM_ITEMS`].
async fn collect(
    mut items: crate::zerorpc::client::Items,
    started: tokio::time::Instant,
    timeout: Duration,
) -> Result<Vec<rmpv::Value>, Collected> {
    let mut collected = Vec::new();
    loop {
        let next = tokio::time::timeout_at(started + timeout, items.next())
            .await
            .map_err(|_| Collected::Call(CallError::Timeout(timeout)))?;
        match next {
            None => return Ok(collected),
            Some(Err(e)) => return Err(Collected::Call(e)),
            Some(Ok(_)) if collected.len() == MAX_STREAM_ITEMS => return Err(Collected::TooMany),
            Some(Ok(item)) => collected.push(item),
        }
    }
}

fn failure(service: &str, method: &str, e: CallError) -> Problem {
    let (kind, code) = match &e {
        CallError::Timeout(_) => (ErrorKind::DeadlineExceeded, "deadline-exceeded"),
        CallError::Remote(_) | CallError::Protocol(_) => (ErrorKind::Unavailable, "backend-error"),
        CallError::LostRemote(_) | CallError::Disconnected | CallError::Closed => {
            (ErrorKind::Unavailable, "backend-lost")
        }
    };
    problem(kind, code, format!("{service}.{method}: {e}"))
}

/// The services the gateway routes to.
#[utoipa::path(get, path = "/v1/services", tag = "rpc", operation_id = "listServices",
    responses((status = 200, description = "Their names", body = ServiceList),
              (status = 503, description = "Tokens cannot be verified now", body = Problem)),
    security(("bearer" = [])))]
async fn services(front: web::Data<Arc<Front>>, _caller: Bearer) -> HttpResponse {
    HttpResponse::Ok().json(ServiceList {
        services: front.router.services(),
    })
}

/// How long asking a backend to describe itself may take.
const INSPECT_DEADLINE: Duration = Duration::from_secs(5);

/// A service's methods, from its backends, and each backend's health.
///
/// Needs `rpc:describe:<service>` or `rpc:call:<service>.*`; costs one request of the rate
/// limit. Answered from a description kept 30 s.
#[utoipa::path(get, path = "/v1/services/{service}", tag = "rpc", operation_id = "describeService",
    params(("service" = String, Path, description = "The service, as named in rpc.backends")),
    responses((status = 200, description = "Its methods (null, with inspect_error, when no backend could say) and its backends", body = crate::openapi::Description),
              (status = 400, description = "The name breaks the naming rule", body = Problem),
              (status = 403, description = "The token lacks rpc:describe:<service> and rpc:call:<service>.*", body = Problem),
              (status = 404, description = "No such service", body = Problem),
              (status = 429, description = "Over the caller's rate limit", body = Problem),
              (status = 503, description = "Tokens cannot be verified now", body = Problem)),
    security(("bearer" = [])))]
async fn service(
    front: web::Data<Arc<Front>>,
    caller: Bearer,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let service = path.into_inner();
    front.router.may_describe(&caller.0, &service)?;
    front.router.charge(&caller.0)?;
    // The backends' health is worth showing even when none can describe the service.
    let mut described = match front
        .router
        .inspect(&service, INSPECT_DEADLINE.min(front.max_timeout))
        .await
    {
        Ok(described) => described,
        Err(RouteError::UnknownService(name)) => {
            return Err(problem(
                ErrorKind::NotFound,
                "unknown-service",
                format!("no service named {name:?}"),
            ));
        }
        Err(e) => serde_json::json!({
            "service": service, "methods": null,
            "inspect_error": format!("asking {service} to describe itself: {e}"),
        }),
    };
    described["backends"] = front
        .router
        .backends(&service)
        .into_iter()
        .map(|(endpoint, health)| {
            serde_json::json!({"endpoint": endpoint, "health": format!("{health:?}").to_lowercase()})
        })
        .collect();
    Ok(HttpResponse::Ok().json(described))
}

/// This API's OpenAPI document, with an operation per method.
///
/// One operation per method of every service the caller may describe, generated from what
/// the backends say of themselves. Costs one request of the rate limit.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "rpc", operation_id = "openapi",
    responses((status = 200, description = "The document; services that could not be asked are listed under x-quartet-unavailable", body = Object),
              (status = 429, description = "Over the caller's rate limit", body = Problem),
              (status = 503, description = "Tokens cannot be verified now", body = Problem)),
    security(("bearer" = [])))]
async fn openapi(front: web::Data<Arc<Front>>, caller: Bearer) -> Result<HttpResponse, Problem> {
    front.router.charge(&caller.0)?;
    let deadline = INSPECT_DEADLINE.min(front.max_timeout);
    // Only the services the caller may see.
    let names: Vec<String> = front
        .router
        .services()
        .into_iter()
        .filter(|s| front.router.may_describe(&caller.0, s).is_ok())
        .collect();
    let answers = futures::future::join_all(
        names
            .iter()
            .map(|name| front.router.inspect(name, deadline)),
    )
    .await;
    let (mut described, mut unavailable) = (Vec::new(), Vec::new());
    for (name, answer) in names.into_iter().zip(answers) {
        match answer {
            Ok(service) => described.push(service),
            Err(e) => unavailable.push((name, e.to_string())),
        }
    }
    Ok(HttpResponse::Ok().json(crate::openapi::document(&described, &unavailable)))
}

/// The REST routes.
pub fn rest(front: Arc<Front>) -> quartet_kit::RestApi {
    let data = web::Data::new(front);
    quartet_kit::RestApi::new(
        move |cfg| {
            cfg.app_data(data.clone())
                .route("/v1/services", web::get().to(services))
                .route("/v1/openapi.json", web::get().to(openapi))
                .route("/v1/services/{service}", web::get().to(service))
                .route("/v1/services/{service}/{method}", web::post().to(call));
        },
        <crate::openapi::GatewayDoc as utoipa::OpenApi>::openapi(),
    )
}
