//! The `DatabaseCluster` reconciler: a StatefulSet of `quartet-db` replicas forming one Raft
//! group, whose membership follows `spec.replicas` through the database's admin API one safe
//! change at a time ([`crate::membership`]).
//!
//! What it owns: the StatefulSet (a volume per member, pod `<name>-<n>` is node `n + 1`, every
//! replica waits to be added; once all the first pods run and none is in a group, the operator
//! has the first form the group — once, recorded in `status.formed`), a headless Service
//! `<name>-peers` giving each pod the stable name the group knows it by (published before the
//! pod is ready, as a joining replica is not ready until added), a client Service `<name>`
//! (MySQL, gRPC, REST), a ConfigMap of settings, the group's shared secret (generated once:
//! replicas present it to each other, and the operator to their admin API), the MySQL
//! password unless the spec names one, and a PodDisruptionBudget.
//!
//! Scaling up: the StatefulSet grows first; each new pod, once running, is added as a learner
//! (the call returns when it has caught up), then promoted. Scaling down: members leave
//! first, the highest first, leadership moved away from a leaving leader, refused with a
//! `ScaleDownRefused` condition when the voters left would lack a healthy majority; the
//! StatefulSet shrinks only past members that have left, and a removed member's volume is
//! deleted so that a later scale-up starts that ordinal afresh. The status carries the plan.
//!
//! Deleting the resource: the garbage collector removes what it owns; a finalizer deletes the
//! volumes (which the StatefulSet leaves behind) when `storage.reclaimPolicy` is `Delete`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use quartet_proto::db::v1 as pb;
use serde_json::json;

use crate::crd::{DatabaseCluster, Plan, ReclaimPolicy, Step as PlanStep};
use crate::dbadmin::{self, Admin, GRPC_PORT};
use crate::membership::{self, Next, NodeId, Observed, Step};
use crate::reconcile::{
    Ctx, Error, MANAGER, Report, api, api_err, apply, apply_budget, auth_settings, emit,
    generated_secret, image, key, owner, password, set_status, setting_env,
};

/// The finalizer that deletes the volumes.
pub const FINALIZER: &str = "quartet.dev/volumes";

const PREFIX: &str = "QUARTET_DB";
const MYSQL_PORT: i32 = 3306;
const HTTP_PORT: i32 = 7141;
const ADMIN_PORT: i32 = 7149;
const DATA: &str = "/var/lib/quartet";

