//! Sans-IO bookkeeping of where a client stands in its user's stream: which epoch it reads, the
//! last seq it handed to the application, what to put in `resume`, and which events are
//! duplicates. No sockets, no time: the connection task feeds it decoded frames in order and
//! delivers whatever items it returns. Kept apart so that the exactly-once rules can be tested
//! (and read) without a network.
//!
//! Rules (PROTOCOL.md, "Resume"):
//! - first welcome (no resume sent): start at `(welcome.epoch, welcome.head)`: only live events;
//! - welcome in the epoch we resumed: keep our position, the server replays after it;
//! - welcome in another epoch: our stream is gone. The switch to `(welcome.epoch, 0)` is only
//!   *pending* until the server's `epoch` gap for our old stream has been delivered (the server
//!   sends it right after the welcome, then replays the new epoch from seq 1). If the connection
//!   dies in between, the next hello still resumes the old epoch, so the server says again that
//!   it is gone: the application can never miss the news of a lost stream. (Found by the
//!   simulation: a kill between the welcome and the gap used to lose the gap for good.) Should
//!   the server send a new-epoch event without the gap, the switch happens then and nothing is
//!   invented;
//! - event with `seq <= last_seq` in the current epoch: duplicate, dropped;
//! - any other event is delivered, even if its seq jumps: hiding a server bug from the
//!   application (and from the simulation's checkers) would be worse than showing it;
//! - a `retention` gap in the current epoch moves `last_seq` to its end: those seqs are gone.

use super::Item;
use crate::protocol::{EventKind, GapReason, Resume};

/// Where the client stands: the epoch it reads and the last seq handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub last_seq: u64,
}

/// The exactly-once state machine of one client (across all its connections). See the module
/// docs for the rules.
#[derive(Debug, Clone, Default)]
pub struct StreamTracker {
    position: Option<Position>,
    /// The epoch a welcome announced while `position` still names the lost stream.
    pending_epoch: Option<String>,
    /// Duplicates dropped so far (events at or below `last_seq`); for logs and tests.
    duplicates: u64,
}

impl StreamTracker {
    /// A client that has never been welcomed: its first hello carries no resume.
    pub fn new() -> StreamTracker {
        StreamTracker::default()
    }

    /// The `resume` to send in the next hello: `None` until the first welcome, then always the
    /// current position, so nothing handed to the application is replayed and nothing after it
    /// is skipped.
    pub fn resume(&self) -> Option<Resume> {
        self.position.as_ref().map(|p| Resume {
            epoch: p.epoch.clone(),
            after: p.last_seq,
        })
    }

    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// A welcome arrived on a connection whose hello carried [`StreamTracker::resume`].
    /// Returns true when the epoch changed (the server will replay the new epoch from seq 1).
    pub fn welcome(&mut self, epoch: &str, head: u64) -> bool {
        self.pending_epoch = None;
        match &mut self.position {
            None => {
                self.position = Some(Position {
                    epoch: epoch.to_string(),
                    last_seq: head,
                });
                false
            }
            Some(position) if position.epoch == epoch => false,
            Some(_) => {
                self.pending_epoch = Some(epoch.to_string());
                true
            }
        }
    }

    /// Commits a pending epoch switch: the new stream is read from seq 1.
    fn commit_epoch_switch(&mut self) {
        if let (Some(epoch), Some(position)) = (self.pending_epoch.take(), self.position.as_mut()) {
            position.epoch = epoch;
            position.last_seq = 0;
        }
    }

    /// An event frame. `None` when it is a duplicate, or when no welcome has placed the client
    /// in an epoch yet (a server bug the caller logs; the frame has no epoch to belong to).
    pub fn event(&mut self, seq: u64, run: String, kind: EventKind, data: serde_json::Value) -> Option<Item> {
        // Events after a welcome in a new epoch belong to the new epoch, gap or not.
        self.commit_epoch_switch();
        let position = self.position.as_mut()?;
        if seq <= position.last_seq {
            self.duplicates += 1;
            return None;
        }
        position.last_seq = seq;
        Some(Item::Event {
            epoch: position.epoch.clone(),
            seq,
            run,
            kind,
            data,
        })
    }

