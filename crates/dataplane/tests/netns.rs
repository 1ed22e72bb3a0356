//! Real traffic through the kernel and socat backends in network namespaces:
//! client → proxy (two NICs, or the internal side behind a Linux bridge) →
//! backend, TCP and UDP, IPv4 and IPv6; retarget and delete with a live UDP
//! flow; a stale table left by a previous agent; foreign tables and chains
//! that must survive; drift repair; host preconditions reported and healed.
//!
//! Needs root: runs when NAVIGATOR_PRIVILEGED_TESTS=1 (scripts/test-all sets
//! it) and fails loudly if namespaces cannot be created; otherwise each test
//! prints a "skipped" line.

mod support;

use std::time::Duration;

use navigator_core::{ForwardId, ForwardSpec, Plan, Protocol, plan};
use navigator_dataplane::iptables::Variant;
use navigator_dataplane::{
    Backend, ConntrackCleanup, Host, IptablesBackend, IptablesConfig, KernelConfig, NftBackend,
    NftConfig, Severity, SocatBackend, SocatConfig,
};
use support::*;

fn spec(protocol: Protocol, listen: &str, target: &str) -> ForwardSpec {
    ForwardSpec {
        id: ForwardId::new_random(),
        protocol,
        listen: listen.parse().unwrap(),
        target: target.parse().unwrap(),
        ports: 1,
        one_target_port: false,
        controls: Default::default(),
    }
}

fn kernel(topo: &Topo) -> KernelConfig {
    KernelConfig {
        host: Host::netns(&topo.proxy),
        conntrack_cleanup: ConntrackCleanup::Udp,
        ..KernelConfig::default()
    }
}

fn nft(topo: &Topo) -> NftBackend {
    NftBackend::new(NftConfig {
        kernel: kernel(topo),
        ..NftConfig::default()
    })
}

/// The four basic forwards: TCP and UDP, IPv4 and IPv6, all to backend A.
fn basic_forwards() -> Vec<ForwardSpec> {
    vec![
        spec(Protocol::Tcp, "10.91.0.1:20000", "10.92.0.2:8080"),
        spec(Protocol::Udp, "10.91.0.1:20001", "10.92.0.2:8080"),
        spec(Protocol::Tcp, "[fd91::1]:20000", "[fd92::2]:8080"),
        spec(Protocol::Udp, "[fd91::1]:20001", "[fd92::2]:8080"),
    ]
}

/// Converges `backend` to `desired` and asserts nothing failed.
async fn converge(backend: &dyn Backend, desired: &[ForwardSpec]) {
    let report = backend
        .apply(&plan(desired, &backend.observe().await))
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let mut have = backend.observe().await;
    have.sort_by_key(|s| s.id);
    let mut want = desired.to_vec();
    want.sort_by_key(|s| s.id);
    assert_eq!(have, want);
}

/// Traffic from the client over all four forwards reaches A, and A sees the
/// proxy's internal address as the peer (SNAT toward the target).
fn assert_basic_traffic(topo: &Topo, snat: bool) {
    for (proto, ext, internal) in [
        ("tcp", EXT4, PROXY_INT4),
        ("udp", EXT4, PROXY_INT4),
        ("tcp", EXT6, PROXY_INT6),
        ("udp", EXT6, PROXY_INT6),
    ] {
        let port = if proto == "tcp" { 20000 } else { 20001 };
        let answer = topo.expect(proto, ext, port, "A");
        if snat {
            // socat prints IPv6 peers fully expanded.
            let expanded = match internal.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(ip)) => ip
                    .segments()
                    .iter()
                    .map(|s| format!("{s:04x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
                _ => internal.to_owned(),
            };
            assert!(
                answer.contains(&expanded),
                "{proto} via {ext}: the backend should see the proxy's internal address {internal}, saw {answer:?}"
            );
        }
    }
}

