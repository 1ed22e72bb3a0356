//! The REST API with `auth_strategy = keystone` against a real Keystone
//! (`scripts/keystone start DIR`, then `source DIR/env`): identity from
//! validated tokens, default policy, project isolation, expiry, revocation,
//! and a Keystone that goes away. Each test makes its own projects and users.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use navigator_server::auth::Auth;
use navigator_server::config::Config;
use navigator_server::control::Control;
use navigator_store::{ForwardFilter, ForwardOrder, SortColumn};
use serde_json::{Value, json};
use support::keystone_admin::{self as ks, Admin, Env};
use tokio::net::TcpListener;
use tower::ServiceExt;

struct Harness {
    app: axum::Router,
    control: Arc<Control>,
    auth: Arc<Auth>,
    _stack: support::stack::Stack,
}

struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// A keystone configuration for `auth_url` with this test's port pool.
fn config(env: &Env, auth_url: &str, cache_time: u64, port_first: u16) -> Config {
    let text = format!(
        "[DEFAULT]\nauth_strategy = keystone\n\
         [keystone_authtoken]\nwww_authenticate_uri = {}\nauth_url = {auth_url}\nauth_type = password\n\
         username = {}\npassword = {}\nproject_name = service\n\
         user_domain_name = Default\nproject_domain_name = Default\ntoken_cache_time = {cache_time}\n\
         [agent]\nport_range = {port_first}-{}\n\
         [forwards]\n# The tests' targets are on loopback, refused by default under Keystone.\n\
         allow_loopback_targets = true\n",
        env.url,
        env.service_user,
        env.service_password,
        port_first + 19
    );
    Config::parse("keystone-test.conf", &text).unwrap()
}

async fn harness(config: Config) -> Harness {
    let stack = support::stack::start(config).await;
    Harness {
        app: stack.app.clone(),
        control: stack.control.clone(),
        auth: stack.auth.clone(),
        _stack: stack,
    }
}

impl Harness {
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("X-Auth-Token", token);
        }
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let request = request
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Response {
            status,
            headers,
            body,
        }
    }

    async fn create(&self, token: &str, port: u16) -> Response {
        self.send(
            "POST",
            "/v1/forwards",
            Some(token),
            Some(json!({"forward": {"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": port}})),
        )
        .await
    }

    /// Every forward in the store, whatever the API says.
    async fn stored(&self) -> usize {
        let order = ForwardOrder {
            column: SortColumn::CreatedAt,
            descending: false,
            limit: 1000,
            marker: None,
        };
        self.control
            .store()
            .list_forwards(&ForwardFilter::default(), &order)
            .await
            .unwrap()
            .len()
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["forwards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_401(response: &Response, env: &Env) {
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        response.body
    );
    assert_eq!(
        response.headers["www-authenticate"].to_str().unwrap(),
        format!("Keystone uri=\"{}\"", env.url)
    );
    assert_eq!(response.body["error"]["code"], 401);
}

