//! Rolling upgrades of the agent protocol: servers are upgraded before
//! agents, so a new server must understand what agents of every earlier
//! release send it (`report_state` casts and the replies to
//! `sync_forwards`, `create_forward` and `get_state`), and an agent of the
//! previous release must understand what a new server sends.
//!
//! `fixtures/agent_messages/` holds each format agents have sent, one file
//! per protocol change, found with `git log -p crates/rpc/src/messages.rs`.
//! The newest file is this release's format, frozen: a change to the
//! messages fails `the_current_format_is_frozen`. Then add the new format as
//! a new file and keep the old ones; only adding fields with defaults keeps
//! them all passing.

use std::path::PathBuf;

use navigator_rpc::messages::{
    AgentState, ForwardEntry, ForwardResult, ResultStatus, SyncResult, UsageEntry, UsageReply, args,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

const FORWARD: &str = "5f0c2a9e-8d4b-4c1e-9a7f-3b6d2e1c0a01";

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/agent_messages")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn decode<T: DeserializeOwned>(messages: &Value, method: &str) -> T {
    serde_json::from_value(messages[method].clone())
        .unwrap_or_else(|e| panic!("{method}: the server no longer understands it: {e}"))
}

/// Every agent→server message of `messages`, decoded as the server does.
struct Decoded {
    report: args::ReportState,
    sync: SyncResult,
    create: ForwardResult,
    state: AgentState,
}

fn decode_all(messages: &Value) -> Decoded {
    Decoded {
        report: decode(messages, "report_state"),
        sync: decode(messages, "sync_forwards"),
        create: decode(messages, "create_forward"),
        state: decode(messages, "get_state"),
    }
}

#[test]
fn first_release_agents_are_understood() {
    let d = decode_all(&fixture("1-first-release.json"));
    assert_eq!(d.report.state.host, "proxy-1");
    assert_eq!(d.report.state.generation, 7);
    let results = &d.report.state.forwards;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].status, ResultStatus::Active);
    assert_eq!(
        results[0].applied, None,
        "no version: the server must accept it as is"
    );
    assert_eq!(
        results[1].reason.as_deref(),
        Some("port 20002/tcp is in use")
    );
    assert_eq!(d.sync.results, *results);
    assert_eq!(d.create.id, FORWARD);
    // `forwards` was optional from the start.
    assert!(d.state.forwards.is_empty());
    assert_eq!(d.state.generation, 0);
}

#[test]
fn agents_before_port_ranges_are_single_port() {
    let d = decode_all(&fixture("2-applied-version.json"));
    for result in [&d.report.state.forwards[0], &d.sync.results[0], &d.create] {
        let applied = result.applied.as_ref().expect("applied version");
        assert_eq!((applied.ports, applied.one_target_port), (1, false));
        let spec = applied.to_spec().unwrap();
        assert_eq!(spec.listen.port(), 20001);
        assert_eq!(spec.target.port(), 22);
    }
    assert_eq!(d.state.external_addresses.len(), 2);
}

