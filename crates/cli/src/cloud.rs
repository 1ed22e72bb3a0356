//! Where the CLI's login settings come from, the way openstackclient finds
//! them: `--os-*` flags, then `OS_*` environment variables, then the cloud
//! that `--os-cloud`/`OS_CLOUD` picks out of `clouds.yaml` (with
//! `secure.yaml` merged in).
//!
//! [`resolve`] takes the environment as a map and the search locations as
//! paths, so that tests can try every precedence rule without touching the
//! process environment or the user's files. It only decides; talking to
//! Keystone is `config.rs`'s job.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use navigator_keystone::auth::{
    AppCredentialRef, Credentials, DomainRef, ProjectRef, Secret, UserRef,
};
use serde_json::{Map, Value};

/// The process environment, or a fake one in tests.
pub type Env = HashMap<String, String>;

/// The real environment; variables that are not UTF-8 cannot be settings.
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// One setting's three names: `--os-auth-url`, `OS_AUTH_URL`, `auth_url`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
    /// The key in a clouds.yaml cloud, under `auth` or at its top level.
    pub key: &'static str,
}

const fn setting(flag: &'static str, env: &'static str, key: &'static str) -> Setting {
    Setting { flag, env, key }
}

pub const AUTH_URL: Setting = setting("--os-auth-url", "OS_AUTH_URL", "auth_url");
pub const AUTH_TYPE: Setting = setting("--os-auth-type", "OS_AUTH_TYPE", "auth_type");
pub const USERNAME: Setting = setting("--os-username", "OS_USERNAME", "username");
pub const USER_ID: Setting = setting("--os-user-id", "OS_USER_ID", "user_id");
pub const PASSWORD: Setting = setting("--os-password", "OS_PASSWORD", "password");
pub const PROJECT_NAME: Setting = setting("--os-project-name", "OS_PROJECT_NAME", "project_name");
pub const PROJECT_ID: Setting = setting("--os-project-id", "OS_PROJECT_ID", "project_id");
pub const USER_DOMAIN_NAME: Setting = setting(
    "--os-user-domain-name",
    "OS_USER_DOMAIN_NAME",
    "user_domain_name",
);
pub const USER_DOMAIN_ID: Setting =
    setting("--os-user-domain-id", "OS_USER_DOMAIN_ID", "user_domain_id");
pub const PROJECT_DOMAIN_NAME: Setting = setting(
    "--os-project-domain-name",
    "OS_PROJECT_DOMAIN_NAME",
    "project_domain_name",
);
pub const PROJECT_DOMAIN_ID: Setting = setting(
    "--os-project-domain-id",
    "OS_PROJECT_DOMAIN_ID",
    "project_domain_id",
);
/// The domain of users and projects named without one (osc's default is
/// the id `default`).
pub const DEFAULT_DOMAIN: Setting =
    setting("--os-default-domain", "OS_DEFAULT_DOMAIN", "default_domain");
pub const REGION_NAME: Setting = setting("--os-region-name", "OS_REGION_NAME", "region_name");
pub const INTERFACE: Setting = setting("--os-interface", "OS_INTERFACE", "interface");
pub const APP_CREDENTIAL_ID: Setting = setting(
    "--os-application-credential-id",
    "OS_APPLICATION_CREDENTIAL_ID",
    "application_credential_id",
);
pub const APP_CREDENTIAL_NAME: Setting = setting(
    "--os-application-credential-name",
    "OS_APPLICATION_CREDENTIAL_NAME",
    "application_credential_name",
);
pub const APP_CREDENTIAL_SECRET: Setting = setting(
    "--os-application-credential-secret",
    "OS_APPLICATION_CREDENTIAL_SECRET",
    "application_credential_secret",
);
pub const TOKEN: Setting = setting("--os-token", "OS_TOKEN", "token");
pub const IDENTITY_API_VERSION: Setting = setting(
    "--os-identity-api-version",
    "OS_IDENTITY_API_VERSION",
    "identity_api_version",
);
/// Navigator's own override of the catalog; in clouds.yaml it has
/// openstacksdk's per-service name `<service_type>_endpoint_override`.
pub const ENDPOINT: Setting = setting(
    "--os-endpoint",
    "NAVIGATOR_ENDPOINT",
    "port_forwarding_endpoint_override",
);

/// A CA bundle to trust for Keystone and Navigator (openstacksdk's `cacert`).
pub const CACERT: Setting = setting("--os-cacert", "OS_CACERT", "cacert");

/// Every setting the flags carry, for the consistency test.
#[cfg(test)]
pub const ALL: [Setting; 21] = [
    AUTH_URL,
    AUTH_TYPE,
    USERNAME,
    USER_ID,
    PASSWORD,
    PROJECT_NAME,
    PROJECT_ID,
    USER_DOMAIN_NAME,
    USER_DOMAIN_ID,
    PROJECT_DOMAIN_NAME,
    PROJECT_DOMAIN_ID,
    DEFAULT_DOMAIN,
    REGION_NAME,
    INTERFACE,
    APP_CREDENTIAL_ID,
    APP_CREDENTIAL_NAME,
    APP_CREDENTIAL_SECRET,
    TOKEN,
    IDENTITY_API_VERSION,
    ENDPOINT,
    CACERT,
];

/// The service type Navigator registers in the catalog.
pub const SERVICE_TYPE: &str = "port-forwarding";

