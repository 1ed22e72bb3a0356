//! All of Navigator's SQL: the schema migrations and every query, behind a
//! [`Store`] that speaks in core types.
//!
//! The database is the single source of truth for desired state. What must
//! never happen is enforced by the schema itself (one forward per external
//! address, protocol and port), so that any number of API servers can write
//! at once and a race ends in a clean [`StoreError::PortTaken`], never in two
//! forwards on one port.
//!
//! # Backends
//!
//! One code path serves SQLite (all-in-one), PostgreSQL and MariaDB/MySQL
//! (cluster mode, usually a Galera cluster in OpenStack clouds). The store
//! holds a [`sqlx::AnyPool`], which picks the driver from the URL at run time,
//! rather than an enum of three typed pools: with typed pools every query
//! would be written (or at least instantiated and bound) three times, while
//! the `Any` driver lets each statement exist once. Its limits shape the
//! schema: only booleans, integers, floats, text and blobs cross it, so ids
//! are `VARCHAR(36)` and times fixed-width RFC 3339 text (see [`now`]), and it
//! does not translate placeholders, which `sql.rs` does (statements are
//! written with `$N`; MySQL gets `?`). The few statements whose syntax really
//! differs (the proxy upsert) pick their text by [`Backend`].
//!
//! Each backend has its own migration set (`migrations/{sqlite,postgres,mysql}`)
//! describing the same tables, since DDL differs (MySQL cannot index TEXT;
//! PostgreSQL gets `COLLATE "C"` and MySQL `utf8mb4_bin` so that text compares
//! and sorts by code point everywhere, as in SQLite).
//!
//! # Clusters
//!
//! Nothing here takes a table lock, an advisory lock or `GET_LOCK` (Galera
//! does not replicate them), and every statement is its own short
//! transaction, except a few short ones that write rows together (a forward
//! with its ports; a dashboard login with the evictions that make room for
//! it). Every table has a primary key (Galera needs one to replicate
//! rows). Concurrency is left to the database: the unique constraint decides
//! racing creates, allocation retries on a lost race, and updates change only
//! the columns they name in one statement, so racing updates of one forward
//! both apply. Migrations on MySQL run without sqlx's `GET_LOCK`: run `db sync`
//! from one node at a time, as with every OpenStack service.

mod forwards;
mod proxies;
mod sessions;
mod sql;

use std::path::{Path, PathBuf};
use std::time::Duration;

use navigator_core::ForwardId;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Executor, SqlStr};

pub use forwards::{
    AppliedVersion, ForwardFilter, ForwardOrder, INSTANCE_DELETED, Move, NewForwardRow, ProxyUsage,
    ReportedVersion, SortColumn, StatusReport, TargetChange,
};
pub use proxies::ProxyRecord;
pub use sessions::{CredentialKind, SessionLimits, SessionRecord};

/// How long a writer waits for SQLite's lock before giving up (10 s). Writes
/// are short, so this is only reached when something is badly wrong.
const SQLITE_BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 10000";

/// How often [`Store::migrate`] runs the migrator when it loses a race with
/// another server migrating the same database (500 ms apart).
const MIGRATE_ATTEMPTS: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported database connection {0:?}: expected sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB or mysql://USER:PASSWORD@HOST/DB"
    )]
    UnsupportedUrl(String),
    #[error("cannot open database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("port {port}/{protocol} on {address} is already used by forward {holder}")]
    PortTaken {
        address: String,
        protocol: String,
        port: u16,
        holder: ForwardId,
    },
    #[error("no free port left in {range} on {address} for {protocol}")]
    PoolExhausted {
        address: String,
        protocol: String,
        range: String,
    },
    #[error("marker {0} does not name a forward in this listing")]
    BadMarker(String),
    /// A row that does not parse back: the database was changed by hand or by
    /// a newer version.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the database itself is unreachable or failing (as opposed to a
    /// request that conflicts with what it holds); the API answers 503 then.
    /// Refused and reset connections, pool timeouts and errors the server
    /// reports all land here.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Connect { .. })
    }
}

/// The kind of database behind a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// MySQL or MariaDB (including Galera clusters).
    MySql,
}

/// Connection pool settings; the defaults suit an API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most connections the pool opens (oslo.db's `max_pool_size`).
    pub max_connections: u32,
    /// How long a statement waits for a connection before failing with an
    /// error for which [`StoreError::is_unavailable`] holds (oslo.db's
    /// `pool_timeout`). While the database is down, this is how long a
    /// request takes to fail.
    pub acquire_timeout: Duration,
    /// Connections older than this are closed and replaced (oslo.db's
    /// `connection_recycle_time`), so that proxies and servers that drop idle
    /// connections never hand the store a dead one.
    pub max_lifetime: Duration,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Next port to try per (external address, protocol): see
    /// [`Store::create_forward_allocating`].
    cursors: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<(String, String), forwards::Cursor>>,
    >,
}

