//! The gateway's operations (submit, read a result, optionally waiting, revoke, queue
//! statistics, chains, groups, chords, schedules) as [`Api`] methods, and their REST routes;
//! `grpc.rs` serves the same methods. Bearer tokens from quartet-auth;
//! `task:<submit|read|revoke|stats|schedule>:<queue>` (the queue a task
//! went to is remembered next to its result; tasks submitted by other Celery clients need
//! `task:read:*` and `task:revoke:*`).
//!
//! A queue name goes into a permission only after [`quartet_kit::permission::check_name`]
//! accepts it (no `:`, `,`, `*`, white space, control characters or upper case), so a name can
//! never widen or cross a grant; a refused name is a 400 / INVALID_ARGUMENT naming the
//! character. What a client can make the gateway spend is bounded: body size
//! (`tasks.max_payload_bytes`, reading stops there), tasks per workflow
//! ([`MAX_WORKFLOW_TASKS`]), argument nesting ([`crate::celery::MAX_JSON_DEPTH`]), the wait
//! for a result ([`MAX_WAIT_SECONDS`]) and the number of requests waiting at once
//! (`tasks.max_waiters`).

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

/// The longest a request waits for a result (`?wait=`, gRPC `wait`), in seconds.
pub const MAX_WAIT_SECONDS: f64 = 60.0;

/// The longest task name accepted, in bytes.
pub const MAX_TASK_NAME_BYTES: usize = 200;

/// What the API needs.
#[derive(Debug, Clone)]
pub struct Api {
    /// The Redis broker and result databases.
    pub broker: Broker,
    /// The queue of a submission that names none.
    pub default_queue: String,
    /// The largest accepted submission body.
    pub max_payload_bytes: usize,
    /// Permits for requests waiting for results (`tasks.max_waiters`): each holds a Redis
    /// subscription while it waits.
    pub waiters: Arc<tokio::sync::Semaphore>,
    /// How long an idempotency key dedupes submissions.
    pub idempotency_window: Duration,
    /// Celery's `task-sent` events, when on (`tasks.sent_events`).
    pub events: Option<Arc<crate::events::Events>>,
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
    /// Soft time limit in seconds: the handler is told when it passes.
    #[serde(default)]
    pub soft_time_limit: Option<f64>,
    /// Retries this task gets before it goes to the dead letters (our workers; default
    /// `worker.max_retries`), 0 to 100.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Headers to add to the message (a handler's context, a tenant…); Celery's own header
    /// names are refused.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
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
    /// The return value, or the exception `{exc_type, exc_message, exc_module}`, as the
    /// worker wrote it (integers beyond 64 bits keep their digits); any JSON value, `null`
    /// while pending.
    #[schema(value_type = Value)]
    pub result: RawJson,
    /// The failure's traceback.
    pub traceback: Option<String>,
    /// When it finished.
    pub date_done: Option<String>,
}

/// Whether a revoke stops a running task.
#[derive(Debug, Deserialize, IntoParams)]
pub struct Terminate {
    /// Also stop the task where it already runs (recorded REVOKED, `terminated`).
    #[serde(default)]
    pub terminate: bool,
}