/// The login options, accepted before or after any subcommand. They have no
/// clap `env` attribute: [`resolve`] reads the environment itself, so that
/// it can tell a flag from a variable and both from clouds.yaml.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Authentication options (like openstackclient's)")]
pub struct OsArgs {
    /// Cloud name in clouds.yaml (Env: OS_CLOUD)
    #[arg(long, global = true, value_name = "NAME")]
    pub os_cloud: Option<String>,
    /// Keystone URL, with or without /v3 (Env: OS_AUTH_URL)
    #[arg(long, global = true, value_name = "URL")]
    pub os_auth_url: Option<String>,
    /// password, v3password, token, v3token, v3applicationcredential or none
    /// (Env: OS_AUTH_TYPE)
    #[arg(long, global = true, value_name = "TYPE")]
    pub os_auth_type: Option<String>,
    /// User name (Env: OS_USERNAME)
    #[arg(long, global = true, value_name = "NAME")]
    pub os_username: Option<String>,
    /// User id (Env: OS_USER_ID)
    #[arg(long, global = true, value_name = "ID")]
    pub os_user_id: Option<String>,
    /// User password (Env: OS_PASSWORD)
    #[arg(long, global = true, value_name = "PASSWORD")]
    pub os_password: Option<String>,
    /// Project to scope the token to (Env: OS_PROJECT_NAME)
    #[arg(long, global = true, value_name = "NAME")]
    pub os_project_name: Option<String>,
    /// Project to scope the token to; without Keystone, the project sent as
    /// X-Project-Id to a server with auth_strategy = noauth (Env:
    /// OS_PROJECT_ID)
    #[arg(long, global = true, value_name = "ID")]
    pub os_project_id: Option<String>,
    /// Domain of the user (Env: OS_USER_DOMAIN_NAME)
    #[arg(long, global = true, value_name = "NAME")]
    pub os_user_domain_name: Option<String>,
    /// Domain of the user (Env: OS_USER_DOMAIN_ID)
    #[arg(long, global = true, value_name = "ID")]
    pub os_user_domain_id: Option<String>,
    /// Domain of the project (Env: OS_PROJECT_DOMAIN_NAME)
    #[arg(long, global = true, value_name = "NAME")]
    pub os_project_domain_name: Option<String>,
    /// Domain of the project (Env: OS_PROJECT_DOMAIN_ID)
    #[arg(long, global = true, value_name = "ID")]
    pub os_project_domain_id: Option<String>,
    /// Domain id for users and projects given without one [default: default]
    /// (Env: OS_DEFAULT_DOMAIN)
    #[arg(long, global = true, value_name = "ID")]
    pub os_default_domain: Option<String>,
    /// Region of Navigator's endpoint in the catalog (Env: OS_REGION_NAME)
    #[arg(long, global = true, value_name = "NAME")]
    pub os_region_name: Option<String>,
    /// Catalog interface: public, internal or admin [default: public] (Env:
    /// OS_INTERFACE)
    #[arg(long, global = true, value_name = "INTERFACE")]
    pub os_interface: Option<String>,
    /// Application credential id (Env: OS_APPLICATION_CREDENTIAL_ID)
    #[arg(long, global = true, value_name = "ID")]
    pub os_application_credential_id: Option<String>,
    /// Application credential name, with --os-username or --os-user-id (Env:
    /// OS_APPLICATION_CREDENTIAL_NAME)
    #[arg(long, global = true, value_name = "NAME")]
    pub os_application_credential_name: Option<String>,
    /// Application credential secret (Env: OS_APPLICATION_CREDENTIAL_SECRET)
    #[arg(long, global = true, value_name = "SECRET")]
    pub os_application_credential_secret: Option<String>,
    /// Keystone token; with --os-endpoint it is sent as it is, otherwise
    /// Keystone is asked for the catalog (Env: OS_TOKEN)
    #[arg(long, global = true, value_name = "TOKEN")]
    pub os_token: Option<String>,
    /// Identity API version; only 3 (Env: OS_IDENTITY_API_VERSION)
    #[arg(long, global = true, value_name = "VERSION")]
    pub os_identity_api_version: Option<String>,
    /// URL of the Navigator API, instead of the catalog's [default without
    /// Keystone: http://127.0.0.1:9797] (Env: NAVIGATOR_ENDPOINT)
    #[arg(long, global = true, value_name = "URL")]
    pub os_endpoint: Option<String>,
    /// PEM bundle of the CAs to trust for Keystone and Navigator, instead
    /// of the built-in roots (Env: OS_CACERT)
    #[arg(long, global = true, value_name = "CA_BUNDLE_FILE")]
    pub os_cacert: Option<String>,
    /// Do not check server certificates (testing only; Env: OS_INSECURE;
    /// clouds.yaml: verify: false)
    #[arg(long, global = true)]
    pub insecure: bool,
}

impl OsArgs {
    /// The value of `setting`'s flag.
    fn flag(&self, setting: &Setting) -> Option<&str> {
        let value = match setting.flag {
            "--os-auth-url" => &self.os_auth_url,
            "--os-auth-type" => &self.os_auth_type,
            "--os-username" => &self.os_username,
            "--os-user-id" => &self.os_user_id,
            "--os-password" => &self.os_password,
            "--os-project-name" => &self.os_project_name,
            "--os-project-id" => &self.os_project_id,
            "--os-user-domain-name" => &self.os_user_domain_name,
            "--os-user-domain-id" => &self.os_user_domain_id,
            "--os-project-domain-name" => &self.os_project_domain_name,
            "--os-project-domain-id" => &self.os_project_domain_id,
            "--os-default-domain" => &self.os_default_domain,
            "--os-region-name" => &self.os_region_name,
            "--os-interface" => &self.os_interface,
            "--os-application-credential-id" => &self.os_application_credential_id,
            "--os-application-credential-name" => &self.os_application_credential_name,
            "--os-application-credential-secret" => &self.os_application_credential_secret,
            "--os-token" => &self.os_token,
            "--os-identity-api-version" => &self.os_identity_api_version,
            "--os-endpoint" => &self.os_endpoint,
            "--os-cacert" => &self.os_cacert,
            _ => &None,
        };
        value.as_deref()
    }
}

