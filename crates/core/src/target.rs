//! Which internal targets a forward may point at.
//!
//! A forward makes the proxy open connections on a tenant's behalf, so a target
//! is a privilege: pointed at the metadata service, at a multicast group or at
//! a proxy's own services it would let a tenant reach what it must not.
//! These checks run on every create and update, before anything is stored.
//!
//! Every special network is one row of [`SPECIAL_NETWORKS`]: the network, what
//! it is (the refusal names it) and where that is written down. The first row
//! that contains an address decides, so narrower rows come before wider ones
//! (a test checks that no row hides a later one).
//!
//! IPv6 spellings of IPv4 addresses are closed as follows:
//! - IPv4-mapped `::ffff:a.b.c.d` is judged as `a.b.c.d`: a dual-stack socket
//!   connecting to it reaches that IPv4 host, and it is a legitimate way to
//!   write an instance's IPv4 address.
//! - every other form that carries an IPv4 address (IPv4-compatible,
//!   IPv4-translated, NAT64, 6to4, Teredo) is refused outright, naming the
//!   IPv4 address it carries. None of them can be an instance's own address,
//!   and judging the embedded address instead would trust a translator or
//!   tunnel somewhere on the path to deliver it where the check assumed.
//!
//! Left allowed on purpose, because refusing a real tenant network is a bug
//! too: the private ranges (10/8, 172.16/12, 192.168/16, fc00::/7 apart from
//! the metadata addresses below), shared address space 100.64/10 (apart from
//! Alibaba's metadata address), 240.0.0.0/4 (some clouds hand it out as extra
//! private space) and the documentation ranges (no harm can come of them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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
    /// The listen addresses of every registered proxy, each with the ports
    /// that proxy forwards from: a target there would loop through the
    /// proxies or reach a proxy host's own services.
    pub proxy_addresses: Vec<(IpAddr, PortRange)>,
}

/// What a target in a special network gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Treatment {
    /// Refused: never an instance's address, or one a tenant must not reach.
    Refused,
    /// Refused unless the policy allows loopback targets.
    Loopback,
    /// An IPv4-mapped IPv6 address, judged as the IPv4 address it maps.
    Mapped,
    /// A transition form carrying an IPv4 address: refused, naming it.
    Carries(Embedding),
}

/// Where a transition form keeps its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Embedding {
    /// In the last 32 bits.
    Last32,
    /// In bits 16-47 (6to4, RFC 3056 §2).
    SixToFour,
    /// The server's in bits 32-63, the client's in the last 32 bits with
    /// every bit inverted (Teredo, RFC 4380 §4).
    Teredo,
    /// Where the operator's prefix length puts it (RFC 6052 §2.2); not read.
    Anywhere,
}

/// One special network: what it is, where that is written down, and what a
/// target in it gets.
struct SpecialNetwork {
    network: IpNet,
    what: &'static str,
    source: &'static str,
    treatment: Treatment,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len))
}

const fn v6(segments: [u16; 8], len: u8) -> IpNet {
    let [a, b, c, d, e, f, g, h] = segments;
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(a, b, c, d, e, f, g, h),
        len,
    ))
}

const fn row(
    network: IpNet,
    what: &'static str,
    source: &'static str,
    treatment: Treatment,
) -> SpecialNetwork {
    SpecialNetwork {
        network,
        what,
        source,
        treatment,
    }
}

use Treatment::{Carries, Loopback, Mapped, Refused};

