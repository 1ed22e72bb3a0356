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
//!
//! Target ports are this process's own listener (first-byte) or a fixed
//! unused one (create: no traffic flows).

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
    let body = json!({"forward": {
        "protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": target_port,
    }});
    let response = client
        .post(format!("{url}/v1/forwards"))
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
    let usage =
        "usage: cluster_load create URL[,URL...] TOTAL CONC | cluster_load first-byte URL COUNT";
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
        ["first-byte", url, count] => {
            run_first_byte((*url).to_owned(), count.parse().context("COUNT")?).await
        }
        _ => bail!("{usage}"),
    }
}
