//! What careless and hostile clients send, and what they must not be able to make a replica
//! spend: statements nested deep enough to overflow a stack, reads that never end, a
//! transaction left open, stacked statements from a driver that did not ask for them, bytes
//! before login. Each case was found from outside on an earlier build (a crash, a stalled
//! group, a wrong answer, a gigabyte of memory); each test fails on that build.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quartet_db::actor::Limits;
use quartet_db::front::{self, Front};
use quartet_db::replica::{GroupOptions, Replica};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUNAWAY: &str =
    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT COUNT(*) FROM c";

struct Server {
    addr: SocketAddr,
    _stop: tokio_util::sync::CancellationToken,
}

async fn start(engine: Limits, wire: front::Limits) -> Server {
    let users = HashMap::from([("app".to_owned(), "s3cret".to_owned())]);
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let mut options = GroupOptions::alone("shop");
    options.limits = engine;
    let replica = Replica::start(&dir, options).await.expect("replica");
    replica
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a group of one elects itself");
    let front = Arc::new(Front::new(replica, "shop", users).with_limits(wire));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(front.serve(listener, stop.clone()));
    Server { addr, _stop: stop }
}

async fn start_default() -> Server {
    start(Limits::default(), front::Limits::default()).await
}

async fn connect(server: &Server) -> MySqlConnection {
    MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(server.addr.port())
        .username("app")
        .password("s3cret")
        .database("shop")
        .connect()
        .await
        .expect("connect")
}

/// The MySQL error number of a failed statement.
fn code(e: &sqlx::Error) -> Option<u16> {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .map(|m| m.number())
}

async fn error_of(c: &mut MySqlConnection, sql: &str) -> (Option<u16>, String) {
    let e = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *c)
        .await
        .expect_err("the statement is refused");
    (code(&e), e.to_string())
}

/// Runs `sql`, which must succeed.
async fn exec(c: &mut MySqlConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *c)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", sql.get(..60).unwrap_or(sql)));
}

async fn one_i64(c: &mut MySqlConnection, sql: &str) -> i64 {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut *c)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", sql.get(..60).unwrap_or(sql)))
        .get(0)
}

#[tokio::test]
async fn expressions_nested_past_the_limit_are_refused_and_the_replica_keeps_serving() {
    let server = start_default().await;
    let mut c = connect(&server).await;
    // 30 000 terms overflowed a runtime thread's stack and took the process down.
    let sum = format!("SELECT 1{}", "+1".repeat(29_999));
    let (number, message) = error_of(&mut c, &sum).await;
    assert_eq!(number, Some(1436), "{message}");
    assert!(message.contains("levels deep"), "{message}");
    let concat = format!("SELECT 'a'{}", " || 'a'".repeat(29_999));
    assert_eq!(error_of(&mut c, &concat).await.0, Some(1436));
    let parens = format!("SELECT {}1{}", "(".repeat(30_000), ")".repeat(30_000));
    assert!(error_of(&mut c, &parens).await.0.is_some());
    // Ordinary long statements are not affected: 500 terms, and a long IN list.
    let fine = format!("SELECT 1{}", "+1".repeat(499));
    assert_eq!(one_i64(&mut c, &fine).await, 500);
    let list: Vec<String> = (0..5000).map(|n| n.to_string()).collect();
    let in_list = format!("SELECT 7 IN ({})", list.join(","));
    assert_eq!(one_i64(&mut c, &in_list).await, 1);
    assert_eq!(one_i64(&mut c, "SELECT 1").await, 1);
}

