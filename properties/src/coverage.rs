//! Coverage: which interesting paths of the core a history reached.
//!
//! A simulation that never exercises a fault proves nothing about it. A fuzz campaign sums
//! [`paths_reached`] over its cases and flags every [`Path`] that no case reached, so a
//! generator change that silently stops provoking (say) slow consumers shows up in the report
//! instead of in production. Pure: reads a [`History`], nothing else.

use crate::history::{
    ClosedBy, DeliveredItem, FrameSeen, History, Observation, PublishOutcome, SOCKET_ENDED_BY_SERVER,
};
use crate::scenario::Step;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// An interesting path through the core. Order is the order of [`Path::ALL`] and of reports.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// A resume was served with no gap (`welcome.recovered = true` after a `resume`).
    ResumeRecovered,
    /// A resume in the current epoch came too late: `recovered = false` and a `retention` gap
    /// before any replayed event.
    ResumeRetentionGap,
    /// A resume against a lost epoch (restart) got an `epoch` gap.
    EpochGap,
    /// A normal client was cut with 4003 `slow_consumer`.
    SlowConsumerClose,
    /// A dead connection was noticed by heartbeat: the client's idle timeout fired (closed by
    /// network, reason naming the idle timeout) or the server closed it with 4010.
    HeartbeatDetectedPartition,
    /// A normal client's token expired (4002).
    TokenExpiry,
    /// A hostile client was refused with a close code by the server.
    HostileRejected,
    /// A hostile socket that never finished an HTTP request was ended by the server
    /// (`http_request_timeout_ms`).
    StalledSocketClosed,
    /// A publish failed with a typed error (`shutting_down`, `unavailable`, `connect_failed`)
    /// while the server was down or going down.
    PublishDuringRestart,
    /// One event was delivered to two or more clients (tabs) of its user.
    MultiConnectionFanOut,
    /// A publish with a seen idempotency key returned the original seq (`duplicate = true`).
    IdempotentRepublish,
    /// A `retention` gap reached a connection that was already live (evicted under its cursor).
    RetentionEvictionLiveGap,
    /// The server came back after a restart, crash or shutdown (a life after the first).
    ServerRestart,
    /// A client cut off by a partition reconnected after the repair and resumed.
    PartitionHealCatchUp,
    /// A normal client was refused with 4009 `too_many_connections`: the server held
    /// `connections_max` connections (generated tabs never exceed the per-user limit).
    TooManyConnectionsRefused,
    /// The server closed sockets at once because it held `sockets_max` (counted per refused
    /// socket, by the server's own count in the gauge samples: a refused client only sees
    /// its connection end, and the history does not carry the limit).
    SocketsMaxRefused,
}

impl Path {
    pub const ALL: [Path; 16] = [
        Path::ResumeRecovered,
        Path::ResumeRetentionGap,
        Path::EpochGap,
        Path::SlowConsumerClose,
        Path::HeartbeatDetectedPartition,
        Path::TokenExpiry,
        Path::HostileRejected,
        Path::StalledSocketClosed,
        Path::PublishDuringRestart,
        Path::MultiConnectionFanOut,
        Path::IdempotentRepublish,
        Path::RetentionEvictionLiveGap,
        Path::ServerRestart,
        Path::PartitionHealCatchUp,
        Path::TooManyConnectionsRefused,
        Path::SocketsMaxRefused,
    ];

    /// The serde name, used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::ResumeRecovered => "resume_recovered",
            Path::ResumeRetentionGap => "resume_retention_gap",
            Path::EpochGap => "epoch_gap",
            Path::SlowConsumerClose => "slow_consumer_close",
            Path::HeartbeatDetectedPartition => "heartbeat_detected_partition",
            Path::TokenExpiry => "token_expiry",
            Path::HostileRejected => "hostile_rejected",
            Path::StalledSocketClosed => "stalled_socket_closed",
            Path::PublishDuringRestart => "publish_during_restart",
            Path::MultiConnectionFanOut => "multi_connection_fan_out",
            Path::IdempotentRepublish => "idempotent_republish",
            Path::RetentionEvictionLiveGap => "retention_eviction_live_gap",
            Path::ServerRestart => "server_restart",
            Path::PartitionHealCatchUp => "partition_heal_catch_up",
            Path::TooManyConnectionsRefused => "too_many_connections_refused",
            Path::SocketsMaxRefused => "sockets_max_refused",
        }
    }
}

