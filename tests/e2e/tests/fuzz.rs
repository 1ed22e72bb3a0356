//! The API fuzz job: schemathesis (pinned in `tests/fuzz/requirements.txt`,
//! configured by `tests/fuzz/schemathesis.toml`) generates requests from the
//! committed OpenAPI document, valid and invalid, and sends them to a real
//! all-in-one server. The run fails on any 5xx, on any answer the document
//! does not describe, on invalid data the server accepts, and on a server
//! that dies or stops answering.
//!
//! It runs in both auth modes. With Keystone the document is used as
//! committed (every `/v1/` operation needs `X-Auth-Token`); with noauth the
//! server ignores that header by design, so the test hands schemathesis a
//! copy without the security requirement, which is what that deployment
//! really serves.
//!
//! Bounded twice: `--max-examples` per operation and phase, and a wall-clock
//! limit after which schemathesis is killed and the test fails.
//!
//! schemathesis is found through `NAVIGATOR_SCHEMATHESIS` or in the virtual
//! environment `scripts/test-all` makes (`target/fuzz-venv`); without it the
//! test panics under `CI` and prints a `skipped:` line otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use navigator_e2e::{Auth, Env, both_auth_modes, run_bounded_for};
use serde_json::Value;

/// Generated cases per operation and phase: enough to reach every field's
/// edge cases, small enough for CI (about half a minute per mode here).
const MAX_EXAMPLES: &str = "100";
/// schemathesis is killed, and the test fails, after this long.
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `st` command, or `None` after a `skipped:` line (a panic under `CI`).
fn schemathesis(test: &str) -> Option<PathBuf> {
    let st = std::env::var_os("NAVIGATOR_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/fuzz-venv/bin/st"));
    if st.is_file() {
        return Some(st);
    }
    let missing = format!(
        "schemathesis not found at {} (scripts/test-all installs tests/fuzz/requirements.txt into target/fuzz-venv; \
         or set NAVIGATOR_SCHEMATHESIS)",
        st.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {missing}");
    }
    eprintln!("\n*** skipped: {test}: {missing}\n");
    None
}

/// The committed document with every security requirement removed: the
/// contract of a noauth server.
fn without_security(document: &Path, out: &Path) {
    let text = std::fs::read_to_string(document).expect("cannot read docs/openapi.json");
    let mut doc: Value = serde_json::from_str(&text).expect("docs/openapi.json is not JSON");
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            for operation in item
                .as_object_mut()
                .into_iter()
                .flat_map(|o| o.values_mut())
            {
                if let Some(operation) = operation.as_object_mut() {
                    operation.remove("security");
                }
            }
        }
    }
    if let Some(root) = doc.as_object_mut() {
        root.remove("security");
    }
    std::fs::write(out, doc.to_string()).expect("cannot write the noauth document");
}

fn api_fuzz(auth: Auth) {
    let Some(st) = schemathesis("api_fuzz") else {
        return;
    };
    // schemathesis is one client sending hundreds of requests a second: the
    // rate limit (tested on its own in crates/server/tests/limits.rs) would
    // answer most of them 429 and leave the handlers unexercised.
    let env = Env::new("fuzz", &auth, "[api]\nrate_limit = 0\n");
    let mut server = env.start();
    let committed = workspace().join("docs/openapi.json");
    let (document, header) = match auth.token() {
        Some(token) => (committed, format!("X-Auth-Token: {token}")),
        None => {
            let copy = env.data_dir().join("openapi-noauth.json");
            without_security(&committed, &copy);
            (copy, "X-Project-Id: fuzz".to_owned())
        }
    };
    let reports = env.data_dir().join("schemathesis-report");
    let mut command = Command::new(&st);
    command
        .current_dir(env.data_dir())
        .arg("--config-file")
        .arg(workspace().join("tests/fuzz/schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(&document)
        .args(["--url", &server.url, "--header", &header])
        // One worker: schemathesis runs workers as threads, and CPython 3.11's
        // AST compiler is not thread-safe under hypothesis (python/cpython#106905:
        // "AST constructor recursion depth mismatch" failed a CI run).
        .args(["--max-examples", MAX_EXAMPLES, "--workers", "1"])
        .args(["--request-timeout", "10"])
        .arg("--report-dir")
        .arg(&reports);
    if let Ok(seed) = std::env::var("NAVIGATOR_FUZZ_SEED") {
        command.args(["--seed", &seed]);
    }
    let out = run_bounded_for(&mut command, "schemathesis", RUN_LIMIT);
    // Its summary is the useful part of a failure; print it either way so the
    // CI log shows how much was exercised.
    println!("{}", out.stdout);
    if let Some(status) = server.exited() {
        panic!(
            "navigator-server died during the fuzz run ({status}):\n{}",
            server.logs()
        );
    }
    let health = server.http("GET", "/healthcheck", &[], b"");
    assert_eq!(
        health.status, 200,
        "the server stopped answering /healthcheck after the fuzz run: {health:?}"
    );
    let logs = server.logs();
    assert!(
        !logs.contains("panicked"),
        "navigator-server panicked during the fuzz run:\n{logs}"
    );
    assert!(
        out.success(),
        "schemathesis found failures (exit {:?}); reproduce with the `st replay`/curl lines above:\n{}",
        out.code,
        out.stderr
    );
}

both_auth_modes!(api_fuzz);
