//! A quartet-db group in containers of the real image, with the leader cut off from its peers
//! by a network partition: the isolated minority cannot commit and says so within the commit
//! timeout (never a hang, never stale data), the majority elects a leader and goes on, and
//! after healing the old leader drops what it could not commit and converges.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use quartet_e2e::docker::{Cluster, image};
use quartet_e2e::{eventually, http_client};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Row};

const GRPC: u16 = 7140;
const MYSQL: u16 = 3306;
const ADMIN: u16 = 7149;

async fn connect(ip: IpAddr) -> anyhow::Result<MySqlConnection> {
    let options = MySqlConnectOptions::new()
        .host(&ip.to_string())
        .port(MYSQL)
        .username("app")
        .database("app");
    Ok(tokio::time::timeout(Duration::from_secs(3), options.connect()).await??)
}

async fn is_leader(ip: IpAddr) -> bool {
    let url = format!("http://{ip}:{ADMIN}/metrics");
    match http_client(Duration::from_millis(500))
        .get(url)
        .send()
        .await
    {
        Ok(r) => r
            .text()
            .await
            .is_ok_and(|body| body.lines().any(|l| l == "quartet_db_raft_is_leader 1")),
        Err(_) => false,
    }
}

async fn leader_among(ips: &[IpAddr], candidates: &[usize]) -> usize {
    eventually("a leader", Duration::from_secs(30), || async {
        for &i in candidates {
            if is_leader(ips[i]).await {
                return Some(i);
            }
        }
        None
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn ids(conn: &mut MySqlConnection) -> Option<Vec<i64>> {
    let rows = sqlx::query("SELECT id FROM t ORDER BY id")
        .fetch_all(conn)
        .await
        .ok()?;
    Some(rows.iter().map(|r| r.get::<i64, _>(0)).collect())
}

fn mysql_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

#[tokio::test]
async fn an_isolated_leader_cannot_commit_and_the_majority_goes_on() {
    let cluster = Cluster::start_each(&image("quartet-db"), 3, |i, names| {
        let members = names
            .iter()
            .enumerate()
            .map(|(j, n)| format!("{}={n}:{GRPC}/{n}:{MYSQL}", j + 1))
            .collect::<Vec<_>>()
            .join(",");
        [
            "--log-format",
            "json",
            "--storage-path",
            "/tmp/quartet-db",
            "--mysql-user",
            "app",
            "--mysql-database",
            "app",
            "--raft-node-id",
            &(i + 1).to_string(),
            "--raft-initial-members",
            &members,
            "--raft-advertise",
            &format!("{}:{GRPC}", names[i]),
            "--raft-mysql-advertise",
            &format!("{}:{MYSQL}", names[i]),
            "--raft-commit-timeout-ms",
            "3000",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    })
    .await
    .expect("containers start");
    let mut ips = Vec::new();
    for node in 0..3 {
        cluster.attach_bridge(node).await.expect("bridge");
        ips.push(
            cluster
                .bridge_ip(node)
                .await
                .expect("inspect")
                .expect("bridge ip"),
        );
    }
    let old = leader_among(&ips, &[0, 1, 2]).await;
    let mut c = eventually(
        "the leader accepting statements",
        Duration::from_secs(30),
        || async {
            let leader = leader_among(&ips, &[0, 1, 2]).await;
            let mut c = connect(ips[leader]).await.ok()?;
            sqlx::query("CREATE TABLE IF NOT EXISTS t (id BIGINT PRIMARY KEY)")
                .execute(&mut c)
                .await
                .ok()?;
            Some(c)
        },
    )
    .await
    .expect("schema");
    // On a loaded machine the containers may still hold an election while they settle: a
    // refused insert is retried on the current leader (INSERT IGNORE, so one that did commit
    // before its answer was lost is not doubled).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for id in 1..=20i64 {
        loop {
            let inserted = sqlx::query("INSERT IGNORE INTO t (id) VALUES (?)")
                .bind(id)
                .execute(&mut c)
                .await;
            match inserted {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!(
                        "insert {id} before the partition refused ({e}); retrying on the leader"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(again) = connect(ips[leader_among(&ips, &[0, 1, 2]).await]).await {
                        c = again;
                    }
                }
                Err(e) => panic!("insert before the partition: {e}"),
            }
        }
    }
    let old = if is_leader(ips[old]).await {
        old
    } else {
        leader_among(&ips, &[0, 1, 2]).await
    };

    // Cut the leader off from its peers; clients still reach it over the bridge.
    cluster.disconnect(old).await.expect("partition");
    let mut isolated = connect(ips[old])
        .await
        .expect("the isolated leader still answers");
    let began = Instant::now();
    let refused = sqlx::query("INSERT INTO t (id) VALUES (1000)")
        .execute(&mut isolated)
        .await
        .expect_err("a minority cannot commit");
    let waited = began.elapsed();
    let code = mysql_number(&refused);
    eprintln!("the isolated leader answered {code:?} after {waited:?}: {refused}");
    assert!(
        matches!(code, Some(1180) | Some(1290)),
        "a clear retryable error: {refused}"
    );
    assert!(
        waited < Duration::from_secs(6),
        "answered within the commit timeout, took {waited:?}"
    );
    let read = sqlx::query("SELECT COUNT(*) FROM t")
        .fetch_one(&mut isolated)
        .await;
    assert!(
        read.is_err(),
        "the isolated leader must not serve a linearizable read"
    );

    // The majority elects a new leader and commits.
    let others: Vec<usize> = (0..3).filter(|n| *n != old).collect();
    let new = leader_among(&ips, &others).await;
    let mut c = connect(ips[new]).await.expect("connect to the new leader");
    for id in 21..=40i64 {
        sqlx::query("INSERT INTO t (id) VALUES (?)")
            .bind(id)
            .execute(&mut c)
            .await
            .expect("insert on the majority side");
    }

    // Heal: the old leader follows, drops its uncommitted write and catches up.
    cluster.connect(old).await.expect("heal");
    let expected: Vec<i64> = (1..=40).collect();
    for (node, ip) in ips.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            // A fresh connection each time: the node may still be rejoining.
            if let Ok(mut conn) = connect(*ip).await
                && sqlx::query("SET quartet_read_staleness_ms = 60000")
                    .execute(&mut conn)
                    .await
                    .is_ok()
            {
                seen = ids(&mut conn).await.unwrap_or_default();
                if seen == expected {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            seen, expected,
            "node {node} converged to the committed rows only"
        );
    }
}
