//! Seed files on disk: writing a campaign's failures, the in-progress marker that keeps a hang
//! or an abort reproducible, and replaying a file to a verdict — the one verdict function used by
//! `herald-sim replay` and by `cargo test` (`sim/tests/seeds_replay.rs`), so both agree.
//!
//! Hangs: a world that spins inside one turmoil step cannot be interrupted, so `cargo test`
//! replays each file on its own detached thread ([`run_within_wall_budget`], shared with the
//! catalogue) and reports one that outlives [`SEED_REPLAY_WALL_BUDGET_SECS`] as a `hang`,
//! naming the file, instead of waiting for it forever.

use super::case::{panic_message, run_and_judge, CaseFailure, FailureKey, Judged};
use crate::server_under_test::ServerUnderTest;
use herald_properties::checkers::Invariant;
use herald_properties::expectations::check_expectations;
use herald_properties::scenario::Scenario;
use herald_properties::seed_file::{CrashKind, Expect, SeedFile, SEED_FORMAT_VERSION};
use sha2::{Digest, Sha256};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Wall time, in seconds, one seed file's replay may take under `cargo test` (and `herald-sim
/// suite`) before it is reported as a `hang`. Without a budget, a world spinning inside one
/// turmoil step would hang `cargo test` for good instead of failing with the file's name. The
/// slowest saved seed or catalogue entry replays in 0.36 s in a debug build on 2 cores, and in
/// up to 1.6 s while the rest of `cargo test -p herald-sim` runs alongside; 60 s is over 35
/// times that (and the campaign's default `--hang-budget`), so only a world that does not end
/// outlives it. [`SEED_REPLAY_BUDGET_ENV`] overrides it.
pub const SEED_REPLAY_WALL_BUDGET_SECS: u64 = 60;
/// The environment variable that sets the seed replay budget, in whole seconds, for machines
/// slower than the default allows for.
pub const SEED_REPLAY_BUDGET_ENV: &str = "HERALD_SEED_REPLAY_BUDGET_SECS";

/// The file name stem of a saved failure: `<key>-<first 8 hex of sha256(scenario JSON)>`.
pub fn seed_name(key: FailureKey, scenario: &Scenario) -> String {
    let json = serde_json::to_vec(scenario).expect("scenarios always serialize");
    let hash = hex::encode(Sha256::digest(json));
    format!("{}-{}", key.as_str(), &hash[..8])
}

/// A seed file for a scenario with no recorded failure (the in-progress marker and hand-made
/// files start from this).
pub fn bare_seed_file(name: String, seed: u64, scenario: Scenario) -> SeedFile {
    SeedFile {
        format_version: SEED_FORMAT_VERSION,
        name,
        family: None,
        severity: None,
        description: String::new(),
        seed,
        generator: None,
        scenario,
        expectations: Vec::new(),
        failure: None,
        crash: None,
        git_revision: None,
        expect: Expect::Pass,
    }
}

/// Writes `file` as `<dir>/<file.name>.json` (creating `dir`); returns the path. An existing
/// file with that name holds the same scenario and is left alone.
pub fn write_seed_file(dir: &Path, file: &SeedFile) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{}.json", file.name));
    if !path.exists() {
        write_atomically(&path, &file.to_json())?;
    }
    Ok(path)
}

/// Writes through a temporary file and a rename, so a crash never leaves half a seed file.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
}

/// `<dir>/.in-progress-<worker>.json`: the scenario a worker is running right now, as a seed
/// file (replayable with `herald-sim replay`). Written before each run and removed after, like
/// shuttle's `SHUTTLE_ALWAYS_PERSIST_SEED`, so a hang or a killed job stays reproducible.
pub fn in_progress_path(dir: &Path, worker: usize) -> PathBuf {
    dir.join(format!(".in-progress-{worker}.json"))
}

/// `git rev-parse HEAD`, if git and a repository are there.
pub fn git_revision() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let revision = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && revision.len() >= 7).then_some(revision)
}

