//! The proxy agent: it receives the desired forwards of its host over RPC,
//! converges its data-plane backend to them, and reports what it carries.
//!
//! The agent is stateless on purpose: after a start (or a lost message) it
//! reports generation 0, the server answers with the full desired set, and
//! [`Agent::run_batch`] makes the backend match. Nothing survives in the agent
//! that the server cannot rebuild.
//!
//! Messages that queue while one kernel transaction runs are applied to the
//! desired set in their order and converged together, in one plan and one
//! [`Backend::apply`] (see [`Agent::run_batch`]); heartbeats carry a digest of
//! the desired set and only the results that changed lately or failed, so
//! neither a change nor a heartbeat costs time in the forwards carried.

pub mod config;
pub mod fd_budget;
pub mod handover;
pub mod health;
pub mod options;
pub mod privileges;
pub mod reload;
mod service;
mod state;
pub mod vrrp;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use navigator_core::digest::bucket;
use navigator_core::{ForwardId, ForwardSpec, PortRange, plan};
use navigator_dataplane::Backend;
use navigator_rpc::messages::features;
use navigator_rpc::{AgentState, ForwardEntry, ForwardResult, ResultStatus, SyncResult};
use state::{Outcome, State};
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

/// One ordered message's change, as the batch applies it to the desired
/// state (see [`Agent::run_batch`]).
#[derive(Debug)]
pub enum Request {
    /// A full sync (`buckets: None`), or a partial one: `forwards` is the
    /// whole desired set of `buckets`. `rejected` are entries the peer sent
    /// malformed, reported back as they are.
    Sync {
        forwards: Vec<ForwardSpec>,
        rejected: Vec<ForwardResult>,
        generation: u64,
        buckets: Option<Vec<u8>>,
    },
    /// Create or update one forward.
    Upsert(ForwardSpec),
    /// Delete one forward (unknown ids are fine).
    Remove(ForwardId),
    /// A read point: the state after the batch.
    State,
}

/// The answer to one [`Request`], in the same position.
#[derive(Debug)]
pub enum Answer {
    Sync(SyncResult),
    Forward(ForwardResult),
    Removed,
    State(AgentState),
}

/// What a request of the batch asked, kept until the batch has converged to
/// build its answer.
enum Asked {
    Sync {
        generation: u64,
        forwards: Vec<ForwardSpec>,
        rejected: Vec<ForwardResult>,
    },
    Forward(ForwardSpec),
    Removed,
    State,
}

/// Which forwards a converge covers.
enum Scope {
    All,
    Some(BTreeSet<ForwardId>),
}

pub struct Agent {
    config: AgentConfig,
    backend: Arc<dyn Backend>,
    /// Behind one async lock, so that batches (and retries) run one at a
    /// time, in the order their messages arrived.
    state: Mutex<State>,
    /// Where [`Agent::shutdown`] hands the data plane over, if it does.
    handover: std::sync::Mutex<Option<HandoverSink>>,
    /// This node's address groups, reported with each heartbeat.
    groups: Option<Arc<vrrp::Groups>>,
}

/// Takes what the backend carries and the sockets it hands over, to pass
/// them on to the next process ([`handover`]).
pub type HandoverSink = Box<dyn FnOnce(Vec<ForwardSpec>, navigator_relay::Handover) + Send>;

impl Agent {
    pub fn new(config: AgentConfig, backend: Arc<dyn Backend>) -> Agent {
        Agent {
            config,
            backend,
            state: Mutex::new(State::default()),
            handover: std::sync::Mutex::new(None),
            groups: None,
        }
    }

    /// The agent of a member of address groups: its reports list them
    /// ([`features::GROUPS`]).
    pub fn with_groups(mut self, groups: Arc<vrrp::Groups>) -> Agent {
        self.groups = Some(groups);
        self
    }

