//! `cargo test` replays every saved fuzz failure in `seeds/*.json` (the catalogue in
//! `seeds/catalogue/` has its own test) and fails, naming the file and the invariant, when one
//! no longer reaches the verdict its `expect` field asks for. A seed whose bug was fixed stays as
//! a regression test; `"expect": {"verdict": "fail", "invariant": ...}` documents an open one.
//! Each file replays within a wall-time budget, so a world that spins forever fails as a `hang`
//! naming the file instead of hanging `cargo test`.

mod fixtures;

use fixtures::spinning::spinning_servers;
use herald_properties::checkers::{Category, Invariant};
use herald_properties::expectations::Expectation;
use herald_properties::scenario::{Kind, Scenario, ScenarioConfig, Step, TimedStep, Via};
use herald_properties::seed_file::Expect;
use herald_sim::campaign::seeds::{
    bare_seed_file, load_seed_file, replay_dir, repository_seeds_dir, seed_files_in, seed_replay_wall_budget,
    SeedProblem,
};
use herald_sim::server_under_test::{RealServer, ServerUnderTest};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The replay budget of the hang test and its near miss: far below the default, and still
/// more than ten times what the small scenario below takes to replay in a debug build.
const TINY_BUDGET: Duration = Duration::from_secs(2);

fn real() -> Rc<dyn ServerUnderTest> {
    Rc::new(RealServer)
}

fn budget() -> Duration {
    seed_replay_wall_budget().unwrap_or_else(|e| panic!("{e}"))
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
    let dir = repository_seeds_dir();
    let (count, problems) = replay_dir(&dir, real, budget()).expect("seeds/ is readable");
    assert!(count > 0, "no seed file found in {}", dir.display());
    assert!(
        problems.is_empty(),
        "{} of {count} seed files in seeds/ do not replay to their expected verdict \
         (reproduce with `cargo run --release -p herald-sim -- replay <file>`):\n{}",
        problems.len(),
        describe(&problems)
    );
    eprintln!("{count} seed files in seeds/ replayed");
}

/// A seed file is replayed only from `seeds/*.json` (above) or `seeds/catalogue/<family>/*.json`
/// (the catalogue test): one saved anywhere else would guard nothing, silently.
#[test]
fn every_seed_file_sits_where_a_test_replays_it() {
    let seeds = repository_seeds_dir();
    let catalogue = seeds.join("catalogue");
    let families: Vec<PathBuf> = Category::ALL.iter().map(|c| catalogue.join(c.as_str())).collect();
    let mut pending = vec![seeds.clone()];
    let mut misplaced = Vec::new();
    let mut found = 0;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let hidden = path.file_name().unwrap().to_string_lossy().starts_with('.');
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "json") && !hidden {
                found += 1;
                let parent = path.parent().unwrap().to_path_buf();
                if parent != seeds && !families.contains(&parent) {
                    misplaced.push(path.display().to_string());
                }
            }
        }
    }
    assert!(found > 0, "no seed file under {}", seeds.display());
    assert!(
        misplaced.is_empty(),
        "seed files no test replays (move them to seeds/ or seeds/catalogue/<family>/): {misplaced:?}"
    );
}

/// Every saved seed is exactly what `SeedFile::to_json` writes: a field the format does not
/// know (a misspelt `token_ttl_ms`, say) would be dropped on load and change what the seed
/// replays, so it shows up here as a difference.
#[test]
fn saved_seed_files_are_canonical() {
    let dir = repository_seeds_dir();
    let bless = std::env::var_os("HERALD_BLESS_SEEDS").is_some();
    let mut not_canonical = Vec::new();
    for path in seed_files_in(&dir).unwrap() {
        let text = std::fs::read_to_string(&path).unwrap();
        let canonical = load_seed_file(&path).unwrap().to_json();
        if canonical != text {
            if bless {
                std::fs::write(&path, canonical).unwrap();
            } else {
                not_canonical.push(path.display().to_string());
            }
        }
    }
    assert!(
        not_canonical.is_empty(),
        "not in canonical seed-file form (HERALD_BLESS_SEEDS=1 cargo test -p herald-sim --test \
         seeds_replay canonical rewrites them; review the diff): {not_canonical:?}"
    );
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

    let (count, problems) = replay_dir(&dir, real, budget()).unwrap();
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
    let (count, problems) = replay_dir(Path::new("/nonexistent/herald/seeds"), real, budget()).unwrap();
    assert_eq!((count, problems.len()), (0, 0));
}

/// Two passing seed files, `a.json` and `b.json`, in a fresh temp dir.
fn two_passing_seeds(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let a = write(
        &dir,
        "a.json",
        &bare_seed_file("a".into(), 3, small_scenario()).to_json(),
    );
    write(
        &dir,
        "b.json",
        &bare_seed_file("b".into(), 4, small_scenario()).to_json(),
    );
    (dir, a)
}

/// A server that spins forever inside one turmoil step: the replay of the first file outlives
/// the budget and is reported as a `hang` naming the file, `replay_dir` returns while that
/// thread still spins, and the second file is not started.
#[test]
fn a_replay_over_the_wall_budget_is_a_hang_that_names_the_file() {
    let (dir, a) = two_passing_seeds("seeds-replay-hang");
    let (spinning, release) = spinning_servers();
    let started = Instant::now();
    let (count, problems) = replay_dir(&dir, spinning, TINY_BUDGET).unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= TINY_BUDGET,
        "returned after {elapsed:?}, before the budget ran out"
    );
    assert_eq!(count, 2);
    assert_eq!(problems.len(), 1, "{}", describe(&problems));
    let hang = &problems[0];
    assert_eq!(hang.path, a);
    assert_eq!(hang.keys, vec!["hang".to_string()]);
    for text in [
        "exceeded the wall-time budget of 2 s",
        "abandoned",
        "1 further file(s) were not replayed",
        &format!("cargo run --release -p herald-sim -- replay {}", a.display()),
    ] {
        assert!(hang.message.contains(text), "{text:?} missing from: {}", hang.message);
    }
    drop(release);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The near miss: the same files, the same budget, the real server — both replay well within
/// it and nothing is reported.
#[test]
fn a_replay_within_the_wall_budget_is_no_problem() {
    let (dir, _) = two_passing_seeds("seeds-replay-in-budget");
    let (count, problems) = replay_dir(&dir, real, TINY_BUDGET).unwrap();
    assert_eq!((count, problems.len()), (2, 0), "{}", describe(&problems));
    let _ = std::fs::remove_dir_all(&dir);
}
