//! Runs the built `navigator` binary: help texts, exit statuses and the
//! message for an unreachable server. The end-to-end tests against a real
//! server live in `tests/e2e`.

use std::process::{Command, Output};

/// Runs `navigator` with `args`, isolated from the caller's environment so
/// that an exported `NAVIGATOR_ENDPOINT`, `OS_CLOUD` or `OS_TOKEN` cannot
/// change results.
fn navigator(args: &[&str]) -> Output {
    navigator_with(args, &[])
}

/// Runs `navigator` with only the variables in `env`.
fn navigator_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_navigator"));
    command.args(args).env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the navigator binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_command_has_help() {
    let commands: [&[&str]; 16] = [
        &[],
        &["forward"],
        &["forward", "create"],
        &["forward", "list"],
        &["forward", "show"],
        &["forward", "set"],
        &["forward", "delete"],
        &["proxy"],
        &["proxy", "list"],
        &["proxy", "show"],
        &["quota"],
        &["quota", "show"],
        &["quota", "set"],
        &["quota", "delete"],
        &["token"],
        &["token", "issue"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let output = navigator(&args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stdout(&output);
        assert!(text.contains("Usage: navigator"), "{args:?}: {text}");
        assert!(text.contains("--os-endpoint"), "{args:?}: {text}");
    }
    let create = stdout(&navigator(&["forward", "create", "--help"]));
    assert!(create.contains("Examples:"), "{create}");
    assert!(create.contains("-f value -c id"), "{create}");
}

#[test]
fn version_is_printed() {
    let output = navigator(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output).trim(),
        format!("navigator {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unreachable_endpoint_exits_1_with_a_clear_message() {
    for args in [
        &["--os-endpoint", "http://127.0.0.1:1", "forward", "list"][..],
        &[
            "proxy",
            "show",
            "px1",
            "--os-endpoint",
            "http://127.0.0.1:1",
        ],
        &[
            "forward",
            "delete",
            "a",
            "b",
            "--os-endpoint",
            "http://127.0.0.1:1",
        ],
    ] {
        let output = navigator(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let message = stderr(&output);
        assert!(
            message.starts_with("cannot reach Navigator at http://127.0.0.1:1: connection refused"),
            "{args:?}: {message}"
        );
        assert!(message.contains("NAVIGATOR_ENDPOINT"), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(stdout(&output).is_empty());
    }
}

#[test]
fn debug_shows_the_causes() {
    let output = navigator(&[
        "--debug",
        "--os-endpoint",
        "http://127.0.0.1:1",
        "proxy",
        "list",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).lines().count() > 1, "{}", stderr(&output));
}

#[test]
fn endpoint_comes_from_the_environment() {
    let output = navigator_with(
        &["proxy", "list"],
        &[("NAVIGATOR_ENDPOINT", "http://127.0.0.1:1")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("http://127.0.0.1:1"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn invalid_endpoint_names_the_option() {
    let output = navigator(&["--os-endpoint", "127.0.0.1:9797", "proxy", "list"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--os-endpoint"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn usage_errors_exit_2() {
    let cases: [&[&str]; 6] = [
        &["forward", "frobnicate"],
        &[
            "forward",
            "create",
            "--protocol",
            "tcp",
            "--internal-ip-address",
            "10.0.0.5",
            "--internal-port",
            "70000",
        ],
        &[
            "forward",
            "create",
            "--protocol",
            "sctp",
            "--internal-ip-address",
            "10.0.0.5",
            "--internal-port",
            "22",
        ],
        &["forward", "delete"],
        &["forward", "list", "--limit", "0"],
        &["forward", "show"],
    ];
    for args in cases {
        let output = navigator(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("error:"), "{args:?}");
    }
}

#[test]
fn usage_errors_found_before_any_request_exit_2() {
    // The endpoint is unreachable: these must fail before trying it.
    let cases: [(&[&str], &str); 4] = [
        (&["forward", "set", "abc"], "nothing to set"),
        (&["quota", "set", "p1"], "nothing to set"),
        (
            &["forward", "list", "-c", "bogus"],
            "unknown column 'bogus'",
        ),
        (
            &[
                "forward",
                "create",
                "--protocol",
                "tcp",
                "--internal-ip-address",
                "10.0.0.5",
                "--internal-port",
                "22",
                "-c",
                "nope",
            ],
            "choose from: allowed_cidrs, created_at, description",
        ),
    ];
    for (args, expected) in cases {
        let mut argv = vec!["--os-endpoint", "http://127.0.0.1:1"];
        argv.extend_from_slice(args);
        let output = navigator(&argv);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{argv:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{argv:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn missing_credentials_say_which_and_where() {
    // Checked before any request: the auth URL goes nowhere.
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("OS_AUTH_URL", "http://127.0.0.1:1/v3"),
                ("OS_USERNAME", "alice"),
            ],
            "missing credential: set --os-password or OS_PASSWORD",
        ),
        (
            &[
                ("OS_AUTH_URL", "http://127.0.0.1:1/v3"),
                ("OS_PASSWORD", "secret-1"),
            ],
            "missing credential: set --os-username or OS_USERNAME, or --os-user-id or OS_USER_ID",
        ),
        (
            &[
                ("OS_AUTH_TYPE", "v3password"),
                ("OS_USERNAME", "alice"),
                ("OS_PASSWORD", "secret-1"),
            ],
            "missing credential: set --os-auth-url or OS_AUTH_URL",
        ),
        (
            &[
                ("OS_AUTH_URL", "http://127.0.0.1:1/v3"),
                ("OS_AUTH_TYPE", "v3applicationcredential"),
                ("OS_APPLICATION_CREDENTIAL_SECRET", "secret-1"),
            ],
            "missing credential: set --os-application-credential-id or OS_APPLICATION_CREDENTIAL_ID, or --os-application-credential-name or OS_APPLICATION_CREDENTIAL_NAME",
        ),
    ];
    for (env, expected) in cases {
        for command in [&["token", "issue"][..], &["forward", "list"]] {
            let output = navigator_with(command, env);
            assert_eq!(output.status.code(), Some(1), "{env:?}");
            let message = stderr(&output);
            assert_eq!(message.trim(), expected, "{env:?} {command:?}");
        }
    }
}

#[test]
fn missing_password_names_the_cloud() {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(
        dir.path().join("clouds.yaml"),
        "clouds:\n  mine:\n    auth:\n      auth_url: http://127.0.0.1:1\n      username: alice\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_navigator"))
        .args(["token", "issue", "--os-cloud", "mine"])
        .env_clear()
        .current_dir(dir.path())
        .output()
        .expect("the navigator binary runs");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim(),
        "missing credential: set --os-password or OS_PASSWORD (or password in clouds.yaml cloud 'mine')"
    );
}

#[test]
fn unreachable_keystone_names_the_auth_url() {
    let output = navigator_with(
        &["token", "issue"],
        &[
            ("OS_AUTH_URL", "http://127.0.0.1:1"),
            ("OS_USERNAME", "alice"),
            ("OS_PASSWORD", "secret-1"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with("cannot reach Keystone at http://127.0.0.1:1/v3: connection refused"),
        "{message}"
    );
    assert!(!message.contains("secret-1"), "{message}");
}

#[test]
fn token_issue_without_keystone_says_so() {
    let output = navigator(&["token", "issue"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("set --os-auth-url or OS_AUTH_URL"),
        "{}",
        stderr(&output)
    );
}