/// Where a value came from, for messages (never the value itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    Cloud { key: &'static str, cloud: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => f.write_str(flag),
            Source::Env(name) => f.write_str(name),
            Source::Cloud { key, cloud } => write!(f, "{key} in clouds.yaml cloud '{cloud}'"),
        }
    }
}

/// A value and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced {
    pub value: String,
    pub source: Source,
}

/// Where clouds.yaml and secure.yaml are looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locations {
    /// `OS_CLIENT_CONFIG_FILE`, if set.
    pub clouds_file: Option<PathBuf>,
    /// `OS_CLIENT_SECURE_FILE`, if set.
    pub secure_file: Option<PathBuf>,
    /// The directories, in order: the current one, the user's
    /// (`~/.config/openstack`), the system's (`/etc/openstack`).
    pub dirs: Vec<PathBuf>,
}

impl Locations {
    /// openstacksdk's search path, from the environment and the current
    /// directory.
    pub fn new(env: &Env, cwd: &Path) -> Locations {
        let var = |name: &str| {
            env.get(name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut dirs = vec![cwd.to_path_buf()];
        // appdirs, which openstacksdk uses, honours an absolute
        // XDG_CONFIG_HOME before ~/.config.
        let config_home = var("XDG_CONFIG_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|home| home.join(".config")));
        if let Some(config_home) = config_home {
            dirs.push(config_home.join("openstack"));
        }
        dirs.push(PathBuf::from("/etc/openstack"));
        Locations {
            clouds_file: var("OS_CLIENT_CONFIG_FILE"),
            secure_file: var("OS_CLIENT_SECURE_FILE"),
            dirs,
        }
    }

    /// The first existing file among the explicit one and `stem.{yaml,yml,json}`
    /// in each directory, as openstacksdk picks it.
    fn find(&self, explicit: Option<&PathBuf>, stem: &str) -> Option<PathBuf> {
        let in_dirs = self.dirs.iter().flat_map(|dir| {
            ["yaml", "yml", "json"]
                .into_iter()
                .map(move |ext| dir.join(format!("{stem}.{ext}")))
        });
        explicit
            .cloned()
            .into_iter()
            .chain(in_dirs)
            .find(|p| p.is_file())
    }

    fn describe(&self) -> String {
        let mut places = vec!["OS_CLIENT_CONFIG_FILE".to_owned()];
        places.extend(
            self.dirs
                .iter()
                .map(|d| d.join("clouds.yaml").display().to_string()),
        );
        places.join(", ")
    }
}

/// The selected cloud of clouds.yaml, secure.yaml merged in.
#[derive(Clone, Debug, PartialEq)]
pub struct Cloud {
    pub name: String,
    pub file: PathBuf,
    config: Map<String, Value>,
}

impl Cloud {
    /// Loads cloud `name` from the files `locations` finds.
    pub fn load(name: &str, locations: &Locations) -> Result<Cloud> {
        let file = locations
            .find(locations.clouds_file.as_ref(), "clouds")
            .ok_or_else(|| {
                anyhow!(
                    "cloud '{name}' was asked for, but there is no clouds.yaml (looked in {})",
                    locations.describe()
                )
            })?;
        let mut clouds = read_clouds(&file)?;
        if let Some(secure) = locations.find(locations.secure_file.as_ref(), "secure") {
            merge(&mut clouds, read_clouds(&secure)?);
        }
        let config = match clouds.get(name) {
            Some(Value::Object(config)) => config.clone(),
            Some(_) => bail!(
                "cloud '{name}' in {} is not a mapping of settings",
                file.display()
            ),
            None => {
                let mut known: Vec<&str> = clouds.keys().map(String::as_str).collect();
                known.sort_unstable();
                bail!(
                    "cloud '{name}' is not in {} (it has: {})",
                    file.display(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            }
        };
        Ok(Cloud {
            name: name.to_owned(),
            file,
            config: normalise_keys(config),
        })
    }

    /// A setting from `auth`, else from the top level (openstacksdk moves
    /// auth options it finds at the top level into `auth`).
    fn get(&self, key: &str) -> Option<String> {
        let auth = self.config.get("auth").and_then(Value::as_object);
        let value = auth
            .and_then(|auth| auth.get(key))
            .or_else(|| self.config.get(key))?;
        match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            _ => None,
        }
    }

    /// The first entry of `regions`, which openstacksdk uses when
    /// `region_name` is not set.
    fn first_region(&self) -> Option<String> {
        match self.config.get("regions")?.as_array()?.first()? {
            Value::String(name) => Some(name.clone()),
            Value::Object(region) => region.get("name")?.as_str().map(str::to_owned),
            _ => None,
        }
    }
}

/// The `clouds` mapping of a clouds.yaml or secure.yaml.
fn read_clouds(path: &Path) -> Result<Map<String, Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // JSON is YAML too.
    let document: Value = yaml_serde::from_str(&text)
        .with_context(|| format!("{} is not valid YAML", path.display()))?;
    match document.get("clouds") {
        Some(Value::Object(clouds)) => Ok(clouds.clone()),
        None | Some(Value::Null) => Ok(Map::new()),
        Some(_) => bail!("'clouds' in {} is not a mapping", path.display()),
    }
}

/// Merges `other` into `base`, mappings key by key (secure.yaml adds a
/// password to a cloud of clouds.yaml without repeating the rest).
fn merge(base: &mut Map<String, Value>, other: Map<String, Value>) {
    for (key, value) in other {
        match (base.get_mut(&key), value) {
            (Some(Value::Object(mine)), Value::Object(theirs)) => merge(mine, theirs),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// openstacksdk accepts `auth-url` for `auth_url`.
fn normalise_keys(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Object(inner) => Value::Object(normalise_keys(inner)),
                other => other,
            };
            (key.replace('-', "_"), value)
        })
        .collect()
}

/// Every source of settings, in precedence order.
pub struct Inputs<'a> {
    pub flags: &'a OsArgs,
    pub env: &'a Env,
    pub cloud: Option<Cloud>,
}

impl Inputs<'_> {
    /// The value of `setting`: flag, else environment, else the cloud. An
    /// empty value (`export OS_TOKEN=`) counts as not set.
    pub fn get(&self, setting: &Setting) -> Option<Sourced> {
        let clean = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        if let Some(value) = self.flags.flag(setting).and_then(clean) {
            return Some(Sourced {
                value,
                source: Source::Flag(setting.flag),
            });
        }
        if let Some(value) = self.env.get(setting.env).and_then(|v| clean(v)) {
            return Some(Sourced {
                value,
                source: Source::Env(setting.env),
            });
        }
        let cloud = self.cloud.as_ref()?;
        let value = cloud.get(setting.key).as_deref().and_then(clean)?;
        Some(Sourced {
            value,
            source: Source::Cloud {
                key: setting.key,
                cloud: cloud.name.clone(),
            },
        })
    }

    fn value(&self, setting: &Setting) -> Option<String> {
        self.get(setting).map(|s| s.value)
    }

    /// "missing credential: set --os-password or OS_PASSWORD (or password in
    /// clouds.yaml cloud 'x')", listing alternatives when there are several.
    fn missing(&self, settings: &[Setting]) -> anyhow::Error {
        let options: Vec<String> = settings
            .iter()
            .map(|s| format!("{} or {}", s.flag, s.env))
            .collect();
        let keys: Vec<&str> = settings.iter().map(|s| s.key).collect();
        let cloud = match &self.cloud {
            Some(cloud) => format!(
                " (or {} in clouds.yaml cloud '{}')",
                keys.join(" or "),
                cloud.name
            ),
            None => String::new(),
        };
        anyhow!("missing credential: set {}{cloud}", options.join(", or "))
    }

    fn require(&self, setting: &Setting) -> Result<Sourced> {
        self.get(setting).ok_or_else(|| self.missing(&[*setting]))
    }

    /// The domain of a user or project named without an id.
    fn domain(&self, id: &Setting, name: &Setting) -> DomainRef {
        if let Some(id) = self.value(id) {
            DomainRef::Id(id)
        } else if let Some(name) = self.value(name) {
            DomainRef::Name(name)
        } else if let Some(id) = self.cloud.as_ref().and_then(|c| c.get("domain_id")) {
            DomainRef::Id(id)
        } else if let Some(name) = self.cloud.as_ref().and_then(|c| c.get("domain_name")) {
            DomainRef::Name(name)
        } else {
            DomainRef::Id(
                self.value(&DEFAULT_DOMAIN)
                    .unwrap_or_else(|| "default".to_owned()),
            )
        }
    }

    /// The user, by id or by name and domain (an id wins, as in
    /// keystoneauth).
    fn user(&self) -> Option<UserRef> {
        if let Some(id) = self.value(&USER_ID) {
            return Some(UserRef::Id(id));
        }
        let name = self.value(&USERNAME)?;
        Some(UserRef::Name {
            name,
            domain: self.domain(&USER_DOMAIN_ID, &USER_DOMAIN_NAME),
        })
    }

    fn project(&self) -> Option<ProjectRef> {
        if let Some(id) = self.value(&PROJECT_ID) {
            return Some(ProjectRef::Id(id));
        }
        let name = self.value(&PROJECT_NAME)?;
        Some(ProjectRef::Name {
            name,
            domain: self.domain(&PROJECT_DOMAIN_ID, &PROJECT_DOMAIN_NAME),
        })
    }
}

/// The Keystone plugins openstackclient users name in `--os-auth-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthType {
    Password,
    Token,
    ApplicationCredential,
    None,
}

