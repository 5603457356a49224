//! The reconnecting client library: connects with a token from a caller-supplied provider,
//! resumes where it left off on every reconnect, detects dead connections by heartbeat timeout,
//! backs off with seeded jitter, drops duplicates, and hands the application an ordered stream
//! of [`Item`]s — each event exactly once, each loss as an explicit gap.
//!
//! One tokio task per client ([`Client::spawn`]), generic over the transport ([`Connector`]):
//! tokio TCP in production and in the load generator, turmoil TCP in the simulation — the same
//! code path in both. The exactly-once bookkeeping is the sans-IO [`StreamTracker`]; the task
//! only moves frames between the socket, the tracker and the bounded items queue.
//!
//! Lifetime: the task retries (capped backoff) until [`Client::close`] is called, the server
//! refuses for good (4004 `bad_frame`: by close code, or by its `error` frame when the
//! connection then ends without a close frame; a 4001 `auth_failed` is retried at the growing
//! backoff with the [`TokenProvider`]'s next token, since the server may be fixed or the token
//! service catch up), the server sends a
//! frame larger than `frame_bytes_max` (a configuration error no retry can fix), the [`Client`]
//! is dropped, or `attempts_max` attempts in a row found no welcome (no limit by default). Each
//! single attempt, hello included, is bounded by `connect_timeout_ms` (the [`TokenProvider`]
//! call before it is not: it must return at once); each later write (ping, close) by
//! `write_timeout_ms`; and a connected stream that receives nothing for `idle_timeout_ms` is
//! declared dead. A server frame naming seq 2^64−1, which no stream reaches, ends its
//! connection as a protocol violation; the client resumes from its last good position.

mod backoff;
mod connection;
mod tracker;

pub use backoff::Backoff;
pub use tracker::{Position, StreamTracker};

use crate::clock::check_durations_ms;
use crate::protocol::{EventKind, GapReason, Resume, ServerFrame};
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// Smallest accepted `frame_bytes_max`: a welcome or gap frame with maximal ids must fit.
pub const FRAME_BYTES_MIN: usize = 1024;

