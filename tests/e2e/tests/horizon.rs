//! The Horizon plugin (`horizon/navigator_horizon`) end to end: Debian's
//! openstack-dashboard started by `scripts/horizon` with the plugin, the
//! test Keystone (`scripts/keystone`), a real `navigator-server` with
//! `auth_strategy = keystone` registered in the catalog under a region of
//! its own, and headless Chromium running `tests/browser/horizon.mjs`.
//!
//! The browser does what a user does; this side creates the users, checks at
//! the script's checkpoints what a browser cannot (traffic through the
//! forward, the port closed after delete) and stops Navigator for the
//! "API down" step. Also runs the plugin's Python unit tests
//! (`horizon/tests`), which cover the API client and, with a stubbed Nova,
//! the instance tab and overview.
//!
//! Needs: Keystone env (`NAVIGATOR_TEST_KEYSTONE_URL`, ...), openstack-dashboard,
//! and what `navigator_e2e::browser` needs (Chromium, node, `npm ci` in
//! `tests/browser`). Without them the tests print `skipped:`, or panic when
//! `CI` is set.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use navigator_e2e::auth::unique;
use navigator_e2e::browser::Browser;
use navigator_e2e::{
    Auth, Env, KeystoneProject, KeystoneSettings, TcpEcho, assert_tcp_reply, binary, eventually,
    tcp_refused,
};
use serde_json::Value;

const HORIZON_PACKAGE: &str = "/usr/lib/python3/dist-packages/openstack_dashboard";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Prints `skipped: ...` and returns `None`, or panics under `CI`.
fn missing<T>(what: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("the Horizon test needs {what} (scripts/test-all installs and starts it)");
    }
    eprintln!("skipped: {what} is missing");
    None
}

/// Debian's Horizon and the Python it runs on (pyenv's `python3` on PATH
/// has no Django).
fn horizon_installed() -> Option<()> {
    if !Path::new(HORIZON_PACKAGE).is_dir() {
        return missing("Horizon (apt-get install --no-install-recommends openstack-dashboard)");
    }
    if !Path::new("/usr/bin/python3").is_file() {
        return missing("/usr/bin/python3");
    }
    Some(())
}

/// The test Keystone (`scripts/keystone`'s env) and Horizon, or `None`.
fn prerequisites() -> Option<KeystoneSettings> {
    let keystone = KeystoneSettings::from_env("a_member_manages_forwards_in_horizon")?;
    horizon_installed()?;
    Some(keystone)
}

// ---------------------------------------------------------------- Horizon

/// Horizon started by `scripts/horizon`, stopped (by its PID file) on drop.
struct Horizon {
    dir: tempfile::TempDir,
    url: String,
}

impl Horizon {
    fn start(keystone_url: &str) -> Horizon {
        let dir = tempfile::Builder::new()
            .prefix("navigator-horizon-")
            .tempdir()
            .expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let output = Command::new(repo_root().join("scripts/horizon"))
            .arg("start")
            .arg(dir.path())
            .arg(port.to_string())
            .env("HORIZON_KEYSTONE_URL", keystone_url)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/horizon");
        assert!(
            output.status.success(),
            "scripts/horizon start failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Horizon {
            url: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/horizon.log")).unwrap_or_default()
    }
}

impl Drop for Horizon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "--- Horizon log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = Command::new(repo_root().join("scripts/horizon"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

// ---------------------------------------------------------------- browser

fn artifacts_dir() -> PathBuf {
    std::env::var_os("NAVIGATOR_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/artifacts/screenshots"))
}

/// `127.0.0.1:20001` or `[::1]:20001` → (ip, port).
fn split_external(external: &str) -> Result<(String, u16), String> {
    let (ip, port) = external
        .rsplit_once(':')
        .ok_or_else(|| format!("not address:port: {external}"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = port.parse().map_err(|e| format!("{external}: {e}"))?;
    Ok((ip, port))
}

fn catches<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    std::panic::catch_unwind(f).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into())
    })
}

// ---------------------------------------------------------------- tests

