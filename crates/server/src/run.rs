//! Start-up and shutdown of `navigator-server`: configuration, logging, the
//! open-file budget, the store, the RPC transport, the in-process agent
//! (all-in-one only; in cluster mode `navigator-agent` processes report over
//! RabbitMQ) and the HTTP listener ([`crate::http`]), in that order, and the
//! reverse on SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use navigator_agent::fd_budget::{FdBudget, Wanted};
use navigator_agent::options::{BackendOptions, log_preflight, make_backend};
use navigator_agent::{Agent, AgentConfig};
use navigator_rpc::broker::mask_url;
use navigator_rpc::inproc::InProcTransport;
use navigator_rpc::{Broker, Transport};
use navigator_store::{Store, redact, sqlite_url};
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, router};
use crate::cli::{Args, Command, ConfigCommand, DbCommand};
use crate::config::{AuthStrategy, Config, DEFAULT_CONFIG_FILE, sample};
use crate::control::Control;

/// How long in-flight HTTP requests and relayed connections may run after a
/// shutdown signal before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server did not run: a usage problem exits 64 (EX_USAGE), anything
/// else 1.
#[derive(Debug)]
pub enum StartError {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

fn usage(e: impl Into<anyhow::Error>) -> StartError {
    StartError::Usage(e.into())
}

fn runtime(e: impl Into<anyhow::Error>) -> StartError {
    StartError::Runtime(e.into())
}

/// Runs the command `args` names.
pub fn main(args: Args) -> Result<(), StartError> {
    match &args.command {
        Some(Command::Config {
            command: ConfigCommand::Sample,
        }) => {
            print!("{}", sample());
            return Ok(());
        }
        Some(Command::Policy {
            command: crate::cli::PolicyCommand::Sample,
        }) => {
            print!("{}", crate::policy::sample());
            return Ok(());
        }
        Some(Command::Manpage) => {
            use clap::CommandFactory as _;
            clap_mangen::Man::new(Args::command())
                .render(&mut std::io::stdout())
                .context("cannot write the man page")
                .map_err(runtime)?;
            return Ok(());
        }
        Some(Command::Openapi) => {
            let json = serde_json::to_string_pretty(&crate::app::openapi()).map_err(runtime)?;
            println!("{json}");
            return Ok(());
        }
        _ => {}
    }
    let config_path = args.config_file.clone().or_else(|| {
        Path::new(DEFAULT_CONFIG_FILE)
            .exists()
            .then(|| PathBuf::from(DEFAULT_CONFIG_FILE))
    });
    let mut config = Config::load(config_path.as_deref()).map_err(usage)?;
    if let Some(host) = args.bind_host {
        config.bind_host = host;
    }
    if let Some(port) = args.bind_port {
        config.bind_port = port;
    }
    config.log.debug |= args.debug;
    let logging = init_logging(&config, &args)?;
    let hangup = crate::reload::Hangup {
        config_file: config_path.clone(),
        debug_flag: args.debug,
        logging,
    };
    for option in &config.unknown_options {
        tracing::warn!(
            "ignoring unknown option {option} in {} (see navigator-server config sample)",
            config_path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    let database_url = match &config.database_connection {
        Some(url) => url.clone(),
        None => sqlite_url(&data_dir(&args)?.join("navigator.db")),
    };
    let runtime_builder = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .map_err(runtime)
    };
    match &args.command {
        Some(Command::Db {
            command: DbCommand::Sync,
        }) => runtime_builder()?.block_on(async {
            let store = Store::connect(&database_url).await.map_err(runtime)?;
            store.migrate().await.map_err(runtime)?;
            println!("database {} is up to date", redact(&database_url));
            Ok(())
        }),
        Some(Command::Db {
            command: DbCommand::Version,
        }) => runtime_builder()?.block_on(async {
            let store = Store::connect(&database_url).await.map_err(runtime)?;
            let status = store.schema_status().await.map_err(runtime)?;
            store.close().await;
            println!("{}", status.current.unwrap_or(0));
            if !status.pending.is_empty() {
                eprintln!(
                    "this release's schema version is {}; run `navigator-server db sync` to apply {:?}",
                    status.latest, status.pending
                );
            }
            if !status.unknown.is_empty() {
                eprintln!(
                    "the database has migrations {:?} that this release (schema version {}) does not know: it was upgraded by a newer release",
                    status.unknown, status.latest
                );
            }
            Ok(())
        }),
        Some(Command::Keystone {
            command: crate::cli::KeystoneCommand::Register(register),
        }) => runtime_builder()?.block_on(async {
            let report = crate::catalog::register(&config, register).await?;
            print!("{report}");
            Ok(())
        }),
        Some(Command::Config {
            command: ConfigCommand::Check,
        }) => {
            check_serving_policy(&config, &args)?;
            let budget = fd_budget(&config)?;
            println!("open files: {budget}");
            println!(
                "configuration OK: API on {}:{}{}, database {}, backend {}, proxy addresses {}, ports {}",
                config.bind_host,
                config.bind_port,
                if config.ssl.enabled() { " (HTTPS)" } else { "" },
                redact(&database_url),
                config.backend,
                config
                    .external_addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                config.port_range
            );
            Ok(())
        }
        _ => {
            check_serving_policy(&config, &args)?;
            let budget = fd_budget(&config)?;
            tracing::info!("fd budget: {budget}");
            runtime_builder()?.block_on(serve(Arc::new(config), database_url, budget, hangup))
        }
    }
}

/// Refuses configurations that would serve something unsafe or that this
/// build cannot do, before anything is started.
fn check_serving_policy(config: &Config, args: &Args) -> Result<(), StartError> {
    // Loads the policy file and checks the Keystone options, so that
    // `config check` and start-up refuse the same mistakes (exit 64).
    crate::auth::Auth::from_config(config).map_err(usage)?;
    // Reads the TLS files of [oslo_messaging_rabbit], so that a missing or
    // invalid one is a usage error here rather than a connect failure later.
    if is_cluster(config) {
        rpc_broker(config)?;
    }
    if let Some(url) = config.nova.transport_url.as_deref() {
        nova_broker(url, config)?;
    }
    // The database's TLS files, read now for the same reason.
    if let Some(url) = config.database_connection.as_deref() {
        navigator_store::check_url_files(url)
            .map_err(|message| usage(anyhow!("[database] connection: {message}")))?;
    }
    // Reads and checks the API's certificate, key and CA ([ssl]).
    crate::tls::ServerTls::load(&config.ssl).map_err(usage)?;
    if is_cluster(config) && args.all_in_one {
        return Err(usage(anyhow!(
            "--all-in-one cannot be used with [DEFAULT] transport_url = {}: \
             all-in-one runs the agent inside the server and needs transport_url unset (or inproc://); \
             cluster mode (rabbit://) runs navigator-server without --all-in-one and one navigator-agent per proxy node",
            mask_url(&config.transport_url)
        )));
    }
    if config.auth_strategy == AuthStrategy::NoAuth
        && !config.bind_host.is_loopback()
        && !args.allow_insecure_noauth
    {
        return Err(usage(anyhow!(
            "refusing to serve auth_strategy = noauth on {}: without authentication anyone who can reach the port is admin of every project. \
             Bind to 127.0.0.1 or ::1, enable Keystone authentication, or pass --allow-insecure-noauth if this network is trusted",
            config.bind_host
        )));
    }
    Ok(())
}

/// Splits the open-file limit between the process, the API's connections
/// and the relay (after raising the soft limit to the hard one); explicit
/// caps the limit cannot hold are a usage error (exit 64).
fn fd_budget(config: &Config) -> Result<FdBudget, StartError> {
    let limit = navigator_agent::fd_budget::raise_nofile_limit();
    FdBudget::split(
        limit,
        Wanted {
            api: Some(config.api_max_connections),
            relay_connections: config.relay_max_connections,
            udp_sessions: config.max_udp_sessions,
        },
    )
    .map_err(usage)
}

/// The broker of `[DEFAULT] transport_url` with the TLS options.
fn rpc_broker(config: &Config) -> Result<Broker, StartError> {
    Broker::new(&config.transport_url, &config.rabbit)
        .context("cannot set up the RabbitMQ link of [DEFAULT] transport_url")
        .map_err(usage)
}

/// The broker of `[nova] transport_url` with the TLS options.
fn nova_broker(url: &str, config: &Config) -> Result<Broker, StartError> {
    Broker::new(url, &config.nova.rabbit)
        .context("cannot set up the RabbitMQ link of [nova] transport_url")
        .map_err(usage)
}

fn data_dir(args: &Args) -> Result<PathBuf, StartError> {
    match &args.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => dirs::data_dir()
            .map(|dir| dir.join("navigator"))
            .ok_or_else(|| {
                usage(anyhow!(
                    "cannot determine a data directory (no HOME?); pass --data-dir DIR"
                ))
            }),
    }
}

/// Installs the logger. Only the server itself writes `log_file` and the
/// journal; the other commands (`db sync`, `config check`, ...), which an
/// operator often runs as root, log to stderr and only check `log_file`:
/// a file root created would stop the service's own user from opening it.
fn init_logging(config: &Config, args: &Args) -> Result<navigator_log::Logging, StartError> {
    let mut options = config.log.clone();
    if args.command.is_some() {
        if let Some(path) = &options.log_file {
            navigator_log::check_log_file(path).map_err(usage)?;
        }
        options.log_file = None;
        options.use_journal = false;
    }
    navigator_log::init("navigator-server", &options, "sqlx=warn,hyper=info").map_err(usage)
}

/// Whether `transport_url` selects cluster mode: agents are separate
/// `navigator-agent` processes reached through RabbitMQ.
fn is_cluster(config: &Config) -> bool {
    config.transport_url.starts_with("rabbit://")
}

/// Serves all-in-one (in-process agent) or, with a rabbit:// transport,
/// cluster mode (API and control only; agents report over RabbitMQ).
async fn serve(
    config: Arc<Config>,
    database_url: String,
    budget: FdBudget,
    hangup: crate::reload::Hangup,
) -> Result<(), StartError> {
    let cluster = is_cluster(&config);
    let store = Store::connect(&database_url).await.map_err(runtime)?;
    store.log_link(&database_url).await;
    if cluster {
        // Several servers share a cluster's database; upgrading its schema
        // is the operator's step, not a side effect of starting one of them.
        let pending = store.pending_migrations().await.map_err(runtime)?;
        if !pending.is_empty() {
            store.close().await;
            return Err(runtime(anyhow!(
                "database {} is missing {} schema migration(s) of this release; run `navigator-server db sync` (with the same configuration file) first",
                redact(&database_url),
                pending.len()
            )));
        }
    } else {
        // All-in-one owns its database, so it keeps the schema current itself.
        store.migrate().await.map_err(runtime)?;
    }

    let amqp = if cluster {
        let broker = rpc_broker(&config)?;
        broker.log_link("RPC");
        Some(Arc::new(
            navigator_rpc::AmqpTransport::connect_to(broker, navigator_rpc::amqp::DEFAULT_EXCHANGE)
                .await
                .with_context(|| {
                    format!(
                        "cannot connect to RabbitMQ at [DEFAULT] transport_url = {}",
                        mask_url(&config.transport_url)
                    )
                })
                .map_err(runtime)?,
        ))
    } else {
        None
    };
    let transport: Arc<dyn Transport> = match &amqp {
        Some(amqp) => amqp.clone(),
        None => Arc::new(InProcTransport::new()),
    };
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();

    let control = Arc::new(Control::new(
        store.clone(),
        transport.clone(),
        config.clone(),
        loopback_allowed(&config),
    ));
    // The server listens before the agent starts, so the agent's first
    // heartbeat (which asks for a full sync) is not lost.
    tasks.spawn(control.clone().serve_reports(shutdown.child_token()));

    // The all-in-one data plane, kept for SIGHUP (its per-forward caps).
    let local_backend = if cluster {
        None
    } else {
        Some(start_local_agent(&config, &budget, &control, &transport, &tasks, &shutdown).await?)
    };
    tasks.spawn(control.clone().resync_periodically(shutdown.child_token()));
    tasks.spawn(control.clone().watch_failures(shutdown.child_token()));
    // Nova's deletions: in cluster mode on the RPC broker, or on
    // [nova] transport_url (which also lets all-in-one listen).
    let nova = crate::nova::start(control.clone(), &config.nova)
        .with_context(|| {
            format!(
                "cannot listen to Nova notifications ([nova] transport_url = {})",
                mask_url(config.nova.transport_url.as_deref().unwrap_or_default())
            )
        })
        .map_err(usage)?;

    let listener = tokio::net::TcpListener::bind((config.bind_host, config.bind_port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.bind_host, config.bind_port))
        .map_err(runtime)?;
    let local = listener.local_addr().map_err(runtime)?;
    let tls = crate::tls::ServerTls::load(&config.ssl)
        .map_err(usage)?
        .map(Arc::new);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bound_url = format!("{scheme}://{local}");
    // Links name the address clients use, not the one bound (0.0.0.0, a
    // port behind a proxy).
    let public_url = config
        .public_endpoint
        .clone()
        .unwrap_or_else(|| bound_url.clone());
    let auth = Arc::new(crate::auth::Auth::from_config(&config).map_err(usage)?);
    let state = AppState {
        auth,
        control: control.clone(),
        config: config.clone(),
        public_url: public_url.clone(),
    };
    if let Some(tls) = &tls {
        tracing::info!("API over TLS: {}", tls.describe());
        tasks.spawn(
            tls.clone()
                .watch(crate::tls::POLL_INTERVAL, shutdown.child_token()),
        );
    }
    // Installed before the banner: a SIGHUP sent once it shows reloads
    // instead of killing the process.
    crate::reload::Reloader::new(
        hangup,
        &config,
        state.auth.clone(),
        tls.clone(),
        local_backend,
    )
    .install(&tasks, shutdown.child_token());
    print_banner(&config, &public_url, &bound_url, &database_url);
    tracing::info!(%public_url, listening = %bound_url, "serving");

    let limits = crate::http::Limits {
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
        keepalive_timeout: config.keepalive_timeout,
        max_connections: budget.api,
    };
    let server = crate::http::serve_tls(
        listener,
        router(state),
        limits,
        tls.as_ref().map(|tls| tls.acceptor()),
        shutdown.clone(),
        SHUTDOWN_GRACE,
    );
    let ready = tokio::spawn(crate::systemd::ready_when_answering(
        local,
        tls.is_some(),
        shutdown.clone(),
    ));
    let signal = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            crate::systemd::stopping();
            tracing::info!(
                "shutting down: no new requests or connections; letting live ones finish"
            );
            shutdown.cancel();
        }
    });
    server.await;
    shutdown.cancel();
    ready.abort();
    if let Some(nova) = &nova {
        // A notification being handled now is redelivered to another server.
        nova.stop();
    }
    signal.abort();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown did not complete within {SHUTDOWN_GRACE:?}");
    }
    if let Some(amqp) = &amqp {
        amqp.close().await;
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts the all-in-one agent on the in-process transport, then registers
/// it and restores every stored forward before the API answers, so that a
/// restart is invisible to clients.
async fn start_local_agent(
    config: &Config,
    budget: &FdBudget,
    control: &Arc<Control>,
    transport: &Arc<dyn Transport>,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Arc<dyn navigator_dataplane::Backend>, StartError> {
    let mut options = backend_options(config);
    budget.apply(&mut options);
    let backend = make_backend(&options);
    log_preflight(backend.as_ref(), config.port_range).await;
    let agent = Arc::new(Agent::new(
        AgentConfig {
            host: config.host.clone(),
            external_addresses: config.external_addresses.clone(),
            port_range: config.port_range,
            report_interval: config.report_interval,
        },
        backend.clone(),
    ));
    tasks.spawn(navigator_agent::run(
        agent.clone(),
        transport.clone(),
        shutdown.child_token(),
    ));
    control
        .report_state(agent.state().await)
        .await
        .map_err(|e| runtime(anyhow!("{e}")))?;
    Ok(backend)
}

/// The backend options of the server's configuration, for the all-in-one agent.
fn backend_options(config: &Config) -> BackendOptions {
    BackendOptions {
        backend: config.backend.clone(),
        host: config.host.clone(),
        conntrack_cleanup: config.conntrack_cleanup,
        fix_sysctls: config.fix_sysctls,
        full_sync_interval: config.full_sync_interval,
        nft_table: config.nft_table.clone(),
        nft_element_comments: config.nft_element_comments,
        iptables_variant: config.iptables_variant,
        max_connections_per_forward: config.max_connections_per_forward,
        // Resolved from the fd budget by the caller.
        max_connections: None,
        max_udp_sessions: None,
        relay_fds: None,
        max_udp_sessions_per_forward: config.max_udp_sessions_per_forward,
        tcp_idle_timeout: config.tcp_idle_timeout,
        udp_idle_timeout: config.udp_idle_timeout,
        connect_timeout: config.connect_timeout,
        shutdown_grace: SHUTDOWN_GRACE,
        // Address groups are navigator-agent's (cluster mode) only.
        freebind_addresses: Vec::new(),
    }
}

/// Whether forwards may target loopback (`[forwards] allow_loopback_targets`,
/// else the default chosen here).
///
/// A loopback target reaches the proxy's own local services: the API, the
/// database, whatever else listens on 127.0.0.1 there. That is the point of
/// the all-in-one demo (noauth on loopback: whoever can call the API owns
/// the machine anyway), and a hole everywhere else: a Keystone tenant could
/// reach the server's own port. So unset means on only for an all-in-one
/// server with `auth_strategy = noauth` bound to loopback; in cluster mode
/// the proxies are other machines, and targets are on instances.
pub fn loopback_allowed(config: &Config) -> bool {
    config.allow_loopback_targets.unwrap_or_else(|| {
        !is_cluster(config)
            && config.auth_strategy == AuthStrategy::NoAuth
            && config.bind_host.is_loopback()
    })
}

fn print_banner(config: &Config, public_url: &str, bound_url: &str, database_url: &str) {
    let addresses = config
        .external_addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let cluster = is_cluster(config);
    if cluster {
        println!("Navigator server (cluster mode) is running.");
    } else {
        println!("Navigator all-in-one is running.");
    }
    println!(
        "  API       {public_url}  ({})",
        match config.auth_strategy {
            AuthStrategy::NoAuth => format!(
                "auth: noauth; project from X-Project-Id, default {:?}",
                config.default_project_id
            ),
            AuthStrategy::Keystone => format!(
                "auth: keystone at {}",
                crate::auth::www_authenticate_uri(&config.keystone_authtoken)
            ),
        }
    );
    if public_url != bound_url {
        println!("            (listening on {bound_url}; [DEFAULT] public_endpoint names the API)");
    }
    println!("  database  {}", redact(database_url));
    if cluster {
        println!(
            "  agents    navigator-agent processes report over {}; see `navigator proxy list`",
            mask_url(&config.transport_url)
        );
        println!("Stop with Ctrl-C.");
        return;
    }
    println!(
        "  proxy     {} with the {} backend on {addresses}, ports {}",
        config.host, config.backend, config.port_range
    );
    // Loopback is the demo's target; elsewhere the target is an instance.
    let (target, what) = if loopback_allowed(config) {
        ("127.0.0.1", "a TCP service on 127.0.0.1:8080")
    } else {
        ("10.0.0.5", "port 8080 of an instance at 10.0.0.5")
    };
    println!("Create a first forward (to {what}):");
    let mut endpoint = if public_url == "http://127.0.0.1:9797" {
        String::new()
    } else {
        format!(" --os-endpoint {public_url}")
    };
    if config.ssl.enabled() {
        // A private CA is the usual case; the CLI must be told to trust it.
        endpoint.push_str(" --os-cacert CA.pem");
    }
    println!(
        "  navigator{endpoint} forward create --protocol tcp --internal-ip-address {target} --internal-port 8080"
    );
    if config.ssl.enabled() {
        println!(
            "  (CA.pem: the CA that signed [ssl] cert_file, unless the system already trusts it)"
        );
    }
    println!("Stop with Ctrl-C.");
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(text: &str) -> bool {
        loopback_allowed(&Config::parse("t.conf", text).unwrap())
    }

    #[test]
    fn loopback_targets_default_to_the_all_in_one_demo_only() {
        let keystone = "[DEFAULT]\nauth_strategy = keystone\n[keystone_authtoken]\n\
                        auth_url = http://127.0.0.1:5000/v3\nwww_authenticate_uri = http://127.0.0.1:5000/v3\n\
                        auth_type = password\nusername = navigator\npassword = x\nproject_name = service\n\
                        user_domain_name = Default\nproject_domain_name = Default\n";
        // noauth on loopback: the demo.
        assert!(allowed(""));
        assert!(allowed("[DEFAULT]\nbind_host = ::1\n"));
        // Anyone else who can call the API must not reach the host's ports.
        assert!(!allowed(keystone));
        assert!(!allowed("[DEFAULT]\nbind_host = 0.0.0.0\n"));
        assert!(!allowed(
            "[DEFAULT]\ntransport_url = rabbit://u:p@127.0.0.1:5672/\n"
        ));
        // Explicit either way.
        assert!(allowed(&format!(
            "{keystone}[forwards]\nallow_loopback_targets = true\n"
        )));
        assert!(!allowed("[forwards]\nallow_loopback_targets = false\n"));
    }
}