/// How long to wait for a result.
#[derive(Debug, Deserialize, IntoParams)]
pub struct Wait {
    /// Seconds to wait for the task to finish (more than 60 waits 60); 0 answers at once.
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

/// `task:<action>:<queue>` for a queue a client names, once the name is one that cannot change
/// the permission; otherwise a 400 naming the character.
pub fn queue_permission(action: &str, queue: &str) -> Result<String, Problem> {
    quartet_kit::permission::check_name("queue", queue).map_err(|e| {
        invalid(
            "invalid-queue",
            format!(
                "{e}; queue names go into permissions (task:{action}:<queue>), so they take no ':', ',', '*', white space, control characters or upper case"
            ),
        )
    })?;
    Ok(format!("task:{action}:{queue}"))
}

/// `task:<action>:<queue>` for a queue name found in storage (remembered with a task, or a
/// schedule's): one that the name rule refuses (stored before the rule) asks for the wildcard.
fn stored_queue_permission(action: &str, queue: &str) -> String {
    queue_permission(action, queue).unwrap_or_else(|_| format!("task:{action}:*"))
}

/// How long a request may wait: `wait` seconds, at most [`MAX_WAIT_SECONDS`]; a negative or
/// non-finite value is refused.
fn wait_for(wait: f64) -> Result<Duration, Problem> {
    if !(wait.is_finite() && wait >= 0.0) {
        return Err(invalid(
            "invalid-wait",
            format!("wait must be 0 to {MAX_WAIT_SECONDS} seconds, not {wait}"),
        ));
    }
    Ok(Duration::from_secs_f64(wait.min(MAX_WAIT_SECONDS)))
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
    require(caller, &stored_queue_permission(action, &queue))
}

/// Reads a request body, stopping as soon as it passes `tasks.max_payload_bytes`.
async fn read_body(api: &Api, mut payload: web::Payload) -> Result<web::Bytes, Problem> {
    use futures::StreamExt as _;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            invalid(
                "unreadable-body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        api.check_size(body.len() + chunk.len())?;
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
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
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&api, payload).await?;
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
                "the submission is {bytes} bytes or more; the limit is {} (tasks.max_payload_bytes): pass large data by reference",
                self.max_payload_bytes
            ),
        ))
    }

    /// Submits a task for `caller`.
    pub async fn submit(&self, caller: &Claims, request: Submit) -> Result<Submitted, Problem> {
        let message = self.prepare(caller, &request)?;
        let queue = message.properties.delivery_info.routing_key.clone();
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
        self.enqueue(&[&message]).await?;
        Ok(Submitted {
            id: message.headers.id,
            queue,
            duplicate: false,
        })
    }

    /// Remembers each message's queue (for the read check) and publishes them.
    async fn enqueue(&self, messages: &[&TaskMessage]) -> Result<(), Problem> {
        self.remember_queues(messages).await?;
        for message in messages {
            self.broker
                .publish(message)
                .await
                .map_err(|e| unavailable(&e))?;
        }
        if let Some(events) = &self.events {
            let sent: Vec<(&str, serde_json::Map<String, Value>)> = messages
                .iter()
                .filter_map(|m| {
                    let fields = serde_json::json!({
                        "uuid": m.headers.id,
                        "name": m.headers.task,
                        "args": m.args.text(),
                        "kwargs": m.kwargs.text(),
                        "retries": m.headers.retries,
                        "eta": m.headers.eta,
                        "expires": m.headers.expires,
                        "queue": m.properties.delivery_info.routing_key,
                        "exchange": "",
                        "routing_key": m.properties.delivery_info.routing_key,
                        "root_id": m.headers.root_id,
                        "parent_id": m.headers.parent_id,
                    });
                    fields.as_object().cloned().map(|f| ("task-sent", f))
                })
                .collect();
            if let Err(e) = events.send(&sent).await {
                tracing::debug!(error = %e, "could not send task-sent events");
            }
        }
        Ok(())
    }

    async fn remember_queues(&self, messages: &[&TaskMessage]) -> Result<(), Problem> {
        for message in messages {
            self.broker
                .remember(
                    &queue_key(&message.headers.id),
                    &message.properties.delivery_info.routing_key,
                )
                .await
                .map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }

    /// Checks a submission and `caller`'s `task:submit:<queue>`, and builds its message.
    fn prepare(&self, caller: &Claims, request: &Submit) -> Result<TaskMessage, Problem> {
        if request.name.trim().is_empty() {
            return Err(invalid("invalid-submission", "name is required"));
        }
        if request.name.len() > MAX_TASK_NAME_BYTES || request.name.chars().any(char::is_control) {
            return Err(invalid(
                "invalid-submission",
                format!(
                    "name must be at most {MAX_TASK_NAME_BYTES} bytes without control characters"
                ),
            ));
        }
        let queue = request
            .queue
            .clone()
            .unwrap_or_else(|| self.default_queue.clone());
        require(caller, &queue_permission("submit", &queue)?)?;
        // Arguments a worker could not read are refused here, naming the problem, rather than
        // failing (or worse) where they run.
        for (what, raw) in [("args", &request.args), ("kwargs", &request.kwargs)] {
            if let Some(raw) = raw {
                crate::celery::check_json(raw.get())
                    .map_err(|e| invalid("invalid-submission", format!("{what}: {e}")))?;
            }
        }
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
        if let Some(retries) = request.max_retries {
            if retries > 100 {
                return Err(invalid(
                    "invalid-submission",
                    format!("max_retries must be 0 to 100, not {retries}"),
                ));
            }
            message
                .headers
                .extra
                .insert(crate::worker::MAX_RETRIES_HEADER.into(), retries.into());
        }
        for (key, value) in &request.headers {
            let reserved = serde_json::to_value(&message.headers)
                .ok()
                .is_some_and(|h| h.get(key).is_some())
                || key.starts_with("quartet_")
                || key == "traceparent"
                || key == "tracestate";
            if key.is_empty() || key.len() > 100 || reserved {
                return Err(invalid(
                    "invalid-submission",
                    format!(
                        "header {key:?} is reserved or invalid: extra headers cannot replace Celery's, the trace's or quartet_*"
                    ),
                ));
            }
            message
                .headers
                .extra
                .insert(key.clone(), Value::String(value.clone()));
        }
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
        Ok(message)
    }
}

