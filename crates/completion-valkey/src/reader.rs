//! Reading the partitioned log for the hub: catch-up reads, gap detection, the head.
//!
//! A read asks every partition for up to `limit` entries after the position's id for that
//! partition (`XRANGE (id + COUNT`, inside the library's read function, atomically with the
//! partition's trimming record `trimmed_to`, the newest id ever trimmed away), then merges
//! them by stream id:
//! - when a partition returned a full `limit`, entries of other partitions past its last id
//!   are left for the next read (`more`), so the merge never runs ahead of a partition it
//!   has not fully seen;
//! - the partitions are read one after the other, so entries past the earliest read time
//!   (every read returns the server's time) are left out: an entry committed after that
//!   time may be missing from a partition read earlier, and delivering a later one of
//!   another partition first would break commit order. Such entries were committed after
//!   the read began, so they reach the hub live (or through its next read);
//! - the merge stops after `limit` matching events; `scanned_to` covers, per partition,
//!   only the entries actually examined, never an unreturned match;
//! - filters run here, on each entry's own namespace and tags (no extra round trip);
//! - an entry that does not parse is skipped (examined), logged and counted as malformed.
//!
//! Entry ids are the server's time in microseconds, so they sort in commit order across
//! partitions, and a stream (which delivers in id order) has seen or predates every event
//! with an id below its *watermark*, the newest id its position covers in any partition.
//! A gap is a partition whose `trimmed_to` lies past the watermark: an event committed
//! after the position was trimmed unread. The origin ("from the earliest") never has a gap.
//! The stream resumes after the trimmed ids. The number missed is not known
//! (`missed: None`).
//!
//! Limit: one read holds up to `partitions x limit` entries in memory at once.

use async_trait::async_trait;
use completion_core::hub::{LogEvent, LogReader, ReadBatch, TrimmedGap};
use completion_core::{Counters, Cursor, EngineError, ScannerFilter};
use tracing::Instrument;

use crate::position::{StreamId, ValkeyPosition};
use crate::store::Store;
use crate::wire;

/// What one partition returned, parsed.
pub(crate) struct PartitionRead {
    pub trimmed_to: StreamId,
    pub last_generated: StreamId,
    /// Entries in id order; a malformed one carries the reason.
    pub entries: Vec<(StreamId, Result<LogEvent<ValkeyPosition>, String>)>,
    /// Whether it returned the full count (more may follow).
    pub truncated: bool,
    /// The server's time of the read (µs): everything committed later has a larger id.
    pub read_at_us: u64,
}

impl Store {
    async fn read_one(&self, partition: u16, after: StreamId, limit: usize) -> Result<PartitionRead, EngineError> {
        let raw = self.read_partition(partition, &after.to_string(), limit).await?;
        let id = |text: &str, what: &str| {
            text.parse::<StreamId>().map_err(|e| EngineError::Server {
                backend: crate::client::BACKEND,
                op: "read log",
                message: format!("{what}: {e}"),
            })
        };
        let truncated = limit > 0 && raw.entries.len() >= limit;
        let mut entries = Vec::with_capacity(raw.entries.len());
        for (entry_id, fields) in raw.entries {
            let entry_id = id(&entry_id, "entry id")?;
            entries.push((entry_id, wire::parse_entry(partition, entry_id, &fields)));
        }
        Ok(PartitionRead {
            trimmed_to: id(&raw.trimmed_to, "trimmed_to")?,
            last_generated: id(&raw.last_generated, "last-generated-id")?,
            entries,
            truncated,
            read_at_us: raw.read_at_us,
        })
    }

    /// Every partition read after `after` (all at once: the client pipelines them).
    async fn read_all(&self, after: &ValkeyPosition, limit: usize) -> Result<Vec<PartitionRead>, EngineError> {
        let reads = (0..self.keys.partitions()).map(|p| self.read_one(p, after.get(p), limit));
        futures_util::future::join_all(reads).await.into_iter().collect()
    }

    /// The log's head: every partition's last generated id. Read after the subscription is
    /// live, it is where the hub starts.
    pub(crate) async fn head(&self) -> Result<ValkeyPosition, EngineError> {
        let reads = self.read_all(&ValkeyPosition::default(), 0).await?;
        Ok(ValkeyPosition::from_ids(reads.iter().map(|r| r.last_generated).collect()))
    }
}

