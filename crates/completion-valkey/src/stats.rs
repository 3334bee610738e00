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

/// Valkey-specific counters of one backend instance, at one moment. Serializes with serde
/// (field names as here), as [`CounterSnapshot`](completion_core::CounterSnapshot) does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
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

/// What the server holds for one key prefix, whichever instances wrote it, from
/// [`ValkeyBackend::server_view`](crate::ValkeyBackend::server_view).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ValkeyServerView {
    /// The function library's version on the server (on a cluster, the first primary's);
    /// `None`: no library loaded.
    pub library_version: Option<i64>,
    /// Each partition's log, in partition order.
    pub partitions: Vec<PartitionView>,
    /// Subscriber connections on the completion channel: one entry on a standalone server
    /// (`partition` is `None`), one per partition's sharded channel on a cluster.
    pub channels: Vec<ChannelView>,
}

impl ValkeyServerView {
    /// Entries in every partition's log.
    pub fn log_entries(&self) -> u64 {
        self.partitions.iter().map(|p| p.length).sum()
    }

    /// Subscriber connections of live instances: each instance's subscriber listens on every
    /// channel of the prefix, so this is the largest count over the channels (other clients
    /// subscribed to a channel of ours count too).
    pub fn subscribers(&self) -> u64 {
        self.channels.iter().map(|c| c.subscribers).max().unwrap_or(0)
    }
}

/// One partition's log stream (`<prefix>:{<prefix>:<p>}:log`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionView {
    /// The partition, 0 to `partitions - 1`.
    pub partition: u16,
    /// The stream's key.
    pub key: String,
    /// Entries retained (`XLEN`).
    pub length: u64,
    /// The oldest retained entry's id, `None` when the log is empty.
    pub first_id: Option<String>,
    /// The newest entry's id, `None` when the log is empty.
    pub last_id: Option<String>,
}

/// Subscribers of one channel of the prefix (`PUBSUB NUMSUB` / `PUBSUB SHARDNUMSUB`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelView {
    /// The partition whose sharded channel this is (cluster), or `None` for the one channel
    /// of a standalone server.
    pub partition: Option<u16>,
    /// Client connections subscribed to it now.
    pub subscribers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_serialize_by_field_name() {
        let stats = Stats::default();
        Stats::add(&stats.lagged_messages, 3);
        let json = serde_json::to_value(stats.snapshot()).unwrap();
        assert_eq!(json["lagged_messages"], 3);
        assert_eq!(json.as_object().map(|o| o.len()), Some(6));
    }
}
