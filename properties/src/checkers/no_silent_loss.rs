//! No silent loss: every event a live client should get is, by `End`, either handed to its
//! application or covered by a gap it was handed.
//!
//! Expected events of a live client c of user U (first welcome W0 with epoch E0 and head h0):
//! every event that certainly exists (a publish returned its `(epoch, seq)`) for U with
//! - epoch E0 and seq > h0 (the client subscribed from h0 on), or
//! - another epoch, and its first publish call came after W0 (so c was already subscribed when
//!   it was created: a restart or a dropped stream must then be reported to c).
//!
//! Covered means: delivered as an `Event` with that `(epoch, seq)` (and the same event id), or
//! inside a delivered `Gap` of that epoch (`from <= seq <= to`, or `to = null`), or — for an
//! event of an epoch E the client never *entered* — by an `epoch` gap of another epoch
//! delivered after the event was published. A user has one live stream per server life, so an
//! `epoch` gap says "every stream you were reading is gone": a stream created and lost entirely
//! while c was away, or one c was welcomed into but lost before the `epoch` gap of its old
//! stream arrived (the connection died or stalled, then the server restarted), can be reported
//! no other way.
//!
//! The client entered E (its tracker's position named E at some point, so E's own items must
//! account for every event of E it owes) when its first welcome was into E, when it was handed
//! any item (event or gap) of E, or when it was handed an `epoch` gap on a connection welcomed
//! into E (the gap commits the switch to E). Once in E, the client leaves it only through an
//! `epoch` (or `unreadable`) gap of E starting right after its position, so a correct server
//! never needs another epoch's gap to account for an event of E; and an epoch the client enters
//! later is read from seq 1, so the same holds for one entered after such a gap.
//!
//! Only decidable when the run reached `End` (after the heal and the quiet period).
//!
//! A live client whose last attempt the hub refused by a limit (4009, see
//! `Index::refused_by_limit`) is not expected to catch up, except for the events it had to get
//! on a connection that was open and healthy long after they were published.
//!
//! The rule above trusts the first welcome's `head` (the client starts after it), so a welcome
//! may not claim an event that did not exist yet: a welcome of a normal client whose `head` is
//! at least the seq of an event of its epoch whose first publish call began after the client
//! had received that welcome is a violation at once (the client's tracker starts past that
//! event and drops its frame as a duplicate: the application never gets it).

use super::index::{liveness_bound_ms, Client, Index};
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::DeliveredItem;
use rustc_hash::{FxHashMap, FxHashSet};

/// A delivered gap: (entry, epoch, from, to, reason).
type DeliveredGap<'a> = (usize, &'a str, u64, Option<u64>, &'a str);

/// What one client's application was handed, indexed for coverage questions.
pub(super) struct Coverage<'a> {
    events: FxHashMap<(&'a str, u64), (usize, Option<&'a str>)>,
    gaps: Vec<DeliveredGap<'a>>,
    /// The epochs the client entered (see the module docs); only looked up, never iterated.
    entered: FxHashSet<&'a str>,
}

impl<'a> Coverage<'a> {
    pub fn new(index: &Index<'a>, client: &Client<'a>) -> Coverage<'a> {
        let mut coverage = Coverage {
            events: FxHashMap::default(),
            gaps: Vec::new(),
            entered: FxHashSet::default(),
        };
        let welcomes: Vec<(usize, &'a str)> = client
            .conns
            .iter()
            .filter_map(|c| c.welcome.as_ref().map(|w| (w.idx, w.epoch)))
            .collect();
        coverage.entered.extend(welcomes.first().map(|&(_, epoch)| epoch));
        let new_stream_at = |idx: usize| {
            welcomes
                .iter()
                .filter(|(w, _)| *w < idx)
                .max_by_key(|(w, _)| *w)
                .map(|(_, e)| *e)
        };
        for &idx in &client.delivered {
            match index.delivered_item(idx) {
                Some(DeliveredItem::Event {
                    epoch, seq, event_id, ..
                }) => {
                    coverage.entered.insert(epoch);
                    coverage
                        .events
                        .entry((epoch.as_str(), *seq))
                        .or_insert((idx, event_id.as_deref()));
                }
                Some(DeliveredItem::Gap {
                    epoch,
                    from,
                    to,
                    reason,
                    ..
                }) => {
                    coverage.entered.insert(epoch);
                    if reason == "epoch" {
                        coverage.entered.extend(new_stream_at(idx));
                    }
                    coverage.gaps.push((idx, epoch, *from, *to, reason));
                }
                None => {}
            }
        }
        coverage
    }

    /// The entry that covered instance `instance` for this client, if any (the earliest).
    pub fn covered_by(&self, index: &Index<'a>, instance: usize) -> Option<usize> {
        let inst = &index.instances[instance];
        let event = &index.events[inst.event];
        let mut best: Option<usize> = None;
        if let Some(&(idx, id)) = self.events.get(&(inst.epoch, inst.seq)) {
            if id.is_none_or(|id| id == event.event_id) {
                best = Some(idx);
            }
        }
        let never_entered = !self.entered.contains(inst.epoch);
        for &(idx, epoch, from, to, reason) in &self.gaps {
            let same_epoch = epoch == inst.epoch && from <= inst.seq && to.is_none_or(|to| inst.seq <= to);
            let lost_stream = never_entered && reason == "epoch" && idx > event.first_call_idx;
            if (same_epoch || lost_stream) && best.is_none_or(|b| idx < b) {
                best = Some(idx);
            }
        }
        best
    }
}

