//! What the two kernel-NAT backends (`nft`, `iptables`) share: the in-memory
//! mirror of what was written, per-forward validation, diff-driven updates
//! with a full rewrite as repair, failure isolation (one bad forward never
//! blocks the others), preflight reasons and conntrack hygiene (including
//! cutting the flows a narrowed allowlist no longer allows: the filters
//! judge only new connections, so without it an established flow would
//! outlive the change).
//!
//! A backend only says how to write its ruleset ([`Ruleset`]); this module
//! decides when to write what.
//!
//! Adoption: every write also stores a marker in the kernel, in the same
//! transaction ([`Ruleset::replace`], [`Ruleset::update`]): the fingerprint
//! of exactly the forwards written (count, sum and xor of
//! `navigator_core::digest::forward_hash`) and of how they are rendered
//! ([`Ruleset::render_tag`]). An agent's first apply (a fresh start, a
//! restart, an upgrade) writes nothing when the kernel's marker equals the
//! fingerprint of what it would write and the ruleset is intact: it adopts
//! the rules in place. Stopping never touches them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use navigator_core::{Controls, ForwardId, ForwardSpec, ForwardUsage, Plan, Protocol};

use crate::exec::{ExecError, Host};
use crate::preflight::{self, Finding};
use crate::{ApplyReport, Backend, BoxFuture, ForwardFailure};

/// Which conntrack entries are deleted when a forward changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConntrackCleanup {
    /// UDP entries of a deleted, retargeted or new forward: live UDP flows
    /// follow the change; established TCP connections finish where they are.
    #[default]
    Udp,
    /// UDP and TCP: a delete or retarget also cuts established connections.
    All,
    /// Never touch conntrack.
    Off,
}

impl std::str::FromStr for ConntrackCleanup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "udp" => Ok(ConntrackCleanup::Udp),
            "all" => Ok(ConntrackCleanup::All),
            "off" => Ok(ConntrackCleanup::Off),
            _ => Err("expected udp, all or off".into()),
        }
    }
}

/// Settings shared by the kernel backends.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// Where the tools run (this host, or a namespace in tests).
    pub host: Host,
    pub conntrack_cleanup: ConntrackCleanup,
    /// A full rewrite of the ruleset at least this often repairs drift that
    /// the cheap presence check does not see.
    pub full_sync_interval: Duration,
    /// Turn on forwarding / bridge sysctls instead of reporting them.
    pub fix_sysctls: bool,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            host: Host::local(),
            conntrack_cleanup: ConntrackCleanup::Udp,
            full_sync_interval: Duration::from_secs(600),
            fix_sysctls: false,
        }
    }
}

/// The lookup key of a forward in the kernel: one forward per key.
pub type Key = (IpAddr, Protocol, u16);

/// A forward's first key (its only one unless it is a port range).
pub fn key(spec: &ForwardSpec) -> Key {
    (spec.listen.ip(), spec.protocol, spec.listen.port())
}

/// Every key of a forward: one per port of its range.
pub fn keys(spec: &ForwardSpec) -> impl Iterator<Item = Key> + '_ {
    spec.pairs()
        .map(|(listen, _)| (listen.ip(), spec.protocol, listen.port()))
}

/// A change to the listen-address sets, as reference counts move.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenDelta {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

/// How one kernel backend writes its ruleset.
pub trait Ruleset: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Tools this backend needs (checked by preflight).
    fn tools(&self) -> &'static [&'static str];
    /// What of this backend's configuration changes what it writes, with
    /// the version of its rendering (bumped whenever the same forwards
    /// would be written differently): part of the marker, so that rules
    /// written another way are never adopted.
    fn render_tag(&self) -> String;
    /// The marker the kernel holds (written by the last replace or update),
    /// if any. The default has none: such a backend is always rewritten at
    /// its first apply.
    fn installed_marker<'a>(
        &'a self,
        host: &'a Host,
    ) -> impl Future<Output = Option<String>> + Send + 'a {
        let _ = host;
        async { None }
    }
    /// Replaces everything this backend owns with exactly `all`, atomically,
    /// removing stale objects of its own and nothing else, and stores
    /// `marker` in the same transaction.
    fn replace<'a>(
        &'a self,
        host: &'a Host,
        all: &'a [ForwardSpec],
        marker: &'a str,
    ) -> impl Future<Output = Result<(), ExecError>> + Send + 'a;
    /// Whether [`Ruleset::update`] needs the whole state after the diff
    /// (backends that can only rewrite). When false, `update` gets an empty
    /// `all`: collecting 100,000 forwards on every apply would make an
    /// incremental update O(n) for a backend that only writes the diff.
    fn update_needs_all(&self) -> bool {
        true
    }
    /// Applies a diff atomically, with `marker` (the state after it); `all`
    /// is that state when [`Ruleset::update_needs_all`], otherwise empty.
    #[allow(clippy::too_many_arguments)]
    fn update<'a>(
        &'a self,
        host: &'a Host,
        all: &'a [ForwardSpec],
        removed: &'a [ForwardSpec],
        added: &'a [ForwardSpec],
        listen: &'a ListenDelta,
        marker: &'a str,
    ) -> impl Future<Output = Result<(), ExecError>> + Send + 'a;
    /// A cheap check that the ruleset is still installed (drift detection).
    fn present<'a>(&'a self, host: &'a Host) -> impl Future<Output = bool> + Send + 'a;
    /// The kernel's counters of `forwards` (those it has none of are left
    /// out), or why it cannot read them.
    fn counters<'a>(
        &'a self,
        host: &'a Host,
        forwards: &'a [ForwardSpec],
    ) -> impl Future<Output = Result<HashMap<ForwardId, Counted>, String>> + Send + 'a;
}

