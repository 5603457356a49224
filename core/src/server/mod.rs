//! The server adapter: gives the sans-IO [`Hub`] sockets, a clock and a router.
//!
//! One `std::sync::Mutex` guards the hub and the table of connection outboxes; every critical
//! section is short and none spans an `.await`. Each WebSocket connection is one tokio task
//! ([`connection`]) that waits on its own [`Outbox`], into which whoever changed the hub moved
//! the connection's frames under the hub lock — there are no per-connection channels, so an
//! idle connection costs a socket, a small read buffer, an empty outbox and a parked task. The HTTP API ([`http`]) and the in-process [`Notifier`] publish through the same
//! lock. Generic over the listener (axum's [`Listener`]), so the very same router serves
//! tokio TCP in production and turmoil TCP in the simulation.

mod connection;
mod http;

use crate::auth::TokenVerifier;
use crate::clock::Clock;
use crate::hub::{ConnectionId, Counters, Gauges, Hub, HubConfig, Transmit};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::rng::SeededRng;
use axum::serve::Listener;
use futures_util::task::AtomicWaker;
use std::collections::BTreeMap;
use std::fmt;
use std::future::poll_fn;
use std::future::IntoFuture;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;

/// Everything a server needs besides its clock and seed. Units are in the field names.
#[derive(Clone)]
pub struct ServerConfig {
    /// The hub's limits (retention, queues, connections).
    pub hub: HubConfig,
    /// Time a client has, after the upgrade, to send `hello`. Then: error `hello_timeout`, 4008.
    pub hello_timeout_ms: u64,
    /// Interval of server-sent WebSocket pings, so that idle clients and NATs see traffic.
    pub heartbeat_interval_ms: u64,
    /// A connection from which nothing (frame, ping or pong) arrived for this long is closed
    /// with `idle_timeout`, 4010.
    pub idle_timeout_ms: u64,
    /// Bound on every write (a batch of frames, a ping, a close) and on reading an HTTP body.
    /// A peer that does not drain its socket in time is dropped.
    pub write_timeout_ms: u64,
    /// Largest incoming WebSocket frame/message. Larger: error `bad_frame`, 4004.
    pub frame_bytes_max: usize,
    /// Interval of the retention tick that evicts events older than `retention_age_ms` even
    /// when nothing is published.
    pub tick_interval_ms: u64,
    /// Per-connection WebSocket read buffer. Small, because clients send little.
    pub ws_read_buffer_bytes: usize,
    /// HS256 secret for hello tokens.
    pub jwt_secret: Vec<u8>,
    /// Bearer key for the HTTP publish API.
    pub api_key: String,
}

impl fmt::Debug for ServerConfig {
    /// Secrets are redacted: configs end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("hub", &self.hub)
            .field("hello_timeout_ms", &self.hello_timeout_ms)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("write_timeout_ms", &self.write_timeout_ms)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("tick_interval_ms", &self.tick_interval_ms)
            .field("ws_read_buffer_bytes", &self.ws_read_buffer_bytes)
            .field("jwt_secret", &"<redacted>")
            .field("api_key", &"<redacted>")
            .finish()
    }
}

impl ServerConfig {
    /// Production defaults with the two secrets every server needs.
    pub fn new(jwt_secret: Vec<u8>, api_key: String) -> Self {
        ServerConfig {
            hub: HubConfig::default(),
            hello_timeout_ms: 5_000,
            heartbeat_interval_ms: 10_000,
            idle_timeout_ms: 30_000,
            write_timeout_ms: 10_000,
            frame_bytes_max: 16 * 1024,
            tick_interval_ms: 1_000,
            ws_read_buffer_bytes: 1024,
            jwt_secret,
            api_key,
        }
    }

