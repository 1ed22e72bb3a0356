//! Preconditions of the kernel and socat data planes, checked at agent start
//! and again before each apply, so that a host that is not ready is explained
//! (problem + exact fix) instead of forwards that silently carry nothing.
//!
//! A [`Finding`] is either `Blocking` (forwards of its scope are reported
//! `ERROR` with the finding as reason) or a `Warning` (logged at start; the
//! forwards work). With `fix_sysctls`, sysctls are corrected instead of
//! reported, and the correction is logged.

use std::fmt;
use std::net::IpAddr;

use navigator_core::{ForwardSpec, PortRange};

use crate::exec::Host;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Forwards in scope cannot work; they are reported `ERROR`.
    Blocking,
    /// Forwards work; the host deserves attention.
    Warning,
}

/// Which forwards a finding concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Ipv4,
    Ipv6,
}

impl Scope {
    fn covers(self, spec: &ForwardSpec) -> bool {
        match self {
            Scope::All => true,
            Scope::Ipv4 => spec.listen.is_ipv4(),
            Scope::Ipv6 => spec.listen.is_ipv6(),
        }
    }
}

/// One problem of the host, with the command that fixes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub scope: Scope,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

/// The first blocking finding that concerns `spec`, as a status reason.
pub fn blocking_reason(findings: &[Finding], spec: &ForwardSpec) -> Option<String> {
    findings
        .iter()
        .find(|f| f.severity == Severity::Blocking && f.scope.covers(spec))
        .map(ToString::to_string)
}

/// Checks that IPv4 and IPv6 forwarding are on (kernel NAT routes the
/// translated packets), fixing them when `fix` is set.
pub async fn forwarding(host: &Host, fix: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    let checks = [
        (Scope::Ipv4, "net.ipv4.ip_forward", "IPv4"),
        (Scope::Ipv6, "net.ipv6.conf.all.forwarding", "IPv6"),
    ];
    for (scope, key, family) in checks {
        match host.sysctl(key).await.as_deref() {
            Some("1") => {}
            None => findings.push(Finding {
                severity: Severity::Blocking,
                scope,
                problem: format!("{family} is not available on this host ({key} does not exist)"),
                fix: format!(
                    "enable {family} in the kernel (e.g. remove ipv6.disable=1 from the boot command line)"
                ),
            }),
            Some(value) => {
                if fix {
                    match host.set_sysctl(key, "1").await {
                        Ok(()) => {
                            tracing::warn!(
                                "{family} forwarding was off ({key} = {value}); turned it on because [agent] fix_sysctls = true"
                            );
                            continue;
                        }
                        Err(e) => tracing::warn!("cannot turn on {key}: {e}"),
                    }
                }
                findings.push(Finding {
                    severity: Severity::Blocking,
                    scope,
                    problem: format!("{family} forwarding is off on this host ({key} = {value})"),
                    fix: format!(
                        "run `sysctl -w {key}=1` and persist it with `echo {key}=1 > /etc/sysctl.d/90-navigator.conf`, or set [agent] fix_sysctls = true"
                    ),
                });
            }
        }
    }
    findings
}

/// Checks that `programs` exist; a missing one blocks every forward.
pub async fn tools(host: &Host, programs: &[&str], severity: Severity, why: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    for program in programs {
        if !host.has(program).await {
            findings.push(Finding {
                severity,
                scope: Scope::All,
                problem: format!("{program} is not installed ({why})"),
                fix: crate::exec::install_hint(program)
                    .trim_start_matches(": ")
                    .to_owned(),
            });
        }
    }
    findings
}

/// A Linux bridge on this host and the networks directly on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub networks: Vec<(IpAddr, u8)>,
}

impl Bridge {
    fn reaches(&self, target: IpAddr) -> bool {
        self.networks
            .iter()
            .any(|(net, len)| in_prefix(*net, *len, target))
    }
}

/// Whether `ip` is inside `net/len`.
pub fn in_prefix(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Parses `ip -o addr show` lines into (device, network) pairs.
pub fn parse_addresses(text: &str) -> Vec<(String, IpAddr, u8)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        // "4: br100    inet 10.92.0.1/24 brd ... scope global br100"
        let (Some(dev), Some(pos)) = (
            words.get(1),
            words.iter().position(|w| *w == "inet" || *w == "inet6"),
        ) else {
            continue;
        };
        let Some((addr, len)) = words.get(pos + 1).and_then(|a| a.split_once('/')) else {
            continue;
        };
        if let (Ok(addr), Ok(len)) = (addr.parse::<IpAddr>(), len.parse::<u8>()) {
            out.push((dev.trim_end_matches(':').to_owned(), addr, len));
        }
    }
    out
}

