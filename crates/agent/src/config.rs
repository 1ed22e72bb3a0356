//! The part of `navigator.conf` that `navigator-agent` reads: the same file,
//! sections and keys as `navigator-server`, so that one file can serve a
//! whole node. Keys only the server reads are ignored here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use navigator_core::PortRange;
use navigator_rpc::RabbitOptions;
use navigator_rpc::broker::{
    DEPRECATED_NAMES, OPTION_NAMES, check_deprecated_name, check_transport_url, mask_url,
};

use crate::options::{self, BackendOptions};

/// How long relayed connections may finish after SIGTERM, as in the server.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Defaults of the keys the agent reads, as written in the file. They must
/// equal those of the server's option table (a server test checks this).
pub const DEFAULTS: &[(&str, &str, &str)] = &[
    ("DEFAULT", "host", ""),
    ("DEFAULT", "debug", "false"),
    ("DEFAULT", "log_format", "text"),
    ("DEFAULT", "log_file", ""),
    ("DEFAULT", "use_journal", "false"),
    ("DEFAULT", "transport_url", "inproc://"),
    ("oslo_messaging_rabbit", "ssl", "false"),
    ("oslo_messaging_rabbit", "ssl_ca_file", ""),
    ("oslo_messaging_rabbit", "ssl_cert_file", ""),
    ("oslo_messaging_rabbit", "ssl_key_file", ""),
    ("oslo_messaging_rabbit", "ssl_version", ""),
    ("oslo_messaging_rabbit", "ssl_enforce_fips_mode", "false"),
    ("agent", "backend", "relay"),
    ("agent", "conntrack_cleanup", "udp"),
    ("agent", "fix_sysctls", "false"),
    ("agent", "full_sync_interval", "600"),
    ("agent", "nft_table", "navigator"),
    ("agent", "nft_element_comments", "false"),
    ("agent", "iptables_variant", "auto"),
    ("agent", "external_addresses", "127.0.0.1,::1"),
    ("agent", "port_range", "20000-29999"),
    ("agent", "report_interval", "10"),
    ("agent", "handover", "true"),
    ("relay", "max_connections", "0"),
    ("relay", "max_connections_per_forward", "1024"),
    ("relay", "tcp_idle_timeout", "3600"),
    ("relay", "max_udp_sessions", "0"),
    ("relay", "max_udp_sessions_per_forward", "1024"),
    ("relay", "udp_idle_timeout", "60"),
    ("relay", "connect_timeout", "10"),
];

/// Every option's value in force, as written (the file's, else the
/// default), keyed by `(section, key)`: what SIGHUP compares to tell which
/// options changed. Its `Debug` shows keys only: values hold passwords.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OptionValues(pub BTreeMap<(&'static str, &'static str), String>);

impl std::fmt::Debug for OptionValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(
                self.0
                    .keys()
                    .map(|(section, key)| format!("[{section}] {key}")),
            )
            .finish()
    }
}

/// A configuration problem, named precisely enough to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid INI file: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: [{section}] {key} = {value:?}: {message}")]
    Value {
        path: String,
        section: &'static str,
        key: &'static str,
        value: String,
        message: String,
    },
    /// A `[vrrp]` or `[vrrp:NAME]` section.
    #[error(transparent)]
    Vrrp(#[from] crate::vrrp::VrrpConfigError),
}

