//! Validating user tokens with the service's own credentials, with a cache (server side).
//!
//! The server logs in as its own service user (password, project-scoped),
//! keeps that token and renews it shortly before it expires, and asks
//! Keystone about each user token it has not seen recently
//! (`GET /v3/auth/tokens?nocatalog`). Answers are cached for at most
//! `token_cache_time` and never past the token's own `expires_at`.
//!
//! Refusals are remembered too, for a short time (`refused_cache_time`, at
//! most `token_cache_time`): a client retrying with an expired or revoked
//! token, or a flood of one bad token, costs Keystone one request instead of
//! one per attempt. A remembered refusal can only ever refuse again; it is
//! keyed by a 128-bit keyed hash (no token text is kept), so its memory is
//! bounded whatever the tokens look like, and a collision could at worst
//! refuse a valid token for that short time, never accept one.
//!
//! Every doubt is an error: a token Keystone does not vouch for is
//! [`ValidateError::Invalid`] (HTTP 401 for the caller), and a Keystone that
//! cannot be asked is [`ValidateError::Unavailable`] (HTTP 503). Nothing here
//! ever answers "valid" without Keystone having said so within the cache bound.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::json;

use crate::auth::{Tls, TlsError};
use crate::token::{Token, TokenBody};

/// Why a user token was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    /// Keystone does not know the token, or it expired or was revoked: the
    /// caller must authenticate again (HTTP 401).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Keystone could not be asked, or refused Navigator's own credentials:
    /// nothing can be decided (HTTP 503).
    #[error("keystone unavailable: {0}")]
    Unavailable(String),
}

/// A failure of an administrative call (login, catalog registration).
#[derive(Debug, thiserror::Error)]
pub enum KeystoneError {
    #[error("cannot reach keystone at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("keystone answered {status} to {what}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from keystone to {what}: {message}")]
    Protocol { what: String, message: String },
    /// A CA bundle, client certificate or key that cannot be used; the
    /// caller knows which option named it (`TlsError::file`).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Password credentials, in keystonemiddleware's `[keystone_authtoken]` terms.
#[derive(Clone)]
pub struct PasswordCredentials {
    /// Keystone's URL, with or without `/v3`.
    pub auth_url: String,
    pub username: String,
    pub password: String,
    pub project_name: String,
    pub user_domain_name: String,
    pub project_domain_name: String,
}

impl std::fmt::Debug for PasswordCredentials {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordCredentials")
            .field("auth_url", &self.auth_url)
            .field("username", &self.username)
            .field("password", &"***")
            .field("project_name", &self.project_name)
            .field("user_domain_name", &self.user_domain_name)
            .field("project_domain_name", &self.project_domain_name)
            .finish()
    }
}

/// How the validator behaves.
#[derive(Clone, Debug)]
pub struct ValidatorConfig {
    pub credentials: PasswordCredentials,
    /// Longest time a validation is trusted without asking Keystone again
    /// (`token_cache_time`); zero disables the cache.
    pub cache_time: Duration,
    /// Most tokens remembered at once; beyond it the soonest-expiring go first.
    pub cache_capacity: usize,
    /// How long Keystone's refusal of a token is remembered (capped by
    /// `cache_time`; zero disables it).
    pub refused_cache_time: Duration,
    /// Most refusals remembered at once; when full of live ones, new
    /// refusals are not remembered (each then costs a Keystone request).
    pub refused_capacity: usize,
    /// Limit on each request to Keystone, connection included.
    pub timeout: Duration,
    /// How Keystone's certificate is checked, and the client certificate
    /// (`[keystone_authtoken] cafile`, `insecure`, `certfile`, `keyfile`).
    pub tls: Tls,
}

impl ValidatorConfig {
    pub fn new(credentials: PasswordCredentials, cache_time: Duration) -> ValidatorConfig {
        ValidatorConfig {
            credentials,
            cache_time,
            cache_capacity: 10_000,
            refused_cache_time: DEFAULT_REFUSED_CACHE_TIME,
            refused_capacity: 10_000,
            timeout: Duration::from_secs(10),
            tls: Tls::default(),
        }
    }
}

/// Default of [`ValidatorConfig::refused_cache_time`]: long enough to absorb
/// retry loops and floods, short enough that nobody waits on it.
pub const DEFAULT_REFUSED_CACHE_TIME: Duration = Duration::from_secs(10);

/// `auth_url` normalised to end in `/v3` (keystonemiddleware accepts both).
pub fn v3_url(auth_url: &str) -> String {
    let trimmed = auth_url.trim().trim_end_matches('/');
    if trimmed.ends_with("/v3") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v3")
    }
}

