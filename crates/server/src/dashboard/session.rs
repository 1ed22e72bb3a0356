//! Dashboard sessions: who a browser is logged in as, kept server-side.
//!
//! The browser holds only a random session id in an HttpOnly, SameSite=Strict
//! cookie scoped to `/dashboard`; the Keystone token (or the noauth project)
//! never leaves the server. A session ends when its token expires, on logout,
//! or when the REST API stops accepting its token.
//!
//! Every state-changing form carries the session's synchronizer token
//! (`csrf_token`), checked in constant time together with the `Origin` and
//! `Sec-Fetch-Site` headers browsers send ([`check_post`]).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};

/// The session cookie's name.
pub const COOKIE: &str = "navigator_session";
/// The pre-login cookie that pairs with the login form's token (double submit).
pub const LOGIN_COOKIE: &str = "navigator_login";
/// How many live sessions the server keeps at most (memory bound).
const MAX_SESSIONS: usize = 10_000;

/// How a session reaches the REST API.
#[derive(Clone)]
pub enum Credential {
    /// A project-scoped Keystone token, sent as `X-Auth-Token`.
    Token(String),
    /// noauth: the project, sent as `X-Project-Id`.
    Project(String),
}

impl std::fmt::Debug for Credential {
    // The token is a bearer secret: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Token(_) => f.write_str("Token(<hidden>)"),
            Credential::Project(p) => write!(f, "Project({p:?})"),
        }
    }
}

/// A message shown once on the next page (POST-redirect-GET).
#[derive(Clone, Debug)]
pub struct Flash {
    pub error: bool,
    pub text: String,
}

/// One logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub credential: Credential,
    /// Shown in the header: user name (Keystone) or "noauth".
    pub user: String,
    /// Project name (or id) shown in the header.
    pub project: String,
    /// The synchronizer token every form of this session carries.
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
    /// Whether the API let this identity list proxies at login (the policy
    /// still decides on every request; this only hides a useless link).
    pub proxies_visible: bool,
    pub flash: Option<Flash>,
}

/// All live sessions, keyed by the cookie's random id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// Why a session could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("too many dashboard sessions are open; try again later")]
pub struct Full;

impl Sessions {
    /// Stores `session` under a new random id and returns the id.
    pub fn insert(&self, session: Session) -> Result<String, Full> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            let now = Utc::now();
            map.retain(|_, s| s.expires_at > now);
            if map.len() >= MAX_SESSIONS {
                return Err(Full);
            }
        }
        let id = random_token();
        map.insert(id.clone(), session);
        Ok(id)
    }

    /// The live session `id` names (an expired one is removed and `None`).
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(id) {
            Some(s) if s.expires_at > Utc::now() => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Removes and returns the session's flash message.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(id).and_then(|s| s.flash.take())
    }

    pub fn set_flash(&self, id: &str, error: bool, text: impl Into<String>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(id) {
            s.flash = Some(Flash {
                error,
                text: text.into(),
            });
        }
    }

    pub fn remove(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }
}

/// 256 random bits as 64 hex digits (two v4 UUIDs' random parts come from
/// the operating system's CSPRNG through `getrandom`).
pub fn random_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether the browser reached us over TLS (directly, or through a
/// TLS-terminating proxy that says so); cookies are then `Secure`.
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value for the dashboard.
pub fn set_cookie(name: &str, value: &str, max_age: Option<i64>, secure: bool) -> String {
    let mut text = format!("{name}={value}; Path=/dashboard; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        text.push_str(&format!("; Max-Age={}", age.max(0)));
    }
    if secure {
        text.push_str("; Secure");
    }
    text
}

/// Compares two secrets without leaking where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a form POST was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrfError {
    #[error("the form came from another site (Sec-Fetch-Site: {0})")]
    CrossSite(String),
    #[error("the form came from another origin ({0})")]
    Origin(String),
    #[error("the form's security token is missing or stale; reload the page and try again")]
    Token,
}

/// Checks a form POST: the browser's fetch metadata and `Origin` must say it
/// came from this site, and `sent` must equal `expected` (the session's or
/// the login cookie's token).
pub fn check_post(
    headers: &HeaderMap,
    sent: Option<&str>,
    expected: &str,
) -> Result<(), CsrfError> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Err(CsrfError::CrossSite(site.to_owned()));
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if host.is_empty() || authority != Some(host) {
            return Err(CsrfError::Origin(origin.to_owned()));
        }
    }
    match sent {
        Some(sent) if !expected.is_empty() && same_secret(sent, expected) => Ok(()),
        _ => Err(CsrfError::Token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn post_checks() {
        let ok = headers(&[
            ("host", "127.0.0.1:9797"),
            ("origin", "http://127.0.0.1:9797"),
        ]);
        assert_eq!(check_post(&ok, Some("abc"), "abc"), Ok(()));
        assert_eq!(check_post(&ok, Some("abd"), "abc"), Err(CsrfError::Token));
        assert_eq!(check_post(&ok, None, "abc"), Err(CsrfError::Token));
        assert_eq!(check_post(&ok, Some(""), ""), Err(CsrfError::Token));
        let evil = headers(&[
            ("host", "127.0.0.1:9797"),
            ("origin", "http://evil.example"),
        ]);
        assert!(matches!(
            check_post(&evil, Some("abc"), "abc"),
            Err(CsrfError::Origin(_))
        ));
        let cross = headers(&[("host", "127.0.0.1:9797"), ("sec-fetch-site", "cross-site")]);
        assert!(matches!(
            check_post(&cross, Some("abc"), "abc"),
            Err(CsrfError::CrossSite(_))
        ));
        // Clients without fetch metadata (curl) pass on the token alone.
        assert_eq!(check_post(&headers(&[]), Some("abc"), "abc"), Ok(()));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[("cookie", "a=1; navigator_session=xyz; b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }

    fn session(expires_at: DateTime<Utc>) -> Session {
        Session {
            credential: Credential::Project("p".into()),
            user: "u".into(),
            project: "p".into(),
            csrf: random_token(),
            expires_at,
            proxies_visible: false,
            flash: None,
        }
    }

    #[test]
    fn a_session_ends_with_its_token() {
        let sessions = Sessions::default();
        let live = sessions
            .insert(session(Utc::now() + chrono::Duration::seconds(60)))
            .unwrap();
        let over = sessions
            .insert(session(Utc::now() - chrono::Duration::seconds(1)))
            .unwrap();
        assert!(sessions.get(&live).is_some());
        assert!(sessions.get(&over).is_none());
        sessions.remove(&live);
        assert!(sessions.get(&live).is_none());
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(set_cookie(COOKIE, &a, None, true).contains("HttpOnly; SameSite=Strict; Secure"));
    }
}
