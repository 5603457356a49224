//! Unit and property tests of the hub alone: no sockets, no clocks, no tasks.

use super::*;
use crate::protocol::ServerFrame;
use proptest::prelude::*;
use serde_json::value::RawValue;

fn config() -> HubConfig {
    HubConfig {
        retention_events_max: 5,
        retention_age_ms: 10_000,
        retention_bytes_max: 1_000_000,
        connections_per_user_max: 3,
        connections_max: 100,
        users_max: 100,
        send_queue_max: 4,
        control_queue_max: 8,
        event_bytes_max: 10_000,
        dormant_streams_max: 100,
    }
}

fn hub(config: HubConfig) -> Hub {
    Hub::new(config, SeededRng::new(7)).unwrap()
}

fn data(text: &str) -> Box<RawValue> {
    RawValue::from_string(format!("{{\"id\":\"{text}\"}}")).unwrap()
}

fn publish(hub: &mut Hub, now: u64, user: &str, id: &str) -> Published {
    let data = data(id);
    hub.publish(
        now,
        user,
        PublishRequest {
            run: "r",
            kind: EventKind::AgentThinking,
            data: &data,
            idempotency_key: None,
        },
    )
    .unwrap()
}

/// Drains a connection and decodes what it would write.
fn drain(hub: &mut Hub, id: ConnectionId) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    while let Some(transmit) = hub.poll_transmit(id) {
        match transmit {
            Transmit::Control(text) => frames.push(serde_json::from_str(&text).unwrap()),
            Transmit::Event { seq, frame, .. } => {
                let decoded: ServerFrame = serde_json::from_str(&frame).unwrap();
                assert!(matches!(decoded, ServerFrame::Event { seq: s, .. } if s == seq));
                frames.push(decoded);
            }
            Transmit::Close(code) => frames.push(ServerFrame::Error {
                code,
                message: "<close>".into(),
            }),
        }
    }
    frames
}

fn event_seqs(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| {
            if let ServerFrame::Event { seq, .. } = f {
                Some(*seq)
            } else {
                None
            }
        })
        .collect()
}

fn welcome(frames: &[ServerFrame]) -> (String, u64, bool) {
    match &frames[0] {
        ServerFrame::Welcome {
            epoch, head, recovered, ..
        } => (epoch.clone(), *head, *recovered),
        other => panic!("first frame must be a welcome, got {other:?}"),
    }
}

#[test]
fn fresh_connection_starts_live_at_head() {
    let mut hub = hub(config());
    publish(&mut hub, 0, "alice", "a1");
    let c = hub.connect(1, "alice", None).unwrap();
    let frames = drain(&mut hub, c);
    assert_eq!(welcome(&frames), (hub.stream_position("alice").unwrap().0, 1, false));
    assert!(event_seqs(&frames).is_empty(), "no replay without resume");
    publish(&mut hub, 2, "alice", "a2");
    assert_eq!(event_seqs(&drain(&mut hub, c)), vec![2]);
}

#[test]
fn resume_replays_exactly_after_and_then_goes_live() {
    let mut hub = hub(config());
    let epoch = publish(&mut hub, 0, "alice", "a1").epoch;
    for i in 2..=4 {
        publish(&mut hub, i, "alice", &format!("a{i}"));
    }
    let c = hub
        .connect(
            5,
            "alice",
            Some(&Resume {
                epoch: epoch.clone(),
                after: 2,
            }),
        )
        .unwrap();
    publish(&mut hub, 6, "alice", "a5");
    let frames = drain(&mut hub, c);
    assert_eq!(welcome(&frames), (epoch, 4, true));
    assert_eq!(
        event_seqs(&frames),
        vec![3, 4, 5],
        "replay then live, no gap, no duplicate"
    );
}

#[test]
fn resume_behind_retention_gets_an_honest_gap() {
    let mut hub = hub(config());
    let epoch = publish(&mut hub, 0, "alice", "a1").epoch;
    for i in 2..=8 {
        publish(&mut hub, i, "alice", &format!("a{i}"));
    }
    // retention_events_max 5: seqs 4..=8 retained.
    let c = hub
        .connect(
            9,
            "alice",
            Some(&Resume {
                epoch: epoch.clone(),
                after: 1,
            }),
        )
        .unwrap();
    let frames = drain(&mut hub, c);
    assert_eq!(welcome(&frames), (epoch.clone(), 8, false));
    assert_eq!(
        frames[1],
        ServerFrame::Gap {
            epoch,
            from: 2,
            to: Some(3),
            reason: GapReason::Retention
        }
    );
    assert_eq!(event_seqs(&frames), vec![4, 5, 6, 7, 8]);
}

