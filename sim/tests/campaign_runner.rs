//! What the campaign saves, and what `herald-sim shrink` writes: a failure that does not recur on
//! re-run is reported as a determinism bug and never saved, unshrunk failures are saved up to
//! the per-key budget, and a shrunk file's expectations and `expect` describe the shrunk run.

mod fixtures;

use fixtures::bugs;
use herald_properties::checkers::Invariant;
use herald_properties::expectations::Expectation;
use herald_properties::generators::{generate, GeneratorSettings, Size};
use herald_properties::scenario::{Kind, Scenario, ScenarioConfig, Step, TimedStep, Via};
use herald_properties::seed_file::{CrashKind, Expect, SeedFile};
use herald_sim::campaign::case::run_and_judge;
use herald_sim::campaign::commands::{
    shrink_seed_file, shrink_seed_file_within_wall_budget, ShrinkOutcome, RUN_CANDIDATE, RUN_FIRST,
};
use herald_sim::campaign::seeds::{bare_seed_file, replay, seed_files_in, verdict, ReplayInterrupted};
use herald_sim::campaign::{fuzz, CampaignReport, FailureKey, FuzzOptions};
use herald_sim::cli::{run_on, RunArgs, SizeArg};
use herald_sim::server_under_test::{LiveServer, RealServer, ServerLife, ServerUnderTest};
use std::cell::Cell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-sim-runner-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny(cases: u64, dir: &std::path::Path) -> FuzzOptions {
    FuzzOptions {
        size: Size::Tiny,
        seed_start: 500,
        seeds_dir: Some(dir.to_path_buf()),
        ..FuzzOptions::cases(cases)
    }
}

