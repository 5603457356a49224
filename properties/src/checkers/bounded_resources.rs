//! Bounded resources: sampled hub gauges never exceed the configured limits, and drop back
//! after the load.
//!
//! Rules:
//! - every `Gauges` sample: `retained_bytes <= retention_bytes_max`, `send_queue_depth_max <=
//!   send_queue_max`, `connections_per_user_max <= connections_per_user_max`, `connections <=
//!   connections_max`, `users <= users_max` (the hub enforces these before returning from a
//!   publish or connect, and samples are taken between hub calls);
//! - drop-back, on the last sample before `End`, only when it was taken at least B (the
//!   liveness bound) after the heal so that every client had time to catch up, or the world
//!   settled (it ends early only on a sample that shows the drop-back, so there the rule
//!   cross-checks [`crate::settling`]): no send queue
//!   is lagging (`send_queue_depth_max == 0`), and the hub holds no more connections than the
//!   live normal clients plus the hostile connections that were welcomed and never closed;
//!   and, when no publish was called within `retention_age_ms` (plus two gauge intervals and a
//!   publish timeout) before the sample, nothing is retained any more.

use super::index::{liveness_bound_ms, retention_expiry_ms, Index};
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{GaugeSample, Observation};

fn sample<'a>(index: &Index<'a>, idx: usize) -> &'a GaugeSample {
    match &index.entries[idx].what {
        Observation::Gauges(sample) => sample,
        _ => unreachable!("gauges index lists only gauge entries"),
    }
}

fn over(explanation: String, evidence: Vec<usize>) -> Violation {
    violation(
        Invariant::BoundedResources,
        Severity::High,
        Category::PerformanceLoad,
        explanation,
        evidence,
    )
}

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    let config = &index.scenario.config;
    let limits = &config.limits;
    for &idx in &index.gauges {
        let g = sample(index, idx);
        let checks = [
            (
                "retained_bytes",
                g.retained_bytes,
                "retention_bytes_max",
                limits.retention_bytes_max,
            ),
            (
                "send_queue_depth_max",
                g.send_queue_depth_max,
                "send_queue_max",
                limits.send_queue_max,
            ),
            (
                "connections_per_user_max",
                g.connections_per_user_max,
                "connections_per_user_max",
                limits.connections_per_user_max,
            ),
            ("connections", g.connections, "connections_max", limits.connections_max),
            ("users", g.users, "users_max", limits.users_max),
        ];
        for (gauge, value, limit_name, limit) in checks {
            if value > limit {
                return Err(over(
                    format!(
                        "gauge {gauge} was {value} at {}, above the limit {limit_name} = {limit}",
                        t(index.at(idx))
                    ),
                    vec![idx],
                ));
            }
        }
    }
    let (Some((heal_idx, heal_at)), Some((end_idx, end_at))) = (index.heal, index.end) else {
        return Ok(());
    };
    let Some(&last) = index.gauges.iter().rev().find(|&&i| i < end_idx) else {
        return Ok(());
    };
    let last_at = index.at(last);
    if last_at < heal_at + liveness_bound_ms(&config.timeouts) && index.settled.is_none() {
        return Ok(());
    }
    let g = sample(index, last);
    let what = format!("at {} (heal at {}, end at {})", t(last_at), t(heal_at), t(end_at));
    if g.send_queue_depth_max > 0 {
        return Err(over(
            format!(
                "after the load a send queue still lagged {} events {what}: it never drained",
                g.send_queue_depth_max
            ),
            vec![heal_idx, last],
        ));
    }
    let live_clients = index.clients.values().filter(|c| c.is_live()).count() as u64;
    let open_hostiles = index
        .clients
        .values()
        .filter(|c| c.hostile)
        .flat_map(|c| c.conns.iter())
        .filter(|conn| conn.welcome.is_some() && conn.closed.is_none_or(|closed| closed > last))
        .count() as u64;
    if g.connections > live_clients + open_hostiles {
        return Err(over(
            format!(
                "the hub still held {} connections {what}, but only {live_clients} normal clients are live and {open_hostiles} hostile connections are open: connections leak",
                g.connections
            ),
            vec![heal_idx, last],
        ));
    }
    let quiet_needed = retention_expiry_ms(config);
    let last_publish = index.calls.iter().rev().map(|c| c.at).find(|&at| at <= last_at);
    if g.retained_events > 0 && last_publish.is_none_or(|p| p + quiet_needed < last_at) {
        return Err(over(
            format!(
                "{} events ({} bytes) were still retained {what}, although the last publish was {} and retention_age_ms is {}",
                g.retained_events,
                g.retained_bytes,
                last_publish.map_or_else(|| "never".to_string(), t),
                limits.retention_age_ms
            ),
            vec![last],
        ));
    }
    Ok(())
}
