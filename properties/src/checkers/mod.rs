//! Invariant checkers: each one reads a whole [`History`] (and the [`Scenario`] that produced
//! it) and either accepts it or returns the first [`Violation`] it finds, deterministically.
//!
//! Every checker is written against a *real* run: reconnects, restarts, partitions, message
//! loss and ambiguous publish outcomes are normal noise, and a false positive on the real core
//! is as bad as a missed bug. So each rule only fires when the history proves the core wrong
//! (e.g. a gap is only "dishonest" when the data was *certainly* still retained), and the
//! reasoning is written next to each rule.
//!
//! All checkers share one `index::Index` of the history (who published what, which client
//! saw which frames on which connection, when the server and the network were up), built once
//! per call.

pub mod builder;
mod index;

mod auth;
mod bounded_resources;
mod honest_gaps;
mod isolation;
mod liveness;
mod no_duplicates;
mod no_silent_failure;
mod no_silent_loss;
mod order;

use crate::history::History;
use crate::scenario::Scenario;
use serde::{Deserialize, Serialize};
use std::fmt;

pub use index::{liveness_bound_ms, retention_expiry_ms};

/// The properties Herald promises. Order is the order of [`Invariant::ALL`] and of
/// [`check_all`]'s result.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    Isolation,
    NoSilentLoss,
    NoDuplicates,
    Order,
    HonestGaps,
    Liveness,
    NoSilentFailure,
    BoundedResources,
    Auth,
}

impl Invariant {
    pub const ALL: [Invariant; 9] = [
        Invariant::Isolation,
        Invariant::NoSilentLoss,
        Invariant::NoDuplicates,
        Invariant::Order,
        Invariant::HonestGaps,
        Invariant::Liveness,
        Invariant::NoSilentFailure,
        Invariant::BoundedResources,
        Invariant::Auth,
    ];

    /// The serde name, used in seed file names and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Invariant::Isolation => "isolation",
            Invariant::NoSilentLoss => "no_silent_loss",
            Invariant::NoDuplicates => "no_duplicates",
            Invariant::Order => "order",
            Invariant::HonestGaps => "honest_gaps",
            Invariant::Liveness => "liveness",
            Invariant::NoSilentFailure => "no_silent_failure",
            Invariant::BoundedResources => "bounded_resources",
            Invariant::Auth => "auth",
        }
    }

    /// Parses [`Invariant::as_str`]'s output.
    pub fn parse(name: &str) -> Option<Invariant> {
        Invariant::ALL.into_iter().find(|i| i.as_str() == name)
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad a violation is for the product (reports sort by it).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// The five failure families Herald exists to rule out (issue 6's catalogue uses the same).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    BridgeInitialization,
    CrossUserSecurity,
    PerformanceLoad,
    ReconnectionRecovery,
    NotificationDelivery,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::BridgeInitialization,
        Category::CrossUserSecurity,
        Category::PerformanceLoad,
        Category::ReconnectionRecovery,
        Category::NotificationDelivery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::BridgeInitialization => "bridge_initialization",
            Category::CrossUserSecurity => "cross_user_security",
            Category::PerformanceLoad => "performance_load",
            Category::ReconnectionRecovery => "reconnection_recovery",
            Category::NotificationDelivery => "notification_delivery",
        }
    }
}

/// One broken promise, explained so a person can act on it: the explanation names times,
/// clients, users, connections and event ids; `evidence` are indices into `history.entries`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub severity: Severity,
    pub category: Category,
    pub explanation: String,
    pub evidence: Vec<usize>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{} / {} / {}] {} (history entries {:?})",
            self.invariant,
            self.severity.as_str(),
            self.category.as_str(),
            self.explanation,
            self.evidence
        )
    }
}

/// Checks one invariant; the first violation found (deterministic for a given history).
pub fn check(invariant: Invariant, scenario: &Scenario, history: &History) -> Result<(), Violation> {
    let index = index::Index::build(scenario, history);
    check_indexed(invariant, &index)
}

/// Checks every invariant: at most one violation per invariant, in [`Invariant::ALL`] order.
pub fn check_all(scenario: &Scenario, history: &History) -> Vec<Violation> {
    let index = index::Index::build(scenario, history);
    Invariant::ALL
        .into_iter()
        .filter_map(|invariant| check_indexed(invariant, &index).err())
        .collect()
}

fn check_indexed(invariant: Invariant, index: &index::Index<'_>) -> Result<(), Violation> {
    let result = match invariant {
        Invariant::Isolation => isolation::check(index),
        Invariant::NoSilentLoss => no_silent_loss::check(index),
        Invariant::NoDuplicates => no_duplicates::check(index),
        Invariant::Order => order::check(index),
        Invariant::HonestGaps => honest_gaps::check(index),
        Invariant::Liveness => liveness::check(index),
        Invariant::NoSilentFailure => no_silent_failure::check(index),
        Invariant::BoundedResources => bounded_resources::check(index),
        Invariant::Auth => auth::check(index),
    };
    if let Err(violation) = &result {
        assert_eq!(
            violation.invariant, invariant,
            "a checker reports only its own invariant"
        );
        assert!(
            !violation.evidence.is_empty(),
            "a violation cites at least one history entry"
        );
    }
    result
}

/// Builds a violation (shared by the checkers).
fn violation(
    invariant: Invariant,
    severity: Severity,
    category: Category,
    explanation: String,
    evidence: Vec<usize>,
) -> Violation {
    Violation {
        invariant,
        severity,
        category,
        explanation,
        evidence,
    }
}

/// Simulated time as people read it: `t=1.204s`.
fn t(ms: u64) -> String {
    format!("t={}.{:03}s", ms / 1000, ms % 1000)
}
