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
    #[error(
        "{0:?} is not a port range: expected FIRST-LAST with ports 1-65535 in plain digits, e.g. 20000-40000"
    )]
    Syntax(String),
}

/// A port number, 0-65535, written the one way Navigator writes it: ASCII
/// digits only, without sign, spaces or leading zeros. `u16::from_str`
/// alone also takes `+80`, which would let two spellings name one port (and
/// one of them slip past checks written for the other); `080` reads as octal
/// to some tools. Callers refuse 0 where a port must be 1-65535.
pub fn parse_port_number(text: &str) -> Option<u16> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if digits && !leading_zero {
        text.parse().ok()
    } else {
        None
    }
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

/// `FIRST-LAST` or a single port, each [`parse_port_number`]'s way (no
/// spaces: one spelling for one range).
impl FromStr for PortRange {
    type Err = PortRangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PortRangeError::Syntax(s.to_owned());
        let (first, last) = s.split_once('-').unwrap_or((s, s));
        let first = parse_port_number(first).ok_or_else(syntax)?;
        let last = parse_port_number(last).ok_or_else(syntax)?;
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
            ("1-65535", Ok((1, 65535))),
            ("8080", Ok((8080, 8080))),
            ("0-10", Err("port 0 is not allowed: ports are 1-65535")),
            (
                "10-5",
                Err("range 10-5 is empty: the first port must not exceed the last"),
            ),
            (
                "1-70000",
                Err(
                    "\"1-70000\" is not a port range: expected FIRST-LAST with ports 1-65535 in plain digits, e.g. 20000-40000",
                ),
            ),
            (
                "abc",
                Err(
                    "\"abc\" is not a port range: expected FIRST-LAST with ports 1-65535 in plain digits, e.g. 20000-40000",
                ),
            ),
        ];
        // Odd spellings of good ranges: one spelling only.
        for odd in [
            "+20000-40000",
            "20000-+40000",
            " 1 - 65535 ",
            "1 -10",
            "020000-40000",
            "20000-040000",
            "-5",
            "5-",
            "1-2-3",
            "\u{0661}-\u{0662}",
        ] {
            assert_eq!(
                odd.parse::<PortRange>(),
                Err(PortRangeError::Syntax(odd.to_owned())),
                "{odd:?}"
            );
        }
        for (input, expected) in cases {
            let got = input
                .parse::<PortRange>()
                .map(|r| (r.first(), r.last()))
                .map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "input {input:?}");
        }
    }

    #[test]
    fn port_numbers_have_one_spelling() {
        assert_eq!(parse_port_number("80"), Some(80));
        assert_eq!(parse_port_number("0"), Some(0));
        assert_eq!(parse_port_number("65535"), Some(65535));
        for odd in [
            "+80",
            "-80",
            " 80",
            "80 ",
            "080",
            "00",
            "65536",
            "8_0",
            "0x50",
            "",
            "\u{0668}0",
        ] {
            assert_eq!(parse_port_number(odd), None, "{odd:?}");
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