/// The typed configuration of `navigator-agent`.
#[derive(Clone, Debug)]
pub struct AgentFileConfig {
    pub host: String,
    /// `[DEFAULT] debug`, `log_format`, `log_file`, `use_journal`.
    pub log: navigator_log::LogOptions,
    /// Always `rabbit://…`: the agent process has no other way to reach a server.
    pub transport_url: String,
    /// `[oslo_messaging_rabbit]`: TLS to RabbitMQ (the URL's query overrides it).
    pub rabbit: RabbitOptions,
    pub external_addresses: Vec<IpAddr>,
    pub port_range: PortRange,
    pub report_interval: Duration,
    /// `[agent] handover`: on SIGTERM under systemd (`NOTIFY_SOCKET`), hand
    /// the relay's sockets to the next process (`crate::handover`) instead
    /// of draining them.
    pub handover: bool,
    /// The relay's caps in force are `None` (unbounded) here until
    /// [`crate::fd_budget::FdBudget::apply`] resolves them at start-up.
    pub backend: BackendOptions,
    /// `[relay] max_connections` and `max_udp_sessions` as written
    /// (`None` = derive from the open-file limit).
    pub fd_wanted: crate::fd_budget::Wanted,
    /// Every key of [`DEFAULTS`] with its value in force (the file's, else
    /// the default), for SIGHUP to tell what changed.
    pub values: OptionValues,
    /// This node's address groups (`[vrrp]`, `[vrrp:NAME]`), if any.
    pub vrrp: Option<crate::vrrp::VrrpConfig>,
}

struct Raw {
    path: String,
    values: BTreeMap<(String, String), String>,
}

impl Raw {
    fn parse<T>(
        &self,
        section: &'static str,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let value = self
            .values
            .get(&(section.to_owned(), key.to_owned()))
            .cloned()
            .or_else(|| {
                DEFAULTS
                    .iter()
                    .find(|(s, k, _)| *s == section && *k == key)
                    .map(|(_, _, default)| (*default).to_owned())
            })
            .unwrap_or_default();
        parse(value.trim()).map_err(|message| ConfigError::Value {
            path: self.path.clone(),
            section,
            key,
            // A broker URL holds a password; the message must not.
            value: if key == "transport_url" {
                mask_url(&value)
            } else {
                value
            },
            message,
        })
    }
}

