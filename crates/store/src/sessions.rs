//! Dashboard sessions and the dashboard's shared secrets, so that every
//! server on one database knows every session and verifies every login form.
//!
//! A session is stored under a hash of the browser's session id (the caller
//! hashes; the id itself is never given to the store), so reading this table
//! does not let anyone present a session cookie. The row does hold the
//! session's credential (a Keystone token until its expiry): the database is
//! trusted with everything Navigator knows already.
//!
//! The table is bounded without ever refusing a login: [`Store::insert_session`]
//! ends, in the same transaction, the least recently used sessions beyond
//! each cap (per owner, per client address, in all). Two servers inserting
//! at the same instant for one owner may each count before the other
//! inserts, leaving one session over the cap until the next login; no lock
//! is taken to prevent that (Galera does not replicate them), and the bound
//! still holds to within the number of servers.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::sql::Value;
use crate::{Backend, Store, StoreError};

const COLUMNS: &str = "credential_kind, credential, user_name, project_name, csrf, \
                       proxies_visible, owner, client, expires_at, last_used, flash_error, flash_text";

/// How a session reaches the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A Keystone token (`X-Auth-Token`).
    Token,
    /// noauth: a project id (`X-Project-Id`).
    Project,
}

impl CredentialKind {
    fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Token => "token",
            CredentialKind::Project => "project",
        }
    }
}

/// One stored dashboard session.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub kind: CredentialKind,
    /// The Keystone token or the noauth project: a bearer secret.
    pub credential: String,
    /// The user name shown in the page's header.
    pub user: String,
    /// The project name (or id) shown in the page's header.
    pub project: String,
    /// The synchronizer token of the session's forms.
    pub csrf: String,
    pub proxies_visible: bool,
    /// Whose session it is, for the per-owner cap.
    pub owner: String,
    /// The client address that logged in, for the per-address cap.
    pub client: Option<String>,
    /// The credential's expiry; the session ends with it.
    pub expires_at: DateTime<Utc>,
    /// When the session was last used (coarsely: see the server's session
    /// module), for least-recently-used eviction.
    pub last_used: DateTime<Utc>,
    /// A message to show once: (is an error, text).
    pub flash: Option<(bool, String)>,
}

impl std::fmt::Debug for SessionRecord {
    // The credential is a bearer secret: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("kind", &self.kind)
            .field("user", &self.user)
            .field("project", &self.project)
            .field("owner", &self.owner)
            .field("client", &self.client)
            .field("expires_at", &self.expires_at)
            .field("last_used", &self.last_used)
            .finish_non_exhaustive()
    }
}

/// The caps of the session table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    pub total: usize,
    pub per_owner: usize,
    /// 0: no per-address cap.
    pub per_address: usize,
}

/// A time as stored: RFC 3339 UTC with microseconds, fixed width, so that
/// text order is time order.
fn stored(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            table: "dashboard_sessions",
            reason: format!("time {text:?}: {e}"),
        })
}

fn record(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    let kind = match row.try_get::<String, _>("credential_kind")?.as_str() {
        "token" => CredentialKind::Token,
        "project" => CredentialKind::Project,
        other => {
            return Err(StoreError::Corrupt {
                table: "dashboard_sessions",
                reason: format!("credential_kind {other:?}"),
            });
        }
    };
    let flash_error: Option<i64> = row.try_get("flash_error")?;
    let flash_text: Option<String> = row.try_get("flash_text")?;
    Ok(SessionRecord {
        kind,
        credential: row.try_get("credential")?,
        user: row.try_get("user_name")?,
        project: row.try_get("project_name")?,
        csrf: row.try_get("csrf")?,
        proxies_visible: row.try_get::<i64, _>("proxies_visible")? != 0,
        owner: row.try_get("owner")?,
        client: row.try_get("client")?,
        expires_at: parse_time(&row.try_get::<String, _>("expires_at")?)?,
        last_used: parse_time(&row.try_get::<String, _>("last_used")?)?,
        flash: flash_text.map(|text| (flash_error.unwrap_or(0) != 0, text)),
    })
}