    /// Rejects configurations that cannot work (empty secrets, zero timeouts). Called by
    /// [`Server::new`].
    pub fn validate(&self) -> Result<(), String> {
        self.hub.validate()?;
        if self.jwt_secret.is_empty() {
            return Err("jwt_secret must not be empty".into());
        }
        if self.api_key.is_empty() {
            return Err("api_key must not be empty".into());
        }
        let positive = [
            ("hello_timeout_ms", self.hello_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("tick_interval_ms", self.tick_interval_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.frame_bytes_max < 1024 {
            return Err("frame_bytes_max must be at least 1024 (a hello carries a token)".into());
        }
        if self.ws_read_buffer_bytes == 0 {
            return Err("ws_read_buffer_bytes must be at least 1".into());
        }
        if self.idle_timeout_ms < self.heartbeat_interval_ms {
            return Err("idle_timeout_ms must be at least heartbeat_interval_ms".into());
        }
        Ok(())
    }

    /// The request body limit of the HTTP publish API: an event at `event_bytes_max` plus room
    /// for the envelope (run, kind, idempotency key).
    pub fn publish_body_bytes_max(&self) -> usize {
        usize::try_from(self.hub.event_bytes_max)
            .unwrap_or(usize::MAX)
            .saturating_add(1024)
    }
}

/// What the lock guards: the hub and the wakers of the connection tasks.
pub(crate) struct State {
    pub hub: Hub,
    pub writers: BTreeMap<ConnectionId, Arc<Outbox>>,
    wakes: Vec<ConnectionId>,
}

/// `tokio::time::timeout`, except that a future ready at its first poll never arms the timer.
/// The usual socket write and request-body read complete at once; only one that has to wait
/// for the peer pays for a timer entry. The bound is the same either way: a poll cannot block.
pub(crate) async fn timeout_if_pending<F: std::future::Future>(
    limit: Duration,
    future: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut future = std::pin::pin!(future);
    match poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => tokio::time::timeout(limit, future).await,
    }
}

/// The most transmits an [`Outbox`] holds, and so the most one fill pulls from the hub under
/// the hub lock: bounds both the critical section and what a connection holds beyond its hub
/// cursor (a full batch of typical event frames is ~20 KiB, written in a few syscalls).
pub(crate) const OUTBOX_TRANSMITS_MAX: usize = 64;

/// One connection's hand-off point with the hub: the transmits already pulled from the hub for
/// it, plus a flag and the task's waker.
///
/// Whoever changes the hub for a connection (a publish, its own ping, a close, shutdown) moves
/// the resulting transmits into the connection's outbox while it still holds the hub lock (in
/// [`Locked`]'s drop), then wakes the task after unlocking. The connection task takes them
/// under the outbox's own small lock, so the hub lock is contended only by those who change
/// the hub, never by every connection task on every wake-up. Order holds because every pull
/// from the hub happens under the hub lock and appends to the outbox, and only the connection
/// task takes from it. A wake that comes while the task is busy (writing) stays in the flag
/// and is seen at its next wait, so none is lost; unlike `tokio::sync::Notify` there is no
/// waiter list to lock.
pub(crate) struct Outbox {
    woken: AtomicBool,
    waker: AtomicWaker,
    pending: Mutex<Pending>,
}

/// What an [`Outbox`] holds between a fill and a take.
struct Pending {
    /// At most `OUTBOX_TRANSMITS_MAX`, oldest first; an empty `Vec` (no allocation) when idle.
    transmits: Vec<Transmit>,
    /// The last fill stopped at the bound (or no fill has happened yet): the hub may hold more
    /// for this connection, and the task must pull once the outbox is empty.
    hub_has_more: bool,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            pending: Mutex::new(Pending {
                transmits: Vec::new(),
                hub_has_more: true,
            }),
        }
    }
}

impl Outbox {
    /// Moves this connection's transmits from the hub into the outbox, up to the bound. The
    /// caller holds the hub lock (the `&mut Hub` comes from a [`Locked`] guard).
    ///
    /// Only an empty outbox is filled: what a connection has not yet taken stays in the hub,
    /// where it counts towards the connection's lag, so `send_queue_max` cuts a connection
    /// whose task has stopped taking (a reader that stopped reading) exactly as before the
    /// outbox existed — beyond the lag, a connection holds at most one batch, in its outbox
    /// or being written.
    pub fn fill(&self, hub: &mut Hub, id: ConnectionId) {
        let mut pending = self.lock_pending();
        if !pending.transmits.is_empty() {
            pending.hub_has_more = true;
            return;
        }
        let room = OUTBOX_TRANSMITS_MAX.saturating_sub(pending.transmits.len());
        let transmits = &mut pending.transmits;
        let pulled = hub.poll_transmits(id, room, |transmit| transmits.push(transmit));
        pending.hub_has_more = pulled == room;
        debug_assert!(pending.transmits.len() <= OUTBOX_TRANSMITS_MAX);
    }

