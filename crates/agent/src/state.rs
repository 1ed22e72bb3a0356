//! What the agent wants and what became of it, kept small: one map entry per
//! forward (its spec and a compact outcome), the digest of the desired set
//! (updated in O(1) per change), and the short lists a heartbeat needs (the
//! forwards in ERROR and those whose result changed lately), so that neither
//! a change nor a heartbeat costs time in the number of forwards carried.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use navigator_core::digest::{BUCKETS, SetDigest};
use navigator_core::{ForwardId, ForwardSpec};
use navigator_rpc::messages::features::{MAX_REPORTED_RESULTS, RECENT_REPORTS};
use navigator_rpc::{ForwardEntry, ForwardResult, ResultStatus};

/// What became of a desired forward. A reason is kept for failures only: an
/// ACTIVE forward costs nothing beyond its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Desired, not converged yet (only between a change and the converge
    /// that follows it in the same batch).
    Pending,
    Active,
    Error(Box<str>),
}

/// One desired forward.
#[derive(Debug)]
pub(crate) struct Entry {
    pub spec: ForwardSpec,
    pub outcome: Outcome,
}

impl Entry {
    /// The forward's result as the RPC reports it.
    pub fn result(&self) -> ForwardResult {
        let (status, reason) = match &self.outcome {
            Outcome::Active => (ResultStatus::Active, None),
            Outcome::Error(reason) => (ResultStatus::Error, Some(reason.to_string())),
            Outcome::Pending => (
                ResultStatus::Error,
                Some("the agent has not applied the forward yet".to_owned()),
            ),
        };
        ForwardResult {
            id: self.spec.id.to_string(),
            status,
            reason,
            applied: Some(ForwardEntry::from(&self.spec)),
        }
    }
}

/// The agent's desired set and its outcomes.
#[derive(Default)]
pub(crate) struct State {
    /// Ordered by id, so that a digest bucket (the first byte of the id) is
    /// a range of it.
    forwards: BTreeMap<ForwardId, Entry>,
    digest: SetDigest,
    pub generation: u64,
    /// Forwards whose outcome is an error: what `retry_failed` retries and
    /// every heartbeat repeats.
    errors: BTreeSet<ForwardId>,
    /// Forwards whose result changed, with the number of heartbeats sent
    /// when it did: a heartbeat repeats them for [`RECENT_REPORTS`]
    /// heartbeats, then they are forgotten.
    changed: HashMap<ForwardId, u64>,
    /// Heartbeats built so far.
    heartbeats: u64,
}

impl State {
    pub fn get(&self, id: &ForwardId) -> Option<&Entry> {
        self.forwards.get(id)
    }

    pub fn digest(&self) -> &SetDigest {
        &self.digest
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.forwards.values()
    }

    pub fn specs(&self) -> impl Iterator<Item = &ForwardSpec> {
        self.forwards.values().map(|e| &e.spec)
    }

    pub fn errors(&self) -> &BTreeSet<ForwardId> {
        &self.errors
    }

    /// Makes `spec` desired. When that very version already was, its
    /// outcome stands until the next converge.
    pub fn upsert(&mut self, spec: ForwardSpec) {
        let id = spec.id;
        if let Some(old) = self.forwards.get_mut(&id) {
            if old.spec != spec {
                self.digest.remove(&old.spec);
                self.digest.add(&spec);
                old.spec = spec;
                old.outcome = Outcome::Pending;
            }
            return;
        }
        self.digest.add(&spec);
        self.forwards.insert(
            id,
            Entry {
                spec,
                outcome: Outcome::Pending,
            },
        );
    }

    /// Makes `id` undesired. Returns whether it was desired.
    pub fn remove(&mut self, id: ForwardId) -> bool {
        let Some(old) = self.forwards.remove(&id) else {
            return false;
        };
        self.digest.remove(&old.spec);
        self.errors.remove(&id);
        self.changed.remove(&id);
        true
    }

    /// Replaces the whole desired set; forwards whose spec did not change
    /// keep their outcome (so that only real changes are reported).
    pub fn replace_all(&mut self, specs: Vec<ForwardSpec>) {
        let mut old = std::mem::take(&mut self.forwards);
        let mut forwards = BTreeMap::new();
        for spec in specs {
            let outcome = match old.remove(&spec.id) {
                Some(entry) if entry.spec == spec => entry.outcome,
                _ => Outcome::Pending,
            };
            forwards.insert(spec.id, Entry { spec, outcome });
        }
        for id in old.keys() {
            self.errors.remove(id);
            self.changed.remove(id);
        }
        self.forwards = forwards;
        self.digest = SetDigest::of(self.specs());
    }

    /// The ids desired in `bucket`.
    pub fn bucket_ids(&self, bucket: u8) -> Vec<ForwardId> {
        let Ok(start) =
            format!("{bucket:02x}000000-0000-0000-0000-000000000000").parse::<ForwardId>()
        else {
            return Vec::new();
        };
        self.forwards
            .range(start..)
            .map(|(id, _)| *id)
            .take_while(|id| navigator_core::digest::bucket(*id) == bucket)
            .collect()
    }

