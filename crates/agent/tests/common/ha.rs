//! The address-group (VRRP) topology in network namespaces, for the
//! failover test and benchmark (`bench/ha/failover.sh`), and reusable by an
//! end-to-end test through the server:
//!
//! ```text
//!  client 10.97.0.2 ─┐            ┌─ A eth0 10.97.0.11   A eth1 10.98.0.11 ─┐
//!                    ├─ ext (br) ─┤  virtual 10.97.0.100  (the holder's)    ├─ int (br) ─ backend 10.98.0.50
//!                    │            └─ B eth0 10.97.0.12   B eth1 10.98.0.12 ─┘
//! ```
//!
//! The external side is dual-stack (fd97::/64: client ::2, A ::11, B ::12,
//! virtual ::100, one group with both addresses; VRRP unicast over IPv4,
//! multicast over IPv6). Both bridges live in a namespace of their own. Every name starts with
//! `navk` and carries the process id and a counter; the namespaces go in
//! `Drop`, and every process this module starts (and the keepalived of each
//! node, read from its pid file) is killed by pid there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub const CLIENT: &str = "10.97.0.2";
pub const VIRTUAL: &str = "10.97.0.100";
/// The group's IPv6 virtual address: the group is dual-stack, so that both
/// families' VRRP instances are exercised and must move together.
pub const VIRTUAL6: &str = "fd97::100";
pub const BACKEND: &str = "10.98.0.50";
/// The backend's service: it writes `backend` and closes.
pub const BACKEND_PORT: u16 = 30080;
/// The forward's port on the virtual address.
pub const FORWARD_PORT: u16 = 30100;

