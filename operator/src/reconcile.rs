//! Reconcilers: each custom resource owns its workload and the objects around it, applied
//! with server-side apply under one field manager, and reports what it sees in its status.
//!
//! The stateless kinds share one shape ([`Shape`]): a Deployment, a Service and a ConfigMap
//! of the service's settings (`spec.config` as its `QUARTET_*` variables), owned by the
//! resource. On top of it:
//! - [`AuthService`]: when the spec names none, a generated Secret with the bootstrap
//!   administrator's password (made once, never replaced); its status publishes the JWKS,
//!   token and issuer endpoints the other kinds reference.
//! - [`TaskGateway`]: the Redis URL from the referenced Secret; the auth settings from the
//!   referenced `AuthService`'s status.
//! - [`RpcGateway`]: `rpc.backends` from the listed Services as cluster DNS names (a headless
//!   Service resolves to its ready pods, which the gateway re-resolves); the auth settings.
//!
//! A reference that cannot be followed (no such `AuthService`, or one not serving yet) is a
//! condition in the status saying so, and a retry — never a crash loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    AuthRef, AuthService, Condition, Plan, RpcGateway, Status, TaskGateway, Workload,
};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "quartet-operator";

/// What every reconciliation needs.
pub struct Ctx {
    /// The API client.
    pub client: kube::Client,
    /// Publishes Events about the resources.
    pub recorder: Recorder,
    /// Failed reconciliations in a row, by resource (`namespace/name`), for the backoff.
    failures: std::sync::Mutex<BTreeMap<String, u32>>,
    /// The cluster's DNS domain (`cluster.local` unless the cluster was set up otherwise).
    pub cluster_domain: String,
    /// The leader (and its term) each `DatabaseCluster` was last seen with, and since when.
    leaders: std::sync::Mutex<BTreeMap<String, (u64, u64, std::time::Instant)>>,
    /// The PodDisruptionBudget API this cluster serves (`policy/v1`, or `policy/v1beta1`
    /// before Kubernetes 1.21), asked once.
    pdb_api: tokio::sync::OnceCell<Option<kube::discovery::ApiResource>>,
}

impl Ctx {
    /// A context for `client` in a cluster whose DNS domain is `cluster_domain`, publishing
    /// Events as `quartet-operator`.
    pub fn new(client: kube::Client, cluster_domain: &str) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            failures: std::sync::Mutex::default(),
            cluster_domain: cluster_domain.to_owned(),
            leaders: std::sync::Mutex::default(),
            pdb_api: tokio::sync::OnceCell::new(),
        }
    }

    /// The PodDisruptionBudget API, discovered rather than assumed: `policy/v1` where the
    /// cluster has it, else `policy/v1beta1`; `None` when it has neither.
    pub(crate) async fn pdb_api(&self) -> Result<Option<&kube::discovery::ApiResource>, Error> {
        let found = self
            .pdb_api
            .get_or_try_init(|| async {
                let policy = kube::discovery::group(&self.client, "policy")
                    .await
                    .map_err(api("discovering the policy API group"))?;
                let versions: Vec<&str> = policy.versions().collect();
                let version = ["v1", "v1beta1"].into_iter().find(|v| versions.contains(v));
                tracing::info!(?version, "PodDisruptionBudget API");
                Ok::<_, Error>(version.map(|v| {
                    kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                        "policy",
                        v,
                        "PodDisruptionBudget",
                    ))
                }))
            })
            .await?;
        Ok(found.as_ref())
    }

    fn failed(&self, key: String) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(key).or_insert(0);
        *count += 1;
        *count
    }

    /// Whether the group of resource `key` has been led by `leader` in `term` for less than
    /// 10 s, as far as this operator has seen.
    pub(crate) fn new_leader(&self, key: &str, leader: u64, term: u64) -> bool {
        let mut leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let seen = leaders.entry(key.to_owned()).or_insert((leader, term, now));
        if (seen.0, seen.1) != (leader, term) {
            *seen = (leader, term, now);
        }
        now.duration_since(seen.2) < Duration::from_secs(10)
    }

    pub(crate) fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

pub(crate) fn key(resource: &impl ResourceExt) -> String {
    format!(
        "{}/{}",
        resource.namespace().unwrap_or_default(),
        resource.name_any()
    )
}