/// What a kernel ruleset counts of one forward: IP bytes each way and the
/// connections (first packets through NAT) it translated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections: u64,
}

/// Whether `new`'s allowlist refuses a source that `old`'s allowed (going
/// from empty = everyone to any list included): only then can flows of the
/// forward need cutting, so a widening change costs no conntrack run.
pub fn narrows(old: &Controls, new: &Controls) -> bool {
    if new.allowed_cidrs.is_empty() {
        return false;
    }
    if old.allowed_cidrs.is_empty() {
        return true;
    }
    // The new networks merged into disjoint ranges (adjacent ones joined,
    // so two /25s cover an old /24); an old network is still allowed only
    // if one range holds all of it.
    let mut merged: Vec<(bool, u128, u128)> = Vec::new();
    let mut ranges: Vec<(bool, u128, u128)> = new.allowed_cidrs.iter().map(span).collect();
    ranges.sort_unstable();
    for (v4, start, end) in ranges {
        match merged.last_mut() {
            Some((lv4, _, lend)) if *lv4 == v4 && start <= lend.saturating_add(1) => {
                *lend = (*lend).max(end);
            }
            _ => merged.push((v4, start, end)),
        }
    }
    old.allowed_cidrs.iter().map(span).any(|(v4, start, end)| {
        !merged
            .iter()
            .any(|&(mv4, mstart, mend)| mv4 == v4 && mstart <= start && end <= mend)
    })
}

/// A network as (IPv4?, first address, last address).
fn span(net: &ipnet::IpNet) -> (bool, u128, u128) {
    match net {
        ipnet::IpNet::V4(n) => (
            true,
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        ),
        ipnet::IpNet::V6(n) => (false, n.network().into(), n.broadcast().into()),
    }
}

struct State {
    mirror: BTreeMap<ForwardId, ForwardSpec>,
    keys: HashMap<Key, ForwardId>,
    listen: HashMap<IpAddr, usize>,
    /// When the ruleset was last rewritten in full; `None` before the first
    /// apply, so the first apply always replaces whatever a previous agent
    /// left behind.
    synced_at: Option<Instant>,
    /// Host findings from the last check.
    findings: Vec<Finding>,
    /// Per forward, the connection total last read and when it was first
    /// seen at that value: the kernel does not stamp connections, so the
    /// last connection time is when the agent saw the total move.
    seen: HashMap<ForwardId, (u64, Option<u64>)>,
    /// Sum and xor of `forward_hash` over `mirror`: its fingerprint, kept
    /// as forwards come and go (an update stays O(changes)).
    fp_sum: u64,
    fp_xor: u64,
}

impl State {
    fn insert(&mut self, spec: ForwardSpec) {
        let hash = navigator_core::digest::forward_hash(&spec);
        self.fp_sum = self.fp_sum.wrapping_add(hash);
        self.fp_xor ^= hash;
        for key in keys(&spec) {
            self.keys.insert(key, spec.id);
        }
        *self.listen.entry(spec.listen.ip()).or_default() += 1;
        self.mirror.insert(spec.id, spec);
    }

