//! The built-in web page at `/dashboard`, for all-in-one and standalone
//! deployments without Horizon: log in (Keystone credentials, or a project
//! with noauth on loopback), list forwards with live status, create,
//! retarget and delete them, and (for admins) see the proxies.
//!
//! It is server-rendered HTML ([`html`]) with one small script that refreshes
//! the status column. It holds no power of its own: every read and change is
//! a request to the REST router with the session's credential ([`api`]), so
//! authentication, policy, validation and audit are the API's. Sessions,
//! cookies and CSRF checks are in [`session`].
//!
//! The page is not part of the OpenAPI document: it is HTML for people.

mod api;
mod html;
mod session;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{Duration as ChronoDuration, Utc};
use navigator_api::quota::QuotaDetailsBody;
use navigator_api::v1::{ForwardBody, ForwardDetailBody, ForwardList, ProxyList};
use navigator_keystone::auth::{AuthError, Credentials, DomainRef, ProjectRef, Secret, UserRef};
use serde_json::{Value, json};

use crate::app::AppState;
use api::Failure;
use html::FormState;
use session::{COOKIE, Credential, LOGIN_COOKIE, Session, Sessions, SharedLoginKey};

/// How long a noauth session lasts (there is no token to expire with).
const NOAUTH_SESSION_HOURS: i64 = 8;
/// Form bodies are small; anything bigger is not ours.
const MAX_FORM_BYTES: usize = 64 * 1024;

const CSS: &str = include_str!("static/dashboard.css");
const JS: &str = include_str!("static/dashboard.js");
const ICON: &str = include_str!("static/favicon.svg");

/// What the dashboard's handlers share.
struct Dashboard {
    /// The REST router, called in process with the session's credential.
    api: Router,
    /// In the database, shared with every other server.
    sessions: Sessions,
    /// Signs the login form's tokens; the same in every server.
    login_key: SharedLoginKey,
    /// Keystone's v3 URL for logins, when `auth_strategy = keystone`.
    keystone_url: Option<String>,
    /// `[keystone_authtoken]` TLS options, for those logins.
    keystone_tls: navigator_keystone::auth::Tls,
    /// noauth logins are only offered when the API listens on loopback.
    noauth_allowed: bool,
    /// The API's authentication, whose validator revokes a session's
    /// Keystone token at logout.
    auth: Arc<crate::auth::Auth>,
}

type Shared = Arc<Dashboard>;

/// Adds the dashboard's routes in front of `api` (the REST router, which
/// answers every other path).
pub fn mount(api: Router, state: &AppState) -> Router {
    let keystone_url = state
        .auth
        .is_keystone()
        .then(|| crate::auth::www_authenticate_uri(&state.config.keystone_authtoken));
    let dashboard = Arc::new(Dashboard {
        api: api.clone(),
        sessions: Sessions::new(
            state.control.store().clone(),
            session::Limits::new(state.config.dashboard_sessions_per_address),
        ),
        login_key: SharedLoginKey::new(state.control.store().clone()),
        keystone_url,
        keystone_tls: crate::auth::keystone_tls(&state.config.keystone_authtoken),
        noauth_allowed: state.config.bind_host.is_loopback(),
        auth: state.auth.clone(),
    });
    dashboard.sessions.spawn_sweeper();
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/", get(|| async { redirect("/dashboard") }))
        .route("/dashboard/login", get(login_form).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/forwards", post(create))
        .route("/dashboard/forwards/{id}", post(update))
        .route("/dashboard/forwards/{id}/edit", get(edit_form))
        .route("/dashboard/forwards/{id}/delete", post(delete))
        .route("/dashboard/proxies", get(proxies))
        .route("/dashboard/status.json", get(status_json))
        .route(
            "/dashboard/static/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/dashboard/static/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/dashboard/static/favicon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
        .route("/dashboard/{*rest}", get(not_found))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn(session::secure_cookies_over_tls))
        .layer(axum::middleware::from_fn(crate::context::request_id))
        .with_state(dashboard)
        .fallback_service(api)
}

// ------------------------------------------------------------ responses

/// Headers every dashboard page carries: no caching of pages that show a
/// project's data, no framing, scripts and styles only from this server.
fn protect(headers: &mut HeaderMap) {
    let pairs = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not no-referrer: with it browsers send `Origin: null`, which the
        // CSRF check must refuse.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    protect(response.headers_mut());
    response
}

/// 303 See Other: the GET after a POST.
fn redirect(to: &'static str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    protect(response.headers_mut());
    response
}

/// A JSON answer for the page's script, with the page's headers.
fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    protect(response.headers_mut());
    response
}