#[tokio::test]
async fn a_runaway_read_stops_at_its_time_limit_while_writes_go_on() {
    let server = start(
        Limits {
            max_statement: Duration::from_millis(1500),
            ..Limits::default()
        },
        front::Limits::default(),
    )
    .await;
    let mut setup = connect(&server).await;
    exec(&mut setup, "CREATE TABLE t (id INT PRIMARY KEY)").await;
    let mut runaway = connect(&server).await;
    let started = Instant::now();
    let read = tokio::spawn(async move { error_of(&mut runaway, RUNAWAY).await });
    // Writes from another session are not held for the whole read.
    tokio::time::sleep(Duration::from_millis(200)).await;
    exec(&mut setup, "INSERT INTO t VALUES (1)").await;
    let (number, message) = read.await.expect("join");
    let took = started.elapsed();
    assert_eq!(number, Some(3024), "{message}");
    assert!(message.contains("max_execution_time"), "{message}");
    assert!(
        took < Duration::from_secs(10),
        "stopped near its limit, not later: {took:?}"
    );
    assert_eq!(one_i64(&mut setup, "SELECT COUNT(*) FROM t").await, 1);
    // A session may lower its own limit, not raise it past the server's.
    exec(&mut setup, "SET max_execution_time = 100").await;
    assert_eq!(
        one_i64(&mut setup, "SELECT @@max_execution_time").await,
        100
    );
    let started = Instant::now();
    assert_eq!(error_of(&mut setup, RUNAWAY).await.0, Some(3024));
    assert!(started.elapsed() < Duration::from_millis(1400));
    exec(&mut setup, "SET max_execution_time = 999999").await;
    assert_eq!(
        one_i64(&mut setup, "SELECT @@max_execution_time").await,
        1500
    );
}

#[tokio::test]
async fn kill_query_stops_another_sessions_read_and_kill_ends_its_connection() {
    let server = start_default().await;
    let mut victim = connect(&server).await;
    let id = one_i64(&mut victim, "SELECT CONNECTION_ID()").await;
    let read = tokio::spawn(async move {
        let outcome = error_of(&mut victim, RUNAWAY).await;
        (outcome, victim)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut killer = connect(&server).await;
    let started = Instant::now();
    exec(&mut killer, &format!("KILL QUERY {id}")).await;
    let ((number, message), mut victim) = read.await.expect("join");
    assert_eq!(number, Some(1317), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The session itself goes on.
    assert_eq!(one_i64(&mut victim, "SELECT 2").await, 2);
    // KILL ends the connection.
    exec(&mut killer, &format!("KILL {id}")).await;
    let after = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::raw_sql("SELECT 3").execute(&mut victim),
    )
    .await
    .expect("answered or closed at once");
    assert!(after.is_err(), "a killed connection is closed");
    let (number, _) = error_of(&mut killer, "KILL QUERY 999999").await;
    assert_eq!(number, Some(1094));
}

#[tokio::test]
async fn an_idle_transaction_is_rolled_back_when_others_wait_for_it() {
    let server = start(
        Limits {
            idle_transaction: Duration::from_millis(800),
            ..Limits::default()
        },
        front::Limits::default(),
    )
    .await;
    let mut setup = connect(&server).await;
    exec(&mut setup, "CREATE TABLE t (id INT PRIMARY KEY)").await;
    let mut idle = connect(&server).await;
    exec(&mut idle, "BEGIN").await;
    exec(&mut idle, "INSERT INTO t VALUES (1)").await;
    // The other session is served within about the idle limit, not after 50 s.
    let started = Instant::now();
    assert_eq!(one_i64(&mut setup, "SELECT 5").await, 5);
    exec(&mut setup, "INSERT INTO t VALUES (2)").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The idle session learns its transaction is gone; its row never was committed.
    let (number, message) = error_of(&mut idle, "INSERT INTO t VALUES (3)").await;
    assert_eq!(number, Some(1205), "{message}");
    assert!(message.contains("idle_transaction_timeout"), "{message}");
    let ids: Vec<i64> = sqlx::raw_sql("SELECT id FROM t ORDER BY id")
        .fetch_all(&mut setup)
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![2]);
    // The session goes on outside a transaction.
    exec(&mut idle, "INSERT INTO t VALUES (4)").await;
}

#[tokio::test]
async fn double_quoted_text_is_a_string_not_a_column() {
    let server = start_default().await;
    let mut c = connect(&server).await;
    for sql in [
        "CREATE TABLE dq (id INT PRIMARY KEY, n VARCHAR(10), v VARCHAR(10))",
        "INSERT INTO dq VALUES (1, 'x', 'y'), (2, 'n', 'n'), (3, 'z', 'n')",
        "UPDATE dq SET v = \"n\" WHERE id = 1",
        "DELETE FROM dq WHERE n = \"n\"",
    ] {
        exec(&mut c, sql).await;
    }
    let rows: Vec<(i64, String, String)> = sqlx::raw_sql("SELECT id, n, v FROM dq ORDER BY id")
        .fetch_all(&mut c)
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // Row 1 got the text "n" (not column n's "x"); only row 2 had n = 'n'.
    assert_eq!(
        rows,
        vec![(1, "x".into(), "n".into()), (3, "z".into(), "n".into())]
    );
}

fn python() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(repo.join("scripts/python.sh"))
        .output()
        .expect("python.sh");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
}