/// Everything a client needs besides its transport and tokens. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The WebSocket URL, e.g. `ws://server:8080/v1/ws`. Used for the HTTP upgrade request only
    /// (path and `Host` header); the byte stream comes from the [`Connector`].
    pub url: String,
    /// Bound on one attempt: TCP connect + WebSocket handshake + hello + welcome.
    pub connect_timeout_ms: u64,
    /// A `{"type":"ping"}` is sent when nothing has been received for this long on a welcomed
    /// connection (and again every interval while the silence lasts), so that a quiet
    /// connection keeps receiving (pongs) and a dead one is noticed. A herald server pings every
    /// `heartbeat_interval_ms` of its own (default 10 s), so with the client's default of 15 s a
    /// healthy connection carries no client pings at all: probing a line that is visibly alive
    /// only costs both ends a frame.
    pub heartbeat_interval_ms: u64,
    /// Nothing received for this long on a welcomed connection: it is dead (a partition gives
    /// no error, reads just hang); close it and reconnect. Must exceed `heartbeat_interval_ms`.
    pub idle_timeout_ms: u64,
    /// Bound on every write after the hello (ping, close; the hello is part of the attempt,
    /// which `connect_timeout_ms` bounds). A blocked write means a dead peer.
    pub write_timeout_ms: u64,
    /// First backoff ceiling after a failed attempt or a lost connection.
    pub backoff_initial_ms: u64,
    /// Backoff ceiling cap; full jitter below it (see [`Backoff`]).
    pub backoff_max_ms: u64,
    /// A welcomed connection resets the backoff only once it has lasted this long (0: at the
    /// welcome). A server or proxy that welcomes and then drops every connection is thus
    /// retried at the growing backoff, not every `backoff_initial_ms` forever.
    pub backoff_reset_after_ms: u64,
    /// After the server's 1001 `shutting_down` on a welcomed connection the next attempt waits
    /// at least a uniform draw in `0..=shutdown_reconnect_spread_ms` (at most `backoff_max_ms`;
    /// the backoff's own delay if that is longer; 0 leaves the backoff alone): every client of a server
    /// that is deployed or restarted hears the 1001 at the same moment, and this spreads their
    /// resumes over the window instead of landing them on the next server together. Nothing is
    /// lost meanwhile (the resume catches up from retention); the cost is that much latency
    /// after a deploy.
    pub shutdown_reconnect_spread_ms: u64,
    /// Items queued for the application. When full, the client stops reading the socket: the
    /// server's queue then grows until it cuts the connection with 4003 `slow_consumer` (on a
    /// quiet stream, its idle timeout, since pongs go unread too), and the client resumes (and
    /// recovers from retention) once the application reads again. The bound is in items, not
    /// bytes: each holds its parsed `data`, which can take several times its size in the frame,
    /// so size it with the server's `event_bytes_max` in mind.
    pub items_max: usize,
    /// Largest incoming WebSocket message and frame. Must be at least the server's
    /// `event_bytes_max` (which bounds a whole encoded event frame, envelope included; 64 KiB by
    /// default, see PROTOCOL.md "Limits"): other server frames are smaller than
    /// [`FRAME_BYTES_MIN`]. A larger frame stops the client for good
    /// ([`ClientState::Stopped`], reason naming this limit and the frame's size; `recv()` then
    /// returns `None`): retrying would only read the same frame again, forever, while the
    /// application heard nothing.
    pub frame_bytes_max: usize,
    /// Seed of the jitter generator. Every client needs its own: clients that share a seed
    /// draw the same delays, and after an outage they would reconnect in lockstep, the herd the
    /// jitter exists to spread. [`ClientConfig::with_os_seed`] draws one from the OS (what a
    /// production client wants); the simulation passes a scenario-derived seed to
    /// [`ClientConfig::new`] so that its runs replay.
    pub rng_seed: u64,
    /// Consecutive attempts without a welcome after which the client stops for good
    /// ([`ClientState::Stopped`], reason naming this limit; `recv()` then returns `None`).
    /// `None` (the default) retries for as long as the application keeps the client: a
    /// notification client normally outlives any outage, and the capped backoff already
    /// bounds the rate of attempts. A welcome resets the count; an attempt the application
    /// aborted with [`Client::drop_connection`] does not count.
    pub attempts_max: Option<u32>,
    /// Where a new client starts. `None` (the default): live, at the head its first welcome
    /// names; an event published before that welcome (while the server was unreachable, or
    /// while the application was not running) is never delivered, and no gap says so. An
    /// application that must not miss those saves the position of what it has *handled*, and
    /// passes it back here after a restart: the epoch and seq of each [`Item::Event`] once
    /// handled, the epoch and `to` of a `retention` or `unreadable` gap; an `epoch` gap changes
    /// nothing to save until the new epoch's first event. Not [`ClientState::Connected`]: that
    /// position counts the items queued for the application too, which a crash loses. The first
    /// hello then resumes after the saved position, and the server replays what it still
    /// retains (a `retention` gap for what it does not; an `epoch` gap if its stream is gone).
    pub start_after: Option<Resume>,
}

