//! The `run` command: one scenario, one seed, a one-screen summary and the history digest.

use crate::world::{run_with, WorldOptions};
use herald_properties::checkers::check_all;
use herald_properties::generators::{GeneratorSettings, Size};
use herald_properties::history::{History, Observation};
use herald_properties::scenario::Scenario;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The seed of the world (and of the generated scenario, unless --scenario is given).
    #[arg(long, env = "HERALD_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Run this scenario (a scenario JSON file, or a seed / catalogue file holding one).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Size of the generated scenario.
    #[arg(long, value_enum, default_value_t = SizeArg::Small)]
    pub size: SizeArg,
    /// Generate with swarm testing (a random subset of step families per scenario).
    #[arg(long)]
    pub swarm: bool,
    /// Run the scenario's whole quiet period instead of ending once the world has settled (as
    /// `fuzz --whole-quiet-period` does); applies to a `--scenario` file too.
    #[arg(long)]
    pub whole_quiet_period: bool,
    /// Print the captured tracing logs of every host after the summary.
    #[arg(long)]
    pub trace: bool,
    /// Write the full history as JSON to this file.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Write the scenario that ran (generated or loaded) as pretty JSON to this file, to edit
    /// it by hand or hand it to `run --scenario` / `shrink`.
    #[arg(long)]
    pub save_scenario: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeArg {
    Tiny,
    Small,
    Medium,
    Large,
}

impl From<SizeArg> for Size {
    fn from(size: SizeArg) -> Size {
        match size {
            SizeArg::Tiny => Size::Tiny,
            SizeArg::Small => Size::Small,
            SizeArg::Medium => Size::Medium,
            SizeArg::Large => Size::Large,
        }
    }
}

/// Loads a scenario from a file holding either a bare scenario or an object with a `scenario`
/// field (seed files and catalogue entries).
pub fn load_scenario(path: &PathBuf) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let scenario = value.get("scenario").cloned().unwrap_or(value);
    serde_json::from_value(scenario).map_err(|e| format!("{} holds no valid scenario: {e}", path.display()))
}

pub fn run(args: RunArgs) -> Result<ExitCode, String> {
    let scenario = match &args.scenario {
        Some(path) => {
            let mut scenario = load_scenario(path)?;
            if args.whole_quiet_period {
                scenario.config.settle_ms = None;
            }
            scenario
        }
        None => crate::campaign::generated_scenario(
            GeneratorSettings {
                size: args.size.into(),
                swarm: args.swarm,
            },
            args.seed,
            args.whole_quiet_period,
        ),
    };
    println!(
        "SEED={} steps={} users={} client_hosts={}",
        args.seed,
        scenario.steps.len(),
        scenario.config.users,
        scenario.config.client_hosts
    );
    if let Some(path) = &args.save_scenario {
        let text = serde_json::to_string_pretty(&scenario).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let started = std::time::Instant::now();
    let output = run_with(
        &scenario,
        args.seed,
        WorldOptions {
            trace: args.trace,
            ..WorldOptions::default()
        },
    );
    let wall = started.elapsed();
    let history = output.history;
    print_summary(&history, wall);
    let violations = check_all(&scenario, &history);
    for violation in &violations {
        println!(
            "VIOLATION {:?} [{:?}/{:?}]: {}",
            violation.invariant, violation.category, violation.severity, violation.explanation
        );
    }
    if violations.is_empty() {
        println!("all invariants hold");
    } else {
        let size = Size::from(args.size).as_str();
        let reproduce = match &args.scenario {
            Some(path) => format!(
                "cargo run --release -p herald-sim -- run --seed {} --scenario {}{}",
                args.seed,
                path.display(),
                if args.whole_quiet_period {
                    " --whole-quiet-period"
                } else {
                    ""
                }
            ),
            None => crate::campaign::run_command(args.seed, size, args.swarm, args.whole_quiet_period),
        };
        println!("reproduce with: {reproduce}");
    }
    if let Some(path) = &args.history {
        let text = serde_json::to_string_pretty(&history).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if args.trace {
        println!("--- trace ---\n{}", output.trace);
    }
    println!("history-digest: {}", history.digest());
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Counts of what happened, on one screen.
pub fn print_summary(history: &History, wall: std::time::Duration) {
    let mut published = 0;
    let mut publish_failed = 0;
    let mut delivered = 0;
    let mut gaps = 0;
    let mut welcomes = 0;
    let mut closes = std::collections::BTreeMap::<String, u64>::new();
    let mut failures = Vec::new();
    let mut skipped = 0;
    for entry in &history.entries {
        match &entry.what {
            Observation::PublishReturned { outcome, .. } => match outcome {
                herald_properties::history::PublishOutcome::Published { .. } => published += 1,
                herald_properties::history::PublishOutcome::Failed { .. } => publish_failed += 1,
            },
            Observation::Delivered { item, .. } => match item {
                herald_properties::history::DeliveredItem::Event { .. } => delivered += 1,
                herald_properties::history::DeliveredItem::Gap { .. } => gaps += 1,
            },
            Observation::FrameReceived {
                frame: herald_properties::history::FrameSeen::Welcome { .. },
                ..
            } => welcomes += 1,
            Observation::Closed { code, by, .. } => {
                *closes
                    .entry(
                        code.map(|c| c.to_string())
                            .unwrap_or_else(|| format!("{by:?}").to_lowercase()),
                    )
                    .or_default() += 1;
            }
            Observation::Failure { host, message } => failures.push(format!("{host}: {message}")),
            Observation::StepSkipped { .. } => skipped += 1,
            _ => {}
        }
    }
    let simulated_ms = history.end_at_ms().unwrap_or(0);
    println!(
        "simulated {:.1}s in {:.2}s wall ({:.0}x); {} history entries",
        simulated_ms as f64 / 1000.0,
        wall.as_secs_f64(),
        simulated_ms as f64 / 1000.0 / wall.as_secs_f64().max(1e-9),
        history.entries.len()
    );
    println!("publishes: {published} ok, {publish_failed} failed; delivered: {delivered} events, {gaps} gaps; welcomes: {welcomes}; steps skipped: {skipped}");
    println!(
        "closes: {}",
        closes
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for failure in failures {
        println!("FAILURE {failure}");
    }
}
