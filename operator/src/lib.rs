//! `quartet-operator`: runs the Quartet services on Kubernetes through custom resources.
//!
//! The process shell shared with every Quartet server (configuration, admin listener with
//! health and metrics, telemetry, graceful shutdown), the custom resources ([`crd`]), whose
//! CRDs `quartet-crdgen` writes into the Helm chart, and the reconcilers: [`reconcile`] for
//! `AuthService`, `TaskGateway` and `RpcGateway`, [`database`] for `DatabaseCluster`, whose
//! membership changes are planned by [`membership`] and made through [`dbadmin`].

pub mod crd;
pub mod database;
pub mod dbadmin;
pub mod membership;
pub mod reconcile;

use quartet_kit::BaseSettings;
use quartet_kit::app::{Context, Listeners, ServiceConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The binary's name, also its `service.name` in traces and its `QUARTET_*` prefix.
pub const SERVICE: &str = "quartet-operator";

/// One line for `--help`.
pub const ABOUT: &str = "Kubernetes operator for the Quartet services.";

/// Every setting of `quartet-operator`; `quartet-operator --config-reference` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Logging, admin listener and shutdown, shared with every Quartet process.
    #[serde(flatten)]
    pub base: BaseSettings,
    /// What the operator reconciles.
    pub reconcile: ReconcileSettings,
}

/// What the operator reconciles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReconcileSettings {
    /// The namespace whose resources it reconciles (the chart's `clusterWide: false` sets its own); empty: every namespace, which needs the chart's ClusterRole.
    pub namespace: String,
    /// The cluster's DNS domain, in the names replicas and gateways reach each other by.
    pub cluster_domain: String,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            namespace: String::new(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base: BaseSettings::with_admin_port(7159),
            reconcile: ReconcileSettings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn base(&self) -> &BaseSettings {
        &self.base
    }
}

/// Runs the reconcilers when a Kubernetes API is reachable (in a pod, or through
/// `KUBECONFIG`), and serves the admin listener until a stop signal.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    match kube::Client::try_default().await {
        Ok(client) => {
            let stop = ctx.shutdown.token();
            let namespace = Some(config.reconcile.namespace.clone()).filter(|n| !n.is_empty());
            let domain = config.reconcile.cluster_domain.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = controllers(client, namespace, &domain) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "no Kubernetes API reachable: the reconcilers are off")
        }
    }
    ctx.serve(Listeners::admin_only(&config.base), |_| {})
        .await?;
    Ok(())
}

/// The reconcilers, of `namespace` or of every namespace, until their watches end.
async fn controllers(client: kube::Client, namespace: Option<String>, cluster_domain: &str) {
    let ctx = std::sync::Arc::new(reconcile::Ctx::new(client.clone(), cluster_domain));
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "reconciling AuthServices, TaskGateways, RpcGateways and DatabaseClusters"
    );
    let namespace = namespace.as_deref();
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    tokio::join!(
        control::<crd::AuthService, Deployment, _>(
            &client,
            namespace,
            ctx.clone(),
            reconcile::auth_service
        ),
        control::<crd::TaskGateway, Deployment, _>(
            &client,
            namespace,
            ctx.clone(),
            reconcile::task_gateway
        ),
        control::<crd::RpcGateway, Deployment, _>(
            &client,
            namespace,
            ctx.clone(),
            reconcile::rpc_gateway
        ),
        control::<crd::DatabaseCluster, StatefulSet, _>(
            &client,
            namespace,
            ctx.clone(),
            database::database_cluster
        ),
    );
}

/// One kind's controller: `reconcile` on every change of a `K`, of a workload `W` it owns,
/// or of the `AuthService` it references (whose published endpoints it takes), in
/// `namespace` or in all.
async fn control<K, W, F>(
    client: &kube::Client,
    namespace: Option<&str>,
    ctx: std::sync::Arc<reconcile::Ctx>,
    reconcile: impl FnMut(std::sync::Arc<K>, std::sync::Arc<reconcile::Ctx>) -> F,
) where
    K: reconcile::Quartet + kube::Resource<DynamicType = ()>,
    W: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: std::future::Future<Output = Result<kube::runtime::controller::Action, reconcile::Error>>
        + Send
        + 'static,
{
    use futures::StreamExt as _;
    use kube::runtime::{Controller, watcher};
    fn api<T: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>>(
        client: &kube::Client,
        namespace: Option<&str>,
    ) -> kube::Api<T> {
        match namespace {
            Some(n) => kube::Api::namespaced(client.clone(), n),
            None => kube::Api::all(client.clone()),
        }
    }
    let controller = Controller::new(api::<K>(client, namespace), watcher::Config::default());
    let resources = controller.store();
    controller
        .owns(api::<W>(client, namespace), watcher::Config::default())
        .watches(
            api::<crd::AuthService>(client, namespace),
            watcher::Config::default(),
            move |auth| {
                use kube::ResourceExt as _;
                resources
                    .state()
                    .into_iter()
                    .filter(|r| {
                        r.namespace() == auth.namespace()
                            && r.auth().is_some_and(|a| a.name == auth.name_any())
                    })
                    .map(|r| kube::runtime::reflector::ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, reconcile::error_policy::<K>, ctx)
        .for_each(|outcome| async move {
            match outcome {
                Ok(_) => {}
                // Already logged, with the backoff, by the error policy; or an object gone.
                Err(
                    kube::runtime::controller::Error::ReconcilerFailed(..)
                    | kube::runtime::controller::Error::ObjectNotFound(..),
                ) => {}
                // A watch the cluster refuses (RBAC) or that fails: the operator is blind to
                // some of what it should see — say so.
                Err(e) => tracing::warn!(error = %e, "controller error"),
            }
        })
        .await;
}
