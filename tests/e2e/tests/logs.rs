//! Logging and SIGHUP of the real `navigator-server` (all-in-one, noauth on
//! loopback) and `navigator-agent` binaries: JSON lines and text lines carry
//! the request's ids and project, a caller's `X-OpenStack-Request-Id` is
//! logged only when it is `req-<uuid>`, `log_file` is written and re-opened,
//! bad logging options stop start-up, `use_journal` without journald falls
//! back to stderr, and SIGHUP changes the policy and the log level without a
//! restart and without failing a request or a relayed connection, while a
//! bad file on reload changes nothing.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use navigator_e2e::{
    Server, TcpEcho, claim_port_range, eventually, field, raw_http, run_agent_to_exit,
    run_server_to_exit,
};
use serde_json::Value;

/// A global request id as another OpenStack service sends it.
const VALID: &str = "req-0a1b2c3d-4e5f-6789-abcd-ef0123456789";
/// Not `req-<uuid>`: must never reach the log.
const INVALID: &str = "req-NOT-A-UUID-injected";

const WAIT: Duration = Duration::from_secs(20);

/// Writes `navigator.conf` in `dir`: its own port range, `default` lines in
/// `[DEFAULT]`, and `extra` sections after.
fn write_conf(dir: &Path, default: &str, extra: &str) -> PathBuf {
    let (first, last) = claim_port_range();
    let path = dir.join("navigator.conf");
    std::fs::write(
        &path,
        format!(
            "[DEFAULT]\nhost = e2e-logs\n{default}\n[agent]\nport_range = {first}-{last}\n\
             external_addresses = 127.0.0.1\nreport_interval = 1\n[api]\nrate_limit = 0\n{extra}\n"
        ),
    )
    .expect("write the config file");
    path
}

fn start(dir: &Path, conf: &Path) -> Server {
    Server::start(dir, conf)
}

fn start_without_rust_log(dir: &Path, conf: &Path) -> Server {
    Server::start_args_with(
        &[
            "--all-in-one".as_ref(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
            "--config-file".as_ref(),
            conf.as_os_str(),
            "--bind-port".as_ref(),
            "0".as_ref(),
        ],
        |command| {
            command.env_remove("RUST_LOG");
        },
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn hangup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -HUP {pid}");
}

/// `GET path` with `X-OpenStack-Request-Id: global`; returns the status and
/// the request id the server answered with.
fn get_with_global_id(server: &Server, path: &str, global: &str) -> (u16, String) {
    let response = server.http(
        "GET",
        path,
        &[
            ("X-OpenStack-Request-Id", global),
            ("X-Project-Id", "p-logs"),
        ],
        b"",
    );
    let own = response
        .header("x-openstack-request-id")
        .unwrap_or_else(|| panic!("no request id in the response: {response:?}"))
        .to_owned();
    (response.status, own)
}

#[test]
fn json_lines_in_the_log_file_carry_the_request_ids_and_project() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("server.log");
    let conf = write_conf(
        dir.path(),
        &format!("log_format = json\nlog_file = {}\n", log.display()),
        "",
    );
    let server = start(dir.path(), &conf);
    let (status, own) = get_with_global_id(&server, "/v1/forwards", VALID);
    assert_eq!(status, 200);
    assert!(own.starts_with("req-") && own != VALID, "{own}");
    let (_, refused) = get_with_global_id(&server, "/v1/forwards", INVALID);

    let (line, other) = eventually("both request lines in the log file", WAIT, || {
        let text = read(&log);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect();
        let find = |id: &str| {
            lines
                .iter()
                .find(|l| l["request_id"] == id && l["message"] == "request")
                .cloned()
        };
        match (find(&own), find(&refused)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(text),
        }
    });
    assert_eq!(line["global_request_id"], VALID, "{line}");
    assert_eq!(line["project"], "p-logs", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["target"], "navigator_server::context", "{line}");
    assert_eq!(line["fields"]["status"], 200, "{line}");
    assert_eq!(line["fields"]["path"], "/v1/forwards", "{line}");
    assert!(
        line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );
    assert!(other.get("global_request_id").is_none(), "{other}");
    let text = read(&log);
    assert!(!text.contains("NOT-A-UUID"), "{text}");
    for l in text.lines() {
        let l: Value = serde_json::from_str(l).expect("JSON");
        for key in ["timestamp", "level", "target", "message"] {
            assert!(l.get(key).is_some(), "no {key} in {l}");
        }
    }
    // The log went to the file, not to stderr.
    assert!(!server.logs().contains("\"level\""), "{}", server.logs());
}

#[test]
fn text_lines_carry_the_request_ids_and_an_invalid_global_id_is_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = write_conf(dir.path(), "", "");
    let server = start(dir.path(), &conf);
    let (_, own) = get_with_global_id(&server, "/v1/forwards", VALID);
    let (_, refused) = get_with_global_id(&server, "/v1/forwards", INVALID);
    let line = eventually("the request line on stderr", WAIT, || {
        let logs = server.logs();
        logs.lines()
            .find(|l| l.contains(&format!("request_id={own}")) && l.contains("status=200"))
            .map(str::to_owned)
            .ok_or(logs)
    });
    assert!(
        line.contains(&format!("global_request_id={VALID}")),
        "{line}"
    );
    assert!(line.contains("project=p-logs"), "{line}");
    eventually("the second request's line", WAIT, || {
        let logs = server.logs();
        if logs.contains(&format!("request_id={refused}")) {
            Ok(())
        } else {
            Err(logs)
        }
    });
    assert!(!server.logs().contains("NOT-A-UUID"), "{}", server.logs());
}

