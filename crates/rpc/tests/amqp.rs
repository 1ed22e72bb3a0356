//! The RabbitMQ transport against a real broker (`scripts/rabbitmq`, started by
//! `scripts/test-all`): round trips between Rust peers, failures, timeouts,
//! a broker restart, and interoperability with Python oslo.messaging in both
//! directions.
//!
//! Each test uses its own topic or host names, so they can share the broker
//! and run in parallel; the restart test takes the broker lock exclusively.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use navigator_rpc::{
    AgentState, AmqpTransport, RemoteError, RpcError, Target, Transport, amqp, topics,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{RwLock, mpsc};

/// Shared by every test; the broker-restart test takes it exclusively so no
/// other test sees the broker go away under it.
static BROKER: RwLock<()> = RwLock::const_new(());

/// Debian's Python, which has python3-oslo.messaging (a pyenv python3 on PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// The broker's URL, or `None` (with a loud line) when it is not set up.
fn broker_url() -> Option<String> {
    match std::env::var("NAVIGATOR_TEST_TRANSPORT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("RabbitMQ tests need scripts/rabbitmq (run scripts/test-all)")
        }
        _ => {
            eprintln!(
                "skipped: NAVIGATOR_TEST_TRANSPORT_URL is not set; RabbitMQ tests need scripts/rabbitmq (run scripts/test-all)"
            );
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn connect(url: &str) -> Arc<AmqpTransport> {
    Arc::new(
        AmqpTransport::connect(url, amqp::DEFAULT_EXCHANGE)
            .await
            .expect("connect to the test broker"),
    )
}

/// Serves like an agent: `get_state` answers an [`AgentState`], `echo` its
/// arguments, `fail` a `ValueError`; casts are forwarded to `seen`.
fn serve(
    mut incoming: mpsc::Receiver<navigator_rpc::Incoming>,
    host: &str,
) -> mpsc::Receiver<String> {
    let (seen, seen_rx) = mpsc::channel(64);
    let host = host.to_owned();
    tokio::spawn(async move {
        while let Some(msg) = incoming.recv().await {
            let answer = match msg.method.as_str() {
                "get_state" => Ok(serde_json::to_value(AgentState {
                    host: host.clone(),
                    backend: "fake".into(),
                    port_range: "20000-20010".into(),
                    generation: 3,
                    ..AgentState::default()
                })
                .expect("state encodes")),
                "echo" => Ok(msg.args.clone()),
                "fail" => Err(RemoteError::new("ValueError", "port 22 is taken")),
                other => Err(RemoteError::new(
                    "NoSuchMethod",
                    format!("no method {other}"),
                )),
            };
            match msg.reply {
                Some(reply) => {
                    let _ = reply.send(answer);
                }
                None => {
                    let _ = seen.send(msg.method).await;
                }
            }
        }
    });
    seen_rx
}

async fn recv(seen: &mut mpsc::Receiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("a cast arrives within 10 s")
        .expect("listener alive")
}

#[tokio::test]
async fn call_cast_and_fanout_round_trip_between_rust_peers() {
    let Some(url) = broker_url() else { return };
    let _broker = BROKER.read().await;
    let topic = unique("nav-test");
    let client = connect(&url).await;
    let server = connect(&url).await;
    let other = connect(&url).await;

    let mut a = serve(
        server.listen(&Target::host(&topic, "a")).await.unwrap(),
        "a",
    );
    let mut shared = serve(server.listen(&Target::topic(&topic)).await.unwrap(), "a");
    let fanout = Target {
        fanout: true,
        ..Target::topic(&topic)
    };
    let mut fan_a = serve(server.listen(&fanout).await.unwrap(), "a");
    let mut fan_b = serve(other.listen(&fanout).await.unwrap(), "b");

    let reply = client
        .call(
            &Target::host(&topic, "a"),
            "echo",
            json!({"n": 1, "s": "ü"}),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(reply, json!({"n": 1, "s": "ü"}));
    let state: AgentState = serde_json::from_value(
        client
            .call(
                &Target::host(&topic, "a"),
                "get_state",
                json!({}),
                Duration::from_secs(10),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((state.host.as_str(), state.generation), ("a", 3));

    client
        .cast(&Target::host(&topic, "a"), "direct", json!({}))
        .await
        .unwrap();
    assert_eq!(recv(&mut a).await, "direct");
    client
        .cast(&Target::topic(&topic), "shared", json!({}))
        .await
        .unwrap();
    assert_eq!(recv(&mut shared).await, "shared");
    client.cast(&fanout, "everyone", json!({})).await.unwrap();
    assert_eq!(recv(&mut fan_a).await, "everyone");
    assert_eq!(recv(&mut fan_b).await, "everyone");
    other.close().await;
}

#[tokio::test]
async fn remote_failure_comes_back_as_remote_error() {
    let Some(url) = broker_url() else { return };
    let _broker = BROKER.read().await;
    let host = unique("host");
    let client = connect(&url).await;
    let server = connect(&url).await;
    let _seen = serve(
        server
            .listen(&Target::host(topics::PROXY, &host))
            .await
            .unwrap(),
        &host,
    );
    let err = client
        .call(
            &Target::host(topics::PROXY, &host),
            "fail",
            json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    match err {
        RpcError::Remote { method, source, .. } => {
            assert_eq!(method, "fail");
            assert_eq!(source, RemoteError::new("ValueError", "port 22 is taken"));
        }
        other => panic!("expected a remote error, got {other}"),
    }
}

#[tokio::test]
async fn call_to_a_host_nobody_serves_times_out_in_time() {
    let Some(url) = broker_url() else { return };
    let _broker = BROKER.read().await;
    let client = connect(&url).await;
    let host = unique("nobody");
    let started = Instant::now();
    let err = client
        .call(
            &Target::host(topics::PROXY, &host),
            "get_state",
            json!({}),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("get_state") && text.contains(&host) && text.contains("2s"),
        "{text}"
    );
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq")
}

async fn broker_script(args: &[&str]) {
    let status = tokio::process::Command::new(script())
        .args(args)
        .stdout(Stdio::null())
        .status()
        .await
        .expect("run scripts/rabbitmq");
    assert!(status.success(), "scripts/rabbitmq {args:?} failed");
}

/// Starts the broker again if the restart test fails while it is stopped, so
/// that the other tests still find it.
struct StartOnDrop(Option<String>);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::process::Command::new(script())
                .args(["start", &dir])
                .stdout(Stdio::null())
                .status();
        }
    }
}

#[tokio::test]
async fn reconnects_after_a_broker_restart_and_says_so() {
    let Some(url) = broker_url() else { return };
    let Ok(dir) = std::env::var("NAVIGATOR_TEST_RABBITMQ_DIR") else {
        eprintln!("skipped: NAVIGATOR_TEST_RABBITMQ_DIR is not set, cannot restart the broker");
        return;
    };
    let _broker = BROKER.write().await;
    let host = unique("restart");
    let target = Target::host(topics::PROXY, &host);
    let client = connect(&url).await;
    let server = connect(&url).await;
    let _seen = serve(server.listen(&target).await.unwrap(), &host);
    let mut client_reconnects = client.reconnects();
    let mut server_reconnects = Transport::reconnects(server.as_ref()).expect("amqp reconnects");
    let call = |timeout| client.call(&target, "echo", json!({"before": true}), timeout);
    call(Duration::from_secs(10)).await.unwrap();

    broker_script(&["stop", &dir]).await;
    let mut restart = StartOnDrop(Some(dir.clone()));
    // While the broker is down, a call fails cleanly at its deadline.
    let started = Instant::now();
    let err = call(Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(!client.is_connected());
    // What the server's /healthcheck reads.
    assert_eq!(Transport::connected(client.as_ref()), Some(false));
    broker_script(&["start", &dir]).await;
    restart.0 = None;

    for reconnects in [&mut client_reconnects, &mut server_reconnects] {
        tokio::time::timeout(Duration::from_secs(90), reconnects.changed())
            .await
            .expect("reconnected within 90 s")
            .unwrap();
        assert_eq!(*reconnects.borrow(), 1);
    }
    // The listener's queue was re-declared on the new broker.
    let reply = call(Duration::from_secs(10)).await.unwrap();
    assert_eq!(reply, json!({"before": true}));
    assert_eq!(Transport::connected(client.as_ref()), Some(true));
}

#[tokio::test]
async fn python_oslo_client_calls_a_rust_agent() {
    let Some(url) = broker_url() else { return };
    let _broker = BROKER.read().await;
    let host = unique("py-client");
    let server = connect(&url).await;
    let _seen = serve(
        server
            .listen(&Target::host(topics::PROXY, &host))
            .await
            .unwrap(),
        &host,
    );
    let run = |method: &'static str| {
        let url = url.clone();
        let host = host.clone();
        async move {
            let out = tokio::process::Command::new(PYTHON)
                .arg(peer_script())
                .args(["call", &url, topics::PROXY, &host, method])
                .stderr(Stdio::inherit())
                .output()
                .await
                .expect("run /usr/bin/python3 (python3-oslo.messaging)");
            assert!(out.status.success(), "oslo_peer.py call {method} failed");
            let line = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str::<Value>(line.trim())
                .unwrap_or_else(|e| panic!("oslo_peer.py printed {line:?}: {e}"))
        }
    };
    let state = run("get_state").await;
    println!("python got: {state}");
    assert_eq!(state["result"]["host"], host.as_str());
    assert_eq!(state["result"]["generation"], 3);
    assert_eq!(state["result"]["backend"], "fake");
    // The failure format rebuilds a builtins exception on the Python side.
    let failed = run("fail").await;
    assert_eq!(failed["error"], "ValueError", "{failed}");
    // oslo appends the remote traceback to the message.
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("port 22 is taken"), "{failed}");
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oslo_peer.py")
}

#[tokio::test]
async fn rust_calls_a_python_oslo_server() {
    let Some(url) = broker_url() else { return };
    let _broker = BROKER.read().await;
    let host = unique("py-server");
    let mut python = tokio::process::Command::new(PYTHON)
        .arg(peer_script())
        .args(["serve", &url, topics::PROXY, &host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run /usr/bin/python3 (python3-oslo.messaging)");
    let mut stdout = BufReader::new(python.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("python server ready within 30 s")
        .expect("read python's stdout");
    assert_eq!(ready.as_deref(), Some("READY"));

    let client = connect(&url).await;
    let target = Target::host(topics::PROXY, &host);
    let state: AgentState = serde_json::from_value(
        client
            .call(&target, "get_state", json!({}), Duration::from_secs(10))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((state.host.as_str(), state.generation), ("python-peer", 7));
    let err = client
        .call(&target, "fail", json!({}), Duration::from_secs(10))
        .await
        .unwrap_err();
    match err {
        RpcError::Remote { source, .. } => {
            assert_eq!(source, RemoteError::new("ValueError", "python says no"));
        }
        other => panic!("expected a remote error, got {other}"),
    }
    let err = client
        .call(
            &target,
            "no_such_method",
            json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote { source, .. } if source.exc_type == "NoSuchMethod"),
        "{err}"
    );

    let mut stdin = python.stdin.take().expect("stdin");
    stdin.shutdown().await.ok();
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), python.wait())
        .await
        .expect("python server stops within 30 s")
        .expect("wait for python");
    assert!(status.success());
}

/// A heartbeat cast with a time to live is dropped by the broker once that
/// has passed with nobody taking it; a plain cast waits in the queue.
#[tokio::test]
async fn an_expiring_cast_nobody_takes_in_time_is_dropped() {
    let Some(url) = broker_url() else { return };
    let _broker = BROKER.read().await;
    let topic = unique("expiring");
    let target = Target::topic(&topic);
    // A listener declares the topic's queue, which outlives it.
    let first = connect(&url).await;
    drop(first.listen(&target).await.expect("listen"));
    first.close().await;
    let sender = connect(&url).await;
    sender
        .cast_expiring(&target, "stale", json!({}), Duration::from_millis(200))
        .await
        .expect("cast");
    sender.cast(&target, "kept", json!({})).await.expect("cast");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let late = connect(&url).await;
    let mut seen = serve(late.listen(&target).await.expect("listen"), "late");
    assert_eq!(recv(&mut seen).await, "kept", "the expired cast is gone");
    sender.close().await;
    late.close().await;
}
