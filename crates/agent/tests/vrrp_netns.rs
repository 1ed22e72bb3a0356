//! Address-group failover in network namespaces, with the real keepalived:
//! two proxy nodes A and B (each the real agent's keepalived supervision,
//! holder reporting and data plane, `common::node`) share a virtual
//! address; a client connects to a forward on it and reaches a backend.
//! Checked for the nft and the relay backend: one holder; the standby
//! already carries the forward; the holder's death (link down and kill -9
//! of its agent and keepalived) moves the address to the standby, through
//! which the client gets in again within a generous bound (the time is
//! printed; `bench/ha/failover.sh` measures it); the dead node returning
//! does not take the address back; and `AgentState.groups` says who holds
//! it.
//!
//! Needs root: runs when NAVIGATOR_PRIVILEGED_TESTS=1 (panics under CI
//! without it), otherwise prints a `skipped:` line. The test binary is also
//! the nodes' program: run with `NAVK_NODE_CONFIG` set, its
//! `node_process` entry runs a node instead of a test.
//!
//! Environment for the benchmark: `NAVK_ADVERT_INT` (default 1).

mod common;

use std::time::{Duration, Instant};

use common::ha::{Topology, privileged};

/// A generous bound: VRRP's own detection is about 3 advertisements.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

/// The nodes' entry point (see the module's doc); a no-op as a test.
#[test]
fn node_process() {
    if std::env::var_os("NAVK_NODE_CONFIG").is_some() {
        common::node::node_main();
    }
}

