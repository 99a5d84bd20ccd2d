//! Containers of Quartet images on a private Docker network, and the faults a distributed
//! test needs: stop, kill, pause, disconnect and reconnect one node.
//!
//! Talks to the Docker engine through the `docker` command line, so there is no client library
//! version to keep in step with the engine. The host reaches each container at its address on
//! the private bridge network.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// The tag e2e tests use for the images `make images-test` builds; override with
/// `QUARTET_E2E_TAG`.
pub fn test_tag() -> String {
    std::env::var("QUARTET_E2E_TAG").unwrap_or_else(|_| "test".to_owned())
}

/// The image of a binary, e.g. `quartet-auth` → `quartet/auth:test`.
pub fn image(binary: &str) -> String {
    format!(
        "quartet/{}:{}",
        binary.trim_start_matches("quartet-"),
        test_tag()
    )
}

/// Runs `docker args…` and returns its standard output, or fails with its standard error.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .await
        .context("running docker (is the engine installed and running?)")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// N containers of one image on their own network. Removed, with the network, on drop.
pub struct Cluster {
    /// The private network's name.
    pub network: String,
    /// Container names, index = node number.
    pub nodes: Vec<String>,
}

impl Cluster {
    /// Starts `n` containers of `image` (which must exist locally) on a fresh network, each
    /// with `args` appended to the image's entrypoint.
    pub async fn start(image: &str, n: usize, args: &[&str]) -> anyhow::Result<Self> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Self::start_each(image, n, |_, _| args.clone()).await
    }

    /// Like [`Cluster::start`], with each node's arguments from `args_for(node, names)`,
    /// where `names` are every node's container (and host) name on the private network.
    pub async fn start_each(
        image: &str,
        n: usize,
        args_for: impl Fn(usize, &[String]) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        if docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .await
            .is_err()
        {
            bail!(
                "image {image} is missing: build it with `make images-test` (or `make test`, which does)"
            );
        }
        let suffix = format!("{}-{}", std::process::id(), nonce());
        let network = format!("quartet-e2e-{suffix}");
        docker(&["network", "create", "--driver", "bridge", &network]).await?;
        let names: Vec<String> = (0..n).map(|i| format!("{network}-{i}")).collect();
        let mut cluster = Self {
            network,
            nodes: Vec::new(),
        };
        for (i, name) in names.iter().enumerate() {
            let args = args_for(i, &names);
            let mut run = vec![
                "run",
                "--detach",
                "--name",
                &name,
                "--network",
                &cluster.network,
                "--hostname",
                name,
                image,
            ];
            run.extend(args.iter().map(String::as_str));
            docker(&run).await?;
            cluster.nodes.push(name.clone());
        }
        Ok(cluster)
    }

    /// Also attaches the node to Docker's default bridge, which has no name resolution: the
    /// host reaches the node there (see [`Cluster::bridge_ip`]) while the other nodes, which
    /// find it by name, reach it only over the private network that faults cut.
    pub async fn attach_bridge(&self, node: usize) -> anyhow::Result<()> {
        docker(&["network", "connect", "bridge", &self.nodes[node]])
            .await
            .map(drop)
    }

    /// The node's address on Docker's default bridge, once attached.
    pub async fn bridge_ip(&self, node: usize) -> anyhow::Result<Option<IpAddr>> {
        let out = docker(&[
            "inspect",
            "--format",
            "{{with index .NetworkSettings.Networks \"bridge\"}}{{.IPAddress}}{{end}}",
            &self.nodes[node],
        ])
        .await?;
        Ok(out.parse().ok())
    }

    /// The node's address on the private network, if it is connected and running.
    pub async fn ip(&self, node: usize) -> anyhow::Result<Option<IpAddr>> {
        let template = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            self.network
        );
        let out = docker(&["inspect", "--format", &template, &self.nodes[node]]).await?;
        Ok(out.parse().ok())
    }

    /// A `docker inspect` field of the node, e.g. `{{.State.ExitCode}}`.
    pub async fn inspect(&self, node: usize, template: &str) -> anyhow::Result<String> {
        docker(&["inspect", "--format", template, &self.nodes[node]]).await
    }

    async fn act(&self, verb: &[&str], node: usize) -> anyhow::Result<()> {
        let mut args = verb.to_vec();
        args.push(&self.nodes[node]);
        docker(&args).await.map(drop)
    }

    /// Graceful stop: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&self, node: usize, grace: Duration) -> anyhow::Result<()> {
        let secs = grace.as_secs().to_string();
        self.act(&["stop", "--time", &secs], node).await
    }

    /// Starts a stopped or killed node again.
    pub async fn start_node(&self, node: usize) -> anyhow::Result<()> {
        self.act(&["start"], node).await
    }

    /// SIGKILL: the process dies without any chance to clean up.
    pub async fn kill(&self, node: usize) -> anyhow::Result<()> {
        self.act(&["kill", "--signal", "KILL"], node).await
    }

    /// Freezes every process of the node (cgroup freezer): alive, but answering nothing.
    pub async fn pause(&self, node: usize) -> anyhow::Result<()> {
        self.act(&["pause"], node).await
    }

    /// Thaws a paused node.
    pub async fn unpause(&self, node: usize) -> anyhow::Result<()> {
        self.act(&["unpause"], node).await
    }

    /// Cuts the node off the private network.
    pub async fn disconnect(&self, node: usize) -> anyhow::Result<()> {
        docker(&[
            "network",
            "disconnect",
            "--force",
            &self.network,
            &self.nodes[node],
        ])
        .await
        .map(drop)
    }

    /// Puts a disconnected node back on the private network.
    pub async fn connect(&self, node: usize) -> anyhow::Result<()> {
        docker(&["network", "connect", &self.network, &self.nodes[node]])
            .await
            .map(drop)
    }

    /// The node's logs so far.
    pub async fn logs(&self, node: usize) -> anyhow::Result<String> {
        let out = Command::new("docker")
            .args(["logs", &self.nodes[node]])
            .output()
            .await?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for node in &self.nodes {
            if panicking
                && let Ok(out) = std::process::Command::new("docker")
                    .args(["logs", "--tail", "200", node])
                    .output()
            {
                eprintln!(
                    "---- logs of {node} ----\n{}{}----",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let _ = std::process::Command::new("docker")
                .args(["rm", "--force", "--volumes", node])
                .output();
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

fn nonce() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}
