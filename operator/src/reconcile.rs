//! Reconcilers: each custom resource owns its workload and the objects around it, applied
//! with server-side apply under one field manager, and reports what it sees in its status.
//!
//! Today: [`AuthService`] — a Deployment, a Service, a ConfigMap of its settings and, when
//! the spec names none, a generated Secret with the bootstrap administrator's password (made
//! once, never rotated behind the user's back). Its status publishes the JWKS and token
//! endpoints that the other resources reference. The other kinds follow the same shape.

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

use crate::crd::{AuthService, Condition, Status};

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
}

impl Ctx {
    /// A context for `client`, publishing Events as `quartet-operator`.
    pub fn new(client: kube::Client) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            failures: std::sync::Mutex::default(),
        }
    }

    fn failed(&self, key: String) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(key).or_insert(0);
        *count += 1;
        *count
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

fn key(resource: &impl ResourceExt) -> String {
    format!(
        "{}/{}",
        resource.namespace().unwrap_or_default(),
        resource.name_any()
    )
}

/// After a failed reconciliation: logged, and retried after a delay that grows with the
/// failures in a row of that resource (see [`backoff`]).
pub fn error_policy(auth: Arc<AuthService>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let failures = ctx.failed(key(auth.as_ref()));
    tracing::warn!(resource = %key(auth.as_ref()), failures, error = %error, "reconciliation failed");
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

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

/// The image of `role` at the resource's version (the operator's own by default).
fn image(role: &str, image: Option<&String>, version: Option<&String>) -> String {
    let repository = image.cloned().unwrap_or_else(|| format!("quartet/{role}"));
    let tag = version
        .cloned()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    format!("{repository}:{tag}")
}

/// The environment variable for a setting: `log.format` of quartet-auth is
/// `QUARTET_AUTH_LOG_FORMAT`.
fn setting_env(prefix: &str, key: &str) -> String {
    format!(
        "{prefix}_{}",
        key.replace(['.', '-'], "_").to_ascii_uppercase()
    )
}

fn owner(auth: &AuthService) -> serde_json::Value {
    json!([{
        "apiVersion": AuthService::api_version(&()),
        "kind": AuthService::kind(&()),
        "name": auth.name_any(),
        "uid": auth.uid().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// Applies `object` (JSON with apiVersion, kind, metadata.name) as the operator.
async fn apply<K>(api: &Api<K>, name: &str, object: serde_json::Value) -> Result<K, Error>
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

fn api_err(kind: &str, name: &str) -> impl FnOnce(kube::Error) -> Error {
    api(format!("applying {kind} {name}"))
}

/// A random password: 24 characters from a 62-character alphabet (about 143 bits).
fn password() -> Result<String, Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// Brings an `AuthService`'s objects to its spec and its status to what is observed.
pub async fn auth_service(auth: Arc<AuthService>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = auth.name_any();
    let namespace = auth
        .namespace()
        .ok_or_else(|| Error::Invalid("an AuthService is namespaced".into()))?;
    let client = ctx.client.clone();
    let spec = &auth.spec;
    if spec.workload.replicas > 1 && spec.store_url_secret.is_none() {
        let message =
            "more than one replica needs a shared store: set spec.storeUrlSecret (PostgreSQL)";
        set_status(&auth, &ctx, None, message, "StoreRequired").await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    // The administrator's password: the user's Secret, or one made here once.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let (admin_secret, admin_key) = match &spec.admin_password_secret {
        Some(s) => (s.name.clone(), s.key.clone()),
        None => {
            let generated = format!("{name}-admin");
            if secrets
                .get_opt(&generated)
                .await
                .map_err(api("reading the admin Secret"))?
                .is_none()
            {
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": generated, "namespace": namespace, "ownerReferences": owner(&auth),
                                 "labels": {"app.kubernetes.io/managed-by": MANAGER, "app.kubernetes.io/instance": name}},
                    "stringData": {"password": password()?},
                }))
                .map_err(|e| Error::Invalid(e.to_string()))?;
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .map_err(api("creating the admin Secret"))?;
                publish(
                    &ctx,
                    &auth,
                    "SecretCreated",
                    &format!("generated the administrator's password in Secret {generated}"),
                )
                .await;
            }
            (generated, "password".to_owned())
        }
    };

    // Settings as environment variables, in a ConfigMap the Deployment reads.
    let mut settings: BTreeMap<String, String> = spec
        .workload
        .config
        .iter()
        .map(|(k, v)| (setting_env("QUARTET_AUTH", k), v.clone()))
        .collect();
    let issuer = format!("http://{name}.{namespace}.svc:7111");
    settings
        .entry("QUARTET_AUTH_TOKENS_ISSUER".into())
        .or_insert_with(|| issuer.clone());
    settings
        .entry("QUARTET_AUTH_BOOTSTRAP_ADMIN_USER".into())
        .or_insert_with(|| "admin".into());
    settings.insert(
        "QUARTET_AUTH_BOOTSTRAP_ADMIN_PASSWORD_FILE".into(),
        "/var/run/quartet/admin/password".into(),
    );
    let labels = json!({"app.kubernetes.io/name": "quartet-auth", "app.kubernetes.io/instance": name,
                        "app.kubernetes.io/managed-by": MANAGER});
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    apply(&configs, &format!("{name}-config"), json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("{name}-config"), "namespace": namespace, "labels": labels, "ownerReferences": owner(&auth)},
        "data": settings,
    }))
    .await?;

    let mut env = vec![];
    if let Some(store) = &spec.store_url_secret {
        env.push(json!({"name": "QUARTET_AUTH_STORE_URL",
                        "valueFrom": {"secretKeyRef": {"name": store.name, "key": store.key}}}));
    }
    let selector =
        json!({"app.kubernetes.io/name": "quartet-auth", "app.kubernetes.io/instance": name});
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = apply(&deployments, &name, json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner(&auth)},
        "spec": {
            "replicas": spec.workload.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "auth",
                        "image": image("auth", spec.workload.image.as_ref(), spec.workload.version.as_ref()),
                        "envFrom": [{"configMapRef": {"name": format!("{name}-config")}}],
                        "env": env,
                        "ports": [{"name": "grpc", "containerPort": 7110, "protocol": "TCP"},
                                  {"name": "http", "containerPort": 7111, "protocol": "TCP"},
                                  {"name": "admin", "containerPort": 7119, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}},
                        "resources": spec.workload.resources,
                        "volumeMounts": [{"name": "admin", "mountPath": "/var/run/quartet/admin", "readOnly": true}],
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                    "volumes": [{"name": "admin", "secret": {"secretName": admin_secret,
                                 "items": [{"key": admin_key, "path": "password"}]}}],
                },
            },
        },
    }))
    .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    apply(&services, &name, json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner(&auth)},
        "spec": {"selector": selector, "ports": [
            // The protocol spelled out: server-side apply keys ports by port and protocol,
            // and Kubernetes 1.20 has no default for it in the apply schema.
            {"name": "grpc", "port": 7110, "targetPort": "grpc", "protocol": "TCP"},
            {"name": "http", "port": 7111, "targetPort": "http", "protocol": "TCP"},
        ]},
    }))
    .await?;

    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let message = format!("{ready} of {} replicas ready", spec.workload.replicas);
    let reason = if ready >= spec.workload.replicas {
        "ReplicasReady"
    } else {
        "ReplicasStarting"
    };
    set_status(&auth, &ctx, Some(ready), &message, reason).await?;
    ctx.succeeded(&key(auth.as_ref()));
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Writes the status: phase, version, ready replicas, the `Ready` condition (its transition
/// time kept while its status holds), the endpoints, `observedGeneration`.
async fn set_status(
    auth: &AuthService,
    ctx: &Ctx,
    ready: Option<i32>,
    message: &str,
    reason: &str,
) -> Result<(), Error> {
    let name = auth.name_any();
    let namespace = auth.namespace().unwrap_or_default();
    let replicas = auth.spec.workload.replicas;
    let is_ready = ready.is_some_and(|r| r >= replicas);
    let condition_status = if is_ready { "True" } else { "False" };
    let previous = auth
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let since = previous
        .filter(|c| c.status == condition_status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().to_string());
    let phase = match (ready, is_ready) {
        (None, _) => "Failed",
        (_, true) => "Ready",
        _ => "Progressing",
    };
    let http = format!("http://{name}.{namespace}.svc:7111");
    let status = Status {
        phase: Some(phase.into()),
        version: Some(
            auth.spec
                .workload
                .version
                .clone()
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
        ),
        ready_replicas: ready.unwrap_or(0),
        observed_generation: auth.meta().generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: condition_status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: since,
        }],
        plan: None,
        endpoints: BTreeMap::from([
            ("jwks".into(), format!("{http}/.well-known/jwks.json")),
            ("token".into(), format!("{http}/oauth2/token")),
            ("issuer".into(), http.clone()),
        ]),
    };
    if previous.is_none_or(|c| c.reason != reason) && ready.is_none() {
        publish_warning(ctx, auth, reason, message).await;
    }
    let api: Api<AuthService> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(json!({"apiVersion": AuthService::api_version(&()), "kind": AuthService::kind(&()), "status": status})),
    )
    .await
    .map_err(api_err("AuthService status", &name))?;
    Ok(())
}

async fn publish(ctx: &Ctx, auth: &AuthService, reason: &str, note: &str) {
    emit(ctx, auth, EventType::Normal, reason, note).await;
}

async fn publish_warning(ctx: &Ctx, auth: &AuthService, reason: &str, note: &str) {
    emit(ctx, auth, EventType::Warning, reason, note).await;
}

async fn emit(ctx: &Ctx, auth: &AuthService, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &auth.object_ref(&())).await {
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
