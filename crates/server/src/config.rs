//! `navigator.conf`: oslo.config-style INI options, their defaults, parsing
//! with errors that name the file, section and key, and the generated sample.
//!
//! Every option is declared once in [`OPTIONS`]; the parser, the unknown-key
//! warning and `navigator.conf.sample` all read that table, so the sample can
//! never document an option the code does not read.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
// The value parsers live with the agent, which reads the same keys from the
// same file (`navigator-agent`); one implementation keeps the two agreeing.
use navigator_agent::options::{boolean, list, seconds};
use navigator_core::PortRange;
use navigator_rpc::RabbitOptions;
use navigator_rpc::broker::{
    DEPRECATED_NAMES, OPTION_NAMES, check_deprecated_name, check_transport_url, mask_url,
};

/// Where the configuration is read from when `--config-file` is not given
/// (and only if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/navigator/navigator.conf";

/// One documented option.
pub struct OptionDoc {
    pub section: &'static str,
    pub key: &'static str,
    /// The default as it would be written in the file; empty means unset.
    pub default: &'static str,
    pub help: &'static str,
}

/// Every option Navigator reads, in sample order.
pub const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        section: "DEFAULT",
        key: "host",
        default: "",
        help: "Name of this node: the proxy host of the all-in-one agent, or of navigator-agent, which reads the same file. Must be unique among agents. Default: the system host name.",
    },
    OptionDoc {
        section: "DEFAULT",
        key: "debug",
        default: "false",
        help: navigator_log::DEBUG_HELP,
    },
    OptionDoc {
        section: "DEFAULT",
        key: "log_format",
        default: "text",
        help: navigator_log::LOG_FORMAT_HELP,
    },
    OptionDoc {
        section: "DEFAULT",
        key: "log_file",
        default: "",
        help: navigator_log::LOG_FILE_HELP,
    },
    OptionDoc {
        section: "DEFAULT",
        key: "use_journal",
        default: "false",
        help: navigator_log::USE_JOURNAL_HELP,
    },
    OptionDoc {
        section: "DEFAULT",
        key: "bind_host",
        default: "127.0.0.1",
        help: "Address the API listens on. With auth_strategy = noauth only loopback is allowed unless --allow-insecure-noauth is given.",
    },
    OptionDoc {
        section: "DEFAULT",
        key: "bind_port",
        default: "9797",
        help: "Port the API listens on (0 picks a free port and prints it).",
    },
    OptionDoc {
        section: "DEFAULT",
        key: "public_endpoint",
        default: "",
        help: "Base URL clients reach the API by, as Nova and Neutron name it, e.g. https://navigator.example.com:9797 (behind a proxy or a name, or when bind_host is 0.0.0.0). Links the API returns (pagination's next, the version document) and the start-up banner use it. Default: http(s)://bind_host:bind_port as bound. Must be an http:// or https:// URL without query. Its host name is accepted by the Host check wherever that check is on (see [api] allowed_hosts).",
    },
    OptionDoc {
        section: "DEFAULT",
        key: "auth_strategy",
        default: "noauth",
        help: "noauth: no authentication; the project comes from the X-Project-Id header (\"default\" when absent) and every caller is an admin. keystone: validate X-Auth-Token with Keystone using the service credentials of [keystone_authtoken], and authorise with [oslo_policy].",
    },
    OptionDoc {
        section: "DEFAULT",
        key: "transport_url",
        default: "inproc://",
        help: "RPC transport to the agents. inproc:// runs the agent inside the server (navigator-server --all-in-one). rabbit://USER:PASSWORD@HOST:PORT/VHOST is cluster mode: navigator-server serves the API only (run navigator-server db sync first) and one navigator-agent per proxy node, with this same URL, carries the forwards. Several brokers: rabbit://U:P@HOST1:PORT,U:P@HOST2:PORT/VHOST. As in oslo.messaging, query parameters set [oslo_messaging_rabbit] options and win over the file (rabbit://U:P@HOST:5671/VHOST?ssl=1 is TLS); only the options of [oslo_messaging_rabbit] below are accepted, any other parameter stops start-up. The port is 5672 unless given, also with TLS.",
    },
    OptionDoc {
        section: "database",
        key: "connection",
        default: "",
        help: "Database URL, e.g. sqlite:////var/lib/navigator/navigator.db, postgresql://navigator:PASSWORD@db/navigator or mysql+pymysql://navigator:PASSWORD@db/navigator. Default: navigator.db in the data directory. TLS is set in the query: PostgreSQL ?sslmode=verify-full&sslrootcert=/etc/navigator/db-ca.pem (also sslcert, sslkey); MySQL/MariaDB ?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/navigator/db-ca.pem (also ssl-cert, ssl-key), or oslo.db's PyMySQL spelling ?ssl_ca=...&ssl_cert=...&ssl_key=... (verifies certificate and host name; ssl_verify_cert, ssl_check_hostname as in PyMySQL). Without these, PostgreSQL and MySQL try TLS without checking the certificate and fall back to plain text. Unknown query parameters are refused; charset (PyMySQL's) is ignored.",
    },
    OptionDoc {
        section: "oslo_messaging_rabbit",
        key: "ssl",
        default: "false",
        help: "Connect to RabbitMQ over TLS (rustls: TLS 1.3 or 1.2), for the agent RPC and the Nova notifications alike; also ?ssl=1 in transport_url. The broker's certificate must name the host of transport_url and chain to ssl_ca_file. Without it the broker password and every message cross the network in clear text: the server and agent warn at start-up unless the broker is on loopback. oslo's deprecated names (rabbit_use_ssl, kombu_ssl_*) are refused with the name to use.",
    },
    OptionDoc {
        section: "oslo_messaging_rabbit",
        key: "ssl_ca_file",
        default: "",
        help: "PEM file of the CA certificate(s) that vouch for the broker's certificate; with it, only these are trusted. Default: the system's trusted CAs. Read at start-up: a missing or invalid file stops it.",
    },
    OptionDoc {
        section: "oslo_messaging_rabbit",
        key: "ssl_cert_file",
        default: "",
        help: "PEM client certificate (with its chain) for brokers that require one (mutual TLS; RabbitMQ's fail_if_no_peer_cert). Its key is ssl_key_file, or else in this file.",
    },
    OptionDoc {
        section: "oslo_messaging_rabbit",
        key: "ssl_key_file",
        default: "",
        help: "Unencrypted PEM private key of ssl_cert_file (PKCS#8, RSA or EC). Keep it readable by Navigator's user only.",
    },
    OptionDoc {
        section: "oslo_messaging_rabbit",
        key: "ssl_version",
        default: "",
        help: "TLS protocol versions: empty or SSLv23 negotiates TLS 1.3 or 1.2; TLSv1_2 allows TLS 1.2 only. TLSv1, TLSv1_1, SSLv2 and SSLv3 are refused.",
    },
    OptionDoc {
        section: "oslo_messaging_rabbit",
        key: "ssl_enforce_fips_mode",
        default: "false",
        help: "Accepted for compatibility with oslo.messaging; only false is supported (Navigator's TLS, rustls with ring, has no FIPS mode).",
    },
    OptionDoc {
        section: "api",
        key: "max_request_body_size",
        default: "65536",
        help: "Largest request body in bytes; larger requests get HTTP 413.",
    },
    OptionDoc {
        section: "api",
        key: "header_timeout",
        default: "10",
        help: "Seconds a client has to send a request's line and headers, counted from its first byte (or from connecting, for a connection's first request); a connection that sends nothing or half a header is closed after it (1-3600).",
    },
    OptionDoc {
        section: "api",
        key: "body_timeout",
        default: "30",
        help: "Seconds a client has to send a whole request body once its headers are in; a slower body is answered HTTP 408 and the connection closed (1-3600).",
    },
    OptionDoc {
        section: "api",
        key: "keepalive_timeout",
        default: "60",
        help: "Seconds a kept-alive connection may stay idle between a response and the next request before the server closes it (1-3600).",
    },
    OptionDoc {
        section: "api",
        key: "max_connections",
        default: "0",
        help: "Concurrent API connections, TLS handshakes included. Beyond it, a new connection is answered HTTP 503 (over TLS: closed without an answer) and closed at once (logged once per burst). 0: derived from the open-file limit (RLIMIT_NOFILE): an eighth of what the process reserve leaves, from 64 to 1024; the split is logged at start-up (\"fd budget: ...\"). A value the limit cannot hold stops start-up.",
    },
    OptionDoc {
        section: "api",
        key: "rate_limit",
        default: "100",
        help: "Requests per second allowed to one client address (IPv6: its /64), with rate_limit_burst on top; more get HTTP 429 with Retry-After. /healthcheck and /metrics have a separate budget of the same size, so a flood of API requests from a monitor's address does not fail its checks. 0 turns rate limiting off (e.g. behind a load balancer, where every client has its address).",
    },
    OptionDoc {
        section: "api",
        key: "rate_limit_burst",
        default: "200",
        help: "Requests one client address may send at once before rate_limit applies (1-1000000).",
    },
    OptionDoc {
        section: "api",
        key: "max_port_range_size",
        default: "1000",
        help: "Most ports one forward may cover with external_port_range/internal_port_range (1-65535). Each port is a listener, map element or socat process on the proxy and a row in the database.",
    },
    OptionDoc {
        section: "api",
        key: "max_allowed_cidrs",
        default: "1000",
        help: "Most entries of one forward's allowed_cidrs (1-10000). The list is stored with the forward, sent to its agent in every full sync and held by the data plane (nft: one set element each, a single lookup per new connection whatever the size; the relay: one comparison each per new connection), so a tenant's list costs the proxy memory and sync time. 1000 covers a tenant's offices and partners several times over; raise it for a forward that must admit many single addresses.",
    },
    OptionDoc {
        section: "api",
        key: "allowed_hosts",
        default: "",
        help: "Comma-separated host names clients reach the API and dashboard by (the Host header, without port), e.g. navigator.example.com. Requests naming another host get HTTP 421, which stops DNS rebinding (a web page pointing its own name at this server to drive it from a visitor's browser). localhost and IP addresses are always accepted. With auth_strategy = noauth the check is always on; with keystone only when this is set.",
    },
    OptionDoc {
        section: "api",
        key: "default_project_id",
        default: "default",
        help: "Project of noauth requests without an X-Project-Id header.",
    },
    OptionDoc {
        section: "healthcheck",
        key: "disable_by_file_path",
        default: "",
        help: "As oslo.middleware's disable_by_file backend: while this file exists, GET /healthcheck answers HTTP 503 \"DISABLED BY FILE\" (and runs no other check), so that a load balancer stops sending new requests to this server before it is stopped or upgraded; remove the file to take it back. Nothing else changes: requests that still arrive are served. Unset: never disabled. An absolute path, e.g. /etc/navigator/healthcheck_disable.",
    },
    OptionDoc {
        section: "healthcheck",
        key: "detailed",
        default: "false",
        help: "Answer GET /healthcheck in detail (server version and host, each check's duration and error text) to callers that may see it: admins (a token whose roles pass the policy's context_is_admin; every caller with auth_strategy = noauth) and callers on loopback. Others always get the short answer (OK, or which check failed), never error texts. Off: the detailed answer only when such a caller asks with ?detailed=true.",
    },
    OptionDoc {
        section: "metrics",
        key: "per_forward",
        default: "false",
        help: "Add per-forward series to GET /metrics: navigator_forward_bytes_total{forward_id,direction}, navigator_forward_connections_total{forward_id} and navigator_forward_connections_active{forward_id}, for every ACTIVE forward. The cost: four series per forward (100,000 forwards are 400,000 series in Prometheus, on every server scraped), and each scrape asks every proxy's agent for its counters (one get_usage call per proxy per 1,000 forwards, at most 2 s; a proxy that does not answer in time leaves its forwards out and counts in navigator_forward_usage_errors_total). Off: no series names a forward, and scrapes never call agents.",
    },
    OptionDoc {
        section: "ssl",
        key: "cert_file",
        default: "",
        help: "PEM certificate (with its chain) the API is served with over HTTPS (rustls: TLS 1.3 or 1.2, ALPN http/1.1); needs key_file. Unset: plain HTTP, for loopback or behind a TLS-terminating proxy. Checked at start-up (readable, matching key_file, not expired: else exit 64) and re-read without a restart when it or key_file changes on disk (checked every 5 s) or on SIGHUP; a new pair that does not load is refused with a warning and the previous one kept.",
    },
    OptionDoc {
        section: "ssl",
        key: "key_file",
        default: "",
        help: "Unencrypted PEM private key of cert_file (PKCS#8, RSA or EC). Keep it readable by Navigator's user only (mode 0600 or 0640; a key others can read is warned about at start-up).",
    },
    OptionDoc {
        section: "ssl",
        key: "ca_file",
        default: "",
        help: "PEM CA certificate(s): when set, every API client must present a certificate they vouch for (mutual TLS; the dashboard's browsers too). Read at start-up only. Default: no client certificates.",
    },
    OptionDoc {
        section: "dashboard",
        key: "max_sessions_per_address",
        default: "100",
        help: "Dashboard sessions one client address (the TCP peer) keeps at most; a login beyond it ends that address's least recently used session, so a flood of logins never locks others out. Sessions are in the database, shared by every server, and the caps count them all: each user keeps at most 10 and the database 10,000, the same way. 0: no per-address cap (behind a reverse proxy every client has the proxy's address; the other caps still hold). 0-10000.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "www_authenticate_uri",
        default: "",
        help: "Keystone URL clients are sent to in the WWW-Authenticate header of a 401 (keystonemiddleware's name). Default: auth_url.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "auth_url",
        default: "",
        help: "Keystone URL Navigator validates tokens at, e.g. http://controller:5000/v3 (with or without /v3). Required with auth_strategy = keystone.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "auth_type",
        default: "password",
        help: "How Navigator authenticates itself to Keystone; only password is supported.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "username",
        default: "",
        help: "Navigator's service user. It needs the service (or admin) role on project_name to validate users' tokens. Required with auth_strategy = keystone.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "password",
        default: "",
        help: "Password of the service user. Required with auth_strategy = keystone.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "project_name",
        default: "",
        help: "Project the service user's token is scoped to, usually service. Required with auth_strategy = keystone.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "user_domain_name",
        default: "Default",
        help: "Domain of the service user.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "project_domain_name",
        default: "Default",
        help: "Domain of project_name.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "region_name",
        default: "",
        help: "Region of Navigator's endpoints (used by navigator-server keystone register; default RegionOne).",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "memcached_servers",
        default: "",
        help: "Accepted for compatibility with keystonemiddleware and ignored: validations are cached in the server's memory.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "token_cache_time",
        default: "300",
        help: "Seconds a token validation is trusted before Keystone is asked again (never past the token's expiry); a revoked token is refused at most this long after revocation. Keystone's refusals are remembered for 10 s (at most this long). 0 or -1 disables both caches.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "cafile",
        default: "",
        help: "PEM CA bundle that Keystone's HTTPS certificate (auth_url) must chain to; only these CAs are trusted then. Default: the system's trusted CAs. Used for token validation, dashboard logins and navigator-server keystone register. A file that cannot be read or holds no certificate stops start-up (exit 64).",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "certfile",
        default: "",
        help: "PEM client certificate presented to Keystone, for a Keystone (or TLS proxy in front of it) that requires one. Its key is read from keyfile, or from this file when keyfile is unset.",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "keyfile",
        default: "",
        help: "PEM private key (unencrypted) of certfile. Must belong to certfile: a mismatch stops start-up (exit 64).",
    },
    OptionDoc {
        section: "keystone_authtoken",
        key: "insecure",
        default: "false",
        help: "Do not verify Keystone's HTTPS certificate (overrides cafile). Testing only: anyone on the path can then read the service password and every token; the server logs a warning at start.",
    },
    OptionDoc {
        section: "oslo_policy",
        key: "policy_file",
        default: "",
        help: "oslo.policy YAML file overriding default rules (see etc/policy.yaml.sample, or navigator-server policy sample). Relative paths are read from the configuration file's directory. Default: built-in rules only.",
    },
    OptionDoc {
        section: "forwards",
        key: "allowed_target_networks",
        default: "",
        help: "Comma-separated CIDRs that targets must fall in; empty allows any address not refused by the built-in rules, which apply whatever this says (link-local incl. 169.254.169.254, the clouds' metadata addresses, multicast, broadcast, unspecified, IPv6 forms carrying an IPv4 address, every registered proxy's addresses).",
    },
    OptionDoc {
        section: "forwards",
        key: "allow_loopback_targets",
        default: "",
        help: "Allow targets on loopback (the proxy's own local services: API, database, anything on 127.0.0.1). Unset: true only for the all-in-one demo (no transport_url, auth_strategy = noauth, bind_host on loopback), where the caller already owns the machine; false otherwise, so a Keystone tenant cannot reach the proxy host's local ports. Set true to forward to loopback services anyway (all-in-one with Keystone), false to refuse them in the demo too.",
    },
    OptionDoc {
        section: "quotas",
        key: "forwards",
        default: "50",
        help: "Forwards a project may hold (a port range counts as one), unless an admin set the project's own quota (PUT /v1/quotas/{project_id}, navigator quota set); -1 is unlimited. 50, as Neutron's default floating IP quota: plenty for a project's services, while one tenant cannot fill the proxies' pools and the database on its own. A create over it is refused with 409.",
    },
    OptionDoc {
        section: "quotas",
        key: "ports",
        default: "1000",
        help: "External ports a project may hold: every port of a range counts (each is a listener, map element or socat process on a proxy); -1 is unlimited. 1000 equals the default [api] max_port_range_size, so a project may make one range of the largest size, and bounds what one tenant takes of the pools and of the proxies' open files. A create over it is refused with 409.",
    },
    OptionDoc {
        section: "scheduler",
        key: "strategy",
        default: "round_robin",
        help: "How a new forward's proxy is chosen: round_robin, hash (stable by instance, else project) or least_loaded (the smallest share of its port pool in use; it counts every proxy's ports at each create, so it is the slowest of the three with many forwards).",
    },
    OptionDoc {
        section: "scheduler",
        key: "reschedule_on_failure",
        default: "true",
        help: "Move the forwards of a proxy that has been down longer than [agent] agent_down_time to live proxies (keeping the external port when it is free there). false: they stay and show ERROR \"proxy HOST is down\" until the proxy returns.",
    },
    OptionDoc {
        section: "nova",
        key: "notifications",
        default: "false",
        help: "Listen to Nova's instance.delete.end notifications (versioned and legacy) and act on the forwards of the deleted instance (on_instance_delete). Needs a RabbitMQ URL: [nova] transport_url, else [DEFAULT] transport_url when it is rabbit:// (cluster mode). Nova must publish them: [oslo_messaging_notifications] driver = messagingv2 in nova.conf.",
    },
    OptionDoc {
        section: "nova",
        key: "transport_url",
        default: "",
        help: "rabbit://USER:PASSWORD@HOST:PORT/VHOST of the broker Nova publishes notifications to (Nova's [oslo_messaging_notifications] transport_url). Default: [DEFAULT] transport_url. Set it to listen from an all-in-one server. [oslo_messaging_rabbit] (TLS) applies to it too, and its query parameters win over it as for [DEFAULT] transport_url.",
    },
    OptionDoc {
        section: "nova",
        key: "exchange",
        default: "nova",
        help: "Nova's exchange (its control_exchange). Declared passively: Navigator never creates it, and waits, logging, while it is absent.",
    },
    OptionDoc {
        section: "nova",
        key: "topics",
        default: "versioned_notifications,notifications",
        help: "Comma-separated notification topics, each bound as TOPIC.info: Nova's [notifications] versioned_notifications_topics and [oslo_messaging_notifications] topics.",
    },
    OptionDoc {
        section: "nova",
        key: "queue",
        default: "navigator-notifications",
        help: "Navigator's own durable queue on that exchange, shared by every navigator-server (each notification is handled once; handling twice is harmless). Never one of Nova's *.info queues, which other consumers use.",
    },
    OptionDoc {
        section: "nova",
        key: "on_instance_delete",
        default: "delete",
        help: "What happens to the forwards of a deleted instance: delete (as an API delete, audited as user nova-notification) or mark (kept, ERROR with the reason, and no longer carried by the proxy until retargeted or deleted).",
    },
    OptionDoc {
        section: "agent",
        key: "backend",
        default: "relay",
        help: "Data plane of the agent: relay (userspace relay in the agent, no root needed), nft (kernel NAT in table inet navigator; the kernel default, needs root), iptables (kernel NAT in NAVIGATOR-* chains, needs root) or socat (one socat process per forward). See docs/dataplane.md.",
    },
    OptionDoc {
        section: "agent",
        key: "conntrack_cleanup",
        default: "udp",
        help: "Kernel backends: conntrack entries deleted when a forward is deleted or retargeted. udp: UDP flows follow the change, established TCP connections finish on the old target; all: TCP connections are cut too; off: never touch conntrack (a narrowed allowlist then does not cut the flows it no longer allows either).",
    },
    OptionDoc {
        section: "agent",
        key: "fix_sysctls",
        default: "false",
        help: "Kernel backends: turn on net.ipv4.ip_forward, net.ipv6.conf.all.forwarding and bridge-nf-call-ip(6)tables when they are off, instead of reporting the forwards ERROR with the fix.",
    },
    OptionDoc {
        section: "agent",
        key: "full_sync_interval",
        default: "600",
        help: "Kernel backends: seconds between full rewrites of Navigator's ruleset, repairing drift; a missing table or chain is repaired at the next reconcile regardless.",
    },
    OptionDoc {
        section: "agent",
        key: "nft_table",
        default: "navigator",
        help: "nft backend: name of the inet table Navigator owns. Navigator deletes and rewrites this table and touches no other.",
    },
    OptionDoc {
        section: "agent",
        key: "nft_element_comments",
        default: "false",
        help: "nft backend: put comment \"fwd <id>\" on every map element, so `nft list table` names the forward of each element. They double the size of the batch nft parses and cost ~25 % more nft CPU time per full sync (100,000 forwards: ~0.4 s); the agent does not need them.",
    },
    OptionDoc {
        section: "agent",
        key: "handover",
        default: "true",
        help: "navigator-agent, relay backend: on SIGTERM under systemd (NOTIFY_SOCKET set), hand the listening sockets and established connections to the next process through systemd's file descriptor store, so that a restart or upgrade drops no connection and refuses none (each connection writes out what it already read within 2 s, or is closed). false: SIGTERM stops accepting and lets connections finish for up to 10 s. The other backends keep their rules in the kernel either way.",
    },
    OptionDoc {
        section: "agent",
        key: "iptables_variant",
        default: "auto",
        help: "iptables backend: auto (the host's iptables), nft (iptables-nft) or legacy (iptables-legacy).",
    },
    OptionDoc {
        section: "agent",
        key: "external_addresses",
        default: "127.0.0.1,::1",
        help: "Comma-separated addresses on the proxy that forwards listen on; the first of the target's family is used when a forward names none.",
    },
    OptionDoc {
        section: "agent",
        key: "port_range",
        default: "20000-29999",
        help: "Pool of external ports, FIRST-LAST. Explicit external ports must be inside it too. The default stays below Linux's ephemeral ports (net.ipv4.ip_local_port_range, 32768-60999 by default), which outgoing connections borrow, so a pool port is never found taken by one, and below Kubernetes' NodePort range (30000-32767); the agent warns at start when the pool overlaps the ephemeral range. Keep it clear of services on the proxy host itself (e.g. RabbitMQ's inter-node port 25672, MongoDB's 27017).",
    },
    OptionDoc {
        section: "agent",
        key: "report_interval",
        default: "10",
        help: "Seconds between agent heartbeats.",
    },
    OptionDoc {
        section: "agent",
        key: "agent_down_time",
        default: "75",
        help: "Seconds without a heartbeat after which a proxy is shown down.",
    },
    OptionDoc {
        section: "agent",
        key: "rpc_timeout",
        default: "10",
        help: "Seconds the server waits for an agent to answer a call.",
    },
    OptionDoc {
        section: "agent",
        key: "resync_interval",
        default: "60",
        help: "Seconds between full re-syncs of the desired forwards of every agent that sends no digests (agents of earlier releases), which repairs anything a lost message missed. Agents of this release send a summary of their forwards with every heartbeat instead, and the server re-syncs only what differs from the store, so this does not apply to them.",
    },
    OptionDoc {
        section: "relay",
        key: "max_connections",
        default: "0",
        help: "Concurrent relayed TCP connections of the whole process (relay backend), all forwards together; each costs two open files. Beyond it new connections are accepted and closed at once, with one warning per episode. 0: derived from the open-file limit (RLIMIT_NOFILE): half of what the process reserve and the API leave, as logged at start-up (\"fd budget: ...\"). A value the limit cannot hold stops start-up.",
    },
    OptionDoc {
        section: "relay",
        key: "max_connections_per_forward",
        default: "1024",
        help: "Concurrent TCP connections of one forward in the relay backend, all ports of a port range together, so that one forward cannot take the whole process's connections; beyond it that forward's new connections are closed at once (one warning per forward per episode). 0 is unlimited (only max_connections applies). SIGHUP applies a change to the forwards carried (navigator-agent, and the all-in-one server): a lower cap refuses new connections and closes none.",
    },
    OptionDoc {
        section: "relay",
        key: "tcp_idle_timeout",
        default: "3600",
        help: "Seconds a relayed TCP connection may carry no payload in either direction before the relay closes both sides, checked on one clock per listener that ticks every eighth of it, so a connection is closed after 1 to 1.25 times this (0 never closes idle connections; 0-604800). Clients that must stay idle longer send TCP or application keep-alives.",
    },
    OptionDoc {
        section: "relay",
        key: "max_udp_sessions",
        default: "0",
        help: "UDP sessions (client addresses with a live upstream socket, one open file each) of the whole process in the relay backend; datagrams that would open more are dropped, with one warning per episode. 0: a quarter of the relay's share of the open-file limit.",
    },
    OptionDoc {
        section: "relay",
        key: "max_udp_sessions_per_forward",
        default: "1024",
        help: "UDP sessions of one forward in the relay backend, all ports of a port range together; datagrams of further clients are dropped until a session expires (one warning per forward per episode). 1-1000000. SIGHUP applies a change (navigator-agent, and the all-in-one server).",
    },
    OptionDoc {
        section: "relay",
        key: "udp_idle_timeout",
        default: "60",
        help: "Seconds after which an idle UDP session of the relay is forgotten.",
    },
    OptionDoc {
        section: "relay",
        key: "connect_timeout",
        default: "10",
        help: "Seconds the relay waits to connect to a TCP target.",
    },
];