    /// From now on [`Agent::shutdown`] hands the data plane over to `sink`
    /// (when the backend can: [`Backend::hand_over`]) instead of letting
    /// live connections finish and closing them.
    pub fn hand_over_on_shutdown(&self, sink: HandoverSink) {
        *self
            .handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sink);
    }

    /// Carries `forwards` with the sockets a previous process of this agent
    /// handed over, before any word from a server: the relay serves again
    /// at once, on the listening sockets that never closed. The desired set
    /// stays empty, so the first full sync removes, retargets or adds
    /// whatever changed meanwhile. Closes what no forward took. Returns how
    /// many forwards are carried.
    pub async fn adopt(
        &self,
        forwards: Vec<ForwardSpec>,
        inherited: navigator_relay::Inherited,
    ) -> usize {
        let _state = self.state.lock().await;
        if !self.backend.inherit(inherited) {
            tracing::warn!(
                backend = self.backend.name(),
                "the {} backend takes no sockets from the previous process; they are closed",
                self.backend.name()
            );
            return 0;
        }
        let report = self.backend.apply(&plan(&forwards, &[])).await;
        for failure in &report.failed {
            tracing::warn!(id = %failure.id, reason = %failure.reason,
                "a forward of the previous process cannot be carried again");
        }
        let (listeners, connections) = self.backend.close_unclaimed();
        if listeners + connections > 0 {
            tracing::warn!(
                listeners,
                connections,
                "inherited sockets no forward took are closed"
            );
        }
        forwards.len() - report.failed.len()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// How long a batch may wait for more changes under load
    /// ([`Backend::batch_linger`]).
    pub fn batch_linger(&self) -> Duration {
        self.backend.batch_linger()
    }

    /// Replaces the whole desired set (a full sync) and converges.
    pub async fn sync(&self, forwards: Vec<ForwardSpec>, generation: u64) -> Vec<ForwardResult> {
        let request = Request::Sync {
            forwards,
            rejected: Vec::new(),
            generation,
            buckets: None,
        };
        match self.run_batch(vec![request]).await.pop() {
            Some(Answer::Sync(result)) => result.results,
            _ => Vec::new(),
        }
    }

    /// Adds or changes one forward and converges that forward only: its cost
    /// does not grow with the number of forwards the agent carries.
    pub async fn upsert(&self, forward: ForwardSpec) -> ForwardResult {
        let id = forward.id;
        match self.run_batch(vec![Request::Upsert(forward)]).await.pop() {
            Some(Answer::Forward(result)) => result,
            _ => ForwardResult {
                id: id.to_string(),
                status: ResultStatus::Error,
                reason: Some("the agent lost track of the forward".into()),
                applied: None,
            },
        }
    }

    /// Removes one forward (unknown ids are fine) and converges that forward.
    pub async fn remove(&self, id: ForwardId) {
        self.run_batch(vec![Request::Remove(id)]).await;
    }

    /// Applies the changes of `requests` to the desired state in their
    /// order, converges once (one plan, one [`Backend::apply`]) over the
    /// forwards they touched (everything, if one is a full sync), and
    /// answers each request on its own. A request whose forward a later one
    /// of the batch changed or deleted is answered ERROR for its version:
    /// the backend does not carry it.
    pub async fn run_batch(&self, requests: Vec<Request>) -> Vec<Answer> {
        let started = Instant::now();
        let messages = requests.len();
        let mut state = self.state.lock().await;
        let mut touched = BTreeSet::new();
        let mut full = false;
        let mut syncs = 0usize;
        let mut asked = Vec::with_capacity(requests.len());
        for request in requests {
            asked.push(match request {
                Request::Upsert(spec) => {
                    // Converged even when this version was desired already:
                    // a create sent again retries a forward in ERROR, and
                    // one the backend carries costs a lookup.
                    state.upsert(spec.clone());
                    touched.insert(spec.id);
                    Asked::Forward(spec)
                }
                Request::Remove(id) => {
                    // Removed from the data plane even when it was not
                    // desired: it may be carried all the same.
                    state.remove(id);
                    touched.insert(id);
                    Asked::Removed
                }
                Request::State => Asked::State,
                Request::Sync {
                    forwards,
                    rejected,
                    generation,
                    buckets: None,
                } => {
                    syncs += 1;
                    full = true;
                    state.replace_all(forwards.clone());
                    state.generation = generation;
                    Asked::Sync {
                        generation,
                        forwards,
                        rejected,
                    }
                }
                Request::Sync {
                    forwards,
                    mut rejected,
                    generation: _,
                    buckets: Some(buckets),
                } => {
                    syncs += 1;
                    let generation = state.generation;
                    let mut accepted = Vec::with_capacity(forwards.len());
                    let listed: BTreeSet<u8> = buckets.iter().copied().collect();
                    for spec in forwards {
                        let of = bucket(spec.id);
                        if listed.contains(&of) {
                            accepted.push(spec);
                        } else {
                            rejected.push(ForwardResult {
                                id: spec.id.to_string(),
                                status: ResultStatus::Error,
                                reason: Some(format!(
                                    "forward {} is in digest bucket {of}, not one of the \
                                     buckets of this partial sync",
                                    spec.id
                                )),
                                applied: Some(ForwardEntry::from(&spec)),
                            });
                        }
                    }
                    for b in &listed {
                        for id in state.bucket_ids(*b) {
                            state.remove(id);
                            touched.insert(id);
                        }
                    }
                    for spec in &accepted {
                        touched.insert(spec.id);
                        state.upsert(spec.clone());
                    }
                    Asked::Sync {
                        generation,
                        forwards: accepted,
                        rejected,
                    }
                }
            });
        }
        let scope = if full {
            Scope::All
        } else {
            Scope::Some(touched)
        };
        let plan = self.converge(&mut state, scope, syncs > 0).await;
        let answers = asked
            .into_iter()
            .map(|asked| match asked {
                Asked::Forward(spec) => Answer::Forward(result_for(&state, &spec)),
                Asked::Removed => Answer::Removed,
                Asked::State => Answer::State(self.report(&state)),
                Asked::Sync {
                    generation,
                    forwards,
                    mut rejected,
                } => {
                    let mut results: Vec<ForwardResult> =
                        forwards.iter().map(|f| result_for(&state, f)).collect();
                    results.append(&mut rejected);
                    Answer::Sync(SyncResult {
                        generation,
                        results,
                    })
                }
            })
            .collect();
        tracing::debug!(
            host = %self.config.host,
            messages,
            full,
            add = plan.add,
            remove = plan.remove,
            retarget = plan.retarget,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch applied"
        );
        answers
    }

    /// Converges again without a change of desired state: retries the
    /// forwards that failed (a port may have been freed meanwhile), those
    /// only.
    pub async fn retry_failed(&self) {
        let mut state = self.state.lock().await;
        if state.errors().is_empty() {
            return;
        }
        let failed = state.errors().clone();
        self.converge(&mut state, Scope::Some(failed), false).await;
    }

    /// Forgets the generation applied, so that the agent reports 0 and the
    /// server sends the full set: after an RPC reconnect, messages sent while
    /// the broker was unreachable may have been lost.
    pub async fn request_full_sync(&self) {
        self.state.lock().await.generation = 0;
    }

    /// The agent's report of itself, listing every forward (`get_state`:
    /// the health check and tests read it).
    pub async fn state(&self) -> AgentState {
        let state = self.state.lock().await;
        self.report(&state)
    }

    /// The agent's heartbeat: the digests of its desired set, and only the
    /// results that changed in the last heartbeats or are in ERROR
    /// ([`navigator_rpc::messages::features::DIGESTS`]).
    pub async fn heartbeat_state(&self) -> AgentState {
        let mut state = self.state.lock().await;
        let results = state.heartbeat_results();
        self.report_with(&state, results)
    }

    /// The report of `state` listing every forward.
    fn report(&self, state: &State) -> AgentState {
        self.report_with(state, state.all_results())
    }

    fn report_with(&self, state: &State, forwards: Vec<ForwardResult>) -> AgentState {
        let mut report = AgentState {
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
            forwards,
            // Every backend enforces the controls or fails the forward
            // (`navigator_core::unsupported`), never ignores them.
            features: vec![features::CONTROLS.to_owned(), features::DIGESTS.to_owned()],
            digests: None,
            groups: Vec::new(),
        };
        if let Some(groups) = &self.groups {
            // Every backend a group allows (not socat, refused at start-up)
            // carries forwards on a virtual address held or not.
            report.features.push(features::GROUPS.to_owned());
            report.groups = groups.states();
        }
        report.set_digest(state.digest());
        report
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
        let sink = self
            .handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sink) = sink {
            // Under the state lock: no batch changes the data plane while
            // it is handed over.
            let _state = self.state.lock().await;
            let carried = self.backend.observe().await;
            if let Some(handover) = self.backend.hand_over().await {
                sink(carried, handover);
                return;
            }
        }
        self.backend.shutdown().await;
    }

    /// Makes the backend carry the desired forwards of `scope` and nothing
    /// else of theirs: one plan, one apply, then the outcome of each. With a
    /// scope of some forwards, the backend is asked about those only
    /// ([`Backend::observe_one`]), so the cost follows the batch, not the
    /// number of forwards carried.
    async fn converge(&self, state: &mut State, scope: Scope, loud: bool) -> PlanSize {
        let (plan, carried) = match &scope {
            Scope::All => {
                let desired: Vec<ForwardSpec> = state.specs().cloned().collect();
                let observed = self.backend.observe().await;
                (plan(&desired, &observed), None)
            }
            Scope::Some(ids) => {
                let desired: Vec<ForwardSpec> = ids
                    .iter()
                    .filter_map(|id| state.get(id).map(|e| e.spec.clone()))
                    .collect();
                let mut observed = Vec::with_capacity(ids.len());
                for id in ids {
                    observed.extend(self.backend.observe_one(*id).await);
                }
                let plan = plan(&desired, &observed);
                let carried: HashMap<ForwardId, ForwardSpec> =
                    observed.into_iter().map(|f| (f.id, f)).collect();
                (plan, Some(carried))
            }
        };
        let size = PlanSize {
            add: plan.add.len(),
            remove: plan.remove.len(),
            retarget: plan.retarget.len(),
        };
        let mut failed = HashMap::new();
        if !plan.is_empty() {
            if loud {
                tracing::info!(
                    host = %self.config.host,
                    remove = size.remove,
                    retarget = size.retarget,
                    add = size.add,
                    "applying plan"
                );
            }
            let report = self.backend.apply(&plan).await;
            for f in report.failed {
                tracing::warn!(forward = %f.id, reason = %f.reason, "forward could not be applied");
                failed.insert(f.id, f.reason);
            }
        }
        match (scope, carried) {
            (Scope::Some(ids), Some(mut carried)) => {
                // Only what the plan touched can have changed in the backend.
                let changed = plan
                    .add
                    .iter()
                    .chain(&plan.retarget)
                    .map(|f| f.id)
                    .chain(plan.remove.iter().copied());
                for id in changed {
                    match self.backend.observe_one(id).await {
                        Some(spec) => carried.insert(id, spec),
                        None => carried.remove(&id),
                    };
                }
                for id in ids {
                    let outcome = state
                        .get(&id)
                        .map(|want| outcome_of(&want.spec, failed.get(&id), carried.get(&id)));
                    if let Some(outcome) = outcome {
                        state.set_outcome(id, outcome);
                    }
                }
            }
            _ => {
                let carried: HashMap<ForwardId, ForwardSpec> = self
                    .backend
                    .observe()
                    .await
                    .into_iter()
                    .map(|f| (f.id, f))
                    .collect();
                let outcomes: Vec<(ForwardId, Outcome)> = state
                    .entries()
                    .map(|want| {
                        let id = want.spec.id;
                        (
                            id,
                            outcome_of(&want.spec, failed.get(&id), carried.get(&id)),
                        )
                    })
                    .collect();
                for (id, outcome) in outcomes {
                    state.set_outcome(id, outcome);
                }
            }
        }
        size
    }
}

