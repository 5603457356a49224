//! The client task: attempts, backoff, and one connection's read/heartbeat/deliver loop.
//!
//! Every wait is a `select! { biased; ... }` over (1) the handle's commands, (2) the work, and
//! (3) a deadline from tokio time, so that a partition (reads hang, writes block) always ends
//! in a timeout, and `close()` / `drop_connection()` / dropping the handle always take effect.
//! Two short waits watch no commands, and `write_timeout_ms` bounds each: the flush of the
//! close reply after the server closed, and the clean close after `close()` itself.
//! The one call no select can interrupt is the synchronous [`TokenProvider::token`], before
//! each hello: it is the provider's contract to return at once (see the trait).
//!
//! Delivery: the tracker advances `last_seq` when it produces items, and those items are then
//! always handed to the items queue (even if the connection dies while the queue is full) unless
//! the client stops for good. So `resume.after` never names an item the application lost.
//!
//! Stopping for good, besides the application's `close()`: a final refusal by the server
//! (4004; judged by the close code, or by the `error` frame when the connection ends without a
//! usable close code), `attempts_max`, and a server frame beyond `frame_bytes_max`, which no
//! retry can get past (the resume would replay the same frame, forever). A 4001 `auth_failed`
//! is retried like a failed attempt, at the growing backoff, with whatever token the provider
//! returns next: the refusal may be the server's passing misconfiguration (a secret rotated
//! ahead of the token service, or rolled back, an audience set too early), and a fleet that
//! stopped on it would stay down after the server was fixed, until every application restarted.
//!
//! Backoff: a welcome resets the backoff only once its connection has lasted
//! `backoff_reset_after_ms`, so a server (or proxy) that welcomes and then drops every
//! connection is retried at the growing backoff, not every `backoff_initial_ms`. After the
//! server's 1001 `shutting_down` on a welcomed connection (a deploy or restart, which every
//! client hears at once) the next attempt waits the larger of the backoff's delay and a
//! uniform draw within `shutdown_reconnect_spread_ms`, so that a fleet does not land on the
//! next server within `backoff_initial_ms`; a hello refused with 1001 is a failed attempt.
//!
//! A server frame naming seq 2^64−1 ([`tracker::seq_out_of_range`]) is a server bug: no stream
//! reaches that seq, and a position there could never be resumed (the server refuses such a
//! `resume` with 4004, which would stop the client). The connection is dropped before the
//! tracker sees the frame, and the client resumes from its last good position; such a
//! connection does not reset the backoff, so a server that repeats the frame on every resume
//! is retried at the capped backoff rate.

use super::backoff::Backoff;
use super::tracker::{self, StreamTracker};
use super::{
    ClientConfig, ClientObserver, ClientState, CloseCause, Commands, Connector, FrameReceived, Item, Shared,
    TokenProvider,
};
use crate::protocol::{ClientFrame, ErrorCode, Resume, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The WebSocket read buffer. tungstenite's default (128 KiB) is eagerly allocated per
/// connection, and tungstenite zero-fills this many bytes before *every* read attempt (also
/// the ones that find nothing): at 4 KiB that fill was 11 % of an idle simulated world's
/// instructions. Event frames are a few hundred bytes; a larger one takes a few more reads.
/// The same size as the server's default `ws_read_buffer_bytes`.
const READ_BUFFER_BYTES: usize = 1024;
/// Bound on bytes waiting in tungstenite's write buffer (we write only hello, pings, close).
const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024;

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// What the handle asked for.
enum Command {
    /// `close()`, or the handle was dropped.
    Close { by_drop: bool },
    /// `drop_connection()`.
    Drop,
}

/// The task's end of the command channel.
struct CommandRx {
    rx: watch::Receiver<Commands>,
    drops_seen: u64,
}

impl CommandRx {
    /// Waits for the next command. Cancel-safe: the only await is `changed()`.
    async fn next(&mut self) -> Command {
        loop {
            if self.rx.changed().await.is_err() {
                return Command::Close { by_drop: true };
            }
            let commands = *self.rx.borrow_and_update();
            if commands.close {
                return Command::Close { by_drop: false };
            }
            if commands.drops != self.drops_seen {
                self.drops_seen = commands.drops;
                return Command::Drop;
            }
        }
    }
}

/// Sets `Stopped` however the task ends: with its reason, or — if it panicked (an observer
/// bug) or its runtime was shut down — with a reason that says so, so `state()` never claims a
/// dead task is connecting.
struct StopGuard {
    shared: Arc<Shared>,
    reason: Option<String>,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        let reason = self
            .reason
            .take()
            .unwrap_or_else(|| "the client task ended abnormally (panic or runtime shutdown)".to_string());
        self.shared.set(ClientState::Stopped { reason });
    }
}

