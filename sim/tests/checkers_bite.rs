//! Proof that the checkers bite, end to end: for every invariant, a deliberately broken server
//! (`fixtures/bugs.rs`, one realistic bug each, wrapping the real core) is run under generated
//! scenarios; the invariant must fire within a stated number of cases, the failure must shrink
//! to a scenario small enough to read, and that very scenario must pass on the real core (the
//! near miss: the bug, not the scenario, causes the failure).
//!
//! Every hunt starts at generator seed 0 and is deterministic (same seeds → same scenarios →
//! same histories), so the numbers printed (`--nocapture`) are the same on every run:
//! cases until found, steps before and after shrinking, world runs spent shrinking.

mod fixtures;

use fixtures::bugs;
use fixtures::hunt::{hunt, real_violations, run_on, Found, MakeServer};
use herald_properties::checkers::{check, check_all, Invariant};
use herald_properties::generators::{generate, GeneratorSettings, Size};
use herald_properties::scenario::{Attack, Step};
use herald_properties::seed_file::RecordedFailure;
use herald_sim::campaign::seeds::{
    bare_seed_file, load_seed_file, replay, replay_dir, repository_seeds_dir, seed_name, seed_replay_wall_budget,
    verdict, write_seed_file,
};
use herald_sim::campaign::FailureKey;
use herald_sim::server_under_test::{RealServer, ServerUnderTest};
use std::path::PathBuf;
use std::rc::Rc;

/// World runs the shrinker may spend per bite test (each is one tiny/small world run).
const SHRINK_ATTEMPTS: usize = 150;
/// Largest shrunk scenario accepted as "small enough to read".
const SHRUNK_STEPS_MAX: usize = 15;

fn tiny() -> GeneratorSettings {
    GeneratorSettings {
        size: Size::Tiny,
        swarm: false,
    }
}

fn small() -> GeneratorSettings {
    GeneratorSettings {
        size: Size::Small,
        swarm: false,
    }
}

/// Hunts `invariant` on `make()` within `cases_max` cases from seed 0, then asserts the shrunk
/// scenario is small and passes every invariant on the real core.
fn bites(name: &str, make: MakeServer, invariant: Invariant, settings: GeneratorSettings, cases_max: u64) -> Found {
    let found = hunt(name, make, invariant, settings, 0, cases_max, SHRINK_ATTEMPTS);
    println!(
        "{name}: {invariant} fired on case {} of at most {cases_max} ({:?}, seed {}); shrunk {} → {} steps in {} runs\n  original: {}\n  shrunk:   {}",
        found.cases,
        settings.size,
        found.seed,
        found.steps_before,
        found.shrunk.steps.len(),
        found.shrink_runs,
        found.violation,
        found.shrunk_violation,
    );
    assert!(
        found.shrunk.steps.len() <= SHRUNK_STEPS_MAX,
        "{name}: shrunk scenario has {} steps (> {SHRUNK_STEPS_MAX}):\n{}",
        found.shrunk.steps.len(),
        serde_json::to_string_pretty(&found.shrunk.steps).unwrap()
    );
    let real = real_violations(&found.shrunk, found.seed);
    assert!(
        real.is_empty(),
        "{name}: the shrunk scenario must pass on the real core, but: {real:?}"
    );
    // The failing case itself, unshrunk, passes on the real core too.
    let original = generate(settings, found.seed);
    let real = real_violations(&original, found.seed);
    assert!(
        real.is_empty(),
        "{name}: case seed {} must pass on the real core, but: {real:?}",
        found.seed
    );
    found
}

#[test]
fn identity_proxy_is_indistinguishable_from_the_real_server() {
    // The proxy that carries every WebSocket bug, with no bug in it, passes what the real core
    // passes: so a failure of a broken server comes from its bug, not from the proxy.
    let mut cases = 0;
    for (settings, seeds) in [
        (tiny(), 0..12),
        (small(), 0..12),
        (
            GeneratorSettings {
                size: Size::Small,
                swarm: true,
            },
            100..108,
        ),
    ] {
        for seed in seeds {
            let scenario = generate(settings, seed);
            let history = run_on(bugs::identity_proxy(), &scenario, seed);
            let violations = check_all(&scenario, &history);
            assert!(
                violations.is_empty(),
                "identity proxy, {settings:?} seed {seed}: {violations:?}"
            );
            cases += 1;
        }
    }
    println!("identity proxy: {cases} cases, no violation");
}

#[test]
fn isolation_bites_a_shared_send_buffer() {
    bites(
        "shared_buffer_leak",
        bugs::shared_buffer_leak,
        Invariant::Isolation,
        small(),
        10,
    );
}

#[test]
fn no_silent_loss_bites_a_silent_drop_on_overflow() {
    bites(
        "silent_drop_on_overflow",
        bugs::silent_drop_on_overflow,
        Invariant::NoSilentLoss,
        tiny(),
        20,
    );
}

