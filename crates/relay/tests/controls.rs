//! Listener options on loopback: the allowlist (127.0.0.1 and 127.0.0.2 are
//! two client addresses), the second connection cap, the PROXY protocol
//! header (both engines, dual-stack listeners) and the usage counters.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use navigator_relay::{
    Allowlist, Limit, ListenerId, ListenerOptions, ListenerSpec, Protocol, ProxyHeader, Relay,
    RelayConfig, SpliceMode, proxy_header,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

const ALLOWED: &str = "127.0.0.2";
const OTHER: &str = "127.0.0.1";

fn only(ip: &str) -> Allowlist {
    Allowlist::new([(ip.parse::<IpAddr>().expect("ip"), 32)]).expect("allowlist")
}

/// A TCP echo target that counts the connections it accepted.
async fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind(V4).await.expect("bind");
    let a = l.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (a, seen)
}

async fn add(
    relay: &Relay,
    id: u128,
    protocol: Protocol,
    listen: &str,
    target: SocketAddr,
    options: ListenerOptions,
) -> SocketAddr {
    relay
        .add(
            ListenerId(id),
            ListenerSpec {
                protocol,
                listen: listen.parse().expect("listen"),
                target,
                limit: Limit::unlimited(),
                options,
            },
        )
        .await
        .expect("add");
    relay
        .listeners()
        .into_iter()
        .find(|(i, _)| *i == ListenerId(id))
        .expect("listed")
        .1
        .listen
}

/// A target no test connection reaches (the listener is retargeted first).
fn front_placeholder() -> SocketAddr {
    "127.0.0.1:9".parse().expect("addr")
}

async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(src.parse().expect("src"), 0))
        .expect("bind client");
    tokio::time::timeout(PATIENCE, s.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

#[tokio::test]
async fn tcp_clients_outside_the_allowlist_are_reset_before_the_target_is_dialled() {
    let relay = Relay::new(RelayConfig::default());
    let (target, seen) = counting_echo().await;
    let options = ListenerOptions {
        allow: only(ALLOWED),
        ..Default::default()
    };
    let front = add(&relay, 1, Protocol::Tcp, V4, target, options).await;

    let mut refused = connect_from(OTHER, front).await;
    let mut b = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, refused.read(&mut b))
        .await
        .expect("closed in time");
    // SO_LINGER 0: a reset, not an orderly close.
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );

    let mut ok = connect_from(ALLOWED, front).await;
    round_trip(&mut ok, b"hello").await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "only the allowed client reached the target"
    );
    let stats = relay.stats(ListenerId(1)).expect("stats");
    assert_eq!((stats.denied, stats.accepted), (1, 1));
    drop(ok);
    relay.shutdown().await;
}

/// A new list applies to new connections at once and ends live ones of
/// clients it no longer allows; the others go on.
#[tokio::test]
async fn allowlist_changes_in_place_and_cuts_clients_taken_off_it() {
    let relay = Relay::new(RelayConfig::default());
    let (target, _) = counting_echo().await;
    let both = Allowlist::new([
        (ALLOWED.parse().expect("ip"), 32),
        (OTHER.parse().expect("ip"), 32),
    ])
    .expect("list");
    let options = ListenerOptions {
        allow: both,
        ..Default::default()
    };
    let front = add(&relay, 1, Protocol::Tcp, V4, target, options.clone()).await;
    let mut stays = connect_from(ALLOWED, front).await;
    let mut goes = connect_from(OTHER, front).await;
    round_trip(&mut stays, b"a").await;
    round_trip(&mut goes, b"b").await;

    relay
        .set_options(
            ListenerId(1),
            ListenerOptions {
                allow: only(ALLOWED),
                ..options
            },
        )
        .expect("set options");
    assert!(
        closed(&mut goes).await,
        "the client taken off the list is cut"
    );
    round_trip(&mut stays, b"still here").await;
    let mut again = connect_from(OTHER, front).await;
    assert!(closed(&mut again).await, "and cannot come back");
    let stats = relay.stats(ListenerId(1)).expect("stats");
    assert_eq!(stats.denied, 2);
    eventually("one live connection", || {
        relay.stats(ListenerId(1)).expect("stats").active == 1
    })
    .await;
    drop(stays);
    relay.shutdown().await;
}