#[tokio::test]
async fn projects_are_isolated_readers_read_and_admins_see_all() {
    let Some(env) = ks::env() else { return };
    let admin = Admin::connect(&env).await;
    let a = admin.project(&ks::unique("nav-a")).await;
    let b = admin.project(&ks::unique("nav-b")).await;
    let (_, member_a) = admin.user_with_role(&a, "member").await;
    let (_, member_b) = admin.user_with_role(&b, "member").await;
    let (_, reader_a) = admin.user_with_role(&a, "reader").await;
    let (_, admin_a) = admin.user_with_role(&a, "admin").await;
    let h = harness(config(&env, &env.url, 300, 28100)).await;

    let created = h.create(&member_a.token, 7001).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["forward"]["project_id"], a.as_str());
    let fwd_a = created.body["forward"]["id"].as_str().unwrap().to_owned();
    let created = h.create(&member_b.token, 7002).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["forward"]["project_id"], b.as_str());
    let fwd_b = created.body["forward"]["id"].as_str().unwrap().to_owned();

    // The project comes from the token; a body naming one is refused.
    let r = h
        .send(
            "POST",
            "/v1/forwards",
            Some(&member_a.token),
            Some(json!({"forward": {"protocol": "tcp", "internal_ip_address": "127.0.0.1", "internal_port": 7003, "project_id": b}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(h.stored().await, 2);

    // Member of A: B's forward does not exist, whatever the verb.
    let path_b = format!("/v1/forwards/{fwd_b}");
    for (method, body) in [
        ("GET", None),
        ("PUT", Some(json!({"forward": {"description": "mine now"}}))),
        ("DELETE", None),
    ] {
        let r = h.send(method, &path_b, Some(&member_a.token), body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method}: {}", r.body);
        assert_eq!(
            r.body["error"]["message"],
            format!("forward {fwd_b} not found")
        );
    }
    let list = h
        .send("GET", "/v1/forwards", Some(&member_a.token), None)
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(ids(&list.body), [fwd_a.as_str()]);
    let r = h
        .send(
            "GET",
            "/v1/forwards?all_projects=true",
            Some(&member_a.token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = h
        .send("GET", "/v1/proxies", Some(&member_a.token), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // Reader of A: may look, not touch; B's forward still does not exist.
    let path_a = format!("/v1/forwards/{fwd_a}");
    let list = h
        .send("GET", "/v1/forwards", Some(&reader_a.token), None)
        .await;
    assert_eq!(ids(&list.body), [fwd_a.as_str()]);
    let r = h.send("GET", &path_a, Some(&reader_a.token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h.create(&reader_a.token, 7004).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = h
        .send(
            "PUT",
            &path_a,
            Some(&reader_a.token),
            Some(json!({"forward": {"description": "x"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = h.send("DELETE", &path_a, Some(&reader_a.token), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = h.send("GET", &path_b, Some(&reader_a.token), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(h.stored().await, 2);

    // Admin (of A): every project, and the proxies.
    let list = h
        .send(
            "GET",
            "/v1/forwards?all_projects=true",
            Some(&admin_a.token),
            None,
        )
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let mut all = ids(&list.body);
    all.sort();
    let mut expected = vec![fwd_a.clone(), fwd_b.clone()];
    expected.sort();
    assert_eq!(all, expected);
    let r = h.send("GET", &path_b, Some(&admin_a.token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h
        .send("GET", "/v1/proxies", Some(&admin_a.token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Members change their own project's forwards.
    let r = h
        .send(
            "PUT",
            &path_a,
            Some(&member_a.token),
            Some(json!({"forward": {"description": "ok"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h.send("DELETE", &path_a, Some(&member_a.token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.send("DELETE", &path_b, Some(&admin_a.token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(h.stored().await, 0);
}

#[tokio::test]
async fn missing_and_garbage_tokens_are_401_with_www_authenticate() {
    let Some(env) = ks::env() else { return };
    let h = harness(config(&env, &env.url, 300, 28200)).await;
    let r = h.send("GET", "/v1/forwards", None, None).await;
    assert_401(&r, &env);
    let r = h.send("GET", "/v1/forwards", Some("garbage"), None).await;
    assert_401(&r, &env);
    let r = h.create("gAAAAABnot-a-real-fernet-token", 7001).await;
    assert_401(&r, &env);
    assert_eq!(h.stored().await, 0);
    // Version documents need no token.
    assert_eq!(h.send("GET", "/", None, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_expired_token_is_401_even_when_cached() {
    let Some(env) = ks::env() else { return };
    let admin = Admin::connect(&env).await;
    let project = admin.project(&ks::unique("nav-exp")).await;
    let (_, member) = admin.user_with_role(&project, "member").await;
    // An application credential expiring a few seconds from now caps its
    // tokens' expiry; Keystone writes that time without fraction or zone.
    let expires = chrono::Utc::now() + chrono::Duration::seconds(6);
    let short = ks::app_credential_token(
        &admin,
        &project,
        &member,
        "member",
        &expires.format("%Y-%m-%dT%H:%M:%S").to_string(),
    )
    .await;
    let h = harness(config(&env, &env.url, 300, 28300)).await;
    let r = h
        .send("GET", "/v1/forwards", Some(&short.token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let r = h
        .send("GET", "/v1/forwards", Some(&short.token), None)
        .await;
    assert_401(&r, &env);
    let r = h.create(&short.token, 7001).await;
    assert_401(&r, &env);
    assert_eq!(h.stored().await, 0);
}

#[tokio::test]
async fn a_revoked_token_is_401_after_the_cache_bound() {
    let Some(env) = ks::env() else { return };
    let admin = Admin::connect(&env).await;
    let project = admin.project(&ks::unique("nav-rev")).await;
    let (_, member) = admin.user_with_role(&project, "member").await;
    let h = harness(config(&env, &env.url, 2, 28400)).await;
    let r = h
        .send("GET", "/v1/forwards", Some(&member.token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    admin.revoke(&member.token).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = h
        .send("GET", "/v1/forwards", Some(&member.token), None)
        .await;
    assert_401(&r, &env);
    let r = h.create(&member.token, 7001).await;
    assert_401(&r, &env);
    assert_eq!(h.stored().await, 0);
}

#[tokio::test]
async fn a_revoked_service_token_is_replaced_by_a_new_login() {
    let Some(env) = ks::env() else { return };
    let admin = Admin::connect(&env).await;
    let project = admin.project(&ks::unique("nav-svc")).await;
    let (_, member) = admin.user_with_role(&project, "member").await;
    let (_, other) = admin.user_with_role(&project, "reader").await;
    let h = harness(config(&env, &env.url, 300, 28600)).await;
    let r = h
        .send("GET", "/v1/forwards", Some(&member.token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let validator = h.auth.validator().unwrap();
    let first = validator.service_token_id().await.unwrap();
    admin.revoke(&first).await;
    // Keystone now answers 401 to the old service token: the validator
    // logs in once more and the user's request still succeeds.
    let r = h
        .send("GET", "/v1/forwards", Some(&other.token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let second = validator.service_token_id().await.unwrap();
    assert_ne!(first, second);
}

/// A TCP forwarder to Keystone that can be stopped, to make Keystone
/// unreachable for one server without stopping the shared Keystone.
struct Forwarder {
    port: u16,
    stop: tokio_util::sync::CancellationToken,
}

async fn forwarder(target: String) -> Forwarder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = token.cancelled() => return, // drops the listener
                accepted = listener.accept() => accepted,
            };
            let Ok((mut client, _)) = accepted else {
                continue;
            };
            let target = target.clone();
            let token = token.clone();
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                }
            });
        }
    });
    Forwarder { port, stop }
}

#[tokio::test]
async fn keystone_unreachable_is_503_and_changes_nothing() {
    let Some(env) = ks::env() else { return };
    let admin = Admin::connect(&env).await;
    let project = admin.project(&ks::unique("nav-down")).await;
    let (_, member) = admin.user_with_role(&project, "member").await;
    let host_port = env
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let fwd = forwarder(host_port).await;
    let auth_url = format!("http://127.0.0.1:{}/v3", fwd.port);
    let h = harness(config(&env, &auth_url, 300, 28500)).await;

    let r = h.create(&member.token, 7001).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(h.stored().await, 1);
    // Keystone refuses this one now; the refusal is remembered briefly.
    let refused = "gAAAAABrefused-while-keystone-was-up";
    let r = h.send("GET", "/v1/forwards", Some(refused), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    fwd.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A token the server has not seen cannot be checked: 503, never a guess.
    let (_, other) = admin.user_with_role(&project, "member").await;
    let r = h.create(&other.token, 7002).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.headers.get("www-authenticate").is_none());
    let r = h
        .send("GET", "/v1/forwards", Some(&other.token), None)
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let r = h.send("GET", "/v1/forwards", Some("garbage"), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    // A token Keystone refused moments ago is still refused without asking
    // it (negative cache): 401, not 503, and never accepted.
    let r = h.send("POST", "/v1/forwards", Some(refused), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.headers.get("www-authenticate").is_some());
    assert_eq!(h.stored().await, 1);
}

#[tokio::test]
async fn catalog_registration_is_idempotent() {
    use navigator_keystone::validate::{EndpointSpec, PasswordCredentials, register_service};
    let Some(env) = ks::env() else { return };
    let admin = PasswordCredentials {
        auth_url: env.url.clone(),
        username: "admin".into(),
        password: env.admin_password.clone(),
        project_name: "admin".into(),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
    };
    // A name and type of its own, so the real navigator entry is untouched.
    let name = ks::unique("navigator-test");
    let service_type = ks::unique("pf-test");
    let endpoints = |public: &str| {
        ["public", "internal", "admin"].map(|interface| EndpointSpec {
            interface: interface.into(),
            url: if interface == "public" {
                public.to_owned()
            } else {
                "http://10.0.0.1:9797".to_owned()
            },
        })
    };
    let first = register_service(
        &admin,
        &name,
        &service_type,
        "test",
        "RegionOne",
        &endpoints("http://a:9797"),
    )
    .await
    .unwrap();
    assert!(first.service_created);
    assert_eq!(first.endpoints_created.len(), 3);
    let again = register_service(
        &admin,
        &name,
        &service_type,
        "test",
        "RegionOne",
        &endpoints("http://a:9797"),
    )
    .await
    .unwrap();
    assert!(!again.service_created);
    assert_eq!(again.service_id, first.service_id);
    assert_eq!(again.endpoints_unchanged.len(), 3);
    let moved = register_service(
        &admin,
        &name,
        &service_type,
        "test",
        "RegionOne",
        &endpoints("http://b:9797"),
    )
    .await
    .unwrap();
    assert_eq!(moved.endpoints_updated, ["public"]);
    assert_eq!(moved.endpoints_unchanged.len(), 2);
}

/// Dashboard logout ends the Keystone token too: the server revokes it and
/// forgets its cached validation, so it is refused here at once.
#[tokio::test]
async fn dashboard_logout_revokes_the_token() {
    let Some(env) = ks::env() else { return };
    let admin = Admin::connect(&env).await;
    let project_name = ks::unique("nav-logout");
    let project = admin.project(&project_name).await;
    let (user_name, password) = (ks::unique("member"), ks::unique("pw"));
    let user = admin.user(&user_name, &password).await;
    admin.grant(&project, &user, "member").await;
    let h = harness(config(&env, &env.url, 300, 28420)).await;
    let addr = support::wire::serve(h.app.clone()).await;
    let host = Some("127.0.0.1");
    let cookie_of = |answer: &support::wire::Answer, name: &str| {
        answer
            .header_values("set-cookie")
            .iter()
            .find_map(|c| c.strip_prefix(&format!("{name}="))?.split(';').next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {name} cookie: {answer:?}"))
    };
    let form = ("Content-Type", "application/x-www-form-urlencoded");

    let page = support::wire::send(addr, "GET", "/dashboard/login", host, &[], b"").await;
    let token = cookie_of(&page, "navigator_login");
    let body = format!(
        "csrf_token={token}&username={user_name}&password={password}&project={project_name}&domain=Default"
    );
    let cookie = format!("navigator_login={token}");
    let answer = support::wire::send(
        addr,
        "POST",
        "/dashboard/login",
        host,
        &[("Cookie", &cookie), form],
        body.as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let session = format!(
        "navigator_session={}",
        cookie_of(&answer, "navigator_session")
    );
    let page = support::wire::send(
        addr,
        "GET",
        "/dashboard",
        host,
        &[("Cookie", &session)],
        b"",
    )
    .await;
    assert_eq!(page.status, 200, "{page:?}");
    let csrf = page
        .body
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf token in the page")
        .to_owned();
    let validator = h.auth.validator().unwrap();
    assert_eq!(
        validator.cached_len(),
        1,
        "the session's token was validated"
    );
    assert_eq!(validator.refused_len(), 0);

    let answer = support::wire::send(
        addr,
        "POST",
        "/dashboard/logout",
        host,
        &[("Cookie", &session), form],
        format!("csrf_token={csrf}").as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(validator.cached_len(), 0, "forgotten");
    assert_eq!(validator.refused_len(), 1, "refused from now on");
    let page = support::wire::send(
        addr,
        "GET",
        "/dashboard",
        host,
        &[("Cookie", &session)],
        b"",
    )
    .await;
    assert_eq!(page.status, 303, "the session is over: {page:?}");

    // What logout calls, with a token the test can see: Keystone accepts
    // the token's own revocation, and another server, asking Keystone
    // afresh, refuses the token.
    let (_, member) = admin.user_with_role(&project, "member").await;
    assert!(validator.validate(&member.token).await.is_ok());
    validator.revoke(&member.token).await.unwrap();
    let other = harness(config(&env, &env.url, 300, 28440)).await;
    let r = other
        .send("GET", "/v1/forwards", Some(&member.token), None)
        .await;
    assert_401(&r, &env);
}

/// `/healthcheck?detailed=true` from off loopback: a member's token gets
/// the short answer, an admin's the detailed one; no token is never a 401.
#[tokio::test]
async fn healthcheck_details_for_admin_tokens_only() {
    let Some(env) = ks::env() else { return };
    let admin = Admin::connect(&env).await;
    let project = admin.project(&ks::unique("nav-health")).await;
    let (_, member) = admin.user_with_role(&project, "member").await;
    let (_, boss) = admin.user_with_role(&project, "admin").await;
    let h = harness(config(&env, &env.url, 300, 28470)).await;
    for (token, detailed) in [
        (None, false),
        (Some("not-a-token"), false),
        (Some(member.token.as_str()), false),
        (Some(boss.token.as_str()), true),
    ] {
        let r = h
            .send("GET", "/healthcheck?detailed=true", token, None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["detailed"], detailed, "{token:?}: {}", r.body);
        assert_eq!(r.body["details"].is_array(), detailed, "{}", r.body);
    }
}

/// Quotas under the default policy: members and readers read their own
/// project's, not another's (403); only admins set or reset one.
#[tokio::test]
async fn quotas_are_read_by_the_project_and_set_by_admins() {
    let Some(env) = ks::env() else { return };
    let admin = Admin::connect(&env).await;
    let a = admin.project(&ks::unique("nav-qa")).await;
    let b = admin.project(&ks::unique("nav-qb")).await;
    let (_, member_a) = admin.user_with_role(&a, "member").await;
    let (_, reader_a) = admin.user_with_role(&a, "reader").await;
    let (_, admin_b) = admin.user_with_role(&b, "admin").await;
    let h = harness(config(&env, &env.url, 300, 25800)).await;
    let own = format!("/v1/quotas/{a}");
    for token in [&member_a.token, &reader_a.token] {
        for path in [own.clone(), format!("{own}/details")] {
            let r = h.send("GET", &path, Some(token), None).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        }
        let r = h
            .send("GET", &format!("/v1/quotas/{b}"), Some(token), None)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        let r = h
            .send(
                "PUT",
                &own,
                Some(token),
                Some(json!({"quota": {"forwards": 100}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        assert_eq!(
            r.body["error"]["message"],
            "policy does not allow quota:update to be performed"
        );
        let r = h.send("DELETE", &own, Some(token), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    }
    // An admin (of any project) sets A's quota; A's member then meets it.
    let r = h
        .send(
            "PUT",
            &own,
            Some(&admin_b.token),
            Some(json!({"quota": {"forwards": 1}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        h.create(&member_a.token, 7001).await.status,
        StatusCode::CREATED
    );
    let r = h.create(&member_a.token, 7002).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(
        r.body["error"]["message"],
        format!("quota exceeded for project {a}: forwards would be 2, the limit is 1 (1 used)")
    );
    let r = h
        .send(
            "GET",
            &format!("{own}/details"),
            Some(&reader_a.token),
            None,
        )
        .await;
    assert_eq!(r.body["quota"]["forwards"], json!({"limit": 1, "used": 1}));
    let r = h.send("DELETE", &own, Some(&admin_b.token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        h.create(&member_a.token, 7002).await.status,
        StatusCode::CREATED
    );
}
