//! `navigator-agent health`: one line and an exit code for systemd,
//! Nagios-style monitors and operators. The running agent has no HTTP
//! listener, so the check asks it the way the servers do: a `get_state`
//! call on its own topic (`navigator-proxy.<host>`) over the broker, which
//! proves at once that the broker is reachable and that the agent is
//! serving. It also runs the data plane's host checks (tools, sysctls,
//! without fixing anything) and the port-pool check.
//!
//! Healthy: `OK: ...`, exit 0. Not: `FAILED: ...`, exit 1 (the reasons
//! joined by `; `). Host-check warnings keep OK and are named in the line.

use std::sync::Arc;
use std::time::Duration;

use navigator_core::PortRange;
use navigator_dataplane::{Backend, Severity};
use navigator_rpc::messages::ResultStatus;
use navigator_rpc::{AgentClient, Transport};

/// How long the agent has to answer before it counts as down.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The verdict and its one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub line: String,
}

impl Health {
    /// Unhealthy before anything could be asked (configuration, broker).
    pub fn failed(reason: impl Into<String>) -> Health {
        Health {
            healthy: false,
            line: format!("FAILED: {}", reason.into()),
        }
    }

    /// The process's exit code: 0 healthy, 1 not.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.healthy)
    }
}

/// Asks the agent of `host` for its state over `transport` within
/// `timeout`, and checks the host for `backend` and the pool `pool`.
/// `ephemeral`/`reserved` are the two sysctls' text (see
/// [`navigator_dataplane::preflight::port_pool_findings`]).
pub async fn check(
    transport: Arc<dyn Transport>,
    host: &str,
    backend: &dyn Backend,
    pool: PortRange,
    ephemeral: Option<&str>,
    reserved: Option<&str>,
    timeout: Duration,
) -> Health {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let client = AgentClient::new(transport, timeout);
    match tokio::time::timeout(timeout + Duration::from_secs(1), client.get_state(host)).await {
        Ok(Ok(state)) => {
            let errors = state
                .forwards
                .iter()
                .filter(|f| f.status == ResultStatus::Error)
                .count();
            notes.push(format!(
                "agent {host} answers ({} backend, generation {}, {} forwards, {errors} in ERROR)",
                state.backend,
                state.generation,
                state.forwards.len()
            ));
        }
        Ok(Err(e)) => problems.push(format!(
            "agent {host} did not answer get_state ({e}); is navigator-agent running with this configuration?"
        )),
        Err(_) => problems.push(format!(
            "agent {host} did not answer within {timeout:?}; is navigator-agent running with this configuration?"
        )),
    }
    let pool_findings =
        navigator_dataplane::preflight::port_pool_findings(pool, ephemeral, reserved);
    let findings = backend.preflight(&[]).await;
    let mut warnings = 0;
    for finding in findings.iter().chain(&pool_findings) {
        match finding.severity {
            Severity::Blocking => problems.push(format!("{} backend: {finding}", backend.name())),
            Severity::Warning => warnings += 1,
        }
    }
    if warnings > 0 {
        notes.push(format!(
            "{warnings} host warning(s), as logged at the agent's start"
        ));
    }
    if problems.is_empty() {
        Health {
            healthy: true,
            line: format!("OK: {}", notes.join("; ")),
        }
    } else {
        Health::failed(problems.join("; "))
    }
}