/// A configuration problem, named precisely enough to fix it. The agent reads
/// the same file, so both programs share one error type.
pub use navigator_agent::config::ConfigError;

/// `auth_strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStrategy {
    NoAuth,
    Keystone,
}

/// The typed configuration of `navigator-server`.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: String,
    /// `[DEFAULT] debug`, `log_format`, `log_file`, `use_journal`.
    pub log: navigator_log::LogOptions,
    pub bind_host: IpAddr,
    pub bind_port: u16,
    /// `[DEFAULT] public_endpoint`: the base URL of links, without a
    /// trailing `/`; `None` = the bound address.
    pub public_endpoint: Option<String>,
    /// `[ssl]`: the API over TLS.
    pub ssl: crate::tls::SslConfig,
    pub auth_strategy: AuthStrategy,
    pub transport_url: String,
    /// `[oslo_messaging_rabbit]`: TLS to RabbitMQ (the URLs' queries override it).
    pub rabbit: RabbitOptions,
    pub database_connection: Option<String>,
    pub max_request_body_size: usize,
    /// `[api]` timeouts and caps of the HTTP listener.
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// `[api] max_connections`; `None` = derived from the fd budget.
    pub api_max_connections: Option<usize>,
    /// `[api] rate_limit` (requests/s per client; 0 = off) and its burst.
    pub rate_limit: u32,
    pub rate_limit_burst: u32,
    /// `[api] max_port_range_size`: most ports in one forward's range.
    pub max_port_range_size: u32,
    /// `[api] max_allowed_cidrs`: most entries of one forward's allowlist.
    pub max_allowed_cidrs: usize,
    /// `[api] allowed_hosts`: host names served besides localhost and IP
    /// literals (lower case), see [`crate::host_check`].
    pub allowed_hosts: Vec<String>,
    pub default_project_id: String,
    /// `[healthcheck]`: draining by file and the detailed answer.
    pub healthcheck: crate::health::HealthcheckConfig,
    /// `[metrics] per_forward`: per-forward series in `/metrics`.
    pub metrics_per_forward: bool,
    /// `[dashboard] max_sessions_per_address`; 0 is no cap.
    pub dashboard_sessions_per_address: usize,
    /// `[keystone_authtoken]`, checked complete when auth_strategy = keystone.
    pub keystone_authtoken: KeystoneAuthtoken,
    /// `[oslo_policy] policy_file`, resolved against the configuration file's directory.
    pub policy_file: Option<PathBuf>,
    pub allowed_target_networks: Vec<IpNet>,
    pub allow_loopback_targets: Option<bool>,
    /// `[quotas]`: the limits of projects without their own (`-1` unlimited).
    pub quotas: navigator_store::QuotaLimits,
    pub scheduler_strategy: navigator_scheduler::Strategy,
    pub reschedule_on_failure: bool,
    pub backend: String,
    pub conntrack_cleanup: navigator_dataplane::ConntrackCleanup,
    pub fix_sysctls: bool,
    pub full_sync_interval: Duration,
    pub nft_table: String,
    pub nft_element_comments: bool,
    pub iptables_variant: navigator_dataplane::iptables::Variant,
    pub external_addresses: Vec<IpAddr>,
    pub port_range: PortRange,
    pub report_interval: Duration,
    pub agent_down_time: Duration,
    pub rpc_timeout: Duration,
    pub resync_interval: Duration,
    pub max_connections_per_forward: Option<usize>,
    /// `[relay] max_connections`; `None` = derived from the fd budget.
    pub relay_max_connections: Option<usize>,
    pub tcp_idle_timeout: Option<Duration>,
    /// `[relay] max_udp_sessions`; `None` = derived from the fd budget.
    pub max_udp_sessions: Option<usize>,
    pub max_udp_sessions_per_forward: usize,
    pub udp_idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// `[nova]`: listening to Nova's notifications.
    pub nova: NovaConfig,
    /// Options found in the file that Navigator does not know (probably typos).
    pub unknown_options: Vec<String>,
    /// Every `(section, key)` of [`OPTIONS`] with its value in force (the
    /// file's, else the default), for SIGHUP to tell what changed.
    pub values: navigator_agent::config::OptionValues,
}

