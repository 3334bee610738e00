//! What a backend supplies to the hub: a [`Position`] type, a [`LogReader`] and a [`Feed`].

use std::fmt;

use async_trait::async_trait;

use super::Hub;
use crate::{CompletionPayload, Cursor, EngineError, ScannerFilter};

/// A position in a backend's log: what a stream has delivered up to.
///
/// `Default` is the origin, before every event.
pub trait Position: Clone + Default + PartialEq + Send + Sync + fmt::Debug + 'static {
    /// The backend's short name (`memory`, `valkey`, `postgres`): the prefix of its cursors
    /// and the `backend` of its errors, given once here.
    const BACKEND: &'static str;
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
    /// Decodes a cursor of this backend into the position to resume after.
    ///
    /// Fails with [`EngineError::InvalidInput`] for text that is not a cursor of this
    /// backend, and for a well-formed cursor that points past the end of this log (made by
    /// another instance, prefix or server): resuming from it would silently skip every event
    /// up to it. This is the one place that check is made.
    async fn decode_cursor(&self, cursor: &Cursor) -> Result<P, EngineError>;

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

/// A position in tests: the sequence number of the last event covered (0 is the origin).
#[cfg(test)]
impl Position for u64 {
    const BACKEND: &'static str = "test";
    type Event = u64;

    fn is_new(&self, event: &u64) -> bool {
        event > self
    }

    fn advance(&mut self, event: &u64) {
        *self = (*self).max(*event);
    }

    fn merge(&mut self, other: &Self) {
        *self = (*self).max(*other);
    }

    fn to_cursor(&self) -> Cursor {
        Cursor::new(Self::BACKEND, self)
    }
}
