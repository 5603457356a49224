//! Hello-phase protocol paths over real loopback sockets: authentication, token expiry (at
//! hello and while connected), malformed frames and the hello timeout.

mod common;

use common::*;
use futures_util::SinkExt;
use herald_core::auth::mint_token;
use herald_core::protocol::{ClientFrame, ErrorCode, EventKind, Resume, ServerFrame};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn garbage_and_forged_tokens_close_with_4001() {
    let server = start(test_config(), 1).await;
    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, "not-a-jwt", None).await;
    expect_error_close(&mut ws, ErrorCode::AuthFailed).await;

    let forged = mint_token(b"someone-elses-secret", "alice", UNIX_MS_BASE / 1000 + 3_600);
    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, &forged, None).await;
    expect_error_close(&mut ws, ErrorCode::AuthFailed).await;

    // A token whose subject is not a valid user id is refused too.
    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, &token("not a user id", 3_600), None).await;
    expect_error_close(&mut ws, ErrorCode::AuthFailed).await;

    // Nothing reached the hub.
    assert_eq!(server.server.gauges().connections, 0);
    assert_eq!(server.server.gauges().users, 0);
}

#[tokio::test]
async fn expired_token_at_hello_closes_with_4002() {
    let server = start(test_config(), 2).await;
    let expired = mint_token(SECRET, "alice", UNIX_MS_BASE / 1000 - 1);
    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, &expired, None).await;
    let message = expect_error_close(&mut ws, ErrorCode::TokenExpired).await;
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn token_expiring_while_connected_closes_with_4002() {
    let server = start(test_config(), 3).await;
    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, &token("alice", 1), None).await;
    let welcome = expect_welcome(&mut ws).await;
    assert_eq!(welcome.head, 0);
    // Still delivering before expiry.
    server
        .notifier
        .publish("alice", "run-1", EventKind::AgentStarted, &json!({"n": 1}))
        .unwrap();
    assert_eq!(expect_event(&mut ws).await.0, 1);
    let started = tokio::time::Instant::now();
    expect_error_close(&mut ws, ErrorCode::TokenExpired).await;
    assert!(started.elapsed() < std::time::Duration::from_millis(2_500));
    // The hub forgot the connection.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(server.server.gauges().connections, 0);
}

#[tokio::test]
async fn non_json_first_frame_is_a_bad_frame() {
    let server = start(test_config(), 4).await;
    let mut ws = ws_connect(&server).await;
    ws.send(Message::text("{not json")).await.unwrap();
    expect_error_close(&mut ws, ErrorCode::BadFrame).await;
}

#[tokio::test]
async fn ping_before_hello_is_a_bad_frame() {
    let server = start(test_config(), 5).await;
    let mut ws = ws_connect(&server).await;
    send_frame(&mut ws, &ClientFrame::Ping { id: 1 }).await;
    let message = expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    assert!(message.contains("hello"), "{message}");
}

#[tokio::test]
async fn binary_and_oversized_frames_are_bad_frames() {
    let server = start(test_config(), 6).await;
    let mut ws = ws_connect(&server).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    expect_error_close(&mut ws, ErrorCode::BadFrame).await;

    let mut ws = ws_connect(&server).await;
    let huge = format!(r#"{{"type":"hello","token":"{}"}}"#, "x".repeat(20 * 1024));
    ws.send(Message::text(huge)).await.unwrap();
    let message = expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    assert!(message.contains("frame_bytes_max"), "{message}");

    // After hello: garbage, a second hello and an oversized frame all close with 4004.
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    ws.send(Message::text("[1,2,3]")).await.unwrap();
    expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    send_hello(&mut ws, &token("alice", 3_600), None).await;
    expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    ws.send(Message::text("y".repeat(20 * 1024))).await.unwrap();
    expect_error_close(&mut ws, ErrorCode::BadFrame).await;
}

/// What the WebSocket layer itself refuses is malformed input too: a text frame that is not
/// UTF-8, or a frame with reserved bits set, gets `bad_frame` and 4004, not a silent drop.
#[tokio::test]
async fn frames_that_break_the_websocket_protocol_are_bad_frames() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = start(test_config(), 9).await;
    let not_utf8 = || Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    let mut ws = ws_connect(&server).await;
    ws.send(Message::Frame(not_utf8())).await.unwrap();
    let message = expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    assert!(message.contains("UTF-8"), "{message}");

    let (mut ws, _) = connect_user(&server, "alice", None).await;
    ws.send(Message::Frame(not_utf8())).await.unwrap();
    expect_error_close(&mut ws, ErrorCode::BadFrame).await;

    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let mut reserved = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    reserved.header_mut().rsv1 = true;
    ws.send(Message::Frame(reserved)).await.unwrap();
    let message = expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    assert!(message.contains("not a valid WebSocket frame"), "{message}");
}

