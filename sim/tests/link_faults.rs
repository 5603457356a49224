//! Network faults that overlap on one client host's link stay what the scenario says they are.
//! turmoil keeps one state per link direction, and its calls overwrite each other (a `release`
//! ends a partition, a `repair` ends a hold, random loss releases a one-way partition whole);
//! the checkers' index keeps a partition open until its `Repair` and a hold until its `Release`,
//! and excuses what they cover. Each world here opens two faults on one host, ends one of them,
//! and publishes one event: the fault still open must keep it from the client until that fault
//! ends too. Before the world applied the faults' combination, each of these clients had the
//! event (or a reconnect) within a few hundred ms, on a link the checkers still held to be cut.
//! The same holds for a client's pauses: a short pause within a long one does not end it.

use herald_properties::checkers::check_all;
use herald_properties::history::{History, Observation};
use herald_properties::scenario::{Direction, Kind, Scenario, ScenarioConfig, Step, TimedStep, Via};
use herald_sim::run;

/// The one client, on host 0; the fault still open ends at `END_MS`.
const END_MS: u64 = 8_000;

fn world(faults: Vec<(u64, Step)>) -> History {
    let config = ScenarioConfig {
        users: 1,
        client_hosts: 1,
        ..ScenarioConfig::default()
    };
    let mut steps = vec![TimedStep {
        at_ms: 0,
        step: Step::Connect {
            client: 0,
            user: 0,
            host: 0,
            token_ttl_ms: None,
        },
    }];
    steps.extend(faults.into_iter().map(|(at_ms, step)| TimedStep { at_ms, step }));
    steps.push(TimedStep {
        at_ms: 1_500,
        step: Step::Publish {
            user: 0,
            run: 0,
            kind: Kind::AgentStarted,
            payload_bytes: 16,
            via: Via::Notifier,
        },
    });
    let scenario = Scenario { config, steps };
    let history = run(&scenario, 7);
    assert_eq!(check_all(&scenario, &history), vec![], "the real core passes");
    history
}

/// When client 0 first received anything (a frame, an item) after `from_ms`.
fn first_received_after(history: &History, from_ms: u64) -> Option<u64> {
    history
        .entries
        .iter()
        .filter(|e| e.at_ms > from_ms)
        .find(|e| {
            matches!(
                &e.what,
                Observation::FrameReceived { client: 0, .. } | Observation::Delivered { client: 0, .. }
            )
        })
        .map(|e| e.at_ms)
}

fn assert_cut_until_the_end(history: &History, what: &str) {
    let first = first_received_after(history, 1_300);
    assert!(
        first.is_some_and(|at| at >= END_MS),
        "{what}: client 0 received something at {first:?}, while a fault was still open (until {END_MS} ms)"
    );
}

#[test]
fn a_release_does_not_end_a_partition() {
    let history = world(vec![
        (1_000, Step::Partition { host: 0 }),
        (1_100, Step::Hold { host: 0 }),
        (1_200, Step::Release { host: 0 }),
        (END_MS, Step::Repair { host: 0 }),
    ]);
    assert_cut_until_the_end(&history, "partition, hold, release");
}

#[test]
fn a_repair_does_not_end_a_hold() {
    let history = world(vec![
        (1_000, Step::Hold { host: 0 }),
        (1_100, Step::Repair { host: 0 }),
        (END_MS, Step::Release { host: 0 }),
    ]);
    assert_cut_until_the_end(&history, "hold, repair");
}

#[test]
fn message_loss_does_not_end_a_one_way_partition() {
    let history = world(vec![
        (
            1_000,
            Step::PartitionOneWay {
                host: 0,
                direction: Direction::FromServer,
            },
        ),
        (1_100, Step::SetLossRate { per_mille: 1_000 }),
        (3_000, Step::SetLossRate { per_mille: 0 }),
        (END_MS, Step::Repair { host: 0 }),
    ]);
    assert_cut_until_the_end(&history, "one-way partition, loss on and off");
}

#[test]
fn a_flood_beyond_its_client_ids_is_skipped_not_cut_short() {
    let config = ScenarioConfig {
        users: 1,
        client_hosts: 1,
        ..ScenarioConfig::default()
    };
    let scenario = Scenario {
        config,
        steps: vec![TimedStep {
            at_ms: 0,
            step: Step::Hostile {
                host: 0,
                attack: herald_properties::scenario::Attack::Flood {
                    user: 0,
                    connections: 150,
                },
            },
        }],
    };
    let history = run(&scenario, 7);
    assert!(
        history
            .entries
            .iter()
            .any(|e| matches!(&e.what, Observation::StepSkipped { index: 0, .. })),
        "a flood of 150 is skipped, not applied as 99"
    );
}

#[test]
fn a_short_pause_within_a_long_one_does_not_end_it() {
    let history = world(vec![
        (
            1_000,
            Step::Pause {
                client: 0,
                duration_ms: 7_000,
            },
        ),
        (
            1_200,
            Step::Pause {
                client: 0,
                duration_ms: 100,
            },
        ),
    ]);
    let delivered = history
        .entries
        .iter()
        .find(|e| matches!(&e.what, Observation::Delivered { client: 0, .. }))
        .map(|e| e.at_ms);
    assert!(
        delivered.is_some_and(|at| at >= END_MS),
        "the event published at 1,500 ms was read at {delivered:?}, within the 7 s pause that began at 1,000 ms"
    );
}
