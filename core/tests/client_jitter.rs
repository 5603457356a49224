//! A fleet of production clients must not retry in lockstep. `ClientConfig::with_os_seed` gives
//! each client its own jitter seed from the OS, so a herd that lost the same server spreads its
//! first reconnect over the whole backoff window; clients sharing a seed (what every caller of
//! `ClientConfig::new` who passed a constant got) all wait exactly as long as each other.

use herald_core::client::{Backoff, ClientConfig};
use herald_core::rng::os_seed;
use std::collections::BTreeSet;

const FLEET_CLIENTS: usize = 1000;
const URL: &str = "ws://127.0.0.1:1/v1/ws";

/// The distinct first reconnect delays of `configs`, from the backoff each client task runs.
fn first_delays_ms(configs: &[ClientConfig]) -> BTreeSet<u64> {
    configs
        .iter()
        .map(|config| Backoff::from_config(config).next_delay_ms())
        .collect()
}

#[test]
fn os_seeded_clients_spread_their_first_reconnect_over_the_window() {
    let fleet: Vec<ClientConfig> = (0..FLEET_CLIENTS).map(|_| ClientConfig::with_os_seed(URL)).collect();
    let seeds: BTreeSet<u64> = fleet.iter().map(|config| config.rng_seed).collect();
    assert_eq!(seeds.len(), FLEET_CLIENTS, "every client draws its own seed");
    for config in &fleet {
        assert_eq!(config.validate(), Ok(()));
        let defaults = ClientConfig::new(URL, config.rng_seed);
        assert_eq!(*config, defaults, "only the seed differs from `new`");
    }
    // The first delay is uniform over 0..=backoff_initial_ms (251 values by default): a thousand
    // independent draws hit about 246 of them; 200 leaves room for chance (failing it by chance
    // is far less likely than 1 in 10^12).
    let initial_ms = fleet[0].backoff_initial_ms;
    assert_eq!(initial_ms, 250);
    let spread = first_delays_ms(&fleet);
    assert!(
        spread.len() >= 200,
        "{} distinct first delays among {FLEET_CLIENTS} clients",
        spread.len()
    );
    assert!(spread.iter().all(|delay| *delay <= initial_ms));

    // The herd this prevents: one shared seed, one delay for every client.
    let herd: Vec<ClientConfig> = (0..FLEET_CLIENTS).map(|_| ClientConfig::new(URL, 7)).collect();
    assert_eq!(first_delays_ms(&herd).len(), 1);
}

#[test]
fn os_seeds_differ_between_threads() {
    let threads: Vec<_> = (0..8).map(|_| std::thread::spawn(|| [os_seed(), os_seed()])).collect();
    let seeds: BTreeSet<u64> = threads
        .into_iter()
        .flat_map(|thread| thread.join().expect("seed thread"))
        .collect();
    assert_eq!(seeds.len(), 16);
}
