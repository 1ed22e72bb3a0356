//! Hand-over of a relay's sockets to the process that replaces it (a restart
//! or an upgrade), so that no listener is closed and no established
//! connection is dropped.
//!
//! The old process ([`crate::Relay::hand_over`]) stops its accept loops but
//! keeps the listening sockets open (the kernel keeps completing handshakes
//! into their backlogs while nobody accepts, so no client is refused during
//! the gap), brings each TCP connection to a clean point (it stops reading
//! and writes out what it already read, within a bound) and returns every
//! socket with a [`HANDOVER_VERSION`]ed JSON description of what they are.
//! How the sockets travel (systemd's file descriptor store) is the caller's
//! business: each one has a unique name, and the description refers to the
//! sockets by those names only.
//!
//! The new process parses the description with the sockets it received
//! ([`Inherited::parse`], which refuses an unknown version or a description
//! that does not match its sockets, closing them all) and gives it to its
//! relay ([`crate::Relay::inherit`]): the first `add` of a listener on the
//! same protocol and address takes the inherited socket instead of binding,
//! and resumes that listener's connections under its limits and counters.
//! [`crate::Relay::close_unclaimed`] closes what no listener took.
//!
//! UDP: the listening sockets are handed over, the sessions are not (each
//! is a connected socket toward the target and a reply task); the next
//! datagram of a client opens a new session from a new source port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use socket2::{Socket, Type};

use crate::{ListenerId, Protocol};

/// How long a connection may take to write out what it already read when
/// handing over; one that cannot is closed (and counted as lost).
pub const FLUSH_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Version of the description. A process refuses any other (it starts
/// fresh, closing what it received): a new format gets a new number.
pub const HANDOVER_VERSION: u32 = 1;

/// Errors of [`Inherited::parse`]; the sockets received are closed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("the hand-over state is not valid JSON of version {HANDOVER_VERSION}: {0}")]
    Malformed(String),
    #[error(
        "the hand-over state is of version {found}, this relay reads version {HANDOVER_VERSION} only"
    )]
    Version { found: u64 },
    #[error("the hand-over state names socket {0:?}, which was not received")]
    MissingFd(String),
    #[error("the hand-over state names socket {0:?} twice")]
    DuplicateFd(String),
    #[error("socket {name:?} is not what the hand-over state says: {why}")]
    Mismatch { name: String, why: String },
}

/// What a relay hands to the next process: its sockets, each with a unique
/// name, and the description that refers to them by name.
#[derive(Debug, Default)]
pub struct Handover {
    pub fds: Vec<(String, OwnedFd)>,
    /// JSON, version [`HANDOVER_VERSION`].
    pub state: Vec<u8>,
    /// Listeners handed over.
    pub listeners: usize,
    /// Established TCP connections handed over.
    pub connections: usize,
    /// TCP connections closed instead: not flushed within the bound, still
    /// connecting to their target at the deadline, or failing meanwhile.
    pub lost: usize,
    /// UDP sessions ended (they are not handed over).
    pub udp_sessions: usize,
}

#[derive(Serialize, Deserialize)]
struct Versioned {
    version: u64,
}

#[derive(Serialize, Deserialize)]
struct State {
    version: u64,
    listeners: Vec<ListenerRecord>,
    connections: Vec<ConnRecord>,
}

#[derive(Serialize, Deserialize)]
struct ListenerRecord {
    fd: String,
    /// The old process's id, hexadecimal (for logs; listeners are matched
    /// by protocol and address).
    id: String,
    protocol: String,
    listen: SocketAddr,
    accepted: u64,
    bytes_to_target: u64,
    bytes_from_target: u64,
}

#[derive(Serialize, Deserialize)]
struct ConnRecord {
    /// The `fd` name of its listener's record.
    listener: String,
    client: String,
    upstream: String,
    /// Client → target has seen its end of stream and propagated it.
    up_done: bool,
    /// Target → client has.
    down_done: bool,
    /// Payload bytes moved so far (both directions).
    bytes: u64,
}

