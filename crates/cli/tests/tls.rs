//! `--os-cacert` / `OS_CACERT` and `--insecure` against a real HTTPS server:
//! a throwaway CA and server certificate made with `openssl`, and Python's
//! `http.server` behind `ssl` answering `GET /v1/forwards` on 127.0.0.1.
//!
//! Without `openssl` or `/usr/bin/python3` the test panics under `CI` and
//! prints a `skipped:` line otherwise.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const SERVER: &str = r#"
import http.server, json, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"forwards": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

const PYTHON: &str = "/usr/bin/python3";

/// The HTTPS server, killed by PID when dropped.
struct Https {
    child: Child,
    port: u16,
}

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tools_present() -> bool {
    let openssl = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    match (openssl, Path::new(PYTHON).is_file()) {
        (true, true) => true,
        _ if std::env::var_os("CI").is_some() => {
            panic!("the TLS test needs openssl and {PYTHON} (scripts/test-all installs them)")
        }
        _ => {
            eprintln!("skipped: openssl or {PYTHON} missing — the --os-cacert test did NOT run");
            false
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a certificate for IP 127.0.0.1 signed by it
/// (`server.pem`, `server.key`).
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&[
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=navigator test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend_from_slice(&ec);
    csr.extend_from_slice(&[
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

fn start_https(dir: &Path) -> Https {
    let mut child = Command::new(PYTHON)
        .arg("-c")
        .arg(SERVER)
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the server prints its port");
    let port = line.trim().parse().unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("no port from the HTTPS server: {line:?}")
    });
    Https { child, port }
}

/// `navigator forward list -f json` against `endpoint` with only `env`.
fn list(endpoint: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_navigator"));
    command
        .args(["--os-endpoint", endpoint, "forward", "list", "-f", "json"])
        .args(extra)
        .env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the navigator binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn server_certificates_are_checked_unless_told_otherwise() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    make_certificates(dir.path());
    let server = start_https(dir.path());
    let endpoint = format!("https://127.0.0.1:{}", server.port);
    let ca = dir.path().join("ca.pem").display().to_string();

    // An unknown CA is refused, and the message says it is the certificate.
    let out = list(&endpoint, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("certificate") && text(&out.stderr).contains("--os-cacert"),
        "{}",
        text(&out.stderr)
    );

    // Trusted through the flag, the variable, or not checked at all.
    for (extra, env) in [
        (vec!["--os-cacert", ca.as_str()], vec![]),
        (vec![], vec![("OS_CACERT", ca.as_str())]),
        (vec!["--insecure"], vec![]),
        (vec![], vec![("OS_INSECURE", "true")]),
    ] {
        let out = list(&endpoint, &extra, &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{extra:?} {env:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout).trim(), "[]", "{extra:?} {env:?}");
    }

    // The same rules hold for Keystone: with an unknown CA the login fails
    // on the certificate; trusted, the TLS handshake succeeds and the
    // stand-in (which has no Keystone API) answers HTTP 501.
    let keystone = [
        ("OS_AUTH_URL", endpoint.as_str()),
        ("OS_USERNAME", "alice"),
        ("OS_PASSWORD", "secret"),
        ("OS_PROJECT_NAME", "demo"),
    ];
    let login = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_navigator"));
        command.args(["token", "issue"]).args(extra).env_clear();
        command.envs(keystone);
        command.output().expect("the navigator binary runs")
    };
    let out = login(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Keystone") && err.contains("certificate") && err.contains("--os-cacert"),
        "{err}"
    );
    let out = login(&["--os-cacert", &ca]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("501") && !err.contains("certificate"), "{err}");

    // A bundle that is not there, or holds no certificate, is named.
    let missing = dir.path().join("missing.pem").display().to_string();
    let out = list(&endpoint, &["--os-cacert", &missing], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&missing),
        "{}",
        text(&out.stderr)
    );
    let key = dir.path().join("server.csr").display().to_string();
    let out = list(&endpoint, &[], &[("OS_CACERT", key.as_str())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&key), "{}", text(&out.stderr));
}
