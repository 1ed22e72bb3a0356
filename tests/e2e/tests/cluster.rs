//! Cluster mode end to end: `navigator-server`s on a real PostgreSQL (or
//! MariaDB) and a real RabbitMQ, `navigator-agent`s with the relay backend
//! each on its own loopback address (127.0.0.2, .3, .4), driven by the
//! `navigator` CLI, with traffic through the forwards: placement per
//! strategy, agent crash and failover (exactly once with two servers), an
//! agent frozen and thawed (it drops what it no longer owns), failover turned
//! off, a broker restart, a database outage, the RabbitMQ link over TLS, and
//! the dashboard on two servers behind one round-robin port, and quotas
//! under 20 racing creates on two servers (PostgreSQL and MariaDB).
//!
//! Needs `scripts/rabbitmq` and `scripts/databases` (their `DIR/env` export
//! `NAVIGATOR_TEST_TRANSPORT_URL`, `NAVIGATOR_TEST_RABBITMQ_DIR`,
//! `NAVIGATOR_TEST_TLS_TRANSPORT_URL`, `NAVIGATOR_TEST_RABBITMQ_CA`,
//! `NAVIGATOR_TEST_POSTGRES_URL` and `NAVIGATOR_TEST_MYSQL_URL`); without them
//! a test fails under `CI` and prints a `skipped:` line otherwise.
//!
//! Isolation: every test has its own RabbitMQ virtual host (the queue
//! `navigator-server` is shared by every server of a vhost, so tests on one
//! vhost would take each other's heartbeats) and its own database. The broker
//! restart and the database outage use a broker and a PostgreSQL of their own,
//! started by the test with the same scripts, so that the other tests running
//! in parallel are not disturbed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use navigator_e2e::{
    AgentProcess, KeystoneProject, KeystoneSettings, Server, TcpEcho, assert_tcp_reply,
    claim_port_range, eventually, field, parse_json, run_agent_to_exit, run_server_to_exit,
    tcp_round_trip,
};
use serde_json::Value;
use sqlx::{AnyConnection, Connection, Executor};

/// The external addresses of the agents: distinct loopback addresses, so that
/// all can use the same port range on one machine.
const ADDRESSES: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// Heartbeat period and down time in these tests: a crashed agent is noticed
/// within seconds.
const REPORT_INTERVAL: u64 = 1;
const AGENT_DOWN_TIME: u64 = 5;

