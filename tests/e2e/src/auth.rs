//! The two ways the end-to-end tests authenticate, so that one test body runs
//! against `auth_strategy = noauth` and against `auth_strategy = keystone`
//! with a real Keystone (see [`both_auth_modes!`](crate::both_auth_modes)).
//!
//! In Keystone mode every test gets a project and a user with the `member`
//! role on it, under unique names, and removes both when it ends; the server
//! validates tokens with the service user of `scripts/keystone`, and the CLI
//! logs in with `OS_*` variables, as a user of openstackclient would.
//! Keystone's admin API is spoken over plain HTTP/1.1 with
//! `Connection: close` (uwsgi resets kept-alive connections), through the
//! same [`raw_http`](crate::raw_http) the API checks use, so this crate needs
//! no HTTP client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::{HttpResponse, raw_http};

/// How the server under test authenticates and the CLI logs in.
#[derive(Clone)]
pub enum Auth {
    /// `auth_strategy = noauth`, the all-in-one default: the CLI sends no
    /// credentials and acts in project `default`.
    Noauth,
    /// `auth_strategy = keystone`: the CLI logs in as a member of a project
    /// of its own.
    Keystone(Arc<KeystoneProject>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Noauth => f.write_str("noauth"),
            Auth::Keystone(p) => write!(f, "keystone (project {})", p.project_name),
        }
    }
}

/// The test Keystone named by the environment (`scripts/keystone start DIR`
/// writes these variables to `DIR/env`).
#[derive(Clone, Debug)]
pub struct KeystoneSettings {
    /// e.g. `http://127.0.0.1:35357/v3`
    pub url: String,
    pub admin_password: String,
    pub service_user: String,
    pub service_password: String,
}

impl KeystoneSettings {
    /// The settings, or `None` after printing a `skipped:` line for `test`;
    /// panics under `CI`, where a missing Keystone is a broken setup.
    pub fn from_env(test: &str) -> Option<KeystoneSettings> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (
            var("NAVIGATOR_TEST_KEYSTONE_URL"),
            var("NAVIGATOR_TEST_ADMIN_PASSWORD"),
            var("NAVIGATOR_TEST_SERVICE_USER"),
            var("NAVIGATOR_TEST_SERVICE_PASSWORD"),
        ) {
            (Some(url), Some(admin_password), Some(service_user), Some(service_password)) => {
                Some(KeystoneSettings {
                    url: url.trim_end_matches('/').to_owned(),
                    admin_password,
                    service_user,
                    service_password,
                })
            }
            _ if std::env::var_os("CI").is_some() => panic!(
                "{test} needs a Keystone: NAVIGATOR_TEST_KEYSTONE_URL, NAVIGATOR_TEST_ADMIN_PASSWORD and \
                 NAVIGATOR_TEST_SERVICE_USER/PASSWORD must be set (scripts/test-all starts one)"
            ),
            _ => {
                eprintln!(
                    "\n!!!!!!!! skipped: NAVIGATOR_TEST_KEYSTONE_URL not set — {test} did NOT run with \
                     auth_strategy = keystone (start one with scripts/keystone start DIR PORT and source DIR/env) !!!!!!!!\n"
                );
                None
            }
        }
    }

    /// `host:port` and path prefix of the Keystone URL (plain HTTP only: the
    /// test Keystone listens on loopback).
    fn split(&self) -> (&str, &str) {
        let rest = self.url.strip_prefix("http://").unwrap_or_else(|| {
            panic!(
                "NAVIGATOR_TEST_KEYSTONE_URL must be an http:// URL, got {:?}",
                self.url
            )
        });
        match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        }
    }

    /// One request to Keystone's API (`path` below `/v3`).
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> HttpResponse {
        let (authority, prefix) = self.split();
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(token) = token {
            headers.push(("X-Auth-Token", token));
        }
        raw_http(
            authority,
            method,
            &format!("{prefix}{path}"),
            &headers,
            body.as_bytes(),
        )
    }

    /// A password login of `user` scoped to `project` (both names in domain
    /// Default): the token, or Keystone's status and body.
    pub fn login(&self, user: &str, password: &str, project: &str) -> Result<String, String> {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}},
        }});
        let response = self.call("POST", "/auth/tokens?nocatalog", None, Some(&body));
        match (response.status, response.header("x-subject-token")) {
            (201, Some(token)) => Ok(token.to_owned()),
            _ => Err(format!(
                "login of {user} to {project} answered {}: {}",
                response.status, response.body
            )),
        }
    }

    fn admin_token(&self) -> String {
        self.login("admin", &self.admin_password, "admin")
            .unwrap_or_else(|e| panic!("the Keystone admin cannot log in: {e}"))
    }
}

