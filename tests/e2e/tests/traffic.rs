//! End-to-end journeys with real traffic: the real `navigator-server
//! --all-in-one` driven only by the real `navigator` CLI, forwarding to TCP
//! and UDP echo servers on loopback that tag their replies ("A:", "B:") so
//! each test can tell which target answered.
//!
//! Every journey runs twice (`NAME::noauth`, `NAME::keystone`): with
//! `auth_strategy = noauth`, and with `auth_strategy = keystone` where the CLI
//! logs in to a real Keystone as a member of a project made for the test.

use std::net::TcpListener;
use std::time::Duration;

use navigator_e2e::{
    Auth, Env, TcpEcho, UdpEcho, assert_tcp_reply, assert_udp_reply, both_auth_modes,
    claim_port_range, eventually, field, ipv6_available, tcp_refused, tcp_round_trip,
    udp_round_trip, udp_silent,
};
use serde_json::Value;

/// The external address and port of a forward, checked to lie in the test's
/// port range.
fn external(env: &Env, forward: &Value) -> (String, u16) {
    let port = forward["external_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no external_port in {forward}"));
    let (first, last) = env.port_range;
    assert!(
        (first..=last).contains(&port),
        "external port {port} outside {first}-{last}"
    );
    (field(forward, "external_address"), port)
}

fn assert_active(forward: &Value) {
    assert_eq!(
        field(forward, "status"),
        "ACTIVE",
        "forward not ACTIVE: {forward}"
    );
}

fn tcp_forward_create_retarget_delete(auth: Auth) {
    let env = Env::new("tcp", &auth, "");
    let server = env.start();
    let a = TcpEcho::start("127.0.0.1", "A:");
    let b = TcpEcho::start("127.0.0.1", "B:");

    let created =
        server.create_loopback_forward("tcp", &a.port(), &["--description", "tcp journey"]);
    assert_active(&created);
    let id = field(&created, "id");
    // The project comes from the token (or noauth's default), never the body.
    assert_eq!(
        field(&created, "project_id"),
        auth.project_id(),
        "{created}"
    );
    let (ip, port) = external(&env, &created);
    assert_eq!(ip, "127.0.0.1");
    assert_eq!(field(&created, "internal_port"), a.port());
    // ACTIVE means the proxy listens: the very first connection must pass.
    assert_eq!(tcp_round_trip(&ip, port, "hello").as_deref(), Ok("A:hello"));

    server.cli_ok(&["forward", "set", &id, "--internal-port", &b.port()]);
    let shown = server.show_forward(&id);
    assert_active(&shown);
    assert_eq!(field(&shown, "internal_port"), b.port());
    assert_eq!(
        shown["external_port"], created["external_port"],
        "retargeting kept the external port"
    );
    // New connections reach the new target as soon as `set` returns.
    assert_eq!(tcp_round_trip(&ip, port, "again").as_deref(), Ok("B:again"));
    assert_tcp_reply(&ip, port, "and again", "B:and again");

    server.cli_ok(&["forward", "delete", &id]);
    eventually(
        "the deleted forward's port to refuse connections",
        Duration::from_secs(5),
        || tcp_refused(&ip, port),
    );
    let show = server.cli(&["forward", "show", &id]);
    assert!(!show.success(), "show after delete: {show}");
    assert!(
        show.stderr.contains("404") && show.stderr.contains(&id),
        "{show}"
    );
    assert_eq!(server.forward_count(), 0);
}

fn udp_forward_create_retarget_delete(auth: Auth) {
    let env = Env::new("udp", &auth, "");
    let server = env.start();
    let a = UdpEcho::start("127.0.0.1", "A:");
    let b = UdpEcho::start("127.0.0.1", "B:");

    let created = server.create_loopback_forward("udp", &a.port(), &[]);
    assert_active(&created);
    assert_eq!(field(&created, "protocol"), "udp");
    let id = field(&created, "id");
    let (ip, port) = external(&env, &created);
    assert_eq!(udp_round_trip(&ip, port, "ping").as_deref(), Ok("A:ping"));

    server.cli_ok(&["forward", "set", &id, "--internal-port", &b.port()]);
    let shown = server.show_forward(&id);
    assert_active(&shown);
    assert_eq!(field(&shown, "internal_port"), b.port());
    // A new client (new source port) reaches the new target.
    assert_eq!(udp_round_trip(&ip, port, "pong").as_deref(), Ok("B:pong"));

    server.cli_ok(&["forward", "delete", &id]);
    eventually(
        "the deleted UDP forward to stop answering",
        Duration::from_secs(5),
        || udp_silent(&ip, port),
    );
    assert_eq!(server.forward_count(), 0);
}

