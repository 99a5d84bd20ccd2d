//! The chart installed with `clusterWide=false` (a Role in the release's namespace) and the
//! operator as that chart runs it. In a file of its own: test binaries run one after another,
//! so no operator watching every namespace runs beside this one.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use quartet_operator::crd::AuthService;
use serde_json::json;

/// With `clusterWide=false` the chart grants a Role in the release's namespace and the
/// operator reconciles there only: a resource there gets its objects; one elsewhere is left
/// alone (and the operator makes no call its Role would refuse).
#[tokio::test]
async fn a_namespaced_install_reconciles_its_own_namespace_only() {
    let client = quartet_e2e::kube::client().await.expect("API server");
    let tools = quartet_e2e::kube::tools().await.expect("tools");
    quartet_e2e::kube::install_crds(&client, quartet_operator::crd::all())
        .await
        .expect("the CRDs installed");
    let operator =
        quartet_e2e::kube::Operator::start_with(&tools, &format!("ns{}", std::process::id()), true)
            .await
            .expect("the operator starts");
    let resource = |name: &str| -> AuthService {
        serde_json::from_value(json!({
            "apiVersion": "quartet.dev/v1alpha1", "kind": "AuthService",
            "metadata": {"name": name}, "spec": {"replicas": 1},
        }))
        .expect("a resource")
    };
    let own: Api<AuthService> = Api::namespaced(client.clone(), &operator.namespace);
    let elsewhere: Api<AuthService> = Api::namespaced(client.clone(), "default");
    let other = format!("elsewhere-{}", std::process::id());
    elsewhere
        .create(&PostParams::default(), &resource(&other))
        .await
        .expect("created");
    own.create(&PostParams::default(), &resource("auth"))
        .await
        .expect("created");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &operator.namespace);
    quartet_e2e::eventually("its Deployment", Duration::from_secs(30), || async {
        deployments.get_opt("auth").await.ok().flatten()
    })
    .await
    .expect("reconciled in its namespace");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let untouched = elsewhere.get(&other).await.expect("there");
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    let output = operator.server.output();
    assert!(
        !output.to_lowercase().contains("forbidden"),
        "a refused call: {output}"
    );
    elsewhere
        .delete(&other, &Default::default())
        .await
        .expect("deleted");
    own.delete("auth", &Default::default())
        .await
        .expect("deleted");
    operator.uninstall().await.expect("uninstalled");
}
