//! Deterministic greedy shrinking of a failing scenario (delta debugging over steps, then
//! simplification of what is left), so a saved seed is small enough to read.
//!
//! Passes, repeated until none makes progress or `max_attempts` predicate calls are spent:
//! 1. remove chunks of steps: halves, quarters, ... single steps (removing a `Connect` also
//!    removes the steps that name its client, which keeps candidates valid);
//! 2. simplify each step: burst count → 1 or halved, payload → 0, HTTP → notifier, shorter
//!    pauses, flood connections halved, oversized frames smaller, random loss → total loss;
//! 3. merge users (fewer users, user i → 0), fewer client hosts (host → 0);
//! 4. pull step times together (all times halved, each gap removed);
//! 5. shorten the quiet period, never below the liveness bound + 2 s (below that, loss and
//!    liveness are no longer decidable and any "failure" would be an artifact).
//!
//! Every candidate passes [`crate::generators::validate`] before the predicate sees it, and
//! candidates are tried in a fixed order, so the same input and predicate give the same result.

use crate::checkers::liveness_bound_ms;
use crate::generators::validate;
use crate::scenario::{Attack, Scenario, Step, TimedStep, Via};
use std::collections::BTreeSet;

/// A loss rate that drops every message: the deterministic form of a lossy window.
const LOSS_TOTAL_PER_MILLE: u32 = 1000;

/// Shrinks `scenario` while `still_fails` holds; calls it at most `max_attempts` times.
pub fn shrink(scenario: &Scenario, still_fails: &mut dyn FnMut(&Scenario) -> bool, max_attempts: usize) -> Scenario {
    let mut shrinker = Shrinker {
        best: scenario.clone(),
        still_fails,
        attempts: 0,
        max_attempts,
    };
    loop {
        let before = shrinker.best.clone();
        shrinker.remove_chunks();
        shrinker.simplify_steps();
        shrinker.merge_users();
        shrinker.merge_hosts();
        shrinker.pull_times_together();
        shrinker.shorten_quiet_period();
        if shrinker.best == before || shrinker.exhausted() {
            return shrinker.best;
        }
    }
}

struct Shrinker<'a> {
    best: Scenario,
    still_fails: &'a mut dyn FnMut(&Scenario) -> bool,
    attempts: usize,
    max_attempts: usize,
}

