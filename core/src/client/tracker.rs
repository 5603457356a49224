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
//! - a frame the client could not read ([`StreamTracker::unreadable_frame`]) followed by an event
//!   whose seq jumps (or a `retention` gap that starts past `last_seq + 1`): the skipped seqs
//!   are handed over first as an [`ItemGapReason::Unreadable`] gap, so an event the client could
//!   not parse is never lost silently. If the skipped frame may have been the `epoch` gap of a
//!   pending switch, the old stream's loss is handed over the same way (`to: None`);
//! - any other event is delivered, even if its seq jumps: a jump the client did not cause is a
//!   server bug, and inventing a gap for it would hide it from the application (and from the
//!   simulation's checkers, whose silent-loss rule a gap would satisfy);
//! - a `retention` gap in the current epoch moves `last_seq` to its end: those seqs are gone.
//!
//! Seqs come from the server, so no input may panic: the connection task drops a connection
//! whose frame names a seq beyond [`SEQ_MAX`] ([`seq_out_of_range`]) before the tracker sees
//! it, and the tracker's own arithmetic saturates all the same.

use super::{Item, ItemGapReason};
use crate::protocol::{EventKind, GapReason, Resume, ServerFrame};
use std::collections::VecDeque;

/// The largest seq a stream can reach. The server refuses a `resume` whose `after` is 2^64−1
/// with 4004 `bad_frame` (PROTOCOL.md, "Resume"), so a position there could never be resumed,
/// and a frame naming that seq can only be a server bug.
pub(super) const SEQ_MAX: u64 = u64::MAX - 1;

/// What in `frame` names a seq beyond [`SEQ_MAX`] (a welcome's `head`, an event's `seq`, a
/// gap's `to`), if anything: a protocol violation by the server, which the client must not
/// make its position. `None` for every frame a correct server sends. A gap's `from` may be
/// 2^64−1: an `epoch` gap starts at `resume.after + 1`, and `after` may be [`SEQ_MAX`].
pub(super) fn seq_out_of_range(frame: &ServerFrame) -> Option<String> {
    let (field, value) = match frame {
        ServerFrame::Welcome { head, .. } => ("welcome head", *head),
        ServerFrame::Event { seq, .. } => ("event seq", *seq),
        ServerFrame::Gap { to: Some(to), .. } => ("gap to", *to),
        ServerFrame::Gap { to: None, .. } | ServerFrame::Pong { .. } | ServerFrame::Error { .. } => return None,
    };
    (value > SEQ_MAX).then(|| format!("{field} {value} is beyond every stream (at most {SEQ_MAX})"))
}

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
    /// A frame of this connection could not be read since the last item was produced: a seq
    /// jump is then the client's own loss, reported as an `unreadable` gap.
    unreadable: bool,
}

impl StreamTracker {
    /// A client that has never been welcomed: its first hello carries no resume.
    pub fn new() -> StreamTracker {
        StreamTracker::default()
    }

    /// A client that resumes after `position` in its first hello: the application's saved
    /// place from an earlier run ([`super::ClientConfig::start_after`]).
    pub fn starting_after(start: Resume) -> StreamTracker {
        StreamTracker {
            position: Some(Position {
                epoch: start.epoch,
                last_seq: start.after,
            }),
            ..StreamTracker::default()
        }
    }

    /// The `resume` to send in the next hello: `None` until the first welcome (unless the
    /// client started after a saved position), then always the current position, so nothing
    /// handed to the application is replayed and nothing after it is skipped.
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
        // A new connection: the server replays from our position, so a frame the previous
        // connection could not read comes again (and is noticed again).
        self.unreadable = false;
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

    /// A server frame could not be read (not valid JSON, binary, a known type that does not
    /// decode). Not for frames of an unknown type: those are a newer server's additions,
    /// ignored. The next event (or retention gap) reports what was skipped; one before the
    /// connection's welcome is forgotten by that welcome (the stream starts there).
    pub fn unreadable_frame(&mut self) {
        if self.position.is_some() {
            self.unreadable = true;
        }
    }