/// Brings a `DatabaseCluster` to its spec; on deletion, its volumes per `reclaimPolicy`.
pub async fn database_cluster(db: Arc<DatabaseCluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let namespace = db
        .namespace()
        .ok_or_else(|| Error::Invalid("a DatabaseCluster is namespaced".into()))?;
    let api: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    // The finalizer only where there is cleanup to do: with `Retain` nothing holds up the
    // deletion (or a namespace's) should the operator be gone by then. One left from an
    // earlier `Delete` is still honoured, and then removed.
    let finalized = db.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = db.metadata.deletion_timestamp.is_some();
    let retain = db.spec.storage.reclaim_policy == ReclaimPolicy::Retain;
    if retain && finalized && !deleting {
        // Switched from Delete to Retain: nothing to clean up any more.
        let others: Vec<&String> = db.finalizers().iter().filter(|f| *f != FINALIZER).collect();
        api.patch(
            &db.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": others}})),
        )
        .await
        .map_err(crate::reconcile::api("removing the finalizer"))?;
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let outcome = if !retain || finalized {
        finalizer(&api, FINALIZER, db.clone(), |event| async {
            match event {
                Finalized::Apply(db) => reconcile(&db, &ctx).await,
                Finalized::Cleanup(db) => cleanup(&db, &ctx).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Invalid(format!("finalizer {FINALIZER}: {other}")),
        })
    } else if deleting {
        Ok(Action::await_change())
    } else {
        reconcile(&db, &ctx).await
    };
    if outcome.is_ok() {
        ctx.succeeded(&key(&*db));
    }
    outcome
}

/// The pods' labels: `app.kubernetes.io/name` and `instance`.
fn selector(name: &str) -> serde_json::Value {
    json!({"app.kubernetes.io/name": "quartet-db", "app.kubernetes.io/instance": name})
}

fn label_selector(name: &str) -> String {
    format!("app.kubernetes.io/name=quartet-db,app.kubernetes.io/instance={name}")
}

/// Before the resource goes: with `reclaimPolicy: Delete`, the StatefulSet and its pods first
/// (so that no volume is made after the volumes are listed), then the volumes. An error until
/// the pods are gone keeps the finalizer, and the deletion is tried again.
async fn cleanup(db: &DatabaseCluster, ctx: &Ctx) -> Result<Action, Error> {
    if db.spec.storage.reclaim_policy == ReclaimPolicy::Delete {
        let name = db.name_any();
        let namespace = db.namespace().unwrap_or_default();
        let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
        if sets
            .get_opt(&name)
            .await
            .map_err(api("reading the StatefulSet"))?
            .is_some()
        {
            sets.delete(&name, &DeleteParams::foreground())
                .await
                .map_err(api("deleting the StatefulSet"))?;
        }
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        let left = pods
            .list(&ListParams::default().labels(&label_selector(&name)))
            .await
            .map_err(api("listing the pods"))?
            .items
            .len();
        if left > 0 {
            return Err(Error::Invalid(format!(
                "waiting for {left} pods to go before deleting the volumes"
            )));
        }
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
        let found = claims
            .list(&ListParams::default().labels(&label_selector(&name)))
            .await
            .map_err(api("listing the volumes"))?;
        for claim in &found.items {
            claims
                .delete(&claim.name_any(), &DeleteParams::default())
                .await
                .map_err(api(format!("deleting volume {}", claim.name_any())))?;
        }
        emit(
            ctx,
            db,
            EventType::Normal,
            "VolumesDeleted",
            &format!(
                "deleted {} volumes (storage.reclaimPolicy is Delete)",
                found.items.len()
            ),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// A pod of the set: its node id and, when it runs, its address.
struct PodView {
    id: NodeId,
    ip: Option<String>,
}

fn pods_of(pods: &[Pod], name: &str) -> Vec<PodView> {
    pods.iter()
        .filter_map(|pod| {
            let ordinal: NodeId = pod
                .name_any()
                .strip_prefix(&format!("{name}-"))?
                .parse()
                .ok()?;
            let status = pod.status.as_ref();
            let running = status.and_then(|s| s.phase.as_deref()) == Some("Running")
                && pod.metadata.deletion_timestamp.is_none();
            let ip = status.and_then(|s| s.pod_ip.clone()).filter(|_| running);
            Some(PodView {
                id: ordinal + 1,
                ip,
            })
        })
        .collect()
}

/// Every running replica's status (those that answer), by node id, with its host.
async fn ask_all(
    admin: &Admin,
    pods: &BTreeMap<NodeId, String>,
) -> BTreeMap<NodeId, (String, pb::GroupStatus)> {
    let asked = futures::future::join_all(
        pods.iter()
            .map(|(id, host)| async move { (*id, host.clone(), admin.status(host).await) }),
    )
    .await;
    asked
        .into_iter()
        .filter_map(|(id, host, status)| Some((id, (host, status.ok()?))))
        .collect()
}

/// The leader's status, and its host: the replica that says it leads in the highest term in
/// which a majority of its voters say so too. One replica's word is not enough — a leader cut
/// off from its group also says it leads.
fn confirmed_leader(
    statuses: &BTreeMap<NodeId, (String, pb::GroupStatus)>,
) -> Option<(String, pb::GroupStatus)> {
    let mut leaders: Vec<&(String, pb::GroupStatus)> = statuses
        .values()
        .filter(|(_, s)| s.role == "leader" && s.leader == Some(s.node))
        .collect();
    leaders.sort_by_key(|(_, s)| std::cmp::Reverse(s.term));
    leaders.into_iter().find_map(|(host, leader)| {
        let voters: Vec<NodeId> = leader
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        let agreeing = voters
            .iter()
            .filter(|id| {
                statuses
                    .get(id)
                    .is_some_and(|(_, s)| s.leader == Some(leader.node) && s.term == leader.term)
            })
            .count();
        (agreeing > voters.len() / 2).then(|| (host.clone(), leader.clone()))
    })
}

/// Merges `{field: value}` into the status: a merge patch, as these fields are the database
/// reconciler's alone and the status's other fields stay as they are. `kept` checks the
/// status that came back: an API server with an older CRD drops a field it does not know,
/// silently.
async fn merge_status(
    ctx: &Ctx,
    db: &DatabaseCluster,
    field: &str,
    value: serde_json::Value,
    kept: impl FnOnce(&crate::crd::Status) -> bool,
) -> Result<(), Error> {
    let api: Api<DatabaseCluster> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let patched = api
        .patch_status(
            &db.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {field: value}})),
        )
        .await
        .map_err(api_err("DatabaseCluster status", &db.name_any()))?;
    if !patched.status.as_ref().is_some_and(kept) {
        return Err(Error::Invalid(format!(
            "the DatabaseCluster CRD has no status.{field}: apply charts/quartet/crds/ (helm upgrade does not update CRDs)"
        )));
    }
    Ok(())
}

/// Records in the status that the group has been formed.
async fn mark_formed(ctx: &Ctx, db: &DatabaseCluster) -> Result<(), Error> {
    merge_status(ctx, db, "formed", json!(true), |s| s.formed).await
}

/// Records members' storage incarnations in the status (`None`: forget the member's).
async fn record_incarnations(
    ctx: &Ctx,
    db: &DatabaseCluster,
    changes: BTreeMap<NodeId, Option<String>>,
) -> Result<(), Error> {
    // An empty incarnation (a replica older than them) is not one to hold the member to.
    let changes: BTreeMap<String, Option<String>> = changes
        .into_iter()
        .filter(|(_, incarnation)| incarnation.as_ref().is_none_or(|i| !i.is_empty()))
        .map(|(id, incarnation)| (id.to_string(), incarnation))
        .collect();
    if changes.is_empty() {
        return Ok(());
    }
    merge_status(ctx, db, "incarnations", json!(changes), |s| {
        changes
            .iter()
            .all(|(id, value)| value.is_none() || s.incarnations.get(id) == value.as_ref())
    })
    .await
}

async fn reconcile(db: &DatabaseCluster, ctx: &Ctx) -> Result<Action, Error> {
    let name = db.name_any();
    let namespace = db.namespace().unwrap_or_default();
    let spec = &db.spec;
    let desired = spec.workload.replicas;
    let peers = format!("{name}-peers");
    let domain = format!("{peers}.{namespace}.svc.{}", ctx.cluster_domain);
    let mut endpoints = BTreeMap::from([(
        "mysql".to_owned(),
        format!("{name}.{namespace}.svc:{MYSQL_PORT}"),
    )]);
    let (mysql_secret, mysql_key, mysql_user) = match &spec.mysql_credentials {
        Some(c) => (
            c.password_secret.name.clone(),
            c.password_secret.key.clone(),
            c.user.clone(),
        ),
        None => (
            format!("{name}-mysql"),
            "password".to_owned(),
            "root".to_owned(),
        ),
    };
    // Kubernetes 1.20's server-side apply turns a status field dropped later into a null the
    // schema refuses: every report publishes the same endpoints.
    endpoints.insert("mysqlSecret".into(), mysql_secret.clone());
    endpoints.insert("mysqlUser".into(), mysql_user.clone());
    if desired < 1 {
        let message = "spec.replicas must be at least 1: a database's data lives in its group";
        return crate::reconcile::report(ctx, db, "InvalidReplicas", message, endpoints).await;
    }
    let mut settings = match auth_settings(ctx, &namespace, PREFIX, spec.auth.as_ref()).await? {
        Ok(settings) => settings,
        Err((reason, message)) => {
            return crate::reconcile::report(ctx, db, reason, &message, endpoints).await;
        }
    };
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = statefulsets
        .get_opt(&name)
        .await
        .map_err(api("reading the StatefulSet"))?;
    if let Some(problem) = existing
        .as_ref()
        .and_then(|set| storage_change(set, &spec.storage))
    {
        return crate::reconcile::report(ctx, db, "StorageUnchangeable", &problem, endpoints).await;
    }

    // The secrets: the group's (generated once) and the MySQL password (generated unless named).
    let raft = generated_secret(
        ctx,
        db,
        &format!("{name}-raft"),
        "the group's shared secret",
        BTreeMap::from([("secret", password()? + &password()?)]),
    )
    .await?;
    let secret = raft
        .data
        .as_ref()
        .and_then(|d| d.get("secret"))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .ok_or_else(|| Error::Invalid(format!("Secret {name}-raft has no key \"secret\"")))?;
    if spec.mysql_credentials.is_none() {
        generated_secret(
            ctx,
            db,
            &mysql_secret,
            "the MySQL user's password",
            BTreeMap::from([("user", mysql_user.clone()), ("password", password()?)]),
        )
        .await?;
    }

    settings.extend(
        spec.workload
            .config
            .iter()
            .map(|(k, v)| (setting_env(PREFIX, k), v.clone())),
    );
    settings.extend([
        (format!("{PREFIX}_STORAGE_PATH"), format!("{DATA}/db")),
        (
            format!("{PREFIX}_RAFT_SECRET_FILE"),
            "/var/run/quartet/raft/secret".into(),
        ),
        (format!("{PREFIX}_MYSQL_USER"), mysql_user),
        (
            format!("{PREFIX}_MYSQL_PASSWORD_FILE"),
            format!("/var/run/quartet/mysql/{mysql_key}"),
        ),
    ]);
    let labels = json!({"app.kubernetes.io/name": "quartet-db", "app.kubernetes.io/instance": name,
                        "app.kubernetes.io/managed-by": MANAGER});
    let configs: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    apply(&configs, &format!("{name}-config"), json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("{name}-config"), "namespace": namespace, "labels": labels, "ownerReferences": owner(db)},
        "data": settings,
    }))
    .await?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let port = |port_name: &str, port: i32| json!({"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"});
    apply(&services, &peers, json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": peers, "namespace": namespace, "labels": labels, "ownerReferences": owner(db)},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": true, "selector": selector(&name),
                 "ports": [port("grpc", i32::from(GRPC_PORT)), port("mysql", MYSQL_PORT)]},
    }))
    .await?;
    apply(&services, &name, json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner(db)},
        "spec": {"selector": selector(&name),
                 "ports": [port("mysql", MYSQL_PORT), port("grpc", i32::from(GRPC_PORT)), port("http", HTTP_PORT)]},
    }))
    .await?;
    apply_budget(ctx, db, &labels, &selector(&name)).await?;

    // Observe the group through the running pods.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let listed = pods
        .list(&ListParams::default().labels(&label_selector(&name)))
        .await
        .map_err(api("listing the pods"))?;
    let pod_views = pods_of(&listed.items, &name);
    let running: BTreeMap<NodeId, String> = pod_views
        .iter()
        .filter_map(|p| Some((p.id, p.ip.clone()?)))
        .collect();
    let admin =
        Admin::new(&secret).map_err(|e| Error::Invalid(format!("Secret {name}-raft: {e}")))?;
    let statuses = ask_all(&admin, &running).await;
    let group = confirmed_leader(&statuses);
    let formed = db.status.as_ref().is_some_and(|s| s.formed);
    if group.is_some() && !formed {
        mark_formed(ctx, db).await?;
    }
    let members: Vec<membership::Member> = group
        .as_ref()
        .map(|(_, status)| dbadmin::members(status))
        .unwrap_or_default();

    // Pods for every wanted node and every member still in the group; while the group
    // cannot be seen, never fewer than there are — unless it was never formed, when the spec
    // alone counts (a pod that cannot run is then dropped by lowering spec.replicas). A
    // volume still being deleted (of a member that left) holds the set where it is: a new
    // pod must not start on it.
    let highest_member = members.iter().map(|m| m.id).max().unwrap_or(0);
    let current = i64::from(
        existing
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(0),
    );
    let mut pods_wanted = match (&group, formed) {
        (Some(_), _) => i64::from(desired).max(highest_member as i64),
        (None, true) => i64::from(desired).max(current),
        (None, false) => i64::from(desired),
    };
    let claims = volumes(ctx, &namespace, &name).await?;
    if let Some(ordinal) = claims
        .iter()
        .filter(|(ordinal, claim)| {
            (current..pods_wanted).contains(&(*ordinal as i64))
                && claim.metadata.deletion_timestamp.is_some()
        })
        .map(|(ordinal, _)| *ordinal)
        .min()
    {
        pods_wanted = current.max(ordinal as i64);
    }
    let set = apply(
        &statefulsets,
        &name,
        statefulset(
            db,
            &labels,
            &peers,
            &domain,
            &mysql_secret,
            &mysql_key,
            pods_wanted,
        ),
    )
    .await?;
    let ready = set
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);

    let Some((leader_host, leader_status)) = group else {
        // A group never formed: once every pod runs and none belongs to a group, the first
        // forms it. Only ever once — a replica that lost its data later waits to be added
        // rather than forming a second group.
        if !formed {
            let not_running: Vec<NodeId> = (1..=pods_wanted as NodeId)
                .filter(|id| !running.contains_key(id))
                .collect();
            let not_answering: Vec<NodeId> = running
                .keys()
                .filter(|id| !statuses.contains_key(id))
                .copied()
                .collect();
            let in_a_group: Vec<NodeId> = statuses
                .iter()
                .filter(|(_, (_, s))| !s.members.is_empty())
                .map(|(id, _)| *id)
                .collect();
            let first = running.get(&1);
            if let (true, true, true, Some(first)) = (
                not_running.is_empty(),
                not_answering.is_empty(),
                in_a_group.is_empty(),
                first,
            ) {
                // Recorded first: a replica that loses its data between the call and the
                // record could otherwise be taken for the original.
                let founder = statuses.get(&1).map(|(_, s)| s.incarnation.clone());
                record_incarnations(ctx, db, BTreeMap::from([(1, founder)])).await?;
                admin
                    .initialize(first)
                    .await
                    .map_err(|e| Error::Invalid(format!("forming the group: {e}")))?;
                mark_formed(ctx, db).await?;
                emit(
                    ctx,
                    db,
                    EventType::Normal,
                    "GroupFormed",
                    "member 1 formed the group; the others join it one by one",
                )
                .await;
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            let message = if !in_a_group.is_empty() {
                format!(
                    "not forming a group: members {in_a_group:?} already belong to one, and no leader a majority follows is seen"
                )
            } else if !not_running.is_empty() {
                format!(
                    "waiting for the pods of members {not_running:?} to run before forming the group"
                )
            } else {
                format!("waiting for members {not_answering:?} to answer before forming the group")
            };
            return progressing(ctx, db, ready, &message, endpoints, None).await;
        }
        let message = if running.is_empty() {
            "no pod of the group runs yet".to_owned()
        } else {
            format!(
                "no leader that a majority follows among the {} running pods yet",
                running.len()
            )
        };
        return progressing(ctx, db, ready, &message, endpoints, None).await;
    };
    // The volumes of members that left, once their pods are gone: a later scale-up starts
    // those ordinals afresh rather than from the log of a group they left.
    let member_ids: BTreeSet<NodeId> = members.iter().map(|m| m.id).collect();
    let with_pods: BTreeSet<NodeId> = pod_views.iter().map(|p| p.id).collect();
    for (ordinal, claim) in &claims {
        let id = ordinal + 1;
        if (*ordinal as i64) >= pods_wanted
            && !member_ids.contains(&id)
            && !with_pods.contains(&id)
            && claim.metadata.deletion_timestamp.is_none()
        {
            delete_volume(ctx, db, &claim.name_any(), id).await?;
        }
    }

    // Each member's storage incarnation, recorded as it joins (or when first seen): a member
    // whose pod reports another lost its data. Read afresh, not from the watch's copy, which
    // may not have this operator's last record yet.
    let latest: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let recorded = latest
        .get(&name)
        .await
        .map_err(api("reading the DatabaseCluster"))?
        .status
        .map(|s| s.incarnations)
        .unwrap_or_default();
    let mut unrecorded = BTreeMap::new();
    let mut lost = BTreeSet::new();
    for member in &members {
        let Some((_, status)) = statuses.get(&member.id) else {
            continue;
        };
        // A replica older than incarnations reports none; a pod answering as another node
        // is not this member's.
        if status.incarnation.is_empty() || status.node != member.id {
            continue;
        }
        match recorded
            .get(&member.id.to_string())
            .filter(|k| !k.is_empty())
        {
            // First seen (a member from before incarnations were recorded): taken as it is.
            None => {
                unrecorded.insert(member.id, Some(status.incarnation.clone()));
            }
            Some(known) if *known != status.incarnation => {
                lost.insert(member.id);
            }
            Some(_) => {}
        }
    }
    if !unrecorded.is_empty() {
        record_incarnations(ctx, db, unrecorded).await?;
    }
    for id in &lost {
        tracing::warn!(resource = %key(db), member = id, "a member's storage is not the one it joined with: it lost its data");
    }
    let observed = Observed {
        desired: desired as NodeId,
        leader: leader_status.node,
        members,
        running: running.keys().copied().collect(),
        lost,
    };
    let goal = format!("scale to {desired} members");
    let mut steps: Vec<PlanStep> = db
        .status
        .as_ref()
        .and_then(|s| s.plan.as_ref())
        .filter(|p| p.goal == goal)
        .map(|p| {
            p.steps
                .iter()
                .filter(|s| s.state == "Done")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let done = steps.len() as i32;
    // The plan: the steps done, this one, and what would follow if it succeeds.
    let mut plan = |now: Step, state: &str| {
        let mut after = observed.clone();
        membership::apply(&mut after, now);
        steps.push(PlanStep {
            action: now.to_string(),
            state: state.into(),
        });
        steps.extend(membership::plan(&after).iter().map(|step| PlanStep {
            action: step.to_string(),
            state: "Pending".into(),
        }));
        Plan {
            goal: goal.clone(),
            steps: std::mem::take(&mut steps),
            current: done,
        }
    };
    // A leader that took over moments ago may not have heard from every member yet: their
    // health is unknown rather than bad, and worth a short wait before refusing.
    let fresh_leader = ctx.new_leader(&key(db), leader_status.node, leader_status.term);
    let next = match membership::next(&observed) {
        Next::Refuse(step, why) if fresh_leader => {
            let unheard: Vec<NodeId> = leader_status
                .members
                .iter()
                .filter(|m| m.id != leader_status.node && m.last_heard_ms.is_none())
                .map(|m| m.id)
                .collect();
            if unheard.is_empty() {
                Next::Refuse(step, why)
            } else {
                Next::Wait(format!(
                    "member {} leads since moments ago and has not heard from members {unheard:?} yet",
                    leader_status.node
                ))
            }
        }
        next => next,
    };
    match next {
        Next::Settled => crate::reconcile::settle(ctx, db, ready, endpoints).await,
        Next::Wait(why) => {
            let upcoming = membership::plan(&observed);
            let plan = upcoming.first().map(|first| plan(*first, "Pending"));
            progressing(ctx, db, ready, &why, endpoints, plan).await
        }
        Next::Refuse(step, why) => {
            let replacing = matches!(step, Step::Remove(id) if observed.lost.contains(&id));
            let plan = plan(step, "Failed");
            let (reason, message) = if replacing {
                (
                    "ReplacementRefused",
                    format!("replacing a member that lost its data refused: {why}"),
                )
            } else {
                ("ScaleDownRefused", format!("scale-down refused: {why}"))
            };
            set_status(
                db,
                ctx,
                Report {
                    ready,
                    failed: true,
                    reason,
                    message: &message,
                    endpoints,
                    plan: Some(plan),
                },
            )
            .await?;
            Ok(Action::requeue(Duration::from_secs(10)))
        }
        Next::Step(step) => {
            // Say what is about to happen before doing it: a step can take a while.
            let message = format!("{step}");
            let running_plan = plan(step, "Running");
            progressing(
                ctx,
                db,
                ready,
                &message,
                endpoints.clone(),
                Some(running_plan.clone()),
            )
            .await?;
            carry_out(ctx, db, &admin, &leader_host, &running, step).await?;
            let mut done_plan = running_plan;
            if let Some(current) = done_plan.steps.get_mut(done as usize) {
                current.state = "Done".into();
            }
            done_plan.current = done + 1;
            let refreshed: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), &namespace);
            let latest = refreshed
                .get(&name)
                .await
                .map_err(api("reading the DatabaseCluster"))?;
            progressing(ctx, &latest, ready, &message, endpoints, Some(done_plan)).await?;
            Ok(Action::requeue(Duration::from_millis(200)))
        }
    }
}

