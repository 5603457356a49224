//! The shrink driver: "still fails" means the *same* failure key fails again with the same world
//! seed, so shrinking never wanders from one bug to another. Deterministic: the shrinker tries
//! candidates in a fixed order and each run is a pure function of (scenario, seed).

use super::case::{run_and_judge, FailureKey};
use crate::server_under_test::ServerUnderTest;
use herald_properties::scenario::Scenario;
use herald_properties::shrink::shrink;
use std::rc::Rc;
use std::time::Instant;

/// What shrinking did.
pub struct Shrunk {
    pub scenario: Scenario,
    pub steps_before: usize,
    pub steps_after: usize,
    /// Predicate calls (world runs) spent.
    pub attempts: usize,
}

/// Shrinks `scenario` while `key` still fails under `seed`. `before_run` is called with each
/// candidate before its world runs (the campaign persists it, so a candidate that hangs stays
/// reproducible) and may refuse it (`false`: the campaign has stopped); refused candidates, and
/// every candidate after `deadline`, are rejected without running.
pub fn shrink_failure(
    scenario: &Scenario,
    seed: u64,
    key: FailureKey,
    server: &Rc<dyn ServerUnderTest>,
    max_attempts: usize,
    deadline: Option<Instant>,
    before_run: &mut dyn FnMut(&Scenario) -> bool,
) -> Shrunk {
    let mut attempts = 0;
    let mut still_fails = |candidate: &Scenario| {
        attempts += 1;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if !before_run(candidate) {
            return false;
        }
        run_and_judge(candidate, seed, server.clone(), false).fails_with(key)
    };
    let shrunk = shrink(scenario, &mut still_fails, max_attempts);
    Shrunk {
        steps_before: scenario.steps.len(),
        steps_after: shrunk.steps.len(),
        scenario: shrunk,
        attempts,
    }
}
