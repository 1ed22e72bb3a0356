//! Network-namespace topologies for the data-plane tests: a client, a proxy
//! with two NICs (external, internal) and a backend namespace with two
//! tagged services, optionally behind a Linux bridge in the proxy (the
//! original br100 layout). Everything is created per test under unique names
//! and deleted in `Drop`; every process started is killed by PID.
//!
//! Addresses: external 10.91.0.0/24 + fd91::/64 (client .2, proxy .1),
//! internal 10.92.0.0/24 + fd92::/64 (proxy .1, backend A .2, backend B .3).
//! The backend has no route back to the client network, so a reply only
//! arrives when the proxy SNATs (the dual-NIC case the original failed).

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether privileged tests run; prints the skip line when they do not.
pub fn privileged(test: &str) -> bool {
    if std::env::var("NAVIGATOR_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "{test}: skipped: set NAVIGATOR_PRIVILEGED_TESTS=1 (needs root and network namespaces)"
    );
    false
}

/// Runs a command, panicking with its stderr on failure.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returning success.
pub fn try_sh(argv: &[&str]) -> bool {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Topo {
    pub client: String,
    pub proxy: String,
    pub backend: String,
    /// Another host on the internal network (bridge layout only).
    pub host: String,
    pub bridge: bool,
    procs: Vec<Child>,
}

pub const EXT4: &str = "10.91.0.1";
pub const EXT6: &str = "fd91::1";
pub const A4: &str = "10.92.0.2";
pub const B4: &str = "10.92.0.3";
pub const A6: &str = "fd92::2";
pub const B6: &str = "fd92::3";
pub const PROXY_INT4: &str = "10.92.0.1";
pub const PROXY_INT6: &str = "fd92::1";
/// Port of the tagged services in the backend.
pub const SERVICE_PORT: u16 = 8080;

impl Topo {
    /// Builds the topology; panics (never skips) if namespaces cannot be
    /// created, so a CI run without privileges fails loudly.
    pub fn new(bridge: bool) -> Topo {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("nvt{}x{n}", std::process::id());
        let topo = Topo {
            client: format!("{base}c"),
            proxy: format!("{base}p"),
            backend: format!("{base}b"),
            host: format!("{base}h"),
            bridge,
            procs: Vec::new(),
        };
        for ns in [&topo.client, &topo.proxy, &topo.backend, &topo.host] {
            let out = Command::new("ip").args(["netns", "add", ns]).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => panic!(
                    "cannot create network namespace {ns} (NAVIGATOR_PRIVILEGED_TESTS=1 requires root): {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => panic!("cannot run `ip netns add` (install iproute2): {e}"),
            }
        }
        let (c, p, b, h) = (&topo.client, &topo.proxy, &topo.backend, &topo.host);
        sh(&[
            "ip", "link", "add", "eth0", "netns", c, "type", "veth", "peer", "name", "ext0",
            "netns", p,
        ]);
        sh(&[
            "ip", "link", "add", "eth0", "netns", b, "type", "veth", "peer", "name", "int0",
            "netns", p,
        ]);
        topo.ns(c, &["ip", "addr", "add", "10.91.0.2/24", "dev", "eth0"]);
        topo.ns(
            c,
            &["ip", "addr", "add", "fd91::2/64", "dev", "eth0", "nodad"],
        );
        topo.ns(p, &["ip", "addr", "add", "10.91.0.1/24", "dev", "ext0"]);
        topo.ns(
            p,
            &["ip", "addr", "add", "fd91::1/64", "dev", "ext0", "nodad"],
        );
        let internal = if bridge {
            topo.ns(p, &["ip", "link", "add", "br100", "type", "bridge"]);
            topo.ns(p, &["ip", "link", "set", "int0", "master", "br100"]);
            topo.ns(p, &["ip", "link", "set", "br100", "up"]);
            // A second internal host on its own bridge port: the hairpin
            // client (a host using the external address from inside).
            sh(&[
                "ip", "link", "add", "eth0", "netns", h, "type", "veth", "peer", "name", "int1",
                "netns", p,
            ]);
            topo.ns(p, &["ip", "link", "set", "int1", "master", "br100"]);
            topo.ns(p, &["ip", "link", "set", "int1", "up"]);
            topo.ns(h, &["ip", "link", "set", "lo", "up"]);
            topo.ns(h, &["ip", "addr", "add", "10.92.0.4/24", "dev", "eth0"]);
            topo.ns(
                h,
                &["ip", "addr", "add", "fd92::4/64", "dev", "eth0", "nodad"],
            );
            topo.ns(h, &["ip", "link", "set", "eth0", "up"]);
            topo.ns(
                h,
                &["ip", "route", "add", "10.91.0.1/32", "via", "10.92.0.1"],
            );
            topo.ns(
                h,
                &["ip", "-6", "route", "add", "fd91::1/128", "via", "fd92::1"],
            );
            "br100"
        } else {
            "int0"
        };
        topo.ns(p, &["ip", "addr", "add", "10.92.0.1/24", "dev", internal]);
        topo.ns(
            p,
            &["ip", "addr", "add", "fd92::1/64", "dev", internal, "nodad"],
        );
        for (addr, dev) in [
            ("10.92.0.2/24", "eth0"),
            ("10.92.0.3/24", "eth0"),
            ("fd92::2/64", "eth0"),
            ("fd92::3/64", "eth0"),
        ] {
            let mut argv = vec!["ip", "addr", "add", addr, "dev", dev];
            if addr.contains(':') {
                argv.push("nodad");
            }
            topo.ns(b, &argv);
        }
        for ns in [c, p, b] {
            topo.ns(ns, &["ip", "link", "set", "lo", "up"]);
        }
        topo.ns(c, &["ip", "link", "set", "eth0", "up"]);
        topo.ns(b, &["ip", "link", "set", "eth0", "up"]);
        topo.ns(p, &["ip", "link", "set", "ext0", "up"]);
        topo.ns(p, &["ip", "link", "set", "int0", "up"]);
        topo.ns(c, &["ip", "route", "add", "default", "via", "10.91.0.1"]);
        topo.ns(
            c,
            &["ip", "-6", "route", "add", "default", "via", "fd91::1"],
        );
        // The backend may reach the proxy's external address (hairpin) but
        // has no route to the client network: replies need SNAT.
        topo.ns(
            b,
            &["ip", "route", "add", "10.91.0.1/32", "via", "10.92.0.1"],
        );
        topo.ns(
            b,
            &["ip", "-6", "route", "add", "fd91::1/128", "via", "fd92::1"],
        );
        topo.ns(p, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        topo.ns(p, &["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
        topo
    }

    /// The namespace of a host on the internal network other than the
    /// target: its own bridge port in the bridge layout; the backend
    /// itself (reaching itself through the proxy) with two plain NICs.
    pub fn internal_host(&self) -> &str {
        if self.bridge {
            &self.host
        } else {
            &self.backend
        }
    }

    /// Runs `argv` in namespace `ns`, panicking on failure.
    pub fn ns(&self, ns: &str, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(argv);
        sh(&full)
    }

    /// Starts a background process in `ns`, killed on drop.
    pub fn spawn(&mut self, ns: &str, argv: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {argv:?} in {ns}: {e}"));
        self.procs.push(child);
    }

    /// Tagged TCP and UDP services on A and B (v4 and v6) that answer
    /// "<tag> <peer address>".
    pub fn start_services(&mut self) {
        let backend = self.backend.clone();
        for (tag, addr) in [("A", A4), ("B", B4), ("A", A6), ("B", B6)] {
            let v = if addr.contains(':') { "6" } else { "4" };
            let bind = if v == "6" {
                format!("[{addr}]")
            } else {
                addr.to_owned()
            };
            // Read the request before answering: a service that answers and
            // exits first makes socat's write of the request fail (EPIPE),
            // and socat then exits before relaying the answer. On a loaded
            // host that race lost a third of the requests, which looked
            // like data-plane failures (it was the "IPv6 hairpin" issue).
            let reply = format!("SYSTEM:read -r line; echo {tag} $SOCAT_PEERADDR");
            self.spawn(
                &backend,
                &[
                    "socat",
                    &format!("TCP{v}-LISTEN:{SERVICE_PORT},bind={bind},fork,reuseaddr"),
                    &reply,
                ],
            );
            self.spawn(
                &backend,
                &[
                    "socat",
                    &format!("UDP{v}-RECVFROM:{SERVICE_PORT},bind={bind},fork,reuseaddr"),
                    &reply,
                ],
            );
        }
        // Wait until the services listen.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let out = self.ns(&backend, &["ss", "-lntu"]);
            if out.matches(&format!(":{SERVICE_PORT}")).count() >= 8 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("backend services did not start");
    }

    /// One request from `ns` to `addr:port` over `proto`; the answer line,
    /// or an empty string when nothing came back.
    pub fn request_from(
        &self,
        ns: &str,
        proto: &str,
        ip: &str,
        port: u16,
        src_port: Option<u16>,
    ) -> String {
        let v = if ip.contains(':') { "6" } else { "4" };
        let host = if v == "6" {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        };
        let mut target = format!("{}{v}:{host}:{port}", proto.to_uppercase());
        if let Some(sp) = src_port {
            target.push_str(&format!(",sourceport={sp},reuseaddr"));
        }
        socat_in(ns, 5, &target, b"ping\n")
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// A request from the client namespace.
    pub fn request(&self, proto: &str, ip: &str, port: u16) -> String {
        self.request_from(&self.client, proto, ip, port, None)
    }

    /// Retries `request` until it starts with `want` (UDP services fork per
    /// datagram; the first datagram after a change can race).
    pub fn expect(&self, proto: &str, ip: &str, port: u16, want: &str) -> String {
        self.expect_from(&self.client, proto, ip, port, None, want)
    }

    /// `expect` from any namespace, optionally from a fixed source port (one
    /// UDP flow: retries are datagrams of the same flow).
    pub fn expect_from(
        &self,
        ns: &str,
        proto: &str,
        ip: &str,
        port: u16,
        src_port: Option<u16>,
        want: &str,
    ) -> String {
        let mut last = String::new();
        for _ in 0..5 {
            last = self.request_from(ns, proto, ip, port, src_port);
            if last.starts_with(want) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{proto} {ip}:{port} from {ns}: expected an answer from {want:?}, got {last:?}");
    }

    pub fn nft_ruleset(&self) -> String {
        self.ns(&self.proxy, &["nft", "list", "ruleset"])
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for child in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.client, &self.proxy, &self.backend, &self.host] {
            // Processes still in a namespace (socat children) keep it alive.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    // Quietly: a child may have exited since the listing.
                    let _ = Command::new("kill")
                        .args(["-9", pid])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `socat - ADDRESS` in namespace `ns` under `timeout SECS`, writes
/// `payload` to it and returns what it printed (stdout: the answer; stderr:
/// why it failed). socat gives up two idle seconds after the last byte.
pub fn socat_in(
    ns: &str,
    secs: u32,
    address: &str,
    payload: &[u8],
) -> std::io::Result<std::process::Output> {
    use std::io::Write as _;
    let secs = secs.to_string();
    Command::new("ip")
        .args([
            "netns", "exec", ns, "timeout", &secs, "socat", "-t", "2", "-T", "2", "-", address,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(payload);
            }
            child.wait_with_output()
        })
}