/// After a failed reconciliation: logged, and retried after a delay that grows with the
/// failures in a row of that resource (see [`backoff`]).
pub fn error_policy<K: Quartet>(resource: Arc<K>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let failures = ctx.failed(key(resource.as_ref()));
    tracing::warn!(resource = %key(resource.as_ref()), failures, error = %error, "reconciliation failed");
    backoff(failures)
}

/// Why a reconciliation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The API error.
        source: kube::Error,
    },
    /// The resource cannot be acted on as it is (the message says why, in one line).
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

/// The image of `role` at the resource's version (the operator's own by default).
pub(crate) fn image(role: &str, image: Option<&String>, version: Option<&String>) -> String {
    let repository = image.cloned().unwrap_or_else(|| format!("quartet/{role}"));
    let tag = version
        .cloned()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    format!("{repository}:{tag}")
}

/// The environment variable for a setting: `log.format` of quartet-auth is
/// `QUARTET_AUTH_LOG_FORMAT`.
pub(crate) fn setting_env(prefix: &str, key: &str) -> String {
    format!(
        "{prefix}_{}",
        key.replace(['.', '-'], "_").to_ascii_uppercase()
    )
}

/// A Quartet resource the reconcilers handle: its workload and status.
pub trait Quartet:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The spec's workload part.
    fn workload(&self) -> &Workload;
    /// The status, if written.
    fn status(&self) -> Option<&Status>;
    /// The `AuthService` it takes tokens from, if any.
    fn auth(&self) -> Option<&AuthRef>;
}

macro_rules! quartet {
    ($($kind:ty => |$it:ident| $auth:expr),*) => {$(
        impl Quartet for $kind {
            fn workload(&self) -> &Workload {
                &self.spec.workload
            }
            fn status(&self) -> Option<&Status> {
                self.status.as_ref()
            }
            fn auth(&self) -> Option<&AuthRef> {
                let $it = self;
                $auth
            }
        }
    )*};
}
quartet!(
    AuthService => |_it| None,
    TaskGateway => |it| it.spec.auth.as_ref(),
    RpcGateway => |it| it.spec.auth.as_ref(),
    crate::crd::DatabaseCluster => |it| it.spec.auth.as_ref()
);

pub(crate) fn owner<K: Quartet>(resource: &K) -> serde_json::Value {
    json!([{
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "name": resource.name_any(),
        "uid": resource.uid().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// Applies `object` (JSON with apiVersion, kind, metadata.name) as the operator.
pub(crate) async fn apply<K>(
    api: &Api<K>,
    name: &str,
    object: serde_json::Value,
) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(api_err(K::kind(&()).as_ref(), name))
}

pub(crate) fn api_err(kind: &str, name: &str) -> impl FnOnce(kube::Error) -> Error {
    api(format!("applying {kind} {name}"))
}

/// A random password: 24 characters from a 62-character alphabet (about 143 bits).
pub(crate) fn password() -> Result<String, Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// What differs between the stateless kinds' workloads.
struct Shape {
    /// The image and container name: `auth`, `task-gateway`, `rpc-gateway`.
    role: &'static str,
    /// The service's variable prefix: `QUARTET_AUTH`.
    prefix: &'static str,
    /// The ports: name and number (the Service exposes all but `admin`).
    ports: &'static [(&'static str, i32)],
    /// Settings the operator sets (the spec's own win, except these).
    settings: BTreeMap<String, String>,
    /// Variables from Secrets (`env` entries).
    env: Vec<serde_json::Value>,
    /// Secret volumes: name, Secret, key, mount path (the file is named after the key).
    secret_files: Vec<(String, String, String, String)>,
    /// A writable scratch directory (an emptyDir: it goes with the pod), as the root
    /// filesystem is read-only.
    scratch: Option<&'static str>,
}

/// Applies the ConfigMap, Deployment and Service of `resource` in `shape`; the Deployment as
/// the API server has it.
async fn apply_workload<K: Quartet>(
    ctx: &Ctx,
    resource: &K,
    shape: Shape,
) -> Result<Deployment, Error> {
    let name = resource.name_any();
    let namespace = resource.namespace().unwrap_or_default();
    let workload = resource.workload();
    let mut settings: BTreeMap<String, String> = workload
        .config
        .iter()
        .map(|(k, v)| (setting_env(shape.prefix, k), v.clone()))
        .collect();
    settings.extend(shape.settings);
    let app = format!("quartet-{}", shape.role);
    let labels = json!({"app.kubernetes.io/name": app, "app.kubernetes.io/instance": name,
                        "app.kubernetes.io/managed-by": MANAGER});
    let selector = json!({"app.kubernetes.io/name": app, "app.kubernetes.io/instance": name});
    let configs: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    apply(&configs, &format!("{name}-config"), json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("{name}-config"), "namespace": namespace, "labels": labels, "ownerReferences": owner(resource)},
        "data": settings,
    }))
    .await?;
    // The protocol spelled out: server-side apply keys ports by port and protocol, and
    // Kubernetes 1.20 has no default for it in the apply schema.
    let container_ports: Vec<serde_json::Value> = shape
        .ports
        .iter()
        .map(|(port_name, port)| json!({"name": port_name, "containerPort": port, "protocol": "TCP"}))
        .collect();
    let service_ports: Vec<serde_json::Value> = shape
        .ports
        .iter()
        .filter(|(port_name, _)| *port_name != "admin")
        .map(|(port_name, port)| json!({"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}))
        .collect();
    let mounts: Vec<serde_json::Value> = shape
        .secret_files
        .iter()
        .map(|(volume, _, _, path)| json!({"name": volume, "mountPath": path, "readOnly": true}))
        .collect();
    let mut volumes: Vec<serde_json::Value> = shape
        .secret_files
        .iter()
        .map(|(volume, secret, key, _)| json!({"name": volume, "secret": {"secretName": secret, "items": [{"key": key, "path": key}]}}))
        .collect();
    let mut mounts = mounts;
    if let Some(path) = shape.scratch {
        volumes.push(json!({"name": "scratch", "emptyDir": {}}));
        mounts.push(json!({"name": "scratch", "mountPath": path}));
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let deployment = apply(&deployments, &name, json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner(resource)},
        "spec": {
            "replicas": workload.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": shape.role,
                        "image": image(shape.role, workload.image.as_ref(), workload.version.as_ref()),
                        "envFrom": [{"configMapRef": {"name": format!("{name}-config")}}],
                        "env": shape.env,
                        "ports": container_ports,
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}},
                        "resources": workload.resources,
                        "volumeMounts": mounts,
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                    "volumes": volumes,
                },
            },
        },
    }))
    .await?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    apply(&services, &name, json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner(resource)},
        "spec": {"selector": selector, "ports": service_ports},
    }))
    .await?;
    apply_budget(ctx, resource, &labels, &selector).await?;
    Ok(deployment)
}

