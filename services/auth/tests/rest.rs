//! The REST front in process, through a real HTTP client: OAuth2 wire format and errors, the
//! JWKS, bearer-guarded authorization and admin routes, problem+json for bad input.

mod common;

use quartet_auth::ini::IniRealm;
use quartet_auth::rest::{State, api};
use quartet_auth::store::ClientRecord;
use quartet_kit::app::Context;
use serde_json::{Value, json};

struct Server {
    base: String,
    ctx: Context,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.ctx.shutdown.trigger();
    }
}

async fn start() -> Server {
    let (dir, auth) = common::open_auth().await;
    let client = ClientRecord {
        client_id: "app".into(),
        secret_hash: Some(auth.hasher().hash("app secret/+")),
        grant_types: vec!["password".into(), "refresh_token".into()],
        scopes: vec!["openid".into()],
        permissions: vec![],
    };
    auth.store()
        .create_client(&client, 0)
        .await
        .expect("client");
    auth.bootstrap_admin("root", "root-password")
        .await
        .expect("admin");
    auth.store()
        .create_user("ada", &auth.hasher().hash("ada-password"), 0)
        .await
        .expect("user");
    auth.set_realm(
        IniRealm::parse("[urls]\n/admin/** = authc, roles[admin]\n/** = anon").expect("realm"),
    );
    let (ctx, bound) = common::serve(None, api(State { auth })).await;
    let addr = bound.http.expect("http");
    Server {
        base: format!("http://{addr}"),
        ctx,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Server {
    async fn token(&self, user: &str, password: &str) -> String {
        let response = self
            .http
            .post(format!("{}/oauth2/token", self.base))
            .basic_auth("app", Some("app%20secret%2F%2B"))
            .form(&[
                ("grant_type", "password"),
                ("username", user),
                ("password", password),
            ])
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        body["access_token"].as_str().expect("token").to_owned()
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn the_token_endpoint_speaks_rfc_6749() {
    let s = start().await;
    let url = format!("{}/oauth2/token", s.base);
    let ok = s
        .http
        .post(&url)
        .basic_auth("app", Some("app%20secret%2F%2B"))
        .form(&[
            ("grant_type", "password"),
            ("username", "ada"),
            ("password", "ada-password"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["cache-control"], "no-store");
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body["refresh_token"].is_string());

    let post_auth = s
        .http
        .post(&url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", body["refresh_token"].as_str().expect("rt")),
            ("client_id", "app"),
            ("client_secret", "app secret/+"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(post_auth.status(), 200, "client_secret_post works too");

    /// Form, Basic secret, expected status, expected RFC 6749 error code.
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, u16, &'a str);
    let cases: [Case; 5] = [
        (
            &[("grant_type", "authorization_code")],
            Some("app%20secret%2F%2B"),
            400,
            "unsupported_grant_type",
        ),
        (
            &[("grant_type", "password"), ("username", "ada")],
            Some("app%20secret%2F%2B"),
            400,
            "invalid_request",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "ada"),
                ("password", "nope"),
            ],
            Some("app%20secret%2F%2B"),
            400,
            "invalid_grant",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "ada"),
                ("password", "ada-password"),
            ],
            Some("wrong"),
            401,
            "invalid_client",
        ),
        (
            &[("username", "ada")],
            Some("app%20secret%2F%2B"),
            400,
            "invalid_request",
        ),
    ];
    for (form, secret, status, error) in cases {
        let response = s
            .http
            .post(&url)
            .basic_auth("app", secret)
            .form(form)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), status, "{form:?}");
        if status == 401 {
            assert_eq!(
                response.headers()["www-authenticate"],
                "Basic realm=\"quartet\""
            );
        }
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], error, "{form:?}: {body}");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
    let not_a_form = s
        .http
        .post(&url)
        .json(&json!({"grant_type": "password"}))
        .send()
        .await
        .expect("request");
    assert_eq!(not_a_form.status(), 400);
    assert_eq!(
        not_a_form.json::<Value>().await.expect("json")["error"],
        "invalid_request"
    );

    let jwks: Value = s
        .http
        .get(format!("{}/.well-known/jwks.json", s.base))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    let meta: Value = s
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", s.base))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["token_endpoint"], "http://127.0.0.1:7111/oauth2/token");
}

