//! The dashboard's login and sessions over real sockets (the per-address cap
//! needs the TCP peer): the login form's token cannot be chosen by the
//! client, and a flood of logins never locks a real user out nor grows the
//! session table past its caps. noauth on loopback makes logins cheap, which
//! is what a flood would use.

use std::net::SocketAddr;

use navigator_server::config::Config;

#[path = "support/stack.rs"]
mod stack;
#[path = "support/wire.rs"]
mod wire;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// The value `name` is set to by the answer's `Set-Cookie` headers.
fn set_cookie(answer: &wire::Answer, name: &str) -> Option<String> {
    answer
        .header_values("set-cookie")
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{name}="))?.split(';').next())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A login form's token, as a browser gets it with the page.
async fn login_token(addr: SocketAddr) -> String {
    let page = wire::send(addr, "GET", "/dashboard/login", Some("127.0.0.1"), &[], b"").await;
    assert_eq!(page.status, 200, "{page:?}");
    let token = set_cookie(&page, "navigator_login").expect("a login cookie");
    assert!(
        page.body.contains(&format!("value=\"{token}\"")),
        "the form carries the cookie's token"
    );
    token
}

/// Logs in to `project` with `cookie` as the login cookie and `token` in the
/// form; the session id, or the answer when no session was made.
async fn login(
    addr: SocketAddr,
    cookie: &str,
    token: &str,
    project: &str,
) -> Result<String, wire::Answer> {
    let cookie = format!("navigator_login={cookie}");
    let body = format!("csrf_token={token}&project={project}");
    let answer = wire::send(
        addr,
        "POST",
        "/dashboard/login",
        Some("127.0.0.1"),
        &[("Cookie", &cookie), FORM],
        body.as_bytes(),
    )
    .await;
    match set_cookie(&answer, "navigator_session") {
        Some(sid) if answer.status == 303 => Ok(sid),
        _ => Err(answer),
    }
}

/// Whether session `sid` still opens the forwards page.
async fn works(addr: SocketAddr, sid: &str) -> bool {
    let cookie = format!("navigator_session={sid}");
    let answer = wire::send(
        addr,
        "GET",
        "/dashboard",
        Some("127.0.0.1"),
        &[("Cookie", &cookie)],
        b"",
    )
    .await;
    match answer.status {
        200 => true,
        303 => false,
        other => panic!("GET /dashboard answered {other}: {answer:?}"),
    }
}

async fn server(port_first: u16, extra: &str) -> (stack::Stack, SocketAddr) {
    let text = format!(
        "[agent]\nport_range = {port_first}-{}\n{extra}",
        port_first + 49
    );
    let stack = stack::start(Config::parse("test.conf", &text).unwrap()).await;
    let addr = wire::serve(stack.app.clone()).await;
    (stack, addr)
}

#[tokio::test]
async fn the_login_token_cannot_be_chosen_by_the_client() {
    let (_stack, addr) = server(28200, "").await;
    // The flood of issue #11: a self-chosen cookie and the same value in
    // the form.
    for chosen in ["x", &"0".repeat(112), &"a".repeat(64)] {
        let answer = login(addr, chosen, chosen, "p1").await.unwrap_err();
        assert_eq!(answer.status, 403, "{chosen}: {answer:?}");
    }
    let token = login_token(addr).await;
    // A real token with another cookie, or in the cookie only.
    assert_eq!(
        login(addr, "x", &token, "p1").await.unwrap_err().status,
        403
    );
    assert_eq!(
        login(addr, &token, "x", "p1").await.unwrap_err().status,
        403
    );
    let sid = login(addr, &token, &token, "p1").await.unwrap();
    assert!(works(addr, &sid).await);
}

#[tokio::test]
async fn a_login_flood_never_locks_out_a_real_user_and_stays_bounded() {
    // No rate limit: the session caps must hold on their own against one
    // address sending logins as fast as it can (the limit is tested in
    // limits.rs).
    let (_stack, addr) = server(
        28250,
        "[dashboard]\nmax_sessions_per_address = 100\n[api]\nrate_limit = 0\n",
    )
    .await;
    // One token serves the whole flood: it is not a session, only proof
    // that the form came from this server.
    let token = login_token(addr).await;
    let mut flood = Vec::new();
    for i in 0..300 {
        flood.push(
            login(addr, &token, &token, &format!("flood{i}"))
                .await
                .unwrap(),
        );
        if i % 50 == 49 {
            let fresh = login_token(addr).await;
            let sid = login(addr, &fresh, &fresh, "real").await.unwrap();
            assert!(
                works(addr, &sid).await,
                "a real user logs in during the flood"
            );
        }
    }
    // Bounded: 300 logins from one address keep only its last 100 sessions
    // (the real user's logins were among them, from the same loopback).
    let mut alive = 0;
    for sid in &flood {
        alive += usize::from(works(addr, sid).await);
    }
    assert!(alive <= 100, "{alive} of 300 flood sessions still open");
    assert!(works(addr, &flood[299]).await, "the newest stands");
    assert!(!works(addr, &flood[0]).await, "the oldest went first");
    let fresh = login_token(addr).await;
    let sid = login(addr, &fresh, &fresh, "real").await.unwrap();
    assert!(works(addr, &sid).await, "and after it");
}

#[tokio::test]
async fn one_user_keeps_at_most_ten_sessions() {
    let (_stack, addr) = server(28300, "").await;
    let token = login_token(addr).await;
    let mut sessions = Vec::new();
    for _ in 0..15 {
        sessions.push(login(addr, &token, &token, "same").await.unwrap());
    }
    for (i, sid) in sessions.iter().enumerate() {
        assert_eq!(works(addr, sid).await, i >= 5, "session {i}");
    }
}

/// A forward's page shows its usage, or why there is none (this branch's
/// relay counts nothing; the counters' rendering is `html::tests`).
#[tokio::test]
async fn a_forwards_page_shows_its_usage_or_why_not() {
    let (_stack, addr) = server(29270, "").await;
    let created = wire::send(
        addr,
        "POST",
        "/v1/forwards",
        Some("127.0.0.1"),
        &[
            ("X-Project-Id", "p1"),
            ("Content-Type", "application/json"),
        ],
        br#"{"forward": {"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": 9}}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.json()["forward"]["id"].as_str().unwrap().to_owned();
    let token = login_token(addr).await;
    let sid = login(addr, &token, &token, "p1").await.unwrap();
    let cookie = format!("navigator_session={sid}");
    let page = wire::send(
        addr,
        "GET",
        &format!("/dashboard/forwards/{id}/edit"),
        Some("127.0.0.1"),
        &[("Cookie", &cookie)],
        b"",
    )
    .await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("<h2>Usage</h2>"), "{}", page.body);
    assert!(
        page.body.contains("data-usage>")
            || page
                .body
                .contains("No usage: the relay backend does not count usage."),
        "{}",
        page.body
    );
}

/// The forwards page shows the project's quota use, read through the API,
/// and marks a resource at its limit.
#[tokio::test]
async fn the_forwards_page_shows_the_quota_use() {
    let (stack, addr) = server(25900, "[quotas]\nforwards = 2\n").await;
    let token = login_token(addr).await;
    let sid = login(addr, &token, &token, "qp").await.unwrap();
    let page = |sid: String| async move {
        let cookie = format!("navigator_session={sid}");
        let answer = wire::send(
            addr,
            "GET",
            "/dashboard",
            Some("127.0.0.1"),
            &[("Cookie", &cookie)],
            b"",
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    };
    let body = page(sid.clone()).await;
    assert!(
        body.contains("<span data-quota-forwards>0 of 2 forwards</span>, <span data-quota-ports>0 of 1000 ports</span>"),
        "{body}"
    );
    for port in [20001, 20002] {
        stack
            .control
            .store()
            .create_forward(&navigator_store::NewForwardRow {
                project_id: "qp".into(),
                description: String::new(),
                protocol: navigator_core::Protocol::Tcp,
                external_address: "127.0.0.1".parse().unwrap(),
                external_port: port,
                ports: 1,
                internal_ip_address: "127.0.0.1".parse().unwrap(),
                internal_port: 9,
                internal_port_end: 9,
                instance_id: None,
                controls: Default::default(),
                proxy: "proxy-1".into(),
            })
            .await
            .unwrap();
    }
    let body = page(sid).await;
    assert!(
        body.contains("<span data-quota-forwards class=\"full\">2 of 2 forwards</span>"),
        "{body}"
    );
    assert!(
        body.contains("at the limit: new forwards are refused"),
        "{body}"
    );
}

/// The create form carries the three traffic controls to the API, the edit
/// page shows them and its form changes them; a bad CIDR is named next to
/// its field.
#[tokio::test]
async fn the_forms_set_and_show_the_traffic_controls() {
    let (_stack, addr) = server(28650, "").await;
    let token = login_token(addr).await;
    let sid = login(addr, &token, &token, "p1").await.unwrap();
    let cookie = format!("navigator_session={sid}");
    let page = wire::send(
        addr,
        "GET",
        "/dashboard",
        Some("127.0.0.1"),
        &[("Cookie", &cookie)],
        b"",
    )
    .await;
    assert!(page.body.contains("name=\"allowed_cidrs\""), "{page:?}");
    let csrf = page
        .body
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf token in the page")
        .to_owned();
    let post = |path: String, fields: Vec<(&'static str, &'static str)>| {
        let csrf = csrf.clone();
        let cookie = cookie.clone();
        async move {
            let body: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("csrf_token", &csrf)
                .extend_pairs(fields)
                .finish();
            wire::send(
                addr,
                "POST",
                &path,
                Some("127.0.0.1"),
                &[("Cookie", &cookie), FORM],
                body.as_bytes(),
            )
            .await
        }
    };
    let base = vec![
        ("protocol", "tcp"),
        ("internal_ip_address", "127.0.0.1"),
        ("internal_port", "9"),
    ];
    let mut bad = base.clone();
    bad.push(("allowed_cidrs", "10.0.0.1/8"));
    let answer = post("/dashboard/forwards".into(), bad).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.body.contains("data-field-error=\"allowed_cidrs\"")
            && answer.body.contains("did you mean 10.0.0.0/8?"),
        "{answer:?}"
    );
    let mut good = base.clone();
    good.extend([
        ("allowed_cidrs", "192.0.2.0/24, 127.0.0.0/8"),
        ("max_connections", "25"),
        ("proxy_protocol", "v2"),
    ]);
    let answer = post("/dashboard/forwards".into(), good).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let forwards = _stack
        .control
        .store()
        .list_forwards(
            &navigator_store::ForwardFilter {
                project_id: Some("p1".into()),
                ..Default::default()
            },
            &navigator_store::ForwardOrder {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(forwards.len(), 1);
    let id = forwards[0].id.to_string();
    let edit = wire::send(
        addr,
        "GET",
        &format!("/dashboard/forwards/{id}/edit"),
        Some("127.0.0.1"),
        &[("Cookie", &cookie)],
        b"",
    )
    .await;
    assert!(
        edit.body
            .contains("<dd data-allowed-cidrs>127.0.0.0/8, 192.0.2.0/24</dd>")
            && edit.body.contains("<dd data-max-connections>25</dd>")
            && edit.body.contains("<option value=\"v2\" selected>"),
        "{edit:?}"
    );
    // The edit form sends every control: emptied fields clear them.
    let answer = post(
        format!("/dashboard/forwards/{id}"),
        vec![
            ("internal_ip_address", "127.0.0.1"),
            ("internal_port", "9"),
            ("description", ""),
            ("allowed_cidrs", ""),
            ("max_connections", ""),
            ("proxy_protocol", "none"),
        ],
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let forward = _stack
        .control
        .store()
        .get_forward(forwards[0].id)
        .await
        .unwrap()
        .unwrap();
    assert!(forward.controls.is_default(), "{:?}", forward.controls);
}
