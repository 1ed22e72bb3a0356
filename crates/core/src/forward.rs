//! The port forward and the small types it is made of.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

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
    pub external_port: u16,
    pub internal_ip_address: IpAddr,
    pub internal_port: u16,
    pub instance_id: Option<String>,
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
        ForwardSpec {
            id: self.id,
            protocol: self.protocol,
            listen: SocketAddr::new(self.external_address, self.external_port),
            target: SocketAddr::new(self.internal_ip_address, self.internal_port),
        }
    }
}

/// The data-plane view of a forward: what to listen on and where to send it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ForwardSpec {
    pub id: ForwardId,
    pub protocol: Protocol,
    pub listen: SocketAddr,
    pub target: SocketAddr,
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
    fn forward_id_parses_uuids_only() {
        let id = ForwardId::new_random();
        assert_eq!(id.to_string().parse::<ForwardId>(), Ok(id));
        assert!("42".parse::<ForwardId>().is_err());
    }
}