#[tokio::test]
async fn udp_datagrams_from_outside_the_allowlist_open_no_session() {
    let relay = Relay::new(RelayConfig::default());
    let echo = udp_echo().await;
    let options = ListenerOptions {
        allow: only(ALLOWED),
        ..Default::default()
    };
    let front = add(&relay, 1, Protocol::Udp, V4, echo, options).await;
    let other = UdpSocket::bind((OTHER, 0)).await.expect("bind");
    other.send_to(b"no", front).await.expect("send");
    eventually("the datagram denied", || {
        relay.stats(ListenerId(1)).expect("stats").denied == 1
    })
    .await;
    let allowed = UdpSocket::bind((ALLOWED, 0)).await.expect("bind");
    allowed.send_to(b"yes", front).await.expect("send");
    let mut buf = [0u8; 16];
    let (n, _) = tokio::time::timeout(PATIENCE, allowed.recv_from(&mut buf))
        .await
        .expect("echo in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"yes");
    let stats = relay.stats(ListenerId(1)).expect("stats");
    assert_eq!(
        (stats.accepted, stats.active, stats.bytes_to_target),
        (1, 1, 3)
    );
    // Nothing came back to the refused client.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other.recv_from(&mut buf))
            .await
            .is_err()
    );

    // Taking the client off the list ends its session.
    relay
        .set_options(
            ListenerId(1),
            ListenerOptions {
                allow: only(OTHER),
                ..Default::default()
            },
        )
        .expect("set options");
    eventually("the session ended", || {
        relay.stats(ListenerId(1)).expect("stats").active == 0
    })
    .await;
    relay.shutdown().await;
}

/// The options' cap is shared by the listeners given it, applies on top of
/// the listener's own limit (the smaller wins), changes in place and frees
/// a slot when a connection closes.
#[tokio::test]
async fn the_options_cap_is_shared_and_the_smaller_limit_wins() {
    let relay = Relay::new(RelayConfig::default());
    let (target, _) = counting_echo().await;
    let own = Limit::new("forward f", "max_connections", Some(2));
    let options = ListenerOptions {
        max_connections: own.clone(),
        ..Default::default()
    };
    let a = add(&relay, 1, Protocol::Tcp, V4, target, options.clone()).await;
    let b = add(&relay, 2, Protocol::Tcp, V4, target, options.clone()).await;
    let mut first = TcpStream::connect(a).await.expect("connect");
    round_trip(&mut first, b"1").await;
    let mut second = TcpStream::connect(b).await.expect("connect");
    round_trip(&mut second, b"2").await;
    let mut third = TcpStream::connect(a).await.expect("connect");
    assert!(closed(&mut third).await, "over the shared cap of 2");
    drop(first);
    eventually("a slot freed", || own.stats().active == 1).await;
    let mut fourth = TcpStream::connect(b).await.expect("connect");
    round_trip(&mut fourth, b"4").await;

    // Raised in place; the listener's own Limit of 1 is then the smaller.
    own.set_max(Some(10));
    let tight = Limit::new("listener", "max", Some(1));
    relay
        .add(
            ListenerId(3),
            ListenerSpec {
                protocol: Protocol::Tcp,
                listen: V4.parse().expect("addr"),
                target,
                limit: tight,
                options,
            },
        )
        .await
        .expect("add");
    let c = relay.listeners()[2].1.listen;
    let mut one = TcpStream::connect(c).await.expect("connect");
    round_trip(&mut one, b"c").await;
    let mut two = TcpStream::connect(c).await.expect("connect");
    assert!(closed(&mut two).await, "over the listener's limit of 1");
    assert_eq!(own.stats().active, 3);
    drop((second, fourth, one));
    relay.shutdown().await;
}

/// A target that reads the PROXY header (its exact length for `want`), then
/// echoes; sends the header it got on the channel.
async fn header_reading_echo(
    want_len: usize,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind(V4).await.expect("bind");
    let a = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut h = vec![0u8; want_len];
                if s.read_exact(&mut h).await.is_err() {
                    return;
                }
                let _ = tx.send(h);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (a, rx)
}

