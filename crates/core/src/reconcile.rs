//! The reconcile diff: what a data plane must change to go from what it runs
//! (observed) to what the control plane wants (desired).
//!
//! Agents call [`plan`] on every sync and hand the result to their backend, so
//! a full sync after a restart and a single create go through the same path.

use std::collections::BTreeMap;

use crate::{ForwardId, ForwardSpec};

/// Changes to make, in the order they must be applied: removals first (they may
/// free a port that an addition needs), then retargets, then additions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub remove: Vec<ForwardId>,
    /// Same listen socket and protocol, new target or new controls: backends
    /// switch these in place without closing the listener. A change of
    /// controls alone keeps established connections (their target did not
    /// change); compare with what is carried to tell the two apart.
    pub retarget: Vec<ForwardSpec>,
    pub add: Vec<ForwardSpec>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.retarget.is_empty() && self.add.is_empty()
    }
}

/// Computes the plan that turns `observed` into `desired`.
///
/// A forward whose listen socket, number of ports or protocol changed is
/// removed and added again, since its listeners (or kernel rule keys) change. The output is sorted
/// by id so that the same inputs always give the same plan.
pub fn plan(desired: &[ForwardSpec], observed: &[ForwardSpec]) -> Plan {
    let desired: BTreeMap<ForwardId, &ForwardSpec> = desired.iter().map(|f| (f.id, f)).collect();
    let observed: BTreeMap<ForwardId, &ForwardSpec> = observed.iter().map(|f| (f.id, f)).collect();
    let mut plan = Plan::default();
    for (id, have) in &observed {
        match desired.get(id) {
            None => plan.remove.push(*id),
            Some(want)
                if want.listen != have.listen
                    || want.ports != have.ports
                    || want.protocol != have.protocol =>
            {
                plan.remove.push(*id);
                plan.add.push((*want).clone());
            }
            Some(want)
                if want.target != have.target
                    || want.one_target_port != have.one_target_port
                    || want.controls != have.controls =>
            {
                plan.retarget.push((*want).clone())
            }
            Some(_) => {}
        }
    }
    for (id, want) in &desired {
        if !observed.contains_key(id) {
            plan.add.push((*want).clone());
        }
    }
    plan.add.sort_by_key(|f| f.id);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Protocol;

    fn spec(n: u128, protocol: Protocol, listen: &str, target: &str) -> ForwardSpec {
        ForwardSpec::single(
            ForwardId(uuid::Uuid::from_u128(n)),
            protocol,
            listen.parse().unwrap(),
            target.parse().unwrap(),
        )
    }

    #[test]
    fn empty_inputs_give_empty_plan() {
        assert!(plan(&[], &[]).is_empty());
    }

    #[test]
    fn classifies_every_kind_of_change() {
        use Protocol::*;
        let unchanged = spec(1, Tcp, "127.0.0.1:20000", "10.0.0.1:22");
        let retargeted_old = spec(2, Tcp, "127.0.0.1:20001", "10.0.0.1:80");
        let retargeted_new = spec(2, Tcp, "127.0.0.1:20001", "10.0.0.2:80");
        let moved_old = spec(3, Udp, "127.0.0.1:20002", "10.0.0.1:53");
        let moved_new = spec(3, Udp, "127.0.0.1:20003", "10.0.0.1:53");
        let reproto_old = spec(4, Tcp, "127.0.0.1:20004", "10.0.0.1:53");
        let reproto_new = spec(4, Udp, "127.0.0.1:20004", "10.0.0.1:53");
        let gone = spec(5, Tcp, "127.0.0.1:20005", "10.0.0.1:22");
        let new = spec(6, Udp, "[::1]:20006", "[2001:db8::1]:53");

        let got = plan(
            &[
                unchanged.clone(),
                retargeted_new.clone(),
                moved_new.clone(),
                reproto_new.clone(),
                new.clone(),
            ],
            &[
                unchanged,
                retargeted_old,
                moved_old.clone(),
                reproto_old.clone(),
                gone.clone(),
            ],
        );
        assert_eq!(
            got,
            Plan {
                remove: vec![moved_old.id, reproto_old.id, gone.id],
                retarget: vec![retargeted_new],
                add: vec![moved_new, reproto_new, new],
            }
        );
    }

    #[test]
    fn a_range_that_grows_is_re_added_and_one_that_fans_in_is_retargeted() {
        let old = spec(1, Protocol::Tcp, "127.0.0.1:9000", "10.0.0.1:8000");
        let old = ForwardSpec { ports: 3, ..old };
        let grown = ForwardSpec {
            ports: 4,
            ..old.clone()
        };
        let fanned = ForwardSpec {
            one_target_port: true,
            ..old.clone()
        };
        assert_eq!(
            plan(&[grown], std::slice::from_ref(&old)).remove,
            vec![old.id]
        );
        assert_eq!(
            plan(std::slice::from_ref(&fanned), &[old]).retarget,
            vec![fanned]
        );
    }

    #[test]
    fn plan_is_idempotent_once_applied() {
        let desired = [spec(1, Protocol::Tcp, "127.0.0.1:1", "10.0.0.1:2")];
        assert!(plan(&desired, &desired).is_empty());
    }
}
