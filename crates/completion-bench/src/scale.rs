//! Figures 3 to 5 (docs/benchmarks.md, "How it is measured"), through the public traits only:
//! fan-out to many subscribers, a filtered subscriber against an unfiltered one, and catch-up
//! from far back.
//!
//! Definitions (also in docs/benchmarks.md):
//! - fan-out: `k` streams opened on one backend instance, then `events` completions written
//!   by [`WRITERS`] concurrent writers; *delivered/s* is `k * events` over the time from the
//!   first write to the last stream having every event. Connections are counted on the
//!   server (see [`ServerProbe`]); memory per subscriber is the growth of this process's
//!   resident set (`/proc/self/statm`) divided by `k`, once with the streams open and idle,
//!   once after the events went through them; and the same for the live heap bytes counted
//!   by [`crate::heap`], which is precise where the RSS is coarse. Both are taken with one
//!   stream already open, so that the feed's fixed cost (reported apart) is not spread
//!   over the `k`.
//! - filtering: `events` completions spread round-robin over [`NAMESPACES`] namespaces by
//!   [`WRITERS`] writers, with one subscriber open: filtered to one namespace, then (a second
//!   phase) unfiltered. Its cost: the latency (write call → item on the stream) of the events
//!   of that one namespace, and the CPU time of this whole process (all threads, from
//!   `/proc/self/task/*/schedstat`) per 1 000 events written. Writers and backend share the
//!   process with the subscriber, so the CPU difference between the phases is the
//!   subscriber's; the server's CPU is not counted.
//! - catch-up: `events` completions written after a marker, then a stream opened with
//!   `StartFrom::After(marker's cursor)`; events/s from the subscribe call until the last of
//!   them arrived (the stream is then live).
//!
//! Limits: one process, one machine, loopback; RSS deltas include allocator slack, so small
//! `k` gives a coarse per-subscriber figure.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use completion_core::{
    CompletionBackend, Cursor, EngineBackend, ExecutionId, Namespace, NewExecution, ScannerFilter, StartFrom,
    StreamItem,
};
use futures_util::StreamExt;
use serde::Serialize;

use crate::stats::Latency;
use crate::writers::spread;

/// Concurrent writers under every figure of this module.
pub const WRITERS: usize = 8;
/// Namespaces of the filtering figure.
pub const NAMESPACES: usize = 100;
/// How long one stream may wait for its next event before the run is declared broken.
const DEADLINE: Duration = Duration::from_secs(60);

fn err(op: &str, e: impl std::fmt::Display) -> String {
    format!("{op}: {e}")
}

fn id(run: &str, what: &str, i: usize) -> Result<ExecutionId, String> {
    ExecutionId::new(format!("{run}-{what}-{i}")).map_err(|e| err("execution id", e))
}

/// The write index `i` back from an id made by [`id`].
fn index_of(id: &ExecutionId) -> Option<usize> {
    id.as_str().rsplit('-').next()?.parse().ok()
}

/// Connections on the server, counted by the server.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Connections {
    /// Every connection of the backend instance (Valkey: every client but the counting one;
    /// Postgres: every session with the instance's `application_name`).
    pub total: usize,
    /// Those used for subscriptions (Valkey: clients with a SUBSCRIBE/SSUBSCRIBE/PSUBSCRIBE;
    /// Postgres: the LISTEN connection).
    pub subscriber: usize,
}

/// How to count a backend's connections on its server.
pub enum ServerProbe {
    /// In-process: no server.
    None,
    /// `CLIENT LIST` on this server.
    Valkey(String),
    /// `pg_stat_activity` on this server, by the instance's two `application_name`s.
    Postgres {
        /// Server URL.
        url: String,
        /// The LISTEN connection's name.
        listen: String,
        /// The pooled connections' name.
        pool: String,
    },
}

impl ServerProbe {
    async fn count(&self) -> Result<Option<Connections>, String> {
        match self {
            ServerProbe::None => Ok(None),
            ServerProbe::Valkey(url) => crate::raw_valkey::connections(url).await.map(Some),
            ServerProbe::Postgres { url, listen, pool } => {
                crate::raw_postgres::connections(url, listen, pool).await.map(Some)
            }
        }
    }
}

/// Resident set of this process in bytes (`/proc/self/statm`, 4 KiB pages assumed).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// CPU time of every thread of this process so far (`/proc/self/task/*/schedstat`); threads
/// that ended are not counted, which is fine here: the runtime's workers live throughout.
fn cpu_time() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
                ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

