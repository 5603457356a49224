//! Deduplication of failures: two failures are "the same bug" when they break the same
//! invariant (or crash the same way) and their shrunk scenarios have the same shape — the same
//! sequence of step types. Shrinking makes this meaningful: unrelated noise steps are gone.

use herald_properties::scenario::{Scenario, Step};

/// The step type as it appears in scenario JSON (`connect`, `burst`, `restart_server`...).
pub fn step_type(step: &Step) -> &'static str {
    match step {
        Step::Connect { .. } => "connect",
        Step::Close { .. } => "close",
        Step::Kill { .. } => "kill",
        Step::Pause { .. } => "pause",
        Step::Publish { .. } => "publish",
        Step::Burst { .. } => "burst",
        Step::Partition { .. } => "partition",
        Step::PartitionOneWay { .. } => "partition_one_way",
        Step::Repair { .. } => "repair",
        Step::Hold { .. } => "hold",
        Step::Release { .. } => "release",
        Step::SetLatency { .. } => "set_latency",
        Step::SetLossRate { .. } => "set_loss_rate",
        Step::RestartServer => "restart_server",
        Step::CrashServer => "crash_server",
        Step::StartServer => "start_server",
        Step::ShutdownServer => "shutdown_server",
        Step::Hostile { .. } => "hostile",
    }
}

/// The shape of a scenario: its step types in the order the world applies them, e.g.
/// `connect,burst,restart_server`.
pub fn shape(scenario: &Scenario) -> String {
    let types: Vec<&str> = scenario
        .sorted_steps()
        .into_iter()
        .map(|(_, timed)| step_type(&timed.step))
        .collect();
    if types.is_empty() {
        "(no steps)".to_string()
    } else {
        types.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_properties::scenario::{ScenarioConfig, TimedStep};

    #[test]
    fn shape_follows_application_order_and_ignores_parameters() {
        let at = |at_ms, step| TimedStep { at_ms, step };
        let a = Scenario {
            config: ScenarioConfig::default(),
            steps: vec![
                at(50, Step::RestartServer),
                at(
                    10,
                    Step::Connect {
                        client: 0,
                        user: 0,
                        host: 0,
                        token_ttl_ms: None,
                    },
                ),
            ],
        };
        let mut b = a.clone();
        b.steps[1] = at(
            20,
            Step::Connect {
                client: 3,
                user: 1,
                host: 1,
                token_ttl_ms: Some(5),
            },
        );
        assert_eq!(shape(&a), "connect,restart_server");
        assert_eq!(shape(&a), shape(&b));
        let empty = Scenario {
            config: ScenarioConfig::default(),
            steps: vec![],
        };
        assert_eq!(shape(&empty), "(no steps)");
    }
}
