//! quartet-rpc-gateway as a process in front of a real zerorpc-python server: calls over REST
//! with tokens from a real quartet-auth, the permission named when it is missing, remote
//! errors, streams, and a backend that dies.

use std::time::Duration;

use quartet_e2e::http_client;
use quartet_e2e::process::Server;
use serde_json::{Value, json};

#[tokio::test]
async fn rest_calls_reach_a_python_zerorpc_backend_with_tokens_and_permissions() {
    let (auth, admin) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token");
    let (mut backend, endpoint) = quartet_e2e::zerorpc_server().await;
    let jwks = format!("{}/.well-known/jwks.json", auth.url("http"));
    let backends = format!("demo={endpoint}");
    let gateway = Server::start(
        "quartet-rpc-gateway",
        true,
        &[
            ("QUARTET_RPC_GATEWAY_AUTH_JWKS_URL", jwks.as_str()),
            ("QUARTET_RPC_GATEWAY_AUTH_ISSUER", quartet_e2e::auth::ISSUER),
            ("QUARTET_RPC_GATEWAY_RPC_BACKENDS", backends.as_str()),
            ("QUARTET_RPC_GATEWAY_RPC_HEARTBEAT_MS", "1000"),
            (
                "QUARTET_RPC_GATEWAY_RPC_ZERORPC_LISTEN",
                "tcp://127.0.0.1:0",
            ),
        ],
    )
    .await
    .expect("the gateway starts");
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
    let users = http
        .post(format!("{}/v1/admin/roles", auth.url("http")))
        .bearer_auth(admin.clone().expect("token"))
        .json(&json!({"name": "reader", "description": "reads", "permissions": ["rpc:call:demo.count"]}))
        .send()
        .await
        .expect("role");
    assert!(
        users.status().is_success(),
        "{}",
        users.text().await.unwrap_or_default()
    );
    let user = http
        .post(format!("{}/v1/admin/users", auth.url("http")))
        .bearer_auth(admin.clone().expect("token"))
        .json(&json!({"name": "rita", "password": "rita-e2e-password", "roles": ["reader"]}))
        .send()
        .await
        .expect("user");
    assert!(user.status().is_success());
    let rita = quartet_e2e::auth::token(&auth, "rita", "rita-e2e-password")
        .await
        .expect("rita's token");
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

    // The zerorpc front: a zerorpc-python client calls demo.* through the gateway with its
    // token in the event header; without one it is refused, by name.
    let front = gateway
        .output()
        .lines()
        .find(|l| l.contains("zerorpc front listening"))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|l| l["endpoint"].as_str().map(str::to_owned))
        .expect("the zerorpc front's endpoint in the log");
    let out = tokio::process::Command::new(quartet_e2e::python().await)
        .args([
            "zerorpc_peer.py",
            "gateway",
            &front,
            admin.as_deref().expect("token"),
        ])
        .current_dir(quartet_e2e::repo_root().join("e2e/python"))
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let through: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(through["add"], 3, "{through}");
    assert_eq!(through["count"], json!([0, 1, 2]));
    assert_eq!(through["error"], json!(["ValueError", "boom"]));
    assert_eq!(through["anonymous"][0], "Unauthenticated", "{through}");

    // The gRPC front: JSON or MessagePack arguments, streams, the same permissions.
    {
        use quartet_proto::rpc::v1 as pb;
        let channel = tonic::transport::Endpoint::from_shared(gateway.url("grpc"))
            .expect("endpoint")
            .connect()
            .await
            .expect("grpc");
        let mut client = pb::rpc_client::RpcClient::new(channel);
        let with_token = |message, token: &str| {
            let mut request = tonic::Request::new(message);
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("metadata"),
            );
            request
        };
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
            .contains("lost the server"),
        "{body}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "noticed after {:?}",
        killed.elapsed()
    );
}
