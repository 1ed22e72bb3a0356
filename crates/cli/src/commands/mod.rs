//! The subcommands, one module per resource.

pub mod forward;
pub mod proxy;
pub mod quota;
pub mod token;

use anyhow::Result;

use crate::cli::{Cli, Command};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Forward(command) => forward::run(&cli.global, command).await,
        Command::Proxy(command) => proxy::run(&cli.global, command).await,
        Command::Quota(command) => quota::run(&cli.global, command).await,
        Command::Token(command) => token::run(&cli.global, command).await,
        Command::Completion { shell } => completion(shell),
        Command::Manpage => manpage(),
    }
}

/// Writes the completion script of `shell` for the real clap definition.
fn completion(shell: crate::cli::CompletionShell) -> Result<()> {
    use clap::CommandFactory as _;
    let shell = match shell {
        crate::cli::CompletionShell::Bash => clap_complete::Shell::Bash,
        crate::cli::CompletionShell::Zsh => clap_complete::Shell::Zsh,
    };
    use anyhow::Context as _;
    use std::io::Write as _;
    let mut command = Cli::command();
    // Into memory first: clap_complete panics when its writer fails (a
    // closed pipe), an error here is an ordinary one.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "navigator", &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("cannot write the completion script")
}

/// Writes the man page of `navigator` (roff) for the real clap definition.
fn manpage() -> Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory as _;
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .context("cannot write the man page")
}
