//! Coverage (`herald_properties::coverage`) in real worlds, for the paths that only the
//! server's own count can show: a socket refused at `sockets_max` just ends at the client, and
//! the history does not carry the limit, so coverage reads the server's count from the gauge
//! samples.

use herald_properties::checkers::check_all;
use herald_properties::coverage::{paths_reached, Path};
use herald_properties::history::Observation;
use herald_properties::scenario::{Scenario, ScenarioConfig, Step, TimedStep};
use herald_sim::run;

/// Four tabs of one user on one host, connecting a quarter of a second apart.
fn four_tabs(sockets_max: u64) -> Scenario {
    let mut config = ScenarioConfig {
        users: 1,
        client_hosts: 1,
        ..ScenarioConfig::default()
    };
    config.limits.sockets_max = sockets_max;
    Scenario {
        config,
        steps: (0..4)
            .map(|client| TimedStep {
                at_ms: 250 * u64::from(client),
                step: Step::Connect {
                    client,
                    user: 0,
                    host: 0,
                    token_ttl_ms: None,
                },
            })
            .collect(),
    }
}

#[test]
fn sockets_refused_at_sockets_max_are_covered_and_excused() {
    let scenario = four_tabs(2);
    let history = run(&scenario, 7);
    let refused = paths_reached(&history)[&Path::SocketsMaxRefused];
    assert!(refused > 0, "two of four tabs over sockets_max 2 were never refused");
    // The count is the server's: the gauge samples carry it, and it never goes down in a life.
    let counts: Vec<u64> = history
        .entries
        .iter()
        .filter_map(|e| match &e.what {
            Observation::Gauges(sample) => Some(sample.sockets_refused),
            _ => None,
        })
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert_eq!(counts.last().copied(), Some(refused));
    // Refusing at the limit is what the server must do: no invariant flags it.
    assert_eq!(check_all(&scenario, &history), vec![]);

    // The same world under the default limit refuses nothing, and its history carries no count.
    let roomy = four_tabs(ScenarioConfig::default().limits.sockets_max);
    let history = run(&roomy, 7);
    assert_eq!(paths_reached(&history)[&Path::SocketsMaxRefused], 0);
    assert!(!String::from_utf8(history.canonical_bytes())
        .unwrap()
        .contains("sockets_refused"));
}
