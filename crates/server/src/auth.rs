//! Authentication and authorisation wiring: who a request comes from
//! (`auth_strategy`), and the policy that decides what they may do.
//!
//! With `noauth` the caller is an admin of whatever project `X-Project-Id`
//! names. With `keystone` the caller is whoever Keystone says the
//! `X-Auth-Token` belongs to; no token, or a token Keystone does not vouch
//! for, is a 401, and a Keystone that cannot be asked is a 503.

use navigator_keystone::auth::{Tls, TlsError, TlsFile};
use navigator_keystone::validate::{
    KeystoneError, PasswordCredentials, ValidateError, Validator, ValidatorConfig, v3_url,
};

use crate::config::{AuthStrategy, Config, KeystoneAuthtoken};
use crate::error::ApiError;
use crate::policy::{Credentials, Policy};

/// What authenticates and authorises requests; one per server.
pub struct Auth {
    /// Swapped whole by a SIGHUP reload ([`Auth::set_policy`]); a request
    /// holds the `Arc` it read for all its checks.
    policy: std::sync::RwLock<std::sync::Arc<Policy>>,
    keystone: Option<KeystoneAuth>,
}

struct KeystoneAuth {
    validator: Validator,
    /// Sent in `WWW-Authenticate: Keystone uri="..."` with every 401.
    www_authenticate_uri: String,
}

/// The identity a request was authenticated as.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub project_id: String,
    pub project_name: Option<String>,
    pub roles: Vec<String>,
}

/// The role names a noauth caller holds: every default rule passes.
pub const NOAUTH_ROLES: [&str; 3] = ["admin", "member", "reader"];

impl Auth {
    /// noauth with the default policy (tests and all-in-one).
    pub fn noauth() -> Auth {
        Auth {
            policy: std::sync::RwLock::new(std::sync::Arc::new(Policy::defaults())),
            keystone: None,
        }
    }

    /// Keystone validation with `validator` (tests build their own).
    pub fn keystone(validator: Validator, www_authenticate_uri: String, policy: Policy) -> Auth {
        Auth {
            policy: std::sync::RwLock::new(std::sync::Arc::new(policy)),
            keystone: Some(KeystoneAuth {
                validator,
                www_authenticate_uri,
            }),
        }
    }

