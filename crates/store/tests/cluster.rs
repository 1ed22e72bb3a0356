//! Several API servers on one database (cluster mode): each "server" is its
//! own [`Store`] with its own pool, and many tasks race through them at once.
//! Also: a database outage is reported as unavailable and recovered from
//! with nothing lost.

mod support;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use navigator_core::{ForwardStatus, PortForward, PortRange, Protocol};
use navigator_store::{
    ForwardFilter, ForwardOrder, Move, NewForwardRow, ReportedVersion, StatusReport, Store,
    StoreError, TargetChange,
};
use sqlx::{AnyConnection, AssertSqlSafe, Connection, Executor};
use support::{Forwarder, TestDb};
use tokio::sync::Barrier;

backend_tests!(
    every: [
        racing_creates_of_one_port_have_one_winner,
        racing_allocations_never_share_a_port,
        racing_allocations_fill_a_small_pool_exactly,
        racing_updates_of_one_forward_all_apply,
        servers_starting_together_all_migrate,
        pending_migrations_are_what_db_sync_applies,
        racing_failovers_move_each_forward_exactly_once,
        failover_keeps_the_port_when_free_else_allocates,
        a_moved_range_takes_its_ports_along,
        reports_about_an_older_version_are_ignored,
        a_down_proxys_forwards_show_the_reason,
    ],
    network: [outage_is_unavailable_then_recovers_with_nothing_lost],
);

/// Tasks per server in the races.
const TASKS_PER_SERVER: usize = 16;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn new_forward(project: &str, port: u16) -> NewForwardRow {
    NewForwardRow {
        project_id: project.into(),
        description: String::new(),
        protocol: Protocol::Tcp,
        external_address: ip("127.0.0.1"),
        external_port: port,
        ports: 1,
        internal_ip_address: ip("10.0.0.5"),
        internal_port: 22,
        internal_port_end: 22,
        instance_id: None,
        proxy: "p1".into(),
        controls: Default::default(),
    }
}

/// Two servers on the test's database.
async fn servers(db: &'static TestDb) -> [Store; 2] {
    [db.store.clone(), db.second_server().await]
}

async fn all_forwards(store: &Store) -> Vec<PortForward> {
    let order = ForwardOrder {
        limit: 10_000,
        ..Default::default()
    };
    store
        .list_forwards(&ForwardFilter::default(), &order)
        .await
        .unwrap()
}

/// Runs `count` tasks per server, all released at once by a barrier so that
/// they really overlap; returns their results in task order.
async fn race<T, F, Fut>(servers: &[Store], count: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Store, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(servers.len() * count));
    let mut tasks = Vec::new();
    for i in 0..servers.len() * count {
        let work = work(servers[i % servers.len()].clone(), i);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            work.await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task panicked"));
    }
    results
}

async fn racing_creates_of_one_port_have_one_winner(db: &'static TestDb) {
    let servers = servers(db).await;
    for round in 0..5u16 {
        let port = 21000 + round;
        let results = race(&servers, TASKS_PER_SERVER, |store, i| async move {
            store
                .create_forward(&new_forward(&format!("project-{i}"), port))
                .await
        })
        .await;
        let winners: Vec<&PortForward> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one create wins");
        let winner = winners[0];
        for result in &results {
            match result {
                Ok(f) => assert_eq!(f.id, winner.id),
                Err(StoreError::PortTaken {
                    holder,
                    port: taken,
                    ..
                }) => {
                    assert_eq!(*holder, winner.id, "the conflict names the holder");
                    assert_eq!(*taken, port);
                }
                Err(other) => panic!("round {round}: expected PortTaken, got {other}"),
            }
        }
    }
    let stored = all_forwards(&servers[1]).await;
    assert_eq!(stored.len(), 5, "losers left nothing behind");
}

async fn racing_allocations_never_share_a_port(db: &'static TestDb) {
    let servers = servers(db).await;
    let pool = PortRange::new(30000, 30999).unwrap();
    let results = race(&servers, TASKS_PER_SERVER, |store, i| async move {
        store
            .create_forward_allocating(&new_forward(&format!("project-{i}"), 0), pool)
            .await
    })
    .await;
    let mut ports = HashSet::new();
    for result in results {
        let forward = result.unwrap_or_else(|e| panic!("allocation failed: {e}"));
        assert!(
            ports.insert(forward.external_port),
            "port {} handed out twice",
            forward.external_port
        );
    }
    assert_eq!(ports.len(), 2 * TASKS_PER_SERVER);
    let stored: HashSet<u16> = all_forwards(&servers[0])
        .await
        .iter()
        .map(|f| f.external_port)
        .collect();
    assert_eq!(stored, ports);
}

