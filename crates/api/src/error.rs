//! The error body every failed request returns, as other OpenStack APIs do:
//! `{"error": {"code": 409, "title": "Conflict", "message": "..."}}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status code, repeated for clients that only see the body.
    pub code: u16,
    /// The status's reason phrase, e.g. "Conflict".
    pub title: String,
    /// What went wrong, naming the field or the conflicting resource.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: u16, title: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code,
                title: title.into(),
                message: message.into(),
            },
        }
    }
}
