//! One WebSocket connection: one tokio task, no channels.
//!
//! Phases: `hello` (bounded by `hello_timeout_ms`, then the token is verified and the hub
//! connects the user), then a loop that drains the hub's transmits for this connection and
//! otherwise waits on: its writer [`WakeFlag`] (the hub has something to send), the socket (client
//! pings, pongs, close, bad frames; polled only when the socket woke the task, see
//! [`ReadGate`]) and one timer for the heartbeat (send a ping; close if the client was silent
//! for `idle_timeout_ms`) and the token's expiry. Every write is bounded by `write_timeout_ms`;
//! a peer that does not drain its socket in time is dropped. However the task ends — returned,
//! panicked or aborted — [`Registration`] removes the connection from the hub, and
//! [`ConnectionTask`] counts the task out once its close handshake is over too.
//!
//! Writes are coalesced below tungstenite: the WebSocket is configured with no write buffer
//! (an idle connection keeps none), so every frame reaches the socket wrapper
//! ([`super::socket`]) at once; that wrapper gathers the frames of one batch in a buffer that
//! exists only until the batch's `flush`, so a batch of frames costs one `write` syscall
//! instead of one per frame.

use super::{timeout_if_pending_noting, Shared, WakeFlag};
use crate::hub::{ConnectionId, Transmit};
use crate::metrics::DisconnectReason;
use crate::protocol::{ClientFrame, ErrorCode, Resume, ServerFrame};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{ready, Context, Waker};
use std::time::Duration;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

/// Transmits taken from the hub per lock acquisition: bounds the critical section.
const BATCH_TRANSMITS_MAX: usize = 64;
/// Batch capacity kept while idle; a larger buffer left by a burst is freed, so idle
/// connections stay small.
const BATCH_IDLE_CAPACITY_MAX: usize = 8;
/// Tokens valid for longer than this re-check expiry at this interval (keeps `Instant`
/// arithmetic far from overflow for `exp` values in the far future).
const EXPIRY_RECHECK_MAX_SECS: u64 = 86_400;
/// Batches a connection may write in a row before its timer (heartbeat, idle close, token
/// expiry) and its read side are looked at first once. A batch that had to wait for the socket
/// ends the run at once: behind a slow reader each batch can take long.
const WRITER_TURNS_MAX: u32 = 8;

/// Counts one connection task in `Metrics::connection_tasks` for as long as it lives: taken
/// when the upgrade is answered, moved into axum's `on_upgrade` callback, dropped when that
/// task ends however it ends (returned, panicked, aborted, or its upgrade failed). After a
/// task leaves the hub it may still be closing (`linger`, `answer_close`); `serve` waits for
/// this count, not only for the hub, so that the process does not exit mid-handshake.
pub(super) struct ConnectionTask {
    shared: Arc<Shared>,
}

impl ConnectionTask {
    pub(super) fn start(shared: Arc<Shared>) -> ConnectionTask {
        shared.metrics.start_connection_task();
        ConnectionTask { shared }
    }
}

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        if self.shared.metrics.end_connection_task() {
            self.shared.connection_tasks_ended.notify_waiters();
        }
    }
}

