//! The property test of `cargo test`: generated scenarios run against the real core, and every
//! invariant must hold. `HERALD_SIM_CASES` sets the number of cases per size (default 12 tiny +
//! 12 small, half of them with swarm testing); CI runs more with `herald-sim fuzz`.
//!
//! On a failure the shrunk seed file is printed in full: save it under `seeds/` and replay it
//! with `cargo run --release -p herald-sim -- replay seeds/<file>`.

use herald_properties::generators::Size;
use herald_sim::campaign::{fuzz, CampaignReport, FuzzOptions, Limit};
use herald_sim::server_under_test::{RealServer, ServerUnderTest};
use std::rc::Rc;

const CASES_DEFAULT: u64 = 12;

fn cases() -> u64 {
    std::env::var("HERALD_SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

fn campaign(size: Size, seed_start: u64) -> CampaignReport {
    let dir = std::env::temp_dir().join(format!("herald-sim-proptest-{}-{}", size.as_str(), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cases = cases();
    let mut reports = Vec::new();
    for swarm in [false, true] {
        let options = FuzzOptions {
            limit: Limit::Cases(cases.div_ceil(2)),
            jobs: 2,
            seed_start,
            swarm,
            size,
            seeds_dir: Some(dir.clone()),
            ..FuzzOptions::cases(0)
        };
        let report = fuzz(&options, &|| Rc::new(RealServer) as Rc<dyn ServerUnderTest>);
        if report.failed() {
            let mut text = Vec::new();
            report.print_summary(&mut text).unwrap();
            let files: String = report
                .failures
                .iter()
                .filter_map(|g| g.seed_file.as_ref())
                .map(|f| format!("--- {f}\n{}", std::fs::read_to_string(f).unwrap_or_default()))
                .collect();
            panic!(
                "the real core failed an invariant ({size:?}, swarm {swarm}):\n{}\n{files}",
                String::from_utf8_lossy(&text)
            );
        }
        assert_eq!(report.cases_run, cases.div_ceil(2));
        assert!(report.simulated_ms > 0);
        reports.push(report);
    }
    let _ = std::fs::remove_dir_all(&dir);
    reports.pop().unwrap()
}

#[test]
fn generated_tiny_scenarios_hold_every_invariant_on_the_real_core() {
    campaign(Size::Tiny, 1_000);
}

#[test]
fn generated_small_scenarios_hold_every_invariant_on_the_real_core() {
    campaign(Size::Small, 2_000);
}