    /// Before a pending epoch switch commits after an unreadable frame: that frame may have
    /// been the `epoch` gap of the old stream, whose loss must not go unsaid.
    fn old_stream_unreadable(&self, out: &mut VecDeque<Item>) {
        if let (true, Some(_), Some(position)) = (self.unreadable, &self.pending_epoch, &self.position) {
            out.push_back(Item::Gap {
                epoch: position.epoch.clone(),
                from: position.last_seq.saturating_add(1),
                to: None,
                reason: ItemGapReason::Unreadable,
            });
        }
    }

    /// An event frame: appends to `out` the items to hand over, in order. Nothing when it is a
    /// duplicate, or when no welcome has placed the client in an epoch yet (a server bug the
    /// caller logs; the frame has no epoch to belong to). After an unreadable frame, an
    /// `unreadable` gap for the seqs it skipped comes first.
    pub fn event(&mut self, seq: u64, run: String, kind: EventKind, data: serde_json::Value, out: &mut VecDeque<Item>) {
        if self.position.is_none() {
            return;
        }
        // Events after a welcome in a new epoch belong to the new epoch, gap or not.
        self.old_stream_unreadable(out);
        self.commit_epoch_switch();
        let Some(position) = self.position.as_mut() else {
            return;
        };
        if seq <= position.last_seq {
            self.duplicates += 1;
            return;
        }
        if std::mem::take(&mut self.unreadable) {
            skipped_before(position, seq, out);
        }
        position.last_seq = seq;
        out.push_back(Item::Event {
            epoch: position.epoch.clone(),
            seq,
            run,
            kind,
            data,
        });
    }

    /// A gap frame, delivered as is (appended to `out`; after an unreadable frame, preceded by
    /// an `unreadable` gap for the seqs between our position and a retention gap's start). A
    /// retention gap in the current epoch moves `last_seq` to its end (never backwards).
    pub fn gap(&mut self, epoch: String, from: u64, to: Option<u64>, reason: GapReason, out: &mut VecDeque<Item>) {
        let announces_our_loss = reason == GapReason::Epoch && self.position.as_ref().is_some_and(|p| p.epoch == epoch);
        if announces_our_loss || self.pending_epoch.as_ref().is_some_and(|pending| *pending == epoch) {
            if !announces_our_loss {
                self.old_stream_unreadable(out);
            }
            self.commit_epoch_switch();
        }
        let unreadable = std::mem::take(&mut self.unreadable);
        if let (Some(position), GapReason::Retention, Some(to)) = (self.position.as_mut(), reason, to) {
            if position.epoch == epoch {
                if unreadable {
                    skipped_before(position, from, out);
                }
                position.last_seq = position.last_seq.max(to);
            }
        }
        out.push_back(Item::Gap {
            epoch,
            from,
            to,
            reason: reason.into(),
        });
    }
}

