//! `navigator-agent`: the proxy agent of cluster mode, one per proxy node.
//! It reads `navigator.conf`, connects to RabbitMQ, serves its host's topic
//! with the configured data plane and reports to the servers, until
//! SIGINT/SIGTERM; under systemd, SIGTERM hands the relay's sockets to the
//! next process (`navigator_agent::handover`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use navigator_agent::config::{AgentFileConfig, SHUTDOWN_GRACE};
use navigator_agent::options::{log_preflight, make_backend};
use navigator_agent::{Agent, AgentConfig};
use navigator_core::Backoff;
use navigator_rpc::{AmqpTransport, Broker, Transport, amqp};
use tokio_util::sync::CancellationToken;

/// jemalloc: the relay backend holds thousands of idle connections; see the workspace's
/// Cargo.toml for why.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read when `--config-file` is not given, as by the server.
const DEFAULT_CONFIG_FILE: &str = "/etc/navigator/navigator.conf";
/// EX_USAGE: the configuration or the command line is wrong.
const EXIT_USAGE: u8 = 64;

/// Navigator proxy agent (cluster mode): carries the forwards the servers
/// place on this host.
#[derive(Debug, Parser)]
#[command(
    name = "navigator-agent",
    version,
    after_help = "Signals: SIGHUP re-reads the configuration. SIGTERM under systemd \
                  (NOTIFY_SOCKET set, [agent] handover = true) hands the relay's listening \
                  sockets and connections to the next process through systemd's file \
                  descriptor store, so a restart or upgrade drops none; otherwise it stops \
                  accepting and lets connections finish for up to 10 s. Kernel backends' \
                  rules stay in place and are adopted unchanged by the next agent."
)]
struct Args {
    /// Configuration file (the same navigator.conf as the server's).
    /// Default: /etc/navigator/navigator.conf.
    #[arg(long, value_name = "PATH")]
    config_file: Option<PathBuf>,

    /// Log at debug level (overrides [DEFAULT] debug).
    #[arg(long)]
    debug: bool,

    /// Print the man page (roff) and exit; scripts/package installs it.
    #[arg(long, hide = true)]
    manpage: bool,

