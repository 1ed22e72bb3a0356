//! A relay hands its listener and live connections over to another relay
//! (as a restarting agent does to its successor, here within one process):
//! streaming connections go on with every byte exact, and connections made
//! while nobody accepts wait in the backlog instead of being refused.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use navigator_relay::{Inherited, Limit, ListenerId, ListenerSpec, Protocol, Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{PATIENCE, echo_server};

/// Byte `i` of every stream: a pattern whose errors (a lost, repeated or
/// reordered chunk) show.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Writes the pattern and checks its echo until `stop`; returns the bytes
/// checked.
async fn stream(addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 1024];
    let mut back = vec![0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        for (k, b) in chunk.iter_mut().enumerate() {
            *b = pattern(sent + k as u64);
        }
        s.write_all(&chunk)
            .await
            .map_err(|e| format!("write at {sent}: {e}"))?;
        tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
            .await
            .map_err(|_| format!("no echo at {sent}"))?
            .map_err(|e| format!("read at {sent}: {e}"))?;
        if back != chunk {
            return Err(format!("wrong bytes at {sent}"));
        }
        sent += chunk.len() as u64;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(sent)
}

/// New connections in a loop until `stop`, each one round trip.
async fn new_connections(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) -> Result<(), String> {
    while !stop.load(Ordering::Relaxed) {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("new connection refused: {e}"))?;
        s.write_all(b"hello")
            .await
            .map_err(|e| format!("new connection write: {e}"))?;
        let mut back = [0u8; 5];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
            .await
            .map_err(|_| "new connection: no echo".to_owned())?
            .map_err(|e| format!("new connection read: {e}"))?;
        made.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn spec(listen: SocketAddr, target: SocketAddr) -> ListenerSpec {
    ListenerSpec {
        protocol: Protocol::Tcp,
        listen,
        target,
        limit: Limit::unlimited(),
        options: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_and_connections_survive_a_hand_over() {
    let target = echo_server().await;
    let old = Relay::new(RelayConfig::default());
    old.add(
        ListenerId(1),
        spec(support::V4.parse().expect("addr"), target),
    )
    .await
    .expect("add");
    let listen = old.listeners()[0].1.listen;
    // A listener the next process's forwards no longer want.
    old.add(
        ListenerId(2),
        spec(support::V4.parse().expect("addr"), target),
    )
    .await
    .expect("add");
    let dropped = old.listeners()[1].1.listen;

    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = (0..100)
        .map(|_| tokio::spawn(stream(listen, Arc::clone(&stop))))
        .collect();
    let made = Arc::new(AtomicU64::new(0));
    let fresh = tokio::spawn(new_connections(
        listen,
        Arc::clone(&stop),
        Arc::clone(&made),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = old.stats(ListenerId(1)).expect("stats");

    let handover = old.hand_over().await;
    assert_eq!(handover.lost, 0, "{handover:?}");
    assert_eq!(handover.listeners, 2);
    assert!(handover.connections >= 100, "{handover:?}");
    // The gap between the processes: nobody accepts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut fds: HashMap<String, OwnedFd> = handover.fds.into_iter().collect();
    let inherited = Inherited::parse(&handover.state, &mut fds).expect("parse");
    assert!(fds.is_empty(), "every socket is described");
    let new = Relay::new(RelayConfig::default());
    new.inherit(inherited);
    new.add(ListenerId(7), spec(listen, target))
        .await
        .expect("takes the inherited listener");
    assert_eq!(new.close_unclaimed(), (1, 0));
    let after = new.stats(ListenerId(7)).expect("stats");
    assert!(after.accepted >= before.accepted, "counters continue");
    assert!(after.active >= 100, "{after:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for s in streams {
        let sent = s.await.expect("join").expect("stream");
        assert!(sent > 0);
    }
    fresh.await.expect("join").expect("new connections");
    assert!(made.load(Ordering::Relaxed) > 0);
    assert!(
        TcpStream::connect(dropped).await.is_err(),
        "an unclaimed listener is closed"
    );
    new.shutdown().await;
}

/// A relay that hands over with no taker closes everything when the
/// hand-over is dropped: nothing stays open by accident.
#[tokio::test]
async fn a_dropped_hand_over_closes_its_sockets() {
    let target = echo_server().await;
    let old = Relay::new(RelayConfig::default());
    old.add(
        ListenerId(1),
        spec(support::V4.parse().expect("addr"), target),
    )
    .await
    .expect("add");
    let listen = old.listeners()[0].1.listen;
    let mut live = TcpStream::connect(listen).await.expect("connect");
    support::round_trip(&mut live, b"ping").await;
    let handover = old.hand_over().await;
    assert_eq!((handover.listeners, handover.connections), (1, 1));
    drop(handover);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, live.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    assert!(TcpStream::connect(listen).await.is_err());
}

/// A connection whose client has finished sending (half-closed) when the
/// relay hands over: the next relay knows that direction has ended and
/// still carries the target's late reply, then the end of the connection.
#[tokio::test]
async fn a_half_closed_connection_is_carried_to_its_end() {
    // Reads the request to its end, answers a little later, then closes.
    let target = tokio::net::TcpListener::bind(support::V4)
        .await
        .expect("bind");
    let target_addr = target.local_addr().expect("addr");
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = target.accept().await.expect("accept");
        let mut request = Vec::new();
        s.read_to_end(&mut request).await.expect("request");
        let _ = answer_rx.await;
        s.write_all(&request).await.expect("reply");
        s.write_all(b" and more").await.expect("reply");
    });
    let old = Relay::new(RelayConfig::default());
    old.add(
        ListenerId(1),
        spec(support::V4.parse().expect("addr"), target_addr),
    )
    .await
    .expect("add");
    let listen = old.listeners()[0].1.listen;
    let mut client = TcpStream::connect(listen).await.expect("connect");
    client.write_all(b"request").await.expect("write");
    client.shutdown().await.expect("half-close");
    // The FIN reaches the target through the old relay.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let handover = old.hand_over().await;
    assert_eq!(
        (handover.connections, handover.lost),
        (1, 0),
        "{handover:?}"
    );
    let mut fds: HashMap<String, OwnedFd> = handover.fds.into_iter().collect();
    let inherited = Inherited::parse(&handover.state, &mut fds).expect("parse");
    let new = Relay::new(RelayConfig::default());
    new.inherit(inherited);
    new.add(ListenerId(1), spec(listen, target_addr))
        .await
        .expect("add");
    answer_tx.send(()).expect("target waiting");
    let mut reply = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut reply))
        .await
        .expect("the reply and the end in time")
        .expect("read");
    assert_eq!(reply, b"request and more");
    new.shutdown().await;
}

/// A connection that cannot write out what it read within the bound (its
/// client reads nothing) is closed and counted as lost, and the hand-over
/// does not wait for it longer than the bound allows.
#[tokio::test]
async fn a_connection_that_cannot_be_flushed_is_counted_lost() {
    let target = tokio::net::TcpListener::bind(support::V4)
        .await
        .expect("bind");
    let target_addr = target.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = target.accept().await.expect("accept");
        let chunk = vec![7u8; 64 * 1024];
        while s.write_all(&chunk).await.is_ok() {}
    });
    let old = Relay::new(RelayConfig::default());
    old.add(
        ListenerId(1),
        spec(support::V4.parse().expect("addr"), target_addr),
    )
    .await
    .expect("add");
    let listen = old.listeners()[0].1.listen;
    let _client = TcpStream::connect(listen).await.expect("connect");
    // The client's receive buffer and the relay's fill up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let handover = old.hand_over().await;
    assert_eq!(
        (handover.connections, handover.lost),
        (0, 1),
        "{handover:?}"
    );
    assert!(
        started.elapsed() < navigator_relay::handover::FLUSH_BOUND + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
