//! TCP listener: binding, the accept loop (resilient to fd exhaustion), the
//! allowlist and connection limits, and the per-connection task (connect,
//! PROXY protocol header, copy, re-check when the allowlist changes).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
/// With `freebind`, the address need not be on the host yet (`IP_FREEBIND`,
/// no `ip_nonlocal_bind` sysctl needed).
pub(crate) fn bind(addr: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if freebind {
        set_freebind(&socket, addr)?;
    }
    // Nagle would add up to 40 ms to every small write the relay forwards. Set
    // on the listener, it is inherited by every accepted socket (Linux copies
    // it): one setsockopt per connection fewer.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// `IP_FREEBIND` (IPv4) or `IPV6_FREEBIND` (IPv6): bind an address this
/// host does not hold (yet).
pub(crate) fn set_freebind(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)
    } else {
        socket.set_freebind_v6(true)
    }
}

pub(crate) fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == rustix::io::Errno::MFILE.raw_os_error() || c == rustix::io::Errno::NFILE.raw_os_error())
}

/// Counts a refusal at the process's open-file limit and logs the warning
/// once per episode of them, for the whole relay ([`crate::limits::EPISODE_GAP`]
/// without one ends it). At the limit every accept fails, so logging each
/// would flood the log exactly when the operator needs to read it. It names
/// the limit in force and the relay's own budget, which should have refused
/// first: reaching the process's limit means the budget does not fit (or
/// another part of the process holds descriptors).
pub(crate) fn warn_fd_limit(shared: &ListenerShared, e: &io::Error) {
    if shared.caps.fd_limit.refuse() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let limit = limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
        let fds = shared.caps.fds.counts();
        let refusing = match shared.protocol {
            crate::Protocol::Tcp => "resetting new connections",
            crate::Protocol::Udp => "dropping the datagrams of new sessions",
        };
        let budget = fds
            .max
            .map_or_else(|| "no budget".to_owned(), |m| format!("a budget of {m}"));
        warn!(listen = %shared.listen, error = %e,
            "open-file limit reached (RLIMIT_NOFILE={limit}; the relay counts {} open files of its own, {budget}): \
             {refusing} on {} and any other listener (one warning per episode); raise LimitNOFILE= in the \
             systemd unit (ulimit -n), or lower [relay] max_connections so that the relay's own cap \
             refuses them first",
            fds.active, shared.listen);
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    config: RelayConfig,
    cancel: CancellationToken,
    pipes: Arc<PipePool>,
) -> Option<std::os::fd::OwnedFd> {
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
                // Reset the pending connection with the relay's spare
                // descriptor rather than leave it (and the backlog behind it)
                // unanswered; then the next one.
                if shared.caps.spare.refuse_one(&listener) {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
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
    // Handing over: the socket stays open for the next process, with the
    // connections the kernel completes into its backlog meanwhile.
    if shared.handover.active() {
        return listener.into_std().ok().map(Into::into);
    }
    None
}

/// Resumes connections a previous process handed over
/// ([`crate::handover`]) on the listener that took their listening socket:
/// each under the listener's limits (one that no longer fits is closed),
/// with the copy engine of this relay and the direction states it had.
pub(crate) fn resume(
    shared: &Arc<ListenerShared>,
    conns: Vec<crate::handover::InheritedConn>,
    config: &RelayConfig,
    pipes: &Arc<PipePool>,
) {
    let config = Arc::new(config.clone());
    for c in conns {
        let Some(guard) = ActiveGuard::try_acquire(shared) else {
            warn!(listen = %shared.listen, "an inherited connection does not fit the limits any more; closing it");
            continue;
        };
        let streams = (|| -> io::Result<_> {
            c.client.set_nonblocking(true)?;
            c.upstream.set_nonblocking(true)?;
            let client = TcpStream::from_std(c.client.into())?;
            let upstream = TcpStream::from_std(c.upstream.into())?;
            let peer = client.peer_addr()?;
            Ok((client, upstream, peer))
        })();
        let (client, upstream, peer) = match streams {
            Ok(s) => s,
            Err(e) => {
                debug!(listen = %shared.listen, error = %e, "an inherited connection is gone");
                continue;
            }
        };
        let conn = Conn {
            copier: Copier::resumed(config.splice, c.done, c.bytes),
            client,
            upstream: Some(upstream),
            guard,
            pipes: Arc::clone(pipes),
            config: Arc::clone(&config),
            ip: peer.ip(),
            port: peer.port(),
            seen: 0,
            active_tick: 0,
        };
        shared.tasks.spawn(relay(conn));
    }
}

/// The task of one admitted connection.
///
/// Its future lives as long as the connection, idle ones included, and tokio
/// allocates it in steps of 128 bytes, so what it holds across the copy is kept
/// to what the steady state needs, in one [`Conn`] made before the future (an
/// `async fn`'s arguments stay in its future even once moved out): the client's
/// address as an IP and a port (the allowlist re-check needs the IP), the
/// connect and PROXY header steps in a boxed future freed before the copy
/// starts, the idle timer only when configured, and the log lines at the end
/// ask the sockets for their addresses (only when debug logging is on).
/// `connection_future_stays_small` pins the size.
fn connection(
    client: TcpStream,
    peer: SocketAddr,
    guard: ActiveGuard,
    config: Arc<RelayConfig>,
    pipes: Arc<PipePool>,
) -> impl Future<Output = ()> + Send + 'static {
    let conn = Conn {
        copier: Copier::new(config.splice),
        client,
        upstream: None,
        guard,
        pipes,
        config,
        ip: peer.ip(),
        port: peer.port(),
        seen: 0,
        active_tick: 0,
    };
    relay(conn)
}

