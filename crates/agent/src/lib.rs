//! The proxy agent: it receives the desired forwards of its host over RPC,
//! converges its data-plane backend to them, and reports what it carries.
//!
//! The agent is stateless on purpose: after a start (or a lost message) it
//! reports generation 0, the server answers with the full desired set, and
//! [`Agent::reconcile`] makes the backend match. Nothing survives in the agent
//! that the server cannot rebuild.

pub mod config;
pub mod fd_budget;
pub mod health;
pub mod options;
pub mod privileges;
pub mod reload;
mod service;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use navigator_core::{ForwardId, ForwardSpec, PortRange, plan};
use navigator_dataplane::Backend;
use navigator_rpc::{AgentState, ForwardEntry, ForwardResult, ResultStatus};
use tokio::sync::Mutex;

pub use service::run;

/// What an agent is and how often it reports.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The host name the server addresses this agent by.
    pub host: String,
    /// Addresses on this host that forwards may listen on.
    pub external_addresses: Vec<IpAddr>,
    /// Pool for automatically allocated external ports.
    pub port_range: PortRange,
    /// Interval between heartbeats (`report_state` casts).
    pub report_interval: Duration,
}

/// The agent's mutable state, behind one async lock so that reconciles run
/// one at a time, in the order their messages arrived.
struct State {
    desired: BTreeMap<ForwardId, ForwardSpec>,
    results: BTreeMap<ForwardId, ForwardResult>,
    generation: u64,
}

pub struct Agent {
    config: AgentConfig,
    backend: Arc<dyn Backend>,
    state: Mutex<State>,
}