/// An HTTP client for Keystone. No connection reuse: Keystone under uwsgi's
/// `--http-socket` closes kept-alive connections without saying so, and a
/// pooled client then fails the next request with a reset.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, KeystoneError> {
    http_client_with(timeout, &Tls::default())
}

/// [`http_client`] checking Keystone's certificate as `tls` says (and
/// presenting its client certificate); its files are read here.
pub fn http_client_with(timeout: Duration, tls: &Tls) -> Result<reqwest::Client, KeystoneError> {
    // reqwest is built without a default crypto provider and panics when it
    // builds a client with none installed; an error here only means one is
    // installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("navigator/", env!("CARGO_PKG_VERSION")));
    tls.configure(builder)?
        .build()
        .map_err(|e| KeystoneError::Protocol {
            what: "building an HTTP client".into(),
            message: error_chain(&e),
        })
}

fn unreachable(url: &str, e: &reqwest::Error) -> KeystoneError {
    KeystoneError::Unreachable {
        url: url.to_owned(),
        message: error_chain(e),
    }
}

/// reqwest's top-level message is "error sending request"; the cause
/// ("connection refused", "operation timed out") is what an operator needs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Keystone's error message from a `{"error": {"message": ...}}` body, or the body.
async fn error_message(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

/// `token` as a header value marked sensitive (hidden from `Debug`), or
/// `None` when it cannot be one.
fn secret_header(token: &str) -> Option<reqwest::header::HeaderValue> {
    let mut value = reqwest::header::HeaderValue::from_str(token).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// `text` (Keystone's words, bound for a log line) with every token in
/// `tokens` replaced by `<token>`: a bearer token in a log is a leaked one.
fn redact(text: String, tokens: &[&str]) -> String {
    tokens
        .iter()
        .filter(|t| !t.is_empty())
        .fold(text, |text, token| text.replace(token, "<token>"))
}

/// A token Navigator obtained for itself.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub id: String,
    pub token: Token,
    pub expires_at: DateTime<Utc>,
}

/// Logs in with `credentials`, scoped to their project, and returns the token.
pub async fn password_token(
    http: &reqwest::Client,
    credentials: &PasswordCredentials,
) -> Result<IssuedToken, KeystoneError> {
    let url = format!("{}/auth/tokens?nocatalog", v3_url(&credentials.auth_url));
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": credentials.username,
            "domain": {"name": credentials.user_domain_name},
            "password": credentials.password,
        }}},
        // Explicit scope: Keystone silently scopes an unscoped login to the
        // user's default project, which need not be the one configured.
        "scope": {"project": {
            "name": credentials.project_name,
            "domain": {"name": credentials.project_domain_name},
        }},
    }});
    let what = format!("password login of {}", credentials.username);
    let response = http
        .post(&url)
        .header(reqwest::header::CONNECTION, "close")
        .json(&body)
        .send()
        .await
        .map_err(|e| unreachable(&url, &e))?;
    let status = response.status();
    if status != StatusCode::CREATED && status != StatusCode::OK {
        return Err(KeystoneError::Status {
            what,
            status: status.as_u16(),
            message: error_message(response).await,
        });
    }
    let id = response
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| KeystoneError::Protocol {
            what: what.clone(),
            message: "no X-Subject-Token header".into(),
        })?;
    let body: TokenBody = response.json().await.map_err(|e| KeystoneError::Protocol {
        what: what.clone(),
        message: error_chain(&e),
    })?;
    let expires_at = body
        .token
        .expires_at()
        .map_err(|e| KeystoneError::Protocol {
            what,
            message: e.to_string(),
        })?;
    Ok(IssuedToken {
        id,
        token: body.token,
        expires_at,
    })
}

/// One remembered validation. The raw token is kept to compare on lookup:
/// the map key is only a 64-bit hash, and a collision must never hand one
/// user's identity to another.
struct Entry {
    raw: String,
    token: Arc<Token>,
    token_expires_at: DateTime<Utc>,
    /// When Keystone must be asked again: min(now + cache_time, expires_at).
    recheck_at: Instant,
}

struct Cache {
    hasher: RandomState,
    entries: HashMap<u64, Entry>,
    /// Second key for the refusal map: with `hasher`, 128 bits.
    refused_hasher: RandomState,
    /// Refused tokens by their two keyed hashes, until when they stay refused.
    refused: HashMap<(u64, u64), Instant>,
}

impl Cache {
    fn refused_key(&self, raw: &str) -> (u64, u64) {
        (self.hasher.hash_one(raw), self.refused_hasher.hash_one(raw))
    }
}