/// The sizes of a converge's plan, for the batch's log line.
struct PlanSize {
    add: usize,
    remove: usize,
    retarget: usize,
}

/// The answer about version `asked` of a forward after the batch: its
/// outcome if that version is still the desired one, else an ERROR naming
/// why (a later message of the batch changed or deleted it, so the backend
/// does not carry this version; the server drops it by `applied`).
fn result_for(state: &State, asked: &ForwardSpec) -> ForwardResult {
    match state.get(&asked.id) {
        Some(entry) if entry.spec == *asked => entry.result(),
        _ => ForwardResult {
            id: asked.id.to_string(),
            status: ResultStatus::Error,
            reason: Some(
                "a later message changed or deleted the forward before this version was applied"
                    .to_owned(),
            ),
            applied: Some(ForwardEntry::from(asked)),
        },
    }
}

/// The outcome of desired forward `want`, from the apply's failure for it
/// (if any) and what the backend carries of it afterwards.
fn outcome_of(
    want: &ForwardSpec,
    failed: Option<&String>,
    carried: Option<&ForwardSpec>,
) -> Outcome {
    match (failed, carried) {
        (Some(reason), _) => Outcome::Error(reason.as_str().into()),
        (None, Some(have)) if have == want => Outcome::Active,
        (None, _) => {
            Outcome::Error("the backend does not carry the forward after applying it".into())
        }
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
