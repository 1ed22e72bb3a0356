//! Quotas per project: how many forwards and external ports a project may
//! hold, and how many it holds.
//!
//! The limits are an admin's override (`quotas`, one row per project, a
//! NULL column meaning "the default") or else the `[quotas]` defaults the
//! server hands to [`Store::set_default_quotas`]; `-1` is unlimited.
//!
//! What a project holds is a counter row (`quota_usages`), not a `COUNT(*)`:
//! under READ COMMITTED or REPEATABLE READ two servers counting at once
//! would both see room for one more and both insert. Instead a create's
//! transaction ends with a conditional `UPDATE` of the project's counter
//! row ([`claim`]), and is rolled back when it changes no row: the row lock
//! it takes makes racing creates of one project wait for each other (only
//! from the claim to the commit, since it comes last), and PostgreSQL
//! (re-evaluating the condition on the row version it waited for) and
//! InnoDB (whose UPDATE reads the latest committed row) judge the limit on
//! the counter the winner left. SQLite serialises writers anyway. A create
//! that fails on a taken port never gets to claim; a delete gives the
//! forward and its ports back in its own transaction (`forwards.rs`).
//! Nothing takes a table lock or an advisory lock, which Galera would not
//! replicate.

use std::fmt;

use sqlx::Row;

use crate::sql::Value;
use crate::{Backend, Store, StoreError, now};

/// A quota'd resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Forwards (a port range counts as one forward).
    Forwards,
    /// External ports (each port of a range counts).
    Ports,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Forwards => "forwards",
            Resource::Ports => "ports",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits of both resources; `-1` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaLimits {
    pub forwards: i64,
    pub ports: i64,
}

impl QuotaLimits {
    /// No limit on anything.
    pub const UNLIMITED: QuotaLimits = QuotaLimits {
        forwards: -1,
        ports: -1,
    };
}

impl Default for QuotaLimits {
    fn default() -> QuotaLimits {
        QuotaLimits::UNLIMITED
    }
}

/// A resource's limit in force and what the project uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaUsage {
    /// `-1`: unlimited.
    pub limit: i64,
    pub used: i64,
}

impl QuotaUsage {
    /// Whether the project uses more than its limit (possible after an admin
    /// lowered it below the use, which is allowed, as in Neutron).
    pub fn is_over(&self) -> bool {
        self.limit >= 0 && self.used > self.limit
    }
}

/// A project's quota: limits in force, use, and whether an admin set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectQuota {
    pub project_id: String,
    pub forwards: QuotaUsage,
    pub ports: QuotaUsage,
    /// The admin's override, column by column (`None`: the default).
    pub overrides: (Option<i64>, Option<i64>),
}

impl ProjectQuota {
    /// The resources whose use is above their limit.
    pub fn over(&self) -> Vec<Resource> {
        let mut over = Vec::new();
        if self.forwards.is_over() {
            over.push(Resource::Forwards);
        }
        if self.ports.is_over() {
            over.push(Resource::Ports);
        }
        over
    }
}

/// The limit in force for one column: the override, else the default bound
/// as `$default`. One scalar subquery on `quotas`, so the claim needs no
/// earlier read (and no second round trip).
fn limit_sql(column: &str, default: &str) -> String {
    format!("COALESCE((SELECT q.{column} FROM quotas q WHERE q.project_id = $1), {default})")
}

/// The statement that claims one forward of `ports` ports for `project` in
/// a create's transaction: it changes the counter row only if neither limit
/// is passed, so "no row changed" means over quota (or no counter row yet,
/// see [`Store::ensure_usage_row`]).
pub(crate) fn claim(project: &str, ports: i64, defaults: QuotaLimits) -> (String, Vec<Value>) {
    let forwards_limit = limit_sql("forwards", "$3");
    let ports_limit = limit_sql("ports", "$4");
    let sql = format!(
        "UPDATE quota_usages SET forwards = forwards + 1, ports = ports + $2 \
         WHERE project_id = $1 \
         AND ({forwards_limit} < 0 OR forwards + 1 <= {forwards_limit}) \
         AND ({ports_limit} < 0 OR ports + $2 <= {ports_limit})"
    );
    (
        sql,
        vec![
            project.into(),
            ports.into(),
            defaults.forwards.into(),
            defaults.ports.into(),
        ],
    )
}

/// The statement that gives back one forward of `ports` ports, in a
/// delete's transaction.
pub(crate) fn release(project: &str, ports: i64) -> (String, Vec<Value>) {
    (
        "UPDATE quota_usages SET forwards = forwards - 1, ports = ports - $2 WHERE project_id = $1"
            .to_owned(),
        vec![project.into(), ports.into()],
    )
}

