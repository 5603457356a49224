//! No silent loss: every event a live client should get is, by `End`, either handed to its
//! application or covered by a gap it was handed.
//!
//! Expected events of a live client c of user U (first welcome W0 with epoch E0 and head h0):
//! every event that certainly exists (a publish returned its `(epoch, seq)`) for U with
//! - epoch E0 and seq > h0 (the client subscribed from h0 on), or
//! - another epoch, and it was certainly created after W0 (see [`created_from`]: so c was
//!   already subscribed when it was created: a restart or a dropped stream must then be
//!   reported to c). Its first publish call is not enough to tell: a keyed retry may create it
//!   in a later server life, long after a first attempt that failed before W0.
//!
//! Covered means: delivered as an `Event` with that `(epoch, seq)`, the same event id and the
//! run and kind it was published with (an event that names no id, or another, is not it), or
//! inside a delivered `retention` or `epoch` `Gap` of that epoch (`from <= seq <= to`, or
//! `to = null`; an `unreadable` gap is the client's own, made of a frame the server garbled,
//! and covers nothing), or — for an
//! event of an epoch E the client never *entered* — by an `epoch` gap of another epoch
//! delivered after the event was created. A user has one live stream per server life, so an
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
//!
//! The `epoch` gap rule above trusts "one live stream per user per server life", so a second
//! stream is a violation at once: a publish answered with a position in epoch E' while user U
//! certainly still had a stream E != E' in the same life. The hub drops a stream only once it
//! holds no event and no connection (`drop_stream_if_idle`), so E certainly exists while
//! - a normal client of U holds a connection welcomed into E before the call and, with its
//!   link undisturbed and its application reading, sees no close until a frame's travel time
//!   ([`prompt_bound_ms`] with nothing queued) after the answer: had the server let the
//!   connection go, its close would have reached the client by then; or
//! - an event of E returned before the call is certainly retained when the answer arrives
//!   (`Index::certainly_retained`, which also rules out a restart in between).
//!
//! Without this rule an event put in a phantom stream nobody reads is excused by the next
//! restart's `epoch` gap.
//!
//! Rules decided at once, for every normal client, whatever the publish outcomes:
//! - payload integrity: every simulated publish puts its event id and its user in its data
//!   (`sim/src/publisher.rs`), so an event frame, or an event handed to the application, that
//!   names no event id (or, on the wire, no user), an id no publish ever named, or a run or kind
//!   other than its publish's, is an event the server altered: the published one was lost on the
//!   way (another user's id or name is `isolation`'s);
//! - unreadable frames: a correct server sends a normal client only frames the protocol
//!   defines, so a frame the client could not read (not JSON, a binary frame, a known type that
//!   does not decode) is a violation; the client hands its application an `unreadable` gap
//!   where the server owed it an event. A frame of a type the client does not know is not: a
//!   newer server's frame, skipped by design (PROTOCOL.md, client rule 6);
//! - no seq hole: seqs grow by exactly 1 per event within an epoch, so an event at seq n means
//!   seqs 1..n all exist, published with a known outcome or not (a publish that failed
//!   ambiguously, or never returned, has no position the rules above could expect). Per epoch,
//!   the client's position starts where its tracker's does (`core/src/client/tracker.rs`): at
//!   the first welcome's head when its first hello carried no resume (it starts live), at the
//!   resume's `after` when it did (a saved position), and at 0 in any other epoch (one it
//!   switches into is read from seq 1, after the `epoch` gap of the old one, whether that
//!   stream ended in a restart or was a quiet stream forgotten); a resume in the same epoch keeps
//!   it. Each item handed over moves it: an event to its seq, a `retention` or `unreadable` gap
//!   to its `to`, an `epoch` gap (or an `unreadable` one without `to`) to the end of the epoch.
//!   An event, or a gap, that starts past position + 1 skipped the seqs in between in silence.

