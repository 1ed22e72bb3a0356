//! A typed async client for API v1, used by the CLI, the tests and any other
//! Rust program that manages forwards.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ErrorBody;
use crate::quota::{
    Quota, QuotaBody, QuotaDetails, QuotaDetailsBody, QuotaSetBody, QuotaUpdate, QuotaUpdateBody,
};
use crate::v1::{
    Forward, ForwardBody, ForwardCreate, ForwardCreateBody, ForwardDetail, ForwardDetailBody,
    ForwardList, ForwardListQuery, ForwardUpdate, ForwardUpdateBody, Health, Proxy, ProxyBody,
    ProxyList, VersionList,
};

/// Header carrying the project in `noauth` mode.
pub const PROJECT_ID_HEADER: &str = "X-Project-Id";
/// Header carrying a Keystone token.
pub const AUTH_TOKEN_HEADER: &str = "X-Auth-Token";
/// Header in which every response names its request.
pub const REQUEST_ID_HEADER: &str = "X-OpenStack-Request-Id";

/// How the client identifies itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `auth_strategy = noauth`: the project is only a header (or the server's
    /// default when `None`).
    NoAuth { project_id: Option<String> },
    /// A Keystone token.
    Token(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot reach Navigator at {endpoint}: {source}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with an error body.
    #[error("{message} (HTTP {status}{})", request_id.as_deref().map(|id| format!(", request {id}")).unwrap_or_default())]
    Api {
        status: u16,
        title: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("unexpected response from {endpoint}: {reason}")]
    BadResponse { endpoint: String, reason: String },
}

impl ClientError {
    /// The HTTP status of an API error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client bound to one endpoint, e.g. `http://127.0.0.1:9797`.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    auth: Auth,
}

impl Client {
    pub fn new(endpoint: &str, auth: Auth) -> Result<Client, ClientError> {
        Client::with_builder(endpoint, auth, reqwest::Client::builder())
    }

