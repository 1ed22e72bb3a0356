//! UDP listener: one socket per listener, a session per client address with its own
//! connected upstream socket (so replies can be routed back to the right client),
//! idle expiry and a session cap.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::debug;

use crate::tcp::{is_fd_limit, warn_fd_limit};
use crate::{ActiveGuard, ListenerShared, RelayConfig};

/// Largest UDP payload (IPv4 limit; IPv6 jumbograms are not relayed).
const MAX_DATAGRAM: usize = 65_507;

pub(crate) fn bind(addr: SocketAddr, freebind: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if freebind {
        crate::tcp::set_freebind(&socket, addr)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// One client's session. Dropping it cancels its reply task.
struct Session {
    id: u64,
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the listener's epoch of the last datagram either way.
    last_activity: Arc<AtomicU64>,
    _stop: DropGuard,
}

type Table = Arc<Mutex<HashMap<SocketAddr, Session>>>;

fn lock(t: &Table) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Session>> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) async fn serve(
    socket: UdpSocket,
    shared: Arc<ListenerShared>,
    config: RelayConfig,
    cancel: CancellationToken,
) -> Option<std::os::fd::OwnedFd> {
    let socket = Arc::new(socket);
    let table: Table = Arc::new(Mutex::new(HashMap::new()));
    let epoch = Instant::now();
    let mut next_id = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = shared.options_changed.notified() => {
                // The allowlist changed: clients it no longer allows lose
                // their sessions (dropping one cancels its reply task).
                let mut table = lock(&table);
                let before = table.len();
                table.retain(|client, _| shared.allows(client.ip()));
                let ended = before - table.len();
                shared.denied.fetch_add(ended as u64, Ordering::Relaxed);
                debug!(listen = %shared.listen, sessions = ended, "allowlist changed: UDP sessions of clients no longer allowed ended");
                continue;
            }
            () = shared.retargeted.notified() => {
                // Sessions are connected to the old target; drop them so the next
                // datagram of each client opens a session toward the new one.
                let dropped = std::mem::take(&mut *lock(&table));
                debug!(listen = %shared.listen, sessions = dropped.len(), "retarget: dropping UDP sessions");
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ECONNREFUSED etc. can surface on an unconnected socket after ICMP; it
                // concerns one peer only.
                Err(e) => {
                    debug!(listen = %shared.listen, error = %e, "udp recv error");
                    continue;
                }
            },
        };
        let now_ms = epoch.elapsed().as_millis() as u64;
        let existing = lock(&table).get(&client).map(|s| {
            s.last_activity.store(now_ms, Ordering::Relaxed);
            Arc::clone(&s.upstream)
        });
        let upstream = match existing {
            Some(u) => u,
            None => {
                if !shared.allows(client.ip()) {
                    shared.denied.fetch_add(1, Ordering::Relaxed);
                    debug!(listen = %shared.listen, %client, "client not in the allowlist; datagram dropped");
                    continue;
                }
                let Some(guard) = ActiveGuard::try_acquire(&shared) else {
                    debug!(listen = %shared.listen, %client, "udp session limit reached; dropping datagram");
                    continue;
                };
                let target = shared.target();
                let upstream = match connect_upstream(target).await {
                    Ok(u) => Arc::new(u),
                    Err(e) => {
                        shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                        if is_fd_limit(&e) {
                            warn_fd_limit(&shared, &e);
                        } else {
                            debug!(%client, %target, error = %e, "udp upstream socket failed");
                        }
                        continue;
                    }
                };
                shared.admitted();
                next_id += 1;
                let stop = shared.conn_cancel.child_token();
                let last_activity = Arc::new(AtomicU64::new(now_ms));
                let session = Session {
                    id: next_id,
                    upstream: Arc::clone(&upstream),
                    last_activity: Arc::clone(&last_activity),
                    _stop: stop.clone().drop_guard(),
                };
                lock(&table).insert(client, session);
                debug!(listen = %shared.listen, %client, %target, "udp session opened");
                shared.tasks.spawn(replies(ReplyTask {
                    id: next_id,
                    client,
                    upstream: Arc::clone(&upstream),
                    socket: Arc::clone(&socket),
                    table: Arc::clone(&table),
                    last_activity,
                    epoch,
                    timeout: config.udp_idle_timeout,
                    stop,
                    guard,
                }));
                upstream
            }
        };
        // A direct non-blocking send rather than tokio's `try_send`: a freshly created
        // socket has no writable readiness recorded yet, so `try_send` would drop the
        // first datagram. The main loop must not await one session's socket either.
        match socket2::SockRef::from(&*upstream).send(&buf[..n]) {
            Ok(_) => shared
                .bytes_to_target
                .fetch_add(n as u64, Ordering::Relaxed),
            // UDP may drop; a full socket buffer or a refused port is not worth a session.
            Err(e) => {
                debug!(%client, error = %e, "udp send to target failed; datagram dropped");
                0
            }
        };
    }
    // Dropping the table cancels all sessions of this listener.
    lock(&table).clear();
    // Handing over: a second descriptor of the socket outlives this task
    // (session tasks may still hold the first), for the next process.
    if shared.handover.active() {
        use std::os::fd::AsFd;
        return socket.as_fd().try_clone_to_owned().ok();
    }
    None
}

async fn connect_upstream(target: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(target).await?;
    Ok(s)
}

struct ReplyTask {
    id: u64,
    client: SocketAddr,
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    table: Table,
    last_activity: Arc<AtomicU64>,
    epoch: Instant,
    timeout: std::time::Duration,
    stop: CancellationToken,
    guard: ActiveGuard,
}

/// Forwards target → client datagrams and expires the session when idle.
async fn replies(t: ReplyTask) {
    let shared = &t.guard.0;
    loop {
        let deadline = t.epoch
            + std::time::Duration::from_millis(t.last_activity.load(Ordering::Relaxed))
            + t.timeout;
        tokio::select! {
            () = t.stop.cancelled() => return, // already removed from the table
            () = tokio::time::sleep_until(deadline) => {
                let last = t.epoch + std::time::Duration::from_millis(t.last_activity.load(Ordering::Relaxed));
                if Instant::now() >= last + t.timeout {
                    break;
                }
            }
            r = t.upstream.readable() => {
                if r.is_err() {
                    break;
                }
                if !forward_replies(&t).await {
                    break;
                }
            }
        }
    }
    // Remove our own entry only: the client may already have a newer session.
    let mut table = lock(&t.table);
    if table.get(&t.client).is_some_and(|s| s.id == t.id) {
        table.remove(&t.client);
    }
    debug!(listen = %shared.listen, client = %t.client, "udp session closed");
}

/// Drains the upstream socket. The buffer lives only while datagrams are pending, so
/// thousands of idle sessions do not each pin 64 KiB. Returns false if the session
/// should end.
async fn forward_replies(t: &ReplyTask) -> bool {
    let shared = &t.guard.0;
    let mut buf = Vec::with_capacity(MAX_DATAGRAM);
    loop {
        buf.clear();
        match t.upstream.try_recv_buf(&mut buf) {
            Ok(n) => {
                t.last_activity
                    .store(t.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                match t.socket.send_to(&buf[..n], t.client).await {
                    Ok(_) => {
                        shared
                            .bytes_from_target
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => debug!(client = %t.client, error = %e, "udp send to client failed"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            // ICMP port unreachable from the target: keep the session, the target may come back.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return true,
            Err(e) => {
                debug!(client = %t.client, error = %e, "udp recv from target failed");
                return false;
            }
        }
    }
}
