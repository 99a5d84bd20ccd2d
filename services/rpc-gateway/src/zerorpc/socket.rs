//! A ZeroMQ socket for async code. libzmq sockets are not thread-safe and tokio tasks move
//! between threads, so each socket lives on a thread of its own, which polls it together with
//! an in-process queue of outgoing messages: received messages go to a channel, messages to
//! send come in over `inproc`. Sending never blocks the caller beyond handing the frames over.
//! Received messages wait at most [`INBOX_BYTES`] (or [`INBOX_MESSAGES`]) for their reader;
//! past that the thread stops taking more from libzmq, whose own queue limit then pushes
//! back on the peers, so a flood cannot grow memory faster than the reader takes it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

/// ZeroMQ socket types (`Kind::DEALER`, `Kind::ROUTER`, …), so users need not name `zmq`.
pub use zmq::SocketType as Kind;

/// A message: its frames.
pub type Frames = Vec<Vec<u8>>;

/// A ZeroMQ failure, named.
#[derive(Debug, thiserror::Error)]
#[error("zeromq {what}: {error}")]
pub struct SocketError {
    /// What was being done.
    pub what: String,
    /// libzmq's error.
    pub error: zmq::Error,
}

fn failed(what: impl Into<String>) -> impl FnOnce(zmq::Error) -> SocketError {
    let what = what.into();
    move |error| SocketError { what, error }
}

/// CURVE keys of a socket (Z85 text, 40 characters each).
#[derive(Clone)]
pub enum Curve {
    /// A server with this secret key; clients authenticate with their own keys (allow-listing
    /// them is the ZAP handler's business).
    Server {
        /// The server's secret key.
        secret: String,
    },
    /// A client that knows the server's public key.
    Client {
        /// The server's public key.
        server_public: String,
        /// This client's public key.
        public: String,
        /// This client's secret key.
        secret: String,
    },
}

impl std::fmt::Debug for Curve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Curve::Server { .. } => "Curve::Server",
            Curve::Client { .. } => "Curve::Client",
        })
    }
}

/// A fresh CURVE key pair, `(public, secret)` in Z85.
pub fn curve_keypair() -> Result<(String, String), SocketError> {
    let pair = zmq::CurveKeyPair::new().map_err(failed("curve key pair"))?;
    let z85 = |key: &[u8]| zmq::z85_encode(key).expect("a 32-byte key encodes");
    Ok((z85(&pair.public_key), z85(&pair.secret_key)))
}

/// A Z85 CURVE key as its 32 bytes, or an error naming `what`.
pub fn curve_key(what: &str, z85: &str) -> Result<Vec<u8>, String> {
    zmq::z85_decode(z85)
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| format!("{what}: {z85:?} is not a Z85 CURVE key (40 characters)"))
}

/// Admits to every CURVE server socket of this process only the clients whose public key
/// is in `allowed` (Z85): the ZeroMQ authentication protocol (ZAP) handler, a REP socket on
/// `inproc://zeromq.zap.01` that libzmq asks about each CURVE handshake. One per process;
/// a second call fails. `refused` is told each refused key.
pub fn allow_curve_clients(
    allowed: &[String],
    refused: impl Fn(&str) + Send + 'static,
) -> Result<(), String> {
    let keys = allowed
        .iter()
        .map(|k| curve_key("an allowed client key", k))
        .collect::<Result<Vec<_>, _>>()?;
    let handler = context()
        .socket(zmq::REP)
        .map_err(|e| format!("ZAP handler: {e}"))?;
    handler
        .bind("inproc://zeromq.zap.01")
        .map_err(|e| format!("ZAP handler (one per process): {e}"))?;
    std::thread::Builder::new()
        .name("zmq-zap".into())
        .spawn(move || {
            // A request: version, request id, domain, address, routing id, mechanism, then
            // the mechanism's credentials (for CURVE, the client's 32-byte public key).
            // Without a handler libzmq would admit every client, so the handler never stops:
            // an interrupted call is retried, any other failure ends the process.
            loop {
                let request = match handler.recv_multipart(0) {
                    Ok(request) => request,
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => zap_failed(&e),
                };
                let field = |i: usize| request.get(i).cloned().unwrap_or_default();
                let (mechanism, key) = (field(5), field(6));
                let admitted = mechanism == b"CURVE" && keys.contains(&key);
                if !admitted {
                    refused(&zmq::z85_encode(&key).unwrap_or_default());
                }
                let (code, text): (&[u8], &[u8]) = if admitted {
                    (b"200", b"OK")
                } else {
                    (b"400", b"client key not allowed")
                };
                let reply = vec![
                    field(0),
                    field(1),
                    code.to_vec(),
                    text.to_vec(),
                    Vec::new(),
                    Vec::new(),
                ];
                loop {
                    match handler.send_multipart(reply.clone(), 0) {
                        Ok(()) => break,
                        Err(zmq::Error::EINTR) => continue,
                        Err(e) => zap_failed(&e),
                    }
                }
            }
        })
        .map_err(|e| format!("ZAP handler thread: {e}"))?;
    Ok(())
}

