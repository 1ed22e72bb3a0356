//! The control loop between the store (desired state) and the agents (what
//! runs): placing new forwards, telling agents about changes, taking their
//! reports, and re-syncing them in full when they start or drift.
//!
//! The store is the truth. Every message to an agent is an optimisation of
//! the full sync that follows anyway, so a lost message delays a change but
//! never loses it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use navigator_api::v1::{ForwardChanges, NewForward};
use navigator_core::{ForwardId, ForwardStatus, PortForward, TargetPolicy};
use navigator_rpc::messages::args;
use navigator_rpc::transport::decode_args;
use navigator_rpc::{
    AgentClient, AgentState, ForwardEntry, ForwardResult, ResultStatus, Target, Transport, methods,
    topics,
};
use navigator_scheduler::{Candidate, Request};
use navigator_store::{NewForwardRow, ProxyRecord, Store, TargetChange};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ApiError;

pub struct Control {
    store: Store,
    agents: AgentClient,
    transport: Arc<dyn Transport>,
    config: Arc<Config>,
    /// Whether loopback targets are allowed (all-in-one mode).
    allow_loopback: bool,
    /// Generation of the last full sync each host acknowledged. A heartbeat
    /// with another generation (0 after an agent start) triggers a sync.
    synced: Mutex<HashMap<String, u64>>,
    /// Source of generations: starts at the wall clock so that a restarted
    /// server never reuses one an agent still holds.
    next_generation: AtomicU64,
    placements: AtomicU64,
    /// One lock per agent host, held while a message is sent to it together
    /// with the store read it is based on: a full sync built from an older
    /// snapshot must not reach the agent after a newer create, update or
    /// delete, or it would undo that change until the next sync.
    host_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Whether a proxy's last heartbeat is recent enough.
pub fn is_up(proxy: &ProxyRecord, down_after: Duration) -> bool {
    let Ok(last) = chrono::DateTime::parse_from_rfc3339(&proxy.last_heartbeat) else {
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
            synced: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(now_ms),
            placements: AtomicU64::new(0),
            host_locks: Mutex::new(HashMap::new()),
        }
    }

