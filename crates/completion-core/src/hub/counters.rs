//! Counters every backend keeps, readable at any time, and (with the cargo feature
//! `metrics`) exported through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! # Metrics
//!
//! With the feature `metrics`, every [`Counters`] made by [`Counters::labelled`] registers
//! its metrics once, with its labels, with the recorder installed at that moment (install
//! your exporter, e.g. `metrics-exporter-prometheus`, *before* connecting a backend: an
//! instance made before any recorder exports nothing). Each bump then also increments the
//! metric through the handle it holds: no lookup by name on the hot path. Without the
//! feature the handles do not exist and a bump is one relaxed atomic add, as before.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `completions_reconnects_total` | counter | instance labels | [`Counters::reconnects`] |
//! | `completions_catch_up_reads_total` | counter | instance labels | [`Counters::catch_up_reads`] |
//! | `completions_gaps_total` | counter | instance labels | [`Counters::gaps`] |
//! | `completions_filtered_out_total` | counter | instance labels | [`Counters::filtered_out`] |
//! | `completions_malformed_messages_total` | counter | instance labels | [`Counters::malformed_messages`] |
//! | `completions_buffer_overflows_total` | counter | instance labels | [`Counters::buffer_overflows`] |
//! | `completions_delivered_total` | counter | instance labels | [`Counters::delivered`] |
//! | `completions_buffer_high_water` | gauge | instance labels | [`Counters::buffer_high_water`] |
//! | `completions_active_streams` | gauge | instance labels | streams open ([`CounterSnapshot::active_streams`]) |
//! | `completions_write_duration_seconds` | histogram | instance labels, `op` | one write call ([`WriteOp`]), success or error |
//! | `completions_delivery_latency_seconds` | histogram | instance labels | from the write's commit (`completed_at_ms`) to the stream yielding it |
//!
//! Instance labels: `backend` (`memory`, `valkey`, `postgres`), and `schema` (PostgreSQL) or
//! `prefix` (Valkey). Two instances with the same labels add into the same series.

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter of [`Counters`]: an atomic count, plus (feature `metrics`) the handle of the
/// metric it mirrors into.
#[derive(Debug, Default)]
pub struct Count {
    value: AtomicU64,
    #[cfg(feature = "metrics")]
    metric: Option<metrics::Counter>,
}

impl Count {
    /// Adds one.
    #[inline]
    pub fn bump(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(metric) = &self.metric {
            metric.increment(n);
        }
    }

    /// Sets the value: for a gauge among a [`counter_set!`](crate::counter_set)'s counts (the
    /// latest reading of something, not a running total). The mirrored metric, if any, is a
    /// counter and is not moved.
    pub fn set(&self, n: u64) {
        self.value.store(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    #[cfg(feature = "metrics")]
    fn registered(name: &'static str, labels: &[metrics::Label]) -> Self {
        Self { value: AtomicU64::new(0), metric: Some(metrics::counter!(name, labels.iter())) }
    }
}

/// A write call whose duration is recorded as `completions_write_duration_seconds{op}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteOp {
    /// `create_execution` (label `create`).
    Create,
    /// `complete` (label `complete`).
    Complete,
    /// `fail` (label `fail`).
    Fail,
    /// `cancel` (label `cancel`).
    Cancel,
    /// An emit of a completion for an execution whose state the engine keeps (label `emit`).
    Emit,
}

impl WriteOp {
    /// Every operation, in label order.
    pub const ALL: [WriteOp; 5] = [WriteOp::Create, WriteOp::Complete, WriteOp::Fail, WriteOp::Cancel, WriteOp::Emit];

    /// The value of the `op` label.
    pub fn label(self) -> &'static str {
        match self {
            WriteOp::Create => "create",
            WriteOp::Complete => "complete",
            WriteOp::Fail => "fail",
            WriteOp::Cancel => "cancel",
            WriteOp::Emit => "emit",
        }
    }

    /// The operation of a terminal write with `outcome`.
    pub fn terminal(outcome: crate::Outcome) -> Self {
        match outcome {
            crate::Outcome::Succeeded => WriteOp::Complete,
            crate::Outcome::Failed => WriteOp::Fail,
            crate::Outcome::Cancelled => WriteOp::Cancel,
        }
    }
}

