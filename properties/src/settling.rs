//! When a world may end before its quiet period is over.
//!
//! The quiet period (`quiet_period_ms`) exists so that a healthy core has time to recover after
//! the heal and the eventual checks (no silent loss, liveness, bounded resources) can be decided
//! at `End`. Most worlds have recovered a few seconds after the heal and then idle for the rest
//! of it — simulated time that costs as much as the faults did and shows nothing new.
//!
//! With `settle_ms` = W set in the scenario config, a world *settles* at a tick when:
//! 1. the heal is at least W ago and nothing but gauges and pongs was recorded for W (a paused
//!    reader counts as activity until its pause ends: that is when it is handed what waited). In
//!    a healthy recovery the history is silent longest while a connection stalled by a partition
//!    waits for the client's idle timeout (or a hostile client for its `hello` timeout); W is
//!    above both, so no recovery timer is still running (a backoff or a pending publish is ruled
//!    out by the rules below);
//! 2. every publish call has returned;
//! 3. every live client (opened, never closed for good) is connected: welcomed since its last
//!    attempt and close;
//! 4. the gauges, read then, show what the bounded-resources check demands after the load: no
//!    send queue lags, neither the hub's connections nor the server host's open sockets (counted
//!    by the network) outnumber the connections clients hold open, and no events are retained
//!    if their retention age runs out before the quiet period would end.
//!
//! The world then records that gauge sample, `Settled` and `End`. A world that never settles (a
//! client that never comes back, a queue that never drains, a publish that hangs) runs the
//! whole quiet period and the checkers decide as before, so an early end hides no loss,
//! liveness or leak failure: each of those is still visible at `End`, or the world would not
//! have settled. What it gives up is misbehaviour that begins only after W of complete idleness
//! with every client connected (`herald-sim fuzz --whole-quiet-period` still looks for it).
//! `settle_ms: None` (the default, and every hand-written catalogue scenario) keeps the whole
//! quiet period.

use crate::checkers::retention_expiry_ms;
use crate::history::{Entry, FrameSeen, GaugeSample, Observation};
use crate::scenario::{ScenarioConfig, Step};
use std::collections::BTreeSet;

/// The settle window generated scenarios use: one heartbeat beyond the longer of the client's
/// idle timeout and the `hello` timeout (rule 1 above).
pub fn settle_ms_for(config: &ScenarioConfig) -> u64 {
    let timeouts = &config.timeouts;
    timeouts.idle_timeout_ms.max(timeouts.hello_timeout_ms) + timeouts.heartbeat_interval_ms
}

/// Follows a history entry by entry (each entry once) and answers whether the world has
/// settled. Fed by the stepping loop of the world; pure, so it is deterministic.
#[derive(Debug, Default)]
pub struct Settling {
    /// Time of the newest entry that is not a gauge sample or a pong.
    last_activity_at: u64,
    heal_at: Option<u64>,
    /// Normal clients opened and not stopped.
    live: BTreeSet<u32>,
    /// Clients (normal or hostile) with a welcomed connection that has not closed.
    connected: BTreeSet<u32>,
    /// Publish calls made minus publish calls returned.
    calls_pending: u64,
    last_publish_at: Option<u64>,
}

impl Settling {
    pub fn new() -> Settling {
        Settling::default()
    }

