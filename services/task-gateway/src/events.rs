//! Celery's two broadcast channels, spoken as Celery speaks them over Redis PUB/SUB:
//!
//! - **Events** (`celeryev`, a topic exchange): a worker announces itself (`worker-online`,
//!   `worker-heartbeat` every two seconds, `worker-offline`) and, when task events are on
//!   (Celery's `-E`), each task's `task-received`, `-started`, `-succeeded`, `-failed`,
//!   `-retried` and `-revoked`; the gateway sends `task-sent`. Each goes to the channel
//!   `/<db>.celeryev/<type with dots>` (e.g. `/0.celeryev/task.succeeded`) as a kombu envelope
//!   whose body is the event dict, so `celery events`, Flower and `app.events.Receiver`
//!   follow our workers as they follow Celery's.
//! - **Remote control** (`celery.pidbox`, a fanout exchange): `app.control.revoke(id)` is a
//!   `revoke` command published on `/<db>.celery.pidbox`. The gateway publishes it when a task
//!   is revoked, so Celery's workers honour revocations made through the API, and our workers
//!   listen to it, so they honour revocations made by Celery's clients.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Map, Value, json};

use crate::broker::{Broker, BrokerError};

/// The exchange of Celery's events.
pub const EVENTS_EXCHANGE: &str = "celeryev";
/// The exchange of Celery's remote-control broadcasts.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";

/// How often a worker says it is alive, in seconds (Celery's default `freq`).
pub const HEARTBEAT_SECONDS: f64 = 2.0;

/// The PUB/SUB channel kombu's Redis transport uses for a fanout or topic exchange:
/// `/<db>.<exchange>`, followed by `/<routing key>` for topic messages.
pub fn channel(db: i64, exchange: &str, routing_key: Option<&str>) -> String {
    match routing_key {
        Some(key) => format!("/{db}.{exchange}/{key}"),
        None => format!("/{db}.{exchange}"),
    }
}

/// A kombu envelope for a broadcast: the JSON body base64-encoded, as on task lists.
pub fn envelope(
    exchange: &str,
    routing_key: &str,
    body: &Value,
    headers: Value,
    delivery_mode: u8,
) -> String {
    json!({
        "body": base64::engine::general_purpose::STANDARD.encode(body.to_string()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "delivery_mode": delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": crate::celery::uuid4(),
        },
    })
    .to_string()
}

