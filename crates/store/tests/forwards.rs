//! The store's guarantees on every backend (SQLite always; PostgreSQL and
//! MariaDB/MySQL when configured, see `support`): constraints, allocation,
//! pagination and updates.

mod support;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use navigator_core::{Controls, ForwardStatus, PortRange, Protocol, ProxyProtocol, parse_cidr};
use navigator_store::{
    ForwardFilter, ForwardOrder, INSTANCE_DELETED, NewForwardRow, ProxyUsage, SortColumn,
    StoreError, TargetChange,
};
use support::TestDb;

backend_tests!(every: [
    duplicate_endpoint_is_refused_and_names_the_holder,
    allocation_takes_lowest_free_port_and_reports_exhaustion,
    allocation_scans_past_many_held_ports,
    concurrent_allocations_never_share_a_port,
    pagination_walks_every_row_once_in_both_directions,
    filters_select_matching_rows,
    update_retargets_and_status_follows,
    proxies_upsert_and_list,
    text_round_trips_exactly,
    overlapping_ranges_are_refused_naming_the_holder,
    range_allocation_takes_the_lowest_free_block,
    racing_overlapping_ranges_exactly_one_wins,
    a_retargeted_range_keeps_its_size,
    instance_lookup_and_deleted_instance_marks,
    controls_round_trip_and_update_in_place,
]);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn new_forward(project: &str, protocol: Protocol, port: u16) -> NewForwardRow {
    NewForwardRow {
        project_id: project.into(),
        description: String::new(),
        protocol,
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

fn page(limit: u32) -> ForwardOrder {
    ForwardOrder {
        limit,
        ..Default::default()
    }
}

async fn duplicate_endpoint_is_refused_and_names_the_holder(db: &'static TestDb) {
    let store = &db.store;
    let first = store
        .create_forward(&new_forward("a", Protocol::Tcp, 20000))
        .await
        .unwrap();
    let err = store
        .create_forward(&new_forward("b", Protocol::Tcp, 20000))
        .await
        .unwrap_err();
    match err {
        StoreError::PortTaken { holder, port, .. } => {
            assert_eq!(holder, first.id);
            assert_eq!(port, 20000);
        }
        other => panic!("expected PortTaken, got {other}"),
    }
    // Same port with the other protocol is a different endpoint.
    store
        .create_forward(&new_forward("b", Protocol::Udp, 20000))
        .await
        .unwrap();
    let all = store
        .list_forwards(&ForwardFilter::default(), &page(100))
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "the refused create left nothing behind");
}

async fn allocation_takes_lowest_free_port_and_reports_exhaustion(db: &'static TestDb) {
    let store = &db.store;
    let pool = PortRange::new(20000, 20003).unwrap();
    store
        .create_forward(&new_forward("a", Protocol::Tcp, 20001))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            store
                .create_forward_allocating(&new_forward("a", Protocol::Tcp, 0), pool)
                .await
                .unwrap()
                .external_port,
        );
    }
    assert_eq!(got, vec![20000, 20002, 20003]);
    let err = store
        .create_forward_allocating(&new_forward("a", Protocol::Tcp, 0), pool)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PoolExhausted { .. }), "{err}");
    // UDP has its own pool.
    let udp = store
        .create_forward_allocating(&new_forward("a", Protocol::Udp, 0), pool)
        .await
        .unwrap();
    assert_eq!(udp.external_port, 20000);
}

async fn allocation_scans_past_many_held_ports(db: &'static TestDb) {
    let store = &db.store;
    // More held ports in a row than one scan window reads.
    let mut held = Vec::new();
    for port in 24000..24600 {
        held.push(
            store
                .create_forward(&new_forward("a", Protocol::Tcp, port))
                .await
                .unwrap(),
        );
    }
    let pool = PortRange::new(24000, 24999).unwrap();
    let allocate = |store: navigator_store::Store| async move {
        store
            .create_forward_allocating(&new_forward("a", Protocol::Tcp, 0), pool)
            .await
            .unwrap()
            .external_port
    };
    assert_eq!(allocate(store.clone()).await, 24600, "the first free port");
    // The cursor hands out the next ports, stepping over a held one.
    store
        .create_forward(&new_forward("a", Protocol::Tcp, 24602))
        .await
        .unwrap();
    assert_eq!(allocate(store.clone()).await, 24601);
    assert_eq!(allocate(store.clone()).await, 24603, "24602 is held");
    // A port freed low in the pool is what a process's first scan finds.
    assert!(store.delete_forward(held[100].id).await.unwrap());
    let other_server = db.second_server().await;
    assert_eq!(allocate(other_server).await, 24100);
    // A range takes the first free block, past the long held run.
    let range = store
        .create_forward_allocating(&new_range("a", Protocol::Tcp, 0, 3), pool)
        .await
        .unwrap();
    assert_eq!(
        (range.external_port, range.external_port_end),
        (24604, 24606)
    );
}

