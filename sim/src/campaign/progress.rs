//! Live progress of a campaign: an indicatif line on a terminal, plain periodic lines in CI logs
//! (a redrawn line is unreadable there), or nothing (tests, benchmarks).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// How a campaign reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A live line if stderr is a terminal, plain lines otherwise.
    Auto,
    /// Always the live line.
    Tty,
    /// Plain lines every few seconds (CI logs).
    Plain,
    /// Nothing at all.
    Quiet,
}

/// Counters shown in a progress line.
pub struct Snapshot {
    pub elapsed: Duration,
    pub limit: String,
    pub cases: u64,
    pub failures: u64,
    pub simulated_ms: u64,
    /// Wall time spent inside worlds, summed over workers.
    pub world_wall: Duration,
    pub coverage_reached: usize,
    pub coverage_total: usize,
}

impl Snapshot {
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let speedup = self.simulated_ms as f64 / 1000.0 / self.world_wall.as_secs_f64().max(1e-9);
        format!(
            "{} / {} | cases {} ({:.1}/s) | sim {:.0}x | failures {} | coverage {}/{}",
            clock(self.elapsed),
            self.limit,
            self.cases,
            self.cases as f64 / secs,
            speedup,
            self.failures,
            self.coverage_reached,
            self.coverage_total
        )
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Where progress and failure notices go.
pub enum Reporter {
    Quiet,
    Plain,
    Live(ProgressBar),
}

impl Reporter {
    pub fn new(mode: ProgressMode) -> Reporter {
        let live = match mode {
            ProgressMode::Quiet => return Reporter::Quiet,
            ProgressMode::Plain => false,
            ProgressMode::Tty => true,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
        };
        if !live {
            return Reporter::Plain;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        Reporter::Live(bar)
    }

    /// A line that stays (a failure, the banner).
    pub fn println(&self, line: &str) {
        match self {
            Reporter::Quiet => {}
            Reporter::Plain => println!("{line}"),
            Reporter::Live(bar) => bar.println(line),
        }
    }

    /// The progress line; `plain_due` says whether a plain line is due now.
    pub fn update(&self, snapshot: &Snapshot, plain_due: bool) {
        match self {
            Reporter::Quiet => {}
            Reporter::Plain if plain_due => println!("progress: {}", snapshot.line()),
            Reporter::Plain => {}
            Reporter::Live(bar) => {
                bar.set_message(snapshot.line());
                bar.tick();
            }
        }
    }

    pub fn finish(&self) {
        if let Reporter::Live(bar) = self {
            bar.finish_and_clear();
        }
    }

    pub fn is_quiet(&self) -> bool {
        matches!(self, Reporter::Quiet)
    }
}
