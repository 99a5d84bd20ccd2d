//! The gateway's side of `scripts/bench.sh tasks`: on the given Redis, publishes N tasks
//! (publish rate), runs them on an in-process worker (end-to-end throughput), then measures
//! submit → result round trips one at a time (p50/p99). Prints `name value` lines.
//!
//!     cargo run --release --example bench_tasks -- REDIS_URL N ROUND_TRIPS CONCURRENCY

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use quartet_task_gateway::broker::Broker;
use quartet_task_gateway::celery::{RawJson, State, TaskMessage, uuid4};
use quartet_task_gateway::worker::{TaskError, Worker};

fn add_task(queue: &str, i: u64) -> TaskMessage {
    TaskMessage::new(
        "bench.add",
        RawJson::parse(&format!("[{i}, 1]")).expect("json"),
        RawJson::parse("{}").expect("json"),
        queue,
        0,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let redis = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let n: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let round_trips: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200);
    let concurrency: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(8);
    let broker = Broker::open(&format!("{redis}/2"), &format!("{redis}/3"))?;
    let queue = format!("bench-rs-{}", uuid4());

    // Publish rate, no worker running.
    let messages: Vec<TaskMessage> = (0..n).map(|i| add_task(&queue, i)).collect();
    let started = Instant::now();
    for m in &messages {
        broker.publish(m).await?;
    }
    let publish = started.elapsed();
    println!("publish_per_sec {:.0}", n as f64 / publish.as_secs_f64());

    // End-to-end: a worker drains the queue; done when the last result exists.
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::new(broker.clone(), &[&queue], concurrency).task(
        "bench.add",
        |args, _| async move {
            let a = args[0]
                .as_i64()
                .ok_or_else(|| TaskError::new("TypeError", "x"))?;
            let b = args[1]
                .as_i64()
                .ok_or_else(|| TaskError::new("TypeError", "y"))?;
            Ok((a + b).into())
        },
    );
    let running = tokio::spawn(worker.run(stop.clone()));
    // Timed from the first result, as the Celery side is.
    while broker.result(&messages[0].headers.id).await?.is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    for m in &messages[1..] {
        loop {
            if broker.result(&m.headers.id).await?.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let drained = started.elapsed();
    println!(
        "end_to_end_per_sec {:.0}",
        (n - 1) as f64 / drained.as_secs_f64()
    );

    // Round trips, one at a time, worker idle otherwise.
    let mut latencies = Vec::with_capacity(round_trips);
    for i in 0..round_trips {
        let m = add_task(&queue, i as u64);
        let t = Instant::now();
        broker.publish(&m).await?;
        let meta = broker
            .wait_result(&m.headers.id, Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no result"))?;
        anyhow::ensure!(meta.status == State::Success, "{meta:?}");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!("round_trip_p50_ms {:.2}", pct(0.50).as_secs_f64() * 1000.0);
    println!("round_trip_p99_ms {:.2}", pct(0.99).as_secs_f64() * 1000.0);
    stop.cancel();
    let _ = running.await;
    Ok(())
}
