//! `navigator-agent health`: the verdict from a running agent's answer and
//! the host checks (in process), and the real binary against a real agent
//! over RabbitMQ (`NAVIGATOR_TEST_TRANSPORT_URL`, from scripts/rabbitmq).

use std::sync::Arc;
use std::time::Duration;

use navigator_agent::health::check;
use navigator_agent::{Agent, AgentConfig};
use navigator_core::{Plan, PortRange};
use navigator_dataplane::preflight::{Finding, Scope};
use navigator_dataplane::{ApplyReport, Backend, BoxFuture, Severity};
use navigator_rpc::Transport;
use navigator_rpc::inproc::InProcTransport;
use tokio_util::sync::CancellationToken;

/// Carries nothing; its host check finds `findings`.
struct HostCheckBackend {
    findings: Vec<Finding>,
}

impl Backend for HostCheckBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn observe(&self) -> BoxFuture<'_, Vec<navigator_core::ForwardSpec>> {
        Box::pin(async { Vec::new() })
    }
    fn apply<'a>(&'a self, _plan: &'a Plan) -> BoxFuture<'a, ApplyReport> {
        Box::pin(async { ApplyReport::default() })
    }
    fn preflight<'a>(&'a self, _targets: &'a [std::net::IpAddr]) -> BoxFuture<'a, Vec<Finding>> {
        let findings = self.findings.clone();
        Box::pin(async move { findings })
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn finding(severity: Severity, problem: &str) -> Finding {
    Finding {
        severity,
        scope: Scope::All,
        problem: problem.into(),
        fix: "fix it".into(),
    }
}

fn pool() -> PortRange {
    "20000-20099".parse().unwrap()
}

/// Starts an agent of `host` on `transport`.
fn start_agent(transport: Arc<dyn Transport>, host: &str) -> CancellationToken {
    let agent = Arc::new(Agent::new(
        AgentConfig {
            host: host.into(),
            external_addresses: vec!["127.0.0.1".parse().unwrap()],
            port_range: pool(),
            report_interval: Duration::from_secs(30),
        },
        Arc::new(HostCheckBackend { findings: vec![] }),
    ));
    let stop = CancellationToken::new();
    tokio::spawn(navigator_agent::run(agent, transport, stop.clone()));
    stop
}

#[tokio::test]
async fn a_serving_agent_on_a_ready_host_is_ok() {
    let transport: Arc<dyn Transport> = Arc::new(InProcTransport::new());
    let _stop = start_agent(transport.clone(), "proxy-h1");
    let ready = HostCheckBackend { findings: vec![] };
    // The agent starts listening asynchronously: poll with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let health = loop {
        let health = check(
            transport.clone(),
            "proxy-h1",
            &ready,
            pool(),
            Some("32768\t60999"),
            None,
            Duration::from_secs(2),
        )
        .await;
        if health.healthy || tokio::time::Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.exit_code(), 0);
    assert!(
        health
            .line
            .starts_with("OK: agent proxy-h1 answers (fake backend, generation"),
        "{health:?}"
    );
    assert!(!health.line.contains('\n'));

    // Warnings (here: the pool in the ephemeral range) keep it OK.
    let health = check(
        transport.clone(),
        "proxy-h1",
        &HostCheckBackend {
            findings: vec![finding(Severity::Warning, "bridge netfilter is off")],
        },
        "40000-40099".parse().unwrap(),
        Some("32768\t60999"),
        None,
        Duration::from_secs(2),
    )
    .await;
    assert!(health.healthy, "{health:?}");
    assert!(health.line.contains("2 host warning(s)"), "{health:?}");

    // A blocking host problem fails it, named with its fix.
    let health = check(
        transport,
        "proxy-h1",
        &HostCheckBackend {
            findings: vec![finding(Severity::Blocking, "nft is not installed")],
        },
        pool(),
        None,
        None,
        Duration::from_secs(2),
    )
    .await;
    assert!(!health.healthy);
    assert_eq!(health.exit_code(), 1);
    assert_eq!(
        health.line,
        "FAILED: fake backend: nft is not installed; fix: fix it"
    );
}

#[tokio::test]
async fn an_agent_that_does_not_answer_fails() {
    let transport: Arc<dyn Transport> = Arc::new(InProcTransport::new());
    let health = check(
        transport,
        "nobody-here",
        &HostCheckBackend { findings: vec![] },
        pool(),
        None,
        None,
        Duration::from_secs(1),
    )
    .await;
    assert!(!health.healthy, "{health:?}");
    assert!(
        health
            .line
            .starts_with("FAILED: agent nobody-here did not answer"),
        "{health:?}"
    );
    assert!(
        health.line.contains("is navigator-agent running"),
        "{health:?}"
    );
}

fn broker_url() -> Option<String> {
    match std::env::var("NAVIGATOR_TEST_TRANSPORT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("RabbitMQ tests need scripts/rabbitmq (run scripts/test-all)")
        }
        _ => {
            eprintln!(
                "skipped: NAVIGATOR_TEST_TRANSPORT_URL is not set; RabbitMQ tests need scripts/rabbitmq"
            );
            None
        }
    }
}

/// Runs `navigator-agent health` for `host` with the broker at `url`.
fn run_health(dir: &std::path::Path, url: &str, host: &str) -> (i32, String) {
    let conf = dir.join(format!("{host}.conf"));
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nhost = {host}\ntransport_url = {url}\n[agent]\nport_range = 20000-20099\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_navigator-agent"))
        .arg("--config-file")
        .arg(&conf)
        .args(["health", "--timeout", "5"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The binary, as a monitor runs it: OK for a host whose agent serves over
/// RabbitMQ, FAILED for one without an agent and for an unreachable broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_asks_the_agent_over_rabbitmq() {
    let Some(url) = broker_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let host = format!("health-{}", std::process::id());
    let amqp = Arc::new(
        navigator_rpc::AmqpTransport::connect(&url, navigator_rpc::amqp::DEFAULT_EXCHANGE)
            .await
            .unwrap(),
    );
    let stop = start_agent(amqp.clone(), &host);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (code, line) = loop {
        let dir = dir.path().to_owned();
        let (url, host) = (url.clone(), host.clone());
        let (code, line) = tokio::task::spawn_blocking(move || run_health(&dir, &url, &host))
            .await
            .unwrap();
        if code == 0 || std::time::Instant::now() > deadline {
            break (code, line);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with(&format!("OK: agent {host} answers")),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");

    let (code, line) = {
        let dir = dir.path().to_owned();
        let url = url.clone();
        tokio::task::spawn_blocking(move || run_health(&dir, &url, "no-such-agent-here"))
            .await
            .unwrap()
    };
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("FAILED: agent no-such-agent-here"),
        "{line}"
    );

    let (code, line) = {
        let dir = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            run_health(&dir, "rabbit://u:secret@127.0.0.1:1/", "any")
        })
        .await
        .unwrap()
    };
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("FAILED: cannot connect to RabbitMQ"),
        "{line}"
    );
    assert!(!line.contains("secret"), "{line}");
    stop.cancel();
    amqp.close().await;
}