impl Shrinker<'_> {
    fn exhausted(&self) -> bool {
        self.attempts >= self.max_attempts
    }

    /// Tries a candidate (after repairing dangling client references); adopts it if it is
    /// valid, different and still fails.
    fn try_candidate(&mut self, candidate: Scenario) -> bool {
        if self.exhausted() {
            return false;
        }
        let candidate = repair(candidate);
        if candidate == self.best || validate(&candidate).is_err() {
            return false;
        }
        self.attempts += 1;
        if (self.still_fails)(&candidate) {
            self.best = candidate;
            true
        } else {
            false
        }
    }

    fn remove_chunks(&mut self) {
        let mut chunk = self.best.steps.len().div_ceil(2).max(1);
        loop {
            let mut start = 0;
            while start < self.best.steps.len() && !self.exhausted() {
                let mut candidate = self.best.clone();
                let end = (start + chunk).min(candidate.steps.len());
                candidate.steps.drain(start..end);
                if !self.try_candidate(candidate) {
                    start += chunk;
                }
            }
            if chunk == 1 || self.exhausted() {
                return;
            }
            chunk = chunk.div_ceil(2);
        }
    }

    /// Tries each step's simplifications, most aggressive first. Once one is adopted, the
    /// rest were derived from the step as it was, so they are recomputed from the adopted step
    /// (every simplification strictly simplifies, so this ends; the attempt budget bounds it).
    fn simplify_steps(&mut self) {
        let mut i = 0;
        while i < self.best.steps.len() && !self.exhausted() {
            let mut simpler = simplifications(&self.best.steps[i].step);
            let mut k = 0;
            while k < simpler.len() && !self.exhausted() {
                let mut candidate = self.best.clone();
                candidate.steps[i].step = simpler[k].clone();
                if self.try_candidate(candidate) && i < self.best.steps.len() {
                    simpler = simplifications(&self.best.steps[i].step);
                    k = 0;
                } else {
                    k += 1;
                }
            }
            i += 1;
        }
    }

    fn merge_users(&mut self) {
        // Fewer users first (u → u mod n keeps low users as they are), then single users → 0.
        for users in 1..self.best.config.users {
            let mut candidate = self.best.clone();
            candidate.config.users = users;
            map_users(&mut candidate, |u| u % users);
            if self.try_candidate(candidate) {
                break;
            }
        }
        for user in (1..self.best.config.users).rev() {
            let mut candidate = self.best.clone();
            map_users(&mut candidate, |u| if u == user { 0 } else { u });
            self.try_candidate(candidate);
        }
    }

    fn merge_hosts(&mut self) {
        for hosts in 1..self.best.config.client_hosts {
            let mut candidate = self.best.clone();
            candidate.config.client_hosts = hosts;
            map_hosts(&mut candidate, |h| h % hosts);
            if self.try_candidate(candidate) {
                break;
            }
        }
    }

    fn pull_times_together(&mut self) {
        // Halve every time while that still fails.
        while !self.exhausted() && self.best.last_step_ms() > 0 {
            let mut candidate = self.best.clone();
            for step in &mut candidate.steps {
                step.at_ms /= 2;
            }
            if !self.try_candidate(candidate) {
                break;
            }
        }
        // Then close each gap between consecutive distinct times, latest first.
        let times: BTreeSet<u64> = self.best.steps.iter().map(|s| s.at_ms).collect();
        let times: Vec<u64> = times.into_iter().collect();
        for pair in times.windows(2).rev() {
            let (earlier, later) = (pair[0], pair[1]);
            let gap = later - earlier;
            let mut candidate = self.best.clone();
            for step in &mut candidate.steps {
                if step.at_ms >= later {
                    step.at_ms -= gap;
                }
            }
            self.try_candidate(candidate);
        }
        if let Some(first) = self.best.steps.iter().map(|s| s.at_ms).min().filter(|&f| f > 0) {
            let mut candidate = self.best.clone();
            for step in &mut candidate.steps {
                step.at_ms -= first;
            }
            self.try_candidate(candidate);
        }
    }

    fn shorten_quiet_period(&mut self) {
        let floor = liveness_bound_ms(&self.best.config.timeouts) + 2_000;
        while self.best.config.quiet_period_ms > floor && !self.exhausted() {
            let mut candidate = self.best.clone();
            candidate.config.quiet_period_ms = (candidate.config.quiet_period_ms / 2).max(floor);
            if !self.try_candidate(candidate) {
                break;
            }
        }
    }
}

