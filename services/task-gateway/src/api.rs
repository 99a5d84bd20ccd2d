//! The gateway's operations (submit, read a result, optionally waiting, revoke, queue
//! statistics) as [`Api`] methods, and their REST routes; `grpc.rs` serves the same methods.
//! Bearer tokens from quartet-auth; `task:<submit|read|revoke|stats>:<queue>` (the queue a task
//! went to is remembered next to its result; tasks submitted by other Celery clients need
//! `task:read:*` and `task:revoke:*`).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use quartet_kit::error::{ErrorKind, Problem};
use quartet_kit::token::{Bearer, Claims, require};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::broker::{Broker, BrokerError};
use crate::celery::{RawJson, TaskMessage};

/// What the API needs.
#[derive(Debug, Clone)]
pub struct Api {
    /// The Redis broker and result databases.
    pub broker: Broker,
    /// The queue of a submission that names none.
    pub default_queue: String,
    /// The largest accepted submission body.
    pub max_payload_bytes: usize,
    /// How long an idempotency key dedupes submissions.
    pub idempotency_window: Duration,
}

/// A task to run.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Submit {
    /// The task name, e.g. `shop.send_invoice`.
    pub name: String,
    /// Positional arguments.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub args: Option<Box<serde_json::value::RawValue>>,
    /// Keyword arguments.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub kwargs: Option<Box<serde_json::value::RawValue>>,
    /// The queue; the gateway's default when absent.
    #[serde(default)]
    pub queue: Option<String>,
    /// 0 (first) to 9 (last), Celery's Redis order.
    #[serde(default)]
    pub priority: u32,
    /// Run no sooner than this many seconds from now.
    #[serde(default)]
    pub countdown: Option<f64>,
    /// Run no sooner than this time (ISO-8601 with offset); exclusive with `countdown`.
    #[serde(default)]
    pub eta: Option<String>,
    /// Do not run if not started within this many seconds: recorded as REVOKED (expired).
    #[serde(default)]
    pub expires: Option<f64>,
    /// Submissions with the same key on the same queue within the idempotency window
    /// (`tasks.idempotency_seconds`) are one task: later ones get the first one's id.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Hard time limit in seconds: the task fails with TimeLimitExceeded when it runs longer.
    #[serde(default)]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds: reported when passed.
    #[serde(default)]
    pub soft_time_limit: Option<f64>,
}

/// A submitted task.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    /// The task id.
    pub id: String,
    /// The queue it went to.
    pub queue: String,
    /// True when an earlier submission with the same idempotency key is this task.
    pub duplicate: bool,
}

/// A task's state and result.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskStatus {
    /// The task id.
    pub id: String,
    /// PENDING (unknown or not started), STARTED, RETRY, SUCCESS, FAILURE, REVOKED.
    pub state: String,
    /// The return value, or the exception `{exc_type, exc_message, exc_module}`.
    #[schema(value_type = Object)]
    pub result: Value,
    /// The failure's traceback.
    pub traceback: Option<String>,
    /// When it finished.
    pub date_done: Option<String>,
}

/// How long to wait for a result.
#[derive(Debug, Deserialize, IntoParams)]
pub struct Wait {
    /// Seconds to wait for the task to finish (at most 60); 0 answers at once.
    #[serde(default)]
    pub wait: f64,
}

fn invalid(code: &str, detail: impl Into<String>) -> Problem {
    Problem::new(ErrorKind::InvalidArgument, code, detail)
}

fn unavailable(e: &BrokerError) -> Problem {
    Problem::new(
        ErrorKind::Unavailable,
        "broker-unavailable",
        format!("the task broker is unreachable: {e}"),
    )
}

fn queue_key(id: &str) -> String {
    format!("quartet-task-queue-{id}")
}

/// Checks `task:<action>:<queue>` for the queue task `id` went to (`*` when unknown: submitted
/// by another Celery client).
async fn allow(api: &Api, caller: &Claims, action: &str, id: &str) -> Result<(), Problem> {
    let queue = api
        .broker
        .recall(&queue_key(id))
        .await
        .map_err(|e| unavailable(&e))?
        .unwrap_or_else(|| "*".into());
    require(caller, &format!("task:{action}:{queue}"))
}

/// Submits a task.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = Submit,
    responses((status = 202, description = "Queued", body = Submitted),
              (status = 400, description = "Invalid or oversized submission", body = Problem),
              (status = 401, description = "No valid token", body = Problem),
              (status = 403, description = "Lacks task:submit:<queue>", body = Problem),
              (status = 503, description = "Broker unreachable", body = Problem)),
    security(("bearer" = [])))]
