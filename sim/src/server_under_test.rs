//! The seam between the world and the server it tests. The world runs [`RealServer`] — the
//! production `herald_core::server::Server` — unless a test supplies a deliberately broken one
//! (fixtures in `sim/tests/`, never compiled into the `herald` binary) to prove the checkers bite.

use futures_util::future::LocalBoxFuture;
use herald_core::clock::Clock;
use herald_core::hub::{Gauges, PublishError, Published};
use herald_core::notifier::Notifier;
use herald_core::protocol::EventKind;
use herald_core::rng::SeededRng;
use herald_core::server::{Server, ServerConfig};
use std::io;
use std::sync::Arc;

use crate::net::TurmoilListener;

/// Everything one server life gets from the world.
pub struct ServerLife {
    /// 0 for the first start, +1 per restart.
    pub life: u32,
    pub config: ServerConfig,
    pub clock: Arc<dyn Clock>,
    pub rng: SeededRng,
    pub listener: TurmoilListener,
}

/// A running server life, as the world drives it.
pub struct LiveServer {
    /// The in-process publishing API of this life ("the bridge").
    pub publisher: Arc<dyn Publish>,
    pub control: Arc<dyn ServerControl>,
    /// Serves until shutdown; dropping it is a crash.
    pub serve: LocalBoxFuture<'static, io::Result<()>>,
}

/// The in-process publishing API, as the world calls it.
pub trait Publish: Send + Sync {
    fn publish(
        &self,
        user: &str,
        run: &str,
        kind: EventKind,
        data: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<Published, PublishError>;
}

/// What the world needs besides publishing: gauges for the bounded-resources checker, the
/// server's own count of refused sockets for coverage, and a graceful shutdown.
pub trait ServerControl: Send + Sync {
    fn gauges(&self) -> Gauges;
    /// Sockets this life closed at once at `sockets_max` (`Server::sockets_refused`).
    fn sockets_refused(&self) -> u64;
    fn shutdown(&self);
}

/// Starts one server life on the current turmoil host.
pub trait ServerUnderTest: 'static {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String>;
}

impl Publish for Notifier {
    fn publish(
        &self,
        user: &str,
        run: &str,
        kind: EventKind,
        data: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<Published, PublishError> {
        self.publish_with_key(user, run, kind, data, idempotency_key)
    }
}

/// The production server, unmodified.
pub struct RealServer;

struct RealControl(Server);

impl ServerControl for RealControl {
    fn gauges(&self) -> Gauges {
        self.0.gauges()
    }

    fn sockets_refused(&self) -> u64 {
        self.0.sockets_refused()
    }

    fn shutdown(&self) {
        self.0.shutdown()
    }
}

impl ServerUnderTest for RealServer {
    fn start(&self, life: ServerLife) -> Result<LiveServer, String> {
        let server = Server::new(life.config, life.clock, life.rng)?;
        let publisher: Arc<dyn Publish> = Arc::new(server.notifier());
        let control: Arc<dyn ServerControl> = Arc::new(RealControl(server.clone()));
        let listener = life.listener;
        Ok(LiveServer {
            publisher,
            control,
            serve: Box::pin(server.serve(listener)),
        })
    }
}
