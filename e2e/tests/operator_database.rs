//! A `DatabaseCluster` on a real kube-apiserver with the controller-manager (its StatefulSet
//! controller makes the pods; its garbage collector removes what a deleted resource owned),
//! with real `quartet-db` processes as the pods. No kubelet runs here, so this test plays it:
//! for each pod the StatefulSet controller creates it starts a `quartet-db` with the pod's
//! settings (its ConfigMap and environment, node id from the pod's name, the group's secret
//! from the operator's Secret) on a loopback address of its own, and reports the pod Running
//! with that address, Ready when the process says it is; a deleted pod's process is killed.
//!
//! The operator scales the group 1 → 3 → 5 → 3 through the database's admin API in the safe
//! order (learner, caught up, voter; leadership moved off a leaving leader; the highest
//! first), while a recorder samples the group every 50 ms and checks that every membership
//! it went through kept a majority of its voters alive. A member whose volume is lost comes
//! back empty and is replaced (removed, added afresh). With a member killed, a scale-down
//! that would leave no majority is refused with a condition. Deleting the resource removes
//! everything, the volumes too (`reclaimPolicy: Delete`, by the operator's finalizer).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use quartet_e2e::process::Server;
use quartet_operator::crd::{AuthService, DatabaseCluster};
use quartet_operator::dbadmin::Admin;
use serde_json::json;
use sqlx::ConnectOptions;
use sqlx::mysql::MySqlConnectOptions;

const NAME: &str = "orders";

/// The loopback address of pod `orders-<ordinal>`.
fn address(ordinal: u64) -> String {
    format!("127.0.0.{}", 100 + ordinal)
}

fn ordinal(pod: &str) -> Option<u64> {
    pod.strip_prefix(&format!("{NAME}-"))?.parse().ok()
}

/// The pods' stand-in kubelet: a process per pod, the pod's status kept to the process's.
#[derive(Default)]
struct Kubelet {
    /// Running processes by pod name, with whether the pod was last reported ready.
    processes: BTreeMap<String, (Server, bool)>,
    /// Pods whose process was killed on purpose: not restarted.
    dead: BTreeSet<String>,
    /// The node ids whose processes run, as the recorder reads them.
    alive: Arc<Mutex<BTreeSet<u64>>>,
}

fn node(pod: &str) -> u64 {
    ordinal(pod).expect("an ordinal") + 1
}

fn secret_value(secret: &Secret, key: &str) -> String {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .unwrap_or_default();
    String::from_utf8(bytes).expect("utf-8")
}

/// Starts the process of `pod` with the settings a kubelet would give it.
async fn run_pod(client: &kube::Client, namespace: &str, pod: &Pod) -> anyhow::Result<Server> {
    let name = pod.name_any();
    let ip = address(ordinal(&name).expect("an ordinal"));
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let settings = configs
        .get(&format!("{NAME}-config"))
        .await?
        .data
        .unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let raft_secret = dir.path().join("raft-secret");
    std::fs::write(
        &raft_secret,
        secret_value(&secrets.get(&format!("{NAME}-raft")).await?, "secret"),
    )?;
    let password = dir.path().join("mysql-password");
    std::fs::write(
        &password,
        secret_value(&secrets.get(&format!("{NAME}-mysql")).await?, "password"),
    )?;
    let container = &pod.spec.as_ref().expect("spec").containers[0];
    let mut env: BTreeMap<String, String> = settings.into_iter().collect();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.replace("$(POD_NAME)", &name),
            (None, Some(from)) if from.field_ref.is_some() => name.clone(),
            _ => continue,
        };
        env.insert(var.name.clone(), value);
    }
    // What a cluster would provide differently: addresses (no cluster DNS here) and the
    // mounted files.
    for (key, value) in [
        ("QUARTET_DB_GRPC_LISTEN", format!("{ip}:7140")),
        ("QUARTET_DB_HTTP_LISTEN", format!("{ip}:7141")),
        ("QUARTET_DB_RAFT_ADVERTISE", format!("{ip}:7140")),
        ("QUARTET_DB_RAFT_MYSQL_ADVERTISE", String::new()),
        (
            "QUARTET_DB_STORAGE_PATH",
            dir.path().join("data").display().to_string(),
        ),
        (
            "QUARTET_DB_RAFT_SECRET_FILE",
            raft_secret.display().to_string(),
        ),
        (
            "QUARTET_DB_MYSQL_PASSWORD_FILE",
            password.display().to_string(),
        ),
    ] {
        env.insert(key.into(), value);
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_in(dir, "quartet-db", false, &env).await
}

