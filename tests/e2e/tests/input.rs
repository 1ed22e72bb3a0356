//! End-to-end checks of what a user sees when something is wrong: bad CLI
//! input, requests the server refuses, raw HTTP errors, bad configuration —
//! and of listing with pagination and sorting. Every refusal must leave the
//! forwards exactly as they were.
//!
//! The journeys run with `auth_strategy = noauth` and with `keystone`
//! (`NAME::noauth`, `NAME::keystone`); with Keystone, a request without a
//! valid token must be a 401 that says where to get one.

use std::ffi::OsStr;
use std::io::Write as _;

use navigator_e2e::{
    Auth, Env, Server, TcpEcho, both_auth_modes, field, raw_http, run_server_to_exit,
};

/// A server with one forward to an echo server, and that forward's fields.
fn server_with_one_forward(
    name: &str,
    auth: &Auth,
    extra: &str,
) -> (Env, Server, TcpEcho, serde_json::Value) {
    let env = Env::new(name, auth, extra);
    let server = env.start();
    let echo = TcpEcho::start("127.0.0.1", "A:");
    let forward = server.create_loopback_forward("tcp", &echo.port(), &[]);
    assert_eq!(field(&forward, "status"), "ACTIVE", "{forward}");
    assert_eq!(server.forward_count(), 1);
    (env, server, echo, forward)
}

/// `forward create` with `args` must fail with exit `code`, print every
/// string of `needles` on stderr, and leave exactly one forward.
fn assert_create_refused(server: &Server, args: &[&str], code: i32, needles: &[&str]) {
    let mut all = vec!["forward", "create"];
    all.extend_from_slice(args);
    let out = server.cli(&all);
    assert_eq!(
        out.code,
        Some(code),
        "`navigator {}`:\n{out}",
        all.join(" ")
    );
    assert!(
        out.stdout.is_empty(),
        "a refused create printed a result:\n{out}"
    );
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "stderr should contain {needle:?}:\n{out}"
        );
    }
    assert_eq!(
        server.forward_count(),
        1,
        "a refused create changed the forwards"
    );
}

fn bad_cli_input_is_refused_naming_the_field(auth: Auth) {
    let (_env, server, echo, existing) = server_with_one_forward("badcli", &auth, "");
    let port = echo.port();
    let target = |ip: &'static str, internal_port: &'static str| -> Vec<&'static str> {
        vec![
            "--protocol",
            "tcp",
            "--internal-ip-address",
            ip,
            "--internal-port",
            internal_port,
        ]
    };

    // Caught by the CLI before any request (usage errors: exit 2).
    assert_create_refused(
        &server,
        &target("10.0.0.256", "80"),
        2,
        &["--internal-ip-address", "10.0.0.256"],
    );
    assert_create_refused(
        &server,
        &target("127.0.0.1", "0"),
        2,
        &["--internal-port", "0"],
    );
    assert_create_refused(
        &server,
        &target("127.0.0.1", "70000"),
        2,
        &["--internal-port", "70000"],
    );
    assert_create_refused(
        &server,
        &[
            "--protocol",
            "sctp",
            "--internal-ip-address",
            "127.0.0.1",
            "--internal-port",
            "80",
        ],
        2,
        &["--protocol", "sctp"],
    );

    // Refused by the server (API errors: exit 1).
    assert_create_refused(
        &server,
        &target("169.254.169.254", "80"),
        1,
        &["internal_ip_address", "169.254.169.254", "HTTP 400"],
    );
    let taken = field(&existing, "external_port");
    let holder = field(&existing, "id");
    assert_create_refused(
        &server,
        &[
            "--protocol",
            "tcp",
            "--internal-ip-address",
            "127.0.0.1",
            "--internal-port",
            &port,
            "--external-port",
            &taken,
        ],
        1,
        &["HTTP 409", &taken, &holder],
    );

    // Unknown ids: 404 naming the id, for show and delete.
    let unknown = "00000000-0000-4000-8000-000000000000";
    let show = server.cli(&["forward", "show", unknown]);
    assert_eq!(show.code, Some(1), "{show}");
    assert!(
        show.stderr.contains("HTTP 404") && show.stderr.contains(unknown),
        "{show}"
    );
    let delete = server.cli(&["forward", "delete", unknown]);
    assert_eq!(delete.code, Some(1), "{delete}");
    assert!(
        delete.stderr.contains("HTTP 404") && delete.stderr.contains(unknown),
        "{delete}"
    );
    // Something that is not even a UUID is "not found" too, not a crash.
    let not_an_id = "not-a-uuid";
    let show = server.cli(&["forward", "show", not_an_id]);
    assert!(
        show.code == Some(1) && show.stderr.contains("HTTP 404") && show.stderr.contains(not_an_id),
        "{show}"
    );
    assert_eq!(server.forward_count(), 1);

    // A bad retarget changes nothing either.
    let set = server.cli(&[
        "forward",
        "set",
        &holder,
        "--internal-ip-address",
        "169.254.169.254",
    ]);
    assert_eq!(set.code, Some(1), "{set}");
    assert!(set.stderr.contains("internal_ip_address"), "{set}");
    let after = server.show_forward(&holder);
    assert_eq!(
        after["internal_ip_address"],
        existing["internal_ip_address"]
    );
    assert_eq!(field(&after, "status"), "ACTIVE");
}