/// More contenders than ports: every port is handed out exactly once and
/// the others learn that the pool is exhausted. (No task can lose more races
/// than there are ports, so the retry limit never ends one early.)
async fn racing_allocations_fill_a_small_pool_exactly(db: &'static TestDb) {
    let servers = servers(db).await;
    let pool = PortRange::new(31000, 31007).unwrap();
    let results = race(&servers, 12, |store, i| async move {
        store
            .create_forward_allocating(&new_forward(&format!("project-{i}"), 0), pool)
            .await
    })
    .await;
    let mut ports = Vec::new();
    for result in results {
        match result {
            Ok(forward) => ports.push(forward.external_port),
            Err(StoreError::PoolExhausted { .. }) => {}
            Err(other) => panic!("expected PoolExhausted, got {other}"),
        }
    }
    ports.sort_unstable();
    assert_eq!(ports, (31000..=31007).collect::<Vec<_>>());
}

/// Three servers-worth of changes to one forward at once: a description, a
/// new internal port and a new internal address, plus an agent's status
/// report. Each UPDATE names only its own columns, so all of them apply.
async fn racing_updates_of_one_forward_all_apply(db: &'static TestDb) {
    let servers = servers(db).await;
    let mut ids = Vec::new();
    for port in 22000..22020 {
        ids.push(
            servers[0]
                .create_forward(&new_forward("a", port))
                .await
                .unwrap()
                .id,
        );
    }
    let ids = Arc::new(ids);
    let changes = ids.len() * 3;
    let barrier = Arc::new(Barrier::new(changes));
    let mut tasks = Vec::new();
    for n in 0..changes {
        let (index, which) = (n / 3, n % 3);
        let id = ids[index];
        let store = servers[n % 2].clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let change = match which {
                0 => TargetChange {
                    description: Some(format!("web-{index}")),
                    ..Default::default()
                },
                1 => TargetChange {
                    internal_port: Some(8000 + u16::try_from(index).unwrap()),
                    ..Default::default()
                },
                _ => TargetChange {
                    internal_ip_address: Some(ip(&format!("10.1.0.{index}"))),
                    ..Default::default()
                },
            };
            barrier.wait().await;
            let updated = store.update_forward(id, &change).await.unwrap();
            assert!(updated.is_some(), "forward {id} vanished");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for (index, id) in ids.iter().enumerate() {
        let f = servers[1].get_forward(*id).await.unwrap().unwrap();
        assert_eq!(
            f.description,
            format!("web-{index}"),
            "{id}: description lost"
        );
        assert_eq!(
            f.internal_port,
            8000 + u16::try_from(index).unwrap(),
            "{id}: port lost"
        );
        assert_eq!(
            f.internal_ip_address,
            ip(&format!("10.1.0.{index}")),
            "{id}: address lost"
        );
        assert_eq!(
            f.status,
            ForwardStatus::Pending,
            "a retarget waits for its agent"
        );
    }
    // Status reports racing description changes: both land too.
    let results = race(&servers, ids.len(), |store, n| {
        let ids = Arc::clone(&ids);
        async move {
            let id = ids[n / 2];
            if n % 2 == 0 {
                store
                    .set_status(id, ForwardStatus::Active, None)
                    .await
                    .map(|_| ())
            } else {
                store
                    .update_forward(
                        id,
                        &TargetChange {
                            description: Some(format!("again-{}", n / 2)),
                            ..Default::default()
                        },
                    )
                    .await
                    .map(|_| ())
            }
        }
    })
    .await;
    for result in results {
        result.unwrap();
    }
    for (index, id) in ids.iter().enumerate() {
        let f = servers[0].get_forward(*id).await.unwrap().unwrap();
        assert_eq!(
            (f.status, f.description.as_str()),
            (ForwardStatus::Active, format!("again-{index}").as_str())
        );
    }
}

/// Every server migrates at start-up; several starting at once on an empty
/// database all succeed and leave one schema.
async fn servers_starting_together_all_migrate(db: &'static TestDb) {
    // Empty the test's database again: the harness migrated it.
    let mut conn = AnyConnection::connect(&db.url).await.unwrap();
    for table in [
        "forward_ports",
        "forwards",
        "proxies",
        "dashboard_sessions",
        "dashboard_keys",
        "quotas",
        "quota_usages",
        "proxy_digests",
        "group_members",
        "group_member_errors",
        "_sqlx_migrations",
    ] {
        conn.execute(AssertSqlSafe(format!("DROP TABLE {table}")))
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    let mut servers = Vec::new();
    for _ in 0..4 {
        servers.push(db.second_server().await);
    }
    let results = race(&servers, 1, |store, _| async move { store.migrate().await }).await;
    for result in results {
        result.unwrap_or_else(|e| panic!("a server failed to migrate: {e}"));
    }
    let created = servers[0]
        .create_forward(&new_forward("a", 24000))
        .await
        .unwrap();
    assert_eq!(all_forwards(&servers[3]).await, vec![created]);
}

/// A cluster-mode server refuses to start on a schema `db sync` has not
/// brought up to date; `pending_migrations` is how it tells.
async fn pending_migrations_are_what_db_sync_applies(db: &'static TestDb) {
    assert_eq!(
        db.store.pending_migrations().await.unwrap(),
        Vec::<i64>::new()
    );
    let mut conn = AnyConnection::connect(&db.url).await.unwrap();
    for table in [
        "forward_ports",
        "forwards",
        "proxies",
        "dashboard_sessions",
        "dashboard_keys",
        "quotas",
        "quota_usages",
        "proxy_digests",
        "group_members",
        "group_member_errors",
        "_sqlx_migrations",
    ] {
        conn.execute(AssertSqlSafe(format!("DROP TABLE {table}")))
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    let server = db.second_server().await;
    assert_eq!(
        server.pending_migrations().await.unwrap(),
        navigator_store::schema_versions()
    );
    server.migrate().await.unwrap();
    assert_eq!(
        server.pending_migrations().await.unwrap(),
        Vec::<i64>::new()
    );
    server.close().await;
}

/// The store reaches the database through a forwarder that the test cuts
/// (connections reset, new ones refused) and restores: in between, every
/// call fails with an error the API maps to 503; afterwards the same store
/// works again and everything written before is still there.
async fn outage_is_unavailable_then_recovers_with_nothing_lost(db: &'static TestDb) {
    let mut forwarder = Forwarder::start(support::address_of(&db.url)).await;
    let url = support::with_address(&db.url, forwarder.address);
    let store = Store::connect_with(&url, &support::impatient())
        .await
        .unwrap();
    let mut before = Vec::new();
    for port in 23000..23010 {
        before.push(store.create_forward(&new_forward("a", port)).await.unwrap());
    }
    store.ping().await.unwrap();

    forwarder.cut().await;
    let err = store.get_forward(before[0].id).await.unwrap_err();
    assert!(err.is_unavailable(), "read during outage: {err:?}");
    eprintln!("read during outage: {err}");
    let err = store
        .create_forward(&new_forward("a", 23100))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "write during outage: {err:?}");
    eprintln!("write during outage: {err}");
    let err = store
        .update_forward(before[1].id, &TargetChange::default())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "update during outage: {err:?}");
    assert!(store.ping().await.unwrap_err().is_unavailable());
    // A server that starts during the outage fails to open the database,
    // and says so as unavailable too.
    let err = Store::connect_with(&url, &support::impatient())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "connect during outage: {err:?}");
    eprintln!("connect during outage: {err}");

    forwarder.restore().await;
    store
        .ping()
        .await
        .expect("store works again after the outage");
    let after = store
        .create_forward(&new_forward("a", 23100))
        .await
        .unwrap();
    let mut stored = all_forwards(&store).await;
    stored.sort_by_key(|f| f.external_port);
    let mut expected = before;
    expected.push(after);
    assert_eq!(stored, expected, "nothing lost, nothing half-written");
    store.close().await;
    forwarder.cut().await;
}