/// The repository's `seeds/`, for the tests that replay it. Found from `CARGO_MANIFEST_DIR` read
/// when the test runs (cargo sets it for every test), not baked in by `env!` when it is built: a
/// build cache shared between clones (`.ci/run`'s `~/.cache/herald/target`) reuses test binaries
/// across checkouts, and a baked-in path would replay another clone's seeds.
pub fn repository_seeds_dir() -> PathBuf {
    let sim_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo, which sets CARGO_MANIFEST_DIR");
    PathBuf::from(sim_dir).join("../seeds")
}

/// The fuzz failure seed files of a directory: `*.json` directly in it, sorted; subdirectories
/// (`seeds/catalogue/` has its own test) and dot files (in-progress markers) are not included.
pub fn seed_files_in(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_file() && name.ends_with(".json") && !name.starts_with('.') {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and parses a seed file.
pub fn load_seed_file(path: &Path) -> Result<SeedFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    SeedFile::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// One replay of a seed file.
pub struct Replay {
    pub judged: Judged,
    /// Unmet scenario-specific expectations.
    pub unmet: Vec<String>,
    pub digest: Option<String>,
}

impl Replay {
    /// The digest recorded when the file was written, if any.
    pub fn recorded_digest(file: &SeedFile) -> Option<&str> {
        file.failure
            .as_ref()
            .map(|f| f.history_digest.as_str())
            .or_else(|| file.crash.as_ref().and_then(|c| c.history_digest.as_deref()))
    }
}

/// Reruns `file` deterministically against `server`.
pub fn replay(file: &SeedFile, server: Rc<dyn ServerUnderTest>, trace: bool) -> Replay {
    let judged = run_and_judge(&file.scenario, file.seed, server, trace);
    let unmet = match judged.history() {
        Some(history) => check_expectations(&file.scenario, history, &file.expectations),
        None => Vec::new(),
    };
    let digest = judged.history().map(|h| h.digest());
    Replay { judged, unmet, digest }
}

/// Whether a replay reached the verdict the file's `expect` asks for. `Ok` carries a one-line
/// description; `Err` explains what is wrong, naming the invariant(s).
///
/// `expect: pass` — every invariant and expectation holds and nothing crashed.
/// `expect: fail {invariant}` — that invariant fails (a known-open bug); every other invariant,
/// expectation and crash check must still pass, so a new bug does not hide behind an old one.
pub fn verdict(file: &SeedFile, replay: &Replay) -> Result<String, String> {
    let expected_failure = match &file.expect {
        Expect::Pass => None,
        Expect::Fail { invariant } => Some(*invariant),
    };
    let mut problems: Vec<String> = replay
        .judged
        .failures
        .iter()
        .filter(|f| Some(f.key) != expected_failure.map(FailureKey::Invariant))
        .map(describe)
        .collect();
    problems.extend(replay.unmet.iter().map(|u| format!("expectation unmet: {u}")));
    if let Some(invariant) = expected_failure {
        if !replay.judged.fails_with(FailureKey::Invariant(invariant)) {
            problems.push(format!(
                "expected invariant {invariant} to fail (expect: fail) but it held — if the bug is fixed, \
                 set \"expect\": {{\"verdict\": \"pass\"}} to keep the file as a regression test"
            ));
        }
    }
    if problems.is_empty() {
        Ok(match expected_failure {
            None => "pass (every invariant and expectation holds)".to_string(),
            Some(invariant) => format!("known failure of {invariant} reproduced (expect: fail)"),
        })
    } else {
        Err(problems.join("\n"))
    }
}

fn describe(failure: &CaseFailure) -> String {
    format!(
        "{} [{} / {}]: {}",
        failure.key,
        failure.severity.as_str(),
        failure.category.as_str(),
        failure.explanation
    )
}

/// One seed file that does not replay to its expected verdict.
#[derive(Debug, Clone)]
pub struct SeedProblem {
    pub path: PathBuf,
    /// The failing invariants / crash kinds (empty for a file that could not be read).
    pub keys: Vec<String>,
    pub message: String,
}

/// The seed replay budget: [`SEED_REPLAY_WALL_BUDGET_SECS`], or [`SEED_REPLAY_BUDGET_ENV`] when
/// set. A value that is not a whole number of seconds above 0 is an error, not ignored.
pub fn seed_replay_wall_budget() -> Result<Duration, String> {
    match std::env::var(SEED_REPLAY_BUDGET_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(Duration::from_secs(SEED_REPLAY_WALL_BUDGET_SECS)),
        Ok(text) => parse_budget_secs(&text),
        Err(std::env::VarError::NotUnicode(text)) => parse_budget_secs(&text.to_string_lossy()),
    }
}

fn parse_budget_secs(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "{SEED_REPLAY_BUDGET_ENV}={text:?}: expected a whole number of seconds above 0"
        )),
    }
}

