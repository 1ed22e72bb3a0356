//! End-to-end through the product, per backend (relay, nft, iptables,
//! socat): the real `navigator-server --all-in-one` runs *inside* the proxy
//! namespace of the two-NIC topology (`tests/support`) and is driven only by
//! the real `navigator` CLI, also run inside that namespace. For TCP and
//! UDP, IPv4 and IPv6: create a forward to service A in the backend
//! namespace → ACTIVE → a client in the client namespace reaches A through
//! the proxy's external address → `forward set` to B → B answers → delete →
//! no answer.
//!
//! The binaries are found next to the test executable (`target/<profile>/`),
//! like `tests/e2e`: run `cargo build --workspace --bins` first. Needs root:
//! runs when NAVIGATOR_PRIVILEGED_TESTS=1, and then fails loudly when a
//! binary, a tool or the privilege is missing; without it each test prints a
//! "skipped" line.

mod support;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// How long the server may take to print its API address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `target/<profile>/NAME`, where `cargo build --workspace --bins` puts it;
/// panics (never skips) when it is missing.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has no directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: the product tests drive the real binaries; run `cargo build --workspace --bins` \
         (same profile and CARGO_TARGET_DIR as the tests) first",
        path.display()
    );
    path
}

/// A `navigator-server --all-in-one` running in the proxy namespace, stopped
/// by PID (SIGTERM, then SIGKILL) on drop.
struct Product {
    proxy: String,
    child: Child,
    url: String,
    /// Data directory, config file and the server's log.
    dir: tempfile::TempDir,
}

impl Product {
    fn start(topo: &Topo, backend: &str) -> Product {
        let dir = tempfile::Builder::new()
            .prefix(&format!("navigator-product-{backend}-"))
            .tempdir()
            .expect("cannot create a temp dir");
        let config = format!(
            "[DEFAULT]\nhost = product-{backend}\n\n[agent]\nbackend = {backend}\n\
             external_addresses = {EXT4},{EXT6}\nport_range = 20000-20099\nreport_interval = 1\n\n\
             [forwards]\nallow_loopback_targets = false\n"
        );
        let config_file = dir.path().join("navigator.conf");
        std::fs::write(&config_file, config).expect("cannot write the config file");
        let log = std::fs::File::create(dir.path().join("server.stderr")).expect("log file");
        // `ip netns exec` execs the server: the PID we get is the server's.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &topo.proxy])
            .arg(binary("navigator-server"))
            .arg("--all-in-one")
            .arg("--config-file")
            .arg(&config_file)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--bind-port", "0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("cannot start navigator-server");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the server
                    // never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut product = Product {
            proxy: topo.proxy.clone(),
            child,
            url: String::new(),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let url = line
                        .trim_start()
                        .strip_prefix("API")
                        .and_then(|rest| rest.split_whitespace().next())
                        .filter(|u| u.starts_with("http://"));
                    if let Some(url) = url {
                        product.url = url.to_owned();
                        return product;
                    }
                }
                Err(_) => panic!(
                    "navigator-server ({backend}) did not print its API address\n{}",
                    product.logs()
                ),
            }
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.stderr")).unwrap_or_default()
    }

    /// `navigator --os-endpoint URL ARGS` inside the proxy namespace.
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.proxy, "timeout", "30"])
            .arg(binary("navigator"))
            .args(["--os-endpoint", &self.url])
            .args(args)
            .env_remove("NAVIGATOR_ENDPOINT")
            .env_remove("OS_TOKEN")
            .env_remove("OS_PROJECT_ID")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run navigator");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.cli(args);
        assert!(
            ok,
            "`navigator {}` failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
            args.join(" "),
            self.logs()
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-f", "json"]);
        let text = self.cli_ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
    }

    /// Polls `forward show` until the forward is ACTIVE with `target`.
    fn wait_active(&self, id: &str, target: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let shown = self.json(&["forward", "show", id]);
            if field(&shown, "status") == "ACTIVE" && field(&shown, "internal_ip_address") == target
            {
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "forward {id} not ACTIVE with target {target}: {shown}\n--- server log ---\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Product {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("navigator-server log:\n{}", self.logs());
        }
    }
}

