//! The `run` command: one scenario, one seed, a one-screen summary and the history digest.
//!
//! A run is judged as a fuzz campaign judges a case ([`crate::campaign::case::run_and_judge`]):
//! an invariant violation, a host failure in the history, or a panic of the world or a checker
//! fails it (exit 1). It runs on a thread of its own within the replay's wall-time budget
//! ([`crate::campaign::seeds::seed_replay_wall_budget`]): a world that still spins then ends as
//! `verdict: HANG` (exit 1) instead of running forever with no output.

use crate::campaign::case::{run_and_judge, FailureKey};
use crate::campaign::seeds::{
    run_within_wall_budget, seed_replay_wall_budget, ReplayInterrupted, SEED_REPLAY_BUDGET_ENV,
};
use crate::server_under_test::{RealServer, ServerUnderTest};
use herald_properties::generators::{GeneratorSettings, Size};
use herald_properties::history::{History, Observation};
use herald_properties::scenario::Scenario;
use herald_properties::seed_file::{Expect, SeedFile};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The seed of the world (and of the generated scenario, unless --scenario is given); 0 by
    /// default, or the file's own world seed for a seed / catalogue file.
    #[arg(long, env = "HERALD_SEED")]
    pub seed: Option<u64>,
    /// Run this scenario (a scenario JSON file, or a seed / catalogue file holding one, which
    /// runs under its own world seed; `replay` also judges its expectations and verdict).
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

/// What a `--scenario` (or `shrink`) file holds.
pub enum ScenarioFile {
    /// A bare scenario, or an object with a `scenario` field and no `format_version`: it runs
    /// under the world seed the command is given.
    Bare(Box<Scenario>),
    /// A seed file or catalogue entry (it has `format_version`): it carries its own world seed,
    /// expectations and verdict, and is read as one (a wrong version is an error), since run as
    /// a bare scenario under another seed it would no longer reproduce what it records.
    Seed(Box<SeedFile>),
}

/// Loads a [`ScenarioFile`]; `run --scenario` and `shrink` both read their file through this.
pub fn load_scenario_file(path: &PathBuf) -> Result<ScenarioFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    if value.get("format_version").is_some() {
        let file = SeedFile::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(ScenarioFile::Seed(Box::new(file)));
    }
    let scenario = value.get("scenario").cloned().unwrap_or(value);
    serde_json::from_value(scenario)
        .map(|scenario| ScenarioFile::Bare(Box::new(scenario)))
        .map_err(|e| format!("{} holds no valid scenario: {e}", path.display()))
}

/// The scenario `run` runs and its world seed: `--seed` (0 by default) for a generated scenario
/// or a bare file; a seed file's own world seed unless `--seed` is given, which then overrides
/// it with a warning (the file's recorded digest and verdict no longer apply).
fn run_input(args: &RunArgs) -> Result<(Scenario, u64), String> {
    let Some(path) = &args.scenario else {
        let seed = args.seed.unwrap_or(0);
        let settings = GeneratorSettings {
            size: args.size.into(),
            swarm: args.swarm,
        };
        return Ok((
            crate::campaign::generated_scenario(settings, seed, args.whole_quiet_period),
            seed,
        ));
    };
    let (mut scenario, seed) = match load_scenario_file(path)? {
        ScenarioFile::Bare(scenario) => (*scenario, args.seed.unwrap_or(0)),
        ScenarioFile::Seed(file) => {
            let seed = match args.seed {
                Some(seed) if seed != file.seed => {
                    eprintln!(
                        "warning: --seed {seed} overrides the world seed {} of the seed file {}: its recorded \
                         digest and verdict do not apply to this run",
                        file.seed,
                        path.display()
                    );
                    seed
                }
                _ => file.seed,
            };
            if !file.expectations.is_empty() || file.expect != Expect::Pass {
                eprintln!(
                    "note: `run` judges the invariants and crashes only; the file's expectations and `expect` \
                     verdict are judged by `herald-sim replay {}`",
                    path.display()
                );
            }
            (file.scenario, seed)
        }
    };
    if args.whole_quiet_period {
        scenario.config.settle_ms = None;
    }
    Ok((scenario, seed))
}

/// `herald-sim run` against the real server, within the replay budget.
pub fn run(args: RunArgs) -> Result<ExitCode, String> {
    let budget = seed_replay_wall_budget()?;
    run_on(args, || Rc::new(RealServer) as Rc<dyn ServerUnderTest>, budget)
}

