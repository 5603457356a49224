//! Herald's specification, with no I/O: the scenario language (what can happen), the history
//! language (what was observed), the invariant checkers that judge a history, and the proptest
//! generators that produce scenarios. Pure data and functions: no turmoil, no tokio.

pub mod history;
pub mod scenario;