/// A task's state and result.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "Task id"), Wait),
    responses((status = 200, description = "State and result", body = TaskStatus),
              (status = 400, description = "A negative or non-finite wait", body = Problem),
              (status = 401, description = "No valid token", body = Problem),
              (status = 403, description = "Lacks task:read:<queue>", body = Problem),
              (status = 429, description = "tasks.max_waiters requests already wait", body = Problem)),
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
        let wait = wait_for(wait)?;
        allow(self, caller, "read", &id).await?;
        let meta = if wait > Duration::ZERO {
            let _permit = self.waiter()?;
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
                result: RawJson::null(),
                traceback: None,
                date_done: None,
            },
        })
    }

    /// A permit to wait for a result, or 429 when `tasks.max_waiters` requests already wait.
    fn waiter(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
        self.waiters.clone().try_acquire_owned().map_err(|_| {
            Problem::new(
                ErrorKind::ResourceExhausted,
                "too-many-waiters",
                "too many requests are waiting for results (tasks.max_waiters): retry shortly, or read without wait",
            )
        })
    }

    /// Revokes a task for `caller`: marked revoked for our workers and broadcast to every
    /// worker as Celery's `revoke` command (so Celery's workers honour it too); `terminate`
    /// also stops it where it already runs.
    pub async fn revoke(&self, caller: &Claims, id: &str, terminate: bool) -> Result<(), Problem> {
        allow(self, caller, "revoke", id).await?;
        self.broker.revoke(id).await.map_err(|e| unavailable(&e))?;
        self.broker
            .broadcast_revoke(id, terminate)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// A queue's statistics for `caller`.
    pub async fn stats(
        &self,
        caller: &Claims,
        queue: &str,
    ) -> Result<crate::broker::QueueStats, Problem> {
        require(caller, &queue_permission("stats", queue)?)?;
        self.broker.stats(queue).await.map_err(|e| unavailable(&e))
    }
}

/// Revokes a task: a worker that takes it records REVOKED instead of running it.
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "Task id"), Terminate),
    responses((status = 202, description = "Revoked"),
              (status = 401, description = "No valid token", body = Problem),
              (status = 403, description = "Lacks task:revoke:<queue>", body = Problem)),
    security(("bearer" = [])))]
async fn revoke(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    id: web::Path<String>,
    how: web::Query<Terminate>,
) -> Result<HttpResponse, Problem> {
    api.revoke(&caller.0, &id.into_inner(), how.terminate)
        .await?;
    Ok(HttpResponse::Accepted().finish())
}

/// A queue's statistics.
#[utoipa::path(get, path = "/v1/queues/{queue}", tag = "tasks", params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Depth per priority, delayed, in flight, consumers, oldest age, dead letters", body = crate::broker::QueueStats),
              (status = 400, description = "A queue name that cannot go into a permission (':', ',', '*', white space, control characters, upper case)", body = Problem),
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

/// The most tasks one workflow submission may hold.
pub const MAX_WORKFLOW_TASKS: usize = 1000;

/// The tasks of a chain (run one after another, each getting the previous result as its
/// first argument) or of a group (run independently).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TaskList {
    /// The tasks, in order.
    pub tasks: Vec<Submit>,
}