    /// Like [`Client::new`], starting from `builder` (for example with the
    /// CA bundle of `--os-cacert`); timeouts are set here.
    pub fn with_builder(
        endpoint: &str,
        auth: Auth,
        builder: reqwest::ClientBuilder,
    ) -> Result<Client, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        };
        let url = reqwest::Url::parse(endpoint).map_err(|e| invalid(&e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(invalid("expected an http:// or https:// URL"));
        }
        if url.host().is_none() {
            return Err(invalid("the URL has no host"));
        }
        // reqwest is built with TLS but without a default crypto provider
        // (ring, not aws-lc); an error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = builder
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| invalid(&e.to_string()))?;
        // Accept both `http://host:9797` and `http://host:9797/v1/`.
        let mut endpoint = endpoint.trim_end_matches('/').to_owned();
        if let Some(stripped) = endpoint.strip_suffix("/v1") {
            endpoint = stripped.to_owned();
        }
        Ok(Client {
            http,
            endpoint,
            auth,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn create_forward(&self, forward: ForwardCreate) -> Result<Forward, ClientError> {
        let body = ForwardCreateBody { forward };
        let response: ForwardBody = self
            .send(
                reqwest::Method::POST,
                "/v1/forwards",
                Some(&body),
                None::<&()>,
            )
            .await?;
        Ok(response.forward)
    }

    pub async fn list_forwards(
        &self,
        query: &ForwardListQuery,
    ) -> Result<ForwardList, ClientError> {
        self.send(
            reqwest::Method::GET,
            "/v1/forwards",
            None::<&()>,
            Some(query),
        )
        .await
    }

    pub async fn get_forward(&self, id: &str) -> Result<Forward, ClientError> {
        let path = format!("/v1/forwards/{}", path_segment(id));
        let response: ForwardBody = self
            .send(reqwest::Method::GET, &path, None::<&()>, None::<&()>)
            .await?;
        Ok(response.forward)
    }

    /// The forward with its usage (`GET /v1/forwards/{id}`).
    pub async fn show_forward(&self, id: &str) -> Result<ForwardDetail, ClientError> {
        let path = format!("/v1/forwards/{}", path_segment(id));
        let response: ForwardDetailBody = self
            .send(reqwest::Method::GET, &path, None::<&()>, None::<&()>)
            .await?;
        Ok(response.forward)
    }

    pub async fn update_forward(
        &self,
        id: &str,
        forward: ForwardUpdate,
    ) -> Result<Forward, ClientError> {
        let path = format!("/v1/forwards/{}", path_segment(id));
        let body = ForwardUpdateBody { forward };
        let response: ForwardBody = self
            .send(reqwest::Method::PUT, &path, Some(&body), None::<&()>)
            .await?;
        Ok(response.forward)
    }

    pub async fn delete_forward(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/forwards/{}", path_segment(id));
        self.send_raw(reqwest::Method::DELETE, &path, None::<&()>, None::<&()>)
            .await?;
        Ok(())
    }

    pub async fn list_proxies(&self) -> Result<Vec<Proxy>, ClientError> {
        let list: ProxyList = self
            .send(
                reqwest::Method::GET,
                "/v1/proxies",
                None::<&()>,
                None::<&()>,
            )
            .await?;
        Ok(list.proxies)
    }

    pub async fn get_proxy(&self, host: &str) -> Result<Proxy, ClientError> {
        let path = format!("/v1/proxies/{}", path_segment(host));
        let body: ProxyBody = self
            .send(reqwest::Method::GET, &path, None::<&()>, None::<&()>)
            .await?;
        Ok(body.proxy)
    }

    /// A project's limits in force.
    pub async fn get_quota(&self, project_id: &str) -> Result<Quota, ClientError> {
        let path = format!("/v1/quotas/{}", path_segment(project_id));
        let body: QuotaBody = self
            .send(reqwest::Method::GET, &path, None::<&()>, None::<&()>)
            .await?;
        Ok(body.quota)
    }

    /// A project's limits and use.
    pub async fn get_quota_details(&self, project_id: &str) -> Result<QuotaDetails, ClientError> {
        let path = format!("/v1/quotas/{}/details", path_segment(project_id));
        let body: QuotaDetailsBody = self
            .send(reqwest::Method::GET, &path, None::<&()>, None::<&()>)
            .await?;
        Ok(body.quota)
    }

    /// Sets a project's limits (admin); the answer carries a warning when
    /// the project holds more than a new limit.
    pub async fn set_quota(
        &self,
        project_id: &str,
        quota: QuotaUpdate,
    ) -> Result<QuotaSetBody, ClientError> {
        let path = format!("/v1/quotas/{}", path_segment(project_id));
        self.send(
            reqwest::Method::PUT,
            &path,
            Some(&QuotaUpdateBody { quota }),
            None::<&()>,
        )
        .await
    }

    /// Returns a project to the `[quotas]` defaults (admin).
    pub async fn delete_quota(&self, project_id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/quotas/{}", path_segment(project_id));
        self.send_raw(reqwest::Method::DELETE, &path, None::<&()>, None::<&()>)
            .await?;
        Ok(())
    }

    pub async fn versions(&self) -> Result<VersionList, ClientError> {
        self.send(reqwest::Method::GET, "/", None::<&()>, None::<&()>)
            .await
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.send(
            reqwest::Method::GET,
            "/healthcheck",
            None::<&()>,
            None::<&()>,
        )
        .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
        query: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let text = self.send_raw(method, path, body, query).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::BadResponse {
            endpoint: self.endpoint.clone(),
            reason: format!("{path}: {e}"),
        })
    }

    async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
        query: Option<&impl Serialize>,
    ) -> Result<String, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.endpoint))
            .header(reqwest::header::ACCEPT, "application/json");
        request = match &self.auth {
            Auth::NoAuth {
                project_id: Some(project),
            } => request.header(PROJECT_ID_HEADER, project),
            Auth::NoAuth { project_id: None } => request,
            Auth::Token(token) => request.header(AUTH_TOKEN_HEADER, token),
        };
        if let Some(query) = query {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        let status = response.status();
        let request_id = response
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response
            .text()
            .await
            .map_err(|source| ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        if status.is_success() {
            return Ok(text);
        }
        let (title, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error.title, body.error.message),
            Err(_) => (
                status.canonical_reason().unwrap_or("Error").to_owned(),
                if text.trim().is_empty() {
                    status.to_string()
                } else {
                    text.trim().to_owned()
                },
            ),
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            title,
            message,
            request_id,
        })
    }
}

/// Every byte but ASCII letters, digits and `-_~` is escaped in a path
/// segment. Dots are escaped too (RFC 3986 allows them), so that "." or ".."
/// cannot walk up the path.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Escapes a path segment, so that an id typed by a user cannot change the path.
fn path_segment(value: &str) -> String {
    utf8_percent_encode(value, PATH_SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_normalised_and_checked() {
        let auth = Auth::NoAuth { project_id: None };
        assert_eq!(
            Client::new("http://127.0.0.1:9797/v1/", auth.clone())
                .unwrap()
                .endpoint(),
            "http://127.0.0.1:9797"
        );
        assert!(Client::new("127.0.0.1:9797", auth.clone()).is_err());
        assert!(Client::new("ftp://x", auth).is_err());
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("abc-123"), "abc-123");
        assert_eq!(path_segment("../x y"), "%2E%2E%2Fx%20y");
        assert_eq!(path_segment("."), "%2E");
        assert_eq!(path_segment("a?b#c%d+e&f"), "a%3Fb%23c%25d%2Be%26f");
        assert_eq!(path_segment("Ünï_~"), "%C3%9Cn%C3%AF_~");
    }
}
