//! The gRPC front (`quartet.auth.v1.Authz`) in process: the same answers as REST, bearer
//! tokens in metadata, errors as gRPC status codes.

mod common;

use std::sync::Arc;

use quartet_auth::grpc::AuthzService;
use quartet_auth::ini::IniRealm;
use quartet_auth::service::{Auth, ClientAuth, GrantKind, TokenRequest};
use quartet_auth::store::ClientRecord;
use quartet_kit::RestApi;
use quartet_kit::app::Context;
use quartet_proto::auth::v1::authz_client::AuthzClient;
use quartet_proto::auth::v1::check_url_response::Outcome;
use quartet_proto::auth::v1::{CheckRequest, CheckUrlRequest};
use tonic::transport::Channel;

struct Fixture {
    ctx: Context,
    channel: Channel,
    auth: Arc<Auth>,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.ctx.shutdown.trigger();
    }
}

async fn start() -> Fixture {
    let (dir, auth) = common::open_auth().await;
    let client = ClientRecord {
        client_id: "cli".into(),
        secret_hash: None,
        grant_types: vec!["password".into()],
        scopes: vec![],
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
        .create_role("ops", "", &["task:submit:*".into()])
        .await
        .expect("role");
    auth.store()
        .create_user("ada", &auth.hasher().hash("ada-password"), 0)
        .await
        .expect("user");
    auth.store()
        .assign_role("ada", "ops")
        .await
        .expect("assign");
    auth.set_realm(
        IniRealm::parse("[urls]\n/tasks/** = authcBearer, perms[task:submit:*]\n/** = anon")
            .expect("realm"),
    );
    let routes = tonic::service::Routes::new(AuthzService::server(auth.clone()));
    let (ctx, bound) = common::serve(Some(routes), RestApi::empty()).await;
    let addr = bound.grpc.expect("grpc");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    Fixture {
        ctx,
        channel,
        auth,
        _dir: dir,
    }
}

impl Fixture {
    async fn token(&self, user: &str, password: &str) -> String {
        let grant = GrantKind::Password {
            username: user.into(),
            password: password.into(),
        };
        let client = ClientAuth {
            client_id: "cli".into(),
            secret: None,
            basic: false,
        };
        self.auth
            .token(TokenRequest {
                grant,
                client,
                scope: None,
                source: String::new(),
            })
            .await
            .expect("token")
            .access_token
    }

    fn client(&self) -> AuthzClient<Channel> {
        AuthzClient::new(self.channel.clone())
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

#[tokio::test]
async fn check_answers_per_item_for_the_caller_or_a_named_user() {
    let f = start().await;
    let ada = f.token("ada", "ada-password").await;
    let question = CheckRequest {
        subject: String::new(),
        roles: vec!["ops".into(), "admin".into()],
        permissions: vec!["task:submit:billing".into(), "task:revoke:x".into()],
    };
    let answer = f
        .client()
        .check(with_token(question.clone(), &ada))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(answer.subject, "ada");
    assert_eq!(answer.roles.get("ops"), Some(&true));
    assert_eq!(answer.roles.get("admin"), Some(&false));
    assert_eq!(answer.permissions.get("task:submit:billing"), Some(&true));
    assert_eq!(answer.permissions.get("task:revoke:x"), Some(&false));

    let missing = f
        .client()
        .check(tonic::Request::new(question.clone()))
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let bad = f
        .client()
        .check(with_token(
            CheckRequest {
                permissions: vec![":".into()],
                ..question.clone()
            },
            &ada,
        ))
        .await
        .expect_err("invalid permission");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let nosy = f
        .client()
        .check(with_token(
            CheckRequest {
                subject: "root".into(),
                ..question.clone()
            },
            &ada,
        ))
        .await
        .expect_err("not allowed");
    assert_eq!(nosy.code(), tonic::Code::PermissionDenied);

    let root = f.token("root", "root-password").await;
    let about_ada = f
        .client()
        .check(with_token(
            CheckRequest {
                subject: "ada".into(),
                ..question.clone()
            },
            &root,
        ))
        .await
        .expect("admin may ask")
        .into_inner();
    assert_eq!(about_ada.subject, "ada");
    let ghost = f
        .client()
        .check(with_token(
            CheckRequest {
                subject: "ghost".into(),
                ..question
            },
            &root,
        ))
        .await
        .expect_err("unknown user");
    assert_eq!(ghost.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn check_url_evaluates_the_realm_rules_on_normalised_paths() {
    let f = start().await;
    let ada = f.token("ada", "ada-password").await;
    let ask = |path: &str, anonymous: bool| CheckUrlRequest {
        method: "POST".into(),
        path: path.into(),
        anonymous,
        ..Default::default()
    };
    let allowed = f
        .client()
        .check_url(with_token(ask("/static/..;/tasks/run", false), &ada))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(allowed.path, "/tasks/run");
    assert_eq!(allowed.rule, Some(0));
    assert_eq!(allowed.outcome, Outcome::Allow as i32);
    let anonymous = f
        .client()
        .check_url(with_token(ask("/tasks/run", true), &ada))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        (anonymous.outcome, anonymous.detail.as_str()),
        (Outcome::Unauthenticated as i32, "bearer")
    );
    let ambiguous = f
        .client()
        .check_url(with_token(ask("/tasks%2frun", false), &ada))
        .await
        .expect_err("ambiguous");
    assert_eq!(ambiguous.code(), tonic::Code::InvalidArgument);
    assert!(
        ambiguous.message().contains("a slash"),
        "{}",
        ambiguous.message()
    );
    let custom = CheckUrlRequest {
        rules: "/** = roles[admin]".into(),
        ..ask("/x", false)
    };
    let forbidden = f
        .client()
        .check_url(with_token(custom, &ada))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        (forbidden.outcome, forbidden.detail.as_str()),
        (Outcome::Forbidden as i32, "role \"admin\" is required")
    );
}
