//! The built-in `/dashboard` page in a real browser (headless Chromium via
//! `tests/browser/dashboard.mjs`) against the real `navigator-server`: with
//! `auth_strategy = keystone` and the test Keystone (a project and a member
//! per test, plus a second project's member), and with noauth on loopback.
//!
//! The browser does what a user does; at checkpoints this side checks what a
//! browser cannot: traffic through the forward (TCP echo servers that tag
//! their replies), that forged POSTs (no CSRF token, foreign Origin) are
//! refused, and that a logged-out session cookie no longer works.
//!
//! Without node/Chromium/playwright-core, or without the test Keystone for
//! the Keystone journey, a test panics under `CI` and prints `skipped:`
//! otherwise.

use std::time::Duration;

use navigator_e2e::browser::{Browser, Verdict};
use navigator_e2e::{
    Auth, Env, HttpResponse, Server, TcpEcho, eventually, raw_http, tcp_round_trip,
};
use serde_json::{Value, json};

/// The test Keystone's URL (`.../v3`) and admin password, or `None` after
/// saying why (a panic under `CI`).
fn keystone_env() -> Option<(String, String, String, String)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        var("NAVIGATOR_TEST_KEYSTONE_URL"),
        var("NAVIGATOR_TEST_ADMIN_PASSWORD"),
        var("NAVIGATOR_TEST_SERVICE_USER"),
        var("NAVIGATOR_TEST_SERVICE_PASSWORD"),
    ) {
        (Some(url), Some(admin), Some(user), Some(password)) => Some((url, admin, user, password)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("the dashboard's Keystone journey needs scripts/keystone (run scripts/test-all)")
        }
        _ => {
            eprintln!(
                "\n*** skipped: NAVIGATOR_TEST_KEYSTONE_URL is not set; the dashboard's Keystone \
                 journey needs a test Keystone (scripts/keystone start DIR; source DIR/env)\n"
            );
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// Keystone's admin API over plain HTTP on loopback, one connection per
/// request (`Connection: close`, as Keystone under uwsgi needs).
struct KeystoneAdmin {
    authority: String,
    base_path: String,
    token: String,
}

impl KeystoneAdmin {
    fn connect(url: &str, admin_password: &str) -> KeystoneAdmin {
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the test Keystone must be http:// on loopback: {url}"));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, "v3"));
        let mut admin = KeystoneAdmin {
            authority: authority.to_owned(),
            base_path: format!("/{}", path.trim_end_matches('/')),
            token: String::new(),
        };
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": admin_password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}});
        let response = admin.request("POST", "/auth/tokens?nocatalog", Some(&body));
        assert_eq!(response.status, 201, "admin login: {}", response.body);
        admin.token = response
            .header("x-subject-token")
            .expect("X-Subject-Token")
            .to_owned();
        admin
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
        let text = body.map(Value::to_string).unwrap_or_default();
        let mut headers = vec![("Content-Type", "application/json")];
        if !self.token.is_empty() {
            headers.push(("X-Auth-Token", &self.token));
        }
        raw_http(
            &self.authority,
            method,
            &format!("{}{path}", self.base_path),
            &headers,
            text.as_bytes(),
        )
    }

    fn create(&self, path: &str, body: &Value, field: &str) -> String {
        let response = self.request("POST", path, Some(body));
        assert_eq!(response.status, 201, "POST {path}: {}", response.body);
        response.json()[field]["id"]
            .as_str()
            .expect("an id")
            .to_owned()
    }

    /// A new project with a new user holding `role` on it: (project name,
    /// user name, password, user id).
    fn project_with_user(&self, prefix: &str, role: &str) -> (String, String, String, String) {
        let project = unique(&format!("{prefix}-project"));
        let user = unique(&format!("{prefix}-{role}"));
        let password = unique("pw");
        let project_id = self.create(
            "/projects",
            &json!({"project": {"name": project, "domain_id": "default"}}),
            "project",
        );
        let user_id = self.create(
            "/users",
            &json!({"user": {"name": user, "domain_id": "default", "password": password}}),
            "user",
        );
        let roles = self.request("GET", &format!("/roles?name={role}"), None);
        let role = roles.json()["roles"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no role {role}"))
            .to_owned();
        let grant = self.request(
            "PUT",
            &format!("/projects/{project_id}/users/{user_id}/roles/{role}"),
            None,
        );
        assert_eq!(grant.status, 204, "grant: {}", grant.body);
        (project, user, password, user_id)
    }

    /// Disables a user: Keystone then refuses every token of theirs.
    fn disable_user(&self, user_id: &str) -> Verdict {
        let response = self.request(
            "PATCH",
            &format!("/users/{user_id}"),
            Some(&json!({"user": {"enabled": false}})),
        );
        if response.status == 200 {
            Ok(Value::Null)
        } else {
            Err(format!(
                "disabling {user_id}: {} {}",
                response.status, response.body
            ))
        }
    }
}

fn data_port(data: &Value) -> (String, u16) {
    let address = data["address"].as_str().unwrap_or("127.0.0.1").to_owned();
    let port = data["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("checkpoint without a port: {data}"));
    (address, port)
}

fn expect_reply(address: &str, port: u16, expected: &str) -> Verdict {
    let reply = eventually(
        &format!("a reply via {address}:{port}"),
        Duration::from_secs(10),
        || tcp_round_trip(address, port, "ping"),
    );
    if reply == expected {
        Ok(Value::Null)
    } else {
        Err(format!(
            "{address}:{port} answered {reply:?}, expected {expected:?}"
        ))
    }
}

/// POSTs a form to the dashboard as a forger would: the victim's cookie but
/// not the page's token, or the token from a foreign Origin.
fn forged_posts(server: &Server, data: &Value) -> Verdict {
    let id = data["id"].as_str().ok_or("no id")?;
    let cookie = data["cookie"].as_str().ok_or("no cookie")?;
    let csrf = data["csrf"].as_str().ok_or("no csrf")?;
    let path = format!("/dashboard/forwards/{id}/delete");
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let without = server.http("POST", &path, &[("Cookie", cookie), form], b"");
    if without.status != 403 {
        return Err(format!(
            "a POST without the CSRF token got {}",
            without.status
        ));
    }
    let wrong = server.http(
        "POST",
        &path,
        &[("Cookie", cookie), form],
        b"csrf_token=0000",
    );
    if wrong.status != 403 {
        return Err(format!(
            "a POST with a wrong CSRF token got {}",
            wrong.status
        ));
    }
    let body = format!("csrf_token={csrf}");
    let foreign = server.http(
        "POST",
        &path,
        &[
            ("Cookie", cookie),
            form,
            ("Origin", "http://attacker.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        body.as_bytes(),
    );
    if foreign.status != 403 {
        return Err(format!("a cross-site POST got {}", foreign.status));
    }
    // The session's own page, fetched with the cookie, still lists it.
    let page = server.http("GET", "/dashboard", &[("Cookie", cookie)], b"");
    if page.status != 200 || !page.body.contains(id) {
        return Err(format!(
            "after the forged POSTs the page is {}",
            page.status
        ));
    }
    Ok(Value::Null)
}

fn logged_out(server: &Server, data: &Value) -> Verdict {
    let cookie = data["cookie"].as_str().ok_or("no cookie")?;
    let page = server.http("GET", "/dashboard", &[("Cookie", cookie)], b"");
    match (page.status, page.header("location")) {
        (303, Some("/dashboard/login")) => Ok(Value::Null),
        (status, location) => Err(format!(
            "the old session cookie still works after logout: {status} {location:?}"
        )),
    }
}

/// Runs the browser journey; `disable_user` (Keystone only) makes Keystone
/// refuse the first user's tokens.
fn journey(
    browser: &Browser,
    server: &Server,
    env: Vec<(&str, String)>,
    disable_user: Option<&dyn Fn() -> Verdict>,
) {
    let one = TcpEcho::start("127.0.0.1", "ONE:");
    let two = TcpEcho::start("127.0.0.1", "TWO:");
    let mut vars = env;
    vars.extend([
        ("NAVIGATOR_URL", server.url.clone()),
        ("ECHO_IP", "127.0.0.1".to_owned()),
        ("ECHO_PORT1", one.port()),
        ("ECHO_PORT2", two.port()),
    ]);
    let result = browser.run("dashboard.mjs", &vars, |name, data| match name {
        "forward-active" => {
            let (address, port) = data_port(data);
            expect_reply(&address, port, "ONE:ping")
        }
        "retargeted" => {
            let (address, port) = data_port(data);
            expect_reply(&address, port, "TWO:ping")
        }
        "csrf" => forged_posts(server, data),
        "deleted" => {
            let (address, port) = data_port(data);
            match tcp_round_trip(&address, port, "ping") {
                Err(_) => Ok(Value::Null),
                Ok(reply) => Err(format!("{address}:{port} still answers: {reply}")),
            }
        }
        "logged-out" => logged_out(server, data),
        "disable-user" => {
            disable_user.map_or_else(|| Err("not a Keystone journey".into()), |f| f())
        }
        other => Err(format!("unknown checkpoint {other}")),
    });
    // The server's log follows when it is dropped during the panic.
    if let Err(message) = result {
        panic!("{message}");
    }
}

#[test]
fn dashboard_journey_with_keystone() {
    let Some(browser) = Browser::find("dashboard_journey_with_keystone") else {
        return;
    };
    let Some((url, admin_password, service_user, service_password)) = keystone_env() else {
        return;
    };
    let admin = KeystoneAdmin::connect(&url, &admin_password);
    let (project1, user1, password1, user1_id) = admin.project_with_user("dash-a", "member");
    let (project2, user2, password2, _) = admin.project_with_user("dash-b", "member");
    let (project3, user3, password3, _) = admin.project_with_user("dash-c", "admin");
    let env = Env::new(
        "dashboard-keystone",
        // The harness adds no auth; this test configures Keystone itself.
        &Auth::Noauth,
        &format!(
            "[DEFAULT]\nauth_strategy = keystone\n\n[keystone_authtoken]\n\
             www_authenticate_uri = {url}\nauth_url = {url}\nauth_type = password\n\
             username = {service_user}\npassword = {service_password}\nproject_name = service\n\
             user_domain_name = Default\nproject_domain_name = Default\n\
             token_cache_time = 0\n"
        ),
    );
    let server = env.start();
    journey(
        &browser,
        &server,
        vec![
            ("DASHBOARD_MODE", "keystone".into()),
            ("DASHBOARD_USER1", user1),
            ("DASHBOARD_PASSWORD1", password1),
            ("DASHBOARD_PROJECT1", project1),
            ("DASHBOARD_USER2", user2),
            ("DASHBOARD_PASSWORD2", password2),
            ("DASHBOARD_PROJECT2", project2),
            ("DASHBOARD_ADMIN_USER", user3),
            ("DASHBOARD_ADMIN_PASSWORD", password3),
            ("DASHBOARD_ADMIN_PROJECT", project3),
            ("DASHBOARD_DOMAIN", "Default".into()),
        ],
        Some(&|| admin.disable_user(&user1_id)),
    );
}

#[test]
fn dashboard_journey_with_noauth_on_loopback() {
    let Some(browser) = Browser::find("dashboard_journey_with_noauth_on_loopback") else {
        return;
    };
    let env = Env::new("dashboard-noauth", &Auth::Noauth, "");
    let server = env.start();
    journey(
        &browser,
        &server,
        vec![
            ("DASHBOARD_MODE", "noauth".into()),
            ("DASHBOARD_PROJECT1", unique("dash-a")),
            ("DASHBOARD_PROJECT2", unique("dash-b")),
        ],
        None,
    );
}

/// With Keystone unreachable the login page says so (503), in words, with
/// no session made and no internals shown. No browser needed: the login
/// form is posted as a browser would, with its pre-login token.
#[test]
fn dashboard_login_says_when_keystone_is_down() {
    // Nothing listens on a port we bound and closed again.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}/v3", dead.local_addr().expect("addr"));
    drop(dead);
    let env = Env::new(
        "dashboard-keystone-down",
        // The harness adds no auth; this test configures Keystone itself.
        &Auth::Noauth,
        &format!(
            "[DEFAULT]\nauth_strategy = keystone\n\n[keystone_authtoken]\n\
             www_authenticate_uri = {dead_url}\nauth_url = {dead_url}\nauth_type = password\n\
             username = navigator\npassword = secret\nproject_name = service\n\
             user_domain_name = Default\nproject_domain_name = Default\n"
        ),
    );
    let server = env.start();
    let page = server.http("GET", "/dashboard/login", &[], b"");
    assert_eq!(page.status, 200, "{}", page.body);
    let cookie = page
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a pre-login cookie")
        .to_owned();
    let token = cookie.split_once('=').expect("name=value").1.to_owned();
    assert!(
        page.body
            .contains(&format!("name=\"csrf_token\" value=\"{token}\"")),
        "the form carries the cookie's token"
    );
    let form = format!("csrf_token={token}&username=alice&password=pw&project=demo&domain=Default");
    let authority = server.url.trim_start_matches("http://").to_owned();
    let origin = format!("http://{authority}");
    let answer = server.http(
        "POST",
        "/dashboard/login",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", &origin),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        form.as_bytes(),
    );
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer
            .body
            .contains("The identity service (Keystone) cannot be reached"),
        "{}",
        answer.body
    );
    assert!(
        !answer.body.contains("navigator_session") && !answer.body.contains("panicked"),
        "{}",
        answer.body
    );
    assert!(
        !answer
            .headers
            .iter()
            .any(|(k, v)| k == "set-cookie" && v.starts_with("navigator_session=")),
        "no session without a login"
    );
}
