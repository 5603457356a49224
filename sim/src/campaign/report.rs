//! The campaign report: what ran, what failed (by invariant, category, severity, deduplicated
//! with counts) and what was covered. Printed as a summary at the end of `herald-sim fuzz` and
//! written as JSON with `--report`.

use super::case::{CaseFailure, FailureKey};
use herald_properties::checkers::{Category, Severity};
use herald_properties::coverage::Path as CoveragePath;
use serde::Serialize;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::io::{self, Write};

/// Case seeds listed per failure group, in the summary and the JSON report alike (a broken server
/// fails every case of an hour-long campaign); the group's count says how many there were, and
/// the report states the cap as `case_seeds_listed_max`.
pub const CASE_SEEDS_LISTED_MAX: usize = 10;
/// The shape of a failure group whose failure did not reproduce on re-run.
pub const NOT_REPRODUCED: &str = "not reproduced";
/// The shape of a failure group that was not shrunk (shrinking off, the key's budget spent, a
/// hang).
pub const NOT_SHRUNK: &str = "not shrunk";

/// The settings a campaign ran with, repeated in the report so it stands alone.
#[derive(Serialize, Debug, Clone)]
pub struct ReportSettings {
    pub seed_start: u64,
    pub shard: String,
    pub jobs: usize,
    pub size: String,
    pub swarm: bool,
    pub whole_quiet_period: bool,
    pub limit: String,
    pub shrink: bool,
    pub seeds_dir: Option<String>,
    pub git_revision: Option<String>,
}

/// How often one coverage path was reached.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct CoverageRow {
    pub path: CoveragePath,
    /// Cases in which the path was reached at least once.
    pub cases: u64,
    /// Times it was reached, over all cases.
    pub occurrences: u64,
}

/// Failures with the same key, the same fingerprint (crashes) and the same shrunk shape: one
/// bug, counted.
#[derive(Serialize, Debug, Clone)]
pub struct FailureGroup {
    pub key: FailureKey,
    /// What tells this crash from another of its kind ([`CaseFailure::fingerprint`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub severity: Severity,
    pub category: Category,
    /// Step types of the shrunk scenario, [`NOT_SHRUNK`] (shrinking off, or this key's shrink
    /// budget was spent on earlier failures) or [`NOT_REPRODUCED`].
    pub shape: String,
    pub count: u64,
    /// The first [`CASE_SEEDS_LISTED_MAX`] case seeds (rerun one alone with `herald-sim run
    /// --seed S --size SIZE`, unless `regenerates` is false).
    pub case_seeds: Vec<u64>,
    pub explanation: String,
    /// Other keys that failed in the first case of the group.
    pub also_failed: Vec<FailureKey>,
    pub seed_file: Option<String>,
    /// Files saved for later failures of the group: unshrunk failures cannot be told apart by
    /// shape, so each within the key's budget is saved.
    pub more_seed_files: Vec<String>,
    /// The failure did not recur when its scenario was re-run with the same world seed: the
    /// simulation is not deterministic there. Nothing is saved for it, since a seed file would
    /// replay to a pass and guard nothing.
    pub not_reproduced: bool,
    /// Whether `herald-sim run --seed <case seed>` regenerates the group's scenario: false for the
    /// hang of a scenario derived from the case while shrinking, which only its seed file holds.
    pub regenerates: bool,
    pub steps_before_shrink: usize,
    pub steps_after_shrink: Option<usize>,
    pub history_digest: Option<String>,
}

/// Everything a campaign found.
#[derive(Serialize, Debug, Clone)]
pub struct CampaignReport {
    pub settings: ReportSettings,
    pub cases_run: u64,
    pub cases_failed: u64,
    pub wall_ms: u64,
    pub cases_per_second: f64,
    /// Simulated time over all cases.
    pub simulated_ms: u64,
    /// Wall time spent inside worlds, summed over workers (excludes shrinking).
    pub world_wall_ms: u64,
    /// Simulated seconds per wall second of world time.
    pub simulated_per_wall: f64,
    /// Wall time from the start until the first failing case was judged (before shrinking).
    pub time_to_first_failure_ms: Option<u64>,
    pub failures_by_key: BTreeMap<String, u64>,
    pub failures_by_category: BTreeMap<String, u64>,
    pub failures_by_severity: BTreeMap<String, u64>,
    pub coverage: Vec<CoverageRow>,
    /// Paths no case reached: the campaign proves nothing about them.
    pub not_reached: Vec<CoveragePath>,
    /// Deduplicated failures, most frequent first.
    pub failures: Vec<FailureGroup>,
    /// The most case seeds a group lists ([`CASE_SEEDS_LISTED_MAX`]); its `count` says how many
    /// cases it had.
    pub case_seeds_listed_max: usize,
    /// Failing cases whose failure did not recur on re-run (see [`FailureGroup::not_reproduced`]).
    pub not_reproduced: u64,
    /// Seed files or markers that could not be written.
    pub io_errors: Vec<String>,
}

