//! Time to find (issue 9): for every deliberately broken test server, how long a real fuzz
//! campaign (`herald_sim::campaign::fuzz`, the library behind `herald-sim fuzz`) takes to hit
//! its first failure, how many cases that took, and how small the shrunk scenario is.
//!
//! Per fixture it runs `--campaigns` campaigns (default 5) with different start seeds, each with
//! `jobs` workers (default 2), `stop_after_failures = 1`, shrinking on with the campaign's
//! default budget, and nothing written to disk unless `--seeds-dir DIR` names where the
//! shrunk seed files go. Reported per fixture: wall time from the start
//! of the campaign until the first failing case was judged (median and max; the campaign's own
//! `time_to_first_failure_ms`), cases run until the campaign stopped, the failure key found
//! (and whether it is the invariant the fixture's doc names), and the shrunk scenario's steps.
//!
//! The fixtures are `sim/tests/fixtures` (test/bench only, never in the `herald` binary).
//! Skipped: `identity_proxy` (not a bug; it must pass everything) and `global_lock_fan_out`
//! (a latency-only bug with no invariant of its own: the catalogue's `delivery_latency_below`
//! expectations catch it, see `sim/tests/catalogue_bites.rs`).
//!
//! ```text
//! cargo bench -p herald-sim --bench time_to_find                                   # 5 campaigns each
//! cargo bench -p herald-sim --bench time_to_find -- --campaigns 7 --swarm --size small
//! cargo bench -p herald-sim --bench time_to_find -- --bugs stuck_resume,ignores_expiry
//! cargo bench -p herald-sim --bench time_to_find -- --bugs no_request_deadline --seeds-dir /tmp/ttf-seeds
//! ```
//! Run outside `cargo bench` (e.g. `cargo test --all-targets`) it does one tiny smoke campaign.

#[path = "../tests/fixtures/mod.rs"]
mod fixtures;

/// The same allocator as the `herald-sim` binary (see sim/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use herald_properties::checkers::Invariant;
use herald_properties::generators::Size;
use herald_sim::campaign::{fuzz, CampaignReport, FailureKey, FuzzOptions, Limit, ProgressMode};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Start seed of campaign `i`: far apart, and away from the seeds the tests hunt from (0..).
fn start_seed(i: usize) -> u64 {
    1_000_003 * (i as u64 + 1)
}

/// The invariant each fixture's doc comment says must fire (the ones the bench measures).
fn expected_invariant(name: &str) -> Option<Invariant> {
    Some(match name {
        "shared_buffer_leak" => Invariant::Isolation,
        "replay_from_after" => Invariant::NoDuplicates,
        "live_before_replay" => Invariant::Order,
        "silent_drop_on_overflow" => Invariant::NoSilentLoss,
        "gap_on_every_resume" => Invariant::HonestGaps,
        "swallowing_notifier" => Invariant::NoSilentFailure,
        "stuck_resume" => Invariant::Liveness,
        "unbounded_queue" => Invariant::BoundedResources,
        "no_request_deadline" => Invariant::BoundedResources,
        "ignores_sockets_max" => Invariant::BoundedResources,
        "ignores_expiry" => Invariant::Auth,
        "ignores_audience" => Invariant::Auth,
        "at_least_once_bridge" => Invariant::NoDuplicates,
        "drops_stream_on_last_tab" => Invariant::HonestGaps,
        "inflated_first_head" => Invariant::NoSilentLoss,
        "one_tab_per_user" => Invariant::Liveness,
        "concatenated_frames" => Invariant::Isolation,
        "delayed_live_flush" => Invariant::Liveness,
        "keeps_closed_sockets" => Invariant::BoundedResources,
        "forgets_quiet_streams" => Invariant::HonestGaps,
        "epoch_blind_resume" => Invariant::Liveness,
        "fan_out_cancelled_with_the_request" => Invariant::NoSilentLoss,
        _ => return None,
    })
}

struct Options {
    campaigns: usize,
    jobs: usize,
    size: Size,
    swarm: bool,
    /// Wall-time limit per campaign: a campaign that finds nothing by then counts as a miss.
    limit: Duration,
    bugs: Option<Vec<String>>,
    /// Where the campaigns write their seed files, so that a shrunk scenario can be read and
    /// replayed (`herald-sim replay`); `None` (the default) writes nothing.
    seeds_dir: Option<PathBuf>,
    smoke: bool,
}

fn parse_options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = Options {
        campaigns: 5,
        jobs: 2,
        size: Size::Small,
        swarm: false,
        limit: Duration::from_secs(120),
        bugs: None,
        seeds_dir: None,
        smoke: !args.iter().any(|a| a == "--bench"),
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let mut takes_value = true;
        match args[i].as_str() {
            "--campaigns" => options.campaigns = value.parse().expect("--campaigns N"),
            "--jobs" => options.jobs = value.parse().expect("--jobs N"),
            "--size" => options.size = Size::parse(&value).unwrap_or_else(|| panic!("unknown size {value}")),
            "--limit-secs" => options.limit = Duration::from_secs(value.parse().expect("--limit-secs N")),
            "--bugs" => options.bugs = Some(value.split(',').map(str::to_string).collect()),
            "--seeds-dir" => options.seeds_dir = Some(PathBuf::from(&value)),
            "--swarm" => {
                options.swarm = true;
                takes_value = false;
            }
            _ => takes_value = false,
        }
        i += if takes_value { 2 } else { 1 };
    }
    if options.smoke {
        options.campaigns = 1;
        options.size = Size::Tiny;
        options.bugs = Some(vec!["replay_from_after".into()]);
    }
    options
}

