//! The campaign loop: worker threads (one world at a time each) take case numbers from a shared
//! counter; the calling thread draws progress and watches for hangs.
//!
//! Hangs: a world that spins inside one turmoil step cannot be interrupted. The watchdog reports
//! such a run as a `hang` failure (seed file included) and abandons the worker: workers are
//! detached threads, so [`fuzz`] returns its report even while one is stuck. Everything a worker
//! touches after start-up is owned or shared through `Arc`. A hang seed is saved at once, not
//! shrunk or re-run (see `seeds` for what replaying one means).
//!
//! I/O errors: the seeds directory is checked before the first case, and the first seed file or
//! marker that cannot be written stops the campaign (cases in flight finish; what failed so far
//! is reported): a campaign that can save nothing would spend its hour for nothing.

use super::case::{run_and_judge, CaseFailure, FailureKey, Judged};
use super::dedup::shape;
use super::progress::{Reporter, Snapshot};
use super::report::{Aggregate, CampaignReport, CoverageRow, FailureGroup, ReportSettings, NOT_REPRODUCED, NOT_SHRUNK};
use super::seeds::{
    bare_seed_file, check_writable, git_revision, in_progress_path, seed_name, write_atomically, write_seed_file,
};
use super::shrinking::shrink_failure;
use super::{case_seed, FuzzOptions, Limit, SHRINK_GRACE};
use crate::server_under_test::ServerUnderTest;
use herald_properties::coverage::{paths_reached, Path as CoveragePath};
use herald_properties::scenario::Scenario;
use herald_properties::seed_file::{CrashKind, GeneratorInfo, RecordedCrash, RecordedFailure, SeedFile};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often the calling thread refreshes progress and checks for hangs.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// I/O errors listed in a report; later ones are only counted. The first one stops the
/// campaign, so only cases and shrinks already in flight add more.
pub const IO_ERRORS_LISTED_MAX: usize = 16;

/// What one worker is doing, for the watchdog.
#[derive(Default)]
struct Slot {
    /// Since when the current world run has been running.
    busy_since: Option<Instant>,
    case_seed: u64,
    /// The scenario of the current run (a shrink candidate differs from the case's).
    scenario: Option<Scenario>,
    /// Set by the watchdog: the worker must not report anything any more.
    abandoned: bool,
}

struct Shared {
    options: FuzzOptions,
    started: Instant,
    deadline: Option<Instant>,
    next_case: AtomicU64,
    stop: AtomicBool,
    finished_workers: AtomicUsize,
    /// Set by the first I/O error: nothing more is written, nor shrunk (it could not be saved).
    io_failed: AtomicBool,
    /// I/O errors beyond [`IO_ERRORS_LISTED_MAX`].
    io_errors_unlisted: AtomicU64,
    aggregate: Mutex<Aggregate>,
    slots: Vec<Mutex<Slot>>,
    reporter: Reporter,
    git_revision: Option<String>,
}