impl CampaignReport {
    pub fn failed(&self) -> bool {
        self.cases_failed > 0 || self.not_reproduced > 0
    }

    /// The summary printed at the end of a campaign.
    pub fn print_summary(&self, out: &mut dyn Write) -> io::Result<()> {
        let s = &self.settings;
        writeln!(out, "\n=== herald-sim fuzz summary ===")?;
        writeln!(
            out,
            "settings: SEED={} shard={} jobs={} size={} swarm={}{} limit={} shrink={}{}",
            s.seed_start,
            s.shard,
            s.jobs,
            s.size,
            s.swarm,
            if s.whole_quiet_period {
                " whole-quiet-period"
            } else {
                ""
            },
            s.limit,
            s.shrink,
            s.git_revision
                .as_ref()
                .map(|r| format!(" git={}", &r[..r.len().min(12)]))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "cases: {} run, {} failed in {:.1}s ({:.1} cases/s); simulated {:.0}s ({:.0}x wall)",
            self.cases_run,
            self.cases_failed,
            self.wall_ms as f64 / 1000.0,
            self.cases_per_second,
            self.simulated_ms as f64 / 1000.0,
            self.simulated_per_wall
        )?;
        if let Some(ms) = self.time_to_first_failure_ms {
            writeln!(out, "first failure after {:.2}s", ms as f64 / 1000.0)?;
        }
        writeln!(out, "\nfailures by invariant:")?;
        write_counts(out, &self.failures_by_key)?;
        writeln!(out, "failures by category:")?;
        write_counts(out, &self.failures_by_category)?;
        writeln!(out, "failures by severity:")?;
        write_counts(out, &self.failures_by_severity)?;

        writeln!(out, "\ncoverage ({} cases):", self.cases_run)?;
        writeln!(out, "  {:<30} {:>8} {:>12}", "path", "cases", "occurrences")?;
        for row in &self.coverage {
            let flag = if row.cases == 0 { "  NOT REACHED" } else { "" };
            writeln!(
                out,
                "  {:<30} {:>8} {:>12}{flag}",
                row.path.as_str(),
                row.cases,
                row.occurrences
            )?;
        }
        if self.not_reached.is_empty() {
            writeln!(out, "every coverage path was reached")?;
        } else {
            let names: Vec<&str> = self.not_reached.iter().map(|p| p.as_str()).collect();
            writeln!(
                out,
                "NOT REACHED: {} (this campaign proves nothing about them)",
                names.join(", ")
            )?;
        }

        if !self.failures.is_empty() {
            writeln!(out, "\ndeduplicated failures ({} groups):", self.failures.len())?;
        }
        for group in &self.failures {
            writeln!(
                out,
                "  {}× {} [{} / {}] shape: {}",
                group.count,
                group.key,
                group.severity.as_str(),
                group.category.as_str(),
                group.shape
            )?;
            if let Some(fingerprint) = &group.fingerprint {
                writeln!(out, "     fingerprint: {fingerprint}")?;
            }
            writeln!(out, "     {}", group.explanation)?;
            if !group.also_failed.is_empty() {
                let also: Vec<&str> = group.also_failed.iter().map(|k| k.as_str()).collect();
                writeln!(out, "     also failed: {}", also.join(", "))?;
            }
            let seeds: Vec<String> = group.case_seeds.iter().map(u64::to_string).collect();
            let unlisted = group.count.saturating_sub(group.case_seeds.len() as u64);
            let more = if unlisted > 0 {
                format!(" (the first {} of {})", group.case_seeds.len(), group.count)
            } else {
                String::new()
            };
            writeln!(out, "     case seeds: {}{more}", seeds.join(" "))?;
            let first_seed = group.case_seeds.first().copied().unwrap_or(0);
            if group.not_reproduced {
                writeln!(
                    out,
                    "     NOT REPRODUCIBLE: the re-run with the same world seed did not fail {}; this scenario was not saved. \
                     Check with: {}",
                    group.key,
                    super::check_determinism_command(first_seed, &s.size, s.swarm, s.whole_quiet_period)
                )?;
            }
            let steps = match group.steps_after_shrink {
                Some(after) => format!("shrunk {} → {after} steps", group.steps_before_shrink),
                None => format!("{} steps, not shrunk", group.steps_before_shrink),
            };
            match &group.seed_file {
                Some(file) => writeln!(
                    out,
                    "     {steps}; reproduce with: cargo run --release -p herald-sim -- replay {file}"
                )?,
                None if group.regenerates => writeln!(
                    out,
                    "     reproduce with: {}",
                    super::run_command(first_seed, &s.size, s.swarm, s.whole_quiet_period)
                )?,
                None => writeln!(
                    out,
                    "     not saved; `run --seed {first_seed}` regenerates the case, not this scenario (derived \
                     from it while shrinking)"
                )?,
            }
            for file in &group.more_seed_files {
                writeln!(out, "     also saved: {file}")?;
            }
        }
        if self.not_reproduced > 0 {
            writeln!(
                out,
                "\nNOT REPRODUCIBLE: {} failing case(s) did not fail again when re-run with the same world \
                 seed: the simulation is not deterministic, a bug of its own (their groups say how to check)",
                self.not_reproduced
            )?;
        }
        for error in &self.io_errors {
            writeln!(out, "I/O ERROR: {error}")?;
        }
        let verdict = match (self.failed(), self.not_reproduced) {
            (false, _) => "no invariant failed".to_string(),
            (true, 0) => "FAILED".to_string(),
            (true, n) => format!("FAILED ({n} failure(s) not reproducible: a determinism bug)"),
        };
        writeln!(out, "\nverdict: {verdict}")?;
        Ok(())
    }
}