async fn submit(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    api.check_size(body.len())?;
    let request: Submit = serde_json::from_slice(&body).map_err(|e| {
        invalid(
            "invalid-submission",
            format!("the body is not a task submission: {e}"),
        )
    })?;
    let submitted = api.submit(&caller.0, request).await?;
    Ok(if submitted.duplicate {
        HttpResponse::Ok().json(submitted)
    } else {
        HttpResponse::Accepted().json(submitted)
    })
}

impl Api {
    /// Refuses a submission larger than the limit, naming it.
    pub fn check_size(&self, bytes: usize) -> Result<(), Problem> {
        if bytes <= self.max_payload_bytes {
            return Ok(());
        }
        Err(invalid(
            "payload-too-large",
            format!(
                "the submission is {bytes} bytes; the limit is {} (tasks.max_payload_bytes): pass large data by reference",
                self.max_payload_bytes
            ),
        ))
    }

    /// Submits a task for `caller`.
    pub async fn submit(&self, caller: &Claims, request: Submit) -> Result<Submitted, Problem> {
        if request.name.trim().is_empty() {
            return Err(invalid("invalid-submission", "name is required"));
        }
        let queue = request
            .queue
            .clone()
            .unwrap_or_else(|| self.default_queue.clone());
        if queue.is_empty() || queue.contains(crate::celery::PRIORITY_SEP) {
            return Err(invalid(
                "invalid-submission",
                format!("invalid queue name {queue:?}"),
            ));
        }
        require(caller, &format!("task:submit:{queue}"))?;
        let args = match &request.args {
            Some(raw) if raw.get().trim_start().starts_with('[') => RawJson(raw.clone()),
            Some(_) => return Err(invalid("invalid-submission", "args must be a JSON array")),
            None => RawJson::parse("[]").expect("literal"),
        };
        let kwargs = match &request.kwargs {
            Some(raw) if raw.get().trim_start().starts_with('{') => RawJson(raw.clone()),
            Some(_) => {
                return Err(invalid(
                    "invalid-submission",
                    "kwargs must be a JSON object",
                ));
            }
            None => RawJson::parse("{}").expect("literal"),
        };
        let mut message = TaskMessage::new(&request.name, args, kwargs, &queue, request.priority);
        let from_now = |seconds: f64, what: &str| {
            if !(0.0..=31_536_000.0).contains(&seconds) {
                return Err(invalid(
                    "invalid-submission",
                    format!("{what} must be 0 to 31536000 seconds, not {seconds}"),
                ));
            }
            Ok(
                (chrono::Utc::now() + chrono::Duration::milliseconds((seconds * 1000.0) as i64))
                    .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                    .to_string(),
            )
        };
        message.headers.eta = match (request.countdown, &request.eta) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "invalid-submission",
                    "give countdown or eta, not both",
                ));
            }
            (Some(seconds), None) => Some(from_now(seconds, "countdown")?),
            (None, Some(eta)) => {
                crate::broker::iso_millis(eta).ok_or_else(|| {
                    invalid(
                        "invalid-submission",
                        format!("eta {eta:?} is not an ISO-8601 time with an offset"),
                    )
                })?;
                Some(eta.clone())
            }
            (None, None) => None,
        };
        if let Some(seconds) = request.expires {
            message.headers.expires = Some(from_now(seconds, "expires")?);
        }
        for limit in [request.time_limit, request.soft_time_limit]
            .into_iter()
            .flatten()
        {
            if !(limit > 0.0 && limit <= 86_400.0) {
                return Err(invalid(
                    "invalid-submission",
                    format!("time limits must be above 0 and at most 86400 seconds, not {limit}"),
                ));
            }
        }
        message.headers.timelimit = (request.time_limit, request.soft_time_limit);
        // The trace continues into the worker: `traceparent` rides in the task's headers.
        let mut trace = std::collections::HashMap::new();
        quartet_kit::telemetry::inject_current(&mut quartet_kit::telemetry::MapCarrier(&mut trace));
        for (key, value) in trace {
            message.headers.extra.insert(key, Value::String(value));
        }
        message.headers.extra.insert(
            crate::worker::SENT_AT_HEADER.into(),
            Value::from(chrono::Utc::now().timestamp_millis().max(0) as u64),
        );
        if let Some(key) = &request.idempotency_key {
            if key.is_empty() || key.len() > 200 {
                return Err(invalid(
                    "invalid-submission",
                    "idempotency_key must be 1 to 200 characters",
                ));
            }
            let held = self
                .broker
                .claim(
                    &format!("quartet-idempotency-{queue}-{key}"),
                    &message.headers.id,
                    self.idempotency_window,
                )
                .await
                .map_err(|e| unavailable(&e))?;
            if let Some(id) = held {
                return Ok(Submitted {
                    id,
                    queue,
                    duplicate: true,
                });
            }
        }
        self.broker
            .remember(&queue_key(&message.headers.id), &queue)
            .await
            .map_err(|e| unavailable(&e))?;
        self.broker
            .publish(&message)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Submitted {
            id: message.headers.id,
            queue,
            duplicate: false,
        })
    }
}

