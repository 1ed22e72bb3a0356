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

mod digests;
mod forwards;
mod groups;
mod proxies;
mod quotas;
mod sessions;
mod sql;

use std::path::{Path, PathBuf};
use std::time::Duration;

use navigator_core::ForwardId;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Executor, SqlStr};

pub use digests::StoredDigest;
pub use forwards::{
    AppliedVersion, ForwardFilter, ForwardOrder, INSTANCE_DELETED, Move, NewForwardRow, ProxyUsage,
    ReportedVersion, SortColumn, StatusReport, TargetChange,
};
pub use groups::{GROUP_HOST_PREFIX, GroupMember, MemberError, group_host, group_name};
pub use proxies::ProxyRecord;
pub use quotas::{ProjectQuota, QuotaLimits, QuotaUsage, Resource};
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
    #[error("database connection {url}: {message}")]
    BadUrl { url: String, message: String },
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
    /// A create would take `project`'s use of `resource` past its limit.
    #[error(
        "quota exceeded for project {project}: {resource} would be {wanted}, the limit is {limit} ({used} used)"
    )]
    OverQuota {
        project: String,
        resource: Resource,
        used: i64,
        limit: i64,
        /// What the create would have brought the use to.
        wanted: i64,
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
    /// The `[quotas]` defaults of projects without an override (unlimited
    /// until the server sets them: [`Store::set_default_quotas`]).
    default_quotas: std::sync::Arc<std::sync::RwLock<QuotaLimits>>,
    /// SQLite only: held by each write (statement or transaction), so that
    /// this process's writers queue for SQLite's single write lock in order
    /// instead of polling it with the busy handler, whose sleeps (up to
    /// 100 ms each) made writes wait a second and more under 16 concurrent
    /// creates.
    writer: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

/// The URL oslo.db would use for a SQLite file at `path`.
pub fn sqlite_url(path: &Path) -> String {
    if path.is_relative() {
        // `sqlite://relative/path`: three slashes would make it absolute.
        return format!("sqlite://{}", path.display());
    }
    format!(
        "sqlite:///{}",
        path.display().to_string().trim_start_matches('/')
    )
}

/// Parses `sqlite:///abs/path`, `sqlite:////abs/path` (oslo.db spells an
/// absolute path with four slashes) or `sqlite://relative/path`.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
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

/// The query parameters sqlx's PostgreSQL driver reads, libpq's names
/// (which psycopg2, and so oslo.db, passes through) first. sqlx ignores any
/// other, so every other one is refused: a misspelt `sslmode` must not
/// quietly leave the connection unverified.
const POSTGRES_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "options",
    "ssl-mode",
    "ssl-root-cert",
    "ssl-ca",
    "ssl-cert",
    "ssl-key",
    "statement-cache-capacity",
];

/// The query parameters sqlx's MySQL driver reads (it ignores any other).
const MYSQL_PARAMS: &[&str] = &[
    "ssl-mode",
    "sslmode",
    "ssl-ca",
    "sslca",
    "ssl-cert",
    "sslcert",
    "ssl-key",
    "sslkey",
    "statement-cache-capacity",
    "timezone",
    "time-zone",
];

/// oslo.db's MySQL TLS parameters (SQLAlchemy hands them to PyMySQL as its
/// `ssl` dictionary) and sqlx's names for the files.
const PYMYSQL_SSL_FILES: &[(&str, &str)] = &[
    ("ssl_ca", "ssl-ca"),
    ("ssl_cert", "ssl-cert"),
    ("ssl_key", "ssl-key"),
];

/// PyMySQL's TLS switches, turned into an `ssl-mode`.
const PYMYSQL_SSL_FLAGS: &[&str] = &["ssl_verify_cert", "ssl_check_hostname"];

/// A Python-style boolean (SQLAlchemy's `asbool`).
fn python_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "y" | "t" | "1" => Ok(true),
        "false" | "no" | "off" | "n" | "f" | "0" => Ok(false),
        _ => Err(format!("{key}={value}: expected true or false")),
    }
}