fn write_counts(out: &mut dyn Write, counts: &BTreeMap<String, u64>) -> io::Result<()> {
    if counts.is_empty() {
        return writeln!(out, "  (none)");
    }
    for (name, count) in counts {
        writeln!(out, "  {name:<30} {count:>8}")?;
    }
    Ok(())
}

/// Running totals of a campaign, shared by the workers.
#[derive(Default)]
pub(crate) struct Aggregate {
    pub cases_run: u64,
    pub cases_failed: u64,
    pub simulated_ms: u64,
    pub world_wall: std::time::Duration,
    pub first_failure_ms: Option<u64>,
    pub coverage: BTreeMap<CoveragePath, (u64, u64)>,
    pub by_key: BTreeMap<String, u64>,
    pub by_category: BTreeMap<String, u64>,
    pub by_severity: BTreeMap<String, u64>,
    /// By key, fingerprint and shape.
    pub groups: BTreeMap<(FailureKey, Option<String>, String), FailureGroup>,
    /// Shrinks started per key (bounded by `shrinks_per_key`).
    pub shrinks_started: BTreeMap<FailureKey, usize>,
    pub io_errors: Vec<String>,
}

impl FailureGroup {
    /// A group for `failure` with nothing saved, shrunk or counted yet: callers set what they
    /// have, and [`Aggregate::add_to_group`] counts it. `not_reproduced` follows the shape.
    pub(crate) fn new(
        failure: &CaseFailure,
        shape: String,
        also_failed: Vec<FailureKey>,
        steps_before_shrink: usize,
    ) -> FailureGroup {
        FailureGroup {
            key: failure.key,
            fingerprint: failure.fingerprint.clone(),
            severity: failure.severity,
            category: failure.category,
            not_reproduced: shape == NOT_REPRODUCED,
            regenerates: true,
            shape,
            count: 0,
            case_seeds: Vec::new(),
            explanation: failure.explanation.clone(),
            also_failed,
            seed_file: None,
            more_seed_files: Vec::new(),
            steps_before_shrink,
            steps_after_shrink: None,
            history_digest: None,
        }
    }
}