/// This release's messages, as built here, serialize exactly to the newest
/// fixture (both directions).
#[test]
fn the_current_format_is_frozen() {
    let applied = ForwardEntry {
        id: FORWARD.into(),
        protocol: "udp".into(),
        listen_address: "192.0.2.10".into(),
        listen_port: 20010,
        target_address: "10.0.0.5".into(),
        target_port: 5000,
        ports: 3,
        one_target_port: true,
        allowed_cidrs: vec!["192.0.2.0/24".into(), "2001:db8::/32".into()],
        max_connections: Some(100),
        proxy_protocol: "none".into(),
    };
    let result = ForwardResult {
        id: FORWARD.into(),
        status: ResultStatus::Active,
        reason: None,
        applied: Some(applied.clone()),
    };
    let state = AgentState {
        host: "proxy-1".into(),
        backend: "nft".into(),
        external_addresses: vec!["192.0.2.10".into()],
        port_range: "20000-20099".into(),
        generation: 12,
        forwards: vec![result.clone()],
        features: vec!["controls".into(), "digests".into()],
        digests: None,
        groups: Vec::new(),
    };
    let mut state = state;
    state.set_digest(&navigator_core::digest::SetDigest::of([&applied
        .to_spec()
        .unwrap()]));
    let current = serde_json::json!({
        "_comment": "This release's messages (frozen by crates/rpc/tests/upgrade.rs). Agent to server: report_state, sync_forwards, create_forward, get_state, get_usage; server to agent: to_agent.",
        "report_state": args::ReportState { state: state.clone() },
        "sync_forwards": SyncResult { generation: 12, results: vec![result.clone()] },
        "create_forward": result,
        "get_state": state,
        "get_usage": UsageReply {
            usage: [(FORWARD.to_owned(), UsageEntry {
                bytes_in: 1500,
                bytes_out: 64000,
                connections_total: 3,
                connections_active: 1,
                last_connection_at: Some(1_765_000_000),
            })]
            .into(),
            unavailable: None,
        },
        "to_agent": {
            "sync_forwards": args::SyncForwards { forwards: vec![applied.clone()], generation: 12, buckets: None },
            "sync_buckets": args::SyncForwards { forwards: vec![applied.clone()], generation: 0, buckets: Some(vec![0x5f]) },
            "create_forward": args::CreateForward { forward: applied },
            "delete_forward": args::DeleteForward { id: FORWARD.into() },
            "get_state": args::GetState {},
            "get_usage": args::GetUsage { ids: vec![FORWARD.into()] },
        },
    });
    let name = "5-current.json";
    if std::env::var_os("NAVIGATOR_BLESS").is_some() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/agent_messages")
            .join(name);
        let text = serde_json::to_string_pretty(&current).unwrap() + "\n";
        std::fs::write(path, text).unwrap();
    }
    assert_eq!(
        fixture(name),
        current,
        "the agent protocol changed: keep {name} as the previous format (rename it), \
         add the new one with NAVIGATOR_BLESS=1, and make sure older peers still \
         understand it (fields only added, with defaults)"
    );
    let d = decode_all(&fixture(name));
    assert_eq!(
        d.report.state.forwards[0].applied.as_ref().unwrap().ports,
        3
    );
    assert_eq!(
        d.state.features,
        vec!["controls".to_owned(), "digests".to_owned()]
    );
    let digest = d.state.digest().expect("digests").expect("256 buckets");
    assert_eq!(digest.forwards(), 1);
    assert_eq!(digest.bucket(0x5f).forwards, 1);
}

/// Agents before digests list every forward in their heartbeats.
#[test]
fn agents_before_digests_send_none_and_list_every_forward() {
    let d = decode_all(&fixture("4-controls.json"));
    assert_eq!(d.report.state.features, vec!["controls".to_owned()]);
    assert!(d.report.state.digest().is_none());
    assert_eq!(d.report.state.forwards.len(), 1);
}

/// Agents before per-forward controls announce no features (so the server
/// places no forward with controls on them) and their applied entries have
/// default controls.
#[test]
fn agents_before_controls_announce_no_features() {
    let d = decode_all(&fixture("3-port-ranges.json"));
    assert!(d.report.state.features.is_empty());
    assert!(d.state.features.is_empty());
    let applied = d.create.applied.as_ref().expect("applied version");
    assert_eq!(applied.ports, 3);
    assert!(applied.to_spec().unwrap().controls.is_default());
}

/// An agent of the previous release reads what this server sends: the
/// server→agent messages decode without the fields added since.
#[test]
fn a_previous_agent_reads_what_this_server_sends() {
    /// `ForwardEntry` as agents before port ranges had it.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct OldEntry {
        id: String,
        protocol: String,
        listen_address: String,
        listen_port: u16,
        target_address: String,
        target_port: u16,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct OldSync {
        forwards: Vec<OldEntry>,
        generation: u64,
    }
    let to_agent = &fixture("5-current.json")["to_agent"];
    let sync: OldSync = serde_json::from_value(to_agent["sync_forwards"].clone()).unwrap();
    assert_eq!(sync.forwards[0].listen_port, 20010);
    let create: OldEntry =
        serde_json::from_value(to_agent["create_forward"]["forward"].clone()).unwrap();
    assert_eq!(create.id, FORWARD);
}
