//! The history language: everything a simulation run observed, in order, stamped with
//! simulated time.
//!
//! The world records; the checkers read. A checker trusts nothing the server says about
//! routing: every published event carries a unique `event_id` and its intended user in its
//! payload, and the [`Observation::PublishCalled`] entry is the ground truth of who it was for.

use crate::scenario::Step;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// The whole observed run. Serialized canonically (field order fixed by the types, no maps
/// with random order), so [`History::digest`] is stable across runs, processes and builds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    pub seed: u64,
    pub entries: Vec<Entry>,
}

/// One observation at one simulated instant.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Simulated ms since the world started.
    pub at_ms: u64,
    pub what: Observation,
}

/// Outcome of a publish call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum PublishOutcome {
    Published {
        seq: u64,
        epoch: String,
        /// The idempotency key was seen before; no new event was created.
        duplicate: bool,
    },
    /// A typed error: `code` is the `PublishError` code, or for HTTP the error body's code
    /// (`connect_failed` when the request never reached the server; `timeout` and
    /// `connection_lost` when it went out and no answer came, see [`is_ambiguous_failure`]).
    Failed { code: String, message: String },
}

/// A failure code that does not say whether the server applied the request: no answer in time
/// (`timeout`), or the connection died after the request was sent (`connection_lost`). Every
/// other failure means the event was not created. The publisher retries these; the checkers
/// treat such an event as possibly existing.
pub fn is_ambiguous_failure(code: &str) -> bool {
    matches!(code, "timeout" | "connection_lost")
}

/// An item the client library handed to the application.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "item")]
pub enum DeliveredItem {
    Event {
        epoch: String,
        seq: u64,
        run: String,
        kind: String,
        /// From the payload; `None` when the payload carried no id (never for sim publishes).
        event_id: Option<String>,
    },
    Gap {
        epoch: String,
        from: u64,
        to: Option<u64>,
        reason: String,
    },
}

/// A frame as a client saw it on the wire, summarized for checking.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "frame")]
pub enum FrameSeen {
    Welcome {
        user: String,
        connection: String,
        epoch: String,
        head: u64,
        recovered: bool,
    },
    Event {
        seq: u64,
        run: String,
        kind: String,
        event_id: Option<String>,
        payload_user: Option<String>,
    },
    Gap {
        epoch: String,
        from: u64,
        to: Option<u64>,
        reason: String,
    },
    Pong {
        id: u64,
    },
    Error {
        code: String,
        message: String,
    },
    /// A frame the client could not parse (or a binary frame, read as lossy UTF-8): its text
    /// truncated to [`UNPARSED_TEXT_BYTES_MAX`] bytes, and the [`Markers`] scanned from the whole
    /// of it before truncation. Build it with [`FrameSeen::unparsed`].
    Unparsed {
        text: String,
        #[serde(default, skip_serializing_if = "Markers::is_empty")]
        markers: Markers,
    },
}

/// How much of an unparsed frame's text the history keeps.
pub const UNPARSED_TEXT_BYTES_MAX: usize = 200;

impl FrameSeen {
    /// An unparsed frame as the history records it: the text truncated, the markers of the
    /// whole text kept.
    pub fn unparsed(text: &str) -> FrameSeen {
        let mut end = text.len().min(UNPARSED_TEXT_BYTES_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        FrameSeen::Unparsed {
            text: text[..end].to_string(),
            markers: Markers::scan(text),
        }
    }
}

/// The prefix of the per-user secret the publisher puts in every event's data
/// (`"secret":"secret-of-<user>"`): seeing it on a connection of another user is a leak.
pub const SECRET_PREFIX: &str = "secret-of-";

/// Traces of users' data in a text that is not a frame the checkers can read field by field (an
/// unparsed or binary frame, an error message, a close reason): the users whose secret
/// ([`SECRET_PREFIX`]) or name (`"user":"<user>"`, as event data and welcomes spell it) appears,
/// and the event ids (`"id":"<id>"`) that appear, JSON-escaped (`\"user\":\"`) or not. Only
/// whole names count: one the text goes on after (a frame cut at `secret-of-u1` may have been
/// `u12`'s). Sets, so the history stays deterministic.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Markers {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub users: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub event_ids: BTreeSet<String>,
}

