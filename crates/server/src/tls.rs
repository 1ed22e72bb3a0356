//! The API over TLS (`[ssl]`, oslo.service's names): the certificate and key
//! the listener presents, re-read without a restart, and the optional CA that
//! client certificates must chain to.
//!
//! rustls with the ring provider, as everywhere in Navigator. The certificate
//! is served through a [`ResolvesServerCert`] that holds the current pair
//! behind a lock, so a reload changes what new handshakes see and leaves
//! connections already made alone. [`ServerTls::watch`] polls the files'
//! modification time and size (robust where inotify is not: bind mounts,
//! Kubernetes secrets swapped by symlink, editors that replace files);
//! `run.rs` also reloads on SIGHUP. A new pair that does not load (unreadable,
//! key not matching, expired) keeps the old one, with a WARN naming file and
//! reason; at start-up the same problems stop the server (exit 64).
//!
//! `ca_file` is read at start-up only; with it every client must present a
//! certificate it vouches for.

use navigator_rpc::broker::{read_certificates, read_key};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate and key files are checked for a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// `[ssl]`: where the API's TLS files are. TLS is on when `cert_file` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

impl SslConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[ssl] {option} = {}: {message}", path.display())]
    File {
        option: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Config(String),
}

/// One loaded certificate and key, with what the logs say about it.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Modification time and size of the certificate and key files when
    /// they were read: a change means "read them again".
    stamp: Stamp,
    serial: String,
    not_after: String,
}

type Stamp = [Option<(SystemTime, u64)>; 2];

/// The certificate new handshakes get; replaced by a successful reload.
struct Current {
    loaded: RwLock<Loaded>,
}

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Current").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .loaded
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key,
        ))
    }
}

/// The API listener's TLS: the acceptor and the reloadable certificate.
pub struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
    /// Whether client certificates are required (`ca_file` set).
    pub client_auth: bool,
}

impl ServerTls {
    /// Reads the files of `[ssl]` (`None` when TLS is off). Every problem is
    /// an error naming option, file and reason, for exit 64.
    pub fn load(ssl: &SslConfig) -> Result<Option<ServerTls>, TlsError> {
        let (cert_file, key_file) = match (&ssl.cert_file, &ssl.key_file) {
            (None, None) => {
                if let Some(ca) = &ssl.ca_file {
                    return Err(TlsError::Config(format!(
                        "[ssl] ca_file = {} needs cert_file and key_file: client certificates \
                         are only asked for over TLS",
                        ca.display()
                    )));
                }
                return Ok(None);
            }
            (Some(cert), None) => {
                return Err(TlsError::Config(format!(
                    "[ssl] cert_file = {} needs key_file, the private key of the certificate",
                    cert.display()
                )));
            }
            (None, Some(key)) => {
                return Err(TlsError::Config(format!(
                    "[ssl] key_file = {} needs cert_file, the certificate it belongs to",
                    key.display()
                )));
            }
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load_pair(&cert_file, &key_file, &provider)?;
        warn_if_key_readable(&key_file);
        let current = Arc::new(Current {
            loaded: RwLock::new(loaded),
        });
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("TLS set-up failed: {e}")))?;
        let builder = match &ssl.ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = read_roots(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::File {
                            option: "ca_file",
                            path: ca.clone(),
                            message: format!("not usable to check client certificates: {e}"),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&current) as _);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(ServerTls {
            cert_file,
            key_file,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            client_auth: ssl.ca_file.is_some(),
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let loaded = self
            .current
            .loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        format!(
            "certificate {} (serial {}, valid until {}){}",
            self.cert_file.display(),
            loaded.serial,
            loaded.not_after,
            if self.client_auth {
                ", client certificates required"
            } else {
                ""
            }
        )
    }

    /// Reads the certificate and key again and serves them to new
    /// handshakes; a pair that does not load keeps the current one (WARN).
    /// Returns whether the new pair is in use.
    pub fn reload(&self, why: &str) -> bool {
        let provider = rustls::crypto::ring::default_provider();
        match load_pair(&self.cert_file, &self.key_file, &provider) {
            Ok(loaded) => {
                tracing::info!(
                    cert_file = %self.cert_file.display(),
                    serial = %loaded.serial,
                    not_after = %loaded.not_after,
                    "API TLS certificate reloaded ({why})"
                );
                *self
                    .current
                    .loaded
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = loaded;
                true
            }
            Err(e) => {
                // Remember what was seen, so a bad pair is reported once and
                // not on every poll; the next change is read again.
                self.current
                    .loaded
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .stamp = stamp(&self.cert_file, &self.key_file);
                tracing::warn!(
                    "API TLS certificate not reloaded ({why}), still serving the previous one: {e}"
                );
                false
            }
        }
    }

    /// Reloads if the certificate or key file changed since last read.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.cert_file, &self.key_file);
        let seen = self
            .current
            .loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .stamp;
        now != seen && self.reload("the files changed")
    }

    /// Polls the files every `interval` until `shutdown`.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let this = Arc::clone(&self);
            // File reads and key parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    [one(cert), one(key)]
}

/// Reads and checks a certificate chain and its key.
fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    // Stamped before reading: a change during the read is seen next poll.
    let stamp = stamp(cert_file, key_file);
    let cert_error = |message: String| TlsError::File {
        option: "cert_file",
        path: cert_file.to_owned(),
        message,
    };
    let chain = read_certificates(cert_file).map_err(cert_error)?;
    let (serial, not_after) = check_validity(&chain[0]).map_err(cert_error)?;
    let key = read_key(key_file).map_err(|message| TlsError::File {
        option: "key_file",
        path: key_file.to_owned(),
        message,
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        TlsError::Config(format!(
            "[ssl] cert_file = {} and key_file = {}: not a usable certificate and key pair: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        stamp,
        serial,
        not_after,
    })
}

/// The serial and end of validity of a certificate; an expired one is an
/// error (clients would refuse it), one not valid yet only a warning (the
/// clock of either side may be off by a little).
fn check_validity(der: &CertificateDer<'_>) -> Result<(String, String), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the first certificate cannot be parsed: {e}"))?;
    let validity = cert.validity();
    let time = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0).map_or_else(
            || t.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
    };
    let now = chrono::Utc::now().timestamp();
    let not_after = validity.not_after.timestamp();
    if not_after < now {
        return Err(format!(
            "the certificate expired at {} (notAfter)",
            time(not_after)
        ));
    }
    let not_before = validity.not_before.timestamp();
    if not_before > now {
        tracing::warn!(
            "the API's TLS certificate is not valid before {} (notBefore); clients will refuse it until then",
            time(not_before)
        );
    }
    Ok((cert.raw_serial_as_string(), time(not_after)))
}

/// A key every user can read is a key anyone on the host may have copied.
/// Group access is how a packaged install shares it (root:navigator, 0640).
fn warn_if_key_readable(key_file: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(key_file)
            && meta.permissions().mode() & 0o007 != 0
        {
            tracing::warn!(
                "[ssl] key_file = {} is accessible to every user (mode {:o}); make it 0600, or 0640 with the group navigator runs as",
                key_file.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let error = |message: String| TlsError::File {
        option: "ca_file",
        path: path.to_owned(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for (i, certificate) in read_certificates(path)
        .map_err(error)?
        .into_iter()
        .enumerate()
    {
        roots
            .add(certificate)
            .map_err(|e| error(format!("certificate {} is not a usable CA: {e}", i + 1)))?;
    }
    Ok(roots)
}