/// The agent's lines about a forward created by a request carry that
/// request's ids: the RPC message takes them along (here the all-in-one
/// agent, over the in-process transport; over RabbitMQ they are the oslo
/// context's `_context_request_id` and `_context_global_request_id`).
#[test]
fn the_agents_lines_for_a_request_carry_its_ids() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = write_conf(
        dir.path(),
        "",
        "[forwards]\nallow_loopback_targets = true\n",
    );
    let server = start(dir.path(), &conf);
    let echo = TcpEcho::start("127.0.0.1", "c:");
    let body = format!(
        r#"{{"forward": {{"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": {}}}}}"#,
        echo.port()
    );
    let response = server.http(
        "POST",
        "/v1/forwards",
        &[
            ("X-OpenStack-Request-Id", VALID),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(response.status, 201, "{response:?}");
    let own = response
        .header("x-openstack-request-id")
        .expect("request id")
        .to_owned();
    let line = eventually("the relay's line about the new listener", WAIT, || {
        let logs = server.logs();
        logs.lines()
            .find(|l| l.contains("relay listener added") && l.contains("rpc{"))
            .map(str::to_owned)
            .ok_or(logs)
    });
    assert!(line.contains(&format!("request_id={own}")), "{line}");
    assert!(
        line.contains(&format!("global_request_id={VALID}")),
        "{line}"
    );
}

#[test]
fn bad_logging_options_stop_start_up_naming_the_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |conf: &Path| {
        run_server_to_exit(&[
            OsStr::new("--config-file"),
            conf.as_os_str(),
            OsStr::new("config"),
            OsStr::new("check"),
        ])
    };
    let conf = write_conf(dir.path(), "log_format = xml\n", "");
    let out = check(&conf);
    assert_eq!(out.code, Some(64), "{out}");
    assert!(
        out.stderr
            .contains("[DEFAULT] log_format = \"xml\": expected text or json"),
        "{out}"
    );

    let missing = dir.path().join("no-such-dir").join("server.log");
    let conf = write_conf(
        dir.path(),
        &format!("log_file = {}\n", missing.display()),
        "",
    );
    let serve = run_server_to_exit(&[
        OsStr::new("--all-in-one"),
        OsStr::new("--data-dir"),
        dir.path().as_os_str(),
        OsStr::new("--config-file"),
        conf.as_os_str(),
        OsStr::new("--bind-port"),
        OsStr::new("0"),
    ]);
    for out in [check(&conf), serve] {
        assert_eq!(out.code, Some(64), "{out}");
        assert!(
            out.stderr.contains(&format!(
                "cannot open [DEFAULT] log_file {}: No such file or directory",
                missing.display()
            )),
            "{out}"
        );
    }
    // `config check` does not create the file it checks (an operator's
    // root-owned file would lock the service out of it).
    let fine = dir.path().join("server.log");
    let conf = write_conf(dir.path(), &format!("log_file = {}\n", fine.display()), "");
    let out = check(&conf);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!fine.exists());

    // The agent refuses it the same way, before it tries to reach RabbitMQ.
    let agent_conf = dir.path().join("agent.conf");
    std::fs::write(
        &agent_conf,
        format!(
            "[DEFAULT]\nhost = e2e-logs-agent\ntransport_url = rabbit://u:p@127.0.0.1:1/\nlog_file = {}\n",
            missing.display()
        ),
    )
    .expect("write");
    let out = run_agent_to_exit(&[OsStr::new("--config-file"), agent_conf.as_os_str()]);
    assert_eq!(out.code, Some(64), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "cannot open [DEFAULT] log_file {}: No such file or directory",
            missing.display()
        )),
        "{out}"
    );
}

#[test]
fn use_journal_without_journald_says_so_and_logs_to_stderr() {
    if Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("skipped: journald is running here; this test is about its absence");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = write_conf(dir.path(), "use_journal = true\n", "");
    let server = start(dir.path(), &conf);
    eventually("the fallback notice and the log on stderr", WAIT, || {
        let logs = server.logs();
        if logs.contains("use_journal = true but journald cannot be reached")
            && logs.contains("logging to stderr instead")
            && logs.contains("serving")
        {
            Ok(())
        } else {
            Err(logs)
        }
    });
}

/// Requests in a loop until `stop`; returns how many succeeded, and panics
/// (failing the join) on the first that did not.
fn load(authority: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut done = 0;
        while !stop.load(Ordering::Relaxed) {
            let response = raw_http(&authority, "GET", "/v1/forwards", &[], b"");
            assert_eq!(response.status, 200, "{response:?}");
            done += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        done
    })
}