fn auth_type(value: &Sourced) -> Result<AuthType> {
    Ok(match value.value.to_ascii_lowercase().as_str() {
        "password" | "v3password" => AuthType::Password,
        "token" | "v3token" => AuthType::Token,
        "v3applicationcredential" | "applicationcredential" => AuthType::ApplicationCredential,
        "none" | "noauth" => AuthType::None,
        other => bail!(
            "unsupported auth type '{other}' (from {}): use password, v3password, token, v3token, v3applicationcredential or none",
            value.source
        ),
    })
}

/// How to reach Navigator, before any request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `--os-endpoint`, which replaces the catalog.
    pub endpoint: Option<String>,
    /// public, internal or admin.
    pub interface: String,
    pub region: Option<String>,
    pub login: Login,
    /// The selected cloud and its file, for `--debug`.
    pub cloud: Option<(String, PathBuf)>,
    /// How Keystone's and Navigator's certificates are checked.
    pub tls: navigator_keystone::auth::Tls,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    /// No Keystone: a server with auth_strategy = noauth.
    NoAuth { project_id: Option<String> },
    /// Ask Keystone for a token (or to check a given one) and the catalog.
    Keystone {
        auth_url: String,
        credentials: Credentials,
        /// Where the password, secret or token came from, for the message
        /// when Keystone rejects it.
        secret_source: Source,
    },
    /// A token without Keystone (no auth URL): sent to the endpoint as it is.
    Token { token: Secret },
}

