//! The zerorpc benchmark (`scripts/bench.sh rpc`): our client and server against
//! zerorpc-python's, and calls through the gateway, in one run. Prints `name value` lines.
//!
//!     bench_zerorpc direct PYTHON PYTHON_SERVER_ENDPOINT N IN_FLIGHT
//!     bench_zerorpc serve ENDPOINT
//!     bench_zerorpc gateway FRONT TOKEN N IN_FLIGHT
//!
//! `direct`:
//! - `rust_to_py`: our client → zerorpc-python's server, sequential calls;
//! - `rust_to_rust`: our client → our server, sequential calls;
//! - `rust_to_rust_parallel`: the same with IN_FLIGHT calls at once (throughput);
//! - `py_to_rust`: zerorpc-python's client → our server (`e2e/python/bench_zerorpc.py`);
//! - `rust_stream`: items/s of one 100 000-item stream from our server to our client.
//!
//! `serve` runs the benchmark's server (`add`, `count`) until killed, as a gateway backend.
//!
//! `gateway`, through the gateway's zerorpc front with a token in each event header:
//! - `rust_gw_rust`: our client → gateway → our server (`bench.add`), sequential;
//! - `rust_gw_rust_parallel`: the same with IN_FLIGHT calls at once;
//! - `rust_gw_py`: our client → gateway → zerorpc-python's server (`demo.add`), sequential.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quartet_rpc_gateway::zerorpc::client::{Client, Reply};
use quartet_rpc_gateway::zerorpc::event::Event;
use quartet_rpc_gateway::zerorpc::server::{Service, serve};
use quartet_rpc_gateway::zerorpc::socket::Socket;
use rmpv::Value;

fn say(name: &str, value: f64) {
    let _ = writeln!(std::io::stdout(), "{name} {value:.3}");
}

/// Calls `method(1, 2)`, with `token` in the event header when given.
#[derive(Clone)]
struct Caller {
    client: Client,
    method: &'static str,
    token: Option<String>,
}

impl Caller {
    async fn call(&self) {
        let mut request = Event::request(self.method, Value::Array(vec![1.into(), 2.into()]));
        if let Some(token) = &self.token {
            request
                .header
                .extra
                .push(("authorization".into(), format!("Bearer {token}").into()));
        }
        self.client
            .call_with(request, Duration::from_secs(10))
            .await
            .expect("add");
    }
}

async fn sequential(caller: &Caller, n: usize, name: &str) {
    for _ in 0..50 {
        caller.call().await;
    }
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        caller.call().await;
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    say(
        &format!("{name}_calls_per_sec"),
        n as f64 / elapsed.as_secs_f64(),
    );
    say(
        &format!("{name}_p50_ms"),
        latencies[n / 2].as_secs_f64() * 1000.0,
    );
    say(
        &format!("{name}_p99_ms"),
        latencies[n * 99 / 100].as_secs_f64() * 1000.0,
    );
}

async fn parallel(caller: &Caller, total: usize, in_flight: usize, name: &str) {
    let per_task = total / in_flight;
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let caller = caller.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    caller.call().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    say(
        &format!("{name}_calls_per_sec"),
        (per_task * in_flight) as f64 / started.elapsed().as_secs_f64(),
    );
}

fn bench_service() -> Service {
    Service::new("Bench")
        .method("add", &["a", "b"], "", |args| async move {
            let n = |i: usize| args.get(i).and_then(Value::as_i64).unwrap_or(0);
            Ok(Value::from(n(0) + n(1)))
        })
        .stream("count", &["n"], "", |args| {
            let n = args[0].as_u64().unwrap_or(0);
            futures::stream::iter((0..n).map(|i| Ok(Value::from(i))))
        })
}

/// Serves the benchmark service on `endpoint`; the bound endpoint and the stop token.
fn start_server(endpoint: &str) -> (String, tokio_util::sync::CancellationToken) {
    let socket = Arc::new(Socket::bind(zmq::ROUTER, endpoint, None).expect("bind"));
    let bound = socket.endpoint().to_owned();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(serve(Arc::new(bench_service()), socket, stop.clone()));
    (bound, stop)
}

async fn direct(python: &str, py_server: &str, n: usize, in_flight: usize) {
    let (ours, stop) = start_server("tcp://127.0.0.1:0");
    let plain = |endpoint: &str| Caller {
        client: Client::connect(endpoint, None).expect("connect"),
        method: "add",
        token: None,
    };
    sequential(&plain(py_server), n, "rust_to_py").await;
    let to_rust = plain(&ours);
    sequential(&to_rust, n, "rust_to_rust").await;
    parallel(&to_rust, n * 4, in_flight, "rust_to_rust_parallel").await;

    let started = Instant::now();
    let Ok(Reply::Stream(items)) = to_rust
        .client
        .call("count", vec![100_000.into()], Duration::from_secs(60))
        .await
    else {
        panic!("count streams")
    };
    let items = items.collect().await.expect("items");
    say(
        "rust_stream_items_per_sec",
        items.len() as f64 / started.elapsed().as_secs_f64(),
    );

    let out = tokio::process::Command::new(python)
        .args(["bench_zerorpc.py", &ours, &n.to_string(), "py_to_rust"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../e2e/python"))
        .output()
        .await
        .expect("python runs");
    let _ = std::io::stdout().write_all(&out.stdout);
    stop.cancel();
}

async fn through_gateway(front: &str, token: &str, n: usize, in_flight: usize) {
    let client = Client::connect(front, None).expect("connect");
    let caller = |method| Caller {
        client: client.clone(),
        method,
        token: Some(token.to_owned()),
    };
    sequential(&caller("bench.add"), n, "rust_gw_rust").await;
    parallel(
        &caller("bench.add"),
        n * 4,
        in_flight,
        "rust_gw_rust_parallel",
    )
    .await;
    sequential(&caller("demo.add"), n, "rust_gw_py").await;
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let number = |i: usize| -> usize { argv[i].parse().expect("a number") };
    match argv.get(1).map(String::as_str) {
        Some("direct") => direct(&argv[2], &argv[3], number(4), number(5)).await,
        Some("serve") => {
            let (bound, _stop) = start_server(&argv[2]);
            say(&format!("serving_{bound}"), 1.0);
            std::future::pending::<()>().await;
        }
        Some("gateway") => through_gateway(&argv[2], &argv[3], number(4), number(5)).await,
        _ => panic!("usage: bench_zerorpc direct|serve|gateway …"),
    }
}
