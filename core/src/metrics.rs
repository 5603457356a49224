//! Server metrics: lock-free counters with fixed label sets, rendered as Prometheus text.
//!
//! Counters that the hub already keeps (published, gaps, evictions) are read from the hub when
//! `/metrics` is scraped, and its gauges at most once per `tick_interval_ms` (`Shared::scrape`:
//! sampling them walks every user under the hub lock); what only the adapter sees (frames
//! actually written, delivery latency, why connections ended, publish errors including
//! HTTP-only ones) lives here. Label sets are closed arrays, so the metric's memory is fixed.

use crate::hub::{Counters, Gauges, PublishError};
use crate::protocol::ErrorCode;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (inclusive, milliseconds) of the delivery-latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// Every `code` label of `herald_publish_errors_total`: the hub's [`PublishError::CODES`] plus
/// the errors only the HTTP API can produce.
pub const PUBLISH_ERROR_CODES: [&str; 11] = [
    PublishError::CODES[0],
    PublishError::CODES[1],
    PublishError::CODES[2],
    PublishError::CODES[3],
    PublishError::CODES[4],
    PublishError::CODES[5],
    PublishError::CODES[6],
    PublishError::CODES[7],
    HTTP_MALFORMED,
    HTTP_UNKNOWN_KIND,
    HTTP_UNAUTHORIZED,
];

/// HTTP publish body that is not the documented JSON object.
pub const HTTP_MALFORMED: &str = "malformed";
/// HTTP publish with a `kind` outside the six lifecycle kinds.
pub const HTTP_UNKNOWN_KIND: &str = "unknown_kind";
/// HTTP publish without the right `Authorization: Bearer <api key>`.
pub const HTTP_UNAUTHORIZED: &str = "unauthorized";

/// Why a WebSocket connection ended, for `herald_disconnects_total{code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The server sent an error frame and closed with its code.
    Error(ErrorCode),
    /// The client sent a close frame.
    ClientClosed,
    /// The transport ended without a close frame (reset, EOF, protocol error).
    ConnectionLost,
    /// A write did not complete within `write_timeout_ms` (peer not reading, or partitioned).
    WriteTimeout,
}

const DISCONNECT_OTHER: [&str; 3] = ["client_closed", "connection_lost", "write_timeout"];
const DISCONNECT_LABELS: usize = ErrorCode::ALL.len() + DISCONNECT_OTHER.len();

impl DisconnectReason {
    fn index(self) -> usize {
        match self {
            DisconnectReason::Error(code) => ErrorCode::ALL
                .iter()
                .position(|c| *c == code)
                .expect("ALL lists every code"),
            DisconnectReason::ClientClosed => ErrorCode::ALL.len(),
            DisconnectReason::ConnectionLost => ErrorCode::ALL.len() + 1,
            DisconnectReason::WriteTimeout => ErrorCode::ALL.len() + 2,
        }
    }

    fn label(index: usize) -> &'static str {
        if index < ErrorCode::ALL.len() {
            ErrorCode::ALL[index].as_str()
        } else {
            DISCONNECT_OTHER[index - ErrorCode::ALL.len()]
        }
    }
}

/// The adapter's counters. Shared by every connection task and handler of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    delivered: AtomicU64,
    publish_errors: [AtomicU64; PUBLISH_ERROR_CODES.len()],
    disconnects: [AtomicU64; DISCONNECT_LABELS],
    /// One counter per bucket (non-cumulative) plus the `+Inf` overflow at the end.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    latency_sum_ms: AtomicU64,
    latency_count: AtomicU64,
    /// Accepted sockets not yet dropped, in any phase; kept under `sockets_max`.
    sockets_open: AtomicU64,
    sockets_refused: AtomicU64,
    http_request_timeouts: AtomicU64,
    /// WebSocket connection tasks alive, from the upgrade to the end of their close handshake
    /// (a task lingers after it left the hub). `serve` waits for none before it returns, so
    /// that a process exiting after a graceful shutdown does not cut a close handshake short.
    connection_tasks: AtomicU64,
}