/// A chord: a group (the header) whose results, in header order, go to one more task (the
/// body) as its first argument.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Chord {
    /// The tasks that run independently.
    pub header: Vec<Submit>,
    /// The task that gets the list of their results.
    pub body: Submit,
}

/// A submitted chain, group or chord.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowSubmitted {
    /// Where the workflow's outcome is read: a chain's last task, a chord's body (via
    /// `/v1/tasks/{id}`), or a group's id (via `/v1/groups/{id}`).
    pub id: String,
    /// The group id of a group or a chord's header.
    pub group_id: Option<String>,
    /// Every task's id, in the order given (a chord's body last).
    pub task_ids: Vec<String>,
}

/// A group's progress and its tasks' states.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupStatus {
    /// The group id.
    pub group_id: String,
    /// Tasks finished (SUCCESS, FAILURE or REVOKED).
    pub completed: usize,
    /// Tasks in the group.
    pub total: usize,
    /// Each task's state and result, in group order.
    pub tasks: Vec<TaskStatus>,
}

fn finished(state: &str) -> bool {
    matches!(state, "SUCCESS" | "FAILURE" | "REVOKED")
}

impl Api {
    fn prepare_all(
        &self,
        caller: &Claims,
        what: &str,
        requests: &[Submit],
    ) -> Result<Vec<TaskMessage>, Problem> {
        if requests.is_empty() || requests.len() > MAX_WORKFLOW_TASKS {
            return Err(invalid(
                "invalid-workflow",
                format!(
                    "a {what} takes 1 to {MAX_WORKFLOW_TASKS} tasks, not {}",
                    requests.len()
                ),
            ));
        }
        requests
            .iter()
            .enumerate()
            .map(|(i, request)| {
                if request.idempotency_key.is_some() {
                    return Err(invalid(
                        "invalid-workflow",
                        format!(
                            "task {i} of the {what}: idempotency_key applies to single tasks only"
                        ),
                    ));
                }
                self.prepare(caller, request).map_err(|mut p| {
                    p.detail = format!("task {i} of the {what}: {}", p.detail);
                    p
                })
            })
            .collect()
    }

    /// Submits a chain for `caller`: the first task is published with the others inside it
    /// (Celery's `embed.chain`); each worker publishes the next step with its result.
    pub async fn chain(
        &self,
        caller: &Claims,
        request: TaskList,
    ) -> Result<WorkflowSubmitted, Problem> {
        let mut messages = self.prepare_all(caller, "chain", &request.tasks)?;
        for (i, step) in request.tasks.iter().enumerate().skip(1) {
            if step.eta.is_some() || step.expires.is_some() {
                return Err(invalid(
                    "invalid-workflow",
                    format!(
                        "task {i} of the chain: eta and expires apply to a chain's first task; later ones take countdown"
                    ),
                ));
            }
        }
        let task_ids: Vec<String> = messages.iter().map(|m| m.headers.id.clone()).collect();
        crate::canvas::make_chain(&mut messages);
        // A later step's countdown counts from when the step before it finishes.
        let countdowns = request.tasks.iter().skip(1).rev().map(|t| t.countdown);
        if let Some(steps) = messages[0].embed.chain.as_mut() {
            for (signature, countdown) in steps.iter_mut().zip(countdowns) {
                if let Some(countdown) = countdown {
                    signature["options"]["countdown"] = countdown.into();
                }
            }
        }
        let all: Vec<&TaskMessage> = messages.iter().collect();
        self.remember_queues(&all).await?;
        self.enqueue(&all[..1]).await?;
        Ok(WorkflowSubmitted {
            id: task_ids.last().cloned().unwrap_or_default(),
            group_id: None,
            task_ids,
        })
    }

    /// Submits a group for `caller`: every task at once, sharing a group id whose members are
    /// saved where `GroupResult.restore` finds them.
    pub async fn group(
        &self,
        caller: &Claims,
        request: TaskList,
    ) -> Result<WorkflowSubmitted, Problem> {
        let mut messages = self.prepare_all(caller, "group", &request.tasks)?;
        let group_id = crate::celery::uuid4();
        crate::canvas::join_group(&mut messages, &group_id);
        let task_ids: Vec<String> = messages.iter().map(|m| m.headers.id.clone()).collect();
        self.broker
            .save_group(&group_id, &task_ids)
            .await
            .map_err(|e| unavailable(&e))?;
        self.enqueue(&messages.iter().collect::<Vec<_>>()).await?;
        Ok(WorkflowSubmitted {
            id: group_id.clone(),
            group_id: Some(group_id),
            task_ids,
        })
    }