    fn remove(&mut self, id: ForwardId) -> Option<ForwardSpec> {
        let spec = self.mirror.remove(&id)?;
        let hash = navigator_core::digest::forward_hash(&spec);
        self.fp_sum = self.fp_sum.wrapping_sub(hash);
        self.fp_xor ^= hash;
        for key in keys(&spec) {
            self.keys.remove(&key);
        }
        if let Some(n) = self.listen.get_mut(&spec.listen.ip()) {
            *n -= 1;
            if *n == 0 {
                self.listen.remove(&spec.listen.ip());
            }
        }
        Some(spec)
    }

    fn all(&self) -> Vec<ForwardSpec> {
        self.mirror.values().cloned().collect()
    }

    fn clear(&mut self) {
        self.fp_sum = 0;
        self.fp_xor = 0;
        self.mirror.clear();
        self.keys.clear();
        self.listen.clear();
    }
}

/// A kernel-NAT backend: `nft` or `iptables`.
pub struct KernelBackend<R: Ruleset> {
    ruleset: R,
    config: KernelConfig,
    state: tokio::sync::Mutex<State>,
    /// Whether "active connections not counted" was logged: usage is read
    /// often, and a missing `conntrack` stays missing.
    warned_active: std::sync::atomic::AtomicBool,
}

