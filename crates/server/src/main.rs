//! Entry point of `navigator-server`; the work is in [`navigator_server::run`].

use std::process::ExitCode;

use clap::Parser;
use navigator_server::cli::Args;
use navigator_server::run::{self, StartError};

/// jemalloc: the relay of all-in-one holds thousands of idle connections; see the workspace's
/// Cargo.toml for why.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    match run::main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Usage(e)) => {
            eprintln!("navigator-server: {e:#}");
            // EX_USAGE: a configuration or command-line problem.
            ExitCode::from(64)
        }
        Err(StartError::Runtime(e)) => {
            eprintln!("navigator-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