async fn set_pod_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) -> anyhow::Result<()> {
    let ready = if ready { "True" } else { "False" };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": ready}],
        }})),
    )
    .await?;
    Ok(())
}

impl Kubelet {
    /// One pass: start processes for new pods, kill those of deleted ones, report readiness.
    async fn sync(&mut self, client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let listed = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={NAME}")))
            .await?;
        let live: BTreeSet<String> = listed
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        let gone: Vec<String> = self
            .processes
            .keys()
            .filter(|n| !live.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some((mut server, _)) = self.processes.remove(&name) {
                server.kill().await?;
                self.alive.lock().expect("lock").remove(&node(&name));
            }
        }
        for pod in &listed.items {
            let name = pod.name_any();
            if pod.metadata.deletion_timestamp.is_some() {
                // Unscheduled pods go at once; a terminating one waits for its kubelet.
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            if self.processes.contains_key(&name) || self.dead.contains(&name) {
                continue;
            }
            let server = run_pod(client, namespace, pod).await?;
            let ip = address(ordinal(&name).expect("an ordinal"));
            set_pod_status(&pods, &name, &ip, false).await?;
            self.alive.lock().expect("lock").insert(node(&name));
            self.processes.insert(name, (server, false));
        }
        let http = quartet_e2e::http_client(Duration::from_secs(2));
        for (name, (server, reported)) in &mut self.processes {
            let ready = http
                .get(format!("{}/readyz", server.url("admin")))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready != *reported {
                let ip = address(ordinal(name).expect("an ordinal"));
                set_pod_status(&pods, name, &ip, ready).await?;
                *reported = ready;
            }
        }
        Ok(())
    }

    /// Kills a pod's process and loses its data: the next pass starts it on an empty volume.
    async fn wipe(&mut self, pod: &str) {
        if let Some((mut server, _)) = self.processes.remove(pod) {
            server.kill().await.expect("killed");
        }
        self.alive.lock().expect("lock").remove(&node(pod));
    }

    /// Kills a pod's process for good (the pod stays, not ready).
    async fn kill(&mut self, client: &kube::Client, namespace: &str, pod: &str) {
        if let Some((mut server, _)) = self.processes.remove(pod) {
            server.kill().await.expect("killed");
        }
        self.alive.lock().expect("lock").remove(&node(pod));
        self.dead.insert(pod.to_owned());
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let ordinal = ordinal(pod).expect("an ordinal");
        set_pod_status(&pods, pod, &address(ordinal), false)
            .await
            .expect("not ready");
    }
}

/// A membership the group went through, from its leader, with the members whose processes
/// were alive then.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    leader: u64,
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
    alive: BTreeSet<u64>,
}

