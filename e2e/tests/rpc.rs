//! quartet-rpc-gateway as a process in front of a real zerorpc-python server: calls over REST
//! with tokens from a real quartet-auth, the permission named when it is missing, remote
//! errors, streams, and a backend that dies.

use std::time::Duration;

use quartet_e2e::http_client;
use quartet_e2e::process::Server;
use serde_json::{Value, json};

/// Runs `e2e/python/zerorpc_peer.py` with `args`; what it printed, as JSON.
async fn zerorpc_peer(args: &[&str]) -> Value {
    let out = tokio::process::Command::new(quartet_e2e::python().await)
        .arg("zerorpc_peer.py")
        .args(args)
        .current_dir(quartet_e2e::repo_root().join("e2e/python"))
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Where the gateway's zerorpc front listens, from its log.
fn front_endpoint(gateway: &Server) -> String {
    gateway
        .output()
        .lines()
        .find(|l| l.contains("zerorpc front listening"))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|l| l["endpoint"].as_str().map(str::to_owned))
        .expect("the zerorpc front's endpoint in the log")
}

/// A gRPC client of the gateway's `quartet.rpc.v1.Rpc`.
async fn rpc_client(
    gateway: &Server,
) -> quartet_proto::rpc::v1::rpc_client::RpcClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(gateway.url("grpc"))
        .expect("endpoint")
        .connect()
        .await
        .expect("grpc");
    quartet_proto::rpc::v1::rpc_client::RpcClient::new(channel)
}

/// `message` with `authorization: Bearer <token>` metadata.
fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    request
}

/// A zerorpc request `name(args)` carrying `token` in its header, as zerorpc-python's
/// `client_before_request` middleware adds it.
fn bearer_request(
    name: &str,
    args: Vec<rmpv::Value>,
    token: &str,
) -> quartet_rpc_gateway::zerorpc::event::Event {
    let mut request =
        quartet_rpc_gateway::zerorpc::event::Event::request(name, rmpv::Value::Array(args));
    request
        .header
        .extra
        .push(("authorization".into(), format!("Bearer {token}").into()));
    request
}

/// A token of a new user `name` whose one role holds `permissions` (made with `admin`'s token).
async fn user_token(auth: &Server, admin: &str, name: &str, permissions: &[&str]) -> String {
    let http = http_client(Duration::from_secs(10));
    let role = format!("{name}-role");
    for (path, body) in [
        (
            "roles",
            json!({"name": role, "description": "for a test", "permissions": permissions}),
        ),
        (
            "users",
            json!({"name": name, "password": format!("{name}-e2e-password"), "roles": [role]}),
        ),
    ] {
        let made = http
            .post(format!("{}/v1/admin/{path}", auth.url("http")))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await
            .expect("admin API");
        assert!(
            made.status().is_success(),
            "{}",
            made.text().await.unwrap_or_default()
        );
    }
    quartet_e2e::auth::token(auth, name, &format!("{name}-e2e-password"))
        .await
        .expect("the user's token")
}

/// A gateway in front of `backends` (`rpc.backends`) with 1 s heartbeats, trusting `auth`.
async fn gateway(auth: &Server, backends: &str, extra: &[(&str, &str)]) -> Server {
    let jwks = format!("{}/.well-known/jwks.json", auth.url("http"));
    let mut env = vec![
        ("QUARTET_RPC_GATEWAY_AUTH_JWKS_URL", jwks.as_str()),
        ("QUARTET_RPC_GATEWAY_AUTH_ISSUER", quartet_e2e::auth::ISSUER),
        ("QUARTET_RPC_GATEWAY_RPC_BACKENDS", backends),
        ("QUARTET_RPC_GATEWAY_RPC_HEARTBEAT_MS", "1000"),
        (
            "QUARTET_RPC_GATEWAY_RPC_ZERORPC_LISTEN",
            "tcp://127.0.0.1:0",
        ),
    ];
    env.extend_from_slice(extra);
    Server::start("quartet-rpc-gateway", true, &env)
        .await
        .expect("the gateway starts")
}

