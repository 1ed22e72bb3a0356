//! Address groups (VRRP): who the members of a group are, which of them
//! holds its virtual addresses, and which members cannot carry one of its
//! forwards.
//!
//! A group is also a row of `proxies` whose host is [`group_host`]`(name)`,
//! written by its members' heartbeats: placement, ports, quotas and the
//! per-proxy summaries treat it as one proxy, and its forwards are carried
//! by every member. Member failures are kept per forward and member, so that
//! the forward's status can come from the holder alone while the API still
//! says how many members carry it.

use std::net::IpAddr;

use navigator_core::ForwardId;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::sql::Value;
use crate::{Backend, Store, StoreError};

/// The prefix of a group's host name in `proxies`: a character no agent's
/// host name has (`[DEFAULT] host` is a DNS name), so the two never clash.
pub const GROUP_HOST_PREFIX: &str = "group:";

/// The `proxies` host of group `name`.
pub fn group_host(name: &str) -> String {
    format!("{GROUP_HOST_PREFIX}{name}")
}

/// The group name of a `proxies` host, if it is a group's.
pub fn group_name(host: &str) -> Option<&str> {
    host.strip_prefix(GROUP_HOST_PREFIX)
}

/// One member of one group, as its last heartbeat described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub group: String,
    pub member: String,
    /// The group's virtual addresses, as this member is configured.
    pub addresses: Vec<IpAddr>,
    pub virtual_router_id: u8,
    /// Whether this member holds the addresses (as of `last_report`).
    pub holder: bool,
    /// keepalived's state on the member: `running` or what is wrong.
    pub keepalived: String,
    /// RFC 3339 UTC time of the member's last heartbeat.
    pub last_report: String,
}

/// A member that reported it cannot carry a group's forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberError {
    pub forward: ForwardId,
    pub member: String,
    pub reason: String,
}

/// Member errors written at most this many per statement.
const ERRORS_PER_STATEMENT: usize = 200;

