//! [`Subscriptions`]: the subscribe side of a hub-based backend, written once.

use std::sync::Arc;

use async_trait::async_trait;

use super::Hub;
use super::traits::{Feed, LogReader, Position};
use crate::{
    CompletionBackend, CompletionStream, CounterSnapshot, EngineError, ResumableStream, ScannerFilter, StartFrom,
};

/// A backend's hub with its feed and its log reader: implements [`CompletionBackend`], so a
/// backend's own implementation is delegation to it, written by
/// [`delegate_completion_backend!`](crate::delegate_completion_backend).
///
/// ```
/// use completion_core::CompletionBackend;
/// use completion_core::hub::{Position, Subscriptions};
/// # use completion_core::Cursor;
/// # #[derive(Clone, Debug, Default, PartialEq)]
/// # struct MyPosition(u64);
/// # impl Position for MyPosition {
/// #     const BACKEND: &'static str = "mine";
/// #     type Event = u64;
/// #     fn is_new(&self, event: &u64) -> bool { *event > self.0 }
/// #     fn advance(&mut self, event: &u64) { self.0 = self.0.max(*event) }
/// #     fn merge(&mut self, other: &Self) { self.0 = self.0.max(other.0) }
/// #     fn to_cursor(&self) -> Cursor { Cursor::new(Self::BACKEND, self.0) }
/// # }
///
/// struct MyBackend {
///     subscriptions: Subscriptions<MyPosition>,
///     // ... the write side: connection, store.
/// }
///
/// // Every method of `CompletionBackend` goes to `subscriptions`.
/// completion_core::delegate_completion_backend!(MyBackend, |this| &this.subscriptions);
///
/// fn subscribe_side(backend: &MyBackend) -> &dyn CompletionBackend {
///     backend
/// }
/// ```
pub struct Subscriptions<P: Position> {
    hub: Hub<P>,
    feed: Arc<dyn Feed<P>>,
    reader: Arc<dyn LogReader<P>>,
}

impl<P: Position> Subscriptions<P> {
    /// Bundles `hub`, the backend's live `feed` and its log `reader`.
    pub fn new(hub: Hub<P>, feed: Arc<dyn Feed<P>>, reader: Arc<dyn LogReader<P>>) -> Self {
        Self { hub, feed, reader }
    }

    /// The hub (to publish to it, count into its counters, or close it).
    pub fn hub(&self) -> &Hub<P> {
        &self.hub
    }

    /// The log reader streams catch up with.
    pub fn reader(&self) -> &Arc<dyn LogReader<P>> {
        &self.reader
    }
}

impl<P: Position> Drop for Subscriptions<P> {
    fn drop(&mut self) {
        // Ends every stream, which stops the feed and releases its server connection.
        self.hub.close();
    }
}

#[async_trait]
impl<P: Position> CompletionBackend for Subscriptions<P> {
    fn backend_name(&self) -> &'static str {
        P::BACKEND
    }

    async fn subscribe_completions(&self) -> Result<CompletionStream, EngineError> {
        self.subscribe_completions_filtered(&ScannerFilter::new()).await
    }

    async fn subscribe_completions_filtered(&self, filter: &ScannerFilter) -> Result<CompletionStream, EngineError> {
        self.hub.subscribe(&*self.feed, self.reader.clone(), filter).await
    }

    async fn subscribe_from(&self, from: StartFrom, filter: &ScannerFilter) -> Result<ResumableStream, EngineError> {
        self.hub.subscribe_from(&*self.feed, self.reader.clone(), from, filter).await
    }

    fn counters(&self) -> CounterSnapshot {
        self.hub.snapshot()
    }
}