#[test]
fn resume_with_unknown_epoch_gets_an_epoch_gap_then_the_new_stream() {
    let mut hub = hub(config());
    publish(&mut hub, 0, "alice", "a1");
    let c = hub
        .connect(
            1,
            "alice",
            Some(&Resume {
                epoch: "old".into(),
                after: 9,
            }),
        )
        .unwrap();
    let frames = drain(&mut hub, c);
    assert!(!welcome(&frames).2);
    assert_eq!(
        frames[1],
        ServerFrame::Gap {
            epoch: "old".into(),
            from: 10,
            to: None,
            reason: GapReason::Epoch
        }
    );
    assert_eq!(event_seqs(&frames), vec![1]);
}

#[test]
fn resume_beyond_head_is_rejected_as_a_bad_frame() {
    let mut hub = hub(config());
    let epoch = publish(&mut hub, 0, "alice", "a1").epoch;
    let rejected = hub.connect(1, "alice", Some(&Resume { epoch, after: 5 })).unwrap_err();
    assert_eq!(rejected.code, ErrorCode::BadFrame);
}

#[test]
fn resume_beyond_the_head_of_a_stream_the_connect_creates_is_rejected() {
    // Epochs come from the hub's seeded generator: the next one can be predicted. A resume
    // naming it for a user with no stream must meet the new stream's head of 0, not skip it.
    let predicted = format!("{:016x}", SeededRng::new(7).next_u64());
    let mut hub = hub(config());
    let rejected = hub
        .connect(
            0,
            "alice",
            Some(&Resume {
                epoch: predicted,
                after: 5,
            }),
        )
        .unwrap_err();
    assert_eq!(rejected.code, ErrorCode::BadFrame);
    assert!(rejected.message.contains("beyond head 0"), "{}", rejected.message);
    assert_eq!(
        hub.gauges().users,
        0,
        "the stream made for the rejected connect is dropped"
    );
    // The same resume against an existing stream's head is served.
    let epoch = publish(&mut hub, 1, "alice", "a1").epoch;
    let c = hub.connect(2, "alice", Some(&Resume { epoch, after: 1 })).unwrap();
    let (_, head, recovered) = welcome(&drain(&mut hub, c));
    assert_eq!((head, recovered), (1, true));
}

#[test]
fn evicting_many_events_keeps_the_wake_list_bounded() {
    let mut hub = hub(HubConfig {
        retention_events_max: 100_000,
        ..config()
    });
    let tabs: Vec<ConnectionId> = (0..3).map(|_| hub.connect(0, "alice", None).unwrap()).collect();
    let mut woken = Vec::new();
    hub.take_wakes(&mut woken);
    for i in 0..5_000 {
        publish(&mut hub, 0, "bob", &i.to_string());
    }
    hub.take_wakes(&mut woken);
    for i in 0..5_000 {
        publish(&mut hub, 1, "alice", &i.to_string());
        // Taken as the server does after each publish, so only evictions accumulate below.
        woken.clear();
        hub.take_wakes(&mut woken);
    }
    // One tick past the age limit evicts all 10,000 events; each eviction of alice's wakes her
    // three tabs.
    hub.tick(config().retention_age_ms + 1);
    assert_eq!(hub.gauges().retained_events, 0);
    assert!(
        hub.wakes.len() <= 2 * hub.connections.len() + 64 + 3,
        "{} wakes",
        hub.wakes.len()
    );
    woken.clear();
    hub.take_wakes(&mut woken);
    assert_eq!(woken.len(), tabs.len());
    for tab in tabs {
        assert!(woken.contains(&tab));
    }
}

#[test]
fn resume_after_the_largest_seq_is_rejected_as_a_bad_frame_and_the_hub_serves_on() {
    let mut hub = hub(config());
    let epoch = publish(&mut hub, 0, "alice", "a1").epoch;
    // In the current epoch, in another, and for a user with no stream yet: the epoch gap
    // would start at `after + 1`, which overflowed (a panic under the hub lock in debug
    // builds, `gap{from:0}` in release) before the hub refused it.
    for (user, epoch) in [
        ("alice", epoch.clone()),
        ("alice", "old".into()),
        ("carol", "old".into()),
    ] {
        let rejected = hub
            .connect(1, user, Some(&Resume { epoch, after: u64::MAX }))
            .unwrap_err();
        assert_eq!(rejected.code, ErrorCode::BadFrame);
    }
    let c = hub.connect(2, "alice", Some(&Resume { epoch, after: 0 })).unwrap();
    assert_eq!(event_seqs(&drain(&mut hub, c)), vec![1]);
}