/// Locks, ignoring poisoning: a worker that panicked while holding a lock has been reported, and
/// the counters it guards are still the best information there is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server factory handed to detached workers. See [`fuzz`] for why this is sound.
struct Factory(&'static (dyn Fn() -> Rc<dyn ServerUnderTest> + Sync));

/// Runs a campaign. Each worker thread calls `make_server` once, at its start, to build its own
/// server object (worlds are single-threaded and servers are `Rc`).
pub fn fuzz(options: &FuzzOptions, make_server: &(dyn Fn() -> Rc<dyn ServerUnderTest> + Sync)) -> CampaignReport {
    let options = options.clone();
    let jobs = options.jobs.max(1);
    let started = Instant::now();
    let deadline = match options.limit {
        Limit::Time(d) => Some(started + d),
        Limit::Cases(_) => None,
    };
    let shared = Arc::new(Shared {
        reporter: Reporter::new(options.progress),
        git_revision: options.seeds_dir.as_ref().and_then(|_| git_revision()),
        options,
        started,
        deadline,
        next_case: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        finished_workers: AtomicUsize::new(0),
        io_failed: AtomicBool::new(false),
        io_errors_unlisted: AtomicU64::new(0),
        aggregate: Mutex::new(Aggregate {
            coverage: CoveragePath::ALL.into_iter().map(|p| (p, (0, 0))).collect(),
            ..Aggregate::default()
        }),
        slots: (0..jobs).map(|_| Mutex::new(Slot::default())).collect(),
    });
    if let Some(dir) = &shared.options.seeds_dir {
        // Before any worker starts: they then see `stop` and run nothing.
        if let Err(error) = check_writable(dir) {
            io_error(&shared, error);
        }
    }

    // SAFETY: the reference is extended to 'static only for the workers' start-up: each worker
    // calls the factory once and then signals `ready` (also when the call panicked, and the
    // channel closes if the thread dies). Nothing between spawning and the loop below can panic
    // or return, and the loop waits for one signal (or disconnect) per worker, so no worker
    // touches `make_server` after this function returns or unwinds.
    let factory: &'static (dyn Fn() -> Rc<dyn ServerUnderTest> + Sync) = unsafe { std::mem::transmute(make_server) };
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut spawned = 0;
    let mut spawn_errors = Vec::new();
    for worker in 0..jobs {
        let for_worker = shared.clone();
        let ready = ready_tx.clone();
        let factory = Factory(factory);
        let spawn = std::thread::Builder::new()
            .name(format!("fuzz-worker-{worker}"))
            .spawn(move || worker_main(worker, for_worker, factory, ready));
        match spawn {
            Ok(_) => spawned += 1,
            Err(error) => {
                shared.finished_workers.fetch_add(1, Ordering::SeqCst);
                spawn_errors.push(format!("cannot spawn worker {worker}: {error}"));
            }
        }
    }
    drop(ready_tx);
    for _ in 0..spawned {
        if ready_rx.recv().is_err() {
            break;
        }
    }
    lock(&shared.aggregate).io_errors.extend(spawn_errors);

    let mut last_plain = Instant::now();
    while shared.finished_workers.load(Ordering::SeqCst) < jobs {
        std::thread::sleep(WATCH_INTERVAL);
        watch_for_hangs(&shared);
        let plain_due = last_plain.elapsed() >= shared.options.plain_progress_interval;
        if plain_due {
            last_plain = Instant::now();
        }
        shared.reporter.update(&snapshot(&shared), plain_due);
    }
    shared.reporter.finish();
    build_report(&shared)
}

/// The line `herald-sim fuzz` prints first, whatever its `--progress`: `SEED=<n>` reruns the
/// campaign. [`fuzz`] itself prints nothing of it, so quiet library callers (tests, benchmarks)
/// stay quiet.
pub fn banner(o: &FuzzOptions) -> String {
    format!(
        "SEED={} shard={}/{} jobs={} size={} swarm={}{} limit={} shrink={} seeds-dir={}",
        o.seed_start,
        o.shard.index,
        o.shard.count,
        o.jobs.max(1),
        o.size.as_str(),
        o.swarm,
        if o.whole_quiet_period {
            " whole-quiet-period"
        } else {
            ""
        },
        limit_text(o.limit),
        o.shrink,
        o.seeds_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "(none)".into())
    )
}

/// Records an I/O error (listing at most [`IO_ERRORS_LISTED_MAX`]) and stops the campaign.
fn io_error(shared: &Shared, error: String) {
    let first = !shared.io_failed.swap(true, Ordering::SeqCst);
    shared.stop.store(true, Ordering::SeqCst);
    if first {
        shared.reporter.println(&format!(
            "I/O ERROR: {error}; stopping the campaign (cases in flight finish)"
        ));
    }
    let mut aggregate = lock(&shared.aggregate);
    if aggregate.io_errors.len() < IO_ERRORS_LISTED_MAX {
        aggregate.io_errors.push(error);
    } else {
        shared.io_errors_unlisted.fetch_add(1, Ordering::SeqCst);
    }
}

