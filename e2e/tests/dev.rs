//! `make dev` (scripts/dev.sh): every binary starts on loopback, each answers, and an interrupt
//! stops them all, leaving no process behind.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn dev_starts_every_service_and_ctrl_c_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = quartet_e2e::repo_root().join("scripts/dev.sh");
    let mut child = tokio::process::Command::new("setsid")
        .arg(&script)
        .env("QUARTET_DEV_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("dev.sh runs");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(300), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains("Press Ctrl-C");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        ready,
        Ok(true),
        "dev.sh did not come up:\n{}",
        seen.join("\n")
    );
    let out = seen.join("\n");
    for name in [
        "quartet-auth",
        "quartet-task-gateway",
        "quartet-rpc-gateway",
        "quartet-db",
    ] {
        assert!(
            out.contains(&format!("{{\"service\":\"{name}\"")),
            "{name} did not answer /v1/info:\n{out}"
        );
    }
    assert!(
        out.contains("\"ready\":true,\"checks\""),
        "the operator did not answer /readyz:\n{out}"
    );
    assert!(
        out.contains(
            "/v1/whoami with ada's token: {\"subject\":\"ada\",\"client_id\":\"quartet-cli\",\"roles\":[\"ops\"]"
        ),
        "the gateway did not accept ada's token from quartet-auth:\n{out}"
    );
    assert!(out.contains("without a token: HTTP 401"), "{out}");
    assert!(
        out.contains("\"state\":\"SUCCESS\",\"result\":42"),
        "no task run through the gateway's worker:\n{out}"
    );
    assert!(
        out.contains("(Rust service) with ada's token -> {\"result\":[100,200,300]}"),
        "no call to the Rust zerorpc service:\n{out}"
    );
    assert!(
        out.contains("(Python service) with the admin token -> {\"result\":42}"),
        "no call to the Python zerorpc service:\n{out}"
    );
    assert!(
        out.contains("rpc:call:reports.* only) -> HTTP 403"),
        "no refused call:\n{out}"
    );
    assert!(
        out.contains("| ada  |      1 |") && out.contains("| bob  |      1 |"),
        "no mysql client session:\n{out}"
    );
    assert!(
        out.contains("member 3: voter") && out.contains(" is leader, term "),
        "no three-replica quartet-db group in the admin API:\n{out}"
    );
    assert!(
        out.contains("ERROR 1290 (HY000) at line 1: this replica is not the leader; retry on node"),
        "a follower did not refuse the write naming the leader:\n{out}"
    );
    assert!(out.contains("|      2 |"), "no follower read:\n{out}");
    let health = quartet_e2e::http_client(Duration::from_secs(2))
        .get("http://127.0.0.1:7119/healthz")
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    // Ctrl-C in a terminal interrupts the whole foreground process group.
    let group = format!("-{pid}");
    let sent = std::process::Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("dev.sh exits")
        .expect("wait");
    assert!(
        status.code().is_some(),
        "dev.sh should exit on its own, got {status}"
    );

    let left = std::process::Command::new("pgrep")
        .args(["-g", &pid.to_string()])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let refused = quartet_e2e::http_client(Duration::from_secs(2))
        .get("http://127.0.0.1:7119/healthz")
        .send()
        .await;
    assert!(refused.is_err(), "quartet-auth still answers after Ctrl-C");
}
