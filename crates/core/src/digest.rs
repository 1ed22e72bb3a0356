//! Summaries of a set of forwards that the server and an agent can compare
//! without listing the set: the heartbeat's drift check costs the same at ten
//! forwards and at a million.
//!
//! The set is split into [`BUCKETS`] buckets by the first byte of each
//! forward's id (the first two hex digits of its text form, so that the store
//! reads one bucket as a range of ids). Each bucket is summarised as its
//! number of forwards and two sums, modulo 2³², of the two 32-bit halves of
//! each forward's [`forward_hash`]. Sums, not a hash of the sorted list, so
//! that adding or removing one forward updates the summary in O(1) on both
//! sides: the agent in memory, the store with one `UPDATE` of integers that
//! every SQL database can do without overflowing a 64-bit column.
//!
//! **Frozen:** agents and servers of different releases compare these values,
//! so the byte encoding of [`forward_hash`] and the bucket function never
//! change; a test pins known values.

use std::net::{IpAddr, SocketAddr};

use crate::{ForwardId, ForwardSpec, Protocol, ProxyProtocol};

/// Buckets per set.
pub const BUCKETS: usize = 256;

/// The bucket of forward `id`: the first byte of its UUID.
pub fn bucket(id: ForwardId) -> u8 {
    id.0.as_bytes()[0]
}

/// The first and last id text of `bucket`, for a range query over ids in
/// their canonical (lower-case, hyphenated) form: every id of the bucket
/// sorts between them by code point, and no other id does.
pub fn bucket_id_range(bucket: u8) -> (String, String) {
    let prefix = format!("{bucket:02x}");
    // '~' sorts after every hex digit and '-'.
    (prefix.clone(), format!("{prefix}~"))
}

/// A stable 64-bit hash of everything about a forward that reaches the data
/// plane (its id, protocol, listening and target addresses and ports, range
/// size and controls), so that a forward retargeted on one side and not the
/// other changes the summary. The description, status and project do not
/// count: they never reach the agent.
pub fn forward_hash(spec: &ForwardSpec) -> u64 {
    let mut h = Fnv::default();
    h.bytes(spec.id.0.as_bytes());
    h.byte(match spec.protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    });
    h.socket(spec.listen);
    h.socket(spec.target);
    h.bytes(&spec.ports.to_be_bytes());
    h.byte(u8::from(spec.one_target_port));
    let controls = &spec.controls;
    h.bytes(&(controls.allowed_cidrs.len() as u32).to_be_bytes());
    for net in controls.allowed_cidrs.iter() {
        h.ip(net.network());
        h.byte(net.prefix_len());
    }
    match controls.max_connections {
        None => h.byte(0),
        Some(n) => {
            h.byte(1);
            h.bytes(&n.to_be_bytes());
        }
    }
    h.byte(match controls.proxy_protocol {
        ProxyProtocol::None => 0,
        ProxyProtocol::V1 => 1,
        ProxyProtocol::V2 => 2,
    });
    splitmix(h.0)
}

/// The summary of one bucket: how many forwards, and the sums modulo 2³² of
/// the low and high halves of their hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketDigest {
    pub forwards: u64,
    pub low: u32,
    pub high: u32,
}

impl BucketDigest {
    /// Counts a forward of hash `hash` in.
    pub fn add(&mut self, hash: u64) {
        self.forwards = self.forwards.wrapping_add(1);
        self.low = self.low.wrapping_add(hash as u32);
        self.high = self.high.wrapping_add((hash >> 32) as u32);
    }

    /// Counts a forward of hash `hash` out.
    pub fn remove(&mut self, hash: u64) {
        self.forwards = self.forwards.wrapping_sub(1);
        self.low = self.low.wrapping_sub(hash as u32);
        self.high = self.high.wrapping_sub((hash >> 32) as u32);
    }

    /// Counts every forward of `other` in: the digest of the union of two
    /// disjoint sets is the sum of theirs (an agent that carries its own
    /// forwards and its address groups' sums their digests).
    pub fn merge(&mut self, other: &BucketDigest) {
        self.forwards = self.forwards.wrapping_add(other.forwards);
        self.low = self.low.wrapping_add(other.low);
        self.high = self.high.wrapping_add(other.high);
    }

    /// The two sums as one number, for the wire: high half first.
    pub fn sum(&self) -> u64 {
        (u64::from(self.high) << 32) | u64::from(self.low)
    }

    /// The digest of `forwards` forwards whose sums are [`BucketDigest::sum`].
    pub fn from_parts(forwards: u64, sum: u64) -> BucketDigest {
        BucketDigest {
            forwards,
            low: sum as u32,
            high: (sum >> 32) as u32,
        }
    }
}

/// The summary of a whole set: one [`BucketDigest`] per bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDigest {
    buckets: Box<[BucketDigest; BUCKETS]>,
}

impl Default for SetDigest {
    fn default() -> SetDigest {
        SetDigest {
            buckets: Box::new([BucketDigest::default(); BUCKETS]),
        }
    }
}

