//! A zerorpc client on a DEALER socket: many calls in flight on one connection, each a channel
//! with its own heartbeats; a reply is a value, a remote error, or a stream of items received
//! under zerorpc's flow control. A server silent for two heartbeat periods (no heartbeat, no
//! reply, no item) ends the call with [`CallError::LostRemote`], never a hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmpv::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::event::{ERR, Event, EventError, HEARTBEAT, MORE, OK, STREAM, STREAM_DONE};
use super::server::{HEARTBEAT_PERIOD, RemoteError};
use super::socket::{Curve, Socket, SocketError};

/// How a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error.
    #[error("{}: {}", .0.name, .0.message)]
    Remote(RemoteError),
    /// The server went silent for longer than two heartbeat periods.
    #[error("lost the server: nothing heard for {0:?}")]
    LostRemote(Duration),
    /// The connection to the server dropped mid-call (the server closed or died); what it
    /// was doing is lost with the connection.
    #[error("the connection to the server dropped")]
    Disconnected,
    /// No reply within the call's timeout (the server may still be working).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The server sent something zerorpc does not allow here.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl CallError {
    /// Whether the server is lost, as zerorpc-python's `LostRemote` says: silent for two
    /// heartbeat periods, or its connection dropped.
    pub fn is_lost_remote(&self) -> bool {
        matches!(self, CallError::LostRemote(_) | CallError::Disconnected)
    }
}

/// A reply: one value, or a stream.
#[derive(Debug)]
pub enum Reply {
    /// `OK [value]`.
    Value(Value),
    /// `STREAM` items until `STREAM_DONE`.
    Stream(Items),
}

/// The items of a streamed reply, received as the caller takes them.
#[derive(Debug)]
pub struct Items {
    rx: mpsc::Receiver<Result<Value, CallError>>,
}

impl Items {
    /// Items that arrive on `rx` (for relaying a stream).
    pub fn from_channel(rx: mpsc::Receiver<Result<Value, CallError>>) -> Self {
        Self { rx }
    }

    /// The next item; `None` after the last.
    pub async fn next(&mut self) -> Option<Result<Value, CallError>> {
        self.rx.recv().await
    }

    /// Every remaining item, or the first error.
    pub async fn collect(mut self) -> Result<Vec<Value>, CallError> {
        let mut items = Vec::new();
        while let Some(item) = self.next().await {
            items.push(item?);
        }
        Ok(items)
    }
}

/// What reaches a call: the server's events, or the end of its connection.
type Inbound = Result<Event, CallError>;
type Pending = Arc<Mutex<HashMap<Vec<u8>, mpsc::UnboundedSender<Inbound>>>>;

/// A zerorpc client.
#[derive(Debug, Clone)]
pub struct Client {
    socket: Arc<Socket>,
    pending: Pending,
    period: Duration,
    /// When anything last arrived from the server, on any channel: tells a server that went
    /// silent from one call it stopped answering.
    heard: Arc<Mutex<Instant>>,
}

/// Credit granted to a streaming server at a time, as zerorpc-python grants it.
const WINDOW: u64 = 100;

