//! Authenticating to Keystone and reading the service catalog (client side).
//!
//! [`authenticate`] turns one of the three kinds of credentials that
//! openstackclient accepts (password, application credential, token) into a
//! [`Session`]: the token to send as `X-Auth-Token` and the token document,
//! whose catalog says where Navigator is.
//!
//! Secrets are wrapped in [`Secret`], whose `Debug` hides them, so that no
//! error message or `--debug` output can show one.

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::token::{Token, TokenBody};

/// The header in which Keystone returns an issued token and takes the token
/// to validate.
pub const SUBJECT_TOKEN_HEADER: &str = "X-Subject-Token";
const AUTH_TOKEN_HEADER: &str = "X-Auth-Token";

/// A password, application credential secret or token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the request body and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// A domain, by id or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainRef {
    Id(String),
    Name(String),
}

impl DomainRef {
    fn json(&self) -> Value {
        match self {
            DomainRef::Id(id) => json!({ "id": id }),
            DomainRef::Name(name) => json!({ "name": name }),
        }
    }
}

/// A user: an id is unique, a name only within its domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

impl UserRef {
    fn json(&self) -> Value {
        match self {
            UserRef::Id(id) => json!({ "id": id }),
            UserRef::Name { name, domain } => json!({ "name": name, "domain": domain.json() }),
        }
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::Id(id) => write!(f, "user id '{id}'"),
            UserRef::Name { name, .. } => write!(f, "user '{name}'"),
        }
    }
}

/// The project a token is scoped to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

impl ProjectRef {
    fn scope(&self) -> Value {
        let project = match self {
            ProjectRef::Id(id) => json!({ "id": id }),
            ProjectRef::Name { name, domain } => json!({ "name": name, "domain": domain.json() }),
        };
        json!({ "project": project })
    }
}

impl fmt::Display for ProjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProjectRef::Id(id) => write!(f, "project id '{id}'"),
            ProjectRef::Name { name, .. } => write!(f, "project '{name}'"),
        }
    }
}

/// An application credential: its id, or its name and owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppCredentialRef {
    Id(String),
    Name { name: String, user: UserRef },
}

/// What to authenticate with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Password {
        user: UserRef,
        password: Secret,
        /// Without one Keystone may still scope the token to the user's
        /// default project, which is why a given project is always sent.
        project: Option<ProjectRef>,
    },
    /// The token's scope is the credential's project; no scope is sent.
    ApplicationCredential {
        credential: AppCredentialRef,
        secret: Secret,
    },
    /// An existing token (`OS_TOKEN`): rescoped to `project` when one is
    /// given, otherwise validated as it is.
    Token {
        token: Secret,
        project: Option<ProjectRef>,
    },
}

impl Credentials {
    /// Whose credentials these are, for messages: `user 'alice'`,
    /// `application credential 'nav-cli'`, `the token`.
    pub fn describe(&self) -> String {
        match self {
            Credentials::Password {
                user,
                project: Some(project),
                ..
            } => format!("{user} on {project}"),
            Credentials::Password { user, .. } => user.to_string(),
            Credentials::ApplicationCredential {
                credential: AppCredentialRef::Id(id),
                ..
            } => format!("application credential '{id}'"),
            Credentials::ApplicationCredential {
                credential: AppCredentialRef::Name { name, user },
                ..
            } => format!("application credential '{name}' of {user}"),
            Credentials::Token {
                project: Some(project),
                ..
            } => format!("the token (rescoping to {project})"),
            Credentials::Token { .. } => "the token".to_owned(),
        }
    }

    /// The body of `POST /v3/auth/tokens`, or `None` when the token is only
    /// validated.
    fn issue_body(&self) -> Option<Value> {
        let (identity, scope) = match self {
            Credentials::Password {
                user,
                password,
                project,
            } => {
                let mut user = user.json();
                user["password"] = json!(password.expose());
                (
                    json!({ "methods": ["password"], "password": { "user": user } }),
                    project.as_ref().map(ProjectRef::scope),
                )
            }
            Credentials::ApplicationCredential { credential, secret } => {
                let credential = match credential {
                    AppCredentialRef::Id(id) => json!({ "id": id, "secret": secret.expose() }),
                    AppCredentialRef::Name { name, user } => {
                        json!({ "name": name, "user": user.json(), "secret": secret.expose() })
                    }
                };
                (
                    json!({ "methods": ["application_credential"], "application_credential": credential }),
                    None,
                )
            }
            Credentials::Token {
                token,
                project: Some(project),
            } => (
                json!({ "methods": ["token"], "token": { "id": token.expose() } }),
                Some(project.scope()),
            ),
            // Keystone's token method without a scope answers with an
            // unscoped token (no project, no catalog); validating the token
            // keeps its scope instead.
            Credentials::Token { project: None, .. } => return None,
        };
        let mut auth = json!({ "identity": identity });
        if let Some(scope) = scope {
            auth["scope"] = scope;
        }
        Some(json!({ "auth": auth }))
    }
}