fn field(value: &Value, name: &str) -> String {
    match &value[name] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Proves the configured backend, not another, carries `port`: a kernel
/// backend leaves no socket open and has the port in its ruleset; relay and
/// socat listen on it with their own process.
fn assert_carried_by(topo: &Topo, backend: &str, proto: &str, port: u16) {
    let flag = if proto == "tcp" { "-Hlntp" } else { "-Hlnup" };
    let sockets = topo.ns(&topo.proxy, &["ss", flag]);
    let listening: Vec<&str> = sockets
        .lines()
        .filter(|l| l.contains(&format!(":{port} ")))
        .collect();
    let port_text = port.to_string();
    match backend {
        "nft" => {
            let table = topo.ns(&topo.proxy, &["nft", "list", "table", "inet", "navigator"]);
            assert!(listening.is_empty(), "nft: {listening:?}");
            assert!(table.contains(&format!("{proto} . {port}")), "{table}");
        }
        "iptables" => {
            let rules = topo.ns(&topo.proxy, &["iptables-save", "-t", "nat"])
                + &topo.ns(&topo.proxy, &["ip6tables-save", "-t", "nat"]);
            assert!(listening.is_empty(), "iptables: {listening:?}");
            assert!(
                rules.contains("NAVIGATOR-PREROUTING") && rules.contains(&port_text),
                "{rules}"
            );
        }
        "relay" => assert!(
            listening.iter().any(|l| l.contains("navigator-serv")),
            "relay: {sockets}"
        ),
        _ => assert!(
            listening.iter().any(|l| l.contains("socat")),
            "socat: {sockets}"
        ),
    }
}

/// The whole journey for one backend.
fn journey(backend: &str) {
    let mut topo = Topo::new(false);
    topo.start_services();
    let product = Product::start(&topo, backend);
    let service = SERVICE_PORT.to_string();
    for (proto, a, b, ext) in [
        ("tcp", A4, B4, EXT4),
        ("udp", A4, B4, EXT4),
        ("tcp", A6, B6, EXT6),
        ("udp", A6, B6, EXT6),
    ] {
        let what = format!("{backend} {proto} {ext}");
        let created = product.json(&[
            "forward",
            "create",
            "--protocol",
            proto,
            "--internal-ip-address",
            a,
            "--internal-port",
            &service,
        ]);
        let id = field(&created, "id");
        let shown = product.wait_active(&id, a);
        assert_eq!(field(&shown, "external_address"), ext, "{what}: {shown}");
        let port: u16 = field(&shown, "external_port")
            .parse()
            .unwrap_or_else(|_| panic!("{what}: no external_port in {shown}"));
        assert_carried_by(&topo, backend, proto, port);
        let answer = topo.expect(proto, ext, port, "A");
        if ext == EXT4 {
            // Every backend reaches the target from the proxy's own address
            // on the internal network: the backend has no route to the client.
            assert!(answer.contains(PROXY_INT4), "{what}: {answer:?}");
        }

        product.cli_ok(&["forward", "set", &id, "--internal-ip-address", b]);
        let shown = product.wait_active(&id, b);
        assert_eq!(
            field(&shown, "external_port"),
            port.to_string(),
            "{what}: retarget kept the port"
        );
        topo.expect(proto, ext, port, "B");

        product.cli_ok(&["forward", "delete", &id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = topo.request(proto, ext, port);
            if answer.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still answered after delete: {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let left = product.cli_ok(&["forward", "list", "-f", "value", "-c", "id"]);
    assert!(left.trim().is_empty(), "{backend}: forwards left: {left}");
}

#[test]
fn product_relay_backend_in_proxy_namespace() {
    if privileged("product_relay_backend_in_proxy_namespace") {
        journey("relay");
    }
}

#[test]
fn product_nft_backend_in_proxy_namespace() {
    if privileged("product_nft_backend_in_proxy_namespace") {
        journey("nft");
    }
}

#[test]
fn product_iptables_backend_in_proxy_namespace() {
    if privileged("product_iptables_backend_in_proxy_namespace") {
        journey("iptables");
    }
}

#[test]
fn product_socat_backend_in_proxy_namespace() {
    if privileged("product_socat_backend_in_proxy_namespace") {
        journey("socat");
    }
}