/// A project and a member user on it, made for one test and deleted with it.
pub struct KeystoneProject {
    pub settings: KeystoneSettings,
    pub project_id: String,
    pub project_name: String,
    pub user_id: String,
    pub user_name: String,
    pub password: String,
    admin_token: String,
    /// A token of the user for raw HTTP requests, issued on first use.
    token: Mutex<Option<String>>,
}

/// A name no other test (of any process) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl KeystoneProject {
    /// Creates project `e2e-TEST-…` and a user with role `member` on it.
    pub fn create(settings: KeystoneSettings, test: &str) -> KeystoneProject {
        KeystoneProject::with_role(settings, test, "member")
    }

    /// Creates project `e2e-TEST-…` and a user with `role` on it (and the
    /// project as the user's default, where Horizon logs them in).
    pub fn with_role(settings: KeystoneSettings, test: &str, role: &str) -> KeystoneProject {
        let admin_token = settings.admin_token();
        let admin = |method: &str, path: &str, body: Option<Value>, expect: u16| -> Value {
            let response = settings.call(method, path, Some(&admin_token), body.as_ref());
            assert_eq!(
                response.status, expect,
                "Keystone {method} {path}: {}",
                response.body
            );
            if response.body.trim().is_empty() {
                Value::Null
            } else {
                response.json()
            }
        };
        let id = |value: &Value, kind: &str| -> String {
            value[kind]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no {kind} id in {value}"))
                .to_owned()
        };
        // Keystone allows 64 characters in a project name.
        let short: String = test.chars().take(24).collect();
        let project_name = unique(&format!("e2e-{short}"));
        let project = admin(
            "POST",
            "/projects",
            Some(json!({"project": {"name": project_name, "domain_id": "default"}})),
            201,
        );
        let project_id = id(&project, "project");
        let user_name = unique(&format!("{role}-{short}"));
        let password = unique("pw");
        let user = admin(
            "POST",
            "/users",
            Some(json!({"user": {"name": user_name, "domain_id": "default",
                "password": password, "default_project_id": project_id}})),
            201,
        );
        let user_id = id(&user, "user");
        let roles = admin("GET", &format!("/roles?name={role}"), None, 200);
        let role_id = roles["roles"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("Keystone has no role {role:?}: {roles}"))
            .to_owned();
        admin(
            "PUT",
            &format!("/projects/{project_id}/users/{user_id}/roles/{role_id}"),
            None,
            204,
        );
        KeystoneProject {
            settings,
            project_id,
            project_name,
            user_id,
            user_name,
            password,
            admin_token,
            token: Mutex::new(None),
        }
    }

    /// A token of the member user (one per project, issued on first use).
    pub fn token(&self) -> String {
        let mut token = self.token.lock().unwrap_or_else(|p| p.into_inner());
        token
            .get_or_insert_with(|| {
                self.settings
                    .login(&self.user_name, &self.password, &self.project_name)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .clone()
    }

    /// Disables the user: Keystone then refuses every token of theirs.
    pub fn disable_user(&self) -> Result<(), String> {
        let response = self.settings.call(
            "PATCH",
            &format!("/users/{}", self.user_id),
            Some(&self.admin_token),
            Some(&json!({"user": {"enabled": false}})),
        );
        if response.status == 200 {
            Ok(())
        } else {
            Err(format!(
                "disabling {}: {} {}",
                self.user_name, response.status, response.body
            ))
        }
    }

    /// The `OS_*` variables that log the CLI in as the member user.
    pub fn os_environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OS_AUTH_URL", self.settings.url.clone()),
            ("OS_IDENTITY_API_VERSION", "3".to_owned()),
            ("OS_AUTH_TYPE", "password".to_owned()),
            ("OS_USERNAME", self.user_name.clone()),
            ("OS_PASSWORD", self.password.clone()),
            ("OS_PROJECT_NAME", self.project_name.clone()),
            ("OS_USER_DOMAIN_NAME", "Default".to_owned()),
            ("OS_PROJECT_DOMAIN_NAME", "Default".to_owned()),
        ]
    }
}

