//! The control loop between the store (desired state) and the agents (what
//! runs): placing new forwards, telling agents about changes, taking their
//! reports, and re-syncing them in full when they start or drift.
//!
//! The store is the truth. Every message to an agent is an optimisation of
//! the full sync that follows anyway, so a lost message delays a change but
//! never loses it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use navigator_api::v1::{ForwardChanges, NewForward};
use navigator_core::digest::SetDigest;
use navigator_core::{Controls, ForwardId, ForwardStatus, PortForward, Protocol, TargetPolicy};
use navigator_rpc::messages::args;
use navigator_rpc::transport::decode_args;
use navigator_rpc::{
    AgentClient, AgentState, ForwardEntry, ForwardResult, Reply, ResultStatus, RpcError, Target,
    Transport, methods, topics,
};
use navigator_scheduler::{Candidate, NoProxy, Request};
use navigator_store::{
    AppliedVersion, Move, NewForwardRow, ProxyRecord, ReportedVersion, StatusReport, Store,
    StoreError, StoredDigest, TargetChange,
};
use tokio_util::sync::CancellationToken;

mod groups;

pub use groups::{REFUSED, is_carrier, valid_group_name};

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;

pub struct Control {
    store: Store,
    agents: AgentClient,
    transport: Arc<dyn Transport>,
    config: Arc<Config>,
    /// Whether loopback targets are allowed (all-in-one mode).
    allow_loopback: bool,
    /// Source of generations: starts at the wall clock so that a restarted
    /// server never reuses one an agent still holds.
    next_generation: AtomicU64,
    placements: AtomicU64,
    /// One lock per agent host, held while a message is sent to it together
    /// with the store read or write it is based on: a full sync built from an
    /// older snapshot must not reach the agent after a newer create, update
    /// or delete, or it would undo that change until the next sync. Only
    /// until the message is sent: the agent handles its messages in the
    /// order they arrive, so answers are awaited outside the lock.
    host_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per agent host that sends no digests (an older agent), the forwards
    /// by which its last report (as this server took it) differed from the
    /// store; see [`Control::report_state`].
    differences: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Per agent host that sends digests, the buckets by which its last
    /// report differed from the store's summary; see
    /// [`Control::check_digest`]. At most 256 entries per proxy, nothing per
    /// forward.
    bucket_differences: Mutex<HashMap<String, HashMap<u8, Differing>>>,
    /// Per agent host, this server's full sync of it in flight or last
    /// done; see [`Control::report_state`].
    full_syncs: Mutex<HashMap<String, FullSync>>,
    /// Ports held per proxy for placement, and when they were read from the
    /// store; see [`Control::placement_counts`].
    port_counts: Mutex<Option<PortCounts>>,
    /// Held by the one create that reads the counts again.
    refreshing_counts: tokio::sync::Mutex<()>,
    /// Counters served at `/metrics`.
    metrics: Metrics,
    /// The members of the address groups; see `control/groups.rs`.
    groups: groups::GroupCache,
}

/// A bucket of an agent's summary that differed from the store's.
#[derive(Clone, Copy, Debug)]
struct Differing {
    /// The bucket's revision in the store at that report.
    revision: u64,
    /// Reports in a row in which it differed.
    reports: u32,
}

/// Reports in a row in which a bucket may differ, its store revision
/// changing every time (changes in flight), before it is synced anyway: under
/// a steady stream of changes a bucket is rarely caught in flight this many
/// times running, while a bucket that drifted and keeps being changed is.
const DIFFERING_REPORTS_BEFORE_SYNC: u32 = 6;

/// A full sync of one agent by this server.
#[derive(Clone, Copy, Debug)]
enum FullSync {
    InFlight,
    Done(std::time::Instant),
}

/// Forwards a failover moves at once.
const PARALLEL_MOVES: usize = 8;

/// Proxies a create tries after the chosen one turned out full.
const MAX_FULL_PROXIES: usize = 8;

/// How old the per-proxy port counts that placement weighs may be, at least.
const COUNTS_MAX_AGE: Duration = Duration::from_secs(1);

/// How old they may be in reads: reading them scans the forwards table, so
/// they are read again only after this many times the last read took, which
/// keeps the scans under 2% of the server's time however big the table grows
/// (1 s at 20 ms a scan, 20 s at 400 ms).
const COUNTS_AGE_PER_READ: u32 = 50;

/// Ports held per proxy, as placement weighs them; see
/// [`Control::placement_counts`].
struct PortCounts {
    read_at: std::time::Instant,
    max_age: Duration,
    counts: HashMap<String, u64>,
}

/// Whether a proxy's last heartbeat is recent enough.
pub fn is_up(proxy: &ProxyRecord, down_after: Duration) -> bool {
    is_recent(&proxy.last_heartbeat, down_after)
}

/// Whether `last` (RFC 3339, as stored) is at most `down_after` ago; a time
/// that does not parse is not.
fn is_recent(last: &str, down_after: Duration) -> bool {
    let Ok(last) = chrono::DateTime::parse_from_rfc3339(last) else {
        return false;
    };
    let age = chrono::Utc::now().signed_duration_since(last);
    age.to_std().map(|age| age <= down_after).unwrap_or(true)
}

impl Control {
    pub fn new(
        store: Store,
        transport: Arc<dyn Transport>,
        config: Arc<Config>,
        allow_loopback: bool,
    ) -> Control {
        // Creates claim from the project's quota in the store's transaction:
        // projects without their own quota get `[quotas]`.
        store.set_default_quotas(config.quotas);
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Control {
            store,
            agents: AgentClient::new(transport.clone(), config.rpc_timeout),
            transport,
            config,
            allow_loopback,
            next_generation: AtomicU64::new(now_ms),
            placements: AtomicU64::new(0),
            host_locks: Mutex::new(HashMap::new()),
            differences: Mutex::new(HashMap::new()),
            bucket_differences: Mutex::new(HashMap::new()),
            full_syncs: Mutex::new(HashMap::new()),
            port_counts: Mutex::new(None),
            refreshing_counts: tokio::sync::Mutex::new(()),
            metrics: Metrics::default(),
            groups: groups::GroupCache::default(),
        }
    }

