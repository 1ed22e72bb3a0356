//! What the agent benchmark examples (`agent_memory`, `agent_creates`)
//! share: the forwards they make and the real backend they run them on.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use navigator_core::{ForwardId, ForwardSpec, Protocol};
use navigator_dataplane::{
    Backend, KernelConfig, NftBackend, NftConfig, RelayBackend, RelayBackendConfig,
};

/// Forward `i` of `backend`: 60,000 ports per listening address.
pub fn forward(backend: &str, i: u32) -> ForwardSpec {
    let base = match backend {
        "relay" => Ipv4Addr::new(127, 1, 0, 1),
        _ => Ipv4Addr::new(10, 200, 0, 1),
    };
    let listen = Ipv4Addr::from(u32::from(base) + i / 60_000);
    ForwardSpec {
        id: ForwardId::new_random(),
        protocol: Protocol::Tcp,
        listen: SocketAddr::V4(SocketAddrV4::new(listen, 1_000 + (i % 60_000) as u16)),
        target: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 201, 0, 1), 9)),
        ports: 1,
        one_target_port: false,
        controls: Default::default(),
    }
}

pub fn backend(name: &str, forwards: u32) -> Result<Arc<dyn Backend>, String> {
    Ok(match name {
        "nft" => Arc::new(NftBackend::new(NftConfig {
            kernel: KernelConfig {
                fix_sysctls: true,
                ..KernelConfig::default()
            },
            ..NftConfig::default()
        })),
        "relay" => {
            use rustix::process::{Resource, getrlimit, setrlimit};
            // A listener per forward, and room for the process.
            let files = u64::from(forwards) + 256;
            let mut limit = getrlimit(Resource::Nofile);
            if limit.maximum.is_some_and(|max| max < files) {
                return Err(format!(
                    "{forwards} relay forwards need {files} open files; the hard RLIMIT_NOFILE is {:?} (raise it, e.g. prlimit --nofile={files} or LimitNOFILE=)",
                    limit.maximum
                ));
            }
            limit.current = Some(files);
            setrlimit(Resource::Nofile, limit)
                .map_err(|e| format!("setrlimit NOFILE {files}: {e}"))?;
            Arc::new(RelayBackend::new(RelayBackendConfig {
                relay: navigator_relay::RelayConfig::default(),
                // The agent's defaults.
                max_connections_per_forward: Some(1024),
                max_udp_sessions_per_forward: Some(1024),
            }))
        }
        _ => return Err(format!("unknown backend {name:?}: nft or relay")),
    })
}