/// Whether privileged tests run: panics under `CI` without them, else
/// prints the skip line.
pub fn privileged(test: &str) -> bool {
    if std::env::var("NAVIGATOR_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI is set but NAVIGATOR_PRIVILEGED_TESTS=1 is not (needs root and network namespaces)"
    );
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

/// One proxy node: its namespace, own addresses and run directory.
pub struct Node {
    pub name: &'static str,
    pub ns: String,
    pub ext: String,
    pub int: String,
    pub priority: u8,
    pub run_dir: PathBuf,
    process: Option<Child>,
}

impl Node {
    pub fn config_path(&self) -> PathBuf {
        self.run_dir.join("navigator.conf")
    }

    pub fn state_path(&self) -> PathBuf {
        self.run_dir.join("state.json")
    }

    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("node.log")
    }

    /// The keepalived of this node, from its pid file.
    pub fn keepalived_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.run_dir.join("keepalived.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

pub struct Topology {
    pub bridge: String,
    pub client: String,
    pub backend: String,
    pub nodes: [Node; 2],
    dir: PathBuf,
    procs: Vec<Child>,
}

impl Topology {
    /// Builds the namespaces, links and the backend service; panics (never
    /// skips) when it cannot, so that a privileged run fails loudly.
    pub fn new() -> Topology {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("navk{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(&base);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let node = |name: &'static str, last: u8, priority: u8| Node {
            name,
            ns: format!("{base}{name}"),
            ext: format!("10.97.0.{last}"),
            int: format!("10.98.0.{last}"),
            priority,
            run_dir: dir.join(name),
            process: None,
        };
        let topo = Topology {
            bridge: format!("{base}br"),
            client: format!("{base}c"),
            backend: format!("{base}be"),
            nodes: [node("a", 11, 150), node("b", 12, 100)],
            dir,
            procs: Vec::new(),
        };
        let all = [
            &topo.bridge,
            &topo.client,
            &topo.backend,
            &topo.nodes[0].ns,
            &topo.nodes[1].ns,
        ];
        for ns in all {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let br = &topo.bridge;
        for bridge in ["ext", "int"] {
            sh(&["ip", "-n", br, "link", "add", bridge, "type", "bridge"]);
            sh(&["ip", "-n", br, "link", "set", bridge, "up"]);
        }
        // One veth per (namespace, bridge): `eth0`/`eth1` inside, a short
        // port name on the bridge.
        let mut port = 0;
        let mut attach = |ns: &str, inner: &str, bridge: &str, address: &str| {
            port += 1;
            let outer = format!("p{port}");
            sh(&[
                "ip", "link", "add", inner, "netns", ns, "type", "veth", "peer", "name", &outer,
                "netns", br,
            ]);
            sh(&["ip", "-n", br, "link", "set", &outer, "master", bridge]);
            sh(&["ip", "-n", br, "link", "set", &outer, "up"]);
            sh(&["ip", "-n", ns, "addr", "add", address, "dev", inner]);
            sh(&["ip", "-n", ns, "link", "set", inner, "up"]);
        };
        attach(&topo.client, "eth0", "ext", &format!("{CLIENT}/24"));
        sh(&[
            "ip",
            "-n",
            &topo.client,
            "addr",
            "add",
            "fd97::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        attach(&topo.backend, "eth0", "int", &format!("{BACKEND}/24"));
        for node in &topo.nodes {
            attach(&node.ns, "eth0", "ext", &format!("{}/24", node.ext));
            attach(&node.ns, "eth1", "int", &format!("{}/24", node.int));
            let own6 = format!("fd97::{}/64", &node.ext["10.97.0.".len()..]);
            sh(&[
                "ip", "-n", &node.ns, "addr", "add", &own6, "dev", "eth0", "nodad",
            ]);
            sh(&[
                "ip",
                "netns",
                "exec",
                &node.ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
            std::fs::create_dir_all(&node.run_dir).expect("run directory");
        }
        let mut topo = topo;
        // The backend: one line per connection.
        let service = Command::new("ip")
            .args(["netns", "exec", &topo.backend, "socat"])
            .arg(format!("TCP-LISTEN:{BACKEND_PORT},fork,reuseaddr"))
            .arg("SYSTEM:echo backend")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (install socat) for the backend service");
        topo.procs.push(service);
        topo
    }

    /// Writes node `i`'s configuration: `backend` (`nft` or `relay`), one
    /// group `web` with the virtual address, unicast peers, `advert_int`.
    pub fn configure(&self, i: usize, backend: &str, advert_int: &str) {
        let node = &self.nodes[i];
        let peer = &self.nodes[1 - i];
        let text = format!(
            "[DEFAULT]\nhost = {name}\ntransport_url = rabbit://u:p@127.0.0.1:5672/\n\
             [agent]\nbackend = {backend}\nexternal_addresses = {ext}\nport_range = 30100-30199\n\
             nft_table = navk\n\
             [vrrp]\nrun_dir = {run}\nagent_check_delay = 3\n\
             [vrrp:web]\nvirtual_addresses = {VIRTUAL}/24, {VIRTUAL6}/64\ninterface = eth0\nvirtual_router_id = 77\n\
             priority = {priority}\nadvert_int = {advert_int}\nunicast_src_ip = {ext}\nunicast_peers = {peer}\n",
            name = node.name,
            ext = node.ext,
            run = node.run_dir.display(),
            priority = node.priority,
            peer = peer.ext,
        );
        std::fs::write(node.config_path(), text).expect("node configuration");
    }

    /// Starts node `i`: `program args…` run in its namespace with
    /// `NAVK_NODE_CONFIG`/`NAVK_NODE_STATE` set (the node entry point of
    /// the test binary or of the benchmark), output to its log.
    pub fn start(&mut self, i: usize, program: &Path, args: &[&str]) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("node log");
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(program)
            .args(args)
            .env("NAVK_NODE_CONFIG", node.config_path())
            .env("NAVK_NODE_STATE", node.state_path())
            .env(
                "NAVK_NODE_FORWARD",
                format!("{VIRTUAL}:{FORWARD_PORT}={BACKEND}:{BACKEND_PORT}"),
            )
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("node process");
        node.process = Some(child);
    }

    /// The node's death: its link down, then kill -9 of its agent and its
    /// keepalived (whose VRRP child follows its parent). Link first, so
    /// that no resignation reaches the peer: a dead machine sends none.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        sh(&["ip", "-n", &node.ns, "link", "set", "eth0", "down"]);
        if let Some(mut child) = node.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = node.keepalived_pid() {
            kill9(pid);
        }
        // The VRRP child too, in case it outlived its parent.
        if let Ok(pid) = std::fs::read_to_string(node.run_dir.join("keepalived-vrrp.pid"))
            && let Ok(pid) = pid.trim().parse()
        {
            kill9(pid);
        }
    }

    /// kill -9 of node `i`'s agent alone (keepalived keeps running).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Node `i`'s link back up (after [`Topology::kill`]).
    pub fn link_up(&self, i: usize) {
        sh(&["ip", "-n", &self.nodes[i].ns, "link", "set", "eth0", "up"]);
    }

    /// What node `i` reported last (`AgentState` as JSON), if anything.
    pub fn state(&self, i: usize) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.nodes[i].state_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Whether node `i` says it holds group `web` now.
    pub fn holder(&self, i: usize) -> Option<bool> {
        self.state(i)?
            .get("groups")?
            .get(0)?
            .get("holder")?
            .as_bool()
    }

    /// The node's log, for failure messages.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default()
    }

    /// One connection from the client namespace to the virtual address:
    /// whether the backend answered within `timeout`.
    pub fn client_connects(&self, timeout: Duration) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client, "socat", "-T"])
            .arg(format!("{}", timeout.as_secs_f64()))
            .arg("-")
            .arg(format!(
                "TCP:{VIRTUAL}:{FORWARD_PORT},connect-timeout={}",
                timeout.as_secs_f64()
            ))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("backend"))
    }

    /// Connects in a loop until the backend answers; the time it took, or
    /// `None` after `bound`. Each attempt waits 200 ms for the connection
    /// and the next follows 20 ms later, so the time is known to about a
    /// quarter of a second (a SYN to the dead holder's MAC is never
    /// answered: the attempt times out, the next goes to the new holder
    /// once its gratuitous ARP arrived).
    pub fn first_success_within(&self, since: Instant, bound: Duration) -> Option<Duration> {
        while since.elapsed() < bound {
            if self.client_connects(Duration::from_millis(200)) {
                return Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until `check` holds, polling; false after `bound`.
    pub fn wait_for(&self, bound: Duration, mut check: impl FnMut(&Topology) -> bool) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if check(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

fn kill9(pid: i32) {
    if pid > 1 {
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            // keepalived outlives its agent by design: stop it by pid.
            if let Some(pid) = node.keepalived_pid() {
                kill9(pid);
            }
            if let Ok(pid) = std::fs::read_to_string(node.run_dir.join("keepalived-vrrp.pid"))
                && let Ok(pid) = pid.trim().parse()
            {
                kill9(pid);
            }
        }
        for child in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.client, &self.backend, &self.bridge]
            .into_iter()
            .chain(self.nodes.iter().map(|n| &n.ns))
        {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        if std::env::var_os("NAVK_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