/// Carries out one membership change through the leader at `leader`.
async fn carry_out(
    ctx: &Ctx,
    db: &DatabaseCluster,
    admin: &Admin,
    leader: &str,
    running: &BTreeMap<NodeId, String>,
    step: Step,
) -> Result<(), Error> {
    let failed = |e: dbadmin::AdminError| Error::Invalid(format!("{step}: {e}"));
    let (reason, note) = match step {
        Step::AddLearner(id) => {
            let host = running
                .get(&id)
                .ok_or_else(|| Error::Invalid(format!("{step}: its pod is not running")))?;
            let joining = admin.status(host).await.map_err(failed)?;
            if joining.node != id {
                return Err(Error::Invalid(format!(
                    "pod {} reports node id {}, not {id}: is raft.pod_name overridden in spec.config?",
                    id - 1,
                    joining.node
                )));
            }
            // Recorded first (see forming the group); a failed add is recorded again on retry.
            record_incarnations(
                ctx,
                db,
                BTreeMap::from([(id, Some(joining.incarnation.clone()))]),
            )
            .await?;
            admin.add_learner(leader, &joining).await.map_err(failed)?;
            (
                "MemberAdded",
                format!("added member {id} as a learner; it has caught up"),
            )
        }
        Step::Promote(id) => {
            // A learner with new storage abstains from votes until admitted: it is new, or
            // was removed and added afresh after losing its data, so it may vote now.
            let host = running
                .get(&id)
                .ok_or_else(|| Error::Invalid(format!("{step}: its pod is not running")))?;
            admin.admit(host).await.map_err(failed)?;
            admin.promote(leader, id).await.map_err(failed)?;
            ("MemberPromoted", format!("member {id} votes"))
        }
        Step::TransferLeader(to) => {
            admin.transfer_leader(leader, to).await.map_err(failed)?;
            (
                "LeaderMoved",
                format!("member {to} leads, as the leader is leaving"),
            )
        }
        Step::Remove(id) => {
            admin.remove(leader, id).await.map_err(failed)?;
            record_incarnations(ctx, db, BTreeMap::from([(id, None)])).await?;
            ("MemberRemoved", format!("removed member {id}"))
        }
    };
    tracing::info!(resource = %key(db), %step, "membership changed");
    emit(ctx, db, EventType::Normal, reason, &note).await;
    Ok(())
}