impl Metrics {
    /// Counts one failed publish under its code. Unknown codes are a programming error.
    pub fn record_publish_error(&self, code: &str) {
        let index = PUBLISH_ERROR_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or_else(|| panic!("publish error code {code} is not in PUBLISH_ERROR_CODES"));
        self.publish_errors[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_disconnect(&self, reason: DisconnectReason) {
        self.disconnects[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one event frame written to a socket, `latency_ms` after it was published.
    pub fn record_delivery(&self, latency_ms: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|le| latency_ms <= *le)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(latency_ms, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a socket slot if fewer than `max` are open; otherwise counts a refusal.
    pub fn try_open_socket(&self, max: u64) -> bool {
        let taken = self
            .sockets_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .is_ok();
        if !taken {
            self.sockets_refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Gives back a slot taken by [`Metrics::try_open_socket`].
    pub fn close_socket(&self) {
        let before = self.sockets_open.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a socket closed more often than it opened");
    }

    /// Counts a socket closed for `http_request_timeout_ms`.
    pub fn record_http_request_timeout(&self) {
        self.http_request_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection task in; see `server::connection::ConnectionTask`.
    pub(crate) fn start_connection_task(&self) {
        self.connection_tasks.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a connection task out. `true` if it was the last one alive.
    pub(crate) fn end_connection_task(&self) -> bool {
        let before = self.connection_tasks.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a connection task ended more often than it started");
        before == 1
    }

    pub fn connection_tasks(&self) -> u64 {
        self.connection_tasks.load(Ordering::Acquire)
    }

    pub fn sockets_open(&self) -> u64 {
        self.sockets_open.load(Ordering::Relaxed)
    }

    pub fn sockets_refused(&self) -> u64 {
        self.sockets_refused.load(Ordering::Relaxed)
    }

    pub fn http_request_timeouts(&self) -> u64 {
        self.http_request_timeouts.load(Ordering::Relaxed)
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn publish_errors(&self, code: &str) -> u64 {
        PUBLISH_ERROR_CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.publish_errors[i].load(Ordering::Relaxed))
    }

    pub fn disconnects(&self, reason: DisconnectReason) -> u64 {
        self.disconnects[reason.index()].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition (format 0.0.4) of these metrics plus the hub's counters and
    /// gauges, sampled by the caller under the hub lock.
    pub fn render(&self, counters: &Counters, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter(
            "herald_published_total",
            "Events appended to a user stream.",
            counters.published,
        );
        counter(
            "herald_idempotent_replays_total",
            "Publishes answered with an earlier seq because the idempotency key was seen.",
            counters.idempotent_replays,
        );
        counter(
            "herald_delivered_total",
            "Event frames written to WebSocket connections.",
            self.delivered(),
        );
        counter("herald_gaps_total", "Gap frames queued to connections.", counters.gaps);
        counter(
            "herald_evicted_total",
            "Events evicted from retention.",
            counters.evicted,
        );
        counter(
            "herald_slow_consumer_closes_total",
            "Connections closed for exceeding send_queue_max or control_queue_max.",
            counters.slow_consumer_closes,
        );
        counter(
            "herald_dormant_evicted_total",
            "Quiet streams forgotten at dormant_streams_max (each user's next resume gets an epoch gap).",
            counters.dormant_evicted,
        );
        counter(
            "herald_sockets_refused_total",
            "Accepted sockets closed at once because sockets_max were open.",
            self.sockets_refused(),
        );
        counter(
            "herald_http_request_timeouts_total",
            "HTTP sockets closed because no request began or was answered within http_request_timeout_ms.",
            self.http_request_timeouts(),
        );

        let _ = writeln!(
            out,
            "# HELP herald_publish_errors_total Failed publishes by error code.\n# TYPE herald_publish_errors_total counter"
        );
        for (i, code) in PUBLISH_ERROR_CODES.iter().enumerate() {
            let value = self.publish_errors[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "herald_publish_errors_total{{code=\"{code}\"}} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP herald_disconnects_total WebSocket connections ended, by close reason.\n# TYPE herald_disconnects_total counter"
        );
        for i in 0..DISCONNECT_LABELS {
            let value = self.disconnects[i].load(Ordering::Relaxed);
            let label = DisconnectReason::label(i);
            let _ = writeln!(out, "herald_disconnects_total{{code=\"{label}\"}} {value}");
        }

        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge("herald_users", "Users with a live stream.", gauges.users);
        gauge("herald_connections", "Open WebSocket connections.", gauges.connections);
        gauge(
            "herald_sockets_open",
            "Accepted sockets in any phase (HTTP, WebSocket before hello, connected).",
            self.sockets_open(),
        );
        gauge(
            "herald_connection_tasks",
            "WebSocket connection tasks alive: waiting for hello, connected, or finishing their close.",
            self.connection_tasks(),
        );
        gauge(
            "herald_connections_per_user_max",
            "The most connections any one user holds.",
            gauges.connections_per_user_max,
        );
        gauge(
            "herald_send_queue_depth_max",
            "The deepest send queue (events a connection lags behind its user's head).",
            gauges.send_queue_depth_max,
        );
        gauge(
            "herald_retained_events",
            "Events retained for replay.",
            gauges.retained_events,
        );
        gauge(
            "herald_retained_bytes",
            "Bytes retained for replay as retention_bytes_max counts them: frames, keys and bookkeeping.",
            gauges.retained_bytes,
        );
        gauge(
            "herald_dormant_streams",
            "Quiet streams remembered by epoch and head (nothing retained, no connection).",
            gauges.dormant_streams,
        );

        let _ = writeln!(
            out,
            "# HELP herald_delivery_latency_ms Time from publish to event frame written.\n# TYPE herald_delivery_latency_ms histogram"
        );
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "herald_delivery_latency_ms_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.latency_buckets[LATENCY_BUCKETS_MS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "herald_delivery_latency_ms_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "herald_delivery_latency_ms_sum {}",
            self.latency_sum_ms.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "herald_delivery_latency_ms_count {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_label_and_a_cumulative_histogram() {
        let metrics = Metrics::default();
        metrics.record_publish_error("too_large");
        metrics.record_publish_error(HTTP_UNAUTHORIZED);
        metrics.record_disconnect(DisconnectReason::Error(ErrorCode::SlowConsumer));
        metrics.record_disconnect(DisconnectReason::WriteTimeout);
        metrics.record_delivery(0);
        metrics.record_delivery(7);
        metrics.record_delivery(60_000);
        assert!(metrics.try_open_socket(2));
        assert!(metrics.try_open_socket(2));
        assert!(!metrics.try_open_socket(2), "the third socket is over sockets_max");
        metrics.close_socket();
        metrics.record_http_request_timeout();
        metrics.start_connection_task();
        metrics.start_connection_task();
        assert!(!metrics.end_connection_task(), "one task is still alive");
        let text = metrics.render(&Counters::default(), &Gauges::default());
        for code in PUBLISH_ERROR_CODES {
            assert!(text.contains(&format!("herald_publish_errors_total{{code=\"{code}\"}}")));
        }
        assert!(text.contains("herald_publish_errors_total{code=\"too_large\"} 1\n"));
        assert!(text.contains("herald_publish_errors_total{code=\"unauthorized\"} 1\n"));
        assert!(text.contains("herald_publish_errors_total{code=\"invalid_run\"} 0\n"));
        assert!(text.contains("herald_disconnects_total{code=\"slow_consumer\"} 1\n"));
        assert!(text.contains("herald_disconnects_total{code=\"write_timeout\"} 1\n"));
        assert!(text.contains("herald_disconnects_total{code=\"auth_failed\"} 0\n"));
        assert!(text.contains("herald_delivery_latency_ms_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("herald_delivery_latency_ms_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("herald_delivery_latency_ms_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("herald_delivery_latency_ms_bucket{le=\"5000\"} 2\n"));
        assert!(text.contains("herald_delivery_latency_ms_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("herald_delivery_latency_ms_sum 60007\n"));
        assert!(text.contains("herald_delivered_total 3\n"));
        assert_eq!(metrics.delivered(), 3);
        assert!(text.contains("herald_sockets_open 1\n"));
        assert!(text.contains("herald_sockets_refused_total 1\n"));
        assert!(text.contains("herald_http_request_timeouts_total 1\n"));
        assert!(text.contains("herald_connection_tasks 1\n"));
        assert!(metrics.end_connection_task(), "the last task ended");
    }
}