impl AgentFileConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<AgentFileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        AgentFileConfig::parse(&path.display().to_string(), &text)
    }

    /// Parses the text of a configuration file named `path` (for messages).
    pub fn parse(path: &str, text: &str) -> Result<AgentFileConfig, ConfigError> {
        let ini = ini::Ini::load_from_str_noescape(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut values = BTreeMap::new();
        for (section, properties) in ini.iter() {
            let section = section.unwrap_or("DEFAULT");
            for (key, value) in properties.iter() {
                values.insert((section.to_owned(), key.to_owned()), value.to_owned());
            }
        }
        let raw = Raw {
            path: path.to_owned(),
            values,
        };
        let host = raw.parse("DEFAULT", "host", options::host_name)?;
        let external_addresses =
            raw.parse("agent", "external_addresses", options::external_addresses)?;
        let backend = raw.parse("agent", "backend", options::backend)?;
        let vrrp = crate::vrrp::config::parse(path, &raw.values, &external_addresses, &backend)?;
        let freebind_addresses = vrrp
            .as_ref()
            .map(crate::vrrp::VrrpConfig::virtual_addresses)
            .unwrap_or_default();
        Ok(AgentFileConfig {
            vrrp,
            log: navigator_log::LogOptions {
                debug: raw.parse("DEFAULT", "debug", options::boolean)?,
                format: raw.parse("DEFAULT", "log_format", navigator_log::log_format)?,
                log_file: raw.parse("DEFAULT", "log_file", navigator_log::log_file)?,
                use_journal: raw.parse("DEFAULT", "use_journal", options::boolean)?,
            },
            transport_url: raw.parse("DEFAULT", "transport_url", |v| {
                if v.starts_with("rabbit://") {
                    check_transport_url(v)?;
                    Ok(v.to_owned())
                } else {
                    // inproc:// only exists inside one process.
                    Err(
                        "navigator-agent needs rabbit://USER:PASSWORD@HOST:PORT/VHOST; \
                         inproc:// works only inside navigator-server --all-in-one"
                            .into(),
                    )
                }
            })?,
            rabbit: {
                let mut rabbit = RabbitOptions::default();
                for name in OPTION_NAMES {
                    raw.parse("oslo_messaging_rabbit", name, |v| rabbit.set(name, v))?;
                }
                for (old, _) in DEPRECATED_NAMES {
                    for section in ["oslo_messaging_rabbit", "DEFAULT"] {
                        raw.parse(section, old, |v| check_deprecated_name(old, v))?;
                    }
                }
                rabbit
            },
            external_addresses,
            port_range: raw.parse("agent", "port_range", options::port_range)?,
            report_interval: raw.parse("agent", "report_interval", options::seconds)?,
            handover: raw.parse("agent", "handover", options::boolean)?,
            backend: BackendOptions {
                backend,
                conntrack_cleanup: raw.parse("agent", "conntrack_cleanup", |v| v.parse())?,
                fix_sysctls: raw.parse("agent", "fix_sysctls", options::boolean)?,
                full_sync_interval: raw.parse("agent", "full_sync_interval", options::seconds)?,
                nft_table: raw.parse("agent", "nft_table", options::nft_table)?,
                nft_element_comments: raw.parse(
                    "agent",
                    "nft_element_comments",
                    options::boolean,
                )?,
                iptables_variant: raw.parse("agent", "iptables_variant", |v| v.parse())?,
                max_connections_per_forward: raw.parse(
                    "relay",
                    "max_connections_per_forward",
                    options::max_connections,
                )?,
                max_connections: None,
                max_udp_sessions: None,
                relay_fds: None,
                max_udp_sessions_per_forward: raw.parse(
                    "relay",
                    "max_udp_sessions_per_forward",
                    options::udp_sessions,
                )?,
                tcp_idle_timeout: raw.parse("relay", "tcp_idle_timeout", options::idle_timeout)?,
                udp_idle_timeout: raw.parse("relay", "udp_idle_timeout", options::seconds)?,
                connect_timeout: raw.parse("relay", "connect_timeout", options::seconds)?,
                shutdown_grace: SHUTDOWN_GRACE,
                host: host.clone(),
                freebind_addresses,
            },
            fd_wanted: crate::fd_budget::Wanted {
                api: None,
                relay_connections: raw.parse("relay", "max_connections", options::auto_count)?,
                udp_sessions: raw.parse("relay", "max_udp_sessions", options::auto_count)?,
            },
            values: OptionValues(
                DEFAULTS
                    .iter()
                    .map(|(section, key, default)| {
                        let value = raw
                            .values
                            .get(&((*section).to_owned(), (*key).to_owned()))
                            .map_or(*default, String::as_str);
                        ((*section, *key), value.trim().to_owned())
                    })
                    .collect(),
            ),
            host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RABBIT: &str = "[DEFAULT]\ntransport_url = rabbit://u:p@127.0.0.1:5672/\n";

    #[test]
    fn reads_the_agent_keys_and_ignores_the_servers() {
        let text = format!(
            "{RABBIT}host = proxy-1\nbind_port = 1\n[agent]\nexternal_addresses = 192.0.2.1\nport_range = 30000-30010\nrpc_timeout = 3\n[database]\nconnection = sqlite:///x\n"
        );
        let config = AgentFileConfig::parse("t.conf", &text).unwrap();
        assert_eq!(config.host, "proxy-1");
        assert_eq!(config.backend.host, "proxy-1");
        assert_eq!(config.backend.backend, "relay");
        assert_eq!(config.port_range.to_string(), "30000-30010");
        assert_eq!(config.report_interval, Duration::from_secs(10));
        assert_eq!(config.backend.max_connections_per_forward, Some(1024));
        assert_eq!(config.backend.max_udp_sessions_per_forward, 1024);
        assert_eq!(
            config.backend.tcp_idle_timeout,
            Some(Duration::from_secs(3600))
        );
        // Resolved against the open-file limit at start-up.
        assert_eq!(config.backend.max_connections, None);
        assert_eq!(config.fd_wanted.relay_connections, None);
        let text = format!("{RABBIT}[relay]\nmax_connections = 100\nmax_udp_sessions = 50\n");
        let config = AgentFileConfig::parse("t.conf", &text).unwrap();
        assert_eq!(config.fd_wanted.relay_connections, Some(100));
        assert_eq!(config.fd_wanted.udp_sessions, Some(50));
        assert!(config.fd_wanted.api.is_none());
    }

    #[test]
    fn refuses_a_transport_other_than_rabbit() {
        for text in ["", "[DEFAULT]\ntransport_url = inproc://\n"] {
            let err = AgentFileConfig::parse("t.conf", text).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with("t.conf: [DEFAULT] transport_url = \"inproc://\": "),
                "{message}"
            );
        }
    }

    #[test]
    fn reads_the_rabbit_tls_options_and_checks_the_url() {
        let text = format!(
            "{RABBIT}[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = /etc/ca.pem\nssl_cert_file = /etc/c.pem\nssl_key_file = /etc/c.key\n"
        );
        let config = AgentFileConfig::parse("t.conf", &text).unwrap();
        assert!(config.rabbit.ssl);
        assert_eq!(
            config.rabbit.ssl_ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        assert_eq!(
            config.rabbit.ssl_key_file.as_deref(),
            Some(Path::new("/etc/c.key"))
        );
        let err = AgentFileConfig::parse(
            "t.conf",
            "[DEFAULT]\ntransport_url = rabbit://u:s3cret@h:5671/?ssl=1&rabbit_ha_queues=true\n",
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(
                "t.conf: [DEFAULT] transport_url = \"rabbit://u:***@h:5671/?ssl=1&rabbit_ha_queues=true\": query parameter rabbit_ha_queues is not supported"
            ),
            "{message}"
        );
        let err = AgentFileConfig::parse(
            "t.conf",
            &format!("{RABBIT}[oslo_messaging_rabbit]\nssl_version = SSLv3\n"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("t.conf: [oslo_messaging_rabbit] ssl_version = \"SSLv3\": ")
        );
        let err = AgentFileConfig::parse(
            "t.conf",
            &format!("{RABBIT}[oslo_messaging_rabbit]\nrabbit_use_ssl = true\n"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("deprecated name of [oslo_messaging_rabbit] ssl"),
            "{err}"
        );
    }

    #[test]
    fn log_options() {
        let config = AgentFileConfig::parse("t.conf", RABBIT).unwrap();
        assert_eq!(config.log, navigator_log::LogOptions::default());
        let text = format!(
            "{RABBIT}debug = true\nlog_format = json\nlog_file = /var/log/navigator/agent.log\nuse_journal = true\n"
        );
        let config = AgentFileConfig::parse("t.conf", &text).unwrap();
        assert!(config.log.debug && config.log.use_journal);
        assert_eq!(config.log.format, navigator_log::LogFormat::Json);
        assert_eq!(
            config
                .values
                .0
                .get(&("DEFAULT", "log_format"))
                .map(String::as_str),
            Some("json")
        );
        let err = AgentFileConfig::parse("t.conf", &format!("{RABBIT}log_format = syslog\n"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf: [DEFAULT] log_format = \"syslog\": expected text or json"
        );
    }

    #[test]
    fn address_groups_give_the_relay_its_freebind_addresses() {
        let text = format!(
            "{RABBIT}[agent]\nexternal_addresses = 192.0.2.11\n[vrrp:web]\nvirtual_addresses = 192.0.2.100/24\ninterface = eth0\nvirtual_router_id = 9\n"
        );
        let config = AgentFileConfig::parse("t.conf", &text).unwrap();
        let vrrp = config.vrrp.unwrap();
        assert_eq!(vrrp.groups[0].name, "web");
        assert_eq!(
            config.backend.freebind_addresses,
            vec!["192.0.2.100".parse::<IpAddr>().unwrap()]
        );
        let config = AgentFileConfig::parse("t.conf", RABBIT).unwrap();
        assert!(config.vrrp.is_none() && config.backend.freebind_addresses.is_empty());
        let text = format!(
            "{RABBIT}[agent]\nbackend = socat\n[vrrp:web]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 9\n"
        );
        let err = AgentFileConfig::parse("t.conf", &text).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("t.conf: [vrrp:web]: address groups need"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_file_section_and_key() {
        let err = AgentFileConfig::parse("t.conf", &format!("{RABBIT}[agent]\nbackend = ebpf\n"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf: [agent] backend = \"ebpf\": expected relay, nft, iptables or socat"
        );
    }
}
