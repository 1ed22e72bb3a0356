//! Address groups end to end, through the server: a cluster-mode
//! `navigator-server` (SQLite, a RabbitMQ virtual host of its own) and two
//! real `navigator-agent`s in network namespaces A and B on one bridge, each
//! running keepalived for group `web`; a client namespace on the bridge and
//! a backend namespace behind the proxies (the topology of
//! `crates/agent/tests/common/ha.rs`, shared with the agent's own test).
//!
//! A forward created on the group's virtual address is carried by both
//! members and shows the group, its holder and two members carrying it;
//! the client reaches the backend through the virtual address. Proxy A's
//! death (link down, kill -9 of its agent and keepalived) moves the address
//! to B: the client reaches the backend again (the time is printed), the
//! forward keeps its address and port and shows B as holder. A returns and
//! the address stays on B (no flap). Run for the nft and the relay backend.
//!
//! The agents reach the broker through a Unix socket bridged by socat into
//! each proxy namespace's loopback, so no traffic leaves loopback or the
//! test's namespaces.

#[path = "../../../crates/agent/tests/common/ha.rs"]
#[allow(dead_code)]
mod ha;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use navigator_e2e::{Server, binary, eventually, parse_json};
use serde_json::Value;

/// The broker's port inside each proxy namespace (its own loopback).
const NS_BROKER_PORT: u16 = 5672;

/// How long a failover may take before the test fails: the default VRRP
/// timers move the address in about 3.5 s; this bound is generous for a
/// loaded CI machine. The measured time is printed.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

fn services() -> Option<(String, String)> {
    let get = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    match (
        get("NAVIGATOR_TEST_TRANSPORT_URL"),
        get("NAVIGATOR_TEST_RABBITMQ_DIR"),
    ) {
        (Some(url), Some(dir)) => Some((url, dir)),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "NAVIGATOR_TEST_TRANSPORT_URL is not set: the group test needs RabbitMQ (run scripts/test-all)"
            )
        }
        _ => {
            eprintln!(
                "\n*** skipped: NAVIGATOR_TEST_TRANSPORT_URL is not set; the group test needs RabbitMQ ***\n"
            );
            None
        }
    }
}

