//! Liveness: after the heal, clients reconnect and catch up within a stated bound, and no
//! publish call hangs.
//!
//! With T the time of `HealStarted` and B = [`liveness_bound_ms`] (see its doc for the formula):
//! - every live client that was not connected at T is welcomed by T + B; every close after T is
//!   followed by a welcome within B of it (and of T); at `End` the client is connected, unless
//!   its last close came less than B before `End` (undecidable). A client paused by the
//!   application is given the pause on top. A client the server refused with 4009 on the way
//!   while a limit may really have been reached (`Index::limit_refusals`) is owed
//!   its welcome, and its events, within B of the last such refusal instead: a full server
//!   keeps it out legitimately and says so;
//! - every expected event (as in no-silent-loss) is covered by max(T, its creation) + B, when
//!   that deadline falls before `End` (its creation as no-silent-loss bounds it: a keyed retry
//!   may create it long after the first call);
//! - every publish attempt returns within `publish_timeout_ms + 1000` of its call (a missing
//!   return counts once `End` is past that deadline).
//!
//! - no normal client stops for good unless the scenario closed it (a `Close` step applied
//!   before its `ClientStopped`). The client library gives up by itself only on a final refusal
//!   (4004 `bad_frame`, by close code or error frame), on a server frame beyond its
//!   `frame_bytes_max`, or after `attempts_max` attempts without a welcome; a simulated client
//!   resumes only from positions the server sent it, its `frame_bytes_max` is far above any
//!   frame a correct server sends, and `attempts_max` is unset. So a stop on its own is the
//!   server's doing (an epoch-blind `after > head` check refusing every resume after a restart,
//!   say), and it is decided at once, heal or not. Such a client stays live for the other rules
//!   (`Client::is_live`): what it misses afterwards is missed.
//!
//! Before the heal a partition may legitimately keep a client away, so nothing of the above is
//! demanded then. But a link that is *not* disturbed owes prompt delivery at any time:
//! - prompt delivery: when a normal client holds a welcomed connection into epoch E, and a
//!   publish returns a position `(E, seq)` of its user after that welcome (and after the
//!   client's resume point in E, or, without one, after the welcome's head), then with P the
//!   time of that return and D = P + X ([`prompt_bound_ms`]) the event's frame, or a gap frame
//!   of E covering `seq`, arrives on that connection by D, unless something a correct server may
//!   be slowed by happened around it: the connection closed by D (4003 slow consumer, token
//!   expiry, kill, shutdown, ...), the application closed the client by D (its connection may
//!   stay open while the close handshake runs, but nobody reads it any more), the token expires
//!   by D, the application paused in [P − X, D], the client's host (or every host) was
//!   partitioned, held or lossy in [P − X, D], or the server was down, restarted or crashed
//!   then (see `Index::disturbed`). Nor is it owed on a connection that lived through a
//!   partition or message loss before P: turmoil does not retransmit what they dropped, so its
//!   stream may be stalled for good until an idle timeout ends it, and the client's recovery is
//!   judged by the rules above (see `Index::bytes_dropped_during`).
//!   Not decided when D falls after the last entry of the history.

