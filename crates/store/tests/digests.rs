//! The per-proxy summaries (`proxy_digests`): after any mix of creates,
//! updates, moves, marks and deletes, racing servers included, a proxy's
//! stored summary equals the summary of the forwards its agent must carry.

mod support;

use std::net::IpAddr;
use std::sync::Arc;

use navigator_core::digest::{SetDigest, bucket};
use navigator_core::{Controls, ForwardStatus, PortRange, Protocol, ProxyProtocol};
use navigator_store::{INSTANCE_DELETED, Move, NewForwardRow, Store, TargetChange};
use support::TestDb;
use tokio::sync::Barrier;

backend_tests!(every: [
    summaries_follow_every_change,
    racing_changes_keep_summaries_exact,
    buckets_read_only_their_forwards,
    a_wrong_summary_is_repaired_by_its_resync,
]);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn new_forward(proxy: &str, address: &str, port: u16) -> NewForwardRow {
    NewForwardRow {
        project_id: "p".into(),
        description: String::new(),
        protocol: Protocol::Tcp,
        external_address: ip(address),
        external_port: port,
        ports: 1,
        internal_ip_address: ip("10.0.0.5"),
        internal_port: 22,
        internal_port_end: 22,
        instance_id: None,
        proxy: proxy.into(),
        controls: Controls::default(),
    }
}

/// The summary of what `proxy`'s agent must carry, from its forwards.
async fn truth(store: &Store, proxy: &str) -> SetDigest {
    let forwards = store.forwards_on_proxy(proxy).await.unwrap();
    SetDigest::of(forwards.iter().map(|f| f.spec()).collect::<Vec<_>>().iter())
}

/// The stored summary of `proxy`, which must be ready.
async fn stored(store: &Store, proxy: &str) -> SetDigest {
    store
        .proxy_digest(proxy)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{proxy}'s summary is not ready"))
        .digest
}

async fn assert_exact(store: &Store, proxies: &[&str], when: &str) {
    for proxy in proxies {
        let (stored, truth) = (stored(store, proxy).await, truth(store, proxy).await);
        assert!(
            stored == truth,
            "{when}: {proxy}'s stored summary differs from its forwards in buckets {:?} ({} stored, {} carried)",
            stored.differing(&truth),
            stored.forwards(),
            truth.forwards()
        );
    }
}

async fn summaries_follow_every_change(db: &'static TestDb) {
    let store = &db.store;
    // A new proxy has no summary until it is built; creates made before
    // that are counted by the build.
    assert!(store.proxy_digest("p1").await.unwrap().is_none());
    let mut ids = Vec::new();
    for port in 30000..30010 {
        ids.push(
            store
                .create_forward(&new_forward("p1", "127.0.0.1", port))
                .await
                .unwrap()
                .id,
        );
    }
    assert!(
        store.proxy_digest("p1").await.unwrap().is_none(),
        "rows written before the first build are not ready"
    );
    for proxy in ["p1", "p2"] {
        let built = store.rebuild_digests(proxy).await.unwrap();
        assert_eq!(built.digest, truth(store, proxy).await);
    }
    assert_exact(store, &["p1", "p2"], "after the build").await;
    for port in 30010..30030 {
        ids.push(
            store
                .create_forward(&new_forward("p1", "127.0.0.1", port))
                .await
                .unwrap()
                .id,
        );
    }
    assert_exact(store, &["p1"], "after creates").await;

    // A description changes nothing the agent sees: no revision either.
    let before = store.proxy_digest("p1").await.unwrap().unwrap();
    let renamed = TargetChange {
        description: Some("web".into()),
        ..Default::default()
    };
    store.update_forward(ids[0], &renamed).await.unwrap();
    assert_eq!(store.proxy_digest("p1").await.unwrap().unwrap(), before);

    let retarget = TargetChange {
        internal_ip_address: Some(ip("10.0.0.9")),
        internal_port: Some(80),
        internal_port_end: Some(80),
        ..Default::default()
    };
    store.update_forward(ids[1], &retarget).await.unwrap();
    let controls = TargetChange {
        allowed_cidrs: Some(vec!["192.0.2.0/24".parse().unwrap()].into()),
        max_connections: Some(Some(5)),
        proxy_protocol: Some(ProxyProtocol::V1),
        ..Default::default()
    };
    store.update_forward(ids[2], &controls).await.unwrap();
    let after = store.proxy_digest("p1").await.unwrap().unwrap();
    assert_ne!(
        after.digest, before.digest,
        "a retarget changes the summary"
    );
    let b = bucket(ids[1]);
    assert!(after.revision(b) > before.revision(b));
    assert_exact(store, &["p1"], "after updates").await;

    // A move leaves one proxy's summary for the other's.
    let to_p2 = Move {
        from_proxy: "p1".into(),
        to_proxy: "p2".into(),
        external_address: ip("127.0.0.2"),
        pool: PortRange::new(31000, 31100).unwrap(),
    };
    for id in &ids[3..8] {
        store.move_forward(*id, &to_p2).await.unwrap().unwrap();
    }
    assert_exact(store, &["p1", "p2"], "after moves").await;

    // A mark takes the forward out of its proxy's set; a retarget brings it
    // back; status reports change nothing.
    let mark = format!("{INSTANCE_DELETED}instance x is gone");
    assert!(
        store
            .set_status(ids[8], ForwardStatus::Error, Some(&mark))
            .await
            .unwrap()
    );
    assert_exact(store, &["p1"], "after a mark").await;
    store.update_forward(ids[8], &retarget).await.unwrap();
    store
        .set_status(ids[9], ForwardStatus::Active, None)
        .await
        .unwrap();
    store
        .set_proxy_error("p1", "proxy p1 is down")
        .await
        .unwrap();
    assert_exact(store, &["p1"], "after an unmark and status writes").await;

    for id in &ids[10..20] {
        assert!(store.delete_forward(*id).await.unwrap());
    }
    assert!(!store.delete_forward(ids[10]).await.unwrap());
    assert_exact(store, &["p1", "p2"], "after deletes").await;
}

