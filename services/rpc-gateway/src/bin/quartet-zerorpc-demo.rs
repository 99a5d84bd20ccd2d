//! A zerorpc service written with quartet-rpc-gateway's library, for `make dev`: `reports`,
//! with `daily(days)` (a total per day) and `lines(n)` (a stream). Any zerorpc client can call
//! it directly, or through the gateway as `reports.daily`.
//!
//!     quartet-zerorpc-demo [ENDPOINT]    (default tcp://127.0.0.1:7136)

use std::io::Write as _;
use std::sync::Arc;

use quartet_rpc_gateway::zerorpc::server::{RemoteError, Service, serve};
use quartet_rpc_gateway::zerorpc::socket::Socket;
use rmpv::Value;

fn reports() -> Service {
    Service::new("reports")
        .method(
            "daily",
            &["days"],
            "A total per day for the last `days` days (at most 31).",
            |args| async move {
                let days = args
                    .first()
                    .and_then(Value::as_u64)
                    .filter(|d| (1..=31).contains(d))
                    .ok_or_else(|| RemoteError::new("ValueError", "days must be 1 to 31"))?;
                Ok(Value::Array(
                    (1..=days).map(|d| Value::from(d * 100)).collect(),
                ))
            },
        )
        .stream(
            "lines",
            &["n"],
            "The first `n` lines of the report.",
            |args| {
                let n = args.first().and_then(Value::as_u64).unwrap_or(0).min(1000);
                futures::stream::iter((1..=n).map(|i| Ok(Value::from(format!("line {i}")))))
            },
        )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:7136".into());
    let socket = match Socket::bind(zmq::ROUTER, &endpoint, None) {
        Ok(socket) => socket,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "quartet-zerorpc-demo: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let _ = writeln!(
        std::io::stdout(),
        "reports serving zerorpc on {}",
        socket.endpoint()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "quartet-zerorpc-demo: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let on_term = stop.clone();
    tokio::spawn(async move {
        term.recv().await;
        on_term.cancel();
    });
    serve(Arc::new(reports()), Arc::new(socket), stop).await;
    std::process::ExitCode::SUCCESS
}
