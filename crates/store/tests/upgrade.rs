//! Rolling upgrades: a database left by an earlier release's migrations,
//! holding rows that schema allowed, is brought current by `db sync`
//! ([`Store::migrate`]) with every row intact and readable by this
//! release's queries, on each backend.
//!
//! The rows are written with plain SQL in the columns the older schema had,
//! as the older release would have written them, not through this release's
//! store (whose statements may name columns the old schema lacks).

mod support;

use std::net::IpAddr;

use navigator_core::{ForwardId, ForwardStatus, Protocol};
use navigator_store::{NewForwardRow, Store, StoreError, latest_schema_version};
use sqlx::{AnyConnection, AssertSqlSafe, Connection, Executor};
use support::TestDb;

const FORWARD_ID: &str = "5f0c2a9e-8d4b-4c1e-9a7f-3b6d2e1c0a01";
const RANGE_ID: &str = "5f0c2a9e-8d4b-4c1e-9a7f-3b6d2e1c0a02";

/// One test per backend for each scenario, on a database with no migration
/// applied.
macro_rules! upgrade_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::support::run_with(crate::support::Kind::Sqlite, false, super::$name).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::support::run_with(crate::support::Kind::Postgres, false, super::$name).await;
            })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::support::run_with(crate::support::Kind::MySql, false, super::$name).await;
            })*
        }
    };
}

upgrade_tests!(
    rows_of_the_first_schema_survive_db_sync,
    rows_of_the_previous_schema_survive_db_sync,
    db_sync_of_a_current_database_changes_nothing,
);