/// State shared by a relay's listeners while it hands over: whether it
/// does, and the connections brought to a clean point so far.
#[derive(Default)]
pub(crate) struct Collector {
    active: AtomicBool,
    conns: Mutex<Vec<HandedConn>>,
    pub(crate) lost: AtomicUsize,
}

impl Collector {
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn start(&self) {
        self.active.store(true, Ordering::Release);
    }

    pub(crate) fn push(&self, conn: HandedConn) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }

    pub(crate) fn take(&self) -> Vec<HandedConn> {
        std::mem::take(&mut *self.conns.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A TCP connection at a clean point, out of its task.
pub(crate) struct HandedConn {
    pub(crate) listener: ListenerId,
    pub(crate) client: OwnedFd,
    pub(crate) upstream: OwnedFd,
    pub(crate) done: [bool; 2],
    pub(crate) bytes: u64,
}

/// A listener at hand-over time.
pub(crate) struct HandedListener {
    pub(crate) id: ListenerId,
    pub(crate) protocol: Protocol,
    pub(crate) listen: SocketAddr,
    pub(crate) fd: OwnedFd,
    pub(crate) counters: Counters,
}

/// A listener's counters that continue in the next process.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: u64,
    pub(crate) bytes_to_target: u64,
    pub(crate) bytes_from_target: u64,
}

/// Room for the sockets' names. systemd gives the next process every name
/// in one environment variable, `LISTEN_FDNAMES` (name, `:`, name…), and
/// Linux refuses to start a process with any one environment string longer
/// than 128 KiB (`MAX_ARG_STRLEN`): past that the service would not start at
/// all. Names are short (`l7`, `c7`, `u7`, base 36), and what does not fit
/// is not handed over: listeners first (~24,000 fit), then connections (the rest
/// are closed and counted lost; a listener left out is bound again by the
/// next process at start, refusing connections for that gap only). The
/// margin leaves room for the variable's name and the state's own name.
pub const NAMES_BUDGET: usize = 120 * 1024;

/// Names the sockets and writes the description, within [`NAMES_BUDGET`].
pub(crate) fn encode(
    listeners: Vec<HandedListener>,
    conns: Vec<HandedConn>,
    lost: usize,
    udp_sessions: usize,
) -> Handover {
    encode_within(listeners, conns, lost, udp_sessions, NAMES_BUDGET)
}

fn encode_within(
    listeners: Vec<HandedListener>,
    conns: Vec<HandedConn>,
    lost: usize,
    udp_sessions: usize,
    budget: usize,
) -> Handover {
    let mut fds = Vec::with_capacity(listeners.len() + 2 * conns.len());
    let mut names = HashMap::new();
    let mut records = Vec::with_capacity(listeners.len());
    let mut room = budget;
    let mut left_out = 0;
    for (n, l) in listeners.into_iter().enumerate() {
        let name = short_name('l', n);
        // Each name costs its length and a separator.
        let Some(after) = room.checked_sub(name.len() + 1) else {
            left_out += 1;
            continue;
        };
        room = after;
        names.insert(l.id, name.clone());
        records.push(ListenerRecord {
            fd: name.clone(),
            id: l.id.to_string(),
            protocol: l.protocol.to_string(),
            listen: l.listen,
            accepted: l.counters.accepted,
            bytes_to_target: l.counters.bytes_to_target,
            bytes_from_target: l.counters.bytes_from_target,
        });
        fds.push((name, l.fd));
    }
    let mut connections = Vec::with_capacity(conns.len());
    let mut orphans = 0;
    let mut no_room = 0;
    for (n, c) in conns.into_iter().enumerate() {
        // Its listener was removed meanwhile: the connection would have
        // been cut with it.
        let Some(listener) = names.get(&c.listener) else {
            orphans += 1;
            continue;
        };
        let (client, upstream) = (short_name('c', n), short_name('u', n));
        let Some(after) = room.checked_sub(client.len() + upstream.len() + 2) else {
            no_room += 1;
            continue;
        };
        room = after;
        connections.push(ConnRecord {
            listener: listener.clone(),
            client: client.clone(),
            upstream: upstream.clone(),
            up_done: c.done[0],
            down_done: c.done[1],
            bytes: c.bytes,
        });
        fds.push((client, c.client));
        fds.push((upstream, c.upstream));
    }
    if no_room > 0 {
        tracing::warn!(
            connections = no_room,
            "more connections than systemd can pass by name (LISTEN_FDNAMES, 128 KiB): these are \
             closed"
        );
    }
    if left_out > 0 {
        tracing::warn!(
            listeners = left_out,
            "more listeners than systemd can pass by name (LISTEN_FDNAMES, 128 KiB): these are \
             closed and bound again by the next process"
        );
    }
    let state = State {
        version: u64::from(HANDOVER_VERSION),
        listeners: records,
        connections,
    };
    Handover {
        listeners: state.listeners.len(),
        connections: state.connections.len(),
        // Serialising plain records with string keys cannot fail.
        state: serde_json::to_vec(&state).unwrap_or_default(),
        fds,
        lost: lost + orphans + no_room,
        udp_sessions,
    }
}

/// `kind` then `n` in base 36: `l0`, `lz`, `l10` … (~24,000 listener names
/// fit in [`NAMES_BUDGET`]).
fn short_name(kind: char, mut n: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(DIGITS[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    let mut name = String::with_capacity(digits.len() + 1);
    name.push(kind);
    name.extend(digits.iter().rev().map(|&d| char::from(d)));
    name
}

/// Sockets a previous process handed over, waiting for the listeners that
/// take them ([`crate::Relay::inherit`]).
#[derive(Debug, Default)]
pub struct Inherited {
    pub(crate) listeners: HashMap<(Protocol, SocketAddr), InheritedListener>,
    /// Connections described whose sockets did not arrive (they hung up
    /// while stored, and the store dropped them).
    pub(crate) missing: usize,
}

#[derive(Debug)]
pub(crate) struct InheritedListener {
    pub(crate) old_id: String,
    pub(crate) socket: Socket,
    pub(crate) counters: Counters,
    pub(crate) conns: Vec<InheritedConn>,
}

#[derive(Debug)]
pub(crate) struct InheritedConn {
    pub(crate) client: Socket,
    pub(crate) upstream: Socket,
    pub(crate) done: [bool; 2],
    pub(crate) bytes: u64,
}

impl Inherited {
    /// Reads a description and takes the sockets it names out of `fds`
    /// (the sockets received, by name). On an error every socket it took
    /// is closed; sockets it does not name stay in `fds` for the caller.
    pub fn parse(
        state: &[u8],
        fds: &mut HashMap<String, OwnedFd>,
    ) -> Result<Inherited, HandoverError> {
        let versioned: Versioned =
            serde_json::from_slice(state).map_err(|e| HandoverError::Malformed(e.to_string()))?;
        if versioned.version != u64::from(HANDOVER_VERSION) {
            return Err(HandoverError::Version {
                found: versioned.version,
            });
        }
        let state: State =
            serde_json::from_slice(state).map_err(|e| HandoverError::Malformed(e.to_string()))?;
        // Take every named socket first, so that an error closes them all. A
        // listener's socket must be there; a connection's may be missing
        // (systemd drops a stored socket that hung up, unless told not to),
        // which ends that connection only.
        let mut taken: HashMap<String, Socket> = HashMap::new();
        let listener_names = state.listeners.iter().map(|l| (&l.fd, true));
        let conn_names = state
            .connections
            .iter()
            .flat_map(|c| [(&c.client, false), (&c.upstream, false)]);
        for (name, required) in listener_names.chain(conn_names) {
            if taken.contains_key(name) {
                return Err(HandoverError::DuplicateFd(name.clone()));
            }
            let Some(fd) = fds.remove(name) else {
                if required {
                    return Err(HandoverError::MissingFd(name.clone()));
                }
                continue;
            };
            let socket = Socket::from(fd);
            // Received without close-on-exec (systemd's LISTEN_FDS): no child
            // of this process may keep a relayed connection open.
            let _ = socket.set_cloexec(true);
            taken.insert(name.clone(), socket);
        }
        let mismatch = |name: &str, why: String| HandoverError::Mismatch {
            name: name.to_owned(),
            why,
        };
        let mut by_name: HashMap<String, (Protocol, SocketAddr)> = HashMap::new();
        let mut inherited = Inherited::default();
        for l in state.listeners {
            let protocol = match l.protocol.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => return Err(mismatch(&l.fd, format!("unknown protocol {other:?}"))),
            };
            let socket = taken
                .remove(&l.fd)
                .ok_or_else(|| HandoverError::MissingFd(l.fd.clone()))?;
            check_socket(&socket, protocol, Some(l.listen)).map_err(|why| mismatch(&l.fd, why))?;
            if by_name.insert(l.fd.clone(), (protocol, l.listen)).is_some()
                || inherited.listeners.contains_key(&(protocol, l.listen))
            {
                return Err(mismatch(
                    &l.fd,
                    format!("a second listener on {protocol} {}", l.listen),
                ));
            }
            inherited.listeners.insert(
                (protocol, l.listen),
                InheritedListener {
                    old_id: l.id,
                    socket,
                    counters: Counters {
                        accepted: l.accepted,
                        bytes_to_target: l.bytes_to_target,
                        bytes_from_target: l.bytes_from_target,
                    },
                    conns: Vec::new(),
                },
            );
        }
        for c in state.connections {
            let key = by_name
                .get(&c.listener)
                .copied()
                .ok_or_else(|| mismatch(&c.client, format!("no listener {:?}", c.listener)))?;
            if key.0 != Protocol::Tcp {
                return Err(mismatch(&c.client, "a connection of a UDP listener".into()));
            }
            let (Some(client), Some(upstream)) =
                (taken.remove(&c.client), taken.remove(&c.upstream))
            else {
                // Half of it or all of it is gone: the connection ended in
                // the gap (the other socket, if any, is closed here).
                inherited.missing += 1;
                continue;
            };
            check_socket(&client, Protocol::Tcp, None).map_err(|why| mismatch(&c.client, why))?;
            check_socket(&upstream, Protocol::Tcp, None)
                .map_err(|why| mismatch(&c.upstream, why))?;
            if let Some(l) = inherited.listeners.get_mut(&key) {
                l.conns.push(InheritedConn {
                    client,
                    upstream,
                    done: [c.up_done, c.down_done],
                    bytes: c.bytes,
                });
            }
        }
        Ok(inherited)
    }

    /// Listeners waiting for a taker.
    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }

    /// Connections described but not received whole (ended in the gap).
    pub fn missing(&self) -> usize {
        self.missing
    }

    /// Connections waiting for their listener's taker.
    pub fn connections(&self) -> usize {
        self.listeners.values().map(|l| l.conns.len()).sum()
    }
}

/// A socket is what the description says: its type (stream or datagram)
/// and, for a listener, its bound address.
fn check_socket(
    socket: &Socket,
    protocol: Protocol,
    local: Option<SocketAddr>,
) -> Result<(), String> {
    let ty = socket.r#type().map_err(|e| format!("not a socket ({e})"))?;
    let want = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    if ty != want {
        return Err(format!("not a {protocol} socket"));
    }
    if let Some(local) = local {
        let bound = socket
            .local_addr()
            .map_err(|e| format!("no local address ({e})"))?
            .as_socket()
            .ok_or("not an IP socket")?;
        if bound != local {
            return Err(format!("bound to {bound}, not {local}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many sockets, their names fit in one environment string
    /// (LISTEN_FDNAMES); listeners come first, connections over it are lost.
    #[test]
    fn names_stay_within_what_systemd_can_pass() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd = OwnedFd::from(socket);
        let dup = || fd.try_clone().expect("dup");
        let listener = |n: u128| HandedListener {
            id: ListenerId(n),
            protocol: Protocol::Tcp,
            listen: "127.0.0.1:1".parse().expect("addr"),
            fd: dup(),
            counters: Counters::default(),
        };
        let conns: Vec<HandedConn> = (0..200)
            .map(|_| HandedConn {
                listener: ListenerId(0),
                client: dup(),
                upstream: dup(),
                done: [false, false],
                bytes: 0,
            })
            .collect();
        // A budget scaled down with the count: 200 connections, room for ~70.
        let handover = encode_within(vec![listener(0), listener(1)], conns, 0, 0, 1000);
        let names: usize = handover.fds.iter().map(|(n, _)| n.len() + 1).sum();
        assert!(names <= 1000, "{names}");
        assert_eq!(handover.listeners, 2);
        assert_eq!(handover.connections + handover.lost, 200);
        assert!(
            handover.lost > 0 && handover.connections > 50,
            "{handover:?}"
        );
        // At the real budget, 24,000 listeners' names fit.
        assert_eq!(short_name('l', 36 * 36), "l100");
        let listener_names: usize = (0..24_000).map(|n| short_name('l', n).len() + 1).sum();
        assert!(listener_names <= NAMES_BUDGET, "{listener_names}");
    }

    #[test]
    fn a_future_version_is_refused_and_its_sockets_stay_with_the_caller() {
        let mut fds = HashMap::new();
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        fds.insert("navigator-relay-l0".to_owned(), OwnedFd::from(socket));
        let state = br#"{"version":2,"listeners":[],"connections":[]}"#;
        let e = Inherited::parse(state, &mut fds).expect_err("version 2");
        assert!(matches!(e, HandoverError::Version { found: 2 }), "{e}");
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn corrupt_states_are_refused_naming_what_is_wrong() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut fds = HashMap::new();
        fds.insert("l".to_owned(), OwnedFd::from(listener));
        fds.insert("u".to_owned(), OwnedFd::from(udp));
        for (state, wanted) in [
            ("not json".to_owned(), "not valid JSON"),
            (r#"{"version":1}"#.to_owned(), "not valid JSON"),
            (
                r#"{"version":1,"listeners":[{"fd":"x","id":"1","protocol":"tcp","listen":"127.0.0.1:1","accepted":0,"bytes_to_target":0,"bytes_from_target":0}],"connections":[]}"#.to_owned(),
                "\"x\", which was not received",
            ),
            (
                format!(r#"{{"version":1,"listeners":[{{"fd":"u","id":"1","protocol":"tcp","listen":"{addr}","accepted":0,"bytes_to_target":0,"bytes_from_target":0}}],"connections":[]}}"#),
                "not a tcp socket",
            ),
            (
                r#"{"version":1,"listeners":[{"fd":"l","id":"1","protocol":"tcp","listen":"127.0.0.1:1","accepted":0,"bytes_to_target":0,"bytes_from_target":0}],"connections":[]}"#.to_owned(),
                "not 127.0.0.1:1",
            ),
        ] {
            let mut fds: HashMap<String, OwnedFd> = fds
                .iter()
                .map(|(k, v)| (k.clone(), v.try_clone().expect("dup")))
                .collect();
            let e = Inherited::parse(state.as_bytes(), &mut fds).expect_err(&state);
            assert!(e.to_string().contains(wanted), "{state}: {e}");
        }
        let good = format!(
            r#"{{"version":1,"listeners":[{{"fd":"l","id":"1","protocol":"tcp","listen":"{addr}","accepted":3,"bytes_to_target":0,"bytes_from_target":0}}],"connections":[]}}"#
        );
        let inherited = Inherited::parse(good.as_bytes(), &mut fds).expect("valid");
        assert_eq!(inherited.listeners(), 1);
        assert_eq!(fds.len(), 1, "the unnamed socket stays with the caller");
    }

    /// A connection whose sockets did not arrive (systemd dropped them when
    /// they hung up) ends alone; the rest is taken.
    #[test]
    fn a_connection_missing_its_sockets_is_skipped() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut fds = HashMap::new();
        fds.insert("l".to_owned(), OwnedFd::from(listener));
        let state = format!(
            r#"{{"version":1,"listeners":[{{"fd":"l","id":"1","protocol":"tcp","listen":"{addr}","accepted":0,"bytes_to_target":0,"bytes_from_target":0}}],"connections":[{{"listener":"l","client":"c","upstream":"u","up_done":false,"down_done":false,"bytes":0}}]}}"#
        );
        let inherited = Inherited::parse(state.as_bytes(), &mut fds).expect("valid");
        assert_eq!(
            (
                inherited.listeners(),
                inherited.connections(),
                inherited.missing()
            ),
            (1, 0, 1)
        );
    }
}
