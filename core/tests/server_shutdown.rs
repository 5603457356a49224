//! Shutdown over real loopback sockets: graceful shutdown (1001 to clients, typed publish
//! errors, HTTP 503, `serve` returns once every close handshake is over, bounded by
//! `write_timeout_ms`) and a crashed server (the `serve` future dropped), after which no
//! `Notifier` may silently succeed.

mod common;

use common::*;
use futures_util::SinkExt;
use herald_core::notifier::PublishError;
use herald_core::protocol::{ErrorCode, EventKind};
use serde_json::json;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_1001_and_fails_publishes() {
    let server = start(test_config(), 30).await;
    // A second listener on the same server's router (no serve guard of its own), to observe
    // the HTTP API after `serve` has stopped accepting.
    let side = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let side_addr = side.local_addr().unwrap();
    tokio::spawn(axum::serve(side, server.server.router()).into_future());

    let (mut alice, _) = connect_user(&server, "alice", None).await;
    let (mut bob, _) = connect_user(&server, "bob", None).await;
    let run = server.notifier.run("alice", "run-1").unwrap();
    assert_eq!(run.agent_started(&json!({})).unwrap().seq, 1);
    assert_eq!(expect_event(&mut alice).await.0, 1);

    server.server.shutdown();
    expect_error_close(&mut alice, ErrorCode::ShuttingDown).await;
    expect_error_close(&mut bob, ErrorCode::ShuttingDown).await;
    assert_eq!(run.agent_completed(&json!({})), Err(PublishError::ShuttingDown));
    assert_eq!(
        server
            .notifier
            .publish("bob", "run-2", EventKind::AgentStarted, &json!({})),
        Err(PublishError::ShuttingDown)
    );
    assert!(server.notifier.is_closed());
    assert!(run.is_closed());

    let body = json!({"run": "r", "kind": "agent_started", "data": {}});
    let (status, reply) = http_publish(side_addr, "alice", &body).await;
    assert_eq!(status, 503);
    assert_eq!(reply["error"]["code"], "shutting_down");
    assert_eq!(
        http(side_addr, "GET", "/healthz", None, None).await,
        (503, "shutting down".into())
    );

    // `serve` stops accepting and returns.
    let result = tokio::time::timeout(WAIT, server.task).await.expect("serve returned");
    result.expect("not panicked").expect("serve ok");
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "still accepting"
    );
    let text = server.server.metrics_text();
    assert!(
        text.contains("herald_disconnects_total{code=\"shutting_down\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("herald_publish_errors_total{code=\"shutting_down\"} 3\n"),
        "{text}"
    );
}

#[tokio::test]
async fn dropping_the_serve_future_fails_every_notifier() {
    let server = start(test_config(), 31).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let run = server.notifier.run("alice", "run-1").unwrap();
    let clone = server.notifier.clone();
    assert_eq!(run.tool_executing(&json!({"tool": "x"})).unwrap().seq, 1);
    assert_eq!(expect_event(&mut ws).await.0, 1);

    // A crashed host: its futures are dropped, nobody calls shutdown().
    server.task.abort();
    let _ = server.task.await;

    assert!(clone.is_closed());
    assert_eq!(run.tool_completed(&json!({})), Err(PublishError::ShuttingDown));
    assert_eq!(
        clone.publish("alice", "run-1", EventKind::AgentError, &json!({})),
        Err(PublishError::ShuttingDown)
    );
    // Connected clients are told, not left hanging.
    expect_error_close(&mut ws, ErrorCode::ShuttingDown).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.server.gauges().connections, 0);
}

#[tokio::test]
async fn run_handles_validate_ids_up_front() {
    let server = start(test_config(), 32).await;
    assert!(matches!(
        server.notifier.run("bad user", "run-1"),
        Err(PublishError::InvalidUser(_))
    ));
    assert!(matches!(
        server.notifier.run("alice", ""),
        Err(PublishError::InvalidRun(_))
    ));
    let run = server.notifier.run("alice", "run-1").unwrap();
    let first = run.agent_started(&json!({})).unwrap();
    let again = run
        .publish_with_key(EventKind::AgentThinking, &json!({}), "step-1")
        .unwrap();
    let retry = run
        .publish_with_key(EventKind::AgentThinking, &json!({}), "step-1")
        .unwrap();
    assert_eq!((first.seq, again.seq, retry.seq), (1, 2, 2));
    assert!(!again.duplicate && retry.duplicate);
    let big = json!({ "text": "x".repeat(70 * 1024) });
    assert!(matches!(run.agent_thinking(&big), Err(PublishError::TooLarge { .. })));
}

/// Starts a graceful shutdown and waits for `serve` to return (at most `WAIT`); how long it took.
async fn shut_down_and_wait(server: &mut TestServer) -> Duration {
    let shutdown_at = Instant::now();
    server.server.shutdown();
    serve_returned(server, shutdown_at).await
}

/// Waits for `serve` to return without error (at most `WAIT`); the time since `shutdown_at`.
async fn serve_returned(server: &mut TestServer, shutdown_at: Instant) -> Duration {
    let served = tokio::time::timeout(WAIT, &mut server.task)
        .await
        .expect("serve returned");
    served.expect("not panicked").expect("serve ok");
    shutdown_at.elapsed()
}

/// How long the slow client of the first test takes to answer the server's 1001 close.
const CLOSE_REPLY_DELAY: Duration = Duration::from_millis(300);

