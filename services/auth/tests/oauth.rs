//! The OAuth2 operations on a real (SQLite) store: grants, lockout, refresh rotation with reuse
//! detection, revocation, introspection, Shiro-hash migration, audit.

mod common;

use std::time::Duration;

use quartet_auth::credentials::PasswordHasher;
use quartet_auth::service::{
    Auth, ClientAuth, GrantKind, LockoutSettings, OAuthError, TokenRequest, TokenSettings,
};
use quartet_auth::store::{ClientRecord, Store};

fn hasher() -> PasswordHasher {
    common::cheap_hasher()
}

struct Fixture {
    auth: Auth,
    _dir: tempfile::TempDir,
}

async fn fixture(lockout: LockoutSettings) -> Fixture {
    let (dir, url) = common::sqlite_database();
    let store = Store::connect(&url, 4).await.expect("store");
    let h = hasher();
    store
        .create_role("reader", "", &["doc:read".into()])
        .await
        .expect("role");
    store
        .create_user("ada", &h.hash("s3cret"), 0)
        .await
        .expect("user");
    store.assign_role("ada", "reader").await.expect("assign");
    store
        .grant_user_permission("ada", "report:view")
        .await
        .expect("grant");
    store
        .create_user("eve", &h.hash("pw"), 0)
        .await
        .expect("user");
    store.set_disabled("eve", true).await.expect("disable");
    for (id, secret, grants, perms) in [
        ("web", Some("web-secret"), "password refresh_token", ""),
        ("cli", None, "password", ""),
        (
            "batch",
            Some("batch-secret"),
            "client_credentials",
            "task:submit:* rpc:call:*",
        ),
    ] {
        let client = ClientRecord {
            client_id: id.into(),
            secret_hash: secret.map(|s| h.hash(s)),
            grant_types: grants.split(' ').map(str::to_owned).collect(),
            scopes: vec!["openid".into(), "profile".into()],
            permissions: perms.split_whitespace().map(str::to_owned).collect(),
        };
        store.create_client(&client, 0).await.expect("client");
    }
    let auth = Auth::open(store, h, TokenSettings::default(), lockout)
        .await
        .expect("open");
    Fixture { auth, _dir: dir }
}

fn client(id: &str, secret: Option<&str>) -> ClientAuth {
    ClientAuth {
        client_id: id.into(),
        secret: secret.map(str::to_owned),
        basic: false,
    }
}

fn password(username: &str, pw: &str, client: ClientAuth) -> TokenRequest {
    TokenRequest {
        grant: GrantKind::Password {
            username: username.into(),
            password: pw.into(),
        },
        client,
        scope: None,
        source: "10.0.0.1".into(),
    }
}

#[tokio::test]
async fn the_password_grant_issues_tokens_carrying_roles_and_permissions() {
    let f = fixture(LockoutSettings::default()).await;
    let response = f
        .auth
        .token(password("ada", "s3cret", client("web", Some("web-secret"))))
        .await
        .expect("granted");
    assert_eq!(response.token_type, "Bearer");
    assert_eq!(response.scope, "openid profile");
    assert!(response.refresh_token.is_some());
    let claims = f
        .auth
        .verify_access(&response.access_token)
        .await
        .expect("valid");
    assert_eq!(claims.sub, "ada");
    assert_eq!(claims.roles, ["reader"]);
    assert_eq!(claims.perms, ["doc:read", "report:view"]);
    assert_eq!(claims.client_id, "web");

    let public = f
        .auth
        .token(password("ada", "s3cret", client("cli", None)))
        .await
        .expect("public client");
    assert!(public.refresh_token.is_none(), "cli may not refresh");
}

#[tokio::test]
async fn every_login_failure_looks_the_same() {
    let f = fixture(LockoutSettings::default()).await;
    let web = || client("web", Some("web-secret"));
    for request in [
        password("ada", "wrong", web()),
        password("nobody", "s3cret", web()),
        password("eve", "pw", web()),
    ] {
        assert_eq!(
            f.auth.token(request).await,
            Err(OAuthError::InvalidGrant(
                "invalid username or password".into()
            ))
        );
    }
    let events = f
        .auth
        .store()
        .audit(None, Some("login"), 10)
        .await
        .expect("audit");
    let details: Vec<&str> = events.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(details, ["user disabled", "unknown user", "wrong password"]);
}

