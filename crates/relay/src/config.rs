//! Tunables of the relay (`RelayConfig`) and the choice of copy engine (`SpliceMode`).

use std::time::Duration;

/// How TCP payload is moved between the two sockets of a relayed connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SpliceMode {
    /// Start every direction with a small buffered copy and switch that direction to
    /// `splice(2)` once it carries bulk data (a read fills the whole buffer). Short
    /// request/response traffic never pays for pipes; bulk streams get zero-copy.
    /// On non-Linux targets this is the buffered copy.
    #[default]
    Auto,
    /// Always use `splice(2)` through a pipe (Linux only; elsewhere falls back to buffered).
    Always,
    /// Always use a userspace buffered copy.
    Never,
}

/// Configuration shared by every listener of one [`crate::Relay`].
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Close a TCP connection (both sides) after this long without payload in either
    /// direction, whichever copy engine moves it: checked on one clock per listener
    /// ticking every eighth of it (no timer per connection), so the connection is
    /// closed after 1 to 1.25 times this. `None` (the default) keeps idle connections
    /// forever, like a plain TCP proxy.
    pub tcp_idle_timeout: Option<Duration>,
    /// Concurrent TCP connections of the whole relay, all listeners together; `None`
    /// is unlimited. Beyond it new connections are accepted and reset at once.
    pub max_connections: Option<usize>,
    /// Concurrent UDP sessions of the whole relay; `None` is unlimited. Datagrams
    /// that would open more are dropped. Each listener's [`crate::Limit`] applies too.
    pub max_udp_sessions: Option<usize>,
    /// Open files the relay may hold: one per listener and UDP session, two per TCP
    /// connection and splice pipe. `None` is unbounded. Past it listeners cannot be
    /// added, connections are closed at once, datagrams of new sessions dropped and
    /// bulk copies use buffers instead of pipes, so the relay never takes the
    /// descriptors the rest of its process needs.
    pub max_fds: Option<usize>,
    /// Forget a UDP session (client address → upstream socket) after this long
    /// without datagrams in either direction.
    pub udp_idle_timeout: Duration,
    /// Give up connecting to a TCP target after this long (the client is then closed).
    pub connect_timeout: Duration,
    /// Copy engine for TCP.
    pub splice: SpliceMode,
    /// How long [`crate::Relay::shutdown`] lets live connections finish before cutting them.
    pub shutdown_grace: Duration,
    /// Addresses bound with `IP_FREEBIND`: listeners on them are made even
    /// while the address is not on this host, and answer as soon as it
    /// arrives (a standby member of an address group). Only these: for any
    /// other address a bind to an absent address must fail loudly.
    pub freebind: Vec<std::net::IpAddr>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            tcp_idle_timeout: None,
            max_connections: None,
            max_udp_sessions: None,
            max_fds: None,
            udp_idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            splice: SpliceMode::default(),
            shutdown_grace: Duration::from_secs(10),
            freebind: Vec::new(),
        }
    }
}
