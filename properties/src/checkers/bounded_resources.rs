//! Bounded resources: sampled hub gauges never exceed the configured limits, and drop back
//! after the load.
//!
//! Rules:
//! - every `Gauges` sample: `retained_bytes <= retention_bytes_max`, `send_queue_depth_max <=
//!   send_queue_max`, `connections_per_user_max <= connections_per_user_max`, `connections <=
//!   connections_max`, `users <= users_max` (the hub enforces these before returning from a
//!   publish or connect, and samples are taken between hub calls); and `server_sockets <=
//!   sockets_max`, counted by the simulated network (the server closes one more socket in the
//!   same poll that accepts it);
//! - drop-back, on the last sample before `End`, only when it was taken at least B (the
//!   liveness bound) after the heal so that every client had time to catch up, or the world
//!   settled (it ends early only on a sample that shows the drop-back, so there the rule
//!   cross-checks [`crate::settling`]): no send queue
//!   is lagging (`send_queue_depth_max == 0`), and the hub holds no more connections than the
//!   live normal clients plus the hostile connections that were welcomed and never closed;
//!   and, when no publish was called within `retention_age_ms` (plus two gauge intervals and a
//!   publish timeout) before the sample, nothing is retained any more;
//! - the same drop-back for sockets, counted by the simulated network, not reported by the
//!   server: on the last sample, late enough that every stalled socket has met the server's own
//!   timeouts (B + `http_request_timeout_ms` + `write_timeout_ms` after the heal) or the world
//!   settled, the server host holds no more open sockets than the clients' connections that
//!   are open or closed within a grace (two trips at the largest latency, a write timeout, two
//!   ticks and a second), plus one per HTTP publish call in flight or returned within that
//!   grace and a retry's pause. A socket the server forgot (its task stuck after the close, an
//!   entry never removed from a writer table) shows here while the hub's gauges look clean;
//! - a hostile socket that never completes an HTTP request (`SilentSocket`, `SlowRequest`) is
//!   closed by the server (no close code) no earlier than `http_request_timeout_ms` after it
//!   connected and no later than that plus four one-way trips at the largest latency in force
//!   around the socket (from one run-wide largest latency before it connected to its close,
//!   see `Index::latency_around`: a spike long over does not excuse it) — the connect and its
//!   answer, the first byte, the close — two ticks and a second.
//!   Still open past that bound (the client gave up later, or `End` came later) means the
//!   server let the socket hold its resources. Not judged when the attempt cannot be: the
//!   server was not up throughout, or the host's links were disturbed, or the latency could
//!   outlast the client's connect timeout.

