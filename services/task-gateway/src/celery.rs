//! Celery's task message protocol v2 as kombu's Redis transport carries it, and Celery's Redis
//! result records: the formats the gateway, its workers and real Celery clients and workers
//! share (captured from Celery 5.7 / kombu 5.7; docs/tasks.md lists the rules).
//!
//! - A queue `Q` is up to four Redis lists, one per priority bucket: priorities 0–2 in `Q`,
//!   3–5 in `Q\x06\x163`, 6–8 in `Q\x06\x166`, 9 and above in `Q\x06\x169`. Producers `LPUSH`,
//!   consumers `BRPOP` every queue's bucket 0 first, so **0 is served first** (the reverse of
//!   AMQP).
//! - A list element is kombu's envelope, JSON: `body` is base64 of the JSON payload
//!   `[args, kwargs, embed]`; `headers` (not base64) carry the task name, id, ETA, expiry,
//!   retries, time limits, workflow ids; `properties` carry the delivery tag the *publisher*
//!   chose (the consumer's `unacked` hash field) and the priority.
//! - A result is the string `celery-task-meta-<id>` in the result database, JSON with optional
//!   fields left out rather than null.
//!
//! Only the JSON serializer is accepted; pickle, YAML and msgpack messages are refused with an
//! error naming the content type.
//!
//! [`TaskMessage::decode`] is the one parser of popped bytes: any input gives a message or a
//! [`ProtocolError`], never a panic (the fuzz target calls it). Task arguments and results stay
//! JSON text ([`RawJson`]); [`check_json`] says whether a worker can read them: at most
//! [`MAX_JSON_DEPTH`] levels of nesting, numbers a 64-bit float holds (integers of any width
//! are kept as written), no lone UTF-16 surrogate escapes.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// JSON text kept exactly as written: task arguments pass through the gateway unchanged
/// (Celery writes integers beyond 64 bits as plain numbers, which a parsed value would round).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl RawJson {
    /// Wraps JSON text, checking that it is JSON.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.to_owned()).map(Self)
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// The value, parsed (large integers become floats; unreadable text becomes null): for
    /// looking at fields, never for passing a value on — see [`read_value`].
    pub fn value(&self) -> Value {
        serde_json::from_str(self.text()).unwrap_or(Value::Null)
    }

    /// JSON `null`.
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }
}

impl From<Value> for RawJson {
    fn from(value: Value) -> Self {
        // A Value always serializes (its map keys are strings), and its text is JSON.
        Self(serde_json::value::to_raw_value(&value).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }
}

/// The deepest nesting of arrays and objects in task arguments, keyword arguments and results
/// that the gateway accepts and its workers read (each counted on its own: `[[1]]` is 2).
/// serde_json, which our workers parse with, stops at 128 levels for a whole document; a
/// result is wrapped once more in its record, a chain step's result once more in the next
/// step's arguments, a chord's part results twice in the body's, and a chain's later steps
/// four times in the first message's body, so 64 leaves room for all of them. Celery's
/// Python peers read deeper.
pub const MAX_JSON_DEPTH: usize = 64;

/// Why JSON text (task arguments, a result) cannot be handed to a worker as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    #[error(
        "it nests {depth} levels of arrays and objects; the limit is {MAX_JSON_DEPTH}: flatten the data or pass it by reference"
    )]
    TooDeep {
        /// The depth found.
        depth: usize,
    },
    /// A UTF-16 surrogate escape without its pair (`"\ud800"`): no character, so no reader
    /// that wants text (serde_json, Rust strings) takes it.
    #[error(
        "it holds the escape {0}, half of a UTF-16 surrogate pair without the other half, which is no character"
    )]
    LoneSurrogate(String),
    /// Other syntax a JSON reader refuses, such as a number beyond a 64-bit float
    /// (`1e999999`): serde_json's words, with the position.
    #[error("{0}")]
    Unreadable(String),
    /// An integer beyond 64 bits where the reader would round it to a float.
    #[error(
        "it holds the integer {0}, beyond 64 bits, which a handler taking JSON values would receive rounded: register the task with Worker::task_raw to get the text as written"
    )]
    WideInteger(String),
}

