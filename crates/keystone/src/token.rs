//! Token documents as Keystone returns them, and their expiry times.
//!
//! The same JSON comes back when a token is issued (`POST /v3/auth/tokens`)
//! and when it is validated (`GET /v3/auth/tokens`), so one type serves the
//! CLI and the server.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;

/// A token's `expires_at` did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unrecognised Keystone time {0:?}")]
pub struct TimeError(pub String);

/// Parses the times Keystone emits. Password tokens say
/// `2026-11-25T15:54:49.000000Z`; a token capped by an application
/// credential says `2026-11-25T15:34:30` (no fraction, no zone) until
/// Keystone restarts. A time without a zone is UTC.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, TimeError> {
    let trimmed = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = trimmed.strip_suffix('Z').unwrap_or(trimmed);
    NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|_| TimeError(text.to_owned()))
}

/// `{"token": {...}}`.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenBody {
    pub token: Token,
}

/// The parts of a token document Navigator uses.
#[derive(Clone, Debug, Deserialize)]
pub struct Token {
    #[serde(default)]
    pub methods: Vec<String>,
    pub user: User,
    /// Absent for unscoped, domain- or system-scoped tokens.
    #[serde(default)]
    pub project: Option<Project>,
    #[serde(default)]
    pub roles: Vec<Role>,
    pub expires_at: String,
    #[serde(default)]
    pub issued_at: Option<String>,
    /// Present unless validated with `?nocatalog`.
    #[serde(default)]
    pub catalog: Vec<CatalogEntry>,
    #[serde(default)]
    pub application_credential: Option<serde_json::Value>,
}

impl Token {
    pub fn expires_at(&self) -> Result<DateTime<Utc>, TimeError> {
        parse_time(&self.expires_at)
    }

    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.name.clone()).collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub domain: Option<Domain>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Project {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub domain: Option<Domain>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Domain {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Role {
    #[serde(default)]
    pub id: String,
    pub name: String,
}

/// One service of the catalog.
#[derive(Clone, Debug, Deserialize)]
pub struct CatalogEntry {
    #[serde(rename = "type")]
    pub service_type: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Endpoint {
    pub interface: String,
    #[serde(default)]
    pub region_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub url: String,
}

/// The URL of `service_type` for `interface` (public, internal, admin) and,
/// when given, `region`.
pub fn find_endpoint<'a>(
    catalog: &'a [CatalogEntry],
    service_type: &str,
    interface: &str,
    region: Option<&str>,
) -> Option<&'a str> {
    catalog
        .iter()
        .filter(|service| service.service_type == service_type)
        .flat_map(|service| service.endpoints.iter())
        .find(|endpoint| {
            endpoint.interface == interface
                && region.is_none_or(|r| {
                    endpoint.region_id.as_deref() == Some(r)
                        || endpoint.region.as_deref() == Some(r)
                })
        })
        .map(|endpoint| endpoint.url.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_time_form_keystone_emits() {
        let expected = DateTime::parse_from_rfc3339("2026-11-25T15:34:30Z")
            .unwrap()
            .with_timezone(&Utc);
        for text in [
            "2026-11-25T15:34:30.000000Z",
            "2026-11-25T15:34:30Z",
            "2026-11-25T15:34:30",
            "2026-11-25T15:34:30.000000",
            "2026-11-25T15:34:30+00:00",
        ] {
            assert_eq!(parse_time(text), Ok(expected), "{text}");
        }
        assert!(parse_time("tomorrow").is_err());
    }

    #[test]
    fn reads_a_validated_token_and_its_catalog() {
        let body: TokenBody = serde_json::from_value(serde_json::json!({"token": {
            "methods": ["password"],
            "user": {"domain": {"id": "default", "name": "Default"}, "id": "u1", "name": "alice"},
            "expires_at": "2026-11-25T15:54:49.000000Z",
            "project": {"domain": {"id": "default", "name": "Default"}, "id": "p1", "name": "demo"},
            "roles": [{"id": "r1", "name": "member"}, {"id": "r2", "name": "reader"}],
            "catalog": [{"type": "port-forwarding", "name": "navigator", "id": "s", "endpoints": [
                {"id": "e1", "interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "http://pub:9797"},
                {"id": "e2", "interface": "internal", "region_id": "RegionOne", "region": "RegionOne", "url": "http://int:9797"}
            ]}]
        }}))
        .unwrap();
        let token = body.token;
        assert_eq!(token.role_names(), ["member", "reader"]);
        assert_eq!(token.project.as_ref().map(|p| p.id.as_str()), Some("p1"));
        assert_eq!(
            find_endpoint(&token.catalog, "port-forwarding", "internal", None),
            Some("http://int:9797")
        );
        assert_eq!(
            find_endpoint(
                &token.catalog,
                "port-forwarding",
                "public",
                Some("RegionOne")
            ),
            Some("http://pub:9797")
        );
        assert_eq!(
            find_endpoint(
                &token.catalog,
                "port-forwarding",
                "public",
                Some("RegionTwo")
            ),
            None
        );
    }
}