/// The `terminal_write` span every backend opens for a terminal write (debug level), with
/// the same fields everywhere: `backend`, `execution_id`, `outcome`, and, to be recorded
/// when known, `position` (where the event landed in the log) and `completed_at_ms`.
pub fn terminal_write_span(backend: &'static str, id: &crate::ExecutionId, outcome: crate::Outcome) -> tracing::Span {
    tracing::debug_span!(
        "terminal_write",
        backend,
        execution_id = %id,
        %outcome,
        position = tracing::field::Empty,
        completed_at_ms = tracing::field::Empty
    )
}

/// Times one write call from [`Counters::time_write`] until it is dropped. Without the
/// feature `metrics` it is empty and does nothing.
#[must_use = "the write is timed until this is dropped"]
#[derive(Debug)]
pub struct WriteTimer<'a> {
    #[cfg(feature = "metrics")]
    timed: Option<(&'a metrics::Histogram, std::time::Instant)>,
    #[cfg(not(feature = "metrics"))]
    _counters: std::marker::PhantomData<&'a Counters>,
}

impl Drop for WriteTimer<'_> {
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        if let Some((histogram, start)) = self.timed.take() {
            histogram.record(start.elapsed().as_secs_f64());
        }
    }
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Handles {
    /// Moved by differences, so instances with the same labels add up.
    active_streams: metrics::Gauge,
    buffer_high_water: metrics::Gauge,
    writes: [metrics::Histogram; WriteOp::ALL.len()],
    delivery: metrics::Histogram,
}

/// Live counters of one backend instance. Backends bump them; users read a
/// [`CounterSnapshot`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Times a server connection of the subscription side was re-established.
    pub reconnects: Count,
    /// Reads of the completion log made to catch a stream (or the whole instance) up.
    pub catch_up_reads: Count,
    /// Gaps met: positions older than retention.
    pub gaps: Count,
    /// Events that a stream's filter turned away.
    pub filtered_out: Count,
    /// Channel messages, notification payloads and log entries that did not parse and were
    /// skipped.
    pub malformed_messages: Count,
    /// Times a stream's buffer was full (or the feed fell behind retention) and the stream fell
    /// back to reading the log.
    pub buffer_overflows: Count,
    /// The most events any one stream's buffer held at once.
    pub buffer_high_water: AtomicU64,
    /// Completions handed to streams (after filtering), all streams summed.
    pub delivered: Count,
    #[cfg(feature = "metrics")]
    handles: Option<Handles>,
}

