//! Periodic schedules: cron expressions and fixed intervals, kept in Redis, fired by exactly
//! one scheduler among the gateway's replicas.
//!
//! - A schedule's definition lives in the hash `quartet.schedules` (name → JSON), its next due
//!   time in the sorted set `quartet.schedule.due` (name → ms since the epoch), and what it did
//!   in `quartet.schedule.runs` (runs, missed slots, the last run's time and task id).
//! - Every replica runs a [`Scheduler`]; the one holding the lease `quartet.scheduler` (a
//!   `SET NX PX` renewed by its owner every tick) fires due schedules. A replica that dies
//!   stops renewing, and another takes over once the lease lapses.
//! - Firing is one Lua script that checks, atomically, that the caller still holds the lease
//!   and that the schedule's due time is still the one it read; then it pushes the message,
//!   moves the due time on and counts the run. So a slot fires once, even when an old leader
//!   wakes up from a pause believing it still leads (no duplicate across a failover), and a
//!   slot that fell due while no one led is fired by the next leader as soon as it takes over
//!   (no silent miss). Like Celery beat, several missed slots of one schedule fire once, and the
//!   number skipped is recorded in `missed`.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::broker::{Broker, BrokerError, now_millis};
use crate::celery::{RawJson, TaskMessage};

/// Schedule definitions: name → [`Schedule`] JSON.
pub const SCHEDULES: &str = "quartet.schedules";
/// Next due time of each schedule: name → ms since the epoch.
pub const DUE: &str = "quartet.schedule.due";
/// What each schedule did: name → [`Runs`] JSON.
pub const RUNS: &str = "quartet.schedule.runs";
/// The scheduler lease: the identity of the replica that fires schedules.
pub const LEASE: &str = "quartet.scheduler";

/// How long the scheduler lease lasts without renewal: a dead leader's successor takes over
/// within about this long.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the scheduler looks for due schedules and renews its lease.
pub const TICK: Duration = Duration::from_millis(250);

/// Takes or keeps the lease. KEYS: the lease. ARGV: identity, ttl (ms). 1 when held.
const HOLD: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// Gives the lease up if still held. KEYS: the lease. ARGV: identity.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Fires one due slot. KEYS: lease, due set, runs hash, the queue's list, the queue's binding
/// set. ARGV: identity, name, the due time read, the next due time, the message, slots
/// skipped, now (ISO), task id, binding member. -1: not the leader; 0: the slot is gone (fired
/// by someone else, or the schedule changed); 1: fired.
const FIRE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local due = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not due or tonumber(due) ~= tonumber(ARGV[3]) then return 0 end
redis.call('SADD', KEYS[5], ARGV[9])
redis.call('LPUSH', KEYS[4], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
local raw = redis.call('HGET', KEYS[3], ARGV[2])
local runs = raw and cjson.decode(raw) or {runs = 0, missed = 0}
runs.runs = runs.runs + 1
runs.missed = runs.missed + tonumber(ARGV[6])
runs.last_run_at = ARGV[7]
runs.last_task_id = ARGV[8]
redis.call('HSET', KEYS[3], ARGV[2], cjson.encode(runs))
return 1
";

/// A periodic task: what to run, where, and when (`cron` or `every`, exactly one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    /// The task name.
    pub task: String,
    /// Positional arguments (a JSON array).
    #[serde(default = "empty_array")]
    #[schema(value_type = Vec<Object>)]
    pub args: Value,
    /// Keyword arguments (a JSON object).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub kwargs: Value,
    /// The queue; the gateway's default when absent.
    #[serde(default)]
    pub queue: Option<String>,
    /// 0 (first) to 9 (last).
    #[serde(default)]
    pub priority: u32,
    /// A cron expression in UTC: minute hour day-of-month month day-of-week (`*/5 * * * *`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed interval in seconds (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<f64>,
    /// Each run expires (is recorded REVOKED instead of running) when not started within
    /// this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<f64>,
}

