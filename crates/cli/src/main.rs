//! `navigator`: the command-line client of Navigator, in the style of
//! openstackclient.
//!
//! This file only parses, runs and maps failures to exit statuses: 0 on
//! success, 1 for API and runtime errors, 2 for usage errors.

mod cli;
mod cloud;
mod commands;
mod config;
mod errors;
mod output;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser as _;

fn main() -> ExitCode {
    // Before any HTTP client exists: reqwest is built without a default TLS
    // crypto provider, and ring is the one Navigator uses.
    navigator_keystone::auth::install_tls_provider();
    // clap prints its own usage errors and exits 2 (0 for --help/--version).
    let cli = cli::Cli::parse();
    let debug = cli.global.debug;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => errors::report(&err, debug),
    }
}

fn run(cli: cli::Cli) -> Result<()> {
    // One request at a time: a current-thread runtime is all a CLI needs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(commands::run(cli))
}
