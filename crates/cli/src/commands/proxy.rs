//! `navigator proxy list|show`: the forwarding nodes and their load.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::config::GlobalArgs;
use crate::output::{self, Column, OutputArgs, Shape};

/// Every proxy attribute; the order of list columns and of `-c` choices.
const COLUMNS: [Column; 11] = [
    Column::new("host", "Host"),
    Column::new("state", "State"),
    Column::new("backend", "Backend"),
    Column::new("forward_count", "Forward Count"),
    Column::new("load", "Load"),
    Column::new("port_count", "Port Count"),
    Column::new("external_addresses", "External Addresses"),
    Column::new("port_range", "Port Range"),
    Column::new("last_heartbeat", "Last Heartbeat"),
    Column::new("groups", "Groups"),
    Column::new("group", "Group"),
];
/// `proxy list` without `--long` shows the first five.
const SHORT_LIST: usize = 5;

#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// List proxies
    List(ListArgs),
    /// Show a proxy's details
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Also show port count, external addresses, port range and last heartbeat
    #[arg(long)]
    pub long: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Host name of the proxy
    #[arg(value_name = "HOST")]
    pub host: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn run(global: &GlobalArgs, command: ProxyCommand) -> Result<()> {
    match command {
        ProxyCommand::List(args) => {
            let defaults = if args.long {
                &COLUMNS[..]
            } else {
                &COLUMNS[..SHORT_LIST]
            };
            let columns =
                output::select_columns(&COLUMNS, defaults, &args.output.columns, Shape::List)?;
            let proxies = global.client().await?.list_proxies().await?;
            let rows = proxies
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<Vec<Value>, _>>()?;
            output::emit(&output::render_list(&columns, &rows, args.output.format)?)
        }
        ProxyCommand::Show(args) => {
            let columns = show_columns(&args.output.columns)?;
            let proxy = global.client().await?.get_proxy(&args.host).await?;
            let object = serde_json::to_value(&proxy)?;
            output::emit(&output::render_show(&columns, &object, args.output.format)?)
        }
    }
}

/// `show` lists fields alphabetically, as openstackclient does.
fn show_columns(requested: &[String]) -> Result<Vec<Column>> {
    let mut all = COLUMNS.to_vec();
    all.sort_by_key(|c| c.field);
    Ok(output::select_columns(&all, &all, requested, Shape::Show)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use navigator_api::v1::Proxy;

    #[test]
    fn columns_cover_every_proxy_field() {
        let proxy = Proxy {
            host: "px1".into(),
            backend: "relay".into(),
            external_addresses: vec!["203.0.113.5".into()],
            port_range: "20000-40000".into(),
            state: "up".into(),
            last_heartbeat: None,
            forward_count: 3,
            port_count: 4,
            load: 0.5,
            group: None,
            groups: Vec::new(),
        };
        let value = serde_json::to_value(&proxy).unwrap();
        output::assert_columns_match(&COLUMNS, &value);
        let columns = show_columns(&[]).unwrap();
        let text = output::render_show(&columns, &value, output::Format::Value).unwrap();
        assert_eq!(
            text,
            "relay\n203.0.113.5\n3\n\n\npx1\n\n0.5\n4\n20000-40000\nup\n"
        );
    }
}
