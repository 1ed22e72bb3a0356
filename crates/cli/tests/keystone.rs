//! Runs the built `navigator` binary against a real Keystone: `token issue`
//! with clouds.yaml + secure.yaml, with `OS_*` variables and with an
//! application credential; flag-over-environment precedence; and the
//! catalog lookup that finds Navigator's endpoint.
//!
//! Keystone comes from `scripts/keystone start DIR` (`NAVIGATOR_TEST_KEYSTONE_URL`,
//! `NAVIGATOR_TEST_ADMIN_PASSWORD`). Each test makes its own project and user,
//! and the catalog test its own region, so tests do not see each other.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::thread::JoinHandle;

use navigator_keystone::auth::{self, Credentials, DomainRef, ProjectRef, Secret, UserRef};
use serde_json::{Value, json};

/// The Keystone under test, or `None` (and a note) when there is none
/// outside CI.
fn keystone_settings() -> Option<(String, String)> {
    let url = std::env::var("NAVIGATOR_TEST_KEYSTONE_URL").ok();
    let password = std::env::var("NAVIGATOR_TEST_ADMIN_PASSWORD").ok();
    match (url, password) {
        (Some(url), Some(password)) if !url.is_empty() && !password.is_empty() => {
            Some((url, password))
        }
        _ if std::env::var_os("CI").is_some() => {
            panic!("Keystone tests need scripts/keystone (run scripts/test-all)")
        }
        _ => {
            eprintln!(
                "skipped: NAVIGATOR_TEST_KEYSTONE_URL not set (start one with scripts/keystone start DIR and source DIR/env)"
            );
            None
        }
    }
}

/// Admin access to Keystone, plus what a test created (removed on drop).
struct Keystone {
    url: String,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    admin_token: String,
    cleanup: Vec<String>,
}

/// A user with the member role on a project of its own.
struct Member {
    name: String,
    id: String,
    password: String,
    project_name: String,
    project_id: String,
}

impl Keystone {
    fn connect() -> Option<Keystone> {
        let (url, password) = keystone_settings()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let http = auth::http_client().expect("an HTTP client");
        let admin = Credentials::Password {
            user: UserRef::Name {
                name: "admin".into(),
                domain: DomainRef::Id("default".into()),
            },
            password: Secret::new(password),
            project: Some(ProjectRef::Name {
                name: "admin".into(),
                domain: DomainRef::Id("default".into()),
            }),
        };
        let session = runtime
            .block_on(auth::authenticate(&url, &admin))
            .expect("the admin logs in");
        Some(Keystone {
            url: auth::v3_url(&url).expect("a valid Keystone URL"),
            runtime,
            http,
            admin_token: session.token.expose().to_owned(),
            cleanup: Vec::new(),
        })
    }

    /// One admin API call; `body` of `None` sends no body.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call_as(&self.admin_token, method, path, body)
    }

    fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let url = format!("{}{path}", self.url);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("X-Auth-Token", token)
            .header("Connection", "close");
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.runtime.block_on(async {
            let response = request.send().await.expect("Keystone answers");
            let status = response.status();
            let text = response.text().await.expect("a body");
            assert!(status.is_success(), "{method} {path}: {status} {text}");
            if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).expect("JSON")
            }
        })
    }

    fn post(&mut self, path: &str, body: Value, key: &str) -> Value {
        let created = self.call(reqwest::Method::POST, path, Some(body))[key].clone();
        if let Some(id) = created["id"].as_str() {
            // Deleting a service deletes its endpoints too.
            if key != "endpoint" && key != "application_credential" {
                self.cleanup.push(format!("{path}/{id}"));
            }
        }
        created
    }

    /// A fresh project and a member of it.
    fn member(&mut self) -> Member {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let project_name = format!("navcli-{suffix}");
        let project = self.post(
            "/projects",
            json!({"project": {"name": project_name, "domain_id": "default"}}),
            "project",
        );
        let name = format!("alice-{suffix}");
        let password = format!("pw-{suffix}");
        let user = self.post(
            "/users",
            json!({"user": {"name": name, "password": password, "domain_id": "default"}}),
            "user",
        );
        let roles = self.call(reqwest::Method::GET, "/roles?name=member", None);
        let role = roles["roles"][0]["id"].as_str().expect("a member role");
        let project_id = project["id"].as_str().expect("a project id").to_owned();
        let id = user["id"].as_str().expect("a user id").to_owned();
        self.call(
            reqwest::Method::PUT,
            &format!("/projects/{project_id}/users/{id}/roles/{role}"),
            None,
        );
        Member {
            name,
            id,
            password,
            project_name,
            project_id,
        }
    }

    /// Checks a token as the admin and returns its document.
    fn validate(&self, token: &str) -> Value {
        let url = format!("{}/auth/tokens", self.url);
        self.runtime.block_on(async {
            let response = self
                .http
                .get(&url)
                .header("X-Auth-Token", &self.admin_token)
                .header("X-Subject-Token", token)
                .header("Connection", "close")
                .send()
                .await
                .expect("Keystone answers");
            assert_eq!(response.status().as_u16(), 200, "token does not validate");
            response.json::<Value>().await.expect("JSON")["token"].clone()
        })
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        // Newest first: a region goes after the endpoints in it.
        for path in self.cleanup.iter().rev() {
            let url = format!("{}{path}", self.url);
            let request = self
                .http
                .delete(&url)
                .header("X-Auth-Token", &self.admin_token)
                .header("Connection", "close");
            // send() arms its timeout, so it must run inside the runtime.
            let _ = self.runtime.block_on(async { request.send().await });
        }
    }
}

