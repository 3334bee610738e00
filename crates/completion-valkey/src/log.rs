//! Reading the partitioned log for the hub (the [`LogReader`] of [`Store`]): catch-up
//! reads, gap detection, the head, and cursors checked against the head.
//!
//! A read asks every partition for one *page* of entries after the position's id for that
//! partition, between two reads of the partition's trimming record `trimmed_to`, the newest
//! id ever trimmed away ([`Store::read_partition`], [`Store::read_one`]), then merges the
//! pages by stream id ([`merge`]: commit order across partitions, gaps, how far the read
//! looked). While a full page stops the merge short of the limit, the full partitions are
//! asked for their next page, at most [`MAX_REFILLS`] times per read, and the merge runs
//! again. Filters run in the merge, on each entry's own namespace and tags (no extra round
//! trip); an entry that does not parse is skipped, logged and counted as malformed.
//!
//! Limit: one read holds up to `partitions x page x (1 + MAX_REFILLS)` entries in memory at
//! once (about `10 x limit`).

mod merge;

use async_trait::async_trait;
use completion_core::hub::{LogReader, ReadBatch};
use completion_core::{Cursor, EngineError, ScannerFilter};
use tracing::Instrument;

use self::merge::{MAX_REFILLS, PartitionRead, page_size, plan};
use crate::library::function;
use crate::position::{BACKEND, StreamId, ValkeyPosition};
use crate::store::Store;
use crate::wire::{self, RawRead};

impl Store {
    /// One partition's log after `after` (exclusive), at most `count` entries (0: only the
    /// head, trimming record and time), in three steps, each awaited before the next so that
    /// they reach the server in this order even when one is retried:
    /// 1. the library's read function without entries: the trimming record (`trimmed_before`),
    ///    the head, and the server's time: every entry committed later has a larger id;
    /// 2. `XRANGE` itself (a function's reply would go through Lua tables: see
    ///    `Conn::xrange_after`);
    /// 3. the trimming record again (`trimmed_to`): entries trimmed before step 2 are at or
    ///    before it, so a reader comparing it with its position misses no gap. (A trim
    ///    between steps 2 and 3 makes it look later than what step 2 missed; the reader
    ///    asks again when that difference matters, see [`Store::read_one`].)
    pub(crate) async fn read_partition(
        &self,
        partition: u16,
        after: &str,
        count: usize,
    ) -> Result<RawRead, EngineError> {
        let (log, meta) = (self.keys.log(partition), self.keys.meta(partition));
        let reply = self
            .call(
                "read log",
                function::READ,
                true,
                vec![log.clone(), meta.clone()],
                vec![after.to_string(), "0".into()],
            )
            .await?;
        let mut read = reply.into_read().map_err(|message| EngineError::server(BACKEND, "read log", message))?;
        if count > 0 {
            read.entries = self.conn.xrange_after(&log, after, count).await?;
            read.trimmed_to = self.conn.hget("read log", &meta, "trimmed_to").await?.unwrap_or_else(|| "0-0".into());
        }
        Ok(read)
    }

    /// One partition's first page after `after`, parsed. When a trim crossed `watermark`
    /// (what its `trimmed_to` will be compared with) while the page was being read, between
    /// the two trimming records `Store::read_partition` takes, whether the entries past it
    /// were read before they went cannot be told, so the page is read again. The second read
    /// settles it: its first record is already past the watermark, a gap either way. (A next
    /// page needs no such care: [`PartitionRead::append`] drops it if it was trimmed past the
    /// page before.)
    async fn read_one(
        &self,
        partition: u16,
        after: StreamId,
        limit: usize,
        watermark: StreamId,
    ) -> Result<PartitionRead, EngineError> {
        let mut read = self.read_page(partition, after, limit).await?;
        if read.trimmed_before <= watermark && read.trimmed_to > watermark {
            tracing::debug!(backend = BACKEND, partition, %watermark, "trimmed past the position during a read; reading again");
            read = self.read_page(partition, after, limit).await?;
        }
        Ok(read)
    }

