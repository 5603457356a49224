//! The hub's limits. Every queue, buffer and map in the hub is bounded by one of these, and
//! each doc comment says what happens at the limit.

use crate::protocol::ID_BYTES_MAX;
use serde::{Deserialize, Serialize};

/// Limits of one hub. Units are in the names; defaults suit a production server with tens of
/// thousands of users. Small values are how a simulation provokes eviction and slow consumers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Events kept per user for replay. At the limit the oldest event is evicted; a client that
    /// resumes before it is sent a `gap` with reason `retention`.
    pub retention_events_max: u64,
    /// Age after which an event is evicted (same consequence as above).
    pub retention_age_ms: u64,
    /// Bytes kept for replay across all users: each event's frame plus what it holds beside it
    /// ([`super::RETAINED_EVENT_OVERHEAD_BYTES`] of bookkeeping, and its idempotency key twice),
    /// so it bounds retention's memory, not only its frames. At the limit the globally oldest
    /// event is evicted. Must hold one largest event (`event_bytes_max` + 416).
    pub retention_bytes_max: u64,
    /// Connections one user may hold at once (tabs). One more is rejected with 4009.
    pub connections_per_user_max: u64,
    /// Connections the hub holds at once. One more is rejected with 4009.
    pub connections_max: u64,
    /// Users with a live stream (retained events or connections). Publishing to, or connecting
    /// as, one more user fails with `users_full` / 4009.
    pub users_max: u64,
    /// Events a connection may lag behind its user's head. One more closes it with 4003
    /// `slow_consumer`; the client resumes and recovers from retention.
    pub send_queue_max: u64,
    /// Control frames (welcome, gap, pong, error) queued per connection, the closing error
    /// included: a pong that would leave no room for that error closes the connection with 4003
    /// instead. A client that pings faster than it reads is a slow consumer.
    pub control_queue_max: u64,
    /// Largest encoded event frame in bytes. A larger publish fails with `too_large` / 413.
    pub event_bytes_max: u64,
    /// Streams remembered after they went quiet (nothing retained, no connection): their epoch
    /// and head, about 150 bytes each, so that a quiet user's resume is recovered instead of
    /// being told of a loss that did not happen. At the limit the longest-dormant stream is
    /// forgotten; its user's next resume gets an `epoch` gap, as after a restart. 0 forgets
    /// every quiet stream at once.
    pub dormant_streams_max: u64,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            retention_events_max: 1_000,
            retention_age_ms: 120_000,
            retention_bytes_max: 256 * 1024 * 1024,
            connections_per_user_max: 8,
            connections_max: 200_000,
            users_max: 200_000,
            send_queue_max: 1_000,
            control_queue_max: 16,
            event_bytes_max: 64 * 1024,
            dormant_streams_max: 100_000,
        }
    }
}

impl HubConfig {
    /// Rejects limits that make the hub useless (a zero limit would turn every publish or
    /// connect into an error). Called by `Hub::new`.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("retention_events_max", self.retention_events_max),
            ("retention_age_ms", self.retention_age_ms),
            ("retention_bytes_max", self.retention_bytes_max),
            ("connections_per_user_max", self.connections_per_user_max),
            ("connections_max", self.connections_max),
            ("users_max", self.users_max),
            ("send_queue_max", self.send_queue_max),
            ("control_queue_max", self.control_queue_max),
            ("event_bytes_max", self.event_bytes_max),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        // The largest event, with the longest key, must fit alone: eviction never empties the
        // stream a publish was pushed to.
        let largest_cost = super::retained_cost_bytes(self.event_bytes_max, Some(&"k".repeat(ID_BYTES_MAX)));
        // The hub adds an event's cost to `retained_bytes` before it evicts down to the limit,
        // so the limit plus one largest event must fit in 64 bits.
        if largest_cost == u64::MAX || self.retention_bytes_max.checked_add(largest_cost).is_none() {
            return Err(format!(
                "event_bytes_max {} and retention_bytes_max {} are too large: one largest event with its bookkeeping, added to retention_bytes_max, must fit in 64 bits",
                self.event_bytes_max, self.retention_bytes_max
            ));
        }
        if largest_cost > self.retention_bytes_max {
            return Err(format!(
                "retention_bytes_max must hold at least one largest event: event_bytes_max + {} bytes of bookkeeping and key = {largest_cost}",
                largest_cost - self.event_bytes_max
            ));
        }
        if self.control_queue_max < 4 {
            return Err("control_queue_max must be at least 4 (welcome, an epoch gap, error, and a pong)".into());
        }
        Ok(())
    }
}