/// What happens after a connection ends.
enum Next {
    Reconnect,
    Stop(String),
}

impl Next {
    /// After the server refused with `code` (the close code's error, or its `error` frame's).
    /// `auth_failed` is not retryable with the same token, but the client retries it at the
    /// backoff with the provider's next token (see the module doc).
    fn after_refusal(code: ErrorCode, reason: String) -> Next {
        if code.is_retryable() || code == ErrorCode::AuthFailed {
            Next::Reconnect
        } else {
            Next::Stop(reason)
        }
    }
}

/// How one attempt or connection ended: reported to the observer, then acted on.
struct End {
    code: Option<u16>,
    cause: CloseCause,
    reason: String,
    welcomed: bool,
    /// The server broke the protocol: even a welcomed connection does not reset the backoff.
    violation: bool,
    /// The server said it is shutting down (1001, or its `shutting_down` error frame).
    server_shutting_down: bool,
    next: Next,
    /// Items the tracker produced that the full queue has not taken yet, in order.
    pending: VecDeque<Item>,
}

impl End {
    fn network(reason: String, welcomed: bool) -> End {
        End {
            code: None,
            cause: CloseCause::Network,
            reason,
            welcomed,
            violation: false,
            server_shutting_down: false,
            next: Next::Reconnect,
            pending: VecDeque::new(),
        }
    }

    /// The server sent a frame that breaks the protocol (`what`): the connection is dropped
    /// and the client resumes from its last good position, without a backoff reset.
    fn violation(what: String, welcomed: bool) -> End {
        End {
            violation: true,
            ..End::network(format!("protocol violation by the server: {what}"), welcomed)
        }
    }

    /// The connection ended without a close frame (or a usable close code) after the server
    /// sent `error`: a refusal (4001, 4004; 1001 for the reconnect spread) is acted on as its
    /// close would have been.
    /// The server closes after every error; only the close frame was lost. A retryable error
    /// (or none) leaves the end as it is.
    fn after_error(mut self, last_error: Option<&(ErrorCode, String)>) -> End {
        if let (Some((code, _)), CloseCause::Network) = (last_error, self.cause) {
            self.server_shutting_down |= *code == ErrorCode::ShuttingDown;
        }
        if let (Some((code, message)), Next::Reconnect, CloseCause::Network) = (last_error, &self.next, self.cause) {
            if !code.is_retryable() {
                self.reason = format!("{} (after error {code}: {message})", self.reason);
                self.next = Next::after_refusal(*code, format!("{code}: {message}"));
            }
        }
        self
    }

    /// A server frame larger than `frame_bytes_max`: a configuration error (the client's limit
    /// is below the server's `event_bytes_max`), which retrying cannot fix.
    fn frame_too_large(size: usize, max: usize, welcomed: bool) -> End {
        let reason = format!(
            "a server frame of {size} bytes exceeds frame_bytes_max {max}: set frame_bytes_max to at least \
             the server's event_bytes_max (a retry would read the same frame again)"
        );
        End {
            next: Next::Stop(reason.clone()),
            ..End::network(reason, welcomed)
        }
    }

    fn dropped(welcomed: bool, pending: VecDeque<Item>) -> End {
        End {
            cause: CloseCause::Dropped,
            pending,
            ..End::network("connection dropped by the application".into(), welcomed)
        }
    }

    /// The client ends for good on its own side (`reason`), with close code `code` if it sent
    /// one.
    fn stopped_by_client(code: Option<u16>, reason: &str, welcomed: bool) -> End {
        End {
            code,
            cause: CloseCause::Client,
            next: Next::Stop(reason.into()),
            ..End::network(reason.into(), welcomed)
        }
    }

    fn closed_by_client(code: Option<u16>, by_drop: bool, welcomed: bool) -> End {
        let reason = if by_drop {
            "client handle dropped"
        } else {
            "closed by the application"
        };
        End::stopped_by_client(code, reason, welcomed)
    }

    fn application_gone(welcomed: bool) -> End {
        End::stopped_by_client(None, "the application dropped the item receiver", welcomed)
    }
}

