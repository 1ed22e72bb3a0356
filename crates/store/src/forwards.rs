//! Queries on the `forwards` table.

use std::net::IpAddr;

use navigator_core::{ForwardId, ForwardStatus, PortForward, PortRange, Protocol};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::sql::{Value, is_unique_violation};
use crate::{Store, StoreError, now};

/// How many times an automatic allocation is retried when another server took
/// the port it found free between its look and its insert.
const ALLOCATION_ATTEMPTS: usize = 16;
/// Ports tried from the in-process cursor before asking the database.
const CURSOR_ATTEMPTS: usize = 4;

const COLUMNS: &str = "id, project_id, description, protocol, external_address, external_port, \
     internal_ip_address, internal_port, instance_id, proxy, status, status_reason, created_at, updated_at";

/// A forward to insert. `external_port` is ignored by
/// [`Store::create_forward_allocating`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewForwardRow {
    pub project_id: String,
    pub description: String,
    pub protocol: Protocol,
    pub external_address: IpAddr,
    pub external_port: u16,
    pub internal_ip_address: IpAddr,
    pub internal_port: u16,
    pub instance_id: Option<String>,
    pub proxy: String,
}

/// Start of the `status_reason` of a forward whose instance was deleted and
/// that is kept, marked `ERROR`, rather than deleted (`[nova]
/// on_instance_delete = mark`). Such a forward is no longer sent to its agent.
pub const INSTANCE_DELETED: &str = "instance deleted: ";

fn instance_deleted_pattern() -> String {
    // No LIKE wildcards in the prefix itself, so it matches literally.
    format!("{INSTANCE_DELETED}%")
}

/// Filters of a listing; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardFilter {
    pub project_id: Option<String>,
    pub instance_id: Option<String>,
    pub protocol: Option<Protocol>,
    pub status: Option<ForwardStatus>,
    pub external_address: Option<IpAddr>,
    pub external_port: Option<u16>,
    pub internal_ip_address: Option<IpAddr>,
    pub proxy: Option<String>,
}

/// Columns a listing can be ordered by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortColumn {
    #[default]
    CreatedAt,
    UpdatedAt,
    Id,
    ExternalPort,
    InternalPort,
    Status,
    Protocol,
}

impl SortColumn {
    fn column(self) -> &'static str {
        match self {
            SortColumn::CreatedAt => "created_at",
            SortColumn::UpdatedAt => "updated_at",
            SortColumn::Id => "id",
            SortColumn::ExternalPort => "external_port",
            SortColumn::InternalPort => "internal_port",
            SortColumn::Status => "status",
            SortColumn::Protocol => "protocol",
        }
    }
}

/// Order and page of a listing. Pages are keyed (by sort value, then id), so a
/// page never repeats or skips a row when others are added in between.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardOrder {
    pub column: SortColumn,
    pub descending: bool,
    pub limit: u32,
    pub marker: Option<ForwardId>,
}

/// A change of target (and description) for an existing forward.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetChange {
    pub internal_ip_address: Option<IpAddr>,
    pub internal_port: Option<u16>,
    pub description: Option<String>,
}

