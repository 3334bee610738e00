//! Counters every backend keeps, readable at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one backend instance. Backends bump them; users read a
/// [`CounterSnapshot`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Times a server connection of the subscription side was re-established.
    pub reconnects: AtomicU64,
    /// Reads of the completion log made to catch a stream (or the whole instance) up.
    pub catch_up_reads: AtomicU64,
    /// Gaps met: positions older than retention.
    pub gaps: AtomicU64,
    /// Events that a stream's filter turned away.
    pub filtered_out: AtomicU64,
    /// Messages on the completion channel that did not parse and were skipped.
    pub malformed_messages: AtomicU64,
    /// Times a stream's buffer was full and the stream fell back to reading the log.
    pub buffer_overflows: AtomicU64,
    /// The most events any one stream's buffer held at once.
    pub buffer_high_water: AtomicU64,
    /// Completions handed to streams (after filtering), all streams summed.
    pub delivered: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Raises the buffer high-water mark to `len` if it is higher.
    pub fn note_buffer_len(&self, len: usize) {
        self.buffer_high_water.fetch_max(len as u64, Ordering::Relaxed);
    }

    /// A copy of the current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            reconnects: get(&self.reconnects),
            catch_up_reads: get(&self.catch_up_reads),
            gaps: get(&self.gaps),
            filtered_out: get(&self.filtered_out),
            malformed_messages: get(&self.malformed_messages),
            buffer_overflows: get(&self.buffer_overflows),
            buffer_high_water: get(&self.buffer_high_water),
            delivered: get(&self.delivered),
            active_streams: 0,
        }
    }
}

/// The counters of one backend instance at one moment. See [`Counters`] for each field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
#[allow(missing_docs)]
pub struct CounterSnapshot {
    pub reconnects: u64,
    pub catch_up_reads: u64,
    pub gaps: u64,
    pub filtered_out: u64,
    pub malformed_messages: u64,
    pub buffer_overflows: u64,
    pub buffer_high_water: u64,
    pub delivered: u64,
    /// Streams open right now.
    pub active_streams: u64,
}
