//! A small builder for hand-written histories, so that checker tests (here and in `sim/`) read
//! like the run they describe: "at 100 ms client 0 is welcomed in epoch E; at 200 ms u0
//! publishes; at 250 ms client 0 gets it".
//!
//! It records exactly what the world records (same observations, same id conventions:
//! users `u{i}`, event ids `e-{n}`, payloads naming their user), and keeps the bookkeeping
//! (publish ids, connection ids, which event sits at which seq) out of the tests.

use crate::history::{
    ClosedBy, DeliveredItem, FrameSeen, GaugeSample, History, Observation, PublishOutcome, ResumeSent,
};
use crate::scenario::{Kind, Scenario, ScenarioConfig, Step, TimedStep, Via};
use std::collections::BTreeMap;

/// Builds a [`History`] entry by entry at a moving simulated clock.
#[derive(Clone)]
pub struct HistoryBuilder {
    history: History,
    now_ms: u64,
    next_publish: u64,
    next_event: u64,
    next_connection: u64,
    client_users: BTreeMap<u32, String>,
    client_hostile: BTreeMap<u32, bool>,
    client_connection: BTreeMap<u32, String>,
    /// (user, epoch, seq) → event id, from successful publishes.
    positions: BTreeMap<(String, String, u64), String>,
    /// event id → (user, publish id of the last attempt, attempt).
    events: BTreeMap<String, (String, u64, u32)>,
}

impl Default for HistoryBuilder {
    fn default() -> Self {
        HistoryBuilder::new()
    }
}

/// A scenario whose steps are `steps` at increasing times, with `users` users and default
/// config otherwise; a convenient partner for builder histories.
pub fn scenario_with(users: u32, steps: Vec<Step>) -> Scenario {
    Scenario {
        config: ScenarioConfig {
            users,
            ..ScenarioConfig::default()
        },
        steps: steps
            .into_iter()
            .enumerate()
            .map(|(i, step)| TimedStep {
                at_ms: i as u64 * 10,
                step,
            })
            .collect(),
    }
}

impl HistoryBuilder {
    pub fn new() -> HistoryBuilder {
        HistoryBuilder {
            history: History::default(),
            now_ms: 0,
            next_publish: 0,
            next_event: 0,
            next_connection: 0,
            client_users: BTreeMap::new(),
            client_hostile: BTreeMap::new(),
            client_connection: BTreeMap::new(),
            positions: BTreeMap::new(),
            events: BTreeMap::new(),
        }
    }

    /// Moves the clock (never backwards).
    pub fn at(&mut self, ms: u64) -> &mut Self {
        assert!(ms >= self.now_ms, "the builder's clock goes forward");
        self.now_ms = ms;
        self
    }

    pub fn now(&self) -> u64 {
        self.now_ms
    }

    /// Records any observation at the current time.
    pub fn record(&mut self, what: Observation) -> usize {
        self.history.record(self.now_ms, what);
        self.history.entries.len() - 1
    }

    pub fn step(&mut self, index: usize, step: Step) -> usize {
        if let Step::Connect { client, user, .. } = &step {
            self.client_users.insert(*client, crate::scenario::user_name(*user));
            self.client_hostile.insert(*client, false);
        }
        self.record(Observation::StepApplied { index, step })
    }

    /// Records every step of `scenario` as applied, in driver order, all at the builder's
    /// current time whatever their `at_ms` (a convenience for tests that use
    /// [`scenario_with`]; record steps whose time matters one by one with [`Self::step`]).
    pub fn steps_of(&mut self, scenario: &Scenario) -> &mut Self {
        for (index, step) in scenario.sorted_steps() {
            self.step(index, step.step.clone());
        }
        self
    }

    pub fn server_started(&mut self, life: u32) -> usize {
        self.record(Observation::ServerStarted { life })
    }

    pub fn server_stopped(&mut self, life: u32, how: &str) -> usize {
        self.record(Observation::ServerStopped { life, how: how.into() })
    }

    pub fn heal(&mut self) -> usize {
        self.record(Observation::HealStarted)
    }

    pub fn end(&mut self) -> usize {
        self.record(Observation::End)
    }

    pub fn gauges(&mut self, sample: GaugeSample) -> usize {
        self.record(Observation::Gauges(sample))
    }

    /// Declares a hostile client (so its observations are tagged `hostile: true`).
    pub fn hostile_client(&mut self, client: u32, user: &str) -> &mut Self {
        self.client_users.insert(client, user.into());
        self.client_hostile.insert(client, true);
        self
    }

    fn user_of(&self, client: u32) -> String {
        self.client_users.get(&client).cloned().unwrap_or_else(|| "?".into())
    }

    fn hostile(&self, client: u32) -> bool {
        self.client_hostile.get(&client).copied().unwrap_or(false)
    }

