//! The embedded broker: the same queues, leases, delays, results, revocations, chords and
//! schedules as the Redis layout, in one SQLite file, for `make dev` and single-machine use
//! (`redis.broker_url = "sqlite:<path>"`). No Celery process can share it — Celery speaks only
//! to real brokers — so events have no audience here and revokes are broadcast within the
//! process.
//!
//! Semantics kept from the Redis broker: a message taken by a worker is leased to it (the
//! row keeps it, with the owner and the lease's end) until acknowledged, and goes back to its
//! queue, ahead of newer ones and marked redelivered, when the lease lapses; a delayed message
//! waits in the same table until due; a chord's parts are counted once each and exactly one
//! part publishes the body; a schedule's slot fires once, under a lease. Every write commits
//! before it returns, with `synchronous = FULL`: a published task survives a crash of the
//! process and of the machine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;

use crate::broker::{BrokerError, Delivery, QueueStats, now_millis};
use crate::celery::{ProtocolError, ResultMeta, TaskMessage, priority_bucket, queue_list};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS messages (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  tag TEXT NOT NULL UNIQUE,
  queue TEXT NOT NULL,
  bucket INTEGER NOT NULL,
  due_ms INTEGER NOT NULL,
  envelope TEXT NOT NULL,
  owner TEXT,
  lease_until INTEGER,
  redelivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, bucket, seq) WHERE owner IS NULL;