fn empty_array() -> Value {
    Value::Array(Vec::new())
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// What a schedule did so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Runs {
    /// Times it fired.
    pub runs: u64,
    /// Due slots skipped because no scheduler was leading when they fell due (each
    /// schedule's missed slots fire once, on takeover).
    pub missed: u64,
    /// When it last fired.
    #[serde(default)]
    pub last_run_at: Option<String>,
    /// The task its last firing published.
    #[serde(default)]
    pub last_task_id: Option<String>,
}

/// A schedule with its state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScheduleState {
    /// Its name.
    pub name: String,
    /// Its definition.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// When it fires next (ISO-8601 UTC).
    pub next_run_at: Option<String>,
    /// What it did.
    #[serde(flatten)]
    pub runs: Runs,
}

/// Why a schedule definition is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Schedule {
    /// Checks the definition; the error names what is wrong.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.task.trim().is_empty() {
            return Err(Invalid("task is required".into()));
        }
        if !self.args.is_array() {
            return Err(Invalid("args must be a JSON array".into()));
        }
        if !self.kwargs.is_object() {
            return Err(Invalid("kwargs must be a JSON object".into()));
        }
        // The same rule as for submissions: what a worker can read.
        for (what, value) in [("args", &self.args), ("kwargs", &self.kwargs)] {
            crate::celery::check_json(&value.to_string())
                .map_err(|e| Invalid(format!("{what}: {e}")))?;
        }
        match (&self.cron, self.every) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(Invalid("give exactly one of cron and every".into()));
            }
            (Some(expr), None) => {
                parse_cron(expr)?;
            }
            (None, Some(every)) => {
                if !(1.0..=31_536_000.0).contains(&every) {
                    return Err(Invalid(format!(
                        "every must be 1 to 31536000 seconds, not {every}"
                    )));
                }
            }
        }
        if let Some(expires) = self.expires
            && !(expires > 0.0 && expires <= 31_536_000.0)
        {
            return Err(Invalid(format!(
                "expires must be above 0 and at most 31536000 seconds, not {expires}"
            )));
        }
        Ok(())
    }

    /// The first due time after `after` (ms since the epoch).
    pub fn next_after(&self, after: u64) -> Option<u64> {
        match (&self.cron, self.every) {
            (_, Some(every)) => Some(after + (every * 1000.0) as u64),
            (Some(expr), None) => {
                let cron = parse_cron(expr).ok()?;
                let from = chrono::DateTime::from_timestamp_millis(after as i64)?;
                let next = cron.find_next_occurrence(&from, false).ok()?;
                Some(next.timestamp_millis().max(0) as u64)
            }
            (None, None) => None,
        }
    }

    /// For a slot due at `due` fired at `now`: the next due time after `now`, and how many
    /// slots between them were skipped.
    pub fn advance(&self, due: u64, now: u64) -> Option<(u64, u64)> {
        let mut next = self.next_after(due)?;
        let mut skipped = 0;
        if let Some(every) = self.every {
            let step = (every * 1000.0) as u64;
            if next <= now && step > 0 {
                skipped = (now - next) / step + 1;
                next += skipped * step;
            }
            return Some((next, skipped));
        }
        while next <= now {
            skipped += 1;
            next = self.next_after(next)?;
            if skipped > 100_000 {
                // Far behind (a schedule every minute, stopped for months): jump to now.
                next = self.next_after(now)?;
                break;
            }
        }
        Some((next, skipped))
    }
}

fn parse_cron(expr: &str) -> Result<croner::Cron, Invalid> {
    croner::Cron::from_str(expr)
        .map_err(|e| Invalid(format!("cron {expr:?} is not a cron expression: {e}")))
}

/// A valid schedule name: 1 to 200 letters, digits, `.`, `_`, `-` or `:`.
pub fn valid_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

fn iso(ms: u64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string())
}

