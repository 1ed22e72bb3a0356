//! Dashboard sessions: who a browser is logged in as, kept server-side.
//!
//! The browser holds only a random session id in an HttpOnly, SameSite=Strict
//! cookie scoped to `/dashboard`; the Keystone token (or the noauth project)
//! never leaves the server. A session ends when its token expires, on logout
//! (which revokes a Keystone token), when a cap makes room for a newer login,
//! or when the REST API stops accepting its token.
//!
//! Every state-changing form carries the session's synchronizer token
//! (`csrf_token`), checked in constant time together with the `Origin` and
//! `Sec-Fetch-Site` headers browsers send ([`check_post`]). The login form,
//! which has no session yet, carries a [`LoginKey`] token instead: stateless,
//! so showing the form stores nothing.
//!
//! Sessions are only made by a successful login, and the table is bounded
//! without ever refusing one: a login beyond a cap (per user, per client
//! address, overall) ends the least recently used session under that cap.
//! A flood of logins therefore costs its sender their own older sessions,
//! and a real user can always log in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};

/// The session cookie's name.
pub const COOKIE: &str = "navigator_session";
/// The pre-login cookie that pairs with the login form's token (double submit).
pub const LOGIN_COOKIE: &str = "navigator_login";
/// How many live sessions the server keeps at most (memory bound).
const MAX_SESSIONS: usize = 10_000;
/// Sessions one user (Keystone user id; noauth: project) keeps at most: a
/// person's browsers and devices, with room to spare.
pub const MAX_SESSIONS_PER_USER: usize = 10;
/// How long a login form's token is accepted.
const LOGIN_TOKEN_SECONDS: i64 = 3600;

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

/// A stored session with what the caps count it by.
struct Entry {
    session: Session,
    /// Whose it is, for the per-user cap.
    owner: String,
    /// The TCP peer that logged in (`None` in process), for the per-address cap.
    client: Option<IpAddr>,
    /// When it was last logged in or used, on [`Sessions::clock`]: eviction
    /// ends the least recently used.
    last_used: u64,
}

/// The caps of a session table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub total: usize,
    pub per_user: usize,
    /// 0: no per-address cap.
    pub per_address: usize,
}

impl Limits {
    /// The server's caps with `[dashboard] max_sessions_per_address`.
    pub fn new(per_address: usize) -> Limits {
        Limits {
            total: MAX_SESSIONS,
            per_user: MAX_SESSIONS_PER_USER,
            per_address,
        }
    }
}

/// All live sessions, keyed by the cookie's random id.
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    limits: Limits,
    /// A counter, not a clock: two uses never tie, whatever the timer's
    /// resolution.
    clock: AtomicU64,
}

impl Sessions {
    pub fn new(limits: Limits) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            limits,
            clock: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Entries are replaced whole, so a panic elsewhere leaves none half
        // written.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `session` of `owner`, logged in from `client`, under a new
    /// random id and returns the id. Never refuses: a cap that is reached
    /// ends the least recently used session under it.
    pub fn insert(&self, session: Session, owner: &str, client: Option<IpAddr>) -> String {
        let limits = self.limits;
        let mut map = self.lock();
        let mut evicted = 0;
        evicted += evict_beyond(&mut map, limits.per_user, |e| e.owner == owner);
        if let Some(client) = client
            && limits.per_address > 0
        {
            evicted += evict_beyond(&mut map, limits.per_address, |e| e.client == Some(client));
        }
        if map.len() >= limits.total {
            let now = Utc::now();
            map.retain(|_, e| e.session.expires_at > now);
            evicted += evict_beyond(&mut map, limits.total, |_| true);
        }
        if evicted > 0 {
            tracing::debug!(evicted, "dashboard sessions ended to make room for a login");
        }
        let id = random_token();
        map.insert(
            id.clone(),
            Entry {
                session,
                owner: owner.to_owned(),
                client,
                last_used: self.tick(),
            },
        );
        id
    }

    /// The live session `id` names (an expired one is removed and `None`).
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(e) if e.session.expires_at > Utc::now() => {
                e.last_used = self.tick();
                Some(e.session.clone())
            }
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of sessions held (live or not yet noticed expired).
    #[cfg(test)]
    fn count(&self) -> usize {
        self.lock().len()
    }

    /// Removes and returns the session's flash message.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        self.lock().get_mut(id).and_then(|e| e.session.flash.take())
    }

    pub fn set_flash(&self, id: &str, error: bool, text: impl Into<String>) {
        if let Some(e) = self.lock().get_mut(id) {
            e.session.flash = Some(Flash {
                error,
                text: text.into(),
            });
        }
    }

    /// Ends session `id`, returning it.
    pub fn remove(&self, id: &str) -> Option<Session> {
        self.lock().remove(id).map(|e| e.session)
    }
}

/// Removes the least recently used of the entries `counted` selects until
/// fewer than `cap` remain, so one more fits; returns how many it removed.
fn evict_beyond(
    map: &mut HashMap<String, Entry>,
    cap: usize,
    counted: impl Fn(&Entry) -> bool,
) -> usize {
    let mut selected: Vec<(u64, String)> = map
        .iter()
        .filter(|(_, e)| counted(e))
        .map(|(id, e)| (e.last_used, id.clone()))
        .collect();
    if selected.len() < cap {
        return 0;
    }
    let excess = selected.len() + 1 - cap.max(1);
    selected.sort_unstable();
    for (_, id) in &selected[..excess] {
        map.remove(id);
    }
    excess
}

/// The login form's token: a random nonce and the time it was issued,
/// signed with HMAC-SHA256 under a key only this process knows. The form
/// page stores nothing; the POST checks the signature and the age, so a
/// client cannot choose its own token (and with it its own cookie).
pub struct LoginKey {
    key: ring::hmac::Key,
}