async fn concurrent_allocations_never_share_a_port(db: &'static TestDb) {
    let store = &db.store;
    let pool = PortRange::new(30000, 30999).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_forward_allocating(&new_forward("a", Protocol::Tcp, 0), pool)
                .await
        }));
    }
    let mut ports = HashSet::new();
    for task in tasks {
        let forward = task.await.unwrap().unwrap();
        assert!(
            ports.insert(forward.external_port),
            "port {} handed out twice",
            forward.external_port
        );
    }
    assert_eq!(ports.len(), 40);
}

async fn pagination_walks_every_row_once_in_both_directions(db: &'static TestDb) {
    let store = &db.store;
    let mut ids = Vec::new();
    for port in 20000..20007 {
        ids.push(
            store
                .create_forward(&new_forward("a", Protocol::Tcp, port))
                .await
                .unwrap()
                .id,
        );
    }
    store
        .create_forward(&new_forward("other", Protocol::Tcp, 20100))
        .await
        .unwrap();
    let filter = ForwardFilter {
        project_id: Some("a".into()),
        ..Default::default()
    };
    for descending in [false, true] {
        let mut seen = Vec::new();
        let mut marker = None;
        loop {
            let order = ForwardOrder {
                column: SortColumn::ExternalPort,
                descending,
                limit: 3,
                marker,
            };
            let got = store.list_forwards(&filter, &order).await.unwrap();
            seen.extend(got.iter().map(|f| f.external_port));
            if got.len() < 3 {
                break;
            }
            marker = got.last().map(|f| f.id);
        }
        let mut expected: Vec<u16> = (20000..20007).collect();
        if descending {
            expected.reverse();
        }
        assert_eq!(seen, expected, "descending={descending}");
    }
    // Another project's id is not a usable marker.
    let others = store
        .list_forwards(
            &ForwardFilter {
                project_id: Some("other".into()),
                ..Default::default()
            },
            &page(10),
        )
        .await
        .unwrap();
    let order = ForwardOrder {
        marker: Some(others[0].id),
        ..page(10)
    };
    assert!(matches!(
        store.list_forwards(&filter, &order).await,
        Err(StoreError::BadMarker(_))
    ));
}