#[test]
fn the_largest_retention_age_means_never_by_age() {
    let mut hub = hub(HubConfig {
        retention_age_ms: u64::MAX,
        ..config()
    });
    let epoch = publish(&mut hub, 5, "alice", "a1").epoch;
    hub.tick(u64::MAX / 2);
    let c = hub
        .connect(u64::MAX / 2, "alice", Some(&Resume { epoch, after: 0 }))
        .unwrap();
    assert_eq!(event_seqs(&drain(&mut hub, c)), vec![1]);
}

#[test]
fn fan_out_to_every_tab_and_limit_on_tabs() {
    let mut hub = hub(config());
    let tabs: Vec<_> = (0..3).map(|i| hub.connect(i, "alice", None).unwrap()).collect();
    assert_eq!(
        hub.connect(3, "alice", None).unwrap_err().code,
        ErrorCode::TooManyConnections
    );
    publish(&mut hub, 4, "alice", "a1");
    publish(&mut hub, 5, "bob", "b1");
    for tab in tabs {
        assert_eq!(event_seqs(&drain(&mut hub, tab)), vec![1]);
    }
}

#[test]
fn slow_consumer_is_cut_with_4003_and_recovers_by_resume() {
    let mut hub = hub(config());
    let c = hub.connect(0, "alice", None).unwrap();
    let (epoch, _, _) = welcome(&drain(&mut hub, c));
    for i in 1..=5 {
        publish(&mut hub, i, "alice", &format!("a{i}"));
    }
    let frames = drain(&mut hub, c);
    assert!(
        event_seqs(&frames).is_empty(),
        "a closing connection sends no more events"
    );
    assert!(matches!(
        frames[0],
        ServerFrame::Error {
            code: ErrorCode::SlowConsumer,
            ..
        }
    ));
    assert_eq!(hub.counters().slow_consumer_closes, 1);
    hub.disconnect(c);
    let c = hub.connect(6, "alice", Some(&Resume { epoch, after: 0 })).unwrap();
    assert_eq!(event_seqs(&drain(&mut hub, c)), vec![1, 2, 3, 4, 5]);
}

#[test]
fn replay_backlog_is_not_lag() {
    let mut hub = hub(HubConfig {
        retention_events_max: 50,
        ..config()
    });
    let epoch = publish(&mut hub, 0, "alice", "a1").epoch;
    for i in 2..=20 {
        publish(&mut hub, i, "alice", &format!("a{i}"));
    }
    let c = hub.connect(21, "alice", Some(&Resume { epoch, after: 0 })).unwrap();
    publish(&mut hub, 22, "alice", "a21");
    let frames = drain(&mut hub, c);
    assert_eq!(
        event_seqs(&frames),
        (1..=21).collect::<Vec<_>>(),
        "20 replayed + 1 live, no slow-consumer cut"
    );
}

#[test]
fn age_and_bytes_evict_and_idle_streams_are_dropped() {
    let mut hub = hub(HubConfig {
        retention_bytes_max: 700,
        event_bytes_max: 200,
        ..config()
    });
    for i in 0..4 {
        publish(&mut hub, i, &format!("user{i}"), "x");
    }
    let gauges = hub.gauges();
    assert!(gauges.retained_bytes <= 700, "{gauges:?}");
    assert!(hub.counters().evicted >= 1);
    hub.tick(100_000);
    let gauges = hub.gauges();
    assert_eq!((gauges.retained_events, gauges.retained_bytes, gauges.users), (0, 0, 0));
    assert_eq!(
        gauges.dormant_streams, 4,
        "each quiet stream is remembered by epoch and head"
    );
}

/// Connects `user` with `resume`, drains it and disconnects: the frames it was sent.
fn visit(hub: &mut Hub, now: u64, user: &str, resume: Option<(&str, u64)>) -> Vec<ServerFrame> {
    let resume = resume.map(|(epoch, after)| Resume {
        epoch: epoch.into(),
        after,
    });
    let c = hub.connect(now, user, resume.as_ref()).unwrap();
    let frames = drain(hub, c);
    hub.disconnect(c);
    frames
}

#[test]
fn a_quiet_user_resumes_without_a_gap() {
    let mut hub = hub(config());
    let (epoch, head, _) = welcome(&visit(&mut hub, 0, "alice", None));
    assert_eq!((hub.gauges().users, hub.gauges().dormant_streams), (0, 1));
    let frames = visit(&mut hub, 50_000, "alice", Some((&epoch, head)));
    assert_eq!(welcome(&frames), (epoch, 0, true));
    assert_eq!(frames.len(), 1, "nothing was lost, so no gap: {frames:?}");
}

