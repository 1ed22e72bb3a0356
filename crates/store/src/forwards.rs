//! Queries on the `forwards` table.

use std::fmt::Write as _;
use std::net::IpAddr;

use navigator_core::{
    Controls, ForwardId, ForwardStatus, PortForward, PortRange, Protocol, ProxyProtocol, parse_cidr,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::sql::{Tx, Value, is_unique_violation, retrying};
use crate::{Store, StoreError, now};

/// How many times an automatic allocation is retried when another server took
/// the port it found free between its look and its insert.
const ALLOCATION_ATTEMPTS: usize = 16;
/// Held ports read per query while looking for a free one.
const SCAN_WINDOW: usize = 512;
/// Ports a cursor hands out without a collision before its earlier
/// collisions are forgotten.
const SMOOTH_RUN: u16 = 16;

/// A process's next port to try for one external address and protocol; see
/// [`Store::create_forward_allocating`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor {
    next: u16,
    /// Ports found held since the cursor last handed out [`SMOOTH_RUN`]
    /// ports in a row.
    collisions: u8,
    handed_out: u16,
}

pub(crate) const COLUMNS: &str = "id, project_id, description, protocol, external_address, external_port, \
     external_port_end, internal_ip_address, internal_port, internal_port_end, instance_id, proxy, \
     status, status_reason, created_at, updated_at, allowed_cidrs, max_connections, proxy_protocol";

/// Rows of `forward_ports` inserted per statement: 4 values each, well under
/// every backend's limit on bound values.
const PORT_ROWS_PER_INSERT: usize = 250;

/// A forward to insert. `external_port` is ignored by
/// [`Store::create_forward_allocating`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewForwardRow {
    pub project_id: String,
    pub description: String,
    pub protocol: Protocol,
    pub external_address: IpAddr,
    /// The first external port.
    pub external_port: u16,
    /// External ports from the first: 1 for a single-port forward. The
    /// caller checked the range rules (`navigator_core::check_port_mapping`).
    pub ports: u16,
    pub internal_ip_address: IpAddr,
    pub internal_port: u16,
    /// The last internal port: `internal_port` for one port or an N:1 range.
    pub internal_port_end: u16,
    pub instance_id: Option<String>,
    pub proxy: String,
    /// Allowlist, connection limit and PROXY protocol; the caller checked
    /// that the proxy's backend can enforce them.
    pub controls: Controls,
}

/// Start of the `status_reason` of a forward whose instance was deleted and
/// that is kept, marked `ERROR`, rather than deleted (`[nova]
/// on_instance_delete = mark`). Such a forward is no longer sent to its agent.
pub const INSTANCE_DELETED: &str = "instance deleted: ";

pub(crate) fn instance_deleted_pattern() -> String {
    // No LIKE wildcards in the prefix itself, so it matches literally.
    format!("{INSTANCE_DELETED}%")
}

/// Status writes per transaction in [`Store::set_reported_statuses`].
const STATUS_WRITES_PER_TRANSACTION: usize = 500;

/// One status an agent reported, for [`Store::set_reported_statuses`].
#[derive(Clone, Debug)]
pub struct StatusReport {
    pub id: ForwardId,
    pub version: ReportedVersion,
    pub status: ForwardStatus,
    pub reason: Option<String>,
}

/// What a proxy holds: forwards, and the external ports they take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyUsage {
    pub forwards: u64,
    pub ports: u64,
}

/// The columns a reported status must still match: the reporting proxy
/// and, when the agent said what it applied, that version.
fn reported_conditions(version: &ReportedVersion) -> Vec<(&'static str, Value)> {
    let mut only_if: Vec<(&str, Value)> = vec![("proxy", version.proxy.as_str().into())];
    if let Some(applied) = &version.applied {
        only_if.extend([
            ("protocol", applied.protocol.as_str().into()),
            (
                "external_address",
                applied.external_address.to_string().into(),
            ),
            ("external_port", applied.external_port.into()),
            (
                "internal_ip_address",
                applied.internal_ip_address.to_string().into(),
            ),
            ("internal_port", applied.internal_port.into()),
        ]);
        if let Some(controls) = &applied.controls {
            // NULL and empty are the same list, and no limit is NULL.
            only_if.extend([
                ("COALESCE(allowed_cidrs, '')", cidr_list(controls).into()),
                (
                    "COALESCE(max_connections, 0)",
                    i64::from(controls.max_connections.unwrap_or(0)).into(),
                ),
                ("proxy_protocol", controls.proxy_protocol.as_str().into()),
            ]);
        }
    }
    only_if
}