    /// Takes everything pulled so far, oldest first, and whether the hub may hold more (then
    /// the task fills the outbox itself once it has written these).
    pub fn take(&self) -> (Vec<Transmit>, bool) {
        let mut pending = self.lock_pending();
        (std::mem::take(&mut pending.transmits), pending.hub_has_more)
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // The hub lock's poisoning is what reports a crash; this lock guards plain data.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once a wake arrived since it last resolved.
    pub async fn woken(&self) {
        poll_fn(|cx| self.poll_woken(cx)).await
    }

    fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake between the check and the registration found no waker: check again.
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The hub lock. Dropping it fills the outbox of every connection the hub asked to wake and
/// wakes them, so no mutation can forget to (the one rule of using the hub: after every
/// mutation, `take_wakes`). The wakes
/// happen after the mutex is released: waking a task can cost a syscall (unparking a worker
/// thread), which must not lengthen the critical section every publish and connection contends on.
pub(crate) struct Locked<'a>(Option<MutexGuard<'a, State>>);

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.0.as_ref().expect("held until drop")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.as_mut().expect("held until drop")
    }
}

/// Writers woken per unlock without allocating (the default `connections_per_user_max`).
const WAKES_INLINE_MAX: usize = 8;

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.0.take() else {
            return;
        };
        let State { hub, writers, wakes } = &mut *guard;
        hub.take_wakes(wakes);
        if wakes.is_empty() {
            return;
        }
        // Each woken connection's transmits move to its outbox under this lock (so they stay
        // in hub order); the tasks are woken after the unlock, so a woken task never waits for
        // this lock. A publish wakes at most `connections_per_user_max` writers, so the usual
        // case needs no allocation.
        let mut inline: [Option<Arc<Outbox>>; WAKES_INLINE_MAX] = Default::default();
        let mut overflow = Vec::new();
        for (i, id) in wakes.drain(..).enumerate() {
            if let Some(outbox) = writers.get(&id) {
                outbox.fill(hub, id);
                match inline.get_mut(i) {
                    Some(slot) => *slot = Some(outbox.clone()),
                    None => overflow.push(outbox.clone()),
                }
            }
        }
        drop(guard);
        for outbox in inline.iter().flatten().chain(overflow.iter()) {
            outbox.wake();
        }
    }
}

/// State shared by the router, the connection tasks, the tick task and every [`Notifier`].
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub clock: Arc<dyn Clock>,
    pub verifier: TokenVerifier,
    pub metrics: Metrics,
    state: Mutex<State>,
    /// Flipped to `true` once by [`Shared::close`]; `serve` watches it to stop accepting.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Locks the hub. `None` when the lock is poisoned (a panic inside the hub): callers treat
    /// that exactly like a shut-down server, so a crash never turns into silent success.
    pub fn lock(&self) -> Option<Locked<'_>> {
        self.state.lock().ok().map(|guard| Locked(Some(guard)))
    }

    /// Shuts the hub down (clients get `shutting_down` and 1001; publishes fail) and tells
    /// `serve` to stop accepting. Idempotent.
    pub fn close(&self) {
        if let Some(mut state) = self.lock() {
            if !state.hub.is_shutting_down() {
                state.hub.shutdown();
            }
        }
        self.shutdown.send_replace(true);
    }

    pub fn is_closed(&self) -> bool {
        *self.shutdown.borrow() || self.lock().is_none_or(|state| state.hub.is_shutting_down())
    }

    /// The cheap half of [`Shared::is_closed`], without taking the hub lock: for fast paths
    /// that go on to the hub anyway (which answers `ShuttingDown` itself after a crash).
    pub fn is_closing(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// A Herald server: the hub plus its HTTP/WebSocket router. Cheap to clone (all clones are the
/// same server), so that one clone can `serve` while another calls `shutdown`.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("config", &self.shared.config).finish()
    }
}

