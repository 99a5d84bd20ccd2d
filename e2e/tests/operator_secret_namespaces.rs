//! The chart installed with `secretNamespaces` (Secret rights in the listed namespaces only)
//! and the operator, cluster-wide, as that chart runs it. In a file of its own: test binaries
//! run one after another, so no other operator reconciles the resources below.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use quartet_operator::crd::AuthService;
use serde_json::json;

/// With `secretNamespaces` listing the release's namespace, the operator still makes and
/// reads its generated Secret there — the Role per namespace grants enough — and in a
/// namespace not listed it cannot: the resource is not reconciled and the refusal is logged.
#[tokio::test]
async fn secret_rights_in_listed_namespaces_only_are_enough_there_and_refused_elsewhere() {
    let client = quartet_e2e::kube::client().await.expect("API server");
    let tools = quartet_e2e::kube::tools().await.expect("tools");
    quartet_e2e::kube::install_crds(&client, quartet_operator::crd::all())
        .await
        .expect("the CRDs installed");
    let tag = format!("sec{}", std::process::id());
    let listed = format!("quartet-op{tag}");
    let operator = quartet_e2e::kube::Operator::start_with_values(
        &tools,
        &tag,
        false,
        &[&format!("secretNamespaces={{{listed}}}")],
    )
    .await
    .expect("the operator starts");
    let elsewhere = format!("unlisted-{}", std::process::id());
    let (ok, _, err) = tools
        .run("kubectl", &["create", "namespace", &elsewhere])
        .await;
    assert!(ok, "{err}");

    let resource: AuthService = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "AuthService",
        "metadata": {"name": "auth"}, "spec": {"replicas": 1},
    }))
    .expect("a resource");
    for namespace in [&listed, &elsewhere] {
        Api::<AuthService>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &resource)
            .await
            .expect("created");
    }
    // In the listed namespace: the administrator's password generated, then the Deployment.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &listed);
    quartet_e2e::eventually("its Deployment", Duration::from_secs(30), || async {
        deployments.get_opt("auth").await.ok().flatten()
    })
    .await
    .expect("reconciled in the listed namespace");
    Api::<Secret>::namespaced(client.clone(), &listed)
        .get("auth-admin")
        .await
        .expect("the generated Secret");
    // Elsewhere: refused at the Secret, so nothing is made after it.
    quartet_e2e::eventually(
        "the refusal in the log",
        Duration::from_secs(30),
        || async {
            let output = operator.server.output();
            output
                .lines()
                .any(|l| {
                    l.contains("Secret auth-admin")
                        && l.contains("forbidden")
                        && l.contains(&elsewhere)
                })
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", operator.server.output()));
    let untouched: Api<Deployment> = Api::namespaced(client.clone(), &elsewhere);
    assert!(untouched.get_opt("auth").await.expect("read").is_none());
    assert!(
        Api::<Secret>::namespaced(client.clone(), &elsewhere)
            .get_opt("auth-admin")
            .await
            .expect("read")
            .is_none()
    );

    for namespace in [&listed, &elsewhere] {
        Api::<AuthService>::namespaced(client.clone(), namespace)
            .delete("auth", &Default::default())
            .await
            .expect("deleted");
    }
    operator.uninstall().await.expect("uninstalled");
    let (ok, _, err) = tools
        .run(
            "kubectl",
            &["delete", "namespace", &elsewhere, "--wait=false"],
        )
        .await;
    assert!(ok, "{err}");
}
