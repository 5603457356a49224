//! The server adapter: gives the sans-IO [`Hub`] sockets, a clock and a router.
//!
//! One `std::sync::Mutex` guards the hub and the table of connection writers; every critical
//! section is short and none spans an `.await`. Each WebSocket connection is one tokio task
//! (`connection.rs`) that waits on its own writer `WakeFlag` and pulls frames from the hub —
//! there are no per-connection channels, so an idle connection costs a socket, a small read
//! buffer and a parked task. The HTTP API (`http.rs`) and the in-process [`Notifier`] publish
//! through the same lock. Every accepted socket is guarded first (`socket.rs`: `sockets_max`,
//! the HTTP request deadline). Generic over the listener (axum's [`Listener`]), so the very
//! same router serves tokio TCP in production and turmoil TCP in the simulation.

mod connection;
mod http;
mod socket;

pub use socket::{disable_nagle, Socket, SocketListener};

use crate::auth::TokenVerifier;
use crate::clock::{check_durations_ms, Clock};
use crate::hub::{ConnectionId, Counters, Gauges, Hub, HubConfig};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::rng::SeededRng;
use axum::serve::Listener;
use futures_util::task::AtomicWaker;
use rustc_hash::FxHashMap;
use std::fmt;
use std::future::poll_fn;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

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
    /// with `idle_timeout`, 4010. At least twice `heartbeat_interval_ms`.
    pub idle_timeout_ms: u64,
    /// Bound on every write (a batch of frames, a ping, a close) and on reading an HTTP body.
    /// A peer that does not drain its socket in time is dropped.
    pub write_timeout_ms: u64,
    /// A socket still speaking HTTP (a publisher's keep-alive connection, or one that has not
    /// yet asked for the WebSocket upgrade) is closed when no request begins within this long
    /// of its accept or of its previous response, or when a begun request is not answered
    /// within this long. Bounds silent and slow (slowloris) sockets and idle keep-alives.
    pub http_request_timeout_ms: u64,
    /// Sockets open at once, in any phase (HTTP, WebSocket before `hello`, connected). One
    /// more is closed as soon as it is accepted. Keep it above `connections_max` plus the
    /// publishers' connections, and below the process's open-file limit.
    pub sockets_max: u64,
    /// Largest incoming WebSocket frame/message. Larger: error `bad_frame`, 4004.
    pub frame_bytes_max: usize,
    /// Interval of the retention tick that evicts events older than `retention_age_ms` even
    /// when nothing is published.
    pub tick_interval_ms: u64,
    /// Per-connection WebSocket read buffer. Small, because clients send little.
    pub ws_read_buffer_bytes: usize,
    /// HS256 secret for hello tokens.
    pub jwt_secret: Vec<u8>,
    /// When set, a hello token must name this audience in `aud` (refused with 4001
    /// otherwise): for a secret shared with other services. `None` ignores `aud`.
    pub token_audience: Option<String>,
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
            .field("http_request_timeout_ms", &self.http_request_timeout_ms)
            .field("sockets_max", &self.sockets_max)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("tick_interval_ms", &self.tick_interval_ms)
            .field("ws_read_buffer_bytes", &self.ws_read_buffer_bytes)
            .field("jwt_secret", &"<redacted>")
            .field("token_audience", &self.token_audience)
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
            http_request_timeout_ms: 30_000,
            sockets_max: 210_000,
            frame_bytes_max: 16 * 1024,
            tick_interval_ms: 1_000,
            ws_read_buffer_bytes: 1024,
            jwt_secret,
            token_audience: None,
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
        if self.token_audience.as_deref() == Some("") {
            return Err("token_audience must not be empty (leave it unset to ignore aud)".into());
        }
        let durations = [
            ("hello_timeout_ms", self.hello_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("http_request_timeout_ms", self.http_request_timeout_ms),
            ("tick_interval_ms", self.tick_interval_ms),
        ];
        for (name, value) in durations.into_iter().chain([("sockets_max", self.sockets_max)]) {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        check_durations_ms(&durations)?;
        if self.frame_bytes_max < 1024 {
            return Err("frame_bytes_max must be at least 1024 (a hello carries a token)".into());
        }
        if self.ws_read_buffer_bytes == 0 {
            return Err("ws_read_buffer_bytes must be at least 1".into());
        }
        // A client that only answers the server's pings is last heard a round trip after a
        // ping; the next ping goes out one interval after it. At twice the interval the idle
        // timeout falls a whole interval after that ping: a quiet, healthy client is never cut.
        if self.idle_timeout_ms < self.heartbeat_interval_ms.saturating_mul(2) {
            return Err(
                "idle_timeout_ms must be at least twice heartbeat_interval_ms (a client that \
                 only answers pings must be heard before it times out)"
                    .into(),
            );
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
    /// Looked up for every wake; Fx-hashed like the hub's connections (ids are seeded-random).
    pub writers: FxHashMap<ConnectionId, Arc<WakeFlag>>,
    wakes: Vec<ConnectionId>,
}

/// `tokio::time::timeout`, except that a future ready at its first poll never arms the timer.
/// The usual socket write and request-body read complete at once; only one that has to wait
/// for the peer pays for a timer entry. The bound is the same either way: a poll cannot block.
pub(crate) async fn timeout_if_pending<F: std::future::Future>(
    limit: Duration,
    future: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    timeout_if_pending_noting(limit, future, &mut false).await
}

/// [`timeout_if_pending`], setting `waited` when the future was not ready at once.
pub(crate) async fn timeout_if_pending_noting<F: std::future::Future>(
    limit: Duration,
    future: F,
    waited: &mut bool,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut future = std::pin::pin!(future);
    match poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => {
            *waited = true;
            tokio::time::timeout(limit, future).await
        }
    }
}

/// Wakes one connection task: a flag plus the task's waker. The writer's flag is raised when
/// the hub has something for the connection, the read gate's when the socket may have
/// something to read. A wake that comes while the task is busy (writing) stays in the flag
/// and is seen at its next wait, so none is lost; unlike `tokio::sync::Notify` there is no
/// waiter list to lock.
#[derive(Default)]
pub(crate) struct WakeFlag {
    woken: AtomicBool,
    waker: AtomicWaker,
}

impl WakeFlag {
    pub fn wake(&self) {
        self.raise();
        self.waker.wake();
    }

    /// Sets the flag without waking the task: for the task itself, which will look again.
    pub fn raise(&self) {
        self.woken.store(true, Ordering::Release);
    }

    /// Resolves once a wake arrived since it last resolved.
    pub async fn woken(&self) {
        poll_fn(|cx| self.poll_woken(cx)).await
    }

    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
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

/// So a socket can hold the flag as its waker (the read gate).
impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        WakeFlag::wake(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        WakeFlag::wake(self);
    }
}

/// The hub lock. Dropping it wakes every connection the hub asked to wake, so no mutation can
/// forget to (the one rule of using the hub: after every mutation, `take_wakes`). The wakes
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

/// Times a connection task yields to a taken hub lock before it waits on the mutex.
const LOCK_YIELDS_MAX: usize = 16;

/// Writers woken per unlock without allocating (the default `connections_per_user_max`).
const WAKES_INLINE_MAX: usize = 8;

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.0.take() else {
            return;
        };
        let state = &mut *guard;
        state.hub.take_wakes(&mut state.wakes);
        if state.wakes.is_empty() {
            return;
        }
        // Woken after the unlock, so a woken task never waits for this lock. A publish wakes
        // at most `connections_per_user_max` writers, so the usual case needs no allocation.
        let mut inline: [Option<Arc<WakeFlag>>; WAKES_INLINE_MAX] = Default::default();
        let mut overflow = Vec::new();
        for (i, id) in state.wakes.drain(..).enumerate() {
            if let Some(writer) = state.writers.get(&id) {
                match inline.get_mut(i) {
                    Some(slot) => *slot = Some(writer.clone()),
                    None => overflow.push(writer.clone()),
                }
            }
        }
        drop(guard);
        for writer in inline.iter().flatten().chain(overflow.iter()) {
            writer.wake();
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
    /// Notified when the last connection task ends (`Metrics::connection_tasks` falls to
    /// zero): wakes `serve`'s drain instead of a polling loop.
    connection_tasks_ended: Notify,
    /// Set once the hub lock is found poisoned (a panic inside the hub). The hub can no longer
    /// serve anyone, so the server shuts down and `serve` returns an error: a process that
    /// kept accepting would answer every publish 503 and every client 1001 with nothing to
    /// restart it.
    poisoned: AtomicBool,
    /// The gauges `/metrics` serves, sampled at most once per `tick_interval_ms`.
    gauge_sample: Mutex<GaugeSample>,
}

/// The last sample of [`Hub::gauges`] taken for `/metrics`. Taking one walks every user and
/// connection under the hub lock (milliseconds at 200k users), and `/metrics` needs no
/// credentials: sampled on every scrape, a flood of scrapes held the lock that every publish
/// and delivery takes (publish p99 went from 0.2 ms to ~80 ms). Sampled at most once per
/// `tick_interval_ms` (tokio's clock, which the simulation drives), a flood costs one walk per
/// interval. Counters stay live: reading them is a copy.
#[derive(Default)]
struct GaugeSample {
    /// When the last sample was claimed; a scraper that finds a recent claim serves `gauges`
    /// instead of walking the hub again, even while the claimant is still walking.
    taken_at: Option<Instant>,
    /// The last sample completed; `None` until the first one is.
    gauges: Option<Gauges>,
}

impl Shared {
    /// Locks the hub. `None` when the lock is poisoned (a panic inside the hub): callers treat
    /// that exactly like a shut-down server, so a crash never turns into silent success, and
    /// the server starts shutting down (see [`Shared::hub_poisoned`]).
    pub fn lock(&self) -> Option<Locked<'_>> {
        match self.state.lock() {
            Ok(guard) => Some(Locked(Some(guard))),
            Err(_) => {
                self.hub_poisoned();
                None
            }
        }
    }

    /// Reacts to a poisoned hub lock: logs it once at error level and starts the shutdown, so
    /// that `serve` stops accepting, drains, and returns an error (the binary then exits
    /// non-zero and its supervisor restarts it). The hub itself cannot be told: its lock is
    /// what is broken, so clients see their sockets end rather than a 1001.
    fn hub_poisoned(&self) {
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            tracing::error!(
                "the hub panicked (its lock is poisoned): shutting down so that the process can be restarted"
            );
        }
        self.shutdown.send_replace(true);
    }

    /// Whether a lock attempt has found the hub lock poisoned (the server then shuts down).
    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// `Err` once the hub lock was found poisoned: what `serve` and `maintenance` return.
    fn poisoned_error(&self) -> std::io::Result<()> {
        if self.is_poisoned() {
            return Err(std::io::Error::other(
                "the hub panicked (its lock is poisoned); the server stopped",
            ));
        }
        Ok(())
    }

    /// The hub's counters, live, and its gauges as `/metrics` serves them: sampled at most once
    /// per `tick_interval_ms` (see [`GaugeSample`]). Defaults if the hub lock is poisoned.
    pub fn scrape(&self) -> (Counters, Gauges) {
        let interval = Duration::from_millis(self.config.tick_interval_ms);
        let now = Instant::now();
        let cached = {
            let mut sample = self.gauge_sample.lock().unwrap_or_else(PoisonError::into_inner);
            let recent = sample.taken_at.is_some_and(|at| now < at + interval);
            match (&sample.gauges, recent) {
                (Some(gauges), true) => Some(gauges.clone()),
                _ => {
                    sample.taken_at = Some(now);
                    None
                }
            }
        };
        let Some(state) = self.lock() else {
            return Default::default();
        };
        let counters = state.hub.counters().clone();
        if let Some(gauges) = cached {
            return (counters, gauges);
        }
        let gauges = state.hub.gauges();
        drop(state);
        let mut sample = self.gauge_sample.lock().unwrap_or_else(PoisonError::into_inner);
        sample.gauges = Some(gauges.clone());
        (counters, gauges)
    }

    /// [`Shared::lock`] for a connection task: when the lock is taken, the task yields and
    /// tries again instead of parking its worker thread on the mutex. A parked worker costs a
    /// context switch, and the unlocking side (often the publishing thread) a futex wake; a
    /// yielded task costs one trip through the run queue. After `LOCK_YIELDS_MAX` yields it
    /// waits like [`Shared::lock`], so the retries are bounded.
    pub async fn lock_yielding(&self) -> Option<Locked<'_>> {
        for _ in 0..LOCK_YIELDS_MAX {
            match self.state.try_lock() {
                Ok(guard) => return Some(Locked(Some(guard))),
                Err(std::sync::TryLockError::Poisoned(_)) => {
                    self.hub_poisoned();
                    return None;
                }
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            tokio::task::yield_now().await;
        }
        self.lock()
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

    /// Resolves once [`Shared::close`] has been called (at once if it already was).
    pub async fn shutdown_started(&self) {
        let mut stop = self.shutdown.subscribe();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }

    /// [`Shared::connection_tasks_drained`], bounded by `write_timeout_ms` (logged if cut).
    async fn drain_connection_tasks(&self) {
        let drain = Duration::from_millis(self.config.write_timeout_ms);
        if tokio::time::timeout(drain, self.connection_tasks_drained())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.metrics.connection_tasks(),
                "WebSocket connections still closing {drain:?} after accepting stopped; returning anyway"
            );
        }
    }

    /// Resolves once no connection task is alive: every close handshake is over (the 1001
    /// written, the client's reply read or its linger over). The hub's writer table is empty
    /// then too: a task leaves it before it is counted out. Unbounded: `serve` puts its
    /// deadline around it.
    async fn connection_tasks_drained(&self) {
        loop {
            let ended = self.connection_tasks_ended.notified();
            let mut ended = std::pin::pin!(ended);
            // Registered before the check, so a last task ending right after it still wakes us.
            ended.as_mut().enable();
            if self.metrics.connection_tasks() == 0 {
                return;
            }
            ended.await;
        }
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
    /// and connection ids; `clock` is the only source of time. Each server life needs its own
    /// seed ([`crate::rng::os_seed`] in production, as the binary does): a life that drew the
    /// previous life's epochs would take its clients' resumes for its own stream, replaying the
    /// wrong events, or refuse them with 4004 as beyond `head`, which stops a client for good.
    pub fn new(config: ServerConfig, clock: Arc<dyn Clock>, rng: SeededRng) -> Result<Server, String> {
        config.validate()?;
        let hub = Hub::new(config.hub.clone(), rng)?;
        let verifier = TokenVerifier::with_audience(&config.jwt_secret, config.token_audience.as_deref());
        let (shutdown, _) = watch::channel(false);
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                clock,
                verifier,
                metrics: Metrics::default(),
                state: Mutex::new(State {
                    hub,
                    writers: FxHashMap::default(),
                    wakes: Vec::new(),
                }),
                shutdown,
                connection_tasks_ended: Notify::new(),
                poisoned: AtomicBool::new(false),
                gauge_sample: Mutex::new(GaugeSample::default()),
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

    /// Sockets closed at once because `sockets_max` were open, since this server started
    /// (`herald_sockets_refused_total`): lets the simulation's coverage tell that its worlds
    /// reach the limit, which the clients alone cannot (a refused socket just ends).
    pub fn sockets_refused(&self) -> u64 {
        self.shared.metrics.sockets_refused()
    }

    /// The hub's monotonic counters (defaults if the hub lock is poisoned).
    pub fn counters(&self) -> Counters {
        self.shared
            .lock()
            .map(|state| state.hub.counters().clone())
            .unwrap_or_default()
    }

    /// The Prometheus text of `/metrics`, with the gauges sampled now: the endpoint samples
    /// them at most once per `tick_interval_ms`, this in-process call on every call.
    pub fn metrics_text(&self) -> String {
        http::render_metrics(&self.shared)
    }

    /// Wraps `listener` the way [`Server::serve`] does: every socket takes a slot under
    /// `sockets_max`, has `http_request_timeout_ms` while it speaks HTTP, and gathers its writes
    /// until a flush. For an application that serves [`Server::router`] inside its own axum
    /// app (with [`Server::maintenance`] alongside): without it, sockets that never finish a
    /// request would stay open for good. `axum::serve` leaves hyper's read buffer at hyper's
    /// default (about 400 KiB per socket for a request head that never ends); [`Server::serve`]
    /// bounds it by [`HTTP_HEAD_BYTES_MAX`].
    pub fn guard_listener<L: Listener>(&self, listener: L) -> SocketListener<L> {
        SocketListener::new(listener, self.shared.clone())
    }

    /// What [`Server::serve`] runs besides the router, for an application that serves
    /// [`Server::router`] inside its own axum app: the retention tick (events older than
    /// `retention_age_ms` are evicted even when nobody publishes) until [`Server::shutdown`],
    /// then the wait, bounded by `write_timeout_ms`, for WebSocket connections to finish their
    /// close (axum's graceful shutdown does not see upgraded connections). Run it alongside
    /// the app and await it after the app's own graceful shutdown:
    ///
    /// ```no_run
    /// # async fn embed(server: herald_core::server::Server, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    /// use axum::serve::ListenerExt;
    /// let app = axum::Router::new().merge(server.router()); // plus the application's routes
    /// let maintenance = tokio::spawn(server.clone().maintenance());
    /// let stop = server.clone();
    /// axum::serve(server.guard_listener(listener.tap_io(herald_core::server::disable_nagle)), app)
    ///     .with_graceful_shutdown(async move {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///         stop.shutdown();
    ///     })
    ///     .await?;
    /// maintenance.await.expect("the maintenance task does not panic")
    /// # }
    /// ```
    ///
    /// Returns an error if the hub panicked (its lock poisoned): the server has then shut
    /// itself down, and the process should exit so that it is restarted. Dropping this future
    /// stops the tick.
    pub async fn maintenance(self) -> std::io::Result<()> {
        let shared = &self.shared;
        tokio::select! {
            biased;
            () = shared.shutdown_started() => {}
            () = tick_loop(shared) => unreachable!("the tick loop never ends"),
        }
        shared.drain_connection_tasks().await;
        shared.poisoned_error()
    }

    /// Serves the router on `listener` and runs the retention tick until [`Server::shutdown`].
    /// Then it stops accepting, gives open HTTP requests up to `write_timeout_ms` to finish,
    /// then WebSocket connections up to `write_timeout_ms` more to finish their close: the 1001
    /// written and the client's close reply read (or a refused socket's linger over), so that a
    /// process exiting when this returns does not cut a closing handshake short. Returns at
    /// that deadline even if some are still closing. If this future is dropped instead (a
    /// crashed host), the server is shut down as well: every `Notifier` then fails with
    /// `ShuttingDown`. If the hub panics (its lock poisoned), the server shuts itself down and
    /// this returns an error once drained.
    pub async fn serve<L>(self, listener: L) -> std::io::Result<()>
    where
        L: Listener,
        L::Addr: fmt::Debug,
    {
        let guard = ServeGuard {
            shared: self.shared.clone(),
        };
        let shared = &self.shared;
        let signal = {
            let shared = shared.clone();
            async move { shared.shutdown_started().await }
        };
        // Every socket takes a slot under `sockets_max`, has a request deadline while it speaks
        // HTTP, and gathers its writes until the writer flushes (one syscall per batch).
        let listener = self.guard_listener(listener);
        let server = serve_http(listener, self.router(), signal);
        tokio::pin!(server);
        let drain = Duration::from_millis(shared.config.write_timeout_ms);
        let result = tokio::select! {
            biased;
            result = &mut server => result,
            () = tick_loop(shared) => unreachable!("the tick loop never ends"),
            () = async {
                shared.shutdown_started().await;
                tokio::time::sleep(drain).await;
            } => {
                tracing::warn!("HTTP connections still open {drain:?} after shutdown; returning anyway");
                Ok(())
            }
        };
        // Accepting has stopped; let connection tasks finish their close handshakes, bounded.
        // Waiting only for the hub to empty would return while tasks still wait for the
        // clients' close replies.
        shared.drain_connection_tasks().await;
        drop(guard);
        result.and_then(|()| shared.poisoned_error())
    }
}

/// Largest buffer hyper may grow while it reads one request's head (request line and
/// headers): a longer head is answered `431 Request Header Fields Too Large` and the socket
/// closed. hyper's own default, about 400 KiB, let a socket without credentials hold that much
/// memory for up to `http_request_timeout_ms` by sending a head that never ends; herald's
/// requests have a head of a few hundred bytes. Bodies are not bound by it (hyper streams
/// them; the publish handler bounds its own).
pub const HTTP_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Serves `router` over HTTP/1.1 (with upgrades, for WebSocket) on every socket `listener`
/// accepts, until `signal`; then stops accepting, lets each connection finish the request in
/// flight, and returns once every connection has ended. What `axum::serve` does, with hyper's
/// read buffer bounded by [`HTTP_HEAD_BYTES_MAX`] (axum offers no setting for it).
async fn serve_http<L>(mut listener: L, router: axum::Router, signal: impl Future<Output = ()>) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: fmt::Debug,
{
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    // Each connection task holds a receiver; `closed()` resolves once all are dropped. A
    // sender dropped (`stop`) tells the connections to finish gracefully.
    let (connections, connections_alive) = watch::channel(());
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(signal);
    loop {
        let (io, addr) = tokio::select! {
            biased;
            () = &mut signal => break,
            accepted = listener.accept() => accepted,
        };
        tracing::trace!(?addr, "accepted");
        let service = TowerToHyperService::new(router.clone());
        let alive = connections_alive.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.max_buf_size(HTTP_HEAD_BYTES_MAX);
            let connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
            tokio::pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    biased;
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::trace!("connection ended: {error:#}");
                        }
                        break;
                    }
                    _ = stopped.wait_for(|stopped| *stopped), if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    drop(connections_alive);
    let _ = stop.send(true);
    connections.closed().await;
    Ok(())
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
    use crate::clock::{TokioClock, CONFIG_DURATION_MAX_MS};
    use std::sync::atomic::AtomicU64;

    #[test]
    fn an_idle_timeout_that_a_ping_could_not_beat_is_refused() {
        let mut config = ServerConfig::new(b"secret".to_vec(), "key".into());
        config.heartbeat_interval_ms = 10_000;
        config.idle_timeout_ms = 10_000;
        let error = config.validate().unwrap_err();
        assert!(error.contains("twice heartbeat_interval_ms"), "{error}");
        config.idle_timeout_ms = 20_000;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn a_duration_beyond_a_day_is_refused() {
        // An unbounded write timeout would make the shutdown drain unbounded, and a hello
        // timeout near u64::MAX would overflow `now + timeout`.
        let mut config = ServerConfig::new(b"secret".to_vec(), "key".into());
        config.write_timeout_ms = CONFIG_DURATION_MAX_MS + 1;
        let error = config.validate().unwrap_err();
        assert!(
            error.contains("write_timeout_ms") && error.contains("CONFIG_DURATION_MAX_MS"),
            "{error}"
        );
        config.write_timeout_ms = CONFIG_DURATION_MAX_MS;
        config.hello_timeout_ms = u64::MAX;
        assert!(config.validate().unwrap_err().contains("hello_timeout_ms"));
    }

    fn shared() -> Arc<Shared> {
        let config = ServerConfig::new(b"secret".to_vec(), "key".into());
        Server::new(config, TokioClock::shared(0), SeededRng::new(1))
            .expect("valid config")
            .shared
    }

    /// While the hub lock is held (here by the test itself, between its yields), a connection
    /// task waiting for it lets the other tasks of its (single) worker thread run, then gets
    /// the lock once it is free. A task that parked the thread on the mutex would hang here.
    /// The test yields 4 times, well under `LOCK_YIELDS_MAX`, so the waiter never falls back
    /// to waiting on the mutex.
    #[tokio::test(flavor = "current_thread")]
    #[allow(clippy::await_holding_lock)] // the point: a lock held while the runtime runs on
    async fn lock_yielding_lets_the_worker_run_other_tasks_while_the_lock_is_taken() {
        let shared = shared();
        let guard = shared.state.lock().unwrap();
        let other_task_polls = Arc::new(AtomicU64::new(0));
        let polls = other_task_polls.clone();
        let other_task = tokio::spawn(async move {
            loop {
                polls.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let waiter = {
            let shared = shared.clone();
            tokio::spawn(async move { shared.lock_yielding().await.is_some() })
        };
        // Let the waiter find the lock taken and start yielding.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "the lock is still held");
        assert!(
            other_task_polls.load(Ordering::Relaxed) >= 2,
            "the worker thread kept running other tasks"
        );
        drop(guard);
        assert!(waiter.await.unwrap(), "got the lock once it was free");
        other_task.abort();
    }

    /// Poisons the hub lock the only way it can be: a panic while it is held.
    fn poison(shared: &Arc<Shared>) {
        let shared = shared.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = shared.state.lock().unwrap();
            panic!("a bug inside the hub (deliberate, for the test)");
        })
        .join();
        assert!(panicked.is_err());
    }

    /// A hub that panicked can serve no one: the first caller that finds its lock poisoned (a
    /// publish here, with the tick an hour away) shuts the server down, and `serve` returns an
    /// error, so that the binary exits non-zero and is restarted instead of answering 503 and
    /// 1001 for good.
    #[tokio::test]
    async fn a_poisoned_hub_lock_stops_serve_with_an_error() {
        let mut config = ServerConfig::new(b"secret".to_vec(), "key".into());
        config.tick_interval_ms = 3_600_000;
        let server = Server::new(config, TokioClock::shared(0), SeededRng::new(1)).expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let serving = tokio::spawn(server.clone().serve(listener));
        // Past the interval's immediate first tick.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!serving.is_finished());
        poison(&server.shared);
        assert!(!server.shared.is_closing(), "nobody has looked at the lock yet");

        let published = server.notifier().publish(
            "alice",
            "run-1",
            crate::protocol::EventKind::AgentStarted,
            &serde_json::Value::Null,
        );
        assert!(published.is_err(), "{published:?}");
        let returned = tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("serve returns once the poisoned lock is found")
            .unwrap();
        let error = returned.expect_err("serve reports the crash");
        assert!(error.to_string().contains("poisoned"), "{error}");
        assert!(server.is_shutting_down());
    }

    /// The tick finds a poisoned lock too, for a server nobody publishes to; `maintenance` (an
    /// embedder's tick) reports it like `serve`.
    #[tokio::test]
    async fn maintenance_returns_an_error_once_the_tick_finds_the_lock_poisoned() {
        let mut config = ServerConfig::new(b"secret".to_vec(), "key".into());
        config.tick_interval_ms = 10;
        let server = Server::new(config, TokioClock::shared(0), SeededRng::new(1)).expect("valid config");
        let maintenance = tokio::spawn(server.clone().maintenance());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!maintenance.is_finished());
        poison(&server.shared);
        let returned = tokio::time::timeout(Duration::from_secs(5), maintenance)
            .await
            .expect("maintenance returns once the tick finds the lock poisoned")
            .unwrap();
        assert!(returned.is_err());
    }

    /// A lock held for longer than the yields last is still taken: after `LOCK_YIELDS_MAX`
    /// yields the task waits on the mutex.
    #[test]
    fn lock_yielding_gets_a_lock_held_longer_than_its_yields() {
        let shared = shared();
        let (locked, is_locked) = std::sync::mpsc::channel();
        let holder = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let _guard = shared.state.lock().unwrap();
                locked.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            })
        };
        is_locked.recv().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(runtime.block_on(shared.lock_yielding()).is_some());
        holder.join().unwrap();
    }
}
