//! Scenario-specific expectations: what a catalogue scenario demands of its history beyond the
//! global invariants ("this connection closes with 4001", "this publish fails with
//! `shutting_down`", "this resume reports `recovered: false` with an epoch gap").
//!
//! The global invariants say what must *never* happen; an expectation says what *this* scenario
//! is about, so that a scenario cannot pass by silently not exercising its path (a crash that
//! never happened, a resume that was never tried, a load that never arrived).
//!
//! Naming, as in the scenario that produced the history:
//! - clients by their scenario `client` id;
//! - publishes by the index of the scenario step that made them: a `Burst` step covers all its
//!   events. Event ids `e-{n}` are assigned in the order the driver applied the publish steps
//!   (one per `Publish`, `count` per `Burst`; a skipped step gets none), which is the order of
//!   the `StepApplied` entries in the history;
//! - hostile connections by the index of their `Hostile` step (client ids
//!   `1_000_000 + step * 100 + k`).
//!
//! A publish's *outcome* is the outcome of its last attempt; an event *published successfully*
//! is one for which some attempt returned `published` (a retry answered `duplicate` names the
//! same event). Delivery expectations judge what the steps meant to publish, not what the
//! history shows was published: a refused publish is not an excuse to expect less.

use crate::history::{
    is_ambiguous_failure, ClosedBy, DeliveredItem, FrameSeen, GaugeSample, History, Observation, PublishOutcome,
};
use crate::scenario::{Scenario, Step};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Hostile connections are recorded with client ids `HOSTILE_CLIENT_BASE + step * 100 + k`.
const HOSTILE_CLIENT_BASE: u32 = 1_000_000;
/// Connections one hostile step can open (the `k` above).
const HOSTILE_CONNECTIONS_PER_STEP_MAX: u32 = 100;
/// Kinds after which an agent run is over in the user's eyes.
const TERMINAL_KINDS: [&str; 2] = ["agent_completed", "agent_error"];

/// Whether a publish step's events were published or refused.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Published,
    Failed,
}

/// A hub gauge, as sampled into the history.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Gauge {
    Users,
    Connections,
    RetainedEvents,
    RetainedBytes,
    SendQueueDepthMax,
    ConnectionsPerUserMax,
}

impl Gauge {
    fn of(self, sample: &GaugeSample) -> u64 {
        match self {
            Gauge::Users => sample.users,
            Gauge::Connections => sample.connections,
            Gauge::RetainedEvents => sample.retained_events,
            Gauge::RetainedBytes => sample.retained_bytes,
            Gauge::SendQueueDepthMax => sample.send_queue_depth_max,
            Gauge::ConnectionsPerUserMax => sample.connections_per_user_max,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Gauge::Users => "users",
            Gauge::Connections => "connections",
            Gauge::RetainedEvents => "retained_events",
            Gauge::RetainedBytes => "retained_bytes",
            Gauge::SendQueueDepthMax => "send_queue_depth_max",
            Gauge::ConnectionsPerUserMax => "connections_per_user_max",
        }
    }
}

