//! The network seam: turmoil's simulated TCP plugged into the core's generic adapters — an
//! `axum::serve::Listener` for the server and a client `Connector` for the client library.

use herald_core::client::Connector;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The port every simulated server life listens on.
pub const SERVER_PORT: u16 = 8080;
/// The server host's name in the simulated network.
pub const SERVER_HOST: &str = "server";

/// turmoil's listener as an axum listener. Accept errors are retried after a short pause, as
/// `tokio::net::TcpListener`'s impl in axum does. Every accepted stream is registered in
/// `connections`, so that a crash can reset them in a deterministic order.
pub struct TurmoilListener {
    pub listener: turmoil::net::TcpListener,
    pub connections: ServerConnections,
}

impl axum::serve::Listener for TurmoilListener {
    type Io = SimStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => return (self.connections.register(stream), addr),
                Err(error) => {
                    tracing::debug!(%error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

type SharedStream = Arc<Mutex<Option<turmoil::net::TcpStream>>>;

/// The streams one server life accepted, in accept order.
///
/// Why: when turmoil crashes a host it drops the host's tokio runtime, and tokio drops tasks
/// shard by shard, the shard chosen by a process-wide task id counter. The order in which the
/// server's sockets reset — and so the order in which clients notice — would then depend on
/// how many tasks the process had spawned before, and two runs of one seed would differ. The
/// world therefore resets every accepted stream itself, in accept order, one tick before it
/// crashes or restarts the host ([`ServerConnections::reset_all`]).
#[derive(Clone, Default)]
pub struct ServerConnections {
    inner: Arc<Mutex<ConnectionsInner>>,
}

#[derive(Default)]
struct ConnectionsInner {
    /// Set by `reset_all`: streams accepted afterwards (in the same tick) are reset at once.
    reset: bool,
    next: u64,
    streams: BTreeMap<u64, Weak<Mutex<Option<turmoil::net::TcpStream>>>>,
}

/// Registrations between sweeps of streams the server has already dropped.
const SWEEP_INTERVAL: u64 = 256;

impl ServerConnections {
    fn register(&self, stream: turmoil::net::TcpStream) -> SimStream {
        let mut inner = self.inner.lock().unwrap();
        if inner.reset {
            drop(stream);
            return SimStream {
                inner: Arc::new(Mutex::new(None)),
            };
        }
        let shared: SharedStream = Arc::new(Mutex::new(Some(stream)));
        inner.next += 1;
        let key = inner.next;
        if key.is_multiple_of(SWEEP_INTERVAL) {
            inner.streams.retain(|_, weak| weak.strong_count() > 0);
        }
        inner.streams.insert(key, Arc::downgrade(&shared));
        SimStream { inner: shared }
    }

    /// How many accepted sockets the server still holds open: registered, not yet dropped by
    /// the server and not reset by the world. The bounded-resources checker compares it with the
    /// connections the clients hold; counted here, by the network the world owns, so a server
    /// that forgets a socket cannot hide it from its own gauges.
    pub fn open_sockets(&self) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        inner.streams.retain(|_, weak| weak.strong_count() > 0);
        inner
            .streams
            .values()
            .filter_map(Weak::upgrade)
            .filter(|shared| shared.lock().unwrap().is_some())
            .count() as u64
    }

    /// Drops every live accepted stream, oldest first. Must run inside the server host (turmoil
    /// sends the resets from the current host).
    pub fn reset_all(&self) {
        let streams = {
            let mut inner = self.inner.lock().unwrap();
            inner.reset = true;
            std::mem::take(&mut inner.streams)
        };
        for (_, weak) in streams {
            if let Some(shared) = weak.upgrade() {
                drop(shared.lock().unwrap().take());
            }
        }
    }
}

/// An accepted stream whose socket the world can reset from outside the task that owns it.
/// After a reset, reads and writes fail with `ConnectionReset`.
///
/// Outside the simulation (when the world has ended and drops the host's tasks) they fail the
/// same way: turmoil panics on any socket call made without its world, and a socket's drop can
/// still write (the server's write coalescing offers its deferred bytes once more, never
/// blocking), so a socket still holding bytes at the end would otherwise panic in a destructor.
pub struct SimStream {
    inner: SharedStream,
}

impl SimStream {
    /// `op` on the turmoil stream, unless the world reset it or has ended: then `gone()`.
    fn poll_live<R>(
        &self,
        op: impl FnOnce(Pin<&mut turmoil::net::TcpStream>) -> Poll<io::Result<R>>,
        gone: impl FnOnce() -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        match self.inner.lock().unwrap().as_mut() {
            Some(stream) if turmoil::in_simulation() => op(Pin::new(stream)),
            _ => Poll::Ready(gone()),
        }
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "reset by the simulated crash")
}

impl AsyncRead for SimStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.poll_live(|stream| stream.poll_read(cx, buf), || Err(reset_error()))
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_live(|stream| stream.poll_write(cx, buf), || Err(reset_error()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_live(|stream| stream.poll_flush(cx), || Err(reset_error()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_live(|stream| stream.poll_shutdown(cx), || Ok(()))
    }
}

/// Opens turmoil TCP streams to the simulated server for the client library.
#[derive(Debug, Clone)]
pub struct TurmoilConnector;

impl Connector for TurmoilConnector {
    type Stream = turmoil::net::TcpStream;

    fn connect(&self) -> impl std::future::Future<Output = io::Result<Self::Stream>> + Send {
        turmoil::net::TcpStream::connect((SERVER_HOST, SERVER_PORT))
    }
}

/// The URL clients put in their upgrade request.
pub fn server_ws_url() -> String {
    format!("ws://{SERVER_HOST}:{SERVER_PORT}{}", herald_core::protocol::WS_PATH)
}
