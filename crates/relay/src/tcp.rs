//! TCP listener: binding, the accept loop (resilient to fd exhaustion), the
//! allowlist and connection limits, and the per-connection task (connect,
//! PROXY protocol header, copy, re-check when the allowlist changes).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::copy::{Copier, PipePool};
use crate::{ActiveGuard, ListenerShared, ProxyHeader, RelayConfig, proxy_protocol};

/// Pause after an accept error before retrying, so a persistent condition
/// (out of fds) does not spin the CPU.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
const BACKLOG: i32 = 1024;

/// SO_REUSEADDR (quick rebinding after TIME_WAIT) but deliberately not SO_REUSEPORT,
/// so binding a port that is already served fails with `AddrInUse`.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    // Nagle would add up to 40 ms to every small write the relay forwards. Set
    // on the listener, it is inherited by every accepted socket (Linux copies
    // it): one setsockopt per connection fewer.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

pub(crate) fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == rustix::io::Errno::MFILE.raw_os_error() || c == rustix::io::Errno::NFILE.raw_os_error())
}

/// A burst of fd-exhaustion errors ends after this long without one.
const FD_BURST_GAP: Duration = Duration::from_secs(10);

/// Logs the out-of-fds warning once per burst: on the first EMFILE/ENFILE after at
/// least `FD_BURST_GAP` without one. At the limit every accept fails, so logging each
/// would flood the log exactly when the operator needs to read it.
pub(crate) fn warn_fd_limit(shared: &ListenerShared, e: &io::Error) {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let now = EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1;
    let prev = shared.last_fd_error_ms.swap(now, Ordering::Relaxed);
    if prev == 0 || now.saturating_sub(prev) >= FD_BURST_GAP.as_millis() as u64 {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let limit = limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
        warn!(listen = %shared.listen, error = %e,
            "open file limit reached (RLIMIT_NOFILE={limit}): refusing new connections on {}; raise the limit",
            shared.listen);
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    config: RelayConfig,
    cancel: CancellationToken,
    pipes: Arc<PipePool>,
) {
    let config = Arc::new(config);
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((client, peer)) => {
                if !shared.allows(peer.ip()) {
                    // Before anything else, the target above all: a refused
                    // client must not make the target see a connection. A
                    // reset (linger 0) tells it at once that nobody serves it.
                    shared.denied.fetch_add(1, Ordering::Relaxed);
                    debug!(listen = %shared.listen, %peer, "client not in the allowlist; resetting");
                    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                    drop(client);
                    continue;
                }
                let Some(guard) = ActiveGuard::try_acquire(&shared) else {
                    // Over a limit: close right away so the client fails fast instead of
                    // hanging in the backlog, where it would also hold the kernel's
                    // memory and make every client behind it wait for a slot.
                    // A reset (linger 0): the client learns at once, and the
                    // relay keeps no TIME_WAIT for a connection it never served.
                    debug!(listen = %shared.listen, %peer, "connection limit reached; resetting");
                    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                    drop(client);
                    continue;
                };
                shared.admitted();
                let task = connection(client, peer, guard, Arc::clone(&config), Arc::clone(&pipes));
                shared.tasks.spawn(task);
            }
            Err(e) if is_fd_limit(&e) => {
                warn_fd_limit(&shared, &e);
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
            // ECONNABORTED and friends concern one connection only; anything else is
            // logged and retried after a pause, never fatal to the listener.
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionAborted
                    || e.kind() == io::ErrorKind::ConnectionReset =>
            {
                debug!(listen = %shared.listen, error = %e, "accept: connection aborted");
            }
            Err(e) => {
                warn!(listen = %shared.listen, error = %e, "accept failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    debug!(listen = %shared.listen, "accept loop stopped");
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    guard: ActiveGuard,
    config: Arc<RelayConfig>,
    pipes: Arc<PipePool>,
) {
    let shared = &guard.0;
    let cancel = shared.conn_cancel.clone();
    let target = shared.target();
    // Boxed: the connect/timeout futures are large and only needed for a moment; the
    // connection task keeps only what the steady state needs.
    let upstream = Box::pin(async {
        tokio::select! {
            () = cancel.cancelled() => None,
            r = tokio::time::timeout(config.connect_timeout, TcpStream::connect(target)) => Some(r),
        }
    })
    .await;
    let Some(upstream) = upstream else { return };
    let upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            if is_fd_limit(&e) {
                warn_fd_limit(shared, &e);
            } else {
                debug!(%peer, %target, error = %e, "connect to target failed");
            }
            return;
        }
        Err(_) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, %target, timeout = ?config.connect_timeout, "connect to target timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let header = shared.options().proxy_header;
    if header != ProxyHeader::None {
        // The client's address and the relay address it reached, before any
        // client byte; the copy (buffered or splice) starts after it.
        let written = match client.local_addr() {
            Ok(local) => {
                let bytes = proxy_protocol::header(header, peer, local);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = tokio::time::timeout(config.connect_timeout, write_all(&upstream, &bytes)) => {
                        r.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                    }
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            debug!(%peer, %target, error = %e, "cannot write the PROXY protocol header");
            return;
        }
    }
    debug!(%peer, %target, "relaying");

    let mut copier = Copier::new(config.splice);
    // Boxed and only when configured: a timer entry is ~100 bytes every idle
    // connection would otherwise carry.
    let mut idle = config
        .tcp_idle_timeout
        .map(|d| (d, Box::pin(tokio::time::sleep(d)), Instant::now(), 0u64));
    let end = loop {
        // Taken before the check, so that an allowlist change after the
        // check cancels this token and the loop checks again.
        let epoch = shared.allow_epoch();
        if !shared.allows(peer.ip()) {
            shared.denied.fetch_add(1, Ordering::Relaxed);
            break End::Denied;
        }
        let cancelled = epoch.cancelled();
        tokio::pin!(cancelled);
        let end = std::future::poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Cut);
            }
            let r = copier.poll(
                cx,
                &client,
                &upstream,
                &pipes,
                [&shared.bytes_to_target, &shared.bytes_from_target],
            );
            if let Poll::Ready(r) = r {
                return Poll::Ready(End::Copied(r));
            }
            if let Some((timeout, sleep, last, seen)) = &mut idle {
                if copier.progress() != *seen {
                    *seen = copier.progress();
                    *last = Instant::now();
                }
                // Re-arm lazily: only when the timer fires do we look at the last activity.
                while sleep.as_mut().poll(cx).is_ready() {
                    let deadline = *last + *timeout;
                    if Instant::now() >= deadline {
                        return Poll::Ready(End::Idle);
                    }
                    sleep.as_mut().reset(deadline);
                }
            }
            Poll::Pending
        })
        .await;
        match end {
            // The listener's own cut (removal, shutdown), or an allowlist
            // change: the loop re-checks the client for the latter.
            End::Cut if !shared.conn_cancel.is_cancelled() => continue,
            end => break end,
        }
    };
    match end {
        End::Copied(Ok(())) => {
            debug!(%peer, %target, bytes = copier.progress(), "connection closed")
        }
        End::Copied(Err(e)) => debug!(%peer, %target, error = %e, "connection ended with error"),
        End::Cut => debug!(%peer, %target, "connection cut by relay"),
        End::Idle => debug!(%peer, %target, "idle timeout"),
        End::Denied => {
            debug!(%peer, %target, "client no longer in the allowlist; resetting");
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        }
    }
}

enum End {
    Copied(std::io::Result<()>),
    Cut,
    Idle,
    Denied,
}

/// Writes all of `buf` to a socket (the PROXY header: one write in practice,
/// the send buffer of a fresh connection being empty).
async fn write_all(s: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TCP_NODELAY is set once, on the listener: the accepted sockets must
    /// inherit it (Linux copies it), or every small write waits on Nagle.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let listener = bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = listener.local_addr().expect("local address");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
    }
}
