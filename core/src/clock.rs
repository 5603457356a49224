//! The clock seam. The hub takes `now_ms` as an argument; the adapters read it from a
//! [`Clock`]. Both implementations measure monotonic time with tokio's clock, which turmoil
//! drives in simulated time; they differ only in the wall time that JWT `exp` is judged
//! against. [`TokioClock`] adds a fixed base to it (the simulation passes a fixed epoch).
//! [`WallClock`], the `herald` binary's, reads the system clock at every check, so that a
//! clock corrected by NTP after start-up, or a host that was suspended, judges tokens by the
//! real time.

use std::sync::Arc;

/// Largest accepted value of every configured duration, client's and server's (timeouts,
/// heartbeats, backoff, ticks): one day. Longer values are surely a mistake (a unit slip), and
/// bounding them keeps every deadline computed from them (`now + duration`) far from overflow
/// and every drain they bound finite.
pub const CONFIG_DURATION_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// The first of the named durations beyond [`CONFIG_DURATION_MAX_MS`], as a config error.
pub fn check_durations_ms(durations: &[(&str, u64)]) -> Result<(), String> {
    match durations.iter().find(|(_, value)| *value > CONFIG_DURATION_MAX_MS) {
        Some((name, value)) => Err(format!(
            "{name} {value} exceeds the largest accepted duration, {CONFIG_DURATION_MAX_MS} ms \
             (one day, CONFIG_DURATION_MAX_MS)"
        )),
        None => Ok(()),
    }
}

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

/// tokio's monotonic clock, and the system's wall clock for token expiry, read at every check.
/// For the production binary only: the simulation's worlds must not read the system clock.
#[derive(Debug, Clone)]
pub struct WallClock {
    /// Monotonic time only; its Unix base is unused.
    monotonic: TokioClock,
}

impl WallClock {
    /// Must be called inside a tokio runtime.
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(WallClock {
            monotonic: TokioClock::new(0),
        })
    }
}

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        self.monotonic.now_ms()
    }

    fn unix_secs(&self) -> u64 {
        system_unix_secs()
    }
}

/// The system clock in Unix seconds: [`WallClock`]'s wall time, and the `herald token`
/// command's, which runs without a runtime to build a clock in. Never read in the simulation.
/// A system clock set before 1970 reads as 0: every token is then unexpired until the clock is
/// corrected, which the operator sees in the logs of every other service.
pub fn system_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_wall_clock_follows_the_system_clock_not_the_monotonic_one() {
        let clock = WallClock::shared();
        let fixed = TokioClock::shared(0);
        // An hour of monotonic time that the system clock did not see (a paused tokio clock
        // stands in for a suspended host).
        tokio::time::advance(std::time::Duration::from_secs(3_600)).await;
        assert_eq!(fixed.unix_secs(), 3_600);
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            clock.unix_secs().abs_diff(system) <= 1,
            "{} vs {system}",
            clock.unix_secs()
        );
        assert_eq!(clock.now_ms(), 3_600_000);
    }
}
