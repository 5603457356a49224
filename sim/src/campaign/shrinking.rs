//! The shrink driver: "still fails" means the *same* failure fails again with the same world
//! seed — the same key and, for a crash, the same fingerprint ([`CaseFailure::same_as`]) — so
//! shrinking never wanders from one bug to another (a panic here to a panic there).
//! Deterministic: the shrinker tries candidates in a fixed order and each run is a pure function
//! of (scenario, seed).

use super::case::{run_and_judge, CaseFailure};
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

/// Shrinks `scenario` while the same failure as `target` (its key and fingerprint) still fails
/// under `seed`. `before_run` is called with each candidate before its world runs (the campaign
/// persists it, so a candidate that hangs stays reproducible) and may refuse it (`false`: the
/// campaign has stopped, or abandoned this worker); refused candidates, and every candidate
/// after `deadline`, are rejected without running.
pub fn shrink_failure_like(
    scenario: &Scenario,
    seed: u64,
    target: &CaseFailure,
    server: &Rc<dyn ServerUnderTest>,
    max_attempts: usize,
    deadline: Option<Instant>,
    before_run: &mut dyn FnMut(&Scenario) -> bool,
) -> Shrunk {
    shrink_while(scenario, max_attempts, deadline, before_run, &mut |candidate| {
        run_and_judge(candidate, seed, server.clone(), false)
            .same_failure(target)
            .is_some()
    })
}

/// Shrinks `scenario` while `still_fails` says a candidate does, with the deadline and
/// `before_run` of [`shrink_failure_like`].
pub fn shrink_while(
    scenario: &Scenario,
    max_attempts: usize,
    deadline: Option<Instant>,
    before_run: &mut dyn FnMut(&Scenario) -> bool,
    still_fails: &mut dyn FnMut(&Scenario) -> bool,
) -> Shrunk {
    let mut attempts = 0;
    let mut predicate = |candidate: &Scenario| {
        attempts += 1;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if !before_run(candidate) {
            return false;
        }
        still_fails(candidate)
    };
    let shrunk = shrink(scenario, &mut predicate, max_attempts);
    Shrunk {
        steps_before: scenario.steps.len(),
        steps_after: shrunk.steps.len(),
        scenario: shrunk,
        attempts,
    }
}
