//! Order: each client's application sees its user's events in seq order, and seq order equals
//! publish order.
//!
//! Rules:
//! - per client, per epoch: delivered positions strictly increase. A delivered event moves the
//!   position to its seq, a retention gap to its `to`, an epoch gap (the stream is gone) to
//!   infinity; an event at or below the position is out of order (an equal seq is left to the
//!   duplicates checker);
//! - per connection: event frame seqs never go backwards (a server that sends live events
//!   before finishing the replay shows here even if the client library hides it);
//! - per user, per epoch: if publish A returned success before publish B was called, then
//!   seqA < seqB (the stream order is the order publishers observed).

use super::index::{gap_end, Index};
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{DeliveredItem, FrameSeen};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    if let Some(v) = delivered_order(index) {
        return Err(v);
    }
    if let Some(v) = frame_order(index) {
        return Err(v);
    }
    publish_order(index).map_or(Ok(()), Err)
}

fn misorder(explanation: String, evidence: Vec<usize>) -> Violation {
    violation(
        Invariant::Order,
        Severity::High,
        Category::NotificationDelivery,
        explanation,
        evidence,
    )
}

fn delivered_order(index: &Index<'_>) -> Option<Violation> {
    for client in index.clients.values() {
        // epoch → (position, entry that set it)
        let mut position: FxHashMap<&str, (u64, usize)> = FxHashMap::default();
        for (idx, item) in index.delivered(client) {
            match item {
                DeliveredItem::Event {
                    epoch, seq, event_id, ..
                } => {
                    if let Some(&(pos, at_idx)) = position.get(epoch.as_str()) {
                        if *seq < pos || (*seq == pos && index.delivered_item(at_idx).is_some_and(is_gap)) {
                            let before = if pos == u64::MAX {
                                "an epoch gap that ended the stream".to_string()
                            } else {
                                format!("position {pos}")
                            };
                            return Some(misorder(
                                format!(
                                    "{} was handed epoch {epoch} seq {seq} ({}) at {} after it had already reached {before} at {}",
                                    client.describe(),
                                    event_id.as_deref().unwrap_or("no id"),
                                    t(index.at(idx)),
                                    t(index.at(at_idx))
                                ),
                                vec![at_idx, idx],
                            ));
                        }
                    }
                    let entry = position.entry(epoch.as_str()).or_insert((0, idx));
                    if *seq >= entry.0 {
                        *entry = (*seq, idx);
                    }
                }
                DeliveredItem::Gap {
                    epoch,
                    from,
                    to,
                    reason,
                    ..
                } => {
                    let end = gap_end(reason, *to);
                    if let Some(&(pos, at_idx)) = position.get(epoch.as_str()) {
                        if *from <= pos && pos != u64::MAX && reason != "epoch" {
                            return Some(misorder(
                                format!(
                                    "{} was handed a gap {from}..{} in epoch {epoch} at {} after it had already reached seq {pos} at {}",
                                    client.describe(),
                                    to.map_or("".to_string(), |t| t.to_string()),
                                    t(index.at(idx)),
                                    t(index.at(at_idx))
                                ),
                                vec![at_idx, idx],
                            ));
                        }
                    }
                    let entry = position.entry(epoch.as_str()).or_insert((0, idx));
                    if end >= entry.0 {
                        *entry = (end, idx);
                    }
                }
            }
        }
    }
    None
}

fn is_gap(item: &DeliveredItem) -> bool {
    matches!(item, DeliveredItem::Gap { .. })
}

fn frame_order(index: &Index<'_>) -> Option<Violation> {
    for client in index.clients.values() {
        for conn in &client.conns {
            let mut last: Option<(u64, usize)> = None;
            for &idx in &conn.frames {
                let Some(FrameSeen::Event { seq, event_id, .. }) = index.frame(idx) else {
                    continue;
                };
                if let Some((prev, prev_idx)) = last {
                    if *seq < prev {
                        return Some(misorder(
                            format!(
                                "connection {} of {} received seq {seq} ({}) at {} after seq {prev} at {}: the server sent its stream out of order",
                                Index::conn_label(conn),
                                client.describe(),
                                event_id.as_deref().unwrap_or("no id"),
                                t(index.at(idx)),
                                t(index.at(prev_idx))
                            ),
                            vec![prev_idx, idx],
                        ));
                    }
                }
                if last.is_none_or(|(prev, _)| *seq > prev) {
                    last = Some((*seq, idx));
                }
            }
        }
    }
    None
}

fn publish_order(index: &Index<'_>) -> Option<Violation> {
    // (user, epoch) → instances
    let mut streams: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (i, inst) in index.instances.iter().enumerate() {
        streams.entry((inst.user, inst.epoch)).or_default().push(i);
    }
    for ((user, epoch), instances) in streams {
        // A: sorted by return; B: need the largest seq among As that returned before B's call.
        let mut by_return = instances.clone();
        by_return.sort_by_key(|&i| index.instances[i].returned_idx);
        let mut prefix_max: Vec<usize> = Vec::with_capacity(by_return.len());
        for (k, &i) in by_return.iter().enumerate() {
            let best = match k {
                0 => i,
                _ => {
                    let prev = prefix_max[k - 1];
                    if index.instances[i].seq > index.instances[prev].seq {
                        i
                    } else {
                        prev
                    }
                }
            };
            prefix_max.push(best);
        }
        for &b in &instances {
            let inst_b = &index.instances[b];
            let event_b = &index.events[inst_b.event];
            // The attempt that created B was called no earlier than B's first call.
            let called = event_b.first_call_idx;
            let n = by_return.partition_point(|&a| index.instances[a].returned_idx < called);
            if n == 0 {
                continue;
            }
            let a = prefix_max[n - 1];
            let inst_a = &index.instances[a];
            if inst_a.seq >= inst_b.seq {
                let event_a = &index.events[inst_a.event];
                return Some(misorder(
                    format!(
                        "user {user} epoch {epoch}: event {} returned seq {} at {}, before event {} was even called at {}, yet got the lower seq {}; seq order must equal publish order",
                        event_a.event_id,
                        inst_a.seq,
                        t(inst_a.returned_at),
                        event_b.event_id,
                        t(event_b.first_call_at),
                        inst_b.seq
                    ),
                    vec![inst_a.returned_idx, event_b.first_call_idx, inst_b.returned_idx],
                ));
            }
        }
    }
    None
}
