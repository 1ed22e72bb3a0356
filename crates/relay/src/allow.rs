//! Source allowlists: which client addresses a listener serves.
//!
//! An [`Allowlist`] is built once from networks and then only read, on every
//! accepted connection and on every datagram that would open a UDP session.
//! It stores each family's networks as sorted, merged, disjoint address
//! ranges, so a lookup is one binary search: O(log n), about 14 comparisons
//! for 10,000 networks, with no allocation and no lock.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Client networks allowed to connect; [`Allowlist::everyone`] (the default)
/// allows all. Cloning shares the lists.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Allowlist(Option<Arc<Ranges>>);

#[derive(Default, PartialEq, Eq)]
struct Ranges {
    /// Inclusive `(first, last)` ranges, sorted, disjoint and not adjacent.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    /// Networks given (before merging), for logs and `Debug`.
    networks: usize,
}

/// A network of [`Allowlist::new`] whose prefix is longer than its family's
/// addresses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{address}/{prefix} is not a network: the prefix is longer than the address")]
pub struct InvalidNetwork {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Allowlist {
    /// Allows every client.
    pub fn everyone() -> Allowlist {
        Allowlist(None)
    }

    /// Allows clients in any of `networks` (address, prefix length); host bits
    /// of an address are ignored. An empty list allows nobody — callers that
    /// mean "everyone" say [`Allowlist::everyone`].
    ///
    /// IPv4 clients of a dual-stack IPv6 listener (IPv4-mapped addresses)
    /// are matched against the IPv4 networks, and only against them.
    pub fn new(
        networks: impl IntoIterator<Item = (IpAddr, u8)>,
    ) -> Result<Allowlist, InvalidNetwork> {
        let mut ranges = Ranges::default();
        for (address, prefix) in networks {
            let invalid = InvalidNetwork { address, prefix };
            match address {
                IpAddr::V4(a) => {
                    let host_bits = 32u32.checked_sub(u32::from(prefix)).ok_or(invalid)?;
                    let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
                    let first = u32::from(a) & mask;
                    ranges.v4.push((first, first | !mask));
                }
                IpAddr::V6(a) => {
                    let host_bits = 128u32.checked_sub(u32::from(prefix)).ok_or(invalid)?;
                    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
                    let first = u128::from(a) & mask;
                    ranges.v6.push((first, first | !mask));
                }
            }
            ranges.networks += 1;
        }
        merge(&mut ranges.v4);
        merge(&mut ranges.v6);
        Ok(Allowlist(Some(Arc::new(ranges))))
    }

    /// Whether every client is allowed.
    pub fn is_everyone(&self) -> bool {
        self.0.is_none()
    }

    /// Whether `client` may connect.
    pub fn allows(&self, client: IpAddr) -> bool {
        let Some(ranges) = &self.0 else {
            return true;
        };
        match client {
            IpAddr::V4(a) => contains(&ranges.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => contains(&ranges.v4, u32::from(v4)),
                None => contains(&ranges.v6, u128::from(a)),
            },
        }
    }
}

impl fmt::Debug for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Allowlist(everyone)"),
            Some(r) => write!(
                f,
                "Allowlist({} networks, {} ranges)",
                r.networks,
                r.v4.len() + r.v6.len()
            ),
        }
    }
}

/// Sorts and merges overlapping or adjacent ranges, so that a lookup needs
/// to look at one candidate only.
fn merge<T: Copy + Ord + num::Succ>(ranges: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for &(first, last) in ranges.iter() {
        match merged.last_mut() {
            Some(prev) if prev.1 >= first || prev.1.succ() == Some(first) => {
                prev.1 = prev.1.max(last);
            }
            _ => merged.push((first, last)),
        }
    }
    merged.shrink_to_fit();
    *ranges = merged;
}

/// The candidate is the last range starting at or before `x`.
fn contains<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|&(first, _)| first <= x);
    after > 0 && x <= ranges[after - 1].1
}

mod num {
    /// The next integer, if any (for merging adjacent ranges).
    pub(super) trait Succ: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Succ for u32 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(nets: &[&str]) -> Allowlist {
        Allowlist::new(nets.iter().map(|n| {
            let (a, p) = n.split_once('/').unwrap();
            (a.parse().unwrap(), p.parse().unwrap())
        }))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matches_networks_of_both_families() {
        let l = list(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(l.allows(ip("10.1.2.3")));
        assert!(l.allows(ip("192.0.2.7")));
        assert!(!l.allows(ip("192.0.2.8")));
        assert!(!l.allows(ip("11.0.0.0")));
        assert!(!l.allows(ip("9.255.255.255")));
        assert!(l.allows(ip("2001:db8:ffff::1")));
        assert!(!l.allows(ip("2001:db9::1")));
        // An IPv4 client of a dual-stack listener is matched as IPv4.
        assert!(l.allows(ip("::ffff:10.9.9.9")));
        assert!(!l.allows(ip("::ffff:11.0.0.1")));
    }

    #[test]
    fn ipv6_networks_do_not_match_ipv4_clients() {
        let l = list(&["::/0"]);
        assert!(l.allows(ip("2001:db8::1")));
        assert!(!l.allows(ip("192.0.2.1")));
        assert!(!l.allows(ip("::ffff:192.0.2.1")));
        let everyone4 = list(&["0.0.0.0/0"]);
        assert!(everyone4.allows(ip("255.255.255.255")));
        assert!(!everyone4.allows(ip("::1")));
    }

    #[test]
    fn empty_allows_nobody_and_everyone_allows_all() {
        assert!(!list(&[]).allows(ip("127.0.0.1")));
        assert!(Allowlist::everyone().allows(ip("127.0.0.1")));
        assert!(Allowlist::default().is_everyone());
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let l = list(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        let Some(r) = &l.0 else { panic!() };
        assert_eq!(r.v4.len(), 2, "{:?}", r.v4);
        assert!(l.allows(ip("10.0.1.255")));
        assert!(!l.allows(ip("10.0.2.0")));
        assert!(l.allows(ip("10.0.3.0")));
    }

    #[test]
    fn host_bits_are_ignored_and_long_prefixes_refused() {
        assert!(list(&["10.0.0.1/8"]).allows(ip("10.200.0.0")));
        assert_eq!(
            Allowlist::new([(ip("10.0.0.0"), 33)]),
            Err(InvalidNetwork {
                address: ip("10.0.0.0"),
                prefix: 33
            })
        );
        assert!(Allowlist::new([(ip("::"), 129)]).is_err());
    }

    /// Agrees with a linear scan on 10,000 random networks (both directions
    /// of every boundary).
    #[test]
    fn agrees_with_a_linear_scan() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let nets: Vec<(u32, u8)> = (0..10_000)
            .map(|_| {
                let prefix = 8 + (next() % 25) as u8;
                let mask = u32::MAX << (32 - u32::from(prefix));
                ((next() as u32) & mask, prefix)
            })
            .collect();
        let l = Allowlist::new(nets.iter().map(|&(a, p)| (IpAddr::V4(a.into()), p))).unwrap();
        let linear = |x: u32| {
            nets.iter()
                .any(|&(a, p)| x & (u32::MAX << (32 - u32::from(p))) == a)
        };
        for &(a, p) in nets.iter().take(500) {
            let last = a | !(u32::MAX << (32 - u32::from(p)));
            for x in [
                a,
                last,
                a.wrapping_sub(1),
                last.wrapping_add(1),
                next() as u32,
            ] {
                assert_eq!(l.allows(IpAddr::V4(x.into())), linear(x), "{x:#x}");
            }
        }
    }
}
