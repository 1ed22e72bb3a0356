//! The port forward and the small types it is made of.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::{Controls, PortRange};

/// A forward's identity: a UUID, as every OpenStack resource id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForwardId(pub uuid::Uuid);

impl ForwardId {
    pub fn new_random() -> ForwardId {
        ForwardId(uuid::Uuid::new_v4())
    }
}

impl fmt::Display for ForwardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ForwardId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(ForwardId)
            .map_err(|_| ParseError::new("id", s, "a UUID"))
    }
}

/// A value that did not parse, with the name of what it was meant to be and
/// what would have been accepted, so the caller can build a message that
/// names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct ParseError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl ParseError {
    pub fn new(what: &'static str, value: &str, expected: &'static str) -> ParseError {
        ParseError {
            what,
            value: value.to_owned(),
            expected,
        }
    }
}

/// Transport protocol of a forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(ParseError::new("protocol", s, "one of tcp, udp")),
        }
    }
}

/// Where a forward is in its life.
///
/// `Pending` until the agent confirms the data plane carries it, then `Active`
/// or `Error` (with a reason); `Deleting` while the agent tears it down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardStatus {
    Pending,
    Active,
    Error,
    Deleting,
}

impl ForwardStatus {
    pub const ALL: [ForwardStatus; 4] = [
        ForwardStatus::Pending,
        ForwardStatus::Active,
        ForwardStatus::Error,
        ForwardStatus::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ForwardStatus::Pending => "PENDING",
            ForwardStatus::Active => "ACTIVE",
            ForwardStatus::Error => "ERROR",
            ForwardStatus::Deleting => "DELETING",
        }
    }
}

impl fmt::Display for ForwardStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ForwardStatus {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ForwardStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ParseError::new("status", s, "one of PENDING, ACTIVE, ERROR, DELETING"))
    }
}

/// A port forward as the control plane knows it.
///
/// Times are kept as RFC 3339 strings in UTC: core has no clock, and the
/// string form sorts the same way the instants do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub id: ForwardId,
    pub project_id: String,
    pub description: String,
    pub protocol: Protocol,
    pub external_address: IpAddr,
    /// First external port; the only one unless `external_port_end` is larger.
    pub external_port: u16,
    /// Last external port (inclusive): equal to `external_port` for a
    /// single-port forward.
    pub external_port_end: u16,
    pub internal_ip_address: IpAddr,
    /// First internal port.
    pub internal_port: u16,
    /// Last internal port (inclusive): equal to `internal_port` when every
    /// external port goes to one internal port, else `external_port_end`'s
    /// counterpart at the same offset (see [`check_port_mapping`]).
    pub internal_port_end: u16,
    pub instance_id: Option<String>,
    /// Source allowlist, connection limit and PROXY protocol.
    pub controls: Controls,
    /// Host name of the proxy the forward is placed on.
    pub proxy: String,
    pub status: ForwardStatus,
    pub status_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl PortForward {
    /// What the data plane needs to carry this forward.
    pub fn spec(&self) -> ForwardSpec {
        let ports = self.port_count();
        ForwardSpec {
            id: self.id,
            protocol: self.protocol,
            listen: SocketAddr::new(self.external_address, self.external_port),
            target: SocketAddr::new(self.internal_ip_address, self.internal_port),
            ports,
            one_target_port: ports > 1 && self.internal_port_end == self.internal_port,
            controls: self.controls.clone(),
        }
    }

    /// How many external ports the forward holds (1 for a single port).
    pub fn port_count(&self) -> u16 {
        self.external_port_end - self.external_port + 1
    }

    /// Whether the forward covers more than one external port.
    pub fn is_range(&self) -> bool {
        self.external_port_end != self.external_port
    }
}

/// Why a pair of external and internal port ranges cannot make a forward.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortMappingError {
    #[error(
        "the internal range {internal} has {internal_len} ports but the external range {external} has {external_len}: they must be the same size, or the internal range a single port"
    )]
    SizeMismatch {
        external: String,
        external_len: u32,
        internal: String,
        internal_len: u32,
    },
    #[error("the range has {len} ports; at most {max} are allowed ([api] max_port_range_size)")]
    TooLarge { len: u32, max: u32 },
}

/// Checks the port-range rules of Neutron's port-forwarding ranges: `N`
/// external ports map to `N` internal ports (port `first + i` to
/// `internal_first + i`) or all to one internal port; no range may exceed
/// `max_len` ports.
pub fn check_port_mapping(
    external: PortRange,
    internal: PortRange,
    max_len: u32,
) -> Result<(), PortMappingError> {
    for range in [external, internal] {
        if range.len() > max_len {
            return Err(PortMappingError::TooLarge {
                len: range.len(),
                max: max_len,
            });
        }
    }
    if internal.len() != 1 && internal.len() != external.len() {
        return Err(PortMappingError::SizeMismatch {
            external: format!("{}:{}", external.first(), external.last()),
            external_len: external.len(),
            internal: format!("{}:{}", internal.first(), internal.last()),
            internal_len: internal.len(),
        });
    }
    Ok(())
}

