//! The campaign runner under adverse conditions: a seeds directory it cannot write to (at the
//! start or mid-run), two campaigns sharing one seeds directory, a hang seed replayed, a seed
//! file given to `run`, a shrunk failure that does not recur, `--progress quiet`, and what a saved
//! seed records to be regenerated.

use herald_properties::generators::{GeneratorSettings, Size};
use herald_properties::scenario::{Scenario, ScenarioConfig, Step, TimedStep};
use herald_properties::seed_file::{CrashKind, RecordedCrash};
use herald_sim::campaign::seeds::{
    bare_seed_file, check_writable, load_seed_file, repository_seeds_dir, seed_files_in,
};
use herald_sim::campaign::{fuzz, generated_scenario, FuzzOptions, Shard, IO_ERRORS_LISTED_MAX};
use herald_sim::server_under_test::{LiveServer, RealServer, ServerLife, ServerUnderTest};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a CLI command that must fail fast may take, in seconds: the process starts and
/// checks one directory, with room for a loaded machine.
const FAIL_FAST_SECS_MAX: u64 = 10;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-sim-robust-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny(cases: u64, dir: Option<&Path>) -> FuzzOptions {
    FuzzOptions {
        size: Size::Tiny,
        seed_start: 500,
        shrink: false,
        seeds_dir: dir.map(Path::to_path_buf),
        ..FuzzOptions::cases(cases)
    }
}

