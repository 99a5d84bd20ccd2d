//! quartet-auth as a real process, with real peers: Authlib (an OAuth2 client library from PyPI)
//! obtains tokens with the password and client_credentials grants, PyJWT verifies them with the
//! published JWKS, and another Quartet service's middleware accepts them.

use std::time::Duration;

use quartet_e2e::http_client;
use quartet_e2e::process::Server;
use serde_json::{Value, json};

use quartet_e2e::auth::ISSUER;

async fn oauth_client(args: &[&str]) -> Value {
    let script = quartet_e2e::repo_root().join("e2e/python/oauth_client.py");
    let out = tokio::process::Command::new(quartet_e2e::python().await)
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "oauth_client.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

async fn start_auth() -> Server {
    quartet_e2e::auth::start()
        .await
        .expect("quartet-auth starts")
}

#[tokio::test]
async fn python_oauth_clients_get_tokens_that_pyjwt_and_other_services_verify() {
    let mut auth = start_auth().await;
    let base = auth.url("http");

    let login = oauth_client(&[
        "password",
        &base,
        ISSUER,
        "quartet-cli",
        "admin",
        "correct horse battery",
    ])
    .await;
    assert_eq!(login["claims"]["sub"], "admin");
    assert_eq!(login["claims"]["roles"], json!(["admin"]));
    assert_eq!(login["claims"]["perms"], json!(["*"]));
    assert!(login["token"]["refresh_token"].is_string());
    let admin_token = login["token"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    // The administrator registers a confidential client; Authlib uses it with client_credentials.
    let http = http_client(Duration::from_secs(10));
    let created: Value = http
        .post(format!("{base}/v1/admin/clients"))
        .bearer_auth(&admin_token)
        .json(&json!({"client_id": "reports", "grant_types": ["client_credentials"], "permissions": ["rpc:call:reports.*"]}))
        .send()
        .await
        .expect("create client")
        .json()
        .await
        .expect("json");
    let secret = created["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let machine = oauth_client(&["client_credentials", &base, ISSUER, "reports", &secret]).await;
    assert_eq!(machine["claims"]["sub"], "client:reports");
    assert_eq!(machine["claims"]["perms"], json!(["rpc:call:reports.*"]));

    // Another service verifies the same tokens locally against the JWKS.
    let jwks = format!("{base}/.well-known/jwks.json");
    let gateway = Server::start(
        "quartet-task-gateway",
        true,
        &[
            ("QUARTET_TASK_GATEWAY_AUTH_JWKS_URL", jwks.as_str()),
            ("QUARTET_TASK_GATEWAY_AUTH_ISSUER", ISSUER),
        ],
    )
    .await
    .expect("gateway starts");
    let whoami = format!("{}/v1/whoami", gateway.url("http"));
    let me: Value = http
        .get(&whoami)
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("whoami")
        .json()
        .await
        .expect("json");
    assert_eq!(me["subject"], "admin", "{me}");
    assert_eq!(me["client_id"], "quartet-cli");
    let robot: Value = http
        .get(&whoami)
        .bearer_auth(machine["token"]["access_token"].as_str().expect("token"))
        .send()
        .await
        .expect("whoami")
        .json()
        .await
        .expect("json");
    assert_eq!(robot["subject"], "client:reports");

    let anonymous = http.get(&whoami).send().await.expect("whoami");
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let mut forged = admin_token.clone();
    forged.push('x');
    assert_eq!(
        http.get(&whoami)
            .bearer_auth(&forged)
            .send()
            .await
            .expect("whoami")
            .status(),
        401
    );

    // A service without auth.jwks_url refuses every token rather than trusting any.
    let unconfigured = Server::start("quartet-rpc-gateway", true, &[])
        .await
        .expect("starts");
    let refused = http
        .get(format!("{}/v1/whoami", unconfigured.url("http")))
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("whoami");
    assert_eq!(refused.status(), 503);

    assert!(
        auth.terminate(Duration::from_secs(20))
            .await
            .expect("exits")
            .success()
    );
}

#[tokio::test]
async fn bootstrap_without_its_password_file_fails_the_start_with_a_named_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Server::start_in(
        dir,
        "quartet-auth",
        true,
        &[
            ("QUARTET_AUTH_BOOTSTRAP_ADMIN_USER", "admin"),
            ("QUARTET_AUTH_BOOTSTRAP_ADMIN_PASSWORD_FILE", "missing"),
        ],
    )
    .await
    .err()
    .expect("must not start");
    assert!(
        err.to_string().contains("bootstrap.admin_password_file"),
        "{err}"
    );
}

async fn password_grant(base: &str, user: &str, password: &str) -> reqwest::Response {
    http_client(Duration::from_secs(10))
        .post(format!("{base}/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "quartet-cli"),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .expect("token request")
}

#[tokio::test]
async fn ini_realm_users_log_in_and_edits_apply_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let realm = dir.path().join("realm.ini");
    std::fs::write(
        &realm,
        "[users]\ncarol = first-password, reader\n[roles]\nreader = \"doc:read,list\"\n",
    )
    .expect("write");
    let auth = Server::start_in(
        dir,
        "quartet-auth",
        true,
        &[
            ("QUARTET_AUTH_REALM_INI_FILE", "realm.ini"),
            ("QUARTET_AUTH_REALM_RELOAD_INTERVAL", "100ms"),
            ("QUARTET_AUTH_BOOTSTRAP_CLI_CLIENT", "quartet-cli"),
        ],
    )
    .await
    .expect("starts");
    let base = auth.url("http");
    let first = password_grant(&base, "carol", "first-password").await;
    assert_eq!(first.status(), 200);
    let token: Value = first.json().await.expect("json");
    let me: Value = http_client(Duration::from_secs(5))
        .post(format!("{base}/v1/authz/check"))
        .bearer_auth(token["access_token"].as_str().expect("token"))
        .json(&json!({"roles": ["reader"], "permissions": ["doc:list:42", "doc:write"]}))
        .send()
        .await
        .expect("check")
        .json()
        .await
        .expect("json");
    assert_eq!(
        me["permissions"],
        json!({"doc:list:42": true, "doc:write": false}),
        "{me}"
    );

    std::fs::write(
        &realm,
        "[users]\ncarol = second-password, reader\n[roles]\nreader = doc:read\n",
    )
    .expect("rewrite");
    quartet_e2e::eventually(
        "the edited realm to apply",
        Duration::from_secs(10),
        || async {
            (password_grant(&base, "carol", "second-password")
                .await
                .status()
                == 200)
                .then_some(())
        },
    )
    .await
    .expect("reloaded");
    assert_eq!(
        password_grant(&base, "carol", "first-password")
            .await
            .status(),
        400
    );

    // A broken edit is reported and the realm in force stays.
    std::fs::write(&realm, "[users]\ncarol =\n").expect("break");
    quartet_e2e::eventually(
        "the failed reload to be logged",
        Duration::from_secs(10),
        || async { auth.output().contains("realm reload failed").then_some(()) },
    )
    .await
    .expect("reported");
    assert_eq!(
        password_grant(&base, "carol", "second-password")
            .await
            .status(),
        200
    );
}