fn move_to(to: &str, address: &str, pool: PortRange) -> Move {
    Move {
        from_proxy: "p1".into(),
        to_proxy: to.into(),
        external_address: ip(address),
        pool,
    }
}

async fn racing_failovers_move_each_forward_exactly_once(db: &'static TestDb) {
    let servers = servers(db).await;
    let mut ids = Vec::new();
    for port in 22000..22010u16 {
        ids.push(
            servers[0]
                .create_forward(&new_forward("p", port))
                .await
                .unwrap()
                .id,
        );
    }
    let pool = PortRange::new(22000, 22100).unwrap();
    let ids = Arc::new(ids);
    // Every task tries to move every forward, half of them to p2, half to p3.
    let results = race(&servers, TASKS_PER_SERVER, |store, i| {
        let ids = Arc::clone(&ids);
        async move {
            let (host, address) = if i % 2 == 0 {
                ("p2", "127.0.0.2")
            } else {
                ("p3", "127.0.0.3")
            };
            let mut moved = Vec::new();
            for id in ids.iter() {
                if let Some(f) = store
                    .move_forward(*id, &move_to(host, address, pool))
                    .await
                    .unwrap()
                {
                    moved.push(f);
                }
            }
            moved
        }
    })
    .await;
    let moves: Vec<&PortForward> = results.iter().flatten().collect();
    assert_eq!(
        moves.len(),
        ids.len(),
        "each forward moved exactly once: {moves:?}"
    );
    let stored = all_forwards(&servers[1]).await;
    for forward in &stored {
        let claimed = moves.iter().find(|m| m.id == forward.id).unwrap();
        assert_eq!(
            forward.proxy, claimed.proxy,
            "the winner's move is what is stored"
        );
        assert_eq!(forward.external_address, claimed.external_address);
        assert_eq!(forward.status, ForwardStatus::Pending);
        assert_ne!(forward.proxy, "p1");
    }
}

