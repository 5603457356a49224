//! The campaign machinery: seeds and shards, deterministic aggregates, crash and hang handling,
//! seed files that replay to the same digest, and the CLI's exit codes and output.
//!
//! The crash fixtures here are not realistic bugs (those live with the checker fixtures): one
//! server panics as it starts, one blocks its thread — they prove a campaign survives both.

use herald_properties::coverage::Path as CoveragePath;
use herald_properties::generators::Size;
use herald_properties::seed_file::CrashKind;
use herald_sim::campaign::seeds::{
    load_seed_file, replay, replay_dir, seed_files_in, seed_replay_wall_budget, verdict,
};
use herald_sim::campaign::{fuzz, FailureKey, FuzzOptions, Shard};
use herald_sim::server_under_test::{LiveServer, RealServer, ServerLife, ServerUnderTest};
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

fn real() -> Rc<dyn ServerUnderTest> {
    Rc::new(RealServer)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-sim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny(cases: u64) -> FuzzOptions {
    FuzzOptions {
        size: Size::Tiny,
        seed_start: 500,
        ..FuzzOptions::cases(cases)
    }
}

#[test]
fn aggregates_do_not_depend_on_jobs_and_shards_partition_the_cases() {
    let one = fuzz(&tiny(6), &real);
    let two = fuzz(&FuzzOptions { jobs: 2, ..tiny(6) }, &real);
    assert_eq!(one.cases_run, 6);
    assert!(!one.failed(), "{:?}", one.failures);
    assert_eq!(one.simulated_ms, two.simulated_ms, "same cases, same simulated time");
    assert_eq!(one.coverage, two.coverage, "same cases, same coverage");

    let halves: Vec<_> = (0..2)
        .map(|index| {
            fuzz(
                &FuzzOptions {
                    shard: Shard { index, count: 2 },
                    ..tiny(3)
                },
                &real,
            )
        })
        .collect();
    assert_eq!(halves[0].simulated_ms + halves[1].simulated_ms, one.simulated_ms);
    for (i, row) in one.coverage.iter().enumerate() {
        assert_eq!(
            halves[0].coverage[i].occurrences + halves[1].coverage[i].occurrences,
            row.occurrences,
            "{:?}",
            row.path
        );
    }
    assert_eq!(one.coverage.len(), CoveragePath::ALL.len());
    assert!(one.coverage.iter().any(|r| r.cases > 0), "six cases reach something");
}

/// Fails every run: panics inside the server host as it starts.
struct PanicsAtStart;

impl ServerUnderTest for PanicsAtStart {
    fn start(&self, _life: ServerLife) -> Result<LiveServer, String> {
        panic!("fixture: the server panics at start");
    }
}

#[test]
fn a_panicking_server_is_a_failure_that_is_shrunk_saved_deduplicated_and_replays() {
    let dir = temp_dir("campaign-crash");
    let options = FuzzOptions {
        seeds_dir: Some(dir.clone()),
        shrink_attempts: 60,
        shrinks_per_key: 1,
        ..tiny(4)
    };
    let broken = || Rc::new(PanicsAtStart) as Rc<dyn ServerUnderTest>;
    let report = fuzz(&options, &broken);
    assert_eq!(report.cases_run, 4, "the campaign survived every crash");
    assert_eq!(report.cases_failed, 4);
    assert_eq!(report.failures_by_key.get("host_failure"), Some(&4));
    assert!(report.time_to_first_failure_ms.is_some());
    assert!(report.io_errors.is_empty(), "{:?}", report.io_errors);

    // One failure shrunk and saved; the other three counted under "not shrunk".
    let saved: Vec<_> = report.failures.iter().filter(|g| g.seed_file.is_some()).collect();
    assert_eq!(saved.len(), 1, "{:#?}", report.failures);
    let group = saved[0];
    assert_eq!(group.key, FailureKey::Crash(CrashKind::HostFailure));
    assert!(group.steps_after_shrink.unwrap() < group.steps_before_shrink);
    assert_eq!(report.failures.iter().map(|g| g.count).sum::<u64>(), 4);

    let files = seed_files_in(&dir).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("host_failure-") && name.len() == "host_failure-".len() + 8 + 5,
        "{name}"
    );
    assert!(
        !std::fs::read_dir(&dir)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".in-progress")),
        "in-progress markers are removed after each case"
    );

    // The file replays deterministically to the recorded digest, and its verdict fails.
    let file = load_seed_file(&files[0]).unwrap();
    let crash = file.crash.clone().expect("a crash is recorded");
    assert_eq!(crash.kind, CrashKind::HostFailure);
    assert!(
        crash.message.contains("the server panics at start"),
        "{}",
        crash.message
    );
    assert_eq!(file.generator.as_ref().unwrap().size, "tiny");
    let again = replay(&file, broken(), false);
    assert_eq!(
        again.digest, crash.history_digest,
        "replay reproduces the recorded history"
    );
    assert!(verdict(&file, &again).unwrap_err().contains("host_failure"));
    // ... which is what `cargo test`'s seed replay would report, naming the file.
    let (count, problems) = replay_dir(&dir, broken, seed_replay_wall_budget().unwrap()).unwrap();
    assert_eq!((count, problems.len()), (1, 1));
    assert_eq!(problems[0].path, files[0]);
    assert!(problems[0].keys.contains(&"host_failure".to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stop_after_failures_stops_the_campaign() {
    let options = FuzzOptions {
        stop_after_failures: Some(1),
        shrink: false,
        ..tiny(1_000)
    };
    let report = fuzz(&options, &|| Rc::new(PanicsAtStart) as Rc<dyn ServerUnderTest>);
    assert_eq!(report.cases_run, 1);
    assert_eq!(report.failures[0].shape, "not shrunk");
}

/// Blocks its (wall-clock) thread when it starts, like a server stuck in a busy loop.
struct BlocksAtStart;

impl ServerUnderTest for BlocksAtStart {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String> {
        std::thread::sleep(Duration::from_millis(1_500));
        RealServer.start(life)
    }
}

#[test]
fn a_run_over_the_wall_budget_is_reported_as_a_hang_and_saved() {
    let dir = temp_dir("campaign-hang");
    let options = FuzzOptions {
        seeds_dir: Some(dir.clone()),
        case_wall_budget: Duration::from_millis(300),
        ..tiny(3)
    };
    let started = std::time::Instant::now();
    let report = fuzz(&options, &|| Rc::new(BlocksAtStart) as Rc<dyn ServerUnderTest>);
    assert!(
        started.elapsed() < Duration::from_millis(1_400),
        "the campaign returned while the hung worker still blocks"
    );
    assert_eq!(report.failures_by_key.get("hang"), Some(&1), "{:#?}", report.failures);
    // The hung case counts as run and failed, once (never more failed than run).
    assert_eq!((report.cases_run, report.cases_failed), (1, 1), "{report:#?}");
    let group = &report.failures[0];
    assert_eq!(group.case_seeds, vec![500]);
    let file = load_seed_file(std::path::Path::new(group.seed_file.as_ref().unwrap())).unwrap();
    assert_eq!(file.crash.unwrap().kind, CrashKind::Hang);
    assert_eq!(file.seed, 500);
    // Let the abandoned worker wake up and leave before the directory goes.
    std::thread::sleep(Duration::from_millis(1_500));
    let _ = std::fs::remove_dir_all(&dir);
}

fn herald_sim(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_herald-sim"))
        .args(args)
        .output()
        .expect("herald-sim runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn cli_fuzz_prints_seed_summary_and_coverage_and_writes_the_report() {
    let dir = temp_dir("campaign-cli");
    let report = dir.join("report.json");
    let (code, out) = herald_sim(&[
        "fuzz",
        "--cases",
        "3",
        "--size",
        "tiny",
        "--jobs",
        "1",
        "--seed-start",
        "42",
        "--no-seeds",
        "--progress",
        "plain",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("SEED=42 "), "{out}");
    assert!(out.contains("cases: 3 run, 0 failed"), "{out}");
    assert!(
        out.contains("coverage (3 cases)") && out.contains("resume_recovered"),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["cases_run"], 3);
    assert_eq!(json["settings"]["seed_start"], 42);
    assert_eq!(json["coverage"].as_array().unwrap().len(), CoveragePath::ALL.len());

    // Usage errors exit 2.
    assert_eq!(herald_sim(&["fuzz", "--shard", "8/8"]).0, Some(2));
    // Shards drawing their own random starts would not be disjoint.
    let (code, out) = herald_sim(&["fuzz", "--cases", "1", "--shard", "1/2", "--no-seeds"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("needs --seed-start"), "{out}");
    assert_eq!(herald_sim(&["fuzz", "--time", "10x"]).0, Some(2));
    assert_eq!(herald_sim(&["replay", "/nonexistent.json"]).0, Some(2));
    // A seed file shrink cannot read is an error, not a bare scenario run under another seed.
    let future = dir.join("future.json");
    std::fs::write(&future, r#"{"format_version": 999, "seed": 7}"#).unwrap();
    let (code, out) = herald_sim(&["shrink", future.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("format_version"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_replay_shrink_and_check_determinism() {
    let dir = temp_dir("campaign-cli-replay");
    let scenario = herald_properties::generators::generate(
        herald_properties::generators::GeneratorSettings {
            size: Size::Tiny,
            swarm: false,
        },
        3,
    );
    let file = herald_sim::campaign::seeds::bare_seed_file("tiny-3".into(), 3, scenario);
    let path = dir.join("tiny-3.json");
    std::fs::write(&path, file.to_json()).unwrap();

    let (code, out) = herald_sim(&["replay", path.to_str().unwrap(), "--trace"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("step 0: connect client"), "{out}");
    assert!(out.contains("            | t="), "trace lines are interleaved: {out}");
    assert!(
        out.contains("history-digest: ") && out.contains("verdict: pass"),
        "{out}"
    );
    let digest_line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("history-digest: "))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    let (_, again) = herald_sim(&["replay", path.to_str().unwrap(), "--quiet"]);
    assert_eq!(
        digest_line(&out),
        digest_line(&again),
        "replay is deterministic with and without --trace"
    );

    // A file whose recorded digest is stale (the code changed since): replay says so, names
    // the revision, and shows with a second run that this build is deterministic.
    let mut stale = file.clone();
    stale.git_revision = Some("0123456789abcdef0123456789abcdef01234567".into());
    stale.failure = Some(herald_properties::seed_file::RecordedFailure {
        invariant: herald_properties::checkers::Invariant::NoSilentLoss,
        explanation: "recorded by an older build".into(),
        history_digest: "0".repeat(64),
        steps_before_shrink: 1,
        steps_after_shrink: 1,
    });
    stale.expect = herald_properties::seed_file::Expect::Pass;
    let stale_path = dir.join("stale.json");
    std::fs::write(&stale_path, stale.to_json()).unwrap();
    let (code, out) = herald_sim(&["replay", stale_path.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "{} (DIFFERS from the {} recorded at revision 0123456789ab)",
            digest_line(&out),
            "0".repeat(64)
        )),
        "{out}"
    );
    assert!(out.contains("a second run here gave the same digest"), "{out}");

    let mut failing = file.clone();
    failing.expectations = vec![herald_properties::expectations::Expectation::ClosedWith { client: 0, code: 4009 }];
    let failing_path = dir.join("failing.json");
    std::fs::write(&failing_path, failing.to_json()).unwrap();
    let (code, out) = herald_sim(&["replay", failing_path.to_str().unwrap(), "--quiet"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("verdict: FAILED"), "{out}");

    let (code, out) = herald_sim(&["shrink", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing to shrink"), "{out}");

    let (code, out) = herald_sim(&["check-determinism", "--cases", "2", "--size", "tiny"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 cases, 0 mismatches; deterministic"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
