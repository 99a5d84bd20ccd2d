//! Celery's canvas — chains, groups and chords — laid out in Redis exactly as Celery lays them
//! out, so a workflow can move between our workers and Celery's in either direction.
//!
//! - A **chain** travels inside its first message: `embed.chain` holds the remaining steps as
//!   signatures, last step first; the worker that finishes a step publishes the next one with
//!   the result prepended to its arguments ([`chain_step`]).
//! - A **group** is messages sharing a `group` header (each with its `group_index`); its member
//!   ids are saved as `celery-taskset-meta-<gid>`, the record `GroupResult.restore` reads.
//! - A **chord** is a group whose messages carry the body signature in `embed.chord`. Celery's
//!   Redis backend counts finished parts in the result database: `.s` holds the header size,
//!   each part adds `[1, id, state, result]` to the sorted set `.j` (scored by its index, so
//!   results come back in header order) once (the set `.d` remembers `id:index`), and the
//!   part that completes the count claims `.c` (`SET NX`) and publishes the body with the
//!   list of results. [`Broker::chord_part`] does the same in one Lua script, so parts
//!   finished by Celery's workers and ours count together and exactly one of them publishes.

use std::time::Duration;

use serde_json::Value;

use crate::broker::{Broker, BrokerError, RESULT_TTL};
use crate::celery::{RawJson, State, TaskMessage};

/// The group record `GroupResult.save()` writes: `celery-taskset-meta-<gid>`.
pub fn group_key(group_id: &str) -> String {
    format!("celery-taskset-meta-{group_id}")
}

fn chord_key(group_id: &str, suffix: &str) -> String {
    format!("{}.{suffix}", group_key(group_id))
}

/// How long the part that completes a chord holds the claim to publish its body. A claimer
/// that dies first leaves its message unacknowledged; its redelivery counts again (the part
/// is not added twice) and claims again once this has passed.
const CLAIM_SECONDS: u64 = 10;

/// Adds one finished part and, when it completes the chord, claims it. KEYS: .j .t .s .d .c.
/// ARGV: `id:index` (dedup member), the encoded part, its index score, expiry (s), claim
/// token, claim seconds. Returns the parts in header order when this call claimed the chord.
const CHORD_PART: &str = r"
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[1])
end
local ready = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')
local size = redis.call('GET', KEYS[3])
local grown = tonumber(redis.call('GET', KEYS[2]) or '0')
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
if not size then return false end
if ready < tonumber(size) + grown then return false end
if not redis.call('SET', KEYS[5], ARGV[5], 'NX', 'EX', ARGV[6]) then return false end
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// After the body is published: the counting keys go and `.c` says `done` for a while, so a
/// late duplicate part does not publish the body again. KEYS: .j .t .s .d .c.
const CHORD_DONE: &str = r"
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('SET', KEYS[5], 'done', 'EX', 300)
return 1
";

impl Broker {
    /// Saves a group's member ids where `GroupResult.restore(gid)` and [`Broker::group`] find
    /// them.
    pub async fn save_group(&self, group_id: &str, task_ids: &[String]) -> Result<(), BrokerError> {
        let members: Vec<Value> = task_ids
            .iter()
            .map(|id| serde_json::json!([[id, null], null]))
            .collect();
        let record = serde_json::json!({"result": [[group_id, null], members]});
        self.remember(&group_key(group_id), &record.to_string())
            .await
    }

