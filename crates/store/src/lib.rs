//! All of Navigator's SQL: the schema migrations and every query, behind a
//! [`Store`] that speaks in core types.
//!
//! The database is the single source of truth for desired state. What must
//! never happen is enforced by the schema itself (one forward per external
//! address, protocol and port), so that any number of API servers can write
//! at once and a race ends in a clean [`StoreError::PortTaken`], never in two
//! forwards on one port.

mod forwards;
mod proxies;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use navigator_core::ForwardId;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{SqlStr, SqlitePool};

pub use forwards::{ForwardFilter, ForwardOrder, NewForwardRow, SortColumn, TargetChange};
pub use proxies::ProxyRecord;

/// How long a writer waits for SQLite's lock before giving up. Writes are
/// short, so this is only reached when something is badly wrong.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported database connection {0:?}: expected sqlite:///PATH (PostgreSQL and MySQL arrive with cluster mode)"
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
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Connect { .. })
    }
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
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

impl Store {
    /// Opens the database named by an oslo.db-style URL, creating a SQLite file
    /// (and its directory) if missing. Does not migrate: see [`Store::migrate`].
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let path = sqlite_path(url).ok_or_else(|| StoreError::UnsupportedUrl(redact(url)))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Connect {
                url: url.to_owned(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Connect {
                url: url.to_owned(),
                source,
            })?
            .filename(&path)
            .create_if_missing(true)
            // WAL lets readers proceed while one writer commits.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                url: url.to_owned(),
                source,
            })?;
        Ok(Store { pool })
    }

    /// Applies every migration not yet applied (`navigator-server db sync`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
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
    match rest.split_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

fn migrator() -> Migrator {
    let migration = |version: i64, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            SqlStr::from_static(sql),
            false,
        )
    };
    Migrator::with_migrations(vec![migration(
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    )])
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
        assert_eq!(sqlite_path("postgresql://x"), None);
        assert_eq!(sqlite_url(Path::new("/tmp/x.db")), "sqlite:///tmp/x.db");
    }

    #[tokio::test]
    async fn migrate_is_idempotent() {
        let (store, _dir) = testing::store().await;
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn unsupported_urls_are_named() {
        let err = Store::connect("postgresql://u:p@h/db").await.unwrap_err();
        assert!(err.to_string().contains("postgresql://u:***@h/db"), "{err}");
    }
}
