//! Per-forward traffic controls (who may connect, how many at once, whether the
//! backend learns the client's address) and the usage a data plane counts.
//!
//! These are the tenant-safety fields of a forward. They travel with the
//! [`ForwardSpec`](crate::ForwardSpec) to every backend, and each backend
//! either enforces them or reports the forward as failed: a control is never
//! accepted and silently ignored. [`unsupported`] is the one table of what each
//! backend can enforce, used by the server to refuse a request with `400`
//! before it is placed, and by tests to keep the documentation honest.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::{ParseError, Protocol};

/// HAProxy's PROXY protocol header the relay writes to the target before any
/// client byte, so that the service behind the forward sees the client's
/// address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    /// No header: the target sees the proxy's address (relay, socat) or the
    /// client's own (kernel backends, which keep the source address).
    #[default]
    None,
    /// The human-readable header (`PROXY TCP4 …\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::None => "none",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyProtocol {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [ProxyProtocol::None, ProxyProtocol::V1, ProxyProtocol::V2]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParseError::new("proxy_protocol", s, "one of none, v1, v2"))
    }
}

/// Why a CIDR of `allowed_cidrs` is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error(
        "'{0}' is not a CIDR: expected an IPv4 or IPv6 network such as 192.0.2.0/24 or 2001:db8::/32"
    )]
    Malformed(String),
    #[error("'{given}' has host bits set: did you mean {network}?")]
    HostBits { given: String, network: String },
}

/// Parses one entry of `allowed_cidrs`: `address/prefix` with no host bits
/// set (Neutron refuses `10.0.0.1/8` the same way), or a bare address, which
/// means that one host (`/32` or `/128`). IPv4-mapped IPv6 networks are
/// refused as malformed: clients of an IPv6 listener that come over IPv4 are
/// matched by their IPv4 address.
pub fn parse_cidr(s: &str) -> Result<IpNet, CidrError> {
    let malformed = || CidrError::Malformed(s.to_owned());
    // std's address parser, not ipnet's: it refuses IPv4 octets with leading
    // zeros (`010.0.0.0`), which other tools read as octal.
    let (address, prefix) = match s.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (s, None),
    };
    let ip: IpAddr = address.parse().map_err(|_| malformed())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => {
            let plain = !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'));
            match p.parse::<u8>() {
                Ok(n) if plain && n <= max => n,
                _ => return Err(malformed()),
            }
        }
    };
    let net = IpNet::new(ip, prefix).map_err(|_| malformed())?;
    // A mapped network would match nothing (clients are matched as IPv4).
    if let IpNet::V6(v6) = net
        && v6.addr().to_ipv4_mapped().is_some()
    {
        return Err(malformed());
    }
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            given: s.to_owned(),
            network: net.trunc().to_string(),
        });
    }
    Ok(net)
}

/// The controls of one forward, as every backend receives them.
///
/// Cheap to clone: the allowlist is shared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Controls {
    /// Source networks allowed to connect; empty means everyone. Sorted and
    /// without duplicates (see [`Controls::new`]).
    pub allowed_cidrs: Arc<[IpNet]>,
    /// Concurrent TCP connections (or UDP sessions) the forward carries at
    /// most, over all its ports; `None` is no limit of the forward's own (the
    /// backend's process-wide limits still apply).
    pub max_connections: Option<u32>,
    /// The PROXY protocol header written to the target (relay, TCP only).
    pub proxy_protocol: ProxyProtocol,
}

impl Controls {
    /// Controls with the allowlist in its canonical order (sorted, without
    /// duplicates), so that equal sets compare equal.
    pub fn new(
        mut allowed_cidrs: Vec<IpNet>,
        max_connections: Option<u32>,
        proxy_protocol: ProxyProtocol,
    ) -> Controls {
        allowed_cidrs.sort();
        allowed_cidrs.dedup();
        Controls {
            allowed_cidrs: allowed_cidrs.into(),
            max_connections,
            proxy_protocol,
        }
    }

    /// Whether `client` may connect. An IPv4 client seen as an IPv4-mapped
    /// IPv6 address (an IPv6 listener's dual-stack socket) is matched as IPv4.
    pub fn allows(&self, client: IpAddr) -> bool {
        if self.allowed_cidrs.is_empty() {
            return true;
        }
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        self.allowed_cidrs.iter().any(|net| net.contains(&client))
    }

    /// Whether every control is at its default (nothing to enforce).
    pub fn is_default(&self) -> bool {
        self.allowed_cidrs.is_empty()
            && self.max_connections.is_none()
            && self.proxy_protocol == ProxyProtocol::None
    }
}

/// What a backend cannot do with a forward's controls: the field and a
/// sentence for the `400` (or the forward's `status_reason`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub field: &'static str,
    pub reason: String,
}