async fn progressing(
    ctx: &Ctx,
    db: &DatabaseCluster,
    ready: i32,
    message: &str,
    endpoints: BTreeMap<String, String>,
    plan: Option<Plan>,
) -> Result<Action, Error> {
    set_status(
        db,
        ctx,
        Report {
            ready,
            failed: false,
            reason: if plan.is_some() {
                "Scaling"
            } else {
                "ReplicasStarting"
            },
            message,
            endpoints,
            plan,
        },
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// The volumes of `name`'s pods, by ordinal.
async fn volumes(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
) -> Result<Vec<(NodeId, PersistentVolumeClaim)>, Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let found = claims
        .list(&ListParams::default().labels(&label_selector(name)))
        .await
        .map_err(api("listing the volumes"))?;
    Ok(found
        .items
        .into_iter()
        .filter_map(|claim| {
            let ordinal = claim
                .name_any()
                .strip_prefix(&format!("data-{name}-"))?
                .parse::<NodeId>()
                .ok()?;
            Some((ordinal, claim))
        })
        .collect())
}

/// Deletes the volume `claim` of member `id`, which left the group.
async fn delete_volume(
    ctx: &Ctx,
    db: &DatabaseCluster,
    claim: &str,
    id: NodeId,
) -> Result<(), Error> {
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    claims
        .delete(claim, &DeleteParams::default())
        .await
        .map_err(api(format!("deleting volume {claim}")))?;
    emit(
        ctx,
        db,
        EventType::Normal,
        "VolumeDeleted",
        &format!("deleted volume {claim} of member {id}, which left the group"),
    )
    .await;
    Ok(())
}

/// Why the StatefulSet cannot take the spec's volumes: Kubernetes does not let a
/// StatefulSet's volume templates change. Sizes are compared as quantities (the API server
/// writes `1024Mi` as `1Gi`).
fn storage_change(set: &StatefulSet, storage: &crate::crd::Storage) -> Option<String> {
    let claim = set
        .spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some("data"))?
        .spec
        .as_ref()?;
    let current = claim
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    if bytes(&current) != bytes(&storage.size) {
        return Some(format!(
            "spec.storage.size is {} but the volumes were made with {current}; a StatefulSet's volumes cannot be resized this way",
            storage.size
        ));
    }
    let class = claim.storage_class_name.clone().unwrap_or_default();
    (class != storage.storage_class).then(|| {
        format!(
            "spec.storage.storageClass is {:?} but the volumes were made with {class:?}; a StatefulSet's volumes cannot move to another class",
            storage.storage_class
        )
    })
}