    /// A connection attempt, optionally resuming `(epoch, after)`.
    pub fn connecting(&mut self, client: u32, resume: Option<(&str, u64)>) -> usize {
        self.connecting_with_exp(client, resume, None)
    }

    pub fn connecting_with_exp(
        &mut self,
        client: u32,
        resume: Option<(&str, u64)>,
        token_exp_ms: Option<u64>,
    ) -> usize {
        let user = self.user_of(client);
        let hostile = self.hostile(client);
        self.record(Observation::Connecting {
            client,
            user,
            attempt: 0,
            resume: resume.map(|(epoch, after)| ResumeSent {
                epoch: epoch.into(),
                after,
            }),
            hostile,
            token_exp_ms,
        })
    }

    /// A welcome for the client's own user.
    pub fn welcome(&mut self, client: u32, epoch: &str, head: u64, recovered: bool) -> usize {
        let user = self.user_of(client);
        self.welcome_as(client, &user, epoch, head, recovered)
    }

    /// A welcome naming any user (to build isolation violations).
    pub fn welcome_as(&mut self, client: u32, user: &str, epoch: &str, head: u64, recovered: bool) -> usize {
        self.next_connection += 1;
        let connection = format!("c-{:016x}", self.next_connection);
        self.client_connection.insert(client, connection.clone());
        self.frame(
            client,
            FrameSeen::Welcome {
                user: user.into(),
                connection,
                epoch: epoch.into(),
                head,
                recovered,
            },
        )
    }

    /// Connecting then welcome, in one call.
    pub fn connect(
        &mut self,
        client: u32,
        resume: Option<(&str, u64)>,
        epoch: &str,
        head: u64,
        recovered: bool,
    ) -> usize {
        self.connecting(client, resume);
        self.welcome(client, epoch, head, recovered)
    }

    /// Any frame on the client's current connection.
    pub fn frame(&mut self, client: u32, frame: FrameSeen) -> usize {
        let user = self.user_of(client);
        let hostile = self.hostile(client);
        let connection = self.client_connection.get(&client).cloned();
        self.record(Observation::FrameReceived {
            client,
            user,
            connection,
            frame,
            hostile,
        })
    }

    pub fn delivered(&mut self, client: u32, item: DeliveredItem) -> usize {
        let user = self.user_of(client);
        self.record(Observation::Delivered { client, user, item })
    }

    pub fn closed(&mut self, client: u32, code: Option<u16>, by: ClosedBy) -> usize {
        self.closed_because(client, code, by, "")
    }

    /// [`HistoryBuilder::closed`] with the reason the client saw.
    pub fn closed_because(&mut self, client: u32, code: Option<u16>, by: ClosedBy, reason: &str) -> usize {
        let user = self.user_of(client);
        let hostile = self.hostile(client);
        self.client_connection.remove(&client);
        self.record(Observation::Closed {
            client,
            user,
            code,
            by,
            reason: reason.to_string(),
            hostile,
        })
    }

    pub fn stopped(&mut self, client: u32) -> usize {
        self.record(Observation::ClientStopped { client })
    }

    /// Starts a new logical publish for `user` (e.g. "u0"); returns its event id.
    pub fn publish_called(&mut self, user: &str, via: Via, payload_bytes: u64) -> String {
        self.next_event += 1;
        let event_id = format!("e-{}", self.next_event);
        self.attempt(&event_id, user, via, payload_bytes, 1);
        event_id
    }

    /// Another attempt of an existing publish (a retry with the same idempotency key).
    pub fn retry_called(&mut self, event_id: &str) -> usize {
        let (user, _, attempt) = self.events[event_id].clone();
        self.attempt(
            event_id,
            &user,
            Via::Http {
                idempotency_key: true,
                retries: 3,
            },
            0,
            attempt + 1,
        )
    }

    fn attempt(&mut self, event_id: &str, user: &str, via: Via, payload_bytes: u64, attempt: u32) -> usize {
        self.next_publish += 1;
        let publish = self.next_publish;
        self.events.insert(event_id.into(), (user.into(), publish, attempt));
        // The names the world's publisher records (`sim/src/publisher.rs`).
        let (via_name, key) = match via {
            Via::Notifier => ("notifier", None),
            Via::Http {
                idempotency_key: true, ..
            } => ("http+key", Some(format!("k-{event_id}"))),
            Via::Http { .. } => ("http", None),
        };
        self.record(Observation::PublishCalled {
            publish,
            event_id: event_id.into(),
            user: user.into(),
            run: "r0".into(),
            kind: Kind::AgentStarted.as_str().into(),
            via: via_name.into(),
            idempotency_key: key,
            attempt,
            payload_bytes,
        })
    }

