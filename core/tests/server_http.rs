//! The HTTP API over real loopback sockets: publish (idempotency, every error status), health
//! and Prometheus metrics.

mod common;

use common::*;
use herald_core::protocol::EventKind;
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn http_publish_is_delivered_and_idempotent() {
    let server = start(test_config(), 20).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let body = json!({"run": "run-7", "kind": "tool_executing", "data": {"tool": "search"}, "idempotency_key": "k-1"});
    let (status, reply) = http_publish(server.addr, "alice", &body).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["seq"], 1);
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    match next_frame(&mut ws).await {
        herald_core::protocol::ServerFrame::Event { seq, run, kind, data } => {
            assert_eq!((seq, run.as_str(), kind), (1, "run-7", EventKind::ToolExecuting));
            assert_eq!(data, json!({"tool": "search"}));
        }
        other => panic!("expected the event, got {other:?}"),
    }

    // The retry: same key, same seq, 200, no new event.
    let (status, reply) = http_publish(server.addr, "alice", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"seq": 1, "epoch": epoch}));
    // A different key is a new event.
    let other = json!({"run": "run-7", "kind": "tool_completed", "data": null, "idempotency_key": "k-2"});
    let (status, reply) = http_publish(server.addr, "alice", &other).await;
    assert_eq!((status, reply["seq"].as_u64()), (201, Some(2)));
    assert_eq!(expect_event(&mut ws).await.0, 2, "the duplicate was not delivered");
    // Without a key every publish is new.
    let plain = json!({"run": "run-7", "kind": "agent_completed", "data": {}});
    assert_eq!(http_publish(server.addr, "alice", &plain).await.0, 201);
    assert_eq!(http_publish(server.addr, "alice", &plain).await.0, 201);
    assert_eq!(expect_event(&mut ws).await.0, 3);
    assert_eq!(expect_event(&mut ws).await.0, 4);

    let text = server.server.metrics_text();
    assert!(text.contains("herald_published_total 4\n"), "{text}");
    assert!(text.contains("herald_idempotent_replays_total 1\n"), "{text}");
}

#[tokio::test]
async fn http_publish_errors_have_status_and_json_code() {
    let mut config = test_config();
    config.hub.event_bytes_max = 1024;
    let server = start(config, 21).await;
    let addr = server.addr;
    let path = "/v1/users/alice/events";
    let good = json!({"run": "r", "kind": "agent_started", "data": {}}).to_string();

    let (status, body) = http(addr, "POST", path, None, Some(&good)).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(addr, "POST", path, Some("wrong-key"), Some(&good)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_code(&body), "unauthorized");

    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "malformed"),
        (
            json!({"run": "r", "kind": "agent_started"}).to_string(),
            400,
            "malformed",
        ),
        (
            json!({"run": "r", "kind": "agent_started", "data": {}, "extra": 1}).to_string(),
            400,
            "malformed",
        ),
        (
            json!({"run": "r", "kind": "agent_exploded", "data": {}}).to_string(),
            400,
            "unknown_kind",
        ),
        (
            json!({"run": "bad run", "kind": "agent_started", "data": {}}).to_string(),
            400,
            "invalid_run",
        ),
        (
            json!({"run": "r", "kind": "agent_started", "data": {}, "idempotency_key": ""}).to_string(),
            400,
            "invalid_idempotency_key",
        ),
        // Within the body limit, but the encoded event exceeds event_bytes_max.
        (
            json!({"run": "r", "kind": "agent_started", "data": "x".repeat(1_500)}).to_string(),
            413,
            "too_large",
        ),
        // Beyond the body limit (event_bytes_max + 1024).
        (
            json!({"run": "r", "kind": "agent_started", "data": "x".repeat(4_000)}).to_string(),
            413,
            "too_large",
        ),
    ];
    for (body, want_status, want_code) in &cases {
        let (status, reply) = http(addr, "POST", path, Some(API_KEY), Some(body)).await;
        assert_eq!(status, *want_status, "{body} -> {reply}");
        assert_eq!(error_code(&reply), *want_code, "{body} -> {reply}");
    }
    let (status, reply) = http(addr, "POST", "/v1/users/bad%20user/events", Some(API_KEY), Some(&good)).await;
    assert_eq!((status, error_code(&reply).as_str()), (400, "invalid_user"), "{reply}");

    // Nothing was published by any failed request.
    assert_eq!(server.server.gauges().retained_events, 0);
    let text = server.server.metrics_text();
    for (code, count) in [
        ("unauthorized", 2),
        ("malformed", 3),
        ("unknown_kind", 1),
        ("invalid_run", 1),
        ("invalid_idempotency_key", 1),
        ("too_large", 2),
        ("invalid_user", 1),
        ("shutting_down", 0),
    ] {
        let line = format!("herald_publish_errors_total{{code=\"{code}\"}} {count}\n");
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
}