    /// What `config` asks for. Errors are configuration problems (the
    /// policy file, Keystone options) and stop start-up with exit code 64.
    pub fn from_config(config: &Config) -> anyhow::Result<Auth> {
        let policy = Policy::load(config.policy_file.as_deref())?;
        match config.auth_strategy {
            AuthStrategy::NoAuth => Ok(Auth {
                policy: std::sync::RwLock::new(std::sync::Arc::new(policy)),
                keystone: None,
            }),
            AuthStrategy::Keystone => {
                let ks = &config.keystone_authtoken;
                if let Some(servers) = &ks.memcached_servers {
                    tracing::info!(
                        %servers,
                        "[keystone_authtoken] memcached_servers is not used: token validations are cached in memory"
                    );
                }
                warn_if_insecure(ks);
                let validator =
                    Validator::new(validator_config(ks)).map_err(keystone_client_error)?;
                Ok(Auth::keystone(validator, www_authenticate_uri(ks), policy))
            }
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> std::sync::Arc<Policy> {
        // The lock is held only to clone or replace the Arc; a poisoned
        // one still holds a whole policy.
        match self.policy.read() {
            Ok(policy) => policy.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `policy` in force for the checks that start from now on.
    pub fn set_policy(&self, policy: Policy) {
        let policy = std::sync::Arc::new(policy);
        match self.policy.write() {
            Ok(mut current) => *current = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }

    /// Whether tokens are validated with Keystone.
    pub fn is_keystone(&self) -> bool {
        self.keystone.is_some()
    }

    /// The validator, when Keystone is in use (for tests and metrics).
    pub fn validator(&self) -> Option<&Validator> {
        self.keystone.as_ref().map(|k| &k.validator)
    }

    /// Who sent `token` (the `X-Auth-Token` header, `None` when absent).
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        request_id: &str,
    ) -> Result<Identity, ApiError> {
        let Some(keystone) = &self.keystone else {
            // Callers handle noauth themselves (the project is a header).
            return Err(ApiError::Internal("authenticate called with noauth".into()));
        };
        let unauthorized = |message: &str| ApiError::Unauthorized {
            message: message.to_owned(),
            uri: keystone.www_authenticate_uri.clone(),
        };
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(unauthorized(
                "authentication required: send a Keystone token in X-Auth-Token",
            ));
        };
        let token = match keystone.validator.validate(token).await {
            Ok(token) => token,
            Err(ValidateError::Invalid(reason)) => {
                tracing::info!(request_id, %reason, "token refused");
                return Err(unauthorized(
                    "the token in X-Auth-Token is invalid, expired or revoked",
                ));
            }
            Err(ValidateError::Unavailable(reason)) => {
                tracing::warn!(request_id, %reason, "cannot validate a token");
                return Err(ApiError::Unavailable(
                    "the identity service (Keystone) is unavailable; nothing was changed, retry later"
                        .into(),
                ));
            }
        };
        // Forwards belong to projects; a domain- or system-scoped token has
        // none to act in.
        let Some(project) = &token.project else {
            return Err(ApiError::Forbidden(
                "a project-scoped token is required".into(),
            ));
        };
        Ok(Identity {
            user_id: Some(token.user.id.clone()),
            user_name: Some(token.user.name.clone()).filter(|n| !n.is_empty()),
            project_id: project.id.clone(),
            project_name: Some(project.name.clone()).filter(|n| !n.is_empty()),
            roles: token.role_names(),
        })
    }
}

/// oslo.policy credentials of an identity.
pub fn credentials(identity: &Identity) -> Credentials {
    let mut attributes = vec![("project_id", identity.project_id.as_str())];
    if let Some(user) = &identity.user_id {
        attributes.push(("user_id", user));
    }
    if let Some(name) = &identity.user_name {
        attributes.push(("user_name", name));
    }
    if let Some(name) = &identity.project_name {
        attributes.push(("project_name", name));
    }
    Credentials::new(&attributes, &identity.roles)
}

fn validator_config(ks: &KeystoneAuthtoken) -> ValidatorConfig {
    let mut config = ValidatorConfig::new(password_credentials(ks), ks.token_cache_time);
    config.tls = keystone_tls(ks);
    config
}

/// TLS to Keystone as `[keystone_authtoken] cafile`, `certfile`, `keyfile`
/// and `insecure` say (keystonemiddleware's meaning).
pub fn keystone_tls(ks: &KeystoneAuthtoken) -> Tls {
    Tls {
        cacert: ks.cafile.clone(),
        insecure: ks.insecure,
        client_cert: ks.certfile.clone(),
        client_key: ks.keyfile.clone(),
    }
}

/// Says loudly, once per process (start-up checks the configuration and
/// then builds it again), that Keystone's certificate is not checked.
pub fn warn_if_insecure(ks: &KeystoneAuthtoken) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if ks.insecure {
        WARNED.call_once(|| {
            tracing::warn!(
            auth_url = %ks.auth_url,
            "[keystone_authtoken] insecure = true: Keystone's certificate is NOT verified; \
             anyone on the path can read the service password and every token. Set cafile instead"
            );
        });
    }
}

/// A Keystone client that could not be made, with the option that named a
/// bad TLS file (a configuration problem: exit 64).
pub fn keystone_client_error(e: KeystoneError) -> anyhow::Error {
    match e {
        KeystoneError::Tls(e) => tls_error(&e),
        e => anyhow::Error::new(e).context("cannot set up the Keystone client"),
    }
}

/// `e` with the `[keystone_authtoken]` option its file came from.
pub fn tls_error(e: &TlsError) -> anyhow::Error {
    let option = match e.file() {
        TlsFile::CaBundle => "cafile",
        TlsFile::ClientCert => "certfile",
        TlsFile::ClientKey => "keyfile",
    };
    anyhow::anyhow!("[keystone_authtoken] {option}: {e}")
}

/// The service credentials of `[keystone_authtoken]`.
pub fn password_credentials(ks: &KeystoneAuthtoken) -> PasswordCredentials {
    PasswordCredentials {
        auth_url: ks.auth_url.clone(),
        username: ks.username.clone(),
        password: ks.password.clone(),
        project_name: ks.project_name.clone(),
        user_domain_name: ks.user_domain_name.clone(),
        project_domain_name: ks.project_domain_name.clone(),
    }
}

/// `www_authenticate_uri`, else `auth_url` (as keystonemiddleware does).
pub fn www_authenticate_uri(ks: &KeystoneAuthtoken) -> String {
    ks.www_authenticate_uri
        .clone()
        .unwrap_or_else(|| v3_url(&ks.auth_url))
}
