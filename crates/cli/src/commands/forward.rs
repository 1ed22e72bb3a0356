//! `navigator forward create|list|show|set|delete`, modelled on
//! `openstack floating ip port forwarding ...`.

use std::collections::HashSet;
use std::net::IpAddr;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use navigator_api::v1::{
    DEFAULT_PAGE_SIZE, Forward, ForwardCreate, ForwardDetail, ForwardListQuery, ForwardUpdate,
    Link, MAX_PAGE_SIZE, SortDir, SortKey,
};
use navigator_api::{Client, ClientError};
use serde_json::Value;

use crate::config::GlobalArgs;
use crate::errors::{self, UsageError};
use crate::output::{self, Column, Format, OutputArgs, Shape};

/// Every forward attribute, in list order: the default columns, then the
/// `--long` ones, then the ones only `-c` asks for.
const COLUMNS: [Column; 20] = [
    Column::new("id", "ID"),
    Column::new("protocol", "Protocol"),
    Column::new("external_address", "External Address"),
    Column::new("external_port", "External Port"),
    Column::new("internal_ip_address", "Internal IP Address"),
    Column::new("internal_port", "Internal Port"),
    Column::new("status", "Status"),
    Column::new("external_port_range", "External Port Range"),
    Column::new("internal_port_range", "Internal Port Range"),
    Column::new("instance_id", "Instance ID"),
    Column::new("proxy", "Proxy"),
    Column::new("project_id", "Project"),
    Column::new("description", "Description"),
    Column::new("status_reason", "Status Reason"),
    Column::new("allowed_cidrs", "Allowed CIDRs"),
    Column::new("max_connections", "Max Connections"),
    Column::new("proxy_protocol", "Proxy Protocol"),
    Column::new("created_at", "Created At"),
    Column::new("updated_at", "Updated At"),
    Column::new("group", "Group"),
];
/// Columns of `forward list`.
const SHORT_LIST: usize = 7;
/// Columns of `forward list --long`: the ranges, then the rest, then the
/// controls.
const LONG_LIST: usize = 17;
/// What `forward show` adds: the forward's usage, flattened from the API's
/// `usage` object (empty, with `usage_unavailable` saying why, when the
/// server could not have it). Not in lists, which do not carry usage.
const USAGE_COLUMNS: [Column; 6] = [
    Column::new("bytes_in", "Bytes In"),
    Column::new("bytes_out", "Bytes Out"),
    Column::new("connections_total", "Connections Total"),
    Column::new("connections_active", "Connections Active"),
    Column::new("last_connection_at", "Last Connection At"),
    Column::new("usage_unavailable", "Usage Unavailable"),
];

const CREATE_EXAMPLES: &str = "\
Examples:
  # Forward TCP port 22 of 10.0.0.5; the proxy picks the external port
  navigator forward create --protocol tcp --internal-ip-address 10.0.0.5 --internal-port 22

  # A fixed external port, and only the new forward's id on stdout
  navigator forward create --protocol udp --internal-ip-address 10.0.0.7 \\
      --internal-port 53 --external-port 20053 --description dns -f value -c id

  # Ports 9000-9009 of the proxy to ports 8000-8009 of the instance
  navigator forward create --protocol tcp --internal-ip-address 10.0.0.5 \\
      --internal-port-range 8000:8009 --external-port-range 9000:9009

  # A block of 10 free proxy ports, allocated, to ports 8000-8009
  navigator forward create --protocol tcp --internal-ip-address 10.0.0.5 \\
      --internal-port-range 8000:8009

  # SMTP for two networks only, at most 100 connections at once, and the
  # client's address passed to Postfix in a PROXY v2 header (relay proxies)
  navigator forward create --protocol tcp --internal-ip-address 10.0.0.9 \\
      --internal-port 25 --allowed-cidr 192.0.2.0/24 --allowed-cidr 2001:db8::/32 \\
      --max-connections 100 --proxy-protocol v2";