/// Entry point of the connection task (axum's `on_upgrade` callback). `_task` comes first
/// because parameters drop in reverse order: it is counted out last, after the socket and
/// every local (the hub [`Registration`] included).
pub(super) async fn run(_task: ConnectionTask, shared: Arc<Shared>, mut socket: WebSocket) {
    let (token, resume) = match read_hello(&shared, &mut socket).await {
        Ok(hello) => hello,
        Err(Refused::Reject(code, message, read_failed)) => {
            reject(&shared, socket, code, &message, read_failed).await;
            return;
        }
        Err(Refused::ClosedByPeer) => {
            answer_close(&shared, &mut socket).await;
            shared.metrics.record_disconnect(DisconnectReason::ClientClosed);
            return;
        }
        Err(Refused::Gone) => {
            shared.metrics.record_disconnect(DisconnectReason::ConnectionLost);
            return;
        }
    };
    let verified = shared.verifier.verify(&token, shared.clock.unix_secs());
    // Nothing per-connection outlives the hello phase unless it is needed: free the token.
    drop(token);
    let claims = match verified {
        Ok(claims) => claims,
        Err(e) => {
            let code = match e {
                crate::auth::AuthError::Invalid(_) => ErrorCode::AuthFailed,
                crate::auth::AuthError::Expired { .. } => ErrorCode::TokenExpired,
            };
            reject(&shared, socket, code, &e.to_string(), false).await;
            return;
        }
    };
    let writer = Arc::new(WakeFlag::default());
    let connected = match shared.lock() {
        None => Err((ErrorCode::ShuttingDown, "the server is shutting down".to_string())),
        Some(mut state) => {
            let now_ms = shared.clock.now_ms();
            match state.hub.connect(now_ms, &claims.sub, resume.as_ref()) {
                Ok(id) => {
                    state.writers.insert(id, writer.clone());
                    Ok(id)
                }
                Err(rejected) => Err((rejected.code, rejected.message)),
            }
        }
    };
    let id = match connected {
        Ok(id) => id,
        Err((code, message)) => {
            reject(&shared, socket, code, &message, false).await;
            return;
        }
    };
    tracing::debug!(connection = %id, user = %claims.sub, "connected");
    let token_exp = claims.exp;
    drop(claims);
    let mut registration = Registration {
        shared: shared.clone(),
        id,
        done: false,
    };
    let mut read_failed = false;
    let reason = serve_connection(&shared, &mut socket, id, &writer, token_exp, &mut read_failed).await;
    tracing::debug!(connection = %id, ?reason, "disconnected");
    registration.release();
    shared.metrics.record_disconnect(reason);
    match reason {
        DisconnectReason::Error(_) => {
            let hold = Duration::from_millis(shared.config.idle_timeout_ms);
            linger(&shared, &mut socket, read_failed, hold).await;
        }
        DisconnectReason::ClientClosed => answer_close(&shared, &mut socket).await,
        _ => {}
    }
}

/// tungstenite queues the answer to a client's close frame (RFC 6455 §5.5.1) and writes it at
/// the next flush: without one the client would see the socket end with no close frame (1006
/// in a browser). The flush then ends the socket; bounded by `write_timeout_ms`.
async fn answer_close(shared: &Shared, socket: &mut WebSocket) {
    let _ = timeout(write_timeout(shared), socket.flush()).await;
}

enum Refused {
    /// Send this error and close code; `true` if the socket can no longer be read.
    Reject(ErrorCode, String, bool),
    /// The peer sent a close frame: answer it, nothing else.
    ClosedByPeer,
    /// The peer went away; nothing to send.
    Gone,
}

/// Waits for the first frame, which must be a `hello`, within `hello_timeout_ms`. WebSocket
/// pings and pongs before it are allowed (tungstenite answers pings itself).
///
/// A shutdown ends the wait at once with `shutting_down` (1001): the client learns to resume
/// elsewhere now, and `serve`, which waits for every connection task, is not held until
/// `hello_timeout_ms` by a socket that has not spoken yet.
async fn read_hello(shared: &Shared, socket: &mut WebSocket) -> Result<(String, Option<Resume>), Refused> {
    let hello_timeout_ms = shared.config.hello_timeout_ms;
    let deadline = Instant::now() + Duration::from_millis(hello_timeout_ms);
    loop {
        let received = tokio::select! {
            biased;
            received = timeout_at(deadline, socket.recv()) => received,
            () = shared.shutdown_started() => {
                return Err(Refused::Reject(
                    ErrorCode::ShuttingDown,
                    "the server is shutting down".into(),
                    false,
                ))
            }
        };
        let message = match received {
            Err(_) => {
                return Err(Refused::Reject(
                    ErrorCode::HelloTimeout,
                    format!("no hello within hello_timeout_ms {hello_timeout_ms}"),
                    false,
                ))
            }
            Ok(None) => return Err(Refused::Gone),
            Ok(Some(Err(e))) => {
                return Err(match malformed(shared, e) {
                    Some(message) => Refused::Reject(ErrorCode::BadFrame, message, true),
                    None => Refused::Gone,
                })
            }
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Text(text) => {
                return match serde_json::from_str::<ClientFrame>(text.as_str()) {
                    Ok(ClientFrame::Hello { token, resume }) => Ok((token, resume)),
                    Ok(ClientFrame::Ping { .. }) => Err(Refused::Reject(
                        ErrorCode::BadFrame,
                        "the first frame must be hello".into(),
                        false,
                    )),
                    Err(e) => Err(Refused::Reject(
                        ErrorCode::BadFrame,
                        format!("not a protocol v1 frame: {e}"),
                        false,
                    )),
                };
            }
            Message::Binary(_) => {
                return Err(Refused::Reject(
                    ErrorCode::BadFrame,
                    "binary frames are not part of protocol v1".into(),
                    false,
                ))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Err(Refused::ClosedByPeer),
        }
    }
}

/// `Some(message)` if the read failed on what the peer sent: a frame over `frame_bytes_max`, a
/// text frame that is not UTF-8, or a frame that breaks RFC 6455 (answered with `bad_frame`,
/// like any other malformed input). `None` for transport errors (the connection is gone).
fn malformed(shared: &Shared, error: axum::Error) -> Option<String> {
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
    let inner = error.into_inner();
    match inner.downcast_ref::<Error>()? {
        Error::Capacity(e) => Some(format!(
            "frame too large ({e}); frame_bytes_max is {}",
            shared.config.frame_bytes_max
        )),
        Error::Utf8(e) => Some(format!("a text frame that is not UTF-8: {e}")),
        Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::SendAfterClosing
            | ProtocolError::ReceivedAfterClosing,
        ) => None,
        Error::Protocol(e) => Some(format!("not a valid WebSocket frame: {e}")),
        _ => None,
    }
}

