//! The dashboard's only way to read or change anything: requests to the
//! server's own REST router, in process, carrying the session's credential
//! exactly as a REST client would (`X-Auth-Token`, or `X-Project-Id` with
//! noauth). Authentication, policy, validation, placement and audit are
//! therefore those of the API, with no second code path to keep in step.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use navigator_api::ErrorBody;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt as _;

use super::session::Credential;

/// Largest API response the dashboard reads (a full page of forwards is far
/// smaller).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Why an API call did not succeed, as the dashboard shows it.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The API no longer accepts the session's token: log in again.
    Unauthorized,
    /// A request field was refused; `field` is the API's name for it.
    Field { field: String, message: String },
    /// Anything else the API said (403, 404, 409, 503...), with its message.
    Other { status: StatusCode, message: String },
}

impl Failure {
    /// The sentence to show for a failure that is not tied to a field.
    pub fn message(&self) -> String {
        match self {
            Failure::Unauthorized => "your session has expired; log in again".into(),
            Failure::Field { field, message } => format!("invalid {field}: {message}"),
            Failure::Other { status, message } if *status == StatusCode::SERVICE_UNAVAILABLE => {
                format!("a service Navigator depends on is unavailable: {message}")
            }
            Failure::Other { message, .. } => message.clone(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Unauthorized => StatusCode::UNAUTHORIZED,
            Failure::Field { .. } => StatusCode::BAD_REQUEST,
            Failure::Other { status, .. } => *status,
        }
    }
}

/// Sends one request to the REST router and decodes a successful JSON
/// answer as `T` (use `Value` when the body does not matter).
pub async fn call<T: DeserializeOwned>(
    api: &Router,
    credential: &Credential,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<T, Failure> {
    let mut request = Request::builder().method(method).uri(path);
    request = match credential {
        Credential::Token(token) => request.header("x-auth-token", token),
        Credential::Project(project) => request.header("x-project-id", project),
    };
    let request = match &body {
        Some(json) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string())),
        None => request.body(Body::empty()),
    }
    .map_err(|e| internal(format!("cannot build the API request: {e}")))?;
    let response = match api.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), MAX_RESPONSE)
        .await
        .map_err(|e| internal(format!("cannot read the API response: {e}")))?;
    if status.is_success() {
        let text = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes
        };
        return serde_json::from_slice(text)
            .map_err(|e| internal(format!("unexpected API response: {e}")));
    }
    let message = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| status.to_string());
    Err(classify(status, message))
}

fn internal(message: String) -> Failure {
    tracing::error!(%message, "dashboard API call failed");
    Failure::Other {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "internal error; the server log has the details".into(),
    }
}

/// Turns an API error into a [`Failure`]: the API's field messages read
/// `invalid FIELD: why`, and a taken port (409) is the external port's.
fn classify(status: StatusCode, message: String) -> Failure {
    if status == StatusCode::UNAUTHORIZED {
        return Failure::Unauthorized;
    }
    if status == StatusCode::BAD_REQUEST
        && let Some(rest) = message.strip_prefix("invalid ")
        && let Some((field, why)) = rest.split_once(": ")
        && !field.is_empty()
        && field.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    {
        return Failure::Field {
            field: field.to_owned(),
            message: why.to_owned(),
        };
    }
    if status == StatusCode::CONFLICT && message.contains("port") {
        return Failure::Field {
            field: "external_port".into(),
            message,
        };
    }
    Failure::Other { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_messages_name_their_field() {
        match classify(
            StatusCode::BAD_REQUEST,
            "invalid internal_port: 70000 is outside 1-65535".into(),
        ) {
            Failure::Field { field, message } => {
                assert_eq!(field, "internal_port");
                assert_eq!(message, "70000 is outside 1-65535");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, "malformed request body: x".into()),
            Failure::Other { .. }
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, "no".into()),
            Failure::Unauthorized
        ));
    }
}
