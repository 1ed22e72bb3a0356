//! The `[vrrp]` and `[vrrp:NAME]` sections of `navigator.conf`: what each
//! address group of this node is, checked as far as the text allows
//! ([`parse`]) and then against the host ([`VrrpConfig::check_host`]).
//!
//! Keys of these sections are the agent's alone, so an unknown key is an
//! error here, not a warning: a misspelt `unicast_peers` would silently
//! turn a unicast group into a multicast one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::options;

/// The per-node section.
pub const NODE_SECTION: &str = "vrrp";
/// A group's section is `vrrp:NAME`.
pub const GROUP_PREFIX: &str = "vrrp:";

/// Keys of `[vrrp]` with their defaults, as written in the file.
pub const NODE_KEYS: &[(&str, &str, &str)] = &[
    (
        "keepalived",
        "keepalived",
        "The keepalived program the agent runs for this node's address groups ([vrrp:NAME] sections): a path, or a name looked up in PATH.",
    ),
    (
        "run_dir",
        "/run/navigator",
        "Directory of the rendered keepalived configuration, its pid files and log, and the agent's own pid file (which keepalived's agent check reads).",
    ),
    (
        "agent_check_delay",
        "10",
        "Seconds keepalived tolerates an absent agent before this node gives its groups' virtual addresses up (1-3600). Must be longer than an agent restart, which must not move an address.",
    ),
];

/// Keys of `[vrrp:NAME]` with their defaults ("" = required or unset).
pub const GROUP_KEYS: &[(&str, &str, &str)] = &[
    (
        "virtual_addresses",
        "",
        "Required. Comma-separated IPv4/IPv6 addresses the group moves between its members, each with an optional /prefix (default /32 and /128). Forwards on the group listen on them.",
    ),
    (
        "interface",
        "",
        "Required. The network interface the virtual addresses go on and VRRP speaks on; every member on one L2 segment.",
    ),
    (
        "virtual_router_id",
        "",
        "Required. VRRP's virtual router id, 1-255, the same on every member and unique per group on the segment.",
    ),
    (
        "priority",
        "100",
        "VRRP priority of this node, 1-254. Every member starts as BACKUP without preemption, so a returning node does not take the address back whatever its priority.",
    ),
    (
        "advert_int",
        "1",
        "Seconds between VRRP advertisements, 0.01-255 (two decimals). A standby takes over about 3 advertisements after the holder goes silent: shorter detects a death sooner, and also reads a busy or lossy link as one.",
    ),
    (
        "unicast_peers",
        "",
        "Comma-separated addresses of the other members, for segments without multicast. Empty: VRRP multicast.",
    ),
    (
        "unicast_src_ip",
        "",
        "Source address of unicast advertisements. Empty: the interface's primary address.",
    ),
    (
        "conntrackd",
        "false",
        "Reserved for conntrackd state sync between the members (not implemented yet: must stay false). Without it, connections established through the old holder are lost on failover with the kernel backends; new ones work at once.",
    ),
];

/// One address group as this node's configuration declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    /// The virtual addresses with their prefix length (as given, else the
    /// whole address).
    pub addresses: Vec<(IpAddr, u8)>,
    pub interface: String,
    pub virtual_router_id: u8,
    pub priority: u8,
    pub advert_int: AdvertInt,
    pub unicast_peers: Vec<IpAddr>,
    pub unicast_src_ip: Option<IpAddr>,
    pub conntrackd: bool,
}

impl GroupConfig {
    /// The virtual addresses without prefix.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().map(|(ip, _)| *ip)
    }
}

/// VRRP's advertisement interval in hundredths of a second (VRRPv3's unit),
/// 1 to 25,500.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdvertInt(pub u32);

impl AdvertInt {
    pub fn duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0) * 10)
    }
}

impl fmt::Display for AdvertInt {
    /// As keepalived reads it: `1`, `0.2`, `0.05`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, cents) = (self.0 / 100, self.0 % 100);
        match cents {
            0 => write!(f, "{whole}"),
            c if c % 10 == 0 => write!(f, "{whole}.{}", c / 10),
            c => write!(f, "{whole}.{c:02}"),
        }
    }
}

