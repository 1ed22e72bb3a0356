//! Test harness shared by the store's integration tests: a fresh, migrated
//! database per test on each backend, and a TCP forwarder that can be cut to
//! simulate a database outage.
//!
//! SQLite always runs. PostgreSQL and MariaDB/MySQL run when
//! `NAVIGATOR_TEST_POSTGRES_URL` / `NAVIGATOR_TEST_MYSQL_URL` name a server
//! whose user may create databases (`scripts/databases start DIR` starts both
//! and writes them to `DIR/env`). Each test creates its own database,
//! `nav_test_<random>`, and drops it afterwards, so tests run in parallel.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use navigator_store::{Store, StoreOptions, sqlite_url};
use sqlx::{AnyConnection, Connection, Executor};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The database servers a test can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    MySql,
}

impl Kind {
    fn env_var(self) -> Option<&'static str> {
        match self {
            Kind::Sqlite => None,
            Kind::Postgres => Some("NAVIGATOR_TEST_POSTGRES_URL"),
            Kind::MySql => Some("NAVIGATOR_TEST_MYSQL_URL"),
        }
    }
}

/// A fresh, migrated database of one backend, owned by one test.
pub struct TestDb {
    pub kind: Kind,
    /// The first server's store.
    pub store: Store,
    /// The URL of this test's database.
    pub url: String,
    /// For network servers: the URL of the database the test user owns, used
    /// to create and drop this test's database.
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Another server on the same database: a second, independent pool.
    pub async fn second_server(&self) -> Store {
        Store::connect(&self.url).await.expect("second store")
    }

    async fn drop_database(&self) {
        let Some(admin_url) = &self.admin_url else {
            return;
        };
        let sql = match self.kind {
            Kind::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        match AnyConnection::connect(admin_url).await {
            Ok(mut conn) => {
                if let Err(e) = conn.execute(sqlx::AssertSqlSafe(sql)).await {
                    eprintln!("could not drop test database {}: {e}", self.name);
                }
                let _ = conn.close().await;
            }
            Err(e) => eprintln!("could not drop test database {}: {e}", self.name),
        }
    }
}

/// The URL naming database `name` on the server of `url`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").expect("URL with a scheme");
    let server = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{server}/{name}{query}")
}

/// The URL `url` with its `host:port` replaced.
pub fn with_address(url: &str, address: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
    let (server, path) = rest.split_once('/').unwrap_or((rest, ""));
    let credentials = server
        .rsplit_once('@')
        .map(|(c, _)| format!("{c}@"))
        .unwrap_or_default();
    format!("{scheme}://{credentials}{address}/{path}")
}

/// The `host:port` of a network database URL.
pub fn address_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("URL with a scheme").1;
    let server = rest.split('/').next().unwrap_or(rest);
    let host_port = server.rsplit_once('@').map_or(server, |(_, h)| h);
    host_port
        .parse()
        .expect("host:port as an IP address and port")
}

/// A fresh migrated database on `kind`, or `None` (after saying so loudly)
/// when that server is not configured. Under CI a missing server fails.
pub async fn open(kind: Kind) -> Option<TestDb> {
    open_with(kind, true).await
}

/// As [`open`], migrated only when `migrate` (upgrade tests apply their own
/// subset of the migrations).
pub async fn open_with(kind: Kind, migrate: bool) -> Option<TestDb> {
    let Some(var) = kind.env_var() else {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = sqlite_url(&dir.path().join("nav.db"));
        let store = Store::connect(&url).await.expect("open sqlite");
        if migrate {
            store.migrate().await.expect("migrate sqlite");
        }
        return Some(TestDb {
            kind,
            store,
            url,
            admin_url: None,
            name: String::new(),
            _dir: Some(dir),
        });
    };
    let Ok(admin_url) = std::env::var(var) else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{var} is not set: database tests need scripts/databases (run scripts/test-all)"
            );
        }
        eprintln!(
            "\n*** skipped: {var} not set; run `scripts/databases start DIR && . DIR/env` \
             to test this backend ***\n"
        );
        return None;
    };
    let name = format!(
        "nav_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut admin = AnyConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach {var}: {e}"));
    let create = match kind {
        Kind::MySql => format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
        _ => format!("CREATE DATABASE {name}"),
    };
    admin
        .execute(sqlx::AssertSqlSafe(create))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let _ = admin.close().await;
    let url = with_database(&admin_url, &name);
    let store = Store::connect(&url).await.expect("open test database");
    if migrate {
        store.migrate().await.expect("migrate test database");
    }
    Some(TestDb {
        kind,
        store,
        url,
        admin_url: Some(admin_url),
        name,
        _dir: None,
    })
}

/// Runs `scenario` on a fresh database of `kind` and drops the database
/// afterwards, also when the scenario fails.
pub async fn run<F, Fut>(kind: Kind, scenario: F)
where
    F: FnOnce(&'static TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    run_with(kind, true, scenario).await;
}

/// As [`run`], on a database with no migration applied when `!migrate`.
pub async fn run_with<F, Fut>(kind: Kind, migrate: bool, scenario: F)
where
    F: FnOnce(&'static TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    sqlx::any::install_default_drivers();
    let Some(db) = open_with(kind, migrate).await else {
        return;
    };
    // Leaked so that scenarios can hand the harness to spawned tasks; one
    // small struct per test.
    let db: &'static TestDb = Box::leak(Box::new(db));
    let outcome = AssertUnwindSafe(scenario(db)).catch_unwind().await;
    db.store.close().await;
    db.drop_database().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Declares one test per backend for each named scenario
/// (`async fn NAME(db: &'static TestDb)` in the parent module): those in
/// `every` run on SQLite too, those in `network` only on PostgreSQL and
/// MariaDB/MySQL.
#[macro_export]
macro_rules! backend_tests {
    (every: [$($every:ident),* $(,)?] $(, network: [$($net:ident),* $(,)?])? $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $every() {
                $crate::support::run($crate::support::Kind::Sqlite, super::$every).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $every() {
                $crate::support::run($crate::support::Kind::Postgres, super::$every).await;
            })*
            $($(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $net() {
                $crate::support::run($crate::support::Kind::Postgres, super::$net).await;
            })*)?
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $every() {
                $crate::support::run($crate::support::Kind::MySql, super::$every).await;
            })*
            $($(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $net() {
                $crate::support::run($crate::support::Kind::MySql, super::$net).await;
            })*)?
        }
    };
}

/// Pool settings that fail fast, for outage tests.
pub fn impatient() -> StoreOptions {
    StoreOptions {
        acquire_timeout: Duration::from_secs(2),
        ..StoreOptions::default()
    }
}

/// A TCP forwarder on loopback standing between a store and its database: a
/// network cut without touching the server that other tests share.
pub struct Forwarder {
    pub address: SocketAddr,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Forwarder {
    pub async fn start(upstream: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address");
        Forwarder {
            address,
            upstream,
            task: Some(tokio::spawn(forward(listener, upstream))),
        }
    }

    /// Resets every connection and refuses new ones, as a stopped server does.
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts connections again on the same address.
    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(self.address).await.expect("rebind");
        self.task = Some(tokio::spawn(forward(listener, self.upstream)));
    }
}

/// Accepts and relays until aborted; aborting drops the listener and, with
/// the JoinSet, every relayed connection.
async fn forward(listener: TcpListener, upstream: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        // Reap finished relays so that the set does not grow.
        while connections.try_join_next().is_some() {}
    }
}