/// `navigator` run in `dir` (also HOME, so the user's own clouds.yaml stays
/// out) with only the given variables.
fn navigator(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_navigator"));
    command
        .args(args)
        .env_clear()
        .env("HOME", dir.join("home"))
        .current_dir(dir);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the navigator binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `token issue -f json` and checks its shape like `openstack token
/// issue -f json`; returns the parsed object.
fn issue(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = vec!["token", "issue", "-f", "json"];
    args.extend_from_slice(extra);
    let output = navigator(dir, &args, env);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&output.stderr)
    );
    let object: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    let keys: Vec<&String> = object.as_object().expect("an object").keys().collect();
    assert_eq!(keys, ["expires", "id", "project_id", "user_id"], "{object}");
    let expires = object["expires"].as_str().expect("expires");
    assert_eq!(expires.len(), 24, "{expires}");
    assert!(
        expires.ends_with("+0000") && expires.as_bytes()[10] == b'T',
        "{expires}"
    );
    object
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

#[test]
fn token_issue_with_clouds_yaml_and_secure_yaml() {
    let Some(mut keystone) = Keystone::connect() else {
        return;
    };
    let alice = keystone.member();
    let dir = tempfile::tempdir().expect("a temp dir");
    // auth_url without /v3, as many clouds.yaml files have it.
    let root = keystone.url.trim_end_matches("/v3");
    write(
        &dir.path().join("clouds.yaml"),
        &format!(
            "clouds:\n  test:\n    auth:\n      auth_url: {root}\n      username: {}\n      project_name: {}\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    identity_api_version: 3\n",
            alice.name, alice.project_name
        ),
    );
    write(
        &dir.path().join("home/.config/openstack/secure.yaml"),
        &format!(
            "clouds:\n  test:\n    auth:\n      password: {}\n",
            alice.password
        ),
    );
    let token = issue(dir.path(), &["--os-cloud", "test"], &[]);
    assert_eq!(token["project_id"], alice.project_id.as_str());
    assert_eq!(token["user_id"], alice.id.as_str());
    let id = token["id"].as_str().expect("an id");
    assert_eq!(keystone.validate(id)["user"]["name"], alice.name.as_str());

    // The table, as openstack prints it, and OS_CLOUD instead of the flag.
    let output = navigator(dir.path(), &["token", "issue"], &[("OS_CLOUD", "test")]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(table.contains("| Field      | Value"), "{table}");
    for field in ["expires", "id", "project_id", "user_id"] {
        assert!(table.contains(&format!("| {field} ")), "{table}");
    }
}

#[test]
fn token_issue_with_os_variables() {
    let Some(mut keystone) = Keystone::connect() else {
        return;
    };
    let alice = keystone.member();
    let dir = tempfile::tempdir().expect("a temp dir");
    let token = issue(
        dir.path(),
        &[],
        &[
            ("OS_AUTH_URL", &keystone.url),
            ("OS_IDENTITY_API_VERSION", "3"),
            ("OS_USERNAME", &alice.name),
            ("OS_PASSWORD", &alice.password),
            ("OS_PROJECT_NAME", &alice.project_name),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_ID", "default"),
            ("OS_REGION_NAME", "RegionOne"),
            ("OS_INTERFACE", "public"),
        ],
    );
    assert_eq!(token["project_id"], alice.project_id.as_str());

    // By ids, and with the token (OS_TOKEN) rescoped to the project.
    let token = issue(
        dir.path(),
        &[],
        &[
            ("OS_AUTH_URL", &keystone.url),
            ("OS_USER_ID", &alice.id),
            ("OS_PASSWORD", &alice.password),
            ("OS_PROJECT_ID", &alice.project_id),
        ],
    );
    assert_eq!(token["user_id"], alice.id.as_str());
    let first = token["id"].as_str().expect("an id").to_owned();
    let rescoped = issue(
        dir.path(),
        &[],
        &[
            ("OS_AUTH_URL", &keystone.url),
            ("OS_TOKEN", &first),
            ("OS_PROJECT_ID", &alice.project_id),
        ],
    );
    assert_eq!(rescoped["project_id"], alice.project_id.as_str());
    // Without a project the token is only validated, and printed as it is.
    let same = issue(
        dir.path(),
        &["--os-auth-type", "v3token"],
        &[("OS_AUTH_URL", &keystone.url), ("OS_TOKEN", &first)],
    );
    assert_eq!(same["id"], first.as_str());
}

#[test]
fn token_issue_with_an_application_credential() {
    let Some(mut keystone) = Keystone::connect() else {
        return;
    };
    let alice = keystone.member();
    // Application credentials are made by their user, with a token of hers.
    let dir = tempfile::tempdir().expect("a temp dir");
    let login = [
        ("OS_AUTH_URL", keystone.url.as_str()),
        ("OS_USERNAME", &alice.name),
        ("OS_PASSWORD", &alice.password),
        ("OS_PROJECT_NAME", &alice.project_name),
    ];
    let token = issue(dir.path(), &[], &login);
    let credential = keystone.call_as(
        token["id"].as_str().expect("an id"),
        reqwest::Method::POST,
        &format!("/users/{}/application_credentials", alice.id),
        Some(json!({"application_credential": {"name": "nav-cli"}})),
    )["application_credential"]
        .clone();
    let id = credential["id"].as_str().expect("an id");
    let secret = credential["secret"].as_str().expect("a secret");

    let token = issue(
        dir.path(),
        &[],
        &[
            ("OS_AUTH_URL", &keystone.url),
            ("OS_AUTH_TYPE", "v3applicationcredential"),
            ("OS_APPLICATION_CREDENTIAL_ID", id),
            ("OS_APPLICATION_CREDENTIAL_SECRET", secret),
        ],
    );
    assert_eq!(token["project_id"], alice.project_id.as_str());
    assert_eq!(token["user_id"], alice.id.as_str());

    // By name and user, from clouds.yaml.
    write(
        &dir.path().join("clouds.yaml"),
        &format!(
            "clouds:\n  appcred:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {}\n      application_credential_name: nav-cli\n      application_credential_secret: {secret}\n      username: {}\n      user_domain_id: default\n",
            keystone.url, alice.name
        ),
    );
    let token = issue(dir.path(), &[], &[("OS_CLOUD", "appcred")]);
    assert_eq!(token["project_id"], alice.project_id.as_str());

    // A wrong secret is rejected, and the message says whose it was.
    let output = navigator(
        dir.path(),
        &[
            "token",
            "issue",
            "--os-application-credential-secret",
            "not-it-xyz",
        ],
        &[("OS_CLOUD", "appcred")],
    );
    assert_eq!(output.status.code(), Some(1));
    let message = text(&output.stderr);
    assert!(
        message
            .starts_with("Keystone rejected the credentials for application credential 'nav-cli'"),
        "{message}"
    );
    assert!(
        message.contains("--os-application-credential-secret"),
        "{message}"
    );
    assert!(!message.contains("not-it-xyz"), "{message}");
}

#[test]
fn flag_beats_environment_beats_clouds_yaml() {
    let Some(mut keystone) = Keystone::connect() else {
        return;
    };
    let alice = keystone.member();
    let dir = tempfile::tempdir().expect("a temp dir");
    let wrong = "wrong-pw-q7z";
    let env = [
        ("OS_AUTH_URL", keystone.url.as_str()),
        ("OS_USERNAME", &alice.name),
        ("OS_PASSWORD", wrong),
        ("OS_PROJECT_NAME", &alice.project_name),
    ];
    let token = issue(dir.path(), &["--os-password", &alice.password], &env);
    assert_eq!(token["user_id"], alice.id.as_str());

    let output = navigator(dir.path(), &["token", "issue", "--debug"], &env);
    assert_eq!(output.status.code(), Some(1));
    let message = text(&output.stderr);
    assert!(
        message.contains(&format!(
            "Keystone rejected the credentials for user '{}'",
            alice.name
        )),
        "{message}"
    );
    assert!(
        message.contains("(HTTP 401): The request you have made requires authentication."),
        "{message}"
    );
    assert!(
        message.contains("the password came from OS_PASSWORD"),
        "{message}"
    );
    assert!(!message.contains(wrong), "{message}");
    assert!(text(&output.stdout).is_empty());

    // openstackclient's rule: OS_PASSWORD wins over clouds.yaml too.
    write(
        &dir.path().join("home/.config/openstack/clouds.yaml"),
        &format!(
            "clouds:\n  test:\n    auth:\n      auth_url: {}\n      username: {}\n      password: {}\n      project_name: {}\n",
            keystone.url, alice.name, alice.password, alice.project_name
        ),
    );
    issue(dir.path(), &[], &[("OS_CLOUD", "test")]);
    let output = navigator(
        dir.path(),
        &["token", "issue"],
        &[("OS_CLOUD", "test"), ("OS_PASSWORD", wrong)],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("the password came from OS_PASSWORD"),
        "{}",
        text(&output.stderr)
    );
}

/// A one-shot HTTP server: answers one request with `{"forwards": []}` and
/// returns the request's head.
fn one_response_server() -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("a connection");
        let mut reader = BufReader::new(stream.try_clone().expect("a clone"));
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).expect("a line") == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let body = r#"{"forwards": []}"#;
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("an answer");
        head
    });
    (url, handle)
}