impl Markers {
    /// Scans all of `text`.
    pub fn scan(text: &str) -> Markers {
        const USER: [&str; 3] = [SECRET_PREFIX, r#""user":""#, r#"\"user\":\""#];
        const EVENT_ID: [&str; 2] = [r#""id":""#, r#"\"id\":\""#];
        let mut markers = Markers::default();
        for (patterns, into) in [(&USER[..], &mut markers.users), (&EVENT_ID[..], &mut markers.event_ids)] {
            for pattern in patterns {
                let mut rest = text;
                while let Some(at) = rest.find(pattern) {
                    rest = &rest[at + pattern.len()..];
                    let len = rest.bytes().take_while(|&b| is_id_byte(b)).count();
                    if len > 0 && len < rest.len() {
                        into.insert(rest[..len].to_string());
                    }
                    rest = &rest[len..];
                }
            }
        }
        markers
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.event_ids.is_empty()
    }
}

/// The bytes of a user id or event id (the protocol's `validate_id`: ASCII letters, digits and
/// `-_.:@`).
fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@')
}

/// The `reason` a hostile socket that never finished an HTTP request records when the server
/// ends it (EOF or reset, no close code): how coverage tells it from other network closes.
pub const SOCKET_ENDED_BY_SERVER: &str = "the server ended the socket";

/// How the `reason` of a hostile socket whose WebSocket handshake failed begins (the error
/// follows): how the checkers tell a socket the server ended before the handshake.
pub const HANDSHAKE_FAILED: &str = "handshake failed";

/// Who ended a connection.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// The server sent a close frame (its code is in `code`).
    Server,
    /// The client closed on purpose (a `Close` step).
    Client,
    /// The socket failed, or the client's heartbeat timeout declared it dead.
    Network,
    /// The driver killed it (a `Kill` step).
    Killed,
}

/// Everything the world records.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Observation {
    /// The driver applied step `index` of the scenario.
    StepApplied {
        index: usize,
        step: Step,
    },
    /// The driver skipped step `index` (it named a client that does not exist or is gone).
    StepSkipped {
        index: usize,
        reason: String,
    },
    /// A publish call began. `event_id` is unique per logical event (retries keep it).
    PublishCalled {
        publish: u64,
        event_id: String,
        user: String,
        run: String,
        kind: String,
        via: String,
        idempotency_key: Option<String>,
        attempt: u32,
        /// Size of the JSON payload; the encoded frame is about 100 bytes more.
        payload_bytes: u64,
    },
    /// A publish call returned.
    PublishReturned {
        publish: u64,
        event_id: String,
        outcome: PublishOutcome,
    },
    /// A client (normal or hostile) started a connection attempt.
    Connecting {
        client: u32,
        user: String,
        attempt: u32,
        resume: Option<ResumeSent>,
        hostile: bool,
        /// When the token sent in this attempt's `hello` expires, in simulated ms since the world
        /// started (the JWT `exp`, converted). `None` for hostile tokens with no meaningful expiry.
        /// The auth checker uses it to demand a `token_expired` close once it has passed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_exp_ms: Option<u64>,
    },
    /// A frame arrived on a client's connection.
    FrameReceived {
        client: u32,
        user: String,
        connection: Option<String>,
        frame: FrameSeen,
        hostile: bool,
    },
    /// The client library handed an item to the application.
    Delivered {
        client: u32,
        user: String,
        item: DeliveredItem,
    },
    /// A connection ended.
    Closed {
        client: u32,
        user: String,
        code: Option<u16>,
        by: ClosedBy,
        reason: String,
        hostile: bool,
    },
    /// The client was closed for good (a `Close` step); it is not expected to catch up.
    ClientStopped {
        client: u32,
    },
    /// The application paused / resumed reading (slow consumer).
    Paused {
        client: u32,
        duration_ms: u64,
    },
    ServerStarted {
        life: u32,
    },
    ServerStopped {
        life: u32,
        how: String,
    },
    /// The network was healed; from here on the world is quiet until `End`.
    HealStarted,
    /// The world settled (see [`crate::settling`]): every live client is connected, nothing is
    /// pending and nothing happened for `settle_ms`, so it ends before the quiet period is over.
    Settled,
    /// A sample of the hub's resource gauges.
    Gauges(GaugeSample),
    /// A panic or error in a host, recorded instead of aborting.
    Failure {
        host: String,
        message: String,
    },
    /// The world stopped.
    End,
}