/// Waits (at most 3 s) until the live heap stops moving, so that what earlier figures and
/// background tasks free meanwhile (tens of MiB after a throughput run on Valkey) does not
/// land in a per-subscriber delta.
async fn settle() {
    let mut last = crate::heap::live_bytes();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = crate::heap::live_bytes();
        if now.abs_diff(last) < 16 * 1024 {
            return;
        }
        last = now;
    }
}

/// Creates `n` executions (not timed), the `i`th in `namespace(i)`.
async fn create_all<B: EngineBackend>(
    backend: &Arc<B>,
    run: &str,
    what: &str,
    n: usize,
    namespace: impl Fn(usize) -> Namespace,
) -> Result<Arc<Vec<ExecutionId>>, String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push((id(run, what, i)?, namespace(i)));
    }
    let ids = Arc::new(ids);
    // Concurrent, or creating 100 000 executions on Postgres would dominate the run.
    spread!(WRITERS, n, [backend, ids], |_, i| {
        let (id, ns) = &ids[i];
        backend.create_execution(NewExecution::new(id.clone(), ns.clone())).await.map_err(|e| err("create", e))
    })
    .await?;
    Ok(Arc::new(
        Arc::try_unwrap(ids)
            .map_err(|_| "create: ids still shared".to_string())?
            .into_iter()
            .map(|(id, _)| id)
            .collect(),
    ))
}

/// Completes every id with [`WRITERS`] writers; `started[i]` gets the time of the `i`th call.
async fn complete_all<B: EngineBackend>(
    backend: &Arc<B>,
    ids: &Arc<Vec<ExecutionId>>,
    started: Option<Arc<Vec<OnceLock<Instant>>>>,
) -> Result<(), String> {
    spread!(WRITERS, ids.len(), [backend, ids, started], |_, i| {
        if let Some(started) = &started {
            let _ = started[i].set(Instant::now());
        }
        backend.complete(&ids[i]).await.map_err(|e| err("complete", e))
    })
    .await
}

fn bench_namespace() -> Result<Namespace, String> {
    Namespace::new("bench").map_err(|e| err("namespace", e))
}

/// One fan-out measurement.
#[derive(Clone, Debug, Serialize)]
pub struct FanOut {
    /// Streams open.
    pub subscribers: usize,
    /// Completions written.
    pub events: usize,
    /// `subscribers * events` over first write → last delivery.
    pub delivered_per_s: f64,
    /// Counted on the server with every stream open (none in-process).
    pub connections: Option<Connections>,
    /// RSS growth per subscriber with the streams open and idle, bytes.
    pub rss_per_subscriber_open: f64,
    /// RSS growth per subscriber after the events went through, bytes.
    pub rss_per_subscriber_after: f64,
    /// Live heap growth per subscriber with the streams open and idle, bytes.
    pub heap_per_subscriber_open: f64,
    /// Live heap growth per subscriber after the events went through (streams still open), bytes.
    pub heap_per_subscriber_after: f64,
    /// Live heap growth when the instance's first stream opened (its feed started), bytes: a
    /// cost per backend instance, not per subscriber.
    pub feed_heap: f64,
    /// Live heap growth per subscriber left once the `k` streams were dropped (the anchor
    /// still open), bytes: ~0 when dropping a stream frees what it held.
    pub heap_per_subscriber_dropped: f64,
    /// Streams the backend still counts once the `k` were dropped (the anchor: 1).
    pub streams_left: u64,
    /// Log reads during the figure (the backend's `catch_up_reads` counter): live delivery
    /// needs a few; one per stream means the streams fell back to reading the log.
    pub log_reads: u64,
    /// Streams whose mailbox overflowed during the figure (`buffer_overflows`).
    pub overflows: u64,
}

