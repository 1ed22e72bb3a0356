//! Quotas per project on every backend: limits (defaults and overrides),
//! counters kept exact across creates, failed creates, ranges and deletes,
//! and racing creates on two servers at the limit, of which exactly one
//! passes.

mod support;

use std::net::IpAddr;
use std::sync::Arc;

use navigator_core::{PortRange, Protocol};
use navigator_store::{NewForwardRow, QuotaLimits, QuotaUsage, Resource, StoreError};
use support::TestDb;

backend_tests!(every: [
    counters_follow_creates_failures_and_deletes,
    limits_refuse_forwards_and_ports_naming_them,
    overrides_and_their_removal,
    racing_creates_at_the_limit_exactly_one_wins,
    racing_deletes_give_back_once,
]);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn new_range(project: &str, port: u16, ports: u16) -> NewForwardRow {
    NewForwardRow {
        project_id: project.into(),
        description: String::new(),
        protocol: Protocol::Tcp,
        external_address: ip("127.0.0.1"),
        external_port: port,
        ports,
        internal_ip_address: ip("10.0.0.5"),
        internal_port: 22,
        internal_port_end: 22,
        instance_id: None,
        proxy: "p1".into(),
        controls: Default::default(),
    }
}

fn usage(limit: i64, used: i64) -> QuotaUsage {
    QuotaUsage { limit, used }
}

async fn counters_follow_creates_failures_and_deletes(db: &'static TestDb) {
    let store = &db.store;
    let quota = store.project_quota("a").await.unwrap();
    assert_eq!((quota.forwards, quota.ports), (usage(-1, 0), usage(-1, 0)));
    let one = store
        .create_forward(&new_range("a", 20000, 1))
        .await
        .unwrap();
    let range = store
        .create_forward(&new_range("a", 20010, 5))
        .await
        .unwrap();
    store
        .create_forward_allocating(&new_range("a", 0, 3), PortRange::new(21000, 21100).unwrap())
        .await
        .unwrap();
    // A create that fails on a taken port leaves the counters alone.
    assert!(matches!(
        store.create_forward(&new_range("a", 20012, 2)).await,
        Err(StoreError::PortTaken { .. })
    ));
    store
        .create_forward(&new_range("b", 20100, 1))
        .await
        .unwrap();
    let quota = store.project_quota("a").await.unwrap();
    assert_eq!((quota.forwards.used, quota.ports.used), (3, 9));
    assert!(store.delete_forward(range.id).await.unwrap());
    assert!(!store.delete_forward(range.id).await.unwrap());
    assert!(store.delete_forward(one.id).await.unwrap());
    let quota = store.project_quota("a").await.unwrap();
    assert_eq!((quota.forwards.used, quota.ports.used), (1, 3));
    let b = store.project_quota("b").await.unwrap();
    assert_eq!((b.forwards.used, b.ports.used), (1, 1));
}

