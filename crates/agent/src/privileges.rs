//! The capabilities `navigator-agent` keeps: only those its configured data
//! plane needs.
//!
//! The packaged unit (`packaging/navigator-agent.service`) runs the agent as
//! the unprivileged `navigator` user and grants, as ambient capabilities, the
//! union of what any backend needs. At start-up the agent drops every one its
//! configuration does not use, so that a relay agent (the default) holds no
//! privilege at all, and logs what it keeps. The kept ones stay ambient
//! because the kernel backends work through child processes (`nft`,
//! `iptables-restore`, `conntrack`, `socat`) that must inherit them.
//!
//! Run as root (tests, hand-started agents), nothing is dropped: root's
//! power does not come from capabilities alone (it owns `/proc/sys` and
//! `/run`), so dropping them would change what works without making root
//! safe.

use std::collections::HashSet;

use caps::{CapSet, Capability};
use navigator_core::PortRange;

/// What each capability is needed for, as logged and documented.
const WHY: &[(Capability, &str)] = &[
    (
        Capability::CAP_NET_ADMIN,
        "nft/iptables rules, conntrack cleanup, net.* sysctls",
    ),
    (
        Capability::CAP_NET_RAW,
        "iptables-legacy's raw socket (libiptc)",
    ),
    (
        Capability::CAP_NET_BIND_SERVICE,
        "listening on ports below 1024",
    ),
];

/// What keepalived, a child of the agent, does with them (address groups).
const WHY_KEEPALIVED: &str = "keepalived: virtual addresses, VRRP and gratuitous ARP";

/// The capabilities `backend` needs to carry forwards on `port_range`, and
/// keepalived when the node is a member of address groups (`groups`): it
/// inherits them (ambient) to add and remove the virtual addresses
/// (`CAP_NET_ADMIN`) and to send VRRP and gratuitous ARP on raw and packet
/// sockets (`CAP_NET_RAW`).
pub fn needed(backend: &str, port_range: PortRange, groups: bool) -> HashSet<Capability> {
    let mut needed = HashSet::new();
    if groups {
        needed.insert(Capability::CAP_NET_ADMIN);
        needed.insert(Capability::CAP_NET_RAW);
    }
    match backend {
        // nft(8) and conntrack(8) talk netlink, which checks CAP_NET_ADMIN;
        // fix_sysctls writes net.* sysctls, which the kernel lets
        // CAP_NET_ADMIN write (net_ctl_permissions).
        "nft" => {
            needed.insert(Capability::CAP_NET_ADMIN);
        }
        // iptables-legacy opens a raw socket for its get/setsockopt calls.
        "iptables" => {
            needed.insert(Capability::CAP_NET_ADMIN);
            needed.insert(Capability::CAP_NET_RAW);
        }
        // relay and socat listen as user-space processes: nothing, unless
        // the pool holds privileged ports.
        _ => {}
    }
    // Kernel backends DNAT without listening, so privileged ports need
    // nothing more there.
    if matches!(backend, "relay" | "socat") && port_range.first() < 1024 {
        needed.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    needed
}

/// Whether `needed` is a group member's set (both of keepalived's).
fn groups_asked(needed: &HashSet<Capability>) -> bool {
    needed.contains(&Capability::CAP_NET_ADMIN) && needed.contains(&Capability::CAP_NET_RAW)
}

/// Why the agent could not set its capabilities.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read or change this process's capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
}

/// What [`keep_only`] did, for the start-up log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Running as root: every capability kept (see the module's comment).
    Root,
    /// Capabilities now held (sorted names) and the needed ones the process
    /// was not given (the backend will fail on them: each with its reason).
    Kept {
        kept: Vec<String>,
        missing: Vec<String>,
    },
}

/// Drops every capability of this process that is not in `needed`, from
/// all sets (ambient first: the kernel refuses an ambient capability that is
/// not also permitted and inheritable), and keeps the needed ones ambient.
pub fn keep_only(needed: &HashSet<Capability>) -> Result<Outcome, PrivilegeError> {
    if rustix::process::geteuid().is_root() {
        return Ok(Outcome::Root);
    }
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: HashSet<Capability> = permitted.intersection(needed).copied().collect();
    caps::set(None, CapSet::Ambient, &HashSet::new())?;
    for set in [CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
        caps::set(None, set, &kept)?;
    }
    // Children (nft, iptables-restore, conntrack, socat) inherit ambient
    // capabilities only; each must be inheritable and permitted, as set above.
    for cap in &kept {
        caps::raise(None, CapSet::Ambient, *cap)?;
    }
    let name = |cap: &Capability| {
        let why = WHY
            .iter()
            .find(|(c, _)| c == cap)
            .map_or("", |(_, why)| *why);
        if groups_asked(needed)
            && matches!(cap, Capability::CAP_NET_ADMIN | Capability::CAP_NET_RAW)
        {
            format!("{cap} ({why}; {WHY_KEEPALIVED})")
        } else {
            format!("{cap} ({why})")
        }
    };
    let mut kept_names: Vec<String> = kept.iter().map(name).collect();
    kept_names.sort();
    let mut missing: Vec<String> = needed.difference(&kept).map(name).collect();
    missing.sort();
    Ok(Outcome::Kept {
        kept: kept_names,
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u16, last: u16) -> PortRange {
        PortRange::new(first, last).expect("valid range")
    }

    #[test]
    fn each_backend_needs_only_its_own_capabilities() {
        let pool = range(20000, 29999);
        assert!(needed("relay", pool, false).is_empty());
        assert!(needed("socat", pool, false).is_empty());
        assert_eq!(
            needed("nft", pool, false),
            HashSet::from([Capability::CAP_NET_ADMIN])
        );
        assert_eq!(
            needed("iptables", pool, false),
            HashSet::from([Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW])
        );
    }

    #[test]
    fn group_members_keep_what_keepalived_needs() {
        let pool = range(20000, 29999);
        for backend in ["relay", "nft", "iptables"] {
            assert_eq!(
                needed(backend, pool, true),
                HashSet::from([Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW]),
                "{backend}"
            );
        }
    }

    #[test]
    fn privileged_ports_need_bind_service_only_where_something_listens() {
        let low = range(80, 2000);
        assert_eq!(
            needed("relay", low, false),
            HashSet::from([Capability::CAP_NET_BIND_SERVICE])
        );
        assert_eq!(
            needed("socat", low, false),
            HashSet::from([Capability::CAP_NET_BIND_SERVICE])
        );
        assert_eq!(
            needed("nft", low, false),
            HashSet::from([Capability::CAP_NET_ADMIN])
        );
    }
}
