//! Seed files on disk: writing a campaign's failures, the in-progress marker that keeps a hang
//! or an abort reproducible, and replaying a file to a verdict — the one verdict function used by
//! `herald-sim replay` and by `cargo test` (`sim/tests/seeds_replay.rs`), so both agree.

use super::case::{run_and_judge, CaseFailure, FailureKey, Judged};
use crate::server_under_test::ServerUnderTest;
use herald_properties::checkers::Invariant;
use herald_properties::expectations::check_expectations;
use herald_properties::scenario::Scenario;
use herald_properties::seed_file::{Expect, SeedFile, SEED_FORMAT_VERSION};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::rc::Rc;

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

/// Replays every fuzz seed file in `dir` (see [`seed_files_in`]) and returns the ones whose
/// verdict is wrong. A missing directory has no seeds.
pub fn replay_dir(
    dir: &Path,
    make_server: &dyn Fn() -> Rc<dyn ServerUnderTest>,
) -> Result<(usize, Vec<SeedProblem>), String> {
    if !dir.exists() {
        return Ok((0, Vec::new()));
    }
    let files = seed_files_in(dir)?;
    let mut problems = Vec::new();
    for path in &files {
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
        let replay = replay(&file, make_server(), false);
        if let Err(message) = verdict(&file, &replay) {
            let mut keys: Vec<String> = replay.judged.failures.iter().map(|f| f.key.to_string()).collect();
            if !replay.unmet.is_empty() {
                keys.push("expectations".to_string());
            }
            if let Expect::Fail { invariant } = file.expect {
                if !replay.judged.fails_with(FailureKey::Invariant(invariant)) {
                    keys.push(format!("expected-fail:{invariant}"));
                }
            }
            problems.push(SeedProblem {
                path: path.clone(),
                keys,
                message,
            });
        }
    }
    Ok((files.len(), problems))
}

/// The invariant a seed file documents, if it records one.
pub fn recorded_invariant(file: &SeedFile) -> Option<Invariant> {
    file.failure.as_ref().map(|f| f.invariant)
}
