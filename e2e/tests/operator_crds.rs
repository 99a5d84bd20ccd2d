//! The Quartet CRDs, as generated from `operator/src/crd.rs`, on a real kube-apiserver: they
//! install and become established, the API server fills in the schema's defaults, refuses
//! resources the schema rules out (naming the field), and `kubectl get` shows the printer
//! columns and takes the short names.

use kube::api::{Api, DeleteParams, PostParams};
use quartet_operator::crd::{DatabaseCluster, RpcGateway};
use serde_json::json;

#[tokio::test]
async fn the_crds_install_default_validate_and_print() {
    let client = quartet_e2e::kube::client().await.expect("API server");
    quartet_e2e::kube::install_crds(&client, quartet_operator::crd::all())
        .await
        .expect("the CRDs installed");
    let namespace = "default";
    let suffix = std::process::id();

    // Defaults from the schema: an empty spec becomes three replicas with 10Gi volumes.
    let clusters: Api<DatabaseCluster> = Api::namespaced(client.clone(), namespace);
    let name = format!("shop-{suffix}");
    let minimal: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": name}, "spec": {"storage": {}},
    }))
    .expect("a minimal resource");
    let created = clusters
        .create(&PostParams::default(), &minimal)
        .await
        .expect("created");
    assert_eq!(created.spec.workload.replicas, 3);
    assert_eq!(created.spec.storage.size, "10Gi");

    // Out of range, or a backend name that cannot be a label: refused, naming the field.
    let too_many: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": format!("huge-{suffix}")}, "spec": {"replicas": 500},
    }))
    .expect("a resource");
    let refused = clusters
        .create(&PostParams::default(), &too_many)
        .await
        .expect_err("500 replicas refused");
    assert!(refused.to_string().contains("spec.replicas"), "{refused}");
    let no_size: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": format!("nosize-{suffix}")}, "spec": {"storage": {"size": "lots"}},
    }))
    .expect("a resource");
    let refused = clusters
        .create(&PostParams::default(), &no_size)
        .await
        .expect_err("a size that is no quantity refused");
    assert!(
        refused.to_string().contains("spec.storage.size"),
        "{refused}"
    );
    let gateways: Api<RpcGateway> = Api::namespaced(client.clone(), namespace);
    let bad_backend: RpcGateway = serde_json::from_value(json!({
        "apiVersion": "quartet.dev/v1alpha1", "kind": "RpcGateway",
        "metadata": {"name": format!("rpc-{suffix}")},
        "spec": {"backends": [{"name": "Not A Name", "service": "reports", "port": 4242}]},
    }))
    .expect("a resource");
    let refused = gateways
        .create(&PostParams::default(), &bad_backend)
        .await
        .expect_err("a bad backend name refused");
    assert!(refused.to_string().contains("spec.backends"), "{refused}");

    // kubectl: the short name and the printer columns.
    let tools = quartet_e2e::kube::tools()
        .await
        .expect("the test API server");
    let (ok, table, err) = tools
        .run("kubectl", &["get", "qdb", &name, "-n", namespace])
        .await;
    assert!(ok, "{err}");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "VERSION", "READY", "REPLICAS", "AGE"],
        "{table}"
    );
    clusters
        .delete(&name, &DeleteParams::default())
        .await
        .expect("deleted");
}
