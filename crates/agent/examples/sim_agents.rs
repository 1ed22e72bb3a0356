//! Simulated proxy agents for the control-plane scale benchmark
//! (`bench/cluster/scale.sh`): N real agents (`navigator_agent::Agent` and
//! `navigator_agent::run`, the code `navigator-agent` serves) in one process,
//! each over its own RabbitMQ connection as real agents are, each with a
//! distinct host name (`sim-000`, …), its own made-up TEST-NET external
//! address (never bound: nothing listens) and a no-op data plane that keeps
//! the forwards in a map and reports every one applied.
//!
//!     sim_agents --transport-url rabbit://… [--count N] [--first I]
//!                [--report-interval SECS] [--port-range FIRST-LAST]
//!
//! What it measures is the control plane alone: servers, database, broker
//! and the agents' own bookkeeping (reconcile, results, heartbeats), with a
//! data plane that costs nothing.
//!
//! Signals: SIGTERM/SIGINT stop every agent (each closes its connection, so
//! its queues go at once). SIGUSR1 restarts agent `--first` as a restarted
//! `navigator-agent` would come back: a new connection, a new agent with
//! nothing applied (generation 0) and an empty data plane, so the server sends
//! it its full set; the benchmark reads the time of that sync from the
//! server's log. On exit it prints one JSON line: agents, forwards carried,
//! plans applied, restarts, and per method the agents' handling time (from a
//! message's arrival in this process to its reply: queueing behind the
//! agent's earlier messages included), p50/p99/max in ms.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use navigator_agent::{Agent, AgentConfig};
use navigator_core::{ForwardId, ForwardSpec, Plan, PortRange};
use navigator_dataplane::{ApplyReport, Backend, BoxFuture};
use navigator_rpc::transport::{BoxFuture as RpcFuture, PendingReply};
use navigator_rpc::{AmqpTransport, Broker, Incoming, RpcError, Target, Transport, amqp};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The agents' allocator, as `navigator-agent`'s, so that their memory per
/// forward is the daemon's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The three documentation networks (RFC 5737): no host has such an
/// address, so a simulated proxy's forwards can never reach anything.
const TEST_NETS: [[u8; 3]; 3] = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];
/// Hosts .1-.254 of each.
const PER_NET: usize = 254;

/// How long one agent's RabbitMQ connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(name = "sim_agents")]
struct Args {
    /// RabbitMQ URL, as `[DEFAULT] transport_url`.
    #[arg(long, env = "NAVIGATOR_TEST_TRANSPORT_URL")]
    transport_url: String,
    /// Number of agents in this process.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Index of the first agent: hosts are PREFIX + 3-digit index.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Host name prefix.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Seconds between heartbeats ([agent] report_interval; the default's).
    #[arg(long, default_value_t = 10)]
    report_interval: u64,
    /// Each agent's pool of external ports.
    #[arg(long, default_value = "20000-59999")]
    port_range: PortRange,
}

/// The no-op data plane: what it carries is what it was told to carry.
#[derive(Default)]
struct NoopBackend {
    carried: Mutex<HashMap<ForwardId, ForwardSpec>>,
    plans: AtomicU64,
}

impl NoopBackend {
    fn carried(&self) -> std::sync::MutexGuard<'_, HashMap<ForwardId, ForwardSpec>> {
        // A panic elsewhere cannot leave the map half-changed: every change
        // is one insert or remove.
        self.carried.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for NoopBackend {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn observe(&self) -> BoxFuture<'_, Vec<ForwardSpec>> {
        let carried = self.carried().values().cloned().collect();
        Box::pin(async move { carried })
    }

    fn observe_one(&self, id: ForwardId) -> BoxFuture<'_, Option<ForwardSpec>> {
        let carried = self.carried().get(&id).cloned();
        Box::pin(async move { carried })
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, ApplyReport> {
        Box::pin(async move {
            self.plans.fetch_add(1, Ordering::Relaxed);
            let mut carried = self.carried();
            for id in &plan.remove {
                carried.remove(id);
            }
            for spec in plan.retarget.iter().chain(&plan.add) {
                carried.insert(spec.id, spec.clone());
            }
            ApplyReport::default()
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn usage<'a>(
        &'a self,
        ids: &'a [ForwardId],
    ) -> BoxFuture<'a, navigator_dataplane::UsageReport> {
        let _ = ids;
        Box::pin(async { Ok(HashMap::new()) })
    }
}

/// Handling times by method, of every agent of the process.
#[derive(Default)]
struct Timings(Mutex<HashMap<String, Vec<Duration>>>);

impl Timings {
    fn record(&self, method: &str, took: Duration) {
        let mut timings = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        timings.entry(method.to_owned()).or_default().push(took);
    }

    /// `{method: {count, p50_ms, p99_ms, max_ms}}`.
    fn summary(&self) -> Value {
        let mut timings = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = serde_json::Map::new();
        for (method, times) in timings.iter_mut() {
            times.sort();
            let at = |p: f64| {
                let index = ((times.len() - 1) as f64 * p).round() as usize;
                (times[index].as_secs_f64() * 10_000.0).round() / 10.0
            };
            out.insert(
                method.clone(),
                json!({"count": times.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}),
            );
        }
        Value::Object(out)
    }
}

/// The agent's transport with its calls timed: each message it receives
/// gets a reply channel of ours, so that the time from its arrival to the
/// agent's reply is recorded before the reply goes on. Order is kept: one
/// task forwards the messages of a listener one by one.
struct TimedTransport {
    inner: Arc<AmqpTransport>,
    timings: Arc<Timings>,
}

impl Transport for TimedTransport {
    fn send_call(
        &self,
        target: &Target,
        method: &str,
        args: Value,
        timeout: Duration,
    ) -> RpcFuture<'_, Result<PendingReply, RpcError>> {
        self.inner.send_call(target, method, args, timeout)
    }

