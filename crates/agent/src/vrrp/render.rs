//! The keepalived configuration of this node's address groups, rendered
//! from [`VrrpConfig`] as plain text: pure, so that it is snapshot-tested
//! and compared with what keepalived runs (a SIGHUP only when it differs).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use super::config::{GroupConfig, VrrpConfig};

/// The name of the agent check in the rendered configuration.
pub const AGENT_CHECK: &str = "navigator_agent";

/// What the rendering needs besides the configuration.
pub struct RenderContext<'a> {
    /// keepalived's `router_id` (the agent's host name).
    pub host: &'a str,
    /// The user keepalived runs its check as: the agent's own (root, or
    /// the unit's user).
    pub script_user: &'a str,
    /// flock(1), which the agent check runs.
    pub flock: &'a Path,
}

/// keepalived's name for one group's instance of one family.
pub fn instance_name(group: &str, ipv6: bool) -> String {
    format!("nav_{}_{}", group, if ipv6 { "v6" } else { "v4" })
}

/// The whole configuration for `config`'s groups.
///
/// Every instance starts as BACKUP with `nopreempt`: a node that returns
/// does not take the address back (one move per failure, not two). VRRPv3,
/// because v2 rounds sub-second intervals up to whole seconds. A group
/// with addresses of both families gets one instance per family (VRRP runs
/// per family), with the same id, in one sync group so that they move
/// together. The agent check tries the lock the agent
/// holds on its pid file: it fails once the agent is gone, and after
/// `agent_check_delay` of failures the instance goes to FAULT and gives the
/// address up; an agent restart is shorter and moves nothing.
pub fn render(config: &VrrpConfig, context: &RenderContext<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Rendered by navigator-agent from the [vrrp] sections of navigator.conf.\n\
         # Rewritten by the agent at each start: do not edit."
    );
    let _ = writeln!(out, "global_defs {{");
    let _ = writeln!(out, "  router_id {}", keepalived_word(context.host));
    let _ = writeln!(
        out,
        "  script_user {}",
        keepalived_word(context.script_user)
    );
    let _ = writeln!(out, "  enable_script_security");
    let _ = writeln!(out, "}}");
    let _ = writeln!(out);
    let _ = writeln!(out, "vrrp_script {AGENT_CHECK} {{");
    let _ = writeln!(
        out,
        "  script \"{} --nonblock --conflict-exit-code 0 {} /bin/false\"",
        context.flock.display(),
        config.agent_pid_path().display()
    );
    let _ = writeln!(out, "  interval 1");
    let _ = writeln!(out, "  timeout 2");
    let _ = writeln!(out, "  fall {}", config.agent_check_delay.as_secs().max(1));
    let _ = writeln!(out, "  rise 1");
    let _ = writeln!(out, "}}");
    for group in &config.groups {
        let mut families = Vec::new();
        for ipv6 in [false, true] {
            let addresses: Vec<&(IpAddr, u8)> = group
                .addresses
                .iter()
                .filter(|(ip, _)| ip.is_ipv6() == ipv6)
                .collect();
            if !addresses.is_empty() {
                instance(&mut out, group, ipv6, &addresses);
                families.push(ipv6);
            }
        }
        // Both families' instances move together: a group is held by one
        // node, never its IPv4 address here and its IPv6 address there.
        if families.len() > 1 {
            let _ = writeln!(out);
            let _ = writeln!(out, "vrrp_sync_group nav_{} {{", group.name);
            let _ = writeln!(out, "  group {{");
            for ipv6 in families {
                let _ = writeln!(out, "    {}", instance_name(&group.name, ipv6));
            }
            let _ = writeln!(out, "  }}");
            let _ = writeln!(out, "}}");
        }
    }
    out
}

fn instance(out: &mut String, group: &GroupConfig, ipv6: bool, addresses: &[&(IpAddr, u8)]) {
    let _ = writeln!(out);
    let _ = writeln!(out, "vrrp_instance {} {{", instance_name(&group.name, ipv6));
    let _ = writeln!(out, "  state BACKUP");
    let _ = writeln!(out, "  nopreempt");
    let _ = writeln!(out, "  interface {}", group.interface);
    if ipv6 {
        let _ = writeln!(out, "  native_ipv6");
    }
    let _ = writeln!(out, "  version 3");
    let _ = writeln!(out, "  virtual_router_id {}", group.virtual_router_id);
    let _ = writeln!(out, "  priority {}", group.priority);
    let _ = writeln!(out, "  advert_int {}", group.advert_int);
    if let Some(src) = group.unicast_src_ip.filter(|ip| ip.is_ipv6() == ipv6) {
        let _ = writeln!(out, "  unicast_src_ip {src}");
    }
    let peers: Vec<&IpAddr> = group
        .unicast_peers
        .iter()
        .filter(|ip| ip.is_ipv6() == ipv6)
        .collect();
    if !peers.is_empty() {
        let _ = writeln!(out, "  unicast_peer {{");
        for peer in peers {
            let _ = writeln!(out, "    {peer}");
        }
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(out, "  track_script {{");
    let _ = writeln!(out, "    {AGENT_CHECK}");
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "  virtual_ipaddress {{");
    for (ip, prefix) in addresses {
        let _ = writeln!(out, "    {ip}/{prefix} dev {}", group.interface);
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
}

/// A word keepalived reads as one token: anything else becomes `_`.
fn keepalived_word(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn snapshot() {
        let text = "[vrrp]\nrun_dir = /run/navigator\nagent_check_delay = 12\n\
                    [vrrp:web]\nvirtual_addresses = 192.0.2.100/24, 2001:db8::100/64\ninterface = eth0\nvirtual_router_id = 51\npriority = 150\nadvert_int = 0.2\nunicast_peers = 192.0.2.12, 2001:db8::12\nunicast_src_ip = 192.0.2.11\n\
                    [vrrp:db]\nvirtual_addresses = 198.51.100.7\ninterface = eth1\nvirtual_router_id = 52\n";
        let ini = ini::Ini::load_from_str_noescape(text).unwrap();
        let mut values = BTreeMap::new();
        for (section, properties) in ini.iter() {
            for (key, value) in properties.iter() {
                values.insert(
                    (section.unwrap_or("DEFAULT").to_owned(), key.to_owned()),
                    value.to_owned(),
                );
            }
        }
        let config = super::super::config::parse("t.conf", &values, &[], "nft")
            .unwrap()
            .unwrap();
        let rendered = render(
            &config,
            &RenderContext {
                host: "proxy 1",
                script_user: "root",
                flock: Path::new("/usr/bin/flock"),
            },
        );
        let expected = include_str!("snapshots/keepalived.conf");
        assert_eq!(rendered, expected, "rendered:\n{rendered}");
    }
}
