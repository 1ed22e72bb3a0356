//! API v1 quotas: a project's limits on forwards and ports, in Neutron's
//! shapes (`GET/PUT/DELETE /v2.0/quotas/{project_id}`, `GET
//! /v2.0/quotas/{project_id}/details`), under `/v1/quotas/{project_id}`.
//!
//! `-1` is unlimited. A limit below what the project holds is accepted (as
//! Neutron accepts it): the project keeps its forwards but cannot create
//! until it is back under, and the PUT's answer carries a `warning` saying so.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::v1::{FieldError, MAX_TEXT_LEN, hidden_char};

/// The largest limit: what the database's INTEGER columns hold.
pub const MAX_LIMIT: i64 = i32::MAX as i64;

/// A project's limits in force (its own, or the server's `[quotas]`
/// defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Quota {
    /// Forwards the project may hold (a port range counts as one); -1 is unlimited.
    #[schema(minimum = -1, maximum = 2147483647)]
    pub forwards: i64,
    /// External ports the project may hold (each port of a range counts); -1 is unlimited.
    #[schema(minimum = -1, maximum = 2147483647)]
    pub ports: i64,
}

/// `{"quota": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaBody {
    pub quota: Quota,
}

/// The answer to a PUT: the limits now in force and, when the project holds
/// more than a new limit allows, a `warning` that says so (creates are then
/// refused until it is back under).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaSetBody {
    pub quota: Quota,
    /// Present only when the project is over a limit, e.g. "project p1 holds
    /// 7 forwards, more than its limit of 5: its forwards stay, new ones are
    /// refused until it is back under".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The limits to change; a resource left out keeps its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaUpdate {
    /// -1 (unlimited) or 0 and more.
    #[serde(
        default,
        deserialize_with = "forwards_limit",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = -1, maximum = 2147483647)]
    pub forwards: Option<i64>,
    /// -1 (unlimited) or 0 and more.
    #[serde(
        default,
        deserialize_with = "ports_limit",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = -1, maximum = 2147483647)]
    pub ports: Option<i64>,
}

/// `{"quota": {"forwards": N, "ports": N}}` (PUT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaUpdateBody {
    pub quota: QuotaUpdate,
}

impl QuotaUpdate {
    /// Checks what serde cannot: that something is changed.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.forwards.is_none() && self.ports.is_none() {
            return Err(FieldError::new(
                "quota",
                "give forwards, ports or both (-1 is unlimited)",
            ));
        }
        Ok(())
    }
}

/// A resource's limit and what the project uses of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaDetail {
    /// -1 is unlimited.
    pub limit: i64,
    /// What the project holds now; may exceed `limit` after an admin lowered it.
    pub used: i64,
}

/// Limits and use per resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaDetails {
    pub forwards: QuotaDetail,
    pub ports: QuotaDetail,
}

/// `{"quota": {"forwards": {"limit": L, "used": U}, "ports": {...}}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaDetailsBody {
    pub quota: QuotaDetails,
}

/// What a limit may be, for messages (the API's, the CLI's and the
/// `[quotas]` options').
pub fn limit_expected() -> String {
    format!("expected -1 (unlimited) or a whole number from 0 to {MAX_LIMIT}")
}

/// Whether `value` is a limit: -1 (unlimited) or 0 up to [`MAX_LIMIT`].
pub fn is_limit(value: i64) -> bool {
    (-1..=MAX_LIMIT).contains(&value)
}

/// Checks a limit: -1 (unlimited) or 0 up to [`MAX_LIMIT`].
pub fn check_limit(field: &'static str, value: i64) -> Result<i64, FieldError> {
    if is_limit(value) {
        Ok(value)
    } else {
        Err(FieldError::new(
            field,
            format!("{value}: {}", limit_expected()),
        ))
    }
}

/// A limit as JSON: an integer in range, else an error naming the field
/// (serde's own would not name it for a wrong type).
fn limit<'de, D: Deserializer<'de>>(
    field: &'static str,
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    let number = value.as_i64().ok_or_else(|| {
        serde::de::Error::custom(FieldError::new(
            field,
            format!("{value}: {}", limit_expected()),
        ))
    })?;
    check_limit(field, number)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn forwards_limit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    limit("quota.forwards", deserializer)
}

fn ports_limit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    limit("quota.ports", deserializer)
}

/// Checks a project id taken from a path: not empty, at most 255
/// characters, no control or direction-changing characters.
pub fn check_project_id(value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.chars().count() > MAX_TEXT_LEN {
        return Err(FieldError::new(
            "project_id",
            format!("expected 1 to {MAX_TEXT_LEN} characters"),
        ));
    }
    if let Some(c) = hidden_char(value) {
        return Err(FieldError::new(
            "project_id",
            format!("contains the hidden character U+{:04X}", u32::from(c)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<QuotaUpdateBody, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn updates_name_the_bad_field() {
        assert_eq!(
            parse(r#"{"quota": {"forwards": 5}}"#).unwrap().quota,
            QuotaUpdate {
                forwards: Some(5),
                ports: None
            }
        );
        assert_eq!(
            parse(r#"{"quota": {"ports": -1}}"#).unwrap().quota.ports,
            Some(-1)
        );
        for (text, wanted) in [
            (
                r#"{"quota": {"forwards": -2}}"#,
                "invalid quota.forwards: -2: expected -1",
            ),
            (
                r#"{"quota": {"ports": "10"}}"#,
                "invalid quota.ports: \"10\": expected -1",
            ),
            (
                r#"{"quota": {"ports": 1.5}}"#,
                "invalid quota.ports: 1.5: expected -1",
            ),
            (
                r#"{"quota": {"ports": 2147483648}}"#,
                "invalid quota.ports: 2147483648",
            ),
            (
                r#"{"quota": {"floatingip": 1}}"#,
                "unknown field `floatingip`",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(wanted), "{text}: {e}");
        }
        assert!(QuotaUpdate::default().validate().is_err());
    }

    #[test]
    fn project_ids_are_checked() {
        assert!(check_project_id("4f1c0e0e9d6a4b7c8e2f1a3b5c7d9e0f").is_ok());
        assert!(check_project_id("").is_err());
        assert!(check_project_id(&"x".repeat(256)).is_err());
        assert!(check_project_id("a\u{202E}b").is_err());
    }
}
