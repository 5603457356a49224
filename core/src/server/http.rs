//! The router: the WebSocket endpoint plus the small HTTP API (publish, health, metrics).
//!
//! HTTP errors always carry `{"error":{"code":"..","message":".."}}`, with the same codes as
//! [`PublishError::code`] plus `malformed`, `unknown_kind` and `unauthorized`; a method a path
//! does not take is `method_not_allowed`, and a `GET /v1/ws` that is no WebSocket upgrade is
//! `bad_upgrade` (neither is a publish, so neither is counted as a publish error).

use super::connection::{self, ConnectionTask};
use super::{timeout_if_pending, Shared};
use crate::hub::PublishError;
use crate::metrics::{Metrics, HTTP_MALFORMED, HTTP_UNAUTHORIZED, HTTP_UNKNOWN_KIND};
use crate::notifier::Notifier;
use crate::protocol::{EventKind, InvalidId, WS_PATH};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// The HTTP publish endpoint; `{user}` is the target user id.
pub const PUBLISH_PATH: &str = "/v1/users/{user}/events";

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(WS_PATH, get(websocket))
        .route(PUBLISH_PATH, post(publish))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        // Per route, not a router-wide fallback: an application that merges this router into
        // its own keeps its own answer for paths that are not Herald's.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

/// axum's own 405 has an empty body; PROTOCOL.md promises the JSON error shape.
async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take this method (see the Allow header)",
    )
}

async fn websocket(
    State(shared): State<Arc<Shared>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // axum answers a request that is no upgrade in text/plain: the same status, as JSON.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return error(rejection.status(), "bad_upgrade", &rejection.body_text()),
    };
    // Counted from here, not from the callback's start: once the 101 is answered the HTTP
    // connection is over for axum's graceful shutdown, and the task must already count for
    // `serve` (dropped with the callback if the upgrade fails).
    let task = ConnectionTask::start(shared.clone());
    let config = &shared.config;
    upgrade
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(config.frame_bytes_max)
        .max_frame_size(config.frame_bytes_max)
        .on_upgrade(move |socket| connection::run(task, shared, socket))
}

/// The body of `POST /v1/users/{user}/events`. Strings are `Cow`: borrowed from the body
/// unless they contain an escape (`"r\u0031"`), which serde can only hand over unescaped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(borrow)]
    run: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow, deserialize_with = "optional_cow")]
    idempotency_key: Option<Cow<'a, str>>,
}

/// `Option<Cow<str>>` that borrows when it can (serde's own `Cow` impl always copies).
fn optional_cow<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'de>>::deserialize(deserializer)?.map(|b| b.0))
}

