//! `navigator-status`: operator checks, as `nova-status`.
//! `navigator-status upgrade check` tells whether this node is ready for
//! this release (see `navigator_server::status`); exit 0 all Success, 1 a
//! Warning, 2 a Failure, 255 when the checks could not run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use navigator_server::config::DEFAULT_CONFIG_FILE;

/// Navigator status checks for operators (like nova-status).
#[derive(Debug, Parser)]
#[command(name = "navigator-status", version)]
struct Args {
    /// Configuration file (the server's navigator.conf). Default:
    /// /etc/navigator/navigator.conf if it exists.
    #[arg(long, value_name = "PATH", global = true)]
    config_file: Option<PathBuf>,

    /// Directory of the SQLite database when [database] connection is not
    /// set, as for navigator-server. Default: $XDG_DATA_HOME/navigator.
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Upgrade readiness.
    Upgrade {
        #[command(subcommand)]
        command: UpgradeCommand,
    },
    /// Print the man page (roff) and exit; scripts/package installs it.
    #[command(hide = true)]
    Manpage,
}

#[derive(Debug, Subcommand)]
enum UpgradeCommand {
    /// Check the configuration, policy file, database schema, proxies,
    /// RabbitMQ, the API's TLS certificate and the port pool. Exit 0: all
    /// Success; 1: a Warning; 2: a Failure; 255: the checks could not run.
    Check,
}

/// nova-status's code for "the checks themselves failed".
const EXIT_UNEXPECTED: u8 = 255;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("navigator-status: {e:#}");
            ExitCode::from(EXIT_UNEXPECTED)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<u8> {
    let Command::Upgrade {
        command: UpgradeCommand::Check,
    } = &args.command
    else {
        use clap::CommandFactory as _;
        clap_mangen::Man::new(Args::command())
            .render(&mut std::io::stdout())
            .context("cannot write the man page")?;
        return Ok(0);
    };
    let path = args.config_file.clone().or_else(|| {
        Path::new(DEFAULT_CONFIG_FILE)
            .exists()
            .then(|| PathBuf::from(DEFAULT_CONFIG_FILE))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let checks = runtime.block_on(navigator_server::status::upgrade_check(
        path.as_deref(),
        |config| match &config.database_connection {
            Some(url) => Ok(url.clone()),
            None => {
                let dir = match &args.data_dir {
                    Some(dir) => dir.clone(),
                    None => dirs::data_dir().map(|dir| dir.join("navigator")).ok_or(
                        "cannot determine a data directory (no HOME?); pass --data-dir DIR",
                    )?,
                };
                Ok(navigator_store::sqlite_url(&dir.join("navigator.db")))
            }
        },
    ));
    print!("{}", navigator_server::status::render(&checks));
    Ok(navigator_server::status::exit_code(&checks))
}