impl Aggregate {
    pub fn add_coverage(&mut self, reached: &BTreeMap<CoveragePath, u64>) {
        for (path, count) in reached {
            let entry = self.coverage.entry(*path).or_default();
            if *count > 0 {
                entry.0 += 1;
                entry.1 += count;
            }
        }
    }

    pub fn coverage_reached(&self) -> usize {
        self.coverage.values().filter(|(cases, _)| *cases > 0).count()
    }

    /// Counts a failing case (its primary failure).
    pub fn count_failure(&mut self, primary: &CaseFailure, elapsed_ms: u64) {
        self.cases_failed += 1;
        self.first_failure_ms.get_or_insert(elapsed_ms);
        *self.by_key.entry(primary.key.to_string()).or_default() += 1;
        *self
            .by_category
            .entry(primary.category.as_str().to_string())
            .or_default() += 1;
        *self
            .by_severity
            .entry(primary.severity.as_str().to_string())
            .or_default() += 1;
    }

    /// Reserves the group of `group` (its key, fingerprint and shape) unless it exists: `false`
    /// when it did, i.e. the failure is a bug already found. A reserved group counts nothing
    /// until [`Aggregate::add_to_group`] adds the failure (with the seed file saved meanwhile).
    pub fn reserve_group(&mut self, group: &FailureGroup) -> bool {
        match self.groups.entry(group_key(group)) {
            Entry::Occupied(_) => false,
            Entry::Vacant(vacant) => {
                vacant.insert(FailureGroup {
                    count: 0,
                    case_seeds: Vec::new(),
                    ..group.clone()
                });
                true
            }
        }
    }

    /// Adds a failure to its group (creating it from `group` if new), keeping its seed file.
    pub fn add_to_group(&mut self, group: FailureGroup, case_seed: u64) {
        let entry = match self.groups.entry(group_key(&group)) {
            Entry::Vacant(vacant) => vacant.insert(FailureGroup {
                count: 0,
                case_seeds: Vec::new(),
                ..group
            }),
            Entry::Occupied(occupied) => {
                let entry = occupied.into_mut();
                if let Some(file) = group.seed_file {
                    match entry.seed_file {
                        None => entry.seed_file = Some(file),
                        Some(_) => entry.more_seed_files.push(file),
                    }
                }
                entry
            }
        };
        entry.count += 1;
        if entry.case_seeds.len() < CASE_SEEDS_LISTED_MAX {
            entry.case_seeds.push(case_seed);
        }
    }
}

/// What [`Aggregate::groups`] is keyed by.
fn group_key(group: &FailureGroup) -> (FailureKey, Option<String>, String) {
    (group.key, group.fingerprint.clone(), group.shape.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_properties::seed_file::CrashKind;

    fn group(fingerprint: &str, shape: &str) -> FailureGroup {
        let failure =
            CaseFailure::crash(CrashKind::Panic, "boom".into(), Vec::new()).fingerprinted("world", fingerprint);
        FailureGroup::new(&failure, shape.into(), Vec::new(), 4)
    }

    /// The check for a known bug and the claim of a new one are one step: of two workers that
    /// found one bug at once, only the first saves it; another crash, or another shape, is new.
    #[test]
    fn a_group_is_reserved_once_and_counted_when_added() {
        let mut aggregate = Aggregate::default();
        assert!(aggregate.reserve_group(&group("a", "connect")));
        assert!(!aggregate.reserve_group(&group("a", "connect")), "already reserved");
        assert!(aggregate.reserve_group(&group("b", "connect")), "another crash");
        assert!(aggregate.reserve_group(&group("a", "connect,burst")), "another shape");
        assert!(
            aggregate.groups.values().all(|g| g.count == 0),
            "reserving counts nothing"
        );

        let saved = FailureGroup {
            seed_file: Some("seeds/panic-1.json".into()),
            ..group("a", "connect")
        };
        aggregate.add_to_group(saved, 7);
        aggregate.add_to_group(group("a", "connect"), 8);
        let entry = &aggregate.groups[&group_key(&group("a", "connect"))];
        assert_eq!(entry.count, 2);
        assert_eq!(entry.case_seeds, vec![7, 8]);
        assert_eq!(entry.seed_file.as_deref(), Some("seeds/panic-1.json"));
        assert!(entry.more_seed_files.is_empty());
    }
}
