//! Auth: no welcome without a valid, unexpired token; every rejected connection gets the
//! documented close code; an expired token does not keep a connection open.
//!
//! Rules:
//! - hostile connections with a forged, expired, garbage, invalid-subject or wrong-audience
//!   token are never welcomed;
//! - each hostile connection ends with its documented close code: forged, garbage, invalid
//!   subject, wrong audience → 4001,
//!   expired → 4002, frame before hello / malformed → 4004, oversized → 4004 or 1009, silent
//!   hello → 4008 (sockets that never complete HTTP are judged by bounded resources); flood
//!   connections that are not welcomed → 4009, and one flood never gets more than
//!   `connections_per_user_max` welcomes while all of them are still open. A connection
//!   that is never closed counts once `End` is well past its hello timeout.
//!   A 4008 `hello_timeout` at least `hello_timeout_ms` after connecting is also accepted, for
//!   floods too (the attack frame or hello may not have arrived in time over a slow link); so is
//!   the hostile client giving up by itself (no close code) when a latency spike around the
//!   connection (see `Index::latency_around`; one long over excuses nothing) could have held
//!   the server's answer back longer than its patience (`HOSTILE_PATIENCE_MS`), or its
//!   connect / handshake round trip longer than `hostile_connect_timeout_ms`.
//!   Skipped when the attempt cannot be judged: the server was not up for the whole attempt, or
//!   its host was partitioned / held, or messages were being lost, around it;
//! - a normal connection still open (no `Closed`) more than 2·heartbeat_interval + 2000 ms
//!   (1000 ms of that for the JWT's whole-second `exp`) plus the scenario's largest latency
//!   (the close frame's one-way trip) after its token's expiry, with the server up, the
//!   network undisturbed and the application not paused in that window, means the server
//!   never enforced the expiry (it must close with 4002). A connection that ends after the
//!   expiry and by that deadline must end for a reason: the client closed or dropped it, or
//!   the server closed it with 4002 — or with 4003 `slow_consumer`, 4010 `idle_timeout` or
//!   1001 `shutting_down`, which may come first. Another code (4001, say), or a socket dying
//!   without a close frame, is a violation unless the link cannot be judged (faults, a server
//!   stop, a pause, or a latency spike that can starve the client's idle timeout; see
//!   `closed_after_expiry`).

use super::index::{Client, Conn, Index};
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{ClosedBy, Observation};
use crate::scenario::{hostile_connect_timeout_ms, Attack, HOSTILE_PATIENCE_MS};

fn denied(explanation: String, evidence: Vec<usize>) -> Violation {
    violation(
        Invariant::Auth,
        Severity::Critical,
        Category::CrossUserSecurity,
        explanation,
        evidence,
    )
}

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    for client in index.clients.values() {
        if let Some((step, attack)) = client.attack {
            for conn in &client.conns {
                if let Some(v) = hostile_conn(index, client, step, attack, conn) {
                    return Err(v);
                }
            }
        }
    }
    if let Some(v) = floods(index) {
        return Err(v);
    }
    for client in index.clients.values().filter(|c| !c.hostile) {
        for conn in &client.conns {
            if let Some(v) = expiry(index, client, conn) {
                return Err(v);
            }
        }
    }
    Ok(())
}

fn hostile_conn(
    index: &Index<'_>,
    client: &Client<'_>,
    step: usize,
    attack: &Attack,
    conn: &Conn<'_>,
) -> Option<Violation> {
    let who = format!("{} of step {step} ({attack:?})", client.describe());
    if attack.is_invalid_token() {
        if let Some(w) = &conn.welcome {
            return Some(denied(
                format!(
                    "{who} was welcomed as user {} on connection {} at {} without a valid token",
                    w.user,
                    w.connection,
                    t(w.at)
                ),
                vec![conn.connecting_idx, w.idx],
            ));
        }
    }
    let expected: &[u16] = match attack {
        Attack::ForgedToken { .. } | Attack::GarbageToken | Attack::InvalidSubject | Attack::WrongAudience { .. } => {
            &[4001]
        }
        Attack::ExpiredToken { .. } => &[4002],
        Attack::FrameBeforeHello | Attack::MalformedFrame | Attack::ResumeAfterLastSeq { .. } => &[4004],
        Attack::OversizedFrame { .. } => &[4004, 1009],
        Attack::SilentHello => &[4008],
        // Valid tokens: judged by isolation and by `floods`.
        Attack::ResumeAsOther { .. } | Attack::Flood { .. } => return None,
        // Never a WebSocket: judged by bounded resources.
        Attack::SilentSocket | Attack::SlowRequest => return None,
    };
    let timeouts = &index.scenario.config.timeouts;
    let end_at = index.end.map(|(_, at)| at)?;
    let until = conn.closed.map_or(end_at, |c| index.at(c));
    if index.disturbed(client.host, conn.at, until) {
        return None;
    }
    match conn.closed {
        Some(closed) => {
            let code = index.close_code(closed);
            if code.is_some_and(|c| expected.contains(&c)) {
                return None;
            }
            if close_excused(index, conn, closed) {
                return None;
            }
            Some(denied(
                format!(
                    "{who} connecting at {} was closed at {} with code {code:?}, expected {expected:?}",
                    t(conn.at),
                    t(index.at(closed))
                ),
                vec![conn.connecting_idx, closed],
            ))
        }
        None => {
            let latency = index.latency_around(conn.at, end_at);
            let deadline = conn.at + timeouts.hello_timeout_ms + 2 * latency + 2000;
            (end_at > deadline).then(|| {
                denied(
                    format!(
                        "{who} connecting at {} was never closed by the end at {}, expected close code {expected:?}",
                        t(conn.at),
                        t(end_at)
                    ),
                    vec![conn.connecting_idx],
                )
            })
        }
    }
}

