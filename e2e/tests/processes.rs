//! Every Quartet binary, run as a real process: it binds its listeners, answers health,
//! readiness, metrics, OpenAPI, gRPC health, reflection and `Info`, stops cleanly on SIGTERM,
//! and refuses a bad configuration naming every bad key.

use std::time::Duration;

use quartet_e2e::http_client;
use quartet_e2e::process::{BINARIES, Server, binary};
use quartet_proto::kit::v1::GetInfoRequest;
use quartet_proto::kit::v1::info_client::InfoClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn the_task_gateway_without_its_redis_runs_but_says_it_is_not_ready() {
    let server = Server::start(
        "quartet-task-gateway",
        true,
        &[
            (
                "QUARTET_TASK_GATEWAY_REDIS_BROKER_URL",
                "redis://127.0.0.1:1/0",
            ),
            (
                "QUARTET_TASK_GATEWAY_REDIS_RESULT_URL",
                "redis://127.0.0.1:1/1",
            ),
        ],
    )
    .await
    .expect("starts without Redis");
    let ready: serde_json::Value = http_client(Duration::from_secs(5))
        .get(format!("{}/readyz", server.url("admin")))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["ready"], false, "{ready}");
    let broker = ready["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "broker"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(broker["ok"], false, "{ready}");
    assert!(
        broker["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("redis"),
        "the reason names Redis: {ready}"
    );
}

#[tokio::test]
async fn every_binary_serves_its_listeners_and_stops_cleanly_on_sigterm() {
    let http = http_client(Duration::from_secs(5));
    // The task gateway is ready only with its Redis: give it the test one.
    let redis = quartet_e2e::redis_url().await;
    let (broker_url, result_url) = (format!("{redis}/10"), format!("{redis}/11"));
    for &(name, with_apis) in BINARIES {
        let env: Vec<(&str, &str)> = if name == "quartet-task-gateway" {
            vec![
                ("QUARTET_TASK_GATEWAY_REDIS_BROKER_URL", &broker_url),
                ("QUARTET_TASK_GATEWAY_REDIS_RESULT_URL", &result_url),
            ]
        } else {
            Vec::new()
        };
        let mut server = Server::start(name, with_apis, &env)
            .await
            .expect("server starts");
        let admin = server.url("admin");

        let health = http
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200, "{name}");
        // Ready once its dependencies are (quartet-db: once its group has elected a leader).
        let ready = quartet_e2e::eventually(
            &format!("{name} ready"),
            Duration::from_secs(15),
            || async {
                let ready: serde_json::Value = http
                    .get(format!("{admin}/readyz"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (ready["ready"] == true).then_some(ready)
            },
        )
        .await;
        assert!(ready.is_ok(), "{name}: {ready:?}");
        let metrics = http
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains(&format!("quartet_build_info{{service=\"{name}\"")),
            "{name}: {metrics}"
        );
        assert!(metrics.contains("process_resident_memory_bytes"), "{name}");

        if with_apis {
            let info: serde_json::Value = http
                .get(format!("{}/v1/info", server.url("http")))
                .send()
                .await
                .expect("info")
                .json()
                .await
                .expect("json");
            assert_eq!(info["service"], name);
            let doc: serde_json::Value = http
                .get(format!("{}/openapi.json", server.url("http")))
                .send()
                .await
                .expect("doc")
                .json()
                .await
                .expect("json");
            assert_eq!(doc["info"]["title"], format!("{name} REST API"));

            let channel = tonic::transport::Endpoint::from_shared(server.url("grpc"))
                .expect("endpoint")
                .connect()
                .await
                .expect("grpc connects");
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "{name}");
            let info = InfoClient::new(channel.clone())
                .get_info(GetInfoRequest {})
                .await
                .expect("GetInfo")
                .into_inner();
            assert_eq!(info.service, name);
            assert!(info.ready);
            assert_reflection_lists_info(channel).await;
        }

        let status = server
            .terminate(Duration::from_secs(20))
            .await
            .expect("exits");
        assert!(
            status.success(),
            "{name} exited with {status}; output:\n{}",
            server.output()
        );
        assert!(
            server.output().contains("\"message\":\"stopped\""),
            "{name}: {}",
            server.output()
        );
    }
}

async fn assert_reflection_lists_info(channel: tonic::transport::Channel) {
    use futures::StreamExt;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection call")
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no reflection response")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"quartet.kit.v1.Info".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_bad_configuration_fails_the_start_naming_every_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("auth.toml");
    std::fs::write(
        &file,
        "[admin]\nlisten = \"127.0.0.1:0\"\nport = 9\n[shutdown]\ngrace = \"eventually\"\n",
    )
    .expect("write");
    let out = tokio::process::Command::new(binary("quartet-auth").expect("built"))
        .arg("--config")
        .arg(&file)
        .args(["--grpc-listen", "not-an-address"])
        .env("QUARTET_AUTH_LOG_FORMAT", "xml")
        .env("QUARTET_AUTH_HTTP_LISTN", "127.0.0.1:0")
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "invalid configuration for quartet-auth: 5 problem(s)",
        "QUARTET_AUTH_HTTP_LISTN (env QUARTET_AUTH_HTTP_LISTN): unknown environment variable",
        "did you mean QUARTET_AUTH_HTTP_LISTEN?",
        "admin.port (file ",
        "unknown key",
        "grpc.listen (flag --grpc-listen): \"not-an-address\"",
        "log.format (env QUARTET_AUTH_LOG_FORMAT): \"xml\": unknown variant `xml`",
        "shutdown.grace (file ",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn print_config_shows_the_effective_values_and_their_precedence() {
    let out = tokio::process::Command::new(binary("quartet-db").expect("built"))
        .args(["--print-config", "--shutdown-grace", "5s"])
        .env("QUARTET_DB_SHUTDOWN_GRACE", "9s")
        .env("QUARTET_DB_LOG_FILTER", "debug")
        .output()
        .await
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let config: toml::Table = toml::from_str(&text).expect("prints TOML");
    assert_eq!(config["shutdown"]["grace"].as_str(), Some("5s"), "{text}");
    assert_eq!(config["log"]["filter"].as_str(), Some("debug"), "{text}");
    assert_eq!(
        config["grpc"]["listen"].as_str(),
        Some("0.0.0.0:7140"),
        "{text}"
    );
}

#[tokio::test]
async fn every_setting_of_every_binary_is_documented() {
    for &(name, _) in BINARIES {
        let out = tokio::process::Command::new(binary(name).expect("built"))
            .arg("--config-reference")
            .output()
            .await
            .expect("runs");
        assert!(out.status.success(), "{name}");
        let text = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| `")).collect();
        assert!(rows.len() >= 4, "{name}: {text}");
        for row in rows {
            let meaning = row
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .unwrap_or_default()
                .trim();
            assert!(!meaning.is_empty(), "{name}: undocumented setting in {row}");
        }
    }
}