fn forwards_survive_a_server_restart(auth: Auth) {
    let env = Env::new("restart", &auth, "");
    let tcp_echo = TcpEcho::start("127.0.0.1", "T:");
    let udp_echo = UdpEcho::start("127.0.0.1", "U:");
    let mut server = env.start();
    let tcp = server.create_loopback_forward("tcp", &tcp_echo.port(), &[]);
    let udp = server.create_loopback_forward("udp", &udp_echo.port(), &[]);
    assert_active(&tcp);
    assert_active(&udp);
    let (tcp_ip, tcp_port) = external(&env, &tcp);
    let (udp_ip, udp_port) = external(&env, &udp);
    assert_tcp_reply(&tcp_ip, tcp_port, "before", "T:before");
    assert_udp_reply(&udp_ip, udp_port, "before", "U:before");

    let status = server.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM should stop the server cleanly, got {status:?}\n{}",
        server.logs()
    );
    eventually(
        "the stopped server's forward to go away",
        Duration::from_secs(5),
        || tcp_refused(&tcp_ip, tcp_port),
    );

    let server = env.start();
    let mut listed = server.forward_ids(&[]);
    listed.sort();
    let mut expected = vec![field(&tcp, "id"), field(&udp, "id")];
    expected.sort();
    assert_eq!(listed, expected, "forwards listed after the restart");
    for before in [&tcp, &udp] {
        let after = server.show_forward(&field(before, "id"));
        assert_active(&after);
        assert_eq!(after["external_port"], before["external_port"]);
        assert_eq!(after["external_address"], before["external_address"]);
    }
    // The server restores forwards before it serves, so traffic passes at once.
    assert_eq!(
        tcp_round_trip(&tcp_ip, tcp_port, "after").as_deref(),
        Ok("T:after")
    );
    assert_udp_reply(&udp_ip, udp_port, "after", "U:after");
}

fn ipv6_tcp_forward(auth: Auth) {
    if !ipv6_available() {
        eprintln!(
            "\n!!!!!!!! skipped: no IPv6 loopback (cannot bind [::1]) — ipv6_tcp_forward did NOT run !!!!!!!!\n"
        );
        return;
    }
    let env = Env::new("ipv6", &auth, "");
    let server = env.start();
    let echo = TcpEcho::start("::1", "6:");
    let created = server.create_forward(&[
        "--protocol",
        "tcp",
        "--internal-ip-address",
        "::1",
        "--internal-port",
        &echo.port(),
        "--external-address",
        "::1",
    ]);
    assert_active(&created);
    let (ip, port) = external(&env, &created);
    assert_eq!(ip, "::1");
    assert_eq!(field(&created, "internal_ip_address"), "::1");
    assert_eq!(
        tcp_round_trip(&ip, port, "hello6").as_deref(),
        Ok("6:hello6")
    );
    // Nothing listens on the IPv4 side of that port.
    tcp_refused("127.0.0.1", port).unwrap();
}

