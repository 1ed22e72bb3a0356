//! Nova's `instance.delete.end` end to end: the real `navigator-server`
//! (all-in-one, listening to Nova on `[nova] transport_url`), forwards made
//! with the CLI's `--instance-id`, and Nova's sample published by Python
//! oslo.messaging's Notifier on a real RabbitMQ (`scripts/rabbitmq`). The
//! instance's forward disappears and stops carrying traffic, the other one
//! stays, and the audit line names the user `nova-notification`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use navigator_e2e::{Auth, Env, TcpEcho, assert_tcp_reply, eventually, field};
use serde_json::{Value, json};

const INSTANCE: &str = "178b0921-8f85-4257-88b6-2e743b5a975c";

fn transport_url() -> Option<String> {
    match std::env::var("NAVIGATOR_TEST_TRANSPORT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "NAVIGATOR_TEST_TRANSPORT_URL is not set: the Nova test needs scripts/rabbitmq (run scripts/test-all)"
            )
        }
        _ => {
            eprintln!(
                "\n*** skipped: NAVIGATOR_TEST_TRANSPORT_URL is not set; the Nova test needs RabbitMQ \
                 (`scripts/rabbitmq start DIR`, then source DIR/env) ***\n"
            );
            None
        }
    }
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Publishes `messages` as Nova would, one by one (see nova_notifier.py).
fn publish(url: &str, exchange: &str, messages: &[Value]) {
    let mut child = Command::new("/usr/bin/python3")
        .arg(repo_file("crates/server/tests/nova_notifier.py"))
        .args([url, exchange])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (python3-oslo.messaging)");
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    for message in messages {
        writeln!(stdin, "{message}").expect("write to the notifier");
        let line = stdout.next().and_then(Result::ok);
        assert_eq!(line.as_deref(), Some("ok"), "nova_notifier.py failed");
    }
    drop(stdin);
    let _ = child.wait();
}

fn versioned_sample() -> Value {
    let text = std::fs::read_to_string(repo_file(
        "crates/server/tests/data/nova-instance-delete-end.json",
    ))
    .expect("the Nova sample");
    let sample: Value = serde_json::from_str(&text).expect("JSON");
    json!({
        "topic": "versioned_notifications", "driver": "messagingv2",
        "publisher_id": sample["publisher_id"], "event_type": sample["event_type"],
        "payload": sample["payload"],
    })
}

#[test]
fn a_deleted_instance_loses_its_forwards() {
    let Some(url) = transport_url() else { return };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let suffix = format!("{}x{nanos:x}", std::process::id());
    let exchange = format!("nova-e2e-{suffix}");
    // Nova's exchange exists before the server starts (Nova declares it).
    publish(
        &url,
        &exchange,
        &[json!({
            "topic": "versioned_notifications", "driver": "messagingv2",
            "publisher_id": "nova-compute:compute", "event_type": "instance.create.end",
            "payload": {"nova_object.data": {"uuid": "someone-else"}}
        })],
    );
    let env = Env::new(
        "nova",
        &Auth::Noauth,
        &format!(
            "[nova]\nnotifications = true\ntransport_url = {url}\nexchange = {exchange}\nqueue = navigator-e2e-{suffix}\n"
        ),
    );
    let server = env.start();
    eventually(
        "the server listens to Nova",
        Duration::from_secs(60),
        || {
            if server.logs().contains("listening to notifications") {
                Ok(())
            } else {
                Err(server.logs())
            }
        },
    );
    let echo = TcpEcho::start("127.0.0.1", "A:");
    let create = |instance: &str| {
        server.create_loopback_forward("tcp", &echo.port(), &["--instance-id", instance])
    };
    let doomed = create(INSTANCE);
    let kept = create("another-instance");
    let port = |f: &Value| f["external_port"].as_u64().unwrap_or_default() as u16;
    assert_tcp_reply(
        &field(&doomed, "external_address"),
        port(&doomed),
        "hi",
        "A:hi",
    );

    publish(&url, &exchange, &[versioned_sample()]);
    eventually(
        "the deleted instance's forward is gone",
        Duration::from_secs(30),
        || match server.forward_ids(&[]).as_slice() {
            [only] if *only == field(&kept, "id") => Ok(()),
            other => Err(format!("forwards: {other:?}")),
        },
    );
    navigator_e2e::tcp_refused(&field(&doomed, "external_address"), port(&doomed))
        .expect("the deleted forward no longer listens");
    assert_tcp_reply(&field(&kept, "external_address"), port(&kept), "hi", "A:hi");
    let logs = server.logs();
    assert!(
        logs.lines().any(|l| l.contains("navigator::audit")
            && l.contains("nova-notification")
            && l.contains(&field(&doomed, "id"))),
        "no audit line for the deletion:\n{logs}"
    );
}
