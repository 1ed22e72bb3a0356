//! Value parsers for the options the agent reads from `navigator.conf`, and
//! the construction of the data-plane backend from them.
//!
//! `navigator-server` (all-in-one) and `navigator-agent` read the same keys of
//! the same file; both call these functions, so a value means the same to both
//! and is refused with the same words. Each parser takes the trimmed text and
//! returns what is allowed on error; the caller adds file, section and key.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use navigator_core::PortRange;
use navigator_dataplane::{
    Backend, ConntrackCleanup, IptablesBackend, IptablesConfig, KernelConfig, NftBackend,
    NftConfig, RelayBackend, RelayBackendConfig, SocatBackend, SocatConfig,
};
use navigator_relay::RelayConfig;

/// oslo.config's BoolOpt spellings.
pub fn boolean(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// A whole number of seconds, 1 to 86400.
pub fn seconds(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 && n <= 86_400 => Ok(Duration::from_secs(n)),
        _ => Err("expected a whole number of seconds from 1 to 86400".into()),
    }
}

/// A comma-separated list; empty items are skipped.
pub fn list<T: FromStr>(value: &str, what: &str) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<T>()
                .map_err(|_| format!("{item:?} is not {what}"))
        })
        .collect()
}

/// `[DEFAULT] host`: the system host name when empty.
pub fn host_name(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Ok(system_host_name())
    } else if value.len() > 255 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("expected a host name without spaces, at most 255 characters".into())
    } else {
        Ok(value.to_owned())
    }
}

/// The host name, from the kernel; `localhost` if it cannot be read.
pub fn system_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `[agent] backend`.
pub fn backend(value: &str) -> Result<String, String> {
    match value {
        "relay" | "nft" | "iptables" | "socat" => Ok(value.to_owned()),
        _ => Err("expected relay, nft, iptables or socat".into()),
    }
}

/// `[agent] nft_table`: a name nft accepts without quoting.
pub fn nft_table(value: &str) -> Result<String, String> {
    if !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(value.to_owned())
    } else {
        Err("expected a table name of letters, digits, _ and -, at most 64 characters".into())
    }
}

/// `[agent] external_addresses`: at least one unicast address.
pub fn external_addresses(value: &str) -> Result<Vec<IpAddr>, String> {
    let addresses: Vec<IpAddr> = list(value, "an IPv4 or IPv6 address")?;
    if addresses.is_empty() {
        return Err("at least one address is needed".into());
    }
    if let Some(bad) = addresses
        .iter()
        .find(|a| a.is_unspecified() || a.is_multicast())
    {
        return Err(format!(
            "{bad} cannot be listened on by a forward; give a unicast address of this host"
        ));
    }
    Ok(addresses)
}

/// `[agent] port_range`, FIRST-LAST.
pub fn port_range(value: &str) -> Result<PortRange, String> {
    value.parse::<PortRange>().map_err(|e| e.to_string())
}

/// `[relay] max_connections_per_forward`: 0 is unlimited (`None`).
pub fn max_connections(value: &str) -> Result<Option<usize>, String> {
    match value.parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err("expected a whole number (0 for unlimited)".into()),
    }
}

/// A count where 0 means "derive it from the open-file limit" (`None`), as
/// `[api] max_connections`, `[relay] max_connections` and
/// `[relay] max_udp_sessions`.
pub fn auto_count(value: &str) -> Result<Option<usize>, String> {
    match value.parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(n) if n <= 10_000_000 => Ok(Some(n)),
        _ => Err(
            "expected a whole number up to 10000000 (0 derives it from the open-file limit)".into(),
        ),
    }
}

/// `[relay] tcp_idle_timeout`: seconds up to a week; 0 is never (`None`).
pub fn idle_timeout(value: &str) -> Result<Option<Duration>, String> {
    match value.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) if n <= 604_800 => Ok(Some(Duration::from_secs(n))),
        _ => Err("expected a whole number of seconds from 0 (never) to 604800".into()),
    }
}

/// `[relay] max_udp_sessions_per_forward`: 1 to 1,000,000.
pub fn udp_sessions(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err("expected a number of sessions from 1 to 1000000".into()),
    }
}