/// One expectation on a history.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "expect")]
pub enum Expectation {
    /// Some connection of `client` was closed by the server with close code `code`.
    ClosedWith { client: u32, code: u16 },
    /// Connections of hostile step `step` were closed by the server with `code`: all of them,
    /// or at least `at_least` of them (a flood where only those beyond the limit are refused).
    HostileClosedWith {
        step: usize,
        code: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_least: Option<u32>,
    },
    /// Between `min` and `max` connections of hostile step `step` were welcomed.
    HostileWelcomes { step: usize, min: u32, max: u32 },
    /// No connection of hostile step `step` received any event frame (a gap frame only echoes
    /// the attacker's own stream position and is allowed).
    HostileNoEvents { step: usize },
    /// Every event of publish step `step` ended with `outcome` (the last attempt's), and, when
    /// `code` is given, every failure carried that code.
    PublishOutcome {
        step: usize,
        outcome: OutcomeKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// Every attempt of every event of publish step `step` returned within `max_ms` of its call
    /// (a bounded failure, never a hang).
    PublishReturnsWithin { step: usize, max_ms: u64 },
    /// Some retry of an event of the publish steps `steps` was answered `duplicate: true`: an
    /// ambiguous attempt had in fact published, and the idempotency key stopped a second copy.
    DuplicateAnswered { steps: Vec<usize> },
    /// Every event the publish steps `steps` were meant to publish was published successfully
    /// and handed to `client`'s application exactly once, in publish order (seq order within an
    /// epoch, epochs in the order they first appeared), with the right event id. A refused,
    /// failed or unanswered publish of those steps fails it: otherwise a server that refuses
    /// most publishes would pass by delivering the few it took. Name only steps whose every
    /// publish must succeed; a step the scenario expects to be refused is judged by
    /// `PublishOutcome`.
    AllDelivered { client: u32, steps: Vec<usize> },
    /// Like `AllDelivered` for presence (refused publishes included), and each event reached
    /// the application within `max_ms` of the call that published it (reconnects included: a
    /// UI is not left hanging).
    DeliveredWithin {
        client: u32,
        steps: Vec<usize>,
        max_ms: u64,
    },
    /// The application of `client` was handed exactly `count` events.
    EventsDelivered { client: u32, count: u64 },
    /// `client` was welcomed at least once (so it could have been handed something), and its
    /// application was handed no event at all.
    NoDeliveriesTo { client: u32 },
    /// Some welcome answering a resume (a `Connecting` with `resume`) of `client` said
    /// `recovered: <recovered>`.
    Recovered { client: u32, recovered: bool },
    /// The application of `client` was handed a gap (with this reason, when given).
    GapReceived {
        client: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The application of `client` was never handed a gap.
    NoGap { client: u32 },
    /// Once `client`'s application saw an event of run `run-{run}`, it also saw the run end
    /// (`agent_completed` / `agent_error`) or a gap after the run's last event: the UI is never
    /// left believing a dead run is still going. Needs at least one event of the run delivered.
    RunSettled { client: u32, run: u32 },
    /// `client` started between `min` and `max` connection attempts (bounded reconnect storms;
    /// retries really happened).
    ConnectAttempts { client: u32, min: u32, max: u32 },
    /// At `End`, `client` holds a welcomed connection that is not closed.
    ConnectedAtEnd { client: u32 },
    /// Delivery latency in simulated ms, at `percentile` (nearest rank; `None` = the maximum),
    /// is below `max_ms`. Measured, for every event a publish call created, from that call to the
    /// moment the event was handed to the application of each client of its user that held a
    /// welcomed connection when the call began, was not paused by its application in between,
    /// and received the event on that same connection. Events such a client did not receive on
    /// that connection (it dropped meanwhile) are left to the global invariants. Needs at least
    /// one sample.
    DeliveryLatencyBelow {
        max_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percentile: Option<u8>,
    },
    /// Every gauge sample has `gauge <= max`.
    GaugeAtMost { gauge: Gauge, max: u64 },
    /// Some gauge sample has `gauge >= min` (the load really happened).
    GaugeReached { gauge: Gauge, min: u64 },
}

/// Checks every expectation; returns one actionable message per unmet expectation.
pub fn check_expectations(scenario: &Scenario, history: &History, expectations: &[Expectation]) -> Vec<String> {
    let facts = Facts::build(scenario, history);
    expectations
        .iter()
        .filter_map(|expectation| facts.check(expectation).err())
        .collect()
}

/// Simulated time as people read it: `t=1.204s`.
fn t(ms: u64) -> String {
    format!("t={}.{:03}s", ms / 1000, ms % 1000)
}

/// One connection attempt of a client.
struct Conn {
    resumed: bool,
    /// (entry index, time, recovered)
    welcome: Option<(usize, u64, bool)>,
    /// (entry index, time, code, by)
    closed: Option<(usize, u64, Option<u16>, ClosedBy)>,
    event_frames: usize,
}

impl Conn {
    fn open_at(&self, idx: usize) -> bool {
        self.welcome.is_some_and(|(w, _, _)| w < idx) && self.closed.is_none_or(|(c, ..)| c > idx)
    }
}

#[derive(Default)]
struct ClientFacts {
    user: String,
    conns: Vec<Conn>,
    /// (entry index, time, item)
    delivered: Vec<(usize, u64, DeliveredItem)>,
    pauses: Vec<(u64, u64)>,
}

impl ClientFacts {
    fn paused_during(&self, from: u64, to: u64) -> bool {
        self.pauses.iter().any(|&(a, b)| a <= to && b >= from)
    }
}

/// One publish attempt.
struct Attempt {
    called_idx: usize,
    called_at: u64,
    returned: Option<(usize, u64, PublishOutcome)>,
}

struct EventFacts {
    user: String,
    attempts: Vec<Attempt>,
}

impl EventFacts {
    /// The event's position (epoch, seq) from the first attempt answered `published`, with the
    /// earliest call that can have created the event: the call to measure delivery from.
    ///
    /// That call is the answered attempt itself only when the answer was not a duplicate. A
    /// keyed retry answered `duplicate: true` created nothing: an earlier attempt whose answer
    /// was lost (`timeout`, `connection_lost`, or none) did, and the event may have been
    /// delivered long before the retry was even called. Which of those earlier attempts was
    /// applied is unknowable, so this returns the first of them (or the event's very first call,
    /// if none looks like it): the earliest moment the event can have existed.
    /// Attempts refused with a definite error are skipped, as they created nothing.
    fn published(&self) -> Option<(&Attempt, &str, u64)> {
        let (answered, epoch, seq, duplicate) =
            self.attempts.iter().enumerate().find_map(|(i, a)| match &a.returned {
                Some((_, _, PublishOutcome::Published { epoch, seq, duplicate })) => {
                    Some((i, epoch.as_str(), *seq, *duplicate))
                }
                _ => None,
            })?;
        if !duplicate {
            return Some((&self.attempts[answered], epoch, seq));
        }
        let earlier = &self.attempts[..answered];
        let creator = earlier
            .iter()
            .find(|a| match &a.returned {
                None => true,
                Some((_, _, PublishOutcome::Failed { code, .. })) => is_ambiguous_failure(code),
                Some((_, _, PublishOutcome::Published { .. })) => false,
            })
            .unwrap_or(&self.attempts[0]);
        Some((creator, epoch, seq))
    }
}

/// The history, indexed for expectations.
struct Facts {
    step_events: BTreeMap<usize, Vec<String>>,
    events: BTreeMap<String, EventFacts>,
    clients: BTreeMap<u32, ClientFacts>,
    /// Epochs in the order they first appeared in a publish outcome.
    epoch_rank: BTreeMap<String, usize>,
    gauges: Vec<(usize, u64, GaugeSample)>,
    end: Option<usize>,
}

impl Facts {
    fn build(_scenario: &Scenario, history: &History) -> Facts {
        let mut facts = Facts {
            step_events: BTreeMap::new(),
            events: BTreeMap::new(),
            clients: BTreeMap::new(),
            epoch_rank: BTreeMap::new(),
            gauges: Vec::new(),
            end: None,
        };
        let mut next_event = 0u64;
        for (idx, entry) in history.entries.iter().enumerate() {
            let at = entry.at_ms;
            match &entry.what {
                Observation::StepApplied { index, step } => {
                    let count = match step {
                        Step::Publish { .. } => 1,
                        Step::Burst { count, .. } => u64::from(*count),
                        _ => 0,
                    };
                    if count > 0 {
                        let ids = facts.step_events.entry(*index).or_default();
                        for _ in 0..count {
                            next_event += 1;
                            ids.push(format!("e-{next_event}"));
                        }
                    }
                }
                Observation::PublishCalled { event_id, user, .. } => {
                    let event = facts.events.entry(event_id.clone()).or_insert_with(|| EventFacts {
                        user: user.clone(),
                        attempts: Vec::new(),
                    });
                    event.attempts.push(Attempt {
                        called_idx: idx,
                        called_at: at,
                        returned: None,
                    });
                }
                Observation::PublishReturned { event_id, outcome, .. } => {
                    if let PublishOutcome::Published { epoch, .. } = outcome {
                        let next = facts.epoch_rank.len();
                        facts.epoch_rank.entry(epoch.clone()).or_insert(next);
                    }
                    if let Some(attempt) = facts
                        .events
                        .get_mut(event_id)
                        .and_then(|e| e.attempts.iter_mut().find(|a| a.returned.is_none()))
                    {
                        attempt.returned = Some((idx, at, outcome.clone()));
                    }
                }
                Observation::Connecting {
                    client, user, resume, ..
                } => {
                    let c = facts.clients.entry(*client).or_default();
                    c.user = user.clone();
                    c.conns.push(Conn {
                        resumed: resume.is_some(),
                        welcome: None,
                        closed: None,
                        event_frames: 0,
                    });
                }
                Observation::FrameReceived { client, frame, .. } => {
                    if let Some(conn) = facts.clients.get_mut(client).and_then(|c| c.conns.last_mut()) {
                        match frame {
                            FrameSeen::Welcome { recovered, .. } => conn.welcome = Some((idx, at, *recovered)),
                            FrameSeen::Event { .. } => conn.event_frames += 1,
                            _ => {}
                        }
                    }
                }
                Observation::Delivered { client, user, item } => {
                    let c = facts.clients.entry(*client).or_default();
                    c.user = user.clone();
                    c.delivered.push((idx, at, item.clone()));
                }
                Observation::Closed { client, code, by, .. } => {
                    if let Some(conn) = facts.clients.get_mut(client).and_then(|c| c.conns.last_mut()) {
                        if conn.closed.is_none() {
                            conn.closed = Some((idx, at, *code, *by));
                        }
                    }
                }
                Observation::Paused { client, duration_ms } => {
                    facts
                        .clients
                        .entry(*client)
                        .or_default()
                        .pauses
                        .push((at, at + duration_ms));
                }
                Observation::Gauges(sample) => facts.gauges.push((idx, at, sample.clone())),
                Observation::End => facts.end = Some(idx),
                _ => {}
            }
        }
        facts
    }

    fn client(&self, client: u32) -> Result<&ClientFacts, String> {
        self.clients
            .get(&client)
            .ok_or_else(|| format!("client {client} never appears in the history (was it connected?)"))
    }

    fn step_events(&self, step: usize) -> Result<&[String], String> {
        self.step_events
            .get(&step)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("step {step} published nothing (not a publish step, or skipped)"))
    }

    fn hostile_conns(&self, step: usize) -> Vec<(u32, &Conn)> {
        let base = HOSTILE_CLIENT_BASE + step as u32 * HOSTILE_CONNECTIONS_PER_STEP_MAX;
        self.clients
            .range(base..base + HOSTILE_CONNECTIONS_PER_STEP_MAX)
            .flat_map(|(id, c)| c.conns.iter().map(move |conn| (*id, conn)))
            .collect()
    }

    /// Every event `steps` were meant to publish, with the earliest call that can have created it
    /// (see [`EventFacts::published`]; not necessarily the attempt answered `published`), sorted
    /// in publish order (epoch rank, seq); an error names the first one no attempt published.
    fn published_events<'a>(&'a self, steps: &[usize]) -> Result<Vec<(&'a str, &'a Attempt, usize, u64)>, String> {
        let mut out = Vec::new();
        for &step in steps {
            for id in self.step_events(step)? {
                let Some(event) = self.events.get(id) else {
                    return Err(format!("event {id} of step {step} was never called"));
                };
                let Some((attempt, epoch, seq)) = event.published() else {
                    let last = event.attempts.last().and_then(|a| a.returned.as_ref());
                    let how = last.map_or_else(
                        || "never returned".to_string(),
                        |(_, at, outcome)| format!("ended {} at {}", describe_outcome(outcome), t(*at)),
                    );
                    return Err(format!(
                        "event {id} of step {step} was never published ({how}): every event of steps {steps:?} must be published and delivered"
                    ));
                };
                out.push((id.as_str(), attempt, self.epoch_rank[epoch], seq));
            }
        }
        if out.is_empty() {
            return Err("no publish step named: the expectation would test nothing".into());
        }
        out.sort_by_key(|&(_, _, rank, seq)| (rank, seq));
        Ok(out)
    }