async fn publish(
    State(shared): State<Arc<Shared>>,
    user: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let metrics = &shared.metrics;
    if !authorized(&headers, &shared.config.api_key) {
        metrics.record_publish_error(HTTP_UNAUTHORIZED);
        return error(
            StatusCode::UNAUTHORIZED,
            HTTP_UNAUTHORIZED,
            "expected Authorization: Bearer <api key>",
        );
    }
    if shared.is_closing() {
        let e = PublishError::ShuttingDown;
        metrics.record_publish_error(e.code());
        return error(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string());
    }
    let Ok(Path(user)) = user else {
        // The route always has `{user}`: the segment failed to decode (not UTF-8, as `%FF`).
        let e = PublishError::InvalidUser(InvalidId {
            what: "user",
            reason: "the path segment is not percent-encoded UTF-8",
        });
        metrics.record_publish_error(e.code());
        return error(StatusCode::BAD_REQUEST, e.code(), &e.to_string());
    };
    let limit = shared.config.publish_body_bytes_max();
    let read = timeout_if_pending(
        Duration::from_millis(shared.config.write_timeout_ms),
        axum::body::to_bytes(body, limit),
    )
    .await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        // The socket's `http_request_timeout_ms` passed mid-body (it can come before our own
        // `write_timeout_ms` above): the same 408, which tells the publisher to retry.
        Ok(Err(e)) if is_timed_out(&e) => {
            return body_late(metrics, "http_request_timeout_ms of the request's start");
        }
        Ok(Err(e)) if !is_length_limit(&e) => {
            // A malformed chunked encoding, or a client gone mid-body: not a size problem.
            metrics.record_publish_error(HTTP_MALFORMED);
            return error(
                StatusCode::BAD_REQUEST,
                HTTP_MALFORMED,
                &format!("request body could not be read: {e}"),
            );
        }
        Ok(Err(_)) => {
            let e = PublishError::TooLarge {
                bytes: limit as u64 + 1,
                max: shared.config.hub.event_bytes_max,
            };
            metrics.record_publish_error(e.code());
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                e.code(),
                &format!("request body larger than {limit} bytes (event_bytes_max + envelope)"),
            );
        }
        Err(_) => return body_late(metrics, "write_timeout_ms"),
    };
    let body: PublishBody<'_> = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(e) => {
            metrics.record_publish_error(HTTP_MALFORMED);
            return error(
                StatusCode::BAD_REQUEST,
                HTTP_MALFORMED,
                &format!("expected {{\"run\":..,\"kind\":..,\"data\":..,\"idempotency_key\":..(optional)}}: {e}"),
            );
        }
    };
    let Some(kind) = EventKind::parse(&body.kind) else {
        metrics.record_publish_error(HTTP_UNKNOWN_KIND);
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        return error(
            StatusCode::BAD_REQUEST,
            HTTP_UNKNOWN_KIND,
            &format!("unknown kind {:?}; expected one of {}", body.kind, known.join(", ")),
        );
    };
    // `publish_raw` records its own errors in the metrics.
    let key = body.idempotency_key.as_deref();
    match Notifier::new(shared.clone()).publish_raw(&user, &body.run, kind, body.data, key) {
        Ok(published) => {
            let status = if published.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, axum::Json(published)).into_response()
        }
        Err(e) => {
            let status = match &e {
                PublishError::InvalidUser(_)
                | PublishError::InvalidRun(_)
                | PublishError::InvalidIdempotencyKey(_)
                | PublishError::InvalidData(_) => StatusCode::BAD_REQUEST,
                PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                PublishError::IdempotencyConflict { .. } => StatusCode::CONFLICT,
                PublishError::UsersFull { .. } | PublishError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, e.code(), &e.to_string())
        }
    }
}

/// Answers without the hub lock: a probe (or a flood of them: `/healthz` needs no credentials)
/// must neither wait behind every publish and delivery nor make them wait. A server whose hub
/// panicked answers 503 once any lock attempt has found the lock poisoned (the tick's does,
/// within `tick_interval_ms`).
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.is_closing() || shared.is_poisoned() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        (StatusCode::OK, "ok").into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        scrape_metrics(&shared),
    )
        .into_response()
}

/// What `/metrics` serves: live counters, gauges sampled at most once per `tick_interval_ms`.
fn scrape_metrics(shared: &Shared) -> String {
    let (counters, gauges) = shared.scrape();
    shared.metrics.render(&counters, &gauges)
}