/// RFC 6455 §5.5.1: a close frame is answered with one, before and after `hello`.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let server = start(test_config(), 10).await;
    let before_hello = ws_connect(&server).await;
    let (after_hello, _) = connect_user(&server, "alice", None).await;
    for mut ws in [before_hello, after_hello] {
        ws.send(Message::Close(None)).await.unwrap();
        assert!(
            matches!(next_seen(&mut ws).await, Seen::Close(_)),
            "the close was not answered"
        );
    }
}

#[tokio::test]
async fn resume_beyond_head_is_a_bad_frame() {
    let server = start(test_config(), 7).await;
    let (_keep, welcome) = connect_user(&server, "alice", None).await;
    let mut ws = ws_connect(&server).await;
    send_hello(
        &mut ws,
        &token("alice", 3_600),
        Some(Resume {
            epoch: welcome.epoch,
            after: 5,
        }),
    )
    .await;
    let message = expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    assert!(message.contains("beyond head"), "{message}");
}

#[tokio::test]
async fn no_hello_closes_with_4008_and_pings_get_pongs() {
    let server = start(test_config(), 8).await;
    let mut ws = ws_connect(&server).await;
    let started = tokio::time::Instant::now();
    let message = expect_error_close(&mut ws, ErrorCode::HelloTimeout).await;
    assert!(message.contains("hello_timeout_ms 200"), "{message}");
    let waited = started.elapsed();
    assert!(waited >= std::time::Duration::from_millis(150), "{waited:?}");
    assert!(waited < std::time::Duration::from_millis(2_000), "{waited:?}");

    let (mut ws, _) = connect_user(&server, "alice", None).await;
    send_frame(&mut ws, &ClientFrame::Ping { id: 42 }).await;
    assert_eq!(next_frame(&mut ws).await, ServerFrame::Pong { id: 42 });

    let text = server.server.metrics_text();
    assert!(
        text.contains("herald_disconnects_total{code=\"hello_timeout\"} 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn silent_client_is_closed_with_idle_timeout() {
    let mut config = test_config();
    config.heartbeat_interval_ms = 100;
    config.idle_timeout_ms = 300;
    let server = start(config, 9).await;
    // The client says hello, then neither reads nor sends. tungstenite answers pings only while
    // reading, so the server hears nothing and must give up on it.
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    expect_error_close(&mut ws, ErrorCode::IdleTimeout).await;
}

#[tokio::test]
async fn with_a_token_audience_only_tokens_naming_it_connect() {
    let mut config = test_config();
    config.token_audience = Some("herald".into());
    let server = start(config, 9).await;
    let exp = UNIX_MS_BASE / 1000 + 3_600;
    let for_billing = herald_core::auth::mint_token_for_audience(SECRET, "alice", exp, Some("billing"));
    for token in [mint_token(SECRET, "alice", exp), for_billing] {
        let mut ws = ws_connect(&server).await;
        send_hello(&mut ws, &token, None).await;
        let message = expect_error_close(&mut ws, ErrorCode::AuthFailed).await;
        assert!(message.to_lowercase().contains("aud"), "{message}");
    }
    let mut ws = ws_connect(&server).await;
    let for_herald = herald_core::auth::mint_token_for_audience(SECRET, "alice", exp, Some("herald"));
    send_hello(&mut ws, &for_herald, None).await;
    assert_eq!(expect_welcome(&mut ws).await.user, "alice");
}

/// RFC 7519 NumericDate may have a fraction (Python's `time.time() + 3600`): such an `exp` is
/// floored, not refused for good; a negative one is still `auth_failed`.
#[tokio::test]
async fn a_decimal_exp_is_accepted_and_floored() {
    let _ = herald_core::auth::HMAC_PROVIDER.install_default();
    let token = |exp: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({ "sub": "alice", "exp": exp, "iat": 1.7e9 }),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let now = (UNIX_MS_BASE / 1000) as f64;
    let server = start(test_config(), 12).await;
    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, &token(json!(now + 3_600.25)), None).await;
    assert_eq!(expect_welcome(&mut ws).await.user, "alice");

    // `now + 0.5` floors to `now`: already expired, a fresh token helps.
    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, &token(json!(now + 0.5)), None).await;
    expect_error_close(&mut ws, ErrorCode::TokenExpired).await;

    let mut ws = ws_connect(&server).await;
    send_hello(&mut ws, &token(json!(-1.5)), None).await;
    expect_error_close(&mut ws, ErrorCode::AuthFailed).await;
}

