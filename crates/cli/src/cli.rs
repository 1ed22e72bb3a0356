//! The command line: `navigator [global options] <forward|proxy|quota|token> <action>`.

use clap::{Parser, Subcommand};

use crate::commands::forward::ForwardCommand;
use crate::commands::proxy::ProxyCommand;
use crate::commands::quota::QuotaCommand;
use crate::commands::token::TokenCommand;
use crate::config::GlobalArgs;

/// Command-line client for Navigator, the port-forwarding service for
/// OpenStack clouds
#[derive(Debug, Parser)]
#[command(name = "navigator", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage port forwards
    #[command(subcommand)]
    Forward(ForwardCommand),
    /// Inspect proxies (the nodes that carry forwards)
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// Show or set a project's quota (forwards and ports)
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Get a Keystone token, to check the login settings
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a shell completion script (bash or zsh), e.g.
    /// `navigator completion bash > /etc/bash_completion.d/navigator`
    Completion {
        /// The shell to complete for.
        shell: CompletionShell,
    },
    /// Print the man page (roff) of `navigator`; scripts/package installs it.
    #[command(hide = true)]
    Manpage,
}

/// Shells `navigator completion` writes a script for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("navigator").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let before = parse(&["--os-endpoint", "http://h:1", "--debug", "proxy", "list"]).unwrap();
        let after = parse(&["proxy", "list", "--os-endpoint", "http://h:1", "--debug"]).unwrap();
        assert_eq!(before.global, after.global);
        assert_eq!(before.global.os.os_endpoint.as_deref(), Some("http://h:1"));
        assert!(after.global.debug);
    }

    #[test]
    fn missing_subcommand_is_a_usage_error() {
        let err = parse(&["forward"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["forward", "frobnicate"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn completion_and_manpage_need_no_cloud() {
        assert!(matches!(
            parse(&["completion", "zsh"]).unwrap().command,
            Command::Completion {
                shell: CompletionShell::Zsh
            }
        ));
        assert!(matches!(
            parse(&["manpage"]).unwrap().command,
            Command::Manpage
        ));
    }

    #[test]
    fn version_is_available() {
        let err = parse(&["--version"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DisplayVersion);
    }
}