    /// A gap frame, always delivered as is. A retention gap in the current epoch moves
    /// `last_seq` to its end (never backwards).
    pub fn gap(&mut self, epoch: String, from: u64, to: Option<u64>, reason: GapReason) -> Item {
        let announces_our_loss = reason == GapReason::Epoch && self.position.as_ref().is_some_and(|p| p.epoch == epoch);
        if announces_our_loss || self.pending_epoch.as_ref().is_some_and(|pending| *pending == epoch) {
            self.commit_epoch_switch();
        }
        if let (Some(position), GapReason::Retention, Some(to)) = (self.position.as_mut(), reason, to) {
            if position.epoch == epoch {
                position.last_seq = position.last_seq.max(to);
            }
        }
        Item::Gap {
            epoch,
            from,
            to,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn event(tracker: &mut StreamTracker, seq: u64) -> Option<u64> {
        match tracker.event(seq, "run-1".into(), EventKind::AgentThinking, json!({"n": seq}))? {
            Item::Event { seq, .. } => Some(seq),
            other => panic!("event produced {other:?}"),
        }
    }

    #[test]
    fn first_welcome_starts_at_head_and_resume_follows_delivery() {
        let mut tracker = StreamTracker::new();
        assert_eq!(tracker.resume(), None);
        assert!(!tracker.welcome("e1", 5));
        assert_eq!(
            tracker.resume(),
            Some(Resume {
                epoch: "e1".into(),
                after: 5
            })
        );
        assert_eq!(event(&mut tracker, 5), None, "at head: already before us");
        assert_eq!(event(&mut tracker, 6), Some(6));
        assert_eq!(event(&mut tracker, 7), Some(7));
        assert_eq!(tracker.resume().unwrap().after, 7);
        assert_eq!(tracker.duplicates(), 1);
    }

    #[test]
    fn resume_in_same_epoch_keeps_position_and_drops_replayed_duplicates() {
        let mut tracker = StreamTracker::new();
        tracker.welcome("e1", 0);
        for seq in 1..=3 {
            assert_eq!(event(&mut tracker, seq), Some(seq));
        }
        // Reconnect: the welcome's head is ahead of us, but our position is what counts.
        assert!(!tracker.welcome("e1", 9));
        assert_eq!(tracker.position().unwrap().last_seq, 3);
        assert_eq!(event(&mut tracker, 2), None);
        assert_eq!(event(&mut tracker, 3), None);
        assert_eq!(event(&mut tracker, 4), Some(4));
        assert_eq!(tracker.duplicates(), 2);
    }

    #[test]
    fn epoch_change_restarts_at_zero_and_delivers_the_epoch_gap_as_is() {
        let mut tracker = StreamTracker::new();
        tracker.welcome("e1", 0);
        assert_eq!(event(&mut tracker, 1), Some(1));
        assert_eq!(event(&mut tracker, 2), Some(2));
        assert!(tracker.welcome("e2", 4));
        let gap = tracker.gap("e1".into(), 3, None, GapReason::Epoch);
        assert_eq!(
            gap,
            Item::Gap {
                epoch: "e1".into(),
                from: 3,
                to: None,
                reason: GapReason::Epoch
            }
        );
        assert_eq!(
            tracker.position(),
            Some(&Position {
                epoch: "e2".into(),
                last_seq: 0
            })
        );
        // Seq 1 of the new epoch is not a duplicate of seq 1 of the old one.
        match tracker.event(1, "r".into(), EventKind::AgentStarted, json!(null)) {
            Some(Item::Event { epoch, seq: 1, .. }) => assert_eq!(epoch, "e2"),
            other => panic!("expected e2/1, got {other:?}"),
        }
    }

    #[test]
    fn epoch_switch_waits_for_the_epoch_gap_so_a_drop_in_between_resumes_the_old_stream() {
        let mut tracker = StreamTracker::new();
        tracker.welcome("e1", 0);
        assert_eq!(event(&mut tracker, 1), Some(1));
        // Welcome in a new epoch, then the connection dies before the epoch gap arrives.
        assert!(tracker.welcome("e2", 0));
        assert_eq!(
            tracker.resume(),
            Some(Resume {
                epoch: "e1".into(),
                after: 1
            }),
            "still the old stream"
        );
        // The next connection is welcomed into e3 and does get the gap for e1: now we switch.
        assert!(tracker.welcome("e3", 2));
        tracker.gap("e1".into(), 2, None, GapReason::Epoch);
        assert_eq!(
            tracker.resume(),
            Some(Resume {
                epoch: "e3".into(),
                after: 0
            })
        );
        assert_eq!(event(&mut tracker, 1), Some(1), "seq 1 of e3 is new");
    }

    #[test]
    fn retention_gap_moves_position_forward_only_in_current_epoch() {
        let mut tracker = StreamTracker::new();
        tracker.welcome("e1", 0);
        assert_eq!(event(&mut tracker, 1), Some(1));
        tracker.gap("e1".into(), 2, Some(10), GapReason::Retention);
        assert_eq!(tracker.resume().unwrap().after, 10);
        assert_eq!(event(&mut tracker, 10), None);
        assert_eq!(event(&mut tracker, 11), Some(11));
        // A stale gap never moves us backwards, and one for another epoch does not move us.
        tracker.gap("e1".into(), 2, Some(5), GapReason::Retention);
        tracker.gap("e0".into(), 1, Some(50), GapReason::Retention);
        assert_eq!(tracker.resume().unwrap().after, 11);
    }

    #[test]
    fn seq_jumps_are_delivered_not_hidden_and_events_before_welcome_are_refused() {
        let mut tracker = StreamTracker::new();
        assert_eq!(event(&mut tracker, 1), None, "no epoch to place it in");
        tracker.welcome("e1", 0);
        assert_eq!(event(&mut tracker, 1), Some(1));
        assert_eq!(event(&mut tracker, 5), Some(5), "a jump is shown to the application");
        assert_eq!(event(&mut tracker, 4), None, "and what it skipped is now a duplicate");
    }

    proptest! {
        /// Whatever the server sends (duplicates, replays, reorderings), the tracker hands the
        /// application a strictly increasing run of seqs, and resume.after is always the last
        /// one handed over.
        #[test]
        fn delivered_seqs_strictly_increase_and_resume_tracks_them(
            head in 0u64..20,
            seqs in proptest::collection::vec(0u64..60, 0..80),
        ) {
            let mut tracker = StreamTracker::new();
            tracker.welcome("e", head);
            let mut last = head;
            let mut delivered = Vec::new();
            for seq in seqs {
                if let Some(s) = event(&mut tracker, seq) {
                    prop_assert!(s > last);
                    last = s;
                    delivered.push(s);
                }
                prop_assert_eq!(tracker.resume().unwrap().after, last);
            }
            let mut sorted = delivered.clone();
            sorted.dedup();
            prop_assert_eq!(sorted, delivered);
        }
    }
}
