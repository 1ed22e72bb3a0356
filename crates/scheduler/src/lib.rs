//! Placement: which proxy carries a new forward.
//!
//! Pure functions over a snapshot of the live proxies, so that "why did it
//! land there?" is answered by a table in a test. The server filters and
//! snapshots; this crate only chooses.

use std::net::IpAddr;

/// `[scheduler] strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Each placement takes the next proxy in host order.
    #[default]
    RoundRobin,
    /// Stable by key (the instance, else the project): the same key lands on
    /// the same proxy while the set of proxies does not change.
    Hash,
    /// The proxy with the smallest share of its port pool in use.
    LeastLoaded,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round_robin" => Ok(Strategy::RoundRobin),
            "hash" => Ok(Strategy::Hash),
            "least_loaded" => Ok(Strategy::LeastLoaded),
            _ => Err("expected round_robin, hash or least_loaded".into()),
        }
    }
}

/// A live proxy as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub external_addresses: Vec<IpAddr>,
    pub forward_count: u64,
    /// Ports in its pool, per protocol.
    pub capacity: u64,
}

/// What is being placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The target, whose family the proxy should be able to listen in.
    pub target: IpAddr,
    /// Key for [`Strategy::Hash`].
    pub affinity_key: &'a str,
    /// A counter that increases with every placement, for round robin.
    pub sequence: u64,
}

/// Chooses a proxy, or `None` when no candidate can carry the forward.
///
/// Candidates with an external address of the target's family are preferred;
/// if there are none, any candidate with free ports will do (the relay can
/// forward across families).
pub fn place<'c>(
    strategy: Strategy,
    candidates: &'c [Candidate],
    request: &Request<'_>,
) -> Option<&'c Candidate> {
    let mut usable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.forward_count < c.capacity)
        .collect();
    let same_family: Vec<&Candidate> = usable
        .iter()
        .copied()
        .filter(|c| {
            c.external_addresses
                .iter()
                .any(|a| a.is_ipv4() == request.target.is_ipv4())
        })
        .collect();
    if !same_family.is_empty() {
        usable = same_family;
    }
    usable.sort_by(|a, b| a.host.cmp(&b.host));
    if usable.is_empty() {
        return None;
    }
    let n = usable.len() as u64;
    let index = match strategy {
        Strategy::RoundRobin => request.sequence % n,
        Strategy::Hash => fnv1a(request.affinity_key.as_bytes()) % n,
        Strategy::LeastLoaded => {
            return usable.into_iter().min_by(|a, b| {
                // Compare count/capacity without floats: a.count * b.cap vs b.count * a.cap.
                let left = u128::from(a.forward_count) * u128::from(b.capacity);
                let right = u128::from(b.forward_count) * u128::from(a.capacity);
                left.cmp(&right).then_with(|| a.host.cmp(&b.host))
            });
        }
    };
    usable.get(usize::try_from(index).ok()?).copied()
}

/// FNV-1a: tiny, stable across releases and platforms (unlike std's hasher),
/// which is what a placement that must not move on upgrade needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(host: &str, addresses: &[&str], count: u64, capacity: u64) -> Candidate {
        Candidate {
            host: host.into(),
            external_addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            forward_count: count,
            capacity,
        }
    }

    fn request(target: &str, key: &str, sequence: u64) -> Request<'static> {
        Request {
            target: target.parse().unwrap(),
            affinity_key: Box::leak(key.to_owned().into_boxed_str()),
            sequence,
        }
    }

    #[test]
    fn round_robin_cycles_in_host_order() {
        let proxies = [
            candidate("b", &["192.0.2.2"], 0, 10),
            candidate("a", &["192.0.2.1"], 0, 10),
        ];
        let hosts: Vec<_> = (0..4)
            .map(|i| {
                place(Strategy::RoundRobin, &proxies, &request("10.0.0.1", "p", i))
                    .unwrap()
                    .host
                    .clone()
            })
            .collect();
        assert_eq!(hosts, ["a", "b", "a", "b"]);
    }

    #[test]
    fn hash_is_stable_per_key() {
        let proxies = [
            candidate("a", &["192.0.2.1"], 0, 10),
            candidate("b", &["192.0.2.2"], 0, 10),
            candidate("c", &["192.0.2.3"], 0, 10),
        ];
        for key in ["vm-1", "vm-2", "project-x"] {
            let first = place(Strategy::Hash, &proxies, &request("10.0.0.1", key, 0)).unwrap();
            let again = place(Strategy::Hash, &proxies, &request("10.0.0.1", key, 99)).unwrap();
            assert_eq!(first, again, "{key}");
        }
    }

    #[test]
    fn least_loaded_compares_shares_of_the_pool() {
        let proxies = [
            candidate("a", &["192.0.2.1"], 5, 10),
            candidate("b", &["192.0.2.2"], 6, 100),
        ];
        assert_eq!(
            place(
                Strategy::LeastLoaded,
                &proxies,
                &request("10.0.0.1", "p", 0)
            )
            .unwrap()
            .host,
            "b"
        );
    }

    #[test]
    fn filters_full_proxies_and_prefers_the_target_family() {
        let proxies = [
            candidate("full", &["192.0.2.1"], 10, 10),
            candidate("v6", &["2001:db8::1"], 0, 10),
            candidate("v4", &["192.0.2.2"], 9, 10),
        ];
        assert_eq!(
            place(
                Strategy::LeastLoaded,
                &proxies,
                &request("10.0.0.1", "p", 0)
            )
            .unwrap()
            .host,
            "v4"
        );
        assert_eq!(
            place(
                Strategy::LeastLoaded,
                &proxies,
                &request("2001:db8::5", "p", 0)
            )
            .unwrap()
            .host,
            "v6"
        );
        assert_eq!(
            place(
                Strategy::RoundRobin,
                &proxies[..1],
                &request("10.0.0.1", "p", 0)
            ),
            None
        );
    }
}
