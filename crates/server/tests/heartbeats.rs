//! Heartbeats of agents that send digests, against a scripted agent that
//! records what the server sends it: a heartbeat whose summary matches the
//! store's costs no sync; a bucket that differs with no change in between is
//! re-synced alone; changes in flight are not synced; and a generation-0
//! heartbeat that races the server's own full sync brings no second one.

use std::sync::{Arc, Mutex};

use navigator_core::digest::{SetDigest, bucket};
use navigator_core::{ForwardSpec, PortForward};
use navigator_rpc::inproc::InProcTransport;
use navigator_rpc::messages::{args, features};
use navigator_rpc::transport::decode_args;
use navigator_rpc::{
    AgentState, ForwardResult, ResultStatus, SyncResult, Target, Transport, methods, topics,
};
use navigator_server::config::Config;
use navigator_server::control::Control;
use navigator_store::{Store, TargetChange, sqlite_url};
use serde_json::Value;

const HOST: &str = "proxy-1";

/// What the scripted agent received: the method and, for a sync, its
/// buckets (`None` for a full sync) and number of forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Received {
    FullSync(usize),
    PartialSync(Vec<u8>, Vec<String>),
    Create,
    Other(String),
}

struct Harness {
    control: Arc<Control>,
    received: Arc<Mutex<Vec<Received>>>,
    _dir: tempfile::TempDir,
}

fn active(entry: &navigator_rpc::ForwardEntry) -> ForwardResult {
    ForwardResult {
        id: entry.id.clone(),
        status: ResultStatus::Active,
        reason: None,
        applied: Some(entry.clone()),
    }
}

/// A server on a fresh SQLite store and an agent that answers every message
/// with success and records it.
async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&sqlite_url(&dir.path().join("nav.db")))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let config = Arc::new(
        Config::parse(
            "test.conf",
            "[DEFAULT]\nexternal_addresses = 127.0.0.1\n[agent]\nport_range = 26900-26999\n",
        )
        .unwrap(),
    );
    let transport: Arc<dyn Transport> = Arc::new(InProcTransport::new());
    let control = Arc::new(Control::new(store, transport.clone(), config, true));
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut incoming = transport
        .listen(&Target::host(topics::PROXY, HOST))
        .await
        .unwrap();
    let log = received.clone();
    tokio::spawn(async move {
        while let Some(message) = incoming.recv().await {
            let (seen, answer): (Received, Value) = match message.method.as_str() {
                methods::SYNC_FORWARDS => {
                    let a: args::SyncForwards = decode_args(&message).unwrap();
                    let results = a.forwards.iter().map(active).collect();
                    let seen = match a.buckets {
                        None => Received::FullSync(a.forwards.len()),
                        Some(b) => Received::PartialSync(
                            b,
                            a.forwards.iter().map(|f| f.id.clone()).collect(),
                        ),
                    };
                    let reply = SyncResult {
                        generation: a.generation,
                        results,
                    };
                    (seen, serde_json::to_value(reply).unwrap())
                }
                methods::CREATE_FORWARD => {
                    let a: args::CreateForward = decode_args(&message).unwrap();
                    (
                        Received::Create,
                        serde_json::to_value(active(&a.forward)).unwrap(),
                    )
                }
                other => (Received::Other(other.to_owned()), Value::Null),
            };
            log.lock().unwrap().push(seen);
            if let Some(reply) = message.reply {
                let _ = reply.send(Ok(answer));
            }
        }
    });
    Harness {
        control,
        received,
        _dir: dir,
    }
}