    fn host_lock(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.host_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(host.to_owned())
            .or_default()
            .clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Places, stores and applies a new forward for `project_id`.
    pub async fn create(&self, project_id: &str, new: NewForward) -> Result<PortForward, ApiError> {
        let proxy = self.choose_proxy(project_id, &new).await?;
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
        self.check_target(&proxy, new.internal_ip_address, new.internal_port)?;
        let row = NewForwardRow {
            project_id: project_id.to_owned(),
            description: new.description,
            protocol: new.protocol,
            external_address,
            external_port: new.external_port.unwrap_or(0),
            internal_ip_address: new.internal_ip_address,
            internal_port: new.internal_port,
            instance_id: new.instance_id,
            proxy: proxy.host.clone(),
        };
        let forward = match new.external_port {
            Some(port) if !proxy.port_range.contains(port) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid external_port: {port} is outside the port range {} of proxy {}",
                    proxy.port_range, proxy.host
                )));
            }
            Some(_) => self.store.create_forward(&row).await?,
            None => {
                self.store
                    .create_forward_allocating(&row, proxy.port_range)
                    .await?
            }
        };
        Ok(self.push(forward).await)
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
        let retarget = ip != forward.internal_ip_address || port != forward.internal_port;
        if retarget {
            let proxy = self.store.get_proxy(&forward.proxy).await?.ok_or_else(|| {
                ApiError::Conflict(format!(
                    "proxy {} of this forward is not registered",
                    forward.proxy
                ))
            })?;
            self.check_target(&proxy, ip, port)?;
        }
        let change = TargetChange {
            internal_ip_address: retarget.then_some(ip),
            internal_port: retarget.then_some(port),
            description: changes.description,
        };
        let Some(updated) = self.store.update_forward(forward.id, &change).await? else {
            return Ok(None);
        };
        if !retarget {
            return Ok(Some(updated));
        }
        Ok(Some(self.push(updated).await))
    }

    /// Deletes a forward and tells its agent.
    pub async fn delete(&self, forward: &PortForward) -> Result<bool, ApiError> {
        let lock = self.host_lock(&forward.proxy);
        let _agent = lock.lock().await;
        if !self.store.delete_forward(forward.id).await? {
            return Ok(false);
        }
        if let Err(e) = self
            .agents
            .delete_forward(&forward.proxy, forward.id.to_string())
            .await
        {
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
        let lock = self.host_lock(&forward.proxy);
        let _agent = lock.lock().await;
        if !self
            .store
            .set_status(forward.id, ForwardStatus::Error, Some(reason))
            .await?
        {
            return Ok(false);
        }
        if let Err(e) = self
            .agents
            .delete_forward(&forward.proxy, forward.id.to_string())
            .await
        {
            tracing::warn!(forward = %forward.id, proxy = %forward.proxy, error = %e, "agent not told to drop the marked forward; the next sync will remove it");
        }
        Ok(true)
    }

    /// Sends one forward to its agent and records the outcome; on an RPC
    /// failure the forward stays `PENDING` with the reason, for the next sync.
    async fn push(&self, forward: PortForward) -> PortForward {
        let lock = self.host_lock(&forward.proxy);
        let agent = lock.lock().await;
        let entry = ForwardEntry::from(&forward.spec());
        let (status, reason) = match self.agents.create_forward(&forward.proxy, entry).await {
            Ok(result) => result_status(&result),
            Err(e) => {
                tracing::warn!(forward = %forward.id, proxy = %forward.proxy, error = %e, "agent did not confirm the forward");
                (
                    ForwardStatus::Pending,
                    Some(format!("waiting for proxy {}: {e}", forward.proxy)),
                )
            }
        };
        // The lock orders messages to the agent; the status write (a commit)
        // sends none, so the next message to this agent need not wait for it.
        drop(agent);
        if let Err(e) = self
            .store
            .set_status(forward.id, status, reason.as_deref())
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

    async fn choose_proxy(
        &self,
        project_id: &str,
        new: &NewForward,
    ) -> Result<ProxyRecord, ApiError> {
        let proxies = self.store.list_proxies().await?;
        if let Some(host) = &new.proxy {
            return proxies
                .into_iter()
                .find(|p| &p.host == host)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "invalid proxy: no proxy named {host:?} is registered"
                    ))
                });
        }
        let counts: HashMap<String, u64> = self.store.forward_counts().await?.into_iter().collect();
        let live: Vec<ProxyRecord> = proxies
            .into_iter()
            .filter(|p| is_up(p, self.config.agent_down_time))
            .collect();
        let candidates: Vec<Candidate> = live
            .iter()
            .map(|p| Candidate {
                host: p.host.clone(),
                external_addresses: p.external_addresses.clone(),
                forward_count: counts.get(&p.host).copied().unwrap_or(0),
                // Both protocols draw from the pool, per address.
                capacity: u64::from(p.port_range.len()) * 2 * p.external_addresses.len() as u64,
            })
            .collect();
        let request = Request {
            target: new.internal_ip_address,
            affinity_key: new.instance_id.as_deref().unwrap_or(project_id),
            sequence: self.placements.fetch_add(1, Ordering::Relaxed),
        };
        let chosen =
            navigator_scheduler::place(self.config.scheduler_strategy, &candidates, &request)
                .ok_or_else(|| {
                    ApiError::Unavailable(
                        "no proxy agent is up with free ports; nothing was created".into(),
                    )
                })?;
        live.into_iter()
            .find(|p| p.host == chosen.host)
            .ok_or_else(|| ApiError::Internal("scheduler chose an unknown proxy".into()))
    }

    fn check_target(&self, proxy: &ProxyRecord, ip: IpAddr, port: u16) -> Result<(), ApiError> {
        let policy = TargetPolicy {
            allowed_networks: self.config.allowed_target_networks.clone(),
            allow_loopback: self.allow_loopback,
            proxy_addresses: proxy
                .external_addresses
                .iter()
                .map(|a| (*a, proxy.port_range))
                .collect(),
        };
        policy
            .check(ip, port)
            .map_err(|e| ApiError::BadRequest(format!("invalid internal_ip_address: {e}")))
    }

    /// Sends `host` its full desired set and records the per-forward results.
    pub async fn sync_host(&self, host: &str) -> Result<(), ApiError> {
        let lock = self.host_lock(host);
        let _agent = lock.lock().await;
        let started = std::time::Instant::now();
        let forwards = self.store.forwards_on_proxy(host).await?;
        let entries: Vec<ForwardEntry> = forwards
            .iter()
            .map(|f| ForwardEntry::from(&f.spec()))
            .collect();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        // An agent that is starting may not listen yet (the all-in-one agent
        // task is spawned just before the start-up sync): wait a little
        // rather than fail the start-up.
        let mut attempts = 0;
        let synced = loop {
            match self
                .agents
                .sync_forwards(host, entries.clone(), generation)
                .await
            {
                Err(navigator_rpc::RpcError::NoListener { .. }) if attempts < 40 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        };
        match synced {
            Ok(result) => {
                self.record_results(host, &result.results, Some(&forwards))
                    .await;
                self.synced
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(host.to_owned(), result.generation);
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
    /// the store are written: `known` is the host's forwards as just read
    /// (read here when `None`), so a steady agent with thousands of forwards
    /// costs one query per report instead of one statement per forward.
    async fn record_results(
        &self,
        host: &str,
        results: &[ForwardResult],
        known: Option<&[PortForward]>,
    ) {
        let read;
        let known = match known {
            Some(known) => known,
            None => match self.store.forwards_on_proxy(host).await {
                Ok(forwards) => {
                    read = forwards;
                    &read
                }
                Err(e) => {
                    tracing::warn!(%host, error = %e, "cannot read the proxy's forwards to record a report");
                    return;
                }
            },
        };
        let current: HashMap<ForwardId, (ForwardStatus, Option<&str>)> = known
            .iter()
            .map(|f| (f.id, (f.status, f.status_reason.as_deref())))
            .collect();
        for result in results {
            let Ok(id) = result.id.parse::<ForwardId>() else {
                tracing::warn!(%host, id = %result.id, "agent reported a malformed forward id");
                continue;
            };
            let (status, reason) = result_status(result);
            if current.get(&id) == Some(&(status, reason.as_deref())) {
                continue;
            }
            if let Err(e) = self.store.set_status(id, status, reason.as_deref()).await {
                tracing::warn!(forward = %id, error = %e, "cannot record the forward's status");
            }
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
        self.store
            .upsert_proxy(&state.host, &state.backend, &addresses, port_range)
            .await?;
        let known = self
            .synced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&state.host)
            .copied();
        if state.generation == 0 || known != Some(state.generation) {
            tracing::info!(host = %state.host, generation = state.generation, "agent needs a full sync");
            return self.sync_host(&state.host).await;
        }
        self.record_results(&state.host, &state.forwards, None)
            .await;
        Ok(())
    }

    /// Serves the server topic (agents' heartbeats) until `shutdown`.
    pub async fn serve_reports(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), navigator_rpc::RpcError> {
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

    /// Re-syncs every live proxy every `resync_interval`, until `shutdown`.
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
            for proxy in proxies
                .iter()
                .filter(|p| is_up(p, self.config.agent_down_time))
            {
                let _ = self.sync_host(&proxy.host).await;
            }
        }
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
