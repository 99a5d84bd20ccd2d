//! Celery's Redis layout, spoken directly: publishing onto priority lists, taking messages with
//! the `unacked` bookkeeping kombu's consumers keep, acknowledging, and Celery's result records
//! (`SETEX` + `PUBLISH` on `celery-task-meta-<id>`), so real Celery clients and workers share
//! queues and results with the gateway (see [`crate::celery`] for the message format).
//!
//! Blocking reads (`BRPOP`) run on a connection of their own: a multiplexed connection would
//! queue every other command behind them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;

use crate::celery::{
    PRIORITY_SEP, ProtocolError, ResultMeta, TaskMessage, consume_order, result_key,
};

/// Leases of messages our workers hold: delivery tag → expiry (ms since the epoch).
pub const LEASES: &str = "quartet.leases";
/// Which worker holds each lease: delivery tag → worker identity.
pub const LEASE_OWNERS: &str = "quartet.lease_owners";

/// Puts an expired lease's message back, atomically and only if it is still unacknowledged
/// and the lease was not renewed meanwhile. KEYS: unacked, unacked_index, leases, owners, the
/// queue list. ARGV: tag, the message marked redelivered, now (ms).
const REDELIVER: &str = r"
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[3]) then return -1 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('RPUSH', KEYS[5], ARGV[2])
  return 1
end
return 0
";

/// Messages waiting for their ETA, kept in Redis rather than in a worker's memory: a JSON
/// `[list, envelope]` → due time (ms since the epoch).
pub const DELAYED: &str = "quartet.delayed";

/// Moves due delayed messages onto their lists. KEYS: the delayed set. ARGV: now (ms), limit.
const RELEASE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, item in ipairs(due) do
  if redis.call('ZREM', KEYS[1], item) == 1 then
    local parts = cjson.decode(item)
    redis.call('LPUSH', parts[1], parts[2])
  end
end
return #due
";

/// The marker of a revoked task (kept as long as results).
pub fn revoked_key(task_id: &str) -> String {
    format!("quartet-revoked-{task_id}")
}

/// Milliseconds since the epoch of an ISO-8601 time as Celery writes it.
pub fn iso_millis(iso: &str) -> Option<u64> {
    chrono::DateTime::parse_from_rfc3339(iso)
        .ok()
        .map(|t| t.timestamp_millis().max(0) as u64)
}

pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// How long Celery keeps results (`result_expires`, one day).
pub const RESULT_TTL: Duration = Duration::from_secs(86_400);

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A message or record did not decode.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The embedded broker's file failed.
    #[error("embedded broker: {0}")]
    Embedded(String),
    /// A result record that is not Celery's JSON.
    #[error("result record for {task_id} is not Celery's JSON: {reason}")]
    Result {
        /// The task.
        task_id: String,
        /// What is wrong.
        reason: String,
    },
}

/// What [`Broker::stats`] reports.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Messages waiting, all buckets.
    pub waiting: u64,
    /// Waiting per priority bucket (`0`, `3`, `6`, `9`).
    pub by_priority: std::collections::BTreeMap<String, u64>,
    /// Messages waiting for their ETA.
    pub delayed: u64,
    /// Messages taken by consumers and not yet acknowledged.
    pub in_flight: u64,
    /// Our workers holding leases on its messages.
    pub consumers: Vec<String>,
    /// Age of the next message to be taken, when the gateway published it.
    pub oldest_waiting_ms: Option<u64>,
    /// Messages in its dead letters.
    pub dead_letters: u64,
}

/// A message taken from a queue, recorded in `unacked` until acknowledged.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The list it came from.
    pub list: String,
    /// The list element's bytes, as popped (not necessarily UTF-8, nor JSON).
    pub raw: Vec<u8>,
    /// The decoded message, or why it is unusable.
    pub message: Result<TaskMessage, ProtocolError>,
    /// Whether the task was revoked before it was taken (read in the same round trip).
    pub revoked: bool,
}

