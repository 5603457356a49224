//! A replay as a person reads it: one line per step and observation, with simulated time, the
//! client (and its connection) or host, and the user; the history entries a violation cites are
//! marked; with `--trace` the server's and clients' `tracing` lines are interleaved by time.

use crate::campaign::CaseFailure;
use crate::world::{client_host_name, user_name};
use herald_properties::history::{DeliveredItem, FrameSeen, History, Observation, PublishOutcome};
use herald_properties::scenario::{Attack, Scenario, Step, Via};
use std::collections::BTreeMap;
use std::fmt::Write;

/// How to render.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimelineOptions {
    /// ANSI colours (on a terminal).
    pub color: bool,
    /// Include hub gauge samples (noisy; off by default).
    pub gauges: bool,
}

/// Renders the timeline. `trace` is the captured tracing output of the same run, if any.
pub fn render(
    scenario: &Scenario,
    history: &History,
    failures: &[CaseFailure],
    trace: Option<&str>,
    options: TimelineOptions,
) -> String {
    let paint = |code: &str, text: &str| {
        if options.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let mut cited: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for failure in failures {
        for index in &failure.evidence {
            cited.entry(*index).or_default().push(failure.key.as_str());
        }
    }
    let trace_lines = trace.map(parse_trace).unwrap_or_default();
    let mut next_trace = 0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario: {} steps, {} users, {} client hosts, quiet period {} ms{}; world seed {}",
        scenario.steps.len(),
        scenario.config.users,
        scenario.config.client_hosts,
        scenario.config.quiet_period_ms,
        scenario
            .config
            .settle_ms
            .map_or_else(String::new, |ms| format!(" (ends early once settled for {ms} ms)")),
        history.seed
    );
    let mut connection_of: BTreeMap<u32, String> = BTreeMap::new();
    for (index, entry) in history.entries.iter().enumerate() {
        while next_trace < trace_lines.len() && trace_lines[next_trace].0 <= entry.at_ms {
            let _ = writeln!(
                out,
                "{}",
                paint("2", &format!("            | {}", trace_lines[next_trace].1))
            );
            next_trace += 1;
        }
        if matches!(entry.what, Observation::Gauges(_)) && !options.gauges && !cited.contains_key(&index) {
            continue;
        }
        let (who, what) = describe(&entry.what, &mut connection_of);
        let time = format!("t={:>4}.{:03}s", entry.at_ms / 1000, entry.at_ms % 1000);
        let line = format!("{time} #{index:<5} {who:<24} {what}");
        match cited.get(&index) {
            Some(keys) => {
                let _ = writeln!(out, "{}", paint("1;31", &format!("{line}   <<< {}", keys.join(", "))));
            }
            None if matches!(entry.what, Observation::Failure { .. }) => {
                let _ = writeln!(out, "{}", paint("1;31", &line));
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    for (_, line) in &trace_lines[next_trace..] {
        let _ = writeln!(out, "{}", paint("2", &format!("            | {line}")));
    }
    if failures.is_empty() {
        let _ = writeln!(out, "{}", paint("1;32", "no invariant failed"));
    }
    for failure in failures {
        let _ = writeln!(
            out,
            "{}",
            paint(
                "1;31",
                &format!(
                    "VIOLATION {} [{} / {}]: {} (entries {:?})",
                    failure.key,
                    failure.severity.as_str(),
                    failure.category.as_str(),
                    failure.explanation,
                    failure.evidence
                )
            )
        );
    }
    out
}

/// Trace lines with their simulated time in ms (`t=1.204s ...`); untimed lines (continuations)
/// take the time of the line before.
fn parse_trace(trace: &str) -> Vec<(u64, String)> {
    let mut lines = Vec::new();
    let mut last_ms = 0;
    for line in trace.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(ms) = line
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once('s'))
            .and_then(|(secs, _)| secs.parse::<f64>().ok())
        {
            last_ms = (ms * 1000.0).round() as u64;
        }
        lines.push((last_ms, line.to_string()));
    }
    lines
}

fn client_label(client: u32, user: &str, hostile: bool, connection: Option<&str>) -> String {
    let mut label = if hostile {
        format!("hostile{client} {user}")
    } else {
        format!("client{client} {user}")
    };
    if let Some(connection) = connection {
        let short: String = connection.chars().take(8).collect();
        let _ = write!(label, " {short}");
    }
    label
}

/// (who, what) of one observation.
fn describe(what: &Observation, connection_of: &mut BTreeMap<u32, String>) -> (String, String) {
    match what {
        Observation::StepApplied { index, step } => ("driver".into(), format!("step {index}: {}", step_text(step))),
        Observation::StepSkipped { index, reason } => ("driver".into(), format!("step {index} skipped: {reason}")),
        Observation::PublishCalled {
            publish,
            event_id,
            user,
            run,
            kind,
            via,
            attempt,
            payload_bytes,
            ..
        } => (
            "publisher".into(),
            format!(
                "publish #{publish} {event_id} → {user} {run} {kind} via {via}{} ({payload_bytes} B)",
                if *attempt > 0 {
                    format!(" retry {attempt}")
                } else {
                    String::new()
                }
            ),
        ),
        Observation::PublishReturned {
            publish,
            event_id,
            outcome,
        } => (
            "publisher".into(),
            match outcome {
                PublishOutcome::Published { seq, epoch, duplicate } => format!(
                    "publish #{publish} {event_id} ok: seq {seq} epoch {}{}",
                    short(epoch),
                    if *duplicate { " (duplicate key)" } else { "" }
                ),
                PublishOutcome::Failed { code, message } => {
                    format!("publish #{publish} {event_id} FAILED {code}: {message}")
                }
            },
        ),
        Observation::Connecting {
            client,
            user,
            attempt,
            resume,
            hostile,
            ..
        } => {
            connection_of.remove(client);
            (
                client_label(*client, user, *hostile, None),
                match resume {
                    Some(r) => format!("connecting (attempt {attempt}) resume {}@{}", short(&r.epoch), r.after),
                    None => format!("connecting (attempt {attempt})"),
                },
            )
        }
        Observation::FrameReceived {
            client,
            user,
            connection,
            frame,
            hostile,
        } => {
            if let FrameSeen::Welcome { connection, .. } = frame {
                connection_of.insert(*client, connection.clone());
            }
            let conn = connection.clone().or_else(|| connection_of.get(client).cloned());
            (
                client_label(*client, user, *hostile, conn.as_deref()),
                format!("← {}", frame_text(frame)),
            )
        }
        Observation::Delivered { client, user, item } => (
            client_label(*client, user, false, connection_of.get(client).map(String::as_str)),
            match item {
                DeliveredItem::Event {
                    epoch,
                    seq,
                    run,
                    kind,
                    event_id,
                } => format!(
                    "app ← event seq {seq} ({}) {run} {kind} {}",
                    short(epoch),
                    event_id.as_deref().unwrap_or("(no id)")
                ),
                DeliveredItem::Gap {
                    epoch,
                    from,
                    to,
                    reason,
                } => format!(
                    "app ← GAP {from}..{} ({}) reason {reason}",
                    range_end(*to),
                    short(epoch)
                ),
            },
        ),
        Observation::Closed {
            client,
            user,
            code,
            by,
            reason,
            hostile,
        } => (
            client_label(*client, user, *hostile, connection_of.get(client).map(String::as_str)),
            format!(
                "closed{} by {by:?}: {reason}",
                code.map(|c| format!(" {c}")).unwrap_or_default()
            )
            .to_lowercase(),
        ),
        Observation::ClientStopped { client } => (format!("client{client}"), "stopped for good".into()),
        Observation::Paused { client, duration_ms } => (
            format!("client{client}"),
            format!("application stops reading for {duration_ms} ms"),
        ),
        Observation::ServerStarted { life } => ("server".into(), format!("started (life {life})")),
        Observation::ServerStopped { life, how } => ("server".into(), format!("stopped (life {life}): {how}")),
        Observation::HealStarted => ("world".into(), "network healed; quiet period begins".into()),
        Observation::Gauges(g) => (
            "server".into(),
            format!(
                "gauges: users {} connections {} retained {} events / {} B, send queue max {}, conns/user max {}, sockets {}{}",
                g.users,
                g.connections,
                g.retained_events,
                g.retained_bytes,
                g.send_queue_depth_max,
                g.connections_per_user_max,
                g.server_sockets,
                if g.sockets_refused > 0 {
                    format!(" ({} refused at sockets_max)", g.sockets_refused)
                } else {
                    String::new()
                }
            ),
        ),
        Observation::Failure { host, message } => (host.clone(), format!("FAILURE: {message}")),
        Observation::Settled => (
            "world".into(),
            "settled: every live client connected, nothing pending or happening; quiet period ends early".into(),
        ),
        Observation::End => ("world".into(), "end".into()),
    }
}

fn short(epoch: &str) -> String {
    epoch.chars().take(8).collect()
}

fn range_end(to: Option<u64>) -> String {
    to.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
}

fn frame_text(frame: &FrameSeen) -> String {
    match frame {
        FrameSeen::Welcome {
            user,
            connection,
            epoch,
            head,
            recovered,
        } => format!(
            "welcome user {user} connection {connection} epoch {} head {head} recovered {recovered}",
            short(epoch)
        ),
        FrameSeen::Event {
            seq,
            run,
            kind,
            event_id,
            payload_user,
        } => format!(
            "event seq {seq} {run} {kind} {} for {}",
            event_id.as_deref().unwrap_or("(no id)"),
            payload_user.as_deref().unwrap_or("?")
        ),
        FrameSeen::Gap {
            epoch,
            from,
            to,
            reason,
        } => format!("gap {from}..{} ({}) reason {reason}", range_end(*to), short(epoch)),
        FrameSeen::Pong { id } => format!("pong {id}"),
        FrameSeen::Error { code, message } => format!("error {code}: {message}"),
        FrameSeen::Unparsed { text, markers } if !markers.is_empty() => format!(
            "unparsed frame {text:?} carrying users {:?} events {:?}",
            markers.users, markers.event_ids
        ),
        FrameSeen::Unparsed { text, .. } => format!("unparsed frame {text:?}"),
    }
}

fn via_text(via: &Via) -> String {
    match via {
        Via::Notifier => "notifier".into(),
        Via::Http {
            idempotency_key: false, ..
        } => "http".into(),
        Via::Http {
            idempotency_key: true,
            retries,
        } => format!("http+key (retries {retries})"),
    }
}

/// A step in a few words.
pub fn step_text(step: &Step) -> String {
    match step {
        Step::Connect {
            client,
            user,
            host,
            token_ttl_ms,
        } => format!(
            "connect client{client} as {} on {}{}",
            user_name(*user),
            client_host_name(*host),
            token_ttl_ms.map(|t| format!(" (token ttl {t} ms)")).unwrap_or_default()
        ),
        Step::Close { client } => format!("close client{client}"),
        Step::Kill { client } => format!("kill client{client}'s TCP stream"),
        Step::Pause { client, duration_ms } => format!("pause client{client}'s application for {duration_ms} ms"),
        Step::Publish {
            user,
            run,
            kind,
            payload_bytes,
            via,
        } => format!(
            "publish {} to {} run-{run} via {} ({payload_bytes} B)",
            kind.as_str(),
            user_name(*user),
            via_text(via)
        ),
        Step::Burst {
            user,
            run,
            count,
            payload_bytes,
            via,
        } => format!(
            "burst of {count} to {} run-{run} via {} ({payload_bytes} B each)",
            user_name(*user),
            via_text(via)
        ),
        Step::Partition { host } => format!("partition {} from the server", client_host_name(*host)),
        Step::PartitionOneWay { host, direction } => {
            format!("partition {} one way ({direction:?})", client_host_name(*host))
        }
        Step::Repair { host } => format!("repair {}", client_host_name(*host)),
        Step::Hold { host } => format!("hold messages of {}", client_host_name(*host)),
        Step::Release { host } => format!("release messages of {}", client_host_name(*host)),
        Step::SetLatency { min_ms, max_ms } => format!("latency {min_ms}..{max_ms} ms"),
        Step::SetLossRate { per_mille } => format!("message loss {per_mille}‰"),
        Step::RestartServer => "restart the server".into(),
        Step::CrashServer => "crash the server".into(),
        Step::StartServer => "start the server".into(),
        Step::ShutdownServer => "shut the server down gracefully".into(),
        Step::Hostile { host, attack } => format!(
            "hostile client on {}: {}",
            client_host_name(*host),
            match attack {
                Attack::ForgedToken { user } => format!("forged token for {}", user_name(*user)),
                Attack::ExpiredToken { user } => format!("expired token for {}", user_name(*user)),
                Attack::GarbageToken => "garbage token".into(),
                Attack::WrongAudience { user } => {
                    format!("token for {} minted for another service (wrong aud)", user_name(*user))
                }
                Attack::InvalidSubject => "signed token whose sub is not a user id".into(),
                Attack::ResumeAsOther { user, victim } => format!(
                    "{} resumes with {}'s stream position",
                    user_name(*user),
                    user_name(*victim)
                ),
                Attack::ResumeAfterLastSeq { user } => {
                    format!("{} resumes after the largest seq of an unknown epoch", user_name(*user))
                }
                Attack::FrameBeforeHello => "frame before hello".into(),
                Attack::MalformedFrame => "malformed frame".into(),
                Attack::OversizedFrame { bytes } => format!("oversized frame of {bytes} B"),
                Attack::SilentHello => "never says hello".into(),
                Attack::SilentSocket => "opens a socket and never sends a byte".into(),
                Attack::SlowRequest => "sends an HTTP request a byte at a time".into(),
                Attack::Flood { user, connections } => {
                    format!("flood of {connections} connections as {}", user_name(*user))
                }
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_properties::checkers::{Category, Severity};
    use herald_properties::scenario::ScenarioConfig;
    use herald_properties::seed_file::CrashKind;

    #[test]
    fn timeline_marks_cited_entries_and_interleaves_trace_by_time() {
        let mut history = History::default();
        history.record(0, Observation::ServerStarted { life: 0 });
        history.record(
            1500,
            Observation::Failure {
                host: "server".into(),
                message: "boom".into(),
            },
        );
        history.record(2000, Observation::End);
        let failure = CaseFailure::crash(CrashKind::HostFailure, "host failed".into(), vec![1]);
        let scenario = Scenario {
            config: ScenarioConfig::default(),
            steps: vec![],
        };
        let trace = "t=1.000s DEBUG herald_core: middle\nt=3.000s DEBUG herald_core: late\n";
        let text = render(&scenario, &history, &[failure], Some(trace), TimelineOptions::default());
        let lines: Vec<&str> = text.lines().collect();
        let started = lines.iter().position(|l| l.contains("started (life 0)")).unwrap();
        let middle = lines.iter().position(|l| l.contains("middle")).unwrap();
        let boom = lines.iter().position(|l| l.contains("FAILURE: boom")).unwrap();
        let late = lines.iter().position(|l| l.contains("late")).unwrap();
        assert!(started < middle && middle < boom && boom < late, "{text}");
        assert!(lines[boom].contains("<<< host_failure"), "{text}");
        assert!(
            text.contains("VIOLATION host_failure [critical / bridge_initialization]"),
            "{text}"
        );
        let _ = (Severity::Critical, Category::BridgeInitialization);
    }
}
