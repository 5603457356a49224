//! The campaign loop: worker threads (one world at a time each) take case numbers from a shared
//! counter; the calling thread draws progress and watches for hangs.
//!
//! Hangs: a world that spins inside one turmoil step cannot be interrupted. The watchdog reports
//! such a run as a `hang` failure (seed file included) and abandons the worker: workers are
//! detached threads, so [`fuzz`] returns its report even while one is stuck, and an abandoned
//! worker whose run does return starts no further world. Everything a worker touches after
//! start-up is owned or shared through `Arc`. A hang seed holds the scenario that hung, saved at
//! once, not shrunk or re-run (see `seeds` for what replaying one means).
//!
//! A hang of a follow-up run (the reproduction of a failing case, a shrink candidate, or the
//! re-run of its shrunk scenario) loses nothing: the watchdog also records and saves the failure
//! being followed up, unshrunk and saying why. The case was counted (run and failed) with that
//! failure; the hang is listed as a group of its own but not counted as a second failed case.
//!
//! I/O errors: the seeds directory is checked before the first case, and the first seed file or
//! marker that cannot be written stops the campaign (cases in flight finish; what failed so far
//! is reported): a campaign that can save nothing would spend its hour for nothing.

use super::case::{run_and_judge, CaseFailure, FailureKey, Judged};
use super::dedup::shape;
use super::progress::{Reporter, Snapshot};
use super::report::{
    Aggregate, CampaignReport, CoverageRow, FailureGroup, ReportSettings, CASE_SEEDS_LISTED_MAX, NOT_REPRODUCED,
    NOT_SHRUNK,
};
use super::seeds::{
    bare_seed_file, check_writable, git_revision, in_progress_path, seed_name, write_atomically, write_seed_file,
};
use super::shrinking::shrink_failure_like;
use super::{case_seed, FuzzOptions, Limit, SHRINK_GRACE};
use crate::server_under_test::ServerUnderTest;
use herald_properties::coverage::{paths_reached, Path as CoveragePath};
use herald_properties::history::History;
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
    /// Which run of the case it is (`RUN_*`).
    run: &'static str,
    /// The failure the worker is reproducing, shrinking and saving, while it does: if one of
    /// those follow-up runs hangs, the watchdog records and saves it.
    pending: Option<Pending>,
    /// Set by the watchdog: the worker must not report anything, nor run any world, any more.
    abandoned: bool,
}

/// A failing case being followed up (see [`Slot::pending`]).
struct Pending {
    /// The case's own (generated) scenario.
    scenario: Scenario,
    primary: CaseFailure,
    also: Vec<FailureKey>,
    /// The history of the case's first run (`None` if its world panicked). Hashed only if a
    /// follow-up run hangs and the failure is saved unshrunk ([`save_after_follow_up_hang`]):
    /// otherwise what is saved records the digest of a later run ([`follow_up`]), or none, so
    /// hashing every failing case's first run up front would be wasted.
    history: Option<History>,
}

/// The runs of one case, as a hang report names them.
const RUN_CASE: &str = "the case's run";
const RUN_REPRODUCTION: &str = "the reproduction";
use super::commands::{RUN_CANDIDATE, RUN_SHRUNK};

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

/// Writes the in-progress marker and marks the start of one world run (`run`, one of `RUN_*`)
/// for the watchdog; `false`, with nothing written, once the worker is abandoned. Under the
/// slot's lock, so an abandoned worker never writes a marker after the watchdog removed it.
fn begin_run(
    shared: &Shared,
    worker: usize,
    marker: Option<&std::path::Path>,
    seed: u64,
    scenario: &Scenario,
    run: &'static str,
) -> bool {
    let mut slot = lock(&shared.slots[worker]);
    if slot.abandoned {
        return false;
    }
    persist_marker(shared, marker, seed, scenario);
    slot.busy_since = Some(Instant::now());
    slot.case_seed = seed;
    slot.scenario = Some(scenario.clone());
    slot.run = run;
    true
}

/// Marks the end of a world run; `false` when the watchdog abandoned the worker meanwhile.
fn end_run(shared: &Shared, worker: usize) -> bool {
    let mut slot = lock(&shared.slots[worker]);
    slot.busy_since = None;
    slot.scenario = None;
    !slot.abandoned
}