/// What a relayed connection holds while it lasts.
struct Conn {
    client: TcpStream,
    /// Set once connected.
    upstream: Option<TcpStream>,
    copier: Copier,
    guard: ActiveGuard,
    pipes: Arc<PipePool>,
    config: Arc<RelayConfig>,
    ip: IpAddr,
    port: u16,
    /// The copier's progress (truncated) at the idle clock's tick
    /// `active_tick`: the idle timeout needs no timer of its own.
    seen: u32,
    active_tick: u32,
}

impl Conn {
    fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// Copies until the end, a cut (`cancelled`) or the idle timeout.
    fn poll_copy(
        &mut self,
        cx: &mut std::task::Context<'_>,
        cancelled: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Poll<End> {
        if cancelled.poll(cx).is_ready() {
            return Poll::Ready(End::Cut);
        }
        let Some(upstream) = &self.upstream else {
            return Poll::Ready(End::Cut);
        };
        let shared = &self.guard.0;
        let r = self.copier.poll(
            cx,
            &self.client,
            upstream,
            &self.pipes,
            [&shared.bytes_to_target, &shared.bytes_from_target],
        );
        if let Poll::Ready(r) = r {
            return Poll::Ready(End::Copied(r));
        }
        Poll::Pending
    }

    /// At a tick of the listener's idle clock (or any other wake-up of the
    /// loop): whether no payload moved for `IDLE_TICKS` whole ticks, that is
    /// for at least the idle timeout.
    fn idle_expired(&mut self) -> bool {
        if self.config.tcp_idle_timeout.is_none() {
            return false;
        }
        let now = self.guard.0.idle_ticks.load(Ordering::Acquire);
        // Truncated: what matters is whether it moved.
        let progress = self.copier.progress() as u32;
        if progress != self.seen {
            self.seen = progress;
            self.active_tick = now;
            return false;
        }
        now.wrapping_sub(self.active_tick) > IDLE_TICKS
    }
}

/// Not an `async fn`: its arguments would be stored twice in the future (as
/// arguments, and as the locals they are moved into); an `async move` block
/// uses its captures in place.
#[allow(clippy::manual_async_fn)]
fn relay(mut conn: Conn) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // Boxed: connecting and the header need timers and cancellation futures
        // for a moment; the task keeps only what the copy needs. A resumed
        // connection is connected already.
        if conn.upstream.is_none() {
            conn.upstream = Box::pin(connect(
                &conn.client,
                conn.peer(),
                &conn.guard.0,
                &conn.config,
            ))
            .await;
            if conn.upstream.is_none() {
                return;
            }
        }
        if let Some(timeout) = conn.config.tcp_idle_timeout {
            idle_ticker(&conn.guard.0, timeout);
            conn.active_tick = conn.guard.0.idle_ticks.load(Ordering::Acquire);
        }
        let end = loop {
            let shared = &conn.guard.0;
            // Taken before the check, so that an allowlist change after the
            // check cancels this token and the loop checks again.
            let cancelled = shared.allow_epoch().cancelled_owned();
            // Likewise: the hand-over is announced before the token is
            // cancelled.
            if shared.handover.active() {
                break End::HandOver;
            }
            if !shared.allows(conn.ip) {
                shared.denied.fetch_add(1, Ordering::Relaxed);
                break End::Denied;
            }
            tokio::pin!(cancelled);
            let end = std::future::poll_fn(|cx| conn.poll_copy(cx, cancelled.as_mut())).await;
            match end {
                // The listener's own cut (removal, shutdown), or an allowlist
                // change or a tick of the idle clock: the loop re-checks the
                // client, and the idle timeout.
                End::Cut if !conn.guard.0.conn_cancel.is_cancelled() => {
                    if conn.idle_expired() {
                        break End::Idle;
                    }
                    continue;
                }
                end => break end,
            }
        };
        if let End::HandOver = end {
            // A task of its own (tracked with the listener's, so the
            // hand-over waits for it): awaited here, its timer would grow
            // every connection's future.
            let tasks = conn.guard.0.tasks.clone();
            tasks.spawn(hand_over(conn));
            return;
        }
        // Asked of the sockets only when debug logging is on.
        let peer = conn.peer();
        let target = || conn.upstream.as_ref().and_then(|u| u.peer_addr().ok());
        match end {
            End::Copied(Ok(())) => {
                debug!(%peer, target = ?target(), bytes = conn.copier.progress(), "connection closed")
            }
            End::Copied(Err(e)) => {
                debug!(%peer, target = ?target(), error = %e, "connection ended with error")
            }
            End::Cut => debug!(%peer, target = ?target(), "connection cut by relay"),
            End::Idle => debug!(%peer, target = ?target(), "idle timeout"),
            End::Denied => {
                debug!(%peer, target = ?target(), "client no longer in the allowlist; resetting");
                let _ = socket2::SockRef::from(&conn.client).set_linger(Some(Duration::ZERO));
            }
            End::HandOver => {}
        }
    }
}