impl Client {
    /// A client of the server at `endpoint` (e.g. `tcp://127.0.0.1:4242`).
    pub fn connect(endpoint: &str, curve: Option<Curve>) -> Result<Self, SocketError> {
        let socket = Arc::new(Socket::connect(zmq::DEALER, endpoint, curve)?);
        let pending: Pending = Arc::default();
        let heard = Arc::new(Mutex::new(Instant::now()));
        let (reader, routes, last) = (socket.clone(), pending.clone(), heard.clone());
        tokio::spawn(async move {
            loop {
                let mut frames = tokio::select! {
                    frames = reader.recv() => match frames {
                        Some(frames) => frames,
                        None => return,
                    },
                    () = reader.dropped() => {
                        // Replies to calls on the old connection can no longer arrive.
                        let calls: Vec<_> = routes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .drain()
                            .collect();
                        if !calls.is_empty() {
                            tracing::warn!(endpoint = %reader.endpoint(), calls = calls.len(), "zerorpc server connection dropped; its calls fail");
                        }
                        for (_, tx) in calls {
                            let _ = tx.send(Err(CallError::Disconnected));
                        }
                        continue;
                    }
                };
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                let Some(payload) = frames.pop() else {
                    continue;
                };
                // A reply nesting too deep fails its call, naming the limit; one that is no
                // event at all names no call to fail.
                let (channel, inbound) = match Event::decode(&payload) {
                    Ok(event) => (event.channel().to_vec(), Ok(event)),
                    Err(e) => match &e {
                        EventError::TooDeep {
                            origin: Some(origin),
                            ..
                        } => (
                            origin.channel().to_vec(),
                            Err(CallError::Protocol(e.to_string())),
                        ),
                        _ => {
                            tracing::warn!(error = %e, "dropped a malformed zerorpc reply");
                            continue;
                        }
                    },
                };
                let route = routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&channel)
                    .cloned();
                if let Some(tx) = route {
                    let _ = tx.send(inbound);
                }
            }
        });
        Ok(Self {
            socket,
            pending,
            period: HEARTBEAT_PERIOD,
            heard,
        })
    }

    /// Whether the server was heard from, on any channel, within one and a half heartbeat
    /// periods. A live server answers something at least every period (heartbeats on every
    /// open call, and the gateway pings it each period), so a call lost while this holds lost
    /// its own channel — the server stopped answering that call — not the server.
    pub fn is_heard(&self) -> bool {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            <= self.period * 3 / 2
    }

    /// Sets the heartbeat period (zerorpc's default is 5 s; both sides should agree).
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Closes the connection: calls in flight end with [`CallError::Closed`] or
    /// [`CallError::LostRemote`], later calls fail.
    pub fn close(&self) {
        self.socket.close();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &str {
        self.socket.endpoint()
    }

    fn send(&self, event: &Event) -> Result<(), CallError> {
        self.socket
            .send(vec![Vec::new(), event.encode()])
            .map_err(|_| CallError::Closed)
    }

    /// Calls `method` with `args`, waiting up to `timeout` for the first reply event.
    pub async fn call(
        &self,
        method: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        self.call_with(Event::request(method, Value::Array(args)), timeout)
            .await
    }

    /// Calls with a prepared request event (extra header keys: trace context, a token).
    pub async fn call_with(&self, request: Event, timeout: Duration) -> Result<Reply, CallError> {
        let channel = request.header.message_id.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.clone(), tx);
        let mut watch = Watch::new(self.clone(), channel.clone());
        self.send(&request)?;
        let deadline = Instant::now() + timeout;
        let first = loop {
            tokio::select! {
                event = rx.recv() => {
                    let event = event.unwrap_or(Err(CallError::Closed))?;
                    watch.heard();
                    if event.name != HEARTBEAT {
                        break event;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Err(CallError::Timeout(timeout)),
                lost = watch.tick() => lost?,
            }
        };
        match first.name.as_str() {
            OK => Ok(Reply::Value(match first.args {
                Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
                other => other,
            })),
            ERR => Err(CallError::Remote(remote_error(&first.args))),
            STREAM => {
                let (items, out) = mpsc::channel(WINDOW as usize);
                let _ = items.send(Ok(first.args)).await;
                tokio::spawn(stream(watch, rx, items));
                Ok(Reply::Stream(Items { rx: out }))
            }
            other => Err(CallError::Protocol(format!(
                "{other:?} as the first reply of a call"
            ))),
        }
    }
}

/// `ERR` args: `[name, message, traceback]`, or `[repr]` from v1 servers.
fn remote_error(args: &Value) -> RemoteError {
    let part = |i: usize| {
        args.as_array()
            .and_then(|a| a.get(i))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match args.as_array().map(Vec::len) {
        Some(1) => RemoteError::new("RemoteError", part(0)),
        _ => RemoteError {
            name: part(0),
            message: part(1),
            traceback: part(2),
        },
    }
}

/// One call's heartbeats and liveness: sends `_zpc_hb` every period and reports the server
/// lost when nothing was heard for two periods (checked ten times a period). Closes the
/// channel when dropped.
struct Watch {
    client: Client,
    channel: Vec<u8>,
    last_heard: Instant,
    next_beat: Instant,
    /// Deadlines, not delays: a select that polls `tick` anew after every event does not push
    /// the heartbeat back (traffic never starves it).
    next_check: Instant,
}

impl Watch {
    fn new(client: Client, channel: Vec<u8>) -> Self {
        let now = Instant::now();
        Self {
            next_beat: now + client.period,
            next_check: now + client.period / 10,
            client,
            channel,
            last_heard: now,
        }
    }

    fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Waits for the next check; an error when the server is lost.
    async fn tick(&mut self) -> Result<(), CallError> {
        let period = self.client.period;
        tokio::time::sleep_until(self.next_check).await;
        let now = Instant::now();
        self.next_check = now + period / 10;
        if now >= self.next_beat {
            self.next_beat = now + period;
            let beat = Event::reply(&self.channel, HEARTBEAT, Value::Array(vec![0.into()]));
            self.client.send(&beat)?;
        }
        let silent = now.duration_since(self.last_heard);
        if silent > period * 2 {
            return Err(CallError::LostRemote(silent));
        }
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.client
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.channel);
    }
}

/// Receives a stream's items after the first, granting credit as zerorpc-python does (a
/// window of 100, topped up when fewer than half remain), until `STREAM_DONE`, an error, or
/// the server is lost.
async fn stream(
    mut watch: Watch,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
    items: mpsc::Sender<Result<Value, CallError>>,
) {
    let grant = |watch: &Watch, n: u64| {
        let more = Event::reply(&watch.channel, MORE, Value::Array(vec![n.into()]));
        watch.client.send(&more)
    };
    let mut outstanding = WINDOW;
    if grant(&watch, WINDOW).is_err() {
        return;
    }
    loop {
        tokio::select! {
            event = rx.recv() => {
                let event = match event.unwrap_or(Err(CallError::Closed)) {
                    Ok(event) => event,
                    Err(e) => {
                        let _ = items.send(Err(e)).await;
                        return;
                    }
                };
                watch.heard();
                match event.name.as_str() {
                    STREAM => {
                        outstanding = outstanding.saturating_sub(1);
                        if items.send(Ok(event.args)).await.is_err() {
                            return;
                        }
                        if outstanding < WINDOW / 2 {
                            let top_up = WINDOW - outstanding;
                            if grant(&watch, top_up).is_err() {
                                return;
                            }
                            outstanding = WINDOW;
                        }
                    }
                    STREAM_DONE => return,
                    ERR => {
                        let _ = items.send(Err(CallError::Remote(remote_error(&event.args)))).await;
                        return;
                    }
                    HEARTBEAT => {}
                    other => {
                        let _ = items
                            .send(Err(CallError::Protocol(format!("{other:?} inside a stream"))))
                            .await;
                        return;
                    }
                }
            }
            lost = watch.tick() => {
                if let Err(e) = lost {
                    let _ = items.send(Err(e)).await;
                    return;
                }
            }
        }
    }
}