/// The raw `section -> key -> value` map of one file.
struct Raw {
    path: String,
    values: BTreeMap<(String, String), String>,
}

impl Raw {
    fn get(&self, section: &'static str, key: &'static str) -> String {
        if let Some(value) = self.values.get(&(section.to_owned(), key.to_owned())) {
            return value.clone();
        }
        OPTIONS
            .iter()
            .find(|o| o.section == section && o.key == key)
            .map(|o| o.default.to_owned())
            .unwrap_or_default()
    }

    fn parse<T>(
        &self,
        section: &'static str,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let value = self.get(section, key);
        parse(value.trim()).map_err(|message| ConfigError::Value {
            path: self.path.clone(),
            section,
            key,
            // A broker or database URL holds a password; the message must not.
            value: if key == "transport_url" {
                mask_url(&value)
            } else if (section, key) == ("database", "connection") {
                navigator_store::redact(&value)
            } else {
                value
            },
            message,
        })
    }
}

impl Config {
    /// Reads `path`, or the defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Config::parse(&path.display().to_string(), &text)
            }
            None => Config::parse("(defaults)", ""),
        }
    }

    /// Parses the text of a configuration file named `path` (for messages).
    pub fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
        let ini = ini::Ini::load_from_str_noescape(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut values = BTreeMap::new();
        let mut unknown_options = Vec::new();
        for (section, properties) in ini.iter() {
            let section = section.unwrap_or("DEFAULT");
            for (key, value) in properties.iter() {
                let known = OPTIONS.iter().any(|o| o.section == section && o.key == key)
                    || agent_only_key(section, key);
                if !known {
                    unknown_options.push(format!("[{section}] {key}"));
                }
                values.insert((section.to_owned(), key.to_owned()), value.to_owned());
            }
        }
        let raw = Raw {
            path: path.to_owned(),
            values,
        };
        let optional = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        Ok(Config {
            host: raw.parse("DEFAULT", "host", navigator_agent::options::host_name)?,
            log: navigator_log::LogOptions {
                debug: raw.parse("DEFAULT", "debug", boolean)?,
                format: raw.parse("DEFAULT", "log_format", navigator_log::log_format)?,
                log_file: raw.parse("DEFAULT", "log_file", navigator_log::log_file)?,
                use_journal: raw.parse("DEFAULT", "use_journal", boolean)?,
            },
            bind_host: raw.parse("DEFAULT", "bind_host", |v| {
                v.parse()
                    .map_err(|_| "expected an IPv4 or IPv6 address".to_owned())
            })?,
            bind_port: raw.parse("DEFAULT", "bind_port", |v| {
                navigator_core::parse_port_number(v)
                    .ok_or_else(|| "expected a port number 0-65535".to_owned())
            })?,
            public_endpoint: raw.parse("DEFAULT", "public_endpoint", public_endpoint)?,
            ssl: crate::tls::SslConfig {
                cert_file: raw.parse("ssl", "cert_file", |v| Ok(optional(v).map(PathBuf::from)))?,
                key_file: raw.parse("ssl", "key_file", |v| Ok(optional(v).map(PathBuf::from)))?,
                ca_file: raw.parse("ssl", "ca_file", |v| Ok(optional(v).map(PathBuf::from)))?,
            },
            auth_strategy: raw.parse("DEFAULT", "auth_strategy", |v| match v {
                "noauth" => Ok(AuthStrategy::NoAuth),
                "keystone" => Ok(AuthStrategy::Keystone),
                _ => Err("expected noauth or keystone".into()),
            })?,
            transport_url: raw.parse("DEFAULT", "transport_url", |v| {
                if v.starts_with("rabbit://") {
                    check_transport_url(v)?;
                    Ok(v.to_owned())
                } else if v.is_empty() || v == "inproc://" {
                    Ok("inproc://".to_owned())
                } else {
                    Err("expected inproc:// or rabbit://USER:PASSWORD@HOST:PORT/".into())
                }
            })?,
            rabbit: rabbit_options(&raw)?,
            database_connection: raw.parse("database", "connection", |v| {
                if !v.is_empty() {
                    navigator_store::check_url(v)?;
                }
                Ok(optional(v))
            })?,
            max_request_body_size: raw.parse("api", "max_request_body_size", |v| {
                match v.parse::<usize>() {
                    Ok(n) if (1024..=16 << 20).contains(&n) => Ok(n),
                    _ => Err("expected a size in bytes from 1024 to 16777216".into()),
                }
            })?,
            header_timeout: raw.parse("api", "header_timeout", short_seconds)?,
            body_timeout: raw.parse("api", "body_timeout", short_seconds)?,
            keepalive_timeout: raw.parse("api", "keepalive_timeout", short_seconds)?,
            api_max_connections: raw.parse(
                "api",
                "max_connections",
                navigator_agent::options::auto_count,
            )?,
            rate_limit: raw.parse("api", "rate_limit", |v| match v.parse::<u32>() {
                Ok(n) if n <= 1_000_000 => Ok(n),
                _ => Err("expected requests per second from 0 (off) to 1000000".into()),
            })?,
            rate_limit_burst: raw.parse("api", "rate_limit_burst", |v| match v.parse::<u32>() {
                Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
                _ => Err("expected a number of requests from 1 to 1000000".into()),
            })?,
            max_port_range_size: raw.parse("api", "max_port_range_size", |v| {
                match v.parse::<u32>() {
                    Ok(n) if (1..=65535).contains(&n) => Ok(n),
                    _ => Err("expected a number of ports from 1 to 65535".into()),
                }
            })?,
            max_allowed_cidrs: raw.parse("api", "max_allowed_cidrs", |v| {
                match v.parse::<usize>() {
                    Ok(n) if (1..=navigator_api::v1::MAX_ALLOWED_CIDRS).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "expected a number of entries from 1 to {}",
                        navigator_api::v1::MAX_ALLOWED_CIDRS
                    )),
                }
            })?,
            allowed_hosts: raw.parse("api", "allowed_hosts", |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(crate::host_check::allowed_host)
                    .collect()
            })?,
            default_project_id: raw.parse("api", "default_project_id", |v| {
                if v.is_empty() {
                    Err("must not be empty".into())
                } else {
                    Ok(v.to_owned())
                }
            })?,
            healthcheck: crate::health::HealthcheckConfig {
                disable_by_file_path: raw.parse("healthcheck", "disable_by_file_path", |v| {
                    match optional(v).map(PathBuf::from) {
                        Some(path) if path.is_relative() => Err(
                            "expected an absolute path, e.g. /etc/navigator/healthcheck_disable"
                                .into(),
                        ),
                        path => Ok(path),
                    }
                })?,
                detailed: raw.parse("healthcheck", "detailed", boolean)?,
            },
            metrics_per_forward: raw.parse("metrics", "per_forward", boolean)?,
            dashboard_sessions_per_address: raw.parse(
                "dashboard",
                "max_sessions_per_address",
                |v| match v.parse::<usize>() {
                    Ok(n) if n <= 10_000 => Ok(n),
                    _ => Err("expected a number of sessions from 0 to 10000 (0: no cap)".into()),
                },
            )?,
            keystone_authtoken: KeystoneAuthtoken::parse(&raw)?,
            policy_file: raw.parse("oslo_policy", "policy_file", |v| {
                Ok((!v.is_empty()).then(|| {
                    let file = Path::new(v);
                    match Path::new(path).parent() {
                        Some(dir) if file.is_relative() && !dir.as_os_str().is_empty() => {
                            dir.join(file)
                        }
                        _ => file.to_owned(),
                    }
                }))
            })?,
            allowed_target_networks: raw.parse("forwards", "allowed_target_networks", |v| {
                list(v, "a CIDR network such as 10.0.0.0/8")
            })?,
            allow_loopback_targets: raw.parse("forwards", "allow_loopback_targets", |v| {
                if v.is_empty() {
                    Ok(None)
                } else {
                    boolean(v).map(Some)
                }
            })?,
            quotas: navigator_store::QuotaLimits {
                forwards: raw.parse("quotas", "forwards", quota_limit)?,
                ports: raw.parse("quotas", "ports", quota_limit)?,
            },
            scheduler_strategy: raw.parse("scheduler", "strategy", |v| v.parse())?,
            reschedule_on_failure: raw.parse("scheduler", "reschedule_on_failure", boolean)?,
            backend: raw.parse("agent", "backend", navigator_agent::options::backend)?,
            conntrack_cleanup: raw.parse("agent", "conntrack_cleanup", |v| v.parse())?,
            fix_sysctls: raw.parse("agent", "fix_sysctls", boolean)?,
            full_sync_interval: raw.parse("agent", "full_sync_interval", seconds)?,
            nft_table: raw.parse("agent", "nft_table", navigator_agent::options::nft_table)?,
            nft_element_comments: raw.parse("agent", "nft_element_comments", boolean)?,
            iptables_variant: raw.parse("agent", "iptables_variant", |v| v.parse())?,
            external_addresses: raw.parse(
                "agent",
                "external_addresses",
                navigator_agent::options::external_addresses,
            )?,
            port_range: raw.parse("agent", "port_range", navigator_agent::options::port_range)?,
            report_interval: raw.parse("agent", "report_interval", seconds)?,
            agent_down_time: raw.parse("agent", "agent_down_time", seconds)?,
            rpc_timeout: raw.parse("agent", "rpc_timeout", seconds)?,
            resync_interval: raw.parse("agent", "resync_interval", seconds)?,
            max_connections_per_forward: raw.parse(
                "relay",
                "max_connections_per_forward",
                navigator_agent::options::max_connections,
            )?,
            relay_max_connections: raw.parse(
                "relay",
                "max_connections",
                navigator_agent::options::auto_count,
            )?,
            tcp_idle_timeout: raw.parse(
                "relay",
                "tcp_idle_timeout",
                navigator_agent::options::idle_timeout,
            )?,
            max_udp_sessions: raw.parse(
                "relay",
                "max_udp_sessions",
                navigator_agent::options::auto_count,
            )?,
            max_udp_sessions_per_forward: raw.parse(
                "relay",
                "max_udp_sessions_per_forward",
                navigator_agent::options::udp_sessions,
            )?,
            udp_idle_timeout: raw.parse("relay", "udp_idle_timeout", seconds)?,
            connect_timeout: raw.parse("relay", "connect_timeout", seconds)?,
            nova: NovaConfig::parse(&raw)?,
            unknown_options,
            values: navigator_agent::config::OptionValues(
                OPTIONS
                    .iter()
                    .map(|o| {
                        (
                            (o.section, o.key),
                            raw.get(o.section, o.key).trim().to_owned(),
                        )
                    })
                    .collect(),
            ),
        })
    }
}

