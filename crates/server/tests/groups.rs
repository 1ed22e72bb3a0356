//! Address groups on the server's side, against scripted member agents that
//! record what the server sends them: a group announced by its members is
//! registered as a proxy; a forward on it reaches every member, takes its
//! status from the holder and says how many members carry it; a member's
//! summary counts its groups' forwards; a member that disagrees with the
//! others, or whose virtual address is another proxy's, is refused; and a
//! group whose members are all down keeps its forwards (ERROR, not moved).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use navigator_core::digest::SetDigest;
use navigator_core::{ForwardSpec, ForwardStatus, PortForward};
use navigator_rpc::inproc::InProcTransport;
use navigator_rpc::messages::{args, features};
use navigator_rpc::transport::decode_args;
use navigator_rpc::{
    AgentState, ForwardResult, GroupState, ResultStatus, SyncResult, Target, Transport, methods,
    topics,
};
use navigator_server::config::Config;
use navigator_server::control::Control;
use navigator_store::{Store, sqlite_url};
use serde_json::Value;

const VIP: &str = "192.0.2.100";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Received {
    FullSync(usize),
    PartialSync(usize),
    Create(String),
    Delete(String),
    Other(String),
}

/// One scripted agent: what it received, and the forwards it fails.
#[derive(Default)]
struct Script {
    received: Vec<Received>,
    failing: bool,
}

struct Harness {
    control: Arc<Control>,
    agents: HashMap<&'static str, Arc<Mutex<Script>>>,
    _dir: tempfile::TempDir,
}

fn result(entry: &navigator_rpc::ForwardEntry, failing: bool) -> ForwardResult {
    ForwardResult {
        id: entry.id.clone(),
        status: if failing {
            ResultStatus::Error
        } else {
            ResultStatus::Active
        },
        reason: failing.then(|| "cannot bind 192.0.2.100: test".to_owned()),
        applied: Some(entry.clone()),
    }
}

async fn start(hosts: &[&'static str], down_time: u64) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&sqlite_url(&dir.path().join("nav.db")))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let config = Arc::new(
        Config::parse(
            "test.conf",
            &format!(
                "[DEFAULT]\nexternal_addresses = 127.0.0.1\n[agent]\nagent_down_time = {down_time}\nport_range = 26800-26899\nreport_interval = 1\n"
            ),
        )
        .unwrap(),
    );
    let transport: Arc<dyn Transport> = Arc::new(InProcTransport::new());
    let control = Arc::new(Control::new(store, transport.clone(), config, true));
    let mut agents = HashMap::new();
    for host in hosts {
        let script = Arc::new(Mutex::new(Script::default()));
        agents.insert(*host, script.clone());
        let mut incoming = transport
            .listen(&Target::host(topics::PROXY, host))
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Some(message) = incoming.recv().await {
                let failing = script.lock().unwrap().failing;
                let (seen, answer): (Received, Value) = match message.method.as_str() {
                    methods::SYNC_FORWARDS => {
                        let a: args::SyncForwards = decode_args(&message).unwrap();
                        let results = a.forwards.iter().map(|f| result(f, failing)).collect();
                        let seen = match a.buckets {
                            None => Received::FullSync(a.forwards.len()),
                            Some(_) => Received::PartialSync(a.forwards.len()),
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
                            Received::Create(a.forward.id.clone()),
                            serde_json::to_value(result(&a.forward, failing)).unwrap(),
                        )
                    }
                    methods::DELETE_FORWARD => {
                        let a: args::DeleteForward = decode_args(&message).unwrap();
                        (Received::Delete(a.id), Value::Null)
                    }
                    other => (Received::Other(other.to_owned()), Value::Null),
                };
                script.lock().unwrap().received.push(seen);
                if let Some(reply) = message.reply {
                    let _ = reply.send(Ok(answer));
                }
            }
        });
    }
    Harness {
        control,
        agents,
        _dir: dir,
    }
}

fn group(holder: bool, vrid: u8) -> GroupState {
    GroupState {
        name: "web".into(),
        addresses: vec![VIP.into()],
        virtual_router_id: vrid,
        holder,
        keepalived: "running".into(),
    }
}

impl Harness {
    fn take(&self, host: &str) -> Vec<Received> {
        std::mem::take(&mut self.agents[host].lock().unwrap().received)
    }

