//! The merge of one read's per-partition pages into one batch of the hub: a k-way merge of
//! truncated pages.
//!
//! - A page is about `1.5 x limit / partitions` entries ([`page_size`]), not `limit`: with
//!   events spread over the partitions, the pages together hold about 1.5 times what one
//!   read delivers (the slack covers the uneven spread: the merge may only go as far as the
//!   shortest full page reaches), where asking each partition for `limit` fetched and
//!   parsed `partitions` times as much (and the next read fetched most of it again).
//! - When a partition returned a full page, entries of other partitions past its last id
//!   are left for later (`more`), so the merge never runs ahead of a partition it has not
//!   fully seen. When that stops the merge short of `limit` (events crowd into a few
//!   partitions), the reader asks the full partitions for their next page
//!   ([`PartitionRead::append`]) and merges again ([`Plan::wants_more`]).
//! - The partitions are read one after the other, so entries past the earliest read time
//!   (every read returns the server's time) are left out: an entry committed after that
//!   time may be missing from a partition read earlier, and delivering a later one of
//!   another partition first would break commit order. Such entries were committed after
//!   the read began, so they reach the hub live (or through its next read).
//! - The merge stops after `limit` matching events; `scanned_to` covers, per partition,
//!   only the entries actually examined, never an unreturned match.
//! - Filters run here, on each entry's own namespace and tags; an entry that does not parse
//!   is skipped (examined), logged and counted as malformed.
//!
//! Entry ids are the server's time in microseconds, so they sort in commit order across
//! partitions, and a stream (which delivers in id order) has seen or predates every event
//! with an id below its *watermark*, the newest id its position covers in any partition.
//! A gap is a partition whose `trimmed_to` lies past the watermark: an event committed
//! after the position was trimmed unread. The origin ("from the earliest") never has a gap.
//! The stream resumes after the newest trimmed id of any partition, in every partition (so
//! that its watermark stays true; retained entries below it count as part of the gap). The
//! number missed is not known (`missed: None`). A next page whose partition was trimmed
//! past the page before it is thrown away (the partition's entries stop there for this
//! read): the next read, from the stream's new position, reports that gap.

use completion_core::ScannerFilter;
use completion_core::hub::{Counters, LogEvent, ReadBatch, TrimmedGap};

use crate::position::{BACKEND, StreamId, ValkeyPosition};

/// What one partition returned, parsed.
pub(crate) struct PartitionRead {
    /// The newest id trimmed away, read before the entries.
    pub trimmed_before: StreamId,
    /// The newest id trimmed away, read after the entries: nothing at or before it is left.
    pub trimmed_to: StreamId,
    pub last_generated: StreamId,
    /// Entries in id order; a malformed one carries the reason.
    pub entries: Vec<(StreamId, Result<LogEvent<ValkeyPosition>, String>)>,
    /// Whether it returned the full count (more may follow).
    pub truncated: bool,
    /// The server's time of the read (µs): everything committed later has a larger id.
    pub read_at_us: u64,
    /// A next page was dropped (trimmed in between): asking again in this read cannot help.
    pub stalled: bool,
}

impl PartitionRead {
    /// Appends `next`, the page read after this one's last entry `last`. If the partition
    /// was trimmed past `last` in between, entries may be missing between the two pages:
    /// `next` is dropped and this read stays truncated at `last` (the next read from the
    /// stream's position reports the gap).
    pub(crate) fn append(&mut self, next: PartitionRead, last: StreamId) {
        if next.trimmed_to > last {
            tracing::debug!(backend = BACKEND, %last, trimmed_to = %next.trimmed_to, "trimmed between two pages");
            self.stalled = true;
            return;
        }
        self.entries.extend(next.entries);
        self.truncated = next.truncated;
        self.read_at_us = next.read_at_us;
        self.last_generated = self.last_generated.max(next.last_generated);
    }
}

/// Most extra pages one read asks of its full partitions (see [`crate::log`]).
pub(crate) const MAX_REFILLS: usize = 4;
/// Fewest entries asked of one partition per read, so that small limits over many
/// partitions do not cost a round trip per handful of events.
const MIN_PAGE: usize = 64;

