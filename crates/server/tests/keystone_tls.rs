//! `[keystone_authtoken] cafile`, `certfile`, `keyfile` and `insecure`
//! against the test Keystone behind TLS: a small tokio-rustls terminator
//! made here, with a throwaway CA from `openssl`, forwards to
//! `NAVIGATOR_TEST_KEYSTONE_URL` (Keystone's catalog stays http; only the
//! server's `auth_url` is https).
//!
//! Validation works with `cafile`, and with `insecure` (which warns); it
//! fails closed (503, never a guess) without `cafile` or with another CA; a
//! Keystone demanding a client certificate gets `certfile`/`keyfile`;
//! catalog registration and dashboard logins work over TLS; and unusable files stop
//! `navigator-server config check` with exit 64 naming option and file
//! (those need no Keystone).
//!
//! Without `openssl` the tests panic under `CI` and print `skipped:` otherwise.

// This binary uses only part of the helpers the Keystone tests share.
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use navigator_keystone::auth::Tls;
use navigator_keystone::validate::{
    EndpointSpec, KeystoneError, PasswordCredentials, register_service_with,
};
use navigator_server::config::Config;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::keystone_admin::{self as ks, Admin, Env};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

fn openssl_present() -> bool {
    let present = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        if std::env::var_os("CI").is_some() {
            panic!("the Keystone TLS tests need openssl (scripts/test-all installs it)");
        }
        eprintln!("skipped: openssl missing — the Keystone TLS tests did NOT run");
    }
    present
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

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A self-signed CA `<name>.pem` / `<name>.key`.
fn make_ca(dir: &Path, name: &str) {
    let (key, pem, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN=navigator test {name}"),
    );
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(&EC);
    args.extend_from_slice(&[
        "-keyout",
        &key,
        "-out",
        &pem,
        "-days",
        "2",
        "-subj",
        &subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &args);
}

/// `<name>.pem` / `<name>.key` signed by `ca`, with `extensions`.
fn make_leaf(dir: &Path, ca: &str, name: &str, extensions: &str) {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    let mut args = vec!["req"];
    args.extend_from_slice(&EC);
    args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    openssl(dir, &args);
    std::fs::write(dir.join(&ext), extensions).expect("write extensions");
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// The throwaway PKI: `ca` (signs `server` for IP 127.0.0.1 and `client`),
/// and `other-ca`, which vouches for nothing here.
fn make_certificates(dir: &Path) {
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    make_leaf(
        dir,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    make_leaf(
        dir,
        "ca",
        "client",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
}

/// The TLS terminator; its accept loop stops when it is dropped.
struct TlsProxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsProxy {
    fn v3_url(&self) -> String {
        format!("https://127.0.0.1:{}/v3", self.port)
    }
}

/// Serves `server.pem` on 127.0.0.1 and relays each connection to
/// `upstream` (host:port). With `client_ca`, a client certificate signed by
/// it is required.
async fn tls_proxy(dir: &Path, upstream: String, client_ca: Option<&Path>) -> TlsProxy {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                // A refused handshake (unknown CA, no client certificate)
                // just ends this connection.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut keystone) = TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut keystone).await;
                }
            });
        }
    });
    TlsProxy { port, task }
}

