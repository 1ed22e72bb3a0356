//! Command-line arguments of `navigator-server`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Navigator API server: port forwarding for OpenStack clouds and Linux hosts.
#[derive(Debug, Parser)]
#[command(
    name = "navigator-server",
    version,
    after_help = "Quick start (no root, no services needed):\n  navigator-server --all-in-one\n  navigator forward create --protocol tcp --internal-ip-address 127.0.0.1 --internal-port 8080"
)]
pub struct Args {
    /// Configuration file (oslo.config-style INI). Default: /etc/navigator/navigator.conf if it exists.
    #[arg(long, value_name = "PATH", global = true)]
    pub config_file: Option<PathBuf>,

    /// Run everything in this process: API, SQLite store, in-process agent with the userspace relay.
    #[arg(long)]
    pub all_in_one: bool,

    /// Directory for the SQLite database when [database] connection is not set.
    /// Default: $XDG_DATA_HOME/navigator (usually ~/.local/share/navigator).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Address the API listens on (overrides [DEFAULT] bind_host).
    #[arg(long, value_name = "IP")]
    pub bind_host: Option<IpAddr>,

    /// Port the API listens on (overrides [DEFAULT] bind_port; 0 picks a free one).
    #[arg(long, value_name = "PORT")]
    pub bind_port: Option<u16>,

    /// Serve auth_strategy = noauth on a non-loopback address. Anyone who can
    /// reach the port then acts as admin of any project.
    #[arg(long)]
    pub allow_insecure_noauth: bool,

    /// Log at debug level (overrides [DEFAULT] debug).
    #[arg(long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Database administration.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the OpenAPI document of API v1 as JSON.
    Openapi,
    /// Authorisation policy helpers.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Keystone helpers.
    Keystone {
        #[command(subcommand)]
        command: KeystoneCommand,
    },
    /// Print the man page (roff) of navigator-server; scripts/package installs it.
    #[command(hide = true)]
    Manpage,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print a sample policy.yaml with every default rule and what it guards.
    Sample,
}

#[derive(Debug, Subcommand)]
pub enum KeystoneCommand {
    /// Create or update Navigator's service (type port-forwarding) and its
    /// endpoints in the Keystone catalog (idempotent). Uses admin credentials
    /// from OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME,
    /// OS_USER_DOMAIN_NAME, OS_PROJECT_DOMAIN_NAME when OS_AUTH_URL is set,
    /// else those of [keystone_authtoken].
    Register(RegisterArgs),
}

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// URL of the public endpoint, e.g. https://navigator.example.com:9797.
    #[arg(long, value_name = "URL")]
    pub public_url: String,
    /// URL of the internal endpoint. Default: the public URL.
    #[arg(long, value_name = "URL")]
    pub internal_url: Option<String>,
    /// URL of the admin endpoint. Default: the internal URL.
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Region of the endpoints. Default: [keystone_authtoken] region_name, else RegionOne.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the database schema to this release (idempotent).
    Sync,
    /// Print the database's schema version (0: never migrated); on stderr,
    /// what `db sync` would still apply or newer migrations this release
    /// does not know.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a sample navigator.conf with every option, its default and its meaning.
    Sample,
    /// Load and validate the configuration, then print a summary.
    Check,
}