#[test]
fn a_stream_whose_events_aged_out_carries_on_its_epoch() {
    let mut hub = hub(config());
    let first = publish(&mut hub, 0, "alice", "a1");
    hub.tick(20_000);
    assert_eq!((hub.gauges().users, hub.gauges().dormant_streams), (0, 1));
    // A client that had read seq 1 lost nothing.
    let frames = visit(&mut hub, 20_001, "alice", Some((&first.epoch, 1)));
    assert_eq!(welcome(&frames), (first.epoch.clone(), 1, true));
    assert_eq!(frames.len(), 1, "{frames:?}");
    // The next event continues the epoch, and a client that missed seq 1 is told of exactly it.
    let second = publish(&mut hub, 20_002, "alice", "a2");
    assert_eq!((second.epoch.as_str(), second.seq), (first.epoch.as_str(), 2));
    let frames = visit(&mut hub, 20_003, "alice", Some((&first.epoch, 0)));
    assert_eq!(
        frames[1],
        ServerFrame::Gap {
            epoch: first.epoch.clone(),
            from: 1,
            to: Some(1),
            reason: GapReason::Retention
        }
    );
    assert_eq!(event_seqs(&frames), vec![2]);
    // A resume beyond the remembered head still claims events that never existed.
    assert_eq!(
        hub.connect(
            20_004,
            "alice",
            Some(&Resume {
                epoch: first.epoch.clone(),
                after: 9
            })
        )
        .unwrap_err()
        .code,
        ErrorCode::BadFrame
    );
}

fn assert_epoch_gap(frame: &ServerFrame, frames: &[ServerFrame]) {
    assert!(
        matches!(
            frame,
            ServerFrame::Gap {
                reason: GapReason::Epoch,
                ..
            }
        ),
        "{frames:?}"
    );
}

#[test]
fn at_dormant_streams_max_the_longest_quiet_stream_is_forgotten_with_an_epoch_gap() {
    let mut hub = hub(HubConfig {
        dormant_streams_max: 2,
        users_max: 2,
        ..config()
    });
    let mut epochs = Vec::new();
    for user in ["u0", "u1", "u2"] {
        epochs.push(welcome(&visit(&mut hub, 0, user, None)).0);
    }
    assert_eq!((hub.gauges().dormant_streams, hub.counters().dormant_evicted), (2, 1));
    // Dormant streams do not count against users_max.
    assert_eq!(hub.gauges().users, 0);
    let frames = visit(&mut hub, 1, "u0", Some((&epochs[0], 0)));
    assert!(!welcome(&frames).2);
    assert_epoch_gap(&frames[1], &frames);
    // u0's new stream went quiet in its turn and pushed u1 out; u2 is still remembered.
    let frames = visit(&mut hub, 2, "u2", Some((&epochs[2], 0)));
    assert_eq!(welcome(&frames), (epochs[2].clone(), 0, true));
    assert_eq!(hub.counters().dormant_evicted, 2);
}

#[test]
fn dormant_streams_max_zero_forgets_every_quiet_stream() {
    let mut hub = hub(HubConfig {
        dormant_streams_max: 0,
        ..config()
    });
    let (epoch, _, _) = welcome(&visit(&mut hub, 0, "alice", None));
    assert_eq!(hub.gauges().dormant_streams, 0);
    let frames = visit(&mut hub, 1, "alice", Some((&epoch, 0)));
    assert_epoch_gap(&frames[1], &frames);
    assert_eq!(hub.counters().dormant_evicted, 2);
}

#[test]
fn retention_bytes_count_each_events_key_and_bookkeeping() {
    let mut hub = hub(config());
    let data = data("a1");
    let key = "k".repeat(100);
    let request = PublishRequest {
        run: "r",
        kind: EventKind::AgentThinking,
        data: &data,
        idempotency_key: Some(&key),
    };
    hub.publish(0, "alice", request).unwrap();
    let frame_bytes = hub.users["alice"].get(1).unwrap().frame.len() as u64;
    assert_eq!(
        hub.gauges().retained_bytes,
        frame_bytes + RETAINED_EVENT_OVERHEAD_BYTES + 200
    );
    publish(&mut hub, 1, "alice", "a2");
    let second = hub.users["alice"].get(2).unwrap().frame.len() as u64;
    assert_eq!(
        hub.gauges().retained_bytes,
        frame_bytes + second + 2 * RETAINED_EVENT_OVERHEAD_BYTES + 200
    );
    // Small events with long keys fill the limit by what they hold, not by their frames alone.
    let mut hub = hub_with_bytes(4_000);
    for i in 0..40 {
        let key = format!("{i:0>128}");
        let request = PublishRequest {
            idempotency_key: Some(&key),
            ..request
        };
        hub.publish(i, &format!("user{i}"), request).unwrap();
    }
    assert!(
        hub.counters().evicted >= 30,
        "frames alone would all fit: {:?}",
        hub.counters()
    );
    assert!(hub.gauges().retained_bytes <= 4_000);
}

