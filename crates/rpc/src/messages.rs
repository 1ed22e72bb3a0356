//! The messages: method names, topics and argument/reply shapes.

use std::net::SocketAddr;

use std::collections::BTreeMap;

use navigator_core::digest::{BUCKETS, BucketDigest, SetDigest};
use navigator_core::{
    Controls, ForwardId, ForwardSpec, ForwardUsage, Protocol, ProxyProtocol, parse_cidr,
};
use serde::{Deserialize, Serialize};

/// Topics, as oslo.messaging names them. Agents listen on
/// `navigator-proxy` with their host as server; the server listens on
/// `navigator-server` for the agents' reports.
pub mod topics {
    pub const PROXY: &str = "navigator-proxy";
    pub const SERVER: &str = "navigator-server";
}

/// Method names. Agents serve all but `report_state`, which the server
/// serves. `get_usage` came after the first release: an older agent answers
/// it with an exception (see [`crate::RpcError::is_no_such_method`]).
pub mod methods {
    pub const SYNC_FORWARDS: &str = "sync_forwards";
    pub const CREATE_FORWARD: &str = "create_forward";
    pub const DELETE_FORWARD: &str = "delete_forward";
    pub const GET_STATE: &str = "get_state";
    pub const GET_USAGE: &str = "get_usage";
    pub const REPORT_STATE: &str = "report_state";
}

/// One forward as the agent needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardEntry {
    pub id: String,
    pub protocol: String,
    pub listen_address: String,
    pub listen_port: u16,
    pub target_address: String,
    pub target_port: u16,
    /// Consecutive listening ports from `listen_port` (a port range). Added
    /// after the first release: absent means 1, and an older agent that does
    /// not know it carries only the first port.
    #[serde(default = "one_port")]
    pub ports: u16,
    /// Every listening port goes to `target_port` instead of the port at the
    /// same offset. Absent means false.
    #[serde(default)]
    pub one_target_port: bool,
    /// Source networks allowed to connect (CIDRs); absent or empty means
    /// everyone. Omitted when empty, so that forwards without controls keep
    /// the earlier format. An agent older than the field ignores it: the
    /// server places forwards with controls only on agents that announce
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<String>,
    /// Concurrent connections (UDP sessions) the forward carries at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `none`, `v1` or `v2`; absent means `none`.
    #[serde(
        default = "no_proxy_protocol",
        skip_serializing_if = "is_no_proxy_protocol"
    )]
    pub proxy_protocol: String,
}

fn no_proxy_protocol() -> String {
    ProxyProtocol::None.as_str().to_owned()
}

fn is_no_proxy_protocol(value: &String) -> bool {
    value == ProxyProtocol::None.as_str()
}

fn one_port() -> u16 {
    1
}

impl From<&ForwardSpec> for ForwardEntry {
    fn from(spec: &ForwardSpec) -> ForwardEntry {
        ForwardEntry {
            id: spec.id.to_string(),
            protocol: spec.protocol.to_string(),
            listen_address: spec.listen.ip().to_string(),
            listen_port: spec.listen.port(),
            target_address: spec.target.ip().to_string(),
            target_port: spec.target.port(),
            ports: spec.ports,
            one_target_port: spec.one_target_port,
            allowed_cidrs: spec
                .controls
                .allowed_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
            max_connections: spec.controls.max_connections,
            proxy_protocol: spec.controls.proxy_protocol.as_str().to_owned(),
        }
    }
}

