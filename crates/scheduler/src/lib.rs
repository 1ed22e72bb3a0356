//! Placement: which proxy carries a new (or rescheduled) forward.
//!
//! Pure functions over a snapshot of the proxies, so that "why did it land
//! there?" (and "why could it land nowhere?") is answered by a table in a
//! test. The server snapshots; this crate filters and chooses.
//!
//! Filters, in order, each naming what it rejected:
//! 1. the proxy is up (heartbeat within `agent_down_time`);
//! 2. the controls: a forward with non-default controls (`allowed_cidrs`,
//!    `max_connections`, `proxy_protocol`) needs an agent that announced it
//!    enforces them (older agents would ignore them) and a backend that can
//!    (`navigator_core::unsupported`, e.g. the PROXY protocol is the
//!    relay's only);
//! 3. the address: a requested `external_address` must be one of the proxy's;
//!    otherwise the proxy needs an external address of the target's family,
//!    unless its data plane translates between families (the relay and socat
//!    do; nft/iptables DNAT cannot turn IPv4 into IPv6). Among the proxies
//!    left, those with an address of the target's family are preferred;
//! 4. free ports: requested external ports (every port of a range) must be
//!    inside its pool, and its pool must not be full.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use navigator_core::{Controls, Protocol, unsupported};

/// `[scheduler] strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Each placement takes the next proxy in host order.
    #[default]
    RoundRobin,
    /// Stable by key (the instance, else the project): the same key lands on
    /// the same proxy while the set of proxies does not change.
    Hash,
    /// The proxy with the smallest share of its port pool in use.
    LeastLoaded,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round_robin" => Ok(Strategy::RoundRobin),
            "hash" => Ok(Strategy::Hash),
            "least_loaded" => Ok(Strategy::LeastLoaded),
            _ => Err("expected round_robin, hash or least_loaded".into()),
        }
    }
}

/// A registered proxy as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub external_addresses: Vec<IpAddr>,
    pub forward_count: u64,
    /// Forwards its pool can hold (ports × protocols × addresses).
    pub capacity: u64,
    /// Its pool of external ports.
    pub pool: RangeInclusive<u16>,
    /// Whether its heartbeat is recent.
    pub up: bool,
    /// Whether its data plane can listen in one address family and forward
    /// to the other (relay, socat), unlike kernel NAT.
    pub cross_family: bool,
    /// Its `[agent] backend` (`relay`, `nft`, `iptables`, `socat`).
    pub backend: String,
    /// Whether its agent announced that it enforces per-forward controls.
    pub enforces_controls: bool,
}

/// What is being placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The target, whose family the proxy should be able to listen in.
    pub target: IpAddr,
    /// An external address the caller asked for.
    pub external_address: Option<IpAddr>,
    /// External ports the caller asked for: one port, or a range's first
    /// and last.
    pub external_ports: Option<RangeInclusive<u16>>,
    /// Key for [`Strategy::Hash`].
    pub affinity_key: &'a str,
    /// A counter that increases with every placement, for round robin.
    pub sequence: u64,
    pub protocol: Protocol,
    /// How many external ports the forward holds (1 for a single port).
    pub ports: u16,
    /// The forward's controls, which the proxy must be able to enforce.
    pub controls: &'a Controls,
}

/// Why a proxy cannot carry a forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    Down,
    LacksAddress(IpAddr),
    NoAddressOfFamily {
        ipv6: bool,
    },
    PortOutsidePool {
        port: u16,
        pool: RangeInclusive<u16>,
    },
    PoolFull {
        pool: RangeInclusive<u16>,
    },
    /// Its agent is older than per-forward controls.
    ControlsNotAnnounced,
    /// Its backend cannot enforce a control: the field and why.
    CannotEnforce {
        field: &'static str,
        reason: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Down => write!(f, "is down"),
            Rejection::LacksAddress(address) => write!(f, "does not have address {address}"),
            Rejection::NoAddressOfFamily { ipv6 } => write!(
                f,
                "has no {} external address and its data plane cannot translate between families",
                if *ipv6 { "IPv6" } else { "IPv4" }
            ),
            Rejection::PortOutsidePool { port, pool } => write!(
                f,
                "has port range {}-{}, which does not contain {port}",
                pool.start(),
                pool.end()
            ),
            Rejection::PoolFull { pool } => {
                write!(f, "has no free port in {}-{}", pool.start(), pool.end())
            }
            Rejection::ControlsNotAnnounced => write!(
                f,
                "runs an agent that does not enforce allowed_cidrs, max_connections or proxy_protocol (upgrade it)"
            ),
            Rejection::CannotEnforce { field, reason } => {
                write!(f, "cannot enforce {field}: {reason}")
            }
        }
    }
}