impl Config {
    /// The host name of `[DEFAULT] public_endpoint` (lower case, without
    /// port), for the Host check.
    pub fn public_endpoint_host(&self) -> Option<String> {
        let url = self.public_endpoint.as_deref()?;
        let rest = url.split_once("://")?.1;
        crate::host_check::host_name(rest.split('/').next()?)
    }
}

/// `[DEFAULT] public_endpoint`: an http(s) URL with a host and no query or
/// fragment (links are made by appending paths to it).
fn public_endpoint(value: &str) -> Result<Option<String>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let expected = "expected an http:// or https:// URL such as https://navigator.example.com:9797, without query or fragment";
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or(expected)?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty()
        || host.contains('@')
        || rest.contains(['?', '#'])
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(expected.into());
    }
    Ok(Some(value.trim_end_matches('/').to_owned()))
}

/// A `[quotas]` limit: `-1` (unlimited) or a count from 0 (which allows
/// nothing) up to 2^31 - 1, what the database's INTEGER column holds.
pub fn quota_limit(value: &str) -> Result<i64, String> {
    match value.parse::<i64>() {
        Ok(n) if navigator_api::quota::is_limit(n) => Ok(n),
        _ => Err(navigator_api::quota::limit_expected()),
    }
}

/// `[api]` timeouts: whole seconds from 1 to 3600 (an hour is already far
/// longer than any honest client needs to send a request).
fn short_seconds(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(n) if (1..=3600).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err("expected a whole number of seconds from 1 to 3600".into()),
    }
}