impl ClientConfig {
    /// Production defaults: 10 s connect, 15 s heartbeat, 45 s idle, 10 s writes, backoff from
    /// 250 ms up to 30 s (reset by a connection that lasted 10 s), reconnects after a server's
    /// shutdown spread over 5 s, 1024 queued items, 1 MiB frames, attempts without limit. The seed is
    /// the caller's: a production client takes [`ClientConfig::with_os_seed`] instead.
    pub fn new(url: impl Into<String>, rng_seed: u64) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            connect_timeout_ms: 10_000,
            heartbeat_interval_ms: 15_000,
            idle_timeout_ms: 45_000,
            write_timeout_ms: 10_000,
            backoff_initial_ms: 250,
            backoff_max_ms: 30_000,
            backoff_reset_after_ms: 10_000,
            shutdown_reconnect_spread_ms: 5_000,
            items_max: 1024,
            frame_bytes_max: 1024 * 1024,
            rng_seed,
            attempts_max: None,
            start_after: None,
        }
    }

    /// [`ClientConfig::new`] with a jitter seed from the OS ([`crate::rng::os_seed`]), a new one per
    /// call: the constructor for production clients, so that a fleet which lost the same server
    /// spreads its reconnects instead of retrying in lockstep. The simulation never calls it.
    pub fn with_os_seed(url: impl Into<String>) -> ClientConfig {
        ClientConfig::new(url, crate::rng::os_seed())
    }

    /// Rejects configurations that cannot work (zero timeouts, durations beyond
    /// [`CONFIG_DURATION_MAX_MS`](crate::clock::CONFIG_DURATION_MAX_MS), an idle timeout the heartbeat cannot beat, an unparsable URL).
    /// [`Client::spawn`] panics with this message.
    pub fn validate(&self) -> Result<(), String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("items_max", self.items_max as u64),
            ("attempts_max", self.attempts_max.map_or(1, u64::from)),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        let durations = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("backoff_reset_after_ms", self.backoff_reset_after_ms),
            ("shutdown_reconnect_spread_ms", self.shutdown_reconnect_spread_ms),
        ];
        check_durations_ms(&durations)?;
        if self.idle_timeout_ms <= self.heartbeat_interval_ms {
            return Err(format!(
                "idle_timeout_ms {} must exceed heartbeat_interval_ms {}",
                self.idle_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err("backoff_max_ms must be at least backoff_initial_ms".into());
        }
        if let Some(start) = &self.start_after {
            // The server refuses `after` = 2^64−1 with 4004, which would stop the client.
            if start.after > tracker::SEQ_MAX {
                return Err(format!("start_after.after must be at most {}", tracker::SEQ_MAX));
            }
        }
        if self.frame_bytes_max < FRAME_BYTES_MIN {
            return Err(format!("frame_bytes_max must be at least {FRAME_BYTES_MIN}"));
        }
        self.url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("url {:?} is not a WebSocket URL: {e}", self.url))?;
        Ok(())
    }
}

/// Opens the byte stream a connection runs on. The seam between production (tokio TCP) and the
/// simulation (turmoil TCP); anything `AsyncRead + AsyncWrite` works (TLS wrappers too).
pub trait Connector: Send + Sync + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn connect(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Plain tokio TCP to `addr` (`host:port`), with Nagle off: frames are small and latency counts.
/// A name that resolves to several addresses is tried address by address within one
/// `connect_timeout_ms` (tokio's `connect`), so a first address that is blackholed rather than
/// refused takes the whole attempt; a dual-stack deployment with such an address wants a
/// [`Connector`] that races them.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    pub addr: String,
}

impl Connector for TcpConnector {
    type Stream = tokio::net::TcpStream;

    async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(self.addr.as_str()).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Supplies the JWT for each hello. Called once per attempt, so a provider that refreshes
/// tokens is all it takes to survive 4002 `token_expired`. A 4001 `auth_failed` is retried like
/// any failed attempt, at the growing backoff (and at most `attempts_max` times in a row, if
/// set), with the provider's token of that moment: a provider that caught up with a rotated
/// secret gets through, and so does an unchanged token once the server's misconfiguration
/// (a secret rolled back, an audience set too early) is fixed. The observer sees each refusal
/// (`closed` with 4001), for an application that wants to alert on it.
///
/// `token()` must return at once, without I/O or waiting: it is a synchronous call on the
/// client's task, so no timeout, `connect_timeout_ms` included, can bound it, neither
/// [`Client::close`] nor dropping the [`Client`] can interrupt it, and while it blocks it also
/// blocks its runtime thread (on a current-thread runtime, or in the simulation, every task).
/// A provider whose token comes over the network returns a cached token and refreshes it in
/// the background, before it expires.
pub trait TokenProvider: Send + Sync + 'static {
    fn token(&self) -> String;
}

impl<F: Fn() -> String + Send + Sync + 'static> TokenProvider for F {
    fn token(&self) -> String {
        self()
    }
}