/// Entries asked of each of `partitions` partitions for a read of `limit` events: 1.5
/// times an even share, at least [`MIN_PAGE`], never more than `limit` (no partition can
/// give a read more than that).
///
/// Why 1.5: with events spread at random, partition `p`'s `k`-th entry lies about
/// `k x partitions` entries into the merged log, give or take `sqrt(k x partitions)`; the
/// merge reaches the earliest of the 16 pages' ends, about two of those deviations short of
/// the mean. At 1 024 over 16 partitions, pages of 96 reach ~1 270 entries: the limit is
/// met in one round trip while fetching 1.5x, not 2x (or 16x, with pages of `limit`).
pub(crate) fn page_size(limit: usize, partitions: u16) -> usize {
    let share = limit.div_ceil(usize::from(partitions.max(1)));
    (share + share / 2).max(MIN_PAGE).min(limit).max(1)
}

/// What a merge of per-partition reads delivers, before the events are moved out of the
/// reads: computed by [`plan`], turned into a batch by [`Plan::take`]. Kept apart so that a
/// read can look at a merge, fetch more and merge again without copying events.
pub(crate) struct Plan {
    /// `(partition, index in its entries)` of the events to deliver, in delivery order.
    picks: Vec<(u16, usize)>,
    /// `(partition, id, reason)` of every malformed entry examined.
    malformed: Vec<(u16, StreamId, String)>,
    scanned: Vec<StreamId>,
    gap_at: Option<Vec<StreamId>>,
    more: bool,
}

impl Plan {
    /// Whether the merge stopped short of `limit` because a full page bounds it, so that
    /// reading the full partitions on would let it deliver more.
    pub(crate) fn wants_more(&self, limit: usize) -> bool {
        self.more && self.picks.len() < limit
    }

    /// Moves the picked events out of `reads` (the reads the plan was made from), and
    /// logs and counts the malformed entries examined.
    pub(crate) fn take(self, mut reads: Vec<PartitionRead>, counters: &Counters) -> ReadBatch<ValkeyPosition> {
        for (partition, entry, reason) in &self.malformed {
            Counters::bump(&counters.malformed_messages);
            tracing::warn!(backend = BACKEND, partition, %entry, %reason, "skipping a malformed log entry");
        }
        let mut events = Vec::with_capacity(self.picks.len());
        for (p, i) in self.picks {
            // Each pick is a distinct parsed entry: taken once, then left as a blank error.
            if let Ok(event) = std::mem::replace(&mut reads[usize::from(p)].entries[i].1, Err(String::new())) {
                events.push(event);
            }
        }
        let gap = self.gap_at.map(|at| TrimmedGap { resumed_at: ValkeyPosition::from_ids(at), missed: None });
        ReadBatch { events, scanned_to: ValkeyPosition::from_ids(self.scanned), gap, more: self.more }
    }
}