#[tokio::test]
async fn clients_are_authenticated_and_limited_to_their_grants_and_scopes() {
    let f = fixture(LockoutSettings::default()).await;
    let bad_secret = f
        .auth
        .token(password("ada", "s3cret", client("web", Some("nope"))))
        .await;
    assert_eq!(bad_secret, Err(OAuthError::InvalidClient { basic: false }));
    let unknown = f
        .auth
        .token(password("ada", "s3cret", client("ghost", Some("x"))))
        .await;
    assert_eq!(unknown, Err(OAuthError::InvalidClient { basic: false }));
    let not_allowed = f
        .auth
        .token(password(
            "ada",
            "s3cret",
            client("batch", Some("batch-secret")),
        ))
        .await;
    assert!(matches!(
        not_allowed,
        Err(OAuthError::UnauthorizedClient(_))
    ));
    let mut scoped = password("ada", "s3cret", client("web", Some("web-secret")));
    scoped.scope = Some("openid admin".into());
    assert!(
        matches!(f.auth.token(scoped).await, Err(OAuthError::InvalidScope(m)) if m.contains("\"admin\""))
    );

    let machine = TokenRequest {
        grant: GrantKind::ClientCredentials,
        client: client("batch", Some("batch-secret")),
        scope: Some("openid".into()),
        source: "10.0.0.2".into(),
    };
    let response = f.auth.token(machine).await.expect("client credentials");
    assert!(response.refresh_token.is_none());
    let claims = f
        .auth
        .verify_access(&response.access_token)
        .await
        .expect("valid");
    assert_eq!(claims.sub, "client:batch");
    assert_eq!(claims.perms, ["task:submit:*", "rpc:call:*"]);
    assert_eq!(claims.scope, "openid");
}

#[tokio::test]
async fn repeated_failures_lock_out_with_a_growing_delay() {
    let f = fixture(LockoutSettings {
        threshold: 3,
        base_delay: Duration::from_millis(800),
        max_delay: Duration::from_secs(60),
    })
    .await;
    let web = || client("web", Some("web-secret"));
    for _ in 0..3 {
        assert!(f.auth.token(password("ada", "guess", web())).await.is_err());
    }
    // Locked: even the right password is refused, with the same answer.
    assert_eq!(
        f.auth.token(password("ada", "s3cret", web())).await,
        Err(OAuthError::InvalidGrant(
            "invalid username or password".into()
        ))
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        f.auth.token(password("ada", "s3cret", web())).await.is_ok(),
        "the lock ends after its delay"
    );
    let locked = f
        .auth
        .store()
        .audit(Some("ada"), Some("login"), 20)
        .await
        .expect("audit");
    assert!(locked.iter().any(|e| e.detail == "locked out"));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family() {
    let f = fixture(LockoutSettings::default()).await;
    let web = || client("web", Some("web-secret"));
    let first = f
        .auth
        .token(password("ada", "s3cret", web()))
        .await
        .expect("granted");
    let refresh = |token: &str| TokenRequest {
        grant: GrantKind::RefreshToken {
            token: token.into(),
        },
        client: web(),
        scope: None,
        source: "10.0.0.1".into(),
    };
    let r1 = first.refresh_token.expect("refresh token");
    let second = f.auth.token(refresh(&r1)).await.expect("rotated");
    let r2 = second.refresh_token.expect("new refresh token");
    assert_ne!(r1, r2);
    assert!(f.auth.verify_access(&second.access_token).await.is_ok());

    let reuse = f.auth.token(refresh(&r1)).await;
    assert!(matches!(reuse, Err(OAuthError::InvalidGrant(m)) if m.contains("already used")));
    assert!(
        f.auth.token(refresh(&r2)).await.is_err(),
        "the family is revoked, the newest token too"
    );
    let events = f
        .auth
        .store()
        .audit(Some("ada"), Some("refresh.reuse"), 5)
        .await
        .expect("audit");
    assert_eq!(events.len(), 1);

    let other_client = TokenRequest {
        client: client("cli", None),
        ..refresh("whatever")
    };
    assert!(matches!(
        f.auth.token(other_client).await,
        Err(OAuthError::UnauthorizedClient(_))
    ));
}

#[tokio::test]
async fn revocation_and_introspection() {
    let f = fixture(LockoutSettings::default()).await;
    let web = client("web", Some("web-secret"));
    let granted = f
        .auth
        .token(password("ada", "s3cret", web.clone()))
        .await
        .expect("granted");
    let active = f
        .auth
        .introspect(&web, &granted.access_token)
        .await
        .expect("introspect");
    assert!(active.active);
    assert_eq!(active.username.as_deref(), Some("ada"));
    assert_eq!(active.token_type.as_deref(), Some("access_token"));

    f.auth
        .revoke(&web, &granted.access_token, "10.0.0.1")
        .await
        .expect("revoke");
    assert!(f.auth.verify_access(&granted.access_token).await.is_err());
    assert!(
        !f.auth
            .introspect(&web, &granted.access_token)
            .await
            .expect("introspect")
            .active
    );
    assert!(
        !f.auth
            .introspect(&web, "garbage")
            .await
            .expect("introspect")
            .active
    );

    let refresh = granted.refresh_token.expect("refresh");
    f.auth
        .revoke(&web, &refresh, "10.0.0.1")
        .await
        .expect("revoke refresh");
    let after = TokenRequest {
        grant: GrantKind::RefreshToken { token: refresh },
        client: web.clone(),
        scope: None,
        source: String::new(),
    };
    assert!(f.auth.token(after).await.is_err());
    f.auth
        .revoke(&web, "never-issued", "10.0.0.1")
        .await
        .expect("unknown tokens are fine");
    assert_eq!(
        f.auth.revoke(&client("web", Some("bad")), "x", "").await,
        Err(OAuthError::InvalidClient { basic: false })
    );
}

#[tokio::test]
async fn a_shiro_user_logs_in_and_is_migrated_to_argon2id() {
    let f = fixture(LockoutSettings::default()).await;
    // Shiro 1 SimpleHash, SHA-256, one iteration, salt "pepper": H("pepper" + "legacy").
    let stored = format!("$shiro1$SHA-256$1${}${}", "cGVwcGVy", {
        use base64::Engine as _;
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b"pepperlegacy"))
    });
    f.auth
        .store()
        .create_user("old", &stored, 0)
        .await
        .expect("user");
    f.auth
        .token(password("old", "legacy", client("web", Some("web-secret"))))
        .await
        .expect("logs in");
    let now = f
        .auth
        .store()
        .user("old")
        .await
        .expect("read")
        .expect("exists");
    assert!(
        now.password_hash.starts_with("$argon2id$"),
        "{}",
        now.password_hash
    );
    f.auth
        .token(password("old", "legacy", client("web", Some("web-secret"))))
        .await
        .expect("logs in again");
}