/// After an oversized frame the socket cannot be read and lingers unread; before a welcome that
/// lasts no longer than `hello_timeout_ms`, not `idle_timeout_ms`.
#[tokio::test]
async fn an_unwelcomed_socket_lingers_no_longer_than_the_hello_timeout() {
    let mut config = test_config();
    config.hello_timeout_ms = 200;
    config.idle_timeout_ms = 10_000;
    let server = start(config, 13).await;
    let mut ws = ws_connect(&server).await;
    ws.send(Message::text("x".repeat(20 * 1024))).await.unwrap();
    expect_error_close(&mut ws, ErrorCode::BadFrame).await;
    assert_released_soon(&server, tokio::time::Instant::now()).await;
}

/// Waits until no connection task is left and fails if that took 2 s or more from `since`:
/// far below the timeouts these tests set long (idle, write) and above the hello timeout.
async fn assert_released_soon(server: &TestServer, since: tokio::time::Instant) {
    wait_for_metric(server, "herald_connection_tasks", 0).await;
    assert!(
        since.elapsed() < std::time::Duration::from_millis(2_000),
        "held {:?}",
        since.elapsed()
    );
}

/// A refused hello on a socket that stays readable: the server reads for the client's close
/// reply, and a peer that never sends one (nor anything else) is held no longer than
/// `hello_timeout_ms` either, not the whole `write_timeout_ms`.
#[tokio::test]
async fn a_refused_peer_that_never_replies_to_the_close_is_held_no_longer_than_the_hello_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    config.hello_timeout_ms = 200;
    config.idle_timeout_ms = 10_000;
    config.write_timeout_ms = 10_000;
    let server = start(config, 14).await;
    // A raw WebSocket, so that nothing answers the server's close frame.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let upgrade = format!(
        "GET /v1/ws HTTP/1.1\r\nhost: {}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.addr
    );
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "the upgrade is answered");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    let hello = br#"{"type":"hello","token":"not-a-jwt"}"#;
    // A final text frame, masked with the all-zero key (the payload goes as it is).
    let mut frame = vec![0x81, 0x80 | hello.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(hello);
    stream.write_all(&frame).await.unwrap();
    wait_for_metric(&server, "herald_disconnects_total{code=\"auth_failed\"}", 1).await;
    assert_released_soon(&server, tokio::time::Instant::now()).await;
    drop(stream);
}
