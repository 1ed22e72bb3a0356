//! Benchmark helper for `bench/dataplane/traffic.sh`: carries forwards with
//! one real Navigator backend until stdin closes, so traffic can be measured
//! through exactly what the agent would program.
//!
//! `dp_hold <relay|nft|iptables|socat> <extra> <proto:listen=target>...`
//! runs on the local host (the script starts it with `ip netns exec PROXY`),
//! applies the listed forwards plus `extra` filler forwards (kernel backends
//! only: TCP on 10.200.0.0/16 addresses nobody sends to, so the lookup
//! structures hold `extra` more entries), prints `READY <seconds to apply>`,
//! and on EOF of stdin removes everything (`Backend::shutdown`). The relay
//! gets the caps `navigator-agent` would derive from the open-file limit
//! (`DP_HOLD_NO_BUDGET=1`: none).
//!
//! With `CIDRS=N` in the environment (for `bench/dataplane/allowlist.sh`) the
//! listed forwards get an allowlist of `N` networks through
//! `ForwardSpec::controls`: `N - 1` generated networks that do not match, then
//! the client's network `CIDRS_CLIENT` (IPv4, e.g. `198.18.0.0/24`). The
//! generated networks have varied prefix lengths, are spread evenly over the
//! IPv4 space from `1.0.0.0` up to the client's network and never overlap it
//! or each other, so the client's network is last both in generation order and
//! in `Controls::new`'s canonical (sorted) order: a backend that scanned the
//! list would scan all of it for every allowed connection. With
//! `CIDRS_REFUSE=1` the client's network is left out (`N` networks that do not
//! match): the benchmark's check that the filter is live.
//!
//! `RELAY_CAPS=agent` gives the relay backend the caps `navigator-agent`
//! derives from the open-file limit, and `RELAY_PER_FORWARD=N` a per-forward
//! connection cap (for `bench/relay/forwarders.sh`; see `relay_config`).

use std::io::BufRead as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Instant;

use navigator_core::{Controls, ForwardId, ForwardSpec, Plan, Protocol, ProxyProtocol, parse_cidr};
use navigator_dataplane::{
    Backend, IptablesBackend, IptablesConfig, KernelConfig, NftBackend, NftConfig, RelayBackend,
    RelayBackendConfig, SocatBackend, SocatConfig,
};

/// Allocates as navigator-agent and navigator-server do (jemalloc), so that
/// memory and CPU are measured as they ship.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

/// The allowlist asked for by `CIDRS`, `CIDRS_CLIENT` and `CIDRS_REFUSE`
/// (see the module documentation); `None` without `CIDRS` or with `CIDRS=0`.
fn allowlist_from_env() -> Result<Option<Controls>, String> {
    let n: u32 = match std::env::var("CIDRS") {
        Err(_) => return Ok(None),
        Ok(v) => v
            .parse()
            .map_err(|_| format!("CIDRS must be a number, got {v:?}"))?,
    };
    if n == 0 {
        return Ok(None);
    }
    let client = std::env::var("CIDRS_CLIENT")
        .map_err(|_| "CIDRS needs CIDRS_CLIENT, the client's IPv4 network".to_owned())?;
    let refuse = std::env::var("CIDRS_REFUSE").is_ok_and(|v| v == "1");
    allowlist(n, &client, refuse).map(Some)
}

