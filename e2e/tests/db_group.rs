//! quartet-db replica groups as separate processes, under faults: the leader killed under
//! load, a leader paused, a node restarted that catches up from a snapshot. Clients are
//! sqlx's MySQL driver; every operation is recorded and the history is checked for lost
//! acknowledged writes and for linearizability of a set of registers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quartet_e2e::db::DbGroup;
use quartet_e2e::history::{Event, Op, Outcome, check_registers, lost_writes};
use quartet_e2e::process::Server;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Row};

const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// The tests here measure timings on a two-core machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(addr: SocketAddr) -> MySqlConnectOptions {
    MySqlConnectOptions::new()
        .host(&addr.ip().to_string())
        .port(addr.port())
        .username(quartet_e2e::db::USER)
        .password(quartet_e2e::db::PASSWORD)
        .database(quartet_e2e::db::DATABASE)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<MySqlConnection> {
    Ok(tokio::time::timeout(Duration::from_secs(2), options(addr).connect()).await??)
}

/// Connects to the node that leads, once a statement shows it accepts writes there (a
/// group that just formed may still change leader once).
async fn leader_connection(group: &DbGroup) -> MySqlConnection {
    quartet_e2e::eventually(
        "a leader accepting statements",
        Duration::from_secs(20),
        || async {
            let leader = group.leader().await?;
            let mut c = connect(group.mysql_addr(leader)).await.ok()?;
            sqlx::query("SELECT 1").execute(&mut c).await.ok()?;
            Some(c)
        },
    )
    .await
    .expect("a leader")
}

/// What the workload records.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    /// Log ids whose insert was acknowledged.
    acked: Mutex<BTreeSet<i64>>,
    /// Log ids whose insert may or may not have happened.
    maybe: Mutex<BTreeSet<i64>>,
}

/// The MySQL error number of a failed statement, if the server sent one.
fn mysql_error(e: &sqlx::Error) -> Option<(u16, String)> {
    match e {
        sqlx::Error::Database(db) => {
            let number = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|m| m.number())?;
            Some((number, db.message().to_owned()))
        }
        _ => None,
    }
}

/// Where a not-leader error says to go.
fn leader_hint(message: &str, nodes: &[SocketAddr]) -> Option<usize> {
    let addr = message.split("(mysql ").nth(1)?.split(')').next()?;
    nodes.iter().position(|n| n.to_string() == addr)
}

enum Kind {
    WriteRegister(String, i64),
    ReadRegister(String),
    Append(i64),
}

