//! Benchmark driver for the relay (used by `bench/relay/run.sh`). Each role runs in
//! its own process so fds and RSS are measured per role:
//!
//! - `serve <splice> <listen=target>...`: a relay process (auto|always|never).
//!   With `ALLOW_CIDRS=N` in the environment every listener gets an allowlist
//!   of N networks (N-1 random /24s outside loopback, then 127.0.0.0/8 last;
//!   0 allows everyone),
//!   to measure what matching costs per new connection. `TCP_IDLE_TIMEOUT=S`
//!   sets the idle timeout (the agent's default is 3600; unset: none).
//! - `backend <sink_addr> <echo_addr>`: sink (reads to EOF, replies with the byte
//!   count) and echo servers.
//! - `throughput <addr> <bytes>`: one bulk stream to the sink; prints MB/s.
//! - `rate <addr> <concurrency> <seconds>`: short connections (64 B request/reply);
//!   prints connections/s and p50/p99 latency.
//! - `hold <addr> <count>`: opens `count` connections, one round trip each, prints
//!   `HELD ok=N failed=M`, then keeps them idle until stdin closes.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use navigator_relay::{ListenerId, ListenerSpec, Protocol, Relay, RelayConfig, SpliceMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Allocates as navigator-agent and navigator-server do (jemalloc), so that
/// memory and CPU are measured as they ship.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("serve") => serve(&args[1..]).await,
            Some("backend") => backend(&args[1..]).await,
            Some("throughput") => throughput(&args[1..]).await,
            Some("rate") => rate(&args[1..]).await,
            Some("hold") => hold(&args[1..]).await,
            _ => Err("usage: relay_bench serve|backend|throughput|rate|hold ...".into()),
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Res<T>
where
    T::Err: std::fmt::Display,
{
    let s = args.get(i).ok_or_else(|| format!("missing {what}"))?;
    s.parse()
        .map_err(|e| format!("bad {what} {s:?}: {e}").into())
}

async fn serve(args: &[String]) -> Res<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let splice = match args.first().map(String::as_str) {
        Some("auto") => SpliceMode::Auto,
        Some("always") => SpliceMode::Always,
        Some("never") => SpliceMode::Never,
        other => return Err(format!("bad splice mode {other:?}").into()),
    };
    // The agent's default is 3600 s; unset here means none (RelayConfig's default).
    let tcp_idle_timeout = match std::env::var("TCP_IDLE_TIMEOUT") {
        Ok(s) => Some(Duration::from_secs(s.parse()?)),
        Err(_) => None,
    };
    let relay = Relay::new(RelayConfig {
        splice,
        tcp_idle_timeout,
        ..RelayConfig::default()
    });
    let allow = match std::env::var("ALLOW_CIDRS") {
        Ok(n) => bench_allowlist(n.parse()?)?,
        Err(_) => navigator_relay::Allowlist::everyone(),
    };
    eprintln!("allowlist: {allow:?}");
    for (i, pair) in args[1..].iter().enumerate() {
        let (l, t) = pair.split_once('=').ok_or("expected listen=target")?;
        let spec = ListenerSpec {
            protocol: Protocol::Tcp,
            listen: l.parse()?,
            target: t.parse()?,
            limit: navigator_relay::Limit::unlimited(),
            options: navigator_relay::ListenerOptions {
                allow: allow.clone(),
                ..Default::default()
            },
        };
        relay.add(ListenerId(i as u128), spec).await?;
    }
    println!("READY");
    tokio::signal::ctrl_c().await?;
    relay.shutdown().await;
    Ok(())
}

/// `n` networks: `n - 1` pseudo-random /24s in 11.0.0.0-126.255.255.255
/// (never loopback), then 127.0.0.0/8, which the benchmark's clients use.
fn bench_allowlist(n: usize) -> Res<navigator_relay::Allowlist> {
    if n == 0 {
        return Ok(navigator_relay::Allowlist::everyone());
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut nets: Vec<(std::net::IpAddr, u8)> = (1..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = 11 + (x % 116) as u8;
            let ip = std::net::Ipv4Addr::new(a, (x >> 8) as u8, (x >> 16) as u8, 0);
            (ip.into(), 24)
        })
        .collect();
    nets.push((std::net::Ipv4Addr::new(127, 0, 0, 0).into(), 8));
    Ok(navigator_relay::Allowlist::new(nets)?)
}

async fn backend(args: &[String]) -> Res<()> {
    let sink = TcpListener::bind(arg::<SocketAddr>(args, 0, "sink addr")?).await?;
    let echo = TcpListener::bind(arg::<SocketAddr>(args, 1, "echo addr")?).await?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    println!("READY");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn throughput(args: &[String]) -> Res<()> {
    let addr: SocketAddr = arg(args, 0, "addr")?;
    let bytes: u64 = arg(args, 1, "bytes")?;
    let s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.into_split();
    let start = Instant::now();
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    w.shutdown().await?;
    let mut count = [0u8; 8];
    r.read_exact(&mut count).await?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        return Err(format!("sink received {got} of {bytes} bytes").into());
    }
    println!(
        "THROUGHPUT MBps={:.0} secs={secs:.2}",
        bytes as f64 / secs / 1e6
    );
    Ok(())
}

async fn one_request(addr: SocketAddr) -> Res<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = [7u8; 64];
    s.write_all(&req).await?;
    let mut rep = [0u8; 64];
    s.read_exact(&mut rep).await?;
    Ok(())
}

async fn rate(args: &[String]) -> Res<()> {
    let addr: SocketAddr = arg(args, 0, "addr")?;
    let conc: usize = arg(args, 1, "concurrency")?;
    let secs: u64 = arg(args, 2, "seconds")?;
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for _ in 0..conc {
        let errors = Arc::clone(&errors);
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), one_request(addr)).await {
                    Ok(Ok(())) => lat.push(t.elapsed().as_micros() as u64),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "RATE cps={:.0} p50_us={} p99_us={} ok={} errors={}",
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        lat.len(),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn hold(args: &[String]) -> Res<()> {
    let addr: SocketAddr = arg(args, 0, "addr")?;
    let count: usize = arg(args, 1, "count")?;
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    // Batches of 64 so the relay's 1024-deep backlog never overflows.
    for batch in (0..count).collect::<Vec<_>>().chunks(64) {
        let mut tasks = Vec::new();
        for _ in batch {
            tasks.push(tokio::spawn(async move {
                let fut = async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.write_all(b"p").await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    Res::Ok(s)
                };
                tokio::time::timeout(Duration::from_secs(10), fut).await
            }));
        }
        for t in tasks {
            match t.await? {
                Ok(Ok(s)) => held.push(s),
                _ => failed += 1,
            }
        }
    }
    println!("HELD ok={} failed={failed}", held.len());
    // Keep them idle until the driver closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0) {
            line.clear();
        }
    })
    .await?;
    drop(held);
    Ok(())
}
