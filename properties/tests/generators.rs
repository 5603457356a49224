//! Generated scenarios are deterministic per seed, valid, realistic (ones the real core must
//! pass) and, across seeds, cover every step family and every attack.

use herald_properties::checkers::liveness_bound_ms;
use herald_properties::generators::{generate, validate, GeneratorSettings, Size};
use herald_properties::scenario::{Attack, Limits, Scenario, Step, StepFamily, Via};
use std::collections::{BTreeMap, BTreeSet};

/// An attack's name as scenarios spell it (its serde tag).
fn attack_name(attack: &Attack) -> String {
    serde_json::to_value(attack).unwrap()["attack"]
        .as_str()
        .unwrap()
        .to_string()
}

fn settings(size: Size, swarm: bool) -> GeneratorSettings {
    GeneratorSettings { size, swarm }
}

#[test]
fn same_seed_same_scenario_different_seed_different_scenario() {
    for size in Size::ALL {
        for swarm in [false, true] {
            let s = settings(size, swarm);
            assert_eq!(generate(s, 42), generate(s, 42), "{size:?} swarm={swarm}");
            assert_ne!(generate(s, 42), generate(s, 43), "{size:?} swarm={swarm}");
        }
    }
}

fn check_realistic(scenario: &Scenario, size: Size) {
    validate(scenario).unwrap_or_else(|e| panic!("invalid scenario: {e}\n{scenario:?}"));
    let config = &scenario.config;
    let (users, hosts, steps): (u32, std::ops::RangeInclusive<u32>, std::ops::RangeInclusive<usize>) = match size {
        Size::Tiny => (2, 1..=2, 4..=30),
        Size::Small => (3, 2..=2, 30..=120),
        Size::Medium => (20, 4..=4, 200..=600),
        Size::Large => (100, 8..=8, 1_500..=4_000),
    };
    assert_eq!(config.users, users);
    assert!(hosts.contains(&config.client_hosts) && config.client_hosts <= 8);
    assert!(
        steps.contains(&scenario.steps.len()),
        "{size:?}: {} steps",
        scenario.steps.len()
    );
    assert!(config.quiet_period_ms >= liveness_bound_ms(&config.timeouts) + 5_000);
    assert!(
        scenario.steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
        "steps are sorted"
    );
    let mut tabs: BTreeMap<u32, u64> = BTreeMap::new();
    let mut loss_on_since: Option<u64> = None;
    for step in &scenario.steps {
        match &step.step {
            Step::Connect { user, .. } => *tabs.entry(*user).or_default() += 1,
            Step::Pause { duration_ms, .. } => assert!(*duration_ms <= 3_000),
            Step::SetLossRate { per_mille } if *per_mille > 0 => {
                assert!(*per_mille <= 50);
                assert!(loss_on_since.is_none(), "loss bursts do not overlap");
                loss_on_since = Some(step.at_ms);
            }
            Step::SetLossRate { .. } => {
                let since = loss_on_since.take().expect("a heal follows a loss burst");
                assert!(step.at_ms - since <= 2_000, "loss lasts at most 2 s");
            }
            Step::Publish { payload_bytes, via, .. } | Step::Burst { payload_bytes, via, .. } => {
                assert!(*payload_bytes < 2_000);
                if let Via::Http {
                    idempotency_key,
                    retries,
                } = via
                {
                    assert!(*retries == 0 || *idempotency_key);
                }
            }
            _ => {}
        }
    }
    assert!(loss_on_since.is_none(), "every loss burst is healed");
    for step in &scenario.steps {
        if let Step::Hostile {
            attack: Attack::Flood { user, .. },
            ..
        } = &step.step
        {
            assert!(!tabs.contains_key(user), "floods target users without tabs");
        }
    }
    let most_tabs = tabs.values().copied().max().unwrap_or(0);
    assert!(config.limits.connections_per_user_max >= most_tabs + 2);
    // Most clients connect in the first ~20% of the run.
    let connects: Vec<u64> = scenario
        .steps
        .iter()
        .filter(|s| matches!(s.step, Step::Connect { .. }))
        .map(|s| s.at_ms)
        .collect();
    let early = connects.iter().filter(|&&at| at <= 4_000).count();
    assert!(early * 2 >= connects.len(), "most connects are early: {connects:?}");
    assert!(scenario.last_step_ms() <= 26_000);
}

