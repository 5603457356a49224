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
