//! The API over TLS (`[ssl]`) with the real binaries and real TLS peers: the
//! `navigator` CLI (`OS_CACERT`), `curl` and `openssl s_client`, against a
//! throwaway CA each test makes with the `openssl` command (nothing is
//! committed). Covers the CLI and curl over HTTPS, a wrong CA refused by the
//! clients, client certificates required by `ca_file`, the handshake bounded
//! by `[api] header_timeout`, the dashboard's `Secure` cookies,
//! `public_endpoint` in links and the banner, certificate rotation (file poll
//! and SIGHUP, a bad new pair keeping the old one) and start-up errors (exit
//! 64).
//!
//! Waits are polls with deadlines far above what an idle machine needs.

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use navigator_e2e::{Auth, Env, eventually, run_cli_with_env, run_server_to_exit};
use serde_json::Value;

/// Longer than two certificate polls (5 s each) on a loaded machine.
const RELOAD_PATIENCE: Duration = Duration::from_secs(40);

/// A throwaway CA in a temp directory, made with the `openssl` command.
struct Pki {
    dir: PathBuf,
    name: &'static str,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot run openssl");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA named `name` (files `NAME-ca.pem`, `NAME-ca.key`) in `dir`.
    fn new(dir: &Path, name: &'static str) -> Pki {
        let ca_key = format!("{name}-ca.key");
        let ca = format!("{name}-ca.pem");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
                "-days",
                "2",
                "-subj",
                &format!("/CN=navigator test CA {name}"),
            ],
            dir,
        );
        Pki {
            dir: dir.to_owned(),
            name,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Issues `FILE.pem` and `FILE.key` (a new key) with serial `serial`,
    /// valid `days` days (0: expires now), for the server (`localhost`,
    /// 127.0.0.1) or a client.
    fn issue(&self, file: &str, serial: u32, days: u32, client: bool) -> (PathBuf, PathBuf) {
        let key = format!("{file}.key");
        let csr = format!("{file}.csr");
        let cert = format!("{file}.pem");
        let ext = format!("{file}.ext");
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=localhost",
            ],
            &self.dir,
        );
        let extensions = if client {
            "extendedKeyUsage=clientAuth\n"
        } else {
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        };
        std::fs::write(self.dir.join(&ext), extensions).unwrap();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{}-ca.pem", self.name),
                "-CAkey",
                &format!("{}-ca.key", self.name),
                "-set_serial",
                &serial.to_string(),
                "-days",
                &days.to_string(),
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
            &self.dir,
        );
        set_private(&self.dir.join(&key));
        (self.dir.join(cert), self.dir.join(key))
    }
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Replaces `to` with `from` in one step (as a deployment tool would).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    set_private(&tmp);
    std::fs::rename(&tmp, to).unwrap();
}

fn ssl_section(cert: &Path, key: &Path, ca: Option<&Path>) -> String {
    let mut text = format!(
        "[ssl]\ncert_file = {}\nkey_file = {}\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = ca {
        text.push_str(&format!("ca_file = {}\n", ca.display()));
    }
    text
}