/// A task's state and result.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "Task id"), Wait),
    responses((status = 200, description = "State and result", body = TaskStatus),
              (status = 401, description = "No valid token", body = Problem),
              (status = 403, description = "Lacks task:read:<queue>", body = Problem)),
    security(("bearer" = [])))]
async fn status(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    id: web::Path<String>,
    wait: web::Query<Wait>,
) -> Result<HttpResponse, Problem> {
    let status = api.status(&caller.0, id.into_inner(), wait.wait).await?;
    Ok(HttpResponse::Ok().json(status))
}

impl Api {
    /// A task's state and result for `caller`, waiting up to `wait` seconds (≤ 60).
    pub async fn status(
        &self,
        caller: &Claims,
        id: String,
        wait: f64,
    ) -> Result<TaskStatus, Problem> {
        allow(self, caller, "read", &id).await?;
        let meta = if wait > 0.0 {
            let wait = Duration::from_secs_f64(wait.min(60.0));
            self.broker.wait_result(&id, wait).await
        } else {
            self.broker.result(&id).await
        }
        .map_err(|e| unavailable(&e))?;
        Ok(match meta {
            Some(meta) => TaskStatus {
                id,
                state: meta.status.as_str().to_owned(),
                result: meta.result,
                traceback: meta.traceback,
                date_done: meta.date_done,
            },
            None => TaskStatus {
                id,
                state: "PENDING".into(),
                result: Value::Null,
                traceback: None,
                date_done: None,
            },
        })
    }

    /// Revokes a task for `caller`.
    pub async fn revoke(&self, caller: &Claims, id: &str) -> Result<(), Problem> {
        allow(self, caller, "revoke", id).await?;
        self.broker.revoke(id).await.map_err(|e| unavailable(&e))
    }

    /// A queue's statistics for `caller`.
    pub async fn stats(
        &self,
        caller: &Claims,
        queue: &str,
    ) -> Result<crate::broker::QueueStats, Problem> {
        require(caller, &format!("task:stats:{queue}"))?;
        self.broker.stats(queue).await.map_err(|e| unavailable(&e))
    }
}

/// Revokes a task: a worker that takes it records REVOKED instead of running it.
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "Task id")),
    responses((status = 202, description = "Revoked"),
              (status = 401, description = "No valid token", body = Problem),
              (status = 403, description = "Lacks task:revoke:<queue>", body = Problem)),
    security(("bearer" = [])))]
async fn revoke(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    api.revoke(&caller.0, &id.into_inner()).await?;
    Ok(HttpResponse::Accepted().finish())
}

/// A queue's statistics.
#[utoipa::path(get, path = "/v1/queues/{queue}", tag = "tasks", params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Depth per priority, delayed, in flight, consumers, oldest age, dead letters", body = crate::broker::QueueStats),
              (status = 401, description = "No valid token", body = Problem),
              (status = 403, description = "Lacks task:stats:<queue>", body = Problem)),
    security(("bearer" = [])))]
async fn queue_stats(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    queue: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let stats = api.stats(&caller.0, &queue.into_inner()).await?;
    Ok(HttpResponse::Ok().json(stats))
}

#[derive(OpenApi)]
#[openapi(paths(submit, status, revoke, queue_stats))]
struct Doc;

/// The REST routes and their OpenAPI document.
pub fn rest(api: Arc<Api>) -> quartet_kit::RestApi {
    let data = web::Data::new(api);
    quartet_kit::RestApi::new(
        move |cfg| {
            cfg.app_data(data.clone())
                // The size check is ours (a clear error naming the limit), not actix's.
                .app_data(web::PayloadConfig::new(64 << 20))
                .route("/v1/tasks", web::post().to(submit))
                .route("/v1/tasks/{id}", web::get().to(status))
                .route("/v1/tasks/{id}", web::delete().to(revoke))
                .route("/v1/queues/{queue}", web::get().to(queue_stats));
        },
        Doc::openapi(),
    )
}