/// Validates user tokens; share one per server (it is `Send + Sync`).
pub struct Validator {
    config: ValidatorConfig,
    url: String,
    http: reqwest::Client,
    /// The service token, renewed by whoever finds it stale; the async lock
    /// makes concurrent requests wait for one login instead of each logging in.
    service: tokio::sync::Mutex<Option<IssuedToken>>,
    cache: Mutex<Cache>,
}

/// Renew the service token this long before it expires, so that it never
/// expires between being read and being used.
const RENEW_MARGIN: Duration = Duration::from_secs(120);

impl Validator {
    pub fn new(config: ValidatorConfig) -> Result<Validator, KeystoneError> {
        Ok(Validator {
            url: v3_url(&config.credentials.auth_url),
            http: http_client_with(config.timeout, &config.tls)?,
            config,
            service: tokio::sync::Mutex::new(None),
            cache: Mutex::new(Cache {
                hasher: RandomState::new(),
                entries: HashMap::new(),
                refused_hasher: RandomState::new(),
                refused: HashMap::new(),
            }),
        })
    }

    /// Keystone's v3 URL this validator talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The identity behind `user_token`, from the cache or from Keystone.
    pub async fn validate(&self, user_token: &str) -> Result<Arc<Token>, ValidateError> {
        let user_token = user_token.trim();
        if user_token.is_empty() {
            return Err(ValidateError::Invalid("empty token".into()));
        }
        if let Some(hit) = self.cached(user_token)? {
            return Ok(hit);
        }
        match self.ask_keystone_and_check(user_token).await {
            Ok((token, expires_at)) => {
                self.remember(user_token, &token, expires_at);
                Ok(token)
            }
            Err(ValidateError::Invalid(reason)) => {
                self.remember_refusal(user_token);
                Err(ValidateError::Invalid(reason))
            }
            // Keystone could not say: nothing to remember.
            Err(e) => Err(e),
        }
    }

    /// Revokes `user_token` (`DELETE /v3/auth/tokens`, authorised by the
    /// token itself: Keystone lets a token's owner revoke it) and forgets it
    /// here, so this server refuses it at once instead of trusting its cache
    /// for up to `token_cache_time`. A token Keystone no longer knows is
    /// revoked already.
    pub async fn revoke(&self, user_token: &str) -> Result<(), ValidateError> {
        let user_token = user_token.trim();
        {
            let mut cache = self.lock_cache();
            let key = cache.hasher.hash_one(user_token);
            if cache.entries.get(&key).is_some_and(|e| e.raw == user_token) {
                cache.entries.remove(&key);
            }
        }
        self.remember_refusal(user_token);
        let Some(subject) = secret_header(user_token) else {
            return Ok(());
        };
        let url = format!("{}/auth/tokens", self.url);
        let response = self
            .http
            .delete(&url)
            .header(reqwest::header::CONNECTION, "close")
            .header("X-Auth-Token", subject.clone())
            .header("X-Subject-Token", subject)
            .send()
            .await
            .map_err(|e| {
                ValidateError::Unavailable(format!("cannot reach {url}: {}", error_chain(&e)))
            })?;
        match response.status() {
            status if status.is_success() => Ok(()),
            StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED => Ok(()),
            other => Err(ValidateError::Unavailable(format!(
                "keystone answered {other} to a token revocation: {}",
                redact(error_message(response).await, &[user_token])
            ))),
        }
    }

    /// Keystone's answer, and until when the token is valid.
    async fn ask_keystone_and_check(
        &self,
        user_token: &str,
    ) -> Result<(Arc<Token>, DateTime<Utc>), ValidateError> {
        let token = Arc::new(self.ask_keystone(user_token).await?);
        let expires_at = token.expires_at().map_err(|e| {
            // Keystone vouched for it but we cannot tell until when: refuse
            // rather than trust it forever.
            ValidateError::Invalid(format!("token has an unreadable expiry: {e}"))
        })?;
        if expires_at <= Utc::now() {
            return Err(ValidateError::Invalid("token expired".into()));
        }
        Ok((token, expires_at))
    }

    /// How long refusals are remembered: zero when disabled.
    fn refused_cache_time(&self) -> Duration {
        if self.config.refused_capacity == 0 {
            return Duration::ZERO;
        }
        self.config.refused_cache_time.min(self.config.cache_time)
    }

