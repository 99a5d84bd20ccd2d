//! `quartet-task-gateway`: Celery-compatible task broker-gateway.
//!
//! [`celery`] is Celery's message protocol v2 and result records as the real Celery writes
//! them; [`broker`] its Redis layout (queues, `unacked`, leases, delayed tasks, results);
//! [`canvas`] chains, groups and chords; [`events`] Celery's events and remote-control
//! revokes; [`schedule`] periodic schedules with one leading scheduler; [`worker`] the Rust
//! worker library; [`api`] and [`grpc`] the gateway's REST and gRPC API.
//!
//! Layout rule: the domain apart from the transports (gRPC, REST, Celery over Redis) and the
//! storage, so each can be tested alone.

pub mod api;
pub mod broker;
pub mod canvas;
pub mod celery;
pub mod embedded;
pub mod events;
pub mod grpc;
pub mod schedule;
pub mod worker;

use quartet_kit::app::{Context, ServiceConfig};
use quartet_kit::reexport::tonic::service::Routes;
use quartet_kit::settings::AuthClientSettings;
use quartet_kit::{BaseSettings, ServerSettings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The binary's name, also its `service.name` in traces and its `QUARTET_*` prefix.
pub const SERVICE: &str = "quartet-task-gateway";

/// One line for `--help`.
pub const ABOUT: &str = "Celery-compatible task broker-gateway.";

/// Where Celery's queues and results live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RedisSettings {
    /// The broker database (Celery's `broker_url`), or `sqlite:<path>` for the embedded broker in that file (single machine, no Celery peers; results kept there too).
    pub broker_url: String,
    /// The result database (Celery's `result_backend`); unused with the embedded broker.
    pub result_url: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            broker_url: "redis://127.0.0.1:6379/0".into(),
            result_url: "redis://127.0.0.1:6379/1".into(),
        }
    }
}

/// Submissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskSettings {
    /// The queue of a submission that names none (Celery's default queue is `celery`).
    pub default_queue: String,
    /// The largest request body (a submission, a workflow, a schedule) accepted, in bytes; reading stops there and the request is refused with an error naming the limit.
    pub max_payload_bytes: usize,
    /// Requests waiting for results at once (`?wait=`, gRPC `wait`), each holding a Redis subscription for up to 60 s; more are refused with 429 / RESOURCE_EXHAUSTED until some finish.
    pub max_waiters: usize,
    /// Seconds an idempotency key dedupes submissions on its queue.
    pub idempotency_seconds: u64,
    /// Send Celery's `task-sent` event for each submission (Celery's `task_send_sent_event`).
    pub sent_events: bool,
    /// Run the periodic scheduler in this replica: every replica may, one at a time fires (a lease in Redis).
    pub scheduler: bool,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            default_queue: "celery".into(),
            max_payload_bytes: 1 << 20,
            max_waiters: 1000,
            idempotency_seconds: 86_400,
            sent_events: false,
            scheduler: true,
        }
    }
}

/// The worker inside the gateway process, running the built-in tasks (`quartet.echo`,
/// `quartet.add`, `quartet.sleep`, `quartet.flaky`): for trying the gateway out and for `make dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerSettings {
    /// Run it.
    pub enabled: bool,
    /// The queues it consumes, comma-separated.
    pub queues: String,
    /// How many tasks it runs at once.
    pub concurrency: usize,
    /// Seconds a task's lease lasts without renewal: a dead worker's tasks return to their queue within about this long.
    pub lease_seconds: u64,
    /// Retries a failing task gets before it goes to the queue's dead letters (`quartet.dead.<queue>`).
    pub max_retries: u32,
    /// Tasks run by calling HTTP endpoints, `task=url` comma-separated: the worker POSTs `{"task", "args", "kwargs"}` and takes `{"result": …}` back.
    pub webhooks: String,
    /// Send Celery's task events (received, started, succeeded, failed, retried, revoked), as Celery's `-E`; worker heartbeats are sent either way.
    pub task_events: bool,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            queues: "celery".into(),
            concurrency: 4,
            lease_seconds: 15,
            max_retries: worker::DEFAULT_MAX_RETRIES,
            webhooks: String::new(),
            task_events: false,
        }
    }
}

/// Every setting of `quartet-task-gateway`; `quartet-task-gateway --config-reference` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Listeners, logging and shutdown, shared with every Quartet server.
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Verifying callers' tokens from `quartet-auth`.
    pub auth: AuthClientSettings,
    /// Celery's Redis databases.
    pub redis: RedisSettings,
    /// Submissions.
    pub tasks: TaskSettings,
    /// The built-in worker.
    pub worker: WorkerSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerSettings::with_ports(7120),
            auth: AuthClientSettings::default(),
            redis: RedisSettings::default(),
            tasks: TaskSettings::default(),
            worker: WorkerSettings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn base(&self) -> &BaseSettings {
        &self.server.base
    }
}

