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
    /// When set, `apply` sleeps this long: a slow kernel transaction.
    delay: Option<Duration>,
    /// `Backend::batch_linger`, zero when unset.
    linger: Option<Duration>,
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

    fn batch_linger(&self) -> Duration {
        self.linger.unwrap_or_default()
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
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
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

/// A forward of digest bucket `bucket` (the first byte of its id).
fn spec_in_bucket(bucket: u8, n: u32, port: u16) -> ForwardSpec {
    ForwardSpec {
        id: format!("{bucket:02x}{n:06x}-0000-4000-8000-000000000000")
            .parse()
            .unwrap(),
        ..spec(port, 22)
    }
}

/// Waits until `pending` replies have all come, in order.
async fn all_replies<T>(pending: Vec<navigator_rpc::Reply<T>>) -> Vec<T>
where
    T: std::fmt::Debug,
{
    let mut replies = Vec::new();
    for reply in pending {
        replies.push(reply.await.unwrap());
    }
    replies
}

#[tokio::test]
async fn creates_queued_behind_a_slow_apply_are_applied_together() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let backend = Arc::new(FakeBackend {
        gate: Some(gate.clone()),
        delay: Some(Duration::from_millis(20)),
        ..FakeBackend::default()
    });
    let (client, _transport, shutdown, served) = serve(backend.clone()).await;
    // The first create holds the worker in `apply` until the gate opens;
    // the others queue meanwhile.
    let first = spec(20000, 22);
    let held = client
        .send_create_forward("p1", ForwardEntry::from(&first))
        .await
        .unwrap();
    let specs: Vec<ForwardSpec> = (1..=300).map(|i| spec(20000 + i, 22)).collect();
    let mut pending = Vec::new();
    for s in &specs {
        pending.push(
            client
                .send_create_forward("p1", ForwardEntry::from(s))
                .await
                .unwrap(),
        );
    }
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().status, ResultStatus::Active);
    let results = all_replies(pending).await;
    // Each create is answered with its own forward's result.
    for (s, r) in specs.iter().zip(&results) {
        assert_eq!(r.id, s.id.to_string());
        assert_eq!(r.status, ResultStatus::Active, "{r:?}");
        assert_eq!(r.applied, Some(ForwardEntry::from(s)));
    }
    assert_eq!(backend.carried.lock().unwrap().len(), 301);
    // One apply for the first, then a few for the 300 queued behind it (a
    // handful at most however the tasks were scheduled), not 300.
    let applies = backend.plans.lock().unwrap().len();
    assert!(applies <= 20, "{applies} applies for 301 creates");
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

/// Under load (the previous batch held several changes) a batch waits the
/// backend's linger for more: two creates sent 100 ms apart share one apply.
/// A change after a lone one goes at once.
#[tokio::test]
async fn under_load_a_batch_waits_the_backends_linger_for_more() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let linger = Duration::from_secs(1);
    let backend = Arc::new(FakeBackend {
        gate: Some(gate.clone()),
        linger: Some(linger),
        ..FakeBackend::default()
    });
    let (client, _transport, shutdown, served) = serve(backend.clone()).await;
    /// Sends a create; its answer is to come.
    async fn send(
        client: &AgentClient,
        port: u16,
    ) -> navigator_rpc::transport::Reply<navigator_rpc::ForwardResult> {
        client
            .send_create_forward("p1", ForwardEntry::from(&spec(port, 22)))
            .await
            .unwrap()
    }
    let create = |port: u16| send(&client, port);
    // Load: one create held in apply, two queued behind it (one batch of 2).
    let held = create(21000).await;
    let queued = [create(21001).await, create(21002).await];
    gate.add_permits(1000);
    held.await.unwrap();
    for reply in queued {
        reply.await.unwrap();
    }
    let before = backend.plans.lock().unwrap().len();
    // Still under load: these two, 100 ms apart, wait for each other.
    let x = create(21003).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let y = create(21004).await;
    x.await.unwrap();
    y.await.unwrap();
    let plans = backend.plans.lock().unwrap()[before..].to_vec();
    assert_eq!(plans.len(), 1, "one apply for both: {plans:?}");
    assert_eq!(plans[0].add.len(), 2);
    // A lone create after the pair still waits (the batch before it held
    // two) and makes a batch of one...
    let lone = create(21005).await;
    lone.await.unwrap();
    // ...so the next goes at once, without the linger.
    let started = std::time::Instant::now();
    create(21006).await.await.unwrap();
    assert!(
        started.elapsed() < linger / 2,
        "a change after a lone one waited {:?}",
        started.elapsed()
    );
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

