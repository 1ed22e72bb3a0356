//! The per-forward controls with real traffic, for each backend that is not
//! the relay (nft, iptables, socat), in network namespaces: a client
//! namespace with two addresses per family (one allowed, one not), the
//! proxy, and the tagged services behind it (`support`).
//!
//! Each scenario checks that the allowed client passes and the other is
//! refused (TCP and UDP, IPv4 and IPv6); that a change of controls alone is
//! applied in place without cutting an established connection of a client
//! still allowed (kernel backends with `conntrack_cleanup = all`, which
//! would cut it on a real retarget; socat restarts only its listener); that
//! narrowing an allowlist cuts the established TCP connections and UDP
//! sessions of the clients taken off it and no others (kernel backends,
//! `nf_conntrack_tcp_loose` 1 and 0); that `max_connections` holds and recovers when a connection
//! ends and survives other forwards' changes; that the usage counters move
//! by the bytes sent and survive a new agent's full rewrite; and that what
//! a backend cannot enforce fails the forward with the reason.
//!
//! Needs root: runs when NAVIGATOR_PRIVILEGED_TESTS=1, otherwise prints a
//! "skipped" line. `cargo test -p navigator-dataplane --test controls`.

mod support;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use navigator_core::{Controls, ForwardId, ForwardSpec, Protocol, ProxyProtocol, parse_cidr, plan};
use navigator_dataplane::iptables::Variant;
use navigator_dataplane::{
    Backend, ConntrackCleanup, Host, IptablesBackend, IptablesConfig, KernelConfig, NftBackend,
    NftConfig, SocatBackend, SocatConfig,
};
use support::*;

/// The client's allowed and refused addresses.
const OK4: &str = "10.91.0.2";
const OTHER4: &str = "10.91.0.3";
const OK6: &str = "fd91::2";
const OTHER6: &str = "fd91::3";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Nft,
    Iptables,
    IptablesLegacy,
    Socat,
}

fn make(kind: Kind, topo: &Topo) -> Box<dyn Backend> {
    // A real retarget would cut TCP connections: a change of controls
    // must not.
    make_with(kind, topo, ConntrackCleanup::All)
}

fn make_with(kind: Kind, topo: &Topo, conntrack_cleanup: ConntrackCleanup) -> Box<dyn Backend> {
    let kernel = KernelConfig {
        host: Host::netns(&topo.proxy),
        conntrack_cleanup,
        ..KernelConfig::default()
    };
    match kind {
        Kind::Nft => Box::new(NftBackend::new(NftConfig {
            kernel,
            ..NftConfig::default()
        })),
        Kind::Iptables => Box::new(IptablesBackend::new(IptablesConfig {
            kernel,
            variant: Variant::Nft,
        })),
        Kind::IptablesLegacy => Box::new(IptablesBackend::new(IptablesConfig {
            kernel,
            variant: Variant::Legacy,
        })),
        Kind::Socat => Box::new(SocatBackend::new(SocatConfig {
            host: Host::netns(&topo.proxy),
            owner_tag: format!("navigator-test:{}", topo.proxy),
            udp_idle_timeout: Duration::from_secs(3),
            ..SocatConfig::default()
        })),
    }
}

fn controls(cidrs: &[&str], max: Option<u32>) -> Controls {
    Controls::new(
        cidrs.iter().map(|c| parse_cidr(c).unwrap()).collect(),
        max,
        ProxyProtocol::None,
    )
}

fn spec(protocol: Protocol, listen: &str, target: &str, controls: Controls) -> ForwardSpec {
    ForwardSpec {
        id: ForwardId::new_random(),
        protocol,
        listen: listen.parse().unwrap(),
        target: target.parse().unwrap(),
        ports: 1,
        one_target_port: false,
        controls,
    }
}

async fn converge(backend: &dyn Backend, desired: &[ForwardSpec]) {
    let report = backend
        .apply(&plan(desired, &backend.observe().await))
        .await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    }
}