fn failover(backend: &str) {
    let test = format!("vrrp_netns::failover_{backend}");
    if !privileged(&test) {
        return;
    }
    let advert_int = std::env::var("NAVK_ADVERT_INT").unwrap_or_else(|_| "1".into());
    let exe = std::env::current_exe().expect("test binary");
    let args = ["--exact", "node_process", "--nocapture", "--test-threads=1"];
    let mut topo = Topology::new();
    for i in 0..2 {
        topo.configure(i, backend, &advert_int);
        topo.start(i, &exe, &args);
    }
    let logs = |topo: &Topology| format!("--- A:\n{}\n--- B:\n{}", topo.log(0), topo.log(1));
    // One holder, and both carry the forward.
    let one_holder = topo.wait_for(
        Duration::from_secs(20),
        |t| matches!((t.holder(0), t.holder(1)), (Some(a), Some(b)) if a != b),
    );
    assert!(one_holder, "no single holder after 20 s\n{}", logs(&topo));
    let holder = if topo.holder(0) == Some(true) { 0 } else { 1 };
    let standby = 1 - holder;
    for i in 0..2 {
        let state = topo.state(i).expect("state");
        let status = &state["forwards"][0]["status"];
        assert_eq!(
            status,
            "ACTIVE",
            "node {i} does not carry the forward: {state}\n{}",
            logs(&topo)
        );
        assert!(
            state["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "groups")),
            "{state}"
        );
        assert_eq!(state["groups"][0]["keepalived"], "running", "{state}");
        assert_eq!(state["groups"][0]["virtual_router_id"], 77, "{state}");
    }
    assert!(
        topo.wait_for(Duration::from_secs(5), |t| t
            .client_connects(Duration::from_secs(1))),
        "the client does not reach the backend through the holder\n{}",
        logs(&topo)
    );
    // The holder dies.
    let died = Instant::now();
    topo.kill(holder);
    let took = topo.first_success_within(died, FAILOVER_BOUND);
    let Some(took) = took else {
        panic!(
            "no connection through the standby within {FAILOVER_BOUND:?}\n{}",
            logs(&topo)
        );
    };
    println!(
        "failover ({backend}, advert_int {advert_int}): first new connection through the standby {:.2} s after the holder's death",
        took.as_secs_f64()
    );
    assert!(
        topo.wait_for(Duration::from_secs(5), |t| t.holder(standby) == Some(true)),
        "the standby does not report itself holder\n{}",
        logs(&topo)
    );
    // The dead node returns: the address stays where it is.
    std::fs::remove_file(topo.nodes[holder].state_path()).expect("old state");
    topo.link_up(holder);
    topo.start(holder, &exe, &args);
    assert!(
        topo.wait_for(Duration::from_secs(10), |t| t.holder(holder).is_some()),
        "the returning node does not report\n{}",
        logs(&topo)
    );
    // Longer than a master-down interval: a preempting node would have
    // taken the address back by then.
    let settle = Duration::from_secs(6);
    std::thread::sleep(settle);
    assert_eq!(
        topo.holder(holder),
        Some(false),
        "the address flapped back\n{}",
        logs(&topo)
    );
    assert_eq!(topo.holder(standby), Some(true), "{}", logs(&topo));
    let returned = topo.state(holder).expect("state");
    assert_eq!(returned["forwards"][0]["status"], "ACTIVE", "{returned}");
    assert!(
        topo.client_connects(Duration::from_secs(2)),
        "{}",
        logs(&topo)
    );
}

/// An agent restart (kill -9 of the agent alone, started again within
/// `agent_check_delay`) moves nothing: the new agent adopts the running
/// keepalived, and reloads it (SIGHUP) only when the configuration changed. An agent gone for longer makes its node give the address up
/// (keepalived's agent check), although keepalived still runs.
#[test]
fn agent_restart_keeps_the_address_and_a_gone_agent_gives_it_up() {
    if !privileged("vrrp_netns::agent_restart_keeps_the_address_and_a_gone_agent_gives_it_up") {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let args = ["--exact", "node_process", "--nocapture", "--test-threads=1"];
    let mut topo = Topology::new();
    for i in 0..2 {
        topo.configure(i, "relay", "1");
        topo.start(i, &exe, &args);
    }
    let logs = |topo: &Topology| format!("--- A:\n{}\n--- B:\n{}", topo.log(0), topo.log(1));
    assert!(
        topo.wait_for(Duration::from_secs(20), |t| {
            matches!((t.holder(0), t.holder(1)), (Some(a), Some(b)) if a != b)
        }),
        "no single holder\n{}",
        logs(&topo)
    );
    let holder = if topo.holder(0) == Some(true) { 0 } else { 1 };
    let keepalived = topo.nodes[holder].keepalived_pid().expect("keepalived pid");
    topo.kill_agent(holder);
    std::fs::remove_file(topo.nodes[holder].state_path()).expect("old state");
    topo.start(holder, &exe, &args);
    assert!(
        topo.wait_for(Duration::from_secs(10), |t| t.holder(holder).is_some()),
        "the restarted agent does not report\n{}",
        logs(&topo)
    );
    // Past agent_check_delay (3 s): had the check not seen the new agent,
    // the address would have moved by now.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        topo.holder(holder),
        Some(true),
        "the restart moved the address\n{}",
        logs(&topo)
    );
    assert_eq!(
        topo.nodes[holder].keepalived_pid(),
        Some(keepalived),
        "keepalived was not adopted"
    );
    let log = topo.log(holder);
    assert!(
        log.contains("adopted the running keepalived; configuration unchanged"),
        "{log}"
    );
    let state = topo.state(holder).expect("state");
    assert_eq!(state["groups"][0]["keepalived"], "running", "{state}");
    // A restart with a changed configuration reloads the same keepalived.
    topo.nodes[holder].priority += 10;
    topo.configure(holder, "relay", "1");
    topo.kill_agent(holder);
    std::fs::remove_file(topo.nodes[holder].state_path()).expect("old state");
    topo.start(holder, &exe, &args);
    assert!(
        topo.wait_for(Duration::from_secs(10), |t| t.holder(holder).is_some()),
        "the restarted agent does not report\n{}",
        logs(&topo)
    );
    // keepalived's own "Reloading" reaches the agent's log through the file
    // it follows, some time after the SIGHUP: waited for, not slept on.
    topo.wait_for(Duration::from_secs(10), |t| {
        t.log(holder).contains("Reloading")
    });
    let log = topo.log(holder);
    assert!(
        log.contains("its configuration changed: reloading it (SIGHUP)"),
        "{log}"
    );
    assert!(
        log.contains("Reloading"),
        "keepalived did not reload\n{log}"
    );
    assert_eq!(
        topo.nodes[holder].keepalived_pid(),
        Some(keepalived),
        "keepalived was replaced"
    );
    assert_eq!(
        topo.holder(holder),
        Some(true),
        "the reload moved the address\n{}",
        logs(&topo)
    );
    // Now the agent goes for good: keepalived stays, the address goes.
    let gone = Instant::now();
    topo.kill_agent(holder);
    assert!(
        topo.wait_for(Duration::from_secs(15), |t| t.holder(1 - holder)
            == Some(true)),
        "the standby did not take the address from a node without agent\n{}",
        logs(&topo)
    );
    println!(
        "a node whose agent is gone gave its address up after {:.2} s (agent_check_delay 3 s)",
        gone.elapsed().as_secs_f64()
    );
    assert!(
        topo.client_connects(Duration::from_secs(2)),
        "{}",
        logs(&topo)
    );
}

#[test]
fn failover_nft() {
    failover("nft");
}

#[test]
fn failover_relay() {
    failover("relay");
}
