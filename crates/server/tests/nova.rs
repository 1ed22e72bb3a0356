//! Nova's `instance.delete.end` through a real RabbitMQ (`scripts/rabbitmq`)
//! into the in-process stack (real store, agent and relay): Nova's own
//! samples, published by Python oslo.messaging's Notifier in both formats,
//! remove (or mark) that instance's forwards and close their listeners;
//! other instances' forwards, other event types and malformed bodies change
//! nothing, and nothing stays in the queue.
//!
//! Each test uses its own exchange and queue names, so tests share the broker.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use navigator_api::v1::NewForward;
use navigator_core::{ForwardStatus, PortForward, PortRange, Protocol};
use navigator_server::config::{Config, NovaConfig, OnInstanceDelete};
use navigator_server::control::Control;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[path = "support/stack.rs"]
mod stack;

const PYTHON: &str = "/usr/bin/python3";
const SAMPLE_INSTANCE: &str = "178b0921-8f85-4257-88b6-2e743b5a975c";

fn broker_url() -> Option<String> {
    // The listener's log lines (unreadable bodies, retries) show with --nocapture.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("navigator=info,navigator_rpc=info,navigator_server=info")
        .with_test_writer()
        .try_init();
    match std::env::var("NAVIGATOR_TEST_TRANSPORT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("Nova notification tests need scripts/rabbitmq (run scripts/test-all)")
        }
        _ => {
            eprintln!(
                "skipped: NAVIGATOR_TEST_TRANSPORT_URL is not set; Nova notification tests need scripts/rabbitmq (run scripts/test-all)"
            );
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn data(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Nova's versioned sample for `instance`.
fn versioned(instance: &str) -> Value {
    let mut sample = data("nova-instance-delete-end.json");
    sample["payload"]["nova_object.data"]["uuid"] = instance.into();
    json!({
        "topic": "versioned_notifications",
        "driver": "messagingv2",
        "publisher_id": sample["publisher_id"],
        "event_type": sample["event_type"],
        "payload": sample["payload"],
    })
}

/// The legacy payload for `instance`, sent bare (driver `messaging`).
fn legacy(instance: &str) -> Value {
    let mut payload = data("nova-compute.instance.delete.end-payload.json");
    payload["instance_id"] = instance.into();
    json!({
        "topic": "notifications",
        "driver": "messaging",
        "publisher_id": "compute.compute",
        "event_type": "compute.instance.delete.end",
        "payload": payload,
    })
}

/// Nova's notifier, as a Python process fed one message per line.
struct Notifier {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Notifier {
    async fn start(url: &str, exchange: &str) -> Notifier {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nova_notifier.py");
        let mut child = tokio::process::Command::new(PYTHON)
            .arg(script)
            .arg(url)
            .arg(exchange)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run /usr/bin/python3 (python3-oslo.messaging)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Notifier {
            child,
            stdin,
            stdout,
        }
    }

    async fn publish(&mut self, message: Value) {
        self.stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .expect("the notifier answers within 60 s")
            .unwrap();
        assert_eq!(line.as_deref(), Some("ok"), "nova_notifier.py failed");
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

fn nova_config(url: &str, exchange: &str, queue: &str, action: OnInstanceDelete) -> NovaConfig {
    NovaConfig {
        notifications: true,
        transport_url: Some(url.to_owned()),
        rabbit: Default::default(),
        exchange: exchange.to_owned(),
        topics: vec!["versioned_notifications".into(), "notifications".into()],
        queue: queue.to_owned(),
        on_instance_delete: action,
    }
}

async fn create(control: &Control, project: &str, instance: &str, target_port: u16) -> PortForward {
    let new = NewForward {
        protocol: Protocol::Tcp,
        internal_ip_address: Ipv4Addr::LOCALHOST.into(),
        internal_ports: PortRange::single(target_port),
        external_ports: None,
        external_address: None,
        instance_id: Some(instance.to_owned()),
        description: String::new(),
        proxy: None,
        controls: Default::default(),
    };
    let forward = control.create(project, new).await.unwrap();
    assert_eq!(forward.status, ForwardStatus::Active, "{forward:?}");
    forward
}

async fn listening(forward: &PortForward) -> bool {
    let address = SocketAddr::new(forward.external_address, forward.external_port);
    tokio::net::TcpStream::connect(address).await.is_ok()
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages left in `queue` (ready and unacknowledged), by rabbitmqctl.
fn queue_depth(queue: &str) -> Option<u64> {
    let dir = std::env::var("NAVIGATOR_TEST_RABBITMQ_DIR").ok()?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq");
    let out = std::process::Command::new(script)
        .args([
            "ctl",
            &dir,
            "-q",
            "list_queues",
            "-p",
            "navigator",
            "name",
            "messages",
        ])
        .arg("--no-table-headers")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(queue)).then(|| fields.next()?.parse().ok())?
    })
}

/// Deletes a test's durable queue (best effort; the broker is throwaway).
fn delete_queue(queue: &str) {
    let Ok(dir) = std::env::var("NAVIGATOR_TEST_RABBITMQ_DIR") else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq");
    let _ = std::process::Command::new(script)
        .args(["ctl", &dir, "-q", "delete_queue", "-p", "navigator", queue])
        .output();
}

/// A pool of 20 ports from `port_first`, which callers keep below Linux's
/// ephemeral range (32768-60999): a pool in there once lost a port to an
/// outgoing connection of another test and the forward went to ERROR.
fn config(port_first: u16) -> Config {
    let text = format!("[agent]\nport_range = {port_first}-{}\n", port_first + 19);
    Config::parse("test.conf", &text).unwrap()
}

/// Starts the stack and a target to forward to; returns the target's port.
async fn target() -> u16 {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_instances_lose_their_forwards_in_both_formats() {
    let Some(url) = broker_url() else { return };
    let stack = stack::start(config(28700)).await;
    let control = stack.control.clone();
    let target_port = target().await;
    let exchange = unique("nova");
    let queue = unique("navigator-notifications");

    // Nova's exchange does not exist yet: the listener waits, never creates it.
    let settings = nova_config(&url, &exchange, &queue, OnInstanceDelete::Delete);
    let first = navigator_server::nova::start(control.clone(), &settings)
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !*first.consuming().borrow(),
        "consuming without Nova's exchange"
    );

    let mut nova = Notifier::start(&url, &exchange).await;
    // An unrelated notification makes the notifier declare its exchange.
    nova.publish(json!({
        "topic": "versioned_notifications", "driver": "messagingv2",
        "publisher_id": "nova-compute:compute", "event_type": "instance.create.end",
        "payload": {"nova_object.data": {"uuid": "not-ours"}}
    }))
    .await;
    // A second server consuming the same queue.
    let second = navigator_server::nova::start(control.clone(), &settings)
        .unwrap()
        .unwrap();
    for listener in [&first, &second] {
        let mut consuming = listener.consuming();
        tokio::time::timeout(Duration::from_secs(60), consuming.wait_for(|c| *c))
            .await
            .expect("the listener consumes once Nova's exchange exists")
            .unwrap();
    }

    let a1 = create(&control, "p1", SAMPLE_INSTANCE, target_port).await;
    let a2 = create(&control, "p2", SAMPLE_INSTANCE, target_port).await;
    let b = create(&control, "p1", "legacy-instance", target_port).await;
    let kept_other = create(&control, "p1", "other-instance", target_port).await;
    let kept_start = create(&control, "p1", "starting-to-delete", target_port).await;
    for forward in [&a1, &a2, &b, &kept_other, &kept_start] {
        assert!(listening(forward).await, "{} listens", forward.id);
    }

    // A body that is not JSON, and one without an instance id: logged, acked.
    nova.publish(json!({"raw": "this is not json", "routing_key": "notifications.info"}))
        .await;
    nova.publish(json!({
        "topic": "notifications", "driver": "messagingv2",
        "publisher_id": "compute.compute", "event_type": "compute.instance.delete.end",
        "payload": {"state": "deleted"}
    }))
    .await;
    // Not a deletion (yet).
    let mut start = versioned("starting-to-delete");
    start["event_type"] = "instance.delete.start".into();
    nova.publish(start).await;
    // Nova's samples: versioned (twice, as with two formats or a redelivery) and legacy.
    nova.publish(versioned(SAMPLE_INSTANCE)).await;
    nova.publish(legacy(SAMPLE_INSTANCE)).await;
    nova.publish(legacy("legacy-instance")).await;

    let store = control.store().clone();
    wait_until("the deleted instances' forwards are gone", || {
        let store = store.clone();
        async move {
            store
                .forwards_of_instance(SAMPLE_INSTANCE)
                .await
                .unwrap()
                .is_empty()
                && store
                    .forwards_of_instance("legacy-instance")
                    .await
                    .unwrap()
                    .is_empty()
        }
    })
    .await;
    for gone in [&a1, &a2, &b] {
        assert!(!listening(gone).await, "{} still listens", gone.id);
    }
    for kept in [&kept_other, &kept_start] {
        let now = store.get_forward(kept.id).await.unwrap().expect("kept");
        assert_eq!(now.status, ForwardStatus::Active);
        assert!(listening(kept).await);
    }
    if std::env::var_os("NAVIGATOR_TEST_RABBITMQ_DIR").is_some() {
        wait_until("the queue is drained (nothing requeued)", || async {
            queue_depth(&queue) == Some(0)
        })
        .await;
    }
    nova.stop().await;
    drop((first, second));
    delete_queue(&queue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_keeps_the_forward_in_error_and_stops_carrying_it() {
    let Some(url) = broker_url() else { return };
    let stack = stack::start(config(28730)).await;
    let control = stack.control.clone();
    let target_port = target().await;
    let exchange = unique("nova");
    let queue = unique("navigator-notifications");

    let mut nova = Notifier::start(&url, &exchange).await;
    nova.publish(json!({
        "topic": "notifications", "driver": "messagingv2",
        "publisher_id": "compute.compute", "event_type": "compute.instance.create.end",
        "payload": {"instance_id": "not-ours"}
    }))
    .await;
    let listener = navigator_server::nova::start(
        control.clone(),
        &nova_config(&url, &exchange, &queue, OnInstanceDelete::Mark),
    )
    .unwrap()
    .unwrap();
    let mut consuming = listener.consuming();
    tokio::time::timeout(Duration::from_secs(60), consuming.wait_for(|c| *c))
        .await
        .expect("the listener consumes")
        .unwrap();

    let marked = create(&control, "p1", SAMPLE_INSTANCE, target_port).await;
    let kept = create(&control, "p1", "other-instance", target_port).await;
    nova.publish(versioned(SAMPLE_INSTANCE)).await;

    let store = control.store().clone();
    let id = marked.id;
    wait_until("the forward is marked", || {
        let store = store.clone();
        async move { store.get_forward(id).await.unwrap().unwrap().status == ForwardStatus::Error }
    })
    .await;
    let now = store.get_forward(marked.id).await.unwrap().unwrap();
    let reason = now.status_reason.unwrap();
    assert!(
        reason.starts_with(navigator_store::INSTANCE_DELETED) && reason.contains(SAMPLE_INSTANCE),
        "{reason}"
    );
    assert!(!listening(&marked).await, "a marked forward is not carried");
    // A full sync and the agent's report neither revive nor unmark it.
    control.sync_host("proxy-1").await.unwrap();
    control
        .report_state(stack.agent.state().await)
        .await
        .unwrap();
    let now = store.get_forward(marked.id).await.unwrap().unwrap();
    assert_eq!(now.status, ForwardStatus::Error);
    assert!(!listening(&marked).await);
    assert!(listening(&kept).await);
    nova.stop().await;
    drop(listener);
    delete_queue(&queue);
}
