//! The hub: a sans-IO state machine that owns users, their event streams and their connections.
//!
//! Inputs carry `now_ms` explicitly (`publish`, `connect`, `tick`, ...); outputs are polled
//! (`poll_transmits` per connection, a batch at a time; `take_wakes` for connections that have
//! something to send).
//! It has no sockets, no clock and no randomness of its own (ids come from an injected
//! [`SeededRng`]), so the same inputs always give the same outputs — in production, in unit
//! tests and in the simulation.
//!
//! Design: a connection is a *cursor* into its user's retained stream, not a queue of copies.
//! Replay and live delivery are therefore the same code path (there is no seam where an event
//! can be skipped or sent twice), fan-out to N tabs stores each event once, and the "send queue"
//! of a connection is simply how far its cursor lags behind the user's head.
//!
//! Invariants kept (asserted in debug builds):
//! - a user's retained seqs are contiguous and end at `head`; `head` grows by exactly 1 per
//!   published event within an epoch;
//! - a connection only ever reads its own user's stream (the user is fixed at `connect`);
//! - `retained_bytes` equals the sum of retained events' costs (frame, key and bookkeeping,
//!   [`RETAINED_EVENT_OVERHEAD_BYTES`]) and never exceeds `retention_bytes_max` after a publish
//!   returns;
//! - a user has a live stream or a dormant one or neither, never both; an epoch is continued
//!   only from its own head, so seqs never repeat within an epoch.

mod config;
mod stream;

pub use config::HubConfig;
pub use stream::{retained_cost_bytes, RETAINED_EVENT_OVERHEAD_BYTES};

use crate::protocol::{validate_id, ErrorCode, EventKind, GapReason, InvalidId, Resume, ServerFrame};
use crate::rng::SeededRng;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use stream::UserStream;

/// A connection's identity inside one hub life. Drawn from the hub's seeded generator; never
/// used as a capability (knowing another connection's id gives nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c-{:016x}", self.0)
    }
}

/// What a publisher asks for. `data` is valid JSON (a `RawValue`), embedded verbatim once
/// [`crate::protocol::check_event_data`] says a client can decode it.
#[derive(Debug, Clone, Copy)]
pub struct PublishRequest<'a> {
    pub run: &'a str,
    pub kind: EventKind,
    pub data: &'a serde_json::value::RawValue,
    pub idempotency_key: Option<&'a str>,
}

/// A successful publish: where the event sits in its user's stream. `duplicate` is true when
/// the idempotency key was seen before and no new event was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    pub seq: u64,
    pub epoch: String,
    #[serde(skip)]
    pub duplicate: bool,
}

/// Every way a publish can fail. Each is a value the caller must handle — never a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The user id is not a valid id.
    InvalidUser(InvalidId),
    /// The run id is not a valid id.
    InvalidRun(InvalidId),
    /// The idempotency key is not a valid id.
    InvalidIdempotencyKey(InvalidId),
    /// `data` is JSON a client cannot decode (a lone surrogate escape, see
    /// [`crate::protocol::check_event_data`]), or not JSON at all.
    InvalidData(String),
    /// The encoded event is larger than `event_bytes_max`.
    TooLarge { bytes: u64, max: u64 },
    /// `users_max` users already have a stream.
    UsersFull { max: u64 },
    /// The server is shutting down or gone; nothing was published.
    ShuttingDown,
    /// The idempotency key names a retained event with another run, kind or data: a publisher
    /// bug that would otherwise lose this event silently. Nothing was published.
    IdempotencyConflict { seq: u64 },
}

