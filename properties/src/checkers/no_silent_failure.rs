//! No silent failure: every publish either returns a seq or a typed error, and an error means
//! the event does not exist.
//!
//! Rules:
//! - every `PublishCalled` has its `PublishReturned` before `End` (a publish that never resolves
//!   leaves an agent believing its notification went out), unless it was called less than
//!   `publish_timeout_ms` + 1000 before `End`: its answer may still be due (the world ends at the
//!   quiet period's end even while a publisher refused again and again is still retrying);
//! - an event whose every attempt failed with a non-ambiguous code (anything but `timeout` and
//!   `connection_lost`, which mean "no answer": the event may exist) must never appear in any
//!   frame or delivered item: the publisher was told "not published" and the user saw it
//!   anyway, so the agent retries and the user gets it twice, or the error was a lie;
//! - a success names a position that can exist: `seq >= 1` (streams start at 1) and a
//!   non-empty epoch, and no two different events of one user are told the same `(epoch, seq)`.
//!   A bridge that swallows errors into a default `Ok` (the `Option`-bridge no-op, an
//!   `unwrap_or_default()`) returns exactly such fake positions, and nothing else in the
//!   history shows it: the event simply never exists.

use super::index::{publish_answer_bound_ms, Index};
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{DeliveredItem, FrameSeen, Observation, PublishOutcome};
use rustc_hash::FxHashMap;

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    if let Some((end_idx, end_at)) = index.end {
        let answer_due_ms = publish_answer_bound_ms(&index.scenario.config.timeouts);
        if let Some(call) = index
            .calls
            .iter()
            .find(|c| c.returned.is_none() && c.at + answer_due_ms <= end_at)
        {
            return Err(violation(
                Invariant::NoSilentFailure,
                Severity::Critical,
                Category::BridgeInitialization,
                format!(
                    "publish of {} for user {} via {} called at {} never returned, neither a seq nor an error, by the end at {}",
                    call.event_id,
                    call.user,
                    call.via,
                    t(call.at),
                    t(end_at)
                ),
                vec![call.idx, end_idx],
            ));
        }
    }
    if let Some(v) = fake_success(index) {
        return Err(v);
    }
    let failed: FxHashMap<&str, usize> = index
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.definitely_failed)
        .map(|(i, e)| (e.event_id, i))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    for (idx, entry) in index.entries.iter().enumerate() {
        let (client, id) = match &entry.what {
            Observation::FrameReceived {
                client,
                frame: FrameSeen::Event { event_id: Some(id), .. },
                ..
            } => (*client, id),
            Observation::Delivered {
                client,
                item: DeliveredItem::Event { event_id: Some(id), .. },
                ..
            } => (*client, id),
            _ => continue,
        };
        let Some(&event) = failed.get(id.as_str()) else {
            continue;
        };
        let event = &index.events[event];
        let last = *event.calls.last().expect("an event has at least one call");
        let returned = index.calls[last].returned.expect("definitely failed implies returned");
        let code = match &index.entries[returned].what {
            Observation::PublishReturned {
                outcome: crate::history::PublishOutcome::Failed { code, .. },
                ..
            } => code.as_str(),
            _ => "?",
        };
        return Err(violation(
            Invariant::NoSilentFailure,
            Severity::Critical,
            Category::BridgeInitialization,
            format!(
                "event {id} for user {} was reported as failed to its publisher ({} attempt(s), last error {code} at {}) but reached client {client} at {}",
                event.user,
                event.calls.len(),
                t(index.at(returned)),
                t(entry.at_ms)
            ),
            vec![event.first_call_idx, returned, idx],
        ));
    }
    Ok(())
}

/// The first success whose position cannot be real: seq 0, an empty epoch, or a position
/// another event of the same user was already given.
fn fake_success(index: &Index<'_>) -> Option<Violation> {
    let mut given: FxHashMap<(&str, &str, u64), (&str, usize)> = FxHashMap::default();
    for (idx, entry) in index.entries.iter().enumerate() {
        let Observation::PublishReturned {
            event_id,
            outcome: PublishOutcome::Published { seq, epoch, .. },
            ..
        } = &entry.what
        else {
            continue;
        };
        let Some(event) = index.event(event_id) else {
            continue;
        };
        if *seq == 0 || epoch.is_empty() {
            return Some(violation(
                Invariant::NoSilentFailure,
                Severity::Critical,
                Category::BridgeInitialization,
                format!(
                    "publish of {event_id} for user {} returned success at {} with seq {seq} and epoch {epoch:?}, a position that cannot exist (seqs start at 1, epochs are never empty): the publish path turned a failure into a default Ok and the event was never created",
                    event.user,
                    t(entry.at_ms)
                ),
                vec![event.first_call_idx, idx],
            ));
        }
        match given.get(&(event.user, epoch.as_str(), *seq)) {
            Some(&(other, other_idx)) if other != event_id.as_str() => {
                return Some(violation(
                    Invariant::NoSilentFailure,
                    Severity::Critical,
                    Category::BridgeInitialization,
                    format!(
                        "publishes of {other} and {event_id} for user {} were both told epoch {epoch} seq {seq} (at {} and {}): one of the two successes is fake",
                        event.user,
                        t(index.at(other_idx)),
                        t(entry.at_ms)
                    ),
                    vec![other_idx, idx],
                ));
            }
            Some(_) => {}
            None => {
                given.insert((event.user, epoch.as_str(), *seq), (event_id.as_str(), idx));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::checkers::builder::{scenario_with, HistoryBuilder};
    use crate::checkers::{check, Invariant};
    use crate::scenario::{Step, Via};

    fn scenario() -> crate::scenario::Scenario {
        scenario_with(
            1,
            vec![Step::Connect {
                client: 0,
                user: 0,
                host: 0,
                token_ttl_ms: None,
            }],
        )
    }

    #[test]
    fn fires_on_a_swallowed_error_returned_as_seq_zero() {
        let mut b = HistoryBuilder::new();
        b.at(100);
        b.publish_ok("u0", "E0", 1);
        b.at(200);
        let id = b.publish_called("u0", Via::Notifier, 10);
        b.published(&id, "", 0, false);
        let violation = check(Invariant::NoSilentFailure, &scenario(), &b.build()).unwrap_err();
        assert!(violation.explanation.contains("seq 0"), "{violation}");
    }

    #[test]
    fn fires_when_two_events_are_told_the_same_position() {
        let mut b = HistoryBuilder::new();
        b.at(100);
        b.publish_ok("u0", "E0", 1);
        b.at(200);
        let id = b.publish_called("u0", Via::Notifier, 10);
        b.published(&id, "E0", 1, false);
        let violation = check(Invariant::NoSilentFailure, &scenario(), &b.build()).unwrap_err();
        assert!(
            violation.explanation.contains("one of the two successes is fake"),
            "{violation}"
        );
    }

    #[test]
    fn near_miss_an_idempotent_retry_is_told_its_original_position() {
        let mut b = HistoryBuilder::new();
        b.at(100);
        let id = b.publish_called(
            "u0",
            Via::Http {
                idempotency_key: true,
                retries: 1,
            },
            10,
        );
        b.failed(&id, "timeout");
        b.at(400);
        b.retry_called(&id);
        b.published(&id, "E0", 1, true);
        b.at(500);
        b.publish_ok("u0", "E0", 2);
        // The same seq in another epoch (after a restart) is another position.
        b.publish_ok("u0", "E1", 1);
        assert_eq!(check(Invariant::NoSilentFailure, &scenario(), &b.build()), Ok(()));
    }
}