    /// Submits a chord for `caller`: the header as a group whose messages carry the body;
    /// the part that completes the header publishes the body (Celery's Redis counting, so
    /// the header may run on our workers, Celery's or both).
    pub async fn chord(
        &self,
        caller: &Claims,
        request: Chord,
    ) -> Result<WorkflowSubmitted, Problem> {
        let mut header = self.prepare_all(caller, "chord header", &request.header)?;
        let body = self.prepare_all(caller, "chord body", std::slice::from_ref(&request.body))?;
        let body = &body[0];
        if request.body.eta.is_some() || request.body.expires.is_some() {
            return Err(invalid(
                "invalid-workflow",
                "the chord body takes countdown, not eta or expires",
            ));
        }
        let group_id = crate::celery::uuid4();
        let mut signature = body.signature();
        if let Some(countdown) = request.body.countdown {
            signature["options"]["countdown"] = countdown.into();
        }
        crate::canvas::make_chord(&mut header, signature, &group_id);
        let header_ids: Vec<String> = header.iter().map(|m| m.headers.id.clone()).collect();
        self.broker
            .start_chord(&group_id, header.len())
            .await
            .map_err(|e| unavailable(&e))?;
        self.broker
            .save_group(&group_id, &header_ids)
            .await
            .map_err(|e| unavailable(&e))?;
        self.remember_queues(&[body]).await?;
        self.enqueue(&header.iter().collect::<Vec<_>>()).await?;
        let mut task_ids = header_ids;
        task_ids.push(body.headers.id.clone());
        Ok(WorkflowSubmitted {
            id: body.headers.id.clone(),
            group_id: Some(group_id),
            task_ids,
        })
    }

    /// A group's progress for `caller` (`task:read` on each task's queue), waiting up to
    /// `wait` seconds (≤ 60) for every task to finish.
    pub async fn group_status(
        &self,
        caller: &Claims,
        group_id: &str,
        wait: f64,
    ) -> Result<GroupStatus, Problem> {
        let wait = wait_for(wait)?;
        let ids = self
            .broker
            .group(group_id)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| {
                Problem::new(
                    ErrorKind::NotFound,
                    "unknown-group",
                    format!("no group {group_id:?} (never saved, or expired with its results)"),
                )
            })?;
        let _permit = if wait > Duration::ZERO {
            Some(self.waiter()?)
        } else {
            None
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs_f64();
            tasks.push(self.status(caller, id, left).await?);
        }
        Ok(GroupStatus {
            group_id: group_id.to_owned(),
            completed: tasks.iter().filter(|t| finished(&t.state)).count(),
            total: tasks.len(),
            tasks,
        })
    }
}

async fn read_workflow<T: serde::de::DeserializeOwned>(
    api: &Api,
    payload: web::Payload,
    what: &str,
) -> Result<T, Problem> {
    let body = read_body(api, payload).await?;
    serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid-workflow", format!("the body is not a {what}: {e}")))
}

/// Submits a chain: each task gets the previous one's result as its first argument.
#[utoipa::path(post, path = "/v1/chains", tag = "workflows", request_body = TaskList,
    responses((status = 202, description = "Queued; `id` is the last task's", body = WorkflowSubmitted),
              (status = 400, description = "Invalid or oversized submission", body = Problem),
              (status = 403, description = "Lacks task:submit:<queue> for a task's queue", body = Problem)),
    security(("bearer" = [])))]
async fn submit_chain(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let request = read_workflow(&api, payload, "chain {tasks: [...]}").await?;
    Ok(HttpResponse::Accepted().json(api.chain(&caller.0, request).await?))
}

/// Submits a group: the tasks run independently; their progress is read as a group.
#[utoipa::path(post, path = "/v1/groups", tag = "workflows", request_body = TaskList,
    responses((status = 202, description = "Queued; `id` is the group's", body = WorkflowSubmitted),
              (status = 400, description = "Invalid or oversized submission", body = Problem),
              (status = 403, description = "Lacks task:submit:<queue> for a task's queue", body = Problem)),
    security(("bearer" = [])))]