/// One batch, as the worker makes of the messages queued behind a slow
/// apply (`creates_queued_behind_a_slow_apply_are_applied_together` shows the
/// service makes batches; here the batch is built by hand so that its
/// content is exact).
#[tokio::test]
async fn a_batch_keeps_the_order_of_its_messages() {
    use navigator_agent::{Answer, Request};
    let backend = Arc::new(FakeBackend::default());
    let agent = agent(backend.clone());
    // Created, deleted and created again with another target: the later
    // version is carried. Created then deleted: absent. Creates, a full
    // sync, creates: the sync drops what came before it, not what follows.
    let a = spec(20001, 22);
    let a2 = ForwardSpec {
        target: "10.0.0.7:22".parse().unwrap(),
        ..a.clone()
    };
    let (b, before, synced, after) = (
        spec(20002, 22),
        spec(20003, 22),
        spec(20004, 22),
        spec(20005, 22),
    );
    let answers = agent
        .run_batch(vec![
            Request::Upsert(a.clone()),
            Request::Remove(a.id),
            Request::Upsert(a2.clone()),
            Request::Upsert(b.clone()),
            Request::Remove(b.id),
            Request::Upsert(before.clone()),
            Request::Sync {
                forwards: vec![a2.clone(), synced.clone()],
                rejected: Vec::new(),
                generation: 9,
                buckets: None,
            },
            Request::Upsert(after.clone()),
            Request::State,
        ])
        .await;
    assert_eq!(backend.plans.lock().unwrap().len(), 1, "one apply");
    let forward = |i: usize| match &answers[i] {
        Answer::Forward(result) => result.clone(),
        other => panic!("answer {i}: {other:?}"),
    };
    // A superseded version is never reported ACTIVE.
    let first = forward(0);
    assert_eq!(first.status, ResultStatus::Error);
    assert_eq!(first.applied, Some(ForwardEntry::from(&a)));
    assert!(matches!(answers[1], Answer::Removed));
    let second = forward(2);
    assert_eq!(second.status, ResultStatus::Active);
    assert_eq!(second.applied, Some(ForwardEntry::from(&a2)));
    assert_eq!(forward(3).status, ResultStatus::Error);
    assert!(matches!(answers[4], Answer::Removed));
    assert_eq!(forward(5).status, ResultStatus::Error);
    let Answer::Sync(sync) = &answers[6] else {
        panic!("answer 6: {:?}", answers[6]);
    };
    assert_eq!(sync.generation, 9);
    assert_eq!(sync.results.len(), 2);
    assert!(
        sync.results
            .iter()
            .all(|r| r.status == ResultStatus::Active),
        "{sync:?}"
    );
    assert_eq!(forward(7).status, ResultStatus::Active);
    // get_state is the state after the batch.
    let Answer::State(state) = &answers[8] else {
        panic!("answer 8: {:?}", answers[8]);
    };
    assert_eq!(state.generation, 9);
    assert_eq!(state.forwards.len(), 3);

    let carried = backend.carried.lock().unwrap().clone();
    let want: BTreeMap<ForwardId, ForwardSpec> =
        [a2, synced, after].into_iter().map(|f| (f.id, f)).collect();
    assert_eq!(carried, want);
}

