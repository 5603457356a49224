//! The campaign's CLI commands: `fuzz`, `replay`, `shrink`, `check-determinism`.
//! Exit codes: 0 nothing failed, 1 something failed, 2 usage or I/O error (returned as `Err`).
//! A fuzz campaign stopped by an I/O error exits 2 even when it found failures before: its
//! summary and report still list them, and say it stopped early.

use super::case::{run_and_judge, CaseFailure, FailureKey, Judged};
use super::seeds::{
    bare_seed_file, check_writable, git_revision, load_seed_file, replay, replay_within_wall_budget,
    run_within_wall_budget, seed_name, seed_replay_wall_budget, verdict, write_atomically, Replay, ReplayInterrupted,
    SEED_REPLAY_BUDGET_ENV,
};
use super::shrinking::{shrink_while, Shrunk};
use super::{parse_duration, CampaignReport, FuzzOptions, Limit, ProgressMode, Shard};
use crate::cli::{hang_verdict, load_scenario_file, ScenarioFile, SizeArg};
use crate::server_under_test::{RealServer, ServerUnderTest};
use crate::timeline::{render, TimelineOptions};
use crate::world::{run_with, WorldOptions};
use herald_properties::generators::GeneratorSettings;
use herald_properties::history::History;
use herald_properties::scenario::Scenario;
use herald_properties::seed_file::{CrashKind, Expect, RecordedCrash, RecordedFailure, SeedFile};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Run for this long: 90s, 10m, 1h (default 60s unless --cases is given).
    #[arg(long, conflicts_with = "cases")]
    pub time: Option<String>,
    /// Run exactly this many cases (in this shard).
    #[arg(long)]
    pub cases: Option<u64>,
    /// Worker threads (default: available cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// This machine's shard of the seed space, 0-based: `--shard 3/8`. With more than one shard,
    /// `--seed-start` is required (the same on every shard).
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// First case seed (default: random, printed as SEED= so the campaign can be rerun).
    #[arg(long, env = "HERALD_SEED_START")]
    pub seed_start: Option<u64>,
    /// Swarm testing: each scenario enables a random subset of step families and fault rates.
    #[arg(long)]
    pub swarm: bool,
    #[arg(long, value_enum, default_value_t = SizeArg::Small)]
    pub size: SizeArg,
    /// Never end a world early once it has settled: run every case's whole quiet period
    /// (slower; also watches for misbehaviour that starts after seconds of complete idleness).
    #[arg(long)]
    pub whole_quiet_period: bool,
    /// Where shrunk failures are saved as seed files.
    #[arg(long, default_value = "seeds")]
    pub seeds_dir: PathBuf,
    /// Save nothing (no seed files, no in-progress markers).
    #[arg(long, conflicts_with = "seeds_dir")]
    pub no_seeds: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Save failures unshrunk.
    #[arg(long)]
    pub no_shrink: bool,
    /// World runs per shrink.
    #[arg(long, default_value_t = super::SHRINK_ATTEMPTS_DEFAULT)]
    pub shrink_attempts: usize,
    /// Stop starting cases after this many failed.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Wall time one world run may take before it is reported as a hang.
    #[arg(long, default_value = "60s")]
    pub hang_budget: String,
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// `herald-sim fuzz`.
pub fn fuzz_command(args: FuzzArgs) -> Result<ExitCode, String> {
    let limit = match (&args.time, args.cases) {
        (Some(time), _) => Limit::Time(parse_duration(time)?),
        (None, Some(cases)) => Limit::Cases(cases),
        (None, None) => Limit::Time(Duration::from_secs(60)),
    };
    let shard = Shard::parse(&args.shard)?;
    // Shards cover disjoint seeds only from one shared start: machines that each drew their own
    // would sample unrelated ranges, and could overlap.
    if shard.count > 1 && args.seed_start.is_none() {
        return Err(format!(
            "--shard {} needs --seed-start (or HERALD_SEED_START), the same on every shard, so \
             that the shards cover disjoint seeds",
            args.shard
        ));
    }
    let seed_start = args.seed_start.unwrap_or_else(random_seed);
    let options = FuzzOptions {
        limit,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1),
        shard,
        seed_start,
        swarm: args.swarm,
        size: args.size.into(),
        whole_quiet_period: args.whole_quiet_period,
        seeds_dir: (!args.no_seeds).then(|| args.seeds_dir.clone()),
        shrink: !args.no_shrink,
        shrink_attempts: args.shrink_attempts,
        stop_after_failures: args.stop_after,
        case_wall_budget: parse_duration(&args.hang_budget)?,
        progress: args.progress,
        ..FuzzOptions::cases(0)
    };
    // First, whatever `--progress` says (README): `SEED=<n>` is what reruns the campaign.
    println!("{}", super::banner(&options));
    // A campaign that cannot save would find failures for nothing (for an hour, on CI).
    if let Some(dir) = &options.seeds_dir {
        check_writable(dir).map_err(|e| format!("{e} (give a writable --seeds-dir, or --no-seeds)"))?;
    }
    let report = super::fuzz(&options, &|| Rc::new(RealServer) as Rc<dyn ServerUnderTest>);
    report
        .print_summary(&mut std::io::stdout().lock())
        .map_err(|e| format!("cannot print the summary: {e}"))?;
    if let Some(path) = &args.report {
        write_report(&report, path)?;
    }
    if !report.io_errors.is_empty() {
        println!(
            "STOPPED EARLY by an I/O error (exit 2){}",
            if report.failed() {
                "; the failures above were found before it"
            } else {
                ""
            }
        );
        return Ok(ExitCode::from(2));
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_report(report: &CampaignReport, path: &PathBuf) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A campaign's start seed when none is given. Campaign drivers are outside the simulation, so
/// the wall clock is fine here; the seed is printed, so the campaign stays reproducible.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Spread nearby start times apart, and keep seeds readable (below 2^48).
    (nanos ^ u64::from(std::process::id()).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// A seed file (seeds/*.json, a catalogue entry, or an in-progress marker).
    pub file: PathBuf,
    /// Capture tracing logs of server and clients and interleave them in the timeline.
    #[arg(long)]
    pub trace: bool,
    /// Show the hub gauge samples too.
    #[arg(long)]
    pub gauges: bool,
    /// Print only the verdict and the digest, not the timeline.
    #[arg(long)]
    pub quiet: bool,
    /// Write the full history as JSON to this file.
    #[arg(long)]
    pub history: Option<PathBuf>,
}

/// `herald-sim replay`: rerun a seed file, print its timeline, judge it.
///
/// The run has the wall-time budget `cargo test` gives each seed ([`seed_replay_wall_budget`]):
/// a hang seed whose world still spins ends as `verdict: HANG` (exit 1) instead of running
/// forever with no output.
pub fn replay_command(args: ReplayArgs) -> Result<ExitCode, String> {
    let file = load_seed_file(&args.file)?;
    let budget = seed_replay_wall_budget()?;
    let hang_seed = file.crash.as_ref().is_some_and(|c| c.kind == CrashKind::Hang);
    if hang_seed {
        println!(
            "{} is a hang seed (world seed {}): replaying within a wall-time budget of {} s ({SEED_REPLAY_BUDGET_ENV} sets it)",
            args.file.display(),
            file.seed,
            budget.as_secs()
        );
    }
    let result = match replay_within_wall_budget(&file, || Rc::new(RealServer), args.trace, budget) {
        Ok(result) => result,
        Err(ReplayInterrupted::CannotSpawn(error)) => return Err(format!("cannot start the replay: {error}")),
        Err(interrupted) => {
            println!(
                "seed file: {} (world seed {}, {} steps)",
                file.name,
                file.seed,
                file.scenario.steps.len()
            );
            if let Some(crash) = &file.crash {
                println!("recorded crash: {}: {}", crash.kind.as_str(), crash.message);
            }
            match interrupted {
                ReplayInterrupted::Hang => println!("{}", hang_verdict(Some(&args.file), "the replay", budget)),
                other => println!(
                    "verdict: FAILED ({}): {}",
                    args.file.display(),
                    other.describe(&args.file, budget, 0)
                ),
            }
            return Ok(ExitCode::from(1));
        }
    };
    if hang_seed {
        println!(
            "the recorded hang did not recur within {} s: fixed, or the campaign's machine was overloaded",
            budget.as_secs()
        );
    }
    if let Some(output) = &result.judged.output {
        if !args.quiet {
            let text = render(
                &file.scenario,
                &output.history,
                &result.judged.failures,
                args.trace.then_some(output.trace.as_str()),
                TimelineOptions {
                    color: std::io::stdout().is_terminal(),
                    gauges: args.gauges,
                },
            );
            print!("{text}");
        }
        if let Some(path) = &args.history {
            let text = serde_json::to_string_pretty(&output.history).map_err(|e| e.to_string())?;
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    // Rerun as `check-determinism` does: process state shifted, no trace (the digest never
    // depends on it).
    let second_run = SecondRun::judge(result.digest.as_deref(), Replay::recorded_digest(&file), || {
        perturb_process_state(1);
        replay(&file, Rc::new(RealServer), false)
            .judged
            .output
            .map(|o| o.history)
    });
    print_replay_footer(&file, &result, &second_run);
    if matches!(second_run, SecondRun::OtherDigest(_) | SecondRun::Panicked) {
        println!(
            "verdict: FAILED ({}): the replay is not deterministic",
            args.file.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(match verdict(&file, &result) {
        Ok(summary) => {
            println!("verdict: {summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            println!("verdict: FAILED ({})", args.file.display());
            for line in problems.lines() {
                println!("  {line}");
            }
            ExitCode::from(1)
        }
    })
}

/// What a second replay gave; made only when the first run's digest differs from the recorded one.
#[derive(Debug, PartialEq, Eq)]
enum SecondRun {
    NotNeeded,
    SameDigest,
    OtherDigest(History),
    Panicked,
}

impl SecondRun {
    /// A digest that differs from the recorded one is either a code change since the file was
    /// written or nondeterminism: `rerun` (a second replay, returning its digest) tells the two
    /// apart. It is called only then, and returns the second run's history.
    fn judge(first: Option<&str>, recorded: Option<&str>, rerun: impl FnOnce() -> Option<History>) -> SecondRun {
        match (first, recorded) {
            (Some(first), Some(recorded)) if first != recorded => match rerun() {
                Some(second) if second.digest() == first => SecondRun::SameDigest,
                Some(second) => SecondRun::OtherDigest(second),
                None => SecondRun::Panicked,
            },
            _ => SecondRun::NotNeeded,
        }
    }
}

fn print_replay_footer(file: &SeedFile, result: &Replay, second_run: &SecondRun) {
    println!(
        "seed file: {} (world seed {}, {} steps)",
        file.name,
        file.seed,
        file.scenario.steps.len()
    );
    if let Some(failure) = &file.failure {
        println!("recorded failure: {}: {}", failure.invariant, failure.explanation);
    }
    if let Some(crash) = &file.crash {
        println!("recorded crash: {}: {}", crash.kind.as_str(), crash.message);
    }
    for unmet in &result.unmet {
        println!("EXPECTATION UNMET: {unmet}");
    }
    match (&result.digest, Replay::recorded_digest(file)) {
        (Some(digest), Some(recorded)) if digest == recorded => {
            println!("history-digest: {digest} (matches the recorded digest)")
        }
        (Some(digest), Some(recorded)) => {
            let revision = file.git_revision.as_deref().map_or_else(
                || "an unrecorded revision".to_string(),
                |r| format!("revision {}", r.chars().take(12).collect::<String>()),
            );
            println!("history-digest: {digest} (DIFFERS from the {recorded} recorded at {revision})");
            match second_run {
                SecondRun::SameDigest => println!(
                    "  a second run here gave the same digest, so this build is deterministic on this scenario: \
                     the history changed with the code since {revision}"
                ),
                SecondRun::OtherDigest(second) => {
                    println!("  NOT DETERMINISTIC: a second run here gave {}", second.digest());
                    if let Some(line) = result
                        .judged
                        .history()
                        .and_then(|first| first_difference(first, second))
                    {
                        println!("  {line}");
                    }
                }
                SecondRun::Panicked => println!("  NOT DETERMINISTIC: a second run here panicked"),
                SecondRun::NotNeeded => {}
            }
        }
        (Some(digest), None) => println!("history-digest: {digest} (no digest recorded)"),
        (None, _) => println!("history-digest: none (the world panicked)"),
    }
}

#[derive(clap::Args, Debug)]
pub struct ShrinkArgs {
    /// A seed file or a bare scenario JSON file.
    pub file: PathBuf,
    /// Where to write the shrunk seed file (default: next to the input, `<stem>.shrunk.json`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// World seed for a bare scenario file (default 0; seed files carry their own, and it is
    /// ignored for them).
    #[arg(long)]
    pub seed: Option<u64>,
    /// World runs to spend.
    #[arg(long, default_value_t = super::SHRINK_ATTEMPTS_DEFAULT)]
    pub attempts: usize,
}

/// `herald-sim shrink`: shrink a failing scenario (hand-written, or an older seed) further.
///
/// Each world run has the wall-time budget `replay` gives one ([`seed_replay_wall_budget`]): a
/// run that outlives it (the file's first run, a candidate, or the shrunk scenario's re-run)
/// ends the command as `verdict: HANG` (exit 1), with nothing written.
pub fn shrink_command(args: ShrinkArgs) -> Result<ExitCode, String> {
    // A seed file shrinks under its own world seed (as `run --scenario` runs it).
    let base = match load_scenario_file(&args.file)? {
        ScenarioFile::Seed(file) => {
            if let Some(seed) = args.seed.filter(|&seed| seed != file.seed) {
                eprintln!(
                    "warning: --seed {seed} ignored: {} is a seed file, shrunk under its own world seed {}",
                    args.file.display(),
                    file.seed
                );
            }
            *file
        }
        ScenarioFile::Bare(scenario) => bare_seed_file("scenario".into(), args.seed.unwrap_or(0), *scenario),
    };
    let budget = seed_replay_wall_budget()?;
    let make_server = Arc::new(|| Rc::new(RealServer) as Rc<dyn ServerUnderTest>);
    let outcome = shrink_seed_file_within_wall_budget(&base, make_server, args.attempts, budget, &mut |failure| {
        println!(
            "{} fails {} with {} steps; shrinking (up to {} runs)...",
            args.file.display(),
            failure.key,
            base.scenario.steps.len(),
            args.attempts
        )
    });
    let (file, shrunk, failure, notes) = match outcome {
        ShrinkOutcome::Passes => {
            println!(
                "{}: every invariant holds (world seed {}); nothing to shrink",
                args.file.display(),
                base.seed
            );
            return Ok(ExitCode::SUCCESS);
        }
        ShrinkOutcome::NotReproduced {
            key,
            shrunk,
            rerun_gave,
        } => {
            println!(
                "NOT REPRODUCIBLE: the shrunk scenario ({} steps) failed {key} while shrinking, but its re-run \
                 with the same world seed {} did not fail it ({rerun_gave}): the simulation is not deterministic (a bug of its \
                 own); nothing written",
                shrunk.steps_after, base.seed
            );
            return Ok(ExitCode::from(1));
        }
        ShrinkOutcome::Interrupted {
            run,
            scenario,
            runs,
            why,
        } => {
            let what = format!(
                "{run} ({} steps, world seed {}, after {runs} world run(s))",
                scenario.steps.len(),
                base.seed
            );
            match why {
                ReplayInterrupted::CannotSpawn(error) => return Err(format!("cannot start a world run: {error}")),
                ReplayInterrupted::Hang => {
                    println!("{}; nothing written", hang_verdict(Some(&args.file), &what, budget))
                }
                ReplayInterrupted::Panic(message) => println!(
                    "verdict: FAILED ({}): {what} panicked outside its world: {message}; nothing written",
                    args.file.display()
                ),
            }
            return Ok(ExitCode::from(1));
        }
        ShrinkOutcome::Shrunk {
            file,
            shrunk,
            failure,
            notes,
        } => (file, shrunk, failure, notes),
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .file
            .file_stem()
            .map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
        args.file.with_file_name(format!("{stem}.shrunk.json"))
    });
    write_atomically(&out, &file.to_json())?;
    println!(
        "shrunk {} → {} steps in {} runs; {}: {}",
        shrunk.steps_before, shrunk.steps_after, shrunk.attempts, failure.key, failure.explanation
    );
    for note in notes {
        println!("{note}");
    }
    println!("wrote {}", out.display());
    println!(
        "reproduce with: cargo run --release -p herald-sim -- replay {}",
        out.display()
    );
    Ok(ExitCode::from(1))
}

/// What [`shrink_seed_file`] made of a file.
pub enum ShrinkOutcome {
    /// Every invariant holds: nothing to shrink.
    Passes,
    /// The shrunk scenario did not fail `key` again when re-run with the same world seed: the
    /// simulation is not deterministic, and a file would replay to a pass and guard nothing.
    NotReproduced {
        key: FailureKey,
        shrunk: Shrunk,
        /// What the re-run gave instead ([`super::case::Judged::outcome`]).
        rerun_gave: String,
    },
    /// The shrunk file, with what changed besides its scenario (one line each).
    Shrunk {
        file: Box<SeedFile>,
        shrunk: Shrunk,
        failure: CaseFailure,
        notes: Vec<String>,
    },
    /// A world run gave no result ([`shrink_seed_file_within_wall_budget`] only): it outlived the
    /// wall-time budget (`why` is [`ReplayInterrupted::Hang`]), or its thread panicked outside
    /// the world or could not start. `run` says which run ([`RUN_FIRST`], [`RUN_CANDIDATE`],
    /// [`RUN_SHRUNK`]), `scenario` what it ran, `runs` the world runs started so far.
    Interrupted {
        run: &'static str,
        scenario: Box<Scenario>,
        runs: usize,
        why: ReplayInterrupted,
    },
}

/// The runs of a shrink, as [`ShrinkOutcome::Interrupted`] names them.
pub const RUN_FIRST: &str = "the file's first run";
pub const RUN_CANDIDATE: &str = "a shrink candidate";
pub const RUN_SHRUNK: &str = "the re-run of the shrunk scenario";

/// Shrinks `base` against `server`: toward the invariant its `expect` names when that fails,
/// else its first failure (a crash keeps its fingerprint: see [`CaseFailure::same_as`]).
/// `on_start` gets that failure before shrinking begins. Every world runs on the calling thread,
/// with no wall-time budget; [`shrink_seed_file_within_wall_budget`] has one.
///
/// The shrunk file drops `base`'s expectations, which name steps by index (and clients) of the
/// unshrunk scenario, and its `expect` follows the shrunk run: `fail` only when `base` expected
/// that very invariant to fail and it still does, else `pass` (replays fail until it is fixed).
pub fn shrink_seed_file(
    base: &SeedFile,
    server: &Rc<dyn ServerUnderTest>,
    attempts: usize,
    on_start: &mut dyn FnMut(&CaseFailure),
) -> ShrinkOutcome {
    shrink_seed_file_with(base, attempts, on_start, &mut |scenario| {
        Ok(run_and_judge(scenario, base.seed, server.clone(), false))
    })
}

/// [`shrink_seed_file`], each world run on a thread of its own against a server from
/// `make_server`, within `budget` of wall time (as `replay` runs one): a run that outlives it
/// ends the shrink as [`ShrinkOutcome::Interrupted`], its thread abandoned, still running.
pub fn shrink_seed_file_within_wall_budget(
    base: &SeedFile,
    make_server: Arc<dyn Fn() -> Rc<dyn ServerUnderTest> + Send + Sync>,
    attempts: usize,
    budget: Duration,
    on_start: &mut dyn FnMut(&CaseFailure),
) -> ShrinkOutcome {
    shrink_seed_file_with(base, attempts, on_start, &mut |scenario| {
        let (scenario, seed, make_server) = (scenario.clone(), base.seed, make_server.clone());
        run_within_wall_budget(format!("shrink-{}", base.name), budget, move || {
            run_and_judge(&scenario, seed, make_server(), false)
        })
    })
}

/// The shrink of [`shrink_seed_file`], with `run_world` running (and judging) each world under
/// `base`'s world seed.
fn shrink_seed_file_with(
    base: &SeedFile,
    attempts: usize,
    on_start: &mut dyn FnMut(&CaseFailure),
    run_world: &mut dyn FnMut(&Scenario) -> Result<Judged, ReplayInterrupted>,
) -> ShrinkOutcome {
    let mut runs = 0;
    let mut interrupted = None;
    let mut run = |scenario: &Scenario, which: &'static str| {
        runs += 1;
        run_world(scenario).map_err(|why| {
            interrupted = Some((which, scenario.clone(), why));
        })
    };
    let Ok(judged) = run(&base.scenario, RUN_FIRST) else {
        return interrupted_outcome(interrupted, runs);
    };
    let expected = match base.expect {
        Expect::Fail { invariant } => Some(FailureKey::Invariant(invariant)),
        Expect::Pass => None,
    };
    let target = expected.and_then(|key| judged.failure(key)).or(judged.primary());
    let Some(target) = target.cloned() else {
        return ShrinkOutcome::Passes;
    };
    on_start(&target);
    let mut stopped = false;
    let shrunk = shrink_while(&base.scenario, attempts, None, &mut |_| true, &mut |candidate| {
        // Once a run was interrupted, every later candidate is rejected without running.
        if stopped {
            return false;
        }
        match run(candidate, RUN_CANDIDATE) {
            Ok(judged) => judged.same_failure(&target).is_some(),
            Err(()) => {
                stopped = true;
                false
            }
        }
    });
    if stopped {
        return interrupted_outcome(interrupted, runs);
    }
    let Ok(rerun) = run(&shrunk.scenario, RUN_SHRUNK) else {
        return interrupted_outcome(interrupted, runs);
    };
    let Some(failure) = rerun.same_failure(&target).cloned() else {
        return ShrinkOutcome::NotReproduced {
            key: target.key,
            shrunk,
            rerun_gave: rerun.outcome(),
        };
    };
    let digest = rerun.history().map(History::digest);
    let mut file = base.clone();
    let mut notes = Vec::new();
    file.name = seed_name(failure.key, &shrunk.scenario);
    file.scenario = shrunk.scenario.clone();
    file.git_revision = git_revision().or(base.git_revision.clone());
    file.failure = None;
    file.crash = None;
    if !file.expectations.is_empty() {
        notes.push(format!(
            "dropped {} expectation(s): they name steps and clients of the unshrunk scenario, which \
             shrinking removed or renumbered; re-add any that still apply",
            file.expectations.len()
        ));
        file.expectations.clear();
    }
    file.expect = match (expected, failure.key) {
        (Some(key), FailureKey::Invariant(invariant)) if key == failure.key => {
            notes.push(format!(
                "expect: fail {invariant} (a known-open failure, as the input said)"
            ));
            Expect::Fail { invariant }
        }
        (Some(key), _) => {
            notes.push(format!(
                "expect: pass, not the input's fail {key}: that held, and replays now fail until {} is fixed",
                failure.key
            ));
            Expect::Pass
        }
        (None, _) => {
            notes.push(format!("expect: pass (replays fail until {} is fixed)", failure.key));
            Expect::Pass
        }
    };
    match failure.key {
        FailureKey::Invariant(invariant) => {
            file.failure = Some(RecordedFailure {
                invariant,
                explanation: failure.explanation.clone(),
                history_digest: digest.unwrap_or_default(),
                steps_before_shrink: shrunk.steps_before,
                steps_after_shrink: shrunk.steps_after,
            })
        }
        FailureKey::Crash(kind) => {
            file.crash = Some(RecordedCrash {
                kind,
                message: failure.explanation.clone(),
                history_digest: digest,
                steps_before_shrink: shrunk.steps_before,
                steps_after_shrink: shrunk.steps_after,
            })
        }
    }
    ShrinkOutcome::Shrunk {
        file: Box::new(file),
        shrunk,
        failure,
        notes,
    }
}

/// The [`ShrinkOutcome::Interrupted`] of the run `run_world` could not finish.
fn interrupted_outcome(interrupted: Option<(&'static str, Scenario, ReplayInterrupted)>, runs: usize) -> ShrinkOutcome {
    let (run, scenario, why) = interrupted.expect("an interrupted run was recorded");
    ShrinkOutcome::Interrupted {
        run,
        scenario: Box::new(scenario),
        runs,
        why,
    }
}

#[derive(clap::Args, Debug)]
pub struct CheckDeterminismArgs {
    /// Cases to run (each twice).
    #[arg(long, default_value_t = 20)]
    pub cases: u64,
    #[arg(long, default_value_t = 0)]
    pub seed_start: u64,
    #[arg(long, value_enum, default_value_t = SizeArg::Small)]
    pub size: SizeArg,
    #[arg(long)]
    pub swarm: bool,
    /// Run every case's whole quiet period (see `fuzz --whole-quiet-period`).
    #[arg(long)]
    pub whole_quiet_period: bool,
}

/// `herald-sim check-determinism`: every case run twice in this process must produce the same
/// history digest. On a mismatch, the first differing entry is printed.
pub fn check_determinism_command(args: CheckDeterminismArgs) -> Result<ExitCode, String> {
    let settings = GeneratorSettings {
        size: args.size.into(),
        swarm: args.swarm,
    };
    let mut mismatches = 0;
    for k in 0..args.cases {
        let seed = args.seed_start.wrapping_add(k);
        let scenario = super::generated_scenario(settings, seed, args.whole_quiet_period);
        let a = run_with(&scenario, seed, WorldOptions::default()).history;
        perturb_process_state(k + 1);
        let b = run_with(&scenario, seed, WorldOptions::default()).history;
        let (da, db) = (a.digest(), b.digest());
        if da == db {
            println!("seed {seed}: {da} ok");
            continue;
        }
        mismatches += 1;
        println!("seed {seed}: MISMATCH {da} vs {db}");
        if let Some(line) = first_difference(&a, &b) {
            println!("  {line}");
        }
    }
    println!(
        "{} cases, {} mismatches{}",
        args.cases,
        mismatches,
        if mismatches == 0 { "; deterministic" } else { "" }
    );
    Ok(if mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Shifts process-wide state that must never reach a history: tokio's task id counter (which
/// picks the shard tokio drops a task from when a runtime shuts down) and the thread's
/// `RandomState` keys. A second run after this must still give the same digest. (A crash once
/// reset connections in tokio's task order; this is how that was caught.)
pub fn perturb_process_state(round: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a plain runtime builds");
    runtime.block_on(async {
        for _ in 0..(round % 13) * 7 + 1 {
            let _ = tokio::spawn(async {}).await;
        }
    });
    for _ in 0..round % 5 {
        let _ = std::collections::hash_map::RandomState::new();
    }
}

/// The first entry where two histories differ, described.
pub fn first_difference(a: &History, b: &History) -> Option<String> {
    let n = a.entries.len().max(b.entries.len());
    (0..n).find_map(|i| match (a.entries.get(i), b.entries.get(i)) {
        (Some(x), Some(y)) if x == y => None,
        (x, y) => Some(format!(
            "first difference at entry {i}:\n    run 1: {}\n    run 2: {}",
            x.map_or("(none)".into(), |e| serde_json::to_string(e).unwrap_or_default()),
            y.map_or("(none)".into(), |e| serde_json::to_string(e).unwrap_or_default())
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::SecondRun;
    use herald_properties::history::History;

    #[test]
    fn a_second_replay_runs_only_when_the_digest_differs_and_tells_code_changes_from_nondeterminism() {
        let never = || -> Option<History> { panic!("no second run is needed") };
        let history = |seed| History {
            seed,
            ..History::default()
        };
        let (b, c) = (history(2), history(3));
        let (a_digest, b_digest) = (history(1).digest(), b.digest());
        let (a, b_digest) = (a_digest.as_str(), b_digest.as_str());
        assert_eq!(SecondRun::judge(Some(a), Some(a), never), SecondRun::NotNeeded);
        assert_eq!(SecondRun::judge(Some(a), None, never), SecondRun::NotNeeded);
        assert_eq!(SecondRun::judge(None, Some(a), never), SecondRun::NotNeeded);
        assert_eq!(
            SecondRun::judge(Some(b_digest), Some(a), || Some(b.clone())),
            SecondRun::SameDigest
        );
        assert_eq!(
            SecondRun::judge(Some(b_digest), Some(a), || Some(c.clone())),
            SecondRun::OtherDigest(c.clone())
        );
        assert_eq!(SecondRun::judge(Some(b_digest), Some(a), || None), SecondRun::Panicked);
    }
}
