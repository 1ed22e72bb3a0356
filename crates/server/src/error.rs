//! `ApiError`: every way a request can fail, turned into an OpenStack error
//! body with the right status. Details of server-side failures (5xx) are
//! logged with the request id, never sent to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use navigator_api::ErrorBody;
use navigator_api::v1::FieldError;
use navigator_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// No token, or one Keystone does not vouch for; `uri` is where to get one.
    #[error("{message}")]
    Unauthorized { message: String, uri: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request body did not arrive within `[api] body_timeout`.
    #[error("{0}")]
    RequestTimeout(String),
    /// Over the client's `[api] rate_limit`; `retry_after` is when the next
    /// request would be accepted.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: std::time::Duration,
    },
    /// A dependency (database, agent transport) is down; the message says
    /// which, and nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn forward_not_found(id: &str) -> ApiError {
        ApiError::NotFound(format!("forward {id} not found"))
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            // The store's message names the holder, which may be another
            // project's forward: `Control::create` words it for the caller,
            // and any other path says only that the port is taken.
            StoreError::PortTaken {
                address,
                protocol,
                port,
                ..
            } => ApiError::Conflict(format!(
                "port {port}/{protocol} on {address} is already in use"
            )),
            StoreError::PoolExhausted { .. } => ApiError::Conflict(e.to_string()),
            // Names the project, the resource, its use and its limit.
            StoreError::OverQuota { .. } => ApiError::Conflict(e.to_string()),
            StoreError::BadMarker(marker) => ApiError::BadRequest(format!(
                "invalid marker: {marker} does not name a forward in this listing"
            )),
            e if e.is_unavailable() => {
                tracing::error!(error = %e, "database unavailable");
                ApiError::Unavailable(
                    "the database is unavailable; nothing was changed, retry later".into(),
                )
            }
            e => {
                tracing::error!(error = %e, "store failure");
                ApiError::Internal("the store failed; see the server log".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, error = %self, "request failed");
        }
        let message = match &self {
            // Internal details stay in the log.
            ApiError::Internal(_) => {
                "internal error; the server log has the details (search for the request id)"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody::new(
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error"),
            message,
        );
        let mut response = (status, Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            // Whole seconds, rounded up: a client that waits this long is
            // accepted.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds.max(1)),
            );
        }
        if let ApiError::Unauthorized { uri, .. } = &self {
            // What keystonemiddleware sends, so clients know where to log in.
            let value = format!("Keystone uri=\"{}\"", uri.replace('"', "%22"));
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(axum::http::header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}