async fn failover_keeps_the_port_when_free_else_allocates(db: &'static TestDb) {
    let store = &db.store;
    let a = store
        .create_forward(&new_forward("p", 23000))
        .await
        .unwrap();
    let b = store
        .create_forward(&new_forward("p", 23001))
        .await
        .unwrap();
    // p2 already holds 23001 on its address.
    let mut holder = new_forward("p", 23001);
    holder.proxy = "p2".into();
    holder.external_address = ip("127.0.0.2");
    store.create_forward(&holder).await.unwrap();
    let pool = PortRange::new(23000, 23002).unwrap();
    let moved = store
        .move_forward(a.id, &move_to("p2", "127.0.0.2", pool))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (moved.proxy.as_str(), moved.external_port),
        ("p2", 23000),
        "port kept"
    );
    assert_eq!(moved.external_address, ip("127.0.0.2"));
    let moved = store
        .move_forward(b.id, &move_to("p2", "127.0.0.2", pool))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        moved.external_port, 23002,
        "taken port replaced by the lowest free one"
    );
    // A second move of the same forward from p1 finds it gone from p1.
    assert_eq!(
        store
            .move_forward(b.id, &move_to("p3", "127.0.0.3", pool))
            .await
            .unwrap(),
        None
    );
    // Nothing free: the forward stays where it was, and the error says why.
    let c = store
        .create_forward(&new_forward("p", 23005))
        .await
        .unwrap();
    let full = PortRange::new(23000, 23002).unwrap();
    match store
        .move_forward(c.id, &move_to("p2", "127.0.0.2", full))
        .await
    {
        Err(StoreError::PoolExhausted { range, .. }) => assert_eq!(range, "23000-23002"),
        other => panic!("expected PoolExhausted, got {other:?}"),
    }
    assert_eq!(store.get_forward(c.id).await.unwrap().unwrap().proxy, "p1");
}

async fn a_moved_range_takes_its_ports_along(db: &'static TestDb) {
    let store = &db.store;
    let mut range = new_forward("p", 25000);
    range.ports = 4;
    range.internal_port_end = 25;
    let range = store.create_forward(&range).await.unwrap();
    // 25001 is taken on p2's address: the range cannot keep 25000-25003 there
    // and moves as one block to the lowest free run of four.
    let mut holder = new_forward("p", 25001);
    holder.proxy = "p2".into();
    holder.external_address = ip("127.0.0.2");
    let holder = store.create_forward(&holder).await.unwrap();
    let pool = PortRange::new(25000, 25010).unwrap();
    let moved = store
        .move_forward(range.id, &move_to("p2", "127.0.0.2", pool))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (moved.external_port, moved.external_port_end),
        (25002, 25005),
        "same size, lowest free block"
    );
    // The old ports are free again on the old address...
    store
        .create_forward(&new_forward("p", 25003))
        .await
        .expect("the old address's ports were released");
    // ...and the new ones are held by the moved range.
    let mut clash = new_forward("p", 25004);
    clash.proxy = "p2".into();
    clash.external_address = ip("127.0.0.2");
    match store.create_forward(&clash).await {
        Err(StoreError::PortTaken {
            holder: h, port, ..
        }) => {
            assert_eq!((h, port), (range.id, 25004));
        }
        other => panic!("expected PortTaken by the moved range, got {other:?}"),
    }
    assert_ne!(holder.id, range.id);
}

