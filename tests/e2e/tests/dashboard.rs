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

use navigator_e2e::auth::unique;
use navigator_e2e::browser::{Browser, Verdict};
use navigator_e2e::{
    Auth, Env, KeystoneProject, KeystoneSettings, Server, TcpEcho, eventually, tcp_round_trip,
};
use serde_json::Value;

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
    let Some(keystone) = KeystoneSettings::from_env("dashboard_journey_with_keystone") else {
        return;
    };
    let one = KeystoneProject::create(keystone.clone(), "dash-a");
    let two = KeystoneProject::create(keystone.clone(), "dash-b");
    let admin = KeystoneProject::with_role(keystone.clone(), "dash-c", "admin");
    let KeystoneSettings {
        url,
        service_user,
        service_password,
        ..
    } = &keystone;
    let env = Env::new(
        "dashboard-keystone",
        // The harness adds no auth; this test configures Keystone itself.
        &Auth::Noauth,
        &format!(
            "[DEFAULT]\nauth_strategy = keystone\n\n[keystone_authtoken]\n\
             www_authenticate_uri = {url}\nauth_url = {url}\nauth_type = password\n\
             username = {service_user}\npassword = {service_password}\nproject_name = service\n\
             user_domain_name = Default\nproject_domain_name = Default\n\
             token_cache_time = 0\n\
             [forwards]\n# The echo servers are on loopback; Keystone mode refuses it by default.\n\
             allow_loopback_targets = true\n"
        ),
    );
    let server = env.start();
    journey(
        &browser,
        &server,
        vec![
            ("DASHBOARD_MODE", "keystone".into()),
            ("DASHBOARD_USER1", one.user_name.clone()),
            ("DASHBOARD_PASSWORD1", one.password.clone()),
            ("DASHBOARD_PROJECT1", one.project_name.clone()),
            ("DASHBOARD_USER2", two.user_name.clone()),
            ("DASHBOARD_PASSWORD2", two.password.clone()),
            ("DASHBOARD_PROJECT2", two.project_name.clone()),
            ("DASHBOARD_ADMIN_USER", admin.user_name.clone()),
            ("DASHBOARD_ADMIN_PASSWORD", admin.password.clone()),
            ("DASHBOARD_ADMIN_PROJECT", admin.project_name.clone()),
            ("DASHBOARD_DOMAIN", "Default".into()),
        ],
        Some(&|| one.disable_user().map(|()| Value::Null)),
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
