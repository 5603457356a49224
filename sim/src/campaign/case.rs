//! One case: run a scenario in a world and judge the history. A panic anywhere (world, checker)
//! becomes a failure of the case, never an abort of the campaign; a host failure recorded in the
//! history (a host panicked or errored) is a failure even when every invariant holds.

use crate::server_under_test::ServerUnderTest;
use crate::world::{run_with, RunOutput, WorldOptions};
use herald_properties::checkers::{check_all, Category, Invariant, Severity, Violation};
use herald_properties::history::{History, Observation};
use herald_properties::scenario::Scenario;
use herald_properties::seed_file::CrashKind;
use serde::{Serialize, Serializer};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

/// What failed: an invariant, or a crash of some kind. Failures are counted, budgeted and named
/// by this key (`no_silent_loss`, `host_failure`, ...); a crash is told apart from another of its
/// kind by [`CaseFailure::fingerprint`] too, when shrinking and grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKey {
    Invariant(Invariant),
    Crash(CrashKind),
}

impl FailureKey {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKey::Invariant(invariant) => invariant.as_str(),
            FailureKey::Crash(kind) => kind.as_str(),
        }
    }
}

impl fmt::Display for FailureKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FailureKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One reason a case failed, explained like a checker violation.
#[derive(Debug, Clone, Serialize)]
pub struct CaseFailure {
    pub key: FailureKey,
    /// What tells this crash from another of its kind ([`crash_fingerprint`]); `None` for an
    /// invariant (its key names it) and for a hang. Shrinking keeps it, and failures are grouped
    /// by it, so one panic is never shrunk into, nor counted as, another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub severity: Severity,
    pub category: Category,
    pub explanation: String,
    /// Indices into the history's entries (empty when there is no history).
    pub evidence: Vec<usize>,
}

/// Characters of a fingerprint kept (a first line can be a whole serialized value).
const FINGERPRINT_CHARS_MAX: usize = 200;

/// The fingerprint of a crash: where it came from (`source`: the host of a host failure, or
/// `world`, `checker`, `generator` for a panic outside the hosts) and, of its message's first
/// line, the panic location when it has one (`panicked at src/x.rs:12:5`: a panic hook's
/// message), else the line with its digits stripped (ids, counts and times vary from one run of
/// the same bug to the next).
pub fn crash_fingerprint(source: &str, message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    let what = match first.strip_prefix("panicked at ") {
        Some(location) => format!("panicked at {}", location.trim_end_matches(':')),
        None => first.chars().filter(|c| !c.is_ascii_digit()).collect(),
    };
    let mut fingerprint = format!("{source}: {what}");
    if let Some((cut, _)) = fingerprint.char_indices().nth(FINGERPRINT_CHARS_MAX) {
        fingerprint.truncate(cut);
    }
    fingerprint
}

impl CaseFailure {
    fn from_violation(violation: Violation) -> CaseFailure {
        CaseFailure {
            key: FailureKey::Invariant(violation.invariant),
            fingerprint: None,
            severity: violation.severity,
            category: violation.category,
            explanation: violation.explanation,
            evidence: violation.evidence,
        }
    }

    /// A crash: critical, and filed under bridge/initialization (the service is not there) or,
    /// for a hang, performance/load.
    pub fn crash(kind: CrashKind, explanation: String, evidence: Vec<usize>) -> CaseFailure {
        let (severity, category) = match kind {
            CrashKind::Hang => (Severity::High, Category::PerformanceLoad),
            CrashKind::HostFailure | CrashKind::Panic => (Severity::Critical, Category::BridgeInitialization),
        };
        CaseFailure {
            key: FailureKey::Crash(kind),
            fingerprint: None,
            severity,
            category,
            explanation,
            evidence,
        }
    }

    /// This failure with its [`crash_fingerprint`] from `source` and `message`.
    pub fn fingerprinted(self, source: &str, message: &str) -> CaseFailure {
        CaseFailure {
            fingerprint: Some(crash_fingerprint(source, message)),
            ..self
        }
    }

    /// Whether `other` is the same failure: the same key and, for a crash, the same fingerprint.
    pub fn same_as(&self, other: &CaseFailure) -> bool {
        self.key == other.key && self.fingerprint == other.fingerprint
    }

    /// The key, and the fingerprint when there is one: how a report names the failure.
    pub fn label(&self) -> String {
        match &self.fingerprint {
            Some(fingerprint) => format!("{} ({fingerprint})", self.key),
            None => self.key.to_string(),
        }
    }
}

/// The judged result of one run.
pub struct Judged {
    /// `None` when the world itself panicked.
    pub output: Option<RunOutput>,
    /// Crashes first, then invariant violations in `Invariant::ALL` order; empty = passed.
    pub failures: Vec<CaseFailure>,
}

impl Judged {
    pub fn history(&self) -> Option<&History> {
        self.output.as_ref().map(|o| &o.history)
    }

    pub fn primary(&self) -> Option<&CaseFailure> {
        self.failures.first()
    }

    /// Whether any failure has `key`, whatever its fingerprint.
    pub fn fails_with(&self, key: FailureKey) -> bool {
        self.failure(key).is_some()
    }

