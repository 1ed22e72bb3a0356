//! One warning per episode of refusals, checked on what the relay logs.
//!
//! Alone in its test binary on purpose: `tracing` caches per call site
//! whether anyone listens, and a test on another thread with no subscriber
//! hitting the same `warn!` first would make this one miss its lines.

use std::time::Duration;

use navigator_relay::{Limit, Protocol, Relay, RelayConfig};
use tokio::net::TcpStream;

mod support;
use support::{add, capture_warnings, closed, echo_server, round_trip};

// The current-thread runtime runs the relay's tasks on this thread, where
// the subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn a_limit_hit_is_logged_once_per_episode() {
    let (lines, _guard) = capture_warnings();
    let relay = Relay::new(RelayConfig {
        max_connections: Some(1),
        shutdown_grace: Duration::from_millis(100),
        ..RelayConfig::default()
    });
    let echo = echo_server().await;
    let forward = Limit::new("forward f", "[relay] max_connections_per_forward", Some(1));
    let port = add(&relay, 1, Protocol::Tcp, echo, &forward).await;
    let other = add(&relay, 2, Protocol::Tcp, echo, &Limit::unlimited()).await;
    let mut held = TcpStream::connect(port).await.expect("held");
    round_trip(&mut held, b"x").await;
    for _ in 0..10 {
        let mut s = TcpStream::connect(port).await.expect("connect");
        assert!(closed(&mut s).await);
        let mut s = TcpStream::connect(other).await.expect("connect");
        assert!(closed(&mut s).await);
    }
    let text = lines.text();
    let warnings: Vec<_> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(
        warnings[0].contains("forward f reached its limit of 1 concurrent TCP connections")
            && warnings[0].contains("[relay] max_connections_per_forward"),
        "{text}"
    );
    assert!(
        warnings[1].contains("relay reached its limit of 1 TCP connections")
            && warnings[1].contains("[relay] max_connections"),
        "{text}"
    );
    relay.shutdown().await;
}