fn error_code(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    json["error"]["code"].as_str().expect("error.code").to_string()
}

#[tokio::test]
async fn healthz_and_metrics() {
    let server = start(test_config(), 22).await;
    assert_eq!(
        http(server.addr, "GET", "/healthz", None, None).await,
        (200, "ok".into())
    );
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    for n in 0..3 {
        server
            .notifier
            .publish("alice", "run-1", EventKind::AgentThinking, &json!({ "n": n }))
            .unwrap();
    }
    for _ in 0..3 {
        expect_event(&mut ws).await;
    }
    let _ = server
        .notifier
        .publish("bad user", "run-1", EventKind::AgentThinking, &json!({}));
    // Delivery is counted after the write completes; give the task a moment.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (status, text) = http(server.addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    for line in [
        "herald_published_total 3\n",
        "herald_delivered_total 3\n",
        "herald_gaps_total 0\n",
        "herald_connections 1\n",
        "herald_users 1\n",
        "herald_retained_events 3\n",
        "herald_send_queue_depth_max 0\n",
        "herald_publish_errors_total{code=\"invalid_user\"} 1\n",
        "herald_publish_errors_total{code=\"users_full\"} 0\n",
        "herald_disconnects_total{code=\"auth_failed\"} 0\n",
        "herald_delivery_latency_ms_bucket{le=\"+Inf\"} 3\n",
        "herald_delivery_latency_ms_count 3\n",
        "# TYPE herald_delivery_latency_ms histogram\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("herald_retained_bytes "));
    let retained_bytes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("herald_retained_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(retained_bytes > 0);
}

#[tokio::test]
async fn pipelined_publishes_are_answered_in_order_and_delivered_in_order() {
    let server = start(test_config(), 21).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let requests: String = (1..=20).map(|n| publish_request("alice", n)).collect();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let responses = read_responses(&mut stream, 20).await;
    let seqs: Vec<(u16, u64)> = responses
        .iter()
        .map(|(status, body)| {
            (
                *status,
                serde_json::from_str::<serde_json::Value>(body).unwrap()["seq"]
                    .as_u64()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(seqs, (1..=20).map(|seq| (201, seq)).collect::<Vec<_>>());
    for seq in 1..=20 {
        let (got, data) = expect_event(&mut ws).await;
        assert_eq!((got, data["n"].as_u64()), (seq, Some(seq)));
    }
}

#[tokio::test]
async fn a_publisher_waiting_for_each_response_gets_it_on_a_kept_alive_connection() {
    // The server owes its flush until a read finds nothing: a client that waits for each
    // response must still get it (the read for the next request finds nothing and pays it).
    let server = start(test_config(), 22).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    for n in 1..=3 {
        stream.write_all(publish_request("bob", n).as_bytes()).await.unwrap();
        let responses = read_responses(&mut stream, 1).await;
        assert_eq!(responses.len(), 1);
        assert_eq!(responses[0].0, 201, "{}", responses[0].1);
    }
}

#[tokio::test]
async fn answers_to_valid_pipelined_requests_survive_a_malformed_one() {
    let server = start(test_config(), 23).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let requests = format!(
        "{}{}NOT HTTP AT ALL\r\n\r\n",
        publish_request("carol", 1),
        publish_request("carol", 2)
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let responses = read_responses(&mut stream, 3).await;
    assert!(responses.len() >= 2, "{responses:?}");
    assert_eq!((responses[0].0, responses[1].0), (201, 201), "{responses:?}");
    if let Some((status, _)) = responses.get(2) {
        assert_eq!(*status, 400, "{responses:?}");
    }
}

#[tokio::test]
async fn a_body_that_cannot_be_read_is_malformed_not_too_large() {
    let server = start(test_config(), 24).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // A chunk size that is not hexadecimal: the body breaks after its first chunk.
    let request = format!(
        "POST /v1/users/dave/events HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"run\r\nZZ\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let responses = read_responses(&mut stream, 1).await;
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(responses[0].0, 400, "{responses:?}");
    assert!(responses[0].1.contains("\"malformed\""), "{responses:?}");
    let metrics = server.server.metrics_text();
    assert!(
        metrics.contains("herald_publish_errors_total{code=\"malformed\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_publish_errors_total{code=\"too_large\"} 0\n"),
        "{metrics}"
    );
}

/// `RawValue` accepts lone UTF-16 surrogate escapes, which no serde_json client can decode: the
/// publish is refused, and a valid pair is delivered.
#[tokio::test]
async fn data_a_client_cannot_decode_is_invalid_data() {
    let server = start(test_config(), 25).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let path = "/v1/users/alice/events";
    for data in [
        r#""\ud800""#,
        r#""\udc00""#,
        r#""\ud800x""#,
        r#"{"\ud800":1}"#,
        r#"["\ud800\u0041"]"#,
    ] {
        let body = format!(r#"{{"run":"r","kind":"agent_started","data":{data}}}"#);
        let (status, reply) = http(server.addr, "POST", path, Some(API_KEY), Some(&body)).await;
        assert_eq!(
            (status, error_code(&reply).as_str()),
            (400, "invalid_data"),
            "{body} -> {reply}"
        );
    }
    let body = r#"{"run":"r","kind":"agent_started","data":"\ud83d\ude00"}"#;
    let (status, reply) = http(server.addr, "POST", path, Some(API_KEY), Some(body)).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(expect_event(&mut ws).await, (1, json!("\u{1F600}")));
    let text = server.server.metrics_text();
    assert!(
        text.contains("herald_publish_errors_total{code=\"invalid_data\"} 5\n"),
        "{text}"
    );
}

/// serde cannot borrow a string with an escape: the body's ids are `Cow`s, so valid JSON with
/// escaped ids is read as what it means, not refused as malformed.
#[tokio::test]
async fn escaped_ids_and_kinds_are_read_unescaped() {
    let server = start(test_config(), 26).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let path = "/v1/users/alice/events";
    let publish = |body: &'static str| http(server.addr, "POST", path, Some(API_KEY), Some(body));

    let (status, reply) = publish(r#"{"run":"r\u0031","kind":"agent_started","data":null}"#).await;
    assert_eq!(status, 201, "{reply}");
    match next_frame(&mut ws).await {
        herald_core::protocol::ServerFrame::Event { seq, run, kind, .. } => {
            assert_eq!((seq, run.as_str(), kind), (1, "r1", EventKind::AgentStarted));
        }
        other => panic!("expected the event, got {other:?}"),
    }
    let keyed = r#"{"run":"r1","kind":"tool_\u0065xecuting","data":{},"idempotency_key":"k\u002d1"}"#;
    let (status, reply) = publish(keyed).await;
    assert_eq!(status, 201, "{reply}");
    // The same key, unescaped, is the same key.
    let plain = r#"{"run":"r1","kind":"tool_executing","data":{},"idempotency_key":"k-1"}"#;
    let (status, reply) = publish(plain).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(expect_event(&mut ws).await.0, 2);

    let (status, reply) = publish(r#"{"run":"r1","kind":"agent_\u0065xploded","data":null}"#).await;
    assert_eq!((status, error_code(&reply).as_str()), (400, "unknown_kind"), "{reply}");
    assert!(reply.contains("agent_exploded"), "{reply}");
    let (status, reply) = publish(r#"{"run":"r\u0020","kind":"agent_started","data":null}"#).await;
    assert_eq!((status, error_code(&reply).as_str()), (400, "invalid_run"), "{reply}");
}

/// A key reused for another event would lose that event in silence: 409, nothing published.
#[tokio::test]
async fn an_idempotency_key_reused_for_another_event_is_a_409() {
    let server = start(test_config(), 27).await;
    let (mut ws, _) = connect_user(&server, "alice", None).await;
    let body = json!({"run": "run-1", "kind": "tool_executing", "data": {"step": 1}, "idempotency_key": "k-1"});
    assert_eq!(http_publish(server.addr, "alice", &body).await.0, 201);
    for changed in [
        json!({"run": "run-1", "kind": "tool_executing", "data": {"step": 2}, "idempotency_key": "k-1"}),
        json!({"run": "run-2", "kind": "tool_executing", "data": {"step": 1}, "idempotency_key": "k-1"}),
        json!({"run": "run-1", "kind": "tool_completed", "data": {"step": 1}, "idempotency_key": "k-1"}),
    ] {
        let (status, reply) = http_publish(server.addr, "alice", &changed).await;
        assert_eq!(status, 409, "{changed} -> {reply}");
        assert_eq!(reply["error"]["code"], "idempotency_conflict", "{reply}");
    }
    let (status, reply) = http_publish(server.addr, "alice", &body).await;
    assert_eq!((status, reply["seq"].as_u64()), (200, Some(1)));
    assert_eq!(expect_event(&mut ws).await.0, 1);
    assert_eq!(server.server.gauges().retained_events, 1);
    let text = server.server.metrics_text();
    assert!(
        text.contains("herald_publish_errors_total{code=\"idempotency_conflict\"} 3\n"),
        "{text}"
    );
}

/// A user path segment that is not UTF-8 names no valid user: `invalid_user`, as PROTOCOL says.
#[tokio::test]
async fn a_user_path_segment_that_is_not_utf8_is_an_invalid_user() {
    let server = start(test_config(), 28).await;
    let good = json!({"run": "r", "kind": "agent_started", "data": {}}).to_string();
    let (status, reply) = http(server.addr, "POST", "/v1/users/%FF/events", Some(API_KEY), Some(&good)).await;
    assert_eq!((status, error_code(&reply).as_str()), (400, "invalid_user"), "{reply}");
    let text = server.server.metrics_text();
    assert!(
        text.contains("herald_publish_errors_total{code=\"invalid_user\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("herald_publish_errors_total{code=\"malformed\"} 0\n"),
        "{text}"
    );
}

/// Sends the headers of a publish and half its body, then nothing: the answer is the 408 that
/// PROTOCOL.md promises (retry with the idempotency key), whichever deadline ends the read.
async fn publish_with_half_a_body(server: &TestServer) -> (u16, String) {
    let body = json!({"run": "r", "kind": "agent_started", "data": {}}).to_string();
    let (sent, _) = body.split_at(body.len() / 2);
    let request = format!(
        "POST /v1/users/alice/events HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{sent}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut responses = read_responses(&mut stream, 1).await;
    assert_eq!(responses.len(), 1, "the cut-short publish was answered");
    responses.remove(0)
}

/// The socket's `http_request_timeout_ms` (here shorter than `write_timeout_ms`) ends the body
/// read with a `TimedOut` error: a 408, not the 400 `malformed` that says "do not retry".
#[tokio::test]
async fn a_body_cut_short_by_the_request_timeout_is_a_408() {
    let mut config = test_config();
    config.http_request_timeout_ms = 300;
    config.write_timeout_ms = 5_000;
    let server = start(config, 29).await;
    let (status, body) = publish_with_half_a_body(&server).await;
    assert_eq!((status, error_code(&body).as_str()), (408, "malformed"), "{body}");
    assert!(body.contains("http_request_timeout_ms"), "{body}");
    let text = server.server.metrics_text();
    assert!(text.contains("herald_http_request_timeouts_total 1\n"), "{text}");
    assert!(
        text.contains("herald_publish_errors_total{code=\"malformed\"} 1\n"),
        "{text}"
    );
}

/// The handler's own bound on the body read, `write_timeout_ms`, when it comes first.
#[tokio::test]
async fn a_body_cut_short_by_the_write_timeout_is_a_408() {
    let mut config = test_config();
    config.write_timeout_ms = 300;
    let server = start(config, 30).await;
    let (status, body) = publish_with_half_a_body(&server).await;
    assert_eq!((status, error_code(&body).as_str()), (408, "malformed"), "{body}");
    assert!(body.contains("write_timeout_ms"), "{body}");
}

/// Every error body has the JSON shape, also the ones axum would answer by itself: a method
/// the path does not take, and a `GET /v1/ws` that is no WebSocket upgrade.
#[tokio::test]
async fn framework_refusals_have_the_json_error_shape() {
    let server = start(test_config(), 31).await;
    for (method, path) in [
        ("GET", "/v1/users/alice/events"),
        ("DELETE", "/v1/users/alice/events"),
        ("POST", "/healthz"),
        ("POST", "/metrics"),
        ("POST", "/v1/ws"),
    ] {
        let (status, body) = http(server.addr, method, path, Some(API_KEY), None).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (405, "method_not_allowed"),
            "{method} {path}: {body}"
        );
    }
    let (status, body) = http(server.addr, "GET", "/v1/ws", None, None).await;
    assert_eq!((status, error_code(&body).as_str()), (400, "bad_upgrade"), "{body}");
    assert!(body.contains("upgrade"), "{body}");
    // Neither is a publish: no publish error is counted.
    let text = server.server.metrics_text();
    assert!(
        text.contains("herald_publish_errors_total{code=\"malformed\"} 0\n"),
        "{text}"
    );
}

/// RFC 7235: the scheme is case-insensitive; a publisher that sends `bearer` is let in.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let server = start(test_config(), 32).await;
    let body = json!({"run": "r", "kind": "agent_started", "data": {}}).to_string();
    let request = format!(
        "POST /v1/users/alice/events HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\
         authorization: bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let responses = read_responses(&mut stream, 1).await;
    assert_eq!(responses.first().map(|r| r.0), Some(201), "{responses:?}");
}