fn summary(report: &CampaignReport) -> String {
    let mut out = Vec::new();
    report.print_summary(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Non-deterministic on purpose: its first world run panics as the server starts, every later
/// one runs the real server (which passes the tiny cases used here).
#[derive(Default)]
struct FailsFirstRun {
    runs: Cell<u32>,
}

impl ServerUnderTest for FailsFirstRun {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String> {
        if life.life == 0 {
            self.runs.set(self.runs.get() + 1);
            if self.runs.get() == 1 {
                panic!("fixture: only the first run fails");
            }
        }
        RealServer.start(life)
    }
}

fn fails_first_run() -> Rc<dyn ServerUnderTest> {
    Rc::new(FailsFirstRun::default())
}

/// Fails every run: panics inside the server host as it starts.
struct PanicsAtStart;

impl ServerUnderTest for PanicsAtStart {
    fn start(&self, _life: ServerLife) -> Result<LiveServer, String> {
        panic!("fixture: the server panics at start");
    }
}

#[test]
fn a_failure_that_does_not_recur_on_rerun_is_reported_as_nondeterminism_and_not_saved() {
    for shrink in [false, true] {
        let dir = temp_dir(&format!("nondeterministic-{shrink}"));
        let options = FuzzOptions {
            shrink,
            shrink_attempts: 5,
            ..tiny(1, &dir)
        };
        let report = fuzz(&options, &fails_first_run);
        assert_eq!((report.cases_run, report.cases_failed), (1, 1), "shrink {shrink}");
        assert_eq!(report.not_reproduced, 1, "shrink {shrink}: {:#?}", report.failures);
        assert!(report.failed());
        let group = &report.failures[0];
        assert!(group.not_reproduced, "{group:#?}");
        assert_eq!(group.key, FailureKey::Crash(CrashKind::HostFailure));
        assert!(
            group.explanation.contains("did not fail it (passed)"),
            "{}",
            group.explanation
        );
        assert_eq!(group.seed_file, None);
        // A file here would replay to a pass under `cargo test` and guard nothing.
        assert_eq!(seed_files_in(&dir).unwrap(), Vec::<PathBuf>::new(), "shrink {shrink}");
        let text = summary(&report);
        assert!(text.contains("NOT REPRODUCIBLE"), "{text}");
        assert!(
            text.contains("check-determinism --seed-start 500 --cases 1 --size tiny"),
            "{text}"
        );
        assert!(
            text.contains("verdict: FAILED (1 failure(s) not reproducible: a determinism bug)"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Non-deterministic, then broken: odd world runs panic as the server starts and even ones run
/// the real server, up to run `flaky_runs`; every later run panics. On one worker, each of the
/// first `flaky_runs / 2` failing cases passes its re-run; every case after them fails for good.
struct FlakyThenBroken {
    flaky_runs: u32,
    runs: Cell<u32>,
}

impl ServerUnderTest for FlakyThenBroken {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String> {
        if life.life == 0 {
            self.runs.set(self.runs.get() + 1);
            let run = self.runs.get();
            if run > self.flaky_runs || run % 2 == 1 {
                panic!("fixture: flaky run {run}");
            }
        }
        RealServer.start(life)
    }
}

#[test]
fn failures_that_do_not_recur_leave_the_key_budget_to_a_later_reproducible_one() {
    // Three non-reproducible host failures, as many as the key's budget, then a real one of
    // the same key: the real one must still be saved.
    for shrink in [false, true] {
        let dir = temp_dir(&format!("flaky-then-broken-{shrink}"));
        let options = FuzzOptions {
            shrink,
            shrink_attempts: 5,
            shrinks_per_key: 3,
            jobs: 1,
            ..tiny(4, &dir)
        };
        let report = fuzz(&options, &|| {
            Rc::new(FlakyThenBroken {
                flaky_runs: 6,
                runs: Cell::new(0),
            }) as Rc<dyn ServerUnderTest>
        });
        assert_eq!((report.cases_run, report.cases_failed), (4, 4), "shrink {shrink}");
        assert_eq!(report.not_reproduced, 3, "shrink {shrink}: {:#?}", report.failures);
        let key = FailureKey::Crash(CrashKind::HostFailure);
        let flaky: Vec<_> = report.failures.iter().filter(|g| g.not_reproduced).collect();
        assert_eq!(flaky.len(), 1, "shrink {shrink}: {:#?}", report.failures);
        assert_eq!(
            (flaky[0].key, flaky[0].count, flaky[0].seed_file.as_ref()),
            (key, 3, None)
        );
        let real: Vec<_> = report.failures.iter().filter(|g| !g.not_reproduced).collect();
        assert_eq!(real.len(), 1, "shrink {shrink}: {:#?}", report.failures);
        assert_eq!((real[0].key, real[0].count), (key, 1));
        let saved = seed_files_in(&dir).unwrap();
        assert_eq!(saved.len(), 1, "shrink {shrink}: {:#?}", report.failures);
        assert_eq!(real[0].seed_file, Some(saved[0].display().to_string()));
        assert_eq!(real[0].steps_after_shrink.is_some(), shrink, "{:#?}", real[0]);
        let text = summary(&report);
        assert!(text.contains("3 failing case(s) did not fail again"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Fails its first `fails` world runs (a panic as the server starts), then runs the real server.
struct FailsFirstRuns {
    fails: u32,
    runs: Cell<u32>,
}

impl ServerUnderTest for FailsFirstRuns {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String> {
        if life.life == 0 {
            self.runs.set(self.runs.get() + 1);
            if self.runs.get() <= self.fails {
                panic!("fixture: one of the first {} runs", self.fails);
            }
        }
        RealServer.start(life)
    }
}

#[test]
fn a_case_that_reproduced_is_saved_unshrunk_when_its_shrunk_scenario_does_not() {
    // Run 1 is the case, run 2 its reproduction, run 3 the shrinker's first candidate (kept);
    // every later run passes, the re-run of the shrunk scenario included.
    let dir = temp_dir("shrunk-not-reproduced");
    let options = FuzzOptions {
        shrink: true,
        shrink_attempts: 5,
        jobs: 1,
        ..tiny(1, &dir)
    };
    let report = fuzz(&options, &|| {
        Rc::new(FailsFirstRuns {
            fails: 3,
            runs: Cell::new(0),
        }) as Rc<dyn ServerUnderTest>
    });
    // A shrunk scenario that failed while shrinking but not on its re-run is nondeterminism:
    // it counts as not reproducible, beside the saved unshrunk case.
    assert_eq!(
        (report.cases_failed, report.not_reproduced),
        (1, 1),
        "{:#?}",
        report.failures
    );
    let group = report
        .failures
        .iter()
        .find(|g| g.seed_file.is_some())
        .expect("the unshrunk case is saved");
    assert_eq!(
        (group.shape.as_str(), group.steps_after_shrink),
        ("not shrunk", None),
        "{group:#?}"
    );
    let saved = seed_files_in(&dir).unwrap();
    assert_eq!(saved.len(), 1, "{:#?}", report.failures);
    let file = SeedFile::from_json(&std::fs::read_to_string(&saved[0]).unwrap()).unwrap();
    assert_eq!(file.scenario, options.scenario(500), "the unshrunk case is saved");
    // The determinism bug is reported as such (in the JSON report and the summary, which a
    // `--progress quiet` run prints too) and names the file that was saved instead.
    assert!(report.failed());
    assert_eq!(serde_json::to_value(&report).unwrap()["not_reproduced"], 1);
    let not_reproduced = report.failures.iter().find(|g| g.not_reproduced).unwrap();
    assert_eq!(not_reproduced.case_seeds, vec![500]);
    let saved_file = group.seed_file.as_deref().unwrap();
    assert!(
        not_reproduced.explanation.contains(saved_file),
        "{}",
        not_reproduced.explanation
    );
    let text = summary(&report);
    assert!(text.contains("NOT REPRODUCIBLE"), "{text}");
    assert!(text.contains("not reproducible: a determinism bug"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_shrinking_each_key_still_saves_up_to_its_budget() {
    let dir = temp_dir("no-shrink-budget");
    let options = FuzzOptions {
        shrink: false,
        shrinks_per_key: 3,
        ..tiny(5, &dir)
    };
    let report = fuzz(&options, &|| Rc::new(PanicsAtStart) as Rc<dyn ServerUnderTest>);
    assert_eq!(report.cases_failed, 5);
    assert_eq!(seed_files_in(&dir).unwrap().len(), 3, "{:#?}", report.failures);
    assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
    let group = &report.failures[0];
    assert_eq!((group.shape.as_str(), group.count), ("not shrunk", 5));
    let mut listed: Vec<PathBuf> = group
        .seed_file
        .iter()
        .chain(&group.more_seed_files)
        .map(PathBuf::from)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        seed_files_in(&dir).unwrap(),
        "the report names every saved file"
    );
    let text = summary(&report);
    assert!(
        text.contains("steps, not shrunk; reproduce with") && text.contains("also saved: "),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first tiny case on which `gap_on_every_resume` fails honest_gaps, as a seed file that
/// expects `expect` and carries an expectation naming step 0 and client 0.
fn gap_bug_file(expect: Expect) -> SeedFile {
    let settings = GeneratorSettings {
        size: Size::Tiny,
        swarm: false,
    };
    let seed = (0..40)
        .find(|&seed| {
            run_and_judge(&generate(settings, seed), seed, bugs::gap_on_every_resume(), false)
                .fails_with(FailureKey::Invariant(Invariant::HonestGaps))
        })
        .expect("gap_on_every_resume fails honest_gaps within 40 tiny cases");
    let mut file = bare_seed_file("gap".into(), seed, generate(settings, seed));
    file.expectations = vec![
        Expectation::ClosedWith { client: 0, code: 4009 },
        Expectation::HostileNoEvents { step: 0 },
    ];
    file.expect = expect;
    file
}

fn shrink(file: &SeedFile, server: Rc<dyn ServerUnderTest>) -> ShrinkOutcome {
    shrink_seed_file(file, &server, 60, &mut |_| {})
}

#[test]
fn a_shrunk_file_drops_expectations_and_expects_what_the_shrunk_run_gives() {
    let gaps = Invariant::HonestGaps;
    // A known-open failure stays one, on the shrunk scenario.
    let known = gap_bug_file(Expect::Fail { invariant: gaps });
    let ShrinkOutcome::Shrunk {
        file, notes, shrunk, ..
    } = shrink(&known, bugs::gap_on_every_resume())
    else {
        panic!("the gap bug reproduces");
    };
    assert!(shrunk.steps_after < shrunk.steps_before);
    assert_eq!(file.expectations, vec![], "indices of removed or renumbered steps");
    assert_eq!(file.expect, Expect::Fail { invariant: gaps });
    assert_eq!(file.failure.as_ref().unwrap().invariant, gaps);
    assert!(
        notes.iter().any(|n| n.starts_with("dropped 2 expectation(s)")),
        "{notes:?}"
    );
    let replayed = replay(&file, bugs::gap_on_every_resume(), false);
    verdict(&file, &replayed).expect("the shrunk file replays to its own expect");

    // An expected failure that no longer happens is not carried over: the file now fails.
    let stale = gap_bug_file(Expect::Fail {
        invariant: Invariant::Isolation,
    });
    let ShrinkOutcome::Shrunk { file, notes, .. } = shrink(&stale, bugs::gap_on_every_resume()) else {
        panic!("the gap bug reproduces");
    };
    assert_eq!(file.expect, Expect::Pass);
    assert!(
        notes.iter().any(|n| n.contains("not the input's fail isolation")),
        "{notes:?}"
    );
    let replayed = replay(&file, bugs::gap_on_every_resume(), false);
    assert!(verdict(&file, &replayed).is_err());

    // A regression file stays one.
    let ShrinkOutcome::Shrunk { file, .. } = shrink(&gap_bug_file(Expect::Pass), bugs::gap_on_every_resume()) else {
        panic!("the gap bug reproduces");
    };
    assert_eq!((file.expect, file.expectations.len()), (Expect::Pass, 0));
}

#[test]
fn shrink_writes_nothing_for_a_failure_that_does_not_recur() {
    let file = bare_seed_file(
        "flaky".into(),
        500,
        generate(
            GeneratorSettings {
                size: Size::Tiny,
                swarm: false,
            },
            500,
        ),
    );
    match shrink_seed_file(&file, &fails_first_run(), 5, &mut |_| {}) {
        ShrinkOutcome::NotReproduced { key, rerun_gave, .. } => {
            assert_eq!(key, FailureKey::Crash(CrashKind::HostFailure));
            assert_eq!(rerun_gave, "passed");
        }
        _ => panic!("a failure that does not recur must be reported as such"),
    }
}

/// Delegates to `inner`, except that world run number `block_at` (counting first lives over
/// every server of its maker, in `runs`) first blocks its thread for `BLOCK`, as a world spinning
/// inside one turmoil step would.
struct BlocksOnRun {
    inner: Rc<dyn ServerUnderTest>,
    runs: Arc<AtomicU32>,
    block_at: u32,
}

/// How long [`BlocksOnRun`] blocks: well over the campaign's hang budget in these tests.
const BLOCK: Duration = Duration::from_millis(3_000);

impl ServerUnderTest for BlocksOnRun {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String> {
        if life.life == 0 && self.runs.fetch_add(1, Ordering::SeqCst) + 1 == self.block_at {
            std::thread::sleep(BLOCK);
        }
        self.inner.start(life)
    }
}

/// The first tiny case seed on which `gap_on_every_resume` fails honest_gaps.
fn first_gap_case() -> u64 {
    let settings = GeneratorSettings {
        size: Size::Tiny,
        swarm: false,
    };
    (0..40)
        .find(|&seed| {
            run_and_judge(&generate(settings, seed), seed, bugs::gap_on_every_resume(), false)
                .fails_with(FailureKey::Invariant(Invariant::HonestGaps))
        })
        .expect("gap_on_every_resume fails honest_gaps within 40 tiny cases")
}

/// A case fails an invariant; then its reproduction (run 2) or its first shrink candidate (run
/// 3) outlives the hang budget. The invariant's failure is still reported, grouped and saved
/// (unshrunk, saying why), the hang seed holds the scenario that hung (a shrink candidate has no
/// generator block: `run --seed` would regenerate the case instead), the case counts once, and
/// the abandoned worker runs no further world once its blocked run returns.
#[test]
fn a_failure_whose_follow_up_run_hangs_is_still_saved() {
    let seed = first_gap_case();
    let gaps = FailureKey::Invariant(Invariant::HonestGaps);
    for block_at in [2, 3] {
        let dir = temp_dir(&format!("follow-up-hang-{block_at}"));
        let options = FuzzOptions {
            seed_start: seed,
            shrink: true,
            shrink_attempts: 20,
            case_wall_budget: Duration::from_millis(1_000),
            jobs: 1,
            ..tiny(1, &dir)
        };
        let runs = Arc::new(AtomicU32::new(0));
        let make = {
            let runs = runs.clone();
            move || {
                Rc::new(BlocksOnRun {
                    inner: bugs::gap_on_every_resume(),
                    runs: runs.clone(),
                    block_at,
                }) as Rc<dyn ServerUnderTest>
            }
        };
        let report = fuzz(&options, &make);
        let context = format!("block_at {block_at}: {:#?}", report.failures);
        assert_eq!((report.cases_run, report.cases_failed), (1, 1), "{context}");
        assert!(report.failed());

        let group = report
            .failures
            .iter()
            .find(|g| g.key == gaps)
            .unwrap_or_else(|| panic!("no group for honest_gaps: {context}"));
        let path = group.seed_file.as_deref().unwrap_or_else(|| panic!("{context}"));
        let file = SeedFile::from_json(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(file.scenario, options.scenario(seed), "saved unshrunk: {context}");
        assert_eq!(file.failure.as_ref().map(|f| f.invariant), Some(Invariant::HonestGaps));
        assert!(file.generator.is_some(), "{context}");
        assert!(file.description.contains("Not shrunk: "), "{}", file.description);
        assert!(group.explanation.contains("not shrunk"), "{}", group.explanation);

        let hang = report
            .failures
            .iter()
            .find(|g| g.key == FailureKey::Crash(CrashKind::Hang))
            .unwrap_or_else(|| panic!("no hang group: {context}"));
        let hang_file =
            SeedFile::from_json(&std::fs::read_to_string(hang.seed_file.as_deref().unwrap()).unwrap()).unwrap();
        assert_eq!(hang_file.crash.as_ref().map(|c| c.kind), Some(CrashKind::Hang));
        if block_at == 2 {
            // The reproduction runs the case itself: its generator block regenerates it.
            assert_eq!(hang_file.scenario, options.scenario(seed), "{context}");
            assert!(hang_file.generator.is_some(), "{context}");
        } else {
            assert_ne!(
                hang_file.scenario,
                options.scenario(seed),
                "a candidate hung: {context}"
            );
            assert_eq!(hang_file.generator, None, "{context}");
        }

        // Once the blocked run returns, the abandoned worker stops: no further candidate runs.
        std::thread::sleep(BLOCK + Duration::from_millis(1_000));
        assert_eq!(runs.load(Ordering::SeqCst), block_at, "{context}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Panics as it starts, at one of two places chosen by the life's seeded RNG: a function of the
/// world seed alone, so every scenario run under one seed crashes the same way.
struct PanicsTwoWays;

impl ServerUnderTest for PanicsTwoWays {
    fn start(&self, mut life: ServerLife) -> Result<LiveServer, String> {
        if life.rng.next_u64().is_multiple_of(2) {
            panic!("fixture: crash one");
        }
        panic!("fixture: crash two");
    }
}

/// Two different crashes that shrink to the same shape are two bugs: two groups, two files.
#[test]
fn different_crashes_with_one_shape_are_grouped_and_saved_apart() {
    let dir = temp_dir("two-crashes");
    let options = FuzzOptions {
        shrink: true,
        shrink_attempts: 30,
        shrinks_per_key: 8,
        jobs: 1,
        ..tiny(8, &dir)
    };
    let report = fuzz(&options, &|| Rc::new(PanicsTwoWays) as Rc<dyn ServerUnderTest>);
    assert_eq!(report.cases_failed, 8);
    let saved: Vec<SeedFile> = seed_files_in(&dir)
        .unwrap()
        .iter()
        .map(|p| SeedFile::from_json(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    for crash in ["fixture: crash one", "fixture: crash two"] {
        assert!(
            saved.iter().any(|f| f.crash.as_ref().unwrap().message.contains(crash)),
            "nothing saved for {crash:?}: {:#?}",
            report.failures
        );
        assert!(
            report
                .failures
                .iter()
                .any(|g| g.seed_file.is_some() && g.explanation.contains(crash)),
            "no group for {crash:?}: {:#?}",
            report.failures
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Panics when a server life after the first starts (a restart), and in the bridge on any
/// in-process publish: two host failures from two places.
struct PanicsOnRestartOrPublish;

struct PanickingPublisher;

impl herald_sim::server_under_test::Publish for PanickingPublisher {
    fn publish(
        &self,
        _user: &str,
        _run: &str,
        _kind: herald_core::protocol::EventKind,
        _data: &serde_json::Value,
        _idempotency_key: Option<&str>,
    ) -> Result<herald_core::hub::Published, herald_core::hub::PublishError> {
        panic!("fixture: crash in publish");
    }
}

impl ServerUnderTest for PanicsOnRestartOrPublish {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String> {
        if life.life > 0 {
            panic!("fixture: crash at restart");
        }
        let live = RealServer.start(life)?;
        Ok(LiveServer {
            publisher: Arc::new(PanickingPublisher),
            ..live
        })
    }
}

/// Shrinking a crash keeps its fingerprint: the restart crash does not drift to the publish one
/// (dropping the restart leaves a scenario that crashes too, but elsewhere).
#[test]
fn shrinking_a_crash_keeps_its_fingerprint() {
    let at = |at_ms, step| TimedStep { at_ms, step };
    let scenario = Scenario {
        config: ScenarioConfig {
            users: 1,
            client_hosts: 1,
            quiet_period_ms: 2_000,
            ..ScenarioConfig::default()
        },
        steps: vec![
            at(100, Step::RestartServer),
            at(
                200,
                Step::Publish {
                    user: 0,
                    run: 0,
                    kind: Kind::AgentStarted,
                    payload_bytes: 10,
                    via: Via::Notifier,
                },
            ),
        ],
    };
    let file = bare_seed_file("two-crashes".into(), 3, scenario);
    let server: Rc<dyn ServerUnderTest> = Rc::new(PanicsOnRestartOrPublish);
    let judged = run_and_judge(&file.scenario, file.seed, server.clone(), false);
    let first = judged.primary().expect("the restart crashes").explanation.clone();
    assert!(first.contains("fixture: crash at restart"), "{first}");
    let ShrinkOutcome::Shrunk { failure, file, .. } = shrink_seed_file(&file, &server, 60, &mut |_| {}) else {
        panic!("the crash reproduces");
    };
    assert!(
        failure.explanation.contains("fixture: crash at restart"),
        "drifted to another crash: {} ({:?})",
        failure.explanation,
        file.scenario.steps
    );
}

fn run_args(seed: u64) -> RunArgs {
    RunArgs {
        seed: Some(seed),
        scenario: None,
        size: SizeArg::Tiny,
        swarm: false,
        whole_quiet_period: false,
        trace: false,
        history: None,
        save_scenario: None,
    }
}

/// `run` judges as the campaign does: a run whose history holds a host failure (and no invariant
/// violation) fails, exit 1; a passing one exits 0.
#[test]
fn run_fails_on_a_host_failure() {
    let budget = Duration::from_secs(60);
    let code = run_on(
        run_args(500),
        || Rc::new(PanicsAtStart) as Rc<dyn ServerUnderTest>,
        budget,
    )
    .unwrap();
    assert_eq!(code, ExitCode::from(1));
    let code = run_on(run_args(500), || Rc::new(RealServer) as Rc<dyn ServerUnderTest>, budget).unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
}

/// `run` and `shrink` of a world that spins inside one turmoil step end at their wall budget.
#[test]
fn run_and_shrink_of_a_spinning_world_end_at_the_wall_budget() {
    let budget = Duration::from_millis(300);
    let (make, _release) = fixtures::spinning::spinning_servers();
    let make: Arc<dyn Fn() -> Rc<dyn ServerUnderTest> + Send + Sync> = Arc::new(make);

    let started = Instant::now();
    let for_run = make.clone();
    let code = run_on(run_args(500), move || for_run(), budget).unwrap();
    assert_eq!(code, ExitCode::from(1));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    let file = bare_seed_file("spins".into(), 500, tiny_scenario(500));
    let started = Instant::now();
    match shrink_seed_file_within_wall_budget(&file, make, 20, budget, &mut |_| {}) {
        ShrinkOutcome::Interrupted {
            run,
            runs,
            why,
            scenario,
        } => {
            assert_eq!((run, runs, why), (RUN_FIRST, 1, ReplayInterrupted::Hang));
            assert_eq!(*scenario, file.scenario);
        }
        _ => panic!("a spinning world must end the shrink as a hang"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// A shrink candidate that outlives the budget ends the shrink too, naming the candidate.
#[test]
fn a_shrink_candidate_that_hangs_ends_the_shrink() {
    let runs = Arc::new(AtomicU32::new(0));
    let make: Arc<dyn Fn() -> Rc<dyn ServerUnderTest> + Send + Sync> = {
        let runs = runs.clone();
        Arc::new(move || {
            Rc::new(BlocksOnRun {
                inner: Rc::new(PanicsAtStart),
                runs: runs.clone(),
                block_at: 2,
            }) as Rc<dyn ServerUnderTest>
        })
    };
    let file = bare_seed_file("blocks".into(), 500, tiny_scenario(500));
    let started = Instant::now();
    match shrink_seed_file_within_wall_budget(&file, make, 20, Duration::from_millis(1_000), &mut |_| {}) {
        ShrinkOutcome::Interrupted {
            run,
            runs,
            why,
            scenario,
        } => {
            assert_eq!((run, runs, why), (RUN_CANDIDATE, 2, ReplayInterrupted::Hang));
            assert_ne!(*scenario, file.scenario);
        }
        _ => panic!("a candidate that hangs must end the shrink"),
    }
    assert!(started.elapsed() < BLOCK, "{:?}", started.elapsed());
}

fn tiny_scenario(seed: u64) -> Scenario {
    generate(
        GeneratorSettings {
            size: Size::Tiny,
            swarm: false,
        },
        seed,
    )
}