/// Merges per-partition reads (see the module docs): which entries to deliver, how far the
/// merge looked, whether there is a gap and whether more may follow.
pub(crate) fn plan(after: &ValkeyPosition, reads: &[PartitionRead], filter: &ScannerFilter, limit: usize) -> Plan {
    let anchored = !after.is_origin();
    let watermark = after.watermark();
    // Nothing is left at or before a partition's `trimmed_to`: start past it.
    let mut scanned: Vec<StreamId> =
        reads.iter().enumerate().map(|(p, r)| after.get(p as u16).max(r.trimmed_to)).collect();
    // An entry trimmed past the watermark was committed after everything this position
    // covers, and never read: a gap. At or before it, the entry was read or predates the
    // stream (streams deliver in id order).
    let gap = anchored && reads.iter().any(|r| r.trimmed_to > watermark);
    if gap {
        // Resume every partition past the newest trimmed id of any: the stream's position
        // then has a watermark that is true again (every entry at or below it was delivered
        // or is in this gap). Resuming each partition only past its own trimmed id would
        // leave the position's largest id ahead of entries of other partitions not examined
        // yet, and a later trim of those would pass for "already seen": a silent loss (the
        // conformance test `trimming_racing_a_reader_loses_nothing_silently` guards this).
        // Retained entries below that id count as part of the gap.
        let cut = reads.iter().map(|r| r.trimmed_to).max().unwrap_or_default();
        for s in &mut scanned {
            *s = (*s).max(cut);
        }
    }
    let gap_at = gap.then(|| scanned.clone());
    // Entries past the last id of a partition that may hold more wait for the next read.
    let horizon = reads.iter().filter(|r| r.truncated).filter_map(|r| r.entries.last().map(|(id, _)| *id)).min();
    let mut more = horizon.is_some();
    // The partitions were read one after the other, not at one instant: an entry committed
    // after the earliest read may be missing from that partition's answer while a later one
    // shows up in another's. Entries past the earliest read time wait (they are committed
    // after this read began, so their messages reach the hub after it too).
    let horizon = match reads.iter().map(|r| r.read_at_us).min() {
        Some(at) => {
            let consistent = StreamId { micros: at, seq: u64::MAX };
            Some(horizon.map_or(consistent, |h| h.min(consistent)))
        }
        None => horizon,
    };
    let mut all: Vec<(StreamId, u16, usize)> = Vec::new();
    for (p, read) in reads.iter().enumerate() {
        for (i, (id, _)) in read.entries.iter().enumerate() {
            if horizon.is_none_or(|h| *id <= h) && *id > scanned[p] {
                all.push((*id, p as u16, i));
            }
        }
    }
    all.sort_unstable_by_key(|(id, p, _)| (*id, *p));
    let (mut picks, mut malformed) = (Vec::new(), Vec::new());
    for (id, p, i) in all {
        if picks.len() >= limit {
            more = true;
            break;
        }
        scanned[usize::from(p)] = id;
        match &reads[usize::from(p)].entries[i].1 {
            Ok(event) if filter.matches(&event.payload) => picks.push((p, i)),
            Ok(_) => {}
            Err(reason) => malformed.push((p, id, reason.clone())),
        }
    }
    Plan { picks, malformed, scanned, gap_at, more }
}

/// [`plan`] and [`Plan::take`] in one: merges per-partition reads into one batch.
#[cfg(test)]
pub(crate) fn merge(
    after: &ValkeyPosition,
    reads: Vec<PartitionRead>,
    filter: &ScannerFilter,
    limit: usize,
    counters: &Counters,
) -> ReadBatch<ValkeyPosition> {
    plan(after, &reads, filter, limit).take(reads, counters)
}

#[cfg(test)]
mod tests {
    use completion_core::{CompletionPayload, ExecutionId, Namespace, Outcome, Tags};

    use super::*;
    use crate::position::EventPosition;

    fn id(micros: u64) -> StreamId {
        StreamId { micros, seq: 0 }
    }

    fn event(p: u16, ms: u64, ns: &str) -> (StreamId, Result<LogEvent<ValkeyPosition>, String>) {
        let payload = CompletionPayload::new(
            ExecutionId::new(format!("e{ms}")).unwrap(),
            Namespace::new(ns).unwrap(),
            Outcome::Succeeded,
        )
        .with_tags(Tags::new())
        .with_completed_at_ms(ms);
        (id(ms), Ok(LogEvent { position: EventPosition { partition: p, id: id(ms), partitions: 16 }, payload }))
    }

    fn read(entries: Vec<(StreamId, Result<LogEvent<ValkeyPosition>, String>)>, limit: usize) -> PartitionRead {
        let truncated = entries.len() >= limit;
        PartitionRead {
            trimmed_before: StreamId::ZERO,
            trimmed_to: StreamId::ZERO,
            last_generated: StreamId::ZERO,
            entries,
            truncated,
            read_at_us: u64::MAX,
            stalled: false,
        }
    }

    fn micros_of(batch: &ReadBatch<ValkeyPosition>) -> Vec<u64> {
        batch.events.iter().map(|e| e.position.id.micros).collect()
    }

    #[test]
    fn merges_in_id_order_without_running_ahead_of_a_full_partition() {
        let counters = Counters::default();
        // Partition 0 returned its full 2: partition 1's entry 9 must wait.
        let reads =
            vec![read(vec![event(0, 1, "a"), event(0, 5, "a")], 2), read(vec![event(1, 3, "a"), event(1, 9, "a")], 3)];
        let batch = merge(&ValkeyPosition::default(), reads, &ScannerFilter::new(), 10, &counters);
        assert_eq!(micros_of(&batch), [1, 3, 5]);
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
        assert_eq!(micros_of(&batch), [1, 2]);
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
        assert_eq!(micros_of(&batch), [2, 3]);
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
        // Every partition resumes past the newest trimmed id (25): entry 20, retained in
        // partition 1, is in the gap.
        assert_eq!((gap.resumed_at.get(0), gap.resumed_at.get(1)), (id(25), id(25)));
        assert_eq!(micros_of(&batch), [30]);
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
        assert_eq!(micros_of(&batch), [50]);
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
        assert_eq!(micros_of(&batch), [2]);
        assert_eq!(counters.snapshot().malformed_messages, 1);
    }