impl PublishError {
    /// A stable machine-readable code, used in HTTP error bodies and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::InvalidUser(_) => "invalid_user",
            PublishError::InvalidRun(_) => "invalid_run",
            PublishError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            PublishError::InvalidData(_) => "invalid_data",
            PublishError::TooLarge { .. } => "too_large",
            PublishError::UsersFull { .. } => "users_full",
            PublishError::ShuttingDown => "shutting_down",
            PublishError::IdempotencyConflict { .. } => "idempotency_conflict",
        }
    }

    /// Every code, for metrics that must list zero counts too.
    pub const CODES: [&'static str; 8] = [
        "invalid_user",
        "invalid_run",
        "invalid_idempotency_key",
        "invalid_data",
        "too_large",
        "users_full",
        "shutting_down",
        "idempotency_conflict",
    ];
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::InvalidUser(e) | PublishError::InvalidRun(e) | PublishError::InvalidIdempotencyKey(e) => {
                write!(f, "{e}")
            }
            PublishError::InvalidData(e) => write!(f, "data is not JSON a client can decode: {e}"),
            PublishError::TooLarge { bytes, max } => {
                write!(f, "event is {bytes} bytes encoded, more than event_bytes_max {max}")
            }
            PublishError::UsersFull { max } => write!(f, "the server holds users_max {max} users"),
            PublishError::ShuttingDown => write!(f, "the server is shutting down; the event was not published"),
            PublishError::IdempotencyConflict { seq } => write!(
                f,
                "idempotency_key already published seq {seq} with another run, kind or data; nothing was published"
            ),
        }
    }
}

impl std::error::Error for PublishError {}

/// Why a connection was refused at `hello`. The adapter sends `error` then closes with
/// `code.close_code()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub code: ErrorCode,
    pub message: String,
}

/// One thing to write on a connection, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A control frame (welcome, gap, pong, error), already encoded.
    Control(Arc<str>),
    /// An event frame, shared with every connection of the user; `published_at_ms` feeds the
    /// delivery-latency histogram.
    Event {
        seq: u64,
        frame: Arc<str>,
        published_at_ms: u64,
    },
    /// Close the WebSocket with this code; nothing follows. The adapter then calls
    /// [`Hub::disconnect`].
    Close(ErrorCode),
}

/// Resource gauges, sampled by `/metrics` and by the simulation's bounded-resources checker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Gauges {
    pub users: u64,
    pub connections: u64,
    pub retained_events: u64,
    pub retained_bytes: u64,
    /// The deepest send queue (cursor lag, in events) of any connection that is not closing (a
    /// closing connection sends nothing more, and its lag no longer grows a queue).
    pub send_queue_depth_max: u64,
    /// The most connections any one user holds.
    pub connections_per_user_max: u64,
    /// Quiet streams remembered by epoch and head (bounded by `dormant_streams_max`).
    pub dormant_streams: u64,
}

/// Monotonic counters since the hub started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub published: u64,
    pub idempotent_replays: u64,
    pub delivered: u64,
    pub gaps: u64,
    pub evicted: u64,
    pub slow_consumer_closes: u64,
    /// Dormant streams forgotten at `dormant_streams_max`: each costs its user an `epoch` gap
    /// at the next resume.
    pub dormant_evicted: u64,
}

/// What the hub keeps of a stream that went quiet (nothing retained, no connection): enough to
/// continue its epoch, so that the user's next resume or publish carries on from `head`
/// instead of starting an epoch whose gap would announce a loss that did not happen.
struct DormantStream {
    epoch: String,
    head: u64,
    /// Key in `Hub::dormant_order`: the longest-dormant stream is forgotten first.
    order: u64,
}

/// A user's oldest retained event, as listed in `Hub::oldest`. Its publish time is copied here
/// so that the age check every publish makes reads this map only, not the user's stream.
struct Oldest {
    published_at_ms: u64,
    user: Arc<str>,
}

struct Connection {
    user: Arc<str>,
    /// Next seq to send from the user's stream.
    cursor: u64,
    /// The user's head when the connection was welcomed. Replay up to here is bounded by
    /// retention and never counts as lag, so a resuming client is never cut for its backlog.
    live_from: u64,
    control: VecDeque<Arc<str>>,
    /// Set once the connection must close; control frames already queued (the error) go first.
    closing: Option<ErrorCode>,
    closed: bool,
}

impl Connection {
    /// Live events published since this connection was last caught up, not yet sent: the
    /// connection's send-queue depth, compared with `send_queue_max`.
    fn live_lag(&self, head: u64) -> u64 {
        head.saturating_sub((self.cursor - 1).max(self.live_from))
    }
}