/// The bridges of this host with their directly attached networks.
pub async fn bridges(host: &Host) -> Vec<Bridge> {
    let timeout = crate::exec::DEFAULT_TIMEOUT;
    let Ok(links) = host
        .run(
            &["ip", "-o", "link", "show", "type", "bridge"],
            None,
            timeout,
        )
        .await
    else {
        return Vec::new();
    };
    let names: Vec<String> = links
        .stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let addrs = match host.run(&["ip", "-o", "addr", "show"], None, timeout).await {
        Ok(out) => parse_addresses(&out.stdout),
        Err(_) => Vec::new(),
    };
    names
        .into_iter()
        .map(|name| Bridge {
            networks: addrs
                .iter()
                .filter(|(dev, _, _)| *dev == name)
                .map(|(_, a, l)| (*a, *l))
                .collect(),
            name,
        })
        .collect()
}

/// Bridge netfilter for targets reached through a Linux bridge.
///
/// Navigator SNATs every forwarded flow to the proxy's own address on the
/// egress interface, so replies are addressed to the proxy and are routed,
/// not bridged past it: its forwards work with bridge netfilter off. The
/// setting still decides whether the host's firewall (security groups, other
/// NAT) sees bridged traffic, which is what made the original deployment
/// depend on tcpdump; it is reported as a warning with the exact fix.
pub async fn bridge_netfilter(host: &Host, targets: &[IpAddr], fix: bool) -> Vec<Finding> {
    let bridges = bridges(host).await;
    let mut findings = Vec::new();
    for (family, key, is_family) in [
        (
            "IPv4",
            "net.bridge.bridge-nf-call-iptables",
            IpAddr::is_ipv4 as fn(&IpAddr) -> bool,
        ),
        (
            "IPv6",
            "net.bridge.bridge-nf-call-ip6tables",
            IpAddr::is_ipv6 as fn(&IpAddr) -> bool,
        ),
    ] {
        let via: Vec<&str> = bridges
            .iter()
            .filter(|b| targets.iter().any(|t| is_family(t) && b.reaches(*t)))
            .map(|b| b.name.as_str())
            .collect();
        if via.is_empty() {
            continue;
        }
        let current = host.sysctl(key).await;
        if current.as_deref() == Some("1") {
            continue;
        }
        if fix && current.is_some() && host.set_sysctl(key, "1").await.is_ok() {
            tracing::warn!(
                "{key} was off; turned it on because [agent] fix_sysctls = true (targets behind bridge {})",
                via.join(", ")
            );
            continue;
        }
        let problem = match current {
            None => format!(
                "{family} targets are reached through Linux bridge {} but br_netfilter is not loaded, so bridged {family} traffic bypasses netfilter (forwards still work: Navigator SNATs replies back to the proxy)",
                via.join(", ")
            ),
            Some(v) => format!(
                "{family} targets are reached through Linux bridge {} but {key} = {v}, so bridged {family} traffic bypasses netfilter (forwards still work: Navigator SNATs replies back to the proxy)",
                via.join(", ")
            ),
        };
        findings.push(Finding {
            severity: Severity::Warning,
            scope: if family == "IPv4" {
                Scope::Ipv4
            } else {
                Scope::Ipv6
            },
            problem,
            fix: format!(
                "run `modprobe br_netfilter && sysctl -w {key}=1` and persist both (/etc/modules-load.d/br_netfilter.conf, /etc/sysctl.d/90-navigator.conf), or set [agent] fix_sysctls = true"
            ),
        });
    }
    findings
}

/// Checks that the port pool stays out of Linux's ephemeral port range
/// (`net.ipv4.ip_local_port_range`, which IPv6 uses too), apart from ports
/// reserved from it (`net.ipv4.ip_local_reserved_ports`).
///
/// The kernel lends those ports to outgoing connections, the relay's and
/// socat's own among them, so a forward on one fails to listen whenever it is
/// lent out, and a kernel DNAT rule on one shadows a local connection's
/// replies. A warning: the rest of the pool works.
pub async fn port_pool(host: &Host, pool: PortRange) -> Vec<Finding> {
    let ephemeral = host.sysctl("net.ipv4.ip_local_port_range").await;
    let reserved = host.sysctl("net.ipv4.ip_local_reserved_ports").await;
    port_pool_findings(pool, ephemeral.as_deref(), reserved.as_deref())
}

