//! Real MySQL clients against the front: PyMySQL (a Python application's driver) and the
//! MariaDB command-line client create tables, write and read back, and see MySQL's errors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use quartet_db::front::Front;
use quartet_db::replica::{GroupOptions, Replica};

async fn start() -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let users = HashMap::from([("app".to_owned(), "s3cret".to_owned())]);
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let replica = Replica::start(&dir, GroupOptions::alone("shop"))
        .await
        .expect("replica");
    replica
        .wait_for_leader(std::time::Duration::from_secs(10))
        .await
        .expect("a group of one elects itself");
    let front = Arc::new(Front::new(replica, "shop", users));
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
    assert_eq!(seen["inside"], 1, "a transaction sees its own insert");
    assert_eq!(
        seen["after_transactions"],
        serde_json::json!(["kept"]),
        "rolled back: gone; committed: kept"
    );
    assert_eq!(seen["tables"], serde_json::json!(["orders"]));
    assert_eq!(seen["bad_password"], 1045);
    stop.cancel();
}

/// The mariadb client's arguments for a batch session as `app` in `shop`.
fn session_args(addr: SocketAddr) -> Vec<String> {
    [
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
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[tokio::test]
async fn the_mariadb_command_line_client_runs_a_session() {
    let (addr, stop) = start().await;
    let script = "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT); INSERT INTO notes VALUES (1, 'hello'), (2, NULL); \
                  SELECT id, body FROM notes ORDER BY id; SHOW TABLES; SELECT @@version;";
    let out = tokio::process::Command::new("mariadb")
        .args(session_args(addr))
        .args(["-e", script])
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

#[tokio::test]
async fn sqlx_uses_prepared_statements_with_binary_rows() {
    use sqlx::Row;
    let (addr, stop) = start().await;
    let url = format!("mysql://app:s3cret@127.0.0.1:{}/shop", addr.port());
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("sqlx connects");
    sqlx::query("CREATE TABLE items (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, name VARCHAR(40) NOT NULL, price DOUBLE, qty INT, note TEXT)")
        .execute(&pool)
        .await
        .expect("create");
    let done = sqlx::query("INSERT INTO items (name, price, qty, note) VALUES (?, ?, ?, ?)")
        .bind("pen")
        .bind(1.5f64)
        .bind(3i32)
        .bind(Option::<String>::None)
        .execute(&pool)
        .await
        .expect("insert");
    assert_eq!((done.rows_affected(), done.last_insert_id()), (1, 1));
    sqlx::query("INSERT INTO items (name, price, qty) VALUES (?, ?, ?)")
        .bind("ink")
        .bind(7i64)
        .bind(-2i64)
        .execute(&pool)
        .await
        .expect("insert");

    let row = sqlx::query("SELECT id, name, price, qty, note FROM items WHERE name = ?")
        .bind("pen")
        .fetch_one(&pool)
        .await
        .expect("select");
    assert_eq!(row.get::<i64, _>("id"), 1);
    assert_eq!(row.get::<String, _>("name"), "pen");
    assert_eq!(row.get::<f64, _>("price"), 1.5);
    assert_eq!(row.get::<i32, _>("qty"), 3);
    assert_eq!(row.get::<Option<String>, _>("note"), None);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items WHERE qty < ?")
        .bind(10i32)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 2);
    let ink: (String, f64, i32) = sqlx::query_as("SELECT name, price, qty FROM items WHERE id = ?")
        .bind(2u64)
        .fetch_one(&pool)
        .await
        .expect("query_as");
    assert_eq!(ink, ("ink".to_owned(), 7.0, -2));

    let mut rolled = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO items (name) VALUES (?)")
        .bind("ghost")
        .execute(&mut *rolled)
        .await
        .expect("insert in tx");
    rolled.rollback().await.expect("rollback");
    let mut kept = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO items (name) VALUES (?)")
        .bind("kept")
        .execute(&mut *kept)
        .await
        .expect("insert in tx");
    kept.commit().await.expect("commit");
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM items WHERE name IN ('ghost', 'kept')")
            .fetch_all(&pool)
            .await
            .expect("names");
    assert_eq!(names, ["kept"]);

    let duplicate = sqlx::query("INSERT INTO items (id, name) VALUES (?, ?)")
        .bind(1i64)
        .bind("dup")
        .execute(&pool)
        .await
        .expect_err("duplicate key");
    let db_error = duplicate.as_database_error().expect("a database error");
    assert_eq!(db_error.code().as_deref(), Some("23000"));
    assert_eq!(
        db_error
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        Some(1062)
    );

    let refused = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&format!("mysql://app:wrong@127.0.0.1:{}/shop", addr.port()))
        .await
        .expect_err("bad password");
    assert!(refused.to_string().contains("1045"), "{refused}");
    pool.close().await;
    stop.cancel();
}

/// Runs the mariadb client logging in with `plugin`; returns (success, stdout, stderr).
async fn mariadb_login(addr: SocketAddr, plugin: &str, password: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &addr.port().to_string(),
            "-u",
            "app",
            &format!("-p{password}"),
            &format!("--default-auth={plugin}"),
            "--batch",
            "-e",
            "SELECT 6 * 7 AS answer",
        ])
        .output()
        .await
        .expect("the mariadb client runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn caching_sha2_password_logins_take_the_fast_path() {
    let (addr, stop) = start().await;
    let (ok, stdout, stderr) = mariadb_login(addr, "caching_sha2_password", "s3cret").await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "answer\n42\n");
    let (ok, _, stderr) = mariadb_login(addr, "caching_sha2_password", "wrong").await;
    assert!(!ok);
    assert!(
        stderr.contains("ERROR 1045 (28000): Access denied for user 'app'"),
        "{stderr}"
    );
    // A client starting with mysql_native_password still logs in.
    let (ok, stdout, stderr) = mariadb_login(addr, "mysql_native_password", "s3cret").await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "answer\n42\n");
    stop.cancel();
}