/// Every network a target is judged specially in, narrowest first where they
/// nest. The metadata services of the large clouds are listed even where a
/// wider row covers them, so that the refusal says what the address is.
static SPECIAL_NETWORKS: &[SpecialNetwork] = &[
    // IPv4.
    row(
        v4(0, 0, 0, 0, 32),
        "an unspecified address",
        "RFC 1122 §3.2.1.3",
        Refused,
    ),
    row(
        v4(0, 0, 0, 0, 8),
        "in \"this network\" 0.0.0.0/8, which is never a destination",
        "RFC 1122 §3.2.1.3; RFC 6890",
        Refused,
    ),
    row(
        v4(127, 0, 0, 0, 8),
        "a loopback address",
        "RFC 1122 §3.2.1.3",
        Loopback,
    ),
    row(
        v4(169, 254, 169, 254, 32),
        "link-local: the instance metadata service of OpenStack, AWS, Azure, GCP and OCI",
        "https://specs.openstack.org/openstack/neutron-specs/specs/ussuri/metadata-add-ipv6-support.html; \
         https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html",
        Refused,
    ),
    row(
        v4(169, 254, 169, 253, 32),
        "link-local: the AWS VPC DNS resolver",
        "https://docs.aws.amazon.com/vpc/latest/userguide/AmazonDNS-concepts.html",
        Refused,
    ),
    row(
        v4(169, 254, 169, 123, 32),
        "link-local: the Amazon Time Sync Service",
        "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configure-ec2-ntp.html",
        Refused,
    ),
    row(
        v4(169, 254, 0, 0, 16),
        "link-local (this range holds the metadata service 169.254.169.254)",
        "RFC 3927",
        Refused,
    ),
    row(
        v4(100, 100, 100, 200, 32),
        "the Alibaba Cloud instance metadata service",
        "https://www.alibabacloud.com/help/en/ecs/user-guide/view-instance-metadata",
        Refused,
    ),
    row(
        v4(168, 63, 129, 16, 32),
        "the Azure platform endpoint (WireServer: DHCP, DNS, VM agent)",
        "https://learn.microsoft.com/azure/virtual-network/what-is-ip-address-168-63-129-16",
        Refused,
    ),
    row(
        v4(224, 0, 0, 0, 4),
        "a multicast address (only unicast targets can be forwarded to)",
        "RFC 5771",
        Refused,
    ),
    row(
        v4(255, 255, 255, 255, 32),
        "the broadcast address (only unicast targets can be forwarded to)",
        "RFC 919 §7; RFC 8190",
        Refused,
    ),
    // IPv6: the single addresses inside ::/96 first.
    row(
        v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
        "an unspecified address",
        "RFC 4291 §2.5.2",
        Refused,
    ),
    row(
        v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
        "a loopback address",
        "RFC 4291 §2.5.3",
        Loopback,
    ),
    row(
        v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
        "an IPv4-mapped address",
        "RFC 4291 §2.5.5.2",
        Mapped,
    ),
    row(
        v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96),
        "an IPv4-translated address (SIIT)",
        "RFC 2765 §2.1",
        Carries(Embedding::Last32),
    ),
    row(
        v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "a deprecated IPv4-compatible address",
        "RFC 4291 §2.5.5.1",
        Carries(Embedding::Last32),
    ),
    row(
        v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
        "a NAT64 address (well-known prefix 64:ff9b::/96)",
        "RFC 6052 §2.1",
        Carries(Embedding::Last32),
    ),
    row(
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "a NAT64 address (local-use prefix 64:ff9b:1::/48)",
        "RFC 8215",
        Carries(Embedding::Anywhere),
    ),
    row(
        v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
        "a 6to4 address",
        "RFC 3056 §2",
        Carries(Embedding::SixToFour),
    ),
    row(
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),
        "a Teredo address",
        "RFC 4380 §2.14, §4",
        Carries(Embedding::Teredo),
    ),
    row(
        v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        "the AWS instance metadata service (IPv6)",
        "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html",
        Refused,
    ),
    row(
        v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x253], 128),
        "the AWS VPC DNS resolver (IPv6)",
        "https://docs.aws.amazon.com/vpc/latest/userguide/AmazonDNS-concepts.html",
        Refused,
    ),
    row(
        v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x123], 128),
        "the Amazon Time Sync Service (IPv6)",
        "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configure-ec2-ntp.html",
        Refused,
    ),
    row(
        v6([0xfd00, 0xc1, 0, 0, 0, 0, 0xa9fe, 0xa9fe], 128),
        "the OCI instance metadata service (IPv6)",
        "https://github.com/canonical/cloud-init/blob/main/cloudinit/sources/DataSourceOracle.py (IPV6_METADATA_ROOT)",
        Refused,
    ),
    row(
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "link-local (this range holds OpenStack's IPv6 metadata service fe80::a9fe:a9fe)",
        "RFC 4291 §2.5.6; \
         https://specs.openstack.org/openstack/neutron-specs/specs/ussuri/metadata-add-ipv6-support.html",
        Refused,
    ),
    row(
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "a deprecated site-local address",
        "RFC 3879",
        Refused,
    ),
    row(
        v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        "a multicast address (only unicast targets can be forwarded to)",
        "RFC 4291 §2.7",
        Refused,
    ),
];

