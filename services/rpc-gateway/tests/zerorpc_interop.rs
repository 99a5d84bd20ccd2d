//! Our zerorpc server against the real zerorpc-python 0.6.3 client (pip): calls, a remote
//! error, a 250-item stream under zerorpc's flow control, the built-ins, an unknown method,
//! and a call slower than three heartbeat periods that must not end in LostRemote.

use std::sync::Arc;
use std::time::Duration;

use quartet_rpc_gateway::zerorpc::server::{RemoteError, Service, serve};
use quartet_rpc_gateway::zerorpc::socket::Socket;
use rmpv::Value;
use tokio_util::sync::CancellationToken;

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
    let out = tokio::process::Command::new(quartet_e2e::python().await)
        .args(["zerorpc_peer.py", "client", &endpoint])
        .current_dir(quartet_e2e::repo_root().join("e2e/python"))
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

#[tokio::test]
async fn our_client_calls_the_python_server_and_notices_when_it_dies() {
    use quartet_rpc_gateway::zerorpc::client::{CallError, Client, Reply};
    let (mut server, endpoint) = quartet_e2e::zerorpc_server().await;
    let period = Duration::from_secs(1);
    let client = Client::connect(&endpoint, None)
        .expect("connect")
        .heartbeat(period);
    let value = |reply: Reply| match reply {
        Reply::Value(v) => v,
        Reply::Stream(_) => panic!("a stream where a value was expected"),
    };
    let ten = Duration::from_secs(10);
    let sum = client
        .call("add", vec![1.into(), 2.into()], ten)
        .await
        .expect("add");
    assert_eq!(value(sum), Value::from(3));

    let failed = client
        .call("fail", vec!["boom".into()], ten)
        .await
        .expect_err("fails");
    let CallError::Remote(e) = failed else {
        panic!("{failed:?}")
    };
    assert_eq!(
        (e.name.as_str(), e.message.as_str()),
        ("ValueError", "boom")
    );
    assert!(
        e.traceback.contains("raise ValueError(message)"),
        "{}",
        e.traceback
    );

    let Reply::Stream(items) = client
        .call("count", vec![300.into()], ten)
        .await
        .expect("count")
    else {
        panic!("count streams")
    };
    let items = items.collect().await.expect("every item");
    assert_eq!(items, (0..300).map(Value::from).collect::<Vec<_>>());

    let name = client
        .call("_zerorpc_name", vec![], ten)
        .await
        .expect("name");
    assert_eq!(value(name), Value::from("Demo"));
    let unknown = client
        .call("nosuch", vec![], ten)
        .await
        .expect_err("unknown");
    assert!(
        matches!(&unknown, CallError::Remote(e) if e.name == "NameError"),
        "{unknown:?}"
    );

    // A call longer than three heartbeat periods is kept alive by both sides' heartbeats.
    let slow = client
        .call("slow", vec![3.5.into()], ten)
        .await
        .expect("slow");
    assert_eq!(value(slow), Value::from("done"));

    // Several calls in flight on one connection.
    let calls = (0..20).map(|i| {
        let client = client.clone();
        async move { client.call("add", vec![i.into(), 1.into()], ten).await }
    });
    let sums: Vec<_> = futures::future::join_all(calls).await;
    for (i, sum) in sums.into_iter().enumerate() {
        assert_eq!(value(sum.expect("add")), Value::from(i as i64 + 1));
    }

    // The server freezes (SIGSTOP) in the middle of a call: its connection stays up, so the
    // silence tells — LostRemote after about two periods, not a hang.
    let slow_call = || {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call("slow", vec![60.into()], Duration::from_secs(60))
                .await
        })
    };
    let pending = slow_call();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.id().expect("running").to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill runs");
    assert!(stopped.success());
    let frozen = std::time::Instant::now();
    let lost = pending.await.expect("the call ends");
    let waited = frozen.elapsed();
    assert!(matches!(lost, Err(CallError::LostRemote(_))), "{lost:?}");
    assert!(
        waited > period * 3 / 2 && waited < period * 5 / 2,
        "noticed after {waited:?}"
    );

    // The server dies (SIGKILL) in the middle of a call: its connection drops, and the call
    // fails at once rather than after the heartbeats.
    let pending = slow_call();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().await.expect("kill the server");
    let killed = std::time::Instant::now();
    let lost = pending.await.expect("the call ends");
    let waited = killed.elapsed();
    assert!(matches!(lost, Err(CallError::Disconnected)), "{lost:?}");
    assert!(lost.expect_err("lost").is_lost_remote());
    assert!(waited < period / 2, "noticed after {waited:?}");
}