    fn remember_refusal(&self, raw: &str) {
        let keep = self.refused_cache_time();
        if keep.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.lock_cache();
        if cache.refused.len() >= self.config.refused_capacity {
            cache.refused.retain(|_, until| *until > now);
        }
        if cache.refused.len() >= self.config.refused_capacity {
            // Full of live refusals (a flood of distinct tokens): remembering
            // one more would not spare Keystone anything the others do not.
            return;
        }
        let key = cache.refused_key(raw);
        cache.refused.insert(key, now + keep);
    }

    /// Number of refusals remembered (for tests and metrics).
    pub fn refused_len(&self) -> usize {
        self.lock_cache().refused.len()
    }

    /// The service token currently held, if any (tests revoke it to check
    /// that the validator logs in again).
    pub async fn service_token_id(&self) -> Option<String> {
        self.service.lock().await.as_ref().map(|t| t.id.clone())
    }

    /// Number of validations remembered (for tests and metrics).
    pub fn cached_len(&self) -> usize {
        self.lock_cache().entries.len()
    }

    /// Forgets every cached validation and refusal.
    pub fn clear_cache(&self) {
        let mut cache = self.lock_cache();
        cache.entries.clear();
        cache.refused.clear();
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves at worst a stale entry whose
        // expiry is still checked on every lookup, so the data stays usable.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached(&self, raw: &str) -> Result<Option<Arc<Token>>, ValidateError> {
        if self.config.cache_time.is_zero() {
            return Ok(None);
        }
        let mut cache = self.lock_cache();
        let key = cache.hasher.hash_one(raw);
        let Some(entry) = cache.entries.get(&key) else {
            return Self::refused_recently(&mut cache, raw);
        };
        if entry.raw != raw {
            return Ok(None);
        }
        if entry.token_expires_at <= Utc::now() {
            cache.entries.remove(&key);
            return Err(ValidateError::Invalid("token expired".into()));
        }
        if entry.recheck_at <= Instant::now() {
            cache.entries.remove(&key);
            return Ok(None);
        }
        Ok(Some(entry.token.clone()))
    }