    #[command(subcommand)]
    command: Option<AgentCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Check the running agent of this host through RabbitMQ (it must
    /// answer get_state) and the data plane's host checks; prints one line,
    /// exit 0 when healthy, 1 when not. For monitors and systemd.
    Health {
        /// Seconds the agent has to answer.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.manpage {
        use clap::CommandFactory as _;
        return match clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("navigator-agent: cannot write the man page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let path = args
        .config_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    if let Some(AgentCommand::Health { timeout }) = args.command {
        return health(&path, Duration::from_secs(timeout));
    }
    let config = match AgentFileConfig::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("navigator-agent: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut config = config;
    config.log.debug |= args.debug;
    // What the file alone cannot tell: the groups' interfaces exist and
    // keepalived is installed. A usage error too.
    let keepalived = match &config.vrrp {
        Some(vrrp) => match vrrp.check_host(&path.display().to_string()) {
            Ok(program) => Some(program),
            Err(e) => {
                eprintln!("navigator-agent: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => None,
    };
    let logging = match navigator_log::init("navigator-agent", &config.log, "lapin=warn") {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("navigator-agent: {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Before anything runs a backend: what the data plane does not need is
    // gone for the rest of the process and its children.
    let needed = navigator_agent::privileges::needed(
        &config.backend.backend,
        config.port_range,
        config.vrrp.is_some(),
    );
    match navigator_agent::privileges::keep_only(&needed) {
        Ok(navigator_agent::privileges::Outcome::Root) => {
            tracing::info!("running as root: capabilities not reduced")
        }
        Ok(navigator_agent::privileges::Outcome::Kept { kept, missing }) => {
            tracing::info!(
                backend = %config.backend.backend,
                "capabilities kept: {}",
                if kept.is_empty() { "none".to_owned() } else { kept.join(", ") }
            );
            if !missing.is_empty() {
                tracing::warn!(
                    "the {} backend needs {}, which this process was not given (run it as the packaged unit does, with AmbientCapabilities, or as root)",
                    config.backend.backend,
                    missing.join(", ")
                );
            }
        }
        Err(e) => {
            eprintln!("navigator-agent: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Before any socket exists: the relay's caps come from the open-file
    // limit, and a configuration it cannot hold is a usage error.
    let limit = navigator_agent::fd_budget::raise_nofile_limit();
    match navigator_agent::fd_budget::FdBudget::split(limit, config.fd_wanted) {
        Ok(budget) => {
            tracing::info!("fd budget: {budget}");
            budget.apply(&mut config.backend);
        }
        Err(e) => {
            eprintln!("navigator-agent: {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    }
    // The TLS files are read now: a bad one is a configuration mistake to
    // report and exit on, not a broker outage to wait out.
    let broker = match Broker::new(&config.transport_url, &config.rabbit) {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!(
                "navigator-agent: {}: cannot set up the RabbitMQ link: {e}",
                path.display()
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Before any thread: the descriptors a previous process handed over
    // (systemd's LISTEN_FDS), taken and removed from systemd's store at once.
    let received = navigator_agent::handover::receive();
    let reloader = Arc::new(navigator_agent::reload::Reloader::new(
        path.clone(),
        args.debug,
        logging,
        &config,
    ));
    match run(config, broker, &path, reloader, keepalived, received) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("navigator-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `navigator-agent health` (see `navigator_agent::health`): one line on
/// stdout, exit 0 healthy or 1 not, whatever went wrong.
fn health(path: &Path, timeout: Duration) -> ExitCode {
    let verdict = match AgentFileConfig::load(path) {
        Err(e) => navigator_agent::health::Health::failed(e.to_string()),
        Ok(config) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(check_health(config, timeout)),
            Err(e) => navigator_agent::health::Health::failed(format!(
                "cannot start the async runtime: {e}"
            )),
        },
    };
    println!("{}", verdict.line);
    ExitCode::from(verdict.exit_code())
}

async fn check_health(
    mut config: AgentFileConfig,
    timeout: Duration,
) -> navigator_agent::health::Health {
    use navigator_agent::health::Health;
    let shown = navigator_rpc::broker::mask_url(&config.transport_url);
    let broker = match Broker::new(&config.transport_url, &config.rabbit) {
        Ok(broker) => broker,
        Err(e) => return Health::failed(format!("RabbitMQ link {shown}: {e}")),
    };
    let connect = AmqpTransport::connect_to(broker, amqp::DEFAULT_EXCHANGE);
    let amqp = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(amqp)) => Arc::new(amqp),
        Ok(Err(e)) => return Health::failed(format!("cannot connect to RabbitMQ at {shown}: {e}")),
        Err(_) => {
            return Health::failed(format!(
                "RabbitMQ at {shown} did not answer within {timeout:?}"
            ));
        }
    };
    // A check must not change the host: report sysctls, never fix them.
    config.backend.fix_sysctls = false;
    let backend = make_backend(&config.backend);
    let host = navigator_dataplane::Host::local();
    let ephemeral = host.sysctl("net.ipv4.ip_local_port_range").await;
    let reserved = host.sysctl("net.ipv4.ip_local_reserved_ports").await;
    let verdict = navigator_agent::health::check(
        amqp.clone(),
        &config.host,
        backend.as_ref(),
        config.port_range,
        ephemeral.as_deref(),
        reserved.as_deref(),
        timeout,
    )
    .await;
    amqp.close().await;
    verdict
}

fn run(
    config: AgentFileConfig,
    broker: Broker,
    path: &Path,
    reloader: Arc<navigator_agent::reload::Reloader>,
    keepalived: Option<PathBuf>,
    received: Option<navigator_agent::handover::Received>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, broker, path, reloader, keepalived, received))
}

async fn serve(
    config: AgentFileConfig,
    broker: Broker,
    path: &Path,
    reloader: Arc<navigator_agent::reload::Reloader>,
    keepalived: Option<PathBuf>,
    received: Option<navigator_agent::handover::Received>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    // keepalived first, before RabbitMQ is reached: a node whose broker is
    // down still takes part in its groups (and carries what it was given).
    // Its own token: keepalived's supervision ends with the process, not
    // with the RPC service.
    let vrrp_shutdown = CancellationToken::new();
    let _vrrp_cancel = vrrp_shutdown.clone().drop_guard();
    let groups = match (&config.vrrp, keepalived) {
        (Some(vrrp), Some(program)) => {
            let supervised = navigator_agent::vrrp::Keepalived::start(
                vrrp,
                program,
                &config.host,
                vrrp_shutdown.clone(),
            )
            .with_context(|| {
                format!(
                    "{}: cannot run keepalived for [vrrp] groups",
                    path.display()
                )
            })?;
            tracing::info!(
                groups = vrrp.groups.len(),
                config = %vrrp.conf_path().display(),
                "address groups: keepalived supervised"
            );
            Some((
                Arc::new(navigator_agent::vrrp::Groups::new(
                    vrrp.clone(),
                    supervised.status(),
                )),
                supervised,
            ))
        }
        _ => None,
    };
    // Before "starting" is logged: from then on SIGHUP reloads instead of
    // killing the process.
    let hangup = reloader.clone().install(shutdown.clone());
    tracing::info!(
        host = %config.host,
        backend = %config.backend.backend,
        config = %path.display(),
        "starting"
    );
    broker.log_link("RPC");
    let signalled = shutdown_signal();
    // The data plane first, before RabbitMQ: after a hand-over the relay
    // serves again at once, whatever the broker does.
    let backend = make_backend(&config.backend);
    reloader.attach_backend(backend.clone());
    log_preflight(backend.as_ref(), config.port_range).await;
    let mut agent = Agent::new(
        AgentConfig {
            host: config.host.clone(),
            external_addresses: config.external_addresses.clone(),
            port_range: config.port_range,
            report_interval: config.report_interval,
        },
        backend,
    );
    if let Some((groups, _)) = &groups {
        agent = agent.with_groups(groups.clone());
    }
    let agent = Arc::new(agent);
    if let Some(received) = received {
        let carried = agent.adopt(received.forwards, received.inherited).await;
        tracing::info!(
            forwards = carried,
            "carrying the previous process's forwards until the first full sync"
        );
    }
    // Only the relay has sockets to hand over; the kernel backends' rules
    // stay in the kernel whatever SIGTERM does.
    let handing_over = config.handover
        && config.backend.backend == "relay"
        && navigator_agent::handover::available();
    if handing_over {
        agent.hand_over_on_shutdown(Box::new(|forwards, handover| {
            if let Err(e) = navigator_agent::handover::send(&forwards, handover) {
                tracing::error!(
                    "cannot hand over to the next process: {e}; relayed connections are lost"
                );
            }
        }));
    }
    navigator_agent::handover::ready();
    let signal = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            signalled.await;
            navigator_agent::handover::stopping();
            if handing_over {
                tracing::info!(
                    "shutting down: handing listeners and connections over to the next process"
                );
            } else {
                tracing::info!("shutting down: closing listeners, letting live connections finish");
            }
            shutdown.cancel();
        }
    });
    let Some(amqp) = connect_with_backoff(&broker, &shutdown).await else {
        signal.abort();
        hangup.abort();
        tracing::info!("stopped before RabbitMQ could be reached");
        agent.shutdown().await;
        return Ok(());
    };
    let amqp = Arc::new(amqp);
    let transport: Arc<dyn Transport> = amqp.clone();

    // `run` returns once `shutdown` is cancelled and the backend has let live
    // connections finish (at most SHUTDOWN_GRACE for the relay).
    let served = navigator_agent::run(agent, transport, shutdown.clone()).await;
    signal.abort();
    hangup.abort();
    // Deletes this agent's fanout queue at once instead of leaving it to
    // expire on the broker.
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), amqp.close())
        .await
        .is_err()
    {
        tracing::warn!("the RabbitMQ connection did not close in time");
    }
    served.context("the agent's RPC service failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Connects to RabbitMQ, retrying with jittered exponential backoff (1 s
/// doubling to 30 s, each pause cut by up to half at random,
/// `navigator_core::Backoff`) while it cannot
/// be reached: an agent started before the broker, or during its restart,
/// waits for it instead of exiting, and agents started together do not
/// retry together. `None` if `shutdown` comes first.
async fn connect_with_backoff(
    broker: &Broker,
    shutdown: &CancellationToken,
) -> Option<AmqpTransport> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut attempt = 1u32;
    loop {
        let connect = AmqpTransport::connect_to(broker.clone(), amqp::DEFAULT_EXCHANGE);
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            result = connect => result,
        };
        let e = match result {
            Ok(transport) => {
                if attempt > 1 {
                    tracing::info!(attempt, "connected to RabbitMQ");
                }
                return Some(transport);
            }
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            attempt,
            error = %e,
            retry_in = ?delay,
            "cannot reach RabbitMQ ([DEFAULT] transport_url); retrying"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        attempt = attempt.saturating_add(1);
    }
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a SIGTERM that comes right after
/// `READY=1` (a quick `systemctl restart`) must stop the agent cleanly, not
/// kill it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}
