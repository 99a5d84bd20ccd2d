//! The custom resources (group `quartet.dev`, version `v1alpha1`), one per service:
//! [`DatabaseCluster`], [`TaskGateway`], [`RpcGateway`] and [`AuthService`]. The Rust types
//! are the single description: the CRDs in `charts/quartet/crds/` are generated from them
//! (`make gen`, checked for drift in CI), with their OpenAPI schema (validation, defaults),
//! printer columns and short names.
//!
//! Every status has the same shape ([`Status`]): a phase, the version running, replica
//! counts, conditions (`type`, `status`, `reason`, `message`, `lastTransitionTime`),
//! `observedGeneration`, and the steps of the plan in progress ([`Plan`]), so that upgrades
//! and rebalancing later report progress the same way.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Quartet resource.
pub const GROUP: &str = "quartet.dev";

/// Declares a Quartet resource's spec: namespaced, in `quartet.dev/v1alpha1`, with the
/// shared [`Status`], the same printer columns (phase, version, ready, replicas, age), and
/// camelCase fields.
macro_rules! resource {
    (
        $(#[$doc:meta])*
        kind = $kind:literal, shortname = $short:literal,
        pub struct $spec:ident { $($body:tt)* }
    ) => {
        $(#[$doc])*
        #[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[kube(
            group = "quartet.dev",
            version = "v1alpha1",
            kind = $kind,
            namespaced,
            shortname = $short,
            status = "Status",
            printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
            printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
            printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
            printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
            printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
        )]
        #[serde(rename_all = "camelCase")]
        pub struct $spec { $($body)* }
    };
}

/// What every Quartet workload has: the version to run, replicas, resources, settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// The Quartet version to run (the image tag), e.g. `0.1.0`; absent, the operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The image repository; absent, `quartet/<role>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// How many replicas.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 99))]
    pub replicas: i32,
    /// CPU and memory requests and limits of each replica, as Kubernetes takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Settings passed to the service as its configuration (keys as in its `--config-reference`, e.g. `log.format`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn default_replicas() -> i32 {
    3
}

/// CPU and memory, as quantities (`500m`, `1Gi`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Resources {
    /// Reserved for each replica: `cpu`, `memory`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// The most each replica may use: `cpu`, `memory`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

/// A key of a Secret in the resource's namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKey {
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The key within it.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// The `AuthService` whose tokens a service accepts, by name, in the same namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthRef {
    /// The `AuthService`'s name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Persistent storage of each replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// The volume's size, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE])?$"))]
    pub size: String,
    /// The StorageClass; empty uses the cluster's default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub storage_class: String,
    /// What happens to the volumes when the resource is deleted: `Retain` (the default) keeps them, `Delete` deletes them. A member removed by scaling down always loses its volume (the group holds its data).
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

/// What happens to a database's volumes when it is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReclaimPolicy {
    /// Keep them, to be reattached by a resource of the same name or removed by hand.
    #[default]
    Retain,
    /// Delete them with the resource.
    Delete,
}

fn default_storage_size() -> String {
    "10Gi".into()
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class: String::new(),
            reclaim_policy: ReclaimPolicy::Retain,
        }
    }
}

resource! {
    /// A sharded, consensus-replicated, MySQL-speaking database: one group of `replicas` members.
    kind = "DatabaseCluster", shortname = "qdb",
    pub struct DatabaseClusterSpec {
        /// Version, replicas (a group's members; odd numbers tolerate the most failures), resources, settings.
        #[serde(flatten)]
        pub workload: Workload,
        /// Each member's volume.
        #[serde(default)]
        pub storage: Storage,
        /// The MySQL user applications connect as, and the Secret key holding its password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub mysql_credentials: Option<MysqlCredentials>,
        /// The `AuthService` whose tokens the admin API accepts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub auth: Option<AuthRef>,
    }
}