/// A connection made on first use and made again after it breaks, so the gateway starts
/// (and says it is not ready) while Redis is down, and recovers when it returns.
pub(crate) struct Lazy {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Lazy {
    fn new(client: redis::Client) -> Self {
        Self {
            client,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) async fn get(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        let mut cached = self.conn.lock().await;
        if let Some(conn) = cached.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.client.get_multiplexed_async_connection().await?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets a connection that failed, so the next use connects again.
    pub(crate) async fn check<T>(&self, result: redis::RedisResult<T>) -> Result<T, BrokerError> {
        if let Err(e) = &result
            && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
        {
            *self.conn.lock().await = None;
        }
        result.map_err(BrokerError::from)
    }
}

/// The broker database (queues) and the result database of one Celery deployment.
#[derive(Clone)]
pub struct Broker {
    client: redis::Client,
    pub(crate) broker: std::sync::Arc<Lazy>,
    results: redis::Client,
    pub(crate) results_conn: std::sync::Arc<Lazy>,
    /// The embedded SQLite broker, when `broker_url` is `sqlite:<path>`: every operation goes
    /// to it instead of Redis (the Redis clients are then never connected).
    pub(crate) embedded: Option<crate::embedded::Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

impl Broker {
    /// The broker database at `broker_url` and the result database at `result_url`
    /// (Celery's `broker_url` and `result_backend`). Connects on first use; fails only on an
    /// invalid URL.
    ///
    /// `sqlite:<path>` as the broker URL selects the embedded broker in that file, which keeps
    /// results too (the result URL is then ignored).
    pub fn open(broker_url: &str, result_url: &str) -> Result<Self, BrokerError> {
        if let Some(path) = broker_url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            let embedded = std::sync::Arc::new(crate::embedded::Embedded::open(path)?);
            // Never connected: every operation checks `embedded` first.
            let unused = redis::Client::open("redis://127.0.0.1:1/0")?;
            return Ok(Self {
                broker: std::sync::Arc::new(Lazy::new(unused.clone())),
                results_conn: std::sync::Arc::new(Lazy::new(unused.clone())),
                client: unused.clone(),
                results: unused,
                embedded: Some(embedded),
            });
        }
        let client = redis::Client::open(broker_url)?;
        let results = redis::Client::open(result_url)?;
        Ok(Self {
            broker: std::sync::Arc::new(Lazy::new(client.clone())),
            results_conn: std::sync::Arc::new(Lazy::new(results.clone())),
            client,
            results,
            embedded: None,
        })
    }

    /// The broker database's number (kombu's PUB/SUB channels are prefixed with it).
    pub fn db(&self) -> i64 {
        self.client.get_connection_info().redis_settings().db()
    }

    /// A PUB/SUB connection to the broker database.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, BrokerError> {
        Ok(self.client.get_async_pubsub().await?)
    }

    /// Whether both databases answer, for readiness.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.ping();
        }
        for lazy in [&self.broker, &self.results_conn] {
            let mut conn = lazy.get().await?;
            let pong = redis::cmd("PING").query_async::<String>(&mut conn).await;
            lazy.check(pong).await?;
        }
        Ok(())
    }

    /// Publishes `message`: at once, or, when its ETA is in the future, into the delayed set
    /// from which it moves onto its list when due ([`Broker::release_due`]).
    pub async fn publish(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        match message.headers.eta.as_deref().and_then(iso_millis) {
            Some(due) if due > now_millis() => self.delay(message, due).await,
            _ => self.publish_now(message).await,
        }
    }