#[test]
fn a_member_manages_forwards_in_horizon() {
    let Some(pre) = prerequisites() else { return };
    let Some(browser) = Browser::find("a_member_manages_forwards_in_horizon") else {
        return;
    };
    let alice = KeystoneProject::create(pre.clone(), "hz-alice");
    let bob = KeystoneProject::create(pre.clone(), "hz-bob");

    // Navigator with Keystone auth, in all-in-one mode (relay data plane).
    let env = Env::new("horizon", &Auth::Noauth, "");
    let config = format!(
        "[DEFAULT]\nhost = e2e-horizon\nauth_strategy = keystone\n\n\
         [keystone_authtoken]\nwww_authenticate_uri = {url}\nauth_url = {url}\nauth_type = password\n\
         username = {user}\npassword = {password}\nproject_name = service\n\
         user_domain_name = Default\nproject_domain_name = Default\n\n\
         [agent]\nport_range = {first}-{last}\nexternal_addresses = 127.0.0.1\nreport_interval = 1\n\n\
         [forwards]\n# The echo servers are on loopback; Keystone mode refuses it by default.\n\
         allow_loopback_targets = true\n",
        url = pre.url,
        user = pre.service_user,
        password = pre.service_password,
        first = env.port_range.0,
        last = env.port_range.1,
    );
    std::fs::write(&env.config_file, config).expect("write config");
    let mut server = env.start();

    // Registered under a region of this test's own (the user switches to it
    // in Horizon): other tests register Navigator on the same Keystone
    // concurrently, each in its own region.
    let region = unique("horizon-e2e");
    let register = Command::new(binary("navigator-server"))
        .arg("--config-file")
        .arg(&env.config_file)
        .args(["keystone", "register", "--public-url", &server.url])
        .args(["--region", &region])
        .env("OS_AUTH_URL", &pre.url)
        .env("OS_USERNAME", "admin")
        .env("OS_PASSWORD", &pre.admin_password)
        .env("OS_PROJECT_NAME", "admin")
        .output()
        .expect("run keystone register");
    assert!(
        register.status.success(),
        "keystone register failed: {}",
        String::from_utf8_lossy(&register.stderr)
    );

    let one = TcpEcho::start("127.0.0.1", "one:");
    let two = TcpEcho::start("127.0.0.1", "two:");
    // A program holding a port of the proxy's range: a forward asking for it
    // cannot be carried and must show Error with the reason.
    let busy =
        TcpListener::bind(("127.0.0.1", env.port_range.1)).expect("hold a port of the range");
    let horizon = Horizon::start(&pre.url);

    let outcome = browser.run(
        "horizon.mjs",
        &[
            (
                "NAVIGATOR_ARTIFACTS_DIR",
                artifacts_dir().display().to_string(),
            ),
            ("HORIZON_URL", horizon.url.clone()),
            ("ALICE_USER", alice.user_name.clone()),
            ("ALICE_PASSWORD", alice.password.clone()),
            ("BOB_USER", bob.user_name.clone()),
            ("BOB_PASSWORD", bob.password.clone()),
            ("NAVIGATOR_REGION", region.clone()),
            ("TARGET_IP", "127.0.0.1".into()),
            ("TARGET_PORT_ONE", one.port()),
            ("TARGET_PORT_TWO", two.port()),
            ("BUSY_EXTERNAL_PORT", env.port_range.1.to_string()),
        ],
        |name, data| {
            let external = data["external"].as_str().unwrap_or_default().to_owned();
            match name {
                "forward-active" | "forward-retargeted" => {
                    let tag = data["tag"].as_str().unwrap_or_default().to_owned();
                    let (ip, port) = split_external(&external)?;
                    catches(move || assert_tcp_reply(&ip, port, "ping", &format!("{tag}:ping")))
                        .map(|()| Value::Null)
                }
                "forward-deleted" => {
                    let (ip, port) = split_external(&external)?;
                    catches(move || {
                        eventually(
                            "the deleted forward's port to close",
                            Duration::from_secs(10),
                            || tcp_refused(&ip, port),
                        )
                    })
                    .map(|()| Value::Null)
                }
                "stop-api" => {
                    server.stop();
                    Ok(Value::Null)
                }
                other => Err(format!("unknown checkpoint {other}")),
            }
        },
    );
    if let Err(failure) = outcome {
        panic!("{failure}\nscreenshots in {}", artifacts_dir().display());
    }
    drop(horizon);
    drop(busy);
}

#[test]
fn plugin_unit_tests_pass() {
    let Some(()) = horizon_installed() else {
        return;
    };
    let root = repo_root().join("horizon");
    let output = Command::new("/usr/bin/python3")
        .args(["-m", "unittest", "discover", "-s", "tests", "-t", ".", "-v"])
        .current_dir(&root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    assert!(output.status.success(), "plugin unit tests failed:\n{text}");
}