/// A Kubernetes quantity of bytes (`10Gi`, `1500M`, `1e9`) as a number; `None` if it is not one.
fn bytes(quantity: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let quantity = quantity.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| Some((quantity.strip_suffix(suffix)?, *scale)))
        .unwrap_or((quantity, 1.0));
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The StatefulSet: `replicas` pods, each knowing its node id and stable name from the
/// downward API.
fn statefulset(
    db: &DatabaseCluster,
    labels: &serde_json::Value,
    peers: &str,
    domain: &str,
    mysql_secret: &str,
    mysql_key: &str,
    replicas: i64,
) -> serde_json::Value {
    let name = db.name_any();
    let workload = &db.spec.workload;
    let storage = &db.spec.storage;
    let mut claim = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage.size}},
    });
    if !storage.storage_class.is_empty() {
        claim["storageClassName"] = json!(storage.storage_class);
    }
    let container_port = |port_name: &str, port: i32| json!({"name": port_name, "containerPort": port, "protocol": "TCP"});
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": db.namespace(), "labels": labels, "ownerReferences": owner(db)},
        "spec": {
            "serviceName": peers,
            "replicas": replicas,
            // Membership, not pod order, keeps the group safe: pods start together.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(&name)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                        "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "db",
                        "image": image("db", workload.image.as_ref(), workload.version.as_ref()),
                        "envFrom": [{"configMapRef": {"name": format!("{name}-config")}}],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": format!("{PREFIX}_RAFT_POD_NAME"), "value": "$(POD_NAME)"},
                            {"name": format!("{PREFIX}_RAFT_ADVERTISE"), "value": format!("$(POD_NAME).{domain}:{GRPC_PORT}")},
                            {"name": format!("{PREFIX}_RAFT_MYSQL_ADVERTISE"), "value": format!("$(POD_NAME).{domain}:{MYSQL_PORT}")},
                        ],
                        "ports": [container_port("grpc", i32::from(GRPC_PORT)), container_port("http", HTTP_PORT),
                                  container_port("mysql", MYSQL_PORT), container_port("admin", ADMIN_PORT)],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}},
                        "resources": workload.resources,
                        "volumeMounts": [
                            {"name": "data", "mountPath": DATA},
                            // SQLite's temporary files (large sorts, index builds): the root
                            // filesystem is read-only.
                            {"name": "tmp", "mountPath": "/tmp"},
                            {"name": "raft", "mountPath": "/var/run/quartet/raft", "readOnly": true},
                            {"name": "mysql", "mountPath": "/var/run/quartet/mysql", "readOnly": true},
                        ],
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "raft", "secret": {"secretName": format!("{name}-raft"), "items": [{"key": "secret", "path": "secret"}]}},
                        {"name": "mysql", "secret": {"secretName": mysql_secret, "items": [{"key": mysql_key, "path": mysql_key}]}},
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data"},
                "spec": claim,
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_nodes_by_ordinal_and_only_running_ones_have_an_address() {
        let pod = |name: &str, phase: &str, ip: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"phase": phase, "podIP": ip},
            }))
            .expect("a pod")
        };
        let pods = [
            pod("orders-0", "Running", "10.0.0.1"),
            pod("orders-2", "Pending", "10.0.0.3"),
            pod("orders-x", "Running", "10.0.0.9"),
            pod("other-1", "Running", "10.0.0.5"),
        ];
        let seen: Vec<(NodeId, Option<String>)> = pods_of(&pods, "orders")
            .into_iter()
            .map(|p| (p.id, p.ip))
            .collect();
        assert_eq!(seen, [(1, Some("10.0.0.1".into())), (3, None)]);
    }

    fn replica(
        node: NodeId,
        role: &str,
        leader: Option<NodeId>,
        term: u64,
        voters: &[NodeId],
    ) -> (NodeId, (String, pb::GroupStatus)) {
        let members = voters
            .iter()
            .map(|id| pb::Member {
                id: *id,
                voter: true,
                ..Default::default()
            })
            .collect();
        let status = pb::GroupStatus {
            node,
            role: role.into(),
            leader,
            term,
            members,
            ..Default::default()
        };
        (node, (format!("10.0.0.{node}"), status))
    }

    #[test]
    fn a_leader_counts_only_when_a_majority_of_its_voters_follow_it_in_its_term() {
        // Node 1 was cut off and still says it leads in term 3; 2 and 3 moved on to term 4.
        let cut_off = BTreeMap::from([
            replica(1, "leader", Some(1), 3, &[1, 2, 3]),
            replica(2, "leader", Some(2), 4, &[1, 2, 3]),
            replica(3, "follower", Some(2), 4, &[1, 2, 3]),
        ]);
        let (host, leader) = confirmed_leader(&cut_off).expect("a leader");
        assert_eq!((host.as_str(), leader.node), ("10.0.0.2", 2));
        // The old leader alone, with its followers silent: not enough.
        let alone = BTreeMap::from([replica(1, "leader", Some(1), 3, &[1, 2, 3])]);
        assert!(confirmed_leader(&alone).is_none());
        // Followers of another term do not count for it.
        let split = BTreeMap::from([
            replica(1, "leader", Some(1), 3, &[1, 2, 3]),
            replica(2, "follower", Some(1), 2, &[1, 2, 3]),
        ]);
        assert!(confirmed_leader(&split).is_none());
        // A group of one leads itself.
        let one = BTreeMap::from([replica(1, "leader", Some(1), 1, &[1])]);
        assert!(confirmed_leader(&one).is_some());
    }

    #[test]
    fn sizes_compare_as_quantities() {
        assert_eq!(bytes("1Gi"), bytes("1024Mi"));
        assert_eq!(bytes("1G"), bytes("1000M"));
        assert_eq!(bytes("1.5Gi"), Some(1_610_612_736.0));
        assert_ne!(bytes("1Gi"), bytes("1G"));
        assert_eq!(bytes("lots"), None);
        let set = |size: &str, class: Option<&str>| -> StatefulSet {
            serde_json::from_value(json!({"spec": {
                "selector": {}, "serviceName": "x", "template": {},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"resources": {"requests": {"storage": size}}, "storageClassName": class}}],
            }}))
            .expect("a set")
        };
        let storage = |size: &str, class: &str| crate::crd::Storage {
            size: size.into(),
            storage_class: class.into(),
            reclaim_policy: ReclaimPolicy::Retain,
        };
        assert_eq!(
            storage_change(&set("1Gi", None), &storage("1024Mi", "")),
            None
        );
        let resized = storage_change(&set("1Gi", None), &storage("2Gi", "")).expect("refused");
        assert!(
            resized.contains("spec.storage.size is 2Gi") && resized.contains("made with 1Gi"),
            "{resized}"
        );
        let moved =
            storage_change(&set("1Gi", Some("fast")), &storage("1Gi", "")).expect("refused");
        assert!(moved.contains("storageClass"), "{moved}");
    }
}
