//! The router against a real zerorpc-python backend: what one caller does to its own call —
//! a channel the backend never answers, a remote error — never takes the backend down for the
//! others; only a backend that goes silent on every channel, or drops its connection, is down.

use std::time::Duration;

use quartet_rpc_gateway::router::{Health, RouteError, Router};
use quartet_rpc_gateway::zerorpc::client::{CallError, Reply};
use rmpv::Value;

/// Signals `pid` (`STOP`, `CONT`).
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

async fn health(router: &Router) -> Health {
    router.backends("demo")[0].1
}

#[tokio::test]
async fn a_call_the_backend_never_answers_leaves_it_up_for_everyone_else() {
    let (backend, endpoint) = quartet_e2e::zerorpc_server().await;
    // Short heartbeats: a channel is lost in about a second (zerorpc-python heartbeats a
    // `_zpc_hb` channel, so that call runs into its deadline instead).
    let heartbeat = Duration::from_millis(500);
    let mut router = Router::new(heartbeat);
    router
        .add("demo", &[endpoint], &[])
        .await
        .expect("the backend connects");
    let router = std::sync::Arc::new(router);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(router.clone().watch(Duration::from_secs(60), stop.clone()));
    quartet_e2e::eventually("the backend up", Duration::from_secs(10), || async {
        (health(&router).await == Health::Up).then_some(())
    })
    .await
    .expect("up");
    let add = || {
        router.call(
            "demo",
            "add",
            vec![1.into(), 2.into()],
            Duration::from_secs(5),
        )
    };

    // zerorpc-python takes a channel opened by its own protocol events for protocol traffic
    // and never answers it: the call is lost, the backend is not. (The fronts refuse these
    // names; the router is asked directly here.) Likewise a method that raised.
    for internal in ["_zpc_hb", "_zpc_more", "_zpc_more"] {
        let lost = router
            .call("demo", internal, Vec::new(), Duration::from_secs(5))
            .await;
        assert!(
            matches!(
                lost,
                Err(RouteError::Call(
                    CallError::LostRemote(_) | CallError::Timeout(_)
                ))
            ),
            "{internal}: {lost:?}"
        );
        assert_eq!(health(&router).await, Health::Up, "after {internal}");
        match add().await {
            Ok(Reply::Value(sum)) => assert_eq!(sum, Value::from(3)),
            other => panic!("after {internal}, another caller got {other:?}"),
        }
    }
    let raised = router
        .call("demo", "fail", vec!["boom".into()], Duration::from_secs(5))
        .await;
    assert!(matches!(
        raised,
        Err(RouteError::Call(CallError::Remote(_)))
    ));
    assert_eq!(health(&router).await, Health::Up);

    // A backend silent on every channel is down, within a few heartbeats.
    let pid = backend.id().expect("running");
    signal(pid, "STOP");
    let frozen = quartet_e2e::eventually(
        "the frozen backend down",
        Duration::from_secs(5),
        || async { (health(&router).await == Health::Down).then_some(()) },
    )
    .await;
    signal(pid, "CONT");
    frozen.expect("a frozen backend is down");
    quartet_e2e::eventually("the thawed backend up", Duration::from_secs(10), || async {
        (health(&router).await == Health::Up).then_some(())
    })
    .await
    .expect("up again");
    stop.cancel();
}
