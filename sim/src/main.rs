//! `herald-sim`: run, fuzz, replay and shrink simulations of the real Herald core.
//!
//! Exit codes: 0 nothing failed, 1 an invariant (or catalogue expectation) failed, 2 usage or
//! I/O error.

use clap::{Parser, Subcommand};
use herald_sim::cli;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "herald-sim",
    version,
    about = "Deterministic simulation of the Herald notification core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate (or load) one scenario, run it, check every invariant and print a summary.
    Run(cli::RunArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Run(args) => cli::run(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("herald-sim: {message}");
            ExitCode::from(2)
        }
    }
}