/// Why a replay run by [`run_within_wall_budget`] gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayInterrupted {
    /// Still running when the budget ran out; its thread was abandoned.
    Hang,
    /// The replay panicked outside the world (a panicking world is judged as a `panic` failure
    /// by [`run_and_judge`]); the panic message.
    Panic(String),
    /// No thread could be started.
    CannotSpawn(String),
}

impl ReplayInterrupted {
    /// The key a report names it by: the campaign's crash kind, where there is one.
    pub fn key(&self) -> &'static str {
        match self {
            ReplayInterrupted::Hang => CrashKind::Hang.as_str(),
            ReplayInterrupted::Panic(_) => CrashKind::Panic.as_str(),
            ReplayInterrupted::CannotSpawn(_) => "cannot_spawn",
        }
    }

    /// What happened to the replay of `path`, and how to reproduce it; `not_replayed` files were
    /// not started after a hang.
    pub fn describe(&self, path: &Path, budget: Duration, not_replayed: usize) -> String {
        let reproduce = format!("cargo run --release -p herald-sim -- replay {}", path.display());
        match self {
            ReplayInterrupted::Hang => format!(
                "the replay exceeded the wall-time budget of {} s (a world spinning inside one \
                 turmoil step?); its thread was abandoned, still running, and {not_replayed} \
                 further file(s) were not replayed (that thread keeps a core busy). Reproduce \
                 with `{reproduce}`; on a slow machine, raise the budget with {SEED_REPLAY_BUDGET_ENV}.",
                budget.as_secs_f64()
            ),
            ReplayInterrupted::Panic(message) => {
                format!("the replay panicked: {message}. Reproduce with `{reproduce}`.")
            }
            ReplayInterrupted::CannotSpawn(error) => format!("cannot start a replay thread: {error}"),
        }
    }
}

/// Runs `replay` on a detached thread named `thread_name` and waits at most `budget` for its
/// result; a panic in it is caught. A world spinning inside one turmoil step cannot be
/// interrupted, so on [`ReplayInterrupted::Hang`] the thread is abandoned, still running, and
/// the caller should start no more replays: their budgets would be measured on a machine that
/// thread keeps busy.
pub fn run_within_wall_budget<T: Send + 'static>(
    thread_name: String,
    budget: Duration,
    replay: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReplayInterrupted> {
    let (result_tx, result_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(replay)).map_err(|payload| panic_message(payload.as_ref()));
            // The caller may have stopped waiting (a hang): nobody to tell then.
            let _ = result_tx.send(result);
        })
        .map_err(|error| ReplayInterrupted::CannotSpawn(error.to_string()))?;
    match result_rx.recv_timeout(budget) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(ReplayInterrupted::Panic(message)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(ReplayInterrupted::Hang),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(ReplayInterrupted::Panic(
            "the replay thread ended without a result".into(),
        )),
    }
}