#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Create a port forward
    #[command(after_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// List port forwards
    List(ListArgs),
    /// Show a port forward's details
    Show(ShowArgs),
    /// Change a port forward's target, description or traffic controls
    Set(SetArgs),
    /// Delete port forwards
    Delete(DeleteArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

impl ProtocolArg {
    fn as_str(self) -> &'static str {
        match self {
            ProtocolArg::Tcp => "tcp",
            ProtocolArg::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyProtocolArg {
    None,
    V1,
    V2,
}

impl ProxyProtocolArg {
    fn as_str(self) -> &'static str {
        match self {
            ProxyProtocolArg::None => "none",
            ProxyProtocolArg::V1 => "v1",
            ProxyProtocolArg::V2 => "v2",
        }
    }
}

/// A `--max-connections` value: 1 to the API's maximum.
fn max_connections_arg(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=navigator_api::v1::MAX_CONNECTIONS).contains(n))
        .ok_or_else(|| {
            format!(
                "{text:?} is not a connection limit: expected 1-{}",
                navigator_api::v1::MAX_CONNECTIONS
            )
        })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum StatusArg {
    Pending,
    Active,
    Error,
    Deleting,
}

impl StatusArg {
    fn as_str(self) -> &'static str {
        match self {
            StatusArg::Pending => "PENDING",
            StatusArg::Active => "ACTIVE",
            StatusArg::Error => "ERROR",
            StatusArg::Deleting => "DELETING",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SortKeyArg {
    CreatedAt,
    UpdatedAt,
    Id,
    ExternalPort,
    InternalPort,
    Status,
    Protocol,
}

impl From<SortKeyArg> for SortKey {
    fn from(key: SortKeyArg) -> SortKey {
        match key {
            SortKeyArg::CreatedAt => SortKey::CreatedAt,
            SortKeyArg::UpdatedAt => SortKey::UpdatedAt,
            SortKeyArg::Id => SortKey::Id,
            SortKeyArg::ExternalPort => SortKey::ExternalPort,
            SortKeyArg::InternalPort => SortKey::InternalPort,
            SortKeyArg::Status => SortKey::Status,
            SortKeyArg::Protocol => SortKey::Protocol,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortDirArg {
    Asc,
    Desc,
}

impl From<SortDirArg> for SortDir {
    fn from(dir: SortDirArg) -> SortDir {
        match dir {
            SortDirArg::Asc => SortDir::Asc,
            SortDirArg::Desc => SortDir::Desc,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Protocol to forward
    #[arg(long, value_enum, ignore_case = true)]
    pub protocol: ProtocolArg,
    /// Address of the instance to forward to (IPv4 or IPv6)
    #[arg(long, value_name = "IP")]
    pub internal_ip_address: IpAddr,
    /// Port of the instance to forward to
    #[arg(long, value_name = "PORT", value_parser = port_arg,
          required_unless_present = "internal_port_range", conflicts_with = "internal_port_range")]
    pub internal_port: Option<u16>,
    /// Ports of the instance, N:M: as many as --external-port-range has, or
    /// one port (N:N) that every external port goes to
    #[arg(long, value_name = "N:M")]
    pub internal_port_range: Option<String>,
    /// Port on the proxy (default: one allocated from the proxy's pool)
    #[arg(long, value_name = "PORT", value_parser = port_arg,
          conflicts_with = "external_port_range")]
    pub external_port: Option<u16>,
    /// Ports on the proxy, N:M (default: a free block as large as
    /// --internal-port-range, allocated from the proxy's pool)
    #[arg(long, value_name = "N:M")]
    pub external_port_range: Option<String>,
    /// Address on the proxy (default: the proxy's first address of the
    /// internal address's family)
    #[arg(long, value_name = "ADDR")]
    pub external_address: Option<IpAddr>,
    /// Nova instance the internal address belongs to
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// Free-form description
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Proxy host to place the forward on (admin only)
    #[arg(long, value_name = "HOST")]
    pub proxy: Option<String>,
    /// Source network allowed to connect, e.g. 192.0.2.0/24 (repeat for
    /// more; default: everyone)
    #[arg(long = "allowed-cidr", value_name = "CIDR")]
    pub allowed_cidrs: Vec<String>,
    /// Most connections (UDP sessions) open at once (default: no limit of
    /// the forward's own)
    #[arg(long, value_name = "N", value_parser = max_connections_arg)]
    pub max_connections: Option<u32>,
    /// Send the client's address to the instance in a PROXY protocol header
    /// (TCP on relay proxies; default: none)
    #[arg(long, value_enum, ignore_case = true)]
    pub proxy_protocol: Option<ProxyProtocolArg>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A `PORT` argument: 1-65535 in plain digits, as the API takes ports
/// (clap's integer parser would also take `+80`).
fn port_arg(text: &str) -> Result<u16, String> {
    navigator_core::parse_port_number(text)
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{text:?} is not a port: expected 1-65535 in plain digits"))
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only forwards to this Nova instance
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// Only forwards of this protocol
    #[arg(long, value_enum, ignore_case = true)]
    pub protocol: Option<ProtocolArg>,
    /// Only forwards in this status
    #[arg(long, value_enum, ignore_case = true)]
    pub status: Option<StatusArg>,
    /// Only forwards on this external address
    #[arg(long, value_name = "ADDR")]
    pub external_address: Option<IpAddr>,
    /// Only forwards on this external port
    #[arg(long, value_name = "PORT", value_parser = port_arg)]
    pub external_port: Option<u16>,
    /// Only forwards to this internal address
    #[arg(long, value_name = "IP")]
    pub internal_ip_address: Option<IpAddr>,
    /// Only forwards carried by this proxy host
    #[arg(long, value_name = "HOST")]
    pub proxy: Option<String>,
    /// Only forwards of this project (admin only)
    #[arg(long, value_name = "ID")]
    pub project: Option<String>,
    /// List the forwards of every project (admin only)
    #[arg(long)]
    pub all_projects: bool,
    /// Print one page of at most N forwards (default: every forward, following
    /// the server's pages)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE_SIZE)))]
    pub limit: Option<u32>,
    /// Start after the forward with this id
    #[arg(long, value_name = "ID")]
    pub marker: Option<String>,
    /// Sort by this field
    #[arg(long, value_enum)]
    pub sort_key: Option<SortKeyArg>,
    /// Sort direction
    #[arg(long, value_enum, ignore_case = true)]
    pub sort_dir: Option<SortDirArg>,
    /// Also show instance, proxy, project, description and status reason
    #[arg(long)]
    pub long: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Id of the forward
    #[arg(value_name = "ID")]
    pub id: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Id of the forward
    #[arg(value_name = "ID")]
    pub id: String,
    /// New address of the instance to forward to
    #[arg(long, value_name = "IP")]
    pub internal_ip_address: Option<IpAddr>,
    /// New port of the instance to forward to
    #[arg(long, value_name = "PORT", value_parser = port_arg)]
    pub internal_port: Option<u16>,
    /// New description ("" clears it)
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Source network to allow besides those already allowed (repeat for
    /// more); with --no-allowed-cidr, the new list
    #[arg(long = "allowed-cidr", value_name = "CIDR")]
    pub allowed_cidrs: Vec<String>,
    /// Clear the list of allowed source networks (everyone may connect,
    /// unless --allowed-cidr gives a new list)
    #[arg(long)]
    pub no_allowed_cidr: bool,
    /// New limit of connections (UDP sessions) open at once
    #[arg(long, value_name = "N", value_parser = max_connections_arg,
          conflicts_with = "no_max_connections")]
    pub max_connections: Option<u32>,
    /// Remove the forward's own connection limit
    #[arg(long)]
    pub no_max_connections: bool,
    /// New PROXY protocol setting
    #[arg(long, value_enum, ignore_case = true)]
    pub proxy_protocol: Option<ProxyProtocolArg>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Id of each forward to delete
    #[arg(value_name = "ID", required = true, num_args = 1..)]
    pub ids: Vec<String>,
}

pub async fn run(global: &GlobalArgs, command: ForwardCommand) -> Result<()> {
    match command {
        ForwardCommand::Create(args) => create(global, args).await,
        ForwardCommand::List(args) => list(global, args).await,
        ForwardCommand::Show(args) => {
            let columns = detail_columns(&args.output.columns)?;
            let forward = global.client().await?.show_forward(&args.id).await?;
            let object = detail_object(&forward, args.output.format)?;
            output::emit(&output::render_show(&columns, &object, args.output.format)?)
        }
        ForwardCommand::Set(args) => set(global, args).await,
        ForwardCommand::Delete(args) => delete(global, args).await,
    }
}

async fn create(global: &GlobalArgs, args: CreateArgs) -> Result<()> {
    // Before the request: a typo in -c must not leave an unreported forward.
    let columns = show_columns(&args.output.columns)?;
    let body = ForwardCreate {
        protocol: args.protocol.as_str().to_owned(),
        internal_ip_address: args.internal_ip_address.to_string(),
        internal_port: args.internal_port.map(i64::from),
        internal_port_range: args.internal_port_range,
        external_port: args.external_port.map(i64::from),
        external_port_range: args.external_port_range,
        external_address: args.external_address.map(|ip| ip.to_string()),
        instance_id: args.instance_id,
        description: args.description,
        proxy: args.proxy,
        allowed_cidrs: (!args.allowed_cidrs.is_empty()).then_some(args.allowed_cidrs),
        max_connections: args.max_connections.map(i64::from),
        proxy_protocol: args.proxy_protocol.map(|p| p.as_str().to_owned()),
    };
    let forward = global.client().await?.create_forward(body).await?;
    print_forward(&columns, &forward, &args.output)
}

async fn list(global: &GlobalArgs, args: ListArgs) -> Result<()> {
    let defaults = if args.long {
        &COLUMNS[..LONG_LIST]
    } else {
        &COLUMNS[..SHORT_LIST]
    };
    let columns = output::select_columns(&COLUMNS, defaults, &args.output.columns, Shape::List)?;
    let query = list_query(&args);
    let client = global.client().await?;
    let forwards = if args.limit.is_some() {
        client.list_forwards(&query).await?.forwards
    } else {
        list_all(&client, query).await?
    };
    let rows = forwards
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Value>, _>>()?;
    output::emit(&output::render_list(&columns, &rows, args.output.format)?)
}

fn list_query(args: &ListArgs) -> ForwardListQuery {
    ForwardListQuery {
        instance_id: args.instance_id.clone(),
        protocol: args.protocol.map(|p| p.as_str().to_owned()),
        status: args.status.map(|s| s.as_str().to_owned()),
        external_address: args.external_address.map(|ip| ip.to_string()),
        external_port: args.external_port,
        internal_ip_address: args.internal_ip_address.map(|ip| ip.to_string()),
        proxy: args.proxy.clone(),
        project_id: args.project.clone(),
        all_projects: args.all_projects.then_some(true),
        limit: args.limit,
        marker: args.marker.clone(),
        sort_key: args.sort_key.map(SortKey::from),
        sort_dir: args.sort_dir.map(SortDir::from),
    }
}

/// Follows the server's pages until the last one.
async fn list_all(client: &Client, mut query: ForwardListQuery) -> Result<Vec<Forward>> {
    let page_size = query.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    let mut forwards = Vec::new();
    // A server that kept handing out the same marker would loop forever.
    let mut seen = HashSet::new();
    loop {
        let page = client.list_forwards(&query).await?;
        let full = u32::try_from(page.forwards.len()).map_or(true, |n| n >= page_size);
        let last_id = page.forwards.last().map(|f| f.id.clone());
        let next = next_marker(&page.forwards_links).or(last_id.filter(|_| full));
        let empty = page.forwards.is_empty();
        forwards.extend(page.forwards);
        match next {
            Some(marker) if !empty && seen.insert(marker.clone()) => query.marker = Some(marker),
            _ => return Ok(forwards),
        }
    }
}

/// The `marker` of a list's `rel=next` link, if it has one. The query is
/// decoded as the server encoded it (`application/x-www-form-urlencoded`).
fn next_marker(links: &[Link]) -> Option<String> {
    let next = links.iter().find(|link| link.rel == "next")?;
    let (_, query) = next.href.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "marker")
        .map(|(_, value)| value.into_owned())
        .filter(|marker| !marker.is_empty())
}

async fn set(global: &GlobalArgs, args: SetArgs) -> Result<()> {
    let mut changes = ForwardUpdate {
        internal_ip_address: args.internal_ip_address.map(|ip| ip.to_string()),
        internal_port: args.internal_port.map(i64::from),
        description: args.description,
        allowed_cidrs: args.no_allowed_cidr.then(Vec::new),
        max_connections: if args.no_max_connections {
            Some(None)
        } else {
            args.max_connections.map(|n| Some(i64::from(n)))
        },
        proxy_protocol: args.proxy_protocol.map(|p| p.as_str().to_owned()),
    };
    if changes == ForwardUpdate::default() && args.allowed_cidrs.is_empty() {
        return Err(UsageError(
            "nothing to set: give at least one of --internal-ip-address, --internal-port, \
             --description, --allowed-cidr, --no-allowed-cidr, --max-connections, \
             --no-max-connections, --proxy-protocol"
                .to_owned(),
        )
        .into());
    }
    let client = global.client().await?;
    if !args.allowed_cidrs.is_empty() {
        // openstackclient's convention: --allowed-cidr adds to the list,
        // --no-allowed-cidr clears it first. The API takes the whole list.
        let mut cidrs = match changes.allowed_cidrs.take() {
            Some(cleared) => cleared,
            None => client.get_forward(&args.id).await?.allowed_cidrs,
        };
        cidrs.extend(args.allowed_cidrs);
        changes.allowed_cidrs = Some(cidrs);
    }
    // Like `openstack ... set`, success prints nothing.
    client.update_forward(&args.id, changes).await?;
    Ok(())
}

async fn delete(global: &GlobalArgs, args: DeleteArgs) -> Result<()> {
    let client = global.client().await?;
    let mut failed = 0;
    for id in &args.ids {
        if let Err(err) = client.delete_forward(id).await {
            // Nothing else would succeed either, and the per-id lines would
            // all say the same thing.
            if matches!(
                err,
                ClientError::Unreachable { .. } | ClientError::InvalidEndpoint { .. }
            ) {
                return Err(err.into());
            }
            eprintln!(
                "Failed to delete forward with ID '{id}': {}",
                errors::describe(&err)
            );
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(anyhow!(
            "{failed} of {} forwards failed to delete.",
            args.ids.len()
        ));
    }
    Ok(())
}

/// `show` lists fields alphabetically, as openstackclient does.
fn show_columns(requested: &[String]) -> Result<Vec<Column>> {
    let mut all = COLUMNS.to_vec();
    all.sort_by_key(|c| c.field);
    Ok(output::select_columns(&all, &all, requested, Shape::Show)?)
}

/// `show`'s columns: the forward's and its usage's, alphabetically.
fn detail_columns(requested: &[String]) -> Result<Vec<Column>> {
    let mut all: Vec<Column> = COLUMNS.iter().chain(&USAGE_COLUMNS).copied().collect();
    all.sort_by_key(|c| c.field);
    Ok(output::select_columns(&all, &all, requested, Shape::Show)?)
}

/// The forward with its usage's fields at the top level, as `show` prints
/// them. Byte counts stay numbers in json, yaml, value and csv (for
/// scripts); the table adds binary units for people (`1536 (1.5 KiB)`).
fn detail_object(forward: &ForwardDetail, format: Format) -> Result<Value> {
    let mut object = serde_json::to_value(&forward.forward)?;
    let Value::Object(fields) = &mut object else {
        return Ok(object);
    };
    let usage = forward.usage.as_ref();
    let bytes = |n: Option<u64>| match (n, format) {
        (Some(n), Format::Table) => Value::String(human_bytes(n)),
        (n, _) => n.map(Value::from).unwrap_or(Value::Null),
    };
    fields.insert("bytes_in".into(), bytes(usage.map(|u| u.bytes_in)));
    fields.insert("bytes_out".into(), bytes(usage.map(|u| u.bytes_out)));
    for (key, n) in [
        ("connections_total", usage.map(|u| u.connections_total)),
        ("connections_active", usage.map(|u| u.connections_active)),
    ] {
        fields.insert(key.into(), n.map(Value::from).unwrap_or(Value::Null));
    }
    fields.insert(
        "last_connection_at".into(),
        usage
            .and_then(|u| u.last_connection_at.clone())
            .map(Value::from)
            .unwrap_or(Value::Null),
    );
    fields.insert(
        "usage_unavailable".into(),
        forward
            .usage_unavailable
            .clone()
            .map(Value::from)
            .unwrap_or(Value::Null),
    );
    Ok(object)
}

/// `1536` → `1536 (1.5 KiB)`; below 1 KiB just the number.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = n as f64;
    let mut unit = None;
    for name in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(name);
    }
    match unit {
        Some(unit) => format!("{n} ({value:.1} {unit})"),
        None => n.to_string(),
    }
}

fn print_forward(columns: &[Column], forward: &Forward, args: &OutputArgs) -> Result<()> {
    let object = serde_json::to_value(forward)?;
    output::emit(&output::render_show(columns, &object, args.format)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::output::Format;
    use clap::Parser as _;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<ForwardCommand, clap::Error> {
        let argv = ["navigator", "forward"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv)?.command {
            Command::Forward(command) => Ok(command),
            _ => unreachable!("parsed a forward command"),
        }
    }

    #[test]
    fn create_parses_every_option() {
        let command = parse(&[
            "create",
            "--protocol",
            "UDP",
            "--internal-ip-address",
            "2001:db8::5",
            "--internal-port",
            "53",
            "--external-port",
            "20053",
            "--external-address",
            "203.0.113.9",
            "--instance-id",
            "vm-1",
            "--description",
            "dns",
            "--proxy",
            "px1",
            "-f",
            "value",
            "-c",
            "id",
        ])
        .unwrap();
        let ForwardCommand::Create(args) = command else {
            panic!("not create: {command:?}");
        };
        assert_eq!(args.protocol, ProtocolArg::Udp);
        assert_eq!(args.internal_ip_address.to_string(), "2001:db8::5");
        assert_eq!(
            (args.internal_port, args.external_port),
            (Some(53), Some(20053))
        );
        assert_eq!(args.output.format, Format::Value);
        assert_eq!(args.output.columns, ["id"]);
    }

    #[test]
    fn create_rejects_bad_values_naming_the_option() {
        let cases = [
            (
                &[
                    "--protocol",
                    "sctp",
                    "--internal-ip-address",
                    "10.0.0.5",
                    "--internal-port",
                    "22",
                ][..],
                "--protocol",
            ),
            (
                &[
                    "--protocol",
                    "tcp",
                    "--internal-ip-address",
                    "10.0.0.256",
                    "--internal-port",
                    "22",
                ],
                "--internal-ip-address",
            ),
            (
                &[
                    "--protocol",
                    "tcp",
                    "--internal-ip-address",
                    "10.0.0.5",
                    "--internal-port",
                    "70000",
                ],
                "--internal-port",
            ),
            (
                &[
                    "--protocol",
                    "tcp",
                    "--internal-ip-address",
                    "10.0.0.5",
                    "--internal-port",
                    "0",
                ],
                "--internal-port",
            ),
            (
                &["--protocol", "tcp", "--internal-ip-address", "10.0.0.5"],
                "--internal-port",
            ),
            (
                &[
                    "--protocol",
                    "tcp",
                    "--internal-ip-address",
                    "10.0.0.5",
                    "--internal-port",
                    "+22",
                ],
                "--internal-port",
            ),
            (
                &[
                    "--protocol",
                    "tcp",
                    "--internal-ip-address",
                    "10.0.0.5",
                    "--internal-port",
                    "22",
                    "--external-port",
                    "020022",
                ],
                "--external-port",
            ),
        ];
        for (args, option) in cases {
            let argv: Vec<&str> = std::iter::once("create")
                .chain(args.iter().copied())
                .collect();
            let err = parse(&argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
            assert!(err.to_string().contains(option), "{argv:?}: {err}");
        }
    }

    #[test]
    fn list_builds_the_query() {
        let ForwardCommand::List(args) = parse(&[
            "list",
            "--status",
            "active",
            "--protocol",
            "tcp",
            "--all-projects",
            "--project",
            "p1",
            "--limit",
            "10",
            "--marker",
            "m",
            "--sort-key",
            "external_port",
            "--sort-dir",
            "desc",
            "--long",
        ])
        .unwrap() else {
            panic!("not list");
        };
        let query = list_query(&args);
        assert_eq!(query.status.as_deref(), Some("ACTIVE"));
        assert_eq!(query.protocol.as_deref(), Some("tcp"));
        assert_eq!(query.all_projects, Some(true));
        assert_eq!(query.project_id.as_deref(), Some("p1"));
        assert_eq!(
            (query.limit, query.marker.as_deref()),
            (Some(10), Some("m"))
        );
        assert_eq!(query.sort_key, Some(SortKey::ExternalPort));
        assert_eq!(query.sort_dir, Some(SortDir::Desc));
        assert!(args.long);

        let ForwardCommand::List(args) = parse(&["list"]).unwrap() else {
            panic!("not list");
        };
        assert_eq!(list_query(&args), ForwardListQuery::default());
        assert!(parse(&["list", "--limit", "0"]).is_err());
        assert!(parse(&["list", "--limit", "1001"]).is_err());
    }

    #[test]
    fn delete_needs_an_id_and_takes_many() {
        assert_eq!(
            parse(&["delete"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        let ForwardCommand::Delete(args) = parse(&["delete", "a", "b"]).unwrap() else {
            panic!("not delete");
        };
        assert_eq!(args.ids, ["a", "b"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn set_without_changes_is_a_usage_error() {
        let ForwardCommand::Set(args) = parse(&["set", "abc"]).unwrap() else {
            panic!("not set");
        };
        let global = Cli::try_parse_from(["navigator", "proxy", "list"])
            .unwrap()
            .global;
        let err = set(&global, args).await.unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
        assert!(err.to_string().starts_with("nothing to set"), "{err}");
    }

    #[test]
    fn next_marker_comes_from_the_next_link() {
        let link = |rel: &str, href: &str| Link {
            rel: rel.into(),
            href: href.into(),
        };
        assert_eq!(
            next_marker(&[
                link("previous", "http://h/v1/forwards?marker=x"),
                link(
                    "next",
                    "http://h/v1/forwards?limit=2&marker=a%2Db+c&sort_key=id"
                ),
            ]),
            Some("a-b c".into())
        );
        assert_eq!(next_marker(&[link("next", "http://h/v1/forwards")]), None);
        assert_eq!(next_marker(&[]), None);
        // Odd values: reserved characters, UTF-8, a bad escape kept as it
        // is, a fragment, and an empty marker (no next page).
        let marker = |href: &str| next_marker(&[link("next", href)]);
        assert_eq!(
            marker("/v1/forwards?marker=%2B%26%3D%C3%A9%zz&limit=1#frag"),
            Some("+&=é%zz".into())
        );
        assert_eq!(marker("/v1/forwards?markers=x&marker=&limit=1"), None);
    }

    #[test]
    fn create_takes_ranges_instead_of_ports() {
        let command = parse(&[
            "create",
            "--protocol",
            "tcp",
            "--internal-ip-address",
            "10.0.0.5",
            "--internal-port-range",
            "8000:8009",
            "--external-port-range",
            "9000:9009",
        ])
        .unwrap();
        let ForwardCommand::Create(args) = command else {
            panic!("not create: {command:?}");
        };
        assert_eq!(args.internal_port_range.as_deref(), Some("8000:8009"));
        assert_eq!(args.external_port_range.as_deref(), Some("9000:9009"));
        let both = parse(&[
            "create",
            "--protocol",
            "tcp",
            "--internal-ip-address",
            "10.0.0.5",
            "--internal-port",
            "22",
            "--internal-port-range",
            "22:23",
        ])
        .unwrap_err();
        assert_eq!(both.kind(), ErrorKind::ArgumentConflict);
        let neither = parse(&[
            "create",
            "--protocol",
            "tcp",
            "--internal-ip-address",
            "10.0.0.5",
        ])
        .unwrap_err();
        assert_eq!(neither.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn columns_cover_every_forward_field() {
        let forward = Forward {
            id: "f1".into(),
            project_id: "p".into(),
            description: String::new(),
            protocol: "tcp".into(),
            external_address: "203.0.113.5".into(),
            external_port: 20022,
            external_port_range: Some("20022:20031".into()),
            internal_ip_address: "10.0.0.5".into(),
            internal_port: 22,
            internal_port_range: Some("22:31".into()),
            instance_id: None,
            proxy: "px1".into(),
            status: "ACTIVE".into(),
            status_reason: None,
            created_at: "2024-01-01T00:00:00Z".into(),
            updated_at: "2024-01-01T00:00:00Z".into(),
            allowed_cidrs: vec!["192.0.2.0/24".into(), "2001:db8::/32".into()],
            max_connections: Some(100),
            proxy_protocol: "v2".into(),
            group: None,
        };
        let value = serde_json::to_value(&forward).unwrap();
        let cidrs = show_columns(&["allowed_cidrs".to_owned()]).unwrap();
        assert_eq!(
            output::render_show(&cidrs, &value, Format::Value).unwrap(),
            "192.0.2.0/24, 2001:db8::/32\n"
        );
        output::assert_columns_match(&COLUMNS, &value);
        let id_only = show_columns(&["ID".to_owned()]).unwrap();
        assert_eq!(
            output::render_show(&id_only, &value, Format::Value).unwrap(),
            "f1\n"
        );
    }

    /// Built from JSON rather than a struct literal, so that fields added to
    /// `Forward` later (with defaults) do not break this test.
    fn detail(usage: Option<navigator_api::v1::Usage>, why: Option<&str>) -> ForwardDetail {
        let forward: Forward = serde_json::from_value(serde_json::json!({
            "id": "f1", "project_id": "p", "description": "", "protocol": "tcp",
            "external_address": "203.0.113.5", "external_port": 20022,
            "external_port_range": null, "internal_ip_address": "10.0.0.5",
            "internal_port": 22, "internal_port_range": null, "instance_id": null,
            "proxy": "px1", "status": "ACTIVE", "status_reason": null,
            "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"
        }))
        .unwrap();
        ForwardDetail {
            forward,
            usage,
            usage_unavailable: why.map(str::to_owned),
        }
    }

    #[test]
    fn show_prints_usage_raw_for_scripts_and_with_units_for_people() {
        let usage = navigator_api::v1::Usage {
            bytes_in: 1536,
            bytes_out: 5 * 1024 * 1024 * 1024,
            connections_total: 12,
            connections_active: 2,
            last_connection_at: Some("2024-01-02T03:04:05Z".into()),
        };
        let forward = detail(Some(usage), None);
        let columns = detail_columns(&[]).unwrap();
        let json = detail_object(&forward, Format::Json).unwrap();
        output::assert_columns_match(&columns, &json);
        assert_eq!(json["bytes_in"], 1536);
        assert_eq!(json["bytes_out"], 5_368_709_120u64);
        assert_eq!(json["connections_active"], 2);
        assert_eq!(json["usage_unavailable"], Value::Null);
        let table = detail_object(&forward, Format::Table).unwrap();
        assert_eq!(table["bytes_in"], "1536 (1.5 KiB)");
        assert_eq!(table["bytes_out"], "5368709120 (5.0 GiB)");
        let picked = detail_columns(&["bytes_in".into(), "Last Connection At".into()]).unwrap();
        assert_eq!(
            output::render_show(&picked, &json, Format::Value).unwrap(),
            "1536\n2024-01-02T03:04:05Z\n"
        );
        // create's -c knows no usage columns: a create shows no usage.
        assert!(show_columns(&["bytes_in".into()]).is_err());
    }

    #[test]
    fn show_without_usage_says_why() {
        let forward = detail(None, Some("the socat backend does not count usage"));
        let object = detail_object(&forward, Format::Table).unwrap();
        assert_eq!(object["bytes_in"], Value::Null);
        assert_eq!(
            object["usage_unavailable"],
            "the socat backend does not count usage"
        );
        assert_eq!(human_bytes(1023), "1023");
        assert_eq!(human_bytes(1024), "1024 (1.0 KiB)");
        assert_eq!(human_bytes(u64::MAX), "18446744073709551615 (16.0 EiB)");
    }

    #[test]
    fn controls_options_parse_and_bad_values_name_the_option() {
        let base = [
            "create",
            "--protocol",
            "tcp",
            "--internal-ip-address",
            "10.0.0.5",
            "--internal-port",
            "25",
        ];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let ForwardCommand::Create(args) = with(&[
            "--allowed-cidr",
            "192.0.2.0/24",
            "--allowed-cidr",
            "2001:db8::/32",
            "--max-connections",
            "100",
            "--proxy-protocol",
            "V2",
        ])
        .unwrap() else {
            panic!("not create");
        };
        assert_eq!(args.allowed_cidrs, ["192.0.2.0/24", "2001:db8::/32"]);
        assert_eq!(args.max_connections, Some(100));
        assert_eq!(args.proxy_protocol, Some(ProxyProtocolArg::V2));
        for (extra, option) in [
            (&["--max-connections", "0"][..], "--max-connections"),
            (&["--max-connections", "1000001"][..], "--max-connections"),
            (&["--max-connections=-3"][..], "--max-connections"),
            (&["--proxy-protocol", "v3"][..], "--proxy-protocol"),
        ] {
            let err = with(extra).unwrap_err();
            assert!(err.to_string().contains(option), "{extra:?}: {err}");
        }
        let ForwardCommand::Set(set) = parse(&[
            "set",
            "f1",
            "--no-allowed-cidr",
            "--allowed-cidr",
            "10.0.0.0/8",
            "--no-max-connections",
            "--proxy-protocol",
            "none",
        ])
        .unwrap() else {
            panic!("not set");
        };
        assert!(set.no_allowed_cidr && set.no_max_connections);
        assert_eq!(set.allowed_cidrs, ["10.0.0.0/8"]);
        assert_eq!(set.proxy_protocol, Some(ProxyProtocolArg::None));
        let both = parse(&[
            "set",
            "f1",
            "--max-connections",
            "5",
            "--no-max-connections",
        ]);
        assert_eq!(both.unwrap_err().kind(), ErrorKind::ArgumentConflict);
    }
}
