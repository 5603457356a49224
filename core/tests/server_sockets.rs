//! Sockets before and beside the WebSocket protocol, over real loopback sockets: the HTTP
//! phase's request deadline (`http_request_timeout_ms`) closes silent, slow and idle sockets,
//! and `sockets_max` refuses sockets beyond it. Without them, a peer could hold any number of
//! sockets open for as long as it liked.

mod common;

use common::*;
use herald_core::protocol::EventKind;
use herald_core::server::ServerConfig;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const REQUEST_TIMEOUT_MS: u64 = 300;

fn config() -> ServerConfig {
    let mut config = test_config();
    config.http_request_timeout_ms = REQUEST_TIMEOUT_MS;
    config
}

/// Waits until the server ends `stream` (EOF or reset) and returns how long that took; fails if
/// it is still open after `WAIT`.
async fn closed_by_server(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let read = tokio::time::timeout_at(start + WAIT, stream.read(&mut buf))
            .await
            .expect("the server closes the socket within WAIT");
        match read {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn a_silent_socket_is_closed_after_the_request_timeout() {
    let server = start(config(), 40).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let after = closed_by_server(&mut stream).await;
    assert!(
        after >= Duration::from_millis(REQUEST_TIMEOUT_MS - 50),
        "closed after {after:?}, before http_request_timeout_ms"
    );
    assert_eq!(metric(&server, "herald_http_request_timeouts_total"), 1);
}

#[tokio::test]
async fn a_request_sent_one_byte_at_a_time_is_closed_while_it_trickles() {
    let server = start(config(), 41).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = publish_request("alice", 1);
    let (mut read_half, mut write_half) = stream.split();
    let trickle = async {
        // 50 ms per byte: the request would take far longer than the timeout to arrive.
        for byte in request.as_bytes() {
            if write_half.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut buf = [0u8; 64];
    tokio::select! {
        () = trickle => panic!("the whole request trickled in without the socket being closed"),
        read = tokio::time::timeout(WAIT, read_half.read(&mut buf)) => {
            let read = read.expect("closed within WAIT");
            assert!(matches!(read, Ok(0) | Err(_)), "expected the socket closed, got {read:?}");
        }
    }
    assert_eq!(metric(&server, "herald_http_request_timeouts_total"), 1);
    assert_eq!(metric(&server, "herald_published_total"), 0);
}

#[tokio::test]
async fn a_kept_alive_publisher_is_served_while_it_publishes_and_closed_once_idle() {
    let server = start(config(), 42).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Eight publishes 150 ms apart: 1.2 s on one connection, four times the timeout.
    for n in 1..=8 {
        stream.write_all(publish_request("alice", n).as_bytes()).await.unwrap();
        let responses = read_responses(&mut stream, 1).await;
        assert_eq!(responses.len(), 1, "publish {n} was answered");
        assert_eq!(responses[0].0, 201, "{}", responses[0].1);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for seq in 1..=8 {
        assert_eq!(expect_event(&mut ws).await.0, seq);
    }
    closed_by_server(&mut stream).await;
    assert_eq!(metric(&server, "herald_http_request_timeouts_total"), 1);
}

/// A peer that pipelines requests and never reads the answers stalls the server in a write,
/// where no read comes to see the deadline; the write side is held to it too.
#[tokio::test]
async fn a_peer_that_never_reads_its_answers_is_closed_after_the_request_timeout() {
    let server = start(config(), 45).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 * 1024).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    // Far more answers than the peer's receive window and the server's send buffer hold.
    let requests = "GET /metrics HTTP/1.1\r\nHost: herald\r\n\r\n".repeat(4_000);
    let start = Instant::now();
    let write = tokio::time::timeout(WAIT, stream.write_all(requests.as_bytes())).await;
    assert!(write.is_ok(), "the requests were taken in, or refused, within WAIT");
    while metric(&server, "herald_http_request_timeouts_total") == 0 {
        assert!(start.elapsed() < WAIT, "the stalled socket was never timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&server, "herald_http_request_timeouts_total"), 1);
    while metric(&server, "herald_sockets_open") != 0 {
        assert!(start.elapsed() < WAIT, "the stalled socket still holds its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_websocket_is_not_bound_by_the_request_timeout() {
    let server = start(config(), 43).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    tokio::time::sleep(Duration::from_millis(3 * REQUEST_TIMEOUT_MS)).await;
    server
        .notifier
        .publish("alice", "run-1", EventKind::AgentStarted, &json!({}))
        .unwrap();
    assert_eq!(expect_event(&mut ws).await.0, 1);
    assert_eq!(metric(&server, "herald_http_request_timeouts_total"), 0);
}

#[tokio::test]
async fn sockets_beyond_sockets_max_are_closed_at_once_and_counted() {
    let mut config = test_config();
    config.sockets_max = 2;
    let server = start(config, 44).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    let after = closed_by_server(&mut refused).await;
    assert!(
        after < Duration::from_millis(test_config().http_request_timeout_ms),
        "refused at once, not by a timeout"
    );
    assert_eq!(metric(&server, "herald_sockets_refused_total"), 1);
    assert_eq!(metric(&server, "herald_sockets_open"), 2);
    // The open ones are untouched: the WebSocket still gets its events.
    server
        .notifier
        .publish("alice", "run-1", EventKind::AgentStarted, &json!({}))
        .unwrap();
    assert_eq!(expect_event(&mut ws).await.0, 1);
    // A closed socket makes room for the next.
    drop(silent);
    let deadline = Instant::now() + WAIT;
    while metric(&server, "herald_sockets_open") > 1 {
        assert!(Instant::now() < deadline, "the dropped socket's slot came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_bob, welcome) = connect_user(&server, "bob", None).await;
    assert_eq!(welcome.user, "bob");
}

/// A request head that never ends would have hyper grow its read buffer to its own default of
/// about 400 KiB per socket, for as long as `http_request_timeout_ms`. The head is bounded by
/// `HTTP_HEAD_BYTES_MAX`: the socket is answered 431 and closed as soon as that many bytes of
/// head arrived, long before its deadline; a head of half the bound is served.
#[tokio::test]
async fn a_request_head_beyond_http_head_bytes_max_is_answered_431_and_closed() {
    use herald_core::server::HTTP_HEAD_BYTES_MAX;
    let mut config = test_config();
    config.http_request_timeout_ms = 60_000;
    let server = start(config, 42).await;
    // Exactly the bound, and no end of head: every byte is read, so the close is a FIN, not a
    // reset that could overtake the answer.
    let mut head = b"GET /healthz HTTP/1.1\r\nhost: herald\r\nx-padding: ".to_vec();
    head.resize(HTTP_HEAD_BYTES_MAX, b'a');
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&head).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the socket is closed long before http_request_timeout_ms")
        .expect("an answer, then end of stream");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "answer: {answer}");
    // A head of half the bound is an ordinary request.
    let mut head = b"GET /healthz HTTP/1.1\r\nhost: herald\r\nx-padding: ".to_vec();
    head.resize(HTTP_HEAD_BYTES_MAX / 2, b'a');
    head.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&head).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "answer: {answer}");
}
