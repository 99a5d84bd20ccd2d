//! The Rust worker library: register async handlers by task name, consume queues, store
//! results where Celery clients read them.
//!
//! ```no_run
//! # async fn demo(broker: quartet_task_gateway::broker::Broker) {
//! use quartet_task_gateway::worker::{TaskError, Worker};
//! let worker = Worker::new(broker, &["celery"], 4)
//!     .task("shop.add", |args, _kwargs| async move {
//!         let sum: i64 = args.as_array().into_iter().flatten().filter_map(|v| v.as_i64()).sum();
//!         Ok::<_, TaskError>(sum.into())
//!     });
//! worker.run(tokio_util::sync::CancellationToken::new()).await;
//! # }
//! ```
//!
//! Semantics today: acks-late (a message leaves `unacked` only after its result is stored, so
//! a worker that dies mid-task leaves it for redelivery); every message a worker holds is
//! **leased** to that worker's identity and the lease is renewed by a heartbeat every third of
//! its length, so a dead worker's tasks go back to their queue once the lease lapses (seconds,
//! not Celery's one-hour visibility timeout) while a live worker's long task is never handed
//! out again; any worker puts expired leases back, atomically and only if still unacknowledged.
//! At most `concurrency` tasks run at once, each consumer taking one message at a time
//! (prefetch 1); anything popped that is not a usable Celery protocol v2 JSON message (not
//! UTF-8, not JSON, the wrong shape, …) is moved to the quarantine list with the reason — the
//! push retried until it succeeds, so nothing popped is lost while the process lives — and
//! the consumer goes on; arguments a handler cannot read (nested deeper than
//! [`crate::celery::MAX_JSON_DEPTH`], numbers beyond a float, lone surrogates, integers beyond
//! 64 bits for a handler taking values) fail the task with `ValueError` naming the problem;
//! an unknown task name is a FAILURE
//! (`NotRegistered`), as Celery reports it; on stop, consumers stop taking work and the tasks
//! in hand finish.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::broker::{Broker, BrokerError, Consumer, Delivery};
use crate::canvas::chain_step;
use crate::celery::{RawJson, ResultMeta, State, TaskMessage, exception};

/// The list where unusable messages go, each wrapped with the reason and the time.
pub const QUARANTINE: &str = "quartet.quarantine";

/// How a handler fails: Celery's exception triple, and whether to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    /// Exception type name, e.g. `ValueError`.
    pub kind: String,
    /// The message.
    pub message: String,
    /// Try again after this long (within the worker's retry budget), as Celery's
    /// `self.retry(countdown=…)`.
    pub retry: Option<Duration>,
}

impl TaskError {
    /// A failure of type `kind`.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
            retry: None,
        }
    }

    /// A failure worth another attempt after `countdown`.
    pub fn retry(kind: &str, message: impl Into<String>, countdown: Duration) -> Self {
        Self {
            retry: Some(countdown),
            ..Self::new(kind, message)
        }
    }
}

/// The list where a queue's tasks go when their retry budget is spent: `quartet.dead.<queue>`.
pub fn dead_letters(queue: &str) -> String {
    format!("quartet.dead.{queue}")
}

/// Parses `task=url` pairs, comma-separated (the `worker.webhooks` setting).
pub fn parse_webhooks(spec: &str) -> Result<Vec<(String, String)>, String> {
    let mut hooks = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (task, url) = item
            .split_once('=')
            .ok_or_else(|| format!("worker.webhooks: {item:?} is not task=url"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "worker.webhooks: {url:?} (for {task}) is not an http(s) URL"
            ));
        }
        hooks.push((task.trim().to_owned(), url.trim().to_owned()));
    }
    Ok(hooks)
}

