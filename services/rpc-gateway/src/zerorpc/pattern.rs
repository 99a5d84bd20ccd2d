//! zerorpc's one-way patterns, as zerorpc-python's `Pusher`/`Puller` and
//! `Publisher`/`Subscriber` speak them: an event is a call that gets no reply — `[header,
//! method, args]` in a frame of its own, no channel, no heartbeats. Push/pull gives each event
//! to one puller (ZeroMQ balances them); publish/subscribe gives it to every subscriber
//! connected at the time (a subscriber that joins late misses what came before, as in ZeroMQ).

use std::sync::Arc;

use rmpv::Value;
use tokio_util::sync::CancellationToken;

use super::event::Event;
use super::server::Service;
use super::socket::{Kind, Socket, SocketError};

/// The sending side: a pusher or a publisher.
#[derive(Debug)]
pub struct Sender {
    socket: Socket,
}

impl Sender {
    /// A pusher connected to a puller at `endpoint`.
    pub fn pusher(endpoint: &str) -> Result<Self, SocketError> {
        Socket::connect(Kind::PUSH, endpoint, None).map(|socket| Self { socket })
    }

    /// A publisher bound to `endpoint` (subscribers connect to it).
    pub fn publisher(endpoint: &str) -> Result<Self, SocketError> {
        Socket::bind(Kind::PUB, endpoint, None).map(|socket| Self { socket })
    }

    /// Where it is bound or connected.
    pub fn endpoint(&self) -> &str {
        self.socket.endpoint()
    }

    /// Sends `method(args)` to the receivers; returns once it is queued.
    pub fn send(&self, method: &str, args: Vec<Value>) -> Result<(), SocketError> {
        let event = Event::request(method, Value::Array(args));
        self.socket.send(vec![event.encode()])
    }
}

/// A puller bound to `endpoint` (pushers connect to it).
pub fn puller(endpoint: &str) -> Result<Socket, SocketError> {
    Socket::bind(Kind::PULL, endpoint, None)
}

/// A subscriber connected to a publisher at `endpoint`, taking every event.
pub fn subscriber(endpoint: &str) -> Result<Socket, SocketError> {
    Socket::connect(Kind::SUB, endpoint, None)
}

/// Runs `service`'s methods for the events arriving on `socket` (a puller or a subscriber),
/// one at a time in arrival order as zerorpc-python does, until `stop`. A method that fails,
/// or names no method, is logged and counted, never answered (there is no one to answer);
/// so is a message that is no event. Returns that count.
pub async fn receive(service: Arc<Service>, socket: Arc<Socket>, stop: CancellationToken) -> u64 {
    let mut failed = 0;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return failed,
            m = socket.recv() => m,
        };
        let Some(payload) = message.and_then(|mut frames| frames.pop()) else {
            return failed;
        };
        let outcome = match Event::decode(&payload) {
            Ok(event) => {
                let name = event.name.clone();
                service
                    .deliver(event)
                    .await
                    .map_err(|e| format!("{name}: {}: {}", e.name, e.message))
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            failed += 1;
            tracing::warn!(error = %e, "a one-way zerorpc event failed");
        }
    }
}
