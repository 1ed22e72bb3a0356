//! SIGHUP in `navigator-agent`: re-read the configuration file and apply
//! what the running agent can change without rebuilding its data plane: the
//! log level and log file (through `navigator_log`) and, with the relay
//! backend, the per-forward caps (`[relay] max_connections_per_forward`,
//! `max_udp_sessions_per_forward`: a lower cap refuses new connections, it
//! closes none). Every other changed option is logged as taking effect after
//! a restart. Listeners and relayed connections are not touched, so none is
//! dropped. A file that does not parse changes nothing and is logged as an
//! error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use navigator_dataplane::Backend;

use tokio_util::sync::CancellationToken;

use crate::config::{AgentFileConfig, OptionValues};

/// An option: (section, key).
pub type OptionKey = (&'static str, &'static str);

/// The logging keys a reload applies, in the server as in the agent
/// (`navigator_log::Logging::reload` reports its own restart-only cases:
/// `log_format`, `use_journal`).
pub const LOG_OPTIONS: [OptionKey; 4] = [
    ("DEFAULT", "debug"),
    ("DEFAULT", "log_format"),
    ("DEFAULT", "log_file"),
    ("DEFAULT", "use_journal"),
];

/// The keys [`Backend::set_forward_caps`] applies (the relay, in an agent
/// or all-in-one).
pub const FORWARD_CAPS: [OptionKey; 2] = [
    ("relay", "max_connections_per_forward"),
    ("relay", "max_udp_sessions_per_forward"),
];

/// The option values a process runs with. A restart-only option keeps its
/// start-up value here, so each SIGHUP repeats that it is not applied yet.
pub struct InForce(Mutex<BTreeMap<OptionKey, String>>);

impl InForce {
    pub fn new(values: &OptionValues) -> InForce {
        InForce(Mutex::new(values.0.clone()))
    }

    /// Takes a re-read file's values: keys in `reloadable` were applied by
    /// the caller; the per-forward caps, when they changed, are applied by
    /// `set_caps` (which says whether the data plane could); every other
    /// changed key is logged as taking effect after a restart.
    pub fn settle(
        &self,
        values: OptionValues,
        reloadable: &[OptionKey],
        set_caps: impl FnOnce() -> bool,
    ) {
        let mut in_force = match self.0.lock() {
            Ok(in_force) => in_force,
            Err(poisoned) => poisoned.into_inner(),
        };
        let caps_changed = FORWARD_CAPS
            .iter()
            .any(|key| in_force.get(key) != values.0.get(key));
        let caps_applied = caps_changed && set_caps();
        for (key, value) in values.0 {
            let applied =
                reloadable.contains(&key) || (caps_applied && FORWARD_CAPS.contains(&key));
            match in_force.get(&key) {
                Some(old) if *old == value => {}
                _ if applied => {
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
}

/// The agent's reloadable parts.
pub struct Reloader {
    config_file: PathBuf,
    /// `--debug` on the command line: stays on whatever the file says.
    debug_flag: bool,
    logging: navigator_log::Logging,
    /// The data plane, once built (after RabbitMQ is reached); until then
    /// its options need a restart like the others.
    backend: OnceLock<Arc<dyn Backend>>,
    in_force: InForce,
}

impl Reloader {
    pub fn new(
        config_file: PathBuf,
        debug_flag: bool,
        logging: navigator_log::Logging,
        config: &AgentFileConfig,
    ) -> Reloader {
        Reloader {
            config_file,
            debug_flag,
            logging,
            backend: OnceLock::new(),
            in_force: InForce::new(&config.values),
        }
    }

    /// Hands over the data plane built from the start-up configuration.
    pub fn attach_backend(&self, backend: Arc<dyn Backend>) {
        let _ = self.backend.set(backend);
    }

    /// One reload (blocking: it reads the file).
    pub fn reload(&self) {
        tracing::info!(config_file = %self.config_file.display(), "SIGHUP: reloading");
        let mut config = match AgentFileConfig::load(&self.config_file) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("SIGHUP: {e}; keeping the running configuration unchanged");
                return;
            }
        };
        config.log.debug |= self.debug_flag;
        self.logging.reload(&config.log);
        let backend = self.backend.get();
        self.in_force.settle(config.values, &LOG_OPTIONS, || {
            backend.is_some_and(|backend| {
                backend.set_forward_caps(
                    config.backend.max_connections_per_forward,
                    Some(config.backend.max_udp_sessions_per_forward),
                )
            })
        });
    }

    /// Handles SIGHUP until `shutdown` (or until the returned task is
    /// aborted). The handler is in place when this returns, so a SIGHUP
    /// sent from then on reloads instead of killing the process. Must be
    /// called inside the runtime.
    pub fn install(self: Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let reloader = self;
        tokio::spawn(async move {
            let hangup = match hangup {
                Ok(hangup) => hangup,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot handle SIGHUP; changes need a restart");
                    return;
                }
            };
            on_each_hangup(hangup, shutdown, move || reloader.reload()).await;
        })
    }
}

/// Runs `reload` (blocking: it reads files) for each SIGHUP on `hangup`,
/// until `shutdown` or the end of the signal stream. One reload at a time:
/// the next SIGHUP is read once this one is done. The server's reloader
/// uses it too.
pub async fn on_each_hangup(
    mut hangup: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
    reload: impl Fn() + Send + Sync + 'static,
) {
    let reload = Arc::new(reload);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangup.recv() => {
                if received.is_none() {
                    return;
                }
            }
        }
        let reload = reload.clone();
        let _ = tokio::task::spawn_blocking(move || reload()).await;
    }
}
