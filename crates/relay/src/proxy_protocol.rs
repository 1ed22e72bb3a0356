//! HAProxy's PROXY protocol header (versions 1 and 2), which the relay writes
//! to the target right after connecting and before any client byte, so that
//! the service behind it (nginx, HAProxy, Postfix …) learns the client's
//! address. Spec: <https://www.haproxy.org/download/2.0/doc/proxy-protocol.txt>.
//!
//! Written by hand: a header is at most 107 (v1) or 52 (v2, no TLVs) bytes,
//! and the relay only ever sends the `PROXY`/`TCP` forms.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Which header a TCP listener writes to its target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxyHeader {
    /// No header: the target sees the relay's address.
    #[default]
    None,
    /// The text header, `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// The binary header.
    V2,
}

/// The v2 signature, which no v1 header or plain protocol starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header telling the target that `client` connected to `local` (the
/// address of the relay the client reached); empty for [`ProxyHeader::None`].
///
/// The spec wants both addresses of one family. An IPv4 client of a
/// dual-stack IPv6 listener shows up with IPv4-mapped addresses on both
/// sides; both are unmapped and sent as IPv4 (`TCP4`), which is what the
/// client really used. Should the families still differ, the IPv4 one is
/// sent in its mapped IPv6 form.
pub fn header(version: ProxyHeader, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(client, local);
    match version {
        ProxyHeader::None => Vec::new(),
        ProxyHeader::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        ProxyHeader::V2 => {
            let mut h = Vec::with_capacity(16 + 36);
            h.extend_from_slice(&V2_SIGNATURE);
            // Version 2, command PROXY.
            h.push(0x21);
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    // AF_INET, STREAM; 12 bytes of addresses.
                    h.push(0x11);
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    // AF_INET6, STREAM; 36 bytes of addresses.
                    h.push(0x21);
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&as_v6(s).octets());
                    h.extend_from_slice(&as_v6(d).octets());
                }
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
    }
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (c, l) = (unmapped(client), unmapped(local));
    if c.is_ipv4() == l.is_ipv4() {
        (c, l)
    } else {
        (
            SocketAddr::new(IpAddr::V6(as_v6(c.ip())), c.port()),
            SocketAddr::new(IpAddr::V6(as_v6(l.ip())), l.port()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_ipv4_ipv6_and_mapped() {
        assert_eq!(
            header(ProxyHeader::V1, sa("192.0.2.1:5555"), sa("10.0.0.1:80")),
            b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 80\r\n"
        );
        assert_eq!(
            header(
                ProxyHeader::V1,
                sa("[2001:db8::1]:5555"),
                sa("[fd00::1]:443")
            ),
            b"PROXY TCP6 2001:db8::1 fd00::1 5555 443\r\n"
        );
        // An IPv4 client through a dual-stack IPv6 listener.
        assert_eq!(
            header(
                ProxyHeader::V1,
                sa("[::ffff:192.0.2.1]:5555"),
                sa("[::ffff:10.0.0.1]:80")
            ),
            b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 80\r\n"
        );
        // Families that still differ: both as IPv6.
        assert_eq!(
            header(ProxyHeader::V1, sa("192.0.2.1:5555"), sa("[fd00::1]:80")),
            b"PROXY TCP6 ::ffff:192.0.2.1 fd00::1 5555 80\r\n"
        );
        assert!(header(ProxyHeader::None, sa("192.0.2.1:1"), sa("10.0.0.1:2")).is_empty());
    }

    /// Byte for byte against the spec's layout.
    #[test]
    fn v2_ipv4_and_ipv6() {
        let h = header(ProxyHeader::V2, sa("192.0.2.1:5555"), sa("10.0.0.1:80"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 10, 0, 0, 1]);
        want.extend_from_slice(&[0x15, 0xb3, 0, 80]);
        assert_eq!(h, want);
        assert_eq!(h.len(), 28);

        let h = header(
            ProxyHeader::V2,
            sa("[2001:db8::1]:5555"),
            sa("[fd00::1]:443"),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h[16], 0x20);
        assert_eq!(h[31], 1);
        assert_eq!(h[32], 0xfd);
        assert_eq!(&h[48..52], &[0x15, 0xb3, 0x01, 0xbb]);

        let mapped = header(
            ProxyHeader::V2,
            sa("[::ffff:192.0.2.1]:5555"),
            sa("[::ffff:10.0.0.1]:80"),
        );
        assert_eq!(
            mapped,
            header(ProxyHeader::V2, sa("192.0.2.1:5555"), sa("10.0.0.1:80"))
        );
    }
}
