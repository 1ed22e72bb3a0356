//! The error type returned by the relay's control API.

use std::io;
use std::net::SocketAddr;

use crate::{ListenerId, Protocol};

/// Errors from [`crate::Relay`] operations. Runtime errors of individual relayed
/// connections are not reported here; they are logged and counted in the stats.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// `add` was called with an id that is already serving.
    #[error("relay listener {0} already exists")]
    AlreadyExists(ListenerId),
    /// The id is not (or no longer) known.
    #[error("relay listener {0} not found")]
    NotFound(ListenerId),
    /// Binding the listening socket failed. `source.kind()` is preserved
    /// (e.g. `AddrInUse`, `PermissionDenied`, `AddrNotAvailable`).
    #[error("cannot listen on {protocol} {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        protocol: Protocol,
        #[source]
        source: io::Error,
    },
    /// The relay holds as many open files as [`crate::RelayConfig::max_fds`] allows.
    #[error(
        "cannot listen on {protocol} {addr}: the relay's budget of {budget} open files is used up"
    )]
    FdBudget {
        addr: SocketAddr,
        protocol: Protocol,
        budget: usize,
    },
    /// `add` was called after `shutdown`.
    #[error("relay is shut down")]
    ShutDown,
}