impl Agent {
    pub fn new(config: AgentConfig, backend: Arc<dyn Backend>) -> Agent {
        Agent {
            config,
            backend,
            state: Mutex::new(State {
                desired: BTreeMap::new(),
                results: BTreeMap::new(),
                generation: 0,
            }),
        }
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Replaces the whole desired set (a full sync) and converges.
    pub async fn sync(&self, forwards: Vec<ForwardSpec>, generation: u64) -> Vec<ForwardResult> {
        let mut state = self.state.lock().await;
        state.desired = forwards.into_iter().map(|f| (f.id, f)).collect();
        state.generation = generation;
        self.reconcile(&mut state).await;
        state.results.values().cloned().collect()
    }

    /// Adds or changes one forward and converges that forward only: its cost
    /// does not grow with the number of forwards the agent carries (drift of
    /// the others is the periodic full sync's and `retry_failed`'s job).
    pub async fn upsert(&self, forward: ForwardSpec) -> ForwardResult {
        let mut state = self.state.lock().await;
        let id = forward.id;
        state.desired.insert(id, forward);
        self.reconcile_one(&mut state, id).await;
        state
            .results
            .get(&id)
            .cloned()
            .unwrap_or_else(|| ForwardResult {
                id: id.to_string(),
                status: ResultStatus::Error,
                reason: Some("the agent lost track of the forward".into()),
                applied: state.desired.get(&id).map(ForwardEntry::from),
            })
    }

    /// Removes one forward (unknown ids are fine) and converges that forward.
    pub async fn remove(&self, id: ForwardId) {
        let mut state = self.state.lock().await;
        state.desired.remove(&id);
        self.reconcile_one(&mut state, id).await;
    }

    /// Converges again without a change of desired state: retries forwards
    /// that failed (a port may have been freed meanwhile).
    pub async fn retry_failed(&self) {
        let mut state = self.state.lock().await;
        if state
            .results
            .values()
            .any(|r| r.status == ResultStatus::Error)
        {
            self.reconcile(&mut state).await;
        }
    }

    /// Forgets the generation applied, so that the agent reports 0 and the
    /// server sends the full set: after an RPC reconnect, messages sent while
    /// the broker was unreachable may have been lost.
    pub async fn request_full_sync(&self) {
        self.state.lock().await.generation = 0;
    }

    /// The agent's report of itself.
    pub async fn state(&self) -> AgentState {
        let state = self.state.lock().await;
        AgentState {
            host: self.config.host.clone(),
            backend: self.backend.name().to_owned(),
            external_addresses: self
                .config
                .external_addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            port_range: self.config.port_range.to_string(),
            generation: state.generation,
            forwards: state.results.values().cloned().collect(),
            // Every backend enforces the controls or fails the forward
            // (`navigator_core::unsupported`), never ignores them.
            features: vec![navigator_rpc::messages::features::CONTROLS.to_owned()],
            digests: None,
        }
    }

    /// What the backend counted for `ids`; forwards it does not count are
    /// absent, and a backend that counts nothing says why in `unavailable`.
    /// Reads counters only, so it does not take the reconcile lock.
    pub async fn usage(&self, ids: &[ForwardId]) -> navigator_rpc::UsageReply {
        match self.backend.usage(ids).await {
            Ok(usage) => navigator_rpc::UsageReply {
                usage: usage
                    .into_iter()
                    .map(|(id, usage)| (id.to_string(), usage.into()))
                    .collect(),
                unavailable: None,
            },
            Err(reason) => navigator_rpc::UsageReply {
                usage: Default::default(),
                unavailable: Some(reason),
            },
        }
    }

    pub async fn shutdown(&self) {
        self.backend.shutdown().await;
    }

    async fn reconcile(&self, state: &mut State) {
        let desired: Vec<ForwardSpec> = state.desired.values().cloned().collect();
        let observed = self.backend.observe().await;
        let plan = plan(&desired, &observed);
        if !plan.is_empty() {
            tracing::info!(
                host = %self.config.host,
                remove = plan.remove.len(),
                retarget = plan.retarget.len(),
                add = plan.add.len(),
                "applying plan"
            );
        }
        let report = self.backend.apply(&plan).await;
        let failed: BTreeMap<ForwardId, String> = report
            .failed
            .into_iter()
            .map(|f| (f.id, f.reason))
            .collect();
        for (id, reason) in &failed {
            tracing::warn!(forward = %id, %reason, "forward could not be applied");
        }
        let carried: BTreeMap<ForwardId, ForwardSpec> = self
            .backend
            .observe()
            .await
            .into_iter()
            .map(|f| (f.id, f))
            .collect();
        state.results = state
            .desired
            .values()
            .map(|want| {
                let result = result_of(want, failed.get(&want.id), carried.get(&want.id));
                (want.id, result)
            })
            .collect();
    }

    /// [`Agent::reconcile`] restricted to forward `id`: the plan, the apply
    /// and the observation cover that forward alone.
    async fn reconcile_one(&self, state: &mut State, id: ForwardId) {
        let desired: Vec<ForwardSpec> = state.desired.get(&id).cloned().into_iter().collect();
        let observed: Vec<ForwardSpec> = self.backend.observe_one(id).await.into_iter().collect();
        let plan = plan(&desired, &observed);
        let mut failed = None;
        let mut carried = observed.first().cloned();
        if !plan.is_empty() {
            tracing::debug!(
                host = %self.config.host,
                forward = %id,
                remove = plan.remove.len(),
                retarget = plan.retarget.len(),
                add = plan.add.len(),
                "applying plan"
            );
            let report = self.backend.apply(&plan).await;
            failed = report
                .failed
                .into_iter()
                .find(|f| f.id == id)
                .map(|f| f.reason);
            if let Some(reason) = &failed {
                tracing::warn!(forward = %id, %reason, "forward could not be applied");
            }
            carried = self.backend.observe_one(id).await;
        }
        match desired.first() {
            Some(want) => {
                let result = result_of(want, failed.as_ref(), carried.as_ref());
                state.results.insert(id, result);
            }
            None => {
                state.results.remove(&id);
            }
        }
    }
}

/// The report of desired forward `want`, from the apply's failure for it (if
/// any) and what the backend carries of it afterwards.
fn result_of(
    want: &ForwardSpec,
    failed: Option<&String>,
    carried: Option<&ForwardSpec>,
) -> ForwardResult {
    let (status, reason) = match (failed, carried) {
        (Some(reason), _) => (ResultStatus::Error, Some(reason.clone())),
        (None, Some(have)) if have == want => (ResultStatus::Active, None),
        (None, _) => (
            ResultStatus::Error,
            Some("the backend does not carry the forward after applying it".to_owned()),
        ),
    };
    ForwardResult {
        id: want.id.to_string(),
        status,
        reason,
        applied: Some(ForwardEntry::from(want)),
    }
}

/// Converts RPC entries, reporting the ones a peer sent malformed.
fn specs_from_entries(entries: &[ForwardEntry]) -> (Vec<ForwardSpec>, Vec<ForwardResult>) {
    let mut specs = Vec::new();
    let mut rejected = Vec::new();
    for entry in entries {
        match entry.to_spec() {
            Ok(spec) => specs.push(spec),
            Err(reason) => rejected.push(ForwardResult {
                id: entry.id.clone(),
                status: ResultStatus::Error,
                reason: Some(reason),
                applied: Some(entry.clone()),
            }),
        }
    }
    (specs, rejected)
}
