//! The subscription hub: the one piece of delivery logic every backend shares.
//!
//! A backend instance owns one [`Hub`]. Its *feed* (the backend's live source: a Valkey
//! subscriber connection, a PostgreSQL LISTEN connection, or the memory backend's own
//! writes) hands events to [`Hub::publish`]; the hub fans each event out to every open
//! stream's bounded mailbox. Every stream also reads the backend's log through a
//! [`LogReader`] whenever it has to catch up: when it starts from a cursor or from the
//! earliest event, and whenever its mailbox overflowed. Streams de-duplicate by position,
//! so an event met both in the log and in the mailbox is delivered once.
//!
//! Why this holds the delivery contract:
//! - *Ready on return*: a stream is registered (its mailbox receives everything the hub
//!   publishes after the hub's current position) only after [`Feed::start`] returned, and
//!   a feed returns only once it is live on the server.
//! - *Nothing lost*: an event reaches a stream either through its mailbox or, if the mailbox
//!   overflowed or the feed had to resynchronise, through the stream's own log read, which
//!   starts after registration and so overlaps the mailbox.
//! - *Bounded memory*: a mailbox holds at most `buffer` events; on overflow it is cleared
//!   and flagged, and the stream reads the log in batches of at most `buffer` events.
//! - *Order and no duplicates*: a stream yields an event only if [`Position::is_new`] says
//!   it is past the stream's position, then advances.
//!
//! Limits: the feed must hand events to the hub in log order (per partition, for
//! partitioned logs); an event the feed silently skips while later ones arrive is found
//! only by the next resync of the feed. The hub holds no I/O of its own.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream;
use tokio::sync::Notify;

use crate::{
    CompletionPayload, CompletionStream, CounterSnapshot, Counters, Cursor, EngineError, Gap, ResumableStream,
    ScannerFilter, StartFrom, StreamItem,
};

/// A position in a backend's log: what a stream has delivered up to.
///
/// `Default` is the origin, before every event.
pub trait Position: Clone + Default + PartialEq + Send + Sync + fmt::Debug + 'static {
    /// The position of one event.
    type Event: Clone + Send + Sync + fmt::Debug + 'static;
    /// Whether `event` lies after this position (so is not delivered yet).
    fn is_new(&self, event: &Self::Event) -> bool;
    /// Moves this position to include `event`.
    fn advance(&mut self, event: &Self::Event);
    /// Moves this position to include everything `other` includes.
    fn merge(&mut self, other: &Self);
    /// The cursor a consumer persists.
    fn to_cursor(&self) -> Cursor;
}

/// One event read from the log or received live.
#[derive(Clone, Debug)]
pub struct LogEvent<P: Position> {
    /// Where it sits in the log.
    pub position: P::Event,
    /// The event; its cursor is replaced per stream at delivery.
    pub payload: CompletionPayload,
}

/// The answer to one [`LogReader::read_after`].
#[derive(Debug)]
pub struct ReadBatch<P: Position> {
    /// Events after the requested position that match the filter, in log order.
    pub events: Vec<LogEvent<P>>,
    /// How far the read looked, filtered-out events included.
    pub scanned_to: P,
    /// Set when events right after the requested position were trimmed away.
    pub gap: Option<TrimmedGap<P>>,
    /// Whether the read stopped at its limit, so more may follow at once.
    pub more: bool,
}

/// Retention trimmed events the reader was asked for.
#[derive(Debug)]
pub struct TrimmedGap<P: Position> {
    /// The position just before the oldest retained event.
    pub resumed_at: P,
    /// How many events were trimmed past the requested position, if known.
    pub missed: Option<u64>,
}

/// Reads a backend's completion log.
#[async_trait]
pub trait LogReader<P: Position>: Send + Sync + 'static {
    /// Decodes a cursor of this backend; [`EngineError::InvalidInput`] for anything else.
    fn decode_cursor(&self, cursor: &Cursor) -> Result<P, EngineError>;

    /// Up to `limit` events after `after` that match `filter`, in log order. Reports a gap
    /// when events after `after` were trimmed, but never for the origin
    /// (`P::default()`), which means "from the earliest retained event".
    async fn read_after(&self, after: &P, filter: &ScannerFilter, limit: usize) -> Result<ReadBatch<P>, EngineError>;
}

