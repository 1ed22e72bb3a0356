//! API v1 resources: forwards, proxies and the version documents.
//!
//! Request bodies reject unknown fields, and every field is checked by
//! [`ForwardCreate::validate`] / [`ForwardUpdate::validate`] with a message that
//! names it, so that a typo in a request never silently does something else.

use std::net::IpAddr;

use ipnet::IpNet;
use navigator_core::{
    Controls, ForwardStatus, PortForward, PortRange, Protocol, ProxyProtocol, check_port_mapping,
    parse_cidr, parse_port_number,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The longest description, instance id or host name accepted.
pub const MAX_TEXT_LEN: usize = 255;
/// Page size when the client gives no `limit`.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
/// The largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The most `allowed_cidrs` entries any server accepts; `[api]
/// max_allowed_cidrs` (1000 by default) may only lower it.
pub const MAX_ALLOWED_CIDRS: usize = 10_000;
/// The largest `max_connections`.
pub const MAX_CONNECTIONS: u32 = 1_000_000;

/// The OpenAPI `pattern` of a port range field: `N` or `N:M`, ports 1-65535
/// in plain digits (that N <= M is checked too, and said in the field's
/// description). The `schema` attributes below must spell it as a literal;
/// `openapi_document_is_complete` (server tests) checks they agree.
pub const PORT_RANGE_PATTERN: &str = "^(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$";
/// The OpenAPI `pattern` of free text: none of [`hidden_char`]'s characters.
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028\\u2029\\u202A-\\u202E\\u2066-\\u2069]*$";

// The values of the `protocol` and `status` strings, for the OpenAPI
// document only: the fields stay strings, checked by the `validate`s.

/// `tcp` or `udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolName {
    Tcp,
    Udp,
}

/// Where a forward is: `PENDING` (the proxy has not confirmed it yet),
/// `ACTIVE` (carried), `ERROR` (not carried; `status_reason` says why) or
/// `DELETING`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum StatusName {
    Pending,
    Active,
    Error,
    Deleting,
}

/// `none`, `v1` or `v2`: HAProxy's PROXY protocol header the relay writes to
/// the target (TCP forwards on the relay backend only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolName {
    None,
    V1,
    V2,
}

/// A request field that failed validation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> FieldError {
        FieldError {
            field,
            message: message.into(),
        }
    }
}

/// A port forward as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Forward {
    /// UUID of the forward.
    pub id: String,
    /// Project (tenant) that owns the forward.
    pub project_id: String,
    #[schema(
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028\\u2029\\u202A-\\u202E\\u2066-\\u2069]*$"
    )]
    pub description: String,
    /// `tcp` or `udp`.
    #[schema(value_type = ProtocolName)]
    pub protocol: String,
    /// Address on the proxy that clients connect to.
    pub external_address: String,
    /// The external port; for a range forward, its first port.
    #[schema(minimum = 1, maximum = 65535)]
    pub external_port: u16,
    /// `N:M` for a range forward (ports N to M inclusive), `null` for a
    /// single-port forward.
    #[serde(default)]
    #[schema(
        pattern = "^(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$"
    )]
    pub external_port_range: Option<String>,
    /// Address of the instance the traffic is forwarded to.
    pub internal_ip_address: String,
    /// The internal port; for a range forward, its first port.
    #[schema(minimum = 1, maximum = 65535)]
    pub internal_port: u16,
    /// `N:M` for a range forward (`N:N` when every external port goes to
    /// port N), `null` for a single-port forward.
    #[serde(default)]
    #[schema(
        pattern = "^(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$"
    )]
    pub internal_port_range: Option<String>,
    /// Nova instance the target belongs to, if given.
    pub instance_id: Option<String>,
    /// Host name of the proxy node carrying the forward.
    pub proxy: String,
    /// `PENDING`, `ACTIVE`, `ERROR` or `DELETING`.
    #[schema(value_type = StatusName)]
    pub status: String,
    /// Why the forward is in `ERROR` (or still `PENDING`).
    pub status_reason: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// Source networks allowed to connect (canonical CIDRs, sorted); `[]`
    /// means everyone.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// Concurrent TCP connections (UDP sessions) the forward carries at
    /// most; `null`: no limit of its own.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_connections: Option<u32>,
    /// `none`, `v1` or `v2`.
    #[serde(default = "no_proxy_protocol")]
    #[schema(value_type = ProxyProtocolName)]
    pub proxy_protocol: String,
    /// The address group carrying the forward, when `proxy` is one
    /// (`group:NAME`): its `external_address` is the group's virtual address,
    /// which VRRP moves between members; `null` otherwise.
    #[serde(default)]
    pub group: Option<ForwardGroup>,
}

/// How an address group carries one forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardGroup {
    /// The group's name.
    pub name: String,
    /// The member that holds the virtual address now; `null` while none
    /// does (every member down, or VRRP still electing).
    pub holder: Option<String>,
    /// Members that are up.
    pub members: u32,
    /// Members that are up and carry the forward (every member carries all
    /// of the group's forwards, so that any can take the address over).
    pub carrying: u32,
}