/// The instances a live client must get, in publish order.
pub(super) fn expected(index: &Index<'_>, client: &Client<'_>) -> Vec<usize> {
    let Some(w0) = client.first_welcome() else {
        return Vec::new();
    };
    let Some(instances) = index.instances_of_user.get(client.user.as_str()) else {
        return Vec::new();
    };
    let mut out: Vec<usize> = instances
        .iter()
        .copied()
        .filter(|&i| {
            let inst = &index.instances[i];
            let event = &index.events[inst.event];
            if inst.epoch == w0.epoch {
                inst.seq > w0.head
            } else {
                event.first_call_idx > w0.idx
            }
        })
        .collect();
    out.sort_by_key(|&i| (index.events[index.instances[i].event].first_call_idx, i));
    out
}

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    if let Some(v) = inflated_head(index) {
        return Err(v);
    }
    let Some((end_idx, end_at)) = index.end else {
        return Ok(());
    };
    for client in index.clients.values().filter(|c| c.is_live()) {
        let refused = index.refused_by_limit(client);
        let coverage = Coverage::new(index, client);
        for instance in expected(index, client) {
            if coverage.covered_by(index, instance).is_some() {
                continue;
            }
            if refused && !due_on_open_connection(index, client, instance) {
                continue;
            }
            let inst = &index.instances[instance];
            let event = &index.events[inst.event];
            let connected = client.connected_at(event.first_call_idx);
            let category = if connected {
                Category::NotificationDelivery
            } else {
                Category::ReconnectionRecovery
            };
            let state = if connected {
                "was connected when it was published"
            } else {
                "was disconnected when it was published (so a resume had to replay it)"
            };
            let last = client.conns.iter().rev().find_map(|c| c.welcome.as_ref()).map_or_else(
                || "never welcomed".to_string(),
                |w| {
                    format!(
                        "last welcome on {} at {} (epoch {}, head {})",
                        w.connection,
                        t(w.at),
                        w.epoch,
                        w.head
                    )
                },
            );
            return Err(violation(
                Invariant::NoSilentLoss,
                Severity::Critical,
                category,
                format!(
                    "event {} for user {} (epoch {}, seq {}, published at {}) was never handed to {} nor covered by a gap by the end at {}; the client {state}; {last}",
                    event.event_id,
                    inst.user,
                    inst.epoch,
                    inst.seq,
                    t(event.first_call_at),
                    client.describe(),
                    t(end_at)
                ),
                vec![event.first_call_idx, inst.returned_idx, end_idx],
            ));
        }
    }
    Ok(())
}

/// Whether instance `instance` had to reach `client` on a connection that was already open
/// when it was published: the connection was welcomed before the first publish call and stayed
/// open, with the client's network undisturbed, the server up and the application reading,
/// until [`liveness_bound_ms`] after the publish returned. A client the hub later refuses by a
/// limit is still owed such events: the refusal came after they were due.
fn due_on_open_connection(index: &Index<'_>, client: &Client<'_>, instance: usize) -> bool {
    let inst = &index.instances[instance];
    let event = &index.events[inst.event];
    let deadline = inst.returned_at + liveness_bound_ms(&index.scenario.config.timeouts);
    let open = client.conns.iter().any(|c| {
        c.welcome.as_ref().is_some_and(|w| w.idx < event.first_call_idx)
            && c.closed.is_none_or(|closed| index.at(closed) > deadline)
    });
    open && index.end.is_some_and(|(_, end)| end > deadline)
        && !index.disturbed(client.host, event.first_call_at, deadline)
        && !client.paused_during(event.first_call_at, deadline)
}

/// A welcome whose `head` claims an event that did not exist when the welcome was sent: its
/// first publish call began only after the client had received the welcome.
fn inflated_head(index: &Index<'_>) -> Option<Violation> {
    for client in index.clients.values().filter(|c| !c.hostile) {
        let user = client.user.as_str();
        for welcome in client.conns.iter().filter_map(|c| c.welcome.as_ref()) {
            if welcome.user != user || welcome.head == 0 {
                continue;
            }
            let later = index
                .instance_at
                .range((user, welcome.epoch, 1)..=(user, welcome.epoch, welcome.head))
                .map(|(_, &i)| i)
                .find(|&i| index.events[index.instances[i].event].first_call_idx > welcome.idx);
            if let Some(instance) = later {
                let inst = &index.instances[instance];
                let event = &index.events[inst.event];
                return Some(violation(
                    Invariant::NoSilentLoss,
                    Severity::Critical,
                    Category::NotificationDelivery,
                    format!(
                        "{} was welcomed on connection {} at {} with epoch {} head {}, but seq {} of that epoch ({}) was first published only at {}, after the welcome: the client starts past an event that did not exist yet and never hands it over",
                        client.describe(),
                        welcome.connection,
                        t(welcome.at),
                        welcome.epoch,
                        welcome.head,
                        inst.seq,
                        event.event_id,
                        t(event.first_call_at)
                    ),
                    vec![welcome.idx, event.first_call_idx, inst.returned_idx],
                ));
            }
        }
    }
    None
}
