//! The summaries of each proxy's desired set (`proxy_digests`), kept in the
//! store so that a heartbeat is checked in constant time: the server reads a
//! proxy's 256 bucket rows, not its forwards.
//!
//! A forward counts in its proxy's bucket while it is in the set the agent
//! must carry, that is unless it is marked [`INSTANCE_DELETED`]
//! ([`Store::forwards_on_proxy`] leaves those out too). Every write that
//! changes a forward's data-plane fields, proxy or membership updates the
//! bucket row (or rows, for a move) in the same transaction, after the
//! forward's row, with an upsert that adds the difference and bumps the
//! row's `revision`. Bucket rows are locked in (proxy, bucket) order, and
//! always before a project's quota row, so these transactions cannot
//! deadlock each other.
//!
//! A bucket row that is missing or not `ready` (the proxy is new, or the rows
//! predate migration 6) is rebuilt from the forwards by
//! [`Store::rebuild_digests`], under the bucket rows' locks: a change that
//! committed before it is counted by the rebuild, a change that waits for
//! the lock adds its difference to the rebuilt value afterwards.

use std::collections::BTreeMap;

use navigator_core::digest::{
    BUCKETS, BucketDigest, SetDigest, bucket, bucket_id_range, forward_hash,
};
use navigator_core::{ForwardStatus, PortForward};
use sqlx::Row;

use crate::forwards::{COLUMNS, from_row, instance_deleted_pattern, not_marked};
use crate::sql::{Tx, Value, retrying};
use crate::{Backend, INSTANCE_DELETED, Store, StoreError};

/// Buckets of one proxy read per query in [`Store::forwards_in_buckets`].
const BUCKETS_PER_QUERY: usize = 32;

/// A proxy's summary as stored, with each bucket's revision (how many
/// changes it has seen: equal revisions mean no change in between).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDigest {
    pub digest: SetDigest,
    pub revisions: Vec<u64>,
}

impl StoredDigest {
    /// Adds `other` (another proxy's summary) bucket by bucket, revisions
    /// included: the summary of a member agent is its own proxy's plus its
    /// groups', and the sum of revisions changes whenever one of them does.
    pub fn merge(&mut self, other: &StoredDigest) {
        for bucket in 0..=u8::MAX {
            let mut merged = self.digest.bucket(bucket);
            merged.merge(&other.digest.bucket(bucket));
            self.digest.set_bucket(bucket, merged);
        }
        for (i, revision) in other.revisions.iter().enumerate() {
            match self.revisions.get_mut(i) {
                Some(own) => *own = own.wrapping_add(*revision),
                None => self.revisions.push(*revision),
            }
        }
    }

    /// The revision of `bucket`.
    pub fn revision(&self, bucket: u8) -> u64 {
        self.revisions
            .get(usize::from(bucket))
            .copied()
            .unwrap_or(0)
    }
}

/// Whether `forward` is in its proxy's desired set.
pub(crate) fn counts(forward: &PortForward) -> bool {
    !(forward.status == ForwardStatus::Error
        && forward
            .status_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(INSTANCE_DELETED)))
}

/// What a write from `old` to `new` (either absent for an insert or a
/// delete) does to the bucket rows: the differences, by (proxy, bucket), in
/// lock order, without those that change nothing.
pub(crate) fn differences(
    old: Option<&PortForward>,
    new: Option<&PortForward>,
) -> Vec<(String, u8, BucketDigest)> {
    let mut changes: BTreeMap<(String, u8), BucketDigest> = BTreeMap::new();
    if let Some(old) = old.filter(|f| counts(f)) {
        changes
            .entry((old.proxy.clone(), bucket(old.id)))
            .or_default()
            .remove(forward_hash(&old.spec()));
    }
    if let Some(new) = new.filter(|f| counts(f)) {
        changes
            .entry((new.proxy.clone(), bucket(new.id)))
            .or_default()
            .add(forward_hash(&new.spec()));
    }
    changes
        .into_iter()
        .filter(|(_, delta)| *delta != BucketDigest::default())
        .map(|((proxy, bucket), delta)| (proxy, bucket, delta))
        .collect()
}