/// What one pass over JSON text finds.
#[derive(Default)]
struct Shape<'a> {
    /// The deepest nesting of arrays and objects.
    depth: usize,
    /// The first integer beyond 64 bits.
    wide: Option<&'a str>,
    /// The first `\uXXXX` escape that is half a surrogate pair alone.
    lone_surrogate: Option<&'a str>,
}

/// The UTF-16 code unit of the escape `\uXXXX` at `at`, if there is one.
fn escaped_unit(text: &str, at: usize) -> Option<u16> {
    let escape = text.get(at..at + 6)?;
    let hex = escape.strip_prefix("\\u")?;
    u16::from_str_radix(hex, 16).ok()
}

/// One pass over the bytes of text that is already JSON, no recursion: how deep it nests, its
/// first integer beyond 64 bits, its first lone surrogate escape.
fn shape(text: &str) -> Shape<'_> {
    let bytes = text.as_bytes();
    let mut found = Shape::default();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        if let Some(unit) = escaped_unit(text, i) {
                            let paired = (0xD800..0xDC00).contains(&unit)
                                && escaped_unit(text, i + 6)
                                    .is_some_and(|low| (0xDC00..0xE000).contains(&low));
                            if paired {
                                i += 6;
                            } else if (0xD800..0xE000).contains(&unit) {
                                found.lone_surrogate =
                                    found.lone_surrogate.or_else(|| text.get(i..i + 6));
                            }
                        }
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                found.depth = found.depth.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                // ASCII only between `start` and `i`: the slice is on character boundaries.
                let number = text.get(start..=i).unwrap_or_default();
                if found.wide.is_none()
                    && !number.contains(['.', 'e', 'E'])
                    && number.parse::<i64>().is_err()
                    && number.parse::<u64>().is_err()
                {
                    found.wide = Some(number);
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Whether a worker can read `text` (JSON, as [`RawJson`] holds it): nested at most
/// [`MAX_JSON_DEPTH`] levels, every number within a 64-bit float's range (integers wider than
/// 64 bits are fine: they travel as written), no lone surrogate escapes.
pub fn check_json(text: &str) -> Result<(), JsonError> {
    let found = shape(text);
    if found.depth > MAX_JSON_DEPTH {
        return Err(JsonError::TooDeep { depth: found.depth });
    }
    if let Some(escape) = found.lone_surrogate {
        return Err(JsonError::LoneSurrogate(escape.to_owned()));
    }
    serde_json::from_str::<Value>(text)
        .map(drop)
        .map_err(|e| JsonError::Unreadable(e.to_string()))
}

/// `text` as a JSON value, for handlers that take values: [`check_json`], and also refused when
/// an integer is wider than 64 bits (a value would hold it rounded).
pub fn read_value(text: &str) -> Result<Value, JsonError> {
    check_json(text)?;
    if let Some(wide) = shape(text).wide {
        return Err(JsonError::WideInteger(wide.to_owned()));
    }
    serde_json::from_str(text).map_err(|e| JsonError::Unreadable(e.to_string()))
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

/// The separator between a queue's name and its priority bucket in list names.
pub const PRIORITY_SEP: &str = "\x06\x16";

/// The priority buckets kombu's Redis transport uses.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The bucket a priority falls in (kombu clamps to 0–9, then rounds down to a step).
pub fn priority_bucket(priority: u32) -> u8 {
    let clamped = priority.min(9) as u8;
    PRIORITY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|step| *step <= clamped)
        .unwrap_or(0)
}

/// The Redis list holding `queue`'s messages of `priority`.
pub fn queue_list(queue: &str, priority: u32) -> String {
    match priority_bucket(priority) {
        0 => queue.to_owned(),
        bucket => format!("{queue}{PRIORITY_SEP}{bucket}"),
    }
}

/// The lists to `BRPOP`, in the order Celery's workers use: every queue's bucket 0, then every
/// queue's bucket 3, and so on.
pub fn consume_order(queues: &[&str]) -> Vec<String> {
    PRIORITY_STEPS
        .iter()
        .flat_map(|step| queues.iter().map(move |q| queue_list(q, u32::from(*step))))
        .collect()
}

/// The result record key of a task.
pub fn result_key(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

/// Why a message cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The list element is not UTF-8 text, so not JSON.
    #[error("not a kombu message envelope: not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// The list element is not a kombu JSON envelope.
    #[error("not a kombu message envelope: {0}")]
    Envelope(String),
    /// A serializer other than JSON.
    #[error(
        "content type {0:?} is not accepted: only application/json (Celery's task_serializer = 'json')"
    )]
    ContentType(String),
    /// A body encoding other than base64.
    #[error("body encoding {0:?} is not supported: kombu's Redis transport uses base64")]
    BodyEncoding(String),
    /// The body does not decode to `[args, kwargs, embed]`.
    #[error("the body is not a protocol v2 payload [args, kwargs, embed]: {0}")]
    Body(String),
    /// Headers without a task name: Celery's protocol v1 or something else.
    #[error("not Celery message protocol v2 (headers lack {0:?})")]
    Version(&'static str),
}

