//! quartet-task-gateway as a process with its built-in worker, a real Redis and tokens from a
//! real quartet-auth: a task submitted over REST runs and its result comes back; the errors a
//! client can make are refused with their reasons; a real Celery client reads the result of a
//! task the gateway ran.

use std::time::Duration;

use quartet_e2e::http_client;
use quartet_e2e::process::Server;
use serde_json::{Value, json};

/// Runs a line of Python against the `peers` Celery app on `(broker, results)` and returns
/// what it printed, as JSON.
async fn celery_client(python: &str, urls: (&str, &str), code: &str, arg: &str) -> Value {
    let out = tokio::process::Command::new(python)
        .args(["-c", code, arg])
        .current_dir(quartet_e2e::repo_root().join("e2e/python"))
        .env("BROKER_URL", urls.0)
        .env("RESULT_URL", urls.1)
        .output()
        .await
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A gateway verifying `auth`'s tokens, on Redis `(broker, results)`, its built-in worker
/// consuming `queue`, plus `extra` settings.
async fn rest_gateway(
    auth: &Server,
    urls: (&str, &str),
    queue: &str,
    extra: &[(&str, &str)],
) -> Server {
    let jwks = format!("{}/.well-known/jwks.json", auth.url("http"));
    let mut env = vec![
        ("QUARTET_TASK_GATEWAY_AUTH_JWKS_URL", jwks.as_str()),
        (
            "QUARTET_TASK_GATEWAY_AUTH_ISSUER",
            quartet_e2e::auth::ISSUER,
        ),
        ("QUARTET_TASK_GATEWAY_REDIS_BROKER_URL", urls.0),
        ("QUARTET_TASK_GATEWAY_REDIS_RESULT_URL", urls.1),
        ("QUARTET_TASK_GATEWAY_WORKER_ENABLED", "true"),
        ("QUARTET_TASK_GATEWAY_WORKER_QUEUES", queue),
    ];
    env.extend_from_slice(extra);
    Server::start("quartet-task-gateway", true, &env)
        .await
        .expect("the gateway starts")
}

/// A webhook worker in miniature: `POST /double` answers `{"result": args[0] * 2}`,
/// anything else 400 with a reason.
async fn webhook_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let first_line = String::from_utf8_lossy(&buf[..head_end])
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let body: Value =
                    serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
                let (status, answer) = if first_line.starts_with("POST /double ") {
                    (
                        "200 OK",
                        json!({"result": body["args"][0].as_i64().unwrap_or(0) * 2}).to_string(),
                    )
                } else {
                    ("400 Bad Request", "no such hook".to_owned())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_task_submitted_over_rest_runs_on_the_rust_worker_and_its_result_comes_back() {
    let (auth, token) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let redis = quartet_e2e::redis_url().await;
    let (broker_url, result_url) = (format!("{redis}/12"), format!("{redis}/13"));
    let queue = format!("rest-{}", std::process::id());
    let hook = webhook_server().await;
    let hooks = format!("hook.double=http://{hook}/double,hook.bad=http://{hook}/nowhere");
    let gateway = rest_gateway(
        &auth,
        (&broker_url, &result_url),
        &queue,
        &[
            ("QUARTET_TASK_GATEWAY_TASKS_DEFAULT_QUEUE", &queue),
            ("QUARTET_TASK_GATEWAY_TASKS_MAX_PAYLOAD_BYTES", "4096"),
            ("QUARTET_TASK_GATEWAY_WORKER_MAX_RETRIES", "2"),
            ("QUARTET_TASK_GATEWAY_WORKER_LEASE_SECONDS", "3"),
            ("QUARTET_TASK_GATEWAY_WORKER_WEBHOOKS", &hooks),
        ],
    )
    .await;
    let base = gateway.url("http");
    let http = http_client(Duration::from_secs(30));
    let finished = |id: String| {
        let request = http
            .get(format!("{base}/v1/tasks/{id}?wait=20"))
            .bearer_auth(&token);
        async move {
            request
                .send()
                .await
                .expect("status")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let post = |body: Value| {
        http.post(format!("{base}/v1/tasks"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    // A submission that must be accepted, as its JSON answer.
    let submit = |body: Value| {
        let sent = post(body);
        async move {
            sent.await
                .expect("submit")
                .json::<Value>()
                .await
                .expect("json")
        }
    };

    let submitted: Value = submit(json!({"name": "quartet.add", "args": [2, 40]})).await;
    let id = submitted["id"].as_str().expect("an id").to_owned();
    assert_eq!(submitted["queue"], queue.as_str());
    let status = finished(id.to_string()).await;
    assert_eq!(status["state"], "SUCCESS", "{status}");
    assert_eq!(status["result"], 42);

    // A task nobody serves fails as Celery reports it, with the reason.
    let unknown: Value = submit(json!({"name": "shop.nobody", "args": []})).await;
    let id = unknown["id"].as_str().expect("id");
    let status = finished(id.to_string()).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    assert_eq!(status["result"]["exc_type"], "NotRegistered");

    // Bad input is refused with its reason; nothing is queued.
    let big = "x".repeat(8000);
    let refused = post(json!({"name": "quartet.echo", "args": [big]}))
        .await
        .expect("post");
    assert_eq!(refused.status(), 400);
    let problem: Value = refused.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("the limit is 4096"),
        "{problem}"
    );
    let refused = post(json!({"name": "quartet.echo", "args": {"not": "a list"}}))
        .await
        .expect("post");
    assert_eq!(refused.status(), 400);
    let anonymous = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"name": "quartet.add", "args": [1, 1]}))
        .send()
        .await
        .expect("post");
    assert_eq!(anonymous.status(), 401);

    // A task that keeps asking for a retry is tried three times, then goes to the dead letters.
    let flaky: Value = submit(json!({"name": "quartet.flaky", "args": [0.2]})).await;
    let flaky_id = flaky["id"].as_str().expect("id").to_owned();
    let status = finished(flaky_id.clone()).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    assert_eq!(status["result"]["exc_type"], "RuntimeError");
    let attempts = gateway
        .output()
        .lines()
        .filter(|l| l.contains("task started") && l.contains(&flaky_id))
        .count();
    assert_eq!(attempts, 3, "the first attempt and two retries");
    {
        let client = redis::Client::open(broker_url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let dead: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("quartet.dead.{queue}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("lrange");
        assert_eq!(dead.len(), 1, "{dead:?}");
        let record: Value = serde_json::from_str(&dead[0]).expect("json");
        assert_eq!(record["reason"], "retry budget of 2 spent");
    }

    // Webhook workers: any HTTP endpoint runs a task.
    let doubled: Value = submit(json!({"name": "hook.double", "args": [21]})).await;
    let status = finished(doubled["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(
        (status["state"].clone(), status["result"].clone()),
        (json!("SUCCESS"), json!(42)),
        "{status}"
    );
    let bad: Value = submit(json!({"name": "hook.bad", "args": []})).await;
    let status = finished(bad["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    assert!(
        status["result"]["exc_message"][0]
            .as_str()
            .unwrap_or_default()
            .contains("400"),
        "{status}"
    );

    // A hard time limit stops a task that runs too long.
    let slow: Value = submit(json!({"name": "quartet.sleep", "args": [10], "time_limit": 1})).await;
    let began = std::time::Instant::now();
    let status = finished(slow["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    assert_eq!(status["result"]["exc_type"], "TimeLimitExceeded");
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "stopped at its limit"
    );

    // An idempotency key makes a repeated submission the same task.
    let first: Value =
        submit(json!({"name": "quartet.echo", "args": ["once"], "idempotency_key": "order-17"}))
            .await;
    let again =
        post(json!({"name": "quartet.echo", "args": ["once"], "idempotency_key": "order-17"}))
            .await
            .expect("submit");
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        (first["duplicate"].clone(), again["duplicate"].clone()),
        (json!(false), json!(true))
    );

    // Messages no worker can use are quarantined with the reason; the worker goes on.
    {
        let client = redis::Client::open(broker_url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let _: () = redis::cmd("DEL")
            .arg("quartet.quarantine")
            .query_async(&mut conn)
            .await
            .expect("del");
        let pickled = json!({"body": "gAJ9cQAu", "content-encoding": "binary", "content-type": "application/x-python-serialize",
            "headers": {"task": "x", "id": "p1"}, "properties": {"correlation_id": "p1", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0, "body_encoding": "base64", "delivery_tag": "t-p1"}});
        for raw in [pickled.to_string(), "not json at all".to_owned()] {
            let _: () = redis::cmd("LPUSH")
                .arg(&queue)
                .arg(raw)
                .query_async(&mut conn)
                .await
                .expect("lpush");
        }
        let quarantined: Vec<String> =
            quartet_e2e::eventually("both quarantined", Duration::from_secs(10), || {
                let mut conn = conn.clone();
                async move {
                    let items: Vec<String> = redis::cmd("LRANGE")
                        .arg("quartet.quarantine")
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    (items.len() == 2).then_some(items)
                }
            })
            .await
            .expect("quarantine");
        let reasons: Vec<String> = quarantined
            .iter()
            .map(|q| {
                serde_json::from_str::<Value>(q).expect("json")["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("application/x-python-serialize")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("not a kombu message envelope")),
            "{reasons:?}"
        );
    }

    // Delayed, expiring and revoked tasks.
    let submitted_at = std::time::Instant::now();
    let later: Value =
        submit(json!({"name": "quartet.echo", "args": ["later"], "countdown": 2})).await;
    let expiring: Value =
        submit(json!({"name": "quartet.echo", "args": [1], "countdown": 2, "expires": 1})).await;
    let revoked: Value = submit(json!({"name": "quartet.echo", "args": [2], "countdown": 2})).await;
    let revoking = http
        .delete(format!(
            "{base}/v1/tasks/{}",
            revoked["id"].as_str().expect("id")
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoking.status(), 202);
    let delayed: Vec<String> = {
        let client = redis::Client::open(broker_url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        redis::cmd("ZRANGE")
            .arg("quartet.delayed")
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("zrange")
    };
    assert_eq!(
        delayed.len(),
        3,
        "delayed tasks wait in Redis, not in a worker"
    );
    let stats: Value = http
        .get(format!("{base}/v1/queues/{queue}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["delayed"], 3, "{stats}");
    assert_eq!(stats["dead_letters"], 1, "{stats}");
    assert_eq!(stats["by_priority"]["0"], 0, "{stats}");
    let status = finished(later["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(status["result"], json!(["later"]), "{status}");
    assert!(
        submitted_at.elapsed() >= Duration::from_millis(1500),
        "ran no sooner than its countdown"
    );
    let status = finished(expiring["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(status["state"], "REVOKED", "{status}");
    assert_eq!(status["result"]["exc_message"], json!(["expired"]));
    let status = finished(revoked["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(status["state"], "REVOKED", "{status}");
    assert_eq!(status["result"]["exc_message"], json!(["revoked"]));

    // A real Celery client reads the result of a task the gateway ran.
    let python = quartet_e2e::python().await;
    let submitted: Value = submit(json!({"name": "quartet.echo", "args": ["from rest"]})).await;
    let id = submitted["id"].as_str().expect("id");
    let value = celery_client(
        &python,
        (&broker_url, &result_url),
        "import sys, json; from peers import app; print(json.dumps(app.AsyncResult(sys.argv[1]).get(timeout=20)))",
        id,
    )
    .await;
    assert_eq!(value, json!(["from rest"]));

    // A Celery client's countdown: our worker parks it in Redis until due, then runs it.
    let value = celery_client(
        &python,
        (&broker_url, &result_url),
        "import sys, json, time; from peers import app; t = time.time(); r = app.send_task('quartet.echo', args=['celery countdown'], countdown=2, queue=sys.argv[1]); print(json.dumps([r.get(timeout=20), time.time() - t]))",
        &queue,
    )
    .await;
    assert_eq!(value[0], json!(["celery countdown"]));
    assert!(value[1].as_f64().unwrap_or_default() >= 1.5, "{value}");

    // The same API over gRPC, with the same permissions.
    {
        use quartet_proto::tasks::v1 as pb;
        let channel = tonic::transport::Endpoint::from_shared(gateway.url("grpc"))
            .expect("endpoint")
            .connect()
            .await
            .expect("grpc");
        let mut client = pb::tasks_client::TasksClient::new(channel);
        let submit = pb::SubmitRequest {
            name: "quartet.add".into(),
            args_json: "[40, 2]".into(),
            queue: queue.clone(),
            ..Default::default()
        };
        let refused = client.submit(submit.clone()).await.expect_err("no token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let submitted = client
            .submit(with_token(&token, submit))
            .await
            .expect("submit")
            .into_inner();
        let status = client
            .get(with_token(
                &token,
                pb::GetRequest {
                    id: submitted.id,
                    wait: 20.0,
                },
            ))
            .await
            .expect("get")
            .into_inner();
        assert_eq!(
            (status.state.as_str(), status.result_json.as_str()),
            ("SUCCESS", "42")
        );
        let bad = client
            .submit(with_token(
                &token,
                pb::SubmitRequest {
                    name: "quartet.add".into(),
                    args_json: "[1,".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("bad json");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().contains("args_json"), "{}", bad.message());
    }

    // The worker's metrics on the admin listener.
    let metrics = gateway.metrics().await;
    for expected in [
        "quartet_tasks_total{state=\"SUCCESS\",task=\"quartet.add\"}",
        "quartet_tasks_total{state=\"RETRY\",task=\"quartet.flaky\"} 2",
        "quartet_tasks_total{state=\"REVOKED\",task=\"quartet.echo\"} 2",
        "quartet_task_wait_seconds_count{task=\"quartet.add\"}",
        "quartet_task_run_seconds_count{task=\"quartet.add\"}",
        "quartet_task_latency_seconds_count{task=\"quartet.add\"}",
        &format!("quartet_queue_depth{{bucket=\"0\",queue=\"{queue}\"}} 0"),
    ] {
        assert!(metrics.contains(expected), "{expected} not in:\n{metrics}");
    }
}

/// A gateway process with its built-in worker on `queue`, leases of `lease` seconds.
async fn gateway_worker(broker_url: &str, result_url: &str, queue: &str, lease: &str) -> Server {
    Server::start(
        "quartet-task-gateway",
        true,
        &[
            ("QUARTET_TASK_GATEWAY_REDIS_BROKER_URL", broker_url),
            ("QUARTET_TASK_GATEWAY_REDIS_RESULT_URL", result_url),
            ("QUARTET_TASK_GATEWAY_WORKER_ENABLED", "true"),
            ("QUARTET_TASK_GATEWAY_WORKER_QUEUES", queue),
            ("QUARTET_TASK_GATEWAY_WORKER_CONCURRENCY", "1"),
            ("QUARTET_TASK_GATEWAY_WORKER_LEASE_SECONDS", lease),
        ],
    )
    .await
    .expect("a gateway with a worker starts")
}

/// How many times `server` started task `id`.
fn starts(server: &Server, id: &str) -> usize {
    server
        .output()
        .lines()
        .filter(|l| l.contains("task started") && l.contains(id))
        .count()
}

#[tokio::test]
async fn a_killed_workers_task_runs_again_elsewhere_and_a_live_workers_long_task_runs_once() {
    use quartet_task_gateway::broker::Broker;
    use quartet_task_gateway::celery::{RawJson, State, TaskMessage};
    let redis = quartet_e2e::redis_url().await;
    let (broker_url, result_url) = (format!("{redis}/14"), format!("{redis}/15"));
    let queue = format!("lease-{}", std::process::id());
    let broker = Broker::open(&broker_url, &result_url).expect("urls");
    let mut workers = [
        gateway_worker(&broker_url, &result_url, &queue, "2").await,
        gateway_worker(&broker_url, &result_url, &queue, "2").await,
    ];
    let sleep = |seconds: &str| {
        TaskMessage::new(
            "quartet.sleep",
            RawJson::parse(&format!("[{seconds}]")).expect("json"),
            RawJson::parse("{}").expect("json"),
            &queue,
            0,
        )
    };

    // A live worker's task that outlasts its lease twice over runs exactly once.
    let long = sleep("5");
    broker.publish(&long).await.expect("publish");
    let meta = broker
        .wait_result(&long.headers.id, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("finished");
    assert_eq!(meta.status, State::Success);
    let runs: usize = workers.iter().map(|w| starts(w, &long.headers.id)).sum();
    assert_eq!(runs, 1, "the heartbeat kept the lease: no second delivery");

    // Kill the worker in the middle of a task: the other one runs it, nothing is lost.
    let task = sleep("3");
    broker.publish(&task).await.expect("publish");
    let holder = quartet_e2e::eventually("a worker took the task", Duration::from_secs(10), || {
        let found = workers.iter().position(|w| starts(w, &task.headers.id) > 0);
        async move { found }
    })
    .await
    .expect("taken");
    workers[holder].kill().await.expect("SIGKILL");
    let meta = broker
        .wait_result(&task.headers.id, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("the task finished on the surviving worker");
    assert_eq!(meta.status, State::Success);
    let survivor = &workers[1 - holder];
    assert_eq!(starts(survivor, &task.headers.id), 1);
    assert!(
        survivor.output().contains("\"redelivered\":true"),
        "the survivor got it as a redelivery"
    );
}

#[tokio::test]
async fn a_tasks_trace_runs_from_the_rest_call_into_the_worker() {
    let receiver = quartet_e2e::otlp::Receiver::start()
        .await
        .expect("receiver");
    let endpoint = format!("http://{}", receiver.addr);
    let (auth, token) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let redis = quartet_e2e::redis_url().await;
    let (broker_url, result_url) = (format!("{redis}/12"), format!("{redis}/13"));
    let queue = format!("traced-{}", std::process::id());
    let gateway = rest_gateway(
        &auth,
        (&broker_url, &result_url),
        &queue,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let http = http_client(Duration::from_secs(30));
    let submitted: Value = http
        .post(format!("{}/v1/tasks", gateway.url("http")))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"name": "quartet.add", "args": [1, 2], "queue": queue}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let id = submitted["id"].as_str().expect("id");
    let status: Value = http
        .get(format!("{}/v1/tasks/{id}?wait=20", gateway.url("http")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["result"], 3, "{status}");
    let span = quartet_e2e::eventually("the worker's span", Duration::from_secs(15), || {
        let found = receiver
            .spans()
            .into_iter()
            .find(|s| s.name.starts_with("task.run") && s.trace_id == trace_id);
        async move { found }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", receiver.spans()));
    assert_eq!(span.service, "quartet-task-gateway");
    assert!(!span.parent_span_id.is_empty(), "a child, not a new root");
}

/// `POST path` with `body` as `token`; the status and the JSON answer.
async fn post(url: String, token: &str, body: Value) -> (u16, Value) {
    let response = http_client(Duration::from_secs(70))
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET url` as `token`: the JSON answer.
async fn get(url: String, token: &str) -> Value {
    http_client(Duration::from_secs(70))
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn chains_groups_chords_time_limits_and_terminate_over_rest() {
    let (auth, token) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let redis = quartet_e2e::redis_url().await;
    let (broker_url, result_url) = (format!("{redis}/22"), format!("{redis}/23"));
    let queue = format!("canvas-{}", std::process::id());
    let gateway = rest_gateway(&auth, (&broker_url, &result_url), &queue, &[]).await;
    let api = gateway.url("http");
    let task = |name: &str, args: Value| json!({"name": name, "args": args, "queue": queue});
    let result_of = |id: String| {
        let (api, token) = (api.clone(), token.clone());
        async move { get(format!("{api}/v1/tasks/{id}?wait=30"), &token).await }
    };

    // A chain: add(1, 2) → add(<3>, 10) → add(<13>, 100).
    let (status, chain) = post(
        format!("{api}/v1/chains"),
        &token,
        json!({"tasks": [task("quartet.add", json!([1, 2])), task("quartet.add", json!([10])), task("quartet.add", json!([100]))]}),
    )
    .await;
    assert_eq!(status, 202, "{chain}");
    assert_eq!(chain["task_ids"].as_array().map(Vec::len), Some(3));
    let last = result_of(chain["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(last["result"], 113, "{last}");

    // A group, read as a group.
    let (status, group) = post(
        format!("{api}/v1/groups"),
        &token,
        json!({"tasks": [task("quartet.add", json!([1, 1])), task("quartet.add", json!([2, 2]))]}),
    )
    .await;
    assert_eq!(status, 202, "{group}");
    let progress = get(
        format!(
            "{api}/v1/groups/{}?wait=30",
            group["id"].as_str().expect("id")
        ),
        &token,
    )
    .await;
    assert_eq!(progress["completed"], 2, "{progress}");
    assert_eq!(progress["tasks"][0]["result"], 2);
    assert_eq!(progress["tasks"][1]["result"], 4);

    // A chord: the body gets the header's results in order.
    let (status, chord) = post(
        format!("{api}/v1/chords"),
        &token,
        json!({"header": [task("quartet.add", json!([1, 1])), task("quartet.sleep", json!([0.3])), task("quartet.add", json!([3, 3]))],
               "body": task("quartet.echo", json!([]))}),
    )
    .await;
    assert_eq!(status, 202, "{chord}");
    let body = result_of(chord["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(body["result"], json!([[2, 0.3, 6]]), "{body}");

    // A chord whose part fails: the body is failed with ChordError, naming the part.
    let (_, chord) = post(
        format!("{api}/v1/chords"),
        &token,
        json!({"header": [task("quartet.add", json!(["x"]))], "body": task("quartet.echo", json!([]))}),
    )
    .await;
    let body = result_of(chord["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(body["state"], "FAILURE", "{body}");
    assert_eq!(body["result"]["exc_type"], "ChordError");
    assert!(
        body["result"]["exc_message"][0]
            .as_str()
            .unwrap_or_default()
            .contains("TypeError"),
        "{body}"
    );

    // Through the API to a real Celery worker, and a chord whose header spans both worlds.
    let celery_queue = format!("{queue}-py");
    let _celery = quartet_e2e::celery_worker(&broker_url, &result_url, &celery_queue).await;
    let on_celery =
        |name: &str, args: Value| json!({"name": name, "args": args, "queue": celery_queue});
    let (_, submitted) = post(
        format!("{api}/v1/tasks"),
        &token,
        on_celery("peers.add", json!([20, 22])),
    )
    .await;
    let status = result_of(submitted["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(status["result"], 42, "Celery ran it: {status}");
    let (_, chord) = post(
        format!("{api}/v1/chords"),
        &token,
        json!({"header": [on_celery("peers.add", json!([1, 2])), task("quartet.add", json!([3, 4])), on_celery("peers.mul", json!([5, 6]))],
               "body": task("quartet.echo", json!([]))}),
    )
    .await;
    let body = result_of(chord["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(body["result"], json!([[3, 7, 30]]), "{body}");

    // Extra headers ride in the message; Celery's own names cannot be replaced.
    let parked = format!("{queue}-parked");
    let (status, _) = post(
        format!("{api}/v1/tasks"),
        &token,
        json!({"name": "quartet.echo", "queue": parked, "headers": {"tenant": "acme"}}),
    )
    .await;
    assert_eq!(status, 202);
    let raw: Vec<String> = {
        let client = redis::Client::open(broker_url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        redis::cmd("LRANGE")
            .arg(&parked)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("lrange")
    };
    let message =
        quartet_task_gateway::celery::TaskMessage::decode(raw[0].as_bytes()).expect("ours");
    assert_eq!(message.headers.extra["tenant"], "acme");
    let (status, problem) = post(
        format!("{api}/v1/tasks"),
        &token,
        json!({"name": "quartet.echo", "queue": parked, "headers": {"id": "forged"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("reserved"),
        "{problem}"
    );

    // Bad workflows are refused with the reason.
    let (status, problem) = post(format!("{api}/v1/chains"), &token, json!({"tasks": []})).await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("1 to 1000 tasks"),
        "{problem}"
    );
    let (status, problem) = post(
        format!("{api}/v1/chains"),
        &token,
        json!({"tasks": [task("quartet.add", json!([1])), {"name": "quartet.add", "queue": queue, "eta": "2030-01-01T00:00:00+00:00"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("task 1 of the chain"),
        "{problem}"
    );

    // The soft time limit reaches the handler, which stops early.
    let (_, slow) = post(
        format!("{api}/v1/tasks"),
        &token,
        json!({"name": "quartet.sleep", "args": [30], "queue": queue, "soft_time_limit": 0.5, "time_limit": 20}),
    )
    .await;
    let started = std::time::Instant::now();
    let status = result_of(slow["id"].as_str().expect("id").to_owned()).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    assert_eq!(status["result"]["exc_type"], "SoftTimeLimitExceeded");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A retry budget set at submission: one retry, then the dead letters.
    let (_, flaky) = post(
        format!("{api}/v1/tasks"),
        &token,
        json!({"name": "quartet.flaky", "args": [0.1], "queue": queue, "max_retries": 1}),
    )
    .await;
    let flaky_id = flaky["id"].as_str().expect("id").to_owned();
    let status = result_of(flaky_id.clone()).await;
    assert_eq!(status["state"], "FAILURE", "{status}");
    let attempts = gateway
        .output()
        .lines()
        .filter(|l| l.contains("task started") && l.contains(&flaky_id))
        .count();
    assert_eq!(attempts, 2, "the first attempt and one retry");
    let (status, _) = post(
        format!("{api}/v1/tasks"),
        &token,
        json!({"name": "quartet.flaky", "queue": queue, "max_retries": 1000}),
    )
    .await;
    assert_eq!(status, 400);

    // A revoke with terminate stops a running task.
    let (_, long) = post(
        format!("{api}/v1/tasks"),
        &token,
        json!({"name": "quartet.sleep", "args": [60], "queue": queue}),
    )
    .await;
    let id = long["id"].as_str().expect("id").to_owned();
    // Running longer than 100 ms, it is recorded STARTED (which also keeps the Celery worker
    // listening here from writing the revoke over it).
    quartet_e2e::eventually("the task recorded STARTED", Duration::from_secs(10), || {
        let url = format!("{api}/v1/tasks/{id}");
        let token = token.clone();
        async move { (get(url, &token).await["state"] == "STARTED").then_some(()) }
    })
    .await
    .expect("started");
    let revoked = http_client(Duration::from_secs(10))
        .delete(format!("{api}/v1/tasks/{id}?terminate=true"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status().as_u16(), 202);
    let status = result_of(id).await;
    assert_eq!(status["state"], "REVOKED", "{status}");
    assert_eq!(status["result"]["exc_message"], json!(["terminated"]));
}

#[tokio::test]
async fn a_schedule_fires_once_per_slot_across_a_scheduler_failover_and_misses_are_counted() {
    use quartet_task_gateway::broker::Broker;
    let (auth, token) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let redis = quartet_e2e::redis_url().await;
    let (broker_url, result_url) = (format!("{redis}/24"), format!("{redis}/25"));
    let queue = format!("beat-{}", std::process::id());
    let broker = Broker::open(&broker_url, &result_url).expect("urls");
    // Two replicas, no worker: every firing stays in the queue to be counted.
    let replica = || {
        let jwks = format!("{}/.well-known/jwks.json", auth.url("http"));
        let (broker_url, result_url) = (broker_url.clone(), result_url.clone());
        async move {
            Server::start(
                "quartet-task-gateway",
                true,
                &[
                    ("QUARTET_TASK_GATEWAY_AUTH_JWKS_URL", jwks.as_str()),
                    (
                        "QUARTET_TASK_GATEWAY_AUTH_ISSUER",
                        quartet_e2e::auth::ISSUER,
                    ),
                    ("QUARTET_TASK_GATEWAY_REDIS_BROKER_URL", &broker_url),
                    ("QUARTET_TASK_GATEWAY_REDIS_RESULT_URL", &result_url),
                ],
            )
            .await
            .expect("a gateway starts")
        }
    };
    let mut replicas = [replica().await, replica().await];
    let api = replicas[0].url("http");
    let name = format!("beat-{}", std::process::id());

    // Bad schedules are refused with the reason.
    let put = |body: Value| {
        let (api, token, name) = (api.clone(), token.clone(), name.clone());
        async move {
            let response = http_client(Duration::from_secs(10))
                .put(format!("{api}/v1/schedules/{name}"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("put");
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, problem) =
        put(json!({"task": "quartet.echo", "cron": "every tuesday", "queue": queue})).await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not a cron expression"),
        "{problem}"
    );
    let (status, problem) =
        put(json!({"task": "quartet.echo", "every": 1, "cron": "* * * * *", "queue": queue})).await;
    assert_eq!(status, 400, "{problem}");

    let (status, created) =
        put(json!({"task": "quartet.echo", "args": ["tick"], "every": 1, "queue": queue})).await;
    assert_eq!(status, 200, "{created}");
    let since = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Kill the replica that fires; the other takes over once the lease lapses.
    let leader = replicas
        .iter()
        .position(|r| r.output().contains("now fires the periodic schedules"))
        .expect("one replica leads");
    replicas[leader].kill().await.expect("SIGKILL");
    let survivor = replicas[1 - leader].url("http");
    quartet_e2e::eventually("the survivor leads", Duration::from_secs(15), || {
        let leads = replicas[1 - leader]
            .output()
            .contains("now fires the periodic schedules");
        async move { leads.then_some(()) }
    })
    .await
    .expect("a new leader");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deleted = http_client(Duration::from_secs(10))
        .delete(format!("{survivor}/v1/schedules/{name}"))
        .bearer_auth(&token)
        .send();
    // Read the state first, then stop the schedule.
    let state = get(format!("{survivor}/v1/schedules/{name}"), &token).await;
    let elapsed = since.elapsed().as_secs_f64();
    assert_eq!(deleted.await.expect("delete").status().as_u16(), 204);
    let depth: u64 = broker
        .depth(&queue)
        .await
        .expect("depth")
        .iter()
        .map(|(_, n)| n)
        .sum();
    let runs = state["runs"].as_u64().expect("runs");
    let missed = state["missed"].as_u64().expect("missed");
    // Every firing is one message: none doubled across the failover…
    assert!(
        depth == runs || depth == runs + 1,
        "{depth} messages for {runs} runs: {state}"
    );
    // …and the slots that fell due while no one led are counted, not silently lost.
    assert!(missed >= 1, "{state}");
    let slots = (runs + missed) as f64;
    assert!(
        slots >= elapsed - 2.5 && slots <= elapsed + 1.0,
        "{slots} slots in {elapsed:.1} s: {state}"
    );
}

/// A Redis server of this test's own on `port`, killed on drop.
fn own_redis(port: u16) -> tokio::process::Child {
    tokio::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server (installed by scripts/redis.sh)")
}

#[tokio::test]
async fn a_worker_cut_off_from_redis_says_so_in_readyz_and_resumes_when_it_returns() {
    use quartet_task_gateway::broker::Broker;
    use quartet_task_gateway::celery::{RawJson, State, TaskMessage};
    quartet_e2e::redis_url().await; // installs redis-server when missing
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut redis = own_redis(port);
    let (broker_url, result_url) = (
        format!("redis://127.0.0.1:{port}/0"),
        format!("redis://127.0.0.1:{port}/1"),
    );
    let gateway = gateway_worker(&broker_url, &result_url, "outage", "15").await;
    let readiness = |want: bool| {
        let admin = gateway.url("admin");
        async move {
            quartet_e2e::eventually(&format!("ready == {want}"), Duration::from_secs(30), || {
                let admin = admin.clone();
                async move {
                    let ready: Value = http_client(Duration::from_secs(5))
                        .get(format!("{admin}/readyz"))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    (ready["ready"] == want).then_some(ready)
                }
            })
            .await
            .expect("readiness changes")
        }
    };
    readiness(true).await;

    // Redis goes away: readiness says the worker's consumers lost it.
    redis.kill().await.expect("kill redis");
    let down = readiness(false).await;
    let worker = down["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "worker"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(worker["ok"], false, "{down}");
    assert!(
        worker["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("lost the broker"),
        "{down}"
    );

    // It comes back: the consumers reconnect, readiness says so, and work flows again.
    let _redis = own_redis(port);
    readiness(true).await;
    let broker = Broker::open(&broker_url, &result_url).expect("urls");
    let task = TaskMessage::new(
        "quartet.add",
        RawJson::parse("[20, 22]").expect("json"),
        RawJson::parse("{}").expect("json"),
        "outage",
        0,
    );
    broker.publish(&task).await.expect("publish");
    let meta = broker
        .wait_result(&task.headers.id, Duration::from_secs(20))
        .await
        .expect("wait")
        .expect("the worker took it after reconnecting");
    assert_eq!(meta.status, State::Success);
    assert_eq!(meta.result.value(), 42);
}

/// `message` as a gRPC request carrying `token`.
fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// A user holding `perms` only (a role of the same name): their token.
async fn user_with(auth: &Server, admin: &str, name: &str, perms: &[&str]) -> String {
    let http = http_client(Duration::from_secs(10));
    let role = http
        .post(format!("{}/v1/admin/roles", auth.url("http")))
        .bearer_auth(admin)
        .json(&json!({"name": name, "description": "test", "permissions": perms}))
        .send()
        .await
        .expect("role");
    assert!(role.status().is_success(), "{:?}", role.text().await);
    let password = format!("{name}-e2e-password");
    let user = http
        .post(format!("{}/v1/admin/users", auth.url("http")))
        .bearer_auth(admin)
        .json(&json!({"name": name, "password": password, "roles": [name]}))
        .send()
        .await
        .expect("user");
    assert!(user.status().is_success(), "{:?}", user.text().await);
    quartet_e2e::auth::token(auth, name, &password)
        .await
        .expect("token")
}

/// Issue 14: queue names that would become other permission parts, arguments no worker can
/// read, integers beyond 64 bits, and what one client can make the gateway spend — over REST
/// (problem+json) and gRPC (codes), against a real quartet-auth.
#[tokio::test]
async fn names_arguments_and_waits_that_would_escape_their_bounds_are_refused_over_rest_and_grpc() {
    use quartet_proto::tasks::v1 as pb;
    let (auth, admin) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let redis = quartet_e2e::redis_url().await;
    let (broker_url, result_url) = (format!("{redis}/30"), format!("{redis}/31"));
    let gateway = rest_gateway(
        &auth,
        (&broker_url, &result_url),
        "q1",
        &[
            ("QUARTET_TASK_GATEWAY_TASKS_MAX_PAYLOAD_BYTES", "300000"),
            ("QUARTET_TASK_GATEWAY_TASKS_MAX_WAITERS", "1"),
        ],
    )
    .await;
    let api = gateway.url("http");
    let ursula = user_with(
        &auth,
        &admin,
        "ursula",
        &["task:submit:q1", "task:stats:q1"],
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(gateway.url("grpc"))
        .expect("endpoint")
        .connect()
        .await
        .expect("grpc");
    let mut grpc = pb::tasks_client::TasksClient::new(channel);

    // Queue names: refused with a 400 naming the character, never a 500 or a grant.
    for (queue, character) in [
        ("q1:anything", "':'"),
        ("q1:*", "':'"),
        ("q1:", "':'"),
        ("Q1", "'Q'"),
        (",", "','"),
    ] {
        let (status, problem) = post(
            format!("{api}/v1/tasks"),
            &ursula,
            json!({"name": "quartet.echo", "queue": queue}),
        )
        .await;
        assert_eq!(status, 400, "submit to {queue:?}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(character), "{queue:?}: {detail}");
        let stats = http_client(Duration::from_secs(10))
            .get(format!("{api}/v1/queues/{queue}"))
            .bearer_auth(&ursula)
            .send()
            .await
            .expect("stats");
        assert_eq!(stats.status(), 400, "stats of {queue:?}");
        let refused = grpc
            .submit(with_token(
                &ursula,
                pb::SubmitRequest {
                    name: "quartet.echo".into(),
                    queue: queue.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err(queue);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{queue:?}");
        assert!(
            refused.message().contains(character),
            "{}",
            refused.message()
        );
        let refused = grpc
            .queue_stats(with_token(
                &ursula,
                pb::QueueStatsRequest {
                    queue: queue.into(),
                },
            ))
            .await
            .expect_err(queue);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{queue:?}");
    }
    let (status, _) = post(
        format!("{api}/v1/tasks"),
        &ursula,
        json!({"name": "quartet.echo", "queue": "q1"}),
    )
    .await;
    assert_eq!(status, 202, "her own queue");
    let stats = get(format!("{api}/v1/queues/q1"), &ursula).await;
    assert_eq!(stats["queue"], "q1", "{stats}");

    // Arguments no worker could read: refused at submission, naming the problem.
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    for (args, reason) in [
        ("[1e999999]".to_owned(), "number out of range"),
        (r#"["\ud800"]"#.to_owned(), "surrogate"),
        (deep(129), "nests 129 levels"),
        (deep(100_000), "nests 100000 levels"),
    ] {
        let response = http_client(Duration::from_secs(10))
            .post(format!("{api}/v1/tasks"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"name": "quartet.echo", "queue": "q1", "args": {args}}}"#
            ))
            .send()
            .await
            .expect("submit");
        assert_eq!(response.status(), 400);
        let problem: Value = response.json().await.expect("problem");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(reason), "{detail}");
        let refused = grpc
            .submit(with_token(
                &admin,
                pb::SubmitRequest {
                    name: "quartet.echo".into(),
                    queue: "q1".into(),
                    args_json: args.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("unreadable args");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains(reason), "{}", refused.message());
    }

    // Integers beyond 64 bits keep their digits through the worker and back, both fronts.
    let wide = "123456789012345678901234567890";
    let response = http_client(Duration::from_secs(10))
        .post(format!("{api}/v1/tasks"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"name": "quartet.add", "queue": "q1", "args": [{wide}, 1]}}"#
        ))
        .send()
        .await
        .expect("submit");
    let submitted: Value = response.json().await.expect("json");
    let id = submitted["id"].as_str().expect("id");
    // Read as text: a JSON value here would round it again.
    let text = http_client(Duration::from_secs(30))
        .get(format!("{api}/v1/tasks/{id}?wait=20"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("status")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("\"result\":123456789012345678901234567891"),
        "{text}"
    );
    let submitted = grpc
        .submit(with_token(
            &admin,
            pb::SubmitRequest {
                name: "quartet.echo".into(),
                queue: "q1".into(),
                args_json: format!("[{wide}]"),
                ..Default::default()
            },
        ))
        .await
        .expect("submit")
        .into_inner();
    let status = grpc
        .get(with_token(
            &admin,
            pb::GetRequest {
                id: submitted.id,
                wait: 20.0,
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(status.result_json, format!("[{wide}]"));

    // Waits: a bad one is refused; one request waits at a time here (tasks.max_waiters = 1).
    let (_, group) = post(
        format!("{api}/v1/groups"),
        &admin,
        json!({"tasks": [{"name": "quartet.echo", "queue": "q1"}]}),
    )
    .await;
    let group_id = group["id"].as_str().expect("group id");
    for wait in ["NaN", "inf", "-1"] {
        let refused = http_client(Duration::from_secs(10))
            .get(format!("{api}/v1/groups/{group_id}?wait={wait}"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("a response, not a dropped connection");
        assert_eq!(refused.status(), 400, "wait={wait}");
    }
    let never = quartet_task_gateway::celery::uuid4();
    let waiting = {
        let (api, admin, never) = (api.clone(), admin.clone(), never.clone());
        tokio::spawn(async move {
            http_client(Duration::from_secs(30))
                .get(format!("{api}/v1/tasks/{never}?wait=3"))
                .bearer_auth(&admin)
                .send()
                .await
                .expect("wait")
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = http_client(Duration::from_secs(10))
        .get(format!("{api}/v1/tasks/{never}?wait=3"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("second wait");
    assert_eq!(second.status(), 429);
    let problem: Value = second.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("tasks.max_waiters"),
        "{problem}"
    );
    assert_eq!(waiting.await.expect("first wait"), 200);
    let third = get(format!("{api}/v1/tasks/{never}?wait=0.1"), &admin).await;
    assert_eq!(third["state"], "PENDING", "the permit came back");

    // A body past the limit is refused naming it, without reading all of it.
    let huge = vec![b' '; 65 << 20];
    let refused = http_client(Duration::from_secs(30))
        .post(format!("{api}/v1/tasks"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await;
    let refused = refused.expect("an answer before the whole body was read");
    assert_eq!(refused.status(), 400);
    let problem: Value = refused.json().await.expect("problem+json");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("the limit is 300000"),
        "{problem}"
    );
}
