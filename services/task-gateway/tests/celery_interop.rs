//! The real Celery (5.7, from PyPI) and the gateway's Redis layer, both ways, on a real Redis:
//! messages we publish run on a Celery worker and we read its results; messages Celery's own
//! client publishes run on our consumer and `AsyncResult.get()` reads our results.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use quartet_task_gateway::broker::Broker;
use quartet_task_gateway::celery::{RawJson, ResultMeta, State, TaskMessage, exception, uuid4};
use tokio::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn output_of(script: &str, args: &[&str]) -> String {
    let out = Command::new(repo().join(script))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Broker and result URLs on the private test Redis, in databases of this test's own.
async fn urls(broker_db: u8) -> (String, String) {
    let base = output_of("scripts/redis.sh", &["up"]).await;
    (
        format!("{base}/{broker_db}"),
        format!("{base}/{}", broker_db + 1),
    )
}

fn raw(text: &str) -> RawJson {
    RawJson::parse(text).expect("json")
}

#[tokio::test]
async fn our_messages_run_on_a_real_celery_worker_and_we_read_its_results() {
    let (broker_url, result_url) = urls(4).await;
    let broker = Broker::open(&broker_url, &result_url).expect("redis urls");
    // A queue of this run's own: the test Redis outlives runs.
    let queue = format!("gw-to-celery-{}", uuid4());
    let _worker = quartet_e2e::celery_worker(&broker_url, &result_url, &queue).await;

    let add = TaskMessage::new("peers.add", raw("[2, 3]"), raw("{}"), &queue, 0);
    broker.publish(&add).await.expect("publish");
    let meta = broker
        .wait_result(&add.headers.id, Duration::from_secs(60))
        .await
        .expect("wait")
        .expect("Celery ran it within a minute");
    assert_eq!(meta.status, State::Success);
    assert_eq!(meta.result.value(), 5);

    let fail = TaskMessage::new("peers.fail", raw(r#"["boom"]"#), raw("{}"), &queue, 0);
    broker.publish(&fail).await.expect("publish");
    let meta = broker
        .wait_result(&fail.headers.id, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("a result");
    assert_eq!(meta.status, State::Failure);
    assert_eq!(meta.result.value()["exc_type"], "ValueError");
    assert_eq!(
        meta.result.value()["exc_message"],
        serde_json::json!(["boom"])
    );
    assert!(
        meta.traceback
            .unwrap_or_default()
            .contains("ValueError: boom"),
        "Celery's traceback comes through"
    );
}

#[tokio::test]
async fn celery_clients_tasks_run_on_our_consumer_and_get_reads_our_results() {
    let (broker_url, result_url) = urls(6).await;
    let broker = Broker::open(&broker_url, &result_url).expect("redis urls");
    let python = output_of("scripts/python.sh", &[]).await;
    let queue = format!("celery-to-gw-{}", uuid4());
    let submit = |task: &str, args: &str| {
        Command::new(&python)
            .args(["peers.py", "submit", task, args, &queue, "30"])
            .current_dir(repo().join("e2e/python"))
            .env("BROKER_URL", &broker_url)
            .env("RESULT_URL", &result_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs")
    };
    let ok = submit("rust.add", "[20, 22]");
    let failing = submit("rust.missing", "[]");

    let mut consumer = broker.consumer().await.expect("consumer");
    for _ in 0..2 {
        let delivery = consumer
            .fetch(&[&queue], Duration::from_secs(30), None)
            .await
            .expect("fetch")
            .expect("Celery's message arrived");
        let message = delivery.message.expect("a protocol v2 message");
        let id = message.headers.id.clone();
        let meta = match message.headers.task.as_str() {
            "rust.add" => {
                let args = message.args.value();
                let sum = args[0].as_i64().unwrap_or(0) + args[1].as_i64().unwrap_or(0);
                ResultMeta::finished(&id, State::Success, serde_json::Value::from(sum), None)
            }
            other => ResultMeta::finished(
                &id,
                State::Failure,
                exception("NotRegistered", other, "celery.exceptions"),
                Some(format!("no task named {other:?} here")),
            ),
        };
        broker.store_result(&meta).await.expect("store");
        consumer
            .ack(&message.properties.delivery_tag)
            .await
            .expect("ack");
    }

    let ok = ok.wait_with_output().await.expect("python exits");
    let ok: serde_json::Value = serde_json::from_slice(&ok.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&ok.stderr)));
    assert_eq!(ok["state"], "SUCCESS");
    assert_eq!(ok["result"], 42);
    let failing = failing.wait_with_output().await.expect("python exits");
    let failing_stderr = failing.stderr.clone();
    let failing: serde_json::Value = serde_json::from_slice(&failing.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&failing.stderr)));
    assert_eq!(
        failing["state"],
        "FAILURE",
        "{failing} {}",
        String::from_utf8_lossy(&failing_stderr)
    );
    assert!(
        failing["message"]
            .as_str()
            .unwrap_or_default()
            .contains("rust.missing"),
        "{failing}"
    );
}

#[tokio::test]
async fn a_chain_runs_across_our_worker_and_celerys_both_ways() {
    use quartet_task_gateway::worker::{TaskError, Worker};
    let (broker_url, result_url) = urls(8).await;
    let broker = Broker::open(&broker_url, &result_url).expect("redis urls");
    let celery_queue = format!("chain-py-{}", uuid4());
    let rust_queue = format!("chain-rs-{}", uuid4());
    let _celery = quartet_e2e::celery_worker(&broker_url, &result_url, &celery_queue).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let worker =
        Worker::new(broker.clone(), &[&rust_queue], 2).task("rust.add", |args, _| async move {
            let sum: i64 = args
                .as_array()
                .ok_or_else(|| TaskError::new("TypeError", "args"))?
                .iter()
                .filter_map(serde_json::Value::as_i64)
                .sum();
            Ok(sum.into())
        });
    let running = tokio::spawn(worker.run(stop.clone()));

    // Ours first: rust.add(2, 3) here, then peers.mul(<5>, 10) on the Celery worker.
    let last = uuid4();
    let mut first = TaskMessage::new("rust.add", raw("[2, 3]"), raw("{}"), &rust_queue, 0);
    first.embed.chain = Some(vec![serde_json::json!({
        "task": "peers.mul",
        "args": [10],
        "kwargs": {},
        "options": {"task_id": last, "queue": celery_queue},
        "subtask_type": null,
        "immutable": false,
    })]);
    broker.publish(&first).await.expect("publish");
    let meta = broker
        .wait_result(&last, Duration::from_secs(60))
        .await
        .expect("wait")
        .expect("the chain's last step ran on Celery");
    assert_eq!(meta.result.value(), 50);

    // Celery's chain: peers.add(2, 3) on Celery, then rust.add(<5>, 10) here.
    let done = peers(
        &broker_url,
        &result_url,
        &["chain", &celery_queue, &rust_queue, "30"],
    )
    .await;
    assert_eq!(done["result"], 15, "{done}");
    stop.cancel();
    let _ = running.await;
}

/// Runs `peers.py <args>` with Celery's client and returns what it printed (JSON).
async fn peers(broker_url: &str, result_url: &str, args: &[&str]) -> serde_json::Value {
    let python = output_of("scripts/python.sh", &[]).await;
    let out = Command::new(python)
        .arg("peers.py")
        .args(args)
        .current_dir(repo().join("e2e/python"))
        .env("BROKER_URL", broker_url)
        .env("RESULT_URL", result_url)
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "peers.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("peers.py {args:?} printed no JSON ({e})"))
}

/// A Rust worker on `queue` with `rust.add` (sums its numbers), `rust.sum` (sums a list) and
/// `rust.sleep` (seconds).
fn rust_worker(broker: &Broker, queue: &str) -> quartet_task_gateway::worker::Worker {
    use quartet_task_gateway::worker::{TaskError, Worker};
    fn sum(values: &[serde_json::Value]) -> i64 {
        values.iter().filter_map(serde_json::Value::as_i64).sum()
    }
    Worker::new(broker.clone(), &[queue], 3)
        .task("rust.add", |args, _| async move {
            let numbers = args
                .as_array()
                .ok_or_else(|| TaskError::new("TypeError", "args"))?;
            Ok(sum(numbers).into())
        })
        .task("rust.sum", |args, _| async move {
            let numbers = args[0]
                .as_array()
                .ok_or_else(|| TaskError::new("TypeError", "rust.sum takes a list"))?;
            Ok(sum(numbers).into())
        })
        .task("rust.sleep", |args, _| async move {
            tokio::time::sleep(Duration::from_secs_f64(args[0].as_f64().unwrap_or(1.0))).await;
            Ok(serde_json::Value::Null)
        })
}

/// Publishes `header` as a chord with `body` (as Celery's client does) and waits for the
/// body's record.
async fn run_chord(
    broker: &Broker,
    mut header: Vec<TaskMessage>,
    body: &TaskMessage,
) -> ResultMeta {
    let group = uuid4();
    quartet_task_gateway::canvas::make_chord(&mut header, body.signature(), &group);
    broker
        .start_chord(&group, header.len())
        .await
        .expect("chord");
    for part in &header {
        broker.publish(part).await.expect("publish");
    }
    broker
        .wait_result(&body.headers.id, Duration::from_secs(60))
        .await
        .expect("wait")
        .expect("the body's record, within a minute")
}

#[tokio::test]
async fn a_chord_counts_parts_finished_by_celery_and_by_us_together() {
    let (broker_url, result_url) = urls(16).await;
    let broker = Broker::open(&broker_url, &result_url).expect("redis urls");
    let celery_queue = format!("chord-py-{}", uuid4());
    let rust_queue = format!("chord-rs-{}", uuid4());
    let _celery = quartet_e2e::celery_worker(&broker_url, &result_url, &celery_queue).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(rust_worker(&broker, &rust_queue).run(stop.clone()));

    // Header across both worlds, body here: [peers.add(1,1), rust.add(2,2), peers.add(3,3)]
    // then rust.sum([2, 4, 6]).
    let header = vec![
        TaskMessage::new("peers.add", raw("[1, 1]"), raw("{}"), &celery_queue, 0),
        TaskMessage::new("rust.add", raw("[2, 2]"), raw("{}"), &rust_queue, 0),
        TaskMessage::new("peers.add", raw("[3, 3]"), raw("{}"), &celery_queue, 0),
    ];
    let body = TaskMessage::new("rust.sum", raw("[]"), raw("{}"), &rust_queue, 0);
    let meta = run_chord(&broker, header, &body).await;
    assert_eq!(meta.status, State::Success);
    assert_eq!(meta.result.value(), 12, "results in header order, summed");

    // Header here, body on Celery: [rust.add(1,2), rust.add(3,4)] then peers.tsum.
    let header = vec![
        TaskMessage::new("rust.add", raw("[1, 2]"), raw("{}"), &rust_queue, 0),
        TaskMessage::new("rust.add", raw("[3, 4]"), raw("{}"), &rust_queue, 0),
    ];
    let body = TaskMessage::new("peers.tsum", raw("[]"), raw("{}"), &celery_queue, 0);
    let meta = run_chord(&broker, header, &body).await;
    assert_eq!(meta.result.value(), 10);

    // A failed part: the body does not run and is recorded FAILURE with Celery's ChordError.
    let header = vec![
        TaskMessage::new("rust.add", raw("[1]"), raw("{}"), &rust_queue, 0),
        TaskMessage::new(
            "peers.fail",
            raw(r#"["boom"]"#),
            raw("{}"),
            &celery_queue,
            0,
        ),
    ];
    let body = TaskMessage::new("rust.sum", raw("[]"), raw("{}"), &rust_queue, 0);
    let meta = run_chord(&broker, header, &body).await;
    assert_eq!(meta.status, State::Failure);
    assert_eq!(meta.result.value()["exc_type"], "ChordError");
    let error = meta.result.value();
    let why = error["exc_message"][0].as_str().unwrap_or_default();
    assert!(why.contains("ValueError") && why.contains("boom"), "{why}");

    // Celery's own client: chord(rust.add ×3 here)(peers.tsum on Celery).get().
    let done = peers(
        &broker_url,
        &result_url,
        &["chord", &rust_queue, &celery_queue, "60"],
    )
    .await;
    assert_eq!(done["result"], 12, "{done}");
    stop.cancel();
    let _ = running.await;
}

#[tokio::test]
async fn celerys_event_receiver_follows_our_worker() {
    let (broker_url, result_url) = urls(18).await;
    let broker = Broker::open(&broker_url, &result_url).expect("redis urls");
    let rust_queue = format!("events-rs-{}", uuid4());
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = rust_worker(&broker, &rust_queue).task_events(true);
    let running = tokio::spawn(worker.run(stop.clone()));
    let seen = peers(&broker_url, &result_url, &["events", &rust_queue, "40"]).await;
    stop.cancel();
    let _ = running.await;

    let heartbeat = &seen["heartbeat"];
    assert_eq!(heartbeat["type"], "worker-heartbeat", "{seen}");
    assert_eq!(heartbeat["freq"], 2.0);
    let kinds: Vec<&str> = seen["events"]
        .as_array()
        .expect("task events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["task-received", "task-started", "task-succeeded"],
        "{seen}"
    );
    let received = &seen["events"][0];
    assert_eq!(received["name"], "rust.add");
    assert_eq!(seen["events"][2]["result"], "3");
}

#[tokio::test]
async fn revocations_reach_every_worker_both_ways() {
    let (broker_url, result_url) = urls(20).await;
    let broker = Broker::open(&broker_url, &result_url).expect("redis urls");
    let celery_queue = format!("revoke-py-{}", uuid4());
    let rust_queue = format!("revoke-rs-{}", uuid4());
    let _celery = quartet_e2e::celery_worker(&broker_url, &result_url, &celery_queue).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(rust_worker(&broker, &rust_queue).run(stop.clone()));
    let in_three_seconds = || {
        (chrono::Utc::now() + chrono::Duration::seconds(3))
            .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
            .to_string()
    };

    // Celery's app.control.revoke reaches our worker: a delayed task is not run…
    let mut later = TaskMessage::new("rust.add", raw("[1, 1]"), raw("{}"), &rust_queue, 0);
    later.headers.eta = Some(in_three_seconds());
    broker.publish(&later).await.expect("publish");
    peers(&broker_url, &result_url, &["revoke", &later.headers.id]).await;
    let meta = broker
        .wait_result(&later.headers.id, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("a record");
    assert_eq!(meta.status, State::Revoked);
    assert_eq!(
        meta.result.value()["exc_message"],
        serde_json::json!(["revoked"])
    );

    // …and with terminate, a running one is stopped.
    let long = TaskMessage::new("rust.sleep", raw("[60]"), raw("{}"), &rust_queue, 0);
    broker.publish(&long).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = std::time::Instant::now();
    peers(
        &broker_url,
        &result_url,
        &["revoke", &long.headers.id, "terminate"],
    )
    .await;
    let meta = broker
        .wait_result(&long.headers.id, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("a record");
    assert_eq!(meta.status, State::Revoked);
    assert_eq!(
        meta.result.value()["exc_message"],
        serde_json::json!(["terminated"])
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // Our revoke reaches Celery's worker: first make sure it is up and listening.
    let ping = TaskMessage::new("peers.add", raw("[0, 0]"), raw("{}"), &celery_queue, 0);
    broker.publish(&ping).await.expect("publish");
    broker
        .wait_result(&ping.headers.id, Duration::from_secs(60))
        .await
        .expect("wait")
        .expect("Celery is up");
    let mut later = TaskMessage::new("peers.add", raw("[1, 1]"), raw("{}"), &celery_queue, 0);
    later.headers.eta = Some(in_three_seconds());
    broker.publish(&later).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.revoke(&later.headers.id).await.expect("mark");
    broker
        .broadcast_revoke(&later.headers.id, false)
        .await
        .expect("broadcast");
    let meta = broker
        .wait_result(&later.headers.id, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"))
        .expect("Celery recorded it");
    assert_eq!(meta.status, State::Revoked, "{meta:?}");
    stop.cancel();
    let _ = running.await;
}

/// When each task finished, from its record.
async fn done_at(broker: &Broker, ids: &[String]) -> Vec<String> {
    let mut times = Vec::new();
    for id in ids {
        let meta = broker
            .wait_result(id, Duration::from_secs(60))
            .await
            .expect("wait")
            .unwrap_or_else(|| panic!("{id} did not finish"));
        times.push(meta.date_done.expect("finished"));
    }
    times
}

#[tokio::test]
async fn priority_zero_is_served_first_both_ways() {
    let (broker_url, result_url) = urls(26).await;
    let broker = Broker::open(&broker_url, &result_url).expect("redis urls");

    // Ours queued while no worker runs, priority 9 first, then 0; a Celery worker then starts.
    let celery_queue = format!("prio-py-{}", uuid4());
    let mut low = Vec::new();
    let mut high = Vec::new();
    for (priority, ids) in [(9, &mut low), (0, &mut high)] {
        for _ in 0..3 {
            let m = TaskMessage::new(
                "peers.add",
                raw("[1, 1]"),
                raw("{}"),
                &celery_queue,
                priority,
            );
            broker.publish(&m).await.expect("publish");
            ids.push(m.headers.id);
        }
    }
    let _celery = quartet_e2e::celery_worker(&broker_url, &result_url, &celery_queue).await;
    let (high_done, low_done) = (done_at(&broker, &high).await, done_at(&broker, &low).await);
    assert!(
        high_done.iter().max() < low_done.iter().min(),
        "Celery served priority 0 first: {high_done:?} then {low_done:?}"
    );

    // Celery's client queues 9s then 0s; our worker then starts, one task at a time.
    let rust_queue = format!("prio-rs-{}", uuid4());
    let queued = peers(&broker_url, &result_url, &["priorities", &rust_queue]).await;
    let ids = |key: &str| -> Vec<String> {
        queued[key]
            .as_array()
            .expect("ids")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = quartet_task_gateway::worker::Worker::new(broker.clone(), &[&rust_queue], 1)
        .task("rust.add", |_, _| async move { Ok(serde_json::json!(2)) });
    let running = tokio::spawn(worker.run(stop.clone()));
    let (high_done, low_done) = (
        done_at(&broker, &ids("high")).await,
        done_at(&broker, &ids("low")).await,
    );
    assert!(
        high_done.iter().max() < low_done.iter().min(),
        "we served Celery's priority 0 first: {high_done:?} then {low_done:?}"
    );
    stop.cancel();
    let _ = running.await;
}
