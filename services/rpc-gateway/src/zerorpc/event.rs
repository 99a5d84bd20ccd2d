//! zerorpc's unit of exchange: an event, the MessagePack array `[header, name, args]`, as
//! zerorpc-python 0.6.3 writes it (`shared/protocols/zerorpc/FORMAT.md`).
//!
//! - `header` is a map: `message_id` (32 ASCII bytes written as msgpack **bin**), `v` (3), and
//!   on every event after a channel's first `response_to` (the first event's id); middleware
//!   may add keys (`traceparent`, a token), which are kept in order.
//! - `name` is a method name or one of [`OK`], [`ERR`], [`STREAM`], [`STREAM_DONE`],
//!   [`HEARTBEAT`], [`MORE`].
//! - `args` is kept as a MessagePack value: its exact wire types (bin vs str, integer widths)
//!   survive a decode and re-encode, so the gateway passes arguments through unchanged.
//!
//! Decoding takes bytes from anyone who can reach a socket, before any token is checked, so
//! [`Event::decode`] never panics and its recursion is bounded: header values and arguments
//! may nest arrays and maps at most [`MAX_DEPTH`] levels deep (the argument list itself is
//! one). An event whose arguments nest deeper is refused as [`EventError::TooDeep`], which
//! still carries its ids, so the peer can be answered on its channel.

use std::sync::atomic::{AtomicU64, Ordering};

use rmpv::Value;

/// A successful reply: `args` = `[result]`.
pub const OK: &str = "OK";
/// A failed call: `args` = `[name, message, traceback]` (v1 peers: `[repr]`).
pub const ERR: &str = "ERR";
/// One item of a streamed reply: `args` = the item itself.
pub const STREAM: &str = "STREAM";
/// The end of a stream: `args` = nil.
pub const STREAM_DONE: &str = "STREAM_DONE";
/// A channel's heartbeat: `args` = `[0]`.
pub const HEARTBEAT: &str = "_zpc_hb";
/// Flow control, more credit for the peer: `args` = `[n]`.
pub const MORE: &str = "_zpc_more";

/// The protocol version we speak (zerorpc 0.6.3 always writes 3).
pub const VERSION: u64 = 3;

/// The deepest nesting of arrays and maps accepted in an event's arguments (the argument list
/// counts as one level) and in each header value. Decoding recurses once per level, so this
/// bounds the stack a peer can make us use; 100 levels is far beyond what real calls carry.
pub const MAX_DEPTH: usize = 100;

/// Why bytes are not an event; each names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not MessagePack at all, or trailing bytes.
    #[error("not a MessagePack value: {0}")]
    Msgpack(String),
    /// MessagePack, but not `[header, name, args]`.
    #[error("not a zerorpc event: {0}")]
    Shape(String),
    /// Arrays and maps nested deeper than [`MAX_DEPTH`] levels, in the header or in the
    /// arguments; with the event's ids when its header could be read, so that the peer can be
    /// answered on its channel.
    #[error(
        "the {part} of the event nest arrays and maps deeper than {limit} levels: send flatter data"
    )]
    TooDeep {
        /// What nests too deep: `header` or `arguments`.
        part: &'static str,
        /// The limit, [`MAX_DEPTH`].
        limit: usize,
        /// Whose event it was, when the header was read.
        origin: Option<Origin>,
    },
}

/// The ids and name of an event whose arguments could not be read: where to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The event's own id.
    pub message_id: Vec<u8>,
    /// The channel it belongs to, when it is not the first event of one.
    pub response_to: Option<Vec<u8>>,
    /// The event's name.
    pub name: String,
}

impl Origin {
    /// The channel the event belongs to: its `response_to`, or its own id when it opens one.
    pub fn channel(&self) -> &[u8] {
        self.response_to.as_deref().unwrap_or(&self.message_id)
    }
}

/// Reads one MessagePack value nesting arrays and maps at most `levels` deep; a value that
/// nests deeper is refused with `None` in the error slot, other faults with their reason.
///
/// rmpv bounds its recursion in steps, not levels: two per array or map and up to three for
/// a string, binary or extension leaf, so `2 * levels + 3` steps admit every value of
/// `levels` levels and some of one more; [`depth`] then draws the line exactly.
pub(crate) fn read_nested(reader: &mut &[u8], levels: usize) -> Result<Value, Option<String>> {
    match rmpv::decode::read_value_with_max_depth(reader, 2 * levels + 3) {
        Ok(value) if depth(&value) <= levels => Ok(value),
        Ok(_) | Err(rmpv::decode::Error::DepthLimitExceeded) => Err(None),
        Err(e) => Err(Some(e.to_string())),
    }
}