/// The state machine. See the module docs.
pub struct Hub {
    config: HubConfig,
    rng: SeededRng,
    /// Looked up on every publish and every batch a connection takes, so hashed. The hasher is
    /// Fx: fixed (no random keys, so the hub stays deterministic) and a few instructions per
    /// key. It is not collision-resistant: no key is chosen by an anonymous party (user ids
    /// come from the publisher, holding the API key, or a verified token), but a deployment
    /// whose user ids are chosen by its end users (handles, emails) lets them pick ids that
    /// collide, and mass-registered colliding ids would slow lookups under the hub lock. A
    /// hasher keyed from the hub's `SeededRng` (deterministic in the simulation, random in
    /// production) would close that; not done yet.
    /// Nothing iterates these maps in an order that reaches behaviour (only sums, maxima, and
    /// wakes, which `take_wakes` sorts).
    users: FxHashMap<Arc<str>, UserStream>,
    /// Keyed by ids drawn from the seeded generator (uniform, never chosen by a peer).
    connections: FxHashMap<ConnectionId, Connection>,
    /// Each user with retained events appears once, keyed by the publish order of its oldest
    /// retained event: the first entry is the globally oldest event (for age and byte eviction).
    oldest: BTreeMap<u64, Oldest>,
    publish_order: u64,
    /// Users whose stream went quiet, bounded by `dormant_streams_max`. Looked up by user;
    /// never iterated.
    dormant: FxHashMap<Arc<str>, DormantStream>,
    /// The same users by the order they went quiet, oldest first.
    dormant_order: BTreeMap<u64, Arc<str>>,
    dormant_sequence: u64,
    retained_bytes: u64,
    retained_events: u64,
    wakes: Vec<ConnectionId>,
    /// Every event frame is encoded here, then copied once into its shared `Arc<str>`: no
    /// allocation or regrowth per publish. Freed after an event over `event_bytes_max`; `String`
    /// grows by doubling, so what it keeps is bounded by twice `event_bytes_max` plus one
    /// frame's envelope.
    frame_scratch: String,
    shutting_down: bool,
    last_now_ms: u64,
    counters: Counters,
}

