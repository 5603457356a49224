use herald_properties::history::Observation;
use herald_properties::scenario::*;

fn main() {
    let scenario = Scenario {
        config: ScenarioConfig {
            quiet_period_ms: 5_000,
            ..ScenarioConfig::default()
        },
        steps: vec![
            TimedStep {
                at_ms: 100,
                step: Step::Connect {
                    client: 0,
                    user: 0,
                    host: 0,
                    token_ttl_ms: None,
                },
            },
            TimedStep {
                at_ms: 100,
                step: Step::Connect {
                    client: 1,
                    user: 1,
                    host: 1,
                    token_ttl_ms: None,
                },
            },
            TimedStep {
                at_ms: 1000,
                step: Step::Burst {
                    user: 0,
                    run: 0,
                    count: 5,
                    payload_bytes: 10,
                    via: Via::Notifier,
                },
            },
            TimedStep {
                at_ms: 1100,
                step: Step::Publish {
                    user: 1,
                    run: 0,
                    kind: Kind::AgentStarted,
                    payload_bytes: 10,
                    via: Via::Http {
                        idempotency_key: true,
                        retries: 2,
                    },
                },
            },
            TimedStep {
                at_ms: 1500,
                step: Step::Kill { client: 0 },
            },
            TimedStep {
                at_ms: 1600,
                step: Step::Burst {
                    user: 0,
                    run: 1,
                    count: 3,
                    payload_bytes: 10,
                    via: Via::Notifier,
                },
            },
            TimedStep {
                at_ms: 2000,
                step: Step::RestartServer,
            },
            TimedStep {
                at_ms: 2500,
                step: Step::Hostile {
                    host: 0,
                    attack: Attack::ForgedToken { user: 1 },
                },
            },
            TimedStep {
                at_ms: 3000,
                step: Step::Publish {
                    user: 0,
                    run: 2,
                    kind: Kind::AgentCompleted,
                    payload_bytes: 10,
                    via: Via::Notifier,
                },
            },
        ],
    };
    let started = std::time::Instant::now();
    let out = herald_sim::run_with(
        &scenario,
        42,
        herald_sim::WorldOptions {
            trace: std::env::var("TRACE").is_ok(),
            ..Default::default()
        },
    );
    for e in &out.history.entries {
        if matches!(e.what, Observation::Gauges(_)) {
            continue;
        }
        println!("{:>6} {}", e.at_ms, serde_json::to_string(&e.what).unwrap());
    }
    if !out.trace.is_empty() {
        println!("{}", out.trace);
    }
    println!("digest {} in {:?}", out.history.digest(), started.elapsed());
}