/// The resume a client sent in its hello.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ResumeSent {
    pub epoch: String,
    pub after: u64,
}

/// The hub's gauges at one instant, plus the limits they must stay under.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct GaugeSample {
    pub users: u64,
    pub connections: u64,
    pub retained_events: u64,
    pub retained_bytes: u64,
    pub send_queue_depth_max: u64,
    pub connections_per_user_max: u64,
    /// Accepted sockets the server host still holds open, counted by the simulated network
    /// (the world's listener), not reported by the server: a socket the server forgot to close
    /// shows here even when the hub has forgotten its connection.
    #[serde(default)]
    pub server_sockets: u64,
    /// Sockets this server life closed at once because `sockets_max` were open, by the
    /// server's own count (`herald_sockets_refused_total`). For coverage only: no checker
    /// trusts a server's account of itself. Left out of the JSON while zero, so histories of
    /// worlds that never reach the limit are byte-identical to those recorded before it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sockets_refused: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl History {
    /// Appends an observation.
    pub fn record(&mut self, at_ms: u64, what: Observation) {
        debug_assert!(
            self.entries.last().is_none_or(|last| last.at_ms <= at_ms),
            "history goes forward in time"
        );
        self.entries.push(Entry { at_ms, what });
    }

    /// The canonical serialization: compact JSON of the whole history.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("histories always serialize")
    }

    /// SHA-256 of the canonical serialization, in hex. Equal digests mean byte-identical runs.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }

    /// The time of the `HealStarted` entry, if the run got that far.
    pub fn heal_at_ms(&self) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| matches!(e.what, Observation::HealStarted))
            .map(|e| e.at_ms)
    }

    /// The time of the `End` entry, if the run got that far.
    pub fn end_at_ms(&self) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| matches!(e.what, Observation::End))
            .map(|e| e.at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_scanned_from_the_whole_text_and_only_whole_names_count() {
        let pad = "x".repeat(500);
        let frame = format!(
            r#"{{"type":"event","seq":1,"data":{{"id":"e-7","pad":"{pad}","secret":"secret-of-u12","user":"u12"}}}}{{"type":"ev"#
        );
        let FrameSeen::Unparsed { text, markers } = FrameSeen::unparsed(&frame) else {
            unreachable!()
        };
        assert_eq!(text.len(), UNPARSED_TEXT_BYTES_MAX);
        assert!(!text.contains("u12"), "the name is past the truncation");
        assert_eq!(markers.users, BTreeSet::from(["u12".to_string()]));
        assert_eq!(markers.event_ids, BTreeSet::from(["e-7".to_string()]));
        // Escaped inside a string; a name cut by the end of the text; a pong's numeric id.
        let markers = Markers::scan(r#"{"message":"{\"id\":\"e-3\",\"user\":\"u4\"}"} secret-of-u1"#);
        assert_eq!(markers.users, BTreeSet::from(["u4".to_string()]));
        assert_eq!(markers.event_ids, BTreeSet::from(["e-3".to_string()]));
        assert!(Markers::scan(r#"{"type":"pong","id":3}"#).is_empty());
        assert!(Markers::scan(r#"{"user":"?"}"#).is_empty());
    }

    #[test]
    fn digest_is_stable_and_sensitive() {
        let mut a = History {
            seed: 1,
            entries: vec![],
        };
        a.record(0, Observation::ServerStarted { life: 0 });
        a.record(5, Observation::HealStarted);
        let b = a.clone();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
        let mut c = a.clone();
        c.entries[1].at_ms = 6;
        assert_ne!(a.digest(), c.digest());
        let text = serde_json::to_string(&a).unwrap();
        let back: History = serde_json::from_str(&text).unwrap();
        assert_eq!(back.digest(), a.digest());
    }
}
