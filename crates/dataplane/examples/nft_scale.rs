//! Benchmark of the nft backend's control plane at scale: the time to apply
//! N forwards from scratch (one full-sync transaction) and the time to add
//! one more forward at that size (one incremental transaction; median of
//! several), for
//! N = 1, 1,000, 10,000, 100,000. Runs the backend against a throw-away
//! network namespace it creates and deletes; needs root.
//!
//! `bench/dataplane/run.sh` runs it; prints a Markdown table.

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
    }
}

/// Adds and removes timed per size; the median is reported.
const ROUNDS: u32 = 7;

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
    let comments = std::env::var("NFT_COMMENTS").as_deref() != Ok("0");
    println!(
        "| forwards | apply all (full sync) | add one more (median of {ROUNDS}) | remove one (median of {ROUNDS}) |"
    );
    println!("|---:|---:|---:|---:|");
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
        let started = Instant::now();
        let report = backend
            .apply(&Plan {
                add: all,
                ..Plan::default()
            })
            .await;
        let full = started.elapsed();
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
                    add: vec![one],
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
        println!(
            "| {n} | {:.3} s | {:.1} ms | {:.1} ms |",
            full.as_secs_f64(),
            median(&mut adds),
            median(&mut removes)
        );
    }
}
