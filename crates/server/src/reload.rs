//! SIGHUP: re-read the configuration file and apply, without a restart and
//! without dropping a request or a relayed connection, what a running server
//! can change: the log level and log file (`navigator_log`), the policy file,
//! the API's TLS certificate and key, and the all-in-one relay's per-forward
//! caps. Every other option that changed is
//! logged as taking effect after a restart. A file that does not parse, or a
//! policy that does not load, changes nothing and is logged as an error.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use navigator_agent::reload::{InForce, LOG_OPTIONS, OptionKey};
use navigator_dataplane::Backend;

use crate::auth::Auth;
use crate::config::Config;
use crate::policy::Policy;
use crate::tls::ServerTls;

/// Options a reload applies: the logging keys (whose own restart-only cases
/// `navigator_log::Logging::reload` reports) and the policy file. The TLS
/// files are re-read under their configured names; new names need a restart.
const RELOADABLE: [OptionKey; 5] = [
    LOG_OPTIONS[0],
    LOG_OPTIONS[1],
    LOG_OPTIONS[2],
    LOG_OPTIONS[3],
    ("oslo_policy", "policy_file"),
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
    in_force: InForce,
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
            in_force: InForce::new(&config.values),
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
        let backend = self.backend.as_ref();
        self.in_force.settle(config.values, &RELOADABLE, || {
            backend.is_some_and(|backend| {
                backend.set_forward_caps(
                    config.max_connections_per_forward,
                    Some(config.max_udp_sessions_per_forward),
                )
            })
        });
    }

    /// Handles SIGHUP until `shutdown`. Installed before the server says it
    /// is serving, so a SIGHUP sent from then on reloads instead of killing.
    pub fn install(self, tasks: &TaskTracker, shutdown: CancellationToken) {
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangup) => {
                // systemd hears of each reload (RELOADING=1, then READY=1)
                // under `systemctl reload`.
                tasks.spawn(navigator_agent::reload::on_each_hangup(
                    hangup,
                    shutdown,
                    move || {
                        crate::systemd::reloading();
                        self.reload();
                        crate::systemd::reloaded();
                    },
                ));
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
