//! Seed files on disk: writing a campaign's failures, the in-progress marker that keeps a hang
//! or an abort reproducible, and replaying a file to a verdict — the one verdict function used by
//! `herald-sim replay` and by `cargo test` (`sim/tests/seeds_replay.rs`), so both agree.
//!
//! Hangs: a world that spins inside one turmoil step cannot be interrupted, so `cargo test`
//! replays each file on its own detached thread ([`run_within_wall_budget`], shared with the
//! catalogue) and reports one that outlives [`SEED_REPLAY_WALL_BUDGET_SECS`] as a `hang`,
//! naming the file, instead of waiting for it forever. `herald-sim replay` runs its one file
//! within the same budget ([`replay_within_wall_budget`]), so replaying a hang seed ends too.
//!
//! A hang seed (`crash.kind: hang`) is the scenario a campaign worker was running when that run
//! outlived the campaign's `--hang-budget` (a case, or a follow-up run of a failing case: its
//! reproduction, a shrink candidate, its shrunk scenario): the watchdog saves it at once,
//! unshrunk and never re-run (a re-run could take another budget's worth, or spin a second
//! thread forever), with no digest and `expect: pass`, and with no `generator` block when the
//! scenario was derived while shrinking (the generator regenerates the case, not it). So a
//! replay that still outlives the replay budget fails as a `hang`, and one that ends judges the
//! scenario like any other: the hang is fixed, or the campaign's machine was merely overloaded
//! (raise `--hang-budget` there).
//!
//! Several campaigns may share one seeds directory (two shards in one checkout, or shards in
//! containers sharing a bind-mounted directory, where each may well run as pid 1): the files a
//! process writes as it goes (temporary files, the write probe, in-progress markers) carry a
//! random nonce drawn once per process ([`process_nonce`]), markers the shard index too, and a
//! seed file is never overwritten by another scenario or world seed.

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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
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

/// Writes `file` as `<dir>/<file.name>.json` (creating `dir`); returns the path it is at.
///
/// The name hashes the scenario only, so a file of that name may already be there. When it
/// holds the same scenario and world seed it is this very reproduction, and is left alone. When
/// it holds another world seed (the same shrunk scenario, found from another case) it would not
/// reproduce this failure, so the file goes to `<name>-w<world seed>.json` instead of being
/// announced as the reproduction. Existing files are never overwritten, also not by another
/// process sharing the directory at the same moment (see [`write_new_atomically`]).
pub fn write_seed_file(dir: &Path, file: &SeedFile) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut file = file.clone();
    for name in [file.name.clone(), format!("{}-w{}", file.name, file.seed)] {
        let path = dir.join(format!("{name}.json"));
        file.name = name;
        if write_new_atomically(&path, &file.to_json())? {
            return Ok(path);
        }
        let same = load_seed_file(&path)
            .is_ok_and(|existing| existing.seed == file.seed && existing.scenario == file.scenario);
        if same {
            return Ok(path);
        }
    }
    Err(format!(
        "cannot save {} in {}: both its names are taken by files holding other scenarios or world seeds",
        file.name,
        dir.display()
    ))
}

/// Distinguishes the temporary files (and write probes) of one process's concurrent writes.
static TEMP_FILES: AtomicU64 = AtomicU64::new(0);

/// Sixteen hex digits drawn once per process from OS entropy ([`herald_core::rng::os_seed`]),
/// naming the files a campaign writes as it goes. A process
/// id is no such name: shards in containers sharing a bind-mounted seeds directory often all
/// run as pid 1. Campaign bookkeeping only: nothing a world runs or records reads it.
pub fn process_nonce() -> &'static str {
    static NONCE: OnceLock<String> = OnceLock::new();
    NONCE.get_or_init(|| format!("{:016x}", herald_core::rng::os_seed()))
}

/// A temporary file next to `path` that no other write uses: `.<file name>.<nonce>-<n>.tmp`.
/// A name derived from `path` alone was shared by every process writing that path (two fuzz
/// shards in one seeds directory), each renaming the other's file away. Dot-prefixed, so a
/// leftover (the process was killed) is never listed as a seed file; `.tmp`, so git ignores it.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let n = TEMP_FILES.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}-{n}.tmp", process_nonce()))
}

