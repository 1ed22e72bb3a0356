//! The `relay` backend: forwards carried by the userspace relay in this
//! process. It needs no privileges, which is why the all-in-one mode uses it.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use navigator_core::{ForwardId, ForwardSpec, Plan, Protocol};
use navigator_relay::{Limit, ListenerId, ListenerSpec, Relay, RelayConfig, RelayError};

use crate::{ApplyReport, Backend, BoxFuture, ForwardFailure};

/// Settings of the relay backend.
#[derive(Clone, Debug, Default)]
pub struct RelayBackendConfig {
    pub relay: RelayConfig,
    /// Concurrent TCP connections per forward, all its ports together; `None`
    /// is unlimited.
    pub max_connections_per_forward: Option<usize>,
    /// Concurrent UDP sessions per forward, all its ports together; `None` is
    /// unlimited.
    pub max_udp_sessions_per_forward: Option<usize>,
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

    /// Closes the listeners of `ports` ports of forward `id`.
    async fn remove_listeners(&self, id: ForwardId, ports: u16) -> Result<(), RelayError> {
        let mut result = Ok(());
        for offset in 0..ports {
            match self.relay.remove(listener_id(id, offset)).await {
                Ok(()) | Err(RelayError::NotFound(_)) => {}
                Err(e) => result = Err(e),
            }
        }
        result
    }

    async fn apply_plan(&self, plan: &Plan) -> ApplyReport {
        let mut report = ApplyReport::default();
        for id in &plan.remove {
            let ports = self.carried().get(id).map_or(1, |spec| spec.ports);
            match self.remove_listeners(*id, ports).await {
                Ok(()) => {
                    self.carried().remove(id);
                }
                Err(e) => report.failed.push(ForwardFailure {
                    id: *id,
                    reason: format!("cannot remove: {e}"),
                }),
            }
        }
        for spec in &plan.retarget {
            let retargeted = spec.pairs().zip(0..).try_for_each(|((_, target), offset)| {
                self.relay.retarget(listener_id(spec.id, offset), target)
            });
            match retargeted {
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
            match self.add_listeners(spec).await {
                Ok(()) => {
                    self.carried().insert(spec.id, *spec);
                }
                Err(reason) => report.failed.push(ForwardFailure {
                    id: spec.id,
                    reason,
                }),
            }
        }
        report
    }

    /// Binds one listener per port of `spec`. All or nothing: when one port
    /// cannot be bound, those already bound are closed again and the reason
    /// names the port, so a forward is never half carried.
    async fn add_listeners(&self, spec: &ForwardSpec) -> Result<(), String> {
        // One cap for all the forward's ports: a 1,000-port range gets the
        // forward's limit, not a thousand of them.
        let limit = match spec.protocol {
            Protocol::Tcp => Limit::new(
                format!("forward {}", spec.id),
                "[relay] max_connections_per_forward",
                self.config.max_connections_per_forward,
            ),
            Protocol::Udp => Limit::new(
                format!("forward {}", spec.id),
                "[relay] max_udp_sessions_per_forward",
                self.config.max_udp_sessions_per_forward,
            ),
        };
        for ((listen, target), offset) in spec.pairs().zip(0..) {
            let listener = ListenerSpec {
                protocol: match spec.protocol {
                    Protocol::Tcp => navigator_relay::Protocol::Tcp,
                    Protocol::Udp => navigator_relay::Protocol::Udp,
                },
                listen,
                target,
                limit: limit.clone(),
            };
            if let Err(e) = self.relay.add(listener_id(spec.id, offset), listener).await {
                let _ = self.remove_listeners(spec.id, offset).await;
                return Err(bind_reason(spec.protocol, listen, &e));
            }
        }
        Ok(())
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

    fn observe_one(&self, id: ForwardId) -> BoxFuture<'_, Option<ForwardSpec>> {
        let carried = self.carried().get(&id).copied();
        Box::pin(async move { carried })
    }

    fn apply<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, ApplyReport> {
        Box::pin(self.apply_plan(plan))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.relay.shutdown())
    }
}