/// What woke the connection loop.
enum Wake {
    Command(Command),
    Message(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Idle,
    Ping,
}

/// One client's task. Owns everything; talks to the handle only through the commands watch,
/// the items queue and the shared state.
pub(super) struct Task<C, T, O> {
    config: ClientConfig,
    connector: C,
    tokens: T,
    observer: O,
    commands: CommandRx,
    items: mpsc::Sender<Item>,
    shared: Arc<Shared>,
    tracker: StreamTracker,
    backoff: Backoff,
    ws_config: WebSocketConfig,
    ping_id: u64,
    /// When the current connection was welcomed (`None` before its welcome).
    welcomed_at: Option<Instant>,
}

impl<C: Connector, T: TokenProvider, O: ClientObserver> Task<C, T, O> {
    pub(super) fn new(
        config: ClientConfig,
        connector: C,
        tokens: T,
        observer: O,
        commands: watch::Receiver<Commands>,
        items: mpsc::Sender<Item>,
        shared: Arc<Shared>,
    ) -> Self {
        let backoff = Backoff::from_config(&config);
        let tracker = config
            .start_after
            .clone()
            .map_or_else(StreamTracker::new, StreamTracker::starting_after);
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_write_buffer_size(WRITE_BUFFER_BYTES_MAX)
            .max_message_size(Some(config.frame_bytes_max))
            .max_frame_size(Some(config.frame_bytes_max));
        Task {
            config,
            connector,
            tokens,
            observer,
            commands: CommandRx {
                rx: commands,
                drops_seen: 0,
            },
            items,
            shared,
            tracker,
            backoff,
            ws_config,
            ping_id: 0,
            welcomed_at: None,
        }
    }

    /// Runs until the client stops for good; dropping the task drops the items sender, so
    /// `recv()` returns `None` after the queued items.
    pub(super) async fn run(mut self) {
        let mut guard = StopGuard {
            shared: self.shared.clone(),
            reason: None,
        };
        let reason = self.attempts().await;
        tracing::debug!(%reason, "client stopped");
        guard.reason = Some(reason);
    }

    async fn attempts(&mut self) -> String {
        // Attempts since the last welcome, as reported to the observer; `failures` counts those
        // of them that count toward `attempts_max` (not the ones the application aborted).
        let mut attempt: u32 = 0;
        let mut failures: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let resume = self.tracker.resume();
            self.shared.set(ClientState::Connecting);
            self.observer.connecting(attempt, resume.as_ref());
            let token = self.tokens.token();
            self.welcomed_at = None;
            let end = self.connection(&token, resume).await;
            tracing::debug!(code = ?end.code, cause = ?end.cause, reason = %end.reason, "connection ended");
            self.observer.closed(end.code, end.cause, &end.reason);
            self.shared.set(ClientState::Connecting);
            if end.welcomed {
                // Only a connection that lasted resets the backoff: one that ends soon after
                // every welcome (a server failing while it replays, a proxy cutting after the
                // upgrade) would otherwise be retried every `backoff_initial_ms`, forever.
                let lasted = self
                    .welcomed_at
                    .is_some_and(|at| at.elapsed() >= ms(self.config.backoff_reset_after_ms));
                if lasted && !end.violation {
                    self.backoff.reset();
                }
                attempt = 0;
                failures = 0;
            } else if end.cause != CloseCause::Dropped {
                failures = failures.saturating_add(1);
            }
            if !end.pending.is_empty() {
                if let Some(reason) = self.deliver_while_disconnected(end.pending).await {
                    return reason;
                }
            }
            if let Next::Stop(reason) = end.next {
                return reason;
            }
            if let Some(attempts_max) = self.config.attempts_max {
                if failures >= attempts_max {
                    return format!("gave up: {failures} attempts without a welcome (attempts_max {attempts_max})");
                }
            }
            let mut delay_ms = self.backoff.next_delay_ms();
            if end.server_shutting_down && end.welcomed {
                // Not for a hello refused with 1001 (a draining server still reachable through
                // a proxy): that is a failed attempt, and the backoff alone grows its delays.
                delay_ms = delay_ms.max(self.backoff.spread_ms(self.config.shutdown_reconnect_spread_ms));
            }
            let wake = Instant::now() + ms(delay_ms);
            loop {
                tokio::select! {
                    biased;
                    command = self.commands.next() => match command {
                        Command::Close { by_drop } => {
                            return End::closed_by_client(None, by_drop, false).reason;
                        }
                        Command::Drop => continue,
                    },
                    _ = sleep_until(wake) => break,
                }
            }
        }
    }

