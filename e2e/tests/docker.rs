//! Containers of a real Quartet image on a private Docker network, and every fault the harness
//! offers (stop, kill, pause, disconnect, reconnect), observed through the health endpoint.

use std::net::IpAddr;
use std::time::Duration;

use quartet_e2e::docker::{Cluster, image};
use quartet_e2e::{eventually, http_client};

const ADMIN_PORT: u16 = 7119;

async fn healthy(ip: IpAddr) -> bool {
    let url = format!("http://{ip}:{ADMIN_PORT}/healthz");
    matches!(http_client(Duration::from_millis(500)).get(url).send().await, Ok(r) if r.status() == 200)
}

async fn wait_healthy(cluster: &Cluster, node: usize) -> IpAddr {
    eventually(
        &format!("node {node} healthy"),
        Duration::from_secs(30),
        || async {
            let ip = cluster.ip(node).await.ok().flatten()?;
            healthy(ip).await.then_some(ip)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn all_others_healthy(cluster: &Cluster, except: usize) {
    for node in (0..cluster.nodes.len()).filter(|n| *n != except) {
        let ip = cluster.ip(node).await.expect("inspect").expect("connected");
        assert!(
            healthy(ip).await,
            "node {node} should be unaffected by faults on node {except}"
        );
    }
}

#[tokio::test]
async fn faults_on_one_node_are_seen_on_that_node_only() {
    let cluster = Cluster::start(&image("quartet-auth"), 3, &["--log-format", "json"])
        .await
        .expect("cluster starts");
    for node in 0..3 {
        wait_healthy(&cluster, node).await;
    }
    assert_eq!(
        cluster
            .inspect(0, "{{.Config.User}}")
            .await
            .expect("inspect"),
        "65532:65532",
        "images run as non-root"
    );

    // Graceful stop: SIGTERM, a drain, exit code 0.
    cluster
        .stop(0, Duration::from_secs(20))
        .await
        .expect("stop");
    assert_eq!(
        cluster
            .inspect(0, "{{.State.ExitCode}}")
            .await
            .expect("inspect"),
        "0"
    );
    assert!(
        cluster
            .logs(0)
            .await
            .expect("logs")
            .contains("\"message\":\"stopped\"")
    );
    all_others_healthy(&cluster, 0).await;
    cluster.start_node(0).await.expect("start");
    wait_healthy(&cluster, 0).await;

    // Kill: no drain, exit by SIGKILL.
    cluster.kill(1).await.expect("kill");
    assert_eq!(
        cluster
            .inspect(1, "{{.State.ExitCode}}")
            .await
            .expect("inspect"),
        "137"
    );
    all_others_healthy(&cluster, 1).await;
    cluster.start_node(1).await.expect("start");
    wait_healthy(&cluster, 1).await;

    // Pause: the process is frozen, so connections open but nothing answers.
    let ip = cluster.ip(2).await.expect("inspect").expect("connected");
    cluster.pause(2).await.expect("pause");
    assert!(!healthy(ip).await, "a paused node must not answer");
    all_others_healthy(&cluster, 2).await;
    cluster.unpause(2).await.expect("unpause");
    wait_healthy(&cluster, 2).await;

    // Disconnect: the node is cut off the network; reconnecting brings it back.
    let ip = cluster.ip(2).await.expect("inspect").expect("connected");
    cluster.disconnect(2).await.expect("disconnect");
    assert_eq!(
        cluster.ip(2).await.expect("inspect"),
        None,
        "a disconnected node has no address on the network"
    );
    assert!(!healthy(ip).await, "the old address must not answer");
    all_others_healthy(&cluster, 2).await;
    cluster.connect(2).await.expect("connect");
    wait_healthy(&cluster, 2).await;
}
