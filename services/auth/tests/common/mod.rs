//! Real databases for the auth service's tests: a SQLite file in a temporary directory, and a
//! fresh database on the private PostgreSQL server that `scripts/postgres.sh` runs.

#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;

/// The URL of a new, empty PostgreSQL database on the test server (started if needed).
pub async fn postgres_database() -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
    let out = tokio::process::Command::new(&script)
        .arg("up")
        .output()
        .await
        .expect("scripts/postgres.sh runs");
    assert!(
        out.status.success(),
        "postgres.sh up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin_url = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let name = format!(
        "auth_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    );
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&admin_url)
        .await
        .expect("connect to the test server");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let base = admin_url
        .strip_suffix("/postgres")
        .expect("the server URL names the postgres database");
    format!("{base}/{name}")
}

/// The URL of a new SQLite database file, kept alive by the returned directory.
pub fn sqlite_database() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("auth.db").display());
    (dir, url)
}

/// A password hasher cheap enough for tests (64 KiB, one pass).
pub fn cheap_hasher() -> quartet_auth::credentials::PasswordHasher {
    let settings = quartet_auth::credentials::HashSettings {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    quartet_auth::credentials::PasswordHasher::new(settings).expect("valid settings")
}

/// The auth service on a fresh SQLite store, with default token and lockout settings.
pub async fn open_auth() -> (
    tempfile::TempDir,
    std::sync::Arc<quartet_auth::service::Auth>,
) {
    let (dir, url) = sqlite_database();
    let store = quartet_auth::store::Store::connect(&url, 4)
        .await
        .expect("store");
    let auth = quartet_auth::service::Auth::open(
        store,
        cheap_hasher(),
        quartet_auth::service::TokenSettings::default(),
        quartet_auth::service::LockoutSettings::default(),
    )
    .await
    .expect("auth opens");
    (dir, std::sync::Arc::new(auth))
}

/// Serves the given APIs on loopback ports; returns the context (trigger its shutdown to stop)
/// and the bound addresses.
pub async fn serve(
    grpc: Option<tonic::service::Routes>,
    rest: quartet_kit::RestApi,
) -> (quartet_kit::Context, quartet_kit::app::Bound) {
    let ctx = quartet_kit::Context::new("quartet-auth", std::time::Duration::from_secs(1));
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let listeners = quartet_kit::Listeners {
        admin: loopback,
        grpc: grpc.map(|r| (loopback, r)),
        http: Some((loopback, rest)),
        tls: Default::default(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let serving = ctx.clone();
    tokio::spawn(async move {
        serving
            .serve(listeners, move |bound| {
                let _ = tx.send(bound.clone());
            })
            .await
    });
    (ctx, rx.await.expect("listeners bound"))
}

/// The URL of the private Redis server that `scripts/redis.sh` runs (started if needed).
pub async fn redis_url() -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/redis.sh");
    let out = tokio::process::Command::new(&script)
        .arg("up")
        .output()
        .await
        .expect("scripts/redis.sh runs");
    assert!(
        out.status.success(),
        "redis.sh up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A name no other test run uses, for keys in shared servers.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}