/// Whether `backend` (the `[agent] backend` name) can enforce `controls` on a
/// forward of `protocol`; `None` when it can. Unknown backends can enforce
/// nothing but the defaults.
///
/// `proxy_protocol` on UDP is refused for every backend: the PROXY protocol
/// is a stream header.
pub fn unsupported(
    backend: &str,
    protocol: Protocol,
    ports: u16,
    controls: &Controls,
) -> Option<Unsupported> {
    if controls.proxy_protocol != ProxyProtocol::None {
        if protocol != Protocol::Tcp {
            return Some(Unsupported {
                field: "proxy_protocol",
                reason: "the PROXY protocol is for TCP forwards only".to_owned(),
            });
        }
        if backend != "relay" {
            let why = match backend {
                "nft" | "iptables" => {
                    "kernel NAT keeps the client's address as the source, so the target sees it without a header"
                }
                _ => "it cannot write the header",
            };
            return Some(Unsupported {
                field: "proxy_protocol",
                reason: format!("the {backend} backend does not support the PROXY protocol: {why}"),
            });
        }
    }
    // socat's `range=` takes one network (its libwrap tables would take
    // more, but need files per forward and libwrap in the build).
    if backend == "socat" && controls.allowed_cidrs.len() > 1 {
        return Some(Unsupported {
            field: "allowed_cidrs",
            reason: format!(
                "the socat backend allows one network per forward (socat's range= option), not {}; use the relay, nft or iptables backend for more",
                controls.allowed_cidrs.len()
            ),
        });
    }
    // One socat per port of a range: no limit shared between them.
    if backend == "socat" && controls.max_connections.is_some() && ports > 1 {
        return Some(Unsupported {
            field: "max_connections",
            reason: "the socat backend runs one socat per port of a range and cannot share one limit between them; use the relay, nft or iptables backend".to_owned(),
        });
    }
    let known = matches!(backend, "relay" | "nft" | "iptables" | "socat");
    if !known {
        if !controls.allowed_cidrs.is_empty() {
            return Some(Unsupported {
                field: "allowed_cidrs",
                reason: format!("the {backend} backend cannot filter sources"),
            });
        }
        if controls.max_connections.is_some() {
            return Some(Unsupported {
                field: "max_connections",
                reason: format!("the {backend} backend cannot limit connections"),
            });
        }
    }
    None
}

/// What a data plane counted for one forward since it started carrying it
/// (counters restart at zero when the agent or the host restarts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardUsage {
    /// Bytes from clients towards the target (payload for the relay and
    /// socat; IP packet bytes for the kernel backends).
    pub bytes_in: u64,
    /// Bytes from the target back to clients.
    pub bytes_out: u64,
    /// Connections (TCP) or sessions (UDP) ever opened.
    pub connections_total: u64,
    /// Connections or sessions open now.
    pub connections_active: u64,
    /// When the last connection or session was opened, in seconds since the
    /// Unix epoch (UTC); `None` if none was.
    pub last_connection_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_with_host_bits_named() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_cidr("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            parse_cidr("10.0.0.1/8"),
            Err(CidrError::HostBits {
                given: "10.0.0.1/8".into(),
                network: "10.0.0.0/8".into()
            })
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "010.0.0.0/8",
            "::ffff:10.0.0.0/104",
            "a/8",
            " 10.0.0.0/8",
        ] {
            assert!(
                matches!(parse_cidr(bad), Err(CidrError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn allowlist_matches_mapped_clients_and_empty_allows_all() {
        let c = Controls::new(
            vec![
                parse_cidr("192.0.2.0/24").unwrap(),
                parse_cidr("2001:db8::/32").unwrap(),
            ],
            None,
            ProxyProtocol::None,
        );
        assert!(c.allows("192.0.2.9".parse().unwrap()));
        assert!(c.allows("::ffff:192.0.2.9".parse().unwrap()));
        assert!(c.allows("2001:db8::1".parse().unwrap()));
        assert!(!c.allows("198.51.100.1".parse().unwrap()));
        assert!(Controls::default().allows("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn proxy_protocol_is_relay_and_tcp_only() {
        let pp = Controls {
            proxy_protocol: ProxyProtocol::V2,
            ..Controls::default()
        };
        assert!(unsupported("relay", Protocol::Tcp, 1, &pp).is_none());
        assert_eq!(
            unsupported("relay", Protocol::Udp, 1, &pp).unwrap().field,
            "proxy_protocol"
        );
        for backend in ["nft", "iptables", "socat"] {
            assert_eq!(
                unsupported(backend, Protocol::Tcp, 1, &pp).unwrap().field,
                "proxy_protocol"
            );
        }
        assert!(unsupported("socat", Protocol::Tcp, 1, &Controls::default()).is_none());
    }

    #[test]
    fn socat_allows_one_network() {
        let one = Controls::new(
            vec![parse_cidr("192.0.2.0/24").unwrap()],
            Some(3),
            ProxyProtocol::None,
        );
        assert!(unsupported("socat", Protocol::Tcp, 1, &one).is_none());
        let two = Controls::new(
            vec![
                parse_cidr("192.0.2.0/24").unwrap(),
                parse_cidr("198.51.100.0/24").unwrap(),
            ],
            None,
            ProxyProtocol::None,
        );
        assert_eq!(
            unsupported("socat", Protocol::Udp, 1, &two).unwrap().field,
            "allowed_cidrs"
        );
        for backend in ["relay", "nft", "iptables"] {
            assert!(unsupported(backend, Protocol::Tcp, 1, &two).is_none());
        }
    }

    #[test]
    fn socat_cannot_share_a_limit_over_a_range() {
        let limited = Controls {
            max_connections: Some(5),
            ..Controls::default()
        };
        assert!(unsupported("socat", Protocol::Tcp, 1, &limited).is_none());
        assert_eq!(
            unsupported("socat", Protocol::Tcp, 10, &limited)
                .unwrap()
                .field,
            "max_connections"
        );
        for backend in ["relay", "nft", "iptables"] {
            assert!(unsupported(backend, Protocol::Udp, 10, &limited).is_none());
        }
    }
}
