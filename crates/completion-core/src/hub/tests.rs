//! The hub's own rules, with a scripted log: overflow, gaps and de-duplication, without any
//! backend. The conformance suite proves the same end to end on every backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::*;
use crate::{CompletionPayload, Cursor, ExecutionId, Gap, Namespace, Outcome, StartFrom, StreamItem};

/// A log held in memory: events numbered from `trimmed_to + 1` to `head`.
#[derive(Default)]
struct ScriptedLog {
    events: Vec<u64>,
    trimmed_to: u64,
    reads: Vec<(u64, usize)>,
    fail_next: u32,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<ScriptedLog>>);

fn payload(seq: u64) -> CompletionPayload {
    let id = ExecutionId::new(format!("e{seq}")).unwrap();
    CompletionPayload::new(id, Namespace::new("n").unwrap(), Outcome::Succeeded).with_completed_at_ms(seq)
}

fn event(seq: u64) -> LogEvent<u64> {
    LogEvent { position: seq, payload: payload(seq) }
}

impl Scripted {
    fn log(&self) -> std::sync::MutexGuard<'_, ScriptedLog> {
        self.0.lock().unwrap()
    }

    /// Appends events up to `head` and publishes them live.
    fn write(&self, hub: &Hub<u64>, to: u64) {
        let from = {
            let log = self.log();
            log.events.last().copied().unwrap_or(log.trimmed_to) + 1
        };
        for seq in from..=to {
            self.log().events.push(seq);
            hub.publish([event(seq)]);
        }
    }

    fn trim_to(&self, seq: u64) {
        let mut log = self.log();
        log.events.retain(|e| *e > seq);
        log.trimmed_to = seq;
    }
}

#[async_trait]
impl LogReader<u64> for Scripted {
    async fn decode_cursor(&self, cursor: &Cursor) -> Result<u64, EngineError> {
        let seq =
            cursor.position_for("test")?.parse().map_err(|_| EngineError::invalid("cursor", cursor.as_str(), "nan"))?;
        if seq > self.log().events.last().copied().unwrap_or(0) {
            return Err(EngineError::invalid("cursor", cursor.as_str(), "points past the end of this backend's log"));
        }
        Ok(seq)
    }

    async fn read_after(&self, after: &u64, _: &ScannerFilter, limit: usize) -> Result<ReadBatch<u64>, EngineError> {
        let mut log = self.log();
        log.reads.push((*after, limit));
        if log.fail_next > 0 {
            log.fail_next -= 1;
            return Err(EngineError::transport("test", "read", "scripted failure"));
        }
        let gap = (*after != 0 && *after < log.trimmed_to)
            .then(|| TrimmedGap { resumed_at: log.trimmed_to, missed: Some(log.trimmed_to - after) });
        let start = (*after).max(log.trimmed_to);
        let found: Vec<u64> = log.events.iter().copied().filter(|e| *e > start).collect();
        let more = found.len() > limit;
        let events: Vec<_> = found.into_iter().take(limit).map(event).collect();
        let scanned_to = events.last().map_or(start, |e| e.position);
        Ok(ReadBatch { events, scanned_to, gap, more })
    }
}

#[async_trait]
impl Feed<u64> for Scripted {
    async fn start(&self, hub: &Hub<u64>) -> Result<Option<JoinHandle<()>>, EngineError> {
        hub.advance_to(&self.log().events.last().copied().unwrap_or(0));
        Ok(None)
    }
}

fn hub(buffer: usize) -> Hub<u64> {
    let config = HubConfig { retry_backoff: Duration::from_millis(1), ..HubConfig::with_buffer(buffer) };
    Hub::new(config, Arc::new(Counters::default()))
}

async fn next_seqs(stream: &mut ResumableStream, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("an item in time") {
            Some(StreamItem::Completion(c)) => seqs.push(c.completed_at_ms()),
            other => panic!("expected a completion, got {other:?}"),
        }
    }
    seqs
}