/// A backend's live source of events.
#[async_trait]
pub trait Feed<P: Position>: Send + Sync + 'static {
    /// Starts the feed, and returns only once it is live on the server: from then on every
    /// committed event reaches [`Hub::publish`] (directly, or through [`Hub::resync`]
    /// after a reconnect). Before returning it must move the hub to the log's head as read
    /// *after* going live ([`Hub::advance_to`]).
    ///
    /// A returned task should end when [`Hub::until_idle`] resolves, releasing its server
    /// connection; `None` means the feed holds no task (the memory backend).
    async fn start(&self, hub: &Hub<P>) -> Result<Option<tokio::task::JoinHandle<()>>, EngineError>;
}

/// Sizes and pacing of a hub.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HubConfig {
    /// The most events one stream's mailbox holds (and one catch-up read returns). Default 1024.
    pub buffer: usize,
    /// The most events one feed resynchronisation read returns. Default 1024.
    pub resync_batch: usize,
    /// First pause before a failed catch-up read is retried; doubles up to 2 s. Default 50 ms.
    pub retry_backoff: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self { buffer: 1024, resync_batch: 1024, retry_backoff: Duration::from_millis(50) }
    }
}

impl HubConfig {
    /// The default with `buffer` events per stream (at least 1).
    pub fn with_buffer(buffer: usize) -> Self {
        Self { buffer: buffer.max(1), ..Self::default() }
    }
}

/// The fan-out point of one backend instance. Cheap to clone.
pub struct Hub<P: Position> {
    inner: Arc<Inner<P>>,
}

impl<P: Position> Clone for Hub<P> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<P: Position> {
    backend: &'static str,
    config: HubConfig,
    counters: Arc<Counters>,
    state: Mutex<State<P>>,
    /// Whether a feed runs (and its task); held across a feed's start and a stream's
    /// registration, so a feed never stops between the two.
    feed: tokio::sync::Mutex<Option<Option<tokio::task::JoinHandle<()>>>>,
    idle: Notify,
    closed: AtomicBool,
}

struct State<P: Position> {
    position: P,
    mailboxes: Vec<(u64, Arc<Mailbox<P>>)>,
    next_id: u64,
}