fn raw_http_errors_are_openstack_error_bodies(auth: Auth) {
    let (_env, server, _echo, _existing) =
        server_with_one_forward("rawhttp", &auth, "[api]\nmax_request_body_size = 1024\n");
    let json = [("Content-Type", "application/json")];

    let ok = server.http("GET", "/v1/forwards", &[], b"");
    assert_eq!(ok.status, 200, "{ok:?}");
    let request_id = ok.header("x-openstack-request-id").unwrap_or_default();
    assert!(
        request_id.starts_with("req-"),
        "X-OpenStack-Request-Id on a success: {ok:?}"
    );

    let malformed = server.http(
        "POST",
        "/v1/forwards",
        &json,
        br#"{"forward": {"protocol": "tcp""#,
    );
    assert_eq!(malformed.status, 400, "{malformed:?}");
    let body = malformed.json();
    assert_eq!(body["error"]["code"], 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        malformed
            .header("x-openstack-request-id")
            .is_some_and(|id| id.starts_with("req-")),
        "{malformed:?}"
    );

    let unknown_field = server.http(
        "POST",
        "/v1/forwards",
        &json,
        br#"{"forward": {"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": 80, "frobnicate": 1}}"#,
    );
    assert_eq!(unknown_field.status, 400, "{unknown_field:?}");
    let body = unknown_field.json();
    assert_eq!(body["error"]["code"], 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("frobnicate")),
        "{body}"
    );
    assert!(
        unknown_field.header("x-openstack-request-id").is_some(),
        "{unknown_field:?}"
    );

    let description = "x".repeat(2048);
    let big = format!(
        r#"{{"forward": {{"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": 80, "description": "{description}"}}}}"#
    );
    let too_large = server.http("POST", "/v1/forwards", &json, big.as_bytes());
    assert_eq!(too_large.status, 413, "{too_large:?}");
    let body = too_large.json();
    assert_eq!(body["error"]["code"], 413, "{body}");
    assert!(
        too_large.header("x-openstack-request-id").is_some(),
        "{too_large:?}"
    );

    let missing = server.http(
        "GET",
        "/v1/forwards/00000000-0000-4000-8000-000000000000",
        &[],
        b"",
    );
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.json()["error"]["code"], 404);
    assert!(
        missing.header("x-openstack-request-id").is_some(),
        "{missing:?}"
    );

    assert_eq!(
        server.forward_count(),
        1,
        "refused requests changed the forwards"
    );
}

#[test]
fn bad_config_exits_64_naming_file_section_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bad.conf");
    let mut file = std::fs::File::create(&config).expect("config file");
    file.write_all(b"[agent]\nport_range = 40000-20000\n")
        .expect("write config");
    drop(file);
    let out = run_server_to_exit(&[
        OsStr::new("--all-in-one"),
        OsStr::new("--data-dir"),
        dir.path().as_os_str(),
        OsStr::new("--config-file"),
        config.as_os_str(),
        OsStr::new("--bind-port"),
        OsStr::new("0"),
    ]);
    assert_eq!(out.code, Some(64), "{out}");
    let path = config.display().to_string();
    for needle in [path.as_str(), "[agent]", "port_range", "40000-20000"] {
        assert!(
            out.stderr.contains(needle),
            "stderr should contain {needle:?}:\n{out}"
        );
    }
    assert!(
        !out.stdout.contains("API"),
        "a bad config must not serve:\n{out}"
    );
}

#[test]
fn noauth_on_a_non_loopback_address_is_refused() {
    let env = Env::new("noauth", &Auth::Noauth, "");
    let out = run_server_to_exit(&[
        OsStr::new("--all-in-one"),
        OsStr::new("--data-dir"),
        env.data_dir().as_os_str(),
        OsStr::new("--config-file"),
        env.config_file.as_os_str(),
        OsStr::new("--bind-host"),
        OsStr::new("0.0.0.0"),
        OsStr::new("--bind-port"),
        OsStr::new("0"),
    ]);
    assert_eq!(out.code, Some(64), "{out}");
    for needle in ["noauth", "0.0.0.0", "--allow-insecure-noauth"] {
        assert!(
            out.stderr.contains(needle),
            "stderr should contain {needle:?}:\n{out}"
        );
    }
    assert!(
        !out.stdout.contains("API"),
        "it must refuse before serving:\n{out}"
    );
}