async fn execute(db: &TestDb, statements: &[String]) {
    let mut conn = AnyConnection::connect(&db.url).await.unwrap();
    for sql in statements {
        conn.execute(AssertSqlSafe(sql.clone()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    conn.close().await.unwrap();
}

/// A proxy and a single-port forward as schema version 1 (the first
/// release) stores them.
fn first_schema_rows() -> Vec<String> {
    vec![
        "INSERT INTO proxies (host, backend, external_addresses, port_first, port_last, last_heartbeat, created_at) \
         VALUES ('proxy-old', 'nft', '192.0.2.10', 20000, 20099, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')".into(),
        format!(
            "INSERT INTO forwards (id, project_id, description, protocol, external_address, external_port, \
             internal_ip_address, internal_port, instance_id, proxy, status, status_reason, created_at, updated_at) \
             VALUES ('{FORWARD_ID}', 'p-old', 'from v1', 'tcp', '192.0.2.10', 20001, '10.0.0.5', 22, \
             'vm-1', 'proxy-old', 'ACTIVE', NULL, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')"
        ),
    ]
}

/// As [`first_schema_rows`] plus a port range, as schema version 2 (port
/// ranges, with a row per occupied port in `forward_ports`) stores them.
fn port_range_schema_rows() -> Vec<String> {
    let mut rows = vec![
        "INSERT INTO proxies (host, backend, external_addresses, port_first, port_last, last_heartbeat, created_at) \
         VALUES ('proxy-old', 'nft', '192.0.2.10', 20000, 20099, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')".into(),
    ];
    for (id, first, last, internal, internal_end) in [
        (FORWARD_ID, 20001, 20001, 22, 22),
        (RANGE_ID, 20010, 20012, 8000, 8002),
    ] {
        rows.push(format!(
            "INSERT INTO forwards (id, project_id, description, protocol, external_address, external_port, \
             external_port_end, internal_ip_address, internal_port, internal_port_end, instance_id, proxy, \
             status, status_reason, created_at, updated_at) \
             VALUES ('{id}', 'p-old', 'from v2', 'tcp', '192.0.2.10', {first}, {last}, '10.0.0.5', {internal}, \
             {internal_end}, 'vm-1', 'proxy-old', 'ACTIVE', NULL, '2026-01-01T00:00:00.000000Z', \
             '2026-01-01T00:00:00.000000Z')"
        ));
        for port in first..=last {
            rows.push(format!(
                "INSERT INTO forward_ports (external_address, protocol, port, forward_id) \
                 VALUES ('192.0.2.10', 'tcp', {port}, '{id}')"
            ));
        }
    }
    rows
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A new forward on `port` of the old proxy's address.
fn new_forward(port: u16) -> NewForwardRow {
    NewForwardRow {
        project_id: "p-new".into(),
        description: String::new(),
        protocol: Protocol::Tcp,
        external_address: ip("192.0.2.10"),
        external_port: port,
        ports: 1,
        internal_ip_address: ip("10.0.0.6"),
        internal_port: 22,
        internal_port_end: 22,
        instance_id: None,
        proxy: "proxy-old".into(),
        controls: Default::default(),
    }
}

/// What the server reads of the old rows after the upgrade, and that the
/// ports they hold stay held.
async fn check_old_rows_after_sync(store: &Store) {
    let status = store.schema_status().await.unwrap();
    assert_eq!(status.current, Some(latest_schema_version()));
    assert!(
        status.pending.is_empty() && status.unknown.is_empty(),
        "{status:?}"
    );
    let proxies = store.list_proxies().await.unwrap();
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    assert_eq!(proxies[0].host, "proxy-old");
    assert_eq!(proxies[0].external_addresses, vec![ip("192.0.2.10")]);
    // Proxies and forwards from before migration 4: no features announced,
    // no controls.
    assert!(proxies[0].features.is_empty(), "{proxies:?}");
    let id: ForwardId = FORWARD_ID.parse().unwrap();
    let forward = store.get_forward(id).await.unwrap().expect("old forward");
    assert_eq!(
        (
            forward.project_id.as_str(),
            forward.external_port,
            forward.external_port_end,
            forward.internal_port,
            forward.internal_port_end,
            forward.status,
            forward.instance_id.as_deref(),
        ),
        (
            "p-old",
            20001,
            20001,
            22,
            22,
            ForwardStatus::Active,
            Some("vm-1")
        )
    );
    assert!(forward.controls.is_default(), "{:?}", forward.controls);
    let on_proxy = store.forwards_on_proxy("proxy-old").await.unwrap();
    assert!(on_proxy.iter().any(|f| f.id == id), "{on_proxy:?}");
    // The old forward's port is still taken; a neighbour is free.
    assert!(
        matches!(
            store.create_forward(&new_forward(20001)).await,
            Err(StoreError::PortTaken { .. })
        ),
        "an upgraded row's port must stay held"
    );
    store.create_forward(&new_forward(20002)).await.unwrap();
}

/// The oldest database a release may meet: migration 1 only.
async fn rows_of_the_first_schema_survive_db_sync(db: &'static TestDb) {
    db.store.migrate_to(1).await.unwrap();
    let status = db.store.schema_status().await.unwrap();
    assert_eq!(status.current, Some(1));
    assert_eq!(
        status.pending,
        navigator_store::schema_versions()
            .into_iter()
            .filter(|v| *v > 1)
            .collect::<Vec<_>>()
    );
    execute(db, &first_schema_rows()).await;
    db.store.migrate().await.unwrap();
    check_old_rows_after_sync(&db.store).await;
}

/// The previous release's database: every migration but the latest, with
/// rows in the shape schema version 2 (port ranges) and later accept.
async fn rows_of_the_previous_schema_survive_db_sync(db: &'static TestDb) {
    let previous = latest_schema_version() - 1;
    assert!(previous >= 5, "the rows below need the port-range schema");
    // The rows as the releases that had ranges wrote them, then the
    // previous release's own migrations (quota counters from migration 5).
    db.store.migrate_to(4).await.unwrap();
    execute(db, &port_range_schema_rows()).await;
    db.store.migrate_to(previous).await.unwrap();
    assert_eq!(
        db.store.pending_migrations().await.unwrap(),
        vec![latest_schema_version()]
    );
    // Another server, as `navigator-server db sync` would be.
    let server = db.second_server().await;
    server.migrate().await.unwrap();
    check_old_rows_after_sync(&server).await;
    // The quota counters start from the forwards the old schema held (a
    // range counts each of its ports).
    let quota = server.project_quota("p-old").await.unwrap();
    assert_eq!((quota.forwards.used, quota.ports.used), (2, 4));
    // The proxies' summaries (migration 6) start unknown and are built from
    // the forwards: the two old ones and the one created since.
    assert!(server.proxy_digest("proxy-old").await.unwrap().is_none());
    let built = server.rebuild_digests("proxy-old").await.unwrap();
    assert_eq!(built.digest.forwards(), 3);
    assert_eq!(server.proxy_digest("proxy-old").await.unwrap(), Some(built));
    let range = server
        .get_forward(RANGE_ID.parse().unwrap())
        .await
        .unwrap()
        .expect("old range forward");
    assert_eq!(
        (
            range.external_port,
            range.external_port_end,
            range.internal_port_end
        ),
        (20010, 20012, 8002)
    );
    assert!(matches!(
        server.create_forward(&new_forward(20011)).await,
        Err(StoreError::PortTaken { .. })
    ));
    server.close().await;
}

/// `db sync` twice: the second finds nothing to do and the version stays.
async fn db_sync_of_a_current_database_changes_nothing(db: &'static TestDb) {
    assert_eq!(db.store.schema_status().await.unwrap().current, None);
    db.store.migrate().await.unwrap();
    execute(db, &port_range_schema_rows()).await;
    db.store.migrate().await.unwrap();
    check_old_rows_after_sync(&db.store).await;
}