/// This node's address groups and how it runs keepalived for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VrrpConfig {
    pub keepalived: PathBuf,
    pub run_dir: PathBuf,
    pub agent_check_delay: Duration,
    /// Sorted by name.
    pub groups: Vec<GroupConfig>,
}

impl VrrpConfig {
    /// Every virtual address of every group (what the relay binds with
    /// `IP_FREEBIND`).
    pub fn virtual_addresses(&self) -> Vec<IpAddr> {
        self.groups.iter().flat_map(GroupConfig::ips).collect()
    }

    /// The rendered keepalived configuration.
    pub fn conf_path(&self) -> PathBuf {
        self.run_dir.join("keepalived.conf")
    }

    /// keepalived's own pid file (its parent process).
    pub fn pid_path(&self) -> PathBuf {
        self.run_dir.join("keepalived.pid")
    }

    /// keepalived's VRRP child's pid file.
    pub fn vrrp_pid_path(&self) -> PathBuf {
        self.run_dir.join("keepalived-vrrp.pid")
    }

    /// keepalived's console output, which the agent follows.
    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("keepalived.log")
    }

    /// The agent's pid file, locked while the agent lives: keepalived's
    /// agent check tries the lock.
    pub fn agent_pid_path(&self) -> PathBuf {
        self.run_dir.join("navigator-agent.pid")
    }

    /// What the configuration cannot tell alone: the interfaces exist and
    /// keepalived can be found. Run at start-up (a failure exits 64).
    pub fn check_host(&self, path: &str) -> Result<PathBuf, VrrpConfigError> {
        for group in &self.groups {
            if !Path::new("/sys/class/net").join(&group.interface).exists() {
                return Err(VrrpConfigError {
                    path: path.to_owned(),
                    section: format!("{GROUP_PREFIX}{}", group.name),
                    key: "interface",
                    value: Some(group.interface.clone()),
                    message: "no such network interface on this host".into(),
                });
            }
        }
        find_program(&self.keepalived).ok_or_else(|| VrrpConfigError {
            path: path.to_owned(),
            section: NODE_SECTION.into(),
            key: "keepalived",
            value: Some(self.keepalived.display().to_string()),
            message: "keepalived not found (install Debian's keepalived package, or give its path)"
                .into(),
        })
    }
}

/// `program` if it is a path to a file, else the first file of that name in
/// `PATH` (plus the sbin directories, which a non-root PATH may lack).
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A problem in a `[vrrp]`/`[vrrp:NAME]` section, naming the file, section
/// and key.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: [{section}]{}: {message}", key_and_value(key, value.as_deref()))]
pub struct VrrpConfigError {
    pub path: String,
    pub section: String,
    pub key: &'static str,
    pub value: Option<String>,
    pub message: String,
}

/// ` KEY = "VALUE"`, ` KEY` or nothing (a problem of the whole section).
fn key_and_value(key: &str, value: Option<&str>) -> String {
    match (key, value) {
        ("", _) => String::new(),
        (key, None) => format!(" {key}"),
        (key, Some(value)) => format!(" {key} = {value:?}"),
    }
}