fn list_pages_and_sorts(auth: Auth) {
    let env = Env::new("pages", &auth, "");
    let server = env.start();
    let echo = TcpEcho::start("127.0.0.1", "A:");
    let mut created = Vec::new();
    for n in 0..5 {
        let forward = server.create_loopback_forward(
            "tcp",
            &echo.port(),
            &["--description", &format!("page test {n}")],
        );
        created.push((
            field(&forward, "id"),
            field(&forward, "external_port")
                .parse::<u16>()
                .expect("port"),
        ));
    }

    let page = server.forward_ids(&["--limit", "2"]);
    assert_eq!(page.len(), 2, "--limit 2 shows {page:?}");
    let mut all = server.forward_ids(&[]);
    assert_eq!(all.len(), 5, "forward list shows {all:?}");
    all.sort();
    let mut ids: Vec<String> = created.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    assert_eq!(all, ids);

    let sorted = server.cli_ok(&[
        "forward",
        "list",
        "--sort-key",
        "external_port",
        "--sort-dir",
        "desc",
        "-f",
        "value",
        "-c",
        "external_port",
    ]);
    let shown: Vec<u16> = sorted
        .lines()
        .map(|l| l.trim().parse().expect("port"))
        .collect();
    let mut expected: Vec<u16> = created.iter().map(|(_, port)| *port).collect();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(shown, expected, "--sort-key external_port --sort-dir desc");

    // The next page starts after the marker, in the same order.
    let by_port_desc = |args: &[&str]| {
        let mut all = vec!["--sort-key", "external_port", "--sort-dir", "desc"];
        all.extend_from_slice(args);
        server.forward_ids(&all)
    };
    let first = by_port_desc(&["--limit", "2"]);
    let second = by_port_desc(&["--limit", "2", "--marker", &first[1]]);
    let everything = by_port_desc(&[]);
    assert_eq!(
        [first.as_slice(), second.as_slice()].concat(),
        everything[..4]
    );

    // The table a user reads has a header and one row per forward.
    let table = server.cli_ok(&["forward", "list", "--limit", "2"]);
    let rows = table.lines().filter(|l| l.starts_with('|')).count();
    assert_eq!(rows, 3, "header + 2 rows:\n{table}");
}

#[test]
fn requests_without_a_valid_token_are_401_with_www_authenticate() {
    let Some(auth) = Auth::keystone("unauthenticated") else {
        return;
    };
    let Auth::Keystone(project) = &auth else {
        unreachable!("Auth::keystone gives Keystone mode")
    };
    let (_env, server, echo, existing) = server_with_one_forward("401", &auth, "");
    let json = ("Content-Type", "application/json");
    let create = format!(
        r#"{{"forward": {{"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": {}}}}}"#,
        echo.port()
    );
    let id = field(&existing, "id");
    let forward_path = format!("/v1/forwards/{id}");
    let expected_challenge = format!("Keystone uri=\"{}\"", project.settings.url);

    let no_token: &[(&str, &str)] = &[json];
    let bad_token: &[(&str, &str)] = &[json, ("X-Auth-Token", "gAAAAABnot-a-real-token")];
    let empty_token: &[(&str, &str)] = &[json, ("X-Auth-Token", "")];
    for (what, headers) in [
        ("no token", no_token),
        ("a garbage token", bad_token),
        ("an empty token", empty_token),
    ] {
        for (method, path, body) in [
            ("GET", "/v1/forwards", ""),
            ("POST", "/v1/forwards", create.as_str()),
            ("GET", forward_path.as_str(), ""),
            (
                "PUT",
                forward_path.as_str(),
                r#"{"forward": {"internal_port": 1}}"#,
            ),
            ("DELETE", forward_path.as_str(), ""),
            ("GET", "/v1/proxies", ""),
        ] {
            let response = raw_http(server.authority(), method, path, headers, body.as_bytes());
            assert_eq!(
                response.status, 401,
                "{method} {path} with {what}: {response:?}"
            );
            assert_eq!(
                response.header("www-authenticate"),
                Some(expected_challenge.as_str()),
                "{method} {path} with {what}: {response:?}"
            );
            assert_eq!(response.json()["error"]["code"], 401, "{response:?}");
            assert!(
                response
                    .header("x-openstack-request-id")
                    .is_some_and(|id| id.starts_with("req-")),
                "{response:?}"
            );
        }
    }

    // The version documents and the health check need no token.
    for path in ["/", "/v1", "/healthcheck"] {
        let response = raw_http(server.authority(), "GET", path, &[], b"");
        assert_eq!(
            response.status, 200,
            "GET {path} without a token: {response:?}"
        );
    }

    // A user whose password is wrong never reaches Navigator: the CLI says
    // Keystone refused the login.
    let mut wrong = (**project).os_environment();
    for (name, value) in &mut wrong {
        if *name == "OS_PASSWORD" {
            *value = "not-the-password".to_owned();
        }
    }
    let out = navigator_e2e::run_cli_with_env(&server.url, &wrong, &["forward", "list"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.is_empty(), "{out}");

    // Nothing the refused requests asked for happened.
    let after = server.show_forward(&id);
    assert_eq!(after["internal_port"], existing["internal_port"]);
    assert_eq!(field(&after, "status"), "ACTIVE");
    assert_eq!(server.forward_count(), 1);
}

both_auth_modes!(
    bad_cli_input_is_refused_naming_the_field,
    raw_http_errors_are_openstack_error_bodies,
    list_pages_and_sorts,
);