impl<R: Ruleset> KernelBackend<R> {
    pub fn with_ruleset(ruleset: R, config: KernelConfig) -> Self {
        KernelBackend {
            ruleset,
            config,
            state: tokio::sync::Mutex::new(State {
                mirror: BTreeMap::new(),
                keys: HashMap::new(),
                listen: HashMap::new(),
                synced_at: None,
                findings: Vec::new(),
                seen: HashMap::new(),
                fp_sum: 0,
                fp_xor: 0,
            }),
            warned_active: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// Every precondition of this backend: tools, forwarding, bridge
    /// netfilter for `targets`.
    pub async fn check_host(&self, targets: &[IpAddr]) -> Vec<Finding> {
        let host = &self.config.host;
        let mut findings = preflight::tools(
            host,
            self.ruleset.tools(),
            preflight::Severity::Blocking,
            &format!(
                "the {} backend programs the kernel with it",
                self.ruleset.name()
            ),
        )
        .await;
        // conntrack also counts the active connections of usage, so it is
        // checked even when cleanup is off.
        let why = if self.config.conntrack_cleanup == ConntrackCleanup::Off {
            "without it usage reports no active connections"
        } else {
            "without it live UDP flows keep their old target after a retarget or delete, a narrowed allowlist does not cut the flows it no longer allows, and usage reports no active connections"
        };
        findings.extend(
            preflight::tools(host, &["conntrack"], preflight::Severity::Warning, why).await,
        );
        findings.extend(preflight::forwarding(host, self.config.fix_sysctls).await);
        findings.extend(preflight::bridge_netfilter(host, targets, self.config.fix_sysctls).await);
        findings
    }

    /// Why `spec` cannot be carried, before the kernel is asked.
    fn validate(&self, state: &State, spec: &ForwardSpec) -> Result<(), String> {
        if spec.listen.is_ipv4() != spec.target.is_ipv4() {
            return Err(format!(
                "listen address {} and target {} are of different IP families; kernel NAT translates within one family (use the relay backend to bridge IPv4 and IPv6)",
                spec.listen.ip(),
                spec.target.ip()
            ));
        }
        if spec.target.ip().is_loopback() {
            return Err(format!(
                "target {} is a loopback address, which kernel NAT cannot forward to from other hosts; use the relay or socat backend for loopback targets",
                spec.target
            ));
        }
        if let Some(reason) = preflight::blocking_reason(&state.findings, spec) {
            return Err(reason);
        }
        // Second line of defence: the server refuses these with 400, but a
        // forward must never be carried with a control silently ignored.
        if let Some(unsupported) = navigator_core::controls::unsupported(
            self.ruleset.name(),
            spec.protocol,
            spec.ports,
            &spec.controls,
        ) {
            return Err(format!("{}: {}", unsupported.field, unsupported.reason));
        }
        for (ip, protocol, port) in keys(spec) {
            if let Some(other) = state.keys.get(&(ip, protocol, port))
                && *other != spec.id
            {
                let listen = std::net::SocketAddr::new(ip, port);
                return Err(format!(
                    "{listen}/{protocol} is already forwarded by {other}"
                ));
            }
        }
        Ok(())
    }

    async fn apply_plan(&self, plan: &Plan) -> ApplyReport {
        let mut state = self.state.lock().await;
        let host = &self.config.host;
        let mut report = ApplyReport::default();

        let first_apply = state.synced_at.is_none();
        // Host checks: complete ones on the first apply, the cheap sysctl
        // ones whenever something is added (a fixed host heals on retry).
        if first_apply {
            let targets: Vec<IpAddr> = plan.add.iter().map(|s| s.target.ip()).collect();
            state.findings = self.check_host(&targets).await;
        } else if !plan.add.is_empty() || !plan.retarget.is_empty() {
            let mut findings: Vec<Finding> = state
                .findings
                .iter()
                .filter(|f| f.problem.contains("not installed"))
                .cloned()
                .collect();
            findings.extend(preflight::forwarding(host, self.config.fix_sysctls).await);
            state.findings = findings;
        }

        let listen_before: Vec<IpAddr> = state.listen.keys().copied().collect();
        let mut removed = Vec::new();
        let mut added = Vec::new();
        // Forwards whose controls alone change: their flows keep their
        // translation, so conntrack is left alone.
        let mut kept_flows = std::collections::HashSet::new();
        // Changed forwards whose allowlist now refuses sources it allowed:
        // their flows from such sources are cut once the rules are in.
        let mut narrowed = Vec::new();
        for id in &plan.remove {
            if let Some(old) = state.remove(*id) {
                removed.push(old);
            }
        }
        for spec in plan.retarget.iter().chain(&plan.add) {
            if let Some(old) = state.remove(spec.id) {
                if old.differs_only_in_controls(spec) {
                    kept_flows.insert(spec.id);
                }
                // Also when the target changes in the same update: the
                // stale-flow cleanup may keep TCP flows (`udp` mode), and
                // those of refused sources must not outlive the change.
                if narrows(&old.controls, &spec.controls) {
                    narrowed.push(spec.clone());
                }
                removed.push(old);
            }
            match self.validate(&state, spec) {
                Ok(()) => {
                    state.insert(spec.clone());
                    added.push(spec.clone());
                }
                Err(reason) => report.failed.push(ForwardFailure {
                    id: spec.id,
                    reason,
                }),
            }
        }
        let listen = ListenDelta {
            added: state
                .listen
                .keys()
                .filter(|a| !listen_before.contains(a))
                .copied()
                .collect(),
            removed: listen_before
                .iter()
                .filter(|a| !state.listen.contains_key(a))
                .copied()
                .collect(),
        };

        let full_due = state
            .synced_at
            .is_none_or(|at| at.elapsed() >= self.config.full_sync_interval);
        let changed = !removed.is_empty() || !added.is_empty();
        let mut adopted = false;
        let result = if first_apply && self.adoptable(&state).await {
            // The kernel holds exactly what this apply would write (a
            // restart or an upgrade of the agent): nothing is written, and
            // no flow is disturbed.
            tracing::info!(
                backend = self.ruleset.name(),
                forwards = state.mirror.len(),
                "the kernel already holds these forwards' rules; adopted without rewriting them"
            );
            adopted = true;
            state.synced_at = Some(Instant::now());
            Ok(())
        } else if full_due {
            self.replace(&mut state).await
        } else if changed {
            let all = if self.ruleset.update_needs_all() {
                state.all()
            } else {
                Vec::new()
            };
            let marker = self.marker(&state);
            match self
                .ruleset
                .update(host, &all, &removed, &added, &listen, &marker)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::warn!(backend = self.ruleset.name(), error = %e, "incremental update failed; rewriting the ruleset");
                    self.replace(&mut state).await
                }
            }
        } else if !self.ruleset.present(host).await {
            tracing::warn!(
                backend = self.ruleset.name(),
                "the ruleset is missing or damaged (drift); rewriting it"
            );
            self.replace(&mut state).await
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(backend = self.ruleset.name(), error = %e, "rewriting the ruleset failed; isolating the forwards that break it");
            self.isolate(&mut state, &added, &mut report).await;
        }

        // Conntrack: NAT is decided on a flow's first packet, so flows that
        // began before this change would keep their old translation.
        // Adopted rules are the rules the flows already went through: there
        // is nothing to clean.
        let mode = self.config.conntrack_cleanup;
        if mode != ConntrackCleanup::Off && !adopted {
            let mut seen = std::collections::HashSet::new();
            // Removed (and retargeted-from) forwards: their flows must stop or
            // move before this apply reports success, so they are cleaned
            // now.
            let stale: Vec<&ForwardSpec> = removed
                .iter()
                .filter(|s| !kept_flows.contains(&s.id))
                .filter(|s| s.protocol == Protocol::Udp || mode == ConntrackCleanup::All)
                .filter(|s| seen.insert(key(s)))
                .collect();
            clean_conntrack(host, &stale).await;
            // New UDP forwards: a flow that began before the forward existed
            // has an untranslated entry that would shadow it. Only such a
            // pre-existing flow is affected, and its next datagram may come
            // at any time anyway, so nothing is promised about *when* it
            // switches: the cleanup runs in the background, off the add path
            // (a `conntrack` run costs 5-50 ms, more than the whole nft
            // transaction). Keys a retarget just cleaned are skipped.
            let fresh: Vec<ForwardSpec> = added
                .iter()
                .filter(|s| !kept_flows.contains(&s.id))
                .filter(|s| s.protocol == Protocol::Udp && seen.insert(key(s)))
                .cloned()
                .collect();
            if !fresh.is_empty() {
                let host = host.clone();
                tokio::spawn(async move {
                    let fresh: Vec<&ForwardSpec> = fresh.iter().collect();
                    clean_conntrack(&host, &fresh).await;
                });
            }
            // Narrowed allowlists: the filters now drop new connections from
            // the sources taken off, and deleting those sources' entries makes
            // their flows' next packets new ones (TCP mid-stream too, with
            // nf_conntrack_tcp_loose=1; with 0 the packet is invalid, is not
            // translated and meets the proxy's own closed port: a reset).
            // Only forwards carried with exactly these controls now, i.e.
            // whose rules were committed.
            narrowed.retain(|spec| {
                state
                    .mirror
                    .get(&spec.id)
                    .is_some_and(|carried| carried.controls == spec.controls)
            });
            if !narrowed.is_empty() {
                cut_disallowed(host, &narrowed).await;
            }
            // A new agent cannot tell what its predecessor carried: an
            // allowlist narrowed while no agent ran would leave the flows it
            // no longer allows running. Its first apply checks every forward
            // with an allowlist (the same bounded listing), in the
            // background: the agent's start is not held up by a walk of a
            // large conntrack table, and such a flow has already outlived
            // the change by the agent's downtime.
            if first_apply {
                let restricted: Vec<ForwardSpec> = added
                    .iter()
                    .filter(|s| !s.controls.allowed_cidrs.is_empty())
                    .filter(|s| {
                        state
                            .mirror
                            .get(&s.id)
                            .is_some_and(|carried| carried.controls == s.controls)
                    })
                    .cloned()
                    .collect();
                if !restricted.is_empty() {
                    let host = host.clone();
                    tokio::spawn(async move { cut_disallowed(&host, &restricted).await });
                }
            }
        }
        report
    }