/// One line through an open relayed connection.
fn round_trip(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, payload: &str) -> String {
    stream
        .write_all(format!("{payload}\n").as_bytes())
        .expect("write through the forward");
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("read through the forward");
    line.trim_end().to_owned()
}

#[test]
fn sighup_reloads_policy_level_and_log_file_without_dropping_anything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("server.log");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "\"get_proxy\": \"rule:admin_only\"\n").expect("write");
    let default = format!("debug = false\nlog_file = {}\n", log.display());
    let sections = format!("[oslo_policy]\npolicy_file = {}\n", policy.display());
    let conf = write_conf(dir.path(), &default, &sections);
    let original = read(&conf);
    let mut server = start_without_rust_log(dir.path(), &conf);

    assert_eq!(server.http("GET", "/v1/proxies", &[], b"").status, 200);
    // At info level the dropped global id is not mentioned.
    let (_, before) = get_with_global_id(&server, "/v1/forwards", INVALID);
    eventually("the request line", WAIT, || {
        let text = read(&log);
        if text.contains(&before) {
            Ok(())
        } else {
            Err(text)
        }
    });
    assert!(!read(&log).contains("ignoring X-OpenStack-Request-Id"));

    // A relayed connection open across the reloads.
    let echo = TcpEcho::start("127.0.0.1", "e:");
    let forward = server.create_loopback_forward("tcp", &echo.port(), &[]);
    let port: u16 = field(&forward, "external_port").parse().expect("port");
    let mut stream = eventually("a relayed connection", WAIT, || {
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    assert_eq!(round_trip(&mut stream, &mut reader, "one"), "e:one");

    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..3)
        .map(|_| load(server.authority().to_owned(), stop.clone()))
        .collect();

    // logrotate's way: move the file, then SIGHUP.
    std::fs::rename(&log, dir.path().join("server.log.1")).expect("rotate");
    std::fs::write(&policy, "\"get_proxy\": \"!\"\n").expect("write");
    std::fs::write(
        &conf,
        original
            .replace("debug = false", "debug = true")
            .replace("[api]\n", "[api]\nmax_port_range_size = 500\n")
            + "[relay]\nmax_connections_per_forward = 1\n",
    )
    .expect("write");
    hangup(server.pid());
    eventually("the new policy in force", WAIT, || {
        let status = server.http("GET", "/v1/proxies", &[], b"").status;
        if status == 403 {
            Ok(())
        } else {
            Err(format!("GET /v1/proxies: {status}"))
        }
    });
    eventually(
        "the re-opened log file with the reload's lines",
        WAIT,
        || {
            let text = read(&log);
            if text.contains("option [DEFAULT] debug changed; applied")
                && text.contains(
                    "option [api] max_port_range_size changed; takes effect after a restart",
                )
            {
                Ok(())
            } else {
                Err(text)
            }
        },
    );
    // The relay's per-forward cap changed at once: the open connection holds
    // the only slot, and a new one is refused.
    eventually("the new cap applied", WAIT, || {
        let text = read(&log);
        if text.contains("relay per-forward caps changed") {
            Ok(())
        } else {
            Err(text)
        }
    });
    assert!(!read(&log).contains("option [relay] max_connections_per_forward changed"));
    assert!(
        navigator_e2e::tcp_round_trip("127.0.0.1", port, "more").is_err(),
        "a second connection under a cap of 1"
    );
    assert_eq!(round_trip(&mut stream, &mut reader, "still"), "e:still");
    // Debug level now: the dropped global id is mentioned (not its text).
    get_with_global_id(&server, "/v1/forwards", INVALID);
    eventually("the debug line", WAIT, || {
        let text = read(&log);
        if text.contains("ignoring X-OpenStack-Request-Id") {
            Ok(())
        } else {
            Err(text)
        }
    });
    for _ in 0..5 {
        hangup(server.pid());
        std::thread::sleep(Duration::from_millis(200));
    }

    // A file that does not parse changes nothing.
    std::fs::write(&conf, original.replace("debug = false", "log_format = xml")).expect("write");
    std::fs::write(&policy, "\"get_proxy\": \"rule:admin_only\"\n").expect("write");
    hangup(server.pid());
    eventually("the refused reload", WAIT, || {
        let text = read(&log);
        if text.contains(
            "[DEFAULT] log_format = \"xml\": expected text or json; keeping the running configuration unchanged",
        ) {
            Ok(())
        } else {
            Err(text)
        }
    });
    assert_eq!(
        server.http("GET", "/v1/proxies", &[], b"").status,
        403,
        "the policy of the last good reload stays"
    );

    stop.store(true, Ordering::Relaxed);
    let served: usize = loaders
        .into_iter()
        .map(|l| {
            l.join()
                .expect("every request during the reloads succeeded")
        })
        .sum();
    assert!(served > 0);
    assert_eq!(round_trip(&mut stream, &mut reader, "two"), "e:two");
    assert!(server.exited().is_none(), "{}", server.logs());
}
