//! A proxy node of the address-group topology ([`super::ha`]) as one
//! process: the real agent's keepalived supervision, holder reporting and
//! data plane, given one hand-made forward on the virtual address (no
//! server, no RabbitMQ). It writes its `AgentState` as JSON to
//! `NAVK_NODE_STATE` every 100 ms, until it is killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use navigator_agent::config::AgentFileConfig;
use navigator_agent::options::make_backend;
use navigator_agent::vrrp::{Groups, Keepalived};
use navigator_agent::{Agent, AgentConfig};
use navigator_core::{ForwardId, ForwardSpec, Protocol};
use tokio_util::sync::CancellationToken;

/// Runs the node described by the `NAVK_NODE_*` variables; never returns
/// while it works.
pub fn node_main() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let config_path = PathBuf::from(var("NAVK_NODE_CONFIG"));
    let state_path = PathBuf::from(var("NAVK_NODE_STATE"));
    let forward = var("NAVK_NODE_FORWARD");
    let (listen, target) = forward.split_once('=').expect("LISTEN=TARGET");
    let listen: SocketAddr = listen.parse().expect("listen address");
    let target: SocketAddr = target.parse().expect("target address");
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let config = AgentFileConfig::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let vrrp = config.vrrp.clone().expect("a [vrrp:NAME] group");
        let program = vrrp
            .check_host(&config_path.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let shutdown = CancellationToken::new();
        let keepalived = Keepalived::start(&vrrp, program, &config.host, shutdown.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let groups = Arc::new(Groups::new(vrrp.clone(), keepalived.status()));
        let backend = make_backend(&config.backend);
        let agent = Agent::new(
            AgentConfig {
                host: config.host.clone(),
                external_addresses: config.external_addresses.clone(),
                port_range: config.port_range,
                report_interval: Duration::from_secs(1),
            },
            backend,
        )
        .with_groups(groups);
        // A fixed id: both nodes carry "the same" forward, as the server
        // would send it to every member.
        let id: ForwardId = "3f1c5b0e-8a1d-4c57-9d0b-6a0a4c6e7b01".parse().expect("id");
        let results = agent
            .sync(
                vec![ForwardSpec::single(id, Protocol::Tcp, listen, target)],
                1,
            )
            .await;
        tracing::info!(?results, "forward applied");
        let tmp = state_path.with_extension("tmp");
        loop {
            agent.retry_failed().await;
            let state = agent.state().await;
            if let Ok(text) = serde_json::to_string(&state)
                && std::fs::write(&tmp, text).is_ok()
            {
                let _ = std::fs::rename(&tmp, &state_path);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