    /// Parks `message` until `due` (ms since the epoch).
    pub async fn delay(&self, message: &TaskMessage, due: u64) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.delay(message, due);
        }
        let item = serde_json::json!([message.list(), message.encode()]).to_string();
        let mut conn = self.broker.get().await?;
        let added = conn.zadd::<_, _, _, ()>(DELAYED, item, due).await;
        self.broker.check(added).await
    }

    /// Moves delayed messages whose time has come onto their lists; returns how many.
    pub async fn release_due(&self) -> Result<usize, BrokerError> {
        if let Some(embedded) = &self.embedded {
            // Delayed rows become ready by their due time; expired facts go meanwhile.
            return embedded.sweep().map(|()| 0);
        }
        let mut conn = self.broker.get().await?;
        let moved: redis::RedisResult<usize> = redis::Script::new(RELEASE_DUE)
            .key(DELAYED)
            .arg(now_millis())
            .arg(100)
            .invoke_async(&mut conn)
            .await;
        self.broker.check(moved).await
    }

    /// Until `stop`: every half second, releases due delayed tasks and returns expired
    /// leases. Safe to run in any number of processes (each step is atomic).
    pub async fn housekeeping(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if let Err(e) = self.release_due().await {
                tracing::debug!(error = %e, "could not release due delayed tasks");
            }
            if let Err(e) = self.redeliver_expired().await {
                tracing::debug!(error = %e, "could not check for expired leases");
            }
        }
    }

    /// Marks a task revoked: workers that take it store REVOKED instead of running it. The
    /// marker lives in the broker database, as long as results, so taking a message reads it
    /// in the same round trip.
    pub async fn revoke(&self, task_id: &str) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.remember(&revoked_key(task_id), "revoked", RESULT_TTL);
        }
        let mut conn = self.broker.get().await?;
        let set = conn
            .set_ex::<_, _, ()>(revoked_key(task_id), "revoked", RESULT_TTL.as_secs())
            .await;
        self.broker.check(set).await
    }

    /// Publishes `message` on its queue's list for its priority now, declaring the queue's
    /// binding the way kombu does.
    pub async fn publish_now(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.insert(message, 0);
        }
        let queue = &message.properties.delivery_info.routing_key;
        let binding = format!("{queue}{PRIORITY_SEP}{PRIORITY_SEP}{queue}");
        let mut conn = self.broker.get().await?;
        let pushed = redis::pipe()
            .atomic()
            .sadd(format!("_kombu.binding.{queue}"), &binding)
            .ignore()
            .lpush(message.list(), message.encode())
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        self.broker.check(pushed).await
    }

    /// Messages waiting in `queue`, per priority bucket (0, 3, 6, 9).
    pub async fn depth(&self, queue: &str) -> Result<Vec<(u8, u64)>, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.depth(queue);
        }
        let mut conn = self.broker.get().await?;
        let mut pipe = redis::pipe();
        for step in crate::celery::PRIORITY_STEPS {
            pipe.llen(crate::celery::queue_list(queue, u32::from(step)));
        }
        let lengths: redis::RedisResult<Vec<u64>> = pipe.query_async(&mut conn).await;
        let lengths = self.broker.check(lengths).await?;
        Ok(crate::celery::PRIORITY_STEPS
            .iter()
            .copied()
            .zip(lengths)
            .collect())
    }

    /// A queue's statistics: waiting messages per priority bucket, delayed ones, ones held by
    /// consumers (in `unacked`), the workers holding leases on it, the age of the oldest
    /// waiting message the gateway published, and dead letters.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.stats(queue);
        }
        let depth = self.depth(queue).await?;
        let mut conn = self.broker.get().await?;
        // The next message to be taken sits at the tail of the highest-priority bucket.
        let mut oldest_ms = None;
        for step in crate::celery::PRIORITY_STEPS {
            let tail: redis::RedisResult<Option<Vec<u8>>> = conn
                .lindex(crate::celery::queue_list(queue, u32::from(step)), -1)
                .await;
            if let Some(raw) = self.broker.check(tail).await? {
                oldest_ms = TaskMessage::decode(&raw)
                    .ok()
                    .and_then(|m| {
                        m.headers
                            .extra
                            .get(crate::worker::SENT_AT_HEADER)
                            .and_then(serde_json::Value::as_u64)
                    })
                    .map(|sent| now_millis().saturating_sub(sent));
                break;
            }
        }
        let delayed: redis::RedisResult<Vec<String>> = conn.zrange(DELAYED, 0, -1).await;
        let bucketed = format!("{queue}{PRIORITY_SEP}");
        let delayed = self
            .broker
            .check(delayed)
            .await?
            .iter()
            .filter(|item| {
                // `[list, envelope]`: the list is the queue or one of its buckets.
                serde_json::from_str::<(String, String)>(item)
                    .is_ok_and(|(list, _)| list == queue || list.starts_with(&bucketed))
            })
            .count() as u64;
        let unacked: redis::RedisResult<std::collections::HashMap<String, String>> =
            conn.hgetall("unacked").await;
        let owners: redis::RedisResult<std::collections::HashMap<String, String>> =
            conn.hgetall(LEASE_OWNERS).await;
        let owners = self.broker.check(owners).await?;
        let mut in_flight = 0;
        let mut consumers = std::collections::BTreeSet::new();
        for (tag, entry) in self.broker.check(unacked).await? {
            let routed = serde_json::from_str::<serde_json::Value>(&entry)
                .ok()
                .is_some_and(|e| e[2] == queue);
            if routed {
                in_flight += 1;
                if let Some(worker) = owners.get(&tag) {
                    consumers.insert(worker.clone());
                }
            }
        }
        let dead: redis::RedisResult<u64> = conn.llen(crate::worker::dead_letters(queue)).await;
        Ok(QueueStats {
            queue: queue.to_owned(),
            waiting: depth.iter().map(|(_, n)| n).sum(),
            by_priority: depth
                .into_iter()
                .map(|(bucket, n)| (bucket.to_string(), n))
                .collect(),
            delayed,
            in_flight,
            consumers: consumers.into_iter().collect(),
            oldest_waiting_ms: oldest_ms,
            dead_letters: self.broker.check(dead).await?,
        })
    }

    /// Pushes a record onto a list of the broker database (dead letters, quarantine).
    pub async fn push(&self, list: &str, record: &str) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.push(list, record);
        }
        let mut conn = self.broker.get().await?;
        let pushed = conn.lpush::<_, _, ()>(list, record).await;
        self.broker.check(pushed).await
    }

    /// Moves an unusable message to the quarantine list ([`crate::worker::QUARANTINE`]) with
    /// the list it came from and the reason ([`quarantine_record`]): never dropped silently.
    pub async fn quarantine(
        &self,
        list: &str,
        raw: &[u8],
        reason: &str,
    ) -> Result<(), BrokerError> {
        self.push(
            crate::worker::QUARANTINE,
            &quarantine_record(list, raw, reason),
        )
        .await
    }

    /// A connection for one consumer's blocking reads.
    pub async fn consumer(&self) -> Result<Consumer, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return Ok(Consumer::Embedded(embedded.clone()));
        }
        Ok(Consumer::Redis {
            // No client-side response timeout on the blocking connection: redis-rs's default
            // (500 ms) gives up on a BRPOP that Redis still serves, and the message Redis
            // then pops is written to a reader that has left: lost. BRPOP's own timeout bounds
            // the wait; the call adds a margin for a dead connection.
            conn: self
                .client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new().set_response_timeout(None),
                )
                .await?,
            broker: self.broker.get().await?,
        })
    }

    /// Puts back the messages whose lease expired (their worker died or stalls): at the
    /// consumer end of their list (taken next), marked redelivered, out of `unacked`. A message
    /// acknowledged or re-leased meanwhile is left alone. Returns how many went back.
    pub async fn redeliver_expired(&self) -> Result<usize, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.redeliver_expired();
        }
        let mut conn = self.broker.get().await?;
        let now = now_millis();
        let expired: redis::RedisResult<Vec<String>> = redis::cmd("ZRANGEBYSCORE")
            .arg(LEASES)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .query_async(&mut conn)
            .await;
        let script = redis::Script::new(REDELIVER);
        let mut moved = 0;
        for tag in self.broker.check(expired).await? {
            let entry: redis::RedisResult<Option<Vec<u8>>> = conn.hget("unacked", &tag).await;
            let Some(entry) = self.broker.check(entry).await? else {
                let _: redis::RedisResult<()> = redis::pipe()
                    .zrem(LEASES, &tag)
                    .hdel(LEASE_OWNERS, &tag)
                    .query_async(&mut conn)
                    .await;
                continue;
            };
            let Some((raw, list)) = redelivery(&entry) else {
                // Not kombu's entry around a usable message (only a hand-made one can be):
                // kept in quarantine rather than retried, and out of the way of the others.
                self.quarantine(
                    "unacked",
                    &entry,
                    "an unacknowledged entry that is not [envelope, exchange, routing_key] around a usable message",
                )
                .await?;
                let removed: redis::RedisResult<()> = redis::pipe()
                    .atomic()
                    .hdel("unacked", &tag)
                    .zrem("unacked_index", &tag)
                    .zrem(LEASES, &tag)
                    .hdel(LEASE_OWNERS, &tag)
                    .query_async(&mut conn)
                    .await;
                self.broker.check(removed).await?;
                continue;
            };
            let result: redis::RedisResult<i64> = script
                .key("unacked")
                .key("unacked_index")
                .key(LEASES)
                .key(LEASE_OWNERS)
                .key(&list)
                .arg(&tag)
                .arg(&raw)
                .arg(now)
                .invoke_async(&mut conn)
                .await;
            if self.broker.check(result).await? == 1 {
                tracing::warn!(delivery_tag = %tag, %list, "lease expired: message redelivered");
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Writes a result record and announces it to waiting clients, as Celery's backend does.
    pub async fn store_result(&self, meta: &ResultMeta) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.store_result(meta);
        }
        let key = result_key(&meta.task_id);
        let json = serde_json::to_string(meta).expect("result records serialize");
        let mut conn = self.results_conn.get().await?;
        let stored = redis::pipe()
            .atomic()
            .set_ex(&key, &json, RESULT_TTL.as_secs())
            .ignore()
            .publish(&key, &json)
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        self.results_conn.check(stored).await
    }

    /// Records a running task as STARTED, as Celery's `task_track_started` does (`result` =
    /// `{pid, hostname}`), unless it already has a record: never over a final one.
    pub async fn mark_started(&self, task_id: &str, worker: &str) -> Result<(), BrokerError> {
        let mut meta = ResultMeta::finished(
            task_id,
            crate::celery::State::Started,
            serde_json::json!({"pid": std::process::id(), "hostname": worker}),
            None,
        );
        meta.date_done = None;
        if let Some(embedded) = &self.embedded {
            return embedded.store_result_if_absent(&meta);
        }
        let json = serde_json::to_string(&meta).expect("result records serialize");
        let mut conn = self.results_conn.get().await?;
        let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(result_key(task_id))
            .arg(json)
            .arg("NX")
            .arg("EX")
            .arg(RESULT_TTL.as_secs())
            .query_async(&mut conn)
            .await;
        self.results_conn.check(set).await.map(drop)
    }

    /// Keeps a small fact about a task (e.g. its queue) next to its result, as long as results.
    pub async fn remember(&self, key: &str, value: &str) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.remember(key, value, RESULT_TTL);
        }
        let mut conn = self.results_conn.get().await?;
        let set = conn
            .set_ex::<_, _, ()>(key, value, RESULT_TTL.as_secs())
            .await;
        self.results_conn.check(set).await
    }

    /// Claims `key` for `value` for `ttl` unless someone holds it: returns the holder's value
    /// when it is taken (an idempotency key seen before), `None` when the claim is ours.
    pub async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.claim(key, value, ttl);
        }
        let mut conn = self.results_conn.get().await?;
        let claimed: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await;
        self.results_conn.check(claimed).await
    }

    /// A fact kept with [`Broker::remember`].
    pub async fn recall(&self, key: &str) -> Result<Option<String>, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.recall(key);
        }
        let mut conn = self.results_conn.get().await?;
        let got = conn.get(key).await;
        self.results_conn.check(got).await
    }

    /// The task's result record, if there is one.
    pub async fn result(&self, task_id: &str) -> Result<Option<ResultMeta>, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.result(task_id);
        }
        let mut conn = self.results_conn.get().await?;
        let got = conn.get(result_key(task_id)).await;
        let raw: Option<String> = self.results_conn.check(got).await?;
        read_record(task_id, raw)
    }

    /// Waits up to `timeout` for a finished (SUCCESS, FAILURE or REVOKED) result, listening
    /// for the record's announcement rather than polling.
    pub async fn wait_result(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultMeta>, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.wait_result(task_id, timeout).await;
        }
        let finished = is_final;
        let mut pubsub = self.results.get_async_pubsub().await?;
        pubsub.subscribe(result_key(task_id)).await?;
        // Subscribed first, then read: a record written in between is not missed.
        if let Some(meta) = self.result(task_id).await?
            && finished(&meta)
        {
            return Ok(Some(meta));
        }
        let mut messages = pubsub.on_message();
        let waited = tokio::time::timeout(timeout, async {
            while let Some(message) = messages.next().await {
                let Ok(raw) = message.get_payload::<String>() else {
                    continue;
                };
                match serde_json::from_str::<ResultMeta>(&raw) {
                    Ok(meta) if finished(&meta) => return Some(Ok(meta)),
                    Ok(_) => {}
                    Err(e) => {
                        return Some(Err(BrokerError::Result {
                            task_id: task_id.to_owned(),
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            None
        })
        .await;
        waited.ok().flatten().transpose()
    }
}

/// kombu's `unacked` entry `[envelope, exchange, routing_key]` as the envelope marked
/// redelivered and the list it goes back to, when it holds a usable message.
fn redelivery(entry: &[u8]) -> Option<(String, String)> {
    let entry: serde_json::Value = serde_json::from_slice(entry).ok()?;
    let mut envelope = entry.get(0)?.clone();
    if !envelope["properties"]["delivery_info"].is_object() {
        return None;
    }
    envelope["properties"]["delivery_info"]["redelivered"] = true.into();
    let raw = envelope.to_string();
    let list = TaskMessage::decode(raw.as_bytes()).ok()?.list();
    Some((raw, list))
}

/// A quarantine record: JSON `{list, reason, at, message}` with the element as text, or, when
/// its bytes are not UTF-8, `message_base64` instead of `message`, so every byte is kept.
pub fn quarantine_record(list: &str, raw: &[u8], reason: &str) -> String {
    let mut record = serde_json::json!({
        "list": list,
        "reason": reason,
        "at": crate::celery::iso_now(),
    });
    match std::str::from_utf8(raw) {
        Ok(text) => record["message"] = text.into(),
        Err(_) => {
            use base64::Engine as _;
            record["message_base64"] = base64::engine::general_purpose::STANDARD.encode(raw).into();
        }
    }
    record.to_string()
}

/// A stored result record, decoded.
pub(crate) fn read_record(
    task_id: &str,
    raw: Option<String>,
) -> Result<Option<ResultMeta>, BrokerError> {
    raw.map(|raw| {
        serde_json::from_str(&raw).map_err(|e| BrokerError::Result {
            task_id: task_id.to_owned(),
            reason: e.to_string(),
        })
    })
    .transpose()
}

/// Whether a record is final (SUCCESS, FAILURE or REVOKED), what waiting for a result awaits.
pub(crate) fn is_final(meta: &ResultMeta) -> bool {
    use crate::celery::State;
    matches!(
        meta.status,
        State::Success | State::Failure | State::Revoked
    )
}

/// One consumer: takes messages and acknowledges them.
pub enum Consumer {
    /// On Redis: a connection of its own for blocking reads, and the shared one.
    Redis {
        /// The blocking connection.
        conn: MultiplexedConnection,
        /// Bookkeeping.
        broker: MultiplexedConnection,
    },
    /// On the embedded broker.
    Embedded(crate::embedded::Shared),
}

impl Consumer {
    /// Takes the next message from `queues` (priority 0 first, then FIFO), waiting up to
    /// `timeout` (whole seconds, at least one), and records it in `unacked` as kombu does;
    /// with `lease`, also leases it to `worker` for that long (renew with [`Consumer::renew`]).
    pub async fn fetch(
        &mut self,
        queues: &[&str],
        timeout: Duration,
        lease: Option<(&str, Duration)>,
    ) -> Result<Option<Delivery>, BrokerError> {
        let (conn, broker) = match self {
            Consumer::Redis { conn, broker } => (conn, broker),
            Consumer::Embedded(embedded) => {
                // Every taken message is leased here: there is no one-hour visibility timeout
                // to fall back on.
                let (owner, lease) = lease.unwrap_or(("consumer", Duration::from_secs(3600)));
                return embedded.fetch(queues, timeout, owner, lease).await;
            }
        };
        let lists = consume_order(queues);
        let seconds = timeout.as_secs().max(1);
        // The element as bytes: a list may hold anything, and an element that is not UTF-8
        // must reach quarantine, not fail the read after Redis has popped it.
        let popped: Option<(String, Vec<u8>)> = tokio::time::timeout(
            Duration::from_secs(seconds + 10),
            redis::cmd("BRPOP")
                .arg(&lists)
                .arg(seconds)
                .query_async(conn),
        )
        .await
        .map_err(|_| {
            BrokerError::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "BRPOP outlived its own timeout by 10 s: the connection is dead",
            )))
        })??;
        let Some((list, raw)) = popped else {
            return Ok(None);
        };
        let message = TaskMessage::decode(&raw);
        let mut revoked = false;
        if let Ok(m) = &message {
            let envelope: serde_json::Value =
                serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
            let entry = serde_json::json!([
                envelope,
                m.properties.delivery_info.exchange,
                m.properties.delivery_info.routing_key
            ]);
            let tag = &m.properties.delivery_tag;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .zadd("unacked_index", tag, now_seconds())
                .ignore()
                .hset("unacked", tag, entry.to_string())
                .ignore();
            if let Some((worker, lease)) = lease {
                pipe.zadd(LEASES, tag, now_millis() + lease.as_millis() as u64)
                    .ignore()
                    .hset(LEASE_OWNERS, tag, worker)
                    .ignore();
            }
            pipe.exists(revoked_key(&m.headers.id));
            (revoked,) = pipe.query_async(broker).await?;
        }
        Ok(Some(Delivery {
            list,
            raw,
            message,
            revoked,
        }))
    }

    /// Extends the leases of `tags` by `lease` from now. Returns the tags whose lease was
    /// gone (expired and redelivered: the task may now run twice).
    pub async fn renew(
        &mut self,
        tags: &[String],
        lease: Duration,
    ) -> Result<Vec<String>, BrokerError> {
        let broker = match self {
            Consumer::Redis { broker, .. } => broker,
            Consumer::Embedded(embedded) => return embedded.renew(tags, lease),
        };
        let until = now_millis() + lease.as_millis() as u64;
        let mut lost = Vec::new();
        for tag in tags {
            let changed: i64 = redis::cmd("ZADD")
                .arg(LEASES)
                .arg("XX")
                .arg("CH")
                .arg(until)
                .arg(tag)
                .query_async(broker)
                .await?;
            if changed == 0 {
                // Unchanged: either gone, or renewed within the same millisecond.
                let held: Option<f64> = broker.zscore(LEASES, tag).await?;
                if held.is_none() {
                    lost.push(tag.clone());
                }
            }
        }
        Ok(lost)
    }

    /// Acknowledges a delivery: it leaves `unacked` (and its lease) for good.
    pub async fn ack(&mut self, delivery_tag: &str) -> Result<(), BrokerError> {
        let broker = match self {
            Consumer::Redis { broker, .. } => broker,
            Consumer::Embedded(embedded) => return embedded.ack(delivery_tag),
        };
        redis::pipe()
            .atomic()
            .zrem("unacked_index", delivery_tag)
            .ignore()
            .hdel("unacked", delivery_tag)
            .ignore()
            .zrem(LEASES, delivery_tag)
            .ignore()
            .hdel(LEASE_OWNERS, delivery_tag)
            .ignore()
            .query_async::<()>(broker)
            .await?;
        Ok(())
    }
}