/// Simpler versions of one step, most aggressive first.
fn simplifications(step: &Step) -> Vec<Step> {
    let mut out = Vec::new();
    match step {
        Step::Burst {
            user,
            run,
            count,
            payload_bytes,
            via,
        } => {
            let with = |count: u32, payload_bytes: u32, via: Via| Step::Burst {
                user: *user,
                run: *run,
                count,
                payload_bytes,
                via,
            };
            if *count > 1 {
                out.push(with(1, *payload_bytes, *via));
                out.push(with(count / 2, *payload_bytes, *via));
            }
            if *payload_bytes > 0 {
                out.push(with(*count, 0, *via));
            }
            if *via != Via::Notifier {
                out.push(with(*count, *payload_bytes, Via::Notifier));
            }
            if *run > 0 {
                out.push(Step::Burst {
                    user: *user,
                    run: 0,
                    count: *count,
                    payload_bytes: *payload_bytes,
                    via: *via,
                });
            }
        }
        Step::Publish {
            user,
            run,
            kind,
            payload_bytes,
            via,
        } => {
            let with = |run: u32, payload_bytes: u32, via: Via| Step::Publish {
                user: *user,
                run,
                kind: *kind,
                payload_bytes,
                via,
            };
            if *payload_bytes > 0 {
                out.push(with(*run, 0, *via));
            }
            if *via != Via::Notifier {
                out.push(with(*run, *payload_bytes, Via::Notifier));
            }
            if *run > 0 {
                out.push(with(0, *payload_bytes, *via));
            }
        }
        Step::Pause { client, duration_ms } if *duration_ms > 100 => {
            out.push(Step::Pause {
                client: *client,
                duration_ms: duration_ms / 2,
            });
        }
        Step::Connect {
            client,
            user,
            host,
            token_ttl_ms: Some(_),
        } => out.push(Step::Connect {
            client: *client,
            user: *user,
            host: *host,
            token_ttl_ms: None,
        }),
        Step::PartitionOneWay { host, .. } => out.push(Step::Partition { host: *host }),
        // Total loss drops every message whatever the network's random draws are, so a
        // failure that hinged on one unlucky drop no longer depends on which other steps
        // consume those draws, and the chunk removal can go on removing them.
        Step::SetLossRate { per_mille } if (1..LOSS_TOTAL_PER_MILLE).contains(per_mille) => {
            out.push(Step::SetLossRate {
                per_mille: LOSS_TOTAL_PER_MILLE,
            })
        }
        Step::Hostile {
            host,
            attack: Attack::Flood { user, connections },
        } if *connections > 1 => out.push(Step::Hostile {
            host: *host,
            attack: Attack::Flood {
                user: *user,
                connections: connections / 2,
            },
        }),
        Step::Hostile {
            host,
            attack: Attack::OversizedFrame { bytes },
        } if *bytes > 70_000 => out.push(Step::Hostile {
            host: *host,
            attack: Attack::OversizedFrame { bytes: 70_000 },
        }),
        _ => {}
    }
    out
}

/// Drops steps that name a client with no earlier `Connect` (or one already closed), and
/// renumbers nothing: client ids stay stable so a shrunk scenario reads like the original.
fn repair(mut scenario: Scenario) -> Scenario {
    let mut order: Vec<usize> = (0..scenario.steps.len()).collect();
    order.sort_by_key(|&i| (scenario.steps[i].at_ms, i));
    let mut open: BTreeSet<u32> = BTreeSet::new();
    let mut keep = vec![true; scenario.steps.len()];
    for i in order {
        match &scenario.steps[i].step {
            Step::Connect { client, .. } => keep[i] = open.insert(*client),
            Step::Close { client } => keep[i] = open.remove(client),
            Step::Kill { client } | Step::Pause { client, .. } => keep[i] = open.contains(client),
            Step::Hostile {
                attack: Attack::ResumeAsOther { user, victim },
                ..
            } => keep[i] = user != victim,
            _ => {}
        }
    }
    let steps: Vec<TimedStep> = scenario
        .steps
        .into_iter()
        .zip(keep)
        .filter_map(|(step, keep)| keep.then_some(step))
        .collect();
    scenario.steps = steps;
    scenario
}

fn map_users(scenario: &mut Scenario, f: impl Fn(u32) -> u32) {
    for step in &mut scenario.steps {
        match &mut step.step {
            Step::Connect { user, .. } | Step::Publish { user, .. } | Step::Burst { user, .. } => *user = f(*user),
            Step::Hostile { attack, .. } => {
                for user in attack.users_mut() {
                    *user = f(*user);
                }
            }
            _ => {}
        }
    }
}

fn map_hosts(scenario: &mut Scenario, f: impl Fn(u32) -> u32) {
    for step in &mut scenario.steps {
        match &mut step.step {
            Step::Connect { host, .. }
            | Step::Partition { host }
            | Step::PartitionOneWay { host, .. }
            | Step::Repair { host }
            | Step::Hold { host }
            | Step::Release { host }
            | Step::Hostile { host, .. } => *host = f(*host),
            _ => {}
        }
    }
}