/// The query of a MySQL URL for sqlx: oslo.db's (PyMySQL's) TLS spellings
/// translated, Python-only parameters dropped, unknown ones refused.
///
/// PyMySQL verifies the server's certificate and host name when `ssl_ca` is
/// given, and only encrypts otherwise; `ssl_verify_cert` and
/// `ssl_check_hostname` turn either check off or on. The same choice is
/// sqlx's `ssl-mode` (`VERIFY_IDENTITY`, `VERIFY_CA` or `REQUIRED`), unless
/// the URL names one itself.
fn mysql_query(pairs: &[(&str, &str)]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut pymysql_tls = false;
    let mut has_ca = false;
    let mut verify_cert = None;
    let mut check_hostname = None;
    let mut explicit_mode = false;
    for &(key, value) in pairs {
        if PYTHON_ONLY_MYSQL_PARAMS.contains(&key) {
            continue;
        }
        if let Some((_, sqlx_name)) = PYMYSQL_SSL_FILES.iter().find(|(name, _)| *name == key) {
            pymysql_tls = true;
            has_ca |= key == "ssl_ca";
            out.push(format!("{sqlx_name}={value}"));
        } else if PYMYSQL_SSL_FLAGS.contains(&key) {
            pymysql_tls = true;
            let flag = python_bool(key, value)?;
            if key == "ssl_verify_cert" {
                verify_cert = Some(flag);
            } else {
                check_hostname = Some(flag);
            }
        } else if MYSQL_PARAMS.contains(&key) {
            has_ca |= matches!(key, "ssl-ca" | "sslca");
            explicit_mode |= matches!(key, "ssl-mode" | "sslmode");
            out.push(format!("{key}={value}"));
        } else {
            return Err(unknown_parameter(key, MYSQL_PARAMS, true));
        }
    }
    if pymysql_tls && !explicit_mode {
        let mode = match (
            verify_cert.unwrap_or(has_ca),
            check_hostname.unwrap_or(true),
        ) {
            (false, _) => "REQUIRED",
            (true, false) => "VERIFY_CA",
            (true, true) => "VERIFY_IDENTITY",
        };
        out.push(format!("ssl-mode={mode}"));
    }
    Ok(out)
}

fn unknown_parameter(key: &str, known: &[&str], mysql: bool) -> String {
    let oslo = if mysql {
        ", ssl_ca, ssl_cert, ssl_key, ssl_verify_cert, ssl_check_hostname (PyMySQL's, translated); charset is ignored"
    } else {
        ""
    };
    format!(
        "unknown query parameter {key:?} (Navigator's driver would ignore it); known: {}{oslo}",
        known.join(", ")
    )
}

/// The backend and the URL sqlx understands for an oslo.db-style network
/// database URL; `Ok(None)` if the scheme is not one we serve, `Err` (the
/// reason, without the URL) for a query parameter that cannot be honoured.
fn network_url(url: &str) -> Result<Option<(Backend, String)>, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    // oslo.db URLs name the Python driver after a `+`: `mysql+pymysql`,
    // `postgresql+psycopg2`. The driver here is always sqlx's own.
    let backend = match scheme.split('+').next().unwrap_or_default() {
        "postgresql" | "postgres" => Backend::Postgres,
        "mysql" | "mariadb" => Backend::MySql,
        _ => return Ok(None),
    };
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, query),
        None => (rest, ""),
    };
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    let query = match backend {
        Backend::MySql => mysql_query(&pairs)?,
        _ => pairs
            .iter()
            .map(|&(key, value)| {
                if POSTGRES_PARAMS.contains(&key) {
                    Ok(format!("{key}={value}"))
                } else {
                    Err(unknown_parameter(key, POSTGRES_PARAMS, false))
                }
            })
            .collect::<Result<_, _>>()?,
    };
    let scheme = match backend {
        Backend::Postgres => "postgresql",
        _ => "mysql",
    };
    let target = if query.is_empty() {
        format!("{scheme}://{base}")
    } else {
        format!("{scheme}://{base}?{}", query.join("&"))
    };
    // The driver's own parser, which connects to nothing, checks the values
    // (`sslmode=verify_full`, a port that is no number) now rather than at
    // the first connection. Its messages do not quote the URL.
    let parsed = match backend {
        Backend::Postgres => target.parse::<sqlx::postgres::PgConnectOptions>().map(drop),
        _ => target.parse::<sqlx::mysql::MySqlConnectOptions>().map(drop),
    };
    parsed.map_err(|e| e.to_string())?;
    Ok(Some((backend, target)))
}

