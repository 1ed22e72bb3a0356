//! Keystone's admin API, just enough for tests: an admin token, projects,
//! users with passwords, role assignments by role name, application
//! credentials with an expiry, and token revocation.
//!
//! Every request is sent on a fresh connection with `Connection: close`:
//! Keystone under uwsgi resets kept-alive connections.

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

/// The test Keystone named by the environment (`scripts/keystone start`).
pub struct Env {
    pub url: String,
    pub admin_password: String,
    pub service_user: String,
    pub service_password: String,
}

/// The Keystone to test against, or `None` (after saying why) to skip.
pub fn env() -> Option<Env> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        var("NAVIGATOR_TEST_KEYSTONE_URL"),
        var("NAVIGATOR_TEST_ADMIN_PASSWORD"),
        var("NAVIGATOR_TEST_SERVICE_USER"),
        var("NAVIGATOR_TEST_SERVICE_PASSWORD"),
    ) {
        (Some(url), Some(admin_password), Some(service_user), Some(service_password)) => {
            Some(Env {
                url,
                admin_password,
                service_user,
                service_password,
            })
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

fn client() -> Client {
    // Navigator's own Keystone client settings: no pooled connections, and
    // the TLS provider installed.
    navigator_keystone::validate::http_client(std::time::Duration::from_secs(30))
        .expect("http client")
}

/// A token and what Keystone said about it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub token: String,
    pub body: Value,
}

/// An admin session on the test Keystone.
pub struct Admin {
    http: Client,
    pub url: String,
    token: String,
}

/// A unique suffix for names, so tests sharing one Keystone never collide.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `POST /v3/auth/tokens` with `body`.
pub async fn issue(url: &str, body: Value) -> Result<Issued, (StatusCode, String)> {
    let response = client()
        .post(format!("{url}/auth/tokens?nocatalog"))
        .header("Connection", "close")
        .json(&body)
        .send()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let status = response.status();
    let token = response
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    match (status, token) {
        (StatusCode::CREATED, Some(token)) => Ok(Issued {
            token,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }),
        _ => Err((status, text)),
    }
}

/// A password login scoped to `project` (by id).
pub async fn login(url: &str, user: &str, password: &str, project_id: &str) -> Issued {
    issue(
        url,
        json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"id": project_id}},
        }}),
    )
    .await
    .unwrap_or_else(|e| panic!("login of {user} failed: {e:?}"))
}

impl Admin {
    pub async fn connect(env: &Env) -> Admin {
        let issued = issue(
            &env.url,
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "admin", "domain": {"id": "default"}, "password": env.admin_password}}},
                "scope": {"project": {"name": "admin", "domain": {"id": "default"}}},
            }}),
        )
        .await
        .expect("admin login");
        Admin {
            http: client(),
            url: env.url.clone(),
            token: issued.token,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("Connection", "close")
            .header("X-Auth-Token", &self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("keystone request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create(&self, path: &str, body: Value, field: &str) -> Value {
        let (status, value) = self.call(Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "POST {path}: {value}");
        value[field].clone()
    }

    /// A new project; returns its id.
    pub async fn project(&self, name: &str) -> String {
        let project = self
            .create(
                "/projects",
                json!({"project": {"name": name, "domain_id": "default"}}),
                "project",
            )
            .await;
        project["id"].as_str().expect("project id").to_owned()
    }

    /// A new user with `password`; returns its id.
    pub async fn user(&self, name: &str, password: &str) -> String {
        let user = self
            .create(
                "/users",
                json!({"user": {"name": name, "domain_id": "default", "password": password}}),
                "user",
            )
            .await;
        user["id"].as_str().expect("user id").to_owned()
    }

    /// The id of the role called `name`.
    pub async fn role_id(&self, name: &str) -> String {
        let (status, value) = self
            .call(Method::GET, &format!("/roles?name={name}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{value}");
        value["roles"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no role {name}"))
            .to_owned()
    }

    /// Gives `user` the role `role` (by name) on `project`.
    pub async fn grant(&self, project: &str, user: &str, role: &str) {
        let role = self.role_id(role).await;
        let (status, value) = self
            .call(
                Method::PUT,
                &format!("/projects/{project}/users/{user}/roles/{role}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{value}");
    }

    /// Revokes `token` (`DELETE /v3/auth/tokens`).
    pub async fn revoke(&self, token: &str) {
        let response = self
            .http
            .delete(format!("{}/auth/tokens", self.url))
            .header("Connection", "close")
            .header("X-Auth-Token", &self.token)
            .header("X-Subject-Token", token)
            .send()
            .await
            .expect("revoke");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    /// A user with `role` on `project`, logged in: (user id, token).
    pub async fn user_with_role(&self, project: &str, role: &str) -> (String, Issued) {
        let name = unique(role);
        let password = unique("pw");
        let user = self.user(&name, &password).await;
        self.grant(project, &user, role).await;
        let issued = login(&self.url, &name, &password, project).await;
        (user, issued)
    }
}

async fn create_app_credential(
    url: &str,
    user_token: &Issued,
    role: &str,
    expires_at: Option<&str>,
) -> (StatusCode, Value) {
    let user_id = user_token.body["token"]["user"]["id"]
        .as_str()
        .expect("user id");
    let response = client()
        .post(format!("{url}/users/{user_id}/application_credentials"))
        .header("Connection", "close")
        .header("X-Auth-Token", &user_token.token)
        .json(&json!({"application_credential": {
            "name": unique("short"), "expires_at": expires_at,
            "roles": [{"name": role}]}}))
        .send()
        .await
        .expect("create app credential");
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    (status, value)
}

/// Creates an application credential of the token's user with `role`,
/// expiring at `expires_at` (Keystone's format, UTC), and returns a token
/// issued from it.
///
/// The role is named explicitly: when it is left out, this Keystone may copy
/// the token's roles with implied ones twice. And on SQLite, deleting the
/// newest application credential leaves its role rows behind (no foreign-key
/// cascade), so the next credential reuses its internal id and fails with a
/// 409 "Duplicate entry"; [`Admin::burn_app_credential_id`] uses that id up
/// with a credential whose role cannot collide, and the creation is retried.
pub async fn app_credential_token(
    admin: &Admin,
    project: &str,
    user_token: &Issued,
    role: &str,
    expires_at: &str,
) -> Issued {
    for _ in 0..5 {
        let (status, value) =
            create_app_credential(&admin.url, user_token, role, Some(expires_at)).await;
        if status == StatusCode::CONFLICT {
            admin.burn_app_credential_id(project).await;
            continue;
        }
        assert_eq!(status, StatusCode::CREATED, "{value}");
        let credential = &value["application_credential"];
        return issue(
            &admin.url,
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": credential["id"], "secret": credential["secret"]}}}}),
        )
        .await
        .expect("token from app credential");
    }
    panic!("keystone kept refusing to create an application credential (409)");
}

impl Admin {
    /// Creates (and keeps) an application credential with a role of its
    /// own, to move SQLite's next internal id past orphaned role rows.
    pub async fn burn_app_credential_id(&self, project: &str) {
        let role = unique("burn");
        self.create("/roles", json!({"role": {"name": role}}), "role")
            .await;
        let name = unique("burn");
        let password = unique("pw");
        let user = self.user(&name, &password).await;
        self.grant(project, &user, &role).await;
        let token = login(&self.url, &name, &password, project).await;
        let _ = create_app_credential(&self.url, &token, &role, None).await;
    }
}
