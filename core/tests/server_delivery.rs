//! Delivery paths over real loopback sockets: live delivery, replay-then-live across the seam,
//! retention and epoch gaps, slow consumers and their recovery, fan-out and connection limits.

mod common;

use common::*;
use herald_core::protocol::{ErrorCode, EventKind, GapReason, Resume, ServerFrame};
use serde_json::json;
use std::time::Duration;

fn publish(server: &TestServer, user: &str, n: u64) -> u64 {
    let published = server
        .notifier
        .publish(
            user,
            "run-1",
            EventKind::AgentThinking,
            &json!({ "user": user, "n": n }),
        )
        .expect("publish");
    published.seq
}

#[tokio::test]
async fn no_resume_starts_live_at_head() {
    let server = start(test_config(), 10).await;
    for n in 1..=3 {
        publish(&server, "alice", n);
    }
    let (mut ws, welcome) = connect_user(&server, "alice", None).await;
    assert_eq!(welcome.head, 3);
    assert!(!welcome.recovered);
    assert!(welcome.connection.starts_with("c-"));
    assert_eq!(publish(&server, "alice", 4), 4);
    let (seq, data) = expect_event(&mut ws).await;
    assert_eq!(seq, 4, "history before the welcome is not replayed without resume");
    assert_eq!(data, json!({"user": "alice", "n": 4}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_has_no_gap_or_duplicate_at_the_seam() {
    let server = start(test_config(), 11).await;
    let (mut ws, welcome) = connect_user(&server, "alice", None).await;
    for n in 1..=3 {
        publish(&server, "alice", n);
    }
    for expected in 1..=3 {
        assert_eq!(expect_event(&mut ws).await.0, expected);
    }
    drop(ws);
    // Published while disconnected.
    for n in 4..=200 {
        publish(&server, "alice", n);
    }
    // Keep publishing from another thread while the client resumes, so live events race the
    // replay.
    let notifier = server.notifier.clone();
    let publisher = std::thread::spawn(move || {
        for n in 201..=400u64 {
            notifier
                .publish(
                    "alice",
                    "run-1",
                    EventKind::AgentThinking,
                    &json!({ "user": "alice", "n": n }),
                )
                .unwrap();
            if n % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let (mut ws, resumed) = connect_user(
        &server,
        "alice",
        Some(Resume {
            epoch: welcome.epoch.clone(),
            after: 3,
        }),
    )
    .await;
    assert_eq!(resumed.epoch, welcome.epoch);
    assert!(resumed.recovered, "everything after 3 is retained");
    assert!(resumed.head >= 200);
    for expected in 4..=400u64 {
        let (seq, data) = expect_event(&mut ws).await;
        assert_eq!(seq, expected);
        assert_eq!(data["n"], json!(expected), "seq {seq} carries event {expected}");
    }
    publisher.join().unwrap();
    // Nothing else is pending: the next frame is the pong for this ping.
    send_frame(&mut ws, &herald_core::protocol::ClientFrame::Ping { id: 9 }).await;
    assert_eq!(next_frame(&mut ws).await, ServerFrame::Pong { id: 9 });
}

/// Frames that arrive together are read together: the connection task polls its socket only
/// when the socket wakes it or the last read returned a message, so frames already buffered
/// behind the first must still be read without a new wake-up.
#[tokio::test]
async fn pings_sent_in_one_write_are_all_answered_in_order() {
    use futures_util::SinkExt;
    let server = start(test_config(), 14).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    for id in 1..=20u64 {
        let ping = serde_json::to_string(&herald_core::protocol::ClientFrame::Ping { id }).unwrap();
        ws.feed(tokio_tungstenite::tungstenite::Message::text(ping))
            .await
            .unwrap();
    }
    // One flush: the 20 frames leave in one write.
    ws.flush().await.unwrap();
    for id in 1..=20u64 {
        assert_eq!(next_frame(&mut ws).await, ServerFrame::Pong { id });
    }
    // And the connection still delivers.
    publish(&server, "alice", 1);
    assert_eq!(expect_event(&mut ws).await.0, 1);
}

#[tokio::test]
async fn resume_past_retention_gets_an_honest_gap() {
    let mut config = test_config();
    config.hub.retention_events_max = 5;
    let server = start(config, 12).await;
    let (mut ws, welcome) = connect_user(&server, "alice", None).await;
    publish(&server, "alice", 1);
    publish(&server, "alice", 2);
    assert_eq!(expect_event(&mut ws).await.0, 1);
    assert_eq!(expect_event(&mut ws).await.0, 2);
    drop(ws);
    for n in 3..=12 {
        publish(&server, "alice", n);
    }
    // Retained: 8..=12. The client has 1..=2, so 3..=7 are gone.
    let (mut ws, resumed) = connect_user(
        &server,
        "alice",
        Some(Resume {
            epoch: welcome.epoch.clone(),
            after: 2,
        }),
    )
    .await;
    assert!(!resumed.recovered);
    assert_eq!(resumed.head, 12);
    assert_eq!(
        next_frame(&mut ws).await,
        ServerFrame::Gap {
            epoch: welcome.epoch.clone(),
            from: 3,
            to: Some(7),
            reason: GapReason::Retention,
        }
    );
    for expected in 8..=12 {
        assert_eq!(expect_event(&mut ws).await.0, expected);
    }
    // A resume that only needs retained events is recovered, with no gap.
    let (mut ws, resumed) = connect_user(
        &server,
        "alice",
        Some(Resume {
            epoch: welcome.epoch,
            after: 9,
        }),
    )
    .await;
    assert!(resumed.recovered);
    assert_eq!(expect_event(&mut ws).await.0, 10);
}

#[tokio::test]
async fn restart_gives_an_epoch_gap() {
    let first = start(test_config(), 13).await;
    let (mut ws, welcome) = connect_user(&first, "alice", None).await;
    for n in 1..=3 {
        publish(&first, "alice", n);
    }
    for expected in 1..=3 {
        assert_eq!(expect_event(&mut ws).await.0, expected);
    }
    first.server.shutdown();
    expect_error_close(&mut ws, ErrorCode::ShuttingDown).await;

    // A new server is a new hub: history is gone and the stream gets a new epoch.
    let second = start(test_config(), 14).await;
    publish(&second, "alice", 1);
    publish(&second, "alice", 2);
    let (mut ws, resumed) = connect_user(
        &second,
        "alice",
        Some(Resume {
            epoch: welcome.epoch.clone(),
            after: 3,
        }),
    )
    .await;
    assert!(!resumed.recovered);
    assert_ne!(resumed.epoch, welcome.epoch);
    assert_eq!(resumed.head, 2);
    assert_eq!(
        next_frame(&mut ws).await,
        ServerFrame::Gap {
            epoch: welcome.epoch,
            from: 4,
            to: None,
            reason: GapReason::Epoch,
        }
    );
    assert_eq!(expect_event(&mut ws).await.0, 1);
    assert_eq!(expect_event(&mut ws).await.0, 2);
}

#[tokio::test]
async fn slow_consumer_is_cut_with_4003_and_recovers_by_resume() {
    let mut config = test_config();
    config.hub.send_queue_max = 5;
    let server = start(config, 15).await;
    let (mut ws, welcome) = connect_user(&server, "alice", None).await;
    // On this single-threaded runtime the connection task cannot run during the loop, so the
    // lag grows past send_queue_max exactly as it would for a client that stopped reading.
    for n in 1..=50 {
        publish(&server, "alice", n);
    }
    let mut last = 0;
    let message = loop {
        match next_frame(&mut ws).await {
            ServerFrame::Event { seq, .. } => {
                assert_eq!(seq, last + 1);
                last = seq;
            }
            ServerFrame::Error { code, message } => {
                assert_eq!(code, ErrorCode::SlowConsumer);
                break message;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(message.contains("send_queue_max 5"), "{message}");
    assert_eq!(next_seen(&mut ws).await, Seen::Close(Some(4003)));

    let (mut ws, resumed) = connect_user(
        &server,
        "alice",
        Some(Resume {
            epoch: welcome.epoch,
            after: last,
        }),
    )
    .await;
    assert!(resumed.recovered, "the backlog is within retention");
    for expected in last + 1..=50 {
        assert_eq!(expect_event(&mut ws).await.0, expected);
    }
    let text = server.server.metrics_text();
    assert!(
        text.contains("herald_disconnects_total{code=\"slow_consumer\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("herald_slow_consumer_closes_total 1\n"), "{text}");
}

#[tokio::test]
async fn every_tab_gets_every_event_and_other_users_get_none() {
    let server = start(test_config(), 16).await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(connect_user(&server, "alice", None).await.0);
    }
    let (mut bob, _) = connect_user(&server, "bob", None).await;
    for n in 1..=10 {
        publish(&server, "alice", n);
    }
    publish(&server, "bob", 1);
    for tab in &mut tabs {
        for expected in 1..=10 {
            let (seq, data) = expect_event(tab).await;
            assert_eq!(seq, expected);
            assert_eq!(data["user"], "alice");
        }
    }
    // Bob's first frame is his own event: none of alice's reached him.
    let (seq, data) = expect_event(&mut bob).await;
    assert_eq!((seq, data["user"].as_str()), (1, Some("bob")));
    assert_eq!(server.server.gauges().connections_per_user_max, 3);
}

#[tokio::test]
async fn per_user_connection_limit_closes_with_4009() {
    let mut config = test_config();
    config.hub.connections_per_user_max = 2;
    let server = start(config, 17).await;
    let (a1, _) = connect_user(&server, "alice", None).await;
    let (_a2, _) = connect_user(&server, "alice", None).await;
    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, &token("alice", 3_600), None).await;
    let message = expect_error_close(&mut ws, ErrorCode::TooManyConnections).await;
    assert!(message.contains("connections_per_user_max 2"), "{message}");
    // Other users are unaffected, and a slot freed by a close can be reused.
    let (_b1, _) = connect_user(&server, "bob", None).await;
    drop(a1);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut ws = ws_connect(&server).await;
        send_hello(&mut ws, &token("alice", 3_600), None).await;
        match next_frame(&mut ws).await {
            ServerFrame::Welcome { .. } => break,
            ServerFrame::Error {
                code: ErrorCode::TooManyConnections,
                ..
            } => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn retention_age_evicts_on_the_tick() {
    let mut config = test_config();
    config.hub.retention_age_ms = 200;
    config.tick_interval_ms = 50;
    let server = start(config, 18).await;
    publish(&server, "alice", 1);
    assert_eq!(server.server.gauges().retained_events, 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.server.gauges().retained_events != 0 {
        assert!(tokio::time::Instant::now() < deadline, "never evicted by age");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.server.gauges().retained_bytes, 0);
}

/// A connection whose backlog fills every batch it writes, each write waiting on a slow reader,
/// still checks its token: writing cannot starve the timer (the token check, the heartbeat and
/// the idle close) or the socket's read side. Before the writer stepped aside, it drained full
/// batches for as long as the backlog lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_kept_busy_by_a_slow_reader_still_closes_at_token_expiry() {
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio_tungstenite::tungstenite::Message;
    let mut config = test_config();
    config.idle_timeout_ms = 60_000;
    config.write_timeout_ms = 10_000;
    config.hub.send_queue_max = 100_000;
    config.hub.retention_events_max = 100_000;
    let server = start(config, 15).await;
    // A small receive buffer, so that what the server writes soon waits for this reader.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(server.url(), tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    send_hello(&mut ws, &token("alice", 2), None).await;
    expect_welcome(&mut ws).await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let publisher = {
        let notifier = server.notifier.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let pad = "x".repeat(32 * 1024);
            while !stop.load(Ordering::Relaxed) {
                notifier
                    .publish("alice", "run-1", EventKind::AgentThinking, &json!({ "pad": pad }))
                    .expect("publish");
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // One message per 20 ms: far slower than the publisher, so the backlog grows, every batch
    // the server takes is full, and every write waits for this reader.
    let started = std::time::Instant::now();
    let mut messages = 0;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(Message::Ping(_) | Message::Text(_))) => messages += 1,
                other => panic!("unexpected {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    // The token expires 2 s after the server started; the close waits for the batch being
    // written and then behind what the socket buffers already hold (seconds at this pace).
    assert_eq!(
        closed,
        Ok(Some(ErrorCode::TokenExpired.close_code())),
        "a busy connection outlived its token ({messages} messages read in {:?})",
        started.elapsed()
    );
}

/// The in-process raw path refuses what no serde_json client can decode (a lone surrogate
/// escape, which `RawValue` accepts), as the HTTP API does; a key reused for another event is
/// a conflict, not a silent duplicate.
#[tokio::test]
async fn the_notifier_refuses_undecodable_data_and_conflicting_keys() {
    use herald_core::notifier::PublishError;
    use serde_json::value::RawValue;
    let server = start(test_config(), 18).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let notifier = &server.notifier;
    let lone = RawValue::from_string(r#"{"text":"\ud800"}"#.into()).unwrap();
    let refused = notifier.publish_raw("alice", "run-1", EventKind::AgentThinking, &lone, None);
    assert!(matches!(refused, Err(PublishError::InvalidData(_))), "{refused:?}");

    let first = json!({"step": 1});
    let published = notifier
        .publish_with_key("alice", "run-1", EventKind::ToolExecuting, &first, Some("k-1"))
        .unwrap();
    assert_eq!(published.seq, 1);
    let conflict = notifier.publish_with_key(
        "alice",
        "run-1",
        EventKind::ToolExecuting,
        &json!({"step": 2}),
        Some("k-1"),
    );
    assert_eq!(conflict, Err(PublishError::IdempotencyConflict { seq: 1 }));
    assert_eq!(conflict.unwrap_err().code(), "idempotency_conflict");
    let again = notifier
        .publish_with_key("alice", "run-1", EventKind::ToolExecuting, &first, Some("k-1"))
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    publish(&server, "alice", 2);
    assert_eq!(expect_event(&mut ws).await, (1, first));
    assert_eq!(expect_event(&mut ws).await.0, 2);
    let text = server.server.metrics_text();
    for line in [
        "herald_publish_errors_total{code=\"invalid_data\"} 1\n",
        "herald_publish_errors_total{code=\"idempotency_conflict\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

/// A connection that sent an oversized frame lingers unread for `idle_timeout_ms`; a shutdown
/// ends that, so `serve` returns without waiting out the linger or its own drain deadline.
#[tokio::test]
async fn a_shutdown_ends_the_linger_after_an_unreadable_frame() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut config = test_config();
    config.idle_timeout_ms = 20_000;
    config.write_timeout_ms = 5_000;
    let server = start(config, 19).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    ws.send(Message::text("y".repeat(20 * 1024))).await.unwrap();
    expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    assert_eq!(metric(&server, "herald_connection_tasks"), 1, "lingering");
    let started = tokio::time::Instant::now();
    server.server.shutdown();
    let tasks = server.server.clone();
    tokio::time::timeout(Duration::from_secs(3), server.task)
        .await
        .expect("serve returns before its 5 s drain deadline")
        .unwrap()
        .unwrap();
    assert!(tasks.metrics_text().contains(
        "herald_connection_tasks 0
"
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
}