    async fn replace(&self, state: &mut State) -> Result<(), ExecError> {
        let all = state.all();
        let marker = self.marker(state);
        self.ruleset
            .replace(&self.config.host, &all, &marker)
            .await?;
        state.synced_at = Some(Instant::now());
        Ok(())
    }

    /// The marker of exactly `state`'s forwards, as this backend writes
    /// them.
    fn marker(&self, state: &State) -> String {
        format!(
            "navigator {} n{} s{:016x} x{:016x}",
            self.ruleset.render_tag(),
            state.mirror.len(),
            state.fp_sum,
            state.fp_xor
        )
    }

    /// Whether the kernel holds exactly what a full write of `state` would
    /// write: its marker matches and the ruleset is intact.
    async fn adoptable(&self, state: &State) -> bool {
        let host = &self.config.host;
        let Some(installed) = self.ruleset.installed_marker(host).await else {
            return false;
        };
        let wanted = self.marker(state);
        if installed != wanted {
            tracing::info!(
                backend = self.ruleset.name(),
                %installed,
                %wanted,
                "the kernel's rules differ from the forwards to carry; rewriting them"
            );
            return false;
        }
        self.ruleset.present(host).await
    }

    /// The full rewrite failed: install what was carried before this plan,
    /// then add the plan's forwards one at a time, failing only those the
    /// kernel refuses.
    async fn isolate(&self, state: &mut State, added: &[ForwardSpec], report: &mut ApplyReport) {
        for spec in added {
            state.remove(spec.id);
        }
        if let Err(e) = self.replace(state).await {
            // Nothing can be installed: the host is the problem.
            let reason = format!(
                "the {} backend cannot program the kernel: {e}",
                self.ruleset.name()
            );
            for spec in state.mirror.values().chain(added) {
                report.failed.push(ForwardFailure {
                    id: spec.id,
                    reason: reason.clone(),
                });
            }
            state.clear();
            state.synced_at = None;
            return;
        }
        for spec in added {
            let before: Vec<IpAddr> = state.listen.keys().copied().collect();
            state.insert(spec.clone());
            let listen = ListenDelta {
                added: state
                    .listen
                    .keys()
                    .filter(|a| !before.contains(a))
                    .copied()
                    .collect(),
                removed: Vec::new(),
            };
            let all = if self.ruleset.update_needs_all() {
                state.all()
            } else {
                Vec::new()
            };
            let marker = self.marker(state);
            if let Err(e) = self
                .ruleset
                .update(
                    &self.config.host,
                    &all,
                    &[],
                    std::slice::from_ref(spec),
                    &listen,
                    &marker,
                )
                .await
            {
                state.remove(spec.id);
                report.failed.push(ForwardFailure {
                    id: spec.id,
                    reason: format!("the kernel refused the forward: {e}"),
                });
            }
        }
    }
}

