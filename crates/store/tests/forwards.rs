//! The store's guarantees on every backend (SQLite always; PostgreSQL and
//! MariaDB/MySQL when configured, see `support`): constraints, allocation,
//! pagination and updates.

mod support;

use std::collections::HashSet;
use std::net::IpAddr;

use navigator_core::{ForwardStatus, PortRange, Protocol};
use navigator_store::{
    ForwardFilter, ForwardOrder, INSTANCE_DELETED, NewForwardRow, SortColumn, StoreError,
    TargetChange,
};
use support::TestDb;

backend_tests!(every: [
    duplicate_endpoint_is_refused_and_names_the_holder,
    allocation_takes_lowest_free_port_and_reports_exhaustion,
    concurrent_allocations_never_share_a_port,
    pagination_walks_every_row_once_in_both_directions,
    filters_select_matching_rows,
    update_retargets_and_status_follows,
    proxies_upsert_and_list,
    text_round_trips_exactly,
    instance_lookup_and_deleted_instance_marks,
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
        internal_ip_address: ip("10.0.0.5"),
        internal_port: 22,
        instance_id: None,
        proxy: "p1".into(),
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
        .upsert_proxy("p1", "relay", &[ip("127.0.0.1")], range)
        .await
        .unwrap();
    let wider = PortRange::new(20000, 29999).unwrap();
    let second = store
        .upsert_proxy("p1", "relay", &[ip("127.0.0.1"), ip("::1")], wider)
        .await
        .unwrap();
    assert!(second.last_heartbeat >= first.last_heartbeat);
    store
        .upsert_proxy("p0", "nftables", &[], range)
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
        store.forward_counts().await.unwrap(),
        vec![("p1".to_owned(), 1)]
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

/// What Nova's deletions rely on: forwards found by instance across projects,
/// and a mark that agent reports cannot clear and full syncs leave out.
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