impl Store {
    /// The upsert that adds `delta` to `proxy`'s bucket row (creating it,
    /// not ready, if missing) and bumps its revision. The sums stay in
    /// 0..2³² (a difference is added as its residue), so no column overflows.
    pub(crate) fn digest_statement(
        &self,
        proxy: &str,
        bucket: u8,
        delta: BucketDigest,
    ) -> (String, Vec<Value>) {
        let sql = match self.backend {
            Backend::MySql => {
                "INSERT INTO proxy_digests (proxy, bucket, forwards, low, high, revision, ready) \
                 VALUES ($1, $2, $3, $4, $5, 1, 0) ON DUPLICATE KEY UPDATE \
                 forwards = forwards + VALUES(forwards), \
                 low = (low + VALUES(low)) % 4294967296, \
                 high = (high + VALUES(high)) % 4294967296, \
                 revision = revision + 1"
            }
            Backend::Sqlite | Backend::Postgres => {
                "INSERT INTO proxy_digests (proxy, bucket, forwards, low, high, revision, ready) \
                 VALUES ($1, $2, $3, $4, $5, 1, 0) ON CONFLICT (proxy, bucket) DO UPDATE SET \
                 forwards = proxy_digests.forwards + excluded.forwards, \
                 low = (proxy_digests.low + excluded.low) % 4294967296, \
                 high = (proxy_digests.high + excluded.high) % 4294967296, \
                 revision = proxy_digests.revision + 1"
            }
        };
        (
            sql.to_owned(),
            vec![
                proxy.into(),
                i64::from(bucket).into(),
                // A removal from an empty row counts -1: the row is then not
                // ready anyway, and its rebuild sets the truth.
                (delta.forwards as i64).into(),
                i64::from(delta.low).into(),
                i64::from(delta.high).into(),
            ],
        )
    }

    /// The bucket-row updates of a write from `old` to `new`, as statements.
    pub(crate) fn digest_statements(
        &self,
        old: Option<&PortForward>,
        new: Option<&PortForward>,
    ) -> Vec<(String, Vec<Value>)> {
        differences(old, new)
            .into_iter()
            .map(|(proxy, bucket, delta)| self.digest_statement(&proxy, bucket, delta))
            .collect()
    }

    /// Runs [`Store::digest_statements`] in `tx`.
    pub(crate) async fn update_digests(
        &self,
        tx: &mut Tx,
        old: Option<&PortForward>,
        new: Option<&PortForward>,
    ) -> Result<(), StoreError> {
        for (sql, values) in self.digest_statements(old, new) {
            self.tx_execute(tx, &sql, &values).await?;
        }
        Ok(())
    }

    /// `proxy`'s summary, or `None` when some bucket row is missing or not
    /// ready (then [`Store::rebuild_digests`] makes it). One query of 256
    /// small rows, whatever the number of forwards.
    pub async fn proxy_digest(&self, proxy: &str) -> Result<Option<StoredDigest>, StoreError> {
        let rows = self
            .fetch_all(
                "SELECT bucket, forwards, low, high, revision, ready FROM proxy_digests WHERE proxy = $1",
                &[proxy.into()],
            )
            .await?;
        if rows.len() != BUCKETS {
            return Ok(None);
        }
        let mut stored = StoredDigest {
            digest: SetDigest::default(),
            revisions: vec![0; BUCKETS],
        };
        for row in &rows {
            let ready: i64 = row.try_get("ready")?;
            if ready == 0 {
                return Ok(None);
            }
            let (bucket, digest, revision) = bucket_row(row)?;
            stored.digest.set_bucket(bucket, digest);
            stored.revisions[usize::from(bucket)] = revision;
        }
        Ok(Some(stored))
    }

    /// Computes `proxy`'s summary from its forwards and stores it (every
    /// bucket row ready), under the bucket rows' locks; returns it. Reads
    /// all the proxy's forwards: for a new proxy, after the upgrade that
    /// brought the table.
    pub async fn rebuild_digests(&self, proxy: &str) -> Result<StoredDigest, StoreError> {
        let all: Vec<u8> = (0..=u8::MAX).collect();
        let (stored, forwards) = self.rebuild(proxy, &all, true).await?;
        tracing::info!(%proxy, forwards = forwards.len(), "built the proxy's summary from its forwards");
        Ok(stored)
    }

    /// The forwards of `buckets` that `proxy`'s agent must carry (a partial
    /// sync's desired set), read under the bucket rows' locks, which are set
    /// to what they hold on the way: a summary that drifted from the
    /// forwards (written by a server of an earlier release, which does not
    /// keep them) is repaired by the sync that its difference brings.
    /// Range queries on (proxy, id): the cost is those buckets' rows, not
    /// the proxy's.
    pub async fn resync_buckets(
        &self,
        proxy: &str,
        buckets: &[u8],
    ) -> Result<Vec<PortForward>, StoreError> {
        Ok(self.rebuild(proxy, buckets, false).await?.1)
    }