#[tokio::test]
async fn stacked_statements_run_only_for_clients_that_asked_for_them() {
    let server = start_default().await;
    let script = r#"
import json, sys, pymysql
from pymysql.constants import CLIENT
port = int(sys.argv[1])
def conn(flags=0):
    return pymysql.connect(host="127.0.0.1", port=port, user="app", password="s3cret",
                           database="shop", client_flag=flags, autocommit=True)
c = conn()
cur = c.cursor()
cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))")
cur.execute("INSERT INTO t VALUES (1, 'x')")
seen = {}
try:
    cur.execute("SELECT id FROM t WHERE v='x'; DROP TABLE t")
    seen["stacked"] = "ran"
except pymysql.MySQLError as e:
    seen["stacked"] = e.args[0]
cur.execute("SELECT COUNT(*) FROM t")
seen["rows_after"] = cur.fetchone()[0]
m = conn(CLIENT.MULTI_STATEMENTS)
mc = m.cursor()
mc.execute("INSERT INTO t VALUES (2, 'y'); INSERT INTO t VALUES (3, 'z')")
while mc.nextset():
    pass
cur.execute("SELECT COUNT(*) FROM t")
seen["rows_multi"] = cur.fetchone()[0]
print(json.dumps(seen))
"#;
    let out = tokio::process::Command::new(python())
        .args(["-c", script, &server.addr.port().to_string()])
        .output()
        .await
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(seen["stacked"], 1064, "PyMySQL without the flag: refused");
    assert_eq!(seen["rows_after"], 1, "the table was not dropped");
    assert_eq!(seen["rows_multi"], 3, "with the flag both statements ran");
}

/// Reads the server's greeting from a raw connection.
async fn greeted(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.expect("greeting header");
    let len = usize::from(header[0]) | usize::from(header[1]) << 8;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("greeting");
    s
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[tokio::test]
async fn before_login_a_client_costs_little_memory_and_little_time() {
    let server = start(
        Limits::default(),
        front::Limits {
            connect_timeout: Duration::from_millis(700),
            ..front::Limits::default()
        },
    )
    .await;
    let before = resident_bytes();
    // 64 clients announce 16 MB packets and send nothing more.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = greeted(server.addr).await;
        s.write_all(&[0xff, 0xff, 0xff, 0x01]).await.expect("send");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 128 * 1024 * 1024,
        "64 announced packets cost {} MB",
        grown >> 20
    );
    // Each is closed by the server: the announced length is past the pre-login limit.
    for mut s in held {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(matches!(n, Ok(0) | Err(_)), "closed, not answered");
    }
    // A client that says nothing is closed after the connect timeout.
    let mut silent = greeted(server.addr).await;
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed by the server");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn packets_past_max_allowed_packet_and_connections_past_the_limit_are_refused() {
    let server = start(
        Limits::default(),
        front::Limits {
            max_allowed_packet: 1 << 20,
            max_connections: 3,
            ..front::Limits::default()
        },
    )
    .await;
    let mut c = connect(&server).await;
    assert_eq!(
        one_i64(&mut c, "SELECT @@max_allowed_packet").await,
        1 << 20
    );
    let big = format!("SELECT '{}'", "x".repeat(2 << 20));
    let e = sqlx::raw_sql(sqlx::AssertSqlSafe(big))
        .execute(&mut c)
        .await
        .expect_err("too large");
    assert_eq!(code(&e), Some(1153), "{e}");
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Three connections are served; the fourth is told why it is refused.
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(connect(&server).await);
    }
    let refused = MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(server.addr.port())
        .username("app")
        .password("s3cret")
        .connect()
        .await
        .expect_err("a fourth connection");
    assert!(refused.to_string().contains("1040"), "{refused}");
    kept.pop().expect("one").close().await.expect("close");
    tokio::time::sleep(Duration::from_millis(200)).await;
    connect(&server).await;
}