/// A token and its document (user, project, expiry, catalog).
#[derive(Clone, Debug)]
pub struct Session {
    pub token: Secret,
    pub body: Token,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid auth URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot reach Keystone at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// 401 (wrong secret, unknown user, no role on the project, expired
    /// credential) or 404 for a token that does not validate.
    #[error("Keystone rejected the credentials for {who} (HTTP {status}): {message}")]
    Rejected {
        who: String,
        status: u16,
        message: String,
    },
    #[error("Keystone at {url} answered HTTP {status}: {message}")]
    Keystone {
        url: String,
        status: u16,
        message: String,
    },
    #[error("unexpected response from Keystone at {url}: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("{0}")]
    Tls(String),
}

/// The v3 API root for `auth_url`, which users give with or without `/v3`
/// (keystoneauth's version discovery ends up at `.../v3` either way).
pub fn v3_url(auth_url: &str) -> Result<String, AuthError> {
    let invalid = |reason: &str| AuthError::InvalidUrl {
        url: auth_url.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(auth_url.trim()).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid("expected an http:// or https:// URL"));
    }
    if url.host().is_none() {
        return Err(invalid("the URL has no host"));
    }
    let base = auth_url.trim().trim_end_matches('/');
    if base.ends_with("/v3") {
        Ok(base.to_owned())
    } else {
        Ok(format!("{base}/v3"))
    }
}

/// Makes ring the process's TLS crypto provider unless one is installed
/// already. reqwest's `rustls-no-provider` build panics when it builds a
/// client without one, and aws-lc is not wanted (it needs cmake and a C
/// toolchain to build).
pub fn install_tls_provider() {
    // An error only means that some provider is installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How the certificates of HTTPS servers (Keystone, Navigator) are checked,
/// as openstackclient's `--os-cacert` and `--insecure` (and
/// keystonemiddleware's `cafile`, `certfile`, `keyfile`, `insecure`) say.
/// The default trusts the built-in web roots and sends no client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// A PEM bundle to trust instead of the built-in roots.
    pub cacert: Option<std::path::PathBuf>,
    /// Accept any certificate (testing only: anyone on the path can then
    /// read the password and the token).
    pub insecure: bool,
    /// A PEM client certificate (chain) to present, for a Keystone that asks
    /// for one. Without `client_key` its key is read from this file too, as
    /// keystoneauth does.
    pub client_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `client_cert`.
    pub client_key: Option<std::path::PathBuf>,
}

/// Which file of a [`Tls`] an error is about, so that callers can name
/// the option it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    CaBundle,
    ClientCert,
    ClientKey,
}

/// A CA bundle, client certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The I/O error is in the message, not a `source`, so that printing
    // the chain of causes does not say it twice.
    #[error("cannot read the CA bundle {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the CA bundle {path} holds no PEM certificate: {reason}")]
    Invalid { path: String, reason: String },
    /// The client certificate or key file.
    #[error("{path}: {reason}")]
    Client {
        file: TlsFile,
        path: String,
        reason: String,
    },
}

impl TlsError {
    /// The file the error is about.
    pub fn file(&self) -> TlsFile {
        match self {
            TlsError::Read { .. } | TlsError::Invalid { .. } => TlsFile::CaBundle,
            TlsError::Client { file, .. } => *file,
        }
    }
}