    async fn read_page(&self, partition: u16, after: StreamId, limit: usize) -> Result<PartitionRead, EngineError> {
        let raw = self.read_partition(partition, &after.to_string(), limit).await?;
        let id = |text: &str, what: &str| {
            text.parse::<StreamId>().map_err(|e| EngineError::server(BACKEND, "read log", format!("{what}: {e}")))
        };
        let truncated = limit > 0 && raw.entries.len() >= limit;
        let mut entries = Vec::with_capacity(raw.entries.len());
        for (entry_id, fields) in raw.entries {
            let entry_id = id(&entry_id, "entry id")?;
            entries.push((entry_id, wire::parse_entry(&self.keys, partition, entry_id, &fields)));
        }
        Ok(PartitionRead {
            trimmed_before: id(&raw.trimmed_before, "trimmed_to")?,
            trimmed_to: id(&raw.trimmed_to, "trimmed_to")?,
            last_generated: id(&raw.last_generated, "last-generated-id")?,
            entries,
            truncated,
            read_at_us: raw.read_at_us,
            stalled: false,
        })
    }

    /// Every partition read after `after` (all at once: the client pipelines them).
    async fn read_all(&self, after: &ValkeyPosition, limit: usize) -> Result<Vec<PartitionRead>, EngineError> {
        let watermark = after.watermark();
        let reads = (0..self.keys.partitions()).map(|p| self.read_one(p, after.get(p), limit, watermark));
        futures_util::future::join_all(reads).await.into_iter().collect()
    }

    /// Asks every partition whose page was full (and not stalled) for its next page, and
    /// appends it. Returns whether it asked any.
    async fn refill(&self, reads: &mut [PartitionRead], page: usize) -> Result<bool, EngineError> {
        let wanted: Vec<(u16, StreamId)> = reads
            .iter()
            .enumerate()
            .filter(|(_, r)| r.truncated && !r.stalled)
            .filter_map(|(p, r)| r.entries.last().map(|(id, _)| (p as u16, *id)))
            .collect();
        let pages = wanted.iter().map(|&(p, last)| self.read_page(p, last, page));
        let pages = futures_util::future::join_all(pages).await;
        let asked = !wanted.is_empty();
        for ((p, last), next) in wanted.into_iter().zip(pages) {
            reads[usize::from(p)].append(next?, last);
        }
        Ok(asked)
    }

    /// The log's head: every partition's last generated id. Read after the subscription is
    /// live, it is where the hub starts.
    pub(crate) async fn head(&self) -> Result<ValkeyPosition, EngineError> {
        let reads = self.read_all(&ValkeyPosition::default(), 0).await?;
        Ok(ValkeyPosition::from_ids(reads.iter().map(|r| r.last_generated).collect()))
    }
}

#[async_trait]
impl LogReader<ValkeyPosition> for Store {
    /// Decodes a cursor of this prefix's partition count, refusing one past the log's head.
    /// The head is the newest id of the whole log, not of each partition: after a gap a
    /// stream's position is past the newest trimmed id in every partition, older partitions
    /// included.
    async fn decode_cursor(&self, cursor: &Cursor) -> Result<ValkeyPosition, EngineError> {
        let partitions = self.keys.partitions();
        let position = ValkeyPosition::decode(cursor, partitions)?;
        let head = self.head().await?.watermark();
        if let Some(p) = (0..partitions).find(|&p| position.get(p) > head) {
            return Err(EngineError::invalid(
                "cursor",
                cursor.as_str(),
                format!("points past the end of this backend's log (partition {p}; head {head})"),
            ));
        }
        Ok(position)
    }