/// Parses the `[vrrp]` and `[vrrp:NAME]` sections among `values` (every
/// `(section, key) -> value` of the file). `None` when the file declares no
/// group. `external_addresses` and `backend` are the agent's, checked
/// against the groups.
pub fn parse(
    path: &str,
    values: &BTreeMap<(String, String), String>,
    external_addresses: &[IpAddr],
    backend: &str,
) -> Result<Option<VrrpConfig>, VrrpConfigError> {
    let error =
        |section: &str, key: &'static str, value: Option<&str>, message: String| VrrpConfigError {
            path: path.to_owned(),
            section: section.to_owned(),
            key,
            value: value.map(str::to_owned),
            message,
        };
    // Sections and their keys, unknown keys refused.
    let mut groups: BTreeMap<String, BTreeMap<&'static str, String>> = BTreeMap::new();
    let mut node: BTreeMap<&'static str, String> = BTreeMap::new();
    for ((section, key), value) in values {
        let (table, into) = if section == NODE_SECTION {
            (NODE_KEYS, &mut node)
        } else if let Some(name) = section.strip_prefix(GROUP_PREFIX) {
            if name.is_empty()
                || name.len() > 32
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(error(
                    section,
                    "",
                    None,
                    "a group's name is 1 to 32 characters of a-z, 0-9 and -".into(),
                ));
            }
            (GROUP_KEYS, groups.entry(name.to_owned()).or_default())
        } else {
            continue;
        };
        let Some((known, _, _)) = table.iter().find(|(k, _, _)| k == key) else {
            let allowed: Vec<&str> = table.iter().map(|(k, _, _)| *k).collect();
            return Err(VrrpConfigError {
                path: path.to_owned(),
                section: section.clone(),
                key: "",
                value: None,
                message: format!("unknown key {key:?}; allowed: {}", allowed.join(", ")),
            });
        };
        into.insert(known, value.trim().to_owned());
    }
    if groups.is_empty() {
        return Ok(None);
    }
    let get = |map: &BTreeMap<&'static str, String>, table: &[(&str, &str, &str)], key: &str| {
        map.get(key).cloned().unwrap_or_else(|| {
            table
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|(_, d, _)| (*d).to_owned())
                .unwrap_or_default()
        })
    };
    let keepalived = get(&node, NODE_KEYS, "keepalived");
    if keepalived.is_empty() {
        return Err(error(
            NODE_SECTION,
            "keepalived",
            Some(""),
            "expected a program name or path".into(),
        ));
    }
    let run_dir = get(&node, NODE_KEYS, "run_dir");
    if !run_dir.starts_with('/') {
        return Err(error(
            NODE_SECTION,
            "run_dir",
            Some(&run_dir),
            "expected an absolute directory path".into(),
        ));
    }
    let delay = get(&node, NODE_KEYS, "agent_check_delay");
    let agent_check_delay = match delay.parse::<u64>() {
        Ok(n) if (1..=3600).contains(&n) => Duration::from_secs(n),
        _ => {
            return Err(error(
                NODE_SECTION,
                "agent_check_delay",
                Some(&delay),
                "expected a whole number of seconds from 1 to 3600".into(),
            ));
        }
    };
    if !groups.is_empty() && backend == "socat" {
        let name = groups.keys().next().cloned().unwrap_or_default();
        return Err(error(
            &format!("{GROUP_PREFIX}{name}"),
            "",
            None,
            "address groups need the relay, nft or iptables backend: socat cannot listen on a \
             virtual address this node does not hold ([agent] backend = socat)"
                .into(),
        ));
    }
    let mut parsed = Vec::with_capacity(groups.len());
    for (name, keys) in &groups {
        let section = format!("{GROUP_PREFIX}{name}");
        let value = |key: &str| get(keys, GROUP_KEYS, key);
        let required = |key: &'static str| {
            let v = value(key);
            if v.is_empty() {
                Err(error(
                    &section,
                    key,
                    None,
                    "required in a group's section".into(),
                ))
            } else {
                Ok(v)
            }
        };
        let text = required("virtual_addresses")?;
        let addresses = virtual_addresses(&text)
            .map_err(|m| error(&section, "virtual_addresses", Some(&text), m))?;
        let interface = required("interface")?;
        if interface.len() > 15
            || interface
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(error(
                &section,
                "interface",
                Some(&interface),
                "expected an interface name (at most 15 characters, no spaces or /)".into(),
            ));
        }
        let text = required("virtual_router_id")?;
        let virtual_router_id = match text.parse::<u8>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(error(
                    &section,
                    "virtual_router_id",
                    Some(&text),
                    "expected a whole number from 1 to 255".into(),
                ));
            }
        };
        let text = value("priority");
        let priority = match text.parse::<u8>() {
            Ok(n) if (1..=254).contains(&n) => n,
            _ => {
                return Err(error(
                    &section,
                    "priority",
                    Some(&text),
                    "expected a whole number from 1 to 254".into(),
                ));
            }
        };
        let text = value("advert_int");
        let advert_int =
            advert_int(&text).map_err(|m| error(&section, "advert_int", Some(&text), m))?;
        let text = value("unicast_peers");
        let unicast_peers: Vec<IpAddr> = options::list(&text, "an IPv4 or IPv6 address")
            .map_err(|m| error(&section, "unicast_peers", Some(&text), m))?;
        let text = value("unicast_src_ip");
        let unicast_src_ip = if text.is_empty() {
            None
        } else {
            Some(text.parse::<IpAddr>().map_err(|_| {
                error(
                    &section,
                    "unicast_src_ip",
                    Some(&text),
                    "expected an IPv4 or IPv6 address".into(),
                )
            })?)
        };
        let text = value("conntrackd");
        let conntrackd =
            options::boolean(&text).map_err(|m| error(&section, "conntrackd", Some(&text), m))?;
        if conntrackd {
            return Err(error(
                &section,
                "conntrackd",
                Some(&text),
                "conntrackd state sync is not implemented yet; leave it false (connections \
                 established through the old holder are lost on failover)"
                    .into(),
            ));
        }
        for (ip, _) in &addresses {
            if external_addresses.contains(ip) {
                return Err(error(
                    &section,
                    "virtual_addresses",
                    Some(&ip.to_string()),
                    "is also one of [agent] external_addresses: a virtual address moves between \
                     nodes, a node's own address does not; list it in one of them only"
                        .into(),
                ));
            }
            if unicast_peers.contains(ip) || unicast_src_ip == Some(*ip) {
                return Err(error(
                    &section,
                    "virtual_addresses",
                    Some(&ip.to_string()),
                    "is also a unicast peer or source of the group: those are the members' own \
                     addresses"
                        .into(),
                ));
            }
        }
        parsed.push(GroupConfig {
            name: name.clone(),
            addresses,
            interface,
            virtual_router_id,
            priority,
            advert_int,
            unicast_peers,
            unicast_src_ip,
            conntrackd,
        });
    }
    // Across groups: a virtual address in one group only, and one virtual
    // router id per interface (and family: IPv4 and IPv6 VRRP are separate).
    for (i, a) in parsed.iter().enumerate() {
        for b in &parsed[i + 1..] {
            if let Some(ip) = a.ips().find(|ip| b.ips().any(|other| other == *ip)) {
                return Err(error(
                    &format!("{GROUP_PREFIX}{}", b.name),
                    "virtual_addresses",
                    Some(&ip.to_string()),
                    format!("is also a virtual address of [{GROUP_PREFIX}{}]", a.name),
                ));
            }
            let families = |g: &GroupConfig| {
                (
                    g.ips().any(|ip| ip.is_ipv4()),
                    g.ips().any(|ip| ip.is_ipv6()),
                )
            };
            let ((a4, a6), (b4, b6)) = (families(a), families(b));
            if a.interface == b.interface
                && a.virtual_router_id == b.virtual_router_id
                && ((a4 && b4) || (a6 && b6))
            {
                return Err(error(
                    &format!("{GROUP_PREFIX}{}", b.name),
                    "virtual_router_id",
                    Some(&b.virtual_router_id.to_string()),
                    format!(
                        "is also the id of [{GROUP_PREFIX}{}] on interface {}: each group needs \
                         its own id on a segment",
                        a.name, a.interface
                    ),
                ));
            }
        }
    }
    Ok(Some(VrrpConfig {
        keepalived: PathBuf::from(keepalived),
        run_dir: PathBuf::from(run_dir),
        agent_check_delay,
        groups: parsed,
    }))
}

