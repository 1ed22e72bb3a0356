//! The `socat` backend: the original Navigator's method, kept for parity and
//! for hosts where kernel NAT is not an option. One supervised `socat` per
//! forward (`TCP-LISTEN:port,fork,reuseaddr TCP:ip:port`, and the UDP
//! equivalent); socat forks a child per connection, which is why the relay
//! backend exists.
//!
//! Every socat runs in its own process group (so stopping a forward also
//! stops the per-connection children) and carries the environment variable
//! `NAVIGATOR_SOCAT_OWNER=<tag>`: at start the backend kills every process
//! with its tag, so an agent that died without cleaning up leaves no orphans
//! listening on the ports the new agent needs.
//!
//! Controls: `range=` (one allowed network: `navigator_core::unsupported`
//! refuses more) and `max-children` (connections or UDP peers served at
//! once; a port range cannot share one and is refused). A change of
//! controls alone restarts the listeners only, so open connections (forked
//! children) carry on. socat counts nothing, so `usage` keeps the trait's
//! "does not count usage".

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use navigator_core::{Backoff, ForwardId, ForwardSpec, Plan, Protocol};
use tokio::io::AsyncReadExt as _;
use tokio::process::Child;
use tokio::sync::watch;

use crate::exec::Host;
use crate::preflight::{self, Finding};
use crate::{ApplyReport, Backend, BoxFuture, ForwardFailure};

/// The environment variable that marks Navigator's socat processes.
pub const OWNER_ENV: &str = "NAVIGATOR_SOCAT_OWNER";

/// Settings of the socat backend.
#[derive(Clone, Debug)]
pub struct SocatConfig {
    pub host: Host,
    /// Marks this agent's socat processes; one tag per agent on a host.
    pub owner_tag: String,
    /// Idle seconds after which a UDP session's socat child exits (`-T`).
    pub udp_idle_timeout: Duration,
    /// How long a new socat must stay up to count as listening.
    pub start_grace: Duration,
    /// Longest pause between restarts of a socat that keeps dying.
    pub max_backoff: Duration,
}