/// Opens `k` streams, writes `events` completions, waits until every stream has them all.
pub async fn fan_out<B>(
    backend: Arc<B>,
    probe: &ServerProbe,
    run: &str,
    k: usize,
    events: usize,
) -> Result<FanOut, String>
where
    B: CompletionBackend + EngineBackend,
{
    let namespace = bench_namespace()?;
    let ids = create_all(&backend, run, &format!("fan{k}"), events, |_| namespace.clone()).await?;
    // The first stream of an instance starts its feed (Valkey: a subscriber client whose
    // message channel is allocated up front): a fixed cost, measured apart from the
    // per-subscriber one. The anchor is drained and not counted.
    settle().await;
    let heap_idle = crate::heap::live_bytes();
    let mut anchor = backend.subscribe_completions().await.map_err(|e| err("subscribe", e))?;
    let anchor = tokio::spawn(async move { while anchor.next().await.is_some() {} });
    settle().await;
    let (rss_before, heap_before) = (rss_bytes(), crate::heap::live_bytes());
    let feed_heap = heap_before as f64 - heap_idle as f64;
    let mut streams = Vec::with_capacity(k);
    for _ in 0..k {
        streams.push(backend.subscribe_completions().await.map_err(|e| err("subscribe", e))?);
    }
    let (rss_open, heap_open) = (rss_bytes(), crate::heap::live_bytes());
    let connections = probe.count().await?;
    let counted = backend.counters();
    let started = Instant::now();
    let mut readers = Vec::with_capacity(k);
    for mut stream in streams {
        readers.push(tokio::spawn(async move {
            let mut seen = 0usize;
            while seen < events {
                match tokio::time::timeout(DEADLINE, stream.next()).await {
                    Ok(Some(_)) => seen += 1,
                    _ => break,
                }
            }
            // Kept until the RSS is read after delivery.
            (seen, stream)
        }));
    }
    complete_all(&backend, &ids, None).await?;
    let mut missing = 0usize;
    let mut held = Vec::with_capacity(k);
    for reader in readers {
        let (seen, stream) = reader.await.map_err(|e| err("reader task", e))?;
        missing += events - seen;
        held.push(stream);
    }
    let elapsed = started.elapsed();
    let (rss_after, heap_after) = (rss_bytes(), crate::heap::live_bytes());
    let now = backend.counters();
    drop(held);
    settle().await;
    let heap_dropped = crate::heap::live_bytes();
    let streams_left = backend.counters().active_streams;
    anchor.abort();
    if missing > 0 {
        return Err(format!("fan-out to {k}: {missing} deliveries missing"));
    }
    let per = |rss: u64| rss.saturating_sub(rss_before) as f64 / k as f64;
    // Signed: the heap may shrink when earlier figures' leftovers are freed meanwhile.
    let heap_per = |heap: usize| (heap as f64 - heap_before as f64) / k as f64;
    Ok(FanOut {
        subscribers: k,
        events,
        delivered_per_s: (k * events) as f64 / elapsed.as_secs_f64(),
        connections,
        rss_per_subscriber_open: per(rss_open),
        rss_per_subscriber_after: per(rss_after),
        heap_per_subscriber_open: heap_per(heap_open),
        heap_per_subscriber_after: heap_per(heap_after),
        feed_heap,
        heap_per_subscriber_dropped: heap_per(heap_dropped),
        streams_left,
        log_reads: now.catch_up_reads.saturating_sub(counted.catch_up_reads),
        overflows: now.buffer_overflows.saturating_sub(counted.buffer_overflows),
    })
}

/// One phase of the filtering figure.
#[derive(Clone, Debug, Serialize)]
pub struct FilterPhase {
    /// Events the subscriber received.
    pub delivered: usize,
    /// Latency of the one namespace's events, write call → item.
    pub latency: Latency,
    /// CPU time of this process per 1 000 events written, ms.
    pub cpu_ms_per_1000: f64,
}

/// The filtering figure: a subscriber filtered to one of [`NAMESPACES`], then an unfiltered one.
#[derive(Clone, Debug, Serialize)]
pub struct Filtering {
    /// Completions written per phase.
    pub events: usize,
    /// Subscriber filtered to one namespace.
    pub filtered: FilterPhase,
    /// Unfiltered subscriber.
    pub unfiltered: FilterPhase,
}