/// Brings a connection to a clean point (nothing read left unwritten) and
/// gives its sockets to the relay's hand-over; counts it as lost when that
/// fails or takes longer than [`crate::handover::FLUSH_BOUND`].
async fn hand_over(conn: Conn) {
    let Conn {
        client,
        upstream,
        mut copier,
        guard,
        pipes,
        ..
    } = conn;
    let shared = &guard.0;
    let Some(upstream) = upstream else { return };
    let flushed = tokio::time::timeout(
        crate::handover::FLUSH_BOUND,
        std::future::poll_fn(|cx| copier.poll_flush(cx, &client, &upstream, &pipes)),
    )
    .await;
    let why = match flushed {
        Ok(Ok(())) => match (client.into_std(), upstream.into_std()) {
            (Ok(client), Ok(upstream)) => {
                shared.handover.push(crate::handover::HandedConn {
                    listener: shared.id,
                    client: client.into(),
                    upstream: upstream.into(),
                    done: copier.done(),
                    bytes: copier.progress(),
                });
                return;
            }
            (Err(e), _) | (_, Err(e)) => e.to_string(),
        },
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!(
            "what it had read could not be written out within {:?}",
            crate::handover::FLUSH_BOUND
        ),
    };
    shared.handover.lost.fetch_add(1, Ordering::Relaxed);
    warn!(listen = %shared.listen, error = %why, "a connection is closed instead of handed over");
}

/// Ticks of the idle clock per idle timeout: a connection is closed after
/// between 1 and 1.25 times the timeout without payload.
const IDLE_TICKS: u32 = 8;

/// Starts the listener's idle clock once, at its first connection with an idle
/// timeout: every `timeout / IDLE_TICKS` it counts a tick and wakes every
/// connection of the listener (as an allowlist change does: the epoch token
/// is replaced and cancelled), each of which then checks whether it moved
/// payload since its last check. One timer per listener instead of one per
/// connection: a timer entry and its bookkeeping were ~170 bytes of every idle
/// connection's memory (and two allocations per connection). It stops when
/// the listener has no connection left, when its connections are cut
/// (removal, shutdown) or when it is gone.
fn idle_ticker(shared: &Arc<ListenerShared>, timeout: Duration) {
    if shared.idle_ticker.swap(true, Ordering::SeqCst) {
        return;
    }
    let weak = Arc::downgrade(shared);
    let tick = (timeout / IDLE_TICKS).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut clock = tokio::time::interval_at(Instant::now() + tick, tick);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            clock.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            if shared.conn_cancel.is_cancelled() {
                return;
            }
            // No connection left: the clock stops, so that a listener costs no
            // task while it carries nothing (100,000 forwards are 100,000
            // listeners or more); the next connection starts it again.
            if shared.active.load(Ordering::SeqCst) == 0 {
                shared.idle_ticker.store(false, Ordering::SeqCst);
                // A connection admitted meanwhile may have seen the flag still
                // set and relied on this clock: keep ticking for it, unless it
                // (or another) has started a clock of its own since.
                if shared.active.load(Ordering::SeqCst) == 0
                    || shared.idle_ticker.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
            shared.idle_ticks.fetch_add(1, Ordering::AcqRel);
            let fresh = shared.conn_cancel.child_token();
            let old = std::mem::replace(
                &mut *shared
                    .allow_epoch
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                fresh,
            );
            old.cancel();
        }
    });
}