fn herald_sim(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald-sim"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("herald-sim runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn digest_line(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("history-digest: "))
        .unwrap_or_else(|| panic!("no digest in: {}", text(output)));
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// Finding 1: a seeds directory that cannot be written is an error before the first case (exit
/// 2, no hour spent), from the CLI and from the library alike.
#[test]
fn an_unwritable_seeds_directory_stops_the_campaign_before_its_first_case() {
    let dir = temp_dir("unwritable");
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let report = dir.join("r.json");
    let mut bad_dirs = vec![file.join("seeds")];
    if Path::new("/proc/self").exists() {
        bad_dirs.push(PathBuf::from("/proc/herald-seeds"));
    }
    for bad in &bad_dirs {
        let started = Instant::now();
        let output = herald_sim(
            &[
                "fuzz",
                "--cases",
                "30",
                "--size",
                "tiny",
                "--seed-start",
                "1",
                "--seeds-dir",
                bad.to_str().unwrap(),
                "--report",
                report.to_str().unwrap(),
            ],
            &[],
        );
        let out = text(&output);
        assert_eq!(output.status.code(), Some(2), "{out}");
        assert!(out.contains("is not writable") && out.contains("--no-seeds"), "{out}");
        assert!(!out.contains("cases:"), "no case ran: {out}");
        assert!(started.elapsed() < Duration::from_secs(FAIL_FAST_SECS_MAX), "{out}");
        assert!(!report.exists());
    }

    let report = fuzz(&tiny(30, Some(&file.join("seeds"))), &real);
    assert_eq!(report.cases_run, 0, "{:?}", report.io_errors);
    assert_eq!(report.io_errors.len(), 1, "{:?}", report.io_errors);
    assert!(
        report.io_errors[0].contains("is not writable"),
        "{:?}",
        report.io_errors
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn real() -> Rc<dyn ServerUnderTest> {
    Rc::new(RealServer)
}

/// Counts world runs (server first lives) across workers: the first `fails` panic as the server
/// starts, and the run numbered `break_at` replaces the seeds directory with a plain file, so
/// that nothing can be written there any more.
struct BreaksSeedsDir {
    runs: Arc<AtomicU32>,
    fails: u32,
    break_at: u32,
    dir: PathBuf,
}

impl ServerUnderTest for BreaksSeedsDir {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String> {
        if life.life == 0 {
            let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            if run == self.break_at {
                std::fs::remove_dir_all(&self.dir).unwrap();
                std::fs::write(&self.dir, "not a directory any more").unwrap();
            }
            if run <= self.fails {
                panic!("fixture: run {run} fails");
            }
        }
        RealServer.start(life)
    }
}

/// Servers of one campaign sharing the run count `runs` (see [`BreaksSeedsDir`]).
fn breaks_seeds_dir(
    runs: &Arc<AtomicU32>,
    fails: u32,
    break_at: u32,
    dir: &Path,
) -> impl Fn() -> Rc<dyn ServerUnderTest> {
    let (runs, dir) = (runs.clone(), dir.to_path_buf());
    move || {
        Rc::new(BreaksSeedsDir {
            runs: runs.clone(),
            fails,
            break_at,
            dir: dir.clone(),
        }) as Rc<dyn ServerUnderTest>
    }
}

/// Finding 1, mid-run: the first write that fails stops the campaign within a case or two, and
/// the failure found before it is still reported, with the seed file saved for it.
#[test]
fn an_io_error_mid_run_stops_the_campaign_and_keeps_what_it_found() {
    let root = temp_dir("mid-run");
    let dir = root.join("seeds");
    // Run 1 is case 0 (it fails), run 2 its reproduction; run 3 (case 1) breaks the directory.
    let runs = Arc::new(AtomicU32::new(0));
    let make = breaks_seeds_dir(&runs, 2, 3, &dir);
    let report = fuzz(&tiny(200, Some(&dir)), &make);
    assert!(
        report.cases_run <= 5,
        "the campaign ran {} cases after it could no longer write: {:?}",
        report.cases_run,
        report.io_errors
    );
    assert!(
        !report.io_errors.is_empty() && report.io_errors.len() <= IO_ERRORS_LISTED_MAX,
        "{:?}",
        report.io_errors
    );
    assert_eq!(report.cases_failed, 1, "{:#?}", report.failures);
    assert!(report.failed());
    let saved = report.failures[0].seed_file.as_deref().unwrap_or_default();
    assert!(saved.contains("host_failure-"), "{:#?}", report.failures);
    let _ = std::fs::remove_dir_all(&root);
}

/// An I/O error during a shrink stops the shrink too: its remaining candidates (up to
/// `shrink_attempts`) are rejected without running, since nothing found could be saved.
#[test]
fn an_io_error_while_shrinking_ends_the_shrink() {
    let root = temp_dir("mid-shrink");
    let dir = root.join("seeds");
    // Run 1 is the case, run 2 its reproduction, run 3 the shrinker's first candidate: it fails
    // too, and breaks the directory as it starts, so the next candidate's marker cannot be
    // written. Every later run would pass, so an unstopped shrink would run many candidates.
    let runs = Arc::new(AtomicU32::new(0));
    let make = breaks_seeds_dir(&runs, 3, 3, &dir);
    let options = FuzzOptions {
        shrink: true,
        shrink_attempts: 300,
        ..tiny(1, Some(&dir))
    };
    let report = fuzz(&options, &make);
    assert!(!report.io_errors.is_empty(), "{report:#?}");
    assert_eq!(report.cases_failed, 1, "{:#?}", report.failures);
    assert!(
        runs.load(Ordering::SeqCst) <= 4,
        "the shrink ran {} worlds after the campaign could no longer save anything",
        runs.load(Ordering::SeqCst)
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Finding 3: two campaigns in one seeds directory (two shards of one checkout) each write their
/// own markers and temporary files, and neither touches the other's.
#[test]
fn two_campaigns_sharing_a_seeds_directory_do_not_clobber_each_other() {
    let dir = temp_dir("shared");
    // Another process's marker under the name a worker 0 used to write.
    let foreign = dir.join(".in-progress-0.json");
    std::fs::write(&foreign, "another campaign's marker").unwrap();
    let seeds = dir.to_str().unwrap().to_string();
    let shard = |index: &str| {
        let args: Vec<String> = [
            "fuzz",
            "--cases",
            "300",
            "--size",
            "tiny",
            "--jobs",
            "2",
            "--seed-start",
            "7",
            "--shard",
            index,
            "--seeds-dir",
            &seeds,
            "--progress",
            "quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Command::new(env!("CARGO_BIN_EXE_herald-sim"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("herald-sim starts")
    };
    let (a, b) = (shard("0/2"), shard("1/2"));
    for child in [a, b] {
        let output = child.wait_with_output().unwrap();
        let out = text(&output);
        assert_eq!(output.status.code(), Some(0), "{out}");
        assert!(!out.contains("I/O ERROR"), "{out}");
    }
    assert_eq!(
        std::fs::read_to_string(&foreign).unwrap(),
        "another campaign's marker",
        "a campaign touched a marker that is not its own"
    );
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec![".in-progress-0.json".to_string()],
        "markers and temporary files are removed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Eight client hosts with a client each and a 1 ms tick through a quiet period near the
/// simulated-time limit: about 10 s of wall time in a release build, 10 times the budget given
/// to its replay below (and much more in a debug build).
fn slow_scenario() -> Scenario {
    let steps = (0..8)
        .map(|i| TimedStep {
            at_ms: 100,
            step: Step::Connect {
                client: i,
                user: i % 2,
                host: i,
                token_ttl_ms: None,
            },
        })
        .collect();
    Scenario {
        config: ScenarioConfig {
            users: 2,
            client_hosts: 8,
            tick_ms: 1,
            quiet_period_ms: 880_000,
            ..ScenarioConfig::default()
        },
        steps,
    }
}

/// Writes `hang-slow.json` into `dir`: a hang seed of [`slow_scenario`], whose world outlives
/// any short replay budget.
fn write_hang_seed(dir: &std::path::Path) -> std::path::PathBuf {
    let mut file = bare_seed_file("hang-slow".into(), 3, slow_scenario());
    file.crash = Some(RecordedCrash {
        kind: CrashKind::Hang,
        message: "a world run exceeded the wall-time budget".into(),
        history_digest: None,
        steps_before_shrink: 8,
        steps_after_shrink: 8,
    });
    let path = dir.join("hang-slow.json");
    std::fs::write(&path, file.to_json()).unwrap();
    path
}

/// Finding 4: `replay` of a hang seed whose world outlives the replay budget ends, says HANG and
/// exits 1, instead of running on with no output.
#[test]
fn the_replay_of_a_hang_seed_ends_at_its_wall_budget_as_a_hang() {
    let dir = temp_dir("hang-replay");
    let path = write_hang_seed(&dir);
    let started = Instant::now();
    let output = herald_sim(
        &["replay", path.to_str().unwrap(), "--quiet"],
        &[("HERALD_SEED_REPLAY_BUDGET_SECS", "1")],
    );
    let out = text(&output);
    assert!(
        started.elapsed() < Duration::from_secs(1 + FAIL_FAST_SECS_MAX),
        "took {:?}: {out}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("is a hang seed (world seed 3)"), "{out}");
    assert!(out.contains("verdict: HANG"), "{out}");
    assert!(out.contains("wall-time budget of 1 s"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 2: `run --scenario <seed file>` runs it under the file's own world seed, as `replay`
/// does; an explicit `--seed` overrides it, with a warning.
#[test]
fn run_of_a_seed_file_uses_its_world_seed() {
    let dir = temp_dir("run-seed-file");
    let settings = GeneratorSettings {
        size: Size::Tiny,
        swarm: false,
    };
    let file = bare_seed_file("tiny-77".into(), 77, generated_scenario(settings, 5, false));
    let path = dir.join("tiny-77.json");
    std::fs::write(&path, file.to_json()).unwrap();
    let path = path.to_str().unwrap();

    let replayed = herald_sim(&["replay", path, "--quiet"], &[]);
    assert_eq!(replayed.status.code(), Some(0), "{}", text(&replayed));
    let ran = herald_sim(&["run", "--scenario", path], &[]);
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
    assert!(
        String::from_utf8_lossy(&ran.stdout).starts_with("SEED=77 "),
        "{}",
        text(&ran)
    );
    assert_eq!(digest_line(&ran), digest_line(&replayed), "{}", text(&ran));
    assert!(!text(&ran).contains("warning"), "{}", text(&ran));

    let other = herald_sim(&["run", "--scenario", path, "--seed", "0"], &[]);
    assert!(
        String::from_utf8_lossy(&other.stdout).starts_with("SEED=0 "),
        "{}",
        text(&other)
    );
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("--seed 0 overrides the world seed 77"),
        "{}",
        text(&other)
    );
    assert_ne!(digest_line(&other), digest_line(&replayed));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 6: `fuzz` prints `SEED=<n>` first, also with `--progress quiet`.
#[test]
fn fuzz_prints_its_seed_first_even_when_quiet() {
    let output = herald_sim(
        &[
            "fuzz",
            "--cases",
            "1",
            "--size",
            "tiny",
            "--seed-start",
            "42",
            "--no-seeds",
            "--progress",
            "quiet",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("SEED=42 "),
        "{}",
        text(&output)
    );
}

/// Panics as it starts: every case fails.
struct PanicsAtStart;

impl ServerUnderTest for PanicsAtStart {
    fn start(&self, _life: ServerLife) -> Result<LiveServer, String> {
        panic!("fixture: the server panics at start");
    }
}

/// Finding 7: a seed saved by a `--whole-quiet-period` campaign records it, so its generator
/// settings regenerate the very scenario that failed.
#[test]
fn a_saved_seed_records_whole_quiet_period_and_regenerates_its_scenario() {
    let dir = temp_dir("whole-quiet");
    let options = FuzzOptions {
        whole_quiet_period: true,
        ..tiny(1, Some(&dir))
    };
    let report = fuzz(&options, &|| Rc::new(PanicsAtStart) as Rc<dyn ServerUnderTest>);
    assert!(report.io_errors.is_empty(), "{:?}", report.io_errors);
    let files = seed_files_in(&dir).unwrap();
    assert_eq!(files.len(), 1, "{:#?}", report.failures);
    let file = load_seed_file(&files[0]).unwrap();
    let generator = file.generator.clone().unwrap();
    assert!(generator.whole_quiet_period, "{generator:?}");
    assert_eq!(file.scenario.config.settle_ms, None);
    let settings = GeneratorSettings {
        size: Size::Tiny,
        swarm: generator.swarm,
    };
    assert_eq!(
        generated_scenario(settings, generator.seed, generator.whole_quiet_period),
        file.scenario
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 8: git ignores what a campaign leaves in `seeds/` when it is killed: markers
/// (`.in-progress-s<shard>-<nonce>-<worker>.json`), temporary files (`.<name>.<nonce>-<n>.tmp`)
/// and write probes, named as they are now and as older builds named them (by process id).
#[test]
fn git_ignores_markers_and_temporary_files_in_seeds() {
    let seeds = repository_seeds_dir();
    let nonce = herald_sim::campaign::seeds::process_nonce();
    let marker = herald_sim::campaign::seeds::in_progress_path(Path::new(""), 3, 0);
    let marker = marker.to_string_lossy().into_owned();
    let temp = format!(".liveness-09b4dbe7.json.{nonce}-0.tmp");
    let probe = format!(".write-check-{nonce}-1.tmp");
    for name in [
        marker.as_str(),
        temp.as_str(),
        probe.as_str(),
        ".in-progress-1234-0.json",
        ".liveness-09b4dbe7.json.1234-0.tmp",
    ] {
        let checked = Command::new("git")
            .arg("-C")
            .arg(&seeds)
            .args(["check-ignore", "-q", name])
            .status();
        match checked {
            Ok(status) if status.code() == Some(128) => {
                eprintln!("not a git work tree: {} not checked", seeds.display())
            }
            Ok(status) => assert!(status.success(), "git does not ignore seeds/{name}"),
            Err(error) => eprintln!("git not available ({error}): {name} not checked"),
        }
    }
}

/// `run` judges a run as the campaign does: a host failure in its history (here the world's
/// simulated time limit, reached by an idle world whose quiet period outlasts it) fails the run
/// (exit 1) even though every invariant holds.
#[test]
fn run_fails_on_a_host_failure_as_the_campaign_does() {
    let dir = temp_dir("run-host-failure");
    let scenario = Scenario {
        config: ScenarioConfig {
            users: 1,
            client_hosts: 1,
            tick_ms: 100,
            quiet_period_ms: 900_000,
            ..ScenarioConfig::default()
        },
        steps: Vec::new(),
    };
    let path = dir.join("limit.json");
    std::fs::write(&path, serde_json::to_string(&scenario).unwrap()).unwrap();
    let output = herald_sim(&["run", "--scenario", path.to_str().unwrap()], &[]);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("host_failure"), "{out}");
    assert!(out.contains("simulated time limit reached"), "{out}");
    assert!(!out.contains("all invariants hold"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `shrink` and `run` of a world that outlives the replay budget end at it, say HANG and exit 1
/// (as `replay` does), instead of running on with no output.
#[test]
fn shrink_and_run_of_a_hang_seed_end_at_the_wall_budget() {
    let dir = temp_dir("hang-shrink");
    let path = write_hang_seed(&dir);
    let path = path.to_str().unwrap();
    for args in [vec!["shrink", path], vec!["run", "--scenario", path]] {
        let started = Instant::now();
        let output = herald_sim(&args, &[("HERALD_SEED_REPLAY_BUDGET_SECS", "1")]);
        let out = text(&output);
        assert!(
            started.elapsed() < Duration::from_secs(1 + FAIL_FAST_SECS_MAX),
            "{args:?} took {:?}: {out}",
            started.elapsed()
        );
        assert_eq!(output.status.code(), Some(1), "{args:?}: {out}");
        assert!(out.contains("HANG"), "{args:?}: {out}");
        assert!(out.contains("wall-time budget of 1 s"), "{args:?}: {out}");
    }
    assert!(!dir.join("hang-slow.shrunk.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Takes a while to start each world (its thread sleeps), so a campaign's in-progress marker
/// stays on disk long enough to be seen.
struct SlowStart;

impl ServerUnderTest for SlowStart {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String> {
        std::thread::sleep(Duration::from_millis(1_500));
        RealServer.start(life)
    }
}

/// Two shards with the same process id (here: one process; in CI, two containers that both run
/// as pid 1) share a seeds directory: each keeps its own in-progress marker.
#[test]
fn shards_with_one_process_id_keep_their_markers_apart() {
    let dir = temp_dir("same-pid");
    let markers = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".in-progress-"))
            .collect()
    };
    let seen = std::thread::scope(|scope| {
        for index in 0..2 {
            let options = FuzzOptions {
                shard: Shard { index, count: 2 },
                case_wall_budget: Duration::from_secs(30),
                ..tiny(1, Some(&dir))
            };
            scope.spawn(move || fuzz(&options, &|| Rc::new(SlowStart) as Rc<dyn ServerUnderTest>));
        }
        std::thread::sleep(Duration::from_millis(750));
        markers(&dir)
    });
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|name| !name.contains(&format!("-{}-", std::process::id()))),
        "markers are not named by the process id: {seen:?}"
    );
    assert_eq!(markers(&dir), Vec::<String>::new(), "markers are removed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Campaigns starting together in one directory (and one process id) check it with probes of
/// their own: none removes another's.
#[test]
fn concurrent_checks_of_one_seeds_directory_never_collide() {
    let dir = temp_dir("probes");
    let errors: Vec<String> = std::thread::scope(|scope| {
        let checks: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| (0..200).filter_map(|_| check_writable(&dir).err()).collect::<Vec<_>>()))
            .collect();
        checks.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "probes are removed");
    let _ = std::fs::remove_dir_all(&dir);
}
