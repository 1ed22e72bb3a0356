//! The agent's reconcile loop against a fake backend, and its RPC service
//! over the in-process transport.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use navigator_agent::{Agent, AgentConfig};
use navigator_core::{ForwardId, ForwardSpec, ForwardUsage, Plan, PortRange, Protocol};
use navigator_dataplane::{ApplyReport, Backend, BoxFuture, ForwardFailure, UsageReport};
use navigator_rpc::inproc::InProcTransport;
use navigator_rpc::{AgentClient, ForwardEntry, ResultStatus, Transport};

/// Carries forwards in a map; ports listed in `busy` fail to apply. With
/// `counts`, reports usage for every carried forward from its listen port
/// (bytes_in = port, bytes_out = 2 * port, …), else the trait's default.
#[derive(Default)]
struct FakeBackend {
    carried: Mutex<BTreeMap<ForwardId, ForwardSpec>>,
    busy: Mutex<BTreeSet<u16>>,
    plans: Mutex<Vec<Plan>>,
    counts: bool,
    /// When set, `apply` waits for a permit first: a reconcile that hangs.
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

fn fake_usage(port: u16) -> ForwardUsage {
    ForwardUsage {
        bytes_in: u64::from(port),
        bytes_out: 2 * u64::from(port),
        connections_total: 7,
        connections_active: 2,
        last_connection_at: Some(1_700_000_000),
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn observe(&self) -> BoxFuture<'_, Vec<ForwardSpec>> {
        let carried = self.carried.lock().unwrap().values().cloned().collect();
        Box::pin(async move { carried })
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, ApplyReport> {
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                let _ = gate.acquire().await;
            }
            self.plans.lock().unwrap().push(plan.clone());
            let mut carried = self.carried.lock().unwrap();
            let busy = self.busy.lock().unwrap();
            let mut report = ApplyReport::default();
            for id in &plan.remove {
                carried.remove(id);
            }
            for spec in plan.retarget.iter().chain(&plan.add) {
                if busy.contains(&spec.listen.port()) {
                    report.failed.push(ForwardFailure {
                        id: spec.id,
                        reason: format!("port {} already in use on host", spec.listen.port()),
                    });
                } else {
                    carried.insert(spec.id, spec.clone());
                }
            }
            report
        })
    }

    fn usage<'a>(&'a self, ids: &'a [ForwardId]) -> BoxFuture<'a, UsageReport> {
        Box::pin(async move {
            if !self.counts {
                return Err("the fake backend does not count usage".to_owned());
            }
            let carried = self.carried.lock().unwrap();
            Ok(ids
                .iter()
                .filter_map(|id| carried.get(id).map(|s| (*id, fake_usage(s.listen.port()))))
                .collect::<HashMap<_, _>>())
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn spec(port: u16, target_port: u16) -> ForwardSpec {
    ForwardSpec {
        id: ForwardId::new_random(),
        protocol: Protocol::Tcp,
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        target: format!("10.0.0.5:{target_port}").parse().unwrap(),
        ports: 1,
        one_target_port: false,
        controls: Default::default(),
    }
}

fn agent(backend: Arc<FakeBackend>) -> Arc<Agent> {
    Arc::new(Agent::new(
        AgentConfig {
            host: "p1".into(),
            external_addresses: vec!["127.0.0.1".parse().unwrap()],
            port_range: PortRange::new(20000, 20100).unwrap(),
            report_interval: Duration::from_secs(3600),
        },
        backend,
    ))
}

#[tokio::test]
async fn sync_converges_and_reports_each_forward() {
    let backend = Arc::new(FakeBackend::default());
    backend.busy.lock().unwrap().insert(20001);
    let agent = agent(backend.clone());
    let (good, bad) = (spec(20000, 22), spec(20001, 22));
    let results = agent.sync(vec![good.clone(), bad.clone()], 7).await;
    let status: BTreeMap<String, ResultStatus> =
        results.iter().map(|r| (r.id.clone(), r.status)).collect();
    assert_eq!(status[&good.id.to_string()], ResultStatus::Active);
    assert_eq!(status[&bad.id.to_string()], ResultStatus::Error);
    assert_eq!(agent.state().await.generation, 7);

    // The port is freed: a retry carries the failed forward.
    backend.busy.lock().unwrap().clear();
    agent.retry_failed().await;
    assert!(
        agent
            .state()
            .await
            .forwards
            .iter()
            .all(|r| r.status == ResultStatus::Active)
    );

    // A full sync without `good` removes it; nothing else is touched.
    agent.sync(vec![bad], 8).await;
    let last = backend.plans.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last,
        Plan {
            remove: vec![good.id],
            ..Plan::default()
        }
    );
}

#[tokio::test]
async fn upsert_retargets_in_place_and_remove_is_idempotent() {
    let backend = Arc::new(FakeBackend::default());
    let agent = agent(backend.clone());
    let original = spec(20000, 22);
    assert_eq!(
        agent.upsert(original.clone()).await.status,
        ResultStatus::Active
    );
    let retargeted = ForwardSpec {
        target: "10.0.0.6:22".parse().unwrap(),
        ..original
    };
    // Each result names the version it is about, so that the server can
    // drop one about a version it has changed since.
    let result = agent.upsert(retargeted.clone()).await;
    assert_eq!(result.applied, Some(ForwardEntry::from(&retargeted)));
    let last = backend.plans.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.retarget, vec![retargeted]);
    agent.remove(original.id).await;
    agent.remove(original.id).await;
    assert!(backend.carried.lock().unwrap().is_empty());
}

#[tokio::test]
async fn serves_the_proxy_manager_methods_over_rpc() {
    let backend = Arc::new(FakeBackend::default());
    let agent = agent(backend.clone());
    let transport: Arc<dyn Transport> = Arc::new(InProcTransport::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(navigator_agent::run(
        agent,
        transport.clone(),
        shutdown.clone(),
    ));
    let client = AgentClient::new(transport, Duration::from_secs(5));
    let forward = spec(20000, 22);
    // The agent starts listening asynchronously; retry briefly until it does.
    let mut result = None;
    for _ in 0..100 {
        match client
            .sync_forwards("p1", vec![ForwardEntry::from(&forward)], 3)
            .await
        {
            Ok(r) => {
                result = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let result = result.expect("agent never answered");
    assert_eq!(result.generation, 3);
    assert_eq!(result.results[0].status, ResultStatus::Active);
    let state = client.get_state("p1").await.unwrap();
    assert_eq!(
        (
            state.host.as_str(),
            state.backend.as_str(),
            state.generation
        ),
        ("p1", "fake", 3)
    );
    client
        .delete_forward("p1", forward.id.to_string())
        .await
        .unwrap();
    assert!(backend.carried.lock().unwrap().is_empty());
    let err = client
        .create_forward(
            "p1",
            ForwardEntry {
                target_address: "bogus".into(),
                ..ForwardEntry::from(&forward)
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid target_address"), "{err}");
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

/// Starts the agent's RPC service over an in-process transport and waits
/// until it answers.
async fn serve(
    backend: Arc<FakeBackend>,
) -> (
    AgentClient,
    Arc<dyn Transport>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), navigator_rpc::RpcError>>,
) {
    let transport: Arc<dyn Transport> = Arc::new(InProcTransport::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(navigator_agent::run(
        agent(backend),
        transport.clone(),
        shutdown.clone(),
    ));
    let client = AgentClient::new(transport.clone(), Duration::from_secs(5));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.get_state("p1").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (client, transport, shutdown, served)
}

#[tokio::test]
async fn get_usage_reports_the_backends_counters() {
    let backend = Arc::new(FakeBackend {
        counts: true,
        ..FakeBackend::default()
    });
    let (client, transport, shutdown, served) = serve(backend).await;
    let forward = spec(20007, 22);
    client
        .sync_forwards("p1", vec![ForwardEntry::from(&forward)], 1)
        .await
        .unwrap();
    let unknown = ForwardId::new_random();
    let reply = client
        .get_usage(
            "p1",
            vec![forward.id.to_string(), unknown.to_string()],
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(reply.unavailable, None);
    assert_eq!(reply.usage.len(), 1, "{reply:?}");
    assert_eq!(
        ForwardUsage::from(reply.usage[&forward.id.to_string()]),
        fake_usage(20007)
    );

    // Bounded: the client refuses to send more than MAX_USAGE_IDS, and the
    // agent refuses a peer that sends more anyway.
    let too_many: Vec<String> = (0..=navigator_rpc::MAX_USAGE_IDS)
        .map(|_| ForwardId::new_random().to_string())
        .collect();
    let err = client
        .get_usage("p1", too_many.clone(), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 1000"), "{err}");
    let err = transport
        .call(
            &navigator_rpc::Target::host(navigator_rpc::topics::PROXY, "p1"),
            navigator_rpc::methods::GET_USAGE,
            serde_json::json!({ "ids": too_many }),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 1000"), "{err}");
    let err = client
        .get_usage("p1", vec!["not-an-id".into()], Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ValueError"), "{err}");

    // An unknown method is oslo's NoSuchMethod, which is how a server tells
    // an agent too old for get_usage.
    let err = transport
        .call(
            &navigator_rpc::Target::host(navigator_rpc::topics::PROXY, "p1"),
            "get_something_new",
            serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(err.is_no_such_method(), "{err}");
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn get_usage_says_why_a_backend_counts_nothing() {
    let (client, _transport, shutdown, served) = serve(Arc::new(FakeBackend::default())).await;
    let reply = client
        .get_usage(
            "p1",
            vec![ForwardId::new_random().to_string()],
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert!(reply.usage.is_empty());
    assert_eq!(
        reply.unavailable.as_deref(),
        Some("the fake backend does not count usage")
    );
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn get_usage_does_not_wait_behind_a_reconcile() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let backend = Arc::new(FakeBackend {
        counts: true,
        gate: Some(gate.clone()),
        ..FakeBackend::default()
    });
    let (client, _transport, shutdown, served) = serve(backend).await;
    let forward = spec(20008, 22);
    // A sync whose apply hangs until the gate opens.
    let pending = client
        .send_sync_forwards("p1", vec![ForwardEntry::from(&forward)], 1)
        .await
        .unwrap();
    let reply = client
        .get_usage("p1", vec![forward.id.to_string()], Duration::from_secs(5))
        .await
        .expect("answered while the reconcile hangs");
    assert_eq!(reply.unavailable, None);
    gate.add_permits(1);
    assert_eq!(
        pending.await.unwrap().results[0].status,
        ResultStatus::Active
    );
    shutdown.cancel();
    served.await.unwrap().unwrap();
}