/// The body of a broadcast envelope, decoded.
pub fn decode_body(raw: &str) -> Option<Value> {
    let envelope: Value = serde_json::from_str(raw).ok()?;
    let body = envelope["body"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn now_seconds() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// One sender's events: its hostname, process and Lamport clock, as Celery's dispatcher keeps
/// them.
#[derive(Debug)]
pub struct Events {
    broker: Broker,
    hostname: String,
    clock: AtomicU64,
}

impl Events {
    /// Events sent as `hostname` (Celery's `name@host` form).
    pub fn new(broker: Broker, hostname: &str) -> Self {
        Self {
            broker,
            hostname: hostname.to_owned(),
            clock: AtomicU64::new(0),
        }
    }

    /// The event dict Celery sends: `hostname`, `utcoffset`, `pid`, `clock`, `timestamp`,
    /// `type` and the event's own fields.
    pub fn event(&self, kind: &str, fields: Map<String, Value>) -> Value {
        let mut event = Map::new();
        event.insert("hostname".into(), self.hostname.clone().into());
        event.insert("utcoffset".into(), 0.0.into());
        event.insert("pid".into(), std::process::id().into());
        event.insert(
            "clock".into(),
            (self.clock.fetch_add(1, Ordering::Relaxed) + 1).into(),
        );
        event.extend(fields);
        event.insert("timestamp".into(), now_seconds().into());
        event.insert("type".into(), kind.into());
        Value::Object(event)
    }

    /// Publishes events (`(type, fields)`), in one round trip.
    pub async fn send(&self, events: &[(&str, Map<String, Value>)]) -> Result<(), BrokerError> {
        if self.broker.embedded.is_some() {
            // No Celery monitor can reach an embedded broker: nobody to tell.
            return Ok(());
        }
        let db = self.broker.db();
        let mut pipe = redis::pipe();
        for (kind, fields) in events {
            let routing_key = kind.replace('-', ".");
            let body = self.event(kind, fields.clone());
            // Worker events travel non-persistent (delivery mode 1), task events persistent.
            let mode = if kind.starts_with("worker-") { 1 } else { 2 };
            pipe.publish(
                channel(db, EVENTS_EXCHANGE, Some(&routing_key)),
                envelope(
                    EVENTS_EXCHANGE,
                    &routing_key,
                    &body,
                    json!({"hostname": self.hostname}),
                    mode,
                ),
            )
            .ignore();
        }
        let mut conn = self.broker.broker.get().await?;
        let sent = pipe.query_async::<()>(&mut conn).await;
        self.broker.broker.check(sent).await
    }
}

/// The fields of a worker event: Celery's `freq`, `active`, `processed`, `loadavg` and
/// software identity.
pub fn worker_fields(active: usize, processed: u64) -> Map<String, Value> {
    let loadavg: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| {
            l.split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let Value::Object(fields) = json!({
        "freq": HEARTBEAT_SECONDS,
        "active": active,
        "processed": processed,
        "loadavg": loadavg,
        "sw_ident": "quartet-task-gateway",
        "sw_ver": env!("CARGO_PKG_VERSION"),
        "sw_sys": std::env::consts::OS,
    }) else {
        unreachable!("a JSON object literal")
    };
    fields
}

/// A remote-control command as `app.control` broadcasts it.
pub fn control(method: &str, arguments: Value) -> Value {
    json!({
        "method": method,
        "arguments": arguments,
        "destination": null,
        "pattern": null,
        "matcher": null,
    })
}

impl Broker {
    /// Broadcasts a `revoke` of `task_id` to every worker, ours and Celery's, as
    /// `app.control.revoke(task_id, terminate=…)` does.
    pub async fn broadcast_revoke(
        &self,
        task_id: &str,
        terminate: bool,
    ) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            embedded.broadcast_revoke(task_id, terminate);
            return Ok(());
        }
        let command = control(
            "revoke",
            json!({"task_id": task_id, "terminate": terminate, "signal": "SIGTERM"}),
        );
        let expires = now_seconds() + 60.0;
        let message = envelope(
            PIDBOX_EXCHANGE,
            "",
            &command,
            json!({"clock": 1, "expires": expires}),
            2,
        );
        let mut conn = self.broker.get().await?;
        let sent = redis::cmd("PUBLISH")
            .arg(channel(self.db(), PIDBOX_EXCHANGE, None))
            .arg(message)
            .query_async::<()>(&mut conn)
            .await;
        self.broker.check(sent).await
    }

    /// Follows remote-control broadcasts until `stop`, calling `on_revoke(task_id, terminate)`
    /// for each revoked task (a `revoke` may name one id or a list). Reconnects after a
    /// broken connection.
    pub async fn follow_revocations<F>(
        &self,
        stop: tokio_util::sync::CancellationToken,
        on_revoke: F,
    ) where
        F: Fn(String, bool) + Send + Sync,
    {
        if let Some(embedded) = &self.embedded {
            let mut revocations = embedded.revocations();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    revoked = revocations.recv() => match revoked {
                        Ok((id, terminate)) => on_revoke(id, terminate),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        }
        let channel = channel(self.db(), PIDBOX_EXCHANGE, None);
        while !stop.is_cancelled() {
            let subscribed = async {
                let mut pubsub = self.pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, BrokerError>(pubsub)
            }
            .await;
            let mut pubsub = match subscribed {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow remote-control broadcasts; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut messages = pubsub.on_message();
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => return,
                    m = messages.next() => m,
                };
                let Some(message) = message else {
                    tracing::warn!("remote-control subscription dropped; resubscribing");
                    break;
                };
                let Ok(raw) = message.get_payload::<String>() else {
                    continue;
                };
                let Some(command) = decode_body(&raw) else {
                    continue;
                };
                if command["method"] != "revoke" {
                    continue;
                }
                let arguments = &command["arguments"];
                let terminate = arguments["terminate"].as_bool().unwrap_or(false);
                let ids: Vec<String> = match &arguments["task_id"] {
                    Value::String(id) => vec![id.clone()],
                    Value::Array(ids) => ids
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect(),
                    _ => Vec::new(),
                };
                for id in ids {
                    on_revoke(id, terminate);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_named_as_kombu_names_them() {
        assert_eq!(
            channel(0, EVENTS_EXCHANGE, Some("worker.heartbeat")),
            "/0.celeryev/worker.heartbeat"
        );
        assert_eq!(channel(3, PIDBOX_EXCHANGE, None), "/3.celery.pidbox");
    }

    #[test]
    fn a_captured_celery_broadcast_decodes() {
        // The mingle `hello` a Celery 5.7 worker broadcast at startup (shared/protocols/celery).
        let raw = include_str!("../tests/fixtures/celery/pidbox_hello.txt");
        let body = decode_body(raw.trim()).expect("a kombu envelope");
        assert_eq!(body["method"], "hello");
        assert_eq!(body["arguments"]["from_node"], "peers@localhost");
    }

    #[test]
    fn our_heartbeat_has_every_field_of_celerys() {
        // A Celery 5.7 worker's heartbeat, captured (shared/protocols/celery).
        let raw = include_str!("../tests/fixtures/celery/worker_heartbeat.txt");
        let theirs = decode_body(raw.trim()).expect("a kombu envelope");
        let broker = Broker::open("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1").expect("urls");
        let ours = Events::new(broker, "quartet-worker@host")
            .event("worker-heartbeat", worker_fields(1, 2));
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&ours), keys(&theirs));
        assert_eq!(ours["clock"], 1);
        assert_eq!(ours["active"], 1);
    }

    #[test]
    fn an_envelope_round_trips_its_body() {
        let body = control("revoke", json!({"task_id": "x", "terminate": true}));
        let raw = envelope(PIDBOX_EXCHANGE, "", &body, json!({}), 2);
        assert_eq!(decode_body(&raw), Some(body));
        let parsed: Value = serde_json::from_str(&raw).expect("json");
        assert_eq!(
            parsed["properties"]["delivery_info"]["exchange"],
            "celery.pidbox"
        );
    }
}