impl Store {
    /// Records a member's view of one of its groups (one heartbeat).
    pub async fn upsert_group_member(&self, member: &GroupMember) -> Result<(), StoreError> {
        let upsert = match self.backend {
            Backend::Sqlite | Backend::Postgres => {
                "ON CONFLICT (group_name, member) DO UPDATE SET addresses = excluded.addresses, \
                 virtual_router_id = excluded.virtual_router_id, holder = excluded.holder, \
                 keepalived = excluded.keepalived, last_report = excluded.last_report"
            }
            Backend::MySql => {
                "ON DUPLICATE KEY UPDATE addresses = VALUES(addresses), \
                 virtual_router_id = VALUES(virtual_router_id), holder = VALUES(holder), \
                 keepalived = VALUES(keepalived), last_report = VALUES(last_report)"
            }
        };
        let sql = format!(
            "INSERT INTO group_members (group_name, member, addresses, virtual_router_id, holder, keepalived, last_report) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) {upsert}"
        );
        let addresses = member
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let keepalived: String = member.keepalived.chars().take(255).collect();
        self.execute(
            &sql,
            &[
                (&member.group).into(),
                (&member.member).into(),
                addresses.into(),
                i64::from(member.virtual_router_id).into(),
                i64::from(member.holder).into(),
                keepalived.into(),
                (&member.last_report).into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Forgets that `member` is in `group` (it no longer says so).
    pub async fn delete_group_member(&self, group: &str, member: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM group_members WHERE group_name = $1 AND member = $2",
            &[group.into(), member.into()],
        )
        .await?;
        self.execute(
            "DELETE FROM group_member_errors WHERE member = $1 AND forward_id IN \
             (SELECT id FROM forwards WHERE proxy = $2)",
            &[member.into(), group_host(group).into()],
        )
        .await?;
        Ok(())
    }

    /// Every member of every group, by group then member.
    pub async fn list_group_members(&self) -> Result<Vec<GroupMember>, StoreError> {
        let rows = self
            .fetch_all(
                "SELECT group_name, member, addresses, virtual_router_id, holder, keepalived, last_report \
                 FROM group_members ORDER BY group_name, member",
                &[],
            )
            .await?;
        rows.iter().map(member_from_row).collect()
    }

    /// Records what `member` reported about group forwards: `errors` are
    /// forwards it cannot carry (with why), `cleared` forwards it carries.
    /// With `replace_all` (a full sync's results) every earlier error of the
    /// member is forgotten first.
    pub async fn record_member_errors(
        &self,
        member: &str,
        errors: &[(ForwardId, String)],
        cleared: &[ForwardId],
        replace_all: bool,
    ) -> Result<(), StoreError> {
        let mut statements: Vec<(String, Vec<Value>)> = Vec::new();
        if replace_all {
            statements.push((
                "DELETE FROM group_member_errors WHERE member = $1".to_owned(),
                vec![member.into()],
            ));
        } else {
            // Cleared forwards lose their row; failing ones are written again
            // with their new reason: delete, then insert, in one transaction.
            let touched: Vec<ForwardId> = cleared
                .iter()
                .copied()
                .chain(errors.iter().map(|(id, _)| *id))
                .collect();
            for chunk in touched.chunks(ERRORS_PER_STATEMENT) {
                let mut values: Vec<Value> = vec![member.into()];
                values.extend(chunk.iter().map(|id| Value::from(id.to_string())));
                statements.push((
                    format!(
                        "DELETE FROM group_member_errors WHERE member = $1 AND forward_id IN ({})",
                        placeholders(2, chunk.len())
                    ),
                    values,
                ));
            }
        }
        for chunk in errors.chunks(ERRORS_PER_STATEMENT) {
            let rows = (0..chunk.len())
                .map(|i| format!("(${}, $1, ${})", 2 * i + 2, 2 * i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let mut values: Vec<Value> = vec![member.into()];
            for (id, reason) in chunk {
                values.push(id.to_string().into());
                values.push(reason.chars().take(1024).collect::<String>().into());
            }
            statements.push((
                format!(
                    "INSERT INTO group_member_errors (forward_id, member, reason) VALUES {rows}"
                ),
                values,
            ));
        }
        if statements.is_empty() {
            return Ok(());
        }
        self.execute_in_transaction(&statements).await?;
        Ok(())
    }

    /// The member errors of `forwards` (at most 1,000 ids a call are
    /// expected: one API page).
    pub async fn member_errors(
        &self,
        forwards: &[ForwardId],
    ) -> Result<Vec<MemberError>, StoreError> {
        let mut errors = Vec::new();
        for chunk in forwards.chunks(ERRORS_PER_STATEMENT) {
            let values: Vec<Value> = chunk.iter().map(|id| id.to_string().into()).collect();
            let rows = self
                .fetch_all(
                    &format!(
                        "SELECT forward_id, member, reason FROM group_member_errors \
                         WHERE forward_id IN ({}) ORDER BY forward_id, member",
                        placeholders(1, chunk.len())
                    ),
                    &values,
                )
                .await?;
            for row in &rows {
                let id: String = row.try_get("forward_id")?;
                let forward = id.parse().map_err(|_| StoreError::Corrupt {
                    table: "group_member_errors",
                    reason: format!("{id:?} is not a forward id"),
                })?;
                errors.push(MemberError {
                    forward,
                    member: row.try_get("member")?,
                    reason: row.try_get("reason")?,
                });
            }
        }
        Ok(errors)
    }
}

/// `$first, $first+1, …`: `count` placeholders.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn member_from_row(row: &AnyRow) -> Result<GroupMember, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "group_members",
        reason,
    };
    let addresses: String = row.try_get("addresses")?;
    let vrid: i64 = row.try_get("virtual_router_id")?;
    let holder: i64 = row.try_get("holder")?;
    Ok(GroupMember {
        group: row.try_get("group_name")?,
        member: row.try_get("member")?,
        addresses: addresses
            .split(',')
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse()
                    .map_err(|_| corrupt(format!("{a:?} is not an address")))
            })
            .collect::<Result<_, _>>()?,
        virtual_router_id: u8::try_from(vrid)
            .map_err(|_| corrupt(format!("{vrid} is not a VRRP id")))?,
        holder: holder != 0,
        keepalived: row.try_get("keepalived")?,
        last_report: row.try_get("last_report")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::store;

    fn member(name: &str, holder: bool) -> GroupMember {
        GroupMember {
            group: "web".to_owned(),
            member: name.to_owned(),
            addresses: vec!["192.0.2.100".parse().unwrap()],
            virtual_router_id: 51,
            holder,
            keepalived: "running".to_owned(),
            last_report: crate::now(),
        }
    }

    #[tokio::test]
    async fn members_are_upserted_listed_and_forgotten() {
        let (store, _dir) = store().await;
        store
            .upsert_group_member(&member("a", false))
            .await
            .unwrap();
        store
            .upsert_group_member(&member("b", false))
            .await
            .unwrap();
        store.upsert_group_member(&member("a", true)).await.unwrap();
        let listed = store.list_group_members().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].holder && listed[0].member == "a");
        assert!(!listed[1].holder);
        store.delete_group_member("web", "b").await.unwrap();
        assert_eq!(store.list_group_members().await.unwrap().len(), 1);
        assert_eq!(group_name(&group_host("web")), Some("web"));
        assert_eq!(group_name("proxy-1"), None);
    }

    #[tokio::test]
    async fn member_errors_are_recorded_cleared_and_replaced() {
        let (store, _dir) = store().await;
        let (one, two) = (ForwardId::new_random(), ForwardId::new_random());
        store
            .record_member_errors("b", &[(one, "bind failed".to_owned())], &[], false)
            .await
            .unwrap();
        store
            .record_member_errors("b", &[(one, "still failing".to_owned())], &[], false)
            .await
            .unwrap();
        store
            .record_member_errors("c", &[(two, "no".to_owned())], &[], false)
            .await
            .unwrap();
        let errors = store.member_errors(&[one, two]).await.unwrap();
        assert_eq!(errors.len(), 2);
        assert!(
            errors
                .iter()
                .any(|e| e.forward == one && e.reason == "still failing")
        );
        store
            .record_member_errors("b", &[], &[one], false)
            .await
            .unwrap();
        assert_eq!(store.member_errors(&[one]).await.unwrap(), vec![]);
        store
            .record_member_errors("c", &[(one, "x".to_owned())], &[], true)
            .await
            .unwrap();
        let errors = store.member_errors(&[one, two]).await.unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].forward, one);
    }
}