fn limit_text(limit: Limit) -> String {
    match limit {
        Limit::Time(d) => format!("{}s", d.as_secs()),
        Limit::Cases(n) => format!("{n} cases"),
    }
}

fn snapshot(shared: &Shared) -> Snapshot {
    let aggregate = lock(&shared.aggregate);
    Snapshot {
        elapsed: shared.started.elapsed(),
        limit: limit_text(shared.options.limit),
        cases: aggregate.cases_run,
        failures: aggregate.cases_failed,
        simulated_ms: aggregate.simulated_ms,
        world_wall: aggregate.world_wall,
        coverage_reached: aggregate.coverage_reached(),
        coverage_total: CoveragePath::ALL.len(),
    }
}

fn worker_main(worker: usize, shared: Arc<Shared>, factory: Factory, ready: mpsc::Sender<()>) {
    // The factory is used here and never again (see the SAFETY note in `fuzz`).
    let Factory(make_server) = factory;
    let server = catch_unwind(AssertUnwindSafe(make_server));
    let _ = ready.send(());
    match server {
        Ok(server) => {
            let run = catch_unwind(AssertUnwindSafe(|| worker_loop(worker, &shared, &server)));
            if let Err(payload) = run {
                lock(&shared.aggregate).io_errors.push(format!(
                    "worker {worker} panicked outside a world: {}",
                    super::case::panic_message(payload.as_ref())
                ));
            }
        }
        Err(payload) => lock(&shared.aggregate).io_errors.push(format!(
            "worker {worker}: building the server panicked: {}",
            super::case::panic_message(payload.as_ref())
        )),
    }
    finish_worker(&shared, worker);
}

/// Counts a worker as finished exactly once: by itself, or by the watchdog that abandoned it.
fn finish_worker(shared: &Shared, worker: usize) {
    let mut slot = lock(&shared.slots[worker]);
    if !slot.abandoned {
        slot.abandoned = true;
        shared.finished_workers.fetch_add(1, Ordering::SeqCst);
    }
}

/// Marks the start / end of one world run for the watchdog; `false` when abandoned.
fn set_busy(shared: &Shared, worker: usize, busy: Option<(u64, &Scenario)>) -> bool {
    let mut slot = lock(&shared.slots[worker]);
    match busy {
        Some((seed, scenario)) => {
            slot.busy_since = Some(Instant::now());
            slot.case_seed = seed;
            slot.scenario = Some(scenario.clone());
        }
        None => {
            slot.busy_since = None;
            slot.scenario = None;
        }
    }
    !slot.abandoned
}

fn worker_loop(worker: usize, shared: &Shared, server: &Rc<dyn ServerUnderTest>) {
    let options = &shared.options;
    let marker = options.seeds_dir.as_ref().map(|dir| in_progress_path(dir, worker));
    loop {
        if shared.stop.load(Ordering::SeqCst) || shared.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let k = shared.next_case.fetch_add(1, Ordering::SeqCst);
        if let Limit::Cases(n) = options.limit {
            if k >= n {
                break;
            }
        }
        let seed = case_seed(options.seed_start, k, options.shard);
        let scenario = match catch_unwind(|| options.scenario(seed)) {
            Ok(scenario) => scenario,
            Err(payload) => {
                let failure = CaseFailure::crash(
                    CrashKind::Panic,
                    format!(
                        "the generator panicked: {}",
                        super::case::panic_message(payload.as_ref())
                    ),
                    Vec::new(),
                );
                // A failed case like any other (the campaign fails, `stop_after_failures`
                // counts it), announced with the command that regenerates it.
                count_case(shared, Duration::ZERO, 0, &BTreeMap::new(), Some(&failure));
                announce(shared, seed, &failure, None);
                record_unshrunk(shared, seed, 0, &failure, Vec::new());
                continue;
            }
        };
        persist_marker(shared, marker.as_deref(), seed, &scenario);
        if !set_busy(shared, worker, Some((seed, &scenario))) {
            return;
        }
        let started = Instant::now();
        let judged = run_and_judge(&scenario, seed, server.clone(), false);
        let world_wall = started.elapsed();
        if !set_busy(shared, worker, None) {
            return;
        }
        let reached = judged.history().map(paths_reached).unwrap_or_default();
        let primary = judged.primary().cloned();
        let simulated_ms = judged.history().and_then(|h| h.end_at_ms()).unwrap_or(0);
        count_case(shared, world_wall, simulated_ms, &reached, primary.as_ref());
        if let Some(primary) = primary {
            let also: Vec<FailureKey> = judged.failures.iter().skip(1).map(|f| f.key).collect();
            if !handle_failure(
                shared,
                worker,
                server,
                marker.as_deref(),
                seed,
                &scenario,
                &primary,
                also,
            ) {
                return;
            }
        }
        if let Some(marker) = &marker {
            let _ = std::fs::remove_file(marker);
        }
    }
    if let Some(marker) = &marker {
        let _ = std::fs::remove_file(marker);
    }
}

