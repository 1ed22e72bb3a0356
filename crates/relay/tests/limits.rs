//! The relay's limits on loopback: a [`Limit`] shared by several listeners
//! (one forward's port range), the process-wide TCP and UDP caps, the
//! open-file budget, the TCP idle timeout (both sides closed, either copy
//! engine). The warning logged once per episode is checked in
//! `limit_warnings.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use navigator_relay::{
    Limit, ListenerId, ListenerSpec, Protocol, Relay, RelayConfig, RelayError, SpliceMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

mod support;
use support::*;

#[tokio::test]
async fn one_limit_caps_a_range_of_listeners_and_warns_once() {
    let relay = Relay::new(RelayConfig::default());
    let echo = echo_server().await;
    let forward = Limit::new("forward f", "max_connections_per_forward", Some(3));
    let mut ports = Vec::new();
    for id in 1..=3 {
        ports.push(add(&relay, id, Protocol::Tcp, echo, &forward).await);
    }
    // One connection per port: 3 of the forward's 3.
    let mut live = Vec::new();
    for port in &ports {
        let mut s = TcpStream::connect(port).await.expect("connect");
        round_trip(&mut s, b"hello").await;
        live.push(s);
    }
    assert_eq!(forward.stats().active, 3);
    // A fourth on any port of the range is closed at once, five times over.
    for n in 0..5 {
        let mut s = TcpStream::connect(ports[n % 3]).await.expect("connect");
        assert!(closed(&mut s).await, "connection {n} over the limit");
    }
    let stats = forward.stats();
    assert_eq!((stats.refused, stats.warnings), (5, 1), "{stats:?}");
    // Another forward is not affected.
    let other = add(&relay, 9, Protocol::Tcp, echo, &Limit::unlimited()).await;
    round_trip(&mut TcpStream::connect(other).await.expect("connect"), b"x").await;
    // A freed slot is taken again.
    drop(live.pop());
    eventually("slot freed", || forward.stats().active == 2).await;
    let mut s = TcpStream::connect(ports[0]).await.expect("connect");
    round_trip(&mut s, b"again").await;
    drop((s, live));
    relay.shutdown().await;
}

#[tokio::test]
async fn the_process_cap_spans_forwards() {
    let relay = Relay::new(RelayConfig {
        max_connections: Some(2),
        ..RelayConfig::default()
    });
    let echo = echo_server().await;
    let a = add(&relay, 1, Protocol::Tcp, echo, &Limit::unlimited()).await;
    let b = add(&relay, 2, Protocol::Tcp, echo, &Limit::unlimited()).await;
    let mut first = TcpStream::connect(a).await.expect("a");
    round_trip(&mut first, b"1").await;
    let mut second = TcpStream::connect(b).await.expect("b");
    round_trip(&mut second, b"2").await;
    for port in [a, b, a] {
        let mut s = TcpStream::connect(port).await.expect("connect");
        assert!(closed(&mut s).await, "over the process cap");
    }
    let stats = relay.relay_stats().tcp;
    assert_eq!(stats.max, Some(2));
    assert_eq!(
        (stats.active, stats.refused, stats.warnings),
        (2, 3, 1),
        "{stats:?}"
    );
    round_trip(&mut first, b"still fine").await;
    drop((first, second));
    relay.shutdown().await;
}

