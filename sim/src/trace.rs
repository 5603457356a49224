//! Captures `tracing` output of every host of one world, stamped with simulated time. turmoil
//! enters a `node{name=...}` span while it runs each host, so every line names its host.

use std::io;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Lines captured so far; bounded so a chatty run cannot exhaust memory.
#[derive(Clone, Default)]
pub struct TraceBuffer {
    bytes: Arc<Mutex<Vec<u8>>>,
}

/// Captured trace bytes beyond this are dropped and the truncation is stated in the output.
pub const TRACE_BYTES_MAX: usize = 64 * 1024 * 1024;

impl TraceBuffer {
    pub fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.bytes.lock().unwrap());
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if bytes.len() >= TRACE_BYTES_MAX {
            text.push_str("\n[trace truncated at TRACE_BYTES_MAX]\n");
        }
        text
    }
}

impl io::Write for TraceBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut bytes = self.bytes.lock().unwrap();
        let room = TRACE_BYTES_MAX.saturating_sub(bytes.len());
        bytes.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for TraceBuffer {
    type Writer = TraceBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Prints simulated time (`t=1.204s`), never the wall clock.
struct SimTime;

impl FormatTime for SimTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(elapsed) => write!(w, "t={:.3}s", elapsed.as_secs_f64()),
            None => write!(w, "t=?"),
        }
    }
}

/// A subscriber for one traced run. `HERALD_TRACE` overrides the filter (default: debug for
/// Herald's crates, warnings elsewhere).
pub fn subscriber(buffer: TraceBuffer) -> impl tracing::Subscriber + Send + Sync {
    let filter = EnvFilter::try_from_env("HERALD_TRACE")
        .unwrap_or_else(|_| EnvFilter::new("warn,herald_core=debug,herald_sim=debug"));
    tracing_subscriber::fmt()
        .with_writer(buffer)
        .with_timer(SimTime)
        .with_ansi(false)
        .with_env_filter(filter)
        .finish()
}