/// A frame as received, before the client acts on it. Unparsed frames are reported and
/// skipped: a frame of a type this client does not know (a newer server's addition) is ignored;
/// any other (not valid protocol JSON, a known type it cannot decode, binary) is a frame the
/// client could not read, so the seqs it skips are handed over as an
/// [`ItemGapReason::Unreadable`] gap before the next event.
#[derive(Debug, Clone, Copy)]
pub enum FrameReceived<'a> {
    Parsed(&'a ServerFrame),
    Unparsed(&'a str),
}

/// Who ended a connection (or a connection attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloseCause {
    /// The server sent a close frame; its code is reported.
    Server,
    /// The application called [`Client::close`] or dropped the [`Client`].
    Client,
    /// I/O error, EOF without close frame, connect/handshake failure, a timeout, no frame
    /// for `idle_timeout_ms`, or a server frame that breaks the protocol (a seq of 2^64−1: the
    /// client drops the connection and resumes).
    Network,
    /// The application called [`Client::drop_connection`].
    Dropped,
}

/// Observation hooks, all default no-ops, called from the client task in order. The
/// simulation records its history from these. Each `connecting` is followed by exactly one
/// `closed` for the same attempt (even when the attempt never reached the server).
pub trait ClientObserver: Send + Sync + 'static {
    /// A connection attempt starts. `attempt` counts attempts since the last welcome (or since
    /// start), from 1, those aborted by [`Client::drop_connection`] included (they do not count
    /// toward `attempts_max`); `resume` is what the hello will carry.
    fn connecting(&self, _attempt: u32, _resume: Option<&Resume>) {}
    /// Every frame received, in order, duplicates included. `connection` is the server's
    /// connection id from the welcome (`None` before it; the welcome itself carries its id).
    fn frame(&self, _connection: Option<&str>, _frame: &FrameReceived<'_>) {}
    /// The attempt or connection ended. `code` is the close code: the server's for
    /// [`CloseCause::Server`], 1000 for a clean [`CloseCause::Client`] close that reached the
    /// socket, otherwise `None`.
    fn closed(&self, _code: Option<u16>, _cause: CloseCause, _reason: &str) {}
}

/// The observer that observes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl ClientObserver for NoObserver {}

/// What the application receives, in stream order, each exactly once.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// One event of the user's stream.
    Event {
        epoch: String,
        seq: u64,
        run: String,
        kind: EventKind,
        data: serde_json::Value,
    },
    /// Events `from..=to` of `epoch` can never be delivered (`to` is `None` when the whole rest
    /// of a lost epoch is gone). A `retention` or `epoch` gap is delivered exactly as the
    /// server sent it; an `unreadable` one is the client's own (see [`ItemGapReason`]).
    Gap {
        epoch: String,
        from: u64,
        to: Option<u64>,
        reason: ItemGapReason,
    },
}

/// Why an [`Item::Gap`] was handed over: the server's two reasons ([`GapReason`]), and one of
/// the client's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemGapReason {
    /// The server's `retention` gap: evicted before this client read them.
    Retention,
    /// The server's `epoch` gap: the stream the client resumed no longer exists.
    Epoch,
    /// The client skipped server frames it could not read (not valid JSON, a binary message,
    /// an event it cannot decode, such as one of a kind added by a newer server), and the next
    /// event's seq shows it skipped events `from..=to` (or, if the skipped frame may have been
    /// the `epoch` gap of the stream it read, that stream with `to: None`). The data may still
    /// exist on the server, but this client cannot read it: never silent, like every loss.
    Unreadable,
}

impl ItemGapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemGapReason::Retention => "retention",
            ItemGapReason::Epoch => "epoch",
            ItemGapReason::Unreadable => "unreadable",
        }
    }
}

impl From<GapReason> for ItemGapReason {
    fn from(reason: GapReason) -> ItemGapReason {
        match reason {
            GapReason::Retention => ItemGapReason::Retention,
            GapReason::Epoch => ItemGapReason::Epoch,
        }
    }
}