fn no_proxy_protocol() -> String {
    ProxyProtocol::None.as_str().to_owned()
}

impl From<&PortForward> for Forward {
    fn from(f: &PortForward) -> Forward {
        Forward {
            id: f.id.to_string(),
            project_id: f.project_id.clone(),
            description: f.description.clone(),
            protocol: f.protocol.to_string(),
            external_address: f.external_address.to_string(),
            external_port: f.external_port,
            external_port_range: f
                .is_range()
                .then(|| format!("{}:{}", f.external_port, f.external_port_end)),
            internal_ip_address: f.internal_ip_address.to_string(),
            internal_port: f.internal_port,
            internal_port_range: f
                .is_range()
                .then(|| format!("{}:{}", f.internal_port, f.internal_port_end)),
            instance_id: f.instance_id.clone(),
            proxy: f.proxy.clone(),
            status: f.status.to_string(),
            status_reason: f.status_reason.clone(),
            created_at: f.created_at.clone(),
            updated_at: f.updated_at.clone(),
            allowed_cidrs: f
                .controls
                .allowed_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
            max_connections: f.controls.max_connections,
            proxy_protocol: f.controls.proxy_protocol.as_str().to_owned(),
            group: None,
        }
    }
}

/// `{"forward": {...}}`, as returned by create, show and update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardBody {
    pub forward: Forward,
}

/// What the data plane counted for a forward since its proxy started
/// carrying it (counters restart at zero when the agent or its host
/// restarts, or the forward moves to another proxy).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Bytes from clients towards the instance (payload for the relay and
    /// socat backends; IP packet bytes for nft and iptables).
    pub bytes_in: u64,
    /// Bytes from the instance back to clients.
    pub bytes_out: u64,
    /// TCP connections (UDP sessions) ever opened.
    pub connections_total: u64,
    /// TCP connections (UDP sessions) open now.
    pub connections_active: u64,
    /// When the last connection or session was opened, RFC 3339 UTC; `null`
    /// if none was.
    pub last_connection_at: Option<String>,
}

/// A forward as `GET /v1/forwards/{id}` shows it: every field of
/// [`Forward`], and its usage, read from its proxy's agent at request time
/// (so lists, which would ask every agent, leave it out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardDetail {
    #[serde(flatten)]
    pub forward: Forward,
    /// `null` when it cannot be had; `usage_unavailable` then says why.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Why `usage` is `null`: the forward is not `ACTIVE`, its backend does
    /// not count, or its agent is too old, down or did not answer in time.
    /// Absent when `usage` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_unavailable: Option<String>,
}

/// `{"forward": {...}}`, as returned by show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardDetailBody {
    pub forward: ForwardDetail,
}

/// A link to another page of a list, as Neutron's `*_links`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Link {
    pub rel: String,
    pub href: String,
}

/// `{"forwards": [...], "forwards_links": [...]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardList {
    pub forwards: Vec<Forward>,
    /// A `next` link when more forwards may follow this page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards_links: Vec<Link>,
}

/// Fields of a new forward.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardCreate {
    /// `tcp` or `udp`.
    #[schema(value_type = ProtocolName)]
    pub protocol: String,
    /// Target address (IPv4 or IPv6).
    pub internal_ip_address: String,
    /// Target port, 1-65535. Give this or `internal_port_range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 65535)]
    pub internal_port: Option<i64>,
    /// Target ports `N:M` (or `N`), 1-65535 with N <= M, as Neutron's
    /// port-forwarding ranges: the same number of ports as
    /// `external_port_range`, or one port that every external port goes to.
    /// Exclusive with `internal_port`. At most `[api] max_port_range_size`
    /// ports (1000 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$"
    )]
    pub internal_port_range: Option<String>,
    /// Port on the proxy, 1-65535 and inside its pool; omitted (with
    /// `external_port_range`) means one is allocated from the proxy's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 65535)]
    pub external_port: Option<i64>,
    /// Ports on the proxy `N:M` (or `N`), 1-65535 with N <= M. Exclusive
    /// with `external_port`; omitted with an `internal_port_range` means a
    /// free block of as many ports is allocated from the proxy's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$"
    )]
    pub external_port_range: Option<String>,
    /// Address on the proxy; omitted means the proxy's first address of the
    /// target's family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_address: Option<String>,
    /// Nova instance the target belongs to; not blank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028\\u2029\\u202A-\\u202E\\u2066-\\u2069]*$"
    )]
    pub instance_id: Option<String>,
    /// Free text, at most 255 characters, without control or bidirectional
    /// formatting characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028\\u2029\\u202A-\\u202E\\u2066-\\u2069]*$"
    )]
    pub description: Option<String>,
    /// Proxy host to place the forward on (admin only); not blank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028\\u2029\\u202A-\\u202E\\u2066-\\u2069]*$"
    )]
    pub proxy: Option<String>,
    /// Source networks allowed to connect: IPv4 and IPv6 CIDRs without host
    /// bits set (`192.0.2.0/24`; a bare address is one host). Empty or
    /// omitted means everyone. Duplicates (and equal spellings such as
    /// `192.0.2.7` and `192.0.2.7/32`) are merged silently; the forward
    /// shows the list sorted. At most `[api] max_allowed_cidrs` entries
    /// (1000 by default). Connections from other addresses are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 10000)]
    pub allowed_cidrs: Option<Vec<String>>,
    /// Concurrent TCP connections (UDP sessions) the forward carries at
    /// most, 1-1000000; omitted or `null`: no limit of its own (the proxy's
    /// own limits still apply). Over it, a new connection is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_connections: Option<i64>,
    /// `none` (default), `v1` or `v2`: the relay writes HAProxy's PROXY
    /// protocol header to the target so that it sees the client's address.
    /// TCP forwards on a `relay` proxy only (the kernel backends keep the
    /// client's address as the source anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ProxyProtocolName>)]
    pub proxy_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardCreateBody {
    pub forward: ForwardCreate,
}