/// `curl -sS ARGS`: exit code and output (body, or `-w` text).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("cannot run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The serial (hex, as openssl prints it) of the certificate a new
/// handshake with `authority` gets.
fn served_serial(authority: &str, ca: &Path) -> Result<String, String> {
    let script = format!(
        "openssl s_client -connect {authority} -CAfile {} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial",
        ca.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .map(str::to_owned)
        .ok_or_else(|| format!("no certificate read: {text:?}"))
}

fn env_with(name: &str, extra: &str) -> Env {
    Env::new(name, &Auth::Noauth, extra)
}

#[test]
fn cli_and_curl_over_https_and_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let other = Pki::new(dir.path(), "other");
    let (cert, key) = pki.issue("server", 1, 1, false);
    let env = env_with(
        "tls-cli",
        &format!(
            "[api]\nheader_timeout = 1\n{}",
            ssl_section(&cert, &key, None)
        ),
    );
    let server = env.start();
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "banner: {}",
        server.url
    );
    let ca = pki.ca().display().to_string();

    // The CLI, trusting the test CA.
    let cacert = [("OS_CACERT", ca.clone())];
    let created = run_cli_with_env(
        &server.url,
        &cacert,
        &[
            "forward",
            "create",
            "--protocol",
            "tcp",
            "--internal-ip-address",
            "127.0.0.1",
            "--internal-port",
            "8080",
            "-f",
            "json",
        ],
    );
    assert!(created.success(), "{created}\n{}", server.logs());
    let created: Value = serde_json::from_str(&created.stdout).unwrap();
    let listed = run_cli_with_env(
        &server.url,
        &cacert,
        &["forward", "list", "-f", "value", "-c", "id"],
    );
    assert!(listed.success(), "{listed}");
    assert_eq!(listed.stdout.trim(), created["id"].as_str().unwrap());

    // curl, HTTP/1.1 (ALPN), trusting the test CA.
    let (code, out, err) = curl(&[
        "--cacert",
        &ca,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        &format!("{}/v1/forwards", server.url),
    ]);
    assert_eq!((code, out.as_str()), (0, "200 1.1"), "{err}");

    // A client that trusts another CA refuses the server.
    let other_ca = other.ca().display().to_string();
    let (code, _, err) = curl(&[
        "--cacert",
        &other_ca,
        &format!("{}/v1/forwards", server.url),
    ]);
    assert_eq!(code, 60, "curl with the wrong CA: {err}");
    let refused = run_cli_with_env(
        &server.url,
        &[("OS_CACERT", other_ca)],
        &["forward", "list"],
    );
    assert!(!refused.success(), "{refused}");
    assert!(refused.stderr.contains("--os-cacert"), "{refused}");
    // Plain HTTP to the TLS port gets no API answer.
    let (code, out, _) = curl(&[&format!("http://{}/v1/forwards", server.authority())]);
    assert!(code != 0 || !out.contains("forwards"), "{code} {out}");

    // The dashboard's cookies are Secure over TLS.
    let (code, headers, err) = curl(&[
        "--cacert",
        &ca,
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{}/dashboard/login", server.url),
    ]);
    assert_eq!(code, 0, "{err}");
    let cookies: Vec<&str> = headers
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .collect();
    assert!(!cookies.is_empty(), "{headers}");
    for cookie in cookies {
        assert!(cookie.trim_end().ends_with("; Secure"), "{cookie}");
    }

    // A client that connects and never sends a ClientHello is closed after
    // header_timeout (1 s), not kept.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.authority()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0)) || read.is_err() && waited < Duration::from_secs(15),
        "{read:?} after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    // Half a handshake (a few bytes of a record header) is closed too.
    let started = Instant::now();
    let mut half = TcpStream::connect(server.authority()).unwrap();
    std::io::Write::write_all(&mut half, &[0x16, 0x03, 0x01]).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let read = half.read(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "{read:?} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn handshakes_count_against_max_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cap");
    let (cert, key) = pki.issue("server", 1, 1, false);
    let env = env_with(
        "tls-cap",
        &format!(
            "[api]\nmax_connections = 1\nheader_timeout = 6\n{}",
            ssl_section(&cert, &key, None)
        ),
    );
    let server = env.start();
    let ca = pki.ca().display().to_string();
    let url = format!("{}/v1/forwards", server.url);
    let (code, _, err) = curl(&["--cacert", &ca, &url]);
    assert_eq!(code, 0, "{err}");

    // A client in the middle of nothing (no ClientHello) holds the only
    // slot: the next connection is closed at once, without an answer.
    // The first curl's connection frees its slot asynchronously, so a
    // holder connecting too soon is refused itself (closed at once): retry
    // until one is held (no answer and no close within 300 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut holder = loop {
        let mut holder = TcpStream::connect(server.authority()).unwrap();
        holder
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        match holder.read(&mut [0u8; 1]) {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break holder;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no connection could hold the only slot: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let started = Instant::now();
    let (code, _, err) = curl(&["--cacert", &ca, &url]);
    assert_ne!(code, 0, "served beyond max_connections: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused only after {:?}",
        started.elapsed()
    );
    // Once the header timeout closes the holder, the slot is free again.
    holder
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = holder.read(&mut buf);
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    eventually("a free slot", Duration::from_secs(10), || {
        let (code, _, err) = curl(&["--cacert", &ca, &url]);
        (code == 0).then_some(()).ok_or(err)
    });
}

