//! The subscription hub: the one piece of delivery logic every backend shares.
//!
//! # For backend implementors
//!
//! Engines never use this module; backends do. A backend supplies a [`Position`] (with its
//! name, [`Position::BACKEND`]), a [`LogReader`] and a [`Feed`], creates one [`Hub`] per
//! instance and bundles the three in a [`Subscriptions`], which implements
//! [`CompletionBackend`](crate::CompletionBackend): the backend's own implementation
//! delegates to it ([`delegate_completion_backend!`](crate::delegate_completion_backend)).
//! Writes count into the hub's [`Counters`]. The `completion-conformance` suite (the
//! `conformance` feature of the `completions` crate) then proves the contract of
//! `docs/delivery.md` on the backend.
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

mod counter_set;
mod counters;
mod mailbox;
mod periodic;
mod subscription;
mod subscriptions;
mod traits;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use counters::{Count, CounterSnapshot, Counters, WriteOp, WriteTimer, terminal_write_span};
pub use periodic::Periodic;
pub use subscriptions::Subscriptions;
pub use traits::{Feed, LogEvent, LogReader, Position, ReadBatch, TrimmedGap};

use self::mailbox::Mailbox;
use self::subscription::Subscription;
use crate::{CompletionStream, EngineError, ResumableStream, ScannerFilter, StartFrom, StreamItem};

/// Sizes and pacing of a hub.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HubConfig {
    /// The most events one stream's mailbox holds (and one catch-up read returns). Default 1024.
    pub buffer: usize,
    /// The most events one feed resynchronisation read returns. Default 1024.
    pub resync_batch: usize,
    /// First pause before a failed catch-up read is retried; doubles up to
    /// `retry_max_backoff`. Default 50 ms.
    pub retry_backoff: Duration,
    /// Longest pause between two attempts of a failed catch-up read. Default 2 s.
    pub retry_max_backoff: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            buffer: 1024,
            resync_batch: 1024,
            retry_backoff: Duration::from_millis(50),
            retry_max_backoff: Duration::from_secs(2),
        }
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

/// Whether a feed runs.
enum FeedTask {
    /// No feed runs: the next subscribe starts one.
    Stopped,
    /// A feed runs in this task; it stopped if the task finished.
    Running(JoinHandle<()>),
    /// A feed that needs no task runs (the memory backend's writes publish directly).
    Taskless,
}

impl FeedTask {
    fn alive(&self) -> bool {
        match self {
            FeedTask::Stopped => false,
            FeedTask::Running(task) => !task.is_finished(),
            FeedTask::Taskless => true,
        }
    }
}

struct Inner<P: Position> {
    config: HubConfig,
    counters: Arc<Counters>,
    state: Mutex<State<P>>,
    /// Held across a feed's start and a stream's registration, so a feed never stops
    /// between the two.
    feed: tokio::sync::Mutex<FeedTask>,
    idle: Notify,
    closed: AtomicBool,
}

struct State<P: Position> {
    position: P,
    mailboxes: Vec<(u64, Arc<Mailbox<P>>)>,
    next_id: u64,
}

impl<P: Position> Hub<P> {
    /// A hub counting into `counters`.
    pub fn new(config: HubConfig, counters: Arc<Counters>) -> Self {
        let state = Mutex::new(State { position: P::default(), mailboxes: Vec::new(), next_id: 0 });
        Self {
            inner: Arc::new(Inner {
                config,
                counters,
                state,
                feed: tokio::sync::Mutex::new(FeedTask::Stopped),
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
                tracing::warn!(backend = P::BACKEND, ?from, resumed_at = ?gap.resumed_at, "feed fell behind retention");
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
                *feed = FeedTask::Stopped;
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
        Ok(Box::pin(items))
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
        Ok(Box::pin(items))
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
            StartFrom::After(cursor) => Some(reader.decode_cursor(cursor).await?),
            StartFrom::Earliest => Some(P::default()),
            _ => None,
        };
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(EngineError::Closed { backend: P::BACKEND });
        }
        let mut running = self.inner.feed.lock().await;
        if !running.alive() {
            *running = match feed.start(self).await? {
                Some(task) => FeedTask::Running(task),
                None => FeedTask::Taskless,
            };
        }
        let mailbox = Arc::new(Mailbox::new(filter.clone(), self.inner.config.buffer));
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
            pending: Default::default(),
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

/// Implements [`CompletionBackend`](crate::CompletionBackend) for a backend type by
/// delegating every method to a [`Subscriptions`] it holds: `$backend` is the type, and
/// `|$this| $subscriptions` gives the `&Subscriptions<_>` of `$this: &$backend`.
///
/// ```ignore
/// completion_core::delegate_completion_backend!(MyBackend, |this| &this.shared.subscriptions);
/// ```
#[macro_export]
macro_rules! delegate_completion_backend {
    ($backend:ty, |$this:ident| $subscriptions:expr) => {
        impl $backend {
            fn __subscriptions(&self) -> &dyn $crate::CompletionBackend {
                let $this = self;
                $subscriptions
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::CompletionBackend for $backend {
            fn backend_name(&self) -> &'static str {
                self.__subscriptions().backend_name()
            }

            async fn subscribe_completions(&self) -> Result<$crate::CompletionStream, $crate::EngineError> {
                self.__subscriptions().subscribe_completions().await
            }

            async fn subscribe_completions_filtered(
                &self,
                filter: &$crate::ScannerFilter,
            ) -> Result<$crate::CompletionStream, $crate::EngineError> {
                self.__subscriptions().subscribe_completions_filtered(filter).await
            }

            async fn subscribe_from(
                &self,
                from: $crate::StartFrom,
                filter: &$crate::ScannerFilter,
            ) -> Result<$crate::ResumableStream, $crate::EngineError> {
                self.__subscriptions().subscribe_from(from, filter).await
            }

            fn counters(&self) -> $crate::CounterSnapshot {
                self.__subscriptions().counters()
            }
        }
    };
}

#[cfg(test)]
mod tests;
