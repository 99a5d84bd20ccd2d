//! Sessions behave the same in the SQL store (SQLite, PostgreSQL) and in a real Redis:
//! touch restarts the idle clock, idle and absolute timeouts end them, lists and revocations
//! are per user, and the store never holds a session id.

mod common;

use quartet_auth::sessions::{SessionInfo, SessionStore, id_hash};
use quartet_auth::store::Store;

fn session(id: &str, user: &str, created: i64, idle: i64, absolute: i64) -> (String, SessionInfo) {
    let (hash, handle) = id_hash(id);
    let info = SessionInfo {
        handle,
        user: user.into(),
        source: "10.0.0.1".into(),
        created_at: created,
        last_access: created,
        expires_at: created + absolute,
        idle_seconds: idle,
    };
    (hash, info)
}

async fn exercise(sessions: &SessionStore) {
    sessions.ping().await.expect("ping");
    let (ada, bob) = (common::unique("ada"), common::unique("bob"));
    let t = 1_000_000;
    let (h1, s1) = session(&common::unique("id1"), &ada, t, 600, 3600);
    let (h2, s2) = session(&common::unique("id2"), &ada, t + 1, 600, 3600);
    let (h3, s3) = session(&common::unique("id3"), &bob, t, 600, 3600);
    for (h, s) in [(&h1, &s1), (&h2, &s2), (&h3, &s3)] {
        sessions.create(h, s).await.expect("create");
    }

    let touched = sessions
        .touch(&h1, t + 500)
        .await
        .expect("touch")
        .expect("live");
    assert_eq!(touched.last_access, t + 500);
    // 500 s after the touch it is still live (the idle clock restarted); 1100 s after creation.
    assert!(
        sessions
            .touch(&h1, t + 1000)
            .await
            .expect("touch")
            .is_some()
    );
    assert!(
        sessions.touch(&h2, t + 700).await.expect("touch").is_none(),
        "idle for 699 s > 600 s: ended"
    );
    assert!(
        sessions.touch(&h2, t + 1).await.expect("touch").is_none(),
        "an ended session is gone"
    );

    let listed = sessions.list(&ada, t + 1000).await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|(_, s)| s.handle.as_str())
            .collect::<Vec<_>>(),
        [s1.handle.as_str()]
    );
    assert_eq!(sessions.list(&bob, t + 10).await.expect("list").len(), 1);

    // Absolute timeout: touched often, still ends at its absolute expiry.
    let (h4, s4) = session(&common::unique("id4"), &ada, t, 600, 1000);
    sessions.create(&h4, &s4).await.expect("create");
    for step in 1..=9 {
        assert!(
            sessions
                .touch(&h4, t + step * 100)
                .await
                .expect("touch")
                .is_some()
        );
    }
    assert!(
        sessions
            .touch(&h4, t + 1000)
            .await
            .expect("touch")
            .is_none()
    );

    assert_eq!(
        sessions
            .revoke(&ada, Some("no-such-handle"), t + 1000)
            .await
            .expect("revoke"),
        0
    );
    assert_eq!(
        sessions
            .revoke(&ada, Some(&s1.handle), t + 1000)
            .await
            .expect("revoke"),
        1
    );
    assert!(
        sessions
            .touch(&h1, t + 1001)
            .await
            .expect("touch")
            .is_none()
    );
    assert_eq!(
        sessions
            .revoke(&bob, None, t + 10)
            .await
            .expect("revoke all"),
        1
    );
    assert!(sessions.list(&bob, t + 10).await.expect("list").is_empty());
}

#[tokio::test]
async fn sqlite() {
    let (_dir, url) = common::sqlite_database();
    exercise(&SessionStore::Sql(
        Store::connect(&url, 2).await.expect("store"),
    ))
    .await;
}

#[tokio::test]
async fn postgres() {
    let url = common::postgres_database().await;
    exercise(&SessionStore::Sql(
        Store::connect(&url, 2).await.expect("store"),
    ))
    .await;
}

#[tokio::test]
async fn redis() {
    let url = common::redis_url().await;
    let sessions = SessionStore::redis(&url).await.expect("redis");
    exercise(&sessions).await;

    // Redis itself forgets a session once its idle time has passed.
    let (hash, info) = session(&common::unique("short"), &common::unique("cyd"), 0, 1, 3600);
    sessions.create(&hash, &info).await.expect("create");
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("quartet:auth:session:{hash}"))
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!((0..=1).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn an_unreachable_redis_is_named() {
    let err = SessionStore::redis("redis://127.0.0.1:1")
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        err.to_string().starts_with("database error: redis"),
        "{err}"
    );
}