impl Default for LoginKey {
    fn default() -> LoginKey {
        LoginKey {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, random_token().as_bytes()),
        }
    }
}

impl LoginKey {
    /// A fresh token: 32 hex digits of nonce, 16 of issue time (Unix
    /// seconds), 64 of signature.
    pub fn issue(&self) -> String {
        self.issue_at(Utc::now().timestamp())
    }

    fn issue_at(&self, now: i64) -> String {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let signed = format!("{nonce}{:016x}", now.max(0));
        let tag = ring::hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}{}", hex(tag.as_ref()))
    }

    /// Whether `token` is one this process issued within the last hour.
    pub fn verify(&self, token: &str) -> bool {
        self.verify_at(token, Utc::now().timestamp())
    }

    fn verify_at(&self, token: &str, now: i64) -> bool {
        if token.len() != 32 + 16 + 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        let (signed, tag) = token.split_at(48);
        let Some(tag) = unhex(tag) else {
            return false;
        };
        if ring::hmac::verify(&self.key, signed.as_bytes(), &tag).is_err() {
            return false;
        }
        let Ok(issued) = i64::from_str_radix(&signed[32..], 16) else {
            return false;
        };
        // A minute of leeway for a clock stepped back meanwhile.
        (issued - 60..=issued + LOGIN_TOKEN_SECONDS).contains(&now)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
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

/// Marks every cookie `Secure` when the request came over the API's own TLS
/// (`[ssl]`, [`crate::http::ServedOverTls`]); behind a TLS-terminating proxy
/// [`over_tls`] decides per cookie.
pub async fn secure_cookies_over_tls(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let tls = request
        .extensions()
        .get::<crate::http::ServedOverTls>()
        .is_some();
    let mut response = next.run(request).await;
    if tls {
        let headers = response.headers_mut();
        let cookies: Vec<_> = headers
            .get_all(axum::http::header::SET_COOKIE)
            .iter()
            .map(|v| {
                let text = v.to_str().unwrap_or_default();
                if text.ends_with("; Secure") {
                    v.clone()
                } else {
                    axum::http::HeaderValue::from_str(&format!("{text}; Secure"))
                        .unwrap_or_else(|_| v.clone())
                }
            })
            .collect();
        headers.remove(axum::http::header::SET_COOKIE);
        for cookie in cookies {
            headers.append(axum::http::header::SET_COOKIE, cookie);
        }
    }
    response
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

    fn live() -> Session {
        session(Utc::now() + chrono::Duration::seconds(60))
    }

    #[test]
    fn a_session_ends_with_its_token() {
        let sessions = Sessions::new(Limits::new(100));
        let live = sessions.insert(live(), "u", None);
        let over = sessions.insert(
            session(Utc::now() - chrono::Duration::seconds(1)),
            "u",
            None,
        );
        assert!(sessions.get(&live).is_some());
        assert!(sessions.get(&over).is_none());
        sessions.remove(&live);
        assert!(sessions.get(&live).is_none());
    }

    #[test]
    fn caps_end_the_least_recently_used_session_never_the_login() {
        let sessions = Sessions::new(Limits {
            total: 20,
            per_user: 3,
            per_address: 5,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // Per user: the fourth login of u1 ends u1's least recently used.
        let u1: Vec<String> = (0..3)
            .map(|_| sessions.insert(live(), "u1", Some(b)))
            .collect();
        assert!(
            sessions.get(&u1[0]).is_some(),
            "u1[0] used now: u1[1] is the oldest"
        );
        let fourth = sessions.insert(live(), "u1", Some(b));
        assert!(sessions.get(&u1[1]).is_none());
        assert!(
            [&u1[0], &u1[2], &fourth]
                .iter()
                .all(|id| sessions.get(id).is_some())
        );
        // Per address: a flood from `a` under many names ends only `a`'s.
        let flood: Vec<String> = (0..50)
            .map(|i| sessions.insert(live(), &format!("flood{i}"), Some(a)))
            .collect();
        assert!(flood[..45].iter().all(|id| sessions.get(id).is_none()));
        assert!(flood[45..].iter().all(|id| sessions.get(id).is_some()));
        assert!(
            sessions.get(&fourth).is_some(),
            "b's sessions survive a's flood"
        );
        // Overall: distinct users and addresses, in process; the table
        // never outgrows its cap and the newest login always stands.
        for i in 0..100 {
            let id = sessions.insert(live(), &format!("many{i}"), None);
            assert!(sessions.get(&id).is_some());
            assert!(sessions.count() <= 20);
        }
    }

    #[test]
    fn login_tokens_are_signed_and_expire() {
        let key = LoginKey::default();
        let now = Utc::now().timestamp();
        let token = key.issue_at(now);
        assert!(key.verify_at(&token, now));
        assert!(key.verify_at(&token, now + LOGIN_TOKEN_SECONDS));
        assert!(
            !key.verify_at(&token, now + LOGIN_TOKEN_SECONDS + 1),
            "stale"
        );
        assert!(!key.verify_at(&token, now - 120), "from the future");
        assert!(
            !LoginKey::default().verify_at(&token, now),
            "another process's key"
        );
        // Chosen by the client, or altered anywhere.
        assert!(!key.verify_at("attacker-chosen", now));
        assert!(!key.verify_at(&"0".repeat(112), now));
        let mut altered = token.clone().into_bytes();
        altered[40] = if altered[40] == b'0' { b'1' } else { b'0' };
        assert!(!key.verify_at(&String::from_utf8(altered).unwrap(), now));
        assert_ne!(key.issue_at(now), token, "a fresh nonce each time");
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(set_cookie(COOKIE, &a, None, true).contains("HttpOnly; SameSite=Strict; Secure"));
    }
}
