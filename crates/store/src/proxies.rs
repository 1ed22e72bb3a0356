//! Queries on the `proxies` table: the forwarding nodes agents report.

use std::net::IpAddr;

use navigator_core::PortRange;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Store, StoreError, now};

/// A proxy as last reported by its agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRecord {
    pub host: String,
    pub backend: String,
    pub external_addresses: Vec<IpAddr>,
    pub port_range: PortRange,
    /// RFC 3339 UTC time of the last report.
    pub last_heartbeat: String,
}

impl Store {
    /// Records a heartbeat: creates the proxy or refreshes what it reported.
    pub async fn upsert_proxy(
        &self,
        host: &str,
        backend: &str,
        external_addresses: &[IpAddr],
        port_range: PortRange,
    ) -> Result<ProxyRecord, StoreError> {
        let now = now();
        let addresses = external_addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = "INSERT INTO proxies (host, backend, external_addresses, port_first, port_last, last_heartbeat, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
             ON CONFLICT (host) DO UPDATE SET backend = excluded.backend, \
               external_addresses = excluded.external_addresses, port_first = excluded.port_first, \
               port_last = excluded.port_last, last_heartbeat = excluded.last_heartbeat";
        sqlx::query(sql)
            .bind(host)
            .bind(backend)
            .bind(addresses)
            .bind(i64::from(port_range.first()))
            .bind(i64::from(port_range.last()))
            .bind(&now)
            .execute(&self.pool)
            .await?;
        Ok(ProxyRecord {
            host: host.to_owned(),
            backend: backend.to_owned(),
            external_addresses: external_addresses.to_vec(),
            port_range,
            last_heartbeat: now,
        })
    }

    pub async fn list_proxies(&self) -> Result<Vec<ProxyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM proxies ORDER BY host")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(proxy_from_row).collect()
    }

    pub async fn get_proxy(&self, host: &str) -> Result<Option<ProxyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM proxies WHERE host = ?1")
            .bind(host)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(proxy_from_row).transpose()
    }
}

fn proxy_from_row(row: &SqliteRow) -> Result<ProxyRecord, StoreError> {
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
            .upsert_proxy("p1", "relay", &["127.0.0.1".parse().unwrap()], range)
            .await
            .unwrap();
        let second = store
            .upsert_proxy(
                "p1",
                "relay",
                &["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
                range,
            )
            .await
            .unwrap();
        assert!(second.last_heartbeat >= first.last_heartbeat);
        let listed = store.list_proxies().await.unwrap();
        assert_eq!(listed, vec![second.clone()]);
        assert_eq!(store.get_proxy("p1").await.unwrap(), Some(second));
        assert_eq!(store.get_proxy("nope").await.unwrap(), None);
    }
}