/// `n` networks: `n - 1` (or, with `refuse`, `n`) that do not contain any
/// address of `client`, then `client` itself unless `refuse`.
fn allowlist(n: u32, client: &str, refuse: bool) -> Result<Controls, String> {
    let bad =
        || format!("CIDRS_CLIENT must be an IPv4 network such as 198.18.0.0/24, got {client:?}");
    let (address, prefix) = client.split_once('/').ok_or_else(bad)?;
    let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    parse_cidr(client).map_err(|e| format!("CIDRS_CLIENT: {e}"))?;
    let generated = if refuse { n } else { n - 1 };
    // Networks go below the client's, so that it sorts last, and above
    // 0.0.0.0/8: one equal slot each.
    let low = u64::from(u32::from(Ipv4Addr::new(1, 0, 0, 0)));
    let high = u64::from(u32::from(address));
    let slot = high.saturating_sub(low) / u64::from(generated.max(1));
    if slot == 0 {
        return Err(format!(
            "CIDRS_CLIENT {client} is too low in the address space for {generated} networks below it"
        ));
    }
    let mut cidrs = Vec::with_capacity(n as usize);
    for i in 0..u64::from(generated) {
        let start = low + i * slot;
        let end = start + slot;
        // Prefix lengths /16 to /32 in a scattered order, longer where the
        // slot is too small for the wanted one.
        let mut len = 16 + (i * 7_919 % 17) as u32;
        let network = loop {
            let size = 1u64 << (32 - len);
            let aligned = start.div_ceil(size) * size;
            if aligned + size <= end {
                break aligned;
            }
            len += 1;
        };
        let network = Ipv4Addr::from(network as u32);
        cidrs.push(parse_cidr(&format!("{network}/{len}")).map_err(|e| e.to_string())?);
    }
    if !refuse {
        cidrs.push(parse_cidr(client).map_err(|e| e.to_string())?);
    }
    let controls = Controls::new(cidrs, None, ProxyProtocol::None);
    // What the benchmark relies on, checked rather than assumed.
    let last = controls.allowed_cidrs.last().map(ToString::to_string);
    let ok = controls.allowed_cidrs.len() == n as usize
        && controls.allows(address.into()) != refuse
        && (refuse || last.as_deref() == Some(&format!("{address}/{prefix}")));
    if !ok {
        return Err(format!(
            "internal error: the generated allowlist of {n} is not as documented"
        ));
    }
    eprintln!(
        "dp_hold allowlist: {n} allowed CIDRs on the measured forwards ({}), last in canonical order: {}",
        if refuse {
            "none matches the client"
        } else {
            "the client's network last"
        },
        last.unwrap_or_default()
    );
    Ok(controls)
}

/// The relay's configuration: by default (`RELAY_CAPS=agent`) the caps
/// `navigator-agent` derives with its defaults, so that the benchmarks run the
/// relay as a proxy node does (without them it would run into the process's
/// limit, EMFILE, instead of its own caps); `RELAY_CAPS=none` is unlimited. The agent's caps
/// (`navigator_agent::fd_budget`, repeated here because the agent crate sits
/// above this one): the soft `RLIMIT_NOFILE` raised to the hard one, 256
/// files kept for the process, the rest for the relay (`max_fds`), half of
/// that in TCP connections and a quarter in UDP sessions, and the one-hour
/// TCP idle timeout. `RELAY_PER_FORWARD=N` sets the per-forward connection
/// cap (the agent's default is 1024; unset or 0 is unlimited, so that a
/// single benchmark forward can reach the process-wide caps).
fn relay_config() -> Result<RelayBackendConfig, String> {
    let mut relay = navigator_relay::RelayConfig::default();
    match std::env::var("RELAY_CAPS").as_deref() {
        Ok("none") => {}
        Err(_) | Ok("agent") => {
            use rustix::process::{Resource, getrlimit, setrlimit};
            let mut limit = getrlimit(Resource::Nofile);
            if limit.current < limit.maximum {
                limit.current = limit.maximum;
                setrlimit(Resource::Nofile, limit).map_err(|e| format!("setrlimit: {e}"))?;
            }
            let nofile = getrlimit(Resource::Nofile)
                .current
                .unwrap_or(1 << 20)
                .min(1 << 20);
            let relay_fds = usize::try_from(nofile)
                .map_err(|e| e.to_string())?
                .checked_sub(256)
                .ok_or("RLIMIT_NOFILE below 256")?;
            relay.max_fds = Some(relay_fds);
            relay.max_connections = Some(relay_fds / 2);
            relay.max_udp_sessions = Some(relay_fds / 4);
            relay.tcp_idle_timeout = Some(std::time::Duration::from_secs(3600));
            eprintln!(
                "dp_hold relay caps as the agent's: RLIMIT_NOFILE {nofile} = 256 reserved + {relay_fds} relay ({} connections, {} UDP sessions)",
                relay_fds / 2,
                relay_fds / 4
            );
        }
        Ok(other) => return Err(format!("RELAY_CAPS must be agent or none, got {other:?}")),
    }
    let per_forward = match std::env::var("RELAY_PER_FORWARD") {
        Err(_) => None,
        Ok(v) => match v.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return Err(format!("RELAY_PER_FORWARD must be a number, got {v:?}")),
        },
    };
    Ok(RelayBackendConfig {
        relay,
        max_connections_per_forward: per_forward,
        max_udp_sessions_per_forward: None,
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
        "relay" => Box::new(RelayBackend::new(relay_config()?)),
        _ => return Err(format!("unknown backend {name:?}")),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    // The backend's warnings (the relay's limit warnings among them) on
    // stderr, which the scripts keep in their hold.*.log; RUST_LOG overrides.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
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
        if let Some(controls) = allowlist_from_env()? {
            for spec in &mut add {
                spec.controls = controls.clone();
            }
        }
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