fn external_port_busy_on_host_is_an_error_with_reason(auth: Auth) {
    // A fast re-sync, to see the forward repaired once the port is free.
    let env = Env::with_agent_options("busy", &auth, "resync_interval = 1", "");
    let server = env.start();
    let echo = TcpEcho::start("127.0.0.1", "A:");
    let busy_port = env.port_range.1;
    let squatter = TcpListener::bind(("127.0.0.1", busy_port)).expect("occupy a port of the range");

    let created = server.create_loopback_forward(
        "tcp",
        &echo.port(),
        &["--external-port", &busy_port.to_string()],
    );
    assert_eq!(field(&created, "status"), "ERROR", "{created}");
    assert!(
        field(&created, "status_reason").contains("already in use"),
        "{created}"
    );
    let shown = server.show_forward(&field(&created, "id"));
    assert_eq!(field(&shown, "status"), "ERROR", "{shown}");
    assert!(
        field(&shown, "status_reason").contains("already in use"),
        "{shown}"
    );
    let errors = server.forward_ids(&["--status", "ERROR"]);
    assert_eq!(errors, [field(&created, "id")]);
    tcp_refused("127.0.0.1", busy_port).expect_err("the squatter still holds the port");

    // Once the port is free, the periodic re-sync brings the forward up.
    drop(squatter);
    let id = field(&created, "id");
    eventually(
        "the forward to become ACTIVE after the port was freed",
        Duration::from_secs(10),
        || {
            let shown = server.show_forward(&id);
            if field(&shown, "status") == "ACTIVE" {
                Ok(())
            } else {
                Err(shown.to_string())
            }
        },
    );
    assert_tcp_reply("127.0.0.1", busy_port, "repaired", "A:repaired");
}

/// `"N:M"` of a range forward, checked to lie in the test's port range.
fn external_range(env: &Env, forward: &Value) -> (String, u16, u16) {
    let range = field(forward, "external_port_range");
    let (first, last) = range
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .unwrap_or_else(|| panic!("no external_port_range N:M in {forward}"));
    let (pool_first, pool_last) = env.port_range;
    assert!(
        pool_first <= first && last <= pool_last,
        "external range {range} outside {pool_first}-{pool_last}"
    );
    (field(forward, "external_address"), first, last)
}

fn tcp_and_udp_port_ranges_carry_every_port_and_close_them_all_on_delete(auth: Auth) {
    let env = Env::new("ranges", &auth, "");
    let server = env.start();
    // Targets on consecutive ports, each tagged with its offset, so a reply
    // shows that external port N + i reached internal port M + i.
    let (targets, _) = claim_port_range();
    let tags = ["P0:", "P1:", "P2:"];
    let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _tcp_echoes: Vec<TcpEcho> = (0..3u16)
        .map(|i| TcpEcho::start_at(loopback(targets + i), tags[usize::from(i)]))
        .collect();
    let one_udp = UdpEcho::start("127.0.0.1", "U:");

    // TCP: only the internal range; the server allocates a block of 3.
    let tcp = server.create_forward(&[
        "--protocol",
        "tcp",
        "--internal-ip-address",
        "127.0.0.1",
        "--internal-port-range",
        &format!("{targets}:{}", targets + 2),
    ]);
    assert_active(&tcp);
    let (ip, first, last) = external_range(&env, &tcp);
    assert_eq!(last - first, 2, "{tcp}");
    assert_eq!(
        field(&tcp, "internal_port_range"),
        format!("{targets}:{}", targets + 2)
    );
    for i in 0..3u16 {
        assert_eq!(
            tcp_round_trip(&ip, first + i, "hi").as_deref(),
            Ok(format!("P{i}:hi").as_str()),
            "external port {} keeps its offset",
            first + i
        );
    }

    // UDP: an explicit external range, every port to one internal port (N:1).
    let (pool_first, _) = env.port_range;
    let udp_first = pool_first + 100;
    let udp = server.create_forward(&[
        "--protocol",
        "udp",
        "--internal-ip-address",
        "127.0.0.1",
        "--internal-port-range",
        &format!("{0}:{0}", one_udp.port()),
        "--external-port-range",
        &format!("{udp_first}:{}", udp_first + 3),
    ]);
    assert_active(&udp);
    for port in udp_first..=udp_first + 3 {
        assert_eq!(
            udp_round_trip(&ip, port, "ping").as_deref(),
            Ok("U:ping"),
            "udp port {port}"
        );
    }
    // The list shows the ranges.
    let list = server.cli_ok(&["forward", "list", "--long", "-f", "json"]);
    assert!(
        list.contains(&format!("{udp_first}:{}", udp_first + 3)),
        "{list}"
    );

    // A port inside the TCP range is taken: the CLI says who holds it.
    let clash = server.cli(&[
        "forward",
        "create",
        "--protocol",
        "tcp",
        "--internal-ip-address",
        "127.0.0.1",
        "--internal-port",
        &targets.to_string(),
        "--external-port",
        &(first + 1).to_string(),
    ]);
    assert!(!clash.success(), "{clash}");
    assert!(
        clash.stderr.contains("409") && clash.stderr.contains(&field(&tcp, "id")),
        "{clash}"
    );

    server.cli_ok(&["forward", "delete", &field(&tcp, "id"), &field(&udp, "id")]);
    for port in first..=last {
        eventually(
            "every port of the deleted TCP range to refuse connections",
            Duration::from_secs(5),
            || tcp_refused(&ip, port),
        );
    }
    for port in udp_first..=udp_first + 3 {
        eventually(
            "every port of the deleted UDP range to stop answering",
            Duration::from_secs(5),
            || udp_silent(&ip, port),
        );
    }
    assert_eq!(server.forward_count(), 0);
}

