//! The retained completion log: a sequence-numbered ring trimmed by count and age.

use std::collections::VecDeque;

use completion_core::hub::{LogEvent, Position, ReadBatch, TrimmedGap};
use completion_core::{CompletionPayload, Cursor, EngineError, Retention, ScannerFilter};

/// A position in the memory log: the sequence number of the last event covered.
///
/// `None` is the origin ("from the earliest retained event", never a gap); `Some(0)` is the
/// head of a log that has no events yet. The two must differ: a stream that subscribed to an
/// empty log and then fell behind past retention lost events and must be told so, which
/// `read_after` can only do if its position is not the origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryPosition(pub Option<u64>);

impl MemoryPosition {
    /// The sequence number of the last event covered (0 for the origin).
    pub fn seq(self) -> u64 {
        self.0.unwrap_or(0)
    }

    /// Decodes a cursor of a log whose newest event is `head`; a position past it is
    /// refused (it was made by another instance).
    pub fn decode(cursor: &Cursor, head: MemoryPosition) -> Result<Self, EngineError> {
        let position = cursor.position_for(Self::BACKEND)?;
        let seq: u64 = position
            .parse()
            .map_err(|_| EngineError::invalid("cursor", cursor.as_str(), "the position is not a sequence number"))?;
        if seq > head.seq() {
            return Err(EngineError::invalid("cursor", cursor.as_str(), "points past the end of this backend's log"));
        }
        Ok(MemoryPosition(Some(seq)))
    }
}

impl Position for MemoryPosition {
    const BACKEND: &'static str = "memory";
    type Event = u64;

    fn is_new(&self, event: &u64) -> bool {
        self.0.is_none_or(|seq| *event > seq)
    }

    fn advance(&mut self, event: &u64) {
        self.0 = Some(self.seq().max(*event));
    }

    fn merge(&mut self, other: &Self) {
        // `None` sorts before every `Some`: the origin never wins.
        *self = (*self).max(*other);
    }

    fn to_cursor(&self) -> Cursor {
        Cursor::new(Self::BACKEND, self.seq())
    }
}

/// Events numbered from 1, the oldest trimmed first.
pub struct CompletionLog {
    retention: Retention,
    /// (sequence number, commit time in ms, event); sequence numbers are contiguous.
    events: VecDeque<(u64, u64, CompletionPayload)>,
    /// The sequence number of the newest event ever appended.
    head: u64,
    /// The sequence number of the newest event trimmed away.
    trimmed_to: u64,
}

impl CompletionLog {
    pub fn new(retention: Retention) -> Self {
        Self { retention, events: VecDeque::new(), head: 0, trimmed_to: 0 }
    }

    /// The newest event's position; `Some(0)` (not the origin) while the log is empty.
    pub fn head(&self) -> MemoryPosition {
        MemoryPosition(Some(self.head))
    }

    /// Appends `event`, trims, and returns its sequence number.
    pub fn append(&mut self, event: CompletionPayload, now_ms: u64) -> u64 {
        self.head += 1;
        self.events.push_back((self.head, now_ms, event));
        self.trim(now_ms);
        self.head
    }

    /// Trims to retention; returns how many events it removed.
    pub fn trim(&mut self, now_ms: u64) -> u64 {
        let before = self.events.len();
        let max_events = self.retention.max_events.map_or(usize::MAX, |n| n as usize);
        let min_time = self.retention.max_age().map_or(0, |age| now_ms.saturating_sub(age.as_millis() as u64));
        while let Some(&(seq, at, _)) = self.events.front() {
            if self.events.len() <= max_events && at >= min_time {
                break;
            }
            self.trimmed_to = seq;
            self.events.pop_front();
        }
        (before - self.events.len()) as u64
    }

    /// The position of the newest event trimmed away (`Some(0)`: none yet).
    pub fn trimmed_to(&self) -> MemoryPosition {
        MemoryPosition(Some(self.trimmed_to))
    }

    pub fn read_after(&self, after: MemoryPosition, filter: &ScannerFilter, limit: usize) -> ReadBatch<MemoryPosition> {
        // Only the origin means "from the earliest retained event"; any other position
        // (even `Some(0)`, the head of a then-empty log) missed what was trimmed after it.
        let gap = after.0.filter(|&seq| seq < self.trimmed_to).map(|seq| TrimmedGap {
            resumed_at: MemoryPosition(Some(self.trimmed_to)),
            missed: Some(self.trimmed_to - seq),
        });
        let from = after.seq().max(self.trimmed_to);
        // Contiguous numbering: the event after `from` sits at this index.
        let first = (from - self.trimmed_to) as usize;
        let mut events = Vec::new();
        // Anchored even when nothing is read: from here on, trimming is a gap for the reader.
        let mut scanned_to = MemoryPosition(Some(from));
        for (seq, _, payload) in self.events.range(first.min(self.events.len())..) {
            if events.len() >= limit {
                return ReadBatch { events, scanned_to, gap, more: true };
            }
            scanned_to = MemoryPosition(Some(*seq));
            if filter.matches(payload) {
                events.push(LogEvent { position: *seq, payload: payload.clone() });
            }
        }
        ReadBatch { events, scanned_to, gap, more: false }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every position a stream can stamp on an event (the newest event covered, at or
        /// below the log's head) comes back exactly from its cursor text.
        #[test]
        fn every_reachable_position_round_trips(head in 1..u64::MAX, at in any::<proptest::sample::Index>()) {
            let position = MemoryPosition(Some(1 + at.index(usize::try_from(head).unwrap_or(usize::MAX)) as u64));
            let text = position.to_cursor().to_string();
            let cursor = Cursor::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = MemoryPosition::decode(&cursor, MemoryPosition(Some(head)))
                .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(back, position);
            prop_assert_eq!(back.to_cursor(), position.to_cursor());
        }

        /// Any cursor text decodes or is refused with a reason; it never panics.
        #[test]
        fn any_cursor_text_never_panics(text in "memory:[0-9+-]{0,24}|.{0,40}", head in any::<u64>()) {
            if let Ok(cursor) = Cursor::parse(&text)
                && let Err(e) = MemoryPosition::decode(&cursor, MemoryPosition(Some(head))) {
                    prop_assert!(e.to_string().contains("cursor"), "{}", e);
                }
        }
    }

    #[test]
    fn trim_by_age_counts_what_it_removes_and_moves_the_start() {
        use completion_core::{ExecutionId, Namespace, Outcome};

        let mut log = CompletionLog::new(Retention::age(std::time::Duration::from_secs(1)));
        for (i, at) in [(1, 1_000), (2, 1_500), (3, 5_000)] {
            let id = ExecutionId::new(format!("e{i}")).unwrap();
            log.append(CompletionPayload::new(id, Namespace::new("n").unwrap(), Outcome::Succeeded), at);
        }
        assert_eq!(log.trim(5_000), 0, "appends trimmed what was older than 1 s at 5 000 ms already");
        assert_eq!(log.trimmed_to(), MemoryPosition(Some(2)));
        assert_eq!(log.trim(6_001), 1, "at 6 001 ms the event of 5 000 ms is older than 1 s");
        assert_eq!(log.trimmed_to(), MemoryPosition(Some(3)));
    }
}