/// Why a target was refused. Each message says what the address is and why
/// that is not allowed, so the API can pass it on as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{ip} is {what}; forwarding to it is not allowed")]
    Special { ip: IpAddr, what: &'static str },
    #[error(
        "{ip} is {what} carrying the IPv4 address {carried}; IPv6 transition forms are not forwarded to, give the instance's own address"
    )]
    TransitionForm {
        ip: IpAddr,
        what: &'static str,
        carried: String,
    },
    #[error("{ip} is the IPv4-mapped form of {v4}, and {reason}")]
    Mapped {
        ip: IpAddr,
        v4: Ipv4Addr,
        reason: Box<TargetError>,
    },
    #[error(
        "{0} is a loopback address, which would expose the proxy's own local services; not allowed here ([forwards] allow_loopback_targets)"
    )]
    Loopback(IpAddr),
    #[error("{0} is an address of a Navigator proxy; forwarding to a proxy itself is not allowed")]
    ProxyAddress(IpAddr),
    #[error(
        "{ip}:{port} is a port a Navigator proxy forwards from ({range}); the forward would loop into the proxies"
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
        self.check_ports(ip, PortRange::single(port))
    }

    /// Checks `ip` with every port of `ports` as the targets of a forward;
    /// the address is judged once, whatever the size of the range.
    pub fn check_ports(&self, ip: IpAddr, ports: PortRange) -> Result<(), TargetError> {
        let special = special_network(ip);
        if let Some(row) = special {
            match row.treatment {
                Refused => {
                    return Err(TargetError::Special { ip, what: row.what });
                }
                Carries(embedding) => {
                    return Err(TargetError::TransitionForm {
                        ip,
                        what: row.what,
                        carried: carried(ip, embedding),
                    });
                }
                Mapped => {
                    // Every address of ::ffff:0:0/96 maps an IPv4 one.
                    let IpAddr::V4(v4) = ip.to_canonical() else {
                        return Err(TargetError::Special { ip, what: row.what });
                    };
                    return self.check_ports(IpAddr::V4(v4), ports).map_err(|reason| {
                        TargetError::Mapped {
                            ip,
                            v4,
                            reason: Box::new(reason),
                        }
                    });
                }
                Loopback => {}
            }
        }
        let loopback = special.is_some_and(|row| row.treatment == Loopback);
        if loopback && !self.allow_loopback {
            return Err(TargetError::Loopback(ip));
        }
        for (address, range) in &self.proxy_addresses {
            if address.to_canonical() != ip {
                continue;
            }
            let first = ports.first().max(range.first());
            if first <= ports.last().min(range.last()) {
                return Err(TargetError::Loop {
                    ip,
                    port: first,
                    range: *range,
                });
            }
            // Outside its pool, a proxy's address is its host's own services;
            // only the all-in-one machine may forward to itself, on loopback.
            if !loopback {
                return Err(TargetError::ProxyAddress(ip));
            }
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

/// Every network targets are judged specially in, as `(network, what it is,
/// where that is written down)`, in the order they are matched: for
/// documentation, and for anyone who needs to know why an address is refused.
pub fn special_networks() -> impl Iterator<Item = (IpNet, &'static str, &'static str)> {
    SPECIAL_NETWORKS
        .iter()
        .map(|row| (row.network, row.what, row.source))
}

/// The first row of [`SPECIAL_NETWORKS`] that contains `ip`.
fn special_network(ip: IpAddr) -> Option<&'static SpecialNetwork> {
    SPECIAL_NETWORKS
        .iter()
        .find(|row| row.network.contains(&ip))
}

/// The IPv4 address(es) a transition form carries, for the refusal.
fn carried(ip: IpAddr, embedding: Embedding) -> String {
    let IpAddr::V6(v6) = ip else {
        return "none".to_owned();
    };
    let bits = u128::from(v6);
    // Truncation to the 32 bits each form keeps its address in is the point.
    let at = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
    match embedding {
        Embedding::Last32 => at(0).to_string(),
        Embedding::SixToFour => at(80).to_string(),
        Embedding::Teredo => format!(
            "{} (server {})",
            Ipv4Addr::from(!((bits & 0xffff_ffff) as u32)),
            at(64)
        ),
        Embedding::Anywhere => "at a position set by the translator's prefix length".to_owned(),
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
            proxy_addresses: vec![(ip("203.0.113.5"), PortRange::new(20000, 32767).unwrap())],
        }
    }

    fn all_in_one_policy() -> TargetPolicy {
        TargetPolicy {
            allowed_networks: Vec::new(),
            allow_loopback: true,
            proxy_addresses: vec![(ip("127.0.0.1"), PortRange::new(20000, 32767).unwrap())],
        }
    }

    /// One row per entry of [`SPECIAL_NETWORKS`] (at least), then the
    /// neighbours that must stay allowed. `None`: allowed; `Some(text)`:
    /// refused with a message containing `text`.
    const CASES: &[(&str, Option<&str>)] = &[
        // IPv4 special networks.
        ("0.0.0.0", Some("unspecified")),
        ("0.1.2.3", Some("this network")),
        ("127.0.0.1", Some("loopback")),
        ("127.255.0.9", Some("loopback")),
        (
            "169.254.169.254",
            Some("link-local: the instance metadata service"),
        ),
        ("169.254.169.253", Some("AWS VPC DNS")),
        ("169.254.169.123", Some("Time Sync")),
        ("169.254.1.1", Some("link-local")),
        ("100.100.100.200", Some("Alibaba")),
        ("168.63.129.16", Some("Azure")),
        ("224.0.0.1", Some("multicast")),
        ("239.255.255.250", Some("multicast")),
        ("255.255.255.255", Some("broadcast")),
        // IPv6 special networks.
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        (
            "::ffff:169.254.169.254",
            Some("IPv4-mapped form of 169.254.169.254"),
        ),
        ("::ffff:127.0.0.1", Some("loopback")),
        ("::ffff:0:169.254.169.254", Some("IPv4-translated")),
        ("::169.254.169.254", Some("IPv4-compatible")),
        ("::10.0.0.5", Some("carrying the IPv4 address 10.0.0.5")),
        ("64:ff9b::a9fe:a9fe", Some("NAT64")),
        (
            "64:ff9b::10.0.0.5",
            Some("carrying the IPv4 address 10.0.0.5"),
        ),
        ("64:ff9b:1::a9fe:a9fe", Some("local-use")),
        (
            "2002:a9fe:a9fe::1",
            Some("6to4 address carrying the IPv4 address 169.254.169.254"),
        ),
        // Teredo: server 65.54.227.120, client 169.254.169.254 inverted.
        (
            "2001:0:4136:e378:8000:63bf:5601:5601",
            Some("Teredo address carrying the IPv4 address 169.254.169.254 (server 65.54.227.120)"),
        ),
        ("fd00:ec2::254", Some("AWS instance metadata")),
        ("fd00:ec2::253", Some("AWS VPC DNS")),
        ("fd00:ec2::123", Some("Time Sync")),
        ("fd00:c1::a9fe:a9fe", Some("OCI instance metadata")),
        ("fe80::a9fe:a9fe", Some("link-local")),
        ("fe80::1", Some("link-local")),
        ("febf::1", Some("link-local")),
        ("fec0::1", Some("site-local")),
        ("feff::1", Some("site-local")),
        ("ff02::1", Some("multicast")),
        ("ff05::1:3", Some("multicast")),
        // Where instances live, next to the rows above: allowed.
        ("10.0.0.5", None),
        ("172.16.0.1", None),
        ("192.168.1.1", None),
        ("100.64.0.1", None),
        ("100.100.100.201", None),
        ("100.127.255.254", None),
        ("169.253.255.255", None),
        ("169.255.0.1", None),
        ("168.63.129.17", None),
        ("1.0.0.1", None),
        ("126.255.255.255", None),
        ("128.0.0.1", None),
        ("223.255.255.255", None),
        ("240.0.0.1", None),
        ("255.255.255.254", None),
        ("192.0.2.1", None),
        ("::ffff:10.0.0.5", None),
        ("::1:0:0:1", None),
        ("64:ff9c::1", None),
        ("2001:db8::5", None),
        ("2001:1::1", None),
        ("2003::1", None),
        ("fc00::1", None),
        ("fd00::1", None),
        ("fd00:ec2::1", None),
        ("fd00:ec2::255", None),
        ("fd00:c1::1", None),
        ("fe7f::1", None),
    ];

    #[test]
    fn every_special_network_and_its_neighbours() {
        let policy = cluster_policy();
        for (addr, expected) in CASES {
            match (policy.check(ip(addr), 80), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(text)) => {
                    assert!(e.to_string().contains(text), "{addr}: {e}")
                }
                (got, _) => panic!("{addr}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_cases_cover_every_row() {
        for row in SPECIAL_NETWORKS {
            assert!(
                CASES.iter().any(|(addr, expected)| expected.is_some()
                    && addr
                        .parse::<IpAddr>()
                        .is_ok_and(|a| special_network(a).is_some_and(|r| std::ptr::eq(r, row)))),
                "no case is decided by {} ({})",
                row.network,
                row.what
            );
            assert!(!row.source.is_empty(), "{} has no source", row.network);
        }
    }

    #[test]
    fn no_row_hides_a_later_one() {
        for (i, earlier) in SPECIAL_NETWORKS.iter().enumerate() {
            for later in &SPECIAL_NETWORKS[i + 1..] {
                assert!(
                    !earlier.network.contains(&later.network),
                    "{} comes before {}, which it contains",
                    earlier.network,
                    later.network
                );
            }
        }
    }

    #[test]
    fn refuses_dangerous_targets_by_default() {
        let policy = cluster_policy();
        let refused = [
            ("127.0.0.1", 22, "loopback"),
            ("::1", 22, "loopback"),
            ("203.0.113.5", 22, "address of a Navigator proxy"),
            ("203.0.113.5", 20001, "loop"),
            ("::ffff:203.0.113.5", 20001, "loop"),
        ];
        for (addr, port, why) in refused {
            let err = policy.check(ip(addr), port).expect_err(addr);
            assert!(err.to_string().contains(why), "{addr}: {err}");
        }
    }

    #[test]
    fn any_proxy_address_and_pool_is_refused() {
        let policy = TargetPolicy {
            proxy_addresses: vec![
                (ip("203.0.113.5"), PortRange::new(20000, 32767).unwrap()),
                (ip("198.51.100.7"), PortRange::new(40000, 40100).unwrap()),
                (ip("2001:db8::7"), PortRange::new(40000, 40100).unwrap()),
            ],
            ..cluster_policy()
        };
        let err = policy.check(ip("198.51.100.7"), 40050).unwrap_err();
        assert!(
            matches!(err, TargetError::Loop { port: 40050, .. }),
            "{err}"
        );
        let err = policy.check(ip("2001:db8::7"), 40000).unwrap_err();
        assert!(matches!(err, TargetError::Loop { .. }), "{err}");
        let err = policy.check(ip("198.51.100.7"), 22).unwrap_err();
        assert_eq!(err, TargetError::ProxyAddress(ip("198.51.100.7")));
        // A range that only ends inside a pool loops on its first port there.
        let err = policy
            .check_ports(ip("198.51.100.7"), PortRange::new(39990, 40010).unwrap())
            .unwrap_err();
        assert!(
            matches!(err, TargetError::Loop { port: 40000, .. }),
            "{err}"
        );
    }

    #[test]
    fn all_in_one_allows_loopback_but_not_loops() {
        let policy = all_in_one_policy();
        assert_eq!(policy.check(ip("127.0.0.1"), 8080), Ok(()));
        assert_eq!(policy.check(ip("::1"), 8080), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1"), 8080), Ok(()));
        let err = policy.check(ip("127.0.0.1"), 20001).unwrap_err();
        assert!(
            matches!(err, TargetError::Loop { port: 20001, .. }),
            "{err}"
        );
        assert!(policy.check(ip("169.254.169.254"), 80).is_err());
        assert!(policy.check(ip("::127.0.0.1"), 8080).is_err());
    }

    #[test]
    fn allowed_networks_restrict_targets_but_never_open_special_ones() {
        let policy = TargetPolicy {
            allowed_networks: vec!["10.0.0.0/8".parse().unwrap(), "fc00::/7".parse().unwrap()],
            ..cluster_policy()
        };
        assert_eq!(policy.check(ip("10.1.2.3"), 80), Ok(()));
        let err = policy.check(ip("192.0.2.1"), 80).unwrap_err();
        assert_eq!(
            err.to_string(),
            "192.0.2.1 is outside the allowed target networks (10.0.0.0/8, fc00::/7)"
        );
        assert!(policy.check(ip("fd00:ec2::254"), 80).is_err());
    }
}
