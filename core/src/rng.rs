//! The one source of randomness in the core: a seeded SplitMix64.
//!
//! The hub draws epoch ids and connection ids from it and the client draws backoff jitter from
//! it. Production seeds it from the OS ([`os_seed`]: the binary once at start-up, a production
//! client through `ClientConfig::with_os_seed`); the simulation seeds it from the scenario seed,
//! so the same seed gives the same ids and the same jitter.

/// 64 bits from the OS to seed a [`SeededRng`] in production, different on every call (std's
/// `RandomState`: keys drawn from the OS once per thread, then stepped for each new state).
/// Never called in the simulation (the campaign runner uses it only to name its files). Not for secrets (64 bits, and successive calls are related):
/// `herald serve --dev` reads /dev/urandom for its secrets, and fails without it.
pub fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for ids and jitter.
/// Not for secrets: nothing in Herald uses an id as a capability.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0); the modulo bias is irrelevant for jitter and ids.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no value");
        self.next_u64() % bound
    }

    /// Derives an independent generator, so that one seed can feed several components without
    /// their draws depending on each other's order.
    pub fn fork(&mut self) -> SeededRng {
        SeededRng::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_values_spread() {
        let mut a = SeededRng::new(42);
        let mut b = SeededRng::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut sorted = xs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100, "no repeats in 100 draws");
        let mut c = SeededRng::new(43);
        assert_ne!(c.next_u64(), xs[0]);
        assert!((0..1000).all(|_| a.below(7) < 7));
    }
}
