//! Where RabbitMQ is and how to reach it: oslo's `transport_url` merged with
//! the `[oslo_messaging_rabbit]` TLS options, and the rustls client
//! configuration built from them.
//!
//! As in oslo.messaging, a query parameter of `transport_url` sets the
//! `[oslo_messaging_rabbit]` option of the same name and wins over the file
//! (`rabbit://user:pass@host:5671/?ssl=1`). Navigator implements only the TLS
//! options ([`OPTION_NAMES`]); any other parameter is refused by name instead
//! of being dropped, because a dropped `ssl=1` once meant a plain-text link
//! the operator believed encrypted.
//!
//! With `ssl` on, the broker's certificate is checked against `ssl_ca_file`
//! alone when it is given (else the system's trusted roots), and always
//! against the host name of the URL. `ssl_cert_file` and `ssl_key_file` are
//! the client certificate for mutual TLS. Every file is read and checked when
//! the [`Broker`] is made, at start-up, so a bad one stops the process with
//! its option and path named rather than failing each reconnect.
//!
//! Passwords never leave this module: errors, logs and `Debug` show
//! [`mask_url`]'s form.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use percent_encoding::percent_decode_str;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use rustls_platform_verifier::BuilderVerifierExt;

use crate::transport::RpcError;

/// The `[oslo_messaging_rabbit]` options Navigator implements: the only query
/// parameters `transport_url` may carry.
pub const OPTION_NAMES: &[&str] = &[
    "ssl",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_version",
    "ssl_enforce_fips_mode",
];

/// oslo.messaging's deprecated names of those options (still read by oslo,
/// in `[oslo_messaging_rabbit]` and formerly `[DEFAULT]`), with their current
/// names. Navigator refuses them rather than ignore them: an ignored
/// `rabbit_use_ssl = true` is a plain link its operator believes encrypted.
pub const DEPRECATED_NAMES: &[(&str, &str)] = &[
    ("rabbit_use_ssl", "ssl"),
    ("kombu_ssl_version", "ssl_version"),
    ("kombu_ssl_keyfile", "ssl_key_file"),
    ("kombu_ssl_certfile", "ssl_cert_file"),
    ("kombu_ssl_ca_certs", "ssl_ca_file"),
];

/// The message for a deprecated name found with value `value` (empty: not
/// set, which is fine).
pub fn check_deprecated_name(name: &str, value: &str) -> Result<(), String> {
    match DEPRECATED_NAMES.iter().find(|(old, _)| *old == name) {
        Some((_, new)) if !value.trim().is_empty() => Err(format!(
            "{name} is oslo.messaging's deprecated name of [oslo_messaging_rabbit] {new}, which \
             Navigator does not read; write {new} instead"
        )),
        _ => Ok(()),
    }
}

/// How long one TCP (+TLS) + AMQP connect to one host may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS protocol versions a link may use (`ssl_version`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersions {
    /// TLS 1.3 or 1.2, whichever the broker prefers (oslo's `SSLv23`, the default).
    #[default]
    Negotiate,
    /// TLS 1.2 only (oslo's `TLSv1_2`).
    Tls12,
}

/// `[oslo_messaging_rabbit]` as oslo.messaging names it; see the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RabbitOptions {
    pub ssl: bool,
    pub ssl_ca_file: Option<PathBuf>,
    pub ssl_cert_file: Option<PathBuf>,
    pub ssl_key_file: Option<PathBuf>,
    pub ssl_version: TlsVersions,
}