/// The same through the RPC service: messages sent while a reconcile hangs,
/// however they are split into batches, end as if handled one by one.
#[tokio::test]
async fn messages_queued_behind_a_reconcile_keep_their_order() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let backend = Arc::new(FakeBackend {
        gate: Some(gate.clone()),
        ..FakeBackend::default()
    });
    let (client, _transport, shutdown, served) = serve(backend.clone()).await;
    let held = client
        .send_create_forward("p1", ForwardEntry::from(&spec(20000, 22)))
        .await
        .unwrap();
    let a = spec(20001, 22);
    let a2 = ForwardSpec {
        target: "10.0.0.7:22".parse().unwrap(),
        ..a.clone()
    };
    let b = spec(20002, 22);
    let mut pending = Vec::new();
    pending.push(
        client
            .send_create_forward("p1", ForwardEntry::from(&a))
            .await
            .unwrap(),
    );
    let delete_a = client
        .send_delete_forward("p1", a.id.to_string())
        .await
        .unwrap();
    let create_a2 = client
        .send_create_forward("p1", ForwardEntry::from(&a2))
        .await
        .unwrap();
    pending.push(
        client
            .send_create_forward("p1", ForwardEntry::from(&b))
            .await
            .unwrap(),
    );
    let delete_b = client
        .send_delete_forward("p1", b.id.to_string())
        .await
        .unwrap();
    gate.add_permits(1);
    held.await.unwrap();
    delete_a.await.unwrap();
    delete_b.await.unwrap();
    assert_eq!(create_a2.await.unwrap().status, ResultStatus::Active);
    all_replies(pending).await;
    let carried: Vec<ForwardSpec> = backend.carried.lock().unwrap().values().cloned().collect();
    assert!(carried.contains(&a2), "{carried:?}");
    assert!(!carried.iter().any(|f| f.id == b.id), "{carried:?}");
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn partial_sync_replaces_its_buckets_only() {
    let backend = Arc::new(FakeBackend::default());
    let (client, _transport, shutdown, served) = serve(backend.clone()).await;
    let (x1, x2, y) = (
        spec_in_bucket(0x10, 1, 20001),
        spec_in_bucket(0x10, 2, 20002),
        spec_in_bucket(0x20, 1, 20003),
    );
    client
        .sync_forwards(
            "p1",
            vec![ForwardEntry::from(&x1), ForwardEntry::from(&y)],
            5,
        )
        .await
        .unwrap();
    let state = client.get_state("p1").await.unwrap();
    assert!(
        state
            .features
            .iter()
            .any(|f| f == navigator_rpc::messages::features::DIGESTS)
    );
    assert_eq!(
        state.digest().unwrap().unwrap(),
        navigator_core::digest::SetDigest::of([&x1, &y])
    );

    // Bucket 0x10 becomes {x2}; an entry of bucket 0x30 is refused by name;
    // bucket 0x20 and the generation stay.
    let stray = spec_in_bucket(0x30, 1, 20004);
    let reply = client
        .send_sync_buckets(
            "p1",
            vec![0x10],
            vec![ForwardEntry::from(&x2), ForwardEntry::from(&stray)],
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(reply.generation, 5);
    let status: BTreeMap<String, (ResultStatus, Option<String>)> = reply
        .results
        .iter()
        .map(|r| (r.id.clone(), (r.status, r.reason.clone())))
        .collect();
    assert_eq!(status.len(), 2, "{reply:?}");
    assert_eq!(status[&x2.id.to_string()].0, ResultStatus::Active);
    let (refused, reason) = &status[&stray.id.to_string()];
    assert_eq!(*refused, ResultStatus::Error);
    assert!(
        reason.as_deref().unwrap().contains("bucket 48"),
        "{reason:?}"
    );

    let carried: BTreeSet<ForwardId> = backend.carried.lock().unwrap().keys().copied().collect();
    assert_eq!(carried, BTreeSet::from([x2.id, y.id]));
    let state = client.get_state("p1").await.unwrap();
    assert_eq!(state.generation, 5);
    assert_eq!(
        state.digest().unwrap().unwrap(),
        navigator_core::digest::SetDigest::of([&x2, &y])
    );
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn heartbeats_carry_recent_changes_and_errors_only() {
    use navigator_rpc::messages::features::RECENT_REPORTS;
    let backend = Arc::new(FakeBackend::default());
    backend.busy.lock().unwrap().insert(20001);
    let agent = agent(backend.clone());
    let (good, bad) = (spec(20000, 22), spec(20001, 22));
    agent.sync(vec![good.clone(), bad.clone()], 1).await;
    let ids = |state: &navigator_rpc::AgentState| -> BTreeSet<String> {
        state.forwards.iter().map(|r| r.id.clone()).collect()
    };
    // The changes are repeated RECENT_REPORTS times, then only the error.
    for _ in 0..RECENT_REPORTS {
        let beat = agent.heartbeat_state().await;
        assert_eq!(
            ids(&beat),
            BTreeSet::from([good.id.to_string(), bad.id.to_string()])
        );
        assert!(beat.digests.is_some());
    }
    let beat = agent.heartbeat_state().await;
    assert_eq!(ids(&beat), BTreeSet::from([bad.id.to_string()]));
    // get_state still lists every forward.
    assert_eq!(agent.state().await.forwards.len(), 2);

    // The port is freed: the retry's change is reported, then nothing.
    backend.busy.lock().unwrap().clear();
    agent.retry_failed().await;
    let beat = agent.heartbeat_state().await;
    assert_eq!(beat.forwards.len(), 1);
    assert_eq!(beat.forwards[0].status, ResultStatus::Active);
    for _ in 1..RECENT_REPORTS {
        assert_eq!(agent.heartbeat_state().await.forwards.len(), 1);
    }
    assert!(agent.heartbeat_state().await.forwards.is_empty());
    // The retry planned the failed forward alone.
    let last = backend.plans.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.add, vec![bad]);
}

#[tokio::test]
async fn heartbeats_are_bounded() {
    use navigator_rpc::messages::features::MAX_REPORTED_RESULTS;
    let backend = Arc::new(FakeBackend::default());
    let agent = agent(backend);
    let many: Vec<ForwardSpec> = (0..MAX_REPORTED_RESULTS + 50)
        .map(|i| spec(20000 + i as u16, 22))
        .collect();
    agent.sync(many, 1).await;
    assert_eq!(
        agent.heartbeat_state().await.forwards.len(),
        MAX_REPORTED_RESULTS
    );
}