/// Deletes the conntrack entries of `stale` forwards. A few are deleted one
/// by one; many (a first sync of thousands of UDP forwards) would cost one
/// subprocess each, so the table is listed once and only keys that have
/// entries are deleted.
async fn clean_conntrack(host: &Host, stale: &[&ForwardSpec]) {
    const ONE_BY_ONE: usize = 16;
    if stale.len() <= ONE_BY_ONE {
        for spec in stale {
            delete_conntrack(host, spec).await;
        }
        return;
    }
    let mut with_entries = std::collections::HashSet::new();
    for (family, proto) in [
        ("ipv4", "udp"),
        ("ipv4", "tcp"),
        ("ipv6", "udp"),
        ("ipv6", "tcp"),
    ] {
        if !stale
            .iter()
            .any(|s| s.protocol.as_str() == proto && s.listen.is_ipv4() == (family == "ipv4"))
        {
            continue;
        }
        let argv = ["conntrack", "-L", "-f", family, "-p", proto];
        let Ok(out) = host.run(&argv, None, crate::exec::DEFAULT_TIMEOUT).await else {
            continue;
        };
        for line in out.stdout.lines() {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            if let (Some(dst), Some(dport)) = (field("dst="), field("dport="))
                && let (Ok(ip), Ok(port)) = (dst.parse::<IpAddr>(), dport.parse::<u16>())
            {
                let protocol = if proto == "udp" {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                with_entries.insert((ip, protocol, port));
            }
        }
    }
    for spec in stale {
        if keys(spec).any(|key| with_entries.contains(&key)) {
            delete_conntrack(host, spec).await;
        }
    }
}

/// Deletes the conntrack entries whose original destination is `spec`'s
/// listen socket. "Nothing to delete" is success.
pub async fn delete_conntrack(host: &Host, spec: &ForwardSpec) {
    let family = if spec.listen.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    };
    let ip = spec.listen.ip().to_string();
    // conntrack -D matches one port: a range is one run per port.
    for (listen, _) in spec.pairs() {
        let port = listen.port().to_string();
        let argv = [
            "conntrack",
            "-D",
            "-f",
            family,
            "-p",
            spec.protocol.as_str(),
            "--orig-dst",
            &ip,
            "--orig-port-dst",
            &port,
        ];
        match host.run(&argv, None, crate::exec::DEFAULT_TIMEOUT).await {
            Ok(_) => tracing::debug!(forward = %spec.id, %port, "deleted conntrack entries"),
            Err(e) if e.stderr().is_some_and(|s| s.contains("0 flow entries")) => {}
            Err(e) => {
                tracing::warn!(forward = %spec.id, error = %e, "cannot delete conntrack entries")
            }
        }
    }
}