impl RabbitOptions {
    /// Sets option `name` from its text, as written in the file or the URL
    /// query; the error says what is allowed. Empty means the default.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let value = value.trim();
        let path = || (!value.is_empty()).then(|| PathBuf::from(value));
        match name {
            "ssl" => self.ssl = boolean(value)?,
            "ssl_ca_file" => self.ssl_ca_file = path(),
            "ssl_cert_file" => self.ssl_cert_file = path(),
            "ssl_key_file" => self.ssl_key_file = path(),
            "ssl_version" => {
                self.ssl_version = match value.to_ascii_lowercase().as_str() {
                    "" | "sslv23" => TlsVersions::Negotiate,
                    "tlsv1_2" => TlsVersions::Tls12,
                    "tlsv1" | "tlsv1_1" | "sslv2" | "sslv3" => {
                        return Err(format!(
                            "{value} is not supported: SSL and TLS before 1.2 are broken; \
                             use TLSv1_2, or SSLv23 or empty to negotiate TLS 1.3 or 1.2"
                        ));
                    }
                    _ => {
                        return Err("expected SSLv23 or empty (TLS 1.3 or 1.2), or TLSv1_2".into());
                    }
                }
            }
            "ssl_enforce_fips_mode" => {
                if boolean(value)? {
                    return Err(
                        "only false is supported: Navigator's TLS (rustls with ring) has no FIPS mode"
                            .into(),
                    );
                }
            }
            _ => {
                return Err(format!(
                    "{name} is not supported; Navigator implements {}",
                    OPTION_NAMES.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// oslo.config's booleans.
fn boolean(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" | "" => Ok(false),
        _ => Err("expected true or false (or 1 or 0)".into()),
    }
}

/// Why a [`Broker`] cannot be made: a mistake in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("transport_url {url}: {message}")]
    Url { url: String, message: String },
    #[error("{option} = {}: {message}", path.display())]
    File {
        /// `[oslo_messaging_rabbit] ssl_ca_file` or `transport_url parameter ssl_ca_file`.
        option: String,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Tls(String),
}

impl From<BrokerError> for RpcError {
    fn from(e: BrokerError) -> RpcError {
        RpcError::Transport(e.to_string())
    }
}

/// `url` with every password replaced by `***`, for messages and logs.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (netloc, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => match rest.find('?') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        },
    };
    let hosts: Vec<String> = netloc
        .split(',')
        .map(|entry| match entry.rsplit_once('@') {
            Some((credentials, address)) => match credentials.split_once(':') {
                Some((user, _)) => format!("{user}:***@{address}"),
                None => entry.to_owned(),
            },
            None => entry.to_owned(),
        })
        .collect();
    format!("{scheme}://{}{path}", hosts.join(","))
}

/// One broker of `transport_url`, with the credentials to use on it.
#[derive(Clone)]
pub(crate) struct Host {
    pub(crate) uri: AMQPUri,
}

impl Host {
    /// `host:port/vhost`, without credentials, for logs and errors.
    pub(crate) fn display(&self) -> String {
        format!("{}/{}", self.address(), self.uri.vhost)
    }

    /// `host:port` (`[v6]:port`).
    fn address(&self) -> String {
        let host = &self.uri.authority.host;
        if host.contains(':') {
            format!("[{host}]:{}", self.uri.authority.port)
        } else {
            format!("{host}:{}", self.uri.authority.port)
        }
    }

    fn is_loopback(&self) -> bool {
        let host = self.uri.authority.host.as_str();
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Debug for Host {
    // The URI holds the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("user", &self.uri.authority.userinfo.username)
            .field("address", &self.display())
            .finish()
    }
}

/// `transport_url` split up: its brokers, and its query parameters in order.
struct TransportUrl {
    hosts: Vec<Host>,
    query: Vec<(String, String)>,
}

/// Parses oslo's `rabbit://user:pass@host:port[,user:pass@host2:port2]/vhost[?query]`.
/// Hosts without credentials take those of the first host that has some
/// (else guest/guest); an empty vhost is `/`, as kombu does; the port
/// defaults to 5672 with or without TLS, as in oslo. The error message does
/// not repeat the URL.
fn parse_url(url: &str) -> Result<TransportUrl, String> {
    let rest = url
        .strip_prefix("rabbit://")
        .ok_or("expected rabbit://USER:PASSWORD@HOST:PORT/VHOST")?;
    let (rest, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (netloc, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let vhost = if vhost.is_empty() {
        "/".to_owned()
    } else {
        percent_decode(vhost).ok_or("bad %-escape in the virtual host")?
    };
    let mut first_credentials: Option<AMQPUserInfo> = None;
    let mut hosts = Vec::new();
    for entry in netloc.split(',') {
        let (credentials, address) = match entry.rsplit_once('@') {
            Some((credentials, address)) => {
                let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
                let decode = |s: &str| percent_decode(s).ok_or("bad %-escape in the credentials");
                let info = AMQPUserInfo {
                    username: decode(user)?,
                    password: decode(password)?,
                };
                first_credentials.get_or_insert_with(|| info.clone());
                (Some(info), address)
            }
            None => (None, entry),
        };
        let (host, port) = split_host_port(address)
            .ok_or_else(|| format!("bad host {address:?} (expected HOST or HOST:PORT)"))?;
        hosts.push((credentials, host, port));
    }
    let hosts = hosts
        .into_iter()
        .map(|(credentials, host, port)| Host {
            uri: AMQPUri {
                scheme: AMQPScheme::AMQP,
                authority: AMQPAuthority {
                    userinfo: credentials
                        .or_else(|| first_credentials.clone())
                        .unwrap_or_default(),
                    host,
                    port,
                },
                vhost: vhost.clone(),
                query: AMQPQueryString {
                    connection_timeout: Some(CONNECT_TIMEOUT.as_millis() as u64),
                    ..AMQPQueryString::default()
                },
            },
        })
        .collect();
    let mut parameters: Vec<(String, String)> = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        // As Python's parse_qs, which oslo uses: `+` is a space.
        let decode = |s: &str| {
            percent_decode(&s.replace('+', " "))
                .ok_or_else(|| format!("bad %-escape in query parameter {pair:?}"))
        };
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (decode(name)?, decode(value)?);
        if parameters.iter().any(|(seen, _)| *seen == name) {
            return Err(format!("query parameter {name} is given twice"));
        }
        parameters.push((name, value));
    }
    Ok(TransportUrl {
        hosts,
        query: parameters,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; the port defaults to 5672.
fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = address.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match address.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => AMQPScheme::AMQP.default_port(),
    };
    Some((host.to_owned(), port))
}

/// `%XX` escapes decoded (by `percent-encoding`). A `%` not followed by two
/// hex digits, or a result that is not UTF-8, is refused rather than kept
/// as it is: a mistyped password or vhost should fail at start, by name.
fn percent_decode(s: &str) -> Option<String> {
    let malformed = s.split('%').skip(1).any(|after| {
        !after
            .get(..2)
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if malformed {
        return None;
    }
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// Checks `url` as [`Broker::new`] will, without reading any file: the
/// configuration parsers call it so that `config check` refuses the same
/// URLs. The message does not repeat the URL.
pub fn check_transport_url(url: &str) -> Result<(), String> {
    let parsed = parse_url(url)?;
    let mut options = RabbitOptions::default();
    for (name, value) in &parsed.query {
        set_from_query(&mut options, name, value)?;
    }
    Ok(())
}

fn set_from_query(options: &mut RabbitOptions, name: &str, value: &str) -> Result<(), String> {
    if let Some((_, new)) = DEPRECATED_NAMES.iter().find(|(old, _)| *old == name) {
        return Err(format!(
            "query parameter {name} is oslo.messaging's deprecated name of {new}; write {new} instead"
        ));
    }
    if !OPTION_NAMES.contains(&name) {
        return Err(format!(
            "query parameter {name} is not supported (it would be ignored, so it is refused); \
             supported: {} (as in [oslo_messaging_rabbit])",
            OPTION_NAMES.join(", ")
        ));
    }
    options
        .set(name, value)
        .map_err(|e| format!("query parameter {name}={value}: {e}"))
}

/// The TLS side of a [`Broker`].
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) config: Arc<ClientConfig>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    versions: TlsVersions,
}

/// The brokers of one `transport_url` and how to reach them (plain or TLS);
/// made once at start-up, cloned into every connection attempt.
#[derive(Clone)]
pub struct Broker {
    pub(crate) hosts: Vec<Host>,
    pub(crate) tls: Option<Tls>,
    /// TLS files given while `ssl` is off, for the warning in [`Broker::log_link`].
    ignored: Vec<String>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Broker {
    /// Merges `transport_url` (whose query wins) with `options`, and reads and
    /// checks the TLS files. Needs no broker.
    pub fn new(transport_url: &str, options: &RabbitOptions) -> Result<Broker, BrokerError> {
        let url_error = |message: String| BrokerError::Url {
            url: mask_url(transport_url),
            message,
        };
        let parsed = parse_url(transport_url).map_err(url_error)?;
        let mut options = options.clone();
        let mut from_query = Vec::new();
        for (name, value) in &parsed.query {
            set_from_query(&mut options, name, value).map_err(url_error)?;
            from_query.push(name.clone());
        }
        let option = |name: &str| {
            if from_query.iter().any(|n| n == name) {
                format!("transport_url parameter {name}")
            } else {
                format!("[oslo_messaging_rabbit] {name}")
            }
        };
        let mut hosts = parsed.hosts;
        if !options.ssl {
            let ignored = [
                ("ssl_ca_file", &options.ssl_ca_file),
                ("ssl_cert_file", &options.ssl_cert_file),
                ("ssl_key_file", &options.ssl_key_file),
            ]
            .into_iter()
            .filter(|(_, value)| value.is_some())
            .map(|(name, _)| option(name))
            .collect();
            return Ok(Broker {
                hosts,
                tls: None,
                ignored,
            });
        }
        let config = client_config(&options, &option)?;
        for host in &mut hosts {
            host.uri.scheme = AMQPScheme::AMQPS;
        }
        Ok(Broker {
            hosts,
            tls: Some(Tls {
                config: Arc::new(config),
                ca_file: options.ssl_ca_file,
                cert_file: options.ssl_cert_file,
                versions: options.ssl_version,
            }),
            ignored: Vec::new(),
        })
    }

    /// Whether the link is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// One line for logs: `amqps to h:5671 (TLS, CA /ca.pem, client certificate /c.pem)`
    /// or `amqp to h:5672 (not encrypted)`. No credentials.
    pub fn describe(&self) -> String {
        let hosts = self.addresses();
        match &self.tls {
            None => format!("amqp to {hosts} (not encrypted)"),
            Some(tls) => {
                let mut details = vec![match tls.versions {
                    TlsVersions::Negotiate => "TLS".to_owned(),
                    TlsVersions::Tls12 => "TLS 1.2".to_owned(),
                }];
                details.push(match &tls.ca_file {
                    Some(ca) => format!("CA {}", ca.display()),
                    None => "system CAs".to_owned(),
                });
                if let Some(cert) = &tls.cert_file {
                    details.push(format!("client certificate {}", cert.display()));
                }
                format!("amqps to {hosts} ({})", details.join(", "))
            }
        }
    }

    /// `h1:5671, h2:5671`.
    fn addresses(&self) -> String {
        self.hosts
            .iter()
            .map(Host::address)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Says at start-up how `purpose` (`RPC`, `Nova notifications`) reaches
    /// RabbitMQ: INFO when encrypted or on loopback, WARN when plain text
    /// crosses a network or TLS files are set but `ssl` is off.
    pub fn log_link(&self, purpose: &str) {
        match self.link_warning(purpose) {
            Some(warning) => tracing::warn!("{warning}"),
            None => tracing::info!("RabbitMQ ({purpose}): {}", self.describe()),
        }
    }

    /// The WARN line of [`Broker::log_link`], if the link deserves one.
    fn link_warning(&self, purpose: &str) -> Option<String> {
        let hosts = self.addresses();
        if !self.ignored.is_empty() {
            Some(format!(
                "RabbitMQ link is NOT encrypted ({purpose}, amqp to {hosts}): {} set but ssl is \
                 off; set [oslo_messaging_rabbit] ssl = true or ?ssl=1 in transport_url",
                self.ignored.join(", ")
            ))
        } else if self.tls.is_none() && !self.hosts.iter().all(Host::is_loopback) {
            Some(format!(
                "RabbitMQ link is NOT encrypted ({purpose}, amqp to {hosts}): the broker password \
                 and every message cross the network in clear text; set [oslo_messaging_rabbit] \
                 ssl = true (or ?ssl=1 in transport_url) and ssl_ca_file"
            ))
        } else {
            None
        }
    }
}

/// The rustls client configuration of `options` (with `ssl` on); `option`
/// names where an option came from, for errors.
fn client_config(
    options: &RabbitOptions,
    option: &dyn Fn(&str) -> String,
) -> Result<ClientConfig, BrokerError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match options.ssl_version {
        TlsVersions::Negotiate => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersions::Tls12 => &[&rustls::version::TLS12],
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .map_err(|e| BrokerError::Tls(format!("cannot set up TLS: {e}")))?;
    let builder = match &options.ssl_ca_file {
        // Only the given CAs: trusting the system's too would let any public
        // CA vouch for a rogue broker.
        Some(path) => {
            let file_error = file_error(option("ssl_ca_file"), path);
            let certificates = read_certificates(path).map_err(&file_error)?;
            let mut roots = RootCertStore::empty();
            for (i, certificate) in certificates.into_iter().enumerate() {
                roots.add(certificate).map_err(|e| {
                    file_error(format!("certificate {} is not a usable CA: {e}", i + 1))
                })?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder.with_platform_verifier().map_err(|e| {
            BrokerError::Tls(format!(
                "cannot load the system's trusted CAs ({e}); set [oslo_messaging_rabbit] ssl_ca_file"
            ))
        })?,
    };
    match (&options.ssl_cert_file, &options.ssl_key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (None, Some(key)) => Err(BrokerError::File {
            option: option("ssl_key_file"),
            path: key.clone(),
            message: "needs ssl_cert_file, the client certificate it belongs to".into(),
        }),
        (Some(cert), key) => {
            let certificates =
                read_certificates(cert).map_err(file_error(option("ssl_cert_file"), cert))?;
            // As Python's ssl, which oslo uses: without ssl_key_file the key
            // is in the certificate file.
            let (key_option, key_path) = match key {
                Some(key) => (option("ssl_key_file"), key),
                None => (option("ssl_cert_file"), cert),
            };
            let key = read_key(key_path).map_err(file_error(key_option.clone(), key_path))?;
            builder
                .with_client_auth_cert(certificates, key)
                .map_err(|e| {
                    BrokerError::Tls(format!(
                        "{} = {} and {key_option} = {}: not a usable certificate and key pair: {e}",
                        option("ssl_cert_file"),
                        cert.display(),
                        key_path.display()
                    ))
                })
        }
    }
}

fn file_error(option: String, path: &Path) -> impl Fn(String) -> BrokerError {
    let path = path.to_owned();
    move |message| BrokerError::File {
        option: option.clone(),
        path: path.clone(),
        message,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
}

/// The PEM certificates in `path`, or why there are none (the message names
/// no option: callers add theirs). Also used for the API's `[ssl]` files.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a valid PEM file: {e}"))?;
    if certificates.is_empty() {
        return Err("no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certificates)
}

/// The unencrypted PEM private key in `path`, or why there is none.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => "no private key in it (expected an unencrypted PEM key: \
                                     -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
            .to_owned(),
        e => format!("not a valid PEM file: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oslo_transport_urls() {
        let broker = Broker::new(
            "rabbit://nav:s%40cret@127.0.0.1:25672/",
            &RabbitOptions::default(),
        )
        .unwrap();
        assert_eq!(broker.hosts.len(), 1);
        let uri = &broker.hosts[0].uri;
        assert_eq!(uri.authority.userinfo.username, "nav");
        assert_eq!(uri.authority.userinfo.password, "s@cret");
        assert_eq!(uri.authority.host, "127.0.0.1");
        assert_eq!(uri.authority.port, 25672);
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.scheme, AMQPScheme::AMQP);
        assert_eq!(broker.hosts[0].display(), "127.0.0.1:25672//");
        assert!(!broker.is_tls());

        let broker = Broker::new(
            "rabbit://a:pa@h1:5673,b:pb@h2,h3:5674/navigator?ssl=0",
            &RabbitOptions::default(),
        )
        .unwrap();
        let names: Vec<_> = broker
            .hosts
            .iter()
            .map(|h| {
                (
                    h.uri.authority.userinfo.username.as_str(),
                    h.uri.authority.host.as_str(),
                    h.uri.authority.port,
                    h.uri.vhost.as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("a", "h1", 5673, "navigator"),
                ("b", "h2", 5672, "navigator"),
                ("a", "h3", 5674, "navigator"),
            ]
        );
        assert!(!broker.is_tls());
        let broker = Broker::new("rabbit://[::1]:5672/%2f", &RabbitOptions::default()).unwrap();
        assert_eq!(broker.hosts[0].uri.authority.host, "::1");
        assert_eq!(broker.hosts[0].uri.vhost, "/");
        assert_eq!(broker.hosts[0].uri.authority.userinfo.username, "guest");
        assert_eq!(broker.describe(), "amqp to [::1]:5672 (not encrypted)");
        // Escapes in the credentials and vhost: UTF-8, reserved characters,
        // and a `+` that stays a `+` outside the query.
        let broker = Broker::new(
            "rabbit://n%C3%A4v:a%2Bb%3Ac%2F%25+@h/v%20h%2Fost",
            &RabbitOptions::default(),
        )
        .unwrap();
        let uri = &broker.hosts[0].uri;
        assert_eq!(uri.authority.userinfo.username, "näv");
        assert_eq!(uri.authority.userinfo.password, "a+b:c/%+");
        assert_eq!(uri.vhost, "v h/ost");
        // In the query `+` is a space, as Python's parse_qs has it.
        let parsed = parse_url("rabbit://h/?ssl_ca_file=%2Fa+b%2Bc%26.pem&&ssl=1").unwrap();
        assert_eq!(
            parsed.query,
            [
                ("ssl_ca_file".to_owned(), "/a b+c&.pem".to_owned()),
                ("ssl".to_owned(), "1".to_owned())
            ]
        );
    }

    #[test]
    fn rejects_bad_transport_urls() {
        for url in [
            "amqp://h/",
            "rabbit://u:p@/",
            "rabbit://u:p@h:notaport/",
            "rabbit://u:p@h/%zz",
            "rabbit://u:p@h/%4",
            "rabbit://u:p@h/%",
            "rabbit://u:p%ff@h/",
            "rabbit://u:p@h/?ssl=%g1",
            "rabbit://u:p@h/?ssl=1&ssl=0",
        ] {
            assert!(
                Broker::new(url, &RabbitOptions::default()).is_err(),
                "{url}"
            );
            assert!(check_transport_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn ssl_in_the_query_turns_tls_on() {
        for query in ["ssl=1", "ssl=true", "ssl=True", "ssl=yes", "ssl=on"] {
            let url = format!("rabbit://u:p@broker.example:5671/nav?{query}");
            check_transport_url(&url).unwrap();
            let broker = Broker::new(&url, &RabbitOptions::default()).unwrap();
            assert!(broker.is_tls(), "{query}");
            assert_eq!(broker.hosts[0].uri.scheme, AMQPScheme::AMQPS);
            assert_eq!(
                broker.describe(),
                "amqps to broker.example:5671 (TLS, system CAs)"
            );
        }
        // The query wins over the file, both ways.
        let on = RabbitOptions {
            ssl: true,
            ..RabbitOptions::default()
        };
        for query in ["ssl=0", "ssl=false", "ssl=no"] {
            let url = format!("rabbit://u:p@h:5672/?{query}");
            assert!(!Broker::new(&url, &on).unwrap().is_tls(), "{query}");
        }
        assert!(Broker::new("rabbit://u:p@h:5671/", &on).unwrap().is_tls());
        let broker = Broker::new(
            "rabbit://u:p@h:5671/?ssl_version=TLSv1_2&ssl=1",
            &RabbitOptions::default(),
        )
        .unwrap();
        assert_eq!(broker.describe(), "amqps to h:5671 (TLS 1.2, system CAs)");
    }

    #[test]
    fn unknown_and_unsupported_parameters_are_refused_by_name() {
        let cases = [
            ("heartbeat=30", "query parameter heartbeat is not supported"),
            (
                "rabbit_use_ssl=1",
                "query parameter rabbit_use_ssl is oslo.messaging's deprecated name of ssl; write ssl instead",
            ),
            (
                "ssl_ca_certs=/x",
                "query parameter ssl_ca_certs is not supported",
            ),
            (
                "ssl=maybe",
                "query parameter ssl=maybe: expected true or false",
            ),
            (
                "ssl_version=TLSv1",
                "query parameter ssl_version=TLSv1: TLSv1 is not supported",
            ),
            (
                "ssl_enforce_fips_mode=1",
                "query parameter ssl_enforce_fips_mode=1: only false is supported",
            ),
        ];
        for (query, expected) in cases {
            let url = format!("rabbit://nav:s3cret@h:5671/?{query}");
            let message = check_transport_url(&url).unwrap_err();
            assert!(message.starts_with(expected), "{query}: {message}");
            assert!(message.contains("ssl"), "{message}");
            let err = Broker::new(&url, &RabbitOptions::default()).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "transport_url rabbit://nav:***@h:5671/?{query}: {expected}"
                )),
                "{text}"
            );
            assert!(!text.contains("s3cret"), "{text}");
        }
        let message = check_transport_url("rabbit://h/?heartbeat=30").unwrap_err();
        assert!(
            message.contains("supported: ssl, ssl_ca_file, ssl_cert_file, ssl_key_file"),
            "{message}"
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_url("rabbit://a:p@ss@h1:5672,b:pb@h2,h3/v?ssl=1"),
            "rabbit://a:***@h1:5672,b:***@h2,h3/v?ssl=1"
        );
        assert_eq!(mask_url("rabbit://h1?ssl=1"), "rabbit://h1?ssl=1");
        assert_eq!(mask_url("rabbit://u@h/"), "rabbit://u@h/");
        assert_eq!(mask_url("inproc://"), "inproc://");
        let broker = Broker::new(
            "rabbit://nav:s3cret@h1:5671,nav:s3cret@h2:5671/v?ssl=1",
            &RabbitOptions::default(),
        )
        .unwrap();
        assert!(!format!("{broker:?}").contains("s3cret"));
        assert!(!format!("{:?}", broker.hosts).contains("s3cret"));
        assert_eq!(
            broker.describe(),
            "amqps to h1:5671, h2:5671 (TLS, system CAs)"
        );
    }

    #[test]
    fn a_plain_link_off_loopback_is_warned_about() {
        let plain = RabbitOptions::default();
        for url in [
            "rabbit://u:p@127.0.0.1:5672/",
            "rabbit://u:p@localhost,u:p@[::1]/",
        ] {
            let broker = Broker::new(url, &plain).unwrap();
            assert_eq!(broker.link_warning("RPC"), None, "{url}");
        }
        let broker = Broker::new("rabbit://u:p@127.0.0.1,u:p@mq.example:5672/", &plain).unwrap();
        let warning = broker.link_warning("RPC").unwrap();
        assert!(
            warning.starts_with(
                "RabbitMQ link is NOT encrypted (RPC, amqp to 127.0.0.1:5672, mq.example:5672): "
            ),
            "{warning}"
        );
        let tls = Broker::new("rabbit://u:p@mq.example:5671/?ssl=1", &plain).unwrap();
        assert_eq!(tls.link_warning("RPC"), None);
        // TLS files with ssl off: warned about even on loopback.
        let off = RabbitOptions {
            ssl_ca_file: Some("/etc/ca.pem".into()),
            ..RabbitOptions::default()
        };
        let broker = Broker::new("rabbit://u:p@127.0.0.1/", &off).unwrap();
        let warning = broker.link_warning("Nova notifications").unwrap();
        assert!(
            warning.contains("[oslo_messaging_rabbit] ssl_ca_file set but ssl is off"),
            "{warning}"
        );
    }

    #[test]
    fn tls_files_are_checked_and_named() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let missing = dir.join("missing.pem");
        let tls = |ca: &Path| RabbitOptions {
            ssl: true,
            ssl_ca_file: Some(ca.to_owned()),
            ..RabbitOptions::default()
        };
        let err = Broker::new("rabbit://u:p@h:5671/", &tls(&missing)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "[oslo_messaging_rabbit] ssl_ca_file = {}: cannot read it: No such file or directory (os error 2)",
                missing.display()
            )
        );
        let err = Broker::new("rabbit://u:p@h:5671/", &tls(&not_pem)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "[oslo_messaging_rabbit] ssl_ca_file = {}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
                not_pem.display()
            )
        );
        // From the query, the query is named.
        let url = format!(
            "rabbit://u:p@h:5671/?ssl=1&ssl_ca_file={}",
            missing.display()
        );
        let err = Broker::new(&url, &RabbitOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("transport_url parameter ssl_ca_file = "),
            "{err}"
        );
        let key_only = RabbitOptions {
            ssl: true,
            ssl_key_file: Some(not_pem.clone()),
            ..RabbitOptions::default()
        };
        let err = Broker::new("rabbit://u:p@h:5671/", &key_only).unwrap_err();
        assert!(err.to_string().contains("needs ssl_cert_file"), "{err}");
        // Files are not read while ssl is off (oslo ignores them then), but
        // the link says so.
        let off = RabbitOptions {
            ssl: false,
            ..tls(&missing)
        };
        let broker = Broker::new("rabbit://u:p@h:5672/", &off).unwrap();
        assert_eq!(broker.ignored, ["[oslo_messaging_rabbit] ssl_ca_file"]);
    }

    #[test]
    fn options_parse_as_oslo_writes_them() {
        let mut options = RabbitOptions::default();
        options.set("ssl", "True").unwrap();
        options.set("ssl_ca_file", " /etc/ca.pem ").unwrap();
        options.set("ssl_version", "tlsv1_2").unwrap();
        options.set("ssl_enforce_fips_mode", "false").unwrap();
        assert_eq!(
            options,
            RabbitOptions {
                ssl: true,
                ssl_ca_file: Some("/etc/ca.pem".into()),
                ssl_cert_file: None,
                ssl_key_file: None,
                ssl_version: TlsVersions::Tls12,
            }
        );
        options.set("ssl_ca_file", "").unwrap();
        assert_eq!(options.ssl_ca_file, None);
        assert!(options.set("ssl_version", "TLSv1_1").is_err());
        assert!(options.set("ssl_version", "TLSv9").is_err());
        assert!(options.set("rabbit_ha_queues", "true").is_err());
    }
}