#[tokio::test]
async fn reads_of_other_sessions_do_not_wait_for_a_transaction_in_progress() {
    let server = start(
        Limits {
            idle_transaction: Duration::from_secs(60),
            ..Limits::default()
        },
        front::Limits::default(),
    )
    .await;
    let mut setup = connect(&server).await;
    for sql in [
        "CREATE TABLE t (id INT PRIMARY KEY)",
        "CREATE TABLE other (id INT PRIMARY KEY)",
        "INSERT INTO t VALUES (1)",
        "INSERT INTO other VALUES (1)",
    ] {
        exec(&mut setup, sql).await;
    }
    // A busy writer: a transaction that keeps issuing statements for three seconds.
    let mut writer = connect(&server).await;
    let busy = tokio::spawn(async move {
        exec(&mut writer, "BEGIN").await;
        for id in 2..17 {
            exec(&mut writer, &format!("INSERT INTO t VALUES ({id})")).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        exec(&mut writer, "COMMIT").await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut reader = connect(&server).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        // Only what is committed: the writer's rows are not seen before its COMMIT.
        assert_eq!(one_i64(&mut reader, "SELECT COUNT(*) FROM t").await, 1);
        assert_eq!(one_i64(&mut reader, "SELECT COUNT(*) FROM other").await, 1);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_millis(1000),
        "reads waited for the transaction: {slowest:?}"
    );
    busy.await.expect("writer");
    assert_eq!(one_i64(&mut reader, "SELECT COUNT(*) FROM t").await, 16);
}

#[tokio::test]
async fn a_runaway_write_running_alone_stops_at_its_time_limit_and_leaves_nothing() {
    let server = start(
        Limits {
            max_statement: Duration::from_millis(1500),
            ..Limits::default()
        },
        front::Limits::default(),
    )
    .await;
    let mut c = connect(&server).await;
    for sql in [
        "CREATE TABLE t (id BIGINT PRIMARY KEY)",
        "INSERT INTO t VALUES (0)",
    ] {
        exec(&mut c, sql).await;
    }
    // Ids from 100 up: clear of the rows the test writes itself.
    let endless = "INSERT INTO t (id) SELECT n FROM (WITH RECURSIVE c(n) AS \
                   (SELECT 100 UNION ALL SELECT n + 1 FROM c) SELECT n FROM c) AS x";
    let started = Instant::now();
    let (number, message) = error_of(&mut c, endless).await;
    assert_eq!(number, Some(3024), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing of it stays, and the engine's own transaction state is sound: writes and
    // reads go on.
    assert_eq!(one_i64(&mut c, "SELECT COUNT(*) FROM t").await, 1);
    for id in 1..4 {
        exec(&mut c, &format!("INSERT INTO t VALUES ({id})")).await;
    }
    assert_eq!(one_i64(&mut c, "SELECT COUNT(*) FROM t").await, 4);
    // KILL QUERY stops a lone write too.
    let id = one_i64(&mut c, "SELECT CONNECTION_ID()").await;
    let write = tokio::spawn(async move { error_of(&mut c, endless).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut killer = connect(&server).await;
    exec(&mut killer, &format!("KILL QUERY {id}")).await;
    let (number, message) = write.await.expect("join");
    assert_eq!(number, Some(1317), "{message}");
    assert_eq!(one_i64(&mut killer, "SELECT COUNT(*) FROM t").await, 4);
}
