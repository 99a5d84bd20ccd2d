//! Every REST API against its own OpenAPI document, through schemathesis
//! ([`quartet_e2e::openapi`]): generated requests to every operation with an administrator's
//! token; no 5xx, and every answer as documented (status, content type, body schema).

use quartet_e2e::db::DbGroup;
use quartet_e2e::openapi::{Budget, Target, schemathesis};
use quartet_e2e::process::Server;

/// Runs schemathesis against `target`: its report on stderr (`--nocapture` shows what it
/// covered); on a finding, fails with the report and `log`.
async fn passes(target: &Target<'_>, budget: &Budget, log: impl FnOnce() -> String) {
    match schemathesis(target, budget).await {
        Ok(report) => eprintln!("{report}"),
        Err(e) => panic!("{e:#}\nthe server's log:\n{}", log()),
    }
}

#[tokio::test]
async fn quartet_auth_answers_as_its_openapi_document_says() {
    let auth = quartet_e2e::auth::start_with_cipher()
        .await
        .expect("quartet-auth starts");
    let token = quartet_e2e::auth::token(
        &auth,
        quartet_e2e::auth::ADMIN,
        quartet_e2e::auth::ADMIN_PASSWORD,
    )
    .await
    .expect("the administrator logs in");
    let url = auth.url("http");
    passes(&Target::new(&url, &token), &Budget::default(), || {
        auth.output()
    })
    .await;
}

/// The task gateway with the embedded broker and its built-in worker, verifying `auth`'s tokens.
async fn task_gateway(auth: &Server, dir: &std::path::Path) -> Server {
    let broker = format!("sqlite:{}", dir.join("tasks.sqlite").display());
    let jwks = format!("{}/.well-known/jwks.json", auth.url("http"));
    let env = [
        ("QUARTET_TASK_GATEWAY_REDIS_BROKER_URL", broker.as_str()),
        ("QUARTET_TASK_GATEWAY_WORKER_ENABLED", "true"),
        ("QUARTET_TASK_GATEWAY_AUTH_JWKS_URL", jwks.as_str()),
        (
            "QUARTET_TASK_GATEWAY_AUTH_ISSUER",
            quartet_e2e::auth::ISSUER,
        ),
    ];
    Server::start("quartet-task-gateway", true, &env)
        .await
        .expect("the task gateway starts")
}

#[tokio::test]
async fn the_task_gateway_answers_as_its_openapi_document_says() {
    let (auth, token) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = task_gateway(&auth, dir.path()).await;
    let url = gateway.url("http");
    passes(&Target::new(&url, &token), &Budget::default(), || {
        gateway.output()
    })
    .await;
}

/// quartet-db's admin API (`/v1/cluster…`) on a group of one replica, with a token holding
/// `db:cluster:read` and `db:cluster:manage`. Nothing generated can harm the group: the only
/// voter cannot be removed, leadership can only go to itself, a learner must be reachable and
/// catch up or it is removed again; the group must still be one voter, leading, afterwards.
#[tokio::test]
async fn the_database_admin_api_answers_as_its_openapi_document_says() {
    let (auth, token) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth starts");
    let mut flags = quartet_e2e::auth::client_flags(&auth);
    // A read that asks for an index never written waits this long (then 504).
    flags.extend(["--raft-commit-timeout-ms".to_owned(), "1000".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let group = DbGroup::start(1, &flags).await.expect("a group of one");
    group
        .wait_leader(std::time::Duration::from_secs(20))
        .await
        .expect("the replica leads");
    let url = group.http_url(0);
    let target = Target {
        // A learner at a generated address that nothing answers at, and a checksum at an
        // index never written, wait and then answer their documented 504.
        waits: &["^POST /v1/cluster/learners$", "^GET /v1/cluster/checksum$"],
        ..Target::new(&url, &token)
    };
    passes(&target, &Budget::default(), || group.output(0)).await;
    let status = quartet_e2e::get_json(&format!("{url}/v1/cluster"), &token)
        .await
        .expect("the group's status");
    assert_eq!(status["leader"], 1, "{status}");
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{status}");
    assert_eq!(members[0]["voter"], true, "{status}");
    assert_eq!(
        members[0]["addr"], status["addr"],
        "its address unchanged: {status}"
    );
}

/// quartet-rpc-gateway's REST API for a zerorpc-python backend (`demo`), against the document
/// it generates from the backend (`GET /v1/openapi.json`): one operation per method, arguments
/// as a JSON array, and the gateway's own routes (`/v1/services`, `/v1/services/{service}`,
/// `/v1/openapi.json`); every check, status codes included.
#[tokio::test]
async fn the_rpc_gateway_answers_as_its_generated_openapi_document_says() {
    let (auth, token) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth starts");
    let (_backend, endpoint) = quartet_e2e::zerorpc_server().await;
    let jwks = format!("{}/.well-known/jwks.json", auth.url("http"));
    let backends = format!("demo={endpoint}");
    let env = [
        ("QUARTET_RPC_GATEWAY_AUTH_JWKS_URL", jwks.as_str()),
        ("QUARTET_RPC_GATEWAY_AUTH_ISSUER", quartet_e2e::auth::ISSUER),
        ("QUARTET_RPC_GATEWAY_RPC_BACKENDS", backends.as_str()),
        ("QUARTET_RPC_GATEWAY_RPC_HEARTBEAT_MS", "1000"),
        ("QUARTET_RPC_GATEWAY_RPC_TIMEOUT_SECONDS", "2"),
        (
            "QUARTET_RPC_GATEWAY_RPC_ZERORPC_LISTEN",
            "tcp://127.0.0.1:0",
        ),
    ];
    let gateway = Server::start("quartet-rpc-gateway", true, &env)
        .await
        .expect("the gateway starts");
    let url = gateway.url("http");
    let target = Target {
        document: "/v1/openapi.json",
        // Every call takes a deadline (`?timeout=`, at most rpc.timeout_seconds, 2 s here), and
        // slow, pid and ticks sleep as long as asked: a 504 says the deadline passed.
        waits: &["^POST /v1/services/demo/"],
        ..Target::new(&url, &token)
    };
    passes(&target, &Budget::default(), || gateway.output()).await;
}
