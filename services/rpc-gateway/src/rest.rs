//! The REST front: `POST /v1/services/{service}/{method}` with the arguments as a JSON array,
//! `GET /v1/services`, `GET /v1/services/{service}` (its methods, from the backends'
//! `_zerorpc_inspect`, and its backends' health; `methods` is null with an `inspect_error`
//! when no backend could answer; needs `rpc:describe:<service>` or `rpc:call:<service>.*`)
//! and `GET /v1/openapi.json` (an OpenAPI document of the methods of every service the caller
//! may describe, generated the same way). Bearer tokens from quartet-auth; a call needs
//! `rpc:call:<service>.<method>` (Shiro wildcards, so `rpc:call:reports.*` grants a service).
//!
//! Answers: 200 `{"result": …}`, or `{"items": […]}` for a streamed reply; 422 with the remote
//! `{name, message, traceback}` when the method raised; 404 for an unknown service; 503 when
//! the backend is lost or unreachable, every backend is down, or the gateway is draining; 429
//! over the caller's rate limit; 504 past the deadline.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use quartet_kit::error::{ErrorKind, Problem};
use quartet_kit::token::Bearer;
use serde::Deserialize;

use crate::router::{RouteError, Router, from_json, to_json};
use crate::zerorpc::client::{CallError, Reply};

/// What the REST front needs.
#[derive(Debug)]
pub struct Front {
    /// The router.
    pub router: Arc<Router>,
    /// The longest a call may take.
    pub max_timeout: Duration,
}

/// Query of a call.
#[derive(Debug, Deserialize)]
struct CallQuery {
    /// Seconds the call may take (at most the gateway's maximum).
    timeout: Option<f64>,
}

fn problem(kind: ErrorKind, code: &str, detail: impl Into<String>) -> Problem {
    Problem::new(kind, code, detail)
}

async fn call(
    front: web::Data<Arc<Front>>,
    caller: Bearer,
    path: web::Path<(String, String)>,
    query: web::Query<CallQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let (service, method) = path.into_inner();
    front.router.admit(&caller.0, &service, &method)?;
    let args: serde_json::Value = if body.is_empty() {
        serde_json::Value::Array(Vec::new())
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            problem(
                ErrorKind::InvalidArgument,
                "invalid-arguments",
                format!("the body is not JSON: {e}"),
            )
        })?
    };
    let serde_json::Value::Array(args) = args else {
        return Err(problem(
            ErrorKind::InvalidArgument,
            "invalid-arguments",
            "the body must be a JSON array of positional arguments (zerorpc has no keyword arguments)",
        ));
    };
    let timeout = crate::router::timeout(query.timeout, front.max_timeout);
    let reply = front
        .router
        .call(
            &service,
            &method,
            args.iter().map(from_json).collect(),
            timeout,
        )
        .await;
    match reply {
        Ok(Reply::Value(value)) => {
            Ok(HttpResponse::Ok().json(serde_json::json!({"result": to_json(&value)})))
        }
        Ok(Reply::Stream(items)) => {
            let items = items
                .collect()
                .await
                .map_err(|e| failure(&service, &method, e))?;
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
            .json(serde_json::json!({
                "type": "urn:quartet:problem:remote-error",
                "title": "the method raised",
                "status": 422,
                "detail": format!("{service}.{method} raised {}: {}", e.name, e.message),
                "error": {"name": e.name, "message": e.message, "traceback": e.traceback},
            }))),
        Err(RouteError::Call(e)) => Err(failure(&service, &method, e)),
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

async fn services(front: web::Data<Arc<Front>>, _caller: Bearer) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"services": front.router.services()}))
}

/// How long asking a backend to describe itself may take.
const INSPECT_DEADLINE: Duration = Duration::from_secs(5);

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
        utoipa::openapi::OpenApiBuilder::new().build(),
    )
}
