//! A zerorpc server: methods by name on a ROUTER socket, each call a channel of its own with
//! heartbeats, streamed replies under zerorpc's flow control, and the built-in `_zerorpc_*`
//! methods — what zerorpc-python's `Server` does, so its clients call ours unchanged.
//!
//! Heartbeats run on their own timer per call, never behind the handler: a slow handler does
//! not starve them. A peer silent for two heartbeat periods (checked each period, so a silent
//! peer is detected after about three, as zerorpc-python does) loses its call: the handler is
//! dropped and nothing is sent, which is what zerorpc-python's server does too.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use rmpv::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::{ERR, Event, EventError, HEARTBEAT, MORE, OK, STREAM, STREAM_DONE, VERSION};
use super::socket::{Frames, Socket};

/// zerorpc's default heartbeat period.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);

/// A failure to report to the caller: zerorpc's `[name, message, traceback]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// The exception's type name, e.g. `ValueError`.
    pub name: String,
    /// Its message.
    pub message: String,
    /// A traceback, or an empty string.
    pub traceback: String,
}

impl RemoteError {
    /// A failure named `name`.
    pub fn new(name: &str, message: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            message: message.into(),
            traceback: String::new(),
        }
    }
}

type Reply = Pin<Box<dyn Future<Output = Result<Value, RemoteError>> + Send>>;
/// Items of a streamed answer.
pub type Items = Pin<Box<dyn Stream<Item = Result<Value, RemoteError>> + Send>>;

/// What a call produces: one value, or a stream of items.
pub enum Answer {
    /// Sent as `OK [value]`.
    Value(Value),
    /// Sent as `STREAM` items under flow control, then `STREAM_DONE`.
    Stream(Items),
}

/// The work of a call in progress.
pub type Work = Pin<Box<dyn Future<Output = Result<Answer, RemoteError>> + Send>>;

type Fallback = Arc<dyn Fn(Event) -> Work + Send + Sync>;

#[derive(Clone)]
enum Handler {
    Call(Arc<dyn Fn(Vec<Value>) -> Reply + Send + Sync>),
    Stream(Arc<dyn Fn(Vec<Value>) -> Items + Send + Sync>),
}

#[derive(Clone)]
struct Method {
    handler: Handler,
    args: Vec<String>,
    doc: Option<String>,
}

/// A zerorpc service: its name and methods.
#[derive(Clone, Default)]
pub struct Service {
    name: String,
    methods: HashMap<String, Method>,
    heartbeat: Option<Duration>,
    /// Serves calls to methods not registered here (the gateway's forwarding).
    fallback: Option<Fallback>,
    /// Requests larger than this are answered with an error, not run.
    max_message_bytes: Option<usize>,
    /// Calls one peer (connection) may have open at once; more are answered `TooManyCalls`.
    max_calls_per_peer: Option<usize>,
    /// Counts messages refused or dropped, by reason.
    refused: Option<prometheus::IntCounterVec>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Service {
    /// A service named `name` (what `_zerorpc_name` answers).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Answers calls to unregistered methods with `handler`, which gets the whole request
    /// event (its header may carry a token or a trace context).
    pub fn fallback<F>(mut self, handler: F) -> Self
    where
        F: Fn(Event) -> Work + Send + Sync + 'static,
    {
        self.fallback = Some(Arc::new(handler));
        self
    }

    /// Answers requests larger than `bytes` with `MessageTooLarge` instead of running them.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// Answers a peer's requests beyond `calls` open at once with `TooManyCalls`.
    pub fn max_calls_per_peer(mut self, calls: usize) -> Self {
        self.max_calls_per_peer = Some(calls);
        self
    }

    /// Counts refused and dropped messages in `counter`, labelled by reason: `malformed`
    /// (not a zerorpc event: dropped, there is no id to answer), `frames` (more than
    /// [`MAX_FRAMES`]: dropped), `oversized`, `too-deep` (arguments nested deeper than
    /// [`super::event::MAX_DEPTH`]), `version` (a protocol version above 3), `busy` (the
    /// peer's open calls at their limit), `duplicate` (a request on an id already open),
    /// `shutting-down`.
    pub fn count_refusals(mut self, counter: prometheus::IntCounterVec) -> Self {
        self.refused = Some(counter);
        self
    }

    fn refused(&self, reason: &str) {
        if let Some(counter) = &self.refused {
            counter.with_label_values(&[reason]).inc();
        }
    }

    /// Sets the heartbeat period (zerorpc's default is 5 s).
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = Some(period);
        self
    }

