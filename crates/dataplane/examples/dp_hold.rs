//! Benchmark helper for `bench/dataplane/traffic.sh`: carries forwards with
//! one real Navigator backend until stdin closes, so traffic can be measured
//! through exactly what the agent would program.
//!
//! `dp_hold <relay|nft|iptables|socat> <extra> <proto:listen=target>...`
//! runs on the local host (the script starts it with `ip netns exec PROXY`),
//! applies the listed forwards plus `extra` filler forwards (kernel backends
//! only: TCP on 10.200.0.0/16 addresses nobody sends to, so the lookup
//! structures hold `extra` more entries), prints `READY <seconds to apply>`,
//! and on EOF of stdin removes everything (`Backend::shutdown`).

use std::io::BufRead as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Instant;

use navigator_core::{ForwardId, ForwardSpec, Plan, Protocol};
use navigator_dataplane::{
    Backend, IptablesBackend, IptablesConfig, KernelConfig, NftBackend, NftConfig, RelayBackend,
    RelayBackendConfig, SocatBackend, SocatConfig,
};

/// Filler forward `i`: 60,000 ports per unused listen address.
fn filler(i: u32) -> ForwardSpec {
    let listen = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + i / 60_000);
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

fn parse(arg: &str) -> Result<ForwardSpec, String> {
    let (proto, rest) = arg
        .split_once(':')
        .ok_or_else(|| format!("expected proto:listen=target, got {arg:?}"))?;
    let (listen, target) = rest
        .split_once('=')
        .ok_or_else(|| format!("expected proto:listen=target, got {arg:?}"))?;
    Ok(ForwardSpec {
        id: ForwardId::new_random(),
        protocol: match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(format!("bad protocol {proto:?}")),
        },
        listen: listen.parse().map_err(|e| format!("{listen:?}: {e}"))?,
        target: target.parse().map_err(|e| format!("{target:?}: {e}"))?,
        ports: 1,
        one_target_port: false,
        controls: Default::default(),
    })
}

fn backend(name: &str) -> Result<Box<dyn Backend>, String> {
    let kernel = KernelConfig {
        fix_sysctls: true,
        ..KernelConfig::default()
    };
    Ok(match name {
        "nft" => Box::new(NftBackend::new(NftConfig {
            kernel,
            ..NftConfig::default()
        })),
        "iptables" => Box::new(IptablesBackend::new(IptablesConfig {
            kernel,
            ..IptablesConfig::default()
        })),
        "socat" => Box::new(SocatBackend::new(SocatConfig::default())),
        "relay" => Box::new(RelayBackend::new(RelayBackendConfig {
            relay: Default::default(),
            max_connections_per_forward: None,
            max_udp_sessions_per_forward: None,
        })),
        _ => return Err(format!("unknown backend {name:?}")),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = async {
        let name = args
            .first()
            .ok_or("usage: dp_hold BACKEND EXTRA FORWARD...")?;
        let extra: u32 = args
            .get(1)
            .and_then(|n| n.parse().ok())
            .ok_or("EXTRA must be a number")?;
        let mut add = args[2..]
            .iter()
            .map(|a| parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        add.extend((0..extra).map(filler));
        let backend = backend(name)?;
        let started = Instant::now();
        let report = backend
            .apply(&Plan {
                add,
                ..Plan::default()
            })
            .await;
        if let Some(failure) = report.failed.first() {
            return Err(format!(
                "{name}: {} forwards failed, first: {}",
                report.failed.len(),
                failure.reason
            ));
        }
        println!("READY {:.3}", started.elapsed().as_secs_f64());
        // Hold until the driver closes stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0) {
                line.clear();
            }
        })
        .await;
        let all: Vec<ForwardId> = backend.observe().await.iter().map(|s| s.id).collect();
        backend
            .apply(&Plan {
                remove: all,
                ..Plan::default()
            })
            .await;
        backend.shutdown().await;
        Ok::<(), String>(())
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dp_hold: {e}");
            ExitCode::FAILURE
        }
    }
}
