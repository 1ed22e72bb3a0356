//! Who is asking: the request context every handler receives, and the
//! request id that names each request in responses and logs.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::error::ApiError;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-openstack-request-id");
const PROJECT_ID_HEADER: &str = "x-project-id";

/// `req-<uuid>`, as every OpenStack service names its requests.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Gives every request an id, in its extensions (for handlers and logs) and in
/// the response's `X-OpenStack-Request-Id` header.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = format!("req-{}", uuid::Uuid::new_v4());
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let _enter = span.enter();
    drop(_enter);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    tracing::info!(request_id = %id, %method, %path, status = response.status().as_u16(), "request");
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
    pub project_id: String,
    pub is_admin: bool,
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
        Ok(Context {
            request_id,
            user_id: None,
            project_id,
            is_admin: true,
        })
    }
}
