//! The subcommands, one module per resource.

pub mod forward;
pub mod proxy;
pub mod token;

use anyhow::Result;

use crate::cli::{Cli, Command};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Forward(command) => forward::run(&cli.global, command).await,
        Command::Proxy(command) => proxy::run(&cli.global, command).await,
        Command::Token(command) => token::run(&cli.global, command).await,
    }
}