/// Whether the host of a network database URL is loopback (`localhost`,
/// `127.0.0.0/8`, `::1`).
fn url_host_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let base = rest.split('?').next().unwrap_or(rest);
    let server = base.rsplit_once('@').map_or(base, |(_, server)| server);
    let server = server.split('/').next().unwrap_or(server);
    let host = match server.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => server.rsplit_once(':').map_or(server, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Query parameters that name a PEM file (CA bundle, client certificate or
/// key), in every spelling accepted.
const FILE_PARAMS: &[&str] = &[
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslca",
    "ssl_ca",
    "sslcert",
    "ssl-cert",
    "ssl_cert",
    "sslkey",
    "ssl-key",
    "ssl_key",
];

/// Reads the PEM files a network database URL names (CA bundle, client
/// certificate and key), so that a wrong path is reported with its
/// parameter at start-up rather than as a bare "No such file" from the
/// driver at the first connection. The error names the parameter and file.
pub fn check_url_files(url: &str) -> Result<(), String> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(());
    };
    // Decoded as the drivers decode the query (`form_urlencoded`: `%XX`
    // escapes and `+` for a space).
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if !FILE_PARAMS.contains(&key.as_ref()) {
            continue;
        }
        let trimmed = value.trim();
        // sqlx takes inline PEM text as well as a path.
        if trimmed.starts_with("-----BEGIN") && trimmed.ends_with("-----") {
            continue;
        }
        let text =
            std::fs::read(&*value).map_err(|e| format!("{key} = {value}: cannot read it: {e}"))?;
        if !text.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(format!(
                "{key} = {value}: not a PEM file (expected -----BEGIN CERTIFICATE----- or a PEM private key)"
            ));
        }
    }
    Ok(())
}

