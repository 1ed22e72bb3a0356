//! Navigator's data planes behind one [`Backend`] trait.
//!
//! An agent computes a [`Plan`] with `navigator_core::plan` from what it wants
//! and what the backend reports it carries ([`Backend::observe`]), then hands
//! the plan to [`Backend::apply`]. Each backend applies a plan as completely as
//! it can and reports per-forward failures, so one bad forward never blocks
//! the others.
//!
//! Backends today: `relay` (the userspace relay, no privileges needed). The
//! kernel backends (`nft`, `iptables`) and `socat` arrive with the kernel data
//! plane work and fit the same trait.

pub mod relay;

use std::future::Future;
use std::pin::Pin;

use navigator_core::{ForwardId, ForwardSpec, Plan};

pub use relay::{RelayBackend, RelayBackendConfig};

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

    /// Applies `plan` in its order (removals, retargets, additions).
    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, ApplyReport>;

    /// Stops carrying traffic, letting live connections finish where the
    /// backend has such a notion.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