/// A validated [`ForwardCreate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewForward {
    pub protocol: Protocol,
    pub internal_ip_address: IpAddr,
    /// One port or a range; a single port may serve a whole external range.
    pub internal_ports: PortRange,
    /// `None`: allocate as many ports as `internal_ports` holds.
    pub external_ports: Option<PortRange>,
    pub external_address: Option<IpAddr>,
    pub instance_id: Option<String>,
    pub description: String,
    pub proxy: Option<String>,
    /// Allowlist (canonical, without duplicates), limit and PROXY protocol.
    pub controls: Controls,
}

impl ForwardCreate {
    pub fn validate(&self) -> Result<NewForward, FieldError> {
        let protocol = parse_protocol(&self.protocol)?;
        let internal_ip_address = parse_ip("internal_ip_address", &self.internal_ip_address)?;
        let internal_ports = match (self.internal_port, self.internal_port_range.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "internal_port_range",
                    "give either internal_port or internal_port_range, not both",
                ));
            }
            (Some(port), None) => PortRange::single(parse_port("internal_port", port)?),
            (None, Some(range)) => parse_port_range("internal_port_range", range)?,
            (None, None) => {
                return Err(FieldError::new(
                    "internal_port",
                    "is required (or internal_port_range)",
                ));
            }
        };
        let external_ports = match (self.external_port, self.external_port_range.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "external_port_range",
                    "give either external_port or external_port_range, not both",
                ));
            }
            (Some(port), None) => Some(PortRange::single(parse_port("external_port", port)?)),
            (None, Some(range)) => Some(parse_port_range("external_port_range", range)?),
            (None, None) => None,
        };
        if let Some(external) = external_ports {
            // The size rules; the operator's cap on sizes is the server's.
            check_port_mapping(external, internal_ports, u32::MAX)
                .map_err(|e| FieldError::new("internal_port_range", e.to_string()))?;
        }
        let proxy_protocol = self
            .proxy_protocol
            .as_deref()
            .map(parse_proxy_protocol)
            .transpose()?
            .unwrap_or_default();
        if proxy_protocol != ProxyProtocol::None && protocol != Protocol::Tcp {
            return Err(FieldError::new(
                "proxy_protocol",
                format!(
                    "{proxy_protocol} is for tcp forwards only: the PROXY protocol is a stream header (use none on {protocol})"
                ),
            ));
        }
        let controls = Controls::new(
            self.allowed_cidrs
                .as_deref()
                .map(parse_cidrs)
                .transpose()?
                .unwrap_or_default(),
            self.max_connections
                .map(parse_max_connections)
                .transpose()?,
            proxy_protocol,
        );
        Ok(NewForward {
            protocol,
            internal_ip_address,
            internal_ports,
            external_ports,
            external_address: self
                .external_address
                .as_deref()
                .map(|ip| parse_ip("external_address", ip))
                .transpose()?,
            instance_id: self
                .instance_id
                .as_deref()
                .map(|id| check_text("instance_id", id, false))
                .transpose()?,
            description: check_text(
                "description",
                self.description.as_deref().unwrap_or(""),
                true,
            )?,
            proxy: self
                .proxy
                .as_deref()
                .map(|host| check_text("proxy", host, false))
                .transpose()?,
            controls,
        })
    }
}

/// Fields a forward's owner may change. Omitted fields keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardUpdate {
    /// New target address (IPv4 or IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_ip_address: Option<String>,
    /// New target port, 1-65535; a range forward's internal range moves to
    /// start there (and must still end by 65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 65535)]
    pub internal_port: Option<i64>,
    /// Free text, at most 255 characters, without control or bidirectional
    /// formatting characters; `""` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028\\u2029\\u202A-\\u202E\\u2066-\\u2069]*$"
    )]
    pub description: Option<String>,
    /// A new allowlist, replacing the old one; `[]` allows everyone. As on
    /// create; the proxy applies it at once, keeping established
    /// connections (only new ones are checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 10000)]
    pub allowed_cidrs: Option<Vec<String>>,
    /// A new limit, 1-1000000; `null` removes it. Connections open over a
    /// lowered limit are not cut; new ones are refused until fewer are open.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_or_null"
    )]
    #[schema(value_type = Option<i64>, nullable, minimum = 1, maximum = 1000000)]
    pub max_connections: Option<Option<i64>>,
    /// A new PROXY protocol setting: `none`, `v1` or `v2` (TCP forwards on a
    /// `relay` proxy only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ProxyProtocolName>)]
    pub proxy_protocol: Option<String>,
}