/// `host:port` of the test Keystone.
fn keystone_host_port(env: &Env) -> String {
    env.url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

/// The test's PKI and the Keystone behind TLS, or `None` to skip.
struct Setup {
    env: Env,
    dir: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    let env = ks::env()?;
    if !openssl_present() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    Some(Setup { env, dir })
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A keystone configuration for `auth_url` plus `tls` lines.
fn config(env: &Env, auth_url: &str, tls: &str) -> Config {
    let text = format!(
        "[DEFAULT]\nauth_strategy = keystone\n\
         [keystone_authtoken]\nauth_url = {auth_url}\n\
         username = {}\npassword = {}\nproject_name = service\n{tls}\n",
        env.service_user, env.service_password,
    );
    Config::parse("keystone-tls-test.conf", &text).unwrap()
}

/// `GET /v1/forwards` with `token` through the whole stack.
async fn list_status(config: Config, token: &str) -> (StatusCode, String) {
    let stack = support::stack::start(config).await;
    let request = Request::builder()
        .uri("/v1/forwards")
        .header("X-Auth-Token", token)
        .body(Body::empty())
        .unwrap();
    let response = stack.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn member_token(env: &Env) -> String {
    let admin = Admin::connect(env).await;
    let project = admin.project(&ks::unique("nav-tls")).await;
    admin.user_with_role(&project, "member").await.1.token
}

#[tokio::test]
async fn validation_over_tls_needs_the_right_ca_and_never_fails_open() {
    let Some(s) = setup() else { return };
    let proxy = tls_proxy(s.dir.path(), keystone_host_port(&s.env), None).await;
    let token = member_token(&s.env).await;
    let url = proxy.v3_url();

    let cafile = format!("cafile = {}", s.path("ca.pem").display());
    let (status, body) = list_status(config(&s.env, &url, &cafile), &token).await;
    assert_eq!(status, StatusCode::OK, "with cafile: {body}");

    // The system's CAs do not know the throwaway CA, and another CA does
    // not vouch for the server: Keystone cannot be asked, so 503.
    let other = format!("cafile = {}", s.path("other-ca.pem").display());
    for (what, tls) in [("no cafile", ""), ("another CA", other.as_str())] {
        let (status, body) = list_status(config(&s.env, &url, tls), &token).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
        assert!(!body.contains(&token), "{what}: the token leaked: {body}");
    }
}

#[tokio::test]
async fn insecure_accepts_any_certificate() {
    let Some(s) = setup() else { return };
    let proxy = tls_proxy(s.dir.path(), keystone_host_port(&s.env), None).await;
    let token = member_token(&s.env).await;
    let (status, body) =
        list_status(config(&s.env, &proxy.v3_url(), "insecure = true"), &token).await;
    assert_eq!(status, StatusCode::OK, "insecure: {body}");
}

#[tokio::test]
async fn a_keystone_requiring_a_client_certificate_gets_certfile_and_keyfile() {
    let Some(s) = setup() else { return };
    let ca = s.path("ca.pem");
    let proxy = tls_proxy(s.dir.path(), keystone_host_port(&s.env), Some(&ca)).await;
    let token = member_token(&s.env).await;
    let url = proxy.v3_url();
    let with_cert = format!(
        "cafile = {}\ncertfile = {}\nkeyfile = {}",
        ca.display(),
        s.path("client.pem").display(),
        s.path("client.key").display()
    );
    let (status, body) = list_status(config(&s.env, &url, &with_cert), &token).await;
    assert_eq!(status, StatusCode::OK, "with a client certificate: {body}");

    // keystoneauth's form: the key in the certificate file.
    let both = s.path("client-both.pem");
    let mut pem = std::fs::read(s.path("client.pem")).unwrap();
    pem.extend(std::fs::read(s.path("client.key")).unwrap());
    std::fs::write(&both, pem).unwrap();
    let in_one = format!("cafile = {}\ncertfile = {}", ca.display(), both.display());
    let (status, body) = list_status(config(&s.env, &url, &in_one), &token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "key in the certificate file: {body}"
    );

    let without = format!("cafile = {}", ca.display());
    let (status, body) = list_status(config(&s.env, &url, &without), &token).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no client certificate: {body}"
    );
}

// Multi-threaded: the command runs blocking while the proxy serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_registration_works_over_tls() {
    let Some(s) = setup() else { return };
    let proxy = tls_proxy(s.dir.path(), keystone_host_port(&s.env), None).await;
    let admin = PasswordCredentials {
        auth_url: proxy.v3_url(),
        username: "admin".into(),
        password: s.env.admin_password.clone(),
        project_name: "admin".into(),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
    };
    // A name and type of its own, so the real navigator entry is untouched.
    let name = ks::unique("navigator-tls-test");
    let service_type = ks::unique("pf-tls-test");
    let endpoints = ["public", "internal", "admin"].map(|interface| EndpointSpec {
        interface: interface.into(),
        url: "https://navigator.example.com:9797".into(),
    });
    let register = |tls: Tls| {
        let (admin, name, service_type, endpoints) = (
            admin.clone(),
            name.clone(),
            service_type.clone(),
            endpoints.clone(),
        );
        async move {
            register_service_with(
                &admin,
                &tls,
                &name,
                &service_type,
                "test",
                "RegionOne",
                &endpoints,
            )
            .await
        }
    };
    let err = register(Tls::default()).await.unwrap_err();
    assert!(
        matches!(&err, KeystoneError::Unreachable { message, .. } if message.contains("certificate")),
        "{err}"
    );
    let report = register(Tls {
        cacert: Some(s.path("ca.pem")),
        ..Tls::default()
    })
    .await
    .unwrap();
    assert!(report.service_created);
    assert_eq!(report.endpoints_created.len(), 3);

    // The command itself reads [keystone_authtoken] cafile. Run without
    // touching the real catalog entry: a wrong CA is refused at the
    // handshake, and with the right one the TLS link is made and Keystone
    // itself refuses a wrong password (exit 1 both times, nothing changed).
    let conf = s.path("register.conf");
    let register_with = |password: &str, ca: &str| {
        std::fs::write(
            &conf,
            format!(
                "[keystone_authtoken]\nauth_url = {}\nusername = admin\npassword = {password}\nproject_name = admin\ncafile = {}\n",
                proxy.v3_url(),
                s.path(ca).display()
            ),
        )
        .unwrap();
        server(
            &conf,
            &["keystone", "register", "--public-url", "https://n:9797"],
        )
    };
    let out = register_with(&s.env.admin_password, "other-ca.pem");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("UnknownIssuer"), "{}", out.stderr);
    let out = register_with("not-the-password", "ca.pem");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("401") && !out.stderr.contains("certificate"),
        "{}",
        out.stderr
    );
}

