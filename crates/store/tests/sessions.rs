//! Dashboard sessions in the database, on every backend: what one server
//! stores another reads; the caps end the least recently used sessions and
//! never the new one; expired sessions go; the login key is one for all.

mod support;

use chrono::{Duration, Utc};
use navigator_store::{CredentialKind, SessionLimits, SessionRecord};
use support::TestDb;

backend_tests!(every: [
    a_session_made_on_one_server_is_read_and_ended_on_another,
    caps_end_the_least_recently_used_never_the_new_one,
    expired_sessions_are_gone,
    flash_messages_are_shared,
    every_server_gets_the_same_login_key,
]);

const LIMITS: SessionLimits = SessionLimits {
    total: 20,
    per_owner: 3,
    per_address: 5,
};

fn session(owner: &str, client: Option<&str>, minutes_ago: i64) -> SessionRecord {
    let now = Utc::now();
    SessionRecord {
        kind: CredentialKind::Token,
        credential: format!("gAAAAA-token-of-{owner}"),
        user: "alice".into(),
        project: "demo".into(),
        csrf: "c".repeat(64),
        proxies_visible: true,
        owner: owner.into(),
        client: client.map(str::to_owned),
        expires_at: now + Duration::hours(1),
        last_used: now - Duration::minutes(minutes_ago),
        flash: None,
    }
}

/// A distinct id hash per call.
fn id(name: &str) -> String {
    format!("{name:0>64}")
}

async fn a_session_made_on_one_server_is_read_and_ended_on_another(db: &'static TestDb) {
    let other = db.second_server().await;
    let made = session("keystone:u1", Some("192.0.2.1"), 0);
    // The longest owner: a noauth project of 255 characters.
    let long = session(&format!("noauth:{}", "p".repeat(255)), None, 0);
    db.store
        .insert_session(&id("long"), &long, &LIMITS)
        .await
        .unwrap();
    assert_eq!(
        other.session(&id("long")).await.unwrap().unwrap().owner,
        long.owner
    );
    db.store
        .insert_session(&id("a"), &made, &LIMITS)
        .await
        .unwrap();
    let read = other.session(&id("a")).await.unwrap().expect("shared");
    assert_eq!(read.credential, made.credential);
    assert_eq!(read.kind, CredentialKind::Token);
    assert_eq!(read.owner, "keystone:u1");
    assert_eq!(read.client.as_deref(), Some("192.0.2.1"));
    assert!(read.proxies_visible);
    // Microseconds survive the round trip.
    assert_eq!(
        read.expires_at.timestamp_micros(),
        made.expires_at.timestamp_micros()
    );
    assert!(!format!("{read:?}").contains("gAAAAA"), "no token in Debug");
    let ended = other.delete_session(&id("a")).await.unwrap();
    assert_eq!(ended.map(|s| s.credential), Some(made.credential));
    assert!(db.store.session(&id("a")).await.unwrap().is_none());
    // Ending it twice (two servers at once) reports it once.
    assert!(db.store.delete_session(&id("a")).await.unwrap().is_none());
    other.close().await;
}

async fn caps_end_the_least_recently_used_never_the_new_one(db: &'static TestDb) {
    let store = &db.store;
    // Per owner: u1 has three sessions, the middle one least recently used
    // (touched long ago); a fourth login ends it.
    for (name, ago) in [("u1a", 30), ("u1b", 50), ("u1c", 20)] {
        store
            .insert_session(&id(name), &session("u1", Some("192.0.2.2"), ago), &LIMITS)
            .await
            .unwrap();
    }
    store
        .touch_session(&id("u1a"), Utc::now() - Duration::minutes(1))
        .await
        .unwrap();
    let evicted = store
        .insert_session(&id("u1d"), &session("u1", Some("192.0.2.2"), 0), &LIMITS)
        .await
        .unwrap();
    assert_eq!(evicted, 1);
    assert!(store.session(&id("u1b")).await.unwrap().is_none());
    for name in ["u1a", "u1c", "u1d"] {
        assert!(store.session(&id(name)).await.unwrap().is_some(), "{name}");
    }
    // Per address: a flood from one address under many names ends only
    // that address's oldest sessions.
    for i in 0..12 {
        let name = format!("flood{i}");
        store
            .insert_session(
                &id(&name),
                &session(&name, Some("192.0.2.1"), 100 - i),
                &LIMITS,
            )
            .await
            .unwrap();
    }
    for i in 0..12 {
        let alive = store
            .session(&id(&format!("flood{i}")))
            .await
            .unwrap()
            .is_some();
        assert_eq!(alive, i >= 7, "flood{i}");
    }
    assert!(store.session(&id("u1d")).await.unwrap().is_some());
    // In all: without addresses, the table never outgrows its cap and the
    // newest always stands.
    for i in 0..40 {
        let name = format!("many{i}");
        store
            .insert_session(&id(&name), &session(&name, None, 0), &LIMITS)
            .await
            .unwrap();
        assert!(store.session(&id(&name)).await.unwrap().is_some());
        assert!(store.count_sessions().await.unwrap() <= 20);
    }
}

async fn expired_sessions_are_gone(db: &'static TestDb) {
    let store = &db.store;
    let mut over = session("u", None, 0);
    over.expires_at = Utc::now() - Duration::seconds(1);
    store
        .insert_session(&id("live"), &session("u", None, 0), &LIMITS)
        .await
        .unwrap();
    // Lazily, when read...
    store
        .insert_session(&id("x1"), &over, &LIMITS)
        .await
        .unwrap();
    assert_eq!(store.count_sessions().await.unwrap(), 2);
    assert!(store.session(&id("x1")).await.unwrap().is_none());
    assert_eq!(store.count_sessions().await.unwrap(), 1);
    // ...at the next login...
    store
        .insert_session(&id("x2"), &over, &LIMITS)
        .await
        .unwrap();
    store
        .insert_session(&id("live2"), &session("v", None, 0), &LIMITS)
        .await
        .unwrap();
    assert_eq!(store.count_sessions().await.unwrap(), 2);
    // ...and all at once (the server's periodic sweep).
    store
        .insert_session(&id("x3"), &over, &LIMITS)
        .await
        .unwrap();
    assert_eq!(store.delete_expired_sessions().await.unwrap(), 1);
    assert_eq!(store.count_sessions().await.unwrap(), 2);
}

async fn flash_messages_are_shared(db: &'static TestDb) {
    let other = db.second_server().await;
    db.store
        .insert_session(&id("f"), &session("u", None, 0), &LIMITS)
        .await
        .unwrap();
    db.store
        .set_session_flash(&id("f"), Some((true, "Port 80 is taken — «naïve»")))
        .await
        .unwrap();
    let read = other.session(&id("f")).await.unwrap().unwrap();
    assert_eq!(
        read.flash,
        Some((true, "Port 80 is taken — «naïve»".into()))
    );
    other.set_session_flash(&id("f"), None).await.unwrap();
    assert_eq!(
        db.store.session(&id("f")).await.unwrap().unwrap().flash,
        None
    );
    other.close().await;
}

async fn every_server_gets_the_same_login_key(db: &'static TestDb) {
    let other = db.second_server().await;
    let (a, b) = tokio::join!(
        db.store.shared_secret("login", "first"),
        other.shared_secret("login", "second"),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert!(a == "first" || a == "second");
    assert_eq!(db.store.shared_secret("login", "third").await.unwrap(), a);
    other.close().await;
}