impl Store {
    /// Sets the `[quotas]` defaults (the server does, at start).
    pub fn set_default_quotas(&self, limits: QuotaLimits) {
        *self
            .default_quotas
            .write()
            .unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// The `[quotas]` defaults in force.
    pub fn default_quotas(&self) -> QuotaLimits {
        *self
            .default_quotas
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Creates `project`'s counter row (at zero) if it has none; projects get
    /// one at their first create. Racing servers both succeed: a conflict is
    /// ignored.
    pub(crate) async fn ensure_usage_row(&self, project: &str) -> Result<(), sqlx::Error> {
        let sql = match self.backend {
            Backend::MySql => {
                "INSERT INTO quota_usages (project_id, forwards, ports) VALUES ($1, 0, 0) \
                 ON DUPLICATE KEY UPDATE project_id = project_id"
            }
            _ => {
                "INSERT INTO quota_usages (project_id, forwards, ports) VALUES ($1, 0, 0) \
                 ON CONFLICT (project_id) DO NOTHING"
            }
        };
        self.execute(sql, &[project.into()]).await?;
        Ok(())
    }

    /// `project`'s quota: limits in force and use.
    pub async fn project_quota(&self, project: &str) -> Result<ProjectQuota, StoreError> {
        let defaults = self.default_quotas();
        let overrides = self
            .fetch_optional(
                "SELECT forwards, ports FROM quotas WHERE project_id = $1",
                &[project.into()],
            )
            .await?
            .map(|row| -> Result<_, StoreError> {
                Ok((
                    row.try_get::<Option<i64>, _>(0)?,
                    row.try_get::<Option<i64>, _>(1)?,
                ))
            })
            .transpose()?
            .unwrap_or((None, None));
        let used = self
            .fetch_optional(
                "SELECT forwards, ports FROM quota_usages WHERE project_id = $1",
                &[project.into()],
            )
            .await?
            .map(|row| -> Result<_, StoreError> {
                Ok((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?))
            })
            .transpose()?
            .unwrap_or((0, 0));
        Ok(ProjectQuota {
            project_id: project.to_owned(),
            forwards: QuotaUsage {
                limit: overrides.0.unwrap_or(defaults.forwards),
                used: used.0,
            },
            ports: QuotaUsage {
                limit: overrides.1.unwrap_or(defaults.ports),
                used: used.1,
            },
            overrides,
        })
    }

    /// Sets `project`'s limits; a `None` keeps what the project had (its
    /// override, or the default). Limits below the use are accepted (the
    /// project then cannot create until it is back under); the caller says
    /// so. Limits are `-1` or more (the schema checks it too).
    pub async fn set_project_quota(
        &self,
        project: &str,
        forwards: Option<i64>,
        ports: Option<i64>,
    ) -> Result<ProjectQuota, StoreError> {
        let upsert = match self.backend {
            Backend::MySql => {
                "ON DUPLICATE KEY UPDATE forwards = COALESCE($2, forwards), \
                 ports = COALESCE($3, ports), updated_at = $4"
            }
            _ => {
                "ON CONFLICT (project_id) DO UPDATE SET \
                 forwards = COALESCE($2, quotas.forwards), \
                 ports = COALESCE($3, quotas.ports), updated_at = $4"
            }
        };
        let to_value = |n: Option<i64>| Value::OptInt(n);
        self.execute(
            &format!(
                "INSERT INTO quotas (project_id, forwards, ports, updated_at) VALUES ($1, $2, $3, $4) {upsert}"
            ),
            &[
                project.into(),
                to_value(forwards),
                to_value(ports),
                now().into(),
            ],
        )
        .await?;
        self.project_quota(project).await
    }

    /// Removes `project`'s override, so the defaults apply again; `false` if
    /// it had none.
    pub async fn delete_project_quota(&self, project: &str) -> Result<bool, StoreError> {
        let done = self
            .execute(
                "DELETE FROM quotas WHERE project_id = $1",
                &[project.into()],
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The error for a create of `ports` ports that [`claim`] refused:
    /// which resource, its use and its limit, as they are now.
    pub(crate) async fn over_quota(&self, project: &str, ports: i64) -> StoreError {
        let quota = match self.project_quota(project).await {
            Ok(quota) => quota,
            Err(e) => return e,
        };
        let forwards = quota.forwards;
        let (resource, usage, wanted) =
            if forwards.limit >= 0 && forwards.used.saturating_add(1) > forwards.limit {
                (
                    Resource::Forwards,
                    forwards,
                    forwards.used.saturating_add(1),
                )
            } else {
                (
                    Resource::Ports,
                    quota.ports,
                    quota.ports.used.saturating_add(ports),
                )
            };
        StoreError::OverQuota {
            project: project.to_owned(),
            resource,
            used: usage.used,
            limit: usage.limit,
            wanted,
        }
    }
}