/// Decides how to log in from the flags, the environment and clouds.yaml.
pub fn resolve(flags: &OsArgs, env: &Env, locations: &Locations) -> Result<Plan> {
    let cloud_name = flags
        .os_cloud
        .as_deref()
        .or_else(|| env.get("OS_CLOUD").map(String::as_str))
        .map(str::trim)
        .filter(|name| !name.is_empty());
    let cloud = cloud_name
        .map(|name| Cloud::load(name, locations))
        .transpose()?;
    let inputs = Inputs { flags, env, cloud };
    resolve_inputs(&inputs)
}

fn resolve_inputs(inputs: &Inputs<'_>) -> Result<Plan> {
    if let Some(version) = inputs.get(&IDENTITY_API_VERSION) {
        let major = version.value.split('.').next().unwrap_or_default();
        if major != "3" {
            bail!(
                "identity API version '{}' (from {}) is not supported: Navigator speaks Keystone v3 only",
                version.value,
                version.source
            );
        }
    }
    let interface = match inputs.get(&INTERFACE) {
        None => "public".to_owned(),
        Some(given) => {
            // Old clouds say publicURL, as endpoint_type did.
            let lower = given.value.to_ascii_lowercase();
            let name = lower.strip_suffix("url").unwrap_or(&lower);
            if !["public", "internal", "admin"].contains(&name) {
                bail!(
                    "invalid interface '{}' (from {}): use public, internal or admin",
                    given.value,
                    given.source
                );
            }
            name.to_owned()
        }
    };
    let region = inputs
        .value(&REGION_NAME)
        .or_else(|| inputs.cloud.as_ref().and_then(Cloud::first_region));
    let login = login(inputs)?;
    let tls = tls(inputs)?;
    Ok(Plan {
        tls,
        endpoint: inputs.value(&ENDPOINT),
        interface,
        region,
        login,
        cloud: inputs
            .cloud
            .as_ref()
            .map(|c| (c.name.clone(), c.file.clone())),
    })
}

/// `--os-cacert` / `OS_CACERT` / `cacert`, and `--insecure` / `OS_INSECURE`
/// / `verify: false` (or `insecure: true`) in clouds.yaml.
fn tls(inputs: &Inputs<'_>) -> Result<navigator_keystone::auth::Tls> {
    let cacert = inputs.value(&CACERT).map(PathBuf::from);
    let boolean = |value: &str, from: &str| -> Result<bool> {
        match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            other => bail!("invalid {from} '{other}': use true or false"),
        }
    };
    let insecure = if inputs.flags.insecure {
        true
    } else if let Some(value) = inputs.env.get("OS_INSECURE") {
        boolean(value, "OS_INSECURE")?
    } else if let Some(cloud) = &inputs.cloud {
        match (cloud.get("verify"), cloud.get("insecure")) {
            (Some(verify), _) => !boolean(&verify, "verify in clouds.yaml")?,
            (None, Some(insecure)) => boolean(&insecure, "insecure in clouds.yaml")?,
            (None, None) => false,
        }
    } else {
        false
    };
    Ok(navigator_keystone::auth::Tls {
        cacert,
        insecure,
        ..Default::default()
    })
}

