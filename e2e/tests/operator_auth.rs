//! The operator as a process against a real kube-apiserver (no kubelet: pods never run, so
//! readiness stays at 0): an `AuthService` gets its Deployment, Service, ConfigMap and a
//! generated administrator Secret, applied by the operator's field manager and owned by the
//! resource; a spec change reaches them; the status publishes the endpoints and says in one
//! line what is wrong.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use quartet_e2e::process::Server;
use quartet_operator::crd::AuthService;
use serde_json::json;

#[tokio::test]
async fn an_auth_service_gets_its_objects_and_a_status_that_says_what_is_wrong() {
    let client = quartet_e2e::kube::client().await.expect("API server");
    let tools = quartet_e2e::kube::tools().await.expect("tools");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in quartet_operator::crd::all() {
        let name = kube::ResourceExt::name_any(&crd);
        crds.patch(
            &name,
            &PatchParams::apply("quartet-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("CRD applied");
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(
                crds.clone(),
                &name,
                kube::runtime::wait::conditions::is_crd_established(),
            ),
        )
        .await
        .expect("established in time")
        .expect("watching");
    }
    let _operator = Server::start(
        "quartet-operator",
        false,
        &[("KUBECONFIG", tools.kubeconfig.as_str())],
    )
    .await
    .expect("the operator starts");

    let namespace = "default";
    let name = format!("auth-{}", std::process::id());
    let auths: Api<AuthService> = Api::namespaced(client.clone(), namespace);
    let resource: AuthService = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "AuthService",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "config": {"log.format": "text"}},
    }))
    .expect("a resource");
    auths
        .create(&PostParams::default(), &resource)
        .await
        .expect("created");

    // The status comes last, after every object: progressing (no kubelet runs the pod),
    // with the endpoints other resources use.
    let status = quartet_e2e::eventually("the status", Duration::from_secs(30), || async {
        auths
            .get(&name)
            .await
            .ok()
            .and_then(|a| a.status)
            .filter(|s| s.phase.is_some())
    })
    .await
    .expect("a status");
    assert_eq!(status.phase.as_deref(), Some("Progressing"));
    assert_eq!(status.ready_replicas, 0);
    assert_eq!(status.conditions[0].reason, "ReplicasStarting");
    assert_eq!(
        status.endpoints.get("jwks").map(String::as_str),
        Some(format!("http://{name}.{namespace}.svc:7111/.well-known/jwks.json").as_str())
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = deployments.get(&name).await.expect("the Deployment");
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(format!("quartet/auth:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    let secure = container
        .security_context
        .as_ref()
        .expect("security context");
    assert_eq!(secure.read_only_root_filesystem, Some(true));
    assert_eq!(secure.allow_privilege_escalation, Some(false));
    let owners = deployment
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "AuthService" && o.name == name && o.controller == Some(true))
    );
    let managers: Vec<String> = deployment
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert!(
        managers.contains(&"quartet-operator".to_owned()),
        "{managers:?}"
    );

    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    services.get(&name).await.expect("the Service");
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let settings = configs
        .get(&format!("{name}-config"))
        .await
        .expect("the ConfigMap")
        .data
        .unwrap_or_default();
    assert_eq!(
        settings.get("QUARTET_AUTH_LOG_FORMAT").map(String::as_str),
        Some("text")
    );
    assert_eq!(
        settings
            .get("QUARTET_AUTH_TOKENS_ISSUER")
            .map(String::as_str),
        Some(format!("http://{name}.{namespace}.svc:7111").as_str())
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let admin = secrets
        .get(&format!("{name}-admin"))
        .await
        .expect("the generated admin Secret");
    let password = admin
        .data
        .unwrap_or_default()
        .remove("password")
        .expect("a password")
        .0;
    assert_eq!(password.len(), 24);

    // A spec change reaches the Deployment; an impossible one is reported, not crash-looped.
    auths
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"config": {"log.format": "json"}}})),
        )
        .await
        .expect("patched");
    quartet_e2e::eventually("the new setting", Duration::from_secs(30), || async {
        let data = configs.get(&format!("{name}-config")).await.ok()?.data?;
        (data.get("QUARTET_AUTH_LOG_FORMAT")? == "json").then_some(())
    })
    .await
    .expect("the ConfigMap follows the spec");
    auths
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("patched");
    let refused = quartet_e2e::eventually("the refusal", Duration::from_secs(30), || async {
        let auth = auths.get(&name).await.ok()?;
        let status = auth.status?;
        (status.observed_generation == auth.metadata.generation
            && status.phase.as_deref() == Some("Failed"))
        .then_some(status)
    })
    .await
    .expect("a Failed status for three replicas without a store");
    assert_eq!(refused.conditions[0].reason, "StoreRequired");
    assert!(
        refused.conditions[0]
            .message
            .contains("spec.storeUrlSecret")
    );
    let same = secrets
        .get(&format!("{name}-admin"))
        .await
        .expect("still there");
    assert_eq!(
        same.data
            .unwrap_or_default()
            .remove("password")
            .expect("a password")
            .0,
        password,
        "the generated password is never replaced"
    );
    let (ok, events, err) = tools
        .run(
            "kubectl",
            &[
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector",
                &format!("involvedObject.name={name}"),
            ],
        )
        .await;
    assert!(ok, "{err}");
    assert!(
        events.contains("SecretCreated") && events.contains("StoreRequired"),
        "{events}"
    );
}
