//! `navigator token issue`: logs in as the other commands do and prints the
//! token like `openstack token issue`, so that users can check their
//! settings without Navigator being involved.

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use navigator_keystone::auth::Session;
use serde_json::{Value, json};

use crate::config::{self, GlobalArgs};
use crate::output::{self, Column, OutputArgs, Shape};

/// The fields of `openstack token issue`, in its (alphabetical) order.
const COLUMNS: [Column; 4] = [
    Column::new("expires", "Expires"),
    Column::new("id", "ID"),
    Column::new("project_id", "Project ID"),
    Column::new("user_id", "User ID"),
];

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a new token
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn run(global: &GlobalArgs, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Issue(args) => {
            // A token that is not scoped to a project has no project_id row,
            // as in openstackclient; -c is checked before logging in.
            output::select_columns(&COLUMNS, &COLUMNS, &args.output.columns, Shape::Show)?;
            let plan = global.plan()?;
            let session = config::login(&plan).await?;
            let (columns, object) = token_fields(&session)?;
            let columns =
                output::select_columns(&columns, &columns, &args.output.columns, Shape::Show)?;
            output::emit(&output::render_show(&columns, &object, args.output.format)?)
        }
    }
}

/// The rows to print and their values.
fn token_fields(session: &Session) -> Result<(Vec<Column>, Value)> {
    let token = &session.body;
    let expires = token
        .expires_at()
        .context("Keystone sent a token with an unreadable expiry")?;
    let project_id = token.project.as_ref().map(|p| p.id.clone());
    let columns = COLUMNS
        .iter()
        .filter(|c| c.field != "project_id" || project_id.is_some())
        .copied()
        .collect();
    let object = json!({
        // openstackclient's format: no fraction, a numeric zone.
        "expires": expires.format("%Y-%m-%dT%H:%M:%S+0000").to_string(),
        "id": session.token.expose(),
        "project_id": project_id,
        "user_id": token.user.id,
    });
    Ok((columns, object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Format;
    use navigator_keystone::auth::Secret;
    use navigator_keystone::token::TokenBody;

    fn session(project: Option<&str>, expires: &str) -> Session {
        let mut token = json!({
            "methods": ["application_credential"], "user": {"id": "u1", "name": "alice"},
            "expires_at": expires,
        });
        if let Some(project) = project {
            token["project"] = json!({"id": project, "name": "demo"});
        }
        let body: TokenBody = serde_json::from_value(json!({ "token": token })).unwrap();
        Session {
            token: Secret::new("gAAAA"),
            body: body.token,
        }
    }

    #[test]
    fn json_matches_openstack_token_issue() {
        // An application credential's token has no fraction and no zone.
        let (columns, object) = token_fields(&session(Some("p1"), "2026-11-25T15:34:30")).unwrap();
        let text = output::render_show(&columns, &object, Format::Json).unwrap();
        assert_eq!(
            text,
            "{\n  \"expires\": \"2026-11-25T15:34:30+0000\",\n  \"id\": \"gAAAA\",\n  \"project_id\": \"p1\",\n  \"user_id\": \"u1\"\n}\n"
        );
    }

    #[test]
    fn unscoped_tokens_have_no_project_row() {
        let (columns, object) =
            token_fields(&session(None, "2026-11-25T15:54:49.000000Z")).unwrap();
        let text = output::render_show(&columns, &object, Format::Value).unwrap();
        assert_eq!(text, "2026-11-25T15:54:49+0000\ngAAAA\nu1\n");
    }
}
