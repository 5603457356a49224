//! `cargo test` replays every saved fuzz failure in `seeds/*.json` (the catalogue in
//! `seeds/catalogue/` has its own test) and fails, naming the file and the invariant, when one
//! no longer reaches the verdict its `expect` field asks for. A seed whose bug was fixed stays as
//! a regression test; `"expect": {"verdict": "fail", "invariant": ...}` documents an open one.

use herald_properties::checkers::Invariant;
use herald_properties::expectations::Expectation;
use herald_properties::scenario::{Kind, Scenario, ScenarioConfig, Step, TimedStep, Via};
use herald_properties::seed_file::Expect;
use herald_sim::campaign::seeds::{bare_seed_file, replay_dir, SeedProblem};
use herald_sim::server_under_test::{RealServer, ServerUnderTest};
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn real() -> Rc<dyn ServerUnderTest> {
    Rc::new(RealServer)
}

fn describe(problems: &[SeedProblem]) -> String {
    problems
        .iter()
        .map(|p| {
            format!(
                "{} [{}]:\n  {}",
                p.path.display(),
                p.keys.join(", "),
                p.message.replace('\n', "\n  ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_saved_seed_replays_to_its_expected_verdict() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds");
    let (count, problems) = replay_dir(&dir, &real).expect("seeds/ is readable");
    assert!(
        problems.is_empty(),
        "{} of {count} seed files in seeds/ do not replay to their expected verdict \
         (reproduce with `cargo run --release -p herald-sim -- replay <file>`):\n{}",
        problems.len(),
        describe(&problems)
    );
    eprintln!("{count} seed files in seeds/ replayed");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-sim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two users, one tab each, a few publishes: passes on the real core.
fn small_scenario() -> Scenario {
    let at = |at_ms, step| TimedStep { at_ms, step };
    Scenario {
        config: ScenarioConfig {
            quiet_period_ms: 8_000,
            ..ScenarioConfig::default()
        },
        steps: vec![
            at(
                100,
                Step::Connect {
                    client: 0,
                    user: 0,
                    host: 0,
                    token_ttl_ms: None,
                },
            ),
            at(
                100,
                Step::Connect {
                    client: 1,
                    user: 1,
                    host: 1,
                    token_ttl_ms: None,
                },
            ),
            at(
                500,
                Step::Burst {
                    user: 0,
                    run: 0,
                    count: 3,
                    payload_bytes: 16,
                    via: Via::Notifier,
                },
            ),
            at(
                600,
                Step::Publish {
                    user: 1,
                    run: 0,
                    kind: Kind::AgentStarted,
                    payload_bytes: 16,
                    via: Via::Http {
                        idempotency_key: true,
                        retries: 1,
                    },
                },
            ),
        ],
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The replay logic must fail on a seed that fails — naming the file and what failed — and must
/// skip what is not a fuzz seed (catalogue subdirectory, in-progress markers).
#[test]
fn the_replay_check_fails_on_failing_seed_files_and_names_them() {
    let dir = temp_dir("seeds-replay");
    let passing = bare_seed_file("passing".into(), 3, small_scenario());
    write(&dir, "passing.json", &passing.to_json());

    // Fails an expectation: nobody is ever closed with 4001 in this scenario.
    let mut unmet = bare_seed_file("unmet".into(), 3, small_scenario());
    unmet.expectations = vec![Expectation::ClosedWith { client: 0, code: 4001 }];
    let unmet_path = write(&dir, "unmet.json", &unmet.to_json());

    // Documents a known-open isolation bug that the real core does not have: the verdict
    // "expected isolation to fail" is wrong now, and the check must say so.
    let mut fixed = bare_seed_file("isolation-fixed".into(), 3, small_scenario());
    fixed.expect = Expect::Fail {
        invariant: Invariant::Isolation,
    };
    let fixed_path = write(&dir, "isolation-fixed.json", &fixed.to_json());

    let broken_path = write(&dir, "broken.json", "{ not json");

    // Not fuzz seeds: skipped.
    std::fs::create_dir_all(dir.join("catalogue/family")).unwrap();
    write(&dir.join("catalogue/family"), "x.json", &unmet.to_json());
    write(&dir, ".in-progress-0.json", &unmet.to_json());

    let (count, problems) = replay_dir(&dir, &real).unwrap();
    assert_eq!(
        count, 4,
        "passing, unmet, isolation-fixed and broken are the seed files"
    );
    let mut named: Vec<&PathBuf> = problems.iter().map(|p| &p.path).collect();
    named.sort();
    let mut expected = vec![&broken_path, &fixed_path, &unmet_path];
    expected.sort();
    assert_eq!(named, expected, "{}", describe(&problems));

    let find = |path: &PathBuf| problems.iter().find(|p| &p.path == path).unwrap();
    assert!(find(&unmet_path).keys.contains(&"expectations".to_string()));
    assert!(
        find(&unmet_path).message.contains("expectation unmet"),
        "{}",
        describe(&problems)
    );
    assert!(find(&unmet_path).message.contains("4001"), "{}", describe(&problems));
    assert!(find(&fixed_path).keys.contains(&"expected-fail:isolation".to_string()));
    assert!(find(&fixed_path)
        .message
        .contains("expected invariant isolation to fail"));
    assert!(find(&broken_path).message.contains("not JSON"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_seeds_directory_has_no_seeds() {
    let (count, problems) = replay_dir(Path::new("/nonexistent/herald/seeds"), &real).unwrap();
    assert_eq!((count, problems.len()), (0, 0));
}
