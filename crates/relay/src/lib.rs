//! `navigator-relay`: a userspace TCP/UDP port-forwarding relay.
//!
//! It forwards between socket addresses it is given and knows nothing of Navigator.
//! One [`Relay`] (one tokio runtime) serves any number of listeners; each listener
//! forwards one local address to one target address and can be retargeted, resized
//! or removed while running.
//!
//! Each listener also has [`ListenerOptions`], changeable in place: a source
//! [`Allowlist`] (checked before the target is dialled), a second connection
//! cap shared by a group of listeners, and the PROXY protocol header written
//! to the target.
//!
//! A relay can hand its listening sockets and established connections over
//! to the process that replaces it ([`Relay::hand_over`], [`Relay::inherit`];
//! the `handover` module).

mod allow;
mod config;
mod copy;
mod error;
pub mod handover;
mod limits;
mod proxy_protocol;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use allow::{Allowlist, InvalidNetwork};
pub use config::{RelayConfig, SpliceMode};
pub use error::RelayError;
pub use handover::{HANDOVER_VERSION, Handover, HandoverError, Inherited};
pub use limits::{GateStats, Limit};
pub use proxy_protocol::{ProxyHeader, header as proxy_header};

use limits::{Caps, Gate};

/// Transport protocol of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Caller-chosen identity of a listener (e.g. a UUID as `u128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub struct ListenerId(pub u128);