impl Tls {
    /// `builder` with these certificate rules applied. Every file is read
    /// (and checked) here, so that a bad one is found when the client is
    /// made, not at the first request.
    pub fn configure(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, TlsError> {
        install_tls_provider();
        let mut builder = builder;
        if let Some(path) = &self.cacert {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|error| TlsError::Read {
                path: shown.clone(),
                error,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TlsError::Invalid {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(TlsError::Invalid {
                    path: shown,
                    reason: "no BEGIN CERTIFICATE block".into(),
                });
            }
            // Like requests' `verify=<bundle>`: only the bundle is trusted.
            builder = builder.tls_certs_only(certs);
        }
        if let Some(identity) = self.identity()? {
            builder = builder.identity(identity);
        }
        if self.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        Ok(builder)
    }

    /// The client certificate and key as one identity, checked to belong
    /// together (rustls would otherwise only fail at the handshake).
    fn identity(&self) -> Result<Option<reqwest::Identity>, TlsError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let error = |file: TlsFile, path: &std::path::Path| {
            let path = path.display().to_string();
            move |reason: String| TlsError::Client {
                file,
                path: path.clone(),
                reason,
            }
        };
        let (cert_path, key_file, key_path) = match (&self.client_cert, &self.client_key) {
            (None, None) => return Ok(None),
            (None, Some(key)) => {
                return Err(error(TlsFile::ClientKey, key)(
                    "a client key needs its client certificate".into(),
                ));
            }
            (Some(cert), Some(key)) => (cert, TlsFile::ClientKey, key),
            (Some(cert), None) => (cert, TlsFile::ClientCert, cert),
        };
        let read = |file: TlsFile, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| error(file, path)(format!("cannot read it: {e}")))
        };
        let cert_pem = read(TlsFile::ClientCert, cert_path)?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                error(TlsFile::ClientCert, cert_path)(format!("not a valid PEM file: {e}"))
            })?;
        if certs.is_empty() {
            return Err(error(TlsFile::ClientCert, cert_path)(
                "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        let key_pem = read(key_file, key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            error(key_file, key_path)(match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no private key in it (expected an unencrypted PEM key: -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)".to_owned(),
                e => format!("not a valid PEM file: {e}"),
            })
        })?;
        rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| {
                error(key_file, key_path)(format!(
                    "not the key of the client certificate {}: {e}",
                    cert_path.display()
                ))
            })?;
        // reqwest wants certificate and key as one PEM text.
        let mut pem = cert_pem;
        if key_path != cert_path {
            pem.push(b'\n');
            pem.extend_from_slice(&key_pem);
        }
        reqwest::Identity::from_pem(&pem)
            .map(Some)
            .map_err(|e| error(key_file, key_path)(format!("not a usable client identity: {e}")))
    }
}

/// An HTTP client suited to Keystone.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    install_tls_provider();
    keystone_client_builder().build()
}

fn keystone_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        // Keystone behind uwsgi's --http-socket closes kept-alive connections
        // without saying so, and the next request on a pooled connection
        // fails with "connection reset"; one connection per request avoids it.
        .pool_max_idle_per_host(0)
}

/// Gets a token for `credentials` from the Keystone at `auth_url`.
pub async fn authenticate(auth_url: &str, credentials: &Credentials) -> Result<Session, AuthError> {
    authenticate_with(auth_url, credentials, &Tls::default()).await
}