#[tokio::test]
async fn contradictory_settings_are_refused() {
    let (_dir, url) = common::sqlite_database();
    let store = Store::connect(&url, 1).await.expect("store");
    let tokens = TokenSettings {
        key_overlap: Duration::from_secs(60),
        access_ttl: Duration::from_secs(600),
        ..TokenSettings::default()
    };
    let err = Auth::open(store, hasher(), tokens, LockoutSettings::default())
        .await
        .expect_err("overlap too short");
    assert!(err.to_string().contains("key_overlap"), "{err}");
}

#[tokio::test]
async fn with_redis_every_replica_counts_the_same_failures() {
    use quartet_auth::service::SessionSettings;
    use quartet_auth::sessions::SessionStore;
    let (_dir, url) = common::sqlite_database();
    let redis = common::redis_url().await;
    let (user, source) = (common::unique("ada"), common::unique("10.9.9.9"));
    let lockout = LockoutSettings {
        threshold: 3,
        base_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(60),
    };
    let replica = |shared: bool| {
        let (url, redis, lockout) = (url.clone(), redis.clone(), lockout.clone());
        async move {
            let store = Store::connect(&url, 2).await.expect("store");
            let auth = Auth::open(store, hasher(), TokenSettings::default(), lockout)
                .await
                .expect("open");
            if shared {
                auth.with_sessions(
                    SessionStore::redis(&redis).await.expect("redis"),
                    SessionSettings::default(),
                )
            } else {
                auth
            }
        }
    };
    let (a, b, alone) = (
        replica(true).await,
        replica(true).await,
        replica(false).await,
    );
    a.store()
        .create_user(&user, &hasher().hash("right"), 0)
        .await
        .expect("user");
    for _ in 0..3 {
        assert!(a.login(&user, "wrong", "cli", &source).await.is_err());
    }
    assert_eq!(
        b.login(&user, "right", "cli", &source).await,
        Err(OAuthError::InvalidGrant(
            "invalid username or password".into()
        )),
        "replica b must see replica a's failures"
    );
    assert!(
        alone.login(&user, "right", "cli", &source).await.is_ok(),
        "a replica with in-process counts saw nothing"
    );
}