    fn cast(
        &self,
        target: &Target,
        method: &str,
        args: Value,
    ) -> RpcFuture<'_, Result<(), RpcError>> {
        self.inner.cast(target, method, args)
    }

    fn cast_expiring(
        &self,
        target: &Target,
        method: &str,
        args: Value,
        ttl: Duration,
    ) -> RpcFuture<'_, Result<(), RpcError>> {
        self.inner.cast_expiring(target, method, args, ttl)
    }

    fn listen(&self, target: &Target) -> RpcFuture<'_, Result<mpsc::Receiver<Incoming>, RpcError>> {
        let target = target.clone();
        Box::pin(async move {
            let mut from = self.inner.listen(&target).await?;
            let (to, receiver) = mpsc::channel::<Incoming>(1);
            let timings = self.timings.clone();
            tokio::spawn(async move {
                while let Some(mut incoming) = from.recv().await {
                    let arrived = Instant::now();
                    if let Some(reply) = incoming.reply.take() {
                        let (ours, answer) = oneshot::channel();
                        incoming.reply = Some(ours);
                        let (timings, method) = (timings.clone(), incoming.method.clone());
                        tokio::spawn(async move {
                            if let Ok(value) = answer.await {
                                timings.record(&method, arrived.elapsed());
                                let _ = reply.send(value);
                            }
                        });
                    }
                    if to.send(incoming).await.is_err() {
                        break;
                    }
                }
            });
            Ok(receiver)
        })
    }

    fn reconnects(&self) -> Option<watch::Receiver<u64>> {
        Transport::reconnects(self.inner.as_ref())
    }

    fn connected(&self) -> Option<bool> {
        Transport::connected(self.inner.as_ref())
    }
}

/// One running agent: what stops it and what is left of it.
struct Running {
    backend: Arc<NoopBackend>,
    transport: Arc<AmqpTransport>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) -> Arc<NoopBackend> {
        self.stop.cancel();
        let _ = self.task.await;
        // Deletes the agent's fanout queue now rather than at its expiry.
        self.transport.close().await;
        self.backend
    }
}

fn external_address(index: usize) -> IpAddr {
    let [a, b, c] = TEST_NETS[index / PER_NET];
    // index % PER_NET < 254, so the host part is 1-254.
    let host = u8::try_from(index % PER_NET + 1).unwrap_or(1);
    IpAddr::V4(Ipv4Addr::new(a, b, c, host))
}

async fn start(
    args: &Args,
    broker: &Broker,
    timings: &Arc<Timings>,
    index: usize,
) -> anyhow::Result<Running> {
    let host = format!("{}{index:03}", args.prefix);
    let transport = tokio::time::timeout(
        CONNECT_TIMEOUT,
        AmqpTransport::connect_to(broker.clone(), amqp::DEFAULT_EXCHANGE),
    )
    .await
    .with_context(|| format!("{host}: RabbitMQ did not answer in {CONNECT_TIMEOUT:?}"))?
    .with_context(|| format!("{host}: cannot connect to RabbitMQ"))?;
    let transport = Arc::new(transport);
    let backend = Arc::new(NoopBackend::default());
    let agent = Arc::new(Agent::new(
        AgentConfig {
            host: host.clone(),
            external_addresses: vec![external_address(index)],
            port_range: args.port_range,
            report_interval: Duration::from_secs(args.report_interval),
        },
        backend.clone(),
    ));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        let transport: Arc<dyn Transport> = Arc::new(TimedTransport {
            inner: transport.clone(),
            timings: timings.clone(),
        });
        async move {
            if let Err(e) = navigator_agent::run(agent, transport, stop).await {
                tracing::error!(%host, error = %e, "simulated agent stopped");
            }
        }
    });
    Ok(Running {
        backend,
        transport,
        stop,
        task,
    })
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if args.count == 0 || args.first + args.count > TEST_NETS.len() * PER_NET {
        bail!(
            "--first + --count must be 1 to {} (one TEST-NET address each)",
            TEST_NETS.len() * PER_NET
        );
    }
    let broker =
        Broker::new(&args.transport_url, &Default::default()).context("--transport-url")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut restart = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let timings = Arc::new(Timings::default());
    let mut agents = Vec::with_capacity(args.count);
    for index in args.first..args.first + args.count {
        agents.push(start(&args, &broker, &timings, index).await?);
    }
    tracing::info!(
        agents = args.count,
        first = args.first,
        "simulated agents running"
    );
    let mut restarts = 0u64;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = restart.recv() => {
                // Stop it first: a restarted process's old queues and
                // connection are gone before the new one announces itself.
                let old = agents.remove(0);
                let forwards = old.stop().await.carried().len();
                agents.insert(0, start(&args, &broker, &timings, args.first).await?);
                restarts += 1;
                tracing::info!(host = %format!("{}{:03}", args.prefix, args.first), forwards, "simulated agent restarted with nothing applied");
            }
        }
    }
    let mut forwards = 0;
    let mut plans = 0;
    for running in agents {
        let backend = running.stop().await;
        forwards += backend.carried().len();
        plans += backend.plans.load(Ordering::Relaxed);
    }
    println!(
        "{}",
        json!({
            "agents": args.count, "first": args.first, "forwards": forwards,
            "plans_applied": plans, "restarts": restarts,
            "handling": timings.summary(),
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sim_agents=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}