    fn host_lock(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        locked(&self.host_locks)
            .entry(host.to_owned())
            .or_default()
            .clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The RPC transport to the agents (for `/healthcheck`'s RabbitMQ check).
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The typed RPC client to the agents (for `usage.rs`).
    pub fn agents(&self) -> &AgentClient {
        &self.agents
    }

    /// Places, stores and applies a new forward for `project_id`.
    pub async fn create(&self, project_id: &str, new: NewForward) -> Result<PortForward, ApiError> {
        // Proxies whose pool the allocation found full although placement
        // counted room (its counts were behind): placed again without them.
        let mut full: Vec<String> = Vec::new();
        // Before placement, so that the answer names the option rather than
        // every proxy.
        self.check_allowlist_size(&new.controls)?;
        loop {
            let (proxy, proxies) = self.choose_proxy(project_id, &new, &full).await?;
            let row = self.new_row(project_id, &new, &proxy, &proxies)?;
            let created = match new.external_ports {
                Some(_) => self.store.create_forward(&row).await,
                None => {
                    self.store
                        .create_forward_allocating(&row, proxy.port_range)
                        .await
                }
            };
            let forward = match created {
                Ok(forward) => forward,
                Err(e @ StoreError::PoolExhausted { .. }) => {
                    // Read the counts again for the next placement.
                    *self.lock_counts() = None;
                    if new.proxy.is_some() || full.len() >= MAX_FULL_PROXIES {
                        return Err(e.into());
                    }
                    tracing::info!(proxy = %proxy.host, error = %e, "placement counted room in a pool that is full; placing again");
                    full.push(proxy.host);
                    continue;
                }
                Err(StoreError::PortTaken {
                    address,
                    protocol,
                    port,
                    holder,
                }) => {
                    return Err(self
                        .port_taken(project_id, &address, &protocol, port, holder)
                        .await);
                }
                Err(e) => return Err(e.into()),
            };
            self.count_ports(&forward.proxy, forward_ports(&forward));
            return Ok(self.push(forward).await);
        }
    }

    /// The 409 for a port `holder` already uses. The API never reveals
    /// another project's forward, so the holder is named only when it is
    /// the caller's own (and the holder's project only looked up for that).
    async fn port_taken(
        &self,
        project_id: &str,
        address: &str,
        protocol: &str,
        port: u16,
        holder: ForwardId,
    ) -> ApiError {
        let taken = format!("port {port}/{protocol} on {address} is already in use");
        match self.store.get_forward(holder).await {
            Ok(Some(forward)) if forward.project_id == project_id => {
                ApiError::Conflict(format!("{taken} by your forward {holder}"))
            }
            Ok(_) => ApiError::Conflict(taken),
            Err(e) => {
                // The conflict stands; only its wording lost a detail.
                tracing::warn!(error = %e, %holder, "cannot read the forward holding a port");
                ApiError::Conflict(taken)
            }
        }
    }

    /// The row of `new` on `proxy`, or why `new` does not fit there;
    /// `proxies` are all registered proxies, whose addresses and pools
    /// the target must stay clear of.
    fn new_row(
        &self,
        project_id: &str,
        new: &NewForward,
        proxy: &ProxyRecord,
        proxies: &[ProxyRecord],
    ) -> Result<NewForwardRow, ApiError> {
        let external_address = match new.external_address {
            Some(address) if proxy.external_addresses.contains(&address) => address,
            Some(address) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid external_address: {address} is not an address of proxy {} (it has {})",
                    proxy.host,
                    join(&proxy.external_addresses)
                )));
            }
            None => pick_address(&proxy.external_addresses, new.internal_ip_address),
        };
        let internal = new.internal_ports;
        // Without external ports, as many are allocated as the internal range has.
        let external_len = new.external_ports.map_or(internal.len(), |r| r.len());
        let max = self.config.max_port_range_size;
        if external_len.max(internal.len()) > max {
            let field = if new.external_ports.is_some() && external_len > max {
                "external_port_range"
            } else {
                "internal_port_range"
            };
            return Err(ApiError::BadRequest(format!(
                "invalid {field}: the range has {} ports; at most {max} are allowed ([api] max_port_range_size)",
                external_len.max(internal.len())
            )));
        }
        self.check_target(proxies, new.internal_ip_address, internal)?;
        self.check_controls(
            proxy,
            new.protocol,
            u16::try_from(external_len).unwrap_or(u16::MAX),
            &new.controls,
        )?;
        if let Some(range) = new.external_ports
            && (!proxy.port_range.contains(range.first())
                || !proxy.port_range.contains(range.last()))
        {
            let ports = if range.len() == 1 {
                range.first().to_string()
            } else {
                format!("{}:{}", range.first(), range.last())
            };
            let field = external_ports_field(range);
            return Err(ApiError::BadRequest(format!(
                "invalid {field}: {ports} is outside the port range {} of proxy {}",
                proxy.port_range, proxy.host
            )));
        }
        Ok(NewForwardRow {
            project_id: project_id.to_owned(),
            description: new.description.clone(),
            protocol: new.protocol,
            external_address,
            external_port: new.external_ports.map_or(0, |r| r.first()),
            ports: u16::try_from(external_len).unwrap_or(u16::MAX),
            internal_ip_address: new.internal_ip_address,
            internal_port: internal.first(),
            internal_port_end: internal.last(),
            instance_id: new.instance_id.clone(),
            proxy: proxy.host.clone(),
            controls: new.controls.clone(),
        })
    }

    /// Changes a forward's target or description and applies it.
    pub async fn update(
        &self,
        forward: &PortForward,
        changes: ForwardChanges,
    ) -> Result<Option<PortForward>, ApiError> {
        let ip = changes
            .internal_ip_address
            .unwrap_or(forward.internal_ip_address);
        let port = changes.internal_port.unwrap_or(forward.internal_port);
        // A range keeps its size: internal_port moves its first port (and an
        // N:1 forward's single port).
        let span = forward.internal_port_end - forward.internal_port;
        let Some(port_end) = port.checked_add(span) else {
            return Err(ApiError::BadRequest(format!(
                "invalid internal_port: this forward's internal range has {} ports, so it must start at {} or lower",
                u32::from(span) + 1,
                65535 - span
            )));
        };
        let internal = navigator_core::PortRange::new(port, port_end)
            .map_err(|e| ApiError::BadRequest(format!("invalid internal_port: {e}")))?;
        let retarget = ip != forward.internal_ip_address || port != forward.internal_port;
        // The controls as they will be; only a real change is written (and
        // reaches the data plane).
        let old = &forward.controls;
        let controls = Controls::new(
            changes
                .allowed_cidrs
                .clone()
                .unwrap_or_else(|| old.allowed_cidrs.to_vec()),
            changes.max_connections.unwrap_or(old.max_connections),
            changes.proxy_protocol.unwrap_or(old.proxy_protocol),
        );
        let new_cidrs =
            (controls.allowed_cidrs != old.allowed_cidrs).then(|| controls.allowed_cidrs.clone());
        let new_max =
            (controls.max_connections != old.max_connections).then_some(controls.max_connections);
        let new_proxy_protocol =
            (controls.proxy_protocol != old.proxy_protocol).then_some(controls.proxy_protocol);
        let controls_change =
            new_cidrs.is_some() || new_max.is_some() || new_proxy_protocol.is_some();
        if retarget || controls_change {
            let proxies = self.store.list_proxies().await?;
            let Some(proxy) = proxies.iter().find(|p| p.host == forward.proxy) else {
                return Err(ApiError::Conflict(format!(
                    "proxy {} of this forward is not registered",
                    forward.proxy
                )));
            };
            if retarget {
                self.check_target(&proxies, ip, internal)?;
            }
            if controls_change {
                self.check_controls(proxy, forward.protocol, forward.port_count(), &controls)?;
            }
        }
        let change = TargetChange {
            internal_ip_address: retarget.then_some(ip),
            internal_port: retarget.then_some(port),
            internal_port_end: retarget.then_some(port_end),
            description: changes.description,
            allowed_cidrs: new_cidrs,
            max_connections: new_max,
            proxy_protocol: new_proxy_protocol,
        };
        let Some(updated) = self.store.update_forward(forward.id, &change).await? else {
            return Ok(None);
        };
        // The agent gets the new spec at once: a controls-only change is a
        // retarget for `navigator_core::plan`, applied in place.
        if !change.changes_data_plane() {
            return Ok(Some(updated));
        }
        Ok(Some(self.push(updated).await))
    }

    /// Deletes a forward and tells its agent.
    pub async fn delete(&self, forward: &PortForward) -> Result<bool, ApiError> {
        let change = async {
            let deleted = self.store.delete_forward(forward.id).await?;
            if deleted {
                self.count_ports(&forward.proxy, -forward_ports(forward));
            }
            Ok(deleted)
        };
        let Some(told) = self.change_and_drop(forward, change).await? else {
            return Ok(false);
        };
        self.metrics
            .record_rpc(methods::DELETE_FORWARD, told.is_ok());
        if let Err(e) = told {
            // The row is gone, so the next full sync removes the listener.
            tracing::warn!(forward = %forward.id, proxy = %forward.proxy, error = %e, "agent not told of the delete; the next sync will remove it");
        }
        Ok(true)
    }

    /// Keeps a forward whose instance is gone but marks it `ERROR` with
    /// `reason` (which starts with [`navigator_store::INSTANCE_DELETED`]), and
    /// tells its agent to stop carrying it: the store leaves marked forwards
    /// out of full syncs. `false` if it was already marked or is gone.
    pub async fn mark_instance_deleted(
        &self,
        forward: &PortForward,
        reason: &str,
    ) -> Result<bool, ApiError> {
        let change = self
            .store
            .set_status(forward.id, ForwardStatus::Error, Some(reason));
        let Some(told) = self.change_and_drop(forward, change).await? else {
            return Ok(false);
        };
        if let Err(e) = told {
            tracing::warn!(forward = %forward.id, proxy = %forward.proxy, error = %e, "agent not told to drop the marked forward; the next sync will remove it");
        }
        Ok(true)
    }

    /// Makes `change` in the store and, if it changed something, tells
    /// `forward`'s agent to drop the forward, both under the agent's lock
    /// (a full sync read before the change is not sent after it); then
    /// waits for the agent's answer. `None` when `change` changed nothing.
    async fn change_and_drop(
        &self,
        forward: &PortForward,
        change: impl std::future::Future<Output = Result<bool, StoreError>>,
    ) -> Result<Option<Result<(), RpcError>>, ApiError> {
        // A group's forward is dropped by each member, under all their
        // locks, taken in name order (as every multi-lock holder does).
        let mut carriers = self.carriers(&forward.proxy).await;
        carriers.sort();
        let locks: Vec<_> = carriers.iter().map(|h| self.host_lock(h)).collect();
        let mut sent = Vec::with_capacity(carriers.len());
        {
            let mut _agents = Vec::with_capacity(locks.len());
            for lock in &locks {
                _agents.push(lock.lock().await);
            }
            if !change.await? {
                return Ok(None);
            }
            for host in &carriers {
                sent.push(
                    self.agents
                        .send_delete_forward(host, forward.id.to_string())
                        .await,
                );
            }
        }
        let mut told = Ok(());
        for sent in sent {
            if let Err(e) = answer(sent).await {
                told = Err(e);
            }
        }
        Ok(Some(told))
    }

    /// Sends one forward to its agent and records the outcome; on an RPC
    /// failure the forward stays `PENDING` with the reason, for the next sync.
    async fn push(&self, forward: PortForward) -> PortForward {
        let entry = ForwardEntry::from(&forward.spec());
        // One agent, or each member of the forward's address group.
        let carriers = self.carriers(&forward.proxy).await;
        let mut sent = Vec::with_capacity(carriers.len());
        for host in &carriers {
            // The lock orders messages to the agent, so it is held while
            // sending only: the agent answers in the order it received, and
            // several creates to one agent can wait for their answers at once.
            let lock = self.host_lock(host);
            let _agent = lock.lock().await;
            sent.push(self.agents.send_create_forward(host, entry.clone()).await);
        }
        let mut answers = Vec::with_capacity(sent.len());
        for (host, sent) in carriers.iter().zip(sent) {
            let created = answer(sent).await;
            self.metrics
                .record_rpc(methods::CREATE_FORWARD, created.is_ok());
            answers.push((host.clone(), created));
        }
        let group = navigator_store::group_name(&forward.proxy).is_some();
        // The answer of the member holding the addresses makes the status
        // (any member's while none holds them); a single proxy's, its own.
        let mut outcome: Option<(ForwardStatus, Option<String>)> = None;
        let mut decided = false;
        for (host, created) in &answers {
            let this = match created {
                Ok(result) => result_status(result),
                Err(e) => {
                    tracing::warn!(forward = %forward.id, proxy = %host, error = %e, "agent did not confirm the forward");
                    (
                        ForwardStatus::Pending,
                        Some(format!("waiting for proxy {host}: {e}")),
                    )
                }
            };
            if group && let Ok(result) = created {
                let proxy_of = HashMap::from([(forward.id, forward.proxy.clone())]);
                self.record_member_results(host, std::slice::from_ref(result), &proxy_of, false)
                    .await;
            }
            if !decided && self.writes_group_status(host, &forward.proxy).await {
                decided = true;
                outcome = Some(this);
            } else if outcome.is_none() {
                outcome = Some(this);
            }
        }
        let (status, reason) = outcome.unwrap_or_else(|| {
            (
                ForwardStatus::Pending,
                Some(format!(
                    "waiting for a member of {} to be up",
                    forward.proxy
                )),
            )
        });
        // Only if the forward is still this version on this proxy: a
        // retarget or a move meanwhile has its own push.
        if let Err(e) = self
            .store
            .set_reported_status(
                forward.id,
                &ReportedVersion::from(&forward),
                status,
                reason.as_deref(),
            )
            .await
        {
            tracing::warn!(forward = %forward.id, error = %e, "cannot record the forward's status");
        }
        PortForward {
            status,
            status_reason: reason,
            ..forward
        }
    }

    /// The proxy for `new`: the one it names, else the scheduler's choice,
    /// counting the proxies of `full` as full; with every registered proxy.
    async fn choose_proxy(
        &self,
        project_id: &str,
        new: &NewForward,
        full: &[String],
    ) -> Result<(ProxyRecord, Vec<ProxyRecord>), ApiError> {
        let proxies = self.store.list_proxies().await?;
        if let Some(host) = &new.proxy {
            let chosen = proxies.iter().find(|p| &p.host == host).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "invalid proxy: no proxy named {host:?} is registered"
                ))
            })?;
            return Ok((chosen.clone(), proxies));
        }
        let mut counts = self.placement_counts().await?;
        for host in full {
            counts.insert(host.clone(), u64::MAX);
        }
        let request = Request {
            target: new.internal_ip_address,
            external_address: new.external_address,
            external_ports: new.external_ports.map(|r| r.first()..=r.last()),
            affinity_key: new.instance_id.as_deref().unwrap_or(project_id),
            sequence: self.placements.fetch_add(1, Ordering::Relaxed),
            protocol: new.protocol,
            ports: u16::try_from(
                new.external_ports
                    .map_or(new.internal_ports.len(), |r| r.len()),
            )
            .unwrap_or(u16::MAX),
            controls: &new.controls,
        };
        let chosen = self.place(&proxies, &counts, &request).map_err(|e| {
            let field = new
                .external_ports
                .map_or("external_port", external_ports_field);
            no_proxy_error(&e, field, "nothing was created")
        })?;
        Ok((chosen.clone(), proxies))
    }

    /// Ports held per proxy, for placement (ports, not forwards: a range
    /// uses as much of a pool as its size).
    ///
    /// Counting them reads the whole forwards table, too much for every
    /// create when they only serve the pool-full filter (`round_robin`
    /// and `hash`): the count is then read at most every [`COUNTS_MAX_AGE`]
    /// or [`COUNTS_AGE_PER_READ`] times the last read's time, whichever is
    /// longer, and kept up to date meanwhile with this server's own creates and
    /// deletes. Other servers' changes show at the next read; the database,
    /// not this count, is what keeps a pool from being overbooked.
    ///
    /// One create reads them again when they are too old; the creates that
    /// come meanwhile use the old ones rather than all reading at once, and
    /// when there are none yet (a server's first creates), wait for that one
    /// read (64 creates at once each scanning a million forwards made the
    /// database time out).
    /// `least_loaded` weighs these counts to choose, so it reads them at
    /// every create, whatever server made the last one.
    async fn placement_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        if self.config.scheduler_strategy == navigator_scheduler::Strategy::LeastLoaded {
            return self.read_port_counts().await;
        }
        let stale = {
            let cached = self.lock_counts();
            match cached.as_ref() {
                Some(c) if c.read_at.elapsed() < c.max_age => {
                    return Ok(c.counts.clone());
                }
                Some(c) => Some(c.counts.clone()),
                None => None,
            }
        };
        let _refresh = match (self.refreshing_counts.try_lock(), stale) {
            (Ok(refresh), _) => refresh,
            (Err(_), Some(stale)) => return Ok(stale),
            (Err(_), None) => {
                let refresh = self.refreshing_counts.lock().await;
                if let Some(c) = self.lock_counts().as_ref() {
                    return Ok(c.counts.clone());
                }
                refresh
            }
        };
        let started = std::time::Instant::now();
        let counts = self.read_port_counts().await?;
        *self.lock_counts() = Some(PortCounts {
            read_at: std::time::Instant::now(),
            max_age: COUNTS_MAX_AGE.max(started.elapsed() * COUNTS_AGE_PER_READ),
            counts: counts.clone(),
        });
        Ok(counts)
    }

    /// Ports held per proxy, read from the store.
    async fn read_port_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let usage = self.store.proxy_usage().await?;
        Ok(usage
            .into_iter()
            .map(|(proxy, used)| (proxy, used.ports))
            .collect())
    }

    /// Adds `delta` ports to `proxy`'s count in the placement cache.
    fn count_ports(&self, proxy: &str, delta: i64) {
        if let Some(PortCounts { counts, .. }) = self.lock_counts().as_mut() {
            let n = counts.entry(proxy.to_owned()).or_default();
            *n = n.saturating_add_signed(delta);
        }
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, Option<PortCounts>> {
        locked(&self.port_counts)
    }

    /// Runs the scheduler (filters, then the configured strategy) over
    /// `proxies`.
    fn place<'p>(
        &self,
        proxies: &'p [ProxyRecord],
        counts: &HashMap<String, u64>,
        request: &Request<'_>,
    ) -> Result<&'p ProxyRecord, NoProxy> {
        let candidates: Vec<Candidate> = proxies
            .iter()
            .map(|p| self.candidate(p, counts.get(&p.host).copied().unwrap_or(0)))
            .collect();
        let chosen =
            navigator_scheduler::place(self.config.scheduler_strategy, &candidates, request)?;
        proxies
            .iter()
            .find(|p| p.host == chosen.host)
            .ok_or(NoProxy { rejected: vec![] })
    }

    fn candidate(&self, proxy: &ProxyRecord, forward_count: u64) -> Candidate {
        Candidate {
            host: proxy.host.clone(),
            external_addresses: proxy.external_addresses.clone(),
            forward_count,
            // Both protocols draw from the pool, per address.
            capacity: u64::from(proxy.port_range.len()) * 2 * proxy.external_addresses.len() as u64,
            pool: proxy.port_range.first()..=proxy.port_range.last(),
            up: is_up(proxy, self.config.agent_down_time),
            // Userspace forwarders connect out in whatever family the target
            // has; kernel DNAT cannot change the family of a packet.
            cross_family: matches!(proxy.backend.as_str(), "relay" | "socat"),
            backend: proxy.backend.clone(),
            enforces_controls: proxy.has_feature(navigator_rpc::messages::features::CONTROLS),
        }
    }

    /// Refuses controls that `proxy` cannot enforce on a forward of
    /// `protocol` (a proxy an admin named, or the proxy of an updated
    /// forward: the scheduler filters the others), and allowlists longer
    /// than `[api] max_allowed_cidrs`. A `400` naming the field, the proxy
    /// and its backend.
    fn check_controls(
        &self,
        proxy: &ProxyRecord,
        protocol: Protocol,
        ports: u16,
        controls: &Controls,
    ) -> Result<(), ApiError> {
        self.check_allowlist_size(controls)?;
        let candidate = self.candidate(proxy, 0);
        match navigator_scheduler::controls_rejection(&candidate, protocol, ports, controls) {
            None => Ok(()),
            Some(navigator_scheduler::Rejection::CannotEnforce { field, reason }) => {
                Err(ApiError::BadRequest(format!(
                    "invalid {field}: proxy {} (backend {}) cannot enforce it: {reason}",
                    proxy.host, proxy.backend
                )))
            }
            // A valid request this proxy cannot carry until its agent is
            // upgraded: a conflict with the cloud's state, as a full pool is.
            Some(other) => Err(ApiError::Conflict(format!(
                "{} needs proxy {} to enforce it, but it {other}",
                first_control_field(controls),
                proxy.host
            ))),
        }
    }

    fn check_allowlist_size(&self, controls: &Controls) -> Result<(), ApiError> {
        let max = self.config.max_allowed_cidrs;
        if controls.allowed_cidrs.len() > max {
            return Err(ApiError::BadRequest(format!(
                "invalid allowed_cidrs: has {} entries; at most {max} are allowed ([api] max_allowed_cidrs)",
                controls.allowed_cidrs.len()
            )));
        }
        Ok(())
    }

    /// Checks the target against the policy, for every port of `ports`.
    /// Every registered proxy's addresses and pool count, not only those of
    /// the proxy that carries the forward: a target at another proxy's
    /// listener would chain the proxies into a loop.
    fn check_target(
        &self,
        proxies: &[ProxyRecord],
        ip: IpAddr,
        ports: navigator_core::PortRange,
    ) -> Result<(), ApiError> {
        let policy = TargetPolicy {
            allowed_networks: self.config.allowed_target_networks.clone(),
            allow_loopback: self.allow_loopback,
            proxy_addresses: proxies
                .iter()
                .flat_map(|p| p.external_addresses.iter().map(|a| (*a, p.port_range)))
                .collect(),
        };
        policy
            .check_ports(ip, ports)
            .map_err(|e| ApiError::BadRequest(format!("invalid internal_ip_address: {e}")))
    }

    /// Sends `host` its full desired set and records the per-forward results.
    pub async fn sync_host(&self, host: &str) -> Result<(), ApiError> {
        // A group is carried by its members: each gets its full sync.
        if navigator_store::group_name(host).is_some() {
            let mut result = Ok(());
            for member in self.carriers(host).await {
                if let Err(e) = Box::pin(self.sync_host(&member)).await {
                    result = Err(e);
                }
            }
            return result;
        }
        locked(&self.full_syncs).insert(host.to_owned(), FullSync::InFlight);
        let synced = self.sync_host_once(host).await;
        let mut full_syncs = locked(&self.full_syncs);
        match synced {
            Ok(()) => {
                full_syncs.insert(host.to_owned(), FullSync::Done(std::time::Instant::now()));
            }
            Err(_) => {
                full_syncs.remove(host);
            }
        }
        synced
    }

    /// Whether this server's full sync of `host` is in flight or ended less
    /// than a report interval ago: a heartbeat of generation 0 then comes
    /// from before the agent applied it (at start-up, the agent's first
    /// heartbeat races the server's own start-up sync), not from an agent
    /// that restarted since; if it did, its next heartbeat asks again.
    fn full_sync_is_recent(&self, host: &str) -> bool {
        match locked(&self.full_syncs).get(host) {
            Some(FullSync::InFlight) => true,
            Some(FullSync::Done(at)) => at.elapsed() < self.config.report_interval,
            None => false,
        }
    }

    async fn sync_host_once(&self, host: &str) -> Result<(), ApiError> {
        let started = std::time::Instant::now();
        let (forwards, generation, sent) = {
            // Held from the store read until the sync is sent: a change made
            // after the read is sent after the sync, never before it.
            let lock = self.host_lock(host);
            let _agent = lock.lock().await;
            // Its own forwards and, for a group member, its groups'.
            let forwards = self.carried_forwards(host).await?;
            let entries: Vec<ForwardEntry> = forwards
                .iter()
                .map(|f| ForwardEntry::from(&f.spec()))
                .collect();
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            // An agent that is starting may not listen yet (the all-in-one
            // agent task is spawned just before the start-up sync): wait a
            // little rather than fail the start-up.
            let mut attempts = 0;
            let sent = loop {
                match self
                    .agents
                    .send_sync_forwards(host, entries.clone(), generation)
                    .await
                {
                    Err(RpcError::NoListener { .. }) if attempts < 40 => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => break other,
                }
            };
            (forwards, generation, sent)
        };
        let synced = answer(sent).await;
        self.metrics
            .record_rpc(methods::SYNC_FORWARDS, synced.is_ok());
        match synced {
            Ok(result) => {
                self.record_results(host, &result.results, &forwards, true)
                    .await;
                tracing::info!(%host, forwards = forwards.len(), generation, elapsed_ms = started.elapsed().as_millis() as u64, "agent synced");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%host, error = %e, "full sync failed");
                Err(ApiError::Unavailable(format!(
                    "cannot sync proxy {host}: {e}"
                )))
            }
        }
    }

    /// Records an agent's per-forward results. Only results that differ from
    /// the store are written: `known` is the host's forwards as just read, so
    /// a steady agent with thousands of forwards costs one query per report;
    /// and those are written together, so an agent that takes thousands at
    /// once (a failover, a first sync) costs a few commits, not one each.
    /// Results about an address group's forwards are kept per member, and
    /// make the forward's status only when `host` holds the group's
    /// addresses (see `control/groups.rs`); `full` says they are a full
    /// sync's, which replace the member's earlier ones.
    async fn record_results(
        &self,
        host: &str,
        results: &[ForwardResult],
        known: &[PortForward],
        full: bool,
    ) {
        let current: HashMap<ForwardId, (ForwardStatus, Option<&str>)> = known
            .iter()
            .map(|f| (f.id, (f.status, f.status_reason.as_deref())))
            .collect();
        let proxy_of: HashMap<ForwardId, String> =
            known.iter().map(|f| (f.id, f.proxy.clone())).collect();
        if known.iter().any(|f| f.proxy != host) || full {
            self.record_member_results(host, results, &proxy_of, full)
                .await;
        }
        let writes = self
            .group_status_writes(host, proxy_of.values().map(String::as_str))
            .await;
        let mut reports = Vec::new();
        for result in results {
            let Ok(id) = result.id.parse::<ForwardId>() else {
                tracing::warn!(%host, id = %result.id, "agent reported a malformed forward id");
                continue;
            };
            let (status, reason) = result_status(result);
            if current.get(&id) == Some(&(status, reason.as_deref())) {
                continue;
            }
            let proxy = proxy_of.get(&id).map_or(host, String::as_str);
            if proxy != host && !writes.get(proxy).copied().unwrap_or(false) {
                continue;
            }
            let version = ReportedVersion {
                proxy: proxy.to_owned(),
                applied: result.applied.as_ref().and_then(applied_version),
            };
            reports.push(StatusReport {
                id,
                version,
                status,
                reason,
            });
        }
        if reports.is_empty() {
            return;
        }
        if let Err(e) = self.store.set_reported_statuses(&reports).await {
            tracing::warn!(%host, forwards = reports.len(), error = %e, "cannot record the forwards' statuses");
        }
    }

    /// Handles an agent's heartbeat.
    pub async fn report_state(&self, state: AgentState) -> Result<(), ApiError> {
        let addresses = state
            .external_addresses
            .iter()
            .map(|a| a.parse::<IpAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                ApiError::BadRequest(format!("agent {} reported a malformed address", state.host))
            })?;
        let port_range = state.port_range.parse().map_err(|e| {
            ApiError::BadRequest(format!(
                "agent {} reported a bad port range: {e}",
                state.host
            ))
        })?;
        let before = self.store.get_proxy(&state.host).await?;
        self.store
            .upsert_proxy(
                &state.host,
                &state.backend,
                &addresses,
                port_range,
                &state.features,
            )
            .await?;
        self.record_groups(&state, port_range, &addresses).await?;
        // A proxy that was down may have lost forwards to failover (or been
        // marked ERROR): its full sync removes what it no longer owns and
        // reports the rest, whatever generation it holds.
        if before.is_some_and(|p| !is_up(&p, self.config.agent_down_time)) {
            tracing::info!(host = %state.host, "proxy is back after being down; full sync");
            return self.sync_host(&state.host).await;
        }
        // Generation 0: the agent (re)started or reconnected and may have
        // missed messages. Any other generation comes from a full sync by
        // some server (there may be several, each with its own generations),
        // and what a lost message missed since, the periodic sync repairs.
        if state.generation == 0 {
            if self.full_sync_is_recent(&state.host) {
                tracing::debug!(host = %state.host, "agent reported generation 0, but this server's full sync of it is under way or just done; not another");
                return Ok(());
            }
            tracing::info!(host = %state.host, generation = state.generation, "agent needs a full sync");
            return self.sync_host(&state.host).await;
        }
        match state.digest() {
            Some(Ok(digest)) => {
                self.check_digest(&state.host, &digest).await?;
                let proxy_of = self.proxies_of_results(&state.host, &state.forwards).await;
                if proxy_of.values().any(|p| p != &state.host) {
                    self.record_member_results(&state.host, &state.forwards, &proxy_of, false)
                        .await;
                }
                self.record_reported(&state.host, &state.forwards, &proxy_of)
                    .await;
                return Ok(());
            }
            Some(Err(e)) => {
                return Err(ApiError::BadRequest(format!(
                    "agent {} reported malformed digests: {e}",
                    state.host
                )));
            }
            // An agent older than digests lists every forward.
            None => {}
        }
        // The agent must carry exactly the forwards stored for it. With
        // several servers, a full sync one built from an older snapshot can
        // reach the agent after another's create or delete, and a lost
        // message leaves a difference too: the heartbeats show it, and a
        // sync repairs it. But a create, retarget or delete in flight also
        // differs for a moment (stored, not yet told to the agent, or the
        // reverse), and under a steady stream of changes every heartbeat
        // would bring a full sync. So only a forward that differs in two
        // reports in a row, as this server sees them, is drift.
        // One read serves both the comparison and the statuses recorded below.
        let stored_forwards = self.store.forwards_on_proxy(&state.host).await?;
        let stored: BTreeSet<String> = stored_forwards.iter().map(|f| f.id.to_string()).collect();
        let carried: BTreeSet<String> = state.forwards.iter().map(|f| f.id.clone()).collect();
        let differing: BTreeSet<String> = stored.symmetric_difference(&carried).cloned().collect();
        if self.persistent_difference(&state.host, differing) {
            tracing::info!(host = %state.host, stored = stored.len(), carried = carried.len(), "agent's forwards differ from the store in two reports in a row; full sync");
            return self.sync_host(&state.host).await;
        }
        self.record_results(&state.host, &state.forwards, &stored_forwards, false)
            .await;
        Ok(())
    }

    /// Compares an agent's summary with the store's (256 rows, whatever the
    /// number of forwards) and re-syncs the buckets that differ for another
    /// reason than changes in flight: a bucket that differed at this
    /// server's previous report from `host` too, with no change to it in the
    /// store in between (its revision is the same), had a whole report
    /// interval to settle; so has one that differed in
    /// [`DIFFERING_REPORTS_BEFORE_SYNC`] reports in a row. Only those
    /// buckets' forwards are read and sent.
    async fn check_digest(&self, host: &str, agent: &SetDigest) -> Result<(), ApiError> {
        // A group member's summary is its own proxy's plus its groups'.
        let stored = self.carried_digest(host).await?;
        let differing = stored.digest.differing(agent);
        let drifted = self.settled_differences(host, &differing, &stored);
        if drifted.is_empty() {
            if !differing.is_empty() {
                tracing::debug!(%host, buckets = differing.len(), "agent's summary differs from the store's, maybe by changes in flight; checked again at its next report");
            }
            return Ok(());
        }
        let (carried, stored_forwards) = drifted.iter().fold((0, 0), |(a, s), b| {
            (
                a + agent.bucket(*b).forwards,
                s + stored.digest.bucket(*b).forwards,
            )
        });
        tracing::info!(%host, buckets = drifted.len(), carried, stored = stored_forwards, "agent's forwards differ from the store's in buckets that did not change since its previous report; re-syncing those buckets");
        self.sync_buckets(host, drifted).await
    }

    /// Remembers the buckets by which `host`'s summary differs from the
    /// store's, and returns those that have settled (see
    /// [`Control::check_digest`]); it forgets those, since their sync
    /// settles them.
    fn settled_differences(&self, host: &str, differing: &[u8], stored: &StoredDigest) -> Vec<u8> {
        let mut all = locked(&self.bucket_differences);
        if differing.is_empty() {
            all.remove(host);
            return Vec::new();
        }
        let before = all.remove(host).unwrap_or_default();
        let mut now = HashMap::new();
        let mut settled = Vec::new();
        for bucket in differing {
            let revision = stored.revision(*bucket);
            let reports = before.get(bucket).map_or(1, |d| d.reports + 1);
            let unchanged = before.get(bucket).is_some_and(|d| d.revision == revision);
            if unchanged || reports >= DIFFERING_REPORTS_BEFORE_SYNC {
                settled.push(*bucket);
            } else {
                now.insert(*bucket, Differing { revision, reports });
            }
        }
        if !now.is_empty() {
            all.insert(host.to_owned(), now);
        }
        settled
    }

    /// Sends `host` the desired set of `buckets` (a partial sync, for an
    /// agent that announces digests) and records the results.
    async fn sync_buckets(&self, host: &str, buckets: Vec<u8>) -> Result<(), ApiError> {
        let started = std::time::Instant::now();
        let count = buckets.len();
        let (forwards, sent) = {
            // As for a full sync: a change made after the read is sent after it.
            let lock = self.host_lock(host);
            let _agent = lock.lock().await;
            // Read under the bucket rows' locks, which are set to what the
            // rows hold: a stored summary that was wrong is repaired here.
            let forwards = self.resync_carried_buckets(host, &buckets).await?;
            let entries: Vec<ForwardEntry> = forwards
                .iter()
                .map(|f| ForwardEntry::from(&f.spec()))
                .collect();
            let sent = self.agents.send_sync_buckets(host, buckets, entries).await;
            (forwards, sent)
        };
        let synced = answer(sent).await;
        self.metrics
            .record_rpc(methods::SYNC_FORWARDS, synced.is_ok());
        match synced {
            Ok(result) => {
                self.record_results(host, &result.results, &forwards, false)
                    .await;
                tracing::info!(%host, buckets = count, forwards = forwards.len(), elapsed_ms = started.elapsed().as_millis() as u64, "agent's buckets synced");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%host, error = %e, "partial sync failed");
                Err(ApiError::Unavailable(format!(
                    "cannot sync proxy {host}: {e}"
                )))
            }
        }
    }

    /// Records the results an agent that sends digests put in its heartbeat
    /// (the recent changes and failures, at most
    /// `features::MAX_REPORTED_RESULTS`): each is written only if it is about
    /// the forward's current version on this proxy and changes its status,
    /// without reading the proxy's forwards.
    async fn record_reported(
        &self,
        host: &str,
        results: &[ForwardResult],
        proxy_of: &HashMap<ForwardId, String>,
    ) {
        let writes = self
            .group_status_writes(host, proxy_of.values().map(String::as_str))
            .await;
        let reports: Vec<StatusReport> = results
            .iter()
            .take(navigator_rpc::messages::features::MAX_REPORTED_RESULTS)
            .filter_map(|result| {
                let Ok(id) = result.id.parse::<ForwardId>() else {
                    tracing::warn!(%host, id = %result.id, "agent reported a malformed forward id");
                    return None;
                };
                let proxy = proxy_of.get(&id).map_or(host, String::as_str);
                if proxy != host && !writes.get(proxy).copied().unwrap_or(false) {
                    return None;
                }
                let (status, reason) = result_status(result);
                Some(StatusReport {
                    id,
                    version: ReportedVersion {
                        proxy: proxy.to_owned(),
                        applied: result.applied.as_ref().and_then(applied_version),
                    },
                    status,
                    reason,
                })
            })
            .collect();
        if reports.is_empty() {
            return;
        }
        if let Err(e) = self.store.set_reported_statuses(&reports).await {
            tracing::warn!(%host, forwards = reports.len(), error = %e, "cannot record the forwards' statuses");
        }
    }

    /// Remembers the forwards by which `host`'s report differs from the
    /// store, and says whether one of them differed in the previous report
    /// this server took from `host` too (then forgets them: the full sync
    /// that follows settles them).
    fn persistent_difference(&self, host: &str, differing: BTreeSet<String>) -> bool {
        let mut differences = locked(&self.differences);
        if differing.is_empty() {
            differences.remove(host);
            return false;
        }
        let persistent = differences
            .get(host)
            .is_some_and(|before| !before.is_disjoint(&differing));
        if persistent {
            differences.remove(host);
        } else {
            tracing::debug!(%host, differing = differing.len(), "agent's forwards differ from the store, maybe by changes in flight; checked again at its next report");
            differences.insert(host.to_owned(), differing);
        }
        persistent
    }

    /// Serves the server topic (agents' heartbeats) until `shutdown`.
    pub async fn serve_reports(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), RpcError> {
        let mut incoming = self
            .transport
            .listen(&Target::topic(topics::SERVER))
            .await?;
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = incoming.recv() => message,
            };
            let Some(message) = message else {
                return Ok(());
            };
            if message.method != methods::REPORT_STATE {
                tracing::warn!(method = %message.method, "unknown method on the server topic");
                continue;
            }
            match decode_args::<args::ReportState>(&message) {
                Ok(args) => {
                    let control = self.clone();
                    // A sync may take a while; don't hold up other reports.
                    tokio::spawn(async move {
                        if let Err(e) = control.report_state(args.state).await {
                            tracing::warn!(error = %e, "cannot process an agent report");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "malformed agent report"),
            }
        }
    }

    /// Re-syncs every live proxy whose agent sends no digests (an older
    /// agent) every `resync_interval`, until `shutdown`. The others are
    /// checked at every heartbeat instead ([`Control::check_digest`]): a
    /// periodic full sync would cost them time in proportion to their
    /// forwards for nothing.
    pub async fn resync_periodically(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.resync_interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let proxies = match self.store.list_proxies().await {
                Ok(proxies) => proxies,
                Err(e) => {
                    tracing::warn!(error = %e, "periodic sync: cannot list proxies");
                    continue;
                }
            };
            for proxy in proxies.iter().filter(|p| {
                is_up(p, self.config.agent_down_time)
                    && !p.has_feature(navigator_rpc::messages::features::DIGESTS)
            }) {
                let _ = self.sync_host(&proxy.host).await;
            }
        }
    }

    /// Checks every `report_interval` for proxies that are down and fails
    /// their forwards over, until `shutdown`.
    ///
    /// Only once this server has reached the database for `agent_down_time`
    /// without a break: after its own start or a database outage, heartbeats
    /// that nobody could record would otherwise make every proxy look dead.
    pub async fn watch_failures(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.report_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = std::time::Instant::now();
            let since = *connected_since.get_or_insert(now);
            let result = if now.duration_since(since) < self.config.agent_down_time {
                self.store.list_proxies().await.map(|_| ())
            } else {
                self.fail_over().await
            };
            if let Err(e) = result {
                connected_since = None;
                tracing::warn!(error = %e, "failover check failed; proxies are judged again once the database has been reachable for agent_down_time");
            }
        }
    }

    /// One pass of failover: the forwards of every proxy whose heartbeat is
    /// older than `agent_down_time` move to live proxies
    /// (`reschedule_on_failure`) or are shown `ERROR` with the reason.
    ///
    /// Several servers run this at once; each move is claimed by a
    /// conditional update in the store, so a forward moves exactly once.
    pub async fn fail_over(&self) -> Result<(), StoreError> {
        let proxies = self.store.list_proxies().await?;
        let down: Vec<&ProxyRecord> = proxies
            .iter()
            .filter(|p| !is_up(p, self.config.agent_down_time))
            .collect();
        if down.is_empty() {
            return Ok(());
        }
        // Ports, not forwards, as in placement.
        let counts: Mutex<HashMap<String, u64>> = Mutex::new(self.read_port_counts().await?);
        let mut receivers = std::collections::BTreeSet::new();
        for proxy in down {
            if locked(&counts).get(&proxy.host).copied().unwrap_or(0) == 0 {
                continue;
            }
            let reason = format!(
                "proxy {} is down (no heartbeat for more than {} s)",
                proxy.host,
                self.config.agent_down_time.as_secs()
            );
            // A group's forwards keep their address: when every member is
            // down they are shown ERROR, never moved; a member that comes
            // back reports them again.
            if let Some(name) = navigator_store::group_name(&proxy.host) {
                let reason = format!(
                    "every member of address group {name} is down (no heartbeat for more than {} s)",
                    self.config.agent_down_time.as_secs()
                );
                let marked = self.store.set_proxy_error(&proxy.host, &reason).await?;
                if marked > 0 {
                    tracing::warn!(group = %name, forwards = marked, "every member of the address group is down; its forwards are shown ERROR");
                }
                continue;
            }
            if !self.config.reschedule_on_failure {
                let marked = self.store.set_proxy_error(&proxy.host, &reason).await?;
                if marked > 0 {
                    tracing::warn!(host = %proxy.host, forwards = marked, "proxy is down; its forwards are shown ERROR (reschedule_on_failure = false)");
                }
                continue;
            }
            // Several moves at a time: each is a few statements and a
            // commit, and a failed proxy may have carried thousands.
            let forwards = self.store.forwards_on_proxy(&proxy.host).await?;
            let mut moves = futures_util::stream::iter(forwards)
                .map(|forward| self.move_one(&proxies, &counts, proxy, forward, &reason))
                .buffer_unordered(PARALLEL_MOVES);
            while let Some(moved) = moves.next().await {
                if let Some(to) = moved? {
                    receivers.insert(to);
                }
            }
        }
        // One full sync per proxy that received forwards rather than one
        // call per forward: a failed proxy may have carried thousands.
        for host in receivers {
            // A failure is logged; the forwards stay PENDING until the
            // proxy's next heartbeat shows it lacks them.
            let _ = self.sync_host(&host).await;
        }
        Ok(())
    }

    /// Moves one forward of the down `from` to the proxy the scheduler
    /// chooses among the others, trying the next best when the chosen one
    /// has no free port after all; `ERROR` with the reason if none can.
    /// Returns the proxy it moved to, if this server moved it.
    async fn move_one(
        &self,
        proxies: &[ProxyRecord],
        counts: &Mutex<HashMap<String, u64>>,
        from: &ProxyRecord,
        forward: PortForward,
        down_reason: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut tried: Vec<ProxyRecord> = proxies
            .iter()
            .filter(|p| p.host != from.host)
            .cloned()
            .collect();
        let mut full = Vec::new();
        loop {
            let request = Request {
                target: forward.internal_ip_address,
                external_address: None,
                external_ports: None,
                affinity_key: forward
                    .instance_id
                    .as_deref()
                    .unwrap_or(&forward.project_id),
                sequence: self.placements.fetch_add(1, Ordering::Relaxed),
                protocol: forward.protocol,
                ports: forward.port_count(),
                // A forward moves only where its controls hold.
                controls: &forward.controls,
            };
            let placed = self.place(&tried, &locked(counts), &request).cloned();
            let to = match placed {
                Ok(to) => to,
                Err(none) => {
                    let mut why = none.to_string();
                    for (host, error) in &full {
                        why.push_str(&format!("; proxy {host}: {error}"));
                    }
                    let reason = format!("{down_reason}; cannot move the forward: {why}");
                    let changed = self
                        .store
                        .set_reported_status(
                            forward.id,
                            &ReportedVersion::from(&forward),
                            ForwardStatus::Error,
                            Some(&reason),
                        )
                        .await?;
                    // Retried at every check; said once per change.
                    if changed {
                        tracing::warn!(forward = %forward.id, %reason, "failover impossible for now");
                    }
                    return Ok(None);
                }
            };
            let target = Move {
                from_proxy: from.host.clone(),
                to_proxy: to.host.clone(),
                external_address: pick_address(&to.external_addresses, forward.internal_ip_address),
                pool: to.port_range,
            };
            match self.store.move_forward(forward.id, &target).await {
                Ok(Some(moved)) => {
                    let ports = u64::from(moved.external_port_end - moved.external_port) + 1;
                    {
                        let mut counts = locked(counts);
                        *counts.entry(to.host.clone()).or_default() += ports;
                        if let Some(n) = counts.get_mut(&from.host) {
                            *n = n.saturating_sub(ports);
                        }
                    }
                    tracing::info!(
                        target: "navigator::failover",
                        forward = %moved.id,
                        from = %from.host,
                        to = %moved.proxy,
                        external = %format!("{}:{}", moved.external_address, moved.external_port),
                        "forward moved off a down proxy"
                    );
                    return Ok(Some(moved.proxy));
                }
                // Another server moved it (or it was deleted) meanwhile.
                Ok(None) => return Ok(None),
                Err(e @ StoreError::PoolExhausted { .. }) => {
                    full.push((to.host.clone(), e.to_string()));
                    tried.retain(|p| p.host != to.host);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The API error for a placement that found no proxy: 503 while no proxy is
/// up (that passes); 400 naming the field when the only obstacle among the
/// live proxies is the external address or port the caller asked for, or a
/// control no live proxy's backend can enforce (the PROXY protocol without
/// a relay proxy); 409 when the proxies there cannot carry it (full, wrong
/// address family, agents too old for controls).
/// `port_field` names the request's field for the external ports.
fn no_proxy_error(e: &NoProxy, port_field: &str, outcome: &str) -> ApiError {
    use navigator_scheduler::Rejection;
    if e.is_transient() {
        return ApiError::Unavailable(format!("{e}; {outcome}"));
    }
    let live: Vec<&Rejection> = e
        .rejected
        .iter()
        .map(|(_, why)| why)
        .filter(|why| **why != Rejection::Down)
        .collect();
    if live
        .iter()
        .all(|why| matches!(why, Rejection::LacksAddress(_)))
    {
        return ApiError::BadRequest(format!(
            "invalid external_address: no proxy that is up has it ({e}); {outcome}"
        ));
    }
    // Only the controls stand in the way: the request is what no proxy
    // can do (400 naming the field), not a lack of room.
    if let Some(field) = live.iter().find_map(|why| match why {
        Rejection::CannotEnforce { field, .. } => Some(*field),
        _ => None,
    }) && live.iter().all(|why| {
        matches!(
            why,
            Rejection::CannotEnforce { .. } | Rejection::ControlsNotAnnounced
        )
    }) {
        return ApiError::BadRequest(format!("invalid {field}: {e}; {outcome}"));
    }
    if live
        .iter()
        .all(|why| matches!(why, Rejection::PortOutsidePool { .. }))
    {
        return ApiError::BadRequest(format!(
            "invalid {port_field}: outside the port range of every proxy that is up ({e}); {outcome}"
        ));
    }
    ApiError::Conflict(format!("{e}; {outcome}"))
}

/// The version an agent says it applied, if it is well formed.
fn applied_version(entry: &ForwardEntry) -> Option<AppliedVersion> {
    let spec = entry.to_spec().ok()?;
    Some(AppliedVersion {
        protocol: spec.protocol,
        external_address: spec.listen.ip(),
        external_port: spec.listen.port(),
        internal_ip_address: spec.target.ip(),
        internal_port: spec.target.port(),
        controls: Some(spec.controls),
    })
}

/// The first control `controls` sets, to name in a refusal that is about
/// all of them (an agent that enforces none).
fn first_control_field(controls: &Controls) -> &'static str {
    if !controls.allowed_cidrs.is_empty() {
        "allowed_cidrs"
    } else if controls.max_connections.is_some() {
        "max_connections"
    } else {
        "proxy_protocol"
    }
}

fn result_status(result: &ForwardResult) -> (ForwardStatus, Option<String>) {
    match result.status {
        ResultStatus::Active => (ForwardStatus::Active, None),
        ResultStatus::Error => (
            ForwardStatus::Error,
            Some(
                result
                    .reason
                    .clone()
                    .unwrap_or_else(|| "the agent reported an error".into()),
            ),
        ),
    }
}

/// The request field that named `ports`: one port, or a range.
fn external_ports_field(ports: navigator_core::PortRange) -> &'static str {
    if ports.len() == 1 {
        "external_port"
    } else {
        "external_port_range"
    }
}

/// The agent's answer to a call that was sent, or why it was not sent.
async fn answer<T>(sent: Result<Reply<T>, RpcError>) -> Result<T, RpcError> {
    sent?.await
}

/// Locks one of this module's std mutexes, taking over a poisoned one: what
/// they guard (locks by host, counts, sets of ids) is never left half-changed
/// by a panic, and none is held across an await.
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Number of external ports `forward` holds.
fn forward_ports(forward: &PortForward) -> i64 {
    i64::from(forward.port_count())
}

/// The proxy's first address in the target's family, else its first address.
fn pick_address(addresses: &[IpAddr], target: IpAddr) -> IpAddr {
    addresses
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == target.is_ipv4())
        .or_else(|| addresses.first().copied())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

fn join(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use navigator_scheduler::Rejection;

    fn no_proxy(rejected: Vec<Rejection>) -> NoProxy {
        NoProxy {
            rejected: rejected
                .into_iter()
                .enumerate()
                .map(|(i, why)| (format!("p{i}"), why))
                .collect(),
        }
    }

    /// A control no live proxy can enforce is the request's fault (400
    /// naming the field); agents too old for controls, or a full pool
    /// besides, are the cloud's state (409).
    #[test]
    fn controls_rejections_become_the_right_status() {
        let cannot = || Rejection::CannotEnforce {
            field: "proxy_protocol",
            reason: "the nft backend does not support the PROXY protocol".into(),
        };
        let err = no_proxy_error(
            &no_proxy(vec![
                cannot(),
                Rejection::Down,
                Rejection::ControlsNotAnnounced,
            ]),
            "external_port",
            "nothing was created",
        );
        assert!(
            matches!(&err, ApiError::BadRequest(m) if m.starts_with("invalid proxy_protocol: no proxy can carry this forward")
                && m.contains("backend")),
            "{err:?}"
        );
        let err = no_proxy_error(
            &no_proxy(vec![Rejection::ControlsNotAnnounced]),
            "external_port",
            "nothing was created",
        );
        assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
        let err = no_proxy_error(
            &no_proxy(vec![
                cannot(),
                Rejection::PoolFull {
                    pool: 20000..=20009,
                },
            ]),
            "external_port",
            "nothing was created",
        );
        assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
    }
}
