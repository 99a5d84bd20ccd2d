//! End-to-end harnesses for Quartet, shared by the tests in `e2e/tests/`.
//!
//! | module | starts |
//! |---|---|
//! | [`process`] | the workspace's own binaries as child processes, with their bound addresses |
//! | [`otlp`] | an in-process OTLP/gRPC trace receiver that keeps every span it is sent |
//! | [`docker`] | containers of Quartet images on a private Docker network, and faults on them |
//! | [`kube`] | a real Kubernetes API server (etcd + kube-apiserver) through `e2e/k8s/envtest.sh` |
//! | [`auth`] | quartet-auth with a bootstrap administrator, and tokens from it |
//! | [`db`] | a quartet-db group as processes, with kill, restart, pause and resume |
//! | [`history`] | recorded client histories and their checks: linearizability, lost writes |
//! | [`openapi`] | schemathesis against a running REST API and its own OpenAPI document |
//!
//! Each harness cleans up on drop and, when the test is failing, prints what it collected
//! (process output, container logs) first.

pub mod auth;
pub mod db;
pub mod docker;
pub mod history;
pub mod kube;
pub mod openapi;
pub mod otlp;
pub mod process;

use std::path::PathBuf;
use std::time::Duration;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Polls `probe` every 50 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs one of the repository's scripts and returns what it printed, trimmed; panics with its
/// standard error when it fails.
pub async fn script(path: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(repo_root().join(path))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        out.status.success(),
        "{path} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// The private test Redis (`scripts/redis.sh`), started if needed: its base URL.
pub async fn redis_url() -> String {
    script("scripts/redis.sh", &["up"]).await
}

/// The test venv's Python (`scripts/python.sh`), installed if needed.
pub async fn python() -> String {
    script("scripts/python.sh", &[]).await
}

/// `GET url` with `bearer`, its JSON body (whatever the status).
pub async fn get_json(url: &str, bearer: &str) -> anyhow::Result<serde_json::Value> {
    Ok(http_client(Duration::from_secs(10))
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await?
        .json()
        .await?)
}

/// A plain HTTP client with a short timeout, for health probes.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("a client without TLS always builds")
}

/// zerorpc-python's `Demo` server (`e2e/python/zerorpc_peer.py`: add, fail, count as a stream,
/// slow; 1 s heartbeats) on a free port, once it says it is ready: the process (killed on
/// drop) and its endpoint.
pub async fn zerorpc_server() -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt as _;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(python().await)
        .args(["zerorpc_peer.py", "server", &endpoint])
        .current_dir(repo_root().join("e2e/python"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the zerorpc server starts within 30 s");
    assert_eq!(ready.expect("read").as_deref(), Some("ready"));
    (child, endpoint)
}

/// A real Celery worker (the `peers` app of `e2e/python/peers.py`, solo pool) consuming
/// `queue` on Redis `broker` with results in `results`; killed on drop.
pub async fn celery_worker(broker: &str, results: &str, queue: &str) -> tokio::process::Child {
    tokio::process::Command::new(python().await)
        .args([
            "-m",
            "celery",
            "-A",
            "peers",
            "worker",
            "--pool=solo",
            "-Q",
            queue,
        ])
        .args(["--without-mingle", "--without-gossip", "--loglevel=warning"])
        .current_dir(repo_root().join("e2e/python"))
        .env("BROKER_URL", broker)
        .env("RESULT_URL", results)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("a Celery worker starts")
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (a leaf, not a CA, so rustls
/// clients accept it as its own trust anchor) and its P-256 key, written by openssl into
/// `dir` as `cert.pem` and `key.pem`.
pub fn self_signed_certificate(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(made.success(), "openssl made no certificate");
    (cert, key)
}

/// A gRPC channel to `https://localhost:{port}` trusting only `cert` (PEM).
pub async fn grpc_tls_channel(port: u16, cert: &std::path::Path) -> tonic::transport::Channel {
    let pem = std::fs::read(cert).expect("the certificate");
    tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
        .expect("endpoint")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                .domain_name("localhost"),
        )
        .expect("tls")
        .connect()
        .await
        .expect("a TLS connection")
}