/// [`authenticate`], checking Keystone's certificate as `tls` says.
pub async fn authenticate_with(
    auth_url: &str,
    credentials: &Credentials,
    tls: &Tls,
) -> Result<Session, AuthError> {
    let base = v3_url(auth_url)?;
    let url = format!("{base}/auth/tokens");
    let builder = tls
        .configure(keystone_client_builder())
        .map_err(|e| AuthError::Tls(e.to_string()))?;
    let http = builder.build().map_err(|source| AuthError::Unreachable {
        url: base.clone(),
        source,
    })?;
    let request = match (credentials.issue_body(), credentials) {
        (Some(body), _) => http.post(&url).json(&body),
        (None, Credentials::Token { token, .. }) => http
            .get(&url)
            // A token's owner may validate it: the same token twice.
            .header(AUTH_TOKEN_HEADER, token.expose())
            .header(SUBJECT_TOKEN_HEADER, token.expose()),
        (None, _) => {
            return Err(AuthError::BadResponse {
                url: base,
                reason: "no request body for these credentials".to_owned(),
            });
        }
    };
    let response = request
        .header(reqwest::header::ACCEPT, "application/json")
        .header(reqwest::header::CONNECTION, "close")
        .send()
        .await
        .map_err(|source| AuthError::Unreachable {
            url: base.clone(),
            source,
        })?;
    let status = response.status();
    let subject = response
        .headers()
        .get(SUBJECT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response
        .text()
        .await
        .map_err(|source| AuthError::Unreachable {
            url: base.clone(),
            source,
        })?;
    if !status.is_success() {
        let mut message = error_message(&text).unwrap_or_else(|| status.to_string());
        // Keystone quotes a token it cannot find ("Could not find token:
        // ..."); the message is printed and logged, the token must not be.
        if let Credentials::Token { token, .. } = credentials
            && !token.expose().is_empty()
        {
            message = message.replace(token.expose(), "<token>");
        }
        let code = status.as_u16();
        // 404 is how Keystone says that a token to validate is invalid or
        // expired; for other credentials it means a wrong URL.
        let token_not_found = code == 404 && matches!(credentials, Credentials::Token { .. });
        return Err(if code == 401 || token_not_found {
            AuthError::Rejected {
                who: credentials.describe(),
                status: code,
                message,
            }
        } else {
            AuthError::Keystone {
                url: url.clone(),
                status: code,
                message,
            }
        });
    }
    let body: TokenBody = serde_json::from_str(&text).map_err(|e| AuthError::BadResponse {
        url: url.clone(),
        reason: format!("not a token document: {e}"),
    })?;
    let token = match (subject, credentials) {
        (Some(token), _) if !token.trim().is_empty() => Secret::new(token.trim()),
        // GET echoes the header, but the token is known anyway.
        (
            _,
            Credentials::Token {
                token,
                project: None,
            },
        ) => token.clone(),
        _ => {
            return Err(AuthError::BadResponse {
                url,
                reason: format!("no {SUBJECT_TOKEN_HEADER} header in the answer"),
            });
        }
    };
    Ok(Session {
        token,
        body: body.token,
    })
}

/// The message of an OpenStack error body `{"error": {"message": ...}}`.
fn error_message(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_domain() -> DomainRef {
        DomainRef::Id("default".into())
    }

    #[test]
    fn auth_url_gets_v3_once() {
        for url in [
            "http://k:5000",
            "http://k:5000/",
            "http://k:5000/v3",
            "http://k:5000/v3/",
        ] {
            assert_eq!(v3_url(url).unwrap(), "http://k:5000/v3", "{url}");
        }
        assert_eq!(
            v3_url("https://cloud/identity").unwrap(),
            "https://cloud/identity/v3"
        );
        assert!(v3_url("k:5000").is_err());
        assert!(v3_url("ftp://k").is_err());
    }

    #[test]
    fn password_body_always_carries_the_given_scope() {
        let credentials = Credentials::Password {
            user: UserRef::Name {
                name: "alice".into(),
                domain: DomainRef::Name("Default".into()),
            },
            password: Secret::new("pw"),
            project: Some(ProjectRef::Name {
                name: "demo".into(),
                domain: default_domain(),
            }),
        };
        assert_eq!(
            credentials.issue_body().unwrap(),
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "alice", "domain": {"name": "Default"}, "password": "pw"}}},
                "scope": {"project": {"name": "demo", "domain": {"id": "default"}}}
            }})
        );
        assert_eq!(credentials.describe(), "user 'alice' on project 'demo'");
        let by_id = Credentials::Password {
            user: UserRef::Id("u1".into()),
            password: Secret::new("pw"),
            project: None,
        };
        assert_eq!(
            by_id.issue_body().unwrap(),
            json!({"auth": {"identity": {"methods": ["password"],
                "password": {"user": {"id": "u1", "password": "pw"}}}}})
        );
    }

    #[test]
    fn application_credential_bodies_have_no_scope() {
        let by_id = Credentials::ApplicationCredential {
            credential: AppCredentialRef::Id("ac1".into()),
            secret: Secret::new("s"),
        };
        assert_eq!(
            by_id.issue_body().unwrap(),
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": "ac1", "secret": "s"}}}})
        );
        let by_name = Credentials::ApplicationCredential {
            credential: AppCredentialRef::Name {
                name: "nav-cli".into(),
                user: UserRef::Name {
                    name: "alice".into(),
                    domain: default_domain(),
                },
            },
            secret: Secret::new("s"),
        };
        assert_eq!(
            by_name.issue_body().unwrap(),
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"name": "nav-cli", "secret": "s",
                    "user": {"name": "alice", "domain": {"id": "default"}}}}}})
        );
    }

    #[test]
    fn token_is_rescoped_only_to_a_given_project() {
        let rescope = Credentials::Token {
            token: Secret::new("t"),
            project: Some(ProjectRef::Id("p1".into())),
        };
        assert_eq!(
            rescope.issue_body().unwrap(),
            json!({"auth": {"identity": {"methods": ["token"], "token": {"id": "t"}},
                "scope": {"project": {"id": "p1"}}}})
        );
        let validate = Credentials::Token {
            token: Secret::new("t"),
            project: None,
        };
        assert!(validate.issue_body().is_none());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let credentials = Credentials::Password {
            user: UserRef::Id("u1".into()),
            password: Secret::new("hunter2"),
            project: None,
        };
        let text = format!("{credentials:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// Keystone's 404 quotes the token it could not find; the error the CLI
    /// prints does not.
    #[tokio::test]
    async fn a_refused_token_is_not_quoted_back() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v3", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let body = r#"{"error":{"code":404,"message":"Could not find token: secret-tok-123","title":"Not Found"}}"#;
            let response = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
        });
        let credentials = Credentials::Token {
            token: Secret::new("secret-tok-123"),
            project: None,
        };
        let Err(err) = authenticate(&url, &credentials).await else {
            panic!("the token was accepted");
        };
        let text = format!("{err} {err:?}");
        assert!(matches!(err, AuthError::Rejected { .. }), "{text}");
        assert!(!text.contains("secret-tok-123"), "{text}");
        assert!(text.contains("Could not find token: <token>"), "{text}");
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(
            error_message(r#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#).as_deref(),
            Some("The request you have made requires authentication.")
        );
        assert_eq!(error_message("<html>"), None);
    }
}