    /// Registers a method taking positional arguments (`args` names them for introspection).
    pub fn method<F, Fut>(self, name: &str, args: &[&str], doc: &str, handler: F) -> Self
    where
        F: Fn(Vec<Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, RemoteError>> + Send + 'static,
    {
        self.register(
            name,
            args,
            doc,
            Handler::Call(Arc::new(move |a| Box::pin(handler(a)))),
        )
    }

    /// Registers a method whose reply is a stream of items.
    pub fn stream<F, S>(self, name: &str, args: &[&str], doc: &str, handler: F) -> Self
    where
        F: Fn(Vec<Value>) -> S + Send + Sync + 'static,
        S: Stream<Item = Result<Value, RemoteError>> + Send + 'static,
    {
        self.register(
            name,
            args,
            doc,
            Handler::Stream(Arc::new(move |a| Box::pin(handler(a)))),
        )
    }

    fn register(mut self, name: &str, args: &[&str], doc: &str, handler: Handler) -> Self {
        self.methods.insert(
            name.to_owned(),
            Method {
                handler,
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                doc: (!doc.is_empty()).then(|| doc.to_owned()),
            },
        );
        self
    }

    fn period(&self) -> Duration {
        self.heartbeat.unwrap_or(HEARTBEAT_PERIOD)
    }

    /// Runs the method an event names without replying (push/pull, publish/subscribe): a
    /// streamed answer is read to its end and dropped. An unknown method is a `NameError`.
    pub async fn deliver(&self, event: Event) -> Result<(), RemoteError> {
        let args = event.positional_args();
        match self.methods.get(&event.name).map(|m| &m.handler) {
            Some(Handler::Call(handler)) => handler(args).await.map(drop),
            Some(Handler::Stream(handler)) => {
                let mut items = handler(args);
                while let Some(item) = items.next().await {
                    item?;
                }
                Ok(())
            }
            None => Err(RemoteError::new("NameError", event.name.as_str())),
        }
    }

    /// `_zerorpc_inspect`'s answer: the name and each method's arguments and doc.
    pub fn inspect(&self) -> Value {
        let mut names: Vec<&String> = self.methods.keys().collect();
        names.sort();
        let methods = names
            .into_iter()
            .map(|name| {
                let method = &self.methods[name];
                let args = std::iter::once("self")
                    .chain(method.args.iter().map(String::as_str))
                    .map(|a| Value::Map(vec![(Value::from("name"), Value::from(a))]))
                    .collect();
                (
                    Value::from(name.as_str()),
                    Value::Map(vec![
                        (Value::from("args"), Value::Array(args)),
                        (
                            Value::from("doc"),
                            method.doc.as_deref().map_or(Value::Nil, Value::from),
                        ),
                    ]),
                )
            })
            .collect();
        Value::Map(vec![
            (Value::from("name"), Value::from(self.name.as_str())),
            (Value::from("methods"), Value::Map(methods)),
        ])
    }

    /// The built-in methods' answers; `None` for other names.
    fn builtin(&self, name: &str, args: &[Value]) -> Option<Result<Value, RemoteError>> {
        let method_arg = || {
            let wanted = args.first().and_then(Value::as_str).unwrap_or_default();
            self.methods
                .get(wanted)
                .ok_or_else(|| RemoteError::new("NameError", wanted))
        };
        Some(match name {
            "_zerorpc_name" => Ok(Value::from(self.name.as_str())),
            "_zerorpc_ping" => Ok(Value::Array(vec!["pong".into(), self.name.as_str().into()])),
            "_zerorpc_list" => {
                let mut names: Vec<&String> = self.methods.keys().collect();
                names.sort();
                Ok(Value::Array(
                    names.into_iter().map(|n| Value::from(n.as_str())).collect(),
                ))
            }
            "_zerorpc_inspect" => Ok(self.inspect()),
            "_zerorpc_help" => {
                method_arg().map(|m| m.doc.as_deref().map_or(Value::Nil, Value::from))
            }
            "_zerorpc_args" => method_arg().map(|m| {
                let names = std::iter::once("self")
                    .chain(m.args.iter().map(String::as_str))
                    .map(Value::from)
                    .collect();
                Value::Array(vec![
                    Value::Array(names),
                    Value::Nil,
                    Value::Nil,
                    Value::Nil,
                ])
            }),
            _ => return None,
        })
    }
}

/// The frames a request may have: the routing envelope (a peer's identity, any proxies'),
/// the delimiter and the event. More is no zerorpc client: dropped and counted (`frames`).
pub const MAX_FRAMES: usize = 16;

/// A peer's routing envelope: its identity frames, as the ROUTER gave them.
type Envelope = Vec<Vec<u8>>;

/// Open calls, keyed by peer and channel id, so that one peer can neither reach nor replace
/// another's call; and how many each peer has open.
#[derive(Default)]
struct Open {
    calls: HashMap<(Envelope, Vec<u8>), mpsc::UnboundedSender<Event>>,
    per_peer: HashMap<Envelope, usize>,
}

type Channels = Arc<Mutex<Open>>;

impl Open {
    /// Opens a call unless the peer has `max` open, or one on the same id; why not, if not.
    fn open(
        &mut self,
        peer: &Envelope,
        id: &[u8],
        tx: mpsc::UnboundedSender<Event>,
        max: usize,
    ) -> Result<(), (&'static str, RemoteError)> {
        let key = (peer.clone(), id.to_vec());
        if self.calls.contains_key(&key) {
            return Err((
                "duplicate",
                RemoteError::new(
                    "ProtocolError",
                    "a call with this message_id is already open on this connection: use a fresh id",
                ),
            ));
        }
        let count = self.per_peer.entry(peer.clone()).or_default();
        if *count >= max {
            return Err((
                "busy",
                RemoteError::new(
                    "TooManyCalls",
                    format!(
                        "{max} calls are open on this connection (rpc.max_calls_per_connection): wait for one to end"
                    ),
                ),
            ));
        }
        *count += 1;
        self.calls.insert(key, tx);
        Ok(())
    }