    fn check(&self, expectation: &Expectation) -> Result<(), String> {
        match expectation {
            Expectation::ClosedWith { client, code } => {
                let c = self.client(*client)?;
                let closes: Vec<String> = c
                    .conns
                    .iter()
                    .filter_map(|conn| conn.closed)
                    .map(|(_, at, code, by)| format!("{by:?}/{code:?} at {}", t(at)))
                    .collect();
                let seen = c
                    .conns
                    .iter()
                    .any(|conn| matches!(conn.closed, Some((_, _, Some(k), ClosedBy::Server)) if k == *code));
                ok_or(
                    seen,
                    format!("client {client} was never closed by the server with code {code} (its closes: {closes:?})"),
                )
            }
            Expectation::HostileClosedWith { step, code, at_least } => {
                let conns = self.hostile_conns(*step);
                if conns.is_empty() {
                    return Err(format!("hostile step {step} opened no connection"));
                }
                let matching = conns
                    .iter()
                    .filter(|(_, conn)| matches!(conn.closed, Some((_, _, Some(k), ClosedBy::Server)) if k == *code))
                    .count() as u32;
                let needed = at_least.unwrap_or(conns.len() as u32);
                if matching >= needed {
                    return Ok(());
                }
                let other: Vec<String> = conns
                    .iter()
                    .filter(|(_, conn)| !matches!(conn.closed, Some((_, _, Some(k), ClosedBy::Server)) if k == *code))
                    .take(5)
                    .map(|(id, conn)| match conn.closed {
                        Some((_, at, k, by)) => format!("client {id}: {by:?}/{k:?} at {}", t(at)),
                        None => format!("client {id}: never closed"),
                    })
                    .collect();
                Err(format!(
                    "hostile step {step}: {matching} of {} connections were closed by the server with {code}, \
                     {needed} expected; e.g. {other:?}",
                    conns.len()
                ))
            }
            Expectation::HostileWelcomes { step, min, max } => {
                let conns = self.hostile_conns(*step);
                if conns.is_empty() {
                    return Err(format!("hostile step {step} opened no connection"));
                }
                let welcomed = conns.iter().filter(|(_, conn)| conn.welcome.is_some()).count() as u32;
                ok_or(
                    (*min..=*max).contains(&welcomed),
                    format!(
                        "hostile step {step}: {welcomed} of {} connections were welcomed, expected {min}..={max}",
                        conns.len()
                    ),
                )
            }
            Expectation::HostileNoEvents { step } => {
                let conns = self.hostile_conns(*step);
                if conns.is_empty() {
                    return Err(format!("hostile step {step} opened no connection"));
                }
                match conns.iter().find(|(_, conn)| conn.event_frames > 0) {
                    Some((id, conn)) => Err(format!(
                        "hostile client {id} (step {step}) received {} event frames",
                        conn.event_frames
                    )),
                    None => Ok(()),
                }
            }
            Expectation::PublishOutcome { step, outcome, code } => {
                for id in self.step_events(*step)? {
                    let last = self
                        .events
                        .get(id)
                        .and_then(|e| e.attempts.last())
                        .ok_or_else(|| format!("event {id} of step {step} was never called"))?;
                    let Some((_, at, got)) = &last.returned else {
                        return Err(format!("event {id} of step {step} never returned (a hang)"));
                    };
                    let good = match (outcome, got) {
                        (OutcomeKind::Published, PublishOutcome::Published { .. }) => true,
                        (OutcomeKind::Failed, PublishOutcome::Failed { code: got, .. }) => {
                            code.as_ref().is_none_or(|want| want == got)
                        }
                        _ => false,
                    };
                    if !good {
                        let want = match code {
                            Some(code) => format!("{outcome:?} with {code}"),
                            None => format!("{outcome:?}"),
                        };
                        return Err(format!(
                            "event {id} of step {step} ended {} at {}, expected {want}",
                            describe_outcome(got),
                            t(*at)
                        ));
                    }
                }
                Ok(())
            }
            Expectation::PublishReturnsWithin { step, max_ms } => {
                let ended = self.end.is_some();
                for id in self.step_events(*step)? {
                    let Some(event) = self.events.get(id) else {
                        return Err(format!("event {id} of step {step} was never called"));
                    };
                    for attempt in &event.attempts {
                        match &attempt.returned {
                            Some((_, at, _)) if at.saturating_sub(attempt.called_at) <= *max_ms => {}
                            Some((_, at, outcome)) => {
                                return Err(format!(
                                    "event {id} of step {step}: the call at {} returned {} only at {} (> {max_ms} ms)",
                                    t(attempt.called_at),
                                    describe_outcome(outcome),
                                    t(*at)
                                ))
                            }
                            None if ended => {
                                return Err(format!(
                                    "event {id} of step {step}: the call at {} never returned (a hang)",
                                    t(attempt.called_at)
                                ))
                            }
                            None => {}
                        }
                    }
                }
                Ok(())
            }
            Expectation::DuplicateAnswered { steps } => {
                let mut answers = 0;
                for &step in steps {
                    for id in self.step_events(step)? {
                        let attempts = self.events.get(id).map(|e| e.attempts.as_slice()).unwrap_or(&[]);
                        answers += attempts
                            .iter()
                            .filter(|a| {
                                matches!(
                                    &a.returned,
                                    Some((_, _, PublishOutcome::Published { duplicate: true, .. }))
                                )
                            })
                            .count();
                    }
                }
                ok_or(
                    answers > 0,
                    format!("no attempt of steps {steps:?} was answered duplicate: the idempotent retry path was not exercised"),
                )
            }
            Expectation::AllDelivered { client, steps } => self.all_delivered(*client, steps, None),
            Expectation::DeliveredWithin { client, steps, max_ms } => self.all_delivered(*client, steps, Some(*max_ms)),
            Expectation::EventsDelivered { client, count } => {
                let c = self.client(*client)?;
                let got = c
                    .delivered
                    .iter()
                    .filter(|(_, _, item)| matches!(item, DeliveredItem::Event { .. }))
                    .count() as u64;
                ok_or(
                    got == *count,
                    format!("client {client} was handed {got} events, expected {count}"),
                )
            }
            Expectation::NoDeliveriesTo { client } => {
                let c = self.client(*client)?;
                if c.conns.iter().all(|conn| conn.welcome.is_none()) {
                    return Err(format!(
                        "client {client} was never welcomed ({} attempts): \"no events\" proves nothing about a client that could not receive any",
                        c.conns.len()
                    ));
                }
                match c.delivered.iter().find_map(|(_, at, item)| match item {
                    DeliveredItem::Event { event_id, .. } => Some((at, event_id)),
                    _ => None,
                }) {
                    Some((at, id)) => Err(format!(
                        "client {client} was handed event {} at {}, expected no events at all",
                        id.as_deref().unwrap_or("<no id>"),
                        t(*at)
                    )),
                    None => Ok(()),
                }
            }
            Expectation::Recovered { client, recovered } => {
                let c = self.client(*client)?;
                let answers: Vec<bool> = c
                    .conns
                    .iter()
                    .filter(|conn| conn.resumed)
                    .filter_map(|conn| conn.welcome.map(|(_, _, r)| r))
                    .collect();
                ok_or(
                    answers.contains(recovered),
                    format!(
                        "client {client}: no resume was answered with recovered={recovered} (answers: {answers:?})"
                    ),
                )
            }
            Expectation::GapReceived { client, reason } => {
                let c = self.client(*client)?;
                let gaps: Vec<&str> = c
                    .delivered
                    .iter()
                    .filter_map(|(_, _, item)| match item {
                        DeliveredItem::Gap { reason, .. } => Some(reason.as_str()),
                        _ => None,
                    })
                    .collect();
                let seen = gaps.iter().any(|r| reason.as_deref().is_none_or(|want| want == *r));
                ok_or(
                    seen,
                    format!(
                        "client {client} was never handed a gap{} (gaps seen: {gaps:?})",
                        reason.as_ref().map(|r| format!(" with reason {r}")).unwrap_or_default()
                    ),
                )
            }
            Expectation::NoGap { client } => {
                let c = self.client(*client)?;
                match c.delivered.iter().find_map(|(_, at, item)| match item {
                    DeliveredItem::Gap {
                        epoch, from, to, reason, ..
                    } => Some((at, epoch, from, to, reason)),
                    _ => None,
                }) {
                    Some((at, epoch, from, to, reason)) => Err(format!(
                        "client {client} was handed a gap ({reason}, epoch {epoch}, {from}..{to:?}) at {}, expected none",
                        t(*at)
                    )),
                    None => Ok(()),
                }
            }
            Expectation::RunSettled { client, run } => {
                let c = self.client(*client)?;
                let run_name = format!("run-{run}");
                let last = c
                    .delivered
                    .iter()
                    .rposition(|(_, _, item)| matches!(item, DeliveredItem::Event { run: r, .. } if *r == run_name));
                let Some(last) = last else {
                    return Err(format!(
                        "client {client} never saw an event of {run_name}: the expectation would test nothing"
                    ));
                };
                let ended = c.delivered.iter().any(|(_, _, item)| {
                    matches!(item, DeliveredItem::Event { run: r, kind, .. }
                        if *r == run_name && TERMINAL_KINDS.contains(&kind.as_str()))
                });
                let gap_after = c.delivered[last + 1..]
                    .iter()
                    .any(|(_, _, item)| matches!(item, DeliveredItem::Gap { .. }));
                let (_, at, _) = &c.delivered[last];
                ok_or(
                    ended || gap_after,
                    format!(
                        "client {client} last saw {run_name} at {} and was never told it ended or that \
                         events were lost (no agent_completed/agent_error, no later gap): the UI shows a run \
                         that is still going",
                        t(*at)
                    ),
                )
            }
            Expectation::ConnectAttempts { client, min, max } => {
                let c = self.client(*client)?;
                let attempts = c.conns.len() as u32;
                ok_or(
                    (*min..=*max).contains(&attempts),
                    format!("client {client} made {attempts} connection attempts, expected {min}..={max}"),
                )
            }
            Expectation::ConnectedAtEnd { client } => {
                let c = self.client(*client)?;
                let end = self.end.ok_or("the run never reached End")?;
                ok_or(
                    c.conns.iter().any(|conn| conn.open_at(end)),
                    format!(
                        "client {client} holds no welcomed open connection at End ({} attempts, last closed: {:?})",
                        c.conns.len(),
                        c.conns
                            .last()
                            .and_then(|conn| conn.closed)
                            .map(|(_, at, code, by)| (t(at), code, by))
                    ),
                )
            }
            Expectation::DeliveryLatencyBelow { max_ms, percentile } => self.latency(*max_ms, *percentile),
            Expectation::GaugeAtMost { gauge, max } => {
                match self.gauges.iter().find(|(_, _, sample)| gauge.of(sample) > *max) {
                    Some((_, at, sample)) => Err(format!(
                        "gauge {} was {} at {}, above {max}",
                        gauge.name(),
                        gauge.of(sample),
                        t(*at)
                    )),
                    None if self.gauges.is_empty() => Err("no gauge was ever sampled".into()),
                    None => Ok(()),
                }
            }
            Expectation::GaugeReached { gauge, min } => {
                let peak = self.gauges.iter().map(|(_, _, s)| gauge.of(s)).max();
                ok_or(
                    peak.is_some_and(|p| p >= *min),
                    format!(
                        "gauge {} peaked at {peak:?}, never reaching {min}: the load did not happen",
                        gauge.name()
                    ),
                )
            }
        }
    }