impl Broker {
    /// Creates or replaces schedule `name` (its queue already resolved); it is next due at
    /// its first slot after now.
    pub async fn put_schedule(&self, name: &str, schedule: &Schedule) -> Result<(), BrokerError> {
        let first = schedule.next_after(now_millis()).unwrap_or(u64::MAX);
        if let Some(embedded) = &self.embedded {
            let definition = serde_json::to_string(schedule).expect("schedules serialize");
            return embedded.put_schedule(name, &definition, first);
        }
        let mut conn = self.broker.get().await?;
        let done = redis::pipe()
            .atomic()
            .hset(
                SCHEDULES,
                name,
                serde_json::to_string(schedule).expect("schedules serialize"),
            )
            .ignore()
            .zadd(DUE, name, first)
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        self.broker.check(done).await
    }

    /// Removes schedule `name`; whether it existed.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.delete_schedule(name);
        }
        let mut conn = self.broker.get().await?;
        let removed: redis::RedisResult<(u64, u64, u64)> = redis::pipe()
            .atomic()
            .hdel(SCHEDULES, name)
            .zrem(DUE, name)
            .hdel(RUNS, name)
            .query_async(&mut conn)
            .await;
        Ok(self.broker.check(removed).await?.0 == 1)
    }

    /// Every schedule with its state, by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleState>, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return Ok(embedded
                .schedules()?
                .into_iter()
                .filter_map(|(name, raw, due, runs)| {
                    Some(ScheduleState {
                        schedule: serde_json::from_str(&raw).ok()?,
                        next_run_at: iso(due),
                        runs: runs
                            .and_then(|r| serde_json::from_str(&r).ok())
                            .unwrap_or_default(),
                        name,
                    })
                })
                .collect());
        }
        let mut conn = self.broker.get().await?;
        // Definitions, due times, runs.
        type Read = (
            HashMap<String, String>,
            Vec<(String, f64)>,
            HashMap<String, String>,
        );
        let read: redis::RedisResult<Read> = redis::pipe()
            .hgetall(SCHEDULES)
            .cmd("ZRANGE")
            .arg(DUE)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .hgetall(RUNS)
            .query_async(&mut conn)
            .await;
        let (definitions, due, runs) = self.broker.check(read).await?;
        let due: HashMap<String, f64> = due.into_iter().collect();
        let mut states: Vec<ScheduleState> = definitions
            .into_iter()
            .filter_map(|(name, raw)| {
                let schedule: Schedule = serde_json::from_str(&raw).ok()?;
                Some(ScheduleState {
                    next_run_at: due.get(&name).and_then(|ms| iso(*ms as u64)),
                    runs: runs
                        .get(&name)
                        .and_then(|r| serde_json::from_str(r).ok())
                        .unwrap_or_default(),
                    name,
                    schedule,
                })
            })
            .collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(states)
    }

    /// The identity of the replica firing schedules, if one leads.
    pub async fn scheduler(&self) -> Result<Option<String>, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.recall(LEASE);
        }
        let mut conn = self.broker.get().await?;
        let got = redis::AsyncCommands::get(&mut conn, LEASE).await;
        self.broker.check(got).await
    }

    /// Takes or keeps the scheduler lease for `identity`; whether it holds it.
    pub async fn hold_scheduler(&self, identity: &str) -> Result<bool, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.hold(LEASE, identity, LEASE_TTL);
        }
        let mut conn = self.broker.get().await?;
        let held: redis::RedisResult<i64> = redis::Script::new(HOLD)
            .key(LEASE)
            .arg(identity)
            .arg(LEASE_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        Ok(self.broker.check(held).await? == 1)
    }

    /// Gives the scheduler lease up if `identity` holds it.
    pub async fn release_scheduler(&self, identity: &str) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.release(LEASE, identity);
        }
        let mut conn = self.broker.get().await?;
        let released: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(LEASE)
            .arg(identity)
            .invoke_async(&mut conn)
            .await;
        self.broker.check(released).await.map(drop)
    }

    /// Schedules due by `now` (at most 100): name, definition, the due time.
    pub async fn due_schedules(
        &self,
        now: u64,
    ) -> Result<Vec<(String, Schedule, u64)>, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return Ok(embedded
                .schedules()?
                .into_iter()
                .filter(|(_, _, due, _)| *due <= now)
                .take(100)
                .filter_map(|(name, raw, due, _)| {
                    Some((name, serde_json::from_str(&raw).ok()?, due))
                })
                .collect());
        }
        let mut conn = self.broker.get().await?;
        let due: redis::RedisResult<Vec<(String, f64)>> = redis::cmd("ZRANGE")
            .arg(DUE)
            .arg("-inf")
            .arg(now)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await;
        let mut found = Vec::new();
        for (name, at) in self.broker.check(due).await? {
            let raw: redis::RedisResult<Option<String>> =
                redis::AsyncCommands::hget(&mut conn, SCHEDULES, &name).await;
            if let Some(schedule) = self
                .broker
                .check(raw)
                .await?
                .and_then(|raw| serde_json::from_str::<Schedule>(&raw).ok())
            {
                found.push((name, schedule, at as u64));
            }
        }
        Ok(found)
    }

    /// Fires the slot of schedule `name` due at `at` with `message`, if `identity` still
    /// holds the lease and the slot is still due: -1 not the leader, 0 the slot is gone, 1
    /// fired (the due time moved to `next`, the run and `skipped` slots counted).
    pub async fn fire_schedule(
        &self,
        identity: &str,
        name: &str,
        (at, next, skipped): (u64, u64, u64),
        message: &TaskMessage,
    ) -> Result<i64, BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.fire(LEASE, identity, name, at, next, message, skipped);
        }
        let queue = &message.properties.delivery_info.routing_key;
        let mut conn = self.broker.get().await?;
        let outcome: redis::RedisResult<i64> = redis::Script::new(FIRE)
            .key(LEASE)
            .key(DUE)
            .key(RUNS)
            .key(message.list())
            .key(format!("_kombu.binding.{queue}"))
            .arg(identity)
            .arg(name)
            .arg(at)
            .arg(next)
            .arg(message.encode())
            .arg(skipped)
            .arg(crate::celery::iso_now())
            .arg(&message.headers.id)
            .arg(format!(
                "{queue}{sep}{sep}{queue}",
                sep = crate::celery::PRIORITY_SEP
            ))
            .invoke_async(&mut conn)
            .await;
        self.broker.check(outcome).await
    }
}

