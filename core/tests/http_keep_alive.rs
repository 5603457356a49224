//! Every response reaches a client that keeps its connection open and waits for it. The socket
//! owes hyper's flush while more requests may follow (pipelined answers leave together); a
//! response hyper writes without reading anything after it (a GET, or a refusal sent before
//! the body is read) must not wait in that debt until the request timeout.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn request(method: &str, path: &str, authorization: Option<&str>, body: &str) -> String {
    let authorization = authorization.map_or(String::new(), |key| format!("Authorization: Bearer {key}\r\n"));
    format!(
        "{method} {path} HTTP/1.1\r\nHost: herald\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends each request on one kept-alive connection and waits for its answer before the next
/// (`read_responses` gives up after `WAIT`, far below the 30 s request timeout).
async fn ask_one_by_one(server: &TestServer, requests: &[(String, u16)]) {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for (request, expected) in requests {
        stream.write_all(request.as_bytes()).await.unwrap();
        let responses = read_responses(&mut stream, 1).await;
        assert_eq!(responses.len(), 1, "the connection ended before answering {request:?}");
        assert_eq!(responses[0].0, *expected, "{request:?}: {}", responses[0].1);
    }
}

#[tokio::test]
async fn get_requests_are_answered_on_a_kept_alive_connection() {
    let server = start(test_config(), 41).await;
    let healthz = request("GET", "/healthz", None, "");
    let metrics = request("GET", "/metrics", None, "");
    let missing = request("GET", "/no-such-path", None, "");
    ask_one_by_one(
        &server,
        &[(healthz.clone(), 200), (metrics, 200), (missing, 404), (healthz, 200)],
    )
    .await;
}

#[tokio::test]
async fn refusals_sent_before_the_body_is_read_are_answered_on_a_kept_alive_connection() {
    let server = start(test_config(), 42).await;
    let body = serde_json::json!({"run": "r1", "kind": "agent_started", "data": null}).to_string();
    let wrong_key = request("POST", "/v1/users/alice/events", Some("wrong-key"), &body);
    ask_one_by_one(&server, &[(wrong_key, 401)]).await;
    let accepted = request("POST", "/v1/users/alice/events", Some(API_KEY), &body);
    ask_one_by_one(&server, &[(accepted.clone(), 201), (accepted, 201)]).await;
}

#[tokio::test]
async fn an_oversized_publish_is_refused_on_a_kept_alive_connection() {
    let config = test_config();
    let too_long = "x".repeat(config.publish_body_bytes_max() + 1);
    let server = start(config, 43).await;
    let body = format!(r#"{{"run":"r1","kind":"agent_started","data":"{too_long}"}}"#);
    let oversized = request("POST", "/v1/users/alice/events", Some(API_KEY), &body);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(oversized.as_bytes()).await.unwrap();
    let responses = read_responses(&mut stream, 1).await;
    assert_eq!(responses.first().map(|r| r.0), Some(413), "{responses:?}");
}
