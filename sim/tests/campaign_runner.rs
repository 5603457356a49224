//! What the campaign saves, and what `herald-sim shrink` writes: a failure that does not recur on
//! re-run is reported as a determinism bug and never saved, unshrunk failures are saved up to
//! the per-key budget, and a shrunk file's expectations and `expect` describe the shrunk run.

mod fixtures;

use fixtures::bugs;
use herald_properties::checkers::Invariant;
use herald_properties::expectations::Expectation;
use herald_properties::generators::{generate, GeneratorSettings, Size};
use herald_properties::seed_file::{CrashKind, Expect, SeedFile};
use herald_sim::campaign::case::run_and_judge;
use herald_sim::campaign::commands::{shrink_seed_file, ShrinkOutcome};
use herald_sim::campaign::seeds::{bare_seed_file, replay, seed_files_in, verdict};
use herald_sim::campaign::{fuzz, CampaignReport, FailureKey, FuzzOptions};
use herald_sim::server_under_test::{LiveServer, RealServer, ServerLife, ServerUnderTest};
use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;

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