/// How many levels of arrays and maps `value` nests (a scalar: 0, `[1]`: 1, `[[]]`: 2),
/// counted without recursion, so any value may be measured.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, above)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Map(entries) => Box::new(entries.iter().flat_map(|(k, v)| [k, v])),
            _ => continue,
        };
        deepest = deepest.max(above + 1);
        pending.extend(children.map(|child| (child, above + 1)));
    }
    deepest
}

/// The header map.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// This event's id: 32 ASCII bytes.
    pub message_id: Vec<u8>,
    /// The protocol version; `None` when absent (a v1 peer).
    pub version: Option<u64>,
    /// The id of the channel's first event, on every later event.
    pub response_to: Option<Vec<u8>>,
    /// Other keys (middleware: trace context, tokens), in order.
    pub extra: Vec<(Value, Value)>,
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The header.
    pub header: Header,
    /// A method name or a protocol event name.
    pub name: String,
    /// The arguments, as written.
    pub args: Value,
}

/// A per-process counter in the first 8 hex digits of every message id, as zerorpc-python
/// keeps one: starts at a random value, goes up by one per event.
static COUNTER: AtomicU64 = AtomicU64::new(u64::MAX);

/// A fresh message id: 8 hex digits of the process counter, then 24 random hex digits.
pub fn new_message_id() -> Vec<u8> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).expect("the OS random source is available");
    let start = u64::from(u32::from_le_bytes([
        random[12], random[13], random[14], random[15],
    ]));
    let _ = COUNTER.compare_exchange(u64::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
    let tail: String = random[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{count:08x}{tail}").into_bytes()
}

/// An id as it may arrive: msgpack bin (what zerorpc writes) or str (tolerated).
fn id_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Binary(b) => Some(b.clone()),
        Value::String(s) => s.as_str().map(|s| s.as_bytes().to_vec()),
        _ => None,
    }
}

impl Event {
    /// The first event of a new channel (a request): a fresh id, version 3.
    pub fn request(name: &str, args: Value) -> Self {
        Self {
            header: Header {
                message_id: new_message_id(),
                version: Some(VERSION),
                response_to: None,
                extra: Vec::new(),
            },
            name: name.to_owned(),
            args,
        }
    }

    /// A later event on the channel `channel` (the id of its first event).
    pub fn reply(channel: &[u8], name: &str, args: Value) -> Self {
        Self {
            header: Header {
                message_id: new_message_id(),
                version: Some(VERSION),
                response_to: Some(channel.to_vec()),
                extra: Vec::new(),
            },
            name: name.to_owned(),
            args,
        }
    }

    /// The channel this event belongs to: its `response_to`, or its own id when it opens one.
    pub fn channel(&self) -> &[u8] {
        self.header
            .response_to
            .as_deref()
            .unwrap_or(&self.header.message_id)
    }

    /// The arguments as a positional list: an array as it is, nothing as none, any other
    /// single value as the one argument (zerorpc-python accepts all three).
    pub fn positional_args(&self) -> Vec<Value> {
        match &self.args {
            Value::Array(a) => a.clone(),
            Value::Nil => Vec::new(),
            other => vec![other.clone()],
        }
    }

    /// A header key beyond zerorpc's own, when it is a string (e.g. `traceparent`).
    pub fn header_str(&self, key: &str) -> Option<&str> {
        self.header
            .extra
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .and_then(|(_, v)| v.as_str())
    }

    /// Encodes it as zerorpc does: keys in the order message_id, v, response_to, then extras.
    pub fn encode(&self) -> Vec<u8> {
        let mut header = vec![(
            Value::from("message_id"),
            Value::Binary(self.header.message_id.clone()),
        )];
        if let Some(v) = self.header.version {
            header.push((Value::from("v"), Value::from(v)));
        }
        if let Some(to) = &self.header.response_to {
            header.push((Value::from("response_to"), Value::Binary(to.clone())));
        }
        header.extend(self.header.extra.iter().cloned());
        let event = Value::Array(vec![
            Value::Map(header),
            Value::from(self.name.as_str()),
            self.args.clone(),
        ]);
        let mut out = Vec::with_capacity(64);
        rmpv::encode::write_value(&mut out, &event).expect("writing to a Vec cannot fail");
        out
    }