/// `Some(None)` for an explicit `null`, so that an update can tell "remove
/// the limit" from "keep it" (field absent: `None`, by `default`).
fn present_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardUpdateBody {
    pub forward: ForwardUpdate,
}

/// A validated [`ForwardUpdate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardChanges {
    pub internal_ip_address: Option<IpAddr>,
    pub internal_port: Option<u16>,
    pub description: Option<String>,
    /// The new allowlist, canonical (sorted, without duplicates).
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// `Some(None)` removes the limit.
    pub max_connections: Option<Option<u32>>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl ForwardUpdate {
    pub fn validate(&self) -> Result<ForwardChanges, FieldError> {
        Ok(ForwardChanges {
            internal_ip_address: self
                .internal_ip_address
                .as_deref()
                .map(|ip| parse_ip("internal_ip_address", ip))
                .transpose()?,
            internal_port: self
                .internal_port
                .map(|port| parse_port("internal_port", port))
                .transpose()?,
            description: self
                .description
                .as_deref()
                .map(|text| check_text("description", text, true))
                .transpose()?,
            allowed_cidrs: self
                .allowed_cidrs
                .as_deref()
                .map(|cidrs| {
                    parse_cidrs(cidrs)
                        .map(|list| Controls::new(list, None, ProxyProtocol::None))
                        .map(|c| c.allowed_cidrs.to_vec())
                })
                .transpose()?,
            max_connections: self
                .max_connections
                .map(|limit| limit.map(parse_max_connections).transpose())
                .transpose()?,
            proxy_protocol: self
                .proxy_protocol
                .as_deref()
                .map(parse_proxy_protocol)
                .transpose()?,
        })
    }
}

/// Sort direction of a list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortDir {
    #[default]
    Asc,
    Desc,
}

/// Fields a forward list can be sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    #[default]
    CreatedAt,
    UpdatedAt,
    Id,
    ExternalPort,
    InternalPort,
    Status,
    Protocol,
}

impl SortKey {
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::CreatedAt => "created_at",
            SortKey::UpdatedAt => "updated_at",
            SortKey::Id => "id",
            SortKey::ExternalPort => "external_port",
            SortKey::InternalPort => "internal_port",
            SortKey::Status => "status",
            SortKey::Protocol => "protocol",
        }
    }
}

/// Query parameters of `GET /v1/forwards`: filters, pagination and sorting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForwardListQuery {
    pub instance_id: Option<String>,
    /// `tcp` or `udp`.
    #[param(value_type = Option<ProtocolName>)]
    pub protocol: Option<String>,
    /// `PENDING`, `ACTIVE`, `ERROR` or `DELETING`.
    #[param(value_type = Option<StatusName>)]
    pub status: Option<String>,
    pub external_address: Option<String>,
    /// Forwards holding this external port, alone or inside their range.
    #[serde(default, deserialize_with = "query_port")]
    #[param(minimum = 1, maximum = 65535)]
    pub external_port: Option<u16>,
    pub internal_ip_address: Option<String>,
    pub proxy: Option<String>,
    /// Filter by project (admin, with `all_projects`).
    pub project_id: Option<String>,
    /// List every project's forwards (admin only).
    pub all_projects: Option<bool>,
    /// Page size, 1-1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Id of the last forward of the previous page.
    pub marker: Option<String>,
    #[param(value_type = Option<SortKey>)]
    pub sort_key: Option<SortKey>,
    #[param(value_type = Option<SortDir>)]
    pub sort_dir: Option<SortDir>,
}

/// A proxy (forwarding node) as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Proxy {
    pub host: String,
    /// Data-plane backend: `relay`, `nft`, `iptables` or `socat`.
    pub backend: String,
    pub external_addresses: Vec<String>,
    /// Pool for automatically allocated external ports, e.g. `20000-40000`.
    pub port_range: String,
    /// `up` or `down` (no heartbeat within `agent_down_time`).
    pub state: String,
    /// RFC 3339, UTC.
    pub last_heartbeat: Option<String>,
    pub forward_count: u64,
    /// External ports its forwards hold: a port range counts each of its
    /// ports. This, not `forward_count`, is what placement weighs.
    #[serde(default)]
    pub port_count: u64,
    /// Share of the port pool in use (`port_count` over the pool's ports,
    /// for both protocols on every external address), 0.0-1.0.
    pub load: f64,
    /// For an address group (`host` = `group:NAME`, `external_addresses` =
    /// its virtual addresses): its members and which holds the addresses;
    /// `null` for a proxy node.
    #[serde(default)]
    pub group: Option<ProxyGroup>,
    /// For a proxy node, the address groups it is a member of.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// An address group as the proxies listing shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProxyGroup {
    pub name: String,
    /// VRRP's virtual router id of the group.
    pub virtual_router_id: u8,
    /// The member holding the virtual addresses; `null` while none does.
    pub holder: Option<String>,
    /// More than one member says it holds the addresses: the members do
    /// not hear each other (split brain); see docs/cluster.md.
    pub split_brain: bool,
    pub members: Vec<ProxyGroupMember>,
}