/// No proxy can carry the forward; says why for each one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoProxy {
    pub rejected: Vec<(String, Rejection)>,
}

impl NoProxy {
    /// True when the only obstacle is that no proxy is up (or none is
    /// registered): a transient condition (503) rather than a request that
    /// no proxy can satisfy (409).
    pub fn is_transient(&self) -> bool {
        self.rejected.iter().all(|(_, r)| *r == Rejection::Down)
    }
}

impl fmt::Display for NoProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rejected.is_empty() {
            return write!(f, "no proxy agent has registered");
        }
        write!(f, "no proxy can carry this forward: ")?;
        for (index, (host, why)) in self.rejected.iter().enumerate() {
            if index > 0 {
                write!(f, "; ")?;
            }
            write!(f, "proxy {host} {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NoProxy {}

/// Why `candidate` cannot carry `request`, if it cannot.
pub fn reject(candidate: &Candidate, request: &Request<'_>) -> Option<Rejection> {
    if !candidate.up {
        return Some(Rejection::Down);
    }
    if let Some(why) =
        controls_rejection(candidate, request.protocol, request.ports, request.controls)
    {
        return Some(why);
    }
    match request.external_address {
        Some(address) if !candidate.external_addresses.contains(&address) => {
            return Some(Rejection::LacksAddress(address));
        }
        Some(_) => {}
        None if !candidate.cross_family && !has_family(candidate, request.target) => {
            return Some(Rejection::NoAddressOfFamily {
                ipv6: request.target.is_ipv6(),
            });
        }
        None if candidate.external_addresses.is_empty() => {
            return Some(Rejection::NoAddressOfFamily {
                ipv6: request.target.is_ipv6(),
            });
        }
        None => {}
    }
    if let Some(ports) = &request.external_ports
        && let Some(port) = [*ports.start(), *ports.end()]
            .into_iter()
            .find(|port| !candidate.pool.contains(port))
    {
        return Some(Rejection::PortOutsidePool {
            port,
            pool: candidate.pool.clone(),
        });
    }
    if candidate.forward_count >= candidate.capacity {
        return Some(Rejection::PoolFull {
            pool: candidate.pool.clone(),
        });
    }
    None
}

/// Why `candidate` cannot carry a forward of `protocol` with `controls`, if
/// it cannot. Also used for a proxy named by an admin and for updates,
/// which the scheduler does not place.
pub fn controls_rejection(
    candidate: &Candidate,
    protocol: Protocol,
    ports: u16,
    controls: &Controls,
) -> Option<Rejection> {
    if let Some(no) = unsupported(&candidate.backend, protocol, ports, controls) {
        return Some(Rejection::CannotEnforce {
            field: no.field,
            reason: no.reason,
        });
    }
    if !controls.is_default() && !candidate.enforces_controls {
        return Some(Rejection::ControlsNotAnnounced);
    }
    None
}

fn has_family(candidate: &Candidate, target: IpAddr) -> bool {
    candidate
        .external_addresses
        .iter()
        .any(|a| a.is_ipv4() == target.is_ipv4())
}

/// Chooses a proxy, or says why none can carry the forward.
pub fn place<'c>(
    strategy: Strategy,
    candidates: &'c [Candidate],
    request: &Request<'_>,
) -> Result<&'c Candidate, NoProxy> {
    let mut rejected = Vec::new();
    let mut usable: Vec<&Candidate> = Vec::new();
    for candidate in candidates {
        match reject(candidate, request) {
            Some(why) => rejected.push((candidate.host.clone(), why)),
            None => usable.push(candidate),
        }
    }
    if usable.is_empty() {
        rejected.sort_by(|a, b| a.0.cmp(&b.0));
        return Err(NoProxy { rejected });
    }
    // Listening in the target's family avoids a translation; prefer it.
    if usable.iter().any(|c| has_family(c, request.target)) {
        usable.retain(|c| has_family(c, request.target));
    }
    usable.sort_by(|a, b| a.host.cmp(&b.host));
    let n = usable.len() as u64;
    let index = match strategy {
        Strategy::RoundRobin => request.sequence % n,
        Strategy::Hash => fnv1a(request.affinity_key.as_bytes()) % n,
        Strategy::LeastLoaded => {
            return usable
                .into_iter()
                .min_by(|a, b| {
                    // Compare count/capacity without floats: a.count * b.cap vs b.count * a.cap.
                    let left = u128::from(a.forward_count) * u128::from(b.capacity);
                    let right = u128::from(b.forward_count) * u128::from(a.capacity);
                    left.cmp(&right).then_with(|| a.host.cmp(&b.host))
                })
                .ok_or(NoProxy { rejected });
        }
    };
    usize::try_from(index)
        .ok()
        .and_then(|i| usable.get(i).copied())
        .ok_or(NoProxy { rejected })
}