#[tokio::test]
async fn the_open_file_budget_counts_listeners_and_connections() {
    // 1 listener + 2 connections (2 files each) = 5.
    let relay = Relay::new(RelayConfig {
        max_fds: Some(5),
        splice: SpliceMode::Never,
        ..RelayConfig::default()
    });
    let echo = echo_server().await;
    let port = add(&relay, 1, Protocol::Tcp, echo, &Limit::unlimited()).await;
    let mut a = TcpStream::connect(port).await.expect("a");
    round_trip(&mut a, b"a").await;
    let mut b = TcpStream::connect(port).await.expect("b");
    round_trip(&mut b, b"b").await;
    assert_eq!(relay.relay_stats().fds.active, 5);
    let mut c = TcpStream::connect(port).await.expect("c");
    assert!(closed(&mut c).await, "no files left for a third");
    let err = relay
        .add(
            ListenerId(2),
            ListenerSpec {
                protocol: Protocol::Tcp,
                listen: V4.parse().expect("addr"),
                target: echo,
                limit: Limit::unlimited(),
                options: Default::default(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, RelayError::FdBudget { budget: 5, .. }),
        "{err}"
    );
    drop(a);
    eventually("files given back", || relay.relay_stats().fds.active == 3).await;
    relay.remove(ListenerId(1)).await.expect("remove");
    drop(b);
    eventually("all files given back", || {
        relay.relay_stats().fds.active == 0
    })
    .await;
}

async fn idle_timeout_closes_both_sides(splice: SpliceMode) {
    let relay = Relay::new(RelayConfig {
        tcp_idle_timeout: Some(Duration::from_secs(1)),
        splice,
        ..RelayConfig::default()
    });
    let target = TcpListener::bind(V4).await.expect("bind target");
    let port = add(
        &relay,
        1,
        Protocol::Tcp,
        target.local_addr().expect("addr"),
        &Limit::unlimited(),
    )
    .await;
    let mut client = TcpStream::connect(port).await.expect("connect");
    let (mut upstream, _) = tokio::time::timeout(PATIENCE, target.accept())
        .await
        .expect("relay connects in time")
        .expect("accept");
    // Traffic both ways, then silence.
    client.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    upstream.read_exact(&mut buf).await.expect("read");
    upstream.write_all(b"pong").await.expect("write");
    client.read_exact(&mut buf).await.expect("read");
    let idle_since = Instant::now();
    assert!(closed(&mut client).await, "client side closed");
    assert!(closed(&mut upstream).await, "target side closed");
    let took = idle_since.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    eventually("connection released", || {
        relay.stats(ListenerId(1)).is_some_and(|s| s.active == 0)
    })
    .await;
}

#[tokio::test]
async fn tcp_idle_timeout_closes_both_sides_buffered() {
    idle_timeout_closes_both_sides(SpliceMode::Never).await;
}

#[tokio::test]
async fn tcp_idle_timeout_closes_both_sides_splice() {
    idle_timeout_closes_both_sides(SpliceMode::Always).await;
}

async fn udp_client(to: SocketAddr) -> UdpSocket {
    let c = UdpSocket::bind(V4).await.expect("client");
    c.connect(to).await.expect("connect");
    c
}

/// Whether a datagram sent by `c` comes back within a second.
async fn echoed(c: &UdpSocket) -> bool {
    c.send(b"hi").await.expect("send");
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), c.recv(&mut buf)).await,
        Ok(Ok(2))
    )
}

#[tokio::test]
async fn udp_sessions_are_capped_per_forward_and_per_process() {
    let relay = Relay::new(RelayConfig {
        max_udp_sessions: Some(3),
        shutdown_grace: Duration::from_millis(100),
        ..RelayConfig::default()
    });
    let echo = udp_echo().await;
    // One forward of two ports sharing a cap of 2 sessions.
    let forward = Limit::new("forward u", "max_udp_sessions_per_forward", Some(2));
    let p1 = add(&relay, 1, Protocol::Udp, echo, &forward).await;
    let p2 = add(&relay, 2, Protocol::Udp, echo, &forward).await;
    let a = udp_client(p1).await;
    let b = udp_client(p2).await;
    assert!(echoed(&a).await && echoed(&b).await);
    let c = udp_client(p2).await;
    assert!(!echoed(&c).await, "third session of the forward dropped");
    assert!(!echoed(&c).await);
    let stats = forward.stats();
    assert_eq!(
        (stats.active, stats.refused, stats.warnings),
        (2, 2, 1),
        "{stats:?}"
    );
    // Another forward gets the process's third session, not a fourth.
    let p3 = add(&relay, 3, Protocol::Udp, echo, &Limit::unlimited()).await;
    let d = udp_client(p3).await;
    assert!(echoed(&d).await);
    let e = udp_client(p3).await;
    assert!(!echoed(&e).await, "fourth session of the process dropped");
    let process = relay.relay_stats().udp;
    assert_eq!(
        (process.active, process.refused, process.warnings),
        (3, 1, 1),
        "{process:?}"
    );
    // Known sessions keep flowing.
    assert!(echoed(&a).await);
    relay.shutdown().await;
}