async fn filters_select_matching_rows(db: &'static TestDb) {
    let store = &db.store;
    let mut with_instance = new_forward("a", Protocol::Udp, 20000);
    with_instance.instance_id = Some("vm-1".into());
    store.create_forward(&with_instance).await.unwrap();
    store
        .create_forward(&new_forward("a", Protocol::Tcp, 20001))
        .await
        .unwrap();
    let by_instance = ForwardFilter {
        instance_id: Some("vm-1".into()),
        ..Default::default()
    };
    assert_eq!(
        store
            .list_forwards(&by_instance, &page(10))
            .await
            .unwrap()
            .len(),
        1
    );
    let by_protocol = ForwardFilter {
        protocol: Some(Protocol::Tcp),
        external_port: Some(20001),
        ..Default::default()
    };
    assert_eq!(
        store
            .list_forwards(&by_protocol, &page(10))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn update_retargets_and_status_follows(db: &'static TestDb) {
    let store = &db.store;
    let forward = store
        .create_forward(&new_forward("a", Protocol::Tcp, 20000))
        .await
        .unwrap();
    assert!(
        store
            .set_status(forward.id, ForwardStatus::Active, None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_status(forward.id, ForwardStatus::Active, None)
            .await
            .unwrap(),
        "no-op writes nothing"
    );
    let changed = store
        .update_forward(
            forward.id,
            &TargetChange {
                description: Some("web".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (changed.status, changed.description.as_str()),
        (ForwardStatus::Active, "web")
    );
    let retargeted = store
        .update_forward(
            forward.id,
            &TargetChange {
                internal_port: Some(8080),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (retargeted.status, retargeted.internal_port),
        (ForwardStatus::Pending, 8080)
    );
    assert!(store.delete_forward(forward.id).await.unwrap());
    assert!(!store.delete_forward(forward.id).await.unwrap());
    assert_eq!(
        store
            .update_forward(forward.id, &TargetChange::default())
            .await
            .unwrap(),
        None
    );
}

async fn proxies_upsert_and_list(db: &'static TestDb) {
    let store = &db.store;
    let range = PortRange::new(20000, 20010).unwrap();
    let first = store
        .upsert_proxy("p1", "relay", &[ip("127.0.0.1")], range, &[])
        .await
        .unwrap();
    let wider = PortRange::new(20000, 29999).unwrap();
    let second = store
        .upsert_proxy("p1", "relay", &[ip("127.0.0.1"), ip("::1")], wider, &[])
        .await
        .unwrap();
    assert!(second.last_heartbeat >= first.last_heartbeat);
    store
        .upsert_proxy("p0", "nftables", &[], range, &[])
        .await
        .unwrap();
    let listed = store.list_proxies().await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.host.as_str()).collect::<Vec<_>>(),
        ["p0", "p1"]
    );
    assert_eq!(listed[1], second);
    assert_eq!(store.get_proxy("p1").await.unwrap(), Some(second));
    assert_eq!(store.get_proxy("nope").await.unwrap(), None);
    store
        .create_forward(&new_forward("a", Protocol::Tcp, 20000))
        .await
        .unwrap();
    assert_eq!(
        store.proxy_usage().await.unwrap(),
        vec![(
            "p1".to_owned(),
            ProxyUsage {
                forwards: 1,
                ports: 1
            }
        )]
    );
    assert_eq!(store.forwards_on_proxy("p1").await.unwrap().len(), 1);
    assert!(store.forwards_on_proxy("p0").await.unwrap().is_empty());
}

/// Text comes back byte for byte (4-byte UTF-8 on MySQL needs utf8mb4), and
/// compares exactly: ids differing only in case are different projects.
async fn text_round_trips_exactly(db: &'static TestDb) {
    let store = &db.store;
    let mut row = new_forward("Project", Protocol::Tcp, 20000);
    row.description = "web \u{1F680} ünïcode 'quoted' $1 ?".into();
    row.instance_id = Some("vm-\u{00e9}".into());
    row.external_address = ip("2001:db8::1");
    let created = store.create_forward(&row).await.unwrap();
    let got = store.get_forward(created.id).await.unwrap().unwrap();
    assert_eq!(got, created);
    let lower = ForwardFilter {
        project_id: Some("project".into()),
        ..Default::default()
    };
    assert!(
        store
            .list_forwards(&lower, &page(10))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(created.created_at.len() == 27 && created.created_at.ends_with('Z'));
}

fn new_range(project: &str, protocol: Protocol, first: u16, ports: u16) -> NewForwardRow {
    NewForwardRow {
        ports,
        internal_port: 8000,
        internal_port_end: 8000 + ports - 1,
        ..new_forward(project, protocol, first)
    }
}

fn taken(err: StoreError) -> (navigator_core::ForwardId, u16) {
    match err {
        StoreError::PortTaken { holder, port, .. } => (holder, port),
        other => panic!("expected PortTaken, got {other}"),
    }
}

async fn overlapping_ranges_are_refused_naming_the_holder(db: &'static TestDb) {
    let store = &db.store;
    let range = store
        .create_forward(&new_range("a", Protocol::Tcp, 21000, 10))
        .await
        .unwrap();
    assert_eq!(
        (range.external_port, range.external_port_end),
        (21000, 21009)
    );
    assert_eq!((range.internal_port, range.internal_port_end), (8000, 8009));
    let inside = store
        .create_forward(&new_forward("b", Protocol::Tcp, 21005))
        .await
        .unwrap_err();
    assert_eq!(taken(inside), (range.id, 21005), "a port inside the range");
    let overlapping = store
        .create_forward(&new_range("b", Protocol::Tcp, 20995, 6))
        .await
        .unwrap_err();
    assert_eq!(taken(overlapping), (range.id, 21000));
    let single = store
        .create_forward(&new_forward("b", Protocol::Tcp, 21020))
        .await
        .unwrap();
    let covering = store
        .create_forward(&new_range("b", Protocol::Tcp, 21015, 10))
        .await
        .unwrap_err();
    assert_eq!(
        taken(covering),
        (single.id, 21020),
        "a range over a single port"
    );
    store
        .create_forward(&new_range("b", Protocol::Tcp, 21010, 10))
        .await
        .expect("the adjacent block is free");
    store
        .create_forward(&new_range("b", Protocol::Udp, 21000, 10))
        .await
        .expect("the other protocol is another endpoint");
    let all = store
        .list_forwards(&ForwardFilter::default(), &page(100))
        .await
        .unwrap();
    assert_eq!(all.len(), 4, "refused creates left nothing behind");
    assert_eq!(
        store.proxy_usage().await.unwrap(),
        vec![(
            "p1".to_owned(),
            ProxyUsage {
                forwards: 4,
                ports: 31
            }
        )],
        "placement weighs ports: 10 + 1 + 10 + 10"
    );

    let found = store
        .list_forwards(
            &ForwardFilter {
                external_port: Some(21004),
                protocol: Some(Protocol::Tcp),
                ..Default::default()
            },
            &page(100),
        )
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![range.id],
        "filtering by a port inside a range finds the range"
    );
    assert!(store.delete_forward(range.id).await.unwrap());
    store
        .create_forward(&new_forward("b", Protocol::Tcp, 21005))
        .await
        .expect("deleting the range frees every port of it");
    let got = store.get_forward(range.id).await.unwrap();
    assert!(got.is_none());
}

async fn range_allocation_takes_the_lowest_free_block(db: &'static TestDb) {
    let store = &db.store;
    let pool = PortRange::new(22000, 22019).unwrap();
    store
        .create_forward(&new_forward("a", Protocol::Tcp, 22002))
        .await
        .unwrap();
    let mut blocks = Vec::new();
    for ports in [5, 3] {
        let f = store
            .create_forward_allocating(&new_range("a", Protocol::Tcp, 0, ports), pool)
            .await
            .unwrap();
        blocks.push((f.external_port, f.external_port_end));
    }
    assert_eq!(blocks, vec![(22003, 22007), (22008, 22010)]);
    let single = store
        .create_forward_allocating(&new_forward("a", Protocol::Tcp, 0), pool)
        .await
        .unwrap();
    assert_eq!(single.external_port, 22000, "single ports fill the gaps");
    let err = store
        .create_forward_allocating(&new_range("a", Protocol::Tcp, 0, 10), pool)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PoolExhausted { .. }),
        "9 ports are left at the end, not 10: {err}"
    );
    let last = store
        .create_forward_allocating(&new_range("a", Protocol::Tcp, 0, 9), pool)
        .await
        .unwrap();
    assert_eq!((last.external_port, last.external_port_end), (22011, 22019));
}

async fn racing_overlapping_ranges_exactly_one_wins(db: &'static TestDb) {
    // Two servers, eight creates of 10-port ranges starting one port apart:
    // every pair overlaps, so exactly one may exist afterwards.
    let servers = [db.store.clone(), db.second_server().await];
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8u16 {
        let store = servers[usize::from(i % 2)].clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .create_forward(&new_range("a", Protocol::Tcp, 23000 + i, 10))
                .await
        }));
    }
    let mut won = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(forward) => won.push(forward),
            Err(StoreError::PortTaken { .. }) => {}
            Err(other) => panic!("a lost race must be a conflict, got {other}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one overlapping range wins");
    let all = db
        .store
        .list_forwards(&ForwardFilter::default(), &page(100))
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    // The losers left no port behind: the block right after the winner's is free.
    let after = won[0].external_port_end + 1;
    db.store
        .create_forward(&new_range("a", Protocol::Tcp, after, 10))
        .await
        .unwrap();
}