impl Server {
    /// Builds a server with a fresh hub (new epochs for every user stream). `rng` seeds epoch
    /// and connection ids; `clock` is the only source of time.
    pub fn new(config: ServerConfig, clock: Arc<dyn Clock>, rng: SeededRng) -> Result<Server, String> {
        config.validate()?;
        let hub = Hub::new(config.hub.clone(), rng)?;
        let verifier = TokenVerifier::new(&config.jwt_secret);
        let (shutdown, _) = watch::channel(false);
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                clock,
                verifier,
                metrics: Metrics::default(),
                state: Mutex::new(State {
                    hub,
                    writers: BTreeMap::new(),
                    wakes: Vec::new(),
                }),
                shutdown,
            }),
        })
    }

    /// The in-process publishing handle ("the bridge"). Fails with `ShuttingDown` once this
    /// server is shut down or its `serve` future is dropped.
    pub fn notifier(&self) -> Notifier {
        Notifier::new(self.shared.clone())
    }

    /// `GET /v1/ws`, `POST /v1/users/{user}/events`, `GET /healthz`, `GET /metrics`.
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// Graceful shutdown: every client is sent `shutting_down` and closed with 1001, publishes
    /// fail with `ShuttingDown`, and `serve` stops accepting and returns.
    pub fn shutdown(&self) {
        tracing::info!("shutting down");
        self.shared.close();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.is_closed()
    }

    /// The hub's resource gauges (zeros if the hub lock is poisoned).
    pub fn gauges(&self) -> Gauges {
        self.shared.lock().map(|state| state.hub.gauges()).unwrap_or_default()
    }

    /// The hub's monotonic counters (defaults if the hub lock is poisoned).
    pub fn counters(&self) -> Counters {
        self.shared
            .lock()
            .map(|state| state.hub.counters().clone())
            .unwrap_or_default()
    }

    /// The Prometheus text served at `/metrics`.
    pub fn metrics_text(&self) -> String {
        http::render_metrics(&self.shared)
    }

    /// Serves the router on `listener` and runs the retention tick until [`Server::shutdown`].
    /// Then it stops accepting, gives open connections up to `write_timeout_ms` to receive
    /// their 1001 close, and returns. If this future is dropped instead (a crashed host), the
    /// server is shut down as well: every `Notifier` then fails with `ShuttingDown`.
    pub async fn serve<L>(self, listener: L) -> std::io::Result<()>
    where
        L: Listener,
        L::Addr: fmt::Debug,
    {
        let guard = ServeGuard {
            shared: self.shared.clone(),
        };
        let shared = &self.shared;
        let mut stop = shared.shutdown.subscribe();
        let signal = {
            let mut stop = shared.shutdown.subscribe();
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            }
        };
        // Every socket gathers its writes until the writer flushes (one syscall per batch).
        let listener = connection::CoalescingListener(listener);
        let server = axum::serve(listener, self.router())
            .with_graceful_shutdown(signal)
            .into_future();
        tokio::pin!(server);
        let drain = Duration::from_millis(shared.config.write_timeout_ms);
        let result = tokio::select! {
            biased;
            result = &mut server => result,
            () = tick_loop(shared) => unreachable!("the tick loop never ends"),
            () = async {
                let _ = stop.wait_for(|stopped| *stopped).await;
                tokio::time::sleep(drain).await;
            } => {
                tracing::warn!("HTTP connections still open {drain:?} after shutdown; returning anyway");
                Ok(())
            }
        };
        // Accepting has stopped; let connection tasks write their 1001 close, bounded.
        let deadline = tokio::time::Instant::now() + drain;
        while tokio::time::Instant::now() < deadline {
            if shared.lock().is_none_or(|state| state.writers.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(guard);
        result
    }
}

/// Owned by the `serve` future: however that future ends (returned or dropped), the server is
/// shut down, so that a crashed server can never leave a `Notifier` that silently succeeds.
struct ServeGuard {
    shared: Arc<Shared>,
}

