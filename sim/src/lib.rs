//! Herald's deterministic simulation: the real core inside a turmoil world.
//!
//! [`world::run`] executes a scenario and records a history; the campaign modules fuzz, shrink,
//! save and replay scenarios. Read [`world`] first; [`server_under_test`], [`net`] and [`clock`]
//! are the seams between the world and the core.

// turmoil seeds tokio's runtime RNG (and shuts a runtime down on a task's panic) only when tokio
// is built with `--cfg tokio_unstable` (`.cargo/config.toml`). Cargo drops that setting whenever
// `RUSTFLAGS` is set, and the worlds would then silently stop being deterministic. (rustdoc
// does not get `build.rustflags`; documentation runs no world.)
#[cfg(all(not(tokio_unstable), not(doc)))]
compile_error!(
    "herald-sim needs `--cfg tokio_unstable` (set in .cargo/config.toml; add it to RUSTFLAGS when \
     RUSTFLAGS is set, which overrides that file)"
);

pub mod campaign;
pub mod catalogue;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod net;
pub mod publisher;
pub mod recorder;
pub mod server_under_test;
pub mod timeline;
pub mod trace;
pub mod world;

pub use world::{run, run_with, RunOutput, WorldOptions};
