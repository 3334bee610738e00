//! Counters of this backend beyond the shared [`CounterSnapshot`](completion_core::CounterSnapshot).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live Valkey-specific counters; read them as a [`ValkeyStats`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub library_loads: AtomicU64,
    pub lagged_messages: AtomicU64,
    pub message_holes: AtomicU64,
    pub resubscribes: AtomicU64,
    pub feeds_started: AtomicU64,
    pub safety_reads: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ValkeyStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ValkeyStats {
            library_loads: get(&self.library_loads),
            lagged_messages: get(&self.lagged_messages),
            message_holes: get(&self.message_holes),
            resubscribes: get(&self.resubscribes),
            feeds_started: get(&self.feeds_started),
            safety_reads: get(&self.safety_reads),
        }
    }
}

/// Valkey-specific counters of one backend instance, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ValkeyStats {
    /// Times this instance loaded or replaced the function library (at connect, and when a
    /// call found it gone, as after a restart of a server without persistence).
    pub library_loads: u64,
    /// Channel messages dropped because the feed fell behind the client's message buffer
    /// (each time, the feed caught up from the log instead).
    pub lagged_messages: u64,
    /// Times a message showed that earlier ones of its partition never arrived (lost while
    /// disconnected, or cut off by the server), so the feed caught up from the log.
    pub message_holes: u64,
    /// Times the subscription was re-issued after the subscriber connection came back.
    pub resubscribes: u64,
    /// Times a subscriber connection was opened (the first stream after an idle period).
    pub feeds_started: u64,
    /// Periodic safety reads of the log made by the feed.
    pub safety_reads: u64,
}
