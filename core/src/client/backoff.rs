//! Capped exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
//! Jitter"): the n-th consecutive failed attempt waits a uniformly random time in
//! `0..=min(backoff_max_ms, backoff_initial_ms * 2^n)`. Full jitter spreads a thousand clients
//! that lost the same server over the whole window instead of synchronizing their retries.
//! Randomness comes from the injected [`SeededRng`], so the simulation replays the same delays.

use super::ClientConfig;
use crate::rng::SeededRng;

/// Exponent cap: 2^32 times any sane initial delay already exceeds any sane maximum.
const DOUBLINGS_MAX: u32 = 32;

/// Backoff state of one client. Reset once a welcomed connection has lasted `backoff_reset_after_ms`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    failures: u32,
    rng: SeededRng,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64, rng: SeededRng) -> Backoff {
        assert!(initial_ms >= 1, "backoff_initial_ms must be at least 1");
        assert!(
            max_ms >= initial_ms,
            "backoff_max_ms must be at least backoff_initial_ms"
        );
        Backoff {
            initial_ms,
            max_ms,
            failures: 0,
            rng,
        }
    }

    /// The backoff a client task runs with: the config's bounds, jitter from its `rng_seed`.
    pub fn from_config(config: &ClientConfig) -> Backoff {
        Backoff::new(
            config.backoff_initial_ms,
            config.backoff_max_ms,
            SeededRng::new(config.rng_seed),
        )
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling_ms(&self) -> u64 {
        let factor = 1u64 << self.failures.min(DOUBLINGS_MAX);
        self.initial_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay_ms(&mut self) -> u64 {
        let ceiling = self.ceiling_ms();
        self.failures = self.failures.saturating_add(1);
        // Saturating: a ceiling of u64::MAX (a `Backoff` built without `ClientConfig::validate`)
        // must not overflow.
        let delay = self.rng.below(ceiling.saturating_add(1));
        debug_assert!(delay <= self.max_ms);
        delay
    }

    /// A uniform draw in `0..=spread_ms` (at most `max_ms`), counting no failure: the wait
    /// after a server's shutdown, which every client of that server hears at the same moment.
    pub fn spread_ms(&mut self, spread_ms: u64) -> u64 {
        self.rng.below(spread_ms.min(self.max_ms).saturating_add(1))
    }

    /// A welcomed connection lasted: the next failure starts again from `initial_ms`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(100, 1_000, SeededRng::new(1));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(backoff.ceiling_ms());
            let delay = backoff.next_delay_ms();
            assert!(delay <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1_000, 1_000]);
        for _ in 0..100 {
            backoff.next_delay_ms();
        }
        assert_eq!(backoff.ceiling_ms(), 1_000, "no overflow after many failures");
        backoff.reset();
        assert_eq!(backoff.ceiling_ms(), 100);
    }

    #[test]
    fn the_largest_ceiling_does_not_overflow() {
        let mut backoff = Backoff::new(u64::MAX, u64::MAX, SeededRng::new(3));
        for _ in 0..3 {
            assert_eq!(backoff.ceiling_ms(), u64::MAX);
            backoff.next_delay_ms();
        }
    }

    #[test]
    fn jitter_is_seeded_and_spread() {
        let draws = |seed| {
            let mut backoff = Backoff::new(1_000, 1_000, SeededRng::new(seed));
            (0..200).map(|_| backoff.next_delay_ms()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let values = draws(7);
        assert!(values.iter().all(|d| *d <= 1_000));
        assert!(
            values.iter().any(|d| *d < 250) && values.iter().any(|d| *d > 750),
            "full jitter spreads"
        );
    }
}
