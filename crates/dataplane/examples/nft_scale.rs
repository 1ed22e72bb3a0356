//! Benchmark of the nft backend's control plane at scale: the time to apply
//! N forwards from scratch (one full-sync transaction) and the time to add
//! one more forward at that size (one incremental transaction; median of
//! several), for
//! N = 1, 1,000, 10,000, 100,000. Runs the backend against a throw-away
//! network namespace it creates and deletes; needs root.
//!
//! Besides wall-clock time it prints the CPU time of the `nft` processes the
//! full sync ran (user + system, from the kernel's accounting of reaped
//! children): on a shared host the wall clock mostly measures the queue for
//! a CPU, while the CPU time is what the apply costs.
//!
//! `bench/dataplane/run.sh` runs it; prints a Markdown table and one summary
//! line per target. `NFT_COMMENTS=1` turns the element comments on
//! (`[agent] nft_element_comments`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Instant;

use navigator_core::{ForwardId, ForwardSpec, Plan, Protocol};
use navigator_dataplane::{Backend, Host, KernelConfig, NftBackend, NftConfig};

fn forward(i: u32) -> ForwardSpec {
    // 65,000 ports per listen address, so 100,000 forwards use two.
    let listen = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 91, 0, 1)) + i / 65_000);
    ForwardSpec {
        id: ForwardId::new_random(),
        protocol: if i.is_multiple_of(2) {
            Protocol::Tcp
        } else {
            Protocol::Udp
        },
        listen: SocketAddr::V4(SocketAddrV4::new(listen, 500 + (i % 65_000) as u16)),
        target: SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 92, 0, 0)) + 2 + i % 60_000),
            8080,
        )),
        ports: 1,
        one_target_port: false,
        controls: Default::default(),
    }
}

/// Adds and removes timed per size; the median is reported.
const ROUNDS: u32 = 7;

/// CPU seconds (user + system) of this process's reaped children so far.
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at the
    // state (field 3); cutime and cstime are fields 16 and 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // USER_HZ is 100 on every Linux architecture Navigator runs on.
    let hz = 100.0;
    match (ticks(13), ticks(14)) {
        (Some(u), Some(s)) => (u + s) / hz,
        _ => f64::NAN,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u32> = std::env::args()
        .nth(1)
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 1_000, 10_000, 100_000]);
    let comments = std::env::var("NFT_COMMENTS").as_deref() == Ok("1");
    println!("element comments: {}", if comments { "on" } else { "off" });
    println!(
        "| forwards | apply all (full sync) | nft CPU of the full sync | add one more (median of {ROUNDS}) | remove one (median of {ROUNDS}) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for n in sizes {
        let ns = Netns(format!("nvbench{}x{n}", std::process::id()));
        let ok = Command::new("ip").args(["netns", "add", &ns.0]).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "cannot create a network namespace (root needed)"
        );
        let backend = NftBackend::new(NftConfig {
            kernel: KernelConfig {
                host: Host::netns(&ns.0),
                fix_sysctls: true,
                ..KernelConfig::default()
            },
            element_comments: comments,
            ..NftConfig::default()
        });
        let all: Vec<ForwardSpec> = (0..n).map(forward).collect();
        let cpu_before = children_cpu();
        let started = Instant::now();
        let report = backend
            .apply(&Plan {
                add: all,
                ..Plan::default()
            })
            .await;
        let full = started.elapsed();
        let full_cpu = children_cpu() - cpu_before;
        assert!(report.failed.is_empty(), "{:?}", report.failed.first());
        // One add or remove is a few milliseconds and the machine may be
        // busy: the median of several (alternating TCP and UDP) is reported.
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        for k in 0..ROUNDS {
            let one = forward(n + 1 + k);
            let started = Instant::now();
            let report = backend
                .apply(&Plan {
                    add: vec![one.clone()],
                    ..Plan::default()
                })
                .await;
            adds.push(started.elapsed().as_secs_f64() * 1e3);
            assert!(report.failed.is_empty(), "{:?}", report.failed.first());
            let started = Instant::now();
            let report = backend
                .apply(&Plan {
                    remove: vec![one.id],
                    ..Plan::default()
                })
                .await;
            removes.push(started.elapsed().as_secs_f64() * 1e3);
            assert!(report.failed.is_empty());
        }
        let add = median(&mut adds);
        println!(
            "| {n} | {:.3} s | {full_cpu:.2} s | {add:.1} ms | {:.1} ms |",
            full.as_secs_f64(),
            median(&mut removes)
        );
        if n == 100_000 {
            let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
            summary.push(format!(
                "TARGET nft apply 100000 <= 3 s: {:.3} s wall, {full_cpu:.2} s nft CPU: {}",
                full.as_secs_f64(),
                verdict(full.as_secs_f64() <= 3.0)
            ));
            summary.push(format!(
                "TARGET one more forward at 100000 <= 20 ms: {add:.1} ms (median of {ROUNDS}): {}",
                verdict(add <= 20.0)
            ));
        }
    }
    for line in summary {
        println!("{line}");
    }
}
