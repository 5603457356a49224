//! Fuzz campaigns: generate scenarios, run them against a server, judge, shrink, save, report.
//!
//! This is how the simulation is used every day: CI runners call [`fuzz`] (through
//! `herald-sim fuzz`) for minutes or hours, every failure is shrunk and saved under `seeds/`,
//! and `cargo test` replays those files forever (see [`seeds`]).
//!
//! Case seeds: case `k` of shard `i/n` uses `seed_start + k*n + i`, so the N machines of a CI
//! matrix cover disjoint seeds with no coordinator, and any case reruns alone from its seed
//! (`herald-sim run --seed S --size SIZE [--swarm] [--whole-quiet-period]` regenerates the very
//! same scenario).
//!
//! Modules: [`case`] runs and judges one scenario (panics and hangs included), [`shrinking`]
//! drives the shrinker, [`dedup`] groups failures, [`seeds`] writes and replays seed files,
//! [`progress`] prints the live line, [`report`] aggregates and prints the summary, and
//! [`commands`] holds the CLI commands built on all of that.

pub mod case;
pub mod commands;
pub mod dedup;
mod fuzz;
pub mod progress;
pub mod report;
pub mod seeds;
pub mod shrinking;

pub use case::{CaseFailure, FailureKey};
pub use fuzz::{banner, fuzz, IO_ERRORS_LISTED_MAX};
pub use progress::ProgressMode;
pub use report::CampaignReport;

use herald_properties::generators::{generate, GeneratorSettings, Size};
use herald_properties::scenario::Scenario;
use std::path::PathBuf;
use std::time::Duration;

/// Predicate calls the shrinker may spend on one failure (each is one world run).
pub const SHRINK_ATTEMPTS_DEFAULT: usize = 300;
/// Failures re-run, saved (and shrunk, unless shrinking is off) per failure key (invariant or
/// crash kind) per campaign, except that a shrunk failure with the shape (and, for a crash, the
/// fingerprint) of an earlier one of its key is the same bug and not saved again; later failures
/// of the same key are counted and grouped (their first case seeds listed), but neither re-run,
/// shrunk nor saved (a broken server fails every case, and following each up would stall the
/// campaign).
pub const SHRINKS_PER_KEY_DEFAULT: usize = 3;
/// Wall time one world run may take before it is reported as a hang.
pub const CASE_WALL_BUDGET_DEFAULT: Duration = Duration::from_secs(60);
/// How long shrinking may continue after the campaign's time limit.
pub const SHRINK_GRACE: Duration = Duration::from_secs(60);

/// When a campaign stops starting new cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Run for this long (wall time); cases in flight finish.
    Time(Duration),
    /// Run exactly this many cases in this shard.
    Cases(u64),
}

/// Which slice of the seed space this process covers: shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// The whole seed space.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N` with `I < N`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| format!("shard {text:?} is not I/N (e.g. 0/8)"))?;
        let index: u64 = i
            .trim()
            .parse()
            .map_err(|_| format!("shard index {i:?} is not a number"))?;
        let count: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("shard count {n:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {text:?}: need 0 <= I < N (shards are 0-based)"));
        }
        Ok(Shard { index, count })
    }
}

/// The seed of case `k` of `shard`: disjoint across shards, dense within one.
pub fn case_seed(seed_start: u64, k: u64, shard: Shard) -> u64 {
    seed_start
        .wrapping_add(k.wrapping_mul(shard.count))
        .wrapping_add(shard.index)
}

/// Everything a campaign needs besides the server.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    pub limit: Limit,
    /// Worker threads, each with its own server object and one world at a time.
    pub jobs: usize,
    pub shard: Shard,
    pub seed_start: u64,
    pub swarm: bool,
    pub size: Size,
    /// Run every case's whole quiet period instead of ending its world once it has settled
    /// (`herald_properties::settling`): slower, but it also watches the idle tail.
    pub whole_quiet_period: bool,
    /// Where seed files (and the in-progress markers) go; `None` writes nothing.
    pub seeds_dir: Option<PathBuf>,
    pub shrink: bool,
    /// Predicate calls (world runs) per shrink.
    pub shrink_attempts: usize,
    /// See [`SHRINKS_PER_KEY_DEFAULT`].
    pub shrinks_per_key: usize,
    /// Stop starting cases once this many cases failed (benchmarks use 1).
    pub stop_after_failures: Option<usize>,
    /// Wall time one world run may take before it is reported as a hang.
    pub case_wall_budget: Duration,
    pub progress: ProgressMode,
    /// Interval of plain progress lines (when not on a terminal).
    pub plain_progress_interval: Duration,
}