impl Store {
    /// Stores `session` under `id_hash`, first ending expired sessions and,
    /// for each cap `session` falls under that is full, the least recently
    /// used sessions under it; all in one transaction. Never refuses for
    /// lack of room. Returns how many live sessions were ended for room.
    pub async fn insert_session(
        &self,
        id_hash: &str,
        session: &SessionRecord,
        limits: &SessionLimits,
    ) -> Result<usize, StoreError> {
        let now = stored(Utc::now());
        let mut attempt = 1;
        loop {
            match self
                .insert_session_once(id_hash, session, limits, &now)
                .await
            {
                Err(StoreError::Database(e))
                    if crate::sql::is_conflict(&e) && attempt < crate::sql::CONFLICT_ATTEMPTS =>
                {
                    tracing::debug!(attempt, error = %e, "session insert aborted by a conflict; retrying");
                    crate::sql::backoff(attempt).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn insert_session_once(
        &self,
        id_hash: &str,
        session: &SessionRecord,
        limits: &SessionLimits,
        now: &str,
    ) -> Result<usize, StoreError> {
        let _writer = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        self.run(
            &mut tx,
            "DELETE FROM dashboard_sessions WHERE expires_at <= $1",
            &[now.into()],
        )
        .await?;
        let mut evicted = 0;
        // Oldest first; the caps keep these lists short.
        let by_owner = self
            .ids(
                &mut tx,
                "SELECT id_hash FROM dashboard_sessions WHERE owner = $1 \
                 ORDER BY last_used, id_hash",
                &[(&session.owner).into()],
            )
            .await?;
        evicted += self.evict(&mut tx, &by_owner, limits.per_owner).await?;
        if let Some(client) = session.client.as_ref().filter(|_| limits.per_address > 0) {
            let by_client = self
                .ids(
                    &mut tx,
                    "SELECT id_hash FROM dashboard_sessions WHERE client = $1 \
                     ORDER BY last_used, id_hash",
                    &[client.into()],
                )
                .await?;
            evicted += self.evict(&mut tx, &by_client, limits.per_address).await?;
        }
        let (text, args) = self.prepare("SELECT COUNT(*) FROM dashboard_sessions", &[])?;
        let count: i64 = sqlx::query_with(sqlx::AssertSqlSafe(text), args)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let count = usize::try_from(count).unwrap_or(0);
        if count >= limits.total {
            let excess = count + 1 - limits.total.max(1);
            let oldest = self
                .ids(
                    &mut tx,
                    "SELECT id_hash FROM dashboard_sessions ORDER BY last_used, id_hash LIMIT $1",
                    &[i64::try_from(excess).unwrap_or(i64::MAX).into()],
                )
                .await?;
            // A cap of 1 makes `evict` end all of them.
            evicted += self.evict(&mut tx, &oldest, 1).await?;
        }
        let (flash_error, flash_text) = match &session.flash {
            Some((error, text)) => (Some(i64::from(*error)), Some(text.clone())),
            None => (None, None),
        };
        self.run(
            &mut tx,
            &format!(
                "INSERT INTO dashboard_sessions (id_hash, {COLUMNS}, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ),
            &[
                id_hash.into(),
                session.kind.as_str().into(),
                (&session.credential).into(),
                (&session.user).into(),
                (&session.project).into(),
                (&session.csrf).into(),
                i64::from(session.proxies_visible).into(),
                (&session.owner).into(),
                session.client.clone().into(),
                stored(session.expires_at).into(),
                stored(session.last_used).into(),
                Value::OptInt(flash_error),
                flash_text.into(),
                now.into(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(evicted)
    }

    async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        sql: &str,
        values: &[Value],
    ) -> Result<u64, StoreError> {
        let (text, args) = self.prepare(sql, values)?;
        Ok(sqlx::query_with(sqlx::AssertSqlSafe(text), args)
            .execute(&mut **tx)
            .await?
            .rows_affected())
    }

    async fn ids(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        sql: &str,
        values: &[Value],
    ) -> Result<Vec<String>, StoreError> {
        let (text, args) = self.prepare(sql, values)?;
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(text), args)
            .fetch_all(&mut **tx)
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?)
    }

    /// Deletes the first of `oldest_first` until fewer than `cap` remain, so
    /// one more fits; returns how many it deleted.
    async fn evict(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        oldest_first: &[String],
        cap: usize,
    ) -> Result<usize, StoreError> {
        if oldest_first.len() < cap {
            return Ok(0);
        }
        let excess = oldest_first.len() + 1 - cap.max(1);
        let mut deleted = 0;
        for id in &oldest_first[..excess] {
            let n = self
                .run(
                    tx,
                    "DELETE FROM dashboard_sessions WHERE id_hash = $1",
                    &[id.into()],
                )
                .await?;
            deleted += usize::try_from(n).unwrap_or(0);
        }
        Ok(deleted)
    }

    /// The live session stored under `id_hash`. An expired one is deleted
    /// and `None`.
    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let Some(row) = self
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM dashboard_sessions WHERE id_hash = $1"),
                &[id_hash.into()],
            )
            .await?
        else {
            return Ok(None);
        };
        let session = record(&row)?;
        if session.expires_at <= Utc::now() {
            self.execute(
                "DELETE FROM dashboard_sessions WHERE id_hash = $1",
                &[id_hash.into()],
            )
            .await?;
            return Ok(None);
        }
        Ok(Some(session))
    }

    /// Records that session `id_hash` was used at `at`.
    pub async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.execute(
            "UPDATE dashboard_sessions SET last_used = $2 WHERE id_hash = $1",
            &[id_hash.into(), stored(at).into()],
        )
        .await?;
        Ok(())
    }

    /// Sets (or with `None` clears) the session's one-time message.
    pub async fn set_session_flash(
        &self,
        id_hash: &str,
        flash: Option<(bool, &str)>,
    ) -> Result<(), StoreError> {
        let (error, text) = match flash {
            Some((error, text)) => (Some(i64::from(error)), Some(text.to_owned())),
            None => (None, None),
        };
        self.execute(
            "UPDATE dashboard_sessions SET flash_error = $2, flash_text = $3 WHERE id_hash = $1",
            &[id_hash.into(), Value::OptInt(error), text.into()],
        )
        .await?;
        Ok(())
    }

    /// Ends session `id_hash`, returning it (`None` if there was none).
    pub async fn delete_session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let found = self
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM dashboard_sessions WHERE id_hash = $1"),
                &[id_hash.into()],
            )
            .await?;
        let deleted = self
            .execute(
                "DELETE FROM dashboard_sessions WHERE id_hash = $1",
                &[id_hash.into()],
            )
            .await?
            .rows_affected();
        // Another server may have ended it in between: only the one whose
        // delete removed the row reports it (and revokes its token).
        match found {
            Some(row) if deleted > 0 => Ok(Some(record(&row)?)),
            _ => Ok(None),
        }
    }

