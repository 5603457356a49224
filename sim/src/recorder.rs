//! The history recorder every host of one world writes to, and the sink that turns a panic in
//! any host into a recorded `Failure` instead of an abort.

use crate::clock::sim_now_ms;
use herald_properties::history::{History, Observation, PublishOutcome};
use herald_properties::settling::Settling;
use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};

/// Shared, append-only history of one world. Cloned into every host; all hosts of a world run
/// on one thread, so the order of entries is the deterministic order of the simulation.
#[derive(Clone)]
pub struct Recorder {
    history: Arc<Mutex<History>>,
}

impl Recorder {
    pub fn new(seed: u64) -> Recorder {
        Recorder {
            history: Arc::new(Mutex::new(History {
                seed,
                entries: Vec::new(),
            })),
        }
    }

    /// Records at the current simulated time (inside a host).
    pub fn record(&self, what: Observation) {
        self.record_at(sim_now_ms(), what);
    }

    /// Records at an explicit simulated time (from the stepping loop, outside any host). Hosts
    /// tick one after another within a step, so times are clamped to keep the history ordered.
    pub fn record_at(&self, at_ms: u64, what: Observation) {
        let mut history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let at_ms = history.entries.last().map_or(at_ms, |last| last.at_ms.max(at_ms));
        history.record(at_ms, what);
    }

    /// The epoch and seq of the newest successful publish for `user`, if any (hostile clients
    /// use another user's stream position to try to read it).
    pub fn last_position_of(&self, user: &str) -> Option<(String, u64)> {
        let history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut user_of_event = std::collections::BTreeMap::new();
        let mut last = None;
        for entry in &history.entries {
            match &entry.what {
                Observation::PublishCalled { event_id, user: u, .. } => {
                    user_of_event.insert(event_id.clone(), u.clone());
                }
                Observation::PublishReturned {
                    event_id,
                    outcome: PublishOutcome::Published { seq, epoch, .. },
                    ..
                } if user_of_event.get(event_id).is_some_and(|u| u == user) => {
                    last = Some((epoch.clone(), *seq));
                }
                _ => {}
            }
        }
        last
    }

    /// Feeds `settling` every entry recorded since the first `*observed` ones and advances
    /// `*observed`: each entry is observed once, in history order.
    pub fn feed(&self, settling: &mut Settling, observed: &mut usize) {
        let history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for entry in &history.entries[*observed..] {
            settling.observe(entry);
        }
        *observed = history.entries.len();
    }

    pub fn into_history(self) -> History {
        let mut history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *history)
    }

    /// Records a panic; never blocks (the panicking code may hold the lock).
    fn record_panic(&self, message: String) {
        if let Ok(mut history) = self.history.try_lock() {
            let at_ms = turmoil::sim_elapsed().map(|d| d.as_millis() as u64).unwrap_or(0);
            let at_ms = history.entries.last().map_or(at_ms, |last| last.at_ms.max(at_ms));
            history.record(
                at_ms,
                Observation::Failure {
                    host: "panic".into(),
                    message,
                },
            );
        }
    }
}

thread_local! {
    static PANIC_SINK: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// While the guard lives, panics on this thread are recorded into `recorder` (and not printed).
/// Tasks that tokio catches would otherwise vanish silently.
pub struct PanicSinkGuard;

impl PanicSinkGuard {
    pub fn install(recorder: &Recorder) -> PanicSinkGuard {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let handled = PANIC_SINK
                    .try_with(|sink| match sink.try_borrow().ok().and_then(|s| s.clone()) {
                        Some(recorder) => {
                            recorder.record_panic(info.to_string());
                            true
                        }
                        None => false,
                    })
                    .unwrap_or(false);
                if !handled {
                    previous(info);
                }
            }));
        });
        PANIC_SINK.with(|sink| *sink.borrow_mut() = Some(recorder.clone()));
        PanicSinkGuard
    }
}

impl Drop for PanicSinkGuard {
    fn drop(&mut self) {
        let _ = PANIC_SINK.try_with(|sink| sink.borrow_mut().take());
    }
}
