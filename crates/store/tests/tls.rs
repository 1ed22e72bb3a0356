//! PostgreSQL and MariaDB over TLS with the certificate and host name
//! verified: `NAVIGATOR_TEST_POSTGRES_TLS_URL` (`sslmode=verify-full`,
//! `sslrootcert`) and `NAVIGATOR_TEST_MYSQL_TLS_URL`
//! (`ssl-mode=VERIFY_IDENTITY`, `ssl-ca`), with their CA in
//! `NAVIGATOR_TEST_DATABASE_CA` (`scripts/databases start DIR` writes all
//! three to `DIR/env`). Each test runs on a database of its own, made by the
//! harness over the plain URL: connect, migrate and a round trip over TLS,
//! the server's own word that the session is encrypted, oslo.db's PyMySQL
//! spelling, and a wrong CA refused with a clear error.

mod support;

use std::path::Path;
use std::process::Command;

use navigator_core::PortRange;
use navigator_store::{Store, StoreError};
use support::{Kind, TestDb, with_database};

/// The TLS URL of `var` naming `db`'s database, or `None` (said loudly) to skip.
fn tls_url(var: &str, db: &TestDb) -> Option<String> {
    let Ok(url) = std::env::var(var) else {
        if std::env::var_os("CI").is_some() {
            panic!("{var} is not set: run scripts/databases (scripts/test-all does)");
        }
        eprintln!(
            "\n*** skipped: {var} not set; `scripts/databases start DIR && . DIR/env` serves TLS ***\n"
        );
        return None;
    };
    let name = db.url.split('?').next()?.rsplit('/').next()?.to_owned();
    Some(with_database(&url, &name))
}

/// Connect, migrate, write and read back, over the verified TLS link, and
/// ask the server whether the session is encrypted.
async fn round_trip(url: &str) {
    let store = Store::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect over TLS: {e}"));
    store.migrate().await.expect("migrate over TLS");
    let range = PortRange::new(20000, 20009).unwrap();
    let written = store
        .upsert_proxy(
            "tls-proxy",
            "relay",
            &["192.0.2.1".parse().unwrap()],
            range,
            &[],
        )
        .await
        .expect("write over TLS");
    let read = store.get_proxy("tls-proxy").await.expect("read over TLS");
    assert_eq!(read, Some(written));
    let cipher = store.tls_cipher().await.expect("ask for the cipher");
    assert!(
        cipher.as_deref().is_some_and(|c| !c.is_empty()),
        "the server says the session is not encrypted: {cipher:?}"
    );
    store.close().await;
}

/// `url` with its CA replaced by another, freshly made one.
fn with_other_ca(url: &str, ca: &str, dir: &Path) -> String {
    let other = dir.join("other-ca.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
        ])
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&other)
        .args(["-days", "2", "-subj", "/CN=not the database CA"])
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    url.replace(ca, &other.display().to_string())
}

/// The wrong CA: the connection is refused, the error says why (the
/// certificate) and does not show the password.
async fn wrong_ca_is_refused(url: &str) {
    let Ok(ca) = std::env::var("NAVIGATOR_TEST_DATABASE_CA") else {
        panic!("NAVIGATOR_TEST_DATABASE_CA is not set with the TLS URLs");
    };
    let dir = tempfile::tempdir().unwrap();
    let url = with_other_ca(url, &ca, dir.path());
    assert!(!url.contains(&ca), "the CA path is in the URL: {url}");
    let err = Store::connect(&url)
        .await
        .expect_err("a wrong CA must fail");
    assert!(matches!(err, StoreError::Connect { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(
        !text.contains("navigator-test"),
        "the password leaked: {text}"
    );
    eprintln!("wrong CA refused: {text}");
}

#[tokio::test]
async fn postgres_over_verified_tls() {
    support::run(Kind::Postgres, |db| async move {
        let Some(url) = tls_url("NAVIGATOR_TEST_POSTGRES_TLS_URL", db) else {
            return;
        };
        assert!(url.contains("sslmode=verify-full"), "{url}");
        round_trip(&url).await;
        // oslo.db's spelling keeps the query.
        round_trip(&url.replacen("postgresql://", "postgresql+psycopg2://", 1)).await;
        wrong_ca_is_refused(&url).await;
    })
    .await;
}

#[tokio::test]
async fn mariadb_over_verified_tls() {
    support::run(Kind::MySql, |db| async move {
        let Some(url) = tls_url("NAVIGATOR_TEST_MYSQL_TLS_URL", db) else {
            return;
        };
        assert!(url.contains("ssl-mode=VERIFY_IDENTITY"), "{url}");
        round_trip(&url).await;
        wrong_ca_is_refused(&url).await;
    })
    .await;
}

#[tokio::test]
async fn mariadb_with_oslo_pymysql_tls_parameters() {
    support::run(Kind::MySql, |db| async move {
        let Some(url) = tls_url("NAVIGATOR_TEST_MYSQL_TLS_URL", db) else {
            return;
        };
        let ca = std::env::var("NAVIGATOR_TEST_DATABASE_CA").unwrap();
        // What a Nova-style configuration says: PyMySQL's names, charset too.
        let base = url.split('?').next().unwrap();
        let oslo = format!(
            "{}?charset=utf8&ssl_ca={ca}",
            base.replacen("mysql://", "mysql+pymysql://", 1)
        );
        round_trip(&oslo).await;
        wrong_ca_is_refused(&oslo).await;
    })
    .await;
}

#[tokio::test]
async fn plain_links_say_they_are_not_encrypted() {
    for kind in [Kind::Postgres, Kind::MySql] {
        support::run(kind, |db| async move {
            // The harness's URL has no TLS parameter; sslmode=disable makes
            // sure PostgreSQL's "prefer" does not encrypt it anyway.
            let url = match kind {
                Kind::Postgres => format!("{}?sslmode=disable", db.url),
                _ => format!("{}?ssl-mode=DISABLED", db.url),
            };
            let store = Store::connect(&url).await.unwrap();
            assert_eq!(store.tls_cipher().await.unwrap(), None);
            store.close().await;
        })
        .await;
    }
}
