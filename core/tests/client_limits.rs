//! The client's own limits: a server frame beyond `frame_bytes_max` stops the client for good
//! (it used to reconnect and fail on the same frame forever, every backoff, while the
//! application heard nothing), and configuration durations are bounded.

mod common;

use common::{start, test_config, token};
use herald_core::client::{
    Client, ClientConfig, ClientObserver, ClientState, CloseCause, Item, NoObserver, TcpConnector,
};
use herald_core::clock::CONFIG_DURATION_MAX_MS;
use herald_core::protocol::{EventKind, Resume};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts connection attempts.
#[derive(Clone, Default)]
struct Attempts(Arc<AtomicU32>);

impl ClientObserver for Attempts {
    fn connecting(&self, _attempt: u32, _resume: Option<&Resume>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn closed(&self, _code: Option<u16>, _cause: CloseCause, _reason: &str) {}
}

#[tokio::test]
async fn a_frame_beyond_frame_bytes_max_stops_the_client_instead_of_retrying_forever() {
    let server = start(test_config(), 41).await;
    let mut config = ClientConfig::new(server.url(), 7);
    config.frame_bytes_max = 1024;
    config.backoff_initial_ms = 10;
    config.backoff_max_ms = 20;
    let attempts = Attempts::default();
    let mut client = Client::spawn(
        config,
        TcpConnector {
            addr: server.addr.to_string(),
        },
        || token("alice", 3_600),
        attempts.clone(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !matches!(client.state(), ClientState::Connected { .. }) {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An event the server accepts (its event_bytes_max is 64 KiB) but the client cannot read.
    let big = "x".repeat(4_000);
    server
        .notifier
        .publish("alice", "run-1", EventKind::AgentThinking, &json!({ "text": big }))
        .expect("published");

    let end = tokio::time::timeout(Duration::from_secs(5), client.recv())
        .await
        .expect("the client stops within a bounded time instead of retrying forever");
    assert_eq!(end, None::<Item>, "no item, and the items stream ends");
    match client.state() {
        ClientState::Stopped { reason } => {
            assert!(reason.contains("frame_bytes_max 1024"), "{reason}");
            assert!(reason.contains("event_bytes_max"), "{reason}");
            let size = reason
                .split_whitespace()
                .skip_while(|w| *w != "of")
                .nth(1)
                .and_then(|w| w.parse::<usize>().ok());
            assert!(size.is_some_and(|s| s > 4_000), "the size is named: {reason}");
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert_eq!(attempts.0.load(Ordering::SeqCst), 1, "no retry");
}

#[test]
fn durations_are_capped_at_one_day() {
    assert_eq!(CONFIG_DURATION_MAX_MS, 86_400_000);
    let base = ClientConfig::new("ws://127.0.0.1:1/v1/ws", 1);
    assert_eq!(base.validate(), Ok(()));
    type Set = fn(&mut ClientConfig, u64);
    let fields: [(&str, Set); 8] = [
        ("connect_timeout_ms", |c, v| c.connect_timeout_ms = v),
        ("heartbeat_interval_ms", |c, v| c.heartbeat_interval_ms = v),
        ("idle_timeout_ms", |c, v| c.idle_timeout_ms = v),
        ("write_timeout_ms", |c, v| c.write_timeout_ms = v),
        ("backoff_initial_ms", |c, v| c.backoff_initial_ms = v),
        ("backoff_max_ms", |c, v| c.backoff_max_ms = v),
        ("backoff_reset_after_ms", |c, v| c.backoff_reset_after_ms = v),
        ("shutdown_reconnect_spread_ms", |c, v| {
            c.shutdown_reconnect_spread_ms = v
        }),
    ];
    for (name, set) in fields {
        for value in [CONFIG_DURATION_MAX_MS + 1, u64::MAX] {
            let mut config = base.clone();
            set(&mut config, value);
            // Keep the other rules (idle > heartbeat, max >= initial) satisfied where they could
            // hide the cap.
            if name == "heartbeat_interval_ms" {
                config.idle_timeout_ms = u64::MAX;
            }
            if name == "backoff_initial_ms" {
                config.backoff_max_ms = u64::MAX;
            }
            let error = config.validate().expect_err(name);
            assert!(
                error.contains(name) && error.contains("86400000"),
                "{name} = {value}: {error}"
            );
        }
    }
    // Exactly one day is accepted.
    let mut config = base.clone();
    config.idle_timeout_ms = CONFIG_DURATION_MAX_MS;
    config.connect_timeout_ms = CONFIG_DURATION_MAX_MS;
    config.write_timeout_ms = CONFIG_DURATION_MAX_MS;
    config.backoff_initial_ms = CONFIG_DURATION_MAX_MS;
    config.backoff_max_ms = CONFIG_DURATION_MAX_MS;
    assert_eq!(config.validate(), Ok(()));
}

/// Before the cap, `backoff_max_ms = u64::MAX` overflowed in the backoff and huge timeouts
/// overflowed `Instant + Duration` in the task; now `spawn` refuses them with the message.
#[tokio::test]
#[should_panic(expected = "backoff_max_ms")]
async fn spawn_refuses_an_overflowing_backoff() {
    let mut config = ClientConfig::new("ws://127.0.0.1:1/v1/ws", 1);
    config.backoff_max_ms = u64::MAX;
    let _client = Client::spawn(
        config,
        TcpConnector {
            addr: "127.0.0.1:1".into(),
        },
        || "token".to_string(),
        NoObserver,
    );
}

/// A saved position at seq 2^64−1 could never be resumed (the server refuses it with 4004,
/// which would stop the client for good): refused at spawn.
#[test]
fn a_start_position_beyond_every_stream_is_refused() {
    let mut config = ClientConfig::new("ws://127.0.0.1:1/v1/ws", 1);
    config.start_after = Some(herald_core::protocol::Resume {
        epoch: "e1".into(),
        after: u64::MAX - 1,
    });
    assert_eq!(config.validate(), Ok(()));
    config.start_after.as_mut().unwrap().after = u64::MAX;
    let error = config.validate().unwrap_err();
    assert!(error.contains("start_after.after"), "{error}");
}
