//! Measures what each forward costs in memory in the agent: runs the agent
//! (`navigator_agent::Agent`, what `navigator-agent` serves) over a real
//! backend, syncs N forwards to it and prints one JSON line with the
//! process's resident memory and the bytes the allocator holds, before and
//! after, and their growth per forward.
//!
//! `agent_memory <nft|relay> N` (root, in a network namespace of its own:
//! `bench/control/agent-memory.sh` makes one and deletes it). nft forwards
//! listen on 10.200.0.0/16 (addresses nobody sends to) and go to 10.201.0.1;
//! relay forwards listen on 127.1.0.0/16 (loopback, so each is a real
//! bound socket) and the open-file limit is raised to hold them.
//!
//! "allocated" is what the allocator handed out and not taken back, counted
//! by a wrapper around jemalloc (the daemons' allocator) from each block's
//! usable size, as jemalloc's own `stats.allocated` counts; RSS also holds
//! freed pages jemalloc has not returned to the system yet, the runtime and
//! the code.

// The one unsafe code of the workspace, in a measuring tool only: counting
// allocations needs a `GlobalAlloc` wrapper, and jemalloc's own statistics
// are compiled out of the allocator the daemons link (no `stats` feature).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::process::ExitCode;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{backend, forward};
use navigator_agent::{Agent, AgentConfig};
use navigator_core::{ForwardSpec, PortRange};
use navigator_rpc::ResultStatus;
use tikv_jemallocator::Jemalloc;

/// jemalloc, counting the usable size of what is live.
struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to jemalloc unchanged; the counter only
// reads the usable size of blocks jemalloc returned and still owns.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { Jemalloc.alloc(layout) };
        if !p.is_null() {
            // SAFETY: `p` is a live jemalloc block.
            let size = unsafe { tikv_jemallocator::usable_size(p) };
            ALLOCATED.fetch_add(size as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { Jemalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            // SAFETY: `p` is a live jemalloc block.
            let size = unsafe { tikv_jemallocator::usable_size(p) };
            ALLOCATED.fetch_add(size as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is live until the dealloc below.
        let size = unsafe { tikv_jemallocator::usable_size(ptr) };
        ALLOCATED.fetch_sub(size as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is live until the realloc below.
        let old = unsafe { tikv_jemallocator::usable_size(ptr) };
        // SAFETY: forwarded as is.
        let p = unsafe { Jemalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // SAFETY: `p` is a live jemalloc block.
            let new = unsafe { tikv_jemallocator::usable_size(p) };
            ALLOCATED.fetch_add(new as isize - old as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn allocated() -> u64 {
    ALLOCATED.load(Ordering::Relaxed).max(0) as u64
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = async {
        let (Some(name), Some(n)) = (
            args.first(),
            args.get(1).and_then(|n| n.parse::<u32>().ok()),
        ) else {
            return Err("usage: agent_memory nft|relay FORWARDS".to_owned());
        };
        let backend = backend(name, n)?;
        let agent = Agent::new(
            AgentConfig {
                host: "memory".into(),
                external_addresses: Vec::new(),
                port_range: PortRange::new(20000, 40000).map_err(|e| e.to_string())?,
                report_interval: Duration::from_secs(30),
            },
            backend,
        );
        // A first, empty sync: the backend's set-up (an empty table, host
        // checks) is not counted per forward.
        agent.sync(Vec::new(), 1).await;
        // Measured before the specs are made: the sync consumes them.
        let (rss_before, allocated_before) = (rss(), allocated());
        let specs: Vec<ForwardSpec> = (0..n).map(|i| forward(name, i)).collect();
        let started = Instant::now();
        let results = agent.sync(specs, 2).await;
        let sync_s = started.elapsed().as_secs_f64();
        let active = results
            .iter()
            .filter(|r| r.status == ResultStatus::Active)
            .count();
        if let Some(failed) = results.iter().find(|r| r.status != ResultStatus::Active) {
            return Err(format!(
                "{} of {n} forwards failed, first: {:?}",
                n as usize - active,
                failed.reason
            ));
        }
        drop(results);
        let (rss_after, allocated_after) = (rss(), allocated());
        let state = agent.state().await;
        let per =
            |after: u64, before: u64| (after.saturating_sub(before)) as f64 / f64::from(n.max(1));
        println!(
            "{{\"backend\":\"{name}\",\"forwards\":{n},\"sync_s\":{sync_s:.3},\"rss_before\":{rss_before},\"rss_after\":{rss_after},\"rss_per_forward\":{:.0},\"allocated_before\":{allocated_before},\"allocated_after\":{allocated_after},\"allocated_per_forward\":{:.0},\"generation\":{}}}",
            per(rss_after, rss_before),
            per(allocated_after, allocated_before),
            state.generation,
        );
        agent.shutdown().await;
        Ok::<_, String>(())
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent_memory: {e}");
            ExitCode::FAILURE
        }
    }
}
