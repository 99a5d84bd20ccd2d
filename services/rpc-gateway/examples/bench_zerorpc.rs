//! The zerorpc benchmark (`scripts/bench.sh rpc`): our client and server against
//! zerorpc-python's, in one run. Prints `name value` lines.
//!
//!     bench_zerorpc PYTHON PYTHON_SERVER_ENDPOINT N IN_FLIGHT
//!
//! - `rust_to_py`: our client → zerorpc-python's server, sequential calls;
//! - `rust_to_rust`: our client → our server, sequential calls;
//! - `rust_to_rust_parallel`: the same with IN_FLIGHT calls at once (throughput);
//! - `py_to_rust`: zerorpc-python's client → our server (`e2e/python/bench_zerorpc.py`);
//! - `rust_stream`: items/s of one 100 000-item stream from our server to our client.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quartet_rpc_gateway::zerorpc::client::{Client, Reply};
use quartet_rpc_gateway::zerorpc::server::{Service, serve};
use quartet_rpc_gateway::zerorpc::socket::Socket;
use rmpv::Value;

fn say(name: &str, value: f64) {
    let _ = writeln!(std::io::stdout(), "{name} {value:.3}");
}

async fn sequential(client: &Client, n: usize, name: &str) {
    let args = || vec![Value::from(1), Value::from(2)];
    for _ in 0..50 {
        let _ = client.call("add", args(), Duration::from_secs(10)).await;
    }
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        client
            .call("add", args(), Duration::from_secs(10))
            .await
            .expect("add");
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

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let (python, py_server) = (argv[1].clone(), argv[2].clone());
    let n: usize = argv[3].parse().expect("N");
    let in_flight: usize = argv[4].parse().expect("IN_FLIGHT");
    let service = Service::new("Bench")
        .method("add", &["a", "b"], "", |args| async move {
            let n = |i: usize| args.get(i).and_then(Value::as_i64).unwrap_or(0);
            Ok(Value::from(n(0) + n(1)))
        })
        .stream("count", &["n"], "", |args| {
            let n = args[0].as_u64().unwrap_or(0);
            futures::stream::iter((0..n).map(|i| Ok(Value::from(i))))
        });
    let socket = Arc::new(Socket::bind(zmq::ROUTER, "tcp://127.0.0.1:0", None).expect("bind"));
    let ours = socket.endpoint().to_owned();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(serve(Arc::new(service), socket, stop.clone()));

    let to_py = Client::connect(&py_server, None).expect("connect");
    sequential(&to_py, n, "rust_to_py").await;
    let to_rust = Client::connect(&ours, None).expect("connect");
    sequential(&to_rust, n, "rust_to_rust").await;

    let total = n * 4;
    let started = Instant::now();
    let per_task = total / in_flight;
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let client = to_rust.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    client
                        .call("add", vec![1.into(), 2.into()], Duration::from_secs(10))
                        .await
                        .expect("add");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    say(
        "rust_to_rust_parallel_calls_per_sec",
        (per_task * in_flight) as f64 / started.elapsed().as_secs_f64(),
    );

    let started = Instant::now();
    let Ok(Reply::Stream(items)) = to_rust
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

    let out = tokio::process::Command::new(&python)
        .args(["bench_zerorpc.py", &ours, &n.to_string(), "py_to_rust"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../e2e/python"))
        .output()
        .await
        .expect("python runs");
    let _ = std::io::stdout().write_all(&out.stdout);
    stop.cancel();
}