#[test]
fn client_certificates_required_and_public_endpoint_in_links() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "srv");
    let clients = Pki::new(dir.path(), "clients");
    let strangers = Pki::new(dir.path(), "strangers");
    let (cert, key) = pki.issue("server", 1, 1, false);
    let (client_cert, client_key) = clients.issue("client", 2, 1, true);
    let (stranger_cert, stranger_key) = strangers.issue("stranger", 3, 1, true);
    let env = env_with(
        "tls-mtls",
        &format!(
            "[DEFAULT]\npublic_endpoint = https://navigator.test:8443/\n{}",
            ssl_section(&cert, &key, Some(&clients.ca()))
        ),
    );
    let server = env.start();
    // The banner names the public endpoint, and where it listens.
    assert_eq!(server.url, "https://navigator.test:8443");
    let bound = eventually("the listening line", Duration::from_secs(10), || {
        let logs = server.logs();
        logs.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("(listening on https://")
                    .and_then(|r| r.split(';').next())
                    .map(str::to_owned)
            })
            .ok_or(logs)
    });
    let base = format!("https://{bound}");
    let ca = pki.ca().display().to_string();
    let (cc, ck) = (
        client_cert.display().to_string(),
        client_key.display().to_string(),
    );

    // Without a client certificate, or with one of another CA: refused.
    let (code, _, err) = curl(&["--cacert", &ca, &format!("{base}/v1/forwards")]);
    assert_ne!(code, 0, "no client certificate: {err}");
    let (code, _, err) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &stranger_cert.display().to_string(),
        "--key",
        &stranger_key.display().to_string(),
        &format!("{base}/v1/forwards"),
    ]);
    assert_ne!(code, 0, "a stranger's certificate: {err}");

    // With one: served. Two forwards, then a page of one links to the next
    // through public_endpoint.
    let with_cert = |extra: &[&str]| {
        let mut args = vec![
            "--cacert",
            ca.as_str(),
            "--cert",
            cc.as_str(),
            "--key",
            ck.as_str(),
        ];
        args.extend_from_slice(extra);
        curl(&args)
    };
    for port in ["8080", "8081"] {
        let body = format!(
            r#"{{"forward":{{"protocol":"tcp","internal_ip_address":"127.0.0.1","internal_port":{port}}}}}"#
        );
        let (code, out, err) = with_cert(&[
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            "-w",
            "\n%{http_code}",
            &format!("{base}/v1/forwards"),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.ends_with("\n201"), "{out}\n{}", server.logs());
    }
    let (code, out, err) = with_cert(&[&format!("{base}/v1/forwards?limit=1")]);
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    let next = page["forwards_links"][0]["href"]
        .as_str()
        .unwrap_or_default();
    assert!(
        next.starts_with("https://navigator.test:8443/v1/forwards?"),
        "{page}"
    );
    let (code, out, _) = with_cert(&[&format!("{base}/")]);
    assert_eq!(code, 0);
    assert!(out.contains("https://navigator.test:8443/v1/"), "{out}");
    // The Host check (on with noauth) accepts public_endpoint's name.
    for (host, wanted) in [("navigator.test:8443", "200"), ("elsewhere.test", "421")] {
        let (code, out, err) = with_cert(&[
            "-H",
            &format!("Host: {host}"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/v1/forwards"),
        ]);
        assert_eq!((code, out.as_str()), (0, wanted), "Host: {host}: {err}");
    }
}

#[test]
fn certificate_rotation_by_poll_and_sighup_keeps_the_old_on_a_bad_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "rot");
    let (cert, key) = pki.issue("live", 0x11, 1, false);
    let env = env_with("tls-rotate", &ssl_section(&cert, &key, None));
    let server = env.start();
    let authority = server.authority().to_owned();
    let ca = pki.ca();
    assert_eq!(served_serial(&authority, &ca).unwrap(), "11");

    // A new pair on disk: new handshakes get it after the poll.
    let (new_cert, new_key) = pki.issue("second", 0x22, 1, false);
    replace(&new_key, &key);
    replace(&new_cert, &cert);
    eventually(
        "the rotated certificate",
        RELOAD_PATIENCE,
        || match served_serial(&authority, &ca)? {
            serial if serial == "22" => Ok(()),
            serial => Err(format!("serial {serial}")),
        },
    );

    // A certificate whose key is not on disk (mismatched pair): refused,
    // the previous pair stays.
    let (mismatched, _) = pki.issue("third", 0x33, 1, false);
    replace(&mismatched, &cert);
    eventually("the warning about the bad pair", RELOAD_PATIENCE, || {
        let logs = server.logs();
        logs.contains("not reloaded (the files changed)")
            .then_some(())
            .ok_or_else(|| "no warning yet".to_owned())
    });
    let logs = server.logs();
    assert!(logs.contains(&cert.display().to_string()), "{logs}");
    assert_eq!(served_serial(&authority, &ca).unwrap(), "22");

    // An expired certificate is refused the same way.
    let (expired, expired_key) = pki.issue("expired", 0x44, 0, false);
    std::thread::sleep(Duration::from_millis(1100));
    replace(&expired_key, &key);
    replace(&expired, &cert);
    eventually(
        "the warning about the expired certificate",
        RELOAD_PATIENCE,
        || {
            server
                .logs()
                .contains("expired at")
                .then_some(())
                .ok_or_else(|| "no warning yet".to_owned())
        },
    );
    assert_eq!(served_serial(&authority, &ca).unwrap(), "22");

    // SIGHUP reloads at once (and does not stop the server).
    let (fourth, fourth_key) = pki.issue("fourth", 0x55, 1, false);
    replace(&fourth_key, &key);
    replace(&fourth, &cert);
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("the SIGHUP reload", RELOAD_PATIENCE, || {
        server
            .logs()
            .contains("reloaded (SIGHUP)")
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    assert_eq!(served_serial(&authority, &ca).unwrap(), "55");
    let (code, _, err) = curl(&[
        "--cacert",
        &ca.display().to_string(),
        &format!("{}/v1/forwards", server.url),
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn bad_tls_files_stop_start_up_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "st");
    let (cert, key) = pki.issue("ok", 1, 1, false);
    let (other_cert, _) = pki.issue("other", 2, 1, false);
    let (expired, expired_key) = pki.issue("expired", 3, 0, false);
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.path().join("missing.pem");
    // notAfter of the expired certificate is its issue second.
    std::thread::sleep(Duration::from_millis(1100));
    let d = |p: &Path| p.display().to_string();
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            format!("[ssl]\nkey_file = {}\n", d(&key)),
            vec!["key_file".into(), "needs cert_file".into()],
        ),
        (
            format!("[ssl]\ncert_file = {}\n", d(&cert)),
            vec!["cert_file".into(), "needs key_file".into()],
        ),
        (
            ssl_section(&missing, &key, None),
            vec![
                format!("cert_file = {}", d(&missing)),
                "cannot read it".into(),
            ],
        ),
        (
            ssl_section(&other_cert, &key, None),
            vec![
                d(&other_cert),
                d(&key),
                "not a usable certificate and key pair".into(),
            ],
        ),
        (
            ssl_section(&expired, &expired_key, None),
            vec![format!("cert_file = {}", d(&expired)), "expired at".into()],
        ),
        (
            ssl_section(&cert, &key, Some(&not_pem)),
            vec![
                format!("ca_file = {}", d(&not_pem)),
                "no certificate".into(),
            ],
        ),
        (
            "[DEFAULT]\npublic_endpoint = ftp://nav.example.com\n".into(),
            vec!["public_endpoint".into(), "http:// or https://".into()],
        ),
    ];
    for (i, (text, wanted)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("case{i}.conf"));
        std::fs::write(&config, format!("[DEFAULT]\nbind_port = 0\n{text}")).unwrap();
        let out = run_server_to_exit(&[
            "--all-in-one".as_ref(),
            "--data-dir".as_ref(),
            dir.path().as_os_str(),
            "--config-file".as_ref(),
            config.as_os_str(),
        ]);
        assert_eq!(out.code, Some(64), "{text}\n{out}");
        for w in wanted {
            assert!(
                out.stderr.contains(w.as_str()),
                "{text}: wanted {w:?}\n{out}"
            );
        }
    }
}