impl Default for SocatConfig {
    fn default() -> Self {
        SocatConfig {
            host: Host::local(),
            owner_tag: "navigator-agent".to_owned(),
            udp_idle_timeout: Duration::from_secs(60),
            start_grace: Duration::from_millis(300),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// One forward's socat processes: one per port of its range.
struct Supervised {
    spec: ForwardSpec,
    units: Vec<Unit>,
}

/// One supervised socat, serving one port.
struct Unit {
    stop: watch::Sender<Stop>,
    task: tokio::task::JoinHandle<()>,
}

pub struct SocatBackend {
    config: SocatConfig,
    procs: tokio::sync::Mutex<Procs>,
}

struct Procs {
    running: BTreeMap<ForwardId, Supervised>,
    swept: bool,
}

impl SocatBackend {
    pub fn new(config: SocatConfig) -> SocatBackend {
        SocatBackend {
            config,
            procs: tokio::sync::Mutex::new(Procs {
                running: BTreeMap::new(),
                swept: false,
            }),
        }
    }

    /// socat's argv for `spec`.
    pub fn argv(&self, spec: &ForwardSpec) -> Vec<String> {
        argv(spec, self.config.udp_idle_timeout)
    }

    fn spawn(&self, spec: &ForwardSpec) -> std::io::Result<Child> {
        spawn(&self.config, spec)
    }

    async fn apply_plan(&self, plan: &Plan) -> ApplyReport {
        let mut procs = self.procs.lock().await;
        if !procs.swept {
            kill_tagged(&self.config.owner_tag).await;
            procs.swept = true;
        }
        let mut report = ApplyReport::default();
        for id in &plan.remove {
            if let Some(old) = procs.running.remove(id) {
                stop(old, Stop::All).await;
            }
        }
        for spec in &plan.retarget {
            if let Some(old) = procs.running.remove(&spec.id) {
                // A change of controls alone stops only the listeners: the
                // per-connection children keep serving what they carry, as
                // kernel NAT keeps established connections.
                let how = if old.spec.differs_only_in_controls(spec) {
                    Stop::ListenerOnly
                } else {
                    Stop::All
                };
                stop(old, how).await;
            }
        }
        // Start everything first, then wait once: a socat that cannot bind
        // exits at once with the reason on stderr. A range is one socat per
        // port, and all or nothing: if one port fails, the others stop.
        let mut started = Vec::new();
        for spec in plan.retarget.iter().chain(&plan.add) {
            if let Some(old) = procs.running.remove(&spec.id) {
                stop(old, Stop::All).await;
            }
            if let Some(reason) = refusal(spec) {
                report.failed.push(ForwardFailure {
                    id: spec.id,
                    reason,
                });
                continue;
            }
            let mut children: Vec<(ForwardSpec, Child)> = Vec::new();
            let mut failed = None;
            for (listen, target) in spec.pairs() {
                // Each port's socat enforces the forward's controls.
                let unit = ForwardSpec {
                    controls: spec.controls.clone(),
                    ..ForwardSpec::single(spec.id, spec.protocol, listen, target)
                };
                match self.spawn(&unit) {
                    Ok(child) => children.push((unit, child)),
                    Err(e) => {
                        failed = Some(if e.kind() == std::io::ErrorKind::NotFound {
                            "socat is not installed: install it with `apt-get install -y socat`"
                                .to_owned()
                        } else {
                            format!("cannot start socat for port {}: {e}", listen.port())
                        });
                        break;
                    }
                }
            }
            match failed {
                Some(reason) => {
                    kill_all(children).await;
                    report.failed.push(ForwardFailure {
                        id: spec.id,
                        reason,
                    });
                }
                None => started.push((spec.clone(), children)),
            }
        }
        if !started.is_empty() {
            tokio::time::sleep(self.config.start_grace).await;
        }
        for (spec, mut children) in started {
            let mut failure = None;
            for (unit, child) in &mut children {
                match child.try_wait() {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        let stderr = read_stderr(child).await;
                        failure = Some(start_failure(unit, &stderr, &status.to_string()));
                        break;
                    }
                    Err(e) => {
                        failure = Some(format!("cannot watch socat: {e}"));
                        break;
                    }
                }
            }
            if let Some(reason) = failure {
                kill_all(children).await;
                report.failed.push(ForwardFailure {
                    id: spec.id,
                    reason,
                });
                continue;
            }
            let units = children
                .into_iter()
                .map(|(unit, child)| {
                    let (stop, stopped) = watch::channel(Stop::Run);
                    let task = tokio::spawn(supervise(self.config.clone(), unit, child, stopped));
                    Unit { stop, task }
                })
                .collect();
            procs.running.insert(spec.id, Supervised { spec, units });
        }
        report
    }
}

/// Stops socats started for a forward that failed as a whole.
async fn kill_all(children: Vec<(ForwardSpec, Child)>) {
    for (_, mut child) in children {
        if let Some(pid) = child.id() {
            kill_group(pid, true);
        }
        let _ = child.wait().await;
    }
}

fn spawn(config: &SocatConfig, spec: &ForwardSpec) -> std::io::Result<Child> {
    let argv = argv(spec, config.udp_idle_timeout);
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    tracing::debug!(forward = %spec.id, argv = ?refs, "starting socat");
    let mut cmd = config.host.command(&refs);
    cmd.env(OWNER_ENV, &config.owner_tag)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

/// Why socat cannot carry `spec`'s controls, if it cannot (the server
/// refuses most of these with 400 from `navigator_core::unsupported`; this
/// is the second line of defence).
fn refusal(spec: &ForwardSpec) -> Option<String> {
    navigator_core::controls::unsupported("socat", spec.protocol, spec.ports, &spec.controls)
        .map(|u| format!("{}: {}", u.field, u.reason))
}

/// socat's `range=` option for `spec`'s allowlist: its one network of the
/// listener's family, or, when it has none of that family, a network no
/// client can come from (the broadcast address, the unspecified address),
/// so that nobody is allowed, as the allowlist says.
fn range_option(spec: &ForwardSpec) -> Option<String> {
    let cidrs = &spec.controls.allowed_cidrs;
    if cidrs.is_empty() {
        return None;
    }
    let v4 = spec.listen.is_ipv4();
    let net = cidrs
        .iter()
        .find(|n| matches!(n, ipnet::IpNet::V4(_)) == v4)
        .map(|n| (n.addr(), n.prefix_len()));
    Some(match (net, v4) {
        (Some((std::net::IpAddr::V6(a), len)), _) => format!(",range=[{a}]/{len}"),
        (Some((a, len)), _) => format!(",range={a}/{len}"),
        (None, true) => ",range=255.255.255.255/32".to_owned(),
        (None, false) => ",range=[::]/128".to_owned(),
    })
}

/// socat's argv for `spec`.
pub fn argv(spec: &ForwardSpec, udp_idle: Duration) -> Vec<String> {
    let v = |ip: std::net::IpAddr| if ip.is_ipv4() { "4" } else { "6" };
    let bracket = |ip: std::net::IpAddr| {
        if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        }
    };
    let (listen, connect) = match spec.protocol {
        Protocol::Tcp => ("TCP", "TCP"),
        Protocol::Udp => ("UDP", "UDP"),
    };
    let mut argv = vec!["socat".to_owned()];
    if spec.protocol == Protocol::Udp {
        // A forked UDP child serves one peer; -T ends it when idle.
        argv.push("-T".to_owned());
        argv.push(udp_idle.as_secs().max(1).to_string());
    }
    // socat's default listen backlog is 5: with a few dozen clients
    // connecting at once, SYNs are dropped and retried after a second
    // (docs/benchmarks.md). The relay's backlog is 1024; so is this one.
    let backlog = if spec.protocol == Protocol::Tcp {
        ",backlog=1024"
    } else {
        ""
    };
    // Controls: `range=` refuses other clients (TCP: closed at accept;
    // UDP: datagram ignored); `max-children` stops accepting while N
    // connections (TCP) or peers (UDP) are served, so the next client waits
    // in the listen queue until one ends.
    let range = range_option(spec).unwrap_or_default();
    let children = spec
        .controls
        .max_connections
        .map(|n| format!(",max-children={n}"))
        .unwrap_or_default();
    argv.push(format!(
        "{listen}{}-LISTEN:{},bind={},fork,reuseaddr{backlog}{range}{children}",
        v(spec.listen.ip()),
        spec.listen.port(),
        bracket(spec.listen.ip())
    ));
    argv.push(format!(
        "{connect}{}:{}:{}",
        v(spec.target.ip()),
        bracket(spec.target.ip()),
        spec.target.port()
    ));
    argv
}

fn start_failure(spec: &ForwardSpec, stderr: &str, status: &str) -> String {
    if stderr.contains("Address already in use") {
        format!(
            "port {}/{} already in use on host ({})",
            spec.listen.port(),
            spec.protocol,
            spec.listen
        )
    } else if stderr.contains("Cannot assign requested address") {
        format!(
            "address {} is not configured on this host",
            spec.listen.ip()
        )
    } else if stderr.contains("No such file") || status.contains("127") {
        "socat is not installed: install it with `apt-get install -y socat`".to_owned()
    } else {
        let last = stderr.lines().last().unwrap_or("(no message)");
        format!("socat exited at start ({status}): {last}")
    }
}

async fn read_stderr(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), pipe.read_to_string(&mut text)).await;
    }
    text
}