impl<P: Position> Hub<P> {
    /// A hub for `backend`, counting into `counters`.
    pub fn new(backend: &'static str, config: HubConfig, counters: Arc<Counters>) -> Self {
        let state = Mutex::new(State { position: P::default(), mailboxes: Vec::new(), next_id: 0 });
        Self {
            inner: Arc::new(Inner {
                backend,
                config,
                counters,
                state,
                feed: tokio::sync::Mutex::new(None),
                idle: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<P>> {
        // A panic while holding this lock leaves consistent data (every update is one step).
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters this hub bumps.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.inner.counters
    }

    /// The counters, with the number of open streams filled in.
    pub fn snapshot(&self) -> CounterSnapshot {
        let mut s = self.inner.counters.snapshot();
        s.active_streams = self.stream_count() as u64;
        s
    }

    /// How many streams are open.
    pub fn stream_count(&self) -> usize {
        self.state().mailboxes.len()
    }

    /// The position up to which events were published.
    pub fn position(&self) -> P {
        self.state().position.clone()
    }

    /// Moves the hub's position forward to include `head` (never backward).
    pub fn advance_to(&self, head: &P) {
        self.state().position.merge(head);
    }

    /// Hands live events to every stream. Events at or before the hub's position are
    /// dropped as duplicates; call this in log order.
    pub fn publish(&self, events: impl IntoIterator<Item = LogEvent<P>>) {
        let mut state = self.state();
        for event in events {
            if !state.position.is_new(&event.position) {
                continue;
            }
            state.position.advance(&event.position);
            let event = Arc::new(event);
            for (_, mailbox) in &state.mailboxes {
                mailbox.offer(&event, &self.inner.counters);
            }
        }
    }

    /// Reads the log after the hub's position and publishes what it finds, until caught up.
    /// Feeds call it after (re)connecting, on a wake-up, and on their safety timer.
    /// Returns how many events it published.
    pub async fn resync(&self, reader: &dyn LogReader<P>) -> Result<usize, EngineError> {
        let everything = ScannerFilter::new();
        let mut published = 0;
        loop {
            let from = self.position();
            let batch = reader.read_after(&from, &everything, self.inner.config.resync_batch).await?;
            Counters::bump(&self.inner.counters.catch_up_reads);
            published += batch.events.len();
            if let Some(gap) = &batch.gap {
                // Streams must learn of the gap from their own positions: send them all to
                // the log.
                tracing::warn!(backend = self.inner.backend, ?from, resumed_at = ?gap.resumed_at, "feed fell behind retention");
                let mut state = self.state();
                state.position.merge(&gap.resumed_at);
                for (_, mailbox) in &state.mailboxes {
                    mailbox.force_catch_up(&self.inner.counters);
                }
            }
            self.publish(batch.events);
            self.advance_to(&batch.scanned_to);
            if !batch.more {
                return Ok(published);
            }
        }
    }

    /// Resolves when no stream is open, after marking the feed stopped (so the next
    /// subscribe starts a new one). A feed task ends when this resolves.
    pub async fn until_idle(&self) {
        loop {
            self.inner.idle.notified().await;
            let mut feed = self.inner.feed.lock().await;
            if self.stream_count() == 0 || self.inner.closed.load(Ordering::SeqCst) {
                *feed = None;
                return;
            }
        }
    }

    /// Ends every stream (they yield `None`) and stops accepting new ones. Backends call it
    /// when dropped.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for (_, mailbox) in &self.state().mailboxes {
            mailbox.notify.notify_one();
        }
        self.inner.idle.notify_one();
    }

    /// A stream of every completion matching `filter` committed after this call returns.
    /// Gaps are logged and counted, not yielded.
    pub async fn subscribe(
        &self,
        feed: &dyn Feed<P>,
        reader: Arc<dyn LogReader<P>>,
        filter: &ScannerFilter,
    ) -> Result<CompletionStream, EngineError> {
        let sub = self.register(feed, reader, StartFrom::Now, filter, false).await?;
        let items = stream::unfold(sub, |mut sub| async move {
            loop {
                // Plain streams are registered with report_gaps = false: only completions come.
                if let StreamItem::Completion(c) = sub.next().await? {
                    return Some((c, sub));
                }
            }
        });
        Ok(Box::pin(Box::pin(items)))
    }

    /// A resumable stream from `from`; gaps are yielded as items.
    pub async fn subscribe_from(
        &self,
        feed: &dyn Feed<P>,
        reader: Arc<dyn LogReader<P>>,
        from: StartFrom,
        filter: &ScannerFilter,
    ) -> Result<ResumableStream, EngineError> {
        let sub = self.register(feed, reader, from, filter, true).await?;
        let items = stream::unfold(sub, |mut sub| async move { sub.next().await.map(|item| (item, sub)) });
        Ok(Box::pin(Box::pin(items)))
    }

    async fn register(
        &self,
        feed: &dyn Feed<P>,
        reader: Arc<dyn LogReader<P>>,
        from: StartFrom,
        filter: &ScannerFilter,
        report_gaps: bool,
    ) -> Result<Subscription<P>, EngineError> {
        let start = match &from {
            StartFrom::After(cursor) => Some(reader.decode_cursor(cursor)?),
            StartFrom::Earliest => Some(P::default()),
            _ => None,
        };
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(EngineError::Closed { backend: self.inner.backend });
        }
        let mut running = self.inner.feed.lock().await;
        let alive = matches!(&*running, Some(task) if task.as_ref().is_none_or(|t| !t.is_finished()));
        if !alive {
            *running = Some(feed.start(self).await?);
        }
        let mailbox = Arc::new(Mailbox {
            filter: filter.clone(),
            capacity: self.inner.config.buffer,
            queue: Mutex::new(Queue { events: VecDeque::new(), overflowed: false }),
            notify: Notify::new(),
        });
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        state.mailboxes.push((id, mailbox.clone()));
        self.inner.counters.note_streams(1);
        let catching_up = start.is_some();
        let position = start.unwrap_or_else(|| state.position.clone());
        drop(state);
        drop(running);
        Ok(Subscription {
            hub: self.clone(),
            id,
            mailbox,
            reader,
            position,
            catching_up,
            pending: VecDeque::new(),
            report_gaps,
        })
    }

    fn unregister(&self, id: u64) {
        let mut state = self.state();
        let before = state.mailboxes.len();
        state.mailboxes.retain(|(i, _)| *i != id);
        if state.mailboxes.len() < before {
            self.inner.counters.note_streams(-1);
        }
        if state.mailboxes.is_empty() {
            self.inner.idle.notify_one();
        }
    }
}

/// One stream's bounded queue of live events.
struct Mailbox<P: Position> {
    filter: ScannerFilter,
    capacity: usize,
    queue: Mutex<Queue<P>>,
    notify: Notify,
}

struct Queue<P: Position> {
    events: VecDeque<Arc<LogEvent<P>>>,
    /// Set when events were dropped for lack of room: the stream must read the log.
    overflowed: bool,
}

impl<P: Position> Mailbox<P> {
    fn queue(&self) -> MutexGuard<'_, Queue<P>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn offer(&self, event: &Arc<LogEvent<P>>, counters: &Counters) {
        if !self.filter.matches(&event.payload) {
            Counters::bump(&counters.filtered_out);
            return;
        }
        let mut queue = self.queue();
        if queue.overflowed {
            return;
        }
        if queue.events.len() >= self.capacity {
            Self::overflow(&mut queue, counters);
        } else {
            queue.events.push_back(event.clone());
            counters.note_buffer_len(queue.events.len());
        }
        drop(queue);
        self.notify.notify_one();
    }