fn login(inputs: &Inputs<'_>) -> Result<Login> {
    let explicit = inputs.get(&AUTH_TYPE).map(|t| auth_type(&t)).transpose()?;
    let auth_url = inputs.get(&AUTH_URL);
    let token = inputs.get(&TOKEN);
    if explicit == Some(AuthType::None)
        || (explicit.is_none() && auth_url.is_none() && token.is_none() && inputs.cloud.is_none())
    {
        return Ok(Login::NoAuth {
            project_id: inputs.value(&PROJECT_ID),
        });
    }
    // openstackclient's choice when no type is given: a user name means a
    // password, else a token means a token; an application credential is
    // recognised too, where osc would insist on --os-auth-type.
    let kind = explicit.unwrap_or_else(|| {
        if inputs.get(&USERNAME).is_some() || inputs.get(&USER_ID).is_some() {
            AuthType::Password
        } else if token.is_some() {
            AuthType::Token
        } else if inputs.get(&APP_CREDENTIAL_ID).is_some()
            || inputs.get(&APP_CREDENTIAL_SECRET).is_some()
        {
            AuthType::ApplicationCredential
        } else {
            AuthType::Password
        }
    });
    if kind == AuthType::Token {
        let token = inputs.require(&TOKEN)?;
        let secret = Secret::new(token.value);
        return Ok(match auth_url {
            Some(url) => Login::Keystone {
                auth_url: url.value,
                credentials: Credentials::Token {
                    token: secret,
                    project: inputs.project(),
                },
                secret_source: token.source,
            },
            None => Login::Token { token: secret },
        });
    }
    let auth_url = inputs.require(&AUTH_URL)?.value;
    let (credentials, secret_source) = match kind {
        AuthType::ApplicationCredential => {
            let credential = if let Some(id) = inputs.value(&APP_CREDENTIAL_ID) {
                AppCredentialRef::Id(id)
            } else if let Some(name) = inputs.value(&APP_CREDENTIAL_NAME) {
                let user = inputs
                    .user()
                    .ok_or_else(|| inputs.missing(&[USERNAME, USER_ID]))?;
                AppCredentialRef::Name { name, user }
            } else {
                return Err(inputs.missing(&[APP_CREDENTIAL_ID, APP_CREDENTIAL_NAME]));
            };
            let secret = inputs.require(&APP_CREDENTIAL_SECRET)?;
            (
                Credentials::ApplicationCredential {
                    credential,
                    secret: Secret::new(secret.value),
                },
                secret.source,
            )
        }
        _ => {
            let user = inputs
                .user()
                .ok_or_else(|| inputs.missing(&[USERNAME, USER_ID]))?;
            let password = inputs.require(&PASSWORD)?;
            (
                Credentials::Password {
                    user,
                    password: Secret::new(password.value),
                    project: inputs.project(),
                },
                password.source,
            )
        }
    };
    Ok(Login::Keystone {
        auth_url,
        credentials,
        secret_source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The flags of a command line, parsed by the real parser.
    fn flags(args: &[&str]) -> OsArgs {
        let cli = crate::cli::Cli::try_parse_from(
            ["navigator"].iter().chain(args).chain(&["proxy", "list"]),
        )
        .unwrap();
        cli.global.os
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A temporary directory standing for the current directory, with HOME
    /// pointing into it, so that no real file is read.
    struct Dirs {
        root: tempfile::TempDir,
    }

    impl Dirs {
        fn new() -> Dirs {
            Dirs {
                root: tempfile::tempdir().unwrap(),
            }
        }

        fn cwd(&self) -> PathBuf {
            let cwd = self.root.path().join("cwd");
            std::fs::create_dir_all(&cwd).unwrap();
            cwd
        }

        fn home(&self) -> PathBuf {
            self.root.path().join("home")
        }

        fn write(&self, relative: &str, text: &str) -> PathBuf {
            let path = self.root.path().join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }

        /// Resolves with `env` plus HOME; `/etc/openstack` is left out.
        fn resolve(&self, args: &[&str], pairs: &[(&str, &str)]) -> Result<Plan> {
            let mut env = env(pairs);
            env.insert("HOME".into(), self.home().display().to_string());
            let mut locations = Locations::new(&env, &self.cwd());
            locations.dirs.retain(|d| !d.starts_with("/etc"));
            resolve(&flags(args), &env, &locations)
        }
    }

    const CLOUDS: &str = "
clouds:
  mine:
    auth:
      auth_url: http://keystone:5000
      username: alice
      password: from-clouds
      project_name: demo
      user_domain_name: Users
    region_name: RegionTwo
    interface: internal
  other:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://keystone:5000/v3
      application_credential_id: ac1
";

    fn password(plan: &Plan) -> (&str, &Source) {
        match &plan.login {
            Login::Keystone {
                credentials: Credentials::Password { password, .. },
                secret_source,
                ..
            } => (password.expose(), secret_source),
            other => panic!("not a password login: {other:?}"),
        }
    }

    #[test]
    fn every_setting_has_a_flag_field() {
        for setting in ALL {
            let parsed = flags(&[setting.flag, "x"]);
            assert_eq!(parsed.flag(&setting), Some("x"), "{}", setting.flag);
        }
    }

    #[test]
    fn certificate_settings_follow_flag_env_cloud_precedence() {
        let dirs = Dirs::new();
        dirs.write(
            "cwd/clouds.yaml",
            "clouds:\n  mine:\n    auth:\n      auth_url: http://keystone:5000\n      token: t\n\
             \x20   cacert: /from/clouds.pem\n    verify: false\n  plain:\n    auth:\n      auth_url: http://keystone:5000\n      token: t\n",
        );
        let tls = |args: &[&str], env: &[(&str, &str)]| dirs.resolve(args, env).unwrap().tls;
        // Nothing set: built-in roots, certificates checked.
        assert_eq!(tls(&[], &[]), navigator_keystone::auth::Tls::default());
        assert_eq!(
            tls(&["--os-cloud", "plain"], &[]),
            navigator_keystone::auth::Tls::default()
        );
        let from_cloud = tls(&["--os-cloud", "mine"], &[]);
        assert_eq!(
            from_cloud.cacert.as_deref(),
            Some(Path::new("/from/clouds.pem"))
        );
        assert!(from_cloud.insecure, "verify: false");
        let from_env = tls(
            &["--os-cloud", "mine"],
            &[("OS_CACERT", "/from/env.pem"), ("OS_INSECURE", "false")],
        );
        assert_eq!(from_env.cacert.as_deref(), Some(Path::new("/from/env.pem")));
        assert!(!from_env.insecure, "OS_INSECURE=false beats verify: false");
        let from_flags = tls(
            &[
                "--os-cloud",
                "mine",
                "--os-cacert",
                "/from/flag.pem",
                "--insecure",
            ],
            &[("OS_CACERT", "/from/env.pem"), ("OS_INSECURE", "false")],
        );
        assert_eq!(
            from_flags.cacert.as_deref(),
            Some(Path::new("/from/flag.pem"))
        );
        assert!(from_flags.insecure);
        let err = dirs.resolve(&[], &[("OS_INSECURE", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("OS_INSECURE"), "{err}");
    }

    #[test]
    fn nothing_set_is_noauth_on_the_default_endpoint() {
        let dirs = Dirs::new();
        let plan = dirs.resolve(&[], &[("OS_PROJECT_ID", "p1")]).unwrap();
        assert_eq!(
            plan.login,
            Login::NoAuth {
                project_id: Some("p1".into())
            }
        );
        assert_eq!(plan.endpoint, None);
        assert_eq!(plan.interface, "public");
        // A token alone, without Keystone, is sent as it is (today's
        // behaviour).
        let plan = dirs.resolve(&["--os-token", "t"], &[]).unwrap();
        assert_eq!(
            plan.login,
            Login::Token {
                token: Secret::new("t")
            }
        );
    }

    #[test]
    fn clouds_yaml_in_the_current_directory_with_secure_yaml() {
        let dirs = Dirs::new();
        dirs.write(
            "cwd/clouds.yaml",
            &CLOUDS.replace("      password: from-clouds\n", ""),
        );
        dirs.write(
            "home/.config/openstack/secure.yaml",
            "clouds:\n  mine:\n    auth:\n      password: from-secure\n",
        );
        let plan = dirs.resolve(&["--os-cloud", "mine"], &[]).unwrap();
        let Login::Keystone {
            auth_url,
            credentials,
            secret_source,
        } = &plan.login
        else {
            panic!("not keystone: {plan:?}");
        };
        assert_eq!(auth_url, "http://keystone:5000");
        assert_eq!(
            credentials,
            &Credentials::Password {
                user: UserRef::Name {
                    name: "alice".into(),
                    domain: DomainRef::Name("Users".into())
                },
                password: Secret::new("from-secure"),
                project: Some(ProjectRef::Name {
                    name: "demo".into(),
                    domain: DomainRef::Id("default".into())
                }),
            }
        );
        assert_eq!(
            secret_source.to_string(),
            "password in clouds.yaml cloud 'mine'"
        );
        assert_eq!(plan.region.as_deref(), Some("RegionTwo"));
        assert_eq!(plan.interface, "internal");
    }

    #[test]
    fn precedence_is_flag_then_env_then_clouds_yaml() {
        let dirs = Dirs::new();
        dirs.write("home/.config/openstack/clouds.yaml", CLOUDS);
        let cloud = [("OS_CLOUD", "mine")];
        let plan = dirs.resolve(&[], &cloud).unwrap();
        assert_eq!(password(&plan).0, "from-clouds");

        let with_env = [("OS_CLOUD", "mine"), ("OS_PASSWORD", "from-env")];
        let plan = dirs.resolve(&[], &with_env).unwrap();
        assert_eq!(password(&plan), ("from-env", &Source::Env("OS_PASSWORD")));

        let plan = dirs
            .resolve(&["--os-password", "from-flag"], &with_env)
            .unwrap();
        assert_eq!(
            password(&plan),
            ("from-flag", &Source::Flag("--os-password"))
        );

        // Same for settings that are not secrets.
        let plan = dirs
            .resolve(
                &["--os-interface", "admin"],
                &[("OS_CLOUD", "mine"), ("OS_REGION_NAME", "RegionThree")],
            )
            .unwrap();
        assert_eq!(plan.interface, "admin");
        assert_eq!(plan.region.as_deref(), Some("RegionThree"));

        // An empty variable does not hide clouds.yaml.
        let plan = dirs
            .resolve(&[], &[("OS_CLOUD", "mine"), ("OS_PASSWORD", "")])
            .unwrap();
        assert_eq!(password(&plan).0, "from-clouds");
    }

    #[test]
    fn os_cloud_flag_beats_the_variable() {
        let dirs = Dirs::new();
        dirs.write("cwd/clouds.yaml", CLOUDS);
        let plan = dirs
            .resolve(
                &[
                    "--os-cloud",
                    "other",
                    "--os-application-credential-secret",
                    "s",
                ],
                &[("OS_CLOUD", "mine")],
            )
            .unwrap();
        assert_eq!(
            plan.login,
            Login::Keystone {
                auth_url: "http://keystone:5000/v3".into(),
                credentials: Credentials::ApplicationCredential {
                    credential: AppCredentialRef::Id("ac1".into()),
                    secret: Secret::new("s"),
                },
                secret_source: Source::Flag("--os-application-credential-secret"),
            }
        );
    }

    #[test]
    fn search_order_prefers_os_client_config_file_then_cwd_then_home() {
        let dirs = Dirs::new();
        let home = "clouds:\n  c:\n    auth: {auth_url: http://home, username: u, password: p}\n";
        let cwd = home.replace("http://home", "http://cwd");
        let explicit = home.replace("http://home", "http://explicit");
        dirs.write("home/.config/openstack/clouds.yaml", home);
        let url = |plan: Plan| match plan.login {
            Login::Keystone { auth_url, .. } => auth_url,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            url(dirs.resolve(&["--os-cloud", "c"], &[]).unwrap()),
            "http://home"
        );
        dirs.write("cwd/clouds.yaml", &cwd);
        assert_eq!(
            url(dirs.resolve(&["--os-cloud", "c"], &[]).unwrap()),
            "http://cwd"
        );
        let file = dirs.write("elsewhere/my-clouds.yaml", &explicit);
        let plan = dirs
            .resolve(
                &["--os-cloud", "c"],
                &[("OS_CLIENT_CONFIG_FILE", &file.display().to_string())],
            )
            .unwrap();
        assert_eq!(url(plan), "http://explicit");
    }

    #[test]
    fn unknown_cloud_and_missing_file_are_explained() {
        let dirs = Dirs::new();
        let err = dirs.resolve(&["--os-cloud", "nope"], &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cloud 'nope' was asked for, but there is no clouds.yaml"),
            "{err}"
        );
        dirs.write("cwd/clouds.yaml", CLOUDS);
        let err = dirs.resolve(&[], &[("OS_CLOUD", "nope")]).unwrap_err();
        assert!(err.to_string().contains("(it has: mine, other)"), "{err}");
    }

    #[test]
    fn missing_credentials_name_flag_variable_and_key() {
        let dirs = Dirs::new();
        dirs.write(
            "cwd/clouds.yaml",
            CLOUDS.replace("      password: from-clouds\n", "").as_str(),
        );
        let err = dirs.resolve(&[], &[("OS_CLOUD", "mine")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing credential: set --os-password or OS_PASSWORD (or password in clouds.yaml cloud 'mine')"
        );
        let err = dirs
            .resolve(&[], &[("OS_AUTH_URL", "http://k"), ("OS_PASSWORD", "p")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing credential: set --os-username or OS_USERNAME, or --os-user-id or OS_USER_ID"
        );
        let err = dirs
            .resolve(
                &["--os-username", "alice", "--os-password", "p"],
                &[("OS_AUTH_TYPE", "password")],
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing credential: set --os-auth-url or OS_AUTH_URL"
        );
        let err = dirs
            .resolve(
                &[
                    "--os-auth-type",
                    "v3applicationcredential",
                    "--os-auth-url",
                    "http://k",
                ],
                &[("OS_APPLICATION_CREDENTIAL_ID", "ac1")],
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing credential: set --os-application-credential-secret or OS_APPLICATION_CREDENTIAL_SECRET"
        );
        let err = dirs
            .resolve(
                &["--os-auth-type", "token", "--os-auth-url", "http://k"],
                &[],
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing credential: set --os-token or OS_TOKEN"
        );
    }

    #[test]
    fn auth_type_is_inferred_like_openstackclient() {
        let dirs = Dirs::new();
        // A user name wins over a token lying around in the environment.
        let plan = dirs
            .resolve(
                &[],
                &[
                    ("OS_AUTH_URL", "http://k"),
                    ("OS_USERNAME", "alice"),
                    ("OS_PASSWORD", "p"),
                    ("OS_TOKEN", "t"),
                ],
            )
            .unwrap();
        assert!(matches!(
            plan.login,
            Login::Keystone {
                credentials: Credentials::Password { .. },
                ..
            }
        ));
        let plan = dirs
            .resolve(
                &[],
                &[
                    ("OS_AUTH_URL", "http://k"),
                    ("OS_TOKEN", "t"),
                    ("OS_PROJECT_ID", "p1"),
                ],
            )
            .unwrap();
        assert_eq!(
            plan.login,
            Login::Keystone {
                auth_url: "http://k".into(),
                credentials: Credentials::Token {
                    token: Secret::new("t"),
                    project: Some(ProjectRef::Id("p1".into()))
                },
                secret_source: Source::Env("OS_TOKEN"),
            }
        );
        let plan = dirs
            .resolve(
                &[],
                &[
                    ("OS_AUTH_URL", "http://k"),
                    ("OS_APPLICATION_CREDENTIAL_NAME", "nav"),
                    ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
                    ("OS_AUTH_TYPE", "v3applicationcredential"),
                    ("OS_USER_ID", "u1"),
                ],
            )
            .unwrap();
        assert!(matches!(
            plan.login,
            Login::Keystone {
                credentials: Credentials::ApplicationCredential {
                    credential: AppCredentialRef::Name { .. },
                    ..
                },
                ..
            }
        ));
        let err = dirs.resolve(&["--os-auth-type", "saml2"], &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unsupported auth type 'saml2' (from --os-auth-type)"),
            "{err}"
        );
    }

    #[test]
    fn ids_win_over_names_and_domains_default() {
        let dirs = Dirs::new();
        let plan = dirs
            .resolve(
                &["--os-user-id", "u1", "--os-project-name", "demo"],
                &[
                    ("OS_AUTH_URL", "http://k"),
                    ("OS_USERNAME", "alice"),
                    ("OS_PASSWORD", "p"),
                    ("OS_DEFAULT_DOMAIN", "d9"),
                ],
            )
            .unwrap();
        let Login::Keystone { credentials, .. } = plan.login else {
            panic!("not keystone");
        };
        assert_eq!(
            credentials,
            Credentials::Password {
                user: UserRef::Id("u1".into()),
                password: Secret::new("p"),
                project: Some(ProjectRef::Name {
                    name: "demo".into(),
                    domain: DomainRef::Id("d9".into())
                }),
            }
        );
    }

    #[test]
    fn interface_and_version_are_checked() {
        let dirs = Dirs::new();
        let plan = dirs
            .resolve(&["--os-interface", "internalURL"], &[])
            .unwrap();
        assert_eq!(plan.interface, "internal");
        let err = dirs
            .resolve(&[], &[("OS_INTERFACE", "private")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid interface 'private' (from OS_INTERFACE): use public, internal or admin"
        );
        assert!(
            dirs.resolve(&[], &[("OS_IDENTITY_API_VERSION", "3")])
                .is_ok()
        );
        let err = dirs
            .resolve(&["--os-identity-api-version", "2.0"], &[])
            .unwrap_err();
        assert!(err.to_string().contains("Keystone v3 only"), "{err}");
    }

    #[test]
    fn endpoint_override_comes_from_any_source() {
        let dirs = Dirs::new();
        dirs.write(
            "cwd/clouds.yaml",
            "clouds:\n  c:\n    auth: {auth_url: http://k, username: u, password: p}\n    port_forwarding_endpoint_override: http://nav:9797\n    regions: [RegionX]\n",
        );
        let plan = dirs.resolve(&["--os-cloud", "c"], &[]).unwrap();
        assert_eq!(plan.endpoint.as_deref(), Some("http://nav:9797"));
        assert_eq!(plan.region.as_deref(), Some("RegionX"));
        let plan = dirs
            .resolve(
                &["--os-cloud", "c"],
                &[("NAVIGATOR_ENDPOINT", "http://env:1")],
            )
            .unwrap();
        assert_eq!(plan.endpoint.as_deref(), Some("http://env:1"));
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let dirs = Dirs::new();
        let plan = dirs
            .resolve(
                &["--os-password", "hunter2"],
                &[("OS_AUTH_URL", "http://k"), ("OS_USERNAME", "alice")],
            )
            .unwrap();
        let text = format!("{plan:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