/// Sends `error` then a close frame with the code, for connections refused before the hub
/// knew them.
async fn reject(shared: &Shared, mut socket: WebSocket, code: ErrorCode, message: &str, read_failed: bool) {
    tracing::debug!(%code, message, "connection refused");
    let frame = ServerFrame::Error {
        code,
        message: message.to_string(),
    }
    .to_text();
    let write = async {
        socket.feed(Message::Text(frame.into())).await?;
        socket.feed(close_message(code)).await?;
        socket.flush().await
    };
    let reason = match timeout(write_timeout(shared), write).await {
        Ok(Ok(())) => DisconnectReason::Error(code),
        Ok(Err(_)) => DisconnectReason::ConnectionLost,
        Err(_) => DisconnectReason::WriteTimeout,
    };
    shared.metrics.record_disconnect(reason);
    if reason == DisconnectReason::Error(code) {
        // Never welcomed: held no longer than a silent socket waiting for its hello would be.
        let hold = Duration::from_millis(shared.config.hello_timeout_ms.min(shared.config.idle_timeout_ms));
        linger(shared, &mut socket, read_failed, hold).await;
    }
}

/// After our close frame, reads (and discards) until the client's close reply, the write
/// timeout or `hold`, whichever comes first, so the error frame is not lost to a TCP reset
/// caused by unread input.
///
/// If the socket can no longer be read (an oversized frame broke the framing), the task keeps
/// it open, unread, for `hold` — a lingering close: `idle_timeout_ms` once welcomed,
/// `hello_timeout_ms` before (an unauthenticated peer is held no longer than a silent one).
/// Dropping it at once would turn the unread input into a reset, and a reset can overtake (or,
/// on a real kernel, discard) the error and close frames still in flight: the simulation caught
/// exactly that under a latency spike, with the 250 ms grace this replaced. The cost is one
/// parked task and its socket slot per misbehaving connection for a bounded time, within
/// `sockets_max` (its hub connection, and so its place under `connections_max`, is already
/// released). A shutdown ends the hold, so that `serve` does not wait for it.
async fn linger(shared: &Shared, socket: &mut WebSocket, read_failed: bool, hold: Duration) {
    if read_failed {
        tokio::select! {
            biased;
            () = shared.shutdown_started() => {}
            () = tokio::time::sleep(hold) => {}
        }
        return;
    }
    let _ = timeout(write_timeout(shared).min(hold), async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn close_message(code: ErrorCode) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.close_code(),
        reason: code.as_str().into(),
    }))
}

fn write_timeout(shared: &Shared) -> Duration {
    Duration::from_millis(shared.config.write_timeout_ms)
}

