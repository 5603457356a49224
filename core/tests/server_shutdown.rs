//! Shutdown over real loopback sockets: graceful shutdown (1001 to clients, typed publish
//! errors, HTTP 503, `serve` returns) and a crashed server (the `serve` future dropped), after
//! which no `Notifier` may silently succeed.

mod common;

use common::*;
use herald_core::notifier::PublishError;
use herald_core::protocol::{ErrorCode, EventKind};
use serde_json::json;
use std::future::IntoFuture;
use std::time::Duration;

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
