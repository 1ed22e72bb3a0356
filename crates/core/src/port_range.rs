//! An inclusive range of ports, such as a proxy's pool for automatic allocation.

use std::fmt;
use std::str::FromStr;

/// A non-empty inclusive range of ports within 1–65535.
///
/// The fields are private so that every `PortRange` upholds that invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error("port 0 is not allowed: ports are 1-65535")]
    Zero,
    #[error("range {first}-{last} is empty: the first port must not exceed the last")]
    Empty { first: u16, last: u16 },
    #[error("{0:?} is not a port range: expected FIRST-LAST with ports 1-65535, e.g. 20000-40000")]
    Syntax(String),
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> Result<PortRange, PortRangeError> {
        if first == 0 {
            return Err(PortRangeError::Zero);
        }
        if first > last {
            return Err(PortRangeError::Empty { first, last });
        }
        Ok(PortRange { first, last })
    }

    /// The range of one port; `port` 0 is the caller's to refuse.
    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port.max(1),
            last: port.max(1),
        }
    }

    pub fn first(self) -> u16 {
        self.first
    }

    pub fn last(self) -> u16 {
        self.last
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Number of ports in the range (at least one).
    pub fn len(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Never true; present because clippy pairs it with `len`.
    pub fn is_empty(self) -> bool {
        false
    }

    pub fn iter(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PortRangeError::Syntax(s.to_owned());
        let (first, last) = match s.trim().split_once('-') {
            Some((first, last)) => (first.trim(), last.trim()),
            None => (s.trim(), s.trim()),
        };
        let first = first.parse::<u16>().map_err(|_| syntax())?;
        let last = last.parse::<u16>().map_err(|_| syntax())?;
        PortRange::new(first, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_ranges() {
        type Case = (&'static str, Result<(u16, u16), &'static str>);
        let cases: &[Case] = &[
            ("20000-40000", Ok((20000, 40000))),
            (" 1 - 65535 ", Ok((1, 65535))),
            ("8080", Ok((8080, 8080))),
            ("0-10", Err("port 0 is not allowed: ports are 1-65535")),
            (
                "10-5",
                Err("range 10-5 is empty: the first port must not exceed the last"),
            ),
            (
                "1-70000",
                Err(
                    "\"1-70000\" is not a port range: expected FIRST-LAST with ports 1-65535, e.g. 20000-40000",
                ),
            ),
            (
                "abc",
                Err(
                    "\"abc\" is not a port range: expected FIRST-LAST with ports 1-65535, e.g. 20000-40000",
                ),
            ),
        ];
        for (input, expected) in cases {
            let got = input
                .parse::<PortRange>()
                .map(|r| (r.first(), r.last()))
                .map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "input {input:?}");
        }
    }

    #[test]
    fn len_and_contains() {
        let range = PortRange::new(10, 12).unwrap();
        assert_eq!(range.len(), 3);
        assert!(range.contains(10) && range.contains(12) && !range.contains(13));
        assert_eq!(range.iter().collect::<Vec<_>>(), vec![10, 11, 12]);
    }
}