    /// A saved group's member ids, in order.
    pub async fn group(&self, group_id: &str) -> Result<Option<Vec<String>>, BrokerError> {
        let Some(raw) = self.recall(&group_key(group_id)).await? else {
            return Ok(None);
        };
        let record: Value = serde_json::from_str(&raw).map_err(|e| BrokerError::Result {
            task_id: group_id.to_owned(),
            reason: format!("group record: {e}"),
        })?;
        Ok(Some(
            record["result"][1]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|member| member[0][0].as_str().map(str::to_owned))
                .collect(),
        ))
    }

    /// Prepares a chord of `size` parts before its header is published, as Celery's client
    /// does: the size in `.s`, no stale claim in `.c`.
    pub async fn start_chord(&self, group_id: &str, size: usize) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.start_chord(group_id, size);
        }
        let mut conn = self.results_conn.get().await?;
        let done = redis::pipe()
            .atomic()
            .del(chord_key(group_id, "c"))
            .ignore()
            .set_ex(chord_key(group_id, "s"), size, RESULT_TTL.as_secs())
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        self.results_conn.check(done).await
    }

    /// Counts a finished chord part. Returns every part `[1, id, state, result]` in header
    /// order when this one completed the chord and won the claim to publish its body (then
    /// call [`Broker::finish_chord`]); `None` otherwise, and for a repeated part.
    pub async fn chord_part(
        &self,
        group_id: &str,
        task_id: &str,
        index: Option<u64>,
        state: State,
        result: &RawJson,
    ) -> Result<Option<Vec<String>>, BrokerError> {
        // Written as text, so the result keeps its digits.
        let part = format!(
            "[1,{},{},{}]",
            Value::from(task_id),
            Value::from(state.as_str()),
            result.text()
        );
        let score = index.map_or_else(|| "+inf".to_owned(), |i| i.to_string());
        let index_text = index.map_or_else(|| "None".to_owned(), |i| i.to_string());
        if let Some(embedded) = &self.embedded {
            return embedded.chord_part(
                group_id,
                &format!("{task_id}:{index_text}"),
                index.map_or(f64::INFINITY, |i| i as f64),
                &part,
                Duration::from_secs(CLAIM_SECONDS),
            );
        }
        let mut conn = self.results_conn.get().await?;
        let claimed: redis::RedisResult<Option<Vec<String>>> = redis::Script::new(CHORD_PART)
            .key(chord_key(group_id, "j"))
            .key(chord_key(group_id, "t"))
            .key(chord_key(group_id, "s"))
            .key(chord_key(group_id, "d"))
            .key(chord_key(group_id, "c"))
            .arg(format!("{task_id}:{index_text}"))
            .arg(part)
            .arg(score)
            .arg(RESULT_TTL.as_secs())
            .arg(crate::celery::uuid4())
            .arg(CLAIM_SECONDS)
            .invoke_async(&mut conn)
            .await;
        self.results_conn.check(claimed).await
    }

    /// Marks a chord whose body went out as done.
    pub async fn finish_chord(&self, group_id: &str) -> Result<(), BrokerError> {
        if let Some(embedded) = &self.embedded {
            return embedded.finish_chord(group_id);
        }
        let mut conn = self.results_conn.get().await?;
        let done: redis::RedisResult<i64> = redis::Script::new(CHORD_DONE)
            .key(chord_key(group_id, "j"))
            .key(chord_key(group_id, "t"))
            .key(chord_key(group_id, "s"))
            .key(chord_key(group_id, "d"))
            .key(chord_key(group_id, "c"))
            .invoke_async(&mut conn)
            .await;
        self.results_conn.check(done).await.map(drop)
    }
}

/// Makes `messages` one group: the group id and each one's index.
pub fn join_group(messages: &mut [TaskMessage], group_id: &str) {
    for (index, message) in messages.iter_mut().enumerate() {
        message.headers.group = Some(group_id.to_owned());
        message.headers.group_index = Some(index as u64);
    }
}

/// Makes `header` a chord with `body` (a signature, e.g. [`TaskMessage::signature`]): one group
/// whose messages carry the body with its `group_id`. Publish the header after
/// [`Broker::start_chord`].
pub fn make_chord(header: &mut [TaskMessage], mut body: Value, group_id: &str) {
    body["options"]["group_id"] = group_id.into();
    join_group(header, group_id);
    for message in header {
        message.embed.chord = Some(body.clone());
    }
}

/// Makes `steps` one chain: the first message carries the others as signatures, last step
/// first, and every step shares the first one's root id. Publish the first message only.
pub fn make_chain(steps: &mut [TaskMessage]) {
    let Some((first, rest)) = steps.split_first_mut() else {
        return;
    };
    let root = first.headers.id.clone();
    for step in rest.iter_mut() {
        step.headers.root_id = Some(root.clone());
    }
    first.embed.chain = Some(rest.iter().rev().map(TaskMessage::signature).collect());
}

/// Why a chord's body cannot run: a part failed or was revoked (Celery's `ChordError`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChordError(pub String);

/// The results of a chord's parts (`[1, id, state, result]` each, as stored) in header order,
/// as one JSON list kept as written, or the first part that did not succeed, described as
/// Celery's `ChordError` describes it.
pub fn chord_results(parts: &[String]) -> Result<RawJson, ChordError> {
    let mut results = Vec::with_capacity(parts.len());
    for part in parts {
        let (_, id, state, result): (Value, Value, String, RawJson) = serde_json::from_str(part)
            .map_err(|e| ChordError(format!("a chord part is not [1, id, state, result]: {e}")))?;
        if state == State::Success.as_str() {
            results.push(result);
            continue;
        }
        let error = result.value();
        let message = error["exc_message"]
            .as_array()
            .and_then(|m| m.first())
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(ChordError(format!(
            "Dependency {} raised {}('{}')",
            id.as_str().unwrap_or("?"),
            error["exc_type"].as_str().unwrap_or(&state),
            message
        )));
    }
    let texts: Vec<&str> = results.iter().map(RawJson::text).collect();
    RawJson::parse(&format!("[{}]", texts.join(",")))
        .map_err(|e| ChordError(format!("the chord's results do not form a list: {e}")))
}

