//! The global options and the API client they describe: without Keystone
//! settings the CLI talks to a noauth server as before; with them it logs in
//! to Keystone and finds Navigator in the service catalog, unless
//! `--os-endpoint` names it.

use anyhow::{Context as _, Result, anyhow};
use navigator_api::{Auth, Client};
use navigator_keystone::auth::{self as keystone, AuthError, Credentials, Session};
use navigator_keystone::token::find_endpoint;

use crate::cloud::{self, Login, Plan, SERVICE_TYPE};

/// The endpoint when neither `--os-endpoint` nor `NAVIGATOR_ENDPOINT` is set
/// and there is no Keystone: navigator-server's default listen address.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9797";

/// Options accepted before or after any subcommand.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct GlobalArgs {
    #[command(flatten)]
    pub os: cloud::OsArgs,
    /// Show the chain of causes of an error, and where the settings came
    /// from
    #[arg(long, global = true)]
    pub debug: bool,
}

impl GlobalArgs {
    /// Resolves the settings from the flags, the process environment and
    /// clouds.yaml.
    pub fn plan(&self) -> Result<Plan> {
        let env = cloud::process_env();
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let locations = cloud::Locations::new(&env, &cwd);
        let plan = cloud::resolve(&self.os, &env, &locations)?;
        if self.debug {
            debug_plan(&plan);
        }
        Ok(plan)
    }

    /// A client for the Navigator API, logged in as the settings say.
    pub async fn client(&self) -> Result<Client> {
        connect(&self.plan()?).await
    }

    /// A client and the project it acts in, when the settings say which:
    /// the token's project after a Keystone login, `--os-project-id`
    /// without Keystone; `None` otherwise (a bare token, the server's
    /// default project).
    pub async fn client_and_project(&self) -> Result<(Client, Option<String>)> {
        connect_scoped(&self.plan()?).await
    }
}

/// Where the settings came from, on stderr, without any secret.
fn debug_plan(plan: &Plan) {
    if let Some((name, file)) = &plan.cloud {
        eprintln!("using cloud '{name}' from {}", file.display());
    }
    match &plan.login {
        Login::NoAuth { project_id } => eprintln!(
            "no Keystone settings: noauth mode, project {}",
            project_id.as_deref().unwrap_or("(server default)")
        ),
        Login::Token { .. } => eprintln!("a token without Keystone"),
        Login::Keystone {
            auth_url,
            credentials,
            secret_source,
        } => eprintln!(
            "Keystone {auth_url}: {} (secret from {secret_source})",
            credentials.describe()
        ),
    }
    if let Some(cacert) = &plan.tls.cacert {
        eprintln!("trusting only the CAs in {}", cacert.display());
    }
    if plan.tls.insecure {
        eprintln!("NOT checking server certificates (--insecure)");
    }
    match &plan.endpoint {
        Some(endpoint) => eprintln!("Navigator endpoint {endpoint} (not from the catalog)"),
        None => eprintln!(
            "catalog lookup: type {SERVICE_TYPE}, interface {}, region {}",
            plan.interface,
            plan.region.as_deref().unwrap_or("(any)")
        ),
    }
}

/// Logs in to Keystone, explaining a rejection with where the rejected
/// secret came from (e.g. an `OS_PASSWORD` left in the environment that
/// overrides clouds.yaml).
pub async fn login(plan: &Plan) -> Result<Session> {
    let Login::Keystone {
        auth_url,
        credentials,
        secret_source,
    } = &plan.login
    else {
        return Err(anyhow!(
            "this needs Keystone: set --os-auth-url or OS_AUTH_URL, or choose a cloud with --os-cloud or OS_CLOUD"
        ));
    };
    match keystone::authenticate_with(auth_url, credentials, &plan.tls).await {
        Err(err @ AuthError::Rejected { .. }) => {
            let what = match credentials {
                Credentials::Password { .. } => "password",
                Credentials::ApplicationCredential { .. } => "secret",
                Credentials::Token { .. } => "token",
            };
            Err(anyhow!("{err} (the {what} came from {secret_source})"))
        }
        other => Ok(other?),
    }
}

/// The client a plan describes.
pub async fn connect(plan: &Plan) -> Result<Client> {
    Ok(connect_scoped(plan).await?.0)
}

