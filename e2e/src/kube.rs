//! A real Kubernetes API server for tests, started by `e2e/k8s/envtest.sh` (etcd and
//! kube-apiserver built from Debian's packages, cached under `/var/tmp/quartet/k8s`).

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Starts the control plane if it is not running and returns a client for it.
///
/// The first run on a machine builds kube-apiserver from source (several minutes); `make test`
/// does that before the tests start, so a test only pays for a start (a few seconds).
pub async fn client() -> anyhow::Result<kube::Client> {
    let script = crate::repo_root().join("e2e/k8s/envtest.sh");
    let out = tokio::process::Command::new(&script)
        .arg("up")
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} up failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let env = tokio::process::Command::new(&script)
        .arg("env")
        .output()
        .await?;
    let kubeconfig_path = String::from_utf8_lossy(&env.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG=").map(str::to_owned))
        .context("envtest.sh env printed no KUBECONFIG")?;
    let kubeconfig = Kubeconfig::read_from(&kubeconfig_path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