/// A client that answers the 1001 close late: `serve` returns only after the answer was sent,
/// so a process that exits when `serve` returns does not cut the closing handshake short
/// (the connection task left the hub long before: it waits for the reply in `linger`).
#[tokio::test]
async fn serve_returns_only_after_a_slow_client_answered_the_close() {
    let mut config = test_config();
    // Far beyond CLOSE_REPLY_DELAY: returning at the deadline cannot pass for the reply.
    config.write_timeout_ms = 3_000;
    let mut server = start(config, 33).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let answering = Arc::new(AtomicBool::new(false));
    let client = {
        let answering = answering.clone();
        tokio::spawn(async move {
            expect_error_close(&mut ws, ErrorCode::ShuttingDown).await;
            tokio::time::sleep(CLOSE_REPLY_DELAY).await;
            answering.store(true, Ordering::SeqCst);
            // tungstenite queued the reply when it read the close; the next write sends it.
            // It then reports the closed connection, which is what a close is.
            let _ = ws.close(None).await;
        })
    };
    let elapsed = shut_down_and_wait(&mut server).await;
    assert!(
        answering.load(Ordering::SeqCst),
        "serve returned {elapsed:?} after shutdown, before the client answered the close"
    );
    assert!(
        elapsed < Duration::from_millis(3_000),
        "serve waited for its deadline ({elapsed:?}), not for the close reply"
    );
    assert_eq!(metric(&server, "herald_connection_tasks"), 0);
    client.await.expect("client not panicked");
}

/// A client that never answers the close does not hold `serve` beyond `write_timeout_ms`.
#[tokio::test]
async fn serve_returns_by_write_timeout_when_a_client_never_answers_the_close() {
    let mut config = test_config();
    config.write_timeout_ms = 200;
    let mut server = start(config, 34).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let shutdown_at = Instant::now();
    server.server.shutdown();
    expect_error_close(&mut ws, ErrorCode::ShuttingDown).await;
    // `ws` is not polled again: the reply tungstenite queued is never sent.
    let elapsed = serve_returned(&mut server, shutdown_at).await;
    assert!(
        elapsed >= Duration::from_millis(200),
        "serve returned {elapsed:?} after shutdown, without waiting for the close reply"
    );
    assert!(
        elapsed < Duration::from_millis(200 + 2_000),
        "serve returned {elapsed:?} after shutdown, long after write_timeout_ms"
    );
    drop(ws);
}

/// A task that lingers after a bad frame (its socket unreadable, kept open for
/// `idle_timeout_ms`) has left the hub but still counts; a shutdown ends the linger, so `serve`
/// neither waits it out nor needs its `write_timeout_ms` deadline for it.
#[tokio::test]
async fn serve_does_not_wait_out_a_lingering_close() {
    let mut config = test_config();
    config.write_timeout_ms = 200;
    let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
    let mut server = start(config, 35).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    // Beyond frame_bytes_max: the framing is broken, the server lingers without reading.
    ws.send(Message::text("y".repeat(20 * 1024))).await.unwrap();
    expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    wait_for_metric(&server, "herald_connections", 0).await;
    assert_eq!(metric(&server, "herald_connection_tasks"), 1, "still lingering");

    let elapsed = shut_down_and_wait(&mut server).await;
    assert!(
        elapsed < idle_timeout,
        "serve returned {elapsed:?} after shutdown: it waited out the linger"
    );
    assert_eq!(metric(&server, "herald_connection_tasks"), 0, "the linger ended");
    drop(ws);
}

/// Every connection task is counted out when it ends: after a client's own close, and after a
/// hello refused for a bad token (once the refusal's close handshake is over).
#[tokio::test]
async fn connection_tasks_are_counted_out_after_a_close_and_after_a_refused_hello() {
    let mut config = test_config();
    // The refused task waits this long for our close reply: ample time to see it counted.
    config.write_timeout_ms = 4_000;
    let server = start(config, 36).await;
    assert_eq!(metric(&server, "herald_connection_tasks"), 0);

    let (mut ws, _) = connect_user(&server, "alice", None).await;
    assert_eq!(metric(&server, "herald_connection_tasks"), 1);
    ws.close(None).await.unwrap();
    wait_for_metric(&server, "herald_connection_tasks", 0).await;

    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, "not-a-token", None).await;
    expect_error_close(&mut ws, ErrorCode::AuthFailed).await;
    assert_eq!(
        metric(&server, "herald_connection_tasks"),
        1,
        "refused, and waiting for the close reply"
    );
    let _ = ws.close(None).await;
    wait_for_metric(&server, "herald_connection_tasks", 0).await;
    assert_eq!(metric(&server, "herald_sockets_open"), 0);
}

/// A socket that has not sent its `hello` when shutdown begins is refused at once with
/// `shutting_down` and 1001 (resume elsewhere), not left to its `hello_timeout` (a misleading
/// 4008) or dropped: `serve`, which waits for every connection task, returns as soon as the
/// client answers the close, long before `hello_timeout_ms`.
#[tokio::test]
async fn a_socket_without_hello_at_shutdown_is_refused_with_1001_at_once() {
    let mut config = test_config();
    config.hello_timeout_ms = 4_000;
    config.write_timeout_ms = 4_000;
    let mut server = start(config, 37).await;
    let mut ws = ws_connect(&server).await;
    wait_for_metric(&server, "herald_connection_tasks", 1).await;

    let shutdown_at = Instant::now();
    server.server.shutdown();
    expect_error_close(&mut ws, ErrorCode::ShuttingDown).await;
    // tungstenite queued the close reply when it read the close; the flush sends it, and the
    // socket stays open, so only the reply can end the server's wait.
    let _ = ws.flush().await;
    let elapsed = serve_returned(&mut server, shutdown_at).await;
    assert!(
        elapsed < Duration::from_millis(2_000),
        "serve returned {elapsed:?} after shutdown: the hello-less socket held it"
    );
    assert_eq!(metric(&server, "herald_connection_tasks"), 0);
    drop(ws);
}