impl Store {
    /// Inserts a forward on the port it names.
    pub async fn create_forward(&self, new: &NewForwardRow) -> Result<PortForward, StoreError> {
        let forward = new_forward(new, new.external_port);
        match self.insert(&forward).await {
            Ok(()) => Ok(forward),
            Err(e) if is_unique_violation(&e) => Err(self.port_taken(&forward).await),
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    /// Inserts a forward on the lowest free port of `pool` for its address and
    /// protocol. Several servers may allocate at once: the unique constraint
    /// turns a lost race into a retry, never into a shared port.
    ///
    /// The lowest-free-port query reads every held port of the pool, and
    /// concurrent creates all find the same port and all but one lose the
    /// insert. So after an allocation this process keeps a cursor just past
    /// the port it took and tries the next ports directly (no query; each
    /// concurrent create gets its own port); the query runs again when the
    /// cursor reaches the pool's end, after a few lost races, and after any
    /// delete in this process, so that freed ports are reused lowest first.
    pub async fn create_forward_allocating(
        &self,
        new: &NewForwardRow,
        pool: PortRange,
    ) -> Result<PortForward, StoreError> {
        let key = (
            new.external_address.to_string(),
            new.protocol.as_str().to_owned(),
        );
        for _ in 0..CURSOR_ATTEMPTS {
            let Some(port) = self.take_cursor(&key, pool) else {
                break;
            };
            let forward = new_forward(new, port);
            match self.insert(&forward).await {
                Ok(()) => return Ok(forward),
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(StoreError::Database(e)),
            }
        }
        let forward = self.allocate_by_query(new, pool).await?;
        self.set_cursor(key, forward.external_port, pool);
        Ok(forward)
    }

    /// The next port of this process's cursor for `key`, advancing it.
    fn take_cursor(&self, key: &(String, String), pool: PortRange) -> Option<u16> {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let next = cursors.get_mut(key)?;
        if *next < pool.first() || *next > pool.last() {
            cursors.remove(key);
            return None;
        }
        let port = *next;
        match port.checked_add(1) {
            Some(after) => *next = after,
            None => {
                cursors.remove(key);
            }
        }
        Some(port)
    }

    fn set_cursor(&self, key: (String, String), taken: u16, pool: PortRange) {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        match taken.checked_add(1).filter(|p| *p <= pool.last()) {
            Some(next) => {
                cursors.insert(key, next);
            }
            None => {
                cursors.remove(&key);
            }
        }
    }

    /// Lowest free port by query, retrying lost races.
    async fn allocate_by_query(
        &self,
        new: &NewForwardRow,
        pool: PortRange,
    ) -> Result<PortForward, StoreError> {
        for attempt in 0..ALLOCATION_ATTEMPTS {
            // The first try takes the lowest free port, which keeps allocation
            // predictable. After a lost race, every contender would find the
            // same "lowest" port again, so later tries start at a random point.
            let start = if attempt == 0 {
                pool.first()
            } else {
                random_port_in(pool)
            };
            let found = match self
                .lowest_free_port(new.external_address, new.protocol, start, pool.last())
                .await?
            {
                Some(port) => Some(port),
                None if start > pool.first() => {
                    self.lowest_free_port(
                        new.external_address,
                        new.protocol,
                        pool.first(),
                        pool.last(),
                    )
                    .await?
                }
                None => None,
            };
            let Some(port) = found else {
                return Err(StoreError::PoolExhausted {
                    address: new.external_address.to_string(),
                    protocol: new.protocol.to_string(),
                    range: pool.to_string(),
                });
            };
            let forward = new_forward(new, port);
            match self.insert(&forward).await {
                Ok(()) => return Ok(forward),
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(StoreError::Database(e)),
            }
        }
        Err(StoreError::PoolExhausted {
            address: new.external_address.to_string(),
            protocol: new.protocol.to_string(),
            range: pool.to_string(),
        })
    }

    /// The lowest port in `first..=last` that no forward holds, found with one
    /// query: either `first` itself, or the port right after a held one.
    async fn lowest_free_port(
        &self,
        address: IpAddr,
        protocol: Protocol,
        first: u16,
        last: u16,
    ) -> Result<Option<u16>, StoreError> {
        // Either `first` itself or the port right after a held one. Written
        // as one CASE without FROM, which every backend accepts (MySQL 5.7
        // refuses `SELECT … WHERE` without a table).
        let sql = "SELECT CASE WHEN NOT EXISTS ( \
                 SELECT 1 FROM forwards WHERE external_address = $3 AND protocol = $4 AND external_port = $1) \
               THEN $1 \
               ELSE (SELECT MIN(f.external_port + 1) FROM forwards f \
                 WHERE f.external_address = $3 AND f.protocol = $4 \
                   AND f.external_port >= $1 AND f.external_port < $2 \
                   AND NOT EXISTS (SELECT 1 FROM forwards g WHERE g.external_address = $3 \
                     AND g.protocol = $4 AND g.external_port = f.external_port + 1)) \
             END AS candidate";
        let row = self
            .fetch_optional(
                sql,
                &[
                    first.into(),
                    last.into(),
                    address.to_string().into(),
                    protocol.as_str().into(),
                ],
            )
            .await?;
        let port: Option<i64> = match row {
            Some(row) => row.try_get(0)?,
            None => None,
        };
        Ok(port.and_then(|p| u16::try_from(p).ok()))
    }

    async fn insert(&self, f: &PortForward) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO forwards (id, project_id, description, protocol, external_address, external_port, \
             internal_ip_address, internal_port, instance_id, proxy, status, status_reason, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
        self.execute(
            sql,
            &[
                f.id.to_string().into(),
                (&f.project_id).into(),
                (&f.description).into(),
                f.protocol.as_str().into(),
                f.external_address.to_string().into(),
                f.external_port.into(),
                f.internal_ip_address.to_string().into(),
                f.internal_port.into(),
                f.instance_id.clone().into(),
                (&f.proxy).into(),
                f.status.as_str().into(),
                f.status_reason.clone().into(),
                (&f.created_at).into(),
                (&f.updated_at).into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// The error for a port already held, naming the holder.
    async fn port_taken(&self, f: &PortForward) -> StoreError {
        let holder = self
            .fetch_optional(
                "SELECT id FROM forwards WHERE external_address = $1 AND protocol = $2 AND external_port = $3",
                &[
                    f.external_address.to_string().into(),
                    f.protocol.as_str().into(),
                    f.external_port.into(),
                ],
            )
            .await
            .and_then(|row| {
                row.map(|row| row.try_get::<String, _>(0))
                    .transpose()
                    .map_err(StoreError::Database)
            });
        match holder {
            Ok(Some(id)) => match id.parse() {
                Ok(holder) => StoreError::PortTaken {
                    address: f.external_address.to_string(),
                    protocol: f.protocol.to_string(),
                    port: f.external_port,
                    holder,
                },
                Err(e) => StoreError::Corrupt {
                    table: "forwards",
                    reason: format!("{e}"),
                },
            },
            // The holder was deleted in between: report the race as a
            // conflict anyway, the client may simply retry.
            Ok(None) => StoreError::PortTaken {
                address: f.external_address.to_string(),
                protocol: f.protocol.to_string(),
                port: f.external_port,
                holder: f.id,
            },
            Err(e) => e,
        }
    }

    pub async fn get_forward(&self, id: ForwardId) -> Result<Option<PortForward>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM forwards WHERE id = $1");
        let row = self.fetch_optional(&sql, &[id.to_string().into()]).await?;
        row.map(|row| from_row(&row)).transpose()
    }

    /// One page of forwards matching `filter`, in `order`.
    pub async fn list_forwards(
        &self,
        filter: &ForwardFilter,
        order: &ForwardOrder,
    ) -> Result<Vec<PortForward>, StoreError> {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        let mut text = |column: &'static str, value: Option<String>| {
            if let Some(value) = value {
                values.push(Value::Text(value));
                conditions.push(format!("{column} = ${}", values.len()));
            }
        };
        text("project_id", filter.project_id.clone());
        text("instance_id", filter.instance_id.clone());
        text("protocol", filter.protocol.map(|p| p.as_str().to_owned()));
        text("status", filter.status.map(|s| s.as_str().to_owned()));
        text(
            "external_address",
            filter.external_address.map(|a| a.to_string()),
        );
        text(
            "internal_ip_address",
            filter.internal_ip_address.map(|a| a.to_string()),
        );
        text("proxy", filter.proxy.clone());
        if let Some(port) = filter.external_port {
            values.push(Value::Int(i64::from(port)));
            conditions.push(format!("external_port = ${}", values.len()));
        }
        let column = order.column.column();
        let (cmp, dir) = if order.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some(marker) = order.marker {
            // The marker must itself be visible through the filter, so that
            // a marker cannot be used to probe other projects' ids.
            let marker_row = self
                .get_forward(marker)
                .await?
                .filter(|f| matches_filter(f, filter))
                .ok_or_else(|| StoreError::BadMarker(marker.to_string()))?;
            let marker_value = match order.column {
                SortColumn::CreatedAt => Value::Text(marker_row.created_at.clone()),
                SortColumn::UpdatedAt => Value::Text(marker_row.updated_at.clone()),
                SortColumn::Id => Value::Text(marker_row.id.to_string()),
                SortColumn::ExternalPort => Value::Int(i64::from(marker_row.external_port)),
                SortColumn::InternalPort => Value::Int(i64::from(marker_row.internal_port)),
                SortColumn::Status => Value::Text(marker_row.status.as_str().to_owned()),
                SortColumn::Protocol => Value::Text(marker_row.protocol.as_str().to_owned()),
            };
            values.push(marker_value);
            let value_at = values.len();
            values.push(Value::Text(marker.to_string()));
            let id_at = values.len();
            conditions.push(format!(
                "({column} {cmp} ${value_at} OR ({column} = ${value_at} AND id {cmp} ${id_at}))"
            ));
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        values.push(Value::Int(i64::from(order.limit)));
        let sql = format!(
            "SELECT {COLUMNS} FROM forwards {where_clause} ORDER BY {column} {dir}, id {dir} LIMIT ${}",
            values.len()
        );
        let rows = self.fetch_all(&sql, &values).await?;
        rows.iter().map(from_row).collect()
    }

    /// Every forward placed on `proxy`: the desired set its agent must carry.
    /// Forwards marked [`INSTANCE_DELETED`] are left out: their target
    /// address may already belong to someone else's new instance.
    pub async fn forwards_on_proxy(&self, proxy: &str) -> Result<Vec<PortForward>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM forwards WHERE proxy = $1 \
             AND NOT (status = 'ERROR' AND COALESCE(status_reason, '') LIKE $2) ORDER BY id"
        );
        let rows = self
            .fetch_all(&sql, &[proxy.into(), instance_deleted_pattern().into()])
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every forward of the instance `instance_id`, of any project.
    pub async fn forwards_of_instance(
        &self,
        instance_id: &str,
    ) -> Result<Vec<PortForward>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM forwards WHERE instance_id = $1 ORDER BY id");
        let rows = self.fetch_all(&sql, &[instance_id.into()]).await?;
        rows.iter().map(from_row).collect()
    }

    /// Applies `change`; a changed target puts the forward back to `PENDING`
    /// until its agent confirms. Returns `None` if the forward is gone.
    pub async fn update_forward(
        &self,
        id: ForwardId,
        change: &TargetChange,
    ) -> Result<Option<PortForward>, StoreError> {
        let retargets = change.internal_ip_address.is_some() || change.internal_port.is_some();
        // One statement, and each column is set from its own old value
        // (COALESCE keeps it when the change does not name it). Two updates
        // of one row therefore serialize on its row lock, and the second
        // sees the first's result, so racing changes of different fields
        // (a description and a retarget) both apply. No assignment reads
        // another assigned column: MySQL evaluates SET left to right with
        // the new values, the others with the old ones.
        let sql = "UPDATE forwards SET \
               internal_ip_address = COALESCE($2, internal_ip_address), \
               internal_port = COALESCE($3, internal_port), \
               description = COALESCE($4, description), \
               status = CASE WHEN $5 THEN 'PENDING' ELSE status END, \
               status_reason = CASE WHEN $5 THEN NULL ELSE status_reason END, \
               updated_at = $6 \
             WHERE id = $1";
        let done = self
            .execute(
                sql,
                &[
                    id.to_string().into(),
                    change.internal_ip_address.map(|ip| ip.to_string()).into(),
                    change.internal_port.into(),
                    change.description.clone().into(),
                    retargets.into(),
                    now().into(),
                ],
            )
            .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.get_forward(id).await
    }

    /// Records what the agent reported. Only a change of status (or reason)
    /// is written, so steady heartbeats cost no writes. A forward marked
    /// [`INSTANCE_DELETED`] keeps its mark (a late agent report must not
    /// clear it); only a retarget ([`Store::update_forward`]) or a delete does.
    pub async fn set_status(
        &self,
        id: ForwardId,
        status: ForwardStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE forwards SET status = $2, status_reason = $3, updated_at = $4 \
             WHERE id = $1 AND (status <> $2 OR COALESCE(status_reason, '') <> COALESCE($3, '')) \
             AND NOT (status = 'ERROR' AND COALESCE(status_reason, '') LIKE $5)";
        let done = self
            .execute(
                sql,
                &[
                    id.to_string().into(),
                    status.as_str().into(),
                    reason.into(),
                    now().into(),
                    instance_deleted_pattern().into(),
                ],
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a forward; `false` if there was none.
    pub async fn delete_forward(&self, id: ForwardId) -> Result<bool, StoreError> {
        // A freed port may be lower than a cursor: the next allocation asks.
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let done = self
            .execute(
                "DELETE FROM forwards WHERE id = $1",
                &[id.to_string().into()],
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Number of forwards per proxy host.
    pub async fn forward_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .fetch_all(
                "SELECT proxy, COUNT(*) AS n FROM forwards GROUP BY proxy",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get("n")?;
                Ok((row.try_get("proxy")?, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }
}

fn matches_filter(f: &PortForward, filter: &ForwardFilter) -> bool {
    fn ok<T: PartialEq>(want: &Option<T>, have: &T) -> bool {
        want.as_ref().is_none_or(|w| w == have)
    }
    ok(&filter.project_id, &f.project_id)
        && filter
            .instance_id
            .as_ref()
            .is_none_or(|w| f.instance_id.as_ref() == Some(w))
        && ok(&filter.protocol, &f.protocol)
        && ok(&filter.status, &f.status)
        && ok(&filter.external_address, &f.external_address)
        && ok(&filter.external_port, &f.external_port)
        && ok(&filter.internal_ip_address, &f.internal_ip_address)
        && ok(&filter.proxy, &f.proxy)
}

fn new_forward(new: &NewForwardRow, external_port: u16) -> PortForward {
    let now = now();
    PortForward {
        id: ForwardId::new_random(),
        project_id: new.project_id.clone(),
        description: new.description.clone(),
        protocol: new.protocol,
        external_address: new.external_address,
        external_port,
        internal_ip_address: new.internal_ip_address,
        internal_port: new.internal_port,
        instance_id: new.instance_id.clone(),
        proxy: new.proxy.clone(),
        status: ForwardStatus::Pending,
        status_reason: None,
        created_at: now.clone(),
        updated_at: now,
    }
}

/// A port picked at random in `pool`; the randomness comes from a v4 UUID,
/// which is plenty for spreading contenders apart.
fn random_port_in(pool: PortRange) -> u16 {
    let offset = uuid::Uuid::new_v4().as_u128() % u128::from(pool.len());
    pool.first()
        .saturating_add(u16::try_from(offset).unwrap_or(0))
}

fn from_row(row: &AnyRow) -> Result<PortForward, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "forwards",
        reason,
    };
    let text = |name: &str| row.try_get::<String, _>(name).map_err(StoreError::Database);
    let port = |name: &str| -> Result<u16, StoreError> {
        let value: i64 = row.try_get(name)?;
        u16::try_from(value).map_err(|_| corrupt(format!("{name} {value} is not a port")))
    };
    let ip = |name: &str| -> Result<IpAddr, StoreError> {
        let value = text(name)?;
        value
            .parse()
            .map_err(|_| corrupt(format!("{name} {value:?} is not an address")))
    };
    let id = text("id")?;
    Ok(PortForward {
        id: id
            .parse()
            .map_err(|_| corrupt(format!("id {id:?} is not a UUID")))?,
        project_id: text("project_id")?,
        description: text("description")?,
        protocol: text("protocol")?
            .parse()
            .map_err(|e| corrupt(format!("{e}")))?,
        external_address: ip("external_address")?,
        external_port: port("external_port")?,
        internal_ip_address: ip("internal_ip_address")?,
        internal_port: port("internal_port")?,
        instance_id: row.try_get("instance_id")?,
        proxy: text("proxy")?,
        status: text("status")?
            .parse()
            .map_err(|e| corrupt(format!("{e}")))?,
        status_reason: row.try_get("status_reason")?,
        created_at: text("created_at")?,
        updated_at: text("updated_at")?,
    })
}