/// Hairpin: a host on the internal network (another bridge port in the
/// bridge layout, with `br_netfilter` on) uses the external address, over
/// TCP and UDP, IPv4 and IPv6, and the target sees the proxy's internal
/// address.
fn assert_hairpin(topo: &Topo) {
    let inside = topo.internal_host().to_owned();
    for (proto, ext, port, internal) in [
        ("tcp", EXT4, 20000, PROXY_INT4),
        ("udp", EXT4, 20001, PROXY_INT4),
        (
            "tcp",
            EXT6,
            20000,
            "fd92:0000:0000:0000:0000:0000:0000:0001",
        ),
        (
            "udp",
            EXT6,
            20001,
            "fd92:0000:0000:0000:0000:0000:0000:0001",
        ),
    ] {
        let answer = topo.expect_from(&inside, proto, ext, port, None, "A");
        assert!(
            answer.contains(internal),
            "hairpin {proto} via {ext} from {inside}: the target should see {internal}, saw {answer:?}"
        );
    }
}

async fn two_nics_or_bridge(bridge: bool) {
    let mut topo = Topo::new(bridge);
    topo.start_services();
    let backend = nft(&topo);
    let forwards = basic_forwards();
    converge(&backend, &forwards).await;
    assert_basic_traffic(&topo, true);
    // Hairpin: a host on the internal network uses the external address.
    assert_hairpin(&topo);
    // The proxy itself uses the external address (output hook).
    topo.expect_from(&topo.proxy, "tcp", EXT4, 20000, None, "A");
    let ruleset = topo.nft_ruleset();
    assert!(ruleset.contains("table inet navigator"), "{ruleset}");
    converge(&backend, &[]).await;
    assert!(topo.request("tcp", EXT4, 20000).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_two_nics_tcp_udp_ipv4_ipv6() {
    if !privileged("nft_two_nics_tcp_udp_ipv4_ipv6") {
        return;
    }
    two_nics_or_bridge(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_backend_behind_linux_bridge() {
    if !privileged("nft_backend_behind_linux_bridge") {
        return;
    }
    two_nics_or_bridge(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_retarget_and_delete_follow_live_udp_flow() {
    if !privileged("nft_retarget_and_delete_follow_live_udp_flow") {
        return;
    }
    let mut topo = Topo::new(false);
    topo.start_services();
    let backend = nft(&topo);
    for (ext, a, b) in [
        ("10.91.0.1:20001", "10.92.0.2:8080", "10.92.0.3:8080"),
        ("[fd91::1]:20001", "[fd92::2]:8080", "[fd92::3]:8080"),
    ] {
        let ip = ext.rsplit_once(':').unwrap().0.trim_matches(['[', ']']);
        let mut forward = spec(Protocol::Udp, ext, a);
        converge(&backend, &[forward.clone()]).await;
        // One flow: the same client source port every time.
        let flow = |topo: &Topo| topo.request_from(&topo.client, "udp", ip, 20001, Some(40001));
        topo.expect_from(&topo.client, "udp", ip, 20001, Some(40001), "A");
        forward.target = b.parse().unwrap();
        let report = backend
            .apply(&Plan {
                retarget: vec![forward],
                ..Plan::default()
            })
            .await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        // Same source port on every retry: still the one live flow.
        topo.expect_from(&topo.client, "udp", ip, 20001, Some(40001), "B");
        converge(&backend, &[]).await;
        let answer = flow(&topo);
        assert!(
            answer.is_empty(),
            "{ext}: the live UDP flow must stop after delete, got {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_stale_table_replaced_foreign_table_untouched_drift_repaired() {
    if !privileged("nft_stale_table_replaced_foreign_table_untouched_drift_repaired") {
        return;
    }
    let mut topo = Topo::new(false);
    topo.start_services();
    let proxy = topo.proxy.clone();
    // A previous agent's table with a rule that would break everything, and
    // a foreign table with its own map and chains.
    let stale = "table inet navigator {\n chain junk { type filter hook forward priority -5; policy drop; }\n}\n";
    let foreign = "table inet foreign {\n set keep { type ipv4_addr; elements = { 192.0.2.1 }; }\n chain ffwd {\n  type filter hook forward priority 10; policy accept;\n  ip saddr @keep counter\n }\n chain fpre {\n  type nat hook prerouting priority dstnat + 10; policy accept;\n  ip daddr 192.0.2.9 tcp dport 1 dnat ip to 192.0.2.10\n }\n}\ntable ip legacy_nat {\n chain post {\n  type nat hook postrouting priority srcnat + 10; policy accept;\n  ip daddr 192.0.2.10 masquerade\n }\n}\n";
    topo.ns(
        &proxy,
        &["sh", "-c", &format!("printf '%s' '{stale}' | nft -f -")],
    );
    topo.ns(
        &proxy,
        &["sh", "-c", &format!("printf '%s' '{foreign}' | nft -f -")],
    );
    let foreign_before = topo.ns(&proxy, &["nft", "list", "table", "inet", "foreign"]);
    let legacy_before = topo.ns(&proxy, &["nft", "list", "table", "ip", "legacy_nat"]);

    let backend = nft(&topo);
    let forwards = basic_forwards();
    converge(&backend, &forwards).await;
    let ruleset = topo.nft_ruleset();
    assert!(
        !ruleset.contains("junk"),
        "stale chain survived:\n{ruleset}"
    );
    assert_basic_traffic(&topo, true);
    assert_eq!(
        topo.ns(&proxy, &["nft", "list", "table", "inet", "foreign"]),
        foreign_before
    );
    assert_eq!(
        topo.ns(&proxy, &["nft", "list", "table", "ip", "legacy_nat"]),
        legacy_before
    );

    // Drift: someone deletes the table; the next reconcile (even with
    // nothing to change) puts it back.
    topo.ns(&proxy, &["nft", "delete", "table", "inet", "navigator"]);
    assert!(topo.request("tcp", EXT4, 20000).is_empty());
    converge(&backend, &forwards).await;
    assert_basic_traffic(&topo, true);
    // Damage: a rule flushed out of a chain is repaired too.
    topo.ns(
        &proxy,
        &["nft", "flush", "chain", "inet", "navigator", "postrouting"],
    );
    converge(&backend, &forwards).await;
    assert_basic_traffic(&topo, true);
    assert_eq!(
        topo.ns(&proxy, &["nft", "list", "table", "inet", "foreign"]),
        foreign_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_forwarding_off_is_reported_then_heals() {
    if !privileged("nft_forwarding_off_is_reported_then_heals") {
        return;
    }
    let mut topo = Topo::new(false);
    topo.start_services();
    let proxy = topo.proxy.clone();
    topo.ns(&proxy, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
    let backend = nft(&topo);
    let forwards = basic_forwards();
    let report = backend.apply(&plan(&forwards, &[])).await;
    let v4: Vec<_> = forwards
        .iter()
        .filter(|f| f.listen.is_ipv4())
        .map(|f| f.id)
        .collect();
    let mut failed: Vec<_> = report.failed.iter().map(|f| f.id).collect();
    failed.sort();
    let mut want = v4.clone();
    want.sort();
    assert_eq!(failed, want, "{:?}", report.failed);
    for failure in &report.failed {
        assert!(
            failure
                .reason
                .contains("IPv4 forwarding is off on this host (net.ipv4.ip_forward = 0)")
                && failure.reason.contains("sysctl -w net.ipv4.ip_forward=1"),
            "{}",
            failure.reason
        );
    }
    // IPv6 forwards are not affected.
    assert!(topo.expect("tcp", EXT6, 20000, "A").starts_with('A'));
    // Fixed by the operator: the retry (what the agent's heartbeat does)
    // carries the forwards.
    topo.ns(&proxy, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    converge(&backend, &forwards).await;
    assert_basic_traffic(&topo, true);

    // With fix_sysctls the backend turns forwarding on itself.
    topo.ns(&proxy, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
    let fixing = NftBackend::new(NftConfig {
        kernel: KernelConfig {
            fix_sysctls: true,
            ..kernel(&topo)
        },
        ..NftConfig::default()
    });
    converge(&fixing, &forwards).await;
    assert_eq!(
        topo.ns(&proxy, &["sysctl", "-n", "net.ipv4.ip_forward"])
            .trim(),
        "1"
    );
    assert_basic_traffic(&topo, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_bridge_netfilter_off_is_reported_then_clears() {
    if !privileged("nft_bridge_netfilter_off_is_reported_then_clears") {
        return;
    }
    let mut topo = Topo::new(true);
    topo.start_services();
    let proxy = topo.proxy.clone();
    topo.ns(
        &proxy,
        &["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0"],
    );
    topo.ns(
        &proxy,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.bridge.bridge-nf-call-ip6tables=0",
        ],
    );
    let backend = nft(&topo);
    let targets = ["10.92.0.2".parse().unwrap(), "fd92::2".parse().unwrap()];
    let findings = backend.preflight(&targets).await;
    let bridge: Vec<_> = findings
        .iter()
        .filter(|f| f.problem.contains("Linux bridge br100"))
        .collect();
    assert_eq!(bridge.len(), 2, "{findings:?}");
    assert!(bridge.iter().all(|f| f.severity == Severity::Warning));
    assert!(
        bridge[0]
            .fix
            .contains("sysctl -w net.bridge.bridge-nf-call-iptables=1"),
        "{}",
        bridge[0].fix
    );
    // Navigator's SNAT keeps forwards working with bridge netfilter off.
    converge(&backend, &basic_forwards()).await;
    assert_basic_traffic(&topo, true);
    assert_hairpin(&topo);
    topo.ns(
        &proxy,
        &["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"],
    );
    topo.ns(
        &proxy,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.bridge.bridge-nf-call-ip6tables=1",
        ],
    );
    let findings = backend.preflight(&targets).await;
    assert!(
        !findings.iter().any(|f| f.problem.contains("bridge")),
        "{findings:?}"
    );
    assert_basic_traffic(&topo, true);
    assert_hairpin(&topo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_rejects_what_kernel_nat_cannot_do_without_blocking_others() {
    if !privileged("nft_rejects_what_kernel_nat_cannot_do_without_blocking_others") {
        return;
    }
    let mut topo = Topo::new(false);
    topo.start_services();
    let backend = nft(&topo);
    let good = spec(Protocol::Tcp, "10.91.0.1:20000", "10.92.0.2:8080");
    let loopback = spec(Protocol::Tcp, "10.91.0.1:20002", "127.0.0.1:8080");
    let mixed = spec(Protocol::Tcp, "10.91.0.1:20003", "[fd92::2]:8080");
    let duplicate = spec(Protocol::Tcp, "10.91.0.1:20000", "10.92.0.3:8080");
    let report = backend
        .apply(&plan(
            &[
                good.clone(),
                loopback.clone(),
                mixed.clone(),
                duplicate.clone(),
            ],
            &[],
        ))
        .await;
    let reasons: Vec<(ForwardId, String)> = report
        .failed
        .iter()
        .map(|f| (f.id, f.reason.clone()))
        .collect();
    // The lower id of good/duplicate wins the key; the other is refused.
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|(id, r)| *id == loopback.id && r.contains("loopback"))
    );
    assert!(
        reasons
            .iter()
            .any(|(id, r)| *id == mixed.id && r.contains("different IP families"))
    );
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.contains("is already forwarded by"))
    );
    let winner = if good.id < duplicate.id { "A" } else { "B" };
    topo.expect("tcp", EXT4, 20000, winner);
}

// ------------------------------------------------------------------ iptables

async fn iptables_variant(variant: Variant) {
    let mut topo = Topo::new(false);
    topo.start_services();
    let proxy = topo.proxy.clone();
    let (ipt, ip6t) = match variant {
        Variant::Legacy => ("iptables-legacy", "ip6tables-legacy"),
        _ => ("iptables-nft", "ip6tables-nft"),
    };
    // Foreign rules and chains that must survive, and a stale Navigator rule.
    topo.ns(&proxy, &[ipt, "-t", "nat", "-N", "FOREIGN"]);
    topo.ns(
        &proxy,
        &[
            ipt,
            "-t",
            "nat",
            "-A",
            "FOREIGN",
            "-d",
            "192.0.2.9",
            "-j",
            "RETURN",
        ],
    );
    topo.ns(
        &proxy,
        &[ipt, "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN"],
    );
    topo.ns(
        &proxy,
        &[ipt, "-A", "FORWARD", "-s", "192.0.2.1", "-j", "ACCEPT"],
    );
    topo.ns(&proxy, &[ipt, "-t", "nat", "-N", "NAVIGATOR-PREROUTING"]);
    topo.ns(
        &proxy,
        &[
            ipt,
            "-t",
            "nat",
            "-A",
            "NAVIGATOR-PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "20000",
            "-j",
            "DNAT",
            "--to-destination",
            "10.92.0.3:8080",
        ],
    );
    topo.ns(
        &proxy,
        &[
            ipt,
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "1",
            "-j",
            "NAVIGATOR-PREROUTING",
        ],
    );
    let foreign = |topo: &Topo| {
        (
            topo.ns(&proxy, &[ipt, "-t", "nat", "-S", "FOREIGN"]),
            topo.ns(&proxy, &[ipt, "-S", "FORWARD"])
                .lines()
                .filter(|l| l.contains("192.0.2.1"))
                .count(),
        )
    };
    let before = foreign(&topo);
    let backend = IptablesBackend::new(IptablesConfig {
        kernel: kernel(&topo),
        variant,
    });
    let forwards = basic_forwards();
    converge(&backend, &forwards).await;
    assert_basic_traffic(&topo, true);
    assert_eq!(foreign(&topo), before);
    let rules = topo.ns(&proxy, &[ipt, "-t", "nat", "-S", "NAVIGATOR-PREROUTING"]);
    assert_eq!(
        rules.matches("DNAT").count(),
        2,
        "stale rule left:\n{rules}"
    );
    let jumps = topo.ns(&proxy, &[ipt, "-t", "nat", "-S", "PREROUTING"]);
    assert_eq!(
        jumps.matches("-j NAVIGATOR-PREROUTING").count(),
        1,
        "{jumps}"
    );
    assert!(
        topo.ns(&proxy, &[ip6t, "-t", "nat", "-S", "NAVIGATOR-PREROUTING"])
            .contains("fd92::2")
    );
    // A live UDP flow follows a retarget.
    let mut udp = forwards[1].clone();
    topo.expect_from(&topo.client, "udp", EXT4, 20001, Some(40002), "A");
    udp.target = "10.92.0.3:8080".parse().unwrap();
    let mut desired = forwards.clone();
    desired[1] = udp;
    converge(&backend, &desired).await;
    topo.expect_from(&topo.client, "udp", EXT4, 20001, Some(40002), "B");
    converge(&backend, &[]).await;
    assert!(topo.request("tcp", EXT4, 20000).is_empty());
    assert_eq!(foreign(&topo), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_nft_two_nics_foreign_chains_survive() {
    if !privileged("iptables_nft_two_nics_foreign_chains_survive") {
        return;
    }
    iptables_variant(Variant::Nft).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_legacy_two_nics_foreign_chains_survive() {
    if !privileged("iptables_legacy_two_nics_foreign_chains_survive") {
        return;
    }
    iptables_variant(Variant::Legacy).await;
}

/// The br100 layout through iptables: client traffic and hairpin from
/// another bridge port, IPv4 and IPv6, with `br_netfilter` on.
async fn iptables_bridge(variant: Variant) {
    let mut topo = Topo::new(true);
    topo.start_services();
    let backend = IptablesBackend::new(IptablesConfig {
        kernel: kernel(&topo),
        variant,
    });
    converge(&backend, &basic_forwards()).await;
    assert_basic_traffic(&topo, true);
    assert_hairpin(&topo);
    converge(&backend, &[]).await;
    assert!(topo.request("tcp", EXT4, 20000).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_nft_behind_linux_bridge_hairpin() {
    if !privileged("iptables_nft_behind_linux_bridge_hairpin") {
        return;
    }
    iptables_bridge(Variant::Nft).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_legacy_behind_linux_bridge_hairpin() {
    if !privileged("iptables_legacy_behind_linux_bridge_hairpin") {
        return;
    }
    iptables_bridge(Variant::Legacy).await;
}

// ------------------------------------------------------------------ socat

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socat_forwards_restarts_stops_and_leaves_no_orphans() {
    if !privileged("socat_forwards_restarts_stops_and_leaves_no_orphans") {
        return;
    }
    let mut topo = Topo::new(true);
    topo.start_services();
    let tag = format!("navigator-test:{}", topo.proxy);
    let config = SocatConfig {
        host: Host::netns(&topo.proxy),
        owner_tag: tag.clone(),
        udp_idle_timeout: Duration::from_secs(5),
        ..SocatConfig::default()
    };
    let backend = SocatBackend::new(config.clone());
    let forwards = basic_forwards();
    converge(&backend, &forwards).await;
    assert_basic_traffic(&topo, true);
    let pids = navigator_dataplane::socat::tagged_pids(&tag);
    assert!(pids.len() >= 4, "{pids:?}");

    // A socat that dies is restarted.
    let listener = *pids
        .iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("TCP4-LISTEN:20000"))
        })
        .expect("the TCP4 socat");
    support::sh(&["kill", "-9", &listener.to_string()]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_basic_traffic(&topo, false);

    // A port that is taken is an ERROR with the reason.
    let clash = spec(Protocol::Tcp, "10.91.0.1:20000", "10.92.0.3:8080");
    let report = backend.apply(&plan(&[clash], &[])).await;
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].reason.contains("already in use"),
        "{:?}",
        report.failed
    );
    backend.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = navigator_dataplane::socat::tagged_pids(&tag);
    assert!(
        left.is_empty(),
        "socat processes left after shutdown: {left:?}"
    );

    // An agent that died without cleaning up left a socat on the port (to
    // B); the next agent's backend kills it and carries the forward to A.
    let mut orphan = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.proxy,
            "socat",
            "TCP4-LISTEN:20000,bind=10.91.0.1,fork,reuseaddr",
            "TCP4:10.92.0.3:8080",
        ])
        .env(navigator_dataplane::socat::OWNER_ENV, &tag)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(topo.expect("tcp", EXT4, 20000, "B").starts_with('B'));
    let restarted = SocatBackend::new(config);
    converge(&restarted, &forwards).await;
    assert_basic_traffic(&topo, false);
    let _ = orphan.wait();
    // Delete stops the processes.
    converge(&restarted, &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(topo.request("tcp", EXT4, 20000).is_empty());
    let left = navigator_dataplane::socat::tagged_pids(&tag);
    assert!(
        left.is_empty(),
        "socat processes left after delete: {left:?}"
    );
    restarted.shutdown().await;
}

/// A port range (N:1, since the backends serve one port) over IPv4 TCP and
/// IPv6 UDP: one map element per port, traffic on every port of the range and
/// none past it, and a delete removes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_port_ranges_carry_every_port_and_delete_removes_them() {
    if !privileged("nft_port_ranges_carry_every_port_and_delete_removes_them") {
        return;
    }
    let mut topo = Topo::new(false);
    topo.start_services();
    let backend = nft(&topo);
    let tcp = ForwardSpec {
        ports: 4,
        one_target_port: true,
        ..spec(Protocol::Tcp, "10.91.0.1:21000", "10.92.0.2:8080")
    };
    let udp = ForwardSpec {
        ports: 3,
        one_target_port: true,
        ..spec(Protocol::Udp, "[fd91::1]:21100", "[fd92::2]:8080")
    };
    converge(&backend, &[tcp, udp]).await;
    for port in 21000..21004 {
        topo.expect("tcp", EXT4, port, "A");
    }
    for port in 21100..21103 {
        topo.expect("udp", EXT6, port, "A");
    }
    assert!(
        topo.request("tcp", EXT4, 21004).is_empty(),
        "the port after the range is not forwarded"
    );
    // The DNAT map has one element per port (the counter sets one interval
    // per forward).
    let map = topo.ns(
        &topo.proxy,
        &["nft", "list", "map", "inet", "navigator", "fwd4"],
    );
    assert_eq!(
        map.matches("10.91.0.1 . tcp . 2100").count(),
        4,
        "one element per port: {map}"
    );
    converge(&backend, &[]).await;
    for port in 21000..21004 {
        assert!(topo.request("tcp", EXT4, port).is_empty(), "port {port}");
    }
    for port in 21100..21103 {
        assert!(topo.request("udp", EXT6, port).is_empty(), "port {port}");
    }
}

/// socat carries a port range as one process per port; a range with one
/// taken port is an ERROR naming it, and none of its processes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socat_port_range_is_one_process_per_port_all_or_nothing() {
    if !privileged("socat_port_range_is_one_process_per_port_all_or_nothing") {
        return;
    }
    let mut topo = Topo::new(false);
    topo.start_services();
    let tag = format!("navigator-test-range:{}", topo.proxy);
    let backend = SocatBackend::new(SocatConfig {
        host: Host::netns(&topo.proxy),
        owner_tag: tag.clone(),
        ..SocatConfig::default()
    });
    let range = ForwardSpec {
        ports: 3,
        one_target_port: true,
        ..spec(Protocol::Tcp, "10.91.0.1:21000", "10.92.0.2:8080")
    };
    converge(&backend, &[range]).await;
    for port in 21000..21003 {
        topo.expect("tcp", EXT4, port, "A");
    }
    assert_eq!(navigator_dataplane::socat::tagged_pids(&tag).len(), 3);
    converge(&backend, &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(navigator_dataplane::socat::tagged_pids(&tag).is_empty());

    // Port 21102 is taken on the proxy: the range fails naming it.
    let mut blocker = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.proxy,
            "socat",
            "TCP4-LISTEN:21102,bind=10.91.0.1,fork,reuseaddr",
            "TCP4:10.92.0.3:8080",
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let blocked = ForwardSpec {
        ports: 3,
        one_target_port: true,
        ..spec(Protocol::Tcp, "10.91.0.1:21100", "10.92.0.2:8080")
    };
    let report = backend.apply(&plan(&[blocked], &[])).await;
    let _ = blocker.kill();
    let _ = blocker.wait();
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert!(
        report.failed[0]
            .reason
            .contains("port 21102/tcp already in use"),
        "{:?}",
        report.failed
    );
    assert!(backend.observe().await.is_empty());
    let left = navigator_dataplane::socat::tagged_pids(&tag);
    assert!(
        left.is_empty(),
        "the range's other socats stopped: {left:?}"
    );
    backend.shutdown().await;
}

/// The iptables backend carries an N:1 range as one rule matching the port
/// range, for IPv4 and IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_port_range_carries_every_port() {
    if !privileged("iptables_port_range_carries_every_port") {
        return;
    }
    let mut topo = Topo::new(false);
    topo.start_services();
    let backend = IptablesBackend::new(IptablesConfig {
        kernel: kernel(&topo),
        variant: Variant::Nft,
    });
    let tcp = ForwardSpec {
        ports: 3,
        one_target_port: true,
        ..spec(Protocol::Tcp, "10.91.0.1:21000", "10.92.0.2:8080")
    };
    let udp = ForwardSpec {
        ports: 2,
        one_target_port: true,
        ..spec(Protocol::Udp, "[fd91::1]:21100", "[fd92::2]:8080")
    };
    converge(&backend, &[tcp, udp]).await;
    for port in 21000..21003 {
        topo.expect("tcp", EXT4, port, "A");
    }
    for port in 21100..21102 {
        topo.expect("udp", EXT6, port, "A");
    }
    assert!(topo.request("tcp", EXT4, 21003).is_empty());
    converge(&backend, &[]).await;
    for port in 21000..21003 {
        assert!(topo.request("tcp", EXT4, port).is_empty(), "port {port}");
    }
}

/// A TCP connection from a namespace, held open by a small python client
/// that echoes each line through it; killed (by PID) on drop.
struct HeldConnection {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl HeldConnection {
    fn open(ns: &str, addr: &str, port: u16) -> HeldConnection {
        let script = format!(
            "import socket, sys\n\
             s = socket.create_connection(('{addr}', {port}), timeout=10)\n\
             for line in sys.stdin:\n\
             \x20   s.sendall(line.encode())\n\
             \x20   got = b''\n\
             \x20   while not got.endswith(b'\\n'):\n\
             \x20       d = s.recv(100)\n\
             \x20       if not d:\n\
             \x20           print('EOF', flush=True)\n\
             \x20           sys.exit(1)\n\
             \x20       got += d\n\
             \x20   print(got.decode().strip(), flush=True)\n"
        );
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the client");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        HeldConnection { child, out }
    }

    /// Sends `text` and returns what came back (`EOF` when the connection
    /// was closed).
    fn echo(&mut self, text: &str) -> String {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{text}").expect("write");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read");
        line.trim().to_owned()
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a restart must not change: every nft rule and element with its
/// handle (a rewrite gives everything new handles), iptables-nft's chains
/// included.
fn handles(topo: &Topo) -> String {
    topo.ns(&topo.proxy, &["nft", "-a", "list", "ruleset"])
}

/// An agent restart (or upgrade) with the same forwards: the new backend
/// instance's first full sync adopts the rules the previous one left in the
/// kernel and writes nothing (same handles); a different set of forwards is
/// written, and stopping leaves the rules in place.
async fn restart_adopts(make: impl Fn(&Topo) -> Box<dyn Backend>) {
    let mut topo = Topo::new(false);
    topo.start_services();
    // An echo service for a connection held across the restart.
    let backend_ns = topo.backend.clone();
    topo.spawn(
        &backend_ns,
        &[
            "socat",
            "TCP4-LISTEN:9090,bind=10.92.0.2,fork,reuseaddr",
            "EXEC:cat",
        ],
    );
    let mut forwards = basic_forwards();
    forwards.push(spec(Protocol::Tcp, "10.91.0.1:20002", "10.92.0.2:9090"));
    let first = make(&topo);
    converge(first.as_ref(), &forwards).await;
    assert_basic_traffic(&topo, true);
    let mut held = HeldConnection::open(&topo.client, "10.91.0.1", 20002);
    assert_eq!(held.echo("before"), "before");
    // Stop: nothing is removed.
    let written = handles(&topo);
    first.shutdown().await;
    drop(first);
    assert_eq!(handles(&topo), written, "stopping changed the rules");

    // The next process: same forwards, nothing written.
    let second = make(&topo);
    converge(second.as_ref(), &forwards).await;
    assert_eq!(
        handles(&topo),
        written,
        "the first sync rewrote unchanged rules"
    );
    assert_basic_traffic(&topo, true);
    assert_eq!(
        held.echo("after"),
        "after",
        "the established connection survives"
    );
    drop(held);

    // An incremental change moves the marker with it: a third process with
    // the changed set adopts too.
    let changed = &forwards[..3];
    converge(second.as_ref(), changed).await;
    let updated = handles(&topo);
    assert_ne!(updated, written);
    drop(second);
    let third = make(&topo);
    converge(third.as_ref(), changed).await;
    assert_eq!(
        handles(&topo),
        updated,
        "the marker did not follow the update"
    );

    // A process with other forwards than the kernel holds rewrites them.
    drop(third);
    let fourth = make(&topo);
    converge(fourth.as_ref(), &forwards).await;
    assert_ne!(handles(&topo), updated);
    assert_basic_traffic(&topo, true);
    converge(fourth.as_ref(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_restart_adopts_unchanged_rules_without_writing() {
    if !privileged("nft_restart_adopts_unchanged_rules_without_writing") {
        return;
    }
    restart_adopts(|topo| Box::new(nft(topo))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_nft_restart_adopts_unchanged_rules_without_writing() {
    if !privileged("iptables_nft_restart_adopts_unchanged_rules_without_writing") {
        return;
    }
    restart_adopts(|topo| {
        Box::new(IptablesBackend::new(IptablesConfig {
            kernel: kernel(topo),
            variant: Variant::Nft,
        }))
    })
    .await;
}
