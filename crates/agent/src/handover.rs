//! Seamless restart and upgrade of `navigator-agent` through systemd's file
//! descriptor store.
//!
//! `systemctl restart` stops the old process before it starts the new one,
//! so the sockets cannot go from one to the other directly: they wait in
//! systemd's store. On SIGTERM, with `NOTIFY_SOCKET` set and `[agent]
//! handover = true`, [`send`] stores every socket the relay hands over
//! (`navigator_relay::Relay::hand_over`), each with `FDSTORE=1` and a unique
//! `FDNAME=`, and last a memfd named [`STATE_FDNAME`] holding a versioned
//! JSON description: the forwards the relay carried (as `ForwardEntry`, the
//! RPC shape, which only ever gains fields) and the relay's own description
//! of its sockets. The new process finds them in `LISTEN_FDS`/
//! `LISTEN_FDNAMES` ([`receive`]), removes them from the store at once
//! (`FDSTOREREMOVE=1`: a socket left there would keep its connection open
//! forever) and carries the same forwards on the same sockets before it
//! even reaches RabbitMQ ([`crate::Agent::adopt`]).
//!
//! A state of another version, a corrupt one, or sockets without a state
//! are refused cleanly: logged, every descriptor closed, and the agent
//! starts fresh (its forwards come back with the first full sync, as after
//! any start).

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use navigator_core::ForwardSpec;
use navigator_relay::{Handover, Inherited};
use navigator_rpc::ForwardEntry;
use serde::{Deserialize, Serialize};

/// `FDNAME=` of the memfd that describes the other descriptors.
pub const STATE_FDNAME: &str = "navigator-state";

/// Version of the agent's description. Another version is refused.
pub const VERSION: u64 = 1;

/// Largest description read (a relay with a million connections describes
/// them in ~150 MB).
const MAX_STATE: u64 = 512 << 20;