    /// Locks `buckets` of `proxy` (creating missing rows), reads their
    /// forwards, stores their summaries, ready, and returns the summary
    /// (with every bucket's revision when `all`) and the forwards.
    async fn rebuild(
        &self,
        proxy: &str,
        buckets: &[u8],
        all: bool,
    ) -> Result<(StoredDigest, Vec<PortForward>), StoreError> {
        retrying!((StoredDigest, Vec<PortForward>), {
            let mut tx = self.begin().await?;
            // Locks the bucket rows (creating the missing ones) before
            // reading: a change that has not reached its bucket row yet
            // waits for this transaction and then adds its difference.
            let mut sql = String::from(
                "INSERT INTO proxy_digests (proxy, bucket, forwards, low, high, revision, ready) VALUES ",
            );
            let mut values: Vec<Value> = vec![proxy.into()];
            for (i, b) in buckets.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                values.push(i64::from(*b).into());
                sql.push_str(&format!("($1, ${}, 0, 0, 0, 0, 0)", values.len()));
            }
            sql.push_str(match self.backend {
                Backend::MySql => " ON DUPLICATE KEY UPDATE revision = revision + 1",
                Backend::Sqlite | Backend::Postgres => {
                    " ON CONFLICT (proxy, bucket) DO UPDATE SET revision = proxy_digests.revision + 1"
                }
            });
            self.tx_execute(&mut tx, &sql, &values).await?;
            let mut forwards = Vec::new();
            if all {
                let rows = self
                    .tx_fetch_all(
                        &mut tx,
                        &format!(
                            "SELECT {COLUMNS} FROM forwards WHERE proxy = $1 AND {} ORDER BY id",
                            not_marked(2)
                        ),
                        &[proxy.into(), instance_deleted_pattern().into()],
                    )
                    .await?;
                for row in &rows {
                    forwards.push(from_row(row)?);
                }
            } else {
                for chunk in buckets.chunks(BUCKETS_PER_QUERY) {
                    let (sql, values) = bucket_query(proxy, chunk);
                    for row in self.tx_fetch_all(&mut tx, &sql, &values).await? {
                        forwards.push(from_row(&row)?);
                    }
                }
            }
            let mut digest = SetDigest::default();
            for forward in &forwards {
                digest.add(&forward.spec());
            }
            for b in buckets {
                let d = digest.bucket(*b);
                self.tx_execute(
                    &mut tx,
                    "UPDATE proxy_digests SET forwards = $3, low = $4, high = $5, ready = 1 \
                     WHERE proxy = $1 AND bucket = $2",
                    &[
                        proxy.into(),
                        i64::from(*b).into(),
                        (d.forwards as i64).into(),
                        i64::from(d.low).into(),
                        i64::from(d.high).into(),
                    ],
                )
                .await?;
            }
            let mut revisions = vec![0; BUCKETS];
            if all {
                let rows = self
                    .tx_fetch_all(
                        &mut tx,
                        "SELECT bucket, forwards, low, high, revision FROM proxy_digests WHERE proxy = $1",
                        &[proxy.into()],
                    )
                    .await?;
                for row in &rows {
                    let (bucket, _, revision) = bucket_row(row)?;
                    revisions[usize::from(bucket)] = revision;
                }
            }
            tx.commit().await?;
            Ok((StoredDigest { digest, revisions }, forwards))
        })
    }

    /// The forwards of `buckets` that `proxy`'s agent must carry, without
    /// locks (for reading only).
    pub async fn forwards_in_buckets(
        &self,
        proxy: &str,
        buckets: &[u8],
    ) -> Result<Vec<PortForward>, StoreError> {
        let mut forwards = Vec::new();
        for chunk in buckets.chunks(BUCKETS_PER_QUERY) {
            let (sql, values) = bucket_query(proxy, chunk);
            for row in self.fetch_all(&sql, &values).await? {
                forwards.push(from_row(&row)?);
            }
        }
        Ok(forwards)
    }
}

/// The query of the forwards of `buckets` (at most [`BUCKETS_PER_QUERY`])
/// that `proxy`'s agent must carry, in id order.
fn bucket_query(proxy: &str, buckets: &[u8]) -> (String, Vec<Value>) {
    let mut values: Vec<Value> = vec![proxy.into(), instance_deleted_pattern().into()];
    let mut ranges = Vec::new();
    for b in buckets {
        let (first, after) = bucket_id_range(*b);
        values.push(first.into());
        values.push(after.into());
        ranges.push(format!(
            "(id >= ${} AND id < ${})",
            values.len() - 1,
            values.len()
        ));
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM forwards WHERE proxy = $1 AND {} AND ({}) ORDER BY id",
        not_marked(2),
        ranges.join(" OR ")
    );
    (sql, values)
}

/// A bucket row's bucket, summary and revision.
fn bucket_row(row: &sqlx::any::AnyRow) -> Result<(u8, BucketDigest, u64), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "proxy_digests",
        reason,
    };
    let bucket: i64 = row.try_get("bucket")?;
    let bucket = u8::try_from(bucket).map_err(|_| corrupt(format!("bucket {bucket}")))?;
    let forwards: i64 = row.try_get("forwards")?;
    let low: i64 = row.try_get("low")?;
    let high: i64 = row.try_get("high")?;
    let revision: i64 = row.try_get("revision")?;
    let half = |name: &str, v: i64| {
        u32::try_from(v).map_err(|_| corrupt(format!("{name} {v} is not in 0..2^32")))
    };
    Ok((
        bucket,
        BucketDigest {
            forwards: forwards as u64,
            low: half("low", low)?,
            high: half("high", high)?,
        },
        revision as u64,
    ))
}
