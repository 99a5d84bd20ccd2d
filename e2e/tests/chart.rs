//! The Helm chart `charts/quartet`: `helm lint` with its values schema, `helm template` with
//! secure pod defaults and the optional parts, and `helm install` / `uninstall` against a real
//! kube-apiserver (no kubelet: the objects are checked, not the pods).

#[tokio::test]
async fn the_chart_lints_renders_secure_defaults_and_installs() {
    let tools = quartet_e2e::kube::tools()
        .await
        .expect("the test API server");
    let (ok, out, err) = tools.run("helm", &["lint", "charts/quartet"]).await;
    assert!(ok, "{out}{err}");
    // The values schema refuses what the chart cannot render, naming the value.
    let (ok, out, err) = tools
        .run(
            "helm",
            &["lint", "charts/quartet", "--set", "operator.logFormat=xml"],
        )
        .await;
    assert!(
        !ok && format!("{out}{err}").contains("logFormat"),
        "{out}{err}"
    );

    let (ok, rendered, err) = tools
        .run("helm", &["template", "q", "charts/quartet"])
        .await;
    assert!(ok, "{err}");
    for secure in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "type: RuntimeDefault",
        "kind: ClusterRole",
    ] {
        assert!(rendered.contains(secure), "{secure} not in:\n{rendered}");
    }
    assert!(!rendered.contains("kind: ServiceMonitor"));
    let (ok, rendered, err) = tools
        .run(
            "helm",
            &[
                "template",
                "q",
                "charts/quartet",
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "clusterWide=false",
            ],
        )
        .await;
    assert!(ok, "{err}");
    assert!(rendered.contains("kind: ServiceMonitor"));
    assert!(rendered.contains("kind: Role\n") && !rendered.contains("kind: ClusterRole"));
    // A namespaced install reconciles its own namespace only, as its Role allows.
    assert!(rendered.contains("QUARTET_OPERATOR_RECONCILE_NAMESPACE"));
    assert!(
        !rendered.contains("kind: Secret"),
        "no Redis unless asked for"
    );

    // The optional Redis for TaskGateways: its URL in a Secret, the same pod defaults.
    let (ok, rendered, err) = tools
        .run(
            "helm",
            &[
                "template",
                "q",
                "charts/quartet",
                "-n",
                "apps",
                "--set",
                "redis.enabled=true",
            ],
        )
        .await;
    assert!(ok, "{err}");
    assert!(
        rendered.contains("url: \"redis://q-quartet-redis.apps.svc:6379/0\""),
        "{rendered}"
    );
    let redis = &rendered[rendered.find("name: quartet-redis").expect("a Redis pod")..];
    for secure in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "drop: [\"ALL\"]",
    ] {
        assert!(redis.contains(secure), "{secure} not in:\n{redis}");
    }

    // Install into a namespace of its own, with a DatabaseCluster instance.
    let namespace = format!("quartet-chart-{}", std::process::id());
    let (ok, out, err) = tools
        .run(
            "helm",
            &[
                "install",
                "q",
                "charts/quartet",
                "-n",
                &namespace,
                "--create-namespace",
                "--set",
                "instances.databaseClusters[0].name=shop",
                "--set",
                "instances.databaseClusters[0].spec.replicas=3",
            ],
        )
        .await;
    assert!(ok, "{out}{err}");
    for (kind, name) in [
        ("deployment", "q-quartet"),
        ("serviceaccount", "q-quartet"),
        ("service", "q-quartet-metrics"),
        ("databasecluster", "shop"),
    ] {
        let (ok, _, err) = tools
            .run("kubectl", &["get", kind, name, "-n", &namespace])
            .await;
        assert!(ok, "{kind}/{name}: {err}");
    }
    let (ok, _, err) = tools
        .run("kubectl", &["get", "crd", "databaseclusters.quartet.dev"])
        .await;
    assert!(ok, "{err}");
    let (ok, out, err) = tools
        .run("helm", &["uninstall", "q", "-n", &namespace])
        .await;
    assert!(ok, "{out}{err}");
    let (gone, _, _) = tools
        .run(
            "kubectl",
            &["get", "deployment", "q-quartet", "-n", &namespace],
        )
        .await;
    assert!(!gone, "the operator's Deployment outlived the release");
}