/// `[oslo_messaging_rabbit]`, each value checked as the URL query's are.
fn rabbit_options(raw: &Raw) -> Result<RabbitOptions, ConfigError> {
    let mut options = RabbitOptions::default();
    for name in OPTION_NAMES {
        raw.parse("oslo_messaging_rabbit", name, |v| options.set(name, v))?;
    }
    for (old, _) in DEPRECATED_NAMES {
        for section in ["oslo_messaging_rabbit", "DEFAULT"] {
            raw.parse(section, old, |v| check_deprecated_name(old, v))?;
        }
    }
    Ok(options)
}

/// What to do with the forwards of an instance Nova deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInstanceDelete {
    Delete,
    Mark,
}

/// `[nova]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NovaConfig {
    pub notifications: bool,
    /// The broker to listen on: `[nova] transport_url`, else the RPC one.
    /// `None` when notifications are off.
    pub transport_url: Option<String>,
    /// `[oslo_messaging_rabbit]`, for that broker too.
    pub rabbit: RabbitOptions,
    pub exchange: String,
    pub topics: Vec<String>,
    pub queue: String,
    pub on_instance_delete: OnInstanceDelete,
}

impl NovaConfig {
    fn parse(raw: &Raw) -> Result<NovaConfig, ConfigError> {
        let section = "nova";
        let notifications = raw.parse(section, "notifications", boolean)?;
        let rpc_url = raw.get("DEFAULT", "transport_url");
        let rpc_url = rpc_url.trim();
        let transport_url = raw.parse(section, "transport_url", |v| {
            if !v.is_empty() {
                check_transport_url(v)?;
            }
            if !notifications {
                return Ok(None);
            }
            match (v, rpc_url) {
                ("", rpc) if rpc.starts_with("rabbit://") => Ok(Some(rpc.to_owned())),
                ("", _) => Err("required when [nova] notifications = true and [DEFAULT] transport_url is not rabbit:// (the broker Nova publishes to)".into()),
                (v, _) => Ok(Some(v.to_owned())),
            }
        })?;
        let name = |v: &str| {
            if v.is_empty()
                || v.len() > 255
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
            {
                Err("expected a name of 1 to 255 characters: letters, digits, _ - . :".to_owned())
            } else {
                Ok(v.to_owned())
            }
        };
        Ok(NovaConfig {
            notifications,
            transport_url,
            rabbit: rabbit_options(raw)?,
            exchange: raw.parse(section, "exchange", name)?,
            topics: raw.parse(section, "topics", |v| {
                let topics: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| name(t).map_err(|e| format!("topic {t:?}: {e}")))
                    .collect::<Result<_, _>>()?;
                if topics.is_empty() {
                    Err("expected at least one topic, e.g. versioned_notifications".into())
                } else {
                    Ok(topics)
                }
            })?,
            queue: raw.parse(section, "queue", |v| {
                let queue = name(v)?;
                if queue.ends_with(".info") || queue.starts_with("amq.") {
                    Err(
                        "must be Navigator's own queue: not a notifier's *.info queue nor amq.*"
                            .into(),
                    )
                } else {
                    Ok(queue)
                }
            })?,
            on_instance_delete: raw.parse(section, "on_instance_delete", |v| match v {
                "delete" => Ok(OnInstanceDelete::Delete),
                "mark" => Ok(OnInstanceDelete::Mark),
                _ => Err("expected delete or mark".into()),
            })?,
        })
    }
}