impl ForwardEntry {
    /// Converts back to the core type; a peer could send anything, so this
    /// checks every field.
    pub fn to_spec(&self) -> Result<ForwardSpec, String> {
        let id: ForwardId = self
            .id
            .parse()
            .map_err(|e| format!("forward {}: {e}", self.id))?;
        let protocol: Protocol = self
            .protocol
            .parse()
            .map_err(|e| format!("forward {id}: {e}"))?;
        let ip = |what: &str, value: &str| {
            value
                .parse::<std::net::IpAddr>()
                .map_err(|_| format!("forward {id}: invalid {what} {value:?}"))
        };
        let last = |first: u16| u32::from(first) + u32::from(self.ports) - 1;
        if self.ports == 0
            || last(self.listen_port) > 65535
            || (!self.one_target_port && last(self.target_port) > 65535)
        {
            return Err(format!(
                "forward {id}: invalid ports {}: the range must hold 1 or more ports up to 65535",
                self.ports
            ));
        }
        let allowed_cidrs = self
            .allowed_cidrs
            .iter()
            .map(|cidr| parse_cidr(cidr).map_err(|e| format!("forward {id}: allowed_cidrs: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let proxy_protocol: ProxyProtocol = self
            .proxy_protocol
            .parse()
            .map_err(|e| format!("forward {id}: {e}"))?;
        if self.max_connections == Some(0) {
            return Err(format!(
                "forward {id}: invalid max_connections 0: it must be 1 or more, or absent"
            ));
        }
        Ok(ForwardSpec {
            id,
            protocol,
            listen: SocketAddr::new(
                ip("listen_address", &self.listen_address)?,
                self.listen_port,
            ),
            target: SocketAddr::new(
                ip("target_address", &self.target_address)?,
                self.target_port,
            ),
            ports: self.ports,
            one_target_port: self.one_target_port && self.ports > 1,
            controls: Controls::new(allowed_cidrs, self.max_connections, proxy_protocol),
        })
    }
}

/// What became of one forward on the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ResultStatus {
    Active,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardResult {
    pub id: String,
    pub status: ResultStatus,
    #[serde(default)]
    pub reason: Option<String>,
    /// The version of the forward this result is about, so that the server
    /// can ignore a result about a version it has since changed (a retarget
    /// or a move to another proxy). Agents before this field omit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<ForwardEntry>,
}

/// Reply to `sync_forwards`: the generation applied and a result per forward.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResult {
    pub generation: u64,
    pub results: Vec<ForwardResult>,
}

/// An agent's description of itself, sent as heartbeat and returned by `get_state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub host: String,
    pub backend: String,
    pub external_addresses: Vec<String>,
    /// e.g. `20000-40000`.
    pub port_range: String,
    /// The last generation of `sync_forwards` applied; 0 after a start, which
    /// asks the server for a full sync.
    pub generation: u64,
    /// Current result of every forward the agent carries.
    #[serde(default)]
    pub forwards: Vec<ForwardResult>,
    /// What this agent can do beyond the first protocol, by name (see
    /// [`features`]). Absent from older agents, which the server then
    /// treats as able to do none of it; omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// The summary of the agent's desired set: per bucket of
    /// [`navigator_core::digest`], `[forwards, sum]`
    /// ([`navigator_core::digest::BucketDigest::sum`]), all
    /// [`navigator_core::digest::BUCKETS`] of them. Agents that send it
    /// announce [`features::DIGESTS`], and their `forwards` then holds only
    /// the results that changed lately (see [`features::DIGESTS`]). Absent
    /// from older agents, whose heartbeats list every forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<Vec<[u64; 2]>>,
    /// The VRRP address groups this agent is a member of, as configured
    /// and as it sees them now ([`features::GROUPS`]). Omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupState>,
}

/// One VRRP address group as a member agent reports it: what it was
/// configured with (every member must agree, the server checks), and
/// whether this node holds the group's virtual addresses now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group's name (`[vrrp:NAME]`), the same on every member.
    pub name: String,
    /// The virtual addresses the group moves, without prefix length.
    pub addresses: Vec<String>,
    /// VRRP's virtual router id (1-255), unique per group on one segment.
    pub virtual_router_id: u8,
    /// Whether the virtual addresses are on this node now (it is the
    /// VRRP master and carries the group's traffic).
    pub holder: bool,
    /// How keepalived is doing on this node: `running`, or what is wrong
    /// (`starting`, `exited: …`), for the API and the operator.
    pub keepalived: String,
}