CREATE TABLE IF NOT EXISTS facts (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (task_id TEXT PRIMARY KEY, meta TEXT NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lists (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lists_name ON lists (name);
CREATE TABLE IF NOT EXISTS chord_parts (group_id TEXT NOT NULL, member TEXT NOT NULL, idx REAL NOT NULL, part TEXT NOT NULL, PRIMARY KEY (group_id, member));
CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, definition TEXT NOT NULL, due_ms INTEGER NOT NULL, runs TEXT);
";

/// A schedule as stored: name, definition (JSON), due time (ms), runs (JSON).
pub type StoredSchedule = (String, String, u64, Option<String>);

/// Column `index` as bytes, whether SQLite holds text (of any encoding) or a blob there.
fn bytes_at(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Vec<u8>> {
    let value = row.get_ref(index)?;
    value
        .as_bytes_or_null()
        .map(|b| b.unwrap_or_default().to_vec())
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(index, value.data_type(), Box::new(e))
        })
}

/// The envelope with `redelivered` set, or as it was when it is not a JSON object (it is then
/// quarantined as it was).
fn mark_redelivered(envelope: Vec<u8>) -> Vec<u8> {
    match serde_json::from_slice::<Value>(&envelope) {
        Ok(mut value @ Value::Object(_)) if value["properties"]["delivery_info"].is_object() => {
            value["properties"]["delivery_info"]["redelivered"] = true.into();
            value.to_string().into_bytes()
        }
        _ => envelope,
    }
}

/// One SQLite broker file, shared by every handle in the process.
pub struct Embedded {
    conn: Mutex<Connection>,
    /// Woken when a message becomes ready (published, released, put back).
    ready: tokio::sync::Notify,
    /// Task ids whose records were just stored, for [`Embedded::wait_result`].
    stored: tokio::sync::broadcast::Sender<String>,
    /// Revocations, `(task id, terminate)`, for the workers of this process.
    revoked: tokio::sync::broadcast::Sender<(String, bool)>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

fn failed(e: rusqlite::Error) -> BrokerError {
    BrokerError::Embedded(e.to_string())
}

fn expiry(ttl: Duration) -> i64 {
    (now_millis() + ttl.as_millis() as u64) as i64
}

impl Embedded {
    /// Opens (creating if needed) the broker file at `path`.
    pub fn open(path: &str) -> Result<Self, BrokerError> {
        if let Some(dir) = std::path::Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| BrokerError::Embedded(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(failed)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(failed)?;
        conn.execute_batch(SCHEMA).map_err(failed)?;
        Ok(Self {
            conn: Mutex::new(conn),
            ready: tokio::sync::Notify::new(),
            stored: tokio::sync::broadcast::channel(1024).0,
            revoked: tokio::sync::broadcast::channel(1024).0,
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BrokerError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(failed)
    }

    /// Whether the file answers.
    pub fn ping(&self) -> Result<(), BrokerError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    /// Enqueues `message`, due at `due` (ms since the epoch; 0 for now).
    pub fn insert(&self, message: &TaskMessage, due: u64) -> Result<(), BrokerError> {
        let queue = &message.properties.delivery_info.routing_key;
        self.with(|c| {
            c.execute(
                "INSERT INTO messages (tag, queue, bucket, due_ms, envelope) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    message.properties.delivery_tag,
                    queue,
                    priority_bucket(message.properties.priority),
                    due as i64,
                    message.encode()
                ],
            )
        })?;
        self.ready.notify_waiters();
        Ok(())
    }

    /// Parks `message` until `due` under a fresh delivery tag (the one it came with is about
    /// to be acknowledged).
    pub fn delay(&self, message: &TaskMessage, due: u64) -> Result<(), BrokerError> {
        let mut parked = message.clone();
        parked.properties.delivery_tag = crate::celery::uuid4();
        self.insert(&parked, due)
    }

    /// Takes the next ready message, leased to `owner`. A row that is not a usable message
    /// (only a hand-made one can be: the broker writes what it encoded) goes to the quarantine
    /// list with the reason in the same transaction, and the next row is taken: never lost,
    /// never handed out again.
    fn take(
        &self,
        queues: &[&str],
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Delivery>, BrokerError> {
        let now = now_millis() as i64;
        let marks = vec!["?"; queues.len()].join(", ");
        let sql = format!(
            "UPDATE messages SET owner = ?1, lease_until = ?2 WHERE seq = (
               SELECT seq FROM messages WHERE owner IS NULL AND due_ms <= ?3 AND queue IN ({marks})
               ORDER BY bucket, seq LIMIT 1)
             RETURNING seq, queue, bucket, envelope, redelivered"
        );
        let taken: Option<(String, Vec<u8>, Result<TaskMessage, ProtocolError>)> =
            self.with(|c| {
                let tx = c.transaction()?;
                let mut taken = None;
                loop {
                    let mut values: Vec<rusqlite::types::Value> =
                        vec![owner.to_owned().into(), expiry(lease).into(), now.into()];
                    values.extend(queues.iter().map(|q| (*q).to_owned().into()));
                    // The envelope as bytes, whatever the column holds (text or a blob).
                    let row: Option<(i64, String, u32, Vec<u8>, bool)> = tx
                        .query_row(&sql, rusqlite::params_from_iter(values), |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, bytes_at(r, 3)?, r.get(4)?))
                        })
                        .optional()?;
                    let Some((seq, queue, bucket, envelope, redelivered)) = row else {
                        break;
                    };
                    let list = queue_list(&queue, bucket);
                    let raw = if redelivered {
                        mark_redelivered(envelope)
                    } else {
                        envelope
                    };
                    match TaskMessage::decode(&raw) {
                        Ok(message) => {
                            taken = Some((list, raw, Ok(message)));
                            break;
                        }
                        Err(reason) => {
                            tracing::warn!(%list, %reason, "quarantined an unusable message");
                            tx.execute("DELETE FROM messages WHERE seq = ?1", params![seq])?;
                            tx.execute(
                                "INSERT INTO lists (name, value) VALUES (?1, ?2)",
                                params![
                                    crate::worker::QUARANTINE,
                                    crate::broker::quarantine_record(
                                        &list,
                                        &raw,
                                        &reason.to_string()
                                    )
                                ],
                            )?;
                        }
                    }
                }
                tx.commit()?;
                Ok(taken)
            })?;
        Ok(taken.map(|(list, raw, message)| {
            let revoked = message.as_ref().is_ok_and(|m| {
                self.recall(&crate::broker::revoked_key(&m.headers.id))
                    .is_ok_and(|r| r.is_some())
            });
            Delivery {
                list,
                message,
                raw,
                revoked,
            }
        }))
    }

    /// Takes the next ready message of `queues` (priority 0 first, then oldest), waiting up
    /// to `timeout`, leased to `owner` for `lease`.
    pub async fn fetch(
        &self,
        queues: &[&str],
        timeout: Duration,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Delivery>, BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let woken = self.ready.notified();
            if let Some(delivery) = self.take(queues, owner, lease)? {
                return Ok(Some(delivery));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Delayed messages fall due without a wake-up: look again at least every 100 ms.
            let _ =
                tokio::time::timeout((deadline - now).min(Duration::from_millis(100)), woken).await;
        }
    }

    /// Extends leases; returns the tags no longer held.
    pub fn renew(&self, tags: &[String], lease: Duration) -> Result<Vec<String>, BrokerError> {
        let until = expiry(lease);
        self.with(|c| {
            let mut lost = Vec::new();
            for tag in tags {
                let n = c.execute(
                    "UPDATE messages SET lease_until = ?1 WHERE tag = ?2 AND owner IS NOT NULL",
                    params![until, tag],
                )?;
                if n == 0 {
                    lost.push(tag.clone());
                }
            }
            Ok(lost)
        })
    }

    /// Acknowledges a message: gone for good.
    pub fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        self.with(|c| c.execute("DELETE FROM messages WHERE tag = ?1", params![tag]))
            .map(drop)
    }

    /// Puts back messages whose lease lapsed; how many.
    pub fn redeliver_expired(&self) -> Result<usize, BrokerError> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE messages SET owner = NULL, lease_until = NULL, redelivered = 1
                 WHERE owner IS NOT NULL AND lease_until < ?1",
                params![now_millis() as i64],
            )
        })?;
        if n > 0 {
            tracing::warn!(messages = n, "leases expired: messages redelivered");
            self.ready.notify_waiters();
        }
        Ok(n)
    }

    /// Waiting messages of `queue` per priority bucket.
    pub fn depth(&self, queue: &str) -> Result<Vec<(u8, u64)>, BrokerError> {
        let now = now_millis() as i64;
        let counts: Vec<(u8, u64)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT bucket, COUNT(*) FROM messages WHERE queue = ?1 AND owner IS NULL AND due_ms <= ?2 GROUP BY bucket",
            )?;
            let rows = stmt.query_map(params![queue, now], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            rows.collect()
        })?;
        Ok(crate::celery::PRIORITY_STEPS
            .iter()
            .map(|step| {
                let n = counts
                    .iter()
                    .find(|(b, _)| b == step)
                    .map_or(0, |(_, n)| *n);
                (*step, n)
            })
            .collect())
    }

    /// A queue's statistics, as [`crate::broker::Broker::stats`] reports them.
    pub fn stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        let depth = self.depth(queue)?;
        let now = now_millis() as i64;
        let (delayed, in_flight, consumers, next, dead) = self.with(|c| {
            let delayed: u64 = c.query_row(
                "SELECT COUNT(*) FROM messages WHERE queue = ?1 AND owner IS NULL AND due_ms > ?2",
                params![queue, now],
                |r| r.get::<_, i64>(0).map(|n| n as u64),
            )?;
            let in_flight: u64 = c.query_row(
                "SELECT COUNT(*) FROM messages WHERE queue = ?1 AND owner IS NOT NULL",
                params![queue],
                |r| r.get::<_, i64>(0).map(|n| n as u64),
            )?;
            let mut stmt = c.prepare(
                "SELECT DISTINCT owner FROM messages WHERE queue = ?1 AND owner IS NOT NULL ORDER BY owner",
            )?;
            let consumers: Vec<String> =
                stmt.query_map(params![queue], |r| r.get(0))?.collect::<Result<_, _>>()?;
            let next: Option<Vec<u8>> = c
                .query_row(
                    "SELECT envelope FROM messages WHERE queue = ?1 AND owner IS NULL AND due_ms <= ?2 ORDER BY bucket, seq LIMIT 1",
                    params![queue, now],
                    |r| bytes_at(r, 0),
                )
                .optional()?;
            let dead: u64 = c.query_row(
                "SELECT COUNT(*) FROM lists WHERE name = ?1",
                params![crate::worker::dead_letters(queue)],
                |r| r.get::<_, i64>(0).map(|n| n as u64),
            )?;
            Ok((delayed, in_flight, consumers, next, dead))
        })?;
        let oldest_waiting_ms = next
            .and_then(|raw| TaskMessage::decode(&raw).ok())
            .and_then(|m| {
                m.headers
                    .extra
                    .get(crate::worker::SENT_AT_HEADER)
                    .and_then(Value::as_u64)
            })
            .map(|sent| now_millis().saturating_sub(sent));
        Ok(QueueStats {
            queue: queue.to_owned(),
            waiting: depth.iter().map(|(_, n)| n).sum(),
            by_priority: depth.into_iter().map(|(b, n)| (b.to_string(), n)).collect(),
            delayed,
            in_flight,
            consumers,
            oldest_waiting_ms,
            dead_letters: dead,
        })
    }

    /// Appends a record to a named list (dead letters, quarantine).
    pub fn push(&self, list: &str, record: &str) -> Result<(), BrokerError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO lists (name, value) VALUES (?1, ?2)",
                params![list, record],
            )
        })
        .map(drop)
    }

    /// A named list's records, oldest first.
    pub fn list(&self, list: &str) -> Result<Vec<String>, BrokerError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT value FROM lists WHERE name = ?1 ORDER BY seq")?;
            let rows = stmt.query_map(params![list], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Keeps `value` under `key` for `ttl`.
    pub fn remember(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BrokerError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO facts (key, value, expires_ms) VALUES (?1, ?2, ?3)",
                params![key, value, expiry(ttl)],
            )
        })
        .map(drop)
    }

    /// The unexpired value under `key`.
    pub fn recall(&self, key: &str) -> Result<Option<String>, BrokerError> {
        self.with(|c| {
            c.query_row(
                "SELECT value FROM facts WHERE key = ?1 AND expires_ms > ?2",
                params![key, now_millis() as i64],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Claims `key` for `value` unless an unexpired claim holds it: the holder's value, or
    /// `None` when the claim is ours.
    pub fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let held: Option<String> = tx
                .query_row(
                    "SELECT value FROM facts WHERE key = ?1 AND expires_ms > ?2",
                    params![key, now_millis() as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if held.is_none() {
                tx.execute(
                    "INSERT OR REPLACE INTO facts (key, value, expires_ms) VALUES (?1, ?2, ?3)",
                    params![key, value, expiry(ttl)],
                )?;
            }
            tx.commit()?;
            Ok(held)
        })
    }

    /// Stores a result record and wakes its waiters.
    pub fn store_result(&self, meta: &ResultMeta) -> Result<(), BrokerError> {
        let json = serde_json::to_string(meta).expect("result records serialize");
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO results (task_id, meta, expires_ms) VALUES (?1, ?2, ?3)",
                params![meta.task_id, json, expiry(crate::broker::RESULT_TTL)],
            )
        })?;
        let _ = self.stored.send(meta.task_id.clone());
        Ok(())
    }

    /// Stores a record unless the task has one.
    pub fn store_result_if_absent(&self, meta: &ResultMeta) -> Result<(), BrokerError> {
        let json = serde_json::to_string(meta).expect("result records serialize");
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO results (task_id, meta, expires_ms) VALUES (?1, ?2, ?3)",
                params![meta.task_id, json, expiry(crate::broker::RESULT_TTL)],
            )
        })
        .map(drop)
    }

    /// A task's result record.
    pub fn result(&self, task_id: &str) -> Result<Option<ResultMeta>, BrokerError> {
        let raw: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT meta FROM results WHERE task_id = ?1 AND expires_ms > ?2",
                params![task_id, now_millis() as i64],
                |r| r.get(0),
            )
            .optional()
        })?;
        crate::broker::read_record(task_id, raw)
    }

    /// Waits up to `timeout` for a finished record.
    pub async fn wait_result(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultMeta>, BrokerError> {
        let finished = crate::broker::is_final;
        let mut stored = self.stored.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Subscribed first, then read: a record stored in between is not missed.
            if let Some(meta) = self.result(task_id)?
                && finished(&meta)
            {
                return Ok(Some(meta));
            }
            loop {
                match tokio::time::timeout_at(deadline, stored.recv()).await {
                    Err(_) => return Ok(None),
                    Ok(Ok(id)) if id != task_id => continue,
                    // Ours, or lagged behind (look again), or closed (cannot be: we hold it).
                    Ok(_) => break,
                }
            }
        }
    }

    /// Tells this process's workers that `task_id` is revoked.
    pub fn broadcast_revoke(&self, task_id: &str, terminate: bool) {
        let _ = self.revoked.send((task_id.to_owned(), terminate));
    }

    /// This process's revocations, as they happen.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<(String, bool)> {
        self.revoked.subscribe()
    }

    /// Counts a chord part once; the parts in index order when this one completed the chord
    /// and won the claim (see [`crate::canvas`]).
    pub fn chord_part(
        &self,
        group_id: &str,
        member: &str,
        index: f64,
        part: &str,
        claim_for: Duration,
    ) -> Result<Option<Vec<String>>, BrokerError> {
        let size_key = format!("chord:{group_id}:size");
        let claim_key = format!("chord:{group_id}:claim");
        let now = now_millis() as i64;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO chord_parts (group_id, member, idx, part) VALUES (?1, ?2, ?3, ?4)",
                params![group_id, member, index, part],
            )?;
            let ready: i64 = tx.query_row(
                "SELECT COUNT(*) FROM chord_parts WHERE group_id = ?1",
                params![group_id],
                |r| r.get(0),
            )?;
            let size: Option<String> = tx
                .query_row(
                    "SELECT value FROM facts WHERE key = ?1 AND expires_ms > ?2",
                    params![size_key, now],
                    |r| r.get(0),
                )
                .optional()?;
            let complete = size
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|size| ready >= size);
            let claimed = complete
                && tx
                    .query_row(
                        "SELECT 1 FROM facts WHERE key = ?1 AND expires_ms > ?2",
                        params![claim_key, now],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_none();
            let mut parts = None;
            if claimed {
                tx.execute(
                    "INSERT OR REPLACE INTO facts (key, value, expires_ms) VALUES (?1, 'claimed', ?2)",
                    params![claim_key, expiry(claim_for)],
                )?;
                let mut stmt = tx.prepare(
                    "SELECT part FROM chord_parts WHERE group_id = ?1 ORDER BY idx, member",
                )?;
                let rows: Vec<String> = stmt
                    .query_map(params![group_id], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                drop(stmt);
                parts = Some(rows);
            }
            tx.commit()?;
            Ok(parts)
        })
    }

    /// A chord whose body went out: its parts go, and its claim says done for a while.
    pub fn finish_chord(&self, group_id: &str) -> Result<(), BrokerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM chord_parts WHERE group_id = ?1",
                params![group_id],
            )?;
            tx.execute(
                "DELETE FROM facts WHERE key = ?1",
                params![format!("chord:{group_id}:size")],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO facts (key, value, expires_ms) VALUES (?1, 'done', ?2)",
                params![
                    format!("chord:{group_id}:claim"),
                    expiry(Duration::from_secs(300))
                ],
            )?;
            tx.commit()
        })
    }

    /// Prepares a chord of `size` parts.
    pub fn start_chord(&self, group_id: &str, size: usize) -> Result<(), BrokerError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM facts WHERE key = ?1",
                params![format!("chord:{group_id}:claim")],
            )
        })?;
        self.remember(
            &format!("chord:{group_id}:size"),
            &size.to_string(),
            crate::broker::RESULT_TTL,
        )
    }

    /// Creates or replaces a schedule, due at `due`.
    pub fn put_schedule(&self, name: &str, definition: &str, due: u64) -> Result<(), BrokerError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO schedules (name, definition, due_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, due_ms = excluded.due_ms",
                params![name, definition, due as i64],
            )
        })
        .map(drop)
    }

    /// Removes a schedule; whether it existed.
    pub fn delete_schedule(&self, name: &str) -> Result<bool, BrokerError> {
        self.with(|c| c.execute("DELETE FROM schedules WHERE name = ?1", params![name]))
            .map(|n| n == 1)
    }

    /// Every schedule, by name.
    pub fn schedules(&self) -> Result<Vec<StoredSchedule>, BrokerError> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT name, definition, due_ms, runs FROM schedules ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
            })?;
            rows.collect()
        })
    }

    /// Fires one due slot if `owner` holds the scheduler lease and the slot is still due at
    /// `at`: the message is enqueued, the due time moves to `next`, the run is counted. -1:
    /// not the leader; 0: the slot is gone; 1: fired.
    #[allow(clippy::too_many_arguments)]
    pub fn fire(
        &self,
        lease_key: &str,
        owner: &str,
        name: &str,
        at: u64,
        next: u64,
        message: &TaskMessage,
        skipped: u64,
    ) -> Result<i64, BrokerError> {
        let now = now_millis() as i64;
        let fired = self.with(|c| {
            let tx = c.transaction()?;
            let holder: Option<String> = tx
                .query_row(
                    "SELECT value FROM facts WHERE key = ?1 AND expires_ms > ?2",
                    params![lease_key, now],
                    |r| r.get(0),
                )
                .optional()?;
            if holder.as_deref() != Some(owner) {
                return Ok(-1);
            }
            let due: Option<(i64, Option<String>)> = tx
                .query_row(
                    "SELECT due_ms, runs FROM schedules WHERE name = ?1",
                    params![name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((due, runs)) = due else { return Ok(0) };
            if due as u64 != at {
                return Ok(0);
            }
            let mut runs: crate::schedule::Runs = runs
                .and_then(|r| serde_json::from_str(&r).ok())
                .unwrap_or_default();
            runs.runs += 1;
            runs.missed += skipped;
            runs.last_run_at = Some(crate::celery::iso_now());
            runs.last_task_id = Some(message.headers.id.clone());
            tx.execute(
                "INSERT INTO messages (tag, queue, bucket, due_ms, envelope) VALUES (?1, ?2, ?3, 0, ?4)",
                params![
                    message.properties.delivery_tag,
                    message.properties.delivery_info.routing_key,
                    priority_bucket(message.properties.priority),
                    message.encode()
                ],
            )?;
            tx.execute(
                "UPDATE schedules SET due_ms = ?1, runs = ?2 WHERE name = ?3",
                params![
                    next as i64,
                    serde_json::to_string(&runs).unwrap_or_default(),
                    name
                ],
            )?;
            tx.commit()?;
            Ok(1)
        })?;
        if fired == 1 {
            self.ready.notify_waiters();
        }
        Ok(fired)
    }

    /// Takes or keeps a lease named `key` for `owner`; whether it is held.
    pub fn hold(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, BrokerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let holder: Option<String> = tx
                .query_row(
                    "SELECT value FROM facts WHERE key = ?1 AND expires_ms > ?2",
                    params![key, now_millis() as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let held = holder.is_none() || holder.as_deref() == Some(owner);
            if held {
                tx.execute(
                    "INSERT OR REPLACE INTO facts (key, value, expires_ms) VALUES (?1, ?2, ?3)",
                    params![key, owner, expiry(ttl)],
                )?;
            }
            tx.commit()?;
            Ok(held)
        })
    }

    /// Gives a lease up if `owner` holds it.
    pub fn release(&self, key: &str, owner: &str) -> Result<(), BrokerError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM facts WHERE key = ?1 AND value = ?2",
                params![key, owner],
            )
        })
        .map(drop)
    }

    /// Drops expired facts and results (called by housekeeping).
    pub fn sweep(&self) -> Result<(), BrokerError> {
        let now = now_millis() as i64;
        self.with(|c| {
            c.execute("DELETE FROM facts WHERE expires_ms <= ?1", params![now])?;
            c.execute("DELETE FROM results WHERE expires_ms <= ?1", params![now])
        })
        .map(drop)
    }
}

/// A shared handle.
pub type Shared = Arc<Embedded>;