/// The relay listener of the port at `offset` in a forward's range. Ids are
/// random v4 UUIDs, so two forwards' consecutive ids never meet.
fn listener_id(id: ForwardId, offset: u16) -> ListenerId {
    ListenerId(id.0.as_u128().wrapping_add(u128::from(offset)))
}

/// Words a user can act on for the usual bind failures.
fn bind_reason(protocol: Protocol, listen: std::net::SocketAddr, e: &RelayError) -> String {
    let port = listen.port();
    match e {
        RelayError::Bind { source, .. } => match source.kind() {
            io::ErrorKind::AddrInUse => {
                format!("port {port}/{protocol} already in use on host ({listen})")
            }
            io::ErrorKind::PermissionDenied => format!(
                "not permitted to listen on {listen} (ports below 1024 need CAP_NET_BIND_SERVICE)"
            ),
            io::ErrorKind::AddrNotAvailable => {
                format!("address {} is not configured on this host", listen.ip())
            }
            _ => format!("cannot listen on {listen}/{protocol}: {source}"),
        },
        RelayError::FdBudget { budget, .. } => format!(
            "cannot listen on {listen}/{protocol}: the relay already holds its budget of {budget} open files \
             (raise the proxy's RLIMIT_NOFILE or lower [relay] max_connections / max_udp_sessions)"
        ),
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
            ports: 1,
            one_target_port: false,
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

    /// `n` consecutive free ports on loopback from `from` (300 ports to
    /// search; each test its own window, since tests run in parallel).
    /// The first block of `n` free ports from `from`. Callers start below
    /// Linux's ephemeral range (32768-60999): there, a port this test frees
    /// can be taken at once by another test's outgoing connection.
    fn free_block(from: u16, n: u16) -> u16 {
        'search: for first in (from..from + 300).step_by(usize::from(n)) {
            for port in first..first + n {
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                    continue 'search;
                }
            }
            return first;
        }
        panic!("no block of {n} free ports in {from}-{}", from + 300);
    }

    #[tokio::test]
    async fn max_connections_per_forward_spans_the_ports_of_a_range() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let backend = RelayBackend::new(RelayBackendConfig {
            max_connections_per_forward: Some(2),
            ..RelayBackendConfig::default()
        });
        let first = free_block(26300, 3);
        let range = ForwardSpec {
            ports: 3,
            one_target_port: true,
            ..spec(
                std::net::SocketAddr::from(([127, 0, 0, 1], first)),
                "127.0.0.1:9",
            )
        };
        let range = ForwardSpec { target, ..range };
        let report = backend.apply(&plan(&[range], &[])).await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let mut held = Vec::new();
        for port in [first, first + 1] {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            s.write_all(b"hi").await.unwrap();
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf).await.unwrap();
            held.push(s);
        }
        // The third port is the same forward's: its third connection is closed.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", first + 2))
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
        drop(held);
        backend.shutdown().await;
    }

    #[tokio::test]
    async fn a_range_is_one_listener_per_port_and_all_or_nothing() {
        let backend = RelayBackend::new(RelayBackendConfig::default());
        let first = free_block(26000, 3);
        let range = ForwardSpec {
            ports: 3,
            ..spec(
                std::net::SocketAddr::from(([127, 0, 0, 1], first)),
                "127.0.0.1:9",
            )
        };
        let report = backend.apply(&plan(&[range], &[])).await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        for port in first..first + 3 {
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", port)).is_err(),
                "port {port} is listened on"
            );
        }
        let report = backend.apply(&plan(&[], &[range])).await;
        assert!(report.failed.is_empty());
        for port in first..first + 3 {
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("closed on delete");
        }

        // The last port is taken: the forward fails naming it, and the two
        // ports bound before are closed again.
        let blocker = std::net::TcpListener::bind(("127.0.0.1", first + 2)).unwrap();
        let report = backend.apply(&plan(&[range], &[])).await;
        assert_eq!(report.failed.len(), 1);
        assert!(
            report.failed[0]
                .reason
                .contains(&format!("port {}/tcp already in use", first + 2)),
            "{}",
            report.failed[0].reason
        );
        assert!(backend.observe().await.is_empty());
        drop(blocker);
        for port in first..first + 2 {
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("rolled back");
        }
        backend.shutdown().await;
    }
}
