//! The seed file: one replayable scenario in pretty JSON, for saved fuzz failures
//! (`seeds/*.json`) and for the failure catalogue (`seeds/catalogue/<family>/<name>.json`) alike.
//!
//! A seed file stores the *shrunk scenario itself*, not only the generator seed, so it replays
//! with the same meaning after the generators change (proptest's regression files store seeds
//! and silently change meaning). `format_version` is checked on load.

use crate::checkers::{Category, Invariant, Severity};
use crate::expectations::Expectation;
use crate::scenario::Scenario;
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to this file's shape.
pub const SEED_FORMAT_VERSION: u32 = 1;

/// One saved scenario.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    pub format_version: u32,
    /// Stable and readable: `<invariant>-<short hash>` for fuzz failures, the scenario's name
    /// (e.g. `websocket_connection_lost_during_tool_execution`) in the catalogue.
    pub name: String,
    /// The failure family the scenario guards against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Category>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// The user-visible failure this scenario guards against, in one paragraph.
    #[serde(default)]
    pub description: String,
    /// The world seed the scenario runs with.
    pub seed: u64,
    /// How the scenario was generated, when it was (absent for hand-written ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorInfo>,
    pub scenario: Scenario,
    /// Scenario-specific expectations beyond the global invariants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expectations: Vec<Expectation>,
    /// What failed when the file was written (fuzz failures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<RecordedFailure>,
    /// A crash rather than a broken invariant (fuzz failures only): a host panicked or errored,
    /// the world or a checker panicked, or the world exceeded its wall-time budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash: Option<RecordedCrash>,
    /// `git rev-parse HEAD` when the file was written, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_revision: Option<String>,
    /// What replaying it must give. `pass` for regression tests (the default); `fail` marks a
    /// seed that documents a known-open failure of the named invariant.
    #[serde(default)]
    pub expect: Expect,
}

/// The generator settings and seed that produced a scenario.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GeneratorInfo {
    pub seed: u64,
    pub size: String,
    pub swarm: bool,
    /// The campaign ran with `--whole-quiet-period`, which clears the generated scenario's
    /// `settle_ms`: without it, `run --seed S --size .. --swarm` would regenerate a scenario that
    /// ends once settled, not the one that failed. Omitted when false, so files written before
    /// it was recorded read as false and re-save byte for byte.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole_quiet_period: bool,
}

/// The failure observed when a fuzz campaign saved the file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecordedFailure {
    pub invariant: Invariant,
    pub explanation: String,
    /// Digest of the history in which it failed; a replay reproduces it exactly.
    pub history_digest: String,
    /// Steps before and after shrinking.
    pub steps_before_shrink: usize,
    pub steps_after_shrink: usize,
}

/// How a run crashed, when a fuzz campaign saved it for that reason.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecordedCrash {
    pub kind: CrashKind,
    pub message: String,
    /// Digest of the history of the crashed run (absent for a hang: there is no history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_digest: Option<String>,
    pub steps_before_shrink: usize,
    pub steps_after_shrink: usize,
}

/// The ways a run can fail without an invariant verdict.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum CrashKind {
    /// A host panicked or returned an error (a `Failure` entry in the history).
    HostFailure,
    /// The world or a checker panicked outside any host.
    Panic,
    /// The world exceeded the campaign's wall-time budget per run.
    Hang,
}

impl CrashKind {
    /// The serde name, used in seed file names and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CrashKind::HostFailure => "host_failure",
            CrashKind::Panic => "panic",
            CrashKind::Hang => "hang",
        }
    }
}

/// The verdict a replay must reach.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Expect {
    /// Every invariant and expectation holds.
    #[default]
    Pass,
    /// This invariant is known to fail (an open bug documented by a seed).
    Fail { invariant: Invariant },
}

impl SeedFile {
    /// Parses and checks the format version.
    pub fn from_json(text: &str) -> Result<SeedFile, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let version = value.get("format_version").and_then(|v| v.as_u64());
        if version != Some(u64::from(SEED_FORMAT_VERSION)) {
            return Err(format!(
                "format_version {version:?} is not the supported {SEED_FORMAT_VERSION}"
            ));
        }
        serde_json::from_value(value).map_err(|e| format!("not a seed file: {e}"))
    }

    /// Pretty JSON with a trailing newline, as stored in git.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("seed files always serialize");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_generator(generator: &str) -> String {
        let scenario = Scenario {
            config: crate::scenario::ScenarioConfig::default(),
            steps: Vec::new(),
        };
        let scenario = serde_json::to_string(&scenario).unwrap();
        let file = format!(
            r#"{{"format_version": 1, "name": "x", "seed": 7, "generator": {generator}, "scenario": {scenario}}}"#
        );
        SeedFile::from_json(&file).unwrap().to_json()
    }

    #[test]
    fn the_generator_records_whole_quiet_period_and_older_files_stay_byte_identical() {
        let old = with_generator(r#"{"seed": 7, "size": "small", "swarm": true}"#);
        let parsed = SeedFile::from_json(&old).unwrap();
        assert!(!parsed.generator.as_ref().unwrap().whole_quiet_period);
        assert_eq!(parsed.to_json(), old, "an older file re-saves byte for byte");
        assert!(!old.contains("whole_quiet_period"), "{old}");

        let whole = with_generator(r#"{"seed": 7, "size": "small", "swarm": true, "whole_quiet_period": true}"#);
        let parsed = SeedFile::from_json(&whole).unwrap();
        assert!(parsed.generator.as_ref().unwrap().whole_quiet_period);
        assert_eq!(parsed.to_json(), whole);
    }
}
