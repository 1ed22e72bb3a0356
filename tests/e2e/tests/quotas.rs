//! Quotas from the CLI, as a user and an operator meet them, with
//! `auth_strategy = noauth` (every caller an admin) and with Keystone (the
//! CLI logs in as a member of its own project): `quota show` defaults to the
//! caller's project, creates over the limit are refused naming it, and only
//! admins may set a quota. The race between servers is `cluster.rs`'s.

use navigator_e2e::{Auth, Env, TcpEcho, both_auth_modes, parse_json};

fn quota_cli_journey(auth: Auth) {
    let env = Env::new("quota", &auth, "[quotas]\nforwards = 2\nports = 10\n");
    let server = env.start();
    let project = auth.project_id().to_owned();
    let echo = TcpEcho::start("127.0.0.1", "Q:");
    let own: Vec<&str> = match auth {
        // noauth has no token to name the project: the CLI asks for one.
        Auth::Noauth => {
            let out = server.cli(&["quota", "show"]);
            assert!(!out.success(), "{out}");
            assert!(out.stderr.contains("which project?"), "{out}");
            vec!["--os-project-id", "default"]
        }
        // Keystone: the token's project.
        Auth::Keystone(_) => Vec::new(),
    };
    let mut show = own.clone();
    show.extend(["quota", "show", "-f", "json"]);
    assert_eq!(
        parse_json(&server.cli_ok(&show)),
        serde_json::json!({"forwards": 2, "ports": 10})
    );
    for _ in 0..2 {
        server.create_loopback_forward("tcp", &echo.port(), &[]);
    }
    let out = server.cli(&[
        "forward",
        "create",
        "--protocol",
        "tcp",
        "--internal-ip-address",
        "127.0.0.1",
        "--internal-port",
        &echo.port(),
    ]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "quota exceeded for project {project}: forwards would be 3, the limit is 2 (2 used)"
        )),
        "{out}"
    );
    let mut usage = own.clone();
    usage.extend(["quota", "show", "--usage", "-f", "value"]);
    assert_eq!(server.cli_ok(&usage), "forwards 2 2\nports 10 2\n");
    let set = server.cli(&["quota", "set", "--forwards", "3", &project]);
    match auth {
        Auth::Noauth => {
            assert!(set.success(), "{set}");
            server.create_loopback_forward("tcp", &echo.port(), &[]);
            // Below the use: accepted, with the server's warning.
            let lower = server.cli(&["quota", "set", "--forwards", "1", &project]);
            assert!(lower.success(), "{lower}");
            assert!(
                lower.stderr.contains(
                    "warning: project default holds 3 forwards, more than its limit of 1"
                ),
                "{lower}"
            );
            server.cli_ok(&["quota", "delete", &project]);
            assert_eq!(
                parse_json(&server.cli_ok(&show))["forwards"],
                serde_json::json!(2)
            );
        }
        Auth::Keystone(_) => {
            assert!(!set.success(), "a member cannot set a quota: {set}");
            assert!(
                set.stderr.contains("policy does not allow quota:update"),
                "{set}"
            );
            let delete = server.cli(&["quota", "delete", &project]);
            assert!(!delete.success(), "{delete}");
        }
    }
}

both_auth_modes!(quota_cli_journey);
