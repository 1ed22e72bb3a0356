//! The relay backend's traffic controls with real traffic in network
//! namespaces: the relay runs in the proxy namespace (its runtime's threads
//! join it), clients come from two addresses of the client namespace.
//!
//! - allowlist: the allowed client passes; the other is reset before the
//!   target sees a SYN (TCP) or dropped (UDP), IPv4 and IPv6, counted by an
//!   nft counter in the backend namespace;
//! - max_connections: the N+1th connection is refused and one comes back
//!   once a connection closes;
//! - PROXY protocol v1 and v2, parsed by a real HAProxy (`accept-proxy`),
//!   which answers with the client address it read — IPv4, IPv6, and an IPv4
//!   client through a dual-stack IPv6 listener;
//! - usage: the counters move by exactly the bytes sent.
//!
//! Needs root: runs when NAVIGATOR_PRIVILEGED_TESTS=1, otherwise prints a
//! "skipped" line.

mod support;

use std::os::fd::AsFd as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use navigator_core::controls::{Controls, ProxyProtocol};
use navigator_core::{ForwardId, ForwardSpec, Protocol, parse_cidr, plan};
use navigator_dataplane::{Backend, RelayBackend, RelayBackendConfig};
use support::*;

/// The client namespace's second address, outside every allowlist here.
const OTHER4: &str = "10.91.0.5";
const OTHER6: &str = "fd91::5";
const CLIENT4: &str = "10.91.0.2";
const CLIENT6: &str = "fd91::2";
/// HAProxy's port in the backend namespace.
const HAPROXY_PORT: u16 = 9001;

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

fn controls(cidrs: &[&str], max: Option<u32>, proxy: ProxyProtocol) -> Controls {
    Controls::new(
        cidrs.iter().map(|c| parse_cidr(c).unwrap()).collect(),
        max,
        proxy,
    )
}

/// Builds the topology with a second client address on each family.
fn topo() -> Topo {
    let topo = Topo::new(false);
    topo.ns(
        &topo.client,
        &["ip", "addr", "add", "10.91.0.5/24", "dev", "eth0"],
    );
    topo.ns(
        &topo.client,
        &["ip", "addr", "add", "fd91::5/64", "dev", "eth0", "nodad"],
    );
    topo
}