#[tokio::test]
async fn a_later_user_of_the_same_name_inherits_no_tokens() {
    let f = fixture(LockoutSettings::default()).await;
    let web = || client("web", Some("web-secret"));
    let granted = f
        .auth
        .token(password("ada", "s3cret", web()))
        .await
        .expect("granted");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    f.auth
        .store()
        .delete_user("ada", now)
        .await
        .expect("delete");
    assert!(f.auth.verify_access(&granted.access_token).await.is_err());
    // Another "ada", created after the token was issued.
    f.auth
        .store()
        .create_user("ada", &hasher().hash("other"), now + 5)
        .await
        .expect("recreate");
    assert!(
        f.auth.verify_access(&granted.access_token).await.is_err(),
        "the old ada's access token is not the new ada's"
    );
    assert!(
        !f.auth
            .introspect(&web(), &granted.access_token)
            .await
            .expect("introspect")
            .active
    );
    let refresh = TokenRequest {
        grant: GrantKind::RefreshToken {
            token: granted.refresh_token.expect("refresh token"),
        },
        client: web(),
        scope: None,
        source: String::new(),
    };
    assert!(
        matches!(
            f.auth.token(refresh).await,
            Err(OAuthError::InvalidGrant(_))
        ),
        "nor is the old ada's refresh token"
    );
}

#[tokio::test]
async fn limits_bound_passwords_hashing_and_sessions() {
    use quartet_auth::service::{LimitSettings, PasswordRefused, SessionSettings};
    use quartet_auth::sessions::SessionStore;
    let f = fixture(LockoutSettings::default()).await;
    let store = f.auth.store().clone();
    let limits = LimitSettings {
        max_password_bytes: 16,
        concurrent_hashes: 1,
        hash_queue_timeout: Duration::from_millis(200),
    };
    let sessions = SessionSettings {
        max_per_user: 2,
        ..SessionSettings::default()
    };
    let auth = Auth::open(
        store.clone(),
        hasher(),
        TokenSettings::default(),
        LockoutSettings::default(),
    )
    .await
    .expect("open")
    .with_sessions(SessionStore::Sql(store.clone()), sessions)
    .with_limits(limits)
    .expect("valid limits");

    // A password past the limit is refused before any hashing, whatever it is.
    assert_eq!(
        auth.hash_new_password(&"x".repeat(17)).await,
        Err(PasswordRefused::TooLong(16))
    );
    assert_eq!(
        auth.hash_new_password("short").await,
        Err(PasswordRefused::TooShort)
    );
    let long = "y".repeat(10 * 1024 * 1024);
    let started = std::time::Instant::now();
    assert_eq!(
        auth.login("ada", &long, "web", "10.0.0.9").await,
        Err(OAuthError::InvalidGrant(
            "invalid username or password".into()
        ))
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a 10 MB password is not hashed: {:?}",
        started.elapsed()
    );

    // One hash at a time: while the only turn is held, a login waits, then is told to retry.
    let auth = std::sync::Arc::new(auth);
    let (release, held) = std::sync::mpsc::channel::<()>();
    let holder = tokio::spawn({
        let auth = auth.clone();
        async move { auth.with_hasher(move |_| held.recv()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        matches!(
            auth.login("ada", "s3cret", "web", "10.0.0.8").await,
            Err(OAuthError::TemporarilyUnavailable(m)) if m.contains("saturated")
        ),
        "no turn within limits.hash_queue_timeout"
    );
    release.send(()).expect("release");
    holder
        .await
        .expect("task")
        .expect("the holder had its turn")
        .expect("released");
    auth.login("ada", "s3cret", "web", "10.0.0.8")
        .await
        .expect("a free turn again");

    // Sessions: the oldest ends when a third opens.
    let mut handles = Vec::new();
    for _ in 0..3 {
        let (_, info) = auth
            .open_session("ada", "s3cret", "10.0.0.9")
            .await
            .expect("session");
        handles.push(info.handle);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let live: Vec<String> = auth
        .user_sessions("ada")
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.handle)
        .collect();
    assert_eq!(live, handles[1..], "the oldest session made room");
}