/// Checks a `[database] connection` URL without connecting: a scheme we
/// serve and only query parameters that are honoured. The error is the
/// reason, without the URL (which holds a password).
pub fn check_url(url: &str) -> Result<(), String> {
    if sqlite_path(url).is_some() {
        return Ok(());
    }
    match network_url(url)? {
        Some(_) => Ok(()),
        None => Err("expected sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB or mysql://USER:PASSWORD@HOST/DB".into()),
    }
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
        } else if let Some((backend, target)) = network_url(url)
            .and_then(|target| check_url_files(url).map(|()| target))
            .map_err(|message| StoreError::BadUrl {
                url: redact(url),
                message,
            })?
        {
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
                    // In WAL mode, NORMAL syncs the log at checkpoints rather
                    // than at every commit: the database stays consistent
                    // through any crash, and a crash of Navigator loses
                    // nothing; a power loss or kernel crash may lose the
                    // last commits before it (docs/operations.md). FULL
                    // cost two fsyncs per create.
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
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
            default_quotas: Default::default(),
            writer: (backend == Backend::Sqlite).then(Default::default),
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
        Ok(self.schema_status().await?.pending)
    }

    /// Where the database's schema stands against this release's migrations
    /// (`navigator-server db version`, `navigator-status upgrade check`).
    pub async fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        // A database that answers but has no bookkeeping table was never
        // migrated; any other failure is the database's and is returned.
        self.ping().await?;
        let mut applied: Vec<i64> = match self
            .fetch_all("SELECT version FROM _sqlx_migrations WHERE success", &[])
            .await
        {
            Ok(rows) => rows
                .iter()
                .map(|row| sqlx::Row::try_get::<i64, _>(row, 0))
                .collect::<Result<_, _>>()?,
            Err(_) => Vec::new(),
        };
        applied.sort_unstable();
        let known: Vec<i64> = migrator(self.backend).iter().map(|m| m.version).collect();
        Ok(SchemaStatus {
            current: applied.last().copied(),
            latest: latest_schema_version(),
            pending: known
                .iter()
                .copied()
                .filter(|version| !applied.contains(version))
                .collect(),
            unknown: applied
                .iter()
                .copied()
                .filter(|version| !known.contains(version))
                .collect(),
        })
    }

    /// Applies this release's migrations up to and including `version` and
    /// no further: a database as an earlier release left it, for upgrade
    /// tests. [`Store::migrate`] later applies the rest.
    pub async fn migrate_to(&self, version: i64) -> Result<(), StoreError> {
        let migrations: Vec<Migration> = migrator(self.backend)
            .iter()
            .filter(|m| m.version <= version)
            .cloned()
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        if self.backend == Backend::MySql {
            migrator.set_locking(false);
        }
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// The TLS cipher of a connection to the database server, as the server
    /// sees it, or `None` when the link is not encrypted (always for SQLite).
    /// Every connection of the pool is made with the same options, so one
    /// tells for all.
    pub async fn tls_cipher(&self) -> Result<Option<String>, StoreError> {
        let (sql, column) = match self.backend {
            Backend::Sqlite => return Ok(None),
            Backend::Postgres => (
                "SELECT cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
                0,
            ),
            // Variable_name, Value; the value is empty without TLS.
            Backend::MySql => ("SHOW STATUS LIKE 'Ssl_cipher'", 1),
        };
        let rows = self.fetch_all(sql, &[]).await?;
        let cipher = match rows.first() {
            Some(row) => sqlx::Row::try_get::<Option<String>, _>(row, column)?,
            None => None,
        };
        Ok(cipher.filter(|c| !c.is_empty()))
    }

    /// Logs whether the link to the database server (named by `url`, the
    /// URL it was opened with) is encrypted: INFO with the cipher, and a
    /// WARN for a server off loopback reached in clear text.
    pub async fn log_link(&self, url: &str) {
        if self.backend == Backend::Sqlite {
            return;
        }
        let shown = redact(url);
        match self.tls_cipher().await {
            Ok(Some(cipher)) => tracing::info!("database link: TLS ({cipher}) to {shown}"),
            Ok(None) if url_host_is_loopback(url) => {
                tracing::info!("database link: not encrypted, on loopback ({shown})");
            }
            Ok(None) => tracing::warn!(
                "database link is NOT encrypted ({shown}): the database password and every forward \
                 cross the network in clear text; add ?sslmode=verify-full&sslrootcert=CA.pem \
                 (PostgreSQL) or ?ssl-mode=VERIFY_IDENTITY&ssl-ca=CA.pem (MySQL/MariaDB) to \
                 [database] connection"
            ),
            Err(e) => {
                tracing::debug!(error = %e, "cannot tell whether the database link is encrypted")
            }
        }
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
    // The host part never holds an `@`; a password may, and so may the
    // query (a file path), which is therefore set aside first.
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (rest, String::new()),
    };
    match base.rsplit_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{query}")
        }
        _ => url.to_owned(),
    }
}

/// The schema of a database against this release's migrations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The highest migration applied; `None` for a database never migrated.
    pub current: Option<i64>,
    /// The highest migration this release has.
    pub latest: i64,
    /// This release's migrations the database lacks (`db sync` applies them).
    pub pending: Vec<i64>,
    /// Migrations applied that this release does not know: the database was
    /// upgraded by a newer release, which this one must not serve.
    pub unknown: Vec<i64>,
}

/// The versions of this release's migrations, in order (the same on every
/// backend). Not contiguous: a number may belong to a change another branch
/// brings.
pub fn schema_versions() -> Vec<i64> {
    migrator(Backend::Sqlite)
        .iter()
        .map(|m| m.version)
        .collect()
}