/// One campaign's outcome.
struct Outcome {
    first_failure_ms: Option<u64>,
    wall_ms: u64,
    cases_run: u64,
    key: Option<FailureKey>,
    expected_fired: bool,
    steps_before: Option<usize>,
    steps_after: Option<usize>,
}

fn campaign(options: &Options, make: fixtures::hunt::MakeServer, expected: Invariant, seed_start: u64) -> Outcome {
    let mut fuzz_options = FuzzOptions::cases(u64::MAX);
    fuzz_options.limit = Limit::Time(options.limit);
    fuzz_options.jobs = options.jobs;
    fuzz_options.seed_start = seed_start;
    fuzz_options.size = options.size;
    fuzz_options.swarm = options.swarm;
    fuzz_options.stop_after_failures = Some(1);
    fuzz_options.shrinks_per_key = 1;
    fuzz_options.progress = ProgressMode::Quiet;
    fuzz_options.seeds_dir = options.seeds_dir.clone();
    let make_server = move || make();
    let started = Instant::now();
    let report: CampaignReport = fuzz(&fuzz_options, &make_server);
    let wall_ms = started.elapsed().as_millis() as u64;
    // The group that was shrunk (the first failure's key); others were counted after the stop.
    let shrunk = report.failures.iter().find(|g| g.steps_after_shrink.is_some());
    let first = shrunk.or(report.failures.first());
    let expected_key = FailureKey::Invariant(expected);
    Outcome {
        first_failure_ms: report.time_to_first_failure_ms,
        wall_ms,
        cases_run: report.cases_run,
        key: first.map(|g| g.key),
        expected_fired: report
            .failures
            .iter()
            .any(|g| g.key == expected_key || g.also_failed.contains(&expected_key)),
        steps_before: first.map(|g| g.steps_before_shrink),
        steps_after: first.and_then(|g| g.steps_after_shrink),
    }
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    let n = values.len();
    if n == 0 {
        0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2}", ms as f64 / 1000.0)
}

fn main() {
    let options = parse_options();
    println!(
        "# time_to_find: {} campaign(s) per fixture, jobs={}, size={}, swarm={}, stop after 1 failure, shrink on, limit {}s per campaign{}",
        options.campaigns,
        options.jobs,
        options.size.as_str(),
        options.swarm,
        options.limit.as_secs(),
        if options.smoke { " (smoke pass)" } else { "" }
    );
    println!(
        "# start seeds: {:?}",
        (0..options.campaigns).map(start_seed).collect::<Vec<_>>()
    );
    println!("| fixture | expected invariant | found (key × campaigns) | expected fired | time to first failure median (s) | max (s) | cases run (median, max) | steps before shrink (median) | shrunk steps (median, max) | campaign wall incl. shrink, median (s) |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, make) in fixtures::bugs::all() {
        let Some(expected) = expected_invariant(name) else {
            eprintln!("skipping {name}: no invariant of its own");
            continue;
        };
        if options.bugs.as_ref().is_some_and(|b| !b.iter().any(|n| n == name)) {
            continue;
        }
        let outcomes: Vec<Outcome> = (0..options.campaigns)
            .map(|i| {
                let outcome = campaign(&options, make, expected, start_seed(i));
                eprintln!(
                    "{name} seed_start={}: first failure {:?} ms, {} cases, key {:?}, steps {:?} -> {:?}, wall {} ms",
                    start_seed(i),
                    outcome.first_failure_ms,
                    outcome.cases_run,
                    outcome.key.map(|k| k.as_str()),
                    outcome.steps_before,
                    outcome.steps_after,
                    outcome.wall_ms
                );
                outcome
            })
            .collect();
        let found: Vec<&Outcome> = outcomes.iter().filter(|o| o.first_failure_ms.is_some()).collect();
        let misses = outcomes.len() - found.len();
        let times: Vec<u64> = found.iter().filter_map(|o| o.first_failure_ms).collect();
        let cases: Vec<u64> = outcomes.iter().map(|o| o.cases_run).collect();
        let shrunk: Vec<u64> = found.iter().filter_map(|o| o.steps_after).map(|s| s as u64).collect();
        let before: Vec<u64> = found.iter().filter_map(|o| o.steps_before).map(|s| s as u64).collect();
        let mut keys: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for o in &found {
            *keys.entry(o.key.map_or("?", |k| k.as_str())).or_default() += 1;
        }
        let keys_text = keys
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let max_time = if misses > 0 {
            format!("> {} ({misses} miss)", options.limit.as_secs())
        } else {
            secs(times.iter().copied().max().unwrap_or(0))
        };
        println!(
            "| {name} | {} | {keys_text} | {}/{} | {} | {max_time} | {}, {} | {} | {}, {} | {} |",
            expected.as_str(),
            outcomes.iter().filter(|o| o.expected_fired).count(),
            outcomes.len(),
            secs(median(times)),
            median(cases.clone()),
            cases.iter().max().copied().unwrap_or(0),
            median(before),
            median(shrunk.clone()),
            shrunk.iter().max().copied().unwrap_or(0),
            secs(median(outcomes.iter().map(|o| o.wall_ms).collect())),
        );
    }
}