/// Deletes the conntrack entries of `narrowed` forwards whose original
/// source their (new) controls do not allow, and no other: one `conntrack -L`
/// per family and protocol in use (filtered by the destination when the
/// forwards share one), then one `conntrack -D` per refused source and port
/// (all that source's flows to that port at once), none when nothing is to
/// be cut.
pub async fn cut_disallowed(host: &Host, narrowed: &[ForwardSpec]) {
    let mut by_key: HashMap<Key, &ForwardSpec> = HashMap::new();
    for spec in narrowed {
        for key in keys(spec) {
            by_key.insert(key, spec);
        }
    }
    for (family, protocol) in [
        ("ipv4", Protocol::Tcp),
        ("ipv4", Protocol::Udp),
        ("ipv6", Protocol::Tcp),
        ("ipv6", Protocol::Udp),
    ] {
        let dsts: std::collections::BTreeSet<IpAddr> = narrowed
            .iter()
            .filter(|s| s.protocol == protocol && s.listen.is_ipv4() == (family == "ipv4"))
            .map(|s| s.listen.ip())
            .collect();
        let Some(first) = dsts.first() else {
            continue;
        };
        let dst = first.to_string();
        let mut argv = vec!["conntrack", "-L", "-f", family, "-p", protocol.as_str()];
        if dsts.len() == 1 {
            argv.extend(["--orig-dst", &dst]);
        }
        let out = match host.run(&argv, None, crate::exec::DEFAULT_TIMEOUT).await {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list conntrack entries: flows from sources taken off an allowlist go on until they end");
                continue;
            }
        };
        // (source, destination, port) of the flows to cut.
        let mut cut = std::collections::BTreeSet::new();
        for line in out.stdout.lines() {
            // The first src=/dst=/dport= are the original direction's.
            let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name));
            if let (Some(src), Some(dst), Some(dport)) =
                (field("src="), field("dst="), field("dport="))
                && let (Ok(src), Ok(dst), Ok(port)) = (
                    src.parse::<IpAddr>(),
                    dst.parse::<IpAddr>(),
                    dport.parse::<u16>(),
                )
                && let Some(spec) = by_key.get(&(dst, protocol, port))
                && !spec.controls.allows(src)
            {
                cut.insert((src, dst, port));
            }
        }
        for (src, dst, port) in cut {
            let (src, dst, port) = (src.to_string(), dst.to_string(), port.to_string());
            let argv = [
                "conntrack",
                "-D",
                "-f",
                family,
                "-p",
                protocol.as_str(),
                "--orig-src",
                &src,
                "--orig-dst",
                &dst,
                "--orig-port-dst",
                &port,
            ];
            match host.run(&argv, None, crate::exec::DEFAULT_TIMEOUT).await {
                Ok(_) => {
                    tracing::info!(%src, %dst, %port, %protocol, "cut flows from a source no longer allowed")
                }
                // Ended meanwhile.
                Err(e) if e.stderr().is_some_and(|s| s.contains("0 flow entries")) => {}
                Err(e) => {
                    tracing::warn!(error = %e, %src, "cannot cut flows from a source no longer allowed")
                }
            }
        }
    }
}

/// Connections open now per forward of `forwards`: conntrack entries whose
/// original destination is one of the forward's listen sockets (TCP ones in
/// state ESTABLISHED only, so closing and TIME_WAIT entries do not count; every
/// UDP entry, which is a session). One listing per family and protocol in
/// use, so the cost is one table walk per usage read, not per forward.
pub async fn active_connections(
    host: &Host,
    forwards: &[ForwardSpec],
) -> Result<HashMap<ForwardId, u64>, String> {
    let mut by_key: HashMap<Key, ForwardId> = HashMap::new();
    for spec in forwards {
        for key in keys(spec) {
            by_key.insert(key, spec.id);
        }
    }
    let mut active: HashMap<ForwardId, u64> = HashMap::new();
    for (family, protocol) in [
        ("ipv4", Protocol::Tcp),
        ("ipv4", Protocol::Udp),
        ("ipv6", Protocol::Tcp),
        ("ipv6", Protocol::Udp),
    ] {
        if !forwards
            .iter()
            .any(|s| s.protocol == protocol && s.listen.is_ipv4() == (family == "ipv4"))
        {
            continue;
        }
        let argv = ["conntrack", "-L", "-f", family, "-p", protocol.as_str()];
        let out = host
            .run(&argv, None, crate::exec::DEFAULT_TIMEOUT)
            .await
            .map_err(|e| format!("cannot list conntrack entries: {e}"))?;
        for line in out.stdout.lines() {
            if protocol == Protocol::Tcp && !line.contains(" ESTABLISHED ") {
                continue;
            }
            // The first dst=/dport= are the original direction's.
            let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name));
            if let (Some(dst), Some(dport)) = (field("dst="), field("dport="))
                && let (Ok(ip), Ok(port)) = (dst.parse::<IpAddr>(), dport.parse::<u16>())
                && let Some(id) = by_key.get(&(ip, protocol, port))
            {
                *active.entry(*id).or_default() += 1;
            }
        }
    }
    Ok(active)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<R: Ruleset> KernelBackend<R> {
    async fn read_usage(&self, ids: &[ForwardId]) -> crate::UsageReport {
        // The lock is not held while the tools run: applies go on meanwhile.
        let forwards: Vec<ForwardSpec> = {
            let state = self.state.lock().await;
            ids.iter()
                .filter_map(|id| state.mirror.get(id).cloned())
                .collect()
        };
        let host = &self.config.host;
        let counted = self.ruleset.counters(host, &forwards).await?;
        let active = match active_connections(host, &forwards).await {
            Ok(active) => active,
            Err(e) => {
                // Bytes and totals are still right; "active" is not known.
                if !self
                    .warned_active
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(backend = self.ruleset.name(), error = %e, "active connections are not counted (reported as 0); install conntrack");
                }
                HashMap::new()
            }
        };
        let now = unix_now();
        let mut state = self.state.lock().await;
        let mut usage = HashMap::new();
        for spec in &forwards {
            let c = counted.get(&spec.id).copied().unwrap_or_default();
            let last = match state.seen.get(&spec.id) {
                Some((total, at)) if *total == c.connections => *at,
                // Moved (or first read with connections already made): the
                // agent saw it now.
                _ if c.connections > 0 => Some(now),
                _ => None,
            };
            state.seen.insert(spec.id, (c.connections, last));
            usage.insert(
                spec.id,
                ForwardUsage {
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    connections_total: c.connections,
                    connections_active: active.get(&spec.id).copied().unwrap_or(0),
                    last_connection_at: last,
                },
            );
        }
        let carried: std::collections::HashSet<ForwardId> = state.mirror.keys().copied().collect();
        state.seen.retain(|id, _| carried.contains(id));
        Ok(usage)
    }
}