#[tokio::test]
async fn an_overflowed_mailbox_stays_bounded_and_catches_up_from_the_log_in_order() {
    let (hub, log) = (hub(4), Scripted::default());
    let mut stream =
        hub.subscribe_from(&log, Arc::new(log.clone()), StartFrom::Now, &ScannerFilter::new()).await.unwrap();
    log.write(&hub, 10);
    let snapshot = hub.snapshot();
    assert_eq!(snapshot.buffer_overflows, 1, "the fifth event overflowed the mailbox of 4");
    assert!(snapshot.buffer_high_water <= 4, "the mailbox never held more than its buffer: {snapshot:?}");
    assert_eq!(next_seqs(&mut stream, 10).await, (1..=10).collect::<Vec<_>>());
    assert!(log.log().reads.iter().all(|(_, limit)| *limit == 4), "catch-up reads are bounded by the buffer");
    assert_eq!(hub.snapshot().delivered, 10);
}

#[tokio::test]
async fn an_event_met_in_the_log_and_in_the_mailbox_is_delivered_once() {
    let (hub, log) = (hub(64), Scripted::default());
    log.write(&hub, 3);
    // From the earliest event: 4 and 5 reach the stream's mailbox as they are written, and
    // its first catch-up read (after 0) finds them in the log as well.
    let mut stream =
        hub.subscribe_from(&log, Arc::new(log.clone()), StartFrom::Earliest, &ScannerFilter::new()).await.unwrap();
    log.write(&hub, 5);
    assert_eq!(next_seqs(&mut stream, 5).await, vec![1, 2, 3, 4, 5]);
    log.write(&hub, 6);
    assert_eq!(next_seqs(&mut stream, 1).await, vec![6], "4 and 5 were not delivered twice");
}

#[tokio::test]
async fn a_cursor_older_than_retention_yields_a_gap_then_the_retained_events() {
    let (hub, log) = (hub(64), Scripted::default());
    log.write(&hub, 10);
    log.trim_to(6);
    let from = StartFrom::After(Cursor::new("test", 2));
    let mut stream = hub.subscribe_from(&log, Arc::new(log.clone()), from, &ScannerFilter::new()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap();
    let expected = Gap { after: Some(Cursor::new("test", 2)), resumed_at: Cursor::new("test", 6), missed: Some(4) };
    assert_eq!(first, Some(StreamItem::Gap(expected)));
    assert_eq!(next_seqs(&mut stream, 4).await, vec![7, 8, 9, 10]);
    assert_eq!(hub.snapshot().gaps, 1);
}

#[tokio::test]
async fn a_failed_catch_up_read_is_retried_and_loses_nothing() {
    let (hub, log) = (hub(64), Scripted::default());
    log.write(&hub, 3);
    log.log().fail_next = 3;
    let mut stream =
        hub.subscribe_from(&log, Arc::new(log.clone()), StartFrom::Earliest, &ScannerFilter::new()).await.unwrap();
    assert_eq!(next_seqs(&mut stream, 3).await, vec![1, 2, 3]);
    assert_eq!(log.log().reads.len(), 4, "three failed reads, then one that succeeded");
}

#[tokio::test]
async fn a_cursor_past_the_log_is_refused_by_the_reader_and_registers_nothing() {
    let (hub, log) = (hub(64), Scripted::default());
    log.write(&hub, 2);
    let from = StartFrom::After(Cursor::new("test", 9));
    let refused = hub.subscribe_from(&log, Arc::new(log.clone()), from, &ScannerFilter::new()).await.err().unwrap();
    assert!(refused.to_string().contains("past the end"), "{refused}");
    assert_eq!(hub.stream_count(), 0);
}

#[tokio::test]
async fn dropping_the_last_stream_stops_the_feed_and_close_ends_the_streams() {
    let (hub, log) = (hub(64), Scripted::default());
    let stream = hub.subscribe(&log, Arc::new(log.clone()), &ScannerFilter::new()).await.unwrap();
    assert_eq!((hub.stream_count(), hub.snapshot().active_streams), (1, 1));
    let idle = tokio::spawn({
        let hub = hub.clone();
        async move { hub.until_idle().await }
    });
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), idle).await.expect("idle once the last stream is gone").unwrap();
    assert!(!hub.inner.feed.lock().await.alive(), "the feed is marked stopped");

    let mut stream = hub.subscribe(&log, Arc::new(log.clone()), &ScannerFilter::new()).await.unwrap();
    hub.close();
    assert!(tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().is_none());
    let refused = hub.subscribe(&log, Arc::new(log.clone()), &ScannerFilter::new()).await.err().unwrap();
    assert!(matches!(refused, EngineError::Closed { backend: "test" }));
}
