//! Loopback echo servers and relay helpers shared by the relay's limit tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use navigator_relay::{Limit, ListenerId, ListenerSpec, Protocol, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub const V4: &str = "127.0.0.1:0";
/// Longest wait for anything the relay does on its own.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind(V4).await.expect("bind echo");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await?;
                io::Result::Ok(())
            });
        }
    });
    a
}

pub async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind(V4).await.expect("bind udp echo");
    let a = s.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    a
}

pub async fn add(
    relay: &Relay,
    id: u128,
    protocol: Protocol,
    target: SocketAddr,
    limit: &Limit,
) -> SocketAddr {
    relay
        .add(
            ListenerId(id),
            ListenerSpec {
                protocol,
                listen: V4.parse().expect("addr"),
                target,
                limit: limit.clone(),
                options: Default::default(),
            },
        )
        .await
        .expect("add listener");
    relay
        .listeners()
        .into_iter()
        .find(|(i, _)| *i == ListenerId(id))
        .expect("listed")
        .1
        .listen
}

pub async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0; msg.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read echo");
    assert_eq!(back, msg);
}

/// Whether the relay closed `s` (EOF or reset) within [`PATIENCE`].
pub async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(PATIENCE, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `tracing` writer collecting what the relay logs, for the tests that
/// check its warnings.
#[derive(Clone, Default)]
pub struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("lines").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lines").clone()).expect("utf-8")
    }

    /// The lines logged so far that contain `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// Collects this thread's WARN lines and above until the guard drops. With
/// a current-thread runtime the relay's tasks run on this thread too.
pub fn capture_warnings() -> (Lines, tracing::subscriber::DefaultGuard) {
    let lines = Lines::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let lines = lines.clone();
            move || lines.clone()
        })
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    (lines, tracing::subscriber::set_default(subscriber))
}