    /// Takes one entry into account. Entries must come in history order.
    pub fn observe(&mut self, entry: &Entry) {
        let at = entry.at_ms;
        match &entry.what {
            Observation::Gauges(_)
            | Observation::FrameReceived {
                frame: FrameSeen::Pong { .. },
                ..
            } => return,
            Observation::StepApplied {
                step: Step::Connect { client, .. },
                ..
            } => {
                self.live.insert(*client);
            }
            Observation::ClientStopped { client } => {
                self.live.remove(client);
            }
            Observation::Paused { duration_ms, .. } => {
                // The application reads again at the end of the pause: that is when the items
                // it left waiting are handed over, so the window counts from there.
                self.last_activity_at = self.last_activity_at.max(at + duration_ms);
                return;
            }
            Observation::PublishCalled { .. } => {
                self.calls_pending += 1;
                self.last_publish_at = Some(at);
            }
            Observation::PublishReturned { .. } => {
                self.calls_pending = self.calls_pending.saturating_sub(1);
            }
            Observation::Connecting { client, .. } | Observation::Closed { client, .. } => {
                self.connected.remove(client);
            }
            Observation::FrameReceived {
                client,
                frame: FrameSeen::Welcome { .. },
                ..
            } => {
                self.connected.insert(*client);
            }
            Observation::HealStarted => {
                self.heal_at.get_or_insert(at);
            }
            _ => {}
        }
        self.last_activity_at = self.last_activity_at.max(at);
    }

    /// Rules 1–3 of the module doc at `now_ms`: what the history alone can say. Cheap, so the
    /// world asks every tick and reads the hub's gauges only when this holds.
    pub fn is_quiet(&self, config: &ScenarioConfig, now_ms: u64) -> bool {
        let (Some(settle_ms), Some(heal_at)) = (config.settle_ms, self.heal_at) else {
            return false;
        };
        now_ms >= heal_at + settle_ms
            && now_ms >= self.last_activity_at + settle_ms
            && self.calls_pending == 0
            && self.live.iter().all(|client| self.connected.contains(client))
    }