/// Connects to the target and writes the PROXY header if configured. `None`:
/// the connection ends here (the reason is logged and counted).
async fn connect(
    client: &TcpStream,
    peer: SocketAddr,
    shared: &ListenerShared,
    config: &RelayConfig,
) -> Option<TcpStream> {
    let cancel = &shared.conn_cancel;
    let target = shared.target();
    let upstream = tokio::select! {
        () = cancel.cancelled() => return None,
        r = tokio::time::timeout(config.connect_timeout, TcpStream::connect(target)) => r,
    };
    let upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            if is_fd_limit(&e) {
                warn_fd_limit(shared, &e);
                // Refused like any connection over a limit: at once.
                let _ = socket2::SockRef::from(client).set_linger(Some(Duration::ZERO));
            } else {
                debug!(%peer, %target, error = %e, "connect to target failed");
            }
            return None;
        }
        Err(_) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, %target, timeout = ?config.connect_timeout, "connect to target timed out");
            return None;
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
                    () = cancel.cancelled() => return None,
                    r = tokio::time::timeout(config.connect_timeout, write_all(&upstream, &bytes)) => {
                        r.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                    }
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            debug!(%peer, %target, error = %e, "cannot write the PROXY protocol header");
            return None;
        }
    }
    debug!(%peer, %target, "relaying");
    Some(upstream)
}

enum End {
    Copied(std::io::Result<()>),
    Cut,
    Idle,
    Denied,
    /// The relay hands its connections over to the next process.
    HandOver,
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
    use crate::{ListenerId, ListenerSpec, Protocol, Relay};

    /// An address group's virtual address is bound before the node holds
    /// it (IP_FREEBIND), and only the addresses given are (TEST-NET-1 is on
    /// no interface of a test host).
    #[tokio::test]
    async fn freebind_binds_an_absent_address_only_when_asked() {
        let absent: SocketAddr = "192.0.2.201:0".parse().expect("address");
        assert!(bind(absent, false).is_err());
        assert!(bind(absent, true).is_ok());
        assert!(crate::udp::bind(absent, false).is_err());
        assert!(crate::udp::bind(absent, true).is_ok());
        let relay = Relay::new(RelayConfig {
            freebind: vec![absent.ip()],
            ..RelayConfig::default()
        });
        let spec = |ip: &str| ListenerSpec {
            protocol: Protocol::Tcp,
            listen: SocketAddr::new(ip.parse().expect("ip"), 0),
            target: "127.0.0.1:9".parse().expect("target"),
            limit: crate::Limit::default(),
            options: crate::ListenerOptions::default(),
        };
        relay
            .add(ListenerId(1), spec("192.0.2.201"))
            .await
            .expect("a virtual address binds");
        assert!(relay.add(ListenerId(2), spec("192.0.2.202")).await.is_err());
    }

    /// TCP_NODELAY is set once, on the listener: the accepted sockets must
    /// inherit it (Linux copies it), or every small write waits on Nagle.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let listener = bind("127.0.0.1:0".parse().expect("address"), false).expect("bind");
        let addr = listener.local_addr().expect("local address");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
    }

    /// Every idle connection carries its task's future for as long as it is
    /// open: this pins its size so that it cannot silently grow back (tokio
    /// rounds a task up to 128 bytes, so each step of 128 is ~128 bytes per
    /// idle connection).
    #[tokio::test]
    async fn connection_future_stays_small() {
        let relay = Relay::new(RelayConfig::default());
        let target = TcpListener::bind("127.0.0.1:0").await.expect("target");
        let spec = ListenerSpec {
            protocol: Protocol::Tcp,
            listen: "127.0.0.1:0".parse().expect("addr"),
            target: target.local_addr().expect("addr"),
            limit: crate::Limit::unlimited(),
            options: crate::ListenerOptions::default(),
        };
        relay.add(ListenerId(1), spec).await.expect("add");
        let shared = Arc::clone(&relay.lock()[&ListenerId(1)].shared);
        let pipes = Arc::clone(&relay.inner.pipes);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let guard = ActiveGuard::try_acquire(&shared).expect("slot");
        let config = Arc::new(RelayConfig::default());
        let future = connection(server, peer, guard, config, pipes);
        let size = std::mem::size_of_val(&future);
        eprintln!("connection future: {size} bytes");
        // 856 bytes (debug) before the connect and header steps were boxed, the
        // connection's state made one struct outside the future and the
        // copier's held buffer or pipe boxed; 288 (debug) and 272 (release)
        // since, which tokio's task header and trailer (112 bytes) make a
        // 384-byte task in release. Each 128 bytes more costs every idle
        // connection 128 bytes.
        assert!(size <= 288, "connection future is {size} bytes");
        drop(future);
        relay.shutdown().await;
    }
}
