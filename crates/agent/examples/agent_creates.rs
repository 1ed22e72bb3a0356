//! Measures how fast one agent takes creates: serves the agent
//! (`navigator_agent::run`, batching included) over an in-process transport
//! with a real backend, sends TOTAL `create_forward` calls from CONC
//! concurrent callers, and prints one JSON line with the overall rate and the
//! rate of each tenth of the run (the first against the last shows whether
//! the cost of a create grows with the forwards already carried).
//!
//! `agent_creates <nft|relay> TOTAL CONC` (root, in a network namespace of
//! its own: `bench/control/agent-creates.sh` makes one and deletes it).
//! Forwards are made as in `agent_memory`: nft on 10.200.0.0/16, relay on
//! 127.1.0.0/16 (one open file each).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{backend, forward};
use navigator_agent::{Agent, AgentConfig};
use navigator_core::PortRange;
use navigator_rpc::inproc::InProcTransport;
use navigator_rpc::{AgentClient, ForwardEntry, ResultStatus, Transport};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| args.get(i).and_then(|n| n.parse::<u32>().ok());
    let run = async {
        let (Some(name), Some(total), Some(conc)) = (args.first(), number(1), number(2)) else {
            return Err("usage: agent_creates nft|relay TOTAL CONC".to_owned());
        };
        let name = name.clone();
        let agent = Arc::new(Agent::new(
            AgentConfig {
                host: "bench".into(),
                external_addresses: Vec::new(),
                port_range: PortRange::new(20000, 40000).map_err(|e| e.to_string())?,
                report_interval: Duration::from_secs(3600),
            },
            backend(&name, total)?,
        ));
        let transport: Arc<dyn Transport> = Arc::new(InProcTransport::new());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let served = tokio::spawn(navigator_agent::run(
            agent,
            transport.clone(),
            shutdown.clone(),
        ));
        let client = AgentClient::new(transport, Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(10);
        // The first full sync, as the server sends at start: the backend's
        // set-up (an empty table, host checks) is not timed.
        while client.sync_forwards("bench", Vec::new(), 1).await.is_err() {
            if Instant::now() > deadline {
                return Err("the agent never answered".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let next = Arc::new(AtomicU32::new(0));
        // When each create was answered, by its index.
        let done: Arc<std::sync::Mutex<Vec<Duration>>> =
            Arc::new(std::sync::Mutex::new(vec![Duration::ZERO; total as usize]));
        let started = Instant::now();
        let mut callers = Vec::new();
        for _ in 0..conc.max(1) {
            let (client, next, done, name) =
                (client.clone(), next.clone(), done.clone(), name.clone());
            callers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok(());
                    }
                    let spec = forward(&name, i);
                    let result = client
                        .create_forward("bench", ForwardEntry::from(&spec))
                        .await
                        .map_err(|e| format!("create {i}: {e}"))?;
                    if result.status != ResultStatus::Active {
                        return Err(format!("create {i}: {:?}", result.reason));
                    }
                    if let Ok(mut done) = done.lock() {
                        done[i as usize] = started.elapsed();
                    }
                }
            }));
        }
        for caller in callers {
            caller.await.map_err(|e| e.to_string())??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut done = done.lock().map_err(|e| e.to_string())?.clone();
        done.sort_unstable();
        // Creates per second within each tenth of the run (by count).
        let tenth = (total / 10).max(1) as usize;
        let rates: Vec<String> = done
            .chunks(tenth)
            .scan(Duration::ZERO, |from, chunk| {
                let to = chunk.last().copied().unwrap_or(*from);
                let secs = (to - *from).as_secs_f64().max(1e-6);
                *from = to;
                Some(format!("{:.0}", chunk.len() as f64 / secs))
            })
            .collect();
        println!(
            "{{\"backend\":\"{name}\",\"total\":{total},\"conc\":{conc},\"elapsed_s\":{elapsed:.3},\"creates_per_s\":{:.0},\"per_tenth\":[{}]}}",
            f64::from(total) / elapsed,
            rates.join(",")
        );
        shutdown.cancel();
        let _ = served.await;
        Ok::<_, String>(())
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent_creates: {e}");
            ExitCode::FAILURE
        }
    }
}