/// The traffic controls through the real CLI: set on create, shown, added
/// to and cleared by `forward set` openstackclient-style, and refused with
/// the field named where the forward cannot have them. Traffic from
/// 127.0.0.1 stays allowed throughout.
fn traffic_controls_through_the_cli(auth: Auth) {
    let env = Env::new("controls", &auth, "");
    let server = env.start();
    let a = TcpEcho::start("127.0.0.1", "A:");
    let created = server.create_loopback_forward(
        "tcp",
        &a.port(),
        &[
            "--allowed-cidr",
            "127.0.0.0/8",
            "--allowed-cidr",
            "127.0.0.1",
            "--max-connections",
            "10",
        ],
    );
    assert_active(&created);
    assert_eq!(
        created["allowed_cidrs"],
        serde_json::json!(["127.0.0.0/8", "127.0.0.1/32"]),
        "{created}"
    );
    assert_eq!(created["max_connections"], 10, "{created}");
    assert_eq!(field(&created, "proxy_protocol"), "none");
    let id = field(&created, "id");
    let (ip, port) = external(&env, &created);
    assert_eq!(tcp_round_trip(&ip, port, "hi").as_deref(), Ok("A:hi"));

    server.cli_ok(&["forward", "set", &id, "--allowed-cidr", "192.0.2.0/24"]);
    let shown = server.show_forward(&id);
    assert_eq!(
        shown["allowed_cidrs"],
        serde_json::json!(["127.0.0.0/8", "127.0.0.1/32", "192.0.2.0/24"]),
        "--allowed-cidr adds to the list: {shown}"
    );
    server.cli_ok(&[
        "forward",
        "set",
        &id,
        "--no-allowed-cidr",
        "--no-max-connections",
    ]);
    let shown = server.show_forward(&id);
    assert_eq!(shown["allowed_cidrs"], serde_json::json!([]), "{shown}");
    assert_eq!(shown["max_connections"], Value::Null, "{shown}");
    assert_tcp_reply(&ip, port, "still", "A:still");

    let bad = server.cli(&["forward", "set", &id, "--allowed-cidr", "10.0.0.1/8"]);
    assert!(!bad.success(), "{bad}");
    assert!(
        bad.stderr.contains("allowed_cidrs") && bad.stderr.contains("did you mean 10.0.0.0/8?"),
        "{bad}"
    );
    let udp = UdpEcho::start("127.0.0.1", "U:");
    let refused = server.cli(&[
        "forward",
        "create",
        "--protocol",
        "udp",
        "--internal-ip-address",
        "127.0.0.1",
        "--internal-port",
        &udp.port(),
        "--proxy-protocol",
        "v2",
    ]);
    assert!(!refused.success(), "{refused}");
    assert!(
        refused.stderr.contains("400") && refused.stderr.contains("proxy_protocol"),
        "{refused}"
    );
    server.cli_ok(&["forward", "delete", &id]);
}

both_auth_modes!(
    traffic_controls_through_the_cli,
    tcp_forward_create_retarget_delete,
    udp_forward_create_retarget_delete,
    forwards_survive_a_server_restart,
    ipv6_tcp_forward,
    external_port_busy_on_host_is_an_error_with_reason,
    tcp_and_udp_port_ranges_carry_every_port_and_close_them_all_on_delete,
);