async fn reports_about_an_older_version_are_ignored(db: &'static TestDb) {
    let store = &db.store;
    let created = store
        .create_forward(&new_forward("p", 24000))
        .await
        .unwrap();
    let old = ReportedVersion::from(&created);
    let retargeted = store
        .update_forward(
            created.id,
            &TargetChange {
                internal_port: Some(2222),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        !store
            .set_reported_status(created.id, &old, ForwardStatus::Active, None)
            .await
            .unwrap(),
        "a report about the old target must not mark the new one"
    );
    assert_eq!(
        store.get_forward(created.id).await.unwrap().unwrap().status,
        ForwardStatus::Pending
    );
    let current = ReportedVersion::from(&retargeted);
    assert!(
        store
            .set_reported_status(created.id, &current, ForwardStatus::Active, None)
            .await
            .unwrap()
    );
    // After a move, the old proxy's reports (even without a version) are ignored.
    let moved = store
        .move_forward(
            created.id,
            &move_to("p2", "127.0.0.2", PortRange::new(24000, 24010).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
    let from_old_proxy = ReportedVersion {
        proxy: "p1".into(),
        applied: None,
    };
    assert!(
        !store
            .set_reported_status(created.id, &from_old_proxy, ForwardStatus::Error, Some("x"))
            .await
            .unwrap()
    );
    let shown = store.get_forward(created.id).await.unwrap().unwrap();
    assert_eq!(
        (shown.status, shown.proxy.as_str()),
        (ForwardStatus::Pending, "p2")
    );
    assert!(
        store
            .set_reported_status(
                created.id,
                &ReportedVersion::from(&moved),
                ForwardStatus::Active,
                None
            )
            .await
            .unwrap()
    );
    // The batched form (an agent's answer to a full sync) applies the same
    // guard to each report: the current version is written, the old one
    // and the unchanged status are not.
    let other = store
        .create_forward(&new_forward("p", 24001))
        .await
        .unwrap();
    let moved_now = store.get_forward(created.id).await.unwrap().unwrap();
    let reports = [
        StatusReport {
            id: other.id,
            version: ReportedVersion::from(&other),
            status: ForwardStatus::Error,
            reason: Some("port 24001 is in use".into()),
        },
        StatusReport {
            id: created.id,
            version: old.clone(),
            status: ForwardStatus::Error,
            reason: Some("stale".into()),
        },
        StatusReport {
            id: created.id,
            version: ReportedVersion::from(&moved_now),
            status: ForwardStatus::Active,
            reason: None,
        },
    ];
    assert_eq!(store.set_reported_statuses(&reports).await.unwrap(), 1);
    let other = store.get_forward(other.id).await.unwrap().unwrap();
    assert_eq!(
        (other.status, other.status_reason.as_deref()),
        (ForwardStatus::Error, Some("port 24001 is in use"))
    );
    assert_eq!(
        store.get_forward(created.id).await.unwrap().unwrap().status,
        ForwardStatus::Active
    );
}

async fn a_down_proxys_forwards_show_the_reason(db: &'static TestDb) {
    let store = &db.store;
    let a = store
        .create_forward(&new_forward("p", 25000))
        .await
        .unwrap();
    let mut elsewhere = new_forward("p", 25001);
    elsewhere.proxy = "p2".into();
    let b = store.create_forward(&elsewhere).await.unwrap();
    assert_eq!(
        store
            .set_proxy_error("p1", "proxy p1 is down")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .set_proxy_error("p1", "proxy p1 is down")
            .await
            .unwrap(),
        0,
        "no rewrite"
    );
    let shown = store.get_forward(a.id).await.unwrap().unwrap();
    assert_eq!(shown.status, ForwardStatus::Error);
    assert_eq!(shown.status_reason.as_deref(), Some("proxy p1 is down"));
    assert_eq!(
        store.get_forward(b.id).await.unwrap().unwrap().status,
        ForwardStatus::Pending
    );
    let ids = |forwards: Vec<PortForward>| forwards.iter().map(|f| f.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.forwards_on_proxy("p1").await.unwrap()),
        vec![a.id]
    );
    assert_eq!(
        ids(store.forwards_on_proxy("p2").await.unwrap()),
        vec![b.id]
    );
    assert!(store.forwards_on_proxy("p3").await.unwrap().is_empty());
}