impl FuzzOptions {
    /// A quiet campaign of `cases` small cases on one thread, writing nothing: the base tests
    /// and benchmarks adjust.
    pub fn cases(cases: u64) -> FuzzOptions {
        FuzzOptions {
            limit: Limit::Cases(cases),
            jobs: 1,
            shard: Shard::ALL,
            seed_start: 0,
            swarm: false,
            size: Size::Small,
            whole_quiet_period: false,
            seeds_dir: None,
            shrink: true,
            shrink_attempts: SHRINK_ATTEMPTS_DEFAULT,
            shrinks_per_key: SHRINKS_PER_KEY_DEFAULT,
            stop_after_failures: None,
            case_wall_budget: CASE_WALL_BUDGET_DEFAULT,
            progress: ProgressMode::Quiet,
            plain_progress_interval: Duration::from_secs(10),
        }
    }

    /// The generator settings of every case.
    pub fn generator(&self) -> GeneratorSettings {
        GeneratorSettings {
            size: self.size,
            swarm: self.swarm,
        }
    }

    /// The scenario of the case with `seed`.
    pub fn scenario(&self, seed: u64) -> Scenario {
        generated_scenario(self.generator(), seed, self.whole_quiet_period)
    }
}

/// The generated scenario of `seed`, as every command builds it: `whole_quiet_period` (the
/// `--whole-quiet-period` flag) keeps the world running through its whole quiet period instead
/// of ending it once it has settled.
pub fn generated_scenario(settings: GeneratorSettings, seed: u64, whole_quiet_period: bool) -> Scenario {
    let mut scenario = generate(settings, seed);
    if whole_quiet_period {
        scenario.config.settle_ms = None;
    }
    scenario
}

/// The command that regenerates and reruns one case (when no seed file was saved for it).
pub fn run_command(seed: u64, size: &str, swarm: bool, whole_quiet_period: bool) -> String {
    format!(
        "cargo run --release -p herald-sim -- run --seed {seed} --size {size}{}{}",
        if swarm { " --swarm" } else { "" },
        if whole_quiet_period {
            " --whole-quiet-period"
        } else {
            ""
        }
    )
}

/// The command that runs one generated case twice and compares the histories' digests.
pub fn check_determinism_command(seed: u64, size: &str, swarm: bool, whole_quiet_period: bool) -> String {
    format!(
        "cargo run --release -p herald-sim -- check-determinism --seed-start {seed} --cases 1 --size {size}{}{}",
        if swarm { " --swarm" } else { "" },
        if whole_quiet_period {
            " --whole-quiet-period"
        } else {
            ""
        }
    )
}

/// Parses `90`, `90s`, `10m`, `1h`, `1h30m`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("duration {text:?}: expected a number at {rest:?}"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {text:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value * 60),
            "h" => Duration::from_secs(value * 3600),
            _ => return Err(format!("duration {text:?}: unknown unit {unit:?} (use ms, s, m, h)")),
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn shards_cover_disjoint_seeds_and_together_a_dense_range() {
        let mut seen = BTreeSet::new();
        for index in 0..8 {
            let shard = Shard { index, count: 8 };
            for k in 0..100 {
                assert!(seen.insert(case_seed(1000, k, shard)), "seed reused across shards");
            }
        }
        assert_eq!(
            seen.iter().copied().collect::<Vec<_>>(),
            (1000..1800).collect::<Vec<_>>()
        );
        assert_eq!(case_seed(5, 3, Shard::ALL), 8);
    }

    #[test]
    fn shard_and_duration_parsing() {
        assert_eq!(Shard::parse("3/8"), Ok(Shard { index: 3, count: 8 }));
        assert!(Shard::parse("8/8").is_err());
        assert!(Shard::parse("1").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
    }
}