/// One member of an address group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProxyGroupMember {
    pub host: String,
    /// `up` or `down`, as for proxies.
    pub state: String,
    /// Whether it holds the virtual addresses (as of its last heartbeat).
    pub holder: bool,
    /// keepalived on the member: `running`, what is wrong with it, or
    /// `refused: …` when the server refused the member (it then carries
    /// none of the group's forwards).
    pub keepalived: String,
    /// RFC 3339, UTC.
    pub last_report: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProxyBody {
    pub proxy: Proxy,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProxyList {
    pub proxies: Vec<Proxy>,
}

/// One API version, as in every OpenStack version document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Version {
    pub id: String,
    pub status: String,
    pub links: Vec<Link>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<Version>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionBody {
    pub version: Version,
}

/// `GET /healthcheck` as JSON (oslo.middleware's healthcheck, with
/// Navigator's per-check map). Anonymous callers get `status`, `checks`
/// and `reasons`; admins and callers on loopback also get the detailed
/// fields when `[healthcheck] detailed` is on or `?detailed=true` asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `OK`, `DEGRADED` (a check failed) or `DISABLED` (the
    /// `[healthcheck] disable_by_file_path` file exists: draining).
    pub status: String,
    /// Per dependency (`database`, and `rabbitmq` in cluster mode): `ok` or
    /// `unavailable`. The cause is in the server log, with the request id of
    /// the answer. Empty when disabled by file.
    pub checks: std::collections::BTreeMap<String, String>,
    /// oslo's reasons: one short line per failure (`database unavailable`,
    /// `DISABLED BY FILE`); empty when healthy.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Whether the detailed fields below are present.
    #[serde(default)]
    pub detailed: bool,
    /// Detailed only: the server's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Detailed only: the server's `[DEFAULT] host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Detailed only: every check with its duration and error text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<HealthCheckDetail>,
}

/// One check of a detailed `GET /healthcheck` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthCheckDetail {
    /// `database`, `rabbitmq` or `disable_by_file`.
    pub name: String,
    /// `ok` or `unavailable` (`disabled` for the file).
    pub status: String,
    /// How long the check took, in milliseconds (each is bounded by a
    /// 2-second timeout).
    pub duration_ms: u64,
    /// The error, as the driver or client said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Query parameters of `GET /healthcheck`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// Ask for the detailed answer (versions, check durations, error
    /// texts). Honoured only for admins (a valid admin token) and callers
    /// on loopback; others get the short answer.
    pub detailed: Option<bool>,
}

/// A port in a query string, 1-65535 in plain digits (serde's `u16` would
/// also take `+80`). Numbers are accepted too, for other encodings.
fn query_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(u64),
        Text(String),
    }
    let port = match Given::deserialize(d)? {
        Given::Number(n) => u16::try_from(n).ok(),
        Given::Text(text) => parse_port_number(&text),
    };
    match port {
        Some(port) if port != 0 => Ok(Some(port)),
        _ => Err(serde::de::Error::custom(
            "invalid external_port: expected a port 1-65535 in plain digits",
        )),
    }
}

/// Every entry of `allowed_cidrs`, naming the first bad one; at most
/// [`MAX_ALLOWED_CIDRS`] (the server's `[api] max_allowed_cidrs` may be
/// lower, and is checked by the server).
pub fn parse_cidrs(values: &[String]) -> Result<Vec<IpNet>, FieldError> {
    if values.len() > MAX_ALLOWED_CIDRS {
        return Err(FieldError::new(
            "allowed_cidrs",
            format!(
                "has {} entries; at most {MAX_ALLOWED_CIDRS} are allowed",
                values.len()
            ),
        ));
    }
    values
        .iter()
        .map(|value| parse_cidr(value).map_err(|e| FieldError::new("allowed_cidrs", e.to_string())))
        .collect()
}

/// `max_connections`: 1 to [`MAX_CONNECTIONS`].
pub fn parse_max_connections(value: i64) -> Result<u32, FieldError> {
    match u32::try_from(value) {
        Ok(n) if (1..=MAX_CONNECTIONS).contains(&n) => Ok(n),
        _ => Err(FieldError::new(
            "max_connections",
            format!("{value} is outside 1-{MAX_CONNECTIONS} (use null for no limit)"),
        )),
    }
}

/// `proxy_protocol`: `none`, `v1` or `v2`.
pub fn parse_proxy_protocol(value: &str) -> Result<ProxyProtocol, FieldError> {
    value.parse().map_err(|_| {
        FieldError::new(
            "proxy_protocol",
            format!("{value:?} is not one of none, v1, v2"),
        )
    })
}

