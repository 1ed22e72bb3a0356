//! Which internal targets a forward may point at.
//!
//! A forward makes the proxy open connections on a tenant's behalf, so a target
//! is a privilege: pointed at the metadata service, at a multicast group or at
//! the proxy's own services it would let a tenant reach what it must not.
//! These checks run on every create and update, before anything is stored.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::PortRange;

/// The rules a target address is checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Networks a target must fall in; empty means "any address not refused below".
    pub allowed_networks: Vec<IpNet>,
    /// Whether loopback targets are allowed. Only sensible when the proxy and the
    /// targets are the same machine (the all-in-one mode); otherwise a loopback
    /// target would expose the proxy's own local services.
    pub allow_loopback: bool,
    /// The proxy's own listen addresses with the ports it forwards from.
    pub proxy_addresses: Vec<(IpAddr, PortRange)>,
}

/// Why a target was refused. Each message says what the address is and why
/// that is not allowed, so the API can pass it on as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0} is an unspecified address; give the instance's real address")]
    Unspecified(IpAddr),
    #[error("{0} is a multicast or broadcast address; only unicast targets can be forwarded to")]
    Multicast(IpAddr),
    #[error(
        "{0} is link-local (this range holds the metadata service 169.254.169.254); forwarding to it is not allowed"
    )]
    LinkLocal(IpAddr),
    #[error(
        "{0} is a loopback address, which would expose the proxy's own local services; not allowed here"
    )]
    Loopback(IpAddr),
    #[error(
        "{0} is one of the proxy's own addresses; forwarding to the proxy itself is not allowed"
    )]
    ProxyAddress(IpAddr),
    #[error(
        "{ip}:{port} is a port the proxy forwards from ({range}); the forward would loop into the proxy"
    )]
    Loop {
        ip: IpAddr,
        port: u16,
        range: PortRange,
    },
    #[error("{ip} is outside the allowed target networks ({allowed})")]
    NotAllowed { ip: IpAddr, allowed: String },
}

impl TargetPolicy {
    /// Checks `ip:port` as the target of a forward.
    pub fn check(&self, ip: IpAddr, port: u16) -> Result<(), TargetError> {
        // An IPv4-mapped IPv6 address reaches the IPv4 host, so judge it as one.
        let ip = ip.to_canonical();
        if ip.is_unspecified() {
            return Err(TargetError::Unspecified(ip));
        }
        if ip.is_multicast() || is_broadcast(ip) {
            return Err(TargetError::Multicast(ip));
        }
        if is_link_local(ip) {
            return Err(TargetError::LinkLocal(ip));
        }
        for (address, range) in &self.proxy_addresses {
            if address.to_canonical() == ip {
                if range.contains(port) {
                    return Err(TargetError::Loop {
                        ip,
                        port,
                        range: *range,
                    });
                }
                if !(ip.is_loopback() && self.allow_loopback) {
                    return Err(TargetError::ProxyAddress(ip));
                }
            }
        }
        if ip.is_loopback() && !self.allow_loopback {
            return Err(TargetError::Loopback(ip));
        }
        if !self.allowed_networks.is_empty()
            && !self.allowed_networks.iter().any(|net| net.contains(&ip))
        {
            let allowed = self
                .allowed_networks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(TargetError::NotAllowed { ip, allowed });
        }
        Ok(())
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_broadcast(),
        IpAddr::V6(_) => false,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        // fe80::/10; `Ipv6Addr::is_unicast_link_local` is stable but spelled out
        // here so the rule is visible next to the IPv4 one.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cluster_policy() -> TargetPolicy {
        TargetPolicy {
            allowed_networks: Vec::new(),
            allow_loopback: false,
            proxy_addresses: vec![(ip("203.0.113.5"), PortRange::new(20000, 40000).unwrap())],
        }
    }

    fn all_in_one_policy() -> TargetPolicy {
        TargetPolicy {
            allowed_networks: Vec::new(),
            allow_loopback: true,
            proxy_addresses: vec![(ip("127.0.0.1"), PortRange::new(20000, 40000).unwrap())],
        }
    }

    #[test]
    fn refuses_dangerous_targets_by_default() {
        let policy = cluster_policy();
        let refused = [
            ("0.0.0.0", 80, "unspecified"),
            ("::", 80, "unspecified"),
            ("169.254.169.254", 80, "link-local"),
            ("::ffff:169.254.169.254", 80, "link-local"),
            ("fe80::1", 22, "link-local"),
            ("224.0.0.1", 5000, "multicast"),
            ("ff02::1", 5000, "multicast"),
            ("255.255.255.255", 9, "broadcast"),
            ("127.0.0.1", 22, "loopback"),
            ("::1", 22, "loopback"),
            ("203.0.113.5", 22, "proxy's own"),
            ("203.0.113.5", 20001, "loop"),
        ];
        for (addr, port, why) in refused {
            let err = policy.check(ip(addr), port).expect_err(addr);
            assert!(err.to_string().contains(why), "{addr}: {err}");
        }
        assert_eq!(policy.check(ip("10.0.0.5"), 22), Ok(()));
        assert_eq!(policy.check(ip("2001:db8::5"), 22), Ok(()));
    }

    #[test]
    fn all_in_one_allows_loopback_but_not_loops() {
        let policy = all_in_one_policy();
        assert_eq!(policy.check(ip("127.0.0.1"), 8080), Ok(()));
        assert_eq!(policy.check(ip("::1"), 8080), Ok(()));
        let err = policy.check(ip("127.0.0.1"), 20001).unwrap_err();
        assert!(
            matches!(err, TargetError::Loop { port: 20001, .. }),
            "{err}"
        );
        assert!(policy.check(ip("169.254.169.254"), 80).is_err());
    }

    #[test]
    fn allowed_networks_restrict_targets() {
        let policy = TargetPolicy {
            allowed_networks: vec!["10.0.0.0/8".parse().unwrap()],
            ..cluster_policy()
        };
        assert_eq!(policy.check(ip("10.1.2.3"), 80), Ok(()));
        let err = policy.check(ip("192.0.2.1"), 80).unwrap_err();
        assert_eq!(
            err.to_string(),
            "192.0.2.1 is outside the allowed target networks (10.0.0.0/8)"
        );
    }
}
