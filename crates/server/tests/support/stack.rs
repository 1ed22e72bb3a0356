//! The server's in-process stack for integration tests: a migrated store on a
//! temporary SQLite file, the auth the configuration names, a real agent with
//! the relay backend over the in-process transport, and the router.

use std::sync::Arc;
use std::time::Duration;

use navigator_agent::{Agent, AgentConfig};
use navigator_dataplane::{RelayBackend, RelayBackendConfig};
use navigator_rpc::Transport;
use navigator_rpc::inproc::InProcTransport;
use navigator_server::app::{AppState, router};
use navigator_server::auth::Auth;
use navigator_server::config::Config;
use navigator_server::control::Control;
use navigator_store::{Store, sqlite_url};

/// Everything a test may reach into; the directory and agent live as long as it.
// Each test binary reads the fields it needs, and `dir` and `agent` are held
// only for their lifetime, so some fields go unread in every binary.
#[allow(dead_code)]
pub struct Stack {
    pub app: axum::Router,
    pub control: Arc<Control>,
    pub auth: Arc<Auth>,
    pub dir: tempfile::TempDir,
    pub agent: Arc<Agent>,
}

/// Starts the stack for `config`, with its agent registered as the server
/// does at start-up.
pub async fn start(config: Config) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&sqlite_url(&dir.path().join("nav.db")))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let config = Arc::new(config);
    let auth = Arc::new(Auth::from_config(&config).unwrap());
    let transport: Arc<dyn Transport> = Arc::new(InProcTransport::new());
    // Loopback targets as the server would decide them for this config.
    let control = Arc::new(Control::new(
        store,
        transport.clone(),
        config.clone(),
        navigator_server::run::loopback_allowed(&config),
    ));
    let agent = Arc::new(Agent::new(
        AgentConfig {
            host: "proxy-1".into(),
            external_addresses: config.external_addresses.clone(),
            port_range: config.port_range,
            report_interval: config.report_interval,
        },
        Arc::new(RelayBackend::new(RelayBackendConfig::default())),
    ));
    tokio::spawn(navigator_agent::run(
        agent.clone(),
        transport,
        tokio_util::sync::CancellationToken::new(),
    ));
    // The agent starts listening asynchronously: retry until it answers.
    for _ in 0..100 {
        if control.report_state(agent.state().await).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let app = router(AppState {
        control: control.clone(),
        config,
        auth: auth.clone(),
        public_url: "http://navigator.test".into(),
    });
    Stack {
        app,
        control,
        auth,
        dir,
        agent,
    }
}
