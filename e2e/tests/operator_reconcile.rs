//! The operator as a process against a real kube-apiserver (no kubelet: pods never run, so
//! readiness stays at 0): an `AuthService` gets its Deployment, Service, ConfigMap and a
//! generated administrator Secret, applied by the operator's field manager and owned by the
//! resource; a spec change reaches them; the status publishes the endpoints and says in one
//! line what is wrong — all done as the Helm chart's ServiceAccount, so its RBAC is proven
//! sufficient. Gateways that reference it get its endpoints in their settings, an
//! `RpcGateway` its backends as cluster DNS names; a reference to a missing `AuthService` is
//! a condition, then followed once it is fixed. Deleting the `AuthService` lets the
//! controller-manager's garbage collector take everything it owned.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use quartet_operator::crd::{AuthService, RpcGateway, TaskGateway};
use serde_json::json;

#[tokio::test]
async fn an_auth_service_gets_its_objects_and_a_status_that_says_what_is_wrong() {
    let client = quartet_e2e::kube::client().await.expect("API server");
    let tools = quartet_e2e::kube::tools().await.expect("tools");
    quartet_e2e::kube::install_crds(&client, quartet_operator::crd::all())
        .await
        .expect("the CRDs installed");
    // The operator runs as the chart's ServiceAccount (impersonated), so everything below
    // also proves the chart's RBAC is enough.
    let operator = quartet_e2e::kube::Operator::start(&tools, &std::process::id().to_string())
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
    // No store named: SQLite in the pod's scratch directory (the root filesystem is read-only).
    assert_eq!(
        settings.get("QUARTET_AUTH_STORE_URL").map(String::as_str),
        Some("sqlite:///var/lib/quartet/auth.db?mode=rwc")
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

    // The gateways: an RpcGateway wired to the AuthService and its backends by DNS name; a
    // TaskGateway naming an AuthService that does not exist is told so, then fixed.
    let gateways: Api<RpcGateway> = Api::namespaced(client.clone(), namespace);
    let rpc_name = format!("rpc-{}", std::process::id());
    let rpc: RpcGateway = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "RpcGateway", "metadata": {"name": rpc_name},
        "spec": {"replicas": 2, "auth": {"name": name},
                 "backends": [{"name": "reports", "service": "reports-py", "port": 4242, "idempotent": ["daily"]}]},
    }))
    .expect("a resource");
    gateways
        .create(&PostParams::default(), &rpc)
        .await
        .expect("created");
    let rpc_settings = quartet_e2e::eventually(
        "the RpcGateway's settings",
        Duration::from_secs(30),
        || async { configs.get(&format!("{rpc_name}-config")).await.ok()?.data },
    )
    .await
    .expect("the RpcGateway's ConfigMap");
    assert_eq!(
        rpc_settings
            .get("QUARTET_RPC_GATEWAY_RPC_BACKENDS")
            .map(String::as_str),
        Some(format!("reports=tcp://reports-py.{namespace}.svc.cluster.local:4242").as_str())
    );
    assert_eq!(
        rpc_settings
            .get("QUARTET_RPC_GATEWAY_RPC_IDEMPOTENT")
            .map(String::as_str),
        Some("reports.daily")
    );
    assert_eq!(
        rpc_settings.get("QUARTET_RPC_GATEWAY_AUTH_JWKS_URL"),
        status.endpoints.get("jwks")
    );
    // A disruption budget in the API this cluster serves (policy/v1beta1 on 1.20).
    let (ok, budget, err) = tools
        .run(
            "kubectl",
            &[
                "get",
                "pdb",
                &rpc_name,
                "-n",
                namespace,
                "-o",
                "jsonpath={.apiVersion} {.spec.maxUnavailable}",
            ],
        )
        .await;
    assert!(ok, "{err}");
    assert!(
        budget.starts_with("policy/") && budget.ends_with(" 1"),
        "{budget}"
    );
    let rpc_service = services
        .get(&rpc_name)
        .await
        .expect("the RpcGateway's Service");
    let ports: Vec<i32> = rpc_service
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [7130, 7131, 7134]);

    let tasks: Api<TaskGateway> = Api::namespaced(client.clone(), namespace);
    let task_name = format!("tasks-{}", std::process::id());
    let task: TaskGateway = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "TaskGateway", "metadata": {"name": task_name},
        "spec": {"replicas": 1, "auth": {"name": "nobody"}, "redisUrlSecret": {"name": "redis", "key": "url"}},
    }))
    .expect("a resource");
    tasks
        .create(&PostParams::default(), &task)
        .await
        .expect("created");
    let missing =
        quartet_e2e::eventually("the missing reference", Duration::from_secs(30), || async {
            tasks
                .get(&task_name)
                .await
                .ok()?
                .status
                .filter(|s| s.phase.as_deref() == Some("Failed"))
        })
        .await
        .expect("a Failed status");
    assert_eq!(missing.conditions[0].reason, "AuthMissing");
    assert!(
        missing.conditions[0].message.contains("\"nobody\""),
        "{}",
        missing.conditions[0].message
    );
    tasks
        .patch(
            &task_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"auth": {"name": name}}})),
        )
        .await
        .expect("patched");
    let task_deployment = quartet_e2e::eventually(
        "the TaskGateway's Deployment",
        Duration::from_secs(30),
        || async { deployments.get_opt(&task_name).await.ok().flatten() },
    )
    .await
    .expect("made once the reference is fixed");
    let env = task_deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod")
        .containers[0]
        .env
        .clone()
        .unwrap_or_default();
    let broker = env
        .iter()
        .find(|e| e.name == "QUARTET_TASK_GATEWAY_REDIS_BROKER_URL")
        .expect("the broker URL");
    let from = broker
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("from the Secret");
    assert_eq!((from.name.as_str(), from.key.as_str()), ("redis", "url"));

    // A gateway whose AuthService comes later is reconciled when it does: the controllers
    // watch the AuthServices they reference (well within the 10 s retry of a report).
    let late = format!("late-{}", std::process::id());
    let waiting: RpcGateway = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "RpcGateway",
        "metadata": {"name": format!("{late}-rpc")},
        "spec": {"replicas": 1, "auth": {"name": late}},
    }))
    .expect("a resource");
    gateways
        .create(&PostParams::default(), &waiting)
        .await
        .expect("created");
    quartet_e2e::eventually("AuthMissing", Duration::from_secs(30), || async {
        let status = gateways.get(&format!("{late}-rpc")).await.ok()?.status?;
        status
            .conditions
            .iter()
            .any(|c| c.reason == "AuthMissing")
            .then_some(())
    })
    .await
    .expect("reported");
    let late_auth: AuthService = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "AuthService",
        "metadata": {"name": late}, "spec": {"replicas": 1},
    }))
    .expect("a resource");
    auths
        .create(&PostParams::default(), &late_auth)
        .await
        .expect("created");
    quartet_e2e::eventually(
        "the late gateway's Deployment",
        Duration::from_secs(8),
        || async {
            deployments
                .get_opt(&format!("{late}-rpc"))
                .await
                .ok()
                .flatten()
        },
    )
    .await
    .expect("made as soon as its AuthService published its endpoints");
    gateways
        .delete(&format!("{late}-rpc"), &Default::default())
        .await
        .expect("deleted");
    auths
        .delete(&late, &Default::default())
        .await
        .expect("deleted");

    // `kubectl get` of every kind shows its phase, version and ready replicas.
    let (ok, table, err) = tools
        .run(
            "kubectl",
            &[
                "get",
                "authservices,rpcgateways,taskgateways",
                "-n",
                namespace,
            ],
        )
        .await;
    assert!(ok, "{err}");
    assert!(table.contains("PHASE") && table.contains("VERSION") && table.contains("READY"));
    for resource in [&name, &rpc_name, &task_name] {
        let row = table
            .lines()
            .find(|l| {
                l.split('/')
                    .nth(1)
                    .is_some_and(|r| r.starts_with(&format!("{resource} ")))
            })
            .unwrap_or_else(|| panic!("no row for {resource} in {table}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert!(
            ["Progressing", "Failed", "Ready"].contains(&columns[1])
                && columns[2] == env!("CARGO_PKG_VERSION"),
            "{row}"
        );
    }
    // Deleting a resource takes what it owns with it (the controller-manager's garbage
    // collector follows the owner references the operator set).
    auths
        .delete(&name, &Default::default())
        .await
        .expect("deleted");
    quartet_e2e::eventually(
        "the AuthService's objects to be collected",
        Duration::from_secs(60),
        || async {
            let gone = deployments.get_opt(&name).await.ok()?.is_none()
                && services.get_opt(&name).await.ok()?.is_none()
                && configs
                    .get_opt(&format!("{name}-config"))
                    .await
                    .ok()?
                    .is_none()
                && secrets
                    .get_opt(&format!("{name}-admin"))
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await
    .expect("everything it owned is gone");
    operator.uninstall().await.expect("uninstalled");
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