impl Counters {
    /// Counters of an instance of `backend` whose metrics (feature `metrics`) carry the labels
    /// `backend` and `labels` (e.g. `[("schema", "completions")]`). Without the feature this is
    /// [`Counters::default`] and the labels are unused.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn labelled(backend: &'static str, labels: &[(&'static str, String)]) -> Self {
        #[cfg(not(feature = "metrics"))]
        {
            Self::default()
        }
        #[cfg(feature = "metrics")]
        {
            describe();
            let mut l = vec![metrics::Label::new("backend", backend)];
            l.extend(labels.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())));
            let writes = WriteOp::ALL.map(|op| {
                let mut with_op = l.clone();
                with_op.push(metrics::Label::new("op", op.label()));
                metrics::histogram!("completions_write_duration_seconds", with_op)
            });
            Self {
                reconnects: Count::registered("completions_reconnects_total", &l),
                catch_up_reads: Count::registered("completions_catch_up_reads_total", &l),
                gaps: Count::registered("completions_gaps_total", &l),
                filtered_out: Count::registered("completions_filtered_out_total", &l),
                malformed_messages: Count::registered("completions_malformed_messages_total", &l),
                buffer_overflows: Count::registered("completions_buffer_overflows_total", &l),
                buffer_high_water: AtomicU64::new(0),
                delivered: Count::registered("completions_delivered_total", &l),
                handles: Some(Handles {
                    active_streams: metrics::gauge!("completions_active_streams", l.iter()),
                    buffer_high_water: metrics::gauge!("completions_buffer_high_water", l.iter()),
                    writes,
                    delivery: metrics::histogram!("completions_delivery_latency_seconds", l.iter()),
                }),
            }
        }
    }

    /// Adds one to `counter`.
    #[inline]
    pub fn bump(counter: &Count) {
        counter.bump();
    }

    /// Raises the buffer high-water mark to `len` if it is higher.
    #[inline]
    pub fn note_buffer_len(&self, len: usize) {
        let before = self.buffer_high_water.fetch_max(len as u64, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if (len as u64) > before
            && let Some(h) = &self.handles
        {
            h.buffer_high_water.set(len as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = before;
    }

    /// Times a write call of kind `op` until the returned timer is dropped (feature
    /// `metrics`; otherwise it does nothing).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn time_write(&self, op: WriteOp) -> WriteTimer<'_> {
        #[cfg(feature = "metrics")]
        {
            let index = WriteOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
            WriteTimer { timed: self.handles.as_ref().map(|h| (&h.writes[index], std::time::Instant::now())) }
        }
        #[cfg(not(feature = "metrics"))]
        {
            WriteTimer { _counters: std::marker::PhantomData }
        }
    }

    /// Records the delivery latency of a completion committed at `completed_at_ms` (ms since
    /// the Unix epoch), as the hub yields it (feature `metrics`; otherwise it does nothing).
    /// A commit time ahead of this machine's clock counts as 0.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn note_delivery(&self, completed_at_ms: u64) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            h.delivery.record(now.saturating_sub(completed_at_ms) as f64 / 1000.0);
        }
    }

    /// Notes that a stream opened (`+1`) or closed (`-1`), for the `completions_active_streams`
    /// gauge (feature `metrics`; otherwise it does nothing).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn note_streams(&self, delta: i64) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.handles {
            h.active_streams.increment(delta as f64);
        }
    }

    /// A copy of the current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            reconnects: self.reconnects.get(),
            catch_up_reads: self.catch_up_reads.get(),
            gaps: self.gaps.get(),
            filtered_out: self.filtered_out.get(),
            malformed_messages: self.malformed_messages.get(),
            buffer_overflows: self.buffer_overflows.get(),
            buffer_high_water: self.buffer_high_water.load(Ordering::Relaxed),
            delivered: self.delivered.get(),
            active_streams: 0,
        }
    }
}

#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("completions_reconnects_total", "Subscriber / LISTEN connections re-established");
    describe_counter!(
        "completions_catch_up_reads_total",
        "Reads of the completion log (feed resyncs, stream catch-ups)"
    );
    describe_counter!("completions_gaps_total", "Gaps met: stream positions older than retention");
    describe_counter!("completions_filtered_out_total", "Events a stream's filter turned away");
    describe_counter!("completions_malformed_messages_total", "Channel messages or log entries that did not parse");
    describe_counter!("completions_buffer_overflows_total", "Stream mailboxes that filled and fell back to the log");
    describe_counter!("completions_delivered_total", "Completions handed to streams, all streams summed");
    describe_gauge!("completions_buffer_high_water", "Most events one stream's mailbox held at once");
    describe_gauge!("completions_active_streams", "Streams open now");
    describe_histogram!("completions_write_duration_seconds", Unit::Seconds, "Duration of one write call, by op");
    describe_histogram!(
        "completions_delivery_latency_seconds",
        Unit::Seconds,
        "From a completion's commit (completed_at_ms) to a stream yielding it"
    );
}

/// The counters of one backend instance at one moment: running totals since the instance
/// was made, except `buffer_high_water` (a maximum) and `active_streams` (a reading).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CounterSnapshot {
    /// Times the subscription side's connection (Valkey subscriber, PostgreSQL `LISTEN`) came back.
    pub reconnects: u64,
    /// Log reads, one per batch: a stream catching up (from a cursor, after an overflow) or the feed resyncing.
    pub catch_up_reads: u64,
    /// Gaps met: times a stream found events after its position trimmed away by retention.
    pub gaps: u64,
    /// Live events a stream's filter turned away, once per stream (what catch-up reads skip is not counted).
    pub filtered_out: u64,
    /// Channel messages, notification payloads and log entries that did not parse and were skipped.
    pub malformed_messages: u64,
    /// Times a stream was sent back to the log: its mailbox was full, or the feed fell behind retention.
    pub buffer_overflows: u64,
    /// The most events one stream's mailbox held at once.
    pub buffer_high_water: u64,
    /// Completions the streams yielded (after filtering and deduplication), all streams summed.
    pub delivered: u64,
    /// Streams open right now.
    pub active_streams: u64,
}