fn worker_loop(worker: usize, shared: &Shared, server: &Rc<dyn ServerUnderTest>) {
    let options = &shared.options;
    let marker = options
        .seeds_dir
        .as_ref()
        .map(|dir| in_progress_path(dir, options.shard.index, worker));
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
                let message = super::case::panic_message(payload.as_ref());
                let failure = CaseFailure::crash(
                    CrashKind::Panic,
                    format!("the generator panicked: {message}"),
                    Vec::new(),
                )
                .fingerprinted("generator", &message);
                // A failed case like any other (the campaign fails, `stop_after_failures`
                // counts it), announced with the command that regenerates it.
                count_case(shared, Duration::ZERO, 0, &BTreeMap::new(), Some(&failure));
                announce(shared, seed, &failure, None, true);
                record_unshrunk(shared, seed, 0, &failure, Vec::new());
                continue;
            }
        };
        if !begin_run(shared, worker, marker.as_deref(), seed, &scenario, RUN_CASE) {
            return;
        }
        let started = Instant::now();
        let judged = run_and_judge(&scenario, seed, server.clone(), false);
        let world_wall = started.elapsed();
        if !end_run(shared, worker) {
            return;
        }
        let reached = judged.history().map(paths_reached).unwrap_or_default();
        let primary = judged.primary().cloned();
        let simulated_ms = judged.history().and_then(|h| h.end_at_ms()).unwrap_or(0);
        count_case(shared, world_wall, simulated_ms, &reached, primary.as_ref());
        if let Some(primary) = primary {
            let also: Vec<FailureKey> = judged.failures.iter().skip(1).map(|f| f.key).collect();
            let case = Pending {
                scenario,
                primary,
                also,
                history: judged.output.map(|output| output.history),
            };
            if !handle_failure(shared, worker, server, marker.as_deref(), seed, case) {
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

/// Re-runs `scenario` under the case's world seed (`run`, one of `RUN_*`), marked busy for the
/// watchdog. `None` when abandoned.
fn rerun(
    shared: &Shared,
    worker: usize,
    server: &Rc<dyn ServerUnderTest>,
    marker: Option<&std::path::Path>,
    (seed, scenario): (u64, &Scenario),
    run: &'static str,
) -> Option<Judged> {
    if !begin_run(shared, worker, marker, seed, scenario, run) {
        return None;
    }
    let judged = run_and_judge(scenario, seed, server.clone(), false);
    end_run(shared, worker).then_some(judged)
}

/// Reproduces, shrinks (within budget), saves and groups one failing case. `false` when
/// abandoned.
///
/// The key's budget (`shrinks_per_key`) is spent only on failures that reproduced: the case is
/// re-run with the same world seed first, and one that does not fail the same way again (the
/// same key and fingerprint) is reported as a determinism bug without touching the budget.
/// Otherwise a few flaky failures of a key would use up its budget and a later, genuinely
/// reproducible failure of that key would be left without a seed file. The budget still bounds
/// the shrinking time, since only reproduced failures are shrunk; a flood of non-reproducible
/// failures needs no cap of its own, as each costs one extra world run (no shrink), at most
/// doubling the time of the cases that produced them. Once the budget is spent, failures of the
/// key are counted and grouped (their case seeds listed) without any re-run, shrink or seed
/// file: a broken server fails every case, and following each up would stall the campaign.
///
/// While it follows the case up, the worker's slot holds it ([`Slot::pending`]): if one of
/// those runs hangs, the watchdog saves the failure instead ([`report_hang`]).
fn handle_failure(
    shared: &Shared,
    worker: usize,
    server: &Rc<dyn ServerUnderTest>,
    marker: Option<&std::path::Path>,
    seed: u64,
    case: Pending,
) -> bool {
    let key = case.primary.key;
    let budget_left = |aggregate: &Aggregate| {
        aggregate.shrinks_started.get(&key).copied().unwrap_or(0) < shared.options.shrinks_per_key
    };
    // Once an I/O error stopped the campaign, nothing found can be saved: counted and listed
    // with its `run` command, but not re-run or shrunk, so the campaign ends promptly.
    if !budget_left(&lock(&shared.aggregate)) || shared.io_failed.load(Ordering::SeqCst) {
        record_unshrunk(shared, seed, case.scenario.steps.len(), &case.primary, case.also);
        return true;
    }
    let (scenario, primary, also) = (case.scenario.clone(), case.primary.clone(), case.also.clone());
    lock(&shared.slots[worker]).pending = Some(case);
    let handled = follow_up(
        shared,
        worker,
        server,
        marker,
        (seed, &scenario),
        &primary,
        also,
        &budget_left,
    );
    // Already taken by the watchdog if it abandoned the worker.
    lock(&shared.slots[worker]).pending = None;
    handled
}

/// The part of [`handle_failure`] that runs worlds: reproduce, shrink, save, group.
#[allow(clippy::too_many_arguments)]
fn follow_up(
    shared: &Shared,
    worker: usize,
    server: &Rc<dyn ServerUnderTest>,
    marker: Option<&std::path::Path>,
    (seed, scenario): (u64, &Scenario),
    primary: &CaseFailure,
    also: Vec<FailureKey>,
    budget_left: &dyn Fn(&Aggregate) -> bool,
) -> bool {
    let options = &shared.options;
    // Reproduce before spending the budget. Without shrinking, this run is also the final one.
    let Some(reproduction) = rerun(shared, worker, server, marker, (seed, scenario), RUN_REPRODUCTION) else {
        return false;
    };
    let Some(mut failure) = reproduction.same_failure(primary).cloned() else {
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
        // Once an I/O error has stopped the campaign nothing found can be saved, and once the
        // watchdog has abandoned the worker nothing may run: the remaining candidates (up to
        // `shrink_attempts`) are rejected without running.
        let mut before_run = |candidate: &Scenario| {
            if abandoned || shared.io_failed.load(Ordering::SeqCst) {
                return false;
            }
            abandoned = !begin_run(shared, worker, marker, seed, candidate, RUN_CANDIDATE);
            // Writing this candidate's marker may have been the first I/O error.
            !abandoned && !shared.io_failed.load(Ordering::SeqCst)
        };
        let shrunk = shrink_failure_like(
            scenario,
            seed,
            &failure,
            server,
            options.shrink_attempts,
            deadline,
            &mut before_run,
        );
        if abandoned || !end_run(shared, worker) {
            return false;
        }
        if shrunk.scenario == *scenario {
            // Nothing could be removed: the reproduction is the final run.
            steps_after = Some(shrunk.steps_after);
        } else {
            // Rerun the shrunk scenario once for its history digest and its own explanation.
            let Some(shrunk_run) = rerun(shared, worker, server, marker, (seed, &shrunk.scenario), RUN_SHRUNK) else {
                return false;
            };
            match shrunk_run.same_failure(&failure) {
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
    let file = failure_file(
        shared,
        seed,
        (scenario, &final_scenario),
        &failure,
        digest.clone(),
        None,
    );
    let group_shape = if steps_after.is_some() {
        shape(&final_scenario)
    } else {
        NOT_SHRUNK.into()
    };
    let group = FailureGroup {
        steps_after_shrink: steps_after,
        history_digest: digest,
        ..FailureGroup::new(&failure, group_shape, also.clone(), scenario.steps.len())
    };
    // A second failure with the same key, fingerprint and shrunk shape is the same bug: counted,
    // not saved. Checked and reserved under one lock, so two workers that shrink one bug at the
    // same time do not both save it. Unshrunk failures cannot be told apart, so each within the
    // key's budget is saved.
    let known = steps_after.is_some() && !lock(&shared.aggregate).reserve_group(&group);
    let seed_file = if known { None } else { save(shared, &file) };
    if !known {
        announce(shared, seed, &failure, seed_file.as_deref(), true);
    }
    if let Some((steps, rerun_gave)) = shrunk_not_reproduced {
        record_shrunk_not_reproduced(
            shared,
            seed,
            primary,
            (scenario.steps.len(), steps),
            &rerun_gave,
            seed_file.as_deref(),
            also,
        );
    }
    lock(&shared.aggregate).add_to_group(FailureGroup { seed_file, ..group }, seed);
    true
}

/// The seed file of a failing case: `scenario` is the case's, `final_scenario` what is saved
/// (shrunk, or the case's own); `note`, if any, is added to its description.
fn failure_file(
    shared: &Shared,
    seed: u64,
    scenarios: (&Scenario, &Scenario),
    failure: &CaseFailure,
    digest: Option<String>,
    note: Option<&str>,
) -> SeedFile {
    let options = &shared.options;
    let mut file = recorded_failure_file(shared, seed, scenarios, failure, digest);
    file.description = format!(
        "Found by `herald-sim fuzz` (case seed {seed}, size {}, swarm {}{}): {}{}",
        options.size.as_str(),
        options.swarm,
        if options.whole_quiet_period {
            ", whole quiet period"
        } else {
            ""
        },
        failure.explanation,
        note.map(|n| format!(". {n}")).unwrap_or_default()
    );
    file.generator = Some(generator_info(options, seed));
    file
}

/// What every seed file saved for a failure records, a hang seed's too ([`report_hang`]): its
/// name, family, severity and revision, and the failure (`scenario` is the case's,
/// `final_scenario` what is saved). The description and the generator block are the caller's,
/// since a hang seed's differ from those of [`failure_file`].
fn recorded_failure_file(
    shared: &Shared,
    seed: u64,
    (scenario, final_scenario): (&Scenario, &Scenario),
    failure: &CaseFailure,
    digest: Option<String>,
) -> SeedFile {
    let mut file = bare_seed_file(seed_name(failure.key, final_scenario), seed, final_scenario.clone());
    file.family = Some(failure.category);
    file.severity = Some(failure.severity);
    file.git_revision = shared.git_revision.clone();
    match failure.key {
        FailureKey::Invariant(invariant) => {
            file.failure = Some(RecordedFailure {
                invariant,
                explanation: failure.explanation.clone(),
                history_digest: digest.unwrap_or_default(),
                steps_before_shrink: scenario.steps.len(),
                steps_after_shrink: final_scenario.steps.len(),
            })
        }
        FailureKey::Crash(kind) => {
            file.crash = Some(RecordedCrash {
                kind,
                message: failure.explanation.clone(),
                history_digest: digest,
                steps_before_shrink: scenario.steps.len(),
                steps_after_shrink: final_scenario.steps.len(),
            })
        }
    }
    file
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

/// Prints a failure and how to reproduce it: `replay` of its seed file, or `run` of its case
/// seed when none was saved and `run` regenerates the scenario (`regenerates`: false for a
/// shrink candidate).
fn announce(shared: &Shared, seed: u64, failure: &CaseFailure, seed_file: Option<&str>, regenerates: bool) {
    let o = &shared.options;
    let reproduce = match seed_file {
        Some(path) => format!("reproduce with: cargo run --release -p herald-sim -- replay {path}"),
        None if regenerates => format!(
            "reproduce with: {}",
            super::run_command(seed, o.size.as_str(), o.swarm, o.whole_quiet_period)
        ),
        None => format!(
            "not saved, and `run --seed {seed}` regenerates the case, not this scenario (derived from it while \
             shrinking)"
        ),
    };
    shared.reporter.println(&format!(
        "FAILURE {} [{} / {}] case seed {seed}: {}\n  {reproduce}",
        failure.key,
        failure.severity.as_str(),
        failure.category.as_str(),
        failure.explanation
    ));
}

/// A run the watchdog abandoned: what its worker's slot held.
struct Hung {
    worker: usize,
    seed: u64,
    scenario: Option<Scenario>,
    run: &'static str,
    pending: Option<Pending>,
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
                    Some(Hung {
                        worker,
                        seed: slot.case_seed,
                        scenario: slot.scenario.take(),
                        run: slot.run,
                        pending: slot.pending.take(),
                    })
                }
                _ => None,
            }
        };
        if let Some(hung) = hung {
            report_hang(shared, hung);
        }
    }
}

/// Saves the scenario that hung as a hang seed, and counts and groups the hang. The hang of a
/// case's own run is that case's failure (counted as run and failed); the hang of a follow-up
/// run is grouped only, and the failure it followed up is saved unshrunk
/// ([`save_after_follow_up_hang`]), since the worker that would have saved it is gone.
fn report_hang(shared: &Shared, hung: Hung) {
    let Hung {
        worker,
        seed,
        scenario,
        run,
        pending,
    } = hung;
    let budget = shared.options.case_wall_budget.as_secs_f64();
    let explanation = match &pending {
        None => format!(
            "a world run exceeded the wall-time budget of {budget:.0}s (case seed {seed}); worker {worker} abandoned"
        ),
        Some(case) => format!(
            "{run} of case seed {seed} (which had failed {}) exceeded the wall-time budget of {budget:.0}s; worker \
             {worker} abandoned",
            case.primary.label()
        ),
    };
    let failure = CaseFailure::crash(CrashKind::Hang, explanation, Vec::new());
    // The generator block regenerates the case's own scenario (its first run, its reproduction),
    // never a scenario derived from it while shrinking: such a seed gets none, so that nobody is
    // told to `run --seed` it.
    let regenerates = match (&scenario, &pending) {
        (Some(scenario), Some(case)) => *scenario == case.scenario,
        _ => true,
    };
    let steps = scenario.as_ref().map_or(0, |s| s.steps.len());
    let mut seed_file = None;
    if let Some(scenario) = scenario {
        // Not hashed: the run that hung left no history.
        let mut file = recorded_failure_file(shared, seed, (&scenario, &scenario), &failure, None);
        file.description = format!(
            "{}. A hang seed: the scenario that was running, saved at once (not shrunk, not re-run){}. \
             Replaying it fails as `hang` while it still outlives the replay budget; once it ends, it \
             is judged like any seed (fixed, or the campaign's machine was overloaded).",
            failure.explanation,
            if regenerates {
                ""
            } else {
                "; derived from the case while shrinking, so it has no generator block (`run --seed` \
                 regenerates the case, not this scenario)"
            }
        );
        file.generator = regenerates.then(|| generator_info(&shared.options, seed));
        seed_file = save(shared, &file);
        if seed_file.is_some() {
            if let Some(dir) = &shared.options.seeds_dir {
                let _ = std::fs::remove_file(in_progress_path(dir, shared.options.shard.index, worker));
            }
        }
    }
    announce(shared, seed, &failure, seed_file.as_deref(), regenerates);
    if pending.is_none() {
        // The case's own run: it counts as run, and failed.
        count_case(shared, Duration::ZERO, 0, &BTreeMap::new(), Some(&failure));
    }
    let group = FailureGroup {
        seed_file: seed_file.clone(),
        regenerates,
        ..FailureGroup::new(&failure, NOT_SHRUNK.into(), Vec::new(), steps)
    };
    lock(&shared.aggregate).add_to_group(group, seed);
    if let Some(case) = pending {
        save_after_follow_up_hang(shared, seed, case, run, seed_file.as_deref());
    }
}

/// Saves and groups the failure of a case whose follow-up `run` hung, unshrunk, saying so. (The
/// case was counted when its first run failed.)
fn save_after_follow_up_hang(shared: &Shared, seed: u64, case: Pending, run: &str, hang_file: Option<&str>) {
    let why = format!(
        "not shrunk: {run} of the case exceeded the hang budget{}",
        hang_file.map(|f| format!(" (saved as {f})")).unwrap_or_default()
    );
    let note = format!("N{}", &why[1..]);
    let digest = case.history.as_ref().map(|h| h.digest());
    let file = failure_file(
        shared,
        seed,
        (&case.scenario, &case.scenario),
        &case.primary,
        digest.clone(),
        Some(&note),
    );
    let seed_file = save(shared, &file);
    let failure = CaseFailure {
        explanation: format!("{} ({why})", case.primary.explanation),
        ..case.primary
    };
    announce(shared, seed, &failure, seed_file.as_deref(), true);
    let group = FailureGroup {
        seed_file,
        history_digest: digest,
        ..FailureGroup::new(&failure, NOT_SHRUNK.into(), case.also, case.scenario.steps.len())
    };
    lock(&shared.aggregate).add_to_group(group, seed);
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
    // A group reserved by a worker that was abandoned before it counted anything is left out.
    let mut failures: Vec<FailureGroup> = aggregate.groups.values().filter(|g| g.count > 0).cloned().collect();
    failures.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.key.cmp(&b.key))
            .then(a.fingerprint.cmp(&b.fingerprint))
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
        case_seeds_listed_max: CASE_SEEDS_LISTED_MAX,
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