/// One replica's scheduler.
#[derive(Debug, Clone)]
pub struct Scheduler {
    broker: Broker,
    identity: String,
    default_queue: String,
}

impl Scheduler {
    /// A scheduler named `identity` (unique per replica).
    pub fn new(broker: Broker, identity: &str, default_queue: &str) -> Self {
        Self {
            broker,
            identity: identity.to_owned(),
            default_queue: default_queue.to_owned(),
        }
    }

    /// Until `stop`: every tick, takes or keeps the lease and, while holding it, fires due
    /// schedules. Gives the lease up on the way out, so a successor need not wait for it to
    /// lapse.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        let mut leading = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(TICK) => {}
            }
            match self.broker.hold_scheduler(&self.identity).await {
                Ok(true) => {
                    if !leading {
                        tracing::info!(scheduler = %self.identity, "this replica now fires the periodic schedules");
                        leading = true;
                    }
                    if let Err(e) = self.fire_due().await {
                        tracing::warn!(error = %e, "could not fire due schedules");
                    }
                }
                Ok(false) => {
                    if leading {
                        tracing::warn!(scheduler = %self.identity, "lost the scheduler lease");
                        leading = false;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not reach the broker for the scheduler lease");
                    leading = false;
                }
            }
        }
        if leading {
            let _ = self.broker.release_scheduler(&self.identity).await;
        }
    }

    /// Fires every schedule whose time has come; returns how many fired.
    pub async fn fire_due(&self) -> Result<usize, BrokerError> {
        let now = now_millis();
        let mut fired = 0;
        for (name, schedule, at) in self.broker.due_schedules(now).await? {
            let Some((next, skipped)) = schedule.advance(at, now) else {
                continue;
            };
            let message = self.message(&name, &schedule)?;
            self.broker
                .remember(
                    &format!("quartet-task-queue-{}", message.headers.id),
                    &message.properties.delivery_info.routing_key,
                )
                .await?;
            match self
                .broker
                .fire_schedule(&self.identity, &name, (at, next, skipped), &message)
                .await?
            {
                1 => {
                    fired += 1;
                    if skipped > 0 {
                        tracing::warn!(schedule = %name, skipped, "fired once for slots missed while no scheduler led");
                    }
                    tracing::info!(schedule = %name, task = %schedule.task, id = %message.headers.id, "schedule fired");
                }
                -1 => return Ok(fired),
                _ => {}
            }
        }
        Ok(fired)
    }

    fn message(&self, name: &str, schedule: &Schedule) -> Result<TaskMessage, BrokerError> {
        let bad = |what: &str, e: serde_json::Error| BrokerError::Result {
            task_id: name.to_owned(),
            reason: format!("schedule {what}: {e}"),
        };
        let queue = schedule.queue.as_deref().unwrap_or(&self.default_queue);
        let mut message = TaskMessage::new(
            &schedule.task,
            RawJson::parse(&schedule.args.to_string()).map_err(|e| bad("args", e))?,
            RawJson::parse(&schedule.kwargs.to_string()).map_err(|e| bad("kwargs", e))?,
            queue,
            schedule.priority,
        );
        if let Some(expires) = schedule.expires {
            message.headers.expires = iso(now_millis() + (expires * 1000.0) as u64);
        }
        let extra = &mut message.headers.extra;
        extra.insert("quartet_schedule".into(), name.into());
        extra.insert(
            crate::worker::SENT_AT_HEADER.into(),
            Value::from(now_millis()),
        );
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(seconds: f64) -> Schedule {
        Schedule {
            task: "t".into(),
            args: empty_array(),
            kwargs: empty_object(),
            queue: None,
            priority: 0,
            cron: None,
            every: Some(seconds),
            expires: None,
        }
    }

    #[test]
    fn an_interval_moves_on_and_counts_the_slots_it_skipped() {
        let s = every(10.0);
        assert_eq!(s.advance(100_000, 100_500), Some((110_000, 0)));
        // Due at 100 s, fired at 135 s: 110, 120 and 130 were skipped; next at 140.
        assert_eq!(s.advance(100_000, 135_000), Some((140_000, 3)));
    }

    #[test]
    fn a_cron_schedule_fires_on_its_minutes() {
        let mut s = every(1.0);
        s.every = None;
        s.cron = Some("*/15 * * * *".into());
        s.validate().expect("valid");
        // 2026-01-01T00:00:00Z
        let midnight = 1_767_225_600_000;
        assert_eq!(s.next_after(midnight), Some(midnight + 15 * 60_000));
        // Due at 00:15, fired at 01:01: 00:30, 00:45 and 01:00 were skipped.
        assert_eq!(
            s.advance(midnight + 15 * 60_000, midnight + 61 * 60_000),
            Some((midnight + 75 * 60_000, 3))
        );
    }

    #[test]
    fn bad_definitions_are_named() {
        let mut s = every(0.5);
        assert!(
            s.validate()
                .expect_err("refused")
                .0
                .contains("every must be")
        );
        s.every = None;
        assert!(s.validate().expect_err("refused").0.contains("exactly one"));
        s.cron = Some("every tuesday".into());
        assert!(
            s.validate()
                .expect_err("refused")
                .0
                .contains("not a cron expression")
        );
        let mut s = every(5.0);
        s.args = serde_json::json!({"a": 1});
        assert!(s.validate().expect_err("refused").0.contains("args"));
        assert!(valid_name("reports.daily-1"));
        assert!(!valid_name("no spaces"));
    }
}