/// The `UPDATE` that records `status` and `reason` for forward `id`: only a
/// change, never over the mark of a deleted instance, and only where each
/// column of `only_if` has its value.
fn status_statement(
    id: ForwardId,
    status: ForwardStatus,
    reason: Option<&str>,
    only_if: Vec<(&str, Value)>,
) -> (String, Vec<Value>) {
    let mut values: Vec<Value> = vec![
        id.to_string().into(),
        status.as_str().into(),
        reason.into(),
        now().into(),
        instance_deleted_pattern().into(),
    ];
    let mut sql = format!(
        "UPDATE forwards SET status = $2, status_reason = $3, updated_at = $4 \
         WHERE id = $1 AND (status <> $2 OR COALESCE(status_reason, '') <> COALESCE($3, '')) \
         AND {}",
        not_marked(5)
    );
    for (column, value) in only_if {
        values.push(value);
        let _ = write!(sql, " AND {column} = ${}", values.len());
    }
    (sql, values)
}

/// SQL condition true for a forward that is not marked [`INSTANCE_DELETED`],
/// with the pattern bound as parameter `$n`.
pub(crate) fn not_marked(n: usize) -> String {
    format!("NOT (status = 'ERROR' AND COALESCE(status_reason, '') LIKE ${n})")
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

/// What a status report is about: the proxy that sent it and, when the agent
/// said so, the version of the forward it applied. A report is recorded only
/// if the forward is still on that proxy with that version, so a late report
/// about a forward that was retargeted or moved since cannot mark the current
/// version `ACTIVE` or `ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedVersion {
    pub proxy: String,
    pub applied: Option<AppliedVersion>,
}

/// The fields of a forward that its agent acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedVersion {
    pub protocol: Protocol,
    pub external_address: IpAddr,
    pub external_port: u16,
    pub internal_ip_address: IpAddr,
    pub internal_port: u16,
    /// The controls applied; `None` compares none (a report that does not
    /// say what it applied).
    pub controls: Option<Controls>,
}

impl From<&PortForward> for ReportedVersion {
    fn from(f: &PortForward) -> ReportedVersion {
        ReportedVersion {
            proxy: f.proxy.clone(),
            applied: Some(AppliedVersion {
                protocol: f.protocol,
                external_address: f.external_address,
                external_port: f.external_port,
                internal_ip_address: f.internal_ip_address,
                internal_port: f.internal_port,
                controls: Some(f.controls.clone()),
            }),
        }
    }
}

/// Where a forward of a failed proxy goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub from_proxy: String,
    pub to_proxy: String,
    pub external_address: IpAddr,
    /// Pool of the new proxy, for when the forward's port is taken there.
    pub pool: PortRange,
}

/// A change of target (and description) for an existing forward.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetChange {
    pub internal_ip_address: Option<IpAddr>,
    pub internal_port: Option<u16>,
    /// With `internal_port`, the last internal port: a range keeps its size
    /// (and an N:1 forward its single port), so the caller computes it.
    pub internal_port_end: Option<u16>,
    pub description: Option<String>,
    /// A new allowlist (empty: everyone).
    pub allowed_cidrs: Option<std::sync::Arc<[ipnet::IpNet]>>,
    /// A new connection limit; `Some(None)` removes it.
    pub max_connections: Option<Option<u32>>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl TargetChange {
    /// Whether the change reaches the data plane (the forward goes back to
    /// `PENDING` until its agent confirms).
    pub fn changes_data_plane(&self) -> bool {
        self.internal_ip_address.is_some()
            || self.internal_port.is_some()
            || self.allowed_cidrs.is_some()
            || self.max_connections.is_some()
            || self.proxy_protocol.is_some()
    }
}