/// [`port_pool`] on the two sysctls' text (`None`: not readable, then
/// nothing is said).
pub fn port_pool_findings(
    pool: PortRange,
    ephemeral: Option<&str>,
    reserved: Option<&str>,
) -> Vec<Finding> {
    let Some(ephemeral) = ephemeral.and_then(parse_local_port_range) else {
        return Vec::new();
    };
    let reserved = reserved.map(parse_reserved_ports).unwrap_or_default();
    let Some((exposed, first, last)) = exposed_ports(pool, ephemeral, &reserved) else {
        return Vec::new();
    };
    let key = "net.ipv4.ip_local_port_range";
    let mut fixes = vec![
        "move the pool below or above it ([agent] port_range; the default 20000-29999 is below Linux's default 32768-60999)".to_owned(),
        format!(
            "reserve the pool with `sysctl -w net.ipv4.ip_local_reserved_ports={}-{}` (persist it in /etc/sysctl.d/90-navigator.conf)",
            pool.first(),
            pool.last()
        ),
    ];
    if let Some((low, high)) = shrunk_ephemeral_range(pool, ephemeral) {
        fixes.push(format!(
            "shrink the ephemeral range with `sysctl -w {key}=\"{low} {high}\"` (persist it too)"
        ));
    }
    vec![Finding {
        severity: Severity::Warning,
        scope: Scope::All,
        problem: format!(
            "{exposed} ports of the port pool {pool} ({first}-{last}) are in Linux's ephemeral port range {ephemeral} ({key}), which outgoing connections take their ports from: a forward on such a port fails whenever the kernel has lent it out"
        ),
        fix: fixes.join("; or "),
    }]
}

/// `net.ipv4.ip_local_port_range` as a range: two numbers, tab-separated.
pub fn parse_local_port_range(text: &str) -> Option<PortRange> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    match (numbers.next(), numbers.next(), numbers.next()) {
        (Some(Ok(first)), Some(Ok(last)), None) => PortRange::new(first, last).ok(),
        _ => None,
    }
}

/// `net.ipv4.ip_local_reserved_ports`: a comma-separated list of ports and
/// FIRST-LAST ranges, empty when none; what does not parse is skipped.
pub fn parse_reserved_ports(text: &str) -> Vec<PortRange> {
    text.split(',')
        .filter_map(|item| {
            let item = item.trim();
            match item.split_once('-') {
                Some((first, last)) => {
                    PortRange::new(first.trim().parse().ok()?, last.trim().parse().ok()?).ok()
                }
                None => item.parse().ok().map(PortRange::single),
            }
        })
        .collect()
}

/// The pool's ports the kernel may lend out: how many, and the first and
/// last of them. `None` when there are none.
pub fn exposed_ports(
    pool: PortRange,
    ephemeral: PortRange,
    reserved: &[PortRange],
) -> Option<(u32, u16, u16)> {
    let first = pool.first().max(ephemeral.first());
    let last = pool.last().min(ephemeral.last());
    if first > last {
        return None;
    }
    // At most 65535 ports, once at start-up: counting them one by one keeps
    // overlapping reserved ranges simple.
    let mut exposed = (first..=last).filter(|p| !reserved.iter().any(|r| r.contains(*p)));
    let low = exposed.next()?;
    let (count, high) = exposed.fold((1, low), |(n, _), p| (n + 1, p));
    Some((count, low, high))
}