impl Worker {
    /// Runs task `name` by calling `url`: a POST of `{"task", "args", "kwargs"}` as JSON; a 2xx
    /// answer `{"result": …}` is the result, any other answer a failure carrying the status
    /// and body (a 503 or 429 asks for a retry in 5 s, within the retry budget). Any language
    /// with an HTTP server can be a worker this way.
    pub fn webhook(self, name: &str, url: &str, client: reqwest::Client) -> Self {
        /// The call, arguments as written.
        #[derive(serde::Serialize)]
        struct Call<'a> {
            task: &'a str,
            args: &'a RawJson,
            kwargs: &'a RawJson,
        }
        /// The answer; its result as written.
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            result: Option<RawJson>,
        }
        let (task, url) = (name.to_owned(), url.to_owned());
        self.task_raw(name, move |args, kwargs| {
            let (client, task, url) = (client.clone(), task.clone(), url.clone());
            async move {
                let body = Call {
                    task: &task,
                    args: &args,
                    kwargs: &kwargs,
                };
                let response = client.post(&url).json(&body).send().await.map_err(|e| {
                    TaskError::retry(
                        "WebhookUnreachable",
                        format!("{url}: {e}"),
                        Duration::from_secs(5),
                    )
                })?;
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if status.is_success() {
                    let answer: Answer = serde_json::from_str(&text).map_err(|e| {
                        TaskError::new(
                            "WebhookError",
                            format!(
                                "{url} answered other than a JSON object {{\"result\": …}}: {e}"
                            ),
                        )
                    })?;
                    return Ok(answer.result.unwrap_or_else(RawJson::null));
                }
                let message = format!(
                    "{url} answered {status}: {}",
                    text.chars().take(500).collect::<String>()
                );
                if status.as_u16() == 503 || status.as_u16() == 429 {
                    Err(TaskError::retry(
                        "WebhookUnavailable",
                        message,
                        Duration::from_secs(5),
                    ))
                } else {
                    Err(TaskError::new("WebhookError", message))
                }
            }
        })
    }
}

/// Retries a task gets by default (Celery's `max_retries`).
pub const DEFAULT_MAX_RETRIES: u32 = 3;

type BoxedHandler = Arc<
    dyn Fn(RawJson, RawJson) -> Pin<Box<dyn Future<Output = Result<RawJson, TaskError>> + Send>>
        + Send
        + Sync,
>;

/// The label metrics use for task names no handler serves: a client may send any name, and
/// each name would otherwise be a new time series.
pub const UNREGISTERED_LABEL: &str = "(unregistered)";

/// A worker: handlers by task name, the queues it consumes, how many tasks run at once.
#[derive(Clone)]
pub struct Worker {
    broker: Broker,
    queues: Vec<String>,
    concurrency: usize,
    handlers: HashMap<String, BoxedHandler>,
    /// This worker's identity in leases.
    id: String,
    /// How long a lease lasts without renewal.
    lease: Duration,
    /// Delivery tags of the messages in hand.
    in_hand: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Retries a task gets before it goes to the dead letters.
    max_retries: u32,
    /// Prometheus instruments, when registered.
    metrics: Option<Metrics>,
    /// This worker's Celery events (worker heartbeats always; task events when on).
    events: Arc<crate::events::Events>,
    /// Whether task events are sent (Celery's `-E`).
    task_events: bool,
    /// Tasks finished, for the heartbeat's `processed`.
    processed: Arc<std::sync::atomic::AtomicU64>,
    /// The running tasks' terminate switches, by task id (a `revoke` with `terminate`).
    running: Arc<std::sync::Mutex<HashMap<String, CancellationToken>>>,
    /// Consumers cut off from the broker, by index, with the error: for readiness.
    cut_off: Arc<std::sync::Mutex<HashMap<usize, String>>>,
}

/// What a running handler may know about its task: [`context`] returns it inside a handler.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task id.
    pub id: String,
    /// How many times it was retried before this run.
    pub retries: u32,
    /// The message's headers beyond Celery's (those given at submission, `traceparent`, …).
    pub headers: serde_json::Map<String, Value>,
    /// Cancelled when the task's soft time limit passes: a handler that selects on it can
    /// stop cleanly (and fail with `SoftTimeLimitExceeded`, as Celery's tasks do) before the
    /// hard limit drops it.
    pub soft_limit: CancellationToken,
}

tokio::task_local! {
    static CONTEXT: TaskContext;
}

/// The running task's context, inside a handler (None elsewhere).
pub fn context() -> Option<TaskContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

/// `text` as a value for a handler that takes values, or the `ValueError` naming why not.
fn readable(what: &str, text: &RawJson) -> Result<Value, TaskError> {
    crate::celery::read_value(text.text()).map_err(|e| {
        TaskError::new(
            "ValueError",
            format!("the task's {what} cannot be read: {e}"),
        )
    })
}

/// When the gateway published a task, if it did (ms since the epoch).
fn sent_at(message: &TaskMessage) -> Option<u64> {
    message
        .headers
        .extra
        .get(SENT_AT_HEADER)
        .and_then(Value::as_u64)
}

