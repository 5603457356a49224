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

/// What failed: an invariant, or a crash of some kind. Failures are grouped, counted, shrunk
/// and named by this key (`no_silent_loss`, `host_failure`, ...).
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
    pub severity: Severity,
    pub category: Category,
    pub explanation: String,
    /// Indices into the history's entries (empty when there is no history).
    pub evidence: Vec<usize>,
}

impl CaseFailure {
    fn from_violation(violation: Violation) -> CaseFailure {
        CaseFailure {
            key: FailureKey::Invariant(violation.invariant),
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
            severity,
            category,
            explanation,
            evidence,
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

    pub fn fails_with(&self, key: FailureKey) -> bool {
        self.failure(key).is_some()
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
        Err(payload) => Judged {
            output: None,
            failures: vec![CaseFailure::crash(
                CrashKind::Panic,
                format!("the world panicked: {}", panic_message(payload.as_ref())),
                Vec::new(),
            )],
        },
    }
}

/// Every failure a history shows: host failures, then invariant violations. A panicking
/// checker is itself a failure (and its message says which).
pub fn judge(scenario: &Scenario, history: &History) -> Vec<CaseFailure> {
    let mut failures = Vec::new();
    let host_failures: Vec<(usize, String)> = history
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| match &entry.what {
            Observation::Failure { host, message } => Some((i, format!("t={}ms {host}: {message}", entry.at_ms))),
            _ => None,
        })
        .collect();
    if !host_failures.is_empty() {
        let explanation = format!("{} host failure(s); first: {}", host_failures.len(), host_failures[0].1);
        failures.push(CaseFailure::crash(
            CrashKind::HostFailure,
            explanation,
            host_failures.iter().map(|(i, _)| *i).collect(),
        ));
    }
    match catch_unwind(AssertUnwindSafe(|| check_all(scenario, history))) {
        Ok(violations) => failures.extend(violations.into_iter().map(CaseFailure::from_violation)),
        Err(payload) => failures.push(CaseFailure::crash(
            CrashKind::Panic,
            format!("a checker panicked: {}", panic_message(payload.as_ref())),
            Vec::new(),
        )),
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