use super::index::{liveness_bound_ms, publish_answer_bound_ms, Client, Conn, Index, LimitRefusals};
use super::no_silent_loss::{created_from, expected, Coverage};
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{FrameSeen, Observation};
use rustc_hash::FxHashMap;

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    if let Some(v) = stopped_on_its_own(index) {
        return Err(v);
    }
    if let Some(v) = publish_hangs(index) {
        return Err(v);
    }
    if let Some(v) = prompt_delivery(index) {
        return Err(v);
    }
    let (Some((heal_idx, heal_at)), Some((end_idx, end_at))) = (index.heal, index.end) else {
        return Ok(());
    };
    let bound = liveness_bound_ms(&index.scenario.config.timeouts);
    // Each judged client with its limit refusals, computed once for both rules below.
    let judged: Vec<_> = index
        .clients
        .values()
        .filter(|c| c.is_live() && !index.refused_by_limit(c))
        .map(|c| (c, index.limit_refusals(c)))
        .collect();
    for (client, refusals) in &judged {
        if let Some(v) = reconnects(index, client, refusals, (heal_idx, heal_at), (end_idx, end_at), bound) {
            return Err(v);
        }
    }
    for (client, refusals) in &judged {
        let coverage = Coverage::new(index, client);
        for instance in expected(index, client) {
            let inst = &index.instances[instance];
            let event = &index.events[inst.event];
            let created_at = created_from(index, instance).1;
            let covered_by = coverage.covered_by(index, instance);
            let refused_at = refusals.last_before(covered_by.unwrap_or(end_idx));
            let deadline =
                heal_at.max(created_at).max(refused_at.unwrap_or(0)) + bound + pause_allowance(client, heal_at);
            if deadline >= end_at {
                continue;
            }
            let covered_at = covered_by.map(|i| index.at(i));
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
    refusals: &LimitRefusals,
    (heal_idx, heal_at): (usize, u64),
    (end_idx, end_at): (usize, u64),
    bound: u64,
) -> Option<Violation> {
    let bound = bound + pause_allowance(client, heal_at);
    let stuck = |since: u64, since_idx: usize, what: String| -> Option<Violation> {
        // The first welcome whose entry comes after `since_idx`.
        let next = client
            .conns
            .iter()
            .filter_map(|c| c.welcome.as_ref())
            .find(|w| w.idx > since_idx);
        // Refused for a limit on the way: the bound runs from the last refusal.
        let refused_at = refusals.last_before(next.map_or(end_idx, |w| w.idx));
        let deadline = since.max(heal_at).max(refused_at.unwrap_or(0)) + bound;
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

/// A normal client that stopped for good with no `Close` step applied to it before (see the
/// module docs), explained by the end of its last connection before the stop.
fn stopped_on_its_own(index: &Index<'_>) -> Option<Violation> {
    // The first such client, with the stop `Client::stopped_on_its_own` found.
    let (client, stop) = index
        .clients
        .values()
        .find_map(|c| Some((c, c.stopped_on_its_own()?)))?;
    let last = client.conns.iter().rev().find(|c| c.connecting_idx < stop);
    let mut evidence = vec![];
    let mut why = "it had no connection attempt before".to_string();
    if let Some(conn) = last {
        evidence.push(conn.connecting_idx);
        let error = conn.frames.iter().rev().find_map(|&f| match index.frame(f) {
            Some(FrameSeen::Error { code, message }) => Some((f, code, message)),
            _ => None,
        });
        let closed = conn.closed.filter(|&c| c < stop);
        // The index records only `Closed` entries as closes: `_` is a connection still open.
        why = match closed.map(|c| (c, &index.entries[c].what)) {
            Some((c, Observation::Closed { code, by, reason, .. })) => format!(
                "its last connection {} (opened at {}) ended at {} with close code {}, by {by:?}, reason {reason:?}",
                Index::conn_label(conn),
                t(conn.at),
                t(index.at(c)),
                code.map_or_else(|| "none".to_string(), |c| c.to_string()),
            ),
            _ => format!(
                "its last connection {} (opened at {}) had not ended",
                Index::conn_label(conn),
                t(conn.at)
            ),
        };
        if let Some((f, code, message)) = error {
            why.push_str(&format!(
                " after an error frame {code} ({message:?}) at {}",
                t(index.at(f))
            ));
            evidence.push(f);
        }
        evidence.extend(closed);
    }
    evidence.push(stop);
    Some(violation(
        Invariant::Liveness,
        Severity::Critical,
        Category::ReconnectionRecovery,
        format!(
            "{} stopped for good at {} although no Close step had closed it: {why}. The client library gives up only on a final refusal (4004 bad_frame) or a frame beyond its frame_bytes_max, and a correct server gives a simulated client neither, so it will never get another notification",
            client.describe(),
            t(index.at(stop)),
        ),
        evidence,
    ))
}

fn publish_hangs(index: &Index<'_>) -> Option<Violation> {
    let limit = publish_answer_bound_ms(&index.scenario.config.timeouts);
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

/// The prompt-delivery bound X, in simulated ms, for an event with `queued` events of its stream
/// ahead of it on the connection, when links have at most `latency_ms` of one-way latency:
///
/// X = 4·latency + 10·tick + 1000 + queued·tick.
///
/// The publish's return and the frame both leave the server at about the same time, so a
/// correct server needs about one one-way latency plus a tick or two; four latencies (TCP keeps
/// order, so a frame may wait behind an earlier one sent at a higher latency), ten ticks (the
/// publisher's and the client's hosts are polled once per tick) and a second make it generous.
/// A tick per queued event covers a burst or a replayed backlog drained one batch at a time.
pub fn prompt_bound_ms(tick_ms: u64, latency_ms: u64, queued: u64) -> u64 {
    4 * latency_ms + 10 * tick_ms + 1000 + queued * tick_ms
}

/// One connection's frames of its welcome's epoch, indexed for the prompt-delivery rule.
struct ConnFrames<'a> {
    /// `(entry, position)`: after entry `entry` the client has everything up to `position` (the
    /// highest event seq or gap end so far), in entry order.
    positions: Vec<(usize, u64)>,
    /// The first event frame of each seq: `(entry, event id)`.
    events: FxHashMap<u64, (usize, Option<&'a str>)>,
    /// Gap frames of the epoch: `(entry, from, to)`.
    gaps: Vec<(usize, u64, Option<u64>)>,
}

impl<'a> ConnFrames<'a> {
    /// The position a connection starts from: the resume point (same epoch), else the welcome's
    /// head for a fresh subscription, else 0 (another epoch: the server may replay the whole
    /// stream).
    fn new(index: &Index<'a>, conn: &Conn<'a>, epoch: &str, head: u64) -> ConnFrames<'a> {
        let mut pos = match conn.resume {
            Some(resume) if resume.epoch == epoch => resume.after,
            Some(_) => 0,
            None => head,
        };
        let mut out = ConnFrames {
            positions: vec![(0, pos)],
            events: FxHashMap::default(),
            gaps: Vec::new(),
        };
        for &f in &conn.frames {
            match index.frame(f) {
                Some(FrameSeen::Event { seq, event_id, .. }) => {
                    out.events.entry(*seq).or_insert((f, event_id.as_deref()));
                    pos = pos.max(*seq);
                }
                Some(FrameSeen::Gap { epoch: e, from, to, .. }) if e == epoch => {
                    out.gaps.push((f, *from, *to));
                    pos = pos.max(to.unwrap_or(u64::MAX));
                }
                _ => continue,
            }
            out.positions.push((f, pos));
        }
        out
    }

    /// The position reached by the frames before entry `before`.
    fn position_before(&self, before: usize) -> u64 {
        let n = self.positions.partition_point(|&(f, _)| f < before);
        self.positions[n.saturating_sub(1)].1
    }

    /// The first frame carrying `seq` with `event_id` (a frame that names no id, or another,
    /// is not the event: see `no_silent_loss`'s payload rule) or a gap covering it.
    fn covering(&self, seq: u64, event_id: &str) -> Option<usize> {
        let event = self
            .events
            .get(&seq)
            .filter(|(_, id)| *id == Some(event_id))
            .map(|&(f, _)| f);
        let gap = self
            .gaps
            .iter()
            .find(|&&(_, from, to)| from <= seq && to.is_none_or(|to| seq <= to))
            .map(|&(f, _, _)| f);
        match (event, gap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn prompt_delivery(index: &Index<'_>) -> Option<Violation> {
    let horizon = index.entries.last()?.at_ms;
    let tick = index.scenario.config.tick_ms;
    let lookback = index.latency_max_ms;
    for client in index.clients.values().filter(|c| !c.hostile) {
        for conn in &client.conns {
            let Some(welcome) = conn.welcome.as_ref().filter(|w| w.user == client.user) else {
                continue;
            };
            let Some(instances) = index.instances_of_user.get(client.user.as_str()) else {
                continue;
            };
            let mut frames: Option<ConnFrames<'_>> = None;
            for &instance in instances {
                let inst = &index.instances[instance];
                if inst.epoch != welcome.epoch || inst.returned_idx < welcome.idx {
                    continue;
                }
                // The client has it already (resume point), or subscribed after it (a fresh
                // subscription starts at the welcome's head; the publish may have been applied
                // just before the welcome and answered after it).
                let resumed = conn.resume.filter(|r| r.epoch == inst.epoch);
                if resumed.map_or(inst.seq <= welcome.head, |r| inst.seq <= r.after) {
                    continue;
                }
                let from = inst.returned_at;
                let frames = frames.get_or_insert_with(|| ConnFrames::new(index, conn, welcome.epoch, welcome.head));
                let queued = inst
                    .seq
                    .saturating_sub(frames.position_before(inst.returned_idx).saturating_add(1));
                let widest = prompt_bound_ms(tick, lookback, queued);
                let latency = index.latency_during(from.saturating_sub(lookback), from + widest);
                let bound = prompt_bound_ms(tick, latency, queued);
                let deadline = from + bound;
                if deadline >= horizon {
                    continue;
                }
                if conn.closed.is_some_and(|c| index.at(c) <= deadline)
                    || client.stopped.is_some_and(|s| index.at(s) <= deadline)
                    || conn.token_exp_ms.unwrap_or(conn.at + client.token_ttl_ms) <= deadline
                    || client.paused_during(from.saturating_sub(bound), deadline)
                    || index.disturbed(client.host, from.saturating_sub(bound), deadline)
                    || index.bytes_dropped_during(client.host, conn.at, from)
                {
                    continue;
                }
                let event = &index.events[inst.event];
                let covered = frames.covering(inst.seq, event.event_id);
                let late_at = covered.map(|c| index.at(c));
                if late_at.is_none_or(|at| at > deadline) {
                    let when = late_at.map_or_else(|| "never".to_string(), |at| format!("only at {}", t(at)));
                    let mut evidence = vec![inst.returned_idx, welcome.idx];
                    evidence.extend(covered);
                    return Some(violation(
                        Invariant::Liveness,
                        Severity::High,
                        Category::PerformanceLoad,
                        format!(
                            "event {} for user {} (epoch {}, seq {}, publish returned at {}) reached {} on connection {} {when}, after the prompt-delivery deadline {} (X = {bound} ms: latency {latency} ms, {queued} events queued ahead; the link was undisturbed, the connection open and the application reading)",
                            event.event_id,
                            inst.user,
                            inst.epoch,
                            inst.seq,
                            t(from),
                            client.describe(),
                            welcome.connection,
                            t(deadline),
                        ),
                        evidence,
                    ));
                }
            }
        }
    }
    None
}