/// `run` against a server from `make_server` (built on the run's thread), within `budget` of
/// wall time: exit 0 when nothing failed, 1 on any failure the campaign would count (an
/// invariant, a host failure, a panic) or a hang.
pub fn run_on(
    args: RunArgs,
    make_server: impl FnOnce() -> Rc<dyn ServerUnderTest> + Send + 'static,
    budget: Duration,
) -> Result<ExitCode, String> {
    let (scenario, seed) = run_input(&args)?;
    println!(
        "SEED={} steps={} users={} client_hosts={}",
        seed,
        scenario.steps.len(),
        scenario.config.users,
        scenario.config.client_hosts
    );
    if let Some(path) = &args.save_scenario {
        let text = serde_json::to_string_pretty(&scenario).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let reproduce = match &args.scenario {
        Some(path) => format!(
            "cargo run --release -p herald-sim -- run --seed {seed} --scenario {}{}",
            path.display(),
            if args.whole_quiet_period {
                " --whole-quiet-period"
            } else {
                ""
            }
        ),
        None => crate::campaign::run_command(
            seed,
            Size::from(args.size).as_str(),
            args.swarm,
            args.whole_quiet_period,
        ),
    };
    let started = std::time::Instant::now();
    let (for_run, trace) = (scenario.clone(), args.trace);
    let ran = run_within_wall_budget(format!("run-{seed}"), budget, move || {
        run_and_judge(&for_run, seed, make_server(), trace)
    });
    let judged = match ran {
        Ok(judged) => judged,
        Err(ReplayInterrupted::CannotSpawn(error)) => return Err(format!("cannot start the run: {error}")),
        Err(ReplayInterrupted::Hang) => {
            println!("{}", hang_verdict(None, "the run", budget));
            println!("reproduce with: {reproduce}");
            return Ok(ExitCode::from(1));
        }
        Err(ReplayInterrupted::Panic(message)) => {
            println!("FAILED: the run panicked outside its world: {message}");
            println!("reproduce with: {reproduce}");
            return Ok(ExitCode::from(1));
        }
    };
    let wall = started.elapsed();
    if let Some(output) = &judged.output {
        print_summary(&output.history, wall);
    }
    for failure in &judged.failures {
        match failure.key {
            FailureKey::Invariant(invariant) => println!(
                "VIOLATION {:?} [{:?}/{:?}]: {}",
                invariant, failure.category, failure.severity, failure.explanation
            ),
            FailureKey::Crash(kind) => println!(
                "CRASH {} [{} / {}]: {}",
                kind.as_str(),
                failure.severity.as_str(),
                failure.category.as_str(),
                failure.explanation
            ),
        }
    }
    if judged.failures.is_empty() {
        println!("all invariants hold");
    } else {
        println!("FAILED: {}", judged.outcome().trim_start_matches("failed "));
        println!("reproduce with: {reproduce}");
    }
    if let Some(output) = &judged.output {
        if let Some(path) = &args.history {
            let text = serde_json::to_string_pretty(&output.history).map_err(|e| e.to_string())?;
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        if args.trace {
            println!("--- trace ---\n{}", output.trace);
        }
        println!("history-digest: {}", output.history.digest());
    } else {
        println!("history-digest: none (the world panicked)");
    }
    Ok(if judged.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The `verdict: HANG` line of `run`, `replay` and `shrink`: `run` (of `file`, if any) outlived
/// `budget` and was abandoned. Built in one place so the three commands cannot drift apart.
pub fn hang_verdict(file: Option<&Path>, run: &str, budget: Duration) -> String {
    let file = file.map(|f| format!(" ({})", f.display())).unwrap_or_default();
    format!(
        "verdict: HANG{file}: {run} exceeded the wall-time budget of {} s and was abandoned: its world still \
         spins (or this machine is slower than the budget allows for: raise it with {SEED_REPLAY_BUDGET_ENV})",
        budget_text(budget)
    )
}

/// A wall-time budget in seconds, as the HANG verdicts print it (`60`, or `0.25`).
pub fn budget_text(budget: Duration) -> String {
    if budget.subsec_nanos() == 0 {
        budget.as_secs().to_string()
    } else {
        format!("{}", budget.as_secs_f64())
    }
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