#[tokio::test]
async fn databases_information_schema_and_alter_table_through_the_mariadb_client() {
    let (addr, stop) = start().await;
    let script = "
        CREATE DATABASE inventory;
        CREATE DATABASE inventory;
        CREATE DATABASE IF NOT EXISTS inventory;
        USE inventory;
        CREATE TABLE items (id INT PRIMARY KEY, name TEXT NOT NULL);
        INSERT INTO items VALUES (1, 'bolt'), (2, 'nut');
        USE shop;
        CREATE TABLE items (id INT PRIMARY KEY, qty INT);
        INSERT INTO items VALUES (1, 5), (2, 7);
        SELECT i.name, s.qty FROM inventory.items AS i JOIN items AS s ON s.id = i.id ORDER BY i.id;
        SHOW DATABASES;
        SHOW TABLES FROM inventory;
        SELECT table_schema, table_name FROM information_schema.tables ORDER BY table_schema, table_name;
        SELECT column_name, data_type, is_nullable, column_key FROM information_schema.columns
          WHERE table_schema = 'inventory' AND table_name = 'items' ORDER BY ordinal_position;
        ALTER TABLE inventory.items ADD COLUMN weight DOUBLE;
        ALTER TABLE inventory.items RENAME COLUMN name TO label;
        SELECT * FROM inventory.items ORDER BY id;
        DROP DATABASE inventory;
        SHOW DATABASES;
        USE inventory;
        DROP DATABASE inventory;
        DROP DATABASE IF EXISTS inventory;
        SELECT COUNT(*) AS left_in_shop FROM shop.items;
    ";
    let mut out = tokio::process::Command::new("mariadb")
        .args(session_args(addr))
        .arg("--force")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the mariadb client runs");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = out.stdin.take().expect("stdin");
        stdin.write_all(script.as_bytes()).await.expect("script");
    }
    let out = out.wait_with_output().await.expect("exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout,
        "name\tqty\nbolt\t5\nnut\t7\n\
         Database\ninformation_schema\ninventory\nshop\n\
         Tables_in_inventory\nitems\n\
         TABLE_SCHEMA\tTABLE_NAME\ninventory\titems\nshop\titems\n\
         COLUMN_NAME\tDATA_TYPE\tIS_NULLABLE\tCOLUMN_KEY\nid\tint\tNO\tPRI\nname\ttext\tNO\t\n\
         id\tlabel\tweight\n1\tbolt\tNULL\n2\tnut\tNULL\n\
         Database\ninformation_schema\nshop\n\
         left_in_shop\n2\n",
        "stderr: {stderr}"
    );
    for expected in [
        "ERROR 1007 (HY000) at line 3: Can't create database 'inventory'; database exists",
        "ERROR 1049 (42000) at line 22: Unknown database 'inventory'",
        "ERROR 1008 (HY000) at line 23: Can't drop database 'inventory'; database doesn't exist",
    ] {
        assert!(stderr.contains(expected), "{expected} not in:\n{stderr}");
    }
    stop.cancel();
}