/// Where kombu says a message was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// The exchange; Celery publishes through the default one, `""`.
    pub exchange: String,
    /// The routing key: the queue's name.
    pub routing_key: String,
    /// Set on a message put back after its consumer did not ack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<bool>,
}

/// kombu's message properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    /// The task id.
    pub correlation_id: String,
    /// The publishing app's id (unused by the Redis result backend).
    #[serde(default)]
    pub reply_to: Option<String>,
    /// 2 (persistent) for tasks.
    pub delivery_mode: u8,
    /// Exchange and routing key.
    pub delivery_info: DeliveryInfo,
    /// The priority as given (the list name holds the bucket).
    #[serde(default, deserialize_with = "nullable")]
    pub priority: u32,
    /// `base64`.
    pub body_encoding: String,
    /// The publisher's uuid for this delivery: the field in the `unacked` hash.
    pub delivery_tag: String,
    /// Anything else (e.g. `origin` on a retry).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Celery protocol v2 headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headers {
    /// `py` from Python clients.
    #[serde(default = "default_lang", deserialize_with = "nullable")]
    pub lang: String,
    /// The task name.
    pub task: String,
    /// The task id.
    pub id: String,
    /// A display name overriding the task name.
    #[serde(default)]
    pub shadow: Option<String>,
    /// When to run, ISO-8601 UTC, if delayed.
    #[serde(default)]
    pub eta: Option<String>,
    /// When it expires unrun, ISO-8601 UTC.
    #[serde(default)]
    pub expires: Option<String>,
    /// The group it belongs to.
    #[serde(default)]
    pub group: Option<String>,
    /// Its place in the group.
    #[serde(default)]
    pub group_index: Option<u64>,
    /// How many times it was retried.
    #[serde(default, deserialize_with = "nullable")]
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds.
    #[serde(default, deserialize_with = "nullable")]
    pub timelimit: (Option<f64>, Option<f64>),
    /// The workflow's first task.
    #[serde(default)]
    pub root_id: Option<String>,
    /// The task that published this one.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Display form of the args.
    #[serde(default)]
    pub argsrepr: Option<String>,
    /// Display form of the kwargs.
    #[serde(default)]
    pub kwargsrepr: Option<String>,
    /// `gen<pid>@<host>` of the publisher.
    #[serde(default)]
    pub origin: Option<String>,
    /// Whether no result is stored.
    #[serde(default, deserialize_with = "nullable")]
    pub ignore_result: bool,
    /// Nesting of `self.replace`.
    #[serde(default, deserialize_with = "nullable")]
    pub replaced_task_nesting: u32,
    /// Stamping API.
    #[serde(default)]
    pub stamped_headers: Option<Value>,
    /// Stamping API.
    #[serde(default, deserialize_with = "nullable")]
    pub stamps: Map<String, Value>,
    /// Headers beyond Celery's (e.g. `traceparent`), kept as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_lang() -> String {
    "py".into()
}