/// Keeps one forward's socat running: restarts it with jittered exponential
/// backoff (100 ms doubling to `max_backoff`, each pause cut by up to half
/// at random; back to the start
/// after a run of more than 10 s) when it dies, stops it (and its
/// per-connection children) when told. The jitter keeps the socats of many
/// forwards that die together (a bad host change) from restarting together.
async fn supervise(
    config: SocatConfig,
    spec: ForwardSpec,
    mut child: Child,
    mut stopped: watch::Receiver<Stop>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
    loop {
        let started = tokio::time::Instant::now();
        let pid = child.id();
        tokio::select! {
            status = child.wait() => {
                let stderr = read_stderr(&mut child).await;
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(forward = %spec.id, status = ?status.ok(), stderr = %stderr.trim(), "socat exited; restarting in {delay:?}");
                if let Some(pid) = pid {
                    // Per-connection children of the dead socat would keep
                    // old connections alive; they die with their group.
                    kill_group(pid, false);
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped.changed() => return,
                }
                match spawn(&config, &spec) {
                    Ok(next) => child = next,
                    Err(e) => {
                        tracing::warn!(forward = %spec.id, error = %e, "cannot restart socat");
                        // Try again after the next backoff with a child
                        // that exits at once.
                        match config.host.command(&["true"]).spawn() {
                            Ok(next) => child = next,
                            Err(_) => return,
                        }
                    }
                }
            }
            _ = stopped.changed() => {
                let group = *stopped.borrow() != Stop::ListenerOnly;
                if let Some(pid) = pid {
                    // The listener alone leaves its forked children (in its
                    // process group) serving their connections.
                    let kill = if group { kill_group } else { kill_process };
                    kill(pid, false);
                    if tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_err() {
                        kill(pid, true);
                    }
                }
                let _ = child.wait().await;
                return;
            }
        }
    }
}