async fn a_retargeted_range_keeps_its_size(db: &'static TestDb) {
    let store = &db.store;
    let range = store
        .create_forward(&new_range("a", Protocol::Udp, 24000, 4))
        .await
        .unwrap();
    let moved = store
        .update_forward(
            range.id,
            &TargetChange {
                internal_port: Some(9000),
                internal_port_end: Some(9003),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((moved.internal_port, moved.internal_port_end), (9000, 9003));
    assert_eq!(
        (moved.external_port, moved.external_port_end),
        (24000, 24003)
    );
    assert_eq!(moved.status, ForwardStatus::Pending);
}

async fn instance_lookup_and_deleted_instance_marks(db: &'static TestDb) {
    let store = &db.store;
    let mut rows = Vec::new();
    for (project, port, instance) in [
        ("a", 20000, Some("vm-1")),
        ("b", 20001, Some("vm-1")),
        ("a", 20002, Some("vm-2")),
        ("a", 20003, None),
    ] {
        let mut row = new_forward(project, Protocol::Tcp, port);
        row.instance_id = instance.map(Into::into);
        rows.push(store.create_forward(&row).await.unwrap());
    }
    let of_vm1 = store.forwards_of_instance("vm-1").await.unwrap();
    assert_eq!(of_vm1.iter().map(|f| f.id).collect::<Vec<_>>(), {
        let mut ids = vec![rows[0].id, rows[1].id];
        ids.sort_by_key(|id| id.to_string());
        ids
    });
    assert!(store.forwards_of_instance("vm-9").await.unwrap().is_empty());

    let reason = format!("{INSTANCE_DELETED}vm-1 (Nova instance.delete.end)");
    assert!(
        store
            .set_status(rows[0].id, ForwardStatus::Error, Some(&reason))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_status(rows[0].id, ForwardStatus::Active, None)
            .await
            .unwrap(),
        "an agent report must not clear the mark"
    );
    let marked = store.get_forward(rows[0].id).await.unwrap().unwrap();
    assert_eq!(
        (marked.status, marked.status_reason.as_deref()),
        (ForwardStatus::Error, Some(reason.as_str()))
    );
    let carried: Vec<_> = store
        .forwards_on_proxy("p1")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(carried.len(), 3);
    assert!(
        !carried.contains(&rows[0].id),
        "a marked forward is not carried"
    );
    // An ordinary ERROR is still carried and still updated by reports.
    store
        .set_status(rows[2].id, ForwardStatus::Error, Some("port in use"))
        .await
        .unwrap();
    assert_eq!(store.forwards_on_proxy("p1").await.unwrap().len(), 3);
    assert!(
        store
            .set_status(rows[2].id, ForwardStatus::Active, None)
            .await
            .unwrap()
    );
    // A retarget clears the mark: the forward is carried again.
    let retargeted = store
        .update_forward(
            rows[0].id,
            &TargetChange {
                internal_port: Some(2222),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (retargeted.status, retargeted.status_reason),
        (ForwardStatus::Pending, None)
    );
    assert_eq!(store.forwards_on_proxy("p1").await.unwrap().len(), 4);
}

/// The three controls are stored, read back in canonical order, changed one
/// at a time by an update (the others kept), and a change of controls puts
/// the forward back to `PENDING` as a retarget does. A report about an
/// older set of controls is not recorded.
async fn controls_round_trip_and_update_in_place(db: &'static TestDb) {
    let store = &db.store;
    let cidr = |s: &str| parse_cidr(s).unwrap();
    let controls = Controls::new(
        vec![
            cidr("2001:db8::/32"),
            cidr("192.0.2.0/24"),
            cidr("192.0.2.0/24"),
        ],
        Some(7),
        ProxyProtocol::V2,
    );
    let forward = store
        .create_forward(&NewForwardRow {
            controls: controls.clone(),
            ..new_forward("a", Protocol::Tcp, 20000)
        })
        .await
        .unwrap();
    let read = store.get_forward(forward.id).await.unwrap().unwrap();
    assert_eq!(read.controls, controls);
    assert_eq!(read.controls.allowed_cidrs.len(), 2);
    let plain = store
        .create_forward(&new_forward("a", Protocol::Tcp, 20001))
        .await
        .unwrap();
    assert!(
        store
            .get_forward(plain.id)
            .await
            .unwrap()
            .unwrap()
            .controls
            .is_default()
    );
    // Many CIDRs fit (the column holds the largest allowlist allowed).
    let many: Vec<_> = (0..10_000u32)
        .map(|i| cidr(&format!("2001:db8:{:x}:{:x}::/64", i / 256, i % 256)))
        .collect();
    let updated = store
        .update_forward(
            plain.id,
            &TargetChange {
                allowed_cidrs: Some(many.clone().into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.controls.allowed_cidrs.len(), 10_000);
    assert_eq!(updated.status, ForwardStatus::Pending);
    store
        .set_status(forward.id, ForwardStatus::Active, None)
        .await
        .unwrap();
    let old_version = navigator_store::ReportedVersion::from(&read);
    let changed = store
        .update_forward(
            forward.id,
            &TargetChange {
                max_connections: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.status, ForwardStatus::Pending);
    assert_eq!(
        changed.controls,
        Controls::new(controls.allowed_cidrs.to_vec(), None, ProxyProtocol::V2)
    );
    // The agent's late report about the limit of 7 is not this version.
    assert!(
        !store
            .set_reported_status(forward.id, &old_version, ForwardStatus::Active, None)
            .await
            .unwrap()
    );
    let current = navigator_store::ReportedVersion::from(&changed);
    assert!(
        store
            .set_reported_status(forward.id, &current, ForwardStatus::Active, None)
            .await
            .unwrap()
    );
    let cleared = store
        .update_forward(
            forward.id,
            &TargetChange {
                allowed_cidrs: Some(Vec::new().into()),
                proxy_protocol: Some(ProxyProtocol::None),
                max_connections: Some(Some(1_000_000)),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cleared.controls,
        Controls::new(vec![], Some(1_000_000), ProxyProtocol::None)
    );
}
