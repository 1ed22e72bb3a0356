//! The global options (`--os-endpoint`, `--os-project-id`, `--os-token`,
//! `--debug`) and the API client they describe.

use anyhow::Result;
use navigator_api::{Auth, Client};

/// The endpoint when neither `--os-endpoint` nor `NAVIGATOR_ENDPOINT` is set:
/// navigator-server's default listen address.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9797";

/// Options accepted before or after any subcommand.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// URL of the Navigator API
    #[arg(long, global = true, env = "NAVIGATOR_ENDPOINT", value_name = "URL", default_value = DEFAULT_ENDPOINT)]
    pub os_endpoint: String,
    /// Project to act as when the server runs with auth_strategy = noauth
    /// (sent as X-Project-Id; ignored with --os-token)
    #[arg(long, global = true, env = "OS_PROJECT_ID", value_name = "ID")]
    pub os_project_id: Option<String>,
    /// Keystone token (sent as X-Auth-Token)
    #[arg(
        long,
        global = true,
        env = "OS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub os_token: Option<String>,
    /// Show the chain of causes of an error
    #[arg(long, global = true)]
    pub debug: bool,
}

impl GlobalArgs {
    /// How to authenticate: a token wins, since it already names its project.
    pub fn auth(&self) -> Auth {
        // An exported but empty variable (`OS_TOKEN=`) means "not set".
        let non_empty = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        match non_empty(&self.os_token) {
            Some(token) => Auth::Token(token),
            None => Auth::NoAuth {
                project_id: non_empty(&self.os_project_id),
            },
        }
    }

    pub fn client(&self) -> Result<Client> {
        Ok(Client::new(self.os_endpoint.trim(), self.auth())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(project: Option<&str>, token: Option<&str>) -> GlobalArgs {
        GlobalArgs {
            os_endpoint: DEFAULT_ENDPOINT.to_owned(),
            os_project_id: project.map(str::to_owned),
            os_token: token.map(str::to_owned),
            debug: false,
        }
    }

    #[test]
    fn token_wins_and_empty_values_are_unset() {
        assert_eq!(args(Some("p"), Some("t")).auth(), Auth::Token("t".into()));
        assert_eq!(
            args(Some("p"), Some("")).auth(),
            Auth::NoAuth {
                project_id: Some("p".into())
            }
        );
        assert_eq!(
            args(Some(" "), None).auth(),
            Auth::NoAuth { project_id: None }
        );
    }

    #[test]
    fn bad_endpoint_is_an_error() {
        let mut bad = args(None, None);
        bad.os_endpoint = "127.0.0.1:9797".into();
        assert!(bad.client().is_err());
        assert!(args(None, None).client().is_ok());
    }
}