impl Drop for ServeGuard {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Evicts events older than `retention_age_ms` even when nobody publishes.
async fn tick_loop(shared: &Shared) {
    let mut interval = tokio::time::interval(Duration::from_millis(shared.config.tick_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Some(mut state) = shared.lock() {
            let now_ms = shared.clock.now_ms();
            state.hub.tick(now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::PublishRequest;
    use crate::protocol::EventKind;
    use serde_json::value::RawValue;

    fn hub_with_alice(send_queue_max: u64) -> (Hub, ConnectionId) {
        let config = HubConfig {
            send_queue_max,
            ..HubConfig::default()
        };
        let mut hub = Hub::new(config, SeededRng::new(3)).unwrap();
        let id = hub.connect(0, "alice", None).unwrap();
        (hub, id)
    }

    fn publish(hub: &mut Hub, n: u64) {
        let data = RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
        let request = PublishRequest {
            run: "r",
            kind: EventKind::AgentThinking,
            data: &data,
            idempotency_key: None,
        };
        hub.publish(1, "alice", request).unwrap();
    }

    fn seqs(transmits: &[Transmit]) -> Vec<u64> {
        transmits
            .iter()
            .filter_map(|t| match t {
                Transmit::Event { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_outbox_keeps_hub_order_and_its_bound_and_says_when_the_hub_has_more() {
        let (mut hub, id) = hub_with_alice(1_000);
        let outbox = Outbox::default();
        assert!(outbox.take().1, "before the first fill the hub may hold the welcome");
        outbox.fill(&mut hub, id);
        let (welcome, more) = outbox.take();
        assert!(matches!(welcome[..], [Transmit::Control(_)]));
        assert!(!more, "a fill below the bound emptied the hub");

        for n in 1..=(OUTBOX_TRANSMITS_MAX as u64 + 10) {
            publish(&mut hub, n);
        }
        outbox.fill(&mut hub, id);
        let (first, more) = outbox.take();
        assert_eq!(first.len(), OUTBOX_TRANSMITS_MAX, "a fill stops at the bound");
        assert!(more, "the rest is still in the hub");
        assert_eq!(seqs(&first), (1..=OUTBOX_TRANSMITS_MAX as u64).collect::<Vec<_>>());
        outbox.fill(&mut hub, id);
        let (rest, more) = outbox.take();
        assert_eq!(
            seqs(&rest),
            (OUTBOX_TRANSMITS_MAX as u64 + 1..=OUTBOX_TRANSMITS_MAX as u64 + 10).collect::<Vec<_>>()
        );
        assert!(!more);
        assert!(outbox.take().0.is_empty());
    }

    #[test]
    fn an_untaken_outbox_leaves_the_backlog_in_the_hub_where_send_queue_max_cuts_it() {
        let (mut hub, id) = hub_with_alice(5);
        let outbox = Outbox::default();
        outbox.fill(&mut hub, id); // the welcome, never taken: a task that stopped taking
        for n in 1..=6 {
            publish(&mut hub, n);
            outbox.fill(&mut hub, id);
        }
        let (taken, more) = outbox.take();
        assert_eq!(taken.len(), 1, "only the welcome: a full outbox is not refilled");
        assert!(more);
        outbox.fill(&mut hub, id);
        let (after, _) = outbox.take();
        let error = after
            .iter()
            .any(|t| matches!(t, Transmit::Control(frame) if frame.contains("slow_consumer")));
        assert!(
            error,
            "the lag of 6 events passed send_queue_max 5: the hub cut the connection"
        );
        assert!(after
            .iter()
            .any(|t| matches!(t, Transmit::Close(crate::protocol::ErrorCode::SlowConsumer))));
    }

    #[test]
    fn dropping_the_hub_lock_fills_and_wakes_the_outbox_of_every_connection_it_touched() {
        let server = Server::new(
            ServerConfig::new(b"secret".to_vec(), "key".into()),
            crate::clock::TokioClock::shared(0),
            SeededRng::new(1),
        )
        .unwrap();
        let shared = &server.shared;
        let outbox = Arc::new(Outbox::default());
        let id = {
            let mut state = shared.lock().unwrap();
            let id = state.hub.connect(0, "alice", None).unwrap();
            state.writers.insert(id, outbox.clone());
            id
        };
        assert!(outbox.woken.swap(false, Ordering::AcqRel), "the welcome woke it");
        assert_eq!(outbox.take().0.len(), 1);
        {
            let mut state = shared.lock().unwrap();
            publish(&mut state.hub, 1);
            assert!(outbox.take().0.is_empty(), "nothing moves while the lock is held");
        }
        assert!(outbox.woken.load(Ordering::Acquire));
        let (taken, more) = outbox.take();
        assert_eq!(seqs(&taken), vec![1]);
        assert!(!more, "the task need not take the hub lock for it");
        let _ = id;
    }
}