/// Two servers create, retarget, move and delete at once; the summaries end
/// exact.
async fn racing_changes_keep_summaries_exact(db: &'static TestDb) {
    let servers = [db.store.clone(), db.second_server().await];
    for proxy in ["p1", "p2"] {
        servers[0].rebuild_digests(proxy).await.unwrap();
    }
    const TASKS: usize = 8;
    let barrier = Arc::new(Barrier::new(TASKS * 2));
    let mut tasks = Vec::new();
    for task in 0..TASKS * 2 {
        let store = servers[task % 2].clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            for n in 0..12u16 {
                let port = 32000 + u16::try_from(task).unwrap() * 20 + n;
                let created = store
                    .create_forward(&new_forward("p1", "127.0.0.1", port))
                    .await
                    .unwrap();
                match n % 4 {
                    0 => {}
                    1 => {
                        let change = TargetChange {
                            internal_port: Some(1000 + n),
                            internal_port_end: Some(1000 + n),
                            ..Default::default()
                        };
                        store.update_forward(created.id, &change).await.unwrap();
                    }
                    2 => {
                        let to = Move {
                            from_proxy: "p1".into(),
                            to_proxy: "p2".into(),
                            external_address: ip("127.0.0.2"),
                            pool: PortRange::new(40000, 49999).unwrap(),
                        };
                        store.move_forward(created.id, &to).await.unwrap();
                    }
                    _ => {
                        store.delete_forward(created.id).await.unwrap();
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_exact(&servers[1], &["p1", "p2"], "after racing changes").await;
}

async fn buckets_read_only_their_forwards(db: &'static TestDb) {
    let store = &db.store;
    let mut ids = Vec::new();
    for port in 33000..33040 {
        ids.push(
            store
                .create_forward(&new_forward("p1", "127.0.0.1", port))
                .await
                .unwrap()
                .id,
        );
    }
    let wanted = [bucket(ids[0]), bucket(ids[1]), bucket(ids[2])];
    let got = store.forwards_in_buckets("p1", &wanted).await.unwrap();
    let expected: Vec<_> = ids
        .iter()
        .filter(|id| wanted.contains(&bucket(**id)))
        .collect();
    assert_eq!(got.len(), expected.len());
    assert!(got.iter().all(|f| wanted.contains(&bucket(f.id))));
    assert!(
        store
            .forwards_in_buckets("p2", &wanted)
            .await
            .unwrap()
            .is_empty()
    );
    let all: Vec<u8> = (0..=u8::MAX).collect();
    assert_eq!(
        store.forwards_in_buckets("p1", &all).await.unwrap().len(),
        ids.len()
    );
}

/// A bucket row that does not match the forwards (as a server of an earlier
/// release, which does not keep summaries, would leave it) is set right by
/// the resync of that bucket, which also returns its forwards.
async fn a_wrong_summary_is_repaired_by_its_resync(db: &'static TestDb) {
    use sqlx::{AnyConnection, AssertSqlSafe, Connection, Executor};
    let store = &db.store;
    let mut ids = Vec::new();
    for port in 34000..34010 {
        ids.push(
            store
                .create_forward(&new_forward("p1", "127.0.0.1", port))
                .await
                .unwrap()
                .id,
        );
    }
    store.rebuild_digests("p1").await.unwrap();
    let b = bucket(ids[0]);
    let mut conn = AnyConnection::connect(&db.url).await.unwrap();
    conn.execute(AssertSqlSafe(format!(
        "UPDATE proxy_digests SET forwards = forwards + 5, low = 7 WHERE proxy = 'p1' AND bucket = {b}"
    )))
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_ne!(stored(store, "p1").await, truth(store, "p1").await);
    let forwards = store.resync_buckets("p1", &[b]).await.unwrap();
    assert!(forwards.iter().any(|f| f.id == ids[0]));
    assert!(forwards.iter().all(|f| bucket(f.id) == b));
    assert_exact(store, &["p1"], "after the resync").await;
}