#[tokio::test]
async fn authorization_questions_need_a_token_and_answer_per_item() {
    let s = start().await;
    let (status, body) = s
        .post(
            "/v1/authz/check",
            "not-a-token",
            json!({"permissions": ["a"]}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["type"], "urn:quartet:problem:invalid-token");

    let root = s.token("root", "root-password").await;
    let (status, body) = s
        .post(
            "/v1/authz/check",
            &root,
            json!({"roles": ["admin", "ops"], "permissions": ["anything:at:all"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"subject": "root", "roles": {"admin": true, "ops": false}, "permissions": {"anything:at:all": true}})
    );

    let (status, body) = s
        .post("/v1/authz/check", &root, json!({"permissions": ["a:,:b"]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["type"], "urn:quartet:problem:invalid-permission");

    let ada = s.token("ada", "ada-password").await;
    let (status, body) = s
        .post(
            "/v1/authz/check",
            &ada,
            json!({"subject": "root", "roles": ["admin"]}),
        )
        .await;
    assert_eq!(
        status, 403,
        "asking about others needs auth:subject:read: {body}"
    );
    let (status, body) = s
        .post(
            "/v1/authz/check",
            &root,
            json!({"subject": "ada", "permissions": ["doc:read"]}),
        )
        .await;
    assert_eq!(
        (status, &body["permissions"]["doc:read"]),
        (200, &json!(false))
    );

    let (status, body) = s
        .post(
            "/v1/authz/urls",
            &ada,
            json!({"method": "GET", "path": "/public/..;/admin/x"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["path"].as_str(), body["outcome"].as_str()),
        (Some("/admin/x"), Some("forbidden"))
    );
    let (_, body) = s
        .post(
            "/v1/authz/urls",
            &root,
            json!({"method": "GET", "path": "/admin/x"}),
        )
        .await;
    assert_eq!(body["outcome"], "allow");
    let (_, body) = s
        .post(
            "/v1/authz/urls",
            &root,
            json!({"method": "GET", "path": "/admin/x", "subject": ""}),
        )
        .await;
    assert_eq!(body["outcome"], "unauthenticated");
    let (status, body) = s
        .post(
            "/v1/authz/urls",
            &root,
            json!({"method": "GET", "path": "/admin/%2e%2e%2fx"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .post(
            "/v1/authz/urls",
            &root,
            json!({"method": "GET", "path": "/x", "rules": "/x = fly"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("unknown filter \"fly\""))
    );
}

#[tokio::test]
async fn the_admin_api_is_guarded_and_all_or_nothing() {
    let s = start().await;
    let root = s.token("root", "root-password").await;
    let ada = s.token("ada", "ada-password").await;

    let (status, body) = s
        .post(
            "/v1/admin/roles",
            &ada,
            json!({"name": "ops", "permissions": ["task:*"]}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["detail"],
        "permission \"auth:role:create\" is required"
    );

    let (status, body) = s
        .post(
            "/v1/admin/roles",
            &root,
            json!({"name": "ops", "permissions": ["task:*", "rpc:call:reports.*"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = s
        .post("/v1/admin/roles", &root, json!({"name": "ops"}))
        .await;
    assert_eq!(status, 409);
    let (status, body) = s
        .post(
            "/v1/admin/roles",
            &root,
            json!({"name": "bad", "permissions": [":"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = s
        .post(
            "/v1/admin/users",
            &root,
            json!({"name": "bob", "password": "bob-password", "roles": ["ops", "ghost"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"], "role \"ghost\" does not exist");
    let users: Value = s
        .http
        .get(format!("{}/v1/admin/users", s.base))
        .bearer_auth(&root)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        users,
        json!(["ada", "root"]),
        "the failed creation left nothing behind"
    );

    let (status, body) = s.post("/v1/admin/users", &root, json!({"name": "bob", "password": "bob-password", "roles": ["ops"], "permissions": ["db:read:*"]})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["permissions"],
        json!(["db:read:*", "rpc:call:reports.*", "task:*"])
    );
    let (status, _) = s
        .post(
            "/v1/admin/users",
            &root,
            json!({"name": "weak", "password": "short"}),
        )
        .await;
    assert_eq!(status, 400);

    let (status, body) = s.post("/v1/admin/clients", &root, json!({"client_id": "batch", "grant_types": ["client_credentials"], "permissions": ["task:submit:*"]})).await;
    assert_eq!(status, 201, "{body}");
    let secret = body["client_secret"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    let machine: Value = s
        .http
        .post(format!("{}/oauth2/token", s.base))
        .basic_auth("batch", Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    assert!(machine["access_token"].is_string(), "{machine}");

    let audit: Value = s
        .http
        .get(format!("{}/v1/admin/audit?kind=admin.user.create", s.base))
        .bearer_auth(&root)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let subjects: Vec<&str> = audit
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    assert_eq!(subjects, ["bob", "root"]);
}

#[tokio::test]
async fn the_cipher_service_encrypts_rotates_rewraps_and_signs() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (dir, auth) = common::open_auth().await;
    let master = quartet_auth::cipher::MasterKey::from_base64(
        &quartet_auth::cipher::MasterKey::generate_base64(),
    )
    .expect("master");
    auth.enable_cipher(master).await.expect("cipher on");
    auth.bootstrap_admin("root", "root-password")
        .await
        .expect("admin");
    auth.store()
        .create_user("ada", &auth.hasher().hash("ada-password"), 0)
        .await
        .expect("user");
    let client = ClientRecord {
        client_id: "app".into(),
        secret_hash: Some(auth.hasher().hash("app secret/+")),
        grant_types: vec!["password".into()],
        scopes: vec![],
        permissions: vec![],
    };
    auth.store()
        .create_client(&client, 0)
        .await
        .expect("client");
    let (ctx, bound) = common::serve(None, api(State { auth })).await;
    let s = Server {
        base: format!("http://{}", bound.http.expect("http")),
        ctx,
        http: reqwest::Client::new(),
        _dir: dir,
    };
    let root = s.token("root", "root-password").await;

    let (status, sealed) = s
        .post(
            "/v1/cipher/encrypt",
            &root,
            json!({"input": b64.encode("4111 1111"), "aad": b64.encode("user:ada")}),
        )
        .await;
    assert_eq!(status, 200, "{sealed}");
    let ciphertext = sealed["output"].as_str().expect("ciphertext").to_owned();
    assert!(ciphertext.starts_with("qc1.1."), "{ciphertext}");
    let (_, opened) = s
        .post(
            "/v1/cipher/decrypt",
            &root,
            json!({"input": ciphertext, "aad": b64.encode("user:ada")}),
        )
        .await;
    assert_eq!(
        b64.decode(opened["output"].as_str().expect("plain"))
            .expect("b64"),
        b"4111 1111"
    );
    let (status, body) = s
        .post(
            "/v1/cipher/decrypt",
            &root,
            json!({"input": ciphertext, "aad": b64.encode("user:bob")}),
        )
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (400, Some("urn:quartet:problem:decryption-failed"))
    );

    let (status, rotated) = s.post("/v1/admin/cipher/rotate", &root, json!({})).await;
    assert_eq!((status, &rotated["version"]), (200, &json!(2)));
    let (_, rewrapped) = s
        .post(
            "/v1/cipher/rewrap",
            &root,
            json!({"input": ciphertext, "aad": b64.encode("user:ada")}),
        )
        .await;
    assert!(
        rewrapped["output"]
            .as_str()
            .is_some_and(|c| c.starts_with("qc1.2.")),
        "{rewrapped}"
    );

    let (_, signed) = s
        .post(
            "/v1/cipher/sign",
            &root,
            json!({"input": b64.encode("order 42")}),
        )
        .await;
    let signature = signed["output"].as_str().expect("signature").to_owned();
    let (_, good) = s
        .post(
            "/v1/cipher/verify",
            &root,
            json!({"input": b64.encode("order 42"), "signature": signature}),
        )
        .await;
    assert_eq!(good["valid"], true);
    let (_, bad) = s
        .post(
            "/v1/cipher/verify",
            &root,
            json!({"input": b64.encode("order 43"), "signature": signature}),
        )
        .await;
    assert_eq!(bad["valid"], false);

    let ada = s.token("ada", "ada-password").await;
    let (status, _) = s
        .post("/v1/cipher/encrypt", &ada, json!({"input": ""}))
        .await;
    assert_eq!(status, 403, "needs auth:cipher:encrypt");
    let (status, _) = s
        .post("/v1/cipher/shred", &root, json!({"input": ""}))
        .await;
    assert_eq!(status, 404);
    let (status, body) = s
        .post("/v1/cipher/encrypt", &root, json!({"input": "not base64!"}))
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (400, Some("urn:quartet:problem:bad-base64"))
    );
}

#[tokio::test]
async fn without_a_master_key_the_cipher_service_says_so() {
    let s = start().await;
    let root = s.token("root", "root-password").await;
    let (status, body) = s
        .post("/v1/cipher/encrypt", &root, json!({"input": ""}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["detail"],
        "the cipher service is not configured (set cipher.master_key_file)"
    );
}

#[tokio::test]
async fn sessions_open_show_close_and_are_revoked_by_administrators() {
    let s = start().await;
    let url = |p: &str| format!("{}{p}", s.base);
    let login = |user: &'static str, password: &'static str| {
        s.http
            .post(url("/v1/sessions"))
            .json(&json!({"username": user, "password": password}))
            .send()
    };
    let opened = login("ada", "ada-password").await.expect("login");
    assert_eq!(opened.status(), 201);
    let cookie = opened.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        cookie.starts_with("quartet_session=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let body: Value = opened.json().await.expect("json");
    let id = body["session"].as_str().expect("id").to_owned();

    let current: Value = s
        .http
        .get(url("/v1/sessions/current"))
        .header("x-quartet-session", &id)
        .send()
        .await
        .expect("current")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (current["user"].as_str(), current["handle"].as_str()),
        (Some("ada"), body["handle"].as_str())
    );
    let by_cookie = s
        .http
        .get(url("/v1/sessions/current"))
        .header("cookie", format!("quartet_session={id}"))
        .send()
        .await
        .expect("current");
    assert_eq!(by_cookie.status(), 200);

    let wrong = login("ada", "nope").await.expect("login");
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<Value>().await.expect("json")["detail"],
        "invalid username or password"
    );

    // Administrators list and revoke; a second session survives a targeted revocation.
    let second: Value = login("ada", "ada-password")
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let root = s.token("root", "root-password").await;
    let listed: Value = s
        .http
        .get(url("/v1/admin/users/ada/sessions"))
        .bearer_auth(&root)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(
        listed.to_string().find(&id).is_none(),
        "lists never show session ids"
    );
    let handle = body["handle"].as_str().expect("handle");
    let revoked = s
        .http
        .delete(url(&format!("/v1/admin/users/ada/sessions/{handle}")))
        .bearer_auth(&root)
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 200);
    assert_eq!(
        s.http
            .get(url("/v1/sessions/current"))
            .header("x-quartet-session", &id)
            .send()
            .await
            .expect("current")
            .status(),
        401
    );
    let other = second["session"].as_str().expect("id");
    assert_eq!(
        s.http
            .get(url("/v1/sessions/current"))
            .header("x-quartet-session", other)
            .send()
            .await
            .expect("current")
            .status(),
        200
    );

    // Logout ends it and clears the cookie.
    let logout = s
        .http
        .delete(url("/v1/sessions/current"))
        .header("x-quartet-session", other)
        .send()
        .await
        .expect("logout");
    assert_eq!(logout.status(), 204);
    assert!(
        logout.headers()["set-cookie"]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    assert_eq!(
        s.http
            .delete(url("/v1/sessions/current"))
            .header("x-quartet-session", other)
            .send()
            .await
            .expect("logout")
            .status(),
        401
    );

    let ada = s.token("ada", "ada-password").await;
    let forbidden = s
        .http
        .get(url("/v1/admin/users/root/sessions"))
        .bearer_auth(&ada)
        .send()
        .await
        .expect("list");
    assert_eq!(forbidden.status(), 403);
}

#[tokio::test]
async fn roles_and_permissions_change_after_creation_and_disabling_ends_sessions() {
    let s = start().await;
    let root = s.token("root", "root-password").await;
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let request = s
            .http
            .request(method, format!("{}{path}", s.base))
            .bearer_auth(&root);
        match body {
            Some(b) => request.json(&b).send(),
            None => request.send(),
        }
    };
    use reqwest::Method;
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            send(
                Method::POST,
                "/v1/admin/roles",
                Some(json!({"name": "ops"}))
            )
            .await
            .expect("role")
        ),
        201
    );
    assert_eq!(
        status(
            send(
                Method::POST,
                "/v1/admin/roles/ops/permissions",
                Some(json!({"name": "task:submit:*"}))
            )
            .await
            .expect("grant")
        ),
        204
    );
    assert_eq!(
        status(
            send(
                Method::POST,
                "/v1/admin/roles/ops/permissions",
                Some(json!({"name": "a:,:b"}))
            )
            .await
            .expect("grant")
        ),
        400
    );
    assert_eq!(
        status(
            send(
                Method::POST,
                "/v1/admin/roles/ghost/permissions",
                Some(json!({"name": "x"}))
            )
            .await
            .expect("grant")
        ),
        404
    );
    let role: Value = send(Method::GET, "/v1/admin/roles/ops", None)
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(role["permissions"], json!(["task:submit:*"]));

    assert_eq!(
        status(
            send(
                Method::POST,
                "/v1/admin/users/ada/roles",
                Some(json!({"name": "ops"}))
            )
            .await
            .expect("assign")
        ),
        204
    );
    assert_eq!(
        status(
            send(
                Method::POST,
                "/v1/admin/users/ada/roles",
                Some(json!({"name": "ops"}))
            )
            .await
            .expect("assign")
        ),
        409
    );
    assert_eq!(
        status(
            send(
                Method::POST,
                "/v1/admin/users/ada/permissions",
                Some(json!({"name": "doc:read"}))
            )
            .await
            .expect("grant")
        ),
        204
    );
    let ada: Value = send(Method::GET, "/v1/admin/users/ada", None)
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (&ada["roles"], &ada["permissions"]),
        (&json!(["ops"]), &json!(["doc:read", "task:submit:*"]))
    );

    assert_eq!(
        status(
            send(
                Method::DELETE,
                "/v1/admin/users/ada/permissions/doc:read",
                None
            )
            .await
            .expect("revoke")
        ),
        204
    );
    assert_eq!(
        status(
            send(Method::DELETE, "/v1/admin/users/ada/roles/ops", None)
                .await
                .expect("unassign")
        ),
        204
    );
    assert_eq!(
        status(
            send(Method::DELETE, "/v1/admin/users/ada/roles/ops", None)
                .await
                .expect("unassign")
        ),
        404
    );
    assert_eq!(
        status(
            send(
                Method::DELETE,
                "/v1/admin/roles/ops/permissions/task:submit:*",
                None
            )
            .await
            .expect("revoke")
        ),
        204
    );

    let session: Value = s
        .http
        .post(format!("{}/v1/sessions", s.base))
        .json(&json!({"username": "ada", "password": "ada-password"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    assert_eq!(
        status(
            send(
                Method::PUT,
                "/v1/admin/users/ada/disabled",
                Some(json!({"disabled": true}))
            )
            .await
            .expect("disable")
        ),
        204
    );
    let current = s
        .http
        .get(format!("{}/v1/sessions/current", s.base))
        .header(
            "x-quartet-session",
            session["session"].as_str().expect("id"),
        )
        .send()
        .await
        .expect("current");
    assert_eq!(current.status(), 401, "disabling ends the user's sessions");
    let refused = s
        .http
        .post(format!("{}/oauth2/token", s.base))
        .basic_auth("app", Some("app%20secret%2F%2B"))
        .form(&[
            ("grant_type", "password"),
            ("username", "ada"),
            ("password", "ada-password"),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(refused.status(), 400);
    let audit: Value = send(Method::GET, "/v1/admin/audit?subject=ada", None)
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let kinds: Vec<&str> = audit
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"admin.user.disable") && kinds.contains(&"admin.user.role.assign"),
        "{kinds:?}"
    );
}

impl Server {
    /// Sends `method path` with `token` and an optional JSON body; the status and the body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        let response = match body {
            Some(b) => request.json(&b),
            None => request,
        }
        .send()
        .await
        .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The token endpoint's answer to `form` from the client `app`.
    async fn grant(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/oauth2/token", self.base))
            .basic_auth("app", Some("app%20secret%2F%2B"))
            .form(form)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json"))
    }

    /// RFC 7662 introspection of `token` by the client `app`.
    async fn introspect(&self, token: &str) -> Value {
        let response = self
            .http
            .post(format!("{}/oauth2/introspect", self.base))
            .basic_auth("app", Some("app%20secret%2F%2B"))
            .form(&[("token", token)])
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }
}

#[tokio::test]
async fn a_reused_refresh_token_makes_the_access_tokens_of_its_family_inactive() {
    let s = start().await;
    let (status, first) = s
        .grant(&[
            ("grant_type", "password"),
            ("username", "ada"),
            ("password", "ada-password"),
        ])
        .await;
    assert_eq!(status, 200, "{first}");
    let old_refresh = first["refresh_token"].as_str().expect("refresh token");
    let (status, second) = s
        .grant(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", old_refresh),
        ])
        .await;
    assert_eq!(status, 200, "{second}");
    let (first_access, second_access) = (
        first["access_token"].as_str().expect("access token"),
        second["access_token"].as_str().expect("access token"),
    );
    assert_eq!(s.introspect(first_access).await["active"], true);
    assert_eq!(s.introspect(second_access).await["active"], true);
    let live_refresh = second["refresh_token"].as_str().expect("refresh token");
    let refresh = s.introspect(live_refresh).await;
    assert_eq!(
        (&refresh["active"], &refresh["token_type"]),
        (&json!(true), &json!("refresh_token")),
        "a live refresh token introspects as active: {refresh}"
    );

    // The old refresh token again: reuse, and the family is revoked.
    let (status, reuse) = s
        .grant(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", old_refresh),
        ])
        .await;
    assert_eq!((status, &reuse["error"]), (400, &json!("invalid_grant")));
    for (which, token) in [
        ("first access token", first_access),
        ("second access token", second_access),
        ("newest refresh token", live_refresh),
    ] {
        assert_eq!(
            s.introspect(token).await,
            json!({"active": false}),
            "the {which} of a revoked family must be inactive"
        );
    }
    let (status, body) = s
        .post("/v1/authz/check", second_access, json!({"roles": ["x"]}))
        .await;
    assert_eq!(status, 401, "quartet-auth's own APIs refuse it too: {body}");
}

#[tokio::test]
async fn the_tokens_of_a_disabled_or_deleted_user_are_inactive() {
    let s = start().await;
    let root = s.token("root", "root-password").await;
    let ada = s.token("ada", "ada-password").await;
    assert_eq!(s.introspect(&ada).await["active"], true);
    let (status, body) = s
        .call(
            reqwest::Method::PUT,
            "/v1/admin/users/ada/disabled",
            &root,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(s.introspect(&ada).await, json!({"active": false}));
    s.call(
        reqwest::Method::PUT,
        "/v1/admin/users/ada/disabled",
        &root,
        Some(json!({"disabled": false})),
    )
    .await;
    assert_eq!(
        s.introspect(&ada).await["active"],
        true,
        "enabled again, the user's unexpired tokens are good again"
    );
    let (status, body) = s
        .call(reqwest::Method::DELETE, "/v1/admin/users/ada", &root, None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(s.introspect(&ada).await, json!({"active": false}));
}

#[tokio::test]
async fn the_last_administrator_cannot_be_removed() {
    use reqwest::Method;
    let s = start().await;
    let root = s.token("root", "root-password").await;
    let refusals = [
        (Method::DELETE, "/v1/admin/roles/admin", None),
        (Method::DELETE, "/v1/admin/roles/admin/permissions/*", None),
        (Method::DELETE, "/v1/admin/users/root/roles/admin", None),
        (
            Method::PUT,
            "/v1/admin/users/root/disabled",
            Some(json!({"disabled": true})),
        ),
        (Method::DELETE, "/v1/admin/users/root", None),
    ];
    for (method, path, body) in refusals.clone() {
        let (status, problem) = s.call(method.clone(), path, &root, body).await;
        assert_eq!(status, 409, "{method} {path}: {problem}");
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("last-administrator")),
            "{problem}"
        );
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("auth:*") && detail.contains("root"),
            "the refusal says why and who: {detail}"
        );
    }
    let fresh = s.token("root", "root-password").await;
    let (status, users) = s.call(Method::GET, "/v1/admin/users", &fresh, None).await;
    assert_eq!(
        (status, users),
        (200, json!(["ada", "root"])),
        "nothing was changed"
    );

    // With a second administrator (a direct grant, in another case), the first may go.
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/admin/users/ada/permissions",
            &root,
            Some(json!({"name": "AUTH:*"})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = s
        .call(
            Method::DELETE,
            "/v1/admin/users/root/roles/admin",
            &root,
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, problem) = s
        .call(
            Method::DELETE,
            "/v1/admin/users/ada/permissions/AUTH:*",
            &root,
            None,
        )
        .await;
    assert_eq!(status, 409, "ada is now the last one: {problem}");
    // Changes that leave an administrator are not refused.
    let (status, body) = s
        .call(Method::DELETE, "/v1/admin/roles/admin", &root, None)
        .await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test]
async fn oversized_input_is_refused_with_the_limit_named() {
    let s = start().await;
    let root = s.token("root", "root-password").await;
    let long_permission = format!("doc:{}", "a".repeat(600));
    let (status, problem) = s
        .post(
            "/v1/authz/check",
            &root,
            json!({"permissions": [long_permission]}),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("512"))
    );
    let (status, problem) = s
        .post(
            "/v1/admin/roles",
            &root,
            json!({"name": "big", "permissions": [long_permission]}),
        )
        .await;
    assert_eq!(status, 400, "{problem}");

    let rules = "/a/** = anon\n".repeat(6000);
    let (status, problem) = s
        .post(
            "/v1/authz/urls",
            &root,
            json!({"method": "GET", "path": "/a", "rules": rules}),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("65536"))
    );

    let (status, problem) = s
        .post(
            "/v1/admin/users",
            &root,
            json!({"name": "long", "password": "p".repeat(2000)}),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("password-too-long")),
        "{problem}"
    );
    let (status, problem) = s
        .post(
            "/v1/admin/users",
            &root,
            json!({"name": "client:app", "password": "long-enough"}),
        )
        .await;
    assert_eq!(status, 400, "a user may not pose as a client: {problem}");
    let (status, problem) = s
        .post(
            "/v1/admin/clients",
            &root,
            json!({"client_id": "spaced", "grant_types": ["password"], "scopes": ["a b"]}),
        )
        .await;
    assert_eq!(
        status, 400,
        "a scope with a space would split in two: {problem}"
    );
}