/// The socat address of a client of `ip:port` from `bind` (and `src_port`).
fn client_address(proto: &str, bind: &str, ip: &str, port: u16, src_port: Option<u16>) -> String {
    let v = if ip.contains(':') { "6" } else { "4" };
    let mut address = format!(
        "{}{v}:{}:{port},bind={}",
        proto.to_uppercase(),
        bracket(ip),
        bracket(bind)
    );
    if let Some(sp) = src_port {
        address = format!(
            "{}{v}:{}:{port},bind={}:{sp},reuseaddr",
            proto.to_uppercase(),
            bracket(ip),
            bracket(bind)
        );
    }
    if proto == "tcp" {
        address.push_str(",connect-timeout=2");
    }
    address
}

/// Sends `payload` from the client namespace, from address `bind`; the
/// answer, or "" when none came within two idle seconds.
fn send(
    topo: &Topo,
    proto: &str,
    bind: &str,
    ip: &str,
    port: u16,
    src_port: Option<u16>,
    payload: &[u8],
) -> String {
    let address = client_address(proto, bind, ip, port, src_port);
    socat_in(&topo.client, 10, &address, payload)
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn ask(topo: &Topo, proto: &str, bind: &str, ip: &str, port: u16) -> String {
    send(topo, proto, bind, ip, port, None, b"ping\n")
}

/// `ask` until the answer starts with `want` (a few tries: UDP services
/// fork per datagram, and socat listeners restart after a change).
#[track_caller]
fn expect(topo: &Topo, proto: &str, bind: &str, ip: &str, port: u16, want: &str) {
    let mut last = String::new();
    for _ in 0..5 {
        last = ask(topo, proto, bind, ip, port);
        if last.starts_with(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("{proto} {ip}:{port} from {bind}: expected {want:?}, got {last:?}");
}

#[track_caller]
fn refused(topo: &Topo, proto: &str, bind: &str, ip: &str, port: u16) {
    let answer = ask(topo, proto, bind, ip, port);
    assert!(
        answer.is_empty(),
        "{proto} {ip}:{port} from {bind} should be refused, got {answer:?}"
    );
}

/// A TCP connection from the client that stays open (sending nothing) until
/// [`Held::finish`] sends a line and reads the answer, or it is killed.
struct Held(Option<Child>);

impl Held {
    fn open(topo: &Topo, bind: &str, ip: &str, port: u16) -> Held {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &topo.client,
                "socat",
                "-t",
                "3",
                "-T",
                "30",
                "-",
                &client_address("tcp", bind, ip, port, None),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a client");
        Held(Some(child))
    }

    /// Sends a line over the held connection and returns the answer.
    fn finish(mut self) -> String {
        let Some(mut child) = self.0.take() else {
            return String::new();
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"late\n");
        }
        let out = child.wait_with_output().expect("waiting for the client");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Established TCP connections the data plane carries for `spec` now: the
/// backend's usage where it counts, else the proxy's sockets (socat).
async fn active(topo: &Topo, backend: &dyn Backend, spec: &ForwardSpec) -> u64 {
    match backend.usage(&[spec.id]).await {
        Ok(usage) => usage.get(&spec.id).map_or(0, |u| u.connections_active),
        Err(_) => {
            let filter = format!("( sport = :{} )", spec.listen.port());
            let out = topo.ns(
                &topo.proxy,
                &["ss", "-Htn", "state", "established", &filter],
            );
            out.lines().filter(|l| !l.trim().is_empty()).count() as u64
        }
    }
}

async fn wait_active(topo: &Topo, backend: &dyn Backend, spec: &ForwardSpec, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let have = active(topo, backend, spec).await;
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "forward {}: {have} connections open, expected {want}; conntrack:\n{}\nsockets:\n{}",
            spec.listen,
            topo.ns(&topo.proxy, &["conntrack", "-L"]),
            topo.ns(&topo.client, &["ss", "-tn"]),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The namespaces, the services, and the client's second addresses.
fn topology() -> Topo {
    let mut topo = Topo::new(false);
    topo.start_services();
    for (addr, extra) in [("10.91.0.3/24", None), ("fd91::3/64", Some("nodad"))] {
        let mut argv = vec!["ip", "addr", "add", addr, "dev", "eth0"];
        argv.extend(extra);
        topo.ns(&topo.client.clone(), &argv);
    }
    topo
}

async fn scenario(kind: Kind) {
    let topo = topology();
    let backend = make(kind, &topo);
    let backend = backend.as_ref();

    // 1. Allowlists: one network each (socat's limit), of both families on
    // the IPv4 forwards (the IPv6 network never matches there).
    let only_ok4 = |max| controls(&[&format!("{OK4}/32"), "2001:db8::/32"], max);
    let mut tcp4 = spec(
        Protocol::Tcp,
        "10.91.0.1:20000",
        "10.92.0.2:8080",
        only_ok4(None),
    );
    let mut udp4 = spec(
        Protocol::Udp,
        "10.91.0.1:20001",
        "10.92.0.2:8080",
        only_ok4(None),
    );
    let tcp6 = spec(
        Protocol::Tcp,
        "[fd91::1]:20000",
        "[fd92::2]:8080",
        controls(&["fd91::2"], None),
    );
    if kind == Kind::Socat {
        // socat allows one network per forward.
        tcp4.controls = controls(&[OK4], None);
        udp4.controls = controls(&[OK4], None);
    }
    let mut all = vec![tcp4.clone(), udp4.clone(), tcp6.clone()];
    converge(backend, &all).await;
    expect(&topo, "tcp", OK4, EXT4, 20000, "A");
    refused(&topo, "tcp", OTHER4, EXT4, 20000);
    expect(&topo, "udp", OK4, EXT4, 20001, "A");
    refused(&topo, "udp", OTHER4, EXT4, 20001);
    expect(&topo, "tcp", OK6, EXT6, 20000, "A");
    refused(&topo, "tcp", OTHER6, EXT6, 20000);

    // 2. A change of controls only, with a connection open: the data plane
    // follows at once (the other client is now allowed) and the open
    // connection carries on. The kernel backends cut the connections of
    // clients taken off the list (`narrowing_cuts`), so there the open
    // connection's client stays on it; socat's child outlives the restarted
    // listener whatever the list.
    let held = Held::open(&topo, OK4, EXT4, 20000);
    wait_active(&topo, backend, &tcp4, 1).await;
    tcp4.controls = if kind == Kind::Socat {
        controls(&[OTHER4], None)
    } else {
        controls(&[OTHER4, OK4], None)
    };
    all[0] = tcp4.clone();
    let before = backend.observe().await;
    let change = plan(&all, &before);
    assert_eq!(change.retarget.len(), 1, "{change:?}");
    let report = backend.apply(&change).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    expect(&topo, "tcp", OTHER4, EXT4, 20000, "A");
    if kind == Kind::Socat {
        refused(&topo, "tcp", OK4, EXT4, 20000);
    }
    let answer = held.finish();
    assert!(
        answer.starts_with('A'),
        "the connection opened before a change of controls should carry on, got {answer:?}"
    );

    // 3. max_connections: two held, the third refused (kernel: reset;
    // socat: left in the listen queue, so no answer), and a place frees up
    // when one ends.
    tcp4.controls = controls(&[OTHER4], Some(2));
    all[0] = tcp4.clone();
    converge(backend, &all).await;
    wait_active(&topo, backend, &tcp4, 0).await;
    let first = Held::open(&topo, OTHER4, EXT4, 20000);
    let second = Held::open(&topo, OTHER4, EXT4, 20000);
    wait_active(&topo, backend, &tcp4, 2).await;
    refused(&topo, "tcp", OTHER4, EXT4, 20000);
    // Another forward's change leaves the count alone (iptables-legacy
    // replaces the whole table on every commit, and its connlimit counts
    // start again: docs/dataplane.md).
    let other = spec(
        Protocol::Tcp,
        "10.91.0.1:20020",
        "10.92.0.2:8080",
        Controls::default(),
    );
    all.push(other);
    converge(backend, &all).await;
    if kind != Kind::IptablesLegacy {
        refused(&topo, "tcp", OTHER4, EXT4, 20000);
    }
    drop(first);
    wait_active(&topo, backend, &tcp4, 1).await;
    expect(&topo, "tcp", OTHER4, EXT4, 20000, "A");
    drop(second);

    // UDP sessions: a second client port is over a limit of one.
    udp4.controls = controls(&[OK4], Some(1));
    all[1] = udp4.clone();
    converge(backend, &all).await;
    let one = send(&topo, "udp", OK4, EXT4, 20001, Some(40001), b"ping\n");
    assert!(one.starts_with('A'), "first UDP session: {one:?}");
    let two = send(&topo, "udp", OK4, EXT4, 20001, Some(40002), b"ping\n");
    assert!(
        two.is_empty(),
        "a second UDP session over the limit: {two:?}"
    );

    // 4. Usage: a new forward, one connection of a known size.
    let counted = spec(
        Protocol::Tcp,
        "10.91.0.1:20010",
        "10.92.0.2:8080",
        Controls::default(),
    );
    all.push(counted.clone());
    converge(backend, &all).await;
    let mut payload = vec![b'x'; 100_000];
    payload.push(b'\n');
    let answer = send(&topo, "tcp", OK4, EXT4, 20010, None, &payload);
    assert!(answer.starts_with('A'), "{answer:?}");
    match backend.usage(&[counted.id]).await {
        Ok(usage) => {
            let u = usage.get(&counted.id).copied().unwrap_or_default();
            // Kernel counters count IP packets: the payload plus headers
            // and the handshake, never less, and not twice as much.
            assert!(
                (100_001..150_000).contains(&u.bytes_in),
                "bytes_in {} for 100,001 bytes sent: {u:?}",
                u.bytes_in
            );
            assert!(
                (answer.len() as u64..50_000).contains(&u.bytes_out),
                "bytes_out {}: {u:?}",
                u.bytes_out
            );
            assert_eq!(u.connections_total, 1, "{u:?}");
            assert!(u.last_connection_at.is_some(), "{u:?}");
            // A new agent's first apply rewrites everything: the counts
            // carry over.
            let again = make(kind, &topo);
            converge(again.as_ref(), &all).await;
            let after = again
                .usage(&[counted.id])
                .await
                .expect("usage after a rewrite");
            let after = after.get(&counted.id).copied().unwrap_or_default();
            assert_eq!(
                (after.bytes_in, after.bytes_out, after.connections_total),
                (u.bytes_in, u.bytes_out, u.connections_total),
                "usage after a full rewrite: {after:?}"
            );
        }
        Err(reason) => {
            assert_eq!(kind, Kind::Socat, "{reason}");
            assert!(reason.contains("socat"), "{reason}");
        }
    }

    // Port ranges (kernel backends): the allowlist covers every port, and
    // one limit is shared by all of them.
    if kind != Kind::Socat {
        let range = ForwardSpec {
            ports: 3,
            one_target_port: true,
            ..spec(
                Protocol::Tcp,
                "10.91.0.1:20040",
                "10.92.0.2:8080",
                controls(&[OK4], Some(1)),
            )
        };
        all.push(range.clone());
        converge(backend, &all).await;
        for port in 20040..20043 {
            expect(&topo, "tcp", OK4, EXT4, port, "A");
            refused(&topo, "tcp", OTHER4, EXT4, port);
        }
        wait_active(&topo, backend, &range, 0).await;
        let held = Held::open(&topo, OK4, EXT4, 20040);
        wait_active(&topo, backend, &range, 1).await;
        refused(&topo, "tcp", OK4, EXT4, 20042);
        drop(held);
        wait_active(&topo, backend, &range, 0).await;
        expect(&topo, "tcp", OK4, EXT4, 20042, "A");
    }

    // 5. Second line of defence: what the backend cannot enforce fails the
    // forward with the reason and carries nothing of it.
    let mut cannot = spec(
        Protocol::Tcp,
        "10.91.0.1:20030",
        "10.92.0.2:8080",
        Controls::new(Vec::new(), None, ProxyProtocol::V2),
    );
    if kind == Kind::Socat {
        cannot.controls = controls(&[OK4, OTHER4], None);
    }
    let mut with_cannot = all.clone();
    with_cannot.push(cannot.clone());
    let report = backend
        .apply(&plan(&with_cannot, &backend.observe().await))
        .await;
    let field = if kind == Kind::Socat {
        "allowed_cidrs"
    } else {
        "proxy_protocol"
    };
    assert!(
        report.failed.len() == 1
            && report.failed[0].id == cannot.id
            && report.failed[0].reason.starts_with(field),
        "{:?}",
        report.failed
    );
    assert!(backend.observe_one(cannot.id).await.is_none());
    refused(&topo, "tcp", OK4, EXT4, 20030);

    converge(backend, &[]).await;
    backend.shutdown().await;
}

/// Narrowing an allowlist cuts what it no longer allows (kernel backends):
/// established TCP connections and UDP sessions of both clients while
/// everyone is allowed, then the list narrowed to client A: B's flows end
/// (the next datagram or segment is dropped, or reset), A's carry on, and
/// so do B's flows to another forward on the same address. Once with
/// `nf_conntrack_tcp_loose` at its default 1 (B's next segment is picked up
/// as a new connection, which the filter drops) and once at 0 (it is invalid,
/// is not translated, and the proxy's closed port resets it); and once with
/// the list narrowed while no agent ran, cut by the next agent's first apply.
async fn narrowing_cuts(kind: Kind) {
    let topo = topology();
    let backend = make(kind, &topo);
    let backend = backend.as_ref();
    let tcp4 = spec(
        Protocol::Tcp,
        "10.91.0.1:20050",
        "10.92.0.2:8080",
        Controls::default(),
    );
    let udp4 = spec(
        Protocol::Udp,
        "10.91.0.1:20051",
        "10.92.0.2:8080",
        Controls::default(),
    );
    let tcp6 = spec(
        Protocol::Tcp,
        "[fd91::1]:20050",
        "[fd92::2]:8080",
        Controls::default(),
    );
    let open = spec(
        Protocol::Tcp,
        "10.91.0.1:20052",
        "10.92.0.2:8080",
        Controls::default(),
    );
    // The third round narrows the list while no agent runs: the new agent's
    // first apply cuts.
    let mut restarted = None;
    for (round, loose, restart) in [(0u16, "1", false), (1, "0", false), (2, "1", true)] {
        topo.ns(
            &topo.proxy,
            &[
                "sysctl",
                "-qw",
                &format!("net.netfilter.nf_conntrack_tcp_loose={loose}"),
            ],
        );
        // Everyone allowed (the second round: a widening change, which
        // cuts nothing).
        let mut all = vec![tcp4.clone(), udp4.clone(), tcp6.clone(), open.clone()];
        converge(backend, &all).await;
        let a4 = Held::open(&topo, OK4, EXT4, 20050);
        let b4 = Held::open(&topo, OTHER4, EXT4, 20050);
        let a6 = Held::open(&topo, OK6, EXT6, 20050);
        let b6 = Held::open(&topo, OTHER6, EXT6, 20050);
        let b_open = Held::open(&topo, OTHER4, EXT4, 20052);
        wait_active(&topo, backend, &tcp4, 2).await;
        wait_active(&topo, backend, &tcp6, 2).await;
        wait_active(&topo, backend, &open, 1).await;
        // UDP sessions from fixed client ports (distinct per round, so
        // that the first round's entries do not matter).
        let (port_a, port_b) = (40051 + 2 * round, 40052 + 2 * round);
        for (bind, port) in [(OK4, port_a), (OTHER4, port_b)] {
            let answer = send(&topo, "udp", bind, EXT4, 20051, Some(port), b"ping\n");
            assert!(
                answer.starts_with('A'),
                "UDP from {bind}:{port}: {answer:?}"
            );
        }

        // Narrowed to client A's address.
        all[0].controls = controls(&[OK4], None);
        all[1].controls = controls(&[OK4], None);
        all[2].controls = controls(&[OK6], None);
        let backend = if restart {
            let again: &dyn Backend = &**restarted.insert(make(kind, &topo));
            converge(again, &all).await;
            again
        } else {
            let change = plan(&all, &backend.observe().await);
            assert_eq!(change.retarget.len(), 3, "{change:?}");
            let report = backend.apply(&change).await;
            assert!(report.failed.is_empty(), "{:?}", report.failed);
            backend
        };

        // B's entries are gone at once, A's and the other forward's stay.
        wait_active(&topo, backend, &all[0], 1).await;
        wait_active(&topo, backend, &all[2], 1).await;
        wait_active(&topo, backend, &open, 1).await;
        for (who, held, want_cut) in [
            ("B over IPv4", b4, true),
            ("B over IPv6", b6, true),
            ("A over IPv4", a4, false),
            ("A over IPv6", a6, false),
            ("B to the forward left open", b_open, false),
        ] {
            let answer = held.finish();
            if want_cut {
                assert!(
                    answer.is_empty(),
                    "loose={loose}: {who}: the connection should be cut, got {answer:?}"
                );
            } else {
                assert!(
                    answer.starts_with('A'),
                    "loose={loose}: {who}: the connection should carry on, got {answer:?}"
                );
            }
        }
        let b = send(&topo, "udp", OTHER4, EXT4, 20051, Some(port_b), b"ping\n");
        assert!(
            b.is_empty(),
            "loose={loose}: B's UDP session should be cut, got {b:?}"
        );
        let a = send(&topo, "udp", OK4, EXT4, 20051, Some(port_a), b"ping\n");
        assert!(
            a.starts_with('A'),
            "loose={loose}: A's UDP session should carry on, got {a:?}"
        );
    }
    converge(backend, &[]).await;
    backend.shutdown().await;
}

/// An update that changes the target and narrows the allowlist at once,
/// with the default `udp` cleanup (which keeps TCP flows on a retarget):
/// the refused client's flow is cut all the same, the allowed one carries on
/// to the target it had.
async fn retarget_and_narrow(kind: Kind) {
    let topo = topology();
    let backend = make_with(kind, &topo, ConntrackCleanup::Udp);
    let backend = backend.as_ref();
    let tcp4 = spec(
        Protocol::Tcp,
        "10.91.0.1:20050",
        "10.92.0.2:8080",
        Controls::default(),
    );
    converge(backend, std::slice::from_ref(&tcp4)).await;
    let a = Held::open(&topo, OK4, EXT4, 20050);
    let b = Held::open(&topo, OTHER4, EXT4, 20050);
    wait_active(&topo, backend, &tcp4, 2).await;
    let mut changed = tcp4.clone();
    changed.controls = controls(&[OK4], None);
    // Nothing listens there: only the held connections are judged.
    changed.target.set_port(8081);
    let change = plan(std::slice::from_ref(&changed), &backend.observe().await);
    assert_eq!(change.retarget.len(), 1, "{change:?}");
    let report = backend.apply(&change).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    wait_active(&topo, backend, &changed, 1).await;
    let answer = b.finish();
    assert!(answer.is_empty(), "B should be cut, got {answer:?}");
    let answer = a.finish();
    assert!(answer.starts_with('A'), "A should carry on, got {answer:?}");
    converge(backend, &[]).await;
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_retarget_and_narrow_cuts_the_refused_flow() {
    if privileged("nft_retarget_and_narrow_cuts_the_refused_flow") {
        retarget_and_narrow(Kind::Nft).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_retarget_and_narrow_cuts_the_refused_flow() {
    if privileged("iptables_retarget_and_narrow_cuts_the_refused_flow") {
        retarget_and_narrow(Kind::Iptables).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_narrowing_cuts_flows_no_longer_allowed() {
    if privileged("nft_narrowing_cuts_flows_no_longer_allowed") {
        narrowing_cuts(Kind::Nft).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_narrowing_cuts_flows_no_longer_allowed() {
    if privileged("iptables_narrowing_cuts_flows_no_longer_allowed") {
        narrowing_cuts(Kind::Iptables).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_legacy_narrowing_cuts_flows_no_longer_allowed() {
    if privileged("iptables_legacy_narrowing_cuts_flows_no_longer_allowed") {
        narrowing_cuts(Kind::IptablesLegacy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_allowlist_limit_usage_and_controls_change() {
    if privileged("nft_allowlist_limit_usage_and_controls_change") {
        scenario(Kind::Nft).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_allowlist_limit_usage_and_controls_change() {
    if privileged("iptables_allowlist_limit_usage_and_controls_change") {
        scenario(Kind::Iptables).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_legacy_allowlist_limit_usage_and_controls_change() {
    if privileged("iptables_legacy_allowlist_limit_usage_and_controls_change") {
        scenario(Kind::IptablesLegacy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socat_allowlist_and_limit() {
    if privileged("socat_allowlist_and_limit") {
        scenario(Kind::Socat).await;
    }
}