fn fields(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// An exception record as Python's repr writes it, e.g. `ValueError('boom')`.
fn describe(error: &Value) -> String {
    format!(
        "{}('{}')",
        error["exc_type"].as_str().unwrap_or("Exception"),
        error["exc_message"][0].as_str().unwrap_or("")
    )
}

/// The worker's Prometheus instruments.
#[derive(Clone)]
struct Metrics {
    finished: prometheus::IntCounterVec,
    run_seconds: prometheus::HistogramVec,
    wait_seconds: prometheus::HistogramVec,
    latency_seconds: prometheus::HistogramVec,
    depth: prometheus::IntGaugeVec,
}

/// How long a task runs before it is recorded STARTED.
pub const STARTED_AFTER: Duration = Duration::from_millis(100);

/// The header carrying a task's own retry budget, set at submission.
pub const MAX_RETRIES_HEADER: &str = "quartet_max_retries";

/// The header carrying when the gateway published a task (ms since the epoch), for the
/// submit-to-start latency.
pub const SENT_AT_HEADER: &str = "quartet_sent_at";

/// How long a lease lasts by default: a dead worker's tasks return within about this long.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queues", &self.queues)
            .field("tasks", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker on `queues` running up to `concurrency` tasks at once.
    pub fn new(broker: Broker, queues: &[&str], concurrency: usize) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let nonce = crate::celery::uuid4();
        let id = format!(
            "quartet-worker-{}@{host}-{}",
            std::process::id(),
            &nonce[..8]
        );
        Self {
            concurrency: concurrency.max(1),
            handlers: HashMap::new(),
            lease: DEFAULT_LEASE,
            in_hand: Arc::default(),
            max_retries: DEFAULT_MAX_RETRIES,
            metrics: None,
            events: Arc::new(crate::events::Events::new(broker.clone(), &id)),
            task_events: false,
            processed: Arc::default(),
            running: Arc::default(),
            cut_off: Arc::default(),
            broker,
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            id,
        }
    }

    /// Sends Celery's task events (`task-received`, `-started`, `-succeeded`, `-failed`,
    /// `-retried`, `-revoked`), as Celery's `-E` does; worker heartbeats are sent either way.
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = on;
        self
    }

    async fn emit(&self, events: &[(&str, serde_json::Map<String, Value>)]) {
        if let Err(e) = self.events.send(events).await {
            tracing::debug!(error = %e, "could not send events");
        }
    }

    /// Says the worker is online, then every [`crate::events::HEARTBEAT_SECONDS`] that it is
    /// alive, until `stop`; then that it went offline.
    async fn announce(&self, stop: CancellationToken) {
        let state = |worker: &Self| {
            crate::events::worker_fields(
                worker
                    .in_hand
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len(),
                worker.processed.load(std::sync::atomic::Ordering::Relaxed),
            )
        };
        self.emit(&[("worker-online", state(self))]).await;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs_f64(crate::events::HEARTBEAT_SECONDS)) => {}
            }
            self.emit(&[("worker-heartbeat", state(self))]).await;
        }
        self.emit(&[("worker-offline", state(self))]).await;
    }

    /// Honours `revoke` broadcasts (from the gateway or from Celery's `app.control.revoke`):
    /// the task is marked revoked for every worker, and stopped here if it runs here and the
    /// revoke says `terminate`.
    async fn follow_revocations(&self, stop: CancellationToken) {
        let (broker, running) = (self.broker.clone(), self.running.clone());
        self.broker
            .follow_revocations(stop, move |id, terminate| {
                let broker = broker.clone();
                let marker = id.clone();
                tokio::spawn(async move {
                    if let Err(e) = broker.revoke(&marker).await {
                        tracing::warn!(id = %marker, error = %e, "could not record a broadcast revoke");
                    }
                });
                if terminate
                    && let Some(switch) = running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&id)
                {
                    switch.cancel();
                }
            })
            .await;
    }

    /// Records metrics in `registry`: tasks finished by task and state, run time, wait from
    /// submission to start (for tasks the gateway published), and queue depth by priority
    /// bucket (sampled by the heartbeat).
    pub fn metrics(mut self, registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
        let finished = IntCounterVec::new(
            Opts::new(
                "quartet_tasks_total",
                "Tasks finished by this worker, by task and final state (SUCCESS, FAILURE, RETRY, REVOKED)",
            ),
            &["task", "state"],
        )?;
        let run_seconds = HistogramVec::new(
            HistogramOpts::new("quartet_task_run_seconds", "Time a task's handler ran"),
            &["task"],
        )?;
        let wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "quartet_task_wait_seconds",
                "Time from submission to start, for tasks the gateway published",
            ),
            &["task"],
        )?;
        let latency_seconds = HistogramVec::new(
            HistogramOpts::new(
                "quartet_task_latency_seconds",
                "Time from submission to the final state, for tasks the gateway published",
            ),
            &["task"],
        )?;
        let depth = IntGaugeVec::new(
            Opts::new(
                "quartet_queue_depth",
                "Messages waiting in a queue, by priority bucket",
            ),
            &["queue", "bucket"],
        )?;
        registry.register(Box::new(finished.clone()))?;
        registry.register(Box::new(run_seconds.clone()))?;
        registry.register(Box::new(wait_seconds.clone()))?;
        registry.register(Box::new(latency_seconds.clone()))?;
        registry.register(Box::new(depth.clone()))?;
        self.metrics = Some(Metrics {
            finished,
            run_seconds,
            wait_seconds,
            latency_seconds,
            depth,
        });
        Ok(self)
    }

    fn count(&self, task: &str, state: State) {
        if let Some(m) = &self.metrics {
            m.finished
                .with_label_values(&[self.label(task), state.as_str()])
                .inc();
        }
    }

    /// Sets how many retries a task gets before it goes to the dead letters.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Sets the lease length (at least one second).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// This worker's identity.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Registers `handler` for task `name`: it gets the positional arguments (a JSON array)
    /// and the keyword arguments (a JSON object) and returns the result or a [`TaskError`].
    /// Arguments holding an integer beyond 64 bits fail the task with `ValueError` rather than
    /// reach the handler rounded; [`Worker::task_raw`] takes them as written.
    pub fn task<F, Fut>(self, name: &str, handler: F) -> Self
    where
        F: Fn(Value, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.task_raw(name, move |args, kwargs| {
            let handler = handler.clone();
            async move {
                let args = readable("args", &args)?;
                let kwargs = readable("kwargs", &kwargs)?;
                handler(args, kwargs).await.map(RawJson::from)
            }
        })
    }

    /// Registers `handler` for task `name` taking and returning JSON text as written: the
    /// form for handlers that pass values on, or need integers beyond 64 bits exactly. The
    /// worker has checked the text is readable ([`crate::celery::check_json`]); the result
    /// must be too, or the task fails with `ValueError`.
    pub fn task_raw<F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(RawJson, RawJson) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<RawJson, TaskError>> + Send + 'static,
    {
        self.handlers.insert(
            name.to_owned(),
            Arc::new(move |args, kwargs| Box::pin(handler(args, kwargs))),
        );
        self
    }

    /// The metric label for task `name`: itself when served here, [`UNREGISTERED_LABEL`]
    /// otherwise.
    fn label<'a>(&self, name: &'a str) -> &'a str {
        if self.handlers.contains_key(name) {
            name
        } else {
            UNREGISTERED_LABEL
        }
    }

    /// The task names it serves.
    pub fn tasks(&self) -> Vec<String> {
        let mut names: Vec<String> = self.handlers.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether every consumer is connected to the broker; otherwise how many are not and
    /// why (they keep reconnecting): the gateway's `/readyz` reports it, so a consumer cut off
    /// from Redis is never a silent stall.
    pub fn connected(&self) -> Result<(), String> {
        let cut_off = self.cut_off.lock().unwrap_or_else(|p| p.into_inner());
        match cut_off.values().next() {
            None => Ok(()),
            Some(error) => Err(format!(
                "{} of {} consumers lost the broker and are reconnecting: {error}",
                cut_off.len(),
                self.concurrency
            )),
        }
    }

    fn mark(&self, consumer: usize, error: Option<String>) {
        let mut cut_off = self.cut_off.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(e) => {
                cut_off.insert(consumer, e);
            }
            None => {
                cut_off.remove(&consumer);
            }
        }
    }

    /// Consumes until `stop` is cancelled, then lets the tasks in hand finish.
    pub async fn run(self, stop: CancellationToken) {
        let mut consumers = Vec::new();
        for index in 0..self.concurrency {
            let worker = self.clone();
            let stop = stop.clone();
            consumers.push(tokio::spawn(
                async move { worker.consume(index, stop).await },
            ));
        }
        tokio::spawn(self.broker.clone().housekeeping(stop.clone()));
        let announcer = {
            let (worker, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move { worker.announce(stop).await })
        };
        let follower = {
            let (worker, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move { worker.follow_revocations(stop).await })
        };
        let leases = CancellationToken::new();
        let keeper = {
            let worker = self.clone();
            let leases = leases.clone();
            tokio::spawn(async move { worker.keep_leases(leases).await })
        };
        for consumer in consumers {
            let _ = consumer.await;
        }
        // Renewal goes on until the last task in hand is done.
        leases.cancel();
        let _ = keeper.await;
        let _ = follower.await;
        let _ = announcer.await;
    }

    /// The heartbeat: renews the leases of the messages in hand (putting back expired leases
    /// and releasing due delayed tasks is [`Broker::housekeeping`]'s).
    async fn keep_leases(&self, stop: CancellationToken) {
        let mut consumer: Option<Consumer> = None;
        let beat = self.lease / 3;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(beat) => {}
            }
            let tags: Vec<String> = self
                .in_hand
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            if let Some(m) = &self.metrics {
                for queue in &self.queues {
                    if let Ok(depths) = self.broker.depth(queue).await {
                        for (bucket, n) in depths {
                            m.depth
                                .with_label_values(&[queue, &bucket.to_string()])
                                .set(n as i64);
                        }
                    }
                }
            }
            if consumer.is_none() {
                consumer = self.broker.consumer().await.ok();
            }
            if let Some(conn) = consumer.as_mut()
                && !tags.is_empty()
            {
                match conn.renew(&tags, self.lease).await {
                    Ok(lost) => {
                        for tag in lost {
                            tracing::warn!(delivery_tag = %tag, "lease lost (this worker stalled past it): the task may run twice");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew leases");
                        consumer = None;
                    }
                }
            }
        }
    }

    async fn consume(&self, index: usize, stop: CancellationToken) {
        let queues: Vec<&str> = self.queues.iter().map(String::as_str).collect();
        let mut consumer: Option<Consumer> = None;
        while !stop.is_cancelled() {
            let conn = match &mut consumer {
                Some(c) => c,
                None => match self.broker.consumer().await {
                    Ok(c) => consumer.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach the broker; retrying");
                        self.mark(index, Some(e.to_string()));
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            let fetched = tokio::select! {
                () = stop.cancelled() => return,
                fetched = conn.fetch(&queues, Duration::from_secs(1), Some((&self.id, self.lease))) => fetched,
            };
            if fetched.is_ok() {
                self.mark(index, None);
            }
            match fetched {
                Ok(None) => {}
                Ok(Some(delivery)) => {
                    if let Err(e) = self.handle(conn, delivery, &stop).await {
                        tracing::warn!(error = %e, "a delivery could not be completed; it stays unacked for redelivery");
                        consumer = None;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the broker connection; reconnecting");
                    self.mark(index, Some(e.to_string()));
                    consumer = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn handle(
        &self,
        conn: &mut Consumer,
        delivery: Delivery,
        stop: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let message = match delivery.message {
            Ok(message) => message,
            Err(reason) => {
                self.quarantine(&delivery.list, &delivery.raw, &reason.to_string(), stop)
                    .await;
                return Ok(());
            }
        };
        let tag = message.properties.delivery_tag.clone();
        self.in_hand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tag.clone());
        let done = self.finish(conn, message, delivery.revoked).await;
        self.in_hand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tag);
        done
    }

    /// Moves a popped element that is not a usable message to the quarantine list. It exists
    /// nowhere else once popped, so the push is retried (backing off to 5 s) until it succeeds;
    /// only a stop while the broker stays unreachable ends the tries, and then the element is
    /// logged whole (base64) at error level rather than lost without a trace.
    async fn quarantine(&self, list: &str, raw: &[u8], reason: &str, stop: &CancellationToken) {
        tracing::warn!(%list, %reason, "quarantined an unusable message");
        let mut pause = Duration::from_millis(100);
        loop {
            match self.broker.quarantine(list, raw, reason).await {
                Ok(()) => return,
                Err(e) if stop.is_cancelled() => {
                    use base64::Engine as _;
                    tracing::error!(%list, %reason, error = %e, message_base64 = %base64::engine::general_purpose::STANDARD.encode(raw), "stopping before an unusable message could be quarantined: it is in this log only");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%list, error = %e, "could not quarantine an unusable message yet; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs a taken message to its end; `revoked` says whether it was revoked before it was
    /// taken.
    async fn finish(
        &self,
        conn: &mut Consumer,
        message: TaskMessage,
        revoked: bool,
    ) -> Result<(), BrokerError> {
        let id = message.headers.id.clone();
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        // Not due yet (a Celery client's countdown): back to Redis until it is, not held here.
        if let Some(due) = message
            .headers
            .eta
            .as_deref()
            .and_then(crate::broker::iso_millis)
            && due > now + 50
        {
            self.broker.delay(&message, due).await?;
            return conn.ack(&message.properties.delivery_tag).await;
        }
        let expired = message
            .headers
            .expires
            .as_deref()
            .and_then(crate::broker::iso_millis)
            .is_some_and(|at| at <= now);
        if expired || revoked {
            let why = if expired { "expired" } else { "revoked" };
            tracing::info!(task = %message.headers.task, id = %id, why, "task not run");
            let meta = ResultMeta::finished(
                &id,
                State::Revoked,
                exception("TaskRevokedError", why, "celery.exceptions"),
                None,
            );
            self.settle(&message, meta).await?;
            return conn.ack(&message.properties.delivery_tag).await;
        }
        tracing::info!(task = %message.headers.task, id = %id, worker = %self.id, redelivered = message.properties.delivery_info.redelivered.unwrap_or(false), "task started");
        if self.task_events {
            let received = fields(serde_json::json!({
                "uuid": id,
                "name": message.headers.task,
                "args": message.headers.argsrepr.clone().unwrap_or_else(|| message.args.text().to_owned()),
                "kwargs": message.headers.kwargsrepr.clone().unwrap_or_else(|| message.kwargs.text().to_owned()),
                "root_id": message.headers.root_id,
                "parent_id": message.headers.parent_id,
                "retries": message.headers.retries,
                "eta": message.headers.eta,
                "expires": message.headers.expires,
            }));
            let started = fields(serde_json::json!({"uuid": id, "pid": std::process::id()}));
            self.emit(&[("task-received", received), ("task-started", started)])
                .await;
        }
        if let (Some(m), Some(sent)) = (&self.metrics, sent_at(&message)) {
            m.wait_seconds
                .with_label_values(&[self.label(&message.headers.task)])
                .observe(now.saturating_sub(sent) as f64 / 1000.0);
        }
        let started = std::time::Instant::now();
        // Arguments no reader can take fail the task with the reason, before any handler.
        let unreadable = [("args", &message.args), ("kwargs", &message.kwargs)]
            .into_iter()
            .find_map(|(what, text)| {
                crate::celery::check_json(text.text())
                    .err()
                    .map(|e| format!("the task's {what} cannot be read: {e}"))
            });
        if let Some(why) = unreadable {
            tracing::warn!(id = %id, reason = %why, "task refused");
            return self
                .failed(conn, &message, TaskError::new("ValueError", why))
                .await;
        }
        let meta = match self.handlers.get(&message.headers.task) {
            None => ResultMeta::finished(
                &id,
                State::Failure,
                exception("NotRegistered", &message.headers.task, "celery.exceptions"),
                Some(format!(
                    "NotRegistered: no task named {:?} on this worker (it serves {:?})",
                    message.headers.task,
                    self.tasks()
                )),
            ),
            Some(handler) => {
                let span = tracing::info_span!(
                    "task.run",
                    otel.name = %format!("task.run {}", message.headers.task),
                    otel.kind = "consumer",
                    task = %message.headers.task,
                    id = %id
                );
                // Continue the submitter's trace when the message carries `traceparent`.
                let carried: std::collections::HashMap<String, String> = message
                    .headers
                    .extra
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect();
                quartet_kit::telemetry::adopt_parent(
                    &span,
                    &quartet_kit::telemetry::MapView(&carried),
                );
                // Celery's `timelimit` header: [hard, soft] seconds. The soft limit reaches the
                // handler through its [`TaskContext`] (an async handler cannot be interrupted
                // at an arbitrary point the way Celery raises inside Python, so it is told);
                // the hard limit stops the handler (its future is dropped) and fails the task
                // with TimeLimitExceeded. A `revoke` with `terminate` stops it too.
                let context = TaskContext {
                    id: id.clone(),
                    retries: message.headers.retries,
                    headers: message.headers.extra.clone(),
                    soft_limit: CancellationToken::new(),
                };
                let (hard, soft) = message.headers.timelimit;
                let soft_timer = soft.filter(|s| *s > 0.0).map(|s| {
                    let (id, passed) = (id.clone(), context.soft_limit.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs_f64(s)).await;
                        tracing::warn!(id = %id, seconds = s, "soft time limit exceeded");
                        passed.cancel();
                    })
                });
                let terminate = CancellationToken::new();
                self.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), terminate.clone());
                let run = CONTEXT
                    .scope(
                        context,
                        handler(message.args.clone(), message.kwargs.clone()),
                    )
                    .instrument(span);
                let limited = async {
                    match hard.filter(|h| *h > 0.0) {
                        Some(limit) => tokio::time::timeout(Duration::from_secs_f64(limit), run)
                            .await
                            .unwrap_or_else(|_| {
                                Err(TaskError::new(
                                    "TimeLimitExceeded",
                                    format!("TimeLimitExceeded({limit})"),
                                ))
                            }),
                        None => run.await,
                    }
                };
                // A task still running after STARTED_AFTER is recorded STARTED (Celery's
                // `task_track_started`), which also tells Celery's workers, when they get a
                // revoke, that the task is running elsewhere and its state is not theirs to
                // write. Short tasks skip the round trip.
                let mark_started = async {
                    tokio::time::sleep(STARTED_AFTER).await;
                    if let Err(e) = self.broker.mark_started(&id, &self.id).await {
                        tracing::debug!(id = %id, error = %e, "could not record STARTED");
                    }
                    std::future::pending::<()>().await
                };
                let outcome = tokio::select! {
                    outcome = limited => Some(outcome),
                    () = terminate.cancelled() => None,
                    () = mark_started => None,
                };
                self.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(timer) = soft_timer {
                    timer.abort();
                }
                match outcome {
                    None => {
                        tracing::info!(id = %id, "task terminated by a revoke");
                        ResultMeta::finished(
                            &id,
                            State::Revoked,
                            exception("TaskRevokedError", "terminated", "celery.exceptions"),
                            None,
                        )
                    }
                    Some(Ok(value)) => {
                        if let Err(e) = crate::celery::check_json(value.text()) {
                            return self
                                .failed(
                                    conn,
                                    &message,
                                    TaskError::new(
                                        "ValueError",
                                        format!("the task's result cannot be stored: {e}"),
                                    ),
                                )
                                .await;
                        }
                        ResultMeta::finished(&id, State::Success, value, None)
                    }
                    Some(Err(e)) => {
                        if let Some(m) = &self.metrics {
                            m.run_seconds
                                .with_label_values(&[self.label(&message.headers.task)])
                                .observe(started.elapsed().as_secs_f64());
                        }
                        return self.failed(conn, &message, e).await;
                    }
                }
            }
        };
        if let Some(m) = &self.metrics
            && meta.status == State::Success
        {
            m.run_seconds
                .with_label_values(&[self.label(&message.headers.task)])
                .observe(started.elapsed().as_secs_f64());
        }
        self.settle(&message, meta).await?;
        // Acks-late: only now does the message leave `unacked`.
        conn.ack(&message.properties.delivery_tag).await
    }

    /// A task reached its final state: count it, store its record (unless it ignores
    /// results), count it as a chord part when it is one, and on success publish its chain's
    /// next step. Runs before the acknowledgement, so a worker dying in between leaves the
    /// message for redelivery and each of these steps is repeated, never skipped.
    async fn settle(&self, message: &TaskMessage, meta: ResultMeta) -> Result<(), BrokerError> {
        self.count(&message.headers.task, meta.status);
        if let (Some(m), Some(sent)) = (&self.metrics, sent_at(message)) {
            let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
            m.latency_seconds
                .with_label_values(&[self.label(&message.headers.task)])
                .observe(now.saturating_sub(sent) as f64 / 1000.0);
        }
        self.processed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.task_events {
            let id = &message.headers.id;
            let event = match meta.status {
                State::Success => Some((
                    "task-succeeded",
                    serde_json::json!({"uuid": id, "result": meta.result.text()}),
                )),
                State::Failure => Some((
                    "task-failed",
                    serde_json::json!({"uuid": id, "exception": describe(&meta.result.value()), "traceback": meta.traceback}),
                )),
                State::Revoked => {
                    let why = meta.result.value()["exc_message"][0].clone();
                    Some((
                        "task-revoked",
                        serde_json::json!({"uuid": id, "terminated": why == "terminated", "signum": null, "expired": why == "expired"}),
                    ))
                }
                _ => None,
            };
            if let Some((kind, body)) = event {
                self.emit(&[(kind, fields(body))]).await;
            }
        }
        if !message.headers.ignore_result {
            self.broker.store_result(&meta).await?;
        }
        if let (Some(group), Some(body)) = (&message.headers.group, &message.embed.chord) {
            self.chord_part(message, group, body, &meta).await?;
        }
        if meta.status == State::Success {
            self.continue_chain(message, &meta.result).await?;
        }
        Ok(())
    }

    /// Counts a finished chord part with Celery's Redis scheme; the part that completes the
    /// chord publishes the body with the header's results, or, when a part failed, records
    /// the body as failed with Celery's `ChordError`.
    async fn chord_part(
        &self,
        message: &TaskMessage,
        group: &str,
        body: &Value,
        meta: &ResultMeta,
    ) -> Result<(), BrokerError> {
        let Some(parts) = self
            .broker
            .chord_part(
                group,
                &message.headers.id,
                message.headers.group_index,
                meta.status,
                &meta.result,
            )
            .await?
        else {
            return Ok(());
        };
        let queue = &message.properties.delivery_info.routing_key;
        match crate::canvas::chord_results(&parts) {
            Ok(results) => match chain_step(body, &results, queue) {
                Some(mut next) => {
                    next.headers.root_id = message.headers.root_id.clone();
                    next.headers.parent_id = Some(message.headers.id.clone());
                    self.broker.publish(&next).await?;
                    tracing::info!(group = %group, body = %next.headers.id, "chord complete: body published");
                }
                None => {
                    tracing::warn!(group = %group, body = %body, "a chord body is not a task signature; it does not run");
                }
            },
            Err(crate::canvas::ChordError(why)) => {
                if let Some(body_id) = body["options"]["task_id"].as_str() {
                    let failed = ResultMeta::finished(
                        body_id,
                        State::Failure,
                        exception("ChordError", &why, "celery.exceptions"),
                        Some(format!("celery.exceptions.ChordError: {why}")),
                    );
                    self.broker.store_result(&failed).await?;
                }
                tracing::warn!(group = %group, reason = %why, "chord failed: its body does not run");
            }
        }
        self.broker.finish_chord(group).await
    }

    /// Publishes a chain's next step (the last signature of `embed.chain`, Celery keeping the
    /// remaining steps in reverse order) with this task's result as its first argument unless
    /// the step is immutable, on the step's queue or this one's: so chains run across our
    /// workers and Celery's alike.
    async fn continue_chain(
        &self,
        message: &TaskMessage,
        result: &RawJson,
    ) -> Result<(), BrokerError> {
        let Some(mut remaining) = message.embed.chain.clone() else {
            return Ok(());
        };
        let Some(step) = remaining.pop() else {
            return Ok(());
        };
        let Some(next) = chain_step(&step, result, &message.properties.delivery_info.routing_key)
        else {
            tracing::warn!(id = %message.headers.id, step = %step, "a chain step is not a task signature; the chain stops here");
            return Ok(());
        };
        let mut next = next;
        next.embed.chain = Some(remaining);
        next.headers.root_id = message.headers.root_id.clone();
        next.headers.parent_id = Some(message.headers.id.clone());
        self.broker.publish(&next).await
    }

    /// A handler failed: retry it later (a new message, the same task id, one more retry,
    /// an ETA; RETRY recorded as Celery does), or, with the retry budget spent, record FAILURE
    /// and put the message on the queue's dead letters with the reason.
    async fn failed(
        &self,
        conn: &mut Consumer,
        message: &TaskMessage,
        error: TaskError,
    ) -> Result<(), BrokerError> {
        let id = &message.headers.id;
        let cause = exception(&error.kind, &error.message, "builtins");
        let traceback = format!("{}: {}", error.kind, error.message);
        let budget = message
            .headers
            .extra
            .get(MAX_RETRIES_HEADER)
            .and_then(Value::as_u64)
            .map_or(self.max_retries, |b| b.min(100) as u32);
        match error.retry {
            Some(countdown) if message.headers.retries < budget => {
                let mut again = message.clone();
                again.headers.retries += 1;
                again.headers.eta = Some(
                    (chrono::Utc::now()
                        + chrono::Duration::milliseconds(countdown.as_millis() as i64))
                    .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                    .to_string(),
                );
                again.headers.parent_id = Some(id.clone());
                again.properties.delivery_tag = crate::celery::uuid4();
                again.properties.delivery_info.redelivered = None;
                self.broker.publish(&again).await?;
                let mut meta = ResultMeta::finished(id, State::Retry, cause, Some(traceback));
                meta.date_done = None;
                meta.children = vec![serde_json::json!([[id, null], null])];
                self.broker.store_result(&meta).await?;
                self.count(&message.headers.task, State::Retry);
                if self.task_events {
                    let body = serde_json::json!({"uuid": id, "exception": format!("{}('{}')", error.kind, error.message), "traceback": format!("{}: {}", error.kind, error.message)});
                    self.emit(&[("task-retried", fields(body))]).await;
                }
                tracing::info!(id = %id, retries = again.headers.retries, "task will be retried");
            }
            retry => {
                if retry.is_some() {
                    let record = serde_json::json!({
                        "reason": format!("retry budget of {budget} spent"),
                        "error": traceback,
                        "at": crate::celery::iso_now(),
                        "message": message.encode(),
                    });
                    self.broker
                        .push(
                            &dead_letters(&message.properties.delivery_info.routing_key),
                            &record.to_string(),
                        )
                        .await?;
                    tracing::warn!(id = %id, "retry budget spent: task moved to the dead letters");
                }
                let meta = ResultMeta::finished(id, State::Failure, cause, Some(traceback));
                self.settle(message, meta).await?;
            }
        }
        conn.ack(&message.properties.delivery_tag).await
    }
}