    /// Decodes one event; the error names what is wrong. Safe on any bytes: it never panics,
    /// and nesting is bounded by [`MAX_DEPTH`] (the entry point for fuzzing the decoder).
    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        let mut reader = bytes;
        let (header, name) = Self::read_head(&mut reader)?;
        let args = read_nested(&mut reader, MAX_DEPTH).map_err(|fault| match fault {
            None => EventError::TooDeep {
                part: "arguments",
                limit: MAX_DEPTH,
                origin: Some(Origin {
                    message_id: header.message_id.clone(),
                    response_to: header.response_to.clone(),
                    name: name.clone(),
                }),
            },
            Some(reason) => EventError::Msgpack(reason),
        })?;
        if !reader.is_empty() {
            return Err(EventError::Msgpack(format!(
                "{} bytes after the event",
                reader.len()
            )));
        }
        Ok(Self { header, name, args })
    }

    /// Decodes an event's header and name only, leaving its arguments unread: enough to
    /// answer a request that is refused for its size without building its arguments.
    pub fn decode_head(bytes: &[u8]) -> Result<(Header, String), EventError> {
        Self::read_head(&mut &bytes[..])
    }

    /// Reads the event's array marker, its header and its name, leaving `reader` at `args`.
    fn read_head(reader: &mut &[u8]) -> Result<(Header, String), EventError> {
        let parts = array_len(reader)?;
        if parts != 3 {
            return Err(EventError::Shape(format!(
                "the event has {parts} parts, not 3 (header, name, args)"
            )));
        }
        let Value::Map(entries) =
            read_nested(reader, MAX_DEPTH + 1).map_err(|fault| match fault {
                None => EventError::TooDeep {
                    part: "header",
                    limit: MAX_DEPTH,
                    origin: None,
                },
                Some(reason) => EventError::Msgpack(reason),
            })?
        else {
            return Err(EventError::Shape("the header is not a map".into()));
        };
        let not_a_name = || EventError::Shape("the event name is not a string".into());
        let name = match read_nested(reader, 0).map_err(|fault| match fault {
            None => not_a_name(),
            Some(reason) => EventError::Msgpack(reason),
        })? {
            Value::String(s) => s
                .into_str()
                .ok_or_else(|| EventError::Shape("the event name is not UTF-8".into()))?,
            Value::Binary(b) => String::from_utf8(b)
                .map_err(|_| EventError::Shape("the event name is not UTF-8".into()))?,
            _ => return Err(not_a_name()),
        };
        let mut header = Header {
            message_id: Vec::new(),
            version: None,
            response_to: None,
            extra: Vec::new(),
        };
        for (key, value) in entries {
            match key.as_str() {
                Some("message_id") => {
                    header.message_id = id_bytes(&value).ok_or_else(|| {
                        EventError::Shape("message_id is neither bytes nor a string".into())
                    })?;
                }
                Some("v") => {
                    header.version = Some(value.as_u64().ok_or_else(|| {
                        EventError::Shape("v is not a non-negative integer".into())
                    })?);
                }
                Some("response_to") => {
                    header.response_to = Some(id_bytes(&value).ok_or_else(|| {
                        EventError::Shape("response_to is neither bytes nor a string".into())
                    })?);
                }
                _ => header.extra.push((key, value)),
            }
        }
        if header.message_id.is_empty() {
            return Err(EventError::Shape("the header has no message_id".into()));
        }
        Ok((header, name))
    }
}