    fn fail(&self, host: &str, failing: bool) {
        self.agents[host].lock().unwrap().failing = failing;
    }

    /// A heartbeat of `host` (own address 10.0.0.N) carrying `carried`.
    async fn report(
        &self,
        host: &str,
        generation: u64,
        groups: Vec<GroupState>,
        carried: &[ForwardSpec],
        forwards: Vec<ForwardResult>,
    ) {
        let own = format!("198.51.100.{}", host.as_bytes()[0]);
        let mut state = AgentState {
            host: host.into(),
            backend: "nft".into(),
            external_addresses: vec![own],
            port_range: "26800-26899".into(),
            generation,
            forwards,
            features: vec![
                features::CONTROLS.into(),
                features::DIGESTS.into(),
                features::GROUPS.into(),
            ],
            digests: None,
            groups,
        };
        state.set_digest(&SetDigest::of(carried));
        self.control.report_state(state).await.unwrap();
    }

    async fn create(&self, port: u16) -> PortForward {
        let create: navigator_api::v1::ForwardCreate = serde_json::from_value(serde_json::json!({
            "protocol": "tcp",
            "external_address": VIP,
            "internal_ip_address": "127.0.0.1",
            "internal_port": port,
        }))
        .unwrap();
        self.control
            .create("project", create.validate().unwrap())
            .await
            .unwrap()
    }

    async fn view(&self, forward: &PortForward) -> navigator_api::v1::Forward {
        let stored = self
            .control
            .store()
            .get_forward(forward.id)
            .await
            .unwrap()
            .unwrap();
        let mut views = [navigator_api::v1::Forward::from(&stored)];
        self.control.describe_groups(&mut views).await;
        let [view] = views;
        view
    }
}

#[tokio::test]
async fn a_group_forward_reaches_every_member_and_takes_the_holders_status() {
    let h = start(&["a", "b"], 60).await;
    h.report("a", 0, vec![group(true, 51)], &[], vec![]).await;
    h.report("b", 0, vec![group(false, 51)], &[], vec![]).await;
    assert_eq!(h.take("a"), vec![Received::FullSync(0)]);
    assert_eq!(h.take("b"), vec![Received::FullSync(0)]);
    let proxies = h.control.store().list_proxies().await.unwrap();
    let registered = proxies.iter().find(|p| p.host == "group:web").unwrap();
    assert_eq!(
        registered.external_addresses,
        vec![VIP.parse::<std::net::IpAddr>().unwrap()]
    );

    let forward = h.create(80).await;
    assert_eq!(forward.proxy, "group:web");
    assert_eq!(forward.status, ForwardStatus::Active);
    let id = forward.id.to_string();
    assert_eq!(h.take("a"), vec![Received::Create(id.clone())]);
    assert_eq!(h.take("b"), vec![Received::Create(id.clone())]);
    let view = h.view(&forward).await;
    let shown = view.group.expect("the forward's group");
    assert_eq!(
        (
            shown.name.as_str(),
            shown.holder.as_deref(),
            shown.members,
            shown.carrying
        ),
        ("web", Some("a"), 2, 2)
    );

    // A member's summary holds its groups' forwards: matching, no sync.
    let spec = vec![forward.spec()];
    h.report("a", 7, vec![group(true, 51)], &spec, vec![]).await;
    h.report("b", 7, vec![group(false, 51)], &spec, vec![])
        .await;
    h.report("b", 7, vec![group(false, 51)], &spec, vec![])
        .await;
    assert_eq!(h.take("b"), vec![]);
    // A member that lost it gets it back by a partial sync.
    h.report("b", 7, vec![group(false, 51)], &[], vec![]).await;
    h.report("b", 7, vec![group(false, 51)], &[], vec![]).await;
    assert_eq!(h.take("b"), vec![Received::PartialSync(1)]);

    // The standby cannot carry it: still ACTIVE (the holder does), and the
    // reason says who cannot.
    h.fail("b", true);
    let failed = result(&navigator_rpc::ForwardEntry::from(&forward.spec()), true);
    h.report("b", 7, vec![group(false, 51)], &spec, vec![failed.clone()])
        .await;
    let view = h.view(&forward).await;
    assert_eq!(view.status, "ACTIVE");
    assert_eq!(view.group.as_ref().unwrap().carrying, 1);
    assert!(
        view.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("carried by 1 of 2") && r.contains("b: cannot bind")),
        "{:?}",
        view.status_reason
    );
    // Once b holds the address, its failure is the forward's.
    h.report("a", 7, vec![group(false, 51)], &spec, vec![])
        .await;
    h.report("b", 7, vec![group(true, 51)], &spec, vec![failed])
        .await;
    let view = h.view(&forward).await;
    assert_eq!(view.status, "ERROR");
    assert_eq!(view.group.as_ref().unwrap().holder.as_deref(), Some("b"));

    // A delete reaches both.
    h.fail("b", false);
    let stored = h
        .control
        .store()
        .get_forward(forward.id)
        .await
        .unwrap()
        .unwrap();
    assert!(h.control.delete(&stored).await.unwrap());
    assert_eq!(h.take("a"), vec![Received::Delete(id.clone())]);
    assert_eq!(h.take("b"), vec![Received::Delete(id)]);
}

