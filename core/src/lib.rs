//! Herald's notification core. Read in this order: [`protocol`] (what crosses the wire),
//! [`hub`] (the sans-IO state machine that decides everything), then the adapters that give it
//! I/O: `server` (axum + WebSocket), `notifier` (the in-process publishing API), `client`
//! (the reconnecting client library).

pub mod auth;
pub mod client;
pub mod clock;
pub mod hub;
pub mod metrics;
pub mod notifier;
pub mod protocol;
pub mod rng;
pub mod server;
