//! The workspace's binaries as child processes.
//!
//! [`Server::start`] runs a binary with every listener on `127.0.0.1:0` and JSON logs, reads
//! its standard error until each listener has logged its bound address, and keeps collecting
//! the output so a failing test can show it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Every Quartet binary and whether it has gRPC and REST listeners besides the admin one.
pub const BINARIES: &[(&str, bool)] = &[
    ("quartet-auth", true),
    ("quartet-task-gateway", true),
    ("quartet-rpc-gateway", true),
    ("quartet-db", true),
    ("quartet-operator", false),
];

/// The path of a workspace binary in the same target directory as the running test.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Tests run from target/<profile>/deps/; binaries live in target/<profile>/.
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable has no target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// A running server process.
pub struct Server {
    /// The binary's name.
    pub name: String,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    /// Bound addresses by listener name (`admin`, `grpc`, `http`).
    pub addrs: HashMap<String, SocketAddr>,
    /// The process's working directory, where relative paths (an embedded store) land.
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Starts `name` with listeners on free loopback ports and waits until they are bound.
    pub async fn start(
        name: &str,
        with_apis: bool,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_in(tempfile::tempdir()?, name, with_apis, extra_env).await
    }

    /// Like [`Server::start`], in a working directory the caller prepared (e.g. holding a
    /// password file for bootstrap); relative paths such as an embedded store land there.
    pub async fn start_in(
        dir: tempfile::TempDir,
        name: &str,
        with_apis: bool,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary(name)?);
        cmd.current_dir(dir.path());
        cmd.args(["--log-format", "json", "--admin-listen", "127.0.0.1:0"]);
        if with_apis {
            cmd.args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ]);
        }
        if name == "quartet-db" {
            cmd.args(["--mysql-listen", "127.0.0.1:0"]);
        }
        cmd.envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = output.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "listening"
                    && let (Some(listener), Some(Ok(addr))) = (
                        event["listener"].as_str(),
                        event["addr"].as_str().map(str::parse::<SocketAddr>),
                    )
                {
                    let _ = addr_tx.send((listener.to_owned(), addr));
                }
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let expected: &[&str] = if with_apis {
            &["admin", "grpc", "http"]
        } else {
            &["admin"]
        };
        let bound =
            |addrs: &HashMap<String, SocketAddr>| expected.iter().all(|l| addrs.contains_key(*l));
        let mut server = Self {
            name: name.to_owned(),
            child,
            output,
            addrs: HashMap::new(),
            dir,
        };
        let wait = async {
            while !bound(&server.addrs) {
                match addr_rx.recv().await {
                    Some((listener, addr)) => {
                        server.addrs.insert(listener, addr);
                    }
                    None => break,
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .is_err()
            || !bound(&server.addrs)
        {
            bail!(
                "{name} did not bind its listeners; output:\n{}",
                server.output()
            );
        }
        Ok(server)
    }

    /// The base URL of a listener, e.g. `http://127.0.0.1:4321`.
    pub fn url(&self, listener: &str) -> String {
        format!("http://{}", self.addrs[listener])
    }

    /// Everything the process wrote to standard error so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// SIGKILL: the process dies at once, with whatever it held.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.map_err(Into::into)
    }

    /// Sends SIGTERM and waits for the exit status, failing after `timeout`.
    pub async fn terminate(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("process already reaped")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "{} did not exit within {timeout:?}; output:\n{}",
                    self.name,
                    self.output()
                )
            })?
            .map_err(Into::into)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} output ----\n{}\n----", self.name, self.output());
        }
    }
}

impl Server {
    /// Its Prometheus exposition (`/metrics` on the admin listener), as text.
    pub async fn metrics(&self) -> String {
        crate::http_client(std::time::Duration::from_secs(10))
            .get(format!("{}/metrics", self.url("admin")))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}
