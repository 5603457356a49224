//! Herald's specification, with no I/O: the scenario language (what can happen), the history
//! language (what was observed), the invariant checkers that judge a history, and the proptest
//! generators that produce scenarios. Pure data and functions: no turmoil, no tokio.

pub mod checkers;
pub mod coverage;
pub mod expectations;
pub mod generators;
pub mod history;
pub mod scenario;
pub mod seed_file;
pub mod settling;
pub mod shrink;
