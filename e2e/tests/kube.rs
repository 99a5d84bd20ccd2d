//! The Kubernetes harness: a real kube-apiserver accepts a CustomResourceDefinition applied with
//! server-side apply, and kube-rs watches a custom resource through creation, a status update
//! and deletion.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, wait};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A throwaway kind that exists only for this test.
#[derive(CustomResource, Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "e2e.quartet.dev",
    version = "v1alpha1",
    kind = "Probe",
    namespaced,
    status = "ProbeStatus"
)]
struct ProbeSpec {
    /// How many pings to send.
    pings: u32,
}

/// Observed state of a probe.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
struct ProbeStatus {
    /// How many pings were answered.
    answered: u32,
}

#[tokio::test]
async fn a_crd_is_applied_and_a_custom_resource_is_watched() {
    let client = quartet_e2e::kube::client().await.expect("API server");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let manager = PatchParams::apply("quartet-e2e").force();
    crds.patch(Probe::crd_name(), &manager, &Patch::Apply(Probe::crd()))
        .await
        .expect("CRD applied");
    tokio::time::timeout(
        Duration::from_secs(30),
        wait::await_condition(
            crds,
            Probe::crd_name(),
            wait::conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established in time")
    .expect("watching the CRD");

    let probes: Api<Probe> = Api::namespaced(client, "default");
    let name = format!("probe-{}", std::process::id());
    let selector = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(probes.clone(), selector)
        .default_backoff()
        .boxed();
    // The initial listing is empty; wait for it so that the create below is seen as an event.
    loop {
        match events
            .next()
            .await
            .expect("watch stream open")
            .expect("watch")
        {
            Event::InitDone => break,
            _ => continue,
        }
    }

    probes
        .create(
            &PostParams::default(),
            &Probe::new(&name, ProbeSpec { pings: 3 }),
        )
        .await
        .expect("created");
    let created = next_event(&mut events, |e| {
        if let Event::Apply(p) = e {
            Some(p)
        } else {
            None
        }
    })
    .await;
    assert_eq!(created.spec.pings, 3);

    let status = serde_json::json!({"status": {"answered": 2}});
    probes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status patched");
    let updated = next_event(&mut events, |e| {
        if let Event::Apply(p) = e {
            Some(p)
        } else {
            None
        }
    })
    .await;
    assert_eq!(updated.status.map(|s| s.answered), Some(2));

    probes
        .delete(&name, &DeleteParams::default())
        .await
        .expect("deleted");
    let deleted = next_event(&mut events, |e| {
        if let Event::Delete(p) = e {
            Some(p)
        } else {
            None
        }
    })
    .await;
    assert_eq!(deleted.name_any(), name);
}

/// The first event that `pick` accepts, within 30 s.
async fn next_event(
    events: &mut (impl futures::Stream<Item = Result<Event<Probe>, watcher::Error>> + Unpin),
    pick: impl Fn(Event<Probe>) -> Option<Probe>,
) -> Probe {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(probe) = pick(
                events
                    .next()
                    .await
                    .expect("watch stream open")
                    .expect("watch"),
            ) {
                return probe;
            }
        }
    })
    .await
    .expect("event in time")
}