/// Publish error codes that mean "the server is not there right now".
const DOWNTIME_CODES: [&str; 3] = ["shutting_down", "unavailable", "connect_failed"];

/// State of one normal client's current connection, as far as coverage cares.
#[derive(Default)]
struct Conn {
    /// The resume epoch sent by the latest attempt.
    resume_epoch: Option<String>,
    /// Set at the welcome: the resume named the current epoch and was not recovered.
    resumed_unrecovered: bool,
    /// Events received since the welcome.
    events_since_welcome: u64,
    /// Whether this client lost a connection to the network while its host was partitioned.
    cut_by_partition: bool,
}

/// How often each path was reached in `history`. Every path is present (0 when unreached).
pub fn paths_reached(history: &History) -> BTreeMap<Path, u64> {
    let mut counts: BTreeMap<Path, u64> = Path::ALL.into_iter().map(|p| (p, 0)).collect();
    let mut hit = |path: Path| *counts.get_mut(&path).expect("every path is listed") += 1;

    let mut conns: BTreeMap<u32, Conn> = BTreeMap::new();
    let mut host_of_client: BTreeMap<u32, u32> = BTreeMap::new();
    let mut partitioned_hosts: BTreeSet<u32> = BTreeSet::new();
    let mut server_up = false;
    // The server's count of refused sockets at the last gauge sample of this life (it starts
    // from zero in every life), and the refusals counted over all lives.
    let mut sockets_refused_seen = 0;
    let mut sockets_refused = 0;
    let mut down_at_call: BTreeMap<u64, bool> = BTreeMap::new();
    // event id → (user, clients it was delivered to)
    let mut fan_out: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();

    for entry in &history.entries {
        match &entry.what {
            Observation::StepApplied { step, .. } => match step {
                Step::Connect { client, host, .. } => {
                    host_of_client.insert(*client, *host);
                }
                Step::Partition { host } | Step::PartitionOneWay { host, .. } => {
                    partitioned_hosts.insert(*host);
                }
                Step::Repair { host } => {
                    partitioned_hosts.remove(host);
                }
                _ => {}
            },
            Observation::HealStarted => partitioned_hosts.clear(),
            Observation::Gauges(sample) if sample.sockets_refused > sockets_refused_seen => {
                sockets_refused += sample.sockets_refused - sockets_refused_seen;
                sockets_refused_seen = sample.sockets_refused;
            }
            Observation::ServerStarted { life } => {
                server_up = true;
                sockets_refused_seen = 0;
                if *life > 0 {
                    hit(Path::ServerRestart);
                }
            }
            Observation::ServerStopped { .. } => server_up = false,
            Observation::PublishCalled { publish, .. } => {
                down_at_call.insert(*publish, !server_up);
            }
            Observation::PublishReturned { publish, outcome, .. } => match outcome {
                PublishOutcome::Published { duplicate: true, .. } => hit(Path::IdempotentRepublish),
                PublishOutcome::Failed { code, .. } if DOWNTIME_CODES.contains(&code.as_str()) => {
                    let down = !server_up || down_at_call.get(publish).copied().unwrap_or(false);
                    if down {
                        hit(Path::PublishDuringRestart);
                    }
                }
                _ => {}
            },
            Observation::Connecting {
                client,
                resume,
                hostile: false,
                ..
            } => {
                let conn = conns.entry(*client).or_default();
                conn.resume_epoch = resume.as_ref().map(|r| r.epoch.clone());
                conn.resumed_unrecovered = false;
                conn.events_since_welcome = 0;
            }
            Observation::FrameReceived {
                client,
                frame,
                hostile: false,
                ..
            } => {
                let conn = conns.entry(*client).or_default();
                match frame {
                    FrameSeen::Welcome { epoch, recovered, .. } => {
                        let resumed = conn.resume_epoch.is_some();
                        if resumed && *recovered {
                            hit(Path::ResumeRecovered);
                        }
                        conn.resumed_unrecovered = !*recovered && conn.resume_epoch.as_deref() == Some(epoch.as_str());
                        if resumed && conn.cut_by_partition {
                            hit(Path::PartitionHealCatchUp);
                            conn.cut_by_partition = false;
                        }
                    }
                    FrameSeen::Event { .. } => conn.events_since_welcome += 1,
                    FrameSeen::Gap { reason, .. } if reason == "epoch" => hit(Path::EpochGap),
                    FrameSeen::Gap { reason, .. } if reason == "retention" => {
                        if conn.resumed_unrecovered && conn.events_since_welcome == 0 {
                            hit(Path::ResumeRetentionGap);
                        } else {
                            hit(Path::RetentionEvictionLiveGap);
                        }
                        conn.resumed_unrecovered = false;
                    }
                    _ => {}
                }
            }
            Observation::Delivered {
                client,
                item:
                    DeliveredItem::Event {
                        event_id: Some(event_id),
                        ..
                    },
                ..
            } => {
                fan_out.entry(event_id.as_str()).or_default().insert(*client);
            }
            Observation::Closed {
                client,
                code,
                by,
                reason,
                hostile,
                ..
            } => {
                if *hostile {
                    if *by == ClosedBy::Server && code.is_some_and(|c| c != 1000 && c != 1001) {
                        hit(Path::HostileRejected);
                    }
                    if *by == ClosedBy::Network && reason == SOCKET_ENDED_BY_SERVER {
                        hit(Path::StalledSocketClosed);
                    }
                    continue;
                }
                match code {
                    Some(4003) => hit(Path::SlowConsumerClose),
                    Some(4002) => hit(Path::TokenExpiry),
                    Some(4010) => hit(Path::HeartbeatDetectedPartition),
                    Some(4009) => hit(Path::TooManyConnectionsRefused),
                    _ => {}
                }
                if *by == ClosedBy::Network && (reason.contains("idle_timeout") || reason.contains("heartbeat")) {
                    hit(Path::HeartbeatDetectedPartition);
                }
                if *by == ClosedBy::Network
                    && host_of_client
                        .get(client)
                        .is_some_and(|host| partitioned_hosts.contains(host))
                {
                    conns.entry(*client).or_default().cut_by_partition = true;
                }
            }
            _ => {}
        }
    }
    // Fan-out counts events, not deliveries: "event e-17 reached two tabs" once.
    let fanned = fan_out.values().filter(|clients| clients.len() >= 2).count() as u64;
    *counts.get_mut(&Path::MultiConnectionFanOut).expect("listed") += fanned;
    *counts.get_mut(&Path::SocketsMaxRefused).expect("listed") += sockets_refused;
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{GaugeSample, ResumeSent};

    fn history(entries: Vec<Observation>) -> History {
        let mut h = History::default();
        for (i, what) in entries.into_iter().enumerate() {
            h.record(i as u64 * 10, what);
        }
        h
    }

    fn connecting(client: u32, resume: Option<(&str, u64)>) -> Observation {
        Observation::Connecting {
            client,
            user: "u0".into(),
            attempt: 1,
            resume: resume.map(|(epoch, after)| ResumeSent {
                epoch: epoch.into(),
                after,
            }),
            hostile: false,
            token_exp_ms: None,
        }
    }

    fn frame(client: u32, frame: FrameSeen) -> Observation {
        Observation::FrameReceived {
            client,
            user: "u0".into(),
            connection: Some("c1".into()),
            frame,
            hostile: false,
        }
    }

    fn welcome(epoch: &str, recovered: bool) -> FrameSeen {
        FrameSeen::Welcome {
            user: "u0".into(),
            connection: "c1".into(),
            epoch: epoch.into(),
            head: 5,
            recovered,
        }
    }

    fn gap(epoch: &str, reason: &str) -> FrameSeen {
        FrameSeen::Gap {
            epoch: epoch.into(),
            from: 1,
            to: Some(2),
            reason: reason.into(),
        }
    }

    fn event(seq: u64) -> FrameSeen {
        FrameSeen::Event {
            seq,
            run: "run-0".into(),
            kind: "agent_started".into(),
            event_id: Some(format!("e-{seq}")),
            payload_user: Some("u0".into()),
        }
    }

    fn closed(client: u32, code: Option<u16>, by: ClosedBy, reason: &str, hostile: bool) -> Observation {
        Observation::Closed {
            client,
            user: "u0".into(),
            code,
            by,
            reason: reason.into(),
            hostile,
        }
    }

    fn reached(history: &History) -> Vec<Path> {
        paths_reached(history)
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(p, _)| p)
            .collect()
    }

    #[test]
    fn every_path_is_listed_even_when_unreached() {
        let counts = paths_reached(&History::default());
        assert_eq!(counts.len(), Path::ALL.len());
        assert!(counts.values().all(|n| *n == 0));
    }

    #[test]
    fn a_first_connect_reaches_nothing_and_a_recovered_resume_is_counted() {
        let first = history(vec![connecting(0, None), frame(0, welcome("E1", false))]);
        assert_eq!(reached(&first), vec![]);
        let resumed = history(vec![connecting(0, Some(("E1", 3))), frame(0, welcome("E1", true))]);
        assert_eq!(reached(&resumed), vec![Path::ResumeRecovered]);
    }

    #[test]
    fn retention_gap_at_resume_and_on_a_live_connection_are_told_apart() {
        let at_resume = history(vec![
            connecting(0, Some(("E1", 1))),
            frame(0, welcome("E1", false)),
            frame(0, gap("E1", "retention")),
            frame(0, event(3)),
        ]);
        assert_eq!(reached(&at_resume), vec![Path::ResumeRetentionGap]);
        let live = history(vec![
            connecting(0, None),
            frame(0, welcome("E1", false)),
            frame(0, event(1)),
            frame(0, gap("E1", "retention")),
        ]);
        assert_eq!(reached(&live), vec![Path::RetentionEvictionLiveGap]);
        // A resume against another epoch is not a retention resume even if a retention gap follows.
        let epoch = history(vec![
            connecting(0, Some(("E0", 4))),
            frame(0, welcome("E1", false)),
            frame(0, gap("E0", "epoch")),
        ]);
        assert_eq!(reached(&epoch), vec![Path::EpochGap]);
    }

    #[test]
    fn close_codes_map_to_paths_and_hostile_closes_only_to_hostile_rejected() {
        let h = history(vec![
            closed(0, Some(4003), ClosedBy::Server, "slow_consumer", false),
            closed(1, Some(4002), ClosedBy::Server, "token_expired", false),
            closed(
                2,
                None,
                ClosedBy::Network,
                "nothing received for idle_timeout_ms 3000",
                false,
            ),
            closed(3, Some(4009), ClosedBy::Server, "too_many_connections", false),
            closed(100_000, Some(4002), ClosedBy::Server, "token_expired", true),
            closed(100_004, Some(4009), ClosedBy::Server, "too_many_connections", true),
            closed(100_001, None, ClosedBy::Client, "hostile client finished", true),
            closed(100_002, None, ClosedBy::Network, SOCKET_ENDED_BY_SERVER, true),
            closed(100_003, None, ClosedBy::Network, "stream ended", true),
        ]);
        let counts = paths_reached(&h);
        assert_eq!(counts[&Path::SlowConsumerClose], 1);
        assert_eq!(
            counts[&Path::TokenExpiry],
            1,
            "the hostile 4002 is not a token expiry of a user"
        );
        assert_eq!(counts[&Path::HeartbeatDetectedPartition], 1);
        assert_eq!(
            counts[&Path::TooManyConnectionsRefused],
            1,
            "a refused flood connection is not a normal client refused"
        );
        assert_eq!(
            counts[&Path::HostileRejected],
            2,
            "a hostile client that left on its own was not rejected"
        );
        assert_eq!(
            counts[&Path::StalledSocketClosed],
            1,
            "only the socket the server ended for its request deadline"
        );
        // A plain network error is not heartbeat detection.
        let plain = history(vec![closed(0, None, ClosedBy::Network, "connection reset", false)]);
        assert_eq!(reached(&plain), vec![]);
    }

    fn called(publish: u64) -> Observation {
        Observation::PublishCalled {
            publish,
            event_id: format!("e-{publish}"),
            user: "u0".into(),
            run: "run-0".into(),
            kind: "agent_started".into(),
            via: "http+key".into(),
            idempotency_key: Some(format!("e-{publish}")),
            attempt: 0,
            payload_bytes: 0,
        }
    }

    fn returned(publish: u64, outcome: PublishOutcome) -> Observation {
        Observation::PublishReturned {
            publish,
            event_id: format!("e-{publish}"),
            outcome,
        }
    }

    fn failed(code: &str) -> PublishOutcome {
        PublishOutcome::Failed {
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn publish_failures_count_only_while_the_server_is_down() {
        let h = history(vec![
            Observation::ServerStarted { life: 0 },
            called(1),
            returned(1, failed("connect_failed")),
            Observation::ServerStopped {
                life: 0,
                how: "crash".into(),
            },
            called(2),
            returned(2, failed("unavailable")),
            called(3),
            returned(3, failed("too_large")),
            Observation::ServerStarted { life: 1 },
            called(4),
            returned(
                4,
                PublishOutcome::Published {
                    seq: 1,
                    epoch: "E".into(),
                    duplicate: true,
                },
            ),
        ]);
        let counts = paths_reached(&h);
        assert_eq!(counts[&Path::PublishDuringRestart], 1);
        assert_eq!(counts[&Path::ServerRestart], 1);
        assert_eq!(counts[&Path::IdempotentRepublish], 1);
    }

    fn delivered(client: u32, event_id: &str) -> Observation {
        Observation::Delivered {
            client,
            user: "u0".into(),
            item: DeliveredItem::Event {
                epoch: "E".into(),
                seq: 1,
                run: "run-0".into(),
                kind: "agent_started".into(),
                event_id: Some(event_id.into()),
            },
        }
    }

    #[test]
    fn fan_out_needs_two_clients_for_one_event() {
        let one = history(vec![delivered(0, "e-1"), delivered(0, "e-2")]);
        assert_eq!(reached(&one), vec![]);
        let two = history(vec![delivered(0, "e-1"), delivered(1, "e-1"), delivered(2, "e-1")]);
        assert_eq!(paths_reached(&two)[&Path::MultiConnectionFanOut], 1);
    }

    fn refused_so_far(sockets_refused: u64) -> Observation {
        Observation::Gauges(GaugeSample {
            sockets_refused,
            ..GaugeSample::default()
        })
    }

    #[test]
    fn sockets_refused_are_counted_from_the_servers_count_per_life() {
        let h = history(vec![
            Observation::ServerStarted { life: 0 },
            refused_so_far(0),
            refused_so_far(2),
            refused_so_far(2),
            refused_so_far(3),
            // A new life counts from zero again.
            Observation::ServerStarted { life: 1 },
            refused_so_far(1),
        ]);
        assert_eq!(paths_reached(&h)[&Path::SocketsMaxRefused], 4);
        let none = history(vec![Observation::ServerStarted { life: 0 }, refused_so_far(0)]);
        assert_eq!(paths_reached(&none)[&Path::SocketsMaxRefused], 0);
    }

    fn applied(step: Step) -> Observation {
        Observation::StepApplied { index: 0, step }
    }

    #[test]
    fn partition_catch_up_needs_a_cut_during_the_partition_and_a_resume_after() {
        let connect = applied(Step::Connect {
            client: 0,
            user: 0,
            host: 1,
            token_ttl_ms: None,
        });
        let h = history(vec![
            connect.clone(),
            applied(Step::Partition { host: 1 }),
            closed(
                0,
                None,
                ClosedBy::Network,
                "nothing received for idle_timeout_ms 3000",
                false,
            ),
            applied(Step::Repair { host: 1 }),
            connecting(0, Some(("E1", 2))),
            frame(0, welcome("E1", true)),
        ]);
        let counts = paths_reached(&h);
        assert_eq!(counts[&Path::PartitionHealCatchUp], 1);
        assert_eq!(counts[&Path::ResumeRecovered], 1);
        // A cut on another host's partition does not count.
        let other = history(vec![
            connect,
            applied(Step::Partition { host: 0 }),
            closed(0, None, ClosedBy::Network, "connection reset", false),
            connecting(0, Some(("E1", 2))),
            frame(0, welcome("E1", true)),
        ]);
        assert_eq!(paths_reached(&other)[&Path::PartitionHealCatchUp], 0);
    }
}