/// Reads a MessagePack array marker and its length (fixarray, array 16 or array 32). Any
/// other value is refused: as not an array when it is MessagePack, else with the reason.
fn array_len(reader: &mut &[u8]) -> Result<usize, EventError> {
    let truncated = || EventError::Msgpack("the event is cut short".into());
    let (len, marker) = match reader.first() {
        Some(&b) if b & 0xf0 == 0x90 => (usize::from(b & 0x0f), 1),
        Some(0xdc) => {
            let n = reader.get(1..3).ok_or_else(truncated)?;
            (usize::from(u16::from_be_bytes([n[0], n[1]])), 3)
        }
        Some(0xdd) => {
            let n = reader.get(1..5).ok_or_else(truncated)?;
            let len = u32::from_be_bytes([n[0], n[1], n[2], n[3]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 5)
        }
        _ => {
            return Err(match read_nested(&mut &reader[..], MAX_DEPTH) {
                Ok(_) | Err(None) => EventError::Shape("the event is not an array".into()),
                Err(Some(reason)) => EventError::Msgpack(reason),
            });
        }
    };
    *reader = &reader[marker..];
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Every event captured from zerorpc-python, in both directions.
    fn captured() -> Vec<(String, Vec<u8>)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/zerorpc");
        let mut events = Vec::new();
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let path = entry.expect("entry").path();
            let doc: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            let records = doc["data"].as_array().cloned().unwrap_or_default();
            for record in records.iter().chain(
                doc["data"]["frames"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            ) {
                if let Some(frames) = record["frames_hex"].as_array()
                    && let Some(last) = frames.last().and_then(|f| f.as_str())
                    && !last.is_empty()
                {
                    events.push((path.display().to_string(), hex(last)));
                }
            }
        }
        events
    }

    #[test]
    fn every_captured_event_decodes_and_encodes_to_the_same_bytes() {
        let events = captured();
        assert!(events.len() > 50, "only {} events found", events.len());
        for (file, bytes) in events {
            let event = Event::decode(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                event.encode(),
                bytes,
                "{file}: {} re-encoded differently",
                event.name
            );
        }
    }

    #[test]
    fn a_request_and_its_reply_share_a_channel() {
        let request = Event::request("add", Value::Array(vec![1.into(), 2.into()]));
        assert_eq!(request.header.message_id.len(), 32);
        assert!(request.header.message_id.iter().all(u8::is_ascii_hexdigit));
        let reply = Event::reply(request.channel(), OK, Value::Array(vec![3.into()]));
        assert_eq!(reply.channel(), request.channel());
        let again = Event::decode(&reply.encode()).expect("decodes");
        assert_eq!(again, reply);
        // Consecutive ids count up in their first 8 hex digits, as zerorpc-python's do.
        let (a, b) = (new_message_id(), new_message_id());
        let n = |id: &[u8]| {
            u64::from_str_radix(std::str::from_utf8(&id[..8]).expect("ascii"), 16).expect("hex")
        };
        assert_eq!((n(&a) + 1) & 0xffff_ffff, n(&b));
    }

    /// `levels` arrays, one inside the other, around `leaf`.
    fn nested(levels: usize, leaf: Value) -> Value {
        (0..levels).fold(leaf, |inner, _| Value::Array(vec![inner]))
    }

    #[test]
    fn nesting_is_bounded_and_a_request_too_deep_keeps_its_ids() {
        // The frame of issue 14, which overflowed the stack before any token was looked at: a
        // "header" of a thousand nested arrays. No header, so no id to answer: refused whole.
        for levels in [1000, 100_000] {
            let mut frame = vec![0x93];
            frame.extend(std::iter::repeat_n(0x91, levels));
            frame.push(0xc0);
            let refused = Event::decode(&frame).expect_err("too deep");
            assert_eq!(
                refused,
                EventError::TooDeep {
                    part: "header",
                    limit: MAX_DEPTH,
                    origin: None
                }
            );
            assert!(
                refused.to_string().contains("deeper than 100 levels"),
                "{refused}"
            );
        }
        // Arguments: the list and MAX_DEPTH - 1 levels inside it pass, whatever the leaf.
        for leaf in [
            Value::Nil,
            Value::from("x"),
            Value::Binary(vec![1]),
            Value::Array(vec![]),
        ] {
            let inside = if leaf.is_array() {
                MAX_DEPTH - 2
            } else {
                MAX_DEPTH - 1
            };
            let fits = Event::request("add", Value::Array(vec![nested(inside, leaf.clone())]));
            assert_eq!(Event::decode(&fits.encode()).as_ref(), Ok(&fits));
            let deeper = Event::request("add", Value::Array(vec![nested(inside + 1, leaf)]));
            let Err(EventError::TooDeep {
                part: "arguments",
                origin: Some(origin),
                ..
            }) = Event::decode(&deeper.encode())
            else {
                panic!("arguments {} deep were not refused", MAX_DEPTH + 1);
            };
            assert_eq!(origin.message_id, deeper.header.message_id);
            assert_eq!((origin.name.as_str(), origin.response_to), ("add", None));
        }
        // A reply too deep names its channel, so its call can be failed.
        let reply = Event::reply(b"channel", OK, nested(MAX_DEPTH + 1, Value::Nil));
        match Event::decode(&reply.encode()) {
            Err(EventError::TooDeep {
                origin: Some(o), ..
            }) => assert_eq!(o.channel(), b"channel"),
            other => panic!("{other:?}"),
        }
        // The head alone reads without the arguments.
        let (header, name) = Event::decode_head(&reply.encode()).expect("head");
        assert_eq!((header, name.as_str()), (reply.header.clone(), OK));
    }

    #[test]
    fn malformed_events_are_refused_with_the_reason() {
        let refuse = |bytes: &[u8]| Event::decode(bytes).expect_err("refused").to_string();
        assert!(refuse(&[0x93, 0x80]).contains("MessagePack"), "truncated");
        assert!(refuse(&[0x01]).contains("not an array"));
        assert!(refuse(&[0x92, 0x80, 0xa1, b'x']).contains("2 parts"));
        assert!(refuse(&[0x93, 0x80, 0x01, 0xc0]).contains("name"));
        assert!(refuse(&[0x93, 0x80, 0xa1, b'x', 0xc0]).contains("message_id"));
        let mut trailing = Event::request("x", Value::Nil).encode();
        trailing.push(0);
        assert!(refuse(&trailing).contains("after the event"));
        assert!(refuse(&[0xdc, 0x00]).contains("cut short"));
        assert!(refuse(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x80]).contains("4294967295 parts"));
        assert!(refuse(&[0x93, 0x90]).contains("header is not a map"));
        assert!(refuse(&[0x93, 0x80, 0x91, 0xa1, b'x', 0xc0]).contains("name is not a string"));
        assert!(refuse(&[]).contains("MessagePack"));
    }
}