/// Long enough for a failover: down time, the failover tick, the push.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A name no other run uses: vhosts on the shared broker and databases on
/// the shared server outlive a crashed test.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:x}", std::process::id())
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// Runs a project script and panics with its output if it fails.
fn run_script(name: &str, args: &[&str]) -> String {
    let out = Command::new(script(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A RabbitMQ broker started by a test with TLS only
/// (`NAVIGATOR_RABBITMQ_TLS_ONLY=1 scripts/rabbitmq start DIR`), stopped when
/// dropped.
struct TlsOnlyBroker {
    dir: tempfile::TempDir,
}

impl TlsOnlyBroker {
    fn start() -> TlsOnlyBroker {
        let dir = tempfile::Builder::new()
            .prefix("navigator-e2e-rabbitmq-tls-")
            .tempdir()
            .expect("temp dir");
        let out = Command::new(script("rabbitmq"))
            .arg("start")
            .arg(dir.path())
            .env("NAVIGATOR_RABBITMQ_TLS_ONLY", "1")
            .output()
            .expect("cannot run scripts/rabbitmq");
        let broker = TlsOnlyBroker { dir };
        assert!(
            out.status.success(),
            "scripts/rabbitmq start (TLS only) failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        broker
    }
}

impl Drop for TlsOnlyBroker {
    fn drop(&mut self) {
        let _ = Command::new(script("rabbitmq"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// The value of `export VAR=value` in a script's `DIR/env`.
fn env_file_value(dir: &Path, var: &str) -> String {
    let text = std::fs::read_to_string(dir.join("env")).expect("DIR/env of a started service");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("export {var}=")))
        .map(|v| v.trim_matches('\'').to_owned())
        .unwrap_or_else(|| panic!("{var} missing from {}/env:\n{text}", dir.display()))
}

/// The URL `url` with its path (vhost or database) replaced by `path`.
fn with_path(url: &str, path: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").expect("URL with a scheme");
    let server = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{server}/{path}{query}")
}

// ------------------------------------------------------------------ services

/// A RabbitMQ virtual host of one test on the shared broker, deleted at the
/// end.
struct Vhost {
    broker_dir: String,
    name: String,
    url: String,
}

impl Vhost {
    fn create(transport_url: &str, broker_dir: &str) -> Vhost {
        let name = unique("nav_e2e_");
        run_script("rabbitmq", &["ctl", broker_dir, "add_vhost", &name]);
        run_script(
            "rabbitmq",
            &[
                "ctl",
                broker_dir,
                "set_permissions",
                "-p",
                &name,
                "navigator",
                ".*",
                ".*",
                ".*",
            ],
        );
        Vhost {
            broker_dir: broker_dir.to_owned(),
            url: with_path(transport_url, &name),
            name,
        }
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new(script("rabbitmq"))
            .args(["ctl", &self.broker_dir, "delete_vhost", &self.name])
            .output();
    }
}

/// A broker of one test's own, for restarting it.
struct OwnBroker {
    dir: tempfile::TempDir,
    url: String,
}

impl OwnBroker {
    fn start() -> OwnBroker {
        let dir = tempfile::Builder::new()
            .prefix("navigator-e2e-rabbitmq-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_str().expect("UTF-8 temp dir").to_owned();
        run_script("rabbitmq", &["start", &path]);
        let url = env_file_value(dir.path(), "NAVIGATOR_TEST_TRANSPORT_URL");
        OwnBroker { dir, url }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().expect("UTF-8 temp dir")
    }

    fn stop(&self) {
        run_script("rabbitmq", &["stop", self.path()]);
    }

    /// Starts it again on the same port, with the same user and vhost.
    fn restart(&self) {
        run_script("rabbitmq", &["start", self.path()]);
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new(script("rabbitmq"))
            .args(["stop", self.path()])
            .output();
    }
}

/// A PostgreSQL of one test's own, for stopping it.
struct OwnPostgres {
    dir: tempfile::TempDir,
    url: String,
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let dir = tempfile::Builder::new()
            .prefix("navigator-e2e-postgres-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_str().expect("UTF-8 temp dir").to_owned();
        run_script("databases", &["start", &path, "postgres"]);
        let url = env_file_value(dir.path(), "NAVIGATOR_TEST_POSTGRES_URL");
        OwnPostgres { dir, url }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().expect("UTF-8 temp dir")
    }

    fn pause(&self) {
        run_script("databases", &["pause", self.path()]);
    }

    fn resume(&self) {
        run_script("databases", &["resume", self.path()]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new(script("databases"))
            .args(["stop", self.path()])
            .output();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DbKind {
    Postgres,
    MariaDb,
}

/// A fresh database for one test on the shared server, dropped (with its
/// connections) when the test ends.
struct Database {
    kind: DbKind,
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    fn create(kind: DbKind, admin_url: &str) -> Database {
        let name = unique("nav_e2e_");
        let sql = match kind {
            DbKind::Postgres => format!("CREATE DATABASE {name}"),
            DbKind::MariaDb => {
                format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            }
        };
        block_on(async {
            let mut admin = AnyConnection::connect(admin_url)
                .await
                .unwrap_or_else(|e| panic!("cannot reach the {kind:?} server: {e}"));
            admin
                .execute(sqlx::AssertSqlSafe(sql))
                .await
                .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
            let _ = admin.close().await;
        });
        Database {
            kind,
            admin_url: admin_url.to_owned(),
            url: with_path(admin_url, &name),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let sql = match self.kind {
            DbKind::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            DbKind::MariaDb => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
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

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("cannot write a config file");
    path
}

// ------------------------------------------------------------------ cluster

/// The configuration of one test's cluster: where its servers and agents
/// meet, and the names and addresses of its agents.
struct Cluster {
    dir: tempfile::TempDir,
    transport_url: String,
    database_url: String,
    first: u16,
    last: u16,
    hosts: Vec<String>,
}

impl Cluster {
    /// Writes the configuration for `agents` agents and migrates the
    /// database (`db sync`, as an operator does before starting servers).
    fn new(transport_url: &str, database_url: &str, agents: usize) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("navigator-e2e-cluster-")
            .tempdir()
            .expect("temp dir");
        let (first, last) = claim_port_range();
        let run = unique("c");
        let cluster = Cluster {
            dir,
            transport_url: transport_url.to_owned(),
            database_url: database_url.to_owned(),
            first,
            last,
            hosts: (0..agents)
                .map(|i| format!("e2e-{run}-{}", ["a", "b", "c"][i]))
                .collect(),
        };
        let conf = cluster.server_conf("migrate", "");
        let synced = run_server_to_exit(&[
            OsStr::new("--config-file"),
            conf.as_os_str(),
            OsStr::new("db"),
            OsStr::new("sync"),
        ]);
        assert!(synced.success(), "db sync failed:\n{synced}");
        cluster
    }

    /// A server configuration; `extra` is appended (more sections). An
    /// `agent_down_time = N` line in `extra` replaces the default.
    fn server_conf(&self, name: &str, extra: &str) -> PathBuf {
        let down_time = extra
            .lines()
            .find_map(|l| l.strip_prefix("agent_down_time = "))
            .map_or(AGENT_DOWN_TIME.to_string(), str::to_owned);
        let extra: String = extra
            .lines()
            .filter(|l| !l.starts_with("agent_down_time = "))
            .map(|l| format!("{l}\n"))
            .collect();
        write(
            self.dir.path(),
            &format!("server-{name}.conf"),
            &format!(
                "[DEFAULT]\nhost = {name}\ntransport_url = {}\n\
                 [database]\nconnection = {}\n\
                 [forwards]\nallow_loopback_targets = true\n\
                 [agent]\nreport_interval = {REPORT_INTERVAL}\nagent_down_time = {down_time}\n\
                 rpc_timeout = 5\n{extra}",
                self.transport_url, self.database_url
            ),
        )
    }

    fn start_server(&self, name: &str, extra: &str) -> Server {
        Server::start_cluster(&self.server_conf(name, extra))
    }

    fn agent_conf(&self, index: usize) -> PathBuf {
        let host = &self.hosts[index];
        write(
            self.dir.path(),
            &format!("{host}.conf"),
            &format!(
                "[DEFAULT]\nhost = {host}\ntransport_url = {}\n\
                 [agent]\nbackend = relay\nexternal_addresses = {}\n\
                 port_range = {}-{}\nreport_interval = {REPORT_INTERVAL}\n",
                self.transport_url, ADDRESSES[index], self.first, self.last
            ),
        )
    }

    fn start_agent(&self, index: usize) -> AgentProcess {
        AgentProcess::start(&self.agent_conf(index), &self.hosts[index])
    }

    fn host_index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("{host} is not an agent of this cluster"))
    }
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

fn wait_up(server: &Server, hosts: &[String]) {
    eventually("the agents up", Duration::from_secs(30), || {
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

/// Creates a TCP forward to `echo` through `server`.
fn create_to(server: &Server, echo: &TcpEcho, extra: &[&str]) -> Value {
    server.create_loopback_forward("tcp", &echo.port(), extra)
}

/// Waits until forward `id` satisfies `ok` and returns it.
fn wait_forward(
    server: &Server,
    id: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, timeout, || {
        let shown = server.show_forward(id);
        if ok(&shown) {
            Ok(shown)
        } else {
            Err(format!("{shown}"))
        }
    })
}

/// Checks that `forward` relays to the echo server tagged `tag`, through the
/// external address of the proxy it names.
fn assert_relays(forward: &Value, tag: &str, cluster: &Cluster) {
    let proxy = field(forward, "proxy");
    let address = field(forward, "external_address");
    assert_eq!(
        address,
        ADDRESSES[cluster.host_index(&proxy)],
        "a forward listens on its proxy's address: {forward}"
    );
    assert_tcp_reply(
        &address,
        external_port(forward),
        "ping",
        &format!("{tag}ping"),
    );
}

fn signal(agent: &AgentProcess, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &agent.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {}", agent.pid());
}

/// Tags for the echo servers (they must be `'static`).
const TAGS: [&str; 12] = [
    "0:", "1:", "2:", "3:", "4:", "5:", "6:", "7:", "8:", "9:", "10:", "11:",
];

// ------------------------------------------------------------------ tests

/// Services of the tests that use the shared broker and PostgreSQL.
fn shared_services() -> Option<(String, String, String)> {
    let transport = env_or_skip("NAVIGATOR_TEST_TRANSPORT_URL", "RabbitMQ")?;
    let broker_dir = env_or_skip("NAVIGATOR_TEST_RABBITMQ_DIR", "RabbitMQ")?;
    let postgres = env_or_skip("NAVIGATOR_TEST_POSTGRES_URL", "PostgreSQL")?;
    Some((transport, broker_dir, postgres))
}

#[test]
fn two_agents_share_forwards_and_a_restarted_agent_is_resynced() {
    let Some((transport_url, broker_dir, postgres_url)) = shared_services() else {
        return;
    };
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let database = Database::create(DbKind::Postgres, &postgres_url);
    let dir = tempfile::Builder::new()
        .prefix("navigator-e2e-cluster-")
        .tempdir()
        .expect("temp dir");
    let run = unique("c");
    let (first, last) = claim_port_range();
    let cluster = Cluster {
        dir,
        transport_url: vhost.url.clone(),
        database_url: database.url.clone(),
        first,
        last,
        hosts: vec![format!("e2e-{run}-a"), format!("e2e-{run}-b")],
    };
    // The default agent_down_time (75 s): this test is about resync, not
    // failover.
    let server_conf = write(
        cluster.dir.path(),
        "server.conf",
        &format!(
            "[DEFAULT]\nhost = e2e-{run}-server\ntransport_url = {}\n\
             [database]\nconnection = {}\n\
             [forwards]\nallow_loopback_targets = true\n\
             [agent]\nreport_interval = 1\nrpc_timeout = 5\n",
            vhost.url, database.url
        ),
    );

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
        cluster.dir.path(),
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
    let mut agent_a = cluster.start_agent(0);
    let mut agent_b = cluster.start_agent(1);
    let host_a = cluster.hosts[0].clone();
    let host_b = cluster.hosts[1].clone();
    wait_up(&server, &cluster.hosts);

    let echoes: Vec<TcpEcho> = TAGS[..4]
        .iter()
        .map(|tag| TcpEcho::start("127.0.0.1", tag))
        .collect();
    let forwards: Vec<Value> = echoes
        .iter()
        .map(|echo| create_to(&server, echo, &[]))
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
            assert_relays(forward, TAGS[index], &cluster);
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
    let _agent_a = cluster.start_agent(0);
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
    wait_up(&server, &cluster.hosts);

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

/// Two servers, three agents: each strategy places as it promises, whichever
/// server takes the request.
#[test]
fn placement_follows_each_strategy_across_two_servers() {
    let Some((transport_url, broker_dir, postgres_url)) = shared_services() else {
        return;
    };
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let database = Database::create(DbKind::Postgres, &postgres_url);
    let cluster = Cluster::new(&vhost.url, &database.url, 3);
    let _agents: Vec<AgentProcess> = (0..3).map(|i| cluster.start_agent(i)).collect();
    let echo = TcpEcho::start("127.0.0.1", "e:");
    let servers_with = |strategy: &str| {
        // A long down time: a heartbeat late on a loaded machine must not
        // take a proxy out of the placement under test.
        let extra = format!("agent_down_time = 30\n[scheduler]\nstrategy = {strategy}\n");
        let servers = [
            cluster.start_server(&format!("{strategy}-1"), &extra),
            cluster.start_server(&format!("{strategy}-2"), &extra),
        ];
        wait_up(&servers[0], &cluster.hosts);
        servers
    };
    let mut count = [0usize; 3];

    // hash: every forward of an instance lands on one proxy, from either
    // server; different instances spread over the proxies.
    let servers = servers_with("hash");
    let mut used = std::collections::HashSet::new();
    for vm in 0..6 {
        let instance = format!("vm-{vm}");
        let placed: Vec<String> = (0..2)
            .map(|i| {
                let forward = create_to(&servers[i], &echo, &["--instance-id", &instance]);
                assert_eq!(field(&forward, "status"), "ACTIVE", "{forward}");
                assert_relays(&forward, "e:", &cluster);
                field(&forward, "proxy")
            })
            .collect();
        assert_eq!(placed[0], placed[1], "{instance} stays on one proxy");
        count[cluster.host_index(&placed[0])] += 2;
        used.insert(placed[0].clone());
    }
    assert!(
        used.len() >= 2,
        "six instances all hashed to one proxy: {used:?}"
    );
    drop(servers);

    // round_robin: each server cycles through the proxies in host order.
    let servers = servers_with("round_robin");
    let before = count;
    for server in &servers {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let forward = create_to(server, &echo, &[]);
            assert_eq!(field(&forward, "status"), "ACTIVE", "{forward}");
            seen.push(cluster.host_index(&field(&forward, "proxy")));
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2], "three creates visit every proxy once");
        for index in seen {
            count[index] += 1;
        }
    }
    assert_eq!(
        count
            .iter()
            .zip(before)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
        [2, 2, 2]
    );
    drop(servers);

    // least_loaded: every create goes to the proxy with the fewest forwards
    // (equal pools), ties in host order, whichever server takes it.
    let servers = servers_with("least_loaded");
    for i in 0..6 {
        let least = (0..3)
            .min_by_key(|&p| (count[p], p))
            .expect("three proxies");
        let forward = create_to(&servers[i % 2], &echo, &[]);
        assert_eq!(
            field(&forward, "proxy"),
            cluster.hosts[least],
            "with counts {count:?} the least loaded proxy takes it"
        );
        count[least] += 1;
    }
    let listed = proxies(&servers[0]);
    for (index, host) in cluster.hosts.iter().enumerate() {
        let (_, state, forwards) = listed.iter().find(|(h, _, _)| h == host).expect("listed");
        assert_eq!(state, "up");
        assert_eq!(*forwards, count[index] as u64, "{listed:?}");
    }
}

/// A round-robin TCP forwarder on one loopback port in front of several
/// servers, as a load balancer without stickiness: connection `n` goes to
/// upstream `n % len`. `raw_http` sends `Connection: close`, so consecutive
/// requests alternate servers.
struct RoundRobin {
    address: std::net::SocketAddr,
    /// Connections relayed to each upstream.
    served: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RoundRobin {
    fn start(upstreams: Vec<String>) -> RoundRobin {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the forwarder");
        let address = listener.local_addr().expect("forwarder address");
        let served: std::sync::Arc<Vec<AtomicUsize>> =
            std::sync::Arc::new(upstreams.iter().map(|_| AtomicUsize::new(0)).collect());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (counts, stopped) = (served.clone(), stop.clone());
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let index = n % upstreams.len();
                counts[index].fetch_add(1, Ordering::Relaxed);
                let upstream = upstreams[index].clone();
                std::thread::spawn(move || relay(client, &upstream));
            }
        });
        RoundRobin {
            address,
            served,
            stop,
        }
    }

    fn authority(&self) -> String {
        self.address.to_string()
    }

    fn served(&self) -> Vec<usize> {
        self.served
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        // Wakes the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(self.address);
    }
}

/// Copies both ways between `client` and `upstream` until both are done.
fn relay(client: std::net::TcpStream, upstream: &str) {
    use std::net::Shutdown;
    let Ok(server) = std::net::TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    let _ = std::io::copy(&mut server_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Both);
    let _ = up.join();
}

/// The value of cookie `name` in a response's `Set-Cookie` headers (empty
/// when it is cleared).
fn set_cookie(response: &navigator_e2e::HttpResponse, name: &str) -> Option<String> {
    response
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| v.strip_prefix(&format!("{name}="))?.split(';').next())
        .map(str::to_owned)
}

/// The hidden `csrf_token` of a page's forms.
fn csrf_token(page: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let start = page
        .find(marker)
        .unwrap_or_else(|| panic!("no csrf_token in the page:\n{page}"))
        + marker.len();
    page[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The SHA-256 of `text` in hex, as `sha256sum` prints it.
fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum output");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The rows of the dashboard's session table: `(id_hash, credential)`.
fn stored_sessions(database_url: &str) -> Vec<(String, String)> {
    block_on(async {
        let mut conn = AnyConnection::connect(database_url)
            .await
            .expect("connect to the test database");
        let rows = sqlx::query("SELECT id_hash, credential FROM dashboard_sessions")
            .fetch_all(&mut conn)
            .await
            .expect("read dashboard_sessions");
        let _ = conn.close().await;
        rows.iter()
            .map(|row| {
                use sqlx::Row;
                (
                    row.try_get::<String, _>(0).expect("id_hash"),
                    row.try_get::<String, _>(1).expect("credential"),
                )
            })
            .collect()
    })
}

/// The dashboard journey on two servers behind one port, raw HTTP through a
/// round-robin forwarder (every request lands on the other server than the
/// one before): a login form fetched from one server is accepted by the
/// other, the session opens pages on both, a forward created through the
/// dashboard's form shows its message on the other server and carries
/// traffic, and after logout the session is gone on both (with Keystone,
/// its token is revoked too). The database holds the SHA-256 of the session
/// id, never the id.
fn dashboard_across_two_servers(keystone: Option<KeystoneProject>) {
    let Some((transport_url, broker_dir, postgres_url)) = shared_services() else {
        return;
    };
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let database = Database::create(DbKind::Postgres, &postgres_url);
    let cluster = Cluster::new(&vhost.url, &database.url, 1);
    let _agent = cluster.start_agent(0);
    let mut extra = "agent_down_time = 30\n".to_owned();
    if let Some(p) = &keystone {
        let s = &p.settings;
        // No validation cache: a revoked token is refused at once.
        extra.push_str(&format!(
            "[DEFAULT]\nauth_strategy = keystone\n\
             [keystone_authtoken]\nwww_authenticate_uri = {url}\nauth_url = {url}\n\
             auth_type = password\nusername = {user}\npassword = {password}\n\
             project_name = service\nuser_domain_name = Default\n\
             project_domain_name = Default\ntoken_cache_time = 0\n",
            url = s.url,
            user = s.service_user,
            password = s.service_password,
        ));
    }
    let servers = [
        cluster.start_server("dash-1", &extra),
        cluster.start_server("dash-2", &extra),
    ];
    // The API as the user: their own token, or noauth's project header.
    let (project_header, project_value, project_shown) = match &keystone {
        Some(p) => ("X-Auth-Token", p.token(), p.project_name.clone()),
        None => (
            "X-Project-Id",
            "shared-demo".to_owned(),
            "shared-demo".to_owned(),
        ),
    };
    // The agent's heartbeats registered its proxy (proxy listings are for
    // admins under Keystone, so the database is asked).
    eventually("the agent registered", Duration::from_secs(30), || {
        let proxies = block_on(async {
            let mut conn = AnyConnection::connect(&database.url).await?;
            let rows = sqlx::query("SELECT host FROM proxies")
                .fetch_all(&mut conn)
                .await;
            let _ = conn.close().await;
            rows.map(|rows| rows.len())
        });
        match proxies {
            Ok(n) if n > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let echo = TcpEcho::start("127.0.0.1", "d:");
    let balancer = RoundRobin::start(servers.iter().map(|s| s.authority().to_owned()).collect());
    let front = balancer.authority();
    const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
    let http = |method: &str, path: &str, cookie: &str, body: &str| {
        let cookie = cookie.to_owned();
        let mut headers = vec![FORM];
        if !cookie.is_empty() {
            headers.push(("Cookie", cookie.as_str()));
        }
        navigator_e2e::raw_http(&front, method, path, &headers, body.as_bytes())
    };
    let logs = || format!("{}\n{}", servers[0].logs(), servers[1].logs());

    // The login form from one server, posted to the other.
    let form = http("GET", "/dashboard/login", "", "");
    assert_eq!(form.status, 200, "{form:?}");
    let token = set_cookie(&form, "navigator_login").expect("a login cookie");
    let credentials = match &keystone {
        Some(p) => format!(
            "username={}&password={}&project={}&domain=Default",
            p.user_name, p.password, p.project_name
        ),
        None => "project=shared-demo".to_owned(),
    };
    let login = http(
        "POST",
        "/dashboard/login",
        &format!("navigator_login={token}"),
        &format!("csrf_token={token}&{credentials}"),
    );
    assert_eq!(login.status, 303, "{login:?}\n{}", logs());
    let sid = set_cookie(&login, "navigator_session")
        .filter(|s| !s.is_empty())
        .expect("a session cookie");
    let cookie = format!("navigator_session={sid}");
    // The database knows the session by the id's hash only.
    let stored = stored_sessions(&database.url);
    assert_eq!(stored.len(), 1, "one session stored");
    assert_eq!(stored[0].0, sha256_hex(&sid), "the id's SHA-256 is stored");
    assert!(
        stored.iter().all(|(h, c)| h != &sid && c != &sid),
        "the session id itself is not stored"
    );
    let credential = stored[0].1.clone();

    // Page loads alternate servers; every one is logged in.
    let mut csrf = String::new();
    for i in 0..6 {
        let page = http("GET", "/dashboard", &cookie, "");
        assert_eq!(page.status, 200, "page load {i}: {page:?}\n{}", logs());
        assert!(page.body.contains(&project_shown), "page load {i}");
        let token = csrf_token(&page.body);
        assert!(csrf.is_empty() || csrf == token, "one session, one token");
        csrf = token;
        let status = http("GET", "/dashboard/status.json", &cookie, "");
        assert_eq!(status.status, 200, "status refresh {i}: {status:?}");
    }

    // A create through the dashboard's form; the redirect's next page (on
    // the other server) shows its message once.
    let created = http(
        "POST",
        "/dashboard/forwards",
        &cookie,
        &format!(
            "csrf_token={csrf}&protocol=tcp&internal_ip_address=127.0.0.1&internal_port={}\
             &external_port=&description=via+the+balancer",
            echo.port()
        ),
    );
    assert_eq!(created.status, 303, "{created:?}\n{}", logs());
    let page = http("GET", "/dashboard", &cookie, "");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("Created forward"),
        "the flash set on one server shows on the other:\n{}",
        page.body
    );
    assert!(page.body.contains("via the balancer"), "{}", page.body);
    let again = http("GET", "/dashboard", &cookie, "");
    assert!(
        !again.body.contains("Created forward"),
        "a flash shows once"
    );
    let listed = servers[0]
        .http(
            "GET",
            "/v1/forwards",
            &[(project_header, &project_value)],
            b"",
        )
        .json();
    let ids: Vec<String> = listed["forwards"]
        .as_array()
        .map(|all| all.iter().map(|f| field(f, "id")).collect())
        .unwrap_or_default();
    assert_eq!(ids.len(), 1, "{listed}");
    let path = format!("/v1/forwards/{}", ids[0]);
    let forward = eventually(
        "the dashboard's forward ACTIVE",
        Duration::from_secs(30),
        || {
            let shown = servers[1]
                .http("GET", &path, &[(project_header, &project_value)], b"")
                .json();
            let forward = shown["forward"].clone();
            if forward["status"] == "ACTIVE" {
                Ok(forward)
            } else {
                Err(format!("{shown}"))
            }
        },
    );
    assert_relays(&forward, "d:", &cluster);

    // Logout on one server ends the session on both.
    let out = http(
        "POST",
        "/dashboard/logout",
        &cookie,
        &format!("csrf_token={csrf}"),
    );
    assert_eq!(out.status, 303, "{out:?}");
    for server in &servers {
        let page = navigator_e2e::raw_http(
            server.authority(),
            "GET",
            "/dashboard",
            &[("Cookie", &cookie)],
            b"",
        );
        assert_eq!(page.status, 303, "{page:?}");
        assert_eq!(page.header("location"), Some("/dashboard/login"));
    }
    assert!(stored_sessions(&database.url).is_empty(), "the row is gone");
    if keystone.is_some() {
        // Logged out means the token is over at Keystone too.
        for server in &servers {
            let refused = server.http("GET", "/v1/forwards", &[("X-Auth-Token", &credential)], b"");
            assert_eq!(
                refused.status, 401,
                "the session's token after logout: {refused:?}"
            );
        }
    }
    let served = balancer.served();
    assert!(
        served.iter().all(|&n| n >= 8),
        "both servers took turns: {served:?}"
    );
}

#[test]
fn the_dashboard_stays_logged_in_across_two_servers_behind_one_port() {
    dashboard_across_two_servers(None);
}

#[test]
fn the_dashboard_stays_logged_in_across_two_servers_with_keystone() {
    let test = "the_dashboard_stays_logged_in_across_two_servers_with_keystone";
    let Some(settings) = KeystoneSettings::from_env(test) else {
        return;
    };
    dashboard_across_two_servers(Some(KeystoneProject::create(settings, "dash-lb")));
}

/// kill -9 of an agent: its forwards move, exactly once with two servers, to
/// the live proxies, keep their external port where it is free, and carry
/// traffic there. A frozen agent that comes back drops what moved away.
fn failover_journey(database_url: &str, transport_url: &str) {
    let cluster = Cluster::new(transport_url, database_url, 3);
    let servers = [
        cluster.start_server("s1", ""),
        cluster.start_server("s2", ""),
    ];
    let mut agents: Vec<AgentProcess> = (0..3).map(|i| cluster.start_agent(i)).collect();
    wait_up(&servers[0], &cluster.hosts);
    let echoes: Vec<TcpEcho> = TAGS[..7]
        .iter()
        .map(|tag| TcpEcho::start("127.0.0.1", tag))
        .collect();
    // Six by round robin (two per proxy), and one on agent a's address with
    // a port no other forward uses, which must survive the move.
    let mut forwards: Vec<Value> = echoes[..6]
        .iter()
        .enumerate()
        .map(|(i, echo)| create_to(&servers[i % 2], echo, &[]))
        .collect();
    let kept_port = (cluster.last - 5).to_string();
    forwards.push(create_to(
        &servers[0],
        &echoes[6],
        &[
            "--external-address",
            ADDRESSES[0],
            "--external-port",
            &kept_port,
        ],
    ));
    for (i, forward) in forwards.iter().enumerate() {
        assert_eq!(field(forward, "status"), "ACTIVE", "{forward}");
        assert_relays(forward, TAGS[i], &cluster);
    }
    let host_a = cluster.hosts[0].clone();
    let on_a: Vec<usize> = (0..forwards.len())
        .filter(|&i| field(&forwards[i], "proxy") == host_a)
        .collect();
    assert_eq!(on_a.len(), 3, "{forwards:?}");

    // Servers fail over only once they have seen the database for
    // agent_down_time; then agent a dies.
    std::thread::sleep(Duration::from_secs(AGENT_DOWN_TIME));
    agents[0].kill9();
    for &i in &on_a {
        let id = field(&forwards[i], "id");
        let moved = wait_forward(
            &servers[1],
            &id,
            "the forward to move off the dead agent and be confirmed",
            FAILOVER_TIMEOUT,
            |f| field(f, "proxy") != host_a && field(f, "status") == "ACTIVE",
        );
        assert_relays(&moved, TAGS[i], &cluster);
        if i == 6 {
            assert_eq!(
                moved["external_port"].to_string(),
                kept_port,
                "the port is free on the new proxy, so it is kept: {moved}"
            );
        }
        forwards[i] = moved;
    }
    // Exactly one server moved each of agent a's forwards off it, once.
    // (Under heavy load a live proxy may miss a heartbeat and lose forwards
    // too; that is failover working, so only moves off a are counted.)
    let logs: String = servers.iter().map(Server::logs).collect();
    for &i in &on_a {
        let id = field(&forwards[i], "id");
        let moves = logs
            .lines()
            .filter(|l| {
                l.contains("forward moved off a down proxy")
                    && l.contains(&id)
                    && l.contains(&format!("from={host_a} "))
            })
            .count();
        assert_eq!(moves, 1, "forward {id} moved {moves} times:\n{logs}");
    }
    let listed = proxies(&servers[0]);
    let a = listed
        .iter()
        .find(|(h, _, _)| *h == host_a)
        .expect("listed");
    assert_eq!((a.1.as_str(), a.2), ("down", 0), "{listed:?}");
    // Every forward relays where the API says it is.
    let current = |i: usize, forwards: &[Value]| {
        wait_forward(
            &servers[0],
            &field(&forwards[i], "id"),
            "the forward ACTIVE on a live proxy",
            FAILOVER_TIMEOUT,
            |f| field(f, "status") == "ACTIVE" && field(f, "proxy") != host_a,
        )
    };
    for i in 0..forwards.len() {
        let shown = current(i, &forwards);
        assert_relays(&shown, TAGS[i], &cluster);
        forwards[i] = shown;
    }

    // Agent b freezes (SIGSTOP): alive, listening, but silent. Its forwards
    // move to c; thawed, its heartbeat brings a full sync that removes the
    // listeners it no longer owns.
    let host_b = cluster.hosts[1].clone();
    let on_b: Vec<(usize, u16)> = (0..forwards.len())
        .filter(|&i| field(&forwards[i], "proxy") == host_b)
        .map(|i| (i, external_port(&forwards[i])))
        .collect();
    assert!(!on_b.is_empty(), "{forwards:?}");
    signal(&agents[1], "STOP");
    for &(i, _) in &on_b {
        let moved = wait_forward(
            &servers[0],
            &field(&forwards[i], "id"),
            "the frozen agent's forward to move",
            FAILOVER_TIMEOUT,
            |f| field(f, "proxy") == cluster.hosts[2] && field(f, "status") == "ACTIVE",
        );
        assert_relays(&moved, TAGS[i], &cluster);
        forwards[i] = moved;
    }
    signal(&agents[1], "CONT");
    wait_up(&servers[0], &cluster.hosts[1..]);
    for &(i, old_port) in &on_b {
        let old = ADDRESSES[1];
        eventually(
            "the thawed agent to drop a forward it no longer owns",
            Duration::from_secs(20),
            || {
                let shown = servers[1].show_forward(&field(&forwards[i], "id"));
                if field(&shown, "proxy") == host_b && external_port(&shown) == old_port {
                    return Ok(()); // moved back meanwhile: b owns it again
                }
                match tcp_round_trip(old, old_port, "ping") {
                    Ok(reply) => Err(format!("{old}:{old_port} still answers {reply:?}")),
                    Err(_) => Ok(()),
                }
            },
        );
    }
    for (i, tag) in TAGS.iter().enumerate().take(forwards.len()) {
        let shown = current(i, &forwards);
        assert_relays(&shown, tag, &cluster);
    }
}

#[test]
fn a_killed_agents_forwards_move_once_and_carry_traffic() {
    let Some((transport_url, broker_dir, postgres_url)) = shared_services() else {
        return;
    };
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let database = Database::create(DbKind::Postgres, &postgres_url);
    failover_journey(&database.url, &vhost.url);
}

#[test]
fn a_killed_agents_forwards_move_once_on_mariadb() {
    let Some((transport_url, broker_dir, _)) = shared_services() else {
        return;
    };
    let Some(mysql_url) = env_or_skip("NAVIGATOR_TEST_MYSQL_URL", "MariaDB") else {
        return;
    };
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let database = Database::create(DbKind::MariaDb, &mysql_url);
    failover_journey(&database.url, &vhost.url);
}

/// Quotas hold across servers: a project's limit L with L - 1 forwards, then
/// 20 creates at once, split across two servers on one database: exactly one
/// is created, the other 19 are 409 naming the project, the resource, its use
/// and its limit, and `quota show --usage` agrees with `forward list`.
fn quota_race_journey(database_url: &str, transport_url: &str) {
    const LIMIT: usize = 5;
    const RACERS: usize = 20;
    let cluster = Cluster::new(transport_url, database_url, 1);
    // No rate limit: 20 requests from one address at once are the point.
    let servers = [
        cluster.start_server("s1", "[api]\nrate_limit = 0"),
        cluster.start_server("s2", "[api]\nrate_limit = 0"),
    ];
    let _agent = cluster.start_agent(0);
    wait_up(&servers[0], &cluster.hosts);
    let echo = TcpEcho::start("127.0.0.1", TAGS[0]);
    // noauth: the CLI's project is the server's default, "default".
    let project = "default";
    servers[0].cli_ok(&["quota", "set", "--forwards", &LIMIT.to_string(), project]);
    for i in 0..LIMIT - 1 {
        create_to(&servers[i % 2], &echo, &[]);
    }
    let body = format!(
        r#"{{"forward": {{"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": {}}}}}"#,
        echo.port()
    );
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(RACERS));
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let server = &servers[i % 2];
                let barrier = barrier.clone();
                let body = body.clone();
                scope.spawn(move || {
                    barrier.wait();
                    let response = server.http(
                        "POST",
                        "/v1/forwards",
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    );
                    (response.status, response.body)
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|racer| racer.join().expect("racer thread"))
            .collect()
    });
    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    let refused: Vec<&String> = answers
        .iter()
        .filter(|(status, _)| *status == 409)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        created, 1,
        "exactly one create passes at limit - 1: {answers:?}"
    );
    assert_eq!(
        refused.len(),
        RACERS - 1,
        "the others are refused: {answers:?}"
    );
    for body in refused {
        assert_eq!(
            parse_json(body)["error"]["message"],
            format!(
                "quota exceeded for project {project}: forwards would be {}, the limit is {LIMIT} ({LIMIT} used)",
                LIMIT + 1
            ),
            "{body}"
        );
    }
    assert_eq!(servers[1].forward_count(), LIMIT);
    let usage =
        parse_json(&servers[1].cli_ok(&["quota", "show", "--usage", project, "-f", "json"]));
    assert_eq!(
        usage[0],
        serde_json::json!({"Resource": "forwards", "Limit": LIMIT, "In Use": LIMIT}),
        "{usage}"
    );
    // A delete on one server makes room for a create on the other.
    let first = servers[0].forward_ids(&[])[0].clone();
    servers[0].cli_ok(&["forward", "delete", &first]);
    create_to(&servers[1], &echo, &[]);
    let out = servers[0].cli(&[
        "forward",
        "create",
        "--protocol",
        "tcp",
        "--internal-ip-address",
        "127.0.0.1",
        "--internal-port",
        &echo.port(),
    ]);
    assert!(!out.success(), "over the quota: {out}");
    assert!(
        out.stderr.contains("quota exceeded for project default"),
        "{out}"
    );
}

#[test]
fn quotas_hold_for_racing_creates_on_two_servers_on_postgres() {
    let Some((transport_url, broker_dir, postgres_url)) = shared_services() else {
        return;
    };
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let database = Database::create(DbKind::Postgres, &postgres_url);
    quota_race_journey(&database.url, &vhost.url);
}

#[test]
fn quotas_hold_for_racing_creates_on_two_servers_on_mariadb() {
    let Some((transport_url, broker_dir, _)) = shared_services() else {
        return;
    };
    let Some(mysql_url) = env_or_skip("NAVIGATOR_TEST_MYSQL_URL", "MariaDB") else {
        return;
    };
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let database = Database::create(DbKind::MariaDb, &mysql_url);
    quota_race_journey(&database.url, &vhost.url);
}

/// reschedule_on_failure = false: a silent proxy's forwards stay, shown ERROR
/// with the reason, and go back to ACTIVE when it returns.
#[test]
fn without_rescheduling_a_down_proxys_forwards_show_the_reason() {
    let Some((transport_url, broker_dir, postgres_url)) = shared_services() else {
        return;
    };
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let database = Database::create(DbKind::Postgres, &postgres_url);
    let cluster = Cluster::new(&vhost.url, &database.url, 2);
    let server = cluster.start_server("s1", "[scheduler]\nreschedule_on_failure = false\n");
    let agents: Vec<AgentProcess> = (0..2).map(|i| cluster.start_agent(i)).collect();
    wait_up(&server, &cluster.hosts);
    let echo = TcpEcho::start("127.0.0.1", "e:");
    let forwards: Vec<Value> = (0..2).map(|_| create_to(&server, &echo, &[])).collect();
    let host_a = &cluster.hosts[0];
    let on_a = forwards
        .iter()
        .find(|f| field(f, "proxy") == *host_a)
        .expect("round robin used agent a");
    std::thread::sleep(Duration::from_secs(AGENT_DOWN_TIME));
    signal(&agents[0], "STOP");
    let shown = wait_forward(
        &server,
        &field(on_a, "id"),
        "the forward of the silent proxy to show ERROR",
        FAILOVER_TIMEOUT,
        |f| field(f, "status") == "ERROR",
    );
    assert_eq!(field(&shown, "proxy"), *host_a, "it stays: {shown}");
    let reason = field(&shown, "status_reason");
    assert!(
        reason.contains(&format!("proxy {host_a} is down")),
        "{shown}"
    );
    let other = forwards
        .iter()
        .find(|f| field(f, "proxy") != *host_a)
        .expect("round robin used agent b");
    assert_eq!(
        field(&server.show_forward(&field(other, "id")), "status"),
        "ACTIVE"
    );
    signal(&agents[0], "CONT");
    let back = wait_forward(
        &server,
        &field(on_a, "id"),
        "the forward to be ACTIVE again when its proxy returns",
        FAILOVER_TIMEOUT,
        |f| field(f, "status") == "ACTIVE",
    );
    assert_relays(&back, "e:", &cluster);
}

/// The broker restarts under two servers and two agents: they reconnect,
/// what was created meanwhile is applied, nothing is lost.
#[test]
fn a_broker_restart_converges_with_nothing_lost() {
    let Some(postgres_url) = env_or_skip("NAVIGATOR_TEST_POSTGRES_URL", "PostgreSQL") else {
        return;
    };
    if env_or_skip("NAVIGATOR_TEST_RABBITMQ_DIR", "RabbitMQ").is_none() {
        return;
    }
    let broker = OwnBroker::start();
    let database = Database::create(DbKind::Postgres, &postgres_url);
    let cluster = Cluster::new(&broker.url, &database.url, 3);
    // A long down time: the outage must not look like dead agents.
    let extra = "agent_down_time = 60\n";
    let servers = [
        cluster.start_server("s1", extra),
        cluster.start_server("s2", extra),
    ];
    let _agents: Vec<AgentProcess> = (0..2).map(|i| cluster.start_agent(i)).collect();
    wait_up(&servers[0], &cluster.hosts[..2]);
    let echoes: Vec<TcpEcho> = TAGS[..6]
        .iter()
        .map(|tag| TcpEcho::start("127.0.0.1", tag))
        .collect();
    let mut forwards: Vec<Value> = echoes[..4]
        .iter()
        .enumerate()
        .map(|(i, echo)| create_to(&servers[i % 2], echo, &[]))
        .collect();

    broker.stop();
    // An agent started while the broker is down waits for it.
    let late = cluster.start_agent(2);
    // The API keeps working on the database: creates are stored (PENDING,
    // waiting for their proxy), deletes too; the data plane keeps relaying.
    for (i, echo) in echoes.iter().enumerate().skip(4) {
        let forward = create_to(&servers[i % 2], echo, &[]);
        assert_eq!(field(&forward, "status"), "PENDING", "{forward}");
        forwards.push(forward);
    }
    let deleted = forwards.remove(0);
    servers[1].cli_ok(&["forward", "delete", &field(&deleted, "id")]);
    for (i, forward) in forwards.iter().enumerate() {
        if field(forward, "status") == "ACTIVE" {
            assert_relays(forward, TAGS[i + 1], &cluster);
        }
    }

    broker.restart();
    for (i, forward) in forwards.iter().enumerate() {
        let shown = wait_forward(
            &servers[0],
            &field(forward, "id"),
            "every forward ACTIVE after the broker returns",
            Duration::from_secs(60),
            |f| field(f, "status") == "ACTIVE",
        );
        assert_relays(&shown, TAGS[i + 1], &cluster);
    }
    eventually(
        "the forward deleted during the outage to be gone from its agent",
        Duration::from_secs(60),
        || {
            navigator_e2e::tcp_refused(
                &field(&deleted, "external_address"),
                external_port(&deleted),
            )
        },
    );
    wait_up(&servers[1], &cluster.hosts);
    assert!(
        late.logs().contains("cannot reach RabbitMQ"),
        "the late agent should have said why it waits:\n{}",
        late.logs()
    );
    assert_eq!(servers[0].forward_count(), 5, "nothing lost, nothing added");
}

/// PostgreSQL stops under two servers: the API answers 503 with an OpenStack
/// error body naming the database, the data plane keeps relaying, no proxy
/// is failed over, and everything is back when it returns.
#[test]
fn a_database_outage_is_503_then_recovers_with_nothing_lost() {
    let Some(transport_url) = env_or_skip("NAVIGATOR_TEST_TRANSPORT_URL", "RabbitMQ") else {
        return;
    };
    let Some(broker_dir) = env_or_skip("NAVIGATOR_TEST_RABBITMQ_DIR", "RabbitMQ") else {
        return;
    };
    if env_or_skip("NAVIGATOR_TEST_POSTGRES_URL", "PostgreSQL").is_none() {
        return;
    }
    let postgres = OwnPostgres::start();
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let cluster = Cluster::new(&vhost.url, &postgres.url, 2);
    let servers = [
        cluster.start_server("s1", ""),
        cluster.start_server("s2", ""),
    ];
    let _agents: Vec<AgentProcess> = (0..2).map(|i| cluster.start_agent(i)).collect();
    wait_up(&servers[0], &cluster.hosts);
    let echoes: Vec<TcpEcho> = TAGS[..3]
        .iter()
        .map(|tag| TcpEcho::start("127.0.0.1", tag))
        .collect();
    let forwards: Vec<Value> = echoes[..2]
        .iter()
        .enumerate()
        .map(|(i, echo)| create_to(&servers[i], echo, &[]))
        .collect();
    let project = field(&forwards[0], "project_id");

    postgres.pause();
    for server in &servers {
        let echo_port = echoes[2].port();
        let body = format!(
            r#"{{"forward": {{"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": {echo_port}}}}}"#
        );
        for (method, path, body) in [
            ("GET", "/v1/forwards".to_owned(), ""),
            (
                "GET",
                format!("/v1/forwards/{}", field(&forwards[0], "id")),
                "",
            ),
            ("POST", "/v1/forwards".to_owned(), body.as_str()),
        ] {
            let response = server.http(
                method,
                &path,
                &[
                    ("X-Project-Id", &project),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            );
            assert_eq!(response.status, 503, "{method} {path}: {}", response.body);
            let error = response.json();
            assert_eq!(error["error"]["code"], 503, "{}", response.body);
            let message = error["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("database"), "{}", response.body);
        }
    }
    // The data plane does not need the database.
    for (i, forward) in forwards.iter().enumerate() {
        assert_relays(forward, TAGS[i], &cluster);
    }
    // Longer than agent_down_time without recorded heartbeats.
    std::thread::sleep(Duration::from_secs(AGENT_DOWN_TIME + 2));

    postgres.resume();
    eventually("the API back", Duration::from_secs(30), || {
        let out = servers[1].cli(&["forward", "list", "-f", "value", "-c", "id"]);
        if out.success() {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    // Until the next heartbeats are recorded the proxies look down, and a
    // create is a 503 "retry later"; then it succeeds.
    wait_up(&servers[0], &cluster.hosts);
    let created = create_to(&servers[0], &echoes[2], &[]);
    assert_eq!(field(&created, "status"), "ACTIVE", "{created}");
    assert_relays(&created, TAGS[2], &cluster);
    // Nothing lost, nothing moved: the outage was not the agents' fault.
    std::thread::sleep(Duration::from_secs(AGENT_DOWN_TIME + 2));
    for forward in &forwards {
        let shown = servers[0].show_forward(&field(forward, "id"));
        assert_eq!(field(&shown, "status"), "ACTIVE", "{shown}");
        assert_eq!(field(&shown, "proxy"), field(forward, "proxy"), "{shown}");
    }
    assert_eq!(servers[1].forward_count(), 3);
    let logs: String = servers.iter().map(Server::logs).collect();
    assert!(
        !logs.contains("forward moved off a down proxy"),
        "a database outage must not move forwards:\n{logs}"
    );
}

/// Cluster mode over TLS to RabbitMQ (`scripts/rabbitmq`'s TLS listener and
/// throwaway CA): a server and an agent say at start-up that the link is
/// encrypted and carry a forward; a TLS mistake (a CA file that cannot be
/// read, a query parameter Navigator does not implement) stops either binary
/// with exit 64, naming the option, and never shows the broker password.
#[test]
fn a_cluster_over_tls_carries_forwards_and_refuses_tls_mistakes() {
    let Some((_, _, postgres_url)) = shared_services() else {
        return;
    };
    // A broker of this test's own with no plain listener at all: whatever
    // works here went over TLS.
    let broker = TlsOnlyBroker::start();
    let tls_url = env_file_value(broker.dir.path(), "NAVIGATOR_TEST_TLS_TRANSPORT_URL");
    let ca = env_file_value(broker.dir.path(), "NAVIGATOR_TEST_RABBITMQ_CA");
    let broker_dir = broker.dir.path().display().to_string();
    let tls_port: u16 = tls_url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("the TLS URL's port");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", tls_port - 1)).is_err(),
        "the TLS-only broker listens for plain AMQP on {}",
        tls_port - 1
    );
    let vhost = Vhost::create(&tls_url, &broker_dir);
    assert!(vhost.url.ends_with("?ssl=1"), "{}", vhost.url);
    let database = Database::create(DbKind::Postgres, &postgres_url);
    // The CA as a query parameter, which oslo allows for every
    // [oslo_messaging_rabbit] option; the file form is checked below.
    let url = format!("{}&ssl_ca_file={ca}", vhost.url);
    let cluster = Cluster::new(&url, &database.url, 1);
    let password = "navigator-test";

    let mistakes = [
        (
            "missing-ca",
            format!(
                "[DEFAULT]\nhost = h\ntransport_url = {}\n[database]\nconnection = {}\n\
                 [oslo_messaging_rabbit]\nssl_ca_file = /nonexistent/ca.pem\n",
                vhost.url, database.url
            ),
            "[oslo_messaging_rabbit] ssl_ca_file = /nonexistent/ca.pem: cannot read it",
        ),
        (
            "unknown-parameter",
            format!(
                "[DEFAULT]\nhost = h\ntransport_url = {}&heartbeat=30\n[database]\nconnection = {}\n",
                vhost.url, database.url
            ),
            "query parameter heartbeat is not supported",
        ),
    ];
    for (name, text, expected) in &mistakes {
        let conf = write(cluster.dir.path(), &format!("{name}.conf"), text);
        for (binary, out) in [
            (
                "navigator-server",
                run_server_to_exit(&[OsStr::new("--config-file"), conf.as_os_str()]),
            ),
            (
                "navigator-agent",
                run_agent_to_exit(&[OsStr::new("--config-file"), conf.as_os_str()]),
            ),
        ] {
            assert_eq!(out.code, Some(64), "{binary} with {name}:\n{out}");
            assert!(
                out.stderr.contains(expected),
                "{binary} with {name}:\n{out}"
            );
            assert!(
                !out.stderr.contains(password) && !out.stdout.contains(password),
                "{binary} with {name} shows the password:\n{out}"
            );
        }
    }

    let server = cluster.start_server("tls-server", "");
    let agent = cluster.start_agent(0);
    wait_up(&server, &cluster.hosts);
    let echo = TcpEcho::start("127.0.0.1", "t:");
    let forward = create_to(&server, &echo, &[]);
    assert_eq!(field(&forward, "status"), "ACTIVE", "{forward}");
    assert_relays(&forward, "t:", &cluster);

    let port = tls_url
        .rsplit_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("host:port in the TLS URL")
        .to_owned();
    let link = format!("RabbitMQ (RPC): amqps to {port} (TLS, CA {ca})");
    for logs in [server.logs(), agent.logs()] {
        assert!(logs.contains(&link), "no {link:?} in:\n{logs}");
        assert!(!logs.contains("NOT encrypted"), "{logs}");
        assert!(
            !logs.contains(password),
            "the password is in the logs:\n{logs}"
        );
    }
}

/// SIGHUP to a relay agent: a rotated `log_file` is re-opened, the
/// per-forward connection cap changes at once (a lower one refuses new
/// connections and keeps the live one), a changed option that needs a
/// restart is named as such, a file that does not parse changes nothing, and
/// a relayed TCP connection open across all of it keeps carrying traffic.
#[test]
fn an_agent_reloads_on_sighup_and_keeps_its_relayed_connections() {
    use std::io::{BufRead as _, BufReader, Write as _};

    let Some((transport_url, broker_dir, postgres_url)) = shared_services() else {
        return;
    };
    let vhost = Vhost::create(&transport_url, &broker_dir);
    let database = Database::create(DbKind::Postgres, &postgres_url);
    let cluster = Cluster::new(&vhost.url, &database.url, 1);
    let server = cluster.start_server("s1", "");
    let conf = cluster.agent_conf(0);
    let log = cluster.dir.path().join("agent.log");
    let original = std::fs::read_to_string(&conf)
        .expect("agent conf")
        .replacen(
            "[DEFAULT]\n",
            &format!("[DEFAULT]\nlog_file = {}\n", log.display()),
            1,
        );
    std::fs::write(&conf, &original).expect("write");
    let agent = AgentProcess::start(&conf, &cluster.hosts[0]);
    wait_up(&server, &cluster.hosts);
    let echo = TcpEcho::start("127.0.0.1", "h:");
    let forward = create_to(&server, &echo, &[]);
    let forward = wait_forward(
        &server,
        &field(&forward, "id"),
        "the forward ACTIVE",
        FAILOVER_TIMEOUT,
        |f| field(f, "status") == "ACTIVE",
    );
    let mut stream = std::net::TcpStream::connect((ADDRESSES[0], external_port(&forward)))
        .expect("connect through the forward");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut round_trip = |payload: &str| {
        stream
            .write_all(format!("{payload}\n").as_bytes())
            .expect("write through the forward");
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read through the forward");
        line.trim_end().to_owned()
    };
    assert_eq!(round_trip("one"), "h:one");

    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &agent.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    let log_has = |what: &str, text: &str| {
        let text = text.to_owned();
        eventually(what, Duration::from_secs(20), || {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            if logged.contains(&text) {
                Ok(())
            } else {
                Err(format!("{logged}\n{}", agent.logs()))
            }
        });
    };
    // A forward created with a global request id: the agent's lines about
    // it carry that id and the server's, from the oslo context of the RPC.
    let global = "req-0a1b2c3d-4e5f-6789-abcd-ef0123456789";
    let body = format!(
        r#"{{"forward": {{"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": {}}}}}"#,
        echo.port()
    );
    let created = server.http(
        "POST",
        "/v1/forwards",
        &[
            ("X-OpenStack-Request-Id", global),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let own = created
        .header("x-openstack-request-id")
        .expect("request id")
        .to_owned();
    log_has(
        "the agent's line with the request's ids",
        &format!("request_id={own} global_request_id={global}"),
    );

    // logrotate's way: move the file, then SIGHUP.
    std::fs::rename(&log, cluster.dir.path().join("agent.log.1")).expect("rotate");
    std::fs::write(
        &conf,
        format!("{original}[relay]\nconnect_timeout = 3\nmax_connections_per_forward = 1\n"),
    )
    .expect("write");
    hangup();
    log_has(
        "the restart-only option named in the re-opened log file",
        "option [relay] connect_timeout changed; takes effect after a restart",
    );
    log_has("the new cap applied", "relay per-forward caps changed");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !logged.contains("option [relay] max_connections_per_forward changed"),
        "{logged}"
    );
    assert_eq!(round_trip("two"), "h:two");
    // The live connection holds the only slot now.
    let address = ADDRESSES[0];
    let port = external_port(&forward);
    assert!(
        tcp_round_trip(address, port, "more").is_err(),
        "a second connection under a cap of 1"
    );

    std::fs::write(
        &conf,
        original.replace("report_interval = ", "report_interval = x"),
    )
    .expect("write");
    hangup();
    log_has(
        "the refused reload",
        "keeping the running configuration unchanged",
    );
    assert_eq!(round_trip("three"), "h:three");

    // Back to the default cap: new connections are carried again.
    std::fs::write(&conf, &original).expect("write");
    hangup();
    eventually(
        "new connections under the default cap",
        Duration::from_secs(20),
        || tcp_round_trip(address, port, "four"),
    );
    assert_eq!(round_trip("five"), "h:five");
    wait_up(&server, &cluster.hosts);
}