impl Store {
    /// Inserts a forward on the port it names.
    pub async fn create_forward(&self, new: &NewForwardRow) -> Result<PortForward, StoreError> {
        let forward = new_forward(new, new.external_port);
        if u32::from(new.external_port) + u32::from(new.ports.max(1)) - 1 > 65535 {
            return Err(StoreError::Corrupt {
                table: "forwards",
                reason: format!(
                    "range of {} ports from {} runs past port 65535",
                    new.ports, new.external_port
                ),
            });
        }
        match self.insert(&forward).await {
            Ok(true) => Ok(forward),
            Ok(false) => Err(self
                .over_quota(&forward.project_id, i64::from(new.ports.max(1)))
                .await),
            Err(e) if is_unique_violation(&e) => Err(self.port_taken(&forward).await),
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    /// Inserts a forward on a free port (for a range: a free block of
    /// `new.ports` consecutive ports) of `pool` for its address and protocol.
    /// Several servers may allocate at once: the primary key of
    /// `forward_ports` turns a lost race into a retry, never into a shared
    /// port.
    ///
    /// A process's first allocation for an address and protocol takes the
    /// lowest free port, found by scanning the held ports of the pool from
    /// its start. Then a [`Cursor`] in this process hands out the ports
    /// after the one taken, with no query (concurrent creates of this process
    /// get distinct ports). A cursor port found held makes the scan resume
    /// just after it, so one server alone keeps taking the lowest free port
    /// after the ones it took. But when that keeps happening, or a port the
    /// scan found free is taken first, another server allocates in the same
    /// region: the next scan starts at a random point of the pool, so the
    /// two spread apart instead of colliding at every port. Ranges (rare)
    /// scan from the start of the pool for the lowest free block.
    ///
    /// Every scan reads held ports in index order, a window at a time, and
    /// stops at the first gap: its cost is the held ports it walks past, not
    /// the size of the table.
    pub async fn create_forward_allocating(
        &self,
        new: &NewForwardRow,
        pool: PortRange,
    ) -> Result<PortForward, StoreError> {
        let key = (
            new.external_address.to_string(),
            new.protocol.as_str().to_owned(),
        );
        let size = new.ports.max(1);
        // Where the next scan starts; `None`: at a random point.
        let mut scan_from = Some(pool.first());
        // Ports found held since the cursor last ran smoothly.
        let mut collisions = 0;
        for _ in 0..ALLOCATION_ATTEMPTS {
            let cursor = if size == 1 {
                self.take_cursor(&key, pool)
            } else {
                None
            };
            let (port, scanned) = match cursor {
                Some((port, before)) => {
                    collisions = before;
                    (port, false)
                }
                None => {
                    let start = scan_from.unwrap_or_else(|| random_port_in(pool));
                    let Some(port) = self
                        .free_run_wrapping(new.external_address, new.protocol, size, start, pool)
                        .await?
                    else {
                        return Err(StoreError::PoolExhausted {
                            address: new.external_address.to_string(),
                            protocol: new.protocol.to_string(),
                            range: pool.to_string(),
                        });
                    };
                    (port, true)
                }
            };
            let forward = new_forward(new, port);
            match self.insert(&forward).await {
                Ok(false) => {
                    return Err(self.over_quota(&forward.project_id, i64::from(size)).await);
                }
                Ok(true) => {
                    if size == 1 && scanned {
                        self.set_cursor(key, port, pool, collisions);
                    }
                    return Ok(forward);
                }
                Err(e) if is_unique_violation(&e) => {
                    // Only a cursor that handed out a held port is wrong. A
                    // scan that lost its port to a concurrent create of this
                    // process leaves the cursor that create set, so that the
                    // next attempt takes the port after it instead of
                    // scanning again (a scan walks every held port before its
                    // start, so creates racing at once would otherwise each
                    // rescan a pool that grows with every forward).
                    if !scanned {
                        self.clear_cursor(&key);
                    }
                    collisions = collisions.saturating_add(1);
                    scan_from = if scanned || collisions > 1 {
                        None
                    } else {
                        port.checked_add(1).filter(|p| *p <= pool.last())
                    };
                }
                Err(e) => return Err(StoreError::Database(e)),
            }
        }
        Err(StoreError::PoolExhausted {
            address: new.external_address.to_string(),
            protocol: new.protocol.to_string(),
            range: pool.to_string(),
        })
    }

    /// The next port of this process's cursor for `key`, advancing it, with
    /// the collisions it carries.
    fn take_cursor(&self, key: &(String, String), pool: PortRange) -> Option<(u16, u8)> {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = cursors.get_mut(key)?;
        if cursor.next < pool.first() || cursor.next > pool.last() {
            cursors.remove(key);
            return None;
        }
        let port = cursor.next;
        let collisions = cursor.collisions;
        match port.checked_add(1) {
            Some(after) => {
                cursor.next = after;
                cursor.handed_out = cursor.handed_out.saturating_add(1);
                if cursor.handed_out >= SMOOTH_RUN {
                    cursor.collisions = 0;
                }
            }
            None => {
                cursors.remove(key);
            }
        }
        Some((port, collisions))
    }

    fn set_cursor(&self, key: (String, String), taken: u16, pool: PortRange, collisions: u8) {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        match taken.checked_add(1).filter(|p| *p <= pool.last()) {
            Some(next) => {
                cursors.insert(
                    key,
                    Cursor {
                        next,
                        collisions,
                        handed_out: 0,
                    },
                );
            }
            None => {
                cursors.remove(&key);
            }
        }
    }

    fn clear_cursor(&self, key: &(String, String)) {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The first port of the first free run of `size` ports in `pool` at or
    /// after `start`, else the first one before it.
    async fn free_run_wrapping(
        &self,
        address: IpAddr,
        protocol: Protocol,
        size: u16,
        start: u16,
        pool: PortRange,
    ) -> Result<Option<u16>, StoreError> {
        if let Some(port) = self
            .first_free_run(address, protocol, size, start, pool.last())
            .await?
        {
            return Ok(Some(port));
        }
        if start <= pool.first() {
            return Ok(None);
        }
        // A run may straddle `start`, so the second scan ends where one
        // starting just below `start` would end.
        let last = start
            .saturating_add(size - 1)
            .saturating_sub(1)
            .min(pool.last());
        self.first_free_run(address, protocol, size, pool.first(), last)
            .await
    }

    /// The lowest start of `size` consecutive free ports in `first..=last`.
    /// Reads the held ports from `first` in index order, [`SCAN_WINDOW`] at a
    /// time, and looks for the gap in Rust: one plain range query that every
    /// backend answers from the primary key.
    async fn first_free_run(
        &self,
        address: IpAddr,
        protocol: Protocol,
        size: u16,
        first: u16,
        last: u16,
    ) -> Result<Option<u16>, StoreError> {
        let size = u32::from(size.max(1));
        let last = u32::from(last);
        let mut start = u32::from(first);
        let mut from = start;
        loop {
            if start + size - 1 > last {
                return Ok(None);
            }
            let rows = self
                .fetch_all(
                    "SELECT port FROM forward_ports WHERE external_address = $1 AND protocol = $2 \
                     AND port >= $3 AND port <= $4 ORDER BY port LIMIT $5",
                    &[
                        address.to_string().into(),
                        protocol.as_str().into(),
                        i64::from(from).into(),
                        i64::from(last).into(),
                        (SCAN_WINDOW as i64).into(),
                    ],
                )
                .await?;
            for row in &rows {
                let held: i64 = row.try_get(0)?;
                let held = u32::try_from(held).unwrap_or(0);
                if held >= start + size {
                    break;
                }
                start = start.max(held + 1);
            }
            let gap_seen = rows.last().is_some_and(|row| {
                row.try_get::<i64, _>(0)
                    .is_ok_and(|held| i64::from(start + size) <= held)
            });
            if rows.len() < SCAN_WINDOW || gap_seen {
                return Ok((start + size - 1 <= last)
                    .then(|| u16::try_from(start).ok())
                    .flatten());
            }
            // A full window of held ports with no gap yet: read the next.
            from = start;
        }
    }

    /// Inserts the forward and one `forward_ports` row per external port in
    /// one transaction: either the forward holds all its ports, or it does
    /// not exist. The same transaction claims the forward and its ports from
    /// the project's quota (`quotas.rs`); `false` (nothing written) when that
    /// would pass a limit.
    async fn insert(&self, f: &PortForward) -> Result<bool, sqlx::Error> {
        let sql = "INSERT INTO forwards (id, project_id, description, protocol, external_address, external_port, \
             external_port_end, internal_ip_address, internal_port, internal_port_end, instance_id, proxy, \
             status, status_reason, created_at, updated_at, allowed_cidrs, max_connections, proxy_protocol) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)";
        let mut statements = vec![(
            sql.to_owned(),
            vec![
                f.id.to_string().into(),
                (&f.project_id).into(),
                (&f.description).into(),
                f.protocol.as_str().into(),
                f.external_address.to_string().into(),
                f.external_port.into(),
                f.external_port_end.into(),
                f.internal_ip_address.to_string().into(),
                f.internal_port.into(),
                f.internal_port_end.into(),
                f.instance_id.clone().into(),
                (&f.proxy).into(),
                f.status.as_str().into(),
                f.status_reason.clone().into(),
                (&f.created_at).into(),
                (&f.updated_at).into(),
                cidr_list(&f.controls).into(),
                f.controls.max_connections.into(),
                f.controls.proxy_protocol.as_str().into(),
            ],
        )];
        statements.extend(port_rows(f));
        // The proxy's summary, before the quota row (the lock order of
        // `digests.rs`).
        statements.extend(self.digest_statements(None, Some(f)));
        // The quota claim comes last: when it changes no row, the project
        // is at its limit and the whole transaction is rolled back. Last,
        // so that the project's counter row stays locked only until the
        // commit (racing creates of one project wait for each other there,
        // not across the inserts). A project's first create finds no counter
        // row: make one and try again (also when another server made it in
        // between).
        let ports = i64::from(f.port_count());
        statements.push(crate::quotas::claim(
            &f.project_id,
            ports,
            self.default_quotas(),
        ));
        for first in [true, false] {
            let affected = self.execute_claimed_last(&statements).await?;
            if affected.last().copied().unwrap_or(0) > 0 {
                return Ok(true);
            }
            if first {
                self.ensure_usage_row(&f.project_id).await?;
            }
        }
        Ok(false)
    }

    /// The error for a port already held, naming the holder.
    async fn port_taken(&self, f: &PortForward) -> StoreError {
        // The lowest port of the range another forward holds.
        let holder = self
            .fetch_optional(
                "SELECT forward_id, port FROM forward_ports WHERE external_address = $1 AND protocol = $2 \
                 AND port >= $3 AND port <= $4 ORDER BY port LIMIT 1",
                &[
                    f.external_address.to_string().into(),
                    f.protocol.as_str().into(),
                    f.external_port.into(),
                    f.external_port_end.into(),
                ],
            )
            .await
            .and_then(|row| {
                row.map(|row| {
                    Ok((
                        row.try_get::<String, _>(0)?,
                        row.try_get::<i64, _>(1)?,
                    ))
                })
                .transpose()
                .map_err(StoreError::Database)
            });
        match holder {
            Ok(Some((id, port))) => match id.parse() {
                Ok(holder) => StoreError::PortTaken {
                    address: f.external_address.to_string(),
                    protocol: f.protocol.to_string(),
                    port: u16::try_from(port).unwrap_or(f.external_port),
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
            // A port inside a range finds the range forward.
            values.push(Value::Int(i64::from(port)));
            conditions.push(format!(
                "external_port <= ${0} AND external_port_end >= ${0}",
                values.len()
            ));
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
            "SELECT {COLUMNS} FROM forwards WHERE proxy = $1 AND {} ORDER BY id",
            not_marked(2)
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
        let retargets = change.changes_data_plane();
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
               internal_port_end = COALESCE($7, internal_port_end), \
               description = COALESCE($4, description), \
               allowed_cidrs = COALESCE($8, allowed_cidrs), \
               max_connections = CASE WHEN $9 THEN $10 ELSE max_connections END, \
               proxy_protocol = COALESCE($11, proxy_protocol), \
               status = CASE WHEN $5 THEN 'PENDING' ELSE status END, \
               status_reason = CASE WHEN $5 THEN NULL ELSE status_reason END, \
               updated_at = $6 \
             WHERE id = $1";
        let values: Vec<Value> = vec![
            id.to_string().into(),
            change.internal_ip_address.map(|ip| ip.to_string()).into(),
            change.internal_port.into(),
            change.description.clone().into(),
            retargets.into(),
            now().into(),
            change.internal_port_end.into(),
            change
                .allowed_cidrs
                .as_ref()
                .map(|cidrs| join_cidrs(cidrs))
                .into(),
            change.max_connections.is_some().into(),
            change.max_connections.flatten().into(),
            change.proxy_protocol.map(ProxyProtocol::as_str).into(),
        ];
        // The old row is read under its lock, and the new one after the
        // update, so that the proxy's summary moves by what really changed.
        retrying!(Option<PortForward>, {
            let mut tx = self.begin().await?;
            let Some(old) = self.lock_forward(&mut tx, id).await? else {
                tx.rollback().await?;
                return Ok(None);
            };
            self.tx_execute(&mut tx, sql, &values).await?;
            let Some(new) = self.read_forward(&mut tx, id).await? else {
                tx.rollback().await?;
                return Ok(None);
            };
            self.update_digests(&mut tx, Some(&old), Some(&new)).await?;
            tx.commit().await?;
            Ok(Some(new))
        })
    }

    /// Locks forward `id`'s row until the end of `tx` (a write that changes
    /// nothing: a row lock on PostgreSQL and MySQL, the write lock on
    /// SQLite, taken before any read so that the transaction never has to
    /// upgrade a stale snapshot) and reads it.
    pub(crate) async fn lock_forward(
        &self,
        tx: &mut Tx,
        id: ForwardId,
    ) -> Result<Option<PortForward>, StoreError> {
        self.tx_execute(
            tx,
            "UPDATE forwards SET updated_at = updated_at WHERE id = $1",
            &[id.to_string().into()],
        )
        .await?;
        self.read_forward(tx, id).await
    }

    /// Reads forward `id` in `tx`.
    async fn read_forward(
        &self,
        tx: &mut Tx,
        id: ForwardId,
    ) -> Result<Option<PortForward>, StoreError> {
        let rows = self
            .tx_fetch_all(
                tx,
                &format!("SELECT {COLUMNS} FROM forwards WHERE id = $1"),
                &[id.to_string().into()],
            )
            .await?;
        rows.first().map(from_row).transpose()
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
        // A mark takes the forward out of its proxy's desired set, so its
        // summary changes with it (see `digests.rs`).
        let (sql, values) = status_statement(id, status, reason, Vec::new());
        retrying!(bool, {
            let mut tx = self.begin().await?;
            let Some(old) = self.lock_forward(&mut tx, id).await? else {
                tx.rollback().await?;
                return Ok(false);
            };
            if self.tx_execute(&mut tx, &sql, &values).await? == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            let new = self.read_forward(&mut tx, id).await?;
            self.update_digests(&mut tx, Some(&old), new.as_ref())
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Records a status reported about `version`; `false` (and nothing
    /// written) when the forward has changed or moved since, or the status is
    /// the one recorded already.
    pub async fn set_reported_status(
        &self,
        id: ForwardId,
        version: &ReportedVersion,
        status: ForwardStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.write_status(id, status, reason, reported_conditions(version))
            .await
    }

    /// [`Store::set_reported_status`] for many forwards at once (an agent's
    /// answer to a full sync), [`STATUS_WRITES_PER_TRANSACTION`] to a
    /// transaction: one commit for many rows instead of one each. Returns
    /// how many were written.
    pub async fn set_reported_statuses(&self, reports: &[StatusReport]) -> Result<u64, StoreError> {
        let mut written = 0;
        for chunk in reports.chunks(STATUS_WRITES_PER_TRANSACTION) {
            let statements: Vec<(String, Vec<Value>)> = chunk
                .iter()
                .map(|r| {
                    let only_if = reported_conditions(&r.version);
                    status_statement(r.id, r.status, r.reason.as_deref(), only_if)
                })
                .collect();
            let affected = self.execute_in_transaction(&statements).await?;
            written += affected.iter().filter(|n| **n > 0).count() as u64;
        }
        Ok(written)
    }

    /// The write of [`Store::set_status`] and [`Store::set_reported_status`]:
    /// see [`status_statement`].
    async fn write_status(
        &self,
        id: ForwardId,
        status: ForwardStatus,
        reason: Option<&str>,
        only_if: Vec<(&str, Value)>,
    ) -> Result<bool, StoreError> {
        let (sql, values) = status_statement(id, status, reason, only_if);
        let done = self.execute(&sql, &values).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks every forward of `proxy` `ERROR` with `reason` (a proxy that is
    /// down and whose forwards stay). Returns how many changed.
    pub async fn set_proxy_error(&self, proxy: &str, reason: &str) -> Result<u64, StoreError> {
        let done = self
            .execute(
                &format!(
                    "UPDATE forwards SET status = 'ERROR', status_reason = $2, updated_at = $3 \
                     WHERE proxy = $1 AND (status <> 'ERROR' OR COALESCE(status_reason, '') <> $2) \
                     AND {}",
                    not_marked(4)
                ),
                &[
                    proxy.into(),
                    reason.into(),
                    now().into(),
                    instance_deleted_pattern().into(),
                ],
            )
            .await?;
        Ok(done.rows_affected())
    }

    /// Moves forward `id` off `to.from_proxy`, keeping its external port if
    /// it is free on the new address (and in the new pool), else on the
    /// lowest free port of the new pool. The move is claimed by a conditional
    /// update (`WHERE proxy = from_proxy`), so of several servers failing
    /// over at once exactly one moves each forward; the others get `None`,
    /// as does a forward deleted meanwhile. The forward comes back `PENDING`
    /// until its new agent confirms.
    pub async fn move_forward(
        &self,
        id: ForwardId,
        to: &Move,
    ) -> Result<Option<PortForward>, StoreError> {
        let Some(current) = self.get_forward(id).await? else {
            return Ok(None);
        };
        if current.proxy != to.from_proxy {
            return Ok(None);
        }
        // A range moves as one block of the same size.
        let size = current.port_count();
        if to.pool.contains(current.external_port) && to.pool.contains(current.external_port_end) {
            match self.claim_move(&current, to, current.external_port).await {
                Ok(moved) => return Ok(moved),
                Err(e) if is_unique_violation(&e) => {}
                Err(e) => return Err(StoreError::Database(e)),
            }
        }
        for attempt in 0..ALLOCATION_ATTEMPTS {
            // The lowest free run first; after a lost race, from a random
            // point, so that servers moving forwards at once spread apart.
            let start = if attempt == 0 {
                to.pool.first()
            } else {
                random_port_in(to.pool)
            };
            let found = self
                .free_run_wrapping(to.external_address, current.protocol, size, start, to.pool)
                .await?;
            let Some(port) = found else { break };
            match self.claim_move(&current, to, port).await {
                Ok(moved) => return Ok(moved),
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(StoreError::Database(e)),
            }
        }
        Err(StoreError::PoolExhausted {
            address: to.external_address.to_string(),
            protocol: current.protocol.to_string(),
            range: to.pool.to_string(),
        })
    }

    /// Moves `current` to `to` on external ports from `port`, with its
    /// `forward_ports` rows and both proxies' summaries, in one transaction
    /// claimed by the conditional update: if another server moved (or
    /// deleted) it first, nothing changes.
    async fn claim_move(
        &self,
        current: &PortForward,
        to: &Move,
        port: u16,
    ) -> Result<Option<PortForward>, sqlx::Error> {
        let id = current.id;
        let moved_ports = PortForward {
            external_address: to.external_address,
            external_port: port,
            external_port_end: port + (current.external_port_end - current.external_port),
            ..current.clone()
        };
        let claim = (
            "UPDATE forwards SET proxy = $2, external_address = $3, external_port = $4, \
             external_port_end = $5, status = 'PENDING', status_reason = NULL, updated_at = $6 \
             WHERE id = $1 AND proxy = $7"
                .to_owned(),
            vec![
                id.to_string().into(),
                to.to_proxy.as_str().into(),
                to.external_address.to_string().into(),
                port.into(),
                moved_ports.external_port_end.into(),
                now().into(),
                to.from_proxy.as_str().into(),
            ],
        );
        let mut statements = vec![(
            "DELETE FROM forward_ports WHERE forward_id = $1".to_owned(),
            vec![id.to_string().into()],
        )];
        statements.extend(port_rows(&moved_ports));
        let moved = retrying!(Option<PortForward>, {
            let mut tx = self.begin().await?;
            let old = match self.lock_forward(&mut tx, id).await? {
                Some(old) if old.proxy == to.from_proxy => old,
                _ => {
                    tx.rollback().await?;
                    return Ok(None);
                }
            };
            if self.tx_execute(&mut tx, &claim.0, &claim.1).await? == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            for (sql, values) in &statements {
                self.tx_execute(&mut tx, sql, values).await?;
            }
            let new = self.read_forward(&mut tx, id).await?;
            self.update_digests(&mut tx, Some(&old), new.as_ref())
                .await?;
            tx.commit().await?;
            Ok(new)
        });
        match moved {
            Ok(moved) => Ok(moved),
            Err(StoreError::Database(e)) => Err(e),
            Err(e) => Err(sqlx::Error::Protocol(e.to_string())),
        }
    }

    /// Removes a forward; `false` if there was none.
    pub async fn delete_forward(&self, id: ForwardId) -> Result<bool, StoreError> {
        // The ports go in the same transaction as the forward, so a port is
        // never free while its forward still exists, nor held after. The
        // project's quota gets the forward and its ports back in it too,
        // only if this transaction is the one that deleted the row (the
        // claim: racing deletes of one forward give it back once), and the
        // proxy's summary loses the forward as it was under the row's lock.
        retrying!(bool, {
            let mut tx = self.begin().await?;
            let Some(forward) = self.lock_forward(&mut tx, id).await? else {
                tx.rollback().await?;
                return Ok(false);
            };
            let text = id.to_string();
            if self
                .tx_execute(
                    &mut tx,
                    "DELETE FROM forwards WHERE id = $1",
                    &[text.clone().into()],
                )
                .await?
                == 0
            {
                tx.rollback().await?;
                return Ok(false);
            }
            self.tx_execute(
                &mut tx,
                "DELETE FROM forward_ports WHERE forward_id = $1",
                &[text.clone().into()],
            )
            .await?;
            if crate::group_name(&forward.proxy).is_some() {
                self.tx_execute(
                    &mut tx,
                    "DELETE FROM group_member_errors WHERE forward_id = $1",
                    &[text.into()],
                )
                .await?;
            }
            self.update_digests(&mut tx, Some(&forward), None).await?;
            // Last, as in a create: the counter row is locked only until
            // the commit.
            let (sql, values) =
                crate::quotas::release(&forward.project_id, i64::from(forward.port_count()));
            self.tx_execute(&mut tx, &sql, &values).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Forwards and external ports held per proxy host, in one query: the
    /// ports are what placement weighs against a proxy's pool (a range
    /// counts once per port), both are what the proxy views show.
    pub async fn proxy_usage(&self) -> Result<Vec<(String, ProxyUsage)>, StoreError> {
        // One table, no join: a forward holds the ports of its external
        // range (its `forward_ports` rows). MySQL sums integers into a
        // DECIMAL, hence its cast.
        let sum = match self.backend {
            crate::Backend::MySql => "CAST(SUM(external_port_end - external_port + 1) AS SIGNED)",
            _ => "SUM(external_port_end - external_port + 1)",
        };
        let rows = self
            .fetch_all(
                &format!(
                    "SELECT proxy, COUNT(*) AS forwards, {sum} AS ports FROM forwards GROUP BY proxy"
                ),
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let count = |column: &str| -> Result<u64, StoreError> {
                    let n: i64 = row.try_get(column)?;
                    Ok(u64::try_from(n).unwrap_or(0))
                };
                let usage = ProxyUsage {
                    forwards: count("forwards")?,
                    ports: count("ports")?,
                };
                Ok((row.try_get("proxy")?, usage))
            })
            .collect()
    }

    /// Number of forwards per protocol and status (for metrics); combinations
    /// with no forward are absent.
    pub async fn forward_status_counts(
        &self,
    ) -> Result<Vec<(Protocol, ForwardStatus, u64)>, StoreError> {
        let rows = self
            .fetch_all(
                "SELECT protocol, status, COUNT(*) AS n FROM forwards GROUP BY protocol, status",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let protocol: String = row.try_get("protocol")?;
                let status: String = row.try_get("status")?;
                let n: i64 = row.try_get("n")?;
                let protocol = protocol.parse().map_err(|e| StoreError::Corrupt {
                    table: "forwards",
                    reason: format!("{e}"),
                })?;
                let status = status.parse().map_err(|e| StoreError::Corrupt {
                    table: "forwards",
                    reason: format!("{e}"),
                })?;
                Ok((protocol, status, u64::try_from(n).unwrap_or(0)))
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
        && filter
            .external_port
            .is_none_or(|p| (f.external_port..=f.external_port_end).contains(&p))
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
        external_port_end: external_port.saturating_add(new.ports.max(1) - 1),
        internal_ip_address: new.internal_ip_address,
        internal_port: new.internal_port,
        internal_port_end: new.internal_port_end.max(new.internal_port),
        instance_id: new.instance_id.clone(),
        controls: new.controls.clone(),
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

pub(crate) fn from_row(row: &AnyRow) -> Result<PortForward, StoreError> {
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
        external_port_end: port("external_port_end")?,
        internal_ip_address: ip("internal_ip_address")?,
        internal_port: port("internal_port")?,
        internal_port_end: port("internal_port_end")?,
        instance_id: row.try_get("instance_id")?,
        proxy: text("proxy")?,
        status: text("status")?
            .parse()
            .map_err(|e| corrupt(format!("{e}")))?,
        status_reason: row.try_get("status_reason")?,
        controls: controls_from_row(row)?,
        created_at: text("created_at")?,
        updated_at: text("updated_at")?,
    })
}

/// The allowlist as stored: canonical CIDRs joined by commas (`Controls`
/// keeps them sorted and unique, so equal lists are equal text).
fn cidr_list(controls: &Controls) -> String {
    join_cidrs(&controls.allowed_cidrs)
}

fn join_cidrs(cidrs: &[ipnet::IpNet]) -> String {
    let mut sorted = cidrs.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The controls columns; NULLs (rows from before migration 4) are defaults.
fn controls_from_row(row: &AnyRow) -> Result<Controls, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "forwards",
        reason,
    };
    let cidrs: Option<String> = row.try_get("allowed_cidrs")?;
    let allowed_cidrs = cidrs
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|c| !c.is_empty())
        .map(|c| parse_cidr(c).map_err(|e| corrupt(format!("allowed_cidrs: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let max: Option<i64> = row.try_get("max_connections")?;
    let max_connections = max
        .map(|n| match u32::try_from(n) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(corrupt(format!("max_connections {n} is not 1 or more"))),
        })
        .transpose()?;
    let proxy_protocol: String = row.try_get("proxy_protocol")?;
    let proxy_protocol = proxy_protocol
        .parse()
        .map_err(|e| corrupt(format!("{e}")))?;
    Ok(Controls::new(
        allowed_cidrs,
        max_connections,
        proxy_protocol,
    ))
}

/// The `forward_ports` rows of `f`, one per external port, as INSERT
/// statements of at most `PORT_ROWS_PER_INSERT` rows each.
fn port_rows(f: &PortForward) -> Vec<(String, Vec<Value>)> {
    let ports: Vec<u16> = (f.external_port..=f.external_port_end).collect();
    let mut statements = Vec::new();
    for chunk in ports.chunks(PORT_ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO forward_ports (external_address, protocol, port, forward_id) VALUES ",
        );
        let mut values = Vec::with_capacity(chunk.len() * 4);
        for (i, port) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let n = i * 4;
            sql.push_str(&format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4));
            values.push(f.external_address.to_string().into());
            values.push(f.protocol.as_str().into());
            values.push((*port).into());
            values.push(f.id.to_string().into());
        }
        statements.push((sql, values));
    }
    statements
}