#[tokio::test]
async fn rest_calls_reach_a_python_zerorpc_backend_with_tokens_and_permissions() {
    let (auth, admin) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let (mut backend, endpoint) = quartet_e2e::zerorpc_server().await;
    let gateway = gateway(&auth, &format!("demo={endpoint}"), &[]).await;
    let http = http_client(Duration::from_secs(30));
    let api = gateway.url("http");
    let call = |method: &str, args: Value, token: Option<String>| {
        let request = http
            .post(format!("{api}/v1/services/demo/{method}"))
            .json(&args);
        let request = match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let admin = Some(admin);

    let (status, body) = call("add", json!([1, 2]), admin.clone()).await;
    assert_eq!((status, &body["result"]), (200, &json!(3)), "{body}");
    let (status, body) = call("count", json!([5]), admin.clone()).await;
    assert_eq!(
        (status, &body["items"]),
        (200, &json!([0, 1, 2, 3, 4])),
        "{body}"
    );
    let (status, body) = call("fail", json!(["boom"]), admin.clone()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["name"], "ValueError");
    assert!(
        body["error"]["traceback"]
            .as_str()
            .unwrap_or_default()
            .contains("raise ValueError")
    );
    let (status, body) = call("add", json!({"a": 1}), admin.clone()).await;
    assert_eq!(status, 400, "{body}");

    // No token: 401. A token without rpc:call:demo.add: 403 naming it.
    let (status, _) = call("add", json!([1, 2]), None).await;
    assert_eq!(status, 401);
    let rita = user_token(
        &auth,
        admin.as_deref().expect("token"),
        "rita",
        &["rpc:call:demo.count"],
    )
    .await;
    let (status, body) = call("add", json!([1, 2]), Some(rita.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("rpc:call:demo.add"),
        "{body}"
    );
    let rita_token = rita.clone();
    let (status, _) = call("count", json!([2]), Some(rita)).await;
    assert_eq!(status, 200);
    // Describing a service takes rpc:describe:<service> (or the service-wide call grant); the
    // OpenAPI document shows only what the caller may describe.
    let described = http
        .get(format!("{api}/v1/services/demo"))
        .bearer_auth(&rita_token)
        .send()
        .await
        .expect("describe");
    assert_eq!(described.status().as_u16(), 403);
    let body: Value = described.json().await.expect("json");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("rpc:describe:demo"),
        "{body}"
    );
    let openapi: Value = http
        .get(format!("{api}/v1/openapi.json"))
        .bearer_auth(&rita_token)
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    // The gateway's own routes, and no method of demo.
    let paths: Vec<&String> = openapi["paths"]
        .as_object()
        .map(|paths| paths.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        paths,
        ["/v1/openapi.json", "/v1/services", "/v1/services/{service}"],
        "{openapi}"
    );

    // The zerorpc front: a zerorpc-python client calls demo.* through the gateway with its
    // token in the event header; without one it is refused, by name.
    let front = front_endpoint(&gateway);
    let through = zerorpc_peer(&["gateway", &front, admin.as_deref().expect("token")]).await;
    assert_eq!(through["add"], 3, "{through}");
    assert_eq!(through["count"], json!([0, 1, 2]));
    assert_eq!(through["error"], json!(["ValueError", "boom"]));
    assert_eq!(through["anonymous"][0], "Unauthenticated", "{through}");

    // The gRPC front: JSON or MessagePack arguments, streams, the same permissions.
    {
        use quartet_proto::rpc::v1 as pb;
        let mut client = rpc_client(&gateway).await;
        let invoke = |method: &str, args: pb::invoke_request::Args| pb::InvokeRequest {
            service: "demo".into(),
            method: method.into(),
            args: Some(args),
            timeout_seconds: None,
        };
        let token = admin.clone().expect("token");
        let json_args = pb::invoke_request::Args::ArgsJson("[20, 22]".into());
        let reply = client
            .invoke(with_token(invoke("add", json_args.clone()), &token))
            .await
            .expect("invoke")
            .into_inner();
        assert_eq!(
            reply.result,
            Some(pb::invoke_reply::Result::Json("42".into()))
        );
        // MessagePack in, MessagePack out: fixarray [1, 2] → positive fixint 3.
        let reply = client
            .invoke(with_token(
                invoke(
                    "add",
                    pb::invoke_request::Args::ArgsMsgpack(vec![0x92, 0x01, 0x02]),
                ),
                &token,
            ))
            .await
            .expect("invoke")
            .into_inner();
        assert_eq!(
            reply.result,
            Some(pb::invoke_reply::Result::Msgpack(vec![0x03]))
        );
        let mut items = client
            .invoke_stream(with_token(
                invoke("count", pb::invoke_request::Args::ArgsJson("[3]".into())),
                &token,
            ))
            .await
            .expect("stream")
            .into_inner();
        let mut got = Vec::new();
        while let Some(item) = items.message().await.expect("item") {
            got.push(item.result);
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], Some(pb::invoke_reply::Result::Json("2".into())));
        let raised = client
            .invoke(with_token(
                invoke(
                    "fail",
                    pb::invoke_request::Args::ArgsJson("[\"boom\"]".into()),
                ),
                &token,
            ))
            .await
            .expect_err("raised");
        assert_eq!(raised.code(), tonic::Code::Unknown);
        assert!(
            raised.message().contains("ValueError: boom"),
            "{}",
            raised.message()
        );
        let anonymous = client
            .invoke(tonic::Request::new(invoke("add", json_args.clone())))
            .await
            .expect_err("no token");
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        let denied = client
            .invoke(with_token(invoke("add", json_args), &rita_token))
            .await
            .expect_err("no permission");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("rpc:call:demo.add"),
            "{}",
            denied.message()
        );
    }

    // A generic gRPC client that knows only the method's name (grpcio with the reflection
    // client, as grpcurl works): request and reply types come from server reflection.
    let grpc_call = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(quartet_e2e::python().await)
            .arg("grpc_call.py")
            .args(args)
            .current_dir(quartet_e2e::repo_root().join("e2e/python"))
            .output()
            .await
            .expect("python runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let target = gateway.url("grpc").trim_start_matches("http://").to_owned();
    let request = r#"{"service": "demo", "method": "count", "argsJson": "[3]"}"#;
    let (ok, out, err) = grpc_call(vec![
        target.clone(),
        "quartet.rpc.v1.Rpc/InvokeStream".into(),
        request.into(),
        admin.clone().expect("token"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [r#"{"json": "0"}"#, r#"{"json": "1"}"#, r#"{"json": "2"}"#]
    );
    let (ok, _, err) = grpc_call(vec![
        target,
        "quartet.rpc.v1.Rpc/Invoke".into(),
        r#"{"service": "demo", "method": "add", "argsJson": "[1, 2]"}"#.into(),
    ])
    .await;
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");

    // The call's trace context reaches the Python backend in the event header.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced: Value = http
        .post(format!("{api}/v1/services/demo/traceparent"))
        .bearer_auth(admin.clone().expect("token"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!([]))
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    let carried = traced["result"].as_str().unwrap_or_default();
    assert!(carried.starts_with(&format!("00-{trace_id}-")), "{traced}");

    // Per service and method metrics.
    let metrics = gateway.metrics().await;
    for expected in [
        "quartet_rpc_calls_total{method=\"add\",outcome=\"ok\",service=\"demo\"}",
        "quartet_rpc_calls_total{method=\"fail\",outcome=\"error\",service=\"demo\"}",
        "quartet_rpc_call_seconds_count{method=\"count\",service=\"demo\"}",
        "quartet_rpc_in_flight{method=\"add\",service=\"demo\"} 0",
    ] {
        assert!(metrics.contains(expected), "{expected} not in:\n{metrics}");
    }

    // The backend dies during a call: an error after about two heartbeats, not a hang.
    let slow = tokio::spawn(call("slow", json!([30]), admin.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    backend.kill().await.expect("kill the backend");
    let killed = std::time::Instant::now();
    let (status, body) = slow.await.expect("answered");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("connection to the server dropped"),
        "{body}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "noticed after {:?}",
        killed.elapsed()
    );
}

/// Reads a stream's items until it fails; its status.
async fn until_error(
    stream: &mut tonic::Streaming<quartet_proto::rpc::v1::InvokeReply>,
) -> tonic::Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended as if complete"),
            Err(status) => return status,
        }
    }
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test]
async fn backends_lost_mid_stream_fail_fast_and_calls_move_to_the_replicas_left() {
    use quartet_proto::rpc::v1 as pb;
    let (auth, admin) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(quartet_e2e::zerorpc_server().await);
    }
    let pids: Vec<u32> = replicas
        .iter()
        .map(|(child, _)| child.id().expect("running"))
        .collect();
    // The first replica by host name: resolved in DNS, as a headless Service's pods are.
    let endpoints: Vec<String> = replicas
        .iter()
        .enumerate()
        .map(|(i, (_, e))| {
            if i == 0 {
                e.replace("127.0.0.1", "localhost")
            } else {
                e.clone()
            }
        })
        .collect();
    let ports: Vec<String> = replicas
        .iter()
        .map(|(_, e)| e.rsplit(':').next().unwrap_or_default().to_owned())
        .collect();
    let gateway = gateway(&auth, &format!("demo={}", endpoints.join("|")), &[]).await;
    let http = http_client(Duration::from_secs(30));
    let api = gateway.url("http");
    let get = |path: &str| {
        let request = http.get(format!("{api}{path}")).bearer_auth(&admin);
        async move {
            let response = request.send().await.expect("get");
            response.json::<Value>().await.expect("json")
        }
    };
    // Each replica's health as the gateway sees it, by index.
    let health = || async {
        let described = get("/v1/services/demo").await;
        ports
            .iter()
            .map(|port| {
                described["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|b| {
                        b["endpoint"]
                            .as_str()
                            .unwrap_or_default()
                            .ends_with(&format!(":{port}"))
                    })
                    .map(|b| b["health"].as_str().unwrap_or_default().to_owned())
                    .unwrap_or_default()
            })
            .collect::<Vec<String>>()
    };
    quartet_e2e::eventually("every replica up", Duration::from_secs(10), || async {
        health().await.iter().all(|h| h == "up").then_some(())
    })
    .await
    .expect("every replica up");

    // What the service offers, from the Python backends (inspect falls back to list + help
    // on Python 3.11), and the OpenAPI document generated from it.
    let described = get("/v1/services/demo").await;
    let methods: Vec<&str> = described["methods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for expected in ["add", "count", "pid", "ticks"] {
        assert!(methods.contains(&expected), "{described}");
    }
    let openapi = get("/v1/openapi.json").await;
    assert_eq!(
        openapi["paths"]["/v1/services/demo/add"]["post"]["summary"], "Adds two numbers.",
        "{openapi}"
    );
    let anonymous = http
        .get(format!("{api}/v1/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(anonymous.status().as_u16(), 401);

    let mut client = rpc_client(&gateway).await;
    let ticks = || {
        let ticks = pb::InvokeRequest {
            service: "demo".into(),
            method: "ticks".into(),
            args: Some(pb::invoke_request::Args::ArgsJson("[100000, 0.05]".into())),
            timeout_seconds: None,
        };
        with_token(ticks, &admin)
    };
    // The pid serving a stream, from its first item `[pid, 0]`.
    let first_pid = |item: Option<pb::InvokeReply>| match item.and_then(|i| i.result) {
        Some(pb::invoke_reply::Result::Json(text)) => serde_json::from_str::<Value>(&text)
            .expect("json")[0]
            .as_u64()
            .expect("pid") as u32,
        other => panic!("not a tick: {other:?}"),
    };
    // Pids answering `concurrent` calls of pid(0.2) at once.
    let serving = |concurrent: usize| {
        let calls = (0..concurrent).map(|_| {
            http.post(format!("{api}/v1/services/demo/pid"))
                .bearer_auth(&admin)
                .json(&json!([0.2]))
                .send()
        });
        async move {
            let mut pids = std::collections::BTreeSet::new();
            for answer in futures::future::join_all(calls).await {
                let answer = answer.expect("call");
                assert_eq!(answer.status().as_u16(), 200);
                let body: Value = answer.json().await.expect("json");
                pids.insert(body["result"].as_u64().expect("pid") as u32);
            }
            pids
        }
    };
    assert_eq!(
        serving(30).await.len(),
        3,
        "calls spread over the three replicas"
    );

    // SIGKILL the replica serving a stream: the stream fails as soon as its connection
    // drops, well within two heartbeat periods, and calls go to the two left.
    let mut stream = client
        .invoke_stream(ticks())
        .await
        .expect("stream")
        .into_inner();
    let victim = first_pid(stream.message().await.expect("first tick"));
    let dead = pids
        .iter()
        .position(|p| *p == victim)
        .expect("a replica's pid");
    replicas[dead].0.kill().await.expect("kill");
    let killed = std::time::Instant::now();
    let failed = until_error(&mut stream).await;
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "after {:?}",
        killed.elapsed()
    );
    let left = serving(30).await;
    assert!(!left.contains(&victim), "a call went to the dead replica");
    assert_eq!(left.len(), 2, "{left:?}");

    // SIGSTOP the replica serving the next stream: the connection stays up, so only the
    // silence tells — the stream fails after about two heartbeat periods, and calls go to
    // the last replica. SIGCONT: it answers pings again and gets calls again.
    let mut stream = client
        .invoke_stream(ticks())
        .await
        .expect("stream")
        .into_inner();
    let frozen = first_pid(stream.message().await.expect("first tick"));
    signal(frozen, "STOP");
    let stopped = std::time::Instant::now();
    let failed = until_error(&mut stream).await;
    let silent_for = stopped.elapsed();
    assert!(failed.message().contains("lost the server"), "{failed:?}");
    assert!(
        silent_for > Duration::from_millis(1500) && silent_for < Duration::from_millis(3500),
        "noticed after {silent_for:?}"
    );
    let last = serving(10).await;
    assert!(
        last.len() == 1 && !last.contains(&frozen) && !last.contains(&victim),
        "{last:?}"
    );
    signal(frozen, "CONT");
    quartet_e2e::eventually(
        "the thawed replica back up",
        Duration::from_secs(10),
        || async { (health().await.iter().filter(|h| *h == "up").count() == 2).then_some(()) },
    )
    .await
    .expect("the thawed replica back up");
    assert_eq!(serving(30).await.len(), 2, "calls spread again");
    let metrics = gateway.metrics().await;
    let down = format!(
        "quartet_rpc_backend_up{{endpoint=\"{}\",service=\"demo\"}} 0",
        replicas[dead].1
    );
    assert!(metrics.contains(&down), "{down} not in:\n{metrics}");

    // Every replica gone: calls fail at once, naming the reason, instead of waiting.
    for (i, (child, _)) in replicas.iter_mut().enumerate() {
        if i != dead {
            child.kill().await.expect("kill");
        }
    }
    quartet_e2e::eventually("every replica down", Duration::from_secs(10), || async {
        health().await.iter().all(|h| h == "down").then_some(())
    })
    .await
    .expect("every replica down");
    let started = std::time::Instant::now();
    let refused = http
        .post(format!("{api}/v1/services/demo/add"))
        .bearer_auth(&admin)
        .json(&json!([1, 2]))
        .send()
        .await
        .expect("call");
    assert_eq!(refused.status().as_u16(), 503);
    let body: Value = refused.json().await.expect("json");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("no healthy backend for demo: 3 of 3 down"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn the_zerorpc_front_answers_bad_input_limits_callers_and_drains_on_sigterm() {
    use quartet_rpc_gateway::zerorpc::client::{CallError, Client, Reply};
    use quartet_rpc_gateway::zerorpc::socket::{Kind, Socket};
    use rmpv::Value as Msg;
    let (auth, admin) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let (_backend, endpoint) = quartet_e2e::zerorpc_server().await;
    let mut gateway = gateway(
        &auth,
        &format!("demo={endpoint}"),
        &[
            ("QUARTET_RPC_GATEWAY_RPC_RATE_LIMIT_PER_SECOND", "1"),
            ("QUARTET_RPC_GATEWAY_RPC_RATE_LIMIT_BURST", "5"),
            ("QUARTET_RPC_GATEWAY_RPC_MAX_MESSAGE_BYTES", "1000"),
            ("QUARTET_RPC_GATEWAY_SHUTDOWN_GRACE", "20s"),
        ],
    )
    .await;
    let front = front_endpoint(&gateway);
    let client = Client::connect(&front, None)
        .expect("connect")
        .heartbeat(Duration::from_secs(1));
    let request = |method: &str, args: Vec<Msg>| bearer_request(method, args, &admin);
    let ten = Duration::from_secs(10);
    let refused = |outcome: Result<Reply, CallError>| match outcome {
        Err(CallError::Remote(e)) => (e.name, e.message),
        other => panic!("not refused: {other:?}"),
    };

    // Too large, a newer protocol, not an event at all, no such service: each a clear answer
    // or a counted drop, and the front keeps serving.
    let (name, message) = refused(
        client
            .call_with(
                request("demo.add", vec!["x".repeat(2000).into(), 1.into()]),
                ten,
            )
            .await,
    );
    assert_eq!(name, "MessageTooLarge", "{message}");
    assert!(message.contains("at most 1000"), "{message}");
    let mut newer = request("demo.add", vec![1.into(), 2.into()]);
    newer.header.version = Some(4);
    let (name, message) = refused(client.call_with(newer, ten).await);
    assert_eq!(name, "ProtocolError");
    assert!(message.contains("version 4"), "{message}");
    let raw = Socket::connect(Kind::DEALER, &front, None).expect("a raw socket");
    raw.send(vec![Vec::new(), b"not messagepack".to_vec()])
        .expect("send");
    let (name, message) = refused(
        client
            .call_with(request("nosuch.add", vec![1.into(), 2.into()]), ten)
            .await,
    );
    assert_eq!(
        (name.as_str(), message.as_str()),
        ("NameError", "no service named \"nosuch\"")
    );
    let (name, _) = refused(client.call_with(request("add", vec![]), ten).await);
    assert_eq!(name, "NameError");
    let metrics = gateway.metrics().await;
    for reason in ["oversized", "version", "malformed"] {
        let line = format!("quartet_rpc_front_refused_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }

    // A burst of 5 at 1 call/s per caller, shared by the fronts: the unknown service took one
    // token; a quick run of calls meets the limit, and REST says so too, with when to retry.
    let mut answered = 0;
    let limited = loop {
        match client
            .call_with(request("demo.add", vec![1.into(), 2.into()]), ten)
            .await
        {
            Ok(_) => answered += 1,
            Err(CallError::Remote(e)) => break e,
            Err(e) => panic!("{e}"),
        }
        assert!(answered <= 5, "no limit after {answered} calls");
    };
    assert_eq!(limited.name, "RateLimited");
    assert!(
        limited
            .message
            .contains("admin is over the gateway's rate limit"),
        "{}",
        limited.message
    );
    let http = http_client(Duration::from_secs(10));
    let rest = http
        .post(format!("{}/v1/services/demo/add", gateway.url("http")))
        .bearer_auth(&admin)
        .json(&json!([1, 2]))
        .send()
        .await
        .expect("call");
    assert_eq!(rest.status().as_u16(), 429);
    let body: Value = rest.json().await.expect("json");
    assert!(body["retry_after_seconds"].as_u64() >= Some(1), "{body}");

    // SIGTERM with a call in flight: it finishes; a call arriving meanwhile is refused by
    // name; the process exits cleanly once the last call is answered.
    tokio::time::sleep(Duration::from_secs(3)).await; // tokens back
    let slow = {
        let (client, request) = (client.clone(), request("demo.slow", vec![2.into()]));
        tokio::spawn(async move { client.call_with(request, ten).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminated = std::time::Instant::now();
    let (exit, late) = tokio::join!(gateway.terminate(Duration::from_secs(20)), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        client
            .call_with(request("demo.add", vec![1.into(), 2.into()]), ten)
            .await
    });
    assert!(exit.expect("exits").success());
    assert!(
        terminated.elapsed() > Duration::from_millis(1500),
        "the gateway did not wait for its call"
    );
    let (name, message) = refused(late);
    assert_eq!(name, "Unavailable", "{message}");
    match slow.await.expect("joined") {
        Ok(Reply::Value(done)) => assert_eq!(done, Msg::from("done")),
        other => panic!("the call in flight was cut: {other:?}"),
    }
}

#[tokio::test]
async fn the_zerorpc_front_admits_only_allowed_curve_clients() {
    use quartet_rpc_gateway::zerorpc::client::{Client, Reply};
    use quartet_rpc_gateway::zerorpc::socket::{Curve, curve_keypair};
    use rmpv::Value as Msg;
    let (auth, admin) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let (_backend, endpoint) = quartet_e2e::zerorpc_server().await;
    let (server_public, server_secret) = curve_keypair().expect("keys");
    let (rust_public, rust_secret) = curve_keypair().expect("keys");
    let (python_public, python_secret) = curve_keypair().expect("keys");
    let (stranger_public, stranger_secret) = curve_keypair().expect("keys");
    let allowed = format!("{rust_public},{python_public}");
    let gateway = gateway(
        &auth,
        &format!("demo={endpoint}"),
        &[
            (
                "QUARTET_RPC_GATEWAY_RPC_CURVE_SECRET_KEY",
                server_secret.as_str(),
            ),
            (
                "QUARTET_RPC_GATEWAY_RPC_CURVE_PUBLIC_KEY",
                server_public.as_str(),
            ),
            ("QUARTET_RPC_GATEWAY_RPC_CURVE_CLIENTS", allowed.as_str()),
        ],
    )
    .await;
    let front = front_endpoint(&gateway);
    assert!(
        !gateway.output().contains(&server_secret),
        "the secret key was logged"
    );
    let add = |public: &str, secret: &str| {
        let curve = Curve::Client {
            server_public: server_public.clone(),
            public: public.to_owned(),
            secret: secret.to_owned(),
        };
        let client = Client::connect(&front, Some(curve))
            .expect("connect")
            .heartbeat(Duration::from_secs(1));
        let request = bearer_request("demo.add", vec![1.into(), 2.into()], &admin);
        async move { client.call_with(request, Duration::from_secs(5)).await }
    };
    match add(&rust_public, &rust_secret).await {
        Ok(Reply::Value(sum)) => assert_eq!(sum, Msg::from(3)),
        other => panic!("an allowed key was refused: {other:?}"),
    }
    let stranger = add(&stranger_public, &stranger_secret).await;
    assert!(
        stranger.as_ref().is_err_and(|e| e.is_lost_remote()),
        "a key not allowed got an answer: {stranger:?}"
    );
    // A plain zerorpc client cannot even begin: the front speaks only CURVE.
    let plain = Client::connect(&front, None)
        .expect("connect")
        .heartbeat(Duration::from_secs(1))
        .call("demo.add", vec![1.into(), 2.into()], Duration::from_secs(5))
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // zerorpc-python with the keys on its pyzmq socket.
    let through = zerorpc_peer(&[
        "curve",
        &front,
        &admin,
        &server_public,
        &python_public,
        &python_secret,
    ])
    .await;
    assert_eq!(through["add"], 3, "{through}");
    let metrics = gateway.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("quartet_rpc_curve_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_rest_and_grpc_fronts_serve_tls_when_given_a_certificate() {
    let (auth, admin) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = quartet_e2e::self_signed_certificate(dir.path());
    let (cert_file, key_file) = (cert.display().to_string(), key.display().to_string());
    let gateway = gateway(
        &auth,
        "demo=tcp://127.0.0.1:9",
        &[
            ("QUARTET_RPC_GATEWAY_HTTP_TLS_CERT_FILE", cert_file.as_str()),
            ("QUARTET_RPC_GATEWAY_HTTP_TLS_KEY_FILE", key_file.as_str()),
            ("QUARTET_RPC_GATEWAY_GRPC_TLS_CERT_FILE", cert_file.as_str()),
            ("QUARTET_RPC_GATEWAY_GRPC_TLS_KEY_FILE", key_file.as_str()),
        ],
    )
    .await;
    let port = |listener: &str| {
        gateway
            .url(listener)
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let listed = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &cert_file])
        .args(["-H", &format!("authorization: Bearer {admin}")])
        .arg(format!("https://localhost:{}/v1/services", port("http")))
        .output()
        .await
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        r#"{"services":["demo"]}"#,
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let channel = quartet_e2e::grpc_tls_channel(port("grpc").parse().expect("port"), &cert).await;
    let services = quartet_proto::rpc::v1::rpc_client::RpcClient::new(channel)
        .list_services(with_token(
            quartet_proto::rpc::v1::ListServicesRequest {},
            &admin,
        ))
        .await
        .expect("ListServices over TLS")
        .into_inner()
        .services;
    assert_eq!(services, ["demo"]);
}

/// MessagePack: `levels` one-item arrays, one inside the other, around nil.
fn nested_msgpack(levels: usize) -> Vec<u8> {
    let mut bytes = vec![0x91; levels];
    bytes.push(0xc0);
    bytes
}

/// JSON: `levels` arrays, one inside the other.
fn nested_json(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

/// Input meant to hurt, on every front (issue 14): nothing a caller sends crashes the
/// gateway, widens or crosses a grant, or takes a backend down for the other callers.
#[tokio::test]
async fn hostile_input_neither_crashes_the_gateway_nor_crosses_a_grant_nor_downs_a_backend() {
    use quartet_proto::rpc::v1 as pb;
    use quartet_rpc_gateway::zerorpc::client::{CallError, Client, Reply};
    use quartet_rpc_gateway::zerorpc::socket::{Kind, Socket};
    use rmpv::Value as Msg;
    let (auth, admin) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let (_backend, endpoint) = quartet_e2e::zerorpc_server().await;
    let gateway = gateway(&auth, &format!("demo={endpoint}"), &[]).await;
    let front = front_endpoint(&gateway);
    let api = gateway.url("http");
    let http = http_client(Duration::from_secs(30));
    let client = Client::connect(&front, None)
        .expect("connect")
        .heartbeat(Duration::from_secs(1));
    let through_front = |name: &str, args: Vec<Msg>, token: &str| {
        let request = bearer_request(name, args, token);
        let client = client.clone();
        async move { client.call_with(request, Duration::from_secs(10)).await }
    };
    let add: Vec<Msg> = vec![1.into(), 2.into()];
    let front_adds = || async {
        match through_front("demo.add", add.clone(), &admin).await {
            Ok(Reply::Value(sum)) => assert_eq!(sum, Msg::from(3)),
            other => panic!("the front stopped serving: {other:?}"),
        }
    };
    let refused_on_front = |outcome: Result<Reply, CallError>| match outcome {
        Err(CallError::Remote(e)) => (e.name, e.message),
        other => panic!("not refused: {other:?}"),
    };
    // POST /v1/services/{service}/{method_and_query} with a raw body: status and problem.
    let post = |path: String, token: String, body: String| {
        let request = http
            .post(format!("{api}/v1/services/{path}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let detail = |body: &Value| body["detail"].as_str().unwrap_or_default().to_owned();
    let mut grpc = rpc_client(&gateway).await;
    let invoke =
        |method: &str, args: pb::invoke_request::Args, timeout: Option<f64>| pb::InvokeRequest {
            service: "demo".into(),
            method: method.into(),
            args: Some(args),
            timeout_seconds: timeout,
        };
    let json_add = || pb::invoke_request::Args::ArgsJson("[1, 2]".into());

    // 1. One frame of nested arrays, before any token: the issue's ~800 bytes (a "header"
    // 1000 deep) and 100 000 deep, on a raw DEALER. Dropped and counted; the front serves on.
    let raw = Socket::connect(Kind::DEALER, &front, None).expect("a raw socket");
    for levels in [1000, 100_000] {
        let mut frame = vec![0x93];
        frame.extend(nested_msgpack(levels));
        raw.send(vec![Vec::new(), frame]).expect("send");
    }
    front_adds().await;
    // A request whose arguments nest 101 deep is answered on its channel, naming the limit.
    let deep = (0..100).fold(Msg::Nil, |inner, _| Msg::Array(vec![inner]));
    let (name, message) = refused_on_front(through_front("demo.add", vec![deep], &admin).await);
    assert_eq!(name, "ProtocolError", "{message}");
    assert!(message.contains("deeper than 100 levels"), "{message}");
    let metrics = gateway.metrics().await;
    let line = "quartet_rpc_front_refused_total{reason=\"too-deep\"} 3";
    assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    // The same depths as JSON on REST and gRPC, and as MessagePack on gRPC: refused by name.
    for body in [nested_json(101), nested_json(100_000)] {
        let (status, problem) = post("demo/add".into(), admin.clone(), body).await;
        assert_eq!(status, 400, "{problem}");
        assert!(detail(&problem).contains("100 levels"), "{problem}");
    }
    let (status, problem) = post("demo/add".into(), admin.clone(), nested_json(100)).await;
    assert_eq!(
        status, 422,
        "100 levels reach the backend (add fails on them): {problem}"
    );
    for args in [
        pb::invoke_request::Args::ArgsJson(nested_json(101)),
        pb::invoke_request::Args::ArgsMsgpack(nested_msgpack(101)),
        pb::invoke_request::Args::ArgsMsgpack(nested_msgpack(3000)),
    ] {
        let refused = grpc
            .invoke(with_token(invoke("add", args, None), &admin))
            .await
            .expect_err("too deep");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("100 levels"), "{refused:?}");
    }
    // Larger than rpc.max_message_bytes (1 MiB) on REST and gRPC: refused, named.
    let big = format!("[\"{}\"]", "x".repeat(1 << 20));
    let (status, problem) = post("demo/add".into(), admin.clone(), big.clone()).await;
    assert_eq!(status, 413, "{problem}");
    assert!(detail(&problem).contains("at most 1048576"), "{problem}");
    let refused = grpc
        .invoke(with_token(
            invoke("add", pb::invoke_request::Args::ArgsJson(big), None),
            &admin,
        ))
        .await
        .expect_err("too large");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("1048576"), "{refused:?}");

    // 2. Deadlines: a huge one is the gateway's maximum; one that is no number of seconds
    // above 0 is refused naming `timeout` (REST once panicked a worker on 1e308).
    for timeout in ["1e308", "1e20", "2.5"] {
        let (status, body) = post(
            format!("demo/add?timeout={timeout}"),
            admin.clone(),
            "[1, 2]".into(),
        )
        .await;
        assert_eq!(
            (status, &body["result"]),
            (200, &json!(3)),
            "{timeout}: {body}"
        );
    }
    for timeout in ["NaN", "inf", "-inf", "-1", "-0", "0", "1e-400", "soon"] {
        let (status, problem) = post(
            format!("demo/add?timeout={timeout}"),
            admin.clone(),
            "[1, 2]".into(),
        )
        .await;
        assert_eq!(status, 400, "{timeout}: {problem}");
        assert!(
            detail(&problem).starts_with("timeout "),
            "{timeout}: {problem}"
        );
    }
    grpc.invoke(with_token(invoke("add", json_add(), Some(1e308)), &admin))
        .await
        .expect("a huge deadline is the maximum");
    for timeout in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
        let refused = grpc
            .invoke(with_token(invoke("add", json_add(), Some(timeout)), &admin))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with("timeout "), "{refused:?}");
    }

    // 3. zerorpc's own protocol events are no methods, on any front, however often asked;
    // the backend stays up for everyone.
    for _ in 0..3 {
        for internal in ["_zpc_hb", "_zpc_more", "_zpc_err"] {
            let (status, problem) = post(
                format!("demo/{internal}?timeout=3"),
                admin.clone(),
                "[]".into(),
            )
            .await;
            assert_eq!(status, 404, "{internal}: {problem}");
            assert!(detail(&problem).contains("protocol traffic"), "{problem}");
        }
    }
    let refused = grpc
        .invoke(with_token(
            invoke("_zpc_more", json_add(), Some(3.0)),
            &admin,
        ))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let (name, _) = refused_on_front(through_front("demo._zpc_hb", Vec::new(), &admin).await);
    assert_eq!(name, "NameError");
    let described: Value = http
        .get(format!("{api}/v1/services/demo"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("describe")
        .json()
        .await
        .expect("json");
    assert_eq!(described["backends"][0]["health"], "up", "{described}");
    let (status, body) = post("demo/add".into(), admin.clone(), "[1, 2]".into()).await;
    assert_eq!(status, 200, "{body}");

    // 4. Names never widen or cross a grant: a user holding only rpc:call:demo.add is
    // refused every spelling that Shiro would read as something else, on every front,
    // before any permission is looked up — naming the character and the rule.
    let adder = user_token(&auth, &admin, "adder", &["rpc:call:demo.add"]).await;
    let (status, _) = post("demo/add".into(), adder.clone(), "[1, 2]".into()).await;
    assert_eq!(status, 200);
    let (status, _) = post("demo/pid".into(), adder.clone(), "[]".into()).await;
    assert_eq!(status, 403);
    for (method, shown) in [
        ("*", "'*'"),
        ("add,pid", "','"),
        ("ADD", "'A'"),
        ("Add", "'A'"),
        ("add:x", "':'"),
        ("add.x", "'.'"),
        ("add%20x", "' '"),
        ("add%09x", "'\\t'"),
    ] {
        let (status, problem) =
            post(format!("demo/{method}"), adder.clone(), "[1, 2]".into()).await;
        assert_eq!(status, 400, "{method}: {problem}");
        let text = detail(&problem);
        assert!(
            text.contains(shown) && text.contains("lower-case ASCII letters"),
            "{method}: {text}"
        );
    }
    for method in ["*", "add,pid", "ADD", "add:x", "add x"] {
        let refused = grpc
            .invoke(with_token(invoke(method, json_add(), None), &adder))
            .await
            .expect_err("refused");
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{method}: {refused:?}"
        );
        let (name, message) =
            refused_on_front(through_front(&format!("demo.{method}"), add.clone(), &adder).await);
        assert_eq!(name, "InvalidArgument", "{method}: {message}");
    }
    let (name, _) = refused_on_front(through_front("demo.add.x", add.clone(), &adder).await);
    assert_eq!(name, "InvalidArgument");
    for service in ["DEMO", "demo:x", "*"] {
        let (status, problem) =
            post(format!("{service}/add"), adder.clone(), "[1, 2]".into()).await;
        assert_eq!(status, 400, "{service}: {problem}");
        let described = http
            .get(format!("{api}/v1/services/{service}"))
            .bearer_auth(&adder)
            .send()
            .await
            .expect("describe");
        assert_eq!(described.status().as_u16(), 400, "{service}");
    }

    // 5. A stream on REST is collected in memory, so within the call's deadline and up to
    // 10 000 items: more is refused (read it over gRPC or zerorpc), slower fails at the
    // deadline instead of holding the request open.
    let (status, problem) = post("demo/ticks".into(), admin.clone(), "[20000, 0]".into()).await;
    assert_eq!(status, 412, "{}", detail(&problem));
    assert!(
        detail(&problem).contains("more than 10000 items"),
        "{problem}"
    );
    let started = std::time::Instant::now();
    let (status, problem) = post(
        "demo/ticks?timeout=1".into(),
        admin.clone(),
        "[1000, 0.05]".into(),
    )
    .await;
    assert_eq!(status, 504, "{problem}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = post("demo/ticks".into(), admin.clone(), "[3, 0]".into()).await;
    assert_eq!(
        (status, body["items"].as_array().map(Vec::len)),
        (200, Some(3))
    );

    // After all that, every front still serves.
    front_adds().await;
}

/// Per-connection bounds of the zerorpc front: open calls (`rpc.max_calls_per_connection`)
/// and frames per message.
#[tokio::test]
async fn the_zerorpc_front_bounds_calls_per_connection_and_frames_per_message() {
    use quartet_rpc_gateway::zerorpc::client::{CallError, Client, Reply};
    use quartet_rpc_gateway::zerorpc::socket::{Kind, Socket};
    use rmpv::Value as Msg;
    let (auth, admin) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let (_backend, endpoint) = quartet_e2e::zerorpc_server().await;
    let gateway = gateway(
        &auth,
        &format!("demo={endpoint}"),
        &[("QUARTET_RPC_GATEWAY_RPC_MAX_CALLS_PER_CONNECTION", "2")],
    )
    .await;
    let front = front_endpoint(&gateway);
    let connect = || {
        Client::connect(&front, None)
            .expect("connect")
            .heartbeat(Duration::from_secs(1))
    };
    let call = |client: &Client, method: &str, args: Vec<Msg>| {
        let request = bearer_request(method, args, &admin);
        let client = client.clone();
        async move { client.call_with(request, Duration::from_secs(10)).await }
    };
    let (one, other) = (connect(), connect());
    // Two slow calls fill the first connection: a third is refused by name, while another
    // connection is served.
    let slow = [
        tokio::spawn(call(&one, "demo.slow", vec![2.into()])),
        tokio::spawn(call(&one, "demo.slow", vec![2.into()])),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    match call(&one, "demo.add", vec![1.into(), 2.into()]).await {
        Err(CallError::Remote(e)) => {
            assert_eq!(e.name, "TooManyCalls", "{}", e.message);
            assert!(
                e.message.contains("rpc.max_calls_per_connection"),
                "{}",
                e.message
            );
        }
        other => panic!("not refused: {other:?}"),
    }
    assert!(matches!(
        call(&other, "demo.add", vec![1.into(), 2.into()]).await,
        Ok(Reply::Value(_))
    ));
    for done in slow {
        assert!(matches!(done.await.expect("joined"), Ok(Reply::Value(_))));
    }
    // Its calls over, the connection is served again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        call(&one, "demo.add", vec![1.into(), 2.into()]).await,
        Ok(Reply::Value(_))
    ));
    // A message of 100 frames is no zerorpc request: dropped and counted.
    let raw = Socket::connect(Kind::DEALER, &front, None).expect("a raw socket");
    raw.send(vec![Vec::new(); 100]).expect("send");
    let counted = "quartet_rpc_front_refused_total{reason=\"frames\"} 1";
    quartet_e2e::eventually("the frames counted", Duration::from_secs(5), || async {
        gateway.metrics().await.contains(counted).then_some(())
    })
    .await
    .expect(counted);
    let counted = "quartet_rpc_front_refused_total{reason=\"busy\"} 1";
    assert!(gateway.metrics().await.contains(counted), "{counted}");
}
