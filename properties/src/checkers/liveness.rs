//! Liveness: after the heal, clients reconnect and catch up within a stated bound, and no
//! publish call hangs.
//!
//! With T the time of `HealStarted` and B = [`liveness_bound_ms`] (see its doc for the formula):
//! - every live client that was not connected at T is welcomed by T + B; every close after T is
//!   followed by a welcome within B of it (and of T); at `End` the client is connected, unless
//!   its last close came less than B before `End` (undecidable). A client paused by the
//!   application is given the pause on top;
//! - every expected event (as in no-silent-loss) is covered by max(T, its first call) + B, when
//!   that deadline falls before `End`;
//! - every publish attempt returns within `publish_timeout_ms + 1000` of its call (a missing
//!   return counts once `End` is past that deadline).
//!
//! Before the heal a partition may legitimately keep a client away, so nothing is demanded.

use super::index::{liveness_bound_ms, Client, Index};
use super::no_silent_loss::{expected, Coverage};
use super::{t, violation, Category, Invariant, Severity, Violation};

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    if let Some(v) = publish_hangs(index) {
        return Err(v);
    }
    let (Some((heal_idx, heal_at)), Some((end_idx, end_at))) = (index.heal, index.end) else {
        return Ok(());
    };
    let bound = liveness_bound_ms(&index.scenario.config.timeouts);
    for client in index
        .clients
        .values()
        .filter(|c| c.is_live() && !index.refused_by_limit(c))
    {
        if let Some(v) = reconnects(index, client, heal_idx, heal_at, end_idx, end_at, bound) {
            return Err(v);
        }
    }
    for client in index
        .clients
        .values()
        .filter(|c| c.is_live() && !index.refused_by_limit(c))
    {
        let coverage = Coverage::new(index, client);
        for instance in expected(index, client) {
            let inst = &index.instances[instance];
            let event = &index.events[inst.event];
            let deadline = heal_at.max(event.first_call_at) + bound + pause_allowance(client, heal_at);
            if deadline >= end_at {
                continue;
            }
            let covered_at = coverage.covered_by(index, instance).map(|i| index.at(i));
            if covered_at.is_none_or(|at| at > deadline) {
                let when = covered_at.map_or_else(|| "never".to_string(), |at| format!("only at {}", t(at)));
                return Err(violation(
                    Invariant::Liveness,
                    Severity::High,
                    Category::PerformanceLoad,
                    format!(
                        "event {} for user {} (epoch {}, seq {}, published at {}) reached {} {when}, later than the bound {} (heal at {}, B = {bound} ms)",
                        event.event_id,
                        inst.user,
                        inst.epoch,
                        inst.seq,
                        t(event.first_call_at),
                        client.describe(),
                        t(deadline),
                        t(heal_at)
                    ),
                    vec![event.first_call_idx, heal_idx, end_idx],
                ));
            }
        }
    }
    Ok(())
}

/// Extra time a client gets for application pauses that overlap the quiet period.
fn pause_allowance(client: &Client<'_>, heal_at: u64) -> u64 {
    client
        .pauses
        .iter()
        .filter(|(_, until)| *until >= heal_at)
        .map(|(from, until)| until - from)
        .sum()
}

fn reconnects(
    index: &Index<'_>,
    client: &Client<'_>,
    heal_idx: usize,
    heal_at: u64,
    end_idx: usize,
    end_at: u64,
    bound: u64,
) -> Option<Violation> {
    let bound = bound + pause_allowance(client, heal_at);
    let stuck = |since: u64, since_idx: usize, what: String| -> Option<Violation> {
        let deadline = since.max(heal_at) + bound;
        // The first welcome whose entry comes after `since_idx`.
        let next = client
            .conns
            .iter()
            .filter_map(|c| c.welcome.as_ref())
            .find(|w| w.idx > since_idx);
        let late = match next {
            Some(w) => w.at > deadline,
            None => deadline < end_at,
        };
        late.then(|| {
            let when = next.map_or_else(|| "never".to_string(), |w| format!("only at {}", t(w.at)));
            violation(
                Invariant::Liveness,
                Severity::High,
                Category::ReconnectionRecovery,
                format!(
                    "{} {what} and was welcomed again {when}, later than the bound {} (heal at {}, B = {bound} ms, end at {})",
                    client.describe(),
                    t(deadline),
                    t(heal_at),
                    t(end_at)
                ),
                vec![since_idx, heal_idx, next.map_or(end_idx, |w| w.idx)],
            )
        })
    };
    if !client.connected_at(heal_idx) {
        let v = stuck(
            heal_at,
            heal_idx,
            format!("was not connected when the network healed at {}", t(heal_at)),
        );
        if v.is_some() {
            return v;
        }
    }
    for conn in &client.conns {
        let Some(closed) = conn.closed.filter(|&c| c > heal_idx) else {
            continue;
        };
        let what = format!(
            "lost connection {} at {} (close code {:?})",
            Index::conn_label(conn),
            t(index.at(closed)),
            index.close_code(closed)
        );
        let v = stuck(index.at(closed), closed, what);
        if v.is_some() {
            return v;
        }
    }
    None
}

fn publish_hangs(index: &Index<'_>) -> Option<Violation> {
    let limit = index.scenario.config.timeouts.publish_timeout_ms + 1000;
    let horizon = index.end.map(|(_, at)| at).or(index.entries.last().map(|e| e.at_ms))?;
    for call in &index.calls {
        let deadline = call.at + limit;
        let late = match call.returned {
            Some(r) => index.at(r) > deadline,
            None => horizon > deadline,
        };
        if late {
            let when = call.returned.map_or_else(
                || "never returned".to_string(),
                |r| format!("returned only at {}", t(index.at(r))),
            );
            return Some(violation(
                Invariant::Liveness,
                Severity::High,
                Category::PerformanceLoad,
                format!(
                    "publish of {} for user {} via {} called at {} {when}: more than publish_timeout_ms + 1000 = {limit} ms (a hang)",
                    call.event_id,
                    call.user,
                    call.via,
                    t(call.at)
                ),
                call.returned.map_or(vec![call.idx], |r| vec![call.idx, r]),
            ));
        }
    }
    None
}
