//! One user's retained event stream: contiguous seqs ending at `head`, oldest first.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// What one retained event costs beside its frame and key: its slot in the stream's deque,
/// the shared frame's allocation header and the key's entry in the key map, rounded up. It is
/// counted against `retention_bytes_max` with the frame, so that limit bounds memory, not only
/// frame bytes.
pub const RETAINED_EVENT_OVERHEAD_BYTES: u64 = 160;

/// The bytes `retention_bytes_max` counts for one event: its frame, the bookkeeping, and its
/// idempotency key twice (kept with the event and in the key map).
pub fn retained_cost_bytes(frame_bytes: u64, idempotency_key: Option<&str>) -> u64 {
    // Saturating: `HubConfig::validate` computes this for `event_bytes_max`, which an operator
    // may set near u64::MAX to mean "no limit", and must see the overflow, not a wrapped sum.
    frame_bytes
        .saturating_add(RETAINED_EVENT_OVERHEAD_BYTES)
        .saturating_add(2 * idempotency_key.map_or(0, |key| key.len() as u64))
}

/// Slots a stream's deque keeps however few events it holds: below this, shrinking would cost
/// a reallocation for a few hundred bytes.
pub const EVENT_SLOTS_KEPT_MIN: usize = 16;

/// One retained event, encoded once and shared by every connection of the user.
pub(super) struct RetainedEvent {
    /// Global publish order across all users, for age and byte eviction.
    pub order: u64,
    pub published_at_ms: u64,
    pub frame: Arc<str>,
    pub idempotency_key: Option<Box<str>>,
}

impl RetainedEvent {
    /// What this event counts against `retention_bytes_max`.
    pub fn cost_bytes(&self) -> u64 {
        retained_cost_bytes(self.frame.len() as u64, self.idempotency_key.as_deref())
    }
}

pub(super) struct UserStream {
    pub epoch: String,
    /// Seq of the newest event ever published in this epoch (0 before the first).
    pub head: u64,
    events: VecDeque<RetainedEvent>,
    /// Sum of the retained events' `cost_bytes`.
    bytes: u64,
    /// Bounded by `connections_per_user_max`.
    pub connections: Vec<super::ConnectionId>,
    /// Idempotency key → seq, for retained events only (bounded by retention).
    keys: BTreeMap<Box<str>, u64>,
}

impl UserStream {
    /// A stream of `epoch` whose events up to `head` are all gone (`head` 0 for a new epoch).
    pub fn new(epoch: String, head: u64) -> UserStream {
        UserStream {
            epoch,
            head,
            events: VecDeque::new(),
            bytes: 0,
            connections: Vec::new(),
            keys: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Seq of the oldest retained event; `head + 1` when nothing is retained.
    pub fn first_seq(&self) -> u64 {
        self.head + 1 - self.events.len() as u64
    }

    pub fn front(&self) -> Option<&RetainedEvent> {
        self.events.front()
    }

    pub fn get(&self, seq: u64) -> Option<&RetainedEvent> {
        let index = seq.checked_sub(self.first_seq())?;
        self.events.get(usize::try_from(index).ok()?)
    }

    pub fn seq_for_key(&self, key: &str) -> Option<u64> {
        self.keys.get(key).copied()
    }

    /// Appends an event and returns its seq (`head + 1`).
    pub fn push(&mut self, order: u64, published_at_ms: u64, frame: Arc<str>, idempotency_key: Option<&str>) -> u64 {
        self.head += 1;
        let idempotency_key: Option<Box<str>> = idempotency_key.map(Box::from);
        if let Some(key) = &idempotency_key {
            self.keys.insert(key.clone(), self.head);
        }
        let event = RetainedEvent {
            order,
            published_at_ms,
            frame,
            idempotency_key,
        };
        self.bytes += event.cost_bytes();
        self.events.push_back(event);
        debug_assert_eq!(self.first_seq() + self.events.len() as u64 - 1, self.head);
        self.head
    }

    pub fn pop_front(&mut self) -> Option<RetainedEvent> {
        let event = self.events.pop_front()?;
        self.bytes -= event.cost_bytes();
        if let Some(key) = &event.idempotency_key {
            self.keys.remove(key);
        }
        self.give_back_slots();
        Some(event)
    }

    /// Frees the deque's empty slots once at most a quarter of them hold events, down to twice
    /// the events (amortised: it takes as many pops again before the next shrink). A deque
    /// never shrinks by itself, so a stream that once held `retention_events_max` events and
    /// now holds one would keep every slot (48 bytes each) while its user stays connected,
    /// memory that `retention_bytes_max` does not count. With this, the empty slots stay below
    /// three per retained event plus [`EVENT_SLOTS_KEPT_MIN`].
    fn give_back_slots(&mut self) {
        let capacity = self.events.capacity();
        if capacity > EVENT_SLOTS_KEPT_MIN && self.events.len() <= capacity / 4 {
            self.events.shrink_to((2 * self.events.len()).max(EVENT_SLOTS_KEPT_MIN));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the shrink, a stream that once held 1,000 events keeps 1,024 slots (48 KiB)
    /// with one event left; with it, empty slots stay within a small multiple of the events.
    #[test]
    fn a_drained_stream_gives_its_slots_back() {
        let mut stream = UserStream::new("e".into(), 0);
        let frame: Arc<str> = Arc::from("{}");
        for order in 0..1_000 {
            stream.push(order, 0, frame.clone(), None);
        }
        assert!(stream.events.capacity() >= 1_000);
        while stream.len() > 1 {
            stream.pop_front();
            let bound = 4 * stream.len().max(EVENT_SLOTS_KEPT_MIN) + 3;
            assert!(
                stream.events.capacity() <= bound,
                "{} slots for {} events",
                stream.events.capacity(),
                stream.len()
            );
        }
        assert!(stream.events.capacity() <= 4 * EVENT_SLOTS_KEPT_MIN);
        assert_eq!(stream.first_seq(), 1_000, "shrinking keeps the events");
        assert_eq!(stream.get(1_000).map(|event| event.order), Some(999));
    }
}