/// The URL oslo.db would use for a SQLite file at `path`.
pub fn sqlite_url(path: &Path) -> String {
    format!(
        "sqlite:///{}",
        path.display().to_string().trim_start_matches('/')
    )
}

/// Parses `sqlite:///abs/path`, `sqlite:////abs/path` (oslo.db spells an
/// absolute path with four slashes) or `sqlite://relative/path`.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    if rest.is_empty() {
        return None;
    }
    let path = match rest.strip_prefix('/') {
        Some(abs) => format!("/{}", abs.trim_start_matches('/')),
        None => rest.to_owned(),
    };
    Some(PathBuf::from(path))
}

/// Query parameters of oslo.db MySQL URLs that are meant for PyMySQL or
/// SQLAlchemy: `charset=utf8` would switch the connection to 3-byte UTF-8,
/// the others mean nothing here. sqlx always talks utf8mb4.
const PYTHON_ONLY_MYSQL_PARAMS: &[&str] = &[
    "charset",
    "plugin",
    "read_default_file",
    "read_default_group",
];

/// The backend and the URL sqlx understands for an oslo.db-style network
/// database URL, or `None` if the scheme is not one we serve.
fn network_url(url: &str) -> Option<(Backend, String)> {
    let (scheme, rest) = url.split_once("://")?;
    // oslo.db URLs name the Python driver after a `+`: `mysql+pymysql`,
    // `postgresql+psycopg2`. The driver here is always sqlx's own.
    let backend = match scheme.split('+').next()? {
        "postgresql" | "postgres" => Backend::Postgres,
        "mysql" | "mariadb" => Backend::MySql,
        _ => return None,
    };
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (rest, None),
    };
    let query = query.map(|query| {
        query
            .split('&')
            .filter(|pair| {
                let key = pair.split('=').next().unwrap_or_default();
                !(backend == Backend::MySql && PYTHON_ONLY_MYSQL_PARAMS.contains(&key))
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let scheme = match backend {
        Backend::Postgres => "postgresql",
        _ => "mysql",
    };
    Some(match query.filter(|q| !q.is_empty()) {
        Some(query) => (backend, format!("{scheme}://{base}?{query}")),
        None => (backend, format!("{scheme}://{base}")),
    })
}

impl Store {
    /// Opens the database named by an oslo.db-style URL (`sqlite:///PATH`,
    /// `postgresql://…`, `mysql://…`, also with `+pymysql`/`+psycopg2`),
    /// creating a SQLite file (and its directory) if missing. Does not
    /// migrate: see [`Store::migrate`].
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, &StoreOptions::default()).await
    }

    /// [`Store::connect`] with explicit pool settings.
    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let connect_error = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        let (backend, connect) = if let Some(path) = sqlite_path(url) {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| connect_error(sqlx::Error::Io(e)))?;
            }
            // The file name is percent-encoded into sqlx's URL by sqlx itself,
            // so paths with `?`, `#` or spaces survive.
            let sqlite = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let connect =
                AnyConnectOptions::from_url(&sqlite.to_url_lossy()).map_err(connect_error)?;
            (Backend::Sqlite, connect)
        } else if let Some((backend, target)) = network_url(url) {
            let connect = target.parse::<AnyConnectOptions>().map_err(connect_error)?;
            (backend, connect)
        } else {
            return Err(StoreError::UnsupportedUrl(redact(url)));
        };
        let mut pool = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .max_lifetime(options.max_lifetime);
        if backend == Backend::Sqlite {
            // The Any driver takes only what a URL can say, so SQLite's
            // per-connection settings are applied here.
            pool = pool.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers proceed while one writer commits.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute(SQLITE_BUSY_TIMEOUT).await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(connect).await.map_err(connect_error)?;
        Ok(Store {
            pool,
            backend,
            cursors: Default::default(),
        })
    }

    /// The kind of database this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies every migration not yet applied (`navigator-server db sync`).
    ///
    /// Several servers may start at once and each migrate. PostgreSQL
    /// serializes them with an advisory lock. On MySQL, sqlx would use
    /// `GET_LOCK`, which Galera does not replicate across nodes, so locking
    /// is off there and a server that loses the race (its bookkeeping row or
    /// table already exists, or it sees the winner's migration in progress)
    /// waits and runs the migrator again, which then finds the work done.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = migrator(self.backend);
        if self.backend == Backend::MySql {
            migrator.set_locking(false);
        }
        let mut attempt = 1;
        loop {
            match migrator.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(
                    e @ (MigrateError::Execute(_)
                    | MigrateError::ExecuteMigration(..)
                    | MigrateError::Dirty(_)),
                ) if attempt < MIGRATE_ATTEMPTS => {
                    tracing::info!(attempt, error = %e, "migration raced another server; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Versions of the migrations this release has that the database has not
    /// applied, lowest first; empty when the schema is current. For servers
    /// that must not migrate a shared database on their own.
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        // A database that answers but has no bookkeeping table was never
        // migrated; any other failure is the database's and is returned.
        self.ping().await?;
        let applied: Vec<i64> = match self
            .fetch_all("SELECT version FROM _sqlx_migrations WHERE success", &[])
            .await
        {
            Ok(rows) => rows
                .iter()
                .map(|row| sqlx::Row::try_get::<i64, _>(row, 0))
                .collect::<Result<_, _>>()?,
            Err(_) => Vec::new(),
        };
        Ok(migrator(self.backend)
            .iter()
            .map(|m| m.version)
            .filter(|version| !applied.contains(version))
            .collect())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Hides the password of a `scheme://user:password@host/...` URL, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The host part never holds an `@`; a password may.
    match rest.rsplit_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// The migrations of one backend, embedded in the binary. The sets describe
/// the same schema version by version.
fn migrator(backend: Backend) -> Migrator {
    let migration = |version: i64, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            SqlStr::from_static(sql),
            false,
        )
    };
    let initial = match backend {
        Backend::Sqlite => include_str!("../migrations/sqlite/0001_initial.sql"),
        Backend::Postgres => include_str!("../migrations/postgres/0001_initial.sql"),
        Backend::MySql => include_str!("../migrations/mysql/0001_initial.sql"),
    };
    let port_ranges = match backend {
        Backend::Sqlite => include_str!("../migrations/sqlite/0002_port_ranges.sql"),
        Backend::Postgres => include_str!("../migrations/postgres/0002_port_ranges.sql"),
        Backend::MySql => include_str!("../migrations/mysql/0002_port_ranges.sql"),
    };
    let sessions = match backend {
        Backend::Sqlite => include_str!("../migrations/sqlite/0003_dashboard_sessions.sql"),
        Backend::Postgres => include_str!("../migrations/postgres/0003_dashboard_sessions.sql"),
        Backend::MySql => include_str!("../migrations/mysql/0003_dashboard_sessions.sql"),
    };
    Migrator::with_migrations(vec![
        migration(1, "initial", initial),
        migration(2, "port ranges", port_ranges),
        migration(3, "dashboard sessions", sessions),
    ])
}

/// The current time as stored: RFC 3339 UTC with microseconds, a fixed width
/// so that text order is time order.
pub fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A migrated store in a fresh temporary directory.
    pub(crate) async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&sqlite_url(&dir.path().join("nav.db")))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        (store, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oslo_sqlite_urls() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/n.db"),
            Some(PathBuf::from("/var/lib/n.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:////var/lib/n.db"),
            Some(PathBuf::from("/var/lib/n.db"))
        );
        assert_eq!(sqlite_path("sqlite://n.db"), Some(PathBuf::from("n.db")));
        assert_eq!(sqlite_path("sqlite://"), None);
        assert_eq!(
            sqlite_path("sqlite:///a b/c?d#e.db"),
            Some(PathBuf::from("/a b/c?d#e.db"))
        );
        assert_eq!(sqlite_path("postgresql://x"), None);
        assert_eq!(sqlite_url(Path::new("/tmp/x.db")), "sqlite:///tmp/x.db");
    }

    #[test]
    fn accepts_oslo_network_urls() {
        let url = network_url;
        assert_eq!(
            url("mysql+pymysql://nova:secret@db/navigator?charset=utf8"),
            Some((Backend::MySql, "mysql://nova:secret@db/navigator".into()))
        );
        assert_eq!(
            url("mysql://n:s@db:3307/nav?charset=utf8&ssl-mode=required"),
            Some((
                Backend::MySql,
                "mysql://n:s@db:3307/nav?ssl-mode=required".into()
            ))
        );
        assert_eq!(
            url("postgresql+psycopg2://n:s@db/nav"),
            Some((Backend::Postgres, "postgresql://n:s@db/nav".into()))
        );
        assert_eq!(
            url("postgres://n@db/nav?sslmode=require"),
            Some((
                Backend::Postgres,
                "postgresql://n@db/nav?sslmode=require".into()
            ))
        );
        assert_eq!(
            url("mariadb://n:s@db/nav").map(|(b, _)| b),
            Some(Backend::MySql)
        );
        assert_eq!(url("oracle://x/y"), None);
        assert_eq!(url("sqlite:///x"), None);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("mysql://nova:p@ss@db/nav"),
            "mysql://nova:***@db/nav"
        );
        assert_eq!(redact("mysql://nova@db/nav"), "mysql://nova@db/nav");
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }

    #[tokio::test]
    async fn migrate_is_idempotent() {
        let (store, _dir) = testing::store().await;
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        // The per-connection settings the Any driver cannot take from a URL.
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(timeout, 10_000);
    }

    #[tokio::test]
    async fn unsupported_urls_are_named() {
        let err = Store::connect("oracle://u:p@h/db").await.unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err}");
        assert!(err.to_string().contains("oracle://u:***@h/db"), "{err}");
    }
}