fn parse_protocol(value: &str) -> Result<Protocol, FieldError> {
    value
        .parse()
        .map_err(|_| FieldError::new("protocol", format!("{value:?} is not one of tcp, udp")))
}

/// Validates a status filter value.
pub fn parse_status(value: &str) -> Result<ForwardStatus, FieldError> {
    value.parse().map_err(|_| {
        FieldError::new(
            "status",
            format!("{value:?} is not one of PENDING, ACTIVE, ERROR, DELETING"),
        )
    })
}

/// Validates a protocol filter value.
pub fn parse_protocol_filter(value: &str) -> Result<Protocol, FieldError> {
    parse_protocol(value)
}

pub fn parse_ip(field: &'static str, value: &str) -> Result<IpAddr, FieldError> {
    value
        .parse()
        .map_err(|_| FieldError::new(field, format!("{value:?} is not an IPv4 or IPv6 address")))
}

fn parse_port(field: &'static str, value: i64) -> Result<u16, FieldError> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(FieldError::new(
            field,
            format!("{value} is outside the port range 1-65535"),
        )),
    }
}

/// `N` or `N:M` (Neutron's notation) with ports 1-65535 and N <= M.
pub fn parse_port_range(field: &'static str, value: &str) -> Result<PortRange, FieldError> {
    let bad = || {
        FieldError::new(
            field,
            format!(
                "{value:?} is not a port range: expected N or N:M with ports 1-65535 and N <= M, e.g. 9000:9100"
            ),
        )
    };
    // Plain digits only: `+80`, ` 80` or `080` are refused, not read as 80.
    let (first, last) = value.split_once(':').unwrap_or((value, value));
    let first = parse_port_number(first).ok_or_else(bad)?;
    let last = parse_port_number(last).ok_or_else(bad)?;
    PortRange::new(first, last).map_err(|_| bad())
}