/// Samples the group's membership every 50 ms from whichever replica leads.
async fn record(admin: Admin, seen: Arc<Mutex<Vec<Membership>>>, alive: Arc<Mutex<BTreeSet<u64>>>) {
    loop {
        let alive_now = alive.lock().expect("lock").clone();
        for host in alive_now.iter().map(|id| address(id - 1)) {
            let Ok(status) = admin.status(&host).await else {
                continue;
            };
            if status.role != "leader" {
                continue;
            }
            let now = Membership {
                leader: status.node,
                voters: status
                    .members
                    .iter()
                    .filter(|m| m.voter)
                    .map(|m| m.id)
                    .collect(),
                learners: status
                    .members
                    .iter()
                    .filter(|m| !m.voter)
                    .map(|m| m.id)
                    .collect(),
                alive: alive_now.clone(),
            };
            let mut seen = seen.lock().expect("lock");
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The membership changes the operator logged, in order.
fn steps(operator: &Server) -> Vec<String> {
    operator
        .output()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == "membership changed")
        .filter_map(|event| event["step"].as_str().map(str::to_owned))
        .collect()
}

/// Scales to `replicas` and waits until ready; says how long it took (the figure in
/// docs/operator.md).
async fn scale_and_settle(clusters: &Api<DatabaseCluster>, from: i32, replicas: i32) {
    let started = std::time::Instant::now();
    scale(clusters, replicas).await;
    settled(clusters, replicas).await;
    eprintln!(
        "scaled {from} -> {replicas} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn scale(clusters: &Api<DatabaseCluster>, replicas: i32) {
    clusters
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .expect("scaled");
}

/// Waits until the status says ready with `replicas` members.
async fn settled(clusters: &Api<DatabaseCluster>, replicas: i32) -> DatabaseCluster {
    quartet_e2e::eventually(
        &format!("{replicas} ready members"),
        Duration::from_secs(120),
        || async {
            let db = clusters.get(NAME).await.ok()?;
            let status = db.status.as_ref()?;
            (status.phase.as_deref() == Some("Ready")
                && status.ready_replicas == replicas
                && status.observed_generation == db.metadata.generation)
                .then_some(db)
        },
    )
    .await
    .expect("settled")
}

#[tokio::test]
async fn a_database_cluster_scales_through_the_admin_api_without_losing_its_majority() {
    let client = quartet_e2e::kube::client().await.expect("API server");
    let tools = quartet_e2e::kube::tools().await.expect("tools");
    quartet_e2e::kube::install_crds(&client, quartet_operator::crd::all())
        .await
        .expect("the CRDs installed");
    let operator = quartet_e2e::kube::Operator::start(&tools, &format!("db{}", std::process::id()))
        .await
        .expect("the operator starts");
    let namespace = format!("qdb-{}", std::process::id());
    let (ok, _, err) = tools
        .run("kubectl", &["create", "namespace", &namespace])
        .await;
    assert!(ok, "{err}");

    // The admin API takes tokens from this AuthService (the operator itself uses the
    // group's secret).
    let auths: Api<AuthService> = Api::namespaced(client.clone(), &namespace);
    let auth: AuthService = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "AuthService",
        "metadata": {"name": "auth"}, "spec": {"replicas": 1},
    }))
    .expect("a resource");
    auths
        .create(&PostParams::default(), &auth)
        .await
        .expect("created");
    let clusters: Api<DatabaseCluster> = Api::namespaced(client.clone(), &namespace);
    let resource: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": NAME},
        "spec": {"replicas": 1, "storage": {"size": "1Gi", "reclaimPolicy": "Delete"},
                 "auth": {"name": "auth"}, "config": {"raft.heartbeat_ms": "50"}},
    }))
    .expect("a resource");
    clusters
        .create(&PostParams::default(), &resource)
        .await
        .expect("created");
    // No member at all is not a database: refused in the status, not retried in a loop.
    let empty: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": "empty"}, "spec": {"replicas": 0},
    }))
    .expect("a resource");
    clusters
        .create(&PostParams::default(), &empty)
        .await
        .expect("created");

    // The stand-in kubelet and the recorder run beside the scenario.
    let alive = Arc::new(Mutex::new(BTreeSet::new()));
    let kubelet = Arc::new(tokio::sync::Mutex::new(Kubelet {
        alive: alive.clone(),
        ..Kubelet::default()
    }));
    let syncing = {
        let (kubelet, client, namespace) = (kubelet.clone(), client.clone(), namespace.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = kubelet.lock().await.sync(&client, &namespace).await {
                    eprintln!("kubelet: {e:#}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // What the operator made: the StatefulSet with its volumes, the Services, the secrets.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let set = quartet_e2e::eventually("the StatefulSet", Duration::from_secs(30), || async {
        sets.get_opt(NAME).await.ok().flatten()
    })
    .await
    .expect("made");
    let spec = set.spec.as_ref().expect("spec");
    assert_eq!(
        spec.service_name.as_deref(),
        Some(format!("{NAME}-peers").as_str())
    );
    assert_eq!(spec.replicas, Some(1));
    let claim = &spec.volume_claim_templates.as_ref().expect("volumes")[0];
    assert_eq!(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["storage"].0.clone()),
        Some("1Gi".to_owned())
    );
    let pod = spec.template.spec.as_ref().expect("pod");
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let env: Vec<&str> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(env.contains(&"QUARTET_DB_RAFT_POD_NAME"), "{env:?}");
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let peers = services
        .get(&format!("{NAME}-peers"))
        .await
        .expect("the headless Service");
    let peers = peers.spec.expect("spec");
    assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
    assert_eq!(peers.publish_not_ready_addresses, Some(true));
    services.get(NAME).await.expect("the client Service");
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let settings = configs
        .get(&format!("{NAME}-config"))
        .await
        .expect("the settings")
        .data
        .unwrap_or_default();
    assert_eq!(
        settings["QUARTET_DB_AUTH_JWKS_URL"],
        format!("http://auth.{namespace}.svc:7111/.well-known/jwks.json")
    );
    assert_eq!(settings["QUARTET_DB_RAFT_HEARTBEAT_MS"], "50");
    let refused = quartet_e2e::eventually(
        "the empty cluster's status",
        Duration::from_secs(30),
        || async {
            let status = clusters.get("empty").await.ok()?.status?;
            let ready = status.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            Some((status.phase, ready.reason, ready.message))
        },
    )
    .await
    .expect("a status");
    assert_eq!(
        refused,
        (
            Some("Failed".to_owned()),
            "InvalidReplicas".to_owned(),
            "spec.replicas must be at least 1: a database's data lives in its group".to_owned()
        )
    );
    assert!(
        sets.get_opt("empty").await.expect("read").is_none(),
        "nothing made for it"
    );
    clusters
        .delete("empty", &DeleteParams::default())
        .await
        .expect("deleted");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let raft_secret = secret_value(
        &secrets
            .get(&format!("{NAME}-raft"))
            .await
            .expect("the group's secret"),
        "secret",
    );
    assert!(raft_secret.len() >= 32);

    let db = settled(&clusters, 1).await;
    assert!(
        db.status.as_ref().is_some_and(|s| s.formed),
        "the group's forming is recorded"
    );
    assert_eq!(
        db.status.as_ref().expect("status").endpoints["mysql"],
        format!("{NAME}.{namespace}.svc:3306")
    );

    let admin = Admin::new(&raft_secret).expect("a usable secret");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = tokio::spawn(record(admin.clone(), seen.clone(), alive.clone()));

    // 1 → 3 → 5: each new member a learner first, promoted once caught up.
    scale_and_settle(&clusters, 1, 3).await;
    assert_eq!(
        steps(&operator.server),
        [
            "add member 2 as a learner",
            "promote member 2 to voter",
            "add member 3 as a learner",
            "promote member 3 to voter"
        ]
    );
    scale_and_settle(&clusters, 3, 5).await;
    assert_eq!(
        steps(&operator.server)[4..],
        [
            "add member 4 as a learner",
            "promote member 4 to voter",
            "add member 5 as a learner",
            "promote member 5 to voter"
        ]
    );
    let (ok, table, err) = tools
        .run("kubectl", &["get", "databaseclusters", "-n", &namespace])
        .await;
    assert!(ok, "{err}");
    let row = table.lines().find(|l| l.starts_with(NAME)).expect("a row");
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        columns[1..5],
        ["Ready", env!("CARGO_PKG_VERSION"), "5", "5"],
        "{table}"
    );

    // Member 5 leads; 5 → 3 moves leadership away before removing it.
    let leader_host = {
        let seen = seen.lock().expect("lock");
        address(seen.last().expect("sampled").leader - 1)
    };
    admin
        .transfer_leader(&leader_host, 5)
        .await
        .expect("member 5 leads");
    quartet_e2e::eventually(
        "member 5 to hear from every member",
        Duration::from_secs(10),
        || async {
            let status = admin.status(&address(4)).await.ok()?;
            status
                .members
                .iter()
                .all(|m| m.id == 5 || m.last_heard_ms.is_some_and(|ms| ms < 500))
                .then_some(())
        },
    )
    .await
    .expect("heard");
    scale_and_settle(&clusters, 5, 3).await;
    assert_eq!(
        steps(&operator.server)[8..],
        [
            "move leadership to member 1",
            "remove member 5",
            "remove member 4"
        ]
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    quartet_e2e::eventually(
        "the departed members' volumes to go",
        Duration::from_secs(30),
        || async {
            let names: Vec<String> = claims
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|c| c.metadata.deletion_timestamp.is_none())
                .map(|c| c.name_any())
                .collect();
            (names == ["data-orders-0", "data-orders-1", "data-orders-2"]).then_some(())
        },
    )
    .await
    .expect("only the members' volumes are left");
    assert_eq!(
        sets.get(NAME)
            .await
            .expect("set")
            .spec
            .and_then(|s| s.replicas),
        Some(3)
    );

    // Rows written through the leader's MySQL front before member 3 loses its volume.
    let mysql = kubelet.lock().await.processes[&format!("{NAME}-0")].0.addrs["mysql"];
    let password = secret_value(
        &secrets
            .get(&format!("{NAME}-mysql"))
            .await
            .expect("the MySQL Secret"),
        "password",
    );
    let mut conn = MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(mysql.port())
        .username("root")
        .password(&password)
        .database("quartet")
        .connect()
        .await
        .expect("a MySQL session on the leader");
    sqlx::query("CREATE TABLE orders (id INT PRIMARY KEY, item TEXT)")
        .execute(&mut conn)
        .await
        .expect("created");
    for id in 0..50 {
        sqlx::query("INSERT INTO orders VALUES (?, ?)")
            .bind(id)
            .bind(format!("item {id}"))
            .execute(&mut conn)
            .await
            .expect("inserted");
    }

    // Member 3 loses its volume and comes back empty: it has forgotten its votes, so it
    // leaves the group and joins afresh, and its new storage is recorded.
    let incarnation = |db: &DatabaseCluster| {
        db.status
            .as_ref()
            .and_then(|s| s.incarnations.get("3").cloned())
    };
    let before = incarnation(&clusters.get(NAME).await.expect("read")).expect("recorded");
    kubelet.lock().await.wipe(&format!("{NAME}-2")).await;
    let after = quartet_e2e::eventually(
        "member 3 joined afresh",
        Duration::from_secs(60),
        || async {
            let db = clusters.get(NAME).await.ok()?;
            let now = incarnation(&db)?;
            let ready = db.status.as_ref()?.phase.as_deref() == Some("Ready");
            (now != before && ready).then_some(now)
        },
    )
    .await
    .expect("replaced");
    assert_ne!(after, before);
    // Its new storage kept it from voting until it had been added afresh; now it votes,
    // and holds the same data as the others.
    let replaced = admin.status(&address(2)).await.expect("status");
    assert!(!replaced.abstaining, "{replaced:?}");
    let applied = admin
        .status(&address(0))
        .await
        .expect("status")
        .applied
        .expect("applied");
    let http = quartet_e2e::http_client(Duration::from_secs(10));
    let mut sums = BTreeSet::new();
    for ordinal in 0..3 {
        let sum: serde_json::Value = http
            .get(format!(
                "http://{}:7141/v1/cluster/checksum?at_least={applied}",
                address(ordinal)
            ))
            .bearer_auth(&raft_secret)
            .send()
            .await
            .expect("checksum")
            .error_for_status()
            .expect("checksum status")
            .json()
            .await
            .expect("json");
        sums.insert((
            sum["applied"].as_u64(),
            sum["sha256"].as_str().map(str::to_owned),
        ));
    }
    assert_eq!(sums.len(), 1, "the replicas differ: {sums:?}");
    drop(conn);
    assert_eq!(
        steps(&operator.server)[11..],
        [
            "remove member 3",
            "add member 3 as a learner",
            "promote member 3 to voter"
        ]
    );

    // Member 2 dies: 3 → 2 would leave {1, 2} with one alive — refused, saying why.
    kubelet
        .lock()
        .await
        .kill(&client, &namespace, &format!("{NAME}-1"))
        .await;
    quartet_e2e::eventually(
        "the leader to notice member 2 is gone",
        Duration::from_secs(10),
        || async {
            let status = admin.status(&address(0)).await.ok()?;
            status
                .members
                .iter()
                .any(|m| m.id == 2 && m.healthy == Some(false))
                .then_some(())
        },
    )
    .await
    .expect("noticed");
    scale(&clusters, 2).await;
    let refused = quartet_e2e::eventually("the refusal", Duration::from_secs(30), || async {
        let status = clusters.get(NAME).await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "ScaleDownRefused").then(|| {
            (
                status.phase.clone(),
                ready.message.clone(),
                status.plan.clone(),
            )
        })
    })
    .await
    .expect("refused");
    assert_eq!(refused.0.as_deref(), Some("Failed"));
    let plan = refused.2.expect("the plan");
    assert_eq!(plan.goal, "scale to 2 members");
    let failed = &plan.steps[plan.current as usize];
    assert_eq!(
        (failed.action.as_str(), failed.state.as_str()),
        ("remove member 3", "Failed")
    );
    assert_eq!(
        refused.1,
        "scale-down refused: removing member 3 would leave 2 voters of which 1 are healthy; a majority needs 2"
    );
    let status = admin.status(&address(0)).await.expect("status");
    let voters: BTreeSet<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]), "nothing was removed");

    recorder.abort();
    // Every membership the group went through had a majority of its voters alive.
    let seen = seen.lock().expect("lock").clone();
    let memberships: BTreeSet<&BTreeSet<u64>> = seen.iter().map(|m| &m.voters).collect();
    assert!(memberships.len() >= 5, "{seen:?}");
    for membership in &seen {
        let up = membership.voters.intersection(&membership.alive).count();
        assert!(
            up > membership.voters.len() / 2,
            "{membership:?} had {up} voters alive; history: {seen:?}"
        );
        assert!(membership.voters.contains(&membership.leader));
    }

    // Deleting the resource removes everything: owned objects by the garbage collector, the
    // volumes by the operator's finalizer.
    clusters
        .delete(NAME, &DeleteParams::default())
        .await
        .expect("deleted");
    quartet_e2e::eventually("everything to go", Duration::from_secs(90), || async {
        let gone = clusters.get_opt(NAME).await.ok()?.is_none()
            && sets.get_opt(NAME).await.ok()?.is_none()
            && services.get_opt(NAME).await.ok()?.is_none()
            && services
                .get_opt(&format!("{NAME}-peers"))
                .await
                .ok()?
                .is_none()
            && configs
                .get_opt(&format!("{NAME}-config"))
                .await
                .ok()?
                .is_none()
            && secrets
                .get_opt(&format!("{NAME}-mysql"))
                .await
                .ok()?
                .is_none()
            && secrets
                .get_opt(&format!("{NAME}-raft"))
                .await
                .ok()?
                .is_none()
            && claims
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty();
        gone.then_some(())
    })
    .await
    .expect("all gone");
    let (ok, events, err) = tools
        .run("kubectl", &["get", "events", "-n", &namespace])
        .await;
    assert!(ok, "{err}");
    for reason in [
        "GroupFormed",
        "MemberAdded",
        "MemberPromoted",
        "LeaderMoved",
        "MemberRemoved",
        "VolumeDeleted",
        "ScaleDownRefused",
        "VolumesDeleted",
    ] {
        assert!(events.contains(reason), "no {reason} event in {events}");
    }
    syncing.abort();
    operator.uninstall().await.expect("uninstalled");
    let _ = tools
        .run(
            "kubectl",
            &["delete", "namespace", &namespace, "--wait=false"],
        )
        .await;
}