    /// `Invalid` when Keystone refused `raw` a short while ago, else a miss.
    fn refused_recently(cache: &mut Cache, raw: &str) -> Result<Option<Arc<Token>>, ValidateError> {
        if cache.refused.is_empty() {
            return Ok(None);
        }
        let key = cache.refused_key(raw);
        match cache.refused.get(&key) {
            Some(until) if *until > Instant::now() => Err(ValidateError::Invalid(
                "keystone refused this token a moment ago".into(),
            )),
            Some(_) => {
                cache.refused.remove(&key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn remember(&self, raw: &str, token: &Arc<Token>, expires_at: DateTime<Utc>) {
        if self.config.cache_time.is_zero() || self.config.cache_capacity == 0 {
            return;
        }
        let left = (expires_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let now = Instant::now();
        let recheck_at = now + left.min(self.config.cache_time);
        let mut cache = self.lock_cache();
        if cache.entries.len() >= self.config.cache_capacity {
            cache.entries.retain(|_, e| e.recheck_at > now);
        }
        if cache.entries.len() >= self.config.cache_capacity {
            // Still full of live entries: drop the one Keystone must be asked
            // about soonest anyway. O(n), but only when the cache is full.
            if let Some(key) = cache
                .entries
                .iter()
                .min_by_key(|(_, e)| e.recheck_at)
                .map(|(k, _)| *k)
            {
                cache.entries.remove(&key);
            }
        }
        let key = cache.hasher.hash_one(raw);
        cache.entries.insert(
            key,
            Entry {
                raw: raw.to_owned(),
                token: token.clone(),
                token_expires_at: expires_at,
                recheck_at,
            },
        );
    }

    /// A service token valid for at least [`RENEW_MARGIN`] (or half its
    /// lifetime, for very short-lived ones), logging in if needed.
    async fn service_token(&self, force_renew: bool) -> Result<String, ValidateError> {
        let mut service = self.service.lock().await;
        if let Some(current) = service.as_ref().filter(|_| !force_renew) {
            let lifetime = current
                .token
                .issued_at
                .as_deref()
                .and_then(|t| crate::token::parse_time(t).ok())
                .and_then(|issued| (current.expires_at - issued).to_std().ok())
                .unwrap_or(RENEW_MARGIN * 2);
            let margin = RENEW_MARGIN.min(lifetime / 2);
            let renew_at = current.expires_at
                - chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::zero());
            if Utc::now() < renew_at {
                return Ok(current.id.clone());
            }
        }
        let issued = password_token(&self.http, &self.config.credentials)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot obtain navigator's service token");
                ValidateError::Unavailable(format!("cannot obtain the service token: {e}"))
            })?;
        tracing::debug!(expires_at = %issued.expires_at, "obtained a service token");
        let id = issued.id.clone();
        *service = Some(issued);
        Ok(id)
    }

    async fn ask_keystone(&self, user_token: &str) -> Result<Token, ValidateError> {
        // Marked sensitive, so that no debug output of the request shows it.
        let Some(subject) = secret_header(user_token) else {
            return Err(ValidateError::Invalid(
                "the token is not a valid header value".into(),
            ));
        };
        let mut renewed = false;
        loop {
            let service_token = self.service_token(renewed).await?;
            let Some(service) = secret_header(&service_token) else {
                return Err(ValidateError::Unavailable(
                    "keystone issued a service token that is not a valid header value".into(),
                ));
            };
            let url = format!("{}/auth/tokens?nocatalog", self.url);
            let response = self
                .http
                .get(&url)
                .header(reqwest::header::CONNECTION, "close")
                .header("X-Auth-Token", service)
                .header("X-Subject-Token", subject.clone())
                .send()
                .await
                .map_err(|e| {
                    ValidateError::Unavailable(format!("cannot reach {url}: {}", error_chain(&e)))
                })?;
            let status = response.status();
            match status {
                StatusCode::OK => {
                    let body: TokenBody = response.json().await.map_err(|e| {
                        ValidateError::Unavailable(format!(
                            "unreadable token validation from keystone: {}",
                            error_chain(&e)
                        ))
                    })?;
                    return Ok(body.token);
                }
                // Keystone says 404 for a subject token it does not
                // recognise, that expired or that was revoked. Its message
                // ("Could not find token: <the token>") quotes the token, and
                // the reason is logged: it is not kept.
                StatusCode::NOT_FOUND => {
                    return Err(ValidateError::Invalid(
                        "keystone does not know the token (unknown, expired or revoked)".into(),
                    ));
                }
                // Our own token was refused (expired early, revoked, keys
                // rotated): log in again, once.
                StatusCode::UNAUTHORIZED if !renewed => {
                    tracing::info!("keystone refused the service token; logging in again");
                    renewed = true;
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(ValidateError::Unavailable(format!(
                        "keystone refused a fresh service token: {}",
                        redact(error_message(response).await, &[user_token, &service_token])
                    )));
                }
                // The service user may not validate others' tokens: a
                // deployment error, not the caller's fault.
                StatusCode::FORBIDDEN => {
                    let message =
                        redact(error_message(response).await, &[user_token, &service_token]);
                    tracing::error!(%message, "navigator's service user may not validate tokens; give it the service (or admin) role");
                    return Err(ValidateError::Unavailable(format!(
                        "the service user may not validate tokens: {message}"
                    )));
                }
                other => {
                    return Err(ValidateError::Unavailable(format!(
                        "keystone answered {other} to a token validation: {}",
                        redact(error_message(response).await, &[user_token, &service_token])
                    )));
                }
            }
        }
    }
}

/// One endpoint of a service in the catalog.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    /// `public`, `internal` or `admin`.
    pub interface: String,
    pub url: String,
}

/// What [`register_service`] did, for the operator.
#[derive(Clone, Debug, Default)]
pub struct RegisterReport {
    pub service_id: String,
    pub service_created: bool,
    pub region_created: bool,
    pub endpoints_created: Vec<String>,
    pub endpoints_updated: Vec<String>,
    pub endpoints_unchanged: Vec<String>,
}

/// A Keystone admin session for catalog registration.
struct Admin<'a> {
    http: &'a reqwest::Client,
    url: String,
    token: String,
}

impl Admin<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        what: &str,
    ) -> Result<(StatusCode, serde_json::Value), KeystoneError> {
        let url = format!("{}{path}", self.url);
        let mut request = self
            .http
            .request(method, &url)
            .header(reqwest::header::CONNECTION, "close")
            .header("X-Auth-Token", &self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| unreachable(&url, &e))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok((status, serde_json::Value::Null));
        }
        if !status.is_success() {
            return Err(KeystoneError::Status {
                what: what.to_owned(),
                status: status.as_u16(),
                message: error_message(response).await,
            });
        }
        let value = response.json().await.map_err(|e| KeystoneError::Protocol {
            what: what.to_owned(),
            message: error_chain(&e),
        })?;
        Ok((status, value))
    }
}

fn string_field(value: &serde_json::Value, what: &str) -> Result<String, KeystoneError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| KeystoneError::Protocol {
            what: what.to_owned(),
            message: "missing id".into(),
        })
}