/// Reads `null` as the type's default: Celery's clients write some fields as null on some
/// paths (`send_task` leaves `ignore_result` null) and as values on others.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The workflow part of the payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Embed {
    /// Signatures to run with this task's result (`link`).
    #[serde(default)]
    pub callbacks: Option<Vec<Value>>,
    /// Signatures to run when it fails (`link_error`).
    #[serde(default)]
    pub errbacks: Option<Vec<Value>>,
    /// The remaining chain steps, **last step first**.
    #[serde(default)]
    pub chain: Option<Vec<Value>>,
    /// The chord body, for a chord header task.
    #[serde(default)]
    pub chord: Option<Value>,
}

/// One task message, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Protocol v2 headers.
    pub headers: Headers,
    /// kombu properties.
    pub properties: Properties,
    /// Positional arguments: a JSON array, as written.
    pub args: RawJson,
    /// Keyword arguments: a JSON object, as written.
    pub kwargs: RawJson,
    /// Callbacks, errbacks, chain, chord.
    pub embed: Embed,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    body: String,
    #[serde(rename = "content-encoding")]
    content_encoding: String,
    #[serde(rename = "content-type")]
    content_type: String,
    headers: Value,
    properties: Properties,
}

impl TaskMessage {
    /// Decodes one list element, whatever its bytes: a message, or why it is not one (never a
    /// panic). The fuzz target calls this.
    pub fn decode(raw: &[u8]) -> Result<Self, ProtocolError> {
        if let Err(e) = std::str::from_utf8(raw) {
            return Err(ProtocolError::NotUtf8 {
                offset: e.valid_up_to(),
            });
        }
        let envelope: Envelope =
            serde_json::from_slice(raw).map_err(|e| ProtocolError::Envelope(e.to_string()))?;
        if envelope.content_type != "application/json" {
            return Err(ProtocolError::ContentType(envelope.content_type));
        }
        if envelope.properties.body_encoding != "base64" {
            return Err(ProtocolError::BodyEncoding(
                envelope.properties.body_encoding.clone(),
            ));
        }
        for required in ["task", "id"] {
            if envelope.headers.get(required).is_none() {
                return Err(ProtocolError::Version(required));
            }
        }
        let headers: Headers = serde_json::from_value(envelope.headers)
            .map_err(|e| ProtocolError::Envelope(format!("headers: {e}")))?;
        let body = base64::engine::general_purpose::STANDARD
            .decode(envelope.body.as_bytes())
            .map_err(|e| ProtocolError::Body(format!("base64: {e}")))?;
        let (args, kwargs, embed): (RawJson, RawJson, Option<Embed>) =
            serde_json::from_slice(&body).map_err(|e| ProtocolError::Body(e.to_string()))?;
        if !args.text().trim_start().starts_with('[') {
            return Err(ProtocolError::Body("args is not a JSON array".into()));
        }
        if !kwargs.text().trim_start().starts_with('{') {
            return Err(ProtocolError::Body("kwargs is not a JSON object".into()));
        }
        Ok(Self {
            headers,
            properties: envelope.properties,
            args,
            kwargs,
            embed: embed.unwrap_or_default(),
        })
    }

    /// Encodes it as the list element kombu writes.
    pub fn encode(&self) -> String {
        let body = serde_json::to_vec(&(&self.args, &self.kwargs, &self.embed))
            .expect("JSON values always serialize");
        let envelope = Envelope {
            body: base64::engine::general_purpose::STANDARD.encode(body),
            content_encoding: "utf-8".into(),
            content_type: "application/json".into(),
            headers: serde_json::to_value(&self.headers).expect("headers serialize"),
            properties: self.properties.clone(),
        };
        serde_json::to_string(&envelope).expect("the envelope serializes")
    }

    /// Gives the task the id `id` (as a signature's preset `options.task_id` does).
    pub fn set_id(&mut self, id: &str) {
        self.headers.id = id.to_owned();
        self.properties.correlation_id = id.to_owned();
        self.headers.root_id = Some(id.to_owned());
    }