fn check_text(field: &'static str, value: &str, may_be_empty: bool) -> Result<String, FieldError> {
    if !may_be_empty && value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(FieldError::new(
            field,
            format!("is longer than {MAX_TEXT_LEN} characters"),
        ));
    }
    if let Some(c) = hidden_char(value) {
        return Err(FieldError::new(
            field,
            format!(
                "must not contain control, line-separator or bidirectional formatting characters (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    Ok(value.to_owned())
}

/// The first character of `text` that free text must not hold: control
/// characters (C0, DEL, C1), the line and paragraph separators, and the
/// bidirectional formatting characters, which make text display in another
/// order than it is stored (a description that reads as something else in
/// a terminal, Horizon or the dashboard: "Trojan Source").
pub fn hidden_char(text: &str) -> Option<char> {
    text.chars().find(|c| {
        c.is_control()
            || matches!(
                c,
                '\u{061C}'
                    | '\u{200E}'
                    | '\u{200F}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(json: serde_json::Value) -> Result<NewForward, String> {
        let body: ForwardCreateBody = serde_json::from_value(json).map_err(|e| e.to_string())?;
        body.forward.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn valid_create_is_accepted() {
        let got = create(serde_json::json!({"forward": {
            "protocol": "udp", "internal_ip_address": "2001:db8::5", "internal_port": 53,
            "external_port": 20053, "description": "dns"
        }}))
        .unwrap();
        assert_eq!(got.protocol, Protocol::Udp);
        assert_eq!(got.external_ports, PortRange::new(20053, 20053).ok());
        assert_eq!(got.internal_ports, PortRange::single(53));
        assert_eq!(got.description, "dns");
    }

    #[test]
    fn invalid_fields_are_named() {
        let base = serde_json::json!({"protocol": "tcp", "internal_ip_address": "10.0.0.5", "internal_port": 22});
        let cases = [
            (
                "protocol",
                serde_json::json!("sctp"),
                "invalid protocol: \"sctp\" is not one of tcp, udp",
            ),
            (
                "internal_ip_address",
                serde_json::json!("10.0.0.256"),
                "invalid internal_ip_address: \"10.0.0.256\" is not an IPv4 or IPv6 address",
            ),
            (
                "internal_port",
                serde_json::json!(0),
                "invalid internal_port: 0 is outside the port range 1-65535",
            ),
            (
                "internal_port",
                serde_json::json!(65536),
                "invalid internal_port: 65536 is outside the port range 1-65535",
            ),
            (
                "external_port",
                serde_json::json!(-1),
                "invalid external_port: -1 is outside the port range 1-65535",
            ),
            (
                "instance_id",
                serde_json::json!(""),
                "invalid instance_id: must not be empty",
            ),
            (
                "description",
                serde_json::json!("x".repeat(256)),
                "invalid description: is longer than 255 characters",
            ),
        ];
        for (field, value, expected) in cases {
            let mut forward = base.clone();
            forward[field] = value;
            assert_eq!(
                create(serde_json::json!({"forward": forward})),
                Err(expected.to_owned())
            );
        }
    }

    #[test]
    fn port_ranges_follow_neutrons_rules() {
        let base = serde_json::json!({"protocol": "tcp", "internal_ip_address": "10.0.0.5"});
        let with = |fields: serde_json::Value| {
            let mut forward = base.clone();
            for (k, v) in fields.as_object().unwrap() {
                forward[k] = v.clone();
            }
            create(serde_json::json!({ "forward": forward }))
        };
        let r = |a, b| PortRange::new(a, b).unwrap();
        let same_size = with(serde_json::json!({"internal_port_range": "8000:8009", "external_port_range": "9000:9009"})).unwrap();
        assert_eq!(
            (same_size.internal_ports, same_size.external_ports),
            (r(8000, 8009), Some(r(9000, 9009)))
        );
        let to_one =
            with(serde_json::json!({"internal_port": 22, "external_port_range": "9000:9009"}))
                .unwrap();
        assert_eq!(to_one.internal_ports, r(22, 22));
        let allocated = with(serde_json::json!({"internal_port_range": "8000:8009"})).unwrap();
        assert_eq!(allocated.external_ports, None);
        let cases = [
            (
                serde_json::json!({"internal_port": 22, "internal_port_range": "22:23"}),
                "invalid internal_port_range: give either internal_port or internal_port_range, not both",
            ),
            (
                serde_json::json!({"internal_port": 22, "external_port": 1, "external_port_range": "1:2"}),
                "invalid external_port_range: give either external_port or external_port_range, not both",
            ),
            (
                serde_json::json!({"internal_port_range": "8000-8009"}),
                "invalid internal_port_range: \"8000-8009\" is not a port range: expected N or N:M with ports 1-65535 and N <= M, e.g. 9000:9100",
            ),
            (
                serde_json::json!({"internal_port": 22, "external_port_range": "9009:9000"}),
                "invalid external_port_range: \"9009:9000\" is not a port range: expected N or N:M with ports 1-65535 and N <= M, e.g. 9000:9100",
            ),
            (
                serde_json::json!({"internal_port": 22, "external_port_range": "0:10"}),
                "invalid external_port_range: \"0:10\" is not a port range: expected N or N:M with ports 1-65535 and N <= M, e.g. 9000:9100",
            ),
            (
                serde_json::json!({"internal_port_range": "8000:8001", "external_port_range": "9000:9009"}),
                "invalid internal_port_range: the internal range 8000:8001 has 2 ports but the external range 9000:9009 has 10: they must be the same size, or the internal range a single port",
            ),
            (
                serde_json::json!({"internal_port_range": "8000:8001", "external_port": 9000}),
                "invalid internal_port_range: the internal range 8000:8001 has 2 ports but the external range 9000:9000 has 1: they must be the same size, or the internal range a single port",
            ),
            (
                serde_json::json!({}),
                "invalid internal_port: is required (or internal_port_range)",
            ),
        ];
        for (fields, expected) in cases {
            assert_eq!(with(fields.clone()), Err(expected.to_owned()), "{fields}");
        }
    }

    #[test]
    fn ports_and_ranges_have_one_spelling() {
        let base = serde_json::json!({"protocol": "tcp", "internal_ip_address": "10.0.0.5", "internal_port": 22});
        for odd in [
            "+9000:9009",
            "9000:+9009",
            " 9000:9009",
            "9000 : 9009",
            "09000:9009",
            "+9000",
        ] {
            let mut forward = base.clone();
            forward["external_port_range"] = serde_json::json!(odd);
            let err = create(serde_json::json!({ "forward": forward })).unwrap_err();
            assert!(
                err.starts_with("invalid external_port_range:"),
                "{odd:?}: {err}"
            );
        }
        // The query's external_port: tests/api.rs, through the router.
    }

    #[test]
    fn free_text_refuses_control_and_bidi_characters() {
        let base = serde_json::json!({"protocol": "tcp", "internal_ip_address": "10.0.0.5", "internal_port": 22});
        for field in ["description", "instance_id", "proxy"] {
            for c in [
                '\u{0}', '\n', '\u{7f}', '\u{85}', '\u{061C}', '\u{200E}', '\u{200F}', '\u{2028}',
                '\u{2029}', '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}',
            ] {
                let mut forward = base.clone();
                forward[field] = serde_json::json!(format!("ab{c}cd"));
                let err = create(serde_json::json!({ "forward": forward })).unwrap_err();
                let code = format!("U+{:04X}", u32::from(c));
                assert!(
                    err.starts_with(&format!("invalid {field}: must not contain"))
                        && err.contains(&code),
                    "{field} {code}: {err}"
                );
            }
        }
        // Other scripts, emoji (with their joiners) and accents are text.
        let mut forward = base.clone();
        forward["description"] = serde_json::json!("web – Ωμέγα, עברית, 👩\u{200D}💻");
        assert!(create(serde_json::json!({ "forward": forward })).is_ok());
        let update = ForwardUpdate {
            description: Some("\u{202E}gnp.exe".into()),
            ..Default::default()
        };
        assert_eq!(update.validate().unwrap_err().field, "description");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = create(serde_json::json!({"forward": {
            "protocol": "tcp", "internal_ip_address": "10.0.0.5", "internal_port": 22, "external_prot": 1
        }}))
        .unwrap_err();
        assert!(err.contains("unknown field `external_prot`"), "{err}");
    }

    #[test]
    fn update_validates_only_given_fields() {
        let update = ForwardUpdate {
            internal_port: Some(8080),
            ..Default::default()
        };
        assert_eq!(
            update.validate(),
            Ok(ForwardChanges {
                internal_port: Some(8080),
                ..Default::default()
            })
        );
        let bad = ForwardUpdate {
            internal_ip_address: Some("nope".into()),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "internal_ip_address");
    }

    #[test]
    fn controls_are_validated_and_named() {
        let base = serde_json::json!({"protocol": "tcp", "internal_ip_address": "10.0.0.5", "internal_port": 22});
        let with = |fields: serde_json::Value| {
            let mut forward = base.clone();
            for (k, v) in fields.as_object().unwrap() {
                forward[k] = v.clone();
            }
            create(serde_json::json!({ "forward": forward }))
        };
        let ok = with(serde_json::json!({
            "allowed_cidrs": ["2001:db8::/32", "192.0.2.7", "192.0.2.7/32", "10.0.0.0/8"],
            "max_connections": 1000000, "proxy_protocol": "v2"
        }))
        .unwrap();
        let shown: Vec<String> = ok
            .controls
            .allowed_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert_eq!(ok.controls.max_connections, Some(1_000_000));
        assert_eq!(ok.controls.proxy_protocol, ProxyProtocol::V2);
        assert!(
            with(serde_json::json!({"max_connections": null, "allowed_cidrs": []}))
                .unwrap()
                .controls
                .is_default()
        );
        let cases = [
            (
                serde_json::json!({"allowed_cidrs": ["10.0.0.1/8"]}),
                "invalid allowed_cidrs: '10.0.0.1/8' has host bits set: did you mean 10.0.0.0/8?",
            ),
            (
                serde_json::json!({"allowed_cidrs": ["10.0.0.0/33"]}),
                "invalid allowed_cidrs: '10.0.0.0/33' is not a CIDR: expected an IPv4 or IPv6 network such as 192.0.2.0/24 or 2001:db8::/32",
            ),
            (
                serde_json::json!({"max_connections": 0}),
                "invalid max_connections: 0 is outside 1-1000000 (use null for no limit)",
            ),
            (
                serde_json::json!({"max_connections": -5}),
                "invalid max_connections: -5 is outside 1-1000000 (use null for no limit)",
            ),
            (
                serde_json::json!({"max_connections": 1000001}),
                "invalid max_connections: 1000001 is outside 1-1000000 (use null for no limit)",
            ),
            (
                serde_json::json!({"proxy_protocol": "v3"}),
                "invalid proxy_protocol: \"v3\" is not one of none, v1, v2",
            ),
            (
                serde_json::json!({"proxy_protocol": "v1", "protocol": "udp"}),
                "invalid proxy_protocol: v1 is for tcp forwards only: the PROXY protocol is a stream header (use none on udp)",
            ),
        ];
        for (fields, expected) in cases {
            assert_eq!(with(fields.clone()), Err(expected.to_owned()), "{fields}");
        }
        let too_many: Vec<String> = (0..=MAX_ALLOWED_CIDRS)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        assert!(
            with(serde_json::json!({"allowed_cidrs": too_many}))
                .unwrap_err()
                .starts_with("invalid allowed_cidrs: has 10001 entries")
        );
        // Wrong JSON types name the field too (serde's message).
        for wrong in [
            serde_json::json!({"allowed_cidrs": "10.0.0.0/8"}),
            serde_json::json!({"max_connections": "5"}),
            serde_json::json!({"max_connections": 1.5}),
            serde_json::json!({"proxy_protocol": 2}),
        ] {
            assert!(with(wrong.clone()).is_err(), "{wrong}");
        }
    }

    #[test]
    fn update_tells_null_from_absent() {
        let parse = |json: serde_json::Value| {
            serde_json::from_value::<ForwardUpdateBody>(serde_json::json!({ "forward": json }))
                .unwrap()
                .forward
                .validate()
        };
        assert_eq!(parse(serde_json::json!({})).unwrap().max_connections, None);
        assert_eq!(
            parse(serde_json::json!({"max_connections": null}))
                .unwrap()
                .max_connections,
            Some(None)
        );
        assert_eq!(
            parse(serde_json::json!({"max_connections": 9}))
                .unwrap()
                .max_connections,
            Some(Some(9))
        );
        let cleared = parse(serde_json::json!({"allowed_cidrs": []})).unwrap();
        assert_eq!(cleared.allowed_cidrs, Some(vec![]));
        assert_eq!(
            parse(serde_json::json!({"allowed_cidrs": ["192.0.2.1/24"]}))
                .unwrap_err()
                .field,
            "allowed_cidrs"
        );
        assert_eq!(
            parse(serde_json::json!({"max_connections": 0}))
                .unwrap_err()
                .field,
            "max_connections"
        );
        // The client sends null for "remove" and nothing for "keep".
        let body = ForwardUpdate {
            max_connections: Some(None),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"max_connections": null})
        );
    }
}
