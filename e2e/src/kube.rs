//! A real Kubernetes API server for tests, started by `e2e/k8s/envtest.sh` (etcd and
//! kube-apiserver built from Debian's packages, cached under `/var/tmp/quartet/k8s`).

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The test API server's kubeconfig and the directory of its `kubectl` and `helm`.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Where `kubectl` and `helm` are.
    pub bin: std::path::PathBuf,
    /// The kubeconfig of the test API server.
    pub kubeconfig: String,
}

impl Tools {
    /// Runs `tool` (`kubectl` or `helm`) with `args` from the repository root against the
    /// test API server: whether it succeeded, its stdout and its stderr.
    pub async fn run(&self, tool: &str, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(self.bin.join(tool))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .current_dir(crate::repo_root())
            .output()
            .await
            .unwrap_or_else(|e| panic!("{tool} runs: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Starts the control plane if it is not running; its kubeconfig and tools.
///
/// The first run on a machine builds kube-apiserver from source (several minutes); `make test`
/// does that before the tests start, so a test only pays for a start (a few seconds).
pub async fn tools() -> anyhow::Result<Tools> {
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
    let env = String::from_utf8_lossy(&env.stdout).into_owned();
    let var = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {key}=")).map(str::to_owned))
            .with_context(|| format!("envtest.sh env printed no {key}"))
    };
    let path = var("PATH")?;
    Ok(Tools {
        bin: std::path::PathBuf::from(path.split(':').next().unwrap_or_default()),
        kubeconfig: var("KUBECONFIG")?,
    })
}

/// Starts the control plane if it is not running and returns a client for it.
pub async fn client() -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(tools().await?.kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Applies `crds` by server-side apply and waits until each is established (30 s at most).
pub async fn install_crds(
    client: &kube::Client,
    crds: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
) -> anyhow::Result<()> {
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::wait;
    let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in crds {
        let name = kube::ResourceExt::name_any(&crd);
        api.patch(
            &name,
            &PatchParams::apply("quartet-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            wait::await_condition(api.clone(), &name, wait::conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established within 30 s"))??;
    }
    Ok(())
}
