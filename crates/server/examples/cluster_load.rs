//! The load generator of `bench/cluster/run.sh`, against running servers in
//! cluster mode (noauth, project `bench`). Prints one JSON line per run.
//!
//!     cluster_load create URL[,URL...] TOTAL CONC
//!         TOTAL creates by CONC workers spread round-robin over the servers;
//!         creates/s over the whole run and per-create latency. A create counts
//!         only if it answered 201 with status ACTIVE (the agent carries it).
//!     cluster_load first-byte URL COUNT
//!         COUNT forwards one after the other, each to a local TCP target that
//!         writes one byte on accept: time from sending the create to the first
//!         byte read through the forward's external address and port.
//!     cluster_load blocks URL[,URL...] TOTAL CONC BLOCK [--target IP]
//!                         [--addresses A,B,...] [--server-pid PID]
//!         TOTAL creates as `create` makes them, in blocks of BLOCK: each block
//!         ends when all its creates answered (so blocks do not overlap) and
//!         prints its own JSON line (creates/s, p50/p99, and the CPU time the
//!         server process -- with its children, e.g. `nft` runs -- and this
//!         load generator used during it), then one summary line. --target:
//!         the internal address (default 127.0.0.1; kernel backends refuse
//!         loopback targets); --addresses: external addresses named in turn,
//!         for more forwards than one address's port pool holds (default:
//!         none named, the server picks); --server-pid: the server to measure
//!         (read from /proc, so it must be in this PID namespace).
//!
//! `LOAD_PROJECTS=N` spreads the creates over N projects (`bench-0` …);
//! by default all are project `bench`.
//!
//! Target ports are this process's own listener (first-byte) or a fixed
//! unused one (create, blocks: no traffic flows).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn client() -> anyhow::Result<reqwest::Client> {
    // Installs the TLS crypto provider reqwest needs (see api_load.rs).
    navigator_keystone::validate::http_client(Duration::from_secs(1))?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("X-Project-Id", "bench".parse()?);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// Creates one forward; the forward's JSON if it is ACTIVE.
async fn create(client: &reqwest::Client, url: &str, target_port: u16) -> anyhow::Result<Value> {
    create_at(client, url, "127.0.0.1", None, target_port).await
}

