//! The clock seam. The hub takes `now_ms` as an argument; the adapters read it from a
//! [`Clock`]. One implementation serves production and simulation: tokio's clock, which turmoil
//! drives in simulated time, plus a wall-clock base for JWT `exp` that the caller supplies (the
//! binary reads the system clock once at start-up; the simulation passes a fixed epoch).

use std::sync::Arc;

/// Time as the adapters need it.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic milliseconds since this clock started. Never goes backwards.
    fn now_ms(&self) -> u64;
    /// Wall-clock Unix time in seconds, for token expiry.
    fn unix_secs(&self) -> u64;
}

/// tokio's monotonic clock (simulated under turmoil) plus a fixed wall-clock base.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
    unix_ms_at_start: u64,
}

impl TokioClock {
    /// Starts the clock now. `unix_ms_at_start` is the wall time this instant corresponds to.
    /// Must be called inside a tokio runtime (or a turmoil host).
    pub fn new(unix_ms_at_start: u64) -> TokioClock {
        TokioClock {
            start: tokio::time::Instant::now(),
            unix_ms_at_start,
        }
    }

    pub fn shared(unix_ms_at_start: u64) -> Arc<dyn Clock> {
        Arc::new(TokioClock::new(unix_ms_at_start))
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn unix_secs(&self) -> u64 {
        (self.unix_ms_at_start + self.now_ms()) / 1000
    }
}