/// One client, until `until`. A writer does register writes and reads over three keys and
/// appends to a log table against whichever node leads (following not-leader hints); a
/// roaming reader reads registers from every node in turn, so a replica that answered reads
/// it may not serve would show up as a stale read.
async fn client(
    worker: i64,
    roaming: bool,
    nodes: Vec<SocketAddr>,
    until: Instant,
    start: Instant,
    rec: Arc<Recorder>,
) {
    let mut target = worker as usize % nodes.len();
    let mut conns: Vec<Option<MySqlConnection>> = nodes.iter().map(|_| None).collect();
    let mut n = 0i64;
    let now = || start.elapsed().as_nanos() as u64;
    while Instant::now() < until {
        if roaming {
            target = n as usize % nodes.len();
        }
        let conn = &mut conns[target];
        let Some(c) = conn.as_mut() else {
            match connect(nodes[target]).await {
                Ok(c) => *conn = Some(c),
                Err(_) => {
                    target = (target + 1) % nodes.len();
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        n += 1;
        let unique = worker * 1_000_000 + n;
        let key = format!("k{}", (worker + n) % 3);
        let kind = match n % 3 {
            _ if roaming => Kind::ReadRegister(key),
            0 => Kind::WriteRegister(key, unique),
            1 => Kind::ReadRegister(key),
            _ => Kind::Append(unique),
        };
        let invoked = now();
        let result: Result<Result<Option<i64>, sqlx::Error>, _> = tokio::time::timeout(OP_TIMEOUT, async {
            match &kind {
                Kind::WriteRegister(k, v) => sqlx::query(
                    "INSERT INTO registers (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)",
                )
                .bind(k)
                .bind(v)
                .execute(&mut *c)
                .await
                .map(|_| None),
                Kind::ReadRegister(k) => sqlx::query("SELECT v FROM registers WHERE k = ?")
                    .bind(k)
                    .fetch_optional(&mut *c)
                    .await
                    .map(|row| row.map(|r| r.get::<i64, _>(0))),
                Kind::Append(id) => sqlx::query("INSERT INTO appended (id) VALUES (?)")
                    .bind(id)
                    .execute(&mut *c)
                    .await
                    .map(|_| None),
            }
        })
        .await;
        let completed = now();
        let outcome = match &result {
            Ok(Ok(_)) => Outcome::Ok,
            Ok(Err(e)) => match mysql_error(e) {
                // Not the leader, or none yet: nothing was proposed. Follow the hint.
                Some((1290, message)) => {
                    target = leader_hint(&message, &nodes).unwrap_or((target + 1) % nodes.len());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Outcome::Failed
                }
                // The group did not confirm in time: it may still commit.
                Some((1180, _)) => Outcome::Unknown,
                Some(_) => Outcome::Failed,
                // The connection broke mid-statement.
                None => {
                    conns[target] = None;
                    target = (target + 1) % nodes.len();
                    Outcome::Unknown
                }
            },
            Err(_) => {
                conns[target] = None;
                target = (target + 1) % nodes.len();
                Outcome::Unknown
            }
        };
        match kind {
            Kind::WriteRegister(key, v) => rec.events.lock().expect("lock").push(Event {
                key,
                op: Op::Write(v),
                invoked,
                completed,
                outcome,
            }),
            Kind::ReadRegister(key) => {
                if let Ok(Ok(value)) = result {
                    rec.events.lock().expect("lock").push(Event {
                        key,
                        op: Op::Read(value),
                        invoked,
                        completed,
                        outcome,
                    });
                }
            }
            Kind::Append(id) => match outcome {
                Outcome::Ok => {
                    rec.acked.lock().expect("lock").insert(id);
                }
                Outcome::Unknown => {
                    rec.maybe.lock().expect("lock").insert(id);
                }
                Outcome::Failed => {}
            },
        }
    }
}

async fn create_tables(group: &DbGroup) {
    let mut c = leader_connection(group).await;
    for sql in [
        "CREATE TABLE registers (k VARCHAR(16) PRIMARY KEY, v BIGINT NOT NULL)",
        "CREATE TABLE appended (id BIGINT PRIMARY KEY)",
    ] {
        sqlx::query(sql).execute(&mut c).await.expect(sql);
    }
}

/// Waits until every node has applied the same index, then compares their checksums through
/// the admin API.
async fn assert_converged(group: &DbGroup, token: &str) {
    let applied = quartet_e2e::eventually(
        "every node at the same applied index",
        Duration::from_secs(30),
        || async {
            let mut seen = BTreeSet::new();
            for i in 0..group.len() {
                seen.insert(group.applied(i).await?);
            }
            (seen.len() == 1).then(|| seen.into_iter().next().unwrap_or_default())
        },
    )
    .await
    .expect("convergence");
    let client = quartet_e2e::http_client(Duration::from_secs(10));
    let mut sums = BTreeSet::new();
    for i in 0..group.len() {
        let response: serde_json::Value = client
            .get(format!(
                "{}/v1/cluster/checksum?at_least={applied}",
                group.http_url(i)
            ))
            .bearer_auth(token)
            .send()
            .await
            .expect("checksum call")
            .error_for_status()
            .expect("checksum status")
            .json()
            .await
            .expect("json");
        sums.insert(response["sha256"].as_str().expect("sha256").to_owned());
    }
    assert_eq!(
        sums.len(),
        1,
        "replicas differ at index {applied}: {sums:?}"
    );
}

async fn auth_and_token() -> (Server, String) {
    quartet_e2e::auth::start_with_admin_token()
        .await
        .expect("quartet-auth and a token")
}

fn group_flags(auth: &Server, extra: &[&str]) -> Vec<String> {
    let mut flags = quartet_e2e::auth::client_flags(auth);
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    flags
}

#[tokio::test]
async fn no_acknowledged_write_is_lost_and_registers_stay_linearizable_through_kill_and_pause() {
    let _serial = SERIAL.lock().await;
    let (_auth, token) = auth_and_token().await;
    let flags = group_flags(&_auth, &["--raft-snapshot-every", "300"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut group = DbGroup::start(3, &flags).await.expect("group");
    create_tables(&group).await;

    let nodes: Vec<SocketAddr> = (0..group.len()).map(|i| group.mysql_addr(i)).collect();
    let start = Instant::now();
    let until = start + Duration::from_secs(16);
    let rec = Arc::new(Recorder::default());
    let workers: Vec<_> = (0..6)
        .map(|w| tokio::spawn(client(w, w >= 4, nodes.clone(), until, start, rec.clone())))
        .collect();

    // Kill the leader under load, bring it back, then freeze whichever node leads next.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = group
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let killed_at = start.elapsed().as_nanos() as u64;
    group.kill(first).await.expect("kill");
    tokio::time::sleep(Duration::from_secs(4)).await;
    group.restart(first).await.expect("restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = group
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let paused_at = start.elapsed().as_nanos() as u64;
    group.pause(second).expect("pause");
    tokio::time::sleep(Duration::from_secs(3)).await;
    group.resume(second).expect("resume");
    for w in workers {
        w.await.expect("worker");
    }

    // The record.
    let events = rec.events.lock().expect("lock").clone();
    let acked = rec.acked.lock().expect("lock").clone();
    let maybe = rec.maybe.lock().expect("lock").clone();
    let resumed = |after: u64| {
        events
            .iter()
            .filter(|e| {
                matches!(e.op, Op::Write(_)) && e.outcome == Outcome::Ok && e.invoked >= after
            })
            .map(|e| e.completed)
            .min()
            .map(|done| Duration::from_nanos(done - after))
    };
    let after_kill = resumed(killed_at).expect("writes resumed after the kill");
    let after_pause = resumed(paused_at).expect("writes resumed after the pause");
    eprintln!(
        "history: {} register operations, {} acknowledged appends, {} with unknown outcome; writes resumed {:?} after the leader was killed and {:?} after it was paused",
        events.len(),
        acked.len(),
        maybe.len(),
        after_kill,
        after_pause
    );
    assert!(
        acked.len() > 50,
        "the workload made progress: {}",
        acked.len()
    );

    // Nothing acknowledged is lost, nothing never attempted appears.
    let mut c = leader_connection(&group).await;
    let present: BTreeSet<i64> = sqlx::query("SELECT id FROM appended")
        .fetch_all(&mut c)
        .await
        .expect("final read")
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect();
    assert_eq!(
        lost_writes(&acked, &present),
        Vec::<i64>::new(),
        "lost acknowledged appends"
    );
    let stray: Vec<i64> = present
        .iter()
        .filter(|id| !acked.contains(id) && !maybe.contains(id))
        .copied()
        .collect();
    assert!(
        stray.is_empty(),
        "rows that no client wrote or that definitely failed: {stray:?}"
    );

    // Every register's history has a linearization.
    if let Err(violation) = check_registers(&events) {
        panic!("{violation}");
    }

    // Replicas agree byte for byte, and a follower read with bounded staleness sees it all.
    assert_converged(&group, &token).await;
    let leader = group
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = (leader + 1) % group.len();
    let mut f = connect(group.mysql_addr(follower)).await.expect("follower");
    let refused = sqlx::query("SELECT COUNT(*) FROM appended")
        .fetch_one(&mut f)
        .await;
    let (code, message) = mysql_error(&refused.expect_err("linearizable reads need the leader"))
        .expect("a MySQL error");
    assert_eq!(code, 1290, "{message}");
    assert!(
        message.contains("retry on node"),
        "names the leader: {message}"
    );
    sqlx::query("SET quartet_read_staleness_ms = 5000")
        .execute(&mut f)
        .await
        .expect("set");
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM appended")
        .fetch_one(&mut f)
        .await
        .expect("follower read")
        .get(0);
    assert_eq!(count as usize, present.len());
    assert!(
        after_kill < Duration::from_secs(5),
        "writes resumed {after_kill:?} after the kill"
    );
}

#[tokio::test]
async fn a_node_that_missed_compacted_entries_catches_up_from_a_snapshot() {
    let _serial = SERIAL.lock().await;
    let (_auth, token) = auth_and_token().await;
    let flags = group_flags(&_auth, &["--raft-snapshot-every", "40"]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut group = DbGroup::start(3, &flags).await.expect("group");
    create_tables(&group).await;
    let leader = group
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let lagging = (leader + 1) % group.len();
    group.kill(lagging).await.expect("kill");

    // A majority keeps committing while the node is down; the log is compacted past it.
    let mut c = leader_connection(&group).await;
    for id in 0..200i64 {
        sqlx::query("INSERT INTO appended (id) VALUES (?)")
            .bind(id)
            .execute(&mut c)
            .await
            .expect("insert with one node down");
    }
    group.restart(lagging).await.expect("restart");
    assert_converged(&group, &token).await;
    assert!(
        group.output(lagging).contains("snapshot installed"),
        "the restarted node was brought up to date by a snapshot"
    );
    // The group's admin status shows every member caught up.
    let status: serde_json::Value = quartet_e2e::http_client(Duration::from_secs(5))
        .get(format!("{}/v1/cluster", group.http_url(leader)))
        .bearer_auth(&token)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["role"], "leader");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
}

/// Runs sysbench (the Debian package) and returns its report; fails on a non-zero exit.
async fn sysbench(args: &[&str]) -> String {
    let out = tokio::process::Command::new("sysbench")
        .args(args)
        .output()
        .await
        .expect("sysbench is installed (scripts/setup.sh)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sysbench {args:?} failed:\n{report}");
    report
}

/// A number from a sysbench report line such as `transactions: 607 (60.37 per sec.)`.
fn figure(report: &str, label: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{report}"))
}

#[tokio::test]
async fn sysbench_oltp_runs_without_errors_on_three_replicas() {
    let _serial = SERIAL.lock().await;
    let (_auth, token) = auth_and_token().await;
    let flags = group_flags(&_auth, &[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let group = DbGroup::start(3, &flags).await.expect("group");
    drop(leader_connection(&group).await);
    let leader = group
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let port = format!("--mysql-port={}", group.ports(leader).mysql);
    let password = format!("--mysql-password={}", quartet_e2e::db::PASSWORD);
    let user = format!("--mysql-user={}", quartet_e2e::db::USER);
    let db = format!("--mysql-db={}", quartet_e2e::db::DATABASE);
    let common = [
        "--mysql-host=127.0.0.1",
        &port,
        &user,
        &password,
        &db,
        "--tables=2",
        "--table-size=2000",
    ];
    let with = |extra: &[&'static str]| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(extra);
        args
    };
    sysbench(&with(&["oltp_read_write", "prepare"])).await;
    let rw = sysbench(&with(&[
        "oltp_read_write",
        "--threads=4",
        "--time=8",
        "run",
    ]))
    .await;
    let ps = sysbench(&with(&[
        "oltp_point_select",
        "--threads=4",
        "--time=4",
        "run",
    ]))
    .await;
    for (name, report) in [("oltp_read_write", &rw), ("oltp_point_select", &ps)] {
        assert_eq!(figure(report, "ignored errors:"), 0.0, "{name}:\n{report}");
        assert!(figure(report, "transactions:") > 0.0, "{name}:\n{report}");
        assert!(!report.contains("FATAL"), "{name}:\n{report}");
        eprintln!(
            "{name}: {} transactions, p95 {} ms",
            figure(report, "transactions:"),
            figure(report, "95th percentile:")
        );
    }
    // sysbench's random updates, deletes and inserts left every replica identical.
    assert_converged(&group, &token).await;
    sysbench(&with(&["oltp_read_write", "cleanup"])).await;
}

async fn admin(
    group: &DbGroup,
    node: usize,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = quartet_e2e::http_client(Duration::from_secs(70));
    let mut request = client
        .request(method, format!("{}{path}", group.http_url(node)))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin call");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

fn voters(status: &serde_json::Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter(|m| m["voter"] == true)
                .filter_map(|m| m["id"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn membership_follows_the_admin_api_learner_promotion_transfer_and_removal() {
    let _serial = SERIAL.lock().await;
    let (auth, token) = auth_and_token().await;
    let flags = group_flags(&auth, &[]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut group = DbGroup::start(3, &flags).await.expect("group");
    create_tables(&group).await;
    let mut c = leader_connection(&group).await;
    for id in 0..50i64 {
        sqlx::query("INSERT INTO appended (id) VALUES (?)")
            .bind(id)
            .execute(&mut c)
            .await
            .expect("insert");
    }
    let leader = group
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = (leader + 1) % 3;
    use reqwest::Method;

    // Without a token, or from a follower: refused with a reason.
    let anonymous = quartet_e2e::http_client(Duration::from_secs(5))
        .get(format!("{}/v1/cluster", group.http_url(leader)))
        .send()
        .await
        .expect("call");
    assert_eq!(anonymous.status().as_u16(), 401);
    let joiner = group.start_joiner().await.expect("a fourth node");
    let new_id = group.node_id(joiner);
    let learner = serde_json::json!({
        "id": new_id,
        "addr": format!("127.0.0.1:{}", group.ports(joiner).grpc),
        "mysql": group.mysql_addr(joiner).to_string(),
    });
    let (code, body) = admin(
        &group,
        follower,
        &token,
        Method::POST,
        "/v1/cluster/learners",
        Some(learner.clone()),
    )
    .await;
    assert_eq!(code, 412, "a follower refuses membership changes: {body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("retry on node"),
        "{body}"
    );

    // A learner at an address where nothing listens is not added: the call fails once it
    // has not caught up, naming why, and leaves no member behind.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let (code, body) = admin(
        &group,
        leader,
        &token,
        Method::POST,
        "/v1/cluster/learners",
        Some(serde_json::json!({"id": 99, "addr": dead_addr.to_string(), "mysql": ""})),
    )
    .await;
    assert_eq!(code, 504, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("did not catch up"),
        "{body}"
    );
    let (_, status) = admin(&group, leader, &token, Method::GET, "/v1/cluster", None).await;
    assert!(
        !status["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == 99)),
        "nothing left behind: {status}"
    );

    // Add learner: returns once it has caught up; it holds the data but does not vote.
    let (code, status) = admin(
        &group,
        leader,
        &token,
        Method::POST,
        "/v1/cluster/learners",
        Some(learner),
    )
    .await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(voters(&status), vec![1, 2, 3]);
    let lag = status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == new_id))
        .map(|m| m["lag"].clone());
    assert_eq!(lag, Some(serde_json::json!(0)), "caught up: {status}");

    // Promote, then move leadership to the new voter.
    let (code, status) = admin(
        &group,
        leader,
        &token,
        Method::POST,
        "/v1/cluster/voters",
        Some(serde_json::json!({"ids": [new_id]})),
    )
    .await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(voters(&status), vec![1, 2, 3, 4]);
    let (code, status) = admin(
        &group,
        leader,
        &token,
        Method::POST,
        "/v1/cluster/leader",
        Some(serde_json::json!({"to": new_id})),
    )
    .await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(
        group
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("leader"),
        joiner
    );

    // Remove the old leader from the new one; the group keeps three voters and serves.
    let old_id = group.node_id(leader);
    let (code, status) = admin(
        &group,
        joiner,
        &token,
        Method::DELETE,
        &format!("/v1/cluster/nodes/{old_id}"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{status}");
    let mut expected: Vec<u64> = vec![1, 2, 3, 4];
    expected.retain(|id| *id != old_id);
    assert_eq!(voters(&status), expected);
    let mut c = connect(group.mysql_addr(joiner))
        .await
        .expect("connect to the new leader");
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM appended")
        .fetch_one(&mut c)
        .await
        .expect("read on the new leader")
        .get(0);
    assert_eq!(count, 50, "the learner received every row before it voted");
    sqlx::query("INSERT INTO appended (id) VALUES (1000)")
        .execute(&mut c)
        .await
        .expect("writes go on without the removed node");

    // With one of the two other voters down, removing the last healthy one would leave no
    // live majority: refused, with the reason.
    let others: Vec<usize> = (0..group.len())
        .filter(|i| *i != joiner && *i != leader)
        .collect();
    group.kill(others[0]).await.expect("kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = admin(
        &group,
        joiner,
        &token,
        Method::DELETE,
        &format!("/v1/cluster/nodes/{}", group.node_id(others[1])),
        None,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("a majority needs 2"),
        "{body}"
    );

    // The same status over gRPC (quartet.db.v1.Admin), refused without a token.
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        group.ports(joiner).grpc
    ))
    .expect("endpoint")
    .connect()
    .await
    .expect("grpc");
    let mut client = quartet_proto::db::v1::admin_client::AdminClient::new(channel);
    let refused = client
        .status(quartet_proto::db::v1::StatusRequest {})
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(quartet_proto::db::v1::StatusRequest {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let status = client.status(request).await.expect("status").into_inner();
    assert_eq!(status.role, "leader");
    assert_eq!(status.leader, Some(new_id));
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);

    // Removing a node that is not a member is refused with the reason.
    let (code, body) = admin(
        &group,
        joiner,
        &token,
        Method::DELETE,
        "/v1/cluster/nodes/99",
        None,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    group.kill(leader).await.expect("stop the removed node");
}

/// A replica in a StatefulSet (`raft.pod_name`) waits to be added, even the first: the group
/// is formed once through the admin API, and a replica already in a group refuses to form
/// another — so one that lost its data never starts a second group by itself. The group's
/// secret is the bearer, as the operator uses it.
#[tokio::test]
async fn a_statefulset_replica_waits_and_forms_a_group_only_when_asked_once() {
    let _one = SERIAL.lock().await;
    let group = DbGroup::start(1, &["--raft-pod-name", "solo-0"])
        .await
        .expect("a replica");
    let http = quartet_e2e::http_client(Duration::from_secs(10));
    let url = group.http_url(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting: serde_json::Value = http
        .get(format!("{url}/v1/cluster"))
        .bearer_auth("e2e-raft-secret")
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(waiting["node"], 1);
    assert!(waiting["leader"].is_null(), "{waiting}");
    assert_eq!(waiting["members"], serde_json::json!([]), "{waiting}");
    // New storage in a StatefulSet: no votes, no elections, until admitted.
    assert_eq!(waiting["abstaining"], true, "{waiting}");

    let initialize = |bearer: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http
                .post(format!("{url}/v1/cluster/initialize"))
                .bearer_auth(bearer)
                .send()
                .await
                .expect("initialize");
            (
                response.status().as_u16(),
                response.text().await.expect("body"),
            )
        }
    };
    let (code, body) = initialize("e2e-raft-secret").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"abstaining\":false"),
        "forming admits it: {body}"
    );
    group
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("it leads its group");
    let (code, body) = initialize("e2e-raft-secret").await;
    assert_eq!(code, 400);
    assert!(body.contains("already a member of a group"), "{body}");
    // Another bearer is a token for the auth service, which this replica has none of.
    let (code, body) = initialize("not-the-secret").await;
    assert_eq!(code, 503);
    assert!(body.contains("not configured"), "{body}");
}

/// A learner needs a replica of its own: the address of a member is refused (400), and so is
/// one that is not host:port, while the same replica reached under another name refuses the
/// Raft messages meant for the new node, which so never catches up (504, nothing left
/// behind). The group keeps its leader and takes writes. Adding node 5 at the leader's own
/// address made openraft's core panic (the leader took its own appends as a follower's), and
/// the replica answered every write and membership change with 503 until restarted.
#[tokio::test]
async fn a_learner_at_another_replicas_address_is_refused_and_the_leader_survives() {
    use reqwest::Method;
    let _one = SERIAL.lock().await;
    let group = DbGroup::start(1, &[]).await.expect("a replica");
    group
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("it leads its group");
    let secret = "e2e-raft-secret";
    let add = |learner: serde_json::Value| {
        admin(
            &group,
            0,
            secret,
            Method::POST,
            "/v1/cluster/learners",
            Some(learner),
        )
    };
    let detail = |body: &serde_json::Value| body["detail"].as_str().unwrap_or_default().to_owned();
    let port = group.ports(0).grpc;
    let (code, body) = add(serde_json::json!({"id": 5, "addr": format!("127.0.0.1:{port}")})).await;
    assert_eq!(code, 400, "{body}");
    assert!(detail(&body).contains("the address of node 1"), "{body}");
    for addr in [
        "127.0.0.1",
        "x y:1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "\u{0}:1",
        ":1",
    ] {
        let (code, body) = add(serde_json::json!({"id": 6, "addr": addr})).await;
        assert_eq!(code, 400, "{addr:?}: {body}");
        assert!(detail(&body).contains("is not host:port"), "{body}");
    }
    let (code, body) = add(serde_json::json!({"id": 7, "addr": format!("localhost:{port}")})).await;
    assert_eq!(code, 504, "{body}");
    assert!(detail(&body).contains("did not catch up"), "{body}");

    let (_, status) = admin(&group, 0, secret, Method::GET, "/v1/cluster", None).await;
    assert_eq!(status["role"], "leader", "{status}");
    assert_eq!(voters(&status), vec![1], "{status}");
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    let mut c = connect(group.mysql_addr(0)).await.expect("connect");
    sqlx::query("CREATE TABLE after_refusals (id INT PRIMARY KEY)")
        .execute(&mut c)
        .await
        .expect("the group still takes writes");
}