async fn submit_group(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let request = read_workflow(&api, payload, "group {tasks: [...]}").await?;
    Ok(HttpResponse::Accepted().json(api.group(&caller.0, request).await?))
}

/// Submits a chord: the header's results, in order, go to the body.
#[utoipa::path(post, path = "/v1/chords", tag = "workflows", request_body = Chord,
    responses((status = 202, description = "Queued; `id` is the body's", body = WorkflowSubmitted),
              (status = 400, description = "Invalid or oversized submission", body = Problem),
              (status = 403, description = "Lacks task:submit:<queue> for a task's queue", body = Problem)),
    security(("bearer" = [])))]
async fn submit_chord(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let request = read_workflow(&api, payload, "chord {header: [...], body: {...}}").await?;
    Ok(HttpResponse::Accepted().json(api.chord(&caller.0, request).await?))
}

/// A group's progress and its tasks' results.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "workflows", params(("id" = String, Path, description = "Group id"), Wait),
    responses((status = 200, description = "Progress and results", body = GroupStatus),
              (status = 400, description = "A negative or non-finite wait", body = Problem),
              (status = 403, description = "Lacks task:read:<queue> for a task's queue", body = Problem),
              (status = 404, description = "No such group", body = Problem),
              (status = 429, description = "tasks.max_waiters requests already wait", body = Problem)),
    security(("bearer" = [])))]
async fn group_status(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    id: web::Path<String>,
    wait: web::Query<Wait>,
) -> Result<HttpResponse, Problem> {
    let status = api.group_status(&caller.0, &id, wait.wait).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// The schedules a caller may see, and which replica fires them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Schedules {
    /// The replica holding the scheduler lease, if one leads.
    pub scheduler: Option<String>,
    /// The schedules on queues the caller holds `task:schedule:<queue>` for.
    pub schedules: Vec<crate::schedule::ScheduleState>,
}

fn no_schedule(name: &str) -> Problem {
    Problem::new(
        ErrorKind::NotFound,
        "unknown-schedule",
        format!("no schedule named {name:?}"),
    )
}

impl Api {
    fn schedule_queue(&self, schedule: &crate::schedule::Schedule) -> String {
        schedule
            .queue
            .clone()
            .unwrap_or_else(|| self.default_queue.clone())
    }

    /// Creates or replaces schedule `name` for `caller` (`task:schedule:<queue>`).
    pub async fn put_schedule(
        &self,
        caller: &Claims,
        name: &str,
        mut schedule: crate::schedule::Schedule,
    ) -> Result<crate::schedule::ScheduleState, Problem> {
        if !crate::schedule::valid_name(name) {
            return Err(invalid(
                "invalid-schedule",
                format!(
                    "schedule name {name:?}: use 1 to 200 letters, digits, '.', '_', '-' or ':'"
                ),
            ));
        }
        schedule
            .validate()
            .map_err(|e| invalid("invalid-schedule", format!("schedule {name:?}: {e}")))?;
        let queue = self.schedule_queue(&schedule);
        require(caller, &queue_permission("schedule", &queue)?)?;
        // Replacing a schedule on another queue needs that queue's permission too.
        if let Some(old) = self.find_schedule(name).await? {
            require(
                caller,
                &stored_queue_permission("schedule", &self.schedule_queue(&old.schedule)),
            )?;
        }
        schedule.queue = Some(queue);
        self.broker
            .put_schedule(name, &schedule)
            .await
            .map_err(|e| unavailable(&e))?;
        self.find_schedule(name)
            .await?
            .ok_or_else(|| no_schedule(name))
    }

    async fn find_schedule(
        &self,
        name: &str,
    ) -> Result<Option<crate::schedule::ScheduleState>, Problem> {
        Ok(self
            .broker
            .schedules()
            .await
            .map_err(|e| unavailable(&e))?
            .into_iter()
            .find(|s| s.name == name))
    }

    /// The schedules `caller` may see.
    pub async fn schedules(&self, caller: &Claims) -> Result<Schedules, Problem> {
        let all = self.broker.schedules().await.map_err(|e| unavailable(&e))?;
        let schedules = all
            .into_iter()
            .filter(|s| {
                require(
                    caller,
                    &stored_queue_permission("schedule", &self.schedule_queue(&s.schedule)),
                )
                .is_ok()
            })
            .collect();
        Ok(Schedules {
            scheduler: self.broker.scheduler().await.map_err(|e| unavailable(&e))?,
            schedules,
        })
    }