#[test]
fn no_duplicates_bites_a_replay_from_after() {
    bites(
        "replay_from_after",
        bugs::replay_from_after,
        Invariant::NoDuplicates,
        tiny(),
        10,
    );
}

#[test]
fn no_duplicates_bites_an_at_least_once_bridge() {
    bites(
        "at_least_once_bridge",
        bugs::at_least_once_bridge,
        Invariant::NoDuplicates,
        tiny(),
        20,
    );
}

#[test]
fn order_bites_live_events_sent_before_the_replay() {
    bites(
        "live_before_replay",
        bugs::live_before_replay,
        Invariant::Order,
        small(),
        10,
    );
}

#[test]
fn honest_gaps_bites_a_gap_on_every_resume() {
    bites(
        "gap_on_every_resume",
        bugs::gap_on_every_resume,
        Invariant::HonestGaps,
        tiny(),
        10,
    );
}

#[test]
fn liveness_bites_a_resume_that_never_gets_a_welcome() {
    bites("stuck_resume", bugs::stuck_resume, Invariant::Liveness, tiny(), 10);
}

#[test]
fn no_silent_failure_bites_a_notifier_that_swallows_errors() {
    bites(
        "swallowing_notifier",
        bugs::swallowing_notifier,
        Invariant::NoSilentFailure,
        small(),
        10,
    );
}

#[test]
fn bounded_resources_bites_ignored_hub_limits() {
    bites(
        "unbounded_queue",
        bugs::unbounded_queue,
        Invariant::BoundedResources,
        tiny(),
        30,
    );
}

#[test]
fn bounded_resources_bites_a_server_without_an_http_request_deadline() {
    bites(
        "no_request_deadline",
        bugs::no_request_deadline,
        Invariant::BoundedResources,
        small(),
        60,
    );
}

#[test]
fn bounded_resources_bites_a_server_that_ignores_sockets_max() {
    // Only a world whose sockets_max is below its clients shows it, and only the network's
    // count of the server's sockets: the hub's gauges stay within their limits.
    let found = bites(
        "ignores_sockets_max",
        bugs::ignores_sockets_max,
        Invariant::BoundedResources,
        small(),
        200,
    );
    assert!(
        found.shrunk_violation.explanation.contains("server_sockets")
            && found.shrunk_violation.explanation.contains("sockets_max"),
        "{}",
        found.shrunk_violation
    );
}

#[test]
fn bounded_resources_bites_a_server_that_keeps_closed_sockets() {
    // The hub's gauges stay clean: only the sockets counted by the network show the leak.
    let found = bites(
        "keeps_closed_sockets",
        bugs::keeps_closed_sockets,
        Invariant::BoundedResources,
        small(),
        30,
    );
    assert!(
        found.shrunk_violation.explanation.contains("sockets leak"),
        "{}",
        found.shrunk_violation
    );
}

#[test]
fn auth_bites_a_server_that_ignores_token_expiry() {
    bites("ignores_expiry", bugs::ignores_expiry, Invariant::Auth, small(), 20);
}

#[test]
fn auth_bites_a_server_that_ignores_the_token_audience() {
    let found = bites(
        "ignores_audience",
        bugs::ignores_audience,
        Invariant::Auth,
        small(),
        200,
    );
    assert!(
        found.shrunk.steps.iter().any(|s| matches!(
            s.step,
            Step::Hostile {
                attack: Attack::WrongAudience { .. },
                ..
            }
        )),
        "only a token for another audience shows the bug: {:?}",
        found.shrunk.steps
    );
}

#[test]
fn honest_gaps_bites_a_hub_that_drops_a_stream_still_holding_events() {
    bites(
        "drops_stream_on_last_tab",
        bugs::drops_stream_on_last_tab,
        Invariant::HonestGaps,
        tiny(),
        30,
    );
}

#[test]
fn honest_gaps_bites_a_hub_that_forgets_quiet_streams() {
    bites(
        "forgets_quiet_streams",
        bugs::forgets_quiet_streams,
        Invariant::HonestGaps,
        tiny(),
        30,
    );
}

#[test]
fn no_silent_loss_bites_an_inflated_first_welcome_head() {
    bites(
        "inflated_first_head",
        bugs::inflated_first_head,
        Invariant::NoSilentLoss,
        tiny(),
        20,
    );
}

#[test]
fn liveness_bites_a_4009_no_configured_limit_explains() {
    bites(
        "one_tab_per_user",
        bugs::one_tab_per_user,
        Invariant::Liveness,
        small(),
        30,
    );
}

