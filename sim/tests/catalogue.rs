//! The failure catalogue runs against the real core on every `cargo test`: every entry under
//! `seeds/catalogue/` must hold every global invariant and every expectation it states, within
//! the seed replay's wall-time budget. A failure names each failing file and its reasons.

use herald_properties::checkers::Category;
use herald_properties::expectations::Expectation;
use herald_sim::campaign::seeds::{repository_seeds_dir, seed_replay_wall_budget};
use herald_sim::catalogue::{default_jobs, load_catalogue, report, run_entries, run_entry, CatalogueEntry};
use herald_sim::server_under_test::{RealServer, ServerUnderTest};
use std::path::PathBuf;
use std::rc::Rc;

/// The minimum number of entries per family (issue 6).
const FAMILY_MINIMUMS: [(Category, usize); 5] = [
    (Category::BridgeInitialization, 15),
    (Category::CrossUserSecurity, 12),
    (Category::PerformanceLoad, 8),
    (Category::ReconnectionRecovery, 10),
    (Category::NotificationDelivery, 20),
];

/// The key scenario of each family, by exact name.
const KEY_SCENARIOS: [(Category, &str); 5] = [
    (
        Category::BridgeInitialization,
        "bridge_none_causes_silent_notification_failure",
    ),
    (Category::CrossUserSecurity, "shared_websocket_manager_leaks_user_data"),
    (Category::PerformanceLoad, "notification_delivery_latency_degradation"),
    (
        Category::ReconnectionRecovery,
        "notifications_lost_during_reconnection_window",
    ),
    (
        Category::NotificationDelivery,
        "websocket_connection_lost_during_tool_execution",
    ),
];

fn catalogue_dir() -> PathBuf {
    repository_seeds_dir().join("catalogue")
}

fn catalogue() -> Vec<CatalogueEntry> {
    load_catalogue(&catalogue_dir(), None).unwrap_or_else(|e| panic!("the catalogue does not load:\n{e}"))
}

fn real() -> Rc<dyn ServerUnderTest> {
    Rc::new(RealServer)
}

#[test]
fn catalogue_has_every_family_and_key_scenario() {
    let entries = catalogue();
    assert!(entries.len() >= 65, "{} entries, at least 65 expected", entries.len());
    for (family, minimum) in FAMILY_MINIMUMS {
        let count = entries.iter().filter(|e| e.seed_file.family == Some(family)).count();
        assert!(
            count >= minimum,
            "{}: {count} entries, at least {minimum} expected",
            family.as_str()
        );
    }
    for (family, name) in KEY_SCENARIOS {
        assert!(
            entries
                .iter()
                .any(|e| e.seed_file.name == name && e.seed_file.family == Some(family)),
            "key scenario {name} missing from {}",
            family.as_str()
        );
    }
    for entry in &entries {
        assert!(
            !entry.seed_file.expectations.is_empty(),
            "{}: a catalogue entry states what it is about",
            entry.path.display()
        );
    }
}

/// Every file is exactly what `SeedFile::to_json` writes (the format fuzz seeds use too), so a
/// diff of a catalogue file is always a real change. `HERALD_BLESS_CATALOGUE=1 cargo test -p
/// herald-sim --test catalogue canonical` rewrites hand-edited files into that form.
#[test]
fn catalogue_files_are_canonical() {
    let bless = std::env::var_os("HERALD_BLESS_CATALOGUE").is_some();
    let mut not_canonical = Vec::new();
    for entry in catalogue() {
        let text = std::fs::read_to_string(&entry.path).unwrap();
        let canonical = entry.seed_file.to_json();
        if text != canonical {
            if bless {
                std::fs::write(&entry.path, canonical).unwrap();
            } else {
                not_canonical.push(entry.path.display().to_string());
            }
        }
    }
    assert!(
        not_canonical.is_empty(),
        "not in canonical seed-file form (run with HERALD_BLESS_CATALOGUE=1 to rewrite): {not_canonical:?}"
    );
}

#[test]
fn whole_catalogue_passes_on_the_real_core() {
    let entries = catalogue();
    let started = std::time::Instant::now();
    let budget = seed_replay_wall_budget().unwrap_or_else(|e| panic!("{e}"));
    let results = run_entries(&entries, default_jobs(), real, budget);
    let failures: Vec<String> = entries
        .iter()
        .zip(&results)
        .filter(|(_, r)| !r.passed())
        .map(|(entry, result)| format!("{}:\n  - {}", entry.path.display(), result.reasons().join("\n  - ")))
        .collect();
    if !failures.is_empty() {
        eprintln!("{}", report(&entries, &results, false, started.elapsed()));
    }
    assert!(
        failures.is_empty(),
        "{} catalogue entries failed on the real core:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn an_unmet_expectation_fails_the_entry_and_the_report_says_so() {
    let entries = catalogue();
    let key = entries
        .iter()
        .find(|e| e.seed_file.name == "bridge_none_causes_silent_notification_failure")
        .expect("key scenario present");
    let mut broken = key.seed_file.clone();
    // Client 0 is never closed with 4001 in this scenario.
    broken
        .expectations
        .push(Expectation::ClosedWith { client: 0, code: 4001 });
    let result = run_entry(&broken, real());
    assert!(!result.passed());
    assert_eq!(result.unmet.len(), 1, "{:?}", result.unmet);
    assert!(result.reasons()[0].contains("4001"), "{:?}", result.reasons());
    let text = report(
        std::slice::from_ref(key),
        std::slice::from_ref(&result),
        true,
        std::time::Duration::ZERO,
    );
    assert!(
        text.contains("[CRITICAL] bridge_initialization / bridge_none_causes_silent_notification_failure"),
        "{text}"
    );
    assert!(
        text.contains("critical failures: bridge_none_causes_silent_notification_failure"),
        "{text}"
    );
    assert!(text.contains("VERDICT: FAIL"), "{text}");
    // The same entry, unmodified, passes.
    let again = run_entry(&key.seed_file, real());
    assert!(again.passed(), "{:?}", again.reasons());
}
