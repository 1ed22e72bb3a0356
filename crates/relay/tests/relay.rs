//! Integration tests of the relay on loopback: TCP/UDP forwarding, half-close,
//! limits, retarget, remove, bind errors and shutdown.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use navigator_relay::{
    Limit, ListenerId, ListenerSpec, Protocol, Relay, RelayConfig, RelayError, SpliceMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const V4: &str = "127.0.0.1:0";
const V6: &str = "[::1]:0";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// TCP server that optionally greets with `tag`, then echoes everything and
/// half-closes after the client's FIN.
async fn echo_server(bind: &str, tag: Option<u8>) -> SocketAddr {
    let l = TcpListener::bind(bind).await.expect("bind echo");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Some(t) = tag {
                    s.write_all(&[t]).await?;
                }
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await?;
                io::Result::Ok(())
            });
        }
    });
    a
}

async fn relay_tcp(
    relay: &Relay,
    id: u128,
    listen: &str,
    target: SocketAddr,
    max: Option<usize>,
) -> SocketAddr {
    relay
        .add(
            ListenerId(id),
            ListenerSpec {
                protocol: Protocol::Tcp,
                listen: addr(listen),
                target,
                limit: Limit::new("test", "max", max),
                options: Default::default(),
            },
        )
        .await
        .expect("add tcp listener");
    listen_addr(relay, id)
}

fn listen_addr(relay: &Relay, id: u128) -> SocketAddr {
    relay
        .listeners()
        .into_iter()
        .find(|(i, _)| *i == ListenerId(id))
        .expect("listener listed")
        .1
        .listen
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back).await.expect("read echo");
    assert_eq!(back, msg);
}

/// Polls `cond` (bounded) — used where the relay updates state asynchronously and
/// there is no event to await.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn tcp_echo_ipv4() {
    let relay = Relay::new(RelayConfig::default());
    let echo = echo_server(V4, None).await;
    let front = relay_tcp(&relay, 1, V4, echo, None).await;
    let mut c = TcpStream::connect(front).await.expect("connect");
    round_trip(&mut c, b"hello relay").await;
    drop(c);
    let st = relay.stats(ListenerId(1)).expect("stats");
    assert_eq!(st.accepted, 1);
    eventually("byte counters", || {
        relay
            .stats(ListenerId(1))
            .is_some_and(|s| s.bytes_to_target == 11 && s.bytes_from_target == 11)
    })
    .await;
}

#[tokio::test]
async fn tcp_echo_ipv6() {
    let relay = Relay::new(RelayConfig::default());
    let echo = echo_server(V6, None).await;
    let front = relay_tcp(&relay, 1, V6, echo, None).await;
    assert!(front.is_ipv6());
    let mut c = TcpStream::connect(front).await.expect("connect");
    round_trip(&mut c, b"hello over v6").await;
}