use super::index::{gap_end, liveness_bound_ms, Client, Index};
use super::liveness::prompt_bound_ms;
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{DeliveredItem, FrameSeen, UNPARSED_TEXT_BYTES_MAX};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;

/// The server frame types of protocol v1 (PROTOCOL.md, "Frames"): a frame of any other type is
/// a newer server's, which a client skips.
const SERVER_FRAME_TYPES: [&str; 5] = ["welcome", "event", "gap", "pong", "error"];

/// A delivered gap: (entry, epoch, from, to, reason).
type DeliveredGap<'a> = (usize, &'a str, u64, Option<u64>, &'a str);

/// A delivered event as coverage sees it: (entry, event id, run, kind).
type DeliveredEvent<'a> = (usize, &'a str, &'a str, &'a str);

/// What one client's application was handed, indexed for coverage questions.
pub(super) struct Coverage<'a> {
    /// Events handed over with an event id, by `(epoch, seq)` (the first).
    events: FxHashMap<(&'a str, u64), DeliveredEvent<'a>>,
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
        for (idx, item) in index.delivered(client) {
            match item {
                DeliveredItem::Event {
                    epoch,
                    seq,
                    event_id,
                    run,
                    kind,
                } => {
                    coverage.entered.insert(epoch);
                    if let Some(id) = event_id {
                        coverage
                            .events
                            .entry((epoch.as_str(), *seq))
                            .or_insert((idx, id, run, kind));
                    }
                }
                DeliveredItem::Gap {
                    epoch,
                    from,
                    to,
                    reason,
                    ..
                } => {
                    coverage.entered.insert(epoch);
                    if reason == "epoch" {
                        coverage.entered.extend(new_stream_at(idx));
                    }
                    coverage.gaps.push((idx, epoch, *from, *to, reason));
                }
            }
        }
        coverage
    }

    /// The entry that covered instance `instance` for this client, if any (the earliest).
    pub fn covered_by(&self, index: &Index<'a>, instance: usize) -> Option<usize> {
        let inst = &index.instances[instance];
        let event = &index.events[inst.event];
        let mut best: Option<usize> = None;
        if let Some(&(idx, id, run, kind)) = self.events.get(&(inst.epoch, inst.seq)) {
            if id == event.event_id && run == event.run && kind == event.kind {
                best = Some(idx);
            }
        }
        let never_entered = !self.entered.contains(inst.epoch);
        let (created_idx, created_at) = created_from(index, instance);
        for &(idx, epoch, from, to, reason) in &self.gaps {
            let same_epoch =
                reason != "unreadable" && epoch == inst.epoch && from <= inst.seq && to.is_none_or(|to| inst.seq <= to);
            // A stream can only be reported lost after the event in it was created.
            let lost_stream = never_entered && reason == "epoch" && idx > created_idx && index.at(idx) >= created_at;
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
            if inst.epoch == w0.epoch {
                inst.seq > w0.head
            } else {
                let (created_idx, created_at) = created_from(index, i);
                created_idx > w0.idx || created_at > w0.at
            }
        })
        .collect();
    out.sort_by_key(|&i| (index.events[index.instances[i].event].first_call_idx, i));
    out
}