impl SetDigest {
    /// The digest of `specs`.
    pub fn of<'a>(specs: impl IntoIterator<Item = &'a ForwardSpec>) -> SetDigest {
        let mut digest = SetDigest::default();
        for spec in specs {
            digest.add(spec);
        }
        digest
    }

    /// Counts `spec` in.
    pub fn add(&mut self, spec: &ForwardSpec) {
        self.buckets[usize::from(bucket(spec.id))].add(forward_hash(spec));
    }

    /// Counts `spec` out (it must have been counted in).
    pub fn remove(&mut self, spec: &ForwardSpec) {
        self.buckets[usize::from(bucket(spec.id))].remove(forward_hash(spec));
    }

    /// Empties bucket `bucket` (before it is filled again, in a partial sync).
    pub fn clear_bucket(&mut self, bucket: u8) {
        self.buckets[usize::from(bucket)] = BucketDigest::default();
    }

    pub fn bucket(&self, bucket: u8) -> BucketDigest {
        self.buckets[usize::from(bucket)]
    }

    pub fn set_bucket(&mut self, bucket: u8, digest: BucketDigest) {
        self.buckets[usize::from(bucket)] = digest;
    }

    pub fn buckets(&self) -> &[BucketDigest; BUCKETS] {
        &self.buckets
    }

    /// Forwards counted in all buckets.
    pub fn forwards(&self) -> u64 {
        self.buckets.iter().map(|b| b.forwards).sum()
    }

    /// The buckets where `self` and `other` differ, in order.
    pub fn differing(&self, other: &SetDigest) -> Vec<u8> {
        (0..=u8::MAX)
            .filter(|b| self.bucket(*b) != other.bucket(*b))
            .collect()
    }
}

/// 64-bit FNV-1a: simple, stable across platforms and releases.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.byte(*b);
        }
    }

    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.byte(4);
                self.bytes(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.byte(6);
                self.bytes(&v6.octets());
            }
        }
    }

    fn socket(&mut self, addr: SocketAddr) {
        self.ip(addr.ip());
        self.bytes(&addr.port().to_be_bytes());
    }
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word,
/// so that both 32-bit halves of the sums change with every field.
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Controls;

    fn spec(n: u128) -> ForwardSpec {
        ForwardSpec::single(
            ForwardId(uuid::Uuid::from_u128(n)),
            Protocol::Tcp,
            "192.0.2.1:20000".parse().unwrap(),
            "10.0.0.5:22".parse().unwrap(),
        )
    }

    #[test]
    fn hash_is_frozen() {
        // Agents and servers of different releases compare these: a change
        // here breaks every mixed deployment's drift check.
        assert_eq!(forward_hash(&spec(1)), 0x0b9b_d42a_0e0d_95d3);
        let mut with_controls = spec(0xab << 120);
        with_controls.controls = Controls::new(
            vec![
                "2001:db8::/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            Some(7),
            ProxyProtocol::V2,
        );
        assert_eq!(forward_hash(&with_controls), 0xab76_f732_ca24_ca9d);
        assert_eq!(bucket(with_controls.id), 0xab);
    }

    #[test]
    fn every_data_plane_field_changes_the_hash() {
        let base = spec(1);
        let changed = [
            ForwardSpec {
                protocol: Protocol::Udp,
                ..base.clone()
            },
            ForwardSpec {
                listen: "192.0.2.1:20001".parse().unwrap(),
                ..base.clone()
            },
            ForwardSpec {
                target: "10.0.0.6:22".parse().unwrap(),
                ..base.clone()
            },
            ForwardSpec {
                ports: 2,
                ..base.clone()
            },
            ForwardSpec {
                one_target_port: true,
                ..base.clone()
            },
            ForwardSpec {
                controls: Controls::new(vec![], Some(1), ProxyProtocol::None),
                ..base.clone()
            },
            ForwardSpec {
                controls: Controls::new(vec![], None, ProxyProtocol::V1),
                ..base.clone()
            },
            ForwardSpec {
                controls: Controls::new(
                    vec!["10.0.0.0/8".parse().unwrap()],
                    None,
                    ProxyProtocol::None,
                ),
                ..base.clone()
            },
            spec(2),
        ];
        for other in &changed {
            assert_ne!(forward_hash(other), forward_hash(&base), "{other:?}");
        }
    }

    #[test]
    fn sums_do_not_depend_on_order_and_removal_undoes_addition() {
        let specs: Vec<ForwardSpec> = (0..1000u128).map(|n| spec((n * 7919) << 100)).collect();
        let forward = SetDigest::of(&specs);
        let backward = SetDigest::of(specs.iter().rev());
        assert_eq!(forward, backward);
        assert_eq!(forward.forwards(), 1000);
        let mut digest = forward.clone();
        let extra = spec(12345);
        digest.add(&extra);
        assert_eq!(digest.differing(&forward), vec![bucket(extra.id)]);
        digest.remove(&extra);
        assert_eq!(digest, forward);
        assert!(
            SetDigest::default()
                .differing(&SetDigest::default())
                .is_empty()
        );
    }

    #[test]
    fn parts_round_trip_and_bucket_ranges_hold_their_ids() {
        let mut b = BucketDigest::default();
        b.add(u64::MAX);
        b.add(3);
        assert_eq!(BucketDigest::from_parts(b.forwards, b.sum()), b);
        let id = ForwardId(uuid::Uuid::from_u128((0xff << 120) | 5));
        let (first, last) = bucket_id_range(bucket(id));
        let text = id.to_string();
        assert!(first.as_str() <= text.as_str() && text.as_str() < last.as_str());
        let (_, before) = bucket_id_range(0xfe);
        assert!(before.as_str() < text.as_str());
    }
}
