//! Settling (`herald_properties::settling`) in real worlds: a generated world ends early once it
//! has settled, the checkers reach the same verdict as after the whole quiet period, and a world
//! whose client never comes back runs the whole quiet period instead of settling.

use herald_properties::checkers::check_all;
use herald_properties::generators::{generate, GeneratorSettings, Size};
use herald_properties::history::{FrameSeen, History, Observation};
use herald_properties::scenario::{Scenario, ScenarioConfig, Step, TimedStep};
use herald_sim::run;

fn settled(history: &History) -> bool {
    history.entries.iter().any(|e| matches!(e.what, Observation::Settled))
}

fn quiet_ms(history: &History) -> u64 {
    history.end_at_ms().expect("the run ended") - history.heal_at_ms().expect("the run healed")
}

#[test]
fn a_generated_world_settles_early_with_the_same_verdict() {
    let mut saved_ms = 0;
    for seed in [3, 4, 5, 6] {
        let scenario = generate(
            GeneratorSettings {
                size: Size::Small,
                swarm: false,
            },
            seed,
        );
        assert!(scenario.config.settle_ms.is_some(), "generated scenarios may settle");
        let mut whole = scenario.clone();
        whole.config.settle_ms = None;
        let early = run(&scenario, seed);
        let late = run(&whole, seed);
        assert!(!settled(&late), "settle_ms None never settles");
        assert_eq!(quiet_ms(&late), whole.config.quiet_period_ms, "seed {seed}");
        assert!(quiet_ms(&early) <= scenario.config.quiet_period_ms, "seed {seed}");
        if settled(&early) {
            assert!(quiet_ms(&early) >= scenario.config.settle_ms.unwrap(), "seed {seed}");
            saved_ms += quiet_ms(&late) - quiet_ms(&early);
        }
        assert_eq!(
            check_all(&scenario, &early),
            check_all(&whole, &late),
            "seed {seed}: the verdict depends on settling"
        );
        assert!(
            check_all(&scenario, &early).is_empty(),
            "seed {seed} fails on the real core"
        );
    }
    assert!(saved_ms > 0, "no world settled early");
}

#[test]
fn a_client_that_never_comes_back_keeps_the_world_running() {
    // One connection per user: client 1 is refused for as long as client 0 holds its place,
    // so it is never connected and the world cannot settle.
    let mut config = ScenarioConfig {
        users: 1,
        client_hosts: 1,
        settle_ms: Some(4_000),
        ..ScenarioConfig::default()
    };
    config.limits.connections_per_user_max = 1;
    let connect = |client| Step::Connect {
        client,
        user: 0,
        host: 0,
        token_ttl_ms: None,
    };
    let scenario = Scenario {
        config: config.clone(),
        steps: vec![
            TimedStep {
                at_ms: 0,
                step: connect(0),
            },
            TimedStep {
                at_ms: 500,
                step: connect(1),
            },
        ],
    };
    let history = run(&scenario, 1);
    let refused = history
        .entries
        .iter()
        .any(|e| matches!(&e.what, Observation::Closed { client: 1, code: Some(code), .. } if *code == 4009));
    let welcomed = history.entries.iter().any(|e| {
        matches!(
            &e.what,
            Observation::FrameReceived {
                client: 1,
                frame: FrameSeen::Welcome { .. },
                ..
            }
        )
    });
    assert!(refused && !welcomed, "client 1 is refused and never welcomed");
    assert!(!settled(&history));
    assert_eq!(quiet_ms(&history), config.quiet_period_ms);

    // Without client 1 the same world settles.
    let alone = Scenario {
        steps: scenario.steps[..1].to_vec(),
        ..scenario
    };
    let history = run(&alone, 1);
    assert!(settled(&history));
    assert!(quiet_ms(&history) < config.quiet_period_ms);
}
