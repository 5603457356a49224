//! A token's `exp` is judged by the server's wall clock, at second resolution, for as long as
//! the connection is open (PROTOCOL.md, `token_expired`). The connection task's precise expiry
//! timer runs on the monotonic clock, which a suspended host does not advance and a stepped
//! wall clock does not move: the wall clock must be read again at every timer firing, so a
//! jump past `exp` closes the connection within a heartbeat.

mod common;

use common::*;
use herald_core::clock::Clock;
use herald_core::protocol::ErrorCode;
use herald_core::rng::SeededRng;
use herald_core::server::Server;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// tokio's monotonic clock, and a wall clock that the test can step forward (what NTP does to
/// a drifted host, and what a resumed host sees after a suspend).
struct SteppedClock {
    start: tokio::time::Instant,
    /// Added to the wall clock on top of the monotonic time elapsed.
    stepped_ms: AtomicU64,
}

impl Clock for SteppedClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn unix_secs(&self) -> u64 {
        (UNIX_MS_BASE + self.now_ms() + self.stepped_ms.load(Ordering::Relaxed)) / 1000
    }
}

#[tokio::test]
async fn a_wall_clock_stepped_past_exp_closes_the_connection_within_a_heartbeat() {
    let clock = Arc::new(SteppedClock {
        start: tokio::time::Instant::now(),
        stepped_ms: AtomicU64::new(0),
    });
    let config = test_config();
    let heartbeat = Duration::from_millis(config.heartbeat_interval_ms);
    let server = Server::new(config, clock.clone(), SeededRng::new(61)).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = TestServer {
        addr: listener.local_addr().unwrap(),
        notifier: server.notifier(),
        task: tokio::spawn(server.clone().serve(listener)),
        server,
    };
    // Valid for an hour of monotonic time: only the wall clock can expire it in this test.
    let (mut ws, _) = connect_user(&server, "alice", None).await;

    clock.stepped_ms.store(2 * 3_600_000, Ordering::Relaxed);
    let stepped_at = tokio::time::Instant::now();
    // Bounded as a whole: the server's pings, which `next_seen` skips, would otherwise keep
    // the wait going until the monotonic deadline an hour away.
    let message = tokio::time::timeout(WAIT, expect_error_close(&mut ws, ErrorCode::TokenExpired))
        .await
        .expect("closed within WAIT of the wall clock's step");
    assert!(message.contains("token expired at"), "{message}");
    let waited = stepped_at.elapsed();
    assert!(
        waited <= heartbeat * 2,
        "closed {waited:?} after the step; a heartbeat is {heartbeat:?}"
    );
}
