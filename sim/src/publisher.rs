//! The publisher host: an agent platform publishing lifecycle events through the in-process
//! notifier of the current server life ("the bridge") and through the HTTP API, with retries
//! under an idempotency key. Every call and its outcome are recorded.

use crate::net::{SERVER_HOST, SERVER_PORT};
use crate::recorder::Recorder;
use crate::server_under_test::Publish;
use crate::world::user_name;
use herald_core::protocol::EventKind;
use herald_properties::history::{is_ambiguous_failure, Observation, PublishOutcome, SECRET_PREFIX};
use herald_properties::scenario::{Kind, Timeouts, Via, HTTP_RETRY_PAUSE_MS};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use turmoil::net::TcpStream;

/// Largest HTTP response the publisher reads; anything longer is a failure.
const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Capacity a response is read into at a time (answers are a few hundred bytes).
const RESPONSE_BYTES_READ: usize = 1024;

/// One publish step (a single event or a burst), expanded into events by the stepping loop.
#[derive(Debug)]
pub struct PublishCommand {
    /// (publish id, event id, kind) per event, in publish order.
    pub publishes: Vec<(u64, String, Kind)>,
    pub user: u32,
    pub run: u32,
    pub payload_bytes: u32,
    pub via: Via,
}

type CurrentPublisher = Arc<dyn Fn() -> Option<Arc<dyn Publish>> + Send + Sync>;

#[derive(Clone)]
pub struct PublisherContext {
    pub recorder: Recorder,
    pub timeouts: Timeouts,
    pub api_key: String,
    /// The notifier of the current server life (the last one started, even if it is down).
    pub current: CurrentPublisher,
}

/// Runs the publisher host until the world ends. Notifier publishes run inline, in step order;
/// HTTP publishes run as tasks, as concurrent requests from an agent platform would.
pub async fn run(ctx: PublisherContext, mut commands: mpsc::Receiver<PublishCommand>) {
    while let Some(command) = commands.recv().await {
        match command.via {
            Via::Notifier => publish_all(&ctx, command).await,
            Via::Http { .. } => {
                let ctx = ctx.clone();
                tokio::task::spawn_local(async move { publish_all(&ctx, command).await });
            }
        }
    }
}

async fn publish_all(ctx: &PublisherContext, command: PublishCommand) {
    let user = user_name(command.user);
    let run = format!("run-{}", command.run);
    // One keep-alive connection per publish step, reused by its events in order, as an agent
    // platform's pooled HTTP client would; any failure drops it and the next attempt connects.
    let mut connection: Option<TcpStream> = None;
    for (publish, event_id, kind) in &command.publishes {
        let data = EventData {
            event_id,
            user: &user,
            pad_bytes: command.payload_bytes as usize,
        };
        let (idempotency_key, retries) = match command.via {
            Via::Http {
                idempotency_key: true,
                retries,
            } => (Some(event_id.clone()), retries),
            _ => (None, 0),
        };
        for attempt in 0..=u32::from(retries) {
            ctx.recorder.record(Observation::PublishCalled {
                publish: *publish,
                event_id: event_id.clone(),
                user: user.clone(),
                run: run.clone(),
                kind: kind.as_str().to_string(),
                via: via_name(command.via).to_string(),
                idempotency_key: idempotency_key.clone(),
                attempt,
                payload_bytes: command.payload_bytes as u64,
            });
            let outcome = match command.via {
                Via::Notifier => publish_in_process(ctx, &user, &run, *kind, &data.value()),
                Via::Http { .. } => {
                    publish_http(
                        ctx,
                        &mut connection,
                        &user,
                        &run,
                        *kind,
                        &data,
                        idempotency_key.as_deref(),
                    )
                    .await
                }
            };
            let retry = matches!(&outcome, PublishOutcome::Failed { code, .. } if is_retryable(code));
            ctx.recorder.record(Observation::PublishReturned {
                publish: *publish,
                event_id: event_id.clone(),
                outcome,
            });
            if !retry || attempt == u32::from(retries) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(HTTP_RETRY_PAUSE_MS * u64::from(attempt + 1))).await;
        }
    }
}

/// An event's `data`: its id, the intended user and a per-user secret ([`SECRET_PREFIX`] + user),
/// padded to the step's size. The isolation checker looks for these markers
/// (`herald_properties::history::Markers`) of another user in every frame a client cannot read
/// field by field: unparsed and binary frames (scanned whole by the client before the history
/// truncates them), error messages and close reasons. The HTTP path sends it as text (ids are
/// plain ASCII, see `validate_id`), the notifier path as the `Value` an application would hand
/// the bridge; both spell the same JSON, keys in `serde_json`'s order.
struct EventData<'a> {
    event_id: &'a str,
    user: &'a str,
    pad_bytes: usize,
}

