//! Honest gaps: a gap or `recovered: false` is only reported when the data really was gone.
//!
//! Rules, for normal clients (hostile ones resume into streams that are not theirs on purpose):
//! - a `retention` gap (received or delivered) covering a seq whose event was *certainly* still
//!   retained when the gap arrived (see `Index::certainly_retained`: younger than
//!   `retention_age_ms`, fewer than `retention_events_max` later events, little enough traffic
//!   that byte eviction cannot have reached it, same server life);
//! - an `epoch` gap on a connection whose welcome carries that very epoch: the stream the client
//!   resumed still exists, nothing was lost;
//! - a welcome with `recovered: false` answering a resume into the *same* epoch, when every
//!   event after `after` up to the welcome's head was certainly retained (including the trivial
//!   case `after == head`).
//!
//! - a welcome into a *different* epoch than the one resumed, while an event of the resumed
//!   epoch, created before the connection attempt began, was certainly still retained when the
//!   welcome arrived: the hub drops a user's stream only once it holds no event and no
//!   connection (`drop_stream_if_idle`), and a stream lives as long as its server life, so the
//!   resumed stream still existed and the resume had to be served from it. (`certainly_retained`
//!   already rules out a restart or crash in between, and every retention limit.)
//!
//! - a welcome into a *different* epoch than the one resumed, when the same client had been
//!   welcomed into the resumed epoch by the same server life: within a life the hub keeps a
//!   quiet stream (nothing retained, no connection) dormant by epoch and head, and the world
//!   lets it remember as many as `users_max`, so only a scenario naming more users than that
//!   may see an epoch forgotten. The resume had to be served in its own epoch, with a
//!   `retention` gap at most.
//!
//! A server that answers every resume with a gap fails the last four rules on the first
//! reconnect that could have been served from retention.

use super::index::{Client, Conn, Index, Welcome};
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::ResumeSent;
use crate::history::{DeliveredItem, FrameSeen};

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    let epochs_kept = quiet_streams_kept(index);
    for client in index.clients.values().filter(|c| !c.hostile) {
        for conn in &client.conns {
            let label = Index::conn_label(conn);
            if let (Some(welcome), Some(resume)) = (&conn.welcome, conn.resume) {
                if resume.epoch != welcome.epoch {
                    if let Some(v) = dropped_stream(index, client, conn, welcome, resume, &label) {
                        return Err(v);
                    }
                    if let Some(v) = epochs_kept
                        .then(|| forgotten_epoch(index, client, conn, welcome, resume, &label))
                        .flatten()
                    {
                        return Err(v);
                    }
                }
                if resume.epoch == welcome.epoch && !welcome.recovered && resume.after <= welcome.head {
                    let all_retained = (resume.after + 1..=welcome.head)
                        .all(|seq| index.certainly_retained(&client.user, welcome.epoch, seq, welcome.at));
                    if all_retained {
                        return Err(dishonest(
                            format!(
                                "{} resumed epoch {} after seq {} and was welcomed on connection {label} at {} with recovered=false, yet every event up to head {} was certainly still retained",
                                client.describe(),
                                resume.epoch,
                                resume.after,
                                t(welcome.at),
                                welcome.head
                            ),
                            vec![conn.connecting_idx, welcome.idx],
                        ));
                    }
                }
            }
            for &idx in &conn.frames {
                let Some(FrameSeen::Gap {
                    epoch,
                    from,
                    to,
                    reason,
                    ..
                }) = index.frame(idx)
                else {
                    continue;
                };
                if reason == "epoch" {
                    if let Some(welcome) = conn.welcome.as_ref().filter(|w| w.epoch == epoch && w.idx < idx) {
                        return Err(dishonest(
                            format!(
                                "connection {label} of {} got an epoch gap for epoch {epoch} from seq {from} at {}, but its welcome at {} says epoch {epoch} still exists",
                                client.describe(),
                                t(index.at(idx)),
                                t(welcome.at)
                            ),
                            vec![welcome.idx, idx],
                        ));
                    }
                } else if let Some(v) = retention_gap(index, client, epoch, *from, *to, idx, &label) {
                    return Err(v);
                }
            }
        }
        for &idx in &client.delivered {
            if let Some(DeliveredItem::Gap {
                epoch,
                from,
                to,
                reason,
                ..
            }) = index.delivered_item(idx)
            {
                if reason == "retention" {
                    if let Some(v) = retention_gap(index, client, epoch, *from, *to, idx, "(delivered)") {
                        return Err(v);
                    }
                }
            }
        }
    }
    Ok(())
}

fn dishonest(explanation: String, evidence: Vec<usize>) -> Violation {
    violation(
        Invariant::HonestGaps,
        Severity::Medium,
        Category::ReconnectionRecovery,
        explanation,
        evidence,
    )
}

