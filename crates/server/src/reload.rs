//! SIGHUP: re-read the configuration file and apply, without a restart and
//! without dropping a request or a relayed connection, what a running server
//! can change: the log level and log file (`navigator_log`), the policy file,
//! the API's TLS certificate and key, and the all-in-one relay's per-forward
//! caps. Every other option that changed is
//! logged as taking effect after a restart. A file that does not parse, or a
//! policy that does not load, changes nothing and is logged as an error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use navigator_dataplane::Backend;

use crate::auth::Auth;
use crate::config::Config;
use crate::policy::Policy;
use crate::tls::ServerTls;

/// Options a reload applies: the logging keys (whose own restart-only cases
/// `navigator_log::Logging::reload` reports) and the policy file. The TLS
/// files are re-read under their configured names; new names need a restart.
const RELOADABLE: &[(&str, &str)] = &[
    ("DEFAULT", "debug"),
    ("DEFAULT", "log_format"),
    ("DEFAULT", "log_file"),
    ("DEFAULT", "use_journal"),
    ("oslo_policy", "policy_file"),
];

/// The keys [`Backend::set_forward_caps`] applies (the all-in-one relay).
const FORWARD_CAPS: [(&str, &str); 2] = [
    ("relay", "max_connections_per_forward"),
    ("relay", "max_udp_sessions_per_forward"),
];

/// What start-up hands over for SIGHUP: where the configuration came from,
/// the command line's `--debug`, and the installed logger.
pub struct Hangup {
    pub config_file: Option<PathBuf>,
    pub debug_flag: bool,
    pub logging: navigator_log::Logging,
}

/// The running server's reloadable parts.
pub struct Reloader {
    hangup: Hangup,
    auth: Arc<Auth>,
    tls: Option<Arc<ServerTls>>,
    /// The all-in-one agent's data plane (`None` in cluster mode).
    backend: Option<Arc<dyn Backend>>,
    /// Option values in force: a restart-only option keeps its start-up
    /// value here, so each SIGHUP repeats that it is not applied yet.
    in_force: Mutex<BTreeMap<(&'static str, &'static str), String>>,
}

impl Reloader {
    pub fn new(
        hangup: Hangup,
        config: &Config,
        auth: Arc<Auth>,
        tls: Option<Arc<ServerTls>>,
        backend: Option<Arc<dyn Backend>>,
    ) -> Reloader {
        Reloader {
            hangup,
            auth,
            tls,
            backend,
            in_force: Mutex::new(config.values.0.clone()),
        }
    }

    /// One reload (blocking: it reads files).
    pub fn reload(&self) {
        let path = self.hangup.config_file.as_deref();
        tracing::info!(
            config_file = %path.map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into()),
            "SIGHUP: reloading"
        );
        let mut config = match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("SIGHUP: {e}; keeping the running configuration unchanged");
                return;
            }
        };
        config.log.debug |= self.hangup.debug_flag;
        self.hangup.logging.reload(&config.log);
        match Policy::load(config.policy_file.as_deref()) {
            Ok(policy) => {
                self.auth.set_policy(policy);
                tracing::info!(
                    policy_file = %config.policy_file.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "(built-in rules)".into()),
                    "policy reloaded"
                );
            }
            Err(e) => tracing::error!("SIGHUP: {e}; keeping the policy in force"),
        }
        if let Some(tls) = &self.tls {
            tls.reload("SIGHUP");
        }
        let mut in_force = match self.in_force.lock() {
            Ok(values) => values,
            Err(poisoned) => poisoned.into_inner(),
        };
        let caps_changed = FORWARD_CAPS
            .iter()
            .any(|key| in_force.get(key) != config.values.0.get(key));
        let caps_applied = caps_changed
            && self.backend.as_ref().is_some_and(|backend| {
                backend.set_forward_caps(
                    config.max_connections_per_forward,
                    Some(config.max_udp_sessions_per_forward),
                )
            });
        for (key, value) in config.values.0 {
            let reloadable =
                RELOADABLE.contains(&key) || (caps_applied && FORWARD_CAPS.contains(&key));
            match in_force.get(&key) {
                Some(old) if *old == value => {}
                _ if reloadable => {
                    in_force.insert(key, value);
                }
                _ => tracing::warn!(
                    "option [{}] {} changed; takes effect after a restart",
                    key.0,
                    key.1
                ),
            }
        }
    }

    /// Handles SIGHUP until `shutdown`. Installed before the server says it
    /// is serving, so a SIGHUP sent from then on reloads instead of killing.
    pub fn install(self, tasks: &TaskTracker, shutdown: CancellationToken) {
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hangup) => {
                let reloader = Arc::new(self);
                tasks.spawn(async move {
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            received = hangup.recv() => {
                                if received.is_none() {
                                    return;
                                }
                            }
                        }
                        let reloader = reloader.clone();
                        // Reloads run one at a time: the next SIGHUP is
                        // read once this one is done. systemd hears of it
                        // (RELOADING=1, then READY=1) under `systemctl reload`.
                        crate::systemd::reloading();
                        let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                        crate::systemd::reloaded();
                    }
                });
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot handle SIGHUP; changes need a restart (the TLS certificate is still re-read when its files change)"
            ),
        }
        #[cfg(not(unix))]
        let _ = (self, tasks, shutdown);
    }
}
