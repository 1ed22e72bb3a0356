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
    /// Close a TCP connection after this long without payload in either direction.
    /// `None` (the default) keeps idle connections forever, like a plain TCP proxy.
    pub tcp_idle_timeout: Option<Duration>,
    /// Forget a UDP session (client address → upstream socket) after this long
    /// without datagrams in either direction.
    pub udp_idle_timeout: Duration,
    /// Give up connecting to a TCP target after this long (the client is then closed).
    pub connect_timeout: Duration,
    /// Copy engine for TCP.
    pub splice: SpliceMode,
    /// Maximum number of concurrent UDP sessions per listener; datagrams from further
    /// clients are dropped until a session expires.
    pub max_udp_sessions: usize,
    /// How long [`crate::Relay::shutdown`] lets live connections finish before cutting them.
    pub shutdown_grace: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            tcp_idle_timeout: None,
            udp_idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            splice: SpliceMode::default(),
            max_udp_sessions: 4096,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