fn hub_with_bytes(retention_bytes_max: u64) -> Hub {
    hub(HubConfig {
        retention_bytes_max,
        event_bytes_max: 100,
        ..config()
    })
}

#[test]
fn retention_bytes_max_must_hold_one_largest_event_with_the_longest_key() {
    let config = |retention_bytes_max| HubConfig {
        retention_bytes_max,
        event_bytes_max: 1_000,
        ..config()
    };
    assert!(config(1_000 + RETAINED_EVENT_OVERHEAD_BYTES + 256).validate().is_ok());
    let refused = config(1_000 + RETAINED_EVENT_OVERHEAD_BYTES + 255)
        .validate()
        .unwrap_err();
    assert!(
        refused.contains("retention_bytes_max must hold at least one largest event"),
        "{refused}"
    );
}

#[test]
fn limits_whose_sum_overflows_64_bits_are_refused() {
    // "No limit" spelled as u64::MAX used to wrap the largest event's cost to a few hundred
    // bytes and pass; the first large publish then evicted everything and panicked the hub.
    for (event_bytes_max, retention_bytes_max) in [
        (u64::MAX, 256 << 20),
        (u64::MAX - 415, 256 << 20),
        (u64::MAX, u64::MAX),
        (1_000, u64::MAX),
    ] {
        let refused = HubConfig {
            event_bytes_max,
            retention_bytes_max,
            ..config()
        }
        .validate()
        .unwrap_err();
        assert!(refused.contains("must fit in 64 bits"), "{refused}");
    }
    assert!(HubConfig {
        event_bytes_max: 1_000,
        retention_bytes_max: u64::MAX / 2,
        ..config()
    }
    .validate()
    .is_ok());
}