/// A service whose one-way methods `record(i, tag)` and `tick(i)` report on a channel.
fn collector() -> (Service, tokio::sync::mpsc::UnboundedReceiver<(i64, String)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (record, tick) = (tx.clone(), tx);
    let service = Service::new("collector")
        .method("record", &["i", "tag"], "", move |args| {
            let _ = record.send((
                args[0].as_i64().unwrap_or(-1),
                args[1].as_str().unwrap_or_default().to_owned(),
            ));
            async { Ok(Value::Nil) }
        })
        .method("tick", &["i"], "", move |args| {
            let _ = tick.send((args[0].as_i64().unwrap_or(-1), "tick".to_owned()));
            async { Ok(Value::Nil) }
        });
    (service, rx)
}

/// `zerorpc_peer.py` with `args`, once it printed "ready"; its further lines.
async fn peer(
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(quartet_e2e::python().await)
        .arg("zerorpc_peer.py")
        .args(args)
        .current_dir(quartet_e2e::repo_root().join("e2e/python"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("ready within 30 s");
    assert_eq!(ready.expect("read").as_deref(), Some("ready"));
    (child, lines)
}

fn free_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("tcp://127.0.0.1:{port}")
}

/// The next `n` events a collector reports, within 10 s.
async fn take(
    got: &mut tokio::sync::mpsc::UnboundedReceiver<(i64, String)>,
    n: usize,
) -> Vec<(i64, String)> {
    let mut events = Vec::new();
    while events.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .expect("events within 10 s")
            .expect("the receiver runs");
        events.push(event);
    }
    events
}

#[tokio::test]
async fn push_pull_and_publish_subscribe_work_both_ways_with_python() {
    use quartet_rpc_gateway::zerorpc::pattern::{self, Sender};

    // zerorpc-python's Pusher → our puller: every event, in order.
    let (service, mut got) = collector();
    let socket = Arc::new(pattern::puller("tcp://127.0.0.1:0").expect("bind"));
    let endpoint = socket.endpoint().to_owned();
    let stop = CancellationToken::new();
    let receiver = tokio::spawn(pattern::receive(Arc::new(service), socket, stop.clone()));
    let pushed = tokio::process::Command::new(quartet_e2e::python().await)
        .args(["zerorpc_peer.py", "push", &endpoint, "50"])
        .current_dir(quartet_e2e::repo_root().join("e2e/python"))
        .status()
        .await
        .expect("python runs");
    assert!(pushed.success());
    let events = take(&mut got, 50).await;
    assert_eq!(
        events,
        (0..50).map(|i| (i, "py".to_owned())).collect::<Vec<_>>()
    );
    stop.cancel();
    assert_eq!(receiver.await.expect("receiver"), 0, "no failed events");

    // Our pusher → zerorpc-python's Puller.
    let endpoint = free_endpoint();
    let (_puller, mut lines) = peer(&["pull", &endpoint, "50"]).await;
    let pusher = Sender::pusher(&endpoint).expect("connect");
    for i in 0..50 {
        pusher
            .send("record", vec![i.into(), "rust".into()])
            .expect("push");
    }
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("within 30 s")
        .expect("read")
        .expect("a line");
    let pulled: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(
        pulled,
        serde_json::json!(
            (0..50)
                .map(|i| serde_json::json!([i, "rust"]))
                .collect::<Vec<_>>()
        )
    );

    // Our publisher → zerorpc-python's Subscriber: it joins while we publish, then gets
    // every tick from then on, in order.
    let publisher = Sender::publisher("tcp://127.0.0.1:0").expect("bind");
    let (_subscriber, mut lines) = peer(&["subscribe", publisher.endpoint(), "20"]).await;
    let mut i: i64 = 0;
    let line = loop {
        tokio::select! {
            line = lines.next_line() => break line.expect("read").expect("a line"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {
                publisher.send("tick", vec![i.into()]).expect("publish");
                i += 1;
            }
        }
    };
    let ticks: Vec<(i64, String)> = serde_json::from_str(&line).expect("json");
    assert_eq!(ticks.len(), 20);
    assert!(
        ticks.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "consecutive: {ticks:?}"
    );

    // zerorpc-python's Publisher → our subscriber.
    let endpoint = free_endpoint();
    let (_publisher, _) = peer(&["publish", &endpoint]).await;
    let (service, mut got) = collector();
    let socket = Arc::new(pattern::subscriber(&endpoint).expect("connect"));
    let stop = CancellationToken::new();
    let receiver = tokio::spawn(pattern::receive(Arc::new(service), socket, stop.clone()));
    let ticks = take(&mut got, 10).await;
    assert!(
        ticks
            .windows(2)
            .all(|w| w[1].0 == w[0].0 + 1 && w[1].1 == "tick"),
        "consecutive: {ticks:?}"
    );
    stop.cancel();
    assert_eq!(receiver.await.expect("receiver"), 0);
}