fn with_cookie(mut response: Response, cookie: String) -> Response {
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn not_found() -> Response {
    html_response(
        StatusCode::NOT_FOUND,
        html::page(
            "Not found",
            None,
            None,
            &html::message(
                "There is no such page.",
                Some(("/dashboard", "Go to the dashboard")),
            ),
        ),
    )
}

/// The session ended (expired, logged out elsewhere, token revoked): forget
/// it, clear the cookie and go to the login page.
async fn session_over(dash: &Dashboard, sid: Option<&str>, headers: &HeaderMap) -> Response {
    if let Some(sid) = sid
        && let Err(error) = dash.sessions.remove(sid).await
    {
        // It ends with its token anyway; the cookie goes now.
        tracing::warn!(%error, "dashboard: an ended session could not be deleted");
    }
    with_cookie(
        redirect("/dashboard/login?expired=1"),
        session::set_cookie(COOKIE, "", Some(0), session::over_tls(headers)),
    )
}

/// Back to the forwards list with a message (an error when `error`) shown
/// once at its top.
async fn back_to_list(
    dash: &Dashboard,
    sid: &str,
    error: bool,
    text: impl Into<String>,
) -> Response {
    if let Err(e) = dash.sessions.set_flash(sid, error, text).await {
        // The change (if any) is done; only its message is lost.
        tracing::warn!(error = %e, "dashboard: a flash message could not be stored");
    }
    redirect("/dashboard")
}

/// The database behind sessions cannot be reached: say so, keep the cookie.
fn unavailable(error: &navigator_store::StoreError) -> Response {
    tracing::warn!(%error, "dashboard: sessions unavailable");
    html_response(
        StatusCode::SERVICE_UNAVAILABLE,
        html::page(
            "Temporarily unavailable",
            None,
            None,
            &html::message(
                "The dashboard cannot reach its database; try again in a moment.",
                Some(("/dashboard", "Try again")),
            ),
        ),
    )
}

fn refused(session: Option<&Session>, error: &session::CsrfError) -> Response {
    tracing::warn!(%error, "dashboard form refused");
    html_response(
        StatusCode::FORBIDDEN,
        html::page(
            "Request refused",
            session,
            None,
            &html::message(
                &format!("The form was refused: {error}."),
                Some(("/dashboard", "Back to the dashboard")),
            ),
        ),
    )
}

// ------------------------------------------------------------ requests

impl Dashboard {
    /// The live session of this request, with its id; `Err` is the answer
    /// when the database cannot tell.
    // The `Err` is the response that ends the request (see `posted_form`).
    #[allow(clippy::result_large_err)]
    async fn session(&self, headers: &HeaderMap) -> Result<Option<(String, Session)>, Response> {
        let Some(sid) = session::cookie(headers, COOKIE) else {
            return Ok(None);
        };
        match self.sessions.get(sid).await {
            Ok(found) => Ok(found.map(|s| (sid.to_owned(), s))),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

/// A form POST of a logged-in page: the session (with its id) and the
/// decoded form once the CSRF check has passed, or the response to send
/// instead (the login page when the session is over, 403 on a failed check).
// The `Err` is the response that ends the request; boxing it would only add
// an allocation to a path taken once per request.
#[allow(clippy::result_large_err)]
async fn posted_form(
    dash: &Dashboard,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Session, HashMap<String, String>), Response> {
    let Some((sid, session)) = dash.session(headers).await? else {
        return Err(session_over(dash, None, headers).await);
    };
    let form = parse_form(body);
    if let Err(e) = session::check_post(
        headers,
        form.get("csrf_token").map(String::as_str),
        &session.csrf,
    ) {
        return Err(refused(Some(&session), &e));
    }
    Ok((sid, session, form))
}

/// Decodes an `application/x-www-form-urlencoded` body; the first value of a
/// repeated name wins. Bad `%` escapes stay as they are and invalid UTF-8
/// becomes U+FFFD (`form_urlencoded`'s rules, as browsers and WHATWG have it).
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (key, value) in form_urlencoded::parse(body) {
        out.entry(key.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    out
}

/// The form's values for re-display (never the password or the token).
fn form_state(form: &HashMap<String, String>) -> FormState {
    FormState {
        values: form
            .iter()
            .filter(|(k, _)| *k != "password" && *k != "csrf_token")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..FormState::default()
    }
}

/// A port field as the API's integer; a missing or non-numeric value is a
/// field error here (the API decides about the range).
fn port_field(state: &mut FormState, name: &str, required: bool) -> Option<i64> {
    let text = state.value(name).trim().to_owned();
    if text.is_empty() {
        if required {
            state
                .errors
                .insert(name.into(), "required: a port number, 1-65535".into());
        }
        return None;
    }
    // Plain digits, as the API's port fields: `+80` or `080` are refused
    // here rather than sent on as 80. The API decides about the range.
    let plain =
        text.bytes().all(|b| b.is_ascii_digit()) && !(text.len() > 1 && text.starts_with('0'));
    match text.parse::<i64>().ok().filter(|_| plain) {
        Some(port) => Some(port),
        None => {
            state.errors.insert(
                name.into(),
                format!("{text:?} is not a whole number (a port is 1-65535)"),
            );
            None
        }
    }
}

/// The allowlist field: CIDRs separated by commas or white space (the API
/// judges each).
fn cidr_list(state: &FormState) -> Vec<String> {
    state
        .value("allowed_cidrs")
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|cidr| !cidr.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The connection limit field: empty is no limit; otherwise plain digits
/// (the API decides about the range).
fn max_connections_field(state: &mut FormState) -> Option<i64> {
    let text = state.value("max_connections").trim().to_owned();
    if text.is_empty() {
        return None;
    }
    let plain =
        text.bytes().all(|b| b.is_ascii_digit()) && !(text.len() > 1 && text.starts_with('0'));
    match text.parse::<i64>().ok().filter(|_| plain) {
        Some(n) => Some(n),
        None => {
            state.errors.insert(
                "max_connections".into(),
                format!("{text:?} is not a whole number (1-1000000, or empty for no limit)"),
            );
            None
        }
    }
}

/// The PROXY protocol select; a missing value is the default.
fn proxy_protocol_value(state: &FormState) -> &str {
    match state.value("proxy_protocol").trim() {
        "" => "none",
        other => other,
    }
}

/// Puts an API failure next to its field when the form has that field.
fn place_failure(state: &mut FormState, fields: &[&str], failure: &Failure) {
    match failure {
        Failure::Field { field, message } if fields.contains(&field.as_str()) => {
            state.errors.insert(field.clone(), message.clone());
        }
        other => state.general = Some(other.message()),
    }
}

/// Forward ids are UUIDs; anything else never reaches the API's path.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

// ------------------------------------------------------------ login, logout

async fn login_form(
    State(dash): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match dash.session(&headers).await {
        Ok(Some(_)) => return redirect("/dashboard"),
        Ok(None) => {}
        Err(response) => return response,
    }
    let flash = if query.contains_key("expired") {
        Some(session::Flash {
            error: true,
            text: "Your session has ended; log in again.".into(),
        })
    } else if query.contains_key("logged_out") {
        Some(session::Flash {
            error: false,
            text: "You have logged out.".into(),
        })
    } else {
        None
    };
    let mut form = FormState::default();
    if dash.keystone_url.is_some() {
        form.values.insert("domain".into(), "Default".into());
    }
    login_page(&dash, &headers, StatusCode::OK, &form, flash.as_ref()).await
}

/// The login page with a fresh pre-login token (cookie and hidden field).
async fn login_page(
    dash: &Dashboard,
    headers: &HeaderMap,
    status: StatusCode,
    form: &FormState,
    flash: Option<&session::Flash>,
) -> Response {
    if dash.keystone_url.is_none() && !dash.noauth_allowed {
        return html_response(
            StatusCode::FORBIDDEN,
            html::page(
                "Dashboard unavailable",
                None,
                None,
                &html::message(
                    "This server runs without authentication (noauth) on a non-loopback address; \
                     the dashboard is only offered with auth_strategy = keystone or on loopback.",
                    None,
                ),
            ),
        );
    }
    let token = match dash.login_key.get().await {
        Ok(key) => key.issue(),
        Err(e) => return unavailable(&e),
    };
    let body = html::page(
        "Log in",
        None,
        flash,
        &html::login(dash.keystone_url.is_some(), form, &token),
    );
    with_cookie(
        html_response(status, body),
        session::set_cookie(LOGIN_COOKIE, &token, None, session::over_tls(headers)),
    )
}

/// The TCP peer of a request (`None` for requests made in process), with
/// IPv4-mapped IPv6 addresses as plain IPv4.
struct ClientAddr(Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip().to_canonical()),
        ))
    }
}

async fn login(
    State(dash): State<Shared>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let mut state = form_state(&form);
    // Only a token a server signed counts: a client cannot pick its own
    // cookie and form value.
    let key = match dash.login_key.get().await {
        Ok(key) => key,
        Err(e) => return unavailable(&e),
    };
    let expected = session::cookie(&headers, LOGIN_COOKIE)
        .filter(|token| key.verify(token))
        .unwrap_or("");
    if let Err(error) = session::check_post(
        &headers,
        form.get("csrf_token").map(String::as_str),
        expected,
    ) {
        tracing::warn!(%error, "dashboard login refused");
        state.general = Some(format!("The login was refused: {error}."));
        return login_page(&dash, &headers, StatusCode::FORBIDDEN, &state, None).await;
    }
    let result = match &dash.keystone_url {
        Some(url) => keystone_login(&dash, url, form.get("password").cloned(), &mut state).await,
        None if dash.noauth_allowed => noauth_login(&dash, &mut state).await,
        None => Err(StatusCode::FORBIDDEN),
    };
    let (new_session, owner) = match result {
        Ok(made) => made,
        Err(status) => return login_page(&dash, &headers, status, &state, None).await,
    };
    let max_age = (new_session.expires_at - Utc::now()).num_seconds();
    let sid = match dash.sessions.insert(new_session, &owner, client).await {
        Ok(sid) => sid,
        Err(e) => return unavailable(&e),
    };
    let secure = session::over_tls(&headers);
    let response = with_cookie(
        redirect("/dashboard"),
        session::set_cookie(COOKIE, &sid, Some(max_age), secure),
    );
    with_cookie(
        response,
        session::set_cookie(LOGIN_COOKIE, "", Some(0), secure),
    )
}

fn require(state: &mut FormState, names: &[&str]) {
    for name in names {
        if state.value(name).trim().is_empty() {
            state.errors.insert((*name).into(), "required".into());
        }
    }
}

async fn keystone_login(
    dash: &Dashboard,
    url: &str,
    password: Option<String>,
    state: &mut FormState,
) -> Result<(Session, String), StatusCode> {
    require(state, &["username", "project", "domain"]);
    let password = password.filter(|p| !p.is_empty());
    if password.is_none() {
        state.errors.insert("password".into(), "required".into());
    }
    let Some(password) = password.filter(|_| state.errors.is_empty()) else {
        return Err(StatusCode::BAD_REQUEST);
    };
    let domain = state.value("domain").trim().to_owned();
    let user = state.value("username").trim().to_owned();
    let project = state.value("project").trim().to_owned();
    let credentials = Credentials::Password {
        user: UserRef::Name {
            name: user.clone(),
            domain: DomainRef::Name(domain.clone()),
        },
        password: Secret::new(password),
        project: Some(ProjectRef::Name {
            name: project.clone(),
            domain: DomainRef::Name(domain),
        }),
    };
    let issued = match navigator_keystone::auth::authenticate_with(
        url,
        &credentials,
        &dash.keystone_tls,
    )
    .await
    {
        Ok(issued) => issued,
        Err(AuthError::Rejected {
            status, message, ..
        }) => {
            tracing::info!(user = %user, project = %project, status, %message, "dashboard login rejected by keystone");
            state.general = Some(
                "Keystone did not accept these credentials: check the user name, password, \
                 project and domain (the user needs a role on the project)."
                    .into(),
            );
            return Err(StatusCode::UNAUTHORIZED);
        }
        Err(e @ (AuthError::Unreachable { .. } | AuthError::Keystone { .. })) => {
            tracing::warn!(error = %e, "dashboard login: keystone unavailable");
            state.general = Some(
                "The identity service (Keystone) cannot be reached; nothing was changed, try again later."
                    .into(),
            );
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        }
        Err(e) => {
            tracing::error!(error = %e, "dashboard login failed");
            state.general = Some("The login failed; the server log has the details.".into());
            return Err(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let expires_at = match issued.body.expires_at() {
        Ok(at) if at > Utc::now() => at,
        other => {
            tracing::error!(?other, "dashboard login: token without a usable expires_at");
            state.general = Some("Keystone issued a token that has already expired.".into());
            return Err(StatusCode::BAD_GATEWAY);
        }
    };
    let Some(scope) = issued.body.project.clone() else {
        state.general = Some("Keystone issued a token without a project.".into());
        return Err(StatusCode::BAD_GATEWAY);
    };
    let credential = Credential::Token(issued.token.expose().to_owned());
    let proxies_visible = probe_api(dash, &credential, state).await?;
    let user_name = if issued.body.user.name.is_empty() {
        user
    } else {
        issued.body.user.name.clone()
    };
    // The per-user cap counts Keystone's user id, whatever name was typed.
    let owner = format!("keystone:{}", issued.body.user.id);
    let session = Session {
        credential,
        user: user_name,
        project: if scope.name.is_empty() {
            scope.id
        } else {
            scope.name
        },
        csrf: session::random_token(),
        expires_at,
        proxies_visible,
        flash: None,
    };
    Ok((session, owner))
}

/// A noauth session; its "user", for the per-user cap, is the project.
async fn noauth_login(
    dash: &Dashboard,
    state: &mut FormState,
) -> Result<(Session, String), StatusCode> {
    let project = state.value("project").trim().to_owned();
    if project.is_empty()
        || project.len() > 255
        || navigator_api::v1::hidden_char(&project).is_some()
    {
        state.errors.insert(
            "project".into(),
            "expected 1-255 printable characters".into(),
        );
        return Err(StatusCode::BAD_REQUEST);
    }
    let credential = Credential::Project(project.clone());
    let proxies_visible = probe_api(dash, &credential, state).await?;
    let owner = format!("noauth:{project}");
    let session = Session {
        credential,
        user: "noauth".into(),
        project,
        csrf: session::random_token(),
        expires_at: Utc::now() + ChronoDuration::hours(NOAUTH_SESSION_HOURS),
        proxies_visible,
        flash: None,
    };
    Ok((session, owner))
}

/// Asks the API whether it accepts `credential` (and whether this identity
/// may see proxies), so that a session is only made for a working login.
async fn probe_api(
    dash: &Dashboard,
    credential: &Credential,
    state: &mut FormState,
) -> Result<bool, StatusCode> {
    match api::call::<ProxyList>(&dash.api, credential, Method::GET, "/v1/proxies", None).await {
        Ok(_) => Ok(true),
        Err(Failure::Other { status, .. }) if status == StatusCode::FORBIDDEN => Ok(false),
        Err(Failure::Unauthorized) => {
            state.general = Some(
                "Navigator did not accept the token Keystone issued; ask the operator to check \
                 [keystone_authtoken]."
                    .into(),
            );
            Err(StatusCode::UNAUTHORIZED)
        }
        Err(failure) => {
            state.general = Some(failure.message());
            Err(failure.status())
        }
    }
}

async fn logout(State(dash): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (sid, _, _) = match posted_form(&dash, &headers, &body).await {
        Ok(posted) => posted,
        Err(response) => return response,
    };
    if let Ok(Some(Session {
        credential: Credential::Token(token),
        ..
    })) = dash.sessions.remove(&sid).await
        && let Some(validator) = dash.auth.validator()
    {
        // Logged out means the token is over, at Keystone too: otherwise it
        // would stay good for its lifetime wherever it was copied to.
        if let Err(error) = validator.revoke(&token).await {
            tracing::warn!(%error, "dashboard logout: the Keystone token could not be revoked; it stays valid until it expires");
        }
    }
    with_cookie(
        redirect("/dashboard/login?logged_out=1"),
        session::set_cookie(COOKIE, "", Some(0), session::over_tls(&headers)),
    )
}

// ------------------------------------------------------------ forwards

const LIST_PATH: &str = "/v1/forwards?sort_key=created_at&sort_dir=asc";

async fn index(State(dash): State<Shared>, headers: HeaderMap) -> Response {
    let (sid, session) = match dash.session(&headers).await {
        Ok(Some(found)) => found,
        Ok(None) => return redirect("/dashboard/login"),
        Err(response) => return response,
    };
    let mut form = FormState::default();
    form.values.insert("protocol".into(), "tcp".into());
    list_page(&dash, &sid, &session, &headers, &form, StatusCode::OK).await
}

/// The forwards page; `form` is the create form's state (after an error).
async fn list_page(
    dash: &Dashboard,
    sid: &str,
    session: &Session,
    headers: &HeaderMap,
    form: &FormState,
    status: StatusCode,
) -> Response {
    let flash = dash.sessions.take_flash(sid, session).await;
    match api::call::<ForwardList>(&dash.api, &session.credential, Method::GET, LIST_PATH, None)
        .await
    {
        Ok(list) => html_response(
            status,
            html::page(
                "Port forwards",
                Some(session),
                flash.as_ref(),
                &format!(
                    "{}{}",
                    quota_line(dash, session).await,
                    html::forwards(session, &list.forwards, form)
                ),
            ),
        ),
        Err(Failure::Unauthorized) => session_over(dash, Some(sid), headers).await,
        Err(failure) => html_response(
            failure.status(),
            html::page(
                "Port forwards",
                Some(session),
                flash.as_ref(),
                &html::message(&failure.message(), Some(("/dashboard", "Try again"))),
            ),
        ),
    }
}

/// The project's quota use for the forwards page, read through the API
/// (`GET /v1/quotas/{project}/details`, policy `quota:get`); empty when the
/// API does not answer it (the page works without it). The session keeps
/// the project's name for the header, so a Keystone session's project id
/// comes from its token, as the API's own authentication reads it (cached).
async fn quota_line(dash: &Dashboard, session: &Session) -> String {
    let project = match &session.credential {
        Credential::Project(project) => project.clone(),
        Credential::Token(token) => match dash.auth.authenticate(Some(token), "dashboard").await {
            Ok(identity) => identity.project_id,
            Err(_) => return String::new(),
        },
    };
    let path = format!(
        "/v1/quotas/{}/details",
        percent_encoding::utf8_percent_encode(&project, percent_encoding::NON_ALPHANUMERIC)
    );
    match api::call::<QuotaDetailsBody>(&dash.api, &session.credential, Method::GET, &path, None)
        .await
    {
        Ok(body) => html::quota_usage(&body.quota),
        Err(failure) => {
            tracing::debug!(error = %failure.message(), "dashboard: no quota to show");
            String::new()
        }
    }
}

const CREATE_FIELDS: [&str; 8] = [
    "protocol",
    "internal_ip_address",
    "internal_port",
    "external_port",
    "description",
    "allowed_cidrs",
    "max_connections",
    "proxy_protocol",
];

async fn create(State(dash): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (sid, session, form) = match posted_form(&dash, &headers, &body).await {
        Ok(posted) => posted,
        Err(response) => return response,
    };
    let mut state = form_state(&form);
    let internal_port = port_field(&mut state, "internal_port", true);
    let external_port = port_field(&mut state, "external_port", false);
    let max_connections = max_connections_field(&mut state);
    if !state.errors.is_empty() {
        return list_page(
            &dash,
            &sid,
            &session,
            &headers,
            &state,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let mut forward = json!({
        "protocol": state.value("protocol").trim(),
        "internal_ip_address": state.value("internal_ip_address").trim(),
        "internal_port": internal_port,
    });
    if let Some(port) = external_port {
        forward["external_port"] = json!(port);
    }
    let description = state.value("description").trim();
    if !description.is_empty() {
        forward["description"] = json!(description);
    }
    let cidrs = cidr_list(&state);
    if !cidrs.is_empty() {
        forward["allowed_cidrs"] = json!(cidrs);
    }
    if let Some(n) = max_connections {
        forward["max_connections"] = json!(n);
    }
    forward["proxy_protocol"] = json!(proxy_protocol_value(&state));
    let result = api::call::<ForwardBody>(
        &dash.api,
        &session.credential,
        Method::POST,
        "/v1/forwards",
        Some(json!({ "forward": forward })),
    )
    .await;
    match result {
        Ok(created) => {
            let f = created.forward;
            back_to_list(
                &dash,
                &sid,
                false,
                format!(
                    "Created forward {}:{} to {}:{} ({}).",
                    f.external_address,
                    f.external_port,
                    f.internal_ip_address,
                    f.internal_port,
                    f.status
                ),
            )
            .await
        }
        Err(Failure::Unauthorized) => session_over(&dash, Some(&sid), &headers).await,
        Err(failure) => {
            place_failure(&mut state, &CREATE_FIELDS, &failure);
            list_page(&dash, &sid, &session, &headers, &state, failure.status()).await
        }
    }
}

async fn edit_form(
    State(dash): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (sid, session) = match dash.session(&headers).await {
        Ok(Some(found)) => found,
        Ok(None) => return redirect("/dashboard/login"),
        Err(response) => return response,
    };
    let mut state = FormState::default();
    edit_page(
        &dash,
        &sid,
        &session,
        &headers,
        &id,
        &mut state,
        StatusCode::OK,
        true,
    )
    .await
}

/// The retarget page; with `prefill` the form shows the forward's values.
#[allow(clippy::too_many_arguments)]
async fn edit_page(
    dash: &Dashboard,
    sid: &str,
    session: &Session,
    headers: &HeaderMap,
    id: &str,
    state: &mut FormState,
    status: StatusCode,
    prefill: bool,
) -> Response {
    if !valid_id(id) {
        return back_to_list(dash, sid, true, format!("forward {id} not found")).await;
    }
    let path = format!("/v1/forwards/{id}");
    match api::call::<ForwardDetailBody>(&dash.api, &session.credential, Method::GET, &path, None)
        .await
    {
        Ok(body) => {
            let detail = body.forward;
            let f = &detail.forward;
            if prefill {
                state
                    .values
                    .insert("internal_ip_address".into(), f.internal_ip_address.clone());
                state
                    .values
                    .insert("internal_port".into(), f.internal_port.to_string());
                state
                    .values
                    .insert("description".into(), f.description.clone());
                state
                    .values
                    .insert("allowed_cidrs".into(), f.allowed_cidrs.join(", "));
                state.values.insert(
                    "max_connections".into(),
                    f.max_connections.map(|n| n.to_string()).unwrap_or_default(),
                );
                state
                    .values
                    .insert("proxy_protocol".into(), f.proxy_protocol.clone());
            }
            html_response(
                status,
                html::page(
                    "Retarget a forward",
                    Some(session),
                    None,
                    &(html::edit(session, f, state) + &html::usage(&detail)),
                ),
            )
        }
        Err(Failure::Unauthorized) => session_over(dash, Some(sid), headers).await,
        Err(failure) => back_to_list(dash, sid, true, failure.message()).await,
    }
}

const EDIT_FIELDS: [&str; 6] = [
    "internal_ip_address",
    "internal_port",
    "description",
    "allowed_cidrs",
    "max_connections",
    "proxy_protocol",
];

async fn update(
    State(dash): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (sid, session, form) = match posted_form(&dash, &headers, &body).await {
        Ok(posted) => posted,
        Err(response) => return response,
    };
    let mut state = form_state(&form);
    let internal_port = port_field(&mut state, "internal_port", true);
    let max_connections = max_connections_field(&mut state);
    if !state.errors.is_empty() || !valid_id(&id) {
        return edit_page(
            &dash,
            &sid,
            &session,
            &headers,
            &id,
            &mut state,
            StatusCode::BAD_REQUEST,
            false,
        )
        .await;
    }
    let changes = json!({"forward": {
        "internal_ip_address": state.value("internal_ip_address").trim(),
        "internal_port": internal_port,
        "description": state.value("description").trim(),
        // The form shows every control, so it sends each: an emptied field
        // clears it.
        "allowed_cidrs": cidr_list(&state),
        "max_connections": max_connections,
        "proxy_protocol": proxy_protocol_value(&state),
    }});
    let path = format!("/v1/forwards/{id}");
    match api::call::<ForwardBody>(
        &dash.api,
        &session.credential,
        Method::PUT,
        &path,
        Some(changes),
    )
    .await
    {
        Ok(updated) => {
            let f = updated.forward;
            back_to_list(
                &dash,
                &sid,
                false,
                format!(
                    "Forward {}:{} now goes to {}:{}.",
                    f.external_address, f.external_port, f.internal_ip_address, f.internal_port
                ),
            )
            .await
        }
        Err(Failure::Unauthorized) => session_over(&dash, Some(&sid), &headers).await,
        Err(failure) => {
            let status = failure.status();
            place_failure(&mut state, &EDIT_FIELDS, &failure);
            edit_page(
                &dash, &sid, &session, &headers, &id, &mut state, status, false,
            )
            .await
        }
    }
}

async fn delete(
    State(dash): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (sid, session, _) = match posted_form(&dash, &headers, &body).await {
        Ok(posted) => posted,
        Err(response) => return response,
    };
    if !valid_id(&id) {
        return back_to_list(&dash, &sid, true, format!("forward {id} not found")).await;
    }
    let path = format!("/v1/forwards/{id}");
    match api::call::<Value>(&dash.api, &session.credential, Method::DELETE, &path, None).await {
        Ok(_) => back_to_list(&dash, &sid, false, "Deleted the forward.").await,
        Err(Failure::Unauthorized) => session_over(&dash, Some(&sid), &headers).await,
        Err(failure) => back_to_list(&dash, &sid, true, failure.message()).await,
    }
}

/// Statuses for the page's refresh script: `{"forwards": [{id, status,
/// status_reason}]}`, or 401 when the session is over.
async fn status_json(State(dash): State<Shared>, headers: HeaderMap) -> Response {
    let unauthorized =
        || json_response(StatusCode::UNAUTHORIZED, json!({"error": "session ended"}));
    let (sid, session) = match dash.session(&headers).await {
        Ok(Some(found)) => found,
        Ok(None) => return unauthorized(),
        Err(response) => return response,
    };
    match api::call::<ForwardList>(&dash.api, &session.credential, Method::GET, LIST_PATH, None)
        .await
    {
        Ok(list) => {
            let forwards: Vec<Value> = list
                .forwards
                .iter()
                .map(|f| json!({"id": f.id, "status": f.status, "status_reason": f.status_reason}))
                .collect();
            json_response(StatusCode::OK, json!({ "forwards": forwards }))
        }
        Err(Failure::Unauthorized) => {
            if let Err(error) = dash.sessions.remove(&sid).await {
                tracing::warn!(%error, "dashboard: an ended session could not be deleted");
            }
            unauthorized()
        }
        Err(failure) => json_response(failure.status(), json!({"error": failure.message()})),
    }
}

// ------------------------------------------------------------ proxies

async fn proxies(State(dash): State<Shared>, headers: HeaderMap) -> Response {
    let (sid, session) = match dash.session(&headers).await {
        Ok(Some(found)) => found,
        Ok(None) => return redirect("/dashboard/login"),
        Err(response) => return response,
    };
    match api::call::<ProxyList>(
        &dash.api,
        &session.credential,
        Method::GET,
        "/v1/proxies",
        None,
    )
    .await
    {
        Ok(list) => html_response(
            StatusCode::OK,
            html::page(
                "Proxies",
                Some(&session),
                None,
                &html::proxies(&list.proxies),
            ),
        ),
        Err(Failure::Unauthorized) => session_over(&dash, Some(&sid), &headers).await,
        Err(failure) => {
            let text = if failure.status() == StatusCode::FORBIDDEN {
                "Only administrators can see the proxies.".to_owned()
            } else {
                failure.message()
            };
            html_response(
                failure.status(),
                html::page(
                    "Proxies",
                    Some(&session),
                    None,
                    &html::message(&text, Some(("/dashboard", "Back to the port forwards"))),
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_like_browsers_encode() {
        let form = parse_form(b"a=1+2&b=%3Cx%3E&c=&d&a=later&e=%zz&f=%4");
        assert_eq!(form["a"], "1 2");
        assert_eq!(form["b"], "<x>");
        assert_eq!(form["c"], "");
        assert_eq!(form["d"], "");
        assert_eq!(form["e"], "%zz");
        assert_eq!(form["f"], "%4");
        let form = parse_form(b"&&x%20y=%2B%26%3D&bad=%FF&=v&");
        assert_eq!(form["x y"], "+&=");
        assert_eq!(form["bad"], "\u{FFFD}");
        assert_eq!(form[""], "v");
        assert_eq!(form.len(), 3);
    }

    #[test]
    fn ports_are_parsed_or_named() {
        let mut state = FormState::default();
        state.values.insert("internal_port".into(), "80x".into());
        assert_eq!(port_field(&mut state, "internal_port", true), None);
        assert!(state.errors["internal_port"].contains("not a whole number"));
        assert_eq!(port_field(&mut state, "external_port", false), None);
        assert!(!state.errors.contains_key("external_port"));
        state.values.insert("external_port".into(), "70000".into());
        assert_eq!(port_field(&mut state, "external_port", false), Some(70000));
        for odd in ["+80", "080", "-1", "8 0"] {
            let mut state = FormState::default();
            state.values.insert("internal_port".into(), odd.into());
            assert_eq!(port_field(&mut state, "internal_port", true), None, "{odd}");
            assert!(state.errors.contains_key("internal_port"), "{odd}");
        }
    }

    #[test]
    fn ids_are_uuid_characters_only() {
        assert!(valid_id("0b5c0f3e-7d1a-4c9e-9a57-2f1f3c2b4a10"));
        assert!(!valid_id("../v1/proxies"));
        assert!(!valid_id(""));
    }
}