    /// Records the outcome of forward `id` after a converge, noting a change
    /// of result for the heartbeats.
    pub fn set_outcome(&mut self, id: ForwardId, outcome: Outcome) {
        let Some(entry) = self.forwards.get_mut(&id) else {
            return;
        };
        if entry.outcome == outcome {
            return;
        }
        match outcome {
            Outcome::Active => self.errors.remove(&id),
            _ => self.errors.insert(id),
        };
        entry.outcome = outcome;
        self.changed.insert(id, self.heartbeats);
    }

    /// Every desired forward's result (`get_state`, full syncs).
    pub fn all_results(&self) -> Vec<ForwardResult> {
        self.forwards.values().map(Entry::result).collect()
    }

    /// The results a heartbeat carries: those that changed in the last
    /// [`RECENT_REPORTS`] heartbeats, then those in ERROR, at most
    /// [`MAX_REPORTED_RESULTS`]. Counts one more heartbeat.
    pub fn heartbeat_results(&mut self) -> Vec<ForwardResult> {
        let mut listed = BTreeSet::new();
        let mut results = Vec::new();
        // Oldest changes first: they are about to be forgotten.
        let mut changed: Vec<(u64, ForwardId)> =
            self.changed.iter().map(|(id, at)| (*at, *id)).collect();
        changed.sort_unstable();
        for (_, id) in changed {
            if results.len() >= MAX_REPORTED_RESULTS {
                break;
            }
            if let Some(entry) = self.forwards.get(&id) {
                listed.insert(id);
                results.push(entry.result());
            }
        }
        for id in &self.errors {
            if results.len() >= MAX_REPORTED_RESULTS {
                break;
            }
            if !listed.contains(id)
                && let Some(entry) = self.forwards.get(id)
            {
                results.push(entry.result());
            }
        }
        self.heartbeats += 1;
        let heartbeats = self.heartbeats;
        self.changed
            .retain(|_, at| *at + u64::from(RECENT_REPORTS) > heartbeats);
        results
    }
}

// The digest's buckets are the first byte of an id: `bucket_ids` relies on it.
const _: () = assert!(BUCKETS == 256);

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bucket: u8, n: u32, target_port: u16) -> ForwardSpec {
        ForwardSpec {
            id: format!("{bucket:02x}{n:06x}-0000-4000-8000-000000000000")
                .parse()
                .unwrap(),
            protocol: navigator_core::Protocol::Tcp,
            listen: "127.0.0.1:20000".parse().unwrap(),
            target: format!("10.0.0.5:{target_port}").parse().unwrap(),
            ports: 1,
            one_target_port: false,
            controls: Default::default(),
        }
    }

    #[test]
    fn the_digest_follows_every_change() {
        let mut state = State::default();
        let (a, b, c) = (spec(0x00, 1, 22), spec(0xff, 1, 22), spec(0xff, 2, 22));
        state.replace_all(vec![a.clone(), b.clone()]);
        assert_eq!(*state.digest(), SetDigest::of([&a, &b]));
        state.upsert(c.clone());
        let b2 = spec(0xff, 1, 23);
        state.upsert(b2.clone());
        assert_eq!(*state.digest(), SetDigest::of([&a, &b2, &c]));
        assert!(state.remove(a.id));
        assert!(!state.remove(a.id));
        assert_eq!(*state.digest(), SetDigest::of([&b2, &c]));
        // The first and last buckets are ranges of the map, no wider.
        assert_eq!(state.bucket_ids(0xff), vec![b2.id, c.id]);
        assert!(state.bucket_ids(0x00).is_empty());
        state.upsert(a.clone());
        assert_eq!(state.bucket_ids(0x00), vec![a.id]);
        assert!(state.bucket_ids(0x01).is_empty());
    }

    #[test]
    fn outcomes_are_kept_for_unchanged_specs_and_errors_are_tracked() {
        let mut state = State::default();
        let (a, b) = (spec(0x10, 1, 22), spec(0x20, 1, 22));
        state.replace_all(vec![a.clone(), b.clone()]);
        state.set_outcome(a.id, Outcome::Active);
        state.set_outcome(b.id, Outcome::Error("busy".into()));
        assert_eq!(
            state.errors().iter().copied().collect::<Vec<_>>(),
            vec![b.id]
        );
        // A full sync that changes b only: a stays ACTIVE, b is pending.
        let b2 = spec(0x20, 1, 23);
        state.replace_all(vec![a.clone(), b2.clone()]);
        assert_eq!(state.get(&a.id).unwrap().outcome, Outcome::Active);
        assert_eq!(state.get(&b.id).unwrap().outcome, Outcome::Pending);
        // Dropped by a full sync: no longer an error to retry.
        state.replace_all(vec![a.clone()]);
        assert!(state.errors().is_empty());
        assert!(state.get(&b.id).is_none());
    }
}
