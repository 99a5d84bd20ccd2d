//! Our zerorpc server against the real zerorpc-python 0.6.3 client (pip): calls, a remote
//! error, a 250-item stream under zerorpc's flow control, the built-ins, an unknown method,
//! and a call slower than three heartbeat periods that must not end in LostRemote.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quartet_rpc_gateway::zerorpc::server::{RemoteError, Service, serve};
use quartet_rpc_gateway::zerorpc::socket::Socket;
use rmpv::Value;
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn python() -> String {
    let out = tokio::process::Command::new(repo().join("scripts/python.sh"))
        .output()
        .await
        .expect("scripts/python.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn demo() -> Service {
    Service::new("Demo")
        .heartbeat(Duration::from_secs(1))
        .method("add", &["a", "b"], "Adds two numbers.", |args| async move {
            let n = |i: usize| args.get(i).and_then(Value::as_i64).unwrap_or(0);
            Ok(Value::from(n(0) + n(1)))
        })
        .method("fail", &["message"], "", |args| async move {
            Err(RemoteError {
                name: "ValueError".into(),
                message: args[0].as_str().unwrap_or_default().to_owned(),
                traceback: "Traceback: in fail".into(),
            })
        })
        .method("slow", &["seconds"], "", |args| async move {
            let seconds = args[0].as_f64().unwrap_or(1.0);
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            Ok(Value::from("done"))
        })
        .stream("count", &["n"], "Counts from 0.", |args| {
            let n = args[0].as_u64().unwrap_or(0);
            futures::stream::iter((0..n).map(|i| Ok(Value::from(i))))
        })
}

#[tokio::test]
async fn the_python_client_calls_our_server() {
    let socket = Arc::new(Socket::bind(zmq::ROUTER, "tcp://127.0.0.1:0", None).expect("bind"));
    let endpoint = socket.endpoint().to_owned();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(Arc::new(demo()), socket, stop.clone()));
    let out = tokio::process::Command::new(python().await)
        .args(["zerorpc_peer.py", "client", &endpoint])
        .current_dir(repo().join("e2e/python"))
        .output()
        .await
        .expect("python runs");
    stop.cancel();
    assert_eq!(server.await.expect("server"), 0, "no malformed messages");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got["add"], 3);
    assert_eq!(
        got["error"],
        serde_json::json!(["ValueError", "boom", "Traceback: in fail"])
    );
    let stream: Vec<u64> = got["stream"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert_eq!(stream, (0..250).collect::<Vec<_>>(), "every item, in order");
    assert_eq!(got["name"], "Demo");
    assert_eq!(got["ping"], serde_json::json!(["pong", "Demo"]));
    assert_eq!(
        got["list"],
        serde_json::json!(["add", "count", "fail", "slow"])
    );
    assert_eq!(got["inspect"]["methods"]["add"]["doc"], "Adds two numbers.");
    assert_eq!(
        got["inspect"]["methods"]["add"]["args"],
        serde_json::json!([{"name": "self"}, {"name": "a"}, {"name": "b"}])
    );
    assert_eq!(
        got["slow"], "done",
        "a call over three heartbeat periods long: no LostRemote"
    );
    assert_eq!(got["unknown"], serde_json::json!(["NameError", "nosuch"]));
}
