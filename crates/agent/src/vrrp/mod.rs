//! Address groups (VRRP): virtual addresses shared by several proxy nodes
//! on one L2 segment, moved between them by keepalived.
//!
//! - `config.rs`: the `[vrrp]` and `[vrrp:NAME]` sections, checked.
//! - `render.rs`: keepalived's configuration, pure.
//! - `supervise.rs`: keepalived run detached, adopted, reloaded and
//!   restarted by the agent.
//! - here: [`Groups`], what a heartbeat reports of each group, including
//!   whether this node holds its addresses now.
//!
//! Every member carries every forward of its groups whether it holds the
//! address or not (kernel rules match the address; the relay binds it with
//! `IP_FREEBIND`), so a standby is ready before it is needed and a failover
//! is only keepalived moving the address.

pub mod config;
pub mod render;
pub mod supervise;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

pub use config::{GroupConfig, VrrpConfig, VrrpConfigError};
use navigator_rpc::GroupState;
pub use supervise::{Keepalived, VrrpError};

/// This node's groups as the agent reports them.
pub struct Groups {
    config: VrrpConfig,
    /// keepalived's status, shared with its supervisor.
    keepalived: Arc<Mutex<String>>,
    /// Whether this node held each group at the last report, to log changes.
    held: Mutex<BTreeMap<String, bool>>,
}

impl Groups {
    pub fn new(config: VrrpConfig, keepalived: Arc<Mutex<String>>) -> Groups {
        Groups {
            config,
            keepalived,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn config(&self) -> &VrrpConfig {
        &self.config
    }

    /// Each group's state now. Logs a line when this node becomes or stops
    /// being a group's holder.
    pub fn states(&self) -> Vec<GroupState> {
        let keepalived = self
            .keepalived
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| "unknown".into());
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        self.config
            .groups
            .iter()
            .map(|group| {
                let holder = group.ips().all(is_local);
                let before = held.insert(group.name.clone(), holder);
                if before.is_some_and(|b| b != holder) || (before.is_none() && holder) {
                    if holder {
                        tracing::info!(group = %group.name, "this node now holds the group's virtual addresses");
                    } else {
                        tracing::info!(group = %group.name, "this node no longer holds the group's virtual addresses");
                    }
                }
                GroupState {
                    name: group.name.clone(),
                    addresses: group.ips().map(|ip| ip.to_string()).collect(),
                    virtual_router_id: group.virtual_router_id,
                    holder,
                    keepalived: keepalived.clone(),
                }
            })
            .collect()
    }
}

/// Whether `ip` is an address of this host (network namespace) now: a UDP
/// socket binds to it without `IP_FREEBIND` only then. One syscall pair,
/// no netlink dump: cheap enough for every heartbeat.
pub fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local_and_a_documentation_address_is_not() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(!is_local("192.0.2.201".parse().unwrap()));
    }
}