#[tokio::test]
async fn members_that_disagree_or_reuse_a_proxys_address_are_refused() {
    let h = start(&["a", "b", "c"], 60).await;
    h.report("a", 0, vec![group(true, 51)], &[], vec![]).await;
    // b says the group has another VRRP id: refused, gets nothing of it.
    h.report("b", 0, vec![group(false, 52)], &[], vec![]).await;
    // c's own address is the virtual address.
    let state = AgentState {
        host: "c".into(),
        backend: "nft".into(),
        external_addresses: vec!["198.51.100.9".into()],
        port_range: "26800-26899".into(),
        generation: 0,
        forwards: vec![],
        features: vec![features::DIGESTS.into(), features::GROUPS.into()],
        digests: None,
        groups: vec![GroupState {
            name: "other".into(),
            addresses: vec!["198.51.100.97".into()],
            virtual_router_id: 60,
            holder: false,
            keepalived: "running".into(),
        }],
    };
    // "a" registered 198.51.100.97 ('a' = 97) as its own address.
    h.control.report_state(state).await.unwrap();
    let members = h.control.store().list_group_members().await.unwrap();
    let b = members.iter().find(|m| m.member == "b").unwrap();
    assert!(
        b.keepalived.starts_with("refused: ") && b.keepalived.contains("VRRP id 52"),
        "{}",
        b.keepalived
    );
    let c = members.iter().find(|m| m.member == "c").unwrap();
    assert!(
        c.keepalived.contains("external address of proxy a"),
        "{}",
        c.keepalived
    );
    let proxies = h.control.store().list_proxies().await.unwrap();
    assert!(!proxies.iter().any(|p| p.host == "group:other"));
    h.take("a");
    h.take("b");
    let forward = h.create(81).await;
    assert_eq!(h.take("a"), vec![Received::Create(forward.id.to_string())]);
    assert_eq!(h.take("b"), vec![], "a refused member carries nothing");
    let (described, _) = h.control.describe_proxy_group("group:web").await.unwrap();
    let described = described.unwrap();
    assert_eq!(described.holder.as_deref(), Some("a"));
    assert_eq!(described.members.len(), 2);
}

#[tokio::test]
async fn a_group_whose_members_are_all_down_keeps_its_forwards() {
    let h = start(&["a", "b", "z"], 1).await;
    h.report("a", 0, vec![group(true, 51)], &[], vec![]).await;
    h.report("b", 0, vec![group(false, 51)], &[], vec![]).await;
    let forward = h.create(82).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Another proxy is up, and could take a plain proxy's forwards.
    h.report("z", 0, vec![], &[], vec![]).await;
    h.control.fail_over().await.unwrap();
    let stored = h
        .control
        .store()
        .get_forward(forward.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.proxy, "group:web", "a group's forward never moves");
    assert_eq!(stored.status, ForwardStatus::Error);
    assert!(
        stored
            .status_reason
            .as_deref()
            .is_some_and(|r| r.contains("every member of address group web is down")),
        "{:?}",
        stored.status_reason
    );
    // A member that comes back is synced in full and reports it again.
    h.report("a", 7, vec![group(true, 51)], &[], vec![]).await;
    let stored = h
        .control
        .store()
        .get_forward(forward.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, ForwardStatus::Active);
}
