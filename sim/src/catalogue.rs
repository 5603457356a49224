//! The failure catalogue: hand-written scenarios, one per known way a WebSocket notification
//! system fails, stored as seed files under `seeds/catalogue/<family>/<name>.json` and run
//! against the real core forever.
//!
//! An entry passes when every global invariant holds ([`check_all`]), every expectation of the
//! file holds ([`check_expectations`]), and no host of the world failed (a panic or a world
//! limit is recorded as a `Failure` observation, which no invariant reads). [`run_entry`] takes
//! the server under test explicitly, so the broken-server fixtures in `sim/tests/` can prove
//! that each family's scenarios are able to fail. [`run_entries`] gives each entry the seed
//! replay's wall-time budget (`campaign::seeds::run_within_wall_budget`): an entry whose world
//! spins forever fails as a `hang` instead of hanging `cargo test`.

use crate::campaign::seeds::{run_within_wall_budget, seed_replay_wall_budget, ReplayInterrupted};
use crate::server_under_test::{RealServer, ServerUnderTest};
use crate::world::{run_with, WorldOptions};
use herald_properties::checkers::{check_all, Category, Invariant, Severity, Violation};
use herald_properties::expectations::check_expectations;
use herald_properties::history::Observation;
use herald_properties::seed_file::{Expect, SeedFile};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the catalogue lives, relative to the workspace root.
pub const CATALOGUE_DIR: &str = "seeds/catalogue";
/// Worker threads the suite uses at most (one turmoil world each; worlds are single-threaded).
pub const SUITE_JOBS_MAX: usize = 8;

/// `herald-sim suite`: run the catalogue and print a test report.
#[derive(clap::Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Run only this family: bridge_initialization, cross_user_security, performance_load,
    /// reconnection_recovery or notification_delivery.
    #[arg(long)]
    pub family: Option<String>,
    /// The catalogue directory (one sub-directory per family).
    #[arg(long, default_value = CATALOGUE_DIR)]
    pub dir: PathBuf,
    /// Print every entry with its timing, not only the failures.
    #[arg(long)]
    pub verbose: bool,
    /// Worker threads (default: the machine's parallelism, at most SUITE_JOBS_MAX).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// One catalogue file, loaded.
#[derive(Debug, Clone)]
pub struct CatalogueEntry {
    pub path: PathBuf,
    pub seed_file: SeedFile,
}

/// What running one entry gave.
#[derive(Debug, Clone)]
pub struct EntryResult {
    pub name: String,
    pub family: Option<Category>,
    pub severity: Option<Severity>,
    /// Global invariant violations (at most one per invariant).
    pub violations: Vec<Violation>,
    /// Unmet scenario expectations, one message each.
    pub unmet: Vec<String>,
    /// Panics and world errors recorded in the history.
    pub world_failures: Vec<String>,
    /// What the file says replaying it must give.
    pub expect: Expect,
    pub history_digest: String,
    pub simulated_ms: u64,
    pub wall: Duration,
    /// Why the entry has no verdict, when it has none: its replay hung or panicked, or it was
    /// not run because another one hung. The entry fails with this as its only reason.
    pub unfinished: Option<String>,
}

impl EntryResult {
    /// Whether the run gave the verdict the file asks for: as `seeds::verdict` judges a seed
    /// file, `expect: fail` needs that invariant to fail and everything else to hold, so a new
    /// bug cannot hide behind a documented one.
    pub fn passed(&self) -> bool {
        self.reasons().is_empty()
    }

    /// Every reason the entry failed, one line each (empty when it passed).
    pub fn reasons(&self) -> Vec<String> {
        if let Some(unfinished) = &self.unfinished {
            return vec![unfinished.clone()];
        }
        let expected = match &self.expect {
            Expect::Pass => None,
            Expect::Fail { invariant } => Some(*invariant),
        };
        let mut reasons: Vec<String> = self
            .violations
            .iter()
            .filter(|v| Some(v.invariant) != expected)
            .map(|v| format!("invariant {v}"))
            .collect();
        reasons.extend(self.unmet.iter().map(|u| format!("expectation: {u}")));
        reasons.extend(self.world_failures.iter().map(|f| format!("world failure: {f}")));
        if let Some(invariant) = expected {
            if !self.violations.iter().any(|v| v.invariant == invariant) {
                reasons.push(format!(
                    "expected invariant {invariant} to fail (a documented open bug), but it held"
                ));
            }
        }
        reasons
    }

