//! The API's HTTP/1 listener: our own accept loop over hyper instead of
//! `axum::serve`, so that a hostile client cannot hold the process's open
//! files. Per connection it enforces
//!
//! - a header timeout (`[api] header_timeout`): a connection that sends
//!   nothing, or a request line and headers that do not complete in time
//!   (counted from their first byte), is closed;
//! - a body timeout (`[api] body_timeout`): the whole request body must
//!   arrive within it once the headers are in, else HTTP 408 and close;
//! - a keep-alive timeout (`[api] keepalive_timeout`): an idle connection
//!   waiting for its next request is closed;
//!
//! and, for the listener, a cap on concurrent connections
//! (`[api] max_connections`): beyond it a new connection gets a short 503
//! (over TLS: nothing) and is closed at once, logged once per burst. Accept errors (EMFILE…)
//! pause the loop briefly instead of spinning it.
//!
//! With `[ssl]` ([`crate::tls`]) the TLS handshake runs in the connection's
//! own task, after the connection counted against the cap, and must finish
//! within the header timeout (counted from the connection's accept, which
//! also bounds its first request's headers): a client that opens TCP and
//! never completes a handshake is closed like one that never sends a request.
//!
//! Each request carries the peer's address as `ConnectInfo<SocketAddr>`,
//! for the rate limiter ([`crate::ratelimit`]), and [`ServedOverTls`] when it
//! came over TLS (the dashboard's cookies are then `Secure`).
//!
//! Shutdown: stop accepting, let requests in flight finish (idle connections
//! are closed at once), and cut what is left after the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, header};
use axum::response::IntoResponse;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::error::ApiError;

/// Timeouts and the connection cap of the listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
}

/// Marks a request that arrived over the listener's TLS.
#[derive(Clone, Copy, Debug)]
pub struct ServedOverTls;

/// Pause after an accept error, so a persistent one (out of fds) does not
/// spin the CPU.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// A burst of refusals (or accept errors) ends after this long without one.
const BURST_GAP: Duration = Duration::from_secs(10);
/// What a connection over the cap reads before it is closed: an OpenStack
/// error body, written once without waiting (the socket's buffer is empty).
fn over_capacity() -> &'static [u8] {
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    RESPONSE.get_or_init(|| {
        let body = serde_json::json!({"error": {
            "code": 503,
            "title": "Service Unavailable",
            "message": "too many connections to the API; retry in a moment",
        }})
        .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
             Connection: close\r\nRetry-After: 1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in flight
/// finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    serve_tls(listener, app, limits, None, shutdown, grace).await;
}

/// [`serve`], over TLS when `tls` is given.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    // Cancelled when the grace period is over: cuts what is left.
    let cut = CancellationToken::new();
    let refusals = Burst::default();
    let accept_errors = Burst::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // One connection's trouble, nothing to wait for.
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionAborted
                    || e.kind() == io::ErrorKind::ConnectionReset =>
            {
                continue;
            }
            Err(e) => {
                if accept_errors.starts() {
                    let limit = navigator_agent::fd_budget::nofile_limit()
                        .map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
                    tracing::warn!(error = %e, "the API cannot accept connections (RLIMIT_NOFILE={limit}); retrying (logged once per burst)");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Closed at once rather than left in the backlog: the file is
            // held for microseconds, and clients are told to come back
            // instead of queueing behind the connections that fill the cap.
            if refusals.starts() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "the API has {} connections open, its limit: refusing new ones with 503 \
                     (logged once per burst); raise [api] max_connections if this is legitimate load",
                    limits.max_connections
                );
            }
            // Over TLS a plain-text 503 would only be a protocol error to
            // the client, and a handshake to say it costs what the cap
            // protects: the connection is just closed.
            if tls.is_none() {
                let _ = stream.try_write(over_capacity());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            peer,
            app.clone(),
            limits,
            tls.clone(),
            permit,
            shutdown.clone(),
            cut.clone(),
        ));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::info!(
            connections = connections.len(),
            "shutdown grace elapsed; closing the remaining API connections"
        );
        cut.cancel();
        connections.wait().await;
    }
}

/// Logs once per burst: [`Burst::starts`] is true on the first event after
/// [`BURST_GAP`] without one.
#[derive(Default)]
struct Burst {
    last_ms: AtomicU64,
}

impl Burst {
    fn starts(&self) -> bool {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1;
        let prev = self.last_ms.swap(now, Ordering::Relaxed);
        prev == 0 || now.saturating_sub(prev) >= BURST_GAP.as_millis() as u64
    }
}

/// Where a connection is between requests, which decides its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request: no byte of it yet. `first` = no request served
    /// on this connection yet (header timeout), else keep-alive timeout.
    Waiting { first: bool },
    /// Bytes of a request arrived; its headers are not complete.
    Headers,
    /// A request is in the application (its body has its own deadline).
    Busy,
}

