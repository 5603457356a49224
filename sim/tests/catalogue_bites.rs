//! The catalogue can fail (issue 6): each of the five failure families has scenarios shown to
//! FAIL against a deliberately broken server (`fixtures/bugs.rs`), each of the five key scenarios
//! catches at least one bug, and each of those scenarios passes on the real core (the near miss:
//! the bug, not the scenario, makes it fail). Runs entries through `herald_sim::catalogue::run_entry`,
//! exactly as `herald-sim suite` and the catalogue test do. A server stuck in a busy loop fails
//! the catalogue too, as a `hang`, instead of hanging it (`run_entries`' wall-time budget).

mod fixtures;

use fixtures::bugs;
use fixtures::hunt::MakeServer;
use fixtures::spinning::spinning_servers;
use herald_properties::checkers::{Category, Invariant};
use herald_sim::campaign::seeds::repository_seeds_dir;
use herald_sim::catalogue::{load_catalogue, report, run_entries, run_entry, CatalogueEntry, EntryResult};
use herald_sim::server_under_test::RealServer;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What must show that the catalogue caught the bug.
enum Caught {
    /// This invariant is among the violations.
    Invariant(Invariant),
    /// A scenario-specific expectation is unmet whose message contains this text, and no global
    /// invariant fires (only the catalogue's own expectation catches the bug).
    OnlyExpectation(&'static str),
}

fn entry(family: Category, name: &str) -> CatalogueEntry {
    let dir = repository_seeds_dir().join("catalogue");
    let entries = load_catalogue(&dir, Some(family)).expect("the catalogue loads");
    entries
        .into_iter()
        .find(|e| e.seed_file.name == name)
        .unwrap_or_else(|| panic!("catalogue scenario {name} is missing from family {}", family.as_str()))
}

fn describe(result: &EntryResult) -> String {
    format!(
        "violations: {:?}\nunmet: {:?}\nworld failures: {:?}",
        result.violations.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        result.unmet,
        result.world_failures
    )
}

/// Runs catalogue scenario `name` of `family` against the broken server and the real one.
fn catches(family: Category, name: &str, bug: &str, make: MakeServer, caught: Caught) {
    let entry = entry(family, name);
    assert_eq!(entry.seed_file.family, Some(family));
    let broken = run_entry(&entry.seed_file, make());
    assert!(!broken.passed(), "{name} must fail against {bug}, but passed");
    match caught {
        Caught::Invariant(invariant) => assert!(
            broken.violations.iter().any(|v| v.invariant == invariant),
            "{name} against {bug}: expected {invariant} to fire\n{}",
            describe(&broken)
        ),
        Caught::OnlyExpectation(text) => {
            assert!(
                broken.violations.is_empty(),
                "{name} against {bug}: only the expectation should fire\n{}",
                describe(&broken)
            );
            assert!(
                broken.unmet.iter().any(|u| u.contains(text)),
                "{name} against {bug}: expected an unmet expectation about {text:?}\n{}",
                describe(&broken)
            );
        }
    }
    println!(
        "{} / {name} catches {bug}: {}",
        family.as_str(),
        broken
            .violations
            .first()
            .map(|v| v.to_string())
            .or_else(|| broken.unmet.first().cloned())
            .unwrap_or_default()
    );
    let real = run_entry(&entry.seed_file, Rc::new(RealServer));
    assert!(real.passed(), "{name} must pass on the real core\n{}", describe(&real));
}

// ------------------------------------------------------------------ the five key scenarios

#[test]
fn bridge_none_causes_silent_notification_failure_catches_a_swallowing_notifier() {
    catches(
        Category::BridgeInitialization,
        "bridge_none_causes_silent_notification_failure",
        "swallowing_notifier",
        bugs::swallowing_notifier,
        Caught::Invariant(Invariant::NoSilentFailure),
    );
}

#[test]
fn shared_websocket_manager_leaks_user_data_catches_a_shared_buffer_leak() {
    catches(
        Category::CrossUserSecurity,
        "shared_websocket_manager_leaks_user_data",
        "shared_buffer_leak",
        bugs::shared_buffer_leak,
        Caught::Invariant(Invariant::Isolation),
    );
}

#[test]
fn notification_delivery_latency_degradation_catches_a_global_writer_lock() {
    catches(
        Category::PerformanceLoad,
        "notification_delivery_latency_degradation",
        "global_lock_fan_out",
        bugs::global_lock_fan_out,
        Caught::OnlyExpectation("latency"),
    );
}

#[test]
fn notifications_lost_during_reconnection_window_catches_live_before_replay() {
    catches(
        Category::ReconnectionRecovery,
        "notifications_lost_during_reconnection_window",
        "live_before_replay",
        bugs::live_before_replay,
        Caught::Invariant(Invariant::Order),
    );
}

#[test]
fn notifications_lost_during_reconnection_window_catches_a_gap_on_every_resume() {
    catches(
        Category::ReconnectionRecovery,
        "notifications_lost_during_reconnection_window",
        "gap_on_every_resume",
        bugs::gap_on_every_resume,
        Caught::Invariant(Invariant::HonestGaps),
    );
}

#[test]
fn websocket_connection_lost_during_tool_execution_catches_replay_from_after() {
    catches(
        Category::NotificationDelivery,
        "websocket_connection_lost_during_tool_execution",
        "replay_from_after",
        bugs::replay_from_after,
        Caught::Invariant(Invariant::NoDuplicates),
    );
}

#[test]
fn websocket_connection_lost_during_tool_execution_catches_a_stuck_resume() {
    catches(
        Category::NotificationDelivery,
        "websocket_connection_lost_during_tool_execution",
        "stuck_resume",
        bugs::stuck_resume,
        Caught::Invariant(Invariant::Liveness),
    );
}

// ------------------------------------------------------------------ one more per family

#[test]
fn publish_after_graceful_shutdown_catches_a_swallowing_notifier() {
    catches(
        Category::BridgeInitialization,
        "publish_after_graceful_shutdown_is_typed_error",
        "swallowing_notifier",
        bugs::swallowing_notifier,
        Caught::Invariant(Invariant::NoSilentFailure),
    );
}

#[test]
fn expired_token_rejected_with_4002_catches_a_server_ignoring_expiry() {
    catches(
        Category::CrossUserSecurity,
        "expired_token_rejected_with_4002",
        "ignores_expiry",
        bugs::ignores_expiry,
        Caught::Invariant(Invariant::Auth),
    );
}

#[test]
fn wrong_audience_rejected_with_4001_catches_a_server_ignoring_the_audience() {
    catches(
        Category::CrossUserSecurity,
        "wrong_audience_rejected_with_4001",
        "ignores_audience",
        bugs::ignores_audience,
        Caught::Invariant(Invariant::Auth),
    );
}

#[test]
fn sustained_load_retention_bounded_catches_ignored_hub_limits() {
    catches(
        Category::PerformanceLoad,
        "sustained_load_retention_bounded_and_drops_back",
        "unbounded_queue",
        bugs::unbounded_queue,
        Caught::Invariant(Invariant::BoundedResources),
    );
}

#[test]
fn events_replayed_on_resume_after_drop_catches_a_gap_on_every_resume() {
    catches(
        Category::ReconnectionRecovery,
        "events_replayed_on_resume_after_drop",
        "gap_on_every_resume",
        bugs::gap_on_every_resume,
        Caught::Invariant(Invariant::HonestGaps),
    );
}

#[test]
fn tiny_send_queue_overflow_catches_a_silent_drop_on_overflow() {
    catches(
        Category::NotificationDelivery,
        "tiny_send_queue_overflow_recovers_without_loss",
        "silent_drop_on_overflow",
        bugs::silent_drop_on_overflow,
        Caught::Invariant(Invariant::NoSilentLoss),
    );
}

#[test]
fn stalled_http_sockets_are_closed_catches_a_server_without_a_request_deadline() {
    catches(
        Category::PerformanceLoad,
        "stalled_http_sockets_are_closed",
        "no_request_deadline",
        bugs::no_request_deadline,
        Caught::Invariant(Invariant::BoundedResources),
    );
}

// ------------------------------------------------------------------ a server that never returns

/// The first entry's world spins forever inside one turmoil step: it fails as a `hang` naming
/// its file once the budget has run out, the entries after it fail as not run, and the run
/// returns while the abandoned thread still spins.
#[test]
fn a_spinning_server_fails_the_catalogue_as_a_hang_instead_of_hanging_it() {
    let budget = Duration::from_secs(2);
    let dir = repository_seeds_dir().join("catalogue");
    let entries: Vec<CatalogueEntry> = load_catalogue(&dir, Some(Category::BridgeInitialization))
        .expect("the catalogue loads")
        .into_iter()
        .take(3)
        .collect();
    let (spinning, release) = spinning_servers();
    let started = Instant::now();
    let results = run_entries(&entries, 1, spinning, budget);
    assert!(started.elapsed() >= budget, "returned after {:?}", started.elapsed());
    assert!(results.iter().all(|r| !r.passed()));
    let hang = results[0].reasons();
    assert_eq!(hang.len(), 1, "{hang:?}");
    assert!(
        hang[0].starts_with("hang: the replay exceeded the wall-time budget of 2 s"),
        "{hang:?}"
    );
    assert!(hang[0].contains("2 further file(s) were not replayed"), "{hang:?}");
    assert!(hang[0].contains(&entries[0].path.display().to_string()), "{hang:?}");
    for not_run in &results[1..] {
        assert!(not_run.reasons()[0].starts_with("not run:"), "{:?}", not_run.reasons());
    }
    let text = report(&entries, &results, false, started.elapsed());
    assert!(text.contains("VERDICT: FAIL — 3 entries failed"), "{text}");
    drop(release);
}