#[tokio::test]
async fn proxy_headers_precede_the_payload_with_both_copy_engines() {
    for splice in [SpliceMode::Never, SpliceMode::Always] {
        for version in [ProxyHeader::V1, ProxyHeader::V2] {
            let relay = Relay::new(RelayConfig {
                splice,
                ..RelayConfig::default()
            });
            let options = ListenerOptions {
                proxy_header: version,
                ..Default::default()
            };
            // The listener first, toward a placeholder: the expected header
            // (so its length, which the target reads) depends on its port.
            let front = add(&relay, 1, Protocol::Tcp, V4, front_placeholder(), options).await;
            let s = TcpSocket::new_v4().expect("socket");
            s.bind("127.0.0.2:0".parse().expect("addr")).expect("bind");
            let want = proxy_header(version, s.local_addr().expect("addr"), front);
            let (target, mut headers) = header_reading_echo(want.len()).await;
            relay.retarget(ListenerId(1), target).expect("retarget");
            let mut stream = tokio::time::timeout(PATIENCE, s.connect(front))
                .await
                .expect("in time")
                .expect("connect");
            let payload = vec![7u8; 300_000];
            let (mut r, mut w) = stream.split();
            let (_, back) = tokio::join!(
                async {
                    w.write_all(&payload).await.expect("write");
                    w.shutdown().await.expect("shutdown");
                },
                async {
                    let mut back = Vec::new();
                    r.read_to_end(&mut back).await.expect("read");
                    back
                }
            );
            assert_eq!(back.len(), payload.len(), "{splice:?} {version:?}");
            let got = headers.recv().await.expect("a header");
            assert_eq!(got, want, "{splice:?} {version:?}");
            let stats = relay.stats(ListenerId(1)).expect("stats");
            // The header is not the client's payload.
            assert_eq!(stats.bytes_to_target, payload.len() as u64);
            assert_eq!(stats.bytes_from_target, payload.len() as u64);
            relay.shutdown().await;
        }
    }
}

/// An IPv4 client of a dual-stack IPv6 listener is announced as `TCP4`.
#[tokio::test]
async fn an_ipv4_client_of_a_dual_stack_listener_is_announced_as_ipv4() {
    let relay = Relay::new(RelayConfig::default());
    let (target, mut headers) = header_reading_echo(28).await;
    let options = ListenerOptions {
        proxy_header: ProxyHeader::V2,
        ..Default::default()
    };
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 on this host");
        return;
    }
    let port = add(&relay, 1, Protocol::Tcp, "[::]:0", target, options)
        .await
        .port();
    let mut s = connect_from(ALLOWED, SocketAddr::from(([127, 0, 0, 1], port))).await;
    round_trip(&mut s, b"x").await;
    let got = headers.recv().await.expect("header");
    let local = s.local_addr().expect("addr");
    assert_eq!(
        got,
        proxy_header(
            ProxyHeader::V2,
            local,
            SocketAddr::from(([127, 0, 0, 1], port))
        )
    );
    assert_eq!(got[13], 0x11, "AF_INET");
    drop(s);
    relay.shutdown().await;
}

/// Byte counters move while a connection runs, not only at its end, and
/// count exactly the payload.
#[tokio::test]
async fn usage_counts_bytes_while_connections_run() {
    let relay = Relay::new(RelayConfig::default());
    let (target, _) = counting_echo().await;
    let front = add(
        &relay,
        1,
        Protocol::Tcp,
        V4,
        target,
        ListenerOptions::default(),
    )
    .await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let mut s = TcpStream::connect(front).await.expect("connect");
    round_trip(&mut s, &[1u8; 1234]).await;
    let stats = relay.stats(ListenerId(1)).expect("stats");
    assert_eq!(
        (
            stats.bytes_to_target,
            stats.bytes_from_target,
            stats.accepted,
            stats.active
        ),
        (1234, 1234, 1, 1)
    );
    assert!(stats.last_accepted_at.expect("a time") >= before);
    drop(s);
    relay.shutdown().await;
}

/// UDP: the options' cap counts sessions; a datagram that would open one
/// more is dropped, while datagrams of the open session still pass.
#[tokio::test]
async fn the_options_cap_counts_udp_sessions() {
    let relay = Relay::new(RelayConfig::default());
    let echo = udp_echo().await;
    let options = ListenerOptions {
        max_connections: Limit::quiet("forward f", "own max_connections", Some(1)),
        ..Default::default()
    };
    let front = add(&relay, 1, Protocol::Udp, V4, echo, options).await;
    let first = UdpSocket::bind(V4).await.expect("bind");
    let second = UdpSocket::bind(V4).await.expect("bind");
    let mut buf = [0u8; 16];
    first.send_to(b"one", front).await.expect("send");
    let (n, _) = tokio::time::timeout(PATIENCE, first.recv_from(&mut buf))
        .await
        .expect("echo in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"one");
    second.send_to(b"two", front).await.expect("send");
    eventually("the second session refused", || {
        relay.stats(ListenerId(1)).expect("stats").refused == 1
    })
    .await;
    first.send_to(b"again", front).await.expect("send");
    let (n, _) = tokio::time::timeout(PATIENCE, first.recv_from(&mut buf))
        .await
        .expect("echo in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"again");
    let stats = relay.stats(ListenerId(1)).expect("stats");
    assert_eq!((stats.accepted, stats.active), (1, 1));
    relay.shutdown().await;
}
