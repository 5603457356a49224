//! Determinism: the same scenario and seed give a byte-identical history — twice in one process,
//! and in two separate processes (the `herald-sim` binary's `history-digest:` line).

use herald_properties::generators::{generate, GeneratorSettings, Size};
use herald_sim::campaign::commands::first_difference;
use herald_sim::run;
use std::process::Command;

#[test]
fn same_scenario_and_seed_twice_in_process_give_the_same_digest() {
    for (size, swarm, seed) in [(Size::Small, false, 7), (Size::Tiny, true, 11), (Size::Small, true, 12)] {
        let scenario = generate(GeneratorSettings { size, swarm }, seed);
        let a = run(&scenario, seed);
        let b = run(&scenario, seed);
        assert!(a.entries.len() > 10, "the run did something");
        assert_eq!(
            a.digest(),
            b.digest(),
            "{size:?} swarm={swarm} seed {seed} is not deterministic: {}",
            first_difference(&a, &b).unwrap_or_default()
        );
    }
    // And the digest does depend on the seed.
    let scenario = generate(
        GeneratorSettings {
            size: Size::Small,
            swarm: false,
        },
        7,
    );
    assert_ne!(run(&scenario, 7).digest(), run(&scenario, 8).digest());
}

fn digest_from_a_separate_process(seed: u64) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_herald-sim"))
        .args(["run", "--seed", &seed.to_string(), "--size", "small"])
        .output()
        .expect("herald-sim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "herald-sim run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    last.strip_prefix("history-digest: ")
        .unwrap_or_else(|| panic!("the last line is the digest, got {last:?}"))
        .to_string()
}

#[test]
fn same_seed_in_two_processes_gives_the_same_digest() {
    let first = digest_from_a_separate_process(7);
    let second = digest_from_a_separate_process(7);
    assert_eq!(first.len(), 64);
    assert_eq!(first, second, "two processes disagree on seed 7");
    // The binary generates and runs exactly what the library does in this process.
    let scenario = generate(
        GeneratorSettings {
            size: Size::Small,
            swarm: false,
        },
        7,
    );
    assert_eq!(run(&scenario, 7).digest(), first, "the binary and the library disagree");
}

/// Crashes and restarts drop a turmoil host's tokio runtime; tokio drops tasks shard by shard,
/// the shard picked by a process-wide task id counter. If sockets closed in that order, clients
/// would notice in an order that depends on everything the process did before. The world resets
/// a life's streams itself, in accept order; this test shifts the task id counter between runs
/// of server-fault-heavy scenarios and demands the same digest.
#[test]
fn crashes_and_restarts_stay_deterministic_whatever_the_process_did_before() {
    use herald_properties::scenario::Step;
    use herald_sim::campaign::commands::perturb_process_state;
    let mut with_faults = 0;
    for seed in 0..24u64 {
        let scenario = generate(
            GeneratorSettings {
                size: Size::Small,
                swarm: false,
            },
            9_000 + seed,
        );
        if !scenario
            .steps
            .iter()
            .any(|s| matches!(s.step, Step::RestartServer | Step::CrashServer))
        {
            continue;
        }
        with_faults += 1;
        let a = run(&scenario, seed);
        perturb_process_state(seed + 3);
        let b = run(&scenario, seed);
        assert_eq!(
            a.digest(),
            b.digest(),
            "seed {seed} differs after perturbing tokio's task ids: {}",
            first_difference(&a, &b).unwrap_or_default()
        );
    }
    assert!(
        with_faults >= 5,
        "only {with_faults} scenarios had server faults: the test proves little"
    );
}