/// The PodDisruptionBudget of `resource`'s pods: voluntary disruptions (node drains) take one
/// replica at a time. Skipped on a cluster without the policy API.
pub(crate) async fn apply_budget<K: Quartet>(
    ctx: &Ctx,
    resource: &K,
    labels: &serde_json::Value,
    selector: &serde_json::Value,
) -> Result<(), Error> {
    let name = resource.name_any();
    let namespace = resource.namespace().unwrap_or_default();
    if let Some(pdb) = ctx.pdb_api().await? {
        let budgets: Api<kube::api::DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &namespace, pdb);
        budgets
            .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(json!({
                "apiVersion": pdb.api_version, "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner(resource)},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
            })))
            .await
            .map_err(api_err("PodDisruptionBudget", &name))?;
    }
    Ok(())
}

/// Ends a reconciliation that found something to report: the status says it (phase
/// `Failed`, the reason and one line), and it is tried again in 10 s — what it waits on
/// (a referenced resource publishing its endpoints, a Secret) is often fixed by then.
pub(crate) async fn report<K: Quartet>(
    ctx: &Ctx,
    resource: &K,
    reason: &str,
    message: &str,
    endpoints: BTreeMap<String, String>,
) -> Result<Action, Error> {
    set_status(
        resource,
        ctx,
        Report {
            ready: 0,
            failed: true,
            reason,
            message,
            endpoints,
            plan: None,
        },
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(10)))
}