/// Sends `len` bytes of a pattern and checks the echo byte for byte, with writer and
/// reader running concurrently (so both directions carry bulk data at once).
async fn bulk(mode: SpliceMode) {
    const LEN: usize = 48 * 1024 * 1024 + 12_345;
    let relay = Relay::new(RelayConfig {
        splice: mode,
        ..RelayConfig::default()
    });
    let echo = echo_server(V4, None).await;
    let front = relay_tcp(&relay, 7, V4, echo, None).await;
    let c = TcpStream::connect(front).await.expect("connect");
    let (mut r, mut w) = c.into_split();
    let pattern = |i: usize| (i.wrapping_mul(31) ^ (i >> 13)) as u8;
    let writer = tokio::spawn(async move {
        let mut off = 0;
        let mut chunk = vec![0u8; 100_003];
        while off < LEN {
            let n = chunk.len().min(LEN - off);
            for (j, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(off + j);
            }
            w.write_all(&chunk[..n]).await.expect("write bulk");
            off += n;
        }
        w.shutdown().await.expect("shutdown write");
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = r.read(&mut buf).await.expect("read bulk");
        if n == 0 {
            break;
        }
        for (j, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(got + j), "mismatch at byte {}", got + j);
        }
        got += n;
    }
    writer.await.expect("writer");
    assert_eq!(got, LEN);
    let st = relay.stats(ListenerId(7)).expect("stats");
    assert_eq!(st.bytes_to_target, LEN as u64);
    assert_eq!(st.bytes_from_target, LEN as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_splice_always() {
    bulk(SpliceMode::Always).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_splice_never() {
    bulk(SpliceMode::Never).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_splice_auto() {
    bulk(SpliceMode::Auto).await;
}

#[tokio::test]
async fn half_close_keeps_other_direction() {
    for mode in [SpliceMode::Always, SpliceMode::Never] {
        let relay = Relay::new(RelayConfig {
            splice: mode,
            ..RelayConfig::default()
        });
        let echo = echo_server(V4, None).await;
        let front = relay_tcp(&relay, 1, V4, echo, None).await;
        let mut c = TcpStream::connect(front).await.expect("connect");
        let msg: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        c.write_all(&msg).await.expect("write");
        // FIN towards the target; the echo must still come back in full, then EOF.
        c.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.expect("read to end");
        assert_eq!(back.len(), msg.len(), "{mode:?}");
        assert_eq!(back, msg, "{mode:?}");
    }
}

/// A read shorter than the buffer ends the relay's reading until the next
/// readiness event (it saves the read that would answer EAGAIN): messages
/// that trickle in one by one, with pauses, and the FIN after them must all
/// still be relayed, in both engines.
#[tokio::test]
async fn trickled_messages_after_short_reads() {
    for mode in [SpliceMode::Auto, SpliceMode::Never, SpliceMode::Always] {
        let relay = Relay::new(RelayConfig {
            splice: mode,
            ..RelayConfig::default()
        });
        let echo = echo_server(V4, None).await;
        let front = relay_tcp(&relay, 1, V4, echo, None).await;
        let mut c = TcpStream::connect(front).await.expect("connect");
        for i in 0..20u8 {
            // Several writes per message, some right after another, some after a pause.
            c.write_all(&[i; 3]).await.expect("write");
            if i % 3 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c.write_all(&[i; 5]).await.expect("write");
            let mut back = [0u8; 8];
            c.read_exact(&mut back).await.expect("read echo");
            assert_eq!(back[..3], [i; 3], "{mode:?}");
            assert_eq!(back[3..], [i; 5], "{mode:?}");
        }
        c.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .expect("EOF relayed after the last short read")
            .expect("read to end");
        assert!(rest.is_empty(), "{mode:?}");
        relay.shutdown().await;
    }
}

/// True if the relay closed the connection (EOF or reset) without relaying.
async fn is_closed(mut s: TcpStream) -> bool {
    let _ = s.write_all(b"x").await;
    let mut b = [0u8; 1];
    matches!(s.read(&mut b).await, Ok(0) | Err(_))
}

#[tokio::test]
async fn connection_limit() {
    let relay = Relay::new(RelayConfig::default());
    let echo = echo_server(V4, None).await;
    let front = relay_tcp(&relay, 1, V4, echo, Some(2)).await;
    let mut a = TcpStream::connect(front).await.expect("a");
    round_trip(&mut a, b"a").await;
    let mut b = TcpStream::connect(front).await.expect("b");
    round_trip(&mut b, b"b").await;
    let c = TcpStream::connect(front)
        .await
        .expect("c connects at TCP level");
    assert!(is_closed(c).await, "third connection must be closed");
    assert_eq!(relay.stats(ListenerId(1)).expect("stats").refused, 1);

    drop(a);
    eventually("slot freed", || {
        relay.stats(ListenerId(1)).is_some_and(|s| s.active == 1)
    })
    .await;
    let mut d = TcpStream::connect(front).await.expect("d");
    round_trip(&mut d, b"d works").await;
    round_trip(&mut b, b"b still works").await;

    // Raising the limit admits a third.
    relay
        .set_max_connections(ListenerId(1), None)
        .expect("set max");
    let mut e = TcpStream::connect(front).await.expect("e");
    round_trip(&mut e, b"e").await;
    assert_eq!(relay.listeners()[0].1.limit.max(), None);
}

#[tokio::test]
async fn tcp_retarget() {
    let relay = Relay::new(RelayConfig::default());
    let a = echo_server(V4, Some(b'A')).await;
    let b = echo_server(V4, Some(b'B')).await;
    let front = relay_tcp(&relay, 1, V4, a, None).await;
    let mut old = TcpStream::connect(front).await.expect("old");
    let mut tag = [0u8; 1];
    old.read_exact(&mut tag).await.expect("tag");
    assert_eq!(&tag, b"A");

    relay.retarget(ListenerId(1), b).expect("retarget");
    assert_eq!(relay.listeners()[0].1.target, b);
    let mut new = TcpStream::connect(front).await.expect("new");
    new.read_exact(&mut tag).await.expect("tag");
    assert_eq!(&tag, b"B");
    round_trip(&mut new, b"to B").await;
    round_trip(&mut old, b"still to A").await;
    assert!(matches!(
        relay.retarget(ListenerId(9), b),
        Err(RelayError::NotFound(ListenerId(9)))
    ));
}

#[tokio::test]
async fn remove_frees_port_and_closes_connections() {
    let relay = Relay::new(RelayConfig::default());
    let echo = echo_server(V4, None).await;
    let front = relay_tcp(&relay, 1, V4, echo, None).await;
    let mut live = TcpStream::connect(front).await.expect("connect");
    round_trip(&mut live, b"before").await;

    relay.remove(ListenerId(1)).await.expect("remove");
    assert!(relay.listeners().is_empty());
    assert!(relay.stats(ListenerId(1)).is_none());
    let err = TcpStream::connect(front)
        .await
        .expect_err("port must be closed");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert!(is_closed(live).await, "live connection must be closed");
    // Rebindable, by anyone and by the relay.
    drop(std::net::TcpListener::bind(front).expect("rebind after remove"));
    relay_tcp(&relay, 1, &front.to_string(), echo, None).await;
    assert!(matches!(
        relay.remove(ListenerId(2)).await,
        Err(RelayError::NotFound(ListenerId(2)))
    ));
}

#[tokio::test]
async fn bind_errors() {
    let relay = Relay::new(RelayConfig::default());
    let taken = std::net::TcpListener::bind(V4).expect("occupy");
    let port = taken.local_addr().expect("addr");
    let spec = ListenerSpec {
        protocol: Protocol::Tcp,
        listen: port,
        target: port,
        limit: Limit::unlimited(),
        options: Default::default(),
    };
    match relay.add(ListenerId(1), spec.clone()).await {
        Err(RelayError::Bind {
            addr,
            protocol,
            source,
        }) => {
            assert_eq!(addr, port);
            assert_eq!(protocol, Protocol::Tcp);
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        }
        other => panic!("expected Bind error, got {other:?}"),
    }
    // A relay listener is not SO_REUSEPORT: binding its port twice fails too.
    let front = relay_tcp(&relay, 2, V4, port, None).await;
    let again = ListenerSpec {
        listen: front,
        ..spec.clone()
    };
    let err = relay
        .add(ListenerId(3), again)
        .await
        .expect_err("second bind");
    assert!(
        matches!(&err, RelayError::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse)
    );
    assert!(err.to_string().contains(&front.to_string()), "{err}");
    assert!(matches!(
        relay.add(ListenerId(2), spec).await,
        Err(RelayError::AlreadyExists(ListenerId(2)))
    ));

    let udp_taken = std::net::UdpSocket::bind(V4).expect("occupy udp");
    let err = relay
        .add(
            ListenerId(4),
            ListenerSpec {
                protocol: Protocol::Udp,
                listen: udp_taken.local_addr().expect("addr"),
                target: port,
                limit: Limit::unlimited(),
                options: Default::default(),
            },
        )
        .await
        .expect_err("udp bind");
    assert!(
        matches!(err, RelayError::Bind { protocol: Protocol::Udp, source, .. } if source.kind() == io::ErrorKind::AddrInUse)
    );
}

/// UDP server that replies with `tag` followed by the datagram.
async fn udp_echo(tag: u8) -> SocketAddr {
    let s = UdpSocket::bind(V4).await.expect("bind udp echo");
    let a = s.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf[1..]).await {
            buf[0] = tag;
            let _ = s.send_to(&buf[..n + 1], from).await;
        }
    });
    a
}

async fn relay_udp(relay: &Relay, id: u128, target: SocketAddr) -> SocketAddr {
    relay
        .add(
            ListenerId(id),
            ListenerSpec {
                protocol: Protocol::Udp,
                listen: addr(V4),
                target,
                limit: Limit::unlimited(),
                options: Default::default(),
            },
        )
        .await
        .expect("add udp");
    listen_addr(relay, id)
}

async fn udp_round_trip(c: &UdpSocket, msg: &[u8]) -> Vec<u8> {
    c.send(msg).await.expect("send");
    let mut buf = vec![0u8; 65_536];
    let n = c.recv(&mut buf).await.expect("recv");
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn udp_echo_round_trip() {
    let relay = Relay::new(RelayConfig::default());
    let echo = udp_echo(b'A').await;
    let front = relay_udp(&relay, 1, echo).await;
    let c1 = UdpSocket::bind(V4).await.expect("client");
    c1.connect(front).await.expect("connect");
    let c2 = UdpSocket::bind(V4).await.expect("client");
    c2.connect(front).await.expect("connect");
    assert_eq!(udp_round_trip(&c1, b"one").await, b"Aone");
    assert_eq!(udp_round_trip(&c2, b"two").await, b"Atwo");
    assert_eq!(udp_round_trip(&c1, b"three").await, b"Athree");
    let st = relay.stats(ListenerId(1)).expect("stats");
    assert_eq!((st.active, st.accepted), (2, 2));
    assert_eq!(st.bytes_to_target, 11);
    assert_eq!(st.bytes_from_target, 14);
}

#[tokio::test(start_paused = true)]
async fn udp_idle_expiry() {
    let relay = Relay::new(RelayConfig {
        udp_idle_timeout: Duration::from_secs(30),
        ..RelayConfig::default()
    });
    let echo = udp_echo(b'A').await;
    let front = relay_udp(&relay, 1, echo).await;
    let c = UdpSocket::bind(V4).await.expect("client");
    c.connect(front).await.expect("connect");
    assert_eq!(udp_round_trip(&c, b"x").await, b"Ax");
    assert_eq!(relay.stats(ListenerId(1)).expect("stats").active, 1);

    // Activity at t=20s pushes expiry to t=50s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(udp_round_trip(&c, b"y").await, b"Ay");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        relay.stats(ListenerId(1)).expect("stats").active,
        1,
        "still alive at t=40s"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    eventually("session expiry", || {
        relay.stats(ListenerId(1)).is_some_and(|s| s.active == 0)
    })
    .await;

    // The client comes back: a fresh session.
    assert_eq!(udp_round_trip(&c, b"z").await, b"Az");
    let st = relay.stats(ListenerId(1)).expect("stats");
    assert_eq!((st.active, st.accepted), (1, 2));
}

#[tokio::test]
async fn udp_retarget_and_session_cap() {
    let relay = Relay::new(RelayConfig {
        max_udp_sessions: Some(1),
        ..RelayConfig::default()
    });
    let a = udp_echo(b'A').await;
    let b = udp_echo(b'B').await;
    let front = relay_udp(&relay, 1, a).await;
    let c = UdpSocket::bind(V4).await.expect("client");
    c.connect(front).await.expect("connect");
    assert_eq!(udp_round_trip(&c, b"1").await, b"A1");

    // Cap of 1: a second client's datagram is dropped and counted.
    let other = UdpSocket::bind(V4).await.expect("client 2");
    other.send_to(b"nope", front).await.expect("send");
    eventually("refused datagram", || {
        relay.stats(ListenerId(1)).is_some_and(|s| s.refused == 1)
    })
    .await;

    relay.retarget(ListenerId(1), b).expect("retarget");
    eventually("sessions dropped", || {
        relay.stats(ListenerId(1)).is_some_and(|s| s.active == 0)
    })
    .await;
    assert_eq!(udp_round_trip(&c, b"2").await, b"B2");
}

#[tokio::test]
async fn udp_remove_frees_port() {
    let relay = Relay::new(RelayConfig::default());
    let echo = udp_echo(b'A').await;
    let front = relay_udp(&relay, 1, echo).await;
    let c = UdpSocket::bind(V4).await.expect("client");
    c.connect(front).await.expect("connect");
    assert_eq!(udp_round_trip(&c, b"1").await, b"A1");
    relay.remove(ListenerId(1)).await.expect("remove");
    drop(std::net::UdpSocket::bind(front).expect("udp port free after remove"));
}

#[tokio::test]
async fn shutdown_drains_live_connections() {
    let relay = Relay::new(RelayConfig::default());
    let echo = echo_server(V4, None).await;
    let front = relay_tcp(&relay, 1, V4, echo, None).await;
    let mut live = TcpStream::connect(front).await.expect("connect");
    round_trip(&mut live, b"before").await;

    let r = relay.clone();
    let shutdown = tokio::spawn(async move { r.shutdown().await });
    // Once the listening socket is closed, new connections are refused...
    eventually("listener closed", || {
        std::net::TcpStream::connect(front).is_err()
    })
    .await;
    // ...while the live one keeps working until the client ends it.
    round_trip(&mut live, b"during shutdown").await;
    assert!(!shutdown.is_finished());
    drop(live);
    // Finishes long before the 10 s grace because the last connection ended.
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown finished after drain")
        .expect("join");
    assert!(matches!(
        relay
            .add(
                ListenerId(2),
                ListenerSpec {
                    protocol: Protocol::Tcp,
                    listen: addr(V4),
                    target: echo,
                    limit: Limit::unlimited(),
                    options: Default::default(),
                }
            )
            .await,
        Err(RelayError::ShutDown)
    ));
}

#[tokio::test]
async fn shutdown_cuts_after_grace() {
    let relay = Relay::new(RelayConfig {
        shutdown_grace: Duration::from_millis(200),
        ..RelayConfig::default()
    });
    let echo = echo_server(V4, None).await;
    let front = relay_tcp(&relay, 1, V4, echo, None).await;
    let mut live = TcpStream::connect(front).await.expect("connect");
    round_trip(&mut live, b"x").await;
    tokio::time::timeout(Duration::from_secs(5), relay.shutdown())
        .await
        .expect("shutdown bounded by grace");
    assert!(is_closed(live).await);
}

/// The relay closes an idle connection (EOF or reset) within a few seconds.
async fn closed_by_idle_timeout(mut c: TcpStream) {
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .expect("closed by idle timeout");
    assert!(matches!(r, Ok(0) | Err(_)));
}

#[tokio::test]
async fn tcp_idle_timeout_closes() {
    let relay = Relay::new(RelayConfig {
        tcp_idle_timeout: Some(Duration::from_millis(300)),
        ..RelayConfig::default()
    });
    let echo = echo_server(V4, None).await;
    let front = relay_tcp(&relay, 1, V4, echo, None).await;
    let mut c = TcpStream::connect(front).await.expect("connect");
    round_trip(&mut c, b"x").await;
    closed_by_idle_timeout(c).await;
}

/// The idle clock of a listener stops while it carries no connection and the
/// next connection starts it again: that one must still time out.
#[tokio::test]
async fn tcp_idle_timeout_after_the_clock_stopped() {
    let relay = Relay::new(RelayConfig {
        tcp_idle_timeout: Some(Duration::from_millis(300)),
        ..RelayConfig::default()
    });
    let echo = echo_server(V4, None).await;
    let front = relay_tcp(&relay, 1, V4, echo, None).await;
    let mut first = TcpStream::connect(front).await.expect("connect");
    round_trip(&mut first, b"x").await;
    drop(first);
    eventually("the first connection ends", || {
        relay.stats(ListenerId(1)).is_some_and(|s| s.active == 0)
    })
    .await;
    // Several ticks (300 ms / 8) with no connection: the clock stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = TcpStream::connect(front).await.expect("connect");
    round_trip(&mut c, b"y").await;
    closed_by_idle_timeout(c).await;
}

#[tokio::test]
async fn unreachable_target_closes_client() {
    let relay = Relay::new(RelayConfig::default());
    // A port that was just free: connect is refused.
    let dead = std::net::TcpListener::bind(V4)
        .expect("bind")
        .local_addr()
        .expect("addr");
    let front = relay_tcp(&relay, 1, V4, dead, None).await;
    let c = TcpStream::connect(front).await.expect("connect");
    assert!(is_closed(c).await);
    eventually("connect failure counted", || {
        relay
            .stats(ListenerId(1))
            .is_some_and(|s| s.connect_failures == 1 && s.active == 0)
    })
    .await;
}