/// Why a hand-over could not be sent or taken.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot reach systemd's NOTIFY_SOCKET {socket}: {source}")]
    Notify {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot store descriptor {name} with systemd: {source}")]
    Store {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the hand-over state: {0}")]
    Write(#[source] std::io::Error),
    #[error("cannot read the hand-over state: {0}")]
    Read(#[source] std::io::Error),
    #[error("the hand-over state is larger than {MAX_STATE} bytes")]
    TooLarge,
    #[error("the hand-over state is not valid JSON of version {VERSION}: {0}")]
    Malformed(String),
    #[error("the hand-over state is of version {0}, this agent reads version {VERSION} only")]
    Version(u64),
    #[error("the hand-over state holds forward {id}, which is not valid: {reason}")]
    Forward { id: String, reason: String },
    #[error(transparent)]
    Relay(#[from] navigator_relay::HandoverError),
    #[error("LISTEN_FDS/LISTEN_FDNAMES cannot be read: {0}")]
    ListenFds(#[source] std::io::Error),
}

#[derive(Serialize, Deserialize)]
struct Versioned {
    version: u64,
}

#[derive(Serialize, Deserialize)]
struct State {
    version: u64,
    /// What the relay carried.
    forwards: Vec<ForwardEntry>,
    /// The relay's description of its sockets
    /// (`navigator_relay::HANDOVER_VERSION`).
    relay: serde_json::Value,
}

/// What a previous process handed over.
#[derive(Debug)]
pub struct Received {
    pub forwards: Vec<ForwardSpec>,
    pub inherited: Inherited,
}

/// Whether SIGTERM may hand over: `NOTIFY_SOCKET` is set (systemd, or a
/// supervisor that speaks its protocol, will keep the descriptors).
pub fn available() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// Stores the forwards and sockets with systemd, the description last (so
/// that a store cut short leaves descriptors without a description, which
/// the next process refuses and closes).
pub fn send(forwards: &[ForwardSpec], handover: Handover) -> Result<(), HandoverError> {
    let relay: serde_json::Value = serde_json::from_slice(&handover.state)
        .map_err(|e| HandoverError::Malformed(e.to_string()))?;
    let state = State {
        version: VERSION,
        forwards: forwards.iter().map(ForwardEntry::from).collect(),
        relay,
    };
    let memfd = rustix::fs::memfd_create(STATE_FDNAME, rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| HandoverError::Write(e.into()))?;
    let mut file = std::fs::File::from(memfd);
    serde_json::to_writer(std::io::BufWriter::new(&mut file), &state)
        .map_err(|e| HandoverError::Write(e.into()))?;
    file.flush().map_err(HandoverError::Write)?;
    let socket = notify_socket()?;
    for (name, fd) in &handover.fds {
        store(&socket, name, fd)?;
    }
    store(&socket, STATE_FDNAME, &OwnedFd::from(file))?;
    tracing::info!(
        forwards = forwards.len(),
        listeners = handover.listeners,
        connections = handover.connections,
        lost = handover.lost,
        "handed over to the next process through systemd's file descriptor store"
    );
    Ok(())
}

fn notify_socket() -> Result<UnixDatagram, HandoverError> {
    let path = std::env::var_os("NOTIFY_SOCKET").unwrap_or_default();
    let shown = path.to_string_lossy().into_owned();
    let err = |source| HandoverError::Notify {
        socket: shown.clone(),
        source,
    };
    let socket = UnixDatagram::unbound().map_err(err)?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(err)?;
        socket.connect_addr(&addr).map_err(err)?;
    } else {
        socket.connect(&path).map_err(err)?;
    }
    Ok(socket)
}

/// `FDSTORE=1` with one descriptor and its name.
fn store(socket: &UnixDatagram, name: &str, fd: &OwnedFd) -> Result<(), HandoverError> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    // FDPOLL=0: systemd would otherwise drop a stored socket that hangs up
    // (a connection reset during the gap), and the next process would find
    // it missing; it ends that connection itself.
    let message = format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0\n");
    let fds = [fd.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    sendmsg(
        socket,
        &[std::io::IoSlice::new(message.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| HandoverError::Store {
        name: name.to_owned(),
        source: e.into(),
    })?;
    Ok(())
}

/// Takes the descriptors systemd passed (`LISTEN_FDS`, `LISTEN_FDNAMES`,
/// for this process's `LISTEN_PID`), removes them from its store, and reads
/// the description. `None` when nothing was passed. On a refusal the error
/// is logged, every descriptor is closed, and `None` is returned: the agent
/// starts fresh. Call once, at start-up.
pub fn receive() -> Option<Received> {
    let fds = match listen_fds() {
        Ok(fds) => fds,
        Err(e) => {
            tracing::error!("{e}; starting without the previous process's sockets");
            return None;
        }
    };
    if fds.is_empty() {
        return None;
    }
    remove_from_store(&fds);
    let count = fds.len();
    match parse(fds) {
        Ok(received) => Some(received),
        Err(e) => {
            tracing::error!(
                descriptors = count,
                "refusing the previous process's hand-over: {e}; its descriptors are closed and \
                 the agent starts fresh"
            );
            None
        }
    }
}

/// Reads the description and takes the sockets it names; closes the rest.
pub fn parse(mut fds: HashMap<String, OwnedFd>) -> Result<Received, HandoverError> {
    let state = fds
        .remove(STATE_FDNAME)
        .ok_or_else(|| HandoverError::Malformed(format!("no descriptor named {STATE_FDNAME}")))?;
    let mut file = std::fs::File::from(state);
    file.rewind().map_err(HandoverError::Read)?;
    let mut bytes = Vec::new();
    file.take(MAX_STATE + 1)
        .read_to_end(&mut bytes)
        .map_err(HandoverError::Read)?;
    if bytes.len() as u64 > MAX_STATE {
        return Err(HandoverError::TooLarge);
    }
    let versioned: Versioned =
        serde_json::from_slice(&bytes).map_err(|e| HandoverError::Malformed(e.to_string()))?;
    if versioned.version != VERSION {
        return Err(HandoverError::Version(versioned.version));
    }
    let state: State =
        serde_json::from_slice(&bytes).map_err(|e| HandoverError::Malformed(e.to_string()))?;
    let forwards = state
        .forwards
        .iter()
        .map(|entry| {
            entry.to_spec().map_err(|reason| HandoverError::Forward {
                id: entry.id.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let relay =
        serde_json::to_vec(&state.relay).map_err(|e| HandoverError::Malformed(e.to_string()))?;
    let inherited = Inherited::parse(&relay, &mut fds)?;
    if !fds.is_empty() {
        tracing::warn!(
            descriptors = fds.len(),
            "descriptors the hand-over state does not name are closed"
        );
    }
    tracing::info!(
        forwards = forwards.len(),
        listeners = inherited.listeners(),
        connections = inherited.connections(),
        ended_in_the_gap = inherited.missing(),
        "taking over from the previous process"
    );
    Ok(Received {
        forwards,
        inherited,
    })
}

/// The descriptors passed to this process, by name (a repeated name keeps
/// the last; the others are closed).
fn listen_fds() -> Result<HashMap<String, OwnedFd>, HandoverError> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(HashMap::new());
    }
    let fds = sd_notify::listen_fds_with_names().map_err(HandoverError::ListenFds)?;
    Ok(fds.map(|(fd, name)| (name, own(fd))).collect())
}

/// Takes ownership of a descriptor systemd passed.
#[allow(unsafe_code)]
fn own(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `sd_notify::listen_fds_with_names` returns the descriptors
    // 3..3+LISTEN_FDS only when LISTEN_PID is this process, which is the
    // protocol's promise that they are open and belong to it; `listen_fds`
    // runs once per process (TAKEN), so each is owned exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `FDSTOREREMOVE=1` for every name received: systemd's copies would keep
/// each relayed connection open after both its ends closed theirs.
fn remove_from_store(fds: &HashMap<String, OwnedFd>) {
    if !available() {
        return;
    }
    let socket = match notify_socket() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!("{e}: the descriptors stay in systemd's store until the unit stops");
            return;
        }
    };
    let mut failed = 0;
    for name in fds.keys() {
        let message = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
        if socket.send(message.as_bytes()).is_err() {
            failed += 1;
        }
    }
    if failed > 0 {
        tracing::warn!(
            failed,
            "cannot remove descriptors from systemd's store; they stay open until the unit stops"
        );
    }
}

/// `READY=1`: the agent serves (its data plane carries what the previous
/// process carried, or nothing after a fresh start); nothing without
/// `NOTIFY_SOCKET`.
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(text: &str) -> OwnedFd {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let mut file = std::fs::File::from(fd);
        file.write_all(text.as_bytes()).expect("write");
        OwnedFd::from(file)
    }

    fn with_socket(state: &str) -> (HashMap<String, OwnedFd>, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut fds = HashMap::new();
        fds.insert(STATE_FDNAME.to_owned(), memfd(state));
        fds.insert("navigator-relay-l0".to_owned(), OwnedFd::from(listener));
        (fds, addr)
    }

    /// A newer agent's state (or a corrupt one) is refused with a reason,
    /// never half taken; the sockets are closed with the map.
    #[test]
    fn future_and_corrupt_states_are_refused() {
        for (state, wanted) in [
            (r#"{"version":2}"#, "of version 2"),
            ("{\"vers", "not valid JSON"),
            (r#"{"version":1,"forwards":[]}"#, "not valid JSON"),
            (
                r#"{"version":1,"forwards":[],"relay":{"version":9}}"#,
                "version 9",
            ),
        ] {
            let (fds, addr) = with_socket(state);
            let e = parse(fds).expect_err(state);
            assert!(e.to_string().contains(wanted), "{state}: {e}");
            // Closed: the port can be bound again.
            std::net::TcpListener::bind(addr).expect("the refused socket is closed");
        }
        let e = parse(HashMap::new()).expect_err("no state");
        assert!(e.to_string().contains(STATE_FDNAME), "{e}");
    }

    #[test]
    fn a_valid_state_is_taken() {
        let (mut fds, addr) = with_socket("");
        let state = format!(
            r#"{{"version":1,"forwards":[],"relay":{{"version":1,"listeners":[{{"fd":"navigator-relay-l0","id":"1","protocol":"tcp","listen":"{addr}","accepted":0,"bytes_to_target":0,"bytes_from_target":0}}],"connections":[]}}}}"#
        );
        fds.insert(STATE_FDNAME.to_owned(), memfd(&state));
        let received = parse(fds).expect("valid");
        assert_eq!(received.inherited.listeners(), 1);
        assert!(received.forwards.is_empty());
    }
}
