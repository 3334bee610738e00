//! What an instance and its server can tell about themselves: the counters specific to the
//! Valkey backend ([`ValkeyStats`], next to the shared
//! [`CounterSnapshot`](completion_core::CounterSnapshot) of the hub), and the server's view of
//! one key prefix over every instance that uses it ([`ValkeyServerView`]).

use completion_core::EngineError;

use crate::conn::Conn;
use crate::keys::Keyspace;
use crate::library;

completion_core::counter_set! {
    /// Live Valkey-specific counters; read them as a [`ValkeyStats`].
    pub(crate) struct Stats;
    /// Valkey-specific counters of one backend instance, at one moment. Serializes with serde
    /// (field names as here), as [`CounterSnapshot`](completion_core::CounterSnapshot) does.
    #[derive(serde::Serialize)]
    pub struct ValkeyStats {
        /// Times this instance loaded or replaced the function library (at connect, and when a
        /// call found it gone, as after a restart of a server without persistence).
        library_loads,
        /// Channel messages dropped because the feed fell behind the client's message buffer
        /// (each time, the feed caught up from the log instead).
        lagged_messages,
        /// Times a message showed that earlier ones of its partition never arrived (lost while
        /// disconnected, or cut off by the server), so the feed caught up from the log.
        message_holes,
        /// Times the subscription was re-issued after the subscriber connection came back.
        resubscribes,
        /// Times a subscriber connection was opened (the first stream after an idle period).
        feeds_started,
        /// Periodic safety reads of the log made by the feed.
        safety_reads,
    }
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

/// What the server holds for this key prefix (see
/// [`ValkeyBackend::server_view`](crate::ValkeyBackend::server_view)).
pub(crate) async fn server_view(conn: &Conn, keys: &Keyspace) -> Result<ValkeyServerView, EngineError> {
    let library_version = library::installed_version(conn).await?;
    let mut partitions = Vec::with_capacity(usize::from(keys.partitions()));
    for partition in 0..keys.partitions() {
        let key = keys.log(partition);
        let (length, first_id, last_id) = conn.stream_extent(&key).await?;
        partitions.push(PartitionView { partition, key, length, first_id, last_id });
    }
    let sharded = conn.is_cluster();
    let counts = conn.subscribers(&keys.channels(sharded), sharded).await?;
    let channels = counts
        .into_iter()
        .enumerate()
        .map(|(i, subscribers)| ChannelView { partition: sharded.then_some(i as u16), subscribers })
        .collect();
    Ok(ValkeyServerView { library_version, partitions, channels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_serialize_by_field_name() {
        let stats = Stats::default();
        stats.lagged_messages.add(3);
        let json = serde_json::to_value(stats.snapshot()).unwrap();
        assert_eq!(json["lagged_messages"], 3);
        assert_eq!(json.as_object().map(|o| o.len()), Some(6));
    }
}