/// `quartet.add`: the sum of its arguments, read as written — integers exactly (up to 38
/// digits, i128), anything with a fraction or exponent as 64-bit floats.
fn add(args: &celery::RawJson) -> Result<celery::RawJson, worker::TaskError> {
    use worker::TaskError;
    let not_numbers = || TaskError::new("TypeError", "quartet.add takes a list of numbers");
    let items: Vec<celery::RawJson> =
        serde_json::from_str(args.text()).map_err(|_| not_numbers())?;
    let (mut integer, mut float, mut floats) = (0i128, 0f64, false);
    for item in &items {
        let text = item.text();
        let is_integer = text
            .strip_prefix('-')
            .unwrap_or(text)
            .bytes()
            .all(|b| b.is_ascii_digit());
        if is_integer && !text.is_empty() {
            let n: i128 = text.parse().map_err(|_| {
                TaskError::new(
                    "OverflowError",
                    format!("quartet.add takes integers of up to 38 digits, not {text}"),
                )
            })?;
            integer = integer.checked_add(n).ok_or_else(|| {
                TaskError::new("OverflowError", "the sum is beyond 128-bit integers")
            })?;
        } else {
            float += serde_json::from_str::<f64>(text).map_err(|_| not_numbers())?;
            floats = true;
        }
    }
    let text = if floats {
        let sum = float + integer as f64;
        if !sum.is_finite() {
            return Err(TaskError::new(
                "OverflowError",
                "the sum is beyond a 64-bit float",
            ));
        }
        if sum.fract() == 0.0 && sum.abs() < 9e15 {
            (sum as i64).to_string()
        } else {
            serde_json::Value::from(sum).to_string()
        }
    } else {
        integer.to_string()
    };
    celery::RawJson::parse(&text).map_err(|e| TaskError::new("ValueError", e.to_string()))
}

/// The built-in tasks the gateway's own worker runs.
pub fn builtin_worker(worker: worker::Worker) -> worker::Worker {
    use serde_json::Value;
    use worker::TaskError;
    worker
        // Raw: the arguments come back exactly as written, wide integers included.
        .task_raw("quartet.echo", |args, _| async move { Ok(args) })
        .task_raw("quartet.add", |args, _| async move { add(&args) })
        .task("quartet.flaky", |args, _| async move {
            // Always fails, asking for a retry after args[0] seconds: shows retries and
            // dead letters.
            let countdown = args[0].as_f64().unwrap_or(1.0).clamp(0.0, 3600.0);
            Err::<Value, _>(TaskError::retry(
                "RuntimeError",
                "quartet.flaky always fails",
                std::time::Duration::from_secs_f64(countdown),
            ))
        })
        .task("quartet.sleep", |args, _| async move {
            let seconds = args[0]
                .as_f64()
                .filter(|s| (0.0..=3600.0).contains(s))
                .ok_or_else(|| {
                    TaskError::new("ValueError", "quartet.sleep takes 0 to 3600 seconds")
                })?;
            // Stops early, as a well-behaved long task does, when its soft time limit passes.
            let soft_limit = worker::context().map(|c| c.soft_limit).unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs_f64(seconds)) => Ok(Value::from(seconds)),
                () = soft_limit.cancelled() => Err(TaskError::new("SoftTimeLimitExceeded", "SoftTimeLimitExceeded()")),
            }
        })
}

/// Serves `quartet-task-gateway` until a stop signal, then drains.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    // The default queue goes into permissions like any queue a client names.
    quartet_kit::permission::check_name("queue", &config.tasks.default_queue)
        .map_err(|e| anyhow::anyhow!("tasks.default_queue: {e}"))?;
    let broker = broker::Broker::open(&config.redis.broker_url, &config.redis.result_url)
        .map_err(|e| anyhow::anyhow!("redis.broker_url / redis.result_url: {e}"))?;
    let probe = broker.clone();
    ctx.readiness.register("broker", move || {
        let probe = probe.clone();
        async move { probe.ping().await.map_err(|e| e.to_string()) }
    });
    if !config.worker.enabled {
        ctx.shutdown
            .spawn(broker.clone().housekeeping(ctx.shutdown.token()));
    }
    if config.worker.enabled {
        let queues: Vec<&str> = config
            .worker
            .queues
            .split(',')
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .collect();
        let mut worker = builtin_worker(
            worker::Worker::new(broker.clone(), &queues, config.worker.concurrency)
                .lease(std::time::Duration::from_secs(config.worker.lease_seconds))
                .max_retries(config.worker.max_retries)
                .task_events(config.worker.task_events),
        );
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()?;
        for (task, url) in
            worker::parse_webhooks(&config.worker.webhooks).map_err(|e| anyhow::anyhow!(e))?
        {
            worker = worker.webhook(&task, &url, http.clone());
        }
        let worker = worker
            .metrics(ctx.metrics.registry())
            .map_err(|e| anyhow::anyhow!("worker metrics: {e}"))?;
        let probe = worker.clone();
        ctx.readiness.register("worker", move || {
            let connected = probe.connected();
            async move { connected }
        });
        tracing::info!(queues = ?queues, tasks = ?worker.tasks(), worker = %worker.id(), "built-in worker running");
        ctx.shutdown.spawn(worker.run(ctx.shutdown.token()));
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let identity = format!(
        "quartet-gateway-{}@{host}-{}",
        std::process::id(),
        &celery::uuid4()[..8]
    );
    if config.tasks.scheduler {
        let scheduler =
            schedule::Scheduler::new(broker.clone(), &identity, &config.tasks.default_queue);
        ctx.shutdown.spawn(scheduler.run(ctx.shutdown.token()));
    }
    let api = std::sync::Arc::new(api::Api {
        events: config
            .tasks
            .sent_events
            .then(|| std::sync::Arc::new(events::Events::new(broker.clone(), &identity))),
        broker,
        default_queue: config.tasks.default_queue.clone(),
        max_payload_bytes: config.tasks.max_payload_bytes,
        waiters: std::sync::Arc::new(tokio::sync::Semaphore::new(
            config
                .tasks
                .max_waiters
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        idempotency_window: std::time::Duration::from_secs(config.tasks.idempotency_seconds),
    });
    let authenticator = quartet_kit::token::authenticator(&config.auth);
    let mut grpc = Routes::builder();
    grpc.add_service(grpc::TasksService::server(
        api.clone(),
        authenticator.clone(),
    ));
    let rest = api::rest(api).with_bearer(authenticator);
    quartet_kit::app::serve_server(ctx, &config.server, grpc.routes(), rest).await
}
