//! An application that serves `Server::router()` inside its own axum app, as README.md's
//! "Embedding" describes: on `guard_listener`, with `Server::maintenance` alongside. That runs
//! what `serve` runs besides the router: the retention tick (events past `retention_age_ms`
//! are evicted with nobody publishing) and, after `shutdown`, the wait for the WebSocket
//! closes, which axum's graceful shutdown does not see.

mod common;

use axum::routing::get;
use common::*;
use herald_core::clock::TokioClock;
use herald_core::protocol::{ErrorCode, EventKind};
use herald_core::rng::SeededRng;
use herald_core::server::Server;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn an_embedded_router_with_maintenance_evicts_by_age_and_drains_on_shutdown() {
    let mut config = test_config();
    config.hub.retention_age_ms = 200;
    config.tick_interval_ms = 50;
    let server = Server::new(config, TokioClock::shared(UNIX_MS_BASE), SeededRng::new(71)).expect("valid config");
    let app = axum::Router::new()
        .route("/app", get(|| async { "the application's own route" }))
        .merge(server.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let maintenance = tokio::spawn(server.clone().maintenance());
    let stop = server.clone();
    let app_task = tokio::spawn(async move {
        axum::serve(server_listener(&stop, listener), app)
            .with_graceful_shutdown(until_shut_down(stop.clone()))
            .await
    });
    let embedded = TestServer {
        addr,
        notifier: server.notifier(),
        task: app_task,
        server: server.clone(),
    };
    assert_eq!(
        http(addr, "GET", "/app", None, None).await,
        (200, "the application's own route".into())
    );

    let (mut ws, _) = connect_user(&embedded, "alice", None).await;
    embedded
        .notifier
        .publish("alice", "run-1", EventKind::AgentStarted, &json!({}))
        .unwrap();
    assert_eq!(expect_event(&mut ws).await.0, 1);
    // Nobody publishes again: only the tick can evict the event once it is 200 ms old.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.gauges().retained_events != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event outlived retention_age_ms: no tick runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.shutdown();
    expect_error_close(&mut ws, ErrorCode::ShuttingDown).await;
    drop(ws);
    let returned = tokio::time::timeout(WAIT, maintenance)
        .await
        .expect("maintenance returns once the connections closed")
        .unwrap();
    assert!(returned.is_ok(), "{returned:?}");
    assert_eq!(metric(&embedded, "herald_connection_tasks"), 0);
    let served = tokio::time::timeout(WAIT, embedded.task)
        .await
        .expect("the application stops")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
}

/// The listener as README.md says to wrap it.
fn server_listener(
    server: &Server,
    listener: tokio::net::TcpListener,
) -> herald_core::server::SocketListener<impl axum::serve::Listener<Addr = std::net::SocketAddr>> {
    use axum::serve::ListenerExt;
    server.guard_listener(listener.tap_io(herald_core::server::disable_nagle))
}

/// The application's own shutdown signal; here, polling Herald's.
async fn until_shut_down(server: Server) {
    while !server.is_shutting_down() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
