//! A quartet-db group as separate processes on loopback, with the faults a test needs: kill
//! (SIGKILL), restart on the same data and ports, pause (SIGSTOP) and resume (SIGCONT).
//!
//! Ports are fixed per node for the group's life, so a restarted node is the same member.
//! The leader is found from each node's `/metrics` (`quartet_db_raft_is_leader`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::process::binary;

/// The MySQL user, password and database every node serves.
pub const USER: &str = "app";
/// See [`USER`].
pub const PASSWORD: &str = "group-secret";
/// See [`USER`].
pub const DATABASE: &str = "app";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One node's fixed addresses.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// gRPC (Raft and admin).
    pub grpc: u16,
    /// REST.
    pub http: u16,
    /// Admin listener (health, metrics).
    pub admin: u16,
    /// MySQL.
    pub mysql: u16,
}

struct Node {
    id: u64,
    /// Started to join an existing group (added through the admin API), not to form one.
    joining: bool,
    ports: Ports,
    child: Option<Child>,
    output: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn new(id: u64, joining: bool) -> anyhow::Result<Self> {
        Ok(Self {
            id,
            joining,
            ports: Ports {
                grpc: free_port()?,
                http: free_port()?,
                admin: free_port()?,
                mysql: free_port()?,
            },
            child: None,
            output: Arc::default(),
        })
    }
}

/// A group of quartet-db processes.
pub struct DbGroup {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
    members: String,
    extra: Vec<String>,
}

impl DbGroup {
    /// Starts `n` nodes forming one group; `extra` flags go to every node.
    pub async fn start(n: usize, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("mysql-password"), PASSWORD)?;
        std::fs::write(dir.path().join("raft-secret"), "e2e-raft-secret")?;
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(Node::new(i as u64 + 1, false)?);
        }
        let members = nodes
            .iter()
            .map(|n| {
                format!(
                    "{}=127.0.0.1:{}/127.0.0.1:{}",
                    n.id, n.ports.grpc, n.ports.mysql
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut group = Self {
            nodes,
            dir,
            members,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        for i in 0..n {
            group.spawn(i)?;
        }
        for i in 0..n {
            group.wait_listening(i).await?;
        }
        Ok(group)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the group has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s addresses.
    pub fn ports(&self, i: usize) -> Ports {
        self.nodes[i].ports
    }

    /// Node `i`'s MySQL address.
    pub fn mysql_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[i].ports.mysql))
    }

    /// A `mysql://` URL for node `i`.
    pub fn mysql_url(&self, i: usize) -> String {
        format!(
            "mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.nodes[i].ports.mysql
        )
    }

    /// Node `i`'s REST base URL.
    pub fn http_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].ports.http)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let data = self.dir.path().join(format!("node-{}", node.id));
        let p = node.ports;
        let mut cmd = Command::new(binary("quartet-db")?);
        cmd.current_dir(self.dir.path())
            .args(["--log-format", "json"])
            .args(["--admin-listen", &format!("127.0.0.1:{}", p.admin)])
            .args(["--grpc-listen", &format!("127.0.0.1:{}", p.grpc)])
            .args(["--http-listen", &format!("127.0.0.1:{}", p.http)])
            .args(["--mysql-listen", &format!("127.0.0.1:{}", p.mysql)])
            .args(["--mysql-user", USER, "--mysql-database", DATABASE])
            .args(["--mysql-password-file", "mysql-password"])
            .args(["--raft-secret-file", "raft-secret"])
            .args(["--storage-path", &data.to_string_lossy()])
            .args(["--raft-node-id", &node.id.to_string()])
            .args(["--raft-initial-members", &self.members])
            .args(["--raft-join", if node.joining { "true" } else { "false" }])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning quartet-db")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let sink = node.output.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        node.child = Some(child);
        Ok(())
    }

    async fn wait_listening(&self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].ports.admin);
        let client = crate::http_client(Duration::from_secs(1));
        let ok = crate::eventually("the node's admin listener", Duration::from_secs(20), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        if let Err(e) = ok {
            bail!("node {} did not start: {e}\n{}", i + 1, self.output(i));
        }
        Ok(())
    }

    /// Starts one more node that waits to be added to the group; returns its index.
    pub async fn start_joiner(&mut self) -> anyhow::Result<usize> {
        self.nodes
            .push(Node::new(self.nodes.len() as u64 + 1, true)?);
        let i = self.nodes.len() - 1;
        self.spawn(i)?;
        self.wait_listening(i).await?;
        Ok(i)
    }

    /// Node `i`'s id in the group.
    pub fn node_id(&self, i: usize) -> u64 {
        self.nodes[i].id
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Stops node `i` with SIGTERM (a clean shutdown) and waits for it to exit.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].child.is_some() {
            self.signal(i, "-TERM")?;
        }
        if let Some(mut child) = self.nodes[i].child.take() {
            tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .with_context(|| format!("node {} did not stop within 30 s of SIGTERM", i + 1))??;
        }
        Ok(())
    }

    /// Starts node `i` again on its data and ports.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i).await?;
        self.spawn(i)?;
        self.wait_listening(i).await
    }

    fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.nodes[i]
            .child
            .as_ref()
            .and_then(Child::id)
            .context("node is not running")?;
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    /// Freezes node `i` (SIGSTOP): it holds its sockets but answers nothing.
    pub fn pause(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "-STOP")
    }

    /// Thaws node `i` (SIGCONT).
    pub fn resume(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "-CONT")
    }

    /// A gauge from node `i`'s `/metrics`, if it answers.
    pub async fn gauge(&self, i: usize, name: &str) -> Option<i64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.nodes[i].ports.admin);
        let body = crate::http_client(Duration::from_millis(500))
            .get(url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map(|v| v as i64)
    }

    /// The node that says it leads, among those running and not paused.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some()
                && self.gauge(i, "quartet_db_raft_is_leader ").await == Some(1)
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until some node leads.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        crate::eventually("a leader", timeout, || self.leader()).await
    }

    /// Node `i`'s applied index.
    pub async fn applied(&self, i: usize) -> Option<i64> {
        self.gauge(i, "quartet_db_raft_applied_index ").await
    }

    /// Everything node `i` logged.
    pub fn output(&self, i: usize) -> String {
        self.nodes[i]
            .output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }
}

impl Drop for DbGroup {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // A paused process must be thawed to die cleanly.
            let _ = self.resume(i);
            if std::thread::panicking() {
                let output = self.output(i);
                let tail: Vec<&str> = output.lines().rev().take(60).collect();
                eprintln!(
                    "---- quartet-db node {} (last lines) ----\n{}\n----",
                    i + 1,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}