impl EventData<'_> {
    fn value(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.event_id,
            "user": self.user,
            "secret": format!("{SECRET_PREFIX}{}", self.user),
            "pad": "x".repeat(self.pad_bytes),
        })
    }

    /// The `POST /v1/users/{user}/events` body, byte for byte what serializing
    /// `{"run", "kind", "data": self.value(), "idempotency_key"}` as a `Value` gives.
    fn http_body(&self, run: &str, kind: Kind, idempotency_key: Option<&str>) -> String {
        use std::fmt::Write;
        let (id, user) = (self.event_id, self.user);
        let mut body = String::with_capacity(self.pad_bytes + 160);
        let _ = write!(body, r#"{{"data":{{"id":"{id}","pad":""#);
        body.push_str(&"x".repeat(self.pad_bytes));
        let _ = write!(body, r#"","secret":"{SECRET_PREFIX}{user}","user":"{user}"}}"#);
        if let Some(key) = idempotency_key {
            let _ = write!(body, r#","idempotency_key":"{key}""#);
        }
        let _ = write!(body, r#","kind":"{}","run":"{run}"}}"#, kind.as_str());
        body
    }
}

fn via_name(via: Via) -> &'static str {
    match via {
        Via::Notifier => "notifier",
        Via::Http {
            idempotency_key: false, ..
        } => "http",
        Via::Http {
            idempotency_key: true, ..
        } => "http+key",
    }
}

/// Transient failures worth retrying under the same idempotency key: the ambiguous ones, and
/// those that certainly created nothing but may pass later.
fn is_retryable(code: &str) -> bool {
    is_ambiguous_failure(code) || matches!(code, "connect_failed" | "shutting_down")
}

pub fn kind_of(kind: Kind) -> EventKind {
    EventKind::parse(kind.as_str()).expect("scenario kinds mirror protocol kinds")
}

fn publish_in_process(
    ctx: &PublisherContext,
    user: &str,
    run: &str,
    kind: Kind,
    data: &serde_json::Value,
) -> PublishOutcome {
    let Some(publisher) = (ctx.current)() else {
        return PublishOutcome::Failed {
            code: "unavailable".into(),
            message: "no server life has started yet: there is no notifier".into(),
        };
    };
    match publisher.publish(user, run, kind_of(kind), data, None) {
        Ok(published) => PublishOutcome::Published {
            seq: published.seq,
            epoch: published.epoch,
            duplicate: published.duplicate,
        },
        Err(error) => PublishOutcome::Failed {
            code: error.code().to_string(),
            message: error.to_string(),
        },
    }
}

/// `POST /v1/users/{user}/events` over simulated TCP, on `connection` if it is open (else on a
/// new one, left open for the next event of the step unless the server closes it). Outcomes:
/// the server's answer; or `connect_failed` (never reached the server: not published),
/// `timeout` / `connection_lost` (the request may or may not have been applied: an ambiguous
/// outcome — also when a reused connection turns out to be dead, as for any pooled client).
async fn publish_http(
    ctx: &PublisherContext,
    connection: &mut Option<TcpStream>,
    user: &str,
    run: &str,
    kind: Kind,
    data: &EventData<'_>,
    idempotency_key: Option<&str>,
) -> PublishOutcome {
    let body = data.http_body(run, kind, idempotency_key);
    let request = format!(
        "POST /v1/users/{user}/events HTTP/1.1\r\nHost: {SERVER_HOST}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        ctx.api_key,
        body.len()
    );
    let timeout = Duration::from_millis(ctx.timeouts.publish_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = match connection.take() {
        Some(stream) => stream,
        None => match tokio::time::timeout_at(deadline, TcpStream::connect((SERVER_HOST, SERVER_PORT))).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return failed("connect_failed", format!("connect failed: {error}")),
            Err(_) => return failed("connect_failed", "connect timed out".into()),
        },
    };
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        // `read_buf` appends to the spare capacity: no zero-filled chunk per request.
        let mut response = Vec::with_capacity(RESPONSE_BYTES_READ);
        loop {
            if response.capacity() == response.len() {
                response.reserve(RESPONSE_BYTES_READ);
            }
            let n = stream.read_buf(&mut response).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a whole response",
                ));
            }
            if response.len() > RESPONSE_BYTES_MAX {
                return Err(std::io::Error::other("response larger than RESPONSE_BYTES_MAX"));
            }
            if let Some(complete) = response_complete(&response) {
                return Ok((response, complete));
            }
        }
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => failed(
            "timeout",
            format!(
                "no answer within publish_timeout_ms {}",
                ctx.timeouts.publish_timeout_ms
            ),
        ),
        Ok(Err(error)) => failed("connection_lost", format!("connection lost: {error}")),
        Ok(Ok((response, complete))) => {
            if complete.keep_alive && complete.length == response.len() {
                *connection = Some(stream);
            }
            parse_response(&response)
        }
    }
}