/// FNV-1a: tiny, stable across releases and platforms (unlike std's hasher),
/// which is what a placement that must not move on upgrade needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(host: &str, addresses: &[&str], count: u64, capacity: u64) -> Candidate {
        Candidate {
            host: host.into(),
            external_addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            forward_count: count,
            capacity,
            pool: 20000..=20009,
            up: true,
            cross_family: true,
            backend: "relay".into(),
            enforces_controls: true,
        }
    }

    static NO_CONTROLS: std::sync::LazyLock<Controls> = std::sync::LazyLock::new(Controls::default);

    fn request(target: &str, key: &str, sequence: u64) -> Request<'static> {
        Request {
            target: target.parse().unwrap(),
            external_address: None,
            external_ports: None,
            affinity_key: Box::leak(key.to_owned().into_boxed_str()),
            sequence,
            protocol: Protocol::Tcp,
            ports: 1,
            controls: &NO_CONTROLS,
        }
    }

    #[test]
    fn round_robin_cycles_in_host_order() {
        let proxies = [
            candidate("b", &["192.0.2.2"], 0, 10),
            candidate("a", &["192.0.2.1"], 0, 10),
        ];
        let hosts: Vec<_> = (0..4)
            .map(|i| {
                place(Strategy::RoundRobin, &proxies, &request("10.0.0.1", "p", i))
                    .unwrap()
                    .host
                    .clone()
            })
            .collect();
        assert_eq!(hosts, ["a", "b", "a", "b"]);
    }

    #[test]
    fn hash_is_stable_per_key() {
        let proxies = [
            candidate("a", &["192.0.2.1"], 0, 10),
            candidate("b", &["192.0.2.2"], 0, 10),
            candidate("c", &["192.0.2.3"], 0, 10),
        ];
        for key in ["vm-1", "vm-2", "project-x"] {
            let first = place(Strategy::Hash, &proxies, &request("10.0.0.1", key, 0)).unwrap();
            let again = place(Strategy::Hash, &proxies, &request("10.0.0.1", key, 99)).unwrap();
            assert_eq!(first, again, "{key}");
        }
    }

    #[test]
    fn least_loaded_compares_shares_of_the_pool() {
        let proxies = [
            candidate("a", &["192.0.2.1"], 5, 10),
            candidate("b", &["192.0.2.2"], 6, 100),
        ];
        assert_eq!(
            place(
                Strategy::LeastLoaded,
                &proxies,
                &request("10.0.0.1", "p", 0)
            )
            .unwrap()
            .host,
            "b"
        );
    }

    #[test]
    fn filters_full_proxies_and_prefers_the_target_family() {
        let proxies = [
            candidate("full", &["192.0.2.1"], 10, 10),
            candidate("v6", &["2001:db8::1"], 0, 10),
            candidate("v4", &["192.0.2.2"], 9, 10),
        ];
        let placed = |target: &str| {
            place(Strategy::LeastLoaded, &proxies, &request(target, "p", 0))
                .unwrap()
                .host
                .clone()
        };
        assert_eq!(placed("10.0.0.1"), "v4");
        assert_eq!(placed("2001:db8::5"), "v6");
        let none = place(
            Strategy::RoundRobin,
            &proxies[..1],
            &request("10.0.0.1", "p", 0),
        )
        .unwrap_err();
        assert!(!none.is_transient());
        assert_eq!(
            none.to_string(),
            "no proxy can carry this forward: proxy full has no free port in 20000-20009"
        );
    }

    #[test]
    fn kernel_nat_proxies_need_the_target_family() {
        let mut v4_only = candidate("nft", &["192.0.2.1"], 0, 10);
        v4_only.cross_family = false;
        let err = place(
            Strategy::RoundRobin,
            std::slice::from_ref(&v4_only),
            &request("2001:db8::5", "p", 0),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no proxy can carry this forward: proxy nft has no IPv6 external address \
             and its data plane cannot translate between families"
        );
        // The relay can listen on IPv4 for an IPv6 target.
        v4_only.cross_family = true;
        assert!(
            place(
                Strategy::RoundRobin,
                &[v4_only],
                &request("2001:db8::5", "p", 0)
            )
            .is_ok()
        );
    }

    #[test]
    fn down_proxies_and_requested_address_and_port_filter_and_explain() {
        let mut down = candidate("a", &["192.0.2.1"], 0, 10);
        down.up = false;
        let up = candidate("b", &["192.0.2.2"], 0, 10);
        let proxies = [down.clone(), up];
        let mut wanted = request("10.0.0.1", "p", 0);
        assert_eq!(
            place(Strategy::RoundRobin, &proxies, &wanted).unwrap().host,
            "b"
        );
        wanted.external_address = Some("192.0.2.1".parse().unwrap());
        let err = place(Strategy::RoundRobin, &proxies, &wanted).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no proxy can carry this forward: proxy a is down; proxy b does not have address 192.0.2.1"
        );
        wanted.external_address = None;
        wanted.external_ports = Some(30000..=30000);
        let err = place(Strategy::RoundRobin, &proxies, &wanted).unwrap_err();
        assert!(
            err.to_string()
                .contains("proxy b has port range 20000-20009, which does not contain 30000"),
            "{err}"
        );
        // Every port of a range must be in the pool, not only its first.
        wanted.external_ports = Some(20005..=20014);
        let err = place(Strategy::RoundRobin, &proxies, &wanted).unwrap_err();
        assert!(
            err.to_string()
                .contains("proxy b has port range 20000-20009, which does not contain 20014"),
            "{err}"
        );
        let only_down =
            place(Strategy::RoundRobin, &[down], &request("10.0.0.1", "p", 0)).unwrap_err();
        assert!(only_down.is_transient());
        let nobody = place(Strategy::RoundRobin, &[], &request("10.0.0.1", "p", 0)).unwrap_err();
        assert!(nobody.is_transient());
        assert_eq!(nobody.to_string(), "no proxy agent has registered");
    }

    #[test]
    fn controls_need_an_announcing_agent_and_a_capable_backend() {
        use navigator_core::{ProxyProtocol, parse_cidr};
        let mut old = candidate("old", &["192.0.2.1"], 0, 10);
        old.enforces_controls = false;
        let mut nft = candidate("nft", &["192.0.2.2"], 0, 10);
        nft.backend = "nft".into();
        let relay = candidate("relay", &["192.0.2.3"], 0, 10);
        let proxies = [old.clone(), nft.clone(), relay];
        let allowlist = Controls::new(
            vec![parse_cidr("198.51.100.0/24").unwrap()],
            None,
            ProxyProtocol::None,
        );
        let proxy_v2 = Controls::new(vec![], None, ProxyProtocol::V2);
        let with = |controls: &'static Controls, protocol: Protocol| Request {
            ports: 1,
            controls,
            protocol,
            ..request("10.0.0.1", "p", 0)
        };
        let allowlist: &'static Controls = Box::leak(Box::new(allowlist));
        let proxy_v2: &'static Controls = Box::leak(Box::new(proxy_v2));
        // Without controls, an old agent is as good as any.
        assert_eq!(
            place(
                Strategy::RoundRobin,
                std::slice::from_ref(&old),
                &request("10.0.0.1", "p", 0)
            )
            .unwrap()
            .host,
            "old"
        );
        // An allowlist: any announcing agent (every backend filters sources).
        let hosts: Vec<_> = (0..4)
            .map(|i| {
                let r = Request {
                    sequence: i,
                    ..with(allowlist, Protocol::Tcp)
                };
                place(Strategy::RoundRobin, &proxies, &r)
                    .unwrap()
                    .host
                    .clone()
            })
            .collect();
        assert_eq!(hosts, ["nft", "relay", "nft", "relay"]);
        // The PROXY protocol: the relay only, whatever the sequence.
        for i in 0..3 {
            let r = Request {
                sequence: i,
                ..with(proxy_v2, Protocol::Tcp)
            };
            assert_eq!(
                place(Strategy::RoundRobin, &proxies, &r).unwrap().host,
                "relay"
            );
        }
        let err = place(
            Strategy::RoundRobin,
            &[old, nft],
            &with(proxy_v2, Protocol::Tcp),
        )
        .unwrap_err();
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("proxy nft cannot enforce proxy_protocol: the nft backend does not support the PROXY protocol")
                && text.contains("proxy old runs an agent that does not enforce"),
            "{text}"
        );
        // On UDP, nobody.
        let err = place(
            Strategy::RoundRobin,
            &proxies,
            &with(proxy_v2, Protocol::Udp),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("proxy relay cannot enforce proxy_protocol: the PROXY protocol is for TCP forwards only"),
            "{err}"
        );
    }
}