/// Creates (or brings up to date) the catalog entry of a service: the
/// service found by type and name, the region, and one endpoint per
/// interface. Idempotent: running it twice changes nothing the second time.
pub async fn register_service(
    admin: &PasswordCredentials,
    name: &str,
    service_type: &str,
    description: &str,
    region: &str,
    endpoints: &[EndpointSpec],
) -> Result<RegisterReport, KeystoneError> {
    register_service_with(
        admin,
        &Tls::default(),
        name,
        service_type,
        description,
        region,
        endpoints,
    )
    .await
}

/// [`register_service`], checking Keystone's certificate as `tls` says.
pub async fn register_service_with(
    admin: &PasswordCredentials,
    tls: &Tls,
    name: &str,
    service_type: &str,
    description: &str,
    region: &str,
    endpoints: &[EndpointSpec],
) -> Result<RegisterReport, KeystoneError> {
    let http = http_client_with(Duration::from_secs(30), tls)?;
    let login = password_token(&http, admin).await?;
    let admin = Admin {
        http: &http,
        url: v3_url(&admin.auth_url),
        token: login.id,
    };
    let mut report = RegisterReport::default();

    let (_, services) = admin
        .call(
            reqwest::Method::GET,
            &format!("/services?type={service_type}"),
            None,
            "list services",
        )
        .await?;
    let existing = services["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name);
    report.service_id = match existing {
        Some(service) => string_field(&service["id"], "list services")?,
        None => {
            let (_, created) = admin
                .call(
                    reqwest::Method::POST,
                    "/services",
                    Some(json!({"service": {
                        "name": name, "type": service_type,
                        "description": description, "enabled": true,
                    }})),
                    "create service",
                )
                .await?;
            report.service_created = true;
            string_field(&created["service"]["id"], "create service")?
        }
    };

    let (status, _) = admin
        .call(
            reqwest::Method::GET,
            &format!("/regions/{region}"),
            None,
            "show region",
        )
        .await?;
    if status == StatusCode::NOT_FOUND {
        admin
            .call(
                reqwest::Method::POST,
                "/regions",
                Some(json!({"region": {"id": region}})),
                "create region",
            )
            .await?;
        report.region_created = true;
    }

    let (_, listed) = admin
        .call(
            reqwest::Method::GET,
            &format!("/endpoints?service_id={}", report.service_id),
            None,
            "list endpoints",
        )
        .await?;
    let current: Vec<serde_json::Value> =
        listed["endpoints"].as_array().cloned().unwrap_or_default();
    for spec in endpoints {
        let found = current.iter().find(|e| {
            e["interface"] == spec.interface.as_str()
                && (e["region_id"] == region || e["region"] == region)
        });
        match found {
            Some(endpoint) if endpoint["url"] == spec.url.as_str() => {
                report.endpoints_unchanged.push(spec.interface.clone());
            }
            Some(endpoint) => {
                let id = string_field(&endpoint["id"], "list endpoints")?;
                admin
                    .call(
                        reqwest::Method::PATCH,
                        &format!("/endpoints/{id}"),
                        Some(json!({"endpoint": {"url": spec.url}})),
                        "update endpoint",
                    )
                    .await?;
                report.endpoints_updated.push(spec.interface.clone());
            }
            None => {
                admin
                    .call(
                        reqwest::Method::POST,
                        "/endpoints",
                        Some(json!({"endpoint": {
                            "service_id": report.service_id, "interface": spec.interface,
                            "region_id": region, "url": spec.url, "enabled": true,
                        }})),
                        "create endpoint",
                    )
                    .await?;
                report.endpoints_created.push(spec.interface.clone());
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: &str) -> Token {
        serde_json::from_value(json!({
            "methods": ["password"],
            "user": {"id": "u1", "name": "alice"},
            "project": {"id": "p1", "name": "demo"},
            "roles": [{"id": "r", "name": "member"}],
            "expires_at": expires_at,
        }))
        .unwrap()
    }

    fn validator(cache_time: Duration) -> Validator {
        Validator::new(ValidatorConfig {
            credentials: PasswordCredentials {
                // Nothing listens on port 9 of loopback: any call to
                // Keystone fails, so hits can only come from the cache.
                auth_url: "http://127.0.0.1:9".into(),
                username: "navigator".into(),
                password: "secret".into(),
                project_name: "service".into(),
                user_domain_name: "Default".into(),
                project_domain_name: "Default".into(),
            },
            cache_time,
            cache_capacity: 2,
            refused_cache_time: Duration::from_millis(300),
            refused_capacity: 2,
            timeout: Duration::from_secs(2),
            tls: Tls::default(),
        })
        .unwrap()
    }

    fn format_both(t: DateTime<Utc>) -> [String; 2] {
        [
            t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            t.format("%Y-%m-%dT%H:%M:%S").to_string(),
        ]
    }

    #[test]
    fn v3_url_accepts_both_spellings() {
        assert_eq!(v3_url("http://k:5000"), "http://k:5000/v3");
        assert_eq!(v3_url("http://k:5000/v3/"), "http://k:5000/v3");
        assert_eq!(v3_url("http://k/identity/v3"), "http://k/identity/v3");
    }

    #[test]
    fn password_is_not_printed() {
        let v = validator(Duration::from_secs(1));
        assert!(!format!("{:?}", v.config).contains("secret"));
    }

    #[tokio::test]
    async fn cache_hits_until_the_bound_in_both_expiry_forms() {
        for text in format_both(Utc::now() + chrono::Duration::hours(1)) {
            let v = validator(Duration::from_millis(300));
            let t = Arc::new(token(&text));
            v.remember("tok", &t, t.expires_at().unwrap());
            assert_eq!(v.validate("tok").await.unwrap().user.id, "u1", "{text}");
            std::thread::sleep(Duration::from_millis(350));
            // Past the cache bound Keystone must be asked, and it is down.
            assert!(matches!(
                v.validate("tok").await,
                Err(ValidateError::Unavailable(_))
            ));
        }
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_even_when_cached() {
        for text in format_both(Utc::now() + chrono::Duration::seconds(1)) {
            let v = validator(Duration::from_secs(300));
            let t = Arc::new(token(&text));
            v.remember("tok", &t, t.expires_at().unwrap());
            // Whole seconds: the no-fraction form may be up to 1 s earlier.
            std::thread::sleep(Duration::from_millis(1100));
            assert_eq!(
                v.validate("tok").await.unwrap_err(),
                ValidateError::Invalid("token expired".into()),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn cache_entries_never_outlive_the_token() {
        let v = validator(Duration::from_secs(300));
        let expires = Utc::now() + chrono::Duration::milliseconds(1500);
        let t = Arc::new(token(&expires.to_rfc3339()));
        v.remember("tok", &t, expires);
        let cache = v.lock_cache();
        let entry = cache.entries.values().next().unwrap();
        assert!(entry.recheck_at <= Instant::now() + Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn a_different_token_with_the_same_key_is_not_a_hit() {
        let v = validator(Duration::from_secs(300));
        let t = Arc::new(token(
            &(Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        ));
        v.remember("tok", &t, t.expires_at().unwrap());
        // Forge a collision: the entry under "tok"'s key holds another raw token.
        {
            let mut cache = v.lock_cache();
            let key = cache.hasher.hash_one("tok");
            let entry = cache.entries.get_mut(&key).unwrap();
            entry.raw = "other".into();
        }
        assert!(v.cached("tok").unwrap().is_none());
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let v = validator(Duration::from_secs(300));
        let t = Arc::new(token(
            &(Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        ));
        for raw in ["a", "b", "c", "d"] {
            v.remember(raw, &t, t.expires_at().unwrap());
        }
        assert_eq!(v.cached_len(), 2);
    }

    /// A stand-in Keystone on loopback that logs the service user in and
    /// refuses (404) every token it is asked about, counting those requests.
    async fn refusing_keystone() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v3", listener.local_addr().unwrap());
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Headers, then a body of Content-Length bytes.
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    let (status, extra, body) = if request.starts_with(b"DELETE") {
                        let text = String::from_utf8_lossy(&request).into_owned();
                        if text.contains("boom") {
                            let body = json!({"error": {"code": 500, "message": "cannot revoke boom-secret"}});
                            ("500 Internal Server Error", "", body)
                        } else {
                            ("204 No Content", "", serde_json::Value::Null)
                        }
                    } else if request.starts_with(b"POST") {
                        let expires = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
                        let body = json!({"token": {
                            "methods": ["password"],
                            "user": {"id": "svc", "name": "navigator"},
                            "project": {"id": "s", "name": "service"},
                            "roles": [{"id": "r", "name": "service"}],
                            "expires_at": expires,
                        }});
                        ("201 Created", "X-Subject-Token: service-token\r\n", body)
                    } else {
                        counter.fetch_add(1, Ordering::SeqCst);
                        // As Keystone does, the answer quotes the token.
                        let text = String::from_utf8_lossy(&request).into_owned();
                        let subject = text
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("x-subject-token")
                                    .then(|| value.trim().to_owned())
                            })
                            .unwrap_or_default();
                        if subject.starts_with("boom") {
                            let message = format!("unexpected error validating {subject}");
                            let body = json!({"error": {"code": 500, "message": message}});
                            ("500 Internal Server Error", "", body)
                        } else {
                            let message = format!("Could not find token: {subject}");
                            let body = json!({"error": {"code": 404, "message": message}});
                            ("404 Not Found", "", body)
                        }
                    };
                    let body = if body.is_null() {
                        String::new()
                    } else {
                        body.to_string()
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        (url, asked)
    }

    fn validator_at(url: &str, cache_time: Duration, refused_cache_time: Duration) -> Validator {
        let mut config = validator(cache_time).config.clone();
        config.credentials.auth_url = url.to_owned();
        config.refused_cache_time = refused_cache_time;
        Validator::new(config).unwrap()
    }

    #[tokio::test]
    async fn a_refusal_is_remembered_for_a_short_bounded_time() {
        use std::sync::atomic::Ordering;
        let (url, asked) = refusing_keystone().await;
        let v = validator_at(&url, Duration::from_secs(300), Duration::from_millis(300));
        assert!(matches!(
            v.validate("bad").await,
            Err(ValidateError::Invalid(_))
        ));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Refused again without asking Keystone.
        for _ in 0..5 {
            assert!(matches!(
                v.validate("bad").await,
                Err(ValidateError::Invalid(_))
            ));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(
            v.cached_len(),
            0,
            "a refusal never lands in the valid cache"
        );
        // Another token is asked about on its own.
        assert!(matches!(
            v.validate("worse").await,
            Err(ValidateError::Invalid(_))
        ));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // Past the bound, Keystone is asked again.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(matches!(
            v.validate("bad").await,
            Err(ValidateError::Invalid(_))
        ));
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    /// Keystone quotes the token in its answers; no reason Navigator keeps
    /// (and logs) carries it.
    #[tokio::test]
    async fn reasons_never_carry_the_token() {
        let (url, _) = refusing_keystone().await;
        let v = validator_at(&url, Duration::ZERO, Duration::ZERO);
        for token in ["gAAAAAsecret-subject-token", "boom-secret-subject-token"] {
            let Err(ValidateError::Invalid(reason) | ValidateError::Unavailable(reason)) =
                v.validate(token).await
            else {
                panic!("{token} was accepted");
            };
            assert!(!reason.contains("secret"), "{token}: {reason}");
        }
        match v.validate("boom-secret-subject-token").await {
            Err(ValidateError::Unavailable(reason)) => {
                assert!(reason.contains("validating <token>"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// Logout: a revoked token leaves the cache and is refused at once,
    /// without asking Keystone; a failed revocation says so, token-free.
    #[tokio::test]
    async fn a_revoked_token_is_forgotten_and_refused() {
        use std::sync::atomic::Ordering;
        let (url, asked) = refusing_keystone().await;
        let v = validator_at(&url, Duration::from_secs(300), Duration::from_secs(10));
        let t = Arc::new(token(
            &(Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        ));
        v.remember("user-token", &t, t.expires_at().unwrap());
        assert!(v.validate("user-token").await.is_ok(), "cached");
        v.revoke("user-token").await.unwrap();
        assert!(matches!(
            v.validate("user-token").await,
            Err(ValidateError::Invalid(_))
        ));
        assert_eq!(asked.load(Ordering::SeqCst), 0, "refused from memory");
        match v.revoke("boom-secret").await {
            Err(ValidateError::Unavailable(reason)) => {
                assert!(!reason.contains("boom-secret"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn refusals_are_bounded_in_number_and_by_the_cache_time() {
        use std::sync::atomic::Ordering;
        let (url, asked) = refusing_keystone().await;
        // Capacity 2 (see `validator`): a third live refusal is not kept.
        let v = validator_at(&url, Duration::from_secs(300), Duration::from_secs(60));
        for raw in ["a", "b", "c"] {
            assert!(v.validate(raw).await.is_err());
        }
        assert_eq!(v.refused_len(), 2);
        assert!(v.validate("c").await.is_err());
        assert_eq!(asked.load(Ordering::SeqCst), 4, "c was not remembered");
        // token_cache_time = 0 disables every cache, refusals included.
        let v = validator_at(&url, Duration::ZERO, Duration::from_secs(60));
        assert!(v.validate("a").await.is_err());
        assert!(v.validate("a").await.is_err());
        assert_eq!(v.refused_len(), 0);
        assert_eq!(asked.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn keystone_down_is_unavailable_never_valid() {
        let v = validator(Duration::from_secs(300));
        assert!(matches!(
            v.validate("anything").await,
            Err(ValidateError::Unavailable(_))
        ));
        assert!(matches!(
            v.validate("  ").await,
            Err(ValidateError::Invalid(_))
        ));
    }
}