fn failed(code: &str, message: String) -> PublishOutcome {
    PublishOutcome::Failed {
        code: code.into(),
        message,
    }
}

/// A whole response's length in bytes and whether the server keeps the connection open.
struct Complete {
    length: usize,
    keep_alive: bool,
}

/// `Some` once a full response (headers and a `Content-Length` body) has arrived.
fn response_complete(response: &[u8]) -> Option<Complete> {
    let header_end = find(response, b"\r\n\r\n")?;
    let mut length = None;
    let mut closes = false;
    for line in response[..header_end].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = header_value(line, b"content-length:") {
            let parsed = std::str::from_utf8(value).ok().and_then(|v| v.parse::<usize>().ok());
            length = length.or(Some(parsed.unwrap_or(0)));
        } else if let Some(value) = header_value(line, b"connection:") {
            closes |= value.eq_ignore_ascii_case(b"close");
        }
    }
    let length = header_end + 4 + length?;
    (response.len() >= length).then_some(Complete {
        length,
        keep_alive: !closes,
    })
}

/// The trimmed value of a header line if its name (given lowercase, with the colon) matches,
/// in any case.
fn header_value<'r>(line: &'r [u8], name: &[u8]) -> Option<&'r [u8]> {
    let value = line
        .get(..name.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(name))
        .map(|_| &line[name.len()..])?;
    Some(value.trim_ascii())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w[0] == needle[0] && w == needle)
}

fn parse_response(response: &[u8]) -> PublishOutcome {
    let text = String::from_utf8_lossy(response);
    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or("");
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    match status {
        200 | 201 => match (json["seq"].as_u64(), json["epoch"].as_str()) {
            (Some(seq), Some(epoch)) => PublishOutcome::Published {
                seq,
                epoch: epoch.to_string(),
                duplicate: status == 200,
            },
            _ => failed("bad_response", format!("status {status} without seq and epoch: {body}")),
        },
        _ => {
            let code = json["error"]["code"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| match status {
                    401 => "unauthorized".into(),
                    413 => "too_large".into(),
                    503 => "shutting_down".into(),
                    _ => format!("http_{status}"),
                });
            let message = json["error"]["message"].as_str().unwrap_or(body).to_string();
            PublishOutcome::Failed { code, message }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_properties::history::Markers;

    #[test]
    fn the_http_body_is_the_json_of_the_value() {
        let data = EventData {
            event_id: "e-12",
            user: "u3",
            pad_bytes: 5,
        };
        let markers = Markers::scan(&data.value().to_string());
        assert_eq!(
            markers.users.iter().collect::<Vec<_>>(),
            ["u3"],
            "the secret and the user name it"
        );
        assert_eq!(markers.event_ids.iter().collect::<Vec<_>>(), ["e-12"]);
        for key in [None, Some("e-12")] {
            let mut expected = serde_json::json!({ "run": "run-0", "kind": "tool_executing", "data": data.value() });
            if let Some(key) = key {
                expected["idempotency_key"] = serde_json::Value::String(key.to_string());
            }
            assert_eq!(data.http_body("run-0", Kind::ToolExecuting, key), expected.to_string());
        }
    }

    #[test]
    fn a_response_is_complete_only_with_its_whole_body() {
        let head = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n";
        let mut response = head.to_vec();
        response.extend_from_slice(b"{\"seq\"");
        assert!(response_complete(&response).is_none(), "one body byte missing");
        response.push(b'}');
        let complete = response_complete(&response).expect("whole response");
        assert_eq!(complete.length, response.len());
        assert!(
            complete.keep_alive,
            "HTTP/1.1 keeps the connection unless told otherwise"
        );
        assert!(response_complete(b"HTTP/1.1 201 Created\r\ncontent-le").is_none());
    }

    #[test]
    fn a_connection_close_header_ends_reuse() {
        let response = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let complete = response_complete(response).expect("whole response");
        assert!(!complete.keep_alive);
    }
}