/// The highest schema version this release's migrations reach (the same on
/// every backend).
pub fn latest_schema_version() -> i64 {
    migrator(Backend::Sqlite)
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
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
    let controls = match backend {
        Backend::Sqlite => include_str!("../migrations/sqlite/0004_forward_controls.sql"),
        Backend::Postgres => include_str!("../migrations/postgres/0004_forward_controls.sql"),
        Backend::MySql => include_str!("../migrations/mysql/0004_forward_controls.sql"),
    };
    let quotas = match backend {
        Backend::Sqlite => include_str!("../migrations/sqlite/0005_quotas.sql"),
        Backend::Postgres => include_str!("../migrations/postgres/0005_quotas.sql"),
        Backend::MySql => include_str!("../migrations/mysql/0005_quotas.sql"),
    };
    let digests = match backend {
        Backend::Sqlite => include_str!("../migrations/sqlite/0006_proxy_digests.sql"),
        Backend::Postgres => include_str!("../migrations/postgres/0006_proxy_digests.sql"),
        Backend::MySql => include_str!("../migrations/mysql/0006_proxy_digests.sql"),
    };
    let groups = match backend {
        Backend::Sqlite => include_str!("../migrations/sqlite/0007_address_groups.sql"),
        Backend::Postgres => include_str!("../migrations/postgres/0007_address_groups.sql"),
        Backend::MySql => include_str!("../migrations/mysql/0007_address_groups.sql"),
    };
    Migrator::with_migrations(vec![
        migration(1, "initial", initial),
        migration(2, "port ranges", port_ranges),
        migration(3, "dashboard sessions", sessions),
        migration(4, "forward controls", controls),
        migration(5, "quotas", quotas),
        migration(6, "proxy digests", digests),
        migration(7, "address groups", groups),
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
        // A relative --data-dir stays relative.
        let relative = sqlite_url(Path::new("data/x.db"));
        assert_eq!(sqlite_path(&relative), Some(PathBuf::from("data/x.db")));
    }

    #[test]
    fn accepts_oslo_network_urls() {
        let url = |u: &str| network_url(u).unwrap();
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
    fn keeps_tls_parameters_and_translates_pymysql_ones() {
        let url = |u: &str| network_url(u).unwrap().unwrap().1;
        // The query survives oslo.db's driver suffix.
        assert_eq!(
            url(
                "postgresql+psycopg2://n:s@db/nav?sslmode=verify-full&sslrootcert=/etc/ca%20x.pem&sslcert=/c.pem&sslkey=/k.pem"
            ),
            "postgresql://n:s@db/nav?sslmode=verify-full&sslrootcert=/etc/ca%20x.pem&sslcert=/c.pem&sslkey=/k.pem"
        );
        assert_eq!(
            url("mysql://n:s@db/nav?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem"),
            "mysql://n:s@db/nav?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem"
        );
        // PyMySQL: a CA means both checks, as PyMySQL does them.
        assert_eq!(
            url(
                "mysql+pymysql://n:s@db/nav?charset=utf8&ssl_ca=/ca.pem&ssl_cert=/c.pem&ssl_key=/k.pem"
            ),
            "mysql://n:s@db/nav?ssl-ca=/ca.pem&ssl-cert=/c.pem&ssl-key=/k.pem&ssl-mode=VERIFY_IDENTITY"
        );
        assert_eq!(
            url("mysql+pymysql://n:s@db/nav?ssl_ca=/ca.pem&ssl_check_hostname=false"),
            "mysql://n:s@db/nav?ssl-ca=/ca.pem&ssl-mode=VERIFY_CA"
        );
        assert_eq!(
            url("mysql+pymysql://n:s@db/nav?ssl_ca=/ca.pem&ssl_verify_cert=false"),
            "mysql://n:s@db/nav?ssl-ca=/ca.pem&ssl-mode=REQUIRED"
        );
        // A client certificate alone: PyMySQL encrypts without checking.
        assert_eq!(
            url("mysql+pymysql://n:s@db/nav?ssl_cert=/c.pem&ssl_key=/k.pem"),
            "mysql://n:s@db/nav?ssl-cert=/c.pem&ssl-key=/k.pem&ssl-mode=REQUIRED"
        );
        // An explicit sqlx mode wins.
        assert_eq!(
            url("mysql+pymysql://n:s@db/nav?ssl_ca=/ca.pem&ssl-mode=VERIFY_CA"),
            "mysql://n:s@db/nav?ssl-ca=/ca.pem&ssl-mode=VERIFY_CA"
        );
    }

    #[test]
    fn refuses_parameters_the_driver_would_ignore() {
        for (url, name) in [
            ("postgresql://n:s@db/nav?ssl_mode=verify-full", "ssl_mode"),
            (
                "postgresql://n:s@db/nav?connect_timeout=5",
                "connect_timeout",
            ),
            (
                "mysql+pymysql://n:s@db/nav?ssl_capath=/etc/ssl",
                "ssl_capath",
            ),
            (
                "mysql://n:s@db/nav?sslmode=VERIFY_IDENTITY&ssl_cipher=x",
                "ssl_cipher",
            ),
            ("mysql://n:s@db/nav?ssl-verify=true", "ssl-verify"),
        ] {
            let err = network_url(url).unwrap_err();
            assert!(
                err.contains(&format!("unknown query parameter \"{name}\"")),
                "{url}: {err}"
            );
            assert!(!err.contains(":s@"), "{err}");
            assert!(check_url(url).is_err());
        }
        for url in [
            "postgresql://n:s@db/nav?sslmode=verify_full",
            "mysql://n:s@db/nav?ssl-mode=verify-identity",
        ] {
            let err = network_url(url).unwrap_err();
            assert!(err.contains("unknown value"), "{url}: {err}");
        }
        let err = network_url("mysql://n:s@db/nav?ssl_verify_cert=maybe").unwrap_err();
        assert!(
            err.contains("ssl_verify_cert=maybe: expected true or false"),
            "{err}"
        );
        assert!(check_url("sqlite:///x.db").is_ok());
        assert!(check_url("postgresql://n:s@db/nav?sslmode=verify-full").is_ok());
        assert!(check_url("oracle://n:s@db/nav").is_err());
    }

    #[test]
    fn names_the_tls_file_that_cannot_be_used() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("my ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let not_pem = dir.path().join("ca.der");
        std::fs::write(&not_pem, [0x30, 0x82]).unwrap();
        let encoded = ca.display().to_string().replace(' ', "%20");
        assert_eq!(
            check_url_files(&format!(
                "postgresql://n:s@db/nav?sslmode=verify-full&sslrootcert={encoded}"
            )),
            Ok(())
        );
        assert_eq!(check_url_files("mysql://n:s@db/nav"), Ok(()));
        let err =
            check_url_files("mysql+pymysql://n:s@db/nav?ssl_ca=/nonexistent/ca.pem").unwrap_err();
        assert!(
            err.starts_with("ssl_ca = /nonexistent/ca.pem: cannot read it"),
            "{err}"
        );
        let err = check_url_files(&format!("mysql://n:s@db/nav?ssl-ca={}", not_pem.display()))
            .unwrap_err();
        assert!(err.contains("not a PEM file"), "{err}");
    }

    #[test]
    fn tells_loopback_hosts() {
        for url in [
            "postgresql://n:s@127.0.0.1:5432/nav?sslmode=disable",
            "mysql://n:p@ss@localhost/nav",
            "mysql://n:s@[::1]:3306/nav",
            "postgresql://n@127.0.0.2/nav",
        ] {
            assert!(url_host_is_loopback(url), "{url}");
        }
        for url in [
            "postgresql://n:s@db.example.org:5432/nav",
            "mysql://n:s@10.0.0.5/nav?ssl-ca=/127.0.0.1",
            "mysql://n:s@[2001:db8::1]:3306/nav",
        ] {
            assert!(!url_host_is_loopback(url), "{url}");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("mysql://nova:p@ss@db/nav"),
            "mysql://nova:***@db/nav"
        );
        assert_eq!(redact("mysql://nova@db/nav"), "mysql://nova@db/nav");
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
        // An `@` in the query is not the end of the credentials.
        assert_eq!(
            redact("mysql://nova:p@ss@db/nav?ssl-ca=/a@b.pem"),
            "mysql://nova:***@db/nav?ssl-ca=/a@b.pem"
        );
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
