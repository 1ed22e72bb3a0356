//! `navigator-status upgrade check` and `navigator-server db version` as an
//! operator runs them: the real binaries on a configuration file and a
//! SQLite database in a temporary directory. Exit codes: 0 all Success, 1 a
//! Warning, 2 a Failure.

use std::path::Path;
use std::process::{Command, Output};

use navigator_store::{Store, sqlite_url};

fn run(binary: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(binary)
        .arg("--config-file")
        .arg(dir.join("navigator.conf"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn status(dir: &Path) -> (i32, String) {
    let out = run(
        env!("CARGO_BIN_EXE_navigator-status"),
        dir,
        &["upgrade", "check"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// The result of the check named `name` in a rendered table.
fn result_of(table: &str, name: &str) -> String {
    let mut lines = table.lines();
    while let Some(line) = lines.next() {
        if line.trim_matches(|c| c == '|' || c == ' ') == format!("Check: {name}") {
            let result = lines.next().unwrap_or_default();
            return result
                .trim_matches(|c| c == '|' || c == ' ')
                .trim_start_matches("Result: ")
                .to_owned();
        }
    }
    panic!("no check {name} in {table}");
}

/// The table's text with its wrapped lines joined.
fn unwrapped(table: &str) -> String {
    table
        .lines()
        .map(|line| line.trim_matches(|c| c == '|' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

fn db(dir: &Path, command: &str) -> String {
    let out = run(
        env!("CARGO_BIN_EXE_navigator-server"),
        dir,
        &["db", command],
    );
    assert!(out.status.success(), "db {command}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pool below Linux's ephemeral range, so the port-pool check passes.
const CONF: &str = "[agent]\nport_range = 20000-20099\n";

#[test]
fn upgrade_check_exit_codes_follow_the_database_and_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("navigator.conf"), CONF).unwrap();

    // No database yet: a Failure that names db sync, and nothing created.
    let (code, table) = status(dir.path());
    assert_eq!(code, 2, "{table}");
    assert_eq!(result_of(&table, "Database"), "Failure", "{table}");
    assert!(
        unwrapped(&table).contains("navigator-server db sync"),
        "{table}"
    );
    assert!(!dir.path().join("navigator.db").exists());

    db(dir.path(), "sync");
    assert_eq!(
        db(dir.path(), "version").trim(),
        navigator_store::latest_schema_version().to_string()
    );
    let (code, table) = status(dir.path());
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("Upgrade Check Results"), "{table}");
    assert!(
        !table.contains("Result: Warning") && !table.contains("Result: Failure"),
        "{table}"
    );

    // An unknown option is a Warning.
    std::fs::write(
        dir.path().join("navigator.conf"),
        format!("{CONF}bind_prot = 1\n"),
    )
    .unwrap();
    let (code, table) = status(dir.path());
    assert_eq!(code, 1, "{table}");
    assert_eq!(
        result_of(&table, "Configuration file"),
        "Warning",
        "{table}"
    );
    assert!(table.contains("bind_prot"), "{table}");

    // An invalid value stops the checks at the configuration.
    std::fs::write(
        dir.path().join("navigator.conf"),
        "[DEFAULT]\nbind_port = many\n",
    )
    .unwrap();
    let (code, table) = status(dir.path());
    assert_eq!(code, 2, "{table}");
    assert!(!table.contains("Check: Database"), "{table}");
}

/// A database the previous release left (every migration but the latest):
/// `db version` says so and the check fails until `db sync`.
#[tokio::test]
async fn a_previous_releases_database_needs_db_sync() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("navigator.conf"), CONF).unwrap();
    let latest = navigator_store::latest_schema_version();
    // The migration before the latest (numbers need not be contiguous).
    let versions = navigator_store::schema_versions();
    let previous = versions[versions.len() - 2];
    let store = Store::connect(&sqlite_url(&dir.path().join("navigator.db")))
        .await
        .unwrap();
    store.migrate_to(previous).await.unwrap();
    store.close().await;

    let out = run(
        env!("CARGO_BIN_EXE_navigator-server"),
        dir.path(),
        &["db", "version"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        previous.to_string()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("db sync"),
        "{out:?}"
    );
    let (code, table) = status(dir.path());
    assert_eq!(code, 2, "{table}");
    assert_eq!(result_of(&table, "Database schema"), "Failure", "{table}");
    assert!(table.contains(&format!("[{latest}]")), "{table}");
    db(dir.path(), "sync");
    let (code, table) = status(dir.path());
    assert_eq!(code, 0, "{table}");
}

/// Cluster mode with a broker that is not there: RabbitMQ fails, and no
/// proxy has registered (a Warning).
#[test]
fn cluster_mode_checks_rabbitmq_and_proxies() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: refused at once.
    std::fs::write(
        dir.path().join("navigator.conf"),
        format!("[DEFAULT]\ntransport_url = rabbit://u:secret@127.0.0.1:1/\n{CONF}"),
    )
    .unwrap();
    db(dir.path(), "sync");
    let (code, table) = status(dir.path());
    assert_eq!(code, 2, "{table}");
    assert_eq!(result_of(&table, "RabbitMQ"), "Failure", "{table}");
    assert_eq!(result_of(&table, "Proxies"), "Warning", "{table}");
    assert!(
        !table.contains("secret"),
        "the broker password must not be shown: {table}"
    );
}

/// Cluster mode with the test broker (`NAVIGATOR_TEST_TRANSPORT_URL`):
/// RabbitMQ succeeds; with no agent registered yet the result is a Warning.
#[test]
fn cluster_mode_with_a_reachable_broker_warns_only_about_proxies() {
    let Ok(url) = std::env::var("NAVIGATOR_TEST_TRANSPORT_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "RabbitMQ tests need scripts/rabbitmq (run scripts/test-all)"
        );
        eprintln!("skipped: NAVIGATOR_TEST_TRANSPORT_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("navigator.conf"),
        format!("[DEFAULT]\ntransport_url = {url}\n{CONF}"),
    )
    .unwrap();
    db(dir.path(), "sync");
    let (code, table) = status(dir.path());
    assert_eq!(code, 1, "{table}");
    assert_eq!(result_of(&table, "RabbitMQ"), "Success", "{table}");
    assert_eq!(result_of(&table, "Proxies"), "Warning", "{table}");
}