    /// A security failure: a cross-user-security entry failed, or any entry broke isolation or
    /// auth.
    pub fn is_security_failure(&self) -> bool {
        !self.passed()
            && (self.family == Some(Category::CrossUserSecurity)
                || self
                    .violations
                    .iter()
                    .any(|v| matches!(v.invariant, Invariant::Isolation | Invariant::Auth)))
    }
}

/// Runs one catalogue entry against `server` and judges it.
pub fn run_entry(seed_file: &SeedFile, server: Rc<dyn ServerUnderTest>) -> EntryResult {
    let started = std::time::Instant::now();
    let output = run_with(
        &seed_file.scenario,
        seed_file.seed,
        WorldOptions { server, trace: false },
    );
    let wall = started.elapsed();
    let history = output.history;
    let violations = check_all(&seed_file.scenario, &history);
    let unmet = check_expectations(&seed_file.scenario, &history, &seed_file.expectations);
    let world_failures = history
        .entries
        .iter()
        .filter_map(|e| match &e.what {
            Observation::Failure { host, message } => Some(format!("{host} at {} ms: {message}", e.at_ms)),
            _ => None,
        })
        .collect();
    EntryResult {
        name: seed_file.name.clone(),
        family: seed_file.family,
        severity: seed_file.severity,
        violations,
        unmet,
        world_failures,
        expect: seed_file.expect.clone(),
        history_digest: history.digest(),
        simulated_ms: history.end_at_ms().unwrap_or(0),
        wall,
        unfinished: None,
    }
}

/// The result of an entry that has no verdict (see [`EntryResult::unfinished`]).
fn unfinished_entry(seed_file: &SeedFile, reason: String, wall: Duration) -> EntryResult {
    EntryResult {
        name: seed_file.name.clone(),
        family: seed_file.family,
        severity: seed_file.severity,
        violations: Vec::new(),
        unmet: Vec::new(),
        world_failures: Vec::new(),
        expect: seed_file.expect.clone(),
        history_digest: String::new(),
        simulated_ms: 0,
        wall,
        unfinished: Some(reason),
    }
}

/// Parses a family name as written in file names and on the command line.
pub fn parse_family(name: &str) -> Result<Category, String> {
    Category::ALL.into_iter().find(|c| c.as_str() == name).ok_or_else(|| {
        let names: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
        format!("unknown family {name:?}; expected one of {}", names.join(", "))
    })
}

