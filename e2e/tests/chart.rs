//! The Helm chart `charts/quartet`: `helm lint` with its values schema, `helm template` with
//! secure pod defaults and the optional parts, and `helm install` / `uninstall` against a real
//! kube-apiserver (no kubelet: the objects are checked, not the pods) — with what the
//! operator's ServiceAccount may do to Secrets, the optional Redis's password and the
//! NetworkPolicies.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, PostParams};

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

    let (ok, rendered, err) = template(&tools, &[]).await;
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
    // Secrets: read and made by name, never listed, watched, changed or deleted.
    assert_eq!(
        rendered.matches("\"secrets\"").count(),
        1,
        "one rule for Secrets:\n{rendered}"
    );
    assert!(
        rendered.contains("resources: [\"secrets\"]\n    verbs: [\"get\", \"create\"]\n"),
        "{rendered}"
    );
    // A NetworkPolicy for the operator and for each service's pods, on by default.
    for policy in ["operator", "auth", "task-gateway", "rpc-gateway", "db"] {
        assert!(
            rendered.contains(&format!(
                "kind: NetworkPolicy\nmetadata:\n  name: q-quartet-{policy}\n"
            )),
            "no NetworkPolicy for {policy}:\n{rendered}"
        );
    }
    let (ok, off, err) = template(&tools, &["--set", "networkPolicy.enabled=false"]).await;
    assert!(ok, "{err}");
    assert!(!off.contains("kind: NetworkPolicy"), "{off}");
    // The Secret rights in listed namespaces only: a Role there, none in the ClusterRole.
    let (ok, listed, err) = template(&tools, &["--set", "secretNamespaces={apps,shop}"]).await;
    assert!(ok, "{err}");
    let cluster_role = document(&listed, "kind: ClusterRole\n");
    assert!(!cluster_role.contains("secrets"), "{cluster_role}");
    for namespace in ["apps", "shop"] {
        assert!(
            listed.contains(&format!(
                "kind: RoleBinding\nmetadata:\n  name: q-quartet-secrets\n  namespace: {namespace}\n"
            )),
            "{listed}"
        );
    }
    let (ok, _, err) = template(
        &tools,
        &[
            "--set",
            "clusterWide=false",
            "--set",
            "secretNamespaces={apps}",
        ],
    )
    .await;
    assert!(!ok && err.contains("secretNamespaces"), "{err}");
    let (ok, rendered, err) = template(
        &tools,
        &[
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
    let (ok, rendered, err) =
        template(&tools, &["-n", "apps", "--set", "redis.enabled=true"]).await;
    assert!(ok, "{err}");
    let redis = document(
        &rendered,
        "kind: Deployment\nmetadata:\n  name: q-quartet-redis",
    );
    for secure in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "drop: [\"ALL\"]",
    ] {
        assert!(redis.contains(secure), "{secure} not in:\n{redis}");
    }
    // Redis asks for a password, generated and kept in the Secret only: the URL carries it,
    // Redis reads it from a file of that Secret, and the Deployment does not hold it.
    let url_line = rendered
        .lines()
        .find(|l| l.trim_start().starts_with("url: "))
        .expect("the URL in the Secret");
    let password = url_line
        .split("redis://:")
        .nth(1)
        .and_then(|rest| rest.split('@').next())
        .unwrap_or_default();
    assert!(
        password.len() >= 32 && password.chars().all(|c| c.is_ascii_alphanumeric()),
        "no generated password in {url_line}"
    );
    assert!(
        url_line.contains(&format!(
            "redis://:{password}@q-quartet-redis.apps.svc:6379/0"
        )),
        "{url_line}"
    );
    assert!(
        rendered.contains(&format!("redis.conf: \"requirepass {password}\\n\"")),
        "{rendered}"
    );
    assert!(
        !redis.contains(password),
        "the password in the Deployment:\n{redis}"
    );
    for from_secret in [
        "\"redis-server\", \"/etc/quartet-redis/redis.conf\"",
        "secretName: q-quartet-redis",
        "key: redis.conf",
    ] {
        assert!(
            redis.contains(from_secret),
            "{from_secret} not in:\n{redis}"
        );
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
                "--set",
                "redis.enabled=true",
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

    // The API server takes the NetworkPolicies (whether anything enforces them is the
    // network plugin's business): the operator's, Redis's, and one per service.
    let client = quartet_e2e::kube::client().await.expect("API server");
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    let mut names: Vec<String> = policies
        .list(&ListParams::default())
        .await
        .expect("the NetworkPolicies")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "q-quartet-auth",
            "q-quartet-db",
            "q-quartet-operator",
            "q-quartet-redis",
            "q-quartet-rpc-gateway",
            "q-quartet-task-gateway"
        ]
    );
    let redis_policy = policies
        .get("q-quartet-redis")
        .await
        .expect("Redis's policy")
        .spec
        .expect("a spec");
    let ingress = redis_policy.ingress.unwrap_or_default();
    let sources = ingress[0].from.clone().unwrap_or_default();
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(
        sources[0]
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .and_then(|l| l.get("app.kubernetes.io/name"))
            .map(String::as_str),
        Some("quartet-task-gateway"),
        "Redis open to more than the TaskGateways: {sources:?}"
    );
    assert!(redis_policy.egress.unwrap_or_default().is_empty());

    // Redis's password: in the Secret, in the URL a TaskGateway takes, and kept by an upgrade.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let redis_secret = |secret: Secret, key: &str| -> String {
        secret
            .data
            .and_then(|d| {
                d.get(key)
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            })
            .unwrap_or_default()
    };
    let installed = secrets
        .get("q-quartet-redis")
        .await
        .expect("Redis's Secret");
    let password = redis_secret(installed.clone(), "password");
    assert_eq!(password.len(), 32, "{password:?}");
    assert_eq!(
        redis_secret(installed, "url"),
        format!("redis://:{password}@q-quartet-redis.{namespace}.svc:6379/0")
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let redis = deployments.get("q-quartet-redis").await.expect("Redis");
    let redis = serde_json::to_string(&redis.spec).expect("JSON");
    assert!(!redis.contains(&password), "{redis}");

    // The operator's ServiceAccount and Secrets: it may read one by name and make one,
    // nothing else — no listing or watching them anywhere, no changing or deleting one.
    let service_account = format!("system:serviceaccount:{namespace}:q-quartet");
    let can =
        |verb: &'static str, namespace: String| may(&tools, &service_account, verb, namespace);
    for verb in [
        "list",
        "watch",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ] {
        assert!(!can(verb, "default".into()).await, "may {verb} Secrets");
    }
    assert!(can("get", "default".into()).await && can("create", "default".into()).await);
    let (listed, out, err) = tools
        .run(
            "kubectl",
            &[
                "get",
                "secrets",
                "--all-namespaces",
                "--as",
                &service_account,
            ],
        )
        .await;
    assert!(
        !listed && err.contains("Forbidden"),
        "listed every Secret: {out}{err}"
    );

    // With secretNamespaces, a Secret elsewhere — one it neither made nor was given — is out
    // of its reach; in the listed namespace it still reads and makes its own.
    let others: Api<Secret> = Api::namespaced(client.clone(), "default");
    let other = format!("not-the-operators-{}", std::process::id());
    others
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": other}, "stringData": {"token": "t"},
            }))
            .expect("a Secret"),
        )
        .await
        .expect("created");
    let read_other = [
        "get",
        "secret",
        &other,
        "-n",
        "default",
        "--as",
        &service_account,
    ];
    let (read, _, _) = tools.run("kubectl", &read_other).await;
    assert!(read, "the cluster-wide default reads a Secret by name");
    let (ok, out, err) = tools
        .run(
            "helm",
            &[
                "upgrade",
                "q",
                "charts/quartet",
                "-n",
                &namespace,
                "--reuse-values",
                "--set",
                &format!("secretNamespaces={{{namespace}}}"),
            ],
        )
        .await;
    assert!(ok, "{out}{err}");
    let (read, out, err) = tools.run("kubectl", &read_other).await;
    assert!(
        !read && err.contains("Forbidden"),
        "read a Secret outside secretNamespaces: {out}{err}"
    );
    assert!(!can("get", "default".into()).await && !can("create", "default".into()).await);
    let own = || namespace.clone();
    assert!(can("get", own()).await && can("create", own()).await);
    assert!(!can("list", own()).await && !can("delete", own()).await);
    others
        .delete(&other, &Default::default())
        .await
        .expect("deleted");
    let upgraded = secrets
        .get("q-quartet-redis")
        .await
        .expect("Redis's Secret");
    assert_eq!(
        redis_secret(upgraded, "password"),
        password,
        "the upgrade changed Redis's password"
    );

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

/// `helm template q charts/quartet` with `args` after it: whether it rendered, the YAML, and
/// what it printed to standard error.
async fn template(tools: &quartet_e2e::kube::Tools, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["template", "q", "charts/quartet"];
    all.extend(args);
    tools.run("helm", &all).await
}

/// The rendered document that starts with `start` (its `kind:` line on), up to the next one.
fn document<'a>(rendered: &'a str, start: &str) -> &'a str {
    let from = &rendered[rendered
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in:\n{rendered}"))..];
    &from[..from.find("\n---").unwrap_or(from.len())]
}

/// Whether `account` may `verb` Secrets in `namespace`, as `kubectl auth can-i` answers.
async fn may(
    tools: &quartet_e2e::kube::Tools,
    account: &str,
    verb: &str,
    namespace: String,
) -> bool {
    let (yes, out, err) = tools
        .run(
            "kubectl",
            &[
                "auth", "can-i", verb, "secrets", "-n", &namespace, "--as", account,
            ],
        )
        .await;
    assert_eq!(
        out.trim(),
        if yes { "yes" } else { "no" },
        "kubectl auth can-i {verb} secrets -n {namespace}: {out}{err}"
    );
    yes
}
