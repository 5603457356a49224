//! No duplicates: no event is handed to one client's application twice, and the server never
//! re-sends what a client already has.
//!
//! Rules:
//! - per client: a delivered `(epoch, seq)` repeats;
//! - per client: one `event_id` is delivered at two seqs of one epoch — the server created the
//!   event twice for one idempotency key. That is only legitimate when the key had already been
//!   evicted (keys live as long as their event is retained), so it fires only when the first copy
//!   was *certainly* still retained at the latest moment the second could have been created
//!   (the last answer to any attempt, or, for an attempt that timed out, the latest moment its
//!   request can still have reached the server), or when the publish carried no key at all;
//! - per connection: an event frame repeats a seq, or, after a resume into the same epoch
//!   (`welcome.epoch == resume.epoch`), carries a seq `<= after` (the replay must start at
//!   `after + 1`). The client library drops such frames, so this is the only place the server
//!   bug shows.

use super::index::Index;
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{DeliveredItem, FrameSeen};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    let mut found: Option<Violation> = None;
    let mut record = |v: Violation| {
        if found.as_ref().is_none_or(|f| v.evidence.last() < f.evidence.last()) {
            found = Some(v);
        }
    };
    for client in index.clients.values() {
        let who = client.describe();
        let mut by_seq: FxHashMap<(&str, u64), usize> = FxHashMap::default();
        let mut by_id: FxHashMap<(&str, &str), (usize, u64)> = FxHashMap::default();
        for &idx in &client.delivered {
            let Some(DeliveredItem::Event {
                epoch, seq, event_id, ..
            }) = index.delivered_item(idx)
            else {
                continue;
            };
            if let Some(&first) = by_seq.get(&(epoch.as_str(), *seq)) {
                record(dup(
                    format!(
                        "{who} was handed epoch {epoch} seq {seq} ({}) twice: at {} and again at {}",
                        event_id.as_deref().unwrap_or("no id"),
                        t(index.at(first)),
                        t(index.at(idx))
                    ),
                    vec![first, idx],
                ));
                break;
            }
            by_seq.insert((epoch.as_str(), *seq), idx);
            let Some(id) = event_id.as_deref() else {
                continue;
            };
            if let Some(&(first, first_seq)) = by_id.get(&(epoch.as_str(), id)) {
                if recreated_illegitimately(index, id, epoch, first_seq) {
                    record(dup(
                        format!(
                            "{who} was handed event {id} twice in epoch {epoch}: as seq {first_seq} at {} and as seq {seq} at {}; the server created it twice although its idempotency key was still retained",
                            t(index.at(first)),
                            t(index.at(idx))
                        ),
                        vec![first, idx],
                    ));
                    break;
                }
            } else {
                by_id.insert((epoch.as_str(), id), (idx, *seq));
            }
        }
        for conn in &client.conns {
            let Some(welcome) = &conn.welcome else {
                continue;
            };
            let replay_from = conn
                .resume
                .filter(|r| r.epoch == welcome.epoch)
                .map_or(0, |r| r.after + 1);
            let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
            for &idx in &conn.frames {
                let Some(FrameSeen::Event { seq, event_id, .. }) = index.frame(idx) else {
                    continue;
                };
                let id = event_id.as_deref().unwrap_or("no id");
                if let Some(&first) = seen.get(seq) {
                    record(dup(
                        format!(
                            "connection {} of {who} received seq {seq} ({id}) twice: at {} and at {}",
                            welcome.connection,
                            t(index.at(first)),
                            t(index.at(idx))
                        ),
                        vec![first, idx],
                    ));
                    break;
                }
                if *seq < replay_from {
                    record(dup(
                        format!(
                            "connection {} of {who} resumed epoch {} after seq {} but was sent seq {seq} ({id}) again at {}; replay must start at after + 1",
                            welcome.connection,
                            welcome.epoch,
                            replay_from - 1,
                            t(index.at(idx))
                        ),
                        vec![conn.connecting_idx, welcome.idx, idx],
                    ));
                    break;
                }
                seen.insert(*seq, idx);
            }
        }
    }
    found.map_or(Ok(()), Err)
}

fn dup(explanation: String, evidence: Vec<usize>) -> Violation {
    violation(
        Invariant::NoDuplicates,
        Severity::High,
        Category::ReconnectionRecovery,
        explanation,
        evidence,
    )
}

/// Whether event `id` existing at two seqs of `epoch` proves a dedup failure: no key at all, or
/// the first copy was certainly retained (key still known) when the second could last have
/// been created.
fn recreated_illegitimately(index: &Index<'_>, id: &str, epoch: &str, first_seq: u64) -> bool {
    let Some(event) = index.event(id) else {
        return false;
    };
    let keyed = event.calls.iter().any(|&c| index.calls[c].idempotency_key.is_some());
    if !keyed {
        return event.calls.len() == 1;
    }
    index
        .latest_apply_ms(event)
        .is_some_and(|latest| index.retained_since(event.user, epoch, first_seq, event.first_call_at, latest))
}