    fn force_catch_up(&self, counters: &Counters) {
        Self::overflow(&mut self.queue(), counters);
        self.notify.notify_one();
    }

    fn overflow(queue: &mut Queue<P>, counters: &Counters) {
        // What is queued will be read again from the log: free it now.
        queue.events = VecDeque::new();
        if !queue.overflowed {
            queue.overflowed = true;
            Counters::bump(&counters.buffer_overflows);
        }
    }
}

/// The state of one open stream.
struct Subscription<P: Position> {
    hub: Hub<P>,
    id: u64,
    mailbox: Arc<Mailbox<P>>,
    reader: Arc<dyn LogReader<P>>,
    /// Everything up to here was delivered (or skipped by the filter).
    position: P,
    catching_up: bool,
    /// Items of the current catch-up batch, at most `buffer` (plus one gap).
    pending: VecDeque<StreamItem>,
    report_gaps: bool,
}

impl<P: Position> Drop for Subscription<P> {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

impl<P: Position> Subscription<P> {
    async fn next(&mut self) -> Option<StreamItem> {
        let config = self.hub.inner.config.clone();
        let mut backoff = config.retry_backoff;
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.hub.inner.closed.load(Ordering::SeqCst) {
                return None;
            }
            {
                let mut queue = self.mailbox.queue();
                if queue.overflowed {
                    queue.overflowed = false;
                    self.catching_up = true;
                }
            }
            if self.catching_up {
                match self.reader.read_after(&self.position, &self.mailbox.filter, config.buffer).await {
                    Ok(batch) => {
                        Counters::bump(&self.hub.inner.counters.catch_up_reads);
                        backoff = config.retry_backoff;
                        self.absorb(batch);
                    }
                    Err(error) => {
                        tracing::warn!(backend = self.hub.inner.backend, %error, "catch-up read failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            }
            let event = self.mailbox.queue().events.pop_front();
            match event {
                Some(event) => {
                    if let Some(item) = self.accept(&event) {
                        return Some(item);
                    }
                }
                None => self.mailbox.notify.notified().await,
            }
        }
    }

    /// Delivers `event` if it is new to this stream, stamping this stream's cursor.
    fn accept(&mut self, event: &LogEvent<P>) -> Option<StreamItem> {
        if !self.position.is_new(&event.position) {
            return None;
        }
        self.position.advance(&event.position);
        let mut payload = event.payload.clone();
        payload.cursor = self.position.to_cursor();
        Counters::bump(&self.hub.inner.counters.delivered);
        self.hub.inner.counters.note_delivery(payload.completed_at_ms);
        Some(StreamItem::Completion(payload))
    }

    fn absorb(&mut self, batch: ReadBatch<P>) {
        if let Some(gap) = batch.gap {
            let after = (self.position != P::default()).then(|| self.position.to_cursor());
            self.position.merge(&gap.resumed_at);
            Counters::bump(&self.hub.inner.counters.gaps);
            let gap = Gap { after, resumed_at: self.position.to_cursor(), missed: gap.missed };
            if self.report_gaps {
                self.pending.push_back(StreamItem::Gap(gap));
            } else {
                tracing::warn!(
                    backend = self.hub.inner.backend,
                    ?gap,
                    "completions lost to retention before this stream read them"
                );
            }
        }
        for event in &batch.events {
            if let Some(item) = self.accept(event) {
                self.pending.push_back(item);
            }
        }
        self.position.merge(&batch.scanned_to);
        self.catching_up = batch.more;
    }
}