/// Whether a hostile connection's unexpected end has a reason a correct server may have given
/// it: a slow hello timeout, an answer that outran the client's patience, or a socket closed
/// at `sockets_max`.
fn close_excused(index: &Index<'_>, conn: &Conn<'_>, closed: usize) -> bool {
    slow_hello_timeout(index, conn, closed)
        || answer_outran_patience(index, conn, closed)
        || index.socket_refused(conn, closed)
}

/// A slow link (a latency spike) can keep the attack's first frame, or a flood connection's
/// hello, from arriving within `hello_timeout_ms`; the documented answer is then 4008. Only a
/// 4008 that came at least that long after connecting is accepted, so a server answering a bad
/// token with a quick 4008 is still caught.
fn slow_hello_timeout(index: &Index<'_>, conn: &Conn<'_>, closed: usize) -> bool {
    index.close_code(closed) == Some(4008)
        && index.at(closed).saturating_sub(conn.at) >= index.scenario.config.timeouts.hello_timeout_ms
}

/// The hostile client gave up by itself (no close code) while the latency in force around the
/// connection (see `Index::latency_around`) could hold the answer back longer than it waits:
/// after its handshake, for the server's answer (`HOSTILE_PATIENCE_MS`, a close by the
/// client); before it, for a connect or handshake round trip (`hostile_connect_timeout_ms`, a
/// close by the network) — such a connection may never have reached the server.
fn answer_outran_patience(index: &Index<'_>, conn: &Conn<'_>, closed: usize) -> bool {
    let config = &index.scenario.config;
    let slack_ms = 2 * config.tick_ms;
    let latency = index.latency_around(conn.at, index.at(closed));
    match index.entries[closed].what {
        Observation::Closed {
            code: None,
            by: ClosedBy::Client,
            ..
        } => latency + slack_ms >= HOSTILE_PATIENCE_MS,
        Observation::Closed {
            code: None,
            by: ClosedBy::Network,
            ..
        } => 2 * latency + slack_ms >= hostile_connect_timeout_ms(&config.timeouts),
        _ => false,
    }
}

fn floods(index: &Index<'_>) -> Option<Violation> {
    let limit = index.scenario.config.limits.connections_per_user_max;
    let end_at = index.end.map(|(_, at)| at)?;
    let mut steps: std::collections::BTreeMap<usize, Vec<&Client<'_>>> = std::collections::BTreeMap::new();
    for client in index.clients.values() {
        if let Some((step, Attack::Flood { .. })) = client.attack {
            steps.entry(step).or_default().push(client);
        }
    }
    for (step, clients) in steps {
        let conns: Vec<(&Client<'_>, &Conn<'_>)> = clients
            .iter()
            .flat_map(|c| c.conns.iter().map(move |conn| (*c, conn)))
            .collect();
        let Some(first_at) = conns.iter().map(|(_, c)| c.at).min() else {
            continue;
        };
        let last_close = conns
            .iter()
            .map(|(_, c)| c.closed.map_or(end_at, |i| index.at(i)))
            .max()
            .unwrap_or(end_at);
        if index.disturbed(clients[0].host, first_at, last_close) {
            continue;
        }
        // Refused flood connections must say why: too many connections.
        for (client, conn) in &conns {
            if conn.welcome.is_some() {
                continue;
            }
            if let Some(closed) = conn.closed {
                let code = index.close_code(closed);
                if code != Some(4009) && !close_excused(index, conn, closed) {
                    return Some(denied(
                        format!(
                            "flood connection {} of step {step} was refused at {} with code {code:?}, expected 4009 too_many_connections",
                            client.describe(),
                            t(index.at(closed))
                        ),
                        vec![conn.connecting_idx, closed],
                    ));
                }
            }
        }
        // Too many welcomes while every flood connection was still open.
        let mut welcomes: Vec<usize> = conns
            .iter()
            .filter_map(|(_, c)| c.welcome.as_ref().map(|w| w.idx))
            .collect();
        welcomes.sort_unstable();
        if welcomes.len() as u64 > limit {
            let last_welcome = welcomes[limit as usize];
            let slack = 2 * index.latency_max_ms + 2 * index.scenario.config.tick_ms + 100;
            let horizon = index.at(last_welcome) + slack;
            let any_closed_early = conns
                .iter()
                .any(|(_, c)| c.closed.is_some_and(|i| index.at(i) <= horizon));
            if !any_closed_early {
                return Some(denied(
                    format!(
                        "flood step {step} got {} welcomes (the {}th at {}) while all its connections were open; connections_per_user_max is {limit}",
                        welcomes.len(),
                        limit + 1,
                        t(index.at(last_welcome))
                    ),
                    vec![last_welcome],
                ));
            }
        }
    }
    None
}