/// The data-plane view of a forward: what to listen on and where to send it.
///
/// A port range stays one spec (one id, one status) so that `plan` and the
/// agent's bookkeeping do not change with ranges; each backend expands it into
/// one listener, map element or process per port with [`ForwardSpec::pairs`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ForwardSpec {
    pub id: ForwardId,
    pub protocol: Protocol,
    /// The first listening port.
    pub listen: SocketAddr,
    /// Where the first listening port goes.
    pub target: SocketAddr,
    /// Consecutive listening ports from `listen`'s: 1 for a single port.
    pub ports: u16,
    /// Whether every listening port goes to `target`'s port (Neutron's N:1);
    /// otherwise `listen + i` goes to `target + i`.
    pub one_target_port: bool,
    /// Who may connect, how many at once, and the PROXY protocol header.
    /// Backends enforce them or fail the forward (see [`crate::controls`]).
    pub controls: Controls,
}

impl ForwardSpec {
    /// A forward of one port.
    pub fn single(
        id: ForwardId,
        protocol: Protocol,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> ForwardSpec {
        ForwardSpec {
            id,
            protocol,
            listen,
            target,
            ports: 1,
            one_target_port: false,
            controls: Controls::default(),
        }
    }

    /// Every `(listen, target)` socket pair the forward carries, in port
    /// order. The ports were checked when the forward was made; a spec that
    /// would run past 65535 (from a corrupt message) stops at 65535.
    pub fn pairs(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr)> + '_ {
        (0..self.ports).map_while(move |i| {
            let listen = self.listen.port().checked_add(i)?;
            let target = if self.one_target_port {
                self.target.port()
            } else {
                self.target.port().checked_add(i)?
            };
            Some((
                SocketAddr::new(self.listen.ip(), listen),
                SocketAddr::new(self.target.ip(), target),
            ))
        })
    }

    /// Whether `other` is this forward with, at most, other controls: a
    /// data plane then changes the controls in place and keeps every
    /// established connection (their translation did not change).
    pub fn differs_only_in_controls(&self, other: &ForwardSpec) -> bool {
        ForwardSpec {
            controls: other.controls.clone(),
            ..self.clone()
        } == *other
    }

    /// `20000` or `20000-20009`: the listening ports, for messages.
    pub fn listen_ports(&self) -> String {
        let first = self.listen.port();
        let last = u32::from(first) + u32::from(self.ports.max(1)) - 1;
        if last == u32::from(first) {
            first.to_string()
        } else {
            format!("{first}-{last}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_round_trips_and_rejects_unknown() {
        for protocol in Protocol::ALL {
            assert_eq!(protocol.as_str().parse::<Protocol>(), Ok(protocol));
        }
        let err = "sctp".parse::<Protocol>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid protocol \"sctp\": expected one of tcp, udp"
        );
        assert!(
            "TCP".parse::<Protocol>().is_err(),
            "protocols are lower case, as in Neutron"
        );
    }

    #[test]
    fn status_round_trips() {
        for status in ForwardStatus::ALL {
            assert_eq!(status.as_str().parse::<ForwardStatus>(), Ok(status));
        }
        assert!("active".parse::<ForwardStatus>().is_err());
    }

    #[test]
    fn port_mapping_follows_neutrons_rules() {
        let r = |a: u16, b: u16| PortRange::new(a, b).unwrap();
        assert_eq!(
            check_port_mapping(r(9000, 9100), r(8000, 8100), 1000),
            Ok(())
        );
        assert_eq!(check_port_mapping(r(9000, 9100), r(22, 22), 1000), Ok(()));
        assert_eq!(check_port_mapping(r(9000, 9000), r(22, 22), 1000), Ok(()));
        assert_eq!(
            check_port_mapping(r(9000, 9009), r(8000, 8001), 1000)
                .unwrap_err()
                .to_string(),
            "the internal range 8000:8001 has 2 ports but the external range 9000:9009 has 10: they must be the same size, or the internal range a single port"
        );
        assert!(
            check_port_mapping(r(9000, 9000), r(8000, 8001), 1000).is_err(),
            "1 external port to N internal ones is not a forward"
        );
        assert_eq!(
            check_port_mapping(r(1, 2000), r(1, 2000), 1000),
            Err(PortMappingError::TooLarge {
                len: 2000,
                max: 1000
            })
        );
    }

    #[test]
    fn spec_pairs_keep_the_offset_or_fan_in() {
        let id = ForwardId::new_random();
        let mut spec = ForwardSpec {
            ports: 3,
            ..ForwardSpec::single(
                id,
                Protocol::Tcp,
                "192.0.2.1:9000".parse().unwrap(),
                "10.0.0.5:8000".parse().unwrap(),
            )
        };
        let pairs: Vec<String> = spec.pairs().map(|(l, t)| format!("{l}>{t}")).collect();
        assert_eq!(
            pairs,
            [
                "192.0.2.1:9000>10.0.0.5:8000",
                "192.0.2.1:9001>10.0.0.5:8001",
                "192.0.2.1:9002>10.0.0.5:8002"
            ]
        );
        assert_eq!(spec.listen_ports(), "9000-9002");
        spec.one_target_port = true;
        assert!(spec.pairs().all(|(_, t)| t.port() == 8000));
        spec.listen.set_port(65535);
        assert_eq!(spec.pairs().count(), 1, "never past port 65535");
    }

    #[test]
    fn forward_id_parses_uuids_only() {
        let id = ForwardId::new_random();
        assert_eq!(id.to_string().parse::<ForwardId>(), Ok(id));
        assert!("42".parse::<ForwardId>().is_err());
    }
}