/// Writes through a temporary file and a rename, so a crash never leaves half a seed file.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let tmp = write_temp(path, text)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename {} to {}: {e}", tmp.display(), path.display())
    })
}

/// Writes `text` to a [`temp_path`] of `path` and returns it.
fn write_temp(path: &Path, text: &str) -> Result<PathBuf, String> {
    let tmp = temp_path(path);
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Like [`write_atomically`], but never replaces an existing `path`: `false` when one is there.
/// The temporary file is hard-linked to `path`, which fails when `path` exists, even when another
/// process creates it at the same moment; a file system without hard links gets a plain check
/// and rename instead.
pub fn write_new_atomically(path: &Path, text: &str) -> Result<bool, String> {
    if path.exists() {
        return Ok(false);
    }
    let tmp = write_temp(path, text)?;
    let linked = std::fs::hard_link(&tmp, path);
    let result = match linked {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) if path.exists() => Ok(false),
        Err(_) => std::fs::rename(&tmp, path)
            .map(|()| true)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display())),
    };
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Checks that seed files can be written in `dir` (creating it), by writing and removing a
/// probe file: a campaign finds this out before its first case, not an hour later.
pub fn check_writable(dir: &Path) -> Result<(), String> {
    let fail = |error: String| format!("the seeds directory {} is not writable: {error}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
    // A name of its own per check: campaigns starting together in one directory (threads of one
    // process, or containers with one pid) never remove each other's probe.
    let n = TEMP_FILES.fetch_add(1, Ordering::Relaxed);
    let probe = dir.join(format!(".write-check-{}-{n}.tmp", process_nonce()));
    write_atomically(&probe, "{}\n").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(|e| fail(format!("cannot remove {}: {e}", probe.display())))
}

/// `<dir>/.in-progress-s<shard>-<nonce>-<worker>.json`: the scenario a worker of shard `shard`
/// (its index) of this process is running right now, as a seed file (replayable with
/// `herald-sim replay`). Written before each run and removed after, like shuttle's
/// `SHUTTLE_ALWAYS_PERSIST_SEED`, so a hang or a killed job stays reproducible. The shard index
/// and the [`process_nonce`] keep campaigns sharing `dir` off each other's markers, also
/// shards in containers that all run as pid 1 (and two shards of one process).
pub fn in_progress_path(dir: &Path, shard: u64, worker: usize) -> PathBuf {
    dir.join(format!(".in-progress-s{shard}-{}-{worker}.json", process_nonce()))
}

/// Appended to the revision of a work tree with uncommitted changes to tracked files: the
/// revision alone would name code the file was not written with.
pub const DIRTY_SUFFIX: &str = "-dirty";

/// `git rev-parse HEAD` of the current directory's repository, with [`DIRTY_SUFFIX`] when a
/// tracked file differs from it, if git and a repository are there. Metadata only: no history
/// depends on it.
pub fn git_revision() -> Option<String> {
    git_revision_in(Path::new("."))
}

/// [`git_revision`] of the repository at `dir`. Untracked files (new seed files among them) do
/// not make a tree dirty.
pub fn git_revision_in(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|output| output.status.success())
    };
    let head = git(&["rev-parse", "HEAD"])?;
    let revision = String::from_utf8(head.stdout).ok()?.trim().to_string();
    if revision.len() < 7 {
        return None;
    }
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.stdout.is_empty());
    Some(if dirty {
        format!("{revision}{DIRTY_SUFFIX}")
    } else {
        revision
    })
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