struct Output {
    status: std::process::ExitStatus,
    stderr: String,
}

/// `navigator-server --config-file conf args…` with no `OS_*` variables.
fn server(conf: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_navigator-server"));
    command.arg("--config-file").arg(conf).args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OS_") {
            command.env_remove(name);
        }
    }
    let out = command.output().expect("navigator-server runs");
    Output {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A keystone configuration file with `tls` lines; no Keystone is asked.
fn check_config(dir: &Path, tls: &str) -> Output {
    let conf = dir.join("check.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nauth_strategy = keystone\n[keystone_authtoken]\n\
             auth_url = https://127.0.0.1:9/v3\nusername = navigator\npassword = pw\nproject_name = service\n{tls}\n"
        ),
    )
    .unwrap();
    server(&conf, &["config", "check"])
}

#[test]
fn unusable_tls_files_stop_start_up_naming_option_and_file() {
    if !openssl_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let p = |name: &str| dir.path().join(name).display().to_string();
    let not_pem = p("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let cases = [
        (
            format!("cafile = {}", p("missing.pem")),
            "cafile",
            p("missing.pem"),
        ),
        (format!("cafile = {not_pem}"), "cafile", not_pem.clone()),
        (format!("certfile = {not_pem}"), "certfile", not_pem.clone()),
        (
            format!(
                "certfile = {}\nkeyfile = {}",
                p("client.pem"),
                p("missing.key")
            ),
            "keyfile",
            p("missing.key"),
        ),
        (
            format!("keyfile = {}", p("client.key")),
            "keyfile",
            p("client.key"),
        ),
        // Another certificate's key: refused now, not at the first handshake.
        (
            format!(
                "certfile = {}\nkeyfile = {}",
                p("client.pem"),
                p("server.key")
            ),
            "keyfile",
            p("server.key"),
        ),
    ];
    for (tls, option, file) in cases {
        let out = check_config(dir.path(), &tls);
        assert_eq!(out.status.code(), Some(64), "{tls}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("[keystone_authtoken] {option}"))
                && out.stderr.contains(&file),
            "{tls}: {}",
            out.stderr
        );
    }

    let good = format!(
        "cafile = {}\ncertfile = {}\nkeyfile = {}",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let out = check_config(dir.path(), &good);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);

    // insecure works (no Keystone is asked here) and says so loudly.
    let out = check_config(dir.path(), "insecure = true");
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("insecure = true"),
        "{}",
        out.stderr
    );
}

/// A dashboard login against `config`'s Keystone: the login form's status.
async fn dashboard_login(config: Config, user: &str, password: &str, project: &str) -> u16 {
    let stack = support::stack::start(config).await;
    let addr = support::wire::serve(stack.app.clone()).await;
    let host = Some("127.0.0.1");
    let page = support::wire::send(addr, "GET", "/dashboard/login", host, &[], b"").await;
    let token = page
        .header_values("set-cookie")
        .iter()
        .find_map(|c| c.strip_prefix("navigator_login=")?.split(';').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no login cookie: {page:?}"));
    let body = format!(
        "csrf_token={token}&username={user}&password={password}&project={project}&domain=Default"
    );
    let cookie = format!("navigator_login={token}");
    let answer = support::wire::send(
        addr,
        "POST",
        "/dashboard/login",
        host,
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
    .await;
    answer.status
}

/// Dashboard logins go to Keystone with the same TLS options.
#[tokio::test]
async fn dashboard_logins_use_the_keystone_tls_options() {
    let Some(s) = setup() else { return };
    let proxy = tls_proxy(s.dir.path(), keystone_host_port(&s.env), None).await;
    let admin = Admin::connect(&s.env).await;
    let project = ks::unique("nav-tls-dash");
    let project_id = admin.project(&project).await;
    let (user, password) = (ks::unique("member"), ks::unique("pw"));
    let user_id = admin.user(&user, &password).await;
    admin.grant(&project_id, &user_id, "member").await;
    let url = proxy.v3_url();

    let cafile = format!("cafile = {}", s.path("ca.pem").display());
    let status = dashboard_login(config(&s.env, &url, &cafile), &user, &password, &project).await;
    assert_eq!(status, 303, "logged in over TLS");
    let other = format!("cafile = {}", s.path("other-ca.pem").display());
    let status = dashboard_login(config(&s.env, &url, &other), &user, &password, &project).await;
    assert_eq!(status, 503, "another CA: Keystone cannot be asked");
}
