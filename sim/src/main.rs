//! `herald-sim`: run, fuzz, replay and shrink simulations of the real Herald core.
//!
//! Exit codes: 0 nothing failed, 1 something failed (an invariant, a crash, a hang past the
//! wall-time budget, or a catalogue expectation), 2 usage or I/O error.

/// mimalloc: the worlds allocate and free many small buffers per tick; measured on a medium
/// scenario it takes 8 % fewer instructions than the system allocator (bench/HISTORY.md,
/// "Fourth pass").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use herald_sim::campaign::commands;
use herald_sim::{catalogue, cli};
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
    /// Generate (or load) one scenario, run it, judge it as fuzz judges a case (invariants, host
    /// failures, panics; HANG past the replay budget) and print a summary.
    Run(cli::RunArgs),
    /// Fuzz: run generated scenarios, shrink and save failures, report coverage.
    Fuzz(commands::FuzzArgs),
    /// Rerun a seed file deterministically and print its timeline and verdict.
    Replay(commands::ReplayArgs),
    /// Shrink a failing scenario or seed file further.
    Shrink(commands::ShrinkArgs),
    /// Run generated cases twice each and report any history digest mismatch.
    CheckDeterminism(commands::CheckDeterminismArgs),
    /// Run the failure catalogue (seeds/catalogue) and print a test report.
    Suite(catalogue::SuiteArgs),
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
        Command::Fuzz(args) => commands::fuzz_command(args),
        Command::Replay(args) => commands::replay_command(args),
        Command::Shrink(args) => commands::shrink_command(args),
        Command::CheckDeterminism(args) => commands::check_determinism_command(args),
        Command::Suite(args) => catalogue::suite(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("herald-sim: {message}");
            ExitCode::from(2)
        }
    }
}