/// Replays `file` as [`replay`] does, on a thread of its own against a server from
/// `make_server`, within `budget`: `herald-sim replay` of a hang seed (or of any file whose world
/// now spins) ends with [`ReplayInterrupted::Hang`] instead of running forever with no output.
pub fn replay_within_wall_budget(
    file: &SeedFile,
    make_server: impl FnOnce() -> Rc<dyn ServerUnderTest> + Send + 'static,
    trace: bool,
    budget: Duration,
) -> Result<Replay, ReplayInterrupted> {
    let file = file.clone();
    let thread_name = format!("replay-{}", file.name);
    run_within_wall_budget(thread_name, budget, move || replay(&file, make_server(), trace))
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

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-seeds-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn scenario(users: u32) -> Scenario {
        Scenario {
            config: herald_properties::scenario::ScenarioConfig {
                users,
                ..Default::default()
            },
            steps: Vec::new(),
        }
    }

    /// Concurrent writers of one path (two workers, or two campaigns sharing a directory) each
    /// use a temporary file of their own: none renames another's away.
    #[test]
    fn concurrent_atomic_writes_of_one_path_never_collide() {
        let dir = temp_dir("concurrent-writes");
        let path = dir.join(".in-progress-x.json");
        let writers: Vec<_> = (0..4)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .filter_map(|_| write_atomically(&path, &format!("writer {i}\n")).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for writer in writers {
            let errors = writer.join().unwrap();
            assert!(errors.is_empty(), "{errors:?}");
        }
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from(".in-progress-x.json")],
            "no temporary file left"
        );
        let marker = in_progress_path(&dir, 5, 3);
        assert!(
            marker.ends_with(format!(".in-progress-s5-{}-3.json", process_nonce())),
            "{marker:?}"
        );
        assert_eq!(process_nonce().len(), 16);
        assert_eq!(process_nonce(), process_nonce(), "drawn once per process");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The same shrunk scenario found under another world seed is not announced as the existing
    /// file: it goes under a name of its own, and no file is ever overwritten.
    #[test]
    fn a_seed_file_never_stands_for_another_world_seed() {
        let dir = temp_dir("same-scenario");
        let name = seed_name(FailureKey::Crash(CrashKind::Panic), &scenario(2));
        let first = bare_seed_file(name.clone(), 1, scenario(2));
        let path = write_seed_file(&dir, &first).unwrap();
        assert_eq!(path, dir.join(format!("{name}.json")));
        assert_eq!(
            write_seed_file(&dir, &first).unwrap(),
            path,
            "the same reproduction is there"
        );

        let other_seed = bare_seed_file(name.clone(), 9, scenario(2));
        let other = write_seed_file(&dir, &other_seed).unwrap();
        assert_eq!(other, dir.join(format!("{name}-w9.json")));
        let saved = load_seed_file(&other).unwrap();
        assert_eq!((saved.name, saved.seed), (format!("{name}-w9"), 9));
        assert_eq!(load_seed_file(&path).unwrap(), first, "the first file is untouched");
        assert_eq!(write_seed_file(&dir, &other_seed).unwrap(), other);

        // Both names held by other files (a hash collision, or hand-made files): an error.
        let taken = bare_seed_file(format!("{name}-w11"), 11, scenario(3));
        std::fs::write(dir.join(format!("{name}-w11.json")), taken.to_json()).unwrap();
        let third = bare_seed_file(name, 11, scenario(2));
        assert!(write_seed_file(&dir, &third).unwrap_err().contains("names are taken"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_seeds_directory_is_found_before_anything_runs() {
        let dir = temp_dir("unwritable");
        let file = dir.join("a-file");
        std::fs::write(&file, "").unwrap();
        let error = check_writable(&file.join("seeds")).unwrap_err();
        assert!(error.contains("is not writable"), "{error}");
        check_writable(&dir.join("seeds")).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.join("seeds")).unwrap().collect();
        assert!(left.is_empty(), "the probe is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_revision_of_a_tree_with_uncommitted_changes_is_marked_dirty() {
        let dir = temp_dir("git");
        let git = |args: &[&str]| {
            let status = std::process::Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "-c",
                    "commit.gpgsign=false",
                ])
                .args(args)
                .output()
                .expect("git runs");
            assert!(status.status.success(), "git {args:?}: {status:?}");
        };
        git(&["init", "-q"]);
        std::fs::write(dir.join("a.txt"), "one").unwrap();
        git(&["add", "a.txt"]);
        git(&["commit", "-q", "-m", "one"]);
        std::fs::write(dir.join("untracked.json"), "{}").unwrap();
        let clean = git_revision_in(&dir).unwrap();
        assert_eq!(clean.len(), 40, "{clean}");
        std::fs::write(dir.join("a.txt"), "two").unwrap();
        assert_eq!(git_revision_in(&dir).unwrap(), format!("{clean}{DIRTY_SUFFIX}"));
        let _ = std::fs::remove_dir_all(&dir);
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
