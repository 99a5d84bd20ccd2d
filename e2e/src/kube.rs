//! A real Kubernetes API server for tests, started by `e2e/k8s/envtest.sh` (etcd,
//! kube-apiserver and kube-controller-manager built from Debian's packages, cached under
//! `/var/tmp/quartet/k8s`; no scheduler and no kubelet, so pods never run by themselves).

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
    // With the controller-manager: its garbage collector and its StatefulSet controller are
    // part of what the operator's tests check.
    let out = tokio::process::Command::new(&script)
        .env("QUARTET_K8S_KCM", "1")
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

/// The operator binary as the Helm chart runs it: the chart installed (release `op<tag>` in
/// namespace `quartet-op<tag>`), the operator impersonating the chart's ServiceAccount, so a
/// test of what it does also proves the chart's RBAC grants enough — and no more.
pub struct Operator {
    /// The operator process.
    pub server: crate::process::Server,
    /// The Helm release.
    pub release: String,
    /// The release's namespace.
    pub namespace: String,
    tools: Tools,
}

impl Operator {
    /// Installs the chart and starts the operator against the test API server; `tag` keeps
    /// release names apart (the ClusterRole is cluster-wide and named after the release).
    pub async fn start(tools: &Tools, tag: &str) -> anyhow::Result<Self> {
        Self::start_with(tools, tag, false).await
    }

    /// Like [`Operator::start`]; `namespaced` installs the chart with `clusterWide=false` (a
    /// Role in the release's namespace) and runs the operator as the chart then does, on
    /// that namespace only.
    pub async fn start_with(tools: &Tools, tag: &str, namespaced: bool) -> anyhow::Result<Self> {
        Self::start_with_values(tools, tag, namespaced, &[]).await
    }

    /// Like [`Operator::start_with`], the chart installed with `values` too (`key=value`, as
    /// `helm install --set` takes them).
    pub async fn start_with_values(
        tools: &Tools,
        tag: &str,
        namespaced: bool,
        values: &[&str],
    ) -> anyhow::Result<Self> {
        let release = format!("op{tag}");
        let namespace = format!("quartet-{release}");
        let mut args = vec![
            "install",
            &release,
            "charts/quartet",
            "-n",
            &namespace,
            "--create-namespace",
        ];
        if namespaced {
            args.extend(["--set", "clusterWide=false"]);
        }
        for value in values {
            args.extend(["--set", value]);
        }
        let (ok, out, err) = tools.run("helm", &args).await;
        if !ok {
            bail!("helm install failed: {out}{err}");
        }
        let service_account = format!("system:serviceaccount:{namespace}:{release}-quartet");
        let mut env = vec![
            ("KUBECONFIG", tools.kubeconfig.as_str()),
            ("KUBE_RS_DEBUG_IMPERSONATE_USER", service_account.as_str()),
        ];
        if namespaced {
            env.push(("QUARTET_OPERATOR_RECONCILE_NAMESPACE", namespace.as_str()));
        }
        let server = crate::process::Server::start("quartet-operator", false, &env).await?;
        Ok(Self {
            server,
            release,
            namespace,
            tools: tools.clone(),
        })
    }

    /// Stops the operator and uninstalls the chart.
    pub async fn uninstall(mut self) -> anyhow::Result<()> {
        self.server.kill().await?;
        let (ok, out, err) = self
            .tools
            .run("helm", &["uninstall", &self.release, "-n", &self.namespace])
            .await;
        if !ok {
            bail!("helm uninstall failed: {out}{err}");
        }
        Ok(())
    }
}