fn retention_gap(
    index: &Index<'_>,
    client: &Client<'_>,
    epoch: &str,
    from: u64,
    to: Option<u64>,
    idx: usize,
    label: &str,
) -> Option<Violation> {
    let at = index.at(idx);
    let user = client.user.as_str();
    let hi = to.unwrap_or(u64::MAX);
    let (&(_, _, seq), &instance) = index
        .instance_at
        .range((user, epoch, from)..=(user, epoch, hi))
        .find(|(&(_, _, seq), _)| index.certainly_retained(user, epoch, seq, at))?;
    let event = &index.events[index.instances[instance].event];
    Some(dishonest(
        format!(
            "{} got a retention gap {from}..{} in epoch {epoch} on connection {label} at {}, but seq {seq} ({}, published at {}) was certainly still retained",
            client.describe(),
            to.map_or("".to_string(), |t| t.to_string()),
            t(at),
            event.event_id,
            t(event.first_call_at)
        ),
        vec![event.first_call_idx, idx],
    ))
}

/// A welcome into a new epoch although the resumed epoch's stream certainly still existed: some
/// event of it, returned by a publish before the connection attempt began (so it existed when
/// the hub handled the hello), was certainly still retained when the welcome arrived.
fn dropped_stream(
    index: &Index<'_>,
    client: &Client<'_>,
    conn: &Conn<'_>,
    welcome: &Welcome<'_>,
    resume: &ResumeSent,
    label: &str,
) -> Option<Violation> {
    let user = client.user.as_str();
    let epoch = resume.epoch.as_str();
    let (&(_, _, seq), &instance) = index
        .instance_at
        .range((user, epoch, 0)..=(user, epoch, u64::MAX))
        .rev()
        .filter(|(_, &i)| index.instances[i].returned_idx < conn.connecting_idx)
        .find(|(&(_, _, seq), _)| index.certainly_retained(user, epoch, seq, welcome.at))?;
    let event = &index.events[index.instances[instance].event];
    Some(dishonest(
        format!(
            "{} resumed epoch {epoch} after seq {} and was welcomed on connection {label} at {} into a new epoch {} (recovered={}), yet the resumed stream still existed: seq {seq} of it ({}, published at {}) was certainly still retained and no server restart came in between",
            client.describe(),
            resume.after,
            t(welcome.at),
            welcome.epoch,
            welcome.recovered,
            event.event_id,
            t(event.first_call_at)
        ),
        vec![event.first_call_idx, conn.connecting_idx, welcome.idx],
    ))
}

/// Whether the hub of this scenario keeps every quiet stream's epoch for its life: the world
/// sets `dormant_streams_max` to `users_max`, so it does unless the scenario names more users.
fn quiet_streams_kept(index: &Index<'_>) -> bool {
    let users: std::collections::BTreeSet<&str> = index
        .clients
        .values()
        .map(|c| c.user.as_str())
        .chain(index.calls.iter().map(|call| call.user))
        .collect();
    let users = (users.len() as u64).max(u64::from(index.scenario.config.users));
    users <= index.scenario.config.limits.users_max
}

/// A welcome into a new epoch although the same server life had welcomed this client into the
/// resumed epoch: the hub keeps every quiet stream's epoch while it remembers fewer than
/// `dormant_streams_max` (see [`quiet_streams_kept`]), so the epoch cannot have been forgotten.
fn forgotten_epoch(
    index: &Index<'_>,
    client: &Client<'_>,
    conn: &Conn<'_>,
    welcome: &Welcome<'_>,
    resume: &ResumeSent,
    label: &str,
) -> Option<Violation> {
    // The earlier welcome was sent after its attempt began: if no life stopped from then on,
    // and none started after it, one life sent both welcomes.
    let same_life = |from: u64, to: u64| {
        !index.lives.iter().any(|life| {
            (from < life.started_at && life.started_at <= to)
                || life.stopped_at.is_some_and(|stop| from <= stop && stop <= to)
        })
    };
    let earlier = client.conns.iter().find_map(|earlier_conn| {
        let earlier = earlier_conn.welcome.as_ref()?;
        (earlier.epoch == resume.epoch && earlier.idx < conn.connecting_idx && same_life(earlier_conn.at, welcome.at))
            .then_some(earlier)
    })?;
    Some(dishonest(
        format!(
            "{} resumed epoch {} after seq {} and was welcomed on connection {label} at {} into a new epoch {} (recovered={}), yet the same server life had welcomed it into epoch {} on connection {} at {}: a quiet stream keeps its epoch for the server's life",
            client.describe(),
            resume.epoch,
            resume.after,
            t(welcome.at),
            welcome.epoch,
            welcome.recovered,
            resume.epoch,
            earlier.connection,
            t(earlier.at)
        ),
        vec![earlier.idx, conn.connecting_idx, welcome.idx],
    ))
}
