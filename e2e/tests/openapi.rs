//! Every REST API against its own OpenAPI document, through schemathesis
//! ([`quartet_e2e::openapi`]): generated requests to every operation with an administrator's
//! token; no 5xx, and every answer as documented (status, content type, body schema).

use quartet_e2e::openapi::{Budget, NO_SERVER_ERROR, schemathesis};
use quartet_e2e::process::Server;

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
    passes(&auth, &token, &Budget::default()).await;
}

/// Runs schemathesis against `server`'s REST API; on a finding, fails with the report and the
/// server's log.
async fn passes(server: &Server, token: &str, budget: &Budget) {
    if let Err(e) = schemathesis(&server.url("http"), token, None, budget).await {
        panic!("{e:#}\n{}'s log:\n{}", server.name, server.output());
    }
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
async fn the_task_gateway_answers_no_request_with_a_server_error() {
    let (auth, token) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = task_gateway(&auth, dir.path()).await;
    let budget = Budget {
        checks: NO_SERVER_ERROR,
        ..Budget::default()
    };
    passes(&gateway, &token, &budget).await;
}

/// Ignored until the task gateway's document matches its answers: its problems are documented
/// as `application/json` (sent as `application/problem+json`), `GET /v1/queues/{queue}` answers
/// an undocumented 400 for a name permissions cannot hold, and `GET /v1/tasks/{id}` declares
/// `result` an object though it is any JSON value, `null` while pending.
#[tokio::test]
#[ignore = "the task gateway's OpenAPI document does not yet match its answers (see the doc comment)"]
async fn the_task_gateway_answers_as_its_openapi_document_says() {
    let (auth, token) = quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = task_gateway(&auth, dir.path()).await;
    passes(&gateway, &token, &Budget::default()).await;
}