impl Hub {
    /// A fresh hub: every user stream it creates gets a new epoch drawn from `rng`.
    pub fn new(config: HubConfig, rng: SeededRng) -> Result<Hub, String> {
        config.validate()?;
        Ok(Hub {
            config,
            rng,
            users: FxHashMap::default(),
            connections: FxHashMap::default(),
            oldest: BTreeMap::new(),
            publish_order: 0,
            dormant: FxHashMap::default(),
            dormant_order: BTreeMap::new(),
            dormant_sequence: 0,
            retained_bytes: 0,
            retained_events: 0,
            wakes: Vec::new(),
            frame_scratch: String::new(),
            shutting_down: false,
            last_now_ms: 0,
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Appends one event to `user`'s stream and wakes that user's connections.
    pub fn publish(&mut self, now_ms: u64, user: &str, request: PublishRequest<'_>) -> Result<Published, PublishError> {
        self.advance(now_ms);
        if self.shutting_down {
            return Err(PublishError::ShuttingDown);
        }
        validate_id("user", user).map_err(PublishError::InvalidUser)?;
        validate_id("run", request.run).map_err(PublishError::InvalidRun)?;
        // Larger data is refused as `too_large` below; not worth decoding first.
        if request.data.get().len() as u64 <= self.config.event_bytes_max {
            crate::protocol::check_event_data(request.data).map_err(PublishError::InvalidData)?;
        }
        if let Some(key) = request.idempotency_key {
            validate_id("idempotency_key", key).map_err(PublishError::InvalidIdempotencyKey)?;
            if let Some(stream) = self.users.get(user) {
                if let Some(seq) = stream.seq_for_key(key) {
                    // Keys exist only for retained events, so the original frame is at hand.
                    // Compared byte for byte (one encode per retry) and, only if the bytes
                    // differ, as JSON values: a publisher that re-serialises its retry (other
                    // spacing, key order or escapes) still gets its duplicate.
                    let original = stream.get(seq).expect("a key names a retained event");
                    let frame = &mut self.frame_scratch;
                    frame.clear();
                    crate::protocol::encode_event_frame_into(frame, seq, request.run, request.kind, request.data);
                    let same = *original.frame == **frame || same_json(&original.frame, frame);
                    if frame.len() as u64 > self.config.event_bytes_max {
                        self.frame_scratch = String::new();
                    }
                    if !same {
                        return Err(PublishError::IdempotencyConflict { seq });
                    }
                    self.counters.idempotent_replays += 1;
                    return Ok(Published {
                        seq,
                        epoch: stream.epoch.clone(),
                        duplicate: true,
                    });
                }
            }
        }
        // Encode with the seq it will get, to check the size before touching any state.
        let existing = self.users.get_key_value(user);
        let next_seq = match existing {
            Some((_, stream)) => stream.head + 1,
            None => self.dormant.get(user).map_or(1, |dormant| dormant.head + 1),
        };
        let known_key = existing.map(|(key, _)| key.clone());
        let frame = &mut self.frame_scratch;
        frame.clear();
        crate::protocol::encode_event_frame_into(frame, next_seq, request.run, request.kind, request.data);
        let bytes = frame.len() as u64;
        if bytes > self.config.event_bytes_max {
            // Keep the scratch no larger than the largest event the hub accepts.
            self.frame_scratch = String::new();
            return Err(PublishError::TooLarge {
                bytes,
                max: self.config.event_bytes_max,
            });
        }
        let user_key = match known_key {
            Some(key) => key,
            None => self.new_stream(user).map_err(|max| PublishError::UsersFull { max })?,
        };
        self.publish_order += 1;
        let order = self.publish_order;
        let stream = self
            .users
            .get_mut(&user_key)
            .expect("the stream exists or was just created");
        let was_empty = stream.is_empty();
        let seq = stream.push(
            order,
            now_ms,
            Arc::from(self.frame_scratch.as_str()),
            request.idempotency_key,
        );
        debug_assert_eq!(seq, next_seq);
        let over_count = (stream.len() as u64).saturating_sub(self.config.retention_events_max);
        let epoch = stream.epoch.clone();
        if was_empty {
            self.oldest.insert(
                order,
                Oldest {
                    published_at_ms: now_ms,
                    user: user_key.clone(),
                },
            );
        }
        self.retained_bytes += retained_cost_bytes(bytes, request.idempotency_key);
        self.retained_events += 1;
        self.counters.published += 1;

        // Per-user count limit, then global bytes: evict oldest first.
        for _ in 0..over_count {
            self.evict_front(&user_key);
        }
        while self.retained_bytes > self.config.retention_bytes_max {
            let (_, oldest) = self
                .oldest
                .first_key_value()
                .expect("bytes retained implies an oldest event");
            let oldest_user = oldest.user.clone();
            self.evict_front(&oldest_user);
        }

        // Wake or cut every connection of this user. The stream still exists: the new event
        // fits in retention_bytes_max, so eviction never empties the stream it was pushed to.
        let send_queue_max = self.config.send_queue_max;
        // Disjoint fields: the stream is read while connections, counters and wakes change, so
        // the hot path copies no id list.
        for &id in &self.users[&user_key].connections {
            let connection = self
                .connections
                .get_mut(&id)
                .expect("stream lists only live connections");
            if connection.live_lag(seq) > send_queue_max && connection.closing.is_none() {
                self.counters.slow_consumer_closes += 1;
                let message = format!("send queue exceeded send_queue_max {send_queue_max} events; resume to recover");
                Self::start_close(connection, ErrorCode::SlowConsumer, &message);
            }
            self.wakes.push(id);
        }
        self.debug_check_retention();
        Ok(Published {
            seq,
            epoch,
            duplicate: false,
        })
    }

    /// Registers a connection for `user` (already authenticated by the adapter) and queues its
    /// welcome, any gap, then the replay of everything after `resume.after`.
    pub fn connect(&mut self, now_ms: u64, user: &str, resume: Option<&Resume>) -> Result<ConnectionId, Rejected> {
        self.advance(now_ms);
        if self.shutting_down {
            return Err(Rejected {
                code: ErrorCode::ShuttingDown,
                message: "the server is shutting down".into(),
            });
        }
        if let Err(e) = validate_id("user", user) {
            return Err(Rejected {
                code: ErrorCode::AuthFailed,
                message: format!("token subject: {e}"),
            });
        }
        // No stream of any epoch reaches the largest seq, and the epoch gap below starts at
        // `after + 1`: such a resume claims events that never existed.
        if resume.is_some_and(|r| r.after == u64::MAX) {
            return Err(Rejected {
                code: ErrorCode::BadFrame,
                message: format!("resume.after {} is beyond every stream's head", u64::MAX),
            });
        }
        if self.connections.len() as u64 >= self.config.connections_max {
            return Err(Rejected {
                code: ErrorCode::TooManyConnections,
                message: format!(
                    "the server holds connections_max {} connections",
                    self.config.connections_max
                ),
            });
        }
        if let Some(stream) = self.users.get(user) {
            if stream.connections.len() as u64 >= self.config.connections_per_user_max {
                return Err(Rejected {
                    code: ErrorCode::TooManyConnections,
                    message: format!(
                        "user already holds connections_per_user_max {} connections",
                        self.config.connections_per_user_max
                    ),
                });
            }
        }
        let user_key = self.stream_for(user).map_err(|max| Rejected {
            code: ErrorCode::TooManyConnections,
            message: format!("the server holds users_max {max} users"),
        })?;
        // Checked against the stream `stream_for` returned, so that a resume naming the epoch a
        // new stream has just drawn (epochs are unique, not secret) is held to its head of 0.
        if let Some(resume) = resume {
            let stream = &self.users[&user_key];
            if resume.epoch == stream.epoch && resume.after > stream.head {
                let message = format!(
                    "resume.after {} is beyond head {} of epoch {}",
                    resume.after, stream.head, stream.epoch
                );
                self.drop_stream_if_idle(&user_key);
                return Err(Rejected {
                    code: ErrorCode::BadFrame,
                    message,
                });
            }
        }
        let id = self.fresh_connection_id();
        let stream = self.users.get_mut(&user_key).expect("stream_for created it");
        stream.connections.push(id);

        let mut control = VecDeque::new();
        let mut recovered = false;
        let cursor = match resume {
            None => stream.head + 1,
            Some(resume) if resume.epoch == stream.epoch => {
                // Served with no gap exactly when everything after `after` is still retained.
                recovered = resume.after + 1 >= stream.first_seq();
                resume.after + 1
            }
            Some(resume) => {
                control.push_back(encode(&ServerFrame::Gap {
                    epoch: resume.epoch.clone(),
                    from: resume.after + 1,
                    to: None,
                    reason: GapReason::Epoch,
                }));
                1
            }
        };
        control.push_front(encode(&ServerFrame::Welcome {
            user: user_key.to_string(),
            connection: id.to_string(),
            epoch: stream.epoch.clone(),
            head: stream.head,
            recovered,
        }));
        if resume.is_some_and(|r| r.epoch != stream.epoch) {
            self.counters.gaps += 1;
        }
        let live_from = stream.head;
        self.connections.insert(
            id,
            Connection {
                user: user_key,
                cursor,
                live_from,
                control,
                closing: None,
                closed: false,
            },
        );
        self.wakes.push(id);
        Ok(id)
    }

    /// Forgets a connection (socket closed, errored or timed out). Idempotent.
    pub fn disconnect(&mut self, id: ConnectionId) {
        let Some(connection) = self.connections.remove(&id) else {
            return;
        };
        let stream = self
            .users
            .get_mut(&connection.user)
            .expect("a connection's user has a stream");
        stream.connections.retain(|c| *c != id);
        self.drop_stream_if_idle(&connection.user);
    }

    /// Answers an application-level ping. A client that floods pings without reading the pongs
    /// overflows `control_queue_max` and is closed as a slow consumer.
    pub fn ping(&mut self, id: ConnectionId, ping_id: u64) {
        let control_queue_max = self.config.control_queue_max as usize;
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if connection.closing.is_some() {
            return;
        }
        if connection.control.len() + 1 >= control_queue_max {
            self.counters.slow_consumer_closes += 1;
            Self::start_close(
                connection,
                ErrorCode::SlowConsumer,
                "control_queue_max exceeded: read your pongs",
            );
        } else {
            connection.control.push_back(encode(&ServerFrame::Pong { id: ping_id }));
        }
        self.wakes.push(id);
    }

    /// Closes one connection with an error (token expiry, bad frame, idle timeout...). The
    /// error frame and the close are delivered through `poll_transmit`.
    pub fn close(&mut self, id: ConnectionId, code: ErrorCode, message: &str) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if connection.closing.is_none() {
            Self::start_close(connection, code, message);
        }
        self.wakes.push(id);
    }

    /// Begins a graceful shutdown: publishes and connects fail from now on, every connection is
    /// sent `shutting_down` and closed with 1001.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        for (id, connection) in self.connections.iter_mut() {
            if connection.closing.is_none() {
                Self::start_close(connection, ErrorCode::ShuttingDown, "the server is shutting down");
            }
            self.wakes.push(*id);
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Evicts events at least `retention_age_ms` old. Call it periodically; publish and connect
    /// also do.
    pub fn tick(&mut self, now_ms: u64) {
        self.advance(now_ms);
    }

    /// The next frame to write on `id`, or `None` when it is up to date (wait for a wake).
    pub fn poll_transmit(&mut self, id: ConnectionId) -> Option<Transmit> {
        let mut one = None;
        self.poll_transmits(id, 1, |transmit| one = Some(transmit));
        one
    }

    /// Up to `max` frames to write on `id`, oldest first, each handed to `out`; returns how
    /// many. Fewer than `max` means the connection is up to date (wait for a wake). One call
    /// per batch looks the connection and its stream up once, not once per frame.
    pub fn poll_transmits(&mut self, id: ConnectionId, max: usize, mut out: impl FnMut(Transmit)) -> usize {
        let Some(connection) = self.connections.get_mut(&id) else {
            return 0;
        };
        let stream = self.users.get(&connection.user);
        let mut count = 0;
        while count < max {
            let Some(transmit) = Self::next_transmit(connection, stream, &mut self.counters) else {
                break;
            };
            out(transmit);
            count += 1;
        }
        count
    }

    fn next_transmit(
        connection: &mut Connection,
        stream: Option<&UserStream>,
        counters: &mut Counters,
    ) -> Option<Transmit> {
        if connection.closed {
            return None;
        }
        if let Some(frame) = connection.control.pop_front() {
            return Some(Transmit::Control(frame));
        }
        if let Some(code) = connection.closing {
            connection.closed = true;
            return Some(Transmit::Close(code));
        }
        let stream = stream.expect("a connection's user has a stream");
        if connection.cursor > stream.head {
            return None;
        }
        let first = stream.first_seq();
        if connection.cursor < first {
            // Evicted under the cursor: the data is really gone, say so.
            let gap = ServerFrame::Gap {
                epoch: stream.epoch.clone(),
                from: connection.cursor,
                to: Some(first - 1),
                reason: GapReason::Retention,
            };
            connection.cursor = first;
            counters.gaps += 1;
            return Some(Transmit::Control(encode(&gap)));
        }
        let event = stream.get(connection.cursor).expect("cursor within retained range");
        let transmit = Transmit::Event {
            seq: connection.cursor,
            frame: event.frame.clone(),
            published_at_ms: event.published_at_ms,
        };
        connection.cursor += 1;
        counters.delivered += 1;
        Some(transmit)
    }

    /// Moves the ids of connections that may have something to send into `out` (deduplicated,
    /// in a deterministic order). The adapter wakes each one's writer.
    pub fn take_wakes(&mut self, out: &mut Vec<ConnectionId>) {
        self.wakes.sort_unstable();
        self.wakes.dedup();
        out.append(&mut self.wakes);
    }

    /// The user a connection belongs to.
    pub fn connection_user(&self, id: ConnectionId) -> Option<&str> {
        self.connections.get(&id).map(|c| &*c.user)
    }

    /// The epoch and head of `user`'s stream, if it has one.
    pub fn stream_position(&self, user: &str) -> Option<(String, u64)> {
        self.users.get(user).map(|s| (s.epoch.clone(), s.head))
    }

    pub fn gauges(&self) -> Gauges {
        let mut gauges = Gauges {
            users: self.users.len() as u64,
            connections: self.connections.len() as u64,
            retained_events: self.retained_events,
            retained_bytes: self.retained_bytes,
            dormant_streams: self.dormant.len() as u64,
            ..Gauges::default()
        };
        for stream in self.users.values() {
            gauges.connections_per_user_max = gauges.connections_per_user_max.max(stream.connections.len() as u64);
        }
        for connection in self.connections.values().filter(|c| c.closing.is_none()) {
            let head = self.users[&connection.user].head;
            gauges.send_queue_depth_max = gauges.send_queue_depth_max.max(connection.live_lag(head));
        }
        gauges
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn advance(&mut self, now_ms: u64) {
        debug_assert!(
            now_ms >= self.last_now_ms,
            "time went backwards: {now_ms} < {}",
            self.last_now_ms
        );
        self.last_now_ms = self.last_now_ms.max(now_ms);
        let age_max = self.config.retention_age_ms;
        while let Some((_, oldest)) = self.oldest.first_key_value() {
            // Saturating: an operator may set the age to u64::MAX to mean "never by age".
            if oldest.published_at_ms.saturating_add(age_max) > self.last_now_ms {
                break;
            }
            let user = oldest.user.clone();
            self.evict_front(&user);
        }
    }

    /// Evicts `user`'s oldest event and keeps `oldest` and the byte count in step.
    fn evict_front(&mut self, user: &Arc<str>) {
        let stream = self.users.get_mut(user).expect("evicting from a known stream");
        let evicted = stream.pop_front().expect("evicting from a non-empty stream");
        let removed = self.oldest.remove(&evicted.order);
        debug_assert!(
            removed.is_some_and(|oldest| oldest.published_at_ms == evicted.published_at_ms && oldest.user == *user),
            "the front event is listed in oldest"
        );
        if let Some(front) = stream.front() {
            self.oldest.insert(
                front.order,
                Oldest {
                    published_at_ms: front.published_at_ms,
                    user: user.clone(),
                },
            );
        }
        self.retained_bytes -= evicted.cost_bytes();
        self.retained_events -= 1;
        self.counters.evicted += 1;
        // Connections lagging under the new front get a retention gap at their next poll.
        self.wakes.extend_from_slice(&stream.connections);
        // One `advance` can evict thousands of one stream's events: deduplicate before the list
        // outgrows the connections, so it stays within about twice `connections_max`.
        if self.wakes.len() > 2 * self.connections.len() + 64 {
            self.wakes.sort_unstable();
            self.wakes.dedup();
        }
        self.drop_stream_if_idle(user);
    }

    /// Returns the stream key for `user`, creating the stream (with a fresh epoch) if needed.
    /// `Err(users_max)` when the map is full.
    fn stream_for(&mut self, user: &str) -> Result<Arc<str>, u64> {
        if let Some((key, _)) = self.users.get_key_value(user) {
            return Ok(key.clone());
        }
        self.new_stream(user)
    }

    /// Creates `user`'s stream, the caller having checked that it has none: its dormant stream
    /// woken where there is one, so the epoch carries on after its head, else a fresh epoch.
    /// `Err(users_max)` when the map is full (a dormant stream then stays dormant).
    fn new_stream(&mut self, user: &str) -> Result<Arc<str>, u64> {
        debug_assert!(!self.users.contains_key(user));
        if self.users.len() as u64 >= self.config.users_max {
            return Err(self.config.users_max);
        }
        let (key, stream) = match self.dormant.remove_entry(user) {
            Some((key, dormant)) => {
                let removed = self.dormant_order.remove(&dormant.order);
                debug_assert!(
                    removed.is_some_and(|u| u == key),
                    "dormant_order lists every dormant stream"
                );
                (key, UserStream::new(dormant.epoch, dormant.head))
            }
            None => (
                Arc::from(user),
                UserStream::new(format!("{:016x}", self.rng.next_u64()), 0),
            ),
        };
        self.users.insert(key.clone(), stream);
        Ok(key)
    }

    /// A stream with no events and no connections is dropped from `users` (bounded memory, and
    /// it no longer counts against `users_max`) and kept dormant by its epoch and head, within
    /// `dormant_streams_max`: a later resume against it is recovered, or gets a `retention` gap
    /// for exactly the events that were evicted. A forgotten one gets an honest `epoch` gap.
    fn drop_stream_if_idle(&mut self, user: &Arc<str>) {
        if !self
            .users
            .get(user)
            .is_some_and(|s| s.is_empty() && s.connections.is_empty())
        {
            return;
        }
        let (key, stream) = self.users.remove_entry(user).expect("checked above");
        debug_assert!(
            !self.dormant.contains_key(user),
            "a user is live or dormant, never both"
        );
        self.dormant_sequence += 1;
        let order = self.dormant_sequence;
        self.dormant_order.insert(order, key.clone());
        self.dormant.insert(
            key,
            DormantStream {
                epoch: stream.epoch,
                head: stream.head,
                order,
            },
        );
        // Over the limit (at once when it is 0), the longest-dormant stream is forgotten.
        while self.dormant.len() as u64 > self.config.dormant_streams_max {
            let (_, forgotten) = self.dormant_order.pop_first().expect("dormant streams are listed");
            self.dormant.remove(&forgotten);
            self.counters.dormant_evicted += 1;
        }
        debug_assert_eq!(self.dormant.len(), self.dormant_order.len());
    }

    fn fresh_connection_id(&mut self) -> ConnectionId {
        // Collisions have probability ~n/2^64; the bounded loop makes the impossible explicit.
        for _ in 0..8 {
            let id = ConnectionId(self.rng.next_u64());
            if !self.connections.contains_key(&id) {
                return id;
            }
        }
        panic!("eight connection id collisions in a row: the id generator is broken");
    }

    fn start_close(connection: &mut Connection, code: ErrorCode, message: &str) {
        connection.closing = Some(code);
        connection.control.push_back(encode(&ServerFrame::Error {
            code,
            message: message.to_string(),
        }));
    }

    fn debug_check_retention(&self) {
        if cfg!(debug_assertions) && self.retained_events < 10_000 {
            let bytes: u64 = self.users.values().map(|s| s.bytes()).sum();
            let events: u64 = self.users.values().map(|s| s.len() as u64).sum();
            assert_eq!(bytes, self.retained_bytes, "retained bytes out of step");
            assert_eq!(events, self.retained_events, "retained events out of step");
            assert!(self.retained_bytes <= self.config.retention_bytes_max);
        }
    }
}

fn encode(frame: &ServerFrame) -> Arc<str> {
    Arc::from(frame.to_text())
}

/// Whether two event frames the hub encoded carry the same seq, run, kind and data. Only called
/// when their bytes differ. Frames are valid JSON nested at most `DATA_DEPTH_MAX` deep in their
/// envelope, so the recursion is bounded. Objects compare without regard to key order or spacing and strings by their
/// decoded text (a publisher that re-serialises its retry still gets its duplicate), but numbers
/// by their text: decoded, they are lossy (without serde_json's `arbitrary_precision`, two
/// integers beyond `u64` or two decimals past `f64`'s precision decode equal), and a conflicting
/// retry taken for a duplicate would lose its event behind a 200. A number spelled another way
/// (`1` and `1.0`) is a conflict: a 409 the publisher sees, never an event lost.
fn same_json(a: &str, b: &str) -> bool {
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;
    let (a, b) = (a.trim(), b.trim());
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(b'{'), Some(b'{')) => {
            type Members<'a> = BTreeMap<String, &'a RawValue>;
            match (serde_json::from_str::<Members>(a), serde_json::from_str::<Members>(b)) {
                (Ok(a), Ok(b)) => {
                    a.len() == b.len()
                        && a.iter()
                            .zip(&b)
                            .all(|((key_a, a), (key_b, b))| key_a == key_b && same_json(a.get(), b.get()))
                }
                _ => false,
            }
        }
        (Some(b'['), Some(b'[')) => {
            match (
                serde_json::from_str::<Vec<&RawValue>>(a),
                serde_json::from_str::<Vec<&RawValue>>(b),
            ) {
                (Ok(a), Ok(b)) => a.len() == b.len() && a.iter().zip(&b).all(|(a, b)| same_json(a.get(), b.get())),
                _ => false,
            }
        }
        (Some(b'"'), Some(b'"')) => match (serde_json::from_str::<String>(a), serde_json::from_str::<String>(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
        // Numbers, `true`, `false`, `null`: by their text.
        _ => a == b,
    }
}

#[cfg(test)]
mod tests;