/// The earliest moment instance `instance`'s event can have been created, as an entry and a
/// time: nothing of it existed before either. An answer `duplicate: false` means that very
/// attempt created it; `duplicate: true` means an earlier attempt did, into the same server life
/// (idempotency keys live in its hub), so no earlier than the first call nor than the start of
/// the earliest life that can have answered (the last one started by the attempt's call).
pub(super) fn created_from(index: &Index<'_>, instance: usize) -> (usize, u64) {
    let inst = &index.instances[instance];
    let event = &index.events[inst.event];
    let call = &index.calls[inst.returned_call];
    if !inst.duplicate {
        return (call.idx, call.at);
    }
    let life_start = index
        .lives
        .iter()
        .rev()
        .find(|life| life.started_at <= call.at)
        .map_or(0, |life| life.started_at);
    (event.first_call_idx, event.first_call_at.max(life_start))
}

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    if let Some(v) = inflated_head(index) {
        return Err(v);
    }
    if let Some(v) = second_stream(index) {
        return Err(v);
    }
    if let Some(v) = altered_payload(index) {
        return Err(v);
    }
    if let Some(v) = unreadable_frame(index) {
        return Err(v);
    }
    if let Some(v) = seq_hole(index) {
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
            let connected = client.connected_at(created_from(index, instance).0);
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
                return Some(lost(
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

/// A publish answered with a position in a second stream of its user, in a life where the
/// user's stream E certainly still existed (see the module docs).
fn second_stream(index: &Index<'_>) -> Option<Violation> {
    let horizon = index.entries.last()?.at_ms;
    let slack = prompt_bound_ms(index.scenario.config.tick_ms, index.latency_max_ms, 0);
    for (&user, instances) in &index.instances_of_user {
        // Each epoch's instances of this user, in the order their answers came.
        let mut by_epoch: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &instance in instances {
            by_epoch
                .entry(index.instances[instance].epoch)
                .or_default()
                .push(instance);
        }
        for &instance in instances {
            let inst = &index.instances[instance];
            let call = &index.calls[inst.returned_call];
            let answered = inst.returned_at;
            let held = held_stream(index, user, inst.epoch, call.idx, answered, slack, horizon);
            let retained = || retained_stream(index, user, inst.epoch, &by_epoch, call.idx, answered);
            let Some((why, evidence)) = held.or_else(retained) else {
                continue;
            };
            let event = &index.events[inst.event];
            return Some(lost(
                format!(
                    "publish of {} for user {user} called at {} was answered at {} with epoch {} seq {}, but {why}: a user has one stream per server life, so the event went to a stream its clients do not read",
                    event.event_id,
                    t(call.at),
                    t(answered),
                    inst.epoch,
                    inst.seq,
                ),
                vec![evidence, call.idx, inst.returned_idx],
            ));
        }
    }
    None
}

/// An event of `user` in an epoch other than `epoch`, answered before entry `called`, that was
/// certainly still retained at `answered`: why, and its answer's entry. Only each epoch's latest
/// such event is asked, the likeliest to be retained (youngest, fewest events after it).
fn retained_stream(
    index: &Index<'_>,
    user: &str,
    epoch: &str,
    by_epoch: &BTreeMap<&str, Vec<usize>>,
    called: usize,
    answered: u64,
) -> Option<(String, usize)> {
    by_epoch
        .iter()
        .filter(|(&other, _)| other != epoch)
        .find_map(|(&other, of_epoch)| {
            let before = of_epoch.partition_point(|&i| index.instances[i].returned_idx < called);
            let inst = &index.instances[*of_epoch[..before].last()?];
            index.certainly_retained(user, other, inst.seq, answered).then(|| {
                (
                    format!(
                        "seq {} of epoch {other} ({}, answered at {}) was certainly still retained then",
                        inst.seq,
                        index.events[inst.event].event_id,
                        t(inst.returned_at)
                    ),
                    inst.returned_idx,
                )
            })
        })
}

/// A connection of a normal client of `user`, welcomed into an epoch other than `epoch` before
/// entry `called`, that the server certainly still held until `answered` (see the module docs):
/// why, and the welcome's entry.
fn held_stream(
    index: &Index<'_>,
    user: &str,
    epoch: &str,
    called: usize,
    answered: u64,
    slack: u64,
    horizon: u64,
) -> Option<(String, usize)> {
    let until = answered + slack;
    if until > horizon {
        return None;
    }
    index
        .clients
        .values()
        .filter(|c| !c.hostile && c.user == user)
        .find_map(|client| {
            if client.stopped.is_some_and(|s| index.at(s) <= until) {
                return None;
            }
            client.conns.iter().find_map(|conn| {
                let welcome = conn.welcome.as_ref()?;
                let held = welcome.user == user
                    && welcome.epoch != epoch
                    && welcome.idx < called
                    && conn.closed.is_none_or(|c| index.at(c) > until)
                    && conn.token_exp_ms.unwrap_or(conn.at + client.token_ttl_ms) > until
                    && !client.paused_during(welcome.at, until)
                    && !index.disturbed(client.host, conn.at, until);
                held.then(|| {
                    (
                        format!(
                            "{} held connection {} (welcomed at {} into epoch {}) open and undisturbed until at least {}",
                            client.describe(),
                            welcome.connection,
                            t(welcome.at),
                            welcome.epoch,
                            t(until)
                        ),
                        welcome.idx,
                    )
                })
            })
        })
}

fn lost(explanation: String, evidence: Vec<usize>) -> Violation {
    violation(
        Invariant::NoSilentLoss,
        Severity::Critical,
        Category::NotificationDelivery,
        explanation,
        evidence,
    )
}

/// An event frame or handed-over event of a normal client that is not what was published (see
/// the module docs): no id (or, on the wire, no user), an id nobody published, or another run
/// or kind.
fn altered_payload(index: &Index<'_>) -> Option<Violation> {
    for client in index.clients.values().filter(|c| !c.hostile) {
        for conn in &client.conns {
            for &f in &conn.frames {
                let Some(FrameSeen::Event {
                    seq,
                    run,
                    kind,
                    event_id,
                    payload_user,
                }) = index.frame(f)
                else {
                    continue;
                };
                let what = || {
                    format!(
                        "event frame seq {seq} received on connection {} of {} at {}",
                        Index::conn_label(conn),
                        client.describe(),
                        t(index.at(f))
                    )
                };
                if payload_user.is_none() {
                    return Some(lost(
                        format!(
                            "{} names no user in its data ({}): every simulated publish puts its user there, so the server altered the event",
                            what(),
                            event_id.as_deref().map_or_else(|| "and no event id".to_string(), |id| format!("event id {id}"))
                        ),
                        vec![f],
                    ));
                }
                if let Some(v) = not_as_published(index, event_id.as_deref(), run, kind, f, what) {
                    return Some(v);
                }
            }
        }
        for &d in &client.delivered {
            let Some(DeliveredItem::Event {
                epoch,
                seq,
                run,
                kind,
                event_id,
            }) = index.delivered_item(d)
            else {
                continue;
            };
            let what = || {
                format!(
                    "the event epoch {epoch} seq {seq} handed to the application of {} at {}",
                    client.describe(),
                    t(index.at(d))
                )
            };
            if let Some(v) = not_as_published(index, event_id.as_deref(), run, kind, d, what) {
                return Some(v);
            }
        }
    }
    None
}

/// An event (frame or item, entry `idx`, described by `what`) whose id is missing or unknown, or
/// whose run or kind differ from its publish's.
fn not_as_published(
    index: &Index<'_>,
    event_id: Option<&str>,
    run: &str,
    kind: &str,
    idx: usize,
    what: impl Fn() -> String,
) -> Option<Violation> {
    let Some(id) = event_id else {
        return Some(lost(
            format!(
                "{} carries no event id in its data: every simulated publish puts its id there, so the server altered the event and the one published was lost",
                what()
            ),
            vec![idx],
        ));
    };
    let Some(event) = index.event(id) else {
        return Some(lost(
            format!(
                "{} carries event id {id}, which no publish ever named: the server made it up or altered it",
                what()
            ),
            vec![idx],
        ));
    };
    if event.run != run || event.kind != kind {
        return Some(lost(
            format!(
                "{} carries event {id} as run {run} kind {kind}, but it was published at {} as run {} kind {}: the server altered the event",
                what(),
                t(event.first_call_at),
                event.run,
                event.kind
            ),
            vec![event.first_call_idx, idx],
        ));
    }
    None
}

/// Whether an unparsed frame's text is a frame of a type the protocol does not define (a newer
/// server's, which the client skips by design): the whole text, when the history kept it all,
/// parses as an object whose `type` is unknown; a text cut at [`UNPARSED_TEXT_BYTES_MAX`] is
/// judged by the type its start names.
fn unknown_frame_type(text: &str) -> bool {
    let known = |name: &str| SERVER_FRAME_TYPES.contains(&name);
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => value
            .get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|name| !known(name)),
        Err(_) if text.len() + 4 > UNPARSED_TEXT_BYTES_MAX => text
            .strip_prefix(r#"{"type":""#)
            .and_then(|rest| rest.split_once('"'))
            .is_some_and(|(name, _)| !known(name)),
        Err(_) => false,
    }
}

/// A frame a normal client could not read (see the module docs).
fn unreadable_frame(index: &Index<'_>) -> Option<Violation> {
    for client in index.clients.values().filter(|c| !c.hostile) {
        for conn in &client.conns {
            for &f in &conn.frames {
                let Some(FrameSeen::Unparsed { text, .. }) = index.frame(f) else {
                    continue;
                };
                if unknown_frame_type(text) {
                    continue;
                }
                return Some(lost(
                    format!(
                        "{} received a frame it could not read on connection {} at {} ({text:?}): a correct server sends only frames the protocol defines, and the client hands its application an unreadable gap where an event was owed",
                        client.describe(),
                        Index::conn_label(conn),
                        t(index.at(f))
                    ),
                    vec![f],
                ));
            }
        }
    }
    None
}

/// A seq a normal client's application skipped without a gap (see the module docs).
fn seq_hole(index: &Index<'_>) -> Option<Violation> {
    for client in index.clients.values().filter(|c| !c.hostile) {
        // epoch → (position, entry that set it)
        let mut position: FxHashMap<&str, (u64, usize)> = FxHashMap::default();
        let start = client.conns.first().and_then(|first| match first.resume {
            Some(resume) => Some((resume.epoch.as_str(), resume.after, first.connecting_idx)),
            None => client.first_welcome().map(|w| (w.epoch, w.head, w.idx)),
        });
        if let Some((epoch, at, idx)) = start {
            position.insert(epoch, (at, idx));
        }
        for (d, item) in index.delivered(client) {
            let (epoch, from, end, what) = match item {
                DeliveredItem::Event {
                    epoch, seq, event_id, ..
                } => (
                    epoch.as_str(),
                    *seq,
                    *seq,
                    format!("event seq {seq} ({})", event_id.as_deref().unwrap_or("no event id")),
                ),
                DeliveredItem::Gap {
                    epoch,
                    from,
                    to,
                    reason,
                } => {
                    let end = gap_end(reason, *to);
                    let to = to.map_or_else(String::new, |to| to.to_string());
                    (epoch.as_str(), *from, end, format!("a {reason} gap {from}..{to}"))
                }
            };
            let (pos, set_at) = position.get(epoch).copied().unwrap_or((0, d));
            if pos != u64::MAX && from > pos.saturating_add(1) {
                let skipped = if from - 1 == pos + 1 {
                    format!("seq {}", pos + 1)
                } else {
                    format!("seqs {}..{}", pos + 1, from - 1)
                };
                let since = if set_at == d {
                    "it had nothing of that epoch yet, so the stream was read from seq 1".to_string()
                } else {
                    format!("its position in that epoch was seq {pos} since {}", t(index.at(set_at)))
                };
                return Some(lost(
                    format!(
                        "{} was handed {what} of epoch {epoch} at {}, but {since}: {skipped} skipped without a gap (seqs grow by exactly 1, so they exist, whether or not their publish was answered)",
                        client.describe(),
                        t(index.at(d)),
                    ),
                    if set_at == d { vec![d] } else { vec![set_at, d] },
                ));
            }
            if end > pos || !position.contains_key(epoch) {
                position.insert(epoch, (end.max(pos), d));
            }
        }
    }
    None
}