/// Both phases of the filtering figure.
pub async fn filtering<B>(backend: Arc<B>, run: &str, events: usize) -> Result<Filtering, String>
where
    B: CompletionBackend + EngineBackend,
{
    let namespaces = (0..NAMESPACES)
        .map(|i| Namespace::new(format!("ns{i}")).map_err(|e| err("namespace", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let filtered = filter_phase(&backend, run, "fltf", events, &namespaces, true).await?;
    let unfiltered = filter_phase(&backend, run, "fltu", events, &namespaces, false).await?;
    Ok(Filtering { events, filtered, unfiltered })
}

async fn filter_phase<B>(
    backend: &Arc<B>,
    run: &str,
    what: &str,
    events: usize,
    namespaces: &[Namespace],
    filtered: bool,
) -> Result<FilterPhase, String>
where
    B: CompletionBackend + EngineBackend,
{
    let ids = create_all(backend, run, what, events, |i| namespaces[i % namespaces.len()].clone()).await?;
    let mut stream = if filtered {
        let filter = ScannerFilter::new().with_namespace(namespaces[0].clone());
        backend.subscribe_completions_filtered(&filter).await
    } else {
        backend.subscribe_completions().await
    }
    .map_err(|e| err("subscribe", e))?;
    let expect = if filtered { events.div_ceil(namespaces.len()) } else { events };
    let started: Arc<Vec<OnceLock<Instant>>> = Arc::new((0..events).map(|_| OnceLock::new()).collect());
    let stamps = started.clone();
    let ns_count = namespaces.len();
    let reader = tokio::spawn(async move {
        let (mut seen, mut samples) = (0usize, Vec::new());
        while seen < expect {
            let Ok(Some(event)) = tokio::time::timeout(DEADLINE, stream.next()).await else { break };
            seen += 1;
            if let Some(i) = index_of(event.execution_id()).filter(|i| i % ns_count == 0)
                && let Some(at) = stamps.get(i).and_then(OnceLock::get)
            {
                samples.push(at.elapsed());
            }
        }
        (seen, samples)
    });
    let cpu_before = cpu_time();
    complete_all(backend, &ids, Some(started)).await?;
    let (delivered, mut samples) = reader.await.map_err(|e| err("reader task", e))?;
    let cpu = cpu_time().saturating_sub(cpu_before);
    if delivered < expect {
        return Err(format!("filtering ({what}): the subscriber saw {delivered} of {expect} events"));
    }
    Ok(FilterPhase {
        delivered,
        latency: Latency::from_samples(&mut samples),
        cpu_ms_per_1000: cpu.as_secs_f64() * 1e3 * 1000.0 / events as f64,
    })
}

/// The catch-up backlog: the marker's cursor, and how many events follow it.
pub struct Backlog {
    cursor: Cursor,
    events: usize,
    /// Seconds it took to write the backlog (not a figure: the JSON keeps it for context).
    pub write_seconds: f64,
}

/// Writes a marker and then `events` completions after it, for [`catch_up`].
pub async fn backlog<B>(backend: Arc<B>, run: &str, events: usize) -> Result<Backlog, String>
where
    B: CompletionBackend + EngineBackend,
{
    let namespace = bench_namespace()?;
    let marker = id(run, "mark", 0)?;
    backend
        .create_execution(NewExecution::new(marker.clone(), namespace.clone()))
        .await
        .map_err(|e| err("create", e))?;
    let mut stream =
        backend.subscribe_from(StartFrom::Now, &ScannerFilter::new()).await.map_err(|e| err("subscribe_from", e))?;
    backend.complete(&marker).await.map_err(|e| err("complete", e))?;
    let cursor = loop {
        match tokio::time::timeout(DEADLINE, stream.next()).await {
            Ok(Some(StreamItem::Completion(c))) if c.execution_id() == &marker => break c.cursor().clone(),
            Ok(Some(_)) => {}
            _ => return Err("catch-up: the marker did not arrive".to_string()),
        }
    };
    drop(stream);
    let ids = create_all(&backend, run, "back", events, |_| namespace.clone()).await?;
    let started = Instant::now();
    complete_all(&backend, &ids, None).await?;
    Ok(Backlog { cursor, events, write_seconds: started.elapsed().as_secs_f64() })
}

/// One catch-up measurement.
#[derive(Clone, Debug, Serialize)]
pub struct CatchUp {
    /// Events behind at the subscribe call.
    pub events: usize,
    /// Events per second from the subscribe call until the last of them arrived.
    pub events_per_s: f64,
    /// Gaps reported (should be 0: the retention holds the backlog).
    pub gaps: usize,
}

/// Resumes from the backlog's marker and times reading all of it.
pub async fn catch_up<B: CompletionBackend>(backend: &B, backlog: &Backlog) -> Result<CatchUp, String> {
    let started = Instant::now();
    let mut stream = backend
        .subscribe_from(StartFrom::After(backlog.cursor.clone()), &ScannerFilter::new())
        .await
        .map_err(|e| err("subscribe_from", e))?;
    let (mut seen, mut gaps) = (0usize, 0usize);
    while seen < backlog.events {
        match tokio::time::timeout(DEADLINE, stream.next()).await {
            Ok(Some(StreamItem::Completion(_))) => seen += 1,
            Ok(Some(_)) => gaps += 1,
            _ => return Err(format!("catch-up: stalled after {seen} of {} events", backlog.events)),
        }
    }
    Ok(CatchUp { events: backlog.events, events_per_s: seen as f64 / started.elapsed().as_secs_f64(), gaps })
}

#[cfg(test)]
mod tests {
    use super::{id, index_of};

    #[test]
    fn the_write_index_comes_back_from_the_id() {
        let made = id("r1-0-s2", "fltf", 417).unwrap();
        assert_eq!(index_of(&made), Some(417));
        assert_eq!(index_of(&completion_core::ExecutionId::new("no-index-here").unwrap()), None);
    }
}