/// What [`make_backend`] needs: `[agent] backend` and the options of each
/// backend.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// relay, nft, iptables or socat (see [`backend`]).
    pub backend: String,
    /// The agent's host name, which tags the socat processes it owns.
    pub host: String,
    pub conntrack_cleanup: ConntrackCleanup,
    pub fix_sysctls: bool,
    pub full_sync_interval: Duration,
    pub nft_table: String,
    /// `comment "fwd <id>"` on every nft map element (operator convenience).
    pub nft_element_comments: bool,
    pub iptables_variant: navigator_dataplane::iptables::Variant,
    /// `[relay] max_connections_per_forward`: shared by a forward's ports.
    pub max_connections_per_forward: Option<usize>,
    /// `[relay] max_connections`, resolved against the fd budget
    /// ([`crate::fd_budget`]): relayed TCP connections of the process.
    pub max_connections: Option<usize>,
    /// `[relay] max_udp_sessions`, resolved like `max_connections`.
    pub max_udp_sessions: Option<usize>,
    pub max_udp_sessions_per_forward: usize,
    /// Open files the relay may hold in all (listeners, connections, UDP
    /// sessions, splice pipes); `None` is unbounded.
    pub relay_fds: Option<usize>,
    pub tcp_idle_timeout: Option<Duration>,
    pub udp_idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long relayed connections may finish after a shutdown.
    pub shutdown_grace: Duration,
    /// The virtual addresses of this node's address groups: the relay
    /// listens on them whether the node holds them or not (`IP_FREEBIND`).
    pub freebind_addresses: Vec<IpAddr>,
}

/// The data plane `[agent] backend` names.
pub fn make_backend(options: &BackendOptions) -> Arc<dyn Backend> {
    let kernel = KernelConfig {
        conntrack_cleanup: options.conntrack_cleanup,
        fix_sysctls: options.fix_sysctls,
        full_sync_interval: options.full_sync_interval,
        ..KernelConfig::default()
    };
    match options.backend.as_str() {
        "nft" => Arc::new(NftBackend::new(NftConfig {
            kernel,
            table: options.nft_table.clone(),
            element_comments: options.nft_element_comments,
        })),
        "iptables" => Arc::new(IptablesBackend::new(IptablesConfig {
            kernel,
            variant: options.iptables_variant,
        })),
        "socat" => Arc::new(SocatBackend::new(SocatConfig {
            owner_tag: format!("navigator-agent:{}", options.host),
            udp_idle_timeout: options.udp_idle_timeout,
            ..SocatConfig::default()
        })),
        _ => Arc::new(RelayBackend::new(RelayBackendConfig {
            relay: RelayConfig {
                tcp_idle_timeout: options.tcp_idle_timeout,
                max_connections: options.max_connections,
                max_udp_sessions: options.max_udp_sessions,
                max_fds: options.relay_fds,
                udp_idle_timeout: options.udp_idle_timeout,
                connect_timeout: options.connect_timeout,
                shutdown_grace: options.shutdown_grace,
                freebind: options.freebind_addresses.clone(),
                ..RelayConfig::default()
            },
            max_connections_per_forward: options.max_connections_per_forward,
            max_udp_sessions_per_forward: Some(options.max_udp_sessions_per_forward),
        })),
    }
}

/// Logs what the backend's host check finds, before the first forward
/// arrives; forwards it blocks are reported ERROR with the same words. Also
/// warns when the port pool `pool` overlaps the kernel's ephemeral ports,
/// whatever the backend.
pub async fn log_preflight(backend: &dyn Backend, pool: PortRange) {
    let pool_findings =
        navigator_dataplane::preflight::port_pool(&navigator_dataplane::Host::local(), pool).await;
    for finding in backend
        .preflight(&[])
        .await
        .into_iter()
        .chain(pool_findings)
    {
        match finding.severity {
            navigator_dataplane::Severity::Blocking => {
                tracing::error!(backend = backend.name(), "host not ready: {finding}")
            }
            navigator_dataplane::Severity::Warning => {
                tracing::warn!(backend = backend.name(), "host check: {finding}")
            }
        }
    }
}
