//! The clock seam, simulated: time is turmoil's simulated elapsed time, which every host sees
//! alike. (Each turmoil host has its own tokio runtime whose `Instant` starts from the machine's
//! real clock, so `tokio::time::Instant` values must never cross hosts; simulated elapsed time
//! can.) The wall-clock base is fixed, so tokens and their expiry are the same in every run.

use herald_core::clock::Clock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Unix time (ms) at which every simulated world starts: 2023-11-14T22:13:20Z.
pub const SIM_UNIX_EPOCH_MS: u64 = 1_700_000_000_000;

/// Simulated ms since the world started, from any host. Panics outside a turmoil world.
pub fn sim_now_ms() -> u64 {
    turmoil::sim_elapsed()
        .expect("called inside a turmoil host")
        .as_millis() as u64
}

/// A server life's clock: ms since that life started, never going backwards.
#[derive(Debug)]
pub struct SimClock {
    started_at_ms: u64,
    last_ms: AtomicU64,
}

impl SimClock {
    /// A clock whose zero is the current simulated instant.
    pub fn starting_now() -> SimClock {
        SimClock {
            started_at_ms: sim_now_ms(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let now = sim_now_ms().saturating_sub(self.started_at_ms);
        self.last_ms.fetch_max(now, Ordering::Relaxed).max(now)
    }

    fn unix_secs(&self) -> u64 {
        (SIM_UNIX_EPOCH_MS + sim_now_ms()) / 1000
    }
}
