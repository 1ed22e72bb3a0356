//! `navigator quota show|set|delete`: a project's limits on forwards and
//! ports, in openstackclient's style (`openstack quota show [--usage]
//! [PROJECT]`, `openstack quota set --<resource> N PROJECT`, `openstack
//! quota delete PROJECT`).

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use navigator_api::quota::{QuotaDetails, QuotaUpdate, check_limit};
use serde_json::{Value, json};

use crate::config::GlobalArgs;
use crate::errors::UsageError;
use crate::output::{self, Column, OutputArgs, Shape};

/// `quota show`: one field per resource, its limit.
const LIMIT_COLUMNS: [Column; 2] = [
    Column::new("forwards", "Forwards"),
    Column::new("ports", "Ports"),
];
/// `quota show --usage`: one row per resource.
const USAGE_COLUMNS: [Column; 3] = [
    Column::new("resource", "Resource"),
    Column::new("limit", "Limit"),
    Column::new("in_use", "In Use"),
];

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show a project's quota (-1 is unlimited)
    Show(ShowArgs),
    /// Set a project's quota (admin)
    Set(SetArgs),
    /// Return a project to the default quota (admin)
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Project id; default: the project of the token (or --os-project-id)
    #[arg(value_name = "PROJECT")]
    pub project: Option<String>,
    /// Also show what the project uses of each resource
    #[arg(long)]
    pub usage: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Forwards the project may hold (a port range counts as one); -1 is unlimited
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = limit_arg)]
    pub forwards: Option<i64>,
    /// External ports the project may hold (each port of a range counts); -1 is unlimited
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = limit_arg)]
    pub ports: Option<i64>,
    /// Project id
    #[arg(value_name = "PROJECT")]
    pub project: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Project id
    #[arg(value_name = "PROJECT")]
    pub project: String,
}

/// `--forwards`/`--ports`: checked here as the API checks it.
fn limit_arg(value: &str) -> Result<i64, String> {
    let number = value
        .parse::<i64>()
        .map_err(|_| format!("{value:?}: expected -1 (unlimited) or a whole number from 0"))?;
    check_limit("limit", number).map_err(|e| e.message)
}

/// The rows of `quota show --usage`.
fn usage_rows(details: &QuotaDetails) -> Vec<Value> {
    [("forwards", details.forwards), ("ports", details.ports)]
        .into_iter()
        .map(|(name, d)| json!({"resource": name, "limit": d.limit, "in_use": d.used}))
        .collect()
}

pub async fn run(global: &GlobalArgs, command: QuotaCommand) -> Result<()> {
    match command {
        QuotaCommand::Show(args) => {
            let (client, own) = global.client_and_project().await?;
            let project = args.project.or(own).ok_or_else(|| {
                anyhow!(
                    "which project? name it (navigator quota show PROJECT) or log in to one (--os-project-id)"
                )
            })?;
            if args.usage {
                let columns = output::select_columns(
                    &USAGE_COLUMNS,
                    &USAGE_COLUMNS,
                    &args.output.columns,
                    Shape::List,
                )?;
                let details = client.get_quota_details(&project).await?;
                output::emit(&output::render_list(
                    &columns,
                    &usage_rows(&details),
                    args.output.format,
                )?)
            } else {
                let columns = output::select_columns(
                    &LIMIT_COLUMNS,
                    &LIMIT_COLUMNS,
                    &args.output.columns,
                    Shape::Show,
                )?;
                let quota = client.get_quota(&project).await?;
                let object = serde_json::to_value(quota)?;
                output::emit(&output::render_show(&columns, &object, args.output.format)?)
            }
        }
        QuotaCommand::Set(args) => {
            if args.forwards.is_none() && args.ports.is_none() {
                // A usage mistake, exit 2 as clap's own (as `forward set`).
                return Err(
                    UsageError("nothing to set: give --forwards, --ports or both".into()).into(),
                );
            }
            let answer = global
                .client()
                .await?
                .set_quota(
                    &args.project,
                    QuotaUpdate {
                        forwards: args.forwards,
                        ports: args.ports,
                    },
                )
                .await?;
            // openstackclient prints nothing on success; a project left
            // over its new limit is worth saying.
            if let Some(warning) = answer.warning {
                eprintln!("warning: {warning}");
            }
            Ok(())
        }
        QuotaCommand::Delete(args) => {
            global.client().await?.delete_quota(&args.project).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use navigator_api::quota::{Quota, QuotaDetail};

    #[test]
    fn columns_cover_every_field() {
        let quota = serde_json::to_value(Quota {
            forwards: 50,
            ports: -1,
        })
        .unwrap();
        output::assert_columns_match(&LIMIT_COLUMNS, &quota);
        let text = output::render_show(&LIMIT_COLUMNS, &quota, output::Format::Value).unwrap();
        assert_eq!(text, "50\n-1\n");
        let rows = usage_rows(&QuotaDetails {
            forwards: QuotaDetail { limit: 5, used: 7 },
            ports: QuotaDetail { limit: -1, used: 9 },
        });
        output::assert_columns_match(&USAGE_COLUMNS, &rows[0]);
        let text = output::render_list(&USAGE_COLUMNS, &rows, output::Format::Csv).unwrap();
        assert_eq!(
            text,
            "\"Resource\",\"Limit\",\"In Use\"\n\"forwards\",5,7\n\"ports\",-1,9\n"
        );
    }

    #[test]
    fn limits_are_checked_before_asking() {
        assert_eq!(limit_arg("-1"), Ok(-1));
        assert_eq!(limit_arg("0"), Ok(0));
        assert!(limit_arg("-2").unwrap_err().contains("expected -1"));
        assert!(limit_arg("ten").is_err());
    }
}