/// Replays every fuzz seed file in `dir` (see [`seed_files_in`]) and returns the ones whose
/// verdict is wrong. A missing directory has no seeds.
///
/// Each file replays on its own thread against a server from `make_server` (servers are `Rc`,
/// so each thread builds its own) within `budget` ([`seed_replay_wall_budget`] under `cargo
/// test`). A file that outlives it is a `hang` problem, and the files after it are not replayed
/// (the count is in its message).
pub fn replay_dir(
    dir: &Path,
    make_server: impl Fn() -> Rc<dyn ServerUnderTest> + Send + Sync + 'static,
    budget: Duration,
) -> Result<(usize, Vec<SeedProblem>), String> {
    if !dir.exists() {
        return Ok((0, Vec::new()));
    }
    let files = seed_files_in(dir)?;
    let make_server = Arc::new(make_server);
    let mut problems = Vec::new();
    for (index, path) in files.iter().enumerate() {
        let file = match load_seed_file(path) {
            Ok(file) => file,
            Err(message) => {
                problems.push(SeedProblem {
                    path: path.clone(),
                    keys: Vec::new(),
                    message,
                });
                continue;
            }
        };
        let for_thread = (path.clone(), make_server.clone());
        let thread_name = format!("seed-replay-{}", file.name);
        let judged = run_within_wall_budget(thread_name, budget, move || {
            let (path, make_server) = for_thread;
            wrong_verdict(&path, &file, make_server())
        });
        match judged {
            Ok(problem) => problems.extend(problem),
            Err(interrupted) => {
                let not_replayed = match interrupted {
                    ReplayInterrupted::Hang => files.len() - index - 1,
                    _ => 0,
                };
                problems.push(SeedProblem {
                    path: path.clone(),
                    keys: vec![interrupted.key().to_string()],
                    message: interrupted.describe(path, budget, not_replayed),
                });
                if interrupted == ReplayInterrupted::Hang {
                    break;
                }
            }
        }
    }
    Ok((files.len(), problems))
}

/// Replays `file` against `server`: the problem, if its verdict is wrong.
fn wrong_verdict(path: &Path, file: &SeedFile, server: Rc<dyn ServerUnderTest>) -> Option<SeedProblem> {
    let replay = replay(file, server, false);
    let message = verdict(file, &replay).err()?;
    let mut keys: Vec<String> = replay.judged.failures.iter().map(|f| f.key.to_string()).collect();
    if !replay.unmet.is_empty() {
        keys.push("expectations".to_string());
    }
    if let Expect::Fail { invariant } = file.expect {
        if !replay.judged.fails_with(FailureKey::Invariant(invariant)) {
            keys.push(format!("expected-fail:{invariant}"));
        }
    }
    Some(SeedProblem {
        path: path.to_path_buf(),
        keys,
        message,
    })
}

/// The invariant a seed file documents, if it records one.
pub fn recorded_invariant(file: &SeedFile) -> Option<Invariant> {
    file.failure.as_ref().map(|f| f.invariant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_thread_gives_its_value_its_panic_or_a_hang() {
        let budget = Duration::from_secs(5);
        assert_eq!(run_within_wall_budget("ok".into(), budget, || 7), Ok(7));
        assert_eq!(
            run_within_wall_budget("panics".into(), budget, || -> u8 { panic!("fixture: boom") }),
            Err(ReplayInterrupted::Panic("fixture: boom".into()))
        );
        // A thread that outlives the budget (it sleeps rather than spins: no core wasted).
        let started = std::time::Instant::now();
        let blocked = run_within_wall_budget("blocks".into(), Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_secs(3))
        });
        assert_eq!(blocked, Err(ReplayInterrupted::Hang));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited for the blocked thread"
        );
    }

    #[test]
    fn the_budget_is_whole_seconds_above_zero() {
        assert_eq!(parse_budget_secs(" 90 "), Ok(Duration::from_secs(90)));
        for wrong in ["0", "", "1.5", "10m", "-3"] {
            let error = parse_budget_secs(wrong).unwrap_err();
            assert!(error.contains(SEED_REPLAY_BUDGET_ENV), "{error}");
        }
    }
}
