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