    /// Hands over the items produced before the connection ended. Returns a stop reason if the
    /// client must stop instead.
    async fn deliver_while_disconnected(&mut self, mut items: VecDeque<Item>) -> Option<String> {
        while let Some(item) = items.pop_front() {
            loop {
                tokio::select! {
                    biased;
                    command = self.commands.next() => match command {
                        Command::Close { by_drop } => return Some(End::closed_by_client(None, by_drop, false).reason),
                        Command::Drop => continue,
                    },
                    permit = self.items.reserve() => match permit {
                        Ok(permit) => {
                            permit.send(item);
                            break;
                        }
                        Err(_) => return Some(End::application_gone(false).reason),
                    },
                }
            }
        }
        None
    }

    /// One attempt: connect, handshake, hello with `token`, then the connection loop.
    async fn connection(&mut self, token: &str, resume: Option<Resume>) -> End {
        let connect_deadline = Instant::now() + ms(self.config.connect_timeout_ms);
        let hello = serde_json::to_string(&ClientFrame::Hello {
            token: token.to_string(),
            resume,
        })
        .expect("hello always serializes");
        let connector = &self.connector;
        let url = self.config.url.as_str();
        let ws_config = self.ws_config;
        let connect = async move {
            let stream = connector.connect().await.map_err(|e| format!("connect: {e}"))?;
            let (mut ws, _response) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config))
                .await
                .map_err(|e| format!("websocket handshake: {e}"))?;
            ws.send(Message::text(hello))
                .await
                .map_err(|e| format!("sending hello: {e}"))?;
            Ok::<_, String>(ws)
        };
        let ws = tokio::select! {
            biased;
            command = self.commands.next() => {
                return match command {
                    Command::Close { by_drop } => End::closed_by_client(None, by_drop, false),
                    Command::Drop => End::dropped(false, VecDeque::new()),
                };
            }
            _ = sleep_until(connect_deadline) => {
                return End::network(
                    format!("no connection within connect_timeout_ms {}", self.config.connect_timeout_ms),
                    false,
                );
            }
            result = connect => match result {
                Ok(ws) => ws,
                Err(reason) => return End::network(reason, false),
            },
        };
        let mut last_error = None;
        let end = self.session(ws, connect_deadline, &mut last_error).await;
        end.after_error(last_error.as_ref())
    }

    /// The connection loop: deliver, read, heartbeat, until the connection ends. `last_error`
    /// is the server's latest `error` frame.
    async fn session(
        &mut self,
        mut ws: WebSocketStream<C::Stream>,
        connect_deadline: Instant,
        last_error: &mut Option<(ErrorCode, String)>,
    ) -> End {
        let idle = ms(self.config.idle_timeout_ms);
        let heartbeat = ms(self.config.heartbeat_interval_ms);
        let mut connection: Option<String> = None;
        // Before the welcome the connect deadline bounds the wait; after it, the idle timeout.
        let mut read_deadline = connect_deadline;
        let mut next_ping = connect_deadline;
        let mut pending: VecDeque<Item> = VecDeque::new();
        loop {
            if let Some(item) = pending.pop_front() {
                let full = match self.items.try_reserve() {
                    Ok(permit) => {
                        permit.send(item);
                        None
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => return End::application_gone(connection.is_some()),
                    Err(mpsc::error::TrySendError::Full(())) => Some(item),
                };
                if let Some(item) = full {
                    // Backpressure: stop reading until the application makes room.
                    let mut slot = Some(item);
                    let woke = tokio::select! {
                        biased;
                        command = self.commands.next() => Err(command),
                        permit = self.items.reserve() => Ok(permit.map(|permit| {
                            permit.send(slot.take().expect("the item waits in its slot"));
                        })),
                    };
                    match woke {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return End::application_gone(true),
                        Err(Command::Close { by_drop }) => {
                            return self.close_cleanly(ws, connection.as_deref(), by_drop).await;
                        }
                        Err(Command::Drop) => {
                            if let Some(item) = slot {
                                pending.push_front(item);
                            }
                            return End::dropped(true, pending);
                        }
                    }
                    // We were not reading: silence meanwhile says nothing about the peer.
                    read_deadline = Instant::now() + idle;
                }
                if let Some(position) = self.tracker.position() {
                    self.shared.set_connected(position);
                }
                continue;
            }
            let welcomed = connection.is_some();
            let wake = tokio::select! {
                biased;
                command = self.commands.next() => Wake::Command(command),
                message = ws.next() => Wake::Message(message),
                _ = sleep_until(read_deadline) => Wake::Idle,
                _ = sleep_until(next_ping), if welcomed => Wake::Ping,
            };
            let message = match wake {
                Wake::Command(Command::Close { by_drop }) => {
                    return self.close_cleanly(ws, connection.as_deref(), by_drop).await;
                }
                Wake::Command(Command::Drop) => return End::dropped(welcomed, VecDeque::new()),
                Wake::Idle if welcomed => {
                    return End::network(
                        format!("nothing received for idle_timeout_ms {}", self.config.idle_timeout_ms),
                        true,
                    );
                }
                Wake::Idle => {
                    return End::network(
                        format!(
                            "no welcome within connect_timeout_ms {}",
                            self.config.connect_timeout_ms
                        ),
                        false,
                    );
                }
                Wake::Ping => {
                    self.ping_id += 1;
                    let ping = serde_json::to_string(&ClientFrame::Ping { id: self.ping_id }).expect("ping serializes");
                    let write = tokio::time::timeout(ms(self.config.write_timeout_ms), ws.send(Message::text(ping)));
                    // A ping write blocked by a partition must not hold up `close()` or a drop
                    // of the handle for `write_timeout_ms`. The close is then not clean (no
                    // 1000 frame follows a half-written ping), also when the write was merely
                    // slow: the server counts a lost connection, and nothing is lost.
                    let written = tokio::select! {
                        biased;
                        command = self.commands.next() => match command {
                            Command::Close { by_drop } => return End::closed_by_client(None, by_drop, true),
                            Command::Drop => return End::dropped(true, VecDeque::new()),
                        },
                        written = write => written,
                    };
                    match written {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return End::network(format!("sending ping: {e}"), true),
                        Err(_) => {
                            return End::network(
                                format!(
                                    "ping write blocked for write_timeout_ms {}",
                                    self.config.write_timeout_ms
                                ),
                                true,
                            );
                        }
                    }
                    next_ping = Instant::now() + heartbeat;
                    continue;
                }
                Wake::Message(None) => {
                    return End::network("connection closed without a close frame".into(), welcomed);
                }
                Wake::Message(Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(
                    CapacityError::MessageTooLong { size, max_size },
                )))) => return End::frame_too_large(size, max_size, welcomed),
                Wake::Message(Some(Err(e))) => return End::network(format!("websocket: {e}"), welcomed),
                Wake::Message(Some(Ok(message))) => message,
            };
            if welcomed {
                // Anything received proves the line alive: no ping is due until it falls silent.
                let now = Instant::now();
                read_deadline = now + idle;
                next_ping = now + heartbeat;
            }
            let text = match message {
                Message::Text(text) => text,
                Message::Binary(bytes) => {
                    let shown = String::from_utf8_lossy(&bytes);
                    tracing::warn!(bytes = bytes.len(), "binary frame from the server, skipped");
                    self.observer
                        .frame(connection.as_deref(), &FrameReceived::Unparsed(&shown));
                    self.tracker.unreadable_frame();
                    continue;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(frame) => {
                    let code = frame.as_ref().map(|f| u16::from(f.code));
                    let close_reason = frame
                        .as_ref()
                        .map(|f| f.reason.as_str().to_string())
                        .unwrap_or_default();
                    // Best effort: flush tungstenite's queued close reply.
                    let _ = tokio::time::timeout(ms(self.config.write_timeout_ms), SinkExt::close(&mut ws)).await;
                    return server_closed(code, close_reason, last_error.take(), welcomed);
                }
            };
            let frame = match ServerFrame::from_text(text.as_str()) {
                Ok(frame) => frame,
                Err(e) => {
                    self.observer
                        .frame(connection.as_deref(), &FrameReceived::Unparsed(text.as_str()));
                    match unknown_frame_type(text.as_str()) {
                        Some(frame_type) => {
                            tracing::debug!(frame_type, "frame of a type this client does not know, ignored");
                        }
                        None => {
                            tracing::warn!(error = %e, "unparsable frame from the server, skipped");
                            self.tracker.unreadable_frame();
                        }
                    }
                    continue;
                }
            };
            if let ServerFrame::Welcome { connection: id, .. } = &frame {
                if connection.is_none() {
                    connection = Some(id.clone());
                }
            }
            self.observer
                .frame(connection.as_deref(), &FrameReceived::Parsed(&frame));
            if let Some(what) = tracker::seq_out_of_range(&frame) {
                tracing::warn!(%what, "protocol violation by the server, reconnecting");
                return End::violation(what, welcomed);
            }
            match frame {
                ServerFrame::Welcome { epoch, head, .. } => {
                    if welcomed {
                        tracing::warn!("second welcome on one connection, ignored");
                        continue;
                    }
                    let switched = self.tracker.welcome(&epoch, head);
                    tracing::debug!(%epoch, head, switched, "welcomed");
                    let position = self.tracker.position().expect("welcomed implies a position");
                    self.shared.set_connected(position);
                    self.welcomed_at = Some(Instant::now());
                    read_deadline = Instant::now() + idle;
                    next_ping = Instant::now() + heartbeat;
                }
                ServerFrame::Event { seq, run, kind, data } => {
                    if !welcomed {
                        tracing::warn!(seq, "event before welcome, skipped");
                        continue;
                    }
                    self.tracker.event(seq, run, kind, data, &mut pending);
                    if pending.is_empty() {
                        tracing::debug!(seq, "duplicate event dropped");
                    }
                }
                ServerFrame::Gap {
                    epoch,
                    from,
                    to,
                    reason,
                } => {
                    if !welcomed {
                        tracing::warn!(from, "gap before welcome, skipped");
                        continue;
                    }
                    self.tracker.gap(epoch, from, to, reason, &mut pending);
                }
                ServerFrame::Pong { .. } => {}
                ServerFrame::Error { code, message } => {
                    tracing::debug!(%code, %message, "server error frame");
                    *last_error = Some((code, message));
                }
            }
        }
    }

    /// `close()` or handle dropped while connected: close frame 1000, then wait (bounded by
    /// `write_timeout_ms`) for the server's close reply, reporting frames that still arrive.
    async fn close_cleanly(
        &mut self,
        mut ws: WebSocketStream<C::Stream>,
        connection: Option<&str>,
        by_drop: bool,
    ) -> End {
        let welcomed = connection.is_some();
        let deadline = Instant::now() + ms(self.config.write_timeout_ms);
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client closed".into(),
        };
        let sent = tokio::select! {
            biased;
            result = ws.close(Some(frame)) => result.is_ok(),
            _ = sleep_until(deadline) => false,
        };
        if !sent {
            return End::closed_by_client(None, by_drop, welcomed);
        }
        loop {
            let message = tokio::select! {
                biased;
                message = ws.next() => message,
                _ = sleep_until(deadline) => None,
            };
            match message {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerFrame>(text.as_str()) {
                    Ok(frame) => self.observer.frame(connection, &FrameReceived::Parsed(&frame)),
                    Err(_) => self.observer.frame(connection, &FrameReceived::Unparsed(text.as_str())),
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
        End::closed_by_client(Some(1000), by_drop, welcomed)
    }
}

/// The server closed: terminal for 4004 `bad_frame`, reconnect otherwise. Judged by the
/// close code when it is a Herald code ([`ErrorCode::from_close_code`]: 4001 to
/// 4010 or 1001); otherwise (no code, or another one such as 1000) by the preceding `error`
/// frame, if any.
fn server_closed(
    code: Option<u16>,
    close_reason: String,
    last_error: Option<(ErrorCode, String)>,
    welcomed: bool,
) -> End {
    let error_code = code
        .and_then(ErrorCode::from_close_code)
        .or(last_error.as_ref().map(|(c, _)| *c));
    let reason = match (&last_error, close_reason.is_empty()) {
        (Some((code, message)), _) => format!("{code}: {message}"),
        (None, false) => close_reason,
        (None, true) => "closed by the server".to_string(),
    };
    let next = match error_code {
        Some(error_code) => Next::after_refusal(error_code, reason.clone()),
        None => Next::Reconnect,
    };
    End {
        code,
        cause: CloseCause::Server,
        next,
        reason,
        welcomed,
        violation: false,
        server_shutting_down: error_code == Some(ErrorCode::ShuttingDown),
        pending: VecDeque::new(),
    }
}

/// The `type` of a JSON object frame whose type this client does not know (a newer server's
/// addition, to be ignored); `None` when the frame is not such an object or its type is one of
/// ours (then it is a frame the client could not read).
fn unknown_frame_type(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Tagged {
        #[serde(rename = "type")]
        frame_type: String,
    }
    let Tagged { frame_type } = serde_json::from_str::<Tagged>(text).ok()?;
    (!ServerFrame::TYPES.contains(&frame_type.as_str())).then_some(frame_type)
}