use super::index::{is_http, liveness_bound_ms, retention_expiry_ms, Client, Conn, Index};
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{ClosedBy, GaugeSample, Observation};
use crate::scenario::{hostile_connect_timeout_ms, Attack, HTTP_RETRY_PAUSE_MS};

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
            // Counted by the network: the server closes a socket beyond it as it accepts it.
            ("server_sockets", g.server_sockets, "sockets_max", limits.sockets_max),
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
    for client in index.clients.values() {
        if let Some((step, attack @ (Attack::SilentSocket | Attack::SlowRequest))) = client.attack {
            for conn in &client.conns {
                if let Some(v) = stalled_socket(index, client, (step, attack), conn) {
                    return Err(v);
                }
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
    if let Some(v) = sockets_left_open(index, last, heal_idx, &what) {
        return Err(v);
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

/// The drop-back rule for sockets, counted by the simulated network: at the last sample, the
/// server host holds no more sockets than connections the clients may still hold (open, or
/// closed so recently that the server may not have heard yet) plus the publisher's HTTP
/// connections that may still be open. Judged when the sample is late enough for every stalled
/// socket to have met the server's own timeouts, or when the world settled (which demanded it).
fn sockets_left_open(index: &Index<'_>, last: usize, heal_idx: usize, what: &str) -> Option<Violation> {
    let config = &index.scenario.config;
    let timeouts = &config.timeouts;
    let g = sample(index, last);
    let last_at = index.at(last);
    let heal_at = index.at(heal_idx);
    let late_enough =
        heal_at + liveness_bound_ms(timeouts) + timeouts.http_request_timeout_ms + timeouts.write_timeout_ms;
    if last_at < late_enough && index.settled.is_none() {
        return None;
    }
    // A peer's close reaches the server and the server drops the socket within this on a
    // healed link: the FIN's trip, the close handshake's answer, a blocked write, two ticks.
    let grace_ms = 2 * index.latency_max_ms + timeouts.write_timeout_ms + 2 * config.tick_ms + 1000;
    let recent = |closed_at: u64| closed_at + grace_ms > last_at;
    let client_sockets = index
        .clients
        .values()
        .flat_map(|c| c.conns.iter())
        .filter(|conn| conn.at <= last_at && conn.closed.is_none_or(|closed| recent(index.at(closed))))
        .count() as u64;
    // A publish step keeps its connection between its calls, and across a retry's pause.
    let pause_ms = HTTP_RETRY_PAUSE_MS * u64::from(index.http_retries_max);
    let publisher_sockets = index
        .calls
        .iter()
        .filter(|call| is_http(call.via) && call.at <= last_at)
        .filter(|call| {
            call.returned
                .is_none_or(|returned| recent(index.at(returned) + pause_ms))
        })
        .count() as u64;
    let allowed = client_sockets + publisher_sockets;
    (g.server_sockets > allowed).then(|| {
        over(
            format!(
                "the server host still held {} open sockets (counted by the network) {what}, but clients hold at most {client_sockets} and the publisher at most {publisher_sockets}: sockets leak (the hub held {} connections)",
                g.server_sockets, g.connections
            ),
            vec![heal_idx, last],
        )
    })
}

/// The rule for hostile sockets that never complete an HTTP request (see the module docs).
fn stalled_socket(
    index: &Index<'_>,
    client: &Client<'_>,
    (step, attack): (usize, &Attack),
    conn: &Conn<'_>,
) -> Option<Violation> {
    let config = &index.scenario.config;
    let timeout_ms = config.timeouts.http_request_timeout_ms;
    let end_at = index.end.map(|(_, at)| at)?;
    let until = conn.closed.map_or(end_at, |closed| index.at(closed));
    if index.disturbed(client.host, conn.at, until) {
        return None;
    }
    let who = format!("{} of step {step} ({attack:?})", client.describe());
    let slack_ms = 2 * config.tick_ms;
    let earliest = conn.at + timeout_ms;
    // Only the latency in force around this socket may excuse it (see `Index::latency_around`).
    let latency = index.latency_around(conn.at, until);
    // The connect and its answer, the request's first byte (which restarts the deadline), the close.
    let latest = earliest + 4 * latency + slack_ms + 1000;
    let Some(closed) = conn.closed else {
        return (end_at > latest).then(|| {
            over(
                format!(
                    "{who} connecting at {} was never closed by the end at {}: http_request_timeout_ms is {timeout_ms}",
                    t(conn.at),
                    t(end_at)
                ),
                vec![conn.connecting_idx],
            )
        });
    };
    let at = index.at(closed);
    let Observation::Closed { code, by, reason, .. } = &index.entries[closed].what else {
        return None;
    };
    let verdict = match (by, code) {
        (ClosedBy::Network, None) if reason.starts_with("connect") => {
            // The connect itself failed or timed out: only a latency spike excuses that.
            (2 * latency + slack_ms < hostile_connect_timeout_ms(&config.timeouts))
                .then(|| format!("could not connect ({reason}) on a fast link"))
        }
        // Closed at once: excused if the server may have held `sockets_max` sockets.
        (ClosedBy::Network, None) if at < earliest => (!index.socket_refused(conn, closed)).then(|| {
            format!(
                "was closed at {}, {} ms after connecting: sooner than http_request_timeout_ms {timeout_ms}",
                t(at),
                at - conn.at
            )
        }),
        (ClosedBy::Network, None) if at > latest => Some(format!(
            "was closed only at {}, {} ms after connecting: later than http_request_timeout_ms {timeout_ms} allows",
            t(at),
            at - conn.at
        )),
        (ClosedBy::Network, None) => None,
        // It gave up waiting: a failure once it had waited past the bound.
        (ClosedBy::Client, None) => (at > latest).then(|| {
            format!(
                "was still open at {} when it gave up, {} ms after connecting: http_request_timeout_ms is {timeout_ms}",
                t(at),
                at - conn.at
            )
        }),
        _ => Some(format!(
            "was closed at {} with code {code:?} by {by:?}, expected the server to end the socket",
            t(at)
        )),
    };
    verdict.map(|what| {
        over(
            format!("{who} connecting at {} {what}", t(conn.at)),
            vec![conn.connecting_idx, closed],
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::checkers::builder::{scenario_with, HistoryBuilder};
    use crate::checkers::{check, Invariant};
    use crate::history::GaugeSample;
    use crate::scenario::{Kind, Step, Via};

    fn connect(client: u32, user: u32) -> Step {
        Step::Connect {
            client,
            user,
            host: 0,
            token_ttl_ms: None,
        }
    }

    /// Two live clients and one HTTP publish (`via`) returned 500 ms before a final sample
    /// showing `sockets` open: the publisher may still hold one keep-alive socket.
    fn publisher_socket(via: Via, sockets: u64) -> Result<(), crate::checkers::Violation> {
        let publish = Step::Publish {
            user: 0,
            run: 0,
            kind: Kind::AgentStarted,
            payload_bytes: 10,
            via,
        };
        let scenario = scenario_with(2, vec![connect(0, 0), connect(1, 1), publish]);
        let mut b = HistoryBuilder::new();
        b.server_started(0);
        b.steps_of(&scenario);
        b.at(50);
        b.connect(0, None, "E0", 0, false);
        b.connect(1, None, "E1", 0, false);
        b.at(1_000);
        b.heal();
        b.at(24_000);
        let id = b.publish_called("u0", via, 10);
        b.at(24_100);
        b.published(&id, "E0", 1, false);
        b.deliver_event_with_id(0, "E0", 1, &id);
        b.at(24_600);
        b.gauges(GaugeSample {
            users: 2,
            connections: 2,
            retained_events: 1,
            server_sockets: sockets,
            ..GaugeSample::default()
        });
        b.at(25_000);
        b.end();
        check(Invariant::BoundedResources, &scenario, &b.build())
    }

    #[test]
    fn a_keyed_http_publish_holds_a_socket_like_any_other() {
        for idempotency_key in [false, true] {
            let via = Via::Http {
                idempotency_key,
                retries: 0,
            };
            assert!(publisher_socket(via, 3).is_ok(), "key {idempotency_key}");
            assert!(publisher_socket(via, 4).is_err(), "key {idempotency_key}");
        }
    }
}