/// The connection's phase, shared by the I/O wrapper, the service and the
/// watchdog.
struct Activity {
    state: Mutex<(Phase, Instant)>,
    changed: Notify,
}

impl Activity {
    fn set(&self, phase: Phase) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = (phase, Instant::now());
        self.changed.notify_one();
    }

    fn get(&self) -> (Phase, Instant) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: if the connection was waiting, a request has begun.
    fn bytes_arrived(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(state.0, Phase::Waiting { .. }) {
            *state = (Phase::Headers, Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }
}

/// Resolves when the connection has overstayed its phase's timeout.
async fn watchdog(activity: &Activity, limits: Limits) -> &'static str {
    loop {
        let changed = activity.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (phase, since) = activity.get();
        let (timeout, why) = match phase {
            Phase::Busy => {
                changed.await;
                continue;
            }
            Phase::Waiting { first: true } => (
                limits.header_timeout,
                "no request within the header timeout",
            ),
            Phase::Waiting { first: false } => {
                (limits.keepalive_timeout, "idle past the keep-alive timeout")
            }
            Phase::Headers => (
                limits.header_timeout,
                "headers incomplete within the header timeout",
            ),
        };
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep_until(since + timeout) => {
                if activity.get() == (phase, since) {
                    return why;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    // Held until the connection ends, handshake included.
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
    cut: CancellationToken,
) {
    let accepted = Instant::now();
    let Some(tls) = tls else {
        return serve_connection(stream, peer, app, limits, accepted, false, shutdown, cut).await;
    };
    let handshake = tokio::time::timeout_at(accepted + limits.header_timeout, tls.accept(stream));
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "closing API connection: TLS handshake incomplete within the header timeout");
                return;
            }
        },
        // Nothing was asked of this connection yet: nothing to finish.
        () = shutdown.cancelled() => return,
        () = cut.cancelled() => return,
    };
    serve_connection(stream, peer, app, limits, accepted, true, shutdown, cut).await;
}

/// Serves HTTP/1 on one accepted (and, over TLS, handshaken) connection.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    accepted: Instant,
    over_tls: bool,
    shutdown: CancellationToken,
    cut: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The first request's header timeout counts from the accept, so the
    // TLS handshake spends of the same budget.
    let activity = Arc::new(Activity {
        state: Mutex::new((Phase::Waiting { first: true }, accepted)),
        changed: Notify::new(),
    });
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
    });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let app = app.clone();
            let activity = Arc::clone(&activity);
            async move {
                Ok::<_, Infallible>(handle(app, request, peer, over_tls, limits, activity).await)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our watchdog times headers (and idle keep-alive) itself; hyper's own
    // header timeout would also close idle keep-alive connections early.
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "API connection ended with an error");
                }
                return;
            }
            why = watchdog(&activity, limits) => {
                tracing::debug!(%peer, "closing API connection: {why}");
                return;
            }
            () = shutdown.cancelled(), if !shutting_down => {
                // Closes the connection once the request in flight (if any)
                // is answered.
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            () = cut.cancelled() => return,
        }
    }
}

/// One request: the peer's address for the rate limiter, the body deadline,
/// and the connection's phase around the application.
async fn handle(
    app: Router,
    request: Request<Incoming>,
    peer: SocketAddr,
    over_tls: bool,
    limits: Limits,
    activity: Arc<Activity>,
) -> Response<Body> {
    activity.set(Phase::Busy);
    let timed_out = Arc::new(AtomicBool::new(false));
    let mut request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Instant::now() + limits.body_timeout,
            sleep: None,
            timed_out: Arc::clone(&timed_out),
        })
    });
    request.extensions_mut().insert(ConnectInfo(peer));
    if over_tls {
        request.extensions_mut().insert(ServedOverTls);
    }
    // The router's error type is Infallible.
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    // Back to waiting even if hyper is still writing the response: a client
    // that does not read it is idle, and the keep-alive timeout closes it.
    activity.set(Phase::Waiting { first: false });
    if timed_out.load(Ordering::Acquire) {
        let mut response = ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s ([api] body_timeout)",
            limits.body_timeout.as_secs()
        ))
        .into_response();
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return response;
    }
    response
}

/// A request body that fails once `deadline` passes before its end. The
/// timer exists only while the body is being waited for, so requests
/// without a body never arm one.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

/// The error a late body ends with (the response becomes 408).
#[derive(Debug, thiserror::Error)]
#[error("request body timeout")]
struct BodyTimeout;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.timed_out.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's stream (TCP, or TLS over it: then bytes are counted
/// once decrypted), telling [`Activity`] when bytes arrive.
struct Watched<S> {
    stream: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