/// The project of the next create: `bench`, or with `LOAD_PROJECTS=N`
/// (N > 1) `bench-0` … `bench-(N-1)` in turn, as a cloud's creates come from
/// many tenants (each project's creates queue on its quota counter row).
fn next_project() -> String {
    static PROJECTS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let projects = *PROJECTS.get_or_init(|| {
        std::env::var("LOAD_PROJECTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
    });
    if projects <= 1 {
        return "bench".to_owned();
    }
    format!("bench-{}", NEXT.fetch_add(1, Ordering::Relaxed) % projects)
}

/// Creates one forward to `target:target_port`, on `external` when given.
async fn create_at(
    client: &reqwest::Client,
    url: &str,
    target: &str,
    external: Option<&str>,
    target_port: u16,
) -> anyhow::Result<Value> {
    let mut body = json!({"forward": {
        "protocol": "tcp", "internal_ip_address": target, "internal_port": target_port,
    }});
    if let Some(address) = external {
        body["forward"]["external_address"] = json!(address);
    }
    let response = client
        .post(format!("{url}/v1/forwards"))
        .header("X-Project-Id", next_project())
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if status != reqwest::StatusCode::CREATED {
        bail!("{status}: {text}");
    }
    let value: Value = serde_json::from_str(&text)?;
    let forward = value["forward"].clone();
    if forward["status"] != "ACTIVE" {
        bail!("not ACTIVE: {forward}");
    }
    Ok(forward)
}

async fn run_create(urls: Vec<String>, total: u64, conc: usize) -> anyhow::Result<()> {
    let client = client()?;
    let next = Arc::new(AtomicU64::new(0));
    let urls = Arc::new(urls);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conc {
        let (client, next, urls) = (client.clone(), next.clone(), urls.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let url = &urls[(n % urls.len() as u64) as usize];
                let start = Instant::now();
                match create(&client, url, 9).await {
                    Ok(_) => latencies.push(start.elapsed()),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for worker in workers {
        let (latencies, e) = worker.await?;
        all.extend(latencies);
        errors.extend(e);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    println!(
        "{}",
        json!({
            "mode": "create", "servers": urls.len(), "concurrency": conc,
            "created": all.len(), "errors": errors.len(),
            "first_error": errors.first(),
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "creates_per_s": ((all.len() as f64 / elapsed) * 10.0).round() / 10.0,
            "p50_ms": percentile(&all, 0.50), "p99_ms": percentile(&all, 0.99),
        })
    );
    Ok(())
}

/// CPU seconds (user + system) of a process from its /proc stat line:
/// (its own, its waited-for children's).
fn cpu_seconds(pid: &str) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // comm may hold spaces and parentheses: the fields follow the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) is index 11.
    let tick = |i: usize| -> anyhow::Result<f64> {
        let value: f64 = fields
            .get(i)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse()
            .context("a /proc stat field")?;
        Ok(value / clock_ticks())
    };
    Ok((tick(11)? + tick(12)?, tick(13)? + tick(14)?))
}

/// USER_HZ: 100 on every Linux architecture Navigator runs on (the kernel
/// reports /proc times in it whatever CONFIG_HZ is).
fn clock_ticks() -> f64 {
    100.0
}

/// Resident set size of a process in KiB, from /proc/PID/status.
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

struct BlocksOptions {
    target: String,
    addresses: Vec<String>,
    server_pid: Option<String>,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

async fn run_blocks(
    urls: Vec<String>,
    total: u64,
    conc: usize,
    block: u64,
    options: BlocksOptions,
) -> anyhow::Result<()> {
    if block == 0 {
        bail!("BLOCK must be at least 1");
    }
    let client = client()?;
    let urls = Arc::new(urls);
    let options = Arc::new(options);
    let started = Instant::now();
    let mut rates = Vec::new();
    let (mut created, mut failed) = (0u64, 0u64);
    let mut from = 0;
    while from < total {
        let to = (from + block).min(total);
        let server_before = match &options.server_pid {
            Some(pid) => Some(cpu_seconds(pid)?),
            None => None,
        };
        let load_before = cpu_seconds("self")?;
        let block_started = Instant::now();
        let next = Arc::new(AtomicU64::new(from));
        let mut workers = Vec::new();
        for _ in 0..conc {
            let (client, next, urls, options) =
                (client.clone(), next.clone(), urls.clone(), options.clone());
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        break;
                    }
                    let url = &urls[(n % urls.len() as u64) as usize];
                    let external = (!options.addresses.is_empty()).then(|| {
                        options.addresses[(n % options.addresses.len() as u64) as usize].as_str()
                    });
                    let start = Instant::now();
                    match create_at(&client, url, &options.target, external, 9).await {
                        Ok(_) => latencies.push(start.elapsed()),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (latencies, errors)
            }));
        }
        let mut all = Vec::new();
        let mut errors = Vec::new();
        for worker in workers {
            let (latencies, e) = worker.await?;
            all.extend(latencies);
            errors.extend(e);
        }
        let elapsed = block_started.elapsed().as_secs_f64();
        let load_after = cpu_seconds("self")?;
        let load_cpu = load_after.0 - load_before.0;
        let (server_cpu, server_children_cpu) = match (&options.server_pid, server_before) {
            (Some(pid), Some(before)) => {
                let after = cpu_seconds(pid)?;
                (Some(after.0 - before.0), Some(after.1 - before.1))
            }
            _ => (None, None),
        };
        all.sort();
        let rate = all.len() as f64 / elapsed;
        rates.push(rate);
        created += all.len() as u64;
        failed += errors.len() as u64;
        let per_1000 = |cpu: Option<f64>| {
            cpu.filter(|_| !all.is_empty())
                .map(|c| (c * 1000.0 / all.len() as f64 * 1000.0).round() / 1000.0)
        };
        println!(
            "{}",
            json!({
                "mode": "block", "from": from, "to": to, "concurrency": conc,
                "created": all.len(), "errors": errors.len(), "first_error": errors.first(),
                "seconds": (elapsed * 1000.0).round() / 1000.0,
                "creates_per_s": round1(rate),
                "p50_ms": percentile(&all, 0.50), "p99_ms": percentile(&all, 0.99),
                "server_cpu_s": server_cpu, "server_children_cpu_s": server_children_cpu,
                "server_cpu_s_per_1000": per_1000(server_cpu.zip(server_children_cpu).map(|(a, b)| a + b)),
                "server_rss_kib": options.server_pid.as_deref().and_then(rss_kib),
                "load_cpu_s": (load_cpu * 1000.0).round() / 1000.0,
                "load_cores": (load_cpu / elapsed * 1000.0).round() / 1000.0,
            })
        );
        from = to;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let first = rates.first().copied().unwrap_or(f64::NAN);
    let last = rates.last().copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        json!({
            "mode": "blocks", "servers": urls.len(), "concurrency": conc, "block": block,
            "created": created, "errors": failed,
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "creates_per_s": round1(created as f64 / elapsed),
            "first_block_per_s": round1(first), "last_block_per_s": round1(last),
            "last_to_first": (last / first * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}

async fn first_byte(address: &str, port: u16, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect((address, port)).await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(1), attempt).await {
            Ok(Ok(())) => return Ok(()),
            _ if Instant::now() > deadline => bail!("no byte through {address}:{port} in time"),
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn run_first_byte(url: String, count: usize) -> anyhow::Result<()> {
    let client = client()?;
    let target = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let target_port = target.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = target.accept().await {
            tokio::spawn(async move {
                let _ = socket.write_all(b"x").await;
                let _ = socket.shutdown().await;
            });
        }
    });
    let mut latencies = Vec::new();
    let mut api = Vec::new();
    for _ in 0..count {
        let start = Instant::now();
        let forward = create(&client, &url, target_port).await?;
        api.push(start.elapsed());
        let address = forward["external_address"]
            .as_str()
            .ok_or_else(|| anyhow!("no external_address in {forward}"))?
            .to_owned();
        let port = forward["external_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("no external_port in {forward}"))?;
        first_byte(&address, port, start + Duration::from_secs(30)).await?;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    api.sort();
    println!(
        "{}",
        json!({
            "mode": "first-byte", "forwards": latencies.len(),
            "p50_ms": percentile(&latencies, 0.50), "p99_ms": percentile(&latencies, 0.99),
            "max_ms": percentile(&latencies, 1.0),
            "create_p50_ms": percentile(&api, 0.50), "create_p99_ms": percentile(&api, 0.99),
        })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: cluster_load create URL[,URL...] TOTAL CONC | cluster_load first-byte URL COUNT | cluster_load blocks URL[,URL...] TOTAL CONC BLOCK [--target IP] [--addresses A,B,...] [--server-pid PID]";
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["create", urls, total, conc] => {
            let urls = urls.split(',').map(str::to_owned).collect();
            run_create(
                urls,
                total.parse().context("TOTAL")?,
                conc.parse().context("CONC")?,
            )
            .await
        }
        ["blocks", urls, total, conc, block, rest @ ..] => {
            let mut options = BlocksOptions {
                target: "127.0.0.1".to_owned(),
                addresses: Vec::new(),
                server_pid: None,
            };
            let mut rest = rest.iter();
            while let Some(flag) = rest.next() {
                let value = rest
                    .next()
                    .ok_or_else(|| anyhow!("{flag} needs a value; {usage}"))?;
                match *flag {
                    "--target" => options.target = (*value).to_owned(),
                    "--addresses" => {
                        options.addresses = value
                            .split(',')
                            .filter(|a| !a.is_empty())
                            .map(str::to_owned)
                            .collect();
                    }
                    "--server-pid" => options.server_pid = Some((*value).to_owned()),
                    _ => bail!("unknown option {flag}; {usage}"),
                }
            }
            run_blocks(
                urls.split(',').map(str::to_owned).collect(),
                total.parse().context("TOTAL")?,
                conc.parse().context("CONC")?,
                block.parse().context("BLOCK")?,
                options,
            )
            .await
        }
        ["first-byte", url, count] => {
            run_first_byte((*url).to_owned(), count.parse().context("COUNT")?).await
        }
        _ => bail!("{usage}"),
    }
}