/// The value of `name` in a request head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

#[test]
fn navigator_is_found_in_the_catalog() {
    let Some(mut keystone) = Keystone::connect() else {
        return;
    };
    let alice = keystone.member();
    // A region of this test's own, so that other services of the same type
    // (another test's, or a real registration) cannot be picked.
    let region = format!("nav-{}", alice.project_name);
    keystone.post(
        "/regions",
        json!({"region": {"id": region, "description": "navigator CLI test"}}),
        "region",
    );
    let service = keystone.post(
        "/services",
        json!({"service": {"name": "navigator", "type": "port-forwarding", "enabled": true}}),
        "service",
    );
    let service_id = service["id"].as_str().expect("a service id").to_owned();
    let (url, server) = one_response_server();
    for (interface, target) in [("internal", url.as_str()), ("public", "http://127.0.0.1:1")] {
        keystone.post(
            "/endpoints",
            json!({"endpoint": {"service_id": service_id, "interface": interface,
                "region_id": region, "url": target}}),
            "endpoint",
        );
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let env = [
        ("OS_AUTH_URL", keystone.url.as_str()),
        ("OS_USERNAME", &alice.name),
        ("OS_PASSWORD", &alice.password),
        ("OS_PROJECT_NAME", &alice.project_name),
        ("OS_REGION_NAME", &region),
    ];
    let output = navigator(
        dir.path(),
        &[
            "forward",
            "list",
            "--os-interface",
            "internal",
            "-f",
            "json",
        ],
        &env,
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "[]\n");
    let head = server.join().expect("the server thread");
    assert!(head.starts_with("GET /v1/forwards"), "{head}");
    let token = header(&head, "X-Auth-Token").expect("a token was sent");
    let document = keystone.validate(&token);
    assert_eq!(document["project"]["id"], alice.project_id.as_str());

    // With --os-endpoint and a token no Keystone is asked: the auth URL
    // here goes nowhere.
    let (url, server) = one_response_server();
    let output = navigator(
        dir.path(),
        &["forward", "list", "--os-endpoint", &url],
        &[
            ("OS_AUTH_URL", "http://127.0.0.1:1/v3"),
            ("OS_TOKEN", &token),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let head = server.join().expect("the server thread");
    assert_eq!(
        header(&head, "X-Auth-Token").as_deref(),
        Some(token.as_str())
    );

    // A region without Navigator: the message says what to do.
    let output = navigator(
        dir.path(),
        &["forward", "list", "--os-region-name", "RegionNowhere"],
        &env,
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr).trim(),
        "the service catalog has no 'port-forwarding' endpoint for interface public in region RegionNowhere: register it with `navigator-server keystone register` or pass --os-endpoint"
    );
}
