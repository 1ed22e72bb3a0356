//! The API listener against hostile clients, over real sockets: the server's
//! own accept loop (`navigator_server::http`) serves the real router (store,
//! agent and relay in process) on loopback, and raw `TcpStream`s play the
//! clients: silent, slow, idle, too many, too fast.
//!
//! Timeouts are 1-4 s and every wait is a poll with a generous deadline, so
//! a loaded machine makes the tests slower, not flaky.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use navigator_server::config::Config;
use navigator_server::http::{Limits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

#[path = "support/stack.rs"]
mod stack;

/// How long any "closed by the server" may take at most on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    _stack: stack::Stack,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config_text: &str, limits: Limits) -> Server {
    let config = Config::parse("limits.conf", config_text).unwrap();
    let stack = stack::start(config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        stack.app.clone(),
        limits,
        shutdown.clone(),
        Duration::from_secs(2),
    ));
    Server {
        addr,
        shutdown,
        _stack: stack,
    }
}

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(4),
        max_connections: 64,
    }
}

/// Waits until the server closes `stream` (EOF or reset), returning how long
/// that took; panics after [`PATIENCE`]. Whatever the server sent first is
/// returned too.
async fn closed_within(stream: &mut TcpStream) -> (Duration, String) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "connection still open after {PATIENCE:?}; read {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    started.elapsed(),
                    String::from_utf8_lossy(&seen).into_owned(),
                );
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// One response read off a kept-alive connection: status line, headers and
/// a body of Content-Length bytes.
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while data.len() < end + 4 + length {
                let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
                    .await
                    .expect("body in time")
                    .expect("read body");
                assert!(n > 0, "EOF inside the body");
                data.extend_from_slice(&buf[..n]);
            }
            let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
            let status = head[9..12].parse().expect("status code");
            return (status, head, body);
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(
            n > 0,
            "EOF before a response: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    }
}

/// A connection from `source` (an address of 127.0.0.0/8).
async fn connect_from(server: SocketAddr, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Project-Id: p1\r\n\r\n")
}

/// `GET path` on a new connection from `source`: status, head, body.
async fn request_from(server: SocketAddr, source: &str, path: &str) -> (u16, String, String) {
    let mut stream = connect_from(server, source).await;
    stream.write_all(get(path).as_bytes()).await.unwrap();
    read_response(&mut stream).await
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let server = start("", limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let (took, sent) = closed_within(&mut stream).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    assert_eq!(sent, "");
}

#[tokio::test]
async fn half_the_headers_then_closed_even_when_trickled() {
    let server = start("", limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Wait first: the header timeout counts from the first byte, not from
    // connecting, so this idle half-second is not held against the request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream
        .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let first_byte = Instant::now();
    // One more header byte every 200 ms does not extend the deadline.
    let trickle = async {
        for byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(PATIENCE, trickle).await;
    let (_, sent) = closed_within(&mut stream).await;
    let took = first_byte.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "closed {took:?} after the first byte"
    );
    assert_eq!(sent, "", "nothing is answered to half a request");
}

#[tokio::test]
async fn half_a_body_is_answered_408_and_closed() {
    let server = start("", limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/forwards HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Project-Id: p1\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"forward\": ",
        )
        .await
        .unwrap();
    let sent_at = Instant::now();
    let (status, head, body) = read_response(&mut stream).await;
    assert_eq!(status, 408, "{head}\n{body}");
    assert!(sent_at.elapsed() >= Duration::from_millis(900));
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], 408, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    closed_within(&mut stream).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let server = start("", limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(get("/healthcheck").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.0, 200);
    // Idle longer than the header timeout (1 s) but within the keep-alive
    // timeout (4 s): the connection is still served.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stream
        .write_all(get("/healthcheck").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.0, 200);
    let (took, sent) = closed_within(&mut stream).await;
    assert!(took >= Duration::from_millis(3900), "closed after {took:?}");
    assert_eq!(sent, "");
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

#[tokio::test]
async fn a_flood_of_idle_sockets_beyond_the_cap_is_refused_and_service_resumes() {
    const CAP: usize = 4;
    const FLOOD: usize = 40;
    let server = start(
        "",
        Limits {
            max_connections: CAP,
            ..limits()
        },
    )
    .await;
    let baseline = open_files();
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // The first CAP are held (idle); the others are answered 503 and closed
    // at once, well before any timeout.
    let mut refused = 0;
    for stream in flood.iter_mut().skip(CAP) {
        let (took, sent) = closed_within(stream).await;
        assert!(took < Duration::from_millis(900), "refusal took {took:?}");
        assert!(sent.starts_with("HTTP/1.1 503"), "{sent}");
        refused += 1;
    }
    assert_eq!(refused, FLOOD - CAP);
    // Our FLOOD client sockets, at most CAP server sides, and a few for the
    // store and the timers; without the cap the server side would be FLOOD.
    let during = open_files();
    assert!(
        during <= baseline + FLOOD + CAP + 8,
        "{during} open files with a baseline of {baseline}"
    );
    // Once the held ones time out (header timeout), a request is served.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(get("/healthcheck").as_bytes())
            .await
            .unwrap();
        let (status, head, _) = read_response(&mut stream).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{head}");
        assert!(
            Instant::now() < deadline,
            "still refused after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for stream in flood.iter_mut().take(CAP) {
        closed_within(stream).await;
    }
}

#[tokio::test]
async fn a_burst_beyond_the_rate_limit_gets_429_and_other_clients_do_not() {
    let server = start("[api]\nrate_limit = 1\nrate_limit_burst = 5\n", limits()).await;
    for n in 0..5 {
        let (status, head, body) = request_from(server.addr, "127.0.0.1", "/v1/forwards").await;
        assert_eq!(status, 200, "request {n}: {head}\n{body}");
    }
    let (status, head, body) = request_from(server.addr, "127.0.0.1", "/v1/forwards").await;
    assert_eq!(status, 429, "{head}");
    let retry_after: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], 429, "{body}");
    assert_eq!(body["error"]["title"], "Too Many Requests");

    // Another address has its own budget, and monitoring has its own too.
    let (status, ..) = request_from(server.addr, "127.0.0.2", "/v1/forwards").await;
    assert_eq!(status, 200);
    let (status, ..) = request_from(server.addr, "127.0.0.1", "/healthcheck").await;
    assert_eq!(status, 200);

    // The budget refills at rate_limit per second.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, ..) = request_from(server.addr, "127.0.0.1", "/v1/forwards").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    let server = start("", limits()).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(get("/healthcheck").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.0, 200);
    server.shutdown.cancel();
    let (took, _) = closed_within(&mut idle).await;
    assert!(
        took < Duration::from_secs(1),
        "idle connection closed after {took:?}"
    );
    // The listener is gone.
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(server.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