    fn all_delivered(&self, client: u32, steps: &[usize], within_ms: Option<u64>) -> Result<(), String> {
        let c = self.client(client)?;
        let expected = self.published_events(steps)?;
        // Delivery positions of each expected event id.
        let mut seen: BTreeMap<&str, Vec<(usize, u64)>> = BTreeMap::new();
        for (position, (_, at, item)) in c.delivered.iter().enumerate() {
            if let DeliveredItem::Event { event_id: Some(id), .. } = item {
                seen.entry(id.as_str()).or_default().push((position, *at));
            }
        }
        let mut previous: Option<(&str, usize)> = None;
        for (id, attempt, _, seq) in &expected {
            let owner = &self.events[*id].user;
            let deliveries = seen.get(id).map(Vec::as_slice).unwrap_or(&[]);
            match deliveries {
                [] => {
                    return Err(format!(
                        "event {id} (user {owner}, seq {seq}, first called at {}) was never handed to client {client} (user {})",
                        t(attempt.called_at),
                        c.user
                    ))
                }
                [(position, at)] => {
                    if let Some(max_ms) = within_ms {
                        // Saturating: a delivery can be recorded before a call (one that did not
                        // create the event), and that is no latency at all.
                        if at.saturating_sub(attempt.called_at) > max_ms {
                            return Err(format!(
                                "event {id} (first called at {}) reached client {client} only at {} (> {max_ms} ms)",
                                t(attempt.called_at),
                                t(*at)
                            ));
                        }
                    }
                    if let Some((before, before_position)) = previous {
                        if *position < before_position {
                            return Err(format!(
                                "client {client} was handed event {id} before {before}, though {before} was published first"
                            ));
                        }
                    }
                    previous = Some((id, *position));
                }
                more => {
                    return Err(format!(
                        "event {id} was handed to client {client} {} times (at {:?})",
                        more.len(),
                        more.iter().map(|(_, at)| t(*at)).collect::<Vec<_>>()
                    ))
                }
            }
        }
        Ok(())
    }