/// Merges per-partition reads into one batch (see the module docs).
pub(crate) fn merge(
    after: &ValkeyPosition,
    reads: Vec<PartitionRead>,
    filter: &ScannerFilter,
    limit: usize,
    counters: &Counters,
) -> ReadBatch<ValkeyPosition> {
    let anchored = !after.is_origin();
    let watermark = after.watermark();
    let mut gap = false;
    // Nothing is left at or before a partition's `trimmed_to`: start past it.
    let mut scanned: Vec<StreamId> =
        reads.iter().enumerate().map(|(p, r)| after.get(p as u16).max(r.trimmed_to)).collect();
    for read in &reads {
        // An entry trimmed past the watermark was committed after everything this position
        // covers, and never read: a gap. At or before it, the entry was read or predates
        // the stream (streams deliver in id order).
        if anchored && read.trimmed_to > watermark {
            gap = true;
        }
    }
    let gap_at = scanned.clone();
    // Entries past the last id of a partition that may hold more wait for the next read.
    let horizon = reads.iter().filter(|r| r.truncated).filter_map(|r| r.entries.last().map(|(id, _)| *id)).min();
    let mut more = horizon.is_some();
    // The partitions were read one after the other, not at one instant: an entry committed
    // after the earliest read may be missing from that partition's answer while a later one
    // shows up in another's. Entries past the earliest read time wait (they are committed
    // after this read began, so their messages reach the hub after it too).
    let horizon = match reads.iter().map(|r| r.read_at_us).min() {
        Some(at) => {
            let consistent = StreamId { ms: at, seq: u64::MAX };
            Some(horizon.map_or(consistent, |h| h.min(consistent)))
        }
        None => horizon,
    };
    let mut all: Vec<(StreamId, u16, Result<LogEvent<ValkeyPosition>, String>)> = Vec::new();
    for (p, read) in reads.into_iter().enumerate() {
        for (id, entry) in read.entries {
            if horizon.is_none_or(|h| id <= h) && id > scanned[p] {
                all.push((id, p as u16, entry));
            }
        }
    }
    all.sort_by_key(|(id, p, _)| (*id, *p));
    let mut events = Vec::new();
    for (id, p, entry) in all {
        if events.len() >= limit {
            more = true;
            break;
        }
        scanned[usize::from(p)] = id;
        match entry {
            Ok(event) if filter.matches(&event.payload) => events.push(event),
            Ok(_) => {}
            Err(reason) => {
                Counters::bump(&counters.malformed_messages);
                tracing::warn!(backend = "valkey", partition = p, entry = %id, %reason, "skipping a malformed log entry");
            }
        }
    }
    let gap = gap.then(|| TrimmedGap { resumed_at: ValkeyPosition::from_ids(gap_at), missed: None });
    ReadBatch { events, scanned_to: ValkeyPosition::from_ids(scanned), gap, more }
}

#[async_trait]
impl LogReader<ValkeyPosition> for Store {
    fn decode_cursor(&self, cursor: &Cursor) -> Result<ValkeyPosition, EngineError> {
        ValkeyPosition::decode(cursor, self.keys.partitions())
    }

    async fn read_after(
        &self,
        after: &ValkeyPosition,
        filter: &ScannerFilter,
        limit: usize,
    ) -> Result<ReadBatch<ValkeyPosition>, EngineError> {
        let limit = limit.max(1);
        let span = tracing::debug_span!("read_log", backend = "valkey", limit);
        let reads = self.read_all(after, limit).instrument(span).await?;
        Ok(merge(after, reads, filter, limit, &self.counters))
    }
}

#[cfg(test)]
mod tests {
    use completion_core::{CompletionPayload, ExecutionId, Namespace, Outcome, Tags};

    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn event(p: u16, ms: u64, ns: &str) -> (StreamId, Result<LogEvent<ValkeyPosition>, String>) {
        let payload = CompletionPayload::new(
            ExecutionId::new(format!("e{ms}")).unwrap(),
            None,
            Namespace::new(ns).unwrap(),
            Outcome::Succeeded,
            Tags::new(),
            ms,
            Cursor::new("valkey", "origin"),
        );
        (id(ms), Ok(LogEvent { position: (p, id(ms)), payload }))
    }

    fn read(entries: Vec<(StreamId, Result<LogEvent<ValkeyPosition>, String>)>, limit: usize) -> PartitionRead {
        let truncated = entries.len() >= limit;
        PartitionRead {
            trimmed_to: StreamId::ZERO,
            last_generated: StreamId::ZERO,
            entries,
            truncated,
            read_at_us: u64::MAX,
        }
    }

    fn ms_of(batch: &ReadBatch<ValkeyPosition>) -> Vec<u64> {
        batch.events.iter().map(|e| e.position.1.ms).collect()
    }

    #[test]
    fn merges_in_id_order_without_running_ahead_of_a_full_partition() {
        let counters = Counters::default();
        // Partition 0 returned its full 2: partition 1's entry 9 must wait.
        let reads =
            vec![read(vec![event(0, 1, "a"), event(0, 5, "a")], 2), read(vec![event(1, 3, "a"), event(1, 9, "a")], 3)];
        let batch = merge(&ValkeyPosition::default(), reads, &ScannerFilter::new(), 10, &counters);
        assert_eq!(ms_of(&batch), [1, 3, 5]);
        assert!(batch.more);
        assert_eq!(batch.scanned_to.get(0), id(5));
        assert_eq!(batch.scanned_to.get(1), id(3));
    }