/// The message for a signature `{task, args, kwargs, options, immutable}` called with
/// `previous` prepended to its arguments (unless immutable): a chain's next step, or a chord's
/// body with the list of the header's results. `options` may carry `task_id`, `queue`,
/// `priority`, `time_limit`, `soft_time_limit` and `countdown`. `previous` goes in as written,
/// so a result's digits carry on.
pub fn chain_step(
    signature: &Value,
    previous: &RawJson,
    default_queue: &str,
) -> Option<TaskMessage> {
    let task = signature["task"].as_str()?;
    let mut args: Vec<String> = signature["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(Value::to_string)
        .collect();
    if !signature["immutable"].as_bool().unwrap_or(false) {
        args.insert(0, previous.text().to_owned());
    }
    let kwargs = match &signature["kwargs"] {
        Value::Object(map) => Value::Object(map.clone()),
        _ => Value::Object(serde_json::Map::new()),
    };
    let options = &signature["options"];
    let queue = options["queue"].as_str().unwrap_or(default_queue);
    let priority = options["priority"].as_u64().unwrap_or(0) as u32;
    let mut message = TaskMessage::new(
        task,
        RawJson::parse(&format!("[{}]", args.join(","))).ok()?,
        RawJson::parse(&kwargs.to_string()).ok()?,
        queue,
        priority,
    );
    if let Some(id) = options["task_id"].as_str() {
        message.set_id(id);
    }
    message.headers.timelimit = (
        options["time_limit"].as_f64(),
        options["soft_time_limit"].as_f64(),
    );
    if let Some(countdown) = options["countdown"].as_f64().filter(|c| *c > 0.0) {
        message.headers.eta = Some(
            (chrono::Utc::now() + chrono::Duration::milliseconds((countdown * 1000.0) as i64))
                .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                .to_string(),
        );
    }
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_header_order_and_a_failed_part_names_itself() {
        let parts = vec![
            serde_json::json!([1, "a", "SUCCESS", 1]).to_string(),
            serde_json::json!([1, "b", "SUCCESS", [2, 3]]).to_string(),
            r#"[1, "c", "SUCCESS", 123456789012345678901234567890]"#.to_owned(),
        ];
        assert_eq!(
            chord_results(&parts).map(|r| r.text().to_owned()),
            Ok("[1,[2,3],123456789012345678901234567890]".to_owned())
        );
        let failed = vec![
            serde_json::json!([1, "a", "SUCCESS", 1]).to_string(),
            serde_json::json!([1, "b", "FAILURE", {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}]).to_string(),
        ];
        assert_eq!(
            chord_results(&failed),
            Err(ChordError("Dependency b raised ValueError('boom')".into()))
        );
    }

    #[test]
    fn a_step_gets_the_previous_result_first_unless_immutable() {
        let sig = serde_json::json!({"task": "t", "args": [10], "kwargs": {}, "options": {"task_id": "x", "queue": "q", "time_limit": 5.0}, "immutable": false});
        let m =
            chain_step(&sig, &RawJson::from(serde_json::json!(5)), "celery").expect("a signature");
        assert_eq!(m.args.value(), serde_json::json!([5, 10]));
        let wide = RawJson::parse("123456789012345678901234567890").expect("json");
        let m = chain_step(&sig, &wide, "celery").expect("a signature");
        assert_eq!(m.args.text(), "[123456789012345678901234567890,10]");
        assert_eq!(m.headers.id, "x");
        assert_eq!(m.properties.delivery_info.routing_key, "q");
        assert_eq!(m.headers.timelimit, (Some(5.0), None));
        let mut frozen = sig.clone();
        frozen["immutable"] = true.into();
        let m = chain_step(&frozen, &RawJson::from(serde_json::json!(5)), "celery")
            .expect("a signature");
        assert_eq!(m.args.value(), serde_json::json!([10]));
    }

    #[test]
    fn a_signature_round_trips_through_a_chain_step() {
        let mut m = TaskMessage::new(
            "shop.add",
            RawJson::parse("[1, 2]").expect("json"),
            RawJson::parse("{}").expect("json"),
            "q",
            3,
        );
        m.headers.timelimit = (Some(9.0), Some(4.0));
        let again = chain_step(&m.signature(), &RawJson::null(), "celery").expect("a signature");
        assert_eq!(again.headers.id, m.headers.id);
        assert_eq!(again.headers.timelimit, m.headers.timelimit);
        assert_eq!(again.properties.priority, 3);
        assert_eq!(again.args.value(), serde_json::json!([null, 1, 2]));
    }
}
