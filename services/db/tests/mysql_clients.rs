//! Real MySQL clients against the front: PyMySQL (a Python application's driver) and the
//! MariaDB command-line client create tables, write and read back, and see MySQL's errors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use quartet_db::engine::Engine;
use quartet_db::front::Front;

async fn start() -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let users = HashMap::from([("app".to_owned(), "s3cret".to_owned())]);
    let front = Arc::new(Front::new(
        Engine::in_memory().expect("engine"),
        "shop",
        users,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(front.serve(listener, stop.clone()));
    (addr, stop)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test]
async fn pymysql_creates_writes_reads_and_sees_mysql_errors() {
    let (addr, stop) = start().await;
    let python = tokio::process::Command::new(repo().join("scripts/python.sh"))
        .output()
        .await
        .expect("python.sh");
    let python = String::from_utf8(python.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let out = tokio::process::Command::new(python)
        .arg(repo().join("e2e/python/mysql_client.py"))
        .args([
            "127.0.0.1",
            &addr.port().to_string(),
            "app",
            "s3cret",
            "shop",
        ])
        .output()
        .await
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(seen["server"], serde_json::json!(["Quartet", "shop"]));
    assert_eq!(seen["first_id"], 1);
    assert_eq!(
        seen["rows"],
        serde_json::json!([
            [1, "tea", 2, 3.5],
            [2, "cake", 1, 4.25],
            [3, "jam", 3, null]
        ])
    );
    assert_eq!(
        seen["types"],
        serde_json::json!(["int", "str", "int", "float"])
    );
    assert_eq!(seen["duplicate"], 1062);
    assert_eq!(
        seen["missing"],
        serde_json::json!([1146, "Table 'shop.missing' doesn't exist"])
    );
    assert_eq!(seen["begin"], 1235);
    assert_eq!(seen["tables"], serde_json::json!(["orders"]));
    assert_eq!(seen["bad_password"], 1045);
    stop.cancel();
}

#[tokio::test]
async fn the_mariadb_command_line_client_runs_a_session() {
    let (addr, stop) = start().await;
    let script = "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT); INSERT INTO notes VALUES (1, 'hello'), (2, NULL); \
                  SELECT id, body FROM notes ORDER BY id; SHOW TABLES; SELECT @@version;";
    let out = tokio::process::Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &addr.port().to_string(),
            "-u",
            "app",
            "-ps3cret",
            "-D",
            "shop",
            "--batch",
            "-e",
            script,
        ])
        .output()
        .await
        .expect("the mariadb client runs (Debian's mariadb-client)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "id\tbody\n1\thello\n2\tNULL\nTables_in_shop\nnotes\n@@version\n8.0.36-quartet\n"
    );

    let denied = tokio::process::Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &addr.port().to_string(),
            "-u",
            "app",
            "-pnope",
            "-e",
            "SELECT 1",
        ])
        .output()
        .await
        .expect("runs");
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .contains("ERROR 1045 (28000): Access denied for user 'app'"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    stop.cancel();
}
