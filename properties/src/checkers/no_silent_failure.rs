//! No silent failure: every publish either returns a seq or a typed error, and an error means
//! the event does not exist.
//!
//! Rules:
//! - every `PublishCalled` has its `PublishReturned` before `End` (a publish that never resolves
//!   leaves an agent believing its notification went out);
//! - an event whose every attempt failed with a non-ambiguous code (anything but `timeout`,
//!   which means "no answer": the event may exist) must never appear in any frame or delivered
//!   item: the publisher was told "not published" and the user saw it anyway, so the agent
//!   retries and the user gets it twice, or the error was a lie.

use super::index::Index;
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{DeliveredItem, FrameSeen, Observation};

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    if let Some((end_idx, end_at)) = index.end {
        if let Some(call) = index.calls.iter().find(|c| c.returned.is_none()) {
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
        let Some(event) = index.event(id).filter(|e| e.definitely_failed) else {
            continue;
        };
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