impl fmt::Display for ListenerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What a listener does: accept `protocol` on `listen`, forward to `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    pub protocol: Protocol,
    /// Local address to bind. Port 0 picks a free port; [`Relay::listeners`] then
    /// reports the port actually bound.
    pub listen: SocketAddr,
    pub target: SocketAddr,
    /// Concurrent TCP connections (or UDP sessions) allowed, shared with every
    /// other listener given a clone of the same [`Limit`] (e.g. all ports of one
    /// forward). The relay-wide caps of [`RelayConfig`] apply too.
    pub limit: Limit,
    /// Allowlist, second cap and PROXY header; [`Relay::set_options`] changes them.
    pub options: ListenerOptions,
}

/// What a listener enforces beyond its target, changeable while it runs
/// ([`Relay::set_options`]). The default allows everyone, adds no cap and
/// writes no header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerOptions {
    /// Clients outside it are refused before the target is dialled: a TCP
    /// connection is reset (SO_LINGER 0), a UDP datagram that would open a
    /// session is dropped. Narrowing it also ends the live connections and
    /// sessions of clients it no longer allows.
    pub allow: Allowlist,
    /// A cap of concurrent TCP connections (UDP sessions) on top of
    /// [`ListenerSpec::limit`] and the relay's caps (the smallest wins), shared
    /// by every listener given a clone of it. Over it a connection is closed
    /// at once and a datagram that would open a session is dropped, as with
    /// the other caps. Default: unlimited.
    pub max_connections: Limit,
    /// The header written to the target after connecting and before any
    /// client byte (TCP only; ignored for UDP).
    pub proxy_header: ProxyHeader,
}

/// Counters of one listener. Byte counts are payload bytes relayed so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Live TCP connections or UDP sessions.
    pub active: usize,
    /// TCP connections accepted and admitted / UDP sessions opened (refused ones are
    /// counted in `refused` only).
    pub accepted: u64,
    /// Connections closed (or UDP datagrams dropped) because a limit (the
    /// listener's, the relay's, or the open-file budget) was reached.
    pub refused: u64,
    /// Connections reset (or UDP datagrams dropped) because the client is
    /// outside the [`ListenerOptions::allow`] list, plus live connections and
    /// sessions ended when the list stopped allowing their client.
    pub denied: u64,
    /// When the last connection or session was admitted, in seconds since
    /// the Unix epoch; `None` if none was.
    pub last_accepted_at: Option<u64>,
    /// TCP connections whose target could not be reached in time.
    pub connect_failures: u64,
    /// Bytes client → target.
    pub bytes_to_target: u64,
    /// Bytes target → client.
    pub bytes_from_target: u64,
}

/// State shared between the control API and a listener's tasks.
pub(crate) struct ListenerShared {
    pub(crate) id: ListenerId,
    pub(crate) protocol: Protocol,
    /// Address actually bound (port 0 resolved).
    pub(crate) listen: SocketAddr,
    target: RwLock<SocketAddr>,
    pub(crate) limit: Limit,
    options: RwLock<ListenerOptions>,
    /// Cancelled (and replaced) when the allowlist changes, so live TCP
    /// connections re-check their client; a child of `conn_cancel`.
    allow_epoch: RwLock<CancellationToken>,
    /// Wakes the UDP loop so it drops sessions the allowlist no longer allows.
    pub(crate) options_changed: Notify,
    pub(crate) denied: AtomicU64,
    /// Unix seconds of the last admission, 0 = never.
    pub(crate) last_accepted_at: AtomicU64,
    /// The relay's process-wide caps.
    pub(crate) caps: Arc<Caps>,
    pub(crate) active: AtomicUsize,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) bytes_to_target: AtomicU64,
    pub(crate) bytes_from_target: AtomicU64,
    /// Wakes the UDP loop so it drops sessions bound to the old target.
    pub(crate) retargeted: Notify,
    /// Cancels the live connections / sessions of this listener.
    pub(crate) conn_cancel: CancellationToken,
    /// The TCP idle timeout's clock (`tcp::idle_ticker`): ticks so far, and
    /// whether the ticker runs.
    pub(crate) idle_ticks: std::sync::atomic::AtomicU32,
    pub(crate) idle_ticker: AtomicBool,
    /// Tracks every connection / session task of this listener.
    pub(crate) tasks: TaskTracker,
    /// The relay's hand-over, if one is under way.
    pub(crate) handover: Arc<handover::Collector>,
}

impl ListenerShared {
    pub(crate) fn target(&self) -> SocketAddr {
        *self.target.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn options(&self) -> std::sync::RwLockReadGuard<'_, ListenerOptions> {
        self.options.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the current allowlist lets `client` in.
    pub(crate) fn allows(&self, client: std::net::IpAddr) -> bool {
        self.options().allow.allows(client)
    }

    /// The token that fires when the allowlist changes next.
    pub(crate) fn allow_epoch(&self) -> CancellationToken {
        self.allow_epoch
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Wakes every live connection of the listener to re-check its state
    /// (a changed allowlist, a hand-over): the token connections hold is
    /// cancelled, after a fresh one is in place for those that look again.
    fn wake_connections(&self) {
        let fresh = self.conn_cancel.child_token();
        let old = std::mem::replace(
            &mut *self
                .allow_epoch
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            fresh,
        );
        old.cancel();
    }

    /// Counts an admission: its time and the total.
    pub(crate) fn admitted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_accepted_at.store(now, Ordering::Relaxed);
    }
}

/// One admitted TCP connection or UDP session: a unit of the listener's
/// [`Limit`], of its options' [`Limit`] (the one it was admitted under, even
/// if the options changed since), of the relay's TCP or UDP cap, and its open
/// files. Dropping it gives all of them back.
pub(crate) struct ActiveGuard(pub(crate) Arc<ListenerShared>, Limit);

impl ActiveGuard {
    /// Claims a slot if the listener's limit, the relay's cap for its protocol
    /// and the open-file budget all have room. A refusal is counted (and warned
    /// about once per episode) on the cap that refused.
    pub(crate) fn try_acquire(shared: &Arc<ListenerShared>) -> Option<ActiveGuard> {
        let caps = &shared.caps;
        let (process, fds, what, option) = match shared.protocol {
            Protocol::Tcp => (&caps.tcp, 2, "TCP connections", "[relay] max_connections"),
            Protocol::Udp => (&caps.udp, 1, "UDP sessions", "[relay] max_udp_sessions"),
        };
        let own = shared.options().max_connections.clone();
        let limit = shared.limit.gate();
        let refused = || {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            None
        };
        if !own.gate().try_take(1) {
            own.warn_refused(what);
            return refused();
        }
        if !limit.try_take(1) {
            own.gate().give_back(1);
            shared.limit.warn_refused(what);
            return refused();
        }
        if !process.try_take(1) {
            own.gate().give_back(1);
            limit.give_back(1);
            Caps::warn(process, what, option);
            return refused();
        }
        if !caps.fds.try_take(fds) {
            own.gate().give_back(1);
            limit.give_back(1);
            process.give_back(1);
            Caps::warn(
                &caps.fds,
                "open files",
                "the open-file limit (LimitNOFILE= in the systemd unit; the budget is derived from it), \
                 or lower [relay] max_connections / max_udp_sessions",
            );
            return refused();
        }
        shared.active.fetch_add(1, Ordering::AcqRel);
        Some(ActiveGuard(Arc::clone(shared), own))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let shared = &self.0;
        shared.active.fetch_sub(1, Ordering::AcqRel);
        shared.limit.gate().give_back(1);
        self.1.gate().give_back(1);
        let caps = &shared.caps;
        match shared.protocol {
            Protocol::Tcp => {
                caps.tcp.give_back(1);
                caps.fds.give_back(2);
            }
            Protocol::Udp => {
                caps.udp.give_back(1);
                caps.fds.give_back(1);
            }
        }
    }
}

/// Counters of the relay's process-wide caps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Relayed TCP connections ([`RelayConfig::max_connections`]).
    pub tcp: GateStats,
    /// UDP sessions ([`RelayConfig::max_udp_sessions`]).
    pub udp: GateStats,
    /// Open files held by the relay ([`RelayConfig::max_fds`]).
    pub fds: GateStats,
}

struct ListenerEntry {
    shared: Arc<ListenerShared>,
    /// Stops the accept / receive loop (which owns the listening socket).
    accept_cancel: CancellationToken,
    /// Returns the listening socket when stopped during a hand-over.
    accept_task: JoinHandle<Option<std::os::fd::OwnedFd>>,
}

struct Inner {
    config: RelayConfig,
    listeners: Mutex<HashMap<ListenerId, ListenerEntry>>,
    caps: Arc<Caps>,
    shut_down: AtomicBool,
    /// Relay-wide pool of empty pipes for splice, so idle connections hold none.
    pipes: Arc<copy::PipePool>,
    /// Set when handing over to the next process.
    collector: Arc<handover::Collector>,
    /// Sockets a previous process handed over, until a listener takes them.
    inherited: Mutex<Inherited>,
}

/// The relay: a set of listeners served on the current tokio runtime.
/// Cloning is cheap and all clones control the same listeners.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.inner.config)
            .field("listeners", &self.lock().len())
            .finish()
    }
}

impl Relay {
    pub fn new(config: RelayConfig) -> Relay {
        let caps = Arc::new(Caps {
            tcp: Gate::new(config.max_connections),
            udp: Gate::new(config.max_udp_sessions),
            fds: Gate::new(config.max_fds),
            spare: limits::Spare::new(),
            fd_limit: Gate::new(None),
        });
        Relay {
            inner: Arc::new(Inner {
                config,
                listeners: Mutex::new(HashMap::new()),
                pipes: Arc::new(copy::PipePool::new(Arc::clone(&caps))),
                caps,
                shut_down: AtomicBool::new(false),
                collector: Arc::default(),
                inherited: Mutex::default(),
            }),
        }
    }

    /// Counters of the process-wide caps.
    pub fn relay_stats(&self) -> RelayStats {
        let caps = &self.inner.caps;
        RelayStats {
            tcp: caps.tcp.counts(),
            udp: caps.udp.counts(),
            fds: caps.fds.counts(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ListenerId, ListenerEntry>> {
        // A panic elsewhere must not wedge the control API; the map stays consistent
        // because every critical section is a single insert/remove/lookup.
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Binds the listener now (so the caller knows it is live) and starts serving it.
    /// Must be called from within a tokio runtime.
    pub async fn add(&self, id: ListenerId, spec: ListenerSpec) -> Result<(), RelayError> {
        let mut map = self.lock();
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(RelayError::ShutDown);
        }
        if map.contains_key(&id) {
            return Err(RelayError::AlreadyExists(id));
        }
        let bind_err = |source| RelayError::Bind {
            addr: spec.listen,
            protocol: spec.protocol,
            source,
        };
        // The listening socket is an open file of the relay's budget.
        if !self.inner.caps.fds.try_take(1) {
            return Err(RelayError::FdBudget {
                addr: spec.listen,
                protocol: spec.protocol,
                budget: self.inner.caps.fds.max().unwrap_or(usize::MAX),
            });
        }
        // A socket a previous process handed over on the same protocol and
        // address is taken instead of binding: the port never closes.
        let inherited = self
            .inner
            .inherited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .listeners
            .remove(&(spec.protocol, spec.listen));
        let freebind = self.inner.config.freebind.contains(&spec.listen.ip());
        let (bound, resumed) = match inherited {
            Some(l) => {
                info!(listener = %id, old = %l.old_id, protocol = %spec.protocol, listen = %spec.listen,
                    connections = l.conns.len(), "relay listener taken over from the previous process");
                (adopt(spec.protocol, l.socket), Some((l.counters, l.conns)))
            }
            // Bind synchronously, under the lock, so a failure is reported to this caller
            // and two concurrent adds of the same id cannot both bind.
            None => (
                match spec.protocol {
                    Protocol::Tcp => tcp::bind(spec.listen, freebind).map(Bound::Tcp),
                    Protocol::Udp => udp::bind(spec.listen, freebind).map(Bound::Udp),
                },
                None,
            ),
        };
        let bound = bound.and_then(|socket| Ok((socket.local_addr()?, socket)));
        let (listen, socket) = match bound {
            Ok(bound) => bound,
            Err(e) => {
                self.inner.caps.fds.give_back(1);
                return Err(bind_err(e));
            }
        };
        let conn_cancel = CancellationToken::new();
        let counters = resumed.as_ref().map(|r| r.0).unwrap_or_default();
        let shared = Arc::new(ListenerShared {
            id,
            protocol: spec.protocol,
            listen,
            target: RwLock::new(spec.target),
            limit: spec.limit.clone(),
            options: RwLock::new(spec.options.clone()),
            allow_epoch: RwLock::new(conn_cancel.child_token()),
            options_changed: Notify::new(),
            denied: AtomicU64::new(0),
            last_accepted_at: AtomicU64::new(0),
            caps: Arc::clone(&self.inner.caps),
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(counters.accepted),
            refused: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes_to_target: AtomicU64::new(counters.bytes_to_target),
            bytes_from_target: AtomicU64::new(counters.bytes_from_target),
            retargeted: Notify::new(),
            conn_cancel,
            idle_ticks: std::sync::atomic::AtomicU32::new(0),
            idle_ticker: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            handover: Arc::clone(&self.inner.collector),
        });
        if let Some((_, conns)) = resumed {
            tcp::resume(&shared, conns, &self.inner.config, &self.inner.pipes);
        }
        let accept_cancel = CancellationToken::new();
        let accept_task = match socket {
            Bound::Tcp(l) => tokio::spawn(tcp::serve(
                l,
                Arc::clone(&shared),
                self.inner.config.clone(),
                accept_cancel.clone(),
                Arc::clone(&self.inner.pipes),
            )),
            Bound::Udp(s) => tokio::spawn(udp::serve(
                s,
                Arc::clone(&shared),
                self.inner.config.clone(),
                accept_cancel.clone(),
            )),
        };
        info!(listener = %id, protocol = %spec.protocol, %listen, target = %spec.target,
            limit = ?spec.limit.max(), options = ?spec.options, "relay listener added");
        map.insert(
            id,
            ListenerEntry {
                shared,
                accept_cancel,
                accept_task,
            },
        );
        Ok(())
    }

    /// Changes the target: new connections / new UDP sessions go to the new target;
    /// existing TCP connections continue; existing UDP sessions are dropped so they
    /// re-open toward the new target.
    pub fn retarget(&self, id: ListenerId, target: SocketAddr) -> Result<(), RelayError> {
        let map = self.lock();
        let entry = map.get(&id).ok_or(RelayError::NotFound(id))?;
        let old = std::mem::replace(
            &mut *entry
                .shared
                .target
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            target,
        );
        entry.shared.retargeted.notify_one();
        info!(listener = %id, %old, new = %target, "relay listener retargeted");
        Ok(())
    }

    /// Changes the maximum of the listener's [`Limit`] (`None` = unlimited), and so
    /// of every listener sharing it. Lowering it does not close live connections; it
    /// only refuses new ones until under the limit.
    pub fn set_max_connections(
        &self,
        id: ListenerId,
        max: Option<usize>,
    ) -> Result<(), RelayError> {
        let map = self.lock();
        let entry = map.get(&id).ok_or(RelayError::NotFound(id))?;
        entry.shared.limit.set_max(max);
        info!(listener = %id, max_connections = ?max, "relay listener limit changed");
        Ok(())
    }

    /// Replaces the listener's options, for new connections at once. A
    /// changed allowlist also ends the live TCP connections and UDP sessions
    /// of clients it no longer allows (an allowlist is a security control: a
    /// client taken off it must not keep a connection it opened before); the
    /// others go on. A new cap does not close live connections; it only
    /// refuses new ones until under it.
    pub fn set_options(&self, id: ListenerId, options: ListenerOptions) -> Result<(), RelayError> {
        let map = self.lock();
        let shared = &map.get(&id).ok_or(RelayError::NotFound(id))?.shared;
        let allow_changed = {
            let mut current = shared
                .options
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let changed = current.allow != options.allow;
            info!(listener = %id, old = ?*current, new = ?options, "relay listener options changed");
            *current = options;
            changed
        };
        if allow_changed {
            // After the write: a connection that takes the new token reads the
            // new list; one holding the old token is woken to re-check.
            shared.wake_connections();
            shared.options_changed.notify_one();
        }
        Ok(())
    }

    /// The listener's current options.
    pub fn options(&self, id: ListenerId) -> Option<ListenerOptions> {
        Some(self.lock().get(&id)?.shared.options().clone())
    }

    /// Closes the listener (the port is free when this returns) and closes its live
    /// connections / sessions.
    pub async fn remove(&self, id: ListenerId) -> Result<(), RelayError> {
        let entry = self.lock().remove(&id).ok_or(RelayError::NotFound(id))?;
        entry.accept_cancel.cancel();
        entry.shared.conn_cancel.cancel();
        // The accept task owns the listening socket; once it has returned the socket
        // is closed. UDP session tasks hold the socket too, hence waiting on `tasks`.
        let _ = entry.accept_task.await;
        self.inner.caps.fds.give_back(1);
        entry.shared.tasks.close();
        entry.shared.tasks.wait().await;
        info!(listener = %id, listen = %entry.shared.listen, "relay listener removed");
        Ok(())
    }

    /// All listeners with their current spec (bound address, current target and limit).
    pub fn listeners(&self) -> Vec<(ListenerId, ListenerSpec)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, e)| {
                let s = &e.shared;
                let spec = ListenerSpec {
                    protocol: s.protocol,
                    listen: s.listen,
                    target: s.target(),
                    limit: s.limit.clone(),
                    options: s.options().clone(),
                };
                (*id, spec)
            })
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    pub fn stats(&self, id: ListenerId) -> Option<ListenerStats> {
        let map = self.lock();
        let s = &map.get(&id)?.shared;
        Some(ListenerStats {
            active: s.active.load(Ordering::Relaxed),
            accepted: s.accepted.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            denied: s.denied.load(Ordering::Relaxed),
            last_accepted_at: match s.last_accepted_at.load(Ordering::Relaxed) {
                0 => None,
                t => Some(t),
            },
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            bytes_to_target: s.bytes_to_target.load(Ordering::Relaxed),
            bytes_from_target: s.bytes_from_target.load(Ordering::Relaxed),
        })
    }

    /// Stops accepting everywhere, lets live connections finish for up to
    /// `config.shutdown_grace`, then cuts them. Listeners stay listed (with their
    /// final stats) but serve nothing; `add` fails afterwards.
    pub async fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::Release);
        let (entries, tasks): (Vec<_>, Vec<_>) = {
            let mut map = self.lock();
            map.values_mut()
                .map(|e| {
                    e.accept_cancel.cancel();
                    // Swap in a finished handle so the real one can be awaited outside the lock.
                    let task = std::mem::replace(&mut e.accept_task, tokio::spawn(async { None }));
                    (Arc::clone(&e.shared), task)
                })
                .unzip()
        };
        info!(listeners = entries.len(), grace = ?self.inner.config.shutdown_grace, "relay shutting down");
        self.close_unclaimed();
        for task in tasks {
            let _ = task.await;
        }
        for shared in &entries {
            shared.tasks.close();
        }
        let drained = tokio::time::timeout(self.inner.config.shutdown_grace, async {
            for shared in &entries {
                shared.tasks.wait().await;
            }
        })
        .await;
        if drained.is_err() {
            let left: usize = entries.iter().map(|s| s.tasks.len()).sum();
            info!(
                connections = left,
                "shutdown grace elapsed; closing remaining connections"
            );
        }
        for shared in &entries {
            shared.conn_cancel.cancel();
        }
        for shared in &entries {
            shared.tasks.wait().await;
        }
        info!("relay shut down");
    }

    /// Takes the sockets a previous process handed over: the first [`add`]
    /// on the same protocol and address takes its listener (and resumes
    /// its connections) instead of binding. Must be called before those
    /// adds; [`Relay::close_unclaimed`] closes what none took.
    ///
    /// [`add`]: Relay::add
    pub fn inherit(&self, inherited: Inherited) {
        info!(
            listeners = inherited.listeners(),
            connections = inherited.connections(),
            ended_in_the_gap = inherited.missing(),
            "relay inherits the sockets of the previous process"
        );
        self.inner
            .inherited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .listeners
            .extend(inherited.listeners);
    }

    /// Closes the inherited listeners no [`Relay::add`] took (no forward
    /// wants them any more) and their connections. Returns how many
    /// listeners and connections it closed.
    pub fn close_unclaimed(&self) -> (usize, usize) {
        let left = std::mem::take(
            &mut *self
                .inner
                .inherited
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let counts = (left.listeners(), left.connections());
        if counts != (0, 0) {
            for ((protocol, listen), l) in &left.listeners {
                info!(%protocol, %listen, old = %l.old_id, connections = l.conns.len(),
                    "closing an inherited listener no forward wants");
            }
        }
        counts
    }

    /// Hands everything over to the next process instead of shutting down:
    /// stops accepting but keeps every listening socket open, brings each
    /// TCP connection to a clean point (no more reads, what was read is
    /// written out within [`handover::FLUSH_BOUND`]), ends UDP sessions,
    /// and returns the sockets with their description. Connections that
    /// cannot be brought to a clean point in time are closed and counted
    /// in [`Handover::lost`]. The relay serves nothing afterwards and
    /// `add` fails; the sockets close when the returned value is dropped,
    /// so the caller must have passed them on first.
    pub async fn hand_over(&self) -> Handover {
        self.inner.shut_down.store(true, Ordering::Release);
        // Before the connections are woken: each checks it after taking
        // its wake-up token (`tcp::relay`).
        self.inner.collector.start();
        let entries: Vec<_> = {
            let mut map = self.lock();
            map.values_mut()
                .map(|e| {
                    e.accept_cancel.cancel();
                    let task = std::mem::replace(&mut e.accept_task, tokio::spawn(async { None }));
                    (Arc::clone(&e.shared), task)
                })
                .collect()
        };
        info!(
            listeners = entries.len(),
            "relay handing over to the next process"
        );
        let mut listeners = Vec::with_capacity(entries.len());
        let mut udp_sessions = 0;
        let mut shareds = Vec::with_capacity(entries.len());
        for (shared, task) in entries {
            match task.await {
                Ok(Some(fd)) => listeners.push(handover::HandedListener {
                    id: shared.id,
                    protocol: shared.protocol,
                    listen: shared.listen,
                    fd,
                    counters: handover::Counters {
                        accepted: shared.accepted.load(Ordering::Relaxed),
                        bytes_to_target: shared.bytes_to_target.load(Ordering::Relaxed),
                        bytes_from_target: shared.bytes_from_target.load(Ordering::Relaxed),
                    },
                }),
                _ => tracing::warn!(listen = %shared.listen, protocol = %shared.protocol,
                    "the listening socket could not be kept for the next process"),
            }
            match shared.protocol {
                Protocol::Udp => {
                    udp_sessions += shared.active.load(Ordering::Relaxed);
                    shared.conn_cancel.cancel();
                }
                Protocol::Tcp => {
                    // Wakes every connection, which sees the hand-over.
                    shared.wake_connections();
                }
            }
            shared.tasks.close();
            shareds.push(shared);
        }
        // Connections still connecting to their target get a second more
        // than the flush bound to finish; then they are cut.
        let waited = tokio::time::timeout(
            handover::FLUSH_BOUND + std::time::Duration::from_secs(1),
            async {
                for shared in &shareds {
                    shared.tasks.wait().await;
                }
            },
        )
        .await;
        let mut cut = 0;
        if waited.is_err() {
            for shared in &shareds {
                if shared.protocol == Protocol::Tcp {
                    cut += shared.tasks.len();
                }
                shared.conn_cancel.cancel();
            }
        }
        for shared in &shareds {
            shared.tasks.wait().await;
        }
        self.close_unclaimed();
        let lost = self.inner.collector.lost.load(Ordering::Relaxed) + cut;
        let conns = self.inner.collector.take();
        let handover = handover::encode(listeners, conns, lost, udp_sessions);
        info!(
            listeners = handover.listeners,
            connections = handover.connections,
            lost = handover.lost,
            udp_sessions_ended = handover.udp_sessions,
            "relay ready to hand over"
        );
        handover
    }
}

/// The listener of a socket another process handed over.
fn adopt(protocol: Protocol, socket: socket2::Socket) -> std::io::Result<Bound> {
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(match protocol {
        Protocol::Tcp => Bound::Tcp(tokio::net::TcpListener::from_std(socket.into())?),
        Protocol::Udp => Bound::Udp(tokio::net::UdpSocket::from_std(socket.into())?),
    })
}

enum Bound {
    Tcp(tokio::net::TcpListener),
    Udp(tokio::net::UdpSocket),
}

impl Bound {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
    }
}