/// The ready replicas a Deployment reports.
fn ready(deployment: &Deployment) -> i32 {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// Ends a reconciliation that applied everything: the status from the `ready` replicas;
/// looked at again soon while some are not.
pub(crate) async fn settle<K: Quartet>(
    ctx: &Ctx,
    resource: &K,
    ready: i32,
    endpoints: BTreeMap<String, String>,
) -> Result<Action, Error> {
    let replicas = resource.workload().replicas;
    let message = format!("{ready} of {replicas} replicas ready");
    let reason = if ready >= replicas {
        "ReplicasReady"
    } else {
        "ReplicasStarting"
    };
    set_status(
        resource,
        ctx,
        Report {
            ready,
            failed: false,
            reason,
            message: &message,
            endpoints,
            plan: None,
        },
    )
    .await?;
    ctx.succeeded(&key(resource));
    let again = if ready >= replicas { 60 } else { 5 };
    Ok(Action::requeue(Duration::from_secs(again)))
}

/// The auth settings of a service (`{prefix}_AUTH_JWKS_URL`, `_ISSUER`) from the referenced
/// `AuthService`'s status; `Err((reason, message))` when it cannot be followed yet.
pub(crate) async fn auth_settings(
    ctx: &Ctx,
    namespace: &str,
    prefix: &str,
    reference: Option<&AuthRef>,
) -> Result<Result<BTreeMap<String, String>, (&'static str, String)>, Error> {
    let Some(reference) = reference else {
        return Ok(Ok(BTreeMap::new()));
    };
    let auths: Api<AuthService> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(auth) = auths
        .get_opt(&reference.name)
        .await
        .map_err(api("reading the referenced AuthService"))?
    else {
        return Ok(Err((
            "AuthMissing",
            format!(
                "spec.auth names AuthService {:?}, which does not exist in namespace {namespace}",
                reference.name
            ),
        )));
    };
    let endpoints = auth.status.map(|s| s.endpoints).unwrap_or_default();
    match (endpoints.get("jwks"), endpoints.get("issuer")) {
        (Some(jwks), Some(issuer)) => Ok(Ok(BTreeMap::from([
            (format!("{prefix}_AUTH_JWKS_URL"), jwks.clone()),
            (format!("{prefix}_AUTH_ISSUER"), issuer.clone()),
        ]))),
        _ => Ok(Err((
            "AuthPending",
            format!(
                "AuthService {:?} has not published its endpoints yet",
                reference.name
            ),
        ))),
    }
}

/// The Secret `name` of `resource`, made with `data` (and a Normal Event saying it holds
/// `what`) when it does not exist, never replaced: what it holds may be in use.
pub(crate) async fn generated_secret<K: Quartet>(
    ctx: &Ctx,
    resource: &K,
    name: &str,
    what: &str,
    data: BTreeMap<&str, String>,
) -> Result<Secret, Error> {
    let namespace = resource.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(secret) = secrets
        .get_opt(name)
        .await
        .map_err(api(format!("reading Secret {name}")))?
    {
        return Ok(secret);
    }
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": owner(resource),
                     "labels": {"app.kubernetes.io/managed-by": MANAGER, "app.kubernetes.io/instance": resource.name_any()}},
        "stringData": data,
    }))
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .map_err(api(format!("creating Secret {name}")))?;
    emit(
        ctx,
        resource,
        EventType::Normal,
        "SecretCreated",
        &format!("generated {what} in Secret {name}"),
    )
    .await;
    Ok(created)
}

/// Brings an `AuthService`'s objects to its spec and its status to what is observed.
pub async fn auth_service(auth: Arc<AuthService>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = auth.name_any();
    let namespace = auth
        .namespace()
        .ok_or_else(|| Error::Invalid("an AuthService is namespaced".into()))?;
    let spec = &auth.spec;
    let http = format!("http://{name}.{namespace}.svc:7111");
    let endpoints = BTreeMap::from([
        ("jwks".into(), format!("{http}/.well-known/jwks.json")),
        ("token".into(), format!("{http}/oauth2/token")),
        ("issuer".into(), http.clone()),
    ]);
    if spec.workload.replicas > 1 && spec.store_url_secret.is_none() {
        let message =
            "more than one replica needs a shared store: set spec.storeUrlSecret (PostgreSQL)";
        // The endpoints stay published: Kubernetes 1.20's server-side apply turns a field
        // dropped from the status into a null the schema refuses.
        return report(&ctx, &*auth, "StoreRequired", message, endpoints).await;
    }

    // The administrator's password: the user's Secret, or one made here once.
    let (admin_secret, admin_key) = match &spec.admin_password_secret {
        Some(s) => (s.name.clone(), s.key.clone()),
        None => {
            let generated = format!("{name}-admin");
            generated_secret(
                &ctx,
                &*auth,
                &generated,
                "the administrator's password",
                BTreeMap::from([("password", password()?)]),
            )
            .await?;
            (generated, "password".to_owned())
        }
    };
    let mut env = vec![];
    let mut settings = BTreeMap::from([
        ("QUARTET_AUTH_TOKENS_ISSUER".into(), http.clone()),
        ("QUARTET_AUTH_BOOTSTRAP_ADMIN_USER".into(), "admin".into()),
        (
            "QUARTET_AUTH_BOOTSTRAP_ADMIN_PASSWORD_FILE".into(),
            format!("/var/run/quartet/admin/{admin_key}"),
        ),
    ]);
    match &spec.store_url_secret {
        Some(store) => env.push(json!({"name": "QUARTET_AUTH_STORE_URL",
                        "valueFrom": {"secretKeyRef": {"name": store.name, "key": store.key}}})),
        // One replica without a store keeps SQLite in the pod's scratch directory: its users
        // and roles go with the pod (a PostgreSQL store is for anything that must last).
        None => {
            settings.insert(
                "QUARTET_AUTH_STORE_URL".into(),
                "sqlite:///var/lib/quartet/auth.db?mode=rwc".into(),
            );
        }
    }
    let shape = Shape {
        role: "auth",
        prefix: "QUARTET_AUTH",
        ports: &[("grpc", 7110), ("http", 7111), ("admin", 7119)],
        settings,
        env,
        secret_files: vec![(
            "admin".into(),
            admin_secret,
            admin_key,
            "/var/run/quartet/admin".into(),
        )],
        scratch: Some("/var/lib/quartet"),
    };
    let deployment = apply_workload(&ctx, &*auth, shape).await?;
    settle(&ctx, &*auth, ready(&deployment), endpoints).await
}