/// The ZAP handler cannot go on: stopping the process is the only way not to fail open.
fn zap_failed(e: &zmq::Error) -> ! {
    tracing::error!(error = %e, "the CURVE allow-list (ZAP handler) failed; stopping rather than admitting every client");
    std::process::abort()
}

/// Whether `public` is the public key of `secret` (Z85): a CURVE handshake over loopback
/// with a server holding `secret` succeeds only for a client that names the right public key.
pub async fn curve_pair_matches(public: &str, secret: &str) -> Result<bool, SocketError> {
    let server = Socket::bind(
        zmq::ROUTER,
        "tcp://127.0.0.1:0",
        Some(Curve::Server {
            secret: secret.to_owned(),
        }),
    )?;
    let (client_public, client_secret) = curve_keypair()?;
    let client = Socket::connect(
        zmq::DEALER,
        server.endpoint(),
        Some(Curve::Client {
            server_public: public.to_owned(),
            public: client_public,
            secret: client_secret,
        }),
    )?;
    client.send(vec![Vec::new(), b"pair?".to_vec()])?;
    let heard = tokio::time::timeout(std::time::Duration::from_secs(2), server.recv()).await;
    Ok(matches!(heard, Ok(Some(_))))
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Bytes of received messages waiting for their reader, at most (then reading pauses).
pub const INBOX_BYTES: usize = 16 << 20;
/// Received messages waiting for their reader, at most (then reading pauses).
pub const INBOX_MESSAGES: usize = 1024;

/// Received messages not yet taken by the reader: their count and bytes.
#[derive(Debug, Default)]
struct Waiting {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl Waiting {
    fn full(&self) -> bool {
        self.messages.load(Ordering::Acquire) >= INBOX_MESSAGES
            || self.bytes.load(Ordering::Acquire) >= INBOX_BYTES
    }

    fn arrived(&self, frames: &Frames) {
        self.messages.fetch_add(1, Ordering::AcqRel);
        self.bytes
            .fetch_add(frames.iter().map(Vec::len).sum(), Ordering::AcqRel);
    }

    fn taken(&self, frames: &Frames) {
        self.messages.fetch_sub(1, Ordering::AcqRel);
        self.bytes
            .fetch_sub(frames.iter().map(Vec::len).sum(), Ordering::AcqRel);
    }
}

/// A socket on its own thread.
pub struct Socket {
    outbox: Mutex<zmq::Socket>,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Frames>>,
    waiting: Arc<Waiting>,
    /// A connecting socket's dropped connections (the peer closed or died).
    drops: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    endpoint: String,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The process's ZeroMQ context.
pub fn context() -> &'static zmq::Context {
    static CONTEXT: std::sync::OnceLock<zmq::Context> = std::sync::OnceLock::new();
    CONTEXT.get_or_init(zmq::Context::new)
}

impl Socket {
    /// A socket of `kind` bound to `endpoint` (e.g. `tcp://127.0.0.1:4242`; port 0 picks one,
    /// see [`Socket::endpoint`]).
    pub fn bind(
        kind: zmq::SocketType,
        endpoint: &str,
        curve: Option<Curve>,
    ) -> Result<Self, SocketError> {
        Self::open_with(kind, endpoint, curve, true, None)
    }

    /// A socket of `kind` connected to `endpoint`.
    pub fn connect(
        kind: zmq::SocketType,
        endpoint: &str,
        curve: Option<Curve>,
    ) -> Result<Self, SocketError> {
        Self::open_with(kind, endpoint, curve, false, None)
    }

    fn open_with(
        kind: zmq::SocketType,
        endpoint: &str,
        curve: Option<Curve>,
        bind: bool,
        max_bytes: Option<i64>,
    ) -> Result<Self, SocketError> {
        let ctx = context();
        let main = ctx.socket(kind).map_err(failed("socket"))?;
        if let Some(max) = max_bytes {
            main.set_maxmsgsize(max)
                .map_err(failed("max message size"))?;
        }
        main.set_linger(1000).map_err(failed("linger"))?;
        // IPv6 endpoints too (a headless Service may resolve to them); IPv4 still works.
        main.set_ipv6(true).map_err(failed("ipv6"))?;
        if kind == zmq::SUB {
            // zerorpc subscribers take every event.
            main.set_subscribe(b"").map_err(failed("subscribe"))?;
        }
        match &curve {
            Some(Curve::Server { secret }) => {
                main.set_curve_server(true)
                    .map_err(failed("curve server"))?;
                main.set_curve_secretkey(&zmq::z85_decode(secret).map_err(|_| SocketError {
                    what: "curve secret key (not Z85)".into(),
                    error: zmq::Error::EINVAL,
                })?)
                .map_err(failed("curve secret key"))?;
            }
            Some(Curve::Client {
                server_public,
                public,
                secret,
            }) => {
                for (what, key) in [
                    ("server public key", server_public),
                    ("public key", public),
                    ("secret key", secret),
                ] {
                    if zmq::z85_decode(key).map(|k| k.len()).ok() != Some(32) {
                        return Err(SocketError {
                            what: format!("curve {what} (not a Z85 32-byte key)"),
                            error: zmq::Error::EINVAL,
                        });
                    }
                }
                main.set_curve_serverkey(&zmq::z85_decode(server_public).unwrap_or_default())
                    .map_err(failed("curve server key"))?;
                main.set_curve_publickey(&zmq::z85_decode(public).unwrap_or_default())
                    .map_err(failed("curve public key"))?;
                main.set_curve_secretkey(&zmq::z85_decode(secret).unwrap_or_default())
                    .map_err(failed("curve secret key"))?;
            }
            None => {}
        }
        // A connecting socket watches its connection: a peer that dies closes it at once,
        // long before heartbeats would tell.
        let monitor = if bind {
            None
        } else {
            let address = format!(
                "inproc://quartet-zmq-monitor-{}",
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            main.monitor(&address, zmq::SocketEvent::DISCONNECTED as i32)
                .map_err(failed("monitor"))?;
            let pair = ctx.socket(zmq::PAIR).map_err(failed("monitor"))?;
            pair.connect(&address).map_err(failed("monitor connect"))?;
            Some(pair)
        };
        let endpoint = if bind {
            main.bind(endpoint)
                .map_err(failed(format!("bind {endpoint}")))?;
            main.get_last_endpoint()
                .map_err(failed("last endpoint"))?
                .unwrap_or_else(|raw| String::from_utf8_lossy(&raw).into_owned())
        } else {
            main.connect(endpoint)
                .map_err(failed(format!("connect {endpoint}")))?;
            endpoint.to_owned()
        };
        let relay = format!(
            "inproc://quartet-zmq-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pull = ctx.socket(zmq::PULL).map_err(failed("relay"))?;
        pull.bind(&relay).map_err(failed("relay bind"))?;
        let outbox = ctx.socket(zmq::PUSH).map_err(failed("relay"))?;
        outbox.connect(&relay).map_err(failed("relay connect"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (dropped, drops) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(Waiting::default());
        let thread = {
            let (stop, waiting) = (stop.clone(), waiting.clone());
            std::thread::Builder::new()
                .name("zmq-socket".into())
                .spawn(move || {
                    let watched = monitor.as_ref().map(|m| (m, &dropped));
                    pump(&main, &pull, watched, (&tx, &waiting), &stop);
                })
                .map_err(|_| SocketError {
                    what: "spawn the socket's thread".into(),
                    error: zmq::Error::ENOMEM,
                })?
        };
        Ok(Self {
            outbox: Mutex::new(outbox),
            inbox: tokio::sync::Mutex::new(rx),
            waiting,
            drops: tokio::sync::Mutex::new(drops),
            stop,
            thread: Some(thread),
            endpoint,
        })
    }

    /// The endpoint bound or connected to (with the port a bind to port 0 picked).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Queues a message for sending.
    pub fn send(&self, frames: Frames) -> Result<(), SocketError> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(SocketError {
                what: "send on a closed socket".into(),
                error: zmq::Error::ENOTSOCK,
            });
        }
        let outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        outbox.send_multipart(frames, 0).map_err(failed("send"))
    }

    /// A bound socket whose peers may send messages of at most `max_bytes`: libzmq
    /// disconnects a peer sending a larger one before the message is read into memory.
    pub fn bind_with_limit(
        kind: zmq::SocketType,
        endpoint: &str,
        curve: Option<Curve>,
        max_bytes: i64,
    ) -> Result<Self, SocketError> {
        Self::open_with(kind, endpoint, curve, true, Some(max_bytes))
    }

    /// Closes the socket: its thread stops and [`Socket::recv`] returns `None` once the
    /// messages already received are taken.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Completes when a connecting socket's connection drops (the peer closed or died);
    /// never for a bound socket, nor once the socket is closed.
    pub async fn dropped(&self) {
        if self.drops.lock().await.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// The next message received; `None` once the socket is closed.
    pub async fn recv(&self) -> Option<Frames> {
        let frames = self.inbox.lock().await.recv().await?;
        self.waiting.taken(&frames);
        Some(frames)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The socket's thread: moves received messages to `inbox` and queued ones to the socket
/// until `stop`. Polls with a short timeout so a stop is seen promptly. While the reader is
/// behind (see [`Waiting`]) it takes nothing from `main`, looking again every few
/// milliseconds.
fn pump(
    main: &zmq::Socket,
    relay: &zmq::Socket,
    monitor: Option<(&zmq::Socket, &mpsc::UnboundedSender<()>)>,
    (inbox, waiting): (&mpsc::UnboundedSender<Frames>, &Waiting),
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let full = waiting.full();
        let mut items = vec![
            // Asked for nothing while the reader is behind: libzmq keeps (and bounds) the rest.
            main.as_poll_item(if full {
                zmq::PollEvents::empty()
            } else {
                zmq::POLLIN
            }),
            relay.as_poll_item(zmq::POLLIN),
        ];
        if let Some((m, _)) = monitor {
            items.push(m.as_poll_item(zmq::POLLIN));
        }
        if zmq::poll(&mut items, if full { 5 } else { 50 }).is_err() {
            continue;
        }
        let (incoming, outgoing) = (items[0].is_readable(), items[1].is_readable());
        if let Some((m, dropped)) =
            monitor.filter(|_| items.get(2).is_some_and(|i| i.is_readable()))
        {
            // Each monitor event is two frames: the event number and value, then the address.
            while m.recv_multipart(zmq::DONTWAIT).is_ok() {
                let _ = dropped.send(());
            }
        }
        if incoming {
            while !waiting.full()
                && let Ok(frames) = main.recv_multipart(zmq::DONTWAIT)
            {
                waiting.arrived(&frames);
                if inbox.send(frames).is_err() {
                    return;
                }
            }
        }
        if outgoing {
            while let Ok(frames) = relay.recv_multipart(zmq::DONTWAIT) {
                // Never blocking: a DEALER whose connection failed its handshake has no peer
                // to queue for, and a blocking send would wedge this thread (and a drop that
                // joins it) for good. What cannot be queued is dropped, as a ROUTER drops
                // messages for peers that are gone; the caller's heartbeats notice.
                if let Err(e) = main.send_multipart(frames, zmq::DONTWAIT) {
                    tracing::debug!(error = %e, "a zeromq message could not be queued: dropped");
                }
            }
        }
    }
    // Let queued replies out before the socket closes (its linger bounds the wait).
    while let Ok(frames) = relay.recv_multipart(zmq::DONTWAIT) {
        let _ = main.send_multipart(frames, zmq::DONTWAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dealer_and_a_router_exchange_messages_across_threads() {
        let router = Socket::bind(zmq::ROUTER, "tcp://127.0.0.1:0", None).expect("bind");
        let dealer = Socket::connect(zmq::DEALER, router.endpoint(), None).expect("connect");
        dealer
            .send(vec![Vec::new(), b"ping".to_vec()])
            .expect("send");
        let got = router.recv().await.expect("a message");
        assert_eq!(got.len(), 3, "identity, delimiter, payload");
        assert_eq!(got[2], b"ping");
        router
            .send(vec![got[0].clone(), Vec::new(), b"pong".to_vec()])
            .expect("reply");
        assert_eq!(dealer.recv().await.expect("reply")[1], b"pong");
    }

    #[test]
    fn curve_keys_are_checked_by_name() {
        let (public, _) = curve_keypair().expect("keys");
        assert_eq!(curve_key("k", &public).expect("valid").len(), 32);
        assert!(
            curve_key("rpc.curve_clients", "short")
                .expect_err("bad")
                .contains("rpc.curve_clients: \"short\" is not a Z85 CURVE key")
        );
    }

    #[tokio::test]
    async fn a_socket_that_cannot_deliver_still_closes() {
        // A client whose server is not there: more messages than its high-water mark must
        // neither block the sender nor the socket's close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dealer = Socket::connect(zmq::DEALER, &format!("tcp://127.0.0.1:{port}"), None)
            .expect("connect");
        for _ in 0..3000 {
            dealer
                .send(vec![Vec::new(), b"undeliverable".to_vec()])
                .expect("queued or dropped, never blocked");
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // Dropped on a thread of its own, never joined: if the close hangs, the test fails
        // rather than hanging with it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(dealer);
            let _ = tx.send(());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("closed within 5 s");
    }

    #[tokio::test]
    async fn a_curve_key_pair_is_told_from_two_unrelated_keys() {
        let (public, secret) = curve_keypair().expect("keys");
        let (other_public, _) = curve_keypair().expect("keys");
        assert!(curve_pair_matches(&public, &secret).await.expect("checked"));
        assert!(
            !curve_pair_matches(&other_public, &secret)
                .await
                .expect("checked")
        );
    }

    #[tokio::test]
    async fn curve_lets_a_client_with_the_servers_key_in() {
        let (server_public, server_secret) = curve_keypair().expect("keys");
        let (public, secret) = curve_keypair().expect("keys");
        let router = Socket::bind(
            zmq::ROUTER,
            "tcp://127.0.0.1:0",
            Some(Curve::Server {
                secret: server_secret,
            }),
        )
        .expect("bind");
        let dealer = Socket::connect(
            zmq::DEALER,
            router.endpoint(),
            Some(Curve::Client {
                server_public,
                public,
                secret,
            }),
        )
        .expect("connect");
        dealer
            .send(vec![Vec::new(), b"sealed".to_vec()])
            .expect("send");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), router.recv())
            .await
            .expect("within 5 s")
            .expect("a message");
        assert_eq!(got[2], b"sealed");
        let bad = Socket::connect(
            zmq::DEALER,
            router.endpoint(),
            Some(Curve::Client {
                server_public: "not a key".into(),
                public: String::new(),
                secret: String::new(),
            }),
        );
        assert!(
            bad.expect_err("refused")
                .to_string()
                .contains("server public key")
        );
    }
}