/// [`Backend::batch_linger`] of the kernel backends: one `nft` or
/// `iptables-restore` run costs about 5-20 ms of CPU (most of it starting
/// the process) however few changes it holds, and creates that reach the
/// agent one by one made batches of 2-3 (`docs/benchmarks.md`, "Control
/// plane at scale").
const KERNEL_BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(3);

impl<R: Ruleset> Backend for KernelBackend<R> {
    fn batch_linger(&self) -> std::time::Duration {
        KERNEL_BATCH_LINGER
    }

    fn usage<'a>(&'a self, ids: &'a [ForwardId]) -> BoxFuture<'a, crate::UsageReport> {
        Box::pin(self.read_usage(ids))
    }

    fn name(&self) -> &'static str {
        self.ruleset.name()
    }

    fn observe(&self) -> BoxFuture<'_, Vec<ForwardSpec>> {
        Box::pin(async move { self.state.lock().await.all() })
    }

    fn observe_one(&self, id: ForwardId) -> BoxFuture<'_, Option<ForwardSpec>> {
        Box::pin(async move { self.state.lock().await.mirror.get(&id).cloned() })
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, ApplyReport> {
        Box::pin(self.apply_plan(plan))
    }

    fn preflight<'a>(&'a self, targets: &'a [IpAddr]) -> BoxFuture<'a, Vec<Finding>> {
        Box::pin(self.check_host(targets))
    }

    /// The ruleset stays: forwarded traffic keeps flowing while the agent
    /// restarts, and the next agent's first apply adopts it unchanged (or
    /// replaces it when the forwards differ).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use navigator_core::{ProxyProtocol, parse_cidr};

    fn allow(cidrs: &[&str]) -> Controls {
        Controls::new(
            cidrs.iter().map(|c| parse_cidr(c).unwrap()).collect(),
            None,
            ProxyProtocol::None,
        )
    }

    #[test]
    fn narrowing_is_any_source_allowed_before_and_not_now() {
        // From everyone to a list, and dropping or shrinking a network.
        assert!(narrows(&allow(&[]), &allow(&["10.0.0.0/8"])));
        assert!(narrows(&allow(&["10.0.0.0/8"]), &allow(&["10.0.0.0/9"])));
        assert!(narrows(
            &allow(&["10.0.0.0/24", "fd00::/64"]),
            &allow(&["10.0.0.0/24"])
        ));
        // A network of the other family covers nothing.
        assert!(narrows(&allow(&["10.0.0.0/24"]), &allow(&["::/0"])));
        // Widening, equal, or covered by adjacent networks together.
        assert!(!narrows(&allow(&["10.0.0.0/24"]), &allow(&[])));
        assert!(!narrows(&allow(&[]), &allow(&[])));
        assert!(!narrows(&allow(&["10.0.0.0/24"]), &allow(&["10.0.0.0/8"])));
        assert!(!narrows(
            &allow(&["10.0.0.0/24"]),
            &allow(&["10.0.0.0/25", "10.0.0.128/25"])
        ));
        assert!(!narrows(
            &allow(&["10.0.0.1", "fd00::1"]),
            &allow(&["fd00::/64", "10.0.0.0/30"])
        ));
        // The edges of the 128-bit range do not overflow.
        assert!(!narrows(&allow(&["ffff::/16"]), &allow(&["::/0"])));
    }
}
