//! `quartet-operator`: runs the Quartet services on Kubernetes through custom resources.
//!
//! Today the crate holds the process shell shared with every Quartet server (configuration,
//! admin listener with health and metrics, telemetry, graceful shutdown) and the custom
//! resources ([`crd`]), whose CRDs `quartet-crdgen` writes into the Helm chart. The
//! reconcilers and the database admin client follow (issue 7).

pub mod crd;

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

/// Serves the operator's admin listener until a stop signal.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    ctx.serve(Listeners::admin_only(&config.base), |_| {})
        .await?;
    Ok(())
}