/// An ephemeral range that no longer meets the pool, keeping the larger side
/// of it; `None` when the pool covers it. Linux prefers the two ends to
/// differ in parity (it logs a warning otherwise), so the end next to the
/// pool moves one further from it when they would not.
fn shrunk_ephemeral_range(pool: PortRange, ephemeral: PortRange) -> Option<(u16, u16)> {
    let same_parity = |low: u16, high: u16| low % 2 == high % 2 && low < high;
    let above = (pool.last() < ephemeral.last()).then(|| {
        let low = pool.last() + 1;
        let high = ephemeral.last();
        (if same_parity(low, high) { low + 1 } else { low }, high)
    });
    let below = (pool.first() > ephemeral.first()).then(|| {
        let low = ephemeral.first();
        let high = pool.first() - 1;
        (
            low,
            if same_parity(low, high) {
                high - 1
            } else {
                high
            },
        )
    });
    let size = |(low, high): (u16, u16)| high - low;
    match (above, below) {
        (Some(a), Some(b)) => Some(if size(a) >= size(b) { a } else { b }),
        (one, other) => one.or(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_overlap_is_counted_less_what_is_reserved() {
        let range = |a, b| PortRange::new(a, b).unwrap();
        assert_eq!(
            parse_local_port_range("32768\t60999\n"),
            Some(range(32768, 60999))
        );
        assert_eq!(
            parse_local_port_range("1024 65535"),
            Some(range(1024, 65535))
        );
        assert_eq!(parse_local_port_range("60999 32768"), None);
        assert_eq!(parse_local_port_range("32768"), None);
        assert_eq!(parse_reserved_ports(""), vec![]);
        assert_eq!(
            parse_reserved_ports("8080,32768-33000, 40000"),
            vec![range(8080, 8080), range(32768, 33000), range(40000, 40000)]
        );
        let linux = range(32768, 60999);
        // The old default: 32768-40000 exposed.
        assert_eq!(
            exposed_ports(range(20000, 40000), linux, &[]),
            Some((7233, 32768, 40000))
        );
        // The new default and a pool above the range: clear.
        assert_eq!(exposed_ports(range(20000, 29999), linux, &[]), None);
        assert_eq!(exposed_ports(range(61000, 62000), linux, &[]), None);
        assert_eq!(exposed_ports(range(20000, 32767), linux, &[]), None);
        // Reserved ports are not lent out, overlapping reservations included.
        assert_eq!(
            exposed_ports(
                range(20000, 40000),
                linux,
                &[range(32768, 35000), range(34000, 40000)]
            ),
            None
        );
        assert_eq!(
            exposed_ports(range(20000, 40000), linux, &[range(32768, 39998)]),
            Some((2, 39999, 40000))
        );
    }

    #[test]
    fn an_overlapping_pool_is_a_warning_with_the_fixes() {
        let pool = PortRange::new(20000, 40000).unwrap();
        let findings = port_pool_findings(pool, Some("32768\t60999"), Some(""));
        assert_eq!(findings.len(), 1, "{findings:?}");
        let finding = &findings[0];
        assert_eq!(finding.severity, Severity::Warning);
        assert_eq!(finding.scope, Scope::All);
        let text = finding.to_string();
        for needle in [
            "7233 ports of the port pool 20000-40000 (32768-40000) are in Linux's ephemeral port range 32768-60999",
            "[agent] port_range",
            "sysctl -w net.ipv4.ip_local_reserved_ports=20000-40000",
            // 40001 and 60999 are both odd: the start moves up one.
            "sysctl -w net.ipv4.ip_local_port_range=\"40002 60999\"",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
        // Reserved, unreadable or clear: nothing to say.
        assert!(port_pool_findings(pool, Some("32768 60999"), Some("20000-40000")).is_empty());
        assert!(port_pool_findings(pool, None, None).is_empty());
        assert!(port_pool_findings(pool, Some("garbage"), None).is_empty());
        let below = PortRange::new(20000, 29999).unwrap();
        assert!(port_pool_findings(below, Some("32768 60999"), Some("")).is_empty());
        // A pool at the top keeps the ephemeral range's lower part.
        let top = port_pool_findings(
            PortRange::new(50000, 65535).unwrap(),
            Some("32768 60999"),
            None,
        );
        assert!(
            top[0].fix.contains("ip_local_port_range=\"32768 49999\""),
            "{}",
            top[0].fix
        );
    }

    #[tokio::test]
    async fn this_host_is_read() {
        // The whole port space overlaps any ephemeral range this host has,
        // unless it reserved all of it.
        let host = Host::local();
        if host.sysctl("net.ipv4.ip_local_port_range").await.is_none() {
            println!("skipped: no /proc/sys/net/ipv4/ip_local_port_range here");
            return;
        }
        let everything = PortRange::new(1, 65535).unwrap();
        let reserved = host.sysctl("net.ipv4.ip_local_reserved_ports").await;
        if reserved.as_deref().is_some_and(|r| !r.is_empty()) {
            return;
        }
        assert_eq!(port_pool(&host, everything).await.len(), 1);
    }

    #[test]
    fn prefixes_and_address_lines() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_prefix(ip("10.92.0.1"), 24, ip("10.92.0.200")));
        assert!(!in_prefix(ip("10.92.0.1"), 24, ip("10.92.1.2")));
        assert!(in_prefix(ip("fd92::1"), 64, ip("fd92::2")));
        assert!(!in_prefix(ip("fd92::1"), 64, ip("10.92.0.2")));
        assert!(in_prefix(ip("0.0.0.0"), 0, ip("1.2.3.4")));
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                    5: br100    inet6 fd92::1/64 scope global \\       valid_lft forever\n";
        assert_eq!(
            parse_addresses(text),
            vec![
                ("lo".to_owned(), ip("127.0.0.1"), 8),
                ("br100".to_owned(), ip("fd92::1"), 64)
            ]
        );
    }

    #[test]
    fn blocking_reasons_follow_scope() {
        let spec = |listen: &str| ForwardSpec {
            id: navigator_core::ForwardId::new_random(),
            protocol: navigator_core::Protocol::Tcp,
            listen: listen.parse().unwrap(),
            target: "10.0.0.1:1".parse().unwrap(),
            ports: 1,
            one_target_port: false,
            controls: Default::default(),
        };
        let findings = vec![Finding {
            severity: Severity::Blocking,
            scope: Scope::Ipv6,
            problem: "IPv6 forwarding is off".into(),
            fix: "sysctl".into(),
        }];
        assert_eq!(blocking_reason(&findings, &spec("10.0.0.2:5")), None);
        assert_eq!(
            blocking_reason(&findings, &spec("[fd00::1]:5")).as_deref(),
            Some("IPv6 forwarding is off; fix: sysctl")
        );
    }
}