#[test]
fn generated_scenarios_are_valid_and_realistic() {
    for (size, cases) in [
        (Size::Tiny, 150),
        (Size::Small, 100),
        (Size::Medium, 10),
        (Size::Large, 2),
    ] {
        for swarm in [false, true] {
            for seed in 0..cases {
                check_realistic(&generate(settings(size, swarm), seed), size);
            }
        }
    }
}

#[test]
fn generation_covers_every_family_and_attack_and_swarm_varies_the_mix() {
    let mut families = BTreeSet::new();
    let mut attacks = BTreeSet::new();
    let mut small_limits = 0;
    let mut tight_connections = 0;
    let mut tight_sockets = 0;
    let mut tight_users = 0;
    for seed in 0..200 {
        let scenario = generate(settings(Size::Small, false), seed);
        if scenario.config.limits.retention_events_max < 50 || scenario.config.limits.send_queue_max < 50 {
            small_limits += 1;
        }
        let tabs = scenario
            .steps
            .iter()
            .filter(|s| matches!(s.step, Step::Connect { .. }))
            .count() as u64;
        let limits = &scenario.config.limits;
        let tight_connections_max = limits.connections_max < Limits::default().connections_max;
        let tight_sockets_max = limits.sockets_max < Limits::default().sockets_max;
        let tight_users_max = limits.users_max < Limits::default().users_max;
        assert!(
            u8::from(tight_connections_max) + u8::from(tight_sockets_max) + u8::from(tight_users_max) <= 1,
            "seed {seed}: one limit is tight at a time"
        );
        if tight_users_max {
            tight_users += 1;
            let limit = limits.users_max;
            assert!(
                limit >= 1 && limit <= u64::from(scenario.config.users),
                "seed {seed}: users_max {limit} is at most the {} users",
                scenario.config.users
            );
        }
        if tight_connections_max {
            tight_connections += 1;
            let limit = limits.connections_max;
            assert!(
                limit >= 1 && limit <= tabs,
                "seed {seed}: connections_max {limit} is at most the {tabs} tabs"
            );
        }
        if tight_sockets_max {
            tight_sockets += 1;
            let limit = limits.sockets_max;
            assert!(
                limit >= 2 && limit <= tabs + 1,
                "seed {seed}: sockets_max {limit} is at most the {tabs} tabs and the publisher"
            );
        }
        for step in &scenario.steps {
            families.insert(step.step.family());
            if let Step::Hostile { attack, .. } = &step.step {
                attacks.insert(attack_name(attack));
            }
        }
    }
    assert_eq!(families.len(), StepFamily::ALL.len(), "{families:?}");
    let every_attack: BTreeSet<String> = Attack::ALL.iter().map(attack_name).collect();
    assert_eq!(every_attack.len(), Attack::ALL.len(), "attack names are distinct");
    assert_eq!(attacks, every_attack, "every attack is generated");
    assert!(
        small_limits > 20,
        "small limits are generated sometimes: {small_limits}"
    );
    assert!(
        [tight_connections, tight_sockets, tight_users]
            .iter()
            .all(|n| (3..=20).contains(n)),
        "about one scenario in twenty-four has connections_max below its tabs ({tight_connections}), \
         as many sockets_max ({tight_sockets}), as many users_max below its users ({tight_users})"
    );

    // Swarm: some scenarios leave optional families out entirely.
    let mut missing_somewhere = BTreeSet::new();
    for seed in 0..60 {
        let scenario = generate(settings(Size::Small, true), seed);
        let present: BTreeSet<StepFamily> = scenario.steps.iter().map(|s| s.step.family()).collect();
        assert!(present.contains(&StepFamily::Publish));
        for family in StepFamily::ALL {
            if !present.contains(&family) {
                missing_somewhere.insert(family);
            }
        }
    }
    for family in [
        StepFamily::Partition,
        StepFamily::Loss,
        StepFamily::Server,
        StepFamily::Hostile,
    ] {
        assert!(
            missing_somewhere.contains(&family),
            "swarm sometimes disables {family:?}"
        );
    }
}
