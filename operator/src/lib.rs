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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base: BaseSettings::with_admin_port(7159),
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
            tokio::spawn(async move {
                tokio::select! {
                    () = controllers(client) => {}
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

/// The reconcilers, until their watches end.
async fn controllers(client: kube::Client) {
    let ctx = std::sync::Arc::new(reconcile::Ctx::new(client.clone()));
    tracing::info!("reconciling AuthServices, TaskGateways, RpcGateways and DatabaseClusters");
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    tokio::join!(
        control::<crd::AuthService, Deployment, _>(&client, ctx.clone(), reconcile::auth_service),
        control::<crd::TaskGateway, Deployment, _>(&client, ctx.clone(), reconcile::task_gateway),
        control::<crd::RpcGateway, Deployment, _>(&client, ctx.clone(), reconcile::rpc_gateway),
        control::<crd::DatabaseCluster, StatefulSet, _>(
            &client,
            ctx.clone(),
            database::database_cluster
        ),
    );
}

/// One kind's controller: `reconcile` on every change of a `K` or of a workload `W` it owns.
async fn control<K, W, F>(
    client: &kube::Client,
    ctx: std::sync::Arc<reconcile::Ctx>,
    reconcile: impl FnMut(std::sync::Arc<K>, std::sync::Arc<reconcile::Ctx>) -> F,
) where
    K: reconcile::Quartet + kube::Resource<DynamicType = ()>,
    W: kube::Resource<DynamicType = ()>
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
    Controller::new(
        kube::Api::<K>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        kube::Api::<W>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(reconcile, reconcile::error_policy::<K>, ctx)
    .for_each(|outcome| async move {
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "reconciliation not done");
        }
    })
    .await;
}