/// `[keystone_authtoken]` with keystonemiddleware's option names.
#[derive(Clone, Default)]
pub struct KeystoneAuthtoken {
    pub www_authenticate_uri: Option<String>,
    pub auth_url: String,
    pub username: String,
    pub password: String,
    pub project_name: String,
    pub user_domain_name: String,
    pub project_domain_name: String,
    pub region_name: Option<String>,
    pub memcached_servers: Option<String>,
    /// Zero: every request asks Keystone.
    pub token_cache_time: Duration,
    /// `cafile`, `certfile`, `keyfile`, `insecure`: TLS to Keystone. The
    /// files are read when a Keystone client is made (start-up).
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub insecure: bool,
}

impl std::fmt::Debug for KeystoneAuthtoken {
    // Config is logged in debug output; the password must not be.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeystoneAuthtoken")
            .field("www_authenticate_uri", &self.www_authenticate_uri)
            .field("auth_url", &self.auth_url)
            .field("username", &self.username)
            .field("password", &"***")
            .field("project_name", &self.project_name)
            .field("user_domain_name", &self.user_domain_name)
            .field("project_domain_name", &self.project_domain_name)
            .field("region_name", &self.region_name)
            .field("memcached_servers", &self.memcached_servers)
            .field("token_cache_time", &self.token_cache_time)
            .field("cafile", &self.cafile)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl KeystoneAuthtoken {
    fn parse(raw: &Raw) -> Result<KeystoneAuthtoken, ConfigError> {
        // Required options are only required when Keystone is in use; the
        // section may sit unused in a noauth configuration.
        let keystone = raw.get("DEFAULT", "auth_strategy").trim() == "keystone";
        let required = |v: &str| {
            if keystone && v.is_empty() {
                Err("required when [DEFAULT] auth_strategy = keystone".to_owned())
            } else {
                Ok(v.to_owned())
            }
        };
        let url = |v: &str| {
            if v.is_empty() || v.starts_with("http://") || v.starts_with("https://") {
                Ok(v.to_owned())
            } else {
                Err("expected an http:// or https:// URL".to_owned())
            }
        };
        let optional = |v: &str| Ok((!v.is_empty()).then(|| v.to_owned()));
        let file = |v: &str| Ok((!v.is_empty()).then(|| PathBuf::from(v)));
        let section = "keystone_authtoken";
        Ok(KeystoneAuthtoken {
            www_authenticate_uri: raw.parse(section, "www_authenticate_uri", |v| {
                url(v).map(|v| (!v.is_empty()).then_some(v))
            })?,
            auth_url: raw.parse(section, "auth_url", |v| required(v).and_then(|v| url(&v)))?,
            username: raw.parse(section, "username", required)?,
            password: raw.parse(section, "password", required)?,
            project_name: raw.parse(section, "project_name", required)?,
            user_domain_name: raw.parse(section, "user_domain_name", required)?,
            project_domain_name: raw.parse(section, "project_domain_name", required)?,
            region_name: raw.parse(section, "region_name", optional)?,
            memcached_servers: raw.parse(section, "memcached_servers", optional)?,
            cafile: raw.parse(section, "cafile", file)?,
            certfile: raw.parse(section, "certfile", file)?,
            keyfile: raw.parse(section, "keyfile", file)?,
            insecure: raw.parse(section, "insecure", boolean)?,
            token_cache_time: raw
                .parse(section, "token_cache_time", |v| match v.parse::<i64>() {
                    Ok(-1 | 0) => Ok(Duration::ZERO),
                    Ok(n) if (1..=86_400).contains(&n) => Ok(Duration::from_secs(n as u64)),
                    _ => Err("expected a whole number of seconds from 0 to 86400 (-1 or 0 disables the cache)".to_owned()),
                })
                .and_then(|t| {
                    // Checked here because it depends on nothing else.
                    raw.parse(section, "auth_type", |v| match v {
                        "password" | "" => Ok(t),
                        _ => Err("only password is supported".to_owned()),
                    })
                })?,
        })
    }
}

/// Keys of the sections only `navigator-agent` reads: `[vrrp]` and
/// `[vrrp:NAME]` (address groups, `navigator_agent::vrrp::config`, which
/// checks them). The server ignores them without a warning.
fn agent_only_key(section: &str, key: &str) -> bool {
    use navigator_agent::vrrp::config::{GROUP_KEYS, GROUP_PREFIX, NODE_KEYS, NODE_SECTION};
    if section == NODE_SECTION {
        NODE_KEYS.iter().any(|(k, _, _)| *k == key)
    } else if section.starts_with(GROUP_PREFIX) {
        GROUP_KEYS.iter().any(|(k, _, _)| *k == key)
    } else {
        false
    }
}

/// The text of `navigator.conf.sample`.
pub fn sample() -> String {
    let mut out = String::from(
        "# navigator.conf.sample: every option of navigator-server with its default.\n\
         # Generated by `navigator-server config sample`; do not edit by hand.\n",
    );
    let mut section = "";
    for option in OPTIONS {
        if option.section != section {
            section = option.section;
            let _ = write!(out, "\n[{section}]\n");
        }
        let _ = writeln!(out, "\n# {}", option.help);
        let _ = writeln!(out, "#{} = {}", option.key, option.default);
    }
    // navigator-agent's address groups, documented from the agent's own
    // tables (it alone reads them).
    use navigator_agent::vrrp::config::{GROUP_KEYS, NODE_KEYS, NODE_SECTION};
    let _ = write!(
        out,
        "\n[{NODE_SECTION}]\n\n# navigator-agent only: how this node runs keepalived for its address groups.\n"
    );
    for (key, default, help) in NODE_KEYS {
        let _ = writeln!(out, "\n# {help}");
        let _ = writeln!(out, "#{key} = {default}");
    }
    let _ = write!(
        out,
        "\n#[vrrp:NAME]\n\n# navigator-agent only: one section per address group this node is a member of; NAME is 1-32 characters of a-z, 0-9 and -, the same on every member.\n"
    );
    for (key, default, help) in GROUP_KEYS {
        let _ = writeln!(out, "\n# {help}");
        let _ = writeln!(out, "#{key} = {default}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_endpoint_and_ssl_files() {
        let text = "[DEFAULT]\npublic_endpoint = https://Nav.example.com:9797/\n[ssl]\ncert_file = /etc/n/c.pem\nkey_file = /etc/n/k.pem\n";
        let config = Config::parse("t.conf", text).unwrap();
        assert_eq!(
            config.public_endpoint.as_deref(),
            Some("https://Nav.example.com:9797")
        );
        assert_eq!(
            config.ssl.cert_file.as_deref(),
            Some(Path::new("/etc/n/c.pem"))
        );
        assert_eq!(config.ssl.ca_file, None);
        assert_eq!(
            config.public_endpoint_host().as_deref(),
            Some("nav.example.com")
        );
        assert!(config.ssl.enabled());
        let config = Config::parse("t.conf", "").unwrap();
        assert_eq!(config.public_endpoint, None);
        assert!(!config.ssl.enabled());
    }

    #[test]
    fn defaults_parse() {
        let config = Config::parse("t.conf", "").unwrap();
        assert_eq!(config.bind_port, 9797);
        assert_eq!(config.port_range, PortRange::new(20000, 29999).unwrap());
        assert_eq!(config.auth_strategy, AuthStrategy::NoAuth);
        assert!(config.allowed_hosts.is_empty());
        assert!(config.unknown_options.is_empty());
        assert_eq!(
            config.quotas,
            navigator_store::QuotaLimits {
                forwards: 50,
                ports: 1000
            }
        );
        let config = Config::parse("t.conf", "[quotas]\nforwards = -1\nports = 0\n").unwrap();
        assert_eq!((config.quotas.forwards, config.quotas.ports), (-1, 0));
        let config = Config::parse(
            "t.conf",
            "[api]\nallowed_hosts = Nav.Example.com, 10.0.0.5\n",
        )
        .unwrap();
        assert_eq!(config.allowed_hosts, ["nav.example.com", "10.0.0.5"]);
    }

    #[test]
    fn address_group_sections_are_the_agents_and_not_unknown() {
        let text = "[vrrp]\nrun_dir = /run/x\n[vrrp:web]\nvirtual_addresses = 192.0.2.100\ninterface = eth0\nvirtual_router_id = 5\n[vrrp:db]\nunicast_peer = 192.0.2.1\n";
        let config = Config::parse("t.conf", text).unwrap();
        assert_eq!(config.unknown_options, vec!["[vrrp:db] unicast_peer"]);
        assert!(sample().contains("\n#[vrrp:NAME]\n"));
    }

    #[test]
    fn values_override_defaults_and_unknown_keys_are_collected() {
        let text = "[DEFAULT]\nbind_port = 9000\nbind_hots = 1.2.3.4\n[agent]\nport_range = 30000-30010\nexternal_addresses = 192.0.2.1, 2001:db8::1\n";
        let config = Config::parse("t.conf", text).unwrap();
        assert_eq!(config.bind_port, 9000);
        assert_eq!(config.port_range.to_string(), "30000-30010");
        assert_eq!(config.external_addresses.len(), 2);
        assert_eq!(
            config.unknown_options,
            vec!["[DEFAULT] bind_hots".to_owned()]
        );
    }

    #[test]
    fn bad_values_name_file_section_and_key() {
        let cases = [
            (
                "[quotas]\nforwards = -2\n",
                "t.conf: [quotas] forwards = \"-2\": expected -1 (unlimited) or a whole number from 0 to 2147483647",
            ),
            (
                "[quotas]\nports = many\n",
                "t.conf: [quotas] ports = \"many\": expected -1 (unlimited) or a whole number from 0 to 2147483647",
            ),
            (
                "[agent]\nport_range = 40000-20000\n",
                "t.conf: [agent] port_range = \"40000-20000\": range 40000-20000 is empty: the first port must not exceed the last",
            ),
            (
                "[DEFAULT]\nbind_port = 70000\n",
                "t.conf: [DEFAULT] bind_port = \"70000\": expected a port number 0-65535",
            ),
            (
                "[DEFAULT]\nbind_port = +9797\n",
                "t.conf: [DEFAULT] bind_port = \"+9797\": expected a port number 0-65535",
            ),
            (
                "[agent]\nport_range = +20000-40000\n",
                "t.conf: [agent] port_range = \"+20000-40000\": \"+20000-40000\" is not a port range: expected FIRST-LAST with ports 1-65535 in plain digits, e.g. 20000-40000",
            ),
            (
                "[DEFAULT]\nauth_strategy = ldap\n",
                "t.conf: [DEFAULT] auth_strategy = \"ldap\": expected noauth or keystone",
            ),
            (
                "[agent]\nbackend = ebpf\n",
                "t.conf: [agent] backend = \"ebpf\": expected relay, nft, iptables or socat",
            ),
            (
                "[agent]\nreport_interval = soon\n",
                "t.conf: [agent] report_interval = \"soon\": expected a whole number of seconds from 1 to 86400",
            ),
            (
                "[forwards]\nallowed_target_networks = 10.0.0.0/33\n",
                "t.conf: [forwards] allowed_target_networks = \"10.0.0.0/33\": \"10.0.0.0/33\" is not a CIDR network such as 10.0.0.0/8",
            ),
            (
                "[DEFAULT]\npublic_endpoint = navigator.example.com:9797\n",
                "t.conf: [DEFAULT] public_endpoint = \"navigator.example.com:9797\": expected an http:// or https:// URL such as https://navigator.example.com:9797, without query or fragment",
            ),
            (
                "[DEFAULT]\npublic_endpoint = https://\n",
                "t.conf: [DEFAULT] public_endpoint = \"https://\": expected an http:// or https:// URL such as https://navigator.example.com:9797, without query or fragment",
            ),
            (
                "[DEFAULT]\npublic_endpoint = https://nav.example.com/?a=1\n",
                "t.conf: [DEFAULT] public_endpoint = \"https://nav.example.com/?a=1\": expected an http:// or https:// URL such as https://navigator.example.com:9797, without query or fragment",
            ),
            (
                "[api]\nmax_port_range_size = 0\n",
                "t.conf: [api] max_port_range_size = \"0\": expected a number of ports from 1 to 65535",
            ),
            (
                "[api]\nmax_allowed_cidrs = 10001\n",
                "t.conf: [api] max_allowed_cidrs = \"10001\": expected a number of entries from 1 to 10000",
            ),
            (
                "[api]\nheader_timeout = 0\n",
                "t.conf: [api] header_timeout = \"0\": expected a whole number of seconds from 1 to 3600",
            ),
            (
                "[api]\nrate_limit_burst = 0\n",
                "t.conf: [api] rate_limit_burst = \"0\": expected a number of requests from 1 to 1000000",
            ),
            (
                "[api]\nmax_connections = -1\n",
                "t.conf: [api] max_connections = \"-1\": expected a whole number up to 10000000 (0 derives it from the open-file limit)",
            ),
            (
                "[relay]\ntcp_idle_timeout = 1w\n",
                "t.conf: [relay] tcp_idle_timeout = \"1w\": expected a whole number of seconds from 0 (never) to 604800",
            ),
            (
                "[relay]\nmax_udp_sessions_per_forward = 0\n",
                "t.conf: [relay] max_udp_sessions_per_forward = \"0\": expected a number of sessions from 1 to 1000000",
            ),
            (
                "[api]\nallowed_hosts = nav.example.com, nav.example.com:9797\n",
                "t.conf: [api] allowed_hosts = \"nav.example.com, nav.example.com:9797\": \"nav.example.com:9797\" is not a host name or IP address (give names without port or scheme, e.g. navigator.example.com)",
            ),
            (
                "[dashboard]\nmax_sessions_per_address = -1\n",
                "t.conf: [dashboard] max_sessions_per_address = \"-1\": expected a number of sessions from 0 to 10000 (0: no cap)",
            ),
            (
                "[agent]\nexternal_addresses = 0.0.0.0\n",
                "t.conf: [agent] external_addresses = \"0.0.0.0\": 0.0.0.0 cannot be listened on by a forward; give a unicast address of this host",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse("t.conf", text).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    #[test]
    fn limits_defaults_and_zero_meanings() {
        let config = Config::parse("t.conf", "").unwrap();
        assert_eq!(config.header_timeout, Duration::from_secs(10));
        assert_eq!(config.body_timeout, Duration::from_secs(30));
        assert_eq!(config.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(config.api_max_connections, None);
        assert_eq!((config.rate_limit, config.rate_limit_burst), (100, 200));
        assert_eq!(config.relay_max_connections, None);
        assert_eq!(config.max_connections_per_forward, Some(1024));
        assert_eq!(config.tcp_idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(config.max_udp_sessions, None);
        assert_eq!(config.max_udp_sessions_per_forward, 1024);
        let text = "[api]\nmax_connections = 300\nrate_limit = 0\n[relay]\nmax_connections = 5000\ntcp_idle_timeout = 0\nmax_connections_per_forward = 0\n";
        let config = Config::parse("t.conf", text).unwrap();
        assert_eq!(config.api_max_connections, Some(300));
        assert_eq!(config.rate_limit, 0);
        assert_eq!(config.relay_max_connections, Some(5000));
        assert_eq!(config.tcp_idle_timeout, None);
        assert_eq!(config.max_connections_per_forward, None);
    }

    #[test]
    fn database_urls_are_checked_and_their_password_never_shown() {
        let text = "[database]\nconnection = postgresql://nav:s3cret@db/nav?sslmode=verify-full&sslrootcert=/ca.pem\n";
        let config = Config::parse("t.conf", text).unwrap();
        assert!(config.database_connection.unwrap().contains("sslrootcert"));
        let text =
            "[database]\nconnection = mysql+pymysql://nav:s3cret@db/nav?ssl_capath=/etc/ssl\n";
        let err = Config::parse("t.conf", text).unwrap_err().to_string();
        assert!(
            err.starts_with("t.conf: [database] connection = \"mysql+pymysql://nav:***@db/nav?ssl_capath=/etc/ssl\": unknown query parameter \"ssl_capath\""),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn keystone_needs_its_section_and_names_the_missing_key() {
        let err = Config::parse("t.conf", "[DEFAULT]\nauth_strategy = keystone\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf: [keystone_authtoken] auth_url = \"\": required when [DEFAULT] auth_strategy = keystone"
        );
        let text = "[DEFAULT]\nauth_strategy = keystone\n[keystone_authtoken]\nauth_url = http://k:5000\nusername = navigator\npassword = pw\n";
        let err = Config::parse("t.conf", text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf: [keystone_authtoken] project_name = \"\": required when [DEFAULT] auth_strategy = keystone"
        );
        let text = format!(
            "{text}project_name = service\ntoken_cache_time = -1\nmemcached_servers = m:11211\n[oslo_policy]\npolicy_file = policy.yaml\n"
        );
        let config = Config::parse("/etc/navigator/navigator.conf", &text).unwrap();
        assert_eq!(config.keystone_authtoken.token_cache_time, Duration::ZERO);
        assert_eq!(config.keystone_authtoken.user_domain_name, "Default");
        assert_eq!(
            config.policy_file,
            Some(PathBuf::from("/etc/navigator/policy.yaml"))
        );
        assert!(config.unknown_options.is_empty());
        assert!(!format!("{config:?}").contains("pw\""));
        let err = Config::parse(
            "t.conf",
            &format!("{text}[keystone_authtoken]\nauth_type = v3token\n"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("auth_type"), "{err}");
        // noauth ignores an incomplete section.
        assert!(Config::parse("t.conf", "[keystone_authtoken]\nusername = x\n").is_ok());
    }

    #[test]
    fn nova_section_defaults_and_checks() {
        let config = Config::parse("t.conf", "").unwrap();
        assert!(!config.nova.notifications);
        assert_eq!(config.nova.transport_url, None);
        assert_eq!(
            config.nova.topics,
            ["versioned_notifications", "notifications"]
        );
        assert_eq!(config.nova.on_instance_delete, OnInstanceDelete::Delete);

        let cluster = "[DEFAULT]\ntransport_url = rabbit://u:p@h:5672/\n[nova]\nnotifications = true\non_instance_delete = mark\n";
        let config = Config::parse("t.conf", cluster).unwrap();
        assert_eq!(
            config.nova.transport_url.as_deref(),
            Some("rabbit://u:p@h:5672/")
        );
        assert_eq!(config.nova.on_instance_delete, OnInstanceDelete::Mark);
        let own = "[nova]\nnotifications = true\ntransport_url = rabbit://n:p@nova-mq/\n";
        let config = Config::parse("t.conf", own).unwrap();
        assert_eq!(
            config.nova.transport_url.as_deref(),
            Some("rabbit://n:p@nova-mq/")
        );

        let cases = [
            (
                "[nova]\nnotifications = true\n",
                "t.conf: [nova] transport_url = \"\": required when [nova] notifications = true and [DEFAULT] transport_url is not rabbit:// (the broker Nova publishes to)",
            ),
            (
                "[nova]\non_instance_delete = keep\n",
                "t.conf: [nova] on_instance_delete = \"keep\": expected delete or mark",
            ),
            (
                "[nova]\nqueue = notifications.info\n",
                "t.conf: [nova] queue = \"notifications.info\": must be Navigator's own queue: not a notifier's *.info queue nor amq.*",
            ),
            (
                "[nova]\ntopics = ,\n",
                "t.conf: [nova] topics = \",\": expected at least one topic, e.g. versioned_notifications",
            ),
            (
                "[nova]\ntransport_url = amqp://h/\n",
                "t.conf: [nova] transport_url = \"amqp://h/\": expected rabbit://USER:PASSWORD@HOST:PORT/VHOST",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse("t.conf", text).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    #[test]
    fn rabbit_tls_options_and_url_parameters_are_checked() {
        let text = "[DEFAULT]\ntransport_url = rabbit://nav:s3cret@mq:5671/nav?ssl=1\n[oslo_messaging_rabbit]\nssl_ca_file = /etc/navigator/rabbit-ca.pem\nssl_version = TLSv1_2\n[nova]\nnotifications = true\n";
        let config = Config::parse("t.conf", text).unwrap();
        assert!(config.unknown_options.is_empty());
        assert_eq!(
            config.rabbit.ssl_ca_file,
            Some(PathBuf::from("/etc/navigator/rabbit-ca.pem"))
        );
        // ssl=1 is the URL's; it is merged when the broker link is made.
        assert!(!config.rabbit.ssl);
        assert_eq!(config.nova.rabbit, config.rabbit);

        let supported = "supported: ssl, ssl_ca_file, ssl_cert_file, ssl_key_file, ssl_version, ssl_enforce_fips_mode (as in [oslo_messaging_rabbit])";
        let cases = [
            (
                "[DEFAULT]\ntransport_url = rabbit://nav:s3cret@mq:5671/nav?ssl=1&heartbeat=30\n".to_owned(),
                format!(
                    "t.conf: [DEFAULT] transport_url = \"rabbit://nav:***@mq:5671/nav?ssl=1&heartbeat=30\": query parameter heartbeat is not supported (it would be ignored, so it is refused); {supported}"
                ),
            ),
            (
                "[nova]\nnotifications = true\ntransport_url = rabbit://n:pw@nova-mq/?ssl=2\n".to_owned(),
                "t.conf: [nova] transport_url = \"rabbit://n:***@nova-mq/?ssl=2\": query parameter ssl=2: expected true or false (or 1 or 0)".to_owned(),
            ),
            (
                "[oslo_messaging_rabbit]\nssl = sometimes\n".to_owned(),
                "t.conf: [oslo_messaging_rabbit] ssl = \"sometimes\": expected true or false (or 1 or 0)".to_owned(),
            ),
            (
                "[oslo_messaging_rabbit]\nssl_version = TLSv1\n".to_owned(),
                "t.conf: [oslo_messaging_rabbit] ssl_version = \"TLSv1\": TLSv1 is not supported: SSL and TLS before 1.2 are broken; use TLSv1_2, or SSLv23 or empty to negotiate TLS 1.3 or 1.2".to_owned(),
            ),
            (
                "[DEFAULT]\nrabbit_use_ssl = true\n".to_owned(),
                "t.conf: [DEFAULT] rabbit_use_ssl = \"true\": rabbit_use_ssl is oslo.messaging's deprecated name of [oslo_messaging_rabbit] ssl, which Navigator does not read; write ssl instead".to_owned(),
            ),
            (
                "[oslo_messaging_rabbit]\nkombu_ssl_ca_certs = /ca.pem\n".to_owned(),
                "t.conf: [oslo_messaging_rabbit] kombu_ssl_ca_certs = \"/ca.pem\": kombu_ssl_ca_certs is oslo.messaging's deprecated name of [oslo_messaging_rabbit] ssl_ca_file, which Navigator does not read; write ssl_ca_file instead".to_owned(),
            ),
            (
                "[oslo_messaging_rabbit]\nssl_enforce_fips_mode = true\n".to_owned(),
                "t.conf: [oslo_messaging_rabbit] ssl_enforce_fips_mode = \"true\": only false is supported: Navigator's TLS (rustls with ring) has no FIPS mode".to_owned(),
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse("t.conf", &text).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    #[test]
    fn agent_defaults_match_the_option_table() {
        // navigator-agent parses its keys without this table; a default
        // changed here must change there too.
        for (section, key, default) in navigator_agent::config::DEFAULTS {
            let option = OPTIONS
                .iter()
                .find(|o| o.section == *section && o.key == *key)
                .unwrap_or_else(|| panic!("[{section}] {key} is not in OPTIONS"));
            assert_eq!(option.default, *default, "[{section}] {key}");
        }
    }

    #[test]
    fn committed_sample_is_fresh() {
        let committed = include_str!("../../../etc/navigator.conf.sample");
        assert!(
            committed == sample(),
            "etc/navigator.conf.sample is stale: run `cargo run --bin navigator-server -- config sample > etc/navigator.conf.sample`"
        );
    }
}