/// Brings a `TaskGateway`'s objects to its spec: its Redis from the referenced Secret, its
/// token verification from the referenced `AuthService`.
pub async fn task_gateway(gateway: Arc<TaskGateway>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let namespace = gateway.namespace().unwrap_or_default();
    const PREFIX: &str = "QUARTET_TASK_GATEWAY";
    let settings = match auth_settings(&ctx, &namespace, PREFIX, gateway.spec.auth.as_ref()).await?
    {
        Ok(settings) => settings,
        Err((reason, message)) => {
            return report(&ctx, &*gateway, reason, &message, BTreeMap::new()).await;
        }
    };
    let redis = &gateway.spec.redis_url_secret;
    let from_secret = |variable: &str| {
        json!({"name": variable,
        "valueFrom": {"secretKeyRef": {"name": redis.name, "key": redis.key}}})
    };
    let shape = Shape {
        role: "task-gateway",
        prefix: PREFIX,
        ports: &[("grpc", 7120), ("http", 7121), ("admin", 7129)],
        settings,
        env: vec![
            from_secret("QUARTET_TASK_GATEWAY_REDIS_BROKER_URL"),
            from_secret("QUARTET_TASK_GATEWAY_REDIS_RESULT_URL"),
        ],
        secret_files: vec![],
        scratch: None,
    };
    let deployment = apply_workload(&ctx, &*gateway, shape).await?;
    settle(&ctx, &*gateway, ready(&deployment), BTreeMap::new()).await
}

/// Brings an `RpcGateway`'s objects to its spec: each backend Service as a cluster DNS name
/// (a headless Service's name resolves to its ready pods), token verification from the
/// referenced `AuthService`, the zerorpc front on every interface of the pod.
pub async fn rpc_gateway(gateway: Arc<RpcGateway>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let namespace = gateway.namespace().unwrap_or_default();
    const PREFIX: &str = "QUARTET_RPC_GATEWAY";
    let mut settings =
        match auth_settings(&ctx, &namespace, PREFIX, gateway.spec.auth.as_ref()).await? {
            Ok(settings) => settings,
            Err((reason, message)) => {
                return report(&ctx, &*gateway, reason, &message, BTreeMap::new()).await;
            }
        };
    let backends: Vec<String> = gateway
        .spec
        .backends
        .iter()
        .map(|b| {
            format!(
                "{}=tcp://{}.{namespace}.svc.{}:{}",
                b.name, b.service, ctx.cluster_domain, b.port
            )
        })
        .collect();
    let idempotent: Vec<String> = gateway
        .spec
        .backends
        .iter()
        .flat_map(|b| b.idempotent.iter().map(move |m| format!("{}.{m}", b.name)))
        .collect();
    settings.insert(format!("{PREFIX}_RPC_BACKENDS"), backends.join(","));
    settings.insert(format!("{PREFIX}_RPC_IDEMPOTENT"), idempotent.join(","));
    settings.insert(
        format!("{PREFIX}_RPC_ZERORPC_LISTEN"),
        "tcp://0.0.0.0:7134".into(),
    );
    let shape = Shape {
        role: "rpc-gateway",
        prefix: PREFIX,
        ports: &[
            ("grpc", 7130),
            ("http", 7131),
            ("zerorpc", 7134),
            ("admin", 7139),
        ],
        settings,
        env: vec![],
        secret_files: vec![],
        scratch: None,
    };
    let deployment = apply_workload(&ctx, &*gateway, shape).await?;
    settle(&ctx, &*gateway, ready(&deployment), BTreeMap::new()).await
}