    fn close(&mut self, peer: &Envelope, id: &[u8]) {
        if self.calls.remove(&(peer.clone(), id.to_vec())).is_some()
            && let Some(count) = self.per_peer.get_mut(peer)
        {
            *count -= 1;
            if *count == 0 {
                self.per_peer.remove(peer);
            }
        }
    }

    fn len(&self) -> usize {
        self.calls.len()
    }
}

/// What to send back on a ROUTER: the routing envelope and the empty delimiter.
fn frames(envelope: &[Vec<u8>], event: &Event) -> Frames {
    let mut frames = envelope.to_vec();
    frames.push(Vec::new());
    frames.push(event.encode());
    frames
}

/// Refuses request `message_id` (`call`) for `reason`: counted, logged, and answered
/// `ERR [name, message, ""]` on its channel.
fn refuse(
    (service, socket, envelope): (&Service, &Socket, &[Vec<u8>]),
    (message_id, call): (&[u8], &str),
    reason: &str,
    error: RemoteError,
) {
    service.refused(reason);
    tracing::warn!(reason, call, "refused a zerorpc request");
    let reply = Event::reply(
        message_id,
        ERR,
        Value::Array(vec![error.name.into(), error.message.into(), "".into()]),
    );
    let _ = socket.send(frames(envelope, &reply));
}

/// Drops a message there is no request to answer on: counted (in `dropped` too) and logged.
fn drop_message(service: &Service, dropped: &mut u64, reason: &str, why: &dyn std::fmt::Display) {
    *dropped += 1;
    service.refused(reason);
    tracing::warn!(reason, error = %why, "dropped a zerorpc message");
}

/// Serves `service` on `socket` (a bound ROUTER) until `stop`, then drains: calls in flight
/// run to their end (their heartbeats and flow control still flow) while new requests are
/// answered `Unavailable`. Malformed messages are dropped and counted in the returned total
/// (there is no id to answer them on); oversized requests (refused before their arguments
/// are decoded), arguments nested deeper than [`super::event::MAX_DEPTH`], unknown protocol
/// versions and a peer over its open calls are answered with an error naming the problem.
pub async fn serve(service: Arc<Service>, socket: Arc<Socket>, stop: CancellationToken) -> u64 {
    let channels: Channels = Arc::default();
    let open = |channels: &Channels| channels.lock().unwrap_or_else(|p| p.into_inner()).len();
    let max_calls = service.max_calls_per_peer.unwrap_or(usize::MAX);
    let mut dropped = 0;
    let mut stopping = false;
    loop {
        if stopping && open(&channels) == 0 {
            return dropped;
        }
        let message = tokio::select! {
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                tracing::info!(calls = open(&channels), "zerorpc server draining");
                continue;
            }
            // While draining, look again now and then for the last call's end.
            () = tokio::time::sleep(Duration::from_millis(50)), if stopping => continue,
            m = socket.recv() => m,
        };
        let Some(mut message) = message else {
            return dropped;
        };
        if message.len() > MAX_FRAMES {
            let why = format!(
                "{} frames; a request has at most {MAX_FRAMES}",
                message.len()
            );
            drop_message(&service, &mut dropped, "frames", &why);
            continue;
        }
        let Some(payload) = message.pop() else {
            continue;
        };
        // Everything before the payload is the routing envelope, less a trailing delimiter
        // (a client may leave it out; replies always have it).
        if message.last().is_some_and(Vec::is_empty) {
            message.pop();
        }
        let envelope = message;
        let to = (&*service, &*socket, &envelope[..]);
        // An oversized request is answered from its header alone: its arguments are never
        // built in memory.
        if let Some(max) = service.max_message_bytes.filter(|m| payload.len() > *m) {
            let error = RemoteError::new(
                "MessageTooLarge",
                format!(
                    "the request is {} bytes; at most {max} are accepted",
                    payload.len()
                ),
            );
            match Event::decode_head(&payload) {
                Ok((header, name)) if header.response_to.is_none() => {
                    refuse(to, (&header.message_id, &name), "oversized", error);
                }
                _ => drop_message(&service, &mut dropped, "oversized", &error.message),
            }
            continue;
        }
        let event = match Event::decode(&payload) {
            Ok(event) => event,
            // Too deep to read, but with a header: a request is told why, on its channel.
            Err(
                ref e @ EventError::TooDeep {
                    origin: Some(ref origin),
                    ..
                },
            ) if origin.response_to.is_none() => {
                let error = RemoteError::new("ProtocolError", e.to_string());
                refuse(to, (&origin.message_id, &origin.name), "too-deep", error);
                continue;
            }
            Err(e) => {
                let reason = match e {
                    EventError::TooDeep { .. } => "too-deep",
                    _ => "malformed",
                };
                drop_message(&service, &mut dropped, reason, &e);
                continue;
            }
        };
        if let Some(channel) = &event.header.response_to {
            let open = channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .calls
                .get(&(envelope.clone(), channel.clone()))
                .cloned();
            match open {
                Some(tx) => {
                    let _ = tx.send(event);
                }
                None => {
                    tracing::debug!(event = %event.name, "an event for no open channel: dropped")
                }
            }
            continue;
        }
        let refusal = if event.header.version.is_some_and(|v| v > VERSION) {
            Some((
                "version",
                RemoteError::new(
                    "ProtocolError",
                    format!(
                        "protocol version {} is not supported: this server speaks zerorpc v{VERSION}",
                        event.header.version.unwrap_or_default()
                    ),
                ),
            ))
        } else if stopping {
            Some((
                "shutting-down",
                RemoteError::new(
                    "Unavailable",
                    "the server is shutting down: call another replica",
                ),
            ))
        } else {
            None
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = event.header.message_id.clone();
        let refusal = refusal.map_or_else(
            || {
                channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .open(&envelope, &id, tx, max_calls)
                    .err()
            },
            Some,
        );
        if let Some((reason, error)) = refusal {
            refuse(to, (&id, &event.name), reason, error);
            continue;
        }
        let (service, socket, channels) = (service.clone(), socket.clone(), channels.clone());
        tokio::spawn(async move {
            call(&service, &socket, &envelope, event, rx).await;
            channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .close(&envelope, &id);
        });
    }
}

/// One call, from request to its last event.
async fn call(
    service: &Service,
    socket: &Socket,
    envelope: &[Vec<u8>],
    request: Event,
    mut inbound: mpsc::UnboundedReceiver<Event>,
) {
    let channel = request.header.message_id.clone();
    let v1 = request.header.version.is_none();
    let send = |name: &str, args: Value| {
        let event = Event::reply(&channel, name, args);
        if let Err(e) = socket.send(frames(envelope, &event)) {
            tracing::warn!(error = %e, "could not send a zerorpc reply");
        }
    };
    let fail = |e: RemoteError| {
        let args = if v1 {
            Value::Array(vec![format!("{}({:?})", e.name, e.message).into()])
        } else {
            Value::Array(vec![e.name.into(), e.message.into(), e.traceback.into()])
        };
        send(ERR, args);
    };
    let args = request.positional_args();
    let period = service.period();
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut last_heard: Option<tokio::time::Instant> = None;
    // Checked on each heartbeat tick: silent for more than two periods means the caller is gone.
    let lost = |now: tokio::time::Instant, last: &mut Option<tokio::time::Instant>| {
        let heard = *last.get_or_insert(now);
        now.duration_since(heard) > period * 2
    };
    if let Some(answer) = service.builtin(&request.name, &args) {
        return match answer {
            Ok(value) => send(OK, Value::Array(vec![value])),
            Err(e) => fail(e),
        };
    }
    let work: Work = match (service.methods.get(&request.name), &service.fallback) {
        (Some(method), _) => match &method.handler {
            Handler::Call(handler) => {
                let reply = handler(args);
                Box::pin(async move { reply.await.map(Answer::Value) })
            }
            Handler::Stream(handler) => {
                let items = handler(args);
                Box::pin(std::future::ready(Ok(Answer::Stream(items))))
            }
        },
        (None, Some(fallback)) => fallback(request.clone()),
        (None, None) => return fail(RemoteError::new("NameError", request.name.as_str())),
    };
    // The answer, with heartbeats running meanwhile.
    let mut work = work;
    let answer = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            now = beat.tick() => {
                if lost(now, &mut last_heard) {
                    tracing::warn!(method = %request.name, "lost the caller (no heartbeat for two periods): call abandoned");
                    return;
                }
                if !v1 {
                    send(HEARTBEAT, Value::Array(vec![0.into()]));
                }
            }
            event = inbound.recv() => {
                if event.is_some() {
                    last_heard = Some(tokio::time::Instant::now());
                }
            }
        }
    };
    let mut items = match answer {
        Ok(Answer::Value(value)) => return send(OK, Value::Array(vec![value])),
        Err(e) => return fail(e),
        Ok(Answer::Stream(items)) => items,
    };
    // zerorpc's flow control: one event may go before the caller grants more.
    let mut credit: u64 = 1;
    loop {
        tokio::select! {
            item = items.next(), if credit > 0 => {
                match item {
                    Some(Ok(value)) => {
                        credit -= 1;
                        send(STREAM, value);
                    }
                    Some(Err(e)) => return fail(e),
                    None => return send(STREAM_DONE, Value::Nil),
                }
            }
            now = beat.tick() => {
                if lost(now, &mut last_heard) {
                    tracing::warn!(method = %request.name, "lost the caller mid-stream: stream abandoned");
                    return;
                }
                send(HEARTBEAT, Value::Array(vec![0.into()]));
            }
            event = inbound.recv() => {
                let Some(event) = event else { continue };
                last_heard = Some(tokio::time::Instant::now());
                // v2 peers grant credit with heartbeats' name.
                if event.name == MORE || (v1 && event.name == HEARTBEAT) {
                    credit = credit.saturating_add(event.args[0].as_u64().unwrap_or(0));
                }
            }
        }
    }
}
