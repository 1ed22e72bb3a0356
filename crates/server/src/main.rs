//! Entry point of `navigator-server`; the work is in [`navigator_server::run`].

use std::process::ExitCode;

use clap::Parser;
use navigator_server::cli::Args;
use navigator_server::run::{self, StartError};

/// jemalloc: an idle relayed connection costs about a third less memory than
/// with glibc's malloc (see `tikv-jemallocator` in the workspace Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