/// The client's own `unreadable` gap for the seqs between `position` and `next` (the next seq
/// it can read), if it skipped any.
fn skipped_before(position: &Position, next: u64, out: &mut VecDeque<Item>) {
    // Saturating: at `last_seq` = 2^64−1 nothing can follow, so nothing was skipped.
    let from = position.last_seq.saturating_add(1);
    if next > from {
        out.push_back(Item::Gap {
            epoch: position.epoch.clone(),
            from,
            to: Some(next - 1),
            reason: ItemGapReason::Unreadable,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Every item one event frame produces.
    fn items(tracker: &mut StreamTracker, seq: u64) -> Vec<Item> {
        let mut out = VecDeque::new();
        tracker.event(
            seq,
            "run-1".into(),
            EventKind::AgentThinking,
            json!({"n": seq}),
            &mut out,
        );
        out.into()
    }

    /// The seq one event frame delivered, if any; panics if it produced anything else.
    fn event(tracker: &mut StreamTracker, seq: u64) -> Option<u64> {
        let mut items = items(tracker, seq);
        assert!(items.len() <= 1, "one event produced {items:?}");
        match items.pop()? {
            Item::Event { seq, .. } => Some(seq),
            other => panic!("event produced {other:?}"),
        }
    }

    fn gap(tracker: &mut StreamTracker, epoch: &str, from: u64, to: Option<u64>, reason: GapReason) -> Vec<Item> {
        let mut out = VecDeque::new();
        tracker.gap(epoch.into(), from, to, reason, &mut out);
        out.into()
    }

    fn unreadable(epoch: &str, from: u64, to: Option<u64>) -> Item {
        Item::Gap {
            epoch: epoch.into(),
            from,
            to,
            reason: ItemGapReason::Unreadable,
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
        let gap = gap(&mut tracker, "e1", 3, None, GapReason::Epoch);
        assert_eq!(
            gap,
            vec![Item::Gap {
                epoch: "e1".into(),
                from: 3,
                to: None,
                reason: ItemGapReason::Epoch
            }]
        );
        assert_eq!(
            tracker.position(),
            Some(&Position {
                epoch: "e2".into(),
                last_seq: 0
            })
        );
        // Seq 1 of the new epoch is not a duplicate of seq 1 of the old one.
        match items(&mut tracker, 1).as_slice() {
            [Item::Event { epoch, seq: 1, .. }] => assert_eq!(epoch, "e2"),
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
        gap(&mut tracker, "e1", 2, None, GapReason::Epoch);
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
        gap(&mut tracker, "e1", 2, Some(10), GapReason::Retention);
        assert_eq!(tracker.resume().unwrap().after, 10);
        assert_eq!(event(&mut tracker, 10), None);
        assert_eq!(event(&mut tracker, 11), Some(11));
        // A stale gap never moves us backwards, and one for another epoch does not move us.
        gap(&mut tracker, "e1", 2, Some(5), GapReason::Retention);
        gap(&mut tracker, "e0", 1, Some(50), GapReason::Retention);
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

    #[test]
    fn a_jump_after_an_unreadable_frame_is_handed_over_as_an_unreadable_gap_first() {
        let mut tracker = StreamTracker::new();
        tracker.unreadable_frame(); // before any welcome: nothing to place it in
        tracker.welcome("e1", 0);
        assert_eq!(event(&mut tracker, 1), Some(1));
        tracker.unreadable_frame(); // seq 2 and 3, say, did not decode
        tracker.unreadable_frame();
        let got = items(&mut tracker, 4);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], unreadable("e1", 2, Some(3)));
        assert!(matches!(got[1], Item::Event { seq: 4, .. }), "{got:?}");
        assert_eq!(tracker.resume().unwrap().after, 4);
        // Reported once: a later jump with nothing unreadable in between is the server's.
        assert_eq!(event(&mut tracker, 6), Some(6));
        // An unreadable frame followed by the next seq (it was not an event): nothing invented.
        tracker.unreadable_frame();
        assert_eq!(event(&mut tracker, 7), Some(7));
        assert_eq!(
            event(&mut tracker, 9),
            Some(9),
            "the flag does not outlive the next item"
        );
    }

    #[test]
    fn an_unreadable_frame_is_forgotten_by_a_new_welcome_and_survives_a_duplicate() {
        let mut tracker = StreamTracker::new();
        tracker.welcome("e1", 0);
        assert_eq!(event(&mut tracker, 1), Some(1));
        tracker.unreadable_frame();
        // The connection dies; the next one replays from 2, so the frame comes again.
        tracker.welcome("e1", 5);
        assert_eq!(event(&mut tracker, 3), Some(3), "no stale flag");
        tracker.unreadable_frame();
        assert_eq!(event(&mut tracker, 3), None, "a duplicate");
        assert_eq!(items(&mut tracker, 5)[0], unreadable("e1", 4, Some(4)));
    }

    #[test]
    fn an_unreadable_frame_before_a_retention_gap_reports_the_seqs_in_between() {
        let mut tracker = StreamTracker::new();
        tracker.welcome("e1", 0);
        assert_eq!(event(&mut tracker, 1), Some(1));
        tracker.unreadable_frame();
        let got = gap(&mut tracker, "e1", 5, Some(8), GapReason::Retention);
        assert_eq!(
            got,
            vec![
                unreadable("e1", 2, Some(4)),
                Item::Gap {
                    epoch: "e1".into(),
                    from: 5,
                    to: Some(8),
                    reason: ItemGapReason::Retention
                }
            ]
        );
        assert_eq!(tracker.resume().unwrap().after, 8);
    }

    #[test]
    fn an_unreadable_frame_during_an_epoch_switch_reports_the_old_stream_lost() {
        let mut tracker = StreamTracker::new();
        tracker.welcome("e1", 0);
        assert_eq!(event(&mut tracker, 1), Some(1));
        assert!(tracker.welcome("e2", 3));
        tracker.unreadable_frame(); // perhaps the epoch gap for e1
        let got = items(&mut tracker, 2);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], unreadable("e1", 2, None));
        assert_eq!(got[1], unreadable("e2", 1, Some(1)));
        assert!(
            matches!(&got[2], Item::Event { epoch, seq: 2, .. } if epoch == "e2"),
            "{got:?}"
        );
        // Without an unreadable frame, the switch invents nothing (a server bug stays visible).
        assert!(tracker.welcome("e3", 3));
        assert_eq!(event(&mut tracker, 1), Some(1));
    }

    /// The server's seqs are untrusted input: at the top of u64 the tracker saturates instead
    /// of overflowing (a debug build used to panic, a release build to wrap into a bogus gap).
    #[test]
    fn seqs_at_the_top_of_u64_never_panic() {
        let mut tracker = StreamTracker::new();
        tracker.welcome("e1", u64::MAX);
        tracker.unreadable_frame();
        let got = gap(&mut tracker, "e1", 3, Some(7), GapReason::Retention);
        assert_eq!(got.len(), 1, "nothing can have been skipped after 2^64-1: {got:?}");
        assert!(tracker.welcome("e2", 0));
        tracker.unreadable_frame();
        let got = items(&mut tracker, 1);
        assert_eq!(got[0], unreadable("e1", u64::MAX, None));
        assert!(
            matches!(&got[1], Item::Event { epoch, seq: 1, .. } if epoch == "e2"),
            "{got:?}"
        );
    }

    #[test]
    fn only_a_seq_of_2_pow_64_minus_1_is_out_of_range() {
        let welcome = |head| ServerFrame::Welcome {
            user: "alice".into(),
            connection: "c-1".into(),
            epoch: "e1".into(),
            head,
            recovered: false,
        };
        let event = |seq| ServerFrame::Event {
            seq,
            run: "run-1".into(),
            kind: EventKind::AgentThinking,
            data: json!(null),
        };
        let gap = |from, to, reason| ServerFrame::Gap {
            epoch: "e1".into(),
            from,
            to,
            reason,
        };
        for fine in [
            welcome(SEQ_MAX),
            event(SEQ_MAX),
            gap(1, Some(SEQ_MAX), GapReason::Retention),
            gap(u64::MAX, None, GapReason::Epoch), // after = SEQ_MAX: nothing follows, legitimately
            ServerFrame::Pong { id: u64::MAX },
        ] {
            assert_eq!(seq_out_of_range(&fine), None, "{fine:?}");
        }
        assert_eq!(
            seq_out_of_range(&welcome(u64::MAX)).as_deref(),
            Some("welcome head 18446744073709551615 is beyond every stream (at most 18446744073709551614)")
        );
        assert!(seq_out_of_range(&event(u64::MAX)).is_some());
        assert!(seq_out_of_range(&gap(3, Some(u64::MAX), GapReason::Retention)).is_some());
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
