//! Who is asking: the request context every handler receives, and the
//! request ids that name each request in responses and logs (ours, and the
//! caller's global one when valid), held in a `request` span and in the RPC
//! context of the messages the request sends to agents.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// `req-<uuid>` in lower-case hex: oslo.middleware's rule for a caller's id.
pub use navigator_rpc::context::is_valid_request_id;

use crate::app::AppState;
use crate::auth::{Identity, NOAUTH_ROLES, credentials};
use crate::error::ApiError;
use crate::policy::Credentials;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-openstack-request-id");
const PROJECT_ID_HEADER: &str = "x-project-id";
const AUTH_TOKEN_HEADER: &str = "x-auth-token";

/// `req-<uuid>`, as every OpenStack service names its requests.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The caller's `X-OpenStack-Request-Id`, when it is a valid `req-<uuid>`:
/// the id of the whole operation across services (oslo.context's
/// `global_request_id`).
#[derive(Clone, Debug)]
pub struct GlobalRequestId(pub String);

/// Gives every request an id, in its extensions (for handlers and logs) and in
/// the response's `X-OpenStack-Request-Id` header, and runs it inside a
/// `request` span that carries the ids (and the project, once known), so
/// every log line of the request names them.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = format!("req-{}", uuid::Uuid::new_v4());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        global_request_id = tracing::field::Empty,
        project = tracing::field::Empty,
    );
    request.extensions_mut().insert(RequestId(id.clone()));
    let incoming = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .map(|value| value.to_str().map(str::to_owned));
    if let Some(value) = incoming {
        match value {
            Ok(global) if is_valid_request_id(&global) => {
                span.record("global_request_id", tracing::field::display(&global));
                request.extensions_mut().insert(GlobalRequestId(global));
            }
            // Debug only: any caller can send it, and its text is theirs.
            _ => span.in_scope(|| {
                tracing::debug!(
                    "ignoring X-OpenStack-Request-Id: not req-<uuid> in lower-case hex"
                );
            }),
        }
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // Messages to agents sent for this request carry its ids.
    let rpc_context = navigator_rpc::context::RequestContext {
        request_id: Some(id.clone()),
        global_request_id: request
            .extensions()
            .get::<GlobalRequestId>()
            .map(|g| g.0.clone()),
    };
    let mut response =
        navigator_rpc::context::scope(rpc_context, next.run(request).instrument(span.clone()))
            .await;
    span.in_scope(|| {
        tracing::info!(%method, %path, status = response.status().as_u16(), "request");
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The caller's identity and rights.
#[derive(Clone, Debug)]
pub struct Context {
    pub request_id: String,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    /// Always the token's project (or noauth's header): never a request body's.
    pub project_id: String,
    /// `context_is_admin` of the policy: may act across projects.
    pub is_admin: bool,
    /// Role names, as the policy's `role:` checks see them.
    pub roles: Vec<String>,
    /// What policy checks evaluate.
    pub credentials: Credentials,
}

impl Context {
    /// Whether the policy allows `rule` on a resource of `project_id`.
    pub fn allowed(&self, state: &AppState, rule: &str, project_id: &str) -> bool {
        state
            .auth
            .policy()
            .check(rule, &self.credentials, &[("project_id", project_id)])
    }

    /// `Ok` when [`Context::allowed`], else 403 naming the rule.
    pub fn enforce(&self, state: &AppState, rule: &str, project_id: &str) -> Result<(), ApiError> {
        if self.allowed(state, rule, project_id) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "policy does not allow {rule} to be performed"
            )))
        }
    }

    fn new(request_id: String, identity: Identity, state: &AppState) -> Context {
        // The request's span (from `request_id`) names the project from now on.
        tracing::Span::current().record("project", tracing::field::display(&identity.project_id));
        let credentials = credentials(&identity);
        let is_admin = state
            .auth
            .policy()
            .check("context_is_admin", &credentials, &[]);
        Context {
            request_id,
            user_id: identity.user_id,
            user_name: identity.user_name,
            project_id: identity.project_id,
            is_admin,
            roles: identity.roles,
            credentials,
        }
    }
}

impl FromRequestParts<AppState> for Context {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        if state.auth.is_keystone() {
            let token = match parts.headers.get(AUTH_TOKEN_HEADER) {
                None => None,
                // A header that is not ASCII cannot be a token Keystone
                // issued: treated as no token (401), never sent on.
                Some(value) => Some(value.to_str().unwrap_or("")),
            };
            let identity = state.auth.authenticate(token, &request_id).await?;
            return Ok(Context::new(request_id, identity, state));
        }
        // noauth: the project is whatever the caller says, and every caller
        // is an admin. It is only served on loopback unless forced.
        let project_id = match parts.headers.get(PROJECT_ID_HEADER) {
            None => state.config.default_project_id.clone(),
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| {
                        ApiError::BadRequest(
                            "invalid X-Project-Id header: not printable ASCII".into(),
                        )
                    })?
                    .trim();
                if value.is_empty() || value.len() > 255 || value.chars().any(char::is_control) {
                    return Err(ApiError::BadRequest(
                        "invalid X-Project-Id header: expected 1-255 printable characters".into(),
                    ));
                }
                value.to_owned()
            }
        };
        let identity = Identity {
            user_id: None,
            user_name: None,
            project_id,
            project_name: None,
            roles: NOAUTH_ROLES.iter().map(|r| (*r).to_owned()).collect(),
        };
        Ok(Context::new(request_id, identity, state))
    }
}