/// What a supervisor is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    /// The listener and its per-connection children.
    All,
    /// The listener only.
    ListenerOnly,
}

async fn stop(supervised: Supervised, how: Stop) {
    // Tell every unit first, so a range's socats stop in parallel.
    for unit in &supervised.units {
        let _ = unit.stop.send(how);
    }
    for unit in supervised.units {
        let _ = unit.task.await;
    }
    tracing::debug!(forward = %supervised.spec.id, "socat stopped");
}

/// `pid` as rustix's type and the signal for `hard` (KILL) or not (TERM);
/// `None` for a pid that cannot be one.
fn pid_and_signal(pid: u32, hard: bool) -> Option<(rustix::process::Pid, rustix::process::Signal)> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)?;
    let signal = if hard {
        rustix::process::Signal::KILL
    } else {
        rustix::process::Signal::TERM
    };
    Some((pid, signal))
}

fn kill_process(pid: u32, hard: bool) {
    if let Some((pid, signal)) = pid_and_signal(pid, hard) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn kill_group(pid: u32, hard: bool) {
    if let Some((pid, signal)) = pid_and_signal(pid, hard) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Signals `pid` and, if it leads one, its process group.
fn kill_one(pid: u32, hard: bool) {
    kill_group(pid, hard);
    if let Some((pid, signal)) = pid_and_signal(pid, hard) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The processes whose environment carries `OWNER_ENV=tag`.
pub fn tagged_pids(tag: &str) -> Vec<u32> {
    let marker = format!("{OWNER_ENV}={tag}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Kills socat processes a previous agent with the same tag left behind.
async fn kill_tagged(tag: &str) {
    let pids = tagged_pids(tag);
    if pids.is_empty() {
        return;
    }
    tracing::warn!(count = pids.len(), %tag, "stopping socat processes left by a previous agent");
    for pid in &pids {
        kill_one(*pid, false);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for pid in tagged_pids(tag) {
        kill_one(pid, true);
    }
}

impl Backend for SocatBackend {
    fn name(&self) -> &'static str {
        "socat"
    }

    fn observe(&self) -> BoxFuture<'_, Vec<ForwardSpec>> {
        Box::pin(async move {
            self.procs
                .lock()
                .await
                .running
                .values()
                .map(|s| s.spec.clone())
                .collect()
        })
    }

    fn observe_one(&self, id: ForwardId) -> BoxFuture<'_, Option<ForwardSpec>> {
        Box::pin(async move {
            self.procs
                .lock()
                .await
                .running
                .get(&id)
                .map(|s| s.spec.clone())
        })
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, ApplyReport> {
        Box::pin(self.apply_plan(plan))
    }

    fn preflight<'a>(&'a self, _targets: &'a [std::net::IpAddr]) -> BoxFuture<'a, Vec<Finding>> {
        Box::pin(async move {
            preflight::tools(
                &self.config.host,
                &["socat"],
                preflight::Severity::Blocking,
                "the socat backend runs one socat per forward",
            )
            .await
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut procs = self.procs.lock().await;
            let running = std::mem::take(&mut procs.running);
            for (_, supervised) in running {
                stop(supervised, Stop::All).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_per_family_and_protocol() {
        let spec = |protocol, listen: &str, target: &str| ForwardSpec {
            id: ForwardId::new_random(),
            protocol,
            listen: listen.parse().unwrap(),
            target: target.parse().unwrap(),
            ports: 1,
            one_target_port: false,
            controls: Default::default(),
        };
        let idle = Duration::from_secs(60);
        assert_eq!(
            argv(&spec(Protocol::Tcp, "10.0.0.1:20000", "10.1.0.5:22"), idle),
            [
                "socat",
                "TCP4-LISTEN:20000,bind=10.0.0.1,fork,reuseaddr,backlog=1024",
                "TCP4:10.1.0.5:22"
            ]
        );
        assert_eq!(
            argv(&spec(Protocol::Udp, "[fd00::1]:53", "[fd01::5]:5353"), idle),
            [
                "socat",
                "-T",
                "60",
                "UDP6-LISTEN:53,bind=[fd00::1],fork,reuseaddr",
                "UDP6:[fd01::5]:5353"
            ]
        );
    }

    #[test]
    fn argv_carries_range_and_max_children() {
        use navigator_core::{Controls, ProxyProtocol, parse_cidr};
        let idle = Duration::from_secs(60);
        let with = |listen: &str, target: &str, cidrs: &[&str], max| ForwardSpec {
            id: ForwardId::new_random(),
            protocol: Protocol::Tcp,
            listen: listen.parse().unwrap(),
            target: target.parse().unwrap(),
            ports: 1,
            one_target_port: false,
            controls: Controls::new(
                cidrs.iter().map(|c| parse_cidr(c).unwrap()).collect(),
                max,
                ProxyProtocol::None,
            ),
        };
        assert_eq!(
            argv(
                &with("10.0.0.1:20000", "10.1.0.5:22", &["192.0.2.0/24"], Some(4)),
                idle
            )[1],
            "TCP4-LISTEN:20000,bind=10.0.0.1,fork,reuseaddr,backlog=1024,range=192.0.2.0/24,max-children=4"
        );
        assert_eq!(
            argv(
                &with("[fd00::1]:20000", "[fd01::5]:22", &["2001:db8::/32"], None),
                idle
            )[1],
            "TCP6-LISTEN:20000,bind=[fd00::1],fork,reuseaddr,backlog=1024,range=[2001:db8::]/32"
        );
        // An allowlist with no network of the listener's family allows
        // nobody.
        assert!(
            argv(
                &with("10.0.0.1:20000", "10.1.0.5:22", &["2001:db8::/32"], None),
                idle
            )[1]
            .ends_with(",range=255.255.255.255/32")
        );
        // A limit cannot be shared between the socats of a range.
        let range = ForwardSpec {
            ports: 2,
            ..with("10.0.0.1:20000", "10.1.0.5:22", &[], Some(4))
        };
        assert!(refusal(&range).unwrap().starts_with("max_connections"));
        let two = with(
            "10.0.0.1:20000",
            "10.1.0.5:22",
            &["192.0.2.0/24", "198.51.100.0/24"],
            None,
        );
        assert!(refusal(&two).unwrap().starts_with("allowed_cidrs"));
    }
}
