//! Cluster mode end to end: one `navigator-server` on a real PostgreSQL and a
//! real RabbitMQ, two `navigator-agent`s with the relay backend on their own
//! loopback addresses, driven by the `navigator` CLI, with traffic through
//! every forward and an agent crash (SIGKILL) and restart.
//!
//! Needs `scripts/rabbitmq` and `scripts/databases` (their `DIR/env` export
//! `NAVIGATOR_TEST_TRANSPORT_URL` and `NAVIGATOR_TEST_POSTGRES_URL`); without
//! them the test fails under `CI` and prints a `skipped:` line otherwise.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use navigator_e2e::{
    AgentProcess, Server, TcpEcho, assert_tcp_reply, claim_port_range, eventually, field,
    parse_json, run_agent_to_exit, run_server_to_exit,
};
use serde_json::Value;
use sqlx::{AnyConnection, Connection, Executor};

/// The external addresses of the two agents: distinct loopback addresses, so
/// that both can use the same port range on one machine.
const ADDRESS_A: &str = "127.0.0.2";
const ADDRESS_B: &str = "127.0.0.3";

fn env_or_skip(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set: the cluster test needs {what} (run scripts/test-all)")
        }
        _ => {
            eprintln!(
                "\n*** skipped: {var} is not set; the cluster test needs {what} \
                 (`scripts/rabbitmq start DIR` and `scripts/databases start DIR`, then source DIR/env) ***\n"
            );
            None
        }
    }
}

/// A name no other run uses: queues on the shared broker and databases on
/// the shared server outlive a crashed test.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:x}", std::process::id())
}

/// A fresh PostgreSQL database for one test, dropped (with its connections)
/// when the test ends.
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    fn create(admin_url: &str) -> Database {
        let name = unique("nav_e2e_");
        block_on(async {
            let mut admin = AnyConnection::connect(admin_url)
                .await
                .unwrap_or_else(|e| panic!("cannot reach NAVIGATOR_TEST_POSTGRES_URL: {e}"));
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
            let _ = admin.close().await;
        });
        Database {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        block_on(async {
            match AnyConnection::connect(&self.admin_url).await {
                Ok(mut admin) => {
                    if let Err(e) = admin.execute(sqlx::AssertSqlSafe(sql)).await {
                        eprintln!("could not drop test database {}: {e}", self.name);
                    }
                    let _ = admin.close().await;
                }
                Err(e) => eprintln!("could not drop test database {}: {e}", self.name),
            }
        });
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    sqlx::any::install_default_drivers();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the database set-up")
        .block_on(future)
}

/// The URL naming database `name` on the server of `url`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").expect("URL with a scheme");
    let server = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{server}/{name}{query}")
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("cannot write a config file");
    path
}