    fn latency(&self, max_ms: u64, percentile: Option<u8>) -> Result<(), String> {
        let mut samples: Vec<(u64, &str, u32)> = Vec::new();
        for (id, event) in &self.events {
            let Some((attempt, _, _)) = event.published() else {
                continue;
            };
            for (client_id, client) in &self.clients {
                if client.user != event.user || *client_id >= HOSTILE_CLIENT_BASE {
                    continue;
                }
                let Some(conn) = client.conns.iter().find(|conn| conn.open_at(attempt.called_idx)) else {
                    continue;
                };
                let delivered = client
                    .delivered
                    .iter()
                    .find(|(_, _, item)| matches!(item, DeliveredItem::Event { event_id: Some(e), .. } if e == id));
                let Some((delivered_idx, delivered_at, _)) = delivered else {
                    continue;
                };
                let same_connection = conn.closed.is_none_or(|(closed_idx, ..)| closed_idx > *delivered_idx);
                if same_connection && !client.paused_during(attempt.called_at, *delivered_at) {
                    samples.push((delivered_at.saturating_sub(attempt.called_at), id.as_str(), *client_id));
                }
            }
        }
        if samples.is_empty() {
            return Err("no delivery could be measured (no client was connected when an event was published)".into());
        }
        samples.sort();
        let p = u64::from(percentile.unwrap_or(100).clamp(1, 100));
        let rank = (p * samples.len() as u64).div_ceil(100).max(1) as usize;
        let (value, id, client) = samples[rank - 1];
        let worst = samples[samples.len() - 1];
        ok_or(
            value < max_ms,
            format!(
                "delivery latency p{p} over {} deliveries is {value} ms (event {id} to client {client}), not below \
                 {max_ms} ms; the worst is {} ms (event {} to client {})",
                samples.len(),
                worst.0,
                worst.1,
                worst.2
            ),
        )
    }
}

fn describe_outcome(outcome: &PublishOutcome) -> String {
    match outcome {
        PublishOutcome::Published { seq, epoch, duplicate } => {
            format!(
                "published (seq {seq}, epoch {epoch}{})",
                if *duplicate { ", duplicate" } else { "" }
            )
        }
        PublishOutcome::Failed { code, .. } => format!("failed with {code}"),
    }
}