    #[test]
    fn never_merges_past_the_earliest_read_time() {
        let counters = Counters::default();
        // Partition 0 was read at 4: an entry of it committed at 5 may be missing, so
        // partition 1's entry 6 waits, though it was read.
        let mut early = read(vec![event(0, 1, "a")], 10);
        early.read_at_us = 4;
        let mut late = read(vec![event(1, 2, "a"), event(1, 6, "a")], 10);
        late.read_at_us = 7;
        let batch = merge(&ValkeyPosition::default(), vec![early, late], &ScannerFilter::new(), 10, &counters);
        assert_eq!(ms_of(&batch), [1, 2]);
        assert_eq!(batch.scanned_to.get(1), id(2));
        assert!(!batch.more, "entry 6 comes live or with the next read");
    }

    #[test]
    fn stops_at_the_limit_and_never_scans_past_an_unreturned_match() {
        let counters = Counters::default();
        let ns_b = ScannerFilter::new().with_namespace(Namespace::new("b").unwrap());
        let reads = vec![
            read(vec![event(0, 1, "a"), event(0, 2, "b"), event(0, 6, "b")], 10),
            read(vec![event(1, 3, "b"), event(1, 4, "a")], 10),
        ];
        let batch = merge(&ValkeyPosition::default(), reads, &ns_b, 2, &counters);
        assert_eq!(ms_of(&batch), [2, 3]);
        assert!(batch.more);
        // Entry 4 was not examined (the limit was reached first), nor 6.
        assert_eq!(batch.scanned_to.get(0), id(2));
        assert_eq!(batch.scanned_to.get(1), id(3));
    }

    #[test]
    fn reports_a_gap_only_past_the_watermark_of_an_anchored_position() {
        let counters = Counters::default();
        let trimmed = |entries, deleted| {
            let mut r = read(entries, 10);
            r.trimmed_to = id(deleted);
            r
        };
        // Partition 1 lost entries up to 15, after the position's watermark 10: a gap.
        let after = ValkeyPosition::from_ids(vec![StreamId::ZERO, id(10)]);
        let batch = merge(
            &after,
            vec![trimmed(vec![event(0, 30, "a")], 25), trimmed(vec![event(1, 20, "a")], 15)],
            &ScannerFilter::new(),
            10,
            &counters,
        );
        let gap = batch.gap.as_ref().expect("entries after the watermark were trimmed");
        assert_eq!((gap.resumed_at.get(0), gap.resumed_at.get(1)), (id(25), id(15)));
        assert_eq!(ms_of(&batch), [20, 30]);
        assert!(!batch.more);
        // Deleted entries at or before the watermark predate the stream: no gap.
        let after = ValkeyPosition::from_ids(vec![StreamId::ZERO, id(40)]);
        let batch = merge(
            &after,
            vec![trimmed(vec![event(0, 50, "a")], 25), trimmed(vec![], 15)],
            &ScannerFilter::new(),
            10,
            &counters,
        );
        assert!(batch.gap.is_none());
        assert_eq!(ms_of(&batch), [50]);
        // The origin never has a gap, but its scan starts past what was deleted.
        let batch = merge(
            &ValkeyPosition::default(),
            vec![trimmed(vec![event(0, 30, "a")], 25)],
            &ScannerFilter::new(),
            10,
            &counters,
        );
        assert!(batch.gap.is_none());
        assert_eq!(batch.scanned_to.get(0), id(30));
        let batch = merge(&ValkeyPosition::default(), vec![trimmed(vec![], 25)], &ScannerFilter::new(), 10, &counters);
        assert!(!batch.scanned_to.is_origin() && batch.scanned_to.get(0) == id(25));
        // The head of an empty log is anchored: trimming after it is a gap.
        let head = ValkeyPosition::from_ids(vec![StreamId::ZERO]);
        assert!(merge(&head, vec![trimmed(vec![], 3)], &ScannerFilter::new(), 10, &counters).gap.is_some());
    }

    #[test]
    fn malformed_entries_are_examined_skipped_and_counted() {
        let counters = Counters::default();
        let reads = vec![read(vec![(id(1), Err("bad".into())), event(0, 2, "a")], 10)];
        let batch = merge(&ValkeyPosition::default(), reads, &ScannerFilter::new(), 10, &counters);
        assert_eq!(ms_of(&batch), [2]);
        assert_eq!(counters.snapshot().malformed_messages, 1);
    }
}
