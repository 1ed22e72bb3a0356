//! At the relay's open-file budget and at the process's own open-file limit
//! (EMFILE), a new connection is reset at once rather than left unanswered in
//! the backlog, one warning says which limit and how to raise it, and the
//! relay serves again by itself once connections close.
//!
//! Alone in its test binary, and one test: it lowers the process's
//! RLIMIT_NOFILE, which would starve tests running beside it; and `tracing`
//! caches per call site whether anyone listens (see `limit_warnings.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use navigator_relay::{Limit, ListenerId, Protocol, Relay, RelayConfig, SpliceMode};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

mod support;
use support::{PATIENCE, V4, add, capture_warnings, eventually, round_trip};

/// An echo server that outlives accept errors (support's stops at the first,
/// and EMFILE is the point here).
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind(V4).await.expect("bind echo");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((mut s, _)) => {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    a
}

/// The client learns at once that it is refused: a reset, or an EOF (the
/// relay accepted but could not open the target's side). Not a hang, which
/// the generous timeout would turn into a failure.
async fn refused(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(PATIENCE, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn connect(socket: TcpSocket, port: SocketAddr) -> TcpStream {
    socket.connect(port).await.expect("connect")
}

// The current-thread runtime runs the relay's tasks on this thread, where
// the subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn at_the_budget_and_at_emfile_connections_are_reset_and_the_relay_recovers() {
    let (lines, _guard) = capture_warnings();
    let echo = echo_server().await;

    // The relay's own budget: 1 listener + 2 connections of 2 files each.
    let relay = Relay::new(RelayConfig {
        max_fds: Some(5),
        splice: SpliceMode::Never,
        shutdown_grace: Duration::from_millis(100),
        ..RelayConfig::default()
    });
    let port = add(&relay, 1, Protocol::Tcp, echo, &Limit::unlimited()).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(port).await.expect("connect");
        round_trip(&mut s, b"held").await;
        held.push(s);
    }
    for _ in 0..3 {
        let mut s = TcpStream::connect(port).await.expect("connect");
        assert!(refused(&mut s).await, "over the budget: reset at once");
    }
    let budget = lines.matching("relay reached its limit of 5 open files");
    assert_eq!(budget.len(), 1, "one warning per episode: {budget:?}");
    assert!(
        budget[0].contains("LimitNOFILE=") && budget[0].contains("[relay] max_connections"),
        "names how to raise it: {}",
        budget[0]
    );
    held.pop();
    eventually("a connection closed", || {
        relay.relay_stats().fds.active == 3
    })
    .await;
    let mut s = TcpStream::connect(port).await.expect("connect");
    round_trip(&mut s, b"served again").await;
    drop((s, held));
    relay.shutdown().await;

    // No budget, and the process at its limit of open files.
    let relay = Relay::new(RelayConfig {
        splice: SpliceMode::Never,
        shutdown_grace: Duration::from_millis(100),
        ..RelayConfig::default()
    });
    let port = add(&relay, 1, Protocol::Tcp, echo, &Limit::unlimited()).await;
    let other = add(&relay, 2, Protocol::Tcp, echo, &Limit::unlimited()).await;
    // Made now: connecting them later takes no new descriptor.
    let mut sockets: Vec<TcpSocket> = (0..5)
        .map(|_| TcpSocket::new_v4().expect("socket"))
        .collect();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(port).await.expect("connect");
        round_trip(&mut s, b"held").await;
        held.push(s);
    }
    let highest = std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("some fd");
    use rustix::process::{Resource, getrlimit, setrlimit};
    let saved = getrlimit(Resource::Nofile);
    let mut low = saved;
    low.current = Some(highest + 32);
    setrlimit(Resource::Nofile, low).expect("lower RLIMIT_NOFILE");
    // Every descriptor left is taken: the next accept fails with EMFILE.
    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
    }
    // Kept open: closing them would give the relay descriptors back (they
    // are this process's too), and the point is that it has none.
    let mut refusals = Vec::new();
    for port in [port, port, port, other] {
        let socket = sockets.pop().expect("socket");
        let mut s = connect(socket, port).await;
        assert!(refused(&mut s).await, "at EMFILE: reset at once");
        refusals.push(s);
    }
    let emfile = lines.matching("open-file limit reached");
    assert_eq!(
        emfile.len(),
        1,
        "one warning per episode, whichever listener: {emfile:?}"
    );
    assert!(
        emfile[0].contains(&format!("RLIMIT_NOFILE={}", highest + 32))
            && emfile[0].contains("LimitNOFILE=")
            && emfile[0].contains("[relay] max_connections"),
        "names the limit and how to raise it: {}",
        emfile[0]
    );
    let stats = relay.stats(ListenerId(1)).expect("stats");
    assert_eq!((stats.refused, stats.active), (3, 3), "{stats:?}");
    // Connections close: the relay serves again, with nobody's help.
    drop((held, refusals));
    eventually("held connections closed", || {
        relay.stats(ListenerId(1)).is_some_and(|s| s.active == 0)
    })
    .await;
    let socket = sockets.pop().expect("socket");
    let mut s = connect(socket, port).await;
    round_trip(&mut s, b"served again").await;
    drop((s, filler));
    setrlimit(Resource::Nofile, saved).expect("restore RLIMIT_NOFILE");
    relay.shutdown().await;
}
