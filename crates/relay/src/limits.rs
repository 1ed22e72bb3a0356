//! Caps on what the relay holds: a [`Limit`] shared by the listeners it is
//! given (e.g. every port of one forward), process-wide caps on TCP
//! connections and UDP sessions, and the relay's budget of open files.
//!
//! Each cap is a [`Gate`]: a counter with a maximum, refusals counted, and a
//! warning logged once per episode (the first refusal after
//! [`EPISODE_GAP`] without one) — at a limit every new connection is refused,
//! so a line per refusal would flood the log exactly when it is read.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing::{info, warn};

/// An episode of refusals ends after this long without one.
pub(crate) const EPISODE_GAP: Duration = Duration::from_secs(10);

/// Milliseconds since the first call, never 0 (0 means "never" below).
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// A counter with a maximum (`usize::MAX` = unlimited).
pub(crate) struct Gate {
    max: AtomicUsize,
    active: AtomicUsize,
    refused: AtomicU64,
    warnings: AtomicU64,
    last_refusal_ms: AtomicU64,
}

impl Gate {
    pub(crate) fn new(max: Option<usize>) -> Gate {
        Gate {
            max: AtomicUsize::new(max.unwrap_or(usize::MAX)),
            active: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            warnings: AtomicU64::new(0),
            last_refusal_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn max(&self) -> Option<usize> {
        match self.max.load(Ordering::Relaxed) {
            usize::MAX => None,
            n => Some(n),
        }
    }

    pub(crate) fn set_max(&self, max: Option<usize>) {
        self.max.store(max.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Takes `n` units if they fit under the maximum.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        // fetch_update rather than load+add, so two racing accepts cannot both
        // take the last unit.
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                active.checked_add(n).filter(|&after| after <= max)
            })
            .is_ok()
    }

    /// Takes `n` units whatever the maximum (for what already exists, such
    /// as a pipe the pool hands back).
    pub(crate) fn give_back(&self, n: usize) {
        self.active.fetch_sub(n, Ordering::AcqRel);
    }

    /// Counts a refusal; true when it opens an episode (the caller warns).
    pub(crate) fn refuse(&self) -> bool {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let prev = self.last_refusal_ms.swap(now, Ordering::Relaxed);
        let opens = prev == 0 || now.saturating_sub(prev) >= EPISODE_GAP.as_millis() as u64;
        if opens {
            self.warnings.fetch_add(1, Ordering::Relaxed);
        }
        opens
    }

    pub(crate) fn counts(&self) -> GateStats {
        GateStats {
            max: self.max(),
            active: self.active(),
            refused: self.refused.load(Ordering::Relaxed),
            warnings: self.warnings.load(Ordering::Relaxed),
        }
    }
}

/// Counters of one cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// `None` = unlimited.
    pub max: Option<usize>,
    /// Units held now (connections, sessions, or open files).
    pub active: usize,
    /// Connections closed or datagrams dropped because the cap was reached.
    pub refused: u64,
    /// Warnings logged: one per episode of refusals.
    pub warnings: u64,
}

/// A cap on concurrent TCP connections or UDP sessions shared by every
/// listener given a clone of it: one per forward, so that a 1,000-port range
/// gets one cap, not 1,000. Cloning shares the cap.
#[derive(Clone)]
pub struct Limit(Arc<LimitInner>);

struct LimitInner {
    /// Named in the warning, e.g. `forward 1234…`.
    name: String,
    /// The option an operator raises, named in the warning.
    option: String,
    /// Refusals are logged at `info`, not `warn`: a cap its user chose (a
    /// forward's own `max_connections`), which is not the operator's to raise.
    quiet: bool,
    gate: Gate,
}

impl Limit {
    /// `max = None` is unlimited. `name` and `option` only word the warning.
    pub fn new(name: impl Into<String>, option: impl Into<String>, max: Option<usize>) -> Limit {
        Limit::build(name.into(), option.into(), max, false)
    }

    /// Like [`Limit::new`], but an episode of refusals is logged at `info`:
    /// for a cap that its user set and reaches on purpose.
    pub fn quiet(name: impl Into<String>, option: impl Into<String>, max: Option<usize>) -> Limit {
        Limit::build(name.into(), option.into(), max, true)
    }