    #[test]
    fn pages_are_an_even_share_and_a_half() {
        assert_eq!(page_size(1024, 16), 96);
        assert_eq!(page_size(1024, 1), 1024, "one partition: the limit, not more");
        assert_eq!(page_size(100, 16), 64, "at least MIN_PAGE");
        assert_eq!(page_size(10, 16), 10, "never more than the limit");
        assert_eq!(page_size(1, 256), 1);
        assert_eq!(page_size(0, 0), 1);
    }

    #[test]
    fn a_next_page_extends_a_full_one_and_lets_the_merge_go_on() {
        let counters = Counters::default();
        // Partition 0 holds most events: its first page (2) bounds the merge at 2.
        let mut reads =
            vec![read(vec![event(0, 1, "a"), event(0, 2, "a")], 2), read(vec![event(1, 3, "a"), event(1, 9, "a")], 3)];
        let first = plan(&ValkeyPosition::default(), &reads, &ScannerFilter::new(), 10);
        assert!(first.wants_more(10));
        reads[0].append(read(vec![event(0, 4, "a"), event(0, 5, "a")], 3), id(2));
        assert!(!reads[0].truncated, "the next page was not full");
        let batch = merge(&ValkeyPosition::default(), reads, &ScannerFilter::new(), 10, &counters);
        assert_eq!(micros_of(&batch), [1, 2, 3, 4, 5, 9]);
        assert!(!batch.more);
        assert!(!plan(&ValkeyPosition::default(), &[], &ScannerFilter::new(), 1).wants_more(1));
    }

    #[test]
    fn a_next_page_after_trimming_is_dropped_and_the_next_read_reports_the_gap() {
        let counters = Counters::default();
        let mut reads = vec![read(vec![event(0, 1, "a"), event(0, 2, "a")], 2), read(vec![event(1, 9, "a")], 3)];
        // Entries after 2 (say 3) were trimmed before the next page was read.
        let mut next = read(vec![event(0, 4, "a")], 3);
        next.trimmed_to = id(3);
        reads[0].append(next, id(2));
        assert!(reads[0].truncated && reads[0].entries.len() == 2, "the page is dropped");
        assert!(reads[0].stalled, "and the partition is not asked again in this read");
        let after = ValkeyPosition::from_ids(vec![id(0), id(0)]);
        let batch = merge(&after, reads, &ScannerFilter::new(), 10, &counters);
        assert_eq!(micros_of(&batch), [1, 2], "nothing past the full page");
        assert!(batch.more && batch.gap.is_none());
        // The next read, from where this one stopped, sees the trimming past its watermark.
        let mut again = read(vec![event(0, 4, "a")], 3);
        again.trimmed_to = id(3);
        let batch = merge(
            &batch.scanned_to,
            vec![again, read(vec![event(1, 9, "a")], 3)],
            &ScannerFilter::new(),
            10,
            &counters,
        );
        assert!(batch.gap.is_some());
        assert_eq!(micros_of(&batch), [4, 9]);
    }

    #[test]
    fn taking_moves_each_picked_event_once_in_order() {
        let counters = Counters::default();
        let ns_b = ScannerFilter::new().with_namespace(Namespace::new("b").unwrap());
        let reads = vec![
            read(vec![event(0, 2, "b"), (id(3), Err("bad".into())), event(0, 7, "a")], 10),
            read(vec![event(1, 1, "b"), event(1, 5, "b")], 10),
        ];
        let merged = plan(&ValkeyPosition::default(), &reads, &ns_b, 10);
        assert_eq!(counters.snapshot().malformed_messages, 0, "planning counts nothing");
        let batch = merged.take(reads, &counters);
        assert_eq!(micros_of(&batch), [1, 2, 5]);
        assert_eq!(counters.snapshot().malformed_messages, 1);
        assert_eq!(batch.scanned_to.get(0), id(7));
    }
}
