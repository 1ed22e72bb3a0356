//! Navigator's data planes behind one [`Backend`] trait.
//!
//! An agent computes a [`Plan`] with `navigator_core::plan` from what it wants
//! and what the backend reports it carries ([`Backend::observe`]), then hands
//! the plan to [`Backend::apply`]. Each backend applies a plan as completely as
//! it can and reports per-forward failures, so one bad forward never blocks
//! the others.
//!
//! Backends: `relay` (the userspace relay, no privileges needed), `nft`
//! (kernel NAT through one nftables table of its own; the kernel default),
//! `iptables` (kernel NAT through `NAVIGATOR-*` chains) and `socat` (one
//! supervised socat per forward, the original method). Host tools run
//! through [`exec`]; host preconditions are checked by [`preflight`].

pub mod exec;
pub mod iptables;
pub mod kernel;
pub mod nft;
pub mod preflight;
pub mod relay;
pub mod socat;

use std::future::Future;
use std::pin::Pin;

use std::collections::HashMap;

use navigator_core::{ForwardId, ForwardSpec, ForwardUsage, Plan};

pub use exec::Host;
pub use iptables::{IptablesBackend, IptablesConfig};
pub use kernel::{ConntrackCleanup, KernelConfig};
pub use nft::{NftBackend, NftConfig};
pub use preflight::{Finding, Severity};
pub use relay::{RelayBackend, RelayBackendConfig};
pub use socat::{SocatBackend, SocatConfig};

/// A boxed future, so backends can be chosen at run time (`Box<dyn Backend>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What went wrong with one forward while applying a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardFailure {
    pub id: ForwardId,
    /// A sentence for the forward's `status_reason`, e.g.
    /// "port 20001/tcp already in use on host (127.0.0.1:20001)".
    pub reason: String,
}

/// The outcome of [`Backend::apply`]: every forward of the plan not listed
/// here was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub failed: Vec<ForwardFailure>,
}

/// A data plane that can carry forwards.
pub trait Backend: Send + Sync + 'static {
    /// Short name, as in the `[agent] backend` option.
    fn name(&self) -> &'static str;

    /// The forwards the data plane carries right now.
    fn observe(&self) -> BoxFuture<'_, Vec<ForwardSpec>>;

    /// What the data plane carries of forward `id`, if anything. Agents use
    /// it for single-forward changes, whose cost must not grow with the
    /// number of forwards; backends override it with a lookup.
    fn observe_one(&self, id: ForwardId) -> BoxFuture<'_, Option<ForwardSpec>> {
        Box::pin(async move { self.observe().await.into_iter().find(|f| f.id == id) })
    }

    /// Applies `plan` in its order (removals, retargets, additions).
    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, ApplyReport>;

    /// How long the agent may hold a batch open for more changes while
    /// changes keep coming (its previous batch held several), as kube-proxy's
    /// minimum sync period: for a backend whose every `apply` runs a process
    /// that costs milliseconds whatever it holds, fewer and larger batches
    /// cost less per change. Zero (the default): apply at once.
    fn batch_linger(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Checks the host's preconditions for carrying forwards to `targets`
    /// (tools, sysctls, kernel features) and returns what is wrong, each
    /// with its fix. Backends that need nothing of the host return nothing.
    fn preflight<'a>(&'a self, targets: &'a [std::net::IpAddr]) -> BoxFuture<'a, Vec<Finding>> {
        let _ = targets;
        Box::pin(async { Vec::new() })
    }

    /// Stops carrying traffic, letting live connections finish where the
    /// backend has such a notion.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// Hands the data plane over to the process that replaces this one,
    /// instead of [`Backend::shutdown`]: the relay stops accepting but keeps
    /// its listening sockets open, brings its connections to a clean point
    /// and returns every socket with their description
    /// (`navigator_relay::Relay::hand_over`). `None` (the default): this
    /// backend hands nothing over; kernel backends need not, their rules
    /// stay in the kernel.
    fn hand_over(&self) -> BoxFuture<'_, Option<navigator_relay::Handover>> {
        Box::pin(async { None })
    }

    /// Takes the sockets a previous process handed over, for the forwards
    /// applied next: a forward's listener on the same protocol and address
    /// takes its inherited socket and connections instead of binding. False
    /// (the default): this backend takes none, and they are closed.
    fn inherit(&self, inherited: navigator_relay::Inherited) -> bool {
        drop(inherited);
        false
    }

    /// Closes what was inherited and no forward took; returns how many
    /// listeners and connections that was.
    fn close_unclaimed(&self) -> (usize, usize) {
        (0, 0)
    }

    /// Changes the per-forward caps (`[relay] max_connections_per_forward`
    /// and `max_udp_sessions_per_forward`; `None` is unlimited) of the
    /// forwards carried and of those added from now on, without closing
    /// anything: a lower cap only refuses new connections until under it
    /// (SIGHUP). Only the relay has such caps; the others return false.
    fn set_forward_caps(&self, tcp: Option<usize>, udp: Option<usize>) -> bool {
        let _ = (tcp, udp);
        false
    }

    /// What the data plane counted for each of `ids` it carries (forwards it
    /// does not carry are left out), or why it counts nothing: a sentence
    /// the API shows in place of the numbers.
    fn usage<'a>(&'a self, ids: &'a [ForwardId]) -> BoxFuture<'a, UsageReport> {
        let _ = ids;
        let name = self.name();
        Box::pin(async move { Err(format!("the {name} backend does not count usage")) })
    }
}

/// The answer of [`Backend::usage`].
pub type UsageReport = Result<HashMap<ForwardId, ForwardUsage>, String>;