/// Adds one finished case to the aggregate: every case, passed or failed, and whatever failed
/// it (a world's invariant, a crash, or the generator itself), goes through here.
fn count_case(
    shared: &Shared,
    world_wall: Duration,
    simulated_ms: u64,
    reached: &BTreeMap<CoveragePath, u64>,
    failure: Option<&CaseFailure>,
) {
    let mut aggregate = lock(&shared.aggregate);
    aggregate.cases_run += 1;
    aggregate.simulated_ms += simulated_ms;
    aggregate.world_wall += world_wall;
    aggregate.add_coverage(reached);
    if let Some(failure) = failure {
        aggregate.count_failure(failure, shared.started.elapsed().as_millis() as u64);
        if shared
            .options
            .stop_after_failures
            .is_some_and(|n| aggregate.cases_failed >= n as u64)
        {
            shared.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// Writes the in-progress marker; nothing once an I/O error has stopped the campaign (a shrink
/// in flight would otherwise add one error per candidate).
fn persist_marker(shared: &Shared, marker: Option<&std::path::Path>, seed: u64, scenario: &Scenario) {
    let Some(marker) = marker else { return };
    if shared.io_failed.load(Ordering::SeqCst) {
        return;
    }
    let mut file = bare_seed_file("in-progress".into(), seed, scenario.clone());
    file.generator = Some(generator_info(&shared.options, seed));
    file.description = format!(
        "The case a fuzz worker was running when it stopped (removed after each case; a leftover \
         means the run hung or the process died): case seed {seed}."
    );
    if let Err(error) = write_atomically(marker, &file.to_json()) {
        io_error(shared, error);
    }
}

fn generator_info(options: &FuzzOptions, seed: u64) -> GeneratorInfo {
    GeneratorInfo {
        seed,
        size: options.size.as_str().to_string(),
        swarm: options.swarm,
        whole_quiet_period: options.whole_quiet_period,
    }
}

/// Records a failure that is not shrunk (shrinking off, budget spent, or nothing to shrink).
fn record_unshrunk(shared: &Shared, seed: u64, steps: usize, failure: &CaseFailure, also: Vec<FailureKey>) {
    let group = FailureGroup::new(failure, NOT_SHRUNK.into(), also, steps);
    lock(&shared.aggregate).add_to_group(group, seed);
}

/// Re-runs `scenario` under the case's world seed, marked busy for the watchdog. `None` when
/// abandoned.
fn rerun(
    shared: &Shared,
    worker: usize,
    server: &Rc<dyn ServerUnderTest>,
    seed: u64,
    scenario: &Scenario,
) -> Option<Judged> {
    if !set_busy(shared, worker, Some((seed, scenario))) {
        return None;
    }
    let judged = run_and_judge(scenario, seed, server.clone(), false);
    set_busy(shared, worker, None).then_some(judged)
}

/// Reproduces, shrinks (within budget), saves and groups one failing case. `false` when
/// abandoned.
///
/// The key's budget (`shrinks_per_key`) is spent only on failures that reproduced: the case is
/// re-run with the same world seed first, and one that does not fail the same way again is
/// reported as a determinism bug without touching the budget. Otherwise a few flaky failures
/// of a key would use up its budget and a later, genuinely reproducible failure of that key
/// would be left without a seed file. The budget still bounds the shrinking time, since only
/// reproduced failures are shrunk; a flood of non-reproducible failures needs no cap of its
/// own, as each costs one extra world run (no shrink), at most doubling the time of the cases
/// that produced them. Once the budget is spent, failures of the key are recorded without any
/// re-run, as before.
#[allow(clippy::too_many_arguments)]
fn handle_failure(
    shared: &Shared,
    worker: usize,
    server: &Rc<dyn ServerUnderTest>,
    marker: Option<&std::path::Path>,
    seed: u64,
    scenario: &Scenario,
    primary: &CaseFailure,
    also: Vec<FailureKey>,
) -> bool {
    let options = &shared.options;
    let budget_left = |aggregate: &Aggregate| {
        aggregate.shrinks_started.get(&primary.key).copied().unwrap_or(0) < options.shrinks_per_key
    };
    // Once an I/O error stopped the campaign, nothing found can be saved: counted and listed
    // with its `run` command, but not re-run or shrunk, so the campaign ends promptly.
    if !budget_left(&lock(&shared.aggregate)) || shared.io_failed.load(Ordering::SeqCst) {
        record_unshrunk(shared, seed, scenario.steps.len(), primary, also);
        return true;
    }
    // Reproduce before spending the budget. Without shrinking, this run is also the final one.
    let Some(reproduction) = rerun(shared, worker, server, seed, scenario) else {
        return false;
    };
    let Some(mut failure) = reproduction.failure(primary.key).cloned() else {
        record_not_reproduced(shared, seed, scenario, primary, &reproduction, also);
        return true;
    };
    let within_budget = {
        // Checked again: another worker may have spent the last of it meanwhile.
        let mut aggregate = lock(&shared.aggregate);
        let allowed = budget_left(&aggregate);
        if allowed {
            *aggregate.shrinks_started.entry(primary.key).or_default() += 1;
        }
        allowed
    };
    if !within_budget {
        record_unshrunk(shared, seed, scenario.steps.len(), primary, also);
        return true;
    }
    let mut final_scenario = scenario.clone();
    let mut steps_after = None;
    let mut judged = reproduction;
    // The shrunk scenario failed while shrinking but not on its re-run: (its steps, the re-run).
    let mut shrunk_not_reproduced = None;
    if options.shrink {
        let deadline = shared.deadline.map(|d| d + SHRINK_GRACE);
        let mut abandoned = false;
        // Once an I/O error has stopped the campaign nothing found can be saved: the remaining
        // candidates (up to `shrink_attempts`) are rejected without running.
        let mut before_run = |candidate: &Scenario| {
            persist_marker(shared, marker, seed, candidate);
            abandoned |= !set_busy(shared, worker, Some((seed, candidate)));
            !shared.io_failed.load(Ordering::SeqCst)
        };
        let shrunk = shrink_failure(
            scenario,
            seed,
            primary.key,
            server,
            options.shrink_attempts,
            deadline,
            &mut before_run,
        );
        if abandoned || !set_busy(shared, worker, None) {
            return false;
        }
        if shrunk.scenario == *scenario {
            // Nothing could be removed: the reproduction is the final run.
            steps_after = Some(shrunk.steps_after);
        } else {
            // Rerun the shrunk scenario once for its history digest and its own explanation.
            let Some(shrunk_run) = rerun(shared, worker, server, seed, &shrunk.scenario) else {
                return false;
            };
            match shrunk_run.failure(primary.key) {
                Some(shrunk_failure) => {
                    failure = shrunk_failure.clone();
                    steps_after = Some(shrunk.steps_after);
                    final_scenario = shrunk.scenario;
                    judged = shrunk_run;
                }
                // The shrunk scenario failed while shrinking but not on its re-run: the
                // simulation is not deterministic there. The case itself failed twice, so it is
                // saved unshrunk instead (the slot it took goes to a seed that reproduced), and
                // the determinism bug is counted below like any failure that did not recur.
                None => shrunk_not_reproduced = Some((shrunk.steps_after, shrunk_run.outcome())),
            }
        }
    }
    let digest = judged.history().map(|h| h.digest());
    let name = seed_name(primary.key, &final_scenario);
    let mut file = bare_seed_file(name, seed, final_scenario.clone());
    file.family = Some(failure.category);
    file.severity = Some(failure.severity);
    file.description = format!(
        "Found by `herald-sim fuzz` (case seed {seed}, size {}, swarm {}{}): {}",
        options.size.as_str(),
        options.swarm,
        if options.whole_quiet_period {
            ", whole quiet period"
        } else {
            ""
        },
        failure.explanation
    );
    file.generator = Some(generator_info(options, seed));
    file.git_revision = shared.git_revision.clone();
    match failure.key {
        FailureKey::Invariant(invariant) => {
            file.failure = Some(RecordedFailure {
                invariant,
                explanation: failure.explanation.clone(),
                history_digest: digest.clone().unwrap_or_default(),
                steps_before_shrink: scenario.steps.len(),
                steps_after_shrink: final_scenario.steps.len(),
            })
        }
        FailureKey::Crash(kind) => {
            file.crash = Some(RecordedCrash {
                kind,
                message: failure.explanation.clone(),
                history_digest: digest.clone(),
                steps_before_shrink: scenario.steps.len(),
                steps_after_shrink: final_scenario.steps.len(),
            })
        }
    }
    let group_shape = if steps_after.is_some() {
        shape(&final_scenario)
    } else {
        NOT_SHRUNK.into()
    };
    // A second failure with the same key and shrunk shape is the same bug: counted, not saved.
    // Unshrunk failures cannot be told apart, so each within the key's budget is saved.
    let known = steps_after.is_some()
        && lock(&shared.aggregate)
            .groups
            .contains_key(&(failure.key, group_shape.clone()));
    let seed_file = if known { None } else { save(shared, &file) };
    if !known {
        announce(shared, seed, &failure, seed_file.as_deref());
    }
    if let Some((steps, rerun_gave)) = shrunk_not_reproduced {
        record_shrunk_not_reproduced(
            shared,
            seed,
            primary,
            (scenario.steps.len(), steps),
            &rerun_gave,
            seed_file.as_deref(),
            also.clone(),
        );
    }
    let group = FailureGroup {
        seed_file,
        steps_after_shrink: steps_after,
        history_digest: digest,
        ..FailureGroup::new(&failure, group_shape, also, scenario.steps.len())
    };
    lock(&shared.aggregate).add_to_group(group, seed);
    true
}

/// A case whose failure reproduced, but whose shrunk scenario, which failed it while shrinking,
/// did not fail it on its re-run with the same world seed: the simulation is not deterministic
/// there. The case is saved unshrunk (by the caller); this records the determinism bug in a
/// [`NOT_REPRODUCED`] group of its own, so the summary, the report's `not_reproduced` and the
/// verdict count it (a line printed only by the reporter vanished with `--progress quiet`).
fn record_shrunk_not_reproduced(
    shared: &Shared,
    seed: u64,
    primary: &CaseFailure,
    (steps_before, steps_after): (usize, usize),
    rerun_gave: &str,
    saved: Option<&str>,
    also: Vec<FailureKey>,
) {
    let saved = match saved {
        Some(path) => format!(
            "the unshrunk case, which did fail again, is saved as {path} (`herald-sim shrink {path}` re-runs the \
             shrink and says whether its shrunk scenario reproduces)"
        ),
        None => "the unshrunk case did fail again".to_string(),
    };
    let explanation = format!(
        "the {steps_after}-step scenario shrunk from case seed {seed} ({steps_before} steps) failed {} while \
         shrinking, but its re-run with the same world seed did not fail it ({rerun_gave}); {saved}",
        primary.key
    );
    shared.reporter.println(&format!(
        "NOT REPRODUCIBLE {} case seed {seed}: {explanation}. The simulation is not deterministic (a bug of \
         its own).",
        primary.key
    ));
    let group = FailureGroup {
        explanation,
        steps_after_shrink: Some(steps_after),
        ..FailureGroup::new(primary, NOT_REPRODUCED.into(), also, steps_before)
    };
    lock(&shared.aggregate).add_to_group(group, seed);
}

/// A failing case that, re-run unshrunk with the same world seed, did not fail the same way: a
/// determinism bug. Its seed file would replay to a pass (or pass by chance) and guard nothing,
/// so none is written; the failure is announced, grouped apart and counted instead. It takes
/// nothing from the key's budget (see [`handle_failure`]).
fn record_not_reproduced(
    shared: &Shared,
    seed: u64,
    scenario: &Scenario,
    primary: &CaseFailure,
    rerun: &Judged,
    also: Vec<FailureKey>,
) {
    let explanation = format!(
        "failed {} ({}), but the re-run of its {}-step scenario with the same world seed did not fail it ({})",
        primary.key,
        primary.explanation,
        scenario.steps.len(),
        rerun.outcome()
    );
    let o = &shared.options;
    // Both commands regenerate this very case (unshrunk, as it was re-run): `check-determinism`
    // runs it twice and compares the histories.
    shared.reporter.println(&format!(
        "NOT REPRODUCIBLE {} case seed {seed}: {explanation}. The simulation is not deterministic \
         (a bug of its own); nothing saved.\n  check the case with: {}\n  rerun the case with: {}",
        primary.key,
        super::check_determinism_command(seed, o.size.as_str(), o.swarm, o.whole_quiet_period),
        super::run_command(seed, o.size.as_str(), o.swarm, o.whole_quiet_period)
    ));
    let group = FailureGroup {
        explanation,
        ..FailureGroup::new(primary, NOT_REPRODUCED.into(), also, scenario.steps.len())
    };
    lock(&shared.aggregate).add_to_group(group, seed);
}

fn save(shared: &Shared, file: &SeedFile) -> Option<String> {
    let dir = shared.options.seeds_dir.as_ref()?;
    match write_seed_file(dir, file) {
        Ok(path) => Some(path.display().to_string()),
        Err(error) => {
            io_error(shared, error);
            None
        }
    }
}

fn announce(shared: &Shared, seed: u64, failure: &CaseFailure, seed_file: Option<&str>) {
    let o = &shared.options;
    let reproduce = match seed_file {
        Some(path) => format!("cargo run --release -p herald-sim -- replay {path}"),
        None => super::run_command(seed, o.size.as_str(), o.swarm, o.whole_quiet_period),
    };
    shared.reporter.println(&format!(
        "FAILURE {} [{} / {}] case seed {seed}: {}\n  reproduce with: {reproduce}",
        failure.key,
        failure.severity.as_str(),
        failure.category.as_str(),
        failure.explanation
    ));
}

/// Reports and abandons every worker whose current world run exceeded the wall budget.
fn watch_for_hangs(shared: &Shared) {
    let budget = shared.options.case_wall_budget;
    for (worker, slot) in shared.slots.iter().enumerate() {
        let hung = {
            let mut slot = lock(slot);
            match slot.busy_since {
                Some(since) if !slot.abandoned && since.elapsed() > budget => {
                    slot.abandoned = true;
                    shared.finished_workers.fetch_add(1, Ordering::SeqCst);
                    Some((slot.case_seed, slot.scenario.take()))
                }
                _ => None,
            }
        };
        let Some((seed, scenario)) = hung else { continue };
        let failure = CaseFailure::crash(
            CrashKind::Hang,
            format!(
                "a world run exceeded the wall-time budget of {:.0}s (case seed {seed}); worker {worker} abandoned",
                budget.as_secs_f64()
            ),
            Vec::new(),
        );
        let mut seed_file = None;
        if let Some(scenario) = scenario {
            let mut file = bare_seed_file(seed_name(failure.key, &scenario), seed, scenario.clone());
            file.family = Some(failure.category);
            file.severity = Some(failure.severity);
            file.description = format!(
                "{}. A hang seed: the scenario that was running, saved at once (not shrunk, not re-run). \
                 Replaying it fails as `hang` while it still outlives the replay budget; once it ends, it \
                 is judged like any seed (fixed, or the campaign's machine was overloaded).",
                failure.explanation
            );
            file.generator = Some(generator_info(&shared.options, seed));
            file.git_revision = shared.git_revision.clone();
            file.crash = Some(RecordedCrash {
                kind: CrashKind::Hang,
                message: failure.explanation.clone(),
                history_digest: None,
                steps_before_shrink: scenario.steps.len(),
                steps_after_shrink: scenario.steps.len(),
            });
            seed_file = save(shared, &file);
            if seed_file.is_some() {
                if let Some(dir) = &shared.options.seeds_dir {
                    let _ = std::fs::remove_file(in_progress_path(dir, worker));
                }
            }
        }
        announce(shared, seed, &failure, seed_file.as_deref());
        let mut aggregate = lock(&shared.aggregate);
        aggregate.count_failure(&failure, shared.started.elapsed().as_millis() as u64);
        aggregate.add_to_group(
            FailureGroup {
                seed_file,
                ..FailureGroup::new(&failure, NOT_SHRUNK.into(), Vec::new(), 0)
            },
            seed,
        );
        drop(aggregate);
        if shared
            .options
            .stop_after_failures
            .is_some_and(|n| lock(&shared.aggregate).cases_failed >= n as u64)
        {
            shared.stop.store(true, Ordering::SeqCst);
        }
    }
}

fn build_report(shared: &Shared) -> CampaignReport {
    let aggregate = lock(&shared.aggregate);
    let o = &shared.options;
    let wall = shared.started.elapsed();
    let coverage: Vec<CoverageRow> = CoveragePath::ALL
        .into_iter()
        .map(|path| {
            let (cases, occurrences) = aggregate.coverage.get(&path).copied().unwrap_or((0, 0));
            CoverageRow {
                path,
                cases,
                occurrences,
            }
        })
        .collect();
    let not_reached = coverage.iter().filter(|r| r.cases == 0).map(|r| r.path).collect();
    let mut failures: Vec<FailureGroup> = aggregate.groups.values().cloned().collect();
    failures.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.key.cmp(&b.key))
            .then(a.shape.cmp(&b.shape))
    });
    CampaignReport {
        settings: ReportSettings {
            seed_start: o.seed_start,
            shard: format!("{}/{}", o.shard.index, o.shard.count),
            jobs: o.jobs.max(1),
            size: o.size.as_str().to_string(),
            swarm: o.swarm,
            whole_quiet_period: o.whole_quiet_period,
            limit: limit_text(o.limit),
            shrink: o.shrink,
            seeds_dir: o.seeds_dir.as_ref().map(|d| d.display().to_string()),
            git_revision: shared.git_revision.clone(),
        },
        cases_run: aggregate.cases_run,
        cases_failed: aggregate.cases_failed,
        wall_ms: wall.as_millis() as u64,
        cases_per_second: aggregate.cases_run as f64 / wall.as_secs_f64().max(1e-9),
        simulated_ms: aggregate.simulated_ms,
        world_wall_ms: aggregate.world_wall.as_millis() as u64,
        simulated_per_wall: aggregate.simulated_ms as f64 / 1000.0 / aggregate.world_wall.as_secs_f64().max(1e-9),
        time_to_first_failure_ms: aggregate.first_failure_ms,
        failures_by_key: aggregate.by_key.clone(),
        failures_by_category: aggregate.by_category.clone(),
        failures_by_severity: aggregate.by_severity.clone(),
        coverage,
        not_reached,
        failures,
        not_reproduced: aggregate
            .groups
            .values()
            .filter(|g| g.not_reproduced)
            .map(|g| g.count)
            .sum(),
        io_errors: {
            let mut errors = aggregate.io_errors.clone();
            let unlisted = shared.io_errors_unlisted.load(Ordering::SeqCst);
            if unlisted > 0 {
                errors.push(format!("{unlisted} further I/O error(s), not listed"));
            }
            errors
        },
    }
}
