//! Counters specific to the PostgreSQL backend, next to the shared
//! [`CounterSnapshot`](completion_core::CounterSnapshot) of the hub.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one instance.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub notifications: AtomicU64,
    pub listener_failures: AtomicU64,
    pub retries: AtomicU64,
    pub held_back_events: AtomicU64,
    pub held_back_reads: AtomicU64,
    pub prune_runs: AtomicU64,
    pub pruned_events: AtomicU64,
    pub in_flight_rechecks: AtomicU64,
    pub held_back_checks: AtomicU64,
    pub delivered_from_notification: AtomicU64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> PostgresStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PostgresStats {
            notifications: get(&self.notifications),
            listener_failures: get(&self.listener_failures),
            retries: get(&self.retries),
            held_back_events: get(&self.held_back_events),
            held_back_reads: get(&self.held_back_reads),
            prune_runs: get(&self.prune_runs),
            pruned_events: get(&self.pruned_events),
            in_flight_rechecks: get(&self.in_flight_rechecks),
            held_back_checks: get(&self.held_back_checks),
            delivered_from_notification: get(&self.delivered_from_notification),
        }
    }
}

/// PostgreSQL-specific counters of one backend instance, from
/// [`PostgresBackend::stats`](crate::PostgresBackend::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresStats {
    /// Notifications received on the LISTEN connection (before coalescing).
    pub notifications: u64,
    /// LISTEN connections lost, and attempts to re-open one that failed.
    pub listener_failures: u64,
    /// Pooled operations retried because their connection was closed or terminated.
    pub retries: u64,
    /// Committed events the last log read saw above the final ticket, waiting for a writer
    /// that appended before them and is still in flight (up to the read's limit). Non-zero
    /// for long means a long writing transaction delays delivery.
    pub held_back_events: u64,
    /// Log reads that found events held back above the final ticket.
    pub held_back_reads: u64,
    /// Prune runs (called or periodic) that completed.
    pub prune_runs: u64,
    /// Events deleted by prune runs of this instance.
    pub pruned_events: u64,
    /// Feed reads that found terminal writes in flight (with coalesced NOTIFYs) and so
    /// scheduled another read `in_flight_recheck` later.
    pub in_flight_rechecks: u64,
    /// Final-ticket checks the feed made while a read held committed events back (on a
    /// backoff from `in_flight_recheck` to 32 times that), to read again as soon as the
    /// writer holding them back ended.
    pub held_back_checks: u64,
    /// Events the feed delivered straight from a notification's payload, before its log
    /// read (schema version 4); the log reads are `CounterSnapshot::catch_up_reads`.
    pub delivered_from_notification: u64,
}