    /// The failure that is the same as `target` ([`CaseFailure::same_as`]), if the run had it:
    /// what a shrink candidate or a reproduction must show.
    pub fn same_failure(&self, target: &CaseFailure) -> Option<&CaseFailure> {
        self.failures.iter().find(|f| f.same_as(target))
    }

    /// The failure with `key`, if the run had one.
    pub fn failure(&self, key: FailureKey) -> Option<&CaseFailure> {
        self.failures.iter().find(|f| f.key == key)
    }

    /// `passed`, or `failed` and the failing keys.
    pub fn outcome(&self) -> String {
        if self.failures.is_empty() {
            return "passed".to_string();
        }
        let keys: Vec<&str> = self.failures.iter().map(|f| f.key.as_str()).collect();
        format!("failed {}", keys.join(", "))
    }
}

/// Runs `scenario` with `seed` against `server`, catching panics, and judges the history.
pub fn run_and_judge(scenario: &Scenario, seed: u64, server: Rc<dyn ServerUnderTest>, trace: bool) -> Judged {
    let ran = catch_unwind(AssertUnwindSafe(|| {
        run_with(scenario, seed, WorldOptions { server, trace })
    }));
    match ran {
        Ok(output) => {
            let failures = judge(scenario, &output.history);
            Judged {
                output: Some(output),
                failures,
            }
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            Judged {
                output: None,
                failures: vec![CaseFailure::crash(
                    CrashKind::Panic,
                    format!("the world panicked: {message}"),
                    Vec::new(),
                )
                .fingerprinted("world", &message)],
            }
        }
    }
}

/// Every failure a history shows: host failures, then invariant violations. A panicking
/// checker is itself a failure (and its message says which).
pub fn judge(scenario: &Scenario, history: &History) -> Vec<CaseFailure> {
    let mut failures = Vec::new();
    let host_failures: Vec<(usize, &str, &str, u64)> = history
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| match &entry.what {
            Observation::Failure { host, message } => Some((i, host.as_str(), message.as_str(), entry.at_ms)),
            _ => None,
        })
        .collect();
    // Fingerprinted by the first: later ones are most often its consequences.
    if let Some(&(_, host, message, at_ms)) = host_failures.first() {
        let explanation = format!(
            "{} host failure(s); first: t={at_ms}ms {host}: {message}",
            host_failures.len()
        );
        failures.push(
            CaseFailure::crash(
                CrashKind::HostFailure,
                explanation,
                host_failures.iter().map(|(i, ..)| *i).collect(),
            )
            .fingerprinted(host, message),
        );
    }
    match catch_unwind(AssertUnwindSafe(|| check_all(scenario, history))) {
        Ok(violations) => failures.extend(violations.into_iter().map(CaseFailure::from_violation)),
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            failures.push(
                CaseFailure::crash(CrashKind::Panic, format!("a checker panicked: {message}"), Vec::new())
                    .fingerprinted("checker", &message),
            )
        }
    }
    failures
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_fingerprint_keeps_the_panic_location_or_the_message_without_digits() {
        let panic = "panicked at core/src/hub/mod.rs:120:9:\nuser u3 has 17 connections";
        assert_eq!(
            crash_fingerprint("panic", panic),
            "panic: panicked at core/src/hub/mod.rs:120:9"
        );
        assert_eq!(
            crash_fingerprint(
                "panic",
                "panicked at core/src/hub/mod.rs:120:9:\nuser u4 has 2 connections"
            ),
            crash_fingerprint("panic", panic),
            "one place, one fingerprint"
        );
        assert_ne!(
            crash_fingerprint(
                "panic",
                "panicked at core/src/hub/mod.rs:98:9:\nuser u3 has 17 connections"
            ),
            crash_fingerprint("panic", panic),
            "another place, another crash"
        );
        assert_eq!(
            crash_fingerprint("client3", "more than 4096 commands queued\nsecond line"),
            "client3: more than  commands queued"
        );
        assert_ne!(
            crash_fingerprint("server", "serve returned an error: x"),
            crash_fingerprint("world", "serve returned an error: x")
        );
        assert_eq!(
            crash_fingerprint("world", &"é".repeat(500)).chars().count(),
            FINGERPRINT_CHARS_MAX
        );
    }

    #[test]
    fn a_failure_is_the_same_only_with_the_same_key_and_fingerprint() {
        let crash = |message: &str| {
            CaseFailure::crash(CrashKind::HostFailure, message.into(), Vec::new()).fingerprinted("panic", message)
        };
        let one = crash("panicked at a.rs:1:1:\nrun 1");
        assert!(one.same_as(&crash("panicked at a.rs:1:1:\nrun 2")));
        assert!(!one.same_as(&crash("panicked at b.rs:1:1:\nrun 1")));
        let hang = CaseFailure::crash(CrashKind::Hang, "hang".into(), Vec::new());
        assert!(!one.same_as(&hang));
        assert_eq!(hang.label(), "hang");
        assert_eq!(one.label(), "host_failure (panic: panicked at a.rs:1:1)");
    }
}