impl AgentState {
    /// Puts `digest` into the report.
    pub fn set_digest(&mut self, digest: &SetDigest) {
        self.digests = Some(
            digest
                .buckets()
                .iter()
                .map(|b| [b.forwards, b.sum()])
                .collect(),
        );
    }

    /// The summary the agent sent: `None` from an agent that sends none, an
    /// error for one of the wrong size.
    pub fn digest(&self) -> Option<Result<SetDigest, String>> {
        let wire = self.digests.as_ref()?;
        if wire.len() != BUCKETS {
            return Some(Err(format!("{} digest buckets, not {BUCKETS}", wire.len())));
        }
        let mut digest = SetDigest::default();
        for (bucket, [forwards, sum]) in (0..=u8::MAX).zip(wire) {
            digest.set_bucket(bucket, BucketDigest::from_parts(*forwards, *sum));
        }
        Some(Ok(digest))
    }
}

/// Names an agent announces in [`AgentState::features`].
pub mod features {
    /// The agent reads `allowed_cidrs`, `max_connections` and
    /// `proxy_protocol` of a [`ForwardEntry`](super::ForwardEntry) and
    /// enforces them or fails the forward (an older agent would ignore them
    /// and carry the forward unrestricted).
    pub const CONTROLS: &str = "controls";
    /// The agent sends [`AgentState::digests`] and takes partial syncs
    /// ([`args::SyncForwards::buckets`](super::args::SyncForwards::buckets)).
    /// Its heartbeats then carry, in `forwards`, only the results that
    /// changed in its last [`RECENT_REPORTS`] heartbeats and those in
    /// `ERROR` (at most [`MAX_REPORTED_RESULTS`], changes first), not every
    /// forward: the digests say whether it carries what the store holds.
    pub const DIGESTS: &str = "digests";
    /// The agent reports [`AgentState::groups`] and carries every forward
    /// the server sends it whose external address is one of its groups'
    /// virtual addresses (kernel rules matching it, relay listeners bound
    /// with `IP_FREEBIND`), held or not.
    pub const GROUPS: &str = "groups";

    /// Heartbeats that repeat a changed result, so that one lost heartbeat
    /// loses no status.
    pub const RECENT_REPORTS: u32 = 2;

    /// Results in one heartbeat of an agent that sends digests.
    pub const MAX_REPORTED_RESULTS: usize = 1000;
}

/// At most this many forward ids in one `get_usage` call, so that one
/// message (and the agent's work for it) stays bounded; callers with more
/// split them.
pub const MAX_USAGE_IDS: usize = 1000;

/// What the data plane counted for one forward, on the wire
/// ([`ForwardUsage`]; `last_connection_at` in seconds since the Unix epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_total: u64,
    pub connections_active: u64,
    #[serde(default)]
    pub last_connection_at: Option<u64>,
}

impl From<ForwardUsage> for UsageEntry {
    fn from(usage: ForwardUsage) -> UsageEntry {
        UsageEntry {
            bytes_in: usage.bytes_in,
            bytes_out: usage.bytes_out,
            connections_total: usage.connections_total,
            connections_active: usage.connections_active,
            last_connection_at: usage.last_connection_at,
        }
    }
}

impl From<UsageEntry> for ForwardUsage {
    fn from(entry: UsageEntry) -> ForwardUsage {
        ForwardUsage {
            bytes_in: entry.bytes_in,
            bytes_out: entry.bytes_out,
            connections_total: entry.connections_total,
            connections_active: entry.connections_active,
            last_connection_at: entry.last_connection_at,
        }
    }
}