/// A fresh directory under the system temp dir (never `seeds/`).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-bites-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_saved_seed_of_a_broken_server_replays_and_would_fail_cargo_test() {
    let found = hunt(
        "replay_from_after",
        bugs::replay_from_after,
        Invariant::NoDuplicates,
        tiny(),
        0,
        10,
        SHRINK_ATTEMPTS,
    );
    // Saved exactly as a campaign saves it: shrunk scenario, invariant, explanation, digest.
    let key = FailureKey::Invariant(found.invariant);
    let mut file = bare_seed_file(seed_name(key, &found.shrunk), found.seed, found.shrunk.clone());
    file.failure = Some(RecordedFailure {
        invariant: found.invariant,
        explanation: found.shrunk_violation.explanation.clone(),
        history_digest: found.shrunk_digest.clone(),
        steps_before_shrink: found.steps_before,
        steps_after_shrink: found.shrunk.steps.len(),
    });
    let dir = temp_dir("replay");
    let path = write_seed_file(&dir, &file).expect("seed file written");
    let loaded = load_seed_file(&path).expect("seed file loads");
    assert_eq!(loaded, file, "the seed file round-trips");

    // Replaying against the broken server reproduces the very same history and failure.
    let broken = replay(&loaded, bugs::replay_from_after(), false);
    assert_eq!(
        broken.digest.as_deref(),
        Some(found.shrunk_digest.as_str()),
        "same digest on replay"
    );
    assert!(broken.judged.fails_with(key));
    let message = verdict(&loaded, &broken).expect_err("the seed fails its `expect: pass` verdict");
    assert!(
        message.contains("no_duplicates"),
        "the verdict names the invariant: {message}"
    );

    // `cargo test`'s seed replay (`seeds_replay.rs` runs `replay_dir` over `seeds/`) would fail
    // on this file with the broken server, naming the file and the invariant...
    let make_broken = || bugs::replay_from_after();
    let (count, problems) =
        replay_dir(&dir, make_broken, seed_replay_wall_budget().unwrap()).expect("temp dir readable");
    assert_eq!((count, problems.len()), (1, 1));
    assert_eq!(problems[0].path, path);
    assert!(
        problems[0].keys.contains(&"no_duplicates".to_string()),
        "{:?}",
        problems[0].keys
    );
    // ...and passes on the real core: the saved scenario is a regression test for the fix.
    let make_real = || -> Rc<dyn ServerUnderTest> { Rc::new(RealServer) };
    let (_, problems) = replay_dir(&dir, make_real, seed_replay_wall_budget().unwrap()).expect("temp dir readable");
    assert!(problems.is_empty(), "{:?}", problems.first().map(|p| &p.message));
    assert!(check(
        found.invariant,
        &found.shrunk,
        &run_on(Rc::new(RealServer), &found.shrunk, found.seed)
    )
    .is_ok());

    // Nothing was left in the repository's seeds/.
    let seeds = repository_seeds_dir().join(path.file_name().unwrap());
    assert!(!seeds.exists(), "{} must not be written by this test", seeds.display());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn isolation_bites_concatenated_frames_that_do_not_parse() {
    // Another user's event glued to a frame: the client cannot parse it, yet it received the
    // other user's secret. Only the markers scanned from the whole frame show the leak.
    let found = bites(
        "concatenated_frames",
        bugs::concatenated_frames,
        Invariant::Isolation,
        small(),
        20,
    );
    assert!(
        found.shrunk_violation.explanation.contains("unparsed"),
        "{}",
        found.shrunk_violation
    );
}

#[test]
fn liveness_bites_live_events_delivered_seconds_late_on_a_clean_link() {
    // Nothing is lost (every frame arrives before the world ends): only the prompt-delivery
    // rule, which demands delivery before the heal on an undisturbed link, sees the delay.
    let found = bites(
        "delayed_live_flush",
        bugs::delayed_live_flush,
        Invariant::Liveness,
        tiny(),
        30,
    );
    assert!(
        found.shrunk_violation.explanation.contains("deadline"),
        "{}",
        found.shrunk_violation
    );
}

#[test]
fn liveness_bites_an_epoch_blind_resume_check_that_stops_clients_for_good() {
    // After a restart the resume is refused with 4004: the client library stops for good, on
    // its own. Only the rule that a normal client never stops unless the scenario closed it
    // sees it (a stopped client used to count as closed, and its losses as nobody's).
    let found = bites(
        "epoch_blind_resume",
        bugs::epoch_blind_resume,
        Invariant::Liveness,
        tiny(),
        30,
    );
    assert!(
        found.shrunk_violation.explanation.contains("stopped for good")
            && found.shrunk_violation.explanation.contains("4004"),
        "{}",
        found.shrunk_violation
    );
}

#[test]
fn no_silent_loss_bites_a_fan_out_cancelled_with_its_publish_request() {
    // The lost events' publishes timed out: no answer names their positions, so only the
    // contiguity rule (seqs grow by exactly 1) sees the hole the application was handed.
    let found = bites(
        "fan_out_cancelled_with_the_request",
        bugs::fan_out_cancelled_with_the_request,
        Invariant::NoSilentLoss,
        small(),
        30,
    );
    assert!(
        found.violation.explanation.contains("skipped without a gap")
            && found.shrunk_violation.explanation.contains("skipped without a gap"),
        "{}\n{}",
        found.violation,
        found.shrunk_violation
    );
}