    /// One schedule for `caller`.
    pub async fn schedule(
        &self,
        caller: &Claims,
        name: &str,
    ) -> Result<crate::schedule::ScheduleState, Problem> {
        let found = self
            .find_schedule(name)
            .await?
            .ok_or_else(|| no_schedule(name))?;
        require(
            caller,
            &stored_queue_permission("schedule", &self.schedule_queue(&found.schedule)),
        )?;
        Ok(found)
    }

    /// Removes a schedule for `caller`.
    pub async fn delete_schedule(&self, caller: &Claims, name: &str) -> Result<(), Problem> {
        self.schedule(caller, name).await?;
        self.broker
            .delete_schedule(name)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }
}

/// Creates or replaces a periodic schedule.
#[utoipa::path(put, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    request_body = crate::schedule::Schedule,
    responses((status = 200, description = "The schedule and when it fires next", body = crate::schedule::ScheduleState),
              (status = 400, description = "Invalid schedule", body = Problem),
              (status = 403, description = "Lacks task:schedule:<queue>", body = Problem)),
    security(("bearer" = [])))]
async fn put_schedule(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&api, payload).await?;
    let schedule = serde_json::from_slice(&body).map_err(|e| {
        invalid(
            "invalid-schedule",
            format!("the body is not a schedule {{task, args, kwargs, queue, cron | every}}: {e}"),
        )
    })?;
    Ok(HttpResponse::Ok().json(api.put_schedule(&caller.0, &name, schedule).await?))
}

/// The schedules, and which replica fires them.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, description = "Schedules on queues the caller may schedule on", body = Schedules)),
    security(("bearer" = [])))]
async fn list_schedules(api: web::Data<Arc<Api>>, caller: Bearer) -> Result<HttpResponse, Problem> {
    Ok(HttpResponse::Ok().json(api.schedules(&caller.0).await?))
}

/// One schedule and its state.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, description = "The schedule", body = crate::schedule::ScheduleState),
              (status = 404, description = "No such schedule", body = Problem)),
    security(("bearer" = [])))]
async fn get_schedule(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    Ok(HttpResponse::Ok().json(api.schedule(&caller.0, &name).await?))
}

/// Removes a schedule.
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses((status = 204, description = "Removed"),
              (status = 404, description = "No such schedule", body = Problem)),
    security(("bearer" = [])))]
async fn delete_schedule(
    api: web::Data<Arc<Api>>,
    caller: Bearer,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    api.delete_schedule(&caller.0, &name).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(OpenApi)]
#[openapi(paths(
    submit,
    status,
    revoke,
    queue_stats,
    submit_chain,
    submit_group,
    submit_chord,
    group_status,
    put_schedule,
    list_schedules,
    get_schedule,
    delete_schedule
))]
struct Doc;

/// The REST routes and their OpenAPI document.
pub fn rest(api: Arc<Api>) -> quartet_kit::RestApi {
    let data = web::Data::new(api);
    quartet_kit::RestApi::new(
        move |cfg| {
            // Bodies are read by `read_body`, which stops at `tasks.max_payload_bytes`.
            cfg.app_data(data.clone())
                .route("/v1/tasks", web::post().to(submit))
                .route("/v1/tasks/{id}", web::get().to(status))
                .route("/v1/tasks/{id}", web::delete().to(revoke))
                .route("/v1/queues/{queue}", web::get().to(queue_stats))
                .route("/v1/chains", web::post().to(submit_chain))
                .route("/v1/groups", web::post().to(submit_group))
                .route("/v1/groups/{id}", web::get().to(group_status))
                .route("/v1/chords", web::post().to(submit_chord))
                .route("/v1/schedules", web::get().to(list_schedules))
                .route("/v1/schedules/{name}", web::put().to(put_schedule))
                .route("/v1/schedules/{name}", web::get().to(get_schedule))
                .route("/v1/schedules/{name}", web::delete().to(delete_schedule));
        },
        Doc::openapi(),
    )
}