    /// The message as a Celery signature `{task, args, kwargs, options, subtask_type,
    /// immutable}`, the form chain steps and chord bodies travel in: its id, queue,
    /// priority and time limits go into `options`.
    pub fn signature(&self) -> Value {
        let mut options = Map::new();
        options.insert("task_id".into(), self.headers.id.clone().into());
        options.insert(
            "queue".into(),
            self.properties.delivery_info.routing_key.clone().into(),
        );
        options.insert("priority".into(), self.properties.priority.into());
        let (hard, soft) = self.headers.timelimit;
        if let Some(hard) = hard {
            options.insert("time_limit".into(), hard.into());
        }
        if let Some(soft) = soft {
            options.insert("soft_time_limit".into(), soft.into());
        }
        serde_json::json!({
            "task": self.headers.task,
            "args": self.args.value(),
            "kwargs": self.kwargs.value(),
            "options": options,
            "subtask_type": null,
            "immutable": false,
        })
    }

    /// The Redis list this message goes to.
    pub fn list(&self) -> String {
        queue_list(
            &self.properties.delivery_info.routing_key,
            self.properties.priority,
        )
    }
}

/// A random (version 4) UUID in its usual text form, as Celery uses for task ids and
/// delivery tags.
pub fn uuid4() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl TaskMessage {
    /// A new task, as a Celery client publishes it: fresh task id and delivery tag, the task
    /// its own workflow root.
    pub fn new(task: &str, args: RawJson, kwargs: RawJson, queue: &str, priority: u32) -> Self {
        let id = uuid4();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        Self {
            headers: Headers {
                lang: "py".into(),
                task: task.to_owned(),
                id: id.clone(),
                shadow: None,
                eta: None,
                expires: None,
                group: None,
                group_index: None,
                retries: 0,
                timelimit: (None, None),
                root_id: Some(id.clone()),
                parent_id: None,
                argsrepr: Some(args.text().to_owned()),
                kwargsrepr: Some(kwargs.text().to_owned()),
                origin: Some(format!("gen{}@{host}", std::process::id())),
                ignore_result: false,
                replaced_task_nesting: 0,
                stamped_headers: None,
                stamps: Map::new(),
                extra: Map::new(),
            },
            properties: Properties {
                correlation_id: id,
                reply_to: None,
                delivery_mode: 2,
                delivery_info: DeliveryInfo {
                    exchange: String::new(),
                    routing_key: queue.to_owned(),
                    redelivered: None,
                },
                priority,
                body_encoding: "base64".into(),
                delivery_tag: uuid4(),
                extra: Map::new(),
            },
            args,
            kwargs,
            embed: Embed::default(),
        }
    }
}

/// A task's state in Celery's result records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Not known (also: no record yet).
    Pending,
    /// A worker took it.
    Received,
    /// Running.
    Started,
    /// Done.
    Success,
    /// Raised.
    Failure,
    /// Will be retried.
    Retry,
    /// Revoked.
    Revoked,
}

impl State {
    /// The name Celery writes, e.g. `SUCCESS`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Received => "RECEIVED",
            State::Started => "STARTED",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Retry => "RETRY",
            State::Revoked => "REVOKED",
        }
    }
}

/// A result record, `celery-task-meta-<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    /// The state.
    pub status: State,
    /// The return value, or for FAILURE/RETRY `{exc_type, exc_message: [args…], exc_module}`:
    /// JSON text as written (an integer beyond 64 bits keeps its digits).
    pub result: RawJson,
    /// The formatted traceback of a failure.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Tasks this one started, each `[[id, null], null]` (Celery writes null for a task it
    /// revoked before running).
    #[serde(default, deserialize_with = "nullable")]
    pub children: Vec<Value>,
    /// When it finished, ISO-8601 UTC; null while retrying.
    #[serde(default)]
    pub date_done: Option<String>,
    /// Its group, when it has one (left out otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Its parent, when it has one (left out otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// `result_extended` fields (name, args, kwargs, worker, retries, queue) when present.
    #[serde(flatten)]
    pub extended: Map<String, Value>,
    /// The task id.
    pub task_id: String,
}