/// [`scrape_metrics`] with the gauges sampled now, for the in-process `Server::metrics_text`.
pub(super) fn render_metrics(shared: &Shared) -> String {
    let sample = shared
        .lock()
        .map(|state| (state.hub.counters().clone(), state.hub.gauges()));
    let (counters, gauges) = sample.unwrap_or_default();
    shared.metrics.render(&counters, &gauges)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// The authentication scheme of the publish API, followed by its one space.
const BEARER_PREFIX: &[u8] = b"Bearer ";

/// `Authorization: Bearer <key>`, compared in constant time (for equal lengths). The scheme is
/// case-insensitive (RFC 7235 §2.1: `bearer` and `BEARER` are `Bearer`); the key is not.
fn authorized(headers: &HeaderMap, api_key: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some((scheme, presented)) = value.split_at_checked(BEARER_PREFIX.len()) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(BEARER_PREFIX) && constant_time_eq(presented, api_key.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The 408 for a publish body that did not arrive within `deadline`: counted as malformed,
/// answered so that the publisher retries with its idempotency key.
fn body_late(metrics: &Metrics, deadline: &str) -> Response {
    metrics.record_publish_error(HTTP_MALFORMED);
    error(
        StatusCode::REQUEST_TIMEOUT,
        HTTP_MALFORMED,
        &format!("request body not received within {deadline}"),
    )
}

/// Whether reading the body failed because the socket's request deadline passed
/// (`socket.rs` fails the read with `TimedOut`), somewhere down the error's chain of causes.
fn is_timed_out(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Whether reading the body failed at `publish_body_bytes_max` (413) rather than for another
/// reason (400).
fn is_length_limit(error: &axum::Error) -> bool {
    std::error::Error::source(error).is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::rng::SeededRng;
    use crate::server::{Server, ServerConfig};

    /// The value of the unlabelled metric `name` in Prometheus `text`.
    fn metric(text: &str, name: &str) -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    }

    /// Two scrapes within `tick_interval_ms` walk the hub once: the second serves the first's
    /// gauges (bob's stream is not seen) while its counters are live; once the interval has
    /// passed, a scrape samples again. Paused time: the interval is exact.
    #[tokio::test(start_paused = true)]
    async fn metrics_gauges_are_sampled_at_most_once_per_tick_interval() {
        let mut config = ServerConfig::new(b"secret".to_vec(), "key".into());
        config.tick_interval_ms = 1_000;
        let server = Server::new(config, TokioClock::shared(0), SeededRng::new(1)).expect("valid config");
        let shared = server.shared.clone();
        let notifier = server.notifier();
        let publish = |user: &str| {
            notifier
                .publish(user, "run-1", EventKind::AgentStarted, &serde_json::Value::Null)
                .expect("published");
        };
        publish("alice");
        let first = scrape_metrics(&shared);
        assert_eq!(metric(&first, "herald_users"), 1);
        assert_eq!(metric(&first, "herald_published_total"), 1);

        publish("bob");
        tokio::time::advance(Duration::from_millis(999)).await;
        let second = scrape_metrics(&shared);
        assert_eq!(metric(&second, "herald_users"), 1, "gauges from the first sample");
        assert_eq!(metric(&second, "herald_retained_events"), 1);
        assert_eq!(metric(&second, "herald_published_total"), 2, "counters are live");
        assert_eq!(
            metric(&server.metrics_text(), "herald_users"),
            2,
            "the in-process text samples on every call"
        );

        tokio::time::advance(Duration::from_millis(1)).await;
        let third = scrape_metrics(&shared);
        assert_eq!(
            metric(&third, "herald_users"),
            2,
            "sampled again after tick_interval_ms"
        );
        assert_eq!(metric(&third, "herald_retained_events"), 2);
    }

    /// A probe is answered while the hub lock is held elsewhere (a long publish, a flood):
    /// it used to wait for the lock.
    #[tokio::test]
    async fn healthz_does_not_take_the_hub_lock() {
        let config = ServerConfig::new(b"secret".to_vec(), "key".into());
        let server = Server::new(config, TokioClock::shared(0), SeededRng::new(1)).expect("valid config");
        let shared = server.shared.clone();
        // Another thread holds the lock for a second.
        let (locked, is_locked) = std::sync::mpsc::channel();
        let holder = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let _held = shared.state.lock().expect("not poisoned");
                locked.send(()).unwrap();
                std::thread::sleep(Duration::from_secs(1));
            })
        };
        is_locked.recv().unwrap();
        let asked = std::time::Instant::now();
        let answer = healthz(State(shared.clone())).await;
        let waited = asked.elapsed();
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(
            waited < Duration::from_millis(500),
            "waited {waited:?} for the hub lock"
        );
        holder.join().unwrap();
        server.shutdown();
        assert_eq!(healthz(State(shared)).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn bearer_keys_compare_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers, "k3y"));
        headers.insert(header::AUTHORIZATION, "Bearer k3y".parse().unwrap());
        assert!(authorized(&headers, "k3y"));
        assert!(!authorized(&headers, "k3z"));
        assert!(!authorized(&headers, "k3y4"));
        headers.insert(header::AUTHORIZATION, "Basic k3y".parse().unwrap());
        assert!(!authorized(&headers, "k3y"));
        // RFC 7235: the scheme is case-insensitive, the credentials are not.
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            headers.insert(header::AUTHORIZATION, format!("{scheme} k3y").parse().unwrap());
            assert!(authorized(&headers, "k3y"), "{scheme}");
            assert!(!authorized(&headers, "K3Y"), "{scheme}");
        }
        for short in ["", "Bearer", "Bearer "] {
            headers.insert(header::AUTHORIZATION, short.parse().unwrap());
            assert!(!authorized(&headers, "k3y"), "{short:?}");
        }
    }
}