    async fn read_after(
        &self,
        after: &ValkeyPosition,
        filter: &ScannerFilter,
        limit: usize,
    ) -> Result<ReadBatch<ValkeyPosition>, EngineError> {
        let limit = limit.max(1);
        let page = page_size(limit, self.keys.partitions());
        let span = tracing::debug_span!("read_log", backend = BACKEND, position = ?after, limit, page);
        let mut reads = self.read_all(after, page).instrument(span.clone()).await?;
        let mut merged = plan(after, &reads, filter, limit);
        for _ in 0..MAX_REFILLS {
            if !merged.wants_more(limit) {
                break;
            }
            if !self.refill(&mut reads, page).instrument(span.clone()).await? {
                break;
            }
            merged = plan(after, &reads, filter, limit);
        }
        Ok(merged.take(reads, &self.counters))
    }
}

#[cfg(test)]
mod tests {
    use completion_core::{ExecutionId, Namespace};

    use super::*;

    /// On a real server: a catch-up over a log whose events crowd into one partition reads
    /// that partition page after page within one read (the refill), delivering everything in
    /// commit order, in fewer reads than pages.
    #[tokio::test]
    async fn catch_up_over_one_crowded_partition_refills_its_pages() {
        use completion_core::{CompletionBackend, EngineBackend, NewExecution, StartFrom, StreamItem};
        use futures_util::StreamExt;

        use crate::keys::Keyspace;
        use crate::{ValkeyBackend, ValkeyConfig};

        let server = completion_testserver::ValkeyServer::start(Default::default()).expect("a throwaway server");
        let (prefix, partitions, buffer) = ("crowded", 4u16, 256usize);
        let config = ValkeyConfig::new(server.url())
            .with_key_prefix(prefix)
            .with_partitions(partitions)
            .with_buffer(buffer)
            .with_safety_interval(std::time::Duration::from_secs(600));
        let backend = ValkeyBackend::connect(config).await.unwrap();
        let ns = Namespace::new("n").unwrap();
        let write = |id: ExecutionId| {
            let (backend, ns) = (&backend, ns.clone());
            async move {
                backend.create_execution(NewExecution::new(id.clone(), ns)).await.unwrap();
                backend.complete(&id).await.unwrap();
            }
        };
        let mut stream = backend.subscribe_from(StartFrom::Now, &ScannerFilter::new()).await.unwrap();
        write(ExecutionId::new("marker").unwrap()).await;
        let Some(StreamItem::Completion(marker)) = stream.next().await else { panic!("no marker") };
        drop(stream);
        // 300 events in partition 0, 20 in the others, interleaved.
        let keys = Keyspace::new(prefix, partitions);
        let (mut crowded, mut others) = (Vec::new(), Vec::new());
        for i in 0.. {
            let id = format!("e{i}");
            match keys.partition_of(&id) {
                0 if crowded.len() < 300 => crowded.push(id),
                1.. if others.len() < 20 => others.push(id),
                _ if crowded.len() == 300 && others.len() == 20 => break,
                _ => {}
            }
        }
        let mut order = Vec::new();
        for (i, id) in crowded.into_iter().enumerate() {
            order.push(id);
            if i % 15 == 0
                && let Some(other) = others.pop()
            {
                order.push(other);
            }
        }
        order.extend(others);
        for id in &order {
            write(ExecutionId::new(id.clone()).unwrap()).await;
        }
        let page = page_size(buffer, partitions);
        assert!(page < buffer && order.len() > buffer, "the log must span several pages of partition 0");
        let reads_before = backend.counters().catch_up_reads;
        let mut stream =
            backend.subscribe_from(StartFrom::After(marker.cursor().clone()), &ScannerFilter::new()).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < order.len() {
            match tokio::time::timeout(std::time::Duration::from_secs(30), stream.next()).await {
                Ok(Some(StreamItem::Completion(c))) => seen.push(c.execution_id().as_str().to_string()),
                other => panic!("after {} events: {other:?}", seen.len()),
            }
        }
        assert_eq!(seen, order, "every event once, in commit order");
        let reads = backend.counters().catch_up_reads - reads_before;
        // Without refills, each read stops at the end of partition 0's page: 320 / 96 -> 4.
        assert!(reads <= 3, "{reads} reads for {} events in pages of {page}", order.len());
    }
}