    /// Whether the world has settled at `now_ms` (all four rules), given the hub's gauges read
    /// at `now_ms`. The world records that sample before `Settled`, so the bounded-resources
    /// check sees what this judged.
    pub fn is_settled(&self, config: &ScenarioConfig, now_ms: u64, gauges: &GaugeSample) -> bool {
        let Some(heal_at) = self.heal_at else {
            return false;
        };
        let quiet_end_at = heal_at + config.quiet_period_ms;
        let retention_runs_out = self
            .last_publish_at
            .is_some_and(|at| at + retention_expiry_ms(config) < quiet_end_at);
        self.is_quiet(config, now_ms)
            && gauges.send_queue_depth_max == 0
            && gauges.connections <= self.connected.len() as u64
            && gauges.server_sockets <= self.connected.len() as u64
            && (gauges.retained_events == 0 || !retention_runs_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{ClosedBy, History, PublishOutcome};
    use crate::scenario::Limits;

    fn gauges(connections: u64, retained_events: u64, send_queue_depth_max: u64) -> GaugeSample {
        GaugeSample {
            users: 1,
            connections,
            retained_events,
            retained_bytes: retained_events * 100,
            send_queue_depth_max,
            connections_per_user_max: 1,
            server_sockets: connections,
            sockets_refused: 0,
        }
    }

    fn welcome(client: u32) -> Observation {
        Observation::FrameReceived {
            client,
            user: "u0".into(),
            connection: Some("c-1".into()),
            frame: FrameSeen::Welcome {
                user: "u0".into(),
                connection: "c-1".into(),
                epoch: "e".into(),
                head: 0,
                recovered: false,
            },
            hostile: false,
        }
    }

    fn call() -> Observation {
        Observation::PublishCalled {
            publish: 0,
            event_id: "e-0".into(),
            user: "u0".into(),
            run: "r".into(),
            kind: "agent_started".into(),
            via: "http".into(),
            idempotency_key: None,
            attempt: 0,
            payload_bytes: 10,
        }
    }

    fn returned() -> Observation {
        Observation::PublishReturned {
            publish: 0,
            event_id: "e-0".into(),
            outcome: PublishOutcome::Published {
                seq: 1,
                epoch: "e".into(),
                duplicate: false,
            },
        }
    }

    /// Client 0 opened and welcomed, the network healed at 1000, then `extra`; with the gauges
    /// `sample` read at `now`, has the world settled at `now`?
    fn settled(config: &ScenarioConfig, extra: &[(u64, Observation)], sample: GaugeSample, now: u64) -> bool {
        let mut history = History::default();
        history.record(
            0,
            Observation::StepApplied {
                index: 0,
                step: Step::Connect {
                    client: 0,
                    user: 0,
                    host: 0,
                    token_ttl_ms: None,
                },
            },
        );
        history.record(10, welcome(0));
        for (at, what) in extra.iter().filter(|(at, _)| *at < 1000) {
            history.record(*at, what.clone());
        }
        history.record(1000, Observation::HealStarted);
        for (at, what) in extra.iter().filter(|(at, _)| *at >= 1000) {
            history.record(*at, what.clone());
        }
        let mut settling = Settling::new();
        for entry in &history.entries {
            settling.observe(entry);
        }
        settling.is_settled(config, now, &sample)
    }

    fn config() -> ScenarioConfig {
        ScenarioConfig {
            settle_ms: Some(4_000),
            ..ScenarioConfig::default()
        }
    }

    #[test]
    fn a_quiet_connected_world_settles_after_the_window() {
        assert!(!settled(&config(), &[], gauges(1, 0, 0), 4_999), "heal less than W ago");
        assert!(settled(&config(), &[], gauges(1, 0, 0), 5_000));
        let whole_quiet_period = ScenarioConfig {
            settle_ms: None,
            ..config()
        };
        assert!(!settled(&whole_quiet_period, &[], gauges(1, 0, 0), 15_000));
    }

    #[test]
    fn activity_pending_work_or_an_absent_client_keeps_it_running() {
        let closed = Observation::Closed {
            client: 0,
            user: "u0".into(),
            code: None,
            by: ClosedBy::Client,
            reason: "idle timeout".into(),
            hostile: false,
        };
        let ok = gauges(1, 0, 0);
        assert!(
            !settled(&config(), &[(3_000, closed.clone())], ok.clone(), 20_000),
            "client gone"
        );
        let back = [(3_000, closed), (3_500, welcome(0))];
        assert!(!settled(&config(), &back, ok.clone(), 7_499), "welcome less than W ago");
        assert!(settled(&config(), &back, ok.clone(), 7_500));
        assert!(
            !settled(&config(), &[(1_500, call())], ok.clone(), 20_000),
            "publish pending"
        );
        assert!(settled(
            &config(),
            &[(1_500, call()), (1_600, returned())],
            ok.clone(),
            5_600
        ));
        let pause = Observation::Paused {
            client: 0,
            duration_ms: 30_000,
        };
        assert!(!settled(&config(), &[(900, pause)], ok, 20_000), "client paused");
    }

    #[test]
    fn the_gauges_must_show_the_load_gone() {
        assert!(
            !settled(&config(), &[], gauges(2, 0, 0), 9_000),
            "a connection nobody holds"
        );
        assert!(
            !settled(&config(), &[], gauges(1, 0, 3), 9_000),
            "a send queue still lagging"
        );
        let socket_held = GaugeSample {
            server_sockets: 2,
            ..gauges(1, 0, 0)
        };
        assert!(
            !settled(&config(), &[], socket_held, 9_000),
            "a socket nobody holds (the hub forgot it, the server did not close it)"
        );
        let published = [(500, call()), (600, returned())];
        // Retained events are fine while their age runs out after the quiet period would end…
        assert!(settled(&config(), &published, gauges(1, 5, 0), 9_000));
        // …but not when it runs out before it: the check would demand them gone.
        let short_age = ScenarioConfig {
            limits: Limits {
                retention_age_ms: 1_000,
                ..Limits::default()
            },
            ..config()
        };
        assert!(!settled(&short_age, &published, gauges(1, 5, 0), 9_000));
        assert!(settled(&short_age, &published, gauges(1, 0, 0), 9_000));
    }
}