    /// Deletes every session whose credential has expired; returns how many.
    pub async fn delete_expired_sessions(&self) -> Result<u64, StoreError> {
        Ok(self
            .execute(
                "DELETE FROM dashboard_sessions WHERE expires_at <= $1",
                &[stored(Utc::now()).into()],
            )
            .await?
            .rows_affected())
    }

    /// How many sessions are stored (live or expired but not yet deleted).
    pub async fn count_sessions(&self) -> Result<u64, StoreError> {
        let row = self
            .fetch_optional("SELECT COUNT(*) FROM dashboard_sessions", &[])
            .await?;
        let n: i64 = match row {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The shared secret `name`: `fresh` if no server stored one before,
    /// else the one stored first. Racing servers all end with the same.
    pub async fn shared_secret(&self, name: &str, fresh: &str) -> Result<String, StoreError> {
        let insert = match self.backend {
            Backend::Sqlite | Backend::Postgres => {
                "INSERT INTO dashboard_keys (name, secret, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING"
            }
            Backend::MySql => {
                "INSERT IGNORE INTO dashboard_keys (name, secret, created_at) VALUES ($1, $2, $3)"
            }
        };
        self.execute(
            insert,
            &[name.into(), fresh.into(), stored(Utc::now()).into()],
        )
        .await?;
        let row = self
            .fetch_optional(
                "SELECT secret FROM dashboard_keys WHERE name = $1",
                &[name.into()],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                table: "dashboard_keys",
                reason: format!("{name} vanished after it was stored"),
            })?;
        Ok(row.try_get(0)?)
    }
}