/// A MySQL user and where its password is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MysqlCredentials {
    /// The user name.
    #[schemars(length(min = 1))]
    pub user: String,
    /// The Secret key holding the password.
    pub password_secret: SecretKey,
}

resource! {
    /// The Celery-compatible task gateway.
    kind = "TaskGateway", shortname = "qtg",
    pub struct TaskGatewaySpec {
        /// Version, replicas, resources, settings.
        #[serde(flatten)]
        pub workload: Workload,
        /// The Secret key holding the Redis URL (`redis://…`) of the broker and results.
        pub redis_url_secret: SecretKey,
        /// The `AuthService` whose tokens the API accepts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub auth: Option<AuthRef>,
    }
}

resource! {
    /// The zerorpc-compatible RPC gateway.
    kind = "RpcGateway", shortname = "qrpc",
    pub struct RpcGatewaySpec {
        /// Version, replicas, resources, settings.
        #[serde(flatten)]
        pub workload: Workload,
        /// The zerorpc services behind the gateway.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub backends: Vec<RpcBackend>,
        /// The `AuthService` whose tokens the fronts accept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub auth: Option<AuthRef>,
        /// A Secret with `secret` and `public` (Z85 CURVE keys) and optionally `clients` (allowed client keys, comma-separated): the zerorpc front then speaks only CURVE.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub curve_secret: Option<String>,
    }
}

/// A zerorpc service behind the gateway: a Kubernetes Service whose pods serve it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RpcBackend {
    /// The name callers use (`POST /v1/services/{name}/{method}`, `name.method` over zerorpc).
    #[schemars(length(min = 1), regex(pattern = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$"))]
    pub name: String,
    /// The headless Service in this namespace whose pods serve it (one backend per ready pod).
    #[schemars(length(min = 1))]
    pub service: String,
    /// The zerorpc port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Methods safe to retry on another replica when one is lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idempotent: Vec<String>,
}

resource! {
    /// The Shiro-style auth service: users, roles, permissions, tokens.
    kind = "AuthService", shortname = "qauth",
    pub struct AuthServiceSpec {
        /// Version, replicas, resources, settings.
        #[serde(flatten)]
        pub workload: Workload,
        /// The Secret key holding the store's URL (`postgres://…`); required with more than one replica.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub store_url_secret: Option<SecretKey>,
        /// The Secret key holding the bootstrap administrator's password; the operator generates one when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub admin_password_secret: Option<SecretKey>,
    }
}

/// What the operator observed and did, the same for every kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `Pending`, `Progressing`, `Ready` or `Failed`, in one word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The version running on every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Replicas that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, one per type: `Ready`, `Progressing`, `Degraded`, …
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The plan being carried out (scaling, later upgrades and rebalancing), step by step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// `DatabaseCluster`: its group has been formed, and the operator never forms one again
    /// (a replica that lost its data waits to be added instead).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub formed: bool,
    /// `DatabaseCluster`: each member's storage incarnation (by node id) as it was when it
    /// joined; a member reporting another one lost its data and is replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub incarnations: BTreeMap<String, String>,
    /// Endpoints other resources use (an `AuthService` publishes `jwks` and `token` here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
}

/// One aspect of the resource's state, as Kubernetes conditions are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// What it is about, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why, in one CamelCase word, e.g. `ScaleDownRefused`.
    pub reason: String,
    /// Why, in one line a person can act on.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// Steps the operator carries out one at a time, with where it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// What the plan does, e.g. `scale 3 -> 5`.
    pub goal: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The index of the step in progress.
    #[serde(default)]
    pub current: i32,
}

/// One step of a plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// What it does, e.g. `add member 4 as a learner`.
    pub action: String,
    /// `Pending`, `Running`, `Done` or `Failed`.
    pub state: String,
}

/// Every Quartet CRD, for `make gen` and for installing them.
pub fn all()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt as _;
    vec![
        AuthService::crd(),
        DatabaseCluster::crd(),
        RpcGateway::crd(),
        TaskGateway::crd(),
    ]
}
