//! The messages: method names, topics and argument/reply shapes.

use std::net::SocketAddr;

use navigator_core::{ForwardId, ForwardSpec, Protocol};
use serde::{Deserialize, Serialize};

/// Topics, as oslo.messaging names them. Agents listen on
/// `navigator-proxy` with their host as server; the server listens on
/// `navigator-server` for the agents' reports.
pub mod topics {
    pub const PROXY: &str = "navigator-proxy";
    pub const SERVER: &str = "navigator-server";
}

/// Method names. Agents serve the first four; the server serves `report_state`.
pub mod methods {
    pub const SYNC_FORWARDS: &str = "sync_forwards";
    pub const CREATE_FORWARD: &str = "create_forward";
    pub const DELETE_FORWARD: &str = "delete_forward";
    pub const GET_STATE: &str = "get_state";
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
}

/// Argument objects, one per method (oslo passes arguments by name).
pub mod args {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SyncForwards {
        pub forwards: Vec<ForwardEntry>,
        pub generation: u64,
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
        let spec = ForwardSpec {
            id: ForwardId::new_random(),
            protocol: Protocol::Udp,
            listen: "[::1]:20000".parse().unwrap(),
            target: "[2001:db8::1]:53".parse().unwrap(),
        };
        let entry = ForwardEntry::from(&spec);
        assert_eq!(entry.to_spec(), Ok(spec));
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
    fn result_status_uses_the_api_spelling() {
        assert_eq!(
            serde_json::to_string(&ResultStatus::Active).unwrap(),
            "\"ACTIVE\""
        );
    }
}