fn rabbitmq(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq");
    let out = Command::new(script)
        .args(args)
        .output()
        .expect("scripts/rabbitmq");
    assert!(
        out.status.success(),
        "scripts/rabbitmq {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A vhost of this test's own, deleted at the end, and the processes that
/// bridge the broker into the namespaces, killed by pid.
struct Broker {
    dir: String,
    vhost: String,
    bridges: Vec<Child>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        for child in &mut self.bridges {
            let _ = child.kill();
            let _ = child.wait();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq");
        let _ = Command::new(script)
            .args(["ctl", &self.dir, "delete_vhost", &self.vhost])
            .output();
    }
}

/// `rabbit://user:password@host:port/vhost` → (user:password, host:port).
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("rabbit://").expect("a rabbit:// URL");
    let (credentials, rest) = rest.split_once('@').expect("credentials in the URL");
    let server = rest.split(['/', '?']).next().unwrap_or(rest);
    (credentials.to_owned(), server.to_owned())
}

fn spawn(argv: &[&str]) -> Child {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
}

fn node_config(
    topo: &ha::Topology,
    i: usize,
    backend: &str,
    transport_url: &str,
) -> std::path::PathBuf {
    let node = &topo.nodes[i];
    let peer = &topo.nodes[1 - i];
    let text = format!(
        "[DEFAULT]\nhost = {name}\ntransport_url = {transport_url}\n\
         [agent]\nbackend = {backend}\nexternal_addresses = {ext}\nport_range = 30100-30199\n\
         report_interval = 1\nnft_table = navk\n\
         [vrrp]\nrun_dir = {run}\nagent_check_delay = 3\n\
         [vrrp:web]\nvirtual_addresses = {vip}/24\ninterface = eth0\nvirtual_router_id = 78\n\
         priority = {priority}\nadvert_int = 1\nunicast_src_ip = {ext}\nunicast_peers = {peer}\n",
        name = node.name,
        ext = node.ext,
        run = node.run_dir.display(),
        priority = node.priority,
        peer = peer.ext,
        vip = ha::VIRTUAL,
    );
    let path = node.config_path();
    std::fs::write(&path, text).expect("node configuration");
    path
}

/// The group as `proxy show group:web` shows it (`null` until registered).
fn group_of(server: &Server) -> Value {
    let out = server.cli(&["proxy", "show", "group:web", "-f", "json"]);
    if !out.success() {
        return Value::Null;
    }
    parse_json(&out.stdout)
        .get("group")
        .cloned()
        .unwrap_or(Value::Null)
}

fn journey(backend: &str) {
    let test = format!("groups_{backend}");
    if !ha::privileged(&test) {
        return;
    }
    let Some((transport_url, broker_dir)) = services() else {
        return;
    };
    let mut topo = ha::Topology::new();
    let dir = tempfile::Builder::new()
        .prefix("navigator-e2e-groups-")
        .tempdir()
        .expect("temp dir");
    let vhost = format!("nav_groups_{}_{backend}", std::process::id());
    rabbitmq(&["ctl", &broker_dir, "add_vhost", &vhost]);
    rabbitmq(&[
        "ctl",
        &broker_dir,
        "set_permissions",
        "-p",
        &vhost,
        "navigator",
        ".*",
        ".*",
        ".*",
    ]);
    let mut broker = Broker {
        dir: broker_dir,
        vhost: vhost.clone(),
        bridges: Vec::new(),
    };
    let (credentials, server_at) = split_url(&transport_url);
    let socket = dir.path().join("broker.sock");
    let socket = socket.to_str().expect("UTF-8 path");
    broker.bridges.push(spawn(&[
        "socat",
        &format!("UNIX-LISTEN:{socket},fork"),
        &format!("TCP:{server_at}"),
    ]));
    for node in &topo.nodes {
        broker.bridges.push(spawn(&[
            "ip",
            "netns",
            "exec",
            &node.ns,
            "socat",
            &format!("TCP-LISTEN:{NS_BROKER_PORT},bind=127.0.0.1,fork,reuseaddr"),
            &format!("UNIX-CONNECT:{socket}"),
        ]));
    }
    let server_url = format!("rabbit://{credentials}@{server_at}/{vhost}");
    let agent_url = format!("rabbit://{credentials}@127.0.0.1:{NS_BROKER_PORT}/{vhost}");

    let server_conf = dir.path().join("server.conf");
    std::fs::write(
        &server_conf,
        format!(
            "[DEFAULT]\nhost = groups-server\ntransport_url = {server_url}\n\
             [database]\nconnection = sqlite:///{}\n\
             [agent]\nreport_interval = 1\nagent_down_time = 4\nrpc_timeout = 5\n",
            dir.path().join("nav.db").display()
        ),
    )
    .expect("server configuration");
    let synced = Command::new(binary("navigator-server"))
        .args(["--config-file"])
        .arg(&server_conf)
        .args(["db", "sync"])
        .output()
        .expect("db sync");
    assert!(synced.status.success(), "db sync: {synced:?}");
    let server = Server::start_cluster(&server_conf);

    let agent = binary("navigator-agent");
    for i in 0..2 {
        let conf = node_config(&topo, i, backend, &agent_url);
        topo.start(i, &agent, &["--config-file", conf.to_str().expect("UTF-8")]);
    }
    // Both members report the group; A (priority 150) holds it.
    eventually(
        "group web registered with A holding it",
        Duration::from_secs(30),
        || {
            let group = group_of(&server);
            let members = group["members"].as_array().map_or(0, Vec::len);
            if group["holder"] == "a" && members == 2 {
                Ok(())
            } else {
                Err(format!("{group}\nA:\n{}\nB:\n{}", topo.log(0), topo.log(1)))
            }
        },
    );
    let forward = server.create_forward(&[
        "--protocol",
        "tcp",
        "--external-address",
        ha::VIRTUAL,
        "--external-port",
        &ha::FORWARD_PORT.to_string(),
        "--internal-ip-address",
        ha::BACKEND,
        "--internal-port",
        &ha::BACKEND_PORT.to_string(),
    ]);
    let id = forward["id"].as_str().expect("id").to_owned();
    assert_eq!(forward["proxy"], "group:web", "{forward}");
    eventually(
        "the forward ACTIVE on both members",
        Duration::from_secs(20),
        || {
            let shown = server.show_forward(&id);
            let group = &shown["group"];
            if shown["status"] == "ACTIVE" && group["holder"] == "a" && group["carrying"] == 2 {
                Ok(())
            } else {
                Err(shown.to_string())
            }
        },
    );
    assert!(
        topo.wait_for(Duration::from_secs(10), |t| t
            .client_connects(Duration::from_secs(1))),
        "the client does not reach the backend through {}:{}\nA:\n{}",
        ha::VIRTUAL,
        ha::FORWARD_PORT,
        topo.log(0)
    );

    // A dies.
    let died = Instant::now();
    topo.kill(0);
    let took = topo
        .first_success_within(died, FAILOVER_BOUND)
        .unwrap_or_else(|| {
            panic!(
                "no connection through B within {FAILOVER_BOUND:?}\nB:\n{}",
                topo.log(1)
            )
        });
    eprintln!("{test}: proxy A died; the first new connection through B succeeded after {took:?}");
    eventually(
        "B shown as holder, the forward unchanged",
        Duration::from_secs(20),
        || {
            let shown = server.show_forward(&id);
            let same = shown["external_address"] == ha::VIRTUAL
                && shown["external_port"] == ha::FORWARD_PORT
                && shown["proxy"] == "group:web";
            assert!(same, "a group's forward must keep its address: {shown}");
            if shown["status"] == "ACTIVE" && shown["group"]["holder"] == "b" {
                Ok(())
            } else {
                Err(shown.to_string())
            }
        },
    );

    // A returns: the address stays on B (nopreempt), both carry it again.
    topo.link_up(0);
    let conf = topo.nodes[0].config_path();
    topo.start(0, &agent, &["--config-file", conf.to_str().expect("UTF-8")]);
    eventually(
        "A back, carrying the forward",
        Duration::from_secs(30),
        || {
            let shown = server.show_forward(&id);
            if shown["group"]["members"] == 2 && shown["group"]["carrying"] == 2 {
                Ok(())
            } else {
                Err(format!("{shown}\nA:\n{}", topo.log(0)))
            }
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    let group = group_of(&server);
    assert_eq!(group["holder"], "b", "the address flapped back: {group}");
    assert_eq!(group["split_brain"], false, "{group}");
    assert!(topo.client_connects(Duration::from_secs(2)));
    drop(server);
    drop(topo);
    drop(broker);
}

#[test]
fn a_group_forward_survives_its_holders_death_nft() {
    journey("nft");
}

#[test]
fn a_group_forward_survives_its_holders_death_relay() {
    journey("relay");
}
