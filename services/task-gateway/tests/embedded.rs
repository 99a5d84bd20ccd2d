//! The embedded SQLite broker keeps the Redis broker's semantics: tasks run and their results
//! are awaited, delayed tasks wait, a dead consumer's task comes back after its lease (and
//! survives a restart meanwhile), revokes reach running tasks, chords count their parts once,
//! retries end in the dead letters, and schedules fire once per slot.

use std::time::Duration;

use quartet_task_gateway::broker::Broker;
use quartet_task_gateway::celery::{RawJson, State, TaskMessage};
use quartet_task_gateway::worker::{TaskError, Worker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn file(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("quartet-embedded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.sqlite"));
    let _ = std::fs::remove_file(&path);
    format!("sqlite:{}", path.display())
}

fn task(name: &str, args: Value) -> TaskMessage {
    TaskMessage::new(
        name,
        RawJson::parse(&args.to_string()).expect("json"),
        RawJson::parse("{}").expect("json"),
        "jobs",
        0,
    )
}

fn total(values: &Value) -> Value {
    values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .sum::<i64>()
        .into()
}

fn worker(broker: &Broker) -> Worker {
    Worker::new(broker.clone(), &["jobs"], 3)
        .lease(Duration::from_secs(2))
        .max_retries(1)
        .task("add", |args, _| async move { Ok(total(&args)) })
        .task("sum", |args, _| async move { Ok(total(&args[0])) })
        .task("sleep", |args, _| async move {
            tokio::time::sleep(Duration::from_secs_f64(args[0].as_f64().unwrap_or(1.0))).await;
            Ok(Value::Null)
        })
        .task("flaky", |_, _| async move {
            Err::<Value, _>(TaskError::retry(
                "RuntimeError",
                "always",
                Duration::from_millis(100),
            ))
        })
}

async fn finished(
    broker: &Broker,
    message: &TaskMessage,
) -> quartet_task_gateway::celery::ResultMeta {
    broker
        .wait_result(&message.headers.id, Duration::from_secs(20))
        .await
        .expect("wait")
        .unwrap_or_else(|| panic!("{} did not finish", message.headers.task))
}

#[tokio::test]
async fn tasks_delays_chords_revokes_and_dead_letters_work_as_on_redis() {
    let broker = Broker::open(&file("semantics"), "").expect("the embedded broker");
    broker.ping().await.expect("ping");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker(&broker).run(stop.clone()));

    let add = task("add", json!([2, 40]));
    broker.publish(&add).await.expect("publish");
    let meta = finished(&broker, &add).await;
    assert_eq!(
        (meta.status, meta.result.value()),
        (State::Success, json!(42))
    );

    // A delayed task waits for its time.
    let mut later = task("add", json!([1, 1]));
    later.headers.eta = Some(
        (chrono::Utc::now() + chrono::Duration::milliseconds(800))
            .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
            .to_string(),
    );
    let published = std::time::Instant::now();
    broker.publish(&later).await.expect("publish");
    assert_eq!(broker.stats("jobs").await.expect("stats").delayed, 1);
    finished(&broker, &later).await;
    assert!(published.elapsed() >= Duration::from_millis(700));

    // A chord: the body gets the parts' results in order, once.
    let mut header = vec![
        task("add", json!([1, 1])),
        task("sleep", json!([0.2])),
        task("add", json!([3, 3])),
    ];
    let body = task("sum", json!([]));
    quartet_task_gateway::canvas::make_chord(&mut header, body.signature(), "g1");
    broker.start_chord("g1", header.len()).await.expect("chord");
    for part in &header {
        broker.publish(part).await.expect("publish");
    }
    let meta = finished(&broker, &body).await;
    assert_eq!(meta.result.value(), 8, "2 + null + 6");

    // A revoke with terminate stops a running task.
    let long = task("sleep", json!([30]));
    broker.publish(&long).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.revoke(&long.headers.id).await.expect("mark");
    broker
        .broadcast_revoke(&long.headers.id, true)
        .await
        .expect("broadcast");
    let meta = finished(&broker, &long).await;
    assert_eq!(meta.status, State::Revoked);
    assert_eq!(meta.result.value()["exc_message"], json!(["terminated"]));

    // A task out of retries goes to the dead letters.
    let flaky = task("flaky", json!([]));
    broker.publish(&flaky).await.expect("publish");
    let meta = finished(&broker, &flaky).await;
    assert_eq!(meta.status, State::Failure);
    assert_eq!(broker.stats("jobs").await.expect("stats").dead_letters, 1);

    stop.cancel();
    running.await.expect("the worker drains");
    let stats = broker.stats("jobs").await.expect("stats");
    assert_eq!(
        (stats.waiting, stats.in_flight, stats.delayed),
        (0, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_dead_consumers_task_survives_a_restart_and_comes_back_after_its_lease() {
    let path = file("lease");
    let message = task("add", json!([1, 2]));
    {
        let broker = Broker::open(&path, "").expect("open");
        broker.publish(&message).await.expect("publish");
        let mut consumer = broker.consumer().await.expect("consumer");
        let taken = consumer
            .fetch(
                &["jobs"],
                Duration::from_secs(1),
                Some(("doomed", Duration::from_secs(1))),
            )
            .await
            .expect("fetch")
            .expect("the message");
        assert_eq!(
            taken.message.expect("usable").headers.id,
            message.headers.id
        );
        // The consumer dies with it: never acknowledged. The process goes too.
    }
    let broker = Broker::open(&path, "").expect("reopen");
    let stats = broker.stats("jobs").await.expect("stats");
    assert_eq!(
        stats.in_flight, 1,
        "still held by the dead consumer: {stats:?}"
    );
    assert_eq!(stats.consumers, vec!["doomed".to_owned()]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(broker.redeliver_expired().await.expect("redeliver"), 1);
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker(&broker).run(stop.clone()));
    let meta = finished(&broker, &message).await;
    assert_eq!(meta.result.value(), 3);
    stop.cancel();
    running.await.expect("drains");
}

#[tokio::test]
async fn a_schedule_fires_once_per_slot_on_the_embedded_broker() {
    use quartet_task_gateway::schedule::{Schedule, Scheduler};
    let broker = Broker::open(&file("schedule"), "").expect("open");
    let schedule: Schedule =
        serde_json::from_value(json!({"task": "add", "args": [1], "every": 1, "queue": "beat"}))
            .expect("a schedule");
    broker.put_schedule("tick", &schedule).await.expect("put");
    let stop = CancellationToken::new();
    // Two schedulers on one file: one leads, a slot fires once.
    let a = tokio::spawn(Scheduler::new(broker.clone(), "a", "beat").run(stop.clone()));
    let b = tokio::spawn(Scheduler::new(broker.clone(), "b", "beat").run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.cancel();
    let _ = (a.await, b.await);
    let state = broker
        .schedules()
        .await
        .expect("schedules")
        .into_iter()
        .find(|s| s.name == "tick")
        .expect("tick");
    let waiting = broker.stats("beat").await.expect("stats").waiting;
    assert!((2..=4).contains(&state.runs.runs), "{state:?}");
    assert_eq!(waiting, state.runs.runs, "one message per run: {state:?}");
    assert!(broker.delete_schedule("tick").await.expect("delete"));
}