/// `proxy list -f json`, as `(host, state, forward count)`.
fn proxies(server: &Server) -> Vec<(String, String, u64)> {
    let list = parse_json(&server.cli_ok(&["proxy", "list", "-f", "json"]));
    list.as_array()
        .unwrap_or_else(|| panic!("proxy list is not a JSON array: {list}"))
        .iter()
        .map(|p| {
            (
                field(p, "Host"),
                field(p, "State"),
                p["Forward Count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn wait_up(server: &Server, hosts: &[&str]) {
    eventually("both agents up", Duration::from_secs(30), || {
        let listed = proxies(server);
        let up = hosts.iter().all(|h| {
            listed
                .iter()
                .any(|(host, state, _)| host == h && state == "up")
        });
        if up {
            Ok(())
        } else {
            Err(format!("proxy list: {listed:?}"))
        }
    });
}

fn external_port(forward: &Value) -> u16 {
    forward["external_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no external_port in {forward}"))
}

#[test]
fn two_agents_share_forwards_and_a_restarted_agent_is_resynced() {
    let (Some(transport_url), Some(postgres_url)) = (
        env_or_skip("NAVIGATOR_TEST_TRANSPORT_URL", "RabbitMQ"),
        env_or_skip("NAVIGATOR_TEST_POSTGRES_URL", "PostgreSQL"),
    ) else {
        return;
    };
    let database = Database::create(&postgres_url);
    let dir = tempfile::Builder::new()
        .prefix("navigator-e2e-cluster-")
        .tempdir()
        .expect("temp dir");
    let (first, last) = claim_port_range();
    let run = unique("c");
    let host_a = format!("e2e-{run}-a");
    let host_b = format!("e2e-{run}-b");

    let server_conf = write(
        dir.path(),
        "server.conf",
        &format!(
            "[DEFAULT]\nhost = e2e-{run}-server\ntransport_url = {transport_url}\n\
             [database]\nconnection = {}\n\
             [forwards]\nallow_loopback_targets = true\n\
             [agent]\nreport_interval = 1\nrpc_timeout = 5\n",
            database.url
        ),
    );
    let agent_conf = |host: &str, address: &str| {
        write(
            dir.path(),
            &format!("{host}.conf"),
            &format!(
                "[DEFAULT]\nhost = {host}\ntransport_url = {transport_url}\n\
                 [agent]\nbackend = relay\nexternal_addresses = {address}\n\
                 port_range = {first}-{last}\nreport_interval = 1\n"
            ),
        )
    };
    let conf_a = agent_conf(&host_a, ADDRESS_A);
    let conf_b = agent_conf(&host_b, ADDRESS_B);

    // Cluster mode does not migrate a shared database by itself.
    let refused = run_server_to_exit(&[
        OsStr::new("--config-file"),
        server_conf.as_os_str(),
        OsStr::new("--bind-port"),
        OsStr::new("0"),
    ]);
    assert!(
        !refused.success() && refused.stderr.contains("navigator-server db sync"),
        "an unmigrated database must be refused, naming db sync:\n{refused}"
    );
    let synced = run_server_to_exit(&[
        OsStr::new("--config-file"),
        server_conf.as_os_str(),
        OsStr::new("db"),
        OsStr::new("sync"),
    ]);
    assert!(synced.success(), "db sync failed:\n{synced}");

    // --all-in-one and a rabbit:// transport contradict each other.
    let contradiction = run_server_to_exit(&[
        OsStr::new("--all-in-one"),
        OsStr::new("--config-file"),
        server_conf.as_os_str(),
    ]);
    assert_eq!(contradiction.code, Some(64), "{contradiction}");
    assert!(
        contradiction.stderr.contains("cluster mode"),
        "{contradiction}"
    );
    // An agent cannot use the in-process transport.
    let inproc = write(
        dir.path(),
        "inproc.conf",
        "[DEFAULT]\ntransport_url = inproc://\n",
    );
    let refused = run_agent_to_exit(&[OsStr::new("--config-file"), inproc.as_os_str()]);
    assert_eq!(refused.code, Some(64), "{refused}");
    assert!(
        refused.stderr.contains("[DEFAULT] transport_url")
            && refused.stderr.contains("inproc.conf"),
        "{refused}"
    );

    let mut server = Server::start_cluster(&server_conf);
    let mut agent_a = AgentProcess::start(&conf_a, &host_a);
    let mut agent_b = AgentProcess::start(&conf_b, &host_b);
    wait_up(&server, &[&host_a, &host_b]);

    let echoes: Vec<TcpEcho> = ["0:", "1:", "2:", "3:"]
        .into_iter()
        .map(|tag| TcpEcho::start("127.0.0.1", tag))
        .collect();
    let forwards: Vec<Value> = echoes
        .iter()
        .map(|echo| {
            server.create_forward(&[
                "--protocol",
                "tcp",
                "--internal-ip-address",
                "127.0.0.1",
                "--internal-port",
                &echo.port(),
            ])
        })
        .collect();
    for forward in &forwards {
        assert_eq!(field(forward, "status"), "ACTIVE", "{forward}");
    }
    let on = |host: &str| {
        forwards
            .iter()
            .filter(|f| field(f, "proxy") == host)
            .count()
    };
    assert_eq!(
        (on(&host_a), on(&host_b)),
        (2, 2),
        "round_robin puts two forwards on each proxy: {forwards:?}"
    );
    let check_traffic = |which: Option<&str>| {
        for (index, forward) in forwards.iter().enumerate() {
            if which.is_some_and(|host| field(forward, "proxy") != host) {
                continue;
            }
            let address = field(forward, "external_address");
            let expected_address = if field(forward, "proxy") == host_a {
                ADDRESS_A
            } else {
                ADDRESS_B
            };
            assert_eq!(address, expected_address, "{forward}");
            assert_tcp_reply(
                &address,
                external_port(forward),
                "ping",
                &format!("{index}:ping"),
            );
        }
    };
    check_traffic(None);

    // A crashed agent loses its listeners; started again it reports
    // generation 0, gets its full set back and carries it again.
    agent_a.kill9();
    let victim = forwards
        .iter()
        .find(|f| field(f, "proxy") == host_a)
        .expect("a forward on agent a");
    eventually(
        "agent a's listeners to go away",
        Duration::from_secs(5),
        || navigator_e2e::tcp_refused(&field(victim, "external_address"), external_port(victim)),
    );
    let _agent_a = AgentProcess::start(&conf_a, &host_a);
    check_traffic(Some(&host_a));
    check_traffic(None);
    let full_syncs = server
        .logs()
        .lines()
        .filter(|l| {
            l.contains("agent needs a full sync")
                && l.contains(&format!("host={host_a}"))
                && l.contains("generation=0")
        })
        .count();
    assert!(
        full_syncs >= 2,
        "agent a should have asked for a full sync at both starts:\n{}",
        server.logs()
    );
    for forward in &forwards {
        let shown = server.show_forward(&field(forward, "id"));
        assert_eq!(field(&shown, "status"), "ACTIVE", "{shown}");
    }
    wait_up(&server, &[&host_a, &host_b]);

    // A port range travels over RabbitMQ too: every port of it is carried
    // by the agent it was placed on (N:1, to the first echo server).
    let range_first = last - 9;
    let range = server.create_forward(&[
        "--protocol",
        "tcp",
        "--internal-ip-address",
        "127.0.0.1",
        "--internal-port-range",
        &format!("{0}:{0}", echoes[0].port()),
        "--external-port-range",
        &format!("{range_first}:{}", range_first + 2),
    ]);
    assert_eq!(field(&range, "status"), "ACTIVE", "{range}");
    for port in range_first..=range_first + 2 {
        assert_tcp_reply(&field(&range, "external_address"), port, "r", "0:r");
    }

    // SIGTERM is a clean stop for both binaries.
    let stopped = agent_b.stop();
    assert!(
        stopped.is_some_and(|s| s.success()),
        "agent b did not exit cleanly on SIGTERM: {stopped:?}\n{}",
        agent_b.logs()
    );
    let stopped = server.stop();
    assert!(
        stopped.is_some_and(|s| s.success()),
        "the server did not exit cleanly on SIGTERM: {stopped:?}\n{}",
        server.logs()
    );
}