    /// The last attempt of `event_id` returned a seq.
    pub fn published(&mut self, event_id: &str, epoch: &str, seq: u64, duplicate: bool) -> usize {
        let (user, publish, _) = self.events[event_id].clone();
        self.positions.insert((user, epoch.into(), seq), event_id.into());
        self.record(Observation::PublishReturned {
            publish,
            event_id: event_id.into(),
            outcome: PublishOutcome::Published {
                seq,
                epoch: epoch.into(),
                duplicate,
            },
        })
    }

    /// The last attempt of `event_id` failed with `code`.
    pub fn failed(&mut self, event_id: &str, code: &str) -> usize {
        let (_, publish, _) = self.events[event_id].clone();
        self.record(Observation::PublishReturned {
            publish,
            event_id: event_id.into(),
            outcome: PublishOutcome::Failed {
                code: code.into(),
                message: format!("{code} (test)"),
            },
        })
    }

    /// A notifier publish that succeeds at once: call and return at the current time.
    pub fn publish_ok(&mut self, user: &str, epoch: &str, seq: u64) -> String {
        let id = self.publish_called(user, Via::Notifier, 100);
        self.published(&id, epoch, seq, false);
        id
    }

    /// The event frame for a published position, as the server would send it.
    pub fn frame_event(&mut self, client: u32, user: &str, epoch: &str, seq: u64) -> usize {
        let id = self.positions[&(user.to_string(), epoch.to_string(), seq)].clone();
        let owner = self.events[&id].0.clone();
        self.frame(
            client,
            FrameSeen::Event {
                seq,
                run: "r0".into(),
                kind: Kind::AgentStarted.as_str().into(),
                event_id: Some(id),
                payload_user: Some(owner),
            },
        )
    }

    /// The frame and the delivered item of the client's own user's event at `(epoch, seq)`.
    pub fn deliver(&mut self, client: u32, epoch: &str, seq: u64) -> usize {
        let user = self.user_of(client);
        self.deliver_of(client, &user, epoch, seq)
    }

    /// Frame and delivered item of `owner`'s event at `(epoch, seq)` on `client`.
    pub fn deliver_of(&mut self, client: u32, owner: &str, epoch: &str, seq: u64) -> usize {
        self.frame_event(client, owner, epoch, seq);
        let id = self.positions[&(owner.to_string(), epoch.to_string(), seq)].clone();
        self.delivered(
            client,
            DeliveredItem::Event {
                epoch: epoch.into(),
                seq,
                run: "r0".into(),
                kind: Kind::AgentStarted.as_str().into(),
                event_id: Some(id),
            },
        )
    }

    /// Frame and delivered item carrying `event_id` at `(epoch, seq)`, whatever the publisher
    /// was told (for events whose outcome was an error or unknown).
    pub fn deliver_event_with_id(&mut self, client: u32, epoch: &str, seq: u64, event_id: &str) -> usize {
        let owner = self.events.get(event_id).map(|e| e.0.clone());
        self.frame(
            client,
            FrameSeen::Event {
                seq,
                run: "r0".into(),
                kind: Kind::AgentStarted.as_str().into(),
                event_id: Some(event_id.into()),
                payload_user: owner,
            },
        );
        self.delivered(
            client,
            DeliveredItem::Event {
                epoch: epoch.into(),
                seq,
                run: "r0".into(),
                kind: Kind::AgentStarted.as_str().into(),
                event_id: Some(event_id.into()),
            },
        )
    }

    /// A gap frame and its delivered item.
    pub fn gap(&mut self, client: u32, epoch: &str, from: u64, to: Option<u64>, reason: &str) -> usize {
        self.frame(
            client,
            FrameSeen::Gap {
                epoch: epoch.into(),
                from,
                to,
                reason: reason.into(),
            },
        );
        self.delivered(
            client,
            DeliveredItem::Gap {
                epoch: epoch.into(),
                from,
                to,
                reason: reason.into(),
            },
        )
    }

    /// The event id published at a position.
    pub fn event_at(&self, user: &str, epoch: &str, seq: u64) -> String {
        self.positions[&(user.to_string(), epoch.to_string(), seq)].clone()
    }

    pub fn build(&self) -> History {
        self.history.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_named_as_the_world_names_them() {
        let mut b = HistoryBuilder::new();
        let http = |idempotency_key| Via::Http {
            idempotency_key,
            retries: 1,
        };
        b.publish_called("u0", Via::Notifier, 1);
        b.publish_called("u0", http(false), 1);
        let keyed = b.publish_called("u0", http(true), 1);
        b.retry_called(&keyed);
        let vias: Vec<String> = b
            .build()
            .entries
            .into_iter()
            .filter_map(|entry| match entry.what {
                Observation::PublishCalled { via, .. } => Some(via),
                _ => None,
            })
            .collect();
        assert_eq!(vias, ["notifier", "http", "http+key", "http+key"]);
    }
}
