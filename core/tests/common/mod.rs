//! Shared helpers for the server integration tests: a server on a loopback port, a raw
//! WebSocket client speaking protocol v1, and a minimal HTTP/1.1 client.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use herald_core::auth::mint_token;
use herald_core::clock::TokioClock;
use herald_core::notifier::Notifier;
use herald_core::protocol::{ClientFrame, ErrorCode, Resume, ServerFrame};
use herald_core::rng::SeededRng;
use herald_core::server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"test-jwt-secret";
pub const API_KEY: &str = "test-api-key-0123456789";
/// The wall-clock base of every test server's clock (a whole second, so expiry is exact).
pub const UNIX_MS_BASE: u64 = 1_700_000_000_000;
/// Bound on every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(5);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Small timeouts so the suite is fast.
pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig::new(SECRET.to_vec(), API_KEY.to_string());
    config.hello_timeout_ms = 200;
    config.heartbeat_interval_ms = 1_000;
    config.idle_timeout_ms = 3_000;
    config.write_timeout_ms = 1_000;
    config.tick_interval_ms = 100;
    config
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server,
    pub notifier: Notifier,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }
}

/// Starts a server with `config` on a fresh loopback port. `seed` seeds its epochs and ids.
pub async fn start(config: ServerConfig, seed: u64) -> TestServer {
    let server = Server::new(config, TokioClock::shared(UNIX_MS_BASE), SeededRng::new(seed)).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let notifier = server.notifier();
    let task = tokio::spawn(server.clone().serve(listener));
    TestServer {
        addr,
        server,
        notifier,
        task,
    }
}

/// A token for `user` valid for `ttl_secs` from the test clock's start.
pub fn token(user: &str, ttl_secs: u64) -> String {
    mint_token(SECRET, user, UNIX_MS_BASE / 1000 + ttl_secs)
}

pub async fn ws_connect(server: &TestServer) -> Ws {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.url()))
        .await
        .expect("connect in time")
        .expect("websocket handshake");
    ws
}

pub async fn send_frame(ws: &mut Ws, frame: &ClientFrame) {
    ws.send(Message::text(serde_json::to_string(frame).unwrap()))
        .await
        .unwrap();
}

pub async fn send_hello(ws: &mut Ws, token: &str, resume: Option<Resume>) {
    send_frame(
        ws,
        &ClientFrame::Hello {
            token: token.to_string(),
            resume,
        },
    )
    .await;
}

/// What a client sees next (WebSocket pings/pongs are skipped).
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Frame(ServerFrame),
    Close(Option<u16>),
    /// The stream ended (or errored) without a close frame.
    Ended,
}

pub async fn next_seen(ws: &mut Ws) -> Seen {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within WAIT");
        match message {
            None | Some(Err(_)) => return Seen::Ended,
            Some(Ok(Message::Text(text))) => {
                let frame: ServerFrame = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("server sent a frame that does not parse: {text}: {e}"));
                return Seen::Frame(frame);
            }
            Some(Ok(Message::Close(frame))) => return Seen::Close(frame.map(|f| u16::from(f.code))),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }
}

pub async fn next_frame(ws: &mut Ws) -> ServerFrame {
    match next_seen(ws).await {
        Seen::Frame(frame) => frame,
        other => panic!("expected a frame, saw {other:?}"),
    }
}

/// Welcome fields, asserting the first frame is a welcome.
pub struct Welcome {
    pub user: String,
    pub connection: String,
    pub epoch: String,
    pub head: u64,
    pub recovered: bool,
}

pub async fn expect_welcome(ws: &mut Ws) -> Welcome {
    match next_frame(ws).await {
        ServerFrame::Welcome {
            user,
            connection,
            epoch,
            head,
            recovered,
        } => Welcome {
            user,
            connection,
            epoch,
            head,
            recovered,
        },
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// Connects, says hello and returns the welcome.
pub async fn connect_user(server: &TestServer, user: &str, resume: Option<Resume>) -> (Ws, Welcome) {
    let mut ws = ws_connect(server).await;
    send_hello(&mut ws, &token(user, 3_600), resume).await;
    let welcome = expect_welcome(&mut ws).await;
    assert_eq!(welcome.user, user);
    (ws, welcome)
}

/// Expects an event frame and returns (seq, data).
pub async fn expect_event(ws: &mut Ws) -> (u64, serde_json::Value) {
    match next_frame(ws).await {
        ServerFrame::Event { seq, data, .. } => (seq, data),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Expects `error{code}` followed by a close frame with `code.close_code()`.
pub async fn expect_error_close(ws: &mut Ws, code: ErrorCode) -> String {
    let message = match next_frame(ws).await {
        ServerFrame::Error { code: got, message } => {
            assert_eq!(got, code, "error code (message: {message})");
            message
        }
        other => panic!("expected error {code}, got {other:?}"),
    };
    assert_eq!(next_seen(ws).await, Seen::Close(Some(code.close_code())));
    message
}

/// The value of the unlabelled metric `name` in the server's `/metrics` text.
pub fn metric(server: &TestServer, name: &str) -> u64 {
    let text = server.server.metrics_text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

/// Waits, polling every 10 ms, until the unlabelled metric `name` reads `value`; fails after
/// `WAIT`.
pub async fn wait_for_metric(server: &TestServer, name: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(server, name) != value {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {}, not {value}, after {WAIT:?}",
            metric(server, name)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A minimal HTTP/1.1 request with `Connection: close`; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = bearer.map_or(String::new(), |key| format!("Authorization: Bearer {key}\r\n"));
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // A server may answer (413) before reading the whole body; a failed write is fine then.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response within WAIT");
    let response = String::from_utf8(response).expect("utf-8 response");
    let status: u16 = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

/// `POST /v1/users/{user}/events` with the test API key.
pub async fn http_publish(addr: SocketAddr, user: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = http(
        addr,
        "POST",
        &format!("/v1/users/{user}/events"),
        Some(API_KEY),
        Some(&body.to_string()),
    )
    .await;
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON body {text:?}: {e}"));
    (status, json)
}

/// Reads `count` HTTP/1.1 responses (status, body) from a keep-alive stream, in order.
pub async fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<(u16, String)> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut responses = Vec::new();
    while responses.len() < count {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buffer[..end].to_vec()).expect("utf-8 head");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
                let body = String::from_utf8(buffer[end + 4..end + 4 + length].to_vec()).expect("utf-8 body");
                responses.push((status, body));
                buffer.drain(..end + 4 + length);
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the next response within WAIT")
            .expect("read");
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    responses
}

pub fn publish_request(user: &str, n: u64) -> String {
    let body = serde_json::json!({"run": "run-1", "kind": "agent_thinking", "data": {"n": n}}).to_string();
    format!(
        "POST /v1/users/{user}/events HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}
