//! A small closed-loop HTTP load generator for `bench/api/run.sh`: CONC
//! workers each send `GET URL` back to back (keep-alive) for SECS seconds
//! and the run prints requests/s and latency percentiles as one JSON line.
//!
//!     api_load URL SECS CONC [HEADER:VALUE ...]
//!
//! Only 200 answers count as successes; any other status is an error, so a
//! misconfigured run cannot pass as a fast one.
//!
//! For HTTPS, `API_LOAD_CACERT=FILE` trusts only that PEM CA (rustls, as the
//! CLI); `API_LOAD_NEW_CONNECTIONS=1` opens a new connection (and, over
//! TLS, makes a full handshake) for every request instead of keeping them
//! alive.

use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, secs, conc, headers @ ..] = args.as_slice() else {
        anyhow::bail!("usage: api_load URL SECS CONC [HEADER:VALUE ...]");
    };
    let secs: u64 = secs.parse()?;
    let conc: usize = conc.parse()?;
    let mut header_map = reqwest::header::HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("header {h:?}: expected NAME:VALUE"))?;
        header_map.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            reqwest::header::HeaderValue::from_str(value.trim())?,
        );
    }
    // Installs the TLS crypto provider reqwest needs (this build has none by
    // default); its unpooled client is not the one used below.
    navigator_keystone::validate::http_client(Duration::from_secs(1))?;
    let mut builder = reqwest::Client::builder().default_headers(header_map);
    if let Ok(file) = std::env::var("API_LOAD_CACERT") {
        let pem = std::fs::read(&file)?;
        builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem)?);
    }
    if std::env::var("API_LOAD_NEW_CONNECTIONS").is_ok_and(|v| v == "1") {
        // No idle connection is kept, so every request connects anew.
        builder = builder.pool_max_idle_per_host(0);
    }
    let client = builder.build()?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for _ in 0..conc {
        let client = client.clone();
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                match client.get(&url).send().await {
                    Ok(response) if response.status() == reqwest::StatusCode::OK => {
                        // Read the body: the server's work includes writing it.
                        if response.bytes().await.is_ok() {
                            latencies.push(start.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (latencies, e) = worker.await?;
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(secs as f64);
    all.sort();
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99)
    );
    Ok(())
}