#[test]
fn a_retry_whose_numbers_differ_beyond_f64_is_a_conflict_not_a_duplicate() {
    let mut hub = hub(config());
    let raw = |text: &str| RawValue::from_string(text.to_string()).unwrap();
    let original = raw(r#"{"n":12345678901234567890123,"x":0.10000000000000001,"s":"é"}"#);
    let request = PublishRequest {
        run: "r",
        kind: EventKind::AgentStarted,
        data: &original,
        idempotency_key: Some("k1"),
    };
    assert_eq!(hub.publish(0, "alice", request).unwrap().seq, 1);
    // Each decodes to the same `serde_json::Value` as the original, yet says something else.
    for other in [
        r#"{"n":12345678901234567890124,"x":0.10000000000000001,"s":"é"}"#,
        r#"{"n":12345678901234567890123,"x":0.1,"s":"é"}"#,
    ] {
        let other = raw(other);
        assert_eq!(
            hub.publish(
                1,
                "alice",
                PublishRequest {
                    data: &other,
                    ..request
                }
            ),
            Err(PublishError::IdempotencyConflict { seq: 1 })
        );
    }
    // Spacing, key order and escapes still do not matter; the numbers' text is the same.
    let respelled = raw(r#"{ "s" : "\u00e9", "x":0.10000000000000001 , "n" : 12345678901234567890123 }"#);
    let duplicate = hub
        .publish(
            1,
            "alice",
            PublishRequest {
                data: &respelled,
                ..request
            },
        )
        .unwrap();
    assert_eq!((duplicate.seq, duplicate.duplicate), (1, true));
    // Nested arrays and objects are compared member by member.
    let nested = raw(r#"{"a":[1,{"b":[true,null,"c"]}]}"#);
    let nested_request = PublishRequest {
        data: &nested,
        idempotency_key: Some("k2"),
        ..request
    };
    assert_eq!(hub.publish(2, "alice", nested_request).unwrap().seq, 2);
    for (other, same) in [
        (r#"{"a":[1,{"b":[true,null,"c"]}]}"#, true),
        (r#"{"a": [ 1, { "b": [ true, null, "\u0063" ] } ] }"#, true),
        (r#"{"a":[1,{"b":[true,null,"c"],"d":1}]}"#, false),
        (r#"{"a":[1,{"b":[true,null]}]}"#, false),
        (r#"{"a":[1.0,{"b":[true,null,"c"]}]}"#, false),
        (r#"{"a":[1,{"b":[false,null,"c"]}]}"#, false),
    ] {
        let other = raw(other);
        let result = hub.publish(
            3,
            "alice",
            PublishRequest {
                data: &other,
                ..nested_request
            },
        );
        if same {
            assert_eq!(result.map(|p| (p.seq, p.duplicate)), Ok((2, true)));
        } else {
            assert_eq!(result, Err(PublishError::IdempotencyConflict { seq: 2 }));
        }
    }
}

#[test]
fn idempotency_key_returns_the_original_seq() {
    let mut hub = hub(config());
    let data = data("a1");
    let request = PublishRequest {
        run: "r",
        kind: EventKind::AgentStarted,
        data: &data,
        idempotency_key: Some("k1"),
    };
    let first = hub.publish(0, "alice", request).unwrap();
    let again = hub.publish(1, "alice", request).unwrap();
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    assert_eq!(hub.stream_position("alice").unwrap().1, 1);
}

#[test]
fn an_idempotency_key_reused_for_another_event_is_a_conflict() {
    let mut hub = hub(config());
    let original = data("a1");
    let other = data("a2");
    let request = PublishRequest {
        run: "r",
        kind: EventKind::AgentStarted,
        data: &original,
        idempotency_key: Some("k1"),
    };
    hub.publish(0, "alice", request).unwrap();
    hub.publish(
        0,
        "alice",
        PublishRequest {
            idempotency_key: None,
            ..request
        },
    )
    .unwrap();
    let changed = [
        PublishRequest {
            data: &other,
            ..request
        },
        PublishRequest { run: "r2", ..request },
        PublishRequest {
            kind: EventKind::AgentError,
            ..request
        },
    ];
    for changed in changed {
        assert_eq!(
            hub.publish(1, "alice", changed),
            Err(PublishError::IdempotencyConflict { seq: 1 })
        );
    }
    // The same key for another user is another key; the exact retry is still a duplicate.
    assert_eq!(
        hub.publish(
            1,
            "bob",
            PublishRequest {
                data: &other,
                ..request
            }
        )
        .unwrap()
        .seq,
        1
    );
    let again = hub.publish(1, "alice", request).unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    // The same event serialised otherwise (spacing, escapes) is the same event.
    let respelled = RawValue::from_string(r#"{ "id" : "\u0061\u0031" }"#.to_string()).unwrap();
    let again = hub
        .publish(
            1,
            "alice",
            PublishRequest {
                data: &respelled,
                ..request
            },
        )
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    assert_eq!(hub.stream_position("alice").unwrap().1, 2);
    assert_eq!(hub.counters().published, 3);
    assert_eq!(hub.counters().idempotent_replays, 2);
}

#[test]
fn data_a_client_cannot_decode_is_invalid_data_and_changes_nothing() {
    let mut hub = hub(config());
    for text in [
        r#""\ud800""#,
        r#"{"a":"\udc00"}"#,
        r#""\ud800x""#,
        r#"["\u0041",1e400]"#,
    ] {
        let data = RawValue::from_string(text.to_string()).unwrap();
        let request = PublishRequest {
            run: "r",
            kind: EventKind::AgentThinking,
            data: &data,
            idempotency_key: Some("k"),
        };
        let refused = hub.publish(0, "alice", request);
        assert!(
            matches!(refused, Err(PublishError::InvalidData(_))),
            "{text}: {refused:?}"
        );
    }
    assert_eq!(hub.stream_position("alice"), None);
    let pair = RawValue::from_string(r#""\ud83d\ude00""#.to_string()).unwrap();
    let request = PublishRequest {
        run: "r",
        kind: EventKind::AgentThinking,
        data: &pair,
        idempotency_key: None,
    };
    assert_eq!(hub.publish(0, "alice", request).unwrap().seq, 1);
}

#[test]
fn bad_publishes_are_typed_errors_and_change_nothing() {
    let mut hub = hub(HubConfig {
        event_bytes_max: 100,
        users_max: 1,
        ..config()
    });
    let big = RawValue::from_string(format!("\"{}\"", "x".repeat(200))).unwrap();
    let small = data("ok");
    let request = |data| PublishRequest {
        run: "r",
        kind: EventKind::AgentError,
        data,
        idempotency_key: None,
    };
    assert!(matches!(
        hub.publish(0, "alice", request(&big)),
        Err(PublishError::TooLarge { .. })
    ));
    assert!(matches!(
        hub.publish(0, "a b", request(&small)),
        Err(PublishError::InvalidUser(_))
    ));
    let bad_run = PublishRequest {
        run: "",
        ..request(&small)
    };
    assert!(matches!(
        hub.publish(0, "alice", bad_run),
        Err(PublishError::InvalidRun(_))
    ));
    hub.publish(0, "alice", request(&small)).unwrap();
    assert!(matches!(
        hub.publish(0, "bob", request(&small)),
        Err(PublishError::UsersFull { max: 1 })
    ));
    hub.shutdown();
    assert_eq!(
        hub.publish(1, "alice", request(&small)),
        Err(PublishError::ShuttingDown)
    );
    assert_eq!(hub.stream_position("alice").unwrap().1, 1);
}

#[test]
fn shutdown_closes_every_connection_with_1001() {
    let mut hub = hub(config());
    let c = hub.connect(0, "alice", None).unwrap();
    drain(&mut hub, c);
    let d = hub.connect(0, "dave", None).unwrap();
    drain(&mut hub, d);
    hub.shutdown();
    for id in [c, d] {
        // The error frame, then the close with the code that maps to 1001.
        match drain(&mut hub, id).as_slice() {
            [ServerFrame::Error {
                code: ErrorCode::ShuttingDown,
                message,
            }, ServerFrame::Error {
                code: ErrorCode::ShuttingDown,
                message: close,
            }] => {
                assert_ne!(message, "<close>");
                assert_eq!(close, "<close>");
            }
            other => panic!("expected the shutdown error and close, got {other:?}"),
        }
    }
    assert_eq!(ErrorCode::ShuttingDown.close_code(), 1001);
    assert_eq!(hub.connect(1, "bob", None).unwrap_err().code, ErrorCode::ShuttingDown);
}

#[test]
fn ping_flood_closes_as_slow_consumer() {
    let mut hub = hub(config());
    let c = hub.connect(0, "alice", None).unwrap();
    for id in 0..20 {
        hub.ping(c, id);
    }
    let frames = drain(&mut hub, c);
    assert!(frames.iter().any(|f| matches!(
        f,
        ServerFrame::Error {
            code: ErrorCode::SlowConsumer,
            ..
        }
    )));
    assert!(frames.len() <= config().control_queue_max as usize + 1);
}

// ---------------------------------------------------------------------------------------------
// Property test: random interleavings against a model of what each connection must see.

#[derive(Debug, Clone)]
enum Op {
    Publish { user: u8 },
    Connect { user: u8, resume: bool },
    Disconnect { slot: u8 },
    Drain { slot: u8, max: u8 },
    Ping { slot: u8 },
    Advance { ms: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8).prop_map(|user| Op::Publish { user }),
        2 => (0..3u8, any::<bool>()).prop_map(|(user, resume)| Op::Connect { user, resume }),
        1 => (0..8u8).prop_map(|slot| Op::Disconnect { slot }),
        3 => (0..8u8, 1..6u8).prop_map(|(slot, max)| Op::Drain { slot, max }),
        1 => (0..8u8).prop_map(|slot| Op::Ping { slot }),
        1 => (0..4000u16).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What one simulated client has seen: the model's expectation of each connection.
struct Seen {
    id: ConnectionId,
    user: String,
    epoch: Option<String>,
    resume: Option<Resume>,
    /// Last seq received on this connection (event or gap end).
    last: u64,
    closed: bool,
}

/// The `slot`-th open connection, counting round: every open connection is reachable, however
/// many have come and gone.
fn open_slot(conns: &mut [Seen], slot: u8) -> Option<&mut Seen> {
    let open = conns.iter().filter(|c| !c.closed).count();
    if open == 0 {
        return None;
    }
    conns.iter_mut().filter(|c| !c.closed).nth(slot as usize % open)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Never another user's event, never twice, never out of order, never a hole without a gap
    /// that starts right after what the connection had, and a retention gap only for data the
    /// hub really evicted (checked against the hub's own published ids). The byte limit holds
    /// about eight events (frames and bookkeeping), so one user's publish evicts another's.
    #[test]
    fn hub_never_misroutes_duplicates_reorders_or_lies_about_gaps(ops in proptest::collection::vec(op(), 1..120), dormant_streams_max in 0..4u64) {
        let mut hub = hub(HubConfig { retention_age_ms: 3_000, retention_bytes_max: 2_000, event_bytes_max: 200, dormant_streams_max, ..config() });
        let users = ["alice", "bob", "carol"];
        let mut now = 0u64;
        // Per user: (epoch, seq) -> published at, and the resume position of the user's last client.
        let mut published: BTreeMap<(String, u64), (String, u64)> = BTreeMap::new();
        let mut last_position: BTreeMap<String, (String, u64)> = BTreeMap::new();
        let mut conns: Vec<Seen> = Vec::new();
        for op in ops {
            match op {
                Op::Publish { user } => {
                    let user = users[user as usize];
                    let p = publish(&mut hub, now, user, user);
                    published.insert((p.epoch.clone(), p.seq), (user.to_string(), now));
                }
                Op::Connect { user, resume } => {
                    let user = users[user as usize];
                    let resume = if resume { last_position.get(user).map(|(e, a)| Resume { epoch: e.clone(), after: *a }) } else { None };
                    if let Ok(id) = hub.connect(now, user, resume.as_ref()) {
                        conns.push(Seen { id, user: user.to_string(), epoch: None, resume, last: 0, closed: false });
                    }
                }
                Op::Disconnect { slot } => {
                    if let Some(seen) = open_slot(&mut conns, slot) {
                        hub.disconnect(seen.id);
                        seen.closed = true;
                    }
                }
                Op::Ping { slot } => {
                    if let Some(seen) = open_slot(&mut conns, slot) {
                        hub.ping(seen.id, 1);
                    }
                }
                Op::Advance { ms } => {
                    now += ms as u64;
                    hub.tick(now);
                }
                Op::Drain { slot, max } => {
                    let Some(seen) = open_slot(&mut conns, slot) else { continue };
                    for _ in 0..max {
                        let Some(transmit) = hub.poll_transmit(seen.id) else { break };
                        let frame: ServerFrame = match transmit {
                            Transmit::Control(text) => serde_json::from_str(&text).unwrap(),
                            Transmit::Event { frame, .. } => serde_json::from_str(&frame).unwrap(),
                            Transmit::Close(_) => { hub.disconnect(seen.id); seen.closed = true; break }
                        };
                        match frame {
                            ServerFrame::Welcome { user, epoch, head, .. } => {
                                prop_assert_eq!(&user, &seen.user);
                                prop_assert!(seen.epoch.is_none(), "one welcome per connection");
                                // A resumed connection starts from its resume position; a fresh one at head.
                                seen.last = match &seen.resume {
                                    Some(r) if r.epoch == epoch => r.after,
                                    Some(_) => 0,
                                    None => head,
                                };
                                seen.epoch = Some(epoch);
                            }
                            ServerFrame::Gap { epoch, from, to, reason: GapReason::Retention } => {
                                prop_assert_eq!(Some(&epoch), seen.epoch.as_ref());
                                let to = to.unwrap();
                                prop_assert_eq!(from, seen.last + 1, "a retention gap starts right after what was read");
                                prop_assert!(from <= to);
                                // Honest: every seq in the gap is really gone from the hub.
                                let first_retained = hub.users.get(seen.user.as_str()).map(|s| s.first_seq()).unwrap();
                                prop_assert!(to < first_retained, "gap {}..={} but {} is retained", from, to, first_retained);
                                seen.last = to;
                            }
                            ServerFrame::Gap { epoch, from, to, reason: GapReason::Epoch } => {
                                // Only for a resume of an epoch the hub no longer has, from right after it.
                                let resume = seen.resume.as_ref().expect("an epoch gap answers a resume");
                                prop_assert_eq!(&epoch, &resume.epoch);
                                prop_assert_ne!(Some(&epoch), seen.epoch.as_ref());
                                prop_assert_eq!(from, resume.after + 1);
                                prop_assert_eq!(to, None);
                                // One hub life forgets an epoch only at dormant_streams_max.
                                prop_assert!(hub.counters().dormant_evicted > 0, "epoch gap with every quiet stream remembered");
                                seen.last = 0;
                            }
                            ServerFrame::Event { seq, data, .. } => {
                                let epoch = seen.epoch.clone().unwrap();
                                let (owner, _) = published.get(&(epoch.clone(), seq)).expect("only published events are sent");
                                prop_assert_eq!(owner, &seen.user, "isolation");
                                prop_assert_eq!(data["id"].as_str().unwrap(), seen.user.as_str(), "isolation by payload");
                                prop_assert_eq!(seq, seen.last + 1, "order, duplicate or hole: {} after {}", seq, seen.last);
                                seen.last = seq;
                                last_position.insert(seen.user.clone(), (epoch, seq));
                            }
                            ServerFrame::Pong { .. } | ServerFrame::Error { .. } => {}
                        }
                    }
                }
            }
            let gauges = hub.gauges();
            prop_assert!(gauges.send_queue_depth_max <= hub.config().send_queue_max);
            prop_assert!(gauges.connections_per_user_max <= hub.config().connections_per_user_max);
            prop_assert!(gauges.retained_bytes <= hub.config().retention_bytes_max);
            prop_assert!(gauges.dormant_streams <= hub.config().dormant_streams_max);
        }
    }

    /// Seqs are contiguous from 1 per user and epoch, whatever the interleaving of users.
    #[test]
    fn seqs_are_contiguous_per_user(users in proptest::collection::vec(0..4u8, 1..200)) {
        let mut hub = hub(HubConfig { retention_events_max: 1_000, ..config() });
        let mut next: BTreeMap<u8, u64> = BTreeMap::new();
        for user in users {
            let p = publish(&mut hub, 0, &format!("user{user}"), "x");
            let expected = next.entry(user).or_insert(1);
            prop_assert_eq!(p.seq, *expected);
            *expected += 1;
        }
    }
}