/// The client a plan describes, and its project when known (see
/// [`GlobalArgs::client_and_project`]).
async fn connect_scoped(plan: &Plan) -> Result<(Client, Option<String>)> {
    let endpoint = plan.endpoint.as_deref();
    let mut project = None;
    let (endpoint, auth) = match &plan.login {
        Login::NoAuth { project_id } => {
            project.clone_from(project_id);
            (
                endpoint.unwrap_or(DEFAULT_ENDPOINT).to_owned(),
                Auth::NoAuth {
                    project_id: project_id.clone(),
                },
            )
        }
        Login::Token { token } => (
            endpoint.unwrap_or(DEFAULT_ENDPOINT).to_owned(),
            Auth::Token(token.expose().to_owned()),
        ),
        // A token and an endpoint are all a request needs: no Keystone call.
        Login::Keystone {
            credentials: Credentials::Token { token, .. },
            ..
        } if endpoint.is_some() => (
            endpoint.unwrap_or(DEFAULT_ENDPOINT).to_owned(),
            Auth::Token(token.expose().to_owned()),
        ),
        Login::Keystone { .. } => {
            let session = login(plan).await?;
            project = session.body.project.as_ref().map(|p| p.id.clone());
            let endpoint = match endpoint {
                Some(endpoint) => endpoint.to_owned(),
                None => catalog_endpoint(plan, &session)?,
            };
            (endpoint, Auth::Token(session.token.expose().to_owned()))
        }
    };
    let builder = plan.tls.configure(reqwest::Client::builder())?;
    Ok((
        Client::with_builder(endpoint.trim(), auth, builder)?,
        project,
    ))
}

/// Navigator's URL in the token's catalog.
fn catalog_endpoint(plan: &Plan, session: &Session) -> Result<String> {
    let token = &session.body;
    if token.project.is_none() && token.catalog.is_empty() {
        return Err(anyhow!(
            "the token is not scoped to a project, so it comes without a service catalog: set --os-project-name or --os-project-id (or pass --os-endpoint)"
        ));
    }
    find_endpoint(
        &token.catalog,
        SERVICE_TYPE,
        &plan.interface,
        plan.region.as_deref(),
    )
    .map(str::to_owned)
    .ok_or_else(|| {
        let region = plan
            .region
            .as_deref()
            .map(|r| format!(" in region {r}"))
            .unwrap_or_default();
        anyhow!(
            "the service catalog has no '{SERVICE_TYPE}' endpoint for interface {}{region}: register it with `navigator-server keystone register` or pass --os-endpoint",
            plan.interface
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use navigator_keystone::auth::Secret;
    use navigator_keystone::token::TokenBody;

    fn plan(endpoint: Option<&str>, login: Login) -> Plan {
        Plan {
            endpoint: endpoint.map(str::to_owned),
            interface: "public".into(),
            region: Some("RegionOne".into()),
            login,
            cloud: None,
            tls: Default::default(),
        }
    }

    fn session(catalog: serde_json::Value) -> Session {
        let body: TokenBody = serde_json::from_value(serde_json::json!({"token": {
            "methods": ["password"], "user": {"id": "u1"},
            "project": {"id": "p1"},
            "expires_at": "2026-11-25T15:54:49.000000Z",
            "catalog": catalog,
        }}))
        .unwrap();
        Session {
            token: Secret::new("t"),
            body: body.token,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn noauth_and_plain_tokens_need_no_keystone() {
        keystone::install_tls_provider();
        let client = connect(&plan(None, Login::NoAuth { project_id: None }))
            .await
            .unwrap();
        assert_eq!(client.endpoint(), DEFAULT_ENDPOINT);
        // A token for Keystone plus an endpoint: the auth URL is never
        // contacted (it does not resolve).
        let login = Login::Keystone {
            auth_url: "http://keystone.invalid:5000".into(),
            credentials: Credentials::Token {
                token: Secret::new("t"),
                project: None,
            },
            secret_source: cloud::Source::Env("OS_TOKEN"),
        };
        let client = connect(&plan(Some("http://nav:9797"), login))
            .await
            .unwrap();
        assert_eq!(client.endpoint(), "http://nav:9797");
    }

    #[test]
    fn catalog_lookup_names_what_is_missing() {
        let catalog = serde_json::json!([{"type": "port-forwarding", "endpoints": [
            {"interface": "public", "region_id": "RegionOne", "url": "http://pub:9797"}]}]);
        let found = catalog_endpoint(
            &plan(None, Login::NoAuth { project_id: None }),
            &session(catalog),
        )
        .unwrap();
        assert_eq!(found, "http://pub:9797");
        let err = catalog_endpoint(
            &plan(None, Login::NoAuth { project_id: None }),
            &session(serde_json::json!([{"type": "identity", "endpoints": []}])),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the service catalog has no 'port-forwarding' endpoint for interface public in region RegionOne: register it with `navigator-server keystone register` or pass --os-endpoint"
        );
    }
}
