//! Queries on the `proxies` table: the forwarding nodes agents report.

use std::net::IpAddr;

use navigator_core::PortRange;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Backend, Store, StoreError, now};

const COLUMNS: &str =
    "host, backend, external_addresses, port_first, port_last, last_heartbeat, features";

/// A proxy as last reported by its agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRecord {
    pub host: String,
    pub backend: String,
    pub external_addresses: Vec<IpAddr>,
    pub port_range: PortRange,
    /// RFC 3339 UTC time of the last report.
    pub last_heartbeat: String,
    /// What the agent announced it can do (`AgentState::features`), e.g.
    /// `controls`; empty for agents older than the announcement.
    pub features: Vec<String>,
}

impl ProxyRecord {
    /// Whether the agent announced `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

impl Store {
    /// Records a heartbeat: creates the proxy or refreshes what it reported.
    pub async fn upsert_proxy(
        &self,
        host: &str,
        backend: &str,
        external_addresses: &[IpAddr],
        port_range: PortRange,
        features: &[String],
    ) -> Result<ProxyRecord, StoreError> {
        let now = now();
        // Stored as announced; a name with a comma cannot be kept apart.
        let mut features: Vec<String> = features
            .iter()
            .filter(|f| !f.is_empty() && !f.contains(','))
            .cloned()
            .collect();
        features.sort();
        features.dedup();
        let feature_list = features.join(",");
        let addresses = external_addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // One statement either way, so that two servers recording the same
        // proxy's heartbeat never collide on the primary key. The syntax is
        // the one place the dialects really differ.
        let upsert = match self.backend {
            Backend::Sqlite | Backend::Postgres => {
                "ON CONFLICT (host) DO UPDATE SET backend = excluded.backend, \
                 external_addresses = excluded.external_addresses, port_first = excluded.port_first, \
                 port_last = excluded.port_last, last_heartbeat = excluded.last_heartbeat, \
                 features = excluded.features"
            }
            // VALUES(col) is deprecated in MySQL 8.0.20 in favour of a row
            // alias, which MariaDB does not have; both still accept it.
            Backend::MySql => {
                "ON DUPLICATE KEY UPDATE backend = VALUES(backend), \
                 external_addresses = VALUES(external_addresses), port_first = VALUES(port_first), \
                 port_last = VALUES(port_last), last_heartbeat = VALUES(last_heartbeat), \
                 features = VALUES(features)"
            }
        };
        let sql = format!(
            "INSERT INTO proxies (host, backend, external_addresses, port_first, port_last, last_heartbeat, created_at, features) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7) {upsert}"
        );
        self.execute(
            &sql,
            &[
                host.into(),
                backend.into(),
                addresses.into(),
                port_range.first().into(),
                port_range.last().into(),
                (&now).into(),
                (&feature_list).into(),
            ],
        )
        .await?;
        Ok(ProxyRecord {
            host: host.to_owned(),
            backend: backend.to_owned(),
            external_addresses: external_addresses.to_vec(),
            port_range,
            last_heartbeat: now,
            features,
        })
    }

    pub async fn list_proxies(&self) -> Result<Vec<ProxyRecord>, StoreError> {
        let rows = self
            .fetch_all(&format!("SELECT {COLUMNS} FROM proxies ORDER BY host"), &[])
            .await?;
        rows.iter().map(proxy_from_row).collect()
    }

    pub async fn get_proxy(&self, host: &str) -> Result<Option<ProxyRecord>, StoreError> {
        let row = self
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM proxies WHERE host = $1"),
                &[host.into()],
            )
            .await?;
        row.as_ref().map(proxy_from_row).transpose()
    }
}

fn proxy_from_row(row: &AnyRow) -> Result<ProxyRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "proxies",
        reason,
    };
    let addresses: String = row.try_get("external_addresses")?;
    let external_addresses = addresses
        .split(',')
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse()
                .map_err(|_| corrupt(format!("{a:?} is not an address")))
        })
        .collect::<Result<_, _>>()?;
    let first: i64 = row.try_get("port_first")?;
    let last: i64 = row.try_get("port_last")?;
    let port = |p: i64| u16::try_from(p).map_err(|_| corrupt(format!("{p} is not a port")));
    let port_range =
        PortRange::new(port(first)?, port(last)?).map_err(|e| corrupt(e.to_string()))?;
    Ok(ProxyRecord {
        host: row.try_get("host")?,
        backend: row.try_get("backend")?,
        external_addresses,
        port_range,
        last_heartbeat: row.try_get("last_heartbeat")?,
        features: row
            .try_get::<String, _>("features")?
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use crate::testing::store;
    use navigator_core::PortRange;

    #[tokio::test]
    async fn heartbeat_creates_then_refreshes() {
        let (store, _dir) = store().await;
        let range = PortRange::new(20000, 20010).unwrap();
        let first = store
            .upsert_proxy("p1", "relay", &["127.0.0.1".parse().unwrap()], range, &[])
            .await
            .unwrap();
        let second = store
            .upsert_proxy(
                "p1",
                "relay",
                &["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
                range,
                &["controls".to_owned()],
            )
            .await
            .unwrap();
        assert!(second.has_feature("controls") && !first.has_feature("controls"));
        assert!(second.last_heartbeat >= first.last_heartbeat);
        let listed = store.list_proxies().await.unwrap();
        assert_eq!(listed, vec![second.clone()]);
        assert_eq!(store.get_proxy("p1").await.unwrap(), Some(second));
        assert_eq!(store.get_proxy("nope").await.unwrap(), None);
    }
}