/// Now, as Celery writes times: ISO-8601 UTC with microseconds and `+00:00`.
pub fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

impl ResultMeta {
    /// A finished task's record: SUCCESS with its return value, or FAILURE with an exception
    /// value from [`exception`] and a traceback.
    pub fn finished(
        task_id: &str,
        status: State,
        result: impl Into<RawJson>,
        traceback: Option<String>,
    ) -> Self {
        Self {
            status,
            result: result.into(),
            traceback,
            children: Vec::new(),
            date_done: Some(iso_now()),
            group_id: None,
            parent_id: None,
            extended: Map::new(),
            task_id: task_id.to_owned(),
        }
    }
}

/// The `result` of a FAILURE or RETRY record: an exception as Celery describes it.
pub fn exception(exc_type: &str, message: &str, module: &str) -> Value {
    serde_json::json!({
        "exc_type": exc_type,
        "exc_message": [message],
        "exc_module": module,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The captured items of a fixture (Redis key dumps or MONITOR records).
    fn fixture_items(name: &str) -> Vec<Value> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/celery")
            .join(name);
        let fixture: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("json");
        match &fixture["data"] {
            Value::Array(items) => items.clone(),
            item => vec![item.clone()],
        }
    }

    /// Every message captured from the real Celery in `tests/fixtures/celery/`, with its list.
    fn fixture_messages(name: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for item in fixture_items(name) {
            if matches!(item["cmd"].as_str(), Some("LPUSH" | "RPUSH")) {
                out.push((
                    item["key"].as_str().expect("key").to_owned(),
                    item["raw"].as_str().expect("raw").to_owned(),
                ));
            }
            if item["type"] == "list" {
                for element in item["value"].as_array().expect("list") {
                    out.push((
                        item["key"].as_str().expect("key").to_owned(),
                        element.as_str().expect("element").to_owned(),
                    ));
                }
            }
        }
        out
    }

    /// Found by the `celery_message` fuzz target: a header float lost its last digit each
    /// time the gateway read and wrote a message, until serde_json parsed floats exactly.
    #[test]
    fn header_floats_keep_every_digit_through_decode_and_encode() {
        let message = serde_json::json!({
            "body": "W1tdLHt9LHt9XQ==",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": "t", "id": "x", "weight": 444444944444444444440.0},
            "properties": {"correlation_id": "x", "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "celery"},
                "priority": 0, "body_encoding": "base64", "delivery_tag": "t"}
        })
        .to_string();
        let once = TaskMessage::decode(message.as_bytes())
            .expect("decodes")
            .encode();
        let twice = TaskMessage::decode(once.as_bytes())
            .expect("decodes")
            .encode();
        assert_eq!(once, twice);
        assert!(once.contains("4.4444494444444444e+20"), "{once}");
    }

    #[test]
    fn priorities_map_to_kombus_buckets_and_lists() {
        let cases = [
            (0, "q"),
            (1, "q"),
            (2, "q"),
            (3, "q\x06\x163"),
            (5, "q\x06\x163"),
        ];
        for (priority, list) in cases {
            assert_eq!(queue_list("q", priority), list, "priority {priority}");
        }
        assert_eq!(queue_list("q", 6), "q\x06\x166");
        assert_eq!(queue_list("q", 9), "q\x06\x169");
        assert_eq!(queue_list("q", 255), "q\x06\x169");
        assert_eq!(
            consume_order(&["a", "b"]),
            [
                "a",
                "b",
                "a\x06\x163",
                "b\x06\x163",
                "a\x06\x166",
                "b\x06\x166",
                "a\x06\x169",
                "b\x06\x169"
            ]
        );
    }

    #[test]
    fn every_captured_celery_message_decodes_and_lands_on_its_list() {
        let files = [
            "msg_args.json",
            "msg_args_kwargs.json",
            "msg_countdown.json",
            "msg_eta.json",
            "msg_expires.json",
            "msg_timelimits.json",
            "msg_priorities.json",
            "msg_other_queue.json",
            "msg_link_errback.json",
            "msg_chain.json",
            "msg_group.json",
            "msg_chord.json",
            "msg_special_types.json",
            "msg_retry_republish.json",
        ];
        let mut seen = 0;
        for file in files {
            for (list, raw) in fixture_messages(file) {
                let message =
                    TaskMessage::decode(raw.as_bytes()).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(message.list(), list, "{file}");
                assert_eq!(message.headers.id, message.properties.correlation_id);
                // Our encoding decodes to the same message.
                let again = TaskMessage::decode(message.encode().as_bytes()).expect("re-decode");
                assert_eq!(again, message, "{file}");
                seen += 1;
            }
        }
        assert!(seen >= 20, "only {seen} messages");
    }

    #[test]
    fn workflow_fields_read_as_celery_wrote_them() {
        let (_, raw) = fixture_messages("msg_args_kwargs.json").remove(0);
        let m = TaskMessage::decode(raw.as_bytes()).expect("decode");
        assert_eq!(m.headers.task, "peers.add");
        assert_eq!(m.args.value(), serde_json::json!([2]));
        assert_eq!(m.kwargs.value()["y"], 3);
        let (_, raw) = fixture_messages("msg_timelimits.json").remove(0);
        let m = TaskMessage::decode(raw.as_bytes()).expect("decode");
        assert_eq!(m.headers.timelimit, (Some(30.0), Some(20.0)));
        let (_, raw) = fixture_messages("msg_chain.json").remove(0);
        let m = TaskMessage::decode(raw.as_bytes()).expect("decode");
        let chain = m.embed.chain.expect("remaining steps");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0]["task"], "peers.add", "the last step comes first");
        assert_eq!(chain[1]["task"], "peers.mul");
    }

    #[test]
    fn integers_beyond_64_bits_pass_through_unchanged() {
        let (_, raw) = fixture_messages("msg_special_types.json").remove(0);
        let m = TaskMessage::decode(raw.as_bytes()).expect("decode");
        assert!(
            m.kwargs.text().contains("1180591620717411303424"),
            "{}",
            m.kwargs.text()
        );
        let again = TaskMessage::decode(m.encode().as_bytes()).expect("decode");
        assert!(again.kwargs.text().contains("1180591620717411303424"));
        assert_eq!(
            m.kwargs.value()["uid"]["__value__"]["hex"],
            "12345678123456781234567812345678"
        );
    }

    #[test]
    fn other_serializers_and_protocol_v1_are_refused_by_name() {
        let (_, raw) = fixture_messages("msg_args.json").remove(0);
        let mut envelope: Value = serde_json::from_str(&raw).expect("json");
        envelope["content-type"] = "application/x-python-serialize".into();
        let e = TaskMessage::decode(envelope.to_string().as_bytes()).expect_err("pickle");
        assert!(
            e.to_string().contains("application/x-python-serialize"),
            "{e}"
        );
        let mut v1: Value = serde_json::from_str(&raw).expect("json");
        v1["headers"] = serde_json::json!({});
        assert_eq!(
            TaskMessage::decode(v1.to_string().as_bytes()),
            Err(ProtocolError::Version("task"))
        );
        assert!(matches!(
            TaskMessage::decode(b"not json"),
            Err(ProtocolError::Envelope(_))
        ));
    }

    #[test]
    fn json_a_worker_cannot_read_is_named() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check_json(&deep(MAX_JSON_DEPTH)), Ok(()));
        assert_eq!(
            check_json(&deep(MAX_JSON_DEPTH + 1)),
            Err(JsonError::TooDeep { depth: 65 })
        );
        assert_eq!(
            check_json(&deep(100_000)),
            Err(JsonError::TooDeep { depth: 100_000 })
        );
        // Brackets inside strings, escaped quotes included, are not nesting.
        assert_eq!(check_json(r#"["[[[[\"[[[[", {"a]": "}}}"}]"#), Ok(()));
        for (text, escape) in [
            (r#"["\ud800"]"#, r"\ud800"),
            (r#"{"k": "a\uDFFFb"}"#, r"\uDFFF"),
            (r#"["\ud800\ud800"]"#, r"\ud800"),
            (r#"["\\ud800", "\ud83d\ude00", "\udbff"]"#, r"\udbff"),
        ] {
            assert_eq!(
                check_json(text),
                Err(JsonError::LoneSurrogate(escape.into())),
                "{text}"
            );
        }
        assert_eq!(
            check_json(r#"["\ud83d\ude00 \\ud800"]"#),
            Ok(()),
            "a pair, and an escaped backslash"
        );
        for (text, words) in [
            ("[1e999999]", "number out of range"),
            ("[-1e400]", "number out of range"),
        ] {
            match check_json(text) {
                Err(JsonError::Unreadable(why)) => assert!(why.contains(words), "{text}: {why}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let wide = "[123456789012345678901234567890, -99999999999999999999, 1.5e3]";
        assert_eq!(check_json(wide), Ok(()), "wide integers travel as text");
        assert_eq!(
            read_value(wide),
            Err(JsonError::WideInteger(
                "123456789012345678901234567890".into()
            ))
        );
        assert_eq!(
            read_value("[18446744073709551615, -9223372036854775808, 2.5]"),
            Ok(serde_json::json!([18446744073709551615u64, i64::MIN, 2.5]))
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_named_not_a_panic() {
        assert_eq!(
            TaskMessage::decode(b"{\"body\":\"\xff\xfe\"}"),
            Err(ProtocolError::NotUtf8 { offset: 9 })
        );
        for raw in [&b""[..], b"\xff", b"{", b"[1,", b"null", b"{\"body\": 1}"] {
            assert!(TaskMessage::decode(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn a_result_keeps_its_digits_through_its_record() {
        let raw = r#"{"status": "SUCCESS", "result": [123456789012345678901234567890], "traceback": null, "children": [], "date_done": "2026-01-01T00:00:00.000000+00:00", "task_id": "x", "name": "t"}"#;
        let meta: ResultMeta = serde_json::from_str(raw).expect("a record");
        assert_eq!(meta.result.text(), "[123456789012345678901234567890]");
        assert_eq!(meta.extended["name"], "t");
        let again = serde_json::to_string(&meta).expect("encode");
        assert!(
            again.contains("[123456789012345678901234567890]"),
            "{again}"
        );
        let meta = ResultMeta::finished(
            "y",
            State::Success,
            RawJson::parse("2e0").expect("json"),
            None,
        );
        assert_eq!(meta.result.text(), "2e0");
    }

    #[test]
    fn result_records_read_and_write_in_celerys_shape() {
        for file in [
            "result_success.json",
            "result_failure.json",
            "result_retry.json",
            "result_success_extended.json",
        ] {
            for item in fixture_items(file) {
                let raw = item["value"].as_str().expect("string value");
                let meta: ResultMeta =
                    serde_json::from_str(raw).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(item["key"], result_key(&meta.task_id));
                let ours: Value =
                    serde_json::from_str(&serde_json::to_string(&meta).expect("encode"))
                        .expect("json");
                let theirs: Value = serde_json::from_str(raw).expect("json");
                assert_eq!(ours, theirs, "{file}: the same record, field for field");
            }
        }
    }

    #[test]
    fn a_record_of_a_task_celery_revoked_before_running_reads() {
        // Celery 5.7 writes `children: null` when its worker revokes a task it held (found by
        // the revocation interop test).
        let raw = r#"{"status": "REVOKED", "result": {"exc_type": "TaskRevokedError", "exc_message": ["revoked"], "exc_module": "celery.exceptions"}, "traceback": null, "children": null, "date_done": "2026-11-27T16:40:00.000000+00:00", "task_id": "x"}"#;
        let meta: ResultMeta = serde_json::from_str(raw).expect("a Celery record");
        assert_eq!(meta.status, State::Revoked);
        assert!(meta.children.is_empty());
    }
}