/// Loads every entry under `dir/<family>/*.json` (all families, or one), sorted by path.
/// A file that does not parse, sits in the wrong family directory, or whose `name` is not its
/// file stem is an error: a catalogue entry that silently does not run guards nothing.
pub fn load_catalogue(dir: &Path, family: Option<Category>) -> Result<Vec<CatalogueEntry>, String> {
    let families: Vec<Category> = match family {
        Some(family) => vec![family],
        None => Category::ALL.to_vec(),
    };
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for family in families {
        let family_dir = dir.join(family.as_str());
        let listing = match std::fs::read_dir(&family_dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot list {}: {e}", family_dir.display())),
        };
        let mut paths: Vec<PathBuf> = listing
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for path in paths {
            match load_entry(&path, family) {
                Ok(entry) => entries.push(entry),
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    Ok(entries)
}

fn load_entry(path: &Path, family: Category) -> Result<CatalogueEntry, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let seed_file = SeedFile::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if seed_file.name != stem {
        return Err(format!(
            "{}: name {:?} differs from the file name",
            path.display(),
            seed_file.name
        ));
    }
    if seed_file.family != Some(family) {
        return Err(format!(
            "{}: family {:?} differs from its directory {}",
            path.display(),
            seed_file.family.map(Category::as_str),
            family.as_str()
        ));
    }
    if seed_file.severity.is_none() || seed_file.description.trim().is_empty() {
        return Err(format!(
            "{}: a catalogue entry needs a severity and a description",
            path.display()
        ));
    }
    Ok(CatalogueEntry {
        path: path.to_path_buf(),
        seed_file,
    })
}

/// Runs `entries` on `jobs` worker threads, each entry against its own server from `server`
/// (worlds and servers are single-threaded, so each thread builds its own). Results keep the
/// input order.
///
/// Each entry replays within `budget` ([`seed_replay_wall_budget`]) on a thread of its own, as
/// `seeds::replay_dir` replays a seed file: one that outlives it fails as a `hang`, and no
/// entry starts after that (each fails as not run).
pub fn run_entries(
    entries: &[CatalogueEntry],
    jobs: usize,
    server: impl Fn() -> Rc<dyn ServerUnderTest> + Send + Sync + 'static,
    budget: Duration,
) -> Vec<EntryResult> {
    let jobs = jobs.clamp(1, SUITE_JOBS_MAX).min(entries.len().max(1));
    let server = Arc::new(server);
    let next = AtomicUsize::new(0);
    let hung = AtomicBool::new(false);
    let outcomes: Mutex<Vec<Option<Result<EntryResult, ReplayInterrupted>>>> = Mutex::new(vec![None; entries.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                if hung.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(entry) = entries.get(i) else {
                    return;
                };
                let for_thread = (entry.seed_file.clone(), server.clone());
                let thread_name = format!("catalogue-replay-{}", entry.seed_file.name);
                let outcome = run_within_wall_budget(thread_name, budget, move || {
                    let (seed_file, server) = for_thread;
                    run_entry(&seed_file, server())
                });
                if matches!(outcome, Err(ReplayInterrupted::Hang)) {
                    hung.store(true, Ordering::SeqCst);
                }
                outcomes.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(outcome);
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_else(|p| p.into_inner());
    let not_run = outcomes.iter().filter(|o| o.is_none()).count();
    entries
        .iter()
        .zip(outcomes)
        .map(|(entry, outcome)| match outcome {
            Some(Ok(result)) => result,
            Some(Err(interrupted)) => {
                let reason = format!(
                    "{}: {}",
                    interrupted.key(),
                    interrupted.describe(&entry.path, budget, not_run)
                );
                let wall = if interrupted == ReplayInterrupted::Hang {
                    budget
                } else {
                    Duration::ZERO
                };
                unfinished_entry(&entry.seed_file, reason, wall)
            }
            None => unfinished_entry(
                &entry.seed_file,
                "not run: another entry's replay hung (see its `hang` reason)".into(),
                Duration::ZERO,
            ),
        })
        .collect()
}

/// The machine's parallelism, capped at [`SUITE_JOBS_MAX`].
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(SUITE_JOBS_MAX)
}

/// `herald-sim suite`: runs the catalogue against the real core and prints the report. Exit 0
/// when every entry passed, 1 when any failed; `Err` (exit 2) on usage or I/O errors.
pub fn suite(args: SuiteArgs) -> Result<ExitCode, String> {
    let family = args.family.as_deref().map(parse_family).transpose()?;
    let entries = load_catalogue(&args.dir, family)?;
    if entries.is_empty() {
        return Err(format!("no catalogue entries under {}", args.dir.display()));
    }
    let started = std::time::Instant::now();
    let budget = seed_replay_wall_budget()?;
    let results = run_entries(
        &entries,
        args.jobs.unwrap_or_else(default_jobs),
        || Rc::new(RealServer),
        budget,
    );
    print!("{}", report(&entries, &results, args.verbose, started.elapsed()));
    Ok(if results.iter().all(EntryResult::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The suite's report as text: per-entry lines (failures always, all with `verbose`), the
/// failures listed by severity (critical first), counts by family and severity, security
/// failures, and a verdict line.
pub fn report(entries: &[CatalogueEntry], results: &[EntryResult], verbose: bool, wall: Duration) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let failed: Vec<(&CatalogueEntry, &EntryResult)> =
        entries.iter().zip(results).filter(|(_, r)| !r.passed()).collect();
    if verbose {
        for (entry, result) in entries.iter().zip(results) {
            let _ = writeln!(
                out,
                "{} {:<24} {:<9} {:<60} sim {:>6.1}s wall {:>6.2}s",
                if result.passed() { "PASS" } else { "FAIL" },
                family_name(result.family),
                severity_name(result.severity),
                result.name,
                result.simulated_ms as f64 / 1000.0,
                result.wall.as_secs_f64()
            );
            if verbose && !result.passed() {
                let _ = writeln!(out, "     {}", entry.path.display());
            }
        }
        let _ = writeln!(out);
    }
    let mut by_severity = failed.clone();
    by_severity.sort_by_key(|(_, r)| (r.severity.unwrap_or(Severity::Low), r.family, r.name.clone()));
    if !by_severity.is_empty() {
        let _ = writeln!(out, "FAILURES (critical first):");
        for (entry, result) in &by_severity {
            let _ = writeln!(
                out,
                "  [{}] {} / {} ({})",
                severity_name(result.severity).to_uppercase(),
                family_name(result.family),
                result.name,
                entry.path.display()
            );
            for reason in result.reasons() {
                let _ = writeln!(out, "      - {reason}");
            }
            let _ = writeln!(
                out,
                "      replay (checks its expectations too): cargo run --release -p herald-sim -- replay {}",
                entry.path.display()
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "catalogue: {} entries", results.len());
    let _ = writeln!(out, "  {:<24} {:>6} {:>6} {:>6}", "family", "total", "passed", "failed");
    for family in Category::ALL {
        let of: Vec<&EntryResult> = results.iter().filter(|r| r.family == Some(family)).collect();
        if of.is_empty() {
            continue;
        }
        let failed = of.iter().filter(|r| !r.passed()).count();
        let _ = writeln!(
            out,
            "  {:<24} {:>6} {:>6} {:>6}",
            family.as_str(),
            of.len(),
            of.len() - failed,
            failed
        );
    }
    let severities = [Severity::Critical, Severity::High, Severity::Medium, Severity::Low];
    let counts: Vec<String> = severities
        .iter()
        .map(|s| {
            let n = failed.iter().filter(|(_, r)| r.severity == Some(*s)).count();
            format!("{} {n}", s.as_str())
        })
        .collect();
    let _ = writeln!(out, "failures by severity: {}", counts.join(", "));
    let critical: Vec<&str> = by_severity
        .iter()
        .filter(|(_, r)| r.severity == Some(Severity::Critical))
        .map(|(_, r)| r.name.as_str())
        .collect();
    let high: Vec<&str> = by_severity
        .iter()
        .filter(|(_, r)| r.severity == Some(Severity::High))
        .map(|(_, r)| r.name.as_str())
        .collect();
    let _ = writeln!(out, "critical failures: {}", list_or_none(&critical));
    let _ = writeln!(out, "high-priority failures: {}", list_or_none(&high));
    let security: Vec<&str> = by_severity
        .iter()
        .filter(|(_, r)| r.is_security_failure())
        .map(|(_, r)| r.name.as_str())
        .collect();
    let _ = writeln!(
        out,
        "security violations: {} {}",
        security.len(),
        list_or_none(&security)
    );
    let simulated_ms: u64 = results.iter().map(|r| r.simulated_ms).sum();
    let _ = writeln!(
        out,
        "total {}, passed {}, failed {} ({:.0} simulated s in {:.1} s wall)",
        results.len(),
        results.len() - failed.len(),
        failed.len(),
        simulated_ms as f64 / 1000.0,
        wall.as_secs_f64()
    );
    let verdict = if failed.is_empty() {
        "VERDICT: PASS — every catalogue entry held its invariants and expectations".to_string()
    } else if !critical.is_empty() || !security.is_empty() {
        format!(
            "VERDICT: FAIL — {} entries failed, {} critical, {} security",
            failed.len(),
            critical.len(),
            security.len()
        )
    } else {
        format!("VERDICT: FAIL — {} entries failed", failed.len())
    };
    let _ = writeln!(out, "{verdict}");
    out
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn family_name(family: Option<Category>) -> &'static str {
    family.map_or("(no family)", Category::as_str)
}

fn severity_name(severity: Option<Severity>) -> &'static str {
    severity.map_or("(none)", Severity::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(expect: Expect, failed: &[Invariant]) -> EntryResult {
        EntryResult {
            name: "entry".into(),
            family: None,
            severity: None,
            violations: failed
                .iter()
                .map(|&invariant| Violation {
                    invariant,
                    severity: Severity::High,
                    category: Category::NotificationDelivery,
                    explanation: "x".into(),
                    evidence: Vec::new(),
                })
                .collect(),
            unmet: Vec::new(),
            world_failures: Vec::new(),
            expect,
            history_digest: String::new(),
            simulated_ms: 0,
            wall: Duration::ZERO,
            unfinished: None,
        }
    }

    #[test]
    fn a_known_failure_does_not_hide_another() {
        let known = Expect::Fail {
            invariant: Invariant::Order,
        };
        assert!(result(known.clone(), &[Invariant::Order]).passed());
        let other = result(known.clone(), &[Invariant::Order, Invariant::NoDuplicates]);
        assert!(!other.passed());
        assert!(other.reasons()[0].contains("no_duplicates"), "{:?}", other.reasons());
        let held = result(known, &[]);
        assert!(held.reasons()[0].contains("but it held"), "{:?}", held.reasons());
        assert!(result(Expect::Pass, &[]).passed());
        assert!(!result(Expect::Pass, &[Invariant::Order]).passed());
    }
}