/// Reply to `get_usage`: the counters of each asked forward the data plane
/// counts (keyed by forward id; a forward it does not carry is absent), or,
/// when it counts nothing at all, `unavailable` saying why (e.g. "the socat
/// backend does not count usage") and an empty `usage`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReply {
    #[serde(default)]
    pub usage: BTreeMap<String, UsageEntry>,
    #[serde(default)]
    pub unavailable: Option<String>,
}

/// Argument objects, one per method (oslo passes arguments by name).
pub mod args {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SyncForwards {
        pub forwards: Vec<ForwardEntry>,
        pub generation: u64,
        /// A partial sync: `forwards` is the whole desired set of these
        /// buckets of [`navigator_core::digest`] only, and the agent keeps
        /// its other forwards and its generation. Absent for a full sync.
        /// Sent only to agents that announce
        /// [`features::DIGESTS`](super::features::DIGESTS): an older agent
        /// would take it for a full sync and drop every other forward.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub buckets: Option<Vec<u8>>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CreateForward {
        pub forward: ForwardEntry,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct DeleteForward {
        pub id: String,
    }

    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GetState {}

    /// At most [`MAX_USAGE_IDS`] forward ids.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GetUsage {
        pub ids: Vec<String>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ReportState {
        pub state: AgentState,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_entry_round_trips_and_checks_peers_input() {
        let spec = ForwardSpec::single(
            ForwardId::new_random(),
            Protocol::Udp,
            "[::1]:20000".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
        );
        let entry = ForwardEntry::from(&spec);
        assert_eq!(entry.to_spec(), Ok(spec.clone()));
        let range = ForwardSpec {
            ports: 10,
            one_target_port: true,
            controls: Controls::new(
                vec![parse_cidr("192.0.2.0/24").unwrap()],
                Some(5),
                ProxyProtocol::V2,
            ),
            ..spec
        };
        assert_eq!(ForwardEntry::from(&range).to_spec(), Ok(range.clone()));
        let past_the_end = ForwardEntry {
            listen_port: 65530,
            ports: 10,
            ..entry.clone()
        };
        assert!(
            past_the_end
                .to_spec()
                .unwrap_err()
                .contains("invalid ports")
        );
        let bad = ForwardEntry {
            target_address: "nope".into(),
            ..entry
        };
        assert!(
            bad.to_spec()
                .unwrap_err()
                .contains("invalid target_address")
        );
    }

    #[test]
    fn an_entry_from_an_older_server_is_a_single_port() {
        let entry: ForwardEntry = serde_json::from_value(serde_json::json!({
            "id": ForwardId::new_random().to_string(), "protocol": "tcp",
            "listen_address": "127.0.0.1", "listen_port": 20000,
            "target_address": "10.0.0.1", "target_port": 22
        }))
        .unwrap();
        assert_eq!(entry.to_spec().unwrap().ports, 1);
    }

    #[test]
    fn usage_reply_wire_shape() {
        let id = ForwardId::new_random().to_string();
        let reply = UsageReply {
            usage: BTreeMap::from([(
                id.clone(),
                UsageEntry::from(ForwardUsage {
                    bytes_in: 10,
                    bytes_out: 20,
                    connections_total: 3,
                    connections_active: 1,
                    last_connection_at: Some(1_700_000_000),
                }),
            )]),
            unavailable: None,
        };
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            serde_json::json!({"usage": {id: {
                "bytes_in": 10, "bytes_out": 20, "connections_total": 3,
                "connections_active": 1, "last_connection_at": 1_700_000_000u64}},
                "unavailable": null})
        );
        let none: UsageReply =
            serde_json::from_value(serde_json::json!({"unavailable": "no counting"})).unwrap();
        assert!(none.usage.is_empty());
        assert_eq!(none.unavailable.as_deref(), Some("no counting"));
    }

    #[test]
    fn result_status_uses_the_api_spelling() {
        assert_eq!(
            serde_json::to_string(&ResultStatus::Active).unwrap(),
            "\"ACTIVE\""
        );
    }
}
