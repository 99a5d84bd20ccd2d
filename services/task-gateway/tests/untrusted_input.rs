//! What producers and clients may send that the gateway must not trust, on a real Redis (and
//! the embedded broker): list elements that are not Celery messages go to quarantine with the
//! reason and the consumer goes on; arguments a worker cannot read fail their task with the
//! reason; integers keep their digits; queue names that would change a permission are refused.

use std::time::Duration;

use quartet_kit::token::Claims;
use quartet_task_gateway::api::{Api, Submit};
use quartet_task_gateway::broker::Broker;
use quartet_task_gateway::celery::{RawJson, ResultMeta, State, TaskMessage, uuid4};
use quartet_task_gateway::worker::{QUARANTINE, UNREGISTERED_LABEL, Worker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Broker and result URLs on the private test Redis (`scripts/redis.sh`), databases 28 and 29.
async fn urls() -> (String, String) {
    let base = quartet_e2e::redis_url().await;
    (format!("{base}/28"), format!("{base}/29"))
}

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

async fn result(broker: &Broker, id: &str) -> ResultMeta {
    broker
        .wait_result(id, Duration::from_secs(20))
        .await
        .expect("wait")
        .unwrap_or_else(|| panic!("no result for {id} within 20 s"))
}

/// A valid envelope for `queue`, as JSON, to break one part of at a time.
fn envelope(queue: &str) -> Value {
    let message = TaskMessage::new(
        "t.any",
        RawJson::parse("[]").expect("json"),
        RawJson::parse("{}").expect("json"),
        queue,
        0,
    );
    serde_json::from_str(&message.encode()).expect("json")
}

/// Every element that is not a usable message, including the exact one from issue 14.
fn malformed(queue: &str) -> Vec<(Vec<u8>, &'static str)> {
    let mut no_task = envelope(queue);
    no_task["headers"] = json!({"id": "x"});
    let mut bad_base64 = envelope(queue);
    bad_base64["body"] = "***not base64***".into();
    let mut bad_body = envelope(queue);
    bad_body["body"] = "eyJhIjogMX0=".into(); // {"a": 1}
    let mut pickle = envelope(queue);
    pickle["content-type"] = "application/x-python-serialize".into();
    let mut wrong_types = envelope(queue);
    wrong_types["properties"]["delivery_tag"] = json!(["a list"]);
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    vec![
        (b"{\"body\":\"\xff\xfe\"}".to_vec(), "not UTF-8"),
        (b"\xff".to_vec(), "not UTF-8"),
        (b"not json at all".to_vec(), "not a kombu message envelope"),
        (b"[]".to_vec(), "not a kombu message envelope"),
        (b"{}".to_vec(), "not a kombu message envelope"),
        (
            b"{\"body\": \"\\ud800\"}".to_vec(),
            "not a kombu message envelope",
        ),
        (deep.into_bytes(), "not a kombu message envelope"),
        (no_task.to_string().into_bytes(), "headers lack \"task\""),
        (bad_base64.to_string().into_bytes(), "base64"),
        (bad_body.to_string().into_bytes(), "protocol v2 payload"),
        (
            pickle.to_string().into_bytes(),
            "application/x-python-serialize",
        ),
        (
            wrong_types.to_string().into_bytes(),
            "not a kombu message envelope",
        ),
    ]
}

/// The bytes a quarantine record keeps of its element.
fn kept_bytes(record: &Value) -> Vec<u8> {
    use base64::Engine as _;
    match (&record["message"], &record["message_base64"]) {
        (Value::String(text), _) => text.clone().into_bytes(),
        (_, Value::String(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
        _ => panic!("a record without its message: {record}"),
    }
}

/// Each case is in `records` once, byte for byte, with its reason; nothing else is.
fn each_quarantined_once(records: &[Value], cases: &[(Vec<u8>, &str)]) {
    assert_eq!(records.len(), cases.len(), "{records:#?}");
    for (raw, reason) in cases {
        let record = records
            .iter()
            .find(|r| kept_bytes(r) == *raw)
            .unwrap_or_else(|| panic!("{:?} is not in quarantine", String::from_utf8_lossy(raw)));
        let why = record["reason"].as_str().unwrap_or_default();
        assert!(
            why.contains(reason),
            "{:?}: {why:?} does not say {reason:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

fn echo_worker(broker: &Broker, queue: &str) -> Worker {
    Worker::new(broker.clone(), &[queue], 2)
        .task("t.echo", |args, _| async move { Ok(args) })
        .task("t.deep", |_, _| async move {
            let mut value = json!(1);
            for _ in 0..80 {
                value = json!([value]);
            }
            Ok(value)
        })
}

#[tokio::test]
async fn elements_that_are_not_messages_are_quarantined_with_the_reason_and_none_is_lost() {
    let (broker_url, result_url) = urls().await;
    let broker = Broker::open(&broker_url, &result_url).expect("urls");
    let mut conn = redis(&broker_url).await;
    let queue = format!("untrusted-{}", uuid4());
    let cases = malformed(&queue);
    for (raw, _) in &cases {
        let _: () = redis::cmd("LPUSH")
            .arg(&queue)
            .arg(raw.as_slice())
            .query_async(&mut conn)
            .await
            .expect("lpush");
    }
    // A good message behind them all: the consumer reaches it.
    let good = TaskMessage::new(
        "t.echo",
        RawJson::parse("[7]").expect("json"),
        RawJson::parse("{}").expect("json"),
        &queue,
        0,
    );
    broker.publish(&good).await.expect("publish");

    // A hand-made `unacked` entry whose lease lapsed: quarantined, not a crash of the
    // housekeeping that puts expired leases back.
    let tag = format!("hand-made-{}", uuid4());
    let entry = r#"[["not an envelope"], "", "x"]"#;
    let _: () = redis::pipe()
        .hset("unacked", &tag, entry)
        .zadd(quartet_task_gateway::broker::LEASES, &tag, 0)
        .query_async(&mut conn)
        .await
        .expect("hand-made entry");

    let worker = echo_worker(&broker, &queue);
    let probe = worker.clone();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let meta = result(&broker, &good.headers.id).await;
    assert_eq!(meta.status, State::Success);
    assert_eq!(
        probe.connected(),
        Ok(()),
        "no consumer thinks it lost Redis"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held: bool = redis::cmd("HEXISTS")
            .arg("unacked")
            .arg(&tag)
            .query_async(&mut conn)
            .await
            .expect("hexists");
        if !held {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hand-made entry is still in unacked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    running.await.expect("worker");

    // Every malformed element is in quarantine, byte for byte, with its reason and list.
    let records: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(QUARANTINE)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("lrange");
    let ours: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_slice::<Value>(r).expect("a JSON record"))
        .filter(|r| r["list"] == queue.as_str())
        .collect();
    let unacked = records
        .iter()
        .map(|r| serde_json::from_slice::<Value>(r).expect("a JSON record"))
        .find(|r| r["list"] == "unacked" && r["message"] == entry);
    assert!(unacked.is_some(), "the hand-made entry is in quarantine");
    each_quarantined_once(&ours, &cases);
    let left: u64 = redis::cmd("LLEN")
        .arg(&queue)
        .query_async(&mut conn)
        .await
        .expect("llen");
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_embedded_broker_quarantines_rows_that_are_not_messages_once() {
    let dir = std::env::temp_dir().join(format!("quartet-untrusted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("broker.sqlite");
    let _ = std::fs::remove_file(&path);
    let broker = Broker::open(&format!("sqlite:{}", path.display()), "").expect("file");
    let queue = "jobs";
    let cases = malformed(queue);
    {
        let file = rusqlite::Connection::open(&path).expect("open");
        for (i, (raw, _)) in cases.iter().enumerate() {
            // Non-UTF-8 bytes as a blob, the rest as text: both are read as bytes.
            let envelope = match std::str::from_utf8(raw) {
                Ok(text) => rusqlite::types::Value::Text(text.to_owned()),
                Err(_) => rusqlite::types::Value::Blob(raw.clone()),
            };
            file.execute(
                "INSERT INTO messages (tag, queue, bucket, due_ms, envelope) VALUES (?1, ?2, 0, 0, ?3)",
                rusqlite::params![format!("bad-{i}"), queue, envelope],
            )
            .expect("insert");
        }
    }
    let good = TaskMessage::new(
        "t.echo",
        RawJson::parse("[7]").expect("json"),
        RawJson::parse("{}").expect("json"),
        queue,
        0,
    );
    broker.publish(&good).await.expect("publish");
    let worker = echo_worker(&broker, queue).lease(Duration::from_secs(1));
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let meta = result(&broker, &good.headers.id).await;
    assert_eq!(meta.status, State::Success);
    // Longer than a lease: nothing comes back to be quarantined twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    running.await.expect("worker");

    let file = rusqlite::Connection::open(&path).expect("open");
    let mut stmt = file
        .prepare("SELECT value FROM lists WHERE name = ?1 ORDER BY seq")
        .expect("query");
    let records: Vec<Value> = stmt
        .query_map([QUARANTINE], |r| r.get::<_, String>(0))
        .expect("rows")
        .map(|r| serde_json::from_str(&r.expect("row")).expect("json"))
        .collect();
    each_quarantined_once(&records, &cases);
    let left: i64 = file
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 0, "no row left behind");
}

#[tokio::test]
async fn arguments_a_worker_cannot_read_fail_with_the_reason_and_integers_keep_their_digits() {
    let (broker_url, result_url) = urls().await;
    let broker = Broker::open(&broker_url, &result_url).expect("urls");
    let queue = format!("args-{}", uuid4());
    let registry = prometheus::Registry::new();
    let worker = quartet_task_gateway::builtin_worker(echo_worker(&broker, &queue))
        .metrics(&registry)
        .expect("metrics");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let send = |task: &str, args: &str| {
        // As a Celery client would publish it: the gateway's API refuses such arguments,
        // other producers do not.
        let message = TaskMessage::new(
            task,
            RawJson::parse(args).expect("JSON syntax"),
            RawJson::parse("{}").expect("json"),
            &queue,
            0,
        );
        let broker = broker.clone();
        async move {
            broker.publish(&message).await.expect("publish");
            result(&broker, &message.headers.id).await
        }
    };

    let deep = format!("{}1{}", "[".repeat(129), "]".repeat(129));
    let wide = "[123456789012345678901234567890]";
    for (task, args, reason) in [
        ("quartet.echo", "[1e999999]", "number out of range"),
        ("t.echo", "[1e999999]", "number out of range"),
        ("t.echo", r#"["\ud800"]"#, "surrogate"),
        ("quartet.echo", deep.as_str(), "nests 129 levels"),
        (
            "t.echo",
            wide,
            "123456789012345678901234567890, beyond 64 bits",
        ),
        (
            "t.deep",
            "[]",
            "result cannot be stored: it nests 80 levels",
        ),
    ] {
        let meta = send(task, args).await;
        assert_eq!(meta.status, State::Failure, "{task} {args}");
        let error = meta.result.value();
        assert_eq!(error["exc_type"], "ValueError", "{error}");
        let message = error["exc_message"][0].as_str().unwrap_or_default();
        assert!(
            message.contains(reason),
            "{task}: {message:?} lacks {reason:?}"
        );
    }

    // The built-in worker keeps integers as written.
    let meta = send("quartet.echo", wide).await;
    assert_eq!(meta.status, State::Success);
    assert_eq!(meta.result.text(), wide);
    let meta = send("quartet.add", "[123456789012345678901234567890, 1]").await;
    assert_eq!(meta.result.text(), "123456789012345678901234567891");
    let meta = send("quartet.add", "[9007199254740993, 0]").await;
    assert_eq!(
        meta.result.text(),
        "9007199254740993",
        "beyond a float's 53 bits"
    );
    let meta = send("quartet.add", "[1.5, 1]").await;
    assert_eq!(meta.result.text(), "2.5");
    let meta = send("quartet.add", "[1e308, 1e308]").await;
    assert_eq!(meta.status, State::Failure);
    assert_eq!(meta.result.value()["exc_type"], "OverflowError");
    // ... and through a chain: the next step gets the wide result as written.
    let mut steps = vec![
        TaskMessage::new(
            "quartet.add",
            RawJson::parse("[123456789012345678901234567890, 1]").expect("json"),
            RawJson::parse("{}").expect("json"),
            &queue,
            0,
        ),
        TaskMessage::new(
            "quartet.echo",
            RawJson::parse("[]").expect("json"),
            RawJson::parse("{}").expect("json"),
            &queue,
            0,
        ),
    ];
    quartet_task_gateway::canvas::make_chain(&mut steps);
    broker.publish(&steps[0]).await.expect("publish");
    let last = result(&broker, &steps[1].headers.id).await;
    assert_eq!(last.result.text(), "[123456789012345678901234567891]");

    // Task names no handler serves share one metric label, whatever a client sends.
    for n in 0..3 {
        let meta = send(&format!("nobody.{n}.{}", uuid4()), "[]").await;
        assert_eq!(meta.result.value()["exc_type"], "NotRegistered");
    }
    let families = registry.gather();
    let labels: Vec<String> = families
        .iter()
        .filter(|f| f.name() == "quartet_tasks_total")
        .flat_map(|f| f.get_metric().iter())
        .flat_map(|m| m.get_label().iter())
        .filter(|l| l.name() == "task")
        .map(|l| l.value().to_owned())
        .collect();
    assert!(labels.iter().any(|l| l == UNREGISTERED_LABEL), "{labels:?}");
    assert!(
        !labels.iter().any(|l| l.starts_with("nobody.")),
        "{labels:?}"
    );
    stop.cancel();
    running.await.expect("worker");
}

/// A caller holding exactly `perms`.
fn caller(perms: &[&str]) -> Claims {
    Claims {
        iss: "test".into(),
        sub: "ursula".into(),
        aud: "quartet".into(),
        exp: u64::MAX,
        iat: 0,
        nbf: 0,
        jti: uuid4(),
        client_id: "test".into(),
        scope: String::new(),
        roles: Vec::new(),
        perms: perms.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn submission(queue: &str, args: &str) -> Submit {
    serde_json::from_str(&format!(
        r#"{{"name": "quartet.echo", "queue": {}, "args": {args}}}"#,
        Value::from(queue)
    ))
    .expect("a submission")
}

fn api(broker: Broker) -> Api {
    Api {
        broker,
        default_queue: "celery".into(),
        max_payload_bytes: 1 << 20,
        waiters: std::sync::Arc::new(tokio::sync::Semaphore::new(10)),
        idempotency_window: Duration::from_secs(60),
        events: None,
    }
}

#[tokio::test]
async fn a_queue_name_never_widens_a_grant_on_any_operation() {
    let (broker_url, result_url) = urls().await;
    let api = api(Broker::open(&broker_url, &result_url).expect("urls"));
    let ursula = caller(&["task:submit:q1", "task:stats:q1", "task:schedule:q1"]);
    for queue in [
        "q1:anything",
        "q1:*",
        "q1:",
        "Q1",
        ",",
        "q1 ",
        "",
        "q1\u{6}\u{16}3",
    ] {
        let refused = api
            .submit(&ursula, submission(queue, "[]"))
            .await
            .expect_err(queue);
        assert_eq!(refused.status, 400, "{queue:?}: {refused:?}");
        assert!(
            refused.detail.contains("queue name"),
            "{queue:?}: {}",
            refused.detail
        );
        let refused = api.stats(&ursula, queue).await.expect_err(queue);
        assert_eq!(refused.status, 400, "{queue:?} stats: {refused:?}");
        let chain = serde_json::from_value(json!({"tasks": [
            {"name": "quartet.echo", "queue": "q1"}, {"name": "quartet.echo", "queue": queue}]}))
        .expect("a chain");
        let refused = api.chain(&ursula, chain).await.expect_err(queue);
        assert_eq!(refused.status, 400, "{queue:?} chain: {refused:?}");
        let schedule =
            serde_json::from_value(json!({"task": "quartet.echo", "queue": queue, "every": 60}))
                .expect("a schedule");
        let refused = api
            .put_schedule(&ursula, &format!("s-{}", uuid4()), schedule)
            .await
            .expect_err(queue);
        assert_eq!(refused.status, 400, "{queue:?} schedule: {refused:?}");
    }
    for (queue, character) in [("q1:anything", "':'"), ("Q1", "'Q'"), (",", "','")] {
        let refused = api
            .submit(&ursula, submission(queue, "[]"))
            .await
            .expect_err(queue);
        assert!(refused.detail.contains(character), "{}", refused.detail);
    }
    // Her own queue still works, and another is still forbidden.
    let queue = "q1";
    let submitted = api
        .submit(&ursula, submission(queue, "[]"))
        .await
        .expect("q1 is hers");
    assert_eq!(submitted.queue, "q1");
    api.stats(&ursula, "q1").await.expect("stats of q1");
    let refused = api
        .submit(&ursula, submission("q2", "[]"))
        .await
        .expect_err("q2");
    assert_eq!(refused.status, 403);
}

#[tokio::test]
async fn arguments_no_worker_could_read_are_refused_at_submission() {
    let (broker_url, result_url) = urls().await;
    let api = api(Broker::open(&broker_url, &result_url).expect("urls"));
    let admin = caller(&["*"]);
    let queue = format!("refused-{}", uuid4());
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    for (args, reason) in [
        ("[1e999999]".to_owned(), "number out of range"),
        (r#"["\ud800"]"#.to_owned(), "surrogate"),
        (
            deep(65),
            "nests 65 levels of arrays and objects; the limit is 64",
        ),
        (deep(100_000), "nests 100000 levels"),
    ] {
        // Straight from the client's text: a value would have rejected or rounded it.
        let request: Submit = serde_json::from_str(&format!(
            r#"{{"name": "quartet.echo", "queue": "{queue}", "args": {args}}}"#
        ))
        .expect("JSON syntax");
        let refused = api
            .submit(&admin, request)
            .await
            .expect_err(&args[..20.min(args.len())]);
        assert_eq!(refused.status, 400);
        assert!(refused.detail.contains(reason), "{}", refused.detail);
        assert!(refused.detail.starts_with("args: "), "{}", refused.detail);
    }
    let request: Submit = serde_json::from_str(&format!(
        r#"{{"name": "quartet.echo", "queue": "{queue}", "args": {}}}"#,
        deep(64)
    ))
    .expect("JSON");
    api.submit(&admin, request)
        .await
        .expect("64 levels are accepted");
    let request: Submit = serde_json::from_str(&format!(
        r#"{{"name": "quartet.echo", "queue": "{queue}", "args": [123456789012345678901234567890]}}"#
    ))
    .expect("JSON");
    api.submit(&admin, request)
        .await
        .expect("wide integers are accepted");
    let refused = api
        .status(&admin, uuid4(), f64::NAN)
        .await
        .expect_err("NaN wait");
    assert_eq!(refused.status, 400);
    let refused = api
        .group_status(&admin, "any", f64::NAN)
        .await
        .expect_err("NaN wait");
    assert_eq!(refused.status, 400);
}