    fn build(name: String, option: String, max: Option<usize>, quiet: bool) -> Limit {
        Limit(Arc::new(LimitInner {
            name,
            option,
            quiet,
            gate: Gate::new(max),
        }))
    }

    /// An unlimited cap of its own.
    pub fn unlimited() -> Limit {
        Limit::new("listener", "max_connections", None)
    }

    pub fn max(&self) -> Option<usize> {
        self.0.gate.max()
    }

    /// Lowering it does not close live connections; it only refuses new ones
    /// until under the new maximum.
    pub fn set_max(&self, max: Option<usize>) {
        self.0.gate.set_max(max);
    }

    pub fn stats(&self) -> GateStats {
        self.0.gate.counts()
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.0.gate
    }

    pub(crate) fn warn_refused(&self, what: &str) {
        if !self.0.gate.refuse() {
            return;
        }
        if self.0.quiet {
            info!(
                limit = ?self.0.gate.max(),
                "{} reached its {} of {} concurrent {what}: refusing new ones (logged once per episode)",
                self.0.name,
                self.0.option,
                self.0.gate.max().unwrap_or(usize::MAX),
            );
        } else {
            warn!(
                limit = ?self.0.gate.max(),
                "{} reached its limit of {} concurrent {what}: refusing new ones (one warning per episode); raise {} if this is legitimate load",
                self.0.name,
                self.0.gate.max().unwrap_or(usize::MAX),
                self.0.option
            );
        }
    }
}

impl Default for Limit {
    fn default() -> Self {
        Limit::unlimited()
    }
}

impl PartialEq for Limit {
    /// The same cap, not an equal maximum.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Limit {}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.0.name)
            .field("max", &self.max())
            .field("active", &self.0.gate.active())
            .finish()
    }
}

/// The process-wide caps of one relay.
pub(crate) struct Caps {
    pub(crate) tcp: Gate,
    pub(crate) udp: Gate,
    /// Open files: a listener 1, a TCP connection 2, a UDP session 1, a
    /// splice pipe 2.
    pub(crate) fds: Gate,
    /// The open file kept for refusing connections at EMFILE.
    pub(crate) spare: Spare,
    /// Refusals at the process's own open-file limit (EMFILE/ENFILE), over
    /// all listeners: one warning per episode for the whole relay, not one
    /// per port of a 1,000-port range.
    pub(crate) fd_limit: Gate,
}

impl Caps {
    pub(crate) fn warn(gate: &Gate, what: &str, option: &str) {
        if gate.refuse() {
            warn!(
                limit = ?gate.max(),
                "relay reached its limit of {} {what}: refusing new ones (one warning per episode); raise {option}",
                gate.max().unwrap_or(usize::MAX)
            );
        }
    }
}

/// One open file (`/dev/null`) kept in reserve, so that at the process's
/// open-file limit (EMFILE, ENFILE: a budget that does not fit, or another
/// part of the process holding descriptors) an accept loop can still take a
/// pending connection off the backlog and reset it — close the spare, accept,
/// reset, reopen the spare — instead of leaving it unanswered in the backlog,
/// where the client hangs until its own timeout. One per relay, shared by its
/// listeners behind a mutex so that two of them do not spend it at once.
pub(crate) struct Spare(Mutex<Option<std::fs::File>>);

impl Spare {
    pub(crate) fn new() -> Spare {
        Spare(Mutex::new(Spare::open()))
    }

    fn open() -> Option<std::fs::File> {
        std::fs::File::open("/dev/null").ok()
    }

    /// Takes one pending connection off `listener` and resets it (SO_LINGER
    /// 0). False when there was none, or no descriptor even with the spare
    /// closed (another thread took it): the caller backs off.
    pub(crate) fn refuse_one(&self, listener: &impl std::os::fd::AsFd) -> bool {
        let mut spare = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.is_none() {
            // Lost earlier to another part of the process; the first
            // descriptor that frees up becomes the spare again.
            *spare = Spare::open();
        }
        if spare.take().is_none() {
            return false;
        }
        let refused = match socket2::SockRef::from(listener).accept() {
            Ok((client, _)) => {
                let _ = client.set_linger(Some(Duration::ZERO));
                true
            }
            Err(_) => false,
        };
        *spare = Spare::open();
        refused
    }
}