impl Drop for KeystoneProject {
    fn drop(&mut self) {
        // Best effort: the Keystone is a throwaway one, and a failed test
        // should report its own failure, not this (a panic while unwinding
        // would abort the whole test binary).
        if std::thread::panicking() {
            return;
        }
        for path in [
            format!("/users/{}", self.user_id),
            format!("/projects/{}", self.project_id),
        ] {
            let (authority, _) = self.settings.split();
            if std::net::TcpStream::connect(authority).is_ok() {
                let _ = self
                    .settings
                    .call("DELETE", &path, Some(&self.admin_token), None);
            }
        }
    }
}

impl Auth {
    /// Keystone mode for `test`: a fresh project and member user, or `None`
    /// (after a `skipped:` line; a panic under `CI`) without a Keystone.
    pub fn keystone(test: &str) -> Option<Auth> {
        let settings = KeystoneSettings::from_env(test)?;
        Some(Auth::Keystone(Arc::new(KeystoneProject::create(
            settings, test,
        ))))
    }

    /// The project forwards are created in: Keystone's project id, or
    /// `default` with noauth.
    pub fn project_id(&self) -> &str {
        match self {
            Auth::Noauth => "default",
            Auth::Keystone(p) => &p.project_id,
        }
    }

    /// The navigator.conf lines for `[DEFAULT]` and, for Keystone, the
    /// `[keystone_authtoken]` section and `[forwards] allow_loopback_targets
    /// = true` (the echo servers are on loopback, which only the noauth
    /// demo allows by default): `(default_lines, sections)`.
    pub fn config(&self) -> (String, String) {
        match self {
            Auth::Noauth => ("auth_strategy = noauth\n".to_owned(), String::new()),
            Auth::Keystone(p) => {
                let s = &p.settings;
                (
                    "auth_strategy = keystone\n".to_owned(),
                    format!(
                        "[keystone_authtoken]\nwww_authenticate_uri = {url}\nauth_url = {url}\nauth_type = password\n\
                         username = {user}\npassword = {password}\nproject_name = service\n\
                         user_domain_name = Default\nproject_domain_name = Default\n\
                         [forwards]\nallow_loopback_targets = true\n",
                        url = s.url,
                        user = s.service_user,
                        password = s.service_password,
                    ),
                )
            }
        }
    }

    /// Environment variables for a CLI run.
    pub fn os_environment(&self) -> Vec<(&'static str, String)> {
        match self {
            Auth::Noauth => Vec::new(),
            Auth::Keystone(p) => p.os_environment(),
        }
    }

    /// The `X-Auth-Token` header value for raw HTTP requests, if any.
    pub fn token(&self) -> Option<String> {
        match self {
            Auth::Noauth => None,
            Auth::Keystone(p) => Some(p.token()),
        }
    }
}

/// Runs each named test body, a `fn(Auth)`, as two tests: `NAME::noauth` and
/// `NAME::keystone` (the latter prints `skipped:` without a Keystone, and
/// panics under `CI`).
#[macro_export]
macro_rules! both_auth_modes {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn noauth() {
                super::$name($crate::Auth::Noauth);
            }

            #[test]
            fn keystone() {
                if let Some(auth) = $crate::Auth::keystone(stringify!($name)) {
                    super::$name(auth);
                }
            }
        }
    )+};
}