async fn limits_refuse_forwards_and_ports_naming_them(db: &'static TestDb) {
    let store = &db.store;
    store.set_default_quotas(QuotaLimits {
        forwards: 2,
        ports: 10,
    });
    store
        .create_forward(&new_range("a", 20000, 8))
        .await
        .unwrap();
    // 8 + 3 ports > 10.
    match store.create_forward(&new_range("a", 20100, 3)).await {
        Err(StoreError::OverQuota {
            project,
            resource,
            used,
            limit,
            wanted,
        }) => {
            assert_eq!(
                (project.as_str(), resource, used, limit, wanted),
                ("a", Resource::Ports, 8, 10, 11)
            );
        }
        other => panic!("expected OverQuota, got {other:?}"),
    }
    // Allocation is refused the same way, before any port is taken.
    assert!(matches!(
        store
            .create_forward_allocating(&new_range("a", 0, 3), PortRange::new(21000, 21100).unwrap())
            .await,
        Err(StoreError::OverQuota {
            resource: Resource::Ports,
            ..
        })
    ));
    store
        .create_forward(&new_range("a", 20100, 2))
        .await
        .unwrap();
    let err = store
        .create_forward(&new_range("a", 20200, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OverQuota {
                resource: Resource::Forwards,
                used: 2,
                limit: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "quota exceeded for project a: forwards would be 3, the limit is 2 (2 used)"
    );
    // Another project has its own counters.
    store
        .create_forward(&new_range("b", 20300, 10))
        .await
        .unwrap();
    let quota = store.project_quota("a").await.unwrap();
    assert_eq!((quota.forwards, quota.ports), (usage(2, 2), usage(10, 10)));
    assert!(quota.over().is_empty());
}

async fn overrides_and_their_removal(db: &'static TestDb) {
    let store = &db.store;
    store.set_default_quotas(QuotaLimits {
        forwards: 1,
        ports: 100,
    });
    store
        .create_forward(&new_range("a", 20000, 1))
        .await
        .unwrap();
    assert!(matches!(
        store.create_forward(&new_range("a", 20001, 1)).await,
        Err(StoreError::OverQuota { .. })
    ));
    let quota = store.set_project_quota("a", Some(3), None).await.unwrap();
    assert_eq!(quota.overrides, (Some(3), None));
    assert_eq!((quota.forwards, quota.ports), (usage(3, 1), usage(100, 1)));
    store
        .create_forward(&new_range("a", 20001, 1))
        .await
        .unwrap();
    // Setting one resource keeps the other's override.
    store.set_project_quota("a", None, Some(-1)).await.unwrap();
    let quota = store.set_project_quota("a", Some(5), None).await.unwrap();
    assert_eq!(quota.overrides, (Some(5), Some(-1)));
    // Below the use: accepted, and the quota says the project is over.
    let quota = store.set_project_quota("a", Some(1), None).await.unwrap();
    assert_eq!(quota.over(), vec![Resource::Forwards]);
    assert!(matches!(
        store.create_forward(&new_range("a", 20002, 1)).await,
        Err(StoreError::OverQuota {
            resource: Resource::Forwards,
            used: 2,
            limit: 1,
            ..
        })
    ));
    assert!(store.delete_project_quota("a").await.unwrap());
    assert!(!store.delete_project_quota("a").await.unwrap());
    let quota = store.project_quota("a").await.unwrap();
    assert_eq!(quota.overrides, (None, None));
    assert_eq!((quota.forwards, quota.ports), (usage(1, 2), usage(100, 2)));
}

async fn racing_creates_at_the_limit_exactly_one_wins(db: &'static TestDb) {
    // Two servers (two pools), limit 5 with 4 used, 20 creates at once on
    // distinct ports: exactly one passes, whatever the interleaving.
    let servers = [db.store.clone(), db.second_server().await];
    for server in &servers {
        server.set_default_quotas(QuotaLimits {
            forwards: 5,
            ports: -1,
        });
    }
    for i in 0..4 {
        db.store
            .create_forward(&new_range("a", 20000 + i, 1))
            .await
            .unwrap();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20u16 {
        let store = servers[usize::from(i % 2)].clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.create_forward(&new_range("a", 21000 + i, 1)).await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::OverQuota {
                used: 5, limit: 5, ..
            }) => {}
            Err(other) => panic!("a create over the quota must be OverQuota, got {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one create passes at limit - 1");
    let quota = db.store.project_quota("a").await.unwrap();
    assert_eq!(quota.forwards, usage(5, 5));
    servers[1].close().await;
}

async fn racing_deletes_give_back_once(db: &'static TestDb) {
    let servers = [db.store.clone(), db.second_server().await];
    let forward = db
        .store
        .create_forward(&new_range("a", 20000, 4))
        .await
        .unwrap();
    db.store
        .create_forward(&new_range("a", 20010, 1))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = servers[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            store.delete_forward(forward.id).await
        }));
    }
    let mut deleted = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            deleted += 1;
        }
    }
    assert_eq!(deleted, 1);
    let quota = db.store.project_quota("a").await.unwrap();
    assert_eq!((quota.forwards.used, quota.ports.used), (1, 1));
    servers[1].close().await;
}