fn ok_or(ok: bool, message: String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::builder::{scenario_with, HistoryBuilder};
    use crate::history::ClosedBy;
    use crate::scenario::{Attack, Kind, Via};

    fn connect_step(client: u32, user: u32) -> Step {
        Step::Connect {
            client,
            user,
            host: 0,
            token_ttl_ms: None,
        }
    }

    fn publish_step(user: u32) -> Step {
        Step::Publish {
            user,
            run: 0,
            kind: Kind::AgentStarted,
            payload_bytes: 10,
            via: Via::Notifier,
        }
    }

    fn burst_step(user: u32, count: u32) -> Step {
        Step::Burst {
            user,
            run: 0,
            count,
            payload_bytes: 10,
            via: Via::Notifier,
        }
    }

    fn check(history: &History, expectation: Expectation) -> Vec<String> {
        check_expectations(&scenario_with(2, vec![]), history, &[expectation])
    }

    fn passes(history: &History, expectation: Expectation) {
        let unmet = check(history, expectation.clone());
        assert!(unmet.is_empty(), "{expectation:?} should hold: {unmet:?}");
    }

    fn fails(history: &History, expectation: Expectation, needle: &str) {
        let unmet = check(history, expectation.clone());
        assert_eq!(unmet.len(), 1, "{expectation:?} should fail once: {unmet:?}");
        assert!(unmet[0].contains(needle), "{:?} should mention {needle:?}", unmet[0]);
    }

    /// Client 0 (u0) welcomed at 10 ms; step 1 bursts three events for u0 at 100 ms which
    /// arrive at 120 ms (seq 1, 3 in order; seq 2 twice when `duplicate`, or never when `lose`).
    fn burst_history(duplicate: bool, lose: bool, swap: bool) -> History {
        let mut b = HistoryBuilder::new();
        b.at(0).step(0, connect_step(0, 0));
        b.at(10).connect(0, None, "E", 0, false);
        b.at(100).step(1, burst_step(0, 3));
        for seq in 1..=3 {
            b.publish_ok("u0", "E", seq);
        }
        b.at(120);
        let order: &[u64] = match (lose, swap) {
            (true, _) => &[1, 3],
            (_, true) => &[2, 1, 3],
            _ => &[1, 2, 3],
        };
        for &seq in order {
            b.deliver(0, "E", seq);
            if duplicate && seq == 2 {
                b.deliver(0, "E", 2);
            }
        }
        b.at(500).heal();
        b.at(1000).end();
        b.build()
    }

    #[test]
    fn step_events_follow_applied_steps_and_skip_nothing_else() {
        let mut b = HistoryBuilder::new();
        b.step(0, burst_step(0, 2));
        b.step(2, publish_step(1));
        let facts = Facts::build(&scenario_with(2, vec![]), &b.build());
        assert_eq!(facts.step_events[&0], vec!["e-1", "e-2"]);
        assert_eq!(facts.step_events[&2], vec!["e-3"]);
        assert!(!facts.step_events.contains_key(&1));
    }

    #[test]
    fn closed_with() {
        let mut b = HistoryBuilder::new();
        b.step(0, connect_step(0, 0));
        b.connecting(0, None);
        b.at(5).closed(0, Some(4002), ClosedBy::Server);
        let history = b.build();
        passes(&history, Expectation::ClosedWith { client: 0, code: 4002 });
        fails(
            &history,
            Expectation::ClosedWith { client: 0, code: 4001 },
            "never closed",
        );
        fails(
            &history,
            Expectation::ClosedWith { client: 9, code: 4002 },
            "never appears",
        );
    }

    fn hostile_history() -> History {
        let mut b = HistoryBuilder::new();
        let base = HOSTILE_CLIENT_BASE + 3 * 100;
        b.step(
            3,
            Step::Hostile {
                host: 0,
                attack: Attack::Flood {
                    user: 0,
                    connections: 3,
                },
            },
        );
        for k in 0..3 {
            b.hostile_client(base + k, "u0");
            b.connecting(base + k, None);
        }
        b.at(10).welcome(base, "E", 0, false);
        b.at(20).closed(base + 1, Some(4009), ClosedBy::Server);
        b.closed(base + 2, Some(4009), ClosedBy::Server);
        b.at(30).gap(base, "E", 1, Some(2), "retention");
        b.publish_ok("u0", "E", 3);
        b.deliver(base, "E", 3);
        b.at(40).closed(base, None, ClosedBy::Client);
        b.build()
    }

    #[test]
    fn hostile_closed_with() {
        let history = hostile_history();
        passes(
            &history,
            Expectation::HostileClosedWith {
                step: 3,
                code: 4009,
                at_least: Some(2),
            },
        );
        fails(
            &history,
            Expectation::HostileClosedWith {
                step: 3,
                code: 4009,
                at_least: None,
            },
            "2 of 3",
        );
        fails(
            &history,
            Expectation::HostileClosedWith {
                step: 4,
                code: 4009,
                at_least: None,
            },
            "no connection",
        );
    }

    #[test]
    fn hostile_welcomes() {
        let history = hostile_history();
        passes(
            &history,
            Expectation::HostileWelcomes {
                step: 3,
                min: 1,
                max: 1,
            },
        );
        fails(
            &history,
            Expectation::HostileWelcomes {
                step: 3,
                min: 0,
                max: 0,
            },
            "1 of 3",
        );
    }

    #[test]
    fn hostile_no_events() {
        let history = hostile_history();
        fails(&history, Expectation::HostileNoEvents { step: 3 }, "received 1");
        let mut b = HistoryBuilder::new();
        b.hostile_client(HOSTILE_CLIENT_BASE, "u1");
        b.connecting(HOSTILE_CLIENT_BASE, None);
        b.closed(HOSTILE_CLIENT_BASE, Some(4001), ClosedBy::Server);
        passes(&b.build(), Expectation::HostileNoEvents { step: 0 });
    }

    #[test]
    fn publish_outcome_uses_the_last_attempt() {
        let mut b = HistoryBuilder::new();
        b.step(
            0,
            Step::Publish {
                user: 0,
                run: 0,
                kind: Kind::AgentStarted,
                payload_bytes: 10,
                via: Via::Http {
                    idempotency_key: true,
                    retries: 1,
                },
            },
        );
        let id = b.publish_called(
            "u0",
            Via::Http {
                idempotency_key: true,
                retries: 1,
            },
            10,
        );
        b.at(100).failed(&id, "timeout");
        b.retry_called(&id);
        b.at(150).published(&id, "E", 1, true);
        passes(&b.build(), Expectation::DuplicateAnswered { steps: vec![0] });
        b.step(1, publish_step(0));
        let refused = b.publish_called("u0", Via::Notifier, 10);
        b.failed(&refused, "shutting_down");
        let history = b.build();
        let outcome = |step, outcome, code: Option<&str>| Expectation::PublishOutcome {
            step,
            outcome,
            code: code.map(str::to_string),
        };
        passes(&history, outcome(0, OutcomeKind::Published, None));
        passes(&history, outcome(1, OutcomeKind::Failed, Some("shutting_down")));
        passes(&history, outcome(1, OutcomeKind::Failed, None));
        fails(&history, outcome(0, OutcomeKind::Failed, None), "ended published");
        fails(
            &history,
            outcome(1, OutcomeKind::Failed, Some("unavailable")),
            "failed with shutting_down",
        );
        fails(&history, outcome(7, OutcomeKind::Failed, None), "published nothing");
        fails(
            &history,
            Expectation::DuplicateAnswered { steps: vec![1] },
            "not exercised",
        );
    }

    #[test]
    fn publish_returns_within() {
        let mut b = HistoryBuilder::new();
        b.step(0, publish_step(0));
        let id = b.publish_called("u0", Via::Notifier, 10);
        b.at(300).failed(&id, "timeout");
        b.step(1, publish_step(0));
        b.publish_called("u0", Via::Notifier, 10);
        b.at(400).end();
        let history = b.build();
        passes(&history, Expectation::PublishReturnsWithin { step: 0, max_ms: 300 });
        fails(
            &history,
            Expectation::PublishReturnsWithin { step: 0, max_ms: 299 },
            "only at",
        );
        fails(
            &history,
            Expectation::PublishReturnsWithin {
                step: 1,
                max_ms: 10_000,
            },
            "never returned",
        );
    }

    #[test]
    fn all_delivered() {
        let all = Expectation::AllDelivered {
            client: 0,
            steps: vec![1],
        };
        passes(&burst_history(false, false, false), all.clone());
        fails(&burst_history(true, false, false), all.clone(), "2 times");
        fails(&burst_history(false, true, false), all.clone(), "never handed");
        fails(&burst_history(false, false, true), all.clone(), "before");
        fails(
            &burst_history(false, false, false),
            Expectation::AllDelivered {
                client: 0,
                steps: vec![0],
            },
            "published nothing",
        );
    }

    /// Client 0 (u0) welcomed at 10 ms; step 1 means to burst three events at 100 ms, but the
    /// second ends `last` (`None`: never answered) and only seqs 1 and 2 (e-1, e-3) are
    /// published, both delivered at 120 ms.
    fn burst_with_second_refused(last: Option<&str>) -> History {
        let mut b = HistoryBuilder::new();
        b.at(0).step(0, connect_step(0, 0));
        b.at(10).connect(0, None, "E", 0, false);
        b.at(100).step(1, burst_step(0, 3));
        b.publish_ok("u0", "E", 1);
        let refused = b.publish_called("u0", Via::Notifier, 10);
        if let Some(code) = last {
            b.failed(&refused, code);
        }
        b.publish_ok("u0", "E", 2);
        b.at(120);
        b.deliver(0, "E", 1);
        b.deliver(0, "E", 2);
        b.at(500).heal();
        b.at(1000).end();
        b.build()
    }

    #[test]
    fn all_delivered_fails_when_a_publish_of_its_steps_was_refused() {
        // A server that refuses a publish must not pass by delivering the ones it took.
        let all = Expectation::AllDelivered {
            client: 0,
            steps: vec![1],
        };
        let history = burst_with_second_refused(Some("unavailable"));
        fails(
            &history,
            all.clone(),
            "event e-2 of step 1 was never published (ended failed with unavailable",
        );
        fails(
            &history,
            Expectation::DeliveredWithin {
                client: 0,
                steps: vec![1],
                max_ms: 1000,
            },
            "event e-2 of step 1 was never published",
        );
        fails(&burst_with_second_refused(None), all, "never returned");
        // The refusal itself is what PublishOutcome judges; the rest of the catalogue entry's
        // expectations still hold.
        passes(&history, Expectation::EventsDelivered { client: 0, count: 2 });
    }

    #[test]
    fn all_delivered_near_miss_a_retried_publish_that_ended_published() {
        // The first attempt timed out, the keyed retry published: the event was published.
        let mut b = HistoryBuilder::new();
        b.at(0).step(0, connect_step(0, 0));
        b.at(10).connect(0, None, "E", 0, false);
        b.at(100).step(1, publish_step(0));
        let via = Via::Http {
            idempotency_key: true,
            retries: 1,
        };
        let id = b.publish_called("u0", via, 10);
        b.at(200).failed(&id, "timeout");
        b.retry_called(&id);
        b.at(250).published(&id, "E", 1, false);
        b.at(260).deliver(0, "E", 1);
        b.at(500).heal();
        b.at(1000).end();
        passes(
            &b.build(),
            Expectation::AllDelivered {
                client: 0,
                steps: vec![1],
            },
        );
    }

    /// Client 0 (u0) welcomed at 10 ms; step 1's keyed publish is called at 100 ms, applied and
    /// delivered at 150 ms, but its answer is lost (a timeout at 5100 ms); the retry at 5100 ms
    /// is answered `duplicate: true` at 5120 ms.
    fn duplicate_answered_retry_history() -> History {
        let mut b = HistoryBuilder::new();
        b.at(0).step(0, connect_step(0, 0));
        b.at(10).connect(0, None, "E", 0, false);
        b.at(100).step(1, publish_step(0));
        let via = Via::Http {
            idempotency_key: true,
            retries: 1,
        };
        let id = b.publish_called("u0", via, 10);
        b.at(150).deliver_event_with_id(0, "E", 1, &id);
        b.at(5_100).failed(&id, "timeout");
        b.retry_called(&id);
        b.at(5_120).published(&id, "E", 1, true);
        b.at(6_000).heal();
        b.at(7_000).end();
        b.build()
    }

    #[test]
    fn all_delivered_measures_a_duplicate_answered_retry_from_the_first_call() {
        // The event was created by the first call, 50 ms before its delivery: the retry that
        // was answered `duplicate` came 4950 ms after the delivery and created nothing. Measuring
        // from the retry underflowed (a panic in debug, a huge latency in release).
        let history = duplicate_answered_retry_history();
        let within = |max_ms| Expectation::DeliveredWithin {
            client: 0,
            steps: vec![1],
            max_ms,
        };
        passes(
            &history,
            Expectation::AllDelivered {
                client: 0,
                steps: vec![1],
            },
        );
        passes(&history, within(50));
        passes(&history, within(1_000));
        fails(&history, within(49), "only at");
        let below = |max_ms| Expectation::DeliveryLatencyBelow {
            max_ms,
            percentile: None,
        };
        passes(&history, below(51));
        fails(&history, below(50), "p100 over 1 deliveries is 50 ms");
    }

    #[test]
    fn delivered_within() {
        let history = burst_history(false, false, false);
        let within = |max_ms| Expectation::DeliveredWithin {
            client: 0,
            steps: vec![1],
            max_ms,
        };
        passes(&history, within(20));
        fails(&history, within(19), "only at");
    }

    #[test]
    fn events_delivered_and_no_deliveries() {
        let history = burst_history(false, false, false);
        passes(&history, Expectation::EventsDelivered { client: 0, count: 3 });
        fails(
            &history,
            Expectation::EventsDelivered { client: 0, count: 2 },
            "handed 3",
        );
        fails(
            &history,
            Expectation::NoDeliveriesTo { client: 0 },
            "expected no events",
        );
        fails(&history, Expectation::NoDeliveriesTo { client: 1 }, "never appears");
    }

    #[test]
    fn no_deliveries_to_a_welcomed_client_that_got_nothing() {
        // Client 1 (u1) is welcomed while u0's burst is delivered to client 0 only.
        let mut b = HistoryBuilder::new();
        b.at(0).step(0, connect_step(0, 0));
        b.step(1, connect_step(1, 1));
        b.at(10).connect(0, None, "E", 0, false);
        b.connect(1, None, "F", 0, false);
        b.at(100).step(2, burst_step(0, 2));
        for seq in 1..=2 {
            b.publish_ok("u0", "E", seq);
        }
        b.at(120);
        b.deliver(0, "E", 1);
        b.deliver(0, "E", 2);
        b.at(500).heal();
        b.at(1000).end();
        let history = b.build();
        passes(&history, Expectation::NoDeliveriesTo { client: 1 });
        fails(
            &history,
            Expectation::NoDeliveriesTo { client: 0 },
            "was handed event e-1",
        );
    }

    #[test]
    fn no_deliveries_to_a_client_never_welcomed_fails() {
        // Client 1 tried to connect but was never welcomed: its silence proves nothing.
        let mut b = HistoryBuilder::new();
        b.at(0).step(0, connect_step(1, 1));
        b.at(10).connecting(1, None);
        b.at(50).closed(1, Some(4009), ClosedBy::Server);
        b.at(500).heal();
        b.at(1000).end();
        fails(
            &b.build(),
            Expectation::NoDeliveriesTo { client: 1 },
            "was never welcomed",
        );
    }

    fn resume_history(recovered: bool) -> History {
        let mut b = HistoryBuilder::new();
        b.step(0, connect_step(0, 0));
        b.connect(0, None, "E", 0, false);
        b.at(100).closed(0, None, ClosedBy::Network);
        b.at(200)
            .connect(0, Some(("E", 0)), if recovered { "E" } else { "F" }, 0, recovered);
        if !recovered {
            b.gap(0, "E", 1, None, "epoch");
        }
        b.build()
    }

    #[test]
    fn recovered() {
        passes(
            &resume_history(true),
            Expectation::Recovered {
                client: 0,
                recovered: true,
            },
        );
        passes(
            &resume_history(false),
            Expectation::Recovered {
                client: 0,
                recovered: false,
            },
        );
        // The first welcome (no resume) said recovered=false; it does not count.
        fails(
            &resume_history(true),
            Expectation::Recovered {
                client: 0,
                recovered: false,
            },
            "answers: [true]",
        );
    }

    #[test]
    fn gaps() {
        let gap = |reason: Option<&str>| Expectation::GapReceived {
            client: 0,
            reason: reason.map(str::to_string),
        };
        passes(&resume_history(false), gap(Some("epoch")));
        passes(&resume_history(false), gap(None));
        fails(&resume_history(false), gap(Some("retention")), "never handed a gap");
        fails(&resume_history(true), gap(None), "never handed a gap");
        passes(&resume_history(true), Expectation::NoGap { client: 0 });
        fails(
            &resume_history(false),
            Expectation::NoGap { client: 0 },
            "expected none",
        );
    }

    fn run_history(kinds: &[&str], gap_after: bool) -> History {
        let mut b = HistoryBuilder::new();
        b.step(0, connect_step(0, 0));
        b.connect(0, None, "E", 0, false);
        for (i, kind) in kinds.iter().enumerate() {
            b.delivered(
                0,
                DeliveredItem::Event {
                    epoch: "E".into(),
                    seq: i as u64 + 1,
                    run: "run-4".into(),
                    kind: kind.to_string(),
                    event_id: Some(format!("e-{}", i + 1)),
                },
            );
        }
        if gap_after {
            b.gap(0, "E", 9, None, "epoch");
        }
        b.build()
    }

    #[test]
    fn run_settled() {
        let settled = Expectation::RunSettled { client: 0, run: 4 };
        passes(
            &run_history(&["agent_started", "agent_completed"], false),
            settled.clone(),
        );
        passes(
            &run_history(&["agent_started", "tool_executing"], true),
            settled.clone(),
        );
        passes(&run_history(&["agent_started", "agent_error"], false), settled.clone());
        fails(
            &run_history(&["agent_started", "tool_executing"], false),
            settled.clone(),
            "still going",
        );
        fails(&run_history(&[], true), settled, "never saw");
    }

    #[test]
    fn connect_attempts_and_connected_at_end() {
        let mut b = HistoryBuilder::new();
        b.step(0, connect_step(0, 0));
        b.connect(0, None, "E", 0, false);
        b.at(10).closed(0, None, ClosedBy::Network);
        b.connecting(0, Some(("E", 0)));
        b.at(20).closed(0, None, ClosedBy::Network);
        b.at(30).connect(0, Some(("E", 0)), "E", 0, true);
        b.at(40).end();
        let history = b.build();
        passes(
            &history,
            Expectation::ConnectAttempts {
                client: 0,
                min: 3,
                max: 3,
            },
        );
        fails(
            &history,
            Expectation::ConnectAttempts {
                client: 0,
                min: 1,
                max: 2,
            },
            "made 3",
        );
        passes(&history, Expectation::ConnectedAtEnd { client: 0 });
        let mut b = HistoryBuilder::new();
        b.step(0, connect_step(0, 0));
        b.connect(0, None, "E", 0, false);
        b.at(10).closed(0, Some(1001), ClosedBy::Server);
        b.at(40).end();
        fails(
            &b.build(),
            Expectation::ConnectedAtEnd { client: 0 },
            "no welcomed open",
        );
    }

    #[test]
    fn delivery_latency() {
        // Delivered 20 ms after the call.
        let history = burst_history(false, false, false);
        let below = |max_ms, percentile| Expectation::DeliveryLatencyBelow { max_ms, percentile };
        passes(&history, below(21, None));
        fails(&history, below(20, None), "p100 over 3 deliveries is 20 ms");
        passes(&history, below(21, Some(50)));
        // A client that was not connected when the events were published is not measured.
        let mut b = HistoryBuilder::new();
        b.step(0, publish_step(0));
        b.publish_ok("u0", "E", 1);
        b.step(1, connect_step(0, 0));
        b.at(5_000).connect(0, None, "E", 0, false);
        b.deliver(0, "E", 1);
        fails(&b.build(), below(10, None), "no delivery could be measured");
        // A paused application is not measured either; the one that reads is.
        let mut b = HistoryBuilder::new();
        b.step(0, connect_step(0, 0));
        b.step(1, connect_step(1, 0));
        b.connect(0, None, "E", 0, false);
        b.connect(1, None, "E", 0, false);
        b.record(Observation::Paused {
            client: 1,
            duration_ms: 1_000,
        });
        b.at(10).step(2, publish_step(0));
        b.publish_ok("u0", "E", 1);
        b.at(30).deliver(0, "E", 1);
        b.at(900).deliver(1, "E", 1);
        passes(&b.build(), below(100, None));
    }

    #[test]
    fn gauges() {
        let mut b = HistoryBuilder::new();
        for connections in [3, 10, 2] {
            b.gauges(GaugeSample {
                connections,
                ..GaugeSample::default()
            });
        }
        let history = b.build();
        passes(
            &history,
            Expectation::GaugeAtMost {
                gauge: Gauge::Connections,
                max: 10,
            },
        );
        fails(
            &history,
            Expectation::GaugeAtMost {
                gauge: Gauge::Connections,
                max: 9,
            },
            "was 10",
        );
        passes(
            &history,
            Expectation::GaugeReached {
                gauge: Gauge::Connections,
                min: 10,
            },
        );
        fails(
            &history,
            Expectation::GaugeReached {
                gauge: Gauge::Connections,
                min: 11,
            },
            "peaked at Some(10)",
        );
        fails(
            &HistoryBuilder::new().build(),
            Expectation::GaugeAtMost {
                gauge: Gauge::Users,
                max: 1,
            },
            "was ever sampled",
        );
    }

    #[test]
    fn expectations_round_trip_through_json() {
        let all = vec![
            Expectation::ClosedWith { client: 1, code: 4001 },
            Expectation::HostileClosedWith {
                step: 2,
                code: 4009,
                at_least: Some(3),
            },
            Expectation::PublishOutcome {
                step: 4,
                outcome: OutcomeKind::Failed,
                code: Some("shutting_down".into()),
            },
            Expectation::DeliveryLatencyBelow {
                max_ms: 500,
                percentile: Some(99),
            },
            Expectation::GaugeAtMost {
                gauge: Gauge::SendQueueDepthMax,
                max: 8,
            },
        ];
        let text = serde_json::to_string_pretty(&all).unwrap();
        assert!(text.contains("\"expect\": \"publish_outcome\""), "{text}");
        assert!(text.contains("\"gauge\": \"send_queue_depth_max\""), "{text}");
        let back: Vec<Expectation> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, all);
    }
}
