//! The shrinker reaches a minimal, valid scenario deterministically.

use herald_properties::generators::{generate, validate, GeneratorSettings, Size};
use herald_properties::scenario::{Scenario, Step, TimedStep, Via};
use herald_properties::shrink::shrink;

/// The synthetic bug: fails iff some Burst for user 1 comes (in driver order) after a Kill.
fn fails(scenario: &Scenario) -> bool {
    let mut killed = false;
    for (_, step) in scenario.sorted_steps() {
        match step.step {
            Step::Kill { .. } => killed = true,
            Step::Burst { user: 1, .. } if killed => return true,
            _ => {}
        }
    }
    false
}

fn failing_scenario() -> Scenario {
    let mut scenario = generate(
        GeneratorSettings {
            size: Size::Small,
            swarm: false,
        },
        7,
    );
    let last = scenario.last_step_ms();
    let closed: Vec<u32> = scenario
        .steps
        .iter()
        .filter_map(|s| match s.step {
            Step::Close { client } => Some(client),
            _ => None,
        })
        .collect();
    let client = scenario
        .steps
        .iter()
        .find_map(|s| match s.step {
            Step::Connect { client, .. } if !closed.contains(&client) => Some(client),
            _ => None,
        })
        .expect("small scenarios keep a client open");
    scenario.steps.push(TimedStep {
        at_ms: last + 100,
        step: Step::Kill { client },
    });
    scenario.steps.push(TimedStep {
        at_ms: last + 200,
        step: Step::Burst {
            user: 1,
            run: 2,
            count: 9,
            payload_bytes: 700,
            via: Via::Http {
                idempotency_key: true,
                retries: 2,
            },
        },
    });
    assert!(validate(&scenario).is_ok());
    assert!(fails(&scenario));
    scenario
}

#[test]
fn shrinks_to_the_three_steps_that_matter() {
    let original = failing_scenario();
    let mut calls = 0;
    let shrunk = shrink(
        &original,
        &mut |s: &Scenario| {
            calls += 1;
            fails(s)
        },
        2_000,
    );
    assert!(calls <= 2_000);
    assert!(fails(&shrunk));
    assert_eq!(validate(&shrunk), Ok(()));
    assert_eq!(shrunk.steps.len(), 3, "{:#?}", shrunk.steps);
    let sorted: Vec<&Step> = shrunk.sorted_steps().into_iter().map(|(_, s)| &s.step).collect();
    assert!(
        matches!(
            sorted[0],
            Step::Connect {
                host: 0,
                token_ttl_ms: None,
                ..
            }
        ),
        "{sorted:?}"
    );
    assert!(matches!(sorted[1], Step::Kill { .. }));
    assert_eq!(
        *sorted[2],
        Step::Burst {
            user: 1,
            run: 0,
            count: 1,
            payload_bytes: 0,
            via: Via::Notifier
        }
    );
    assert_eq!(shrunk.config.users, 2, "user 1 must exist, nothing more");
    assert_eq!(shrunk.config.client_hosts, 1);
    assert_eq!(shrunk.last_step_ms(), 0, "times pulled together");
    // 1-minimal: removing any single step makes it pass.
    for i in 0..shrunk.steps.len() {
        let mut smaller = shrunk.clone();
        smaller.steps.remove(i);
        assert!(!fails(&smaller) || validate(&smaller).is_err());
    }
    // Deterministic.
    assert_eq!(shrink(&original, &mut fails, 2_000), shrunk);
}

#[test]
fn respects_the_attempt_budget_and_keeps_failing() {
    let original = failing_scenario();
    let mut calls = 0;
    let shrunk = shrink(
        &original,
        &mut |s: &Scenario| {
            calls += 1;
            fails(s)
        },
        5,
    );
    assert!(calls <= 5);
    assert!(fails(&shrunk));
    assert!(shrunk.steps.len() <= original.steps.len());
}

#[test]
fn a_scenario_that_does_not_shrink_comes_back_unchanged() {
    let original = failing_scenario();
    let shrunk = shrink(&original, &mut |s: &Scenario| *s == original, 100);
    assert_eq!(shrunk, original);
}

/// A failure that needs one unlucky drop under random loss is chaotic: changing any other step
/// changes the network's random draws, and with them the drop. Turning the loss total makes
/// it deterministic, and then everything else can go.
#[test]
fn random_loss_becomes_total_loss_so_the_rest_can_be_removed() {
    let mut original = failing_scenario();
    let loss_at_ms = original.last_step_ms() + 50;
    original.steps.push(TimedStep {
        at_ms: loss_at_ms,
        step: Step::SetLossRate { per_mille: 28 },
    });
    assert_eq!(validate(&original), Ok(()));
    let total_loss = |s: &Scenario| s.steps.iter().any(|t| t.step == Step::SetLossRate { per_mille: 1000 });
    // Fails as generated, or with total loss whatever else happens; any other change "moves the
    // draws" and passes.
    let mut fails = |s: &Scenario| *s == original || total_loss(s);
    let shrunk = shrink(&original, &mut fails, 2_000);
    assert_eq!(
        shrunk.steps,
        vec![TimedStep {
            at_ms: 0,
            step: Step::SetLossRate { per_mille: 1000 }
        }],
        "{:#?}",
        shrunk.steps
    );
}

/// A step is simplified all the way in one pass: after "count → 1" is adopted, the candidates
/// still built from the original step ("count halved", "payload → 0" with the old count, ...)
/// must not undo it.
#[test]
fn a_step_shrinks_to_its_simplest_form_within_a_few_attempts() {
    let burst = |count, payload_bytes, via, run| Step::Burst {
        user: 0,
        run,
        count,
        payload_bytes,
        via,
    };
    let http = Via::Http {
        idempotency_key: true,
        retries: 2,
    };
    let mut original = generate(
        GeneratorSettings {
            size: Size::Tiny,
            swarm: false,
        },
        0,
    );
    original.steps = vec![TimedStep {
        at_ms: 0,
        step: burst(9, 700, http, 2),
    }];
    assert_eq!(validate(&original), Ok(()));
    // Fails whenever there is a burst, whatever its count, payload, path or run.
    let mut calls = 0;
    let shrunk = shrink(
        &original,
        &mut |s: &Scenario| {
            calls += 1;
            s.steps.iter().any(|t| matches!(t.step, Step::Burst { .. }))
        },
        6,
    );
    assert!(calls <= 6);
    assert_eq!(
        shrunk.steps,
        vec![TimedStep {
            at_ms: 0,
            step: burst(1, 0, Via::Notifier, 0),
        }],
        "after {calls} attempts"
    );
}