fn expiry(index: &Index<'_>, client: &Client<'_>, conn: &Conn<'_>) -> Option<Violation> {
    let welcome = conn.welcome.as_ref()?;
    let end_at = index.end.map(|(_, at)| at)?;
    let timeouts = &index.scenario.config.timeouts;
    let exp = conn.token_exp_ms.unwrap_or(conn.at + client.token_ttl_ms);
    // The close frame crosses the link once: a latency spike delays it by up to its maximum.
    let deadline = exp.max(welcome.at) + 2 * timeouts.heartbeat_interval_ms + 2000 + index.latency_max_ms;
    if deadline >= end_at {
        return None;
    }
    if let Some(closed) = conn.closed.filter(|&c| index.at(c) <= deadline) {
        return closed_after_expiry(index, client, conn, exp, closed);
    }
    if index.disturbed(client.host, exp.min(deadline), deadline) || client.paused_during(exp, deadline) {
        return None;
    }
    Some(denied(
        format!(
            "{} kept connection {} open past its token expiry at {} (still open at {}): the server must close it with 4002 token_expired",
            client.describe(),
            welcome.connection,
            t(exp),
            t(deadline)
        ),
        vec![conn.connecting_idx, welcome.idx],
    ))
}

/// Server close codes that may end a welcomed connection whose token has expired: 4002 itself,
/// or another documented reason that may come first (PROTOCOL.md, "Errors and close codes").
const CLOSES_AN_EXPIRED_CONNECTION: [u16; 4] = [4002, 4003, 4010, 1001];

/// A welcomed connection whose token expired at `exp` ended at entry `closed`, by the deadline.
/// It ended in time when it ended before the expiry; when the client closed or dropped it
/// itself; or when the server closed it with 4002 (or a code that may legitimately come first,
/// [`CLOSES_AN_EXPIRED_CONNECTION`]). A server close with any other code, or a socket that died
/// without a close frame, after the expiry, means the server did not say `token_expired` —
/// unless the link cannot be judged then: a fault or a server stop/restart since the expiry,
/// bytes dropped since the connection opened (the stream may have been garbled or stalled for
/// good), the application paused (a server whose writes time out may drop the socket), or —
/// for a socket that died — a latency around the connection that could starve the client's
/// idle timeout (heartbeat interval + latency + two ticks reaching `idle_timeout_ms`).
fn closed_after_expiry(
    index: &Index<'_>,
    client: &Client<'_>,
    conn: &Conn<'_>,
    exp: u64,
    closed: usize,
) -> Option<Violation> {
    let closed_at = index.at(closed);
    if closed_at < exp {
        return None;
    }
    let Observation::Closed { code, by, .. } = &index.entries[closed].what else {
        return None;
    };
    let how = match by {
        ClosedBy::Client | ClosedBy::Killed => return None,
        ClosedBy::Server if code.is_some_and(|c| CLOSES_AN_EXPIRED_CONNECTION.contains(&c)) => return None,
        ClosedBy::Server => format!("the server closed it with code {code:?}"),
        ClosedBy::Network => {
            // The client gives a connection up after idle_timeout_ms without a frame; a healthy
            // server sends one at least every heartbeat interval, but a latency spike can
            // stretch that gap past the timeout.
            let timeouts = &index.scenario.config.timeouts;
            let latency = index.latency_around(conn.at, closed_at);
            if timeouts.heartbeat_interval_ms + latency + 2 * index.scenario.config.tick_ms >= timeouts.idle_timeout_ms
            {
                return None;
            }
            "the socket died without a close frame".to_string()
        }
    };
    if index.disturbed(client.host, exp, closed_at)
        || index.bytes_dropped_during(client.host, conn.at, closed_at)
        || client.paused_during(conn.at, closed_at)
    {
        return None;
    }
    let connection = conn.welcome.as_ref().map_or("?", |w| w.connection);
    Some(denied(
        format!(
            "{} had connection {connection} ended at {} after its token expired at {}, but {how} on an undisturbed link: the server must close an expired connection with 4002 token_expired (or {CLOSES_AN_EXPIRED_CONNECTION:?} for another reason)",
            client.describe(),
            t(closed_at),
            t(exp)
        ),
        vec![conn.connecting_idx, closed],
    ))
}