impl fmt::Display for ItemGapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the client is doing, for health checks and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientState {
    /// Between connections: connecting, or waiting out a backoff.
    Connecting,
    /// Welcomed. `epoch` and `last_seq` are the client's position, what its next `resume`
    /// would name: the last seq handed to the items queue (or the end of the last gap handed
    /// to it) — or, until the first event after the client's very first welcome, that
    /// welcome's `head` (a fresh client starts live, at the head; nothing up to it is ever
    /// delivered). While an epoch switch waits for the server's `epoch` gap, still the old
    /// stream.
    Connected { epoch: String, last_seq: u64 },
    /// For good: closed by the application, a final refusal by the server (4004), a server
    /// frame beyond
    /// `frame_bytes_max`, `attempts_max` reached, or the application gone.
    Stopped { reason: String },
}

/// Requests from the [`Client`] handle to its task. A watch channel: the latest value wins,
/// the task sees every change, and the task learns that the handle is gone when the sender
/// drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Commands {
    close: bool,
    /// Incremented by each `drop_connection()`.
    drops: u64,
}

/// State shared between the handle and the task. Never held across an await.
#[derive(Debug)]
struct Shared {
    state: Mutex<ClientState>,
}

impl Shared {
    fn set(&self, state: ClientState) {
        *self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    /// Records the position without reallocating the epoch when it did not change.
    fn set_connected(&self, position: &Position) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &mut *state {
            ClientState::Connected { epoch, last_seq } if *epoch == position.epoch => *last_seq = position.last_seq,
            other => {
                *other = ClientState::Connected {
                    epoch: position.epoch.clone(),
                    last_seq: position.last_seq,
                }
            }
        }
    }
}

/// A handle to one reconnecting client. Dropping it stops the task (clean close, bounded by
/// `write_timeout_ms`).
#[derive(Debug)]
pub struct Client {
    items: mpsc::Receiver<Item>,
    commands: watch::Sender<Commands>,
    shared: Arc<Shared>,
}

impl Client {
    /// Spawns the connection task on the current tokio runtime (works inside a turmoil host).
    /// The task connects at once and retries with backoff until closed, stopped by a terminal
    /// close code, or the handle is dropped.
    ///
    /// Panics if `config` does not [`ClientConfig::validate`], or outside a tokio runtime.
    pub fn spawn<C: Connector, T: TokenProvider, O: ClientObserver>(
        config: ClientConfig,
        connector: C,
        tokens: T,
        observer: O,
    ) -> Client {
        if let Err(e) = config.validate() {
            panic!("invalid ClientConfig: {e}");
        }
        let (items_tx, items_rx) = mpsc::channel(config.items_max);
        let (commands_tx, commands_rx) = watch::channel(Commands::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(ClientState::Connecting),
        });
        let task = connection::Task::new(
            config,
            connector,
            tokens,
            observer,
            commands_rx,
            items_tx,
            shared.clone(),
        );
        tokio::spawn(task.run());
        Client {
            items: items_rx,
            commands: commands_tx,
            shared,
        }
    }

    /// The next item, in stream order. `None` once the client has stopped for good and every
    /// queued item has been received.
    pub async fn recv(&mut self) -> Option<Item> {
        self.items.recv().await
    }

    /// Items already queued, without waiting. `None` both when nothing is queued yet and when
    /// the client has stopped for good: a polling application tells them apart with
    /// [`Client::state`].
    pub fn try_recv(&mut self) -> Option<Item> {
        self.items.try_recv().ok()
    }

    /// Clean close: sends a close frame (1000) on the current connection, stops reconnecting.
    /// Items already queued can still be received; `recv` then returns `None`.
    pub fn close(&self) {
        self.commands.send_modify(|c| c.close = true);
    }

    /// Aborts the current connection (or attempt) without a close frame, as a network failure
    /// would; the client then reconnects and resumes. A no-op while waiting out a backoff, and
    /// calls made before the task reacts count as one (the latest request wins). An attempt
    /// aborted this way does not count toward `attempts_max`.
    pub fn drop_connection(&self) {
        self.commands.send_modify(|c| c.drops += 1);
    }

    pub fn state(&self) -> ClientState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
