//! The `relay` backend: forwards carried by the userspace relay in this
//! process. It needs no privileges, which is why the all-in-one mode uses it.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use navigator_core::{ForwardId, ForwardSpec, Plan, Protocol};
use navigator_relay::{ListenerId, ListenerSpec, Relay, RelayConfig, RelayError};

use crate::{ApplyReport, Backend, BoxFuture, ForwardFailure};

/// Settings of the relay backend.
#[derive(Clone, Debug, Default)]
pub struct RelayBackendConfig {
    pub relay: RelayConfig,
    /// Concurrent connections per forward; `None` is unlimited.
    pub max_connections_per_forward: Option<usize>,
}

pub struct RelayBackend {
    relay: Relay,
    config: RelayBackendConfig,
    // What the relay carries, by forward. A std mutex: never held across an
    // await (the relay calls happen outside it).
    carried: Mutex<BTreeMap<ForwardId, ForwardSpec>>,
}

impl RelayBackend {
    pub fn new(config: RelayBackendConfig) -> RelayBackend {
        RelayBackend {
            relay: Relay::new(config.relay.clone()),
            config,
            carried: Mutex::new(BTreeMap::new()),
        }
    }

    fn carried(&self) -> std::sync::MutexGuard<'_, BTreeMap<ForwardId, ForwardSpec>> {
        self.carried
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn apply_plan(&self, plan: &Plan) -> ApplyReport {
        let mut report = ApplyReport::default();
        for id in &plan.remove {
            match self.relay.remove(listener_id(*id)).await {
                Ok(()) | Err(RelayError::NotFound(_)) => {
                    self.carried().remove(id);
                }
                Err(e) => report.failed.push(ForwardFailure {
                    id: *id,
                    reason: format!("cannot remove: {e}"),
                }),
            }
        }
        for spec in &plan.retarget {
            match self.relay.retarget(listener_id(spec.id), spec.target) {
                Ok(()) => {
                    self.carried().insert(spec.id, *spec);
                }
                Err(e) => report.failed.push(ForwardFailure {
                    id: spec.id,
                    reason: format!("cannot retarget: {e}"),
                }),
            }
        }
        for spec in &plan.add {
            let listener = ListenerSpec {
                protocol: match spec.protocol {
                    Protocol::Tcp => navigator_relay::Protocol::Tcp,
                    Protocol::Udp => navigator_relay::Protocol::Udp,
                },
                listen: spec.listen,
                target: spec.target,
                max_connections: self.config.max_connections_per_forward,
            };
            match self.relay.add(listener_id(spec.id), listener).await {
                Ok(()) => {
                    self.carried().insert(spec.id, *spec);
                }
                Err(e) => report.failed.push(ForwardFailure {
                    id: spec.id,
                    reason: bind_reason(spec, &e),
                }),
            }
        }
        report
    }
}

impl Backend for RelayBackend {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn observe(&self) -> BoxFuture<'_, Vec<ForwardSpec>> {
        let carried = self.carried().values().copied().collect();
        Box::pin(async move { carried })
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, ApplyReport> {
        Box::pin(self.apply_plan(plan))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.relay.shutdown())
    }
}

fn listener_id(id: ForwardId) -> ListenerId {
    ListenerId(id.0.as_u128())
}

/// Words a user can act on for the usual bind failures.
fn bind_reason(spec: &ForwardSpec, e: &RelayError) -> String {
    let port = spec.listen.port();
    let protocol = spec.protocol;
    match e {
        RelayError::Bind { source, .. } => match source.kind() {
            io::ErrorKind::AddrInUse => {
                format!(
                    "port {port}/{protocol} already in use on host ({})",
                    spec.listen
                )
            }
            io::ErrorKind::PermissionDenied => format!(
                "not permitted to listen on {} (ports below 1024 need CAP_NET_BIND_SERVICE)",
                spec.listen
            ),
            io::ErrorKind::AddrNotAvailable => format!(
                "address {} is not configured on this host",
                spec.listen.ip()
            ),
            _ => format!("cannot listen on {}/{protocol}: {source}", spec.listen),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use navigator_core::plan;

    fn spec(listen: std::net::SocketAddr, target: &str) -> ForwardSpec {
        ForwardSpec {
            id: ForwardId::new_random(),
            protocol: Protocol::Tcp,
            listen,
            target: target.parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn applies_plans_and_reports_port_in_use() {
        let backend = RelayBackend::new(RelayBackendConfig::default());
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let good = spec(free, "127.0.0.1:9");
        let bad = spec(taken.local_addr().unwrap(), "127.0.0.1:9");
        let report = backend.apply(&plan(&[good, bad], &[])).await;
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].id, bad.id);
        assert!(
            report.failed[0].reason.contains("already in use on host"),
            "{}",
            report.failed[0].reason
        );
        assert_eq!(backend.observe().await, vec![good]);

        let report = backend.apply(&plan(&[], &backend.observe().await)).await;
        assert!(report.failed.is_empty());
        assert!(backend.observe().await.is_empty());
        // The port is free again once the forward is removed.
        std::net::TcpListener::bind(free).unwrap();
        backend.shutdown().await;
    }
}