/// Runs `body` on a thread in the proxy namespace with a multi-threaded
/// tokio runtime whose workers were started there too, so that every
/// socket the relay opens (listeners and connections to targets) is the
/// proxy's. The workers keep relaying while `body` waits for clients.
fn in_proxy<T: Send>(topo: &Topo, body: impl FnOnce(&tokio::runtime::Runtime) -> T + Send) -> T {
    let path = format!("/run/netns/{}", topo.proxy);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let ns = std::fs::File::open(&path).expect("open the proxy namespace");
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("join the proxy namespace");
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                body(&rt)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One request from `src` in the client namespace: "ping\n" over TCP or UDP;
/// the answer (trimmed) and socat's stderr.
fn request(topo: &Topo, proto: &str, src: &str, ip: &str, port: u16) -> (String, String) {
    let v6 = ip.contains(':');
    let (host, bind) = if v6 {
        (format!("[{ip}]"), format!("[{src}]"))
    } else {
        (ip.to_owned(), src.to_owned())
    };
    let v = if v6 { "6" } else { "4" };
    let target = format!("{}{v}:{host}:{port},bind={bind}", proto.to_uppercase());
    let out = socat_in(&topo.client, 5, &target, b"ping\n").expect("run socat");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Retries `request` until the answer starts with `want`.
fn expect(topo: &Topo, proto: &str, src: &str, ip: &str, port: u16, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..5 {
        last = request(topo, proto, src, ip, port).0;
        if last.starts_with(want) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{proto} {ip}:{port} from {src}: expected {want:?}, got {last:?}");
}

/// Counts, in the backend namespace, the TCP SYNs and UDP datagrams that
/// reach the services' port: what "the target saw a connection" means.
fn count_arrivals(topo: &Topo) {
    let ns = &topo.backend;
    topo.ns(ns, &["nft", "add", "table", "inet", "probe"]);
    topo.ns(
        ns,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "probe",
            "input",
            "{ type filter hook input priority -300; }",
        ],
    );
    let port = SERVICE_PORT.to_string();
    topo.ns(
        ns,
        &[
            "nft", "add", "rule", "inet", "probe", "input", "tcp", "dport", &port, "tcp", "flags",
            "&", "(syn", "|", "ack)", "==", "syn", "counter",
        ],
    );
    topo.ns(
        ns,
        &[
            "nft", "add", "rule", "inet", "probe", "input", "udp", "dport", &port, "counter",
        ],
    );
}

/// (SYNs, datagrams) counted so far.
fn arrivals(topo: &Topo) -> (u64, u64) {
    let out = topo.ns(&topo.backend, &["nft", "list", "table", "inet", "probe"]);
    let counts: Vec<u64> = out
        .lines()
        .filter_map(|l| {
            let rest = l.split("counter packets ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    assert_eq!(counts.len(), 2, "{out}");
    (counts[0], counts[1])
}

/// The services' answer through the relay, which connects from the proxy's
/// internal address (socat writes IPv6 peers in full, in brackets).
fn answer_for(ext: &str) -> String {
    if ext == EXT4 {
        format!("A {PROXY_INT4}")
    } else {
        "A [fd92:0000:0000:0000:0000:0000:0000:0001]".to_owned()
    }
}

#[test]
fn relay_allowlist_passes_the_allowed_client_and_refuses_the_other() {
    if !privileged("relay_allowlist_passes_the_allowed_client_and_refuses_the_other") {
        return;
    }
    let mut topo = topo();
    topo.start_services();
    count_arrivals(&topo);
    let only = |c: &[&str]| controls(c, None, ProxyProtocol::None);
    let forwards = vec![
        spec(
            Protocol::Tcp,
            "10.91.0.1:20000",
            "10.92.0.2:8080",
            only(&[CLIENT4]),
        ),
        spec(
            Protocol::Udp,
            "10.91.0.1:20001",
            "10.92.0.2:8080",
            only(&["10.91.0.2/31"]),
        ),
        spec(
            Protocol::Tcp,
            "[fd91::1]:20000",
            "[fd92::2]:8080",
            only(&[CLIENT6]),
        ),
        spec(
            Protocol::Udp,
            "[fd91::1]:20001",
            "[fd92::2]:8080",
            only(&["fd91::2/127"]),
        ),
    ];
    let topo = &topo;
    in_proxy(topo, |rt| {
        let backend = RelayBackend::new(RelayBackendConfig::default());
        let report = rt.block_on(backend.apply(&plan(&forwards, &[])));
        assert!(report.failed.is_empty(), "{:?}", report.failed);

        for (ext, client, other) in [(EXT4, CLIENT4, OTHER4), (EXT6, CLIENT6, OTHER6)] {
            let want = answer_for(ext);
            for (proto, port) in [("tcp", 20000), ("udp", 20001)] {
                let before = arrivals(topo);
                let (answer, _) = request(topo, proto, other, ext, port);
                assert_eq!(answer, "", "{proto} from {other} must be refused");
                if proto == "tcp" {
                    // curl words what it got: a reset, not a timeout or an
                    // orderly close ("Empty reply from server"). A reset that
                    // arrives before curl looked at its connect's outcome
                    // reads as "Couldn't connect" (7), or, when it lands
                    // between the connect and curl's getpeername, as
                    // "Transport endpoint is not connected" (55); the
                    // listener is there (the allowed client passes below).
                    let said = curl(topo, other, ext, port);
                    assert!(
                        said.contains("reset by peer")
                            || said.starts_with("curl: (7)")
                            || (said.starts_with("curl: (55)") && said.contains("not connected")),
                        "{said}"
                    );
                }
                assert_eq!(
                    arrivals(topo),
                    before,
                    "{proto} from {other}: nothing reached the target"
                );
                let answer = expect(topo, proto, client, ext, port, "A");
                assert_eq!(answer, want);
            }
        }

        // Counters: "ping\n" in, "A <address>\n" out, per request that got
        // through; the refused requests count nothing.
        let ids: Vec<_> = forwards.iter().map(|f| f.id).collect();
        let usage = rt.block_on(backend.usage(&ids)).expect("the relay counts");
        for f in &forwards {
            let u = usage[&f.id];
            let ext = if f.listen.is_ipv4() { EXT4 } else { EXT6 };
            let reply = answer_for(ext).len() as u64 + 1;
            // UDP retries (expect) may send more than one datagram; each
            // datagram is one request, answered once.
            let requests = u.bytes_in / 5;
            assert!(requests >= 1, "{f:?}: {u:?}");
            assert_eq!(u.bytes_in, requests * 5, "{u:?}");
            assert_eq!(u.bytes_out, requests * reply, "{u:?}");
            assert!(u.last_connection_at.is_some());
            if f.protocol == Protocol::Tcp {
                assert_eq!(u.connections_total, requests, "{u:?}");
            }
        }
        rt.block_on(backend.shutdown());
    });
}

/// A holder: a TCP connection through the forward that the service keeps
/// open (it waits for a line that never comes). Killed by PID.
fn hold(topo: &Topo, port: u16) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.client,
            "socat",
            "-u",
            "STDIN",
            &format!("TCP4:{EXT4}:{port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a holder")
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn relay_max_connections_holds_and_recovers() {
    if !privileged("relay_max_connections_holds_and_recovers") {
        return;
    }
    let mut topo = topo();
    topo.start_services();
    let forward = ForwardSpec {
        ports: 2,
        one_target_port: true,
        ..spec(
            Protocol::Tcp,
            "10.91.0.1:20010",
            "10.92.0.2:8080",
            controls(&[], Some(2), ProxyProtocol::None),
        )
    };
    let topo = &topo;
    in_proxy(topo, |rt| {
        let backend = RelayBackend::new(RelayBackendConfig::default());
        let report = rt.block_on(backend.apply(&plan(std::slice::from_ref(&forward), &[])));
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let active = |rt: &tokio::runtime::Runtime| {
            rt.block_on(backend.usage(&[forward.id])).expect("usage")[&forward.id]
                .connections_active
        };
        // Two connections, one on each port: the forward's cap is shared.
        let mut first = hold(topo, 20010);
        wait_for("the first connection", || active(rt) == 1);
        let mut second = hold(topo, 20011);
        wait_for("the second connection", || active(rt) == 2);
        for port in [20010, 20011] {
            let (answer, _) = request(topo, "tcp", CLIENT4, EXT4, port);
            assert_eq!(answer, "", "the third connection is refused (port {port})");
        }
        let _ = first.kill();
        let _ = first.wait();
        wait_for("a slot freed", || active(rt) == 1);
        let answer = expect(topo, "tcp", CLIENT4, EXT4, 20011, "A");
        assert_eq!(answer, format!("A {PROXY_INT4}"));
        let _ = second.kill();
        let _ = second.wait();
        rt.block_on(backend.shutdown());
    });
}

/// HAProxy in the backend namespace, `accept-proxy` on both families,
/// answering each HTTP request with the client address it read from the
/// PROXY header.
fn start_haproxy(topo: &mut Topo, dir: &std::path::Path) {
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n\
             \x20   maxconn 100\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 5s\n\
             \x20   timeout server 5s\n\
             frontend echo\n\
             \x20   bind {A4}:{HAPROXY_PORT} accept-proxy\n\
             \x20   bind [{A6}]:{HAPROXY_PORT} accept-proxy\n\
             \x20   http-request return status 200 content-type text/plain lf-string \"client=%[src] port=%[src_port]\"\n"
        ),
    )
    .expect("write haproxy.cfg");
    let check = Command::new("/usr/sbin/haproxy")
        .args(["-c", "-f"])
        .arg(&config)
        .output()
        .expect("run haproxy (apt-get install haproxy)");
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let backend = topo.backend.clone();
    let config = config.to_string_lossy().into_owned();
    topo.spawn(&backend, &["/usr/sbin/haproxy", "-db", "-f", &config]);
    wait_for("haproxy listening", || {
        topo.ns(&backend, &["ss", "-lnt"])
            .matches(&format!(":{HAPROXY_PORT}"))
            .count()
            >= 2
    });
}

/// An HTTP GET from `src` in the client namespace through `ip:port`.
fn curl(topo: &Topo, src: &str, ip: &str, port: u16) -> String {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.client,
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--interface",
            src,
            &format!("http://{host}:{port}/"),
        ])
        .output()
        .expect("run curl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn relay_proxy_protocol_v1_and_v2_are_parsed_by_haproxy() {
    if !privileged("relay_proxy_protocol_v1_and_v2_are_parsed_by_haproxy") {
        return;
    }
    let mut topo = topo();
    let dir = tempfile::tempdir().expect("tempdir");
    start_haproxy(&mut topo, dir.path());
    let target4 = format!("{A4}:{HAPROXY_PORT}");
    let target6 = format!("[{A6}]:{HAPROXY_PORT}");
    let pp = |v| controls(&[], None, v);
    let forwards = vec![
        // (listen, target, version): IPv4, IPv6, and a dual-stack IPv6
        // listener reached over IPv4 (announced as TCP4) to an IPv6 target.
        spec(
            Protocol::Tcp,
            "10.91.0.1:20020",
            &target4,
            pp(ProxyProtocol::V1),
        ),
        spec(
            Protocol::Tcp,
            "10.91.0.1:20021",
            &target4,
            pp(ProxyProtocol::V2),
        ),
        spec(
            Protocol::Tcp,
            "[fd91::1]:20020",
            &target6,
            pp(ProxyProtocol::V1),
        ),
        spec(
            Protocol::Tcp,
            "[fd91::1]:20021",
            &target6,
            pp(ProxyProtocol::V2),
        ),
        spec(Protocol::Tcp, "[::]:20022", &target6, pp(ProxyProtocol::V1)),
        spec(Protocol::Tcp, "[::]:20023", &target6, pp(ProxyProtocol::V2)),
    ];
    let topo = &topo;
    in_proxy(topo, |rt| {
        let backend = RelayBackend::new(RelayBackendConfig::default());
        let report = rt.block_on(backend.apply(&plan(&forwards, &[])));
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        for (src, ip, port) in [
            (CLIENT4, EXT4, 20020),
            (OTHER4, EXT4, 20021),
            (CLIENT6, EXT6, 20020),
            (OTHER6, EXT6, 20021),
            (CLIENT4, EXT4, 20022),
            (OTHER4, EXT4, 20023),
            (CLIENT6, EXT6, 20023),
        ] {
            let answer = curl(topo, src, ip, port);
            assert!(
                answer.starts_with(&format!("client={src} port=")),
                "{ip}:{port} from {src}: HAProxy read {answer:?}"
            );
        }
        // Without a header HAProxy refuses the connection: the header is
        // what made it answer above, not a fallback.
        let plain = spec(
            Protocol::Tcp,
            "10.91.0.1:20024",
            &target4,
            pp(ProxyProtocol::None),
        );
        let report = rt.block_on(backend.apply(&plan(
            &[forwards.clone(), vec![plain]].concat(),
            &rt.block_on(backend.observe()),
        )));
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let answer = curl(topo, CLIENT4, EXT4, 20024);
        assert!(!answer.contains("client="), "{answer:?}");
        rt.block_on(backend.shutdown());
    });
}