/// What a reconciliation observed, for the status.
pub(crate) struct Report<'a> {
    /// Replicas ready.
    pub ready: i32,
    /// The spec cannot be carried out as it is (phase `Failed`).
    pub failed: bool,
    /// The `Ready` condition's reason, one CamelCase word.
    pub reason: &'a str,
    /// Its message, one line.
    pub message: &'a str,
    /// What other resources use.
    pub endpoints: BTreeMap<String, String>,
    /// The change in progress; while there is one the resource is not ready.
    pub plan: Option<Plan>,
}

/// Writes the status: phase, version, ready replicas, the `Ready` condition (its transition
/// time kept while its status holds), the plan, the endpoints, `observedGeneration`. A new
/// failure reason is also a Warning Event.
pub(crate) async fn set_status<K: Quartet>(
    resource: &K,
    ctx: &Ctx,
    report: Report<'_>,
) -> Result<(), Error> {
    let Report {
        ready,
        failed,
        reason,
        message,
        endpoints,
        plan,
    } = report;
    let name = resource.name_any();
    let namespace = resource.namespace().unwrap_or_default();
    let workload = resource.workload();
    let is_ready = !failed && plan.is_none() && ready >= workload.replicas;
    let condition_status = if is_ready { "True" } else { "False" };
    let previous = resource
        .status()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let since = previous
        .filter(|c| c.status == condition_status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().to_string());
    let phase = match (failed, is_ready) {
        (true, _) => "Failed",
        (_, true) => "Ready",
        _ => "Progressing",
    };
    let status = Status {
        phase: Some(phase.into()),
        version: Some(
            workload
                .version
                .clone()
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
        ),
        ready_replicas: ready,
        observed_generation: resource.meta().generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: condition_status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: since,
        }],
        plan,
        // Set by the database reconciler (a merge patch); kept as it is.
        formed: resource.status().is_some_and(|s| s.formed),
        // The database reconciler's own (merge patches); an apply of an older copy must not
        // write them back.
        incarnations: BTreeMap::new(),
        endpoints,
    };
    if previous.is_none_or(|c| c.reason != reason) && failed {
        emit(ctx, resource, EventType::Warning, reason, message).await;
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(
            json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status}),
        ),
    )
    .await
    .map_err(api_err(&format!("{} status", K::kind(&())), &name))?;
    Ok(())
}

pub(crate) async fn emit<K: Quartet>(
    ctx: &Ctx,
    resource: &K,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &resource.object_ref(&()))
        .await
    {
        tracing::warn!(error = %e, "could not publish an Event");
    }
}

/// The delay before retrying after `failures` failed reconciliations in a row: 5 s, doubling,
/// at most 5 min.
pub fn backoff(failures: u32) -> Action {
    let seconds = 5u64
        .saturating_mul(1 << failures.saturating_sub(1).min(6))
        .min(300);
    Action::requeue(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_the_services_variables_and_images_default_to_ours() {
        assert_eq!(
            setting_env("QUARTET_AUTH", "log.format"),
            "QUARTET_AUTH_LOG_FORMAT"
        );
        assert_eq!(
            setting_env("QUARTET_AUTH", "tokens.access-ttl"),
            "QUARTET_AUTH_TOKENS_ACCESS_TTL"
        );
        assert_eq!(
            image("auth", None, None),
            format!("quartet/auth:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            image("auth", Some(&"reg/auth".into()), Some(&"0.2.0".into())),
            "reg/auth:0.2.0"
        );
    }

    #[test]
    fn the_backoff_doubles_up_to_five_minutes() {
        let delays: Vec<Action> = [1, 2, 3, 10].into_iter().map(backoff).collect();
        assert_eq!(
            delays,
            [5, 10, 20, 300].map(|s| Action::requeue(Duration::from_secs(s)))
        );
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let (a, b) = (password().expect("random"), password().expect("random"));
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