impl Harness {
    fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }

    /// A heartbeat of generation `generation` whose summary is `carried`'s.
    fn state(&self, generation: u64, carried: &[ForwardSpec]) -> AgentState {
        let mut state = AgentState {
            host: HOST.into(),
            backend: "relay".into(),
            external_addresses: vec!["127.0.0.1".into()],
            port_range: "26900-26999".into(),
            generation,
            forwards: vec![],
            features: vec![features::CONTROLS.into(), features::DIGESTS.into()],
            digests: None,
            groups: Vec::new(),
        };
        state.set_digest(&SetDigest::of(carried));
        state
    }

    async fn report(&self, generation: u64, carried: &[ForwardSpec]) {
        self.control
            .report_state(self.state(generation, carried))
            .await
            .unwrap();
    }

    async fn create(&self, port: u16) -> PortForward {
        let create: navigator_api::v1::ForwardCreate = serde_json::from_value(serde_json::json!({
            "protocol": "tcp",
            "internal_ip_address": "127.0.0.1",
            "internal_port": port,
        }))
        .unwrap();
        let new = create.validate().unwrap();
        self.control.create("project", new).await.unwrap()
    }
}

fn specs(forwards: &[PortForward]) -> Vec<ForwardSpec> {
    forwards.iter().map(PortForward::spec).collect()
}

#[tokio::test]
async fn a_matching_summary_costs_no_sync_and_a_racing_generation_0_no_second_one() {
    let h = start().await;
    // The server's start-up report, then the agent's first heartbeat, which
    // was read before the sync arrived: one full sync.
    h.report(0, &[]).await;
    h.report(0, &[]).await;
    assert_eq!(h.take(), vec![Received::FullSync(0)]);
    let mut forwards = Vec::new();
    for n in 0..20 {
        forwards.push(h.create(1000 + n).await);
    }
    assert_eq!(h.take().len(), 20);
    for _ in 0..3 {
        h.report(7, &specs(&forwards)).await;
    }
    assert_eq!(h.take(), vec![], "a matching summary brings no message");
}

#[tokio::test]
async fn a_bucket_that_differs_with_no_change_in_between_is_synced_alone() {
    let h = start().await;
    h.report(0, &[]).await;
    let mut forwards = Vec::new();
    for n in 0..20 {
        forwards.push(h.create(2000 + n).await);
    }
    h.take();
    // The agent lost one create (as a lost message would leave it).
    let lost = forwards[7].clone();
    let carried: Vec<ForwardSpec> = specs(&forwards)
        .into_iter()
        .filter(|f| f.id != lost.id)
        .collect();
    h.report(7, &carried).await;
    assert_eq!(h.take(), vec![], "once may be a change in flight");
    h.report(7, &carried).await;
    let same_bucket: Vec<String> = forwards
        .iter()
        .filter(|f| bucket(f.id) == bucket(lost.id))
        .map(|f| f.id.to_string())
        .collect();
    assert_eq!(
        h.take(),
        vec![Received::PartialSync(vec![bucket(lost.id)], same_bucket)],
        "twice with no change: that bucket alone is re-synced"
    );
}

#[tokio::test]
async fn changes_in_flight_are_not_synced_until_they_have_had_time() {
    let h = start().await;
    h.report(0, &[]).await;
    let forward = h.create(3000).await;
    h.take();
    // Every report, the store has a newer version than the agent, which is
    // always one version behind: the bucket's revision moves each time, so
    // the difference is in flight.
    let mut carried = forward.clone();
    for n in 1..6u16 {
        let change = TargetChange {
            internal_port: Some(3000 + n),
            internal_port_end: Some(3000 + n),
            ..Default::default()
        };
        let stored = h
            .control
            .store()
            .update_forward(forward.id, &change)
            .await
            .unwrap()
            .unwrap();
        h.report(7, &[carried.spec()]).await;
        assert_eq!(h.take(), vec![], "report {n}: a change in flight");
        carried = stored;
    }
    let change = TargetChange {
        internal_port: Some(3100),
        internal_port_end: Some(3100),
        ..Default::default()
    };
    h.control
        .store()
        .update_forward(forward.id, &change)
        .await
        .unwrap();
    h.report(7, &[carried.spec()]).await;
    assert_eq!(
        h.take(),
        vec![Received::PartialSync(
            vec![bucket(forward.id)],
            vec![forward.id.to_string()]
        )],
        "a bucket that differed in six reports in a row is synced even though it keeps changing"
    );
}