/// `virtual_addresses`: at least one unicast address, each with an
/// optional prefix length.
fn virtual_addresses(value: &str) -> Result<Vec<(IpAddr, u8)>, String> {
    let mut out: Vec<(IpAddr, u8)> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (ip, prefix) = match item.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (item, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| {
            format!("{item:?} is not an IPv4 or IPv6 address with an optional /prefix")
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => return Err(format!("{item:?}: the prefix length must be 1 to {max}")),
            },
        };
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            return Err(format!(
                "{ip} cannot be a virtual address: give a unicast address of the segment"
            ));
        }
        if out.iter().any(|(other, _)| *other == ip) {
            return Err(format!("{ip} is listed twice"));
        }
        out.push((ip, prefix));
    }
    if out.is_empty() {
        return Err("at least one address is needed".into());
    }
    if out.len() > 64 {
        return Err("at most 64 addresses per group".into());
    }
    Ok(out)
}

/// `advert_int`: 0.01 to 255 seconds, at most two decimals.
fn advert_int(value: &str) -> Result<AdvertInt, String> {
    let bad = || "expected seconds from 0.01 to 255 with at most two decimals".to_owned();
    let (whole, frac) = value.split_once('.').unwrap_or((value, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 2
        || whole.len() > 3
    {
        return Err(bad());
    }
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let cents: u32 = match frac.len() {
        0 => 0,
        1 => frac.parse::<u32>().map_err(|_| bad())? * 10,
        _ => frac.parse().map_err(|_| bad())?,
    };
    let total = whole * 100 + cents;
    if (1..=25_500).contains(&total) {
        Ok(AdvertInt(total))
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> BTreeMap<(String, String), String> {
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
        values
    }

    fn parse_text(text: &str) -> Result<Option<VrrpConfig>, VrrpConfigError> {
        let external: Vec<IpAddr> = vec!["192.0.2.11".parse().unwrap()];
        parse("t.conf", &values(text), &external, "relay")
    }

    const GROUP: &str = "[vrrp:web]\nvirtual_addresses = 192.0.2.100/24, 2001:db8::100\ninterface = eth0\nvirtual_router_id = 51\n";

    #[test]
    fn reads_a_group_with_defaults() {
        let config = parse_text(GROUP).unwrap().unwrap();
        assert_eq!(config.keepalived, PathBuf::from("keepalived"));
        assert_eq!(config.run_dir, PathBuf::from("/run/navigator"));
        assert_eq!(config.agent_check_delay, Duration::from_secs(10));
        let group = &config.groups[0];
        assert_eq!(group.name, "web");
        assert_eq!(
            group.addresses,
            vec![
                ("192.0.2.100".parse().unwrap(), 24),
                ("2001:db8::100".parse().unwrap(), 128)
            ]
        );
        assert_eq!(group.priority, 100);
        assert_eq!(group.advert_int, AdvertInt(100));
        assert!(group.unicast_peers.is_empty());
        assert_eq!(group.unicast_src_ip, None);
        assert!(!group.conntrackd);
        assert_eq!(config.virtual_addresses().len(), 2);
        assert_eq!(parse_text("[vrrp]\nrun_dir = /tmp/x\n").unwrap(), None);
    }

    #[test]
    fn advert_int_takes_two_decimals() {
        assert_eq!(advert_int("0.2"), Ok(AdvertInt(20)));
        assert_eq!(advert_int("0.05"), Ok(AdvertInt(5)));
        assert_eq!(advert_int("255"), Ok(AdvertInt(25_500)));
        assert_eq!(advert_int(".5"), Ok(AdvertInt(50)));
        for bad in ["0", "0.001", "256", "-1", "1e3", "", ".", "1.2.3"] {
            assert!(advert_int(bad).is_err(), "{bad}");
        }
        assert_eq!(AdvertInt(20).to_string(), "0.2");
        assert_eq!(AdvertInt(5).to_string(), "0.05");
        assert_eq!(AdvertInt(125).to_string(), "1.25");
        assert_eq!(AdvertInt(300).to_string(), "3");
    }

    #[test]
    fn errors_name_file_section_and_key() {
        let cases = [
            (
                "[vrrp:Web]\ninterface = eth0\n",
                "t.conf: [vrrp:Web]: a group's name is 1 to 32 characters of a-z, 0-9 and -",
            ),
            (
                "[vrrp:web]\ninterface = eth0\nvirtual_router_id = 1\n",
                "t.conf: [vrrp:web] virtual_addresses: required in a group's section",
            ),
            (
                "[vrrp:web]\nvirtual_addresses = 192.0.2.11\ninterface = eth0\nvirtual_router_id = 1\n",
                "t.conf: [vrrp:web] virtual_addresses = \"192.0.2.11\": is also one of [agent] external_addresses",
            ),
            (
                "[vrrp:web]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 0\n",
                "t.conf: [vrrp:web] virtual_router_id = \"0\": expected a whole number from 1 to 255",
            ),
            (
                "[vrrp:web]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 1\npriority = 255\n",
                "t.conf: [vrrp:web] priority = \"255\": expected a whole number from 1 to 254",
            ),
            (
                "[vrrp:web]\nvirtual_addresses = 192.0.2.100/33\ninterface = eth0\nvirtual_router_id = 1\n",
                "t.conf: [vrrp:web] virtual_addresses = \"192.0.2.100/33\": \"192.0.2.100/33\": the prefix length must be 1 to 32",
            ),
            (
                "[vrrp:web]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 1\nunicast_peer = 192.0.2.12\n",
                "t.conf: [vrrp:web]: unknown key \"unicast_peer\"",
            ),
            (
                "[vrrp]\nagent_check_delay = 0\n[vrrp:web]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 1\n",
                "t.conf: [vrrp] agent_check_delay = \"0\": expected a whole number of seconds from 1 to 3600",
            ),
            (
                "[vrrp:a]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 1\n[vrrp:b]\nvirtual_addresses = 192.0.2.100\ninterface = eth1\nvirtual_router_id = 2\n",
                "t.conf: [vrrp:b] virtual_addresses = \"192.0.2.100\": is also a virtual address of [vrrp:a]",
            ),
            (
                "[vrrp:a]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 7\n[vrrp:b]\nvirtual_addresses = 192.0.2.101\ninterface = eth0\nvirtual_router_id = 7\n",
                "t.conf: [vrrp:b] virtual_router_id = \"7\": is also the id of [vrrp:a] on interface eth0",
            ),
            (
                "[vrrp:web]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 1\nconntrackd = true\n",
                "t.conf: [vrrp:web] conntrackd = \"true\": conntrackd state sync is not implemented yet",
            ),
        ];
        for (text, expected) in cases {
            let message = parse_text(text).unwrap_err().to_string();
            assert!(
                message.starts_with(expected),
                "{message}\nexpected: {expected}"
            );
        }
        // One id per family: an IPv4 group and an IPv6 group may share it.
        let text = "[vrrp:a]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 7\n[vrrp:b]\nvirtual_addresses = 2001:db8::1\ninterface = eth0\nvirtual_router_id = 7\n";
        assert_eq!(parse_text(text).unwrap().unwrap().groups.len(), 2);
        let message = parse("t.conf", &values(GROUP), &[], "socat")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("socat cannot listen on a virtual address"),
            "{message}"
        );
    }

    #[test]
    fn host_check_names_a_missing_interface_and_program() {
        let mut config = parse_text(GROUP).unwrap().unwrap();
        config.groups[0].interface = "navk-none0".into();
        let message = config.check_host("t.conf").unwrap_err().to_string();
        assert_eq!(
            message,
            "t.conf: [vrrp:web] interface = \"navk-none0\": no such network interface on this host"
        );
        config.groups[0].interface = "lo".into();
        config.keepalived = "/nonexistent/keepalived".into();
        let message = config.check_host("t.conf").unwrap_err().to_string();
        assert!(
            message.starts_with(
                "t.conf: [vrrp] keepalived = \"/nonexistent/keepalived\": keepalived not found"
            ),
            "{message}"
        );
    }
}