/// The connected phase. Returns why the connection ended.
async fn serve_connection(
    shared: &Shared,
    socket: &mut WebSocket,
    id: ConnectionId,
    writer: &WakeFlag,
    token_exp: u64,
    read_failed: &mut bool,
) -> DisconnectReason {
    let heartbeat_interval = Duration::from_millis(shared.config.heartbeat_interval_ms);
    let idle_timeout = Duration::from_millis(shared.config.idle_timeout_ms);
    let mut batch: Vec<Transmit> = Vec::new();
    let reads = ReadGate::new();
    let mut last_seen = Instant::now();
    let mut next_ping = last_seen + heartbeat_interval;
    let mut expiry_at = expiry_deadline(shared, token_exp);
    let mut expired = false;
    let timer = sleep_until(timer_deadline(next_ping, last_seen + idle_timeout, expiry_at));
    tokio::pin!(timer);
    let mut writer_turns = 0u32;

    loop {
        // Drain what the hub has for this connection, one bounded batch per lock. A short
        // batch means the hub had nothing more: anything published while it is written stays
        // in `writer`, so the select below returns at once (no lost wake-up) and the common
        // one-frame wake-up takes the lock once. A backlog that keeps up with a slow reader
        // could fill every batch for good: the writer then steps aside (see `WRITER_TURNS_MAX`).
        let mut waited = false;
        loop {
            debug_assert!(batch.is_empty());
            let taken = {
                let Some(mut state) = shared.lock_yielding().await else {
                    return DisconnectReason::ConnectionLost;
                };
                state.hub.poll_transmits(id, BATCH_TRANSMITS_MAX, |t| batch.push(t))
            };
            if taken == 0 {
                break;
            }
            let closing = match write_batch(shared, socket, &batch, &mut waited).await {
                Ok(closing) => closing,
                Err(reason) => return reason,
            };
            batch.clear();
            if let Some(code) = closing {
                return DisconnectReason::Error(code);
            }
            writer_turns += 1;
            if taken < BATCH_TRANSMITS_MAX {
                break;
            }
            if waited || writer_turns >= WRITER_TURNS_MAX {
                // More is pending: come back to it after the timer and the read side had a look.
                writer.raise();
                break;
            }
        }
        if batch.capacity() > BATCH_IDLE_CAPACITY_MAX {
            batch = Vec::new();
        }

        // The writer is looked at first, but not forever: a connection kept busy by a slow
        // reader would otherwise never run its heartbeat, idle and token checks, or read.
        let writer_first = !waited && writer_turns < WRITER_TURNS_MAX;
        tokio::select! {
            biased;
            () = writer.woken(), if writer_first => {}
            // Leaves `writer_turns` as it is: after a read the timer still gets its look.
            message = reads.recv(socket) => {
                last_seen = Instant::now();
                timer.as_mut().reset(timer_deadline(next_ping, last_seen + idle_timeout, expiry_at));
                match message {
                    None => return DisconnectReason::ConnectionLost,
                    Some(Ok(Message::Close(_))) => return DisconnectReason::ClientClosed,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientFrame>(text.as_str()) {
                        Ok(ClientFrame::Ping { id: ping_id }) => {
                            if let Some(mut state) = shared.lock() {
                                state.hub.ping(id, ping_id);
                            }
                        }
                        Ok(ClientFrame::Hello { .. }) => hub_close(shared, id, ErrorCode::BadFrame, "hello was already received"),
                        Err(e) => hub_close(shared, id, ErrorCode::BadFrame, &format!("not a protocol v1 frame: {e}")),
                    },
                    Some(Ok(Message::Binary(_))) => {
                        hub_close(shared, id, ErrorCode::BadFrame, "binary frames are not part of protocol v1");
                    }
                    Some(Err(e)) => match malformed(shared, e) {
                        Some(message) => {
                            *read_failed = true;
                            hub_close(shared, id, ErrorCode::BadFrame, &message);
                        }
                        None => return DisconnectReason::ConnectionLost,
                    },
                }
            }
            () = &mut timer => {
                writer_turns = 0;
                let now = Instant::now();
                // The heartbeat first: when both are due, an idle close wins, as it always has.
                if now >= last_seen + idle_timeout {
                    let message = format!("nothing received for idle_timeout_ms {}", idle_timeout.as_millis());
                    hub_close(shared, id, ErrorCode::IdleTimeout, &message);
                } else if now >= next_ping {
                    match timeout(write_timeout(shared), socket.send(Message::Ping(Default::default()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return DisconnectReason::ConnectionLost,
                        Err(_) => return DisconnectReason::WriteTimeout,
                    }
                    next_ping = now + heartbeat_interval;
                }
                // The wall clock is read at every firing (at least every heartbeat), not only at
                // `expiry_at`: that deadline is on the monotonic clock, which a suspended host
                // does not advance and a stepped wall clock does not move, so on its own it
                // would keep a connection open past `exp` for as long as the two disagree.
                if !expired && shared.clock.unix_secs() >= token_exp {
                    hub_close(shared, id, ErrorCode::TokenExpired, &format!("token expired at {token_exp}"));
                    expired = true;
                    // Park the check; the close frame ends the loop at the next drain.
                    expiry_at = now + Duration::from_secs(EXPIRY_RECHECK_MAX_SECS);
                } else if now >= expiry_at {
                    expiry_at = expiry_deadline(shared, token_exp);
                }
                // After an idle close the heartbeat's deadline is already past: it fires again
                // at the earliest 1 ms later, and the close ends the loop first.
                let floor = now + Duration::from_millis(1);
                let next = timer_deadline(next_ping.max(floor), (last_seen + idle_timeout).max(floor), expiry_at);
                timer.as_mut().reset(next);
            }
            // The timer and the read side were looked at first and had nothing.
            () = writer.woken(), if !writer_first => writer_turns = 0,
        }
    }
}

/// The connection's one timer: the next heartbeat (ping, or idle close at `idle_at`) or the
/// token check, whichever comes first.
fn timer_deadline(next_ping: Instant, idle_at: Instant, expiry_at: Instant) -> Instant {
    next_ping.min(idle_at).min(expiry_at)
}

/// The socket's read side, polled only when the socket woke the task (or when the last poll
/// returned a message: more may be buffered, and no wake-up would announce them). Without the
/// gate every writer wake-up also ran tungstenite's read path against an empty socket, about a
/// fifth of the connection task's instructions per delivered event ("Eleventh pass" in
/// bench/HISTORY.md). The socket wakes the task through both this gate's waker and the task's own
/// (tokio-tungstenite wakes its read and write wakers together), so nothing waits unseen.
struct ReadGate {
    /// Raised when the socket may have something to read; starts raised.
    flag: Arc<WakeFlag>,
    /// `flag` as a [`Waker`], made once per connection.
    waker: Waker,
}

impl ReadGate {
    fn new() -> ReadGate {
        let flag = Arc::new(WakeFlag::default());
        flag.raise();
        ReadGate {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// `socket.recv()`, polling the socket only when it may have something. Cancel-safe, like
    /// `recv`: dropped while pending, it leaves this gate's waker registered with the socket.
    fn recv<'a>(
        &'a self,
        socket: &'a mut WebSocket,
    ) -> impl Future<Output = Option<Result<Message, axum::Error>>> + 'a {
        poll_fn(move |cx| {
            // Lowers the flag before the poll: a wake-up during it raises it again.
            ready!(self.flag.poll_woken(cx));
            let polled = socket.poll_next_unpin(&mut Context::from_waker(&self.waker));
            if polled.is_ready() {
                self.flag.raise();
            }
            polled
        })
    }
}

/// Writes one batch with `feed` + one `flush`, bounded by `write_timeout_ms`. Returns the close
/// code if the batch ended with a close; sets `waited` if the socket was not ready at once.
async fn write_batch(
    shared: &Shared,
    socket: &mut WebSocket,
    batch: &[Transmit],
    waited: &mut bool,
) -> Result<Option<ErrorCode>, DisconnectReason> {
    let mut closing = None;
    let write = async {
        for transmit in batch {
            let message = match transmit {
                Transmit::Control(frame) => Message::Text((&**frame).into()),
                Transmit::Event { frame, .. } => Message::Text((&**frame).into()),
                Transmit::Close(code) => {
                    closing = Some(*code);
                    close_message(*code)
                }
            };
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    match timeout_if_pending_noting(write_timeout(shared), write, waited).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(DisconnectReason::ConnectionLost),
        Err(_) => return Err(DisconnectReason::WriteTimeout),
    }
    let now_ms = shared.clock.now_ms();
    for transmit in batch {
        if let Transmit::Event { published_at_ms, .. } = transmit {
            shared.metrics.record_delivery(now_ms.saturating_sub(*published_at_ms));
        }
    }
    Ok(closing)
}

fn hub_close(shared: &Shared, id: ConnectionId, code: ErrorCode, message: &str) {
    if let Some(mut state) = shared.lock() {
        state.hub.close(id, code, message);
    }
}

/// When to next check the token: at `exp` by the injected clock (second resolution, so at most
/// one second late), re-checked at least daily. Every other timer firing checks it too (see
/// `serve_connection`), so a wall clock that jumps past `exp` is seen within a heartbeat.
fn expiry_deadline(shared: &Shared, token_exp: u64) -> Instant {
    let remaining_secs = token_exp
        .saturating_sub(shared.clock.unix_secs())
        .clamp(1, EXPIRY_RECHECK_MAX_SECS);
    Instant::now() + Duration::from_secs(remaining_secs)
}

/// Removes the connection from the hub and the writer table when dropped, so an aborted or
/// panicking task cannot leak a connection slot.
struct Registration {
    shared: Arc<Shared>,
    id: ConnectionId,
    done: bool,
}

impl Registration {
    fn release(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(mut state) = self.shared.lock() {
            state.hub.disconnect(self.id);
            state.writers.remove(&self.id);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.release();
    }
}
